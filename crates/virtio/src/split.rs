#![allow(unsafe_code)] // ring memory reached through atomics and volatile accesses, each block with its SAFETY.
//! Driver side of a split virtqueue (virtio 1.2 §2.7).
//!
//! [`SplitQueue`] owns its descriptor table, available ring and used ring (one
//! [`SharedMem`]), plus one indirect table per head when `VIRTIO_RING_F_INDIRECT_DESC` was
//! negotiated. Everything is allocated in [`SplitQueue::new`]; `try_add`, `publish` and
//! `pop_used` never allocate, lock or make a system call.
//!
//! The device is not trusted: every value it writes (used `idx`, used element `id` and
//! `len`) is read once, checked, and a violation either fails the one request (a `len`
//! larger than the chain's writable space) or marks the queue broken (an `id` that is out
//! of range or not in flight, a used `idx` that jumps past what was made available).
//!
//! For a device that sees physical addresses ([`QueueConfig::phys`]), `try_add`
//! translates every segment and splits it at each physical discontinuity into several
//! descriptors; the ring and every indirect table are allocated so that each is
//! physically contiguous (virtio 1.2 §2.7: each ring part is contiguous in the device's
//! view).

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering, fence};

use crate::error::{Error, QueueError, Result};
use crate::mem::{DmaDomain, Iova, PhysMap};
use crate::shared::SharedMem;

const TARGET: &str = "vbdev::virtqueue";

/// Entries of the small per-head indirect tables (one 64-byte cache line).
const SMALL_TABLE: usize = 4;

/// Largest queue size a split virtqueue may have (virtio 1.2 §2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Descriptor flag: the chain continues in `next` (virtio 1.2 §2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table (§2.7.5.3).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want used-buffer notifications (§2.7.7).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want available-buffer notifications (§2.7.10).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// One descriptor of the table, as laid out in memory (virtio 1.2 §2.7.5).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Desc {
    /// Device address of the buffer (little-endian on the wire).
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor when `flags & NEXT`.
    pub next: u16,
}
const _: () = assert!(size_of::<Desc>() == 16);
const _: () = assert!(std::mem::offset_of!(Desc, len) == 8);
const _: () = assert!(std::mem::offset_of!(Desc, flags) == 12);
const _: () = assert!(std::mem::offset_of!(Desc, next) == 14);

impl Desc {
    /// The descriptor with every field in wire (little-endian) byte order.
    fn to_le(self) -> Self {
        Self {
            addr: self.addr.to_le(),
            len: self.len.to_le(),
            flags: self.flags.to_le(),
            next: self.next.to_le(),
        }
    }
}

/// A descriptor-chain element: a buffer the device reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Device address of the buffer.
    pub addr: Iova,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes (true) or reads (false) this buffer.
    pub device_writable: bool,
}

impl Segment {
    /// A buffer the device reads.
    pub fn readable(addr: Iova, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writable: false,
        }
    }
    /// A buffer the device writes.
    pub fn writable(addr: Iova, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writable: true,
        }
    }
}

/// Where the three parts of a ring live, for the transport to tell the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// Queue size (number of descriptors).
    pub size: u16,
    /// Descriptor table.
    pub desc: Iova,
    /// Available ring ("driver area").
    pub avail: Iova,
    /// Used ring ("device area").
    pub used: Iova,
}

/// Options of a [`SplitQueue`]; the ring features are those negotiated with the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Number of descriptors: a power of two in `1..=32768`.
    pub size: u16,
    /// `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC` was negotiated.
    pub indirect_desc: bool,
    /// Entries of each indirect table (the longest chain sent indirectly), 1..=1024.
    pub indirect_max: u16,
    /// The device sees physical addresses: translate with this map, which must be the
    /// domain's (`DmaDomain::phys_map`). `None`: the device sees DMA addresses as they
    /// are (vhost-user, an IOMMU at IOVA = address).
    pub phys: Option<&'static PhysMap>,
}

impl QueueConfig {
    /// A configuration without indirect descriptors or translation.
    pub fn new(size: u16, event_idx: bool) -> Self {
        Self {
            size,
            event_idx,
            indirect_desc: false,
            indirect_max: 1,
            phys: None,
        }
    }
}

