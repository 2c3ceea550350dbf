//! Attaching to a vhost-user target or a PCI function, shared by `vbdev io` and `vbdev
//! perf`: the command-line options made into `vbdev_bdev::attach`'s descriptions.
//!
//! virtio-blk attaches as one bdev named after the attach name; virtio-scsi attaches as a
//! controller whose LUNs become bdevs `<name>t<T>` (LUN 0) and `<name>t<T>l<L>`.

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use vbdev_bdev::{Bdev, QueueOptions, Target};
use vbdev_virtio::DeviceType;
use vbdev_virtio::transport::vhost_user::VhostUserOptions;

use crate::Failure;
use crate::cli::DevType;

/// The bdev name a virtio-blk device attaches under.
pub const BLK_NAME: &str = "VirtioBlk0";
/// The controller name a virtio-scsi device attaches under (prefix of its bdev names).
pub const SCSI_NAME: &str = "VirtioScsi0";

/// How to attach: the device type, its queues, and the transport's reply deadline.
#[derive(Debug, Clone)]
pub struct Attach {
    /// virtio-blk or virtio-scsi.
    pub device: DeviceType,
    /// Queue count, size and timeouts.
    pub queues: QueueOptions,
    /// The vhost-user reply deadline (`--timeout-ms`).
    timeout: Duration,
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
        let device = match dev_type {
            DevType::Blk => DeviceType::Blk,
            DevType::Scsi => DeviceType::Scsi,
        };
        if device == DeviceType::Scsi && queue_size < 4 {
            return Err(Failure::usage(anyhow!(
                "--queue-size {queue_size} is below 4, the least a virtio-scsi request needs"
            )));
        }
        Ok(Attach {
            device,
            queues: QueueOptions {
                num_queues: queues,
                queue_size,
                cmd_timeout: timeout,
                ..QueueOptions::default()
            },
            timeout,
        })
    }

    /// The name the device attaches under.
    pub fn name(&self) -> &'static str {
        match self.device {
            DeviceType::Blk => BLK_NAME,
            DeviceType::Scsi => SCSI_NAME,
        }
    }

    /// Connects to `path` and attaches the device as `name`; failures are run failures.
    pub fn connect(&self, name: &str, path: &Path) -> Result<Attached, Failure> {
        self.attach(
            name,
            &Target::VhostUser {
                path: path.to_path_buf(),
                options: VhostUserOptions {
                    timeout: self.timeout,
                },
            },
        )
    }

    /// Opens PCI function `bdf` and attaches it as `name`; failures are run failures.
    pub fn connect_pci(&self, name: &str, bdf: &str) -> Result<Attached, Failure> {
        self.attach(name, &Target::pci(bdf))
    }

    fn attach(&self, name: &str, target: &Target) -> Result<Attached, Failure> {
        vbdev_bdev::attach::attach(name, target, self.device, &self.queues)
            .map(Attached::Virtio)
            .map_err(Failure::run)
    }
}

/// An attached device (or a local bdev): what can be benchmarked or used, and detached.
#[derive(Debug)]
pub enum Attached {
    /// A virtio-blk bdev or a virtio-scsi controller with its LUN bdevs.
    Virtio(vbdev_bdev::Attached),
    /// A bdev of this process (malloc, null).
    Local(Bdev),
}

impl Attached {
    /// The bdevs it provides, in scan order.
    pub fn bdevs(&self) -> Vec<Bdev> {
        match self {
            Attached::Virtio(v) => v.bdevs(),
            Attached::Local(b) => vec![b.clone()],
        }
    }

    /// Stops the device.
    pub fn detach(&self) {
        match self {
            Attached::Virtio(v) => v.detach(),
            Attached::Local(b) => b.detach(),
        }
    }
}
