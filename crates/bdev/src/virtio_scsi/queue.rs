//! The virtio-scsi request format (virtio 1.2 §5.6.6.1) on the shared request engine,
//! and the queue slot the channels of one thread (one client per channel) and the
//! scanner share.
//!
//! A block request becomes one or more SCSI commands within the LUN's limits; a child
//! that ends in UNIT ATTENTION, BUSY, TASK SET FULL or a retryable virtio response is
//! sent again after a backoff, so queue-full conditions never reach the caller.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vbdev_scsi::{Sense, Status, UnmapDescriptor, cdb};
use vbdev_virtio::scsi::{self as wire, CmdResp, response};
use vbdev_virtio::{CallFd, DmaBuf, Piece};

use crate::engine::{Attempts, CmdDone, Engine, Format, Slot, SlotView, Verdict};
use crate::io::{IoError, IoOp, IoStatus, Request};

use super::Lun;

/// Written into the response byte before submission: no device writes it, so a
/// completion without a response is caught.
const RESPONSE_UNSET: u8 = 0xff;
/// Retries of a child that got UNIT ATTENTION (each UA is reported once).
const MAX_UA_RETRIES: u16 = 8;
/// First and largest backoff for BUSY, TASK SET FULL and retryable responses.
const BACKOFF_MIN: Duration = Duration::from_micros(100);
const BACKOFF_MAX: Duration = Duration::from_millis(20);

/// Where things live in a context's DMA slot (request, UNMAP parameter list: written by
/// the driver) and in its status area (the response: written by the device), kept
/// apart so that the device's writes never share a cache line with the requests the
/// driver writes next (see the engine's module documentation).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub stride: usize,
    pub req_len: usize,
    pub resp_len: usize,
    /// Bytes of status area per context: the response, rounded up to 8.
    pub resp_stride: usize,
    pub unmap_off: usize,
}

impl Layout {
    pub fn new(cfg: &wire::ScsiConfig) -> Self {
        let req_len = cfg.cmd_req_len();
        let resp_len = cfg.cmd_resp_len();
        // The request starts a cache line and fills as few as it can (one for every
        // cdb_size up to 45): each request built stores into as few lines the device
        // read last as possible. The UNMAP list, rarely sent, goes on the next line.
        let unmap_off = req_len.next_multiple_of(64);
        let stride = (unmap_off + cdb::unmap_parameter_list_len(1)).next_multiple_of(64);
        Self {
            stride,
            req_len,
            resp_len,
            resp_stride: resp_len.next_multiple_of(8),
            unmap_off,
        }
    }
}

/// A raw SCSI command from the scanner or another management user.
#[derive(Debug)]
pub(super) struct Cmd {
    pub lun: [u8; 8],
    pub cdb: Vec<u8>,
    /// Data-in (`data_in`) or data-out buffer, all of it transferred.
    pub buf: Option<DmaBuf>,
    pub data_in: bool,
}

/// What a command came back with.
#[derive(Debug)]
pub(super) struct CmdOutcome {
    pub resp: CmdResp,
    /// The sense bytes the device reported (at most `sense_size`).
    pub sense: Vec<u8>,
    pub buf: Option<DmaBuf>,
    /// The command never completed normally (device failed, ring broken).
    pub error: Option<IoError>,
}

impl CmdOutcome {
    pub fn is_good(&self) -> bool {
        self.error.is_none() && self.resp.response == response::OK && self.resp.status == 0
    }

    pub fn sense(&self) -> Option<Sense> {
        if self.error.is_none()
            && self.resp.response == response::OK
            && Status(self.resp.status).is_check_condition()
        {
            Sense::parse(&self.sense).ok()
        } else {
            None
        }
    }

    /// Data-in bytes the device transferred.
    pub fn data(&self) -> &[u8] {
        let Some(b) = &self.buf else { return &[] };
        let n = b.len().saturating_sub(self.resp.residual as usize);
        &b[..n]
    }

