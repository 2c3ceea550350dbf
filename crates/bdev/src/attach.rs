//! One way to attach a virtio device: where it is ([`Target`]: a vhost-user socket or a
//! PCI function, with the transport's options), how its queues are set up
//! ([`QueueOptions`], the same for both device types) and what it is
//! ([`DeviceType`]). [`attach`] gives an [`Attached`] device; the per-type entry points
//! ([`virtio_blk::attach_to`], [`virtio_scsi::attach_to`]) take the same two
//! descriptions. A new transport, or reconnecting to a target, changes [`Target::open`]
//! and nothing else.

use vbdev_virtio::DeviceType;

use crate::bdev::Bdev;
use crate::error::Result;
pub use crate::spec::{QueueOptions, Target};
use crate::virtio_scsi::ScsiController;
use crate::{virtio_blk, virtio_scsi};

/// An attached device: a virtio-blk bdev, or a virtio-scsi controller and its LUNs.
#[derive(Debug)]
pub enum Attached {
    /// A virtio-blk bdev.
    Blk(Bdev),
    /// A virtio-scsi controller.
    Scsi(ScsiController),
}

impl Attached {
    /// The bdevs it provides, in scan order.
    pub fn bdevs(&self) -> Vec<Bdev> {
        match self {
            Attached::Blk(b) => vec![b.clone()],
            Attached::Scsi(c) => c.bdevs(),
        }
    }

    /// Stops the device.
    pub fn detach(&self) {
        match self {
            Attached::Blk(b) => b.detach(),
            Attached::Scsi(c) => c.detach(),
        }
    }
}

/// Attaches the `device` at `target` as `name`: a virtio-blk bdev called `name`, or a
/// virtio-scsi controller whose LUNs are bdevs `<name>t<T>` and `<name>t<T>l<L>`.
///
/// # Errors
/// As [`virtio_blk::attach`] and [`virtio_scsi::attach`], and [`Target::open`].
pub fn attach(
    name: &str,
    target: &Target,
    device: DeviceType,
    opts: &QueueOptions,
) -> Result<Attached> {
    match device {
        DeviceType::Blk => virtio_blk::attach_to(name, target, opts).map(Attached::Blk),
        DeviceType::Scsi => virtio_scsi::attach_to(name, target, opts).map(Attached::Scsi),
    }
}
