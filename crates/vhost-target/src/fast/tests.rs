use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const TABLE: u64 = 0x4000;
const SIZE: u16 = 8;

/// 64 KiB of driver memory at 0, and a second region right after it.
fn mem() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)]).unwrap()
}

fn addrs(event_idx: bool) -> RingAddrs {
    RingAddrs {
        desc: DESC,
        avail: AVAIL,
        used: USED,
        size: SIZE,
        event_idx,
    }
}

fn put_desc(mem: &Mem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(table + 16 * u64::from(i));
    mem.write_obj(addr.to_le(), at).unwrap();
    mem.write_obj(len.to_le(), GuestAddress(at.0 + 8)).unwrap();
    mem.write_obj(flags.to_le(), GuestAddress(at.0 + 12))
        .unwrap();
    mem.write_obj(next.to_le(), GuestAddress(at.0 + 14))
        .unwrap();
}

/// A blk-shaped chain at `head`: 16 readable bytes, `data` writable, 1 status byte.
fn blk_chain(mem: &Mem, head: u16, data: u32) {
    put_desc(mem, DESC, head, 0x8000, 16, F_NEXT, head + 1);
    put_desc(
        mem,
        DESC,
        head + 1,
        0x9000,
        data,
        F_WRITE | F_NEXT,
        head + 2,
    );
    put_desc(mem, DESC, head + 2, 0xa000, 1, F_WRITE, 0);
}

fn parse(mem: &Mem, head: u16) -> Option<Segments> {
    let ring = Ring::new(mem, &addrs(false)).expect("ring in memory");
    let mut segs = Segments::new();
    ring.parse(mem, head, &mut segs).then_some(segs)
}

#[test]
fn direct_chain_is_parsed_in_order() {
    let m = mem();
    blk_chain(&m, 2, 4096);
    let s = parse(&m, 2).unwrap();
    assert_eq!(
        s.readable(),
        &[Seg {
            addr: 0x8000,
            len: 16
        }]
    );
    assert_eq!(
        s.writable(),
        &[
            Seg {
                addr: 0x9000,
                len: 4096
            },
            Seg {
                addr: 0xa000,
                len: 1
            }
        ]
    );
    assert_eq!((s.readable_len(), s.writable_len()), (16, 4097));
}

#[test]
fn indirect_chain_is_parsed_from_its_table() {
    let m = mem();
    put_desc(&m, DESC, 5, TABLE, 3 * 16, F_INDIRECT, 0);
    put_desc(&m, TABLE, 0, 0x8000, 16, F_NEXT, 2);
    put_desc(&m, TABLE, 2, 0x9000, 512, F_WRITE | F_NEXT, 1);
    put_desc(&m, TABLE, 1, 0xa000, 1, F_WRITE, 0);
    let s = parse(&m, 5).unwrap();
    assert_eq!(s.readable().len(), 1);
    assert_eq!(
        s.writable(),
        &[
            Seg {
                addr: 0x9000,
                len: 512
            },
            Seg {
                addr: 0xa000,
                len: 1
            }
        ]
    );
}

#[test]
fn chains_the_fast_path_does_not_take() {
    let m = mem();
    // A loop: 0 -> 1 -> 0.
    put_desc(&m, DESC, 0, 0x8000, 16, F_NEXT, 1);
    put_desc(&m, DESC, 1, 0x9000, 16, F_NEXT, 0);
    assert!(parse(&m, 0).is_none(), "loop");
    // A head out of the ring, a next out of the ring.
    assert!(parse(&m, SIZE).is_none(), "head out of range");
    put_desc(&m, DESC, 0, 0x8000, 16, F_NEXT, SIZE);
    assert!(parse(&m, 0).is_none(), "next out of range");
    // Readable after writable.
    put_desc(&m, DESC, 0, 0x8000, 16, F_WRITE | F_NEXT, 1);
    put_desc(&m, DESC, 1, 0x9000, 16, 0, 0);
    assert!(parse(&m, 0).is_none(), "readable after writable");
    // INDIRECT with NEXT, an empty table, a table of 1.5 descriptors.
    put_desc(&m, DESC, 0, TABLE, 32, F_INDIRECT | F_NEXT, 1);
    assert!(parse(&m, 0).is_none(), "indirect with next");
    put_desc(&m, DESC, 0, TABLE, 0, F_INDIRECT, 0);
    assert!(parse(&m, 0).is_none(), "empty table");
    put_desc(&m, DESC, 0, TABLE, 24, F_INDIRECT, 0);
    assert!(parse(&m, 0).is_none(), "partial descriptor");
    // A table that nests another, a table outside the driver's memory.
    put_desc(&m, DESC, 0, TABLE, 32, F_INDIRECT, 0);
    put_desc(&m, TABLE, 0, 0x8000, 16, F_NEXT, 1);
    put_desc(&m, TABLE, 1, TABLE, 16, F_INDIRECT, 0);
    assert!(parse(&m, 0).is_none(), "nested table");
    put_desc(&m, DESC, 0, 0x40_0000, 32, F_INDIRECT, 0);
    assert!(parse(&m, 0).is_none(), "table outside memory");
}

