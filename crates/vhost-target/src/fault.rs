//! Fault injection: a switchboard a test arms to make a target misbehave on purpose.
//! Nothing is armed unless a test calls [`Faults::inject`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A bad used-ring entry the target writes instead of the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUsed {
    /// A used id beyond the queue size.
    IdOutOfRange,
    /// A used len larger than the chain's writable space.
    LenTooLarge,
    /// used.idx advanced by more than the number of completed chains.
    IdxJump,
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Hold the next request's completion for this long.
    Delay(Duration),
    /// Complete the next virtio-blk request with this status byte (`VIRTIO_BLK_S_*`)
    /// without executing it.
    BlkStatus(u8),
    /// Complete the next SCSI command with CHECK CONDITION and this fixed-format sense,
    /// without executing it.
    ScsiSense {
        /// Sense key.
        key: u8,
        /// Additional sense code.
        asc: u8,
        /// Additional sense code qualifier.
        ascq: u8,
    },
    /// Complete the next SCSI command with this SCSI status (BUSY, TASK SET FULL, ...)
    /// and no sense, without executing it.
    ScsiStatus(u8),
    /// Complete the next SCSI command with this virtio-scsi response code (§5.6.6.1)
    /// and no data, without executing it.
    ScsiResponse(u8),
    /// Close the connection after this many more requests have completed.
    CloseAfter(u64),
    /// Stop completing requests until [`Faults::clear`].
    StopAnswering,
    /// Complete the next request with a bad used-ring entry.
    BadUsed(BadUsed),
    /// Flip one byte (XOR 0xff) of the data the next read returns: its last byte. The
    /// read itself succeeds. Unlike the other one-shot faults this one waits for a read
    /// (virtio-blk `IN`, a SCSI READ command with data): the requests before it are
    /// served normally. Each injection corrupts one more read. For testing data
    /// verification (`vbdev perf -w verify`).
    CorruptRead,
}

/// The faults armed on one target. Cheap to check when nothing is armed: one atomic load.
#[derive(Debug, Default)]
pub struct Faults {
    armed: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// One-shot faults for the next requests, in order.
    once: VecDeque<Fault>,
    close_after: Option<u64>,
    stopped: bool,
    /// Reads still to corrupt ([`Fault::CorruptRead`]).
    corrupt_reads: u64,
}

/// What a request handler must do with the request it is about to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// The fault that applies to this request, if any (`Delay`, `BlkStatus`,
    /// `ScsiSense`, `ScsiStatus`, `ScsiResponse`, `BadUsed`).
    pub fault: Option<Fault>,
    /// Close the connection once this request is completed.
    pub close: bool,
    /// Do not complete this request at all.
    pub drop: bool,
}

impl Faults {
    /// Whether any fault is armed (one atomic load).
    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// Nothing armed.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        let mut s = self.lock();
        match fault {
            Fault::CloseAfter(n) => s.close_after = Some(n),
            Fault::StopAnswering => s.stopped = true,
            Fault::CorruptRead => s.corrupt_reads += 1,
            f => s.once.push_back(f),
        }
        self.armed.store(true, Ordering::Release);
    }

    /// Disarms everything (requests already held by `StopAnswering` stay unanswered).
    pub fn clear(&self) {
        *self.lock() = State::default();
        self.armed.store(false, Ordering::Release);
    }

    /// Whether `StopAnswering` is in force.
    pub fn stopped(&self) -> bool {
        self.armed.load(Ordering::Acquire) && self.lock().stopped
    }

    /// Called by a device about to return a read's data: whether to corrupt it
    /// ([`Fault::CorruptRead`]); each armed corruption is taken once.
    pub fn take_corrupt_read(&self) -> bool {
        if !self.armed.load(Ordering::Acquire) {
            return false;
        }
        let mut s = self.lock();
        if s.corrupt_reads == 0 {
            return false;
        }
        s.corrupt_reads -= 1;
        true
    }

    /// Called once per request before serving it: says which fault applies.
    pub fn decide(&self) -> Decision {
        if !self.armed.load(Ordering::Acquire) {
            return Decision::default();
        }
        let mut s = self.lock();
        if s.stopped {
            return Decision {
                drop: true,
                ..Decision::default()
            };
        }
        let fault = s.once.pop_front();
        let close = match s.close_after.as_mut() {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if close {
            // One-shot: the next frontend is served normally.
            s.close_after = None;
        }
        Decision {
            fault,
            close,
            drop: false,
        }
    }
}

