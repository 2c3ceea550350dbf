//! Fuzzes the JSON-RPC wire protocol of `vbdev serve` (framing of a byte stream,
//! request and batch validation, answers) with any bytes a client could send: no panic,
//! every answer a line of JSON-RPC 2.0, and the stream closed only with an error
//! answer. The handler echoes its params, so the protocol layer is what runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vbdev_daemon::{Handler, RpcError, answer_stream};

struct Echo;

impl Handler for Echo {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match method {
            "fail" => Err(RpcError::new(-19, "No such device")),
            _ => Ok(params.unwrap_or(Value::Null)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // A small limit, so that the oversized path is reached too.
    let out = answer_stream(data, &Echo, 4096);
    let text = std::str::from_utf8(&out).expect("answers are UTF-8");
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("each answer is one JSON value");
        let one = |r: &Value| {
            assert_eq!(r["jsonrpc"], "2.0", "{line}");
            assert!(r.get("result").is_some() != r.get("error").is_some(), "{line}");
        };
        match &v {
            Value::Array(rs) => {
                assert!(!rs.is_empty(), "{line}");
                rs.iter().for_each(one);
            }
            r => one(r),
        }
    }
});
