//! Helpers for the CLI tests: run the built `vbdev` binary with a deadline and
//! capture its exit code, stdout, stderr and wall time; the `--json` schemas of
//! `output.rs`, mirrored with `deny_unknown_fields`; deterministic test data.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The `vbdev` binary under test.
pub const VBDEV: &str = env!("CARGO_BIN_EXE_vbdev");

/// How long one `vbdev` run may take before the test kills it and fails.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// One finished `vbdev` run.
#[derive(Debug)]
pub struct Run {
    /// The arguments (without the program), for failure messages.
    pub args: Vec<String>,
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Run {
    /// Panics with the whole run unless it exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "vbdev {} exited with {:?}, expected {code}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Exit 0 and nothing on stderr.
    #[track_caller]
    pub fn expect_ok(&self) -> &Self {
        self.expect_code(0);
        assert!(
            self.stderr.is_empty(),
            "vbdev {} succeeded but wrote to stderr:\n{}",
            self.args.join(" "),
            self.stderr
        );
        self
    }

    /// Exit `code`, nothing on stdout, and a `vbdev: ...` or clap `error: ...`
    /// message on stderr that contains every one of `needles`.
    #[track_caller]
    pub fn expect_failure(&self, code: i32, needles: &[&str]) -> &Self {
        self.expect_code(code);
        assert!(
            self.stdout.is_empty(),
            "vbdev {} failed but wrote to stdout:\n{}",
            self.args.join(" "),
            self.stdout
        );
        assert!(
            self.stderr.contains("vbdev: ") || self.stderr.contains("error: "),
            "vbdev {}: stderr has no error message:\n{}",
            self.args.join(" "),
            self.stderr
        );
        self.expect_stderr(needles)
    }

    /// stderr contains every one of `needles`.
    #[track_caller]
    pub fn expect_stderr(&self, needles: &[&str]) -> &Self {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "vbdev {}: stderr does not contain {n:?}:\n{}",
                self.args.join(" "),
                self.stderr
            );
        }
        self
    }

    /// stdout is exactly one line holding one JSON object of type `T`.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        let line = self.stdout.strip_suffix('\n').unwrap_or_else(|| {
            panic!(
                "vbdev {}: --json output does not end with a newline: {:?}",
                self.args.join(" "),
                self.stdout
            )
        });
        assert!(
            !line.contains('\n'),
            "vbdev {}: --json output is more than one line:\n{}",
            self.args.join(" "),
            self.stdout
        );
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "vbdev {}: --json output is not one object: {line}",
            self.args.join(" ")
        );
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "vbdev {}: --json output does not match the schema ({e}): {line}",
                self.args.join(" ")
            )
        })
    }

    /// [`Run::json`] as an [`OpJson`], whose I/O time must fit in the run's wall time.
    #[track_caller]
    pub fn op(&self) -> OpJson {
        let op: OpJson = self.json();
        assert!(
            u128::from(op.elapsed_us) <= self.elapsed.as_micros(),
            "elapsed_us {} exceeds the run's wall time {:?}",
            op.elapsed_us,
            self.elapsed
        );
        op
    }

    /// The value of the human `key:    value` line of stdout.
    #[track_caller]
    pub fn field(&self, key: &str) -> &str {
        let prefix = format!("{key}:");
        let mut values = self
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::trim));
        let value = values.next().unwrap_or_else(|| {
            panic!(
                "vbdev {}: no {prefix:?} line in stdout:\n{}",
                self.args.join(" "),
                self.stdout
            )
        });
        assert!(
            values.next().is_none(),
            "vbdev {}: more than one {prefix:?} line in stdout:\n{}",
            self.args.join(" "),
            self.stdout
        );
        value
    }
}

/// Runs `vbdev args...` to completion (killed and failed after [`RUN_DEADLINE`]).
pub fn vbdev<S: AsRef<str>>(args: &[S]) -> Run {
    spawn_run(args, false)
}

/// Like [`vbdev`], but closes the read end of vbdev's stdout pipe right after
/// the spawn, so that its writes fail with `EPIPE` (`Run::stdout` is empty).
pub fn vbdev_stdout_closed<S: AsRef<str>>(args: &[S]) -> Run {
    spawn_run(args, true)
}

