//! Standard INQUIRY data (SPC-5 "Standard INQUIRY data format").

use std::fmt;

use crate::error::{Error, Result};

/// PERIPHERAL DEVICE TYPE (SPC-5 "Peripheral device type"): five bits, every value kept.
///
/// Invariant: the value is at most 0x1F.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceType(u8);

impl DeviceType {
    /// Direct access block device (SBC-4): a disk.
    pub const DIRECT_ACCESS: Self = Self(0x00);
    /// Sequential access device (tape).
    pub const SEQUENTIAL_ACCESS: Self = Self(0x01);
    /// CD/DVD device (MMC).
    pub const CD_DVD: Self = Self(0x05);
    /// Optical memory device.
    pub const OPTICAL_MEMORY: Self = Self(0x07);
    /// Media changer.
    pub const MEDIUM_CHANGER: Self = Self(0x08);
    /// Storage array controller.
    pub const STORAGE_ARRAY_CONTROLLER: Self = Self(0x0C);
    /// Enclosure services device.
    pub const ENCLOSURE_SERVICES: Self = Self(0x0D);
    /// Host managed zoned block device (ZBC).
    pub const ZONED_BLOCK: Self = Self(0x14);
    /// Well known logical unit.
    pub const WELL_KNOWN_LU: Self = Self(0x1E);
    /// Unknown or no device type.
    pub const UNKNOWN: Self = Self(0x1F);

    /// The device type in the low five bits of `raw`.
    pub const fn new(raw: u8) -> Self {
        Self(raw & 0x1F)
    }

    /// The five-bit value.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::DIRECT_ACCESS => f.write_str("direct access"),
            Self::CD_DVD => f.write_str("cd/dvd"),
            Self::ZONED_BLOCK => f.write_str("zoned block"),
            Self::UNKNOWN => f.write_str("unknown"),
            Self(v) => write!(f, "device type {v:#04x}"),
        }
    }
}

/// PERIPHERAL QUALIFIER values (SPC-5 "Peripheral qualifier").
pub mod qualifier {
    /// A device of the reported type is connected to this logical unit.
    pub const CONNECTED: u8 = 0b000;
    /// The device server can support a device of this type here, but none is connected.
    pub const NOT_CONNECTED: u8 = 0b001;
    /// The device server cannot support a device on this logical unit.
    pub const NOT_SUPPORTED: u8 = 0b011;
}

/// Standard INQUIRY data, the fields vbdev uses.
///
/// Layout (SPC-5 "Standard INQUIRY data format"): byte 0 PERIPHERAL QUALIFIER (bits
/// 7..5) and PERIPHERAL DEVICE TYPE (4..0); byte 1 RMB (bit 7); byte 2 VERSION; byte 3
/// RESPONSE DATA FORMAT (bits 3..0); byte 4 ADDITIONAL LENGTH; byte 7 CMDQUE (bit 1);
/// bytes 8..16 T10 VENDOR IDENTIFICATION; 16..32 PRODUCT IDENTIFICATION; 32..36 PRODUCT
/// REVISION LEVEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardInquiry {
    /// PERIPHERAL QUALIFIER (see [`qualifier`]).
    pub peripheral_qualifier: u8,
    /// PERIPHERAL DEVICE TYPE.
    pub device_type: DeviceType,
    /// RMB: the medium is removable.
    pub removable: bool,
    /// VERSION: the SPC version claimed (0x06 is SPC-4, 0x07 SPC-5).
    pub version: u8,
    /// RESPONSE DATA FORMAT (2 for every SPC since SPC-2).
    pub response_data_format: u8,
    /// ADDITIONAL LENGTH: bytes after byte 4 that the device has.
    pub additional_length: u8,
    /// CMDQUE: the logical unit supports command queuing.
    pub cmdque: bool,
    /// T10 VENDOR IDENTIFICATION, trailing spaces and NULs trimmed.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION, trimmed.
    pub product: String,
    /// PRODUCT REVISION LEVEL, trimmed.
    pub revision: String,
    /// VERSION DESCRIPTORS (bytes 58..74: the standards claimed, e.g. 0x00A0 SAM-5), up
    /// to the first zero and within ADDITIONAL LENGTH.
    pub version_descriptors: Vec<u16>,
}

