//! REPORT LUNS parameter data (SPC-5 "REPORT LUNS parameter data format") and the
//! SAM-5 single level LUN structures.

use std::fmt;

use crate::error::{Error, Result};

/// A single level logical unit number in peripheral or flat space addressing (SAM-5
/// "Single level LUN structure"): 0..=0x3FFF.
///
/// Invariant: the value is at most [`Lun::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lun(u16);

impl Lun {
    /// The largest LUN flat space addressing can express.
    pub const MAX: u16 = 0x3FFF;

    /// The LUN `v`, if flat space addressing can express it.
    pub const fn new(v: u16) -> Option<Self> {
        if v <= Self::MAX { Some(Self(v)) } else { None }
    }

    /// The LUN's value.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The 8-byte SAM-5 LUN: peripheral device addressing (bus 0) below 256, flat
    /// space addressing otherwise, as Linux and QEMU encode them.
    pub fn to_bytes(self) -> [u8; 8] {
        let [hi, lo] = self.0.to_be_bytes();
        if self.0 < 256 {
            [0, lo, 0, 0, 0, 0, 0, 0]
        } else {
            [0x40 | hi, lo, 0, 0, 0, 0, 0, 0]
        }
    }
}

impl fmt::Display for Lun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One entry of a LUN list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LunEntry {
    /// A single level LUN in peripheral device addressing with bus identifier 0, or
    /// in flat space addressing.
    Lun(Lun),
    /// Any other form (logical unit or extended addressing, a bus identifier other
    /// than 0, well known LUNs, several levels), kept as the 8 bytes received.
    Other([u8; 8]),
}

impl LunEntry {
    /// Decodes an 8-byte SAM-5 LUN. ADDRESS METHOD is bits 7..6 of byte 0: 00b
    /// peripheral device (bus identifier in bits 5..0, LUN in byte 1), 01b flat space
    /// (LUN in bits 13..0 of bytes 0..2). Bytes 2..8 are the lower levels and must be
    /// zero for a single level LUN.
    pub fn decode(b: [u8; 8]) -> Self {
        if b[2..].iter().any(|&x| x != 0) {
            return Self::Other(b);
        }
        match b[0] >> 6 {
            0b00 if b[0] & 0x3F == 0 => Self::Lun(Lun(u16::from(b[1]))),
            0b01 => Self::Lun(Lun(u16::from_be_bytes([b[0] & 0x3F, b[1]]))),
            _ => Self::Other(b),
        }
    }

    /// The LUN, when the entry is one this crate decodes.
    pub fn lun(&self) -> Option<Lun> {
        match self {
            Self::Lun(l) => Some(*l),
            Self::Other(_) => None,
        }
    }
}

/// REPORT LUNS parameter data: bytes 0..4 LUN LIST LENGTH (bytes, a multiple of 8),
/// bytes 4..8 reserved, then 8-byte LUNs.
///
/// When the list is longer than the buffer, `luns` holds the entries that fit and
/// [`is_truncated`](Self::is_truncated) tells the caller to reissue the command with an
/// allocation length of [`needed_len`](Self::needed_len).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLuns {
    /// LUN LIST LENGTH as the device reported it.
    pub list_length: u32,
    /// The entries in the buffer, in the device's order, none dropped.
    pub luns: Vec<LunEntry>,
}

/// The REPORT LUNS header length.
pub const REPORT_LUNS_HEADER_LEN: usize = 8;

