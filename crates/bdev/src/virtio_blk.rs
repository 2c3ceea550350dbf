//! The `virtio_blk` module: a virtio-blk device (virtio 1.2 §5.2) as a bdev.
//!
//! Each request queue of the device backs one [`IoChannel`](crate::IoChannel). A block
//! request becomes one or more device requests ("children") so that every child fits the
//! device's limits (`seg_max`, `size_max`, `max_discard_sectors`,
//! `max_write_zeroes_sectors`); the request completes when its last child does.
//! Per-child headers and status bytes live in DMA memory allocated with the queue.
#![allow(unsafe_code)] // one call site: SplitQueue::try_add, see `BlkQueue::add`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vbdev_virtio::blk::{self, BlkConfig, DiscardWriteZeroes, ReqHeader};
use vbdev_virtio::device::features as vfeat;
use vbdev_virtio::transport::vhost_user::{VhostUser, VhostUserOptions};
use vbdev_virtio::{
    AddError, CallFd, DmaBuf, DmaDomain, Notifier, QueueConfig, Segment, SplitQueue, Transport,
    VirtioDevice,
};

use crate::bdev::{Bdev, BdevBackend, BdevInfo, Completion, IoError, IoOp, IoStatus, Request};
use crate::channel::ChannelBackend;
use crate::error::{Error, Result};

const TARGET: &str = "vbdev::virtio_blk";

/// Bytes of DMA memory per in-flight child: header (16), discard/write-zeroes range (16),
/// status byte, padded to a cache line.
const SLOT_STRIDE: usize = 64;
const SLOT_DWZ: usize = 16;
const SLOT_STATUS: usize = 32;
/// Written into the status byte before submission: not a status the spec defines, so a
/// device that completes without writing one is caught.
const STATUS_UNSET: u8 = 0xff;
/// Largest child request in bytes (keeps a read's used len, data + status, in a u32).
const MAX_CHILD_BYTES: u64 = 1 << 30;

/// Features this driver negotiates when the device offers them.
pub const WANTED_FEATURES: u64 = blk::features::SIZE_MAX
    | blk::features::SEG_MAX
    | blk::features::RO
    | blk::features::BLK_SIZE
    | blk::features::FLUSH
    | blk::features::TOPOLOGY
    | blk::features::CONFIG_WCE
    | blk::features::MQ
    | blk::features::DISCARD
    | blk::features::WRITE_ZEROES
    | vfeat::RING_EVENT_IDX
    | vfeat::RING_INDIRECT_DESC
    | vfeat::VERSION_1;

/// How to attach a virtio-blk device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    /// Request queues to set up: the most channels open at once (SPDK `vq_count`, default 1).
    pub num_queues: u16,
    /// Descriptors per queue, a power of two up to 32768 (SPDK `vq_size`, default 512).
    pub queue_size: u16,
    /// A request not completed within this time fails the device (default 30 s).
    pub io_timeout: Duration,
    /// vhost-user connection options.
    pub vhost_user: VhostUserOptions,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            num_queues: 1,
            queue_size: 512,
            io_timeout: Duration::from_secs(30),
            vhost_user: VhostUserOptions::default(),
        }
    }
}

/// Connects to a vhost-user-blk target and attaches it as bdev `name`.
///
/// # Errors
/// [`Error::Attach`] with the cause: the socket cannot be reached, the target does not
/// answer in time, lacks a required feature, or has fewer queues than asked for.
pub fn attach_vhost_user(name: &str, path: impl AsRef<Path>, opts: &AttachOptions) -> Result<Bdev> {
    let attach_err = |source| Error::Attach {
        name: name.to_owned(),
        source,
    };
    let transport =
        VhostUser::connect(path, DmaDomain::global(), opts.vhost_user).map_err(attach_err)?;
    attach(name, Arc::new(transport), opts)
}

