//! The benchmark engine: jobs (a bdev, an LBA range, a depth, a workload) run by one
//! pinned thread per core.
//!
//! # The hot loop
//! Each job owns an [`IoChannel`] and `depth` slots, each with its DMA buffers,
//! allocated before the clock starts. The loop polls every job's channel into a
//! per-thread completion array, handles the batch and resubmits from the same slots:
//! no allocation, lock or system call per I/O (the channel's doorbell aside).
//!
//! Time: the clock is read once per poll batch that returned completions. That instant
//! ends the latency of every I/O of the batch and starts the latency of the I/Os
//! submitted while handling it (they reach the device at the next poll, so their
//! latency includes that wait, as an application's would). Empty polls read the clock
//! every [`IDLE_CLOCK_POLLS`] polls only, to notice the end of the run.
//!
//! Statistics are published to the main thread once per batch ([`Live`], relaxed
//! stores of counters only this thread writes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use vbdev_bdev::ticks::Tick;

use vbdev_bdev::{Bdev, Completion, DmaBuf, IoChannel, IoOp, Request};

use super::histogram::Histogram;
use crate::cli::Workload;

/// Completions taken per poll.
const BATCH: usize = 64;
/// Empty polls between two clock reads.
const IDLE_CLOCK_POLLS: u32 = 64;
/// How often in-flight I/Os are checked against `-k`.
const TIMEOUT_SCAN: Duration = Duration::from_millis(10);
/// bdevperf's reset period for `-w reset`.
const RESET_PERIOD: Duration = Duration::from_secs(10);
/// How long a reset may take.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the end of a run waits for in-flight I/O without `-k`.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// What one job does.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The bdev (also the job's name).
    pub bdev: Bdev,
    /// The core whose thread runs it.
    pub core: usize,
    /// First I/O-size unit of the job's range.
    pub ios_base: u64,
    /// Length of the range in I/O-size units.
    pub size_in_ios: u64,
    /// I/Os in flight.
    pub depth: u32,
    /// I/O size in bytes.
    pub io_size: usize,
    /// The workload.
    pub workload: Workload,
    /// Read percentage (rw, randrw).
    pub read_pct: u8,
    /// Unique data per write (`-U`).
    pub unique: bool,
}

impl JobSpec {
    /// The job's name: its bdev's.
    pub fn name(&self) -> &str {
        self.bdev.name()
    }
}

/// Settings common to all jobs.
#[derive(Debug, Clone, Copy)]
pub struct RunParams {
    /// Run time.
    pub time: Duration,
    /// `-k`: an I/O outstanding longer than this counts as timed out.
    pub timeout: Option<Duration>,
    /// Record a latency histogram (`-l`).
    pub histogram: bool,
}

/// A job's running totals, published by its thread once per poll batch.
#[derive(Debug)]
#[repr(align(128))]
pub struct Live {
    /// Completed I/Os.
    pub ios: AtomicU64,
    /// Failed I/Os.
    pub failed: AtomicU64,
    /// Timed-out I/Os.
    pub timeouts: AtomicU64,
    /// Sum of the completed I/Os' latencies, ns.
    pub lat_sum_ns: AtomicU64,
    /// Smallest latency, ns (`u64::MAX` before the first I/O).
    pub lat_min_ns: AtomicU64,
    /// Largest latency, ns.
    pub lat_max_ns: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            ios: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            lat_sum_ns: AtomicU64::new(0),
            lat_min_ns: AtomicU64::new(u64::MAX),
            lat_max_ns: AtomicU64::new(0),
        }
    }
}

/// Counters of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Completed I/Os (for verify: a write and its read-back).
    pub ios: u64,
    /// Failed I/Os.
    pub failed: u64,
    /// Timed-out I/Os.
    pub timeouts: u64,
    /// Sum of latencies, ns.
    pub lat_sum_ns: u64,
    /// Smallest latency, ns (`u64::MAX` when no I/O completed).
    pub lat_min_ns: u64,
    /// Largest latency, ns.
    pub lat_max_ns: u64,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            ios: 0,
            failed: 0,
            timeouts: 0,
            lat_sum_ns: 0,
            lat_min_ns: u64::MAX,
            lat_max_ns: 0,
        }
    }
}

impl Live {
    /// A snapshot.
    pub fn totals(&self) -> Totals {
        Totals {
            ios: self.ios.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            lat_sum_ns: self.lat_sum_ns.load(Ordering::Relaxed),
            lat_min_ns: self.lat_min_ns.load(Ordering::Relaxed),
            lat_max_ns: self.lat_max_ns.load(Ordering::Relaxed),
        }
    }

