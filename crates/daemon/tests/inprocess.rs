//! The daemon driven in-process, as a program that embeds it would: its calls straight
//! through [`Handler::call`], its bdevs opened as any bdev, and its JSON-RPC server on a
//! socket of the test's own. The binary's tests (`crates/vbdev/tests`) drive the same
//! daemon through `vbdev serve` and SPDK's client.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vbdev_bdev::{Bdev, DeviceState, DmaBuf, IoStatus, RejectReason, Request};
use vbdev_daemon::{Daemon, Handler, RpcOptions, RpcServer};

fn call(d: &Daemon, method: &str, params: Value) -> Value {
    d.call(method, Some(params))
        .unwrap_or_else(|e| panic!("{method}: {} (code {})", e.message, e.code))
}

/// Writes `data` at `lba` of `bdev` and waits for it.
fn write(bdev: &Bdev, lba: u64, data: &[u8]) {
    let mut ch = bdev.open_channel().unwrap();
    let mut buf = DmaBuf::alloc(data.len()).unwrap();
    buf.copy_from_slice(data);
    let blocks = data.len() as u64 / u64::from(bdev.block_size());
    ch.submit(Request::write(lba, blocks, buf, 1))
        .map_err(|r| r.error)
        .unwrap();
    assert_eq!(ch.wait_one().unwrap().status, IoStatus::Success);
}

/// Reads `len` bytes at `lba` of `bdev`.
fn read(bdev: &Bdev, lba: u64, len: usize) -> Vec<u8> {
    let mut ch = bdev.open_channel().unwrap();
    let blocks = len as u64 / u64::from(bdev.block_size());
    ch.submit(Request::read(lba, blocks, DmaBuf::alloc(len).unwrap(), 2))
        .map_err(|r| r.error)
        .unwrap();
    let c = ch.wait_one().unwrap();
    assert_eq!(c.status, IoStatus::Success);
    c.buf.unwrap().to_vec()
}

/// A JSON-RPC server for `handler` on `path`.
fn rpc_server(path: &std::path::Path, handler: Arc<dyn Handler>, opts: RpcOptions) -> RpcServer {
    RpcServer::start(path, handler, opts).expect("RPC server starts")
}

