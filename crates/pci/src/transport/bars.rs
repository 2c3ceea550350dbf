//! BAR access: mappings guarded against SIGBUS, the MMIO and BAR-accessor doorbells,
//! and the two `PciBars` implementations (VFIO regions, uio sysfs resources).

use super::*;

/// A mapping of a BAR into this process, guarded against SIGBUS, unmapped on drop.
///
/// When the function is removed, an access that faults turns the whole mapping into
/// memory that reads all ones ([`crate::sigbus`]), which the register layer reports as
/// [`PciError::DeviceGone`]; [`BarMapping::is_gone`] says so without an access.
///
/// # Invariants
/// `ptr..ptr + len` is a live shared mapping of the BAR, owned by this value, and
/// registered with the SIGBUS guard `guard` until `drop` unmaps it; it is only
/// accessed through raw pointers (volatile loads and stores).
#[derive(Debug)]
pub struct BarMapping {
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
    pub(super) guard: Option<crate::sigbus::Guard>,
}

impl BarMapping {
    /// Takes ownership of the new shared mapping `ptr..ptr + len` and guards it.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be a mapping the caller just made, that nothing else
    /// refers to or unmaps.
    pub(super) unsafe fn new(ptr: NonNull<u8>, len: usize) -> Result<Self> {
        // SAFETY: the caller's contract: we own the mapping; it is only accessed through
        // raw pointers (MmapBars, MmioDoorbell) and `drop` unregisters before unmapping.
        match unsafe { crate::sigbus::Guard::register(ptr, len) } {
            Ok(guard) => Ok(Self {
                ptr,
                len,
                guard: Some(guard),
            }),
            Err(e) => {
                // SAFETY: the caller's mapping, not handed out yet.
                let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
                Err(e)
            }
        }
    }

    /// Whether an access faulted because the device is gone.
    pub fn is_gone(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.is_faulted())
    }
}

// SAFETY: the mapping is device memory that any thread may access; the pointer is only
// used for volatile stores by `MmioDoorbell`, never to create references.
unsafe impl Send for BarMapping {}
// SAFETY: as for `Send`: no method hands out references into the mapping.
unsafe impl Sync for BarMapping {}

