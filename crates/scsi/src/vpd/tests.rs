use super::*;
use proptest::prelude::*;

fn page_of(code: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x00, code];
    v.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn supported_pages_lists_codes() {
    let d = [0x00, 0x00, 0x00, 0x04, 0x00, 0x80, 0x83, 0xB0];
    assert_eq!(parse_supported_pages(&d).unwrap(), [0x00, 0x80, 0x83, 0xB0]);
    // Bytes past PAGE LENGTH are not part of the page.
    let mut long = d.to_vec();
    long.extend_from_slice(&[0xB1, 0xB2]);
    assert_eq!(parse_supported_pages(&long).unwrap().len(), 4);
}

#[test]
fn list_pages_report_truncation_and_wrong_page() {
    let d = [0x00, 0x00, 0x00, 0x05, 0x00, 0x80];
    assert_eq!(
        parse_supported_pages(&d),
        Err(Error::Truncated {
            what: "supported vpd pages",
            need: 9,
            got: 6
        })
    );
    assert_eq!(
        parse_supported_pages(&[0, 0x80, 0, 0]),
        Err(Error::WrongVpdPage {
            expected: 0x00,
            got: 0x80
        })
    );
    assert_eq!(
        parse_unit_serial_number(&[0, 0x80, 0]),
        Err(Error::Short {
            what: "unit serial number page",
            need: 4,
            got: 3
        })
    );
}

#[test]
fn serial_number_is_trimmed() {
    let d = page_of(0x80, b"  SN-1234  \0");
    assert_eq!(parse_unit_serial_number(&d).unwrap(), "SN-1234");
    assert_eq!(parse_unit_serial_number(&page_of(0x80, b"")).unwrap(), "");
}

/// Page 0x83 with a T10 vendor ID (ASCII), an NAA 6 (binary, 16 bytes) and a
/// target-port relative port descriptor, from SPC-5 "Designation descriptor".
fn id_page() -> Vec<u8> {
    let mut b = Vec::new();
    // code set 2 (ASCII), assoc 0, type 1 (T10 vendor ID), length 12
    b.extend_from_slice(&[0x02, 0x01, 0x00, 12]);
    b.extend_from_slice(b"QEMU    disk");
    // code set 1, PIV=1 protocol 5 (iSCSI... any), assoc 0, type 3 (NAA), length 16
    b.extend_from_slice(&[0x51, 0x83, 0x00, 16]);
    b.extend_from_slice(&[
        0x60, 0x01, 0x40, 0x5a, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ]);
    // code set 1, assoc 1 (target port), type 4 (relative target port), length 4
    b.extend_from_slice(&[0x01, 0x14, 0x00, 4, 0, 0, 0, 1]);
    page_of(0x83, &b)
}

#[test]
fn device_identification_decodes_descriptors() {
    let p = DeviceIdentification::parse(&id_page()).unwrap();
    assert_eq!(p.designators.len(), 3);
    let t10 = &p.designators[0];
    assert_eq!(
        (t10.code_set, t10.association, t10.designator_type, t10.piv),
        (
            code_set::ASCII,
            association::LOGICAL_UNIT,
            designator_type::T10_VENDOR_ID,
            false
        )
    );
    assert_eq!(t10.identifier, b"QEMU    disk");
    let naa = &p.designators[1];
    assert_eq!(naa.protocol_identifier, 5);
    assert!(naa.piv);
    assert_eq!(naa.designator_type, designator_type::NAA);
    assert_eq!(naa.naa(), Some(6));
    let port = &p.designators[2];
    assert_eq!(port.association, association::TARGET_PORT);
    assert_eq!(port.designator_type, designator_type::RELATIVE_TARGET_PORT);
    assert_eq!(port.naa(), None);
    assert_eq!(
        p.unique_id().unwrap(),
        [
            0x60, 0x01, 0x40, 0x5a, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
        ]
    );
    assert_eq!(p.preferred(), Some(naa));
}

