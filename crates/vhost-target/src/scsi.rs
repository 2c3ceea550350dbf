//! SCSI target emulation (SPC-5, SBC-4): LUNs, commands, sense data, unit attentions.
//!
//! # Overview
//! - [`ScsiTarget`]: one SCSI target: its LUNs, REPORT LUNS, and the answers for LUNs
//!   that do not exist. [`ScsiTarget::execute`] runs one command to completion.
//! - [`Lun`]: a direct access block device (peripheral device type 0) over a
//!   [`BlockIo`], with its exposed capacity, identity (vendor, product, serial), block
//!   limits ([`Limits`]) and pending unit attentions.
//! - [`CmdOutcome`]: the SCSI [`Status`], [`Sense`] data and Data-In length a command
//!   ends with; [`Sense::fixed_format`] gives the bytes a virtio-scsi response carries.
//! - [`sam_lun`] and [`parse_virtio_lun`]: LUN addressing in REPORT LUNS data and in
//!   virtio-scsi requests.
//!
//! The emulation is synchronous and owns no threads: a vhost-user-scsi device calls
//! `execute` with the CDB, the Data-Out bytes and the Data-In buffer of each request.
//!
//! # Behaviour worth knowing
//! - CHECK CONDITION sense data is in fixed format (D_SENSE = 0 in the Control mode
//!   page). REQUEST SENSE with DESC = 1 returns descriptor format.
//! - Every CDB is checked against the usage map that REPORT SUPPORTED OPERATION CODES
//!   reports for it. A set reserved bit ends the command in INVALID FIELD IN CDB, with
//!   a field pointer to the byte and bit.
//! - Unit attentions follow SAM-5 with UA_INTLCK_CTRL = 00b. INQUIRY and REPORT LUNS
//!   run and leave them pending. REQUEST SENSE returns the oldest one and clears it. Any
//!   other command ends in CHECK CONDITION with the oldest one, which is then cleared.
//! - Transfers that do not fit: a READ whose data does not fit the Data-In buffer, or a
//!   WRITE, WRITE SAME or UNMAP that needs more Data-Out bytes than were sent, moves no
//!   data and sets [`CmdOutcome::overrun`]. A virtio-scsi device answers
//!   `VIRTIO_SCSI_S_OVERRUN` for it, as QEMU does. The status is also CHECK CONDITION,
//!   ABORTED COMMAND, DATA PHASE ERROR (4Bh/00h), so an overrun can never look like
//!   success. Extra Data-Out bytes are ignored. Allocation-length data (INQUIRY, MODE
//!   SENSE, ...) is cut to the Data-In buffer, which is not an error.
//! - Backend errors from [`BlockIo`]: [`DiskError::Io`] becomes MEDIUM ERROR with
//!   UNRECOVERED READ ERROR (11h/00h) on reads and WRITE ERROR (0Ch/00h) on writes,
//!   unmaps and flushes. [`DiskError::ReadOnly`] becomes DATA PROTECT, WRITE PROTECTED.
//!   [`DiskError::OutOfRange`] (the disk shrank under the LUN) becomes LBA OUT OF RANGE.
//!   [`DiskError::Misaligned`] and [`DiskError::Unsupported`] would be bugs in the
//!   emulation and become HARDWARE ERROR, INTERNAL TARGET FAILURE (44h/00h).
//! - A disk with no blocks, a block size of 0 or a block size above 16 MiB has no
//!   medium. Medium access commands and TEST UNIT READY then end in NOT READY, MEDIUM
//!   NOT PRESENT (3Ah/00h).

mod block;
mod inquiry;
mod mode;
mod opcode;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use tracing::{debug, trace};

/// The highest LUN flat space addressing can express (14 bits).
pub const MAX_LUN: u16 = vbdev_scsi::Lun::MAX;
// LUN addressing is shared with the initiator: the request's LUN field is
// `vbdev_virtio::scsi`'s, the SAM LUN structure `vbdev_scsi::Lun`'s.
pub use vbdev_virtio::scsi::parse_lun_field as parse_virtio_lun;

