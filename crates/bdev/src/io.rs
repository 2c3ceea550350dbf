//! What a bdev is ([`BdevInfo`]), what a request is and how it ends: [`Request`],
//! [`IoOp`], [`Completion`], [`IoStatus`], [`IoError`]. The bottom of the crate: every
//! other module uses these, and this one uses none of them.

use std::fmt;

use vbdev_scsi::sense::PackedSense;
use vbdev_virtio::{DmaBuf, QueueError};

/// What a bdev is and what it can do; fixed at attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdevInfo {
    /// Unique name (SPDK naming: the attach name for virtio-blk).
    pub name: String,
    /// Human name of the kind of device (`"VirtioBlk Disk"`).
    pub product_name: String,
    /// The module that made it (`"virtio_blk"`).
    pub driver: &'static str,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// FLUSH is meaningful (the device has a volatile write cache or says so).
    pub flush: bool,
    /// UNMAP (discard) is supported.
    pub unmap: bool,
    /// WRITE ZEROES is supported.
    pub write_zeroes: bool,
    /// Request queues: the most channels that can be open at once.
    pub num_queues: u16,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// Device serial or id, when it reports one.
    pub serial: Option<String>,
    /// A stable unique id from the device (SCSI VPD 0x83), as a UUID string.
    pub uuid: Option<String>,
}

/// The operation of a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Read blocks into the buffer.
    Read,
    /// Write the buffer to blocks.
    Write,
    /// Make completed writes durable.
    Flush,
    /// Discard blocks (virtio-blk DISCARD, SCSI UNMAP).
    Unmap,
    /// Set blocks to zero.
    WriteZeroes,
}

impl IoOp {
    /// Whether the operation changes data.
    pub fn modifies(self) -> bool {
        !matches!(self, IoOp::Read | IoOp::Flush)
    }
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Unmap => "unmap",
            IoOp::WriteZeroes => "write_zeroes",
        })
    }
}

/// A block request. It owns its buffer until its [`Completion`] hands it back.
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub op: IoOp,
    /// First block.
    pub offset_blocks: u64,
    /// Number of blocks (0 for a flush, which covers everything). Reads and writes say
    /// it too, and their buffer must hold exactly that many blocks: a request is complete
    /// as built, and a buffer of the wrong size is refused rather than read or written
    /// in full (as SPDK's `spdk_bdev_read_blocks` takes both).
    pub num_blocks: u64,
    /// Data for reads and writes: exactly `num_blocks * block_size` bytes.
    pub buf: Option<DmaBuf>,
    /// The caller's opaque value, returned in the completion.
    pub cookie: u64,
}

impl Request {
    /// Moves `src` into `dst` (which holds no buffer) field by field, leaving `src`
    /// without its buffer.
    ///
    /// For the hot path, where a request built a moment ago (a store per field) moves
    /// on: a whole-struct move loads those stores 16 bytes at a time, and a load that
    /// spans two stores cannot be forwarded from the store buffer. It waits for the
    /// buffer to drain, and with stores into lines the device holds in it (descriptors,
    /// headers) that is a cross-core miss, on every request. A field loaded alone is
    /// forwarded.
    #[inline(always)]
    pub(crate) fn move_fields(src: &mut Request, dst: &mut Request) {
        debug_assert!(dst.buf.is_none(), "moving a request over one with a buffer");
        dst.op = src.op;
        // `black_box`: the compiler would otherwise load these two neighbours as one.
        dst.offset_blocks = std::hint::black_box(src.offset_blocks);
        dst.num_blocks = std::hint::black_box(src.num_blocks);
        dst.cookie = src.cookie;
        dst.buf = src.buf.take();
    }

    /// Reads `num_blocks` blocks at `offset_blocks` into `buf`, which holds exactly
    /// that many ([`IoChannel::submit`](crate::IoChannel::submit) refuses it otherwise).
    pub fn read(offset_blocks: u64, num_blocks: u64, buf: DmaBuf, cookie: u64) -> Self {
        Self {
            op: IoOp::Read,
            offset_blocks,
            num_blocks,
            buf: Some(buf),
            cookie,
        }
    }

    /// Writes `buf`, exactly `num_blocks` blocks, at `offset_blocks`.
    pub fn write(offset_blocks: u64, num_blocks: u64, buf: DmaBuf, cookie: u64) -> Self {
        Self {
            op: IoOp::Write,
            offset_blocks,
            num_blocks,
            buf: Some(buf),
            cookie,
        }
    }

