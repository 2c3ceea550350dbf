//! A fake virtio-blk device behind the [`Transport`] trait, so that code above the
//! transport (the bdev layer) runs unchanged without a real target.
//!
//! [`FakeBlk`] keeps its disk in memory and serves every queue the driver sets up from a
//! device thread: the thread sleeps in epoll on the queues' kick eventfds (and wakes at
//! least every [`TICK_MS`] ms), takes each available chain with [`FakeDevice`], executes
//! it with [`serve_blk_chain`], publishes it in the used ring and signals the queue's call
//! eventfd. It misbehaves on command: it stops completing ([`FakeBlk::hold`]), dies
//! ([`FakeBlk::kill`]), writes a bad used id ([`FakeBlk::corrupt_next_used_id`]) or
//! refuses the driver's features ([`FakeBlk::reject_features`]).
#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Chain, FakeDevice, read_mem, serve_blk_chain};
use crate::blk::{self, BlkConfig};
use crate::device::{features as vfeat, status};
use crate::error::{Error, Result};
use crate::mem::RegionId;
use crate::split::{MAX_QUEUE_SIZE, RingAddrs};
use crate::transport::{CallFd, Notifier, QueueHandles, Transport};

/// Longest the device thread sleeps before it looks at its flags and rings again.
pub const TICK_MS: i32 = 50;

/// Bytes of config space the fake encodes: `struct virtio_blk_config` up to
/// `write_zeroes_may_unmap` and its padding (virtio 1.2 §5.2.4), all that [`BlkConfig`]
/// knows.
pub const CONFIG_LEN: usize = 60;

/// epoll data of the wake eventfd; a queue's kick uses the queue index.
const WAKE: u64 = u64::MAX;

/// What a [`FakeBlk`] offers: features, config space, queues and disk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeBlkConfig {
    /// Feature bits the device offers (device-independent and virtio-blk bits).
    pub features: u64,
    /// The config space, encoded as virtio 1.2 §5.2.4 lays it out (geometry reads as 0).
    pub config: BlkConfig,
    /// Queues the transport has ([`Transport::num_queues`]); the config space reports
    /// `config.num_queues`, which [`Self::queues`] keeps equal.
    pub num_queues: u16,
    /// Largest queue size [`Transport::setup_queue`] accepts.
    pub max_queue_size: u16,
    /// Size of the in-memory disk in bytes.
    pub disk_bytes: usize,
}

impl FakeBlkConfig {
    /// A one-queue device of `disk_bytes` bytes with 512-byte blocks that offers
    /// VERSION_1, EVENT_IDX, INDIRECT_DESC, SIZE_MAX (64 KiB), SEG_MAX (126), BLK_SIZE,
    /// FLUSH, MQ, DISCARD and WRITE_ZEROES (32768 sectors, one segment each).
    pub fn new(disk_bytes: usize) -> Self {
        let features = vfeat::VERSION_1
            | vfeat::RING_EVENT_IDX
            | vfeat::RING_INDIRECT_DESC
            | blk::features::SIZE_MAX
            | blk::features::SEG_MAX
            | blk::features::BLK_SIZE
            | blk::features::FLUSH
            | blk::features::MQ
            | blk::features::DISCARD
            | blk::features::WRITE_ZEROES;
        let config = BlkConfig {
            capacity: disk_bytes as u64 / blk::SECTOR_SIZE,
            size_max: 65536,
            seg_max: 126,
            blk_size: 512,
            num_queues: 1,
            max_discard_sectors: 32768,
            max_discard_seg: 1,
            discard_sector_alignment: 1,
            max_write_zeroes_sectors: 32768,
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: 1,
            ..BlkConfig::default()
        };
        Self {
            features,
            config,
            num_queues: 1,
            max_queue_size: MAX_QUEUE_SIZE,
            disk_bytes,
        }
    }

    /// Sets both the transport's queue count and the config space's `num_queues`.
    pub fn queues(mut self, n: u16) -> Self {
        self.num_queues = n;
        self.config.num_queues = n;
        self
    }

