//! The vhost-user-scsi target (virtio 1.2 §5.6, device side).
//!
//! [`start_scsi`] serves SCSI targets (ids 0-255), each with LUNs over any [`Bdev`], as
//! one virtio-scsi device on a vhost-user socket, in the serving model of
//! [`crate::server`]. The SCSI commands are run by the SPC-5/SBC-4 emulation of
//! [`crate::scsi`]. [`ScsiHandle`] adds, removes and resizes LUNs while a frontend is
//! connected, and tells it through the event queue.
//!
//! # Queues
//! `2 + num_queues` virtqueues (§5.6.2): the control queue (0), the event queue (1) and
//! `num_queues` request queues. Each request queue has its own worker thread; the
//! control and event queues are served on kicks, even in polling mode, and faults never
//! apply to them.
//!
//! Each LUN has one [`ChannelIo`] on its bdev, and each target's emulation is behind a
//! mutex held while a command runs: commands to one target are serialized, whatever
//! queue they come on, while different targets run in parallel. That is enough for a
//! test target, not for a fast one.
//!
//! # What the device offers
//! `VIRTIO_SCSI_F_INOUT`, `HOTPLUG`, `CHANGE`, `RING_EVENT_IDX`, `RING_INDIRECT_DESC` and
//! `VERSION_1`. `GET_CONFIG` returns any range that starts inside the 36-byte
//! `struct virtio_scsi_config` (§5.6.4; bytes past its end read as zero): `event_info_size` 16, `sense_size` 96 and `cdb_size` 32 by default,
//! `max_channel` 0, `max_target` 255, `max_lun` 16383. The driver may write `sense_size`
//! (up to 65535) and `cdb_size` (up to 255) with `SET_CONFIG`; requests then use them,
//! until the next frontend, which starts with the defaults again (§5.6.4).
//!
//! # Requests (§5.6.6.1)
//! A request is `virtio_scsi_req_cmd` (19 bytes, then `cdb_size` CDB bytes), the
//! Data-Out buffer, then `virtio_scsi_resp_cmd` (12 bytes, then `sense_size` sense bytes)
//! and the Data-In buffer. The LUN field is decoded by [`parse_virtio_lun`].
//! - a chain whose writable part cannot hold the response: given back with used length 0;
//! - a readable part shorter than the request header: `VIRTIO_SCSI_S_FAILURE`;
//! - a LUN field that is not a single level LUN, or a target id with no target:
//!   `VIRTIO_SCSI_S_BAD_TARGET`;
//! - otherwise the command runs: `status`, fixed format sense data (cut to `sense_size`)
//!   and `residual` (Data-In bytes not written; for a Data-Out only command, 0 on GOOD
//!   and all of it otherwise) come from its [`CmdOutcome`];
//!   `response` is `VIRTIO_SCSI_S_OVERRUN` when the buffers were too short for the
//!   transfer, else `VIRTIO_SCSI_S_OK`.
//!
//! Data-In and Data-Out go through per-queue buffers of at most
//! `max(max_sectors * 512, 1 MiB)` bytes, grown on demand: longer buffers are cut to
//! that (READ and WRITE cannot need more: each LUN's MAXIMUM TRANSFER LENGTH is
//! `max_sectors`). The used length is the response size plus the Data-In bytes.
//!
//! A [`Fault::ScsiSense`] ends the request it is drawn for in CHECK CONDITION with that
//! sense key, ASC and ASCQ, without running it; [`Fault::ScsiStatus`] with that status
//! and no sense; [`Fault::ScsiResponse`] with that virtio-scsi response code.
//! A [`Fault::CorruptRead`] flips the last data byte of the next READ command that
//! returns data.
//!
//! # Control queue (§5.6.6.2)
//! - `VIRTIO_SCSI_T_TMF`: LOGICAL UNIT RESET runs [`ScsiTarget::lun_reset`]
//!   (FUNCTION COMPLETE, `VIRTIO_SCSI_S_OK`, as QEMU and SPDK answer it; `INCORRECT_LUN`
//!   without the LUN); I_T NEXUS RESET runs [`ScsiTarget::target_reset`] (FUNCTION
//!   COMPLETE); ABORT TASK, ABORT TASK SET,
//!   CLEAR TASK SET, QUERY TASK and QUERY TASK SET answer FUNCTION COMPLETE
//!   (`VIRTIO_SCSI_S_OK`): commands run to completion before the next is read, so none
//!   is ever in the task set; anything else (CLEAR ACA: there is no ACA) is
//!   `FUNCTION_REJECTED`. A LUN field naming no target is `BAD_TARGET`.
//! - `VIRTIO_SCSI_T_AN_QUERY`, `VIRTIO_SCSI_T_AN_SUBSCRIBE`: no asynchronous
//!   notifications are supported: `event_actual` 0, `VIRTIO_SCSI_S_OK`.
//! - A request shorter than its type's layout gets `VIRTIO_SCSI_S_FAILURE` when it has
//!   room for the response; an unknown type, or no room, gets used length 0.
//!
//! # Event queue (§5.6.6.3)
//! The device keeps the buffers the driver posts and fills one per event, raised by
//! [`ScsiHandle`]:
//! - a LUN added: `VIRTIO_SCSI_T_TRANSPORT_RESET`, `VIRTIO_SCSI_EVT_RESET_RESCAN`;
//! - a LUN removed: `VIRTIO_SCSI_T_TRANSPORT_RESET`, `VIRTIO_SCSI_EVT_RESET_REMOVED`;
//! - a capacity change: `VIRTIO_SCSI_T_PARAM_CHANGE` with ASC 2Ah, ASCQ 09h in `reason`
//!   (`asc | ascq << 8`).
//!
//! Hot-plug events are sent only when the driver accepted `VIRTIO_SCSI_F_HOTPLUG`,
//! parameter changes only with `VIRTIO_SCSI_F_CHANGE`. The event's LUN field is `1`,
//! the target, then the LUN as REPORT LUNS lists it ([`wire::event_lun`]). The
//! emulation's unit attentions (REPORTED LUNS DATA HAS CHANGED, CAPACITY DATA HAS
//! CHANGED) are established whatever was negotiated.
//!
//! An event raised with no buffer posted is lost, and the device remembers it: the next
//! event sent has `VIRTIO_SCSI_T_EVENTS_MISSED` set. When the driver posts a buffer
//! while events are missed, the device fills it at once with `VIRTIO_SCSI_T_NO_EVENT`
//! and that flag, so the driver can rescan without waiting for another event (the
//! oldest held buffer, when it still holds some).
//!
//! The held buffers belong to the event queue's current ring: when the frontend stops
//! it (`GET_VRING_BASE`, as QEMU does when the guest resets the device) they are given
//! back ([`Device::queue_stopped`]), so the base reported is that of the oldest one,
//! and no event is ever written into a ring the driver has dropped. While the ring is
//! disabled or stopped an event is missed, and the buffers stay held.

pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vbdev_bdev::Bdev;
use vbdev_virtio::device::features as vfeat;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemory;

use crate::disk::{BlockIo, ChannelIo};
use crate::fast::{Requests, Segments};
use crate::fault::{Fault, Faults};
use crate::scsi::{
    CmdOutcome, Limits, Lun, LunError, ScsiTarget, Sense, SenseKey, parse_virtio_lun,
};
use crate::server::{
    self, Chain, Completer, Device, Error, Mem, Quirks, Result, ServeOptions, TargetHandle,
};
use wire::{Event, config, event, features, response};

const TARGET: &str = "vbdev::target::scsi";

/// The control queue's index (§5.6.2).
pub const CONTROL_QUEUE: u16 = 0;
/// The event queue's index (§5.6.2).
pub const EVENT_QUEUE: u16 = 1;
/// The first request queue's index (§5.6.2).
pub const FIRST_REQUEST_QUEUE: u16 = 2;
/// Most request queues a target can have (the server's queue limit less two).
pub const MAX_REQUEST_QUEUES: u16 = server::MAX_QUEUES - FIRST_REQUEST_QUEUE;

/// Target ids 0 to 255 (`max_target` 255).
const NUM_TARGETS: usize = 256;

/// The smallest cap on a request's Data-In and Data-Out buffers.
const MIN_DATA_CAP: usize = 1 << 20;

/// How to serve SCSI targets as a vhost-user-scsi device.
///
/// ```no_run
/// # use vbdev_target::vscsi::{ScsiTargetConfig, start_scsi};
/// # fn f(a: vbdev_bdev::Bdev, b: vbdev_bdev::Bdev) -> vbdev_target::server::Result<()> {
/// let target = start_scsi(
///     ScsiTargetConfig {
///         num_queues: 2,
///         ..ScsiTargetConfig::new("/tmp/vscsi.sock")
///     },
///     vec![(0, vec![(0, a)]), (1, vec![(0, b)])],
/// )?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiTargetConfig {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// Request queues, 1 to 62 (default 1). The device has two more virtqueues: control
    /// and event.
    pub num_queues: u16,
    /// Largest queue size a frontend may use, a power of two up to 32768 (default 1024).
    pub queue_size: u16,
    /// Busy-poll the request queues instead of waiting for kicks (default false).
    pub poll: bool,
    /// With `poll`: threads polling the request queues, from 1 to `num_queues`
    /// (default 1: one thread polls every request queue in turn, as an SPDK reactor does).
    pub poll_threads: u16,
    /// Most data segments per request, `seg_max` (default 126).
    pub seg_max: u32,
    /// Largest transfer in 512-byte sectors, `max_sectors`, also each LUN's MAXIMUM
    /// TRANSFER LENGTH (default 8192, 4 MiB).
    pub max_sectors: u32,
    /// Commands a driver should queue per LUN, `cmd_per_lun` (default 128).
    pub cmd_per_lun: u32,
    /// Behave like another target (default: none).
    pub quirks: Quirks,
}

impl ScsiTargetConfig {
    /// The defaults, listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            num_queues: 1,
            queue_size: 1024,
            poll: false,
            poll_threads: 1,
            seg_max: 126,
            max_sectors: 8192,
            cmd_per_lun: 128,
            quirks: Quirks::default(),
        }
    }
}

/// Starts a vhost-user-scsi target serving `targets`: (target id, [(LUN, bdev)]).
///
/// Each LUN gets its own [`ChannelIo`] on its bdev; its serial number (Unit Serial
/// Number VPD page, and the source of its designators) is the bdev name, so a bdev
/// served as two LUNs looks like one disk reached twice. Targets may be given without
/// LUNs, and LUNs added later with [`ScsiHandle::add_lun`]. The LUNs start with no
/// unit attention pending.
///
/// # Errors
/// [`Error::InvalidOption`] for a bad option or a target id given twice,
/// [`Error::Lun`] for a LUN above 16383 or given twice, [`Error::Bdev`] when a bdev
/// cannot give a channel, and the errors of [`server::serve`].
pub fn start_scsi(
    cfg: ScsiTargetConfig,
    targets: Vec<(u8, Vec<(u16, Bdev)>)>,
) -> Result<ScsiHandle> {
    let mut built = Vec::with_capacity(targets.len());
    for (id, luns) in targets {
        if built.iter().any(|t: &ScsiTarget| t.target_id() == id) {
            return Err(invalid("targets", format!("target {id} is given twice")));
        }
        let mut t = ScsiTarget::new(id);
        for (lun, bdev) in luns {
            let l = open_lun(&bdev, cfg.max_sectors)?;
            t.add_lun(lun, l)
                .map_err(|source| Error::Lun { target: id, source })?;
        }
        clear_inventory_attentions(&mut t);
        built.push(t);
    }
    let device = Arc::new(ScsiDevice::new(&cfg, built)?);
    tracing::info!(target: TARGET, socket = %cfg.socket.display(), queues = cfg.num_queues, targets = device.target_count(), "vhost-user-scsi target");
    let handle = server::serve(
        Arc::clone(&device),
        ServeOptions {
            socket: cfg.socket,
            poll: cfg.poll,
            poll_threads: cfg.poll_threads,
            quirks: cfg.quirks,
        },
        Arc::clone(&device.faults),
    )?;
    Ok(ScsiHandle { handle, device })
}