#[test]
fn a_virtio_bdev_of_the_daemon_reaches_a_bdev_its_own_vhost_controller_serves() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::new(dir.path().to_path_buf(), false, Duration::from_secs(10));
    call(
        &d,
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": 2048, "block_size": 512}),
    );
    call(
        &d,
        "vhost_create_blk_controller",
        json!({"ctrlr": "vhost.0", "dev_name": "Malloc0"}),
    );
    let socket = dir.path().join("vhost.0");
    let names = call(
        &d,
        "bdev_virtio_attach_controller",
        json!({"name": "VirtioBlk0", "trtype": "user", "traddr": socket,
               "dev_type": "blk", "vq_count": 1, "vq_size": 128}),
    );
    assert_eq!(names, json!(["VirtioBlk0"]));

    // The virtio bdev is the malloc bdev, seen through the daemon's own target.
    let virtio = d.bdev("VirtioBlk0").expect("attached bdev");
    let malloc = d.bdev("Malloc0").expect("local bdev");
    assert_eq!(
        (virtio.num_blocks(), virtio.block_size()),
        (malloc.num_blocks(), malloc.block_size())
    );
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    write(&virtio, 100, &data);
    assert_eq!(read(&malloc, 100, data.len()), data);
    write(&malloc, 300, &data[..512]);
    assert_eq!(read(&virtio, 300, 512), data[..512]);

    // What the methods report agrees: the malloc bdev is claimed by the controller and
    // cannot be deleted from under it; the virtio bdev counts the I/O it did.
    let b = call(&d, "bdev_get_bdevs", json!({"name": "Malloc0"}));
    assert_eq!(b[0]["claimed"], json!(true), "{b}");
    let e = d
        .call("bdev_malloc_delete", Some(json!({"name": "Malloc0"})))
        .unwrap_err();
    assert_eq!(e.code, -16, "{}", e.message);
    assert!(e.message.contains("vhost.0"), "{}", e.message);
    let st = call(&d, "bdev_get_iostat", json!({"name": "VirtioBlk0"}));
    let st = &st["bdevs"][0];
    assert_eq!(st["bytes_written"], json!(8192), "{st}");
    assert_eq!(st["bytes_read"], json!(512), "{st}");

    let state = |d: &Daemon| {
        call(d, "bdev_get_bdevs", json!({"name": "VirtioBlk0"}))[0]["driver_specific"]["virtio"]
            ["state"]
            .clone()
    };
    assert_eq!(state(&d), json!("connected"));

    // The controller goes while VirtioBlk0 is its frontend: VirtioBlk0 is listed as
    // failed (not as a healthy bdev whose every request fails), and refuses requests.
    call(&d, "vhost_delete_controller", json!({"ctrlr": "vhost.0"}));
    assert!(!socket.exists(), "socket removed with its controller");
    // The initiator's connection thread sees the hang-up on its own; bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&d) != json!("failed") {
        assert!(Instant::now() < deadline, "still {} after 10 s", state(&d));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(virtio.state(), DeviceState::Failed);
    match virtio.open_channel() {
        Ok(mut ch) => {
            let r = ch
                .submit(Request::read(0, 1, DmaBuf::alloc(512).unwrap(), 3))
                .unwrap_err();
            assert_eq!(r.error, RejectReason::Removed);
        }
        Err(e) => assert!(matches!(e, vbdev_bdev::Error::Removed(_)), "{e}"),
    }
    assert_eq!(malloc.state(), DeviceState::Connected);
    call(
        &d,
        "bdev_virtio_detach_controller",
        json!({"name": "VirtioBlk0"}),
    );
    assert!(d.bdev("VirtioBlk0").is_none());
    call(&d, "bdev_malloc_delete", json!({"name": "Malloc0"}));
    assert_eq!(call(&d, "bdev_get_bdevs", json!({})), json!([]));
    d.shutdown();
}

