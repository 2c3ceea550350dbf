//! Fuzzes the READ CAPACITY(10) and (16) parsers: any bytes, no panic, no zero block
//! length accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_scsi::{ReadCapacity10, ReadCapacity16};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ReadCapacity10::parse(data) {
        assert_ne!(c.block_length, 0);
        let _ = (c.needs_16(), c.block_count());
    }
    if let Ok(c) = ReadCapacity16::parse(data) {
        assert_ne!(c.block_length, 0);
        let _ = (c.block_count(), c.physical_block_length());
    }
});
