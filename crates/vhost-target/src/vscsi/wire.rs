//! virtio-scsi wire layouts and values (virtio 1.2 §5.6), device side: the shared
//! definitions of [`vbdev_virtio::scsi`] plus what only a device needs.

pub use vbdev_virtio::scsi::{
    AN_REQ_LEN, AN_RESP_LEN, CDB_SIZE_DEFAULT, CDB_SIZE_MAX, CMD_HEADER_LEN, CMD_RESP_LEN,
    EVENT_LEN, Event, SENSE_SIZE_DEFAULT, SENSE_SIZE_MAX, TMF_REQ_LEN, TMF_RESP_LEN, config, ctrl,
    event, features, response, tmf,
};

/// The event LUN field for `(target, lun)`: `1, target`, then the single level LUN
/// structure REPORT LUNS uses for it (peripheral addressing below 256, flat space
/// above), so a driver finds the same LUN it scanned (§5.6.6.1, SAM-5).
pub fn event_lun(target: u8, lun: u16) -> [u8; 8] {
    let sam = crate::scsi::sam_lun(lun).unwrap_or_default();
    [1, target, sam[0], sam[1], 0, 0, 0, 0]
}
