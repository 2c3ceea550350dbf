//! virtio-scsi wire formats (virtio 1.2 §5.6): feature bits, configuration layout,
//! command, task-management and event structures, response codes.
//!
//! Shared by the initiator (`vbdev-bdev`'s `virtio_scsi` module) and the embedded
//! target (`vbdev-target`), so both sides agree on every offset.

/// Device feature bits (§5.6.3), as masks.
pub mod features {
    /// A single request can include both device-readable and device-writable data.
    pub const INOUT: u64 = 1 << 0;
    /// The host reports hot-plug and hot-unplug events on the event queue.
    pub const HOTPLUG: u64 = 1 << 1;
    /// The host reports changes to LUN parameters (PARAM_CHANGE events).
    pub const CHANGE: u64 = 1 << 2;
    /// The extended fields for T10 protection information are in the request header.
    pub const T10_PI: u64 = 1 << 3;
}

/// The name of a virtio-scsi feature bit mask, if it has one.
pub fn feature_name(bit: u64) -> Option<&'static str> {
    Some(match bit {
        features::INOUT => "INOUT",
        features::HOTPLUG => "HOTPLUG",
        features::CHANGE => "CHANGE",
        features::T10_PI => "T10_PI",
        _ => return None,
    })
}

/// Response codes (`response` in command, TMF and AN responses, §5.6.6.1, §5.6.6.2).
pub mod response {
    /// The request completed; for commands, `status` and sense are valid.
    pub const OK: u8 = 0;
    /// The data buffers were too small.
    pub const OVERRUN: u8 = 1;
    /// The request was aborted (ABORT TASK and the like).
    pub const ABORTED: u8 = 2;
    /// The target in the LUN field does not exist.
    pub const BAD_TARGET: u8 = 3;
    /// The request was reset (a LUN or target reset).
    pub const RESET: u8 = 4;
    /// The device is busy: retry later.
    pub const BUSY: u8 = 5;
    /// A transport error, possibly specific to the path: retry.
    pub const TRANSPORT_FAILURE: u8 = 6;
    /// A target failure: the request cannot succeed on any path.
    pub const TARGET_FAILURE: u8 = 7;
    /// A nexus failure.
    pub const NEXUS_FAILURE: u8 = 8;
    /// Any other failure.
    pub const FAILURE: u8 = 9;
    /// A task management function succeeded.
    pub const FUNCTION_SUCCEEDED: u8 = 10;
    /// A task management function was rejected.
    pub const FUNCTION_REJECTED: u8 = 11;
    /// The LUN in the LUN field does not exist.
    pub const INCORRECT_LUN: u8 = 12;

    /// The code's name, for messages.
    pub fn name(code: u8) -> &'static str {
        match code {
            OK => "OK",
            OVERRUN => "OVERRUN",
            ABORTED => "ABORTED",
            BAD_TARGET => "BAD_TARGET",
            RESET => "RESET",
            BUSY => "BUSY",
            TRANSPORT_FAILURE => "TRANSPORT_FAILURE",
            TARGET_FAILURE => "TARGET_FAILURE",
            NEXUS_FAILURE => "NEXUS_FAILURE",
            FAILURE => "FAILURE",
            FUNCTION_SUCCEEDED => "FUNCTION_SUCCEEDED",
            FUNCTION_REJECTED => "FUNCTION_REJECTED",
            INCORRECT_LUN => "INCORRECT_LUN",
            _ => "unknown",
        }
    }
}

/// Control queue request types (§5.6.6.2).
pub mod ctrl {
    /// Task management function.
    pub const TMF: u32 = 0;
    /// Asynchronous notification query.
    pub const AN_QUERY: u32 = 1;
    /// Asynchronous notification subscription.
    pub const AN_SUBSCRIBE: u32 = 2;
}

/// Task management function subtypes (§5.6.6.2.1).
pub mod tmf {
    /// ABORT TASK.
    pub const ABORT_TASK: u32 = 0;
    /// ABORT TASK SET.
    pub const ABORT_TASK_SET: u32 = 1;
    /// CLEAR ACA.
    pub const CLEAR_ACA: u32 = 2;
    /// CLEAR TASK SET.
    pub const CLEAR_TASK_SET: u32 = 3;
    /// I_T NEXUS RESET.
    pub const I_T_NEXUS_RESET: u32 = 4;
    /// LOGICAL UNIT RESET.
    pub const LOGICAL_UNIT_RESET: u32 = 5;
    /// QUERY TASK.
    pub const QUERY_TASK: u32 = 6;
    /// QUERY TASK SET.
    pub const QUERY_TASK_SET: u32 = 7;
}

