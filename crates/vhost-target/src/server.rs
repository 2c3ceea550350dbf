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
use crate::socket_path::{self, Existing, SocketId};

mod vring;

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
    /// Another process listens on the socket path (another target, a daemon's RPC
    /// socket): it is left alone. A stale socket (nobody listening) is replaced.
    #[error("{} is in use: another process listens on it", path.display())]
    SocketInUse {
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
    /// Device and inode of the socket file this target bound: it removes that file,
    /// never one another process put there since.
    ident: Option<SocketId>,
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
        if let Some(id) = self.ident {
            id.remove_if_at(&self.socket);
        }
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
    let listen_error = |source| Error::Listen {
        path: path.clone(),
        source,
    };
    match socket_path::existing(&path).map_err(listen_error)? {
        Existing::Live => return Err(Error::SocketInUse { path }),
        // Its listener is gone.
        Existing::Stale => std::fs::remove_file(&path).map_err(listen_error)?,
        Existing::NotSocket => return Err(Error::PathInUse { path }),
        Existing::Nothing => {}
    }
    let listener = UnixListener::bind(&path).map_err(listen_error)?;
    let ident = SocketId::of(&path);
    let started = start_thread(device, &opts, &path, listener, Arc::clone(&faults));
    let (ctl, thread) = match started {
        Ok(v) => v,
        Err(e) => {
            if let Some(id) = ident {
                id.remove_if_at(&path);
            }
            return Err(e);
        }
    };
    tracing::info!(target: TARGET, socket = %path.display(), queues = n, poll = opts.poll, poll_threads = opts.poll_threads, "target listening");
    Ok(TargetHandle {
        socket: path,
        faults,
        ident,
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

/// One frontend's view of a device: the vhost-user backend the daemon runs.
struct Session<D> {
    device: Arc<D>,
    faults: Arc<Faults>,
    mem: GuestMemoryAtomic<Mem>,
    conn: Arc<Conn>,
    poll: bool,
    quirks: Quirks,
    /// The queues of each worker thread (the daemon's thread `i` serves `threads[i]`),
    /// in increasing order, as [`VhostUserBackend::queues_per_thread`] gives them.
    threads: Box<[Box<[u16]>]>,
    /// Held by the thread serving a queue while it has a request off the ring and not
    /// yet completed; `stop_vring` takes it to wait for that request (vhost-user
    /// `GET_VRING_BASE`: the ring is stopped once it returns). In polling mode it also
    /// holds the request a `Delay` fault holds up ([`Held`]).
    busy: Box<[Mutex<Option<Held>>]>,
    /// Bumped (Release) each time the daemon replaced the memory map, before the
    /// frontend gets its reply: a poller that keeps a map between batches
    /// ([`MapCache`]) loads it again when this moved.
    mem_epoch: AtomicU64,
    /// Each queue's vring, from the queue's first event on; the device was given the
    /// queue's [`Completer`] then.
    rings: Box<[OnceLock<Vring>]>,
}

/// A request a `Delay` fault holds up on a polling queue: the poller serves the queue's
/// other requests after it, and the other queues meanwhile.
struct Held {
    chain: Chain,
    /// The memory map the chain was taken with.
    mem: GuestMemoryLoadGuard<Mem>,
    decision: Decision,
    until: Instant,
}

/// The queues each worker thread serves: one queue per thread, except in polling mode,
/// where the request queues are shared out among `poll_threads` threads (queue `i` of
/// them to thread `i % poll_threads`) after one thread per other queue. Each list is
/// in increasing order.
fn worker_queues<D: Device + ?Sized>(
    device: &D,
    poll: bool,
    poll_threads: u16,
) -> Box<[Box<[u16]>]> {
    let n = device.num_queues();
    if !poll {
        return (0..n).map(|q| Box::from([q])).collect();
    }
    let mut threads: Vec<Vec<u16>> = (0..n)
        .filter(|&q| !device.is_request_queue(q))
        .map(|q| vec![q])
        .collect();
    let first = threads.len();
    let requests: Vec<u16> = (0..n).filter(|&q| device.is_request_queue(q)).collect();
    let k = usize::from(poll_threads).clamp(1, requests.len().max(1));
    threads.resize_with(first + k, Vec::new);
    for (i, q) in requests.into_iter().enumerate() {
        threads[first + i % k].push(q);
    }
    threads.retain(|t| !t.is_empty());
    threads.into_iter().map(Vec::into_boxed_slice).collect()
}

/// One fast-path batch: what [`Device::serve_fast`] takes requests from.
struct Batch<'a, 'm> {
    ring: &'a Ring<'m>,
    mem: &'a Mem,
    segs: &'a mut Segments,
    /// The next avail and used positions.
    na: u16,
    nu: u16,
    /// `nu` at the start of the batch.
    first_used: u16,
    /// Requests the batch may still give.
    left: usize,
    /// `used.idx` is exposed every this many completions.
    every: u16,
    /// The head of the request given and not yet completed.
    taken: Option<u16>,
    /// The batch stopped at a request the fast path does not take.
    general: bool,
    /// The last request taken (see [`Ring::touch`]).
    last: Option<LastChain>,
}

impl Requests for Batch<'_, '_> {
    fn next(&mut self) -> Option<&Segments> {
        if self.taken.is_some() || self.general || self.left == 0 {
            // A device that asks again without completing the last one declines it.
            return None;
        }
        let Some(head) = self.ring.avail_head(self.na) else {
            self.general = true;
            return None;
        };
        if !self.ring.parse(self.mem, head, self.segs) {
            self.general = true;
            return None;
        }
        if let Some(first) = self.segs.readable().first() {
            let n = self.segs.readable().len() + self.segs.writable().len();
            self.last = Some(LastChain {
                head,
                ndesc: u16::try_from(n).unwrap_or(1),
                header: first.addr,
            });
        }
        self.left -= 1;
        self.taken = Some(head);
        Some(self.segs)
    }

    fn complete(&mut self, len: u32) {
        let Some(head) = self.taken.take() else {
            return;
        };
        self.ring.put_used(self.nu, head, len);
        self.na = self.na.wrapping_add(1);
        self.nu = self.nu.wrapping_add(1);
        if self.nu.wrapping_sub(self.first_used) % self.every == 0 {
            self.ring.expose_used(self.nu);
        }
    }
}

/// A request queue as its poller sees it.
struct Polled<'a> {
    q: u16,
    vring: &'a Vring,
    /// The ring's [`Vring::epoch`] when the poller last set it up.
    epoch: Option<u32>,
    /// Where to look for new requests without taking a lock, once the ring was found
    /// empty.
    peek: Option<Peek>,
    /// Turns answered by `peek` alone since the last full look.
    peeks: u32,
    /// The memory map kept between batches.
    map: MapCache,
    /// The last request the fast path took from this ring.
    last: Option<LastChain>,
}

/// The memory map a poller keeps between batches, with the [`Session::mem_epoch`] it
/// was loaded at. Loading the map from its `GuestMemoryAtomic` takes two atomic
/// read-modify-writes (arc-swap's debt slot, taken and paid back), each of which waits
/// for the memory accesses before it; at QD 1 two loads per batch sat on the path of
/// every request. A plain load of the epoch tells whether the kept map is still the
/// current one. Loaded after the Acquire load of `avail.idx`, the epoch is at least the
/// one of the last map change the driver waited for before it published those
/// requests, so a kept map that passes has every region they can name. A replaced map
/// is let go at the ring's next full look: the next batch, or within [`PEEKS`] turns of
/// an idle ring (or when polling stops).
#[derive(Default)]
struct MapCache {
    map: Option<(u64, Arc<Mem>)>,
}

impl MapCache {
    /// The current map: the kept one while `epoch` has not moved since it was loaded.
    fn get(&mut self, mem: &GuestMemoryAtomic<Mem>, epoch: &AtomicU64) -> &Arc<Mem> {
        let now = epoch.load(Ordering::Acquire);
        if !matches!(&self.map, Some((e, _)) if *e == now) {
            self.map = Some((now, mem.memory().into_inner()));
        }
        &self.map.as_ref().expect("just set").1
    }
}

/// A ring found empty: its `avail.idx` and the `next_avail` it had then. While the
/// index has not moved there is nothing to serve, which one load tells, where a full
/// look takes the queue's locks (several atomic read-modify-writes, each of which waits
/// for the memory accesses before it). Only a hint: a full look decides everything.
/// The memory map it holds stays mapped while it does (a frontend may replace the map
/// meanwhile: the peek then reads a ring that no longer runs, and the full look at
/// most [`PEEKS`] turns later sees that).
struct Peek {
    mem: Arc<Mem>,
    avail_idx: GuestAddress,
    next_avail: u16,
}

impl Peek {
    fn idle(&self) -> bool {
        self.mem
            .load::<u16>(self.avail_idx, Ordering::Acquire)
            .is_ok_and(|i| u16::from_le(i) == self.next_avail)
    }
}

/// Turns an idle ring is answered by its [`Peek`] before a full look: a ring disabled or
/// stopped meanwhile is noticed, and an old memory map let go, within that many turns.
const PEEKS: u32 = 1024;

/// Why serving a queue stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The avail ring is empty, or the batch's limit was reached; this many requests
    /// were served.
    Empty(usize),
    /// The fast path stopped at a request it does not take: the general path must serve
    /// the next one.
    General,
    /// The ring is not ready or the connection is closing.
    Stop,
}

impl<D: Device> Session<D> {
    /// Event-driven: serves until the ring is empty with notifications back on.
    fn drain_queue(&self, q: u16, vring: &Vring) {
        loop {
            if let Err(e) = vring.disable_notification() {
                tracing::warn!(target: TARGET, queue = q, error = %e, "cannot disable notifications");
            }
            if self.serve_available(q, vring, usize::MAX) == Flow::Stop {
                return;
            }
            // Notifications back on, then one more look: a request published while they
            // were off would otherwise wait for the next kick (virtio 1.2 §2.7.10).
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(target: TARGET, queue = q, error = %e, "cannot enable notifications");
                    return;
                }
            }
        }
    }

    /// Polling: serves `queues` (their rings are `vrings`) in turn, up to [`BATCH`]
    /// requests of one before the next, until none of them is enabled and started or
    /// the connection closes. A ring (re)started or (re)enabled meanwhile is set up again
    /// ([`Session::poll_one`]); once none is left the thread goes back to its event loop,
    /// which brings it here again when one is. Uses the device's fast path, if it has
    /// one, while no fault is armed.
    fn poll_queues(&self, queues: &[u16], vrings: &[Vring]) {
        let mut polled: Vec<Polled<'_>> = queues
            .iter()
            .zip(vrings)
            .map(|(&q, vring)| Polled {
                q,
                vring,
                epoch: None,
                peek: None,
                peeks: 0,
                map: MapCache::default(),
                last: None,
            })
            .collect();
        tracing::debug!(target: TARGET, ?queues, "polling starts");
        let mut segs = Segments::new();
        let mut idle = 0u32;
        loop {
            if self.conn.is_closing() {
                break;
            }
            let (mut live, mut busy) = (false, false);
            for p in &mut polled {
                match self.poll_one(p, &mut segs) {
                    Flow::Stop => {}
                    Flow::Empty(0) => live = true,
                    Flow::Empty(_) | Flow::General => (live, busy) = (true, true),
                }
            }
            if !live {
                break;
            }
            if busy {
                idle = 0;
            } else {
                idle = idle.wrapping_add(1);
                if idle % 4096 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        tracing::debug!(target: TARGET, ?queues, "polling stops");
    }

    /// One turn of a polled queue: up to [`BATCH`] requests. [`Flow::Stop`] when the
    /// ring is not enabled and started.
    fn poll_one(&self, p: &mut Polled<'_>, segs: &mut Segments) -> Flow {
        let (q, vring) = (p.q, p.vring);
        let epoch = vring.epoch();
        if p.epoch != Some(epoch) {
            // First look, or the ring was (re)started or (re)enabled since the last one.
            p.epoch = Some(epoch);
            p.peek = None;
            if !vring.is_running() {
                return Flow::Stop;
            }
            tracing::debug!(target: TARGET, queue = q, "polling the ring");
            self.ring_seen(q, vring);
            if let Err(e) = vring.disable_notification() {
                tracing::warn!(target: TARGET, queue = q, error = %e, "cannot disable notifications");
            }
        }
        if let Some(peek) = &p.peek {
            if p.peeks < PEEKS && peek.idle() {
                p.peeks += 1;
                return Flow::Empty(0);
            }
            p.peek = None;
            p.peeks = 0;
        }
        if self.device.has_fast_path() {
            match self.serve_fast(q, vring, segs, &mut p.peek, &mut p.map, &mut p.last) {
                // One request the general way; the fast path goes on next turn.
                Flow::General => self.serve_available(q, vring, 1),
                f => f,
            }
        } else {
            if !vring.is_running() {
                return Flow::Stop;
            }
            self.serve_available(q, vring, BATCH)
        }
    }

    /// Records `vring` as queue `q`'s ring and gives the device the queue's
    /// [`Completer`], the first time the queue is seen on this connection.
    fn ring_seen(&self, q: u16, vring: &Vring) {
        if let Some(ring) = self.rings.get(usize::from(q)) {
            if ring.set(vring.clone()).is_ok() {
                let completer = Completer {
                    queue: q,
                    vring: vring.clone(),
                    mem: self.mem.clone(),
                    conn: Arc::clone(&self.conn),
                };
                self.device.queue_ready(q, completer);
            }
        }
    }

    /// The fast path ([`crate::fast`]): serves up to [`BATCH`] requests with
    /// [`Device::serve_fast`], publishes their used entries with one `used.idx` store and
    /// notifies the driver once if it asked. Stops at the first request the fast path
    /// does not take ([`Flow::General`]).
    /// When the ring is empty, `peek` is set to watch it ([`Peek`]).
    fn serve_fast(
        &self,
        q: u16,
        vring: &Vring,
        segs: &mut Segments,
        peek: &mut Option<Peek>,
        map: &mut MapCache,
        last: &mut Option<LastChain>,
    ) -> Flow {
        if self.conn.is_closing() {
            return Flow::Stop;
        }
        // Held until the ring state is written back: `stop_vring` (GET_VRING_BASE) waits
        // for it, so it reads the final next_avail.
        let busy = lock(&self.busy[usize::from(q)]);
        if busy.is_some() {
            // A request held up by a Delay fault: the general path serves it when due,
            // and nothing after it before.
            return Flow::General;
        }
        let (addrs, next_avail, next_used) = {
            let state = vring.get_ref();
            let queue = state.get_queue();
            if !state.is_enabled() || !queue.ready() {
                return Flow::Stop;
            }
            let addrs = RingAddrs {
                desc: queue.desc_table(),
                avail: queue.avail_ring(),
                used: queue.used_ring(),
                size: queue.size(),
                event_idx: queue.event_idx_enabled(),
            };
            (addrs, queue.next_avail(), queue.next_used())
        };
        let mem = map.get(&self.mem, &self.mem_epoch);
        let Some(avail) = Ring::avail_idx_of(mem, &addrs) else {
            return Flow::General;
        };
        let pending = avail.wrapping_sub(next_avail);
        if pending == 0 {
            *peek = addrs.avail.checked_add(2).map(|a| Peek {
                mem: Arc::clone(mem),
                avail_idx: GuestAddress(a),
                next_avail,
            });
            return Flow::Empty(0);
        }
        // Checked after the Acquire load of avail.idx: a fault armed before these requests
        // were published is seen, and the general path serves them one by one with it.
        // Also when the ring is broken: the general path reports it and closes the
        // connection.
        if pending > addrs.size || self.faults.is_armed() {
            return Flow::General;
        }
        // Looked at after the Acquire load of avail.idx: it has every region these
        // requests can name (see `serve_available` and `MapCache`).
        let mem = map.get(&self.mem, &self.mem_epoch);
        let Some(ring) = Ring::new(mem, &addrs) else {
            return Flow::General;
        };
        ring.touch(mem, next_avail, *last);
        // With no backlog behind this batch the driver is waiting for these completions:
        // used.idx moves every EARLY_USED requests, so it can reap and resubmit while the
        // rest of the batch is served (QD32 1.5x). With a backlog, once per batch.
        let every = if usize::from(pending) <= BATCH {
            EARLY_USED
        } else {
            BATCH as u16
        };
        let mut batch = Batch {
            ring: &ring,
            mem,
            segs,
            na: next_avail,
            nu: next_used,
            first_used: next_used,
            left: usize::from(pending).min(BATCH),
            every,
            taken: None,
            general: false,
            last: *last,
        };
        self.device.serve_fast(q, mem, &mut batch);
        let (na, nu) = (batch.na, batch.nu);
        *last = batch.last;
        // A request taken and not completed was declined; so was the first one if the
        // device took none.
        let general = batch.general || batch.taken.is_some() || na == next_avail;
        let served = usize::from(na.wrapping_sub(next_avail));
        if served > 0 {
            let notify = ring.publish_used(next_used, nu);
            {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                queue.set_next_avail(na);
                queue.set_next_used(nu);
            }
            if notify {
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!(target: TARGET, queue = q, error = %e, "cannot signal the used ring");
                }
            }
        }
        if general {
            Flow::General
        } else {
            Flow::Empty(served)
        }
    }

    /// Serves every request on the avail ring: in batches of up to [`BATCH`] on the
    /// request queues (the ring locked, the memory map loaded and the driver notified
    /// once per batch), one at a time on the other queues or while faults are armed
    /// (each request then draws its own fault).
    fn serve_available(&self, q: u16, vring: &Vring, max: usize) -> Flow {
        let mut served = 0;
        let batched = self.device.is_request_queue(q);
        let mut batch: Vec<Chain> = Vec::new();
        let mut done: Vec<(u16, u32)> = Vec::new();
        loop {
            if self.conn.is_closing() {
                return Flow::Stop;
            }
            if served >= max {
                return Flow::Empty(served);
            }
            let per_request = !batched || self.faults.is_armed();
            let mut busy = lock(&self.busy[usize::from(q)]);
            if let Some(h) = busy.take() {
                if Instant::now() < h.until {
                    *busy = Some(h);
                    return Flow::Empty(served);
                }
                self.finish_chain(q, vring, &h.mem, h.chain, h.decision);
                served += 1;
                continue;
            }
            let mem = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                if !queue.ready() {
                    return Flow::Stop;
                }
                // The memory map is loaded only once a new entry is seen: the frontend
                // adds a region (ADD_MEM_REG, answered after the map is replaced) before
                // it publishes requests that use it, so a map loaded after the Acquire
                // load of avail.idx has every region the request can name. A map loaded
                // earlier may not (a polling worker would pop the request with it).
                match queue.avail_idx(&*self.mem.memory(), Ordering::Acquire) {
                    Ok(idx) if idx.0 == queue.next_avail() => return Flow::Empty(served),
                    _ => {}
                }
                let mem = self.mem.memory();
                let limit = if per_request {
                    1
                } else {
                    BATCH.min(max - served)
                };
                match queue.iter(mem.clone()) {
                    Ok(mut it) => {
                        while batch.len() < limit {
                            match it.next() {
                                Some(c) => batch.push(c),
                                None => break,
                            }
                        }
                    }
                    Err(virtio_queue::Error::QueueNotReady) => return Flow::Stop,
                    Err(e) => {
                        // The driver's avail.idx moved by more than the queue size
                        // (virtio 1.2 §2.7.13.3): nothing sane can follow.
                        tracing::error!(target: TARGET, queue = q, error = %e, "driver broke the avail ring");
                        self.conn.close("driver broke the avail ring");
                        return Flow::Stop;
                    }
                }
                mem
            };
            if batch.is_empty() {
                return Flow::Empty(served);
            }
            served += batch.len();
            if per_request {
                for chain in batch.drain(..) {
                    self.serve_chain(q, vring, &mem, chain, &mut busy);
                }
                continue;
            }
            for chain in batch.drain(..) {
                let head = chain.head_index();
                if let Some(len) = self.device.serve(q, &mem, chain, None) {
                    done.push((head, len));
                }
            }
            if !done.is_empty() {
                let mut state = vring.get_mut();
                for (head, len) in done.drain(..) {
                    if let Err(e) = state.add_used(head, len) {
                        tracing::warn!(target: TARGET, queue = q, head, error = %e, "cannot complete request");
                    }
                }
                drop(state);
                self.notify(q, vring);
            }
        }
    }

    /// Serves one request, with whatever fault applies to it. `busy` is the queue's
    /// [`Session::busy`] slot, locked: in polling mode a request a `Delay` fault holds up
    /// waits there (the poller serves other queues meanwhile); otherwise the thread
    /// sleeps the delay.
    fn serve_chain(
        &self,
        q: u16,
        vring: &Vring,
        mem: &GuestMemoryLoadGuard<Mem>,
        chain: Chain,
        busy: &mut Option<Held>,
    ) {
        let head = chain.head_index();
        let d = if self.device.is_request_queue(q) {
            self.faults.decide()
        } else {
            Decision::default()
        };
        if d.drop {
            tracing::trace!(target: TARGET, queue = q, head, "request held (StopAnswering)");
            return;
        }
        if let Some(Fault::Delay(t)) = d.fault {
            if self.poll {
                tracing::trace!(target: TARGET, queue = q, head, delay = ?t, "request held up (Delay)");
                *busy = Some(Held {
                    chain,
                    mem: mem.clone(),
                    decision: d,
                    until: Instant::now() + t,
                });
                return;
            }
            std::thread::sleep(t);
        }
        self.finish_chain(q, vring, mem, chain, d);
    }

    /// Serves one request once its delay, if any, is over: the device-level fault of
    /// `d` goes to the device, the transport-level ones are applied here.
    fn finish_chain(&self, q: u16, vring: &Vring, mem: &Mem, chain: Chain, d: Decision) {
        let head = chain.head_index();
        let bad = match d.fault {
            Some(Fault::BadUsed(kind)) => Some((kind, writable_len(&chain))),
            _ => None,
        };
        let Some(len) = self.device.serve(q, mem, chain, d.fault) else {
            tracing::trace!(target: TARGET, queue = q, head, "request kept by the device");
            if d.close {
                self.conn.close("CloseAfter fault");
            }
            return;
        };
        match bad {
            None => {
                if let Err(e) = vring.add_used(head, len) {
                    tracing::warn!(target: TARGET, queue = q, head, error = %e, "cannot complete request");
                }
                self.notify(q, vring);
            }
            Some((kind, writable)) => {
                if let Err(e) = write_bad_used(vring, mem, head, len, writable, kind) {
                    tracing::warn!(target: TARGET, queue = q, head, error = %e, "cannot write the bad used entry");
                }
                // The driver must look at the ring whatever it asked for.
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!(target: TARGET, queue = q, error = %e, "cannot signal the used ring");
                }
            }
        }
        if d.close {
            self.conn.close("CloseAfter fault");
        }
    }

    fn notify(&self, q: u16, vring: &Vring) {
        match vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!(target: TARGET, queue = q, error = %e, "cannot signal the used ring");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(target: TARGET, queue = q, error = %e, "cannot read used_event");
            }
        }
    }
}