#[test]
fn the_rpc_server_answers_spdk_requests_for_the_daemon_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::new(dir.path().to_path_buf(), false, Duration::from_secs(10));
    let path = dir.path().join("rpc.sock");
    let mut server = rpc_server(&path, d.clone(), RpcOptions::default());
    let mut s = UnixStream::connect(server.path()).unwrap();
    let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
    // Two requests back to back, the first pretty-printed over lines (SPDK's client).
    s.write_all(
        b"{\n  \"jsonrpc\": \"2.0\",\n  \"id\": 1,\n  \"method\": \"bdev_null_create\",\n  \
          \"params\": {\"name\": \"Null0\", \"num_blocks\": 64, \"block_size\": 4096}\n}\
          {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"bdev_get_bdevs\",\"params\":{\"name\":\"Null0\"}}",
    )
    .unwrap();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first, json!({"jsonrpc": "2.0", "id": 1, "result": "Null0"}));
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["id"], json!(2));
    assert_eq!(second["result"][0]["block_size"], json!(4096), "{second}");
    assert_eq!(second["result"][0]["num_blocks"], json!(64), "{second}");
    // The call went to this daemon: its bdev is there in-process.
    assert_eq!(d.bdev("Null0").map(|b| b.num_blocks()), Some(64));
    // An unknown method: SPDK's code, the connection stays usable.
    s.write_all(br#"{"jsonrpc":"2.0","id":3,"method":"no_such_method"}"#)
        .unwrap();
    let third: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(third["error"]["code"], json!(-32601), "{third}");
    // A vhost controller named like the RPC socket (both live in the directory) is
    // refused: the socket is live. The RPC socket stays and keeps answering.
    let e = d
        .call(
            "vhost_create_blk_controller",
            Some(json!({"ctrlr": "rpc.sock", "dev_name": "Null0"})),
        )
        .unwrap_err();
    assert!(
        e.message.contains("another process listens"),
        "{}",
        e.message
    );
    assert_eq!(call(&d, "vhost_get_controllers", json!({})), json!([]));
    s.write_all(br#"{"jsonrpc":"2.0","id":4,"method":"spdk_get_version"}"#)
        .unwrap();
    let fourth: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(fourth["id"], json!(4), "{fourth}");
    assert!(fourth.get("result").is_some(), "{fourth}");
    drop(s);
    server.stop();
    assert!(!path.exists(), "socket removed at stop");
    d.shutdown();
}

#[test]
fn a_waiting_call_is_bounded_and_ends_when_its_client_leaves_or_the_daemon_stops() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::new(dir.path().to_path_buf(), false, Duration::from_secs(10));
    // Beyond the bound (one hour): refused at once, as a huge attach timeout is.
    let e = d
        .call(
            "bdev_get_bdevs",
            Some(json!({"name": "Nope0", "timeout": u64::MAX})),
        )
        .unwrap_err();
    assert_eq!(e.code, -32602, "{}", e.message);
    let e = d
        .call(
            "bdev_virtio_attach_controller",
            Some(
                json!({"name": "V0", "trtype": "user", "traddr": "/nonexistent",
                        "dev_type": "blk", "timeout_ms": 3_600_001u64}),
            ),
        )
        .unwrap_err();
    assert!(e.message.contains("beyond the limit"), "{}", e.message);

    // The daemon behind a handler that reports each call's outcome when it returns.
    struct Reporting {
        daemon: Arc<Daemon>,
        done: std::sync::Mutex<std::sync::mpsc::Sender<Result<Value, vbdev_daemon::RpcError>>>,
    }
    impl Handler for Reporting {
        fn call(
            &self,
            method: &str,
            params: Option<Value>,
        ) -> Result<Value, vbdev_daemon::RpcError> {
            let r = self.daemon.call(method, params);
            let _ = self.done.lock().unwrap().send(r.clone());
            r
        }
    }
    let (tx, returned) = std::sync::mpsc::channel();
    let handler: Arc<dyn Handler> = Arc::new(Reporting {
        daemon: Arc::clone(&d),
        done: std::sync::Mutex::new(tx),
    });
    let path = dir.path().join("rpc.sock");
    let mut server = rpc_server(&path, handler, RpcOptions::default());
    let wait_for = |ms: u64, id: u64| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"bdev_get_bdevs","params":{{"name":"Nope0","timeout":{ms}}}}}"#
        )
    };
    // A client that only shut its sending side still gets its answer (after the wait).
    let mut half = UnixStream::connect(&path).unwrap();
    half.write_all(wait_for(200, 1).as_bytes()).unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let answer: Value =
        serde_json::from_str(&BufReader::new(&half).lines().next().unwrap().unwrap()).unwrap();
    assert_eq!(answer["error"]["code"], json!(-19), "{answer}");
    let first = returned.recv().unwrap().unwrap_err();
    assert!(
        first.message.contains("not found") || first.code == -19,
        "{first:?}"
    );
    // A client that asks for ten minutes and leaves: its call ends with it (the server
    // still runs), instead of holding a thread for ten minutes.
    let mut gone = UnixStream::connect(&path).unwrap();
    gone.write_all(wait_for(600_000, 2).as_bytes()).unwrap();
    drop(gone);
    let ended = returned
        .recv_timeout(Duration::from_secs(30))
        .expect("the call of a client that left ended")
        .unwrap_err();
    assert!(ended.message.contains("stopped waiting"), "{ended:?}");
    server.stop();
    // In-process, nobody can leave: the daemon's stop ends the wait.
    let d2 = Arc::clone(&d);
    let waiter = std::thread::spawn(move || {
        d2.call(
            "bdev_get_bdevs",
            Some(json!({"name": "Nope0", "timeout": 600_000})),
        )
    });
    d.begin_shutdown();
    let e = waiter.join().unwrap().unwrap_err();
    assert!(e.message.contains("stopped waiting"), "{}", e.message);
    d.shutdown();
}

