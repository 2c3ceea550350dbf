//! DMA memory: the process-wide domain of shared memfd regions that devices can see.
//!
//! A vhost-user target maps our memory through the file descriptors we pass it
//! (`SET_MEM_TABLE` / `ADD_MEM_REG`), so every byte a device touches (rings, request
//! headers, status bytes, I/O buffers) must live in a `MAP_SHARED` mapping of a file.
//! [`DmaDomain`] owns a few large memfd regions (2 MiB aligned, hugetlb when asked for
//! and available, never required) and hands out [`DmaBuf`]s from them.
//!
//! Regions are created on demand and are never unmapped: a region lives until the
//! process exits. That is what makes a [`DmaBuf`]'s pointer valid for as long as the
//! buffer exists, and what lets transports hand a region's address to a device once.
//! Untouched memfd pages cost nothing, so regions are large (1 GiB by default).
//!
//! A device behind an IOMMU (the PCI transport with VFIO type1) sees each region at
//! IOVA = process address, and pins the whole region when it is mapped. For it the
//! domain takes two settings: a small [`DmaConfig::region_size`], so pinning does not
//! take all of a small machine's memory, and [`DmaConfig::addr_limit`], which places
//! every region below an address the IOMMU can translate (QEMU's `intel-iommu` before
//! 9.2 translates 39 bits, while the kernel puts mappings near 2^47).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock, Weak};

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

use crate::error::{Error, Result};

const TARGET: &str = "vbdev::mem";

/// Alignment and granularity of every region: 2 MiB, the x86-64 huge page size.
pub const REGION_ALIGN: usize = 2 << 20;

/// Default size of a new region (1 GiB of address space, populated lazily).
pub const DEFAULT_REGION_SIZE: usize = 1 << 30;

/// Default alignment of I/O buffers: a page, so targets using `O_DIRECT` need no bounce.
pub const DEFAULT_BUF_ALIGN: usize = 4096;

/// The most regions a domain creates (a 64-bit mask tracks which ones a device knows).
pub const MAX_REGIONS: usize = 64;

/// Region size that suits devices which pin DMA memory (VFIO type1): 32 MiB.
pub const PINNED_REGION_SIZE: usize = 32 << 20;

/// The address width of QEMU's `intel-iommu` before 9.2 (`aw-bits=39`): IOVAs below
/// 512 GiB.
pub const IOMMU_39BIT_LIMIT: u64 = 1 << 39;

/// How a [`DmaDomain`] creates its regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaConfig {
    /// Size of each new region in bytes, rounded up to [`REGION_ALIGN`].
    pub region_size: usize,
    /// Try `MFD_HUGETLB` (2 MiB pages) first; fall back to normal pages with a warning.
    pub hugetlb: bool,
    /// Place every region so that it ends at or below this address (`None`: where the
    /// kernel chooses). Regions are then mapped with `MAP_FIXED_NOREPLACE` at the first
    /// free [`REGION_ALIGN`]ed window from `limit / 8` up; creating a region fails when
    /// no window below the limit is free. For IOMMUs that translate fewer address bits
    /// than the process uses (see [`IOMMU_39BIT_LIMIT`]).
    pub addr_limit: Option<u64>,
}

impl Default for DmaConfig {
    fn default() -> Self {
        Self {
            region_size: DEFAULT_REGION_SIZE,
            hugetlb: false,
            addr_limit: None,
        }
    }
}

impl DmaConfig {
    /// The configuration for devices behind VFIO type1: [`PINNED_REGION_SIZE`] regions
    /// below [`IOMMU_39BIT_LIMIT`], normal pages.
    pub fn pinned() -> Self {
        Self {
            region_size: PINNED_REGION_SIZE,
            hugetlb: false,
            addr_limit: Some(IOMMU_39BIT_LIMIT),
        }
    }
}

/// Index of a region inside the domain (`0..MAX_REGIONS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u8);

impl RegionId {
    /// This region's bit in a 64-bit region mask.
    pub fn bit(self) -> u64 {
        1u64 << self.0
    }
}

