//! The `virtio_scsi` module: a virtio-scsi controller (virtio 1.2 §5.6) whose logical
//! units become bdevs.
//!
//! # What happens at attach
//! The controller is negotiated (INOUT, HOTPLUG, CHANGE, EVENT_IDX, INDIRECT_DESC,
//! VERSION_1) and its queues set up: control queue 0, event queue 1, request queues from
//! 2. Every target from 0 to `min(max_target, 255)` is scanned: REPORT LUNS (LUN 0 alone
//! when the target does not support it), then for each LUN INQUIRY (direct-access disks
//! with peripheral qualifier 0 only), TEST UNIT READY with bounded retries (START STOP
//! UNIT when the disk needs an initializing command), the VPD pages it lists (0x80
//! serial, 0x83 identification for the bdev UUID, 0xB0 block limits, 0xB2 provisioning),
//! READ CAPACITY(10), and (16) when (10) overflows or the disk speaks SBC-3 or later,
//! MODE SENSE(6) for write protection and the write cache, and REPORT SUPPORTED
//! OPERATION CODES to learn which optional commands really work. Every command has a
//! timeout; a target that does not answer fails the attach, it never hangs it.
//!
//! Bdevs are named `<name>t<target>` for LUN 0 and `<name>t<target>l<lun>` otherwise.
//!
//! # I/O
//! READ/WRITE(10), or (16) when the LBA or length needs it; flush is SYNCHRONIZE
//! CACHE(10); unmap is UNMAP (one descriptor per command, split to the VPD limits);
//! write-zeroes is WRITE SAME(16) when the disk supports it, else writes from a shared
//! zero buffer. Transfers above `max_sectors` or the VPD maximum are split. UNIT
//! ATTENTION, BUSY, TASK SET FULL and retryable virtio responses are retried with
//! backoff; other errors complete the request with the sense key, ASC and ASCQ
//! ([`IoError::ScsiCheckCondition`](crate::IoError::ScsiCheckCondition)).
//!
//! # Channels
//! As in SPDK, all bdevs of one controller share a request queue per thread: a channel
//! opened on a thread uses the queue that thread already has for this controller, or a
//! free one. A thread beyond the number of request queues gets
//! [`Error::NoFreeQueue`]. The queue is behind an uncontended mutex (its owner thread is
//! the only normal user; the scanner borrows it when the device has no spare queue).
//!
//! # Control and events
//! [`Bdev::reset`] sends LOGICAL UNIT RESET on the control queue and waits for the
//! answer up to its timeout (some targets never answer: then the reset fails and I/O
//! goes on). A background thread serves the event queue: hot-add scans the new LUN and
//! creates its bdev, hot-remove marks the bdev removed (its requests fail with
//! [`IoError::Removed`](crate::IoError::Removed)), a capacity change re-reads the capacity and resizes the bdev,
//! EVENTS_MISSED rescans everything. Changes are reported through
//! [`ScsiController::subscribe`].
mod ctrlq;
mod queue;
mod scan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread::ThreadId;
use std::time::Duration;

use vbdev_virtio::device::features as vfeat;
use vbdev_virtio::scsi::{self as wire, ScsiConfig};
use vbdev_virtio::{CallFd, DmaBuf, DmaDomain, QueueConfig, SplitQueue, Transport, VirtioDevice};

use crate::bdev::{Bdev, BdevBackend};
use crate::channel::ChannelBackend;
use crate::engine::PUBLISH_BATCH;
use crate::error::{Error, Result};
use crate::io::{BdevInfo, Completion, Request};
use crate::spec::{QueueOptions, Target};

use queue::{Layout, QueueSlot, ScsiQueue};

pub(crate) const TARGET: &str = "vbdev::virtio_scsi";

/// Features this driver negotiates when the device offers them.
pub const WANTED_FEATURES: u64 = wire::features::INOUT
    | wire::features::HOTPLUG
    | wire::features::CHANGE
    | vfeat::RING_EVENT_IDX
    | vfeat::RING_INDIRECT_DESC
    | vfeat::VERSION_1;

/// Bytes of the zero buffer write-zeroes emulation writes from.
const ZERO_BUF: usize = 1 << 20;
/// Largest child transfer (keeps used lengths in a u32).
const MAX_CHILD_BYTES: u64 = 1 << 30;
/// Event buffers kept posted (SPDK posts 16 as well).
const EVENT_BUFFERS: u16 = 16;

/// How a virtio-scsi controller's queues are set up (the options of every device type;
/// `cmd_timeout` bounds each scan command).
pub type AttachOptions = QueueOptions;

