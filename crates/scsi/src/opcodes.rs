//! REPORT SUPPORTED OPERATION CODES parameter data (SPC-5): for all commands
//! ("All_commands parameter data format", REPORTING OPTIONS 000b) and for one
//! ("One_command parameter data format", REPORTING OPTIONS 001b to 011b).
//!
//! Layout: bytes 0..4 COMMAND DATA LENGTH (the bytes after the field), then command
//! descriptors: byte 0 OPERATION CODE, bytes 2..4 SERVICE ACTION, byte 5 CTDP (bit 1)
//! and SERVACTV (bit 0), bytes 6..8 CDB LENGTH. With CTDP a command timeouts descriptor
//! follows (bytes 0..2 DESCRIPTOR LENGTH, 0Ah; byte 3 COMMAND SPECIFIC; bytes 4..8
//! NOMINAL COMMAND PROCESSING TIMEOUT; bytes 8..12 RECOMMENDED COMMAND TIMEOUT), so a
//! descriptor is 8 bytes, or 20 with CTDP. One_command data: byte 1 CTDP (bit 7) and
//! SUPPORT (bits 2..0), bytes 2..4 CDB SIZE, CDB SIZE bytes of CDB USAGE DATA, then the
//! command timeouts descriptor with CTDP.

use crate::error::{Error, Result};

/// Length of the parameter data header (COMMAND DATA LENGTH).
pub const SUPPORTED_OPCODES_HEADER_LEN: usize = 4;
/// Length of a command descriptor without command timeouts.
pub const COMMAND_DESCRIPTOR_LEN: usize = 8;
/// Length of the command timeouts descriptor that follows a command descriptor with
/// CTDP set.
pub const COMMAND_TIMEOUTS_LEN: usize = 12;

/// The command timeouts descriptor (SPC-5 "Command timeouts descriptor").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CommandTimeouts {
    /// COMMAND SPECIFIC: command-dependent timeout information.
    pub command_specific: u8,
    /// NOMINAL COMMAND PROCESSING TIMEOUT in seconds (0: not specified).
    pub nominal: u32,
    /// RECOMMENDED COMMAND TIMEOUT in seconds (0: not specified).
    pub recommended: u32,
}

impl CommandTimeouts {
    /// The 12 descriptor bytes (DESCRIPTOR LENGTH 0Ah).
    pub fn to_bytes(&self) -> [u8; COMMAND_TIMEOUTS_LEN] {
        let mut b = [0u8; COMMAND_TIMEOUTS_LEN];
        b[1] = 0x0A;
        b[3] = self.command_specific;
        b[4..8].copy_from_slice(&self.nominal.to_be_bytes());
        b[8..].copy_from_slice(&self.recommended.to_be_bytes());
        b
    }

    /// The fields of a 12-byte descriptor (DESCRIPTOR LENGTH is not checked).
    fn from_bytes(t: &[u8; COMMAND_TIMEOUTS_LEN]) -> Self {
        Self {
            command_specific: t[3],
            nominal: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            recommended: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        }
    }
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

    /// Appends the descriptor (and its timeouts descriptor with CTDP; zeros when CTDP is
    /// set without `timeouts`) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let sa = self.service_action.to_be_bytes();
        let len = self.cdb_length.to_be_bytes();
        out.extend_from_slice(&[
            self.opcode,
            0,
            sa[0],
            sa[1],
            0,
            u8::from(self.ctdp) << 1 | u8::from(self.servactv),
            len[0],
            len[1],
        ]);
        if self.ctdp {
            out.extend_from_slice(&self.timeouts.unwrap_or_default().to_bytes());
        }
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
                Some(CommandTimeouts::from_bytes(t))
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

