//! Block commands (SBC-4): READ CAPACITY, READ, WRITE, SYNCHRONIZE CACHE, WRITE SAME
//! and UNMAP.

use super::ReadSink;
use super::Sense;
use super::opcode::{
    READ_6, READ_10, READ_12, SYNCHRONIZE_CACHE_16, WRITE_6, WRITE_10, WRITE_12, WRITE_SAME_16,
};
use super::wire::{Cdb, DataIn};
use super::{Access, CmdResult, Failure, Lun, disk_error};
use crate::disk::DiskError;

/// Bytes WRITE SAME writes per call to the disk when it has to write the block itself.
const WRITE_SAME_CHUNK: usize = 1 << 20;

/// The fields of a READ or WRITE CDB.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    lba: u64,
    blocks: u32,
    fua: bool,
    /// Byte offset of the TRANSFER LENGTH field, for field pointers.
    length_field: u16,
}

impl Transfer {
    /// Decodes READ/WRITE (6), (10), (12) and (16) (SBC-4).
    fn parse(cdb: Cdb<'_>) -> Self {
        match cdb.u8(0) {
            // 6-byte CDBs: a 21-bit LBA; TRANSFER LENGTH 0 means 256 blocks. No FUA.
            READ_6 | WRITE_6 => Self {
                lba: u64::from(u32::from_be_bytes([
                    0,
                    cdb.u8(1) & 0x1F,
                    cdb.u8(2),
                    cdb.u8(3),
                ])),
                blocks: match cdb.u8(4) {
                    0 => 256,
                    n => u32::from(n),
                },
                fua: false,
                length_field: 4,
            },
            READ_10 | WRITE_10 => Self {
                lba: u64::from(cdb.be32(2)),
                blocks: u32::from(cdb.be16(7)),
                fua: cdb.bit(1, 0x08),
                length_field: 7,
            },
            READ_12 | WRITE_12 => Self {
                lba: u64::from(cdb.be32(2)),
                blocks: cdb.be32(6),
                fua: cdb.bit(1, 0x08),
                length_field: 6,
            },
            // READ_16 | WRITE_16; the dispatcher sends nothing else here.
            _ => Self {
                lba: cdb.be64(2),
                blocks: cdb.be32(10),
                fua: cdb.bit(1, 0x08),
                length_field: 10,
            },
        }
    }
}

impl Lun {
    /// Checks that `blocks` blocks at `lba` lie within the exposed capacity.
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    /// Byte length of `blocks` blocks, or an overrun when no buffer could hold it.
    fn byte_len(&self, blocks: u64) -> Result<usize, Failure> {
        blocks
            .checked_mul(u64::from(self.info.block_size))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(Failure::Overrun)
    }

    /// The checks READ and WRITE share: medium, MAXIMUM TRANSFER LENGTH (SBC-4 Block
    /// Limits VPD page: longer ends in INVALID FIELD IN CDB), then the range (LBA OUT
    /// OF RANGE). Returns the byte length.
    fn check_transfer(&self, t: &Transfer) -> Result<usize, Failure> {
        self.require_medium()?;
        let max = self.limits.max_transfer_blocks;
        if max != 0 && t.blocks > max {
            return Err(Sense::invalid_field_in_cdb(t.length_field, Some(7)).into());
        }
        self.check_range(t.lba, u64::from(t.blocks))?;
        self.byte_len(u64::from(t.blocks))
    }

    /// READ (6), (10), (12), (16) (SBC-4), straight into the Data-In buffer. TRANSFER
    /// LENGTH 0 reads nothing and is not an error (except in READ(6), where it means
    /// 256). FUA needs no action: every read goes to the disk.
    /// With a `sink`, the data goes there straight from the disk's buffer and
    /// `data_in` is only scratch ([`ScsiTarget::execute_to`](super::ScsiTarget::execute_to)).
    pub(super) fn read(
        &mut self,
        cdb: Cdb<'_>,
        data_in: &mut [u8],
        sink: Option<ReadSink<'_>>,
    ) -> CmdResult {
        let t = Transfer::parse(cdb);
        let len = self.check_transfer(&t)?;
        if len == 0 {
            return Ok(0);
        }
        let buf = data_in.get_mut(..len).ok_or(Failure::Overrun)?;
        match sink {
            Some(sink) => match self.io.read_to(t.lba, len, buf, sink) {
                Ok(true) => Ok(len),
                Ok(false) => Err(Failure::Overrun),
                Err(e) => Err(disk_error(e, Access::Read).into()),
            },
            None => {
                self.io
                    .read(t.lba, buf)
                    .map_err(|e| disk_error(e, Access::Read))?;
                Ok(len)
            }
        }
    }

