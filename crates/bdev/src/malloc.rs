//! The `malloc` module: a RAM disk (SPDK's malloc bdev).
//!
//! The disk is cut into 1 MiB shards, each behind its own `RwLock`, so channels on
//! different threads rarely contend. A shard gets memory (zeroed by the allocator, so
//! lazily by the kernel) on its first write, and gives it back when an unmap or
//! write-zeroes covers it whole: memory use follows the data written, not the disk size.
//! The shards themselves come in groups of 1 GiB made on the first write into them, so
//! a disk of any size costs a few bytes per GiB up front (a flat table of 64 TiB took
//! 2 GiB and 7 s). What is written may not exceed the machine's memory (`MemTotal`): a
//! write that would allocate beyond it fails with `ENOSPC`, as a thin-provisioned disk
//! out of space does, instead of the process being killed for it. Unmapped blocks read
//! as zeros. Any number of channels may be open at once; requests run in the submitting
//! thread.
//!
//! Each block is written atomically (a block never spans two shards); a request of
//! several blocks is not, as on real disks.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

use crate::bdev::Bdev;
use crate::direct::{ReadDest, SliceDest, SliceSrc, WriteSrc};
use crate::error::{Error, Result};
use crate::local::{self, LocalBdev, LocalDisk};

const TARGET: &str = "vbdev::malloc";

/// Bytes per shard: a multiple of every block size the module accepts (at most 64 KiB).
const SHARD_BYTES: usize = 1 << 20;
/// Shards per group (1 GiB): the unit in which shard bookkeeping is made.
const GROUP_SHARDS: usize = 1024;

/// Creates RAM disk `name` of `num_blocks` blocks of `block_size` bytes, all zero.
///
/// Memory is taken as blocks are written, up to the disk size and at most the machine's
/// memory (writes beyond fail with `ENOSPC`); a disk larger than that is a sparse disk.
///
/// # Errors
/// [`Error::InvalidOption`] when `block_size` is not a power of two from 512 to 65536,
/// `num_blocks` is 0, or the disk would not fit in the address space.
pub fn create(name: &str, num_blocks: u64, block_size: u32) -> Result<Bdev> {
    create_limited(
        name,
        num_blocks,
        block_size,
        memory_total().unwrap_or(u64::MAX),
    )
}

