use super::*;
use proptest::prelude::*;

/// MODE SENSE(6) data from its parts, MODE DATA LENGTH computed.
fn data(dsp: u8, block_descriptors: &[u8], pages: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![0, 0, dsp, u8::try_from(block_descriptors.len()).unwrap()];
    v.extend_from_slice(block_descriptors);
    for p in pages {
        v.extend_from_slice(p);
    }
    v[0] = u8::try_from(v.len() - 1).unwrap();
    v
}

/// A Caching mode page as SBC-4 lays it out, with byte 2 given.
fn caching(b2: u8) -> Vec<u8> {
    let mut p = vec![0u8; 0x14];
    p[0] = 0x08;
    p[1] = 0x12;
    p[2] = b2;
    p
}

/// A Control mode page (SPC-5), page_0 format.
const CONTROL: [u8; 12] = [0x0A, 0x0A, 0x02, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn caching_page_with_dbd() {
    let d = data(0x10, &[], &[&caching(0x04)]);
    assert_eq!(d.len(), 24);
    let m = ModeSense6::parse(&d).unwrap();
    assert_eq!(
        m.header,
        ModeParameterHeader6 {
            mode_data_length: 23,
            medium_type: 0,
            device_specific_parameter: 0x10,
            block_descriptor_length: 0,
        }
    );
    assert!(m.header.dpofua() && !m.write_protected());
    assert_eq!(m.header.data_len(), 24);
    assert_eq!(m.header.pages_offset(), 4);
    assert_eq!(
        m.caching,
        Some(CachingPage {
            wce: true,
            rcd: false
        })
    );
    assert!(m.write_cache_enabled());
}

#[test]
fn pages_follow_block_descriptors_and_other_pages() {
    // A short LBA block descriptor (SBC-4): 0x1000 blocks of 512 bytes.
    let bd = [0, 0, 0x10, 0, 0, 0, 2, 0];
    // A page in sub_page format (Control Extension, 0Ah/01h) and the Control page
    // before the Caching page; WP set, RCD set, WCE clear; PS set.
    let ext = [0x4A, 0x01, 0x00, 0x1C];
    let mut ext = ext.to_vec();
    ext.resize(4 + 0x1C, 0);
    let mut c = caching(0x01);
    c[0] |= 0x80;
    let d = data(0x80, &bd, &[&ext, &CONTROL, &c]);
    let m = ModeSense6::parse(&d).unwrap();
    assert!(m.write_protected() && !m.header.dpofua());
    assert_eq!(m.header.pages_offset(), 12);
    assert_eq!(
        m.caching,
        Some(CachingPage {
            wce: false,
            rcd: true
        })
    );
    assert!(!m.write_cache_enabled());
    assert_eq!(find_page_6(&d, 0x0A, 0), Ok(Some(&CONTROL[..])));
    assert_eq!(find_page_6(&d, 0x0A, 0x01), Ok(Some(&ext[..])));
    assert_eq!(find_page_6(&d, 0x0A, 0x02), Ok(None));
    assert_eq!(find_page_6(&d, 0x1C, 0), Ok(None));
}

#[test]
fn data_without_the_caching_page() {
    // Header only: MODE DATA LENGTH 3.
    let m = ModeSense6::parse(&[3, 0, 0x80, 0]).unwrap();
    assert!(m.write_protected());
    assert_eq!(m.caching, None);
    assert!(!m.write_cache_enabled());
    // Only the Control page.
    let d = data(0, &[], &[&CONTROL]);
    assert_eq!(ModeSense6::parse(&d).unwrap().caching, None);
    // Page 08h in sub_page format is not the Caching page.
    let d = data(0, &[], &[&[0x48, 0x00, 0x00, 0x01, 0x04]]);
    assert_eq!(ModeSense6::parse(&d).unwrap().caching, None);
    // Bytes past MODE DATA LENGTH are not pages.
    let mut d = data(0, &[], &[]);
    d.extend_from_slice(&caching(0x04));
    assert_eq!(ModeSense6::parse(&d).unwrap().caching, None);
}

#[test]
fn short_caching_pages() {
    // PAGE LENGTH 1 still holds byte 2.
    let d = data(0, &[], &[&[0x08, 0x01, 0x04]]);
    assert!(ModeSense6::parse(&d).unwrap().write_cache_enabled());
    // PAGE LENGTH 0 does not.
    let d = data(0, &[], &[&[0x08, 0x00]]);
    assert_eq!(
        ModeSense6::parse(&d),
        Err(Error::Short {
            what: "caching mode page",
            need: 3,
            got: 2
        })
    );
    assert_eq!(
        CachingPage::parse(&[0x08]),
        Err(Error::Short {
            what: "caching mode page",
            need: 3,
            got: 1
        })
    );
    assert_eq!(
        CachingPage::parse(&CONTROL),
        Err(Error::WrongModePage {
            expected: 0x08,
            got: 0x0A
        })
    );
    assert_eq!(
        CachingPage::parse(&[0xC8, 0, 0, 1, 4]),
        Err(Error::WrongModePage {
            expected: 0x08,
            got: 0x48
        })
    );
}

#[test]
fn malformed_data_is_an_error() {
    assert_eq!(
        ModeSense6::parse(&[23, 0, 0]),
        Err(Error::Short {
            what: "mode parameter header(6)",
            need: 4,
            got: 3
        })
    );
    assert_eq!(
        ModeSense6::parse(&[2, 0, 0, 0]),
        Err(Error::Overrun {
            what: "mode parameter header(6)",
            offset: 0,
            len: 4,
            end: 3
        })
    );
    // BLOCK DESCRIPTOR LENGTH 8, but MODE DATA LENGTH leaves room for 4.
    assert_eq!(
        ModeSense6::parse(&[7, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(Error::Overrun {
            what: "mode parameter block descriptors",
            offset: 4,
            len: 8,
            end: 8
        })
    );
    // A page whose PAGE LENGTH runs past MODE DATA LENGTH.
    let mut d = data(0, &[], &[&CONTROL, &caching(0x04)]);
    d[0] -= 1;
    assert_eq!(
        ModeSense6::parse(&d),
        Err(Error::Overrun {
            what: "mode page",
            offset: 16,
            len: 20,
            end: 35
        })
    );
    // A page header cut by MODE DATA LENGTH.
    let d = [5, 0, 0, 0, 0x48, 0x01, 0, 0];
    assert_eq!(
        ModeSense6::parse(&d),
        Err(Error::Overrun {
            what: "mode page header",
            offset: 4,
            len: 4,
            end: 6
        })
    );
}

#[test]
fn truncated_data_asks_for_more() {
    let bd = [0u8; 8];
    let d = data(0, &bd, &[&CONTROL, &caching(0x04)]);
    assert_eq!(d.len(), 44);
    for cut in [4, 11, 12, 13, 24, 25, 43] {
        assert_eq!(
            ModeSense6::parse(&d[..cut]),
            Err(Error::Truncated {
                what: "mode parameter data",
                need: 44,
                got: cut
            }),
            "cut at {cut}"
        );
    }
    // The Control page alone fits the first 24 bytes.
    assert_eq!(find_page_6(&d[..24], 0x0A, 0), Ok(Some(&CONTROL[..])));
}

#[test]
fn what_our_target_returns() {
    // MODE SENSE(6), page 3Fh, no DBD, a 512-byte disk of 0x8000 blocks.
    let mut d = vec![43, 0, 0x10, 8, 0, 0, 0x80, 0, 0, 0, 2, 0];
    d.extend_from_slice(&caching(0x04));
    d.extend_from_slice(&CONTROL);
    let m = ModeSense6::parse(&d).unwrap();
    assert!(m.write_cache_enabled() && !m.write_protected());
}

/// A mode page other than the page_0 format Caching page.
fn other_page() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..0x3F,
        any::<bool>(),
        1u8..,
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(code, spf, sub, ps, body)| {
            let ps = if ps { 0x80 } else { 0 };
            let len = u8::try_from(body.len()).unwrap();
            let mut p = if spf {
                vec![ps | 0x40 | code, sub, 0, len]
            } else {
                let code = if code == page::CACHING { 0x0A } else { code };
                vec![ps | code, len]
            };
            p.extend_from_slice(&body);
            p
        })
}

proptest! {
    #[test]
    fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(m) = ModeSense6::parse(&data) {
            prop_assert!(m.header.data_len() >= 4);
            prop_assert!(data.len() >= 4);
        }
        if let Ok(Some(p)) = find_page_6(&data, data.first().copied().unwrap_or(0) & 0x3F, 0) {
            prop_assert!(p.len() >= 2 && p.len() <= data.len());
        }
    }

    #[test]
    fn finds_the_caching_page_in_any_layout(
        dsp: u8,
        bd in proptest::collection::vec(any::<u8>(), 0..24),
        before in proptest::collection::vec(other_page(), 0..4),
        after in proptest::collection::vec(other_page(), 0..2),
        b2: u8,
        cut: usize,
    ) {
        let c = caching(b2);
        let pages: Vec<&[u8]> = before.iter().map(Vec::as_slice)
            .chain([c.as_slice()])
            .chain(after.iter().map(Vec::as_slice))
            .collect();
        let d = data(dsp, &bd, &pages);
        let m = ModeSense6::parse(&d).unwrap();
        prop_assert_eq!(m.header.device_specific_parameter, dsp);
        prop_assert_eq!(usize::from(m.header.block_descriptor_length), bd.len());
        prop_assert_eq!(m.write_protected(), dsp & 0x80 != 0);
        prop_assert_eq!(m.header.dpofua(), dsp & 0x10 != 0);
        prop_assert_eq!(
            m.caching,
            Some(CachingPage { wce: b2 & 0x04 != 0, rcd: b2 & 0x01 != 0 })
        );
        // Cut to an allocation length: the same answer while the Caching page
        // fits, else a request for all of it.
        let cut = cut % (d.len() + 1);
        let page_end = 4 + bd.len() + before.iter().map(Vec::len).sum::<usize>() + c.len();
        let r = ModeSense6::parse(&d[..cut]);
        if cut >= page_end {
            prop_assert_eq!(r, Ok(m));
        } else if cut < 4 {
            let short = matches!(r, Err(Error::Short { .. }));
            prop_assert!(short);
        } else {
            prop_assert_eq!(
                r,
                Err(Error::Truncated { what: "mode parameter data", need: d.len(), got: cut })
            );
        }
    }
}

