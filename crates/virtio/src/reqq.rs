#![allow(unsafe_code)] // try_add, reclaim_all and Drop of the request queue, each with its SAFETY.
//! A request queue: a split virtqueue with the memory its requests use, and the
//! hand-off of that memory to the device made safe.
//!
//! [`SplitQueue::try_add`] is `unsafe`: the caller promises that the memory each
//! segment names stays alive and untouched until the device gives the chain back.
//! [`RequestQueue`] keeps that promise itself, so that the code building requests (the
//! virtio-blk and virtio-scsi formats, the control and event queues) needs no `unsafe`:
//!
//! - Each **context** (one per ring entry) has a header slot the driver writes and a
//!   status area the device writes, in one [`SharedMem`] arena the queue owns: they are
//!   reached by volatile access only, never through a reference, because the device
//!   writes the status areas of other contexts while the driver works on this one.
//! - An I/O buffer travels with its request: the driver **lends** it to the queue under
//!   an owner number (one per request, whatever number of chains it takes), chains name
//!   bytes of their owner's buffer, and the buffer is only **taken back** when none of
//!   them is still with the device.
//! - **Fixed** buffers (the zeros a WRITE of zeroes sends) are shared by all chains and
//!   only ever read by the device.
//!
//! A chain is described by [`Piece`]s relative to those three kinds of memory; the queue
//! checks each against its bounds and turns it into a device address. Nothing else can
//! reach the device, so a mistake in a format fails its request ([`AddError::Invalid`])
//! instead of pointing the device at memory that is not ours to give. A queue dropped
//! with chains in flight shuts its transport down first, so that no memory a device
//! was given is freed while the device may still use it.

use std::mem::ManuallyDrop;
use std::sync::Arc;

use crate::error::Result;
use crate::mem::{DmaBuf, DmaDomain, Iova};
use crate::shared::SharedMem;
use crate::split::{AddError, Segment, SplitQueue, Used};
use crate::transport::Transport;

/// `in_flight` value of a context with no chain on the ring.
const FREE: u32 = u32::MAX;
/// `in_flight` value of a chain with no owner (it names no lent buffer).
const NO_OWNER: u32 = u32::MAX - 1;

/// Bytes of memory per context: the header slot the driver writes and the status area
/// the device writes (either may be 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextLayout {
    /// Bytes of header slot per context.
    pub header: usize,
    /// Bytes of status area per context.
    pub status: usize,
}

/// What one descriptor of a chain points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes at `off` of the context's header slot (device-readable).
    Header {
        /// Offset in the slot.
        off: usize,
        /// Bytes.
        len: usize,
    },
    /// `len` bytes at `off` of the context's status area (device-writable).
    Status {
        /// Offset in the area.
        off: usize,
        /// Bytes.
        len: usize,
    },
    /// `len` bytes at `off` of the buffer lent by the chain's owner.
    Data {
        /// Offset in the buffer.
        off: u64,
        /// Bytes.
        len: u32,
        /// Whether the device writes them (a read request's data) or reads them.
        writable: bool,
    },
    /// `len` bytes at `off` of fixed buffer `id` (device-readable).
    Fixed {
        /// What [`RequestQueue::add_fixed`] returned.
        id: usize,
        /// Offset in the buffer.
        off: usize,
        /// Bytes.
        len: usize,
    },
}

#[derive(Debug, Default)]
struct Lent {
    buf: Option<DmaBuf>,
    /// Chains naming this owner that the device has not given back.
    chains: u32,
}