fn spawn_run<S: AsRef<str>>(args: &[S], close_stdout: bool) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let start = Instant::now();
    let mut child = Command::new(VBDEV)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {VBDEV}: {e}"));
    let pid = child.id();
    let mut out = child.stdout.take().filter(|_| !close_stdout);
    let mut err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            err.read_to_end(&mut buf).map(|_| buf)
        });
        let mut stdout = Vec::new();
        let r = match out.as_mut() {
            Some(out) => out.read_to_end(&mut stdout),
            None => Ok(0),
        };
        let stderr = stderr.join().expect("stderr reader panicked");
        let status = child.wait();
        // The receiver is gone only if the test already failed.
        let _ = tx.send((status, r.map(|_| stdout), stderr, start.elapsed()));
    });
    let (status, stdout, stderr, elapsed) = match rx.recv_timeout(RUN_DEADLINE) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: kill(2) takes plain integers; `pid` is our unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!(
                "vbdev {} did not exit within {RUN_DEADLINE:?}",
                args.join(" ")
            );
        }
    };
    let status: ExitStatus = status.expect("wait for vbdev");
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout.expect("read vbdev stdout"))
            .expect("vbdev stdout is not UTF-8"),
        stderr: String::from_utf8_lossy(&stderr.expect("read vbdev stderr")).into_owned(),
        elapsed,
        args,
    }
}

/// Runs `vbdev io --vhost-user SOCKET args...`.
pub fn io<S: AsRef<str>>(socket: &Path, args: &[S]) -> Run {
    let mut all = vec![
        "io".to_owned(),
        "--vhost-user".to_owned(),
        path(socket).to_owned(),
    ];
    all.extend(args.iter().map(|a| a.as_ref().to_owned()));
    vbdev(&all)
}

/// A running `vbdev target`, killed on drop.
pub struct Target {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Target {
    /// Starts `vbdev target --socket <tmp> <args>` and waits for its "serving" line on
    /// stderr, printed once the socket listens.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vbdev-tgt")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("t.sock");
        let mut child = Command::new(VBDEV)
            .arg("target")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vbdev target");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("serving"), "target did not start: {line:?}");
        assert!(socket.exists());
        // Keep draining stderr so the target never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `sig` and waits (bounded) for the exit code.
    pub fn signal(&mut self, sig: i32) -> i32 {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let child = &mut self.child;
        std::thread::scope(|s| {
            s.spawn(move || tx.send(child.wait()));
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(st) => st.unwrap().code().expect("exited, not killed"),
                Err(_) => {
                    // SAFETY: as above; unblocks the waiting thread.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    panic!("target did not stop on signal {sig}");
                }
            }
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// `len` pseudo-random bytes from `seed` (xorshift64*), the same on every run.
pub fn det_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Index of the first byte of `data` that is not `byte`, if any.
pub fn first_not(data: &[u8], byte: u8) -> Option<usize> {
    data.iter().position(|&b| b != byte)
}

/// `vbdev io info --json` (`output::InfoJson`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoJson {
    pub name: String,
    pub product_name: String,
    pub driver: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub size_bytes: u64,
    pub read_only: bool,
    pub flush: bool,
    pub unmap: bool,
    pub write_zeroes: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    pub serial: Option<String>,
    pub details: BTreeMap<String, String>,
}

impl InfoJson {
    /// The names in `details.feature_names`.
    pub fn feature_names(&self) -> Vec<&str> {
        self.details
            .get("feature_names")
            .unwrap_or_else(|| panic!("no feature_names in details: {:?}", self.details))
            .split(',')
            .collect()
    }
}

/// `vbdev io --dev-type scsi info --json` (`output::ScsiInfoJson`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScsiInfoJson {
    pub controller: ScsiControllerJson,
    pub bdevs: Vec<ScsiBdevJson>,
}

/// `output::ScsiControllerJson`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScsiControllerJson {
    pub name: String,
    pub driver: String,
    pub num_queues: u16,
    pub queue_size: u16,
    pub details: BTreeMap<String, String>,
}

/// `output::ScsiBdevJson`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScsiBdevJson {
    pub name: String,
    pub target: u8,
    pub lun: u16,
    pub vendor: String,
    pub product: String,
    pub product_name: String,
    pub driver: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub size_bytes: u64,
    pub read_only: bool,
    pub flush: bool,
    pub unmap: bool,
    pub write_zeroes: bool,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub details: BTreeMap<String, String>,
}

impl ScsiInfoJson {
    /// The bdev names, in output order.
    pub fn names(&self) -> Vec<&str> {
        self.bdevs.iter().map(|b| b.name.as_str()).collect()
    }
}

/// `vbdev io read|write|flush|discard|write-zeroes --json` (`output::OpJson`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpJson {
    pub op: String,
    pub offset: u64,
    pub length: u64,
    pub status: String,
    pub elapsed_us: u64,
    /// Absent unless a read had `--pattern`.
    #[serde(default)]
    pub pattern_ok: Option<bool>,
}

impl OpJson {
    /// Asserts a successful `op` on `offset`/`length`.
    #[track_caller]
    pub fn expect(&self, op: &str, offset: u64, length: u64) {
        assert_eq!(
            (
                self.op.as_str(),
                self.offset,
                self.length,
                self.status.as_str()
            ),
            (op, offset, length, "ok"),
            "{self:?}"
        );
    }
}
