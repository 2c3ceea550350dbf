//! The JSON-RPC 2.0 server of `vbdev serve`: a Unix socket, SPDK's wire behaviour.
//!
//! # Wire format
//! As SPDK's `spdk-rpc` client speaks it: a JSON stream with no framing. Requests may be
//! pretty-printed over several lines, lack a trailing newline, arrive in pieces or back to
//! back on one connection; each is parsed as soon as its last byte is in. Responses are
//! compact JSON, one per line, members in the order `jsonrpc`, `id`, `result`/`error`.
//!
//! # Protocol errors
//! Malformed JSON (-32700) and a request larger than [`RpcOptions::max_request`] (-32600)
//! get an error with `id: null`, then the connection is closed: the stream cannot be
//! resynchronised. Everything else (JSON-RPC 2.0 §4, §5, §6) is answered in place and the
//! connection stays open.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use anyhow::{Context, bail};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::pipe::{PipeFlags, pipe_with};
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, info, warn};
use vbdev_target::socket_path::{self, Existing, SocketId};

const TARGET: &str = "vbdev::rpc";

/// Bytes asked for per `read` on a connection.
const READ_CHUNK: usize = 64 * 1024;

/// How long [`RpcServer::stop`] lets the calls in progress finish and write their
/// answers before it shuts their connections down whole. Calls that wait (a
/// `bdev_get_bdevs` timeout) stop waiting when the daemon begins its shutdown.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Listen backlog of the socket.
const BACKLOG: i32 = 128;

/// How long the accept thread rests after an `accept` failure that would repeat at once
/// (`EMFILE`, `ENFILE`, `ENOMEM`), instead of spinning. `stop()` interrupts the rest.
const ACCEPT_BACKOFF: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 100_000_000,
};

/// A JSON-RPC error object (`code`, `message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpcError {
    /// SPDK's code: -32700 parse error, -32600 invalid request, -32601 method not found,
    /// -32602 invalid params, -32603 internal error, or a negative errno.
    pub code: i32,
    /// What a person reads.
    pub message: String,
}

impl RpcError {
    /// Any code.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// -32700: the bytes are not JSON (`detail` is the parser's message).
    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(-32700, format!("Parse error: {detail}"))
    }
    /// -32600: JSON, but not a valid request object (`detail` says why).
    pub fn invalid_request(detail: impl std::fmt::Display) -> Self {
        Self::new(-32600, format!("Invalid request: {detail}"))
    }
    /// -32602.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }
    /// -32603.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(-32603, message)
    }
    /// -32601.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(-32601, format!("Method not found: {method}"))
    }
}

/// What the server calls for each request. Called from the connection threads, several
/// at once.
pub trait Handler: Send + Sync + 'static {
    /// Runs `method` with `params` (`None` when the request had none).
    ///
    /// A panic is caught and answered with -32603; the server keeps running.
    ///
    /// # Errors
    /// The error object to send back.
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError>;
}

/// Server options.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    /// Largest request accepted, in bytes.
    pub max_request: usize,
    /// Connections served at once (a thread each). One more is answered with an error
    /// (-32603, `id: null`) and closed. Default 64, SPDK's limit.
    pub max_connections: usize,
    /// A connection that sends nothing for this long while no call of its own runs is
    /// closed, so that silent clients cannot hold the connections. Default 30 s.
    pub idle_timeout: std::time::Duration,
}