/// A read's destination that flips the last of its `left` bytes when a
/// [`Fault::CorruptRead`] is armed (taken when that byte comes, so a read that fails
/// before it leaves the fault armed).
pub(crate) struct CorruptLast<'a> {
    pub inner: &'a mut dyn vbdev_bdev::ReadDest,
    pub left: usize,
    pub faults: &'a Faults,
}

impl CorruptLast<'_> {
    /// Whether the piece of `n` bytes ends the read and a corruption is armed.
    fn last(&mut self, n: usize) -> bool {
        let last = n > 0 && n == self.left;
        self.left = self.left.saturating_sub(n);
        if last && self.faults.take_corrupt_read() {
            tracing::debug!(target: "vbdev::target", "CorruptRead fault: last byte flipped");
            true
        } else {
            false
        }
    }
}

impl vbdev_bdev::ReadDest for CorruptLast<'_> {
    fn put(&mut self, data: &[u8]) -> bool {
        match data.split_last() {
            Some((b, head)) if self.last(data.len()) => {
                self.inner.put(head) && self.inner.put(&[b ^ 0xff])
            }
            _ => self.inner.put(data),
        }
    }

    fn zeros(&mut self, n: usize) -> bool {
        if self.last(n) {
            self.inner.zeros(n - 1) && self.inner.put(&[0xff])
        } else {
            self.inner.zeros(n)
        }
    }

    /// Bytes left as they are have no value to flip: the last one is written as 0xff.
    fn skip(&mut self, n: usize) -> bool {
        if self.last(n) {
            self.inner.skip(n - 1) && self.inner.put(&[0xff])
        } else {
            self.inner.skip(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_armed_by_default() {
        let f = Faults::new();
        assert_eq!(f.decide(), Decision::default());
        assert!(!f.stopped());
    }

    #[test]
    fn one_shot_faults_apply_in_order_once() {
        let f = Faults::new();
        f.inject(Fault::BlkStatus(1));
        f.inject(Fault::Delay(Duration::from_millis(5)));
        assert_eq!(f.decide().fault, Some(Fault::BlkStatus(1)));
        assert_eq!(
            f.decide().fault,
            Some(Fault::Delay(Duration::from_millis(5)))
        );
        assert_eq!(f.decide().fault, None);
    }

    #[test]
    fn close_after_counts_requests_and_fires_once() {
        let f = Faults::new();
        f.inject(Fault::CloseAfter(2));
        assert!(!f.decide().close);
        assert!(f.decide().close);
        assert!(!f.decide().close, "the next frontend is served normally");
    }

    #[test]
    fn corrupt_read_waits_for_a_read_and_is_taken_once_per_injection() {
        let f = Faults::new();
        assert!(!f.take_corrupt_read());
        f.inject(Fault::CorruptRead);
        f.inject(Fault::CorruptRead);
        assert_eq!(f.decide(), Decision::default(), "not a per-request fault");
        assert!(f.take_corrupt_read());
        assert!(f.take_corrupt_read());
        assert!(!f.take_corrupt_read());
    }

    #[test]
    fn stop_answering_drops_until_cleared() {
        let f = Faults::new();
        f.inject(Fault::StopAnswering);
        assert!(f.decide().drop);
        assert!(f.stopped());
        f.clear();
        assert!(!f.decide().drop);
    }
}
