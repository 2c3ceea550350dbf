//! MODE SENSE(6) and MODE SENSE(10) parameter data (SPC-5 "Mode parameters"), the
//! block descriptors of a direct access block device (SBC-4 "Mode parameter block
//! descriptors"), the Caching mode page (SBC-4 "Caching mode page") and the Control mode
//! page (SPC-5 "Control mode page"). Each encodes and parses.
//!
//! Layout: the 4-byte mode parameter header (byte 0 MODE DATA LENGTH, the bytes after
//! it; byte 1 MEDIUM TYPE; byte 2 DEVICE-SPECIFIC PARAMETER; byte 3 BLOCK DESCRIPTOR
//! LENGTH), BLOCK DESCRIPTOR LENGTH bytes of block descriptors, then mode pages up to
//! the end MODE DATA LENGTH declares. A page in page_0 format (SPF = 0) has a 2-byte
//! header (byte 0 PS, SPF, PAGE CODE; byte 1 PAGE LENGTH); one in sub_page format
//! (SPF = 1) a 4-byte one (byte 1 SUBPAGE CODE, bytes 2..4 PAGE LENGTH). MODE SENSE(10)
//! has an 8-byte header instead (bytes 0..2 MODE DATA LENGTH; byte 2 MEDIUM TYPE; byte 3
//! DEVICE-SPECIFIC PARAMETER; byte 4 LONGLBA in bit 0; bytes 6..8 BLOCK DESCRIPTOR
//! LENGTH).
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

/// Length of the mode parameter header of MODE SENSE(10).
pub const MODE_PARAMETER_HEADER_10_LEN: usize = 8;

/// The mode parameter header of MODE SENSE(10) (SPC-5 "Mode parameter header(10)"),
/// with the DEVICE-SPECIFIC PARAMETER of a direct access block device (SBC-4; the bits
/// are [`ModeParameterHeader6::WP`] and [`ModeParameterHeader6::DPOFUA`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeParameterHeader10 {
    /// MODE DATA LENGTH: the bytes of mode data after this field (at least 6).
    pub mode_data_length: u16,
    /// MEDIUM TYPE (0 for direct access block devices).
    pub medium_type: u8,
    /// DEVICE-SPECIFIC PARAMETER.
    pub device_specific_parameter: u8,
    /// LONGLBA (byte 4 bit 0): the block descriptors are in the long LBA format.
    pub longlba: bool,
    /// BLOCK DESCRIPTOR LENGTH: bytes of block descriptors after the header.
    pub block_descriptor_length: u16,
}

impl ModeParameterHeader10 {
    /// Parses the first 8 bytes of MODE SENSE(10) data. Reserved bits are not checked.
    ///
    /// # Errors
    /// [`Error::Short`] below 8 bytes; [`Error::Overrun`] when MODE DATA LENGTH is below
    /// 6, i.e. the data would end inside the header.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let Some(h) = data.first_chunk::<MODE_PARAMETER_HEADER_10_LEN>() else {
            return Err(Error::Short {
                what: "mode parameter header(10)",
                need: MODE_PARAMETER_HEADER_10_LEN,
                got: data.len(),
            });
        };
        let header = Self {
            mode_data_length: u16::from_be_bytes([h[0], h[1]]),
            medium_type: h[2],
            device_specific_parameter: h[3],
            longlba: h[4] & 0x01 != 0,
            block_descriptor_length: u16::from_be_bytes([h[6], h[7]]),
        };
        if header.data_len() < MODE_PARAMETER_HEADER_10_LEN {
            return Err(Error::Overrun {
                what: "mode parameter header(10)",
                offset: 0,
                len: MODE_PARAMETER_HEADER_10_LEN,
                end: header.data_len(),
            });
        }
        Ok(header)
    }

    /// The length of the whole mode data the device has (MODE DATA LENGTH + 2).
    pub fn data_len(&self) -> usize {
        usize::from(self.mode_data_length) + 2
    }

    /// Offset of the first mode page: after the header and the block descriptors.
    pub fn pages_offset(&self) -> usize {
        MODE_PARAMETER_HEADER_10_LEN + usize::from(self.block_descriptor_length)
    }

    /// WP: the logical unit is write-protected.
    pub fn write_protected(&self) -> bool {
        self.device_specific_parameter & ModeParameterHeader6::WP != 0
    }

    /// The 8 header bytes (reserved bytes 0).
    pub fn to_bytes(&self) -> [u8; MODE_PARAMETER_HEADER_10_LEN] {
        let len = self.mode_data_length.to_be_bytes();
        let bdl = self.block_descriptor_length.to_be_bytes();
        [
            len[0],
            len[1],
            self.medium_type,
            self.device_specific_parameter,
            u8::from(self.longlba),
            0,
            bdl[0],
            bdl[1],
        ]
    }
}

