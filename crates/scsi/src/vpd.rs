//! Vital product data pages (SPC-5 "Vital product data parameters", SBC-4 "VPD
//! parameters"), returned by INQUIRY with EVPD = 1.
//!
//! Every page starts with a 4-byte header: byte 0 qualifier and device type, byte 1
//! PAGE CODE, bytes 2..4 PAGE LENGTH (bytes after the header). Pages that are lists
//! (0x00, 0x80, 0x83) must fit the buffer whole, else [`Error::Truncated`] says how much
//! to ask for. Fixed-layout pages (0xB0, 0xB1, 0xB2) need only the fields they read.

use crate::error::{Error, Result};
use crate::inquiry::ascii_field;

/// VPD page codes.
pub mod page {
    /// Supported VPD Pages (SPC-5).
    pub const SUPPORTED_PAGES: u8 = 0x00;
    /// Unit Serial Number (SPC-5).
    pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
    /// Device Identification (SPC-5).
    pub const DEVICE_IDENTIFICATION: u8 = 0x83;
    /// Block Limits (SBC-4).
    pub const BLOCK_LIMITS: u8 = 0xB0;
    /// Block Device Characteristics (SBC-4).
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
    /// Logical Block Provisioning (SBC-4).
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;
}

const HEADER: usize = 4;

/// Checks the header of page `code` and returns the page body: the whole PAGE LENGTH
/// when `whole`, else as much of it as `data` holds.
fn body<'a>(data: &'a [u8], code: u8, what: &'static str, whole: bool) -> Result<&'a [u8]> {
    let Some(h) = data.first_chunk::<HEADER>() else {
        return Err(Error::Short {
            what,
            need: HEADER,
            got: data.len(),
        });
    };
    if h[1] != code {
        return Err(Error::WrongVpdPage {
            expected: code,
            got: h[1],
        });
    }
    let end = HEADER + usize::from(u16::from_be_bytes([h[2], h[3]]));
    if end > data.len() {
        if whole {
            return Err(Error::Truncated {
                what,
                need: end,
                got: data.len(),
            });
        }
        return Ok(&data[HEADER..]);
    }
    Ok(&data[HEADER..end])
}

/// Checks that `body` holds at least `need` bytes (`need` counts from the page start).
fn need(body: &[u8], need: usize, what: &'static str) -> Result<()> {
    if HEADER + body.len() < need {
        return Err(Error::Short {
            what,
            need,
            got: HEADER + body.len(),
        });
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from(be32(b, at)) << 32 | u64::from(be32(b, at + 4))
}

/// Supported VPD Pages (0x00): the page codes the device returns, in its order.
///
/// # Errors
/// [`Error::Short`], [`Error::WrongVpdPage`], [`Error::Truncated`].
pub fn parse_supported_pages(data: &[u8]) -> Result<Vec<u8>> {
    Ok(body(data, page::SUPPORTED_PAGES, "supported vpd pages", true)?.to_vec())
}

/// The Supported VPD Pages page (0x00) of a direct-access block device listing `pages`.
pub fn supported_pages_page(pages: &[u8]) -> Vec<u8> {
    with_header(page::SUPPORTED_PAGES, pages)
}

/// The Unit Serial Number page (0x80) of a direct-access block device for `serial`.
pub fn unit_serial_number_page(serial: &str) -> Vec<u8> {
    with_header(page::UNIT_SERIAL_NUMBER, serial.as_bytes())
}

/// A VPD page of a direct-access block device: the 4-byte header, then `body` (cut at
/// 65535 bytes, the most PAGE LENGTH holds).
fn with_header(code: u8, body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(usize::from(u16::MAX))];
    let mut v = vec![0u8; HEADER];
    v.extend_from_slice(body);
    page_header(&mut v, code);
    v
}

/// Unit Serial Number (0x80): PRODUCT SERIAL NUMBER, ASCII, leading and trailing spaces
/// and NULs trimmed.
///
/// # Errors
/// [`Error::Short`], [`Error::WrongVpdPage`], [`Error::Truncated`].
pub fn parse_unit_serial_number(data: &[u8]) -> Result<String> {
    let b = body(
        data,
        page::UNIT_SERIAL_NUMBER,
        "unit serial number page",
        true,
    )?;
    Ok(ascii_field(b))
}

/// CODE SET of a designation descriptor (SPC-5 "Code set"); other values are
/// reserved and kept as they are.
pub mod code_set {
    /// The designator is binary.
    pub const BINARY: u8 = 1;
    /// The designator is printable ASCII.
    pub const ASCII: u8 = 2;
    /// The designator is UTF-8.
    pub const UTF8: u8 = 3;
}

