//! Fuzzes the REPORT SUPPORTED OPERATION CODES parsers (all_commands and one_command):
//! any bytes, no panic, descriptors never exceed the buffer, timeouts present exactly
//! with CTDP, one_command data parses back to what it encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_scsi::{CommandDescriptor, OneCommand, SupportedOpcodes};

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
    if let Ok(o) = OneCommand::parse(data) {
        assert!(4 + o.usage.len() <= data.len());
        assert_eq!(OneCommand::parse(&o.encode()).as_ref(), Ok(&o));
    }
});
