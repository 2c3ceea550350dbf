#![allow(unsafe_code)] // mapping, unmapping and addressing DMA regions, each block with its SAFETY.
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
//! Untouched memfd pages cost us nothing, but not every target is so lazy: SPDK's (DPDK's
//! vhost library) maps each region with `MAP_POPULATE` and looks every 4 KiB page up in
//! `/proc/self/pagemap`, some 5 ms per MiB, and commits all of it. So regions start small
//! ([`DEFAULT_REGION_SIZE`], 16 MiB) and each new one is twice the last, up to
//! [`DmaConfig::max_region_size`] (1 GiB by default): an attach shares what it needs, and
//! the eight regions a `SET_MEM_TABLE` carries still reach 3 GiB.
//!
//! A device behind an IOMMU (the PCI transport with VFIO type1) sees each region at
//! IOVA = process address, and pins the whole region when it is mapped. For it the
//! domain takes two settings: a small [`DmaConfig::region_size`], so pinning does not
//! take all of a small machine's memory, and [`DmaConfig::addr_limit`], which places
//! every region below an address the IOMMU can translate (QEMU's `intel-iommu` before
//! 9.2 translates 39 bits, while the kernel puts mappings near 2^47).
//!
//! A device with no IOMMU in between (uio_pci_generic, VFIO no-IOMMU) sees physical
//! addresses. For it the domain runs in *physical mode* ([`DmaConfig::physical`]):
//! regions are hugetlb memfds (2 MiB pages, required, no fallback), populated when they
//! are created, and the physical address of every 2 MiB page is read from
//! `/proc/self/pagemap` then and kept in a lock-free [`PhysMap`]. Hugetlb pages are
//! never swapped, and the kernel does not move them while they are mapped in normal
//! operation (DPDK and SPDK rely on the same). A buffer is contiguous in physical memory
//! only inside one 2 MiB page: [`PhysMap::translate`] splits a range at every
//! discontinuity, and the split virtqueue turns each piece into a descriptor (never one
//! descriptor across a boundary: SPDK bug #3189).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, Weak};

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

use crate::error::{Error, Result};

const TARGET: &str = "vbdev::mem";

/// Alignment and granularity of every region: 2 MiB, the x86-64 huge page size.
pub const REGION_ALIGN: usize = 2 << 20;

/// Default size of the first region (16 MiB); later ones double
/// ([`DmaConfig::max_region_size`]).
pub const DEFAULT_REGION_SIZE: usize = 16 << 20;

/// Default cap on the size of a region (1 GiB).
pub const DEFAULT_MAX_REGION_SIZE: usize = 1 << 30;

/// Default alignment of I/O buffers: a page, so targets using `O_DIRECT` need no bounce.
pub const DEFAULT_BUF_ALIGN: usize = 4096;

/// The most regions a domain creates (a 64-bit mask tracks which ones a device knows).
pub const MAX_REGIONS: usize = 64;

/// Region size that suits devices which pin DMA memory (VFIO type1): 32 MiB.
pub const PINNED_REGION_SIZE: usize = 32 << 20;

/// Region size in physical mode: 16 MiB, eight 2 MiB huge pages.
pub const PHYSICAL_REGION_SIZE: usize = 16 << 20;

/// Size of a huge page, the unit of physical contiguity in physical mode.
pub const HUGE_PAGE: u64 = REGION_ALIGN as u64;

/// The address width of QEMU's `intel-iommu` before 9.2 (`aw-bits=39`): IOVAs below
/// 512 GiB.
pub const IOMMU_39BIT_LIMIT: u64 = 1 << 39;

/// How a [`DmaDomain`] creates its regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaConfig {
    /// Size of the first region in bytes, rounded up to [`REGION_ALIGN`]. Region `i` is
    /// `region_size << i` bytes up to [`DmaConfig::max_region_size`], and always large
    /// enough for the buffer that makes it.
    pub region_size: usize,
    /// Largest size the doubling reaches (a region made for one larger buffer is that
    /// buffer's size). At most `region_size` keeps every region the same size.
    pub max_region_size: usize,
    /// Try `MFD_HUGETLB` (2 MiB pages) first; fall back to normal pages with a warning.
    pub hugetlb: bool,
    /// Place every region so that it ends at or below this address (`None`: where the
    /// kernel chooses). Regions are then mapped with `MAP_FIXED_NOREPLACE` at the first
    /// free [`REGION_ALIGN`]ed window from `limit / 8` up; creating a region fails when
    /// no window below the limit is free. For IOMMUs that translate fewer address bits
    /// than the process uses (see [`IOMMU_39BIT_LIMIT`]).
    pub addr_limit: Option<u64>,
    /// Physical mode: hugetlb regions (required), populated at creation, with their
    /// physical addresses in a [`PhysMap`], for devices that see physical addresses.
    /// Needs free huge pages (`/proc/sys/vm/nr_hugepages`) and `CAP_SYS_ADMIN` (pagemap
    /// shows page frame numbers only to it).
    pub physical: bool,
}

