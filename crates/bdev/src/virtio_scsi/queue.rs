//! A virtio-scsi request queue shared by the channels of one thread (one client per
//! channel) and, on the management queue, by the scanner.
//!
//! A block request becomes one or more SCSI commands ("children") within the LUN's
//! limits; a child that ends in UNIT ATTENTION, BUSY, TASK SET FULL or a retryable
//! virtio response is sent again after a backoff, so queue-full conditions never reach
//! the caller. Finished requests are routed to the ready list of the client that
//! submitted them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vbdev_scsi::{Sense, Status, UnmapDescriptor, cdb};
use vbdev_virtio::scsi::{self as wire, CmdResp, response};
use vbdev_virtio::{
    AddError, CallFd, DmaBuf, DmaDomain, Iova, Notifier, QueueError, Segment, SplitQueue, Transport,
};

use crate::bdev::{Completion, IoError, IoOp, IoStatus, Request};

use super::{Lun, TARGET};

/// Written into the response byte before submission: no device writes it, so a
/// completion without a response is caught.
const RESPONSE_UNSET: u8 = 0xff;
/// Retries of a child that got UNIT ATTENTION (each UA is reported once).
const MAX_UA_RETRIES: u16 = 8;
/// First and largest backoff for BUSY, TASK SET FULL and retryable responses.
const BACKOFF_MIN: Duration = Duration::from_micros(100);
const BACKOFF_MAX: Duration = Duration::from_millis(20);

/// Where things live in a context's DMA slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub stride: usize,
    pub req_len: usize,
    pub resp_off: usize,
    pub resp_len: usize,
    pub unmap_off: usize,
}

