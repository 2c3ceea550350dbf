//! MODE SENSE(6) parameter data (SPC-5 "Mode parameters") and the Caching mode page
//! (SBC-4 "Caching mode page").
//!
//! Layout: the 4-byte mode parameter header (byte 0 MODE DATA LENGTH, the bytes after
//! it; byte 1 MEDIUM TYPE; byte 2 DEVICE-SPECIFIC PARAMETER; byte 3 BLOCK DESCRIPTOR
//! LENGTH), BLOCK DESCRIPTOR LENGTH bytes of block descriptors, then mode pages up to
//! the end MODE DATA LENGTH declares. A page in page_0 format (SPF = 0) has a 2-byte
//! header (byte 0 PS, SPF, PAGE CODE; byte 1 PAGE LENGTH); one in sub_page format
//! (SPF = 1) a 4-byte one (byte 1 SUBPAGE CODE, bytes 2..4 PAGE LENGTH).
//!
//! Truncation to the allocation length does not change MODE DATA LENGTH: when the page
//! a parser looks for lies past the end of the buffer, the error is
//! [`Error::Truncated`] with the length to ask for. Parts that run past the end the
//! data declares are [`Error::Overrun`].

use crate::error::{Error, Result};

/// Mode page codes (byte 2 bits 5..0 of the MODE SENSE CDB, byte 0 of a mode page).
pub mod page {
    /// Caching mode page (SBC-4).
    pub const CACHING: u8 = 0x08;
    /// Control mode page (SPC-5).
    pub const CONTROL: u8 = 0x0A;
    /// All mode pages (in the CDB only).
    pub const ALL: u8 = 0x3F;
}

/// PAGE CONTROL values of the MODE SENSE CDB (SPC-5 "PC field").
pub mod page_control {
    /// Current values.
    pub const CURRENT: u8 = 0b00;
    /// Changeable values: a mask of the fields MODE SELECT can change.
    pub const CHANGEABLE: u8 = 0b01;
    /// Default values.
    pub const DEFAULT: u8 = 0b10;
    /// Saved values.
    pub const SAVED: u8 = 0b11;
}

/// Length of the mode parameter header of MODE SENSE(6).
pub const MODE_PARAMETER_HEADER_6_LEN: usize = 4;

/// The mode parameter header of MODE SENSE(6) (SPC-5 "Mode parameter header(6)"), with
/// the DEVICE-SPECIFIC PARAMETER of a direct access block device (SBC-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeParameterHeader6 {
    /// MODE DATA LENGTH: the bytes of mode data after this field (at least 3).
    pub mode_data_length: u8,
    /// MEDIUM TYPE (0 for direct access block devices).
    pub medium_type: u8,
    /// DEVICE-SPECIFIC PARAMETER; for block devices see [`Self::WP`] and
    /// [`Self::DPOFUA`].
    pub device_specific_parameter: u8,
    /// BLOCK DESCRIPTOR LENGTH: bytes of block descriptors after the header.
    pub block_descriptor_length: u8,
}

impl ModeParameterHeader6 {
    /// WP in the DEVICE-SPECIFIC PARAMETER (SBC-4): the medium is write-protected.
    pub const WP: u8 = 0x80;
    /// DPOFUA in the DEVICE-SPECIFIC PARAMETER (SBC-4): the DPO and FUA bits are
    /// supported.
    pub const DPOFUA: u8 = 0x10;

