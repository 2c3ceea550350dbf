//! Register access of a virtio-pci function: BARs behind [`PciBars`], the common
//! configuration ([`CommonCfg`], §4.1.4.3), one queue's registers ([`QueueRegs`]) and
//! the ISR status (§4.1.4.5).

use super::*;

/// Register access to a function's BARs, at `(bar, offset)` with an explicit width.
///
/// Implemented over `mmap`ed BARs (VFIO regions, sysfs resource files), `pread`/`pwrite`
/// on a VFIO device fd, or an in-memory model (`fake::FakePciDevice`). Values are in
/// host order: implementations convert from and to little endian (§4.1.3: every field
/// is little-endian). Implementations check that the access lies inside the BAR.
pub trait PciBars: Send + Sync + fmt::Debug {
    /// Reads 8 bits.
    ///
    /// # Errors
    /// [`PciError::BadAccess`] outside the BAR; [`PciError::BarIo`] when the system
    /// access fails.
    fn read8(&self, bar: BarIndex, offset: u64) -> Result<u8>;

    /// Reads 16 bits (2-byte aligned).
    ///
    /// # Errors
    /// As [`Self::read8`].
    fn read16(&self, bar: BarIndex, offset: u64) -> Result<u16>;

    /// Reads 32 bits (4-byte aligned).
    ///
    /// # Errors
    /// As [`Self::read8`].
    fn read32(&self, bar: BarIndex, offset: u64) -> Result<u32>;

    /// Writes 8 bits.
    ///
    /// # Errors
    /// As [`Self::read8`].
    fn write8(&self, bar: BarIndex, offset: u64, value: u8) -> Result<()>;

    /// Writes 16 bits (2-byte aligned).
    ///
    /// # Errors
    /// As [`Self::read8`].
    fn write16(&self, bar: BarIndex, offset: u64, value: u16) -> Result<()>;

    /// Writes 32 bits (4-byte aligned).
    ///
    /// # Errors
    /// As [`Self::read8`].
    fn write32(&self, bar: BarIndex, offset: u64, value: u32) -> Result<()>;

    /// Reads a 64-bit field as two 32-bit reads, low half first (§4.1.3).
    ///
    /// # Errors
    /// As [`Self::read8`].
    fn read64(&self, bar: BarIndex, offset: u64) -> Result<u64> {
        let hi_off = offset.checked_add(4).ok_or(PciError::BadAccess {
            bar,
            offset,
            width: 8,
        })?;
        let lo = self.read32(bar, offset)?;
        let hi = self.read32(bar, hi_off)?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    /// Writes a 64-bit field as two 32-bit writes, low half first (§4.1.3).
    ///
    /// # Errors
    /// As [`Self::read8`].
    fn write64(&self, bar: BarIndex, offset: u64, value: u64) -> Result<()> {
        let hi_off = offset.checked_add(4).ok_or(PciError::BadAccess {
            bar,
            offset,
            width: 8,
        })?;
        self.write32(bar, offset, value as u32)?; // low half, truncation intended
        self.write32(bar, hi_off, (value >> 32) as u32)
    }
}

macro_rules! forward_pci_bars {
    ($($ty:ty),*) => {$(
        impl<T: PciBars + ?Sized> PciBars for $ty {
            fn read8(&self, bar: BarIndex, offset: u64) -> Result<u8> {
                (**self).read8(bar, offset)
            }
            fn read16(&self, bar: BarIndex, offset: u64) -> Result<u16> {
                (**self).read16(bar, offset)
            }
            fn read32(&self, bar: BarIndex, offset: u64) -> Result<u32> {
                (**self).read32(bar, offset)
            }
            fn write8(&self, bar: BarIndex, offset: u64, value: u8) -> Result<()> {
                (**self).write8(bar, offset, value)
            }
            fn write16(&self, bar: BarIndex, offset: u64, value: u16) -> Result<()> {
                (**self).write16(bar, offset, value)
            }
            fn write32(&self, bar: BarIndex, offset: u64, value: u32) -> Result<()> {
                (**self).write32(bar, offset, value)
            }
            fn read64(&self, bar: BarIndex, offset: u64) -> Result<u64> {
                (**self).read64(bar, offset)
            }
            fn write64(&self, bar: BarIndex, offset: u64, value: u64) -> Result<()> {
                (**self).write64(bar, offset, value)
            }
        }
    )*};
}

forward_pci_bars!(&T, Arc<T>, Box<T>);

/// Offsets of `struct virtio_pci_common_cfg` (virtio 1.2 §4.1.4.3).
pub mod common_cfg {
    use std::mem::offset_of;

