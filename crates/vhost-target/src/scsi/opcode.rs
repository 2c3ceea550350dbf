//! The commands the emulation implements, their CDB usage maps, CDB checking against
//! those maps, and REPORT SUPPORTED OPERATION CODES (SPC-5).
//!
//! One table drives both the check of every incoming CDB and the usage data reported to
//! the initiator, so the two cannot disagree. A usage bit is 1 when the device server
//! evaluates the CDB bit (SPC-5 REPORT SUPPORTED OPERATION CODES,
//! one_command parameter data, CDB USAGE DATA). A bit that is neither used nor listed in
//! `ignored` is treated as reserved: a CDB with it set ends in ILLEGAL REQUEST, INVALID
//! FIELD IN CDB with a field pointer to it. Bits in `ignored` (obsolete fields, IMMED of
//! a command that always completes synchronously) are accepted without evaluation and
//! reported as 0, as that definition requires for bits the device server ignores.
//! Bits of the CONTROL byte are all treated as reserved: NACA = 1 is refused because ACA
//! is not supported (SAM-5 CONTROL byte, NORMACA = 0 in the standard INQUIRY data).

use vbdev_scsi::opcodes::{
    CommandDescriptor, CommandTimeouts, OneCommand, SupportedOpcodes, support,
};

use super::Sense;
use super::wire::{Cdb, DataIn};

// The operation codes are the SCSI crate's, shared with the initiator.
pub(super) use vbdev_scsi::cdb::opcode::*;

/// What the addressed logical unit can do, where that changes the command set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Caps {
    /// Logical block provisioning: UNMAP, and the UNMAP bit of WRITE SAME.
    pub(super) unmap: bool,
}

/// One supported command (an operation code, or an operation code and service action).
#[derive(Debug)]
pub(super) struct Op {
    pub(super) opcode: u8,
    /// Service action, in bits 4-0 of CDB byte 1.
    pub(super) service_action: Option<u8>,
    /// CDB usage data (SPC-5 REPORT SUPPORTED OPERATION CODES); its length is the CDB length.
    usage: &'static [u8],
    /// Bits accepted but not evaluated; empty means none.
    ignored: &'static [u8],
    /// (byte, mask) of usage bits that only exist when the logical unit can unmap.
    unmap_bits: Option<(usize, u8)>,
    /// Only offered when the logical unit can unmap.
    needs_unmap: bool,
}

impl Op {
    const fn new(opcode: u8, usage: &'static [u8]) -> Self {
        Self {
            opcode,
            service_action: None,
            usage,
            ignored: &[],
            unmap_bits: None,
            needs_unmap: false,
        }
    }

    const fn sa(mut self, sa: u8) -> Self {
        self.service_action = Some(sa);
        self
    }

    const fn ignoring(mut self, ignored: &'static [u8]) -> Self {
        self.ignored = ignored;
        self
    }

    const fn unmap_bits(mut self, byte: usize, mask: u8) -> Self {
        self.unmap_bits = Some((byte, mask));
        self
    }

    const fn needs_unmap(mut self) -> Self {
        self.needs_unmap = true;
        self
    }

    /// CDB length in bytes.
    pub(super) fn cdb_len(&self) -> usize {
        self.usage.len()
    }

    fn offered(&self, caps: Caps) -> bool {
        !self.needs_unmap || caps.unmap
    }

    /// Usage map byte `i` for a logical unit with `caps`.
    fn usage_byte(&self, i: usize, caps: Caps) -> u8 {
        let mut u = self.usage.get(i).copied().unwrap_or(0);
        if let Some((byte, mask)) = self.unmap_bits {
            if byte == i && !caps.unmap {
                u &= !mask;
            }
        }
        u
    }

    fn ignored_byte(&self, i: usize) -> u8 {
        self.ignored.get(i).copied().unwrap_or(0)
    }
}