    /// Parses the first 4 bytes of MODE SENSE(6) data.
    ///
    /// # Errors
    /// [`Error::Short`] below 4 bytes; [`Error::Overrun`] when MODE DATA LENGTH is below
    /// 3, i.e. the data would end inside the header.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let Some(h) = data.first_chunk::<MODE_PARAMETER_HEADER_6_LEN>() else {
            return Err(Error::Short {
                what: "mode parameter header(6)",
                need: MODE_PARAMETER_HEADER_6_LEN,
                got: data.len(),
            });
        };
        let header = Self {
            mode_data_length: h[0],
            medium_type: h[1],
            device_specific_parameter: h[2],
            block_descriptor_length: h[3],
        };
        if header.data_len() < MODE_PARAMETER_HEADER_6_LEN {
            return Err(Error::Overrun {
                what: "mode parameter header(6)",
                offset: 0,
                len: MODE_PARAMETER_HEADER_6_LEN,
                end: header.data_len(),
            });
        }
        Ok(header)
    }

    /// The length of the whole mode data the device has (MODE DATA LENGTH + 1): the
    /// allocation length that returns all of it.
    pub fn data_len(&self) -> usize {
        usize::from(self.mode_data_length) + 1
    }

    /// Offset of the first mode page: after the header and the block descriptors.
    pub fn pages_offset(&self) -> usize {
        MODE_PARAMETER_HEADER_6_LEN + usize::from(self.block_descriptor_length)
    }

    /// WP: the logical unit is write-protected.
    pub fn write_protected(&self) -> bool {
        self.device_specific_parameter & Self::WP != 0
    }

    /// DPOFUA: the logical unit supports the DPO and FUA bits.
    pub fn dpofua(&self) -> bool {
        self.device_specific_parameter & Self::DPOFUA != 0
    }
}

/// Finds mode page `page_code`, subpage `subpage_code` in MODE SENSE(6) data and
/// returns it whole: from its byte 0 (PS, SPF, PAGE CODE) to the end of its PAGE
/// LENGTH. Subpage 0 matches a page in page_0 format, other subpages a page in
/// sub_page format. `Ok(None)`: the data ends without the page.
///
/// # Errors
/// Those of [`ModeParameterHeader6::parse`]; [`Error::Overrun`] when the block
/// descriptors, a page header or a page run past the end MODE DATA LENGTH declares;
/// [`Error::Truncated`] when the walk or the page found needs bytes past the buffer.
pub fn find_page_6(data: &[u8], page_code: u8, subpage_code: u8) -> Result<Option<&[u8]>> {
    let header = ModeParameterHeader6::parse(data)?;
    let end = header.data_len();
    let start = header.pages_offset();
    if start > end {
        return Err(Error::Overrun {
            what: "mode parameter block descriptors",
            offset: MODE_PARAMETER_HEADER_6_LEN,
            len: usize::from(header.block_descriptor_length),
            end,
        });
    }
    find_page(data, start, end, page_code, subpage_code)
}

/// Walks the mode pages of `data` from `off` to the declared `end`.
fn find_page(
    data: &[u8],
    mut off: usize,
    end: usize,
    page_code: u8,
    subpage_code: u8,
) -> Result<Option<&[u8]>> {
    let truncated = || Error::Truncated {
        what: "mode parameter data",
        need: end,
        got: data.len(),
    };
    while off < end {
        let Some(&b0) = data.get(off) else {
            return Err(truncated());
        };
        let spf = b0 & 0x40 != 0;
        let header_len = if spf { 4 } else { 2 };
        if off + header_len > end {
            return Err(Error::Overrun {
                what: "mode page header",
                offset: off,
                len: header_len,
                end,
            });
        }
        let Some(h) = data.get(off..off + header_len) else {
            return Err(truncated());
        };
        let (subpage, page_len) = if spf {
            (h[1], usize::from(u16::from_be_bytes([h[2], h[3]])))
        } else {
            (0, usize::from(h[1]))
        };
        let len = header_len + page_len;
        if off + len > end {
            return Err(Error::Overrun {
                what: "mode page",
                offset: off,
                len,
                end,
            });
        }
        if b0 & 0x3F == page_code && subpage == subpage_code && spf == (subpage_code != 0) {
            return data.get(off..off + len).map(Some).ok_or_else(truncated);
        }
        off += len;
    }
    Ok(None)
}

/// The Caching mode page (SBC-4 "Caching mode page", page code 08h, page_0 format,
/// PAGE LENGTH 12h): the fields a block initiator needs from byte 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CachingPage {
    /// WCE (byte 2 bit 2): the write cache is enabled, so written data is durable only
    /// after SYNCHRONIZE CACHE or with FUA.
    pub wce: bool,
    /// RCD (byte 2 bit 0): the read cache is disabled.
    pub rcd: bool,
}

impl CachingPage {
    /// WCE in byte 2.
    pub const WCE: u8 = 0x04;
    /// RCD in byte 2.
    pub const RCD: u8 = 0x01;

