//! Serving vhost-user targets: a listening socket per target, one frontend at a time,
//! event-driven (a worker thread per queue) or polling (a few threads polling every
//! request queue).
//!
//! # Serving model
//! [`serve`] binds the socket and starts one server thread for the target. For each
//! frontend it builds a fresh rust-vmm [`VhostUserDaemon`] (new rings, new memory table,
//! new worker threads), accepts the connection and serves it until it ends: the frontend
//! closes it or dies, a fault closes it, or the target stops. Then it stops the workers,
//! resets the [`Device`] and accepts the next frontend. Only the device (its disk, its
//! settings) and the target's [`Faults`] carry over from one frontend to the next.
//!
//! The daemon's worker threads (`vring_worker`) serve the queues, each request
//! synchronously, one request at a time per queue:
//! - **event-driven** (default): one worker per queue (queue `i` on thread `i`) sleeps
//!   in `epoll` on the queue's kick eventfd. On a kick it turns driver notifications
//!   off, serves everything available, turns them back on and looks once more, so a
//!   request that raced the switch is not missed (virtio 1.2 §2.7.10). An idle target
//!   uses no CPU.
//! - **polling** (`poll: true`): the request queues are shared out among
//!   [`ServeOptions::poll_threads`] workers (default 1; queue `i` of the request queues
//!   on poller `i % poll_threads`, through vhost-user-backend's `queues_per_thread`), as
//!   an SPDK reactor polls every queue of its controllers: more queues than cores cost
//!   no more cores. A poller visits its queues in turn and serves at most 32 requests of
//!   one before it looks at the next, so no queue starves another. A ring it finds
//!   enabled and started (first seen, or (re)started or (re)enabled since its last
//!   look: `Vring::epoch`) gets driver notifications turned off; a ring
//!   disabled or stopped (`SET_VRING_ENABLE 0`, `GET_VRING_BASE`) is skipped while the
//!   others go on. When none of its rings is running, or the frontend goes, the poller
//!   returns to `epoll`, and the kick or enable of one of its rings brings it back. One
//!   busy core per poller: for benchmarks. A device with a fast path
//!   ([`Device::serve_fast`]: blk and scsi) is served through [`crate::fast`] while no
//!   fault is armed: the ring is read directly, up to 32 requests per batch handed to
//!   the device in one call, one `used.idx` store and at most one notification per
//!   batch; a request the fast path does not take is served the general way below,
//!   then the fast path goes on.
//!
//! Completions are signalled on the call eventfd when the driver asked for them
//! (`EVENT_IDX` / `NO_INTERRUPT`, through virtio-queue's `needs_notification`). A ring
//! may run before its call eventfd arrives (QEMU 7.2 enables vhost-user-scsi rings
//! before it sends `SET_VRING_CALL`): a notification due meanwhile is signalled on the
//! call eventfd the frontend sets next (`server/vring.rs`).
//!
//! A device may have queues that are not request queues ([`Device::is_request_queue`],
//! e.g. virtio-scsi's control and event queues): they are always event-driven and
//! faults never apply to them. A device may keep a chain ([`Device::serve`] returns
//! `None`) and complete it later from any thread with the queue's [`Completer`], which
//! it is given ([`Device::queue_ready`]) before the queue's first chain of each
//! connection is served. When the frontend stops the queue (`GET_VRING_BASE`, e.g. a
//! guest resetting the device, which then sets up new rings on the same connection),
//! the device lets go of the chains it kept ([`Device::queue_stopped`]) and the server
//! moves the ring's `next_avail` back over them, so the base it reports is where a
//! restarted ring picks them up again.
//!
//! # Faults
//! The server asks [`Faults::decide`] once per request and applies the transport-level
//! faults itself: `Delay` (the request is served once the delay is over, and the
//! requests behind it on its queue after it: the delay holds up that queue only. An
//! event-driven worker sleeps; a poller sets the request aside and serves its other
//! queues meanwhile; a `GET_VRING_BASE` of the queue waits for the delay and the
//! request, as for any request in flight), `StopAnswering` (the chain is taken off the avail ring and
//! never completed), `CloseAfter` (the socket is shut down right after the request
//! completes: the frontend sees a hang-up and the queues stop serving) and `BadUsed`
//! (a wrong used entry, written straight into the used ring when virtio-queue refuses
//! the value). Device-level faults (`BlkStatus`, `ScsiSense`) go to [`Device::serve`].
//! `CorruptRead` is not drawn per request: the devices take it from their [`Faults`]
//! when they return a read's data ([`Faults::take_corrupt_read`]).
//! Only request queues consult the faults.
//!
//! # Limits
//! - One frontend at a time; a second one waits in the listen backlog (its `connect`
//!   succeeds, its first message gets no answer) until the first is gone.
//! - At most 64 queues (vhost-user-backend maps queues to threads with a 64-bit mask).
//! - One request at a time per queue: a slow request holds up the requests behind it
//!   on the same queue. Event-driven, never those of other queues; polling, a slow
//!   bdev request also holds up the other queues of its poller (a `Delay` fault does
//!   not): give each queue its own poller (`poll_threads` = request queues) when that
//!   matters more than cores.
//! - A request a `Delay` fault set aside on a polling queue is dropped, not served,
//!   when the connection ends first.
//! - No `INFLIGHT_SHMFD`: requests in flight when a frontend goes are dropped; a new
//!   frontend starts with fresh rings and must resubmit its own.
//! - Split rings only; no dirty-page logging (migration), no postcopy.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use vhost::vhost_user::Listener;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT, Writer};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::fast::{LastChain, Requests, Ring, RingAddrs, Segments};
use crate::fault::{BadUsed, Decision, Fault, Faults};