impl Drop for BarMapping {
    fn drop(&mut self) {
        // Unregister before unmapping (sigbus's rule): no handler touches the range
        // once the guard is gone.
        drop(self.guard.take());
        // SAFETY: type invariant: this value owns the mapping; every `MmioDoorbell` that
        // points into it holds an `Arc` to it, so none is left when this runs.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A queue's doorbell as a 16-bit store into a mapped notify BAR (virtio 1.2 §4.1.5.2).
///
/// # Invariants
/// `ptr` is 2-byte aligned and `ptr..ptr + 2` lies inside `_map`, which stays mapped as
/// long as this value exists.
#[derive(Debug)]
pub struct MmioDoorbell {
    pub(super) ptr: NonNull<u16>,
    pub(super) value: u16,
    pub(super) _map: Arc<BarMapping>,
}

// SAFETY: the pointer targets device memory kept alive by the `Arc`; volatile stores to
// it are valid from any thread.
unsafe impl Send for MmioDoorbell {}
// SAFETY: `ring` only performs a volatile store; concurrent rings are concurrent device
// writes, which the device handles as separate notifications.
unsafe impl Sync for MmioDoorbell {}

impl MmioDoorbell {
    /// The doorbell at `doorbell.offset` of `map`, or `None` when the 2 bytes do not lie
    /// inside the mapping or are misaligned.
    pub fn new(map: Arc<BarMapping>, doorbell: &Doorbell) -> Option<Self> {
        let off = usize::try_from(doorbell.offset).ok()?;
        if off % 2 != 0 || off.checked_add(2)? > map.len {
            return None;
        }
        // SAFETY: `off + 2 <= len`, so the pointer stays inside the mapping.
        let ptr = unsafe { map.ptr.add(off) }.cast::<u16>();
        Some(Self {
            ptr,
            value: doorbell.value,
            _map: map,
        })
    }

    /// Rings: one little-endian 16-bit store of the queue's notification value. No
    /// system call.
    pub fn ring(&self) {
        // The ring's `publish` fences (SeqCst) after its avail.idx store; on x86 that
        // orders the store before this uncached MMIO write. A weakly ordered CPU would
        // need its I/O write barrier here (Linux's iowrite16 is wmb + store).
        // SAFETY: type invariant: `ptr` is aligned and inside a live mapping of the
        // notify BAR; a volatile store is the access device memory needs.
        unsafe { self.ptr.as_ptr().write_volatile(self.value.to_le()) };
    }
}

impl vbdev_virtio::transport::Doorbell for MmioDoorbell {
    fn ring(&self) {
        MmioDoorbell::ring(self);
    }
}

/// A queue's doorbell written through a BAR accessor (no mapping of the notify BAR: one
/// system call per notification with VFIO).
#[derive(Debug)]
pub(super) struct BarsDoorbell {
    pub(super) bars: Arc<dyn PciBars>,
    pub(super) doorbell: Doorbell,
}

impl vbdev_virtio::transport::Doorbell for BarsDoorbell {
    fn ring(&self) {
        // A failed BAR write means the device is gone; the queue's timeout reports it.
        let _ = self.doorbell.ring(&*self.bars);
    }
}

/// One VFIO region: where it is in the device fd and what it allows.
#[derive(Debug, Clone, Copy)]
pub(super) struct VfioRegion {
    pub(super) offset: u64,
    pub(super) size: u64,
    pub(super) flags: u32,
}

/// BAR and config-space access through `pread`/`pwrite` on a VFIO device fd.
#[derive(Debug)]
pub struct VfioBars {
    pub(super) device: OwnedFd,
    pub(super) bars: [Option<VfioRegion>; 6],
    pub(super) config: VfioRegion,
}

impl VfioBars {
    pub(super) fn region(&self, bar: BarIndex, offset: u64, width: u8) -> crate::Result<u64> {
        let bad = PciError::BadAccess { bar, offset, width };
        let r = self.bars[usize::from(bar.get())].ok_or(bad)?;
        let w = u64::from(width);
        if offset % w != 0 || offset.checked_add(w).is_none_or(|end| end > r.size) {
            return Err(PciError::BadAccess { bar, offset, width });
        }
        r.offset
            .checked_add(offset)
            .ok_or(PciError::BadAccess { bar, offset, width })
    }

    pub(super) fn read<const N: usize>(
        &self,
        bar: BarIndex,
        offset: u64,
    ) -> crate::Result<[u8; N]> {
        let width = N as u8;
        let at = self.region(bar, offset, width)?;
        let mut b = [0u8; N];
        match rustix::io::pread(&self.device, &mut b, at) {
            Ok(n) if n == N => Ok(b),
            Ok(_) => Err(PciError::BarIo {
                bar,
                offset,
                width,
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Err(e) => Err(PciError::BarIo {
                bar,
                offset,
                width,
                source: e.into(),
            }),
        }
    }

    pub(super) fn write<const N: usize>(
        &self,
        bar: BarIndex,
        offset: u64,
        b: [u8; N],
    ) -> crate::Result<()> {
        let width = N as u8;
        let at = self.region(bar, offset, width)?;
        match rustix::io::pwrite(&self.device, &b, at) {
            Ok(n) if n == N => Ok(()),
            Ok(_) => Err(PciError::BarIo {
                bar,
                offset,
                width,
                source: std::io::ErrorKind::WriteZero.into(),
            }),
            Err(e) => Err(PciError::BarIo {
                bar,
                offset,
                width,
                source: e.into(),
            }),
        }
    }

    /// Reads `buf.len()` bytes of configuration space at `offset`.
    pub(super) fn read_config(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let n = rustix::io::pread(&self.device, &mut *buf, self.config.offset + offset)?;
        if n != buf.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    pub(super) fn write_config(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        let n = rustix::io::pwrite(&self.device, buf, self.config.offset + offset)?;
        if n != buf.len() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }
}

impl PciBars for VfioBars {
    fn read8(&self, bar: BarIndex, offset: u64) -> crate::Result<u8> {
        self.read::<1>(bar, offset).map(|b| b[0])
    }
    fn read16(&self, bar: BarIndex, offset: u64) -> crate::Result<u16> {
        self.read(bar, offset).map(u16::from_le_bytes)
    }
    fn read32(&self, bar: BarIndex, offset: u64) -> crate::Result<u32> {
        self.read(bar, offset).map(u32::from_le_bytes)
    }
    fn write8(&self, bar: BarIndex, offset: u64, value: u8) -> crate::Result<()> {
        self.write(bar, offset, [value])
    }
    fn write16(&self, bar: BarIndex, offset: u64, value: u16) -> crate::Result<()> {
        self.write(bar, offset, value.to_le_bytes())
    }
    fn write32(&self, bar: BarIndex, offset: u64, value: u32) -> crate::Result<()> {
        self.write(bar, offset, value.to_le_bytes())
    }
}

/// BAR access through mappings of the sysfs `resourceN` files (uio_pci_generic):
/// volatile loads and stores of the register's width.
#[derive(Debug)]
pub struct MmapBars {
    pub(super) bars: [Option<Arc<BarMapping>>; 6],
}

impl MmapBars {
    pub(super) fn at(&self, bar: BarIndex, offset: u64, width: u8) -> crate::Result<*mut u8> {
        let bad = PciError::BadAccess { bar, offset, width };
        let m = self.bars[usize::from(bar.get())].as_ref().ok_or(bad)?;
        let w = u64::from(width);
        let end = offset
            .checked_add(w)
            .ok_or(PciError::BadAccess { bar, offset, width })?;
        if offset % w != 0 || end > m.len as u64 {
            return Err(PciError::BadAccess { bar, offset, width });
        }
        // SAFETY: `offset + width <= len` (checked), so the pointer stays inside the
        // mapping, which `self` keeps alive.
        Ok(unsafe { m.ptr.as_ptr().add(offset as usize) })
    }
}

impl PciBars for MmapBars {
    fn read8(&self, bar: BarIndex, offset: u64) -> crate::Result<u8> {
        let p = self.at(bar, offset, 1)?;
        // SAFETY: `at` checked that the byte lies inside a live BAR mapping; a volatile
        // load is the access device memory needs.
        Ok(unsafe { p.read_volatile() })
    }
    fn read16(&self, bar: BarIndex, offset: u64) -> crate::Result<u16> {
        let p = self.at(bar, offset, 2)?;
        // SAFETY: `at` checked bounds and 2-byte alignment inside a live BAR mapping.
        Ok(u16::from_le(unsafe { p.cast::<u16>().read_volatile() }))
    }
    fn read32(&self, bar: BarIndex, offset: u64) -> crate::Result<u32> {
        let p = self.at(bar, offset, 4)?;
        // SAFETY: `at` checked bounds and 4-byte alignment inside a live BAR mapping.
        Ok(u32::from_le(unsafe { p.cast::<u32>().read_volatile() }))
    }
    fn write8(&self, bar: BarIndex, offset: u64, value: u8) -> crate::Result<()> {
        let p = self.at(bar, offset, 1)?;
        // SAFETY: as in `read8`; a volatile store.
        unsafe { p.write_volatile(value) };
        Ok(())
    }
    fn write16(&self, bar: BarIndex, offset: u64, value: u16) -> crate::Result<()> {
        let p = self.at(bar, offset, 2)?;
        // SAFETY: as in `read16`; a volatile store.
        unsafe { p.cast::<u16>().write_volatile(value.to_le()) };
        Ok(())
    }
    fn write32(&self, bar: BarIndex, offset: u64, value: u32) -> crate::Result<()> {
        let p = self.at(bar, offset, 4)?;
        // SAFETY: as in `read32`; a volatile store.
        unsafe { p.cast::<u32>().write_volatile(value.to_le()) };
        Ok(())
    }
}

/// Maps `len` bytes of `file` shared, read-write, at an address the kernel chooses.
pub(super) fn map_shared(
    file: &impl std::os::fd::AsFd,
    offset: u64,
    len: usize,
) -> std::io::Result<Arc<BarMapping>> {
    // SAFETY: a new shared mapping at an address the kernel chooses overlaps nothing of
    // ours; `BarMapping` owns it from here and unmaps it on drop.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            file,
            offset,
        )
    }?;
    let ptr = NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("mmap returned 0"))?;
    // SAFETY: the mapping was just made and nothing else refers to it.
    let m = unsafe { BarMapping::new(ptr, len) }.map_err(std::io::Error::other)?;
    Ok(Arc::new(m))
}

/// Maps BAR `bar` when VFIO allows it; `None` (with a debug event) otherwise.
pub(super) fn map_bar(bars: &VfioBars, bar: BarIndex, bdf: &str) -> Option<Arc<BarMapping>> {
    let r = bars.bars[usize::from(bar.get())]?;
    if r.flags & vb::VFIO_REGION_INFO_FLAG_MMAP == 0 {
        tracing::debug!(target: TARGET, bdf, %bar, "BAR cannot be mapped: doorbells use pwrite");
        return None;
    }
    let len = usize::try_from(r.size).ok()?;
    map_shared(&bars.device, r.offset, len)
        .map_err(|e| {
            tracing::debug!(target: TARGET, bdf, %bar, error = %e, "BAR cannot be mapped and guarded: doorbells use pwrite");
        })
        .ok()
}