/// Attaches the virtio-blk device behind `transport` as bdev `name`.
///
/// # Errors
/// [`Error::Attach`] when negotiation, configuration or queue setup fails;
/// [`Error::InvalidOption`] for a bad queue count or size.
pub fn attach(name: &str, transport: Arc<dyn Transport>, opts: &AttachOptions) -> Result<Bdev> {
    if opts.num_queues == 0 {
        return Err(Error::InvalidOption {
            option: "num_queues",
            why: "must be at least 1".into(),
        });
    }
    if !opts.queue_size.is_power_of_two() {
        return Err(Error::InvalidOption {
            option: "queue_size",
            why: format!("{} is not a power of two from 1 to 32768", opts.queue_size),
        });
    }
    let attach_err = |source| Error::Attach {
        name: name.to_owned(),
        source,
    };
    let result = BlkShared::new(name, Arc::clone(&transport), opts).map_err(attach_err);
    if result.is_err() {
        transport.shutdown();
    }
    let dev = result?;
    tracing::info!(target: TARGET, name, blocks = dev.info.num_blocks, block_size = dev.info.block_size, queues = dev.info.num_queues, "virtio-blk attached");
    Ok(Bdev::new(Arc::new(BlkDevice(Arc::new(dev)))))
}

/// What the device allows per request, in bytes or sectors.
#[derive(Debug, Clone, Copy)]
struct Limits {
    block_size: u64,
    /// Bytes per data descriptor.
    max_seg_bytes: u64,
    /// Data bytes per child (a multiple of the block size).
    max_child_bytes: u64,
    /// Blocks per discard child.
    max_discard_blocks: u64,
    /// Blocks per write-zeroes child.
    max_write_zeroes_blocks: u64,
}

/// A virtio-blk device attached as a bdev: the handle registered as a [`Bdev`].
#[derive(Debug)]
struct BlkDevice(Arc<BlkShared>);

/// The device state shared by the bdev and its channels. Dropping the last reference
/// detaches the device.
#[derive(Debug)]
struct BlkShared {
    info: BdevInfo,
    device: VirtioDevice,
    config: BlkConfig,
    limits: Limits,
    io_timeout: Duration,
    pool: Mutex<Vec<BlkQueue>>,
    detached: AtomicBool,
}