impl Default for DmaConfig {
    fn default() -> Self {
        Self {
            region_size: DEFAULT_REGION_SIZE,
            max_region_size: DEFAULT_MAX_REGION_SIZE,
            hugetlb: false,
            addr_limit: None,
            physical: false,
        }
    }
}

impl DmaConfig {
    /// The configuration for devices behind VFIO type1: [`PINNED_REGION_SIZE`] regions
    /// below [`IOMMU_39BIT_LIMIT`], normal pages.
    pub fn pinned() -> Self {
        Self {
            region_size: PINNED_REGION_SIZE,
            max_region_size: PINNED_REGION_SIZE,
            hugetlb: false,
            addr_limit: Some(IOMMU_39BIT_LIMIT),
            physical: false,
        }
    }

    /// The configuration for PCI functions of every kind: physical mode
    /// ([`PHYSICAL_REGION_SIZE`] hugetlb regions, physical addresses known) below
    /// [`IOMMU_39BIT_LIMIT`], so the same memory also suits VFIO type1 (IOVA = address).
    pub fn physical() -> Self {
        Self {
            region_size: PHYSICAL_REGION_SIZE,
            max_region_size: PHYSICAL_REGION_SIZE,
            hugetlb: true,
            addr_limit: Some(IOMMU_39BIT_LIMIT),
            physical: true,
        }
    }
}

/// The physical addresses of a physical-mode domain's regions, read without locks.
///
/// Regions are added (under the domain's lock) and never removed; readers see a prefix
/// of the table through `count` (Release on add, Acquire on read).
pub struct PhysMap {
    regions: [OnceLock<PhysRegion>; MAX_REGIONS],
    count: AtomicUsize,
}

#[derive(Debug)]
struct PhysRegion {
    addr: u64,
    len: u64,
    /// Physical address of each [`HUGE_PAGE`] of the region, in order.
    pages: Box<[u64]>,
}

impl std::fmt::Debug for PhysMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhysMap")
            .field("regions", &self.count.load(Ordering::Acquire))
            .finish()
    }
}

/// Identity: two maps are equal when they are the same map (a domain has one).
impl PartialEq for PhysMap {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for PhysMap {}

impl PhysMap {
    fn new() -> Self {
        Self {
            regions: std::array::from_fn(|_| OnceLock::new()),
            count: AtomicUsize::new(0),
        }
    }

    /// A table over the given `(address, length, physical page addresses)` regions,
    /// for tests of code that translates.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn from_pages(regions: Vec<(u64, u64, Vec<u64>)>) -> Self {
        let m = Self::new();
        for (addr, len, pages) in regions {
            assert_eq!(pages.len() as u64, len.div_ceil(HUGE_PAGE));
            m.push(PhysRegion {
                addr,
                len,
                pages: pages.into_boxed_slice(),
            });
        }
        m
    }

    /// Appends a region; callers serialise (the domain's lock).
    fn push(&self, r: PhysRegion) {
        let i = self.count.load(Ordering::Acquire);
        assert!(i < MAX_REGIONS, "more physical regions than MAX_REGIONS");
        if self.regions[i].set(r).is_err() {
            unreachable!("slot {i} filled twice: pushes are serialised");
        }
        self.count.store(i + 1, Ordering::Release);
    }

    fn region(&self, addr: u64, len: u64) -> Option<&PhysRegion> {
        let n = self.count.load(Ordering::Acquire);
        self.regions[..n].iter().find_map(|r| {
            let r = r.get()?;
            let off = addr.checked_sub(r.addr)?;
            (off < r.len && len <= r.len - off).then_some(r)
        })
    }

    /// Calls `piece(phys, len)` for each physically contiguous piece of
    /// `[addr, addr + len)`, in order, merging adjacent huge pages that happen to be
    /// contiguous. Returns false (and calls nothing) when the range is not inside one
    /// region of the domain. A zero length gives one zero-length piece.
    pub fn translate(&self, addr: u64, len: u64, mut piece: impl FnMut(u64, u64)) -> bool {
        let Some(r) = self.region(addr, len) else {
            return false;
        };
        let mut off = addr - r.addr;
        let mut rest = len;
        let mut cur: Option<(u64, u64)> = None;
        loop {
            let page = (off / HUGE_PAGE) as usize; // off < r.len, so page < pages.len()
            let in_page = off % HUGE_PAGE;
            let take = rest.min(HUGE_PAGE - in_page);
            let pa = r.pages[page] + in_page;
            cur = match cur {
                Some((start, l)) if start + l == pa => Some((start, l + take)),
                Some((start, l)) => {
                    piece(start, l);
                    Some((pa, take))
                }
                None => Some((pa, take)),
            };
            rest -= take;
            off += take;
            if rest == 0 {
                break;
            }
        }
        if let Some((start, l)) = cur {
            piece(start, l);
        }
        true
    }