/// Clears the REPORTED LUNS DATA HAS CHANGED unit attentions that building the target
/// LUN by LUN established: no initiator has seen an inventory yet. REPORT LUNS
/// addressed to a LUN clears it there (SPC-5).
fn clear_inventory_attentions(t: &mut ScsiTarget) {
    // REPORT LUNS, SELECT REPORT 00h, ALLOCATION LENGTH 16 (the minimum).
    let cdb = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
    let ids: Vec<u16> = t.lun_ids().collect();
    for lun in ids {
        let _ = t.execute(lun, &cdb, &[], &mut [0u8; 16]);
    }
}

fn invalid(option: &'static str, why: String) -> Error {
    Error::InvalidOption { option, why }
}

/// A LUN over a channel of `bdev`, with the transfer limit of `max_sectors`.
fn open_lun(bdev: &Bdev, max_sectors: u32) -> Result<Lun> {
    let io = ChannelIo::open(bdev).map_err(|source| Error::Bdev {
        bdev: bdev.name().to_owned(),
        source,
    })?;
    Ok(new_lun(Box::new(io), bdev.name(), max_sectors))
}

fn new_lun(io: Box<dyn BlockIo>, serial: &str, max_sectors: u32) -> Lun {
    let bs = u64::from(io.info().block_size.max(1));
    let blocks = (u64::from(max_sectors) * 512 / bs).clamp(1, u64::from(u32::MAX));
    Lun::new(io, serial).with_limits(Limits {
        // Clamped to 1..=u32::MAX above.
        max_transfer_blocks: blocks as u32,
        ..Limits::default()
    })
}

/// A running vhost-user-scsi target: the server's [`TargetHandle`] (socket, faults,
/// stop) plus LUN management.
///
/// Dropping it stops the target.
#[derive(Debug)]
pub struct ScsiHandle {
    handle: TargetHandle,
    device: Arc<ScsiDevice>,
}

impl Deref for ScsiHandle {
    type Target = TargetHandle;

    fn deref(&self) -> &TargetHandle {
        &self.handle
    }
}

impl DerefMut for ScsiHandle {
    fn deref_mut(&mut self) -> &mut TargetHandle {
        &mut self.handle
    }
}

impl ScsiHandle {
    /// Adds LUN `lun` of target `target` over a new channel of `bdev` (creating the
    /// target if it has no LUNs yet), then tells the driver: the target's other LUNs
    /// get the unit attention REPORTED LUNS DATA HAS CHANGED and, with
    /// `VIRTIO_SCSI_F_HOTPLUG`, a `TRANSPORT_RESET` / `RESET_RESCAN` event is sent.
    ///
    /// # Errors
    /// [`Error::Bdev`] when the bdev cannot give a channel; [`Error::Lun`] when the LUN
    /// is above 16383 or exists.
    pub fn add_lun(&self, target: u8, lun: u16, bdev: &Bdev) -> Result<()> {
        let l = open_lun(bdev, self.device.max_sectors)?;
        {
            let mut slot = self.device.target(target);
            let t = slot.get_or_insert_with(|| ScsiTarget::new(target));
            t.add_lun(lun, l)
                .map_err(|source| Error::Lun { target, source })?;
        }
        tracing::info!(target: TARGET, scsi_target = target, lun, bdev = bdev.name(), "lun added");
        self.device.raise(
            features::HOTPLUG,
            Event {
                event: event::TRANSPORT_RESET,
                lun: wire::event_lun(target, lun),
                reason: event::RESET_RESCAN,
            },
        );
        Ok(())
    }

    /// Removes LUN `lun` of target `target` (closing its channel), then tells the
    /// driver: the target's other LUNs get REPORTED LUNS DATA HAS CHANGED and, with
    /// `VIRTIO_SCSI_F_HOTPLUG`, a `TRANSPORT_RESET` / `RESET_REMOVED` event is sent.
    /// The target stays, even without LUNs.
    ///
    /// # Errors
    /// [`Error::Lun`] ([`LunError::NotFound`]) when there is no such LUN.
    pub fn remove_lun(&self, target: u8, lun: u16) -> Result<()> {
        let removed = self
            .device
            .target(target)
            .as_mut()
            .and_then(|t| t.remove_lun(lun));
        if removed.is_none() {
            return Err(Error::Lun {
                target,
                source: LunError::NotFound { lun },
            });
        }
        drop(removed);
        tracing::info!(target: TARGET, scsi_target = target, lun, "lun removed");
        self.device.raise(
            features::HOTPLUG,
            Event {
                event: event::TRANSPORT_RESET,
                lun: wire::event_lun(target, lun),
                reason: event::RESET_REMOVED,
            },
        );
        Ok(())
    }

