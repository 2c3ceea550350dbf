//! `vbdev serve` driven by SPDK's own JSON-RPC client (`spdk-rpc` from PyPI `spdk`,
//! installed by `scripts/test.sh` and found through `VBDEV_SPDK_RPC`), against
//! qemu-storage-daemon and vbdev's own scsi target.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::qsd::{Backend, QsdBuilder};
use crate::scsi_io::four_luns;
use crate::util::{Target, VBDEV, io, path, vbdev};

const MIB: u64 = 1 << 20;

/// A running `vbdev serve` with its RPC socket and vhost directory in a temp dir.
struct Serve {
    child: Child,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vbdev-serve")
            .tempdir_in("/tmp")
            .unwrap();
        Self::start_in(dir, extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let sock = dir.path().join("rpc.sock");
        let mut child = Command::new(VBDEV)
            .args(["serve", "-r", path(&sock), "-S", path(dir.path())])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vbdev serve");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(
            line.contains("JSON-RPC on"),
            "serve did not start: {line:?}"
        );
        assert!(sock.exists());
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, dir }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("rpc.sock")
    }

    /// `spdk-rpc -s SOCK args...`: (exit code, stdout, stderr).
    fn spdk(&self, args: &[&str]) -> (i32, String, String) {
        spdk_rpc(&self.sock(), args)
    }

    /// `spdk-rpc` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.spdk(args);
        assert_eq!(code, 0, "spdk-rpc {args:?} failed:\n{out}\n{err}");
        out
    }

    /// `spdk-rpc` that must succeed, its stdout as JSON.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("spdk-rpc {args:?}: {e}: {out}"))
    }

    /// One raw request on a fresh connection; the parsed answer.
    fn raw(&self, bytes: &[u8]) -> Value {
        let mut s = UnixStream::connect(self.sock()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(bytes).unwrap();
        let mut de = serde_json::Deserializer::from_reader(&mut s).into_iter::<Value>();
        de.next().expect("an answer").expect("JSON answer")
    }

    /// Sends `sig`, waits (bounded) for the exit code.
    fn signal(&mut self, sig: i32) -> i32 {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().expect("exited, not killed");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not stop on signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `spdk-rpc` command (never skipped: a missing client fails the test).
fn spdk_rpc_bin() -> String {
    std::env::var("VBDEV_SPDK_RPC").unwrap_or_else(|_| {
        panic!(
            "VBDEV_SPDK_RPC is not set: run scripts/test.sh, which installs SPDK's RPC \
             client (pip install spdk) and sets it"
        )
    })
}

fn spdk_rpc(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(spdk_rpc_bin())
        .args(["-s", path(sock), "-t", "30"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run spdk-rpc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `spdk-rpc` args attaching `sock` over vhost-user as `name` (`extra`: `--vq-count` ...).
fn attach<'a>(sock: &'a str, dev_type: &'a str, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "bdev_virtio_attach_controller",
        "-t",
        "user",
        "-a",
        sock,
        "-d",
        dev_type,
    ];
    v.extend_from_slice(extra);
    v.push(name);
    v
}

fn names(bdevs: &Value) -> Vec<String> {
    let mut v: Vec<String> = bdevs
        .as_array()
        .expect("an array of bdevs")
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// Our scsi target, 2 targets x 2 LUNs, with 2 request queues (for `--vq-count 2`).
fn scsi_target() -> Target {
    four_luns(&["--queues", "2"])
}

#[test]
fn spdk_client_attaches_qsd_blk_and_scsi_luns_lists_and_detaches() {
    let qsd = QsdBuilder::new(Backend::Null { size: 64 * MIB })
        .num_queues(2)
        .start();
    let scsi = scsi_target();
    let mut s = Serve::start(&[]);
    let out = s.ok(&attach(
        path(qsd.socket()),
        "blk",
        "VirtioBlk0",
        &["--vq-count", "2"],
    ));
    assert_eq!(out.trim(), "VirtioBlk0");
    let out = s.ok(&attach(path(scsi.socket()), "scsi", "VirtioScsi0", &[]));
    // spdk-rpc prints a list of strings on one line, space separated.
    let mut luns: Vec<&str> = out.split_whitespace().collect();
    luns.sort();
    assert_eq!(
        luns,
        [
            "VirtioScsi0t0",
            "VirtioScsi0t0l1",
            "VirtioScsi0t1",
            "VirtioScsi0t1l1"
        ]
    );
    let all = s.json(&["bdev_get_bdevs"]);
    assert_eq!(names(&all).len(), 5);
    let blk = s.json(&["bdev_get_bdevs", "-b", "VirtioBlk0"]);
    let b = &blk[0];
    assert_eq!(b["product_name"], "VirtioBlk Disk");
    assert_eq!(b["num_blocks"], 64 * MIB / 512);
    assert_eq!(b["driver_specific"]["virtio"]["vq_count"], 2);
    assert_eq!(b["driver_specific"]["virtio"]["vq_size"], 512);
    assert_eq!(b["driver_specific"]["virtio"]["type"], "user");
    assert_eq!(b["driver_specific"]["virtio"]["socket"], path(qsd.socket()));
    let lun = &s.json(&["bdev_get_bdevs", "-b", "VirtioScsi0t1l1"])[0];
    assert_eq!(lun["product_name"], "Virtio SCSI Disk");
    assert_eq!(
        lun["driver_specific"]["virtio"]["vq_count"], 3,
        "SPDK counts control and event"
    );
    let devs = s.json(&["bdev_virtio_scsi_get_devices"]);
    assert_eq!(
        devs,
        json!([{"name": "VirtioScsi0", "virtio": {"vq_count": 3, "vq_size": 512,
                 "type": "user", "socket": path(scsi.socket())}}])
    );
    // spdk-rpc prints nothing for `true`; it exits 0.
    s.ok(&["bdev_virtio_detach_controller", "VirtioScsi0"]);
    assert_eq!(names(&s.json(&["bdev_get_bdevs"])), ["VirtioBlk0"]);
    assert_eq!(s.json(&["bdev_virtio_scsi_get_devices"]), json!([]));
    // The scsi target was left cleanly: a new frontend attaches at once.
    let again = s.ok(&attach(path(scsi.socket()), "scsi", "VirtioScsi1", &[]));
    assert_eq!(again.split_whitespace().count(), 4);
    // SIGTERM detaches everything and removes the socket.
    let sock = s.sock();
    assert_eq!(s.signal(libc::SIGTERM), 0);
    assert!(!sock.exists(), "RPC socket removed at exit");
}

#[test]
fn save_config_then_restart_with_json_gives_the_same_config() {
    let qsd = QsdBuilder::new(Backend::Null { size: 64 * MIB })
        .num_queues(2)
        .start();
    let scsi = scsi_target();
    let s = Serve::start(&[]);
    s.ok(&["bdev_malloc_create", "-b", "Malloc0", "16", "512"]);
    s.ok(&["bdev_null_create", "Null0", "32", "4096"]);
    s.ok(&attach(path(qsd.socket()), "blk", "VirtioBlk0", &[]));
    // vbdev's `timeout_ms` extension (SPDK's client has no flag for it: raw JSON).
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_virtio_attach_controller",
        "params": {"name": "VirtioScsi0", "trtype": "user", "traddr": path(scsi.socket()),
                   "dev_type": "scsi", "vq_count": 2, "vq_size": 128, "timeout_ms": 20000}});
    let r = s.raw(req.to_string().as_bytes());
    assert!(r.get("error").is_none(), "{r}");
    s.ok(&["vhost_create_scsi_controller", "vhost.0"]);
    s.ok(&[
        "vhost_scsi_controller_add_target",
        "vhost.0",
        "0",
        "Malloc0",
    ]);
    s.ok(&["vhost_create_blk_controller", "vhost.1", "Null0"]);
    let saved = s.json(&["save_config"]);
    let attaches: Vec<&Value> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|sub| sub["config"].as_array().into_iter().flatten())
        .filter(|c| c["method"] == "bdev_virtio_attach_controller")
        .collect();
    assert_eq!(attaches.len(), 2, "{saved}");
    assert_eq!(
        attaches[1]["params"]["timeout_ms"], 20000,
        "kept by save_config"
    );
    assert!(
        attaches[0]["params"].get("timeout_ms").is_none(),
        "only when given"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let bdevs_before = names(&s.json(&["bdev_get_bdevs"]));
    drop(s);

    let s2 = Serve::start(&["--json", path(&file)]);
    assert_eq!(s2.json(&["save_config"]), saved);
    assert_eq!(names(&s2.json(&["bdev_get_bdevs"])), bdevs_before);
    let ctrlrs = s2.json(&["vhost_get_controllers"]);
    assert_eq!(ctrlrs.as_array().unwrap().len(), 2);
    // The restored vhost-scsi controller serves: vbdev io sees Malloc0 behind it.
    let vhost0 = s2.dir.path().join("vhost.0");
    vbdev(&[
        "io",
        "--vhost-user",
        path(&vhost0),
        "--dev-type",
        "scsi",
        "info",
    ])
    .expect_ok();
    // And SPDK's client loads it into a fresh daemon too (its load_config path); the
    // targets take one frontend at a time, so the second daemon goes first.
    drop(s2);
    let s3 = Serve::start(&[]);
    let out = Command::new(spdk_rpc_bin())
        .args(["-s", path(&s3.sock()), "load_config"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "load_config: {:?}", out);
    assert_eq!(s3.json(&["save_config"]), saved);
}

#[test]
fn the_seeds_ini_config_gives_the_same_bdevs_as_json() {
    let qsd = QsdBuilder::new(Backend::Null { size: 64 * MIB })
        .num_queues(2)
        .start();
    let scsi = scsi_target();
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("bdev.conf");
    std::fs::write(
        &ini,
        format!(
            "# As in the seed README\n[VirtioUser0]\n  Path {}\n\n[VirtioUser1]\n  Path {}\n  Type Blk\n  Name VirtioBlk0\n\n[VirtioPci]\n  Enable No\n",
            path(scsi.socket()),
            path(qsd.socket())
        ),
    )
    .unwrap();
    let json_cfg = dir.path().join("bdev.json");
    std::fs::write(
        &json_cfg,
        json!({"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_virtio_attach_controller", "params": {"name": "VirtioScsi0",
             "trtype": "user", "traddr": path(scsi.socket()), "dev_type": "scsi"}},
            {"method": "bdev_virtio_attach_controller", "params": {"name": "VirtioBlk0",
             "trtype": "user", "traddr": path(qsd.socket()), "dev_type": "blk"}}]}]})
        .to_string(),
    )
    .unwrap();
    let from_ini = {
        let s = Serve::start(&["--config", path(&ini)]);
        (s.json(&["bdev_get_bdevs"]), s.json(&["save_config"]))
    };
    let from_json = {
        let s = Serve::start(&["--json", path(&json_cfg)]);
        (s.json(&["bdev_get_bdevs"]), s.json(&["save_config"]))
    };
    assert_eq!(
        names(&from_ini.0),
        [
            "VirtioBlk0",
            "VirtioScsi0t0",
            "VirtioScsi0t0l1",
            "VirtioScsi0t1",
            "VirtioScsi0t1l1"
        ]
    );
    assert_eq!(from_ini.0, from_json.0);
    assert_eq!(from_ini.1, from_json.1);
}

