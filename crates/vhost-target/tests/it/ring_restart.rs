//! Ring stop and restart in the message order QEMU 7.2 uses, driven by a raw vhost-user
//! frontend (the `vhost` crate's) so the order is the test's, not vbdev's initiator's:
//! vbdev's initiator sends `SET_VRING_CALL` before `SET_VRING_KICK` and
//! `SET_VRING_ENABLE`, QEMU sends it after them when it starts a vhost-user-scsi device.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::util::Target;

const WAIT: Duration = Duration::from_secs(5);
/// The frontend's memory: one region at guest address 0.
const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTIO_BLK_T_IN: u32 = 0;

/// Where one ring and its one request live in the frontend's memory.
#[derive(Clone, Copy)]
struct Layout {
    desc: u64,
    avail: u64,
    used: u64,
    /// virtio-blk request header, 512-byte data buffer, status byte.
    header: u64,
    data: u64,
    status: u64,
}

impl Layout {
    /// A ring and a request in the 64 KiB at `base`.
    fn at(base: u64) -> Self {
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            header: base + 0x3000,
            data: base + 0x4000,
            status: base + 0x5000,
        }
    }

    fn config(&self) -> VringConfigData {
        VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: self.desc,
            used_ring_addr: self.used,
            avail_ring_addr: self.avail,
            log_addr: None,
        }
    }
}

/// A vhost-user frontend with the frontend's memory shared with the target.
struct RawFrontend {
    fe: Frontend,
    mem: GuestMemoryMmap<()>,
}

impl RawFrontend {
    /// Handshake as QEMU does it: features with `VHOST_USER_F_PROTOCOL_FEATURES` (so
    /// rings start disabled), no protocol features (no reply acks: each message is
    /// fire-and-forget, as QEMU's `SET_VRING_CALL` is), one memory region.
    fn connect(t: &Target, queues: u64) -> Self {
        let fe = Frontend::connect(t.socket(), queues).expect("connect");
        let memfd = rustix::fs::memfd_create("vbdev-ring-restart", rustix::fs::MemfdFlags::CLOEXEC)
            .expect("memfd");
        let file = File::from(memfd);
        file.set_len(MEM_SIZE as u64).unwrap();
        let fd = file.as_raw_fd();
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .expect("frontend memory");
        let mut fe = fe;
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_ne!(offered & protocol, 0);
        fe.set_features(VIRTIO_F_VERSION_1 | protocol).unwrap();
        fe.get_protocol_features().unwrap();
        fe.set_protocol_features(VhostUserProtocolFeatures::empty())
            .unwrap();
        // The struct has two more fields under the `vhost` crate's `xen` feature.
        #[allow(clippy::needless_update)]
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            // The target translates ring addresses with it: frontend addresses equal
            // guest addresses here.
            userspace_addr: 0,
            mmap_offset: 0,
            mmap_handle: fd,
            ..Default::default()
        };
        fe.set_mem_table(&[region]).unwrap();
        drop(file);
        Self { fe, mem }
    }

    /// Writes a fresh ring at `l` with one virtio-blk read of sector 0 on its avail
    /// ring (a 3-descriptor chain: header, data, status).
    fn publish_read(&self, l: &Layout) {
        let m = &self.mem;
        m.write_slice(&[0u8; 0x6000], GuestAddress(l.desc)).unwrap();
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        m.write_slice(&header, GuestAddress(l.header)).unwrap();
        m.write_obj(0xFFu8, GuestAddress(l.status)).unwrap();
        let descs = [
            (l.header, 16u32, VIRTQ_DESC_F_NEXT, 1u16),
            (l.data, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2),
            (l.status, 1, VIRTQ_DESC_F_WRITE, 0),
        ];
        for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            // virtq_desc: addr le64, len le32, flags le16, next le16 (virtio 1.2 §2.7.5).
            let d = GuestAddress(l.desc + 16 * i as u64);
            m.write_obj(addr.to_le(), d).unwrap();
            m.write_obj(len.to_le(), GuestAddress(d.0 + 8)).unwrap();
            m.write_obj(flags.to_le(), GuestAddress(d.0 + 12)).unwrap();
            m.write_obj(next.to_le(), GuestAddress(d.0 + 14)).unwrap();
        }
        // virtq_avail: flags, idx, ring[0] = head 0; idx stored last (§2.7.13).
        m.write_obj(0u16, GuestAddress(l.avail + 4)).unwrap();
        m.store(1u16.to_le(), GuestAddress(l.avail + 2), Ordering::Release)
            .unwrap();
    }

    /// Waits until the target has put the request on the used ring, and checks it.
    fn wait_used(&self, l: &Layout) {
        let deadline = Instant::now() + WAIT;
        loop {
            let idx: u16 = self
                .mem
                .load(GuestAddress(l.used + 2), Ordering::Acquire)
                .unwrap();
            if u16::from_le(idx) == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the request was not completed");
            std::thread::yield_now();
        }
        let id: u32 = self.mem.read_obj(GuestAddress(l.used + 4)).unwrap();
        assert_eq!(u32::from_le(id), 0, "used id");
        let status: u8 = self.mem.read_obj(GuestAddress(l.status)).unwrap();
        assert_eq!(status, 0, "VIRTIO_BLK_S_OK");
    }
}

