//! vhost-user frontend transport (vhost-user protocol, "Front-end message types"),
//! built on rust-vmm `vhost`.
//!
//! Every message waits a bounded time for its reply: a connection thread arms a deadline
//! around each call and shuts the socket down when it passes (the `vhost` crate retries
//! read timeouts silently, so nothing else bounds a wait). The same thread watches the
//! socket for hang-up, so a target that dies is noticed at once and [`Transport::is_alive`]
//! turns false; the data path polls that flag.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{CallFd, Notifier, QueueHandles, Transport};
use crate::error::{Error, Result};
use crate::mem::{DmaDomain, RegionId, RegionInfo, RegionListener};
use crate::split::{MAX_QUEUE_SIZE, RingAddrs};

const TARGET: &str = "vbdev::vhost_user";

/// `VHOST_USER_F_PROTOCOL_FEATURES` (vhost-user spec, "Feature bits"): a transport bit,
/// never shown to the device driver.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// `SET_MEM_TABLE` carries at most this many regions (`VHOST_MEMORY_BASELINE_NREGIONS`).
pub const MEM_TABLE_MAX_REGIONS: usize = 8;

/// The queues a target without `VHOST_USER_PROTOCOL_F_MQ` is assumed to have: one
/// request queue after virtio-scsi's two fixed ones (virtio-blk uses the first only).
const QUEUES_WITHOUT_MQ: u16 = 3;

/// Extra reply time a memory-sharing message (`SET_MEM_TABLE`, `ADD_MEM_REG`) gets per
/// GiB it shares, on top of [`VhostUserOptions::timeout`]: 20 s, four times what SPDK's
/// target took on a 2-core VM with 4 KiB pages (10 s with huge pages).
pub const MEM_REGISTER_MS_PER_GIB: u64 = 20_000;

/// Options of a vhost-user connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhostUserOptions {
    /// Longest wait for `connect(2)` and for each reply (default 5 s).
    pub timeout: Duration,
}

impl Default for VhostUserOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
        }
    }
}

/// A connection to a vhost-user target.
#[derive(Debug)]
pub struct VhostUser {
    shared: Arc<Shared>,
    path: PathBuf,
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    num_queues: u16,
    status: AtomicU8,
    monitor: Option<JoinHandle<()>>,
}

/// State shared with the connection thread and the DMA domain's region listener.
struct Shared {
    frontend: Mutex<Frontend>,
    sock: UnixStream,
    wake: OwnedFd,
    watch: Mutex<Watch>,
    alive: AtomicBool,
    regions_known: AtomicU64,
    mem_slots: AtomicBool,
    domain: &'static DmaDomain,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Watch {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("alive", &self.alive.load(Ordering::Relaxed))
            .field("regions_known", &self.regions_known.load(Ordering::Relaxed))
            .finish()
    }
}

