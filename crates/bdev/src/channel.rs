//! Per-thread I/O channels.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vbdev_virtio::DmaBuf;

use crate::direct::{DirectError, ReadDest, WriteSrc};
use crate::error::{Error, RejectReason, Result};
use crate::io::{BdevInfo, Completion, IoError, IoOp, IoStatus, Request};
use crate::iostat::{BdevStats, ChannelStats, Counts, IoStat};

/// A module's side of a channel: one device queue, owned by one thread.
///
/// The hot-path methods (`try_submit`, `flush`, `reap`) must not block, allocate or lock.
///
/// A request's `cookie` is opaque to the backend and comes back unchanged in its one
/// [`Completion`] ([`IoChannel`] uses it to find what it remembers of the request).
pub trait ChannelBackend: Send + fmt::Debug {
    /// Takes the request (validated by [`IoChannel::submit`]) from where it lies and
    /// writes its descriptors: true when taken (`req` is left without its buffer; what
    /// else is left in it is unspecified), false, `req` untouched, when the queue has no
    /// room now.
    ///
    /// By reference, not by value: the request was built a moment ago, and moving it
    /// whole through the call would load its fresh stores across their boundaries (see
    /// `Request::move_fields`).
    fn try_submit(&mut self, req: &mut Request) -> bool;

    /// Makes submitted requests visible to the device, with at most one notification.
    fn flush(&mut self);

    /// Moves finished requests into `out`; returns how many it wrote.
    fn reap(&mut self, out: &mut [Completion]) -> usize;

    /// Requests accepted and not yet completed.
    fn in_flight(&self) -> usize;

    /// Whether the device can reach `buf`.
    fn buffer_visible(&self, buf: &DmaBuf) -> bool;

    /// The device is gone: every in-flight request completes with an error.
    fn is_removed(&self) -> bool;

    /// Sleeps until the device signals a completion or `timeout` passes (interrupt mode).
    fn wait(&mut self, timeout: Duration);

    /// The device's size in blocks now, for devices that can change size (SCSI
    /// capacity changes); `None` keeps the size the bdev had when the channel opened.
    fn num_blocks(&self) -> Option<u64> {
        None
    }

    /// Whether the channel has direct access ([`crate::direct`]): [`Self::read_direct`]
    /// and [`Self::write_direct`] work. Fixed for the channel's life.
    fn is_direct(&self) -> bool {
        false
    }

    /// Reads `num_blocks` blocks at `offset_blocks` into `dest` now, in this thread
    /// (checked by [`IoChannel::read_direct`]). `Ok(false)` when `dest` refused a piece.
    ///
    /// # Errors
    /// The device's failure.
    fn read_direct(
        &mut self,
        offset_blocks: u64,
        num_blocks: u64,
        dest: &mut dyn ReadDest,
    ) -> std::result::Result<bool, IoError> {
        let _ = (offset_blocks, num_blocks, dest);
        Err(IoError::DoesNotFit)
    }

    /// Writes `num_blocks` blocks at `offset_blocks` from `src` now (see
    /// [`Self::read_direct`]).
    ///
    /// # Errors
    /// The device's failure.
    fn write_direct(
        &mut self,
        offset_blocks: u64,
        num_blocks: u64,
        src: &mut dyn WriteSrc,
    ) -> std::result::Result<bool, IoError> {
        let _ = (offset_blocks, num_blocks, src);
        Err(IoError::DoesNotFit)
    }
}

/// A request [`IoChannel::submit`] refused, given back with the reason.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub error: RejectReason,
    /// The request, untouched (its buffer is still yours).
    pub request: Request,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// One thread's I/O queue to a bdev.
