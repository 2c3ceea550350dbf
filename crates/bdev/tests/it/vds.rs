//! Test helper: run rust-vmm's `vhost-device-scsi` 0.1.0 (vds) as a
//! third-party vhost-user-scsi target, and make and check its raw images.
//!
//! Like `qsd.rs`, the helper depends only on `std`, `libc` and `tempfile`, and
//! on no vbdev crate, so other test binaries can share it. The tests of the
//! virtio-scsi initiator at the end (module `scsi`, the only user of vbdev
//! crates here) stay behind when it is copied.
//!
//! What the target is (research notes, `targets.md` section 2): each image
//! becomes one LUN of target 0, in command-line order; the block size is
//! fixed at 512, so image sizes must be multiples of 512. It offers 3 queues
//! (control, event, one request queue) of at most 128 descriptors, no
//! REPLY_ACK, and panics on `SET_CONFIG`. It serves exactly **one** frontend
//! connection: when that connection ends, the process exits by itself and
//! removes its socket ([`Vds::wait_exit`]).
//!
//! Readiness: because of that single connection, the helper never connects to
//! find out whether vds is up. [`Vds::start`] waits for the socket file to
//! appear (an inotify watch on the directory, and a pidfd that reports an early
//! exit), then until the kernel lists it as listening in `/proc/net/unix`
//! (closing the short gap between `bind` and `listen`), at most 10 s. If vds
//! exits first or the deadline passes, the helper panics with the tail of the
//! vds log; a test that needs vds fails loudly instead of being skipped.
//!
//! The binary is `$VBDEV_VHOST_DEVICE_SCSI` (set by `scripts/test.sh`, which
//! builds it into a cache directory), else `vhost-device-scsi` from `PATH`.
//! Its log level is `$VBDEV_VDS_LOG` (an `env_logger` filter), default `info`;
//! `debug` logs every SCSI command.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The block size vds reports for every LUN; image sizes are multiples of it.
pub const BLOCK_SIZE: u64 = 512;

/// How long [`Vds::start`] waits for the socket to be listening.
pub const START_DEADLINE: Duration = Duration::from_secs(10);

/// Interval of the fallback poll loops, used only when inotify or `pidfd_open`
/// is not available, and while the socket exists but is not listening yet.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How much of the end of the vds log goes into panic messages.
const LOG_TAIL_BYTES: usize = 4096;

/// Command-line switches of vds; the default is a writable, rotational disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VdsOptions {
    /// `--read-only`: every LUN is write protected (MODE SENSE WP bit).
    pub read_only: bool,
    /// `--solid-state`: VPD page B1 reports a non-rotating medium.
    pub solid_state: bool,
}

/// A running `vhost-device-scsi`, our child process.
///
/// Dropping it SIGKILLs and reaps the process if it is still running, removes
/// the socket if it was left behind, and removes the directory. If the thread
/// is panicking, the log tail is printed first (the test harness shows it with
/// the failure).
#[derive(Debug)]
pub struct Vds {
    child: Child,
    /// `pidfd_open(2)` of the child, if available: readable once it exits.
    pidfd: Option<OwnedFd>,
    /// Set once the child has been reaped.
    status: Option<ExitStatus>,
    socket: PathBuf,
    log: PathBuf,
    images: Vec<PathBuf>,
    command: String,
    /// A helper panic message already carries the log: Drop need not print it.
    log_reported: bool,
    // `Drop::drop` kills the process before this directory is removed.
    dir: tempfile::TempDir,
}

impl Vds {
    /// Start vds with one LUN per image (LUN `i` is `images[i]`) and wait until
    /// its socket is listening. The images must exist. Panics, with the log
    /// tail, if vds cannot be started, exits, or is not listening within 10 s.
    pub fn start(images: &[&Path]) -> Vds {
        Self::start_with(images, VdsOptions::default())
    }