/// A change to the bdevs of a controller, reported to subscribers.
#[derive(Debug, Clone)]
pub enum ScsiEvent {
    /// A LUN appeared (hot-add or rescan): its new bdev.
    Added(Bdev),
    /// A LUN went away; its bdev reports removed and fails its requests.
    Removed {
        /// The bdev name.
        name: String,
    },
    /// A LUN's capacity changed.
    Resized {
        /// The bdev name.
        name: String,
        /// The new size in blocks.
        num_blocks: u64,
    },
}

/// One LUN found by a scan, as `bdev_virtio_scsi_get_devices` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSummary {
    /// The bdev name.
    pub name: String,
    /// Target id.
    pub target: u8,
    /// LUN.
    pub lun: u16,
    /// INQUIRY vendor.
    pub vendor: String,
    /// INQUIRY product.
    pub product: String,
}

/// Per-LUN limits for splitting, fixed at scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LunLimits {
    pub max_transfer_blocks: u64,
    /// 0: UNMAP not offered.
    pub max_unmap_blocks: u64,
    pub write_same_16: bool,
    pub max_write_same_blocks: u64,
}

/// Work for the controller thread, raised by I/O completions and events.
#[derive(Debug, Default)]
struct WorkState {
    rescan_all: bool,
    targets: BTreeSet<u8>,
    luns: BTreeSet<(u8, u16)>,
    removed: BTreeSet<(u8, u16)>,
}

#[derive(Debug)]
struct Work {
    state: Mutex<WorkState>,
    /// The event queue's interrupt file: writing it wakes the controller thread.
    wake: Arc<CallFd>,
}

