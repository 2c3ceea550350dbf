//! Errors of the block-device layer.

use crate::io::IoOp;

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Errors of the block-device layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Attaching a device failed.
    #[error("cannot attach {name}")]
    Attach {
        /// The bdev name.
        name: String,
        /// Cause.
        #[source]
        source: vbdev_virtio::Error,
    },
    /// A virtio error on an attached device.
    #[error("bdev {name}")]
    Device {
        /// The bdev name.
        name: String,
        /// Cause.
        #[source]
        source: vbdev_virtio::Error,
    },
    /// Every request queue of the device has a channel already.
    #[error(
        "bdev {name}: all {queues} request queues are in use; attach with more queues (vq_count / --queues)"
    )]
    NoFreeQueue {
        /// The bdev name.
        name: String,
        /// Queues the device was attached with.
        queues: u16,
    },
    /// Bad attach options.
    #[error("invalid option {option}: {why}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A bdev of this name exists already.
    #[error("bdev {0} already exists")]
    Exists(String),
    /// No bdev of this name.
    #[error("bdev {0} not found")]
    NotFound(String),
    /// The bdev was removed (its device is gone).
    #[error("bdev {0} was removed")]
    Removed(String),
    /// A request was refused.
    #[error("request refused")]
    Rejected(#[from] RejectReason),
    /// The device cannot do this.
    #[error("bdev {name}: {what} is not supported")]
    Unsupported {
        /// The bdev name.
        name: String,
        /// The operation.
        what: &'static str,
    },
    /// A reset failed or was not answered in time.
    #[error("bdev {name}: reset failed: {why}")]
    Reset {
        /// The bdev name.
        name: String,
        /// What happened.
        why: String,
    },
    /// A SCSI scan or management command failed.
    #[error("{name}: {why}")]
    Scan {
        /// The controller or bdev name.
        name: String,
        /// What happened.
        why: String,
    },
    /// Waiting for a completion took too long.
    #[error("no completion within {0:?}")]
    WaitTimeout(std::time::Duration),
}

impl Error {
    /// Wraps a virtio error of the attach of `name` (for `map_err`).
    pub(crate) fn attach(name: &str) -> impl Fn(vbdev_virtio::Error) -> Error + '_ {
        move |source| Error::Attach {
            name: name.to_owned(),
            source,
        }
    }
}

/// Why [`IoChannel::submit`](crate::IoChannel::submit) refused a request before sending
/// anything. `Copy`, so it costs nothing on the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// A write, unmap or write-zeroes to a read-only bdev.
    #[error("{op} refused: the device is read-only")]
    ReadOnly {
        /// The operation.
        op: IoOp,
    },
    /// The device does not support the operation.
    #[error("{op} is not supported by the device")]
    Unsupported {
        /// The operation.
        op: IoOp,
    },
    /// The blocks lie beyond the end of the device.
    #[error("blocks {offset_blocks}+{num_blocks} exceed the device's {capacity} blocks")]
    OutOfRange {
        /// First block.
        offset_blocks: u64,
        /// Block count.
        num_blocks: u64,
        /// Device size in blocks.
        capacity: u64,
    },
    /// A read or write of zero blocks, or a data buffer where none belongs.
    #[error("{op} of {num_blocks} blocks is invalid")]
    Empty {
        /// The operation.
        op: IoOp,
        /// Block count.
        num_blocks: u64,
    },
    /// The buffer's size does not match the block count.
    #[error("buffer of {actual} bytes for a request of {expected} bytes")]
    BufferSize {
        /// `num_blocks * block_size`.
        expected: u64,
        /// The buffer's length (0 when there is none).
        actual: u64,
    },
    /// The buffer lives in DMA memory the device cannot see.
    #[error("buffer in DMA region {region} is not visible to the device")]
    BufferNotVisible {
        /// The region index.
        region: u8,
    },
    /// The device's limits make this request impossible to send.
    #[error("request can never fit the device's limits")]
    NeverFits,
    /// The bdev was removed.
    #[error("the device was removed")]
    Removed,
}
