//! Direct synchronous access to a local bdev's data: no [`Request`](crate::Request), no
//! [`DmaBuf`](crate::DmaBuf), no completion queue.
//!
//! The local modules that keep their data in memory (`malloc`, and `null`, which keeps
//! none) can move a read's bytes straight from their own memory into the caller's
//! buffers, and a write's straight from them, in the calling thread. A caller that serves
//! requests from memory it does not own as a slice (a vhost-user target serving a
//! driver's buffers in guest memory) describes those buffers with [`ReadDest`] and
//! [`WriteSrc`]; the bdev calls them with pieces of its own memory. See
//! [`IoChannel::read_direct`](crate::IoChannel::read_direct), which checks and counts
//! the request as [`IoChannel::submit`](crate::IoChannel::submit) would.
//!
//! Channels that cannot do this ([`IoChannel::is_direct`](crate::IoChannel::is_direct)
//! false: virtio bdevs, files) refuse direct calls; use requests there.

use crate::error::RejectReason;
use crate::io::IoError;

/// Where a direct read puts its bytes, in order: the bdev calls it with consecutive
/// pieces that together cover the read. Each method returns `false` when the
/// destination cannot take the piece (its buffers end, or are not where they should be);
/// the read then stops and reports it.
pub trait ReadDest {
    /// The next `data.len()` bytes are `data`.
    fn put(&mut self, data: &[u8]) -> bool;
    /// The next `n` bytes are zeros.
    fn zeros(&mut self, n: usize) -> bool;
    /// The next `n` bytes are not produced: the destination leaves them as they are (a
    /// null bdev that does not read zeros). They must still be there to leave.
    fn skip(&mut self, n: usize) -> bool;
}

/// Where a direct write takes its bytes from, in order (see [`ReadDest`]).
pub trait WriteSrc {
    /// Fills `buf` with the next `buf.len()` bytes.
    fn take(&mut self, buf: &mut [u8]) -> bool;
    /// Passes over the next `n` bytes, which the bdev drops (a null bdev). They must
    /// still be there to pass over.
    fn skip(&mut self, n: usize) -> bool;
}

/// A [`ReadDest`] over a byte slice, filled from its start.
#[derive(Debug)]
pub struct SliceDest<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> SliceDest<'a> {
    /// Fills `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// Bytes put, zeroed or skipped so far.
    pub fn done(&self) -> usize {
        self.at
    }

    /// The next `n` bytes, advancing past them; `None` when fewer are left.
    fn next(&mut self, n: usize) -> Option<&mut [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get_mut(self.at..end)?;
        self.at = end;
        Some(s)
    }
}

impl ReadDest for SliceDest<'_> {
    fn put(&mut self, data: &[u8]) -> bool {
        match self.next(data.len()) {
            Some(s) => {
                s.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    fn zeros(&mut self, n: usize) -> bool {
        match self.next(n) {
            Some(s) => {
                s.fill(0);
                true
            }
            None => false,
        }
    }

    fn skip(&mut self, n: usize) -> bool {
        self.next(n).is_some()
    }
}

/// A [`WriteSrc`] over a byte slice, taken from its start.
#[derive(Debug)]
pub struct SliceSrc<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> SliceSrc<'a> {
    /// Takes from `buf`'s start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    fn next(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
}

impl WriteSrc for SliceSrc<'_> {
    fn take(&mut self, buf: &mut [u8]) -> bool {
        match self.next(buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }

    fn skip(&mut self, n: usize) -> bool {
        self.next(n).is_some()
    }
}

/// Why a direct read or write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectError {
    /// Refused before the bdev was touched, as [`IoChannel::submit`](crate::IoChannel::submit)
    /// refuses a request (the channel has no direct access:
    /// [`RejectReason::Unsupported`]).
    #[error(transparent)]
    Rejected(RejectReason),
    /// The bdev failed it (counted as an I/O error).
    #[error(transparent)]
    Failed(IoError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_dest_puts_zeros_and_skips_in_order_and_refuses_overruns() {
        let mut buf = [7u8; 8];
        let mut d = SliceDest::new(&mut buf);
        assert!(d.put(&[1, 2]));
        assert!(d.zeros(2));
        assert!(d.skip(2));
        assert!(d.put(&[9]));
        assert_eq!(d.done(), 7);
        assert!(!d.put(&[1, 2]), "one byte left");
        assert!(!d.zeros(usize::MAX));
        assert!(d.skip(1));
        assert_eq!(buf, [1, 2, 0, 0, 7, 7, 9, 7]);
    }

    #[test]
    fn slice_src_takes_and_skips_in_order() {
        let data = [1u8, 2, 3, 4, 5];
        let mut s = SliceSrc::new(&data);
        let mut two = [0u8; 2];
        assert!(s.take(&mut two));
        assert!(s.skip(1));
        assert!(s.take(&mut two));
        assert_eq!(two, [4, 5]);
        assert!(!s.take(&mut [0u8; 1]));
        assert!(!s.skip(usize::MAX));
    }
}