impl BlkShared {
    fn new(
        name: &str,
        transport: Arc<dyn Transport>,
        opts: &AttachOptions,
    ) -> vbdev_virtio::Result<Self> {
        let device = VirtioDevice::init(transport, WANTED_FEATURES, 0)?;
        let t = device.transport();
        let f = device.features();
        let mut raw = vec![0u8; BlkConfig::needed_len(f)];
        t.read_config(0, &mut raw)?;
        let config = BlkConfig::parse(&raw, f);
        let block_size = if f & blk::features::BLK_SIZE != 0 {
            let b = config.blk_size;
            if !b.is_power_of_two() || !(512..=(1 << 20)).contains(&b) {
                return Err(vbdev_virtio::Error::BadConfig {
                    what: format!("blk_size {b} is not a power of two from 512 to 1 MiB"),
                });
            }
            b
        } else {
            blk::SECTOR_SIZE as u32
        };
        let bs = u64::from(block_size);
        let num_blocks = config
            .capacity
            .checked_mul(blk::SECTOR_SIZE)
            .ok_or_else(|| vbdev_virtio::Error::BadConfig {
                what: format!("capacity {} sectors overflows", config.capacity),
            })?
            / bs;
        let available = if f & blk::features::MQ != 0 {
            config.num_queues.max(1)
        } else {
            1
        }
        .min(t.num_queues());
        crate::stall::check_queues(
            opts.num_queues,
            available,
            opts.queue_size,
            t.max_queue_size(0),
        )?;
        let seg_max = if f & blk::features::SEG_MAX != 0 && config.seg_max > 0 {
            u64::from(config.seg_max)
        } else {
            u64::MAX
        };
        let indirect = f & vfeat::RING_INDIRECT_DESC != 0;
        // Longest chain: header + data + status; indirect tables hold up to 1024.
        let chain_max = if indirect {
            1024u64.max(u64::from(opts.queue_size))
        } else {
            u64::from(opts.queue_size)
        };
        if chain_max < 3 {
            return Err(vbdev_virtio::Error::InvalidQueueSize {
                size: opts.queue_size.into(),
            });
        }
        let data_segs = seg_max.min(chain_max - 2);
        let max_seg_bytes = if f & blk::features::SIZE_MAX != 0 && config.size_max > 0 {
            u64::from(config.size_max)
        } else {
            MAX_CHILD_BYTES
        };
        let max_child_bytes =
            (data_segs.saturating_mul(max_seg_bytes).min(MAX_CHILD_BYTES) / bs) * bs;
        if max_child_bytes == 0 {
            return Err(vbdev_virtio::Error::BadConfig {
                what: format!(
                    "seg_max {seg_max} x size_max {max_seg_bytes} cannot carry one {bs}-byte block"
                ),
            });
        }
        // Blocks per discard / write-zeroes child; 0 when the device's limit is below one
        // block, and then the operation is not offered (the limit cannot be honoured).
        let sectors_to_blocks = |s: u32| {
            let s = if s == 0 {
                u64::from(u32::MAX)
            } else {
                u64::from(s)
            };
            s * blk::SECTOR_SIZE / bs
        };
        let limits = Limits {
            block_size: bs,
            max_seg_bytes,
            max_child_bytes,
            max_discard_blocks: sectors_to_blocks(config.max_discard_sectors),
            max_write_zeroes_blocks: sectors_to_blocks(config.max_write_zeroes_sectors),
        };
        let qcfg = QueueConfig {
            size: opts.queue_size,
            event_idx: f & vfeat::RING_EVENT_IDX != 0,
            indirect_desc: indirect,
            indirect_max: (data_segs + 2).min(1024) as u16,
        };
        let mut queues = Vec::with_capacity(usize::from(opts.num_queues));
        for index in 0..opts.num_queues {
            let vq = SplitQueue::new(DmaDomain::global(), qcfg)?;
            let handles = t.setup_queue(index, &vq.addrs())?;
            queues.push(BlkQueue::new(
                index,
                vq,
                handles.notifier,
                handles.call,
                limits,
                Arc::clone(t),
            )?);
        }
        device.driver_ok()?;
        let serial = queues[0].get_id(opts.vhost_user.timeout)?;
        let info = BdevInfo {
            name: name.to_owned(),
            product_name: "VirtioBlk Disk".into(),
            driver: "virtio_blk",
            block_size,
            num_blocks,
            read_only: f & blk::features::RO != 0,
            flush: f & blk::features::FLUSH != 0,
            unmap: f & blk::features::DISCARD != 0 && limits.max_discard_blocks > 0,
            write_zeroes: f & blk::features::WRITE_ZEROES != 0
                && limits.max_write_zeroes_blocks > 0,
            num_queues: opts.num_queues,
            queue_size: opts.queue_size,
            serial,
            uuid: None,
        };
        Ok(Self {
            info,
            device,
            config,
            limits,
            io_timeout: opts.io_timeout,
            pool: Mutex::new(queues),
            detached: AtomicBool::new(false),
        })
    }

    fn removed(&self) -> bool {
        self.detached.load(Ordering::Relaxed) || !self.device.transport().is_alive()
    }
}

impl BdevBackend for BlkDevice {
    fn info(&self) -> &BdevInfo {
        &self.0.info
    }

    fn open_channel(&self) -> Result<Box<dyn ChannelBackend>> {
        let dev = &self.0;
        if dev.removed() {
            return Err(Error::Removed(dev.info.name.clone()));
        }
        let mut pool = dev.pool.lock().unwrap_or_else(|e| e.into_inner());
        let q = pool.pop().ok_or_else(|| Error::NoFreeQueue {
            name: dev.info.name.clone(),
            queues: dev.info.num_queues,
        })?;
        Ok(Box::new(BlkChannel {
            q: Some(q),
            dev: Arc::clone(dev),
            polls: 0,
        }))
    }

