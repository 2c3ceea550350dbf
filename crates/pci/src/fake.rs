//! A fake modern virtio-pci function: config-space bytes with virtio capabilities
//! ([`ConfigSpaceBuilder`]) and an in-memory register model behind [`PciBars`]
//! ([`FakePciDevice`]).
//!
//! The model is strict where the driver has rules: every common-configuration access
//! must hit a field at its own width (§4.1.3.1), read-only fields refuse writes
//! (§4.1.4.3.2), `queue_enable` refuses 0, and a doorbell must be a 16-bit write. A
//! broken rule is a [`PciError::BadAccess`], so a driver bug fails the test that made it.
//! It misbehaves on command: a reset that takes a number of reads to complete, a config
//! space that changes in the middle of a read, MSI-X vectors it refuses, a queue that is
//! unavailable, and surprise removal (every read returns all ones).
#![forbid(unsafe_code)]

use std::sync::{Mutex, MutexGuard};

use super::{
    BarIndex, CfgType, NO_VECTOR, PciBars, PciError, Result, VIRTIO_VENDOR_ID, common_cfg, header,
};
use vbdev_virtio::device::{features as vfeat, status};

/// The BAR that holds every virtio structure, as in QEMU.
pub const BAR: u8 = 4;
/// Size of that BAR.
pub const BAR_LEN: u64 = 0x4000;
/// Offset of the common configuration.
pub const COMMON_OFFSET: u32 = 0x0000;
/// Offset of the ISR status byte.
pub const ISR_OFFSET: u32 = 0x1000;
/// Offset of the device-specific configuration.
pub const DEVICE_OFFSET: u32 = 0x2000;
/// Offset of the notification structure.
pub const NOTIFY_OFFSET: u32 = 0x3000;
/// Length given for ISR, device and notify structures.
pub const STRUCT_LEN: u32 = 0x1000;
/// The BAR of the MSI-X table.
pub const MSIX_BAR: u8 = 1;

/// Builds a configuration space with a capability list, for tests of the parser.
///
/// Capabilities are placed one after another from 0x40, dword aligned, and linked in
/// the order they are added. Poke the bytes of [`Self::build`]'s result to make them
/// malicious.
#[derive(Debug, Clone)]
pub struct ConfigSpaceBuilder {
    bytes: Vec<u8>,
    next: usize,
    last: Option<usize>,
}

impl ConfigSpaceBuilder {
    /// A 256-byte type 0 header with vendor 0x1af4, `device`, revision 1, subsystem
    /// 0x1af4:0x1100, and an empty capability list.
    pub fn new(device: u16) -> Self {
        let mut bytes = vec![0u8; header::CAP_SPACE_END];
        bytes[header::VENDOR_ID..][..2].copy_from_slice(&VIRTIO_VENDOR_ID.to_le_bytes());
        bytes[header::DEVICE_ID..][..2].copy_from_slice(&device.to_le_bytes());
        bytes[header::REVISION_ID] = 1;
        bytes[header::SUBSYSTEM_VENDOR_ID..][..2].copy_from_slice(&VIRTIO_VENDOR_ID.to_le_bytes());
        bytes[header::SUBSYSTEM_ID..][..2].copy_from_slice(&0x1100u16.to_le_bytes());
        Self {
            bytes,
            next: header::LEN,
            last: None,
        }
    }

    /// Makes the space 4096 bytes long (PCI Express).
    pub fn extended(mut self) -> Self {
        self.bytes.resize(4096, 0);
        self
    }

