//! Per-bdev I/O statistics, as SPDK's `bdev_get_iostat` reports them.
//!
//! Counting costs the data path no lock, no atomic read-modify-write, no allocation and
//! no clock read. Each [`IoChannel`](crate::IoChannel) counts its own completions in plain
//! integers and publishes them with `Relaxed` stores into its [`ChannelStats`] at the end
//! of each `poll` that counted something (not once per request). The bdev's
//! [`BdevStats`] lists its open channels' stats (the list is locked only when a channel
//! opens or closes, and when someone reads the totals) and keeps the totals of channels
//! already closed; [`Bdev::iostat`](crate::Bdev::iostat) adds them up.
//!
//! Requests are counted when they complete: a success in its operation's counters, a
//! failure in [`IoStat::num_io_errors`]. A request that
//! [`IoChannel::submit`](crate::IoChannel::submit) rejects never reached the device and
//! is not counted at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::io::IoOp;

/// Completed requests of a bdev (or of one channel) and their bytes, by operation.
///
/// The names follow SPDK's `bdev_get_iostat`, plus the operations SPDK does not count
/// (write zeroes, flush) and a single failure count. Totals of a live bdev are a
/// snapshot: each counter is exact as of some moment of the read, but two counters may
/// be a `poll` apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStat {
    /// Bytes read by successful reads.
    pub bytes_read: u64,
    /// Successful reads.
    pub num_read_ops: u64,
    /// Bytes written by successful writes.
    pub bytes_written: u64,
    /// Successful writes.
    pub num_write_ops: u64,
    /// Bytes discarded by successful unmaps (blocks × block size).
    pub bytes_unmapped: u64,
    /// Successful unmaps.
    pub num_unmap_ops: u64,
    /// Bytes zeroed by successful write-zeroes requests (blocks × block size).
    pub bytes_zeroed: u64,
    /// Successful write-zeroes requests.
    pub num_write_zeroes_ops: u64,
    /// Successful flushes (a flush covers the whole device, so it has no byte count).
    /// A flush on a device without a volatile write cache completes at once and counts.
    pub num_flush_ops: u64,
    /// Requests that completed with an error, whatever their operation (their bytes are
    /// not counted anywhere).
    pub num_io_errors: u64,
    /// Summed read latency in nanoseconds: always 0 for now. Measuring it needs a clock
    /// read at the submit and at the completion of every request (tens of nanoseconds
    /// each, against a budget of about 150 ns per request at 7 M IOPS per core), so it
    /// is not done.
    pub read_latency_ns: u64,
    /// Summed write latency in nanoseconds: always 0 for now (see
    /// [`Self::read_latency_ns`]).
    pub write_latency_ns: u64,
    /// Summed unmap latency in nanoseconds: always 0 for now (see
    /// [`Self::read_latency_ns`]).
    pub unmap_latency_ns: u64,
}

/// Number of operation kinds; each has an op counter and a byte counter.
const OPS: usize = 5;

/// Index of the failure counter in [`Counts`], after the op/byte pairs.
const ERRORS: usize = 2 * OPS;

/// Number of counters.
const N: usize = ERRORS + 1;

/// The op counter's index of `op`; its byte counter follows.
fn slot(op: IoOp) -> usize {
    2 * match op {
        IoOp::Read => 0,
        IoOp::Write => 1,
        IoOp::Unmap => 2,
        IoOp::WriteZeroes => 3,
        IoOp::Flush => 4,
    }
}

/// One owner's plain counters: ops and bytes per operation, then failures.
///
/// Counters wrap (2^64 requests or bytes do not happen; wrapping keeps debug builds from
/// panicking on the data path if they ever did).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts([u64; N]);

impl Counts {
    /// Counts a successful request of `op` that moved `bytes` bytes.
    #[inline]
    pub(crate) fn success(&mut self, op: IoOp, bytes: u64) {
        let i = slot(op);
        self.0[i] = self.0[i].wrapping_add(1);
        self.0[i + 1] = self.0[i + 1].wrapping_add(bytes);
    }

    /// Counts a failed request.
    #[inline]
    pub(crate) fn failure(&mut self) {
        self.0[ERRORS] = self.0[ERRORS].wrapping_add(1);
    }

    fn add(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_add(b);
        }
    }

    /// The counters as an [`IoStat`].
    pub(crate) fn to_iostat(self) -> IoStat {
        let ops = |op| self.0[slot(op)];
        let bytes = |op| self.0[slot(op) + 1];
        IoStat {
            bytes_read: bytes(IoOp::Read),
            num_read_ops: ops(IoOp::Read),
            bytes_written: bytes(IoOp::Write),
            num_write_ops: ops(IoOp::Write),
            bytes_unmapped: bytes(IoOp::Unmap),
            num_unmap_ops: ops(IoOp::Unmap),
            bytes_zeroed: bytes(IoOp::WriteZeroes),
            num_write_zeroes_ops: ops(IoOp::WriteZeroes),
            num_flush_ops: ops(IoOp::Flush),
            num_io_errors: self.0[ERRORS],
            read_latency_ns: 0,
            write_latency_ns: 0,
            unmap_latency_ns: 0,
        }
    }
}