    fn is_removed(&self) -> bool {
        self.0.removed()
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        self.0.details()
    }

    fn detach(&self) {
        self.0.detach();
    }
}

impl BlkShared {
    fn details(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let f = self.device.features();
        vec![
            ("transport", self.device.transport().kind().to_owned()),
            ("features", format!("0x{f:x}")),
            ("feature_names", blk::feature_names(f).join(",")),
            ("offered_features", format!("0x{:x}", self.device.offered())),
            ("capacity_sectors", c.capacity.to_string()),
            ("size_max", c.size_max.to_string()),
            ("seg_max", c.seg_max.to_string()),
            (
                "max_transfer_bytes",
                self.limits.max_child_bytes.to_string(),
            ),
            ("max_discard_sectors", c.max_discard_sectors.to_string()),
            ("max_discard_seg", c.max_discard_seg.to_string()),
            (
                "discard_sector_alignment",
                c.discard_sector_alignment.to_string(),
            ),
            (
                "max_write_zeroes_sectors",
                c.max_write_zeroes_sectors.to_string(),
            ),
            ("max_write_zeroes_seg", c.max_write_zeroes_seg.to_string()),
            ("writeback", c.writeback.to_string()),
            ("physical_block_exp", c.physical_block_exp.to_string()),
            ("opt_io_size", c.opt_io_size.to_string()),
        ]
    }

    fn detach(&self) {
        if self.detached.swap(true, Ordering::AcqRel) {
            return;
        }
        let t = self.device.transport();
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        for q in pool.iter() {
            if t.is_alive() {
                if let Err(e) = t.stop_queue(q.index) {
                    tracing::warn!(target: TARGET, queue = q.index, error = %e, "stopping queue failed");
                }
            }
        }
        drop(pool);
        t.shutdown();
        tracing::info!(target: TARGET, name = %self.info.name, "virtio-blk detached");
    }
}

impl Drop for BlkShared {
    fn drop(&mut self) {
        self.detach();
    }
}

/// How many units a request's children cover: blocks, or 1 for a flush.
fn units(req: &Request) -> u64 {
    if req.op == IoOp::Flush {
        1
    } else {
        req.num_blocks
    }
}

/// A request in progress: the caller's request plus how far its children got.
#[derive(Debug, Default)]
struct Parent {
    req: Option<Request>,
    /// Units (blocks; 1 for a flush) already handed to children.
    cursor: u64,
    /// Children in flight.
    children: u32,
    status: IoStatus,
}

/// One request queue with everything its requests need, allocated at attach.
///
/// # Invariants
/// - a context index `c` is either in `ctx_free` or owned by exactly one chain in `vq`
///   (whose cookie is `c`), and then `ctx_parent[c]` names an active parent;
/// - an active parent owns its request's buffer; the chains of its children point only
///   into that buffer and into context slots the parent's children own.
#[derive(Debug)]
struct BlkQueue {
    index: u16,
    vq: SplitQueue,
    notifier: Notifier,
    call: CallFd,
    transport: Arc<dyn Transport>,
    limits: Limits,
    slots: DmaBuf,
    ctx_free: Vec<u16>,
    ctx_parent: Box<[u32]>,
    parents: Box<[Parent]>,
    parent_free: Vec<u32>,
    /// The parent whose children did not all fit yet; later requests wait behind it.
    partial: Option<u32>,
    /// Parents finished without a child in flight, to be returned by the next reap.
    ready: VecDeque<u32>,
    scratch: Vec<Segment>,
    active: usize,
    stall: crate::stall::StallClock,
    failed: bool,
}

