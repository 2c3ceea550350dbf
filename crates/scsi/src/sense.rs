//! Sense data (SPC-5 §4.4): fixed format (response codes 0x70/0x71, §4.4.3) and
//! descriptor format (0x72/0x73, §4.4.2), both decoded into and encoded from one
//! [`Sense`]: the initiator parses what a device reports, the target builds what it
//! reports, with the same type (round trips are property-tested).

use crate::error::{Error, Result};
use crate::status::SenseKey;

/// Sense RESPONSE CODE values.
pub mod response_code {
    /// Fixed format, current error.
    pub const FIXED_CURRENT: u8 = 0x70;
    /// Fixed format, deferred error.
    pub const FIXED_DEFERRED: u8 = 0x71;
    /// Descriptor format, current error.
    pub const DESCRIPTOR_CURRENT: u8 = 0x72;
    /// Descriptor format, deferred error.
    pub const DESCRIPTOR_DEFERRED: u8 = 0x73;
}

/// Bytes of fixed format sense data this parser needs (through ASCQ).
pub const FIXED_SENSE_MIN_LEN: usize = 14;
/// Bytes of descriptor format sense data this parser needs (the header).
pub const DESCRIPTOR_SENSE_MIN_LEN: usize = 8;
/// Length of fixed format sense data as [`Sense::fixed_format`] builds it (additional
/// sense length 10, through the SENSE KEY SPECIFIC bytes).
pub const FIXED_SENSE_LEN: usize = 18;

/// The SENSE KEY SPECIFIC field of ILLEGAL REQUEST: a field pointer (SPC-5 §4.4.2.4.2).
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
    /// The three SENSE KEY SPECIFIC bytes, with SKSV set.
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

    /// The field pointer in SENSE KEY SPECIFIC bytes `b`, or `None` without SKSV.
    pub fn parse(b: [u8; 3]) -> Option<Self> {
        (b[0] & 0x80 != 0).then(|| Self {
            in_cdb: b[0] & 0x40 != 0,
            byte: u16::from_be_bytes([b[1], b[2]]),
            bit: (b[0] & 0x08 != 0).then_some(b[0] & 0x07),
        })
    }
}

/// Decoded sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// RESPONSE CODE (see [`response_code`]).
    pub response_code: u8,
    /// SENSE KEY.
    pub sense_key: SenseKey,
    /// ADDITIONAL SENSE CODE.
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER.
    pub ascq: u8,
    /// INFORMATION (often the first failing LBA), when the device marks it valid: the
    /// VALID bit in fixed format, an Information descriptor with VALID set in
    /// descriptor format.
    pub information: Option<u64>,
    /// Whether this reports a deferred error (0x71/0x73).
    pub deferred: bool,
    /// The field pointer of an ILLEGAL REQUEST, when the device gave one (SKSV set).
    pub field_pointer: Option<FieldPointer>,
}

impl Sense {
    /// Current-error sense data with this key and ASC/ASCQ, no INFORMATION and no field
    /// pointer (fixed format when encoded by [`Self::fixed_format`]).
    pub const fn new(sense_key: SenseKey, asc: u8, ascq: u8) -> Self {
        Self {
            response_code: response_code::FIXED_CURRENT,
            sense_key,
            asc,
            ascq,
            information: None,
            deferred: false,
            field_pointer: None,
        }
    }

    // ASC/ASCQ assignments (SPC-5 §4.4.8, Table 50 "ASC and ASCQ assignments").

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

