//! REPORT SUPPORTED OPERATION CODES parameter data for all commands (SPC-5 "All_commands
//! parameter data format", REPORTING OPTIONS 000b).
//!
//! Layout: bytes 0..4 COMMAND DATA LENGTH (the bytes after the field), then command
//! descriptors: byte 0 OPERATION CODE, bytes 2..4 SERVICE ACTION, byte 5 CTDP (bit 1)
//! and SERVACTV (bit 0), bytes 6..8 CDB LENGTH. With CTDP a command timeouts descriptor
//! follows (bytes 0..2 DESCRIPTOR LENGTH, 0Ah; byte 3 COMMAND SPECIFIC; bytes 4..8
//! NOMINAL COMMAND PROCESSING TIMEOUT; bytes 8..12 RECOMMENDED COMMAND TIMEOUT), so a
//! descriptor is 8 bytes, or 20 with CTDP.

use crate::error::{Error, Result};

/// Length of the parameter data header (COMMAND DATA LENGTH).
pub const SUPPORTED_OPCODES_HEADER_LEN: usize = 4;
/// Length of a command descriptor without command timeouts.
pub const COMMAND_DESCRIPTOR_LEN: usize = 8;
/// Length of the command timeouts descriptor that follows a command descriptor with
/// CTDP set.
pub const COMMAND_TIMEOUTS_LEN: usize = 12;

/// The command timeouts descriptor (SPC-5 "Command timeouts descriptor").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandTimeouts {
    /// COMMAND SPECIFIC: command-dependent timeout information.
    pub command_specific: u8,
    /// NOMINAL COMMAND PROCESSING TIMEOUT in seconds (0: not specified).
    pub nominal: u32,
    /// RECOMMENDED COMMAND TIMEOUT in seconds (0: not specified).
    pub recommended: u32,
}

/// One command descriptor (SPC-5 "Command descriptor format").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandDescriptor {
    /// OPERATION CODE.
    pub opcode: u8,
    /// SERVICE ACTION; meaningful when `servactv`.
    pub service_action: u16,
    /// SERVACTV: the operation code has service actions and this descriptor is for
    /// `service_action`.
    pub servactv: bool,
    /// CTDP: a command timeouts descriptor follows; `timeouts` is `Some` exactly then.
    pub ctdp: bool,
    /// CDB LENGTH: the command's CDB size in bytes.
    pub cdb_length: u16,
    /// The command timeouts descriptor, when `ctdp`.
    pub timeouts: Option<CommandTimeouts>,
}

impl CommandDescriptor {
    /// Bytes the descriptor takes in the parameter data: 8, or 20 with CTDP.
    pub fn encoded_len(&self) -> usize {
        descriptor_len(self.ctdp)
    }

    /// Whether the descriptor is the command `opcode` / `service_action` (see
    /// [`SupportedOpcodes::supports`]).
    pub fn is(&self, opcode: u8, service_action: Option<u16>) -> bool {
        self.opcode == opcode
            && match service_action {
                None => !self.servactv,
                Some(sa) => self.servactv && self.service_action == sa,
            }
    }
}

fn descriptor_len(ctdp: bool) -> usize {
    if ctdp {
        COMMAND_DESCRIPTOR_LEN + COMMAND_TIMEOUTS_LEN
    } else {
        COMMAND_DESCRIPTOR_LEN
    }
}

/// REPORT SUPPORTED OPERATION CODES parameter data for all commands.
///
/// When the list is longer than the buffer, `commands` holds the descriptors that fit
/// whole and [`is_truncated`](Self::is_truncated) tells the caller to reissue the
/// command with an allocation length of [`needed_len`](Self::needed_len); until then
/// the list cannot tell that a command is unsupported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportedOpcodes {
    /// COMMAND DATA LENGTH as the device reported it.
    pub command_data_length: u32,
    /// The command descriptors in the buffer, in the device's order.
    pub commands: Vec<CommandDescriptor>,
}