    /// The parameter data of `commands`: COMMAND DATA LENGTH, then the descriptors.
    pub fn encode(commands: &[CommandDescriptor]) -> Vec<u8> {
        let mut out = vec![0u8; SUPPORTED_OPCODES_HEADER_LEN];
        for c in commands {
            c.encode(&mut out);
        }
        // A command list is far shorter than 4 GiB.
        let len = (out.len() - SUPPORTED_OPCODES_HEADER_LEN) as u32;
        out[..SUPPORTED_OPCODES_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Whether the device reported more descriptors than the buffer held.
    pub fn is_truncated(&self) -> bool {
        let held: u64 = self.commands.iter().map(|c| c.encoded_len() as u64).sum();
        held < u64::from(self.command_data_length)
    }
}

/// SUPPORT values of one_command parameter data (SPC-5 "SUPPORT field").
pub mod support {
    /// Data about the command is not available now.
    pub const NOT_AVAILABLE: u8 = 0b000;
    /// The command is not supported; nothing after byte 1 is defined.
    pub const NOT_SUPPORTED: u8 = 0b001;
    /// Supported as a SCSI standard defines it.
    pub const STANDARD: u8 = 0b011;
    /// Supported in a vendor specific manner.
    pub const VENDOR: u8 = 0b101;
}

/// Length of one_command parameter data before the CDB USAGE DATA.
pub const ONE_COMMAND_HEADER_LEN: usize = 4;

/// REPORT SUPPORTED OPERATION CODES parameter data for one command (SPC-5
/// "One_command parameter data format").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OneCommand {
    /// SUPPORT (byte 1 bits 2..0), one of [`support`].
    pub support: u8,
    /// CDB USAGE DATA: per CDB byte, the bits the device evaluates (byte 0 is the
    /// operation code); its length is CDB SIZE. Empty for an unsupported command.
    pub usage: Vec<u8>,
    /// The command timeouts descriptor: CTDP is set exactly when it is `Some`.
    pub timeouts: Option<CommandTimeouts>,
}

impl OneCommand {
    /// The answer for a command the device does not support: SUPPORT 001b, no usage
    /// data, no timeouts.
    pub fn not_supported() -> Self {
        Self {
            support: support::NOT_SUPPORTED,
            usage: Vec::new(),
            timeouts: None,
        }
    }

    /// The parameter data. CDB SIZE is the usage data's length (at most 65535 bytes;
    /// a CDB is at most 260), SUPPORT its low 3 bits.
    pub fn encode(&self) -> Vec<u8> {
        let size = u16::try_from(self.usage.len()).unwrap_or(u16::MAX);
        let mut out =
            Vec::with_capacity(ONE_COMMAND_HEADER_LEN + usize::from(size) + COMMAND_TIMEOUTS_LEN);
        out.push(0);
        out.push(u8::from(self.timeouts.is_some()) << 7 | (self.support & 0x07));
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&self.usage[..usize::from(size)]);
        if let Some(t) = self.timeouts {
            out.extend_from_slice(&t.to_bytes());
        }
        out
    }

    /// Parses one_command parameter data.
    ///
    /// # Errors
    /// [`Error::Short`] when the buffer ends before the header, the CDB USAGE DATA that
    /// CDB SIZE declares or (with CTDP) the command timeouts descriptor: ask again with
    /// 4 + CDB SIZE (+ 12) bytes.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let short = |need| Error::Short {
            what: "one_command parameter data",
            need,
            got: data.len(),
        };
        let Some(h) = data.first_chunk::<ONE_COMMAND_HEADER_LEN>() else {
            return Err(short(ONE_COMMAND_HEADER_LEN));
        };
        let ctdp = h[1] & 0x80 != 0;
        let size = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let end = ONE_COMMAND_HEADER_LEN + size;
        let need = end + if ctdp { COMMAND_TIMEOUTS_LEN } else { 0 };
        if data.len() < need {
            return Err(short(need));
        }
        let timeouts = ctdp.then(|| {
            let t = data[end..need].first_chunk().expect("checked above");
            CommandTimeouts::from_bytes(t)
        });
        Ok(Self {
            support: h[1] & 0x07,
            usage: data[ONE_COMMAND_HEADER_LEN..end].to_vec(),
            timeouts,
        })
    }
}

#[cfg(test)]
mod tests;
