//! READ CAPACITY(10) and READ CAPACITY(16) parameter data (SBC-4).

use crate::error::{Error, Result};

/// READ CAPACITY(10) parameter data (SBC-4 "READ CAPACITY (10) parameter data"):
/// bytes 0..4 RETURNED LOGICAL BLOCK ADDRESS, bytes 4..8 LOGICAL BLOCK LENGTH IN BYTES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCapacity10 {
    /// The last LBA of the logical unit.
    pub last_lba: u32,
    /// The logical block length in bytes (never zero).
    pub block_length: u32,
}

/// Bytes of READ CAPACITY(10) parameter data.
pub const READ_CAPACITY_10_LEN: usize = 8;
/// Bytes of READ CAPACITY(16) parameter data this parser needs (the full data is 32).
pub const READ_CAPACITY_16_LEN: usize = 16;

impl ReadCapacity10 {
    /// Parses READ CAPACITY(10) parameter data.
    ///
    /// # Errors
    /// [`Error::Short`] below 8 bytes; [`Error::ZeroBlockLength`].
    pub fn parse(data: &[u8]) -> Result<Self> {
        let Some(d) = data.first_chunk::<READ_CAPACITY_10_LEN>() else {
            return Err(Error::Short {
                what: "read capacity(10) data",
                need: READ_CAPACITY_10_LEN,
                got: data.len(),
            });
        };
        let block_length = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        if block_length == 0 {
            return Err(Error::ZeroBlockLength);
        }
        Ok(Self {
            last_lba: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
            block_length,
        })
    }

    /// Whether the capacity does not fit this response (last LBA 0xFFFFFFFF, SBC-4)
    /// and READ CAPACITY(16) must be issued.
    pub fn needs_16(&self) -> bool {
        self.last_lba == u32::MAX
    }

    /// The number of logical blocks (last LBA + 1).
    pub fn block_count(&self) -> u64 {
        // u32::MAX + 1 fits in u64.
        u64::from(self.last_lba) + 1
    }

    /// The 8 bytes of parameter data.
    pub fn to_bytes(&self) -> [u8; READ_CAPACITY_10_LEN] {
        let mut d = [0u8; READ_CAPACITY_10_LEN];
        d[0..4].copy_from_slice(&self.last_lba.to_be_bytes());
        d[4..8].copy_from_slice(&self.block_length.to_be_bytes());
        d
    }
}

/// READ CAPACITY(16) parameter data (SBC-4 "READ CAPACITY (16) parameter data"):
/// bytes 0..8 RETURNED LOGICAL BLOCK ADDRESS; 8..12 LOGICAL BLOCK LENGTH IN BYTES;
/// byte 12 P_TYPE (bits 3..1) and PROT_EN (bit 0); byte 13 P_I_EXPONENT (7..4) and
/// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (3..0); bytes 14..16 LBPME (bit 15), LBPRZ
/// (bit 14) and LOWEST ALIGNED LOGICAL BLOCK ADDRESS (13..0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCapacity16 {
    /// The last LBA of the logical unit.
    pub last_lba: u64,
    /// The logical block length in bytes (never zero).
    pub block_length: u32,
    /// PROT_EN: protection information is enabled.
    pub prot_en: bool,
    /// P_TYPE: the protection type (when `prot_en`).
    pub p_type: u8,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: 2^n logical blocks per physical one.
    pub physical_block_exponent: u8,
    /// LBPME: logical block provisioning management (UNMAP etc.) is enabled.
    pub lbpme: bool,
    /// LBPRZ: unmapped blocks read as zeros.
    pub lbprz: bool,
    /// LOWEST ALIGNED LOGICAL BLOCK ADDRESS.
    pub lowest_aligned_lba: u16,
    /// RC BASIS (byte 12 bits 5..4): 01b when the returned LBA is the last LBA of the
    /// logical unit, 00b when it may be of its lowest capacity (SBC-3).
    pub rc_basis: u8,
}