impl Work {
    fn push(&self, f: impl FnOnce(&mut WorkState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = self.wake.eventfd().write(1);
    }

    fn take(&self) -> WorkState {
        std::mem::take(&mut *self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A logical unit attached as a bdev.
#[derive(Debug)]
pub(crate) struct Lun {
    pub target: u8,
    pub lun: u16,
    pub field: [u8; 8],
    pub block_size: u64,
    limits: LunLimits,
    pub io_timeout: Duration,
    pub num_blocks: AtomicU64,
    pub removed: AtomicBool,
    info: BdevInfo,
    vendor: String,
    product: String,
    revision: String,
    write_cache: bool,
    work: Arc<Work>,
    /// The I/O statistics every `Bdev` of this LUN shares.
    stats: Arc<crate::iostat::BdevStats>,
}

impl Lun {
    pub fn limits(&self) -> LunLimits {
        self.limits
    }

    /// The device answered BAD_TARGET or INCORRECT_LUN: check whether the LUN is gone.
    pub fn suspect_gone(&self) {
        let key = (self.target, self.lun);
        self.work.push(|w| {
            w.luns.insert(key);
        });
    }

    /// A UNIT ATTENTION said the capacity changed.
    pub fn note_capacity_change(&self) {
        self.suspect_gone();
    }

    /// A UNIT ATTENTION said the target's LUN inventory changed.
    pub fn note_luns_changed(&self) {
        let t = self.target;
        self.work.push(|w| {
            w.targets.insert(t);
        });
    }
}

/// Which thread uses which I/O queue.
#[derive(Debug, Default, Clone, Copy)]
struct Binding {
    owner: Option<ThreadId>,
    channels: u32,
}

/// The scanner's place on a request queue.
#[derive(Debug)]
struct Mgmt {
    slot: Arc<QueueSlot>,
    client: u16,
}

/// The controller shared by its bdevs, channels and thread. Dropping the last
/// reference detaches the device.
#[derive(Debug)]
struct Ctrl {
    name: String,
    device: VirtioDevice,
    config: ScsiConfig,
    opts: AttachOptions,
    queues: Vec<Arc<QueueSlot>>,
    bindings: Mutex<Vec<Binding>>,
    mgmt: Mutex<Mgmt>,
    ctrlq: Mutex<ctrlq::CtrlQueue>,
    evq: Mutex<ctrlq::EventQueue>,
    luns: Mutex<BTreeMap<(u8, u16), Arc<Lun>>>,
    subscribers: Mutex<Vec<mpsc::Sender<ScsiEvent>>>,
    work: Arc<Work>,
    detached: AtomicBool,
    queue_size: u16,
}

/// A virtio-scsi controller: the handle that owns the device and lists its bdevs.
#[derive(Debug, Clone)]
pub struct ScsiController(Arc<Ctrl>);

/// Connects to a vhost-user-scsi target (default connection options), scans it and
/// returns the controller; [`attach_to`] with a [`Target`] for other options or a PCI
/// function.
///
/// # Errors
/// As [`attach_to`].
pub fn attach_vhost_user(
    name: &str,
    path: impl AsRef<Path>,
    opts: &AttachOptions,
) -> Result<ScsiController> {
    attach_to(name, &Target::vhost_user(path.as_ref()), opts)
}

/// Opens the transport to `target`, attaches the virtio-scsi controller there as `name`
/// and scans it.
///
/// # Errors
/// [`Error::InvalidOption`] for a bad queue count or size (before connecting);
/// [`Error::Attach`] when the target cannot be reached (see [`Target::open`]),
/// negotiation or queue setup fails; [`Error::Scan`] when a scan command times out or the
/// device breaks.
pub fn attach_to(name: &str, target: &Target, opts: &AttachOptions) -> Result<ScsiController> {
    opts.check(4)?;
    attach(name, target.open(name)?, opts)
}

/// Attaches the virtio-scsi device behind `transport` as controller `name` and scans it.
///
/// # Errors
/// As [`attach_to`].
pub fn attach(
    name: &str,
    transport: Arc<dyn Transport>,
    opts: &AttachOptions,
) -> Result<ScsiController> {
    if let Err(e) = opts.check(4) {
        transport.shutdown();
        return Err(e);
    }
    let ctrl = match Ctrl::new(name, Arc::clone(&transport), opts) {
        Ok(c) => Arc::new(c),
        Err(source) => {
            transport.shutdown();
            return Err(Error::attach(name)(source));
        }
    };
    ctrl.evq
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .post_all();
    if let Err(e) = ctrl.full_scan(false) {
        ctrl.detach();
        return Err(e);
    }
    spawn_events_thread(&ctrl);
    let n = ctrl.luns.lock().unwrap_or_else(|e| e.into_inner()).len();
    tracing::info!(target: TARGET, name, luns = n, "virtio-scsi controller attached");
    Ok(ScsiController(ctrl))
}

impl Ctrl {
    fn new(
        name: &str,
        transport: Arc<dyn Transport>,
        opts: &AttachOptions,
    ) -> vbdev_virtio::Result<Self> {
        let device = VirtioDevice::init(
            transport,
            vbdev_virtio::device::DeviceType::Scsi,
            WANTED_FEATURES,
            0,
        )?;
        let t = Arc::clone(device.transport());
        let f = device.features();
        // The transport's request queues; the config may name fewer.
        let transport_rq = u32::from(t.request_queues(2));
        let config = if t.has_config() {
            let mut raw = [0u8; wire::config::LEN];
            t.read_config(0, &mut raw)?;
            ScsiConfig::parse(&raw)
        } else {
            // SPDK's vhost-scsi offers no CONFIG (nor does SPDK's own initiator read it):
            // the spec's initial values, request queues from the transport, limits from
            // the VPD pages at scan time.
            tracing::info!(target: TARGET, name, request_queues = transport_rq, "no configuration space (the target offers no CONFIG): assuming the spec's defaults");
            ScsiConfig::assumed(transport_rq)
        };
        if !(16..=wire::CDB_SIZE_MAX).contains(&config.cdb_size) {
            return Err(vbdev_virtio::Error::BadConfig {
                what: format!(
                    "cdb_size {} (16-byte CDBs must fit, at most {})",
                    config.cdb_size,
                    wire::CDB_SIZE_MAX
                ),
            });
        }
        if config.sense_size > 4096 {
            return Err(vbdev_virtio::Error::BadConfig {
                what: format!("sense_size {} is above 4096", config.sense_size),
            });
        }
        let device_rq = transport_rq.min(config.num_queues.max(1));
        let device_rq = u16::try_from(device_rq).unwrap_or(u16::MAX);
        if device_rq == 0 {
            return Err(vbdev_virtio::Error::BadConfig {
                what: "the device has no request queue".into(),
            });
        }
        crate::stall::check_queues(
            opts.num_queues,
            device_rq,
            opts.queue_size,
            t.max_queue_size(2),
        )?;
        let event_idx = f & vfeat::RING_EVENT_IDX != 0;
        let indirect = f & vfeat::RING_INDIRECT_DESC != 0;
        // Control and event queues: small.
        let small = |index: u16| {
            let m = t.max_queue_size(index).max(1);
            let m = if m.is_power_of_two() {
                m
            } else {
                m.next_power_of_two() / 2
            };
            m.min(EVENT_BUFFERS)
        };
        let ctrl_cfg = QueueConfig {
            size: small(0),
            event_idx,
            indirect_desc: false,
            indirect_max: 4,
            phys: t.phys_map(),
        };
        let cq = SplitQueue::new(DmaDomain::global(), ctrl_cfg)?;
        let ch = t.setup_queue(0, &cq.addrs())?;
        let ev_cfg = QueueConfig {
            size: small(1),
            event_idx,
            indirect_desc: false,
            indirect_max: 4,
            phys: t.phys_map(),
        };
        let eq = SplitQueue::new(DmaDomain::global(), ev_cfg)?;
        let eh = t.setup_queue(1, &eq.addrs())?;
        let layout = Layout::new(&config);
        let zeroes = Arc::new(DmaDomain::global().alloc_zeroed(ZERO_BUF, 4096)?);
        let qcfg = QueueConfig {
            size: opts.queue_size,
            event_idx,
            indirect_desc: indirect,
            indirect_max: 4,
            phys: t.phys_map(),
        };
        // One more request queue for scans when the device has it.
        let total = (opts.num_queues + 1).min(device_rq);
        let mut queues = Vec::with_capacity(usize::from(total));
        for i in 0..total {
            let mut vq = SplitQueue::new(DmaDomain::global(), qcfg)?;
            // request + data + response direct while a quarter of the ring stays free
            // (one descriptor fetch less for the device, as for virtio-blk); small rings
            // keep a request per descriptor.
            if opts.queue_size >= 64 {
                vq.set_direct_max(4);
            }
            if !indirect && vq.max_chain() < 4 {
                return Err(vbdev_virtio::Error::InvalidQueueSize {
                    size: opts.queue_size.into(),
                });
            }
            let h = t.setup_queue(2 + i, &vq.addrs())?;
            let fmt = queue::ScsiFormat {
                layout,
                zeroes: Arc::clone(&zeroes),
            };
            let q = ScsiQueue::new(fmt, i, vq, h.notifier, Arc::clone(&t))?;
            queues.push(Arc::new(QueueSlot {
                index: i,
                q: Mutex::new(q),
                call: h.call,
                failed: AtomicBool::new(false),
            }));
        }
        device.driver_ok()?;
        let mgmt_slot = Arc::clone(queues.last().expect("at least one request queue"));
        let client = mgmt_slot.lock().register(None);
        let wake = Arc::new(eh.call);
        let evq = ctrlq::EventQueue::new(eq, eh.notifier, &config, Arc::clone(&t))?;
        let ctrlq = ctrlq::CtrlQueue::new(cq, ch.notifier, ch.call, Arc::clone(&t))?;
        Ok(Self {
            name: name.to_owned(),
            device,
            config,
            opts: *opts,
            queues,
            bindings: Mutex::new(vec![Binding::default(); usize::from(opts.num_queues)]),
            mgmt: Mutex::new(Mgmt {
                slot: mgmt_slot,
                client,
            }),
            ctrlq: Mutex::new(ctrlq),
            evq: Mutex::new(evq),
            luns: Mutex::new(BTreeMap::new()),
            subscribers: Mutex::new(Vec::new()),
            work: Arc::new(Work {
                state: Mutex::new(WorkState::default()),
                wake,
            }),
            detached: AtomicBool::new(false),
            queue_size: opts.queue_size,
        })
    }

    fn removed(&self) -> bool {
        self.detached.load(Ordering::Relaxed) || !self.device.transport().is_alive()
    }

    fn emit(&self, ev: ScsiEvent) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.send(ev.clone()).is_ok());
    }

    fn bdev_name(&self, target: u8, lun: u16) -> String {
        if lun == 0 {
            format!("{}t{target}", self.name)
        } else {
            format!("{}t{target}l{lun}", self.name)
        }
    }

    fn detach(&self) {
        if self.detached.swap(true, Ordering::AcqRel) {
            return;
        }
        let t = self.device.transport();
        if t.is_alive() {
            for i in 0..2 + self.queues.len() as u16 {
                if let Err(e) = t.stop_queue(i) {
                    tracing::warn!(target: TARGET, queue = i, error = %e, "stopping queue failed");
                }
            }
        }
        t.shutdown();
        let _ = self.work.wake.eventfd().write(1);
        let luns = std::mem::take(&mut *self.luns.lock().unwrap_or_else(|e| e.into_inner()));
        for l in luns.values() {
            l.removed.store(true, Ordering::Relaxed);
        }
        tracing::info!(target: TARGET, name = %self.name, "virtio-scsi controller detached");
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let f = self.device.features();
        vec![
            ("transport", self.device.transport().kind().to_owned()),
            ("features", format!("0x{f:x}")),
            (
                "feature_names",
                vbdev_virtio::DeviceType::Scsi.feature_names(f).join(","),
            ),
            ("offered_features", format!("0x{:x}", self.device.offered())),
            ("vq_count", (self.queues.len() + 2).to_string()),
            ("vq_size", self.queue_size.to_string()),
            (
                "config",
                if self.device.transport().has_config() {
                    "read"
                } else {
                    "assumed (no VHOST_USER_PROTOCOL_F_CONFIG)"
                }
                .to_owned(),
            ),
            ("num_queues", c.num_queues.to_string()),
            ("seg_max", c.seg_max.to_string()),
            ("max_sectors", c.max_sectors.to_string()),
            ("cmd_per_lun", c.cmd_per_lun.to_string()),
            ("sense_size", c.sense_size.to_string()),
            ("cdb_size", c.cdb_size.to_string()),
            ("max_target", c.max_target.to_string()),
            ("max_lun", c.max_lun.to_string()),
        ]
    }
}

impl Drop for Ctrl {
    fn drop(&mut self) {
        self.detach();
    }
}

impl ScsiController {
    /// The controller name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The bdevs of the LUNs present now, by target and LUN.
    pub fn bdevs(&self) -> Vec<Bdev> {
        let luns = self.0.luns.lock().unwrap_or_else(|e| e.into_inner());
        luns.values().map(|l| disk_bdev(&self.0, l)).collect()
    }

    /// The bdev called `name`, if it is one of this controller's.
    pub fn bdev(&self, name: &str) -> Option<Bdev> {
        self.bdevs().into_iter().find(|b| b.name() == name)
    }

    /// The LUNs present now (for `bdev_virtio_scsi_get_devices`).
    pub fn luns(&self) -> Vec<LunSummary> {
        let luns = self.0.luns.lock().unwrap_or_else(|e| e.into_inner());
        luns.values()
            .map(|l| LunSummary {
                name: l.info.name.clone(),
                target: l.target,
                lun: l.lun,
                vendor: l.vendor.clone(),
                product: l.product.clone(),
            })
            .collect()
    }

    /// Reports bdev additions, removals and resizes from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<ScsiEvent> {
        let (tx, rx) = mpsc::channel();
        self.0
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// Scans every target again, now: adds new LUNs, removes vanished ones, resizes
    /// changed ones.
    ///
    /// # Errors
    /// [`Error::Scan`] when a command times out or the device fails.
    pub fn rescan(&self) -> Result<()> {
        self.0.full_scan(true)
    }

    /// Controller details (features, queue counts, config) as `(key, value)` pairs.
    pub fn details(&self) -> Vec<(&'static str, String)> {
        self.0.details()
    }

    /// The device is gone (disconnected, failed, detached).
    pub fn is_removed(&self) -> bool {
        self.0.removed()
    }

    /// Stops the device; every bdev of the controller reports removed.
    pub fn detach(&self) {
        self.0.detach();
    }
}

fn disk_bdev(ctrl: &Arc<Ctrl>, lun: &Arc<Lun>) -> Bdev {
    Bdev::with_stats(
        Arc::new(ScsiDisk {
            lun: Arc::clone(lun),
            ctrl: Arc::clone(ctrl),
        }),
        Arc::clone(&lun.stats),
    )
}

/// The controller thread: serves the event queue and work raised by I/O.
fn spawn_events_thread(ctrl: &Arc<Ctrl>) {
    let weak: Weak<Ctrl> = Arc::downgrade(ctrl);
    let wake = Arc::clone(&ctrl.work.wake);
    let name = format!("vbdev-scsi-{}", ctrl.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        loop {
            {
                let Some(ctrl) = weak.upgrade() else { return };
                if ctrl.removed() {
                    return;
                }
                ctrl.serve_events();
                ctrl.do_work();
                ctrl.evq
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_interrupts(true);
            }
            // Woken by an event, by work pushed from I/O, or at the latest after 100 ms
            // to notice a controller dropped meanwhile.
            wake.wait(Duration::from_millis(100));
        }
    });
    if let Err(e) = spawned {
        tracing::error!(target: TARGET, error = %e, "cannot start the event thread: no hotplug events");
    }
}

impl Ctrl {
    fn serve_events(&self) {
        let events = self.evq.lock().unwrap_or_else(|e| e.into_inner()).take();
        for ev in events {
            let missed = ev.event & wire::event::EVENTS_MISSED != 0;
            let kind = ev.event & !wire::event::EVENTS_MISSED;
            let at = wire::parse_lun_field(&ev.lun);
            tracing::debug!(target: TARGET, name = %self.name, event = kind, reason = ev.reason, missed, lun = ?at, "event");
            let mut w = self.work.state.lock().unwrap_or_else(|e| e.into_inner());
            if missed {
                w.rescan_all = true;
            }
            match (kind, at) {
                (wire::event::NO_EVENT, _) => {}
                (wire::event::TRANSPORT_RESET, Some((t, l))) => match ev.reason {
                    wire::event::RESET_RESCAN => {
                        w.targets.insert(t);
                        w.luns.insert((t, l));
                    }
                    wire::event::RESET_REMOVED => {
                        w.removed.insert((t, l));
                    }
                    _ => {}
                },
                (wire::event::PARAM_CHANGE, Some((t, l))) => {
                    let (asc, ascq) = ((ev.reason & 0xff) as u8, ((ev.reason >> 8) & 0xff) as u8);
                    match (asc, ascq) {
                        (0x3f, 0x0e) => {
                            w.targets.insert(t);
                        }
                        _ => {
                            w.luns.insert((t, l));
                        }
                    }
                }
                (_, None) if kind != wire::event::NO_EVENT => {
                    tracing::warn!(target: TARGET, name = %self.name, lun = ?ev.lun, "event with an invalid LUN field ignored");
                }
                _ => {}
            }
        }
    }

