//! CDB builders (SPC-5, SBC-4): each function returns a [`Cdb`] laid out as the
//! command's CDB table in the standard.
//!
//! Builders do not allocate and cannot fail, except the UNMAP parameter list, whose size
//! depends on its input.

use crate::error::{Error, Result};

/// Operation codes (SPC-5 / SBC-4 command tables): those this crate builds and those
/// the target emulation serves.
pub mod opcode {
    /// REQUEST SENSE (SPC-5).
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6) (SBC-4).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6) (SBC-4).
    pub const WRITE_6: u8 = 0x0A;
    /// WRITE SAME(10) (SBC-4).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// MODE SENSE(10) (SPC-5).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// READ(12) (SBC-4).
    pub const READ_12: u8 = 0xA8;
    /// WRITE(12) (SBC-4).
    pub const WRITE_12: u8 = 0xAA;
    /// TEST UNIT READY (SPC-5).
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// INQUIRY (SPC-5).
    pub const INQUIRY: u8 = 0x12;
    /// MODE SENSE(6) (SPC-5).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT (SBC-4).
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// READ CAPACITY(10) (SBC-4).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10) (SBC-4).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10) (SBC-4).
    pub const WRITE_10: u8 = 0x2A;
    /// SYNCHRONIZE CACHE(10) (SBC-4).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// UNMAP (SBC-4).
    pub const UNMAP: u8 = 0x42;
    /// READ(16) (SBC-4).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16) (SBC-4).
    pub const WRITE_16: u8 = 0x8A;
    /// SYNCHRONIZE CACHE(16) (SBC-4).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME(16) (SBC-4).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16) (SBC-4); READ CAPACITY(16) is its service action 0x10.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS (SPC-5).
    pub const REPORT_LUNS: u8 = 0xA0;
    /// MAINTENANCE IN (SPC-5); REPORT SUPPORTED OPERATION CODES is its service action
    /// 0x0C.
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// The SERVICE ACTION IN(16) service action of READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    /// The MAINTENANCE IN service action of REPORT SUPPORTED OPERATION CODES.
    pub const SA_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0C;
}

/// The FUA bit in byte 1 of READ/WRITE(10/16).
const FUA: u8 = 1 << 3;

/// A command descriptor block of 6, 10, 12 or 16 bytes.
///
/// Invariant: `len` is 6, 10, 12 or 16 and the bytes past it are zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cdb {
    bytes: [u8; 16],
    len: u8,
}

impl Cdb {
    /// The CDB's bytes, `len()` of them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The CDB's length in bytes (6, 10, 12 or 16).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always `false`: every CDB has an operation code. Present for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The OPERATION CODE (byte 0).
    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// All sixteen bytes, zero past [`Self::len`], as two little-endian words (bytes
    /// 0..8 and 8..16): for a writer that places the CDB in a fixed-size field with
    /// word stores. READ and WRITE CDBs are built as these two words, so reading them
    /// back is forwarded from the store buffer (see [`read_10`]).
    #[inline]
    pub fn words(&self) -> (u64, u64) {
        let (lo, hi) = self.bytes.split_at(8);
        (
            u64::from_le_bytes(lo.try_into().expect("8 bytes")),
            u64::from_le_bytes(hi.try_into().expect("8 bytes")),
        )
    }

    /// A CDB of `len` bytes from its [`Self::words`].
    #[inline]
    fn from_words(lo: u64, hi: u64, len: u8) -> Self {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&lo.to_le_bytes());
        bytes[8..].copy_from_slice(&hi.to_le_bytes());
        Self { bytes, len }
    }

    #[inline]
    fn from_array<const N: usize>(a: [u8; N]) -> Self {
        debug_assert!(matches!(N, 6 | 10 | 12 | 16));
        let mut bytes = [0; 16];
        bytes[..N].copy_from_slice(&a);
        Self {
            bytes,
            // N is one of 6, 10, 12, 16.
            len: N as u8,
        }
    }
}

impl std::fmt::Debug for Cdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cdb({:02x?})", self.as_bytes())
    }
}

