//! Sense data (SPC-5 §4.4): sense keys, the ASC/ASCQ pairs the emulation reports, and
//! the fixed (SPC-5 §4.4.3) and descriptor (SPC-5 §4.4.2) formats.

/// A sense key (SPC-5 §4.4.8, Table 49 "Sense key descriptions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseKey(pub u8);

impl SenseKey {
    /// No specific sense key information.
    pub const NO_SENSE: Self = Self(0x0);
    /// The command completed with recovery action.
    pub const RECOVERED_ERROR: Self = Self(0x1);
    /// The logical unit is not accessible.
    pub const NOT_READY: Self = Self(0x2);
    /// An unrecovered error, probably caused by a flaw in the medium.
    pub const MEDIUM_ERROR: Self = Self(0x3);
    /// A non-recoverable hardware failure.
    pub const HARDWARE_ERROR: Self = Self(0x4);
    /// The command or its parameters were invalid.
    pub const ILLEGAL_REQUEST: Self = Self(0x5);
    /// A unit attention condition was reported.
    pub const UNIT_ATTENTION: Self = Self(0x6);
    /// A write to a protected block was attempted.
    pub const DATA_PROTECT: Self = Self(0x7);
    /// The device server aborted the command.
    pub const ABORTED_COMMAND: Self = Self(0xB);
}

/// The SENSE KEY SPECIFIC field for ILLEGAL REQUEST: a field pointer (SPC-5 §4.4.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// The bad field is in the CDB (C/D = 1), not in the parameter list (C/D = 0).
    pub in_cdb: bool,
    /// Byte offset of the field (its most significant byte).
    pub byte: u16,
    /// Most significant bit of the field in that byte (sets BPV), if known.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// The three SENSE KEY SPECIFIC bytes, with SKSV set (SPC-5 §4.4.2.4.2).
    pub fn bytes(&self) -> [u8; 3] {
        let mut b0 = 0x80;
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            // BPV (bit 3) and BIT POINTER (bits 2-0).
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

/// Sense data: what a CHECK CONDITION reports and REQUEST SENSE returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sense {
    /// SENSE KEY.
    pub sense_key: SenseKey,
    /// ADDITIONAL SENSE CODE.
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER.
    pub ascq: u8,
    /// INFORMATION field (SPC-5 §4.4.2.2); VALID is set when present.
    pub information: Option<u64>,
    /// Field pointer for ILLEGAL REQUEST (sets SKSV).
    pub field_pointer: Option<FieldPointer>,
}

/// Length of fixed format sense data with no additional sense bytes.
pub const FIXED_SENSE_LEN: usize = 18;

/// Response code of current errors in fixed format (SPC-5 §4.4.3).
pub const RESPONSE_CODE_FIXED: u8 = 0x70;
/// Response code of current errors in descriptor format (SPC-5 §4.4.2.1).
pub const RESPONSE_CODE_DESCRIPTOR: u8 = 0x72;

impl Sense {
    /// Sense data with this key and ASC/ASCQ, no INFORMATION and no field pointer.
    pub const fn new(sense_key: SenseKey, asc: u8, ascq: u8) -> Self {
        Self {
            sense_key,
            asc,
            ascq,
            information: None,
            field_pointer: None,
        }
    }

    // ASC/ASCQ assignments used here (SPC-5 §4.4.8, Table 50 "ASC and ASCQ assignments").