fn wake(fd: &OwnedFd) {
    // Only fails if the counter would overflow, and then the reader is woken anyway.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a `vhost` error means the connection is unusable.
fn is_fatal(e: &vhost::Error) -> bool {
    use vhost::vhost_user::Error as E;
    match e {
        vhost::Error::VhostUserProtocol(e) => matches!(
            e,
            E::PartialMessage
                | E::Disconnected
                | E::SocketBroken(_)
                | E::SocketError(_)
                | E::InvalidMessage
                | E::BackendInternalError
        ),
        _ => false,
    }
}

impl Shared {
    /// Runs one control call under the reply deadline.
    fn call<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        self.call_for(op, self.timeout, f)
    }

    /// The reply deadline of a message that shares `bytes` of memory: the timeout, plus
    /// [`MEM_REGISTER_MS_PER_GIB`] per GiB. A target may do real work per page before it
    /// answers (SPDK's: a populated mapping and a pagemap lookup per 4 KiB page); that
    /// is a slow target, not a dead one (a dead one hangs up, which is seen at once).
    fn mem_deadline(&self, bytes: u64) -> Duration {
        let per_gib = Duration::from_millis(MEM_REGISTER_MS_PER_GIB);
        // bytes >> 20 is at most 2^44; times a u32 factor below, no overflow.
        let mib = u32::try_from(bytes >> 20).unwrap_or(u32::MAX);
        self.timeout
            .saturating_add(per_gib.saturating_mul(mib) / 1024)
    }

    /// Runs one control call; its reply must come within `timeout`.
    fn call_for<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        if !self.alive.load(Ordering::Acquire) {
            return Err(Error::Disconnected);
        }
        let mut fe = lock(&self.frontend);
        tracing::debug!(target: TARGET, op, "request");
        self.arm(Some(Instant::now() + timeout));
        let r = f(&mut fe);
        let fired = self.arm(None);
        match (r, fired) {
            (_, true) => {
                self.mark_dead("reply timeout");
                Err(Error::Timeout {
                    op,
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
            (Ok(v), false) => Ok(v),
            (Err(e), false) => {
                if is_fatal(&e) {
                    self.mark_dead("connection error");
                }
                Err(Error::VhostUser { op, source: e })
            }
        }
    }

    /// Sets (or clears) the deadline; returns whether the previous one fired.
    fn arm(&self, deadline: Option<Instant>) -> bool {
        let mut w = lock(&self.watch);
        let fired = std::mem::take(&mut w.fired);
        w.deadline = deadline;
        drop(w);
        wake(&self.wake);
        fired
    }

    fn mark_dead(&self, why: &'static str) {
        if self.alive.swap(false, Ordering::AcqRel) {
            tracing::warn!(target: TARGET, why, "vhost-user connection lost");
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    fn close(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            tracing::info!(target: TARGET, "vhost-user connection closed");
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The connection thread: fires deadlines and notices hang-up.
    fn run(self: Arc<Self>) {
        loop {
            let deadline = {
                let mut w = lock(&self.watch);
                if w.stop {
                    return;
                }
                match w.deadline {
                    Some(d) if d <= Instant::now() => {
                        w.deadline = None;
                        w.fired = true;
                        drop(w);
                        // Shutting the socket down unblocks the caller's read with an
                        // error; the connection is dead from here on (a late reply would
                        // desynchronise it anyway).
                        self.mark_dead("no reply before the deadline");
                        continue;
                    }
                    d => d,
                }
            };
            let timeout = deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                }
            });
            let mut fds = [
                PollFd::new(&self.sock, PollFlags::RDHUP),
                PollFd::new(&self.wake, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::error!(target: TARGET, error = %e, "poll failed; connection watch stops");
                    self.mark_dead("poll failed");
                    return;
                }
            }
            let hup = fds[0]
                .revents()
                .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR);
            let woken = fds[1].revents().contains(PollFlags::IN);
            if woken {
                let _ = rustix::io::read(&self.wake, &mut [0u8; 8]);
            }
            if hup {
                self.mark_dead("target hung up");
                // Calls now fail at once: the shutdown ends a read in progress with an
                // error, and later calls see the connection dead before they wait. A
                // deadline armed meanwhile is dropped, not fired: the caller was told by
                // the hang-up, not by the clock (a timeout would hide why).
                let mut w = lock(&self.watch);
                while !w.stop {
                    w.deadline = None;
                    drop(w);
                    let mut fds = [PollFd::new(&self.wake, PollFlags::IN)];
                    let _ = rustix::event::poll(&mut fds, None);
                    let _ = rustix::io::read(&self.wake, &mut [0u8; 8]);
                    w = lock(&self.watch);
                }
                return;
            }
        }
    }

    /// Sends the domain's regions in one `SET_MEM_TABLE`: the first 8 made (all a
    /// table holds; libvhost-user takes no more), so a region once shared stays in every
    /// later table, sorted by address (rust-vmm backends reject unsorted tables). A target without
    /// `CONFIGURE_MEM_SLOTS` learns of every later region this way too: the vhost-user
    /// spec lets the front-end send a new table at any time (QEMU does on memory
    /// hot-plug); SPDK's targets stop the device, register the new table and start it
    /// again, in-flight requests completed first. Returns how many regions went out.
    fn send_mem_table(&self) -> Result<usize> {
        let mut sent = Vec::new();
        // The regions are read under the frontend lock, so of two tables sent for two
        // new regions the later one always holds both.
        let op = |fe: &mut Frontend| {
            // `regions()` lists them in the order they were made.
            let mut regions = self.domain.regions();
            regions.truncate(MEM_TABLE_MAX_REGIONS);
            regions.sort_by_key(|r| r.addr);
            let infos: Vec<_> = regions.iter().map(region_info).collect();
            sent = regions;
            fe.set_mem_table(&infos).map(|_| ())
        };
        let regions = self.domain.regions();
        let bytes = regions.iter().map(|r| r.len).sum::<u64>();
        let small_pages = regions.iter().any(|r| !r.hugetlb);
        self.call_for("SET_MEM_TABLE", self.mem_deadline(bytes), op)
            .map_err(|e| match e {
                // The target went away while mapping, or is still dying (SPDK's
                // segfault, dumping core): no refusal, the connection is gone.
                Error::VhostUser { .. } | Error::Disconnected | Error::Timeout { .. }
                    if small_pages && !self.alive.load(Ordering::Acquire) =>
                {
                    Error::MemTableRefused {
                        op: "SET_MEM_TABLE",
                        source: Box::new(e),
                    }
                }
                e => e,
            })?;
        let known = sent.iter().fold(0u64, |m, r| m | r.id.bit());
        self.regions_known.fetch_or(known, Ordering::AcqRel);
        Ok(sent.len())
    }

    /// Shares one more region (ADD_MEM_REG), unless it is shared already.
    fn add_region(&self, r: &RegionInfo) -> Result<()> {
        let bit = r.id.bit();
        if self.regions_known.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return Ok(());
        }
        let info = region_info(r);
        let res = self.call_for("ADD_MEM_REG", self.mem_deadline(r.len), |fe| {
            fe.add_mem_region(&info)
        });
        if res.is_err() {
            self.regions_known.fetch_and(!bit, Ordering::AcqRel);
        }
        res.map(|_| ())
    }
}

