//! virtio-blk wire formats (virtio 1.2 §5.2): feature bits, configuration layout,
//! request header, status codes and discard / write-zeroes segments.

/// virtio-blk feature bits (virtio 1.2 §5.2.3).
pub mod features {
    /// `size_max` is valid.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// `geometry` is valid.
    pub const GEOMETRY: u64 = 1 << 4;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// The FLUSH command exists.
    pub const FLUSH: u64 = 1 << 9;
    /// Topology fields are valid.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// `writeback` can be toggled.
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// More than one request queue.
    pub const MQ: u64 = 1 << 12;
    /// The DISCARD command exists.
    pub const DISCARD: u64 = 1 << 13;
    /// The WRITE_ZEROES command exists.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// A virtio-blk feature's name, or `None` for an unknown bit.
pub fn feature_name(bit: u64) -> Option<&'static str> {
    Some(match bit {
        features::SIZE_MAX => "SIZE_MAX",
        features::SEG_MAX => "SEG_MAX",
        features::GEOMETRY => "GEOMETRY",
        features::RO => "RO",
        features::BLK_SIZE => "BLK_SIZE",
        features::FLUSH => "FLUSH",
        features::TOPOLOGY => "TOPOLOGY",
        features::CONFIG_WCE => "CONFIG_WCE",
        features::MQ => "MQ",
        features::DISCARD => "DISCARD",
        features::WRITE_ZEROES => "WRITE_ZEROES",
        _ => return None,
    })
}

/// Request types (virtio 1.2 §5.2.6).
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush the write cache.
    pub const FLUSH: u32 = 4;
    /// Read the 20-byte device id (serial).
    pub const GET_ID: u32 = 8;
    /// Discard sectors.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status codes (virtio 1.2 §5.2.6).
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// virtio-blk sectors are always 512 bytes, whatever `blk_size` says (§5.2.6).
pub const SECTOR_SIZE: u64 = 512;

/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// The request header (`struct virtio_blk_req` up to `sector`), device-readable.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReqHeader {
    /// `req::*`, little-endian.
    pub type_: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Start sector (512-byte units), little-endian.
    pub sector: u64,
}
const _: () = assert!(size_of::<ReqHeader>() == 16);
const _: () = assert!(std::mem::offset_of!(ReqHeader, sector) == 8);

impl ReqHeader {
    /// The header's 16 wire bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.type_.to_le_bytes());
        b[4..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..16].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

/// One discard / write-zeroes range (`struct virtio_blk_discard_write_zeroes`, §5.2.6).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscardWriteZeroes {
    /// Start sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Bit 0: unmap (write-zeroes only).
    pub flags: u32,
}
const _: () = assert!(size_of::<DiscardWriteZeroes>() == 16);

impl DiscardWriteZeroes {
    /// Flag: the device may unmap the zeroed range.
    pub const UNMAP: u32 = 1;

    /// The segment's 16 wire bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// The virtio-blk configuration space (`struct virtio_blk_config`, §5.2.4), decoded.
/// Fields of features that were not negotiated are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment (SIZE_MAX).
    pub size_max: u32,
    /// Most data segments per request (SEG_MAX).
    pub seg_max: u32,
    /// Logical block size (BLK_SIZE).
    pub blk_size: u32,
    /// log2(physical blocks per logical block) (TOPOLOGY).
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block (TOPOLOGY).
    pub alignment_offset: u8,
    /// Suggested minimum I/O size in blocks (TOPOLOGY).
    pub min_io_size: u16,
    /// Optimal I/O size in blocks (TOPOLOGY).
    pub opt_io_size: u32,
    /// Write-back cache on (CONFIG_WCE).
    pub writeback: u8,
    /// Request queues (MQ).
    pub num_queues: u16,
    /// Most sectors per discard segment (DISCARD).
    pub max_discard_sectors: u32,
    /// Most segments per discard request (DISCARD).
    pub max_discard_seg: u32,
    /// Discard alignment in sectors (DISCARD).
    pub discard_sector_alignment: u32,
    /// Most sectors per write-zeroes segment (WRITE_ZEROES).
    pub max_write_zeroes_sectors: u32,
    /// Most segments per write-zeroes request (WRITE_ZEROES).
    pub max_write_zeroes_seg: u32,
    /// Write-zeroes may unmap (WRITE_ZEROES).
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// Bytes of config space to read for the negotiated features: the end of the last
    /// field they make valid (asking for more makes some targets fail the read).
    pub fn needed_len(features: u64) -> usize {
        use self::features as f;
        if features & (f::DISCARD | f::WRITE_ZEROES) != 0 {
            60
        } else if features & f::MQ != 0 {
            36
        } else if features & f::CONFIG_WCE != 0 {
            33
        } else if features & f::TOPOLOGY != 0 {
            32
        } else if features & f::BLK_SIZE != 0 {
            24
        } else if features & (f::SIZE_MAX | f::SEG_MAX | f::GEOMETRY) != 0 {
            20
        } else {
            8
        }
    }