impl Default for RpcOptions {
    fn default() -> Self {
        Self {
            max_request: 4 << 20,
            max_connections: 64,
            idle_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// A running server: an accept thread and one thread per connection.
///
/// Dropping it stops it (see [`RpcServer::stop`]).
#[derive(Debug)]
pub struct RpcServer {
    path: PathBuf,
    /// `None` once stopped.
    running: Option<Running>,
}

/// What `stop()` takes down.
#[derive(Debug)]
struct Running {
    /// Write end of a pipe whose read end the accept thread polls: dropping it wakes the
    /// thread (POLLHUP) and tells it to quit.
    wake: OwnedFd,
    accept: JoinHandle<()>,
    conns: Arc<Registry>,
    /// The bound socket file, so that `stop()` removes only the file it created.
    socket: SocketId,
}

/// The open connections, by connection number. A connection thread removes its own
/// entry when it ends; `stop()` takes whatever is left.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Conn>>,
}

/// One open connection, as `stop()` needs it.
#[derive(Debug)]
struct Conn {
    /// A clone of the connection's socket, to `shutdown(2)` it.
    stream: UnixStream,
    thread: JoinHandle<()>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // critical section is a single insert, remove or drain), so poison is harmless.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RpcServer {
    /// Binds `path` and starts serving.
    ///
    /// The socket file is created with mode 0600 whatever the umask. An existing socket
    /// that nothing answers on (left by a crashed server) is replaced; a live one, or any
    /// other kind of file, is left alone and is an error.
    ///
    /// # Errors
    /// When the path is taken or cannot be bound.
    pub fn start(path: &Path, handler: Arc<dyn Handler>, opts: RpcOptions) -> anyhow::Result<Self> {
        if opts.max_connections == 0 || opts.idle_timeout.is_zero() {
            bail!("RPC options: max_connections and idle_timeout must be positive");
        }
        let listener = bind(path)?;
        let socket = SocketId::of(path)
            .with_context(|| format!("{}: cannot stat the new socket", path.display()));
        let started = socket.and_then(|socket| {
            let (wake_rx, wake) = pipe_with(PipeFlags::CLOEXEC).context("cannot create a pipe")?;
            let conns = Arc::new(Registry::default());
            let registry = Arc::clone(&conns);
            let accept = thread::Builder::new()
                .name("vbdev-rpc".into())
                .spawn(move || accept_loop(&listener, &wake_rx, &handler, &opts, &registry))
                .context("cannot start the RPC accept thread")?;
            Ok(Running {
                wake,
                accept,
                conns,
                socket,
            })
        });
        match started {
            Ok(running) => {
                info!(target: TARGET, path = %path.display(), "JSON-RPC server listening");
                Ok(Self {
                    path: path.to_owned(),
                    running: Some(running),
                })
            }
            Err(e) => {
                // The file is ours: we just bound it.
                let _ = fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (waiting for the calls running on them)
    /// and removes the socket. Idempotent.
    ///
    /// Called from inside a [`Handler::call`], it does not wait for that call's own
    /// connection (which would deadlock); that connection is still shut down.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        drop(running.wake);
        if running.accept.join().is_err() {
            warn!(target: TARGET, "RPC accept thread panicked");
        }
        let conns: Vec<Conn> = running.conns.lock().drain().map(|(_, c)| c).collect();
        let me = thread::current().id();
        // Reading ends first: a connection waiting for its next request ends now, one
        // whose call is running writes that call's answer, then ends. Writing ends too
        // for what is still there after a grace period: a client that does not read
        // its answers cannot hold the stop.
        for conn in &conns {
            // ENOTCONN: the peer is already gone; the thread ends by itself.
            let _ = conn.stream.shutdown(std::net::Shutdown::Read);
        }
        let grace = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < grace
            && conns
                .iter()
                .any(|c| c.thread.thread().id() != me && !c.thread.is_finished())
        {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        for conn in &conns {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        for conn in conns {
            if conn.thread.thread().id() != me && conn.thread.join().is_err() {
                warn!(target: TARGET, "RPC connection thread panicked");
            }
        }
        match fs::symlink_metadata(&self.path) {
            Ok(m) if SocketId::from_metadata(&m) == Some(running.socket) => {
                if let Err(e) = fs::remove_file(&self.path) {
                    warn!(target: TARGET, path = %self.path.display(), error = %e,
                        "cannot remove the RPC socket");
                }
            }
            Ok(_) => {
                warn!(target: TARGET, path = %self.path.display(),
                    "RPC socket was replaced by another file; leaving it");
            }
            Err(e) => {
                debug!(target: TARGET, path = %self.path.display(), error = %e,
                    "RPC socket already gone");
            }
        }
        info!(target: TARGET, path = %self.path.display(), "JSON-RPC server stopped");
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates the listening socket at `path`, mode 0600.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let shown = path.display();
    let existing = socket_path::existing(path)
        .with_context(|| format!("{shown}: cannot check the existing socket"))?;
    match existing {
        Existing::Live => bail!("{shown}: already in use by a running server"),
        Existing::Stale => {
            info!(target: TARGET, path = %shown, "removing stale RPC socket");
            fs::remove_file(path)
                .with_context(|| format!("{shown}: cannot remove the stale socket"))?;
        }
        Existing::NotSocket => bail!("{shown}: exists and is not a socket; not replacing it"),
        Existing::Nothing => {}
    }
    let addr = SocketAddrUnix::new(path).with_context(|| format!("{shown}: not a socket path"))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .context("cannot create a Unix socket")?;
    // Linux creates the socket file with the socket inode's mode minus the umask, so
    // the file is never wider than 0600, not even between bind(2) and the chmod below.
    rustix::fs::fchmod(&fd, Mode::RUSR | Mode::WUSR)
        .context("cannot set the mode of the new socket")?;
    match rustix::net::bind(&fd, &addr) {
        Ok(()) => {}
        Err(Errno::ADDRINUSE) => {
            bail!("{shown}: already in use (created by someone else just now)")
        }
        Err(e) => return Err(e).with_context(|| format!("{shown}: cannot bind")),
    }
    let listener = UnixListener::from(fd);
    // Exactly 0600, whatever the umask took away.
    let finish = fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{shown}: cannot chmod 0600"))
        .and_then(|()| {
            rustix::net::listen(&listener, BACKLOG)
                .with_context(|| format!("{shown}: cannot listen"))?;
            listener
                .set_nonblocking(true)
                .with_context(|| format!("{shown}: cannot make the socket non-blocking"))
        });
    if let Err(e) = finish {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

/// The accept thread: waits for connections or for `wake` to hang up.
fn accept_loop(
    listener: &UnixListener,
    wake: &OwnedFd,
    handler: &Arc<dyn Handler>,
    opts: &RpcOptions,
    registry: &Arc<Registry>,
) {
    let mut next_conn: u64 = 0;
    loop {
        let mut fds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => {
                warn!(target: TARGET, error = %e, "poll failed; no longer accepting RPC connections");
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let conn = next_conn;
                next_conn = next_conn.wrapping_add(1);
                if registry.lock().len() >= opts.max_connections {
                    refuse_connection(&stream, opts.max_connections, conn);
                    continue;
                }
                spawn_connection(stream, conn, handler, opts, registry);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                warn!(target: TARGET, error = %e, "accept failed");
                let mut fds = [PollFd::new(wake, PollFlags::IN)];
                match poll(&mut fds, Some(&ACCEPT_BACKOFF)) {
                    Ok(_) if !fds[0].revents().is_empty() => return,
                    _ => {}
                }
            }
        }
    }
}

/// Starts the thread of connection `conn` and registers it.
/// Answers a connection beyond `max` with an error and closes it.
fn refuse_connection(stream: &UnixStream, max: usize, conn: u64) {
    warn!(target: TARGET, conn, max, "too many RPC connections; refusing one");
    // Blocking, bounded: a full socket buffer cannot hold the accept thread.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_millis(100)));
    let error = RpcError::internal(format!(
        "too many connections ({max} open); try again when one closes"
    ));
    let _ = write_answer(stream, &Answer::One(Response::failure(Value::Null, error)));
}

fn spawn_connection(
    stream: UnixStream,
    conn: u64,
    handler: &Arc<dyn Handler>,
    opts: &RpcOptions,
    registry: &Arc<Registry>,
) {
    let max_request = opts.max_request;
    // Linux's accept(2) does not pass O_NONBLOCK on, but say what the reader needs. The
    // read timeout closes a connection that stays silent (see `RpcOptions::idle_timeout`).
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(opts.idle_timeout)))
    {
        warn!(target: TARGET, conn, error = %e, "cannot set up an RPC connection");
        return;
    }
    let shutdown_handle = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            warn!(target: TARGET, conn, error = %e, "cannot clone an RPC connection; dropping it");
            return;
        }
    };
    debug!(target: TARGET, conn, "RPC connection opened");
    let handler = Arc::clone(handler);
    let own_registry = Arc::clone(registry);
    // Held across the spawn so the thread's own `remove` cannot run before the insert.
    let mut conns = registry.lock();
    let spawned = thread::Builder::new()
        .name("vbdev-rpc-conn".into())
        .spawn(move || {
            serve_connection(&stream, handler.as_ref(), max_request, conn);
            drop(stream);
            drop(handler);
            debug!(target: TARGET, conn, "RPC connection closed");
            own_registry.lock().remove(&conn);
        });
    match spawned {
        Ok(thread) => {
            conns.insert(
                conn,
                Conn {
                    stream: shutdown_handle,
                    thread,
                },
            );
        }
        Err(e) => warn!(target: TARGET, conn, error = %e, "cannot start an RPC connection thread"),
    }
}

/// One value cut from the front of a byte stream.
#[derive(Debug)]
enum Frame {
    /// A complete JSON value and the bytes it took (leading whitespace included).
    Value(Value, usize),
    /// Only whitespace, or the start of a value: read more.
    Incomplete,
    /// Not JSON; the stream cannot be resynchronised.
    Invalid(serde_json::Error),
}

/// JSON's whitespace (RFC 8259 §2), which is narrower than `u8::is_ascii_whitespace`.
fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Cuts the first JSON value from `buf`.
fn next_frame(buf: &[u8]) -> Frame {
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match values.next() {
        None => Frame::Incomplete,
        Some(Ok(v)) => Frame::Value(v, values.byte_offset()),
        Some(Err(e)) if e.is_eof() => Frame::Incomplete,
        Some(Err(e)) => Frame::Invalid(e),
    }
}

thread_local! {
    /// The connection whose request this thread is answering, for [`client_gone`].
    static CLIENT: std::cell::RefCell<Option<UnixStream>> = const { std::cell::RefCell::new(None) };
}

/// Whether the client of the request being answered on this thread has hung up: a
/// handler that waits (`bdev_get_bdevs` with a `timeout`) stops waiting for nobody. A
/// client that sent more requests behind this one, or only shut its sending side
/// (`nc -N`), is still there: only a full hang-up counts (`POLLHUP`). `false` outside
/// a connection thread (an in-process call has no client to lose).
pub fn client_gone() -> bool {
    CLIENT.with(|c| {
        let c = c.borrow();
        let Some(stream) = c.as_ref() else {
            return false;
        };
        // HUP and ERR are reported whatever is asked for.
        let mut fds = [PollFd::new(stream, PollFlags::empty())];
        match poll(&mut fds, Some(&Timespec::default())) {
            Ok(0) => false,
            Ok(_) => fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR),
            Err(_) => false,
        }
    })
}

/// Reads, answers and writes on one connection until it closes, fails or breaks the
/// protocol.
fn serve_connection(stream: &UnixStream, handler: &dyn Handler, max_request: usize, conn: u64) {
    // What `client_gone` looks at while this thread answers; gone with the connection.
    struct Client;
    impl Drop for Client {
        fn drop(&mut self) {
            CLIENT.with(|c| c.borrow_mut().take());
        }
    }
    let _client = stream.try_clone().ok().map(|s| {
        CLIENT.with(|c| *c.borrow_mut() = Some(s));
        Client
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        match step(&mut buf, handler, max_request, conn) {
            Step::Answered(answer) => {
                if let Some(answer) = answer {
                    if let Err(e) = write_answer(stream, &answer) {
                        debug!(target: TARGET, conn, error = %e, "cannot send an RPC answer");
                        return;
                    }
                }
                continue;
            }
            Step::Close(answer) => {
                let _ = write_answer(stream, &answer);
                return;
            }
            Step::NeedMore => {}
        }
        let mut reader = stream;
        match reader.read(&mut chunk) {
            Ok(0) => {
                if !buf.is_empty() {
                    warn!(target: TARGET, conn, pending = buf.len(), "RPC connection closed in the middle of a request");
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                debug!(target: TARGET, conn, "RPC connection idle too long; closing it");
                return;
            }
            Err(e) => {
                debug!(target: TARGET, conn, error = %e, "RPC connection read failed");
                return;
            }
        }
    }
}

/// What [`step`] did with a connection's buffer.
enum Step {
    /// A request (or batch) was taken off the buffer and handled; the answer to send, if
    /// any (notifications get none).
    Answered(Option<Answer>),
    /// Nothing complete yet: read more.
    NeedMore,
    /// Send this and close: the stream cannot go on (malformed JSON, a request too large).
    Close(Answer),
}

/// Takes the next request off `buf` (whitespace before it dropped) and answers it, or
/// says to read more or to close; the protocol of one connection, without its socket.
fn step(buf: &mut Vec<u8>, handler: &dyn Handler, max_request: usize, conn: u64) -> Step {
    let blank = buf
        .iter()
        .position(|&b| !is_json_whitespace(b))
        .unwrap_or(buf.len());
    buf.drain(..blank);
    let oversized = || {
        warn!(target: TARGET, conn, max_request, "JSON-RPC request too large; closing the connection");
        let error = RpcError::invalid_request(format!("request larger than {max_request} bytes"));
        Step::Close(Answer::One(Response::failure(Value::Null, error)))
    };
    match next_frame(buf) {
        Frame::Value(_, len) if len > max_request => oversized(),
        Frame::Value(value, len) => {
            buf.drain(..len);
            Step::Answered(answer_message(handler, value, conn))
        }
        Frame::Incomplete if buf.len() > max_request => oversized(),
        Frame::Incomplete => Step::NeedMore,
        Frame::Invalid(e) => {
            warn!(target: TARGET, conn, error = %e, "malformed JSON-RPC request; closing the connection");
            Step::Close(Answer::One(Response::failure(
                Value::Null,
                RpcError::parse_error(&e),
            )))
        }
    }
}

/// Answers `input` as one connection whose client sent it and then closed would be
/// answered, in memory: every complete request or batch in order, then the answer that
/// closes the stream if one does (malformed JSON, a request over `max_request`); an
/// incomplete request at the end gets nothing. Returns the answer lines as sent (each
/// ends with a newline). For tests and fuzzing of the wire protocol without a socket.
pub fn answer_stream(input: &[u8], handler: &dyn Handler, max_request: usize) -> Vec<u8> {
    let mut buf = input.to_vec();
    let mut out = Vec::new();
    let mut put = |answer: &Answer| {
        if let Ok(mut bytes) = serde_json::to_vec(answer) {
            bytes.push(b'\n');
            out.extend_from_slice(&bytes);
        }
    };
    loop {
        match step(&mut buf, handler, max_request, 0) {
            Step::Answered(Some(answer)) => put(&answer),
            Step::Answered(None) => {}
            Step::Close(answer) => {
                put(&answer);
                break;
            }
            Step::NeedMore => break,
        }
    }
    out
}

/// A response object; the field order is the member order on the wire.
#[derive(Debug, Serialize)]
struct Response {
    jsonrpc: &'static str,
    id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
}

impl Response {
    fn new(id: Value, outcome: Result<Value, RpcError>) -> Self {
        let (result, error) = match outcome {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            jsonrpc: "2.0",
            id,
            result,
            error,
        }
    }
    fn failure(id: Value, error: RpcError) -> Self {
        Self::new(id, Err(error))
    }
}

/// What goes back for one JSON value read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Answer {
    One(Response),
    Batch(Vec<Response>),
}

fn write_answer(stream: &UnixStream, answer: &Answer) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(answer).unwrap_or_else(|e| {
        // Cannot happen (a `Value` always serializes), but never leave a peer waiting.
        format!(
            r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32603,"message":{}}}}}"#,
            Value::String(format!("internal error: cannot serialize the answer: {e}"))
        )
        .into_bytes()
    });
    bytes.push(b'\n');
    let mut writer = stream;
    writer.write_all(&bytes)
}