impl RegionListener for Shared {
    fn region_added(&self, region: &RegionInfo) {
        let res = if self.mem_slots.load(Ordering::Acquire) {
            self.add_region(region)
        } else if usize::from(region.id.0) < MEM_TABLE_MAX_REGIONS {
            self.send_mem_table().map(|_| ())
        } else {
            tracing::warn!(target: TARGET, region = region.id.0, "the target lacks CONFIGURE_MEM_SLOTS and a memory table holds 8 regions: buffers in this one are refused");
            return;
        };
        if let Err(e) = res {
            tracing::warn!(target: TARGET, region = region.id.0, error = %e, "cannot share new DMA region");
        }
    }
}

// The struct has two more fields under the `vhost` crate's `xen` feature.
#[allow(clippy::needless_update)]
fn region_info(r: &RegionInfo) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        // The device sees our virtual addresses: guest physical = user address.
        guest_phys_addr: r.addr,
        memory_size: r.len,
        userspace_addr: r.addr,
        mmap_offset: 0,
        mmap_handle: r.fd.as_raw_fd(),
        ..Default::default()
    }
}

/// `connect(2)` bounded by `timeout` (the target's listen backlog may be full, and a
/// blocking connect would then wait forever).
fn connect_bounded(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let err = |source: std::io::Error| Error::Connect {
        path: path.to_owned(),
        source,
    };
    let addr = SocketAddrUnix::new(path).map_err(|e| err(e.into()))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    let deadline = Instant::now() + timeout;
    loop {
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => break,
            // AF_UNIX returns EAGAIN when the listener's backlog is full: retry until the
            // deadline (a backoff, not a synchronisation: nothing signals free backlog).
            Err(rustix::io::Errno::AGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(rustix::io::Errno::AGAIN) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "listen backlog stayed full",
                )));
            }
            Err(e) => return Err(err(e.into())),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false).map_err(err)?;
    Ok(stream)
}

