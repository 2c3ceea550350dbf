//! `vbdev-scsi`: the SCSI command set (SPC-5, SBC-4) for vbdev's virtio-scsi driver.
//!
//! Pure code without I/O: CDB builders, parsers for the responses a block initiator
//! needs, and sense data. Parsers take the bytes a device wrote and never panic: data
//! they cannot accept is an [`Error`] with the offending values.
//!
//! # Overview
//! - [`cdb`]: builders returning a [`Cdb`] (INQUIRY, READ CAPACITY(10/16), REPORT LUNS,
//!   TEST UNIT READY, START STOP UNIT, READ/WRITE(10/16) with [`cdb::read`] and
//!   [`cdb::write`] choosing the size, SYNCHRONIZE CACHE(10/16), UNMAP and its
//!   parameter list, WRITE SAME(16), MODE SENSE(6), REPORT SUPPORTED OPERATION CODES
//!   for all commands).
//! - [`inquiry`]: standard INQUIRY data, [`StandardInquiry`].
//! - [`vpd`]: VPD pages 0x00, 0x80, [`DeviceIdentification`] (0x83, with a stable
//!   [`DeviceIdentification::unique_id`]), [`BlockLimits`] (0xB0),
//!   [`BlockDeviceCharacteristics`] (0xB1), [`LogicalBlockProvisioning`] (0xB2).
//! - [`capacity`]: [`ReadCapacity10`] and [`ReadCapacity16`].
//! - [`luns`]: [`ReportLuns`], whose entries are [`LunEntry`]s holding a [`Lun`].
//! - [`mode`]: MODE SENSE(6) data, [`ModeSense6`]: the [`ModeParameterHeader6`] (WP,
//!   DPOFUA) and the [`CachingPage`] (WCE, RCD) found after the block descriptors;
//!   [`mode::find_page_6`] finds any other page. MODE SENSE(10): the
//!   [`ModeParameterHeader10`] and [`mode::find_page_10`]; [`BlockDescriptor`]s (short
//!   and long LBA) and the [`ControlPage`].
//! - [`opcodes`]: REPORT SUPPORTED OPERATION CODES data, [`SupportedOpcodes`] of
//!   [`CommandDescriptor`]s, with [`SupportedOpcodes::supports`]; [`OneCommand`] for the
//!   one_command format.
//! - [`sense`]: [`Sense`], one type for fixed and descriptor format sense data.
//! - [`status`]: [`Status`] bytes and [`SenseKey`]s with their names.
//!
//! A driver sends a CDB from [`cdb`], and on GOOD parses the data-in buffer with the
//! matching parser; on CHECK CONDITION it parses the sense buffer with
//! [`Sense::parse`] and keeps the result as data, not as an [`Error`].
//!
//! # Example
//! ```
//! use vbdev_scsi::{cdb, ReadCapacity10, Sense, Status};
//!
//! let c = cdb::read(0x1_0000_0000, 8, false); // LBA past 32 bits: READ(16)
//! assert_eq!(c.as_bytes()[0], cdb::opcode::READ_16);
//!
//! let cap = ReadCapacity10::parse(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0])?;
//! assert!(cap.needs_16());
//!
//! let status = Status::CHECK_CONDITION;
//! let sense = Sense::parse(&[0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0])?;
//! assert!(status.is_check_condition() && sense.is_unit_attention());
//! # Ok::<(), vbdev_scsi::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod capacity;
pub mod cdb;
pub mod error;
pub mod inquiry;
pub mod luns;
pub mod mode;
pub mod opcodes;
pub mod sense;
pub mod status;
pub mod vpd;

pub use capacity::{ReadCapacity10, ReadCapacity16};
pub use cdb::{Cdb, UnmapDescriptor};
pub use error::{Error, Result};
pub use inquiry::{DeviceType, StandardInquiry};
pub use luns::{Lun, LunEntry, ReportLuns};
pub use mode::{
    BlockDescriptor, CachingPage, ControlPage, ModeParameterHeader6, ModeParameterHeader10,
    ModeSense6,
};
pub use opcodes::{CommandDescriptor, CommandTimeouts, OneCommand, SupportedOpcodes};
pub use sense::Sense;
pub use status::{SenseKey, Status};
pub use vpd::{
    BlockDeviceCharacteristics, BlockLimits, Designator, DeviceIdentification,
    LogicalBlockProvisioning,
};