/// A split virtqueue with its contexts' memory, its owners' lent buffers and its fixed
/// buffers. See the module documentation.
///
/// # Invariants
/// - `in_flight[c]` is `FREE` unless context `c` has a chain on `vq` (cookie `c`), and
///   then names that chain's owner (or `NO_OWNER`);
/// - `lent[o].chains` counts the chains on `vq` whose owner is `o`; while it is not
///   zero, `lent[o].buf` stays where it is (it is neither taken back nor replaced);
/// - no chain is in flight when `vq` and `arena` are dropped (`Drop` reclaims first);
/// - every segment handed to `vq` lies in `arena` (the context's own slot or status
///   area), in `lent[owner].buf`, or in a `fixed` buffer, and only the status area and
///   lent buffers are ever device-writable.
#[derive(Debug)]
pub struct RequestQueue {
    /// Dropped in `Drop` only when no chain is in flight (else leaked with the ring).
    vq: ManuallyDrop<SplitQueue>,
    /// As `vq`.
    arena: ManuallyDrop<SharedMem>,
    layout: ContextLayout,
    status_off: usize,
    in_flight: Box<[u32]>,
    lent: Box<[Lent]>,
    fixed: Vec<Arc<DmaBuf>>,
    scratch: Vec<Segment>,
    /// Shut down before chains still in flight are given back (see `reclaim_all`).
    transport: Arc<dyn Transport>,
}

impl RequestQueue {
    /// A queue over `vq` of the device behind `transport`, with one context per ring
    /// entry laid out as `layout`, and `owners` owner numbers (`0..owners`).
    ///
    /// # Errors
    /// When the arena cannot be allocated.
    pub fn new(
        vq: SplitQueue,
        layout: ContextLayout,
        owners: usize,
        transport: Arc<dyn Transport>,
    ) -> Result<Self> {
        let n = usize::from(vq.capacity());
        // The status areas start on a line of their own: the device's writes then stay
        // off the lines the driver writes headers into.
        let status_off = (n * layout.header).next_multiple_of(64);
        let arena = SharedMem::zeroed(
            DmaDomain::global(),
            (status_off + n * layout.status).max(64),
            4096,
        )?;
        Ok(Self {
            vq: ManuallyDrop::new(vq),
            arena: ManuallyDrop::new(arena),
            layout,
            status_off,
            in_flight: vec![FREE; n].into_boxed_slice(),
            lent: (0..owners).map(|_| Lent::default()).collect(),
            fixed: Vec::new(),
            scratch: Vec::with_capacity(8),
            transport,
        })
    }

    /// The ring, for what does not hand memory to the device (publish, flags, state).
    pub fn ring(&self) -> &SplitQueue {
        &self.vq
    }

    /// Publishes the chains added so far; true when the device wants a notification.
    pub fn publish(&mut self) -> bool {
        self.vq.publish()
    }

    /// See [`SplitQueue::set_interrupts`].
    pub fn set_interrupts(&mut self, on: bool) {
        self.vq.set_interrupts(on);
    }

    /// See [`SplitQueue::set_direct_max`].
    pub fn set_direct_max(&mut self, n: u16) {
        self.vq.set_direct_max(n);
    }

    /// Number of contexts (the ring's size).
    pub fn contexts(&self) -> u16 {
        self.vq.capacity()
    }

    /// Registers a buffer every chain may name with [`Piece::Fixed`]; the device only
    /// reads it. Returns its id.
    pub fn add_fixed(&mut self, buf: Arc<DmaBuf>) -> usize {
        self.fixed.push(buf);
        self.fixed.len() - 1
    }

    /// Lends `buf` to the queue under `owner`, for the chains of one request.
    ///
    /// # Errors
    /// Gives `buf` back when `owner` is out of range or already holds a buffer.
    #[inline]
    pub fn lend(&mut self, owner: u32, buf: DmaBuf) -> std::result::Result<(), DmaBuf> {
        match self.lent.get_mut(owner as usize) {
            Some(l) if l.buf.is_none() => {
                l.buf = Some(buf);
                Ok(())
            }
            _ => Err(buf),
        }
    }

    /// Takes back `owner`'s buffer; `None` when it lent none, or while a chain naming it
    /// is still with the device (the buffer then stays lent).
    #[inline]
    pub fn take_back(&mut self, owner: u32) -> Option<DmaBuf> {
        let l = self.lent.get_mut(owner as usize)?;
        if l.chains != 0 {
            return None;
        }
        l.buf.take()
    }

