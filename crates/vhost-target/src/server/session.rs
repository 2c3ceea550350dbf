//! One frontend's session: the vhost-user backend the daemon runs for a connection,
//! its request queues' workers, the fast path over the split ring, and the replies to
//! the frontend's messages.

use super::*;

/// One frontend's view of a device: the vhost-user backend the daemon runs.
pub(super) struct Session<D> {
    pub(super) device: Arc<D>,
    pub(super) faults: Arc<Faults>,
    pub(super) mem: GuestMemoryAtomic<Mem>,
    pub(super) conn: Arc<Conn>,
    pub(super) poll: bool,
    pub(super) quirks: Quirks,
    /// The queues of each worker thread (the daemon's thread `i` serves `threads[i]`),
    /// in increasing order, as [`VhostUserBackend::queues_per_thread`] gives them.
    pub(super) threads: Box<[Box<[u16]>]>,
    /// Held by the thread serving a queue while it has a request off the ring and not
    /// yet completed; `stop_vring` takes it to wait for that request (vhost-user
    /// `GET_VRING_BASE`: the ring is stopped once it returns). In polling mode it also
    /// holds the request a `Delay` fault holds up ([`Held`]).
    pub(super) busy: Box<[Mutex<Option<Held>>]>,
    /// Bumped (Release) each time the daemon replaced the memory map, before the
    /// frontend gets its reply: a poller that keeps a map between batches
    /// ([`MapCache`]) loads it again when this moved.
    pub(super) mem_epoch: AtomicU64,
    /// Each queue's vring, from the queue's first event on; the device was given the
    /// queue's [`Completer`] then.
    pub(super) rings: Box<[OnceLock<Vring>]>,
}

/// A request a `Delay` fault holds up on a polling queue: the poller serves the queue's
/// other requests after it, and the other queues meanwhile.
pub(super) struct Held {
    pub(super) chain: Chain,
    /// The memory map the chain was taken with.
    pub(super) mem: GuestMemoryLoadGuard<Mem>,
    pub(super) decision: Decision,
    pub(super) until: Instant,
}

/// The queues each worker thread serves: one queue per thread, except in polling mode,
/// where the request queues are shared out among `poll_threads` threads (queue `i` of
/// them to thread `i % poll_threads`) after one thread per other queue. Each list is
/// in increasing order.
pub(super) fn worker_queues<D: Device + ?Sized>(
    device: &D,
    poll: bool,
    poll_threads: u16,
) -> Box<[Box<[u16]>]> {
    let n = device.num_queues();
    if !poll {
        return (0..n).map(|q| Box::from([q])).collect();
    }
    let mut threads: Vec<Vec<u16>> = (0..n)
        .filter(|&q| !device.is_request_queue(q))
        .map(|q| vec![q])
        .collect();
    let first = threads.len();
    let requests: Vec<u16> = (0..n).filter(|&q| device.is_request_queue(q)).collect();
    let k = usize::from(poll_threads).clamp(1, requests.len().max(1));
    threads.resize_with(first + k, Vec::new);
    for (i, q) in requests.into_iter().enumerate() {
        threads[first + i % k].push(q);
    }
    threads.retain(|t| !t.is_empty());
    threads.into_iter().map(Vec::into_boxed_slice).collect()
}

/// One fast-path batch: what [`Device::serve_fast`] takes requests from.
pub(super) struct Batch<'a, 'm> {
    pub(super) ring: &'a Ring<'m>,
    pub(super) mem: &'a Mem,
    pub(super) segs: &'a mut Segments,
    /// The next avail and used positions.
    pub(super) na: u16,
    pub(super) nu: u16,
    /// `nu` at the start of the batch.
    pub(super) first_used: u16,
    /// Requests the batch may still give.
    pub(super) left: usize,
    /// `used.idx` is exposed every this many completions.
    pub(super) every: u16,
    /// The head of the request given and not yet completed.
    pub(super) taken: Option<u16>,
    /// The batch stopped at a request the fast path does not take.
    pub(super) general: bool,
    /// The last request taken (see [`Ring::touch`]).
    pub(super) last: Option<LastChain>,
}

