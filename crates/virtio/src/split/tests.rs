use super::*;
use crate::mem::DmaBuf;
use crate::testing::FakeDevice;
use proptest::prelude::*;

fn queue(size: u16, event_idx: bool, indirect: bool) -> (SplitQueue, FakeDevice) {
    let q = SplitQueue::new(
        DmaDomain::global(),
        QueueConfig {
            size,
            event_idx,
            indirect_desc: indirect,
            indirect_max: 32,
            phys: None,
        },
    )
    .unwrap();
    let dev = FakeDevice::new(q.addrs());
    (q, dev)
}

fn segs(buf: &DmaBuf, n: usize, writable_from: usize) -> Vec<Segment> {
    (0..n)
        .map(|i| Segment {
            addr: Iova(buf.iova().0 + 64 * i as u64),
            len: 64,
            device_writable: i >= writable_from,
        })
        .collect()
}

fn add(q: &mut SplitQueue, s: &[Segment], cookie: u64) -> std::result::Result<(), AddError> {
    // SAFETY: the segments point into a DmaBuf that each test keeps alive until the end.
    unsafe { q.try_add(s, cookie) }
}

#[test]
fn chain_round_trips_through_the_device() {
    let (mut q, mut dev) = queue(8, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    let s = segs(&buf, 3, 1);
    add(&mut q, &s, 42).unwrap();
    assert_eq!(dev.pop_avail(), None, "nothing is visible before publish");
    assert!(q.publish());
    let chain = dev.pop_avail().unwrap();
    assert_eq!(chain.segs, s);
    assert!(!chain.indirect);
    assert_eq!(q.pop_used(), None);
    dev.push_used(u32::from(chain.head), 100);
    assert!(q.has_used());
    assert_eq!(
        q.pop_used(),
        Some(Used {
            cookie: 42,
            written: Ok(100)
        })
    );
    assert!(q.is_empty());
    assert_eq!(q.num_free(), 8);
}

#[test]
fn many_chains_one_publish() {
    let (mut q, mut dev) = queue(16, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    for c in 0..5 {
        add(&mut q, &segs(&buf, 2, 1), c).unwrap();
    }
    assert_eq!(dev.avail_idx(), 0);
    assert!(q.publish(), "the device asked for notifications");
    assert_eq!(dev.avail_idx(), 5);
    assert!(!q.publish(), "nothing new: no second notification");
    let heads: Vec<_> = std::iter::from_fn(|| dev.pop_avail())
        .map(|c| c.head)
        .collect();
    assert_eq!(heads.len(), 5);
    for h in heads.iter().rev() {
        dev.push_used(u32::from(*h), 0);
    }
    let mut cookies: Vec<_> = std::iter::from_fn(|| q.pop_used())
        .map(|u| u.cookie)
        .collect();
    cookies.sort();
    assert_eq!(cookies, vec![0, 1, 2, 3, 4]);
}

#[test]
fn no_notify_flag_suppresses_the_doorbell() {
    let (mut q, dev) = queue(8, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    dev.set_used_flags(VIRTQ_USED_F_NO_NOTIFY);
    add(&mut q, &segs(&buf, 1, 1), 1).unwrap();
    assert!(!q.publish());
    dev.set_used_flags(0);
    add(&mut q, &segs(&buf, 1, 1), 2).unwrap();
    assert!(q.publish());
}

#[test]
fn event_idx_notifies_only_when_avail_event_is_crossed() {
    let (mut q, dev) = queue(8, true, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    // The device wants a kick when avail.idx passes 2 (i.e. when entry 2 is added).
    dev.set_avail_event(2);
    add(&mut q, &segs(&buf, 1, 1), 1).unwrap();
    assert!(!q.publish(), "0 -> 1 does not cross event 2");
    add(&mut q, &segs(&buf, 1, 1), 2).unwrap();
    assert!(!q.publish(), "1 -> 2 does not cross event 2");
    add(&mut q, &segs(&buf, 1, 1), 3).unwrap();
    add(&mut q, &segs(&buf, 1, 1), 4).unwrap();
    assert!(q.publish(), "2 -> 4 crosses event 2");
}

#[test]
fn interrupt_suppression_is_written_for_the_device() {
    let (mut q, dev) = queue(8, false, false);
    assert_eq!(
        dev.avail_flags(),
        VIRTQ_AVAIL_F_NO_INTERRUPT,
        "polled by default"
    );
    q.set_interrupts(true);
    assert_eq!(dev.avail_flags(), 0);
    let (mut q, mut dev) = queue(8, true, false);
    assert_eq!(dev.used_event(), u16::MAX, "parked one behind");
    q.set_interrupts(true);
    assert_eq!(dev.used_event(), 0);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    add(&mut q, &segs(&buf, 1, 1), 1).unwrap();
    q.publish();
    let c = dev.pop_avail().unwrap();
    dev.push_used(u32::from(c.head), 1);
    q.pop_used().unwrap();
    assert_eq!(dev.used_event(), 1, "asks for the next completion");
}

#[test]
fn indirect_chain_takes_one_descriptor() {
    let (mut q, mut dev) = queue(4, false, true);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    let s = segs(&buf, 20, 5);
    add(&mut q, &s, 9).unwrap();
    assert_eq!(q.num_free(), 3);
    q.publish();
    let c = dev.pop_avail().unwrap();
    assert!(c.indirect);
    assert_eq!(c.segs, s);
    dev.push_used(u32::from(c.head), c.writable());
    assert_eq!(q.pop_used().unwrap().written, Ok(15 * 64));
    assert_eq!(q.num_free(), 4);
}

#[test]
fn full_queue_is_a_value_and_too_long_is_final() {
    let (mut q, mut dev) = queue(4, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    add(&mut q, &segs(&buf, 2, 1), 1).unwrap();
    add(&mut q, &segs(&buf, 2, 1), 2).unwrap();
    assert!(q.is_full());
    assert_eq!(add(&mut q, &segs(&buf, 1, 1), 3), Err(AddError::Full));
    assert_eq!(add(&mut q, &segs(&buf, 5, 1), 3), Err(AddError::TooLong));
    assert_eq!(add(&mut q, &[], 3), Err(AddError::TooLong));
    q.publish();
    let c = dev.pop_avail().unwrap();
    dev.push_used(u32::from(c.head), 0);
    q.pop_used().unwrap();
    add(&mut q, &segs(&buf, 2, 1), 3).unwrap();
}

#[test]
fn used_id_beyond_size_breaks_the_queue() {
    let (mut q, mut dev) = queue(8, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    add(&mut q, &segs(&buf, 1, 1), 1).unwrap();
    q.publish();
    dev.push_used(8, 0);
    assert_eq!(q.pop_used(), None);
    assert_eq!(
        q.broken(),
        Some(QueueError::UsedIdOutOfRange { id: 8, size: 8 })
    );
    assert_eq!(add(&mut q, &segs(&buf, 1, 1), 2), Err(AddError::Broken));
    assert!(!q.publish());
    let mut back = vec![];
    // SAFETY: the fake device no longer touches the ring.
    unsafe { q.reclaim_all(|c| back.push(c)) };
    assert_eq!(back, vec![1]);
}

#[test]
fn duplicate_used_id_breaks_the_queue() {
    let (mut q, mut dev) = queue(8, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    add(&mut q, &segs(&buf, 1, 1), 1).unwrap();
    add(&mut q, &segs(&buf, 1, 1), 2).unwrap();
    q.publish();
    let c = dev.pop_avail().unwrap();
    dev.push_used(u32::from(c.head), 0);
    dev.push_used(u32::from(c.head), 0);
    assert_eq!(q.pop_used().unwrap().cookie, 1);
    assert_eq!(q.pop_used(), None);
    assert_eq!(
        q.broken(),
        Some(QueueError::UsedIdNotInFlight {
            id: u32::from(c.head)
        })
    );
}

#[test]
fn id_of_a_never_used_descriptor_breaks_the_queue() {
    let (mut q, mut dev) = queue(8, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    add(&mut q, &segs(&buf, 3, 1), 1).unwrap();
    q.publish();
    // Descriptor 1 is part of the chain but not its head.
    dev.push_used(1, 0);
    assert_eq!(q.pop_used(), None);
    assert_eq!(q.broken(), Some(QueueError::UsedIdNotInFlight { id: 1 }));
}

#[test]
fn absurd_length_fails_only_that_request() {
    let (mut q, mut dev) = queue(8, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    add(&mut q, &segs(&buf, 2, 1), 1).unwrap();
    add(&mut q, &segs(&buf, 2, 1), 2).unwrap();
    q.publish();
    let a = dev.pop_avail().unwrap();
    let b = dev.pop_avail().unwrap();
    dev.push_used(u32::from(a.head), u32::MAX);
    dev.push_used(u32::from(b.head), 64);
    assert_eq!(
        q.pop_used().unwrap().written,
        Err(QueueError::UsedLenTooLarge {
            id: u32::from(a.head),
            len: u32::MAX,
            writable: 64
        })
    );
    assert_eq!(q.pop_used().unwrap().written, Ok(64));
    assert_eq!(q.broken(), None);
}

#[test]
fn used_idx_jump_breaks_the_queue() {
    let (mut q, mut dev) = queue(8, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    add(&mut q, &segs(&buf, 1, 1), 1).unwrap();
    add(&mut q, &segs(&buf, 1, 1), 2).unwrap();
    q.publish();
    add(&mut q, &segs(&buf, 1, 1), 3).unwrap(); // not published: the device cannot have it
    dev.set_used_idx(3);
    assert_eq!(q.pop_used(), None);
    assert_eq!(
        q.broken(),
        Some(QueueError::UsedIdxJump {
            last: 0,
            idx: 3,
            in_flight: 2
        })
    );
    let (mut q, mut dev) = queue(8, false, false);
    dev.set_used_idx(0x8000);
    assert_eq!(q.pop_used(), None);
    assert!(matches!(q.broken(), Some(QueueError::UsedIdxJump { .. })));
}

#[test]
fn indices_wrap_past_65535() {
    let (mut q, mut dev) = queue(2, true, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    for i in 0..70_000u64 {
        add(&mut q, &segs(&buf, 1, 1), i).unwrap();
        q.publish();
        let c = dev.pop_avail().unwrap();
        dev.push_used(u32::from(c.head), 1);
        assert_eq!(q.pop_used().unwrap().cookie, i);
    }
    assert_eq!(q.broken(), None);
}

#[test]
fn queue_sizes_are_validated() {
    let cfg = |size| QueueConfig {
        size,
        event_idx: false,
        indirect_desc: false,
        indirect_max: 1,
        phys: None,
    };
    for bad in [0u16, 3, 100, 65535] {
        assert!(matches!(
            SplitQueue::new(DmaDomain::global(), cfg(bad)),
            Err(Error::InvalidQueueSize { .. })
        ));
    }
    let q = SplitQueue::new(DmaDomain::global(), cfg(32768)).unwrap();
    assert_eq!(q.capacity(), 32768);
}

#[test]
fn reset_needs_an_idle_queue() {
    let (mut q, _dev) = queue(8, false, false);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    add(&mut q, &segs(&buf, 1, 1), 1).unwrap();
    assert!(matches!(q.reset(), Err(Error::QueueBusy { in_flight: 1 })));
    // SAFETY: nothing was published; the fake device never saw the chain.
    unsafe { q.reclaim_all(|_| {}) };
    q.reset().unwrap();
    assert_eq!(q.num_free(), 8);
}

proptest! {
    #[test]
    fn need_event_matches_the_spec_formula(event: u16, old: u16, step in 0u16..1000) {
        let new = old.wrapping_add(step);
        // The device asked to be told when the entry at index `event` becomes available:
        // that happens iff `event` lies in [old, new) modulo 2^16.
        let crossed = event.wrapping_sub(old) < step;
        prop_assert_eq!(need_event(event, new, old), crossed);
    }

    #[test]
    fn random_completion_orders_keep_the_free_list_sound(
        order in proptest::collection::vec(any::<prop::sample::Index>(), 1..64),
        nsegs in 1usize..4,
    ) {
        let (mut q, mut dev) = queue(16, true, false);
        let buf = DmaBuf::zeroed(4096, 4096).unwrap();
        let mut pending = Vec::new();
        let mut next_cookie = 0u64;
        for pick in order {
            while add(&mut q, &segs(&buf, nsegs, 1), next_cookie).is_ok() {
                next_cookie += 1;
            }
            q.publish();
            while let Some(c) = dev.pop_avail() {
                pending.push(c);
            }
            let c = pending.swap_remove(pick.index(pending.len()));
            dev.push_used(u32::from(c.head), 0);
            prop_assert!(q.pop_used().is_some());
        }
        prop_assert_eq!(q.broken(), None);
        prop_assert_eq!(
            usize::from(q.num_free()),
            16 - pending.len() * nsegs
        );
    }
}

#[test]
fn short_and_long_indirect_chains_both_round_trip() {
    let (mut q, mut dev) = queue(8, false, true);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    for n in [2, 3, SMALL_TABLE, SMALL_TABLE + 1, 32] {
        let s = segs(&buf, n, 1);
        add(&mut q, &s, n as u64).unwrap();
        assert_eq!(q.num_free(), 7, "one ring descriptor for {n} segments");
        q.publish();
        let c = dev.pop_avail().unwrap();
        assert!(c.indirect);
        assert_eq!(c.segs, s);
        dev.push_used(u32::from(c.head), 0);
        assert_eq!(q.pop_used().unwrap().cookie, n as u64);
    }
}

#[test]
fn short_chains_go_direct_while_a_quarter_of_the_ring_stays_free() {
    let (mut q, mut dev) = queue(16, false, true);
    q.set_direct_max(4);
    let buf = DmaBuf::zeroed(4096, 4096).unwrap();
    let s = segs(&buf, 3, 1);
    // Direct while free >= 3 + 16/4 = 7: four chains (16, 13, 10 and 7 free before
    // each); then indirect, one descriptor each.
    let mut kinds = Vec::new();
    for cookie in 0..8 {
        add(&mut q, &s, cookie).unwrap();
        q.publish();
        let chain = dev.pop_avail().unwrap();
        assert_eq!(chain.segs, s, "chain {cookie} round-trips either way");
        kinds.push(chain.indirect);
    }
    assert_eq!(kinds, [false, false, false, false, true, true, true, true]);
    assert_eq!(q.num_free(), 16 - 4 * 3 - 4);
    // Longer chains than direct_max stay indirect even in an empty ring.
    let (mut q, mut dev) = queue(16, false, true);
    q.set_direct_max(4);
    add(&mut q, &segs(&buf, 5, 1), 1).unwrap();
    q.publish();
    assert!(dev.pop_avail().unwrap().indirect);
}

/// A private domain with one region, and a fake physical map over it: huge pages in
/// pairs that are contiguous, each pair far from the next.
fn phys_domain() -> (&'static DmaDomain, &'static PhysMap, u64) {
    const H: u64 = crate::mem::HUGE_PAGE;
    let domain: &'static DmaDomain = Box::leak(Box::new(DmaDomain::new(crate::DmaConfig {
        region_size: 8 * H as usize,
        ..crate::DmaConfig::default()
    })));
    domain.reserve().unwrap();
    let r = domain.regions()[0];
    let pages = (0..r.len / H)
        .map(|i| (1000 + (i / 2) * 16 + (i % 2)) * H)
        .collect();
    let map: &'static PhysMap =
        Box::leak(Box::new(PhysMap::from_pages(vec![(r.addr, r.len, pages)])));
    (domain, map, r.addr)
}

fn read_desc(base: *const u8, i: usize) -> Desc {
    // SAFETY: callers pass a descriptor table inside a live DmaBuf, entry `i` in range.
    let d = unsafe { base.add(16 * i).cast::<Desc>().read_volatile() };
    Desc {
        addr: u64::from_le(d.addr),
        len: u32::from_le(d.len),
        flags: u16::from_le(d.flags),
        next: u16::from_le(d.next),
    }
}

#[test]
fn physical_mode_translates_and_splits_at_discontinuities() {
    const H: u64 = crate::mem::HUGE_PAGE;
    let (domain, map, base) = phys_domain();
    let cfg = QueueConfig {
        size: 16,
        event_idx: false,
        indirect_desc: true,
        indirect_max: 6,
        phys: Some(map),
    };
    let mut q = SplitQueue::new(domain, cfg).unwrap();
    // The ring parts are given to the device by physical address.
    let a = q.addrs();
    assert_eq!(Some(a.desc.0), map.contiguous(q.ring.iova().0, 16));
    assert_eq!(a.avail.0 - a.desc.0, q.avail_off as u64);
    assert_eq!(a.used.0 - a.desc.0, q.used_off as u64);
    assert!(a.desc.0 >= 1000 * H);

    // Pages 1 and 2 are discontiguous (pair 0 ends at 1002 H, pair 1 starts at 1016 H);
    // pages 2 and 3 are contiguous.
    let hdr = Segment::readable(Iova(base + 2 * H - 16), 32);
    let data = Segment::writable(Iova(base + 3 * H - 4096), 8192);
    add(&mut q, &[data], 1).unwrap();
    let d = read_desc(q.ring.as_ptr(), 0);
    assert_eq!(
        (d.addr, d.len, d.flags),
        (1017 * H - 4096, 8192, VIRTQ_DESC_F_WRITE),
        "contiguous pages: one descriptor"
    );

    // Two segments, the first across the discontinuity: three entries in the head's
    // indirect table, which is itself given by physical address.
    add(&mut q, &[hdr, data], 2).unwrap();
    let head = 1;
    let d = read_desc(q.ring.as_ptr(), head);
    assert_eq!(d.flags, VIRTQ_DESC_F_INDIRECT);
    assert_eq!(d.len, 3 * 16);
    let (buf, first) = q.indirect_table(head as u16, 3);
    let table_va = buf.iova().0 + first as u64 * 16;
    assert_eq!(Some(d.addr), map.contiguous(table_va, 48));
    let t: Vec<Desc> = (0..3)
        .map(|i| read_desc(buf.as_ptr().cast_const().wrapping_add(first * 16), i))
        .collect();
    assert_eq!(
        (t[0].addr, t[0].len, t[0].flags),
        (1002 * H - 16, 16, VIRTQ_DESC_F_NEXT)
    );
    assert_eq!((t[0].next, t[1].next), (1, 2));
    assert_eq!(
        (t[1].addr, t[1].len, t[1].flags),
        (1016 * H, 16, VIRTQ_DESC_F_NEXT)
    );
    assert_eq!(
        (t[2].addr, t[2].len, t[2].flags),
        (1017 * H - 4096, 8192, VIRTQ_DESC_F_WRITE)
    );
    // The writable total is that of the caller's segments.
    assert_eq!(q.slots[head].writable, 8192);

    // Memory outside the domain is refused, and nothing is taken from the ring.
    let free = q.num_free();
    let outside = Segment::readable(Iova(base + 8 * H), 16);
    assert_eq!(add(&mut q, &[outside], 3), Err(AddError::NotDma));
    assert_eq!(q.num_free(), free);

    // A chain that only becomes too long after splitting: 6 entries allowed
    // indirectly, ring of 16 directly; 9 segments each across a discontinuity.
    let long: Vec<Segment> = (0..9)
        .map(|_| Segment::readable(Iova(base + 2 * H - 8), 16))
        .collect();
    assert_eq!(add(&mut q, &long, 4), Err(AddError::TooLong));
    assert_eq!(q.num_free(), free);
}

#[test]
fn physical_mode_keeps_every_indirect_table_contiguous() {
    let (domain, map, _) = phys_domain();
    // indirect_max 100 gives a stride of 128 entries (2 KiB): 1024 heads' tables span
    // the 2 MiB boundary of the buffer's pages; none of them may straddle it.
    let cfg = QueueConfig {
        size: 1024,
        event_idx: true,
        indirect_desc: true,
        indirect_max: 100,
        phys: Some(map),
    };
    let q = SplitQueue::new(domain, cfg).unwrap();
    assert_eq!(q.indirect_stride, 128);
    for head in 0..1024u16 {
        let (buf, first) = q.indirect_table(head, 100);
        let va = buf.iova().0 + first as u64 * 16;
        assert!(map.contiguous(va, 100 * 16).is_some(), "head {head}");
    }
    assert!(
        map.contiguous(q.ring.iova().0, q.ring.len() as u64)
            .is_some()
    );
}