    /// The structure, for its offsets; fields are little-endian on the bus.
    #[repr(C)]
    #[allow(dead_code)] // a layout description: only `offset_of!` reads it
    struct Layout {
        device_feature_select: u32,
        device_feature: u32,
        driver_feature_select: u32,
        driver_feature: u32,
        config_msix_vector: u16,
        num_queues: u16,
        device_status: u8,
        config_generation: u8,
        queue_select: u16,
        queue_size: u16,
        queue_msix_vector: u16,
        queue_enable: u16,
        queue_notify_off: u16,
        queue_desc_lo: u32,
        queue_desc_hi: u32,
        queue_driver_lo: u32,
        queue_driver_hi: u32,
        queue_device_lo: u32,
        queue_device_hi: u32,
        queue_notify_data: u16,
        queue_reset: u16,
    }

    /// `device_feature_select` (le32, RW).
    pub const DEVICE_FEATURE_SELECT: u64 = offset_of!(Layout, device_feature_select) as u64;
    /// `device_feature` (le32, RO).
    pub const DEVICE_FEATURE: u64 = offset_of!(Layout, device_feature) as u64;
    /// `driver_feature_select` (le32, RW).
    pub const DRIVER_FEATURE_SELECT: u64 = offset_of!(Layout, driver_feature_select) as u64;
    /// `driver_feature` (le32, RW).
    pub const DRIVER_FEATURE: u64 = offset_of!(Layout, driver_feature) as u64;
    /// `config_msix_vector` (le16, RW).
    pub const CONFIG_MSIX_VECTOR: u64 = offset_of!(Layout, config_msix_vector) as u64;
    /// `num_queues` (le16, RO).
    pub const NUM_QUEUES: u64 = offset_of!(Layout, num_queues) as u64;
    /// `device_status` (u8, RW).
    pub const DEVICE_STATUS: u64 = offset_of!(Layout, device_status) as u64;
    /// `config_generation` (u8, RO).
    pub const CONFIG_GENERATION: u64 = offset_of!(Layout, config_generation) as u64;
    /// `queue_select` (le16, RW).
    pub const QUEUE_SELECT: u64 = offset_of!(Layout, queue_select) as u64;
    /// `queue_size` (le16, RW).
    pub const QUEUE_SIZE: u64 = offset_of!(Layout, queue_size) as u64;
    /// `queue_msix_vector` (le16, RW).
    pub const QUEUE_MSIX_VECTOR: u64 = offset_of!(Layout, queue_msix_vector) as u64;
    /// `queue_enable` (le16, RW; never write 0).
    pub const QUEUE_ENABLE: u64 = offset_of!(Layout, queue_enable) as u64;
    /// `queue_notify_off` (le16, RO).
    pub const QUEUE_NOTIFY_OFF: u64 = offset_of!(Layout, queue_notify_off) as u64;
    /// `queue_desc` (le64 as two le32, RW).
    pub const QUEUE_DESC: u64 = offset_of!(Layout, queue_desc_lo) as u64;
    /// `queue_driver` (le64 as two le32, RW).
    pub const QUEUE_DRIVER: u64 = offset_of!(Layout, queue_driver_lo) as u64;
    /// `queue_device` (le64 as two le32, RW).
    pub const QUEUE_DEVICE: u64 = offset_of!(Layout, queue_device_lo) as u64;
    /// `queue_notify_data` (le16, RO; virtio 1.2).
    pub const QUEUE_NOTIFY_DATA: u64 = offset_of!(Layout, queue_notify_data) as u64;
    /// `queue_reset` (le16, RW; virtio 1.2).
    pub const QUEUE_RESET: u64 = offset_of!(Layout, queue_reset) as u64;
    /// Bytes of the structure this module knows (up to `queue_reset`).
    pub const LEN: u64 = size_of::<Layout>() as u64;