/// A device-visible address (for vhost-user: the process virtual address; for PCI: an IOVA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

/// What a transport needs to share one region with a device.
#[derive(Debug, Clone, Copy)]
pub struct RegionInfo {
    /// The region's index.
    pub id: RegionId,
    /// Start of the mapping in this process.
    pub addr: u64,
    /// Length in bytes (a multiple of [`REGION_ALIGN`]).
    pub len: u64,
    /// The memfd backing the region; valid for the life of the process.
    pub fd: BorrowedFd<'static>,
    /// Whether the region uses huge pages.
    pub hugetlb: bool,
}

/// Told about every region a domain creates after it subscribed.
pub trait RegionListener: Send + Sync {
    /// A new region exists; share it with the device if the transport can.
    fn region_added(&self, region: &RegionInfo);
}

struct Region {
    info: RegionInfo,
    base: NonNull<u8>,
    /// Free ranges as `(offset, len)`, sorted by offset, never adjacent (coalesced).
    free: Vec<(usize, usize)>,
}

struct Inner {
    regions: Vec<Region>,
    listeners: Vec<Weak<dyn RegionListener>>,
}

/// The process-wide DMA memory domain.
///
/// # Invariants
/// Every region stays mapped, with its memfd open, until the process exits; the free
/// lists of a region never overlap a live [`DmaBuf`].
pub struct DmaDomain {
    config: DmaConfig,
    inner: Mutex<Inner>,
}

// SAFETY: `Region::base` is a pointer into a mapping that is never unmapped and is only
// dereferenced through `DmaBuf`s, which own disjoint ranges; all other state is behind
// the mutex.
unsafe impl Send for DmaDomain {}
// SAFETY: as for `Send`: shared access only reaches the region list through the mutex.
unsafe impl Sync for DmaDomain {}

impl std::fmt::Debug for DmaDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("DmaDomain")
            .field("config", &self.config)
            .field("regions", &inner.regions.len())
            .finish()
    }
}

static GLOBAL: OnceLock<DmaDomain> = OnceLock::new();

