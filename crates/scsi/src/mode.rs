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

    /// The 4 header bytes.
    pub fn to_bytes(&self) -> [u8; MODE_PARAMETER_HEADER_6_LEN] {
        [
            self.mode_data_length,
            self.medium_type,
            self.device_specific_parameter,
            self.block_descriptor_length,
        ]
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

    /// The whole page (PAGE LENGTH 12h): WCE and RCD in byte 2, every other field 0.
    pub fn to_bytes(&self) -> [u8; CACHING_PAGE_LEN] {
        let mut b = [0u8; CACHING_PAGE_LEN];
        b[0] = page::CACHING;
        b[1] = (CACHING_PAGE_LEN - 2) as u8;
        b[2] = if self.wce { Self::WCE } else { 0 } | if self.rcd { Self::RCD } else { 0 };
        b
    }
}

/// Bytes of the Caching mode page (page_0 format, PAGE LENGTH 12h).
pub const CACHING_PAGE_LEN: usize = 0x14;

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
mod tests;