    const _: () = assert!(DEVICE_FEATURE == 0x04);
    const _: () = assert!(DRIVER_FEATURE_SELECT == 0x08);
    const _: () = assert!(DRIVER_FEATURE == 0x0c);
    const _: () = assert!(CONFIG_MSIX_VECTOR == 0x10);
    const _: () = assert!(NUM_QUEUES == 0x12);
    const _: () = assert!(DEVICE_STATUS == 0x14);
    const _: () = assert!(CONFIG_GENERATION == 0x15);
    const _: () = assert!(QUEUE_SELECT == 0x16);
    const _: () = assert!(QUEUE_SIZE == 0x18);
    const _: () = assert!(QUEUE_MSIX_VECTOR == 0x1a);
    const _: () = assert!(QUEUE_ENABLE == 0x1c);
    const _: () = assert!(QUEUE_NOTIFY_OFF == 0x1e);
    const _: () = assert!(QUEUE_DESC == 0x20);
    const _: () = assert!(QUEUE_DRIVER == 0x28);
    const _: () = assert!(QUEUE_DEVICE == 0x30);
    const _: () = assert!(QUEUE_NOTIFY_DATA == 0x38);
    const _: () = assert!(QUEUE_RESET == 0x3a);
    const _: () = assert!(LEN == 0x3c);
}

/// The common configuration registers of one function (virtio 1.2 §4.1.4.3).
///
/// Not synchronised: methods that write a select register (`device_feature_select`,
/// `driver_feature_select`, `queue_select`) take `&mut self`, so a select and the accesses
/// it governs cannot interleave with another thread's; a shared transport keeps this in a
/// `Mutex`.
#[derive(Debug)]
pub struct CommonCfg<B> {
    bars: B,
    bar: BarIndex,
    base: u64,
    len: u32,
}

impl<B: PciBars> CommonCfg<B> {
    /// Accesses the structure `cap` describes through `bars`.
    ///
    /// # Errors
    /// [`PciError::CapTooSmall`] when `cap` is not a common configuration capability of
    /// at least [`COMMON_CFG_MIN_LEN`] bytes (parsed layouts always are).
    pub fn new(bars: B, cap: &VirtioCap) -> Result<Self> {
        if cap.cfg_type != CfgType::COMMON || cap.length < COMMON_CFG_MIN_LEN {
            return Err(PciError::CapTooSmall {
                cfg_type: cap.cfg_type,
                length: cap.length,
                need: COMMON_CFG_MIN_LEN,
            });
        }
        Ok(Self {
            bars,
            bar: cap.bar,
            base: u64::from(cap.offset),
            len: cap.length,
        })
    }

    /// The BAR accessor.
    pub fn bars(&self) -> &B {
        &self.bars
    }

    /// Length of the structure in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Always false: the structure has at least [`COMMON_CFG_MIN_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn has(&self, field: u64, width: u32) -> bool {
        field + u64::from(width) <= u64::from(self.len)
    }

    fn r8(&self, field: u64) -> Result<u8> {
        self.bars.read8(self.bar, self.base + field)
    }
    fn r16(&self, field: u64) -> Result<u16> {
        self.bars.read16(self.bar, self.base + field)
    }
    fn r32(&self, field: u64) -> Result<u32> {
        self.bars.read32(self.bar, self.base + field)
    }
    fn r64(&self, field: u64) -> Result<u64> {
        self.bars.read64(self.bar, self.base + field)
    }
    fn w8(&self, field: u64, v: u8) -> Result<()> {
        self.bars.write8(self.bar, self.base + field, v)
    }
    fn w16(&self, field: u64, v: u16) -> Result<()> {
        self.bars.write16(self.bar, self.base + field, v)
    }
    fn w32(&self, field: u64, v: u32) -> Result<()> {
        self.bars.write32(self.bar, self.base + field, v)
    }
    fn w64(&self, field: u64, v: u64) -> Result<()> {
        self.bars.write64(self.bar, self.base + field, v)
    }