    fn do_work(self: &Arc<Self>) {
        let w = self.work.take();
        for key in &w.removed {
            self.remove_lun(*key);
        }
        let result = if w.rescan_all {
            self.full_scan(true)
        } else {
            let mut r = Ok(());
            for t in &w.targets {
                r = r.and(self.scan_target_and_apply(*t));
            }
            for (t, l) in &w.luns {
                if w.targets.contains(t) {
                    continue;
                }
                r = r.and(self.scan_lun_and_apply(*t, *l));
            }
            r
        };
        if let Err(e) = result {
            tracing::error!(target: TARGET, name = %self.name, error = %e, "rescan failed");
        }
    }

    fn remove_lun(&self, key: (u8, u16)) {
        let l = self
            .luns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        if let Some(l) = l {
            l.removed.store(true, Ordering::Relaxed);
            tracing::info!(target: TARGET, name = %l.info.name, "LUN removed");
            self.emit(ScsiEvent::Removed {
                name: l.info.name.clone(),
            });
        }
    }

    /// Adds, resizes or replaces the LUN `key` after a scan found `desc`.
    fn apply(self: &Arc<Self>, key: (u8, u16), desc: scan::LunDesc) {
        let existing = self
            .luns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(l) = existing {
            // Same block size: the same disk, possibly resized. Its limits stay those
            // of its first scan (a rescan racing unit attentions may learn less).
            if l.block_size == u64::from(desc.block_size) {
                let old = l.num_blocks.swap(desc.num_blocks, Ordering::Relaxed);
                if old != desc.num_blocks {
                    tracing::info!(target: TARGET, name = %l.info.name, old, new = desc.num_blocks, "LUN resized");
                    self.emit(ScsiEvent::Resized {
                        name: l.info.name.clone(),
                        num_blocks: desc.num_blocks,
                    });
                }
                return;
            }
            self.remove_lun(key);
        }
        let lun = Arc::new(self.make_lun(key, desc));
        tracing::info!(target: TARGET, name = %lun.info.name, blocks = lun.info.num_blocks, block_size = lun.info.block_size, "LUN added");
        self.luns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::clone(&lun));
        self.emit(ScsiEvent::Added(disk_bdev(self, &lun)));
    }

