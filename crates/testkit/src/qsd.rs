//! Test helper: run `qemu-storage-daemon` (qsd) as a vhost-user-blk target.
//!
//! It depends only on `std`, `libc` and `tempfile`.
//!
//! Every [`Qsd`] lives in its own directory under `/tmp` (short enough for
//! `sun_path`), holding the raw image, the vhost-user socket, the QMP socket,
//! the pidfile and qsd's start-up log, so tests can run in parallel.
//!
//! qsd is started with `--daemonize --pidfile`: the command returns only once
//! the export is set up and the socket is listening, which is the readiness
//! signal. If qsd cannot be started the helper panics with qsd's stderr; a
//! test that needs qsd fails loudly instead of being skipped.
//!
//! The binary is `qemu-storage-daemon` from `PATH`, unless the environment
//! variable `VBDEV_QSD` names another one.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`Qsd::stop`] and [`Qsd::kill`] wait for the process to go away.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// Interval of the fallback poll loop, used only when `pidfd_open` is not available.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The storage behind the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A sparse raw image file of `size` bytes (created with `File::set_len`).
    /// Discards punch holes in it (`discard=unmap` on both nodes).
    File { size: u64 },
    /// `null-co` of `size` bytes: reads return zeros, writes are dropped.
    Null { size: u64 },
}

impl Backend {
    fn size(&self) -> u64 {
        match *self {
            Backend::File { size } | Backend::Null { size } => size,
        }
    }
}

/// Builder for a [`Qsd`].
#[derive(Debug, Clone)]
pub struct QsdBuilder {
    backend: Backend,
    num_queues: u16,
    block_size: u32,
    writable: bool,
    prefill: Option<u8>,
}

impl QsdBuilder {
    /// Defaults: 1 queue, 512-byte logical blocks, writable, no prefill.
    pub fn new(backend: Backend) -> Self {
        QsdBuilder {
            backend,
            num_queues: 1,
            block_size: 512,
            writable: true,
            prefill: None,
        }
    }

    /// Number of virtqueues the export offers (`num-queues`).
    pub fn num_queues(mut self, n: u16) -> Self {
        self.num_queues = n;
        self
    }

    /// Logical block size of the export (`logical-block-size`).
    pub fn block_size(mut self, n: u32) -> Self {
        self.block_size = n;
        self
    }

    /// Export read-only (`writable=off`; the device then offers `VIRTIO_BLK_F_RO`).
    pub fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    /// Fill the whole image with `byte` before starting qsd (File backend only;
    /// panics at [`QsdBuilder::start`] for the Null backend).
    pub fn prefill(mut self, byte: u8) -> Self {
        self.prefill = Some(byte);
        self
    }