impl DmaDomain {
    /// The process-wide domain, created with [`DmaConfig::default`] unless
    /// [`DmaDomain::configure`] ran first.
    pub fn global() -> &'static DmaDomain {
        GLOBAL.get_or_init(|| DmaDomain::new(DmaConfig::default()))
    }

    /// Sets the global domain's configuration.
    ///
    /// # Errors
    /// [`Error::DmaAlreadyConfigured`] when the global domain already exists with another
    /// configuration.
    pub fn configure(config: DmaConfig) -> Result<&'static DmaDomain> {
        let domain = GLOBAL.get_or_init(|| DmaDomain::new(config));
        if domain.config != config {
            return Err(Error::DmaAlreadyConfigured);
        }
        Ok(domain)
    }

    fn new(config: DmaConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                regions: Vec::new(),
                listeners: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the free lists half-updated in a
        // way that matters more than refusing all later allocations would.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration this domain was created with.
    pub fn config(&self) -> DmaConfig {
        self.config
    }

    /// Every region that exists now.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.lock().regions.iter().map(|r| r.info).collect()
    }

    /// Makes sure at least one region exists (transports share regions at attach).
    ///
    /// # Errors
    /// [`Error::DmaMap`] when the first region cannot be created.
    pub fn reserve(&'static self) -> Result<()> {
        if self.lock().regions.is_empty() {
            drop(self.alloc(1)?);
        }
        Ok(())
    }

    /// Registers a listener for regions created from now on and returns the regions
    /// that exist already, atomically (no region is missed or reported twice).
    pub fn subscribe(&self, listener: Weak<dyn RegionListener>) -> Vec<RegionInfo> {
        let mut inner = self.lock();
        inner.listeners.retain(|l| l.strong_count() > 0);
        inner.listeners.push(listener);
        inner.regions.iter().map(|r| r.info).collect()
    }

    /// Allocates `len` bytes aligned to [`DEFAULT_BUF_ALIGN`].
    ///
    /// The contents are whatever the memory held before; use `fill` (through `DerefMut`) to clear.
    ///
    /// # Errors
    /// [`Error::DmaAlloc`] when no region can hold the buffer and no new one can be made.
    pub fn alloc(&'static self, len: usize) -> Result<DmaBuf> {
        self.alloc_aligned(len, DEFAULT_BUF_ALIGN)
    }

    /// Allocates `len` bytes aligned to `align` (a power of two, at most [`REGION_ALIGN`]).
    ///
    /// # Errors
    /// [`Error::DmaAlloc`] for a zero length, a bad alignment, or when memory runs out.
    pub fn alloc_aligned(&'static self, len: usize, align: usize) -> Result<DmaBuf> {
        if len == 0 || !align.is_power_of_two() || align > REGION_ALIGN {
            return Err(Error::DmaAlloc { len, align });
        }
        let mut inner = self.lock();
        for region in inner.regions.iter_mut() {
            if let Some(buf) = region.carve(self, len, align) {
                return Ok(buf);
            }
        }
        if inner.regions.len() >= MAX_REGIONS {
            return Err(Error::DmaAlloc { len, align });
        }
        let size = len
            .max(self.config.region_size)
            .checked_next_multiple_of(REGION_ALIGN)
            .ok_or(Error::DmaAlloc { len, align })?;
        let id = RegionId(inner.regions.len() as u8); // < MAX_REGIONS = 64, fits in u8
        let mut region = Region::create(id, size, self.config.hugetlb, self.config.addr_limit)?;
        let buf = region
            .carve(self, len, align)
            .expect("a fresh region at least `len` long holds the buffer");
        let info = region.info;
        inner.regions.push(region);
        let listeners: Vec<_> = inner.listeners.iter().filter_map(Weak::upgrade).collect();
        drop(inner);
        tracing::info!(target: TARGET, region = id.0, len = size, hugetlb = info.hugetlb, "dma region created");
        for l in listeners {
            l.region_added(&info);
        }
        Ok(buf)
    }

    /// Allocates `len` zeroed bytes aligned to `align`.
    ///
    /// # Errors
    /// As [`DmaDomain::alloc_aligned`].
    pub fn alloc_zeroed(&'static self, len: usize, align: usize) -> Result<DmaBuf> {
        let mut buf = self.alloc_aligned(len, align)?;
        buf.fill(0);
        Ok(buf)
    }

    fn release(&self, region: RegionId, offset: usize, len: usize) {
        let mut inner = self.lock();
        let Some(r) = inner.regions.get_mut(usize::from(region.0)) else {
            debug_assert!(false, "DmaBuf from an unknown region");
            return;
        };
        r.give_back(offset, len);
    }

    /// Finds the region and offset that contain `[addr, addr + len)`, if one does.
    pub fn lookup(&self, addr: u64, len: u64) -> Option<(RegionId, u64)> {
        let inner = self.lock();
        inner.regions.iter().find_map(|r| {
            let off = addr.checked_sub(r.info.addr)?;
            (off.checked_add(len)? <= r.info.len).then_some((r.info.id, off))
        })
    }
}

impl Region {
    fn create(id: RegionId, size: usize, want_huge: bool, limit: Option<u64>) -> Result<Self> {
        if want_huge {
            match Self::map(id, size, true, limit) {
                Ok(r) => return Ok(r),
                // No hugetlbfs, or not enough huge pages reserved (HugePages_Free).
                Err(e) => {
                    tracing::warn!(target: TARGET, region = id.0, error = %e, "huge pages unavailable, using normal pages");
                }
            }
        }
        Self::map(id, size, false, limit)
    }

