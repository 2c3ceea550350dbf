//! Fuzzes the virtio-blk config-space parser: any bytes, any feature set, no panic, and
//! fields of features not negotiated stay zero.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_virtio::blk::{BlkConfig, features};

fuzz_target!(|input: &[u8]| {
    let Some((f, raw)) = input.split_first_chunk::<8>() else {
        return;
    };
    let f = u64::from_le_bytes(*f);
    let c = BlkConfig::parse(raw, f);
    if f & features::SEG_MAX == 0 {
        assert_eq!(c.seg_max, 0);
    }
    let n = BlkConfig::needed_len(f).min(raw.len());
    assert_eq!(BlkConfig::parse(&raw[..n], f), c);
});
