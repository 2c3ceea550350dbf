//! `vbdev-virtio`: a user-space virtio driver library.
//!
//! # Overview
//! - [`mem`]: the process-wide DMA memory domain ([`DmaDomain`], [`DmaBuf`]): memfd
//!   regions that devices can map; [`shared`]: memory the device writes while the
//!   driver uses it ([`SharedMem`]: volatile access only).
//! - [`split`]: the driver side of a split virtqueue ([`SplitQueue`]); [`reqq`]: a split
//!   queue with its requests' memory, whose hand-off to the device needs no `unsafe`
//!   from its users ([`RequestQueue`]).
//! - [`transport`]: how a device is reached ([`Transport`], [`Notifier`]);
//!   [`transport::vhost_user`] talks to a vhost-user target over a Unix socket. The
//!   virtio-pci transport (VFIO, uio) is the `vbdev-pci` crate.
//! - [`device`]: feature negotiation and the status handshake ([`VirtioDevice`]).
//! - [`blk`], [`scsi`]: the virtio-blk and virtio-scsi request formats and configuration
//!   layouts.
//!
//! A driver connects a transport, negotiates features with [`VirtioDevice::init`],
//! creates [`SplitQueue`]s in the DMA domain, hands their addresses to the device, and
//! then adds descriptor chains and reaps the used ring on its own thread.
//!
//! # Example
//! ```
//! use vbdev_virtio::{DmaDomain, QueueConfig, Segment, SplitQueue};
//!
//! let domain = DmaDomain::global();
//! let mut q = SplitQueue::new(domain, QueueConfig {
//!     size: 8, event_idx: true, indirect_desc: false, indirect_max: 1, phys: None,
//! })?;
//! let buf = domain.alloc(4096)?;
//! // SAFETY: `buf` outlives the chain: nothing reaps it in this example.
//! unsafe { q.try_add(&[Segment::writable(buf.iova(), 4096)], 7) }.unwrap();
//! assert_eq!(q.len(), 1);
//! # Ok::<(), vbdev_virtio::Error>(())
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod blk;
pub mod cpu;
pub mod device;
pub mod error;
pub mod features;
pub mod mem;
pub mod reqq;
pub mod scsi;
pub mod shared;
pub mod split;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod transport;

pub use device::VirtioDevice;
pub use error::{Error, QueueError, Result};
pub use features::DeviceType;
pub use mem::{DmaBuf, DmaConfig, DmaDomain, Iova, RegionId};
pub use reqq::{ChainBuilder, ContextLayout, Piece, RequestQueue};
pub use shared::SharedMem;
pub use split::{AddError, QueueConfig, RingAddrs, Segment, SplitQueue, Used};
pub use transport::{CallFd, Notifier, QueueHandles, Transport};