    /// [`Vds::start`] with command-line switches.
    pub fn start_with(images: &[&Path], opts: VdsOptions) -> Vds {
        let dir = tempfile::Builder::new()
            .prefix("vbdev-vds-")
            .tempdir_in("/tmp")
            .expect("vds helper: cannot create a temporary directory under /tmp");
        let socket = dir.path().join("vscsi.sock");
        let log = dir.path().join("vds.log");

        let mut args: Vec<&std::ffi::OsStr> = vec!["--socket-path".as_ref(), socket.as_os_str()];
        if opts.read_only {
            args.push("--read-only".as_ref());
        }
        if opts.solid_state {
            args.push("--solid-state".as_ref());
        }
        args.extend(images.iter().map(|p| p.as_os_str()));

        let from_env = std::env::var_os("VBDEV_VHOST_DEVICE_SCSI").filter(|v| !v.is_empty());
        let bin = from_env
            .clone()
            .unwrap_or_else(|| "vhost-device-scsi".into());
        let command = std::iter::once(bin.as_os_str())
            .chain(args.iter().copied())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");

        // Watch the directory before the child exists, so the socket's creation
        // cannot be missed.
        let inotify = inotify_watch(dir.path());

        let log_file = File::create(&log).expect("vds helper: cannot create vds.log");
        let log_file2 = log_file
            .try_clone()
            .expect("vds helper: cannot duplicate the vds.log handle");
        let log_level = std::env::var_os("VBDEV_VDS_LOG").unwrap_or_else(|| "info".into());
        let child = Command::new(&bin)
            .args(&args)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_file2))
            .spawn()
            .unwrap_or_else(|e| {
                if from_env.is_some() {
                    panic!(
                        "vds helper: cannot run VBDEV_VHOST_DEVICE_SCSI={bin:?} ({e}); \
                         run scripts/test.sh, which installs vhost-device-scsi 0.1.0 \
                         and sets it"
                    )
                }
                panic!(
                    "vds helper: cannot run vhost-device-scsi from PATH ({e}); run \
                     scripts/test.sh, which installs vhost-device-scsi 0.1.0 and sets \
                     VBDEV_VHOST_DEVICE_SCSI, or set VBDEV_VHOST_DEVICE_SCSI to the binary"
                )
            });
        let pidfd = pidfd_open(child.id());

        // From here on a panic drops `vds`, which kills and reaps the child.
        let mut vds = Vds {
            child,
            pidfd,
            status: None,
            socket,
            log,
            images: images.iter().map(|p| p.to_path_buf()).collect(),
            command,
            log_reported: false,
            dir,
        };
        vds.wait_listening(inotify);
        vds
    }

    /// Wait until the socket is listening: see the module documentation.
    fn wait_listening(&mut self, inotify: Option<OwnedFd>) {
        let end = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.try_wait() {
                self.log_reported = true;
                panic!(
                    "vds helper: vhost-device-scsi exited ({status}) before its socket {} \
                     was listening\n{}",
                    self.socket.display(),
                    self.describe()
                );
            }
            let exists = self.socket.exists();
            // No /proc/net/unix (None): the socket file existing has to do.
            if exists && self.listening().unwrap_or(true) {
                return;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.log_reported = true;
                panic!(
                    "vds helper: the socket {} of vhost-device-scsi (pid {}) is not \
                     listening after {START_DEADLINE:?} (socket file {})\n{}",
                    self.socket.display(),
                    self.child.id(),
                    if exists { "exists" } else { "missing" },
                    self.describe()
                );
            }
            // Sleep on events when both fds are there; otherwise (and in the
            // bind-to-listen gap, which no event marks) poll briefly.
            let wait = if exists || inotify.is_none() || self.pidfd.is_none() {
                left.min(POLL_INTERVAL)
            } else {
                left
            };
            let fds: Vec<RawFd> = inotify
                .iter()
                .chain(self.pidfd.iter())
                .map(AsRawFd::as_raw_fd)
                .collect();
            poll_readable(&fds, wait);
            if let Some(fd) = &inotify {
                drain_fd(fd);
            }
        }
    }

    /// Path of the vhost-user-scsi socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The images, in LUN order.
    pub fn images(&self) -> &[PathBuf] {
        &self.images
    }

    /// Directory holding the socket and `vds.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the log file (vds's stdout and stderr).
    #[allow(dead_code)] // for the virtio-scsi tests to come
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last few KiB of the log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// The process id of vds.
    #[allow(dead_code)] // for the virtio-scsi tests to come
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether vds has not exited yet (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Whether the kernel lists the socket as listening (`/proc/net/unix`);
    /// this never connects to it. False if `/proc/net/unix` is unreadable.
    pub fn is_listening(&self) -> bool {
        self.listening().unwrap_or(false)
    }

    /// Wait at most `timeout` for vds to exit, which it does by itself when
    /// its frontend disconnects. Returns its exit status (also on later calls),
    /// or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match &self.pidfd {
                Some(fd) => poll_readable(&[fd.as_raw_fd()], left),
                None => std::thread::sleep(left.min(POLL_INTERVAL)),
            }
        }
    }

    /// SIGKILL vds (if still running) and reap it. Returns its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // The child is not reaped yet, so its pid cannot have been reused.
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("vds helper: cannot kill pid {}: {e}", self.child.id()));
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("vds helper: cannot reap pid {}: {e}", self.child.id()));
        self.status = Some(status);
        status
    }

    /// The exit status if vds has exited (reaping it), else `None`.
    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("vds helper: waitpid({}): {e}", self.child.id()));
        }
        self.status
    }

    fn listening(&self) -> Option<bool> {
        unix_socket_listening(&self.socket)
    }

    /// The command line and the log tail, for panic messages.
    fn describe(&self) -> String {
        format!(
            "command: {}\nlog {} (tail):\n{}",
            self.command,
            self.log.display(),
            self.log_tail()
        )
    }
}

impl Drop for Vds {
    fn drop(&mut self) {
        // Never panic in drop (we may already be unwinding).
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
        if std::thread::panicking() && !self.log_reported {
            eprintln!(
                "vds helper: vhost-device-scsi (pid {}, {}) at the panic:\n{}",
                self.child.id(),
                self.status
                    .map_or_else(|| "not reaped".to_owned(), |s| s.to_string()),
                self.describe()
            );
        }
        let _ = fs::remove_file(&self.socket);
        // `self.dir` (TempDir) removes the directory when it is dropped.
    }
}

// ---------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------

/// Create a raw image of `size` bytes (a multiple of 512) at `path`, filled
/// with [`image_pattern`]`(seed, ..)`. Give every image of a test its own
/// seed (e.g. its LUN number), so that data from the wrong LUN or the wrong
/// block is told apart. `path` must not exist yet.
pub fn create_image(path: &Path, size: u64, seed: u8) {
    assert!(
        size % BLOCK_SIZE == 0,
        "vds helper: image size {size} is not a multiple of {BLOCK_SIZE}"
    );
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap_or_else(|e| panic!("vds helper: cannot create {}: {e}", path.display()));
    const CHUNK: u64 = 1 << 20;
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(CHUNK);
        file.write_all(&image_pattern(seed, offset, n as usize))
            .unwrap_or_else(|e| panic!("vds helper: cannot fill {}: {e}", path.display()));
        offset += n;
    }
    file.sync_all()
        .unwrap_or_else(|e| panic!("vds helper: cannot sync {}: {e}", path.display()));
}

