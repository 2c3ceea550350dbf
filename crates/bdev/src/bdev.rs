//! Block devices, requests and completions.

use std::fmt;
use std::sync::Arc;

use crate::channel::{ChannelBackend, IoChannel};
use crate::error::Result;
pub use crate::io::{BdevInfo, Completion, IoError, IoOp, IoStatus, Request};
use crate::iostat::{BdevStats, IoStat};

/// Where a bdev's device stands ([`Bdev::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceState {
    /// The device is there: requests go to it.
    Connected,
    /// The device is gone (its target hung up or died, it was hot-removed or detached):
    /// every request fails as removed until it is detached and attached again.
    Failed,
}

impl DeviceState {
    /// `connected` or `failed`, as `bdev_get_bdevs` and `vbdev io info` say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device behind a [`Bdev`]: implemented by each module (`virtio_blk`, ...).
pub trait BdevBackend: Send + Sync + fmt::Debug {
    /// The bdev's description.
    fn info(&self) -> &BdevInfo;

    /// Takes a free request queue for a new channel.
    ///
    /// # Errors
    /// [`Error::NoFreeQueue`](crate::Error::NoFreeQueue) when every queue has a channel,
    /// [`Error::Removed`](crate::Error::Removed) once the device is gone.
    fn open_channel(&self) -> Result<Box<dyn ChannelBackend>>;

    /// The device is gone (disconnected, failed, detached).
    fn is_removed(&self) -> bool;

    /// Module-specific details as `(key, value)` pairs for `info` output.
    fn details(&self) -> Vec<(&'static str, String)>;

    /// Stops the device: queues are stopped and the connection is closed.
    fn detach(&self);

    /// Size in blocks now (devices that can be resized override this).
    fn num_blocks(&self) -> u64 {
        self.info().num_blocks
    }

    /// Resets the device (SCSI: a LOGICAL UNIT RESET), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Unsupported`](crate::Error::Unsupported) when the device has no reset;
    /// [`Error::Reset`](crate::Error::Reset) when the device refused or did not answer.
    fn reset(&self, timeout: std::time::Duration) -> Result<()> {
        let _ = timeout;
        Err(crate::Error::Unsupported {
            name: self.info().name.clone(),
            what: "reset",
        })
    }
}

/// A named block device: cheap to clone, shareable between threads.
///
/// Clones share the device and its I/O statistics ([`Self::iostat`]); so do the
/// handles a module gives out for the same disk (a virtio-scsi LUN's bdev from
/// `ScsiController::bdevs` or an `Added` event).
#[derive(Debug, Clone)]
pub struct Bdev {
    backend: Arc<dyn BdevBackend>,
    stats: Arc<BdevStats>,
}

impl Bdev {
    /// Wraps a module's device.
    pub fn new(backend: Arc<dyn BdevBackend>) -> Self {
        Self {
            backend,
            stats: Arc::default(),
        }
    }

    /// The bdev's description.
    pub fn info(&self) -> &BdevInfo {
        self.backend.info()
    }

    /// The bdev's name.
    pub fn name(&self) -> &str {
        &self.info().name
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.info().block_size
    }

    /// Size in blocks, now: a device resized after attach reports its new size here
    /// ([`BdevInfo::num_blocks`] keeps the size at attach).
    pub fn num_blocks(&self) -> u64 {
        self.backend.num_blocks()
    }

    /// Resets the device (SCSI LOGICAL UNIT RESET), waiting at most `timeout` for it.
    /// In-flight requests complete as the device decides (typically retried or failed).
    ///
    /// # Errors
    /// [`Error::Unsupported`](crate::Error::Unsupported) or
    /// [`Error::Reset`](crate::Error::Reset).
    pub fn reset(&self, timeout: std::time::Duration) -> Result<()> {
        self.backend.reset(timeout)
    }

    /// Wraps a module's device whose statistics live elsewhere (a module that hands out
    /// a new `Bdev` for the same disk more than once keeps one `stats` per disk, so that
    /// every handle reports the same counts).
    pub(crate) fn with_stats(backend: Arc<dyn BdevBackend>, stats: Arc<BdevStats>) -> Self {
        Self { backend, stats }
    }

    /// Opens an I/O channel on one of the device's request queues.
    ///
    /// # Errors
    /// [`Error::NoFreeQueue`](crate::Error::NoFreeQueue) when all queues have channels.
    pub fn open_channel(&self) -> Result<IoChannel> {
        let backend = self.backend.open_channel()?;
        Ok(IoChannel::new(self.info(), backend, &self.stats))
    }

    /// I/O statistics: the requests completed on every channel of this bdev (open or
    /// closed) since it was created, as SPDK's `bdev_get_iostat` reports them.
    ///
    /// An open channel's counts are as of its last [`IoChannel::poll`]. Takes a lock
    /// that channels take only when they open and close; the data path never waits on
    /// it.
    pub fn iostat(&self) -> IoStat {
        self.stats.total()
    }

    /// The device is gone.
    pub fn is_removed(&self) -> bool {
        self.backend.is_removed()
    }

    /// Where the device stands: [`DeviceState::Failed`] once it is gone (a vhost-user
    /// target that hung up is noticed at once: the transport watches its socket).
    pub fn state(&self) -> DeviceState {
        if self.is_removed() {
            DeviceState::Failed
        } else {
            DeviceState::Connected
        }
    }

    /// Module-specific details.
    pub fn details(&self) -> Vec<(&'static str, String)> {
        self.backend.details()
    }

    /// Stops the device; open channels fail their requests from now on.
    pub fn detach(&self) {
        self.backend.detach();
    }
}
