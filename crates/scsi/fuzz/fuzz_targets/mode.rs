//! Fuzzes the MODE SENSE(6) parser: any bytes, no panic, an accepted header declares at
//! least itself, a page found lies in the buffer and within MODE DATA LENGTH.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_scsi::{CachingPage, ModeSense6, mode};

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
});