#[test]
fn unique_id_prefers_naa_then_eui64_and_tags_short_ids() {
    let eui = [0x01, 0x02, 0x00, 8, 0xAA, 0xBB, 0xCC, 0xDD, 1, 2, 3, 4];
    let naa8 = [0x01, 0x03, 0x00, 8, 0x50, 0, 0, 0, 0, 0, 0, 9];
    let mut b = eui.to_vec();
    b.extend_from_slice(&naa8);
    let p = DeviceIdentification::parse(&page_of(0x83, &b)).unwrap();
    assert_eq!(
        p.unique_id().unwrap(),
        [3, 8, 0x50, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0]
    );
    let p = DeviceIdentification::parse(&page_of(0x83, &eui)).unwrap();
    assert_eq!(
        p.unique_id().unwrap(),
        [2, 8, 0xAA, 0xBB, 0xCC, 0xDD, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0]
    );
    // Two EUI-64s of equal rank: the first wins.
    let mut two = eui.to_vec();
    two.extend_from_slice(&[0x01, 0x02, 0x00, 8, 9, 9, 9, 9, 9, 9, 9, 9]);
    let p = DeviceIdentification::parse(&page_of(0x83, &two)).unwrap();
    assert_eq!(p.unique_id().unwrap()[2], 0xAA);
}

#[test]
fn unique_id_uses_uuid_designator() {
    let mut u = vec![0x01, 0x0A, 0x00, 18, 0x10, 0x00];
    u.extend(1..=16u8);
    let p = DeviceIdentification::parse(&page_of(0x83, &u)).unwrap();
    let want: Vec<u8> = (1..=16).collect();
    assert_eq!(p.unique_id().unwrap().to_vec(), want);
}

#[test]
fn unique_id_ignores_ascii_port_and_malformed_designators() {
    let mut b = Vec::new();
    b.extend_from_slice(&[0x02, 0x03, 0x00, 8]); // NAA but ASCII code set
    b.extend_from_slice(b"60000000");
    b.extend_from_slice(&[0x01, 0x13, 0x00, 8, 0x50, 0, 0, 0, 0, 0, 0, 1]); // port NAA
    b.extend_from_slice(&[0x01, 0x03, 0x00, 8, 0x60, 0, 0, 0, 0, 0, 0, 1]); // NAA 6, 8 bytes
    b.extend_from_slice(&[0x01, 0x02, 0x00, 4, 1, 2, 3, 4]); // EUI-64 of 4 bytes
    let p = DeviceIdentification::parse(&page_of(0x83, &b)).unwrap();
    assert_eq!(p.designators.len(), 4);
    assert_eq!(p.unique_id(), None);
}

#[test]
fn device_identification_errors() {
    let mut p = id_page();
    let len = p.len();
    assert_eq!(
        DeviceIdentification::parse(&p[..len - 1]),
        Err(Error::Truncated {
            what: "device identification page",
            need: len,
            got: len - 1
        })
    );
    // Shorten PAGE LENGTH by one: the last descriptor now overruns the page.
    p[3] -= 1;
    assert_eq!(
        DeviceIdentification::parse(&p),
        Err(Error::DescriptorOverrun {
            offset: 4 + 16 + 20,
            len: 4,
            end: len - 1
        })
    );
    // A page that ends inside a descriptor header.
    let p = page_of(0x83, &[0x01, 0x03]);
    assert_eq!(
        DeviceIdentification::parse(&p),
        Err(Error::DescriptorOverrun {
            offset: 4,
            len: 0,
            end: 6
        })
    );
    assert_eq!(
        DeviceIdentification::parse(&page_of(0x80, &[])),
        Err(Error::WrongVpdPage {
            expected: 0x83,
            got: 0x80
        })
    );
    assert!(
        DeviceIdentification::parse(&page_of(0x83, &[]))
            .unwrap()
            .designators
            .is_empty()
    );
}

/// A full SBC-4 Block Limits page (PAGE LENGTH 0x3C).
fn block_limits_page() -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    b[0] = 0x01; // WSNZ
    b[1] = 0x08; // MAXIMUM COMPARE AND WRITE LENGTH
    b[2..4].copy_from_slice(&8u16.to_be_bytes()); // OPTIMAL TRANSFER LENGTH GRANULARITY
    b[4..8].copy_from_slice(&0x8000u32.to_be_bytes()); // MAXIMUM TRANSFER LENGTH
    b[8..12].copy_from_slice(&0x100u32.to_be_bytes()); // OPTIMAL TRANSFER LENGTH
    b[12..16].copy_from_slice(&0xFFu32.to_be_bytes()); // MAXIMUM PREFETCH LENGTH
    b[16..20].copy_from_slice(&0x40_0000u32.to_be_bytes()); // MAXIMUM UNMAP LBA COUNT
    b[20..24].copy_from_slice(&256u32.to_be_bytes()); // MAX UNMAP BLOCK DESCRIPTOR COUNT
    b[24..28].copy_from_slice(&16u32.to_be_bytes()); // OPTIMAL UNMAP GRANULARITY
    b[28..32].copy_from_slice(&0x8000_0003u32.to_be_bytes()); // UGAVALID + alignment 3
    b[32..40].copy_from_slice(&0x1_0000_0000u64.to_be_bytes()); // MAX WRITE SAME LENGTH
    page_of(0xB0, &b)
}

