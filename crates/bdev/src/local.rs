//! What the local modules (`malloc`, `null`, `file`) share: a synchronous disk behind a
//! channel that does each request at once.
//!
//! A [`LocalDisk`] serves byte ranges with ordinary calls; [`LocalBdev`] turns it into a
//! [`BdevBackend`] whose channels ([`LocalChannel`]) run a request inside `try_submit`
//! and keep its completion until `reap`. Any number of channels may be open at once;
//! the disk does its own locking.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vbdev_virtio::DmaBuf;

use crate::bdev::{Bdev, BdevBackend};
use crate::channel::ChannelBackend;
use crate::direct::{ReadDest, WriteSrc};
use crate::error::{Error, Result};
use crate::io::{BdevInfo, Completion, IoError, IoOp, IoStatus, Request};

/// Log target of the local modules' bdevs and channels (each module logs its creation
/// under its own).
const TARGET: &str = "vbdev::bdev";

/// Descriptors per queue reported in [`BdevInfo`]; also the most completions a channel
/// holds before `try_submit` reports it full.
pub(crate) const QUEUE_SIZE: u16 = 1024;

/// Request queues reported in [`BdevInfo`]. Advisory: channels are not limited.
pub(crate) const NUM_QUEUES: u16 = 64;

/// A synchronous store of bytes. Offsets and lengths are in bytes, block-aligned and
/// within the disk: [`IoChannel::submit`](crate::IoChannel::submit) checked them.
pub(crate) trait LocalDisk: Send + Sync + fmt::Debug + 'static {
    /// Fills `buf` from `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Stores `buf` at `offset`.
    fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()>;
    /// Discards `len` bytes at `offset`; they read as zeros afterwards.
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Sets `len` bytes at `offset` to zero.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Module-specific `(key, value)` pairs for [`Bdev::details`].
    fn details(&self) -> Vec<(&'static str, String)>;
    /// Whether [`Self::read_to`] and [`Self::write_from`] work: the disk moves data
    /// between its own memory and the caller's buffers without a buffer in between.
    fn direct(&self) -> bool {
        false
    }
    /// Hands the `len` bytes at `offset` to `dest`, piece by piece, in order.
    /// `Ok(false)` when `dest` refused a piece (the read stopped there).
    fn read_to(&self, offset: u64, len: u64, dest: &mut dyn ReadDest) -> io::Result<bool> {
        let _ = (offset, len, dest);
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Stores the `len` bytes `src` gives at `offset`, taking them piece by piece
    /// straight into the disk's memory. `Ok(false)` when `src` could not give a piece:
    /// the write stopped there, and the pieces before it may be written (as a failed
    /// write on a disk may have written part of its range).
    fn write_from(&self, offset: u64, len: u64, src: &mut dyn WriteSrc) -> io::Result<bool> {
        let _ = (offset, len, src);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Checks a block size for the local modules: a power of two from 512 to 65536.
pub(crate) fn check_block_size(block_size: u32) -> Result<()> {
    if block_size.is_power_of_two() && (512..=65536).contains(&block_size) {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            option: "block_size",
            why: format!("{block_size} is not a power of two from 512 to 65536"),
        })
    }
}

/// The size in bytes of `num_blocks` blocks, refusing an empty disk or one whose size
/// overflows `u64`.
pub(crate) fn disk_bytes(num_blocks: u64, block_size: u32) -> Result<u64> {
    if num_blocks == 0 {
        return Err(Error::InvalidOption {
            option: "num_blocks",
            why: "must be at least 1".into(),
        });
    }
    num_blocks
        .checked_mul(u64::from(block_size))
        .ok_or_else(|| Error::InvalidOption {
            option: "num_blocks",
            why: format!("{num_blocks} blocks of {block_size} bytes overflow a 64-bit size"),
        })
}

/// The [`BdevInfo`] of a local bdev: every operation supported, [`NUM_QUEUES`] queues of
/// [`QUEUE_SIZE`], serial = name.
pub(crate) fn info(
    name: &str,
    product_name: &str,
    driver: &'static str,
    block_size: u32,
    num_blocks: u64,
    read_only: bool,
) -> BdevInfo {
    BdevInfo {
        name: name.to_owned(),
        product_name: product_name.to_owned(),
        driver,
        block_size,
        num_blocks,
        read_only,
        flush: true,
        unmap: true,
        write_zeroes: true,
        num_queues: NUM_QUEUES,
        queue_size: QUEUE_SIZE,
        serial: Some(name.to_owned()),
        uuid: None,
    }
}

/// A [`LocalDisk`] as a bdev backend.
#[derive(Debug)]
pub(crate) struct LocalBdev<D>(Arc<Shared<D>>);

/// What a local bdev and its channels share.
#[derive(Debug)]
struct Shared<D> {
    info: BdevInfo,
    disk: D,
    /// Set once by `detach`.
    detached: AtomicBool,
}

impl<D: LocalDisk> LocalBdev<D> {
    /// Wraps `disk` as a [`Bdev`] described by `info`.
    pub(crate) fn bdev(info: BdevInfo, disk: D) -> Bdev {
        Bdev::new(Arc::new(Self(Arc::new(Shared {
            info,
            disk,
            detached: AtomicBool::new(false),
        }))))
    }
}

impl<D: LocalDisk> BdevBackend for LocalBdev<D> {
    fn info(&self) -> &BdevInfo {
        &self.0.info
    }

    fn open_channel(&self) -> Result<Box<dyn ChannelBackend>> {
        let dev = &self.0;
        if dev.detached.load(Ordering::Relaxed) {
            return Err(Error::Removed(dev.info.name.clone()));
        }
        Ok(Box::new(LocalChannel {
            dev: Arc::clone(dev),
            block_size: u64::from(dev.info.block_size),
            done: VecDeque::with_capacity(usize::from(QUEUE_SIZE)),
            warned: false,
        }))
    }

    fn is_removed(&self) -> bool {
        self.0.detached.load(Ordering::Relaxed)
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        self.0.disk.details()
    }

    fn detach(&self) {
        let dev = &self.0;
        if !dev.detached.swap(true, Ordering::Relaxed) {
            tracing::info!(target: TARGET, name = %dev.info.name, driver = dev.info.driver, "bdev detached");
        }
    }
}

/// A channel of a [`LocalBdev`]: `try_submit` does the request and queues its
/// completion; `reap` hands completions back in order.
///
/// Requests run in the submitting thread. The queue of completions is allocated with
/// the channel and holds at most [`QUEUE_SIZE`]; `try_submit` reports the channel full
/// beyond that, so the channel itself never allocates after it is opened.
#[derive(Debug)]
pub(crate) struct LocalChannel<D> {
    dev: Arc<Shared<D>>,
    block_size: u64,
    done: VecDeque<Completion>,
    /// A failed request was logged at warn level; later ones log at debug.
    warned: bool,
}

impl<D: LocalDisk> LocalChannel<D> {
    /// Logs a failed request (at warn level once per channel: a full or failing disk
    /// fails every request) and gives its error.
    fn failed(&mut self, e: io::Error, op: IoOp, offset_blocks: u64, num_blocks: u64) -> IoError {
        let errno = e
            .raw_os_error()
            .unwrap_or_else(|| rustix::io::Errno::IO.raw_os_error());
        let name = &*self.dev.info.name;
        if std::mem::replace(&mut self.warned, true) {
            tracing::debug!(target: TARGET, name, %op, offset_blocks, num_blocks, error = %e, "request failed");
        } else {
            tracing::warn!(target: TARGET, name, %op, offset_blocks, num_blocks, error = %e, "request failed");
        }
        IoError::Backend { errno }
    }

    /// A direct read or write ([`ChannelBackend::read_direct`]): `call` with the byte
    /// offset and length.
    fn direct(
        &mut self,
        op: IoOp,
        offset_blocks: u64,
        num_blocks: u64,
        call: impl FnOnce(&D, u64, u64) -> io::Result<bool>,
    ) -> std::result::Result<bool, IoError> {
        if self.dev.detached.load(Ordering::Relaxed) {
            return Err(IoError::Removed);
        }
        // Cannot overflow: `IoChannel` checked the range against the disk's block count,
        // and the disk's size in bytes was checked to fit a u64.
        let offset = offset_blocks * self.block_size;
        let len = num_blocks * self.block_size;
        call(&self.dev.disk, offset, len).map_err(|e| self.failed(e, op, offset_blocks, num_blocks))
    }

    fn execute(&self, req: &mut Request) -> io::Result<()> {
        // Cannot overflow: `IoChannel::submit` checked `offset_blocks + num_blocks` against
        // the disk's block count, and the disk's size in bytes was checked to fit a u64.
        let offset = req.offset_blocks * self.block_size;
        let len = req.num_blocks * self.block_size;
        let no_buf = || io::Error::from(io::ErrorKind::InvalidInput);
        let disk = &self.dev.disk;
        match req.op {
            IoOp::Read => disk.read(offset, req.buf.as_deref_mut().ok_or_else(no_buf)?),
            IoOp::Write => disk.write(offset, req.buf.as_deref().ok_or_else(no_buf)?),
            IoOp::Flush => disk.flush(),
            IoOp::Unmap => disk.unmap(offset, len),
            IoOp::WriteZeroes => disk.write_zeroes(offset, len),
        }
    }
}

impl<D: LocalDisk> ChannelBackend for LocalChannel<D> {
    /// Does the request now, in this thread. The channel neither allocates nor locks;
    /// the disk may lock, allocate (`malloc`, a shard's first write) or make a system
    /// call (`file`).
    fn try_submit(&mut self, req: &mut Request) -> bool {
        if self.done.len() >= usize::from(QUEUE_SIZE) {
            return false;
        }
        let mut req = std::mem::replace(req, Request::flush(0));
        let status = if self.dev.detached.load(Ordering::Relaxed) {
            IoStatus::Failed(IoError::Removed)
        } else {
            match self.execute(&mut req) {
                Ok(()) => IoStatus::Success,
                Err(e) => {
                    IoStatus::Failed(self.failed(e, req.op, req.offset_blocks, req.num_blocks))
                }
            }
        };
        self.done.push_back(Completion {
            cookie: req.cookie,
            status,
            buf: req.buf,
        });
        true
    }

    fn flush(&mut self) {}

    fn reap(&mut self, out: &mut [Completion]) -> usize {
        let n = out.len().min(self.done.len());
        for (slot, c) in out.iter_mut().zip(self.done.drain(..n)) {
            *slot = c;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn buffer_visible(&self, _buf: &DmaBuf) -> bool {
        true
    }

    fn is_removed(&self) -> bool {
        self.dev.detached.load(Ordering::Relaxed)
    }

    fn wait(&mut self, _timeout: Duration) {}

    fn is_direct(&self) -> bool {
        self.dev.disk.direct()
    }

    fn read_direct(
        &mut self,
        offset_blocks: u64,
        num_blocks: u64,
        dest: &mut dyn ReadDest,
    ) -> std::result::Result<bool, IoError> {
        self.direct(IoOp::Read, offset_blocks, num_blocks, |d, off, len| {
            d.read_to(off, len, dest)
        })
    }

    fn write_direct(
        &mut self,
        offset_blocks: u64,
        num_blocks: u64,
        src: &mut dyn WriteSrc,
    ) -> std::result::Result<bool, IoError> {
        self.direct(IoOp::Write, offset_blocks, num_blocks, |d, off, len| {
            d.write_from(off, len, src)
        })
    }
}

/// Helpers for the local modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    use crate::{Completion, DmaBuf, IoChannel, IoStatus, Request};

    /// Bytes that differ from block to block and from seed to seed.
    pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ ((i >> 9) as u8))
            .collect()
    }

    /// A DMA buffer holding `data`.
    pub(crate) fn buf_with(data: &[u8]) -> DmaBuf {
        let mut buf = DmaBuf::alloc(data.len()).expect("dma buffer");
        buf.copy_from_slice(data);
        buf
    }

    /// Submits one request and returns its completion.
    pub(crate) fn run(ch: &mut IoChannel, req: Request) -> Completion {
        if let Err(r) = ch.submit(req) {
            panic!("submit rejected: {}", r.error);
        }
        let mut all = ch.drain(Duration::from_secs(5)).expect("request completes");
        assert_eq!(all.len(), 1);
        all.pop().expect("one completion")
    }

    /// Writes `data` at `offset_blocks`, which must succeed.
    pub(crate) fn write(ch: &mut IoChannel, offset_blocks: u64, data: &[u8]) {
        let n = data.len() as u64 / u64::from(ch.block_size());
        let c = run(ch, Request::write(offset_blocks, n, buf_with(data), 1));
        assert_eq!(c.status, IoStatus::Success);
    }

    /// Reads `len` bytes at `offset_blocks`, which must succeed.
    pub(crate) fn read(ch: &mut IoChannel, offset_blocks: u64, len: usize) -> Vec<u8> {
        let n = len as u64 / u64::from(ch.block_size());
        let c = run(
            ch,
            Request::read(offset_blocks, n, buf_with(&vec![0x5a; len]), 2),
        );
        assert_eq!(c.status, IoStatus::Success);
        c.buf.expect("read buffer given back").to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{IoChannel, RejectReason};

    /// A disk that fills reads with 7s, and fails every call with `ENOSPC` once `fail`
    /// is set.
    #[derive(Debug, Default)]
    struct Flaky {
        fail: Arc<AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> io::Result<()> {
            if self.fail.load(Ordering::Relaxed) {
                Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::NOSPC.raw_os_error(),
                ))
            } else {
                Ok(())
            }
        }
    }

    impl LocalDisk for Flaky {
        fn read(&self, _: u64, buf: &mut [u8]) -> io::Result<()> {
            self.check()?;
            buf.fill(7);
            Ok(())
        }
        fn write(&self, _: u64, _: &[u8]) -> io::Result<()> {
            self.check()
        }
        fn flush(&self) -> io::Result<()> {
            self.check()
        }
        fn unmap(&self, _: u64, _: u64) -> io::Result<()> {
            self.check()
        }
        fn write_zeroes(&self, _: u64, _: u64) -> io::Result<()> {
            self.check()
        }
        fn details(&self) -> Vec<(&'static str, String)> {
            Vec::new()
        }
    }

    /// A flaky bdev and the switch that makes it fail.
    fn flaky_bdev(num_blocks: u64) -> (Bdev, Arc<AtomicBool>) {
        let info = info("flaky0", "Flaky disk", "flaky", 512, num_blocks, false);
        let disk = Flaky::default();
        let fail = Arc::clone(&disk.fail);
        (LocalBdev::bdev(info, disk), fail)
    }

    fn submit(ch: &mut IoChannel, req: Request) {
        if let Err(r) = ch.submit(req) {
            panic!("submit rejected: {}", r.error);
        }
    }

    #[test]
    fn block_sizes_outside_512_to_64k_or_not_powers_of_two_are_refused() {
        for bs in [512, 1024, 4096, 65536] {
            check_block_size(bs).expect("valid block size");
        }
        for bs in [0, 256, 520, 3000, 131072] {
            let err = check_block_size(bs).expect_err("invalid block size");
            assert!(matches!(
                err,
                Error::InvalidOption {
                    option: "block_size",
                    ..
                }
            ));
            assert!(err.to_string().contains(&bs.to_string()), "{err}");
        }
    }

    #[test]
    fn empty_or_overflowing_disks_are_refused() {
        assert!(disk_bytes(0, 512).is_err());
        assert!(disk_bytes(u64::MAX / 512 + 1, 512).is_err());
        assert_eq!(disk_bytes(8, 4096).expect("fits"), 32768);
    }

    #[test]
    fn failed_call_completes_with_its_errno() {
        let (bdev, fail) = flaky_bdev(1);
        let expect_nospc = |ch: &mut IoChannel, req| {
            let c = testing::run(ch, req);
            assert_eq!(
                c.status,
                IoStatus::Failed(IoError::Backend {
                    errno: rustix::io::Errno::NOSPC.raw_os_error()
                })
            );
            c
        };
        let mut ch = bdev.open_channel().expect("channel");
        assert_eq!(testing::read(&mut ch, 0, 512), vec![7; 512]);
        fail.store(true, Ordering::Relaxed);
        let c = expect_nospc(
            &mut ch,
            Request::read(0, 1, testing::buf_with(&[0; 512]), 3),
        );
        assert_eq!(c.cookie, 3);
        assert_eq!(c.buf.expect("buffer given back").len(), 512);
        expect_nospc(
            &mut ch,
            Request::write(0, 1, testing::buf_with(&[0; 512]), 4),
        );
        expect_nospc(&mut ch, Request::flush(5));
        expect_nospc(&mut ch, Request::unmap(0, 1, 6));
        expect_nospc(&mut ch, Request::write_zeroes(0, 1, 7));
        let msg = IoError::Backend {
            errno: rustix::io::Errno::NOSPC.raw_os_error(),
        }
        .to_string();
        assert!(msg.contains("No space left on device"), "{msg}");
    }

    #[test]
    fn completions_beyond_the_queue_size_wait_in_the_channel() {
        let (bdev, _) = flaky_bdev(1);
        let mut ch = bdev.open_channel().expect("channel");
        let n = usize::from(QUEUE_SIZE) + 10;
        for i in 0..n {
            submit(&mut ch, Request::flush(i as u64));
        }
        assert_eq!(ch.queued(), 10);
        assert_eq!(ch.pending(), n);
        let done = ch.drain(Duration::from_secs(5)).expect("all complete");
        let cookies: Vec<u64> = done.iter().map(|c| c.cookie).collect();
        assert_eq!(cookies, (0..n as u64).collect::<Vec<_>>());
        assert!(done.iter().all(|c| c.status.is_success()));
        assert_eq!(ch.pending(), 0);
    }

    #[test]
    fn detach_refuses_new_requests_and_channels() {
        let (bdev, _) = flaky_bdev(4);
        let mut ch = bdev.open_channel().expect("channel");
        submit(&mut ch, Request::flush(1));
        bdev.detach();
        assert!(bdev.is_removed());
        assert!(ch.is_removed());
        let r = ch.submit(Request::flush(2)).expect_err("removed");
        assert_eq!(r.error, RejectReason::Removed);
        assert!(matches!(bdev.open_channel(), Err(Error::Removed(_))));
        // What completed before the detach is still handed back.
        let done = ch.drain(Duration::from_secs(5)).expect("drain");
        assert_eq!(done.len(), 1);
        assert!(done[0].status.is_success());
    }
}