    /// The config space bytes, little-endian at the offsets of virtio 1.2 §5.2.4.
    pub fn config_space(&self) -> [u8; CONFIG_LEN] {
        let c = &self.config;
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&c.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&c.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&c.seg_max.to_le_bytes());
        // 16..20: geometry (cylinders u16, heads u8, sectors u8), left 0.
        b[20..24].copy_from_slice(&c.blk_size.to_le_bytes());
        b[24] = c.physical_block_exp;
        b[25] = c.alignment_offset;
        b[26..28].copy_from_slice(&c.min_io_size.to_le_bytes());
        b[28..32].copy_from_slice(&c.opt_io_size.to_le_bytes());
        b[32] = c.writeback;
        // 33: unused0.
        b[34..36].copy_from_slice(&c.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&c.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&c.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&c.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&c.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&c.max_write_zeroes_seg.to_le_bytes());
        b[56] = c.write_zeroes_may_unmap;
        // 57..60: unused1.
        b
    }
}

/// What the fake has served since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Requests completed, of every type (including the GET_ID of an attach).
    pub requests: u64,
    /// Requests completed per queue index.
    pub per_queue: Vec<u64>,
    /// Most data descriptors in one read or write (the chain minus header and status).
    pub max_data_segs: usize,
    /// Longest data descriptor of a read or write, in bytes.
    pub max_seg_len: u32,
    /// DISCARD requests.
    pub discards: u64,
    /// Largest `num_sectors` of one DISCARD range.
    pub max_discard_sectors: u32,
    /// WRITE_ZEROES requests.
    pub write_zeroes: u64,
    /// Largest `num_sectors` of one WRITE_ZEROES range.
    pub max_write_zeroes_sectors: u32,
    /// Chains that came through an indirect table.
    pub indirect: u64,
}

impl FakeStats {
    fn record(&mut self, queue: u16, chain: &Chain) {
        self.requests += 1;
        let q = usize::from(queue);
        if self.per_queue.len() <= q {
            self.per_queue.resize(q + 1, 0);
        }
        self.per_queue[q] += 1;
        if chain.indirect {
            self.indirect += 1;
        }
        let Some(first) = chain.segs.first() else {
            return;
        };
        let hdr = read_mem(first.addr, 16);
        let type_ = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
        let data = chain.segs.get(1..chain.segs.len().saturating_sub(1));
        let data = data.unwrap_or_default();
        match type_ {
            blk::req::IN | blk::req::OUT => {
                self.max_data_segs = self.max_data_segs.max(data.len());
                let longest = data.iter().map(|s| s.len).max().unwrap_or(0);
                self.max_seg_len = self.max_seg_len.max(longest);
            }
            blk::req::DISCARD | blk::req::WRITE_ZEROES => {
                let most = data
                    .iter()
                    .flat_map(|s| {
                        let raw = read_mem(s.addr, s.len as usize);
                        raw.chunks_exact(16)
                            .map(|r| u32::from_le_bytes(r[8..12].try_into().expect("4 bytes")))
                            .collect::<Vec<_>>()
                    })
                    .max()
                    .unwrap_or(0);
                if type_ == blk::req::DISCARD {
                    self.discards += 1;
                    self.max_discard_sectors = self.max_discard_sectors.max(most);
                } else {
                    self.write_zeroes += 1;
                    self.max_write_zeroes_sectors = self.max_write_zeroes_sectors.max(most);
                }
            }
            _ => {}
        }
    }
}

/// The device side of one set-up queue.
#[derive(Debug)]
struct Queue {
    dev: FakeDevice,
    /// The device's copy of the kick eventfd (the driver's [`Notifier`] has the other).
    kick: EventFd,
    /// The device's copy of the call eventfd (the driver's [`CallFd`] has the other).
    call: EventFd,
    /// Chains taken from the available ring: the device's next avail index.
    next_avail: u16,
    enabled: bool,
}