    /// The 64 feature bits the device offers: `device_feature` read with
    /// `device_feature_select` 0 then 1 (§4.1.4.3).
    ///
    /// # Errors
    /// When a register access fails.
    pub fn device_features(&mut self) -> Result<u64> {
        self.w32(common_cfg::DEVICE_FEATURE_SELECT, 0)?;
        let lo = self.r32(common_cfg::DEVICE_FEATURE)?;
        self.w32(common_cfg::DEVICE_FEATURE_SELECT, 1)?;
        let hi = self.r32(common_cfg::DEVICE_FEATURE)?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    /// The 64 feature bits the device presents as accepted by the driver.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn driver_features(&mut self) -> Result<u64> {
        self.w32(common_cfg::DRIVER_FEATURE_SELECT, 0)?;
        let lo = self.r32(common_cfg::DRIVER_FEATURE)?;
        self.w32(common_cfg::DRIVER_FEATURE_SELECT, 1)?;
        let hi = self.r32(common_cfg::DRIVER_FEATURE)?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    /// Writes the driver's accepted feature bits, low word then high word.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn set_driver_features(&mut self, features: u64) -> Result<()> {
        self.w32(common_cfg::DRIVER_FEATURE_SELECT, 0)?;
        self.w32(common_cfg::DRIVER_FEATURE, features as u32)?; // low word
        self.w32(common_cfg::DRIVER_FEATURE_SELECT, 1)?;
        self.w32(common_cfg::DRIVER_FEATURE, (features >> 32) as u32)
    }