/// [`create`] with at most `limit` bytes of data held.
fn create_limited(name: &str, num_blocks: u64, block_size: u32, limit: u64) -> Result<Bdev> {
    local::check_block_size(block_size)?;
    let bytes = local::disk_bytes(num_blocks, block_size)?;
    let disk = MallocDisk::new(bytes, limit)?;
    let info = local::info(name, "Malloc disk", "malloc", block_size, num_blocks, false);
    tracing::info!(target: TARGET, name, blocks = num_blocks, block_size, "malloc bdev created");
    Ok(LocalBdev::bdev(info, disk))
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`), when it can be read.
fn memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

/// `MemTotal` of `/proc/meminfo`'s text, in bytes.
fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// One shard: `None` while all zero, else its bytes.
type Shard = RwLock<Option<Box<[u8]>>>;

/// The RAM disk's memory.
///
/// # Invariants
/// Shard `i` is entry `i % GROUP_SHARDS` of group `i / GROUP_SHARDS`; a group not made
/// yet holds only zeros. Every shard but the last is [`SHARD_BYTES`] long; together they
/// are `len` bytes. `allocated` is the sum of the lengths of the shards that hold memory,
/// at most `limit`.
#[derive(Debug)]
struct MallocDisk {
    groups: Box<[OnceLock<Box<[Shard]>>]>,
    len: usize,
    allocated: AtomicU64,
    limit: u64,
}

impl MallocDisk {
    fn new(bytes: u64, limit: u64) -> Result<Self> {
        let too_big = || Error::InvalidOption {
            option: "num_blocks",
            why: format!("a RAM disk of {bytes} bytes does not fit in the address space"),
        };
        let len = usize::try_from(bytes).map_err(|_| too_big())?;
        let count = len.div_ceil(SHARD_BYTES).div_ceil(GROUP_SHARDS);
        let mut groups = Vec::new();
        groups.try_reserve_exact(count).map_err(|_| too_big())?;
        groups.resize_with(count, OnceLock::new);
        Ok(Self {
            groups: groups.into_boxed_slice(),
            len,
            allocated: AtomicU64::new(0),
            limit,
        })
    }

    /// Length of shard `index`.
    fn shard_len(&self, index: usize) -> usize {
        // Cannot underflow: `index` is a shard of the disk, so `index * SHARD_BYTES < len`.
        (self.len - index * SHARD_BYTES).min(SHARD_BYTES)
    }

    /// Shard `index`, or `None` while its group was never written (all zeros).
    fn shard(&self, index: usize) -> Option<&Shard> {
        self.groups[index / GROUP_SHARDS]
            .get()
            .map(|g| &g[index % GROUP_SHARDS])
    }

    /// Shard `index`, its group made first if need be.
    fn shard_for_write(&self, index: usize) -> &Shard {
        let g = index / GROUP_SHARDS;
        let group = self.groups[g].get_or_init(|| {
            // The last group holds only the disk's remaining shards.
            let shards = self.len.div_ceil(SHARD_BYTES);
            let n = (shards - g * GROUP_SHARDS).min(GROUP_SHARDS);
            (0..n).map(|_| RwLock::new(None)).collect()
        });
        &group[index % GROUP_SHARDS]
    }

    /// Splits `len` bytes at `offset` into `(shard, start in shard, length)` pieces,
    /// in order.
    ///
    /// # Errors
    /// `InvalidInput` when the range does not lie inside the disk.
    fn pieces(
        &self,
        offset: u64,
        len: u64,
    ) -> io::Result<impl Iterator<Item = (usize, usize, usize)>> {
        let offset = usize::try_from(offset).ok();
        let len = usize::try_from(len).ok();
        let (start, end) = match (offset, len) {
            (Some(o), Some(l)) => match o.checked_add(l) {
                Some(end) if end <= self.len => (o, end),
                _ => return Err(io::ErrorKind::InvalidInput.into()),
            },
            _ => return Err(io::ErrorKind::InvalidInput.into()),
        };
        let mut pos = start;
        Ok(std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let shard = pos / SHARD_BYTES;
            let at = pos % SHARD_BYTES;
            let n = (SHARD_BYTES - at).min(end - pos);
            pos += n;
            Some((shard, at, n))
        }))
    }

    /// Zeroes a range, freeing the shards it covers whole.
    fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        for (i, at, n) in self.pieces(offset, len)? {
            let Some(shard) = self.shard(i) else {
                continue; // never written: zeros already
            };
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            if at == 0 && n == self.shard_len(i) {
                if shard.take().is_some() {
                    self.allocated.fetch_sub(n as u64, Ordering::Relaxed);
                }
            } else if let Some(data) = shard.as_mut() {
                data[at..at + n].fill(0);
            }
        }
        Ok(())
    }
}

impl LocalDisk for MallocDisk {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = buf.len() as u64;
        // A slice of the request's length takes every piece.
        self.read_to(offset, len, &mut SliceDest::new(buf))
            .map(|_| ())
    }

    fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        // A slice of the request's length gives every piece.
        self.write_from(offset, buf.len() as u64, &mut SliceSrc::new(buf))
            .map(|_| ())
    }

    fn direct(&self) -> bool {
        true
    }

    /// Each piece is handed over under its shard's read lock, straight from the shard's
    /// memory (zeros for a shard never written).
    fn read_to(&self, offset: u64, len: u64, dest: &mut dyn ReadDest) -> io::Result<bool> {
        for (i, at, n) in self.pieces(offset, len)? {
            let ok = match self.shard(i) {
                None => dest.zeros(n),
                Some(shard) => match &*shard.read().unwrap_or_else(|e| e.into_inner()) {
                    Some(data) => dest.put(&data[at..at + n]),
                    None => dest.zeros(n),
                },
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Each piece is taken under its shard's write lock, straight into the shard's
    /// memory (allocated on its first write).
    fn write_from(&self, offset: u64, len: u64, src: &mut dyn WriteSrc) -> io::Result<bool> {
        for (i, at, n) in self.pieces(offset, len)? {
            let mut shard = self
                .shard_for_write(i)
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if shard.is_none() {
                let len = self.shard_len(i) as u64;
                // Reserved before it is allocated, so that writers on several threads
                // cannot pass the limit together.
                let reserved =
                    self.allocated
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                            a.checked_add(len).filter(|&t| t <= self.limit)
                        });
                if reserved.is_err() {
                    return Err(io::Error::from_raw_os_error(
                        rustix::io::Errno::NOSPC.raw_os_error(),
                    ));
                }
            }
            let data = shard.get_or_insert_with(|| vec![0; self.shard_len(i)].into_boxed_slice());
            if !src.take(&mut data[at..at + n]) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero(offset, len)
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![(
            "allocated_bytes",
            self.allocated.load(Ordering::Relaxed).to_string(),
        )]
    }
}

#[cfg(test)]
mod tests;