    /// Parses the Caching mode page from its byte 0 (as [`find_page_6`] returns it).
    /// Needs bytes 0..3, within PAGE LENGTH; the other fields are not read.
    ///
    /// # Errors
    /// [`Error::WrongModePage`] unless byte 0 holds SPF = 0 and PAGE CODE 08h (PS is
    /// ignored); [`Error::Short`] when the page, cut at the buffer or at its PAGE
    /// LENGTH, ends before byte 2.
    pub fn parse(page: &[u8]) -> Result<Self> {
        let short = |got| Error::Short {
            what: "caching mode page",
            need: 3,
            got,
        };
        let Some(&[b0, page_len]) = page.first_chunk::<2>() else {
            return Err(short(page.len()));
        };
        if b0 & 0x7F != page::CACHING {
            return Err(Error::WrongModePage {
                expected: page::CACHING,
                got: b0 & 0x7F,
            });
        }
        let got = page.len().min(2 + usize::from(page_len));
        let Some(&b2) = page[..got].get(2) else {
            return Err(short(got));
        };
        Ok(Self {
            wce: b2 & Self::WCE != 0,
            rcd: b2 & Self::RCD != 0,
        })
    }
}

/// MODE SENSE(6) data as a block initiator reads it: the header and, when the data
/// holds it, the Caching mode page. Block descriptors and other pages are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeSense6 {
    /// The mode parameter header.
    pub header: ModeParameterHeader6,
    /// The Caching mode page, `None` when the data does not hold it.
    pub caching: Option<CachingPage>,
}

impl ModeSense6 {
    /// Parses MODE SENSE(6) data (for page 08h or 3Fh, with or without block
    /// descriptors) and finds the Caching mode page after the header and the block
    /// descriptors.
    ///
    /// # Errors
    /// Those of [`find_page_6`] and [`CachingPage::parse`].
    pub fn parse(data: &[u8]) -> Result<Self> {
        let header = ModeParameterHeader6::parse(data)?;
        let caching = find_page_6(data, page::CACHING, 0)?
            .map(CachingPage::parse)
            .transpose()?;
        Ok(Self { header, caching })
    }

    /// WP of the header: the logical unit is write-protected.
    pub fn write_protected(&self) -> bool {
        self.header.write_protected()
    }

