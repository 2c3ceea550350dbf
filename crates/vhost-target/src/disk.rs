//! Synchronous block access for target request handlers.

use std::time::{Duration, Instant};

use vbdev_bdev::direct::{SliceDest, SliceSrc};
use vbdev_bdev::{
    Bdev, Completion, DirectError, DmaBuf, IoChannel, IoStatus, ReadDest, RejectReason, Request,
    WriteSrc,
};

/// What a target tells its frontend about a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// Discard is supported.
    pub unmap: bool,
    /// Write-zeroes is supported.
    pub write_zeroes: bool,
}

/// Why a block operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// Blocks beyond the end of the disk.
    #[error("blocks {lba}+{blocks} beyond the end of the disk ({num_blocks} blocks)")]
    OutOfRange {
        /// First block.
        lba: u64,
        /// Count.
        blocks: u64,
        /// Disk size.
        num_blocks: u64,
    },
    /// A buffer that is not a whole number of blocks.
    #[error("buffer of {len} bytes is not a multiple of the block size {block_size}")]
    Misaligned {
        /// Buffer length.
        len: usize,
        /// Block size.
        block_size: u32,
    },
    /// The disk is read-only.
    #[error("disk is read-only")]
    ReadOnly,
    /// The operation is not supported.
    #[error("operation not supported")]
    Unsupported,
    /// The backing device failed.
    #[error("I/O error")]
    Io,
}

/// Synchronous block access: what a target needs from the disk it serves. One instance
/// per serving thread.
pub trait BlockIo: Send {
    /// Geometry and capabilities.
    fn info(&self) -> DiskInfo;
    /// Reads `buf.len()` bytes (a multiple of the block size) at block `lba`.
    ///
    /// # Errors
    /// [`DiskError`] when the range or buffer is invalid or the device fails.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Reads `len` bytes (a multiple of the block size) at block `lba` into `dest`,
    /// straight from the backend's own memory when it has direct access (no copy in
    /// between), else through `scratch` (at least `len` bytes) or the backend's own
    /// buffer. `Ok(false)` when `dest` refused a piece.
    ///
    /// # Errors
    /// As [`BlockIo::read`]; `dest` may then have part of the data.
    fn read_to(
        &mut self,
        lba: u64,
        len: usize,
        scratch: &mut [u8],
        dest: &mut dyn ReadDest,
    ) -> Result<bool, DiskError> {
        let buf = &mut scratch[..len];
        self.read(lba, buf)?;
        Ok(dest.put(buf))
    }
    /// Writes `buf` at block `lba`.
    ///
    /// # Errors
    /// As [`BlockIo::read`], plus [`DiskError::ReadOnly`].
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError>;
    /// Writes `len` bytes at block `lba` taken from `src`, straight into the backend's
    /// own memory when it has direct access, else through `scratch` (at least `len`
    /// bytes) or the backend's own buffer. `Ok(false)` when `src` could not give a piece:
    /// through a buffer nothing is written then; with direct access the blocks before
    /// the piece may be (as a failed write on a disk may have written part of its range).
    ///
    /// # Errors
    /// As [`BlockIo::write`].
    fn write_from(
        &mut self,
        lba: u64,
        len: usize,
        scratch: &mut [u8],
        src: &mut dyn WriteSrc,
    ) -> Result<bool, DiskError> {
        let buf = &mut scratch[..len];
        if !src.take(buf) {
            return Ok(false);
        }
        self.write(lba, buf)?;
        Ok(true)
    }
    /// Makes completed writes durable.
    ///
    /// # Errors
    /// [`DiskError::Io`].
    fn flush(&mut self) -> Result<(), DiskError>;
    /// Discards `blocks` blocks at `lba` (they read back as zeros afterwards).
    ///
    /// # Errors
    /// As [`BlockIo::write`], plus [`DiskError::Unsupported`].
    fn unmap(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError>;
    /// Zeroes `blocks` blocks at `lba`.
    ///
    /// # Errors
    /// As [`BlockIo::unmap`].
    fn write_zeroes(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError>;
}

/// [`BlockIo`] over any bdev: one [`IoChannel`].
///
/// On a channel with direct access (the `malloc` and `null` bdevs:
/// [`IoChannel::is_direct`]) reads and writes are synchronous calls that move the data
/// straight between the bdev's memory and the target's destination or source (for a
/// target's request, the driver's buffers): no DMA buffer, no request, no completion to
/// poll. Every other bdev (virtio bdevs, files) gets requests on the channel, with data
/// copied through DMA buffers.
#[derive(Debug)]
pub struct ChannelIo {
    ch: IoChannel,
    /// `ch` has direct access.
    direct: bool,
    info: DiskInfo,
    /// Buffers of finished requests kept for the next ones (a few sizes; no allocation
    /// per request in steady state).
    spare: Vec<DmaBuf>,
}

/// How long a request to the backing bdev may take before the target reports an error.
const IO_WAIT: Duration = Duration::from_secs(60);
/// Buffers a `ChannelIo` keeps for reuse.
const SPARE_BUFFERS: usize = 16;

impl ChannelIo {
    /// Opens a channel on `bdev`.
    ///
    /// # Errors
    /// When the bdev has no free queue or is removed.
    pub fn open(bdev: &Bdev) -> vbdev_bdev::Result<Self> {
        let i = bdev.info();
        let info = DiskInfo {
            block_size: i.block_size,
            num_blocks: i.num_blocks,
            read_only: i.read_only,
            unmap: i.unmap,
            write_zeroes: i.write_zeroes,
        };
        let ch = bdev.open_channel()?;
        Ok(Self {
            direct: ch.is_direct(),
            ch,
            info,
            spare: Vec::with_capacity(SPARE_BUFFERS),
        })
    }

    fn buf(&mut self, len: usize) -> Result<DmaBuf, DiskError> {
        match self.spare.iter().position(|b| b.len() == len) {
            Some(i) => Ok(self.spare.swap_remove(i)),
            None => DmaBuf::alloc(len).map_err(|_| DiskError::Io),
        }
    }

    fn check(&self, lba: u64, len: usize) -> Result<u64, DiskError> {
        let bs = self.info.block_size;
        if len % bs as usize != 0 {
            return Err(DiskError::Misaligned {
                len,
                block_size: bs,
            });
        }
        let blocks = (len / bs as usize) as u64;
        self.range(lba, blocks)?;
        Ok(blocks)
    }

    fn range(&self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.info.num_blocks => Ok(()),
            _ => Err(DiskError::OutOfRange {
                lba,
                blocks,
                num_blocks: self.info.num_blocks,
            }),
        }
    }

    /// Runs one request to completion; gives back the buffer on success.
    fn run(&mut self, req: Request) -> Result<Option<DmaBuf>, DiskError> {
        if let Err(r) = self.ch.submit(req) {
            return Err(rejected(r.error));
        }
        // One request at a time: poll into a one-entry array (no allocation), sleeping
        // on the bdev's interrupt between polls, for at most IO_WAIT.
        let mut out = [Completion::default()];
        let mut deadline = None; // the clock is read only when the first poll comes back empty
        loop {
            if self.ch.poll(&mut out) == 1 {
                break;
            }
            let now = Instant::now();
            if now >= *deadline.get_or_insert(now + IO_WAIT) {
                return Err(DiskError::Io);
            }
            self.ch.wait(Duration::from_millis(10));
        }
        let [c] = out;
        match c.status {
            IoStatus::Success => Ok(c.buf),
            IoStatus::Failed(_) => Err(DiskError::Io),
        }
    }

    fn keep(&mut self, buf: Option<DmaBuf>) {
        if let Some(b) = buf {
            if self.spare.len() < SPARE_BUFFERS {
                self.spare.push(b);
            }
        }
    }
}

/// The [`DiskError`] for a request the channel refused.
fn rejected(r: RejectReason) -> DiskError {
    match r {
        RejectReason::ReadOnly { .. } => DiskError::ReadOnly,
        RejectReason::Unsupported { .. } => DiskError::Unsupported,
        RejectReason::OutOfRange {
            offset_blocks,
            num_blocks,
            capacity,
        } => DiskError::OutOfRange {
            lba: offset_blocks,
            blocks: num_blocks,
            num_blocks: capacity,
        },
        _ => DiskError::Io,
    }
}

/// The [`DiskError`] for a direct call's error.
fn direct_error(e: DirectError) -> DiskError {
    match e {
        DirectError::Rejected(r) => rejected(r),
        _ => DiskError::Io,
    }
}

impl BlockIo for ChannelIo {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let len = buf.len();
        match self.read_to(lba, len, &mut [], &mut SliceDest::new(buf))? {
            true => Ok(()),
            false => Err(DiskError::Io), // cannot happen: the slice takes `len` bytes
        }
    }