    /// Fixed format sense data, current error (SPC-5 §4.4.3): response code 70h,
    /// additional sense length 10.
    ///
    /// The INFORMATION field holds 4 bytes; a larger value is left out with VALID = 0,
    /// as SPC-5 §4.4.3 requires.
    pub fn fixed_format(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = response_code::FIXED_CURRENT;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80; // VALID
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.sense_key.get();
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
    /// then an information descriptor (§4.4.2.2) when INFORMATION is present and a sense
    /// key specific descriptor (§4.4.2.4) when a field pointer is present.
    pub fn descriptor_format(&self) -> Vec<u8> {
        let mut b = vec![
            response_code::DESCRIPTOR_CURRENT,
            self.sense_key.get(),
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

impl Sense {
    /// Parses sense data in either format, chosen by RESPONSE CODE (byte 0 bits 6..0).
    ///
    /// Fixed format (SPC-5 "Fixed format sense data"): byte 0 VALID (bit 7); byte 2
    /// SENSE KEY (bits 3..0); bytes 3..7 INFORMATION; byte 7 ADDITIONAL SENSE LENGTH;
    /// byte 12 ASC; byte 13 ASCQ.
    ///
    /// Descriptor format (SPC-5 "Descriptor format sense data"): byte 1 SENSE KEY
    /// (bits 3..0); byte 2 ASC; byte 3 ASCQ; byte 7 ADDITIONAL SENSE LENGTH; then
    /// descriptors (type, additional length, body). The Information descriptor (type
    /// 0x00, additional length 0x0A) holds VALID in byte 2 bit 7 and INFORMATION in
    /// bytes 4..12. Descriptors are read up to the end of the buffer or of ADDITIONAL
    /// SENSE LENGTH, whichever is first; one cut short by the buffer is ignored, since
    /// SPC-5 lets the allocation length truncate sense data.
    ///
    /// # Errors
    /// [`Error::Short`] for an empty buffer or one shorter than its format's
    /// minimum; [`Error::BadSenseResponseCode`] for any other response code (including
    /// vendor specific 0x7F).
    pub fn parse(data: &[u8]) -> Result<Self> {
        let Some(&b0) = data.first() else {
            return Err(Error::Short {
                what: "sense data",
                need: 1,
                got: 0,
            });
        };
        let code = b0 & 0x7F;
        match code {
            response_code::FIXED_CURRENT | response_code::FIXED_DEFERRED => {
                Self::parse_fixed(data, code)
            }
            response_code::DESCRIPTOR_CURRENT | response_code::DESCRIPTOR_DEFERRED => {
                Self::parse_descriptor(data, code)
            }
            _ => Err(Error::BadSenseResponseCode { code }),
        }
    }

    fn parse_fixed(data: &[u8], code: u8) -> Result<Self> {
        let Some(d) = data.first_chunk::<FIXED_SENSE_MIN_LEN>() else {
            return Err(Error::Short {
                what: "fixed format sense data",
                need: FIXED_SENSE_MIN_LEN,
                got: data.len(),
            });
        };
        let info = u32::from_be_bytes([d[3], d[4], d[5], d[6]]);
        let sense_key = SenseKey::new(d[2]);
        // SENSE KEY SPECIFIC (bytes 15..18) when the additional sense length reaches it.
        let sks = (usize::from(d[7]) + 8 >= FIXED_SENSE_LEN)
            .then(|| data.get(15..18))
            .flatten();
        Ok(Self {
            response_code: code,
            sense_key,
            asc: d[12],
            ascq: d[13],
            information: (d[0] & 0x80 != 0).then_some(u64::from(info)),
            deferred: code == response_code::FIXED_DEFERRED,
            field_pointer: field_pointer(sense_key, sks),
        })
    }

    fn parse_descriptor(data: &[u8], code: u8) -> Result<Self> {
        let Some((h, rest)) = data.split_first_chunk::<DESCRIPTOR_SENSE_MIN_LEN>() else {
            return Err(Error::Short {
                what: "descriptor format sense data",
                need: DESCRIPTOR_SENSE_MIN_LEN,
                got: data.len(),
            });
        };
        let end = rest.len().min(usize::from(h[7]));
        let mut descs = &rest[..end];
        let mut information = None;
        let mut sks = None;
        while let [ty, add_len, tail @ ..] = descs {
            let Some(body) = tail.get(..usize::from(*add_len)) else {
                break;
            };
            // Information descriptor: VALID in byte 2 bit 7, INFORMATION in bytes 4..12,
            // i.e. body[0] and body[2..10].
            if *ty == 0x00 && body.len() >= 10 && body[0] & 0x80 != 0 && information.is_none() {
                let mut b = [0u8; 8];
                b.copy_from_slice(&body[2..10]);
                information = Some(u64::from_be_bytes(b));
            }
            // Sense key specific descriptor (type 0x02, length 6): the 3 bytes at body[2..5].
            if *ty == 0x02 && body.len() >= 6 && sks.is_none() {
                sks = Some(&body[2..5]);
            }
            descs = &tail[body.len()..];
        }
        let sense_key = SenseKey::new(h[1]);
        Ok(Self {
            response_code: code,
            sense_key,
            asc: h[2],
            ascq: h[3],
            information,
            deferred: code == response_code::DESCRIPTOR_DEFERRED,
            field_pointer: field_pointer(sense_key, sks),
        })
    }

    /// Whether the sense data is in descriptor format.
    pub fn is_descriptor_format(&self) -> bool {
        matches!(
            self.response_code,
            response_code::DESCRIPTOR_CURRENT | response_code::DESCRIPTOR_DEFERRED
        )
    }

    /// SENSE KEY NO SENSE.
    pub fn is_no_sense(&self) -> bool {
        self.sense_key == SenseKey::NO_SENSE
    }

    /// SENSE KEY RECOVERED ERROR: the command succeeded after recovery.
    pub fn is_recovered_error(&self) -> bool {
        self.sense_key == SenseKey::RECOVERED_ERROR
    }

    /// SENSE KEY NOT READY.
    pub fn is_not_ready(&self) -> bool {
        self.sense_key == SenseKey::NOT_READY
    }

    /// SENSE KEY MEDIUM ERROR.
    pub fn is_medium_error(&self) -> bool {
        self.sense_key == SenseKey::MEDIUM_ERROR
    }

    /// SENSE KEY HARDWARE ERROR.
    pub fn is_hardware_error(&self) -> bool {
        self.sense_key == SenseKey::HARDWARE_ERROR
    }

    /// SENSE KEY ILLEGAL REQUEST.
    pub fn is_illegal_request(&self) -> bool {
        self.sense_key == SenseKey::ILLEGAL_REQUEST
    }

    /// SENSE KEY UNIT ATTENTION.
    pub fn is_unit_attention(&self) -> bool {
        self.sense_key == SenseKey::UNIT_ATTENTION
    }

    /// SENSE KEY DATA PROTECT.
    pub fn is_data_protect(&self) -> bool {
        self.sense_key == SenseKey::DATA_PROTECT
    }

    /// SENSE KEY ABORTED COMMAND.
    pub fn is_aborted_command(&self) -> bool {
        self.sense_key == SenseKey::ABORTED_COMMAND
    }

    /// NOT READY, MEDIUM NOT PRESENT (ASC 0x3A).
    pub fn is_medium_not_present(&self) -> bool {
        self.is_not_ready() && self.asc == 0x3A
    }

    /// UNIT ATTENTION, CAPACITY DATA HAS CHANGED (0x2A/0x09): re-read the capacity.
    pub fn is_capacity_changed(&self) -> bool {
        self.is_unit_attention() && (self.asc, self.ascq) == (0x2A, 0x09)
    }

    /// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED (0x3F/0x0E): rescan the target.
    pub fn is_reported_luns_changed(&self) -> bool {
        self.is_unit_attention() && (self.asc, self.ascq) == (0x3F, 0x0E)
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (0x20/0x00).
    pub fn is_invalid_opcode(&self) -> bool {
        self.is_illegal_request() && (self.asc, self.ascq) == (0x20, 0x00)
    }
}

/// [`Sense`] in 16 bytes with alignment 1, for error values that are copied often (an
/// I/O error of a block layer): no `Option` of a `u64`, nothing to pad. Lossless:
/// [`PackedSense::sense`] gives back the [`Sense`] it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackedSense {
    /// RESPONSE CODE, SENSE KEY, ASC, ASCQ.
    code: [u8; 4],
    /// INFORMATION (big-endian) and whether it is present (byte 8).
    information: [u8; 9],
    /// SENSE KEY SPECIFIC bytes as [`FieldPointer::bytes`] writes them (SKSV clear:
    /// none).
    sks: [u8; 3],
}

impl From<Sense> for PackedSense {
    fn from(s: Sense) -> Self {
        let mut information = [0u8; 9];
        if let Some(i) = s.information {
            information[..8].copy_from_slice(&i.to_be_bytes());
            information[8] = 1;
        }
        Self {
            code: [s.response_code, s.sense_key.get(), s.asc, s.ascq],
            information,
            sks: s.field_pointer.map_or([0; 3], |f| f.bytes()),
        }
    }
}

impl PackedSense {
    /// The sense data.
    pub fn sense(&self) -> Sense {
        let [response_code, key, asc, ascq] = self.code;
        let mut info = [0u8; 8];
        info.copy_from_slice(&self.information[..8]);
        Sense {
            response_code,
            sense_key: SenseKey::new(key),
            asc,
            ascq,
            information: (self.information[8] != 0).then_some(u64::from_be_bytes(info)),
            deferred: matches!(
                response_code,
                response_code::FIXED_DEFERRED | response_code::DESCRIPTOR_DEFERRED
            ),
            field_pointer: FieldPointer::parse(self.sks),
        }
    }
}

/// The field pointer in SENSE KEY SPECIFIC bytes, which mean one for ILLEGAL REQUEST only
/// (other keys use them for progress or retry counts).
fn field_pointer(key: SenseKey, sks: Option<&[u8]>) -> Option<FieldPointer> {
    if key != SenseKey::ILLEGAL_REQUEST {
        return None;
    }
    FieldPointer::parse(sks?.try_into().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fixed format: VALID, MEDIUM ERROR, INFORMATION 0x12345678,
    /// UNRECOVERED READ ERROR (0x11/0x00).
    const FIXED_MEDIUM: [u8; 18] = [
        0xF0, 0, 0x03, 0x12, 0x34, 0x56, 0x78, 10, 0, 0, 0, 0, 0x11, 0x00, 0, 0, 0, 0,
    ];

    #[test]
    fn fixed_format_decodes() {
        let s = Sense::parse(&FIXED_MEDIUM).unwrap();
        assert_eq!(
            s,
            Sense {
                response_code: 0x70,
                sense_key: SenseKey::MEDIUM_ERROR,
                asc: 0x11,
                ascq: 0x00,
                information: Some(0x1234_5678),
                deferred: false,
                field_pointer: None,
            }
        );
        assert!(s.is_medium_error() && !s.is_descriptor_format());
    }

    #[test]
    fn fixed_format_without_valid_has_no_information() {
        let mut d = FIXED_MEDIUM;
        d[0] = 0x71; // deferred, VALID 0
        d[2] = 0xE6; // FILEMARK, EOM, ILI set around UNIT ATTENTION
        d[12] = 0x2A;
        d[13] = 0x09;
        let s = Sense::parse(&d).unwrap();
        assert_eq!(s.information, None);
        assert!(s.deferred);
        assert!(s.is_unit_attention() && s.is_capacity_changed());
        assert!(!s.is_reported_luns_changed());
        assert_eq!(Sense::parse(&d[..14]), Ok(s));
    }

    #[test]
    fn descriptor_format_decodes_information_descriptor() {
        #[rustfmt::skip]
        let d = [
            0x72, 0x05, 0x24, 0x00, 0, 0, 0, 20,
            // a vendor descriptor (type 0x80) to skip
            0x80, 0x02, 0xAA, 0xBB,
            // Information descriptor: type 0, additional length 0x0A, VALID
            0x00, 0x0A, 0x80, 0x00, 0, 0, 0, 1, 0, 0, 0, 2,
        ];
        let s = Sense::parse(&d).unwrap();
        assert_eq!(
            s,
            Sense {
                response_code: 0x72,
                sense_key: SenseKey::ILLEGAL_REQUEST,
                asc: 0x24,
                ascq: 0,
                information: Some(0x1_0000_0002),
                deferred: false,
                field_pointer: None,
            }
        );
        assert!(s.is_illegal_request() && s.is_descriptor_format());
        // Cut by the buffer: the Information descriptor is incomplete and ignored.
        let cut = Sense::parse(&d[..d.len() - 1]).unwrap();
        assert_eq!(cut.information, None);
        // ADDITIONAL SENSE LENGTH that ends before the descriptor hides it too.
        let mut short = d;
        short[7] = 4;
        assert_eq!(Sense::parse(&short).unwrap().information, None);
        // VALID clear.
        let mut nv = d;
        nv[14] = 0;
        assert_eq!(Sense::parse(&nv).unwrap().information, None);
    }

    #[test]
    fn descriptor_format_header_only() {
        let s = Sense::parse(&[0x73, 0x02, 0x04, 0x01, 0, 0, 0, 0]).unwrap();
        assert!(s.deferred && s.is_not_ready());
        assert_eq!((s.asc, s.ascq, s.information), (0x04, 0x01, None));
        let s = Sense::parse(&[0x72, 0x02, 0x3A, 0x00, 0, 0, 0, 0]).unwrap();
        assert!(s.is_medium_not_present());
        let s = Sense::parse(&[0x72, 0x06, 0x3F, 0x0E, 0, 0, 0, 0]).unwrap();
        assert!(s.is_reported_luns_changed());
        let s = Sense::parse(&[0x72, 0x05, 0x20, 0x00, 0, 0, 0, 0]).unwrap();
        assert!(s.is_invalid_opcode());
    }

    #[test]
    fn errors() {
        assert_eq!(
            Sense::parse(&[]),
            Err(Error::Short {
                what: "sense data",
                need: 1,
                got: 0
            })
        );
        assert_eq!(
            Sense::parse(&FIXED_MEDIUM[..13]),
            Err(Error::Short {
                what: "fixed format sense data",
                need: 14,
                got: 13
            })
        );
        assert_eq!(
            Sense::parse(&[0x72, 0, 0, 0, 0, 0, 0]),
            Err(Error::Short {
                what: "descriptor format sense data",
                need: 8,
                got: 7
            })
        );
        for code in [0x00, 0x6F, 0x74, 0x7F, 0xFF] {
            assert_eq!(
                Sense::parse(&[code; 18]),
                Err(Error::BadSenseResponseCode { code: code & 0x7F })
            );
        }
    }

    #[test]
    fn key_helpers_match_one_key_each() {
        for k in 0..16u8 {
            let s = Sense {
                response_code: 0x70,
                sense_key: SenseKey::new(k),
                asc: 0,
                ascq: 0,
                information: None,
                deferred: false,
                field_pointer: None,
            };
            let hits = [
                s.is_no_sense(),
                s.is_recovered_error(),
                s.is_not_ready(),
                s.is_medium_error(),
                s.is_hardware_error(),
                s.is_illegal_request(),
                s.is_unit_attention(),
                s.is_data_protect(),
                s.is_aborted_command(),
            ];
            let want = usize::from(matches!(k, 0..=7 | 0xB));
            assert_eq!(hits.iter().filter(|&&h| h).count(), want, "key {k}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            match Sense::parse(&data) {
                Ok(s) => {
                    prop_assert!((0x70..=0x73).contains(&s.response_code));
                    prop_assert_eq!(s.deferred, s.response_code & 1 == 1);
                }
                Err(Error::Short { .. } | Error::BadSenseResponseCode { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn what_the_target_encodes_the_initiator_decodes(
            key in 0u8..16,
            asc: u8,
            ascq: u8,
            info: Option<u64>,
            fp in proptest::option::of((any::<bool>(), any::<u16>(), proptest::option::of(0u8..8))),
        ) {
            let key = SenseKey::new(key);
            let mut s = Sense::new(key, asc, ascq);
            if let Some(i) = info {
                s = s.with_information(i);
            }
            // Field pointers exist for ILLEGAL REQUEST only.
            if let (Some((in_cdb, byte, bit)), true) = (fp, key == SenseKey::ILLEGAL_REQUEST) {
                s = s.with_field_pointer(FieldPointer { in_cdb, byte, bit });
            }
            prop_assert_eq!(PackedSense::from(s).sense(), s);
            prop_assert!(std::mem::size_of::<PackedSense>() == 16);
            let d = Sense::parse(&s.descriptor_format()).unwrap();
            prop_assert_eq!(PackedSense::from(d).sense(), d);
            prop_assert_eq!(d, Sense { response_code: response_code::DESCRIPTOR_CURRENT, ..s });
            // Fixed format holds a 4-byte INFORMATION only.
            let f = Sense::parse(&s.fixed_format()).unwrap();
            let info4 = s.information.filter(|&i| u32::try_from(i).is_ok());
            prop_assert_eq!(f, Sense { information: info4, ..s });
        }

        #[test]
        fn fixed_format_round_trips(key in 0u8..16, asc: u8, ascq: u8, info: u32, valid: bool) {
            let mut d = [0u8; 18];
            d[0] = 0x70 | if valid { 0x80 } else { 0 };
            d[2] = key;
            d[3..7].copy_from_slice(&info.to_be_bytes());
            d[7] = 10;
            d[12] = asc;
            d[13] = ascq;
            let s = Sense::parse(&d).unwrap();
            prop_assert_eq!((s.sense_key.get(), s.asc, s.ascq), (key, asc, ascq));
            prop_assert_eq!(s.information, valid.then_some(u64::from(info)));
        }
    }
}