/// The 8-byte single level LUN structure for `lun` (peripheral device addressing below
/// 256, flat space up to [`MAX_LUN`]); `None` above it.
pub fn sam_lun(lun: u16) -> Option<[u8; 8]> {
    vbdev_scsi::Lun::new(lun).map(vbdev_scsi::Lun::to_bytes)
}
// Sense data is the SCSI crate's, which both encodes it (here) and parses it (the
// initiator).
pub use vbdev_scsi::SenseKey;
pub use vbdev_scsi::sense::{FIXED_SENSE_LEN, FieldPointer, Sense};

use crate::disk::{BlockIo, DiskError, DiskInfo};
use opcode::Caps;
use wire::{Cdb, DataIn};

const TARGET: &str = "vbdev::scsi_target";

/// Where a READ's data goes when it bypasses the Data-In buffer
/// ([`ScsiTarget::execute_to`]): straight from the disk's memory when it has direct
/// access.
pub type ReadSink<'a> = &'a mut dyn vbdev_bdev::ReadDest;

/// A SCSI status code (SAM-5 "Status codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u8);

impl Status {
    /// The command completed.
    pub const GOOD: Self = Self(0x00);
    /// The command failed; sense data says why.
    pub const CHECK_CONDITION: Self = Self(0x02);
    /// The logical unit is busy.
    pub const BUSY: Self = Self(0x08);
    /// The command conflicts with a reservation.
    pub const RESERVATION_CONFLICT: Self = Self(0x18);
    /// The task set is full.
    pub const TASK_SET_FULL: Self = Self(0x28);
    /// The command was aborted.
    pub const TASK_ABORTED: Self = Self(0x40);
}

/// How one command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdOutcome {
    /// SCSI status.
    pub status: Status,
    /// Sense data, present with CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Bytes written at the start of the Data-In buffer.
    pub data_in_len: usize,
    /// The command needed more Data-In room or Data-Out bytes than it was given, and
    /// moved no data. A virtio-scsi device reports `VIRTIO_SCSI_S_OVERRUN`.
    pub overrun: bool,
}

impl CmdOutcome {
    /// GOOD status with `data_in_len` bytes of Data-In.
    pub const fn good(data_in_len: usize) -> Self {
        Self {
            status: Status::GOOD,
            sense: None,
            data_in_len,
            overrun: false,
        }
    }

    /// CHECK CONDITION with `sense`.
    pub const fn check_condition(sense: Sense) -> Self {
        Self {
            status: Status::CHECK_CONDITION,
            sense: Some(sense),
            data_in_len: 0,
            overrun: false,
        }
    }

    const fn overrun_failure() -> Self {
        Self {
            overrun: true,
            ..Self::check_condition(Sense::DATA_PHASE_ERROR)
        }
    }

    /// Whether the status is GOOD.
    pub fn is_good(&self) -> bool {
        self.status == Status::GOOD
    }
}

/// Why a command handler did not complete with GOOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Check(Sense),
    Overrun,
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Self {
        Self::Check(s)
    }
}

/// A handler's result: the Data-In length on success.
type CmdResult = Result<usize, Failure>;

/// Why a LUN management call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LunError {
    /// The LUN is above what flat space addressing can express.
    #[error("lun {lun} is above the highest addressable lun {MAX_LUN}")]
    OutOfRange {
        /// The LUN.
        lun: u16,
    },
    /// The LUN is already in use.
    #[error("lun {lun} already exists")]
    Exists {
        /// The LUN.
        lun: u16,
    },
    /// The LUN does not exist.
    #[error("lun {lun} does not exist")]
    NotFound {
        /// The LUN.
        lun: u16,
    },
    /// The capacity is 0 or larger than the disk.
    #[error("capacity of {num_blocks} blocks for lun {lun} is outside 1..={disk_blocks}")]
    BadCapacity {
        /// The LUN.
        lun: u16,
        /// The requested capacity.
        num_blocks: u64,
        /// The disk's size in blocks.
        disk_blocks: u64,
    },
}