/// Event types and reasons (§5.6.6.3).
pub mod event {
    /// No event.
    pub const NO_EVENT: u32 = 0;
    /// A transport reset (hot-plug: reason RESCAN or REMOVED).
    pub const TRANSPORT_RESET: u32 = 1;
    /// An asynchronous notification.
    pub const ASYNC_NOTIFY: u32 = 2;
    /// A LUN parameter changed; reason holds ASC (low byte) and ASCQ (next byte).
    pub const PARAM_CHANGE: u32 = 3;
    /// Flag: the device dropped events because no buffer was posted.
    pub const EVENTS_MISSED: u32 = 0x8000_0000;
    /// TRANSPORT_RESET reason: a LUN appeared (rescan it).
    pub const RESET_RESCAN: u32 = 0;
    /// TRANSPORT_RESET reason: the LUN is a hard reset.
    pub const RESET_HARD: u32 = 1;
    /// TRANSPORT_RESET reason: a LUN was removed.
    pub const RESET_REMOVED: u32 = 2;
}

/// Task attributes (`task_attr`, §5.6.6.1).
pub mod task_attr {
    /// SIMPLE.
    pub const SIMPLE: u8 = 0;
}

/// Default `cdb_size` (§5.6.4).
pub const CDB_SIZE_DEFAULT: u32 = 32;
/// Largest `cdb_size` this crate accepts (the CDB field a driver fills).
pub const CDB_SIZE_MAX: u32 = 255;
/// Default `sense_size` (§5.6.4).
pub const SENSE_SIZE_DEFAULT: u32 = 96;
/// Largest `sense_size` a driver may set.
pub const SENSE_SIZE_MAX: u32 = 65535;

/// `virtio_scsi_req_cmd` bytes before the CDB: `lun[8]`, id (le64), task_attr, prio, crn.
pub const CMD_HEADER_LEN: usize = 19;
/// `virtio_scsi_resp_cmd` bytes before the sense data: sense_len (le32), residual
/// (le32), status_qualifier (le16), status, response.
pub const CMD_RESP_LEN: usize = 12;
/// Offset of the `response` byte in `virtio_scsi_resp_cmd`.
pub const CMD_RESP_RESPONSE_OFF: usize = 11;
/// Offset of the SCSI `status` byte in `virtio_scsi_resp_cmd`.
pub const CMD_RESP_STATUS_OFF: usize = 10;
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

/// The virtio-scsi configuration space (`struct virtio_scsi_config`, §5.6.4), decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScsiConfig {
    /// Request queues (control and event queues not counted).
    pub num_queues: u32,
    /// Most data segments per command.
    pub seg_max: u32,
    /// Most 512-byte sectors per command (a hint).
    pub max_sectors: u32,
    /// Most linked commands per LUN.
    pub cmd_per_lun: u32,
    /// Bytes of the event info the device writes.
    pub event_info_size: u32,
    /// Sense bytes in a command response.
    pub sense_size: u32,
    /// CDB bytes in a command request.
    pub cdb_size: u32,
    /// Highest channel (0).
    pub max_channel: u16,
    /// Highest target id.
    pub max_target: u16,
    /// Highest LUN.
    pub max_lun: u32,
}

impl ScsiConfig {
    /// Decodes the little-endian config bytes; missing bytes read as 0.
    pub fn parse(bytes: &[u8]) -> Self {
        let le = |off: usize, n: usize| -> u32 {
            let mut v = 0u32;
            for i in (0..n).rev() {
                v = (v << 8) | u32::from(bytes.get(off + i).copied().unwrap_or(0));
            }
            v
        };
        Self {
            num_queues: le(config::NUM_QUEUES, 4),
            seg_max: le(config::SEG_MAX, 4),
            max_sectors: le(config::MAX_SECTORS, 4),
            cmd_per_lun: le(config::CMD_PER_LUN, 4),
            event_info_size: le(config::EVENT_INFO_SIZE, 4),
            sense_size: le(config::SENSE_SIZE, 4),
            cdb_size: le(config::CDB_SIZE, 4),
            max_channel: le(config::MAX_CHANNEL, 2) as u16,
            max_target: le(config::MAX_TARGET, 2) as u16,
            max_lun: le(config::MAX_LUN, 4),
        }
    }