    /// NO SENSE, NO ADDITIONAL SENSE INFORMATION (00h/00h).
    pub const NO_SENSE: Self = Self::new(SenseKey::NO_SENSE, 0x00, 0x00);
    /// NOT READY, MEDIUM NOT PRESENT (3Ah/00h).
    pub const MEDIUM_NOT_PRESENT: Self = Self::new(SenseKey::NOT_READY, 0x3A, 0x00);
    /// MEDIUM ERROR, WRITE ERROR (0Ch/00h).
    pub const WRITE_ERROR: Self = Self::new(SenseKey::MEDIUM_ERROR, 0x0C, 0x00);
    /// MEDIUM ERROR, UNRECOVERED READ ERROR (11h/00h).
    pub const UNRECOVERED_READ_ERROR: Self = Self::new(SenseKey::MEDIUM_ERROR, 0x11, 0x00);
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE (44h/00h).
    pub const INTERNAL_TARGET_FAILURE: Self = Self::new(SenseKey::HARDWARE_ERROR, 0x44, 0x00);
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (1Ah/00h).
    pub const PARAMETER_LIST_LENGTH_ERROR: Self = Self::new(SenseKey::ILLEGAL_REQUEST, 0x1A, 0x00);
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h).
    pub const INVALID_COMMAND_OPERATION_CODE: Self =
        Self::new(SenseKey::ILLEGAL_REQUEST, 0x20, 0x00);
    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
    pub const LBA_OUT_OF_RANGE: Self = Self::new(SenseKey::ILLEGAL_REQUEST, 0x21, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h), without a field pointer.
    pub const INVALID_FIELD_IN_CDB: Self = Self::new(SenseKey::ILLEGAL_REQUEST, 0x24, 0x00);
    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h).
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Self = Self::new(SenseKey::ILLEGAL_REQUEST, 0x25, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (26h/00h), without a field pointer.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Self =
        Self::new(SenseKey::ILLEGAL_REQUEST, 0x26, 0x00);
    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED (39h/00h).
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Self =
        Self::new(SenseKey::ILLEGAL_REQUEST, 0x39, 0x00);
    /// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    pub const POWER_ON_OR_RESET: Self = Self::new(SenseKey::UNIT_ATTENTION, 0x29, 0x00);
    /// UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED (29h/03h): a LOGICAL UNIT RESET.
    pub const BUS_DEVICE_RESET_FUNCTION: Self = Self::new(SenseKey::UNIT_ATTENTION, 0x29, 0x03);
    /// UNIT ATTENTION, CAPACITY DATA HAS CHANGED (2Ah/09h).
    pub const CAPACITY_DATA_HAS_CHANGED: Self = Self::new(SenseKey::UNIT_ATTENTION, 0x2A, 0x09);
    /// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh).
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Self =
        Self::new(SenseKey::UNIT_ATTENTION, 0x3F, 0x0E);
    /// DATA PROTECT, WRITE PROTECTED (27h/00h).
    pub const WRITE_PROTECTED: Self = Self::new(SenseKey::DATA_PROTECT, 0x27, 0x00);
    /// ABORTED COMMAND, DATA PHASE ERROR (4Bh/00h): the buffers do not hold the transfer.
    pub const DATA_PHASE_ERROR: Self = Self::new(SenseKey::ABORTED_COMMAND, 0x4B, 0x00);

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`, the field's most significant bit).
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Self {
        Self::INVALID_FIELD_IN_CDB.with_field_pointer(FieldPointer {
            in_cdb: true,
            byte,
            bit,
        })
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the parameter list.
    pub const fn invalid_field_in_parameter_list(byte: u16, bit: Option<u8>) -> Self {
        Self::INVALID_FIELD_IN_PARAMETER_LIST.with_field_pointer(FieldPointer {
            in_cdb: false,
            byte,
            bit,
        })
    }

    /// This sense data with a field pointer.
    pub const fn with_field_pointer(mut self, fp: FieldPointer) -> Self {
        self.field_pointer = Some(fp);
        self
    }

    /// This sense data with an INFORMATION field.
    pub const fn with_information(mut self, information: u64) -> Self {
        self.information = Some(information);
        self
    }

    /// Whether this is a unit attention.
    pub fn is_unit_attention(&self) -> bool {
        self.sense_key == SenseKey::UNIT_ATTENTION
    }

    /// Fixed format sense data, current error (SPC-5 §4.4.3): response code 70h,
    /// additional sense length 10.
    ///
    /// The INFORMATION field holds 4 bytes; a larger value is left out with VALID = 0,
    /// as SPC-5 §4.4.3 requires.
    pub fn fixed_format(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = RESPONSE_CODE_FIXED;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80; // VALID
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.sense_key.0 & 0x0F;
        // ADDITIONAL SENSE LENGTH (n - 7).
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(fp) = self.field_pointer {
            b[15..18].copy_from_slice(&fp.bytes());
        }
        b
    }

    /// Descriptor format sense data, current error (SPC-5 §4.4.2): response code 72h,
    /// then an information descriptor (SPC-5 §4.4.2.2) when INFORMATION is present and a
    /// sense key specific descriptor (SPC-5 §4.4.2.4) when a field pointer is present.
    pub fn descriptor_format(&self) -> Vec<u8> {
        let mut b = vec![
            RESPONSE_CODE_DESCRIPTOR,
            self.sense_key.0 & 0x0F,
            self.asc,
            self.ascq,
            0,
            0,
            0,
            0,
        ];
        if let Some(info) = self.information {
            // DESCRIPTOR TYPE 00h, ADDITIONAL LENGTH 0Ah, VALID.
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(fp) = self.field_pointer {
            // DESCRIPTOR TYPE 02h, ADDITIONAL LENGTH 06h.
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&fp.bytes());
            b.push(0);
        }
        // ADDITIONAL SENSE LENGTH (n - 7); at most 20 bytes of descriptors.
        b[7] = (b.len() - 8) as u8;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_lays_out_key_asc_ascq() {
        let b = Sense::LBA_OUT_OF_RANGE.fixed_format();
        assert_eq!(
            b,
            [
                0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn fixed_format_field_pointer_sets_sksv_cd_bpv() {
        let b = Sense::invalid_field_in_cdb(0x0102, Some(5)).fixed_format();
        assert_eq!(b[2], 0x05);
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        // SKSV | C/D | BPV | bit pointer 5.
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!((b[16], b[17]), (0x01, 0x02));
        let b = Sense::invalid_field_in_parameter_list(9, None).fixed_format();
        assert_eq!(b[15], 0x80);
        assert_eq!((b[16], b[17]), (0, 9));
    }

    #[test]
    fn fixed_format_information_sets_valid_only_when_it_fits() {
        let b = Sense::WRITE_ERROR
            .with_information(0x1234_5678)
            .fixed_format();
        assert_eq!(b[0], 0xF0);
        assert_eq!(&b[3..7], &[0x12, 0x34, 0x56, 0x78]);
        let b = Sense::WRITE_ERROR
            .with_information(0x1_0000_0000)
            .fixed_format();
        assert_eq!(b[0], 0x70);
        assert_eq!(&b[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format_header_and_descriptors() {
        assert_eq!(
            Sense::CAPACITY_DATA_HAS_CHANGED.descriptor_format(),
            vec![0x72, 0x06, 0x2A, 0x09, 0, 0, 0, 0]
        );
        let b = Sense::invalid_field_in_cdb(2, Some(7))
            .with_information(0x0102_0304_0506_0708)
            .descriptor_format();
        assert_eq!(b.len(), 8 + 12 + 8);
        assert_eq!(b[7], 20);
        assert_eq!(&b[8..20], &[0x00, 0x0A, 0x80, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[20..28], &[0x02, 0x06, 0, 0, 0xCF, 0x00, 0x02, 0]);
    }
}