    /// Sets the capacity LUN `lun` of target `target` exposes, within its bdev's size.
    /// A change establishes the unit attention CAPACITY DATA HAS CHANGED (2Ah/09h) and,
    /// with `VIRTIO_SCSI_F_CHANGE`, sends a `PARAM_CHANGE` event with that ASC/ASCQ.
    ///
    /// # Errors
    /// [`Error::Lun`]: [`LunError::NotFound`], or [`LunError::BadCapacity`] for 0 or
    /// more blocks than the bdev has.
    pub fn set_capacity(&self, target: u8, lun: u16, num_blocks: u64) -> Result<()> {
        let changed = {
            let mut slot = self.device.target(target);
            let t = slot.as_mut().ok_or(Error::Lun {
                target,
                source: LunError::NotFound { lun },
            })?;
            let before = t.lun(lun).map(Lun::num_blocks);
            t.set_capacity(lun, num_blocks)
                .map_err(|source| Error::Lun { target, source })?;
            before != Some(num_blocks)
        };
        if changed {
            tracing::info!(target: TARGET, scsi_target = target, lun, num_blocks, "capacity changed");
            let cap = Sense::CAPACITY_DATA_HAS_CHANGED;
            self.device.raise(
                features::CHANGE,
                Event {
                    event: event::PARAM_CHANGE,
                    lun: wire::event_lun(target, lun),
                    reason: u32::from(cap.asc) | u32::from(cap.ascq) << 8,
                },
            );
        }
        Ok(())
    }

    /// Event queue buffers the driver has posted and the device holds for the next
    /// events (0 with no frontend). A driver's buffers are taken asynchronously, after
    /// its kick: an event raised before is missed.
    pub fn event_buffers(&self) -> usize {
        lock(&self.device.events).buffers.len()
    }

    /// The targets and their LUNs, ascending.
    pub fn luns(&self) -> Vec<(u8, Vec<u16>)> {
        self.device
            .targets
            .iter()
            .filter_map(|slot| {
                lock(slot)
                    .as_ref()
                    .map(|t| (t.target_id(), t.lun_ids().collect()))
            })
            .collect()
    }

    /// The capacity in blocks and block size LUN `lun` of target `target` exposes.
    pub fn lun_size(&self, target: u8, lun: u16) -> Option<(u64, u32)> {
        let slot = self.device.target(target);
        let l = slot.as_ref()?.lun(lun)?;
        Some((l.num_blocks(), l.block_size()))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The virtio-scsi device.
///
/// # Invariants
/// `targets.len() == 256` (indexed by target id); `queues.len() == num_queues`;
/// `sense_size <= SENSE_SIZE_MAX`, `cdb_size <= CDB_SIZE_MAX`.
struct ScsiDevice {
    num_queues: u16,
    queue_size: u16,
    seg_max: u32,
    max_sectors: u32,
    cmd_per_lun: u32,
    /// The answer to a completed reset: FUNCTION COMPLETE, or SUCCEEDED with
    /// [`Quirks::tmf_succeeded`].
    reset_done: u8,
    /// Cap on one request's Data-In and on its Data-Out bytes.
    max_data: usize,
    targets: Box<[Mutex<Option<ScsiTarget>>]>,
    queues: Box<[Mutex<CmdQueue>]>,
    sense_size: AtomicU32,
    cdb_size: AtomicU32,
    /// Features the driver accepted; 0 with no frontend.
    negotiated: AtomicU64,
    events: Mutex<Events>,
    /// The target's faults (shared with the server): READ commands consult
    /// [`Faults::take_corrupt_read`].
    faults: Arc<Faults>,
}

impl std::fmt::Debug for ScsiDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiDevice")
            .field("num_queues", &self.num_queues)
            .field("targets", &self.target_count())
            .finish_non_exhaustive()
    }
}

/// One request queue's data buffers.
#[derive(Default)]
struct CmdQueue {
    /// The request header and CDB being served (sized on first use; not zeroed per
    /// command, as a stack array of the largest CDB would be).
    hdr: Vec<u8>,
    data_out: Vec<u8>,
    data_in: Vec<u8>,
    /// The general path's request buffers, reused.
    segs: Segments,
}

/// The event queue's state for the current connection.
#[derive(Default)]
struct Events {
    completer: Option<Completer>,
    /// Buffers the driver posted, oldest first.
    buffers: VecDeque<Chain>,
    /// An event was lost for lack of a buffer.
    missed: bool,
}

/// What a command request's response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CmdResp {
    response: u8,
    status: u8,
    residual: u32,
    sense: Option<[u8; crate::scsi::FIXED_SENSE_LEN]>,
}