proptest! {
    #[test]
    fn header_and_caching_page_round_trip(
        len in 3u8..,
        medium: u8,
        dsp: u8,
        bdl: u8,
        wce: bool,
        rcd: bool,
    ) {
        let h = ModeParameterHeader6 {
            mode_data_length: len,
            medium_type: medium,
            device_specific_parameter: dsp,
            block_descriptor_length: bdl,
        };
        prop_assert_eq!(ModeParameterHeader6::parse(&h.to_bytes()).unwrap(), h);
        let c = CachingPage { wce, rcd };
        prop_assert_eq!(CachingPage::parse(&c.to_bytes()).unwrap(), c);
        // Header, then the page: what MODE SENSE(6) for page 08h without block
        // descriptors returns.
        let mut data = ModeParameterHeader6 {
            mode_data_length: (3 + CACHING_PAGE_LEN) as u8,
            block_descriptor_length: 0,
            ..h
        }
        .to_bytes()
        .to_vec();
        data.extend_from_slice(&c.to_bytes());
        prop_assert_eq!(ModeSense6::parse(&data).unwrap().caching, Some(c));
    }
}

#[test]
fn header_10_fields_and_errors() {
    // SPC-5 Mode parameter header(10): 22 bytes of mode data after the length field,
    // write-protected with DPOFUA, long LBA descriptors of 16 bytes.
    let d = [0x00, 0x16, 0x00, 0x90, 0x01, 0x00, 0x00, 0x10];
    let h = ModeParameterHeader10::parse(&d).unwrap();
    assert_eq!(
        h,
        ModeParameterHeader10 {
            mode_data_length: 0x16,
            medium_type: 0,
            device_specific_parameter: 0x90,
            longlba: true,
            block_descriptor_length: 16,
        }
    );
    assert!(h.write_protected());
    assert_eq!((h.data_len(), h.pages_offset()), (24, 24));
    assert_eq!(h.to_bytes(), d);
    assert!(matches!(
        ModeParameterHeader10::parse(&d[..7]),
        Err(Error::Short {
            need: 8,
            got: 7,
            ..
        })
    ));
    // A MODE DATA LENGTH of 5 ends inside the header.
    assert!(matches!(
        ModeParameterHeader10::parse(&[0, 5, 0, 0, 0, 0, 0, 0]),
        Err(Error::Overrun { end: 7, .. })
    ));
}

