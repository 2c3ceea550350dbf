//! Fuzzes the REPORT SUPPORTED OPERATION CODES parser: any bytes, no panic, descriptors
//! never exceed the buffer, timeouts present exactly with CTDP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_scsi::{CommandDescriptor, SupportedOpcodes};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SupportedOpcodes::parse(data) {
        let held: usize = s.commands.iter().map(CommandDescriptor::encoded_len).sum();
        assert!(held <= data.len() - 4);
        for c in &s.commands {
            assert_eq!(c.timeouts.is_some(), c.ctdp);
            assert!(s.supports(c.opcode, c.servactv.then_some(c.service_action)));
        }
        let _ = (s.needed_len(), s.is_truncated());
    }
});
