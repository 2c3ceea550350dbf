//! `vbdev rpc`: a small JSON-RPC client for `vbdev serve` (and SPDK).
//!
//! It speaks as SPDK's `spdk-rpc` does: one connection per call, `id` 1, `params`
//! omitted when there are none, and the answer read as a JSON stream (no newline needed).
//! A result that is a list of strings prints one per line; any other result prints as
//! indented JSON.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::Failure;
use crate::cli::RpcArgs;

/// The `id` of every request, as spdk-rpc sends it.
const REQUEST_ID: u64 = 1;

/// Runs `vbdev rpc`.
///
/// # Errors
/// [`Failure::usage`] for bad params or timeout; [`Failure::run`] when the server cannot
/// be reached, does not answer in time, or answers with a JSON-RPC error.
pub fn run(args: RpcArgs) -> Result<(), Failure> {
    let params = build_params(args.params.as_deref(), &args.args).map_err(Failure::usage)?;
    let timeout = parse_timeout(args.timeout).map_err(Failure::usage)?;
    let request = Request {
        jsonrpc: "2.0",
        method: &args.method,
        id: REQUEST_ID,
        params,
    };
    let request = serde_json::to_vec(&request)
        .context("cannot encode the request")
        .map_err(Failure::run)?;
    let answer = call(&args.server, &request, timeout).map_err(Failure::run)?;
    let result = interpret(&args.method, answer).map_err(Failure::run)?;
    let mut out = io::stdout().lock();
    out.write_all(format_result(&result).as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
        .map_err(Failure::run)
}

/// A request; the field order is the member order on the wire.
#[derive(Debug, Serialize)]
struct Request<'a> {
    jsonrpc: &'static str,
    method: &'a str,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Value>,
}

/// Longest `--timeout`: a day. A deadline that far is "wait", and `Instant + Duration`
/// overflows somewhere past it (`-t 9223372036854775807` panicked).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `--timeout` as a duration.
fn parse_timeout(seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
        .ok_or_else(|| {
            anyhow!("--timeout {seconds} is not a number of seconds above 0 and at most 86400")
        })
}

/// Builds `params` from `--params JSON` and the trailing `--key value` pairs (which win
/// over `--params` on the same key). `None` when neither gives anything.
///
/// A key loses its leading `--` and has `-` turned into `_`; `--key=value` also works
/// (the way to pass a value that starts with `--`). A value is sent as JSON if it parses
/// as a number, `true`, `false`, `null`, an array or an object, else as a string. A key
/// followed by another key, or by nothing, is `true`.
fn build_params(params: Option<&str>, args: &[String]) -> anyhow::Result<Option<Value>> {
    let mut map: Option<Map<String, Value>> = match params {
        None => None,
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(m)) => Some(m),
            Ok(other) => bail!("--params must be a JSON object, not {other}"),
            Err(e) => bail!("--params is not valid JSON: {e}"),
        },
    };
    let mut args = args.iter().peekable();
    while let Some(arg) = args.next() {
        let Some(name) = arg.strip_prefix("--") else {
            bail!("unexpected argument {arg:?}: params go as --key value pairs (or --params JSON)");
        };
        let (name, inline) = match name.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (name, None),
        };
        if name.is_empty() {
            bail!("{arg:?} has no key name: params go as --key value pairs");
        }
        let value = match inline {
            Some(text) => param_value(text),
            None => args
                .next_if(|next| !next.starts_with("--"))
                .map_or(Value::Bool(true), |text| param_value(text)),
        };
        map.get_or_insert_default()
            .insert(name.replace('-', "_"), value);
    }
    Ok(map.map(Value::Object))
}

/// A `--key value` value: JSON unless it is a string (or not JSON), then the text as is.
fn param_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::String(_)) | Err(_) => Value::String(text.to_owned()),
        Ok(value) => value,
    }
}

/// Sends `request` to `server` and reads the first JSON value that comes back.
fn call(server: &Path, request: &[u8], timeout: Duration) -> anyhow::Result<Value> {
    let shown = server.display();
    let deadline = Instant::now() + timeout;
    let mut stream =
        UnixStream::connect(server).with_context(|| format!("cannot connect to {shown}"))?;
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.write_all(request))
        .with_context(|| format!("cannot send the request to {shown}"))?;
    let no_answer = || anyhow!("no answer from {shown} within {} s", timeout.as_secs_f64());
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        match values.next() {
            Some(Ok(answer)) => return Ok(answer),
            Some(Err(e)) if !e.is_eof() => bail!("invalid answer from {shown}: {e}"),
            // Nothing yet, or the start of a value.
            _ => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_answer());
        }
        stream
            .set_read_timeout(Some(left))
            .with_context(|| format!("cannot set a read timeout on {shown}"))?;
        match stream.read(&mut chunk) {
            Ok(0) if buf.iter().all(u8::is_ascii_whitespace) => {
                bail!("{shown} closed the connection without answering")
            }
            Ok(0) => bail!("{shown} closed the connection in the middle of its answer"),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(no_answer());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read the answer from {shown}"));
            }
        }
    }
}

/// Takes the result out of a response, or turns its error object into the command's
/// failure.
fn interpret(method: &str, answer: Value) -> anyhow::Result<Value> {
    let Value::Object(mut answer) = answer else {
        bail!("invalid answer (not a JSON-RPC response object): {answer}");
    };
    if let Some(error) = answer.remove("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned);
        return Err(match error.get("code").and_then(Value::as_i64) {
            Some(code) => anyhow!("{method} failed: {message} (code {code})"),
            None => anyhow!("{method} failed: {message}"),
        });
    }
    match answer.get("id") {
        Some(id) if id.as_u64() == Some(REQUEST_ID) => {}
        Some(id) => bail!("invalid answer: id {id}, expected {REQUEST_ID}"),
        None => bail!("invalid answer: no id"),
    }
    answer
        .remove("result")
        .ok_or_else(|| anyhow!("invalid answer: neither result nor error"))
}

/// What `vbdev rpc` prints for a result, newline included: a non-empty list of strings
/// one per line (as spdk-rpc does), anything else as indented JSON.
fn format_result(result: &Value) -> String {
    if let Value::Array(items) = result {
        let lines: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
        if let Some(lines) = lines.filter(|l| !l.is_empty()) {
            return lines.iter().map(|l| format!("{l}\n")).collect();
        }
    }
    // A `Value` always serializes; `Display` is the compact fallback all the same.
    let text = serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string());
    format!("{text}\n")
}

#[cfg(test)]
mod tests;