    #[inline]
    fn header_at(&self, ctx: u16, off: usize, len: usize) -> usize {
        assert!(
            usize::from(ctx) < self.in_flight.len()
                && off
                    .checked_add(len)
                    .is_some_and(|e| e <= self.layout.header),
            "header bytes {off}..+{len} of context {ctx} outside its slot"
        );
        usize::from(ctx) * self.layout.header + off
    }

    #[inline]
    fn status_at(&self, ctx: u16, off: usize, len: usize) -> usize {
        assert!(
            usize::from(ctx) < self.in_flight.len()
                && off
                    .checked_add(len)
                    .is_some_and(|e| e <= self.layout.status),
            "status bytes {off}..+{len} of context {ctx} outside its area"
        );
        self.status_off + usize::from(ctx) * self.layout.status + off
    }

    /// Writes `data` at `off` of context `ctx`'s header slot.
    ///
    /// # Panics
    /// When the bytes lie outside the slot.
    #[inline]
    pub fn write_header(&mut self, ctx: u16, off: usize, data: &[u8]) {
        let at = self.header_at(ctx, off, data.len());
        self.arena.write(at, data);
    }

    /// The byte at `off` of context `ctx`'s status area, read once.
    ///
    /// # Panics
    /// When the byte lies outside the area.
    #[inline]
    pub fn status_u8(&self, ctx: u16, off: usize) -> u8 {
        self.arena.read_u8(self.status_at(ctx, off, 1))
    }

    /// Copies `out.len()` bytes from `off` of context `ctx`'s status area.
    ///
    /// # Panics
    /// When the bytes lie outside the area.
    pub fn read_status(&self, ctx: u16, off: usize, out: &mut [u8]) {
        self.arena.read(self.status_at(ctx, off, out.len()), out);
    }

    /// Writes the byte at `off` of context `ctx`'s status area (a marker no device
    /// writes, armed while the device does not hold the context).
    ///
    /// # Panics
    /// When the byte lies outside the area.
    #[inline]
    pub fn write_status_u8(&mut self, ctx: u16, off: usize, v: u8) {
        let at = self.status_at(ctx, off, 1);
        self.arena.write_u8(at, v);
    }

    /// Whether context `ctx` has a chain with the device.
    pub fn is_busy(&self, ctx: u16) -> bool {
        self.in_flight
            .get(usize::from(ctx))
            .is_some_and(|&o| o != FREE)
    }

