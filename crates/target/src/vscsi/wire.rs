//! virtio-scsi wire layouts and values (virtio 1.2 §5.6), device side.
//!
//! The numbers come from `virtio_bindings::virtio_scsi`, narrowed to the width they
//! have on the wire.

use virtio_bindings::virtio_scsi as b;

/// Device feature bits (§5.6.3), as masks.
pub mod features {
    use super::b;
    /// Requests with both Data-Out and Data-In buffers.
    pub const INOUT: u64 = 1 << b::VIRTIO_SCSI_F_INOUT;
    /// Hot-plug and hot-unplug events on the event queue.
    pub const HOTPLUG: u64 = 1 << b::VIRTIO_SCSI_F_HOTPLUG;
    /// Parameter change events on the event queue.
    pub const CHANGE: u64 = 1 << b::VIRTIO_SCSI_F_CHANGE;
}

/// Response codes (`response` in command, TMF and AN responses, §5.6.6.1, §5.6.6.2).
pub mod response {
    use super::b;
    /// The command completed; its status is valid (also FUNCTION COMPLETE for a TMF).
    pub const OK: u8 = b::VIRTIO_SCSI_S_OK as u8;
    /// The data buffers were too short for the data to transfer.
    pub const OVERRUN: u8 = b::VIRTIO_SCSI_S_OVERRUN as u8;
    /// No such target: the request's LUN field names none.
    pub const BAD_TARGET: u8 = b::VIRTIO_SCSI_S_BAD_TARGET as u8;
    /// The request could not be carried out (malformed request).
    pub const FAILURE: u8 = b::VIRTIO_SCSI_S_FAILURE as u8;
    /// The task management function succeeded.
    pub const FUNCTION_SUCCEEDED: u8 = b::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8;
    /// The task management function is not supported.
    pub const FUNCTION_REJECTED: u8 = b::VIRTIO_SCSI_S_FUNCTION_REJECTED as u8;
    /// The task management function names a LUN that does not exist.
    pub const INCORRECT_LUN: u8 = b::VIRTIO_SCSI_S_INCORRECT_LUN as u8;
}

/// Control queue request types (§5.6.6.2).
pub mod ctrl {
    use super::b;
    /// Task management function.
    pub const TMF: u32 = b::VIRTIO_SCSI_T_TMF;
    /// Asynchronous notification query.
    pub const AN_QUERY: u32 = b::VIRTIO_SCSI_T_AN_QUERY;
    /// Asynchronous notification subscription.
    pub const AN_SUBSCRIBE: u32 = b::VIRTIO_SCSI_T_AN_SUBSCRIBE;
}

/// Task management function subtypes (§5.6.6.2.1).
pub mod tmf {
    use super::b;
    /// ABORT TASK.
    pub const ABORT_TASK: u32 = b::VIRTIO_SCSI_T_TMF_ABORT_TASK;
    /// ABORT TASK SET.
    pub const ABORT_TASK_SET: u32 = b::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET;
    /// CLEAR ACA.
    pub const CLEAR_ACA: u32 = b::VIRTIO_SCSI_T_TMF_CLEAR_ACA;
    /// CLEAR TASK SET.
    pub const CLEAR_TASK_SET: u32 = b::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET;
    /// I_T NEXUS RESET.
    pub const I_T_NEXUS_RESET: u32 = b::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET;
    /// LOGICAL UNIT RESET.
    pub const LOGICAL_UNIT_RESET: u32 = b::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET;
    /// QUERY TASK.
    pub const QUERY_TASK: u32 = b::VIRTIO_SCSI_T_TMF_QUERY_TASK;
    /// QUERY TASK SET.
    pub const QUERY_TASK_SET: u32 = b::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET;
}

/// Event types and reasons (§5.6.6.3).
pub mod event {
    use super::b;
    /// No event (sent alone to report missed events).
    pub const NO_EVENT: u32 = b::VIRTIO_SCSI_T_NO_EVENT;
    /// A LUN appeared, went or the target was reset.
    pub const TRANSPORT_RESET: u32 = b::VIRTIO_SCSI_T_TRANSPORT_RESET;
    /// A parameter (capacity, ...) changed; `reason` holds the ASC and ASCQ.
    pub const PARAM_CHANGE: u32 = b::VIRTIO_SCSI_T_PARAM_CHANGE;
    /// Set in `event` when events were dropped for lack of buffers.
    pub const EVENTS_MISSED: u32 = b::VIRTIO_SCSI_T_EVENTS_MISSED;
    /// TRANSPORT_RESET reason: a LUN was added; rescan.
    pub const RESET_RESCAN: u32 = b::VIRTIO_SCSI_EVT_RESET_RESCAN;
    /// TRANSPORT_RESET reason: a LUN was removed.
    pub const RESET_REMOVED: u32 = b::VIRTIO_SCSI_EVT_RESET_REMOVED;
}