/// Everything the device thread and the transport calls share, behind one lock: holding
/// it is what makes [`FakeBlk::kill`] and [`Transport::shutdown`] stop all serving by
/// the time they return.
#[derive(Debug)]
struct State {
    status: u8,
    driver_features: u64,
    queues: Vec<Option<Queue>>,
    hold: bool,
    reject_features: bool,
    corrupt_used_id: Option<u32>,
    /// Completions still to come that leave the status byte unwritten.
    skip_status: u32,
    stats: FakeStats,
    /// The thread must exit.
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    cfg: FakeBlkConfig,
    config_space: [u8; CONFIG_LEN],
    state: Mutex<State>,
    /// False after `kill` or `shutdown`; only changed with `state` locked.
    alive: AtomicBool,
    disk: Arc<Mutex<Vec<u8>>>,
    epoll: Epoll,
    wake: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking device thread (a malformed chain) leaves consistent-enough state: the
    // test that caused it fails on its own.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    fn check_alive(&self) -> Result<()> {
        if self.is_alive() {
            Ok(())
        } else {
            Err(Error::Disconnected)
        }
    }

    fn wake(&self) {
        let _ = self.wake.write(1);
    }

    fn has(&self, st: &State, bit: u64) -> bool {
        st.driver_features & self.cfg.features & bit != 0
    }

    /// The device thread: sleeps in epoll, then serves every enabled queue.
    fn run(&self) {
        let mut events = [EpollEvent::default(); 16];
        loop {
            // Errors (EINTR) count as a tick: the rings are looked at anyway.
            let _ = self.epoll.wait(TICK_MS, &mut events);
            let mut guard = self.lock();
            let _ = self.wake.read();
            let st = &mut *guard;
            if st.stopped {
                return;
            }
            for q in st.queues.iter().flatten() {
                // Level-triggered: clear every kick, or the next wait returns at once.
                let _ = q.kick.read();
            }
            if !self.is_alive() || st.hold {
                continue;
            }
            let event_idx = self.has(st, vfeat::RING_EVENT_IDX);
            let mut disk = lock(&self.disk);
            let State {
                queues,
                stats,
                corrupt_used_id,
                skip_status,
                ..
            } = st;
            for (index, q) in queues.iter_mut().enumerate() {
                let Some(q) = q.as_mut().filter(|q| q.enabled) else {
                    continue;
                };
                let index = index as u16; // < num_queues, a u16
                let faults = Faults {
                    used_id: corrupt_used_id,
                    skip_status,
                };
                if serve(q, index, &mut disk, stats, faults, event_idx) {
                    let _ = q.call.write(1);
                }
            }
        }
    }
}

/// Misbehaviour asked for by the test, consumed as completions go out.
struct Faults<'a> {
    used_id: &'a mut Option<u32>,
    skip_status: &'a mut u32,
}

/// Serves every available chain of `q`; returns whether it completed any.
fn serve(
    q: &mut Queue,
    index: u16,
    disk: &mut [u8],
    stats: &mut FakeStats,
    faults: Faults<'_>,
    event_idx: bool,
) -> bool {
    let mut served = false;
    loop {
        while let Some(chain) = q.dev.pop_avail() {
            q.next_avail = q.next_avail.wrapping_add(1);
            stats.record(index, &chain);
            let len = if *faults.skip_status > 0 {
                *faults.skip_status -= 1;
                // The whole chain's writable length, as a device that claims to have
                // answered; the status byte keeps what the driver left there.
                chain
                    .segs
                    .iter()
                    .filter(|s| s.device_writable)
                    .map(|s| s.len)
                    .sum()
            } else {
                serve_blk_chain(&chain, disk)
            };
            let id = faults.used_id.take().unwrap_or(u32::from(chain.head));
            q.dev.push_used(id, len);
            served = true;
        }
        if !event_idx {
            return served;
        }
        // Ask for a kick once avail.idx passes what we took (virtio 1.2 §2.7.10), then
        // look again: the driver may have published before it saw the new avail_event.
        // The fence orders our avail_event store before the avail.idx load; it pairs with
        // the driver's fence between storing avail.idx and loading avail_event.
        q.dev.set_avail_event(q.next_avail);
        fence(Ordering::SeqCst);
        if q.dev.avail_idx() == q.next_avail {
            return served;
        }
    }
}

/// Marks the device dead if the device thread unwinds, so that the driver fails its
/// requests at once instead of waiting for a completion that never comes.
struct PanicGuard<'a>(&'a Shared);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.alive.store(false, Ordering::Relaxed);
        }
    }
}