/// The content of an image made by [`create_image`]`(_, _, seed)` at bytes
/// `offset..offset + len` (any alignment).
///
/// Every 8-byte word is `splitmix64(seed << 56 | word_index)` in little
/// endian: a bijection, so no two words of any two images are equal.
pub fn image_pattern(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let end = offset + len as u64;
    let mut pos = offset;
    while pos < end {
        let word = splitmix64((u64::from(seed) << 56) | (pos / 8)).to_le_bytes();
        let from = (pos % 8) as usize;
        let take = (8 - from).min((end - pos) as usize);
        out.extend_from_slice(&word[from..from + take]);
        pos += take as u64;
    }
    out
}

/// Read `len` bytes at `offset` of an image file with `std::fs`.
pub fn read_image(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = File::open(path)
        .unwrap_or_else(|e| panic!("vds helper: cannot open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap_or_else(|e| {
        panic!(
            "vds helper: cannot read {len} bytes at offset {offset} of {}: {e}",
            path.display()
        )
    });
    buf
}

/// Assert that bytes `offset..offset + len` of the image still hold
/// [`image_pattern`]`(seed, ..)`; the panic names the first differing byte
/// instead of printing both buffers.
pub fn assert_image_pattern(path: &Path, seed: u8, offset: u64, len: usize) {
    let got = read_image(path, offset, len);
    let want = image_pattern(seed, offset, len);
    if let Some(i) = got.iter().zip(&want).position(|(g, w)| g != w) {
        panic!(
            "vds helper: {} differs from pattern {seed} at byte {} (block {}): \
             got {:#04x}, want {:#04x}",
            path.display(),
            offset + i as u64,
            (offset + i as u64) / BLOCK_SIZE,
            got[i],
            want[i]
        );
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------
// Process and socket plumbing
// ---------------------------------------------------------------------------

fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no log)".to_owned();
    };
    let mut data = Vec::new();
    if file.read_to_end(&mut data).is_err() {
        return "(log unreadable)".to_owned();
    }
    let start = data.len().saturating_sub(LOG_TAIL_BYTES);
    let text = String::from_utf8_lossy(&data[start..]);
    if text.trim().is_empty() {
        "(empty)".to_owned()
    } else if start > 0 {
        format!("[...]{text}")
    } else {
        text.into_owned()
    }
}

/// Whether `/proc/net/unix` lists a listening socket bound to `path`; `None`
/// if that file cannot be read. Columns: Num RefCount Protocol Flags Type St
/// Inode Path; flag 0x10000 (`__SO_ACCEPTCON`) marks a listening socket.
fn unix_socket_listening(path: &Path) -> Option<bool> {
    let table = fs::read("/proc/net/unix").ok()?;
    let path = path.as_os_str().as_bytes();
    Some(table.split(|&b| b == b'\n').skip(1).any(|line| {
        let mut cols = line.split(|&b| b == b' ').filter(|c| !c.is_empty()).skip(3);
        let flags = cols
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| u32::from_str_radix(f, 16).ok());
        flags.is_some_and(|f| f & 0x1_0000 != 0) && cols.nth(3) == Some(path)
    }))
}

/// An inotify fd watching `dir` for new entries, or `None` if inotify is not
/// available (the caller then polls).
fn inotify_watch(dir: &Path) -> Option<OwnedFd> {
    // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cdir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `fd` is an inotify fd and `cdir` a NUL-terminated path.
    let wd = unsafe {
        libc::inotify_add_watch(
            fd.as_raw_fd(),
            cdir.as_ptr(),
            libc::IN_CREATE | libc::IN_MOVED_TO,
        )
    };
    (wd >= 0).then_some(fd)
}

/// `pidfd_open(2)` of `pid`, or `None` if not available (the caller polls).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` is a new fd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wait at most `timeout` for any of `fds` to become readable (or for a
/// signal). Sleeps for `timeout` if `fds` is empty.
fn poll_readable(fds: &[RawFd], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Round up so that a sub-millisecond remainder does not spin.
    let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    let n = libc::nfds_t::try_from(pfds.len()).expect("few fds");
    // SAFETY: `pfds` holds `n` valid pollfd entries. The result does not
    // matter: every caller re-checks its condition afterwards.
    unsafe { libc::poll(pfds.as_mut_ptr(), n, ms) };
}

