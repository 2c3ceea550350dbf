//! The management daemon of `vbdev serve`, as a library the binary runs and tests drive
//! in-process: [`Daemon`] holds the state (local bdevs, virtio devices, vhost
//! controllers) and answers SPDK's JSON-RPC methods ([`Daemon::call`]); [`RpcServer`]
//! serves them on a Unix socket as SPDK's `rpc.py` speaks them; [`ini`] converts SPDK's
//! legacy INI config into the same calls.
//!
//! What the binary adds around it (`crates/vbdev/src/serve.rs`): the command line, the
//! DMA memory set-up, signals, and the order of start-up and shutdown.

#![forbid(unsafe_code)]

pub mod daemon;
pub mod ini;
pub mod rpc;

pub use daemon::{Daemon, read_json};
pub use rpc::{Handler, RpcError, RpcOptions, RpcServer, answer_stream, client_gone};