/// Block limits of a LUN: what the Block Limits VPD page (B0h, SBC-4) reports and what
/// the commands enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// MAXIMUM TRANSFER LENGTH in blocks for READ and WRITE; longer transfers end in
    /// INVALID FIELD IN CDB. 0 means no limit.
    pub max_transfer_blocks: u32,
    /// MAXIMUM UNMAP LBA COUNT: blocks one UNMAP may name in total. `u32::MAX` means no
    /// limit; 0 counts as 1 (0 would mean UNMAP is not implemented).
    pub max_unmap_blocks: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT. `u32::MAX` means no limit; 0 counts as 1.
    pub max_unmap_descriptors: u32,
    /// MAXIMUM WRITE SAME LENGTH in blocks. 0 means no limit.
    pub max_write_same_blocks: u64,
}

impl Default for Limits {
    /// 65535-block transfers (what a 10-byte CDB can ask for), no limit on the blocks of
    /// an UNMAP, 4096 UNMAP descriptors (a 64 KiB parameter list), 65536-block WRITE SAME.
    fn default() -> Self {
        Self {
            max_transfer_blocks: 0xFFFF,
            max_unmap_blocks: u32::MAX,
            max_unmap_descriptors: 4096,
            max_write_same_blocks: 0x1_0000,
        }
    }
}

/// T10 VENDOR IDENTIFICATION of every LUN (standard INQUIRY data bytes 8-15).
pub const VENDOR: [u8; 8] = *b"VBDEV   ";
/// Default PRODUCT IDENTIFICATION (bytes 16-31).
pub const PRODUCT: [u8; 16] = *b"vbdev disk      ";
/// PRODUCT REVISION LEVEL (bytes 32-35).
pub const REVISION: [u8; 4] = *b"0001";
/// Longest serial number kept; longer ones are cut.
pub const MAX_SERIAL_LEN: usize = 64;

/// A logical unit: a direct access block device over a [`BlockIo`].
///
/// Invariant: `num_blocks` (the exposed capacity) is at most the disk's size when it
/// was last checked, in [`Lun::new`] or [`ScsiTarget::set_capacity`].
pub struct Lun {
    io: Box<dyn BlockIo>,
    info: DiskInfo,
    num_blocks: u64,
    serial: String,
    product: [u8; 16],
    limits: Limits,
    /// Pending unit attention conditions, oldest first, without duplicates.
    unit_attentions: VecDeque<Sense>,
}

impl fmt::Debug for Lun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lun")
            .field("info", &self.info)
            .field("num_blocks", &self.num_blocks)
            .field("serial", &self.serial)
            .field("limits", &self.limits)
            .field("unit_attentions", &self.unit_attentions)
            .finish_non_exhaustive()
    }
}

/// Printable ASCII (20h-7Eh) of `s`, other characters replaced by `_`, at most `max`
/// bytes (SPC-5, ASCII data field requirements: 20h-7Eh only).
fn printable_ascii(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '_' })
        .take(max)
        .collect()
}

impl Lun {
    /// A LUN serving all of `io`, identified by `serial` (Unit Serial Number VPD page,
    /// and the source of the device identification designators).
    ///
    /// The serial is cut to [`MAX_SERIAL_LEN`] bytes and characters outside printable
    /// ASCII become `_`. Give each LUN a distinct serial: the NAA designator is derived
    /// from it.
    pub fn new(io: Box<dyn BlockIo>, serial: &str) -> Self {
        let info = io.info();
        Self {
            io,
            info,
            num_blocks: info.num_blocks,
            serial: printable_ascii(serial, MAX_SERIAL_LEN),
            product: PRODUCT,
            limits: Limits::default(),
            unit_attentions: VecDeque::new(),
        }
    }