#[test]
fn bad_input_gets_spdk_error_codes_and_the_daemon_keeps_serving() {
    let qsd = QsdBuilder::new(Backend::Null { size: 64 * MIB })
        .num_queues(2)
        .start();
    let s = Serve::start(&[]);
    s.ok(&attach(path(qsd.socket()), "blk", "VirtioBlk0", &[]));
    let err = |v: &Value| {
        (
            v["error"]["code"].as_i64().unwrap(),
            v["error"]["message"].as_str().unwrap().to_owned(),
        )
    };
    // Malformed JSON: parse error.
    let (code, _) = err(&s.raw(b"{\"jsonrpc\": \"2.0\", \"method\": }"));
    assert_eq!(code, -32700);
    // Unknown method.
    let (code, msg) =
        err(&s.raw(br#"{"jsonrpc":"2.0","method":"bdev_nvme_attach_controller","id":7}"#));
    assert_eq!(code, -32601);
    assert!(msg.contains("bdev_nvme_attach_controller"), "{msg}");
    // Unknown and wrongly typed params (SPDK: -32603 for this method's decoder).
    let (code, msg) = err(&s.raw(br#"{"jsonrpc":"2.0","method":"bdev_virtio_attach_controller","id":1,"params":{"name":"X","trtype":"user","traddr":"/nonexistent","dev_type":"blk","queues":2}}"#));
    assert_eq!(code, -32603);
    assert!(msg.contains("queues"), "{msg}");
    let (code, msg) = err(&s.raw(br#"{"jsonrpc":"2.0","method":"bdev_malloc_create","id":1,"params":{"num_blocks":"many","block_size":512}}"#));
    assert_eq!(code, -32602);
    assert!(msg.contains("num_blocks") || msg.contains("many"), "{msg}");
    // A zero reply deadline (vbdev's timeout_ms extension).
    let (code, msg) = err(&s.raw(br#"{"jsonrpc":"2.0","method":"bdev_virtio_attach_controller","id":1,"params":{"name":"X","trtype":"user","traddr":"/nonexistent","dev_type":"blk","timeout_ms":0}}"#));
    assert_eq!(code, -22);
    assert!(msg.contains("timeout_ms"), "{msg}");
    // Params on a method that takes none.
    let (code, _) = err(&s.raw(
        br#"{"jsonrpc":"2.0","method":"bdev_virtio_scsi_get_devices","id":1,"params":{"x":1}}"#,
    ));
    assert_eq!(code, -32602);
    // Missing device.
    let (code, msg) = s
        .spdk(&["bdev_virtio_detach_controller", "Nope"])
        .into_err();
    assert_eq!(code, -19, "{msg}");
    // Unreachable socket: the path is named.
    let (code, msg) = s
        .spdk(&[
            "bdev_virtio_attach_controller",
            "-t",
            "user",
            "-a",
            "/nonexistent/x.sock",
            "-d",
            "blk",
            "Gone0",
        ])
        .into_err();
    assert_eq!(code, -32602);
    assert!(msg.contains("/nonexistent/x.sock"), "{msg}");
    // vfio-user and pci: a clear "not supported".
    let (_, msg) = s
        .spdk(&[
            "bdev_virtio_attach_controller",
            "-t",
            "vfio-user",
            "-a",
            "/tmp/x",
            "-d",
            "scsi",
            "V",
        ])
        .into_err();
    assert!(msg.contains("not supported"), "{msg}");
    // A name in use.
    let (code, _) = s
        .spdk(&attach(path(qsd.socket()), "blk", "VirtioBlk0", &[]))
        .into_err();
    assert_eq!(code, -17);
    // Nothing was lost: the device is still there and answers.
    assert_eq!(names(&s.json(&["bdev_get_bdevs"])), ["VirtioBlk0"]);
    assert_eq!(
        s.raw(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":"v"}"#)["id"],
        "v"
    );
}

/// `(code, message)` of a failed `spdk-rpc` run, parsed from its output.
trait IntoErr {
    fn into_err(self) -> (i64, String);
}

impl IntoErr for (i32, String, String) {
    fn into_err(self) -> (i64, String) {
        let (code, out, err) = self;
        assert_eq!(code, 1, "spdk-rpc should fail:\n{out}\n{err}");
        // spdk-rpc prints (on stdout) "response:" then the error object as JSON.
        let all = format!("{out}{err}");
        let at = all
            .find("response:")
            .unwrap_or_else(|| panic!("no response in: {all}"));
        let obj: Value = serde_json::Deserializer::from_str(all[at + 9..].trim_start())
            .into_iter::<Value>()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no error object in: {all}"));
        (
            obj["code"].as_i64().unwrap(),
            obj["message"].as_str().unwrap().to_owned(),
        )
    }
}

#[test]
fn vbdev_rpc_client_and_vhost_controllers_and_a_clean_shutdown() {
    let mut s = Serve::start(&[]);
    let sock = s.sock();
    let rpc = |args: &[&str]| {
        let mut all = vec!["rpc", "-s", path(&sock)];
        all.extend_from_slice(args);
        vbdev(&all)
    };
    let r = rpc(&[
        "bdev_malloc_create",
        "--name",
        "M0",
        "--num-blocks",
        "2048",
        "--block-size",
        "512",
    ]);
    r.expect_ok();
    assert_eq!(r.stdout.trim(), "\"M0\"");
    rpc(&[
        "vhost_create_blk_controller",
        "--ctrlr",
        "vblk0",
        "--dev-name",
        "M0",
    ])
    .expect_ok();
    let r = rpc(&["vhost_get_controllers"]);
    r.expect_ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["ctrlr"], "vblk0");
    assert_eq!(v[0]["backend_specific"]["block"]["bdev"], "M0");
    // The bdev is in use: it cannot be deleted from under the controller.
    rpc(&["bdev_malloc_delete", "--name", "M0"]).expect_failure(1, &["vblk0"]);
    // The controller serves: a write through it lands on M0, read back through it.
    let vsock = s.dir.path().join("vblk0");
    io(
        &vsock,
        &[
            "write",
            "--offset",
            "0",
            "--length",
            "4096",
            "--pattern",
            "0xab",
        ],
    )
    .expect_ok();
    let r = io(
        &vsock,
        &[
            "--json",
            "read",
            "--offset",
            "0",
            "--length",
            "4096",
            "--pattern",
            "0xab",
        ],
    );
    r.expect_ok();
    assert_eq!(r.op().pattern_ok, Some(true), "the data went through M0");
    // bdev_get_iostat counts what the controller did on M0.
    let r = rpc(&["bdev_get_iostat", "--name", "M0"]);
    r.expect_ok();
    let st: Value = serde_json::from_str(&r.stdout).unwrap();
    let m0 = &st["bdevs"][0];
    assert_eq!(m0["name"], "M0");
    assert!(m0["num_write_ops"].as_u64().unwrap() >= 1, "{st}");
    assert!(m0["bytes_written"].as_u64().unwrap() >= 4096, "{st}");
    assert!(m0["num_read_ops"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["tick_rate"], 1_000_000_000u64);
    rpc(&["no_such_method"]).expect_failure(1, &["Method not found"]);
    assert_eq!(s.signal(libc::SIGINT), 0);
    assert!(!sock.exists(), "RPC socket removed");
    assert!(!vsock.exists(), "vhost socket removed");
}

#[test]
fn a_daemon_socket_is_never_created_over_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rpc.sock");
    std::fs::write(&file, b"keep me").unwrap();
    vbdev(&["serve", "-r", path(&file), "-S", path(dir.path())]).expect_failure(1, &["rpc.sock"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // A config that fails stops the start with the call's error.
    let cfg = dir.path().join("bad.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_virtio_attach_controller","params":{"name":"B","trtype":"user","traddr":"/nonexistent.sock","dev_type":"blk"}}]}]}"#,
    )
    .unwrap();
    let sock = dir.path().join("ok.sock");
    vbdev(&[
        "serve",
        "-r",
        path(&sock),
        "-S",
        path(dir.path()),
        "--json",
        path(&cfg),
    ])
    .expect_failure(1, &["bdev_virtio_attach_controller", "/nonexistent.sock"]);
    assert!(!sock.exists());
    let mut f = std::fs::File::open(&file).unwrap();
    let mut keep = String::new();
    f.read_to_string(&mut keep).unwrap();
    assert_eq!(keep, "keep me");
}

#[test]
fn a_virtio_bdev_whose_target_died_is_listed_as_failed() {
    // The case of issue 17: qemu-storage-daemon killed under an attached bdev. Until
    // reconnecting exists, the bdev must at least not look healthy.
    let mut qsd = QsdBuilder::new(Backend::Null { size: 64 * MIB }).start();
    let scsi = scsi_target();
    let s = Serve::start(&[]);
    s.ok(&attach(path(qsd.socket()), "blk", "VirtioBlk0", &[]));
    s.ok(&attach(path(scsi.socket()), "scsi", "VirtioScsi0", &[]));
    let state = |name: &str| {
        s.json(&["bdev_get_bdevs", "-b", name])[0]["driver_specific"]["virtio"]["state"].clone()
    };
    assert_eq!(state("VirtioBlk0"), json!("connected"));
    assert_eq!(state("VirtioScsi0t0"), json!("connected"));
    qsd.kill();
    // vbdev's connection thread notices the hang-up by itself; the RPC reads what it
    // set. Bounded, polled from outside the daemon.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state("VirtioBlk0") != json!("failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "VirtioBlk0 still {} 10 s after its target was killed",
            state("VirtioBlk0")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The other device is untouched, and the failed one can be detached.
    assert_eq!(state("VirtioScsi0t0"), json!("connected"));
    s.ok(&["bdev_virtio_detach_controller", "VirtioBlk0"]);
    let left = names(&s.json(&["bdev_get_bdevs"]));
    assert!(!left.iter().any(|n| n == "VirtioBlk0"), "{left:?}");
    assert!(left.iter().any(|n| n == "VirtioScsi0t0"), "{left:?}");
}

#[test]
fn sigterm_stops_the_daemon_while_a_client_waits_for_a_bdev() {
    // bdev_get_bdevs waiting for a bdev that never comes held the daemon's shutdown for
    // the whole timeout (60 s for 60000 ms; forever for 2^64-1 ms, now refused).
    let mut s = Serve::start(&[]);
    let r = s.raw(
        br#"{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs","params":{"name":"Nope0","timeout":18446744073709551615}}"#,
    );
    assert_eq!(r["error"]["code"], json!(-32602), "{r}");
    let mut waiting = UnixStream::connect(s.sock()).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut lines = BufReader::new(waiting.try_clone().unwrap()).lines();
    // An answered first request: the daemon has accepted this connection and serves it
    // (a connection still in the listen backlog would just be closed by the stop).
    waiting
        .write_all(br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}"#)
        .unwrap();
    assert!(lines.next().unwrap().unwrap().contains(r#""id":1"#));
    waiting
        .write_all(
            br#"{"jsonrpc":"2.0","id":2,"method":"bdev_get_bdevs","params":{"name":"Nope0","timeout":600000}}"#,
        )
        .unwrap();
    // Whether the daemon has read the request when the signal comes or reads it while
    // it stops (a stop ends reading only once what was sent is read), the call answers
    // at once: `signal` allows 20 s, the call asked for 600.
    assert_eq!(s.signal(libc::SIGTERM), 0);
    // The waiting client got an answer before the daemon went, not a hang-up.
    let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(v["id"], json!(2), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("stopped waiting"),
        "{v}"
    );
}