    fn make_lun(&self, (target, lun): (u8, u16), d: scan::LunDesc) -> Lun {
        let info = BdevInfo {
            name: self.bdev_name(target, lun),
            product_name: "Virtio SCSI Disk".into(),
            driver: "virtio_scsi",
            block_size: d.block_size,
            num_blocks: d.num_blocks,
            read_only: d.read_only,
            flush: true,
            unmap: d.limits.max_unmap_blocks > 0,
            write_zeroes: true,
            num_queues: self.opts.num_queues,
            queue_size: self.queue_size,
            serial: d.serial.clone(),
            uuid: d.uuid.clone(),
        };
        Lun {
            target,
            lun,
            field: wire::lun_field(target, lun),
            block_size: u64::from(d.block_size),
            limits: d.limits,
            io_timeout: self.opts.io_timeout,
            num_blocks: AtomicU64::new(d.num_blocks),
            removed: AtomicBool::new(false),
            info,
            vendor: d.vendor,
            product: d.product,
            revision: d.revision,
            write_cache: d.write_cache,
            work: Arc::clone(&self.work),
            stats: Arc::default(),
        }
    }
}

/// One LUN as a bdev backend.
#[derive(Debug)]
struct ScsiDisk {
    lun: Arc<Lun>,
    ctrl: Arc<Ctrl>,
}