#[test]
fn block_limits_decodes_sbc4_page() {
    let l = BlockLimits::parse(&block_limits_page()).unwrap();
    assert_eq!(
        l,
        BlockLimits {
            wsnz: true,
            max_compare_and_write_length: 8,
            optimal_transfer_length_granularity: 8,
            max_transfer_length: 0x8000,
            optimal_transfer_length: 0x100,
            max_unmap_lba_count: 0x40_0000,
            max_unmap_block_descriptor_count: 256,
            optimal_unmap_granularity: 16,
            unmap_granularity_alignment: Some(3),
            max_write_same_length: 0x1_0000_0000,
        }
    );
    let mut p = block_limits_page();
    p[32] &= 0x7F; // UGAVALID off
    assert_eq!(
        BlockLimits::parse(&p).unwrap().unmap_granularity_alignment,
        None
    );
}

#[test]
fn block_limits_accepts_sbc2_page_and_rejects_shorter() {
    let full = block_limits_page();
    let mut sbc2 = full[..16].to_vec();
    sbc2[3] = 0x0C;
    let l = BlockLimits::parse(&sbc2).unwrap();
    assert_eq!(l.max_transfer_length, 0x8000);
    assert_eq!(l.max_unmap_lba_count, 0);
    assert_eq!(l.max_write_same_length, 0);
    // A 16-byte buffer of the full page: allocation length cut it, same result.
    assert_eq!(BlockLimits::parse(&full[..16]).unwrap(), l);
    assert_eq!(
        BlockLimits::parse(&full[..15]),
        Err(Error::Short {
            what: "block limits page",
            need: 16,
            got: 15
        })
    );
    let mut tiny = full.clone();
    tiny[3] = 8; // PAGE LENGTH too small for MAXIMUM TRANSFER LENGTH
    assert!(matches!(
        BlockLimits::parse(&tiny),
        Err(Error::Short {
            need: 16,
            got: 12,
            ..
        })
    ));
    assert!(matches!(
        BlockLimits::parse(&page_of(0xB1, &[0; 60])),
        Err(Error::WrongVpdPage {
            expected: 0xB0,
            got: 0xB1
        })
    ));
}

#[test]
fn block_device_characteristics_decodes_rotation() {
    let mut b = vec![0u8; 0x3C];
    b[1] = 1;
    let c = BlockDeviceCharacteristics::parse(&page_of(0xB1, &b)).unwrap();
    assert!(c.is_non_rotating());
    assert_eq!(c.rpm(), None);
    b[0..2].copy_from_slice(&7200u16.to_be_bytes());
    let c = BlockDeviceCharacteristics::parse(&page_of(0xB1, &b)).unwrap();
    assert_eq!(c.medium_rotation_rate, 7200);
    assert_eq!(c.rpm(), Some(7200));
    assert!(!c.is_non_rotating());
    assert!(matches!(
        BlockDeviceCharacteristics::parse(&page_of(0xB1, &[0])),
        Err(Error::Short {
            need: 6,
            got: 5,
            ..
        })
    ));
}

#[test]
fn logical_block_provisioning_decodes_bits() {
    // THRESHOLD EXPONENT 0, LBPU|LBPWS|LBPRZ=1, PROVISIONING TYPE thin.
    let d = page_of(0xB2, &[0x00, 0xC4, 0x02, 0x00]);
    let p = LogicalBlockProvisioning::parse(&d).unwrap();
    assert!(p.lbpu && p.lbpws && !p.lbpws10);
    assert_eq!(p.lbprz, 1);
    assert!(!p.anc_sup && !p.dp);
    assert_eq!(p.provisioning_type, provisioning_type::THIN);
    let p = LogicalBlockProvisioning::parse(&page_of(0xB2, &[7, 0x23, 0xF9, 0])).unwrap();
    assert_eq!(p.threshold_exponent, 7);
    assert!(!p.lbpu && !p.lbpws && p.lbpws10 && p.anc_sup && p.dp);
    assert_eq!(p.lbprz, 0);
    assert_eq!(p.provisioning_type, provisioning_type::RESOURCE);
    assert!(matches!(
        LogicalBlockProvisioning::parse(&page_of(0xB2, &[0, 0, 0])),
        Err(Error::Short {
            need: 8,
            got: 7,
            ..
        })
    ));
}