/// Whether `fd` (an eventfd) becomes readable within `timeout`.
fn signalled(fd: &EventFd, timeout: Duration) -> bool {
    let ep = Epoll::new().unwrap();
    ep.ctl(
        ControlOperation::Add,
        fd.as_raw_fd(),
        EpollEvent::new(EventSet::IN, 0),
    )
    .unwrap();
    let mut ev = [EpollEvent::default(); 1];
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    ep.wait(ms, &mut ev).unwrap() == 1
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

// See: scripts/pci-guest/rebind-stress.sh (about 1 boot in 8 hung in the guest's SCSI
// scan after an unbind/rebind of the vhost-user-scsi function).
#[test]
fn regression_completion_before_set_vring_call_is_signalled_on_the_new_call_fd() {
    let t = Target::start(64, 512, 0x5A, |c| c.num_queues = 1);
    let mut f = RawFrontend::connect(&t, 1);

    // The ring's first life, QEMU's start order: NUM, BASE, ADDR, KICK, ENABLE, CALL.
    let first = Layout::at(0x10000);
    let kick = eventfd();
    f.fe.set_vring_num(0, QUEUE_SIZE).unwrap();
    f.fe.set_vring_base(0, 0).unwrap();
    f.fe.set_vring_addr(0, &first.config()).unwrap();
    f.fe.set_vring_kick(0, &kick).unwrap();
    f.fe.set_vring_enable(0, true).unwrap();
    let call = eventfd();
    f.fe.set_vring_call(0, &call).unwrap();
    f.publish_read(&first);
    kick.write(1).unwrap();
    f.wait_used(&first);
    assert!(
        signalled(&call, WAIT),
        "first ring: no used-buffer notification"
    );

    // The guest resets the device: QEMU disables and stops the ring.
    f.fe.set_vring_enable(0, false).unwrap();
    assert_eq!(f.fe.get_vring_base(0).unwrap(), 1);

    // The driver binds again: a new ring. QEMU hands over a kick eventfd that is
    // already signalled, enables the ring, and sends the call eventfd only after that;
    // the guest runs meanwhile, so its first request can complete before the call
    // eventfd arrives.
    let second = Layout::at(0x20000);
    f.publish_read(&second);
    let kick = eventfd();
    kick.write(1).unwrap();
    f.fe.set_vring_num(0, QUEUE_SIZE).unwrap();
    f.fe.set_vring_base(0, 0).unwrap();
    f.fe.set_vring_addr(0, &second.config()).unwrap();
    f.fe.set_vring_kick(0, &kick).unwrap();
    f.fe.set_vring_enable(0, true).unwrap();
    f.wait_used(&second);
    let call = eventfd();
    f.fe.set_vring_call(0, &call).unwrap();
    assert!(
        signalled(&call, WAIT),
        "the completion published before SET_VRING_CALL was never signalled"
    );
    let data = f
        .mem
        .read_obj::<[u8; 16]>(GuestAddress(second.data))
        .unwrap();
    assert_eq!(data, [0x5A; 16]);
}

impl RawFrontend {
    /// Starts ring `q` at `l` in the order QEMU uses (call eventfd last), from avail
    /// position `base`.
    fn start_ring(&mut self, q: usize, l: &Layout, base: u16) -> (EventFd, EventFd) {
        let kick = eventfd();
        self.fe.set_vring_num(q, QUEUE_SIZE).unwrap();
        self.fe.set_vring_base(q, base).unwrap();
        self.fe.set_vring_addr(q, &l.config()).unwrap();
        self.fe.set_vring_kick(q, &kick).unwrap();
        self.fe.set_vring_enable(q, true).unwrap();
        let call = eventfd();
        self.fe.set_vring_call(q, &call).unwrap();
        (kick, call)
    }

    /// Puts request `k` (a virtio-blk read of sector `k` into its own 512 bytes, with
    /// its own header and status) on the ring at `l`, which has requests `0..k` already.
    fn push_read(&self, l: &Layout, k: u16) {
        let m = &self.mem;
        let kk = u64::from(k);
        let (header, data, status) = (l.header + 32 * kk, l.data + 512 * kk, l.status + kk);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&kk.to_le_bytes());
        m.write_slice(&h, GuestAddress(header)).unwrap();
        m.write_slice(&[0u8; 512], GuestAddress(data)).unwrap();
        m.write_obj(0xFFu8, GuestAddress(status)).unwrap();
        let first = 3 * k;
        let descs = [
            (header, 16u32, VIRTQ_DESC_F_NEXT, first + 1),
            (data, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, first + 2),
            (status, 1, VIRTQ_DESC_F_WRITE, 0),
        ];
        for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            let d = GuestAddress(l.desc + 16 * (u64::from(first) + i as u64));
            m.write_obj(addr.to_le(), d).unwrap();
            m.write_obj(len.to_le(), GuestAddress(d.0 + 8)).unwrap();
            m.write_obj(flags.to_le(), GuestAddress(d.0 + 12)).unwrap();
            m.write_obj(next.to_le(), GuestAddress(d.0 + 14)).unwrap();
        }
        m.write_obj(first.to_le(), GuestAddress(l.avail + 4 + 2 * kk))
            .unwrap();
        m.store(
            (k + 1).to_le(),
            GuestAddress(l.avail + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// The ring's used.idx.
    fn used_idx(&self, l: &Layout) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(l.used + 2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// Waits until requests `0..n` of the ring at `l` are on its used ring, and checks
    /// the last one.
    fn wait_reads(&self, l: &Layout, n: u16) {
        let deadline = Instant::now() + WAIT;
        while self.used_idx(l) != n {
            assert!(Instant::now() < deadline, "request {} not completed", n - 1);
            std::thread::yield_now();
        }
        let k = n - 1;
        let elem = l.used + 4 + 8 * u64::from(k % QUEUE_SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
        assert_eq!(u32::from_le(id), 3 * u32::from(k), "used id");
        let status: u8 = self
            .mem
            .read_obj(GuestAddress(l.status + u64::from(k)))
            .unwrap();
        assert_eq!(status, 0, "VIRTIO_BLK_S_OK");
        let data = self
            .mem
            .read_obj::<[u8; 16]>(GuestAddress(l.data + 512 * u64::from(k)))
            .unwrap();
        assert_eq!(data, [0x5A; 16]);
    }
}

/// One poller serves both rings; one is stopped (`GET_VRING_BASE`) and restarted while
/// the other keeps being served, and the restarted ring goes on where it stopped.
#[test]
fn a_ring_stopped_and_restarted_while_another_ring_of_its_poller_keeps_running() {
    let t = Target::start(64, 512, 0x5A, |c| {
        c.num_queues = 2;
        c.poll = true;
    });
    let mut f = RawFrontend::connect(&t, 2);
    let (a, b) = (Layout::at(0x10000), Layout::at(0x20000));
    f.mem
        .write_slice(&[0u8; 0x6000], GuestAddress(a.desc))
        .unwrap();
    f.mem
        .write_slice(&[0u8; 0x6000], GuestAddress(b.desc))
        .unwrap();
    let _ring_a = f.start_ring(0, &a, 0);
    let _ring_b = f.start_ring(1, &b, 0);
    f.push_read(&a, 0);
    f.push_read(&b, 0);
    f.wait_reads(&a, 1);
    f.wait_reads(&b, 1);

    // Ring 0 stops; ring 1 is still served.
    f.fe.set_vring_enable(0, false).unwrap();
    assert_eq!(f.fe.get_vring_base(0).unwrap(), 1);
    f.push_read(&a, 1);
    f.push_read(&b, 1);
    f.wait_reads(&b, 2);
    f.push_read(&b, 2);
    f.wait_reads(&b, 3);
    assert_eq!(f.used_idx(&a), 1, "a stopped ring is not served");

    // Ring 0 restarts from where it stopped: the request published meanwhile is served.
    let _ring_a = f.start_ring(0, &a, 1);
    f.wait_reads(&a, 2);
    f.push_read(&a, 2);
    f.push_read(&b, 3);
    f.wait_reads(&a, 3);
    f.wait_reads(&b, 4);
}
