//! The `null` module: a bdev that stores nothing, for benchmarks (SPDK's null bdev).
//!
//! Reads fill their buffer with zeros, writes are dropped, and every request succeeds
//! in the submitting thread. Any number of channels may be open at once.
//!
//! With [`NullOptions::read_zeroes`] off, reads leave their buffer as it is, as SPDK's
//! null bdev and qemu-storage-daemon's `null-co` with `read-zeroes=off` do: no byte is
//! touched, so comparisons against those measure the same work.
//!
//! Its channels have direct access ([`crate::direct`]): a direct read zeroes the
//! caller's buffers (or passes over them), a direct write passes over them.

use std::io;

use crate::bdev::Bdev;
use crate::direct::{ReadDest, WriteSrc};
use crate::error::Result;
use crate::local::{self, LocalBdev, LocalDisk};

const TARGET: &str = "vbdev::null";

/// How a null bdev behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NullOptions {
    /// Reads return zeros (default true). False: reads leave the reader's buffer as it
    /// was (SPDK's null bdev; qemu-storage-daemon's `null-co,read-zeroes=off`).
    pub read_zeroes: bool,
}

impl Default for NullOptions {
    fn default() -> Self {
        Self { read_zeroes: true }
    }
}

/// Creates null bdev `name` of `num_blocks` blocks of `block_size` bytes; reads return
/// zeros.
///
/// # Errors
/// [`Error::InvalidOption`](crate::Error::InvalidOption) when `block_size` is not a power
/// of two from 512 to 65536, or `num_blocks` is 0 or its size in bytes overflows.
pub fn create(name: &str, num_blocks: u64, block_size: u32) -> Result<Bdev> {
    create_with(name, num_blocks, block_size, NullOptions::default())
}

/// As [`create`], with `opts`.
///
/// # Errors
/// As [`create`].
pub fn create_with(
    name: &str,
    num_blocks: u64,
    block_size: u32,
    opts: NullOptions,
) -> Result<Bdev> {
    local::check_block_size(block_size)?;
    local::disk_bytes(num_blocks, block_size)?;
    let info = local::info(name, "Null disk", "null", block_size, num_blocks, false);
    tracing::info!(target: TARGET, name, blocks = num_blocks, block_size, read_zeroes = opts.read_zeroes, "null bdev created");
    Ok(LocalBdev::bdev(
        info,
        NullDisk {
            read_zeroes: opts.read_zeroes,
        },
    ))
}

/// Reads zeros (or nothing), drops writes.
#[derive(Debug)]
struct NullDisk {
    read_zeroes: bool,
}

impl LocalDisk for NullDisk {
    fn read(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.read_zeroes {
            buf.fill(0);
        }
        Ok(())
    }

    fn direct(&self) -> bool {
        true
    }

    fn read_to(&self, _offset: u64, len: u64, dest: &mut dyn ReadDest) -> io::Result<bool> {
        let n = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(if self.read_zeroes {
            dest.zeros(n)
        } else {
            dest.skip(n)
        })
    }

    fn write_from(&self, _offset: u64, len: u64, src: &mut dyn WriteSrc) -> io::Result<bool> {
        let n = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(src.skip(n))
    }

    fn write(&self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn unmap(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        // Listed only when off, so the default bdev describes itself as before.
        if self.read_zeroes {
            Vec::new()
        } else {
            vec![("read_zeroes", "false".to_owned())]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::local::testing::{buf_with, pattern, read, run, write};
    use crate::{Error, IoStatus, RejectReason, Request};

    #[test]
    fn describes_itself_like_spdk() {
        let bdev = create("Null0", 1000, 4096).expect("create");
        let i = bdev.info();
        assert_eq!(i.name, "Null0");
        assert_eq!(i.product_name, "Null disk");
        assert_eq!(i.driver, "null");
        assert_eq!((i.block_size, i.num_blocks), (4096, 1000));
        assert!(i.flush && i.unmap && i.write_zeroes && !i.read_only);
        assert_eq!(i.serial.as_deref(), Some("Null0"));
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(matches!(
            create("Null0", 8, 1000),
            Err(Error::InvalidOption {
                option: "block_size",
                ..
            })
        ));
        assert!(matches!(
            create("Null0", 0, 512),
            Err(Error::InvalidOption {
                option: "num_blocks",
                ..
            })
        ));
    }

    #[test]
    fn reads_return_zeros_after_writes() {
        for bs in [512usize, 4096] {
            let bdev = create("Null0", 64, bs as u32).expect("create");
            let mut ch = bdev.open_channel().expect("channel");
            write(&mut ch, 3, &pattern(2 * bs, 1));
            assert_eq!(read(&mut ch, 3, 2 * bs), vec![0; 2 * bs]);
            for req in [
                Request::flush(1),
                Request::unmap(0, 64, 2),
                Request::write_zeroes(5, 1, 3),
            ] {
                assert_eq!(run(&mut ch, req).status, IoStatus::Success);
            }
        }
    }

    #[test]
    fn without_read_zeroes_reads_leave_the_buffer_as_it_was() {
        let bdev =
            create_with("Null0", 64, 512, NullOptions { read_zeroes: false }).expect("create");
        assert_eq!(bdev.details(), vec![("read_zeroes", "false".to_owned())]);
        let mut ch = bdev.open_channel().expect("channel");
        // `read` fills its buffer with 0x5a first.
        assert_eq!(read(&mut ch, 3, 1024), vec![0x5a; 1024]);
        // Direct: nothing is touched; with zeros, the buffer is zeroed.
        let mut buf = [0xa5u8; 1024];
        let mut dest = crate::direct::SliceDest::new(&mut buf);
        assert_eq!(ch.read_direct(3, 2, &mut dest), Ok(true));
        assert_eq!(dest.done(), 1024);
        assert_eq!(buf, [0xa5; 1024]);
        let zeroing = create("Null1", 64, 512).expect("create");
        assert!(zeroing.details().is_empty());
        let mut ch = zeroing.open_channel().expect("channel");
        let mut dest = crate::direct::SliceDest::new(&mut buf);
        assert_eq!(ch.read_direct(3, 2, &mut dest), Ok(true));
        assert_eq!(buf, [0; 1024]);
    }

    #[test]
    fn out_of_range_requests_are_refused() {
        let bdev = create("Null0", 16, 512).expect("create");
        let mut ch = bdev.open_channel().expect("channel");
        let r = ch
            .submit(Request::read(15, 2, buf_with(&[0; 1024]), 1))
            .expect_err("beyond the end");
        assert!(matches!(r.error, RejectReason::OutOfRange { .. }));
    }

    #[test]
    fn many_channels_open_at_once() {
        let bdev = create("Null0", 16, 512).expect("create");
        let channels: Vec<_> = (0..100)
            .map(|_| bdev.open_channel().expect("channel"))
            .collect();
        assert_eq!(channels.len(), 100);
    }
}