impl Requests for Batch<'_, '_> {
    fn next(&mut self) -> Option<&Segments> {
        if self.taken.is_some() || self.general || self.left == 0 {
            // A device that asks again without completing the last one declines it.
            return None;
        }
        let Some(head) = self.ring.avail_head(self.na) else {
            self.general = true;
            return None;
        };
        if !self.ring.parse(self.mem, head, self.segs) {
            self.general = true;
            return None;
        }
        if let Some(first) = self.segs.readable().first() {
            let n = self.segs.readable().len() + self.segs.writable().len();
            self.last = Some(LastChain {
                head,
                ndesc: u16::try_from(n).unwrap_or(1),
                header: first.addr,
            });
        }
        self.left -= 1;
        self.taken = Some(head);
        Some(self.segs)
    }

    fn complete(&mut self, len: u32) {
        let Some(head) = self.taken.take() else {
            return;
        };
        self.ring.put_used(self.nu, head, len);
        self.na = self.na.wrapping_add(1);
        self.nu = self.nu.wrapping_add(1);
        if self.nu.wrapping_sub(self.first_used) % self.every == 0 {
            self.ring.expose_used(self.nu);
        }
    }
}

/// A request queue as its poller sees it.
pub(super) struct Polled<'a> {
    pub(super) q: u16,
    pub(super) vring: &'a Vring,
    /// The ring's [`Vring::epoch`] when the poller last set it up.
    pub(super) epoch: Option<u32>,
    /// Where to look for new requests without taking a lock, once the ring was found
    /// empty.
    pub(super) peek: Option<Peek>,
    /// Turns answered by `peek` alone since the last full look.
    pub(super) peeks: u32,
    /// The memory map kept between batches.
    pub(super) map: MapCache,
    /// The last request the fast path took from this ring.
    pub(super) last: Option<LastChain>,
}

/// The memory map a poller keeps between batches, with the [`Session::mem_epoch`] it
/// was loaded at. Loading the map from its `GuestMemoryAtomic` takes two atomic
/// read-modify-writes (arc-swap's debt slot, taken and paid back), each of which waits
/// for the memory accesses before it; at QD 1 two loads per batch sat on the path of
/// every request. A plain load of the epoch tells whether the kept map is still the
/// current one. Loaded after the Acquire load of `avail.idx`, the epoch is at least the
/// one of the last map change the driver waited for before it published those
/// requests, so a kept map that passes has every region they can name. A replaced map
/// is let go at the ring's next full look: the next batch, or within [`PEEKS`] turns of
/// an idle ring (or when polling stops).
#[derive(Default)]
pub(super) struct MapCache {
    pub(super) map: Option<(u64, Arc<Mem>)>,
}

impl MapCache {
    /// The current map: the kept one while `epoch` has not moved since it was loaded.
    pub(super) fn get(&mut self, mem: &GuestMemoryAtomic<Mem>, epoch: &AtomicU64) -> &Arc<Mem> {
        let now = epoch.load(Ordering::Acquire);
        if !matches!(&self.map, Some((e, _)) if *e == now) {
            self.map = Some((now, mem.memory().into_inner()));
        }
        &self.map.as_ref().expect("just set").1
    }
}

/// A ring found empty: its `avail.idx` and the `next_avail` it had then. While the
/// index has not moved there is nothing to serve, which one load tells, where a full
/// look takes the queue's locks (several atomic read-modify-writes, each of which waits
/// for the memory accesses before it). Only a hint: a full look decides everything.
/// The memory map it holds stays mapped while it does (a frontend may replace the map
/// meanwhile: the peek then reads a ring that no longer runs, and the full look at
/// most [`PEEKS`] turns later sees that).
pub(super) struct Peek {
    pub(super) mem: Arc<Mem>,
    pub(super) avail_idx: GuestAddress,
    pub(super) next_avail: u16,
}

impl Peek {
    pub(super) fn idle(&self) -> bool {
        self.mem
            .load::<u16>(self.avail_idx, Ordering::Acquire)
            .is_ok_and(|i| u16::from_le(i) == self.next_avail)
    }
}

/// Turns an idle ring is answered by its [`Peek`] before a full look: a ring disabled or
/// stopped meanwhile is noticed, and an old memory map let go, within that many turns.
pub(super) const PEEKS: u32 = 1024;

