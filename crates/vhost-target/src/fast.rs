//! The polling request queues' fast path: split-ring access written for this target
//! (virtio 1.2 §2.7), used instead of virtio-queue's iterators where a device can serve
//! requests from resolved buffers ([`Device::serve_fast`](crate::Device::serve_fast)).
//!
//! Per batch of requests the ring areas are resolved once to host slices; each chain is
//! parsed once into a reused [`Segments`] (guest address and length per buffer, readable
//! ones first), without allocating; data moves with one region lookup per buffer. Used
//! entries are written straight into the used ring and published with one `used.idx`
//! store per batch.
//!
//! It only accelerates: anything unusual is left to the general path, which then serves
//! that one request with virtio-queue (and its checks and error handling) before the fast
//! path goes on. "Unusual" is a descriptor, table or ring the fast path cannot read (out
//! of the shared memory, misaligned, crossing a region), a loop or an overlong chain, an
//! indirect descriptor inside an indirect table or chained with `NEXT`, a readable buffer
//! after a writable one, or a request the device declines.

use std::sync::atomic::{AtomicU16, Ordering};

use vbdev_bdev::{ReadDest, WriteSrc};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
    VolatileMemory, VolatileSlice,
};

use crate::server::Mem;

/// `VIRTQ_DESC_F_NEXT` (§2.7.5).
const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT` (§2.7.5.3).
const F_INDIRECT: u16 = 4;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (§2.7.6).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Most buffers the fast path takes in one chain; longer chains go the general way.
pub const MAX_SEGMENTS: usize = 64;

/// One buffer of a chain: guest address and length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A request's buffers: the driver-readable ones and the device-writable ones, each in
/// chain order. The fast path fills it from a chain whose readable buffers all come
/// first (§2.7.4.2), of at most [`MAX_SEGMENTS`] buffers; the general path
/// ([`Segments::fill_from_chain`]) from any chain virtio-queue accepts. Reused from
/// request to request: filling allocates nothing once it has held as many buffers.
#[derive(Debug, Default)]
pub struct Segments {
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    readable_len: usize,
    writable_len: usize,
}

impl Segments {
    /// Empty, with room for [`MAX_SEGMENTS`] of each kind.
    pub fn new() -> Self {
        Self {
            readable: Vec::with_capacity(MAX_SEGMENTS),
            writable: Vec::with_capacity(MAX_SEGMENTS),
            ..Self::default()
        }
    }

    fn clear(&mut self) {
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
    }

    /// Adds a buffer in the fast path's rules; false when the chain breaks them.
    fn push(&mut self, addr: u64, len: u32, writable: bool) -> bool {
        if self.readable.len() + self.writable.len() == MAX_SEGMENTS
            || (!writable && !self.writable.is_empty())
        {
            // Too long, or a readable buffer after a writable one.
            return false;
        }
        self.push_any(addr, len, writable);
        true
    }

    fn push_any(&mut self, addr: u64, len: u32, writable: bool) {
        let seg = Seg { addr, len };
        if writable {
            self.writable.push(seg);
            self.writable_len = self.writable_len.saturating_add(len as usize);
        } else {
            self.readable.push(seg);
            self.readable_len = self.readable_len.saturating_add(len as usize);
        }
    }

    /// Fills from a chain taken off the ring by virtio-queue (the general path), in any
    /// order of readable and writable buffers. False when virtio-queue stopped at a bad
    /// descriptor or a buffer is not in the driver's memory.
    pub fn fill_from_chain<M>(&mut self, mem: &Mem, chain: virtio_queue::DescriptorChain<M>) -> bool
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        self.clear();
        for d in chain {
            if !mem.check_range(d.addr(), d.len() as usize) {
                return false;
            }
            self.push_any(d.addr().0, d.len(), d.is_write_only());
        }
        true
    }

    /// The driver-readable buffers.
    pub fn readable(&self) -> &[Seg] {
        &self.readable
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> &[Seg] {
        &self.writable
    }

    /// Bytes the driver made readable.
    pub fn readable_len(&self) -> usize {
        self.readable_len
    }

    /// Bytes the driver made writable.
    pub fn writable_len(&self) -> usize {
        self.writable_len
    }

    /// Copies the readable bytes from `offset` into `buf`. False when they are fewer than
    /// `offset + buf.len()` or not in the driver's memory.
    pub fn read_at(&self, mem: &Mem, offset: usize, buf: &mut [u8]) -> bool {
        let mut done = 0;
        walk(self.readable(), offset, buf.len(), |addr, at, n| {
            done += n;
            get_guest(mem, addr, &mut buf[at..at + n])
        }) && done == buf.len()
    }

    /// Copies `data` into the writable bytes from `offset`. False when they are fewer than
    /// `offset + data.len()` or not in the driver's memory.
    pub fn write_at(&self, mem: &Mem, offset: usize, data: &[u8]) -> bool {
        let mut done = 0;
        walk(self.writable(), offset, data.len(), |addr, at, n| {
            done += n;
            put_guest(mem, addr, &data[at..at + n])
        }) && done == data.len()
    }
}

/// Zeros to copy from: guest memory is only written through vm-memory's accessors,
/// which have no fill.
static ZEROS: [u8; 4096] = [0; 4096];

/// Puts `n` zeros through `put`, a piece of at most 4 KiB at a time: `put(done, zeros)`
/// with the bytes put before. False when `put` refuses one.
pub(crate) fn put_zeros(n: usize, mut put: impl FnMut(usize, &[u8]) -> bool) -> bool {
    let mut z = 0;
    while z < n {
        let m = (n - z).min(ZEROS.len());
        if !put(z, &ZEROS[..m]) {
            return false;
        }
        z += m;
    }
    true
}

impl Segments {
    /// The writable bytes from byte `offset` on, as a read's destination: a disk with
    /// direct access puts its data straight into the driver's buffers through it.
    pub fn dest_at<'a>(&'a self, mem: &'a Mem, offset: usize) -> Cursor<'a> {
        Cursor::new(mem, &self.writable, offset)
    }

    /// The readable bytes from byte `offset` on, as a write's source.
    pub fn src_at<'a>(&'a self, mem: &'a Mem, offset: usize) -> Cursor<'a> {
        Cursor::new(mem, &self.readable, offset)
    }

    /// Flips every bit of writable byte `offset` (the CorruptRead fault). False when it
    /// is not there.
    pub fn flip_writable(&self, mem: &Mem, offset: usize) -> bool {
        let mut b = [0u8];
        let mut c = Cursor::new(mem, &self.writable, offset);
        if !c.take(&mut b) {
            return false;
        }
        b[0] ^= 0xff;
        self.write_at(mem, offset, &b)
    }
}

/// A position in a request's buffers (its readable or its writable ones) that moves
/// forward as bytes are put, zeroed, skipped or taken: the [`ReadDest`] and
/// [`WriteSrc`] a disk's direct access uses. Guest memory is reached through vm-memory's
/// volatile accessors, with one region lookup per buffer piece; a piece that crosses a
/// region boundary takes the general accessor, and one outside the driver's memory
/// refuses the piece (the request then fails).
#[derive(Debug)]
pub struct Cursor<'a> {
    mem: &'a Mem,
    segs: &'a [Seg],
    /// The position: bytes of `segs`' concatenation before it.
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(mem: &'a Mem, segs: &'a [Seg], pos: usize) -> Self {
        Self { mem, segs, pos }
    }

    /// Moves over `n` bytes, calling `f(mem, guest_addr, done, k)` for each piece of `k`
    /// bytes that lies in one buffer (`done` bytes before it). False when the buffers end
    /// first or `f` refuses.
    fn advance(&mut self, n: usize, mut f: impl FnMut(&Mem, u64, usize, usize) -> bool) -> bool {
        let mem = self.mem;
        let mut done = 0;
        let ok = walk(self.segs, self.pos, n, |addr, at, k| {
            done += k;
            f(mem, addr, at, k)
        }) && done == n;
        self.pos = self.pos.saturating_add(n);
        ok
    }
}

/// Copies `data` into guest memory at `addr`.
fn put_guest(mem: &Mem, addr: u64, data: &[u8]) -> bool {
    match mem.get_slice(GuestAddress(addr), data.len()) {
        Ok(s) => {
            s.copy_from(data);
            true
        }
        // Crosses a region boundary: the general accessor handles that.
        Err(_) => mem.write_slice(data, GuestAddress(addr)).is_ok(),
    }
}

/// Copies guest memory at `addr` into `buf`.
fn get_guest(mem: &Mem, addr: u64, buf: &mut [u8]) -> bool {
    match mem.get_slice(GuestAddress(addr), buf.len()) {
        Ok(s) => s.copy_to(buf) == buf.len(),
        // Crosses a region boundary: the general accessor handles that.
        Err(_) => mem.read_slice(buf, GuestAddress(addr)).is_ok(),
    }
}

impl ReadDest for Cursor<'_> {
    fn put(&mut self, data: &[u8]) -> bool {
        self.advance(data.len(), |mem, addr, at, k| {
            put_guest(mem, addr, &data[at..at + k])
        })
    }

    fn zeros(&mut self, n: usize) -> bool {
        self.advance(n, |mem, addr, _, k| {
            put_zeros(k, |z, zeros| {
                addr.checked_add(z as u64)
                    .is_some_and(|a| put_guest(mem, a, zeros))
            })
        })
    }

    fn skip(&mut self, n: usize) -> bool {
        // Nothing is touched, but the bytes must be the driver's.
        self.advance(n, |mem, addr, _, k| in_memory(mem, addr, k))
    }
}

/// Whether `[addr, addr + len)` is the driver's memory: one region lookup, and the
/// general check (which walks regions) only for a range that crosses regions.
fn in_memory(mem: &Mem, addr: u64, len: usize) -> bool {
    mem.get_slice(GuestAddress(addr), len).is_ok() || mem.check_range(GuestAddress(addr), len)
}

impl WriteSrc for Cursor<'_> {
    fn take(&mut self, buf: &mut [u8]) -> bool {
        self.advance(buf.len(), |mem, addr, at, k| {
            get_guest(mem, addr, &mut buf[at..at + k])
        })
    }

    fn skip(&mut self, n: usize) -> bool {
        self.advance(n, |mem, addr, _, k| in_memory(mem, addr, k))
    }
}

/// Calls `f(guest_addr, buf_offset, n)` for the pieces of `segs` that cover `len` bytes
/// from byte `offset` of their concatenation; stops early (false) when `f` does.
fn walk(
    segs: &[Seg],
    mut offset: usize,
    len: usize,
    mut f: impl FnMut(u64, usize, usize) -> bool,
) -> bool {
    let mut at = 0;
    for s in segs {
        if at == len {
            break;
        }
        let sl = s.len as usize;
        if offset >= sl {
            offset -= sl;
            continue;
        }
        let n = (sl - offset).min(len - at);
        let Some(addr) = s.addr.checked_add(offset as u64) else {
            return false;
        };
        if !f(addr, at, n) {
            return false;
        }
        at += n;
        offset = 0;
    }
    true
}

/// One fast-path batch of a polling request queue's requests, handed to
/// [`Device::serve_fast`](crate::Device::serve_fast) to serve one after the other.
pub trait Requests {
    /// The next request's buffers, or `None` when the batch is over: its limit reached,
    /// the ring empty, or the next request one the fast path does not take (the general
    /// path then serves it).
    fn next(&mut self) -> Option<&Segments>;

    /// Completes the request [`Requests::next`] gave last, with its used length (bytes
    /// written, status included). Does nothing when that request is completed already.
    fn complete(&mut self, len: u32);
}

/// Where a ring lives and how it runs, copied from the queue for one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    pub event_idx: bool,
}

/// Where the last request a queue served lay: what the next one most likely reuses
/// (see [`Ring::touch`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LastChain {
    /// Its head descriptor.
    pub head: u16,
    /// Its buffers: the descriptors it took from the table when it was direct.
    pub ndesc: u16,
    /// Its first buffer's guest address (the request header).
    pub header: u64,
}

/// The three ring areas resolved to host memory for one batch.
pub(crate) struct Ring<'m> {
    desc: VolatileSlice<'m, ()>,
    avail: VolatileSlice<'m, ()>,
    used: VolatileSlice<'m, ()>,
    size: u16,
    event_idx: bool,
}

/// One region's slice for `[addr, addr + len)`, or `None` when the range is not inside a
/// single region of `mem`.
fn area(mem: &Mem, addr: u64, len: usize) -> Option<VolatileSlice<'_, ()>> {
    let r = mem.find_region(GuestAddress(addr))?;
    let off = addr.checked_sub(r.start_addr().0)?;
    r.get_slice(MemoryRegionAddress(off), len).ok()
}

impl<'m> Ring<'m> {
    /// Resolves the ring, or `None` when an area is outside one region or misaligned
    /// for its atomics (the general path then serves it, and reports what is wrong).
    pub fn new(mem: &'m Mem, a: &RingAddrs) -> Option<Self> {
        let n = usize::from(a.size);
        let desc = area(mem, a.desc, 16 * n)?;
        // flags, idx, ring[n], used_event (§2.7.6).
        let avail = area(mem, a.avail, 4 + 2 * n + 2)?;
        // flags, idx, ring[n] of {id: le32, len: le32}, avail_event (§2.7.8).
        let used = area(mem, a.used, 4 + 8 * n + 2)?;
        if avail.get_atomic_ref::<AtomicU16>(2).is_err()
            || used.get_atomic_ref::<AtomicU16>(2).is_err()
        {
            return None;
        }
        Some(Self {
            desc,
            avail,
            used,
            size: a.size,
            event_idx: a.event_idx,
        })
    }

    /// The driver's `avail.idx` (Acquire), resolving only that field: what an idle
    /// polling loop reads. `None` when it is not in the driver's memory or misaligned.
    pub fn avail_idx_of(mem: &Mem, a: &RingAddrs) -> Option<u16> {
        let idx = area(mem, a.avail.checked_add(2)?, 2)?;
        let idx = idx.get_atomic_ref::<AtomicU16>(0).ok()?;
        Some(u16::from_le(idx.load(Ordering::Acquire)))
    }

    /// Starts, all at once, the loads of the lines the request at avail position `pos`
    /// most likely needs, where serving it reads them one after another (the avail
    /// entry names the head, the head's descriptor the header's address): its avail
    /// entry, the descriptors a driver that frees chains last-in-first-out (vbdev) or
    /// first-in-first-out (SPDK, Linux) uses next after `last`, and `last`'s header line
    /// (drivers reuse a request's header memory). The driver wrote all of them before
    /// it published the request, and each is a miss on this core; issued together they
    /// travel together. Only loads, of this ring's areas and of mapped guest memory:
    /// a wrong guess costs a load.
    pub fn touch(&self, mem: &Mem, pos: u16, last: Option<LastChain>) {
        let _ = self.avail_head(pos);
        let Some(last) = last else { return };
        let n = self.size;
        for head in [last.head, last.head.wrapping_add(last.ndesc) % n] {
            if head < n {
                let _ = self
                    .desc
                    .get_ref::<u64>(16 * usize::from(head))
                    .map(|r| r.load());
            }
        }
        if let Some(h) = area(mem, last.header, 1) {
            let _ = h.get_ref::<u8>(0).map(|r| r.load());
        }
    }

    /// The head at avail position `pos`.
    pub fn avail_head(&self, pos: u16) -> Option<u16> {
        let i = usize::from(pos % self.size);
        self.avail
            .get_ref::<u16>(4 + 2 * i)
            .ok()
            .map(|r| u16::from_le(r.load()))
    }

    /// Parses the chain at `head` into `segs`; false when the fast path does not take it.
    pub fn parse(&self, mem: &Mem, head: u16, segs: &mut Segments) -> bool {
        segs.clear();
        if head >= self.size {
            return false;
        }
        let (addr, len, flags, _) = match read_desc(&self.desc, usize::from(head)) {
            Some(d) => d,
            None => return false,
        };
        if flags & F_INDIRECT != 0 {
            // §2.7.5.3.1: not with NEXT, a whole number of descriptors, at least one.
            if flags & F_NEXT != 0 || len == 0 || len % 16 != 0 {
                return false;
            }
            let count = (len / 16) as usize;
            let Some(table) = area(mem, addr, len as usize) else {
                return false;
            };
            // An indirect table's chain starts at its entry 0.
            return walk_chain(&table, count, 0, segs);
        }
        walk_chain(&self.desc, usize::from(self.size), usize::from(head), segs)
    }

    /// Puts `(head, len)` at used position `pos` (not yet published).
    pub fn put_used(&self, pos: u16, head: u16, len: u32) -> bool {
        let off = 4 + 8 * usize::from(pos % self.size);
        match (
            self.used.get_ref::<u32>(off),
            self.used.get_ref::<u32>(off + 4),
        ) {
            (Ok(id), Ok(l)) => {
                id.store(u32::from(head).to_le());
                l.store(len.to_le());
                true
            }
            _ => false,
        }
    }

    /// Makes used entries up to `new` visible (Release store of `used.idx`), without
    /// deciding on a notification.
    pub fn expose_used(&self, new: u16) {
        if let Ok(idx) = self.used.get_atomic_ref::<AtomicU16>(2) {
            idx.store(new.to_le(), Ordering::Release);
        }
    }

    /// Publishes used entries up to `new` (one Release store of `used.idx`, §2.7.8) and
    /// says whether the driver wants a notification for those after `old` (§2.7.10).
    pub fn publish_used(&self, old: u16, new: u16) -> bool {
        let Ok(idx) = self.used.get_atomic_ref::<AtomicU16>(2) else {
            return true;
        };
        idx.store(new.to_le(), Ordering::Release);
        // The idx store before the read of the driver's suppression state, pairing with
        // the driver's barrier between writing used_event and re-reading used.idx.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.event_idx {
            let at = 4 + 2 * usize::from(self.size);
            let Ok(ev) = self.avail.get_ref::<u16>(at) else {
                return true;
            };
            vbdev_virtio::split::need_event(u16::from_le(ev.load()), new, old)
        } else {
            let Ok(flags) = self.avail.get_ref::<u16>(0) else {
                return true;
            };
            u16::from_le(flags.load()) & AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

/// Descriptor `i` of `table`: (addr, len, flags, next).
fn read_desc(table: &VolatileSlice<'_, ()>, i: usize) -> Option<(u64, u32, u16, u16)> {
    let addr = table.get_ref::<u64>(16 * i).ok()?.load();
    let rest = table.get_ref::<u64>(16 * i + 8).ok()?.load();
    let rest = u64::from_le(rest);
    Some((
        u64::from_le(addr),
        rest as u32,
        (rest >> 32) as u16,
        (rest >> 48) as u16,
    ))
}

/// Follows a chain from descriptor `start` of a table of `count` entries.
fn walk_chain(
    table: &VolatileSlice<'_, ()>,
    count: usize,
    start: usize,
    segs: &mut Segments,
) -> bool {
    let mut i = start;
    // At most `count` descriptors: more means a loop (§2.7.5.2 / §2.7.5.3.1).
    for _ in 0..count {
        let Some((addr, len, flags, next)) = read_desc(table, i) else {
            return false;
        };
        if flags & F_INDIRECT != 0 {
            // Only a ring's head may point to a table; a table may not nest one.
            return false;
        }
        if !segs.push(addr, len, flags & F_WRITE != 0) {
            return false;
        }
        if flags & F_NEXT == 0 {
            return true;
        }
        i = usize::from(next);
        if i >= count {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests;