    /// A description for logs and errors.
    pub fn describe(&self) -> String {
        if let Some(e) = self.error {
            return e.to_string();
        }
        if self.resp.response != response::OK {
            return format!(
                "virtio-scsi response {}",
                response::name(self.resp.response)
            );
        }
        match self.sense() {
            Some(s) => format!(
                "CHECK CONDITION, sense key {} ASC 0x{:02x} ASCQ 0x{:02x}",
                s.sense_key, s.asc, s.ascq
            ),
            None => format!("SCSI status {}", Status(self.resp.status)),
        }
    }
}

/// What a command's response held.
#[derive(Debug, Default)]
pub(super) struct ScsiReply {
    pub resp: CmdResp,
    pub sense: Vec<u8>,
}

impl From<CmdDone<ScsiFormat>> for CmdOutcome {
    fn from(d: CmdDone<ScsiFormat>) -> Self {
        Self {
            resp: d.reply.resp,
            sense: d.reply.sense,
            buf: d.cmd.buf,
            error: d.error,
        }
    }
}

/// The index of [`ScsiFormat::zeroes`] among the queue's fixed buffers.
const ZEROES: usize = 0;

/// The virtio-scsi request format of one controller.
#[derive(Debug)]
pub(super) struct ScsiFormat {
    pub layout: Layout,
    /// Zeros that write-zeroes sends (WRITE SAME's one block, or whole emulated
    /// writes); never written after allocation.
    pub zeroes: Arc<DmaBuf>,
}

/// A virtio-scsi command request (§5.6.6.1) with a CDB of at most 16 bytes, as the
/// little-endian words of its first 64 bytes: lun (bytes 0..8), id (8..16), task_attr
/// SIMPLE, prio 0 and crn 0 (16..19), the CDB (19..35), zeros.
#[inline]
fn header_words(lun: [u8; 8], tag: u64, (lo, hi): (u64, u64)) -> [u64; 8] {
    [
        u64::from_le_bytes(lun),
        tag,
        u64::from(wire::task_attr::SIMPLE) | lo << 24,
        lo >> 40 | hi << 24,
        hi >> 40,
        0,
        0,
        0,
    ]
}

impl ScsiFormat {
    fn header(&self, slot: &mut Slot<'_>, lun: [u8; 8], tag: u64, cdb: &[u8]) {
        let len = self.layout.req_len;
        if len <= 64 {
            // The usual case: the request's whole line written in one fixed-size copy
            // (the bytes after the request are the slot's own, unused).
            let mut req = [0u8; 64];
            let ok = wire::write_cmd_req(&mut req[..len], lun, tag, cdb);
            debug_assert!(ok, "CDBs are at most 16 bytes and cdb_size is at least 16");
            slot.write(0, &req);
        } else {
            let mut req = [0u8; wire::CMD_HEADER_LEN + wire::CDB_SIZE_MAX as usize];
            let req = &mut req[..len];
            let ok = wire::write_cmd_req(req, lun, tag, cdb);
            debug_assert!(ok, "CDBs are at most 16 bytes and cdb_size is at least 16");
            slot.write(0, req);
        }
        slot.header(0, len);
    }

    /// [`Self::header`] for a block request's CDB, in the usual case (the request within
    /// its slot's first 64 bytes) as eight 8-byte words computed in registers. Built as
    /// bytes in memory and copied, the request is loaded 16 bytes at a time across its
    /// narrower stores, which cannot be forwarded from the store buffer: that waits for
    /// the buffer to drain, and with stores into lines the device holds in it, a
    /// cross-core miss per request. Same bytes as [`wire::write_cmd_req`] (§5.6.6.1:
    /// lun, id, task_attr, prio, crn, cdb), zeros after.
    #[inline]
    fn io_header(&self, slot: &mut Slot<'_>, lun: [u8; 8], tag: u64, cdb: &cdb::Cdb) {
        let len = self.layout.req_len;
        if len > 64 || len < wire::CMD_HEADER_LEN + cdb.len() {
            self.header(slot, lun, tag, cdb.as_bytes());
            return;
        }
        slot.write_words(0, &header_words(lun, tag, cdb.words()));
        slot.header(0, len);
    }