    /// Decodes the little-endian config bytes, keeping only fields valid for `features`.
    /// Missing bytes read as 0.
    pub fn parse(bytes: &[u8], features: u64) -> Self {
        use self::features as f;
        let b = |off: usize, n: usize| -> u64 {
            let mut v = 0u64;
            for i in (0..n).rev() {
                v = (v << 8) | u64::from(bytes.get(off + i).copied().unwrap_or(0));
            }
            v
        };
        let has = |bit: u64| features & bit != 0;
        let mut c = Self {
            capacity: b(0, 8),
            ..Self::default()
        };
        if has(f::SIZE_MAX) {
            c.size_max = b(8, 4) as u32;
        }
        if has(f::SEG_MAX) {
            c.seg_max = b(12, 4) as u32;
        }
        if has(f::BLK_SIZE) {
            c.blk_size = b(20, 4) as u32;
        }
        if has(f::TOPOLOGY) {
            c.physical_block_exp = b(24, 1) as u8;
            c.alignment_offset = b(25, 1) as u8;
            c.min_io_size = b(26, 2) as u16;
            c.opt_io_size = b(28, 4) as u32;
        }
        if has(f::CONFIG_WCE) {
            c.writeback = b(32, 1) as u8;
        }
        if has(f::MQ) {
            c.num_queues = b(34, 2) as u16;
        }
        if has(f::DISCARD) {
            c.max_discard_sectors = b(36, 4) as u32;
            c.max_discard_seg = b(40, 4) as u32;
            c.discard_sector_alignment = b(44, 4) as u32;
        }
        if has(f::WRITE_ZEROES) {
            c.max_write_zeroes_sectors = b(48, 4) as u32;
            c.max_write_zeroes_seg = b(52, 4) as u32;
            c.write_zeroes_may_unmap = b(56, 1) as u8;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_takes_any_bytes_and_reads_only_what_features_cover(
            raw in proptest::collection::vec(any::<u8>(), 0..128),
            features: u64,
        ) {
            let c = BlkConfig::parse(&raw, features);
            // Whatever the bytes, fields of features not negotiated stay zero...
            if features & self::features::SEG_MAX == 0 {
                prop_assert_eq!(c.seg_max, 0);
            }
            if features & self::features::MQ == 0 {
                prop_assert_eq!(c.num_queues, 0);
            }
            if features & self::features::DISCARD == 0 {
                prop_assert_eq!(c.max_discard_sectors, 0);
            }
            // ...and parsing the bytes that `needed_len` asks for gives the same result
            // as parsing more.
            let n = BlkConfig::needed_len(features).min(raw.len());
            prop_assert_eq!(BlkConfig::parse(&raw[..n], features), c);
        }
    }

    #[test]
    fn config_keeps_only_negotiated_fields() {
        let mut raw = [0u8; 60];
        raw[0..8].copy_from_slice(&131072u64.to_le_bytes());
        raw[12..16].copy_from_slice(&126u32.to_le_bytes());
        raw[20..24].copy_from_slice(&4096u32.to_le_bytes());
        raw[34..36].copy_from_slice(&4u16.to_le_bytes());
        raw[36..40].copy_from_slice(&32768u32.to_le_bytes());
        let c = BlkConfig::parse(&raw, features::SEG_MAX | features::BLK_SIZE);
        assert_eq!(c.capacity, 131072);
        assert_eq!(c.seg_max, 126);
        assert_eq!(c.blk_size, 4096);
        assert_eq!(c.num_queues, 0, "MQ not negotiated");
        assert_eq!(c.max_discard_sectors, 0, "DISCARD not negotiated");
        let c = BlkConfig::parse(&raw, features::MQ | features::DISCARD);
        assert_eq!((c.num_queues, c.max_discard_sectors), (4, 32768));
    }

    #[test]
    fn short_config_reads_as_zero() {
        let c = BlkConfig::parse(&[1, 0, 0], features::SEG_MAX);
        assert_eq!(c.capacity, 1);
        assert_eq!(c.seg_max, 0);
    }

    #[test]
    fn needed_len_covers_negotiated_fields() {
        assert_eq!(BlkConfig::needed_len(0), 8);
        assert_eq!(BlkConfig::needed_len(features::BLK_SIZE), 24);
        assert_eq!(BlkConfig::needed_len(features::MQ | features::BLK_SIZE), 36);
        assert_eq!(BlkConfig::needed_len(features::WRITE_ZEROES), 60);
    }

    #[test]
    fn wire_bytes_are_little_endian() {
        let h = ReqHeader {
            type_: req::OUT,
            reserved: 0,
            sector: 0x0102,
        };
        assert_eq!(
            h.to_bytes(),
            [1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
        let d = DiscardWriteZeroes {
            sector: 8,
            num_sectors: 16,
            flags: DiscardWriteZeroes::UNMAP,
        };
        assert_eq!(&d.to_bytes()[8..], &[16, 0, 0, 0, 1, 0, 0, 0]);
    }
}
