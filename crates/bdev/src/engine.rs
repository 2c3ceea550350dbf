//! The request engine of the virtio modules: one request queue with the state of every
//! request on it, generic over the device's request format.
//!
//! A block request ("parent") becomes one or more device requests ("children") within
//! the device's limits; it completes when its last child does. A child can be retried
//! after a delay when the format says so (SCSI UNIT ATTENTION, BUSY, TASK SET FULL).
//! Several clients may share one queue (the channels of one thread on a virtio-scsi
//! controller, the scanner): each finished parent goes to its client's ready list.
//! Management commands (GET_ID, SCSI scan commands) travel the same way as parents of
//! one child.
//!
//! Per-child headers live in a slot per context, `stride` bytes each, and what the
//! device writes back (status bytes) in a second area of `status_stride` bytes per
//! context after all the slots: the arena of the [`RequestQueue`], which also holds each
//! request's buffer while the device may use it and checks every piece of every chain,
//! so this module and the formats need no `unsafe`. Keeping the device's
//! writes off the lines the driver writes headers into saves a cache-line transfer
//! between the two cores per request, and packs the statuses of neighbouring contexts
//! into one line. Nothing on the I/O path allocates or locks.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vbdev_virtio::{
    AddError, ChainBuilder, ContextLayout, DmaBuf, Notifier, Piece, QueueError, RequestQueue,
    SplitQueue, Transport, Used,
};

use crate::io::{Completion, IoError, IoOp, IoStatus, Request};
use crate::stall::StallClock;

const TARGET: &str = "vbdev::engine";

/// Chains added since the last publish after which the next one is published at once,
/// without waiting for the caller's flush (the end of its poll). A caller that refills
/// a whole batch of completions before flushing would otherwise hand the device its
/// work in one lump and leave it idle meanwhile; publishing every few requests lets the
/// device start on the first ones while the rest are built (against SPDK's polling
/// vhost-blk target at depth 32: 1.4-1.6x the IOPS of publishing once per poll, see
/// bench/runs/2026-12-07-spdk-initiator). Each publish costs a full fence and a read
/// of the device's notification flags, so not every request.
pub(crate) const PUBLISH_BATCH: u16 = 8;

/// Completions taken off the used ring at a time, their status lines touched together
/// before any is handled (see `Engine::touch_status`).
const REAP_BATCH: usize = 16;

/// A placeholder for the reap batch's unused entries.
const NO_USED: Used = Used {
    cookie: 0,
    written: Ok(0),
};

/// Where a format writes one child: its context's header slot, and the chain being
/// built (the [`RequestQueue`] checks each piece against its memory as it comes).
pub(crate) struct Slot<'a> {
    chain: ChainBuilder<'a>,
}

impl Slot<'_> {
    /// Writes `data` at byte `off` of the header slot.
    #[inline]
    pub fn write(&mut self, off: usize, data: &[u8]) {
        self.chain.write_header(off, data);
    }

    /// Writes `words` little-endian from byte `off` of the header slot, a store each.
    #[inline]
    pub fn write_words(&mut self, off: usize, words: &[u64]) {
        self.chain.write_header_words(off, words);
    }

    /// Appends `len` bytes at `off` of the header slot (device-readable).
    #[inline]
    pub fn header(&mut self, off: usize, len: usize) {
        self.chain.header(off, len);
    }

    /// Appends `len` bytes at `off` of the context's status area (device-writable).
    #[inline]
    pub fn status(&mut self, off: usize, len: usize) {
        self.chain.status(off, len);
    }

    /// Appends `len` bytes at `off` of the request's (or command's) buffer.
    #[inline]
    pub fn data(&mut self, off: u64, len: u32, writable: bool) {
        self.chain.data(off, len, writable);
    }

    /// Appends a piece made elsewhere (a fixed buffer of [`Format::fixed`], say).
    #[inline]
    pub fn piece(&mut self, p: Piece) {
        self.chain.piece(p);
    }

    /// Length of the request's (or command's) buffer, if it has one.
    pub fn data_len(&self) -> Option<usize> {
        self.chain.data_len()
    }
}