mod session;
mod vring;

pub use session::config_reply;
use session::*;
use vring::Vring;

const TARGET: &str = "vbdev::target";

/// Requests a request queue serves per batch (see `Session::serve_available`).
const BATCH: usize = 32;

/// On the fast path, when the driver has nothing queued behind a batch, `used.idx` is
/// stored after every this many requests of it (see `Session::serve_fast`).
const EARLY_USED: u16 = 8;

/// The frontend's memory as the target maps it.
pub type Mem = GuestMemoryMmap<()>;

/// A descriptor chain taken off a request queue.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<Mem>>;

/// Most request queues a target can have.
pub const MAX_QUEUES: u16 = 64;

/// Largest split virtqueue (virtio 1.2 §2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Result with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Errors of starting a target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A target option is out of range.
    #[error("invalid target option {option}: {why}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The socket path is taken by something that is not a socket.
    #[error("{} exists and is not a socket", path.display())]
    PathInUse {
        /// The path.
        path: PathBuf,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {}", path.display())]
    Listen {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A SCSI LUN could not be added, removed or resized.
    #[error("scsi target {target}")]
    Lun {
        /// The SCSI target id.
        target: u8,
        /// Cause.
        #[source]
        source: crate::scsi::LunError,
    },
    /// Opening the channels to the served bdev failed.
    #[error("cannot open a channel on bdev {bdev}")]
    Bdev {
        /// The bdev name.
        bdev: String,
        /// Cause.
        #[source]
        source: vbdev_bdev::Error,
    },
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A device type the server can run: what vhost-user needs to know about it, and how it
/// serves one request.
///
/// One value serves every frontend of a target, one after the other; [`Device::reset`]
/// runs before and after each. [`Device::serve`] and [`Device::serve_fast`] are called
/// for queue `q` one request (or batch) at a time, from the thread that serves the
/// queue (a polling thread serves several), or, for a request a `Delay` fault set aside
/// on a polling queue, from the thread that stops the ring.
pub trait Device: Send + Sync + 'static {
    /// Virtqueues, request queues and others (1 to [`MAX_QUEUES`]).
    fn num_queues(&self) -> u16;

    /// Largest queue size a frontend may set up (a power of two up to [`MAX_QUEUE_SIZE`]).
    fn max_queue_size(&self) -> u16;

    /// Virtio feature bits offered: device bits plus `VERSION_1` and the ring features
    /// the device handles. The server adds `VHOST_USER_F_PROTOCOL_FEATURES`.
    fn features(&self) -> u64;

    /// The whole device configuration space, as the device type defines it. The server
    /// answers `GET_CONFIG` from it ([`config_reply`]).
    fn config(&self) -> Vec<u8>;

    /// Writes the configuration space (`SET_CONFIG`).
    ///
    /// # Errors
    /// When the range is not writable; the default refuses everything.
    fn set_config(&self, offset: u32, data: &[u8]) -> io::Result<()> {
        let _ = (offset, data);
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "configuration space is read-only",
        ))
    }

    /// Back to the power-on state, before a new frontend is served and after one is
    /// gone. Drops any [`Completer`] and kept chain of the old connection.
    fn reset(&self) {}

    /// The feature bits the driver accepted (`SET_FEATURES`), transport bits included.
    fn set_features(&self, features: u64) {
        let _ = features;
    }

    /// Whether `queue` carries requests (the default: all do). Faults apply, and
    /// polling spins, only on request queues; the others are served on kicks.
    fn is_request_queue(&self, queue: u16) -> bool {
        let _ = queue;
        true
    }

    /// Gives the device `queue`'s [`Completer`] for this connection, before the
    /// queue's first chain is served. Default: dropped (the device keeps no chains).
    fn queue_ready(&self, queue: u16, completer: Completer) {
        let _ = (queue, completer);
    }

    /// Serves one request of queue `queue`: reads it from `chain`, does it, writes the
    /// answer into the chain's writable buffers and returns the used length (bytes
    /// written, status included), which the server puts on the used ring. `None` keeps
    /// the chain off the used ring: the device completes it later with the queue's
    /// [`Completer`] (a virtio-scsi event queue holds its buffers until an event), or
    /// never.
    ///
    /// `fault` is the fault [`Faults::decide`] chose for this request; the device applies
    /// the ones that concern it (`BlkStatus`, `ScsiSense`) and ignores the rest, which
    /// the server handles.
    fn serve(&self, queue: u16, mem: &Mem, chain: Chain, fault: Option<Fault>) -> Option<u32>;

    /// The frontend stopped `queue` (`GET_VRING_BASE`: a device reset, or a stop before
    /// the ring is handed over). The device lets go of every chain of `queue` it kept
    /// ([`Device::serve`] returned `None`) and returns how many; those must be the last
    /// chains taken off the queue's avail ring. The server gives them back to the ring:
    /// the base it reports points at the first of them, so a frontend that restarts the
    /// ring from there hands them out again, and one that resets the device forgets
    /// them with the old ring (a kept chain completed on the new ring would write into
    /// freed memory and name a descriptor the driver never made). Default: 0.
    fn queue_stopped(&self, queue: u16) -> u16 {
        let _ = queue;
        0
    }

    /// Whether the device has a fast path ([`Device::serve_fast`]); polling request
    /// queues then use it while no fault is armed. Default: no.
    fn has_fast_path(&self) -> bool {
        false
    }

    /// Serves a batch of polling request queue `queue`'s requests from their resolved
    /// buffers ([`crate::fast`]): takes each with [`Requests::next`] and completes it with
    /// [`Requests::complete`] and its used length, as [`Device::serve`] returns it.
    /// Returning with a request taken and not completed declines it: the server then
    /// serves it through [`Device::serve`]. A device declines before it has done anything
    /// with the request. One call per batch (up to 32 requests), so per-queue state is
    /// locked once per batch: an atomic read-modify-write per request would wait, each
    /// time, for the cache misses on the driver's ring before it. Default: declines the
    /// first request.
    fn serve_fast(&self, queue: u16, mem: &Mem, requests: &mut dyn Requests) {
        let _ = (queue, mem, requests.next());
    }
}

