//! `vbdev-bdev`: the block-device layer of vbdev.
//!
//! # Overview
//! - [`Bdev`]: a named block device (an `Arc`, `Send + Sync`), described by [`BdevInfo`].
//! - [`IoChannel`]: one thread's I/O queue to a bdev (`Send`, not `Sync`). [`IoChannel::submit`]
//!   takes a [`Request`] that owns its [`DmaBuf`]; [`IoChannel::poll`] sends what was
//!   submitted with one doorbell and returns [`Completion`]s that give the buffers back.
//!   Requests that find the queue full wait in the channel, in order.
//!   [`IoChannel::read_direct`] and [`IoChannel::write_direct`] move data straight
//!   between a local bdev's memory and the caller's buffers ([`direct`]).
//! - [`Registry`]: the bdevs of a process, by name.
//! - [`ticks`]: a cheap clock for per-I/O timestamps (the TSC where it is invariant).
//! - [`IoStat`]: a bdev's I/O statistics ([`Bdev::iostat`]), counted by its channels
//!   without locks or shared atomics on the data path.
//! - [`virtio_blk`]: bdevs backed by a virtio-blk device (vhost-user today).
//! - [`virtio_scsi`]: a virtio-scsi controller whose LUNs become bdevs (scan, SCSI I/O,
//!   resets, hotplug events).
//! - [`malloc`]: a RAM disk whose memory follows the data written.
//! - [`null`]: a bdev that reads zeros and drops writes, for benchmarks.
//! - [`file`](mod@file): a raw image file or block device, with direct I/O where possible.
//!
//! # Example
//! ```no_run
//! use vbdev_bdev::{virtio_blk, Completion, Request};
//! use vbdev_virtio::DmaBuf;
//!
//! let bdev = virtio_blk::attach_vhost_user("VirtioBlk0", "/tmp/vblk.sock", &Default::default())?;
//! let mut ch = bdev.open_channel()?;
//! let blocks = 4096 / u64::from(bdev.block_size());
//! let mut buf = DmaBuf::alloc(4096)?;
//! buf.fill(0xab);
//! ch.submit(Request::write(0, blocks, buf, 1)).map_err(|r| r.error)?;
//! let c = ch.wait_one()?;
//! assert!(c.status.is_success());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod attach;
pub mod bdev;
pub mod channel;
pub mod direct;
mod engine;
pub mod error;
pub mod file;
pub mod io;
mod iostat;
mod local;
pub mod malloc;
pub mod null;
pub mod registry;
mod spec;
mod stall;
pub mod ticks;
pub mod virtio_blk;
pub mod virtio_scsi;

pub use attach::{Attached, QueueOptions, Target};
pub use bdev::{
    Bdev, BdevBackend, BdevInfo, Completion, DeviceState, IoError, IoOp, IoStatus, Request,
};
pub use channel::{ChannelBackend, IoChannel, Rejected};
pub use direct::{DirectError, ReadDest, WriteSrc};
pub use error::{Error, RejectReason, Result};
pub use iostat::IoStat;
pub use registry::Registry;
pub use vbdev_virtio::DmaBuf;
