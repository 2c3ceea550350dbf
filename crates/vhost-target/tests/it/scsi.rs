//! The vhost-user-scsi target, driven by a small virtio-scsi test frontend built on
//! vbdev-virtio (vbdev has no virtio-scsi initiator yet).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vbdev_bdev::Bdev;
use vbdev_target::Fault;
use vbdev_target::vscsi::wire::{config, ctrl, event, features, response, tmf};
use vbdev_target::vscsi::{EVENT_QUEUE, ScsiHandle, ScsiTargetConfig, start_scsi};
use vbdev_virtio::transport::vhost_user::{VhostUser, VhostUserOptions};
use vbdev_virtio::{
    CallFd, DmaBuf, DmaDomain, Notifier, QueueConfig, Segment, SplitQueue, Transport, Used,
    VirtioDevice, features as vfeat,
};

use crate::util::{malloc_bdev, pattern, read};

const WAIT: Duration = Duration::from_secs(5);
const ALL_FEATURES: u64 = features::INOUT
    | features::HOTPLUG
    | features::CHANGE
    | vfeat::RING_EVENT_IDX
    | vfeat::RING_INDIRECT_DESC
    | vfeat::VERSION_1;

const CDB_SIZE: usize = 32;
const SENSE_SIZE: usize = 96;
const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;

/// One virtqueue of the test frontend.
struct Vq {
    vq: SplitQueue,
    notifier: Notifier,
    call: CallFd,
}

impl Vq {
    /// Adds a chain of `readable` then `writable` buffers and kicks the device.
    ///
    /// # Safety
    /// Every buffer must stay allocated and untouched until the chain's cookie comes
    /// back from [`Vq::wait`].
    unsafe fn submit(&mut self, readable: &[&DmaBuf], writable: &[&DmaBuf], cookie: u64) {
        let mut segs = Vec::new();
        for b in readable.iter().filter(|b| !b.is_empty()) {
            segs.push(Segment::readable(b.iova(), b.len() as u32));
        }
        for b in writable.iter().filter(|b| !b.is_empty()) {
            segs.push(Segment::writable(b.iova(), b.len() as u32));
        }
        // SAFETY: the buffers live and are not touched until the completion comes back
        // (this function's contract).
        unsafe { self.vq.try_add(&segs, cookie) }.expect("room in the ring");
        if self.vq.publish() {
            self.notifier.notify();
        }
    }

    /// The next completion, waiting at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<Used> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.vq.pop_used() {
                return Some(u);
            }
            assert!(self.vq.broken().is_none(), "{:?}", self.vq.broken());
            let left = deadline.checked_duration_since(Instant::now())?;
            self.vq.set_interrupts(true);
            if !self.vq.has_used() {
                self.call.wait(left.min(Duration::from_millis(20)));
            }
            self.vq.set_interrupts(false);
        }
    }
}

/// A fresh ring of 64 descriptors for queue `index`, set up on the device's transport.
fn new_ring(dev: &VirtioDevice, index: u16) -> Vq {
    let f = dev.features();
    let qcfg = QueueConfig {
        size: 64,
        event_idx: f & vfeat::RING_EVENT_IDX != 0,
        indirect_desc: f & vfeat::RING_INDIRECT_DESC != 0,
        indirect_max: 8,
        phys: None,
    };
    let vq = SplitQueue::new(DmaDomain::global(), qcfg).unwrap();
    let h = dev
        .transport()
        .setup_queue(index, &vq.addrs())
        .expect("queue setup");
    Vq {
        vq,
        notifier: h.notifier,
        call: h.call,
    }
}

/// What a command request got back.
struct CmdResp {
    used: u32,
    sense_len: u32,
    resid: u32,
    status: u8,
    response: u8,
    sense: Vec<u8>,
    data_in: Vec<u8>,
}

impl std::fmt::Debug for CmdResp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmdResp")
            .field("used", &self.used)
            .field("sense_len", &self.sense_len)
            .field("resid", &self.resid)
            .field("status", &self.status)
            .field("response", &self.response)
            .field("sense", &&self.sense[..18])
            .field("data_in_len", &self.data_in.len())
            .finish()
    }
}