/// Default and largest accepted `cdb_size` (§5.6.4: default 32; the field a CDB
/// lives in is at most 255 bytes here).
pub const CDB_SIZE_DEFAULT: u32 = b::VIRTIO_SCSI_CDB_DEFAULT_SIZE;
/// Largest `cdb_size` a driver may set.
pub const CDB_SIZE_MAX: u32 = 255;
/// Default `sense_size` (§5.6.4: 96).
pub const SENSE_SIZE_DEFAULT: u32 = b::VIRTIO_SCSI_SENSE_DEFAULT_SIZE;
/// Largest `sense_size` a driver may set.
pub const SENSE_SIZE_MAX: u32 = 65535;

/// `virtio_scsi_req_cmd` bytes before the CDB: `lun[8]`, id (le64), task_attr, prio, crn.
pub const CMD_HEADER_LEN: usize = 19;
/// `virtio_scsi_resp_cmd` bytes before the sense data: sense_len (le32), residual
/// (le32), status_qualifier (le16), status, response.
pub const CMD_RESP_LEN: usize = 12;
/// `virtio_scsi_ctrl_tmf` device-readable part: type, subtype (le32), `lun[8]`, id (le64).
pub const TMF_REQ_LEN: usize = 24;
/// `virtio_scsi_ctrl_tmf` device-writable part: response.
pub const TMF_RESP_LEN: usize = 1;
/// `virtio_scsi_ctrl_an` device-readable part: type (le32), `lun[8]`, event_requested (le32).
pub const AN_REQ_LEN: usize = 16;
/// `virtio_scsi_ctrl_an` device-writable part: event_actual (le32), response.
pub const AN_RESP_LEN: usize = 5;
/// `struct virtio_scsi_event`: event (le32), `lun[8]`, reason (le32).
pub const EVENT_LEN: usize = 16;

/// `struct virtio_scsi_config` (§5.6.4) field offsets and length.
pub mod config {
    /// `num_queues` (le32): request queues.
    pub const NUM_QUEUES: usize = 0;
    /// `seg_max` (le32).
    pub const SEG_MAX: usize = 4;
    /// `max_sectors` (le32).
    pub const MAX_SECTORS: usize = 8;
    /// `cmd_per_lun` (le32).
    pub const CMD_PER_LUN: usize = 12;
    /// `event_info_size` (le32).
    pub const EVENT_INFO_SIZE: usize = 16;
    /// `sense_size` (le32), driver-writable.
    pub const SENSE_SIZE: usize = 20;
    /// `cdb_size` (le32), driver-writable.
    pub const CDB_SIZE: usize = 24;
    /// `max_channel` (le16).
    pub const MAX_CHANNEL: usize = 28;
    /// `max_target` (le16).
    pub const MAX_TARGET: usize = 30;
    /// `max_lun` (le32).
    pub const MAX_LUN: usize = 32;
    /// Bytes of the configuration space.
    pub const LEN: usize = 36;
}

/// A `struct virtio_scsi_event` (§5.6.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event type, possibly with [`event::EVENTS_MISSED`].
    pub event: u32,
    /// The LUN it concerns, in the request LUN format (§5.6.6.1).
    pub lun: [u8; 8],
    /// Type-specific reason.
    pub reason: u32,
}

impl Event {
    /// The 16 wire bytes, little-endian.
    pub fn to_bytes(self) -> [u8; EVENT_LEN] {
        let mut b = [0u8; EVENT_LEN];
        b[0..4].copy_from_slice(&self.event.to_le_bytes());
        b[4..12].copy_from_slice(&self.lun);
        b[12..16].copy_from_slice(&self.reason.to_le_bytes());
        b
    }
}

/// The event LUN field for `(target, lun)`: `1, target`, then the single level LUN
/// structure REPORT LUNS uses for it (peripheral addressing below 256, flat space
/// above), so a driver finds the same LUN it scanned (§5.6.6.1, SAM-5).
pub fn event_lun(target: u8, lun: u16) -> [u8; 8] {
    let sam = crate::scsi::sam_lun(lun).unwrap_or_default();
    [1, target, sam[0], sam[1], 0, 0, 0, 0]
}