impl ReadCapacity16 {
    /// Parses READ CAPACITY(16) parameter data; needs the first 16 of its 32 bytes.
    ///
    /// # Errors
    /// [`Error::Short`] below 16 bytes; [`Error::ZeroBlockLength`].
    pub fn parse(data: &[u8]) -> Result<Self> {
        let Some(d) = data.first_chunk::<READ_CAPACITY_16_LEN>() else {
            return Err(Error::Short {
                what: "read capacity(16) data",
                need: READ_CAPACITY_16_LEN,
                got: data.len(),
            });
        };
        let block_length = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        if block_length == 0 {
            return Err(Error::ZeroBlockLength);
        }
        let lbp = u16::from_be_bytes([d[14], d[15]]);
        Ok(Self {
            last_lba: u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]),
            block_length,
            prot_en: d[12] & 0x01 != 0,
            p_type: (d[12] >> 1) & 0x07,
            physical_block_exponent: d[13] & 0x0F,
            lbpme: lbp & 0x8000 != 0,
            lbprz: lbp & 0x4000 != 0,
            lowest_aligned_lba: lbp & 0x3FFF,
            rc_basis: (d[12] >> 4) & 0x03,
        })
    }

    /// The 32 bytes of parameter data (P_I_EXPONENT 0, the reserved bytes zero).
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[0..8].copy_from_slice(&self.last_lba.to_be_bytes());
        d[8..12].copy_from_slice(&self.block_length.to_be_bytes());
        d[12] = (self.rc_basis & 0x03) << 4 | (self.p_type & 0x07) << 1 | u8::from(self.prot_en);
        d[13] = self.physical_block_exponent & 0x0F;
        let lbp = u16::from(self.lbpme) << 15
            | u16::from(self.lbprz) << 14
            | (self.lowest_aligned_lba & 0x3FFF);
        d[14..16].copy_from_slice(&lbp.to_be_bytes());
        d
    }

    /// The number of logical blocks (last LBA + 1); `None` for a last LBA of
    /// `u64::MAX`, whose count does not fit.
    pub fn block_count(&self) -> Option<u64> {
        self.last_lba.checked_add(1)
    }

    /// The physical block length in bytes; `None` when it overflows `u32`.
    pub fn physical_block_length(&self) -> Option<u32> {
        1u32.checked_shl(u32::from(self.physical_block_exponent))?
            .checked_mul(self.block_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn read_capacity_10_decodes() {
        let d = [0x00, 0x3F, 0xFF, 0xFF, 0x00, 0x00, 0x02, 0x00];
        let c = ReadCapacity10::parse(&d).unwrap();
        assert_eq!(c.last_lba, 0x3F_FFFF);
        assert_eq!(c.block_length, 512);
        assert_eq!(c.block_count(), 0x40_0000);
        assert!(!c.needs_16());
        let c = ReadCapacity10::parse(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0]).unwrap();
        assert!(c.needs_16());
        assert_eq!(c.block_count(), 1 << 32);
    }

    #[test]
    fn read_capacity_10_errors() {
        assert_eq!(
            ReadCapacity10::parse(&[0; 7]),
            Err(Error::Short {
                what: "read capacity(10) data",
                need: 8,
                got: 7
            })
        );
        assert_eq!(
            ReadCapacity10::parse(&[0, 0, 0, 1, 0, 0, 0, 0]),
            Err(Error::ZeroBlockLength)
        );
    }

    #[test]
    fn read_capacity_16_decodes() {
        let mut d = [0u8; 32];
        d[0..8].copy_from_slice(&0x0000_0001_0000_0000u64.to_be_bytes());
        d[8..12].copy_from_slice(&4096u32.to_be_bytes());
        d[12] = 0x03; // P_TYPE 001b, PROT_EN
        d[13] = 0x13; // P_I_EXPONENT 1, LBPPBE 3
        d[14] = 0xC0 | 0x01; // LBPME, LBPRZ, lowest aligned LBA 0x0107
        d[15] = 0x07;
        let c = ReadCapacity16::parse(&d).unwrap();
        assert_eq!(
            c,
            ReadCapacity16 {
                last_lba: 1 << 32,
                block_length: 4096,
                prot_en: true,
                p_type: 1,
                physical_block_exponent: 3,
                lbpme: true,
                lbprz: true,
                lowest_aligned_lba: 0x107,
                rc_basis: 0,
            }
        );
        assert_eq!(c.block_count(), Some((1 << 32) + 1));
        assert_eq!(c.physical_block_length(), Some(32768));
        assert_eq!(ReadCapacity16::parse(&d[..16]), Ok(c));
    }

    #[test]
    fn read_capacity_16_edges_and_errors() {
        let mut d = [0u8; 16];
        d[0..8].fill(0xFF);
        d[8..12].copy_from_slice(&0x8000_0000u32.to_be_bytes());
        d[13] = 0x0F;
        let c = ReadCapacity16::parse(&d).unwrap();
        assert_eq!(c.block_count(), None);
        assert_eq!(c.physical_block_length(), None);
        assert!(!c.lbpme && !c.lbprz && !c.prot_en);
        assert_eq!(
            ReadCapacity16::parse(&d[..15]),
            Err(Error::Short {
                what: "read capacity(16) data",
                need: 16,
                got: 15
            })
        );
        assert_eq!(ReadCapacity16::parse(&[0; 32]), Err(Error::ZeroBlockLength));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(c) = ReadCapacity10::parse(&data) {
                prop_assert!(c.block_length != 0);
                let _ = c.block_count();
            }
            if let Ok(c) = ReadCapacity16::parse(&data) {
                prop_assert!(c.physical_block_exponent <= 15);
                let _ = (c.block_count(), c.physical_block_length());
            }
        }

        #[test]
        fn read_capacity_16_round_trips(lba: u64, len in 1u32.., exp in 0u8..16, lbp: u16) {
            let mut d = [0u8; 32];
            d[0..8].copy_from_slice(&lba.to_be_bytes());
            d[8..12].copy_from_slice(&len.to_be_bytes());
            d[13] = exp;
            d[14..16].copy_from_slice(&lbp.to_be_bytes());
            let c = ReadCapacity16::parse(&d).unwrap();
            prop_assert_eq!((c.last_lba, c.block_length, c.physical_block_exponent), (lba, len, exp));
            prop_assert_eq!(c.lbpme, lbp >> 15 == 1);
            prop_assert_eq!(c.lbprz, (lbp >> 14) & 1 == 1);
        }
    }

    proptest::proptest! {
        #[test]
        fn what_a_target_encodes_an_initiator_decodes(
            last10: u32, last16: u64, bl in 1u32.., prot_en: bool, p_type in 0u8..8,
            exp in 0u8..16, lbpme: bool, lbprz: bool, lowest in 0u16..0x4000, rc in 0u8..4,
        ) {
            let c10 = ReadCapacity10 { last_lba: last10, block_length: bl };
            proptest::prop_assert_eq!(ReadCapacity10::parse(&c10.to_bytes()).unwrap(), c10);
            let c16 = ReadCapacity16 {
                last_lba: last16,
                block_length: bl,
                prot_en,
                p_type,
                physical_block_exponent: exp,
                lbpme,
                lbprz,
                lowest_aligned_lba: lowest,
                rc_basis: rc,
            };
            proptest::prop_assert_eq!(ReadCapacity16::parse(&c16.to_bytes()).unwrap(), c16);
        }
    }
}