    /// Sets the block limits. 0 in the UNMAP fields counts as 1.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Limits {
            max_unmap_blocks: limits.max_unmap_blocks.max(1),
            max_unmap_descriptors: limits.max_unmap_descriptors.max(1),
            ..limits
        };
        self
    }

    /// Sets the PRODUCT IDENTIFICATION: printable ASCII, cut or padded with spaces to 16
    /// bytes.
    #[must_use]
    pub fn with_product(mut self, product: &str) -> Self {
        let p = printable_ascii(product, self.product.len());
        self.product = [b' '; 16];
        self.product[..p.len()].copy_from_slice(p.as_bytes());
        self
    }

    /// The exposed capacity in blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// The logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.info.block_size
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.info.read_only
    }

    /// The serial number as reported.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The block limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The unit attention the next command would report, if any.
    pub fn pending_unit_attention(&self) -> Option<Sense> {
        self.unit_attentions.front().copied()
    }

    /// Gives back the disk.
    pub fn into_io(self) -> Box<dyn BlockIo> {
        self.io
    }

    /// Queues a unit attention condition unless the same one is already pending.
    fn establish_unit_attention(&mut self, ua: Sense) {
        debug_assert!(ua.is_unit_attention());
        if !self.unit_attentions.contains(&ua) {
            self.unit_attentions.push_back(ua);
        }
    }

    fn caps(&self) -> Caps {
        Caps {
            unmap: self.info.unmap,
        }
    }

    /// Whether the LUN has a usable medium (see the module docs).
    fn has_medium(&self) -> bool {
        self.num_blocks > 0 && (1..=0x00FF_FFFF).contains(&self.info.block_size)
    }

    fn require_medium(&self) -> Result<(), Sense> {
        if self.has_medium() {
            Ok(())
        } else {
            Err(Sense::MEDIUM_NOT_PRESENT)
        }
    }

    fn execute(
        &mut self,
        cdb: Cdb<'_>,
        data_out: &[u8],
        data_in: &mut [u8],
        sink: Option<ReadSink<'_>>,
    ) -> CmdOutcome {
        let opcode = cdb.u8(0);
        // SAM-5 unit attention conditions, UA_INTLCK_CTRL = 00b: INQUIRY and REQUEST
        // SENSE run (REPORT LUNS never gets here); any other command reports the oldest
        // condition and clears it.
        if opcode != opcode::INQUIRY && opcode != opcode::REQUEST_SENSE {
            if let Some(ua) = self.unit_attentions.pop_front() {
                trace!(target: TARGET, opcode, asc = ua.asc, ascq = ua.ascq, "unit attention");
                return CmdOutcome::check_condition(ua);
            }
        }
        let caps = self.caps();
        let checked = opcode::lookup(cdb, caps).and_then(|op| {
            opcode::check_cdb(op, cdb, caps)?;
            Ok(op)
        });
        if let Err(sense) = checked {
            return CmdOutcome::check_condition(sense);
        }
        let result = match opcode {
            opcode::TEST_UNIT_READY => self.require_medium().map(|()| 0).map_err(Into::into),
            opcode::REQUEST_SENSE => Ok(self.request_sense(cdb, data_in)),
            opcode::INQUIRY => self.inquiry(cdb, data_in).map_err(Into::into),
            opcode::MODE_SENSE_6 | opcode::MODE_SENSE_10 => {
                self.mode_sense(cdb, data_in).map_err(Into::into)
            }
            opcode::START_STOP_UNIT => self.start_stop_unit(cdb),
            opcode::READ_CAPACITY_10 => self.read_capacity_10(data_in),
            opcode::SERVICE_ACTION_IN_16 => self.read_capacity_16(cdb, data_in),
            opcode::READ_6 | opcode::READ_10 | opcode::READ_12 | opcode::READ_16 => {
                self.read(cdb, data_in, sink)
            }
            opcode::WRITE_6 | opcode::WRITE_10 | opcode::WRITE_12 | opcode::WRITE_16 => {
                self.write(cdb, data_out)
            }
            opcode::SYNCHRONIZE_CACHE_10 | opcode::SYNCHRONIZE_CACHE_16 => {
                self.synchronize_cache(cdb)
            }
            opcode::WRITE_SAME_10 | opcode::WRITE_SAME_16 => self.write_same(cdb, data_out),
            opcode::UNMAP => self.unmap(cdb, data_out),
            opcode::MAINTENANCE_IN => {
                let mut out = DataIn::new(data_in, cdb.be32(6) as usize);
                opcode::report_supported_operation_codes(cdb, caps, &mut out)
                    .map(|()| out.written())
                    .map_err(Into::into)
            }
            // Every command in the table is handled above; REPORT LUNS is answered by
            // the target.
            _ => Err(Sense::INVALID_COMMAND_OPERATION_CODE.into()),
        };
        match result {
            Ok(n) => CmdOutcome::good(n),
            Err(Failure::Check(sense)) => {
                trace!(
                    target: TARGET,
                    opcode,
                    sense_key = sense.sense_key.get(),
                    asc = sense.asc,
                    ascq = sense.ascq,
                    "check condition"
                );
                CmdOutcome::check_condition(sense)
            }
            Err(Failure::Overrun) => {
                trace!(target: TARGET, opcode, "data buffer overrun");
                CmdOutcome::overrun_failure()
            }
        }
    }

    /// REQUEST SENSE (SPC-5): the oldest unit attention (cleared), else NOT READY when
    /// there is no medium, else NO SENSE. DESC = 1 gives descriptor format.
    fn request_sense(&mut self, cdb: Cdb<'_>, data_in: &mut [u8]) -> usize {
        let sense = match self.unit_attentions.pop_front() {
            Some(ua) => ua,
            None if !self.has_medium() => Sense::MEDIUM_NOT_PRESENT,
            None => Sense::NO_SENSE,
        };
        write_sense_data(&sense, cdb, data_in)
    }

    /// START STOP UNIT (SBC-4): accepted. Stopping (START = 0) flushes the cache unless
    /// NO_FLUSH is set; the LUN stays ready either way.
    fn start_stop_unit(&mut self, cdb: Cdb<'_>) -> CmdResult {
        let start = cdb.bit(4, 0x01);
        let no_flush = cdb.bit(4, 0x04);
        if !start && !no_flush {
            self.io.flush().map_err(|e| disk_error(e, Access::Write))?;
        }
        Ok(0)
    }
}