#[test]
fn more_than_max_segments_go_the_general_way() {
    let m = mem();
    let n = MAX_SEGMENTS as u16 + 1;
    for i in 0..n {
        let flags = if i + 1 < n { F_NEXT } else { 0 };
        put_desc(&m, TABLE, i, 0x8000, 1, flags, i + 1);
    }
    put_desc(&m, DESC, 0, TABLE, u32::from(n) * 16, F_INDIRECT, 0);
    assert!(parse(&m, 0).is_none());
    put_desc(&m, DESC, 0, TABLE, u32::from(n - 1) * 16, F_INDIRECT, 0);
    put_desc(&m, TABLE, n - 2, 0x8000, 1, 0, 0);
    assert_eq!(parse(&m, 0).unwrap().readable().len(), MAX_SEGMENTS);
}

#[test]
fn reads_and_writes_cross_segments_and_regions() {
    let m = mem();
    // Readable: 3 bytes at the end of region 0 and 5 at the start of region 1 in one
    // buffer, then 4 more bytes elsewhere.
    put_desc(&m, DESC, 0, 0xfffd, 8, F_NEXT, 1);
    put_desc(&m, DESC, 1, 0x8000, 4, F_NEXT, 2);
    put_desc(&m, DESC, 2, 0x9000, 6, F_WRITE | F_NEXT, 3);
    put_desc(&m, DESC, 3, 0x10ffe, 4, F_WRITE, 0);
    m.write_slice(&[1, 2, 3, 4, 5, 6, 7, 8], GuestAddress(0xfffd))
        .unwrap();
    m.write_slice(&[9, 10, 11, 12], GuestAddress(0x8000))
        .unwrap();
    let s = parse(&m, 0).unwrap();
    let mut buf = [0u8; 6];
    assert!(s.read_at(&m, 5, &mut buf));
    assert_eq!(buf, [6, 7, 8, 9, 10, 11]);
    assert!(!s.read_at(&m, 7, &mut buf), "past the readable bytes");
    assert!(s.write_at(&m, 4, &[0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6]));
    let mut got = [0u8; 2];
    m.read_slice(&mut got, GuestAddress(0x9004)).unwrap();
    assert_eq!(got, [0xa1, 0xa2]);
    let mut got = [0u8; 4];
    m.read_slice(&mut got, GuestAddress(0x10ffe)).unwrap();
    assert_eq!(got, [0xa3, 0xa4, 0xa5, 0xa6]);
    assert!(!s.write_at(&m, 5, &[0; 6]), "past the writable bytes");
    // A buffer outside the driver's memory parses, but cannot be read.
    put_desc(&m, DESC, 4, 0x40_0000, 16, 0, 0);
    let s = parse(&m, 4).unwrap();
    assert!(!s.read_at(&m, 0, &mut [0u8; 16]));
}

#[test]
fn used_entries_and_notifications() {
    let m = mem();
    let ring = Ring::new(&m, &addrs(true)).unwrap();
    assert_eq!(Ring::avail_idx_of(&m, &addrs(true)), Some(0));
    m.write_obj(3u16.to_le(), GuestAddress(AVAIL + 2)).unwrap();
    assert_eq!(Ring::avail_idx_of(&m, &addrs(true)), Some(3));
    m.write_obj(6u16.to_le(), GuestAddress(AVAIL + 4 + 2))
        .unwrap();
    assert_eq!(ring.avail_head(1), Some(6));
    assert_eq!(
        ring.avail_head(1 + SIZE),
        Some(6),
        "positions wrap at the ring size"
    );
    ring.put_used(SIZE + 1, 6, 4097);
    assert_eq!(m.read_obj::<u32>(GuestAddress(USED + 4 + 8)).unwrap(), 6);
    assert_eq!(m.read_obj::<u32>(GuestAddress(USED + 8 + 8)).unwrap(), 4097);
    // used_event 5: the driver wants to hear when used.idx passes 5 (§2.7.10).
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE));
    m.write_obj(5u16.to_le(), used_event).unwrap();
    assert!(ring.publish_used(3, 6));
    assert_eq!(m.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 6);
    assert!(!ring.publish_used(6, 8));
    assert!(!ring.publish_used(1, 5));
    // Without EVENT_IDX: unless the driver set NO_INTERRUPT.
    let ring = Ring::new(&m, &addrs(false)).unwrap();
    assert!(ring.publish_used(8, 9));
    m.write_obj(AVAIL_F_NO_INTERRUPT.to_le(), GuestAddress(AVAIL))
        .unwrap();
    assert!(!ring.publish_used(9, 10));
}

#[test]
fn rings_outside_memory_or_misaligned_are_not_taken() {
    let m = mem();
    let mut a = addrs(false);
    a.used = 0x1_fff0;
    assert!(Ring::new(&m, &a).is_none(), "used ring past the end");
    let mut a = addrs(false);
    a.avail = 0x2001;
    assert!(Ring::new(&m, &a).is_none(), "avail ring misaligned");
    assert_eq!(Ring::avail_idx_of(&m, &a), None);
    let mut a = addrs(false);
    a.desc = 0xfff0;
    assert!(Ring::new(&m, &a).is_none(), "table across two regions");
}

