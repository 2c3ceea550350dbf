//! The control queue (task management, §5.6.6.2) and the event queue (§5.6.6.3).

use std::time::{Duration, Instant};

use vbdev_virtio::scsi::{self as wire, Event, ScsiConfig, response, tmf};
use vbdev_virtio::{CallFd, DmaBuf, DmaDomain, Iova, Notifier, Segment, SplitQueue};

/// Bytes per control request slot: TMF request, then the response byte.
const CTRL_STRIDE: usize = 64;
const CTRL_RESP: usize = 32;
const RESPONSE_UNSET: u8 = 0xff;

/// The control queue. Task management requests are sent one at a time; a request the
/// device never answers keeps its slot (the device may still write it), and when no
/// slot is left, resets fail at once.
#[derive(Debug)]
pub(super) struct CtrlQueue {
    vq: SplitQueue,
    notifier: Notifier,
    call: CallFd,
    slots: DmaBuf,
    free: Vec<u16>,
    next_id: u64,
}

impl CtrlQueue {
    pub fn new(vq: SplitQueue, notifier: Notifier, call: CallFd) -> vbdev_virtio::Result<Self> {
        let n = vq.capacity();
        let slots = DmaDomain::global().alloc_zeroed(usize::from(n) * CTRL_STRIDE, 64)?;
        Ok(Self {
            vq,
            notifier,
            call,
            slots,
            free: (0..n).rev().collect(),
            next_id: 1,
        })
    }

    fn iova(&self, slot: u16, off: usize) -> Iova {
        Iova(self.slots.iova().0 + (usize::from(slot) * CTRL_STRIDE + off) as u64)
    }

    /// Sends LOGICAL UNIT RESET for `lun` and waits up to `timeout` for the answer.
    pub fn lun_reset(&mut self, lun: [u8; 8], timeout: Duration) -> Result<(), String> {
        // Answers to earlier requests that timed out give their slots back.
        self.reap_late();
        let Some(slot) = self.free.pop() else {
            return Err(format!(
                "the control queue is full of requests the target never answered ({} slots)",
                self.vq.capacity()
            ));
        };
        let id = self.next_id;
        self.next_id += 1;
        let base = usize::from(slot) * CTRL_STRIDE;
        self.slots
            .write_at(base, &wire::tmf_req(tmf::LOGICAL_UNIT_RESET, lun, id));
        self.slots.write_at(base + CTRL_RESP, &[RESPONSE_UNSET]);
        let segs = [
            Segment::readable(self.iova(slot, 0), wire::TMF_REQ_LEN as u32),
            Segment::writable(self.iova(slot, CTRL_RESP), wire::TMF_RESP_LEN as u32),
        ];
        // SAFETY: both segments point into `self.slots` at `slot`'s bytes, which nobody
        // touches until the chain comes back from `pop_used` (the slot is off the free
        // list until then, and `self.slots` lives as long as the queue).
        if unsafe { self.vq.try_add(&segs, u64::from(slot)) }.is_err() {
            self.free.push(slot);
            return Err("the control queue is broken or full".into());
        }
        if self.vq.publish() {
            self.notifier.notify();
        }
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(u) = self.vq.pop_used() {
                let s = u.cookie as u16;
                self.free.push(s);
                if s != slot {
                    continue; // a late answer to an earlier request
                }
                if let Err(e) = u.written {
                    return Err(format!("the target broke the control queue: {e}"));
                }
                let r = self.slots.read_volatile(base + CTRL_RESP);
                return match r {
                    response::OK | response::FUNCTION_SUCCEEDED => Ok(()),
                    RESPONSE_UNSET => {
                        Err("the target completed the reset without a response".into())
                    }
                    r => Err(format!(
                        "the target answered LOGICAL UNIT RESET with {} ({r})",
                        response::name(r)
                    )),
                };
            }
            if let Some(e) = self.vq.broken() {
                return Err(format!("the target broke the control queue: {e}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no answer on the control queue within {} ms; I/O continues",
                    timeout.as_millis()
                ));
            }
            self.vq.set_interrupts(true);
            if !self.vq.has_used() {
                self.call.wait(left.min(Duration::from_millis(50)));
            }
            self.vq.set_interrupts(false);
        }
    }

    fn reap_late(&mut self) {
        while let Some(u) = self.vq.pop_used() {
            self.free.push(u.cookie as u16);
        }
    }
}

/// The event queue with its posted buffers.
#[derive(Debug)]
pub(super) struct EventQueue {
    vq: SplitQueue,
    notifier: Notifier,
    bufs: DmaBuf,
    buf_len: usize,
    count: u16,
}

impl EventQueue {
    pub fn new(vq: SplitQueue, notifier: Notifier, cfg: &ScsiConfig) -> vbdev_virtio::Result<Self> {
        let buf_len = (cfg.event_info_size as usize).clamp(wire::EVENT_LEN, 256);
        let count = vq.capacity();
        let bufs = DmaDomain::global().alloc_zeroed(usize::from(count) * buf_len, 64)?;
        Ok(Self {
            vq,
            notifier,
            bufs,
            buf_len,
            count,
        })
    }

    fn post(&mut self, i: u16) {
        let seg = [Segment::writable(
            Iova(self.bufs.iova().0 + (usize::from(i) * self.buf_len) as u64),
            self.buf_len as u32,
        )];
        // SAFETY: the segment is buffer `i` of `self.bufs`, which is posted at most once
        // at a time (posted at start, re-posted only after it came back from
        // `pop_used`) and lives as long as the queue; nothing else writes it.
        let _ = unsafe { self.vq.try_add(&seg, u64::from(i)) };
    }

    /// Posts every buffer (at attach).
    pub fn post_all(&mut self) {
        for i in 0..self.count {
            self.post(i);
        }
        if self.vq.publish() {
            self.notifier.notify();
        }
    }

    /// Events the device delivered since the last call; their buffers are posted again.
    pub fn take(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let mut reposted = false;
        while let Some(u) = self.vq.pop_used() {
            let i = u.cookie as u16;
            if i >= self.count {
                continue; // pop_used only returns cookies we gave; defensive
            }
            if let Ok(n) = u.written {
                if n as usize >= wire::EVENT_LEN {
                    let base = usize::from(i) * self.buf_len;
                    let mut b = [0u8; wire::EVENT_LEN];
                    for (k, x) in b.iter_mut().enumerate() {
                        *x = self.bufs.read_volatile(base + k);
                    }
                    out.push(Event::parse(&b));
                }
            }
            self.post(i);
            reposted = true;
        }
        if reposted && self.vq.publish() {
            self.notifier.notify();
        }
        out
    }

    pub fn set_interrupts(&mut self, on: bool) {
        self.vq.set_interrupts(on);
    }
}