/// ASSOCIATION of a designation descriptor (SPC-5 "Association").
pub mod association {
    /// The designator names the logical unit.
    pub const LOGICAL_UNIT: u8 = 0;
    /// The designator names the target port the command came through.
    pub const TARGET_PORT: u8 = 1;
    /// The designator names the SCSI target device.
    pub const TARGET_DEVICE: u8 = 2;
}

/// DESIGNATOR TYPE of a designation descriptor (SPC-5 "Designator type").
pub mod designator_type {
    /// Vendor specific.
    pub const VENDOR_SPECIFIC: u8 = 0x0;
    /// T10 vendor ID based.
    pub const T10_VENDOR_ID: u8 = 0x1;
    /// EUI-64 based (8, 12 or 16 bytes).
    pub const EUI64: u8 = 0x2;
    /// NAA (8 or 16 bytes).
    pub const NAA: u8 = 0x3;
    /// Relative target port identifier.
    pub const RELATIVE_TARGET_PORT: u8 = 0x4;
    /// Target port group.
    pub const TARGET_PORT_GROUP: u8 = 0x5;
    /// Logical unit group.
    pub const LOGICAL_UNIT_GROUP: u8 = 0x6;
    /// MD5 logical unit identifier.
    pub const MD5_LOGICAL_UNIT: u8 = 0x7;
    /// SCSI name string.
    pub const SCSI_NAME_STRING: u8 = 0x8;
    /// Protocol specific port identifier.
    pub const PROTOCOL_SPECIFIC_PORT: u8 = 0x9;
    /// UUID identifier (RFC 4122 UUID in bytes 2..18).
    pub const UUID: u8 = 0xA;
}

/// One designation descriptor of the Device Identification page.
///
/// Layout (SPC-5 "Designation descriptor"): byte 0 PROTOCOL IDENTIFIER (bits 7..4) and
/// CODE SET (3..0); byte 1 PIV (bit 7), ASSOCIATION (5..4), DESIGNATOR TYPE (3..0);
/// byte 3 DESIGNATOR LENGTH; then the designator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designator {
    /// PROTOCOL IDENTIFIER (meaningful only when `piv`).
    pub protocol_identifier: u8,
    /// CODE SET (see [`code_set`]).
    pub code_set: u8,
    /// PIV: `protocol_identifier` is valid.
    pub piv: bool,
    /// ASSOCIATION (see [`association`]).
    pub association: u8,
    /// DESIGNATOR TYPE (see [`designator_type`]).
    pub designator_type: u8,
    /// The DESIGNATOR bytes.
    pub identifier: Vec<u8>,
}

impl Designator {
    /// The NAA field (bits 7..4 of the first byte) of an NAA designator.
    pub fn naa(&self) -> Option<u8> {
        if self.designator_type != designator_type::NAA {
            return None;
        }
        self.identifier.first().map(|b| b >> 4)
    }

    /// Whether this is a binary NAA, EUI-64 or UUID designator of the logical unit,
    /// with a length its type allows (SPC-5 "NAA designator format", "EUI-64 based
    /// designator format", "UUID designator format").
    fn is_well_formed_lu_id(&self) -> bool {
        if self.association != association::LOGICAL_UNIT || self.code_set != code_set::BINARY {
            return false;
        }
        let n = self.identifier.len();
        match self.designator_type {
            designator_type::NAA => matches!((self.naa(), n), (Some(2 | 3 | 5), 8) | (Some(6), 16)),
            designator_type::EUI64 => matches!(n, 8 | 12 | 16),
            // Byte 0 bits 7..4: UUID DESIGNATOR TYPE 1; bytes 2..18 the UUID.
            designator_type::UUID => n == 18 && self.identifier[0] >> 4 == 1,
            _ => false,
        }
    }
}

/// The Device Identification page (0x83): its designation descriptors, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentification {
    /// The designation descriptors.
    pub designators: Vec<Designator>,
}