/// Where and how to serve a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The Unix socket path to listen on. A stale socket there is replaced.
    pub socket: PathBuf,
    /// Busy-poll the request queues instead of waiting for kicks.
    pub poll: bool,
    /// Polling threads: the request queues are shared out among them, queue `i` of the
    /// request queues to thread `i % poll_threads`, and each thread polls all of its
    /// queues in turn. From 1 to the number of request queues; ignored without `poll`.
    pub poll_threads: u16,
    /// Behave like another target where initiators notice ([`Quirks`]).
    pub quirks: Quirks,
}

/// Ways in which other vhost-user targets differ from ours, which an initiator must
/// cope with: the target offers less, or answers slowly. For regression tests of
/// interoperability (a stand-in, never the proof: the proof is a run against the real
/// target). Default: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Offer no `VHOST_USER_PROTOCOL_F_CONFIG`: the configuration space cannot be read
    /// (SPDK's vhost-scsi, every version).
    pub no_config: bool,
    /// Offer no `VHOST_USER_PROTOCOL_F_MQ`: the frontend cannot ask how many queues
    /// there are (`GET_QUEUE_NUM`).
    pub no_mq: bool,
    /// Offer no `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS`: memory can only be shared
    /// with `SET_MEM_TABLE` (DPDK's vhost library, under SPDK's targets).
    pub no_mem_slots: bool,
    /// Offer no `VIRTIO_RING_F_EVENT_IDX`: notifications are governed by the ring flags
    /// alone (SPDK's targets).
    pub no_event_idx: bool,
    /// Hold each memory-table reply (`SET_MEM_TABLE`, `ADD_MEM_REG`) this many
    /// microseconds per MiB of memory in the table. SPDK's targets map every region
    /// with `MAP_POPULATE` and look each 4 KiB page up in `/proc/self/pagemap`: about
    /// 5 ms per MiB on a 2-core VM.
    pub mem_table_us_per_mib: u32,
    /// Answer a completed LOGICAL UNIT RESET or I_T NEXUS RESET with
    /// `VIRTIO_SCSI_S_FUNCTION_SUCCEEDED` instead of FUNCTION COMPLETE (Linux's
    /// vhost-scsi does).
    pub tmf_succeeded: bool,
}