/// Read access to a completed child's status area (what the device wrote).
pub(crate) struct SlotView<'a> {
    rq: &'a RequestQueue,
    ctx: u16,
}

impl SlotView<'_> {
    /// The byte at `off` of the context's status area, read once.
    #[inline]
    pub fn status_byte(&self, off: usize) -> u8 {
        self.rq.status_u8(self.ctx, off)
    }

    /// Copies `out.len()` bytes from `off` of the context's status area.
    pub fn read_status(&self, off: usize, out: &mut [u8]) {
        self.rq.read_status(self.ctx, off, out);
    }
}

/// How a completed child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Done, with this status.
    Done(IoStatus),
    /// Send it again after this delay.
    Retry(Duration),
}

/// Retry bookkeeping of one child.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Attempts {
    count: u16,
    first: Option<Instant>,
}

impl Attempts {
    /// The delay before the next attempt, doubling from `min` up to `max`, or `None`
    /// when `limit` attempts were made or `timeout` passed since the first retry.
    pub fn next_delay(
        &mut self,
        limit: Option<u16>,
        timeout: Duration,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        self.count = self.count.saturating_add(1);
        if limit.is_some_and(|l| self.count > l) {
            return None;
        }
        let now = Instant::now();
        let first = *self.first.get_or_insert(now);
        if now.duration_since(first) > timeout {
            return None;
        }
        Some(
            min.saturating_mul(1 << u32::from(self.count.min(10)))
                .min(max),
        )
    }
}