/// Bytes the driver made writable in `chain`.
fn writable_len(chain: &Chain) -> u32 {
    chain
        .clone()
        .writable()
        .fold(0u32, |n, d| n.saturating_add(d.len()))
}

/// Completes `head` with a used entry that breaks the rules on purpose.
fn write_bad_used(
    vring: &Vring,
    mem: &Mem,
    head: u16,
    len: u32,
    writable: u32,
    kind: BadUsed,
) -> std::result::Result<(), virtio_queue::Error> {
    if kind == BadUsed::LenTooLarge {
        // virtio-queue does not check len against the chain: its own add_used writes it.
        return vring.add_used(head, writable.saturating_add(1));
    }
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    let size = queue.size();
    let next = queue.next_used();
    let used = GuestAddress(queue.used_ring());
    // virtq_used: flags (2), idx (2), ring[size] of {id: le32, len: le32} (virtio 1.2 §2.7.8).
    let elem = used
        .0
        .checked_add(4 + 8 * u64::from(next % size))
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    let (id, idx) = match kind {
        // An id no descriptor has.
        BadUsed::IdOutOfRange => (u32::from(size), next.wrapping_add(1)),
        // One entry written, idx moved by one plus a whole ring: more than the driver can
        // have in flight, whatever it has.
        _ => (u32::from(head), next.wrapping_add(1).wrapping_add(size)),
    };
    let err = virtio_queue::Error::GuestMemory;
    mem.write_obj(id.to_le(), GuestAddress(elem)).map_err(err)?;
    mem.write_obj(len.to_le(), GuestAddress(elem + 4))
        .map_err(err)?;
    // Release: the element is visible before the index that publishes it (§2.7.8),
    // as virtio-queue's add_used does.
    mem.store(idx.to_le(), GuestAddress(used.0 + 2), Ordering::Release)
        .map_err(err)?;
    queue.set_next_used(next.wrapping_add(1));
    Ok(())
}