    /// WRITE (6), (10), (12), (16) (SBC-4), straight from the Data-Out bytes. FUA = 1
    /// flushes after the write, so the data is durable when GOOD is returned.
    pub(super) fn write(&mut self, cdb: Cdb<'_>, data_out: &[u8]) -> CmdResult {
        let t = Transfer::parse(cdb);
        self.require_medium()?;
        if self.info.read_only {
            return Err(Sense::WRITE_PROTECTED.into());
        }
        let len = self.check_transfer(&t)?;
        if len == 0 {
            return Ok(0);
        }
        let buf = data_out.get(..len).ok_or(Failure::Overrun)?;
        self.io
            .write(t.lba, buf)
            .map_err(|e| disk_error(e, Access::Write))?;
        if t.fua {
            self.io.flush().map_err(|e| disk_error(e, Access::Write))?;
        }
        Ok(0)
    }

    /// READ CAPACITY(10) (SBC-4): last LBA, FFFF_FFFFh when it does not fit (use READ
    /// CAPACITY(16)), and the block length. 8 bytes, cut to the Data-In buffer.
    pub(super) fn read_capacity_10(&self, data_in: &mut [u8]) -> CmdResult {
        self.require_medium()?;
        let last = self.num_blocks - 1; // has_medium: num_blocks > 0
        let mut out = DataIn::new(data_in, 8);
        let c = vbdev_scsi::ReadCapacity10 {
            last_lba: u32::try_from(last).unwrap_or(u32::MAX),
            block_length: self.info.block_size,
        };
        out.put(&c.to_bytes());
        Ok(out.written())
    }

    /// READ CAPACITY(16) (SBC-4): 32 bytes, cut at the ALLOCATION LENGTH.
    pub(super) fn read_capacity_16(&self, cdb: Cdb<'_>, data_in: &mut [u8]) -> CmdResult {
        self.require_medium()?;
        let mut out = DataIn::new(data_in, cdb.be32(10) as usize);
        let c = vbdev_scsi::ReadCapacity16 {
            last_lba: self.num_blocks - 1, // has_medium: num_blocks > 0
            block_length: self.info.block_size,
            // RC BASIS 01b: the returned LBA is the last LBA of the logical unit.
            rc_basis: 0b01,
            // No protection information.
            prot_en: false,
            p_type: 0,
            // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0: not reported.
            physical_block_exponent: 0,
            // LBPME and LBPRZ when the disk can unmap: unmapped blocks read back as
            // zeros (BlockIo::unmap).
            lbpme: self.info.unmap,
            lbprz: self.info.unmap,
            lowest_aligned_lba: 0,
        };
        out.put(&c.to_bytes());
        Ok(out.written())
    }