/// An in-process virtio-blk device behind the [`Transport`] trait.
///
/// Keep an `Arc<FakeBlk>` in the test and hand a clone to the driver as an
/// `Arc<dyn Transport>`; the knobs ([`Self::hold`], [`Self::kill`], ...) work on the
/// shared device. Dropping the last reference stops and joins the device thread.
#[derive(Debug)]
pub struct FakeBlk {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FakeBlk {
    /// Creates the device (status 0, zeroed disk) and starts its thread.
    ///
    /// # Errors
    /// [`Error::Io`] when the epoll instance, the wake eventfd or the thread cannot be
    /// created.
    pub fn new(cfg: FakeBlkConfig) -> Result<Self> {
        let io = |op| move |source| Error::Io { op, source };
        let epoll = Epoll::new().map_err(io("epoll_create"))?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, WAKE),
            )
            .map_err(io("epoll_ctl"))?;
        let shared = Arc::new(Shared {
            cfg,
            config_space: cfg.config_space(),
            state: Mutex::new(State {
                status: 0,
                driver_features: 0,
                queues: (0..cfg.num_queues).map(|_| None).collect(),
                hold: false,
                reject_features: false,
                corrupt_used_id: None,
                skip_status: 0,
                stats: FakeStats {
                    per_queue: vec![0; usize::from(cfg.num_queues)],
                    ..FakeStats::default()
                },
                stopped: false,
            }),
            alive: AtomicBool::new(true),
            disk: Arc::new(Mutex::new(vec![0u8; cfg.disk_bytes])),
            epoll,
            wake,
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fake-blk".into())
            .spawn(move || {
                let _guard = PanicGuard(&s);
                s.run();
            })
            .map_err(io("spawn"))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The configuration the device was created with.
    pub fn config(&self) -> &FakeBlkConfig {
        &self.shared.cfg
    }

    /// `true`: stop completing (requests stay pending, kicks are swallowed); `false`:
    /// serve again at once.
    pub fn hold(&self, on: bool) {
        self.shared.lock().hold = on;
        self.shared.wake();
    }

    /// Kills the device, as a target that dies: [`Transport::is_alive`] turns false,
    /// nothing is served from the moment this returns, and every later transport call
    /// fails. The call eventfds are signalled so that sleeping drivers notice.
    pub fn kill(&self) {
        let st = self.shared.lock();
        self.shared.alive.store(false, Ordering::Relaxed);
        for q in st.queues.iter().flatten() {
            let _ = q.call.write(1);
        }
    }

    /// Writes used id `id` instead of the chain's head for the next completion.
    pub fn corrupt_next_used_id(&self, id: u32) {
        self.shared.lock().corrupt_used_id = Some(id);
        self.shared.wake();
    }

    /// Completes the next `n` requests without writing their status byte (nor doing
    /// anything else), as a device that forgets to answer.
    pub fn skip_next_status(&self, n: u32) {
        self.shared.lock().skip_status = n;
        self.shared.wake();
    }

    /// `true`: [`Transport::status`] never shows FEATURES_OK, as a device that refuses
    /// the driver's feature subset (virtio 1.2 §3.1.1 step 6).
    pub fn reject_features(&self, on: bool) {
        self.shared.lock().reject_features = on;
    }

    /// The features the driver last wrote.
    pub fn driver_features(&self) -> u64 {
        self.shared.lock().driver_features
    }

    /// A copy of the disk.
    pub fn disk(&self) -> Vec<u8> {
        lock(&self.shared.disk).clone()
    }

    /// Writes `data` into the disk at byte `offset`, behind the driver's back.
    ///
    /// # Panics
    /// When the range is beyond the disk.
    pub fn write_disk(&self, offset: usize, data: &[u8]) {
        lock(&self.shared.disk)[offset..offset + data.len()].copy_from_slice(data);
    }

    /// What the device has served so far.
    pub fn stats(&self) -> FakeStats {
        self.shared.lock().stats.clone()
    }
}

impl Transport for FakeBlk {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn device_features(&self) -> Result<u64> {
        self.shared.check_alive()?;
        Ok(self.shared.cfg.features)
    }

    fn set_driver_features(&self, features: u64) -> Result<()> {
        self.shared.check_alive()?;
        self.shared.lock().driver_features = features;
        Ok(())
    }

    fn status(&self) -> Result<u8> {
        self.shared.check_alive()?;
        let st = self.shared.lock();
        // The driver must not accept a feature that was not offered (virtio 1.2 §2.2.1):
        // refuse such a subset like one the test wants refused.
        let unoffered = st.driver_features & !self.shared.cfg.features != 0;
        if st.reject_features || unoffered {
            Ok(st.status & !status::FEATURES_OK)
        } else {
            Ok(st.status)
        }
    }

    fn set_status(&self, status: u8) -> Result<()> {
        self.shared.check_alive()?;
        let mut st = self.shared.lock();
        if status == 0 {
            // Reset (virtio 1.2 §2.1): forget the features and every queue.
            st.driver_features = 0;
            for q in st.queues.iter_mut() {
                if let Some(q) = q.take() {
                    let _ = self.shared.epoll.ctl(
                        ControlOperation::Delete,
                        q.kick.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
            }
        }
        st.status = status;
        Ok(())
    }

    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<()> {
        self.shared.check_alive()?;
        let start = offset as usize;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.shared.config_space.get(start..end))
            .ok_or_else(|| Error::BadConfig {
                what: format!(
                    "config read of {} bytes at {offset} beyond {CONFIG_LEN}",
                    buf.len()
                ),
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn num_queues(&self) -> u16 {
        self.shared.cfg.num_queues
    }

    fn max_queue_size(&self, _index: u16) -> u16 {
        self.shared.cfg.max_queue_size
    }

    fn setup_queue(&self, index: u16, addrs: &RingAddrs) -> Result<QueueHandles> {
        self.shared.check_alive()?;
        if index >= self.shared.cfg.num_queues {
            return Err(Error::NoSuchQueue { index });
        }
        if addrs.size > self.shared.cfg.max_queue_size {
            return Err(Error::QueueTooLarge {
                size: addrs.size.into(),
                max: self.shared.cfg.max_queue_size.into(),
            });
        }
        let io = |op| move |source| Error::Io { op, source };
        let kick = EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?;
        let queue = Queue {
            dev: FakeDevice::new(*addrs),
            kick: kick.try_clone().map_err(io("dup"))?,
            call: call.try_clone().map_err(io("dup"))?,
            next_avail: 0,
            enabled: true,
        };
        let call = CallFd::new(call).map_err(io("epoll"))?;
        let epoll = &self.shared.epoll;
        let mut st = self.shared.lock();
        let slot = &mut st.queues[usize::from(index)];
        if let Some(old) = slot.take() {
            let _ = epoll.ctl(
                ControlOperation::Delete,
                old.kick.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        epoll
            .ctl(
                ControlOperation::Add,
                queue.kick.as_raw_fd(),
                EpollEvent::new(EventSet::IN, u64::from(index)),
            )
            .map_err(io("epoll_ctl"))?;
        *slot = Some(queue);
        Ok(QueueHandles {
            notifier: Notifier::eventfd(kick),
            call,
        })
    }

    fn stop_queue(&self, index: u16) -> Result<u16> {
        self.shared.check_alive()?;
        let mut st = self.shared.lock();
        let q = st
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchQueue { index })?;
        q.enabled = false;
        Ok(q.next_avail)
    }

    fn region_visible(&self, _region: RegionId) -> bool {
        true
    }

    fn is_alive(&self) -> bool {
        self.shared.is_alive()
    }

    fn shutdown(&self) {
        {
            let mut st = self.shared.lock();
            st.stopped = true;
            self.shared.alive.store(false, Ordering::Relaxed);
        }
        self.shared.wake();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for FakeBlk {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mem::{DmaDomain, Iova};
    use crate::split::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use crate::testing::write_mem;

    #[test]
    fn config_space_parses_back_to_the_config() {
        let mut cfg = FakeBlkConfig::new(1 << 20).queues(3);
        cfg.config.blk_size = 4096;
        cfg.config.opt_io_size = 8;
        cfg.config.max_write_zeroes_seg = 2;
        let c = BlkConfig::parse(&cfg.config_space(), u64::MAX);
        assert_eq!(c, cfg.config);
        assert_eq!(c.capacity, 2048);
        assert_eq!(c.num_queues, 3);
    }

    #[test]
    fn config_read_beyond_the_struct_fails() {
        let fake = FakeBlk::new(FakeBlkConfig::new(4096)).unwrap();
        let mut buf = [0u8; 8];
        assert!(fake.read_config(56, &mut buf).is_err());
        fake.read_config(0, &mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 8);
    }

    #[test]
    fn write_is_served_and_signalled() {
        let fake = FakeBlk::new(FakeBlkConfig::new(1 << 20)).unwrap();
        fake.set_driver_features(fake.device_features().unwrap())
            .unwrap();
        // A two-entry ring built by hand through the memfd, as a driver in another
        // process would: descriptors at 0, avail ring at 64, used ring at 128; request
        // header at 512, data at 1024, status at 1536.
        let mem = DmaDomain::global().alloc_zeroed(2048, 4096).unwrap();
        let base = mem.iova().0;
        let addrs = RingAddrs {
            size: 2,
            desc: Iova(base),
            avail: Iova(base + 64),
            used: Iova(base + 128),
        };
        let handles = fake.setup_queue(0, &addrs).unwrap();
        let hdr = blk::ReqHeader {
            type_: blk::req::OUT,
            reserved: 0,
            sector: 2,
        };
        write_mem(Iova(base + 512), &hdr.to_bytes());
        write_mem(Iova(base + 1024), &[0x5a; 512]);
        write_mem(Iova(base + 1536), &[0xff]);
        let desc = |addr: u64, len: u32, flags: u16| {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&(base + addr).to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d
        };
        // An indirect table of three at 256: header, data, status.
        let mut table = Vec::new();
        table.extend(desc(512, 16, VIRTQ_DESC_F_NEXT));
        table.extend(desc(1024, 512, VIRTQ_DESC_F_NEXT));
        table.extend(desc(1536, 1, VIRTQ_DESC_F_WRITE));
        table[14..16].copy_from_slice(&1u16.to_le_bytes());
        table[30..32].copy_from_slice(&2u16.to_le_bytes());
        write_mem(Iova(base + 256), &table);
        write_mem(Iova(base), &desc(256, 48, VIRTQ_DESC_F_INDIRECT));
        write_mem(Iova(base + 64 + 4), &0u16.to_le_bytes());
        write_mem(Iova(base + 64 + 2), &1u16.to_le_bytes());
        handles.notifier.notify();
        let used_idx = || u16::from_le_bytes(read_mem(Iova(base + 128 + 2), 2).try_into().unwrap());
        while used_idx() == 0 {
            assert!(handles.call.wait(Duration::from_secs(5)), "no completion");
        }
        let elem = read_mem(Iova(base + 128 + 4), 8);
        assert_eq!(elem, [0, 0, 0, 0, 1, 0, 0, 0], "id 0, len 1");
        assert_eq!(read_mem(Iova(base + 1536), 1), [blk::status::OK]);
        assert!(fake.disk()[1024..1536].iter().all(|&b| b == 0x5a));
        let stats = fake.stats();
        assert_eq!((stats.requests, stats.indirect), (1, 1));
        assert_eq!((stats.max_data_segs, stats.max_seg_len), (1, 512));
        assert_eq!(fake.stop_queue(0).unwrap(), 1);
    }

    #[test]
    fn dropping_the_device_ends_its_thread() {
        let fake = FakeBlk::new(FakeBlkConfig::new(4096)).unwrap();
        let shared = Arc::downgrade(&fake.shared);
        drop(fake);
        assert!(shared.upgrade().is_none(), "the device thread still runs");
    }

    #[test]
    fn reject_features_hides_features_ok() {
        let fake = FakeBlk::new(FakeBlkConfig::new(4096)).unwrap();
        fake.set_status(status::FEATURES_OK).unwrap();
        assert_eq!(fake.status().unwrap(), status::FEATURES_OK);
        fake.reject_features(true);
        assert_eq!(fake.status().unwrap(), 0);
        fake.reject_features(false);
        fake.set_driver_features(1 << 63).unwrap();
        assert_eq!(fake.status().unwrap(), 0, "an unoffered feature is refused");
    }

    #[test]
    fn killed_device_fails_every_call() {
        let fake = FakeBlk::new(FakeBlkConfig::new(4096)).unwrap();
        fake.kill();
        assert!(!fake.is_alive());
        assert!(matches!(fake.status(), Err(Error::Disconnected)));
        assert!(matches!(fake.device_features(), Err(Error::Disconnected)));
    }
}