impl CmdResp {
    /// (sense key, ASC, ASCQ) of fixed format sense data, checked to be fixed format.
    fn key_asc_ascq(&self) -> (u8, u8, u8) {
        assert_eq!(self.status, CHECK_CONDITION, "{self:?}");
        assert_eq!(self.sense_len, 18, "fixed format sense length");
        assert_eq!(self.sense[0] & 0x7F, 0x70, "fixed format, current");
        (self.sense[2] & 0x0F, self.sense[12], self.sense[13])
    }

    fn assert_good(&self) {
        assert_eq!(
            (self.response, self.status),
            (response::OK, GOOD),
            "{self:?}"
        );
    }
}

/// A received `struct virtio_scsi_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ev {
    event: u32,
    lun: [u8; 8],
    reason: u32,
}

/// A virtio-scsi driver on a vhost-user connection: control, event and request queues.
struct Frontend {
    dev: VirtioDevice,
    ctrl: Vq,
    events: Vq,
    requests: Vec<Vq>,
    /// Posted event buffers, by cookie; leaked so that they outlive the connection
    /// whatever the target does with them.
    event_bufs: Vec<&'static DmaBuf>,
    next: u64,
}

impl Frontend {
    fn connect(socket: &Path, wanted: u64) -> Self {
        let t = VhostUser::connect(socket, DmaDomain::global(), VhostUserOptions::default())
            .expect("vhost-user connect");
        let t: Arc<dyn Transport> = Arc::new(t);
        let dev = VirtioDevice::init(
            Arc::clone(&t),
            vbdev_virtio::device::DeviceType::Scsi,
            wanted,
            0,
        )
        .expect("features");
        let mut queues: Vec<Vq> = (0..t.num_queues()).map(|i| new_ring(&dev, i)).collect();
        assert!(queues.len() >= 3, "control, event and a request queue");
        dev.driver_ok().expect("DRIVER_OK");
        let requests = queues.split_off(2);
        let events = queues.pop().unwrap();
        let ctrl = queues.pop().unwrap();
        Self {
            dev,
            ctrl,
            events,
            requests,
            event_bufs: Vec::new(),
            next: 0,
        }
    }

    fn config(&self) -> [u8; config::LEN] {
        let mut c = [0u8; config::LEN];
        self.dev.transport().read_config(0, &mut c).unwrap();
        c
    }

    /// Posts `n` event buffers.
    fn post_event_buffers(&mut self, n: usize) {
        for _ in 0..n {
            let buf: &'static DmaBuf = Box::leak(Box::new(DmaBuf::alloc(16).unwrap()));
            let cookie = self.event_bufs.len() as u64;
            self.event_bufs.push(buf);
            // SAFETY: the buffer is leaked: it lives for the rest of the process and is
            // read only once its cookie is back.
            unsafe { self.events.submit(&[], &[buf], cookie) };
        }
    }

    /// Posts `n` event buffers and waits until the target holds `n` in all.
    fn post_and_wait(&mut self, h: &ScsiHandle, n: usize) {
        self.post_event_buffers(n);
        let deadline = Instant::now() + WAIT;
        while h.event_buffers() < n {
            assert!(Instant::now() < deadline, "event buffers not taken");
            std::thread::yield_now();
        }
    }

    /// The next event, within `WAIT`.
    fn next_event(&mut self) -> Ev {
        let u = self.events.wait(WAIT).expect("an event");
        self.event_in(u)
    }