impl DeviceIdentification {
    /// Parses page 0x83.
    ///
    /// # Errors
    /// [`Error::Short`], [`Error::WrongVpdPage`], [`Error::Truncated`] for the page;
    /// [`Error::DescriptorOverrun`] when a descriptor's header or designator runs past
    /// PAGE LENGTH.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let b = body(
            data,
            page::DEVICE_IDENTIFICATION,
            "device identification page",
            true,
        )?;
        let end = HEADER + b.len();
        let mut designators = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let Some(h) = b.get(at..at + 4) else {
                return Err(Error::DescriptorOverrun {
                    offset: HEADER + at,
                    len: 0,
                    end,
                });
            };
            let len = usize::from(h[3]);
            let Some(id) = b.get(at + 4..at + 4 + len) else {
                return Err(Error::DescriptorOverrun {
                    offset: HEADER + at,
                    len,
                    end,
                });
            };
            designators.push(Designator {
                protocol_identifier: h[0] >> 4,
                code_set: h[0] & 0x0F,
                piv: h[1] & 0x80 != 0,
                association: (h[1] >> 4) & 0x03,
                designator_type: h[1] & 0x0F,
                identifier: id.to_vec(),
            });
            at += 4 + len;
        }
        Ok(Self { designators })
    }

    /// The page of a direct-access block device with these designation descriptors
    /// (each identifier cut at 255 bytes).
    pub fn to_page(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for d in &self.designators {
            let id = &d.identifier[..d.identifier.len().min(255)];
            body.push((d.protocol_identifier & 0x0F) << 4 | (d.code_set & 0x0F));
            body.push(
                u8::from(d.piv) << 7 | (d.association & 0x03) << 4 | (d.designator_type & 0x0F),
            );
            body.push(0);
            body.push(id.len() as u8); // at most 255
            body.extend_from_slice(id);
        }
        with_header(page::DEVICE_IDENTIFICATION, &body)
    }

    /// The designator that best names the logical unit, for a stable id: of those
    /// with LOGICAL UNIT association and binary code set, an NAA designator (16-byte
    /// before 8-byte), else the longest EUI-64, else a UUID designator.
    pub fn preferred(&self) -> Option<&Designator> {
        let rank = |d: &Designator| match d.designator_type {
            designator_type::NAA => 300 + d.identifier.len(),
            designator_type::EUI64 => 200 + d.identifier.len(),
            _ => 100,
        };
        self.designators
            .iter()
            .filter(|d| d.is_well_formed_lu_id())
            // max_by_key keeps the last of equals; reverse so the first one wins.
            .rev()
            .max_by_key(|d| rank(d))
    }

    /// A stable 16-byte id of the logical unit from [`preferred`](Self::preferred).
    ///
    /// A 16-byte NAA or EUI-64 designator is the id as it is; a UUID designator gives
    /// its UUID; a shorter designator becomes `[type, len, designator.., 0..]`, so
    /// designators of different types or lengths never map to the same id.
    pub fn unique_id(&self) -> Option<[u8; 16]> {
        let d = self.preferred()?;
        let id = &d.identifier;
        let mut out = [0u8; 16];
        match (d.designator_type, id.len()) {
            (designator_type::UUID, _) => out.copy_from_slice(id.get(2..18)?),
            (_, 16) => out.copy_from_slice(id),
            (t, n) => {
                // is_well_formed_lu_id bounds n to 8 or 12 here.
                out[0] = t;
                out[1] = u8::try_from(n).ok()?;
                out.get_mut(2..2 + n)?.copy_from_slice(id);
            }
        }
        Some(out)
    }
}

/// The Block Limits page (0xB0, SBC-4 "Block Limits VPD page").
///
/// Fields beyond the page a device returns (SBC-2 devices stop after OPTIMAL TRANSFER
/// LENGTH) read as zero, which SBC-4 gives the meaning "not reported" (for MAXIMUM
/// UNMAP LBA COUNT: UNMAP not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockLimits {
    /// WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is not supported (byte 4 bit 0).
    pub wsnz: bool,
    /// MAXIMUM COMPARE AND WRITE LENGTH (byte 5), in blocks.
    pub max_compare_and_write_length: u8,
    /// OPTIMAL TRANSFER LENGTH GRANULARITY (bytes 6..8), in blocks.
    pub optimal_transfer_length_granularity: u16,
    /// MAXIMUM TRANSFER LENGTH (bytes 8..12), in blocks; 0: no limit reported.
    pub max_transfer_length: u32,
    /// OPTIMAL TRANSFER LENGTH (bytes 12..16), in blocks.
    pub optimal_transfer_length: u32,
    /// MAXIMUM UNMAP LBA COUNT (bytes 20..24); 0: UNMAP not supported.
    pub max_unmap_lba_count: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (bytes 24..28).
    pub max_unmap_block_descriptor_count: u32,
    /// OPTIMAL UNMAP GRANULARITY (bytes 28..32), in blocks.
    pub optimal_unmap_granularity: u32,
    /// UNMAP GRANULARITY ALIGNMENT (bytes 32..36, bits 30..0), present when UGAVALID
    /// (byte 32 bit 7) is set.
    pub unmap_granularity_alignment: Option<u32>,
    /// MAXIMUM WRITE SAME LENGTH (bytes 36..44), in blocks; 0: not reported.
    pub max_write_same_length: u64,
}

