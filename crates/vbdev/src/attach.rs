//! Attaching to a vhost-user target (or, for `vbdev io`, a PCI function), shared by
//! `vbdev io` and `vbdev perf`.
//!
//! virtio-blk attaches as one bdev named after the attach name; virtio-scsi attaches as a
//! controller whose LUNs become bdevs `<name>t<T>` (LUN 0) and `<name>t<T>l<L>`.

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use vbdev_bdev::virtio_scsi::{self, ScsiController};
use vbdev_bdev::{Bdev, virtio_blk};
use vbdev_virtio::transport::vhost_user::VhostUserOptions;

use crate::Failure;
use crate::cli::DevType;

/// The bdev name a virtio-blk device attaches under.
pub const BLK_NAME: &str = "VirtioBlk0";
/// The controller name a virtio-scsi device attaches under (prefix of its bdev names).
pub const SCSI_NAME: &str = "VirtioScsi0";

/// How to attach, per device type.
#[derive(Debug, Clone)]
pub enum Attach {
    /// virtio-blk.
    Blk(virtio_blk::AttachOptions),
    /// virtio-scsi.
    Scsi(virtio_scsi::AttachOptions),
}

impl Attach {
    /// Validated attach options; errors are usage errors naming the flag.
    pub fn new(
        dev_type: DevType,
        queues: u16,
        queue_size: u16,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        if queues == 0 {
            return Err(Failure::usage(anyhow!("--queues must be at least 1")));
        }
        if !queue_size.is_power_of_two() {
            return Err(Failure::usage(anyhow!(
                "--queue-size {queue_size} is not a power of two from 1 to 32768"
            )));
        }
        if timeout.is_zero() {
            return Err(Failure::usage(anyhow!("--timeout-ms must be positive")));
        }
        let vhost_user = VhostUserOptions { timeout };
        Ok(match dev_type {
            DevType::Blk => Attach::Blk(virtio_blk::AttachOptions {
                num_queues: queues,
                queue_size,
                vhost_user,
                ..virtio_blk::AttachOptions::default()
            }),
            DevType::Scsi => {
                if queue_size < 4 {
                    return Err(Failure::usage(anyhow!(
                        "--queue-size {queue_size} is below 4, the least a virtio-scsi request needs"
                    )));
                }
                Attach::Scsi(virtio_scsi::AttachOptions {
                    num_queues: queues,
                    queue_size,
                    cmd_timeout: timeout,
                    vhost_user,
                    ..virtio_scsi::AttachOptions::default()
                })
            }
        })
    }

    /// Connects to `path` and attaches the device as `name`; failures are run failures.
    pub fn connect(&self, name: &str, path: &Path) -> Result<Attached, Failure> {
        match self {
            Attach::Blk(opts) => virtio_blk::attach_vhost_user(name, path, opts)
                .map(Attached::Blk)
                .map_err(Failure::run),
            Attach::Scsi(opts) => virtio_scsi::attach_vhost_user(name, path, opts)
                .map(Attached::Scsi)
                .map_err(Failure::run),
        }
    }
}

impl Attach {
    /// Opens PCI function `bdf` through VFIO and attaches it as `name`; failures are run
    /// failures.
    pub fn connect_pci(&self, name: &str, bdf: &str) -> Result<Attached, Failure> {
        match self {
            Attach::Blk(opts) => virtio_blk::attach_pci(name, bdf, opts)
                .map(Attached::Blk)
                .map_err(Failure::run),
            Attach::Scsi(opts) => virtio_scsi::attach_pci(name, bdf, opts)
                .map(Attached::Scsi)
                .map_err(Failure::run),
        }
    }
}

/// An attached device (or a local bdev): what can be benchmarked or used, and detached.
#[derive(Debug)]
pub enum Attached {
    /// A virtio-blk bdev.
    Blk(Bdev),
    /// A virtio-scsi controller and its LUN bdevs.
    Scsi(ScsiController),
    /// A bdev of this process (malloc, null).
    Local(Bdev),
}

impl Attached {
    /// The bdevs it provides, in scan order.
    pub fn bdevs(&self) -> Vec<Bdev> {
        match self {
            Attached::Blk(b) | Attached::Local(b) => vec![b.clone()],
            Attached::Scsi(c) => c.bdevs(),
        }
    }

    /// Stops the device.
    pub fn detach(&self) {
        match self {
            Attached::Blk(b) | Attached::Local(b) => b.detach(),
            Attached::Scsi(c) => c.detach(),
        }
    }
}