    /// Create the directory and image, start qsd and wait until it listens.
    ///
    /// Panics (with qsd's stderr) if qsd does not start.
    pub fn start(self) -> Qsd {
        let dir = tempfile::Builder::new()
            .prefix("vbdev-qsd-")
            .tempdir_in("/tmp")
            .expect("qsd helper: cannot create a temporary directory under /tmp");
        let socket = dir.path().join("vblk.sock");
        let qmp = dir.path().join("qmp.sock");
        let pidfile = dir.path().join("qsd.pid");
        let log = dir.path().join("qsd.log");

        let image = match self.backend {
            Backend::File { size } => {
                let path = dir.path().join("disk.raw");
                create_image(&path, size, self.prefill);
                Some(path)
            }
            Backend::Null { .. } => {
                assert!(
                    self.prefill.is_none(),
                    "qsd helper: prefill() needs the File backend"
                );
                None
            }
        };

        let args = self.args(image.as_deref(), &socket, &qmp, &pidfile);

        let bin = std::env::var_os("VBDEV_QSD").unwrap_or_else(|| "qemu-storage-daemon".into());
        // stdout/stderr go to a file, not a pipe: the daemonized child inherits
        // them, and a pipe could stay open after the parent has exited.
        let log_file = File::create(&log).expect("qsd helper: cannot create qsd.log");
        let log_file2 = log_file
            .try_clone()
            .expect("qsd helper: cannot duplicate the qsd.log handle");
        let status = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_file2))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "qsd helper: cannot run {bin:?} ({e}); is qemu-storage-daemon installed \
                     (Debian package qemu-utils)?"
                )
            });
        if !status.success() {
            let output = fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "qsd helper: qemu-storage-daemon failed to start ({status})\n\
                 command: {} {}\nstderr:\n{output}",
                bin.to_string_lossy(),
                args.join(" "),
            );
        }

        let pid_text = fs::read_to_string(&pidfile).unwrap_or_else(|e| {
            panic!(
                "qsd helper: qemu-storage-daemon started but its pidfile {} is unreadable: {e}",
                pidfile.display()
            )
        });
        let pid: i32 = pid_text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("qsd helper: bad pidfile content {pid_text:?}: {e}"));
        assert!(pid > 0, "qsd helper: bad pid {pid} in pidfile");

        let qsd = Qsd {
            dir,
            socket,
            qmp,
            image,
            pid,
            size: self.backend.size(),
            running: true,
        };
        assert!(
            qsd.socket.exists(),
            "qsd helper: qemu-storage-daemon (pid {pid}) started but {} does not exist",
            qsd.socket.display()
        );
        qsd
    }

    /// The qsd command line (without the program name).
    fn args(&self, image: Option<&Path>, socket: &Path, qmp: &Path, pidfile: &Path) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let node = match (self.backend, image) {
            (Backend::File { .. }, Some(path)) => {
                args.push("--blockdev".into());
                args.push(format!(
                    "driver=file,node-name=file0,filename={},discard=unmap",
                    opt_path(path)
                ));
                args.push("--blockdev".into());
                args.push("driver=raw,node-name=disk0,file=file0,discard=unmap".into());
                "disk0"
            }
            (Backend::Null { size }, _) => {
                args.push("--blockdev".into());
                args.push(format!(
                    "driver=null-co,node-name=null0,size={size},read-zeroes=on"
                ));
                "null0"
            }
            (Backend::File { .. }, None) => unreachable!("File backend always has an image"),
        };
        args.push("--export".into());
        args.push(format!(
            "type=vhost-user-blk,id=exp0,node-name={node},addr.type=unix,addr.path={},\
             writable={},num-queues={},logical-block-size={}",
            opt_path(socket),
            if self.writable { "on" } else { "off" },
            self.num_queues,
            self.block_size,
        ));
        args.push("--chardev".into());
        args.push(format!(
            "socket,id=qmp0,path={},server=on,wait=off",
            opt_path(qmp)
        ));
        args.push("--monitor".into());
        args.push("chardev=qmp0".into());
        args.push("--pidfile".into());
        args.push(path_str(pidfile).to_owned());
        args.push("--daemonize".into());
        args
    }
}

/// A running qemu-storage-daemon with one vhost-user-blk export.
///
/// Dropping it kills the daemon (if still running) and removes its directory.
#[derive(Debug)]
pub struct Qsd {
    // `Drop::drop` kills the process before this directory is removed.
    dir: tempfile::TempDir,
    socket: PathBuf,
    qmp: PathBuf,
    image: Option<PathBuf>,
    pid: i32,
    size: u64,
    running: bool,
}