    /// The event in the buffer `u` completed.
    fn event_in(&self, u: Used) -> Ev {
        assert_eq!(u.written, Ok(16), "event length");
        let b = &self.event_bufs[u.cookie as usize][..];
        let le = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&b[4..12]);
        Ev {
            event: le(0),
            lun,
            reason: le(12),
        }
    }

    /// Sends a raw chain on request queue `q` and returns its used length and the
    /// writable buffers' bytes.
    fn raw(&mut self, q: usize, readable: &[&[u8]], writable: &[usize]) -> (u32, Vec<Vec<u8>>) {
        let r: Vec<DmaBuf> = readable
            .iter()
            .filter(|d| !d.is_empty())
            .map(|d| crate::util::dma(d))
            .collect();
        let w: Vec<DmaBuf> = writable
            .iter()
            .map(|&n| crate::util::dma(&vec![0xEE; n]))
            .collect();
        let cookie = self.next;
        self.next += 1;
        let vq = &mut self.requests[q];
        // SAFETY: `r` and `w` live until the completion is taken below (or the test
        // panics, leaving them to the unwinding, after which nothing reads them).
        unsafe {
            vq.submit(
                &r.iter().collect::<Vec<_>>(),
                &w.iter().collect::<Vec<_>>(),
                cookie,
            )
        };
        let u = vq.wait(WAIT).expect("request completes");
        assert_eq!(u.cookie, cookie);
        let used = u.written.expect("used length within the chain");
        (used, w.iter().map(|b| b[..].to_vec()).collect())
    }

    /// Runs `cdb` on `lun_field` through request queue `q`.
    fn cmd_on(
        &mut self,
        q: usize,
        lun_field: [u8; 8],
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
    ) -> CmdResp {
        let mut hdr = vec![0u8; 19 + CDB_SIZE];
        hdr[..8].copy_from_slice(&lun_field);
        hdr[8..16].copy_from_slice(&self.next.to_le_bytes());
        hdr[19..19 + cdb.len()].copy_from_slice(cdb);
        let mut writable = vec![12 + SENSE_SIZE];
        if data_in_len > 0 {
            writable.push(data_in_len);
        }
        let (used, w) = self.raw(q, &[&hdr, data_out], &writable);
        let resp = &w[0];
        let le = |o: usize| u32::from_le_bytes([resp[o], resp[o + 1], resp[o + 2], resp[o + 3]]);
        CmdResp {
            used,
            sense_len: le(0),
            resid: le(4),
            status: resp[10],
            response: resp[11],
            sense: resp[12..].to_vec(),
            data_in: w.get(1).cloned().unwrap_or_default(),
        }
    }

    fn cmd(&mut self, target: u8, lun: u16, cdb: &[u8], out: &[u8], in_len: usize) -> CmdResp {
        self.cmd_on(0, lun_field(target, lun), cdb, out, in_len)
    }

    /// A task management function; returns the response byte.
    fn tmf(&mut self, subtype: u32, target: u8, lun: u16) -> u8 {
        let mut req = vec![0u8; 24];
        req[0..4].copy_from_slice(&ctrl::TMF.to_le_bytes());
        req[4..8].copy_from_slice(&subtype.to_le_bytes());
        req[8..16].copy_from_slice(&lun_field(target, lun));
        let w = self.control(&req, 1);
        w[0]
    }

    /// A control request; returns the writable bytes.
    fn control(&mut self, req: &[u8], resp_len: usize) -> Vec<u8> {
        let r = crate::util::dma(req);
        let w = crate::util::dma(&vec![0xEE; resp_len]);
        let cookie = self.next;
        self.next += 1;
        // SAFETY: `r` and `w` live until the completion is taken below.
        unsafe { self.ctrl.submit(&[&r], &[&w], cookie) };
        let u = self.ctrl.wait(WAIT).expect("control request completes");
        assert_eq!(u.cookie, cookie);
        assert_eq!(u.written, Ok(resp_len as u32));
        w[..].to_vec()
    }
}

/// The LUN field as Linux sends it: flat space addressing.
fn lun_field(target: u8, lun: u16) -> [u8; 8] {
    [1, target, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0]
}

fn inquiry(len: u8) -> [u8; 6] {
    [0x12, 0, 0, 0, len, 0]
}

fn read_capacity_16() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x10;
    c[13] = 32;
    c
}

fn rw10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

const TEST_UNIT_READY: [u8; 6] = [0; 6];

fn report_luns() -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA0;
    c[6..10].copy_from_slice(&4096u32.to_be_bytes());
    c
}

/// (last LBA + 1, block size) from READ CAPACITY(16) data.
fn capacity(r: &CmdResp) -> (u64, u32) {
    r.assert_good();
    let d = &r.data_in;
    let last = u64::from_be_bytes(d[0..8].try_into().unwrap());
    (last + 1, u32::from_be_bytes(d[8..12].try_into().unwrap()))
}

/// Two targets (0 and 1) of two LUNs (0 and 1) each, over malloc bdevs of distinct
/// sizes and fills.
struct Setup {
    handle: ScsiHandle,
    /// bdevs[target][lun].
    bdevs: Vec<Vec<Bdev>>,
    _dir: TempDir,
}