///
/// `submit` validates a request and hands it to the device queue, or keeps it in a FIFO
/// when the queue is full; `poll` publishes everything submitted with one doorbell,
/// collects completions and moves waiting requests into the space they freed. Requests
/// go to the device in submission order. Nothing here locks; a channel is `Send`, not
/// `Sync`.
///
/// The channel counts its completions for [`Bdev::iostat`](crate::Bdev::iostat) and
/// [`Self::iostat`]; closing it (dropping it) adds its counts to the bdev's.
#[derive(Debug)]
pub struct IoChannel {
    backend: Box<dyn ChannelBackend>,
    fifo: VecDeque<Request>,
    /// Completions for the caller, with the caller's cookies, already counted.
    ready: VecDeque<Completion>,
    /// A request went to the backend since its last flush.
    unflushed: bool,
    /// The requests the backend and `fifo` hold, by the cookie they carry there.
    tracker: Tracker,
    /// This channel's counts; `published` has them as of the last `poll`.
    counts: Counts,
    /// `counts` changed since they were last published.
    dirty: bool,
    published: Arc<ChannelStats>,
    bdev_stats: Arc<BdevStats>,
    block_size: u64,
    /// `log2(block_size)` when it is a power of two (every common size): the block
    /// count of a buffer is then a shift, not a division, on every request.
    block_shift: Option<u32>,
    num_blocks: u64,
    read_only: bool,
    flush: bool,
    unmap: bool,
    write_zeroes: bool,
    /// The backend has direct access ([`ChannelBackend::is_direct`]).
    direct: bool,
}

impl IoChannel {
    pub(crate) fn new(
        info: &BdevInfo,
        backend: Box<dyn ChannelBackend>,
        bdev_stats: &Arc<BdevStats>,
    ) -> Self {
        Self {
            fifo: VecDeque::with_capacity(usize::from(info.queue_size)),
            ready: VecDeque::with_capacity(64),
            unflushed: false,
            // The backend's queue, the FIFO behind it and split requests rarely hold
            // more than twice the queue size; beyond that the tracker grows like the FIFO.
            tracker: Tracker::with_capacity(2 * usize::from(info.queue_size)),
            counts: Counts::default(),
            dirty: false,
            published: bdev_stats.open(),
            bdev_stats: Arc::clone(bdev_stats),
            block_size: u64::from(info.block_size),
            block_shift: info
                .block_size
                .is_power_of_two()
                .then(|| info.block_size.trailing_zeros()),
            num_blocks: info.num_blocks,
            read_only: info.read_only,
            flush: info.flush,
            unmap: info.unmap,
            write_zeroes: info.write_zeroes,
            direct: backend.is_direct(),
            backend,
        }
    }

    /// The checks every request of `op` passes first: the device is there, and a
    /// modifying one is allowed.
    fn check_access(&self, op: IoOp) -> std::result::Result<(), RejectReason> {
        if self.backend.is_removed() {
            return Err(RejectReason::Removed);
        }
        if op.modifies() && self.read_only {
            return Err(RejectReason::ReadOnly { op });
        }
        Ok(())
    }