    fn map(id: RegionId, size: usize, hugetlb: bool, limit: Option<u64>) -> Result<Self> {
        let name = format!("vbdev-dma-{}", id.0);
        let flags = if hugetlb {
            MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB
        } else {
            MemfdFlags::CLOEXEC
        };
        let fd = rustix::fs::memfd_create(&name, flags).map_err(|e| Error::DmaMap(e.into()))?;
        rustix::fs::ftruncate(&fd, size as u64).map_err(|e| Error::DmaMap(e.into()))?;
        let aligned = match limit {
            Some(limit) => Self::map_below(&fd, size, limit)?,
            None => Self::map_anywhere(&fd, size)?,
        };
        // The fd must outlive every device that maps it: the region is never freed, so
        // leak it into a `'static` borrow.
        let fd: &'static OwnedFd = Box::leak(Box::new(fd));
        Ok(Self {
            info: RegionInfo {
                id,
                addr: aligned as u64,
                len: size as u64,
                fd: fd.as_fd(),
                hugetlb,
            },
            base: NonNull::new(aligned as *mut u8).expect("mmap never returns address 0 here"),
            free: vec![(0, size)],
        })
    }

    /// Maps `fd` shared at the first free [`REGION_ALIGN`]ed address from `limit / 8` up
    /// where `size` bytes end at or below `limit`; returns the address.
    fn map_below(fd: &OwnedFd, size: usize, limit: u64) -> Result<usize> {
        let no_room = || {
            Error::DmaMap(std::io::Error::other(format!(
                "no free {size}-byte window below {limit:#x} for a DMA region"
            )))
        };
        let step = size as u64; // a multiple of REGION_ALIGN, not 0
        let mut at = (limit / 8).next_multiple_of(REGION_ALIGN as u64);
        while at.checked_add(step).is_some_and(|end| end <= limit) {
            let want = usize::try_from(at).map_err(|_| no_room())?;
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping: it fails
            // with EEXIST when `[want, want + size)` overlaps one, so nothing this process
            // uses is touched; the new mapping is ours alone.
            let mapped = unsafe {
                rustix::mm::mmap(
                    want as *mut _,
                    size,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
                    fd,
                    0,
                )
            };
            match mapped {
                Ok(p) if p as usize == want => return Ok(want),
                Ok(p) => {
                    // A kernel before 4.17 takes the flag as a mere hint.
                    // SAFETY: `p` is the mapping just made, which no one references.
                    let _ = unsafe { rustix::mm::munmap(p, size) };
                    return Err(Error::DmaMap(std::io::Error::other(
                        "the kernel ignores MAP_FIXED_NOREPLACE (Linux 4.17 or later needed)",
                    )));
                }
                Err(rustix::io::Errno::EXIST) => at += step,
                Err(e) => return Err(Error::DmaMap(e.into())),
            }
        }
        Err(no_room())
    }

    /// Maps `fd` shared at a [`REGION_ALIGN`]ed address the kernel chooses.
    fn map_anywhere(fd: &OwnedFd, size: usize) -> Result<usize> {
        let map_err = |e: rustix::io::Errno| Error::DmaMap(e.into());
        // Reserve `size + REGION_ALIGN` of address space, then map the memfd over an
        // aligned window of it and give the rest back.
        let reserve = size + REGION_ALIGN;
        // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel chooses
        // overlaps nothing we own.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                reserve,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(map_err)?;
        let start = raw as usize;
        let aligned = start.next_multiple_of(REGION_ALIGN);
        // SAFETY: `[aligned, aligned + size)` lies inside the reservation made just above
        // (aligned - start < REGION_ALIGN), which nothing else uses; MAP_FIXED replaces it.
        let mapped = unsafe {
            rustix::mm::mmap(
                aligned as *mut _,
                size,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                fd,
                0,
            )
        };
        if let Err(e) = mapped {
            // SAFETY: unmapping our own reservation, which no one references.
            let _ = unsafe { rustix::mm::munmap(raw, reserve) };
            return Err(map_err(e));
        }
        let head = aligned - start;
        let tail = reserve - head - size;
        if head > 0 {
            // SAFETY: `[start, aligned)` is the unused front of our reservation.
            let _ = unsafe { rustix::mm::munmap(raw, head) };
        }
        if tail > 0 {
            // SAFETY: `[aligned + size, start + reserve)` is the unused back of our reservation.
            let _ = unsafe { rustix::mm::munmap((aligned + size) as *mut _, tail) };
        }
        Ok(aligned)
    }

