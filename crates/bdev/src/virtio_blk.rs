//! The `virtio_blk` module: a virtio-blk device (virtio 1.2 §5.2) as a bdev.
//!
//! Each request queue of the device backs one [`IoChannel`](crate::IoChannel). A block
//! request becomes one or more device requests ("children") so that every child fits the
//! device's limits (`seg_max`, `size_max`, `max_discard_sectors`,
//! `max_write_zeroes_sectors`); the request completes when its last child does.
//! Per-child headers and status bytes live in DMA memory allocated with the queue.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vbdev_virtio::blk::{self, BlkConfig, DiscardWriteZeroes, ReqHeader};
use vbdev_virtio::device::features as vfeat;
use vbdev_virtio::{
    CallFd, DmaBuf, DmaDomain, Notifier, QueueConfig, SplitQueue, Transport, VirtioDevice,
};

use crate::bdev::{Bdev, BdevBackend};
use crate::channel::ChannelBackend;
use crate::engine::{Attempts, Engine, Format, Slot, SlotView, Verdict};
use crate::error::{Error, Result};
use crate::io::{BdevInfo, Completion, IoError, IoOp, IoStatus, Request};
use crate::spec::{QueueOptions, Target};

const TARGET: &str = "vbdev::virtio_blk";

/// Bytes of DMA memory per in-flight child: header (16), discard/write-zeroes range (16).
/// Two children share a cache line, which only the driver writes.
const SLOT_STRIDE: usize = 32;
const SLOT_DWZ: usize = 16;
/// The status byte lives in the engine's status area, one byte per child: the device's
/// writes stay off the header lines, and 64 children's statuses share one line.
const STATUS_STRIDE: usize = 1;
/// Written into the status byte before submission: not a status the spec defines, so a
/// device that completes without writing one is caught.
const STATUS_UNSET: u8 = 0xff;
/// Chains of up to this many segments go direct while a quarter of the ring stays free.
const DIRECT_MAX: u16 = 4;
/// Rings below this size send every multi-segment chain indirectly (capacity first).
const DIRECT_MIN_QUEUE: u16 = 64;
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

/// How a virtio-blk device's queues are set up (the options of every device type).
pub type AttachOptions = QueueOptions;

/// Connects to a vhost-user-blk target (default connection options) and attaches it as
/// bdev `name`; [`attach_to`] with a [`Target`] for other options or a PCI function.
///
/// # Errors
/// As [`attach_to`].
pub fn attach_vhost_user(name: &str, path: impl AsRef<Path>, opts: &AttachOptions) -> Result<Bdev> {
    attach_to(name, &Target::vhost_user(path.as_ref()), opts)
}

/// Opens the transport to `target` and attaches the virtio-blk device there as bdev
/// `name`.
///
/// # Errors
/// [`Error::InvalidOption`] for a bad queue count or size (before connecting);
/// [`Error::Attach`] with the cause: the target cannot be reached or does not answer in
/// time (see [`Target::open`]), lacks a required feature, or has fewer queues than asked
/// for.
pub fn attach_to(name: &str, target: &Target, opts: &AttachOptions) -> Result<Bdev> {
    opts.check(1)?;
    attach(name, target.open(name)?, opts)
}