    fn read_to(
        &mut self,
        lba: u64,
        len: usize,
        _scratch: &mut [u8],
        dest: &mut dyn ReadDest,
    ) -> Result<bool, DiskError> {
        let blocks = self.check(lba, len)?;
        if len == 0 {
            return Ok(true);
        }
        if self.direct {
            return self.ch.read_direct(lba, blocks, dest).map_err(direct_error);
        }
        let dma = self.buf(len)?;
        let dma = self.run(Request::read(lba, blocks, dma, 0))?;
        let ok = match dma.as_deref() {
            Some(d) => dest.put(d),
            None => false,
        };
        self.keep(dma);
        Ok(ok)
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        match self.write_from(lba, buf.len(), &mut [], &mut SliceSrc::new(buf))? {
            true => Ok(()),
            false => Err(DiskError::Io), // cannot happen: the slice gives `len` bytes
        }
    }

    fn write_from(
        &mut self,
        lba: u64,
        len: usize,
        _scratch: &mut [u8],
        src: &mut dyn WriteSrc,
    ) -> Result<bool, DiskError> {
        if self.info.read_only {
            return Err(DiskError::ReadOnly);
        }
        let blocks = self.check(lba, len)?;
        if len == 0 {
            return Ok(true);
        }
        if self.direct {
            return self.ch.write_direct(lba, blocks, src).map_err(direct_error);
        }
        let mut dma = self.buf(len)?;
        if !src.take(&mut dma) {
            self.keep(Some(dma));
            return Ok(false);
        }
        let dma = self.run(Request::write(lba, blocks, dma, 0))?;
        self.keep(dma);
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        self.run(Request::flush(0)).map(|_| ())
    }

    fn unmap(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        if self.info.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.range(lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        self.run(Request::unmap(lba, blocks, 0)).map(|_| ())
    }

    fn write_zeroes(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        if self.info.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.range(lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        self.run(Request::write_zeroes(lba, blocks, 0)).map(|_| ())
    }
}
