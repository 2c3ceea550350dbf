//! Taking a Unix socket path for a listener without taking it from anybody: what is
//! at the path now, and the identity of the socket file bound there, so that only the
//! file one bound is removed. Used by the targets and by `vbdev serve`'s RPC server.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// What a path holds before a listener is bound there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Nothing.
    Nothing,
    /// A socket nobody listens on (its listener is gone): it may be replaced.
    Stale,
    /// A socket some process listens on: a connect succeeds, or finds its backlog full.
    Live,
    /// Another kind of file.
    NotSocket,
}

/// Looks at `path`. A live listener sees the probe as a client that connects and
/// leaves at once.
///
/// # Errors
/// When the path cannot be looked at, or a connect fails for another reason than a
/// refusal (permissions, say): then it cannot be told whether the socket is live, and
/// it is not to be replaced.
pub fn existing(path: &Path) -> io::Result<Existing> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Ok(Existing::Live),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Existing::Live),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Existing::Stale),
            Err(e) => Err(e),
        },
        Ok(_) => Ok(Existing::NotSocket),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Existing::Nothing),
        Err(e) => Err(e),
    }
}

/// Device and inode of the socket file at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
}

impl SocketId {
    /// The socket file at `path`, if there is one.
    pub fn of(path: &Path) -> Option<Self> {
        Self::from_metadata(&std::fs::symlink_metadata(path).ok()?)
    }

    /// The socket file `meta` describes (`symlink_metadata`); `None` for another kind.
    pub fn from_metadata(meta: &std::fs::Metadata) -> Option<Self> {
        meta.file_type().is_socket().then(|| Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes the file at `path` if it is still this socket (another process may have
    /// replaced a socket it found stale). Returns whether it did.
    pub fn remove_if_at(self, path: &Path) -> bool {
        Self::of(path) == Some(self) && std::fs::remove_file(path).is_ok()
    }
}