impl Qsd {
    /// Path of the vhost-user-blk socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Path of the QMP monitor socket (e.g. for `block-export-del`).
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp
    }

    /// Path of the raw image file (File backend only).
    pub fn image(&self) -> Option<&Path> {
        self.image.as_deref()
    }

    /// Size of the backend in bytes, as given to the builder.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The daemon's process id (from the pidfile).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether neither [`Qsd::stop`] nor [`Qsd::kill`] has been called yet.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// SIGKILL the daemon and wait until the process is gone (10 s deadline,
    /// then panic). The socket file is left behind. No-op if already stopped.
    pub fn kill(&mut self) {
        if !self.running {
            return;
        }
        self.signal(libc::SIGKILL);
        self.running = false;
        assert!(
            wait_gone(self.pid, EXIT_DEADLINE),
            "qsd helper: qemu-storage-daemon (pid {}) still alive {:?} after SIGKILL",
            self.pid,
            EXIT_DEADLINE
        );
    }

    /// Clean shutdown: SIGTERM, then wait until the process is gone (10 s
    /// deadline, then panic). Afterwards the image file is safe to read.
    /// No-op if already stopped.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.signal(libc::SIGTERM);
        self.running = false;
        assert!(
            wait_gone(self.pid, EXIT_DEADLINE),
            "qsd helper: qemu-storage-daemon (pid {}) still alive {:?} after SIGTERM",
            self.pid,
            EXIT_DEADLINE
        );
    }

    /// Read `len` bytes at `offset` of the raw image with `std::fs`.
    ///
    /// Panics for the Null backend or if the range is beyond the image.
    /// Call [`Qsd::stop`] first if the content must be final.
    pub fn read_image(&self, offset: u64, len: usize) -> Vec<u8> {
        let path = self
            .image
            .as_ref()
            .expect("qsd helper: read_image() needs the File backend");
        let file = File::open(path)
            .unwrap_or_else(|e| panic!("qsd helper: cannot open {}: {e}", path.display()));
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).unwrap_or_else(|e| {
            panic!(
                "qsd helper: cannot read {len} bytes at offset {offset} of {}: {e}",
                path.display()
            )
        });
        buf
    }

    /// Directory holding the image, sockets, pidfile and `qsd.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::kill(self.pid, sig) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // ESRCH: it is already gone (e.g. it crashed); anything else is a bug.
            assert!(
                err.raw_os_error() == Some(libc::ESRCH),
                "qsd helper: kill({}, {sig}) failed: {err}",
                self.pid
            );
        }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            // Never panic in drop (we may already be unwinding); just give the
            // process a chance to go away before its directory is removed.
            let _ = wait_gone(self.pid, EXIT_DEADLINE);
        }
        // `self.dir` (TempDir) removes the directory when it is dropped.
    }
}

fn create_image(path: &Path, size: u64, prefill: Option<u8>) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap_or_else(|e| panic!("qsd helper: cannot create {}: {e}", path.display()));
    if let Some(byte) = prefill {
        let chunk = vec![byte; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left).map_or(chunk.len(), |l| l.min(chunk.len()));
            file.write_all(&chunk[..n])
                .unwrap_or_else(|e| panic!("qsd helper: cannot fill {}: {e}", path.display()));
            left -= n as u64;
        }
    }
    // Sparse when not prefilled; also fixes the exact size in either case.
    file.set_len(size)
        .unwrap_or_else(|e| panic!("qsd helper: cannot size {}: {e}", path.display()));
    file.sync_all()
        .unwrap_or_else(|e| panic!("qsd helper: cannot sync {}: {e}", path.display()));
}

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("qsd helper: non-UTF-8 path {}", path.display()))
}

/// A path as a value inside a QEMU `key=value,...` option string: commas are
/// escaped by doubling them.
fn opt_path(path: &Path) -> String {
    path_str(path).replace(',', ",,")
}

/// Whether the process `pid` is gone: no such process, or a zombie (it has
/// exited; its new parent, not us, has to reap it).
fn is_gone(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ')'.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        // Vanished between the two checks.
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Wait until process `pid` is gone, at most `deadline`. Returns whether it is.
///
/// The daemonized qsd is not our child, so `waitpid()` is not possible. A pidfd
/// becomes readable when the process exits; if `pidfd_open(2)` is not available,
/// fall back to polling [`is_gone`].
fn wait_gone(pid: i32, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        let fd = libc::c_int::try_from(fd).expect("pidfd_open returned a huge fd");
        let gone = loop {
            if is_gone(pid) {
                break true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `pfd` is a valid pollfd and we pass a count of 1.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, ms.max(1)) };
            if rc > 0 {
                // Readable: the process has exited (it may still be a zombie).
                break true;
            }
            // rc == 0: timeout (checked at the top); rc < 0: EINTR, retry.
        };
        // SAFETY: `fd` is the pidfd we opened above and nothing else owns it.
        unsafe { libc::close(fd) };
        return gone;
    }
    if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return true;
    }
    loop {
        if is_gone(pid) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