proptest! {
    /// A guess of where the next request lies is only ever loaded from the ring's own
    /// areas and mapped memory: any last chain (head, length, header address, as a
    /// hostile driver could make them) and any avail position are touched safely.
    #[test]
    fn any_guess_is_touched_safely(
        pos in any::<u16>(),
        head in any::<u16>(),
        ndesc in any::<u16>(),
        header in prop_oneof![any::<u64>(), 0u64..0x20000, (u64::MAX - 8)..=u64::MAX],
    ) {
        let m = mem();
        let ring = Ring::new(&m, &addrs(false)).expect("ring in memory");
        ring.touch(&m, pos, None);
        ring.touch(&m, pos, Some(LastChain { head, ndesc, header }));
    }

    /// Whatever the driver wrote, parsing neither panics nor breaks the segment rules.
    #[test]
    fn any_descriptor_table_parses_safely(
        table in proptest::collection::vec(any::<(u64, u32, u16, u16)>(), 2 * SIZE as usize),
        head in 0u16..SIZE + 2,
        near in any::<bool>(),
    ) {
        let m = mem();
        for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
            // Half the time, addresses and table lengths that land in memory.
            let (addr, len, next) = if near {
                (TABLE + addr % 0x100 * 16, len % 0x200, next % (SIZE + 2))
            } else {
                (addr, len, next)
            };
            let (base, i) = if i < SIZE as usize { (DESC, i) } else { (TABLE, i - SIZE as usize) };
            put_desc(&m, base, i as u16, addr, len, flags & 7, next);
        }
        if let Some(s) = parse(&m, head) {
            prop_assert!(s.readable().len() + s.writable().len() <= MAX_SEGMENTS);
            let r: usize = s.readable().iter().map(|s| s.len as usize).sum();
            let w: usize = s.writable().iter().map(|s| s.len as usize).sum();
            prop_assert_eq!((r, w), (s.readable_len(), s.writable_len()));
            let mut buf = vec![0u8; s.readable_len().min(4096)];
            let _ = s.read_at(&m, 0, &mut buf);
        }
    }
}

#[test]
fn cursors_put_zero_skip_and_take_across_buffers_and_regions() {
    use vbdev_bdev::{ReadDest, WriteSrc};
    let m = mem();
    // Writable: 4 bytes, then 8 bytes across the region boundary.
    put_desc(&m, DESC, 0, 0x8000, 4, F_NEXT, 1);
    put_desc(&m, DESC, 1, 0x9000, 4, F_WRITE | F_NEXT, 2);
    put_desc(&m, DESC, 2, 0xfffc, 8, F_WRITE, 0);
    m.write_slice(&[0x11; 4], GuestAddress(0x9000)).unwrap();
    m.write_slice(&[0x11; 8], GuestAddress(0xfffc)).unwrap();
    m.write_slice(&[1, 2, 3, 4], GuestAddress(0x8000)).unwrap();
    let s = parse(&m, 0).unwrap();
    let mut d = s.dest_at(&m, 1);
    assert!(d.put(&[0xa1, 0xa2]));
    assert!(ReadDest::skip(&mut d, 2), "over the buffer boundary");
    assert!(d.zeros(3));
    assert!(d.put(&[0xb1, 0xb2]));
    assert!(!ReadDest::skip(&mut d, 3), "two bytes left");
    let mut got = [0u8; 12];
    m.read_slice(&mut got[..4], GuestAddress(0x9000)).unwrap();
    m.read_slice(&mut got[4..], GuestAddress(0xfffc)).unwrap();
    assert_eq!(
        got,
        [
            0x11, 0xa1, 0xa2, 0x11, 0x11, 0, 0, 0, 0xb1, 0xb2, 0x11, 0x11
        ]
    );
    assert!(s.flip_writable(&m, 1));
    m.read_slice(&mut got[..2], GuestAddress(0x9000)).unwrap();
    assert_eq!(got[..2], [0x11, !0xa1]);
    let mut src = s.src_at(&m, 1);
    let mut two = [0u8; 2];
    assert!(WriteSrc::skip(&mut src, 1));
    assert!(src.take(&mut two));
    assert_eq!(two, [3, 4]);
    assert!(!src.take(&mut two), "past the readable bytes");
    // Buffers outside the driver's memory: nothing to put, zero, skip or take.
    put_desc(&m, DESC, 4, 0x40_0000, 16, F_WRITE, 0);
    let s = parse(&m, 4).unwrap();
    assert!(!s.dest_at(&m, 0).put(&[1]));
    assert!(!s.dest_at(&m, 0).zeros(1));
    assert!(!ReadDest::skip(&mut s.dest_at(&m, 0), 16));
    put_desc(&m, DESC, 5, 0x1_fff8, 16, 0, 0);
    let s = parse(&m, 5).unwrap();
    assert!(
        !WriteSrc::skip(&mut s.src_at(&m, 0), 16),
        "runs off the end of the memory"
    );
    assert!(WriteSrc::skip(&mut s.src_at(&m, 0), 8));
}
