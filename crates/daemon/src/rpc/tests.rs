use super::*;

use std::os::unix::fs::FileTypeExt;

use std::io::{BufRead, BufReader};
use std::sync::Condvar;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

/// A safety net so that a broken server fails a test instead of hanging it; not
/// used for synchronisation.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `echo` returns its params, `fail` fails with -19, `panic` panics, `slow` takes
/// 200 ms, `note` records its params; anything else is -32601.
#[derive(Default)]
struct TestHandler {
    notes: Mutex<Vec<Value>>,
    slow_started: Mutex<bool>,
    slow_cv: Condvar,
    slow_finished: AtomicBool,
}

impl TestHandler {
    fn wait_slow_started(&self) {
        let started = self.slow_started.lock().unwrap();
        let (started, timeout) = self
            .slow_cv
            .wait_timeout_while(started, TEST_TIMEOUT, |s| !*s)
            .unwrap();
        assert!(*started && !timeout.timed_out(), "slow never started");
    }
}

impl Handler for TestHandler {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match method {
            "echo" => Ok(params.unwrap_or(Value::Null)),
            "fail" => Err(RpcError::new(-19, "No such device")),
            "panic" => panic!("boom"),
            "slow" => {
                *self.slow_started.lock().unwrap() = true;
                self.slow_cv.notify_all();
                thread::sleep(Duration::from_millis(200));
                self.slow_finished.store(true, Ordering::SeqCst);
                Ok(json!("done"))
            }
            "note" => {
                self.notes
                    .lock()
                    .unwrap()
                    .push(params.unwrap_or(Value::Null));
                Ok(Value::Null)
            }
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    handler: Arc<TestHandler>,
    server: RpcServer,
}

impl Fixture {
    fn new() -> Self {
        Self::with_max(1 << 20)
    }

    fn with_max(max_request: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let handler = Arc::new(TestHandler::default());
        let server = RpcServer::start(
            &dir.path().join("rpc.sock"),
            handler.clone(),
            RpcOptions {
                max_request,
                ..RpcOptions::default()
            },
        )
        .unwrap();
        Self {
            dir,
            handler,
            server,
        }
    }

    fn client(&self) -> Client {
        Client::connect(self.server.path())
    }
}

struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &str) {
        let mut stream = self.reader.get_ref();
        stream.write_all(bytes.as_bytes()).unwrap();
    }

    /// The next answer line, raw, newline included.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed, expected an answer");
        assert!(line.ends_with('\n'), "answer without newline: {line:?}");
        line
    }

    fn answer(&mut self) -> Value {
        serde_json::from_str(&self.line()).unwrap()
    }

    fn call(&mut self, request: &Value) -> Value {
        self.send(&request.to_string());
        self.answer()
    }

    /// Asserts that the server closed the connection with nothing more to read.
    fn assert_closed(&mut self) {
        let mut rest = String::new();
        match self.reader.read_line(&mut rest) {
            Ok(0) => {}
            // Linux reports a close with unread input to the peer as a reset.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?} {rest:?}"),
        }
    }
}

fn request(method: &str, id: Value, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "id": id, "params": params})
}

#[test]
fn pretty_printed_request_without_newline_is_answered_compactly() {
    let f = Fixture::new();
    let mut c = f.client();
    // The exact bytes spdk-rpc sends.
    c.send("{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"echo\",\n  \"id\": 1,\n  \"params\": {\n    \"name\": \"VirtioBlk0\",\n    \"vq_count\": 2\n  }\n}");
    assert_eq!(
        c.line(),
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"name\":\"VirtioBlk0\",\"vq_count\":2}}\n"
    );
}