/// The `GET_CONFIG` reply for `size` bytes from `offset` of `space`: the bytes that lie in
/// the space, then zeros up to `size`; `None` when `offset` is beyond the space.
///
/// A frontend may ask for more than the device type's struct: SPDK's virtio-user
/// initiator always asks for 256 bytes from 0 (`VHOST_USER_MAX_CONFIG_SIZE`) and wants a
/// reply of exactly that size, as SPDK's and QEMU's targets give it. The vhost-user spec
/// lets the reply carry the requested size (vhost-user, "VHOST_USER_GET_CONFIG"); bytes
/// past the struct read as zero, as reserved fields do (virtio 1.2 §2.5). The `vhost`
/// crate bounds `offset + size` by `VHOST_USER_CONFIG_SIZE` before this is called.
pub fn config_reply(space: &[u8], offset: u32, size: u32) -> Option<Vec<u8>> {
    let start = usize::try_from(offset).ok()?;
    if start >= space.len() {
        return None;
    }
    let size = usize::try_from(size).ok()?;
    let mut reply = vec![0u8; size];
    let have = (space.len() - start).min(size);
    reply[..have].copy_from_slice(&space[start..start + have]);
    Some(reply)
}

impl<D: Device> VhostUserBackend for Session<D> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.device.num_queues())
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.device.max_queue_size())
    }

    fn features(&self) -> u64 {
        let mut f = self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.quirks.no_event_idx {
            f &= !vbdev_virtio::device::features::RING_EVENT_IDX;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.quirks.no_config {
            f.remove(VhostUserProtocolFeatures::CONFIG);
        }
        if self.quirks.no_mem_slots {
            f.remove(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        }
        if self.quirks.no_mq {
            f.remove(VhostUserProtocolFeatures::MQ);
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.device.set_features(features);
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The daemon sets it on each vring, which is all that uses it.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        match config_reply(&self.device.config(), offset, size) {
            Some(v) => v,
            None => {
                tracing::warn!(target: TARGET, offset, size, "GET_CONFIG outside the configuration space");
                Vec::new()
            }
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.device.set_config(offset, buf)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        // The daemon updated the GuestMemoryAtomic this session shares with it; the
        // pollers' kept maps are stale from now on.
        self.mem_epoch.fetch_add(1, Ordering::Release);
        if self.quirks.mem_table_us_per_mib > 0 {
            use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
            let mib = mem.memory().iter().map(|r| r.len()).sum::<u64>() >> 20;
            let us = mib.saturating_mul(u64::from(self.quirks.mem_table_us_per_mib));
            tracing::debug!(target: TARGET, mib, us, "memory table: slow registration (quirk)");
            // The stand-in for SPDK's page-by-page registration: the reply is late by
            // design, there is nothing to wait for.
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // At most MAX_QUEUES (64) queues: each fits in the mask.
        self.threads
            .iter()
            .map(|t| t.iter().fold(0u64, |m, &q| m | 1u64 << q))
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one the daemon cannot stop its workers (and its drop would wait forever).
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!(target: TARGET, error = %e, "cannot create a worker exit eventfd");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // The ring is no longer ready, so no new request comes off it; wait for the one
        // being served, if any.
        let (Some(busy), Ok(q)) = (
            self.busy.get(queue_index as usize),
            u16::try_from(queue_index),
        ) else {
            return Ok(());
        };
        let mut busy = lock(busy);
        if let Some(h) = busy.take() {
            // A request a Delay fault holds up on a polling queue: served once its delay
            // is over, as a worker sleeping the delay would serve it before this lock.
            std::thread::sleep(h.until.saturating_duration_since(Instant::now()));
            if let Some(v) = self.rings.get(usize::from(q)).and_then(OnceLock::get) {
                self.finish_chain(q, v, &h.mem, h.chain, h.decision);
            }
        }
        // The daemon reads next_avail for the GET_VRING_BASE reply after this returns:
        // chains the device kept go back to the avail ring (vhost-user "Starting and
        // stopping rings": the base is where the back-end would continue).
        let kept = self.device.queue_stopped(q);
        if kept > 0 {
            // A device keeps chains only of a queue it was served, so the ring is known.
            if let Some(v) = self.rings.get(usize::from(q)).and_then(OnceLock::get) {
                let mut state = v.get_mut();
                let queue = state.get_queue_mut();
                // kept <= chains taken off this ring, as the device promises.
                let next = queue.next_avail().wrapping_sub(kept);
                queue.set_next_avail(next);
                tracing::debug!(target: TARGET, queue = q, kept, next_avail = next, "kept chains given back to the avail ring");
            }
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // The thread's rings are its queues' (`threads[thread_id]`), in the same order;
        // event `i` is the kick of ring `i`.
        let i = usize::from(device_event);
        let queues = self.threads.get(thread_id).map_or(&[][..], |t| &t[..]);
        let (Some(&q), Some(vring)) = (queues.get(i), vrings.get(i)) else {
            return Ok(());
        };
        if self.conn.is_closing() {
            return Ok(());
        }
        self.ring_seen(q, vring);
        if self.poll && self.device.is_request_queue(q) {
            self.poll_queues(queues, vrings);
        } else {
            self.drain_queue(q, vring);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    fn map(len: usize) -> Mem {
        Mem::from_ranges(&[(GuestAddress(0), len)]).unwrap()
    }

    /// The batch remembers where the request it took lay (head, descriptors, header):
    /// the next batch starts loading those lines before it reads the ring.
    #[test]
    fn a_batch_remembers_the_last_chain_it_took() {
        let m = map(0x10000);
        let a = RingAddrs {
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
            size: 8,
            event_idx: false,
        };
        // A blk-shaped chain at head 5: header, data, status.
        let put = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = 0x1000 + 16 * i;
            m.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
            m.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
            m.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
            m.write_obj(next.to_le(), GuestAddress(at + 14)).unwrap();
        };
        put(5, 0x8000, 16, 1, 6);
        put(6, 0x9000, 512, 1 | 2, 7);
        put(7, 0xa000, 1, 2, 0);
        m.write_obj(5u16.to_le(), GuestAddress(0x2000 + 4)).unwrap();
        m.write_obj(1u16.to_le(), GuestAddress(0x2000 + 2)).unwrap();
        let ring = Ring::new(&m, &a).unwrap();
        let mut segs = Segments::new();
        let mut batch = Batch {
            ring: &ring,
            mem: &m,
            segs: &mut segs,
            na: 0,
            nu: 0,
            first_used: 0,
            left: 1,
            every: 1,
            taken: None,
            general: false,
            last: None,
        };
        assert!(batch.next().is_some());
        batch.complete(1);
        let last = batch.last.expect("the chain taken is remembered");
        assert_eq!((last.head, last.ndesc, last.header), (5, 3, 0x8000));
    }

    /// A kept map is used while the epoch stands still and replaced as soon as it
    /// moves: a region added by the frontend (the daemon replaces the map, then
    /// `update_memory` bumps the epoch) is in the map the next batch serves with.
    #[test]
    fn a_kept_map_is_replaced_once_the_epoch_moves() {
        let atomic = GuestMemoryAtomic::new(map(0x1000));
        let epoch = AtomicU64::new(0);
        let mut cache = MapCache::default();
        let first = Arc::clone(cache.get(&atomic, &epoch));
        assert_eq!(first.num_regions(), 1);
        assert!(
            Arc::ptr_eq(&first, cache.get(&atomic, &epoch)),
            "kept while the epoch stands"
        );
        let grown = Mem::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x10000), 0x1000)])
            .unwrap();
        atomic.lock().unwrap().replace(grown);
        // Not yet told: the kept map stays (the frontend has no reply yet, so it names
        // no address of the new region).
        assert!(Arc::ptr_eq(&first, cache.get(&atomic, &epoch)));
        epoch.fetch_add(1, Ordering::Release);
        let now = cache.get(&atomic, &epoch);
        assert_eq!(now.num_regions(), 2, "the new map after the epoch moved");
        assert!(now.address_in_range(GuestAddress(0x10000)));
    }
}