impl CmdResp {
    fn only(response: u8) -> Self {
        Self {
            response,
            status: 0,
            residual: 0,
            sense: None,
        }
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl ScsiDevice {
    fn new(cfg: &ScsiTargetConfig, targets: Vec<ScsiTarget>) -> Result<Self> {
        if cfg.num_queues == 0 || cfg.num_queues > MAX_REQUEST_QUEUES {
            return Err(invalid(
                "num_queues",
                format!("{} is not from 1 to {MAX_REQUEST_QUEUES}", cfg.num_queues),
            ));
        }
        let q = cfg.queue_size;
        if !q.is_power_of_two() || q > server::MAX_QUEUE_SIZE {
            return Err(invalid(
                "queue_size",
                format!("{q} is not a power of two from 1 to 32768"),
            ));
        }
        for (option, v) in [
            ("seg_max", cfg.seg_max),
            ("max_sectors", cfg.max_sectors),
            ("cmd_per_lun", cfg.cmd_per_lun),
        ] {
            if v == 0 {
                return Err(invalid(option, "must be at least 1".into()));
            }
        }
        let slots: Box<[Mutex<Option<ScsiTarget>>]> =
            (0..NUM_TARGETS).map(|_| Mutex::new(None)).collect();
        for t in targets {
            let id = usize::from(t.target_id());
            *lock(&slots[id]) = Some(t);
        }
        let max_data = usize::try_from(u64::from(cfg.max_sectors) * 512)
            .unwrap_or(usize::MAX)
            .max(MIN_DATA_CAP);
        Ok(Self {
            num_queues: cfg.num_queues,
            queue_size: q,
            seg_max: cfg.seg_max,
            max_sectors: cfg.max_sectors,
            cmd_per_lun: cfg.cmd_per_lun,
            reset_done: if cfg.quirks.tmf_succeeded {
                response::FUNCTION_SUCCEEDED
            } else {
                response::OK
            },
            max_data,
            targets: slots,
            queues: (0..cfg.num_queues)
                .map(|_| Mutex::new(CmdQueue::default()))
                .collect(),
            sense_size: AtomicU32::new(wire::SENSE_SIZE_DEFAULT),
            cdb_size: AtomicU32::new(wire::CDB_SIZE_DEFAULT),
            negotiated: AtomicU64::new(0),
            events: Mutex::new(Events::default()),
            faults: Arc::new(Faults::new()),
        })
    }

    fn target(&self, id: u8) -> MutexGuard<'_, Option<ScsiTarget>> {
        // 256 slots: any u8 is in range (type invariant).
        lock(&self.targets[usize::from(id)])
    }

    fn target_count(&self) -> usize {
        self.targets.iter().filter(|t| lock(t).is_some()).count()
    }

    /// `struct virtio_scsi_config` (virtio 1.2 §5.6.4), little-endian.
    fn config_space(&self) -> [u8; config::LEN] {
        let mut c = [0u8; config::LEN];
        let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
        put(
            config::NUM_QUEUES,
            &u32::from(self.num_queues).to_le_bytes(),
        );
        put(config::SEG_MAX, &self.seg_max.to_le_bytes());
        put(config::MAX_SECTORS, &self.max_sectors.to_le_bytes());
        put(config::CMD_PER_LUN, &self.cmd_per_lun.to_le_bytes());
        put(
            config::EVENT_INFO_SIZE,
            &to_u32(wire::EVENT_LEN).to_le_bytes(),
        );
        put(
            config::SENSE_SIZE,
            &self.sense_size.load(Ordering::Relaxed).to_le_bytes(),
        );
        put(
            config::CDB_SIZE,
            &self.cdb_size.load(Ordering::Relaxed).to_le_bytes(),
        );
        put(config::MAX_CHANNEL, &0u16.to_le_bytes());
        put(
            config::MAX_TARGET,
            &((NUM_TARGETS - 1) as u16).to_le_bytes(),
        );
        put(
            config::MAX_LUN,
            &u32::from(crate::scsi::MAX_LUN).to_le_bytes(),
        );
        c
    }

    /// Sends `ev` if the driver accepted `feature`: fills the oldest posted event
    /// buffer, or records the event as missed when there is none.
    fn raise(&self, feature: u64, mut ev: Event) {
        if self.negotiated.load(Ordering::Acquire) & feature == 0 {
            return;
        }
        let mut e = lock(&self.events);
        loop {
            let Some(c) = e.completer.clone() else {
                tracing::debug!(target: TARGET, event = ev.event, "event queue not started; event missed");
                e.missed = true;
                return;
            };
            let Some(chain) = e.buffers.pop_front() else {
                tracing::debug!(target: TARGET, event = ev.event, "no event buffer; event missed");
                e.missed = true;
                return;
            };
            if e.missed {
                ev.event |= event::EVENTS_MISSED;
            }
            if c.complete(chain.clone(), &ev.to_bytes()) {
                tracing::debug!(target: TARGET, event = ev.event, reason = ev.reason, "event sent");
                e.missed = false;
                return;
            }
            if !c.is_live() {
                // The ring is disabled or stopped: the buffer stays the driver's, kept
                // at the front (the oldest), for the ring's restart or for
                // `queue_stopped` to give back.
                e.buffers.push_front(chain);
                e.missed = true;
                return;
            }
            // That buffer was unusable (outside memory); try the next.
        }
    }

    /// Takes an event queue buffer: kept for the next event, or filled at once with
    /// NO_EVENT | EVENTS_MISSED when events were lost. Buffers too short for an event
    /// are given back unused.
    fn serve_event_buffer(&self, mem: &Mem, chain: Chain) -> Option<u32> {
        let writable = chain
            .clone()
            .writable()
            .fold(0usize, |n, d| n.saturating_add(d.len() as usize));
        if writable < wire::EVENT_LEN {
            tracing::debug!(target: TARGET, head = chain.head_index(), writable, "event buffer shorter than 16 bytes");
            return Some(0);
        }
        let mut e = lock(&self.events);
        if !e.missed {
            e.buffers.push_back(chain);
            return None;
        }
        let ev = Event {
            event: event::NO_EVENT | event::EVENTS_MISSED,
            lun: [0; 8],
            reason: 0,
        };
        let completer = e.completer.clone();
        if let (Some(c), false) = (completer, e.buffers.is_empty()) {
            // Buffers are still kept (the ring was disabled when an event came): the
            // oldest one reports the miss, the new one is kept behind the others, so the
            // kept buffers stay the last ones taken off the ring (`queue_stopped`).
            e.buffers.push_back(chain);
            let oldest = e
                .buffers
                .pop_front()
                .expect("not empty: a buffer was pushed");
            if c.complete(oldest.clone(), &ev.to_bytes()) {
                e.missed = false;
                tracing::debug!(target: TARGET, "missed events reported");
            } else {
                e.buffers.push_front(oldest);
            }
            return None;
        }
        let Ok(mut w) = Writer::new(mem, chain) else {
            return Some(0);
        };
        if w.write_all(&ev.to_bytes()).is_err() {
            return Some(0);
        }
        e.missed = false;
        tracing::debug!(target: TARGET, "missed events reported");
        Some(to_u32(wire::EVENT_LEN))
    }

    /// Serves one control queue request; returns the used length.
    fn serve_control<T>(&self, mem: &Mem, chain: DescriptorChain<T>) -> u32
    where
        T: Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let head = chain.head_index();
        let (mut r, mut w) = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
            (Ok(r), Ok(w)) => (r, w),
            _ => {
                tracing::debug!(target: TARGET, head, "control request outside the shared memory");
                return 0;
            }
        };
        let mut ty = [0u8; 4];
        if r.read_exact(&mut ty).is_err() {
            tracing::debug!(target: TARGET, head, "control request without a type");
            return 0;
        }
        match u32::from_le_bytes(ty) {
            wire::ctrl::TMF => {
                if w.available_bytes() < wire::TMF_RESP_LEN {
                    return 0;
                }
                let mut req = [0u8; wire::TMF_REQ_LEN - 4];
                let resp = if r.read_exact(&mut req).is_ok() {
                    let subtype = u32::from_le_bytes([req[0], req[1], req[2], req[3]]);
                    let mut lun = [0u8; 8];
                    lun.copy_from_slice(&req[4..12]);
                    self.tmf(subtype, &lun)
                } else {
                    tracing::debug!(target: TARGET, head, "TMF request too short");
                    response::FAILURE
                };
                match w.write_all(&[resp]) {
                    Ok(()) => to_u32(wire::TMF_RESP_LEN),
                    Err(_) => 0,
                }
            }
            wire::ctrl::AN_QUERY | wire::ctrl::AN_SUBSCRIBE => {
                if w.available_bytes() < wire::AN_RESP_LEN {
                    return 0;
                }
                let mut req = [0u8; wire::AN_REQ_LEN - 4];
                let resp = if r.read_exact(&mut req).is_ok() {
                    let mut lun = [0u8; 8];
                    lun.copy_from_slice(&req[..8]);
                    match parse_virtio_lun(&lun) {
                        Some((t, _)) if self.target(t).is_some() => response::OK,
                        _ => response::BAD_TARGET,
                    }
                } else {
                    tracing::debug!(target: TARGET, head, "AN request too short");
                    response::FAILURE
                };
                // event_actual 0: no asynchronous notification is supported.
                let mut out = [0u8; wire::AN_RESP_LEN];
                out[4] = resp;
                match w.write_all(&out) {
                    Ok(()) => to_u32(wire::AN_RESP_LEN),
                    Err(_) => 0,
                }
            }
            t => {
                tracing::debug!(target: TARGET, head, type_ = t, "unknown control request type");
                0
            }
        }
    }

    /// Runs a task management function (§5.6.6.2.1); returns the response code.
    fn tmf(&self, subtype: u32, lun: &[u8; 8]) -> u8 {
        let Some((target, lun)) = parse_virtio_lun(lun) else {
            return response::BAD_TARGET;
        };
        let mut slot = self.target(target);
        let Some(t) = slot.as_mut() else {
            return response::BAD_TARGET;
        };
        let r = match subtype {
            // A completed reset is FUNCTION COMPLETE (`VIRTIO_SCSI_S_OK`), as QEMU's and
            // SPDK's targets answer it; SPDK's initiator takes nothing else. SUCCEEDED is
            // the answer of the query functions (SAM-5 §7.11).
            wire::tmf::LOGICAL_UNIT_RESET if t.lun_reset(lun) => self.reset_done,
            wire::tmf::LOGICAL_UNIT_RESET => response::INCORRECT_LUN,
            wire::tmf::I_T_NEXUS_RESET => {
                t.target_reset();
                self.reset_done
            }
            // Nothing is ever in the task set: commands run to completion one at a time.
            wire::tmf::ABORT_TASK
            | wire::tmf::ABORT_TASK_SET
            | wire::tmf::CLEAR_TASK_SET
            | wire::tmf::QUERY_TASK
            | wire::tmf::QUERY_TASK_SET
                if t.lun(lun).is_some() =>
            {
                response::OK
            }
            wire::tmf::ABORT_TASK
            | wire::tmf::ABORT_TASK_SET
            | wire::tmf::CLEAR_TASK_SET
            | wire::tmf::QUERY_TASK
            | wire::tmf::QUERY_TASK_SET => response::INCORRECT_LUN,
            _ => response::FUNCTION_REJECTED,
        };
        tracing::debug!(target: TARGET, scsi_target = target, lun, subtype, response = r, "task management function");
        r
    }

    /// Serves one command request; returns the used length.
    /// Serves one command from its buffers (the general path and the fast path alike).
    fn serve_command(
        &self,
        q: &mut CmdQueue,
        mem: &Mem,
        segs: &Segments,
        fault: Option<Fault>,
    ) -> u32 {
        // Bounded by the type invariant; the values are read once for this request.
        let cdb_size = self.cdb_size.load(Ordering::Relaxed) as usize;
        let sense_size = self.sense_size.load(Ordering::Relaxed) as usize;
        let resp_len = wire::CMD_RESP_LEN + sense_size;
        if segs.writable_len() < resp_len {
            tracing::debug!(target: TARGET, writable = segs.writable_len(), "request without room for the response");
            return 0;
        }
        let resp = |r: CmdResp| write_cmd_resp(segs, mem, r, sense_size);
        let hdr_len = wire::CMD_HEADER_LEN + cdb_size;
        if q.hdr.len() < hdr_len {
            q.hdr.resize(hdr_len, 0);
        }
        let hdr = &mut q.hdr[..hdr_len];
        if !segs.read_at(mem, 0, hdr) {
            tracing::debug!(target: TARGET, "request header too short");
            return resp(CmdResp::only(response::FAILURE));
        }
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&hdr[..8]);
        let cdb = &hdr[wire::CMD_HEADER_LEN..];
        let Some((target, lun)) = parse_virtio_lun(&lun) else {
            return resp(CmdResp::only(response::BAD_TARGET));
        };
        let mut slot = self.target(target);
        let Some(t) = slot.as_mut() else {
            return resp(CmdResp::only(response::BAD_TARGET));
        };
        let out_len = segs.readable_len() - hdr_len;
        let in_len = segs.writable_len() - resp_len;
        let (out_take, in_take) = (out_len.min(self.max_data), in_len.min(self.max_data));
        if q.data_out.len() < out_take {
            q.data_out.resize(out_take, 0);
        }
        if q.data_in.len() < in_take {
            q.data_in.resize(in_take, 0);
        }
        let out = &mut q.data_out[..out_take];
        let din = &mut q.data_in[..in_take];
        if !segs.read_at(mem, hdr_len, out) {
            return resp(CmdResp::only(response::FAILURE));
        }
        if let Some(Fault::ScsiResponse(r)) = fault {
            drop(slot);
            return resp(CmdResp::only(r));
        }
        // A READ's data goes from the disk straight into guest memory (from its own
        // memory with direct access, else from its buffer: one copy).
        let mut sink = Delivered {
            inner: segs.dest_at(mem, resp_len),
            used: false,
            failed: false,
        };
        let outcome = match fault {
            Some(Fault::ScsiSense { key, asc, ascq }) => {
                CmdOutcome::check_condition(Sense::new(SenseKey::new(key), asc, ascq))
            }
            Some(Fault::ScsiStatus(status)) => CmdOutcome {
                status: crate::scsi::Status(status),
                sense: None,
                data_in_len: 0,
                overrun: false,
            },
            _ => t.execute_to(lun, cdb, out, din, &mut sink),
        };
        drop(slot);
        if sink.failed {
            // The driver's Data-In buffers are not all in its memory.
            return resp(CmdResp::only(response::FAILURE));
        }
        let delivered = sink.used;
        // The CorruptRead fault flips the last byte of a READ's data.
        if delivered
            && outcome.is_good()
            && outcome.data_in_len > 0
            && self.faults.take_corrupt_read()
            && segs.flip_writable(mem, resp_len + outcome.data_in_len - 1)
        {
            tracing::debug!(target: TARGET, "CorruptRead fault: last byte flipped");
        }
        let n_in = if delivered {
            outcome.data_in_len
        } else {
            let written = din.get(..outcome.data_in_len).unwrap_or_default();
            if !segs.write_at(mem, resp_len, written) {
                return resp(CmdResp::only(response::FAILURE));
            }
            written.len()
        };
        let residual = if in_len > 0 {
            in_len.saturating_sub(n_in)
        } else if outcome.is_good() {
            0
        } else {
            out_len
        };
        let r = CmdResp {
            response: if outcome.overrun {
                response::OVERRUN
            } else {
                response::OK
            },
            status: outcome.status.0,
            residual: to_u32(residual),
            sense: outcome.sense.map(|s| s.fixed_format()),
        };
        tracing::trace!(target: TARGET, scsi_target = target, lun, opcode = cdb.first().copied(), status = r.status, response = r.response, "command done");
        resp(r).saturating_add(to_u32(n_in))
    }
}