impl Setup {
    fn start(f: impl FnOnce(&mut ScsiTargetConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ScsiTargetConfig::new(dir.path().join("scsi.sock"));
        f(&mut cfg);
        let bdevs: Vec<Vec<Bdev>> = (0..2u8)
            .map(|t| {
                (0..2u16)
                    .map(|l| {
                        let i = u64::from(t) * 2 + u64::from(l);
                        malloc_bdev(&format!("m{t}{l}"), 2048 + 1024 * i, 512, 0x10 + i as u8)
                    })
                    .collect()
            })
            .collect();
        let targets = bdevs
            .iter()
            .enumerate()
            .map(|(t, luns)| {
                let luns = luns
                    .iter()
                    .enumerate()
                    .map(|(l, b)| (l as u16, b.clone()))
                    .collect();
                (t as u8, luns)
            })
            .collect();
        let handle = start_scsi(cfg, targets).expect("scsi target starts");
        Self {
            handle,
            bdevs,
            _dir: dir,
        }
    }

    fn connect(&self) -> Frontend {
        Frontend::connect(&self.handle.socket, ALL_FEATURES)
    }
}

/// INQUIRY, READ CAPACITY(16) and a WRITE(10) / READ(10) round trip on every LUN
/// through request queue `q`, checked on the bdevs.
fn round_trip_every_lun(s: &Setup, fe: &mut Frontend, q: usize, seed: u64) {
    for t in 0..2u8 {
        for l in 0..2u16 {
            let i = u64::from(t) * 2 + u64::from(l);
            let inq = fe.cmd_on(q, lun_field(t, l), &inquiry(96), &[], 96);
            inq.assert_good();
            assert_eq!(inq.data_in[0], 0x00, "connected direct access block device");
            assert_eq!(&inq.data_in[8..16], b"VBDEV   ");
            let cap = fe.cmd_on(q, lun_field(t, l), &read_capacity_16(), &[], 32);
            assert_eq!(capacity(&cap), (2048 + 1024 * i, 512), "target {t} lun {l}");
            // The untouched disk shows the LUN's own fill.
            let r = fe.cmd_on(q, lun_field(t, l), &rw10(0x28, 2000, 1), &[], 512);
            r.assert_good();
            assert!(r.data_in.iter().all(|&b| b == 0x10 + i as u8));
            let data = pattern(seed + i, 8 * 512);
            let lba = 100 + i as u32;
            let w = fe.cmd_on(q, lun_field(t, l), &rw10(0x2A, lba, 8), &data, 0);
            w.assert_good();
            assert_eq!(w.resid, 0);
            let r = fe.cmd_on(q, lun_field(t, l), &rw10(0x28, lba, 8), &[], data.len());
            r.assert_good();
            assert_eq!(r.resid, 0);
            assert_eq!(r.used as usize, 12 + SENSE_SIZE + data.len());
            assert!(r.data_in == data, "read-back of target {t} lun {l}");
            let mut ch = s.bdevs[usize::from(t)][usize::from(l)]
                .open_channel()
                .unwrap();
            assert!(
                read(&mut ch, u64::from(lba), data.len()) == data,
                "on the bdev"
            );
        }
    }
}

#[test]
fn inquiry_capacity_and_io_on_two_targets_of_two_luns() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    round_trip_every_lun(&s, &mut fe, 0, 1);
}

#[test]
fn config_space_and_features_reach_the_driver() {
    let s = Setup::start(|c| c.num_queues = 3);
    let fe = s.connect();
    assert_eq!(fe.dev.transport().num_queues(), 5);
    assert_eq!(fe.dev.features(), ALL_FEATURES);
    let c = fe.config();
    let le32 = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    let le16 = |o: usize| u16::from_le_bytes(c[o..o + 2].try_into().unwrap());
    assert_eq!(le32(config::NUM_QUEUES), 3);
    assert_eq!(le32(config::SEG_MAX), 126);
    assert_eq!(le32(config::MAX_SECTORS), 8192);
    assert_eq!(le32(config::CMD_PER_LUN), 128);
    assert_eq!(le32(config::EVENT_INFO_SIZE), 16);
    assert_eq!(le32(config::SENSE_SIZE), 96);
    assert_eq!(le32(config::CDB_SIZE), 32);
    assert_eq!(le16(config::MAX_CHANNEL), 0);
    assert_eq!(le16(config::MAX_TARGET), 255);
    assert_eq!(le32(config::MAX_LUN), 16383);
}