    /// Flushes the device's write cache.
    pub fn flush(cookie: u64) -> Self {
        Self {
            op: IoOp::Flush,
            offset_blocks: 0,
            num_blocks: 0,
            buf: None,
            cookie,
        }
    }

    /// Discards `num_blocks` blocks at `offset_blocks`.
    pub fn unmap(offset_blocks: u64, num_blocks: u64, cookie: u64) -> Self {
        Self {
            op: IoOp::Unmap,
            offset_blocks,
            num_blocks,
            buf: None,
            cookie,
        }
    }

    /// Zeroes `num_blocks` blocks at `offset_blocks`.
    pub fn write_zeroes(offset_blocks: u64, num_blocks: u64, cookie: u64) -> Self {
        Self {
            op: IoOp::WriteZeroes,
            offset_blocks,
            num_blocks,
            buf: None,
            cookie,
        }
    }
}

/// Why a request failed on the device. `Copy`: it keeps the device's own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// virtio-blk `VIRTIO_BLK_S_IOERR`.
    #[error("device I/O error")]
    BlkIoErr,
    /// virtio-blk `VIRTIO_BLK_S_UNSUPP`.
    #[error("request not supported by the device")]
    BlkUnsupp,
    /// A status byte the spec does not define (including none written at all).
    #[error("invalid status byte 0x{0:02x}")]
    BlkBadStatus(u8),
    /// The device broke the ring protocol.
    #[error("device protocol violation: {0}")]
    Protocol(QueueError),
    /// The request cannot be carried by the device queue (the driver's limits are
    /// computed so that this does not happen; it is reported rather than looped on).
    #[error("request does not fit the device queue")]
    DoesNotFit,
    /// The device went away (disconnect, failure, detach) before completing.
    #[error("device removed")]
    Removed,
    /// The device did not complete within the I/O timeout and was failed.
    #[error("device timed out")]
    TimedOut,
    /// A SCSI command ended in CHECK CONDITION, with the sense data the device reported
    /// (key, codes, INFORMATION such as the failing LBA, field pointer).
    #[error("SCSI CHECK CONDITION: {}", check_condition(sense))]
    ScsiCheckCondition {
        /// The parsed sense data (`sense.sense()`), packed: an `IoError` stays 24 bytes.
        sense: PackedSense,
    },
    /// A SCSI command ended with a status other than GOOD or CHECK CONDITION (after
    /// retries for BUSY and TASK SET FULL), or CHECK CONDITION without usable sense.
    #[error("SCSI status 0x{0:02x}")]
    ScsiStatus(u8),
    /// The virtio-scsi response code was not OK (virtio 1.2 §5.6.6.1).
    #[error("virtio-scsi response {name} ({0})", name = vbdev_virtio::scsi::response::name(*.0))]
    ScsiResponse(u8),
    /// A local backend's system call failed (`malloc`, `null`, `file` modules): the
    /// kernel's errno, or `EIO` when there was none (a file that shrank under a read).
    #[error("backend I/O error: {}", std::io::Error::from_raw_os_error(*.errno))]
    Backend {
        /// The `errno` value.
        errno: i32,
    },
}

/// The sense of a CHECK CONDITION for messages, unpacked once: key name, key, ASC, ASCQ.
fn check_condition(sense: &PackedSense) -> String {
    let s = sense.sense();
    format!(
        "{} (sense key 0x{:x}, ASC 0x{:02x}, ASCQ 0x{:02x})",
        s.sense_key.name().unwrap_or("reserved sense key"),
        s.sense_key.get(),
        s.asc,
        s.ascq
    )
}

/// The outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoStatus {
    /// Done.
    #[default]
    Success,
    /// Failed, with the device's reason.
    Failed(IoError),
}

impl IoStatus {
    /// Whether the request succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, IoStatus::Success)
    }
}

/// A finished request: its cookie, its outcome and its buffer.
#[derive(Debug, Default)]
pub struct Completion {
    /// The request's cookie.
    pub cookie: u64,
    /// The outcome.
    pub status: IoStatus,
    /// The request's buffer, given back.
    pub buf: Option<DmaBuf>,
}