/// Attaches the virtio-blk device behind `transport` as bdev `name`.
///
/// # Errors
/// [`Error::Attach`] when negotiation, configuration or queue setup fails;
/// [`Error::InvalidOption`] for a bad queue count or size.
pub fn attach(name: &str, transport: Arc<dyn Transport>, opts: &AttachOptions) -> Result<Bdev> {
    if let Err(e) = opts.check(1) {
        transport.shutdown();
        return Err(e);
    }
    let attach_err = Error::attach(name);
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
    /// `max_child_bytes` in blocks (no division per request).
    max_child_blocks: u64,
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
        if !transport.has_config() {
            // The capacity lives in the configuration space (virtio 1.2 §5.2.4).
            return Err(vbdev_virtio::Error::MissingFeature {
                name: "VHOST_USER_PROTOCOL_F_CONFIG (virtio-blk reads its capacity from the \
                       configuration space; a vhost-user target without it, such as SPDK's \
                       vhost-scsi, is likely a virtio-scsi device)",
            });
        }
        let device = VirtioDevice::init(
            transport,
            vbdev_virtio::device::DeviceType::Blk,
            WANTED_FEATURES,
            0,
        )?;
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
        .min(t.request_queues(0));
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
        // A device that sees physical addresses gets each segment split at huge-page
        // boundaries (`SplitQueue` in physical mode): segments of at most a huge page
        // become at most two descriptors each, so count two per segment.
        let pieces = if t.phys_map().is_some() { 2 } else { 1 };
        let data_segs = (seg_max.min(chain_max - 2) / pieces).max(1);
        let max_seg_bytes = if f & blk::features::SIZE_MAX != 0 && config.size_max > 0 {
            u64::from(config.size_max)
        } else {
            MAX_CHILD_BYTES
        };
        let max_seg_bytes = if pieces > 1 {
            max_seg_bytes.min(vbdev_virtio::mem::HUGE_PAGE)
        } else {
            max_seg_bytes
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
            max_child_blocks: max_child_bytes / bs,
            max_discard_blocks: sectors_to_blocks(config.max_discard_sectors),
            max_write_zeroes_blocks: sectors_to_blocks(config.max_write_zeroes_sectors),
        };
        let qcfg = QueueConfig {
            size: opts.queue_size,
            event_idx: f & vfeat::RING_EVENT_IDX != 0,
            indirect_desc: indirect,
            indirect_max: (data_segs * pieces + 2).min(1024) as u16,
            phys: t.phys_map(),
        };
        let mut queues = Vec::with_capacity(usize::from(opts.num_queues));
        for index in 0..opts.num_queues {
            let mut vq = SplitQueue::new(DmaDomain::global(), qcfg)?;
            // header + data + status direct (bench/runs/2026-11-24-direct); small rings
            // are kept for capacity: a request per descriptor.
            if opts.queue_size >= DIRECT_MIN_QUEUE {
                vq.set_direct_max(DIRECT_MAX);
            }
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
        let serial = queues[0].get_id(opts.cmd_timeout)?;
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
            (
                "feature_names",
                vbdev_virtio::DeviceType::Blk.feature_names(f).join(","),
            ),
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
                if let Err(e) = t.stop_queue(q.e.index) {
                    tracing::warn!(target: TARGET, queue = q.e.index, error = %e, "stopping queue failed");
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

/// The virtio-blk request format (virtio 1.2 §5.2.6) of one device.
#[derive(Debug)]
struct BlkFormat {
    limits: Limits,
}

/// A GET_ID request: 20 bytes of serial into `buf`.
#[derive(Debug)]
struct GetId {
    /// Lent to the queue while the request is in flight.
    buf: Option<DmaBuf>,
}

impl BlkFormat {
    /// The request header (§5.2.6: type, reserved, sector) as two little-endian words.
    fn header(slot: &mut Slot<'_>, type_: u32, sector: u64) {
        const _: () = assert!(size_of::<ReqHeader>() == 16);
        slot.write_words(0, &[u64::from(type_), sector]);
        slot.header(0, 16);
    }

    fn status(slot: &SlotView<'_>) -> IoStatus {
        match slot.status_byte(0) {
            blk::status::OK => IoStatus::Success,
            blk::status::IOERR => IoStatus::Failed(IoError::BlkIoErr),
            blk::status::UNSUPP => IoStatus::Failed(IoError::BlkUnsupp),
            s => IoStatus::Failed(IoError::BlkBadStatus(s)),
        }
    }
}

impl Format for BlkFormat {
    type Target = ();
    type Cmd = GetId;
    type Reply = u8;

    fn stride(&self) -> usize {
        SLOT_STRIDE
    }

    fn cmd_buf(cmd: &mut GetId) -> &mut Option<DmaBuf> {
        &mut cmd.buf
    }

    fn status_stride(&self) -> usize {
        STATUS_STRIDE
    }

    fn status_marker(&self) -> Option<(usize, u8)> {
        Some((0, STATUS_UNSET))
    }

    fn child_units(&self, req: &Request, _: &(), left: u64) -> u64 {
        let l = &self.limits;
        match req.op {
            IoOp::Read | IoOp::Write => left.min(l.max_child_blocks),
            IoOp::Flush => 1,
            IoOp::Unmap => left.min(l.max_discard_blocks),
            IoOp::WriteZeroes => left.min(l.max_write_zeroes_blocks),
        }
    }

    fn build_io(
        &self,
        slot: &mut Slot<'_>,
        req: &Request,
        _: &(),
        start: u64,
        units: u64,
        _tag: u64,
    ) {
        let l = &self.limits;
        let to_sector = |block: u64| block * l.block_size / blk::SECTOR_SIZE;
        let lba = req.offset_blocks + start;
        match req.op {
            IoOp::Read | IoOp::Write => {
                let (type_, writable) = if req.op == IoOp::Read {
                    (blk::req::IN, true)
                } else {
                    (blk::req::OUT, false)
                };
                Self::header(slot, type_, to_sector(lba));
                let mut off = start * l.block_size;
                let mut rest = units * l.block_size;
                while rest > 0 {
                    let len = rest.min(l.max_seg_bytes);
                    slot.data(off, len as u32, writable); // len <= max_seg_bytes <= 1 GiB
                    off += len;
                    rest -= len;
                }
            }
            IoOp::Flush => Self::header(slot, blk::req::FLUSH, 0),
            IoOp::Unmap | IoOp::WriteZeroes => {
                let type_ = if req.op == IoOp::Unmap {
                    blk::req::DISCARD
                } else {
                    blk::req::WRITE_ZEROES
                };
                Self::header(slot, type_, 0);
                let range = DiscardWriteZeroes {
                    sector: to_sector(lba),
                    num_sectors: to_sector(units) as u32, // <= max_*_sectors, a u32
                    flags: 0,
                };
                slot.write(SLOT_DWZ, &range.to_bytes());
                slot.header(SLOT_DWZ, 16);
            }
        }
        slot.status(0, 1);
    }

    fn build_cmd(&self, slot: &mut Slot<'_>, cmd: &GetId, _tag: u64) {
        Self::header(slot, blk::req::GET_ID, 0);
        debug_assert!(cmd.buf.is_none(), "lent to the queue while in flight");
        slot.data(0, blk::ID_BYTES as u32, true);
        slot.status(0, 1);
    }

    fn judge_io(&self, slot: &SlotView<'_>, _: &(), _: &mut Attempts) -> Verdict {
        Verdict::Done(Self::status(slot))
    }

    fn read_cmd(&self, slot: &SlotView<'_>) -> (u8, IoStatus) {
        (slot.status_byte(0), IoStatus::Success)
    }
}

/// One request queue of the device: the engine with the virtio-blk format, its
/// interrupt file, and the one client its channel uses.
#[derive(Debug)]
struct BlkQueue {
    e: Engine<BlkFormat>,
    call: CallFd,
    client: u16,
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
        let mut e = Engine::new(BlkFormat { limits }, index, vq, notifier, transport)?;
        let client = e.register(Some(Arc::new(())));
        Ok(Self { e, call, client })
    }

    /// Sleeps on the call eventfd until the device completes something or `timeout`
    /// passes, with used-buffer notifications on only meanwhile (re-checking the ring
    /// after turning them on, virtio 1.2 §2.7.7.2).
    fn sleep(&mut self, timeout: Duration) {
        self.e.stall.waited = true;
        self.e.set_interrupts(true);
        if !self.e.has_used() && !self.e.has_ready(self.client) && !self.e.failed {
            self.call.wait(timeout);
        }
        self.e.set_interrupts(false);
    }

    /// Reads the device serial with GET_ID (virtio 1.2 §5.2.6), synchronously.
    fn get_id(&mut self, timeout: Duration) -> vbdev_virtio::Result<Option<String>> {
        let buf = DmaDomain::global().alloc_zeroed(512, 512)?;
        if self
            .e
            .submit_cmd(self.client, GetId { buf: Some(buf) })
            .is_err()
        {
            return Err(vbdev_virtio::Error::QueueBusy { in_flight: 0 });
        }
        self.e.flush();
        let deadline = Instant::now() + timeout;
        let done = loop {
            let removed = !self.e.transport_alive();
            self.e.pump(timeout, removed);
            if let Some(d) = self.e.take_cmd(self.client) {
                break d;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The transport is shut down before the buffer comes back.
                self.e.fail_all(IoError::TimedOut);
                let _ = self.e.take_cmd(self.client);
                return Err(vbdev_virtio::Error::Timeout {
                    op: "GET_ID request",
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            self.sleep(left.min(Duration::from_millis(50)));
        };
        match done.error {
            Some(IoError::Protocol(e)) => return Err(e.into()),
            Some(IoError::Removed) => {
                return Err(vbdev_virtio::Error::Timeout {
                    op: "GET_ID request",
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            Some(_) => return Ok(None),
            None if done.reply != blk::status::OK => return Ok(None),
            None => {}
        }
        let Some(buf) = done.cmd.buf.as_ref() else {
            return Ok(None);
        };
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
    fn try_submit(&mut self, req: &mut Request) -> bool {
        let q = self.q();
        q.e.submit_io_from(q.client, req)
    }

    fn flush(&mut self) {
        self.q().e.flush();
    }

    fn reap(&mut self, out: &mut [Completion]) -> usize {
        // The removal flags live behind the transport; looking every 64th poll (or after
        // a sleep) keeps them off the spin path and still notices within microseconds.
        self.polls = self.polls.wrapping_add(1);
        let look = self.polls % 64 == 0 || self.q.as_ref().is_some_and(|q| q.e.stall.waited);
        let removed = look && self.dev.removed();
        let timeout = self.dev.io_timeout;
        let q = self.q();
        q.e.reap(q.client, out, timeout, removed)
    }

    fn in_flight(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.e.active(q.client))
    }

    fn buffer_visible(&self, buf: &DmaBuf) -> bool {
        self.dev.device.transport().region_visible(buf.region())
    }

    fn is_removed(&self) -> bool {
        self.dev.removed() || self.q.as_ref().is_some_and(|q| q.e.failed)
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
        while q.e.active(q.client) > 0 {
            q.e.flush();
            let removed = self.dev.removed();
            let n = q.e.reap(q.client, &mut out, self.dev.io_timeout, removed);
            if n == 0 && q.e.active(q.client) > 0 {
                q.sleep(Duration::from_millis(10));
            }
        }
        if q.e.failed {
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