    /// SYNCHRONIZE CACHE (10), (16) (SBC-4): checks the range (NUMBER OF LOGICAL
    /// BLOCKS 0 means through the last LBA), then flushes the whole disk.
    pub(super) fn synchronize_cache(&mut self, cdb: Cdb<'_>) -> CmdResult {
        let (lba, blocks) = if cdb.u8(0) == SYNCHRONIZE_CACHE_16 {
            (cdb.be64(2), u64::from(cdb.be32(10)))
        } else {
            (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)))
        };
        self.require_medium()?;
        if blocks == 0 {
            if lba >= self.num_blocks {
                return Err(Sense::LBA_OUT_OF_RANGE.into());
            }
        } else {
            self.check_range(lba, blocks)?;
        }
        self.io.flush().map_err(|e| disk_error(e, Access::Write))?;
        Ok(0)
    }

    /// WRITE SAME (10), (16) (SBC-4).
    ///
    /// - NUMBER OF LOGICAL BLOCKS 0 is refused (WSNZ = 1 in the Block Limits VPD page),
    ///   as is a count above MAXIMUM WRITE SAME LENGTH: INVALID FIELD IN CDB.
    /// - NDOB = 1 (16 only): no Data-Out; the block is zeros.
    /// - UNMAP = 1 (only accepted when the disk can unmap; SBC-4 Table "ANCHOR bit, UNMAP
    ///   bit, and ANC_SUP bit relationships"): unmaps when the block is all zeros, which
    ///   is what unmapped blocks read back as (LBPRZ = 1). A non-zero block is written.
    /// - Otherwise zeros go through `write_zeroes` when the disk has it, and any other
    ///   block is written N times.
    pub(super) fn write_same(&mut self, cdb: Cdb<'_>, data_out: &[u8]) -> CmdResult {
        let sixteen = cdb.u8(0) == WRITE_SAME_16;
        let unmap = cdb.bit(1, 0x08);
        let ndob = sixteen && cdb.bit(1, 0x01);
        let (lba, blocks, count_field) = if sixteen {
            (cdb.be64(2), u64::from(cdb.be32(10)), 10)
        } else {
            (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)), 7)
        };
        self.require_medium()?;
        if self.info.read_only {
            return Err(Sense::WRITE_PROTECTED.into());
        }
        let max = self.limits.max_write_same_blocks;
        if blocks == 0 || (max != 0 && blocks > max) {
            return Err(Sense::invalid_field_in_cdb(count_field, Some(7)).into());
        }
        self.check_range(lba, blocks)?;
        let bs = self.byte_len(1)?;
        let block = if ndob {
            None
        } else {
            Some(data_out.get(..bs).ok_or(Failure::Overrun)?)
        };
        let zeros = block.is_none_or(|b| b.iter().all(|&x| x == 0));
        if unmap && zeros && self.info.unmap {
            match self.io.unmap(lba, blocks) {
                Ok(()) => return Ok(0),
                // The disk changed its mind: fall back to writing zeros.
                Err(DiskError::Unsupported) => {}
                Err(e) => return Err(disk_error(e, Access::Write).into()),
            }
        }
        if zeros && self.info.write_zeroes {
            match self.io.write_zeroes(lba, blocks) {
                Ok(()) => return Ok(0),
                Err(DiskError::Unsupported) => {}
                Err(e) => return Err(disk_error(e, Access::Write).into()),
            }
        }
        // Fill a chunk with copies of the block, then write it as often as needed.
        let chunk_blocks = ((WRITE_SAME_CHUNK / bs).max(1) as u64).min(blocks);
        let mut chunk = vec![0u8; self.byte_len(chunk_blocks)?];
        if let Some(b) = block {
            for c in chunk.chunks_exact_mut(bs) {
                c.copy_from_slice(b);
            }
        }
        let mut done = 0;
        while done < blocks {
            let n = chunk_blocks.min(blocks - done);
            let len = self.byte_len(n)?;
            // done < blocks and check_range passed, so lba + done cannot overflow.
            self.io
                .write(lba + done, &chunk[..len])
                .map_err(|e| disk_error(e, Access::Write))?;
            done += n;
        }
        Ok(0)
    }

    /// UNMAP (SBC-4). The whole parameter list is checked before anything is unmapped.
    ///
    /// - PARAMETER LIST LENGTH 0: nothing to do. 1 to 7 (shorter than the header):
    ///   PARAMETER LIST LENGTH ERROR.
    /// - UNMAP BLOCK DESCRIPTOR DATA LENGTH gives the descriptors; an incomplete last
    ///   descriptor is ignored, as SBC-4 requires. Descriptors beyond the parameter list
    ///   length, non-zero reserved bytes, more descriptors than MAXIMUM UNMAP BLOCK
    ///   DESCRIPTOR COUNT or more blocks than MAXIMUM UNMAP LBA COUNT: INVALID FIELD IN
    ///   PARAMETER LIST with a field pointer. UNMAP DATA LENGTH is not checked.
    /// - A descriptor past the capacity: LBA OUT OF RANGE. A descriptor of 0 blocks is
    ///   not an error.
    pub(super) fn unmap(&mut self, cdb: Cdb<'_>, data_out: &[u8]) -> CmdResult {
        self.require_medium()?;
        if self.info.read_only {
            return Err(Sense::WRITE_PROTECTED.into());
        }
        let param_len = usize::from(cdb.be16(7));
        if param_len == 0 {
            return Ok(0);
        }
        if param_len < 8 {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
        }
        let list = Cdb(data_out.get(..param_len).ok_or(Failure::Overrun)?);
        let count = usize::from(list.be16(2)) / 16;
        if 8 + count * 16 > param_len {
            return Err(Sense::invalid_field_in_parameter_list(2, Some(7)).into());
        }
        reserved_zero(list, 4..8)?;
        let max_desc = self.limits.max_unmap_descriptors;
        if max_desc != u32::MAX && count > max_desc as usize {
            return Err(Sense::invalid_field_in_parameter_list(2, Some(7)).into());
        }
        let max_blocks = self.limits.max_unmap_blocks;
        let mut total: u64 = 0;
        for i in 0..count {
            let off = 8 + 16 * i;
            let blocks = u64::from(list.be32(off + 8));
            reserved_zero(list, off + 12..off + 16)?;
            if blocks > 0 {
                self.check_range(list.be64(off), blocks)?;
            }
            // At most 4095 descriptors of u32 blocks each: no overflow.
            total += blocks;
            if max_blocks != u32::MAX && total > u64::from(max_blocks) {
                // off + 8 < param_len <= 65535.
                return Err(
                    Sense::invalid_field_in_parameter_list((off + 8) as u16, Some(7)).into(),
                );
            }
        }
        for i in 0..count {
            let off = 8 + 16 * i;
            let blocks = u64::from(list.be32(off + 8));
            if blocks > 0 {
                self.io
                    .unmap(list.be64(off), blocks)
                    .map_err(|e| disk_error(e, Access::Write))?;
            }
        }
        Ok(0)
    }
}

/// INVALID FIELD IN PARAMETER LIST for the first non-zero byte of a reserved range.
fn reserved_zero(list: Cdb<'_>, range: std::ops::Range<usize>) -> Result<(), Sense> {
    for i in range {
        let b = list.u8(i);
        if b != 0 {
            // i < param_len <= 65535.
            let bit = 7 - b.leading_zeros() as u8;
            return Err(Sense::invalid_field_in_parameter_list(i as u16, Some(bit)));
        }
    }
    Ok(())
}
