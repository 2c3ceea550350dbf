//! `vbdev-pci`: the virtio-pci transport (virtio 1.2 §4.1) of vbdev, apart from the
//! generic virtio layer (`vbdev-virtio`), which knows no PCI.
//!
//! - [`regs`] (re-exported at the root): the parts that need no device: the capability
//!   walk of the configuration space, BAR access behind [`PciBars`], the common
//!   configuration and queue registers, doorbell addresses.
//! - [`transport`]: [`PciTransport`], a function bound to `vfio-pci` (type1 or no-IOMMU)
//!   or `uio_pci_generic`, driven from user space, implementing
//!   [`vbdev_virtio::Transport`].
//! - [`sysfs`]: finding functions and (re)binding their drivers.
//! - [`error`]: [`PciTransportError`], which reaches callers inside
//!   [`vbdev_virtio::Error::Transport`].
//! - [`sigbus`]: the process-wide guard that turns an access to a removed function's BAR
//!   mapping into reads of all ones instead of a crash.
//! - `fake` (tests and the `test-utils` feature): a register model of a modern
//!   virtio-blk function that checks access widths.
//!
//! The `unsafe` of this crate (VFIO ioctls, BAR mappings, the SIGBUS handler) is in
//! `transport` and `sigbus`, each block with its SAFETY argument.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod error;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake;
pub mod regs;
pub mod sigbus;
pub mod sysfs;
pub mod transport;

pub use error::{IovaOutOfRange, PciTransportError, VfioError};
pub use regs::*;
pub use transport::{PciAccess, PciOptions, PciTransport};