    /// The physical address of `[addr, addr + len)` when it is one contiguous piece.
    pub fn contiguous(&self, addr: u64, len: u64) -> Option<u64> {
        let mut first = None;
        let mut pieces = 0;
        let inside = self.translate(addr, len, |pa, _| {
            pieces += 1;
            first.get_or_insert(pa);
        });
        (inside && pieces == 1).then_some(first?)
    }
}

fn open_pagemap() -> Result<std::fs::File> {
    std::fs::File::open("/proc/self/pagemap").map_err(|e| {
        Error::DmaMap(std::io::Error::new(
            e.kind(),
            format!("cannot open /proc/self/pagemap for physical addresses: {e}"),
        ))
    })
}

/// The page frame number of the present 4 KiB page at `va`, from `/proc/self/pagemap`
/// (one `u64` per page: bit 63 present, bits 0-54 the frame number, which reads as 0
/// without `CAP_SYS_ADMIN`).
fn read_pfn(pagemap: &std::fs::File, va: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    let n =
        rustix::io::pread(pagemap, &mut b, va / 4096 * 8).map_err(|e| Error::DmaMap(e.into()))?;
    if n != 8 {
        return Err(Error::DmaMap(std::io::Error::other(format!(
            "short read of /proc/self/pagemap at {va:#x}"
        ))));
    }
    let entry = u64::from_le_bytes(b);
    if entry & (1 << 63) == 0 {
        return Err(Error::DmaMap(std::io::Error::other(format!(
            "DMA page {va:#x} is not present"
        ))));
    }
    let pfn = entry & ((1 << 55) - 1);
    if pfn == 0 {
        return Err(Error::DmaMap(std::io::Error::other(
            "/proc/self/pagemap shows no page frame numbers: physical DMA addresses need CAP_SYS_ADMIN (run as root)",
        )));
    }
    Ok(pfn)
}

/// Physical addresses of the huge pages of `[addr, addr + len)`, a populated hugetlb
/// mapping; each page is checked to be contiguous (first and last 4 KiB frames).
fn physical_pages(addr: u64, len: u64) -> Result<Box<[u64]>> {
    let pagemap = open_pagemap()?;
    (0..len.div_ceil(HUGE_PAGE))
        .map(|i| {
            let va = addr + i * HUGE_PAGE;
            let first = read_pfn(&pagemap, va)?;
            let last = read_pfn(&pagemap, va + HUGE_PAGE - 4096)?;
            if last != first + (HUGE_PAGE / 4096 - 1) {
                return Err(Error::DmaMap(std::io::Error::other(format!(
                    "DMA page {va:#x} is not physically contiguous (frames {first:#x}..{last:#x}): not a 2 MiB huge page"
                ))));
            }
            Ok(first * 4096)
        })
        .collect()
}

