use super::*;
use proptest::prelude::*;

/// The spec fields of a READ/WRITE CDB, decoded independently of the builders from
/// the SBC-4 READ(10)/READ(16) tables.
#[derive(Debug, PartialEq)]
struct Rw {
    op: u8,
    lba: u64,
    blocks: u32,
    fua: bool,
}

fn decode_rw(c: &[u8]) -> Rw {
    match c.len() {
        10 => Rw {
            op: c[0],
            lba: u64::from(u32::from_be_bytes([c[2], c[3], c[4], c[5]])),
            blocks: u32::from(u16::from_be_bytes([c[7], c[8]])),
            fua: c[1] & 0x08 != 0,
        },
        16 => Rw {
            op: c[0],
            lba: u64::from_be_bytes(c[2..10].try_into().unwrap()),
            blocks: u32::from_be_bytes(c[10..14].try_into().unwrap()),
            fua: c[1] & 0x08 != 0,
        },
        n => panic!("unexpected cdb length {n}"),
    }
}

#[test]
fn inquiry_layouts_follow_spc5() {
    assert_eq!(inquiry(96).as_bytes(), [0x12, 0, 0, 0, 96, 0]);
    assert_eq!(
        inquiry_vpd(0x83, 0x1234).as_bytes(),
        [0x12, 0x01, 0x83, 0x12, 0x34, 0]
    );
}