// Usage maps, byte by byte, from the CDB layouts in SPC-5 and SBC-4. Comments name the
// evaluated fields; everything else in a byte is reserved (or ignored where listed).
const TABLE: &[Op] = &[
    // SPC-5 TEST UNIT READY: bytes 1-4 reserved.
    Op::new(TEST_UNIT_READY, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
    // SPC-5 REQUEST SENSE: DESC (1.0), ALLOCATION LENGTH (4).
    Op::new(REQUEST_SENSE, &[0x03, 0x01, 0x00, 0x00, 0xFF, 0x00]),
    // SBC-4 READ(6): LBA (1.4-0, 2, 3), TRANSFER LENGTH (4).
    Op::new(READ_6, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x00]),
    // SBC-4 WRITE(6): as READ(6).
    Op::new(WRITE_6, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x00]),
    // SPC-5 §6.7 INQUIRY: EVPD (1.0), PAGE CODE (2), ALLOCATION LENGTH (3-4).
    Op::new(INQUIRY, &[0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x00]),
    // SPC-5 §6.14 MODE SENSE(6): DBD (1.3), PC + PAGE CODE (2), SUBPAGE (3), ALLOC (4).
    Op::new(MODE_SENSE_6, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x00]),
    // SBC-4 START STOP UNIT: NO_FLUSH (4.2), START (4.0); IMMED (1.0) ignored. POWER
    // CONDITION, its MODIFIER and LOEJ are reserved: no power conditions, no removable
    // medium.
    Op::new(START_STOP_UNIT, &[0x1B, 0x00, 0x00, 0x00, 0x05, 0x00])
        .ignoring(&[0x00, 0x01, 0x00, 0x00, 0x00, 0x00]),
    // SBC-4 READ CAPACITY(10): nothing evaluated; the obsolete RELADR (1.0), LBA (2-5)
    // and PMI (8.0) are ignored.
    Op::new(
        READ_CAPACITY_10,
        &[0x25, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    )
    .ignoring(&[0x00, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, 0x00]),
    // SBC-4 READ(10): DPO (1.4), FUA (1.3), LBA (2-5), TRANSFER LENGTH (7-8).
    // RDPROTECT is reserved (no protection information), as are RARC and GROUP NUMBER.
    Op::new(
        READ_10,
        &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    // SBC-4 WRITE(10): as READ(10), WRPROTECT reserved.
    Op::new(
        WRITE_10,
        &[0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    ),
    // SBC-4 SYNCHRONIZE CACHE(10): LBA (2-5), NUMBER OF LOGICAL BLOCKS (7-8); IMMED
    // (1.1) ignored (status always follows the flush).
    Op::new(
        SYNCHRONIZE_CACHE_10,
        &[0x35, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    )
    .ignoring(&[0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
    // SBC-4 WRITE SAME(10): UNMAP (1.3, only with LBPWS10), LBA (2-5), NUMBER OF LOGICAL
    // BLOCKS (7-8). ANCHOR is reserved (ANC_SUP = 0).
    Op::new(
        WRITE_SAME_10,
        &[0x41, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00],
    )
    .unmap_bits(1, 0x08),
    // SBC-4 UNMAP: PARAMETER LIST LENGTH (7-8). ANCHOR is reserved (ANC_SUP = 0).
    Op::new(
        UNMAP,
        &[0x42, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    )
    .needs_unmap(),
    // SPC-5 §6.15 MODE SENSE(10): LLBAA (1.4), DBD (1.3), PC + PAGE CODE (2), SUBPAGE
    // (3), ALLOCATION LENGTH (7-8).
    Op::new(
        MODE_SENSE_10,
        &[0x5A, 0x18, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00],
    ),
    // SBC-4 READ(16): DPO, FUA (1), LBA (2-9), TRANSFER LENGTH (10-13).
    Op::new(
        READ_16,
        &[
            0x88, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    // SBC-4 WRITE(16): as READ(16).
    Op::new(
        WRITE_16,
        &[
            0x8A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    ),
    // SBC-4 SYNCHRONIZE CACHE(16): LBA (2-9), NUMBER OF LOGICAL BLOCKS (10-13); IMMED
    // (1.1) ignored.
    Op::new(
        SYNCHRONIZE_CACHE_16,
        &[
            0x91, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    )
    .ignoring(&[
        0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00,
    ]),
    // SBC-4 WRITE SAME(16): UNMAP (1.3, only with LBPWS), NDOB (1.0), LBA (2-9), NUMBER
    // OF LOGICAL BLOCKS (10-13).
    Op::new(
        WRITE_SAME_16,
        &[
            0x93, 0x09, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x00,
        ],
    )
    .unmap_bits(1, 0x08),
    // SBC-4 READ CAPACITY(16): ALLOCATION LENGTH (10-13); the obsolete LBA (2-9) and PMI
    // (14.0) are ignored.
    Op::new(
        SERVICE_ACTION_IN_16,
        &[
            0x9E,
            SA_READ_CAPACITY_16,
            0x00,
            0x00,
            0x00,
            0x00,
            0x00,
            0x00,
            0x00,
            0x00,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0x00,
            0x00,
        ],
    )
    .sa(SA_READ_CAPACITY_16)
    .ignoring(&[
        0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x00,
    ]),
    // SPC-5 REPORT LUNS: SELECT REPORT (2), ALLOCATION LENGTH (6-9).
    Op::new(
        REPORT_LUNS,
        &[
            0xA0, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    ),
    // SPC-5 REPORT SUPPORTED OPERATION CODES: RCTD (2.7), REPORTING OPTIONS
    // (2.2-0), REQUESTED OPERATION CODE (3), REQUESTED SERVICE ACTION (4-5), ALLOCATION
    // LENGTH (6-9).
    Op::new(
        MAINTENANCE_IN,
        &[
            0xA3,
            SA_REPORT_SUPPORTED_OPERATION_CODES,
            0x87,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0x00,
            0x00,
        ],
    )
    .sa(SA_REPORT_SUPPORTED_OPERATION_CODES),
    // SBC-4 READ(12): DPO, FUA (1), LBA (2-5), TRANSFER LENGTH (6-9).
    Op::new(
        READ_12,
        &[
            0xA8, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    ),
    // SBC-4 WRITE(12): as READ(12).
    Op::new(
        WRITE_12,
        &[
            0xAA, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
        ],
    ),
];

/// Operation codes that SPC-5 and SBC-4 define with a SERVICE ACTION field, whether or
/// not the emulation implements them (REPORT SUPPORTED OPERATION CODES reporting
/// options 001b and 010b depend on it).
const HAS_SERVICE_ACTIONS: &[u8] = &[
    0x48, // SANITIZE
    0x5E, // PERSISTENT RESERVE IN
    0x5F, // PERSISTENT RESERVE OUT
    0x7F, // variable length CDBs
    0x83, // third-party copy OUT
    0x84, // third-party copy IN
    0x8C, // READ ATTRIBUTE
    0x94, // ZBC OUT
    0x95, // ZBC IN
    0x9E, // SERVICE ACTION IN(16)
    0x9F, // SERVICE ACTION OUT(16)
    0xA3, // MAINTENANCE IN
    0xA4, // MAINTENANCE OUT
    0xA9, // SERVICE ACTION OUT(12)
    0xAB, // SERVICE ACTION IN(12)
];

fn has_service_actions(opcode: u8) -> bool {
    HAS_SERVICE_ACTIONS.contains(&opcode)
}

/// Finds the command a CDB asks for.
///
/// # Errors
/// INVALID COMMAND OPERATION CODE for an operation code the logical unit does not
/// offer; INVALID FIELD IN CDB pointing at the SERVICE ACTION field for an
/// unimplemented service action of an implemented operation code (SPC-5, SERVICE ACTION
/// field).
pub(super) fn lookup(cdb: Cdb<'_>, caps: Caps) -> Result<&'static Op, Sense> {
    let opcode = cdb.u8(0);
    let mut same_opcode = false;
    // No entry before FIRST[opcode] has this opcode: the scan starts there.
    let first = usize::from(FIRST[usize::from(opcode)]);
    for op in TABLE[first.min(TABLE.len())..]
        .iter()
        .filter(|op| op.opcode == opcode && op.offered(caps))
    {
        same_opcode = true;
        match op.service_action {
            None => return Ok(op),
            Some(sa) if cdb.u8(1) & 0x1F == sa => return Ok(op),
            Some(_) => {}
        }
    }
    if same_opcode {
        Err(Sense::invalid_field_in_cdb(1, Some(4)))
    } else {
        Err(Sense::INVALID_COMMAND_OPERATION_CODE)
    }
}

/// The index in [`TABLE`] of each operation code's first entry ([`TABLE`]'s length, or
/// more, for one that has none), computed at compile time: a READ or WRITE is found
/// without scanning the table.
const FIRST: [u8; 256] = {
    assert!(TABLE.len() < 255);
    let mut first = [u8::MAX; 256];
    let mut i = TABLE.len();
    while i > 0 {
        i -= 1;
        first[TABLE[i].opcode as usize] = i as u8;
    }
    first
};

/// Checks a CDB against the command's usage map: it is long enough and no reserved bit
/// is set.
///
/// # Errors
/// INVALID FIELD IN CDB, with a field pointer to the first reserved bit that is set.
pub(super) fn check_cdb(op: &Op, cdb: Cdb<'_>, caps: Caps) -> Result<(), Sense> {
    if cdb.0.len() < op.cdb_len() {
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    for i in 1..op.cdb_len() {
        let allowed = if i == 1 && op.service_action.is_some() {
            0x1F
        } else {
            op.usage_byte(i, caps)
        } | op.ignored_byte(i);
        let bad = cdb.u8(i) & !allowed;
        if bad != 0 {
            // Bit pointer: the most significant offending bit (SPC-5 §4.4.2.4.2).
            let bit = 7 - bad.leading_zeros() as u8;
            // i < 16: the longest CDB in the table is 16 bytes.
            return Err(Sense::invalid_field_in_cdb(i as u16, Some(bit)));
        }
    }
    Ok(())
}

/// Writes the REPORT SUPPORTED OPERATION CODES parameter data (SPC-5).
///
/// # Errors
/// INVALID FIELD IN CDB for a reserved REPORTING OPTIONS value, or a REQUESTED
/// OPERATION CODE whose service-action-ness contradicts the reporting option.
pub(super) fn report_supported_operation_codes(
    cdb: Cdb<'_>,
    caps: Caps,
    out: &mut DataIn<'_>,
) -> Result<(), Sense> {
    let rctd = cdb.bit(2, 0x80);
    let options = cdb.u8(2) & 0x07;
    let req_opcode = cdb.u8(3);
    let req_sa = cdb.be16(4);
    let wanted_sa = match options {
        0b000 => {
            all_commands(caps, rctd, out);
            return Ok(());
        }
        // One command, operation code only (SPC-5, Table "REPORTING OPTIONS field").
        0b001 if has_service_actions(req_opcode) => {
            return Err(Sense::invalid_field_in_cdb(3, Some(7)));
        }
        0b001 => None,
        // One command, operation code and service action.
        0b010 if !has_service_actions(req_opcode) => {
            return Err(Sense::invalid_field_in_cdb(3, Some(7)));
        }
        0b010 => Some(req_sa),
        // One command; the service action counts only if the operation code has them.
        0b011 if has_service_actions(req_opcode) => Some(req_sa),
        0b011 => None,
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(2))),
    };
    let found = TABLE.iter().find(|op| {
        op.opcode == req_opcode && op.offered(caps) && op.service_action.map(u16::from) == wanted_sa
    });
    one_command(found, caps, rctd, out);
    Ok(())
}

/// The all_commands parameter data format (SPC-5 REPORT SUPPORTED OPERATION CODES).
fn all_commands(caps: Caps, rctd: bool, out: &mut DataIn<'_>) {
    let commands: Vec<CommandDescriptor> = TABLE
        .iter()
        .filter(|op| op.offered(caps))
        .map(|op| CommandDescriptor {
            opcode: op.opcode,
            service_action: op.service_action.map_or(0, u16::from),
            servactv: op.service_action.is_some(),
            // With RCTD, a command timeouts descriptor of zeros (not specified).
            ctdp: rctd,
            // CDBs are at most 16 bytes.
            cdb_length: op.cdb_len() as u16,
            timeouts: rctd.then(CommandTimeouts::default),
        })
        .collect();
    out.put(&SupportedOpcodes::encode(&commands));
}

/// The one_command parameter data format (SPC-5 REPORT SUPPORTED OPERATION CODES).
fn one_command(op: Option<&Op>, caps: Caps, rctd: bool, out: &mut DataIn<'_>) {
    let data = match op {
        // SUPPORT 001b: nothing after byte 1 is defined, so no timeouts either.
        None => OneCommand::not_supported(),
        Some(op) => OneCommand {
            support: support::STANDARD,
            usage: (0..op.cdb_len()).map(|i| op.usage_byte(i, caps)).collect(),
            // With RCTD, a command timeouts descriptor of zeros (not specified).
            timeouts: rctd.then(CommandTimeouts::default),
        },
    };
    out.put(&data.encode());
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps { unmap: true };

    #[test]
    fn lookup_from_the_first_index_finds_what_a_full_scan_finds() {
        for opcode in 0..=255u8 {
            let first = FIRST[usize::from(opcode)];
            match TABLE.iter().position(|op| op.opcode == opcode) {
                Some(i) => assert_eq!(usize::from(first), i, "opcode {opcode:#04x}"),
                None => assert_eq!(first, u8::MAX, "opcode {opcode:#04x}"),
            }
            for unmap in [false, true] {
                let caps = Caps { unmap };
                for sa in [0u8, 0x0C, 0x10, 0x1F] {
                    let cdb = [opcode, sa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    let full = TABLE
                        .iter()
                        .find(|op| {
                            op.opcode == opcode
                                && op.offered(caps)
                                && op.service_action.is_none_or(|s| s == sa)
                        })
                        .map(|op| (op.opcode, op.service_action));
                    let got = lookup(Cdb(&cdb), caps)
                        .ok()
                        .map(|op| (op.opcode, op.service_action));
                    assert_eq!(got, full, "opcode {opcode:#04x} sa {sa:#04x}");
                }
            }
        }
    }

    #[test]
    fn table_is_sorted_and_usage_starts_with_opcode_and_service_action() {
        for w in TABLE.windows(2) {
            assert!(
                (w[0].opcode, w[0].service_action) < (w[1].opcode, w[1].service_action),
                "table order at {:#04x}",
                w[1].opcode
            );
        }
        for op in TABLE {
            assert_eq!(op.usage[0], op.opcode);
            assert!(matches!(op.cdb_len(), 6 | 10 | 12 | 16));
            assert!(op.ignored.is_empty() || op.ignored.len() == op.cdb_len());
            if let Some(sa) = op.service_action {
                assert_eq!(op.usage[1], sa);
            }
            // The CONTROL byte is never evaluated.
            assert_eq!(op.usage[op.cdb_len() - 1], 0);
        }
    }

    #[test]
    fn cdb_length_matches_group_code() {
        for op in TABLE {
            let want = match op.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                g => panic!("group {g}"),
            };
            assert_eq!(op.cdb_len(), want, "opcode {:#04x}", op.opcode);
        }
    }

    #[test]
    fn reserved_bit_points_at_byte_and_bit() {
        let op = lookup(Cdb(&[0x28; 10]), CAPS).unwrap();
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[1] = 0x20; // RDPROTECT = 001b
        let s = check_cdb(op, Cdb(&cdb), CAPS).unwrap_err();
        let fp = s.field_pointer.unwrap();
        assert_eq!((fp.byte, fp.bit), (1, Some(5)));
        cdb[1] = 0x18;
        cdb[9] = 0x04; // NACA
        let fp = check_cdb(op, Cdb(&cdb), CAPS)
            .unwrap_err()
            .field_pointer
            .unwrap();
        assert_eq!((fp.byte, fp.bit), (9, Some(2)));
    }

    #[test]
    fn unmap_bit_is_reserved_without_provisioning() {
        let op = lookup(Cdb(&[0x93]), CAPS).unwrap();
        let mut cdb = [0u8; 16];
        cdb[0] = 0x93;
        cdb[1] = 0x08;
        assert!(check_cdb(op, Cdb(&cdb), CAPS).is_ok());
        assert!(check_cdb(op, Cdb(&cdb), Caps { unmap: false }).is_err());
        assert_eq!(
            lookup(Cdb(&[0x42]), Caps { unmap: false }).unwrap_err(),
            Sense::INVALID_COMMAND_OPERATION_CODE
        );
    }
}