/// Answers one JSON value: a request or a batch. `None` when nothing is to be sent
/// (notifications).
fn answer_message(handler: &dyn Handler, message: Value, conn: u64) -> Option<Answer> {
    match message {
        Value::Array(requests) if requests.is_empty() => {
            warn!(target: TARGET, conn, "empty JSON-RPC batch");
            Some(Answer::One(Response::failure(
                Value::Null,
                RpcError::invalid_request("empty batch"),
            )))
        }
        Value::Array(requests) => {
            let responses: Vec<Response> = requests
                .into_iter()
                .filter_map(|r| answer_request(handler, r, conn))
                .collect();
            // JSON-RPC 2.0 §6: a batch of notifications gets nothing back.
            (!responses.is_empty()).then_some(Answer::Batch(responses))
        }
        request => answer_request(handler, request, conn).map(Answer::One),
    }
}

/// Validates and runs one request (JSON-RPC 2.0 §4). `None` for a notification.
fn answer_request(handler: &dyn Handler, request: Value, conn: u64) -> Option<Response> {
    let invalid = |id: Value, detail: &str| {
        warn!(target: TARGET, conn, %id, detail, "invalid JSON-RPC request");
        Some(Response::failure(id, RpcError::invalid_request(detail)))
    };
    let Value::Object(mut request) = request else {
        return invalid(Value::Null, "not an object");
    };
    // `None`: no `id` member, a notification (§4.1).
    let id = match request.remove("id") {
        None => None,
        Some(id @ (Value::Number(_) | Value::String(_) | Value::Null)) => Some(id),
        Some(_) => return invalid(Value::Null, "id must be a number, a string or null"),
    };
    let echo = id.clone().unwrap_or(Value::Null);
    if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(echo, "jsonrpc must be \"2.0\"");
    }
    let method = match request.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return invalid(echo, "method must be a string"),
        None => return invalid(echo, "no method"),
    };
    let params = match request.remove("params") {
        None => Ok(None),
        Some(p @ (Value::Object(_) | Value::Array(_))) => Ok(Some(p)),
        Some(_) => Err(RpcError::invalid_params(
            "params must be an object or an array",
        )),
    };
    debug!(target: TARGET, conn, method, id = %IdField(id.as_ref()), "JSON-RPC request");
    let outcome = params.and_then(|params| call_guarded(handler, &method, params, conn));
    match id {
        Some(id) => Some(Response::new(id, outcome)),
        None => {
            if let Err(e) = outcome {
                debug!(target: TARGET, conn, method, code = e.code, message = e.message,
                    "JSON-RPC notification failed (not answered)");
            }
            None
        }
    }
}

/// Shows a request id in logs, `-` for a notification.
struct IdField<'a>(Option<&'a Value>);

impl std::fmt::Display for IdField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("-"),
        }
    }
}

/// Runs the handler, turning a panic into -32603.
fn call_guarded(
    handler: &dyn Handler,
    method: &str,
    params: Option<Value>,
    conn: u64,
) -> Result<Value, RpcError> {
    match panic::catch_unwind(AssertUnwindSafe(|| handler.call(method, params))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("unknown panic payload");
            warn!(target: TARGET, conn, method, panic = message, "RPC handler panicked");
            Err(RpcError::internal(format!("internal error: {message}")))
        }
    }
}

#[cfg(test)]
mod tests;