#[test]
fn error_answer_keeps_member_order() {
    let f = Fixture::new();
    let mut c = f.client();
    c.send(r#"{"jsonrpc":"2.0","method":"fail","id":"x"}"#);
    assert_eq!(
        c.line(),
        "{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"error\":{\"code\":-19,\"message\":\"No such device\"}}\n"
    );
}

#[test]
fn pipelined_requests_in_one_write_are_answered_in_order() {
    let f = Fixture::new();
    let mut c = f.client();
    let a = request("echo", json!(1), json!(["a"]));
    let b = request("echo", json!(2), json!(["b"]));
    c.send(&format!(
        "{a}{b}  \n{}",
        request("echo", json!(3), json!(["c"]))
    ));
    for (id, p) in [(1, "a"), (2, "b"), (3, "c")] {
        assert_eq!(
            c.answer(),
            json!({"jsonrpc": "2.0", "id": id, "result": [p]})
        );
    }
}

#[test]
fn request_split_across_writes_is_answered_once_complete() {
    let f = Fixture::new();
    let mut c = f.client();
    let text = request("echo", json!(5), json!({"k": "split"})).to_string();
    let (head, tail) = text.split_at(text.len() / 2);
    c.send(head);
    // Deliberate pause: the server must wait for the rest, not fail on a short read.
    thread::sleep(Duration::from_millis(100));
    c.send(tail);
    assert_eq!(c.answer()["result"], json!({"k": "split"}));
}

#[test]
fn batch_is_answered_with_one_array_without_notifications() {
    let f = Fixture::new();
    let mut c = f.client();
    let batch = json!([
        request("echo", json!(1), json!([1])),
        {"jsonrpc": "2.0", "method": "note", "params": ["in batch"]},
        {"jsonrpc": "2.0", "method": "fail", "id": 3},
        5,
    ]);
    assert_eq!(
        c.call(&batch),
        json!([
            {"jsonrpc": "2.0", "id": 1, "result": [1]},
            {"jsonrpc": "2.0", "id": 3, "error": {"code": -19, "message": "No such device"}},
            {"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid request: not an object"}},
        ])
    );
    assert_eq!(*f.handler.notes.lock().unwrap(), vec![json!(["in batch"])]);
}

#[test]
fn empty_batch_is_an_invalid_request() {
    let f = Fixture::new();
    let mut c = f.client();
    let answer = c.call(&json!([]));
    assert_eq!(answer["id"], Value::Null);
    assert_eq!(answer["error"]["code"], -32600);
    // The connection stays usable.
    assert_eq!(
        c.call(&request("echo", json!(2), json!([]))),
        json!({"jsonrpc": "2.0", "id": 2, "result": []})
    );
}

#[test]
fn notification_runs_without_answer() {
    let f = Fixture::new();
    let mut c = f.client();
    c.send(r#"{"jsonrpc":"2.0","method":"note","params":["quiet"]}"#);
    c.send(r#"{"jsonrpc":"2.0","method":"fail"}"#);
    let answer = c.call(&request("echo", json!(7), json!(["loud"])));
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 7, "result": ["loud"]})
    );
    assert_eq!(*f.handler.notes.lock().unwrap(), vec![json!(["quiet"])]);
}

#[test]
fn malformed_json_is_a_parse_error_and_closes_only_that_connection() {
    let f = Fixture::new();
    let mut bad = f.client();
    let mut good = f.client();
    bad.send(r#"{"jsonrpc": "2.0", "method": }"#);
    let answer = bad.answer();
    assert_eq!(answer["id"], Value::Null);
    assert_eq!(answer["error"]["code"], -32700);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Parse error: "), "{message}");
    bad.assert_closed();
    assert_eq!(
        good.call(&request("echo", json!(1), json!(["still here"])))["result"],
        json!(["still here"])
    );
    assert_eq!(
        f.client().call(&request("echo", json!(1), json!([])))["result"],
        json!([])
    );
}

#[test]
fn oversized_incomplete_request_is_rejected_and_closed() {
    let f = Fixture::with_max(256);
    let mut c = f.client();
    c.send(&format!(
        r#"{{"jsonrpc":"2.0","method":"echo","id":1,"params":["{}"#,
        "a".repeat(300)
    ));
    let answer = c.answer();
    assert_eq!(answer["id"], Value::Null);
    assert_eq!(answer["error"]["code"], -32600);
    assert_eq!(
        answer["error"]["message"],
        "Invalid request: request larger than 256 bytes"
    );
    c.assert_closed();
}

#[test]
fn oversized_complete_request_is_rejected_and_closed() {
    let f = Fixture::with_max(256);
    let mut c = f.client();
    let small = request("echo", json!(1), json!(["ok"]));
    let big = request("echo", json!(2), json!(["b".repeat(300)]));
    c.send(&format!("{small}{big}"));
    assert_eq!(c.answer()["result"], json!(["ok"]));
    assert_eq!(c.answer()["error"]["code"], -32600);
    c.assert_closed();
}

#[test]
fn string_params_are_invalid_params() {
    let f = Fixture::new();
    let mut c = f.client();
    let answer = c.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 4, "params": "x"}));
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 4, "error": {"code": -32602, "message": "params must be an object or an array"}})
    );
}

