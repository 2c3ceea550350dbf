//! Completing chains a device kept, from any thread.

use std::sync::Arc;

use vhost_user_backend::VringT;
use virtio_queue::{QueueT, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

use super::vring::Vring;
use super::{Chain, Conn, Mem, TARGET};

/// Completes chains a device kept ([`Device::serve`](super::Device::serve) returned `None`), from any thread:
/// writes the answer, puts the chain on the used ring and signals the driver if it
/// asked for it. Valid for one connection: once it is closing, or the ring is stopped
/// or disabled, nothing more is completed.
#[derive(Clone)]
pub struct Completer {
    pub(super) queue: u16,
    pub(super) vring: Vring,
    pub(super) mem: GuestMemoryAtomic<Mem>,
    pub(super) conn: Arc<Conn>,
}

impl std::fmt::Debug for Completer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completer")
            .field("queue", &self.queue)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Completer {
    /// The queue this completer completes chains of.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Whether chains can still be completed: the connection is open and the ring is
    /// ready and enabled.
    pub fn is_live(&self) -> bool {
        !self.conn.is_closing() && self.vring.is_running()
    }

    /// Writes `data` at the start of `chain`'s writable buffers, through the current
    /// memory map, then puts the chain on the used ring with the bytes written as its
    /// length and signals the driver when it asked for it (virtio 1.2 §2.7.8, §2.7.10).
    /// Returns whether the chain was completed; `false` (chain dropped) when the
    /// completer is no longer live, the writable buffers are outside the driver's
    /// memory or shorter than `data`.
    pub fn complete(&self, chain: Chain, data: &[u8]) -> bool {
        use std::io::Write;
        let head = chain.head_index();
        let mem = self.mem.memory();
        let mut w = match Writer::new(&*mem, chain) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(target: TARGET, queue = self.queue, head, error = %e, "kept chain outside the shared memory");
                return false;
            }
        };
        if w.available_bytes() < data.len() || w.write_all(data).is_err() {
            tracing::debug!(target: TARGET, queue = self.queue, head, len = data.len(), "kept chain too short");
            return false;
        }
        // Fits: data.len() <= available_bytes(), which is at most a chain's u32 lengths
        // summed by virtio-queue into a usize checked against u32.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        {
            // Under the ring's write lock, so a GET_VRING_BASE (which marks the queue not
            // ready under the same lock) is either before this check or after the entry.
            let mut state = self.vring.get_mut();
            if self.conn.is_closing() || !state.is_enabled() || !state.get_queue().ready() {
                return false;
            }
            if let Err(e) = state.get_queue_mut().add_used(&*mem, head, len) {
                tracing::warn!(target: TARGET, queue = self.queue, head, error = %e, "cannot complete kept chain");
                return false;
            }
        }
        match self.vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = self.vring.signal_used_queue() {
                    tracing::warn!(target: TARGET, queue = self.queue, error = %e, "cannot signal the used ring");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(target: TARGET, queue = self.queue, error = %e, "cannot read used_event");
            }
        }
        tracing::trace!(target: TARGET, queue = self.queue, head, len, "kept chain completed");
        true
    }
}