/// A completed chain, taken from the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The cookie given to [`SplitQueue::try_add`].
    pub cookie: u64,
    /// Bytes the device says it wrote, or the error when that is more than the chain's
    /// writable space (virtio 1.2 §2.7.8.2: the device writes at most what it was given).
    pub written: std::result::Result<u32, QueueError>,
}

/// Why [`SplitQueue::try_add`] did not take a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// Not enough free descriptors now; retry after completions.
    Full,
    /// The chain is empty or longer than this queue can ever hold.
    TooLong,
    /// The queue is broken; no more requests go out.
    Broken,
    /// A segment is not DMA memory the device can reach (outside the domain's
    /// regions, in physical mode).
    NotDma,
    /// The chain names memory it may not (outside its context, its owner's buffer or a
    /// fixed buffer of a [`crate::RequestQueue`]), or its context is busy: a bug of the
    /// code that built it, which fails that one request.
    Invalid,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    cookie: u64,
    /// Descriptors of the main table this chain holds (1 when indirect).
    ndesc: u16,
    /// Sum of device-writable lengths.
    writable: u64,
    in_flight: bool,
}

/// The driver side of one split virtqueue.
///
/// # Invariants
/// - `ring` holds the descriptor table at 0, the available ring at `avail_off` and the
///   used ring at `used_off`, laid out for `size` entries (virtio 1.2 §2.7);
/// - `next[i]` links the free descriptors starting at `free_head`; `num_free` counts them;
/// - a head `h` with `slots[h].in_flight` owns `slots[h].ndesc` descriptors from `h` on,
///   linked by `next`, and (if indirect) `indirect` table `h`.
pub struct SplitQueue {
    size: u16,
    mask: u16,
    ring: SharedMem,
    avail_off: usize,
    used_off: usize,
    indirect: Option<SharedMem>,
    /// One cache line of indirect table per head, for the common short chains.
    small: Option<SharedMem>,
    indirect_max: u16,
    /// Entries between two heads' big indirect tables (`indirect_max`, rounded up to a
    /// power of two in physical mode so that no table crosses a huge page).
    indirect_stride: usize,
    /// Device address of the ring's first byte.
    ring_base: u64,
    phys: Option<&'static PhysMap>,
    /// Translated segments of the chain being added (physical mode), reused.
    xlate: Vec<Segment>,
    /// Chains of at most this many segments go into the ring directly even when
    /// indirect descriptors are available (0: every multi-segment chain is indirect).
    direct_max: u16,
    event_idx: bool,
    next: Box<[u16]>,
    slots: Box<[Slot]>,
    free_head: u16,
    num_free: u16,
    /// Heads added but not yet completed (published or not).
    in_flight: u16,
    /// Next available-ring index to fill.
    avail_shadow: u16,
    /// Value last stored to `avail.idx`.
    avail_published: u16,
    /// Next used-ring index to read.
    last_used: u16,
    /// `used.idx` as last read from the device (only ever checked values).
    used_seen: u16,
    interrupts: bool,
    broken: Option<QueueError>,
}

impl std::fmt::Debug for SplitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitQueue")
            .field("size", &self.size)
            .field("in_flight", &self.in_flight)
            .field("num_free", &self.num_free)
            .field("broken", &self.broken)
            .finish()
    }
}

fn layout(size: u16) -> (usize, usize, usize) {
    let n = usize::from(size);
    let avail_off = 16 * n;
    // flags, idx, ring[n], used_event: 2-byte aligned; the used ring is 4-byte aligned,
    // and we put it on a page of its own to keep device writes off the driver's lines.
    let used_off = (avail_off + 6 + 2 * n).next_multiple_of(4096);
    let total = used_off + 6 + 8 * n;
    (avail_off, used_off, total)
}