impl BlockLimits {
    /// Parses page 0xB0. Needs the header and bytes 4..16 (SBC-2's page length 0x0C).
    ///
    /// # Errors
    /// [`Error::Short`], [`Error::WrongVpdPage`].
    pub fn parse(data: &[u8]) -> Result<Self> {
        const WHAT: &str = "block limits page";
        let b = body(data, page::BLOCK_LIMITS, WHAT, false)?;
        need(b, 16, WHAT)?;
        // Offsets below are page offsets minus the 4-byte header.
        let has = |page_end: usize| HEADER + b.len() >= page_end;
        let mut l = Self {
            wsnz: b[0] & 0x01 != 0,
            max_compare_and_write_length: b[1],
            optimal_transfer_length_granularity: be16(b, 2),
            max_transfer_length: be32(b, 4),
            optimal_transfer_length: be32(b, 8),
            ..Self::default()
        };
        if has(28) {
            l.max_unmap_lba_count = be32(b, 16);
            l.max_unmap_block_descriptor_count = be32(b, 20);
        }
        if has(36) {
            l.optimal_unmap_granularity = be32(b, 24);
            let uga = be32(b, 28);
            l.unmap_granularity_alignment = (uga & 0x8000_0000 != 0).then_some(uga & 0x7FFF_FFFF);
        }
        if has(44) {
            l.max_write_same_length = be64(b, 32);
        }
        Ok(l)
    }

    /// The page as a direct-access block device reports it (SBC-4, PAGE LENGTH 3Ch):
    /// MAXIMUM PREFETCH LENGTH and the atomic transfer limits zero.
    pub fn to_page(&self) -> [u8; BLOCK_LIMITS_LEN] {
        let mut b = [0u8; BLOCK_LIMITS_LEN];
        page_header(&mut b, page::BLOCK_LIMITS);
        b[4] = u8::from(self.wsnz);
        b[5] = self.max_compare_and_write_length;
        b[6..8].copy_from_slice(&self.optimal_transfer_length_granularity.to_be_bytes());
        b[8..12].copy_from_slice(&self.max_transfer_length.to_be_bytes());
        b[12..16].copy_from_slice(&self.optimal_transfer_length.to_be_bytes());
        b[20..24].copy_from_slice(&self.max_unmap_lba_count.to_be_bytes());
        b[24..28].copy_from_slice(&self.max_unmap_block_descriptor_count.to_be_bytes());
        b[28..32].copy_from_slice(&self.optimal_unmap_granularity.to_be_bytes());
        let uga = self
            .unmap_granularity_alignment
            .map_or(0, |a| 0x8000_0000 | (a & 0x7FFF_FFFF));
        b[32..36].copy_from_slice(&uga.to_be_bytes());
        b[36..44].copy_from_slice(&self.max_write_same_length.to_be_bytes());
        b
    }
}

/// Bytes of the Block Limits page [`BlockLimits::to_page`] builds.
pub const BLOCK_LIMITS_LEN: usize = HEADER + 0x3C;
/// Bytes of the Block Device Characteristics page
/// [`BlockDeviceCharacteristics::to_page`] builds.
pub const BLOCK_DEVICE_CHARACTERISTICS_LEN: usize = HEADER + 0x3C;
/// Bytes of the Logical Block Provisioning page [`LogicalBlockProvisioning::to_page`]
/// builds.
pub const LOGICAL_BLOCK_PROVISIONING_LEN: usize = HEADER + 4;

/// The 4-byte header of a VPD page of a direct-access block device (peripheral
/// qualifier 0, device type 0), its PAGE LENGTH from the buffer's length.
fn page_header(b: &mut [u8], code: u8) {
    b[0] = 0x00;
    b[1] = code;
    // Every page built here is shorter than 64 KiB.
    let len = (b.len() - HEADER) as u16;
    b[2..4].copy_from_slice(&len.to_be_bytes());
}

/// The Block Device Characteristics page (0xB1, SBC-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDeviceCharacteristics {
    /// MEDIUM ROTATION RATE (bytes 4..6): 0 not reported, 1 non-rotating (solid
    /// state), 0x0401..=0xFFFE the rate in rpm.
    pub medium_rotation_rate: u16,
}

impl BlockDeviceCharacteristics {
    /// Parses page 0xB1. Needs bytes 0..6.
    ///
    /// # Errors
    /// [`Error::Short`], [`Error::WrongVpdPage`].
    pub fn parse(data: &[u8]) -> Result<Self> {
        const WHAT: &str = "block device characteristics page";
        let b = body(data, page::BLOCK_DEVICE_CHARACTERISTICS, WHAT, false)?;
        need(b, 6, WHAT)?;
        Ok(Self {
            medium_rotation_rate: be16(b, 0),
        })
    }