/// A READ's destination that records whether the READ used it (other commands fill
/// the Data-In scratch buffer instead) and whether a piece failed to reach guest memory.
struct Delivered<'a> {
    inner: crate::fast::Cursor<'a>,
    used: bool,
    failed: bool,
}

impl Delivered<'_> {
    fn record(&mut self, ok: bool) -> bool {
        self.used = true;
        self.failed |= !ok;
        ok
    }
}

impl vbdev_bdev::ReadDest for Delivered<'_> {
    fn put(&mut self, data: &[u8]) -> bool {
        let ok = self.inner.put(data);
        self.record(ok)
    }

    fn zeros(&mut self, n: usize) -> bool {
        let ok = self.inner.zeros(n);
        self.record(ok)
    }

    fn skip(&mut self, n: usize) -> bool {
        let ok = self.inner.skip(n);
        self.record(ok)
    }
}

/// Writes `virtio_scsi_resp_cmd` with `sense_size` sense bytes (the sense data, cut to
/// fit, then zeros) at the start of the writable buffers; returns the bytes written, or
/// 0 when they cannot be written.
fn write_cmd_resp(segs: &Segments, mem: &Mem, resp: CmdResp, sense_size: usize) -> u32 {
    let sense: &[u8] = match &resp.sense {
        Some(s) => &s[..s.len().min(sense_size)],
        None => &[],
    };
    // Header and sense area in one write when they fit a small buffer (the default
    // sense_size of 96 does); a larger sense area gets its zeros in more writes.
    const SMALL: usize = 256;
    let mut buf = [0u8; wire::CMD_RESP_LEN + SMALL];
    let len = wire::CMD_RESP_LEN + sense_size;
    buf[0..4].copy_from_slice(&to_u32(sense.len()).to_le_bytes());
    buf[4..8].copy_from_slice(&resp.residual.to_le_bytes());
    // 8..10 status_qualifier: 0.
    buf[10] = resp.status;
    buf[11] = resp.response;
    // sense.len() <= FIXED_SENSE_LEN < SMALL.
    buf[wire::CMD_RESP_LEN..wire::CMD_RESP_LEN + sense.len()].copy_from_slice(sense);
    let first = len.min(buf.len());
    if !segs.write_at(mem, 0, &buf[..first]) {
        return 0;
    }
    let zeros = [0u8; SMALL];
    let mut at = first;
    while at < len {
        let n = (len - at).min(SMALL);
        if !segs.write_at(mem, at, &zeros[..n]) {
            return 0;
        }
        at += n;
    }
    to_u32(len)
}