#[test]
fn missing_method_is_an_invalid_request_with_the_id() {
    let f = Fixture::new();
    let mut c = f.client();
    let answer = c.call(&json!({"jsonrpc": "2.0", "id": 9}));
    assert_eq!(answer["id"], 9);
    assert_eq!(answer["error"]["code"], -32600);
    assert_eq!(answer["error"]["message"], "Invalid request: no method");
}

#[test]
fn malformed_envelopes_are_invalid_requests() {
    let f = Fixture::new();
    let mut c = f.client();
    let cases = [
        (
            json!({"jsonrpc": "1.0", "method": "echo", "id": 1}),
            json!(1),
        ),
        (json!({"method": "echo", "id": "a"}), json!("a")),
        (json!({"jsonrpc": "2.0", "method": 5, "id": 2}), json!(2)),
        (
            json!({"jsonrpc": "2.0", "method": "echo", "id": {}}),
            Value::Null,
        ),
        (
            json!({"jsonrpc": "2.0", "method": "echo", "id": true}),
            Value::Null,
        ),
        (json!("echo"), Value::Null),
    ];
    for (req, id) in cases {
        let answer = c.call(&req);
        assert_eq!(answer["id"], id, "{req}");
        assert_eq!(answer["error"]["code"], -32600, "{req}");
    }
}

#[test]
fn unknown_method_is_left_to_the_handler() {
    let f = Fixture::new();
    let mut c = f.client();
    let answer = c.call(&json!({"jsonrpc": "2.0", "method": "bdev_nope", "id": null}));
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32601, "message": "Method not found: bdev_nope"}})
    );
}

#[test]
fn handler_panic_is_an_internal_error_and_serving_goes_on() {
    let f = Fixture::new();
    let mut c = f.client();
    let answer = c.call(&request("panic", json!(1), json!([])));
    assert_eq!(
        answer["error"],
        json!({"code": -32603, "message": "internal error: boom"})
    );
    assert_eq!(
        c.call(&request("echo", json!(2), json!(["same"])))["result"],
        json!(["same"])
    );
    assert_eq!(
        f.client().call(&request("echo", json!(3), json!(["new"])))["result"],
        json!(["new"])
    );
}

#[test]
fn clients_are_served_concurrently() {
    let f = Fixture::new();
    let mut slow = f.client();
    let mut fast = f.client();
    slow.send(&request("slow", json!(1), json!([])).to_string());
    f.handler.wait_slow_started();
    assert_eq!(
        fast.call(&request("echo", json!(2), json!(["first"])))["result"],
        json!(["first"])
    );
    assert!(
        !f.handler.slow_finished.load(Ordering::SeqCst),
        "the fast client waited for the slow one"
    );
    assert_eq!(slow.answer()["result"], "done");
}