    fn resp(&self, slot: &mut Slot<'_>) {
        slot.status(0, self.layout.resp_len);
    }

    fn read_resp(&self, slot: &SlotView<'_>) -> CmdResp {
        let mut hdr = [0u8; wire::CMD_RESP_LEN];
        slot.read_status(0, &mut hdr);
        CmdResp::parse(&hdr)
    }

    fn sense_len(&self, resp: &CmdResp) -> usize {
        (resp.sense_len as usize).min(self.layout.resp_len - wire::CMD_RESP_LEN)
    }
}

impl Format for ScsiFormat {
    type Target = Lun;
    type Cmd = Cmd;
    type Reply = ScsiReply;

    fn stride(&self) -> usize {
        self.layout.stride
    }

    fn cmd_buf(cmd: &mut Cmd) -> &mut Option<DmaBuf> {
        &mut cmd.buf
    }

    fn fixed(&self) -> Vec<Arc<DmaBuf>> {
        vec![Arc::clone(&self.zeroes)] // ZEROES
    }

    fn status_stride(&self) -> usize {
        self.layout.resp_stride
    }

    fn status_marker(&self) -> Option<(usize, u8)> {
        Some((wire::CMD_RESP_RESPONSE_OFF, RESPONSE_UNSET))
    }

    fn child_units(&self, req: &Request, lun: &Lun, left: u64) -> u64 {
        let l = lun.limits();
        match req.op {
            IoOp::Read | IoOp::Write => left.min(l.max_transfer_blocks),
            IoOp::Flush => 1,
            IoOp::Unmap => left.min(l.max_unmap_blocks),
            IoOp::WriteZeroes if l.write_same_16 => left.min(l.max_write_same_blocks),
            IoOp::WriteZeroes => left
                .min(l.max_transfer_blocks)
                .min(self.zeroes.len() as u64 / lun.block_size),
        }
    }

    fn build_io(
        &self,
        slot: &mut Slot<'_>,
        r: &Request,
        lun: &Lun,
        start: u64,
        units: u64,
        tag: u64,
    ) {
        let (bs, l) = (lun.block_size, lun.limits());
        let lba = r.offset_blocks + start;
        // Block counts fit a u32: every limit is capped at u32::MAX blocks.
        let n = units as u32;
        let data = start * bs;
        let bytes = (units * bs) as u32; // children are at most 1 GiB
        let unmap_len = cdb::unmap_parameter_list_len(1);
        let zeroes_len = if l.write_same_16 {
            bs
        } else {
            u64::from(bytes)
        };
        let cdb = match r.op {
            IoOp::Read => cdb::read(lba, n, false),
            IoOp::Write => cdb::write(lba, n, false),
            IoOp::Flush => cdb::synchronize_cache_10(0, 0, false),
            IoOp::Unmap => {
                let mut list = [0u8; 64];
                let d = UnmapDescriptor { lba, blocks: n };
                let plen = cdb::write_unmap_parameter_list(&[d], &mut list[..unmap_len])
                    .expect("one descriptor fits");
                slot.write(self.layout.unmap_off, &list[..unmap_len]);
                cdb::unmap(plen)
            }
            IoOp::WriteZeroes if l.write_same_16 => cdb::write_same_16(lba, n, false, false),
            IoOp::WriteZeroes => cdb::write(lba, n, false),
        };
        self.io_header(slot, lun.field, tag, &cdb);
        // Data-Out before the response, Data-In after it (§5.6.6.1).
        match r.op {
            IoOp::Read => {
                self.resp(slot);
                slot.data(data, bytes, true);
            }
            IoOp::Write => {
                slot.data(data, bytes, false);
                self.resp(slot);
            }
            IoOp::Flush => self.resp(slot),
            IoOp::Unmap => {
                slot.header(self.layout.unmap_off, unmap_len);
                self.resp(slot);
            }
            IoOp::WriteZeroes => {
                slot.piece(Piece::Fixed {
                    id: ZEROES,
                    off: 0,
                    len: zeroes_len as usize, // at most the zero buffer (see child_units)
                });
                self.resp(slot);
            }
        }
    }