impl AsRef<[u8]> for Cdb {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// TEST UNIT READY (SPC-5): six zero bytes.
pub fn test_unit_ready() -> Cdb {
    Cdb::from_array([opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0])
}

/// INQUIRY for the standard INQUIRY data (EVPD = 0), with `alloc_len` bytes.
pub fn inquiry(alloc_len: u16) -> Cdb {
    let l = alloc_len.to_be_bytes();
    Cdb::from_array([opcode::INQUIRY, 0, 0, l[0], l[1], 0])
}

/// INQUIRY for VPD page `page` (EVPD = 1, SPC-5 "INQUIRY command"), with `alloc_len`
/// bytes.
pub fn inquiry_vpd(page: u8, alloc_len: u16) -> Cdb {
    let l = alloc_len.to_be_bytes();
    Cdb::from_array([opcode::INQUIRY, 0x01, page, l[0], l[1], 0])
}

/// READ CAPACITY(10) (SBC-4): the response is 8 bytes.
pub fn read_capacity_10() -> Cdb {
    Cdb::from_array([opcode::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0])
}

/// READ CAPACITY(16): SERVICE ACTION IN(16) with service action 0x10 (SBC-4); the full
/// response is 32 bytes.
pub fn read_capacity_16(alloc_len: u32) -> Cdb {
    let mut c = [0u8; 16];
    c[0] = opcode::SERVICE_ACTION_IN_16;
    c[1] = opcode::SA_READ_CAPACITY_16;
    c[10..14].copy_from_slice(&alloc_len.to_be_bytes());
    Cdb::from_array(c)
}

/// REPORT LUNS (SPC-5) with SELECT REPORT `select_report` (0x00: all logical units
/// except well-known ones) and `alloc_len` bytes (SPC-5 requires at least 16).
pub fn report_luns(select_report: u8, alloc_len: u32) -> Cdb {
    let mut c = [0u8; 12];
    c[0] = opcode::REPORT_LUNS;
    c[2] = select_report;
    c[6..10].copy_from_slice(&alloc_len.to_be_bytes());
    Cdb::from_array(c)
}

/// MODE SENSE(6) (SPC-5 "MODE SENSE(6) command"): DBD in byte 1 bit 3, PAGE CONTROL
/// in byte 2 bits 7..6 (see [`mode::page_control`]), PAGE CODE in byte 2 bits 5..0
/// (see [`mode::page`]), SUBPAGE CODE in byte 3, ALLOCATION LENGTH in byte 4.
///
/// `page_control` and `page` are cut to their field widths (2 and 6 bits). With `dbd`
/// the device returns no block descriptors. Parse the data with
/// [`ModeSense6::parse`](crate::ModeSense6::parse).
///
/// [`mode::page_control`]: crate::mode::page_control
/// [`mode::page`]: crate::mode::page
pub fn mode_sense_6(dbd: bool, page_control: u8, page: u8, subpage: u8, alloc_len: u8) -> Cdb {
    let b2 = (page_control & 0x03) << 6 | page & 0x3F;
    Cdb::from_array([
        opcode::MODE_SENSE_6,
        u8::from(dbd) << 3,
        b2,
        subpage,
        alloc_len,
        0,
    ])
}

/// REPORT SUPPORTED OPERATION CODES (SPC-5) for all commands: MAINTENANCE IN with
/// service action 0x0C in byte 1, RCTD = 0 and REPORTING OPTIONS 000b in byte 2,
/// ALLOCATION LENGTH in bytes 6..10. Parse the data with
/// [`SupportedOpcodes::parse`](crate::SupportedOpcodes::parse).
pub fn report_supported_operation_codes_all(alloc_len: u32) -> Cdb {
    let mut c = [0u8; 12];
    c[0] = opcode::MAINTENANCE_IN;
    c[1] = opcode::SA_REPORT_SUPPORTED_OPERATION_CODES;
    c[6..10].copy_from_slice(&alloc_len.to_be_bytes());
    Cdb::from_array(c)
}

/// START STOP UNIT (SBC-4): IMMED in byte 1 bit 0; LOEJ and START in byte 4 bits 1
/// and 0 (POWER CONDITION 0: START decides).
pub fn start_stop_unit(start: bool, loej: bool, immed: bool) -> Cdb {
    let b4 = u8::from(loej) << 1 | u8::from(start);
    Cdb::from_array([opcode::START_STOP_UNIT, u8::from(immed), 0, 0, b4, 0])
}

/// READ/WRITE(10): operation code, FUA in byte 1, LBA big-endian in bytes 2..6,
/// TRANSFER LENGTH big-endian in bytes 7..9. Computed as the two words of
/// [`Cdb::words`] rather than byte by byte: the I/O path reads the CDB back as words
/// moments later, and a word load across byte stores cannot be forwarded from the store
/// buffer (it waits for the buffer to drain).
#[inline]
fn rw10(op: u8, lba: u32, blocks: u16, fua: bool) -> Cdb {
    let flags = if fua { FUA } else { 0 };
    // Big-endian fields read as little-endian words: byte-swapped values.
    let (lba, blocks) = (u64::from(lba.swap_bytes()), u64::from(blocks.swap_bytes()));
    let lo = u64::from(op) | u64::from(flags) << 8 | lba << 16 | (blocks & 0xff) << 56;
    let hi = blocks >> 8;
    Cdb::from_words(lo, hi, 10)
}

/// READ/WRITE(16): operation code, FUA in byte 1, LBA big-endian in bytes 2..10,
/// TRANSFER LENGTH big-endian in bytes 10..14 (words, as [`rw10`]).
#[inline]
fn rw16(op: u8, lba: u64, blocks: u32, fua: bool) -> Cdb {
    let flags = if fua { FUA } else { 0 };
    let (lba, blocks) = (lba.swap_bytes(), u64::from(blocks.swap_bytes()));
    let lo = u64::from(op) | u64::from(flags) << 8 | lba << 16;
    let hi = lba >> 48 | blocks << 16;
    Cdb::from_words(lo, hi, 16)
}

/// READ(10) (SBC-4): LBA in bytes 2..6, TRANSFER LENGTH in bytes 7..9, FUA in byte 1.
#[inline]
pub fn read_10(lba: u32, blocks: u16, fua: bool) -> Cdb {
    rw10(opcode::READ_10, lba, blocks, fua)
}

/// WRITE(10) (SBC-4): same layout as [`read_10`].
#[inline]
pub fn write_10(lba: u32, blocks: u16, fua: bool) -> Cdb {
    rw10(opcode::WRITE_10, lba, blocks, fua)
}

/// READ(16) (SBC-4): LBA in bytes 2..10, TRANSFER LENGTH in bytes 10..14, FUA in byte 1.
#[inline]
pub fn read_16(lba: u64, blocks: u32, fua: bool) -> Cdb {
    rw16(opcode::READ_16, lba, blocks, fua)
}

/// WRITE(16) (SBC-4): same layout as [`read_16`].
#[inline]
pub fn write_16(lba: u64, blocks: u32, fua: bool) -> Cdb {
    rw16(opcode::WRITE_16, lba, blocks, fua)
}

/// Whether a transfer of `blocks` at `lba` needs the 16-byte CDB: the LBA does not fit
/// in 32 bits or the block count does not fit in 16.
pub fn needs_16(lba: u64, blocks: u32) -> bool {
    lba > u64::from(u32::MAX) || blocks > u32::from(u16::MAX)
}

/// READ(10) when it can address the transfer, READ(16) otherwise (see [`needs_16`]).
#[inline]
pub fn read(lba: u64, blocks: u32, fua: bool) -> Cdb {
    match (u32::try_from(lba), u16::try_from(blocks)) {
        (Ok(l), Ok(b)) => read_10(l, b, fua),
        _ => read_16(lba, blocks, fua),
    }
}

/// WRITE(10) when it can address the transfer, WRITE(16) otherwise (see [`needs_16`]).
#[inline]
pub fn write(lba: u64, blocks: u32, fua: bool) -> Cdb {
    match (u32::try_from(lba), u16::try_from(blocks)) {
        (Ok(l), Ok(b)) => write_10(l, b, fua),
        _ => write_16(lba, blocks, fua),
    }
}

/// SYNCHRONIZE CACHE(10) (SBC-4): IMMED in byte 1 bit 1, LBA in bytes 2..6, NUMBER OF
/// LOGICAL BLOCKS in bytes 7..9 (0: through the last LBA).
pub fn synchronize_cache_10(lba: u32, blocks: u16, immed: bool) -> Cdb {
    let mut c = [0u8; 10];
    c[0] = opcode::SYNCHRONIZE_CACHE_10;
    c[1] = u8::from(immed) << 1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    Cdb::from_array(c)
}

/// SYNCHRONIZE CACHE(16) (SBC-4): IMMED in byte 1 bit 1, LBA in bytes 2..10, NUMBER OF
/// LOGICAL BLOCKS in bytes 10..14 (0: through the last LBA).
pub fn synchronize_cache_16(lba: u64, blocks: u32, immed: bool) -> Cdb {
    let mut c = [0u8; 16];
    c[0] = opcode::SYNCHRONIZE_CACHE_16;
    c[1] = u8::from(immed) << 1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    Cdb::from_array(c)
}

/// WRITE SAME(16) (SBC-4): UNMAP in byte 1 bit 3, NDOB in byte 1 bit 0, LBA in bytes
/// 2..10, NUMBER OF LOGICAL BLOCKS in bytes 10..14.
///
/// With `ndob` the command carries no data-out buffer (the blocks read as zeros).
pub fn write_same_16(lba: u64, blocks: u32, unmap: bool, ndob: bool) -> Cdb {
    let mut c = [0u8; 16];
    c[0] = opcode::WRITE_SAME_16;
    c[1] = u8::from(unmap) << 3 | u8::from(ndob);
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    Cdb::from_array(c)
}

/// UNMAP (SBC-4) with a parameter list of `param_len` bytes (see
/// [`write_unmap_parameter_list`]); ANCHOR and GROUP NUMBER are zero.
pub fn unmap(param_len: u16) -> Cdb {
    let mut c = [0u8; 10];
    c[0] = opcode::UNMAP;
    c[7..9].copy_from_slice(&param_len.to_be_bytes());
    Cdb::from_array(c)
}

/// One UNMAP block descriptor (SBC-4 "UNMAP block descriptor"): `blocks` logical blocks
/// starting at `lba`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnmapDescriptor {
    /// UNMAP LOGICAL BLOCK ADDRESS.
    pub lba: u64,
    /// NUMBER OF LOGICAL BLOCKS.
    pub blocks: u32,
}