impl Device for ScsiDevice {
    fn num_queues(&self) -> u16 {
        FIRST_REQUEST_QUEUE + self.num_queues
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        features::INOUT
            | features::HOTPLUG
            | features::CHANGE
            | vfeat::RING_EVENT_IDX
            | vfeat::RING_INDIRECT_DESC
            | vfeat::VERSION_1
    }

    fn config(&self) -> Vec<u8> {
        self.config_space().to_vec()
    }

    fn set_config(&self, offset: u32, data: &[u8]) -> std::io::Result<()> {
        // §5.6.4: the driver may write sense_size and cdb_size, nothing else.
        let refuse = |why: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                why.to_owned(),
            ))
        };
        let start = offset as usize;
        let Some(end) = start.checked_add(data.len()) else {
            return refuse("range overflows");
        };
        let (lo, hi) = (config::SENSE_SIZE, config::CDB_SIZE + 4);
        if data.is_empty() || start < lo || end > hi {
            return refuse("only sense_size and cdb_size (offsets 20 to 27) are writable");
        }
        let mut f = [0u8; 8];
        f[..4].copy_from_slice(&self.sense_size.load(Ordering::Relaxed).to_le_bytes());
        f[4..].copy_from_slice(&self.cdb_size.load(Ordering::Relaxed).to_le_bytes());
        f[start - lo..end - lo].copy_from_slice(data);
        let sense = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
        let cdb = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
        if sense > wire::SENSE_SIZE_MAX || cdb > wire::CDB_SIZE_MAX {
            tracing::warn!(target: TARGET, sense_size = sense, cdb_size = cdb, "driver wrote sense_size or cdb_size out of range");
            return refuse("sense_size above 65535 or cdb_size above 255");
        }
        self.sense_size.store(sense, Ordering::Relaxed);
        self.cdb_size.store(cdb, Ordering::Relaxed);
        tracing::debug!(target: TARGET, sense_size = sense, cdb_size = cdb, "config written");
        Ok(())
    }

    fn reset(&self) {
        self.sense_size
            .store(wire::SENSE_SIZE_DEFAULT, Ordering::Relaxed);
        self.cdb_size
            .store(wire::CDB_SIZE_DEFAULT, Ordering::Relaxed);
        self.negotiated.store(0, Ordering::Release);
        *lock(&self.events) = Events::default();
    }

    fn set_features(&self, features: u64) {
        self.negotiated.store(features, Ordering::Release);
    }

    fn is_request_queue(&self, queue: u16) -> bool {
        queue >= FIRST_REQUEST_QUEUE
    }

    fn queue_ready(&self, queue: u16, completer: Completer) {
        if queue == EVENT_QUEUE {
            lock(&self.events).completer = Some(completer);
        }
    }

    fn queue_stopped(&self, queue: u16) -> u16 {
        if queue != EVENT_QUEUE {
            return 0;
        }
        let mut e = lock(&self.events);
        // The kept buffers are the last ones taken off the ring: one is taken only while
        // none is missed, or it is filled at once (`serve_event_buffer`), and they are
        // used oldest first.
        let n = e.buffers.len();
        e.buffers.clear();
        if n > 0 {
            tracing::debug!(target: TARGET, buffers = n, "event queue stopped; buffers given back");
        }
        // At most the ring's size (a power of two up to 32768) are kept: each is a
        // distinct chain of the ring, taken before it was completed.
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    fn serve(&self, queue: u16, mem: &Mem, chain: Chain, fault: Option<Fault>) -> Option<u32> {
        match queue {
            CONTROL_QUEUE => Some(self.serve_control(mem, chain)),
            EVENT_QUEUE => self.serve_event_buffer(mem, chain),
            q => {
                // The server only asks for queues below num_queues().
                let slot = self.queues.get(usize::from(q - FIRST_REQUEST_QUEUE))?;
                // Uncontended: only this queue's worker serves it.
                let mut cq = lock(slot);
                let mut segs = std::mem::take(&mut cq.segs);
                let len = if segs.fill_from_chain(mem, chain) {
                    self.serve_command(&mut cq, mem, &segs, fault)
                } else {
                    tracing::debug!(target: TARGET, "request outside the shared memory");
                    0
                };
                cq.segs = segs;
                Some(len)
            }
        }
    }

    fn has_fast_path(&self) -> bool {
        true
    }

    fn serve_fast(&self, queue: u16, mem: &Mem, requests: &mut dyn Requests) {
        // Only request queues poll; the server asks for none beyond num_queues.
        let Some(slot) = queue
            .checked_sub(FIRST_REQUEST_QUEUE)
            .and_then(|i| self.queues.get(usize::from(i)))
        else {
            return;
        };
        // Once per batch (see `Device::serve_fast`).
        let mut cq = lock(slot);
        while let Some(segs) = requests.next() {
            let len = self.serve_command(&mut cq, mem, segs, None);
            requests.complete(len);
        }
    }
}