impl Quirks {
    /// SPDK's vhost-scsi target (v24.01 to v26.05, on DPDK's vhost library): no
    /// CONFIG, no memory slots, no EVENT_IDX, a slow memory table.
    pub fn spdk_scsi() -> Self {
        Self {
            no_config: true,
            ..Self::spdk_blk()
        }
    }

    /// SPDK's vhost-blk target: as [`Quirks::spdk_scsi`], with CONFIG.
    pub fn spdk_blk() -> Self {
        Self {
            no_config: false,
            no_mq: false,
            no_mem_slots: true,
            no_event_idx: true,
            mem_table_us_per_mib: 5000,
            tmf_succeeded: false,
        }
    }
}

/// Completes chains a device kept ([`Device::serve`] returned `None`), from any thread:
/// writes the answer, puts the chain on the used ring and signals the driver if it
/// asked for it. Valid for one connection: once it is closing, or the ring is stopped
/// or disabled, nothing more is completed.
#[derive(Clone)]
pub struct Completer {
    queue: u16,
    vring: Vring,
    mem: GuestMemoryAtomic<Mem>,
    conn: Arc<Conn>,
}

impl std::fmt::Debug for Completer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completer")
            .field("queue", &self.queue)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Completer {
    /// The queue this completer completes chains of.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Whether chains can still be completed: the connection is open and the ring is
    /// ready and enabled.
    pub fn is_live(&self) -> bool {
        !self.conn.is_closing() && self.vring.is_running()
    }

    /// Writes `data` at the start of `chain`'s writable buffers, through the current
    /// memory map, then puts the chain on the used ring with the bytes written as its
    /// length and signals the driver when it asked for it (virtio 1.2 §2.7.8, §2.7.10).
    /// Returns whether the chain was completed; `false` (chain dropped) when the
    /// completer is no longer live, the writable buffers are outside the driver's
    /// memory or shorter than `data`.
    pub fn complete(&self, chain: Chain, data: &[u8]) -> bool {
        use std::io::Write;
        let head = chain.head_index();
        let mem = self.mem.memory();
        let mut w = match Writer::new(&*mem, chain) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(target: TARGET, queue = self.queue, head, error = %e, "kept chain outside the shared memory");
                return false;
            }
        };
        if w.available_bytes() < data.len() || w.write_all(data).is_err() {
            tracing::debug!(target: TARGET, queue = self.queue, head, len = data.len(), "kept chain too short");
            return false;
        }
        // Fits: data.len() <= available_bytes(), which is at most a chain's u32 lengths
        // summed by virtio-queue into a usize checked against u32.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        {
            // Under the ring's write lock, so a GET_VRING_BASE (which marks the queue not
            // ready under the same lock) is either before this check or after the entry.
            let mut state = self.vring.get_mut();
            if self.conn.is_closing() || !state.is_enabled() || !state.get_queue().ready() {
                return false;
            }
            if let Err(e) = state.get_queue_mut().add_used(&*mem, head, len) {
                tracing::warn!(target: TARGET, queue = self.queue, head, error = %e, "cannot complete kept chain");
                return false;
            }
        }
        match self.vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = self.vring.signal_used_queue() {
                    tracing::warn!(target: TARGET, queue = self.queue, error = %e, "cannot signal the used ring");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(target: TARGET, queue = self.queue, error = %e, "cannot read used_event");
            }
        }
        tracing::trace!(target: TARGET, queue = self.queue, head, len, "kept chain completed");
        true
    }
}