/// Bytes of standard INQUIRY data this parser needs (through PRODUCT REVISION LEVEL).
pub const STANDARD_INQUIRY_LEN: usize = 36;
/// Offset of the VERSION DESCRIPTORS in standard INQUIRY data.
const VERSION_DESCRIPTORS_OFF: usize = 58;
/// VERSION DESCRIPTORS fields (bytes 58..74).
const MAX_VERSION_DESCRIPTORS: usize = 8;

impl StandardInquiry {
    /// Parses standard INQUIRY data.
    ///
    /// Identification strings are ASCII by SPC-5; other bytes become U+FFFD.
    ///
    /// # Errors
    /// [`Error::Short`] when `data` has fewer than [`STANDARD_INQUIRY_LEN`] bytes.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let Some(d) = data.first_chunk::<STANDARD_INQUIRY_LEN>() else {
            return Err(Error::Short {
                what: "standard inquiry data",
                need: STANDARD_INQUIRY_LEN,
                got: data.len(),
            });
        };
        Ok(Self {
            peripheral_qualifier: d[0] >> 5,
            device_type: DeviceType::new(d[0]),
            removable: d[1] & 0x80 != 0,
            version: d[2],
            response_data_format: d[3] & 0x0F,
            additional_length: d[4],
            cmdque: d[7] & 0x02 != 0,
            vendor: ascii_field(&d[8..16]),
            product: ascii_field(&d[16..32]),
            revision: ascii_field(&d[32..36]),
            version_descriptors: {
                let end = data.len().min(5 + usize::from(d[4]));
                data.get(VERSION_DESCRIPTORS_OFF..end.max(VERSION_DESCRIPTORS_OFF))
                    .unwrap_or_default()
                    .chunks_exact(2)
                    .take(MAX_VERSION_DESCRIPTORS)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .take_while(|&v| v != 0)
                    .collect()
            },
        })
    }

    /// The data as a device reports it: `5 + additional_length` bytes (at least
    /// [`STANDARD_INQUIRY_LEN`]), identification strings padded with spaces (cut to their
    /// fields), version descriptors at byte 58 when there is room for them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = STANDARD_INQUIRY_LEN.max(5 + usize::from(self.additional_length));
        let mut d = vec![0u8; len];
        d[0] = (self.peripheral_qualifier & 0x07) << 5 | self.device_type.get();
        d[1] = if self.removable { 0x80 } else { 0 };
        d[2] = self.version;
        d[3] = self.response_data_format & 0x0F;
        d[4] = self.additional_length;
        d[7] = if self.cmdque { 0x02 } else { 0 };
        let mut put = |at: usize, width: usize, s: &str| {
            let field = &mut d[at..at + width];
            field.fill(b' ');
            let b = s.as_bytes();
            let n = b.len().min(width);
            field[..n].copy_from_slice(&b[..n]);
        };
        put(8, 8, &self.vendor);
        put(16, 16, &self.product);
        put(32, 4, &self.revision);
        for (i, v) in self
            .version_descriptors
            .iter()
            .take(MAX_VERSION_DESCRIPTORS)
            .enumerate()
        {
            let at = VERSION_DESCRIPTORS_OFF + 2 * i;
            if at + 2 <= len {
                d[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        d
    }

    /// Whether a logical unit is present here: qualifier [`qualifier::CONNECTED`] and a
    /// device type other than [`DeviceType::UNKNOWN`].
    pub fn is_present(&self) -> bool {
        self.peripheral_qualifier == qualifier::CONNECTED && self.device_type != DeviceType::UNKNOWN
    }
}

/// An ASCII identification field with trailing (and leading) spaces and NULs removed.
pub(crate) fn ascii_field(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A QEMU scsi-hd style response, written from SPC-5 "Standard INQUIRY data format".
    fn sample() -> [u8; 36] {
        let mut d = [0u8; 36];
        d[0] = 0x00; // qualifier 000b, type 00h (direct access)
        d[1] = 0x00; // RMB 0
        d[2] = 0x05; // VERSION: SPC-3
        d[3] = 0x12; // HISUP=1, RESPONSE DATA FORMAT=2
        d[4] = 31; // ADDITIONAL LENGTH (n - 4)
        d[7] = 0x02; // CMDQUE
        d[8..16].copy_from_slice(b"QEMU    ");
        d[16..32].copy_from_slice(b"QEMU HARDDISK   ");
        d[32..36].copy_from_slice(b"2.5+");
        d
    }

    #[test]
    fn parses_standard_inquiry() {
        let i = StandardInquiry::parse(&sample()).unwrap();
        assert_eq!(i.peripheral_qualifier, 0);
        assert_eq!(i.device_type, DeviceType::DIRECT_ACCESS);
        assert!(!i.removable);
        assert_eq!(i.version, 5);
        assert_eq!(i.response_data_format, 2);
        assert_eq!(i.additional_length, 31);
        assert!(i.cmdque);
        assert_eq!(i.vendor, "QEMU");
        assert_eq!(i.product, "QEMU HARDDISK");
        assert_eq!(i.revision, "2.5+");
        assert!(i.is_present());
    }

    #[test]
    fn decodes_qualifier_type_and_rmb() {
        let mut d = sample();
        d[0] = 0x7F; // qualifier 011b, type 1Fh: no LU here
        d[1] = 0x80;
        d[8..16].copy_from_slice(b"AB\0\0\0\0\0\0");
        let i = StandardInquiry::parse(&d).unwrap();
        assert_eq!(i.peripheral_qualifier, qualifier::NOT_SUPPORTED);
        assert_eq!(i.device_type, DeviceType::UNKNOWN);
        assert!(i.removable);
        assert_eq!(i.vendor, "AB");
        assert!(!i.is_present());
        d[0] = 0x20; // qualifier 001b, type 0
        assert!(!StandardInquiry::parse(&d).unwrap().is_present());
    }

    #[test]
    fn longer_data_is_accepted() {
        let mut d = sample().to_vec();
        d.resize(96, 0xAA);
        assert_eq!(StandardInquiry::parse(&d).unwrap().product, "QEMU HARDDISK");
    }

    #[test]
    fn short_data_is_an_error() {
        for n in [0, 5, 35] {
            assert_eq!(
                StandardInquiry::parse(&sample()[..n]),
                Err(Error::Short {
                    what: "standard inquiry data",
                    need: 36,
                    got: n
                })
            );
        }
    }

    #[test]
    fn non_ascii_is_replaced_not_rejected() {
        let mut d = sample();
        d[16] = 0xFF;
        assert!(
            StandardInquiry::parse(&d)
                .unwrap()
                .product
                .starts_with('\u{FFFD}')
        );
    }

    proptest! {
        #[test]
        fn what_a_target_encodes_an_initiator_decodes(
            q in 0u8..8,
            ty in 0u8..0x20,
            removable: bool,
            version: u8,
            rdf in 0u8..16,
            extra in 31u8..=91,
            cmdque: bool,
            vendor in "[!-~]([ -~]{0,6}[!-~])?",
            product in "[!-~]([ -~]{0,14}[!-~])?",
            revision in "[!-~]{0,4}",
            descs in proptest::collection::vec(1u16.., 0..=8),
        ) {
            // Descriptors only where ADDITIONAL LENGTH leaves room for them.
            let room = (5 + usize::from(extra)).saturating_sub(58) / 2;
            let i = StandardInquiry {
                peripheral_qualifier: q,
                device_type: DeviceType::new(ty),
                removable,
                version,
                response_data_format: rdf,
                additional_length: extra,
                cmdque,
                vendor,
                product,
                revision,
                version_descriptors: descs.into_iter().take(room).collect(),
            };
            prop_assert_eq!(StandardInquiry::parse(&i.to_bytes()).unwrap(), i);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            match StandardInquiry::parse(&data) {
                Ok(i) => {
                    prop_assert!(data.len() >= 36);
                    prop_assert!(i.device_type.get() <= 0x1F);
                    prop_assert!(i.peripheral_qualifier <= 7);
                }
                Err(e) => prop_assert!(data.len() < 36, "{e}"),
            }
        }
    }
}