impl BdevBackend for ScsiDisk {
    fn info(&self) -> &BdevInfo {
        &self.lun.info
    }

    fn open_channel(&self) -> Result<Box<dyn ChannelBackend>> {
        if self.is_removed() {
            return Err(Error::Removed(self.lun.info.name.clone()));
        }
        let me = std::thread::current().id();
        let mut b = self.ctrl.bindings.lock().unwrap_or_else(|e| e.into_inner());
        let i = b
            .iter()
            .position(|x| x.owner == Some(me))
            .or_else(|| b.iter().position(|x| x.owner.is_none()))
            .ok_or_else(|| Error::NoFreeQueue {
                name: self.lun.info.name.clone(),
                queues: self.ctrl.opts.num_queues,
            })?;
        b[i].owner = Some(me);
        b[i].channels += 1;
        drop(b);
        let slot = Arc::clone(&self.ctrl.queues[i]);
        let client = slot.lock().register(Some(Arc::clone(&self.lun)));
        Ok(Box::new(ScsiChannel {
            slot,
            binding: i,
            client,
            lun: Arc::clone(&self.lun),
            ctrl: Arc::clone(&self.ctrl),
            polls: 0,
            staged: Staged::new(usize::from(self.ctrl.queue_size)),
            outstanding: 0,
        }))
    }

