//! MODE SENSE(6) and MODE SENSE(10) (SPC-5 §6.14, §6.15): the Caching and Control mode
//! pages, read-only (MODE SELECT is not implemented, so nothing is changeable).

use vbdev_scsi::mode::page::{ALL as PAGE_ALL, CACHING as PAGE_CACHING, CONTROL as PAGE_CONTROL};

use super::Lun;
use super::Sense;
use super::opcode::MODE_SENSE_10;
use super::wire::{Cdb, DataIn};

/// SUBPAGE CODE FFh: all subpages.
const SUBPAGE_ALL: u8 = 0xFF;

/// Length of the Caching mode page (SBC-4): PAGE LENGTH 12h plus 2.
const CACHING_LEN: usize = vbdev_scsi::mode::CACHING_PAGE_LEN;
/// Length of the Control mode page (SPC-5): PAGE LENGTH 0Ah plus 2.
const CONTROL_LEN: usize = vbdev_scsi::mode::CONTROL_PAGE_LEN;

/// PAGE CONTROL (SPC-5 MODE SENSE, Table "PC field").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

/// DEVICE-SPECIFIC PARAMETER of a direct access block device (SBC-4): WP (bit 7),
/// DPOFUA (bit 4: DPO and FUA are supported).
const DPOFUA: u8 = vbdev_scsi::ModeParameterHeader6::DPOFUA;
const WP: u8 = vbdev_scsi::ModeParameterHeader6::WP;

impl Lun {
    /// MODE SENSE(6) or MODE SENSE(10).
    ///
    /// # Errors
    /// INVALID FIELD IN CDB for a page or subpage that is not supported; SAVING
    /// PARAMETERS NOT SUPPORTED for saved values (PC = 11b).
    pub(super) fn mode_sense(&self, cdb: Cdb<'_>, data_in: &mut [u8]) -> Result<usize, Sense> {
        let ten = cdb.u8(0) == MODE_SENSE_10;
        let dbd = cdb.bit(1, 0x08);
        let llbaa = ten && cdb.bit(1, 0x10);
        let pc = match cdb.u8(2) >> 6 {
            0b00 => PageControl::Current,
            0b01 => PageControl::Changeable,
            0b10 => PageControl::Default,
            _ => {
                return Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED.with_field_pointer(
                    super::FieldPointer {
                        in_cdb: true,
                        byte: 2,
                        bit: Some(7),
                    },
                ));
            }
        };
        let page = cdb.u8(2) & 0x3F;
        let subpage = cdb.u8(3);
        let (caching, control) = match page {
            PAGE_CACHING => (true, false),
            PAGE_CONTROL => (false, true),
            PAGE_ALL => (true, true),
            _ => return Err(Sense::invalid_field_in_cdb(2, Some(5))),
        };
        // No page has subpages: only subpage 0 (the page itself) and FFh (all).
        if subpage != 0 && subpage != SUBPAGE_ALL {
            return Err(Sense::invalid_field_in_cdb(3, Some(7)));
        }
        let alloc = if ten {
            usize::from(cdb.be16(7))
        } else {
            usize::from(cdb.u8(4))
        };

        let block_desc_len = match (dbd, llbaa) {
            (true, _) => 0,
            (false, false) => 8,
            (false, true) => 16,
        };
        let pages_len = usize::from(caching) * CACHING_LEN + usize::from(control) * CONTROL_LEN;
        let header_len = if ten { 8 } else { 4 };
        let total = header_len + block_desc_len + pages_len;

        let mut dsp = DPOFUA;
        if self.info.read_only {
            dsp |= WP;
        }
        let mut out = DataIn::new(data_in, alloc);
        // Mode parameter header (SPC-5 §7.5.6); MODE DATA LENGTH excludes itself.
        // total is at most 8 + 16 + 32 bytes.
        if ten {
            let header = vbdev_scsi::ModeParameterHeader10 {
                mode_data_length: (total - 2) as u16,
                medium_type: 0,
                device_specific_parameter: dsp,
                longlba: block_desc_len == 16,
                block_descriptor_length: block_desc_len as u16,
            };
            out.put(&header.to_bytes());
        } else {
            let header = vbdev_scsi::ModeParameterHeader6 {
                // MODE SENSE(6) answers at most 255 bytes of mode data: total < 64 here.
                mode_data_length: (total - 1) as u8,
                medium_type: 0,
                device_specific_parameter: dsp,
                block_descriptor_length: block_desc_len as u8,
            };
            out.put(&header.to_bytes());
        }
        let descriptor = vbdev_scsi::BlockDescriptor {
            num_blocks: self.num_blocks,
            block_length: self.info.block_size,
        };
        match block_desc_len {
            // Short LBA format: NUMBER OF LOGICAL BLOCKS FFFF_FFFFh when it does not
            // fit; a LUN's block size is far below the 16 MiB its 3 bytes hold.
            8 => out.put(&descriptor.to_short_bytes()),
            16 => out.put(&descriptor.to_long_bytes()),
            _ => {}
        }
        // Pages in ascending page code order.
        if caching {
            caching_page(&mut out, pc);
        }
        if control {
            control_page(&mut out, pc);
        }
        Ok(out.written())
    }
}

/// Caching mode page (SBC-4), PS = 0 (not savable). WCE = 1: writes may sit in a
/// volatile cache until SYNCHRONIZE CACHE or FUA; the backing bdev decides, so the
/// initiator must flush. Changeable values are all zero.
fn caching_page(out: &mut DataIn<'_>, pc: PageControl) {
    let page = vbdev_scsi::CachingPage {
        // Changeable values: none.
        wce: pc != PageControl::Changeable,
        rcd: false,
    };
    out.put(&page.to_bytes());
}

/// Control mode page (SPC-5): TST = 000b, D_SENSE = 0 (fixed format sense),
/// GLTSD = 1 (no log parameters saved), QUEUE ALGORITHM MODIFIER = 1 (unrestricted
/// reordering), QERR = 00b, UA_INTLCK_CTRL = 00b (a reported unit attention is
/// cleared), TAS = 0, BUSY TIMEOUT PERIOD 0 (undefined). Changeable values are all
/// zero.
fn control_page(out: &mut DataIn<'_>, pc: PageControl) {
    let page = if pc == PageControl::Changeable {
        vbdev_scsi::ControlPage::default()
    } else {
        vbdev_scsi::ControlPage {
            gltsd: true,
            queue_algorithm_modifier: 1,
            ..vbdev_scsi::ControlPage::default()
        }
    };
    out.put(&page.to_bytes());
}