/// A device's request format.
///
/// A format describes each child with [`Slot`]'s pieces, relative to its context's
/// slot, its request's buffer and the format's fixed buffers; the [`RequestQueue`]
/// checks them, so a wrong piece fails its request and never reaches the device.
pub(crate) trait Format: fmt::Debug + Send + 'static {
    /// What a client's block requests address (a SCSI LUN; nothing for virtio-blk).
    type Target: fmt::Debug + Send + Sync;
    /// A management command.
    type Cmd: fmt::Debug + Send;
    /// What a completed command's slot held.
    type Reply: fmt::Debug + Send + Default;

    /// Bytes of DMA slot per context.
    fn stride(&self) -> usize;

    /// The buffer a command carries, lent to the queue while the command is in flight
    /// and put back before it is handed back.
    fn cmd_buf(cmd: &mut Self::Cmd) -> &mut Option<DmaBuf>;

    /// Buffers every child may name with [`Slot::fixed`] (by index), only ever read by
    /// the device. Default: none.
    fn fixed(&self) -> Vec<Arc<DmaBuf>> {
        Vec::new()
    }

    /// Bytes of status area per context (see the module documentation); 0: none.
    fn status_stride(&self) -> usize {
        0
    }

    /// A byte no device writes as an answer, and where in the status area it goes, so
    /// that a completion the device did not answer is caught (the byte still there).
    /// The engine keeps it armed: in every status area when the queue is created, and
    /// again as soon as a completion's status has been read, while this core still
    /// holds the line. Arming it when the next request is built would store into a line
    /// the device wrote last, and wait for it. Default: none.
    fn status_marker(&self) -> Option<(usize, u8)> {
        None
    }

    /// Units (blocks) of the next child of `req`, `left` units still unsent; at least 1
    /// when the operation is offered.
    fn child_units(&self, req: &Request, target: &Self::Target, left: u64) -> u64;

    /// Writes the child `[start, start + units)` of `req` into `slot`.
    fn build_io(
        &self,
        slot: &mut Slot<'_>,
        req: &Request,
        target: &Self::Target,
        start: u64,
        units: u64,
        tag: u64,
    );

    /// Writes a management command into `slot`.
    fn build_cmd(&self, slot: &mut Slot<'_>, cmd: &Self::Cmd, tag: u64);

    /// Judges a completed block child.
    fn judge_io(
        &self,
        slot: &SlotView<'_>,
        target: &Self::Target,
        attempts: &mut Attempts,
    ) -> Verdict;

    /// Reads a completed command's reply; `Failed` when the device did not answer
    /// properly.
    fn read_cmd(&self, slot: &SlotView<'_>) -> (Self::Reply, IoStatus);

    /// Whether a used length beyond the chain's writable space is only the device's
    /// miscount for this request, not a fault: for request types whose answer says by
    /// itself how much it wrote. Default: never (the request fails with a protocol error).
    fn overlong_len_ok(&self, _req: &Request) -> bool {
        false
    }

    /// Whether the target went away (its failures then read as [`IoError::Removed`]).
    fn is_gone(_target: &Self::Target) -> bool {
        false
    }
}

/// A command in flight and, once its child completed, its reply.
#[derive(Debug)]
struct CmdState<F: Format> {
    cmd: F::Cmd,
    reply: Option<F::Reply>,
}

/// A block request or a command, with what is known of its children.
///
/// The block request lives in the parent itself, not in an enum beside the command:
/// it is stored there field by field (see [`Engine::start_io`]), which an enum variant
/// built whole would not allow.
#[derive(Debug)]
struct Parent<F: Format> {
    /// Started and not finished.
    active: bool,
    /// An active parent's block request when `cmd` is `None`; otherwise (and while
    /// free) an empty placeholder without a buffer.
    req: Request,
    /// Boxed: commands are rare, and a parent stays the size of a block request.
    cmd: Option<Box<CmdState<F>>>,
    client: u16,
    /// Units (blocks; 1 for a flush or a command) handed to children.
    cursor: u64,
    children: u32,
    status: IoStatus,
}

impl<F: Format> Default for Parent<F> {
    fn default() -> Self {
        Self {
            active: false,
            req: Request::flush(0),
            cmd: None,
            client: 0,
            cursor: 0,
            children: 0,
            status: IoStatus::Success,
        }
    }
}

impl<F: Format> Parent<F> {
    fn units(&self) -> u64 {
        if self.cmd.is_none() && self.req.op != IoOp::Flush {
            self.req.num_blocks
        } else {
            1
        }
    }
}

/// A child in flight (or waiting for a retry).
#[derive(Debug, Clone, Copy, Default)]
struct Child {
    parent: u32,
    start: u64,
    units: u64,
    attempts: Attempts,
}

/// A finished command: the command (with its buffer), the reply, and an error when it
/// never completed normally.
#[derive(Debug)]
pub(crate) struct CmdDone<F: Format> {
    pub cmd: F::Cmd,
    pub reply: F::Reply,
    pub error: Option<IoError>,
}

enum Done<F: Format> {
    /// A block request where a command was expected (dropped, with its buffer).
    Io,
    Cmd(CmdDone<F>),
}

#[derive(Debug)]
struct Client<F: Format> {
    used: bool,
    target: Option<Arc<F::Target>>,
    ready: VecDeque<u32>,
    active: usize,
}

/// One request queue with everything its requests need, allocated at attach.
///
/// # Invariants
/// - a context `c` is in `ctx_free`, or in `retry`, or owned by exactly one chain in
///   `rq` whose cookie is `c`; in the last two cases `ctx[c].parent` names an active
///   parent that counts it in `children`;
/// - an active parent `p`'s request (or command) buffer is lent to `rq` under owner
///   `p` from its start to its finish, where it is taken back (the queue gives it only
///   once no chain of `p` is with the device).
#[derive(Debug)]
pub(crate) struct Engine<F: Format> {
    pub index: u16,
    pub fmt: F,
    rq: RequestQueue,
    notifier: Notifier,
    transport: Arc<dyn Transport>,
    status_stride: usize,
    ctx_free: Vec<u16>,
    ctx: Box<[Child]>,
    parents: Box<[Parent<F>]>,
    parent_free: Vec<u32>,
    /// The parent whose children did not all fit yet; later requests wait behind it.
    partial: Option<u32>,
    retry: VecDeque<(u16, Instant)>,
    clients: Vec<Client<F>>,
    total_active: usize,
    pub stall: StallClock,
    /// Clients sleeping on the call eventfd (interrupts stay on while there are any).
    pub sleepers: u32,
    pub failed: bool,
    next_tag: u64,
    /// The context of the chain built last (see [`Self::reap`]).
    last_ctx: u16,
    /// A too-long used length was let through already (it is reported once).
    overlong_len_seen: bool,
}

impl<F: Format> Engine<F> {
    pub fn new(
        fmt: F,
        index: u16,
        vq: SplitQueue,
        notifier: Notifier,
        transport: Arc<dyn Transport>,
    ) -> vbdev_virtio::Result<Self> {
        let size = vq.capacity();
        let n = usize::from(size);
        let status_stride = fmt.status_stride();
        let layout = ContextLayout {
            header: fmt.stride(),
            status: status_stride,
        };
        // One owner per parent (`0..=n`).
        let mut rq = RequestQueue::new(vq, layout, n + 1, Arc::clone(&transport))?;
        for b in fmt.fixed() {
            rq.add_fixed(b);
        }
        let mut engine = Self {
            index,
            fmt,
            rq,
            notifier,
            transport,
            status_stride,
            ctx_free: (0..size).rev().collect(),
            ctx: vec![Child::default(); n].into_boxed_slice(),
            parents: (0..=n).map(|_| Parent::default()).collect(),
            parent_free: (0..=n as u32).rev().collect(),
            partial: None,
            retry: VecDeque::new(),
            clients: Vec::new(),
            total_active: 0,
            stall: StallClock::default(),
            sleepers: 0,
            failed: false,
            next_tag: 1,
            last_ctx: 0,
            overlong_len_seen: false,
        };
        for ctx in 0..size {
            engine.rearm(ctx);
        }
        Ok(engine)
    }

    /// A new client for a channel (with its target) or a command user (without).
    pub fn register(&mut self, target: Option<Arc<F::Target>>) -> u16 {
        let cap = usize::from(self.rq.contexts()) + 1;
        if let Some(i) = self.clients.iter().position(|c| !c.used) {
            let c = &mut self.clients[i];
            c.used = true;
            c.target = target;
            return i as u16;
        }
        self.clients.push(Client {
            used: true,
            target,
            ready: VecDeque::with_capacity(cap),
            active: 0,
        });
        (self.clients.len() - 1) as u16
    }

    /// Gives a client id back; its requests must all have been taken.
    pub fn unregister(&mut self, client: u16) {
        let c = &mut self.clients[usize::from(client)];
        debug_assert_eq!(c.active, 0);
        c.used = false;
        c.target = None;
    }

    /// Requests of `client` accepted and not yet taken back.
    pub fn active(&self, client: u16) -> usize {
        self.clients[usize::from(client)].active
    }

    pub fn has_ready(&self, client: u16) -> bool {
        !self.clients[usize::from(client)].ready.is_empty()
    }

    /// Whether the transport still has its device.
    pub fn transport_alive(&self) -> bool {
        self.transport.is_alive()
    }

    pub fn has_used(&self) -> bool {
        self.rq.ring().has_used()
    }

    pub fn set_interrupts(&mut self, on: bool) {
        self.rq.set_interrupts(on);
    }

    /// Takes a block request from `client`, from where it lies (see
    /// [`Request::move_fields`]): true when taken (`req` is left without its buffer),
    /// false when the queue is full (`req` untouched).
    pub fn submit_io_from(&mut self, client: u16, req: &mut Request) -> bool {
        let Some(p) = self.parent_free.pop() else {
            return false;
        };
        if self.failed || self.clients[usize::from(client)].target.is_none() {
            self.start_io(p, client, req);
            self.parents[p as usize].status = IoStatus::Failed(IoError::Removed);
            self.route(p);
            return true;
        }
        if self.partial.is_some() || self.ctx_free.is_empty() {
            self.parent_free.push(p);
            return false;
        }
        self.start_io(p, client, req);
        self.advance(p);
        true
    }

    /// Takes a command from `client`; gives it back when the queue is full.
    pub fn submit_cmd(&mut self, client: u16, cmd: F::Cmd) -> Result<(), F::Cmd> {
        if !self.failed && (self.partial.is_some() || self.ctx_free.is_empty()) {
            return Err(cmd);
        }
        let Some(p) = self.parent_free.pop() else {
            return Err(cmd);
        };
        self.start_parent(p, client);
        let mut cmd = cmd;
        if let Some(b) = F::cmd_buf(&mut cmd).take() {
            if let Err(b) = self.rq.lend(p, b) {
                // Cannot happen (finished parents give their buffer back); the command
                // keeps its buffer and its children fail as invalid.
                debug_assert!(false, "parent {p} still has a lent buffer");
                *F::cmd_buf(&mut cmd) = Some(b);
            }
        }
        self.parents[p as usize].cmd = Some(Box::new(CmdState { cmd, reply: None }));
        if self.failed {
            self.parents[p as usize].status = IoStatus::Failed(IoError::Removed);
            self.route(p);
            return Ok(());
        }
        self.advance(p);
        Ok(())
    }

    /// [`Self::start_parent`] for a block request, moved in field by field (see
    /// [`Request::move_fields`]: the caller built it a moment ago).
    #[inline(always)]
    fn start_io(&mut self, p: u32, client: u16, req: &mut Request) {
        self.start_parent(p, client);
        // The buffer goes to the queue straight from the caller's request; the parent
        // keeps the other fields.
        let buf = req.buf.take();
        Request::move_fields(req, &mut self.parents[p as usize].req);
        if let Some(b) = buf {
            if let Err(b) = self.rq.lend(p, b) {
                // As in `submit_cmd`: the request keeps its buffer and fails.
                debug_assert!(false, "parent {p} still has a lent buffer");
                self.parents[p as usize].req.buf = Some(b);
            }
        }
    }

    /// Marks free parent `p` active for `client`; the caller stores the request or
    /// the command.
    #[inline(always)]
    fn start_parent(&mut self, p: u32, client: u16) {
        let parent = &mut self.parents[p as usize];
        debug_assert!(!parent.active, "starting a parent that is active");
        debug_assert!(parent.cmd.is_none() && parent.req.buf.is_none());
        parent.active = true;
        parent.client = client;
        parent.cursor = 0;
        parent.children = 0;
        parent.status = IoStatus::Success;
        self.clients[usize::from(client)].active += 1;
        self.total_active += 1;
    }

    /// Writes context `ctx`'s child and adds its chain to the ring.
    fn build(&mut self, ctx: u16) -> Result<(), AddError> {
        let c = self.ctx[usize::from(ctx)];
        self.last_ctx = ctx;
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let parent = &self.parents[c.parent as usize];
        let mut slot = Slot {
            chain: self.rq.chain(ctx, Some(c.parent)),
        };
        debug_assert!(parent.active, "building a child of a free parent");
        match &parent.cmd {
            None => {
                let target = self.clients[usize::from(parent.client)]
                    .target
                    .as_deref()
                    .expect("block clients have a target");
                self.fmt
                    .build_io(&mut slot, &parent.req, target, c.start, c.units, tag);
            }
            Some(c) => self.fmt.build_cmd(&mut slot, &c.cmd, tag),
        }
        slot.chain.submit()
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
            let n = if parent.cmd.is_none() {
                let target = self.clients[usize::from(parent.client)]
                    .target
                    .as_deref()
                    .expect("block clients have a target");
                self.fmt.child_units(&parent.req, target, units - start)
            } else {
                1
            };
            if n == 0 {
                // The format offers no child for this: fail the request, never loop.
                debug_assert!(false, "child_units returned 0 for an offered operation");
                self.ctx_free.push(ctx);
                self.parents[p as usize].status = IoStatus::Failed(IoError::DoesNotFit);
                continue;
            }
            self.ctx[usize::from(ctx)] = Child {
                parent: p,
                start,
                units: n,
                attempts: Attempts::default(),
            };
            match self.build(ctx) {
                Ok(()) => {
                    // Published at once when it is the device's only work: it is idle
                    // and waiting (QD 1); the caller's flush would come a poll later.
                    let ring = self.rq.ring();
                    let unpublished = ring.unpublished();
                    if unpublished >= PUBLISH_BATCH || unpublished == ring.len() {
                        self.flush();
                    }
                    let parent = &mut self.parents[p as usize];
                    parent.children += 1;
                    parent.cursor += n;
                }
                Err(AddError::Full) | Err(AddError::Broken) => {
                    // Broken: the next pump fails everything; Full: resume on completions.
                    self.ctx_free.push(ctx);
                    self.partial = Some(p);
                    return;
                }
                Err(AddError::NotDma) => {
                    // The buffer is not memory the device can reach: fail the request.
                    tracing::warn!(target: TARGET, "request buffer outside DMA memory the device can reach");
                    self.ctx_free.push(ctx);
                    self.parents[p as usize].status = IoStatus::Failed(IoError::DoesNotFit);
                }
                Err(e @ (AddError::TooLong | AddError::Invalid)) => {
                    // Limits are computed from the ring's capacity, and pieces from the
                    // request the channel checked, so this is a bug; fail the request
                    // rather than the process.
                    debug_assert!(false, "child chain refused: {e:?}");
                    self.ctx_free.push(ctx);
                    self.parents[p as usize].status = IoStatus::Failed(IoError::DoesNotFit);
                }
            }
        }
    }

    fn route(&mut self, p: u32) {
        let client = self.parents[p as usize].client;
        self.clients[usize::from(client)].ready.push_back(p);
    }

    /// Publishes what was added, with at most one notification.
    pub fn flush(&mut self) {
        if self.rq.publish() {
            self.notifier.notify();
        }
    }

    /// Gives finished parent `p` back: free, and no longer counted for its client.
    /// The caller has taken (or drops) what it held.
    fn release(&mut self, p: u32) {
        let parent = &mut self.parents[p as usize];
        debug_assert!(parent.active, "finishing a free parent");
        parent.active = false;
        self.clients[usize::from(parent.client)].active -= 1;
        self.total_active -= 1;
        self.parent_free.push(p);
    }

    fn finish(&mut self, p: u32) -> Done<F> {
        // Field by field rather than `mem::take` of the whole parent: no copy of what
        // is left behind.
        let parent = &mut self.parents[p as usize];
        let mut cmd = parent.cmd.take();
        let parent_status = parent.status;
        parent.req.buf = None;
        let buf = self.rq.take_back(p);
        if let Some(c) = cmd.as_mut() {
            if buf.is_some() {
                *F::cmd_buf(&mut c.cmd) = buf;
            }
        }
        self.release(p);
        match cmd {
            None => Done::Io,
            Some(c) => Done::Cmd(CmdDone {
                cmd: c.cmd,
                reply: c.reply.unwrap_or_default(),
                error: match parent_status {
                    IoStatus::Failed(e) => Some(e),
                    IoStatus::Success => None,
                },
            }),
        }
    }

    /// Hands finished parent `p`'s block request to `out`, field by field: a whole
    /// `Completion` built here and moved through the stack into `out` costs a failed
    /// store-to-load forward on every request (its fields were just stored narrow, the
    /// move loads them wide). Returns false, leaving `out` alone, for a command (block
    /// clients send none; it is dropped).
    fn finish_into(&mut self, p: u32, out: &mut Completion) -> bool {
        let parent = &mut self.parents[p as usize];
        if parent.cmd.is_some() {
            debug_assert!(false, "block clients send no commands");
            let _ = self.finish(p);
            return false;
        }
        // Success, the usual case, stored as a constant: the status copied through a
        // temporary would be loaded across its narrower stores.
        if parent.status.is_success() {
            out.status = IoStatus::Success;
        } else {
            let client = &self.clients[usize::from(parent.client)];
            out.status = match parent.status {
                IoStatus::Failed(_) if client.target.as_deref().is_some_and(F::is_gone) => {
                    IoStatus::Failed(IoError::Removed)
                }
                s => s,
            };
        }
        out.cookie = parent.req.cookie;
        out.buf = match self.rq.take_back(p) {
            Some(b) => Some(b),
            None => parent.req.buf.take(),
        };
        self.release(p);
        true
    }

    /// Arms context `ctx`'s status marker (see [`Format::status_marker`]): at queue
    /// creation, and again once the device is done with the context.
    fn rearm(&mut self, ctx: u16) {
        if let Some((off, byte)) = self.fmt.status_marker() {
            self.rq.write_status_u8(ctx, off, byte);
        }
    }

    /// Reads the first byte of the status areas of the completions in `batch`, all
    /// before any is judged: the lines the device wrote then travel to this core
    /// together instead of one after another, each behind the handling of the last.
    fn touch_status(&self, batch: &[Used]) {
        if self.status_stride == 0 {
            return;
        }
        for u in batch {
            let ctx = u.cookie as u16; // cookies are context indices < queue size
            let _ = self.rq.status_u8(ctx, 0);
        }
    }

    /// Takes up to `max` (at most [`REAP_BATCH`]) completions off the used ring into
    /// `batch` and touches their status lines; returns how many.
    fn pop_batch(&mut self, batch: &mut [Used; REAP_BATCH], max: usize) -> usize {
        let mut k = 0;
        while k < max.min(REAP_BATCH) {
            let Some(u) = self.rq.pop_used() else {
                break;
            };
            batch[k] = u;
            k += 1;
        }
        self.touch_status(&batch[..k]);
        k
    }

    /// Accounts one completed child; returns its parent when that parent is finished.
    fn complete_used(&mut self, used: &Used) -> Option<u32> {
        let ctx = used.cookie as u16; // cookies are context indices < queue size
        let p = self.ctx[usize::from(ctx)].parent;
        let view = SlotView { rq: &self.rq, ctx };
        let parent = &mut self.parents[p as usize];
        debug_assert!(parent.active, "a completion for a free parent");
        let written = match (&parent.cmd, &used.written) {
            (None, Err(QueueError::UsedLenTooLarge { len, writable, .. }))
                if self.fmt.overlong_len_ok(&parent.req) =>
            {
                if !self.overlong_len_seen {
                    self.overlong_len_seen = true;
                    tracing::warn!(target: "vbdev::engine", queue = self.index, len, writable, "the device reports more bytes written than the request had room for; ignored for requests whose answer carries its own length (reported once per queue)");
                }
                Ok(u32::try_from(*writable).unwrap_or(u32::MAX))
            }
            (_, w) => *w,
        };
        let status = match (&mut parent.cmd, written) {
            (_, Err(e)) => IoStatus::Failed(IoError::Protocol(e)),
            (Some(c), Ok(_)) => {
                let (reply, status) = self.fmt.read_cmd(&view);
                c.reply = Some(reply);
                status
            }
            (None, Ok(_)) => {
                let target = self.clients[usize::from(parent.client)]
                    .target
                    .as_deref()
                    .expect("block clients have a target");
                let attempts = &mut self.ctx[usize::from(ctx)].attempts;
                match self.fmt.judge_io(&view, target, attempts) {
                    Verdict::Done(s) => s,
                    Verdict::Retry(delay) => {
                        self.rearm(ctx);
                        let now = Instant::now();
                        self.retry.push_back((ctx, now + delay));
                        return None;
                    }
                }
            }
        };
        self.rearm(ctx);
        self.ctx_free.push(ctx);
        let parent = &mut self.parents[p as usize];
        parent.children -= 1;
        if parent.status.is_success() && !status.is_success() {
            parent.status = status;
        }
        let done = parent.cursor >= parent.units() || !parent.status.is_success();
        (parent.children == 0 && done && self.partial != Some(p)).then_some(p)
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
            if due > now {
                self.retry.push_back((ctx, due));
                continue;
            }
            if self.build(ctx).is_err() {
                self.retry.push_front((ctx, due));
                break;
            }
        }
    }

    fn check_failure(&mut self, removed: bool) {
        if !self.failed {
            if let Some(e) = self.rq.ring().broken() {
                self.fail_all(IoError::Protocol(e));
            } else if removed {
                self.fail_all(IoError::Removed);
            }
        }
    }

    /// After popping: resends, continues a partial parent, watches for a stall.
    fn after_pop(&mut self, progressed: bool, io_timeout: Duration) {
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
            if let Some(e) = self.rq.ring().broken() {
                self.fail_all(IoError::Protocol(e));
            }
        }
    }

    /// Pops every completion and routes finished parents to their clients; fails the
    /// queue on a broken ring, a removed device (`removed`) or a stall.
    pub fn pump(&mut self, io_timeout: Duration, removed: bool) {
        self.check_failure(removed);
        let mut progressed = false;
        let mut batch = [NO_USED; REAP_BATCH];
        loop {
            let k = self.pop_batch(&mut batch, REAP_BATCH);
            if k == 0 {
                break;
            }
            progressed = true;
            for used in &batch[..k] {
                if let Some(p) = self.complete_used(used) {
                    self.route(p);
                }
            }
        }
        self.after_pop(progressed, io_timeout);
    }

    /// [`Self::pump`] and [`Self::take_io`] in one pass for `client`: its finished
    /// requests go straight into `out`; others' are routed.
    pub fn reap(
        &mut self,
        client: u16,
        out: &mut [Completion],
        io_timeout: Duration,
        removed: bool,
    ) -> usize {
        self.check_failure(removed);
        if self.total_active == 1 && self.status_stride != 0 {
            // One request in flight (QD 1): its answer, when it comes, is in the status
            // area of the chain built last. Its line is loaded now, with used.idx and the
            // used element (see `SplitQueue::pop_used`), not one line transfer after
            // them; the value is not used (the status is read after the completion).
            let _ = self.rq.status_u8(self.last_ctx, 0);
        }
        let mut n = self.take_io(client, out);
        let mut progressed = false;
        let mut batch = [NO_USED; REAP_BATCH];
        while n < out.len() {
            let k = self.pop_batch(&mut batch, out.len() - n);
            if k == 0 {
                break;
            }
            progressed = true;
            for used in &batch[..k] {
                let Some(p) = self.complete_used(used) else {
                    continue;
                };
                // A finished parent per completion at most: `n` stays within `out`.
                if self.parents[p as usize].client == client {
                    if self.finish_into(p, &mut out[n]) {
                        n += 1;
                    }
                } else {
                    self.route(p);
                }
            }
        }
        self.after_pop(progressed, io_timeout);
        if n < out.len() {
            n += self.take_io(client, &mut out[n..]);
        }
        n
    }

    /// Moves up to `out.len()` finished block requests of `client` into `out`.
    pub fn take_io(&mut self, client: u16, out: &mut [Completion]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(p) = self.clients[usize::from(client)].ready.pop_front() else {
                break;
            };
            if self.finish_into(p, &mut out[n]) {
                n += 1;
            }
        }
        n
    }

    /// The next finished command of `client`.
    pub fn take_cmd(&mut self, client: u16) -> Option<CmdDone<F>> {
        let p = self.clients[usize::from(client)].ready.pop_front()?;
        match self.finish(p) {
            Done::Cmd(c) => Some(c),
            Done::Io => None,
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
        // Completions the device published before it went are real: deliver them.
        while let Some(used) = self.rq.pop_used() {
            if let Some(p) = self.complete_used(&used) {
                self.route(p);
            }
        }
        let mut ctxs: Vec<u16> = Vec::with_capacity(usize::from(self.rq.ring().len()));
        self.rq.reclaim_all(|c| ctxs.push(c));
        ctxs.extend(self.retry.drain(..).map(|(c, _)| c));
        for ctx in ctxs {
            self.rearm(ctx);
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