#[test]
fn report_luns_lists_the_luns_of_the_target() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    let r = fe.cmd(1, 0, &report_luns(), &[], 4096);
    r.assert_good();
    assert_eq!(&r.data_in[..4], &16u32.to_be_bytes(), "two entries");
    assert_eq!(&r.data_in[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&r.data_in[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r.resid, 4096 - 24);
}

#[test]
fn unknown_target_or_lun_field_is_bad_target() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    let r = fe.cmd(7, 0, &inquiry(36), &[], 36);
    assert_eq!(r.response, response::BAD_TARGET);
    // Byte 0 must be 1 (§5.6.6.1).
    let r = fe.cmd_on(0, [0, 0, 0x40, 0, 0, 0, 0, 0], &inquiry(36), &[], 36);
    assert_eq!(r.response, response::BAD_TARGET);
    // The target still serves its LUNs.
    fe.cmd(0, 0, &inquiry(36), &[], 36).assert_good();
}

#[test]
fn missing_lun_answers_inquiry_with_7f_and_other_commands_with_check_condition() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    let r = fe.cmd(0, 9, &inquiry(36), &[], 36);
    r.assert_good();
    assert_eq!(r.data_in[0], 0x7F);
    let r = fe.cmd(0, 9, &TEST_UNIT_READY, &[], 0);
    assert_eq!(r.response, response::OK);
    assert_eq!(r.key_asc_ascq(), (0x5, 0x25, 0x00));
}

#[test]
fn write_to_a_read_only_lun_is_data_protect_with_sense_in_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.img");
    std::fs::write(&path, vec![0x5Au8; 1 << 20]).unwrap();
    let ro = vbdev_bdev::file::open(
        "ro",
        &path,
        vbdev_bdev::file::FileOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let h = start_scsi(
        ScsiTargetConfig::new(dir.path().join("s.sock")),
        vec![(3, vec![(0, ro)])],
    )
    .unwrap();
    let mut fe = Frontend::connect(&h.socket, ALL_FEATURES);
    let w = fe.cmd(3, 0, &rw10(0x2A, 0, 1), &[1u8; 512], 0);
    assert_eq!(w.response, response::OK);
    assert_eq!(
        w.key_asc_ascq(),
        (0x7, 0x27, 0x00),
        "DATA PROTECT, WRITE PROTECTED"
    );
    assert_eq!(w.resid, 512, "nothing written");
    assert!(
        w.sense[18..].iter().all(|&b| b == 0),
        "rest of sense zeroed"
    );
    let r = fe.cmd(3, 0, &rw10(0x28, 0, 1), &[], 512);
    r.assert_good();
    assert!(r.data_in.iter().all(|&b| b == 0x5A));
}

#[test]
fn lun_reset_on_the_control_queue_gives_a_unit_attention() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    // FUNCTION COMPLETE, as QEMU's and SPDK's targets answer a reset (SPDK's initiator
    // fails a reset answered FUNCTION_SUCCEEDED). See: issue 15.
    assert_eq!(fe.tmf(tmf::LOGICAL_UNIT_RESET, 0, 1), response::OK);
    let r = fe.cmd(0, 1, &TEST_UNIT_READY, &[], 0);
    assert_eq!(r.key_asc_ascq(), (0x6, 0x29, 0x03));
    fe.cmd(0, 1, &TEST_UNIT_READY, &[], 0).assert_good();
    // The other LUN was not reset.
    fe.cmd(0, 0, &TEST_UNIT_READY, &[], 0).assert_good();

    assert_eq!(
        fe.tmf(tmf::LOGICAL_UNIT_RESET, 0, 9),
        response::INCORRECT_LUN
    );
    assert_eq!(fe.tmf(tmf::LOGICAL_UNIT_RESET, 9, 0), response::BAD_TARGET);
    assert_eq!(fe.tmf(tmf::ABORT_TASK, 0, 0), response::OK);
    assert_eq!(fe.tmf(tmf::ABORT_TASK_SET, 0, 0), response::OK);
    assert_eq!(fe.tmf(tmf::CLEAR_ACA, 0, 0), response::FUNCTION_REJECTED);
    assert_eq!(fe.tmf(99, 0, 0), response::FUNCTION_REJECTED);

    assert_eq!(fe.tmf(tmf::I_T_NEXUS_RESET, 1, 0), response::OK);
    for l in 0..2 {
        let r = fe.cmd(1, l, &TEST_UNIT_READY, &[], 0);
        assert_eq!(r.key_asc_ascq(), (0x6, 0x29, 0x00), "lun {l}");
    }

    // Asynchronous notification: none supported.
    let mut an = vec![0u8; 16];
    an[0..4].copy_from_slice(&ctrl::AN_QUERY.to_le_bytes());
    an[4..12].copy_from_slice(&lun_field(0, 0));
    an[12..16].copy_from_slice(&0x7Eu32.to_le_bytes());
    assert_eq!(fe.control(&an, 5), [0, 0, 0, 0, response::OK]);
    an[0..4].copy_from_slice(&ctrl::AN_SUBSCRIBE.to_le_bytes());
    assert_eq!(fe.control(&an, 5), [0, 0, 0, 0, response::OK]);
    // A TMF cut short still gets a response.
    let mut short = vec![0u8; 8];
    short[0..4].copy_from_slice(&ctrl::TMF.to_le_bytes());
    assert_eq!(fe.control(&short, 1), [response::FAILURE]);
}