    /// Appends a capability whose body (after ID and next pointer) is `body`.
    ///
    /// # Panics
    /// When the capability space is full.
    pub fn raw_cap(mut self, id: u8, body: &[u8]) -> Self {
        let at = self.next;
        let len = 2 + body.len();
        assert!(at + len <= header::CAP_SPACE_END, "capability space full");
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..at + len].copy_from_slice(body);
        match self.last {
            Some(prev) => self.bytes[prev + 1] = at as u8,
            None => self.bytes[header::CAP_PTR] = at as u8,
        }
        let status =
            u16::from_le_bytes([self.bytes[header::STATUS], self.bytes[header::STATUS + 1]])
                | header::STATUS_CAP_LIST;
        self.bytes[header::STATUS..][..2].copy_from_slice(&status.to_le_bytes());
        self.last = Some(at);
        self.next = (at + len).next_multiple_of(4);
        self
    }

    /// Appends a `struct virtio_pci_cap` (16 bytes) plus `extra` bytes, with `cap_len`
    /// covering both.
    pub fn virtio_cap_with(
        self,
        cfg_type: CfgType,
        bar: u8,
        offset: u32,
        length: u32,
        extra: &[u8],
    ) -> Self {
        let mut body = vec![(16 + extra.len()) as u8, cfg_type.0, bar, 0, 0, 0];
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        body.extend_from_slice(extra);
        self.raw_cap(header::CAP_ID_VENDOR, &body)
    }

    /// Appends a virtio structure capability.
    pub fn virtio_cap(self, cfg_type: CfgType, bar: u8, offset: u32, length: u32) -> Self {
        self.virtio_cap_with(cfg_type, bar, offset, length, &[])
    }

    /// Appends a notification capability with its multiplier.
    pub fn notify_cap(self, bar: u8, offset: u32, length: u32, multiplier: u32) -> Self {
        self.virtio_cap_with(
            CfgType::NOTIFY,
            bar,
            offset,
            length,
            &multiplier.to_le_bytes(),
        )
    }

    /// Appends an MSI-X capability with `table_size` entries.
    ///
    /// # Panics
    /// When `table_size` is 0 or the capability space is full.
    pub fn msix_cap(
        self,
        table_size: u16,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Self {
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&(table_size - 1).to_le_bytes());
        body.extend_from_slice(&(table_offset | u32::from(table_bar)).to_le_bytes());
        body.extend_from_slice(&(pba_offset | u32::from(pba_bar)).to_le_bytes());
        self.raw_cap(header::CAP_ID_MSIX, &body)
    }

    /// The bytes.
    pub fn build(self) -> Vec<u8> {
        self.bytes
    }
}

/// What a [`FakePciDevice`] presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePciConfig {
    /// PCI device ID.
    pub device_id: u16,
    /// Feature bits offered.
    pub features: u64,
    /// `num_queues`.
    pub num_queues: u16,
    /// `queue_size` after reset, for every queue.
    pub max_queue_size: u16,
    /// `notify_off_multiplier`; queue `i` has `queue_notify_off = i`.
    pub notify_multiplier: u32,
    /// MSI-X table entries; larger vectors read back as [`NO_VECTOR`].
    pub msix_vectors: u16,
    /// Length of the common configuration structure: 0x38 (virtio 1.0) or 0x3c (1.2,
    /// with `queue_notify_data` and `queue_reset`).
    pub common_len: u32,
    /// Bytes of the device-specific configuration.
    pub device_config: Vec<u8>,
    /// Reads of `device_status` (and of `queue_reset`) that still show the old value
    /// after a reset was started.
    pub reset_latency: u32,
}

impl FakePciConfig {
    /// A modern virtio-blk function like QEMU's: 2 queues of up to 256, multiplier 4, 3
    /// MSI-X vectors, the virtio 1.2 common configuration, and a 60-byte config space
    /// with capacity `capacity` sectors and `num_queues` 2. Offers VERSION_1,
    /// EVENT_IDX, SEG_MAX, BLK_SIZE, FLUSH and MQ.
    pub fn blk(capacity: u64) -> Self {
        let mut device_config = vec![0u8; 60];
        device_config[0..8].copy_from_slice(&capacity.to_le_bytes());
        device_config[12..16].copy_from_slice(&126u32.to_le_bytes()); // seg_max
        device_config[20..24].copy_from_slice(&512u32.to_le_bytes()); // blk_size
        device_config[34..36].copy_from_slice(&2u16.to_le_bytes()); // num_queues
        Self {
            device_id: super::DEVICE_ID_BLK,
            features: vfeat::VERSION_1
                | vfeat::RING_EVENT_IDX
                | vbdev_virtio::blk::features::SEG_MAX
                | vbdev_virtio::blk::features::BLK_SIZE
                | vbdev_virtio::blk::features::FLUSH
                | vbdev_virtio::blk::features::MQ,
            num_queues: 2,
            max_queue_size: 256,
            notify_multiplier: 4,
            msix_vectors: 3,
            common_len: common_cfg::LEN as u32,
            device_config,
            reset_latency: 0,
        }
    }
}

/// The registers of one queue, as the device holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeQueue {
    /// `queue_size`.
    pub size: u16,
    /// `queue_msix_vector`.
    pub msix_vector: u16,
    /// `queue_enable`.
    pub enabled: bool,
    /// `queue_desc`.
    pub desc: u64,
    /// `queue_driver`.
    pub driver: u64,
    /// `queue_device`.
    pub device: u64,
    /// Whether the queue is unavailable (`queue_size` reads 0).
    pub unavailable: bool,
}