    /// `[offset_blocks, offset_blocks + num_blocks)` lies within the device.
    fn check_range(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> std::result::Result<(), RejectReason> {
        let capacity = self.backend.num_blocks().unwrap_or(self.num_blocks);
        match offset_blocks.checked_add(num_blocks) {
            Some(end) if end <= capacity => Ok(()),
            _ => Err(RejectReason::OutOfRange {
                offset_blocks,
                num_blocks,
                capacity,
            }),
        }
    }

    fn check(&self, req: &Request) -> std::result::Result<(), RejectReason> {
        let op = req.op;
        self.check_access(op)?;
        match op {
            IoOp::Read | IoOp::Write => {
                if req.num_blocks == 0 {
                    return Err(RejectReason::Empty { op, num_blocks: 0 });
                }
                let len = req.buf.as_ref().map_or(0, |b| b.len() as u64);
                // The block count the buffer holds; a shift for every common block size.
                let (blocks, rest) = match self.block_shift {
                    Some(shift) => (len >> shift, len & (self.block_size - 1)),
                    None => (len / self.block_size, len % self.block_size),
                };
                if rest != 0 || blocks != req.num_blocks {
                    return Err(RejectReason::BufferSize {
                        expected: req.num_blocks.saturating_mul(self.block_size),
                        actual: len,
                    });
                }
                if let Some(buf) = &req.buf {
                    if !self.backend.buffer_visible(buf) {
                        return Err(RejectReason::BufferNotVisible {
                            region: buf.region().0,
                        });
                    }
                }
            }
            IoOp::Unmap | IoOp::WriteZeroes => {
                let supported = if op == IoOp::Unmap {
                    self.unmap
                } else {
                    self.write_zeroes
                };
                if !supported {
                    return Err(RejectReason::Unsupported { op });
                }
                if req.num_blocks == 0 {
                    return Err(RejectReason::Empty { op, num_blocks: 0 });
                }
                if req.buf.is_some() {
                    return Err(RejectReason::BufferSize {
                        expected: 0,
                        actual: req.buf.as_ref().map_or(0, |b| b.len() as u64),
                    });
                }
            }
            IoOp::Flush => return Ok(()),
        }
        self.check_range(req.offset_blocks, req.num_blocks)
    }

    /// Submits a request. It reaches the device at the next [`Self::poll`]; when the
    /// queue is full it waits in this channel and goes out as space frees.
    ///
    /// A flush on a device without a volatile write cache completes at once.
    ///
    /// # Errors
    /// [`Rejected`] with the request when it is invalid (read-only device, out of range,
    /// bad buffer size, unsupported operation, device removed); nothing was sent.
    pub fn submit(&mut self, mut req: Request) -> std::result::Result<(), Rejected> {
        if let Err(error) = self.check(&req) {
            return Err(Rejected {
                error,
                request: req,
            });
        }
        if req.op == IoOp::Flush && !self.flush {
            self.counts.success(IoOp::Flush, 0);
            self.dirty = true;
            self.ready.push_back(Completion {
                cookie: req.cookie,
                status: IoStatus::Success,
                buf: None,
            });
            return Ok(());
        }
        let bytes = match req.op {
            IoOp::Flush => 0,
            // Reads and writes: the buffer's length; unmap and write zeroes: within the
            // device, whose size in bytes a device could make overflow, hence saturating.
            _ => req.num_blocks.saturating_mul(self.block_size),
        };
        req.cookie = self.tracker.insert(req.cookie, req.op, bytes);
        if self.fifo.is_empty() {
            if self.backend.try_submit(&mut req) {
                self.unflushed = true;
            } else {
                self.fifo.push_back(req);
            }
        } else {
            self.fifo.push_back(req);
        }
        Ok(())
    }

    /// Sends what was submitted (one doorbell at most), then moves finished requests into
    /// `out` and returns how many. Never blocks.
    ///
    /// Counts what completed and, when that changed the counts, publishes them for
    /// [`Bdev::iostat`](crate::Bdev::iostat) with a few relaxed stores (once per call,
    /// not per request).
    pub fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(c) = self.ready.pop_front() else {
                break;
            };
            out[n] = c;
            n += 1;
        }
        if std::mem::take(&mut self.unflushed) {
            self.backend.flush();
        }
        let reaped = self.backend.reap(&mut out[n..]);
        for c in &mut out[n..n + reaped] {
            c.cookie = self.finish(c.cookie, c.status.is_success());
        }
        n += reaped;
        if !self.fifo.is_empty() && self.backend.is_removed() {
            while let Some(req) = self.fifo.pop_front() {
                let cookie = self.finish(req.cookie, false);
                self.ready.push_back(Completion {
                    cookie,
                    status: IoStatus::Failed(IoError::Removed),
                    buf: req.buf,
                });
            }
        }
        while let Some(req) = self.fifo.front_mut() {
            if !self.backend.try_submit(req) {
                break;
            }
            self.fifo.pop_front();
        }
        // Publishes what the FIFO moved and the children of a split request that freed
        // slots let the backend send (cheap when there is nothing new).
        self.backend.flush();
        if std::mem::take(&mut self.dirty) {
            self.published.publish(&self.counts);
        }
        n
    }

    /// Counts the completion of the request the backend knew by `cookie` and returns the
    /// caller's cookie.
    #[inline]
    fn finish(&mut self, cookie: u64, success: bool) -> u64 {
        let Some(t) = self.tracker.remove(cookie) else {
            // A backend broke the ChannelBackend contract (a cookie it was not given, or
            // a request completed twice): pass it through uncounted rather than take
            // down the caller.
            debug_assert!(false, "backend completed unknown cookie {cookie}");
            return cookie;
        };
        if success {
            self.counts.success(t.op, t.bytes);
        } else {
            self.counts.failure();
        }
        self.dirty = true;
        t.cookie
    }

    /// This channel's counts: what it completed since it opened (exact, including the
    /// last poll). [`Bdev::iostat`](crate::Bdev::iostat) sums every channel's.
    pub fn iostat(&self) -> IoStat {
        self.counts.to_iostat()
    }

    /// The bdev's block size in bytes: a read or write buffer holds a whole number of
    /// these, exactly the request's `num_blocks`.
    pub fn block_size(&self) -> u32 {
        self.block_size as u32 // stored widened from the bdev's u32
    }

    /// Requests submitted and not yet returned by [`Self::poll`].
    pub fn pending(&self) -> usize {
        self.backend.in_flight() + self.fifo.len() + self.ready.len()
    }

    /// Requests waiting in this channel for room in the device queue.
    pub fn queued(&self) -> usize {
        self.fifo.len()
    }

    /// The device is gone.
    pub fn is_removed(&self) -> bool {
        self.backend.is_removed()
    }

    /// Whether this channel has direct access ([`crate::direct`]): the local modules that
    /// keep their data in memory (`malloc`, `null`). Fixed for the channel's life.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Checks a direct request of `op` as [`Self::submit`] checks a request.
    fn check_direct(
        &self,
        op: IoOp,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> std::result::Result<(), RejectReason> {
        if !self.direct {
            return Err(RejectReason::Unsupported { op });
        }
        self.check_access(op)?;
        if num_blocks == 0 {
            return Err(RejectReason::Empty { op, num_blocks });
        }
        self.check_range(offset_blocks, num_blocks)
    }

    /// Counts a direct request's outcome and publishes the counters it changed (two
    /// relaxed stores; a direct request has no `poll` to publish at).
    fn count_direct(&mut self, op: IoOp, num_blocks: u64, r: &std::result::Result<bool, IoError>) {
        if matches!(r, Ok(true)) {
            self.counts
                .success(op, num_blocks.saturating_mul(self.block_size));
            self.published.publish_op(&self.counts, op);
        } else {
            self.counts.failure();
            self.published.publish_failures(&self.counts);
        }
    }

    /// Reads `num_blocks` blocks at `offset_blocks` into `dest` now, in this thread,
    /// straight from the bdev's memory: no [`Request`], no buffer, no completion. Checked
    /// and counted as a submitted read is. Only on a channel that [`Self::is_direct`]
    /// (whose requests all complete inside [`Self::submit`], so a direct call is ordered
    /// after every request submitted before it).
    ///
    /// Returns `Ok(false)` when `dest` refused a piece: the read stopped there (counted
    /// as an I/O error).
    ///
    /// # Errors
    /// [`DirectError::Rejected`] as [`Self::submit`] rejects (and
    /// [`RejectReason::Unsupported`] without direct access);
    /// [`DirectError::Failed`] when the bdev failed.
    pub fn read_direct(
        &mut self,
        offset_blocks: u64,
        num_blocks: u64,
        dest: &mut dyn ReadDest,
    ) -> std::result::Result<bool, DirectError> {
        self.check_direct(IoOp::Read, offset_blocks, num_blocks)
            .map_err(DirectError::Rejected)?;
        let r = self.backend.read_direct(offset_blocks, num_blocks, dest);
        self.count_direct(IoOp::Read, num_blocks, &r);
        r.map_err(DirectError::Failed)
    }

    /// Writes `num_blocks` blocks at `offset_blocks` from `src` now, straight into the
    /// bdev's memory (see [`Self::read_direct`]). `Ok(false)` when `src` could not give a
    /// piece: the write stopped there, and blocks before it may have been written.
    ///
    /// # Errors
    /// As [`Self::read_direct`].
    pub fn write_direct(
        &mut self,
        offset_blocks: u64,
        num_blocks: u64,
        src: &mut dyn WriteSrc,
    ) -> std::result::Result<bool, DirectError> {
        self.check_direct(IoOp::Write, offset_blocks, num_blocks)
            .map_err(DirectError::Rejected)?;
        let r = self.backend.write_direct(offset_blocks, num_blocks, src);
        self.count_direct(IoOp::Write, num_blocks, &r);
        r.map_err(DirectError::Failed)
    }

    /// Sleeps until the device signals a completion or `timeout` passes, for callers
    /// that run their own poll loop and would rather sleep than spin. Returns at once
    /// when completions are waiting for [`Self::poll`].
    pub fn wait(&mut self, timeout: Duration) {
        if self.ready.is_empty() {
            self.backend.wait(timeout);
        }
    }

    /// Polls until one request completes, sleeping on the device's interrupt between
    /// polls. Completions beyond the first stay for the next call.
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] when nothing is pending.
    pub fn wait_one(&mut self) -> Result<Completion> {
        if self.pending() == 0 {
            return Err(Error::WaitTimeout(Duration::ZERO));
        }
        let mut out = [Completion::default()];
        loop {
            if self.poll(&mut out) == 1 {
                let [c] = out;
                return Ok(c);
            }
            self.backend.wait(Duration::from_millis(100));
        }
    }

    /// Polls until every pending request completes or `timeout` passes, returning all
    /// completions.
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] when requests are still pending at the deadline.
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<Completion>> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        let mut out: Vec<Completion> = (0..64).map(|_| Completion::default()).collect();
        while self.pending() > 0 {
            let n = self.poll(&mut out);
            all.extend(out[..n].iter_mut().map(std::mem::take));
            if n == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::WaitTimeout(timeout));
                }
                self.backend.wait(left.min(Duration::from_millis(100)));
            }
        }
        Ok(all)
    }
}