#[test]
fn hot_add_and_hot_remove_arrive_on_the_event_queue() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    fe.post_and_wait(&s.handle, 4);
    let extra = malloc_bdev("hot", 4096, 512, 0x77);
    s.handle.add_lun(0, 5, &extra).unwrap();
    assert_eq!(
        fe.next_event(),
        Ev {
            event: event::TRANSPORT_RESET,
            lun: [1, 0, 0, 5, 0, 0, 0, 0],
            reason: event::RESET_RESCAN,
        }
    );
    let r = fe.cmd(0, 5, &rw10(0x28, 0, 1), &[], 512);
    r.assert_good();
    assert!(r.data_in.iter().all(|&b| b == 0x77));
    // The LUNs already there learn that the inventory changed.
    let r = fe.cmd(0, 0, &TEST_UNIT_READY, &[], 0);
    assert_eq!(r.key_asc_ascq(), (0x6, 0x3F, 0x0E));
    let r = fe.cmd(0, 0, &report_luns(), &[], 4096);
    assert_eq!(&r.data_in[..4], &24u32.to_be_bytes());

    // A LUN above 255 is sent in flat space form, as REPORT LUNS lists it.
    s.handle.add_lun(1, 300, &extra).unwrap();
    assert_eq!(fe.next_event().lun, [1, 1, 0x41, 0x2C, 0, 0, 0, 0]);

    s.handle.remove_lun(0, 5).unwrap();
    assert_eq!(
        fe.next_event(),
        Ev {
            event: event::TRANSPORT_RESET,
            lun: [1, 0, 0, 5, 0, 0, 0, 0],
            reason: event::RESET_REMOVED,
        }
    );
    assert_eq!(fe.cmd(0, 5, &inquiry(36), &[], 36).data_in[0], 0x7F);
    assert!(s.handle.remove_lun(0, 5).is_err(), "already gone");
    assert_eq!(s.handle.luns(), vec![(0, vec![0, 1]), (1, vec![0, 1, 300])]);
}

#[test]
fn capacity_change_arrives_as_param_change_then_a_unit_attention() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    fe.post_and_wait(&s.handle, 2);
    s.handle.set_capacity(1, 0, 1000).unwrap();
    assert_eq!(
        fe.next_event(),
        Ev {
            event: event::PARAM_CHANGE,
            lun: [1, 1, 0, 0, 0, 0, 0, 0],
            reason: 0x2A | 0x09 << 8,
        }
    );
    let r = fe.cmd(1, 0, &read_capacity_16(), &[], 32);
    assert_eq!(r.key_asc_ascq(), (0x6, 0x2A, 0x09));
    let r = fe.cmd(1, 0, &read_capacity_16(), &[], 32);
    assert_eq!(capacity(&r), (1000, 512));
    let r = fe.cmd(1, 0, &rw10(0x28, 1000, 1), &[], 512);
    assert_eq!(
        r.key_asc_ascq(),
        (0x5, 0x21, 0x00),
        "beyond the new capacity"
    );
    assert!(s.handle.set_capacity(1, 0, 1 << 40).is_err());
    assert!(s.handle.set_capacity(1, 9, 10).is_err());
}

