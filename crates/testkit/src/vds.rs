//! Test helper: run rust-vmm's `vhost-device-scsi` 0.1.0 (vds) as a
//! third-party vhost-user-scsi target, and make and check its raw images.
//!
//! Like [`crate::qsd`], it depends only on `std`, `libc` and `tempfile`. Its own
//! tests, and those of vbdev's virtio-scsi initiator against it, are in vbdev-bdev's
//! integration tests (`tests/it/vds.rs`).
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