    fn publish(&self, t: &Totals) {
        // Counters only: the reader wants recent values, not a consistent snapshot.
        self.ios.store(t.ios, Ordering::Relaxed);
        self.failed.store(t.failed, Ordering::Relaxed);
        self.timeouts.store(t.timeouts, Ordering::Relaxed);
        self.lat_sum_ns.store(t.lat_sum_ns, Ordering::Relaxed);
        self.lat_min_ns.store(t.lat_min_ns, Ordering::Relaxed);
        self.lat_max_ns.store(t.lat_max_ns, Ordering::Relaxed);
    }
}

/// What a job did.
#[derive(Debug)]
pub struct JobResult {
    /// Its counters.
    pub totals: Totals,
    /// From the start to its last completion.
    pub runtime: Duration,
    /// It ended early: an I/O failed (not in `reset`), a verify mismatch, a failed reset.
    pub error: bool,
    /// Latency histogram with `-l`.
    pub histogram: Option<Histogram>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// A plain request of this kind.
    Busy(IoOp),
    /// The write of a verify I/O.
    VerifyWrite,
    /// The read-back of a verify I/O.
    VerifyRead,
}

#[derive(Debug)]
struct Slot {
    wbuf: Option<DmaBuf>,
    rbuf: Option<DmaBuf>,
    /// Offset within the job's range, in I/O units.
    rel: u64,
    submitted: Tick,
    state: State,
    /// Already counted by the `-k` scan.
    timed_out: bool,
}

#[derive(Debug)]
struct Job {
    spec: JobSpec,
    live: Arc<Live>,
    ch: IoChannel,
    slots: Vec<Slot>,
    /// Verify: offsets in flight, one bit per I/O unit of the range.
    busy: Vec<u64>,
    io_blocks: u64,
    block_size: u64,
    next_seq: u64,
    rng: u64,
    writes: u64,
    totals: Totals,
    hist: Option<Histogram>,
    running: bool,
    error: bool,
    reported: bool,
    done: Option<Duration>,
    next_reset: Option<Tick>,
}

/// Sets the calling thread's affinity to `core`.
fn pin(core: usize) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    if core >= rustix::thread::CpuSet::MAX_CPU {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    set.set(core);
    rustix::thread::sched_setaffinity(None, &set).map_err(std::io::Error::from)
}

