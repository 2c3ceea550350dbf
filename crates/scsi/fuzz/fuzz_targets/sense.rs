//! Fuzzes the sense data parser (fixed and descriptor format): any bytes, no panic,
//! accepted data has a response code 0x70..=0x73.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_scsi::Sense;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Sense::parse(data) {
        assert!((0x70..=0x73).contains(&s.response_code));
        assert_eq!(s.deferred, s.response_code & 1 == 1);
    }
});