impl ReportLuns {
    /// The parameter data of `luns`: LUN LIST LENGTH, 4 reserved bytes, then each LUN's
    /// 8 bytes (an [`LunEntry::Other`] as it was received).
    pub fn encode(luns: &[LunEntry]) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPORT_LUNS_HEADER_LEN + 8 * luns.len());
        // A list of at most (Lun::MAX + 1) LUNs per target is far below 4 GiB.
        out.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for l in luns {
            out.extend_from_slice(&match l {
                LunEntry::Lun(l) => l.to_bytes(),
                LunEntry::Other(b) => *b,
            });
        }
        out
    }

    /// Parses REPORT LUNS parameter data.
    ///
    /// # Errors
    /// [`Error::Short`] below the 8-byte header; [`Error::BadLunListLength`] when LUN
    /// LIST LENGTH is not a multiple of 8 (SPC-5).
    pub fn parse(data: &[u8]) -> Result<Self> {
        let Some((h, rest)) = data.split_first_chunk::<REPORT_LUNS_HEADER_LEN>() else {
            return Err(Error::Short {
                what: "report luns data",
                need: REPORT_LUNS_HEADER_LEN,
                got: data.len(),
            });
        };
        let list_length = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if list_length % 8 != 0 {
            return Err(Error::BadLunListLength { len: list_length });
        }
        // Both bounds are lengths in memory or a u32; the min fits usize.
        let in_buf = rest
            .len()
            .min(usize::try_from(list_length).unwrap_or(usize::MAX));
        let luns = rest[..in_buf]
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                LunEntry::decode(b)
            })
            .collect();
        Ok(Self { list_length, luns })
    }

    /// The allocation length that returns the whole list (header included).
    pub fn needed_len(&self) -> u64 {
        u64::from(self.list_length) + REPORT_LUNS_HEADER_LEN as u64
    }

    /// Whether the device has more LUNs than the buffer held.
    pub fn is_truncated(&self) -> bool {
        (self.luns.len() as u64) * 8 < u64::from(self.list_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(list: &[[u8; 8]]) -> Vec<u8> {
        let mut v = u32::try_from(list.len() * 8)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(&[0; 4]);
        for l in list {
            v.extend_from_slice(l);
        }
        v
    }

    #[test]
    fn decodes_peripheral_and_flat_luns() {
        let d = data(&[
            [0, 0, 0, 0, 0, 0, 0, 0],       // peripheral, LUN 0
            [0, 5, 0, 0, 0, 0, 0, 0],       // peripheral, LUN 5
            [0x40, 0xFF, 0, 0, 0, 0, 0, 0], // flat, LUN 255
            [0x41, 0x02, 0, 0, 0, 0, 0, 0], // flat, LUN 258
            [0x7F, 0xFF, 0, 0, 0, 0, 0, 0], // flat, LUN 0x3FFF
        ]);
        let r = ReportLuns::parse(&d).unwrap();
        assert_eq!(r.list_length, 40);
        assert!(!r.is_truncated());
        let luns: Vec<u16> = r.luns.iter().map(|e| e.lun().unwrap().get()).collect();
        assert_eq!(luns, [0, 5, 255, 258, 0x3FFF]);
    }

    #[test]
    fn reports_unknown_forms_instead_of_dropping_them() {
        let others = [
            [0x01, 0x00, 0, 0, 0, 0, 0, 0], // peripheral with bus identifier 1
            [0x80, 0x21, 0, 0, 0, 0, 0, 0], // logical unit addressing
            [0xC1, 0x01, 0, 0, 0, 0, 0, 0], // extended: REPORT LUNS well known LUN
            [0x00, 0x01, 0x00, 0x02, 0, 0, 0, 0], // two levels
        ];
        let r = ReportLuns::parse(&data(&others)).unwrap();
        assert_eq!(r.luns.len(), 4);
        for (e, raw) in r.luns.iter().zip(others) {
            assert_eq!(*e, LunEntry::Other(raw));
            assert_eq!(e.lun(), None);
        }
    }

    #[test]
    fn truncated_list_keeps_what_fits() {
        let mut d = data(&[[0, 1, 0, 0, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0, 0, 0]]);
        d.truncate(8 + 8 + 3);
        let r = ReportLuns::parse(&d).unwrap();
        assert_eq!(r.luns, [LunEntry::Lun(Lun(1))]);
        assert!(r.is_truncated());
        assert_eq!(r.needed_len(), 24);
        // Bytes past LUN LIST LENGTH are not entries.
        let mut d = data(&[[0, 1, 0, 0, 0, 0, 0, 0]]);
        d.extend_from_slice(&[0, 9, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ReportLuns::parse(&d).unwrap().luns.len(), 1);
    }

    #[test]
    fn errors() {
        assert_eq!(
            ReportLuns::parse(&[0; 7]),
            Err(Error::Short {
                what: "report luns data",
                need: 8,
                got: 7
            })
        );
        assert_eq!(
            ReportLuns::parse(&[0, 0, 0, 12, 0, 0, 0, 0]),
            Err(Error::BadLunListLength { len: 12 })
        );
        let empty = ReportLuns::parse(&[0; 8]).unwrap();
        assert!(empty.luns.is_empty() && !empty.is_truncated());
    }

    #[test]
    fn lun_new_bounds() {
        assert_eq!(Lun::new(0x3FFF).map(Lun::get), Some(0x3FFF));
        assert_eq!(Lun::new(0x4000), None);
        assert_eq!(Lun(7).to_bytes(), [0, 7, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun(256).to_bytes(), [0x41, 0, 0, 0, 0, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn what_a_target_encodes_an_initiator_decodes(
            ids in proptest::collection::vec(0u16..=Lun::MAX, 0..64),
        ) {
            let luns: Vec<LunEntry> =
                ids.into_iter().map(|v| LunEntry::Lun(Lun::new(v).unwrap())).collect();
            let r = ReportLuns::parse(&ReportLuns::encode(&luns)).unwrap();
            prop_assert!(!r.is_truncated());
            prop_assert_eq!(r.luns, luns);
        }
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(r) = ReportLuns::parse(&data) {
                prop_assert!(r.luns.len() * 8 <= data.len() - 8);
                let _ = (r.needed_len(), r.is_truncated());
            }
        }

        #[test]
        fn lun_round_trips(v in 0u16..=Lun::MAX) {
            let l = Lun::new(v).unwrap();
            prop_assert_eq!(LunEntry::decode(l.to_bytes()), LunEntry::Lun(l));
        }

        #[test]
        fn decoded_luns_are_in_range(b: [u8; 8]) {
            if let LunEntry::Lun(l) = LunEntry::decode(b) {
                prop_assert!(l.get() <= Lun::MAX);
                prop_assert_eq!(b[0] >> 6 == 0, l.get() == u16::from(b[1]) && b[0] == 0);
            }
        }
    }
}