    /// `config_msix_vector`.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn config_msix_vector(&self) -> Result<u16> {
        self.r16(common_cfg::CONFIG_MSIX_VECTOR)
    }

    /// Maps configuration-change notifications to MSI-X `vector` ([`NO_VECTOR`]: none)
    /// and checks the device took it (§4.1.5.1.2).
    ///
    /// # Errors
    /// [`PciError::MsixVectorRejected`] (with index `u16::MAX`) when it reads back
    /// otherwise; a failed register access.
    pub fn set_config_msix_vector(&self, vector: u16) -> Result<()> {
        self.w16(common_cfg::CONFIG_MSIX_VECTOR, vector)?;
        let read = self.r16(common_cfg::CONFIG_MSIX_VECTOR)?;
        if read != vector {
            return Err(PciError::MsixVectorRejected {
                index: u16::MAX,
                vector,
                read,
            });
        }
        Ok(())
    }

    /// `num_queues`: how many virtqueues the device has.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn num_queues(&self) -> Result<u16> {
        self.r16(common_cfg::NUM_QUEUES)
    }

    /// `device_status` (§2.1).
    ///
    /// # Errors
    /// [`PciError::DeviceGone`] when it reads 0xff; a failed register access.
    pub fn device_status(&self) -> Result<u8> {
        match self.r8(common_cfg::DEVICE_STATUS)? {
            0xff => Err(PciError::DeviceGone),
            s => Ok(s),
        }
    }

    /// Writes `device_status`. Writing 0 starts a reset; use [`Self::reset`] to wait
    /// for it.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn set_device_status(&self, status: u8) -> Result<()> {
        self.w8(common_cfg::DEVICE_STATUS, status)
    }

    /// `config_generation` (§4.1.4.3).
    ///
    /// # Errors
    /// When a register access fails.
    pub fn config_generation(&self) -> Result<u8> {
        self.r8(common_cfg::CONFIG_GENERATION)
    }

    /// Resets the device: writes 0 to `device_status` and waits until it reads 0, as
    /// the driver MUST before reinitialising (§4.1.4.3.2). Spins briefly, then sleeps
    /// 100 µs between reads.
    ///
    /// # Errors
    /// [`PciError::ResetTimeout`] when the status is not 0 after `timeout`;
    /// [`PciError::DeviceGone`]; a failed register access.
    pub fn reset(&self, timeout: Duration) -> Result<()> {
        self.set_device_status(0)?;
        wait_for_zero(timeout, || self.device_status())
    }

    /// Selects queue `index` and returns its registers.
    ///
    /// # Errors
    /// [`PciError::NoSuchQueue`] when `index >= num_queues`; a failed register access.
    pub fn queue(&mut self, index: u16) -> Result<QueueRegs<'_, B>> {
        let num_queues = self.num_queues()?;
        if index >= num_queues {
            return Err(PciError::NoSuchQueue { index, num_queues });
        }
        self.w16(common_cfg::QUEUE_SELECT, index)?;
        Ok(QueueRegs { cfg: self, index })
    }

    /// Reads `buf.len()` bytes of the device-specific configuration `device` at `offset`,
    /// retrying until `config_generation` is the same before and after (§2.5.1, at most
    /// [`CONFIG_READ_ATTEMPTS`] times).
    ///
    /// Reads of 1, 2 or 4 naturally aligned bytes are one access of that width, 8 bytes
    /// at a 4-byte boundary two 32-bit accesses (§4.1.3.1: a field is read at its own
    /// width); any other range is read a byte at a time, as SPDK does.
    ///
    /// # Errors
    /// [`PciError::ConfigOutOfRange`] outside the structure, [`PciError::ConfigUnstable`]
    /// when the generation never settles, a failed register access.
    pub fn read_device_config(
        &self,
        device: &VirtioCap,
        offset: u32,
        buf: &mut [u8],
    ) -> Result<()> {
        let end = u64::from(offset) + buf.len() as u64;
        if end > u64::from(device.length) {
            return Err(PciError::ConfigOutOfRange {
                offset,
                len: buf.len(),
                size: device.length,
            });
        }
        let base = u64::from(device.offset) + u64::from(offset);
        let bar = device.bar;
        for _ in 0..CONFIG_READ_ATTEMPTS {
            let before = self.config_generation()?;
            match (buf.len(), offset % 4) {
                (1, _) => buf[0] = self.bars.read8(bar, base)?,
                (2, 0 | 2) => buf.copy_from_slice(&self.bars.read16(bar, base)?.to_le_bytes()),
                (4, 0) => buf.copy_from_slice(&self.bars.read32(bar, base)?.to_le_bytes()),
                (8, 0) => buf.copy_from_slice(&self.bars.read64(bar, base)?.to_le_bytes()),
                _ => {
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = self.bars.read8(bar, base + i as u64)?;
                    }
                }
            }
            if self.config_generation()? == before {
                return Ok(());
            }
        }
        Err(PciError::ConfigUnstable {
            attempts: CONFIG_READ_ATTEMPTS,
        })
    }
}

/// Reads `read` until it returns 0 or `timeout` passes: spins for the first 64 reads,
/// then sleeps 100 µs between reads.
fn wait_for_zero(timeout: Duration, mut read: impl FnMut() -> Result<u8>) -> Result<()> {
    let start = Instant::now();
    let mut reads = 0u32;
    loop {
        let v = read()?;
        if v == 0 {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(PciError::ResetTimeout {
                status: v,
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            });
        }
        reads = reads.saturating_add(1);
        if reads < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// What [`QueueRegs::configure`] set up, for the doorbell and the caller's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSetup {
    /// The queue index.
    pub index: u16,
    /// The queue size now in effect.
    pub size: u16,
    /// `queue_notify_off`, for [`NotifyCap::doorbell`].
    pub notify_off: u16,
    /// The MSI-X vector mapped, or [`NO_VECTOR`].
    pub msix_vector: u16,
}

/// The registers of the queue last selected (§4.1.4.3); borrowed from [`CommonCfg`] so
/// no other select can come in between.
#[derive(Debug)]
pub struct QueueRegs<'a, B> {
    cfg: &'a mut CommonCfg<B>,
    index: u16,
}