    fn is_removed(&self) -> bool {
        self.lun.removed.load(Ordering::Relaxed) || self.ctrl.removed()
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let l = &self.lun;
        let lim = l.limits;
        let mut d = vec![
            ("controller", self.ctrl.name.clone()),
            ("target", l.target.to_string()),
            ("lun", l.lun.to_string()),
            ("vendor", l.vendor.clone()),
            ("product", l.product.clone()),
            ("revision", l.revision.clone()),
            ("write_cache", l.write_cache.to_string()),
            (
                "max_transfer_bytes",
                (lim.max_transfer_blocks * l.block_size).to_string(),
            ),
            ("max_unmap_blocks", lim.max_unmap_blocks.to_string()),
            (
                "write_zeroes_method",
                if lim.write_same_16 {
                    "WRITE SAME(16)".into()
                } else {
                    "zero-filled writes".into()
                },
            ),
        ];
        d.extend(self.ctrl.details());
        d
    }

    /// Removes this LUN's bdev (the controller stays; other LUNs keep working).
    fn detach(&self) {
        self.ctrl.remove_lun((self.lun.target, self.lun.lun));
    }

    fn num_blocks(&self) -> u64 {
        self.lun.num_blocks.load(Ordering::Relaxed)
    }

    fn reset(&self, timeout: Duration) -> Result<()> {
        if self.is_removed() {
            return Err(Error::Removed(self.lun.info.name.clone()));
        }
        let mut q = self.ctrl.ctrlq.lock().unwrap_or_else(|e| e.into_inner());
        q.lun_reset(self.lun.field, timeout)
            .map_err(|why| Error::Reset {
                name: self.lun.info.name.clone(),
                why,
            })
    }
}

/// A channel: one client of the thread's request queue, for one LUN.
#[derive(Debug)]
///
/// The queue is shared (behind a mutex) with the thread's other channels on this
/// controller and sometimes the scanner, so submissions are staged in the channel and
/// handed to the queue in one locked step per poll, or as soon as the engine's publish
/// batch of them is staged: no lock per request, and a long refill reaches the device
/// in batches while it is still being built, as the virtio-blk channel's does.
struct ScsiChannel {
    slot: Arc<QueueSlot>,
    binding: usize,
    client: u16,
    lun: Arc<Lun>,
    ctrl: Arc<Ctrl>,
    polls: u32,
    /// Accepted requests not yet handed to the queue, in order (at most `queue_size`).
    staged: Staged,
    /// Requests accepted and not yet returned by `reap`.
    outstanding: usize,
}

/// The requests a channel accepted and has not handed to its queue yet, in order: a
/// ring allocated with the channel, filled and drained in place, field by field (see
/// [`Request::move_fields`]: a request is staged a moment after it was built, and the
/// last ones are handed on a moment after they were staged). A `VecDeque` moves each
/// whole, twice.
struct Staged {
    /// Free slots hold husks: requests without a buffer.
    ring: Box<[Request]>,
    head: usize,
    len: usize,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged").field("len", &self.len).finish()
    }
}