#[derive(Debug)]
struct State {
    cfg: FakePciConfig,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_msix_vector: u16,
    status: u8,
    /// Reads of `device_status` left before a started reset shows.
    reset_reads_left: u32,
    status_before_reset: u8,
    generation: u8,
    queue_select: u16,
    queues: Vec<FakeQueue>,
    /// `(queue, reads left)` of a queue reset in progress.
    queue_reset: Option<(u16, u32)>,
    isr: u8,
    /// A config change armed to happen after this many device-config reads.
    change: Option<(u32, u32, Vec<u8>)>,
    /// Bump the generation on every device-config read.
    unstable: bool,
    removed: bool,
    doorbells: Vec<(u64, u16)>,
    common_writes: Vec<(u64, u8)>,
    device_reads: Vec<(u64, u8)>,
    generation_reads: u32,
}

impl State {
    fn fresh_queue(&self) -> FakeQueue {
        FakeQueue {
            size: self.cfg.max_queue_size,
            msix_vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
            unavailable: false,
        }
    }

    fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.config_msix_vector = NO_VECTOR;
        self.queue_select = 0;
        self.queue_reset = None;
        self.isr = 0;
        for i in 0..self.queues.len() {
            let unavailable = self.queues[i].unavailable;
            self.queues[i] = FakeQueue {
                unavailable,
                ..self.fresh_queue()
            };
        }
    }

    fn selected(&mut self) -> Option<&mut FakeQueue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// The FEATURES_OK check of a device (§3.1.1 step 5-6): only offered bits,
    /// VERSION_1, and ACCESS_PLATFORM accepted when offered (QEMU's rule with
    /// `iommu_platform=on`).
    fn features_acceptable(&self) -> bool {
        let offered = self.cfg.features;
        let f = self.driver_features;
        let ap = super::transport_features::ACCESS_PLATFORM;
        f & !offered == 0 && f & vfeat::VERSION_1 != 0 && (offered & ap == 0 || f & ap != 0)
    }
}

/// An in-memory modern virtio-pci function (see the module docs).
#[derive(Debug)]
pub struct FakePciDevice {
    state: Mutex<State>,
}

/// Width and access kind of a common-configuration field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Rw(u8),
    Ro(u8),
}

fn common_field(off: u64) -> Option<Field> {
    use common_cfg as c;
    Some(match off {
        c::DEVICE_FEATURE_SELECT | c::DRIVER_FEATURE_SELECT | c::DRIVER_FEATURE => Field::Rw(4),
        c::DEVICE_FEATURE => Field::Ro(4),
        c::CONFIG_MSIX_VECTOR | c::QUEUE_SELECT | c::QUEUE_SIZE | c::QUEUE_MSIX_VECTOR => {
            Field::Rw(2)
        }
        c::QUEUE_ENABLE | c::QUEUE_RESET => Field::Rw(2),
        c::NUM_QUEUES | c::QUEUE_NOTIFY_OFF | c::QUEUE_NOTIFY_DATA => Field::Ro(2),
        c::DEVICE_STATUS => Field::Rw(1),
        c::CONFIG_GENERATION => Field::Ro(1),
        // The 64-bit fields are two 32-bit halves.
        o if (c::QUEUE_DESC..c::QUEUE_NOTIFY_DATA).contains(&o) && o % 4 == 0 => Field::Rw(4),
        _ => return None,
    })
}

fn set_half(v: &mut u64, high: bool, half: u32) {
    if high {
        *v = (*v & 0xffff_ffff) | (u64::from(half) << 32);
    } else {
        *v = (*v & !0xffff_ffff) | u64::from(half);
    }
}