/// The physical address of byte `addr`, in a present page of this process.
///
/// # Errors
/// [`Error::DmaMap`] when pagemap cannot be read, the page is not present, or the
/// process may not see page frame numbers.
pub fn physical_address(addr: u64) -> Result<u64> {
    Ok(read_pfn(&open_pagemap()?, addr)? * 4096 + (addr & 4095))
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
    /// Physical address of each huge page, in physical mode (moved to the [`PhysMap`]).
    pages: Option<Box<[u64]>>,
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
    /// Physical addresses, in physical mode.
    phys: Option<PhysMap>,
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

    /// A domain of its own, apart from the global one, that lives until the process
    /// exits (regions are never unmapped). For tests and tools that must see which
    /// regions exist; devices and buffers normally share [`DmaDomain::global`].
    pub fn leak(config: DmaConfig) -> &'static DmaDomain {
        Box::leak(Box::new(DmaDomain::new(config)))
    }

    pub(crate) fn new(config: DmaConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                regions: Vec::new(),
                listeners: Vec::new(),
            }),
            phys: config.physical.then(PhysMap::new),
        }
    }

    /// The physical addresses of every region, when the domain is in physical mode.
    pub fn phys_map(&'static self) -> Option<&'static PhysMap> {
        self.phys.as_ref()
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

    /// Every region that exists now, in the order they were made (by [`RegionId`]).
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
            .max(self.next_region_size(inner.regions.len()))
            .checked_next_multiple_of(REGION_ALIGN)
            .ok_or(Error::DmaAlloc { len, align })?;
        let id = RegionId(inner.regions.len() as u8); // < MAX_REGIONS = 64, fits in u8
        let mut region = Region::create(id, size, &self.config)?;
        if let (Some(phys), Some(pages)) = (&self.phys, region.pages.take()) {
            // Runs of physically adjacent huge pages: each run boundary splits the
            // descriptors of a buffer that crosses it.
            let runs = 1 + pages
                .windows(2)
                .filter(|w| w[0] + HUGE_PAGE != w[1])
                .count();
            tracing::info!(target: TARGET, region = id.0, pages = pages.len(), contiguous_runs = runs, first = format_args!("{:#x}", pages[0]), "physical addresses of the region");
            phys.push(PhysRegion {
                addr: region.info.addr,
                len: region.info.len,
                pages,
            });
        }
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

    /// The size of region `index` when no buffer asks for more: the first region's size,
    /// doubled per region before it, capped at [`DmaConfig::max_region_size`].
    fn next_region_size(&self, index: usize) -> usize {
        let c = &self.config;
        let doubled = u32::try_from(index)
            .ok()
            .and_then(|i| 1usize.checked_shl(i))
            .map_or(usize::MAX, |m| c.region_size.saturating_mul(m));
        doubled.min(c.max_region_size.max(c.region_size))
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
    fn create(id: RegionId, size: usize, config: &DmaConfig) -> Result<Self> {
        let limit = config.addr_limit;
        if config.physical {
            return Self::map(id, size, true, limit, true).map_err(|e| match e {
                Error::DmaMap(io) if io.raw_os_error().is_some() => {
                    let pages = size as u64 / HUGE_PAGE;
                    Error::DmaMap(std::io::Error::new(
                        io.kind(),
                        format!(
                            "physical DMA memory needs {pages} free 2 MiB huge pages per region (HugePages_Free in /proc/meminfo; raise /proc/sys/vm/nr_hugepages): {io}"
                        ),
                    ))
                }
                e => e,
            });
        }
        if config.hugetlb {
            match Self::map(id, size, true, limit, false) {
                Ok(r) => return Ok(r),
                // No hugetlbfs, or not enough huge pages reserved (HugePages_Free).
                Err(e) => {
                    tracing::warn!(target: TARGET, region = id.0, error = %e, "huge pages unavailable, using normal pages");
                }
            }
        }
        Self::map(id, size, false, limit, false)
    }

    /// Maps a new memfd region; `physical` populates it and reads its physical pages.
    fn map(
        id: RegionId,
        size: usize,
        hugetlb: bool,
        limit: Option<u64>,
        physical: bool,
    ) -> Result<Self> {
        let name = format!("vbdev-dma-{}", id.0);
        let flags = if hugetlb {
            MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB
        } else {
            MemfdFlags::CLOEXEC
        };
        let fd = rustix::fs::memfd_create(&name, flags).map_err(|e| Error::DmaMap(e.into()))?;
        rustix::fs::ftruncate(&fd, size as u64).map_err(|e| Error::DmaMap(e.into()))?;
        let populate = if physical {
            MapFlags::POPULATE
        } else {
            MapFlags::empty()
        };
        let aligned = match limit {
            Some(limit) => Self::map_below(&fd, size, limit, populate)?,
            None => Self::map_anywhere(&fd, size, populate)?,
        };
        let pages = if physical {
            match physical_pages(aligned as u64, size as u64) {
                Ok(p) => Some(p),
                Err(e) => {
                    // SAFETY: the mapping was made just above and nothing refers to it.
                    let _ = unsafe { rustix::mm::munmap(aligned as *mut _, size) };
                    return Err(e);
                }
            }
        } else {
            None
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
            pages,
            free: vec![(0, size)],
        })
    }

    /// Maps `fd` shared at the first free [`REGION_ALIGN`]ed address from `limit / 8` up
    /// where `size` bytes end at or below `limit`; returns the address.
    fn map_below(fd: &OwnedFd, size: usize, limit: u64, extra: MapFlags) -> Result<usize> {
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
                    MapFlags::SHARED | MapFlags::FIXED_NOREPLACE | extra,
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
    fn map_anywhere(fd: &OwnedFd, size: usize, extra: MapFlags) -> Result<usize> {
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
                MapFlags::SHARED | MapFlags::FIXED | extra,
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

/// A buffer in the DMA domain, owned: an I/O buffer that is either the caller's (who
/// may hold references into it) or, lent to a [`crate::RequestQueue`], the device's,
/// never both. Memory the device writes while the driver keeps using it (rings, request
/// headers and statuses) is a [`crate::SharedMem`] instead, which makes no references.
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
mod tests;
