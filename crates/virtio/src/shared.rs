#![allow(unsafe_code)] // volatile loads and stores of shared memory, each with its SAFETY.
//! Memory a device writes while the driver holds it: rings, indirect tables, request
//! headers and status areas.
//!
//! A [`DmaBuf`] hands out `&[u8]` and `&mut [u8]` over its bytes, which is right for an
//! I/O buffer that is either the caller's or the device's at a time (the hand-off of
//! [`crate::RequestQueue`]), and wrong for memory the device may write at any moment
//! while the driver keeps working in the same buffer: the status bytes of the other
//! requests in a slot arena, the used ring. A reference over bytes that change under
//! it is undefined behaviour whatever the code then does with it. [`SharedMem`] is the
//! type for that memory: it never makes a reference to its bytes; every access is a
//! volatile load or store of a copy (the way vm-memory's `VolatileSlice` works, and
//! our target's `fast` path), and rings are reached through atomics made from its
//! pointer inside this crate.

use crate::error::Result;
use crate::mem::{DmaBuf, DmaDomain, Iova, RegionId};

/// DMA memory shared with a device: volatile access only, no references to its bytes.
///
/// # Invariants
/// `buf` is never dereferenced (no `&[u8]` or `&mut [u8]` over it is ever made); it is
/// kept for its allocation, its address and its release on drop.
pub struct SharedMem {
    buf: DmaBuf,
}

impl std::fmt::Debug for SharedMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMem")
            .field("iova", &self.buf.iova())
            .field("len", &self.buf.len())
            .finish()
    }
}

impl SharedMem {
    /// Allocates `len` zeroed bytes aligned to `align` from `domain`.
    ///
    /// # Errors
    /// As [`DmaDomain::alloc_zeroed`].
    pub fn zeroed(domain: &'static DmaDomain, len: usize, align: usize) -> Result<Self> {
        Ok(Self {
            buf: domain.alloc_zeroed(len, align)?,
        })
    }

    /// Allocates `len` bytes aligned to `align` from `domain`, not zeroed: for tables
    /// whose entries are always written before the device is pointed at them (pages
    /// never touched then cost no memory).
    ///
    /// # Errors
    /// As [`DmaDomain::alloc_aligned`].
    pub fn alloc(domain: &'static DmaDomain, len: usize, align: usize) -> Result<Self> {
        Ok(Self {
            buf: domain.alloc_aligned(len, align)?,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Always false: allocations are never empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The region this memory lives in.
    pub fn region(&self) -> RegionId {
        self.buf.region()
    }

    /// The address a device uses for the first byte.
    pub fn iova(&self) -> Iova {
        self.buf.iova()
    }

    /// The first byte's address, for the ring code of this crate, which makes atomics
    /// and volatile accesses from it (never references to plain bytes).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.buf.as_ptr()
    }

    fn check(&self, off: usize, len: usize) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len()),
            "bytes {off}..+{len} beyond shared memory of {}",
            self.len()
        );
    }

    /// Reads the byte at `off` once.
    ///
    /// # Panics
    /// When `off` is out of range.
    pub fn read_u8(&self, off: usize) -> u8 {
        self.check(off, 1);
        // SAFETY: in range (checked); a volatile load of a byte of mapped memory, no
        // reference made.
        unsafe { self.buf.as_ptr().add(off).read_volatile() }
    }

    /// Copies `out.len()` bytes from `off`, each read once.
    ///
    /// # Panics
    /// When the range is out of bounds.
    pub fn read(&self, off: usize, out: &mut [u8]) {
        self.check(off, out.len());
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `off + i < off + out.len() <= len` (checked above).
            *b = unsafe { self.buf.as_ptr().add(off + i).read_volatile() };
        }
    }

    /// Writes the byte at `off`.
    ///
    /// # Panics
    /// When `off` is out of range.
    pub fn write_u8(&mut self, off: usize, v: u8) {
        self.check(off, 1);
        // SAFETY: in range (checked); a volatile store, no reference made.
        unsafe { self.buf.as_ptr().add(off).write_volatile(v) }
    }

    /// Writes `data` at `off`: eight bytes per volatile store where it can (the stores
    /// have alignment 1), the tail byte by byte.
    ///
    /// # Panics
    /// When the range is out of bounds.
    #[inline]
    pub fn write(&mut self, off: usize, data: &[u8]) {
        self.check(off, data.len());
        let base = self.buf.as_ptr();
        let mut words = data.chunks_exact(8);
        let mut at = off;
        for w in &mut words {
            let w: [u8; 8] = w.try_into().expect("chunks of 8");
            // SAFETY: `at + 8 <= off + data.len() <= len` (checked above); `[u8; 8]` has
            // alignment 1, so any address is aligned for it; a volatile store.
            unsafe { base.add(at).cast::<[u8; 8]>().write_volatile(w) };
            at += 8;
        }
        for &b in words.remainder() {
            // SAFETY: `at < off + data.len() <= len`.
            unsafe { base.add(at).write_volatile(b) };
            at += 1;
        }
    }

    /// Writes `words` little-endian from `off`, one volatile store each.
    ///
    /// # Panics
    /// When the range is out of bounds.
    #[inline]
    pub fn write_words_le(&mut self, off: usize, words: &[u64]) {
        self.check(off, 8 * words.len());
        let base = self.buf.as_ptr();
        for (i, w) in words.iter().enumerate() {
            // SAFETY: `off + 8 * (i + 1) <= off + 8 * words.len() <= len` (checked above);
            // `[u8; 8]` has alignment 1; a volatile store.
            unsafe {
                base.add(off + 8 * i)
                    .cast::<[u8; 8]>()
                    .write_volatile(w.to_le_bytes())
            }
        }
    }

    /// Zeroes every byte (while the device does not use the memory).
    pub fn zero(&mut self) {
        for off in (0..self.len()).step_by(8) {
            let n = (self.len() - off).min(8);
            self.write(off, &[0u8; 8][..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_land_where_asked() {
        let mut m = SharedMem::zeroed(DmaDomain::global(), 64, 64).unwrap();
        m.write(3, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        m.write_u8(20, 0xaa);
        m.write_words_le(24, &[0x0102_0304_0506_0708]);
        let mut out = [0u8; 32];
        m.read(0, &mut out);
        assert_eq!(&out[..14], &[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(out[20], 0xaa);
        assert_eq!(&out[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(m.read_u8(26), 6);
        m.zero();
        m.read(0, &mut out);
        assert_eq!(out, [0u8; 32]);
    }

    #[test]
    #[should_panic(expected = "beyond shared memory")]
    fn a_write_past_the_end_panics_before_touching_memory() {
        let mut m = SharedMem::zeroed(DmaDomain::global(), 64, 64).unwrap();
        m.write(60, &[0u8; 8]);
    }

    #[test]
    #[should_panic(expected = "beyond shared memory")]
    fn an_overflowing_range_is_caught() {
        let m = SharedMem::zeroed(DmaDomain::global(), 64, 64).unwrap();
        let mut out = [0u8; 2];
        m.read(usize::MAX, &mut out);
    }
}