/// Length of a short LBA mode parameter block descriptor.
pub const SHORT_BLOCK_DESCRIPTOR_LEN: usize = 8;
/// Length of a long LBA mode parameter block descriptor.
pub const LONG_BLOCK_DESCRIPTOR_LEN: usize = 16;

/// A mode parameter block descriptor of a direct access block device (SBC-4): the
/// short LBA format (bytes 0..4 NUMBER OF LOGICAL BLOCKS, bytes 5..8 LOGICAL BLOCK
/// LENGTH) or the long one (bytes 0..8 and bytes 12..16), as the header's LONGLBA says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockDescriptor {
    /// NUMBER OF LOGICAL BLOCKS; in the short format FFFF_FFFFh stands for "more".
    pub num_blocks: u64,
    /// LOGICAL BLOCK LENGTH in bytes (24 bits in the short format).
    pub block_length: u32,
}

impl BlockDescriptor {
    /// The short LBA format: a block count above FFFF_FFFEh is sent as FFFF_FFFFh (the
    /// initiator then asks READ CAPACITY(16)), the block length cut to its low 24 bits
    /// (a block device's is far below 16 MiB).
    pub fn to_short_bytes(&self) -> [u8; SHORT_BLOCK_DESCRIPTOR_LEN] {
        let n = u32::try_from(self.num_blocks)
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        let l = self.block_length.to_be_bytes();
        [n[0], n[1], n[2], n[3], 0, l[1], l[2], l[3]]
    }

    /// The long LBA format.
    pub fn to_long_bytes(&self) -> [u8; LONG_BLOCK_DESCRIPTOR_LEN] {
        let mut b = [0u8; LONG_BLOCK_DESCRIPTOR_LEN];
        b[..8].copy_from_slice(&self.num_blocks.to_be_bytes());
        b[12..].copy_from_slice(&self.block_length.to_be_bytes());
        b
    }

    /// Parses a short LBA format descriptor (its first 8 bytes).
    ///
    /// # Errors
    /// [`Error::Short`] below 8 bytes.
    pub fn parse_short(data: &[u8]) -> Result<Self> {
        let Some(d) = data.first_chunk::<SHORT_BLOCK_DESCRIPTOR_LEN>() else {
            return Err(Error::Short {
                what: "short LBA mode parameter block descriptor",
                need: SHORT_BLOCK_DESCRIPTOR_LEN,
                got: data.len(),
            });
        };
        Ok(Self {
            num_blocks: u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]])),
            block_length: u32::from_be_bytes([0, d[5], d[6], d[7]]),
        })
    }

    /// Parses a long LBA format descriptor (its first 16 bytes).
    ///
    /// # Errors
    /// [`Error::Short`] below 16 bytes.
    pub fn parse_long(data: &[u8]) -> Result<Self> {
        let Some(d) = data.first_chunk::<LONG_BLOCK_DESCRIPTOR_LEN>() else {
            return Err(Error::Short {
                what: "long LBA mode parameter block descriptor",
                need: LONG_BLOCK_DESCRIPTOR_LEN,
                got: data.len(),
            });
        };
        let (n, rest) = d.split_first_chunk::<8>().expect("16 bytes");
        let l = rest.last_chunk::<4>().expect("8 bytes");
        Ok(Self {
            num_blocks: u64::from_be_bytes(*n),
            block_length: u32::from_be_bytes(*l),
        })
    }
}