/// A channel's counters as readers see them.
///
/// Only the owning channel's thread stores (plain `store`, no read-modify-write), so the
/// cache line stays with that thread until someone reads the stats.
#[derive(Debug, Default)]
pub(crate) struct ChannelStats([AtomicU64; N]);

impl ChannelStats {
    /// Publishes the owner's counters.
    #[inline]
    pub(crate) fn publish(&self, c: &Counts) {
        for (a, v) in self.0.iter().zip(c.0) {
            // Relaxed: counters; readers want each value, not an order between them.
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Publishes the owner's counters of `op` alone (its ops and bytes).
    #[inline]
    pub(crate) fn publish_op(&self, c: &Counts, op: IoOp) {
        let i = slot(op);
        self.0[i].store(c.0[i], Ordering::Relaxed);
        self.0[i + 1].store(c.0[i + 1], Ordering::Relaxed);
    }

    /// Publishes the owner's failure counter alone.
    #[inline]
    pub(crate) fn publish_failures(&self, c: &Counts) {
        self.0[ERRORS].store(c.0[ERRORS], Ordering::Relaxed);
    }

    fn load(&self) -> Counts {
        Counts(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

/// What a bdev knows of its channels' counts.
#[derive(Debug, Default)]
struct Channels {
    /// The open channels' published counters.
    live: Vec<Weak<ChannelStats>>,
    /// The final counts of the channels already closed.
    retired: Counts,
}

/// The statistics of one bdev, shared by its [`Bdev`](crate::Bdev) handles and its
/// channels.
///
/// # Invariants
/// A channel's counts are in `live` (through its [`ChannelStats`]) from its open until
/// its close, and in `retired` from then on; the move happens under the lock, so
/// [`Self::total`] counts every channel exactly once.
#[derive(Debug, Default)]
pub(crate) struct BdevStats(Mutex<Channels>);

impl BdevStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        // The data under the lock is plain counters, always consistent: a panic while it
        // was held cannot have left it half-updated.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new channel; called when the channel opens.
    pub(crate) fn open(&self) -> Arc<ChannelStats> {
        let stats = Arc::new(ChannelStats::default());
        let mut ch = self.lock();
        // A channel removes its entry at close; this only drops ones that never did (a
        // leaked channel), so the list cannot grow without bound.
        ch.live.retain(|w| w.strong_count() > 0);
        ch.live.push(Arc::downgrade(&stats));
        stats
    }

    /// Folds a closing channel's final counts into the retired total and forgets it.
    pub(crate) fn close(&self, stats: &Arc<ChannelStats>, last: &Counts) {
        let mut ch = self.lock();
        ch.retired.add(last);
        let me = Arc::downgrade(stats);
        ch.live.retain(|w| !w.ptr_eq(&me) && w.strong_count() > 0);
    }

    /// The totals over closed and open channels.
    pub(crate) fn total(&self) -> IoStat {
        let ch = self.lock();
        let mut sum = ch.retired;
        for s in ch.live.iter().filter_map(Weak::upgrade) {
            sum.add(&s.load());
        }
        sum.to_iostat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_map_to_their_fields() {
        let mut c = Counts::default();
        c.success(IoOp::Read, 4096);
        c.success(IoOp::Read, 512);
        c.success(IoOp::Write, 8192);
        c.success(IoOp::Unmap, 1 << 20);
        c.success(IoOp::WriteZeroes, 1 << 21);
        c.success(IoOp::Flush, 0);
        c.failure();
        assert_eq!(
            c.to_iostat(),
            IoStat {
                bytes_read: 4608,
                num_read_ops: 2,
                bytes_written: 8192,
                num_write_ops: 1,
                bytes_unmapped: 1 << 20,
                num_unmap_ops: 1,
                bytes_zeroed: 1 << 21,
                num_write_zeroes_ops: 1,
                num_flush_ops: 1,
                num_io_errors: 1,
                ..IoStat::default()
            }
        );
    }

    #[test]
    fn closed_channels_move_to_retired_once() {
        let bdev = BdevStats::default();
        let a = bdev.open();
        let b = bdev.open();
        let mut ca = Counts::default();
        ca.success(IoOp::Write, 10);
        a.publish(&ca);
        let mut cb = Counts::default();
        cb.success(IoOp::Read, 7);
        cb.failure();
        b.publish(&cb);
        assert_eq!(bdev.total().num_write_ops, 1);
        // The final counts may be newer than the last publish.
        ca.success(IoOp::Write, 10);
        bdev.close(&a, &ca);
        drop(a);
        let t = bdev.total();
        assert_eq!((t.num_write_ops, t.bytes_written), (2, 20));
        assert_eq!((t.num_read_ops, t.bytes_read, t.num_io_errors), (1, 7, 1));
        assert_eq!(bdev.lock().live.len(), 1);
    }

    #[test]
    fn counters_wrap_instead_of_panicking() {
        let mut c = Counts::default();
        c.success(IoOp::Read, u64::MAX);
        c.success(IoOp::Read, 2);
        assert_eq!(c.to_iostat().bytes_read, 1);
    }
}