    /// The configuration a driver assumes when the device's cannot be read (a
    /// vhost-user target without `VHOST_USER_PROTOCOL_F_CONFIG`, as SPDK's vhost-scsi):
    /// `request_queues` request queues (from the transport), the initial `sense_size`
    /// 96 and `cdb_size` 32 (virtio 1.2 §5.6.4), 16-byte events, every target id and
    /// flat-space LUN, and no transfer or segment limit of the device's own (0: the
    /// Block Limits VPD page and the ring bound transfers, as for any device).
    pub fn assumed(request_queues: u32) -> Self {
        Self {
            num_queues: request_queues,
            seg_max: 0,
            max_sectors: 0,
            cmd_per_lun: 0,
            event_info_size: EVENT_LEN as u32,
            sense_size: SENSE_SIZE_DEFAULT,
            cdb_size: CDB_SIZE_DEFAULT,
            max_channel: 0,
            max_target: 255,
            max_lun: 16383,
        }
    }

    /// Bytes of a command request header with this config's CDB size.
    pub fn cmd_req_len(&self) -> usize {
        CMD_HEADER_LEN + self.cdb_size as usize
    }

    /// Bytes of a command response with this config's sense size.
    pub fn cmd_resp_len(&self) -> usize {
        CMD_RESP_LEN + self.sense_size as usize
    }
}

/// The request LUN field for `(target, lun)` (§5.6.6.1): byte 0 is 1, byte 1 the target,
/// bytes 2..4 the LUN in flat space addressing (`0x40 | lun >> 8`, `lun & 0xff`), as
/// Linux and QEMU write it. Flat space reaches every LUN up to 16383.
pub fn lun_field(target: u8, lun: u16) -> [u8; 8] {
    let lun = lun & 0x3fff;
    [1, target, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0]
}

/// Decodes a LUN field into `(target, lun)`: what a driver sends in a request (the
/// target's side) and what a device reports in an event (§5.6.6.3). Byte 0 must be 1,
/// byte 1 is the target, bytes 2..4 a single level LUN in peripheral (`00b`, bus 0) or
/// flat space (`01b`) addressing, bytes 4..8 zero. Linux sends flat space addressing,
/// SPDK all zeros (peripheral LUN 0); both are accepted. `None` for any other layout
/// (including the REPORT LUNS well-known LUN `C1h 01h`), which a device answers with
/// `VIRTIO_SCSI_S_BAD_TARGET`.
pub fn parse_lun_field(f: &[u8; 8]) -> Option<(u8, u16)> {
    if f[0] != 1 || f[4..] != [0, 0, 0, 0] {
        return None;
    }
    let lun = match f[2] >> 6 {
        0 if f[2] == 0 => u16::from(f[3]),
        1 => (u16::from(f[2] & 0x3f) << 8) | u16::from(f[3]),
        _ => return None,
    };
    Some((f[1], lun))
}

/// The fixed part of a command response (`virtio_scsi_resp_cmd`, §5.6.6.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CmdResp {
    /// Sense bytes the device wrote.
    pub sense_len: u32,
    /// Data bytes not transferred.
    pub residual: u32,
    /// Status qualifier.
    pub status_qualifier: u16,
    /// SCSI status byte.
    pub status: u8,
    /// virtio-scsi response code ([`response`]).
    pub response: u8,
}

impl CmdResp {
    /// Decodes the first [`CMD_RESP_LEN`] bytes.
    pub fn parse(b: &[u8; CMD_RESP_LEN]) -> Self {
        Self {
            sense_len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            residual: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            status_qualifier: u16::from_le_bytes([b[8], b[9]]),
            status: b[CMD_RESP_STATUS_OFF],
            response: b[CMD_RESP_RESPONSE_OFF],
        }
    }

    /// The wire bytes.
    pub fn to_bytes(self) -> [u8; CMD_RESP_LEN] {
        let mut b = [0u8; CMD_RESP_LEN];
        b[0..4].copy_from_slice(&self.sense_len.to_le_bytes());
        b[4..8].copy_from_slice(&self.residual.to_le_bytes());
        b[8..10].copy_from_slice(&self.status_qualifier.to_le_bytes());
        b[10] = self.status;
        b[11] = self.response;
        b
    }
}

/// Writes a command request header for `lun` with tag `id` and `cdb` (zero-padded to
/// `out.len() - CMD_HEADER_LEN` bytes) into `out`. Returns `false`, writing nothing,
/// when the CDB does not fit.
pub fn write_cmd_req(out: &mut [u8], lun: [u8; 8], id: u64, cdb: &[u8]) -> bool {
    if out.len() < CMD_HEADER_LEN + cdb.len() {
        return false;
    }
    out[0..8].copy_from_slice(&lun);
    out[8..16].copy_from_slice(&id.to_le_bytes());
    out[16] = task_attr::SIMPLE;
    out[17] = 0; // prio
    out[18] = 0; // crn
    out[CMD_HEADER_LEN..CMD_HEADER_LEN + cdb.len()].copy_from_slice(cdb);
    out[CMD_HEADER_LEN + cdb.len()..].fill(0);
    true
}

