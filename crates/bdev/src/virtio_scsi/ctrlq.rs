//! The control queue (task management, §5.6.6.2) and the event queue (§5.6.6.3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vbdev_virtio::scsi::{self as wire, Event, ScsiConfig, response, tmf};
use vbdev_virtio::{CallFd, ContextLayout, Notifier, Piece, RequestQueue, SplitQueue, Transport};

/// Bytes per control request context: the TMF request in its header slot, the response
/// in its status area.
const CTRL_LAYOUT: ContextLayout = ContextLayout {
    header: 64,
    status: 8,
};
const RESPONSE_UNSET: u8 = 0xff;
const _: () = assert!(wire::TMF_REQ_LEN <= 64 && wire::TMF_RESP_LEN <= 8);

/// The control queue. Task management requests are sent one at a time; a request the
/// device never answers keeps its slot (the device may still write it), and when no
/// slot is left, resets fail at once.
#[derive(Debug)]
pub(super) struct CtrlQueue {
    rq: RequestQueue,
    notifier: Notifier,
    call: CallFd,
    free: Vec<u16>,
    next_id: u64,
}

impl CtrlQueue {
    pub fn new(
        vq: SplitQueue,
        notifier: Notifier,
        call: CallFd,
        transport: Arc<dyn Transport>,
    ) -> vbdev_virtio::Result<Self> {
        let n = vq.capacity();
        Ok(Self {
            rq: RequestQueue::new(vq, CTRL_LAYOUT, 0, transport)?,
            notifier,
            call,
            free: (0..n).rev().collect(),
            next_id: 1,
        })
    }

    /// Sends LOGICAL UNIT RESET for `lun` and waits up to `timeout` for the answer.
    pub fn lun_reset(&mut self, lun: [u8; 8], timeout: Duration) -> Result<(), String> {
        // Answers to earlier requests that timed out give their slots back.
        self.reap_late();
        let Some(slot) = self.free.pop() else {
            return Err(format!(
                "the control queue is full of requests the target never answered ({} slots)",
                self.rq.contexts()
            ));
        };
        let id = self.next_id;
        self.next_id += 1;
        self.rq
            .write_header(slot, 0, &wire::tmf_req(tmf::LOGICAL_UNIT_RESET, lun, id));
        self.rq.write_status_u8(slot, 0, RESPONSE_UNSET);
        let pieces = [
            Piece::Header {
                off: 0,
                len: wire::TMF_REQ_LEN,
            },
            Piece::Status {
                off: 0,
                len: wire::TMF_RESP_LEN,
            },
        ];
        if self.rq.add(slot, None, &pieces).is_err() {
            self.free.push(slot);
            return Err("the control queue is broken or full".into());
        }
        if self.rq.publish() {
            self.notifier.notify();
        }
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(u) = self.rq.pop_used() {
                let s = u.cookie as u16;
                self.free.push(s);
                if s != slot {
                    continue; // a late answer to an earlier request
                }
                if let Err(e) = u.written {
                    return Err(format!("the target broke the control queue: {e}"));
                }
                let r = self.rq.status_u8(slot, 0);
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
            if let Some(e) = self.rq.ring().broken() {
                return Err(format!("the target broke the control queue: {e}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no answer on the control queue within {} ms; I/O continues",
                    timeout.as_millis()
                ));
            }
            self.rq.set_interrupts(true);
            if !self.rq.ring().has_used() {
                self.call.wait(left.min(Duration::from_millis(50)));
            }
            self.rq.set_interrupts(false);
        }
    }

    fn reap_late(&mut self) {
        while let Some(u) = self.rq.pop_used() {
            self.free.push(u.cookie as u16);
        }
    }
}

/// The event queue with its posted buffers.
#[derive(Debug)]
pub(super) struct EventQueue {
    /// Each context's status area is one event buffer.
    rq: RequestQueue,
    notifier: Notifier,
    buf_len: usize,
    count: u16,
}

impl EventQueue {
    pub fn new(
        vq: SplitQueue,
        notifier: Notifier,
        cfg: &ScsiConfig,
        transport: Arc<dyn Transport>,
    ) -> vbdev_virtio::Result<Self> {
        let buf_len = (cfg.event_info_size as usize).clamp(wire::EVENT_LEN, 256);
        let count = vq.capacity();
        let layout = ContextLayout {
            header: 0,
            status: buf_len,
        };
        Ok(Self {
            rq: RequestQueue::new(vq, layout, 0, transport)?,
            notifier,
            buf_len,
            count,
        })
    }

    fn post(&mut self, i: u16) {
        let buf = [Piece::Status {
            off: 0,
            len: self.buf_len,
        }];
        // Posted at start, re-posted only after it came back: never busy; a broken ring
        // takes no more buffers, and then no events come either.
        let _ = self.rq.add(i, None, &buf);
    }

    /// Posts every buffer (at attach).
    pub fn post_all(&mut self) {
        for i in 0..self.count {
            self.post(i);
        }
        if self.rq.publish() {
            self.notifier.notify();
        }
    }

    /// Events the device delivered since the last call; their buffers are posted again.
    pub fn take(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let mut reposted = false;
        while let Some(u) = self.rq.pop_used() {
            let i = u.cookie as u16;
            if i >= self.count {
                continue; // pop_used only returns cookies we gave; defensive
            }
            if let Ok(n) = u.written {
                if n as usize >= wire::EVENT_LEN {
                    let mut b = [0u8; wire::EVENT_LEN];
                    self.rq.read_status(i, 0, &mut b);
                    out.push(Event::parse(&b));
                }
            }
            self.post(i);
            reposted = true;
        }
        if reposted && self.rq.publish() {
            self.notifier.notify();
        }
        out
    }

    pub fn set_interrupts(&mut self, on: bool) {
        self.rq.set_interrupts(on);
    }
}
