use super::*;
use vm_memory::GuestMemoryBackend;

fn map(len: usize) -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), len)]).unwrap()
}

/// The batch remembers where the request it took lay (head, descriptors, header):
/// the next batch starts loading those lines before it reads the ring.
#[test]
fn a_batch_remembers_the_last_chain_it_took() {
    let m = map(0x10000);
    let a = RingAddrs {
        desc: 0x1000,
        avail: 0x2000,
        used: 0x3000,
        size: 8,
        event_idx: false,
    };
    // A blk-shaped chain at head 5: header, data, status.
    let put = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let at = 0x1000 + 16 * i;
        m.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
        m.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
        m.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
        m.write_obj(next.to_le(), GuestAddress(at + 14)).unwrap();
    };
    put(5, 0x8000, 16, 1, 6);
    put(6, 0x9000, 512, 1 | 2, 7);
    put(7, 0xa000, 1, 2, 0);
    m.write_obj(5u16.to_le(), GuestAddress(0x2000 + 4)).unwrap();
    m.write_obj(1u16.to_le(), GuestAddress(0x2000 + 2)).unwrap();
    let ring = Ring::new(&m, &a).unwrap();
    let mut segs = Segments::new();
    let mut batch = Batch {
        ring: &ring,
        mem: &m,
        segs: &mut segs,
        na: 0,
        nu: 0,
        first_used: 0,
        left: 1,
        every: 1,
        taken: None,
        general: false,
        last: None,
    };
    assert!(batch.next().is_some());
    batch.complete(1);
    let last = batch.last.expect("the chain taken is remembered");
    assert_eq!((last.head, last.ndesc, last.header), (5, 3, 0x8000));
}

/// A kept map is used while the epoch stands still and replaced as soon as it
/// moves: a region added by the frontend (the daemon replaces the map, then
/// `update_memory` bumps the epoch) is in the map the next batch serves with.
#[test]
fn a_kept_map_is_replaced_once_the_epoch_moves() {
    let atomic = GuestMemoryAtomic::new(map(0x1000));
    let epoch = AtomicU64::new(0);
    let mut cache = MapCache::default();
    let first = Arc::clone(cache.get(&atomic, &epoch));
    assert_eq!(first.num_regions(), 1);
    assert!(
        Arc::ptr_eq(&first, cache.get(&atomic, &epoch)),
        "kept while the epoch stands"
    );
    let grown =
        Mem::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x10000), 0x1000)]).unwrap();
    atomic.lock().unwrap().replace(grown);
    // Not yet told: the kept map stays (the frontend has no reply yet, so it names
    // no address of the new region).
    assert!(Arc::ptr_eq(&first, cache.get(&atomic, &epoch)));
    epoch.fetch_add(1, Ordering::Release);
    let now = cache.get(&atomic, &epoch);
    assert_eq!(now.num_regions(), 2, "the new map after the epoch moved");
    assert!(now.address_in_range(GuestAddress(0x10000)));
}