    /// The page (SBC-4, PAGE LENGTH 3Ch): MEDIUM ROTATION RATE, the rest (product
    /// type, form factor, zoned) not reported.
    pub fn to_page(&self) -> [u8; BLOCK_DEVICE_CHARACTERISTICS_LEN] {
        let mut b = [0u8; BLOCK_DEVICE_CHARACTERISTICS_LEN];
        page_header(&mut b, page::BLOCK_DEVICE_CHARACTERISTICS);
        b[4..6].copy_from_slice(&self.medium_rotation_rate.to_be_bytes());
        b
    }

    /// Whether the medium does not rotate (MEDIUM ROTATION RATE 1).
    pub fn is_non_rotating(&self) -> bool {
        self.medium_rotation_rate == 1
    }

    /// The rotation rate in rpm, when the device reports one.
    pub fn rpm(&self) -> Option<u16> {
        (0x0401..=0xFFFE)
            .contains(&self.medium_rotation_rate)
            .then_some(self.medium_rotation_rate)
    }
}

/// PROVISIONING TYPE of the Logical Block Provisioning page (SBC-4).
pub mod provisioning_type {
    /// Fully provisioned (or not reported).
    pub const FULL: u8 = 0;
    /// Resource provisioned.
    pub const RESOURCE: u8 = 1;
    /// Thin provisioned.
    pub const THIN: u8 = 2;
}

/// The Logical Block Provisioning page (0xB2, SBC-4).
///
/// Layout: byte 4 THRESHOLD EXPONENT; byte 5 LBPU (bit 7), LBPWS (6), LBPWS10 (5),
/// LBPRZ (4..2), ANC_SUP (1), DP (0); byte 6 PROVISIONING TYPE (bits 2..0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalBlockProvisioning {
    /// THRESHOLD EXPONENT.
    pub threshold_exponent: u8,
    /// LBPU: UNMAP is supported.
    pub lbpu: bool,
    /// LBPWS: WRITE SAME(16) with UNMAP is supported.
    pub lbpws: bool,
    /// LBPWS10: WRITE SAME(10) with UNMAP is supported.
    pub lbpws10: bool,
    /// LBPRZ (3 bits): unmapped blocks read as zeros when nonzero (SBC-4 gives 0b001
    /// that meaning).
    pub lbprz: u8,
    /// ANC_SUP: ANCHOR is supported.
    pub anc_sup: bool,
    /// DP: a provisioning group descriptor is present.
    pub dp: bool,
    /// PROVISIONING TYPE (see [`provisioning_type`]).
    pub provisioning_type: u8,
}

impl LogicalBlockProvisioning {
    /// Parses page 0xB2. Needs bytes 0..8.
    ///
    /// # Errors
    /// [`Error::Short`], [`Error::WrongVpdPage`].
    pub fn parse(data: &[u8]) -> Result<Self> {
        const WHAT: &str = "logical block provisioning page";
        let b = body(data, page::LOGICAL_BLOCK_PROVISIONING, WHAT, false)?;
        need(b, 8, WHAT)?;
        Ok(Self {
            threshold_exponent: b[0],
            lbpu: b[1] & 0x80 != 0,
            lbpws: b[1] & 0x40 != 0,
            lbpws10: b[1] & 0x20 != 0,
            lbprz: (b[1] >> 2) & 0x07,
            anc_sup: b[1] & 0x02 != 0,
            dp: b[1] & 0x01 != 0,
            provisioning_type: b[2] & 0x07,
        })
    }

    /// The page (SBC-4, PAGE LENGTH 4: no provisioning group descriptor, so DP is
    /// written as given and should be false).
    pub fn to_page(&self) -> [u8; LOGICAL_BLOCK_PROVISIONING_LEN] {
        let mut b = [0u8; LOGICAL_BLOCK_PROVISIONING_LEN];
        page_header(&mut b, page::LOGICAL_BLOCK_PROVISIONING);
        b[4] = self.threshold_exponent;
        b[5] = u8::from(self.lbpu) << 7
            | u8::from(self.lbpws) << 6
            | u8::from(self.lbpws10) << 5
            | (self.lbprz & 0x07) << 2
            | u8::from(self.anc_sup) << 1
            | u8::from(self.dp);
        b[6] = self.provisioning_type & 0x07;
        b
    }
}

#[cfg(test)]
mod tests;