impl VhostUser {
    /// Connects to the target at `path`, negotiates the protocol features and shares the
    /// DMA domain's memory with it.
    ///
    /// # Errors
    /// [`Error::Connect`] when the socket cannot be reached, [`Error::Timeout`] when the
    /// target does not answer in time, [`Error::MissingFeature`] when it lacks
    /// `PROTOCOL_FEATURES`, and [`Error::VhostUser`] for protocol errors. A target
    /// without `CONFIG` is accepted: [`Transport::has_config`] tells the device type.
    pub fn connect(
        path: impl AsRef<Path>,
        domain: &'static DmaDomain,
        opts: VhostUserOptions,
    ) -> Result<Self> {
        let path = path.as_ref();
        let stream = connect_bounded(path, opts.timeout)?;
        let io = |op| move |source| Error::Io { op, source };
        let sock = stream.try_clone().map_err(io("dup socket"))?;
        let wake = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
            .map_err(|e| Error::Io {
                op: "eventfd",
                source: e.into(),
            })?;
        let shared = Arc::new(Shared {
            // The `vhost` crate refuses ring indexes at or above this until GET_QUEUE_NUM
            // (with MQ) replaces it.
            frontend: Mutex::new(Frontend::from_stream(stream, u64::from(QUEUES_WITHOUT_MQ))),
            sock,
            wake,
            watch: Mutex::new(Watch::default()),
            alive: AtomicBool::new(true),
            regions_known: AtomicU64::new(0),
            mem_slots: AtomicBool::new(false),
            domain,
            timeout: opts.timeout,
        });
        let thread_shared = Arc::clone(&shared);
        let monitor = std::thread::Builder::new()
            .name("vbdev-vhost-user".into())
            .spawn(move || thread_shared.run())
            .map_err(io("spawn connection thread"))?;
        let mut dev = Self {
            shared,
            path: path.to_owned(),
            offered: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            num_queues: 1,
            status: AtomicU8::new(0),
            monitor: Some(monitor),
        };
        dev.handshake(domain)?;
        tracing::info!(target: TARGET, path = %path.display(), features = dev.offered, protocol = dev.protocol.bits(), queues = dev.num_queues, "vhost-user connected");
        Ok(dev)
    }

    fn handshake(&mut self, domain: &'static DmaDomain) -> Result<()> {
        let s = Arc::clone(&self.shared);
        s.call("SET_OWNER", |fe| fe.set_owner())?;
        self.offered = s.call("GET_FEATURES", |fe| fe.get_features())?;
        if self.offered & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(Error::MissingFeature {
                name: "VHOST_USER_F_PROTOCOL_FEATURES",
            });
        }
        let offered = s.call("GET_PROTOCOL_FEATURES", |fe| fe.get_protocol_features())?;
        let want = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        let proto = offered & want;
        s.call("SET_PROTOCOL_FEATURES", |fe| {
            fe.set_protocol_features(proto)
        })?;
        self.protocol = proto;
        // Without CONFIG there is no configuration space to read: `has_config` says so
        // and the device type decides (virtio-scsi can do without, virtio-blk cannot).
        if proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            lock(&s.frontend).set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if proto.contains(VhostUserProtocolFeatures::MQ) {
            let n = s.call("GET_QUEUE_NUM", |fe| fe.get_queue_num())?;
            if n == 0 || n > 1024 {
                return Err(Error::BadConfig {
                    what: format!("GET_QUEUE_NUM returned {n}"),
                });
            }
            self.num_queues = n as u16;
        } else {
            // No way to ask: room for one request queue of any device type (virtio-scsi's
            // control and event queues come first); `request_queues` gives one.
            self.num_queues = QUEUES_WITHOUT_MQ;
        }
        let slots = proto.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        let max_slots = if slots {
            s.call("GET_MAX_MEM_SLOTS", |fe| fe.get_max_mem_slots())?
        } else {
            MEM_TABLE_MAX_REGIONS as u64
        };
        s.mem_slots.store(slots, Ordering::Release);
        domain.reserve()?;
        let sent = s.send_mem_table()?;
        // Subscribe only now, so no ADD_MEM_REG can precede SET_MEM_TABLE; then share
        // whatever else exists. A region created meanwhile may be reported both ways:
        // `add_region` claims its bit first, so it is sent once; without memory slots a
        // second table is sent, which the target takes as the same or a larger one.
        let listener: Arc<dyn RegionListener> = self.shared.clone();
        let all = domain.subscribe(Arc::downgrade(&listener));
        if !slots && all.len() > sent {
            s.send_mem_table()?;
        }
        for r in all {
            if !slots || s.regions_known.load(Ordering::Acquire) & r.id.bit() != 0 {
                continue;
            }
            let used = u64::from(s.regions_known.load(Ordering::Acquire).count_ones());
            if used >= max_slots {
                tracing::warn!(target: TARGET, region = r.id.0, "DMA region not visible to the target (no free memory slot)");
                continue;
            }
            s.add_region(&r)?;
        }
        // A target may ack a message and then drop the connection (libvhost-user acks
        // even messages it then panics on): end the phase with a real reply.
        s.call("GET_FEATURES", |fe| fe.get_features())?;
        Ok(())
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }
}

