use super::*;

use std::os::unix::net::UnixListener;
use std::thread;

use serde_json::json;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn params(p: Option<&str>, list: &[&str]) -> anyhow::Result<Option<Value>> {
    build_params(p, &args(list))
}

#[test]
fn no_params_at_all_omits_params() {
    assert_eq!(params(None, &[]).unwrap(), None);
    let req = Request {
        jsonrpc: "2.0",
        method: "bdev_get_bdevs",
        id: 1,
        params: None,
    };
    assert_eq!(
        serde_json::to_string(&req).unwrap(),
        r#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}"#
    );
}

#[test]
fn keys_lose_dashes_and_values_keep_json_types() {
    let p = params(
        None,
        &[
            "--name",
            "VirtioBlk0",
            "--vq-count",
            "2",
            "--ratio",
            "-1.5",
            "--on",
            "true",
            "--none",
            "null",
            "--list",
            "[1,\"a\"]",
            "--obj",
            "{\"k\":1}",
        ],
    )
    .unwrap();
    assert_eq!(
        p,
        Some(json!({
            "name": "VirtioBlk0", "vq_count": 2, "ratio": -1.5, "on": true, "none": null,
            "list": [1, "a"], "obj": {"k": 1},
        }))
    );
}

#[test]
fn values_that_are_not_json_or_are_json_strings_stay_text() {
    let p = params(
        None,
        &[
            "--a",
            "0x10",
            "--b",
            "\"quoted\"",
            "--c",
            "/var/tmp/x.sock",
            "--d",
            "",
        ],
    )
    .unwrap();
    assert_eq!(
        p,
        Some(json!({"a": "0x10", "b": "\"quoted\"", "c": "/var/tmp/x.sock", "d": ""}))
    );
}

#[test]
fn flag_without_value_is_true() {
    let p = params(None, &["--hotplug", "--period-us", "5", "--last"]).unwrap();
    assert_eq!(
        p,
        Some(json!({"hotplug": true, "period_us": 5, "last": true}))
    );
}

#[test]
fn key_equals_value_form_allows_dashed_values() {
    let p = params(None, &["--name=--odd", "--n=3"]).unwrap();
    assert_eq!(p, Some(json!({"name": "--odd", "n": 3})));
}

#[test]
fn pairs_merge_over_params_object() {
    let p = params(Some(r#"{"name": "a", "keep": [1]}"#), &["--name", "b"]).unwrap();
    assert_eq!(p, Some(json!({"name": "b", "keep": [1]})));
    assert_eq!(params(Some("{}"), &[]).unwrap(), Some(json!({})));
}

#[test]
fn params_must_be_a_json_object() {
    let e = params(Some("[1]"), &[]).unwrap_err().to_string();
    assert!(e.contains("--params must be a JSON object"), "{e}");
    let e = params(Some("{nope"), &[]).unwrap_err().to_string();
    assert!(e.contains("--params is not valid JSON"), "{e}");
}

#[test]
fn stray_values_are_usage_errors() {
    let e = params(None, &["VirtioBlk0"]).unwrap_err().to_string();
    assert!(e.contains("\"VirtioBlk0\""), "{e}");
    assert!(params(None, &["--a", "1", "2"]).is_err());
    assert!(params(None, &["--"]).is_err());
    assert!(params(None, &["--=x"]).is_err());
}

#[test]
fn timeout_must_be_positive() {
    assert_eq!(parse_timeout(0.5).unwrap(), Duration::from_millis(500));
    assert!(parse_timeout(0.0).is_err());
    assert!(parse_timeout(-1.0).is_err());
    assert!(parse_timeout(f64::NAN).is_err());
    // Bounded: a day at most (9223372036854775807 s overflowed the deadline: a panic).
    assert_eq!(parse_timeout(86400.0).unwrap(), Duration::from_secs(86400));
    assert!(parse_timeout(86400.5).is_err());
    assert!(parse_timeout(9.223_372_036_854_776e18).is_err());
    assert!(parse_timeout(f64::INFINITY).is_err());
}

#[test]
fn string_lists_print_one_per_line_and_the_rest_as_pretty_json() {
    assert_eq!(
        format_result(&json!(["VirtioScsi0t0", "VirtioScsi0t1"])),
        "VirtioScsi0t0\nVirtioScsi0t1\n"
    );
    assert_eq!(format_result(&json!([])), "[]\n");
    assert_eq!(format_result(&json!(true)), "true\n");
    assert_eq!(format_result(&json!(["a", 1])), "[\n  \"a\",\n  1\n]\n");
    assert_eq!(
        format_result(&json!({"name": "Malloc0"})),
        "{\n  \"name\": \"Malloc0\"\n}\n"
    );
}

#[test]
fn error_answers_become_failures_naming_method_and_code() {
    let answer = json!({"jsonrpc": "2.0", "id": 1,
            "error": {"code": -19, "message": "No such device"}});
    let e = interpret("bdev_virtio_detach_controller", answer).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bdev_virtio_detach_controller failed: No such device (code -19)"
    );
    // A protocol error comes back with id null; it is still the answer.
    let answer = json!({"jsonrpc": "2.0", "id": null,
            "error": {"code": -32700, "message": "Parse error: x"}});
    assert!(
        interpret("m", answer)
            .unwrap_err()
            .to_string()
            .contains("(code -32700)")
    );
}

#[test]
fn results_are_checked_against_the_request_id() {
    let ok = json!({"jsonrpc": "2.0", "id": 1, "result": [1]});
    assert_eq!(interpret("m", ok).unwrap(), json!([1]));
    assert!(interpret("m", json!({"jsonrpc": "2.0", "id": 2, "result": 1})).is_err());
    assert!(interpret("m", json!({"jsonrpc": "2.0", "id": 1})).is_err());
    assert!(interpret("m", json!([1])).is_err());
}

#[test]
fn answer_is_read_as_a_stream_without_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        // The request is one compact object; read up to its closing brace.
        while got.last() != Some(&b'}') || serde_json::from_slice::<Value>(&got).is_err() {
            s.read_exact(&mut byte).unwrap();
            got.push(byte[0]);
        }
        // A pretty-printed answer in two writes, no newline, connection left open.
        s.write_all(b"{\n  \"jsonrpc\": \"2.0\",\n  \"id\": 1,\n")
            .unwrap();
        s.flush().unwrap();
        s.write_all(b"  \"result\": [\"VirtioBlk0\"]\n}").unwrap();
        let mut rest = Vec::new();
        // Wait for the client to hang up.
        let _ = s.read_to_end(&mut rest);
        got
    });
    let answer = call(
        &path,
        br#"{"jsonrpc":"2.0","method":"m","id":1}"#,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 1, "result": ["VirtioBlk0"]})
    );
    let sent = server.join().unwrap();
    assert_eq!(sent, br#"{"jsonrpc":"2.0","method":"m","id":1}"#);
}

#[test]
fn silent_server_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // Connections wait in the backlog, never answered.
    let _listener = UnixListener::bind(&path).unwrap();
    let e = call(&path, b"{}", Duration::from_millis(100)).unwrap_err();
    assert!(e.to_string().contains("no answer from"), "{e:#}");
}

#[test]
fn missing_socket_names_the_path_and_the_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing.sock");
    let e = format!(
        "{:#}",
        call(&path, b"{}", Duration::from_secs(1)).unwrap_err()
    );
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("No such file or directory"), "{e}");
}