/// Fills `buf` with the data written at byte offset `at` by write number `seq`: each
/// 8-byte word is `(seq << 40) ^ (its byte offset on the disk)`, so data is tied to
/// its place and to the write that put it there.
fn fill(buf: &mut [u8], at: u64, seq: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let v = (seq << 40) ^ at.wrapping_add(8 * i as u64);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

impl Job {
    fn new(spec: JobSpec, live: Arc<Live>, params: &RunParams, seed: u64) -> Result<Self, String> {
        let name = spec.name().to_owned();
        let ch = spec
            .bdev
            .open_channel()
            .map_err(|e| format!("{name}: cannot open a channel: {e}"))?;
        let verify = matches!(spec.workload, Workload::Verify | Workload::Reset);
        let (reads, writes) = match spec.workload {
            Workload::Read | Workload::Randread => (true, false),
            Workload::Write | Workload::Randwrite => (false, true),
            Workload::Rw | Workload::Randrw | Workload::Verify | Workload::Reset => (true, true),
            Workload::Unmap | Workload::Flush | Workload::WriteZeroes => (false, false),
        };
        let alloc = |on: bool| -> Result<Option<DmaBuf>, String> {
            if !on {
                return Ok(None);
            }
            let mut b = DmaBuf::alloc(spec.io_size)
                .map_err(|e| format!("{name}: cannot allocate I/O buffers: {e}"))?;
            fill(&mut b, 0, 0);
            Ok(Some(b))
        };
        let now = Tick::now();
        let mut slots = Vec::with_capacity(spec.depth as usize);
        for _ in 0..spec.depth {
            slots.push(Slot {
                wbuf: alloc(writes)?,
                rbuf: alloc(reads)?,
                rel: 0,
                submitted: now,
                state: State::Idle,
                timed_out: false,
            });
        }
        let busy = if verify {
            vec![0u64; spec.size_in_ios.div_ceil(64) as usize]
        } else {
            Vec::new()
        };
        let block_size = u64::from(spec.bdev.block_size());
        Ok(Self {
            io_blocks: spec.io_size as u64 / block_size,
            block_size,
            spec,
            live,
            ch,
            slots,
            busy,
            next_seq: 0,
            rng: seed | 1,
            writes: 0,
            totals: Totals::default(),
            hist: params.histogram.then(Histogram::new),
            running: true,
            error: false,
            reported: false,
            done: None,
            next_reset: None,
        })
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn random_below(&mut self, n: u64) -> u64 {
        // Multiply-shift: uniform enough for offsets, no division.
        ((u128::from(self.rand()) * u128::from(n)) >> 64) as u64
    }

    fn next_sequential(&mut self) -> u64 {
        let rel = self.next_seq;
        self.next_seq = if rel + 1 >= self.spec.size_in_ios {
            0
        } else {
            rel + 1
        };
        rel
    }

    fn is_busy(&self, rel: u64) -> bool {
        self.busy[(rel / 64) as usize] & (1 << (rel % 64)) != 0
    }

    fn set_busy(&mut self, rel: u64, on: bool) {
        let w = &mut self.busy[(rel / 64) as usize];
        if on {
            *w |= 1 << (rel % 64);
        } else {
            *w &= !(1 << (rel % 64));
        }
    }

    fn lba(&self, rel: u64) -> u64 {
        (self.spec.ios_base + rel) * self.io_blocks
    }

    /// Starts a new I/O on idle slot `i`. A rejected request ends the job with an error.
    fn issue(&mut self, i: usize, now: Tick) {
        let op = match self.spec.workload {
            Workload::Read | Workload::Randread => IoOp::Read,
            Workload::Write | Workload::Randwrite => IoOp::Write,
            Workload::Rw | Workload::Randrw => {
                if self.random_below(100) < u64::from(self.spec.read_pct) {
                    IoOp::Read
                } else {
                    IoOp::Write
                }
            }
            // The write of a verify I/O; its read follows its completion.
            Workload::Verify | Workload::Reset => IoOp::Write,
            Workload::Unmap => IoOp::Unmap,
            Workload::Flush => IoOp::Flush,
            Workload::WriteZeroes => IoOp::WriteZeroes,
        };
        let verify = matches!(self.spec.workload, Workload::Verify | Workload::Reset);
        let rel = match self.spec.workload {
            Workload::Randread | Workload::Randwrite | Workload::Randrw => {
                self.random_below(self.spec.size_in_ios)
            }
            _ if verify => {
                // Depth <= range length and this slot's offset is free: one is found
                // within one turn.
                let mut rel = self.next_sequential();
                while self.is_busy(rel) {
                    rel = self.next_sequential();
                }
                self.set_busy(rel, true);
                rel
            }
            _ => self.next_sequential(),
        };
        let lba = self.lba(rel);
        let cookie = i as u64;
        let unique = self.spec.unique;
        let slot = &mut self.slots[i];
        // Reads and writes take the slot's buffer as it lies, an `Option` moved whole:
        // unwrapping it would load the buffer's fields across the stores that just put
        // it back (a failed store forward per I/O). An idle slot has its buffers.
        let req = match op {
            IoOp::Read | IoOp::Write => {
                let buf = if op == IoOp::Read {
                    slot.rbuf.take()
                } else {
                    let mut buf = slot.wbuf.take();
                    if verify || unique {
                        self.writes += 1;
                        if let Some(b) = &mut buf {
                            fill(b, lba * self.block_size, self.writes);
                        }
                    }
                    buf
                };
                debug_assert!(buf.is_some(), "idle slot");
                Request {
                    op,
                    offset_blocks: lba,
                    num_blocks: self.io_blocks,
                    buf,
                    cookie,
                }
            }
            IoOp::Unmap => Request::unmap(lba, self.io_blocks, cookie),
            IoOp::WriteZeroes => Request::write_zeroes(lba, self.io_blocks, cookie),
            IoOp::Flush => Request::flush(cookie),
        };
        slot.rel = rel;
        slot.submitted = now;
        slot.timed_out = false;
        slot.state = if verify {
            State::VerifyWrite
        } else {
            State::Busy(op)
        };
        if let Err(r) = self.ch.submit(req) {
            let slot = &mut self.slots[i];
            match r.request.op {
                IoOp::Read => slot.rbuf = r.request.buf,
                IoOp::Write => slot.wbuf = r.request.buf,
                _ => {}
            }
            slot.state = State::Idle;
            if verify {
                self.set_busy(rel, false);
            }
            self.totals.failed += 1;
            self.fail(format_args!("{op} at LBA {lba} refused: {}", r.error));
        }
    }

    /// Ends the job with an error (in-flight I/O drains); prints the first reason.
    fn fail(&mut self, why: std::fmt::Arguments<'_>) {
        self.running = false;
        self.error = true;
        if !std::mem::replace(&mut self.reported, true) {
            eprintln!("Job {}: {why}", self.spec.name());
        }
    }

    /// Handles one completion at `now` (taking its buffer); resubmits the slot when
    /// `more`. By reference: moving the completion out of the poll array would copy
    /// fields just stored narrow with wide loads, a failed store forward per I/O.
    fn complete(&mut self, c: &mut Completion, now: Tick, more: bool) {
        let i = c.cookie as usize;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let state = std::mem::replace(&mut slot.state, State::Idle);
        match state {
            State::Busy(IoOp::Read) | State::VerifyRead => slot.rbuf = c.buf.take(),
            State::Busy(IoOp::Write) | State::VerifyWrite => slot.wbuf = c.buf.take(),
            _ => {}
        }
        let rel = slot.rel;
        let lba = self.lba(rel);
        if let vbdev_bdev::IoStatus::Failed(e) = c.status {
            if matches!(state, State::VerifyWrite | State::VerifyRead) {
                self.set_busy(rel, false);
            }
            self.totals.failed += 1;
            if self.spec.workload != Workload::Reset {
                let op = match state {
                    State::Busy(op) => op,
                    State::VerifyRead => IoOp::Read,
                    _ => IoOp::Write,
                };
                self.fail(format_args!("{op} at LBA {lba} failed: {e}"));
            }
        } else {
            match state {
                State::VerifyWrite => {
                    if !more {
                        self.set_busy(rel, false);
                        return;
                    }
                    // The read-back of the same range; the I/O's latency runs on.
                    let slot = &mut self.slots[i];
                    let buf = slot.rbuf.take().expect("idle read buffer");
                    slot.state = State::VerifyRead;
                    if let Err(r) =
                        self.ch
                            .submit(Request::read(lba, self.io_blocks, buf, c.cookie))
                    {
                        let slot = &mut self.slots[i];
                        slot.rbuf = r.request.buf;
                        slot.state = State::Idle;
                        self.set_busy(rel, false);
                        self.totals.failed += 1;
                        self.fail(format_args!("read at LBA {lba} refused: {}", r.error));
                    }
                    return;
                }
                State::VerifyRead => {
                    self.set_busy(rel, false);
                    let slot = &self.slots[i];
                    let (w, r) = (
                        slot.wbuf.as_deref().expect("write buffer back"),
                        slot.rbuf.as_deref().expect("read buffer back"),
                    );
                    if w != r {
                        let at = w.iter().zip(r).position(|(a, b)| a != b).unwrap_or(0);
                        let (wb, rb) = (w[at], r[at]);
                        eprintln!(
                            "Buffer mismatch! Target: {} Disk Offset: {lba}",
                            self.spec.name()
                        );
                        let bs = self.block_size as usize;
                        self.fail(format_args!(
                            "verify failed: first difference at byte {at} of the I/O \
                             (LBA {}, byte {} of the block): wrote 0x{wb:02x}, read 0x{rb:02x}",
                            lba + (at / bs) as u64,
                            at % bs
                        ));
                        return;
                    }
                }
                _ => {}
            }
            let slot = &self.slots[i];
            let ns = now.nanos_since(slot.submitted);
            let t = &mut self.totals;
            t.ios += 1;
            t.lat_sum_ns += ns;
            t.lat_min_ns = t.lat_min_ns.min(ns);
            t.lat_max_ns = t.lat_max_ns.max(ns);
            if let Some(h) = &mut self.hist {
                h.record(ns);
            }
        }
        if more && self.running {
            self.issue(i, now);
        }
    }

    /// Counts in-flight I/Os outstanding longer than `limit` (each once).
    fn scan_timeouts(&mut self, now: Tick, limit: Duration) {
        for s in &mut self.slots {
            if s.state != State::Idle
                && !s.timed_out
                && now.saturating_duration_since(s.submitted) > limit
            {
                s.timed_out = true;
                self.totals.timeouts += 1;
            }
        }
    }
}

/// What a job thread reports before the start.
pub type Ready = Result<(), String>;

/// Runs `jobs` on a thread pinned to `core`: sets up, reports on `ready`, waits for
/// `start`, runs for `params.time` unless `abort` was set meanwhile.
pub fn run_thread(
    core: usize,
    jobs: Vec<(JobSpec, Arc<Live>)>,
    params: RunParams,
    ready: mpsc::Sender<Ready>,
    start: Arc<Barrier>,
    abort: Arc<AtomicBool>,
) -> Vec<JobResult> {
    let setup = || -> Result<Vec<Job>, String> {
        pin(core).map_err(|e| format!("cannot pin a thread to core {core} (-m): {e}"))?;
        jobs.into_iter()
            .enumerate()
            .map(|(k, (spec, live))| {
                let seed = 0x9e37_79b9_7f4a_7c15u64 ^ ((core as u64) << 32) ^ k as u64;
                Job::new(spec, live, &params, seed)
            })
            .collect()
    };
    let mut jobs = match setup() {
        Ok(j) => {
            let _ = ready.send(Ok(()));
            j
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            Vec::new()
        }
    };
    start.wait();
    if abort.load(Ordering::Acquire) || jobs.is_empty() {
        return Vec::new();
    }
    run_jobs(&mut jobs, &params);
    jobs.into_iter()
        .map(|j| JobResult {
            totals: j.totals,
            runtime: j.done.unwrap_or(params.time),
            error: j.error,
            histogram: j.hist,
        })
        .collect()
}

fn run_jobs(jobs: &mut [Job], params: &RunParams) {
    let mut comps: Vec<Completion> = (0..BATCH).map(|_| Completion::default()).collect();
    let start = Tick::now();
    let deadline = start + params.time;
    let drain_until = deadline + params.timeout.unwrap_or(DRAIN_LIMIT);
    for j in jobs.iter_mut() {
        if j.spec.workload == Workload::Reset {
            j.next_reset = Some(start + RESET_PERIOD);
        }
        for i in 0..j.slots.len() {
            if j.running {
                j.issue(i, start);
            }
        }
    }
    let mut last_scan = start;
    let mut idle = 0u32;
    loop {
        let mut got = false;
        let mut active = false;
        let mut now = None;
        for j in jobs.iter_mut() {
            if j.done.is_some() {
                continue;
            }
            active = true;
            let n = j.ch.poll(&mut comps);
            if n == 0 {
                continue;
            }
            got = true;
            let t = Tick::now();
            now = Some(t);
            let more = t < deadline;
            for c in &mut comps[..n] {
                j.complete(c, t, more);
            }
            if !more {
                j.running = false;
            }
            j.live.publish(&j.totals);
            if !j.running && j.ch.pending() == 0 {
                j.done = Some(t - start);
            }
        }
        if !active {
            break;
        }
        if !got {
            idle += 1;
            // Tell the core we are spinning: on an SMT sibling of the target's thread
            // this gives it the execution resources back.
            std::hint::spin_loop();
            if idle < IDLE_CLOCK_POLLS {
                continue;
            }
        }
        idle = 0;
        let now = now.unwrap_or_else(Tick::now);
        let ended = now >= deadline;
        let scan = params
            .timeout
            .filter(|_| now.saturating_duration_since(last_scan) >= TIMEOUT_SCAN);
        if scan.is_some() {
            last_scan = now;
        }
        for j in jobs.iter_mut().filter(|j| j.done.is_none()) {
            if let Some(limit) = scan {
                j.scan_timeouts(now, limit);
                j.live.publish(&j.totals);
            }
            if ended {
                j.running = false;
            }
            if !j.running && j.ch.pending() == 0 {
                j.done = Some(now - start);
                continue;
            }
            if now >= drain_until {
                // Still in flight long after the end: starved for good.
                let stuck = j
                    .slots
                    .iter()
                    .filter(|s| s.state != State::Idle && !s.timed_out);
                j.totals.timeouts += stuck.count() as u64;
                j.live.publish(&j.totals);
                j.fail(format_args!(
                    "{} I/O still outstanding {:?} after the end of the run",
                    j.ch.pending(),
                    drain_until - deadline
                ));
                j.done = Some(now - start);
                continue;
            }
            if j.running && j.next_reset.is_some_and(|t| now >= t) {
                j.next_reset = Some(now + RESET_PERIOD);
                match j.spec.bdev.reset(RESET_TIMEOUT) {
                    Ok(()) | Err(vbdev_bdev::Error::Unsupported { .. }) => {}
                    Err(e) => {
                        eprintln!("Reset blockdev={} failed: {e}", j.spec.name());
                        j.error = true;
                        j.running = false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_ties_data_to_offset_and_write() {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        fill(&mut a, 4096, 1);
        fill(&mut b, 4096, 2);
        assert_ne!(a, b);
        fill(&mut b, 4096, 1);
        assert_eq!(a, b);
        assert_eq!(
            u64::from_le_bytes(a[8..].try_into().unwrap()),
            (1 << 40) ^ 4104
        );
    }
}