/// A running target. Stopping it (or dropping it) closes the current frontend's
/// connection, stops every thread of the target and removes the socket file.
#[derive(Debug)]
pub struct TargetHandle {
    /// The socket the target listens on.
    pub socket: PathBuf,
    /// The target's fault-injection switchboard (nothing armed at start).
    pub faults: Arc<Faults>,
    ctl: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl TargetHandle {
    /// Stops serving: the current frontend (if any) sees a hang-up, the threads end and
    /// the socket file is removed. Waits for the requests being served to finish (a
    /// `Delay` fault holds an event-driven target up that long; a polling one drops the
    /// delayed request). Idempotent.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.ctl.stop.store(true, Ordering::SeqCst);
        wake(&self.ctl.wake);
        if let Some(conn) = lock(&self.ctl.current).as_ref() {
            conn.close("target stopped");
        }
        if thread.join().is_err() {
            tracing::error!(target: TARGET, socket = %self.socket.display(), "server thread panicked");
        }
        remove_socket(&self.socket);
        tracing::info!(target: TARGET, socket = %self.socket.display(), "target stopped");
    }

    /// Closes the current frontend's connection, as if the target had crashed; the
    /// target then waits for the next frontend. Does nothing when none is connected.
    pub fn disconnect(&self) {
        if let Some(conn) = lock(&self.ctl.current).as_ref() {
            conn.close("disconnect requested");
        }
    }

    /// Whether a frontend is connected now.
    pub fn is_connected(&self) -> bool {
        lock(&self.ctl.current).is_some()
    }

    /// Frontends accepted so far.
    pub fn connections(&self) -> u64 {
        self.ctl.connections.load(Ordering::Relaxed)
    }
}

impl Drop for TargetHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the handle shares with the server thread.
#[derive(Debug)]
struct Control {
    stop: AtomicBool,
    /// Wakes the server thread out of its wait for a connection.
    wake: OwnedFd,
    /// The connection being served.
    current: Mutex<Option<Arc<Conn>>>,
    connections: AtomicU64,
}

/// One frontend connection: lets any thread close it.
#[derive(Default)]
struct Conn {
    /// Set once the connection is being closed: the queues stop serving.
    closing: AtomicBool,
    slot: Mutex<ConnSlot>,
}

