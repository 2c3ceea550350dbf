//! The vhost-user messages of a connection (rust-vmm's [`VhostUserBackend`] for a
//! [`Session`]): features, configuration space, memory table, ring setup and the kick
//! events that start serving. The serving itself is the session's, in `server.rs`.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::vring::Vring;
use super::{Device, Mem, Session, TARGET, lock};

/// The `GET_CONFIG` reply for `size` bytes from `offset` of `space`: the bytes that lie in
/// the space, then zeros up to `size`; `None` when `offset` is beyond the space.
///
/// A frontend may ask for more than the device type's struct: SPDK's virtio-user
/// initiator always asks for 256 bytes from 0 (`VHOST_USER_MAX_CONFIG_SIZE`) and wants a
/// reply of exactly that size, as SPDK's and QEMU's targets give it. The vhost-user spec
/// lets the reply carry the requested size (vhost-user, "VHOST_USER_GET_CONFIG"); bytes
/// past the struct read as zero, as reserved fields do (virtio 1.2 §2.5). The `vhost`
/// crate bounds `offset + size` by `VHOST_USER_CONFIG_SIZE` before this is called.
pub fn config_reply(space: &[u8], offset: u32, size: u32) -> Option<Vec<u8>> {
    let start = usize::try_from(offset).ok()?;
    if start >= space.len() {
        return None;
    }
    let size = usize::try_from(size).ok()?;
    let mut reply = vec![0u8; size];
    let have = (space.len() - start).min(size);
    reply[..have].copy_from_slice(&space[start..start + have]);
    Some(reply)
}

impl<D: Device> VhostUserBackend for Session<D> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.device.num_queues())
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.device.max_queue_size())
    }

    fn features(&self) -> u64 {
        let mut f = self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.quirks.no_event_idx {
            f &= !vbdev_virtio::device::features::RING_EVENT_IDX;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.quirks.no_config {
            f.remove(VhostUserProtocolFeatures::CONFIG);
        }
        if self.quirks.no_mem_slots {
            f.remove(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        }
        if self.quirks.no_mq {
            f.remove(VhostUserProtocolFeatures::MQ);
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.device.set_features(features);
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The daemon sets it on each vring, which is all that uses it.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        match config_reply(&self.device.config(), offset, size) {
            Some(v) => v,
            None => {
                tracing::warn!(target: TARGET, offset, size, "GET_CONFIG outside the configuration space");
                Vec::new()
            }
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.device.set_config(offset, buf)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        // The daemon updated the GuestMemoryAtomic this session shares with it; the
        // pollers' kept maps are stale from now on.
        self.mem_epoch.fetch_add(1, Ordering::Release);
        if self.quirks.mem_table_us_per_mib > 0 {
            use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
            let mib = mem.memory().iter().map(|r| r.len()).sum::<u64>() >> 20;
            let us = mib.saturating_mul(u64::from(self.quirks.mem_table_us_per_mib));
            tracing::debug!(target: TARGET, mib, us, "memory table: slow registration (quirk)");
            // The stand-in for SPDK's page-by-page registration: the reply is late by
            // design, there is nothing to wait for.
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // At most MAX_QUEUES (64) queues: each fits in the mask.
        self.threads
            .iter()
            .map(|t| t.iter().fold(0u64, |m, &q| m | 1u64 << q))
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one the daemon cannot stop its workers (and its drop would wait forever).
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!(target: TARGET, error = %e, "cannot create a worker exit eventfd");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // The ring is no longer ready, so no new request comes off it; wait for the one
        // being served, if any.
        let (Some(busy), Ok(q)) = (
            self.busy.get(queue_index as usize),
            u16::try_from(queue_index),
        ) else {
            return Ok(());
        };
        let mut busy = lock(busy);
        if let Some(h) = busy.take() {
            // A request a Delay fault holds up on a polling queue: served once its delay
            // is over, as a worker sleeping the delay would serve it before this lock.
            std::thread::sleep(h.until.saturating_duration_since(Instant::now()));
            if let Some(v) = self.rings.get(usize::from(q)).and_then(OnceLock::get) {
                self.finish_chain(q, v, &h.mem, h.chain, h.decision);
            }
        }
        // The daemon reads next_avail for the GET_VRING_BASE reply after this returns:
        // chains the device kept go back to the avail ring (vhost-user "Starting and
        // stopping rings": the base is where the back-end would continue).
        let kept = self.device.queue_stopped(q);
        if kept > 0 {
            // A device keeps chains only of a queue it was served, so the ring is known.
            if let Some(v) = self.rings.get(usize::from(q)).and_then(OnceLock::get) {
                let mut state = v.get_mut();
                let queue = state.get_queue_mut();
                // kept <= chains taken off this ring, as the device promises.
                let next = queue.next_avail().wrapping_sub(kept);
                queue.set_next_avail(next);
                tracing::debug!(target: TARGET, queue = q, kept, next_avail = next, "kept chains given back to the avail ring");
            }
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // The thread's rings are its queues' (`threads[thread_id]`), in the same order;
        // event `i` is the kick of ring `i`.
        let i = usize::from(device_event);
        let queues = self.threads.get(thread_id).map_or(&[][..], |t| &t[..]);
        let (Some(&q), Some(vring)) = (queues.get(i), vrings.get(i)) else {
            return Ok(());
        };
        if self.conn.is_closing() {
            return Ok(());
        }
        self.ring_seen(q, vring);
        if self.poll && self.device.is_request_queue(q) {
            self.poll_queues(queues, vrings);
        } else {
            self.drain_queue(q, vring);
        }
        Ok(())
    }
}