/// Size of the UNMAP parameter list header.
pub const UNMAP_HEADER_LEN: usize = 8;
/// Size of one UNMAP block descriptor.
pub const UNMAP_DESCRIPTOR_LEN: usize = 16;
/// The most descriptors one parameter list holds: UNMAP DATA LENGTH (the list's size
/// minus 2) must fit in 16 bits.
pub const UNMAP_MAX_DESCRIPTORS: usize =
    (u16::MAX as usize + 2 - UNMAP_HEADER_LEN) / UNMAP_DESCRIPTOR_LEN;

/// Size of an UNMAP parameter list with `count` descriptors.
pub fn unmap_parameter_list_len(count: usize) -> usize {
    // Callers bound `count` by UNMAP_MAX_DESCRIPTORS first; saturate for the others.
    count
        .saturating_mul(UNMAP_DESCRIPTOR_LEN)
        .saturating_add(UNMAP_HEADER_LEN)
}

/// Writes the UNMAP parameter list (SBC-4 "UNMAP parameter list") for `descs` into
/// `out` and returns its length, to pass to [`unmap`]. Does not allocate.
///
/// Layout: bytes 0..2 UNMAP DATA LENGTH (n - 2), bytes 2..4 UNMAP BLOCK DESCRIPTOR DATA
/// LENGTH (16 × count), bytes 4..8 reserved, then 16-byte descriptors (LBA in 0..8,
/// NUMBER OF LOGICAL BLOCKS in 8..12, 12..16 reserved).
///
/// # Errors
/// [`Error::TooManyUnmapDescriptors`] past [`UNMAP_MAX_DESCRIPTORS`];
/// [`Error::BufferTooSmall`] when `out` cannot hold the list.
pub fn write_unmap_parameter_list(descs: &[UnmapDescriptor], out: &mut [u8]) -> Result<u16> {
    if descs.len() > UNMAP_MAX_DESCRIPTORS {
        return Err(Error::TooManyUnmapDescriptors {
            count: descs.len(),
            max: UNMAP_MAX_DESCRIPTORS,
        });
    }
    let need = unmap_parameter_list_len(descs.len());
    let Some(out) = out.get_mut(..need) else {
        return Err(Error::BufferTooSmall {
            need,
            got: out.len(),
        });
    };
    // need <= 8 + 16 * 4095 = 65528, so both lengths fit in u16.
    let total = u16::try_from(need).expect("bounded by UNMAP_MAX_DESCRIPTORS");
    let data_len = total - 2;
    let desc_len = total - UNMAP_HEADER_LEN as u16;
    out[..UNMAP_HEADER_LEN].fill(0);
    out[0..2].copy_from_slice(&data_len.to_be_bytes());
    out[2..4].copy_from_slice(&desc_len.to_be_bytes());
    for (d, chunk) in descs
        .iter()
        .zip(out[UNMAP_HEADER_LEN..].chunks_exact_mut(UNMAP_DESCRIPTOR_LEN))
    {
        chunk[0..8].copy_from_slice(&d.lba.to_be_bytes());
        chunk[8..12].copy_from_slice(&d.blocks.to_be_bytes());
        chunk[12..16].fill(0);
    }
    Ok(total)
}

/// The UNMAP parameter list for `descs` in a new `Vec` (see
/// [`write_unmap_parameter_list`]).
///
/// # Errors
/// [`Error::TooManyUnmapDescriptors`] past [`UNMAP_MAX_DESCRIPTORS`].
pub fn unmap_parameter_list(descs: &[UnmapDescriptor]) -> Result<Vec<u8>> {
    if descs.len() > UNMAP_MAX_DESCRIPTORS {
        return Err(Error::TooManyUnmapDescriptors {
            count: descs.len(),
            max: UNMAP_MAX_DESCRIPTORS,
        });
    }
    let mut v = vec![0; unmap_parameter_list_len(descs.len())];
    write_unmap_parameter_list(descs, &mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests;