/// Writes REQUEST SENSE parameter data for `sense`, fixed or descriptor format as DESC
/// (CDB byte 1 bit 0) asks, cut at the ALLOCATION LENGTH (byte 4).
fn write_sense_data(sense: &Sense, cdb: Cdb<'_>, data_in: &mut [u8]) -> usize {
    let mut out = DataIn::new(data_in, usize::from(cdb.u8(4)));
    if cdb.bit(1, 0x01) {
        out.put(&sense.descriptor_format());
    } else {
        out.put(&sense.fixed_format());
    }
    out.written()
}

/// What a failed disk call was doing, to pick the sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Sense data for a [`BlockIo`] error (see the module docs).
fn disk_error(e: DiskError, access: Access) -> Sense {
    tracing::warn!(target: TARGET, error = %e, "disk error");
    match e {
        DiskError::Io if access == Access::Read => Sense::UNRECOVERED_READ_ERROR,
        DiskError::Io => Sense::WRITE_ERROR,
        DiskError::ReadOnly => Sense::WRITE_PROTECTED,
        DiskError::OutOfRange { .. } => Sense::LBA_OUT_OF_RANGE,
        DiskError::Misaligned { .. } | DiskError::Unsupported => Sense::INTERNAL_TARGET_FAILURE,
    }
}

/// One SCSI target: LUN id to [`Lun`].
///
/// One thread drives it through `&mut self`; a device with several request queues puts
/// it behind a lock.
#[derive(Debug)]
pub struct ScsiTarget {
    target_id: u8,
    luns: BTreeMap<u16, Lun>,
}

impl ScsiTarget {
    /// A target with no LUNs.
    pub fn new(target_id: u8) -> Self {
        Self {
            target_id,
            luns: BTreeMap::new(),
        }
    }

    /// The target id given to [`ScsiTarget::new`].
    pub fn target_id(&self) -> u8 {
        self.target_id
    }