    fn build_cmd(&self, slot: &mut Slot<'_>, cmd: &Cmd, tag: u64) {
        self.header(slot, cmd.lun, tag, &cmd.cdb);
        debug_assert!(cmd.buf.is_none(), "lent to the queue while in flight");
        // Command buffers are small (scan data, at most a few KiB).
        match slot.data_len().map(|n| n as u32) {
            Some(n) if cmd.data_in => {
                self.resp(slot);
                slot.data(0, n, true);
            }
            Some(n) => {
                slot.data(0, n, false);
                self.resp(slot);
            }
            None => self.resp(slot),
        }
    }

    fn read_cmd(&self, slot: &SlotView<'_>) -> (ScsiReply, IoStatus) {
        let resp = self.read_resp(slot);
        let mut sense = vec![0u8; self.sense_len(&resp)];
        slot.read_status(wire::CMD_RESP_LEN, &mut sense);
        let status = if resp.response == RESPONSE_UNSET {
            IoStatus::Failed(IoError::ScsiResponse(RESPONSE_UNSET))
        } else {
            IoStatus::Success
        };
        (ScsiReply { resp, sense }, status)
    }

    fn is_gone(lun: &Lun) -> bool {
        lun.removed.load(Ordering::Relaxed)
    }

    /// Commands without Data-In: their response says what happened, and QEMU's
    /// virtio-scsi counts the Data-Out bytes in the used length too (65644 for a 64 KiB
    /// WRITE with a 108-byte response); Linux ignores the length for virtio-scsi.
    /// Data-In commands keep the check: their data is what the length covers.
    fn overlong_len_ok(&self, req: &Request) -> bool {
        req.op != IoOp::Read
    }

    fn judge_io(&self, slot: &SlotView<'_>, lun: &Lun, attempts: &mut Attempts) -> Verdict {
        // The usual answer from two bytes (response OK, status GOOD); the whole header
        // only when it is something else.
        if slot.status_byte(wire::CMD_RESP_RESPONSE_OFF) == response::OK
            && Status(slot.status_byte(wire::CMD_RESP_STATUS_OFF)).is_good()
        {
            return Verdict::Done(IoStatus::Success);
        }
        let resp = self.read_resp(slot);
        let io_timeout = lun.io_timeout;
        let mut retry = |limit| attempts.next_delay(limit, io_timeout, BACKOFF_MIN, BACKOFF_MAX);
        let fail = |e| Verdict::Done(IoStatus::Failed(e));
        match resp.response {
            response::OK => {}
            response::BUSY | response::TRANSPORT_FAILURE | response::RESET | response::ABORTED => {
                return match retry(Some(32)) {
                    Some(d) => Verdict::Retry(d),
                    None => fail(IoError::ScsiResponse(resp.response)),
                };
            }
            response::BAD_TARGET | response::INCORRECT_LUN => {
                lun.suspect_gone();
                return fail(IoError::Removed);
            }
            r => return fail(IoError::ScsiResponse(r)),
        }
        let status = Status(resp.status);
        if status.is_good() {
            return Verdict::Done(IoStatus::Success);
        }
        if status.is_retryable() {
            // BUSY, TASK SET FULL: a full queue on the target is not an error.
            return match retry(None) {
                Some(d) => Verdict::Retry(d),
                None => fail(IoError::ScsiStatus(resp.status)),
            };
        }
        if !status.is_check_condition() {
            return fail(IoError::ScsiStatus(resp.status));
        }
        let mut sense = [0u8; 252];
        let n = self.sense_len(&resp).min(sense.len());
        slot.read_status(wire::CMD_RESP_LEN, &mut sense[..n]);
        let Ok(s) = Sense::parse(&sense[..n]) else {
            return fail(IoError::ScsiStatus(resp.status));
        };
        let failed = IoError::ScsiCheckCondition { sense: s.into() };
        if s.is_unit_attention() {
            if s.is_capacity_changed() {
                lun.note_capacity_change();
            }
            if s.is_reported_luns_changed() {
                lun.note_luns_changed();
            }
            // Each UNIT ATTENTION is reported once: resend at once, a few times.
            return match retry(Some(MAX_UA_RETRIES)) {
                Some(_) => Verdict::Retry(Duration::ZERO),
                None => fail(failed),
            };
        }
        // NOT READY, becoming ready; ABORTED COMMAND: transient.
        let transient =
            (s.is_not_ready() && s.asc == 0x04 && s.ascq == 0x01) || s.is_aborted_command();
        if transient {
            return match retry(Some(32)) {
                Some(d) => Verdict::Retry(d),
                None => fail(failed),
            };
        }
        fail(failed)
    }
}