#[test]
fn socket_is_created_mode_0600() {
    let f = Fixture::new();
    let meta = fs::symlink_metadata(f.server.path()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
}

#[test]
fn start_refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    fs::write(&path, "precious").unwrap();
    let err = RpcServer::start(
        &path,
        Arc::new(TestHandler::default()),
        RpcOptions {
            max_request: 1024,
            ..RpcOptions::default()
        },
    )
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("not a socket"), "{message}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn start_refuses_a_live_socket() {
    let f = Fixture::new();
    let err = RpcServer::start(
        f.server.path(),
        Arc::new(TestHandler::default()),
        RpcOptions {
            max_request: 1024,
            ..RpcOptions::default()
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("already in use"), "{err:#}");
    assert_eq!(
        f.client()
            .call(&request("echo", json!(1), json!(["alive"])))["result"],
        json!(["alive"])
    );
}

#[test]
fn start_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let server = RpcServer::start(
        &path,
        Arc::new(TestHandler::default()),
        RpcOptions {
            max_request: 1024,
            ..RpcOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        Client::connect(server.path()).call(&request("echo", json!(1), json!([])))["id"],
        1
    );
}

#[test]
fn stop_removes_the_socket_and_closes_connections() {
    let mut f = Fixture::new();
    let mut c = f.client();
    // A round trip, so the connection is accepted before the stop.
    assert_eq!(c.call(&request("echo", json!(1), json!([])))["id"], 1);
    let path = f.server.path().to_owned();
    f.server.stop();
    assert!(!path.exists());
    c.assert_closed();
    f.server.stop();
    assert!(UnixStream::connect(&path).is_err());
    // The directory is otherwise untouched.
    assert_eq!(fs::read_dir(f.dir.path()).unwrap().count(), 0);
}

#[test]
fn stop_waits_for_a_running_call() {
    let mut f = Fixture::new();
    let mut c = f.client();
    c.send(&request("slow", json!(1), json!([])).to_string());
    f.handler.wait_slow_started();
    f.server.stop();
    assert!(f.handler.slow_finished.load(Ordering::SeqCst));
    // The answer may or may not have made it out before the shutdown; either way
    // the connection then ends.
    let mut rest = String::new();
    match c.reader.read_line(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
}

#[test]
fn drop_removes_the_socket() {
    let f = Fixture::new();
    let path = f.server.path().to_owned();
    drop(f.server);
    assert!(!path.exists());
}

#[test]
fn frames_are_cut_from_a_stream() {
    assert!(matches!(next_frame(b""), Frame::Incomplete));
    assert!(matches!(next_frame(b"{\"a\": [1, "), Frame::Incomplete));
    assert!(matches!(next_frame(b"{\"a\": tru"), Frame::Incomplete));
    match next_frame(b"{\"a\":1}{\"b\"") {
        Frame::Value(v, 7) => assert_eq!(v, json!({"a": 1})),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next_frame(b"{\"a\" 1}"), Frame::Invalid(_)));
    assert!(matches!(next_frame(b"}"), Frame::Invalid(_)));
}

#[test]
fn a_stream_answered_in_memory_gets_what_a_connection_would() {
    let h = TestHandler::default();
    let lines = |out: Vec<u8>| -> Vec<Value> {
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Back to back, pretty-printed, a notification (no answer), a batch, then garbage
    // that closes the stream: whatever follows it is never read.
    let input = br#"{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}
    {
      "jsonrpc": "2.0", "id": 2, "method": "fail"
    }{"jsonrpc":"2.0","method":"note","params":{"a":1}}
    [{"jsonrpc":"2.0","id":3,"method":"echo","params":{"b":2}},{"jsonrpc":"2.0","method":"note"}]
    }{"jsonrpc":"2.0","id":4,"method":"echo"}"#;
    let got = lines(answer_stream(input, &h, 1 << 20));
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0], json!({"jsonrpc": "2.0", "id": 1, "result": [1]}));
    assert_eq!(got[1]["error"]["code"], json!(-19));
    assert_eq!(
        got[2],
        json!([{"jsonrpc": "2.0", "id": 3, "result": {"b": 2}}])
    );
    assert_eq!(got[3]["error"]["code"], json!(-32700));
    assert_eq!(h.notes.lock().unwrap().len(), 2);
    // A request past the limit closes the stream with -32600; an unfinished one at the
    // end gets nothing.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"echo","params":"{}"}}"#,
        "x".repeat(200)
    );
    let got = lines(answer_stream(big.as_bytes(), &h, 100));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["error"]["code"], json!(-32600));
    assert!(answer_stream(br#"{"jsonrpc":"2.0","id":6,"meth"#, &h, 1 << 20).is_empty());
}
