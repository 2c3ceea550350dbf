//! LUN addressing: the SAM single level LUN structure used in REPORT LUNS data, and the
//! virtio-scsi request LUN field.

/// The highest LUN that flat space addressing can express (14 bits).
pub const MAX_LUN: u16 = 0x3FFF;

/// The 8-byte single level LUN structure for `lun` (SAM-5 "Single level LUN structure
/// using peripheral device addressing method" / "... flat space addressing method"):
/// peripheral device addressing (`00h, lun`) below 256, flat space addressing
/// (`40h | lun >> 8, lun & FFh`) from 256 to [`MAX_LUN`], then six zero bytes.
///
/// Returns `None` above [`MAX_LUN`].
pub fn sam_lun(lun: u16) -> Option<[u8; 8]> {
    let [hi, lo] = lun.to_be_bytes();
    match lun {
        0..=0xFF => Some([0x00, lo, 0, 0, 0, 0, 0, 0]),
        0x100..=MAX_LUN => Some([0x40 | hi, lo, 0, 0, 0, 0, 0, 0]),
        _ => None,
    }
}

/// Decodes a virtio-scsi request's `lun` field into (target, LUN).
///
/// virtio 1.2 §5.6.6.1: byte 0 is 1, byte 1 the target, bytes 2-3 a single level LUN
/// structure, bytes 4-7 zero. Linux sends flat space addressing (`40h | lun >> 8`);
/// SPDK sends all zeros, which is peripheral device addressing of LUN 0. Both are
/// accepted. Anything else (including the REPORT LUNS well-known LUN `C1h 01h`) is
/// `None`, for which a device answers `VIRTIO_SCSI_S_BAD_TARGET`.
pub fn parse_virtio_lun(lun: &[u8; 8]) -> Option<(u8, u16)> {
    if lun[0] != 1 || lun[4..] != [0, 0, 0, 0] {
        return None;
    }
    let id = match lun[2] >> 6 {
        // Peripheral device addressing with BUS IDENTIFIER 0.
        0b00 if lun[2] == 0 => u16::from(lun[3]),
        // Flat space addressing.
        0b01 => u16::from_be_bytes([lun[2] & 0x3F, lun[3]]),
        _ => return None,
    };
    Some((lun[1], id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sam_lun_uses_peripheral_then_flat_addressing() {
        assert_eq!(sam_lun(0), Some([0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(sam_lun(255), Some([0, 0xFF, 0, 0, 0, 0, 0, 0]));
        assert_eq!(sam_lun(256), Some([0x41, 0x00, 0, 0, 0, 0, 0, 0]));
        assert_eq!(sam_lun(0x3FFF), Some([0x7F, 0xFF, 0, 0, 0, 0, 0, 0]));
        assert_eq!(sam_lun(0x4000), None);
    }

    #[test]
    fn virtio_lun_accepts_linux_and_spdk_forms() {
        // Linux: flat space addressing even for small LUNs.
        assert_eq!(
            parse_virtio_lun(&[1, 3, 0x40, 0x05, 0, 0, 0, 0]),
            Some((3, 5))
        );
        assert_eq!(
            parse_virtio_lun(&[1, 0, 0x7F, 0xFF, 0, 0, 0, 0]),
            Some((0, 0x3FFF))
        );
        // SPDK: lun[2..8] = 0.
        assert_eq!(parse_virtio_lun(&[1, 7, 0, 0, 0, 0, 0, 0]), Some((7, 0)));
        assert_eq!(parse_virtio_lun(&[0, 0, 0x40, 0, 0, 0, 0, 0]), None);
        assert_eq!(parse_virtio_lun(&[1, 0, 0xC1, 0x01, 0, 0, 0, 0]), None);
        assert_eq!(parse_virtio_lun(&[1, 0, 0x40, 0, 0, 0, 0, 1]), None);
        // Peripheral addressing with a non-zero bus identifier.
        assert_eq!(parse_virtio_lun(&[1, 0, 0x01, 0, 0, 0, 0, 0]), None);
    }
}
