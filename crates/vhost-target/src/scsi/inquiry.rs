//! INQUIRY (SPC-5 §6.7): standard data and the vital product data pages.

use vbdev_scsi::vpd;

use super::Sense;
use super::wire::{Cdb, DataIn};
use super::{Lun, REVISION, VENDOR};

/// PERIPHERAL QUALIFIER 000b, PERIPHERAL DEVICE TYPE 00h: a connected direct access
/// block device.
const PERIPHERAL_DISK: u8 = 0x00;
/// PERIPHERAL QUALIFIER 011b, PERIPHERAL DEVICE TYPE 1Fh: no logical unit here.
const PERIPHERAL_NONE: u8 = 0x7F;

/// VERSION: the device claims SPC-5.
const VERSION_SPC5: u8 = 0x07;
/// Standard INQUIRY data length: through the version descriptors and the reserved bytes
/// that follow them (bytes 0-95).
const STANDARD_LEN: usize = 96;
/// Version descriptors (SPC-5, Table "Version descriptor values"): SAM-5, SPC-5 and
/// SBC-4, each "no version claimed".
const VERSION_DESCRIPTORS: [u16; 3] = [0x00A0, 0x05C0, 0x0600];

// VPD page codes: the SCSI crate's, which encodes the pages too.
use vpd::page::{
    BLOCK_DEVICE_CHARACTERISTICS as VPD_BLOCK_DEVICE_CHARACTERISTICS,
    BLOCK_LIMITS as VPD_BLOCK_LIMITS, DEVICE_IDENTIFICATION as VPD_DEVICE_IDENTIFICATION,
    LOGICAL_BLOCK_PROVISIONING as VPD_LOGICAL_BLOCK_PROVISIONING,
    SUPPORTED_PAGES as VPD_SUPPORTED_PAGES, UNIT_SERIAL_NUMBER as VPD_UNIT_SERIAL_NUMBER,
};

/// Supported VPD pages, ascending as SPC-5 requires.
const VPD_PAGES: [u8; 6] = [
    VPD_SUPPORTED_PAGES,
    VPD_UNIT_SERIAL_NUMBER,
    VPD_DEVICE_IDENTIFICATION,
    VPD_BLOCK_LIMITS,
    VPD_BLOCK_DEVICE_CHARACTERISTICS,
    VPD_LOGICAL_BLOCK_PROVISIONING,
];