impl BlkQueue {
    fn new(
        index: u16,
        vq: SplitQueue,
        notifier: Notifier,
        call: CallFd,
        limits: Limits,
        transport: Arc<dyn Transport>,
    ) -> vbdev_virtio::Result<Self> {
        let size = vq.capacity();
        let n = usize::from(size);
        let slots = DmaDomain::global().alloc_zeroed(n * SLOT_STRIDE, 4096)?;
        let segs = (limits.max_child_bytes.div_ceil(limits.max_seg_bytes) + 2) as usize;
        Ok(Self {
            index,
            vq,
            notifier,
            call,
            transport,
            limits,
            slots,
            ctx_free: (0..size).rev().collect(),
            ctx_parent: vec![0; n].into_boxed_slice(),
            parents: (0..=n).map(|_| Parent::default()).collect(),
            parent_free: (0..=n as u32).rev().collect(),
            partial: None,
            ready: VecDeque::with_capacity(n + 1),
            scratch: Vec::with_capacity(segs),
            active: 0,
            stall: crate::stall::StallClock::default(),
            failed: false,
        })
    }

    fn slot_iova(&self, ctx: u16, off: usize) -> vbdev_virtio::Iova {
        vbdev_virtio::Iova(self.slots.iova().0 + (usize::from(ctx) * SLOT_STRIDE + off) as u64)
    }

    /// Writes the header (and range) of a child into context `ctx`'s slot and returns
    /// the chain's first segment.
    fn prepare(&mut self, ctx: u16, type_: u32, sector: u64, dwz: Option<DiscardWriteZeroes>) {
        let base = usize::from(ctx) * SLOT_STRIDE;
        let hdr = ReqHeader {
            type_,
            reserved: 0,
            sector,
        };
        self.slots.write_at(base, &hdr.to_bytes());
        if let Some(d) = dwz {
            self.slots.write_at(base + SLOT_DWZ, &d.to_bytes());
        }
        self.slots.write_at(base + SLOT_STATUS, &[STATUS_UNSET]);
        self.scratch.clear();
        self.scratch
            .push(Segment::readable(self.slot_iova(ctx, 0), 16));
    }

    /// Puts the chain in `scratch` on the ring with cookie `ctx`.
    fn add(&mut self, ctx: u16) -> std::result::Result<(), AddError> {
        // SAFETY: every segment in `scratch` points either into `self.slots` at context
        // `ctx`'s slot (owned by this chain until `ctx` comes back from the ring) or into
        // the buffer of the request of `ctx_parent[ctx]`, which stays in `self.parents`
        // until all its children have come back from `pop_used` or `reclaim_all`
        // (struct invariant); nothing reads or writes those bytes meanwhile.
        unsafe { self.vq.try_add(&self.scratch, u64::from(ctx)) }
    }