#[derive(Default)]
struct ConnSlot {
    /// Known once the daemon has accepted the connection.
    shutdown: Option<ShutdownHandle>,
    /// A close was asked for before the handle was known.
    close_requested: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("closing", &self.closing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Conn {
    fn attach(&self, shutdown: Option<ShutdownHandle>) {
        let mut s = lock(&self.slot);
        if s.close_requested {
            if let Some(h) = &shutdown {
                h.shutdown();
            }
        }
        s.shutdown = shutdown;
    }

    /// Shuts the socket down: the frontend sees a hang-up, the daemon's request loop ends.
    fn close(&self, why: &'static str) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            tracing::info!(target: TARGET, why, "closing the frontend connection");
        }
        let mut s = lock(&self.slot);
        s.close_requested = true;
        if let Some(h) = &s.shutdown {
            h.shutdown();
        }
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wake(fd: &OwnedFd) {
    // Only fails when the counter would overflow, and then the reader wakes anyway.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

fn remove_socket(path: &std::path::Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Starts serving `device` on `opts.socket` in a background thread.
///
/// # Errors
/// [`Error::InvalidOption`] when the device's queue count or size is out of range,
/// [`Error::PathInUse`] when the path is a file that is not a socket, [`Error::Listen`]
/// when binding fails and [`Error::Io`] when a thread or eventfd cannot be created.
pub fn serve<D: Device>(
    device: Arc<D>,
    opts: ServeOptions,
    faults: Arc<Faults>,
) -> Result<TargetHandle> {
    let n = device.num_queues();
    if n == 0 || n > MAX_QUEUES {
        return Err(Error::InvalidOption {
            option: "num_queues",
            why: format!("{n} is not from 1 to {MAX_QUEUES}"),
        });
    }
    let size = device.max_queue_size();
    if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
        return Err(Error::InvalidOption {
            option: "queue_size",
            why: format!("{size} is not a power of two from 1 to {MAX_QUEUE_SIZE}"),
        });
    }
    if opts.poll {
        let requests = (0..n).filter(|&q| device.is_request_queue(q)).count();
        let t = usize::from(opts.poll_threads);
        if t == 0 || t > requests.max(1) {
            return Err(Error::InvalidOption {
                option: "poll_threads",
                why: format!(
                    "{t} is not from 1 to {} (the request queues)",
                    requests.max(1)
                ),
            });
        }
    }
    let path = opts.socket.clone();
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => remove_socket(&path),
        Ok(_) => return Err(Error::PathInUse { path }),
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path).map_err(|source| Error::Listen {
        path: path.clone(),
        source,
    })?;
    let started = start_thread(device, &opts, &path, listener, Arc::clone(&faults));
    let (ctl, thread) = match started {
        Ok(v) => v,
        Err(e) => {
            remove_socket(&path);
            return Err(e);
        }
    };
    tracing::info!(target: TARGET, socket = %path.display(), queues = n, poll = opts.poll, poll_threads = opts.poll_threads, "target listening");
    Ok(TargetHandle {
        socket: path,
        faults,
        ctl,
        thread: Some(thread),
    })
}

/// Starts the server thread on a bound listener.
fn start_thread<D: Device>(
    device: Arc<D>,
    opts: &ServeOptions,
    path: &std::path::Path,
    listener: UnixListener,
    faults: Arc<Faults>,
) -> Result<(Arc<Control>, JoinHandle<()>)> {
    let io = |op| move |source| Error::Io { op, source };
    let watch = listener.try_clone().map_err(io("dup listening socket"))?;
    let wake_fd = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
    )
    .map_err(|e| Error::Io {
        op: "eventfd",
        source: e.into(),
    })?;
    let ctl = Arc::new(Control {
        stop: AtomicBool::new(false),
        wake: wake_fd,
        current: Mutex::new(None),
        connections: AtomicU64::new(0),
    });
    let server = Server {
        device,
        faults,
        ctl: Arc::clone(&ctl),
        poll: opts.poll,
        poll_threads: opts.poll_threads,
        quirks: opts.quirks,
        path: path.to_owned(),
    };
    let thread = std::thread::Builder::new()
        .name("vbdev-target".into())
        .spawn(move || server.run(Listener::from(listener), watch))
        .map_err(io("spawn server thread"))?;
    Ok((ctl, thread))
}

/// The server thread's state.
struct Server<D> {
    device: Arc<D>,
    faults: Arc<Faults>,
    ctl: Arc<Control>,
    poll: bool,
    poll_threads: u16,
    quirks: Quirks,
    path: PathBuf,
}

impl<D: Device> Server<D> {
    fn run(self, mut listener: Listener, watch: UnixListener) {
        while self.wait_for_frontend(&watch) {
            self.serve_one(&mut listener, &watch);
        }
        // Dropping `listener` (made from a plain UnixListener) leaves the file: the
        // handle removes it once this thread has ended.
    }

    /// Waits until a frontend is waiting to be accepted (true) or the target stops.
    fn wait_for_frontend(&self, watch: &UnixListener) -> bool {
        use rustix::event::{PollFd, PollFlags};
        loop {
            if self.ctl.stop.load(Ordering::SeqCst) {
                return false;
            }
            let mut fds = [
                PollFd::new(watch, PollFlags::IN),
                PollFd::new(&self.ctl.wake, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::error!(target: TARGET, socket = %self.path.display(), error = %e, "poll failed; target stops serving");
                    return false;
                }
            }
            let ready = fds[0].revents().contains(PollFlags::IN);
            if fds[1].revents().contains(PollFlags::IN) {
                let _ = rustix::io::read(&self.ctl.wake, &mut [0u8; 8]);
            }
            if ready && !self.ctl.stop.load(Ordering::SeqCst) {
                return true;
            }
        }
    }

    /// Accepts one frontend and serves it until its connection ends.
    fn serve_one(&self, listener: &mut Listener, watch: &UnixListener) {
        self.device.reset();
        let conn = Arc::new(Conn::default());
        {
            let mut current = lock(&self.ctl.current);
            *current = Some(Arc::clone(&conn));
        }
        // `stop` sets its flag before it looks at `current`: either it saw this
        // connection, or the flag is visible here.
        if self.ctl.stop.load(Ordering::SeqCst) {
            conn.close("target stopped");
        }
        let mem = GuestMemoryAtomic::new(Mem::new());
        let session = Arc::new(Session {
            device: Arc::clone(&self.device),
            faults: Arc::clone(&self.faults),
            mem: mem.clone(),
            conn: Arc::clone(&conn),
            poll: self.poll,
            quirks: self.quirks,
            threads: worker_queues(&*self.device, self.poll, self.poll_threads),
            busy: (0..self.device.num_queues())
                .map(|_| Mutex::new(None))
                .collect(),
            mem_epoch: AtomicU64::new(0),
            rings: (0..self.device.num_queues())
                .map(|_| OnceLock::new())
                .collect(),
        });
        match VhostUserDaemon::new("vbdev-vhost-user".into(), session, mem) {
            Ok(mut daemon) => {
                // The listener is readable, so this accept does not block for long.
                if let Err(e) = daemon.start(listener) {
                    tracing::error!(target: TARGET, socket = %self.path.display(), error = %e, "cannot accept the frontend");
                } else {
                    let n = self.ctl.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(target: TARGET, socket = %self.path.display(), connection = n, "frontend connected");
                    conn.attach(daemon.shutdown_handle());
                    match daemon.wait() {
                        Ok(()) => {
                            tracing::info!(target: TARGET, socket = %self.path.display(), "frontend disconnected");
                        }
                        // A frontend that closes its socket is the normal end.
                        Err(vhost_user_backend::Error::HandleRequest(
                            vhost::vhost_user::Error::Disconnected
                            | vhost::vhost_user::Error::PartialMessage,
                        )) => {
                            tracing::info!(target: TARGET, socket = %self.path.display(), "frontend disconnected");
                        }
                        Err(e) => {
                            tracing::warn!(target: TARGET, socket = %self.path.display(), error = %e, "frontend connection ended with an error");
                        }
                    }
                }
                // Polling workers see this and return to their event loop, which the
                // daemon's drop then stops and joins.
                conn.close("frontend gone");
                drop(daemon);
                // Drops the completers and kept chains of this connection.
                self.device.reset();
            }
            Err(e) => {
                tracing::error!(target: TARGET, socket = %self.path.display(), error = %e, "cannot set up a vhost-user daemon; refusing the frontend");
                // Take the waiting connection off the backlog so it sees a hang-up
                // instead of silence.
                if let Ok((s, _)) = watch.accept() {
                    drop(s);
                }
                conn.close("daemon setup failed");
            }
        }
        *lock(&self.ctl.current) = None;
    }
}

#[cfg(test)]
mod tests;