    /// Starts the chain of context `ctx`, naming `owner`'s lent buffer for
    /// [`ChainBuilder::data`]; [`ChainBuilder::submit`] adds it.
    #[inline]
    pub fn chain(&mut self, ctx: u16, owner: Option<u32>) -> ChainBuilder<'_> {
        self.scratch.clear();
        let c = usize::from(ctx);
        let slot = self.in_flight.get(c).copied();
        let free = slot == Some(FREE);
        let busy = slot.is_some() && !free;
        let (owner, data) = match owner {
            None => (NO_OWNER, None),
            Some(o) => match self.lent.get(o as usize) {
                Some(l) => (o, l.buf.as_ref().map(|b| (b.iova().0, b.len() as u64))),
                None => (NO_OWNER, None),
            },
        };
        let base = self.arena.iova().0;
        ChainBuilder {
            header: base + (c * self.layout.header) as u64,
            status: base + (self.status_off + c * self.layout.status) as u64,
            data,
            ctx,
            owner,
            bad: !free,
            busy,
            writable: false,
            rq: self,
        }
    }

    /// Adds the chain of `pieces` for context `ctx` (its cookie when it comes back),
    /// naming `owner`'s lent buffer for [`Piece::Data`]; see [`ChainBuilder`].
    ///
    /// # Errors
    /// As [`ChainBuilder::submit`].
    pub fn add(
        &mut self,
        ctx: u16,
        owner: Option<u32>,
        pieces: &[Piece],
    ) -> std::result::Result<(), AddError> {
        let mut c = self.chain(ctx, owner);
        for &p in pieces {
            c.piece(p);
        }
        c.submit()
    }

    #[inline]
    fn release(&mut self, ctx: u16) {
        let Some(o) = self.in_flight.get_mut(usize::from(ctx)) else {
            return;
        };
        let owner = std::mem::replace(o, FREE);
        if let Some(l) = self.lent.get_mut(owner as usize) {
            l.chains -= 1;
        }
    }

    /// The next completion: its cookie is the context; the context and its owner's
    /// count are released.
    #[inline(always)]
    pub fn pop_used(&mut self) -> Option<Used> {
        let u = self.vq.pop_used()?;
        self.release(u.cookie as u16); // cookies are the contexts given to `add`
        Some(u)
    }

    /// Shuts the transport down, then gives back every chain still in flight, calling
    /// `f` with each context.
    ///
    /// After the shutdown the device has none of our requests any more and no right to
    /// our memory; a vhost-user target that is still running keeps the memory mapped,
    /// though, and could write into it as it could before: that trust boundary is the
    /// DMA memory's (see [`crate::mem`]), not something a reclaim can move.
    pub fn reclaim_all(&mut self, mut f: impl FnMut(u16)) {
        self.transport.shutdown();
        let mut ctxs = Vec::with_capacity(usize::from(self.vq.len()));
        // SAFETY: the transport is shut down: a PCI device was reset and stopped its DMA,
        // a vhost-user target lost its connection and will be handed no more of our
        // requests (see the method's documentation for a target that stays alive).
        unsafe { self.vq.reclaim_all(|c| ctxs.push(c as u16)) };
        for c in ctxs {
            self.release(c);
            f(c);
        }
    }
}

/// The chain of one context being built: each piece is checked against its memory as
/// it is appended, and turned into a device address; nothing reaches the ring before
/// [`Self::submit`]. Device-readable pieces must come first (virtio 1.2 §2.7.4.2).
#[derive(Debug)]
pub struct ChainBuilder<'a> {
    rq: &'a mut RequestQueue,
    /// Device addresses of the context's header slot and status area.
    header: u64,
    status: u64,
    /// The owner's lent buffer: device address and length.
    data: Option<(u64, u64)>,
    ctx: u16,
    owner: u32,
    /// A piece was refused, or the context is busy or out of range.
    bad: bool,
    /// A device-writable piece was appended.
    writable: bool,
    /// The context has a chain with the device: its header is not written.
    busy: bool,
}

