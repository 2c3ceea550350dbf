//! Reading CDBs and writing Data-In parameter data without panics or allocation.

/// A CDB as received. Reads past its end return zeros; callers check the length first
/// (see `opcode::check_cdb`), so this only keeps a missed check from panicking.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cdb<'a>(pub(super) &'a [u8]);

impl Cdb<'_> {
    pub(super) fn u8(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    fn array<const N: usize>(&self, i: usize) -> [u8; N] {
        let mut a = [0u8; N];
        for (k, b) in a.iter_mut().enumerate() {
            *b = i.checked_add(k).map_or(0, |j| self.u8(j));
        }
        a
    }

    pub(super) fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes(self.array(i))
    }

    pub(super) fn be32(&self, i: usize) -> u32 {
        u32::from_be_bytes(self.array(i))
    }

    pub(super) fn be64(&self, i: usize) -> u64 {
        u64::from_be_bytes(self.array(i))
    }

    pub(super) fn bit(&self, i: usize, mask: u8) -> bool {
        self.u8(i) & mask != 0
    }
}

/// Parameter data being written to the Data-In buffer, cut at the allocation length and
/// the buffer's end. SPC-5 (ALLOCATION LENGTH field): returning less than the allocation
/// length is not an error, and the length fields keep their full values.
#[derive(Debug)]
pub(super) struct DataIn<'a> {
    buf: &'a mut [u8],
    /// Bytes of parameter data produced so far, written or cut.
    pos: usize,
}

impl<'a> DataIn<'a> {
    /// Writes at most `alloc_len` bytes into `buf`.
    pub(super) fn new(buf: &'a mut [u8], alloc_len: usize) -> Self {
        let n = alloc_len.min(buf.len());
        let (head, _) = buf.split_at_mut(n);
        Self { buf: head, pos: 0 }
    }

    /// Appends `bytes`, keeping what fits.
    pub(super) fn put(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.pos..) {
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
        }
        self.pos = self.pos.saturating_add(bytes.len());
    }

    /// Bytes of parameter data produced so far (the full length, not what fits).
    #[cfg(test)]
    pub(super) fn produced(&self) -> usize {
        self.pos
    }

    /// Bytes actually in the Data-In buffer.
    pub(super) fn written(&self) -> usize {
        self.pos.min(self.buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdb_reads_past_end_as_zero() {
        let c = Cdb(&[0x12, 0x34, 0x56]);
        assert_eq!(c.be16(1), 0x3456);
        assert_eq!(c.be32(1), 0x3456_0000);
        assert_eq!(c.u8(usize::MAX), 0);
        assert_eq!(c.be64(usize::MAX), 0);
    }

    #[test]
    fn data_in_cuts_at_allocation_length_and_buffer() {
        let mut buf = [0xAAu8; 8];
        let mut d = DataIn::new(&mut buf, 5);
        d.put(&[1, 2, 3, 4]);
        d.put(&[5, 6, 7, 8]);
        assert_eq!(d.produced(), 8);
        assert_eq!(d.written(), 5);
        assert_eq!(buf, [1, 2, 3, 4, 5, 0xAA, 0xAA, 0xAA]);
        let mut small = [0u8; 2];
        let mut d = DataIn::new(&mut small, 100);
        d.put(&[0; 200]);
        assert_eq!((d.produced(), d.written()), (200, 2));
    }
}