impl SplitQueue {
    /// Allocates and zeroes a queue's memory in `domain`.
    ///
    /// # Errors
    /// [`Error::InvalidQueueSize`] for a size that is not a power of two in 1..=32768,
    /// or a DMA allocation error.
    pub fn new(domain: &'static DmaDomain, config: QueueConfig) -> Result<Self> {
        let size = config.size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidQueueSize { size: size.into() });
        }
        let (avail_off, used_off, total) = layout(size);
        let phys = config.phys;
        // In physical mode a power-of-two alignment at least the size keeps an
        // allocation of up to a huge page inside one huge page, so contiguous.
        let contiguous_align = |len: usize| {
            if phys.is_some() {
                len.next_power_of_two().max(4096)
            } else {
                4096
            }
        };
        let ring = SharedMem::zeroed(domain, total, contiguous_align(total))?;
        let ring_base = match phys {
            None => ring.iova().0,
            Some(p) => p.contiguous(ring.iova().0, total as u64).ok_or_else(|| {
                Error::DmaMap(std::io::Error::other(format!(
                    "a ring of {total} bytes is not physically contiguous (queue size {size})"
                )))
            })?,
        };
        let indirect_max = config.indirect_max.clamp(1, 1024);
        let indirect_stride = if phys.is_some() {
            usize::from(indirect_max).next_power_of_two()
        } else {
            usize::from(indirect_max)
        };
        let indirect = if config.indirect_desc {
            // Not zeroed: an entry is always written before a chain points the device at
            // it, and untouched pages of a large table then cost no memory.
            Some(SharedMem::alloc(
                domain,
                usize::from(size) * indirect_stride * 16,
                contiguous_align(indirect_stride * 16),
            )?)
        } else {
            None
        };
        let small = if config.indirect_desc {
            Some(SharedMem::zeroed(
                domain,
                usize::from(size) * SMALL_TABLE * 16,
                4096,
            )?)
        } else {
            None
        };
        let next: Box<[u16]> = (0..size).map(|i| i.wrapping_add(1)).collect();
        let mut q = Self {
            size,
            mask: size - 1,
            ring,
            avail_off,
            used_off,
            indirect,
            small,
            indirect_max,
            indirect_stride,
            ring_base,
            phys,
            xlate: Vec::new(),
            direct_max: 0,
            event_idx: config.event_idx,
            next,
            slots: vec![Slot::default(); usize::from(size)].into_boxed_slice(),
            free_head: 0,
            num_free: size,
            in_flight: 0,
            avail_shadow: 0,
            avail_published: 0,
            last_used: 0,
            used_seen: 0,
            interrupts: true,
            broken: None,
        };
        if phys.is_some() {
            q.xlate.reserve(q.max_chain());
        }
        q.set_interrupts(false);
        Ok(q)
    }

    /// Ring addresses for the transport.
    pub fn addrs(&self) -> RingAddrs {
        let base = self.ring_base;
        RingAddrs {
            size: self.size,
            desc: Iova(base),
            avail: Iova(base + self.avail_off as u64),
            used: Iova(base + self.used_off as u64),
        }
    }

    /// Sends chains of up to `n` segments as direct descriptors while a quarter of the
    /// ring stays free, others through indirect tables (when negotiated). Direct chains
    /// cost the device one descriptor fetch less per request and take `n` ring slots
    /// instead of one. 0 (the default): every multi-segment chain is indirect.
    pub fn set_direct_max(&mut self, n: u16) {
        self.direct_max = n;
    }

    /// Number of descriptors.
    pub fn capacity(&self) -> u16 {
        self.size
    }

    /// Chains added and not yet completed.
    pub fn len(&self) -> u16 {
        self.in_flight
    }

    /// No chain is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight == 0
    }

    /// No descriptor is free.
    pub fn is_full(&self) -> bool {
        self.num_free == 0
    }

    /// Free descriptors of the main table.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// The longest chain this queue can ever take.
    pub fn max_chain(&self) -> usize {
        if self.indirect.is_some() {
            usize::from(self.indirect_max).max(usize::from(self.size))
        } else {
            usize::from(self.size)
        }
    }

    /// Why the queue is broken, if it is.
    pub fn broken(&self) -> Option<QueueError> {
        self.broken
    }

    /// Marks the queue broken: nothing more is added or reaped. Out of line: it is the
    /// error path of [`Self::pop_used`], which is inlined.
    #[cold]
    #[inline(never)]
    pub fn set_broken(&mut self, why: QueueError) {
        if self.broken.is_none() {
            tracing::warn!(target: TARGET, error = %why, "virtqueue broken");
            self.broken = Some(why);
        }
    }

    fn ptr(&self, off: usize) -> *mut u8 {
        debug_assert!(off < self.ring.len());
        // SAFETY: every caller passes an offset inside the layout computed in `new`, which
        // `ring` covers (type invariant); `add` stays in the allocation.
        unsafe { self.ring.as_ptr().add(off) }
    }

    fn avail_idx(&self) -> &AtomicU16 {
        // SAFETY: avail.idx is at `avail_off + 2`, 2-byte aligned (avail_off is a multiple
        // of 16), inside the ring, and lives as long as `self`; the device only reads it.
        unsafe { AtomicU16::from_ptr(self.ptr(self.avail_off + 2).cast()) }
    }

    fn used_idx(&self) -> &AtomicU16 {
        // SAFETY: used.idx is at `used_off + 2`, 2-byte aligned, inside the ring.
        unsafe { AtomicU16::from_ptr(self.ptr(self.used_off + 2).cast()) }
    }

    fn used_flags(&self) -> &AtomicU16 {
        // SAFETY: used.flags is at `used_off`, 4096-aligned, inside the ring.
        unsafe { AtomicU16::from_ptr(self.ptr(self.used_off).cast()) }
    }

    fn avail_flags(&self) -> &AtomicU16 {
        // SAFETY: avail.flags is at `avail_off`, 16-byte aligned, inside the ring.
        unsafe { AtomicU16::from_ptr(self.ptr(self.avail_off).cast()) }
    }

    fn used_event(&self) -> &AtomicU16 {
        // SAFETY: used_event follows avail.ring[size] at `avail_off + 4 + 2 * size`, 2-byte
        // aligned, inside the ring (virtio 1.2 §2.7.6).
        unsafe {
            AtomicU16::from_ptr(
                self.ptr(self.avail_off + 4 + 2 * usize::from(self.size))
                    .cast(),
            )
        }
    }

    fn avail_event(&self) -> &AtomicU16 {
        // SAFETY: avail_event follows used.ring[size] at `used_off + 4 + 8 * size`, 2-byte
        // aligned, inside the ring (virtio 1.2 §2.7.8).
        unsafe {
            AtomicU16::from_ptr(
                self.ptr(self.used_off + 4 + 8 * usize::from(self.size))
                    .cast(),
            )
        }
    }

    fn write_desc(&mut self, i: u16, d: Desc) {
        debug_assert!(i < self.size);
        let p = self.ptr(16 * usize::from(i)).cast::<Desc>();
        let d = d.to_le();
        // SAFETY: `i < size`, so the descriptor lies in the table (16-byte aligned); the
        // device reads it only after the Release store of avail.idx in `publish`.
        unsafe { p.write_volatile(d) }
    }

    /// The indirect table for a chain of `n` at `head`: its buffer and entry offset.
    fn indirect_table(&self, head: u16, n: usize) -> (&SharedMem, usize) {
        if n <= SMALL_TABLE {
            let small = self.small.as_ref().expect("indirect tables exist");
            (small, usize::from(head) * SMALL_TABLE)
        } else {
            let big = self.indirect.as_ref().expect("indirect tables exist");
            (big, usize::from(head) * self.indirect_stride)
        }
    }

    fn write_indirect(&self, head: u16, n: usize, i: u16, d: Desc) {
        let (buf, first) = self.indirect_table(head, n);
        let off = (first + usize::from(i)) * 16;
        debug_assert!(off + 16 <= buf.len());
        let d = d.to_le();
        // SAFETY: `head < size` and `i < n`, with `n <= SMALL_TABLE` for the small tables
        // (`size * SMALL_TABLE` entries) and `n <= indirect_max <= indirect_stride` for
        // the big ones (`size * indirect_stride` entries), so the entry is inside its allocation; the
        // table belongs to the free head `head`, so the device is not reading it.
        unsafe { buf.as_ptr().add(off).cast::<Desc>().write_volatile(d) }
    }

    /// Adds a descriptor chain (not yet visible to the device: see [`Self::publish`]).
    ///
    /// Device-readable segments must come before device-writable ones (§2.7.4.2).
    /// A chain of two or more segments goes through an indirect table of its head when
    /// `VIRTIO_RING_F_INDIRECT_DESC` was negotiated (one descriptor), else it takes one
    /// descriptor per segment.
    ///
    /// # Errors
    /// [`AddError::Full`] when there is no room now, [`AddError::TooLong`] when there never
    /// will be, [`AddError::Broken`] once the queue is broken.
    ///
    /// # Safety
    /// Each segment must describe memory that the device may access (read, and for
    /// writable segments also write) until this chain's cookie comes back from
    /// [`Self::pop_used`] or [`Self::reclaim_all`]; the caller must not use the writable
    /// memory meanwhile.
    pub unsafe fn try_add(
        &mut self,
        segs: &[Segment],
        cookie: u64,
    ) -> std::result::Result<(), AddError> {
        match self.phys {
            None => self.add_chain(segs, cookie),
            Some(phys) => self.add_translated(phys, segs, cookie),
        }
    }

    /// `try_add` for a device that sees physical addresses: each segment becomes one
    /// descriptor per physically contiguous piece.
    #[cold]
    fn add_translated(
        &mut self,
        phys: &PhysMap,
        segs: &[Segment],
        cookie: u64,
    ) -> std::result::Result<(), AddError> {
        let mut x = std::mem::take(&mut self.xlate);
        x.clear();
        let max = self.max_chain();
        let mut inside = true;
        for s in segs {
            inside = phys.translate(s.addr.0, u64::from(s.len), |pa, len| {
                if x.len() <= max {
                    x.push(Segment {
                        addr: Iova(pa),
                        len: len as u32, // a piece of a u32-long segment
                        device_writable: s.device_writable,
                    });
                }
            });
            if !inside {
                break;
            }
        }
        let r = if !inside {
            Err(AddError::NotDma)
        } else {
            self.add_chain(&x, cookie)
        };
        self.xlate = x;
        r
    }

    /// The chain of `segs`, device addresses as they are.
    fn add_chain(&mut self, segs: &[Segment], cookie: u64) -> std::result::Result<(), AddError> {
        if self.broken.is_some() {
            return Err(AddError::Broken);
        }
        let n = segs.len();
        if n == 0 || n > self.max_chain() {
            return Err(AddError::TooLong);
        }
        debug_assert!(
            segs.windows(2)
                .all(|w| !w[0].device_writable || w[1].device_writable),
            "readable segments must precede writable ones"
        );
        // Indirect for every multi-segment chain when negotiated: each request then takes
        // one ring descriptor, so a ring of N holds N requests. Short chains use a
        // one-cache-line table per head, which keeps the tables of a whole ring compact.
        // Short chains go direct (one descriptor fetch less for the device) while a
        // quarter of the ring stays free, so that a deep queue still fits a request per
        // descriptor through the tables.
        let direct = n <= usize::from(self.direct_max)
            && usize::from(self.num_free()) >= n + usize::from(self.size) / 4;
        let use_indirect =
            self.indirect.is_some() && n > 1 && n <= usize::from(self.indirect_max) && !direct;
        let need = if use_indirect { 1 } else { n };
        if need > usize::from(self.size) {
            return Err(AddError::TooLong);
        }
        if need > usize::from(self.num_free) {
            return Err(AddError::Full);
        }
        let head = self.free_head;
        let writable: u64 = segs
            .iter()
            .filter(|s| s.device_writable)
            .map(|s| u64::from(s.len))
            .sum();
        if use_indirect {
            let table = {
                let (buf, first) = self.indirect_table(head, n);
                let at = buf.iova().0 + first as u64 * 16;
                match self.phys {
                    None => at,
                    // Contiguous by construction (aligned stride); checked anyway.
                    Some(p) => p.contiguous(at, n as u64 * 16).ok_or(AddError::NotDma)?,
                }
            };
            for (i, s) in segs.iter().enumerate() {
                let i = i as u16; // n <= indirect_max <= 1024
                let last = usize::from(i) + 1 == n;
                let flags = if s.device_writable {
                    VIRTQ_DESC_F_WRITE
                } else {
                    0
                } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                self.write_indirect(
                    head,
                    n,
                    i,
                    Desc {
                        addr: s.addr.0,
                        len: s.len,
                        flags,
                        next: if last { 0 } else { i + 1 },
                    },
                );
            }
            self.write_desc(
                head,
                Desc {
                    addr: table,
                    len: (n * 16) as u32, // n <= 1024
                    flags: VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                },
            );
            self.free_head = self.next[usize::from(head)];
        } else {
            let mut idx = head;
            for (i, s) in segs.iter().enumerate() {
                let last = i + 1 == n;
                let nxt = self.next[usize::from(idx)];
                let flags = if s.device_writable {
                    VIRTQ_DESC_F_WRITE
                } else {
                    0
                } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                self.write_desc(
                    idx,
                    Desc {
                        addr: s.addr.0,
                        len: s.len,
                        flags,
                        next: if last { 0 } else { nxt },
                    },
                );
                if last {
                    self.free_head = nxt;
                } else {
                    idx = nxt;
                }
            }
        }
        self.num_free -= need as u16; // need <= num_free
        self.slots[usize::from(head)] = Slot {
            cookie,
            ndesc: need as u16,
            writable,
            in_flight: true,
        };
        self.in_flight += 1;
        let pos = usize::from(self.avail_shadow & self.mask);
        let p = self.ptr(self.avail_off + 4 + 2 * pos).cast::<u16>();
        // SAFETY: `pos < size`, so avail.ring[pos] is inside the ring; the device reads
        // this entry only after the next Release store of avail.idx.
        unsafe { p.write_volatile(head.to_le()) };
        self.avail_shadow = self.avail_shadow.wrapping_add(1);
        Ok(())
    }

    /// Chains added since the last [`Self::publish`].
    pub fn unpublished(&self) -> u16 {
        self.avail_shadow.wrapping_sub(self.avail_published)
    }

    /// Makes every added chain visible to the device with one store of `avail.idx`, and
    /// says whether the device wants an available-buffer notification for them.
    pub fn publish(&mut self) -> bool {
        let new = self.avail_shadow;
        let old = self.avail_published;
        if new == old || self.broken.is_some() {
            return false;
        }
        // Release: descriptor and avail.ring writes are visible before the new idx
        // (virtio 1.2 §2.7.13.3, "memory barrier before updating idx").
        self.avail_idx().store(new.to_le(), Ordering::Release);
        self.avail_published = new;
        // The idx store must be visible before we read the device's suppression state,
        // or we could miss a notification the device is about to ask for (§2.7.13.4);
        // pairs with the device's barrier between reading avail.idx and writing
        // avail_event / used.flags.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = u16::from_le(self.avail_event().load(Ordering::Relaxed));
            need_event(event, new, old)
        } else {
            u16::from_le(self.used_flags().load(Ordering::Relaxed)) & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    /// Asks the device for used-buffer notifications (`true`) or tells it not to bother.
    ///
    /// After enabling, call [`Self::has_used`] again before sleeping: a completion may
    /// have arrived before the device saw the request (§2.7.7.2).
    pub fn set_interrupts(&mut self, enable: bool) {
        self.interrupts = enable;
        if self.event_idx {
            // With EVENT_IDX the device notifies when used.idx passes used_event; parking
            // it one behind our position means it passes only after a full wrap.
            let v = if enable {
                self.last_used
            } else {
                self.last_used.wrapping_sub(1)
            };
            self.used_event().store(v.to_le(), Ordering::Relaxed);
        } else {
            let v = if enable {
                0
            } else {
                VIRTQ_AVAIL_F_NO_INTERRUPT
            };
            self.avail_flags().store(v.to_le(), Ordering::Relaxed);
        }
        if enable {
            // Our request for notifications must be visible before we re-check the used
            // ring (pairs with the device's barrier in §2.7.13.4 on its side).
            fence(Ordering::SeqCst);
        }
    }

    /// Whether the device has completed a chain that [`Self::pop_used`] has not returned.
    pub fn has_used(&self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.used_seen != self.last_used
            || u16::from_le(self.used_idx().load(Ordering::Acquire)) != self.last_used
    }

    /// Takes the next completed chain off the used ring.
    ///
    /// Returns `None` when there is nothing new or the queue is broken (see
    /// [`Self::broken`]); a device that writes an impossible used entry breaks the queue.
    ///
    /// Always inlined (its error paths are not): the `Used` is then built where the
    /// caller keeps it instead of being stored field by field and copied wide, a failed
    /// store-to-load forward per completion.
    #[inline(always)]
    pub fn pop_used(&mut self) -> Option<Used> {
        if self.broken.is_some() {
            return None;
        }
        // The next element: `pos < size`, so it lies in the used ring (4-byte aligned).
        let pos = usize::from(self.last_used & self.mask);
        let elem = self.ptr(self.used_off + 4 + 8 * pos);
        if self.used_seen == self.last_used {
            // Acquire pairs with the device's write barrier before it bumps used.idx
            // (virtio 1.2 §2.7.8): the entries up to idx are complete once we see it.
            let idx = u16::from_le(self.used_idx().load(Ordering::Acquire));
            // The next element's line is loaded now, whatever idx says: a load behind
            // the branch on idx would start only once idx arrived (the spinning loop
            // predicts "nothing new"), one line transfer after the other. Its value is
            // not used here; the element is read below, after this Acquire load.
            // SAFETY: `elem` is the element's first field, in the ring and 4-byte
            // aligned; the device may be writing it: an atomic load, discarded.
            let _ = unsafe { AtomicU32::from_ptr(elem.cast()).load(Ordering::Relaxed) };
            let pending = idx.wrapping_sub(self.last_used);
            if pending == 0 {
                return None;
            }
            // The device can only have used chains it was given (§2.7.8: used.idx counts
            // returned buffers); the published, not yet returned ones bound the step.
            let published = self.in_flight - self.unpublished();
            if pending > published {
                self.set_broken(QueueError::UsedIdxJump {
                    last: self.last_used,
                    idx,
                    in_flight: published,
                });
                return None;
            }
            self.used_seen = idx;
        }
        // SAFETY: `elem` lies in the used ring (4-byte aligned); each field is read for
        // its value exactly once, after the Acquire load of used.idx.
        let (id, len) = unsafe {
            (
                u32::from_le(elem.cast::<u32>().read_volatile()),
                u32::from_le(elem.add(4).cast::<u32>().read_volatile()),
            )
        };
        if id >= u32::from(self.size) {
            self.set_broken(QueueError::UsedIdOutOfRange {
                id,
                size: self.size,
            });
            return None;
        }
        let head = id as u16; // id < size <= 32768
        let slot = self.slots[usize::from(head)];
        if !slot.in_flight {
            self.set_broken(QueueError::UsedIdNotInFlight { id });
            return None;
        }
        self.last_used = self.last_used.wrapping_add(1);
        // With interrupts off, used_event stays parked where `set_interrupts` put it: a
        // store per completion would pull the line the device reads into our cache for
        // nothing (at most one spurious notification per 2^16 completions).
        if self.event_idx && self.interrupts {
            self.used_event()
                .store(self.last_used.to_le(), Ordering::Relaxed);
        }
        self.free_chain(head, slot.ndesc);
        let written = if u64::from(len) > slot.writable {
            Err(Self::len_too_large(id, len, slot.writable))
        } else {
            Ok(len)
        };
        Some(Used {
            cookie: slot.cookie,
            written,
        })
    }

    /// The error of a used length beyond the chain's writable space (logged).
    #[cold]
    #[inline(never)]
    fn len_too_large(id: u32, len: u32, writable: u64) -> QueueError {
        tracing::warn!(target: TARGET, id, len, writable, "used len beyond writable space");
        QueueError::UsedLenTooLarge { id, len, writable }
    }

    fn free_chain(&mut self, head: u16, ndesc: u16) {
        let mut last = head;
        for _ in 1..ndesc {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += ndesc;
        self.in_flight -= 1;
        self.slots[usize::from(head)].in_flight = false;
    }

    /// Gives back every chain still in flight, calling `f` with each cookie, and resets
    /// the ring to its initial state.
    ///
    /// # Safety
    /// The device must no longer access this ring or any buffer of the chains (it was
    /// reset, or its connection is closed and it can no longer write our memory).
    pub unsafe fn reclaim_all(&mut self, mut f: impl FnMut(u64)) {
        for h in 0..self.size {
            let slot = self.slots[usize::from(h)];
            if slot.in_flight {
                self.free_chain(h, slot.ndesc);
                f(slot.cookie);
            }
        }
        debug_assert_eq!(self.num_free, self.size);
    }

    /// Forgets the broken state and all indices so the ring can be set up again
    /// (after a device reset), keeping its memory.
    ///
    /// # Errors
    /// [`Error::QueueBusy`] while chains are in flight (reclaim them first).
    pub fn reset(&mut self) -> Result<()> {
        if self.in_flight != 0 {
            return Err(Error::QueueBusy {
                in_flight: self.in_flight,
            });
        }
        self.ring.zero();
        for (i, n) in self.next.iter_mut().enumerate() {
            *n = (i as u16).wrapping_add(1);
        }
        self.free_head = 0;
        self.num_free = self.size;
        self.avail_shadow = 0;
        self.avail_published = 0;
        self.last_used = 0;
        self.used_seen = 0;
        self.broken = None;
        let interrupts = self.interrupts;
        self.set_interrupts(interrupts);
        Ok(())
    }
}

/// Whether moving an index from `old` to `new` crosses `event` (virtio 1.2 §2.7.10,
/// `vring_need_event`): all arithmetic wraps at 2^16 on purpose.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests;