impl ChainBuilder<'_> {
    #[inline(always)]
    fn push(&mut self, ok: bool, addr: u64, len: u32, device_writable: bool) {
        if !ok || (self.writable && !device_writable) {
            self.bad = true;
            return;
        }
        self.writable |= device_writable;
        self.rq.scratch.push(Segment {
            addr: Iova(addr),
            len,
            device_writable,
        });
    }

    /// Appends `len` bytes at `off` of the header slot (device-readable).
    #[inline]
    pub fn header(&mut self, off: usize, len: usize) {
        let ok = len > 0
            && off
                .checked_add(len)
                .is_some_and(|e| e <= self.rq.layout.header);
        // Lengths within the slot fit a u32 whenever `ok`.
        self.push(ok, self.header.wrapping_add(off as u64), len as u32, false);
    }

    /// Appends `len` bytes at `off` of the status area (device-writable).
    #[inline]
    pub fn status(&mut self, off: usize, len: usize) {
        let ok = len > 0
            && off
                .checked_add(len)
                .is_some_and(|e| e <= self.rq.layout.status);
        self.push(ok, self.status.wrapping_add(off as u64), len as u32, true);
    }

    /// Appends `len` bytes at `off` of the owner's lent buffer.
    #[inline]
    pub fn data(&mut self, off: u64, len: u32, writable: bool) {
        let (ok, addr) = match self.data {
            Some((iova, size)) => (
                len > 0 && off.checked_add(u64::from(len)).is_some_and(|e| e <= size),
                iova.wrapping_add(off),
            ),
            None => (false, 0),
        };
        self.push(ok, addr, len, writable);
    }

    /// Appends `len` bytes at `off` of fixed buffer `id` (device-readable).
    #[inline]
    pub fn fixed(&mut self, id: usize, off: usize, len: usize) {
        let (ok, addr) = match self.rq.fixed.get(id) {
            Some(b) => (
                len > 0
                    && u32::try_from(len).is_ok()
                    && off.checked_add(len).is_some_and(|e| e <= b.len()),
                b.iova().0.wrapping_add(off as u64),
            ),
            None => (false, 0),
        };
        self.push(ok, addr, len as u32, false);
    }

    /// Appends `p`.
    #[inline]
    pub fn piece(&mut self, p: Piece) {
        match p {
            Piece::Header { off, len } => self.header(off, len),
            Piece::Status { off, len } => self.status(off, len),
            Piece::Data { off, len, writable } => self.data(off, len, writable),
            Piece::Fixed { id, off, len } => self.fixed(id, off, len),
        }
    }

    /// Length of the owner's lent buffer.
    pub fn data_len(&self) -> Option<usize> {
        self.data.map(|(_, len)| len as usize) // the length of a buffer in memory
    }

    /// Writes `data` at `off` of the header slot (nothing when the context is busy).
    ///
    /// # Panics
    /// When the bytes lie outside the slot.
    #[inline]
    pub fn write_header(&mut self, off: usize, data: &[u8]) {
        if !self.busy {
            self.rq.write_header(self.ctx, off, data);
        }
    }

    /// Writes `words` little-endian from `off` of the header slot, one store each
    /// (nothing when the context is busy).
    ///
    /// # Panics
    /// When the bytes lie outside the slot.
    #[inline]
    pub fn write_header_words(&mut self, off: usize, words: &[u64]) {
        if self.busy {
            return;
        }
        let at = self.rq.header_at(self.ctx, off, 8 * words.len());
        self.rq.arena.write_words_le(at, words);
    }

    /// Adds the chain to the ring (not visible to the device before
    /// [`RequestQueue::publish`]).
    ///
    /// # Errors
    /// As [`SplitQueue::try_add`], and [`AddError::Invalid`] when the context was busy
    /// or out of range or a piece lay outside its memory or came in the wrong order
    /// (nothing is added then).
    #[inline]
    pub fn submit(self) -> std::result::Result<(), AddError> {
        if self.bad {
            return Err(AddError::Invalid);
        }
        let rq = self.rq;
        // SAFETY: every segment was appended by `push`, after its check: it lies in
        // context `ctx`'s header slot or status area of `rq.arena` (the context is FREE,
        // checked by `chain`, so no other chain holds them, and the arena lives as long
        // as `rq`: `Drop` reclaims every chain first), in the owner's lent buffer (kept
        // by `rq.lent` until the count raised below drops back to zero in `pop_used` or
        // `reclaim_all`), or in a fixed buffer `rq` keeps an `Arc` of and never writes;
        // only the status area and lent buffers are device-writable, and nothing makes
        // references into the arena.
        unsafe { rq.vq.try_add(&rq.scratch, u64::from(self.ctx)) }?;
        rq.in_flight[usize::from(self.ctx)] = self.owner;
        if let Some(l) = rq.lent.get_mut(self.owner as usize) {
            l.chains += 1;
        }
        Ok(())
    }
}

impl Drop for RequestQueue {
    /// Chains still in flight (an event queue's posted buffers, requests of a device
    /// that went away) are reclaimed first, which shuts the transport down: the device
    /// must not be left writing memory that is freed for reuse.
    fn drop(&mut self) {
        if !self.vq.is_empty() {
            self.reclaim_all(|_| {});
        }
        // SAFETY: `vq` and `arena` are dropped once, here, and not used after; no chain
        // is in flight any more (reclaimed above), so the device holds none of their
        // memory.
        unsafe {
            ManuallyDrop::drop(&mut self.vq);
            ManuallyDrop::drop(&mut self.arena);
        }
    }
}

#[cfg(test)]
mod tests;