#[test]
fn block_descriptors_short_and_long() {
    let b = BlockDescriptor {
        num_blocks: 0x1_0000_0000,
        block_length: 4096,
    };
    // The short format says "more" for a count that needs 33 bits.
    assert_eq!(
        b.to_short_bytes(),
        [0xFF, 0xFF, 0xFF, 0xFF, 0, 0x00, 0x10, 0x00]
    );
    assert_eq!(
        b.to_long_bytes(),
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]
    );
    assert_eq!(BlockDescriptor::parse_long(&b.to_long_bytes()).unwrap(), b);
    assert!(matches!(
        BlockDescriptor::parse_short(&[0; 7]),
        Err(Error::Short { need: 8, .. })
    ));
    assert!(matches!(
        BlockDescriptor::parse_long(&[0; 15]),
        Err(Error::Short { need: 16, .. })
    ));
}

#[test]
fn control_page_bytes_and_errors() {
    // GLTSD and unrestricted reordering: what our target reports.
    let c = ControlPage {
        gltsd: true,
        queue_algorithm_modifier: 1,
        ..ControlPage::default()
    };
    assert_eq!(
        c.to_bytes(),
        [0x0A, 0x0A, 0x02, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(ControlPage::default().to_bytes()[2..], [0; 10]);
    assert_eq!(
        ControlPage::parse(
            &CachingPage {
                wce: true,
                rcd: false
            }
            .to_bytes()
        ),
        Err(Error::WrongModePage {
            expected: page::CONTROL,
            got: page::CACHING
        })
    );
    // PAGE LENGTH shorter than the page: what is there is not enough.
    let mut short = c.to_bytes();
    short[1] = 6;
    assert!(matches!(
        ControlPage::parse(&short),
        Err(Error::Short {
            need: 12,
            got: 8,
            ..
        })
    ));
}

proptest! {
    #[test]
    fn header_10_descriptors_and_control_page_round_trip(
        len in 6u16..,
        medium: u8,
        dsp: u8,
        longlba: bool,
        bdl: u16,
        num_blocks: u64,
        block_length in 0u32..1 << 24,
        d_sense: bool,
        gltsd: bool,
        qam in 0u8..16,
        qerr in 0u8..4,
        ua in 0u8..4,
        tas: bool,
        busy: u16,
    ) {
        let h = ModeParameterHeader10 {
            mode_data_length: len,
            medium_type: medium,
            device_specific_parameter: dsp,
            longlba,
            block_descriptor_length: bdl,
        };
        prop_assert_eq!(ModeParameterHeader10::parse(&h.to_bytes()).unwrap(), h);
        let b = BlockDescriptor { num_blocks, block_length };
        prop_assert_eq!(BlockDescriptor::parse_long(&b.to_long_bytes()).unwrap(), b);
        let short = BlockDescriptor::parse_short(&b.to_short_bytes()).unwrap();
        prop_assert_eq!(short.block_length, block_length);
        prop_assert_eq!(short.num_blocks, num_blocks.min(u64::from(u32::MAX)));
        let c = ControlPage {
            d_sense,
            gltsd,
            queue_algorithm_modifier: qam,
            qerr,
            ua_intlck_ctrl: ua,
            tas,
            busy_timeout_period: busy,
        };
        prop_assert_eq!(ControlPage::parse(&c.to_bytes()).unwrap(), c);
        // MODE SENSE(10) for all pages with a long descriptor: header, descriptor,
        // Caching and Control pages; each page is found where it lies.
        let caching = CachingPage { wce: d_sense, rcd: tas };
        let mut data = ModeParameterHeader10 {
            mode_data_length: (6 + LONG_BLOCK_DESCRIPTOR_LEN + CACHING_PAGE_LEN + CONTROL_PAGE_LEN) as u16,
            longlba: true,
            block_descriptor_length: LONG_BLOCK_DESCRIPTOR_LEN as u16,
            ..h
        }
        .to_bytes()
        .to_vec();
        data.extend_from_slice(&b.to_long_bytes());
        data.extend_from_slice(&caching.to_bytes());
        data.extend_from_slice(&c.to_bytes());
        let found = find_page_10(&data, page::CONTROL, 0).unwrap().unwrap();
        prop_assert_eq!(ControlPage::parse(found).unwrap(), c);
        let found = find_page_10(&data, page::CACHING, 0).unwrap().unwrap();
        prop_assert_eq!(CachingPage::parse(found).unwrap(), caching);
    }

    #[test]
    fn mode_10_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(h) = ModeParameterHeader10::parse(&data) {
            prop_assert!(h.data_len() >= 8);
        }
        if let Ok(Some(p)) = find_page_10(&data, data.get(8).copied().unwrap_or(0) & 0x3F, 0) {
            prop_assert!(p.len() >= 2 && p.len() <= data.len());
        }
        let _ = ControlPage::parse(&data);
        let _ = BlockDescriptor::parse_short(&data);
        let _ = BlockDescriptor::parse_long(&data);
    }
}