#[test]
fn an_event_without_a_buffer_is_reported_as_missed() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    let extra = malloc_bdev("miss", 64, 512, 0);
    s.handle.add_lun(0, 2, &extra).unwrap();
    // The buffer posted next is filled at once.
    fe.post_event_buffers(1);
    assert_eq!(
        fe.next_event(),
        Ev {
            event: event::NO_EVENT | event::EVENTS_MISSED,
            lun: [0; 8],
            reason: 0,
        }
    );
    fe.post_and_wait(&s.handle, 1);
    s.handle.remove_lun(0, 2).unwrap();
    let e = fe.next_event();
    assert_eq!(
        (e.event, e.reason),
        (event::TRANSPORT_RESET, event::RESET_REMOVED)
    );
    // Once reported, the flag is clear; an event lost now sets it on the next one.
    s.handle.add_lun(0, 2, &extra).unwrap();
    s.handle.set_capacity(0, 2, 32).ok();
    fe.post_event_buffers(1);
    assert_eq!(
        fe.next_event().event,
        event::NO_EVENT | event::EVENTS_MISSED
    );
}

/// A guest resetting the device (QEMU: `GET_VRING_BASE` on every queue, then new rings
/// on the same connection) drops the event buffers it had posted: the target gives
/// them back when the queue stops, and the next event goes into a buffer of the new
/// ring, never into the old one.
#[test]
fn a_stopped_event_queue_gives_its_buffers_back_and_a_new_ring_gets_the_events() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    fe.post_and_wait(&s.handle, 4);
    s.handle
        .add_lun(0, 6, &malloc_bdev("used", 64, 512, 0))
        .unwrap();
    assert_eq!(fe.next_event().reason, event::RESET_RESCAN);
    assert_eq!(s.handle.event_buffers(), 3);
    let base = fe.dev.transport().stop_queue(EVENT_QUEUE).unwrap();
    assert_eq!(
        base, 1,
        "one buffer used: the base is that of the first one held"
    );
    assert_eq!(s.handle.event_buffers(), 0);

    // The driver sets up a new event ring and posts new buffers: only those are held,
    // and the next event goes into one of them.
    fe.events = new_ring(&fe.dev, EVENT_QUEUE);
    let first_new = fe.event_bufs.len() as u64;
    fe.post_and_wait(&s.handle, 2);
    assert_eq!(
        s.handle.event_buffers(),
        2,
        "only the new ring's buffers are held"
    );
    let extra = malloc_bdev("reset", 64, 512, 0x42);
    s.handle.add_lun(0, 7, &extra).unwrap();
    let u = fe.events.wait(WAIT).expect("an event on the new ring");
    assert_eq!(
        u.cookie, first_new,
        "not the new ring's first buffer: {u:?}"
    );
    assert_eq!(
        fe.event_in(u),
        Ev {
            event: event::TRANSPORT_RESET,
            lun: [1, 0, 0, 7, 0, 0, 0, 0],
            reason: event::RESET_RESCAN,
        }
    );

    // An event while the ring is stopped is missed, and reported in the first buffer
    // of the ring that follows.
    assert_eq!(fe.dev.transport().stop_queue(EVENT_QUEUE).unwrap(), 1);
    s.handle.remove_lun(0, 7).unwrap();
    fe.events = new_ring(&fe.dev, EVENT_QUEUE);
    fe.post_event_buffers(1);
    assert_eq!(
        fe.next_event(),
        Ev {
            event: event::NO_EVENT | event::EVENTS_MISSED,
            lun: [0; 8],
            reason: 0,
        }
    );
    // The other queues carried on.
    fe.cmd(0, 0, &inquiry(36), &[], 36).assert_good();
}

#[test]
fn hotplug_events_need_the_hotplug_feature() {
    let s = Setup::start(|_| {});
    let mut fe = Frontend::connect(&s.handle.socket, ALL_FEATURES & !features::HOTPLUG);
    fe.post_and_wait(&s.handle, 2);
    let extra = malloc_bdev("nohp", 64, 512, 0);
    s.handle.add_lun(0, 3, &extra).unwrap();
    s.handle.set_capacity(0, 3, 10).unwrap();
    // The first event is the capacity change: the hot-add was not sent, nor missed.
    let e = fe.next_event();
    assert_eq!(e.event, event::PARAM_CHANGE);
    assert_eq!(e.lun, [1, 0, 0, 3, 0, 0, 0, 0]);
}