    /// First fit: takes `len` bytes at an `align`ed offset from the free list.
    fn carve(&mut self, domain: &'static DmaDomain, len: usize, align: usize) -> Option<DmaBuf> {
        let (i, off) = self.free.iter().enumerate().find_map(|(i, &(off, flen))| {
            // Offsets and lengths are below the region size, so none of this overflows.
            let start = off.next_multiple_of(align);
            (start + len <= off + flen).then_some((i, start))
        })?;
        let (foff, flen) = self.free[i];
        let before = (foff, off - foff);
        let after = (off + len, foff + flen - (off + len));
        let mut repl = Vec::with_capacity(2);
        if before.1 > 0 {
            repl.push(before);
        }
        if after.1 > 0 {
            repl.push(after);
        }
        self.free.splice(i..=i, repl);
        // SAFETY: `off + len <= region size`, so the pointer stays inside the mapping.
        let ptr = unsafe { self.base.add(off) };
        Some(DmaBuf {
            ptr,
            len,
            region: self.info.id,
            offset: off,
            iova: Iova(self.info.addr + off as u64),
            domain,
        })
    }

    fn give_back(&mut self, off: usize, len: usize) {
        let i = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(i, (off, len));
        // Coalesce with the successor, then with the predecessor.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

/// A buffer in the DMA domain, owned: while a request is in flight the request owns it,
/// so no one else can touch the bytes the device reads or writes.
///
/// # Invariants
/// `ptr..ptr + len` lies inside region `region` at `offset`, is mapped for the life of
/// the process, and belongs to this buffer alone until it is dropped.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    region: RegionId,
    offset: usize,
    iova: Iova,
    domain: &'static DmaDomain,
}

// SAFETY: a DmaBuf owns its range exclusively (type invariant), like a Box<[u8]>.
unsafe impl Send for DmaBuf {}
// SAFETY: shared references only allow reads of the owned range, like &[u8].
unsafe impl Sync for DmaBuf {}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("region", &self.region.0)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl DmaBuf {
    /// Allocates from the global domain; see [`DmaDomain::alloc`].
    ///
    /// # Errors
    /// [`Error::DmaAlloc`] when memory runs out.
    pub fn alloc(len: usize) -> Result<Self> {
        DmaDomain::global().alloc(len)
    }

    /// Allocates zeroed memory from the global domain; see [`DmaDomain::alloc_zeroed`].
    ///
    /// # Errors
    /// [`Error::DmaAlloc`] when memory runs out or `align` is invalid.
    pub fn zeroed(len: usize, align: usize) -> Result<Self> {
        DmaDomain::global().alloc_zeroed(len, align)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: buffers are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The region this buffer lives in.
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// The address a device uses for the first byte.
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// Copies `data` into the buffer at `offset`.
    ///
    /// # Panics
    /// When the range does not fit the buffer.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) {
        self[offset..offset + data.len()].copy_from_slice(data);
    }

    /// Reads the byte at `offset` with a volatile load: for bytes a device writes while
    /// the buffer is shared (status bytes), read once after the completion is seen.
    ///
    /// # Panics
    /// When `offset` is out of range.
    pub fn read_volatile(&self, offset: usize) -> u8 {
        assert!(
            offset < self.len,
            "offset {offset} beyond buffer of {}",
            self.len
        );
        // SAFETY: `offset < len`, so the byte lies in the owned, mapped range.
        unsafe { self.ptr.as_ptr().add(offset).read_volatile() }
    }