/// A request queue of a controller.
pub(super) type ScsiQueue = Engine<ScsiFormat>;

/// A queue with its doorbell and interrupt file, shareable between the channels of one
/// thread and the scanner.
#[derive(Debug)]
pub(super) struct QueueSlot {
    pub index: u16,
    pub q: std::sync::Mutex<ScsiQueue>,
    pub call: CallFd,
    /// Mirrors `ScsiQueue::failed` for lock-free checks.
    pub failed: std::sync::atomic::AtomicBool,
}

impl QueueSlot {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, ScsiQueue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until the device signals a completion, `client` has something ready, or
    /// `timeout` passes. The queue is unlocked while sleeping.
    pub fn sleep(&self, client: u16, timeout: Duration) {
        {
            let mut q = self.lock();
            q.stall.waited = true;
            q.sleepers += 1;
            q.set_interrupts(true);
            if q.has_used() || q.has_ready(client) || q.failed {
                q.sleepers -= 1;
                if q.sleepers == 0 {
                    q.set_interrupts(false);
                }
                return;
            }
        }
        self.call.wait(timeout);
        let mut q = self.lock();
        q.sleepers -= 1;
        if q.sleepers == 0 {
            q.set_interrupts(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are the bytes `write_cmd_req` writes, for every CDB a block request
    /// uses, at the usual and the smallest request sizes.
    #[test]
    fn header_words_are_the_wire_request() {
        let lun = [1, 0, 0x40, 0x05, 0, 0, 0, 0];
        let cdbs = [
            cdb::read(0, 1, false),
            cdb::read(0x1234_5678, 0xffff, false),
            cdb::read(u64::MAX - 7, 0x0102_0304, false),
            cdb::write(0xdead_beef_0000, 8, false),
            cdb::synchronize_cache_10(0, 0, false),
            cdb::write_same_16(42, 9, false, true),
            cdb::test_unit_ready(),
        ];
        for (k, c) in cdbs.iter().enumerate() {
            let tag = 0x0123_4567_89ab_cdef ^ k as u64;
            let words = header_words(lun, tag, c.words());
            let got: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            for cdb_size in [16usize, 32] {
                let len = wire::CMD_HEADER_LEN + cdb_size;
                let mut want = [0u8; 64];
                assert!(wire::write_cmd_req(
                    &mut want[..len],
                    lun,
                    tag,
                    c.as_bytes()
                ));
                assert_eq!(got[..], want[..], "{c:?}, cdb_size {cdb_size}");
            }
        }
    }
}