/// Finds mode page `page_code`, subpage `subpage_code` in MODE SENSE(10) data, as
/// [`find_page_6`] does in MODE SENSE(6) data.
///
/// # Errors
/// Those of [`ModeParameterHeader10::parse`] and of [`find_page_6`] past the header.
pub fn find_page_10(data: &[u8], page_code: u8, subpage_code: u8) -> Result<Option<&[u8]>> {
    let header = ModeParameterHeader10::parse(data)?;
    let end = header.data_len();
    let start = header.pages_offset();
    if start > end {
        return Err(Error::Overrun {
            what: "mode parameter block descriptors",
            offset: MODE_PARAMETER_HEADER_10_LEN,
            len: usize::from(header.block_descriptor_length),
            end,
        });
    }
    find_page(data, start, end, page_code, subpage_code)
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

/// Bytes of the Control mode page (page_0 format, PAGE LENGTH 0Ah).
pub const CONTROL_PAGE_LEN: usize = 0x0C;

/// The Control mode page (SPC-5 "Control mode page", page code 0Ah, page_0 format,
/// PAGE LENGTH 0Ah): the fields that say how a logical unit queues and reports. Bits
/// not named here (TST, TMF_ONLY, DPICZ, RLEC, NUAR, VS, RAC, SWP, ATO, ATMPE, RWWP,
/// SBLP, AUTOLOAD MODE, EXTENDED SELF-TEST COMPLETION TIME) encode as 0 and are not
/// parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ControlPage {
    /// D_SENSE (byte 2 bit 2): sense data in descriptor format rather than fixed.
    pub d_sense: bool,
    /// GLTSD (byte 2 bit 1): log parameters are not saved implicitly.
    pub gltsd: bool,
    /// QUEUE ALGORITHM MODIFIER (byte 3 bits 7..4): 0 restricted, 1 unrestricted
    /// reordering of simple commands.
    pub queue_algorithm_modifier: u8,
    /// QERR (byte 3 bits 2..1): what other commands undergo when one ends in CHECK
    /// CONDITION.
    pub qerr: u8,
    /// UA_INTLCK_CTRL (byte 4 bits 5..4): 00b clears a reported unit attention.
    pub ua_intlck_ctrl: u8,
    /// TAS (byte 5 bit 6): aborted commands end in TASK ABORTED.
    pub tas: bool,
    /// BUSY TIMEOUT PERIOD (bytes 8..10) in 100 ms units; 0 undefined.
    pub busy_timeout_period: u16,
}

impl ControlPage {
    /// The whole page; the multi-bit fields are cut to their widths.
    pub fn to_bytes(&self) -> [u8; CONTROL_PAGE_LEN] {
        let mut b = [0u8; CONTROL_PAGE_LEN];
        b[0] = page::CONTROL;
        b[1] = (CONTROL_PAGE_LEN - 2) as u8;
        b[2] = u8::from(self.d_sense) << 2 | u8::from(self.gltsd) << 1;
        b[3] = (self.queue_algorithm_modifier & 0x0F) << 4 | (self.qerr & 0x03) << 1;
        b[4] = (self.ua_intlck_ctrl & 0x03) << 4;
        b[5] = u8::from(self.tas) << 6;
        b[8..10].copy_from_slice(&self.busy_timeout_period.to_be_bytes());
        b
    }

    /// Parses the Control mode page from its byte 0 (as [`find_page_6`] returns it).
    /// Needs the whole page (12 bytes, within PAGE LENGTH).
    ///
    /// # Errors
    /// [`Error::WrongModePage`] unless byte 0 holds SPF = 0 and PAGE CODE 0Ah (PS is
    /// ignored); [`Error::Short`] when the page, cut at the buffer or at its PAGE
    /// LENGTH, is shorter than 12 bytes.
    pub fn parse(page: &[u8]) -> Result<Self> {
        let short = |got| Error::Short {
            what: "control mode page",
            need: CONTROL_PAGE_LEN,
            got,
        };
        let Some(&[b0, page_len]) = page.first_chunk::<2>() else {
            return Err(short(page.len()));
        };
        if b0 & 0x7F != page::CONTROL {
            return Err(Error::WrongModePage {
                expected: page::CONTROL,
                got: b0 & 0x7F,
            });
        }
        let got = page.len().min(2 + usize::from(page_len));
        let Some(b) = page[..got].first_chunk::<CONTROL_PAGE_LEN>() else {
            return Err(short(got));
        };
        Ok(Self {
            d_sense: b[2] & 0x04 != 0,
            gltsd: b[2] & 0x02 != 0,
            queue_algorithm_modifier: b[3] >> 4,
            qerr: (b[3] >> 1) & 0x03,
            ua_intlck_ctrl: (b[4] >> 4) & 0x03,
            tas: b[5] & 0x40 != 0,
            busy_timeout_period: u16::from_be_bytes([b[8], b[9]]),
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
mod tests;