/// Read and discard everything pending on a non-blocking fd.
fn drain_fd(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            // 0, EAGAIN or another error: nothing (more) to read.
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Tests of the helper itself (none connects: one connection would end vds)
// ---------------------------------------------------------------------------

#[test]
fn vds_starts_and_exits_when_killed() {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::process::ExitStatusExt;

    let images = tempfile::tempdir().unwrap();
    let lun0 = images.path().join("lun0.raw");
    let lun1 = images.path().join("lun1.raw");
    create_image(&lun0, 1 << 20, 0);
    create_image(&lun1, (64 << 10) + 512, 1);

    let mut vds = Vds::start(&[&lun0, &lun1]);
    let meta = fs::symlink_metadata(vds.socket()).expect("socket exists");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert!(vds.is_listening(), "{}", vds.log_tail());
    assert!(vds.is_running());
    // Without a frontend it stays up.
    assert_eq!(vds.wait_exit(Duration::from_millis(200)), None);
    assert_eq!(vds.images(), [lun0.clone(), lun1.clone()]);

    let status = vds.kill();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(!vds.is_running());
    assert_eq!(vds.wait_exit(Duration::ZERO), Some(status));
    assert!(!vds.is_listening());

    // vds opened the images read-write but must not have changed them.
    assert_image_pattern(&lun0, 0, 0, 1 << 20);
    assert_image_pattern(&lun1, 1, 0, (64 << 10) + 512);

    let socket = vds.socket().to_path_buf();
    let dir = vds.dir().to_path_buf();
    drop(vds);
    assert!(!socket.exists());
    assert!(!dir.exists());
}

#[test]
#[should_panic(expected = "Opening image")]
fn vds_start_panics_with_the_log_when_an_image_is_missing() {
    // vds panics with "Opening image: ..." before it binds its socket; the
    // helper's panic message carries that from the log.
    let images = tempfile::tempdir().unwrap();
    let _vds = Vds::start(&[&images.path().join("missing.raw")]);
}

#[test]
fn vds_image_pattern_depends_on_seed_and_position_at_any_alignment() {
    let images = tempfile::tempdir().unwrap();
    let path = images.path().join("img.raw");
    create_image(&path, 8 * BLOCK_SIZE, 7);
    assert_eq!(fs::metadata(&path).unwrap().len(), 8 * BLOCK_SIZE);

    let whole = image_pattern(7, 0, 4096);
    assert_eq!(read_image(&path, 0, 4096), whole);
    for (off, len) in [(0, 1), (3, 5), (5, 13), (511, 2), (1000, 3000), (4095, 1)] {
        assert_eq!(image_pattern(7, off, len), whole[off as usize..][..len]);
        assert_eq!(read_image(&path, off, len), whole[off as usize..][..len]);
    }
    // Another seed, another block: different data.
    assert_ne!(image_pattern(8, 0, 512), whole[..512]);
    assert_ne!(whole[..512], whole[512..1024]);
    assert_image_pattern(&path, 7, 100, 3000);
    let wrong = std::panic::catch_unwind(|| assert_image_pattern(&path, 8, 0, 512));
    assert!(wrong.is_err());
}

// ---------------------------------------------------------------------------
// The virtio-scsi initiator against vds
// ---------------------------------------------------------------------------

/// Integration tests of `vbdev_bdev::virtio_scsi` against vds. They live in
/// this module so that only it uses vbdev crates: the helper above stays
/// shareable verbatim.
///
/// Every test starts its own vds (one frontend per process), attaches with
/// one request queue of 128 descriptors (the most vds allows), and ends by
/// detaching, waiting for vds to exit by itself and checking the image files.
///
/// DMA buffers are allocated before the attach: vds lacks
/// `CONFIGURE_MEM_SLOTS`, so a DMA region created after the attach (another
/// test of this binary may fill the existing ones for a while) would not be
/// visible to it. Every region that exists at the attach is shared.
mod scsi {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use vbdev_bdev::Request;
    use vbdev_bdev::virtio_scsi::{self, AttachOptions, ScsiController};
    use vbdev_bdev::{
        Bdev, Completion, DmaBuf, Error, IoChannel, IoError, IoOp, IoStatus, RejectReason,
    };

    use super::{BLOCK_SIZE, Vds, assert_image_pattern, create_image, image_pattern, read_image};
    use crate::util::{dma, error_chain, pattern, run};

    const MIB: u64 = 1 << 20;
    /// How long vds may take to exit after the detach.
    const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The most blocks a READ/WRITE(10) carries.
    const MAX_BLOCKS_10: u64 = 65_535;

    fn opts() -> AttachOptions {
        AttachOptions {
            num_queues: 1,
            queue_size: 128,
            ..AttachOptions::default()
        }
    }

    /// Creates one image per `(size, seed)` in `dir`, named `lun<i>.raw`.
    fn images(dir: &Path, specs: &[(u64, u8)]) -> Vec<PathBuf> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(size, seed))| {
                let p = dir.join(format!("lun{i}.raw"));
                create_image(&p, size, seed);
                p
            })
            .collect()
    }

    fn attach(vds: &Vds, name: &str) -> ScsiController {
        virtio_scsi::attach_vhost_user(name, vds.socket(), &opts())
            .unwrap_or_else(|e| panic!("attach {name}: {}", error_chain(&e)))
    }

    fn bdev(ctrl: &ScsiController, name: &str) -> Bdev {
        ctrl.bdev(name).unwrap_or_else(|| {
            let names: Vec<_> = ctrl.bdevs().iter().map(|b| b.name().to_owned()).collect();
            panic!("no bdev {name}; the controller has {names:?}")
        })
    }

    fn detail(b: &Bdev, key: &str) -> String {
        b.details()
            .into_iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("{} has no detail {key:?}", b.name()))
            .1
    }

    /// Detaches the controller (the caller has dropped its channels), then
    /// waits for vds to exit by itself, which it does when its only frontend
    /// disconnects, with status 0.
    fn detach_and_wait_exit(ctrl: ScsiController, vds: &mut Vds) {
        ctrl.detach();
        drop(ctrl);
        let start = Instant::now();
        let Some(status) = vds.wait_exit(EXIT_TIMEOUT) else {
            panic!(
                "vds is still running {EXIT_TIMEOUT:?} after the detach\n{}",
                vds.log_tail()
            );
        };
        assert!(
            status.success(),
            "vds exited with {status}\n{}",
            vds.log_tail()
        );
        eprintln!("vds exited {:?} after the detach", start.elapsed());
    }

    /// Asserts `got == want`, naming the first differing byte instead of
    /// printing megabytes.
    fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        if got == want {
            return; // memcmp, fast in debug builds too
        }
        if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
            panic!(
                "{what}: differs at byte {i} (block {} of the range): got {:#04x}, want {:#04x}",
                i as u64 / BLOCK_SIZE,
                got[i],
                want[i]
            );
        }
    }

    /// Submits one request and waits for it; asserts success.
    fn run_ok(ch: &mut IoChannel, req: Request, what: &str) -> Completion {
        let cookie = req.cookie;
        let c = run(ch, req);
        assert_eq!(c.status, IoStatus::Success, "{what}");
        assert_eq!(c.cookie, cookie, "{what}: cookie");
        c
    }

    /// Polls both channels until `want[i]` completions came from channel `i`,
    /// at most 10 s.
    fn collect_both(mut chs: [&mut IoChannel; 2], want: [usize; 2]) -> [Vec<Completion>; 2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done: [Vec<Completion>; 2] = [Vec::new(), Vec::new()];
        let mut out: Vec<Completion> = (0..32).map(|_| Completion::default()).collect();
        loop {
            let mut got = 0;
            for (i, ch) in chs.iter_mut().enumerate() {
                let n = ch.poll(&mut out);
                done[i].extend(out[..n].iter_mut().map(std::mem::take));
                got += n;
            }
            if done[0].len() >= want[0] && done[1].len() >= want[1] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after 10 s: {} of {} and {} of {} completions",
                done[0].len(),
                want[0],
                done[1].len(),
                want[1]
            );
            if got == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        assert_eq!(done[0].len(), want[0], "completions of channel 0");
        assert_eq!(done[1].len(), want[1], "completions of channel 1");
        done
    }

    /// One write of test 1: LUN, first block, data.
    struct Case {
        lun: usize,
        block: u64,
        data: Vec<u8>,
    }

    impl Case {
        fn blocks(&self) -> u64 {
            self.data.len() as u64 / BLOCK_SIZE
        }
    }

    #[test]
    fn vds_two_images_are_two_luns_of_target_0_with_verified_io_in_the_images() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let sizes = [64 * MIB, 32 * MIB];
        let imgs = images(dir.path(), &[(sizes[0], 0), (sizes[1], 1)]);
        let blocks = sizes.map(|s| s / BLOCK_SIZE);
        // Odd first blocks; ranges at least 2 blocks apart, so every range
        // has untouched neighbours (but the ones at a LUN's end).
        let spec: [(usize, u64, u64); 12] = [
            (0, 1, 1),
            (0, 7, 3),
            (0, 4_097, 9),
            (0, 10_001, 255),
            (0, 20_001, 2_049),
            // More than one WRITE(10)/READ(10) carries: split in two.
            (0, 30_001, MAX_BLOCKS_10 + 4_466),
            (0, blocks[0] - 1, 1),
            (1, 1, 1),
            (1, 333, 17),
            (1, 5_001, 4_097),
            (1, 40_001, 20_001),
            (1, blocks[1] - 3, 3),
        ];
        let cases: Vec<Case> = spec
            .iter()
            .enumerate()
            .map(|(i, &(lun, block, n))| Case {
                lun,
                block,
                // Another seed than the images': no word of it is in them.
                data: image_pattern(
                    0x80 + i as u8,
                    block * BLOCK_SIZE,
                    (n * BLOCK_SIZE) as usize,
                ),
            })
            .collect();
        // Read-backs cover one neighbour block on each side (where there is one).
        let span = |c: &Case| {
            let first = c.block.saturating_sub(1);
            let end = (c.block + c.blocks() + 1).min(blocks[c.lun]);
            (first, end)
        };
        let mut wbufs: Vec<Option<DmaBuf>> = cases.iter().map(|c| Some(dma(&c.data))).collect();
        let mut rbufs: Vec<Option<DmaBuf>> = cases
            .iter()
            .map(|c| {
                let (first, end) = span(c);
                Some(DmaBuf::alloc(((end - first) * BLOCK_SIZE) as usize).unwrap())
            })
            .collect();

        let mut vds = Vds::start(&[&imgs[0], &imgs[1]]);
        let prepared = t0.elapsed();
        let ctrl = attach(&vds, "vds1");
        let attached = t0.elapsed();
        let names: Vec<_> = ctrl.bdevs().iter().map(|b| b.name().to_owned()).collect();
        assert_eq!(names, ["vds1t0", "vds1t0l1"]);
        let luns = ctrl.luns();
        assert_eq!(luns.len(), 2, "{luns:?}");
        for (i, l) in luns.iter().enumerate() {
            assert_eq!((l.target, l.lun), (0, i as u16), "{l:?}");
            assert_eq!(l.vendor, "rust-vmm", "{l:?}");
            assert_eq!(l.product, "vhost-user-scsi", "{l:?}");
        }
        let cdetails = ctrl.details();
        let cd = |k: &str| {
            cdetails
                .iter()
                .find(|(kk, _)| *kk == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(cd("num_queues"), Some("1"), "{cdetails:?}");
        assert_eq!(cd("max_sectors"), Some("65535"), "{cdetails:?}");
        assert_eq!(cd("vq_size"), Some("128"), "{cdetails:?}");
        let bdevs = [bdev(&ctrl, "vds1t0"), bdev(&ctrl, "vds1t0l1")];
        for (b, n) in bdevs.iter().zip(blocks) {
            let info = b.info();
            assert_eq!(info.driver, "virtio_scsi");
            assert_eq!(b.block_size(), 512, "{}", b.name());
            assert_eq!(b.num_blocks(), n, "{}", b.name());
            assert_eq!(info.num_blocks, n, "{}", b.name());
            assert!(
                !info.read_only && info.flush && info.write_zeroes,
                "{info:?}"
            );
            assert_eq!((info.num_queues, info.queue_size), (1, 128), "{info:?}");
            assert_eq!(
                detail(b, "max_transfer_bytes"),
                (MAX_BLOCKS_10 * 512).to_string()
            );
        }
        // Two channels on this thread: both on the one request queue.
        let mut chs = [
            bdevs[0].open_channel().unwrap(),
            bdevs[1].open_channel().unwrap(),
        ];

        for (i, c) in cases.iter().enumerate() {
            let buf = wbufs[i].take().unwrap();
            let what = format!(
                "write of {} blocks at {} on LUN {}",
                c.blocks(),
                c.block,
                c.lun
            );
            let done = run_ok(
                &mut chs[c.lun],
                Request::write(c.block, buf, i as u64),
                &what,
            );
            wbufs[i] = done.buf;
        }
        for (lun, ch) in chs.iter_mut().enumerate() {
            let done = run_ok(ch, Request::flush(1000 + lun as u64), "flush");
            assert!(done.buf.is_none());
        }
        for (i, c) in cases.iter().enumerate() {
            let (first, end) = span(c);
            let buf = rbufs[i].take().unwrap();
            let what = format!(
                "read-back of {} blocks at {} on LUN {}",
                c.blocks(),
                c.block,
                c.lun
            );
            let done = run_ok(
                &mut chs[c.lun],
                Request::read(first, buf, 2000 + i as u64),
                &what,
            );
            let got = done.buf.unwrap();
            let seed = c.lun as u8;
            let mut want = image_pattern(
                seed,
                first * BLOCK_SIZE,
                ((c.block - first) * BLOCK_SIZE) as usize,
            );
            want.extend_from_slice(&c.data);
            let after = c.block + c.blocks();
            want.extend(image_pattern(
                seed,
                after * BLOCK_SIZE,
                ((end - after) * BLOCK_SIZE) as usize,
            ));
            assert_bytes(&got, &want, &what);
        }
        let io_done = t0.elapsed();

        drop(chs);
        drop(bdevs);
        detach_and_wait_exit(ctrl, &mut vds);
        for c in &cases {
            let img = &imgs[c.lun];
            let seed = c.lun as u8;
            let what = format!(
                "image {} at block {}+{}",
                img.display(),
                c.block,
                c.blocks()
            );
            assert_bytes(
                &read_image(img, c.block * BLOCK_SIZE, c.data.len()),
                &c.data,
                &what,
            );
            // Up to eight blocks on each side that no case wrote.
            let after = c.block + c.blocks();
            let near =
                (c.block.saturating_sub(8)..c.block).chain(after..(after + 8).min(blocks[c.lun]));
            for b in near {
                let written = cases
                    .iter()
                    .any(|o| o.lun == c.lun && (o.block..o.block + o.blocks()).contains(&b));
                if !written {
                    assert_image_pattern(img, seed, b * BLOCK_SIZE, BLOCK_SIZE as usize);
                }
            }
        }
        eprintln!(
            "images and vds ready {prepared:?}, attached {attached:?}, I/O done {io_done:?}, \
             checked {:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn vds_write_zeroes_goes_out_as_write_same_16_and_unmap_changes_nothing() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        const SIZE: u64 = 16 * MIB;
        const SEED: u8 = 3;
        let blocks = SIZE / BLOCK_SIZE;
        let imgs = images(dir.path(), &[(SIZE, SEED)]);
        // (first block, blocks): a range in the middle, and the last blocks.
        let zeroed = [(1_001, 3_001), (blocks - 3, 3)];
        let unmapped = (5_001, 64);
        // Read-backs cover one neighbour block on each side (none after the end).
        let span = |(first, n): (u64, u64)| (first - 1, (first + n + 1).min(blocks));
        let rbufs: Vec<DmaBuf> = zeroed
            .iter()
            .chain([&unmapped])
            .map(|&r| {
                let (from, end) = span(r);
                DmaBuf::alloc(((end - from) * BLOCK_SIZE) as usize).unwrap()
            })
            .collect();

        let mut vds = Vds::start(&[&imgs[0]]);
        let ctrl = attach(&vds, "vds2");
        let b = bdev(&ctrl, "vds2t0");
        let info = b.info().clone();
        assert!(info.write_zeroes, "{info:?}");
        assert_eq!(detail(&b, "write_zeroes_method"), "WRITE SAME(16)");
        let mut ch = b.open_channel().unwrap();

        for (i, &(first, n)) in zeroed.iter().enumerate() {
            run_ok(
                &mut ch,
                Request::write_zeroes(first, n, i as u64),
                &format!("write-zeroes of {n} blocks at {first}"),
            );
        }
        // VPD page B2 claims LBPU, but vds rejects UNMAP, and its REPORT
        // SUPPORTED OPERATION CODES does not list it. The initiator either
        // believes the latter and does not offer unmap (what it does now), or
        // sends UNMAP and reports ILLEGAL REQUEST. Nothing may be unmapped.
        let unmap = Request::unmap(unmapped.0, unmapped.1, 7);
        if info.unmap {
            let c = run(&mut ch, unmap);
            assert_eq!(c.cookie, 7);
            match c.status {
                IoStatus::Failed(IoError::ScsiCheckCondition { sense_key, .. }) => {
                    assert_eq!(sense_key, 5, "ILLEGAL REQUEST expected: {:?}", c.status);
                }
                s => panic!("unmap: {s:?}, not CHECK CONDITION with ILLEGAL REQUEST"),
            }
            eprintln!("unmap offered, and failed with {:?}", c.status);
        } else {
            assert_eq!(detail(&b, "max_unmap_blocks"), "0");
            let r = ch.submit(unmap).expect_err("unmap is not offered");
            assert_eq!(
                r.error,
                RejectReason::Unsupported { op: IoOp::Unmap },
                "{r}"
            );
            assert_eq!(r.request.cookie, 7, "the request is given back");
            assert_eq!(ch.pending(), 0, "nothing was sent");
            eprintln!("unmap not offered");
        }
        run_ok(&mut ch, Request::flush(8), "flush");

        let reads = zeroed.iter().copied().chain([unmapped]);
        for (i, ((first, n), buf)) in reads.zip(rbufs).enumerate() {
            let (from, end) = span((first, n));
            let what = format!("read-back of {n} blocks at {first}");
            let got = run_ok(&mut ch, Request::read(from, buf, 10 + i as u64), &what)
                .buf
                .unwrap();
            let want: Vec<u8> = if (first, n) == unmapped {
                image_pattern(
                    SEED,
                    from * BLOCK_SIZE,
                    ((end - from) * BLOCK_SIZE) as usize,
                )
            } else {
                let mut w = image_pattern(SEED, from * BLOCK_SIZE, BLOCK_SIZE as usize);
                w.resize((w.len() as u64 + n * BLOCK_SIZE) as usize, 0);
                w.extend(image_pattern(
                    SEED,
                    (first + n) * BLOCK_SIZE,
                    ((end - first - n) * BLOCK_SIZE) as usize,
                ));
                w
            };
            assert_bytes(&got, &want, &what);
        }

        drop(ch);
        drop(b);
        detach_and_wait_exit(ctrl, &mut vds);
        let img = &imgs[0];
        for &(first, n) in &zeroed {
            let got = read_image(img, first * BLOCK_SIZE, (n * BLOCK_SIZE) as usize);
            if let Some(i) = got.iter().position(|&x| x != 0) {
                panic!(
                    "image byte {} is {:#04x}, not zero",
                    first * BLOCK_SIZE + i as u64,
                    got[i]
                );
            }
            assert_image_pattern(img, SEED, (first - 8) * BLOCK_SIZE, 8 * BLOCK_SIZE as usize);
            let after = first + n;
            let end = (after + 8).min(blocks);
            assert_image_pattern(
                img,
                SEED,
                after * BLOCK_SIZE,
                ((end - after) * BLOCK_SIZE) as usize,
            );
        }
        // The unmap range and its surroundings are untouched.
        assert_image_pattern(
            img,
            SEED,
            (unmapped.0 - 8) * BLOCK_SIZE,
            ((unmapped.1 + 16) * BLOCK_SIZE) as usize,
        );
        eprintln!("done in {:?}", t0.elapsed());
    }

    #[test]
    fn vds_lun_reset_times_out_on_the_silent_control_queue_and_io_goes_on() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        const SIZE: u64 = 8 * MIB;
        const SEED: u8 = 4;
        const TIMEOUT: Duration = Duration::from_millis(300);
        const N: u64 = 8;
        const LEN: usize = 16 << 10;
        let imgs = images(dir.path(), &[(SIZE, SEED)]);
        // Request i writes LEN bytes at block 3 + 64 * i.
        let at = |i: u64| 3 + 64 * i;
        let data: Vec<Vec<u8>> = (0..N).map(|i| pattern(300 + i, LEN)).collect();
        let wbufs: Vec<DmaBuf> = data.iter().map(|d| dma(d)).collect();
        let mut rbuf = Some(DmaBuf::alloc(LEN).unwrap());

        let mut vds = Vds::start(&[&imgs[0]]);
        let ctrl = attach(&vds, "vds3");
        let b = bdev(&ctrl, "vds3t0");
        let mut ch = b.open_channel().unwrap();
        let mut wbufs = wbufs.into_iter();
        // Before the reset: one write, and the rest in flight during it.
        run_ok(
            &mut ch,
            Request::write(at(0), wbufs.next().unwrap(), 0),
            "write 0",
        );
        for (i, buf) in (1..).zip(wbufs) {
            ch.submit(Request::write(at(i), buf, i)).unwrap();
        }
        let mut out: Vec<Completion> = (0..8).map(|_| Completion::default()).collect();
        let mut done = ch.poll(&mut out); // publishes them

        for attempt in 0..2 {
            let start = Instant::now();
            let e = b
                .reset(TIMEOUT)
                .expect_err("vds never answers the control queue");
            let took = start.elapsed();
            match &e {
                Error::Reset { name, why } => {
                    assert_eq!(name, "vds3t0");
                    assert!(why.contains("no answer"), "{why}");
                }
                e => panic!("reset {attempt}: not Error::Reset: {}", error_chain(e)),
            }
            assert!(took >= TIMEOUT, "reset {attempt} gave up after {took:?}");
            assert!(
                took < Duration::from_secs(5),
                "reset {attempt} took {took:?}"
            );
            eprintln!("reset {attempt} failed after {took:?}: {e}");
        }
        assert!(!b.is_removed() && !ch.is_removed());

        // The writes in flight during the resets complete.
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &out[..done] {
            assert_eq!(c.status, IoStatus::Success, "write {}", c.cookie);
        }
        while done < N as usize - 1 {
            assert!(Instant::now() < deadline, "{done} of {} writes done", N - 1);
            let n = ch.poll(&mut out);
            for c in &out[..n] {
                assert_eq!(c.status, IoStatus::Success, "write {}", c.cookie);
            }
            done += n;
            if n == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        // New I/O after the resets.
        for i in 0..N {
            let buf = rbuf.take().unwrap();
            let got = run_ok(&mut ch, Request::read(at(i), buf, 100 + i), "read")
                .buf
                .unwrap();
            assert_bytes(&got, &data[i as usize], &format!("read-back of write {i}"));
            rbuf = Some(got);
        }
        let mut buf = rbuf.take().unwrap();
        buf.copy_from_slice(&pattern(399, LEN));
        run_ok(
            &mut ch,
            Request::write(at(N), buf, 200),
            "write after the resets",
        );
        run_ok(&mut ch, Request::flush(201), "flush after the resets");

        drop(ch);
        drop(b);
        detach_and_wait_exit(ctrl, &mut vds);
        for i in 0..=N {
            let want = if i < N {
                data[i as usize].clone()
            } else {
                pattern(399, LEN)
            };
            let got = read_image(&imgs[0], at(i) * BLOCK_SIZE, LEN);
            assert_bytes(&got, &want, &format!("image at write {i}"));
            let after = at(i) * BLOCK_SIZE + LEN as u64;
            assert_image_pattern(&imgs[0], SEED, after, BLOCK_SIZE as usize);
        }
        assert_image_pattern(&imgs[0], SEED, 0, (3 * BLOCK_SIZE) as usize);
        eprintln!("done in {:?}", t0.elapsed());
    }

    #[test]
    fn vds_two_luns_share_the_one_request_queue_from_one_thread() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        const SIZE: u64 = 8 * MIB;
        const SEEDS: [u8; 2] = [5, 6];
        // Per LUN: more requests than the ring has descriptors.
        const N: u64 = 96;
        let imgs = images(dir.path(), &[(SIZE, SEEDS[0]), (SIZE, SEEDS[1])]);
        // Request i of either LUN: 1 to 64 blocks at block 1 + 128 * i; the
        // same places on both LUNs, different data.
        let at = |i: u64| 1 + 128 * i;
        let len = |i: u64| ((i * 37) % 64 + 1) * BLOCK_SIZE;
        let data: [Vec<Vec<u8>>; 2] = [0u64, 1].map(|lun| {
            (0..N)
                .map(|i| pattern(1000 * (lun + 1) + i, len(i) as usize))
                .collect()
        });
        let wbufs: [Vec<DmaBuf>; 2] = [0, 1].map(|lun| data[lun].iter().map(|d| dma(d)).collect());
        let rbufs: [Vec<DmaBuf>; 2] = [0, 1].map(|_| {
            (0..N)
                .map(|i| DmaBuf::alloc(len(i) as usize).unwrap())
                .collect()
        });
        let cookie = |lun: usize, i: u64| ((lun as u64) << 32) | i;

        let mut vds = Vds::start(&[&imgs[0], &imgs[1]]);
        let ctrl = attach(&vds, "vds4");
        let bdevs = [bdev(&ctrl, "vds4t0"), bdev(&ctrl, "vds4t0l1")];
        let [mut ch0, mut ch1] = [0, 1].map(|l| bdevs[l].open_channel().unwrap());
        // Both channels took this thread's queue, the only one: another thread
        // gets none.
        let other = bdevs[1].clone();
        let e = std::thread::spawn(move || other.open_channel().map(drop))
            .join()
            .unwrap()
            .expect_err("the one request queue belongs to this thread");
        assert!(matches!(e, Error::NoFreeQueue { queues: 1, .. }), "{e}");

        // Writes: all 2 * N submitted alternately before any poll; more than
        // the ring holds, so some wait in the channels (staged or in their FIFOs).
        let mut w = wbufs.map(Vec::into_iter);
        for i in 0..N {
            ch0.submit(Request::write(at(i), w[0].next().unwrap(), cookie(0, i)))
                .unwrap();
            ch1.submit(Request::write(at(i), w[1].next().unwrap(), cookie(1, i)))
                .unwrap();
        }
        drop(w);
        assert_eq!(ch0.pending() + ch1.pending(), 2 * N as usize);
        let writes = collect_both([&mut ch0, &mut ch1], [N as usize; 2]);
        for (lun, done) in writes.iter().enumerate() {
            let mut seen = vec![false; N as usize];
            for c in done {
                assert_eq!(
                    c.status,
                    IoStatus::Success,
                    "LUN {lun} write {:#x}",
                    c.cookie
                );
                assert_eq!(
                    c.cookie >> 32,
                    lun as u64,
                    "channel {lun} got {:#x}",
                    c.cookie
                );
                let i = (c.cookie & 0xffff_ffff) as usize;
                assert!(
                    !std::mem::replace(&mut seen[i], true),
                    "cookie {:#x} twice",
                    c.cookie
                );
            }
        }

        // Reads: submitted alternately, polling both channels every 8
        // submissions, so completions arrive while the other LUN submits.
        let mut r = rbufs.map(Vec::into_iter);
        let mut done: [Vec<Completion>; 2] = [Vec::new(), Vec::new()];
        let mut out: Vec<Completion> = (0..32).map(|_| Completion::default()).collect();
        for i in 0..N {
            ch1.submit(Request::read(at(i), r[1].next().unwrap(), cookie(1, i)))
                .unwrap();
            ch0.submit(Request::read(at(i), r[0].next().unwrap(), cookie(0, i)))
                .unwrap();
            if i % 8 == 7 {
                for (lun, ch) in [&mut ch0, &mut ch1].into_iter().enumerate() {
                    let n = ch.poll(&mut out);
                    done[lun].extend(out[..n].iter_mut().map(std::mem::take));
                }
            }
        }
        drop(r);
        let left = [N as usize - done[0].len(), N as usize - done[1].len()];
        let rest = collect_both([&mut ch0, &mut ch1], left);
        for (lun, rest) in rest.into_iter().enumerate() {
            done[lun].extend(rest);
        }
        for (lun, done) in done.iter_mut().enumerate() {
            assert_eq!(done.len(), N as usize);
            done.sort_by_key(|c| c.cookie);
            for (i, c) in done.iter_mut().enumerate() {
                assert_eq!(c.cookie, cookie(lun, i as u64), "LUN {lun}: cookies");
                assert_eq!(c.status, IoStatus::Success, "LUN {lun} read {i}");
                let got = c.buf.take().unwrap();
                assert_bytes(&got, &data[lun][i], &format!("LUN {lun} read {i}"));
            }
        }

        drop((ch0, ch1));
        drop(bdevs);
        detach_and_wait_exit(ctrl, &mut vds);
        for (lun, img) in imgs.iter().enumerate() {
            for i in 0..N {
                let off = at(i) * BLOCK_SIZE;
                let got = read_image(img, off, len(i) as usize);
                assert_bytes(
                    &got,
                    &data[lun][i as usize],
                    &format!("image of LUN {lun} at write {i}"),
                );
                // Block before and block after are untouched.
                assert_image_pattern(img, SEEDS[lun], off - BLOCK_SIZE, BLOCK_SIZE as usize);
                assert_image_pattern(img, SEEDS[lun], off + len(i), BLOCK_SIZE as usize);
            }
        }
        eprintln!("done in {:?}", t0.elapsed());
    }
}