#[test]
fn capacity_and_luns_layouts_follow_spec() {
    assert_eq!(
        read_capacity_10().as_bytes(),
        [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let c = read_capacity_16(32);
    assert_eq!(c.len(), 16);
    assert_eq!(&c.as_bytes()[..2], [0x9E, 0x10]);
    assert_eq!(&c.as_bytes()[10..14], [0, 0, 0, 32]);
    assert_eq!(
        report_luns(0x02, 0x0001_0000).as_bytes(),
        [0xA0, 0, 0x02, 0, 0, 0, 0, 0x01, 0, 0, 0, 0]
    );
}

#[test]
fn mode_sense_and_rsoc_layouts_follow_spc5() {
    // DBD, current values, Caching page: what a block initiator sends.
    assert_eq!(
        mode_sense_6(true, 0, 0x08, 0, 64).as_bytes(),
        [0x1A, 0x08, 0x08, 0, 64, 0]
    );
    // Changeable values of all pages and subpages.
    assert_eq!(
        mode_sense_6(false, 1, 0x3F, 0xFF, 255).as_bytes(),
        [0x1A, 0, 0x7F, 0xFF, 255, 0]
    );
    // Out-of-range fields are cut to their widths, not spilled into neighbours.
    assert_eq!(
        mode_sense_6(false, 0xFF, 0xFF, 0, 0).as_bytes(),
        [0x1A, 0, 0xFF, 0, 0, 0]
    );
    assert_eq!(
        mode_sense_6(false, 0x04, 0x48, 0, 0).as_bytes(),
        [0x1A, 0, 0x08, 0, 0, 0]
    );
    assert_eq!(
        report_supported_operation_codes_all(0x0102_0304).as_bytes(),
        [0xA3, 0x0C, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0]
    );
}

#[test]
fn small_commands_follow_spec() {
    assert_eq!(test_unit_ready().as_bytes(), [0; 6]);
    assert_eq!(
        start_stop_unit(true, false, false).as_bytes(),
        [0x1B, 0, 0, 0, 1, 0]
    );
    assert_eq!(
        start_stop_unit(false, true, true).as_bytes(),
        [0x1B, 1, 0, 0, 2, 0]
    );
    assert_eq!(
        synchronize_cache_10(0x0102_0304, 0x0506, true).as_bytes(),
        [0x35, 0x02, 1, 2, 3, 4, 0, 5, 6, 0]
    );
    let s = synchronize_cache_16(0x0102_0304_0506_0708, 0x090A_0B0C, false);
    assert_eq!(
        s.as_bytes(),
        [0x91, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0]
    );
    let w = write_same_16(7, 9, true, true);
    assert_eq!(w.as_bytes()[..2], [0x93, 0x09]);
    assert_eq!(w.as_bytes()[2..14], [0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 9]);
    assert_eq!(write_same_16(0, 0, false, true).as_bytes()[1], 0x01);
    assert_eq!(unmap(24).as_bytes(), [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
}

#[test]
fn unmap_parameter_list_follows_sbc4() {
    let v = unmap_parameter_list(&[
        UnmapDescriptor {
            lba: 0x10,
            blocks: 8,
        },
        UnmapDescriptor {
            lba: 1 << 40,
            blocks: 0xFFFF_FFFF,
        },
    ])
    .unwrap();
    #[rustfmt::skip]
        let want = [
            0, 38, 0, 32, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0, 0,
            0, 0, 1, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0,
        ];
    assert_eq!(v, want);
    assert_eq!(unmap_parameter_list(&[]).unwrap(), [0, 6, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn unmap_parameter_list_errors() {
    let many = vec![UnmapDescriptor { lba: 0, blocks: 1 }; UNMAP_MAX_DESCRIPTORS + 1];
    assert_eq!(
        unmap_parameter_list(&many),
        Err(Error::TooManyUnmapDescriptors {
            count: UNMAP_MAX_DESCRIPTORS + 1,
            max: UNMAP_MAX_DESCRIPTORS
        })
    );
    let max = unmap_parameter_list(&many[..UNMAP_MAX_DESCRIPTORS]).unwrap();
    assert_eq!(max.len(), 65528);
    assert_eq!(u16::from_be_bytes([max[0], max[1]]), 65526);
    let mut small = [0u8; 23];
    assert_eq!(
        write_unmap_parameter_list(&many[..1], &mut small),
        Err(Error::BufferTooSmall { need: 24, got: 23 })
    );
}

proptest! {
    #[test]
    fn rw16_round_trips(lba: u64, blocks: u32, fua: bool) {
        prop_assert_eq!(decode_rw(read_16(lba, blocks, fua).as_bytes()),
            Rw { op: 0x88, lba, blocks, fua });
        prop_assert_eq!(decode_rw(write_16(lba, blocks, fua).as_bytes()),
            Rw { op: 0x8A, lba, blocks, fua });
    }

    #[test]
    fn rw10_round_trips(lba: u32, blocks: u16, fua: bool) {
        let (lba64, b32) = (u64::from(lba), u32::from(blocks));
        prop_assert_eq!(decode_rw(read_10(lba, blocks, fua).as_bytes()),
            Rw { op: 0x28, lba: lba64, blocks: b32, fua });
        prop_assert_eq!(decode_rw(write_10(lba, blocks, fua).as_bytes()),
            Rw { op: 0x2A, lba: lba64, blocks: b32, fua });
    }

    #[test]
    fn choice_picks_16_exactly_when_needed(
        lba in prop_oneof![any::<u64>(), 0..=u64::from(u32::MAX) + 1],
        blocks in prop_oneof![any::<u32>(), 0..=u32::from(u16::MAX) + 1],
        fua: bool,
    ) {
        let big = lba > u64::from(u32::MAX) || blocks > u32::from(u16::MAX);
        prop_assert_eq!(needs_16(lba, blocks), big);
        let r = read(lba, blocks, fua);
        let w = write(lba, blocks, fua);
        prop_assert_eq!(r.len(), if big { 16 } else { 10 });
        prop_assert_eq!(w.len(), r.len());
        prop_assert_eq!(r.opcode(), if big { 0x88 } else { 0x28 });
        prop_assert_eq!(w.opcode(), if big { 0x8A } else { 0x2A });
        prop_assert_eq!(decode_rw(r.as_bytes()), Rw { op: r.opcode(), lba, blocks, fua });
        prop_assert_eq!(decode_rw(w.as_bytes()), Rw { op: w.opcode(), lba, blocks, fua });
    }

    #[test]
    fn unmap_list_round_trips(descs in proptest::collection::vec((any::<u64>(), any::<u32>()), 0..40)) {
        let descs: Vec<_> = descs.into_iter()
            .map(|(lba, blocks)| UnmapDescriptor { lba, blocks }).collect();
        let v = unmap_parameter_list(&descs).unwrap();
        prop_assert_eq!(v.len(), 8 + 16 * descs.len());
        prop_assert_eq!(usize::from(u16::from_be_bytes([v[0], v[1]])), v.len() - 2);
        prop_assert_eq!(usize::from(u16::from_be_bytes([v[2], v[3]])), 16 * descs.len());
        for (d, c) in descs.iter().zip(v[8..].chunks_exact(16)) {
            prop_assert_eq!(u64::from_be_bytes(c[0..8].try_into().unwrap()), d.lba);
            prop_assert_eq!(u32::from_be_bytes(c[8..12].try_into().unwrap()), d.blocks);
            prop_assert_eq!(&c[12..16], &[0u8; 4][..]);
        }
    }

    #[test]
    fn mode_sense_6_round_trips(dbd: bool, pc in 0u8..4, page in 0u8..0x40, sub: u8, len: u8) {
        let c = mode_sense_6(dbd, pc, page, sub, len);
        let b = c.as_bytes();
        prop_assert_eq!(b.len(), 6);
        prop_assert_eq!(b[0], 0x1A);
        prop_assert_eq!(b[1], u8::from(dbd) << 3);
        prop_assert_eq!((b[2] >> 6, b[2] & 0x3F, b[3], b[4], b[5]), (pc, page, sub, len, 0));
    }

    #[test]
    fn rsoc_all_round_trips(len: u32) {
        let c = report_supported_operation_codes_all(len);
        let b = c.as_bytes();
        prop_assert_eq!(b.len(), 12);
        prop_assert_eq!(&b[..6], &[0xA3, 0x0C, 0, 0, 0, 0][..]);
        prop_assert_eq!(u32::from_be_bytes(b[6..10].try_into().unwrap()), len);
        prop_assert_eq!(&b[10..], &[0, 0][..]);
    }

    #[test]
    fn sync_and_write_same_round_trip(lba: u64, blocks: u32, a: bool, b: bool) {
        let s = synchronize_cache_16(lba, blocks, a);
        prop_assert_eq!(u64::from_be_bytes(s.as_bytes()[2..10].try_into().unwrap()), lba);
        prop_assert_eq!(u32::from_be_bytes(s.as_bytes()[10..14].try_into().unwrap()), blocks);
        prop_assert_eq!(s.as_bytes()[1] & 0x02 != 0, a);
        let w = write_same_16(lba, blocks, a, b);
        prop_assert_eq!(u64::from_be_bytes(w.as_bytes()[2..10].try_into().unwrap()), lba);
        prop_assert_eq!(u32::from_be_bytes(w.as_bytes()[10..14].try_into().unwrap()), blocks);
        prop_assert_eq!(w.as_bytes()[1], u8::from(a) << 3 | u8::from(b));
    }
}