    /// Sends children of parent `p` until it is fully sent or the ring is full.
    fn advance(&mut self, p: u32) {
        loop {
            let parent = &self.parents[p as usize];
            let req = parent.req.as_ref().expect("active parent has a request");
            let units = units(req);
            if parent.cursor >= units || !parent.status.is_success() {
                if self.partial == Some(p) {
                    self.partial = None;
                }
                if self.parents[p as usize].children == 0 {
                    self.ready.push_back(p);
                }
                return;
            }
            let Some(ctx) = self.ctx_free.pop() else {
                self.partial = Some(p);
                return;
            };
            let (op, offset, cursor) = (req.op, req.offset_blocks, parent.cursor);
            let buf_iova = req.buf.as_ref().map(|b| b.iova().0);
            let l = self.limits;
            let left = units - cursor;
            let to_sector = |block: u64| block * l.block_size / blk::SECTOR_SIZE;
            let n = match op {
                IoOp::Read | IoOp::Write => {
                    let bytes = (left * l.block_size).min(l.max_child_bytes);
                    let type_ = if op == IoOp::Read {
                        blk::req::IN
                    } else {
                        blk::req::OUT
                    };
                    self.prepare(ctx, type_, to_sector(offset + cursor), None);
                    let mut addr = buf_iova.expect("validated: reads and writes carry a buffer")
                        + cursor * l.block_size;
                    let mut rest = bytes;
                    while rest > 0 {
                        let len = rest.min(l.max_seg_bytes);
                        self.scratch.push(Segment {
                            addr: vbdev_virtio::Iova(addr),
                            len: len as u32, // len <= max_seg_bytes <= 1 GiB
                            device_writable: op == IoOp::Read,
                        });
                        addr += len;
                        rest -= len;
                    }
                    bytes / l.block_size
                }
                IoOp::Flush => {
                    self.prepare(ctx, blk::req::FLUSH, 0, None);
                    1
                }
                IoOp::Unmap | IoOp::WriteZeroes => {
                    let (type_, max) = if op == IoOp::Unmap {
                        (blk::req::DISCARD, l.max_discard_blocks)
                    } else {
                        (blk::req::WRITE_ZEROES, l.max_write_zeroes_blocks)
                    };
                    let blocks = left.min(max);
                    let range = DiscardWriteZeroes {
                        sector: to_sector(offset + cursor),
                        num_sectors: to_sector(blocks) as u32, // <= max_*_sectors, a u32
                        flags: 0,
                    };
                    self.prepare(ctx, type_, 0, Some(range));
                    self.scratch
                        .push(Segment::readable(self.slot_iova(ctx, SLOT_DWZ), 16));
                    blocks
                }
            };
            self.scratch
                .push(Segment::writable(self.slot_iova(ctx, SLOT_STATUS), 1));
            match self.add(ctx) {
                Ok(()) => {
                    self.ctx_parent[usize::from(ctx)] = p;
                    let parent = &mut self.parents[p as usize];
                    parent.children += 1;
                    parent.cursor += n;
                }
                Err(AddError::Full) | Err(AddError::Broken) => {
                    // Broken: the next reap fails everything; Full: resume on completions.
                    self.ctx_free.push(ctx);
                    self.partial = Some(p);
                    return;
                }
                Err(AddError::TooLong) => {
                    // Limits are computed from the ring's capacity, so this is a bug;
                    // fail the request rather than the process.
                    debug_assert!(false, "child chain longer than the ring allows");
                    self.ctx_free.push(ctx);
                    self.parents[p as usize].status = IoStatus::Failed(IoError::BlkUnsupp);
                }
            }
        }
    }

    fn try_submit(&mut self, req: Request) -> std::result::Result<(), Request> {
        // Parents outnumber contexts, so this only waits when completions are pending.
        let Some(p) = self.parent_free.pop() else {
            return Err(req);
        };
        if self.failed {
            self.parents[p as usize] = Parent {
                req: Some(req),
                status: IoStatus::Failed(IoError::Removed),
                ..Parent::default()
            };
            self.active += 1;
            self.ready.push_back(p);
            return Ok(());
        }
        if self.partial.is_some() || self.ctx_free.is_empty() {
            self.parent_free.push(p);
            return Err(req);
        }
        self.parents[p as usize] = Parent {
            req: Some(req),
            ..Parent::default()
        };
        self.active += 1;
        self.advance(p);
        Ok(())
    }

    fn flush(&mut self) {
        if self.vq.publish() {
            self.notifier.notify();
        }
    }

    fn finish(&mut self, p: u32) -> Completion {
        let parent = std::mem::take(&mut self.parents[p as usize]);
        self.parent_free.push(p);
        self.active -= 1;
        let req = parent.req.expect("active parent has a request");
        Completion {
            cookie: req.cookie,
            status: parent.status,
            buf: req.buf,
        }
    }

    fn status_of(&self, ctx: u16) -> IoStatus {
        match self
            .slots
            .read_volatile(usize::from(ctx) * SLOT_STRIDE + SLOT_STATUS)
        {
            blk::status::OK => IoStatus::Success,
            blk::status::IOERR => IoStatus::Failed(IoError::BlkIoErr),
            blk::status::UNSUPP => IoStatus::Failed(IoError::BlkUnsupp),
            s => IoStatus::Failed(IoError::BlkBadStatus(s)),
        }
    }

