//! A running target's handle and the connection it can close: what the caller and the
//! server thread share.

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vhost_user_backend::ShutdownHandle;

use super::TARGET;
use crate::fault::Faults;

/// A running target. Stopping it (or dropping it) closes the current frontend's
/// connection, stops every thread of the target and removes the socket file.
#[derive(Debug)]
pub struct TargetHandle {
    /// The socket the target listens on.
    pub socket: PathBuf,
    /// The target's fault-injection switchboard (nothing armed at start).
    pub faults: Arc<Faults>,
    pub(super) ctl: Arc<Control>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl TargetHandle {
    /// Stops serving: the current frontend (if any) sees a hang-up, the threads end and
    /// the socket file is removed. Waits for the requests being served to finish (a
    /// `Delay` fault holds an event-driven target up that long; a polling one drops the
    /// delayed request). Idempotent.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.ctl.stop.store(true, Ordering::SeqCst);
        wake(&self.ctl.wake);
        if let Some(conn) = lock(&self.ctl.current).as_ref() {
            conn.close("target stopped");
        }
        if thread.join().is_err() {
            tracing::error!(target: TARGET, socket = %self.socket.display(), "server thread panicked");
        }
        remove_socket(&self.socket);
        tracing::info!(target: TARGET, socket = %self.socket.display(), "target stopped");
    }

    /// Closes the current frontend's connection, as if the target had crashed; the
    /// target then waits for the next frontend. Does nothing when none is connected.
    pub fn disconnect(&self) {
        if let Some(conn) = lock(&self.ctl.current).as_ref() {
            conn.close("disconnect requested");
        }
    }

    /// Whether a frontend is connected now.
    pub fn is_connected(&self) -> bool {
        lock(&self.ctl.current).is_some()
    }

    /// Frontends accepted so far.
    pub fn connections(&self) -> u64 {
        self.ctl.connections.load(Ordering::Relaxed)
    }
}

impl Drop for TargetHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the handle shares with the server thread.
#[derive(Debug)]
pub(super) struct Control {
    pub(super) stop: AtomicBool,
    /// Wakes the server thread out of its wait for a connection.
    pub(super) wake: OwnedFd,
    /// The connection being served.
    pub(super) current: Mutex<Option<Arc<Conn>>>,
    pub(super) connections: AtomicU64,
}

/// One frontend connection: lets any thread close it.
#[derive(Default)]
pub(super) struct Conn {
    /// Set once the connection is being closed: the queues stop serving.
    pub(super) closing: AtomicBool,
    pub(super) slot: Mutex<ConnSlot>,
}

#[derive(Default)]
pub(super) struct ConnSlot {
    /// Known once the daemon has accepted the connection.
    shutdown: Option<ShutdownHandle>,
    /// A close was asked for before the handle was known.
    close_requested: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("closing", &self.closing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub(super) fn attach(&self, shutdown: Option<ShutdownHandle>) {
        let mut s = lock(&self.slot);
        if s.close_requested {
            if let Some(h) = &shutdown {
                h.shutdown();
            }
        }
        s.shutdown = shutdown;
    }

    /// Shuts the socket down: the frontend sees a hang-up, the daemon's request loop ends.
    pub(super) fn close(&self, why: &'static str) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            tracing::info!(target: TARGET, why, "closing the frontend connection");
        }
        let mut s = lock(&self.slot);
        s.close_requested = true;
        if let Some(h) = &s.shutdown {
            h.shutdown();
        }
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn wake(fd: &OwnedFd) {
    // Only fails when the counter would overflow, and then the reader wakes anyway.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

pub(super) fn remove_socket(path: &std::path::Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}
