//! Fuzzes the REPORT LUNS parser: any bytes, no panic, entries never exceed the buffer,
//! decoded LUNs stay in flat space range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_scsi::{Lun, ReportLuns};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ReportLuns::parse(data) {
        assert!(r.luns.len() * 8 <= data.len() - 8);
        for e in &r.luns {
            if let Some(l) = e.lun() {
                assert!(l.get() <= Lun::MAX);
            }
        }
        let _ = (r.needed_len(), r.is_truncated());
    }
});