#[test]
fn bad_names_and_impossible_sizes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::new(dir.path().to_path_buf(), false, Duration::from_secs(10));
    let long = "x".repeat(1 << 20);
    let bad = ["", "   ", "a/b", "..", "new\nline", "nul\0", &long];
    for name in bad {
        for (method, params) in [
            (
                "bdev_malloc_create",
                json!({"name": name, "num_blocks": 16, "block_size": 512}),
            ),
            (
                "bdev_null_create",
                json!({"name": name, "num_blocks": 16, "block_size": 512}),
            ),
            (
                "bdev_virtio_attach_controller",
                json!({"name": name, "trtype": "user", "traddr": "/nonexistent", "dev_type": "blk"}),
            ),
            ("vhost_create_scsi_controller", json!({"ctrlr": name})),
        ] {
            let e = d.call(method, Some(params)).unwrap_err();
            assert_eq!(
                e.code,
                -22,
                "{method} {:?}: {}",
                &name[..name.len().min(8)],
                e.message
            );
            // The message shows a cut name, never the megabyte.
            assert!(e.message.len() < 300, "{method}: {} bytes", e.message.len());
        }
    }
    // 64 TiB of RAM disk: a sparse disk, made at once (its bookkeeping grows with what is
    // written; writes beyond the machine's memory fail with ENOSPC); past the address
    // space: refused.
    call(
        &d,
        "bdev_malloc_create",
        json!({"name": "Huge0", "num_blocks": (64u64 << 40) / 512, "block_size": 512}),
    );
    call(&d, "bdev_malloc_delete", json!({"name": "Huge0"}));
    let e = d
        .call(
            "bdev_malloc_create",
            Some(json!({"name": "Huge1", "num_blocks": u64::MAX / 256, "block_size": 512})),
        )
        .unwrap_err();
    assert!(e.message.contains("num_blocks"), "{}", e.message);
    assert_eq!(call(&d, "bdev_get_bdevs", json!({})), json!([]));
    assert_eq!(call(&d, "vhost_get_controllers", json!({})), json!([]));
    // What is fine still is.
    call(
        &d,
        "bdev_malloc_create",
        json!({"name": "Malloc-0.a_b", "num_blocks": 16, "block_size": 512}),
    );
    d.shutdown();
}

#[test]
fn silent_clients_cannot_hold_the_rpc_server() {
    // 2,000 stalled clients made 2,003 threads: connections are capped, a silent one is
    // closed after the idle timeout, and the server answers again.
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::new(dir.path().to_path_buf(), false, Duration::from_secs(10));
    let path = dir.path().join("rpc.sock");
    let mut server = rpc_server(
        &path,
        d.clone(),
        RpcOptions {
            max_connections: 8,
            idle_timeout: Duration::from_millis(300),
            ..RpcOptions::default()
        },
    );
    let version = br#"{"jsonrpc":"2.0","id":7,"method":"spdk_get_version"}"#;
    let ask = |expect_refusal: bool| {
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A refused client's request may meet a closed socket: that is the refusal.
        let _ = c.write_all(version);
        let line = BufReader::new(&c).lines().next().unwrap().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if expect_refusal {
            assert_eq!(v["error"]["code"], json!(-32603), "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("too many connections"),
                "{v}"
            );
        } else {
            assert_eq!(v["id"], json!(7), "{v}");
            assert!(v.get("result").is_some(), "{v}");
        }
    };
    ask(false);
    // Eight silent clients, each answered once so that it holds its connection.
    let mut silent = Vec::new();
    for _ in 0..8 {
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(version).unwrap();
        let mut lines = BufReader::new(c.try_clone().unwrap()).lines();
        assert!(lines.next().unwrap().unwrap().contains(r#""id":7"#));
        silent.push(c);
    }
    // A ninth is refused with a reason, at once.
    ask(true);
    // The silent ones are closed after the idle timeout: the server sees to it (their
    // reads end), and a new client is answered again.
    for c in &silent {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut &*c, &mut rest).unwrap();
        assert!(rest.is_empty(), "closed without a word");
    }
    // The server's threads end after closing; a new client may race the last one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(version);
        let line = BufReader::new(&c).lines().next().unwrap().unwrap();
        if line.contains(r#""id":7"#) {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {line}");
        std::thread::yield_now();
    }
    server.stop();
    d.shutdown();
}