impl SupportedOpcodes {
    /// Parses the parameter data of REPORT SUPPORTED OPERATION CODES with REPORTING
    /// OPTIONS 000b (see [`cdb::report_supported_operation_codes_all`]). Reserved bits
    /// and the DESCRIPTOR LENGTH of command timeouts descriptors are not checked.
    ///
    /// # Errors
    /// [`Error::Short`] below the 4-byte header; [`Error::Overrun`] when a command
    /// descriptor (8 bytes, 20 with CTDP) runs past the end COMMAND DATA LENGTH
    /// declares.
    ///
    /// [`cdb::report_supported_operation_codes_all`]:
    ///     crate::cdb::report_supported_operation_codes_all
    pub fn parse(data: &[u8]) -> Result<Self> {
        let Some((h, _)) = data.split_first_chunk::<SUPPORTED_OPCODES_HEADER_LEN>() else {
            return Err(Error::Short {
                what: "supported operation codes data",
                need: SUPPORTED_OPCODES_HEADER_LEN,
                got: data.len(),
            });
        };
        let command_data_length = u32::from_be_bytes(*h);
        let end = usize::try_from(command_data_length).map_or(usize::MAX, |l| {
            l.saturating_add(SUPPORTED_OPCODES_HEADER_LEN)
        });
        let mut commands = Vec::new();
        let mut off = SUPPORTED_OPCODES_HEADER_LEN;
        while off < end {
            let overrun = |len| Error::Overrun {
                what: "command descriptor",
                offset: off,
                len,
                end,
            };
            if off + COMMAND_DESCRIPTOR_LEN > end {
                return Err(overrun(COMMAND_DESCRIPTOR_LEN));
            }
            let Some(d) = data
                .get(off..)
                .and_then(|r| r.first_chunk::<COMMAND_DESCRIPTOR_LEN>())
            else {
                break;
            };
            let ctdp = d[5] & 0x02 != 0;
            let len = descriptor_len(ctdp);
            if off + len > end {
                return Err(overrun(len));
            }
            let timeouts = if ctdp {
                let Some(t) = data
                    .get(off + COMMAND_DESCRIPTOR_LEN..)
                    .and_then(|r| r.first_chunk::<COMMAND_TIMEOUTS_LEN>())
                else {
                    break;
                };
                Some(CommandTimeouts {
                    command_specific: t[3],
                    nominal: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                    recommended: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                })
            } else {
                None
            };
            commands.push(CommandDescriptor {
                opcode: d[0],
                service_action: u16::from_be_bytes([d[2], d[3]]),
                servactv: d[5] & 0x01 != 0,
                ctdp,
                cdb_length: u16::from_be_bytes([d[6], d[7]]),
                timeouts,
            });
            off += len;
        }
        Ok(Self {
            command_data_length,
            commands,
        })
    }

    /// Whether the list holds the command: with `service_action` `None` an operation
    /// code without service actions (SERVACTV = 0), with `Some(sa)` service action `sa`
    /// of the operation code (SERVACTV = 1).
    ///
    /// `false` for a command past the end of a [truncated](Self::is_truncated) list.
    pub fn supports(&self, opcode: u8, service_action: Option<u16>) -> bool {
        self.commands.iter().any(|c| c.is(opcode, service_action))
    }

    /// The allocation length that returns the whole list (header included).
    pub fn needed_len(&self) -> u64 {
        u64::from(self.command_data_length) + SUPPORTED_OPCODES_HEADER_LEN as u64
    }