impl FakePciDevice {
    /// A device presenting `cfg`, just out of reset.
    pub fn new(cfg: FakePciConfig) -> Self {
        let mut state = State {
            cfg,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_msix_vector: NO_VECTOR,
            status: 0,
            reset_reads_left: 0,
            status_before_reset: 0,
            generation: 0,
            queue_select: 0,
            queues: Vec::new(),
            queue_reset: None,
            isr: 0,
            change: None,
            unstable: false,
            removed: false,
            doorbells: Vec::new(),
            common_writes: Vec::new(),
            device_reads: Vec::new(),
            generation_reads: 0,
        };
        state.queues = (0..state.cfg.num_queues)
            .map(|_| state.fresh_queue())
            .collect();
        Self {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration space of this function: the four virtio structures in BAR 4
    /// (common, ISR, device, notify, in that list order), an MSI-X capability in BAR 1
    /// and a PCI configuration access capability, like QEMU's.
    pub fn config_space(&self) -> Vec<u8> {
        let s = self.lock();
        let c = &s.cfg;
        ConfigSpaceBuilder::new(c.device_id)
            .msix_cap(c.msix_vectors.max(1), MSIX_BAR, 0, MSIX_BAR, 0x800)
            .virtio_cap_with(CfgType::PCI_CFG, 0, 0, 0, &[0; 4])
            .virtio_cap(CfgType::COMMON, BAR, COMMON_OFFSET, c.common_len)
            .virtio_cap(CfgType::ISR, BAR, ISR_OFFSET, STRUCT_LEN)
            .virtio_cap(
                CfgType::DEVICE,
                BAR,
                DEVICE_OFFSET,
                c.device_config.len() as u32,
            )
            .notify_cap(BAR, NOTIFY_OFFSET, STRUCT_LEN, c.notify_multiplier)
            .build()
    }

    /// The feature bits the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.lock().driver_features
    }

    /// The status byte as the device holds it.
    pub fn status(&self) -> u8 {
        self.lock().status
    }

    /// Queue `index`'s registers.
    ///
    /// # Panics
    /// When the queue does not exist.
    pub fn queue(&self, index: u16) -> FakeQueue {
        self.lock().queues[usize::from(index)]
    }

    /// Makes queue `index` unavailable (`queue_size` reads 0).
    ///
    /// # Panics
    /// When the queue does not exist.
    pub fn set_queue_unavailable(&self, index: u16) {
        let mut s = self.lock();
        let q = &mut s.queues[usize::from(index)];
        q.unavailable = true;
        q.size = 0;
    }

    /// After `reads` more device-config reads (at least one), writes `bytes` at `offset` of the config
    /// space and changes `config_generation`.
    pub fn change_config_after(&self, reads: u32, offset: u32, bytes: &[u8]) {
        self.lock().change = Some((reads, offset, bytes.to_vec()));
    }

    /// Changes `config_generation` on every device-config read (a device that never
    /// settles).
    pub fn set_config_unstable(&self, unstable: bool) {
        self.lock().unstable = unstable;
    }

    /// Surprise removal: from now on every read returns all ones and writes vanish.
    pub fn remove(&self) {
        self.lock().removed = true;
    }

    /// Sets bits in the ISR status byte, as an interrupt would.
    pub fn raise_isr(&self, bits: u8) {
        self.lock().isr |= bits;
    }

    /// Doorbell writes seen so far, as `(offset in the notify structure, value)`, and
    /// forgets them.
    pub fn take_doorbells(&self) -> Vec<(u64, u16)> {
        std::mem::take(&mut self.lock().doorbells)
    }

    /// Writes to the common configuration seen so far, as `(field offset, width)`, and
    /// forgets them.
    pub fn take_common_writes(&self) -> Vec<(u64, u8)> {
        std::mem::take(&mut self.lock().common_writes)
    }

    /// Device-config reads seen so far, as `(offset, width)`, and forgets them.
    pub fn take_device_reads(&self) -> Vec<(u64, u8)> {
        std::mem::take(&mut self.lock().device_reads)
    }

    /// How many times `config_generation` was read.
    pub fn generation_reads(&self) -> u32 {
        self.lock().generation_reads
    }

    fn read(&self, bar: BarIndex, offset: u64, width: u8) -> Result<u64> {
        let bad = PciError::BadAccess { bar, offset, width };
        let mut s = self.lock();
        if bar.get() != BAR || offset + u64::from(width) > BAR_LEN || offset % u64::from(width) != 0
        {
            return Err(bad);
        }
        if s.removed {
            return Ok(u64::MAX >> (64 - 8 * u32::from(width)));
        }
        let (region, rel) = region_of(offset);
        match region {
            Region::Common => {
                if rel + u64::from(width) > u64::from(s.cfg.common_len) {
                    return Err(bad);
                }
                match common_field(rel) {
                    Some(Field::Rw(w) | Field::Ro(w)) if w == width => {}
                    _ => return Err(bad),
                }
                Ok(read_common(&mut s, rel))
            }
            Region::Isr if rel == 0 && width == 1 => Ok(u64::from(std::mem::take(&mut s.isr))),
            Region::Device => {
                let len = s.cfg.device_config.len() as u64;
                if rel + u64::from(width) > len {
                    return Err(bad);
                }
                s.device_reads.push((rel, width));
                let r = rel as usize;
                let mut v = 0u64;
                for i in (0..usize::from(width)).rev() {
                    v = (v << 8) | u64::from(s.cfg.device_config[r + i]);
                }
                if s.unstable {
                    s.generation = s.generation.wrapping_add(1);
                }
                if let Some((left, off, bytes)) = s.change.take() {
                    if left <= 1 {
                        let off = off as usize;
                        s.cfg.device_config[off..off + bytes.len()].copy_from_slice(&bytes);
                        s.generation = s.generation.wrapping_add(1);
                    } else {
                        s.change = Some((left - 1, off, bytes));
                    }
                }
                Ok(v)
            }
            _ => Err(bad),
        }
    }

    fn write(&self, bar: BarIndex, offset: u64, width: u8, value: u64) -> Result<()> {
        let bad = PciError::BadAccess { bar, offset, width };
        let mut s = self.lock();
        if bar.get() != BAR || offset + u64::from(width) > BAR_LEN || offset % u64::from(width) != 0
        {
            return Err(bad);
        }
        if s.removed {
            return Ok(());
        }
        let (region, rel) = region_of(offset);
        match region {
            Region::Common => {
                if rel + u64::from(width) > u64::from(s.cfg.common_len) {
                    return Err(bad);
                }
                match common_field(rel) {
                    Some(Field::Rw(w)) if w == width => {}
                    _ => return Err(bad),
                }
                if rel == common_cfg::QUEUE_ENABLE && value == 0 {
                    return Err(bad); // §4.1.4.3.2: MUST NOT write 0
                }
                s.common_writes.push((rel, width));
                write_common(&mut s, rel, value);
                Ok(())
            }
            Region::Notify if width == 2 => {
                let m = u64::from(s.cfg.notify_multiplier);
                if m != 0 && rel % m != 0 {
                    return Err(bad);
                }
                s.doorbells.push((rel, value as u16));
                Ok(())
            }
            _ => Err(bad),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Region {
    Common,
    Isr,
    Device,
    Notify,
}

fn region_of(offset: u64) -> (Region, u64) {
    let r = match offset / u64::from(STRUCT_LEN) {
        0 => Region::Common,
        1 => Region::Isr,
        2 => Region::Device,
        _ => Region::Notify,
    };
    (r, offset % u64::from(STRUCT_LEN))
}

fn read_common(s: &mut State, rel: u64) -> u64 {
    use common_cfg as c;
    let q = usize::from(s.queue_select);
    let queue = s.queues.get(q).copied();
    let qv = |f: fn(&FakeQueue) -> u64| queue.as_ref().map_or(0, f);
    match rel {
        c::DEVICE_FEATURE_SELECT => u64::from(s.device_feature_select),
        c::DEVICE_FEATURE => match s.device_feature_select {
            0 => s.cfg.features & 0xffff_ffff,
            1 => s.cfg.features >> 32,
            _ => 0,
        },
        c::DRIVER_FEATURE_SELECT => u64::from(s.driver_feature_select),
        c::DRIVER_FEATURE => match s.driver_feature_select {
            0 => s.driver_features & 0xffff_ffff,
            1 => s.driver_features >> 32,
            _ => 0,
        },
        c::CONFIG_MSIX_VECTOR => u64::from(s.config_msix_vector),
        c::NUM_QUEUES => u64::from(s.cfg.num_queues),
        c::DEVICE_STATUS => {
            if s.reset_reads_left > 0 {
                s.reset_reads_left -= 1;
                u64::from(s.status_before_reset)
            } else {
                u64::from(s.status)
            }
        }
        c::CONFIG_GENERATION => {
            s.generation_reads += 1;
            u64::from(s.generation)
        }
        c::QUEUE_SELECT => u64::from(s.queue_select),
        c::QUEUE_SIZE => qv(|q| u64::from(q.size)),
        c::QUEUE_MSIX_VECTOR => queue.map_or(u64::from(NO_VECTOR), |q| u64::from(q.msix_vector)),
        c::QUEUE_ENABLE => qv(|q| u64::from(q.enabled)),
        c::QUEUE_NOTIFY_OFF | c::QUEUE_NOTIFY_DATA => {
            if queue.is_some() {
                u64::from(s.queue_select)
            } else {
                0
            }
        }
        c::QUEUE_RESET => match s.queue_reset {
            Some((i, left)) if i == s.queue_select => {
                if left > 0 {
                    s.queue_reset = Some((i, left - 1));
                    1
                } else {
                    s.queue_reset = None;
                    0
                }
            }
            _ => 0,
        },
        o => {
            let high = o % 8 == 4;
            let v = match o & !7 {
                c::QUEUE_DESC => qv(|q| q.desc),
                c::QUEUE_DRIVER => qv(|q| q.driver),
                _ => qv(|q| q.device),
            };
            if high { v >> 32 } else { v & 0xffff_ffff }
        }
    }
}

fn write_common(s: &mut State, rel: u64, value: u64) {
    use common_cfg as c;
    let v32 = value as u32;
    let v16 = value as u16;
    match rel {
        c::DEVICE_FEATURE_SELECT => s.device_feature_select = v32,
        c::DRIVER_FEATURE_SELECT => s.driver_feature_select = v32,
        c::DRIVER_FEATURE => match s.driver_feature_select {
            0 => set_half(&mut s.driver_features, false, v32),
            1 => set_half(&mut s.driver_features, true, v32),
            _ => {}
        },
        c::CONFIG_MSIX_VECTOR => {
            s.config_msix_vector = if v16 < s.cfg.msix_vectors {
                v16
            } else {
                NO_VECTOR
            };
        }
        c::DEVICE_STATUS => {
            let new = value as u8;
            if new == 0 {
                s.status_before_reset = s.status;
                s.reset_reads_left = s.cfg.reset_latency;
                s.status = 0;
                s.reset();
            } else if new & status::FEATURES_OK != 0
                && s.status & status::FEATURES_OK == 0
                && !s.features_acceptable()
            {
                s.status = new & !status::FEATURES_OK;
            } else {
                s.status = new;
            }
        }
        c::QUEUE_SELECT => s.queue_select = v16,
        c::QUEUE_SIZE => {
            let max = s.cfg.max_queue_size;
            if let Some(q) = s.selected() {
                // A device ignores sizes it cannot take (not a power of two, too large).
                if !q.unavailable && v16.is_power_of_two() && v16 <= max {
                    q.size = v16;
                }
            }
        }
        c::QUEUE_MSIX_VECTOR => {
            let n = s.cfg.msix_vectors;
            if let Some(q) = s.selected() {
                q.msix_vector = if v16 < n { v16 } else { NO_VECTOR };
            }
        }
        c::QUEUE_ENABLE => {
            if let Some(q) = s.selected() {
                q.enabled = true;
            }
        }
        c::QUEUE_RESET => {
            if v16 == 1 && usize::from(s.queue_select) < s.queues.len() {
                let i = s.queue_select;
                let fresh = FakeQueue {
                    unavailable: s.queues[usize::from(i)].unavailable,
                    ..s.fresh_queue()
                };
                s.queues[usize::from(i)] = fresh;
                s.queue_reset = Some((i, s.cfg.reset_latency));
            }
        }
        o => {
            let high = o % 8 == 4;
            if let Some(q) = s.selected() {
                let slot = match o & !7 {
                    c::QUEUE_DESC => &mut q.desc,
                    c::QUEUE_DRIVER => &mut q.driver,
                    _ => &mut q.device,
                };
                set_half(slot, high, v32);
            }
        }
    }
}

impl PciBars for FakePciDevice {
    fn read8(&self, bar: BarIndex, offset: u64) -> Result<u8> {
        self.read(bar, offset, 1).map(|v| v as u8)
    }
    fn read16(&self, bar: BarIndex, offset: u64) -> Result<u16> {
        self.read(bar, offset, 2).map(|v| v as u16)
    }
    fn read32(&self, bar: BarIndex, offset: u64) -> Result<u32> {
        self.read(bar, offset, 4).map(|v| v as u32)
    }
    fn write8(&self, bar: BarIndex, offset: u64, value: u8) -> Result<()> {
        self.write(bar, offset, 1, value.into())
    }
    fn write16(&self, bar: BarIndex, offset: u64, value: u16) -> Result<()> {
        self.write(bar, offset, 2, value.into())
    }
    fn write32(&self, bar: BarIndex, offset: u64, value: u32) -> Result<()> {
        self.write(bar, offset, 4, value.into())
    }
}