proptest! {
    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_supported_pages(&data);
        let _ = parse_unit_serial_number(&data);
        if let Ok(p) = DeviceIdentification::parse(&data) {
            let _ = p.unique_id();
        }
        let _ = BlockLimits::parse(&data);
        let _ = BlockDeviceCharacteristics::parse(&data);
        let _ = LogicalBlockProvisioning::parse(&data);
    }

    #[test]
    fn id_page_of_arbitrary_descriptors_round_trips(
        descs in proptest::collection::vec(
            (any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..8)
    ) {
        let mut b = Vec::new();
        for (b0, b1, id) in &descs {
            b.extend_from_slice(&[*b0, *b1, 0, u8::try_from(id.len()).unwrap()]);
            b.extend_from_slice(id);
        }
        let p = DeviceIdentification::parse(&page_of(0x83, &b)).unwrap();
        prop_assert_eq!(p.designators.len(), descs.len());
        for (d, (b0, b1, id)) in p.designators.iter().zip(&descs) {
            prop_assert_eq!(d.code_set, b0 & 0x0F);
            prop_assert_eq!(d.association, (b1 >> 4) & 3);
            prop_assert_eq!(d.designator_type, b1 & 0x0F);
            prop_assert_eq!(&d.identifier, id);
        }
        let _ = p.unique_id();
    }
}

proptest! {
    #[test]
    fn block_limits_round_trip(
        wsnz: bool,
        cw: u8,
        gran: u16,
        max_t: u32,
        opt_t: u32,
        unmap: (u32, u32, u32),
        uga in proptest::option::of(0u32..0x8000_0000),
        ws: u64,
    ) {
        let l = BlockLimits {
            wsnz,
            max_compare_and_write_length: cw,
            optimal_transfer_length_granularity: gran,
            max_transfer_length: max_t,
            optimal_transfer_length: opt_t,
            max_unmap_lba_count: unmap.0,
            max_unmap_block_descriptor_count: unmap.1,
            optimal_unmap_granularity: unmap.2,
            unmap_granularity_alignment: uga,
            max_write_same_length: ws,
        };
        prop_assert_eq!(BlockLimits::parse(&l.to_page()).unwrap(), l);
    }

    #[test]
    fn provisioning_and_characteristics_round_trip(
        te: u8,
        bits in proptest::array::uniform5(any::<bool>()),
        lbprz in 0u8..8,
        pt in 0u8..8,
        rate: u16,
    ) {
        let p = LogicalBlockProvisioning {
            threshold_exponent: te,
            lbpu: bits[0],
            lbpws: bits[1],
            lbpws10: bits[2],
            lbprz,
            anc_sup: bits[3],
            dp: bits[4],
            provisioning_type: pt,
        };
        prop_assert_eq!(LogicalBlockProvisioning::parse(&p.to_page()).unwrap(), p);
        let c = BlockDeviceCharacteristics { medium_rotation_rate: rate };
        prop_assert_eq!(BlockDeviceCharacteristics::parse(&c.to_page()).unwrap(), c);
    }
}

proptest! {
    #[test]
    fn identification_pages_round_trip(
        pages in proptest::collection::vec(any::<u8>(), 0..32),
        serial in "[!-~]([ -~]{0,30}[!-~])?",
        ds in proptest::collection::vec(
            (0u8..16, 0u8..16, any::<bool>(), 0u8..4, 0u8..16,
             proptest::collection::vec(any::<u8>(), 0..40)),
            0..6,
        ),
    ) {
        prop_assert_eq!(parse_supported_pages(&supported_pages_page(&pages)).unwrap(), pages);
        prop_assert_eq!(parse_unit_serial_number(&unit_serial_number_page(&serial)).unwrap(), serial);
        let id = DeviceIdentification {
            designators: ds
                .into_iter()
                .map(|(p, c, piv, a, t, identifier)| Designator {
                    protocol_identifier: p,
                    code_set: c,
                    piv,
                    association: a,
                    designator_type: t,
                    identifier,
                })
                .collect(),
        };
        prop_assert_eq!(DeviceIdentification::parse(&id.to_page()).unwrap(), id);
    }
}