    /// WCE of the Caching mode page; `false` without the page.
    pub fn write_cache_enabled(&self) -> bool {
        self.caching.is_some_and(|c| c.wce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// MODE SENSE(6) data from its parts, MODE DATA LENGTH computed.
    fn data(dsp: u8, block_descriptors: &[u8], pages: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![0, 0, dsp, u8::try_from(block_descriptors.len()).unwrap()];
        v.extend_from_slice(block_descriptors);
        for p in pages {
            v.extend_from_slice(p);
        }
        v[0] = u8::try_from(v.len() - 1).unwrap();
        v
    }

    /// A Caching mode page as SBC-4 lays it out, with byte 2 given.
    fn caching(b2: u8) -> Vec<u8> {
        let mut p = vec![0u8; 0x14];
        p[0] = 0x08;
        p[1] = 0x12;
        p[2] = b2;
        p
    }

    /// A Control mode page (SPC-5), page_0 format.
    const CONTROL: [u8; 12] = [0x0A, 0x0A, 0x02, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn caching_page_with_dbd() {
        let d = data(0x10, &[], &[&caching(0x04)]);
        assert_eq!(d.len(), 24);
        let m = ModeSense6::parse(&d).unwrap();
        assert_eq!(
            m.header,
            ModeParameterHeader6 {
                mode_data_length: 23,
                medium_type: 0,
                device_specific_parameter: 0x10,
                block_descriptor_length: 0,
            }
        );
        assert!(m.header.dpofua() && !m.write_protected());
        assert_eq!(m.header.data_len(), 24);
        assert_eq!(m.header.pages_offset(), 4);
        assert_eq!(
            m.caching,
            Some(CachingPage {
                wce: true,
                rcd: false
            })
        );
        assert!(m.write_cache_enabled());
    }

    #[test]
    fn pages_follow_block_descriptors_and_other_pages() {
        // A short LBA block descriptor (SBC-4): 0x1000 blocks of 512 bytes.
        let bd = [0, 0, 0x10, 0, 0, 0, 2, 0];
        // A page in sub_page format (Control Extension, 0Ah/01h) and the Control page
        // before the Caching page; WP set, RCD set, WCE clear; PS set.
        let ext = [0x4A, 0x01, 0x00, 0x1C];
        let mut ext = ext.to_vec();
        ext.resize(4 + 0x1C, 0);
        let mut c = caching(0x01);
        c[0] |= 0x80;
        let d = data(0x80, &bd, &[&ext, &CONTROL, &c]);
        let m = ModeSense6::parse(&d).unwrap();
        assert!(m.write_protected() && !m.header.dpofua());
        assert_eq!(m.header.pages_offset(), 12);
        assert_eq!(
            m.caching,
            Some(CachingPage {
                wce: false,
                rcd: true
            })
        );
        assert!(!m.write_cache_enabled());
        assert_eq!(find_page_6(&d, 0x0A, 0), Ok(Some(&CONTROL[..])));
        assert_eq!(find_page_6(&d, 0x0A, 0x01), Ok(Some(&ext[..])));
        assert_eq!(find_page_6(&d, 0x0A, 0x02), Ok(None));
        assert_eq!(find_page_6(&d, 0x1C, 0), Ok(None));
    }

    #[test]
    fn data_without_the_caching_page() {
        // Header only: MODE DATA LENGTH 3.
        let m = ModeSense6::parse(&[3, 0, 0x80, 0]).unwrap();
        assert!(m.write_protected());
        assert_eq!(m.caching, None);
        assert!(!m.write_cache_enabled());
        // Only the Control page.
        let d = data(0, &[], &[&CONTROL]);
        assert_eq!(ModeSense6::parse(&d).unwrap().caching, None);
        // Page 08h in sub_page format is not the Caching page.
        let d = data(0, &[], &[&[0x48, 0x00, 0x00, 0x01, 0x04]]);
        assert_eq!(ModeSense6::parse(&d).unwrap().caching, None);
        // Bytes past MODE DATA LENGTH are not pages.
        let mut d = data(0, &[], &[]);
        d.extend_from_slice(&caching(0x04));
        assert_eq!(ModeSense6::parse(&d).unwrap().caching, None);
    }

    #[test]
    fn short_caching_pages() {
        // PAGE LENGTH 1 still holds byte 2.
        let d = data(0, &[], &[&[0x08, 0x01, 0x04]]);
        assert!(ModeSense6::parse(&d).unwrap().write_cache_enabled());
        // PAGE LENGTH 0 does not.
        let d = data(0, &[], &[&[0x08, 0x00]]);
        assert_eq!(
            ModeSense6::parse(&d),
            Err(Error::Short {
                what: "caching mode page",
                need: 3,
                got: 2
            })
        );
        assert_eq!(
            CachingPage::parse(&[0x08]),
            Err(Error::Short {
                what: "caching mode page",
                need: 3,
                got: 1
            })
        );
        assert_eq!(
            CachingPage::parse(&CONTROL),
            Err(Error::WrongModePage {
                expected: 0x08,
                got: 0x0A
            })
        );
        assert_eq!(
            CachingPage::parse(&[0xC8, 0, 0, 1, 4]),
            Err(Error::WrongModePage {
                expected: 0x08,
                got: 0x48
            })
        );
    }

    #[test]
    fn malformed_data_is_an_error() {
        assert_eq!(
            ModeSense6::parse(&[23, 0, 0]),
            Err(Error::Short {
                what: "mode parameter header(6)",
                need: 4,
                got: 3
            })
        );
        assert_eq!(
            ModeSense6::parse(&[2, 0, 0, 0]),
            Err(Error::Overrun {
                what: "mode parameter header(6)",
                offset: 0,
                len: 4,
                end: 3
            })
        );
        // BLOCK DESCRIPTOR LENGTH 8, but MODE DATA LENGTH leaves room for 4.
        assert_eq!(
            ModeSense6::parse(&[7, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Error::Overrun {
                what: "mode parameter block descriptors",
                offset: 4,
                len: 8,
                end: 8
            })
        );
        // A page whose PAGE LENGTH runs past MODE DATA LENGTH.
        let mut d = data(0, &[], &[&CONTROL, &caching(0x04)]);
        d[0] -= 1;
        assert_eq!(
            ModeSense6::parse(&d),
            Err(Error::Overrun {
                what: "mode page",
                offset: 16,
                len: 20,
                end: 35
            })
        );
        // A page header cut by MODE DATA LENGTH.
        let d = [5, 0, 0, 0, 0x48, 0x01, 0, 0];
        assert_eq!(
            ModeSense6::parse(&d),
            Err(Error::Overrun {
                what: "mode page header",
                offset: 4,
                len: 4,
                end: 6
            })
        );
    }

    #[test]
    fn truncated_data_asks_for_more() {
        let bd = [0u8; 8];
        let d = data(0, &bd, &[&CONTROL, &caching(0x04)]);
        assert_eq!(d.len(), 44);
        for cut in [4, 11, 12, 13, 24, 25, 43] {
            assert_eq!(
                ModeSense6::parse(&d[..cut]),
                Err(Error::Truncated {
                    what: "mode parameter data",
                    need: 44,
                    got: cut
                }),
                "cut at {cut}"
            );
        }
        // The Control page alone fits the first 24 bytes.
        assert_eq!(find_page_6(&d[..24], 0x0A, 0), Ok(Some(&CONTROL[..])));
    }

    #[test]
    fn what_our_target_returns() {
        // MODE SENSE(6), page 3Fh, no DBD, a 512-byte disk of 0x8000 blocks.
        let mut d = vec![43, 0, 0x10, 8, 0, 0, 0x80, 0, 0, 0, 2, 0];
        d.extend_from_slice(&caching(0x04));
        d.extend_from_slice(&CONTROL);
        let m = ModeSense6::parse(&d).unwrap();
        assert!(m.write_cache_enabled() && !m.write_protected());
    }

    /// A mode page other than the page_0 format Caching page.
    fn other_page() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..0x3F,
            any::<bool>(),
            1u8..,
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(code, spf, sub, ps, body)| {
                let ps = if ps { 0x80 } else { 0 };
                let len = u8::try_from(body.len()).unwrap();
                let mut p = if spf {
                    vec![ps | 0x40 | code, sub, 0, len]
                } else {
                    let code = if code == page::CACHING { 0x0A } else { code };
                    vec![ps | code, len]
                };
                p.extend_from_slice(&body);
                p
            })
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(m) = ModeSense6::parse(&data) {
                prop_assert!(m.header.data_len() >= 4);
                prop_assert!(data.len() >= 4);
            }
            if let Ok(Some(p)) = find_page_6(&data, data.first().copied().unwrap_or(0) & 0x3F, 0) {
                prop_assert!(p.len() >= 2 && p.len() <= data.len());
            }
        }

        #[test]
        fn finds_the_caching_page_in_any_layout(
            dsp: u8,
            bd in proptest::collection::vec(any::<u8>(), 0..24),
            before in proptest::collection::vec(other_page(), 0..4),
            after in proptest::collection::vec(other_page(), 0..2),
            b2: u8,
            cut: usize,
        ) {
            let c = caching(b2);
            let pages: Vec<&[u8]> = before.iter().map(Vec::as_slice)
                .chain([c.as_slice()])
                .chain(after.iter().map(Vec::as_slice))
                .collect();
            let d = data(dsp, &bd, &pages);
            let m = ModeSense6::parse(&d).unwrap();
            prop_assert_eq!(m.header.device_specific_parameter, dsp);
            prop_assert_eq!(usize::from(m.header.block_descriptor_length), bd.len());
            prop_assert_eq!(m.write_protected(), dsp & 0x80 != 0);
            prop_assert_eq!(m.header.dpofua(), dsp & 0x10 != 0);
            prop_assert_eq!(
                m.caching,
                Some(CachingPage { wce: b2 & 0x04 != 0, rcd: b2 & 0x01 != 0 })
            );
            // Cut to an allocation length: the same answer while the Caching page
            // fits, else a request for all of it.
            let cut = cut % (d.len() + 1);
            let page_end = 4 + bd.len() + before.iter().map(Vec::len).sum::<usize>() + c.len();
            let r = ModeSense6::parse(&d[..cut]);
            if cut >= page_end {
                prop_assert_eq!(r, Ok(m));
            } else if cut < 4 {
                let short = matches!(r, Err(Error::Short { .. }));
                prop_assert!(short);
            } else {
                prop_assert_eq!(
                    r,
                    Err(Error::Truncated { what: "mode parameter data", need: d.len(), got: cut })
                );
            }
        }
    }
}