/// Why serving a queue stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// The avail ring is empty, or the batch's limit was reached; this many requests
    /// were served.
    Empty(usize),
    /// The fast path stopped at a request it does not take: the general path must serve
    /// the next one.
    General,
    /// The ring is not ready or the connection is closing.
    Stop,
}

impl<D: Device> Session<D> {
    /// Event-driven: serves until the ring is empty with notifications back on.
    pub(super) fn drain_queue(&self, q: u16, vring: &Vring) {
        loop {
            if let Err(e) = vring.disable_notification() {
                tracing::warn!(target: TARGET, queue = q, error = %e, "cannot disable notifications");
            }
            if self.serve_available(q, vring, usize::MAX) == Flow::Stop {
                return;
            }
            // Notifications back on, then one more look: a request published while they
            // were off would otherwise wait for the next kick (virtio 1.2 §2.7.10).
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(target: TARGET, queue = q, error = %e, "cannot enable notifications");
                    return;
                }
            }
        }
    }

    /// Polling: serves `queues` (their rings are `vrings`) in turn, up to [`BATCH`]
    /// requests of one before the next, until none of them is enabled and started or
    /// the connection closes. A ring (re)started or (re)enabled meanwhile is set up again
    /// ([`Session::poll_one`]); once none is left the thread goes back to its event loop,
    /// which brings it here again when one is. Uses the device's fast path, if it has
    /// one, while no fault is armed.
    pub(super) fn poll_queues(&self, queues: &[u16], vrings: &[Vring]) {
        let mut polled: Vec<Polled<'_>> = queues
            .iter()
            .zip(vrings)
            .map(|(&q, vring)| Polled {
                q,
                vring,
                epoch: None,
                peek: None,
                peeks: 0,
                map: MapCache::default(),
                last: None,
            })
            .collect();
        tracing::debug!(target: TARGET, ?queues, "polling starts");
        let mut segs = Segments::new();
        let mut idle = 0u32;
        loop {
            if self.conn.is_closing() {
                break;
            }
            let (mut live, mut busy) = (false, false);
            for p in &mut polled {
                match self.poll_one(p, &mut segs) {
                    Flow::Stop => {}
                    Flow::Empty(0) => live = true,
                    Flow::Empty(_) | Flow::General => (live, busy) = (true, true),
                }
            }
            if !live {
                break;
            }
            if busy {
                idle = 0;
            } else {
                idle = idle.wrapping_add(1);
                if idle % 4096 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        tracing::debug!(target: TARGET, ?queues, "polling stops");
    }

    /// One turn of a polled queue: up to [`BATCH`] requests. [`Flow::Stop`] when the
    /// ring is not enabled and started.
    pub(super) fn poll_one(&self, p: &mut Polled<'_>, segs: &mut Segments) -> Flow {
        let (q, vring) = (p.q, p.vring);
        let epoch = vring.epoch();
        if p.epoch != Some(epoch) {
            // First look, or the ring was (re)started or (re)enabled since the last one.
            p.epoch = Some(epoch);
            p.peek = None;
            if !vring.is_running() {
                return Flow::Stop;
            }
            tracing::debug!(target: TARGET, queue = q, "polling the ring");
            self.ring_seen(q, vring);
            if let Err(e) = vring.disable_notification() {
                tracing::warn!(target: TARGET, queue = q, error = %e, "cannot disable notifications");
            }
        }
        if let Some(peek) = &p.peek {
            if p.peeks < PEEKS && peek.idle() {
                p.peeks += 1;
                return Flow::Empty(0);
            }
            p.peek = None;
            p.peeks = 0;
        }
        if self.device.has_fast_path() {
            match self.serve_fast(q, vring, segs, &mut p.peek, &mut p.map, &mut p.last) {
                // One request the general way; the fast path goes on next turn.
                Flow::General => self.serve_available(q, vring, 1),
                f => f,
            }
        } else {
            if !vring.is_running() {
                return Flow::Stop;
            }
            self.serve_available(q, vring, BATCH)
        }
    }

    /// Records `vring` as queue `q`'s ring and gives the device the queue's
    /// [`Completer`], the first time the queue is seen on this connection.
    pub(super) fn ring_seen(&self, q: u16, vring: &Vring) {
        if let Some(ring) = self.rings.get(usize::from(q)) {
            if ring.set(vring.clone()).is_ok() {
                let completer = Completer {
                    queue: q,
                    vring: vring.clone(),
                    mem: self.mem.clone(),
                    conn: Arc::clone(&self.conn),
                };
                self.device.queue_ready(q, completer);
            }
        }
    }

    /// The fast path ([`crate::fast`]): serves up to [`BATCH`] requests with
    /// [`Device::serve_fast`], publishes their used entries with one `used.idx` store and
    /// notifies the driver once if it asked. Stops at the first request the fast path
    /// does not take ([`Flow::General`]).
    /// When the ring is empty, `peek` is set to watch it ([`Peek`]).
    pub(super) fn serve_fast(
        &self,
        q: u16,
        vring: &Vring,
        segs: &mut Segments,
        peek: &mut Option<Peek>,
        map: &mut MapCache,
        last: &mut Option<LastChain>,
    ) -> Flow {
        if self.conn.is_closing() {
            return Flow::Stop;
        }
        // Held until the ring state is written back: `stop_vring` (GET_VRING_BASE) waits
        // for it, so it reads the final next_avail.
        let busy = lock(&self.busy[usize::from(q)]);
        if busy.is_some() {
            // A request held up by a Delay fault: the general path serves it when due,
            // and nothing after it before.
            return Flow::General;
        }
        let (addrs, next_avail, next_used) = {
            let state = vring.get_ref();
            let queue = state.get_queue();
            if !state.is_enabled() || !queue.ready() {
                return Flow::Stop;
            }
            let addrs = RingAddrs {
                desc: queue.desc_table(),
                avail: queue.avail_ring(),
                used: queue.used_ring(),
                size: queue.size(),
                event_idx: queue.event_idx_enabled(),
            };
            (addrs, queue.next_avail(), queue.next_used())
        };
        let mem = map.get(&self.mem, &self.mem_epoch);
        let Some(avail) = Ring::avail_idx_of(mem, &addrs) else {
            return Flow::General;
        };
        let pending = avail.wrapping_sub(next_avail);
        if pending == 0 {
            *peek = addrs.avail.checked_add(2).map(|a| Peek {
                mem: Arc::clone(mem),
                avail_idx: GuestAddress(a),
                next_avail,
            });
            return Flow::Empty(0);
        }
        // Checked after the Acquire load of avail.idx: a fault armed before these requests
        // were published is seen, and the general path serves them one by one with it.
        // Also when the ring is broken: the general path reports it and closes the
        // connection.
        if pending > addrs.size || self.faults.is_armed() {
            return Flow::General;
        }
        // Looked at after the Acquire load of avail.idx: it has every region these
        // requests can name (see `serve_available` and `MapCache`).
        let mem = map.get(&self.mem, &self.mem_epoch);
        let Some(ring) = Ring::new(mem, &addrs) else {
            return Flow::General;
        };
        ring.touch(mem, next_avail, *last);
        // With no backlog behind this batch the driver is waiting for these completions:
        // used.idx moves every EARLY_USED requests, so it can reap and resubmit while the
        // rest of the batch is served (QD32 1.5x). With a backlog, once per batch.
        let every = if usize::from(pending) <= BATCH {
            EARLY_USED
        } else {
            BATCH as u16
        };
        let mut batch = Batch {
            ring: &ring,
            mem,
            segs,
            na: next_avail,
            nu: next_used,
            first_used: next_used,
            left: usize::from(pending).min(BATCH),
            every,
            taken: None,
            general: false,
            last: *last,
        };
        self.device.serve_fast(q, mem, &mut batch);
        let (na, nu) = (batch.na, batch.nu);
        *last = batch.last;
        // A request taken and not completed was declined; so was the first one if the
        // device took none.
        let general = batch.general || batch.taken.is_some() || na == next_avail;
        let served = usize::from(na.wrapping_sub(next_avail));
        if served > 0 {
            let notify = ring.publish_used(next_used, nu);
            {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                queue.set_next_avail(na);
                queue.set_next_used(nu);
            }
            if notify {
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!(target: TARGET, queue = q, error = %e, "cannot signal the used ring");
                }
            }
        }
        if general {
            Flow::General
        } else {
            Flow::Empty(served)
        }
    }

    /// Serves every request on the avail ring: in batches of up to [`BATCH`] on the
    /// request queues (the ring locked, the memory map loaded and the driver notified
    /// once per batch), one at a time on the other queues or while faults are armed
    /// (each request then draws its own fault).
    pub(super) fn serve_available(&self, q: u16, vring: &Vring, max: usize) -> Flow {
        let mut served = 0;
        let batched = self.device.is_request_queue(q);
        let mut batch: Vec<Chain> = Vec::new();
        let mut done: Vec<(u16, u32)> = Vec::new();
        loop {
            if self.conn.is_closing() {
                return Flow::Stop;
            }
            if served >= max {
                return Flow::Empty(served);
            }
            let per_request = !batched || self.faults.is_armed();
            let mut busy = lock(&self.busy[usize::from(q)]);
            if let Some(h) = busy.take() {
                if Instant::now() < h.until {
                    *busy = Some(h);
                    return Flow::Empty(served);
                }
                self.finish_chain(q, vring, &h.mem, h.chain, h.decision);
                served += 1;
                continue;
            }
            let mem = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                if !queue.ready() {
                    return Flow::Stop;
                }
                // The memory map is loaded only once a new entry is seen: the frontend
                // adds a region (ADD_MEM_REG, answered after the map is replaced) before
                // it publishes requests that use it, so a map loaded after the Acquire
                // load of avail.idx has every region the request can name. A map loaded
                // earlier may not (a polling worker would pop the request with it).
                match queue.avail_idx(&*self.mem.memory(), Ordering::Acquire) {
                    Ok(idx) if idx.0 == queue.next_avail() => return Flow::Empty(served),
                    _ => {}
                }
                let mem = self.mem.memory();
                let limit = if per_request {
                    1
                } else {
                    BATCH.min(max - served)
                };
                match queue.iter(mem.clone()) {
                    Ok(mut it) => {
                        while batch.len() < limit {
                            match it.next() {
                                Some(c) => batch.push(c),
                                None => break,
                            }
                        }
                    }
                    Err(virtio_queue::Error::QueueNotReady) => return Flow::Stop,
                    Err(e) => {
                        // The driver's avail.idx moved by more than the queue size
                        // (virtio 1.2 §2.7.13.3): nothing sane can follow.
                        tracing::error!(target: TARGET, queue = q, error = %e, "driver broke the avail ring");
                        self.conn.close("driver broke the avail ring");
                        return Flow::Stop;
                    }
                }
                mem
            };
            if batch.is_empty() {
                return Flow::Empty(served);
            }
            served += batch.len();
            if per_request {
                for chain in batch.drain(..) {
                    self.serve_chain(q, vring, &mem, chain, &mut busy);
                }
                continue;
            }
            for chain in batch.drain(..) {
                let head = chain.head_index();
                if let Some(len) = self.device.serve(q, &mem, chain, None) {
                    done.push((head, len));
                }
            }
            if !done.is_empty() {
                let mut state = vring.get_mut();
                for (head, len) in done.drain(..) {
                    if let Err(e) = state.add_used(head, len) {
                        tracing::warn!(target: TARGET, queue = q, head, error = %e, "cannot complete request");
                    }
                }
                drop(state);
                self.notify(q, vring);
            }
        }
    }

    /// Serves one request, with whatever fault applies to it. `busy` is the queue's
    /// [`Session::busy`] slot, locked: in polling mode a request a `Delay` fault holds up
    /// waits there (the poller serves other queues meanwhile); otherwise the thread
    /// sleeps the delay.
    pub(super) fn serve_chain(
        &self,
        q: u16,
        vring: &Vring,
        mem: &GuestMemoryLoadGuard<Mem>,
        chain: Chain,
        busy: &mut Option<Held>,
    ) {
        let head = chain.head_index();
        let d = if self.device.is_request_queue(q) {
            self.faults.decide()
        } else {
            Decision::default()
        };
        if d.drop {
            tracing::trace!(target: TARGET, queue = q, head, "request held (StopAnswering)");
            return;
        }
        if let Some(Fault::Delay(t)) = d.fault {
            if self.poll {
                tracing::trace!(target: TARGET, queue = q, head, delay = ?t, "request held up (Delay)");
                *busy = Some(Held {
                    chain,
                    mem: mem.clone(),
                    decision: d,
                    until: Instant::now() + t,
                });
                return;
            }
            std::thread::sleep(t);
        }
        self.finish_chain(q, vring, mem, chain, d);
    }

    /// Serves one request once its delay, if any, is over: the device-level fault of
    /// `d` goes to the device, the transport-level ones are applied here.
    pub(super) fn finish_chain(&self, q: u16, vring: &Vring, mem: &Mem, chain: Chain, d: Decision) {
        let head = chain.head_index();
        let bad = match d.fault {
            Some(Fault::BadUsed(kind)) => Some((kind, writable_len(&chain))),
            _ => None,
        };
        let Some(len) = self.device.serve(q, mem, chain, d.fault) else {
            tracing::trace!(target: TARGET, queue = q, head, "request kept by the device");
            if d.close {
                self.conn.close("CloseAfter fault");
            }
            return;
        };
        match bad {
            None => {
                if let Err(e) = vring.add_used(head, len) {
                    tracing::warn!(target: TARGET, queue = q, head, error = %e, "cannot complete request");
                }
                self.notify(q, vring);
            }
            Some((kind, writable)) => {
                if let Err(e) = write_bad_used(vring, mem, head, len, writable, kind) {
                    tracing::warn!(target: TARGET, queue = q, head, error = %e, "cannot write the bad used entry");
                }
                // The driver must look at the ring whatever it asked for.
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!(target: TARGET, queue = q, error = %e, "cannot signal the used ring");
                }
            }
        }
        if d.close {
            self.conn.close("CloseAfter fault");
        }
    }

    pub(super) fn notify(&self, q: u16, vring: &Vring) {
        match vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!(target: TARGET, queue = q, error = %e, "cannot signal the used ring");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(target: TARGET, queue = q, error = %e, "cannot read used_event");
            }
        }
    }
}