impl Drop for IoChannel {
    /// Adds this channel's counts to its bdev's retired total. Requests still in flight
    /// never completed here and are not counted.
    fn drop(&mut self) {
        self.bdev_stats.close(&self.published, &self.counts);
    }
}

/// What a channel remembers of an accepted request until it completes.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// The caller's cookie, given back in the completion.
    cookie: u64,
    op: IoOp,
    /// The slot holds an outstanding request (not a freed one).
    live: bool,
    /// Bytes the request covers when it succeeds.
    bytes: u64,
}

/// The requests a channel has accepted and not completed, in numbered slots: while the
/// backend or the FIFO holds a request, its cookie is its slot number.
///
/// # Invariants
/// A slot number is in `free` (and its slot is not `live`) or held by exactly one
/// outstanding request (and `live`).
#[derive(Debug)]
struct Tracker {
    slots: Vec<Tracked>,
    free: Vec<usize>,
}

impl Tracker {
    fn with_capacity(n: usize) -> Self {
        Self {
            slots: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
        }
    }

    /// Stores a request's cookie, op and bytes and returns its slot number. Allocates
    /// only when more requests are outstanding than ever before on this channel (beyond
    /// the capacity given at open).
    #[inline]
    fn insert(&mut self, cookie: u64, op: IoOp, bytes: u64) -> u64 {
        let t = Tracked {
            cookie,
            op,
            live: true,
            bytes,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = t;
                i
            }
            None => {
                self.slots.push(t);
                self.slots.len() - 1
            }
        };
        // usize is at most 64 bits on every target Rust supports.
        i as u64
    }

    /// Frees slot `cookie` and returns what it held; `None` when `cookie` is not an
    /// outstanding request's slot (already freed, or never given out).
    #[inline]
    fn remove(&mut self, cookie: u64) -> Option<Tracked> {
        let i = usize::try_from(cookie).ok()?;
        let slot = self.slots.get_mut(i)?;
        if !std::mem::replace(&mut slot.live, false) {
            return None;
        }
        let t = *slot;
        self.free.push(i);
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds up to 4 requests and completes them newest first; a request at an odd
    /// block fails.
    #[derive(Debug, Default)]
    struct Lifo {
        held: Vec<Request>,
    }

    impl ChannelBackend for Lifo {
        fn try_submit(&mut self, req: &mut Request) -> bool {
            if self.held.len() == 4 {
                return false;
            }
            self.held.push(std::mem::replace(req, Request::flush(0)));
            true
        }

        fn flush(&mut self) {}

        fn reap(&mut self, out: &mut [Completion]) -> usize {
            let mut n = 0;
            while n < out.len() {
                let Some(req) = self.held.pop() else { break };
                let status = if req.offset_blocks % 2 == 1 {
                    IoStatus::Failed(IoError::BlkIoErr)
                } else {
                    IoStatus::Success
                };
                out[n] = Completion {
                    cookie: req.cookie,
                    status,
                    buf: req.buf,
                };
                n += 1;
            }
            n
        }

        fn in_flight(&self) -> usize {
            self.held.len()
        }

        fn buffer_visible(&self, _buf: &DmaBuf) -> bool {
            true
        }

        fn is_removed(&self) -> bool {
            false
        }

        fn wait(&mut self, _timeout: Duration) {}
    }

    fn info(flush: bool) -> BdevInfo {
        BdevInfo {
            name: "Lifo0".into(),
            product_name: "test".into(),
            driver: "test",
            block_size: 512,
            num_blocks: 1024,
            read_only: false,
            flush,
            unmap: true,
            write_zeroes: true,
            num_queues: 1,
            queue_size: 4,
            serial: None,
            uuid: None,
        }
    }

    #[test]
    fn a_read_or_write_buffer_holds_exactly_the_blocks_it_names() {
        let stats = Arc::new(BdevStats::default());
        let mut ch = IoChannel::new(&info(false), Box::new(Lifo::default()), &stats);
        assert_eq!(ch.block_size(), 512);
        let buf = |len| DmaBuf::alloc(len).unwrap();
        // Two blocks named, four given: refused, not read in full.
        let r = ch.submit(Request::read(0, 2, buf(2048), 1)).unwrap_err();
        assert_eq!(
            r.error,
            RejectReason::BufferSize {
                expected: 1024,
                actual: 2048
            }
        );
        assert_eq!(
            r.request.buf.map(|b| b.len()),
            Some(2048),
            "buffer handed back"
        );
        let r = ch.submit(Request::write(0, 4, buf(1024), 2)).unwrap_err();
        assert_eq!(
            r.error,
            RejectReason::BufferSize {
                expected: 2048,
                actual: 1024
            }
        );
        // Part of a block, and a read of nothing.
        let r = ch.submit(Request::read(0, 1, buf(700), 3)).unwrap_err();
        assert!(matches!(
            r.error,
            RejectReason::BufferSize { actual: 700, .. }
        ));
        let r = ch.submit(Request::read(0, 0, buf(512), 4)).unwrap_err();
        assert_eq!(
            r.error,
            RejectReason::Empty {
                op: IoOp::Read,
                num_blocks: 0
            }
        );
        // What it names, it gets.
        ch.submit(Request::read(4, 2, buf(1024), 5)).unwrap();
        let c = ch.wait_one().unwrap();
        assert_eq!((c.cookie, c.status), (5, IoStatus::Success));
        assert_eq!(ch.iostat().bytes_read, 1024);
    }

    #[test]
    fn out_of_order_completions_get_their_cookies_and_counts() {
        let stats = Arc::new(BdevStats::default());
        let mut ch = IoChannel::new(&info(false), Box::new(Lifo::default()), &stats);
        // Ten requests through a queue of 4: six wait in the FIFO with tracked cookies.
        let cookies: Vec<u64> = (0..10).map(|i| 1000 + 7 * i).collect();
        for (i, &cookie) in cookies.iter().enumerate() {
            let block = i as u64; // odd blocks fail
            let req = match i % 3 {
                0 => Request::read(block, 2, DmaBuf::alloc(1024).unwrap(), cookie),
                1 => Request::unmap(block, 3, cookie),
                _ => Request::write_zeroes(block, 5, cookie),
            };
            ch.submit(req).unwrap();
        }
        // No volatile write cache: the flush completes at once, and counts.
        ch.submit(Request::flush(42)).unwrap();
        let mut got: Vec<(u64, bool)> = ch
            .drain(Duration::from_secs(1))
            .unwrap()
            .iter()
            .map(|c| (c.cookie, c.status.is_success()))
            .collect();
        got.sort_unstable();
        let mut want: Vec<(u64, bool)> = cookies
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i % 2 == 0))
            .chain([(42, true)])
            .collect();
        want.sort_unstable();
        assert_eq!(got, want);
        // Successes: reads at 0 and 6 (1024 bytes each), unmap at 4 (3 blocks),
        // write zeroes at 2 and 8 (5 blocks each), the flush; five failures.
        let expected = IoStat {
            bytes_read: 2048,
            num_read_ops: 2,
            bytes_unmapped: 3 * 512,
            num_unmap_ops: 1,
            bytes_zeroed: 2 * 5 * 512,
            num_write_zeroes_ops: 2,
            num_flush_ops: 1,
            num_io_errors: 5,
            ..IoStat::default()
        };
        assert_eq!(ch.iostat(), expected);
        assert_eq!(stats.total(), expected, "published by the last poll");
        // Slots are reused: no growth past the most ever outstanding.
        assert!(ch.tracker.slots.len() <= 10);
        assert_eq!(ch.tracker.free.len(), ch.tracker.slots.len());
        drop(ch);
        assert_eq!(stats.total(), expected);
    }

    #[test]
    fn unknown_or_repeated_slot_is_not_found() {
        let mut t = Tracker::with_capacity(2);
        let a = t.insert(5, IoOp::Read, 512);
        assert_eq!(t.remove(a).map(|x| x.cookie), Some(5));
        assert!(t.remove(a).is_none(), "freed twice");
        assert!(t.remove(99).is_none(), "never given out");
        assert!(t.remove(u64::MAX).is_none());
        // The freed slot is reused.
        assert_eq!(t.insert(6, IoOp::Write, 0), a);
    }
}