    /// Whether the device reported more descriptors than the buffer held.
    pub fn is_truncated(&self) -> bool {
        let held: u64 = self.commands.iter().map(|c| c.encoded_len() as u64).sum();
        held < u64::from(self.command_data_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(c: &CommandDescriptor) -> Vec<u8> {
        let mut v = vec![c.opcode, 0];
        v.extend_from_slice(&c.service_action.to_be_bytes());
        v.push(0);
        v.push(u8::from(c.ctdp) << 1 | u8::from(c.servactv));
        v.extend_from_slice(&c.cdb_length.to_be_bytes());
        if let Some(t) = c.timeouts {
            v.extend_from_slice(&[0, 0x0A, 0, t.command_specific]);
            v.extend_from_slice(&t.nominal.to_be_bytes());
            v.extend_from_slice(&t.recommended.to_be_bytes());
        }
        v
    }

    fn data(cs: &[CommandDescriptor]) -> Vec<u8> {
        let body: Vec<u8> = cs.iter().flat_map(encode).collect();
        let mut v = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(&body);
        v
    }

    fn cmd(opcode: u8, sa: Option<u16>, cdb_length: u16) -> CommandDescriptor {
        CommandDescriptor {
            opcode,
            service_action: sa.unwrap_or(0),
            servactv: sa.is_some(),
            ctdp: false,
            cdb_length,
            timeouts: None,
        }
    }

    #[test]
    fn lists_commands_and_service_actions() {
        let mut sync = cmd(0x35, None, 10);
        sync.ctdp = true;
        sync.timeouts = Some(CommandTimeouts {
            command_specific: 0,
            nominal: 30,
            recommended: 60,
        });
        let cs = [
            cmd(0x00, None, 6),
            cmd(0x28, None, 10),
            sync,
            cmd(0x88, None, 16),
            cmd(0x9E, Some(0x10), 16),
            cmd(0xA3, Some(0x0C), 12),
        ];
        let d = data(&cs);
        assert_eq!(d.len(), 4 + 5 * 8 + 20);
        let s = SupportedOpcodes::parse(&d).unwrap();
        assert_eq!(s.commands, cs);
        assert_eq!(s.command_data_length, 60);
        assert!(!s.is_truncated());
        assert_eq!(s.needed_len(), 64);
        assert!(s.supports(0x28, None));
        assert!(s.supports(0x35, None));
        assert!(s.supports(0x9E, Some(0x10)));
        assert!(s.supports(0xA3, Some(0x0C)));
        // READ CAPACITY(16) is a service action of 9Eh, not 9Eh itself.
        assert!(!s.supports(0x9E, None));
        assert!(!s.supports(0x9E, Some(0x11)));
        assert!(!s.supports(0x28, Some(0)));
        assert!(!s.supports(0x2A, None));
        assert_eq!(s.commands[2].encoded_len(), 20);
    }

    #[test]
    fn ignores_reserved_and_other_bits() {
        // CDLP and other bits of byte 5, reserved bytes 1 and 4 set.
        let d = [0, 0, 0, 8, 0x8A, 0xFF, 0, 0, 0xFF, 0xFC, 0, 16];
        let s = SupportedOpcodes::parse(&d).unwrap();
        assert_eq!(s.commands, [cmd(0x8A, None, 16)]);
    }

    #[test]
    fn empty_list() {
        let s = SupportedOpcodes::parse(&[0; 4]).unwrap();
        assert!(s.commands.is_empty() && !s.is_truncated());
        assert!(!s.supports(0, None));
        // Bytes past COMMAND DATA LENGTH are not descriptors.
        let s = SupportedOpcodes::parse(&[0, 0, 0, 0, 0x28, 0, 0, 0, 0, 0, 0, 10]).unwrap();
        assert!(s.commands.is_empty());
    }

    #[test]
    fn truncated_list_keeps_whole_descriptors() {
        let mut with_t = cmd(0x2A, None, 10);
        with_t.ctdp = true;
        with_t.timeouts = Some(CommandTimeouts {
            command_specific: 1,
            nominal: 2,
            recommended: 3,
        });
        let d = data(&[cmd(0x28, None, 10), with_t, cmd(0x88, None, 16)]);
        assert_eq!(d.len(), 40);
        for (cut, n) in [(4, 0), (11, 0), (12, 1), (19, 1), (31, 1), (32, 2), (39, 2)] {
            let s = SupportedOpcodes::parse(&d[..cut]).unwrap();
            assert_eq!(s.commands.len(), n, "cut at {cut}");
            assert!(s.is_truncated());
            assert_eq!(s.needed_len(), 40);
        }
        assert!(!SupportedOpcodes::parse(&d).unwrap().is_truncated());
    }

    #[test]
    fn malformed_data_is_an_error() {
        assert_eq!(
            SupportedOpcodes::parse(&[0, 0, 0]),
            Err(Error::Short {
                what: "supported operation codes data",
                need: 4,
                got: 3
            })
        );
        // COMMAND DATA LENGTH 12: the second descriptor ends past it.
        let mut d = data(&[cmd(0x28, None, 10), cmd(0x2A, None, 10)]);
        d[3] = 12;
        assert_eq!(
            SupportedOpcodes::parse(&d),
            Err(Error::Overrun {
                what: "command descriptor",
                offset: 12,
                len: 8,
                end: 16
            })
        );
        // CTDP set, but COMMAND DATA LENGTH leaves room for 8 bytes only.
        let d = [0, 0, 0, 8, 0x35, 0, 0, 0, 0, 0x02, 0, 10, 0, 0x0A];
        assert_eq!(
            SupportedOpcodes::parse(&d),
            Err(Error::Overrun {
                what: "command descriptor",
                offset: 4,
                len: 20,
                end: 12
            })
        );
    }

    fn descriptor() -> impl Strategy<Value = CommandDescriptor> {
        (
            any::<u8>(),
            any::<u16>(),
            any::<bool>(),
            any::<u16>(),
            proptest::option::of((any::<u8>(), any::<u32>(), any::<u32>())),
        )
            .prop_map(|(opcode, sa, servactv, cdb_length, t)| CommandDescriptor {
                opcode,
                service_action: sa,
                servactv,
                ctdp: t.is_some(),
                cdb_length,
                timeouts: t.map(|(c, n, r)| CommandTimeouts {
                    command_specific: c,
                    nominal: n,
                    recommended: r,
                }),
            })
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(s) = SupportedOpcodes::parse(&data) {
                let held: usize = s.commands.iter().map(CommandDescriptor::encoded_len).sum();
                prop_assert!(held <= data.len() - 4);
                for c in &s.commands {
                    prop_assert_eq!(c.timeouts.is_some(), c.ctdp);
                }
                let _ = (s.needed_len(), s.is_truncated(), s.supports(0x28, None));
            }
        }

        #[test]
        fn round_trips(cs in proptest::collection::vec(descriptor(), 0..20), cut: usize) {
            let d = data(&cs);
            let s = SupportedOpcodes::parse(&d).unwrap();
            prop_assert_eq!(&s.commands, &cs);
            prop_assert!(!s.is_truncated());
            for c in &cs {
                prop_assert!(s.supports(c.opcode, c.servactv.then_some(c.service_action)));
            }
            // Cut to an allocation length: the descriptors that fit whole.
            let cut = cut % (d.len() + 1);
            let r = SupportedOpcodes::parse(&d[..cut]);
            if cut < 4 {
                let short = matches!(r, Err(Error::Short { .. }));
                prop_assert!(short);
            } else {
                let s = r.unwrap();
                let mut end = 4;
                let fit = cs.iter().take_while(|c| { end += c.encoded_len(); end <= cut }).count();
                prop_assert_eq!(&s.commands[..], &cs[..fit]);
                prop_assert_eq!(s.is_truncated(), cut < d.len());
            }
        }
    }
}