    /// A raw pointer to the first byte, for code that shares the memory with a device.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl std::ops::Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: type invariant: the range is mapped, initialised (file-backed pages are
        // always initialised) and owned by `self`; `&self` forbids concurrent `&mut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.domain.release(self.region, self.offset, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_disjoint_and_reused() {
        let d = DmaDomain::global();
        let a = d.alloc_aligned(1000, 512).unwrap();
        let b = d.alloc_aligned(4096, 4096).unwrap();
        assert_eq!(a.iova().0 % 512, 0);
        assert_eq!(b.iova().0 % 4096, 0);
        let (ra, rb) = (a.iova().0, b.iova().0);
        assert!(ra + 1000 <= rb || rb + 4096 <= ra, "buffers overlap");
        let (region, off) = d.lookup(b.iova().0, 4096).unwrap();
        assert_eq!(region, b.region());
        assert_eq!(off % 4096, 0);
        drop(b);
        let regions = d.regions();
        assert!(regions.iter().all(|r| r.addr % REGION_ALIGN as u64 == 0));
        assert!(regions.iter().all(|r| r.len % REGION_ALIGN as u64 == 0));
    }

    #[test]
    fn writes_are_visible_through_the_memfd() {
        let mut buf = DmaBuf::zeroed(8192, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        buf[100] = 0xa5;
        let info = DmaDomain::global()
            .regions()
            .into_iter()
            .find(|r| r.id == buf.region())
            .unwrap();
        let off = buf.iova().0 - info.addr + 100;
        let mut byte = [0u8; 1];
        rustix::io::pread(info.fd, &mut byte, off).unwrap();
        assert_eq!(byte[0], 0xa5);
    }

    #[test]
    fn hugetlb_is_used_when_pages_are_free_and_never_required() {
        let free: u64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let r = Region::create(RegionId(63), REGION_ALIGN, true, None).expect("falls back");
        if free == 0 {
            assert!(!r.info.hugetlb, "no free huge pages, yet hugetlb claimed");
        }
        assert_eq!(r.info.addr % REGION_ALIGN as u64, 0);
        assert_eq!(r.info.len, REGION_ALIGN as u64);
    }

    #[test]
    fn regions_with_an_addr_limit_are_placed_below_it_without_overlap() {
        let limit = IOMMU_39BIT_LIMIT;
        let a = Region::create(RegionId(62), REGION_ALIGN, false, Some(limit)).unwrap();
        let b = Region::create(RegionId(61), 2 * REGION_ALIGN, false, Some(limit)).unwrap();
        for r in [&a, &b] {
            assert!(
                r.info.addr >= limit / 8,
                "{:#x} below the window",
                r.info.addr
            );
            assert!(r.info.addr + r.info.len <= limit);
            assert_eq!(r.info.addr % REGION_ALIGN as u64, 0);
        }
        let (lo, hi) = if a.info.addr < b.info.addr {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(
            lo.info.addr + lo.info.len <= hi.info.addr,
            "regions overlap"
        );
        // The memory is usable.
        // SAFETY: `base` points at the start of the region's live, writable mapping.
        unsafe { b.base.as_ptr().write(7) };
    }

    #[test]
    fn a_full_window_below_the_limit_is_an_error() {
        // A limit whose window [limit / 8, limit) cannot hold the region.
        let r = Region::create(RegionId(60), 64 * REGION_ALIGN, false, Some(8 << 20));
        assert!(matches!(r, Err(Error::DmaMap(_))));
    }

    #[test]
    fn bad_requests_are_errors() {
        let d = DmaDomain::global();
        assert!(matches!(d.alloc(0), Err(Error::DmaAlloc { .. })));
        assert!(matches!(d.alloc_aligned(8, 3), Err(Error::DmaAlloc { .. })));
    }

    #[test]
    fn free_ranges_coalesce() {
        DmaDomain::global().reserve().unwrap();
        let fd = DmaDomain::global().regions()[0].fd;
        let mut r = Region {
            info: RegionInfo {
                id: RegionId(0),
                addr: 0,
                len: 100,
                fd,
                hugetlb: false,
            },
            base: NonNull::dangling(),
            free: vec![],
        };
        r.give_back(10, 10);
        r.give_back(30, 10);
        r.give_back(20, 10);
        assert_eq!(r.free, vec![(10, 30)]);
        r.give_back(0, 10);
        r.give_back(40, 60);
        assert_eq!(r.free, vec![(0, 100)]);
    }
}
