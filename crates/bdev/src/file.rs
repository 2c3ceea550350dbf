//! The `file` module: a raw image file (or block device) as a bdev, like SPDK's aio
//! bdev but synchronous.
//!
//! Requests run in the submitting thread with positioned reads and writes, by default
//! through `O_DIRECT` so that the page cache neither doubles memory nor hides the
//! storage's speed. Flush is `fdatasync`; unmap punches a hole; write-zeroes asks the
//! file system to zero the range and writes zeros when it cannot. Any number of channels
//! may be open at once.
//!
//! Direct I/O needs buffers, offsets and lengths aligned to what the file system asks
//! (`statx` `STATX_DIOALIGN`, Linux 6.1). [`DmaBuf`](crate::DmaBuf)s are 4096-aligned;
//! a file system that needs more than that, or offsets aligned beyond the block size, gets
//! buffered I/O instead.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use vbdev_virtio::mem::DEFAULT_BUF_ALIGN;

use crate::bdev::Bdev;
use crate::error::{Error, Result};
use crate::local::{self, LocalBdev, LocalDisk};

const TARGET: &str = "vbdev::file";

/// `TMPFS_MAGIC` from `<linux/magic.h>`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// How to open an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    /// Logical block size in bytes: a power of two from 512 to 65536 (default 512). The
    /// file's size must be a multiple of it.
    pub block_size: u32,
    /// Open the file read-only and refuse writes, unmaps and write-zeroes (default false).
    pub read_only: bool,
    /// Direct I/O (`O_DIRECT`): `None` (default) uses it when the file system supports
    /// it for this block size and falls back to buffered I/O otherwise; `Some(true)`
    /// requires it; `Some(false)` never uses it.
    pub direct: Option<bool>,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            block_size: 512,
            read_only: false,
            direct: None,
        }
    }
}

/// Opens the image file or block device at `path` as bdev `name`.
///
/// Its size in blocks is its length divided by `opts.block_size`. [`Bdev::details`]
/// reports the path and whether direct I/O is in use (`("direct", "true")`).
///
/// # Errors
/// [`Error::InvalidOption`] naming the path when the file cannot be opened, is not a
/// regular file or block device, is smaller than one block or not a whole number of
/// blocks, or when `opts.direct` is `Some(true)` and direct I/O is unavailable; or when
/// `opts.block_size` is invalid.
pub fn open(name: &str, path: &Path, opts: FileOptions) -> Result<Bdev> {
    local::check_block_size(opts.block_size)?;
    let (file, direct) = open_file(name, path, opts, open_raw)?;
    let path_err = |why: String| Error::InvalidOption {
        option: "path",
        why: format!("{}: {why}", path.display()),
    };
    let bytes = file_len(&file).map_err(|e| path_err(e.to_string()))?;
    let bs = u64::from(opts.block_size);
    if bytes < bs || bytes % bs != 0 {
        return Err(path_err(format!(
            "size of {bytes} bytes is not a whole number of {bs}-byte blocks (at least one)"
        )));
    }
    let num_blocks = bytes / bs;
    let info = local::info(
        name,
        "File disk",
        "file",
        opts.block_size,
        num_blocks,
        opts.read_only,
    );
    tracing::info!(target: TARGET, name, path = %path.display(), blocks = num_blocks, block_size = opts.block_size, direct, read_only = opts.read_only, "file bdev opened");
    let disk = FileDisk {
        file,
        path: path.to_owned(),
        direct,
    };
    Ok(LocalBdev::bdev(info, disk))
}

/// Opens `path` read-only or read-write, with `O_DIRECT` when `direct`.
fn open_raw(path: &Path, read_only: bool, direct: bool) -> io::Result<File> {
    let mut flags = OFlags::CLOEXEC;
    flags |= if read_only {
        OFlags::RDONLY
    } else {
        OFlags::RDWR
    };
    if direct {
        flags |= OFlags::DIRECT;
    }
    Ok(File::from(rustix::fs::open(path, flags, Mode::empty())?))
}

/// Opens the file as `opts.direct` asks, through `open_raw` (a parameter so that tests
/// can play a file system that refuses `O_DIRECT`). Returns the file and whether it
/// does direct I/O.
fn open_file(
    name: &str,
    path: &Path,
    opts: FileOptions,
    open_raw: impl Fn(&Path, bool, bool) -> io::Result<File>,
) -> Result<(File, bool)> {
    let open_err = |e: io::Error| Error::InvalidOption {
        option: "path",
        why: format!("{}: {e}", path.display()),
    };
    let refusal = if opts.direct == Some(false) {
        None
    } else {
        match open_raw(path, opts.read_only, true) {
            Ok(file) => {
                check_kind(path, &file)?;
                match direct_refusal(&file, opts.block_size) {
                    None => return Ok((file, true)),
                    Some(why) => Some(why),
                }
            }
            Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
                Some("the file system refuses O_DIRECT".to_owned())
            }
            Err(e) => return Err(open_err(e)),
        }
    };
    if let Some(why) = refusal {
        if opts.direct == Some(true) {
            return Err(Error::InvalidOption {
                option: "direct",
                why: format!("{}: direct I/O unavailable: {why}", path.display()),
            });
        }
        tracing::info!(target: TARGET, name, path = %path.display(), reason = %why, "direct I/O unavailable, using buffered I/O");
    }
    let file = open_raw(path, opts.read_only, false).map_err(open_err)?;
    check_kind(path, &file)?;
    Ok((file, false))
}