    /// The LUN ids, ascending.
    pub fn lun_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.luns.keys().copied()
    }

    /// The LUN with id `lun`.
    pub fn lun(&self, lun: u16) -> Option<&Lun> {
        self.luns.get(&lun)
    }

    /// Adds a LUN. The other LUNs get the unit attention REPORTED LUNS DATA HAS CHANGED
    /// (SPC-5: the inventory of logical units changed).
    ///
    /// # Errors
    /// [`LunError::OutOfRange`] above [`MAX_LUN`], [`LunError::Exists`] if the id is in
    /// use; `l` is dropped then.
    pub fn add_lun(&mut self, lun: u16, l: Lun) -> Result<(), LunError> {
        if lun > MAX_LUN {
            return Err(LunError::OutOfRange { lun });
        }
        if self.luns.contains_key(&lun) {
            return Err(LunError::Exists { lun });
        }
        self.inventory_changed();
        debug!(
            target: TARGET,
            target_id = self.target_id,
            lun,
            num_blocks = l.num_blocks,
            "lun added"
        );
        self.luns.insert(lun, l);
        Ok(())
    }

    /// Removes a LUN and gives it back. The remaining LUNs get the unit attention
    /// REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_lun(&mut self, lun: u16) -> Option<Lun> {
        let l = self.luns.remove(&lun)?;
        debug!(target: TARGET, target_id = self.target_id, lun, "lun removed");
        self.inventory_changed();
        Some(l)
    }

    fn inventory_changed(&mut self) {
        for l in self.luns.values_mut() {
            l.establish_unit_attention(Sense::REPORTED_LUNS_DATA_HAS_CHANGED);
        }
    }

    /// Executes one command addressed to `lun`.
    ///
    /// `data_out` holds the Data-Out bytes the initiator sent; `data_in` is the
    /// initiator's Data-In buffer. The outcome says how many bytes were written at its
    /// start. Never panics and never allocates on the READ and WRITE paths.
    pub fn execute(
        &mut self,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        data_in: &mut [u8],
    ) -> CmdOutcome {
        self.execute_inner(lun, cdb, data_out, data_in, None)
    }

    /// As [`Self::execute`], but the data of a READ goes to `sink` straight from the
    /// disk's memory or buffer instead of into `data_in`, which then only serves as
    /// scratch (and bounds the length); the outcome's `data_in_len` is the bytes `sink`
    /// got. A `sink` that refuses a piece ends the command in OVERRUN. Other commands
    /// fill `data_in` as usual and never call `sink`.
    pub fn execute_to(
        &mut self,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        data_in: &mut [u8],
        sink: ReadSink<'_>,
    ) -> CmdOutcome {
        self.execute_inner(lun, cdb, data_out, data_in, Some(sink))
    }

    fn execute_inner(
        &mut self,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        data_in: &mut [u8],
        sink: Option<ReadSink<'_>>,
    ) -> CmdOutcome {
        let cdb = Cdb(cdb);
        if cdb.0.is_empty() {
            return CmdOutcome::check_condition(Sense::INVALID_COMMAND_OPERATION_CODE);
        }
        // SPC-5: REPORT LUNS is answered whatever LUN it is addressed to, and is not
        // stopped by unit attentions.
        if cdb.u8(0) == opcode::REPORT_LUNS {
            return match self.report_luns(lun, cdb, data_in) {
                Ok(n) => CmdOutcome::good(n),
                Err(s) => CmdOutcome::check_condition(s),
            };
        }
        match self.luns.get_mut(&lun) {
            Some(l) => l.execute(cdb, data_out, data_in, sink),
            None => missing_lun(cdb, data_in),
        }
    }

    /// REPORT LUNS (SPC-5): SELECT REPORT 00h and 02h list every LUN, 01h (well-known
    /// logical units only) lists none, as there are none. Each entry is a single level
    /// LUN structure ([`sam_lun`]). Processing it clears a pending REPORTED LUNS DATA
    /// HAS CHANGED on the addressed LUN.
    fn report_luns(&mut self, lun: u16, cdb: Cdb<'_>, data_in: &mut [u8]) -> Result<usize, Sense> {
        let caps = Caps { unmap: false };
        let op = opcode::lookup(cdb, caps)?;
        opcode::check_cdb(op, cdb, caps)?;
        let all = match cdb.u8(2) {
            0x00 | 0x02 => true,
            0x01 => false,
            _ => return Err(Sense::invalid_field_in_cdb(2, Some(7))),
        };
        if let Some(l) = self.luns.get_mut(&lun) {
            l.unit_attentions
                .retain(|ua| *ua != Sense::REPORTED_LUNS_DATA_HAS_CHANGED);
        }
        let mut out = DataIn::new(data_in, cdb.be32(6) as usize);
        let luns: Vec<vbdev_scsi::LunEntry> = if all {
            self.luns
                .keys()
                // Ids above MAX_LUN are refused by add_lun.
                .filter_map(|&id| vbdev_scsi::Lun::new(id))
                .map(vbdev_scsi::LunEntry::Lun)
                .collect()
        } else {
            Vec::new()
        };
        out.put(&vbdev_scsi::ReportLuns::encode(&luns));
        Ok(out.written())
    }

    /// LOGICAL UNIT RESET (SAM-5): establishes the unit attention BUS DEVICE RESET
    /// FUNCTION OCCURRED (29h/03h). Returns whether the LUN exists.
    pub fn lun_reset(&mut self, lun: u16) -> bool {
        match self.luns.get_mut(&lun) {
            Some(l) => {
                debug!(target: TARGET, target_id = self.target_id, lun, "logical unit reset");
                l.establish_unit_attention(Sense::BUS_DEVICE_RESET_FUNCTION);
                true
            }
            None => false,
        }
    }

    /// A target reset (a hard reset, SAM-5): every LUN gets the unit attention POWER ON,
    /// RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    pub fn target_reset(&mut self) {
        debug!(target: TARGET, target_id = self.target_id, "target reset");
        for l in self.luns.values_mut() {
            l.establish_unit_attention(Sense::POWER_ON_OR_RESET);
        }
    }

    /// Changes the capacity a LUN exposes, within the disk's current size. A change
    /// establishes the unit attention CAPACITY DATA HAS CHANGED (2Ah/09h; SBC-4 READ
    /// CAPACITY(16) parameter data).
    ///
    /// # Errors
    /// [`LunError::NotFound`]; [`LunError::BadCapacity`] for 0 or more blocks than the
    /// disk has.
    pub fn set_capacity(&mut self, lun: u16, num_blocks: u64) -> Result<(), LunError> {
        let l = self.luns.get_mut(&lun).ok_or(LunError::NotFound { lun })?;
        let disk_blocks = l.io.info().num_blocks;
        if num_blocks == 0 || num_blocks > disk_blocks {
            return Err(LunError::BadCapacity {
                lun,
                num_blocks,
                disk_blocks,
            });
        }
        if num_blocks != l.num_blocks {
            debug!(target: TARGET, target_id = self.target_id, lun, num_blocks, "capacity changed");
            l.num_blocks = num_blocks;
            l.establish_unit_attention(Sense::CAPACITY_DATA_HAS_CHANGED);
        }
        Ok(())
    }
}

