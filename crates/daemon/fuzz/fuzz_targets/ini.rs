//! Fuzzes SPDK's legacy INI config converter (`vbdev serve --config`) with any text: no
//! panic, and what it accepts becomes calls whose params are objects naming a transport.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_daemon::ini;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = ini::parse_full(&text) {
        for c in &cfg.calls {
            assert!(c.params.is_object(), "{:?}", c.params);
            assert!(c.params.get("trtype").is_some(), "{:?}", c.params);
        }
    }
});