impl Transport for VhostUser {
    fn kind(&self) -> &'static str {
        "vhost-user"
    }

    fn device_features(&self) -> Result<u64> {
        Ok(self.offered & !VHOST_USER_F_PROTOCOL_FEATURES)
    }

    fn set_driver_features(&self, features: u64) -> Result<()> {
        let f = (features & self.offered) | VHOST_USER_F_PROTOCOL_FEATURES;
        self.shared.call("SET_FEATURES", |fe| fe.set_features(f))
    }

    fn status(&self) -> Result<u8> {
        if !self.is_alive() {
            return Err(Error::Disconnected);
        }
        // Without VHOST_USER_PROTOCOL_F_STATUS the status byte lives here: the target
        // accepts features by design (it offered them) and never needs a reset.
        Ok(self.status.load(Ordering::Acquire))
    }

    fn set_status(&self, status: u8) -> Result<()> {
        self.status.store(status, Ordering::Release);
        Ok(())
    }

    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<()> {
        if !self.has_config() {
            return Err(Error::MissingFeature {
                name: "VHOST_USER_PROTOCOL_F_CONFIG",
            });
        }
        // qemu-storage-daemon ignores the offset and rejects sizes beyond its struct
        // (research/vhost-frontend-spike.md §6): always read from 0, exactly what we need.
        let size = offset as usize + buf.len();
        let req = vec![0u8; size];
        let (_, payload) = self.shared.call("GET_CONFIG", |fe| {
            fe.get_config(0, size as u32, VhostUserConfigFlags::empty(), &req)
        })?;
        let src = payload
            .get(offset as usize..size)
            .ok_or_else(|| Error::BadConfig {
                what: format!("GET_CONFIG returned {} bytes, {size} needed", payload.len()),
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn has_config(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn request_queues(&self, fixed: u16) -> u16 {
        if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            self.num_queues.saturating_sub(fixed)
        } else {
            1
        }
    }

    fn max_queue_size(&self, _index: u16) -> u16 {
        // vhost-user has no way to ask; SET_VRING_NUM fails for sizes the target refuses.
        MAX_QUEUE_SIZE
    }

    fn setup_queue(&self, index: u16, addrs: &RingAddrs) -> Result<QueueHandles> {
        if index >= self.num_queues {
            return Err(Error::NoSuchQueue { index });
        }
        let s = &self.shared;
        let i = usize::from(index);
        let io = |op| move |source| Error::Io { op, source };
        let call = EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?;
        let cfg = VringConfigData {
            queue_max_size: addrs.size,
            queue_size: addrs.size,
            flags: 0,
            desc_table_addr: addrs.desc.0,
            used_ring_addr: addrs.used.0,
            avail_ring_addr: addrs.avail.0,
            log_addr: None,
        };
        s.call("SET_VRING_NUM", |fe| fe.set_vring_num(i, addrs.size))?;
        s.call("SET_VRING_BASE", |fe| fe.set_vring_base(i, 0))?;
        s.call("SET_VRING_ADDR", |fe| fe.set_vring_addr(i, &cfg))?;
        let call = CallFd::new(call).map_err(io("epoll"))?;
        s.call("SET_VRING_CALL", |fe| fe.set_vring_call(i, call.eventfd()))?;
        s.call("SET_VRING_KICK", |fe| fe.set_vring_kick(i, &kick))?;
        s.call("SET_VRING_ENABLE", |fe| fe.set_vring_enable(i, true))?;
        s.call("GET_FEATURES", |fe| fe.get_features())?;
        tracing::debug!(target: TARGET, queue = index, size = addrs.size, "vring set up");
        Ok(QueueHandles {
            notifier: Notifier::eventfd(kick),
            call,
        })
    }

    fn stop_queue(&self, index: u16) -> Result<u16> {
        let i = usize::from(index);
        let s = &self.shared;
        s.call("SET_VRING_ENABLE", |fe| fe.set_vring_enable(i, false))?;
        let base = s.call("GET_VRING_BASE", |fe| fe.get_vring_base(i))?;
        Ok(base as u16) // the index is 16 bits on the wire's meaning; upper bits are 0
    }

    fn region_visible(&self, region: RegionId) -> bool {
        self.shared.regions_known.load(Ordering::Relaxed) & region.bit() != 0
    }

    fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Relaxed)
    }

    fn shutdown(&self) {
        self.shared.close();
    }
}

impl Drop for VhostUser {
    fn drop(&mut self) {
        self.shared.close();
        lock(&self.shared.watch).stop = true;
        wake(&self.shared.wake);
        if let Some(t) = self.monitor.take() {
            let _ = t.join();
        }
    }
}