impl Layout {
    pub fn new(cfg: &wire::ScsiConfig) -> Self {
        let req_len = cfg.cmd_req_len();
        let resp_off = req_len.next_multiple_of(8);
        let resp_len = cfg.cmd_resp_len();
        let unmap_off = (resp_off + resp_len).next_multiple_of(8);
        let stride = (unmap_off + cdb::unmap_parameter_list_len(1)).next_multiple_of(64);
        Self {
            stride,
            req_len,
            resp_off,
            resp_len,
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

#[derive(Debug)]
enum Kind {
    Io(Request),
    Cmd(Cmd),
}

#[derive(Debug, Default)]
struct Parent {
    kind: Option<Kind>,
    lun: Option<Arc<Lun>>,
    client: u16,
    /// Units (blocks; 1 for a flush or a command) handed to children.
    cursor: u64,
    children: u32,
    status: IoStatus,
    /// A command's response, kept from its (only) child.
    outcome: Option<(CmdResp, Vec<u8>)>,
}

impl Parent {
    fn units(&self) -> u64 {
        match &self.kind {
            Some(Kind::Io(r)) if r.op != IoOp::Flush => r.num_blocks,
            _ => 1,
        }
    }
}

/// A child in flight (or waiting for a retry).
#[derive(Debug, Clone, Copy, Default)]
struct Child {
    parent: u32,
    start: u64,
    units: u64,
    attempts: u16,
    first_retry: Option<Instant>,
}

/// What a finished parent becomes for its client.
#[derive(Debug)]
pub(super) enum Done {
    Io(Completion),
    Cmd(CmdOutcome),
}

/// One request queue, allocated at attach.
///
/// # Invariants
/// - a context `c` is in `ctx_free`, or in `retry`, or owned by exactly one chain in
///   `vq` whose cookie is `c`; in the last two cases `ctx[c].parent` names an active
///   parent that counts it in `children`;
/// - an active parent owns its buffer; chains point only into that buffer, the
///   context's slot, and the controller's zero buffer (which nobody writes).
#[derive(Debug)]
pub(super) struct ScsiQueue {
    pub index: u16,
    vq: SplitQueue,
    notifier: Notifier,
    transport: Arc<dyn Transport>,
    layout: Layout,
    slots: DmaBuf,
    zeroes: Arc<DmaBuf>,
    ctx_free: Vec<u16>,
    ctx: Box<[Child]>,
    parents: Box<[Parent]>,
    parent_free: Vec<u32>,
    partial: Option<u32>,
    retry: VecDeque<(u16, Instant)>,
    /// Finished parents per client.
    ready: Vec<VecDeque<u32>>,
    /// Active parents per client.
    active: Vec<usize>,
    client_used: Vec<bool>,
    scratch: Vec<Segment>,
    total_active: usize,
    pub stall: crate::stall::StallClock,
    pub sleepers: u32,
    pub failed: bool,
    next_tag: u64,
}

impl ScsiQueue {
    pub fn new(
        index: u16,
        vq: SplitQueue,
        notifier: Notifier,
        transport: Arc<dyn Transport>,
        layout: Layout,
        zeroes: Arc<DmaBuf>,
    ) -> vbdev_virtio::Result<Self> {
        let size = vq.capacity();
        let n = usize::from(size);
        let slots = DmaDomain::global().alloc_zeroed(n * layout.stride, 4096)?;
        Ok(Self {
            index,
            vq,
            notifier,
            transport,
            layout,
            slots,
            zeroes,
            ctx_free: (0..size).rev().collect(),
            ctx: vec![Child::default(); n].into_boxed_slice(),
            parents: (0..=n).map(|_| Parent::default()).collect(),
            parent_free: (0..=n as u32).rev().collect(),
            partial: None,
            retry: VecDeque::new(),
            ready: Vec::new(),
            active: Vec::new(),
            client_used: Vec::new(),
            scratch: Vec::with_capacity(4),
            total_active: 0,
            stall: crate::stall::StallClock::default(),
            sleepers: 0,
            failed: false,
            next_tag: 1,
        })
    }

    /// A new client id for a channel (or the scanner).
    pub fn register(&mut self) -> u16 {
        if let Some(i) = self.client_used.iter().position(|u| !u) {
            self.client_used[i] = true;
            return i as u16;
        }
        self.client_used.push(true);
        self.ready
            .push(VecDeque::with_capacity(usize::from(self.vq.capacity())));
        self.active.push(0);
        (self.client_used.len() - 1) as u16
    }

    /// Gives a client id back; its requests must all have been reaped.
    pub fn unregister(&mut self, client: u16) {
        let c = usize::from(client);
        debug_assert_eq!(self.active[c], 0);
        self.client_used[c] = false;
    }

    pub fn active(&self, client: u16) -> usize {
        self.active[usize::from(client)]
    }

    pub fn has_ready(&self, client: u16) -> bool {
        !self.ready[usize::from(client)].is_empty()
    }

    pub fn call_pending(&self) -> bool {
        self.vq.has_used()
    }

    pub fn set_interrupts(&mut self, on: bool) {
        self.vq.set_interrupts(on);
    }

    fn slot_iova(&self, ctx: u16, off: usize) -> Iova {
        Iova(self.slots.iova().0 + (usize::from(ctx) * self.layout.stride + off) as u64)
    }

    /// Takes a block request for `lun` from `client`.
    pub fn submit_io(&mut self, client: u16, lun: &Arc<Lun>, req: Request) -> Result<(), Request> {
        let Some(p) = self.parent_free.pop() else {
            return Err(req);
        };
        if self.failed {
            self.start_parent(p, client, Some(lun), Kind::Io(req));
            self.parents[p as usize].status = IoStatus::Failed(IoError::Removed);
            self.ready[usize::from(client)].push_back(p);
            return Ok(());
        }
        if self.partial.is_some() || self.ctx_free.is_empty() {
            self.parent_free.push(p);
            return Err(req);
        }
        self.start_parent(p, client, Some(lun), Kind::Io(req));
        self.advance(p);
        Ok(())
    }

    /// Takes a raw command from `client`; gives it back when the queue is full.
    pub fn submit_cmd(&mut self, client: u16, cmd: Cmd) -> Result<(), Cmd> {
        if !self.failed && (self.partial.is_some() || self.ctx_free.is_empty()) {
            return Err(cmd);
        }
        let Some(p) = self.parent_free.pop() else {
            return Err(cmd);
        };
        self.start_parent(p, client, None, Kind::Cmd(cmd));
        if self.failed {
            self.parents[p as usize].status = IoStatus::Failed(IoError::Removed);
            self.ready[usize::from(client)].push_back(p);
            return Ok(());
        }
        self.advance(p);
        Ok(())
    }

    fn start_parent(&mut self, p: u32, client: u16, lun: Option<&Arc<Lun>>, kind: Kind) {
        self.parents[p as usize] = Parent {
            kind: Some(kind),
            lun: lun.cloned(),
            client,
            ..Parent::default()
        };
        self.active[usize::from(client)] += 1;
        self.total_active += 1;
    }

    /// Units of the next child of parent `p`, starting at `cursor`.
    fn child_units(&self, p: u32, cursor: u64) -> u64 {
        let parent = &self.parents[p as usize];
        let Some(lun) = parent.lun.as_ref() else {
            return 1; // a command
        };
        let left = parent.units() - cursor;
        let l = lun.limits();
        match &parent.kind {
            Some(Kind::Io(r)) => match r.op {
                IoOp::Read | IoOp::Write => left.min(l.max_transfer_blocks),
                IoOp::Flush => 1,
                IoOp::Unmap => left.min(l.max_unmap_blocks),
                IoOp::WriteZeroes if l.write_same_16 => left.min(l.max_write_same_blocks),
                IoOp::WriteZeroes => left
                    .min(l.max_transfer_blocks)
                    .min(self.zeroes.len() as u64 / lun.block_size),
            },
            _ => 1,
        }
    }

    /// Writes the request header of context `ctx` and builds its chain in `scratch`.
    fn build(&mut self, ctx: u16) {
        let c = self.ctx[usize::from(ctx)];
        let parent = &self.parents[c.parent as usize];
        let base = usize::from(ctx) * self.layout.stride;
        let mut req = [0u8; 512];
        let req = &mut req[..self.layout.req_len];
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        self.scratch.clear();
        self.scratch
            .push(Segment::readable(self.slot_iova(ctx, 0), req.len() as u32));
        let resp = Segment::writable(
            self.slot_iova(ctx, self.layout.resp_off),
            self.layout.resp_len as u32,
        );
        // Block counts fit a u32: every limit is capped at u32::MAX blocks.
        let (cdb, data_out, data_in): (cdb::Cdb, Option<Segment>, Option<Segment>);
        match &parent.kind {
            Some(Kind::Io(r)) => {
                let lun = parent.lun.as_ref().expect("block requests have a LUN");
                let (bs, l) = (lun.block_size, lun.limits());
                let lba = r.offset_blocks + c.start;
                let n = c.units as u32;
                let data = r.buf.as_ref().map(|b| Iova(b.iova().0 + c.start * bs));
                match r.op {
                    IoOp::Read => {
                        cdb = cdb::read(lba, n, false);
                        data_out = None;
                        data_in = Some(Segment::writable(
                            data.expect("validated: reads carry a buffer"),
                            (c.units * bs) as u32,
                        ));
                    }
                    IoOp::Write => {
                        cdb = cdb::write(lba, n, false);
                        data_out = Some(Segment::readable(
                            data.expect("validated: writes carry a buffer"),
                            (c.units * bs) as u32,
                        ));
                        data_in = None;
                    }
                    IoOp::Flush => {
                        cdb = cdb::synchronize_cache_10(0, 0, false);
                        (data_out, data_in) = (None, None);
                    }
                    IoOp::Unmap => {
                        let len = cdb::unmap_parameter_list_len(1);
                        let mut list = [0u8; 64];
                        let d = UnmapDescriptor { lba, blocks: n };
                        let plen = cdb::write_unmap_parameter_list(&[d], &mut list[..len])
                            .expect("one descriptor fits");
                        self.slots
                            .write_at(base + self.layout.unmap_off, &list[..len]);
                        cdb = cdb::unmap(plen);
                        data_out = Some(Segment::readable(
                            self.slot_iova(ctx, self.layout.unmap_off),
                            len as u32,
                        ));
                        data_in = None;
                    }
                    IoOp::WriteZeroes => {
                        let len = if l.write_same_16 {
                            cdb = cdb::write_same_16(lba, n, false, false);
                            bs
                        } else {
                            cdb = cdb::write(lba, n, false);
                            c.units * bs
                        };
                        data_out = Some(Segment::readable(self.zeroes.iova(), len as u32));
                        data_in = None;
                    }
                }
            }
            Some(Kind::Cmd(cmd)) => {
                let ok = wire::write_cmd_req(req, cmd.lun, tag, &cmd.cdb);
                debug_assert!(ok, "management CDBs are at most 16 bytes");
                self.slots.write_at(base, req);
                self.slots
                    .write_at(base + self.layout.resp_off + 11, &[RESPONSE_UNSET]);
                if let Some(b) = &cmd.buf {
                    let seg = if cmd.data_in {
                        Segment::writable(b.iova(), b.len() as u32)
                    } else {
                        Segment::readable(b.iova(), b.len() as u32)
                    };
                    if cmd.data_in {
                        self.scratch.push(resp);
                        self.scratch.push(seg);
                    } else {
                        self.scratch.push(seg);
                        self.scratch.push(resp);
                    }
                } else {
                    self.scratch.push(resp);
                }
                return;
            }
            None => unreachable!("active parent has a kind"),
        }
        let field = parent
            .lun
            .as_ref()
            .expect("block requests have a LUN")
            .field;
        wire::write_cmd_req(req, field, tag, cdb.as_bytes());
        self.slots.write_at(base, req);
        self.slots
            .write_at(base + self.layout.resp_off + 11, &[RESPONSE_UNSET]);
        if let Some(s) = data_out {
            self.scratch.push(s);
        }
        self.scratch.push(resp);
        if let Some(s) = data_in {
            self.scratch.push(s);
        }
    }

    fn add(&mut self, ctx: u16) -> Result<(), AddError> {
        // SAFETY: every segment in `scratch` points into `self.slots` at context `ctx`'s
        // slot (owned by this chain until `ctx` comes back from the ring), into the
        // buffer of the parent `ctx[ctx].parent` (which stays in `self.parents` until
        // all its children came back from `pop_used` or `reclaim_all`), or into the
        // controller's zero buffer, which lives as long as this queue (`self.zeroes`)
        // and is only read; nothing else reads or writes those bytes meanwhile.
        unsafe { self.vq.try_add(&self.scratch, u64::from(ctx)) }
    }

    /// Sends children of parent `p` until it is fully sent or the ring is full.
    fn advance(&mut self, p: u32) {
        loop {
            let parent = &self.parents[p as usize];
            let units = parent.units();
            if parent.cursor >= units || !parent.status.is_success() {
                if self.partial == Some(p) {
                    self.partial = None;
                }
                if self.parents[p as usize].children == 0 {
                    self.route(p);
                }
                return;
            }
            let Some(ctx) = self.ctx_free.pop() else {
                self.partial = Some(p);
                return;
            };
            let start = parent.cursor;
            let n = self.child_units(p, start);
            if n == 0 {
                // Limits below one block: the operation is not offered, so this is a
                // bug; fail the request rather than loop.
                self.ctx_free.push(ctx);
                self.parents[p as usize].status = IoStatus::Failed(IoError::ScsiStatus(0xff));
                continue;
            }
            self.ctx[usize::from(ctx)] = Child {
                parent: p,
                start,
                units: n,
                attempts: 0,
                first_retry: None,
            };
            self.build(ctx);
            match self.add(ctx) {
                Ok(()) => {
                    let parent = &mut self.parents[p as usize];
                    parent.children += 1;
                    parent.cursor += n;
                }
                Err(AddError::Full) | Err(AddError::Broken) => {
                    self.ctx_free.push(ctx);
                    self.partial = Some(p);
                    return;
                }
                Err(AddError::TooLong) => {
                    debug_assert!(false, "child chain longer than the ring allows");
                    self.ctx_free.push(ctx);
                    self.parents[p as usize].status =
                        IoStatus::Failed(IoError::ScsiResponse(response::FAILURE));
                }
            }
        }
    }

    fn route(&mut self, p: u32) {
        let client = self.parents[p as usize].client;
        self.ready[usize::from(client)].push_back(p);
    }

    /// Publishes what was added, with at most one notification.
    pub fn flush(&mut self) {
        if self.vq.publish() {
            self.notifier.notify();
        }
    }

    fn finish(&mut self, p: u32) -> Done {
        let parent = std::mem::take(&mut self.parents[p as usize]);
        self.parent_free.push(p);
        self.active[usize::from(parent.client)] -= 1;
        self.total_active -= 1;
        let removed = parent
            .lun
            .as_ref()
            .is_some_and(|l| l.removed.load(Ordering::Relaxed));
        match parent.kind.expect("active parent has a kind") {
            Kind::Io(req) => {
                let status = match parent.status {
                    IoStatus::Failed(_) if removed => IoStatus::Failed(IoError::Removed),
                    s => s,
                };
                Done::Io(Completion {
                    cookie: req.cookie,
                    status,
                    buf: req.buf,
                })
            }
            Kind::Cmd(cmd) => {
                let (resp, sense) = parent.outcome.unwrap_or_default();
                let error = match parent.status {
                    IoStatus::Failed(e) => Some(e),
                    IoStatus::Success => None,
                };
                Done::Cmd(CmdOutcome {
                    resp,
                    sense,
                    buf: cmd.buf,
                    error,
                })
            }
        }
    }

    /// How a completed child ended: done (with a status) or to be retried after a delay.
    fn judge(&mut self, ctx: u16, written: Result<u32, QueueError>) -> Result<IoStatus, Duration> {
        let c = self.ctx[usize::from(ctx)];
        if let Err(e) = written {
            return Ok(IoStatus::Failed(IoError::Protocol(e)));
        }
        let base = usize::from(ctx) * self.layout.stride + self.layout.resp_off;
        let mut hdr = [0u8; wire::CMD_RESP_LEN];
        for (i, b) in hdr.iter_mut().enumerate() {
            *b = self.slots.read_volatile(base + i);
        }
        let resp = CmdResp::parse(&hdr);
        let parent = &mut self.parents[c.parent as usize];
        let sense_cap = self.layout.resp_len - wire::CMD_RESP_LEN;
        let sense_len = (resp.sense_len as usize).min(sense_cap);
        if matches!(parent.kind, Some(Kind::Cmd(_))) {
            // The scanner judges commands itself.
            let mut sense = vec![0u8; sense_len];
            for (i, b) in sense.iter_mut().enumerate() {
                *b = self.slots.read_volatile(base + wire::CMD_RESP_LEN + i);
            }
            parent.outcome = Some((resp, sense));
            return Ok(if resp.response == RESPONSE_UNSET {
                IoStatus::Failed(IoError::ScsiResponse(RESPONSE_UNSET))
            } else {
                IoStatus::Success
            });
        }
        let lun = parent.lun.as_ref().expect("active parent has a LUN");
        let retry = |c: &mut Child, limit: Option<u16>, io_timeout: Duration| {
            c.attempts = c.attempts.saturating_add(1);
            if limit.is_some_and(|l| c.attempts > l) {
                return None;
            }
            let now = Instant::now();
            let first = *c.first_retry.get_or_insert(now);
            if now.duration_since(first) > io_timeout {
                return None;
            }
            let shift = u32::from(c.attempts.min(16));
            Some(
                BACKOFF_MIN
                    .saturating_mul(1 << shift.min(10))
                    .min(BACKOFF_MAX),
            )
        };
        let io_timeout = lun.io_timeout;
        let child = &mut self.ctx[usize::from(ctx)];
        match resp.response {
            response::OK => {}
            response::BUSY | response::TRANSPORT_FAILURE | response::RESET | response::ABORTED => {
                return match retry(child, Some(32), io_timeout) {
                    Some(d) => Err(d),
                    None => Ok(IoStatus::Failed(IoError::ScsiResponse(resp.response))),
                };
            }
            response::BAD_TARGET | response::INCORRECT_LUN => {
                lun.suspect_gone();
                return Ok(IoStatus::Failed(IoError::Removed));
            }
            r => return Ok(IoStatus::Failed(IoError::ScsiResponse(r))),
        }
        let status = Status(resp.status);
        if status.is_good() {
            return Ok(IoStatus::Success);
        }
        if status == Status::BUSY || status == Status::TASK_SET_FULL {
            return match retry(child, None, io_timeout) {
                Some(d) => Err(d),
                None => Ok(IoStatus::Failed(IoError::ScsiStatus(resp.status))),
            };
        }
        if !status.is_check_condition() {
            return Ok(IoStatus::Failed(IoError::ScsiStatus(resp.status)));
        }
        let mut sense = [0u8; 252];
        let n = sense_len.min(sense.len());
        for (i, b) in sense[..n].iter_mut().enumerate() {
            *b = self.slots.read_volatile(base + wire::CMD_RESP_LEN + i);
        }
        let Ok(s) = Sense::parse(&sense[..n]) else {
            return Ok(IoStatus::Failed(IoError::ScsiStatus(resp.status)));
        };
        let failed = IoStatus::Failed(IoError::ScsiCheckCondition {
            sense_key: s.sense_key.get(),
            asc: s.asc,
            ascq: s.ascq,
        });
        if s.is_unit_attention() {
            if s.is_capacity_changed() {
                lun.note_capacity_change();
            }
            if s.is_reported_luns_changed() {
                lun.note_luns_changed();
            }
            return match retry(child, Some(MAX_UA_RETRIES), io_timeout) {
                Some(_) => Err(Duration::ZERO),
                None => Ok(failed),
            };
        }
        // NOT READY, becoming ready; ABORTED COMMAND: transient.
        let transient =
            (s.is_not_ready() && s.asc == 0x04 && s.ascq == 0x01) || s.is_aborted_command();
        if transient {
            return match retry(child, Some(32), io_timeout) {
                Some(d) => Err(d),
                None => Ok(failed),
            };
        }
        Ok(failed)
    }

    /// Accounts one completed child; routes its parent when that parent is finished.
    fn complete_used(&mut self, used: vbdev_virtio::Used) {
        let ctx = used.cookie as u16; // cookies are context indices < queue size
        let status = match self.judge(ctx, used.written) {
            Ok(s) => s,
            Err(delay) => {
                let due = if delay.is_zero() {
                    Instant::now()
                } else {
                    Instant::now() + delay
                };
                self.retry.push_back((ctx, due));
                return;
            }
        };
        self.ctx_free.push(ctx);
        let p = self.ctx[usize::from(ctx)].parent;
        let parent = &mut self.parents[p as usize];
        parent.children -= 1;
        if parent.status.is_success() && !status.is_success() {
            parent.status = status;
        }
        let done = parent.cursor >= parent.units() || !parent.status.is_success();
        if parent.children == 0 && done && self.partial != Some(p) {
            self.route(p);
        }
    }

    /// Sends children whose backoff has passed.
    fn resend_due(&mut self) {
        if self.retry.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut n = self.retry.len();
        while n > 0 {
            n -= 1;
            let Some((ctx, due)) = self.retry.pop_front() else {
                break;
            };
            if due > now || self.failed {
                self.retry.push_back((ctx, due));
                continue;
            }
            self.build(ctx);
            if self.add(ctx).is_err() {
                self.retry.push_front((ctx, due));
                break;
            }
        }
    }

    /// Pops completions and moves finished parents to their clients' ready lists;
    /// fails the queue on a broken ring, a removed device or a stall.
    pub fn pump(&mut self, io_timeout: Duration, removed: bool) {
        if !self.failed {
            if let Some(e) = self.vq.broken() {
                self.fail_all(IoError::Protocol(e));
            } else if removed {
                self.fail_all(IoError::Removed);
            }
        }
        let mut progressed = false;
        while let Some(used) = self.vq.pop_used() {
            progressed = true;
            self.complete_used(used);
        }
        if !self.failed {
            self.resend_due();
            if let Some(p) = self.partial {
                self.advance(p);
            }
        }
        // Children waiting for a retry are not the device's fault.
        let idle = !progressed && self.total_active > 0 && self.retry.len() < self.total_active;
        if !self.failed && self.stall.poll(idle, io_timeout) {
            self.fail_all(IoError::TimedOut);
        }
        if !self.failed {
            if let Some(e) = self.vq.broken() {
                self.fail_all(IoError::Protocol(e));
            }
        }
    }

    /// Moves up to `out.len()` finished block requests of `client` into `out`.
    pub fn take_io(&mut self, client: u16, out: &mut [Completion]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(p) = self.ready[usize::from(client)].pop_front() else {
                break;
            };
            match self.finish(p) {
                Done::Io(c) => {
                    out[n] = c;
                    n += 1;
                }
                Done::Cmd(_) => debug_assert!(false, "block clients send no commands"),
            }
        }
        n
    }

    /// The next finished command of `client`.
    pub fn take_cmd(&mut self, client: u16) -> Option<CmdOutcome> {
        let p = self.ready[usize::from(client)].pop_front()?;
        match self.finish(p) {
            Done::Cmd(c) => Some(c),
            Done::Io(_) => None,
        }
    }

    /// Fails every request: the device is gone, broken or hung. The transport is shut
    /// down first so the device stops touching our memory.
    pub fn fail_all(&mut self, why: IoError) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.transport.shutdown();
        tracing::error!(target: TARGET, queue = self.index, in_flight = self.total_active, error = %why, "failing all requests of the queue");
        while let Some(used) = self.vq.pop_used() {
            self.complete_used(used);
        }
        let mut ctxs: Vec<u16> = Vec::with_capacity(usize::from(self.vq.len()));
        // SAFETY: the transport is shut down: a vhost-user target has lost its connection
        // and with it the right to our memory; the chains' buffers are only handed back
        // to callers after this point.
        unsafe { self.vq.reclaim_all(|c| ctxs.push(c as u16)) };
        ctxs.extend(self.retry.drain(..).map(|(c, _)| c));
        for ctx in ctxs {
            self.ctx_free.push(ctx);
            let p = self.ctx[usize::from(ctx)].parent;
            let parent = &mut self.parents[p as usize];
            parent.children -= 1;
            if parent.status.is_success() {
                parent.status = IoStatus::Failed(why);
            }
            if parent.children == 0 && self.partial != Some(p) {
                self.route(p);
            }
        }
        if let Some(p) = self.partial.take() {
            let parent = &mut self.parents[p as usize];
            if parent.status.is_success() {
                parent.status = IoStatus::Failed(why);
            }
            if parent.children == 0 {
                self.route(p);
            }
        }
    }
}

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
            if q.call_pending() || q.has_ready(client) || q.failed {
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
