//! Fuzzes the MODE SENSE(6) and MODE SENSE(10) parsers: any bytes, no panic, an accepted
//! header declares at least itself, a page found lies in the buffer and within MODE DATA
//! LENGTH; the Control page and the block descriptors parse what they encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_scsi::{BlockDescriptor, CachingPage, ControlPage, ModeParameterHeader10, ModeSense6, mode};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ModeSense6::parse(data) {
        assert!(m.header.data_len() >= 4);
        let _ = (m.write_protected(), m.write_cache_enabled(), m.header.dpofua());
    }
    // Look for the page the first page-sized byte names, so other pages get walked too.
    let code = data.get(4).copied().unwrap_or(0) & 0x3F;
    let sub = data.get(5).copied().unwrap_or(0);
    for (code, sub) in [(code, 0), (code, sub)] {
        if let Ok(Some(p)) = mode::find_page_6(data, code, sub) {
            assert!(p.len() >= 2 && p.len() <= data.len());
            assert!(p.len() + 4 <= usize::from(data[0]) + 1);
            assert_eq!(p[0] & 0x3F, code);
            let _ = CachingPage::parse(p);
        }
    }
    // MODE SENSE(10): the header, any page it holds, the Control page's round trip.
    if let Ok(h) = ModeParameterHeader10::parse(data) {
        assert!(h.data_len() >= 8);
        assert_eq!(ModeParameterHeader10::parse(&h.to_bytes()), Ok(h));
    }
    let code = data.get(8).copied().unwrap_or(0) & 0x3F;
    if let Ok(Some(p)) = mode::find_page_10(data, code, 0) {
        assert!(p.len() >= 2 && p.len() <= data.len());
        assert!(p.len() + 8 <= usize::from(u16::from_be_bytes([data[0], data[1]])) + 2);
        if let Ok(c) = ControlPage::parse(p) {
            assert_eq!(ControlPage::parse(&c.to_bytes()), Ok(c));
        }
    }
    if let Ok(b) = BlockDescriptor::parse_long(data) {
        assert_eq!(BlockDescriptor::parse_long(&b.to_long_bytes()), Ok(b));
    }
    if let Ok(b) = BlockDescriptor::parse_short(data) {
        assert_eq!(BlockDescriptor::parse_short(&b.to_short_bytes()), Ok(b));
    }
});
