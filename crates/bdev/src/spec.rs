//! Where a virtio device is ([`Target`]) and how its queues are set up
//! ([`QueueOptions`]): the descriptions every attach takes (see [`crate::attach`]). Below
//! the device modules, which use them; knows none of them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vbdev_pci::{PciOptions, PciTransport};
use vbdev_virtio::transport::vhost_user::{VhostUser, VhostUserOptions};
use vbdev_virtio::{DmaDomain, Transport};

use crate::error::{Error, Result};

/// How a device's request queues are set up, for either device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// Request queues: the most channels (blk) or I/O threads (scsi) at once (SPDK
    /// `vq_count`, default 1). virtio-scsi sets up one more for scans when the device
    /// has it.
    pub num_queues: u16,
    /// Descriptors per request queue, a power of two up to 32768 (SPDK `vq_size`,
    /// default 512); virtio-scsi needs at least 4.
    pub queue_size: u16,
    /// A request not completed within this time fails the device (default 30 s).
    pub io_timeout: Duration,
    /// Each management command (virtio-blk GET_ID, virtio-scsi scan commands) must
    /// complete within this (default 5 s).
    pub cmd_timeout: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            num_queues: 1,
            queue_size: 512,
            io_timeout: Duration::from_secs(30),
            cmd_timeout: Duration::from_secs(5),
        }
    }
}

impl QueueOptions {
    /// Checks the counts against what the device type needs (`min_size` descriptors).
    pub(crate) fn check(&self, min_size: u16) -> Result<()> {
        if self.num_queues == 0 {
            return Err(Error::InvalidOption {
                option: "num_queues",
                why: "must be at least 1".into(),
            });
        }
        if !self.queue_size.is_power_of_two() || self.queue_size < min_size {
            return Err(Error::InvalidOption {
                option: "queue_size",
                why: format!(
                    "{} is not a power of two from {min_size} to 32768",
                    self.queue_size
                ),
            });
        }
        Ok(())
    }
}

/// Where a device is, and the options of the transport that reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A vhost-user target's socket.
    VhostUser {
        /// The socket path.
        path: PathBuf,
        /// Connection options (reply deadline).
        options: VhostUserOptions,
    },
    /// A virtio-pci function bound to `vfio-pci` or `uio_pci_generic`. The DMA domain
    /// should be configured before it is first used: `DmaConfig::physical` for uio and
    /// VFIO no-IOMMU, `DmaConfig::pinned` or `physical` for VFIO type1.
    Pci {
        /// The function's address (`0000:00:02.0`).
        bdf: String,
        /// Register and doorbell options.
        options: PciOptions,
    },
}

impl Target {
    /// A vhost-user socket with the default options.
    pub fn vhost_user(path: impl Into<PathBuf>) -> Self {
        Self::VhostUser {
            path: path.into(),
            options: VhostUserOptions::default(),
        }
    }

    /// A PCI function with the default options.
    pub fn pci(bdf: impl Into<String>) -> Self {
        Self::Pci {
            bdf: bdf.into(),
            options: PciOptions::default(),
        }
    }

    /// Opens the transport for the device attached as `name`.
    ///
    /// # Errors
    /// [`Error::Attach`] with the cause: the socket cannot be reached or the target does
    /// not answer in time; the function is bound to another driver or a VFIO or sysfs
    /// step fails.
    pub fn open(&self, name: &str) -> Result<Arc<dyn Transport>> {
        let t: Arc<dyn Transport> = match self {
            Target::VhostUser { path, options } => Arc::new(
                VhostUser::connect(path, DmaDomain::global(), *options)
                    .map_err(Error::attach(name))?,
            ),
            Target::Pci { bdf, options } => PciTransport::open(bdf, DmaDomain::global(), options)
                .map_err(Error::attach(name))?,
        };
        Ok(t)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::VhostUser { path, .. } => write!(f, "vhost-user {}", path.display()),
            Target::Pci { bdf, .. } => write!(f, "pci {bdf}"),
        }
    }
}