/// Bytes the driver made writable in `chain`.
pub(super) fn writable_len(chain: &Chain) -> u32 {
    chain
        .clone()
        .writable()
        .fold(0u32, |n, d| n.saturating_add(d.len()))
}

/// Completes `head` with a used entry that breaks the rules on purpose.
pub(super) fn write_bad_used(
    vring: &Vring,
    mem: &Mem,
    head: u16,
    len: u32,
    writable: u32,
    kind: BadUsed,
) -> std::result::Result<(), virtio_queue::Error> {
    if kind == BadUsed::LenTooLarge {
        // virtio-queue does not check len against the chain: its own add_used writes it.
        return vring.add_used(head, writable.saturating_add(1));
    }
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    let size = queue.size();
    let next = queue.next_used();
    let used = GuestAddress(queue.used_ring());
    // virtq_used: flags (2), idx (2), ring[size] of {id: le32, len: le32} (virtio 1.2 §2.7.8).
    let elem = used
        .0
        .checked_add(4 + 8 * u64::from(next % size))
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    let (id, idx) = match kind {
        // An id no descriptor has.
        BadUsed::IdOutOfRange => (u32::from(size), next.wrapping_add(1)),
        // One entry written, idx moved by one plus a whole ring: more than the driver can
        // have in flight, whatever it has.
        _ => (u32::from(head), next.wrapping_add(1).wrapping_add(size)),
    };
    let err = virtio_queue::Error::GuestMemory;
    mem.write_obj(id.to_le(), GuestAddress(elem)).map_err(err)?;
    mem.write_obj(len.to_le(), GuestAddress(elem + 4))
        .map_err(err)?;
    // Release: the element is visible before the index that publishes it (§2.7.8),
    // as virtio-queue's add_used does.
    mem.store(idx.to_le(), GuestAddress(used.0 + 2), Ordering::Release)
        .map_err(err)?;
    queue.set_next_used(next.wrapping_add(1));
    Ok(())
}

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