    /// Fails every request: the device is gone, broken or hung. The transport is shut
    /// down first so the device stops touching our memory.
    fn fail_all(&mut self, why: IoError) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.transport.shutdown();
        tracing::error!(target: TARGET, queue = self.index, in_flight = self.active, error = %why, "failing all requests of the queue");
        // Completions the device published before it went are real: deliver them.
        while let Some(used) = self.vq.pop_used() {
            if let Some(p) = self.complete_used(used) {
                self.ready.push_back(p);
            }
        }
        let mut reclaimed = std::mem::take(&mut self.scratch);
        reclaimed.clear();
        let mut ctxs: Vec<u16> = Vec::with_capacity(usize::from(self.vq.len()));
        // SAFETY: the transport is shut down: a vhost-user target has lost its connection
        // and with it the right to our memory (a dead one cannot write at all); the
        // chains' buffers are only handed back to callers after this point.
        unsafe { self.vq.reclaim_all(|c| ctxs.push(c as u16)) };
        self.scratch = reclaimed;
        for ctx in ctxs {
            self.ctx_free.push(ctx);
            let p = self.ctx_parent[usize::from(ctx)];
            let parent = &mut self.parents[p as usize];
            parent.children -= 1;
            if parent.status.is_success() {
                parent.status = IoStatus::Failed(why);
            }
            if parent.children == 0 && self.partial != Some(p) {
                self.ready.push_back(p);
            }
        }
        if let Some(p) = self.partial.take() {
            let parent = &mut self.parents[p as usize];
            if parent.status.is_success() {
                parent.status = IoStatus::Failed(why);
            }
            if parent.children == 0 {
                self.ready.push_back(p);
            }
        }
    }

    /// Accounts one completed child; returns its parent when that parent is finished.
    fn complete_used(&mut self, used: vbdev_virtio::Used) -> Option<u32> {
        let ctx = used.cookie as u16; // cookies are context indices < queue size
        let status = match used.written {
            Ok(_) => self.status_of(ctx),
            Err(e) => IoStatus::Failed(IoError::Protocol(e)),
        };
        self.ctx_free.push(ctx);
        let p = self.ctx_parent[usize::from(ctx)];
        let parent = &mut self.parents[p as usize];
        parent.children -= 1;
        if parent.status.is_success() && !status.is_success() {
            parent.status = status;
        }
        let units = parent.req.as_ref().map_or(0, units);
        let done = parent.cursor >= units || !parent.status.is_success();
        (parent.children == 0 && done && self.partial != Some(p)).then_some(p)
    }

    fn reap(&mut self, out: &mut [Completion], io_timeout: Duration, removed: bool) -> usize {
        if !self.failed {
            if let Some(e) = self.vq.broken() {
                self.fail_all(IoError::Protocol(e));
            } else if removed {
                self.fail_all(IoError::Removed);
            }
        }
        let mut n = 0;
        let mut progressed = false;
        while n < out.len() {
            if let Some(p) = self.ready.pop_front() {
                out[n] = self.finish(p);
                n += 1;
                continue;
            }
            let Some(used) = self.vq.pop_used() else {
                break;
            };
            progressed = true;
            if let Some(p) = self.complete_used(used) {
                out[n] = self.finish(p);
                n += 1;
            }
        }
        if let Some(p) = self.partial {
            if !self.failed {
                self.advance(p);
            }
        }
        let idle = !progressed && self.active > 0;
        if !self.failed && self.stall.poll(idle, io_timeout) {
            self.fail_all(IoError::TimedOut);
        }
        if self.vq.broken().is_some() && !self.failed {
            let e = self.vq.broken().expect("checked");
            self.fail_all(IoError::Protocol(e));
        }
        n
    }

    /// Sleeps on the call eventfd until the device completes something or `timeout`
    /// passes, with used-buffer notifications on only meanwhile (re-checking the ring
    /// after turning them on, virtio 1.2 §2.7.7.2).
    fn sleep(&mut self, timeout: Duration) {
        self.stall.waited = true;
        self.vq.set_interrupts(true);
        if !self.vq.has_used() && self.ready.is_empty() && !self.failed {
            self.call.wait(timeout);
        }
        self.vq.set_interrupts(false);
    }

    /// Reads the device serial with GET_ID (virtio 1.2 §5.2.6), synchronously.
    fn get_id(&mut self, timeout: Duration) -> vbdev_virtio::Result<Option<String>> {
        let buf = DmaDomain::global().alloc_zeroed(512, 512)?;
        let ctx = self.ctx_free.pop().expect("fresh queue has free contexts");
        self.prepare(ctx, blk::req::GET_ID, 0, None);
        self.scratch
            .push(Segment::writable(buf.iova(), blk::ID_BYTES as u32));
        self.scratch
            .push(Segment::writable(self.slot_iova(ctx, SLOT_STATUS), 1));
        if self.add(ctx).is_err() {
            return Err(vbdev_virtio::Error::QueueBusy { in_flight: 0 });
        }
        self.flush();
        let deadline = Instant::now() + timeout;
        let used = loop {
            if let Some(u) = self.vq.pop_used() {
                break u;
            }
            if let Some(e) = self.vq.broken() {
                self.transport.shutdown();
                std::mem::forget(buf);
                return Err(e.into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.transport.is_alive() {
                // The device may still write the buffer: never give it back.
                self.transport.shutdown();
                std::mem::forget(buf);
                return Err(vbdev_virtio::Error::Timeout {
                    op: "GET_ID request",
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            self.sleep(left.min(Duration::from_millis(50)));
        };
        self.ctx_free.push(ctx);
        if used.written.is_err() || !self.status_of(ctx).is_success() {
            return Ok(None);
        }
        let id = &buf[..blk::ID_BYTES];
        let end = id.iter().position(|&b| b == 0).unwrap_or(id.len());
        let s = String::from_utf8_lossy(&id[..end]).trim().to_owned();
        Ok((!s.is_empty()).then_some(s))
    }
}

/// A channel on one virtio-blk request queue.
#[derive(Debug)]
struct BlkChannel {
    q: Option<BlkQueue>,
    dev: Arc<BlkShared>,
    polls: u32,
}

impl BlkChannel {
    fn q(&mut self) -> &mut BlkQueue {
        self.q.as_mut().expect("queue present until drop")
    }
}

impl ChannelBackend for BlkChannel {
    fn try_submit(&mut self, req: Request) -> std::result::Result<(), Request> {
        self.q().try_submit(req)
    }

    fn flush(&mut self) {
        self.q().flush();
    }

    fn reap(&mut self, out: &mut [Completion]) -> usize {
        // The removal flags live behind the transport; looking every 64th poll (or after
        // a sleep) keeps them off the spin path and still notices within microseconds.
        self.polls = self.polls.wrapping_add(1);
        let look = self.polls % 64 == 0 || self.q.as_ref().is_some_and(|q| q.stall.waited);
        let removed = look && self.dev.removed();
        let timeout = self.dev.io_timeout;
        self.q().reap(out, timeout, removed)
    }

    fn in_flight(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.active)
    }

    fn buffer_visible(&self, buf: &DmaBuf) -> bool {
        self.dev.device.transport().region_visible(buf.region())
    }

    fn is_removed(&self) -> bool {
        self.dev.removed() || self.q.as_ref().is_some_and(|q| q.failed)
    }

    fn wait(&mut self, timeout: Duration) {
        // Bounded so that a device that dies without a word is noticed by `reap`.
        self.q().sleep(timeout.min(Duration::from_millis(100)));
    }
}

impl Drop for BlkChannel {
    fn drop(&mut self) {
        let Some(mut q) = self.q.take() else { return };
        // The device may still be working on our requests: wait for them (bounded by the
        // I/O timeout, after which the queue is failed), then give the queue back.
        let mut out: [Completion; 16] = Default::default();
        while q.active > 0 {
            q.flush();
            let removed = self.dev.removed();
            if q.reap(&mut out, self.dev.io_timeout, removed) == 0 && q.active > 0 {
                q.sleep(Duration::from_millis(10));
            }
        }
        if q.failed {
            // A failed queue's ring cannot be reused without a device reset.
            return;
        }
        self.dev
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(q);
    }
}

#[cfg(test)]
mod tests;