/// A command to a LUN that does not exist (SPC-5, SAM-5 "incorrect logical unit
/// selection"): INQUIRY returns data with peripheral qualifier 011b and device type 1Fh,
/// REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as parameter data with GOOD, and
/// anything else ends in CHECK CONDITION, LOGICAL UNIT NOT SUPPORTED.
fn missing_lun(cdb: Cdb<'_>, data_in: &mut [u8]) -> CmdOutcome {
    let opcode = cdb.u8(0);
    if opcode != opcode::INQUIRY && opcode != opcode::REQUEST_SENSE {
        return CmdOutcome::check_condition(Sense::LOGICAL_UNIT_NOT_SUPPORTED);
    }
    let caps = Caps { unmap: false };
    let checked = opcode::lookup(cdb, caps).and_then(|op| opcode::check_cdb(op, cdb, caps));
    if let Err(s) = checked {
        return CmdOutcome::check_condition(s);
    }
    let r = if opcode == opcode::INQUIRY {
        inquiry::missing_lun(cdb, data_in)
    } else {
        Ok(write_sense_data(
            &Sense::LOGICAL_UNIT_NOT_SUPPORTED,
            cdb,
            data_in,
        ))
    };
    match r {
        Ok(n) => CmdOutcome::good(n),
        Err(s) => CmdOutcome::check_condition(s),
    }
}