#[test]
fn scsi_sense_fault_ends_one_command_in_that_check_condition() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    fe.post_event_buffers(2);
    s.handle.faults.inject(Fault::ScsiSense {
        key: 0x3,
        asc: 0x11,
        ascq: 0x00,
    });
    let r = fe.cmd(0, 0, &rw10(0x28, 0, 1), &[], 512);
    assert_eq!(r.response, response::OK);
    assert_eq!(r.key_asc_ascq(), (0x3, 0x11, 0x00));
    assert_eq!(r.resid, 512, "no data");
    fe.cmd(0, 0, &rw10(0x28, 0, 1), &[], 512).assert_good();
}

#[test]
fn short_buffers_get_overrun_and_malformed_chains_never_hang() {
    let s = Setup::start(|_| {});
    let mut fe = s.connect();
    let r = fe.cmd(0, 0, &rw10(0x28, 0, 8), &[], 512);
    assert_eq!(r.response, response::OVERRUN);
    // A header cut short, with room for the response: FAILURE.
    let (used, w) = fe.raw(
        0,
        &[&[1u8, 0, 0x40, 0, 0, 0, 0, 0, 0, 0]],
        &[12 + SENSE_SIZE],
    );
    assert_eq!(used as usize, 12 + SENSE_SIZE);
    assert_eq!(w[0][11], response::FAILURE);
    // No room for the response: given back with nothing written.
    let hdr = vec![0u8; 19 + CDB_SIZE];
    let (used, _) = fe.raw(0, &[&hdr], &[8]);
    assert_eq!(used, 0);
    let (used, _) = fe.raw(0, &[&hdr], &[]);
    assert_eq!(used, 0);
    // The queue still serves.
    fe.cmd(0, 0, &TEST_UNIT_READY, &[], 0).assert_good();
}

#[test]
fn polling_mode_serves_two_request_queues() {
    let s = Setup::start(|c| {
        c.poll = true;
        c.num_queues = 2;
    });
    let mut fe = s.connect();
    assert_eq!(fe.requests.len(), 2);
    fe.post_and_wait(&s.handle, 1);
    round_trip_every_lun(&s, &mut fe, 0, 10);
    round_trip_every_lun(&s, &mut fe, 1, 20);
    // The event queue is served on kicks even in polling mode.
    s.handle.set_capacity(0, 1, 100).unwrap();
    assert_eq!(fe.next_event().event, event::PARAM_CHANGE);
}

#[test]
fn a_second_frontend_is_served_after_the_first_disconnects() {
    let s = Setup::start(|_| {});
    let data = pattern(42, 4096);
    {
        let mut a = s.connect();
        a.post_event_buffers(2);
        a.cmd(1, 1, &rw10(0x2A, 7, 8), &data, 0).assert_good();
        assert_eq!(s.handle.connections(), 1);
    }
    let deadline = Instant::now() + WAIT;
    while s.handle.is_connected() {
        assert!(Instant::now() < deadline, "first frontend not noticed gone");
        std::thread::yield_now();
    }
    // Events raised with nobody connected go nowhere.
    let extra = malloc_bdev("between", 64, 512, 0);
    s.handle.add_lun(1, 4, &extra).unwrap();
    let mut b = s.connect();
    // The unit attention of that hot-add waits for the next initiator.
    let r = b.cmd(1, 1, &TEST_UNIT_READY, &[], 0);
    assert_eq!(r.key_asc_ascq(), (0x6, 0x3F, 0x0E));
    let r = b.cmd(1, 1, &rw10(0x28, 7, 8), &[], data.len());
    r.assert_good();
    assert!(r.data_in == data);
    assert_eq!(s.handle.connections(), 2);
    // The new connection's event queue works, with nothing missed from before.
    b.post_and_wait(&s.handle, 1);
    s.handle.remove_lun(1, 4).unwrap();
    let e = b.next_event();
    assert_eq!(
        (e.event, e.reason),
        (event::TRANSPORT_RESET, event::RESET_REMOVED)
    );
}
