//! The vring the server hands to vhost-user-backend: its `VringRwLock`, plus a
//! used-buffer notification kept for the driver while the ring has no call eventfd.
//!
//! A frontend may start and enable a ring before it sends the ring's call eventfd.
//! QEMU 7.2 does so whenever it starts a vhost-user-scsi device (a guest driver
//! binding, or rebinding after a reset): `vhost_dev_start` sends `SET_VRING_KICK` and
//! `SET_VRING_ENABLE 1` for every queue, and only then does `vhost_scsi_common_start`
//! unmask the queues, which sends `SET_VRING_CALL`. Meanwhile the guest is running, and
//! the target may complete its first request before it has an eventfd to signal. The
//! notification then goes to the next call eventfd the frontend sets, so the driver
//! still learns about the completion (a spurious one is harmless: virtio 1.2 §2.7.10,
//! the driver looks at the used ring). Without this the completion sat on the used ring
//! with no interrupt, and the guest's SCSI scan hung after about one rebind in eight.
//!
//! It also counts the ring's starts ([`Vring::epoch`]): a poller that serves several
//! rings learns from it that one of them was (re)started or (re)enabled since it last
//! looked, and sets it up for polling again.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};

use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::{Error as VirtQueError, QueueT};
use vm_memory::GuestMemoryAtomic;

use super::{Mem, TARGET};

type M = GuestMemoryAtomic<Mem>;

/// One virtqueue's vhost-user state (a `VringRwLock`) that keeps a notification the
/// driver is owed when the frontend has not set a call eventfd yet, and signals it on
/// the next `SET_VRING_CALL`.
#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<M>,
    /// A used-buffer notification was due while the ring had no call eventfd. Read
    /// and written only under the ring's lock (see [`Vring::set_call`]).
    owed: Arc<AtomicBool>,
    /// Bumped after each `set_queue_ready(true)` and `set_enabled(true)`.
    epoch: Arc<AtomicU32>,
}

impl Vring {
    /// How many times the ring was made ready or enabled. Bumped after the change: a
    /// reader that sees the new value (Acquire) sees the ring's new state, and one that
    /// saw the old value looks again once it sees the new one.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the ring runs: enabled and ready (started, not stopped by
    /// `GET_VRING_BASE`).
    pub fn is_running(&self) -> bool {
        let state = self.inner.get_ref();
        state.is_enabled() && state.get_queue().ready()
    }

    /// Whether a notification is waiting for a call eventfd.
    #[cfg(test)]
    fn is_owed(&self) -> bool {
        let _state = self.inner.get_ref();
        self.owed.load(Ordering::Relaxed)
    }
}

impl<'a> VringStateGuard<'a, M> for Vring {
    type G = RwLockReadGuard<'a, VringState<M>>;
}

impl<'a> VringStateMutGuard<'a, M> for Vring {
    type G = RwLockWriteGuard<'a, VringState<M>>;
}

impl VringT<M> for Vring {
    fn new(mem: M, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(Self {
            inner: VringRwLock::new(mem, max_queue_size)?,
            owed: Arc::new(AtomicBool::new(false)),
            epoch: Arc::new(AtomicU32::new(0)),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, M>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, M>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }

    /// Signals the call eventfd, or, when the frontend has not set one, keeps the
    /// notification for the next one ([`Vring::set_call`]).
    fn signal_used_queue(&self) -> io::Result<()> {
        let state = self.inner.get_ref();
        match state.get_call() {
            Some(call) => call.notify(),
            None => {
                // Relaxed: under the ring's read lock; `set_call` replaces the eventfd
                // under the write lock and only then looks at the flag, so either this
                // store happens before that look, or this call saw the new eventfd.
                self.owed.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled);
        if enabled {
            self.epoch.fetch_add(1, Ordering::Release);
        }
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready);
        if ready {
            self.epoch.fetch_add(1, Ordering::Release);
        }
    }

    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    /// Sets the call eventfd (`SET_VRING_CALL`); signals the new one at once when a
    /// notification is owed (a completion published while there was none).
    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file);
        let state = self.inner.get_ref();
        // Relaxed: see `signal_used_queue`; the ring's lock orders the two.
        if state.get_call().is_some() && self.owed.swap(false, Ordering::Relaxed) {
            tracing::debug!(target: TARGET, "used buffers published before SET_VRING_CALL: signalling the new call eventfd");
            if let Err(e) = state.signal_used_queue() {
                tracing::warn!(target: TARGET, error = %e, "cannot signal the used ring");
            }
        }
    }

    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::OwnedFd;

    use rustix::event::{EventfdFlags, eventfd};

    fn vring() -> Vring {
        Vring::new(GuestMemoryAtomic::new(Mem::new()), 64).unwrap()
    }

    /// A nonblocking eventfd and a `File` on the same eventfd (what SET_VRING_CALL
    /// carries).
    fn call_fd() -> (OwnedFd, File) {
        let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap();
        let file = File::from(fd.try_clone().unwrap());
        (fd, file)
    }

    fn count(fd: &OwnedFd) -> u64 {
        let mut b = [0u8; 8];
        match rustix::io::read(fd, &mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            Ok(n) => panic!("short eventfd read: {n}"),
            Err(rustix::io::Errno::AGAIN) => 0,
            Err(e) => panic!("eventfd read: {e}"),
        }
    }

    #[test]
    fn signal_without_call_fd_goes_to_the_next_call_fd() {
        let v = vring();
        v.signal_used_queue().unwrap();
        assert!(v.is_owed());
        let (fd, file) = call_fd();
        v.set_call(Some(file));
        assert_eq!(count(&fd), 1, "the owed notification");
        assert!(!v.is_owed());
        v.signal_used_queue().unwrap();
        assert_eq!(count(&fd), 1);
    }

    #[test]
    fn call_fd_without_owed_notification_is_not_signalled() {
        let v = vring();
        let (fd, file) = call_fd();
        v.set_call(Some(file));
        assert_eq!(count(&fd), 0);
    }

    #[test]
    fn removing_the_call_fd_keeps_the_owed_notification() {
        let v = vring();
        v.signal_used_queue().unwrap();
        v.set_call(None);
        assert!(v.is_owed());
        let (fd, file) = call_fd();
        v.set_call(Some(file));
        assert_eq!(count(&fd), 1);
    }
}