impl Staged {
    fn new(cap: usize) -> Self {
        Self {
            ring: (0..cap.max(1)).map(|_| Request::flush(0)).collect(),
            head: 0,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves `req` in at the back; false, leaving it untouched, when full.
    fn push(&mut self, req: &mut Request) -> bool {
        if self.len == self.ring.len() {
            return false;
        }
        let mut i = self.head + self.len;
        if i >= self.ring.len() {
            i -= self.ring.len();
        }
        Request::move_fields(req, &mut self.ring[i]);
        self.len += 1;
        true
    }

    fn front_mut(&mut self) -> Option<&mut Request> {
        (self.len > 0).then(|| &mut self.ring[self.head])
    }

    /// Drops the front request (a husk once it was handed on).
    fn pop_front(&mut self) {
        debug_assert!(self.len > 0);
        self.ring[self.head].buf = None;
        self.head += 1;
        if self.head == self.ring.len() {
            self.head = 0;
        }
        self.len -= 1;
    }
}

/// Hands `client`'s staged requests to the queue, in order, as far as it has room.
fn unstage(staged: &mut Staged, client: u16, q: &mut ScsiQueue) {
    while let Some(req) = staged.front_mut() {
        if !q.submit_io_from(client, req) {
            break;
        }
        staged.pop_front();
    }
}

impl ChannelBackend for ScsiChannel {
    fn try_submit(&mut self, req: &mut Request) -> bool {
        // At most `queue_size` staged: the ring's capacity.
        if !self.staged.push(req) {
            return false;
        }
        self.outstanding += 1;
        // At once when it is the only request of this channel (QD 1: the device waits
        // for it), otherwise in batches.
        if self.staged.len() >= usize::from(PUBLISH_BATCH) || self.outstanding == 1 {
            self.flush();
        }
        true
    }

    fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let mut q = self.slot.lock();
        unstage(&mut self.staged, self.client, &mut q);
        q.flush();
    }

    fn reap(&mut self, out: &mut [Completion]) -> usize {
        self.polls = self.polls.wrapping_add(1);
        let mut q = self.slot.lock();
        if !self.staged.is_empty() {
            unstage(&mut self.staged, self.client, &mut q);
            q.flush();
        }
        let look = self.polls % 64 == 0 || q.stall.waited;
        let removed = look && self.ctrl.removed();
        let n = q.reap(self.client, out, self.ctrl.opts.io_timeout, removed);
        // Children the reap sent (retries, the rest of a split request) go out now.
        q.flush();
        if q.failed {
            self.slot.failed.store(true, Ordering::Relaxed);
        }
        self.outstanding -= n;
        n
    }

    fn in_flight(&self) -> usize {
        self.outstanding
    }

    fn buffer_visible(&self, buf: &DmaBuf) -> bool {
        self.ctrl.device.transport().region_visible(buf.region())
    }

    fn is_removed(&self) -> bool {
        self.lun.removed.load(Ordering::Relaxed)
            || self.ctrl.removed()
            || self.slot.failed.load(Ordering::Relaxed)
    }

    fn wait(&mut self, timeout: Duration) {
        self.slot
            .sleep(self.client, timeout.min(Duration::from_millis(100)));
    }

    fn num_blocks(&self) -> Option<u64> {
        Some(self.lun.num_blocks.load(Ordering::Relaxed))
    }
}

impl Drop for ScsiChannel {
    fn drop(&mut self) {
        // Wait for this channel's requests (bounded by the I/O timeout, after which the
        // queue is failed and they complete), then give the client id back.
        let mut out: [Completion; 16] = Default::default();
        loop {
            let mut q = self.slot.lock();
            unstage(&mut self.staged, self.client, &mut q);
            q.flush();
            q.pump(self.ctrl.opts.io_timeout, self.ctrl.removed());
            while q.take_io(self.client, &mut out) > 0 {}
            if self.staged.is_empty() && q.active(self.client) == 0 {
                q.unregister(self.client);
                break;
            }
            drop(q);
            self.slot.sleep(self.client, Duration::from_millis(10));
        }
        let mut b = self.ctrl.bindings.lock().unwrap_or_else(|e| e.into_inner());
        let x = &mut b[self.binding];
        x.channels -= 1;
        if x.channels == 0 {
            x.owner = None;
        }
    }
}

#[cfg(test)]
mod tests;