/// The device-readable part of a task management request (`virtio_scsi_ctrl_tmf`).
pub fn tmf_req(subtype: u32, lun: [u8; 8], id: u64) -> [u8; TMF_REQ_LEN] {
    let mut b = [0u8; TMF_REQ_LEN];
    b[0..4].copy_from_slice(&ctrl::TMF.to_le_bytes());
    b[4..8].copy_from_slice(&subtype.to_le_bytes());
    b[8..16].copy_from_slice(&lun);
    b[16..24].copy_from_slice(&id.to_le_bytes());
    b
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

    /// Decodes the 16 wire bytes.
    pub fn parse(b: &[u8; EVENT_LEN]) -> Self {
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&b[4..12]);
        Self {
            event: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            lun,
            reason: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_short_bytes() {
        let mut b = [0u8; config::LEN];
        b[0] = 4;
        b[4] = 126;
        b[8..12].copy_from_slice(&65535u32.to_le_bytes());
        b[20] = 96;
        b[24] = 32;
        b[30] = 255;
        b[32..36].copy_from_slice(&16383u32.to_le_bytes());
        let c = ScsiConfig::parse(&b);
        assert_eq!(c.num_queues, 4);
        assert_eq!(c.seg_max, 126);
        assert_eq!(c.max_sectors, 65535);
        assert_eq!((c.sense_size, c.cdb_size), (96, 32));
        assert_eq!((c.max_target, c.max_lun), (255, 16383));
        assert_eq!((c.cmd_req_len(), c.cmd_resp_len()), (51, 108));
        assert_eq!(ScsiConfig::parse(&b[..8]).max_sectors, 0);
    }

    #[test]
    fn lun_fields_round_trip_in_flat_and_peripheral_form() {
        for (t, l) in [(0u8, 0u16), (3, 1), (255, 255), (7, 256), (1, 0x3fff)] {
            assert_eq!(parse_lun_field(&lun_field(t, l)), Some((t, l)));
        }
        assert_eq!(parse_lun_field(&[1, 2, 0, 5, 0, 0, 0, 0]), Some((2, 5)));
        assert_eq!(parse_lun_field(&[0, 2, 0, 5, 0, 0, 0, 0]), None);
        assert_eq!(parse_lun_field(&[1, 2, 0x80, 5, 0, 0, 0, 0]), None);
        assert_eq!(parse_lun_field(&[1, 2, 0x01, 5, 0, 0, 0, 0]), None);
        // Lower levels must be zero; the well-known REPORT LUNS LUN is not addressable.
        assert_eq!(parse_lun_field(&[1, 0, 0x40, 0, 0, 0, 0, 1]), None);
        assert_eq!(parse_lun_field(&[1, 0, 0xC1, 0x01, 0, 0, 0, 0]), None);
        // SPDK: bytes 2..8 zero.
        assert_eq!(parse_lun_field(&[1, 7, 0, 0, 0, 0, 0, 0]), Some((7, 0)));
        for t in [0u8, 9, 255] {
            for l in 0..=0x3fffu16 {
                assert_eq!(parse_lun_field(&lun_field(t, l)), Some((t, l)));
            }
        }
    }

    #[test]
    fn cmd_req_pads_the_cdb_and_refuses_what_does_not_fit() {
        let mut out = [0xaau8; 51];
        assert!(write_cmd_req(
            &mut out,
            lun_field(1, 2),
            7,
            &[0x28, 0, 0, 0, 0, 9]
        ));
        assert_eq!(&out[..8], &[1, 1, 0x40, 2, 0, 0, 0, 0]);
        assert_eq!(out[8], 7);
        assert_eq!(&out[19..25], &[0x28, 0, 0, 0, 0, 9]);
        assert!(out[25..].iter().all(|&b| b == 0));
        let mut small = [0u8; 20];
        assert!(!write_cmd_req(&mut small, lun_field(0, 0), 0, &[0; 6]));
    }

    #[test]
    fn resp_and_event_round_trip() {
        let r = CmdResp {
            sense_len: 18,
            residual: 512,
            status_qualifier: 1,
            status: 2,
            response: response::OK,
        };
        assert_eq!(CmdResp::parse(&r.to_bytes()), r);
        let e = Event {
            event: event::TRANSPORT_RESET | event::EVENTS_MISSED,
            lun: lun_field(3, 4),
            reason: event::RESET_REMOVED,
        };
        assert_eq!(Event::parse(&e.to_bytes()), e);
        assert_eq!(response::name(response::BAD_TARGET), "BAD_TARGET");
        assert_eq!(
            crate::DeviceType::Scsi.feature_names(features::HOTPLUG | 1 << 32),
            ["HOTPLUG", "VERSION_1"]
        );
    }
}