/// Reads EVPD, PAGE CODE and ALLOCATION LENGTH.
///
/// # Errors
/// INVALID FIELD IN CDB when EVPD = 0 and PAGE CODE is not 0 (SPC-5 §6.7.1).
fn fields(cdb: Cdb<'_>) -> Result<(bool, u8, usize), Sense> {
    let evpd = cdb.bit(1, 0x01);
    let page = cdb.u8(2);
    if !evpd && page != 0 {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    Ok((evpd, page, usize::from(cdb.be16(3))))
}

/// Standard INQUIRY data (SPC-5 §6.7.2).
fn standard(out: &mut DataIn<'_>, peripheral: u8, product: &[u8; 16]) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches(' ').to_owned();
    let inquiry = vbdev_scsi::StandardInquiry {
        peripheral_qualifier: peripheral >> 5,
        device_type: vbdev_scsi::DeviceType::new(peripheral),
        // Not removable.
        removable: false,
        version: VERSION_SPC5,
        response_data_format: 0x02,
        // STANDARD_LEN is 96: fits a byte.
        additional_length: (STANDARD_LEN - 5) as u8,
        // The full task management model (SAM-5).
        cmdque: true,
        vendor: text(&VENDOR),
        product: text(product),
        revision: text(&REVISION),
        version_descriptors: VERSION_DESCRIPTORS.to_vec(),
    };
    out.put(&inquiry.to_bytes());
}

/// INQUIRY to a LUN that does not exist: standard data with peripheral qualifier 011b
/// and device type 1Fh (SPC-5 §6.7.2). Of the VPD pages only the Supported VPD Pages
/// page exists for it, listing itself.
pub(super) fn missing_lun(cdb: Cdb<'_>, data_in: &mut [u8]) -> Result<usize, Sense> {
    let (evpd, page, alloc) = fields(cdb)?;
    let mut out = DataIn::new(data_in, alloc);
    match (evpd, page) {
        (false, _) => standard(&mut out, PERIPHERAL_NONE, &super::PRODUCT),
        (true, VPD_SUPPORTED_PAGES) => {
            // The page lists itself; byte 0 says no LUN is there.
            let mut page = vpd::supported_pages_page(&[VPD_SUPPORTED_PAGES]);
            page[0] = PERIPHERAL_NONE;
            out.put(&page);
        }
        (true, _) => return Err(Sense::invalid_field_in_cdb(2, Some(7))),
    }
    Ok(out.written())
}

/// 64-bit FNV-1a: a stable hash for deriving designators from the serial.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// An NAA Locally Assigned designator (SPC-5 Device Identification VPD page, NAA 3h):
/// NAA in the top 4 bits, a 60-bit locally administered value below it, here the
/// serial's FNV-1a hash. Locally assigned, because vbdev has no IEEE company ID.
pub(super) fn naa_locally_assigned(serial: &str) -> [u8; 8] {
    ((fnv1a64(serial.as_bytes()) & 0x0FFF_FFFF_FFFF_FFFF) | 0x3000_0000_0000_0000).to_be_bytes()
}

impl Lun {
    /// INQUIRY (SPC-5 §6.7).
    ///
    /// # Errors
    /// INVALID FIELD IN CDB for a page code that is not supported, or a page code with
    /// EVPD = 0.
    pub(super) fn inquiry(&self, cdb: Cdb<'_>, data_in: &mut [u8]) -> Result<usize, Sense> {
        let (evpd, page, alloc) = fields(cdb)?;
        let mut out = DataIn::new(data_in, alloc);
        if !evpd {
            standard(&mut out, PERIPHERAL_DISK, &self.product);
            return Ok(out.written());
        }
        match page {
            VPD_SUPPORTED_PAGES => out.put(&vpd::supported_pages_page(&VPD_PAGES)),
            VPD_UNIT_SERIAL_NUMBER => out.put(&vpd::unit_serial_number_page(&self.serial)),
            VPD_DEVICE_IDENTIFICATION => self.device_identification(&mut out),
            VPD_BLOCK_LIMITS => self.block_limits(&mut out),
            VPD_BLOCK_DEVICE_CHARACTERISTICS => {
                // MEDIUM ROTATION RATE 1: a non-rotating medium; the rest not reported.
                let c = vpd::BlockDeviceCharacteristics {
                    medium_rotation_rate: 1,
                };
                out.put(&c.to_page());
            }
            VPD_LOGICAL_BLOCK_PROVISIONING => self.logical_block_provisioning(&mut out),
            _ => return Err(Sense::invalid_field_in_cdb(2, Some(7))),
        }
        Ok(out.written())
    }

    /// Device Identification VPD page (SPC-5): two logical unit designators.
    fn device_identification(&self, out: &mut DataIn<'_>) {
        let lu = |code_set, designator_type, identifier| vpd::Designator {
            // PROTOCOL IDENTIFIER 0; PIV 0, ASSOCIATION 00b: the logical unit.
            protocol_identifier: 0,
            code_set,
            piv: false,
            association: 0,
            designator_type,
            identifier,
        };
        // T10 vendor ID based (type 1h, ASCII): T10 VENDOR IDENTIFICATION, then the
        // vendor specific part, product identification and serial as SPC-5 suggests.
        let t10 = [&VENDOR[..], &self.product[..], self.serial.as_bytes()].concat();
        let page = vpd::DeviceIdentification {
            designators: vec![
                lu(
                    vpd::code_set::ASCII,
                    vpd::designator_type::T10_VENDOR_ID,
                    t10,
                ),
                // NAA (type 3h, binary), locally assigned from the serial.
                lu(
                    vpd::code_set::BINARY,
                    vpd::designator_type::NAA,
                    naa_locally_assigned(&self.serial).to_vec(),
                ),
            ],
        };
        out.put(&page.to_page());
    }

    /// Block Limits VPD page (SBC-4), PAGE LENGTH 3Ch.
    fn block_limits(&self, out: &mut DataIn<'_>) {
        let l = &self.limits;
        let bs = self.info.block_size;
        // Transfers of whole 4 KiB pages are best for the bdev below.
        let granularity = match bs {
            1..=4096 => (4096 / bs).max(1),
            _ => 1,
        };
        let unmap = self.info.unmap;
        let bl = vpd::BlockLimits {
            // WRITE SAME with NUMBER OF LOGICAL BLOCKS = 0 is refused.
            wsnz: true,
            // No COMPARE AND WRITE.
            max_compare_and_write_length: 0,
            // granularity <= 4096.
            optimal_transfer_length_granularity: granularity as u16,
            max_transfer_length: l.max_transfer_blocks,
            optimal_transfer_length: 0,
            // 0: UNMAP is not implemented.
            max_unmap_lba_count: if unmap { l.max_unmap_blocks } else { 0 },
            max_unmap_block_descriptor_count: if unmap { l.max_unmap_descriptors } else { 0 },
            optimal_unmap_granularity: if unmap { granularity } else { 0 },
            unmap_granularity_alignment: None,
            max_write_same_length: l.max_write_same_blocks,
        };
        out.put(&bl.to_page());
    }

    /// Logical Block Provisioning VPD page (SBC-4), PAGE LENGTH 4 (DP = 0).
    fn logical_block_provisioning(&self, out: &mut DataIn<'_>) {
        let unmap = self.info.unmap;
        let p = vpd::LogicalBlockProvisioning {
            // No thresholds.
            threshold_exponent: 0,
            // UNMAP, WRITE SAME(16) UNMAP and WRITE SAME(10) UNMAP when the disk unmaps.
            lbpu: unmap,
            lbpws: unmap,
            lbpws10: unmap,
            // 001b: unmapped blocks read back as zeros (BlockIo::unmap).
            lbprz: if unmap { 0b001 } else { 0 },
            anc_sup: false,
            dp: false,
            // 010b thin provisioned; 000b not reported (fully provisioned).
            provisioning_type: if unmap { 0b010 } else { 0 },
        };
        out.put(&p.to_page());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa_is_locally_assigned_and_stable() {
        let a = naa_locally_assigned("serial-1");
        assert_eq!(a[0] >> 4, 0x3);
        assert_eq!(a, naa_locally_assigned("serial-1"));
        assert_ne!(a, naa_locally_assigned("serial-2"));
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