impl<B: PciBars> QueueRegs<'_, B> {
    /// The selected queue's index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// `queue_size`: after reset, the largest size the device supports; 0 when the queue
    /// is unavailable.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn size(&self) -> Result<u16> {
        self.cfg.r16(common_cfg::QUEUE_SIZE)
    }

    /// Writes `queue_size` (a power of two, §4.1.4.3.2).
    ///
    /// # Errors
    /// [`PciError::InvalidQueueSize`]; a failed register access.
    pub fn set_size(&self, size: u16) -> Result<()> {
        if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(PciError::InvalidQueueSize { size });
        }
        self.cfg.w16(common_cfg::QUEUE_SIZE, size)
    }

    /// `queue_msix_vector`.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn msix_vector(&self) -> Result<u16> {
        self.cfg.r16(common_cfg::QUEUE_MSIX_VECTOR)
    }

    /// Maps the queue's used-buffer notifications to MSI-X `vector` ([`NO_VECTOR`]:
    /// none) and checks it reads back (§4.1.5.1.2).
    ///
    /// # Errors
    /// [`PciError::MsixVectorRejected`]; a failed register access.
    pub fn set_msix_vector(&self, vector: u16) -> Result<()> {
        self.cfg.w16(common_cfg::QUEUE_MSIX_VECTOR, vector)?;
        let read = self.cfg.r16(common_cfg::QUEUE_MSIX_VECTOR)?;
        if read != vector {
            return Err(PciError::MsixVectorRejected {
                index: self.index,
                vector,
                read,
            });
        }
        Ok(())
    }

    /// Whether `queue_enable` reads 1.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn enabled(&self) -> Result<bool> {
        Ok(self.cfg.r16(common_cfg::QUEUE_ENABLE)? == 1)
    }

    /// Writes 1 to `queue_enable`. There is no disable: the driver MUST NOT write 0
    /// (§4.1.4.3.2); use [`Self::reset`] or a device reset.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn enable(&self) -> Result<()> {
        self.cfg.w16(common_cfg::QUEUE_ENABLE, 1)
    }

    /// `queue_notify_off`, for [`NotifyCap::doorbell`].
    ///
    /// # Errors
    /// When a register access fails.
    pub fn notify_off(&self) -> Result<u16> {
        self.cfg.r16(common_cfg::QUEUE_NOTIFY_OFF)
    }

    /// `queue_desc`: the descriptor area.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn desc(&self) -> Result<Iova> {
        self.cfg.r64(common_cfg::QUEUE_DESC).map(Iova)
    }

    /// `queue_driver`: the driver (avail) area.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn driver(&self) -> Result<Iova> {
        self.cfg.r64(common_cfg::QUEUE_DRIVER).map(Iova)
    }

    /// `queue_device`: the device (used) area.
    ///
    /// # Errors
    /// When a register access fails.
    pub fn device(&self) -> Result<Iova> {
        self.cfg.r64(common_cfg::QUEUE_DEVICE).map(Iova)
    }

    /// Writes `queue_desc`, `queue_driver` and `queue_device`, each as two 32-bit
    /// writes, low half first (§4.1.3).
    ///
    /// # Errors
    /// When a register access fails.
    pub fn set_areas(&self, desc: Iova, driver: Iova, device: Iova) -> Result<()> {
        self.cfg.w64(common_cfg::QUEUE_DESC, desc.0)?;
        self.cfg.w64(common_cfg::QUEUE_DRIVER, driver.0)?;
        self.cfg.w64(common_cfg::QUEUE_DEVICE, device.0)
    }

    /// `queue_notify_data`, or `None` when the structure predates it. Meaningful only
    /// when VIRTIO_F_NOTIF_CONFIG_DATA was negotiated (§4.1.4.3).
    ///
    /// # Errors
    /// When a register access fails.
    pub fn notify_data(&self) -> Result<Option<u16>> {
        if !self.cfg.has(common_cfg::QUEUE_NOTIFY_DATA, 2) {
            return Ok(None);
        }
        self.cfg.r16(common_cfg::QUEUE_NOTIFY_DATA).map(Some)
    }

    /// Resets this queue through `queue_reset` and waits until it reads 0 (§4.1.4.3.2).
    /// Only valid when VIRTIO_F_RING_RESET was negotiated; the queue then reads
    /// disabled and can be configured again.
    ///
    /// # Errors
    /// [`PciError::FieldAbsent`] when the structure has no `queue_reset`;
    /// [`PciError::ResetTimeout`] (with the register's low byte) after `timeout`; a failed
    /// register access.
    pub fn reset(&self, timeout: Duration) -> Result<()> {
        if !self.cfg.has(common_cfg::QUEUE_RESET, 2) {
            return Err(PciError::FieldAbsent {
                field: "queue_reset",
                len: self.cfg.len,
            });
        }
        self.cfg.w16(common_cfg::QUEUE_RESET, 1)?;
        // A sane device presents 1 or 0; the low byte is all the error reports.
        wait_for_zero(timeout, || {
            self.cfg.r16(common_cfg::QUEUE_RESET).map(|v| v as u8)
        })
    }

    /// Configures and enables the queue for a split ring at `addrs` (§4.1.5.1.3): checks
    /// the queue exists and is not enabled, sets the size when smaller than the device's
    /// maximum (and checks it stuck), writes the three areas, maps `msix_vector` (read
    /// back unless [`NO_VECTOR`]), reads `queue_notify_off`, then writes `queue_enable`.
    ///
    /// # Errors
    /// [`PciError::QueueAlreadyEnabled`], [`PciError::QueueUnavailable`],
    /// [`PciError::InvalidQueueSize`], [`PciError::QueueTooLarge`],
    /// [`PciError::QueueSizeRejected`], [`PciError::MsixVectorRejected`], or a failed
    /// register access.
    pub fn configure(&self, addrs: &RingAddrs, msix_vector: u16) -> Result<QueueSetup> {
        let index = self.index;
        // §4.1.4.3.2: the other fields are set before queue_enable, which cannot be undone.
        if self.enabled()? {
            return Err(PciError::QueueAlreadyEnabled { index });
        }
        let max = self.size()?;
        if max == 0 {
            return Err(PciError::QueueUnavailable { index });
        }
        let size = addrs.size;
        if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(PciError::InvalidQueueSize { size });
        }
        if size > max {
            return Err(PciError::QueueTooLarge { index, size, max });
        }
        if size != max {
            self.set_size(size)?;
            let kept = self.size()?;
            if kept != size {
                return Err(PciError::QueueSizeRejected { index, size, kept });
            }
        }
        self.set_areas(addrs.desc, addrs.avail, addrs.used)?;
        if msix_vector == NO_VECTOR {
            // Unmapped since reset (§4.1.5.1.2); write it anyway, as SPDK does, in case
            // an earlier driver left a mapping.
            self.cfg.w16(common_cfg::QUEUE_MSIX_VECTOR, NO_VECTOR)?;
        } else {
            self.set_msix_vector(msix_vector)?;
        }
        let notify_off = self.notify_off()?;
        self.enable()?;
        tracing::debug!(target: TARGET, queue = index, size, notify_off, msix_vector, "virtqueue enabled");
        Ok(QueueSetup {
            index,
            size,
            notify_off,
            msix_vector,
        })
    }
}

/// Reads (and so clears) the ISR status byte (§4.1.4.5): bit 0 a queue interrupt, bit 1
/// a configuration change. Only meaningful without MSI-X.
///
/// # Errors
/// When the register access fails.
pub fn read_isr(bars: &(impl PciBars + ?Sized), isr: &VirtioCap) -> Result<u8> {
    bars.read8(isr.bar, u64::from(isr.offset))
}