/// Refuses anything but a regular file or a block device.
fn check_kind(path: &Path, file: &File) -> Result<()> {
    let kind = file
        .metadata()
        .map_err(|e| Error::InvalidOption {
            option: "path",
            why: format!("{}: {e}", path.display()),
        })?
        .file_type();
    if kind.is_file() || kind.is_block_device() {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            option: "path",
            why: format!("{}: not a regular file or block device", path.display()),
        })
    }
}

/// The length of a regular file or block device (whose metadata says 0).
fn file_len(mut file: &File) -> io::Result<u64> {
    file.seek(SeekFrom::End(0))
}

/// Why a file opened with `O_DIRECT` would not do direct I/O with blocks of
/// `block_size` bytes in [`DmaBuf`](crate::DmaBuf)s, or `None` when it would.
fn direct_refusal(file: &File, block_size: u32) -> Option<String> {
    let dio = rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN)
        .ok()
        .filter(|st| StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN))
        .map(|st| DioAlign {
            mem: st.stx_dio_mem_align,
            offset: st.stx_dio_offset_align,
        });
    let tmpfs = dio.is_none() && is_tmpfs(file);
    dio_verdict(dio, tmpfs, block_size)
}

/// Whether the file lives on tmpfs.
#[allow(
    clippy::useless_conversion,
    reason = "f_type is an i64 here but an i32 or u32 on other targets"
)]
fn is_tmpfs(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|st| i64::from(st.f_type) == TMPFS_MAGIC)
}

/// Direct I/O alignment as `statx` reports it (0 = no direct I/O).
#[derive(Debug, Clone, Copy)]
struct DioAlign {
    mem: u32,
    offset: u32,
}

/// The decision of [`direct_refusal`], from what the kernel told.
fn dio_verdict(dio: Option<DioAlign>, tmpfs: bool, block_size: u32) -> Option<String> {
    match dio {
        Some(DioAlign { offset: 0, .. }) => {
            Some("the file system does not support direct I/O".to_owned())
        }
        Some(DioAlign { offset, .. }) if offset > block_size => Some(format!(
            "direct I/O needs {offset}-byte aligned offsets, more than the {block_size}-byte block size"
        )),
        Some(DioAlign { mem, .. }) if mem as usize > DEFAULT_BUF_ALIGN => Some(format!(
            "direct I/O needs {mem}-byte aligned memory, more than buffers have ({DEFAULT_BUF_ALIGN})"
        )),
        Some(_) => None,
        // tmpfs accepts O_DIRECT since Linux 6.6 but serves it from the page cache.
        None if tmpfs => Some("tmpfs serves O_DIRECT from the page cache".to_owned()),
        // An older kernel, or a file system that does not say: the open succeeded.
        None => None,
    }
}

/// A zeroed, 4096-aligned source for writing zeros with direct I/O.
#[repr(C, align(4096))]
struct Zeroes([u8; 1 << 20]);

static ZEROES: Zeroes = Zeroes([0; 1 << 20]);

/// An open image file.
#[derive(Debug)]
struct FileDisk {
    file: File,
    path: PathBuf,
    direct: bool,
}

impl FileDisk {
    /// Writes zeros over the range, a chunk of [`ZEROES`] at a time. Chunks are whole
    /// blocks: the range is, and 1 MiB is a multiple of every block size.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROES.0.len() as u64);
            // `n` is at most 1 MiB, so it fits a usize.
            self.file
                .write_all_at(&ZEROES.0[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

/// Whether a `fallocate` error means the file system cannot do that mode.
fn unsupported(e: Errno) -> bool {
    e == Errno::OPNOTSUPP || e == Errno::NOSYS
}

impl LocalDisk for FileDisk {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, mode, offset, len) {
            Ok(()) => Ok(()),
            // Unmapped blocks read as zeros in every local module.
            Err(e) if unsupported(e) => self.write_zero_bytes(offset, len),
            Err(e) => Err(e.into()),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, mode, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(e) => self.write_zero_bytes(offset, len),
            Err(e) => Err(e.into()),
        }
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("path", self.path.display().to_string()),
            ("direct", self.direct.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests;
