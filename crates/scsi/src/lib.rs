//! `vbdev-scsi`: the SCSI command set (SPC/SBC) for vbdev's virtio-scsi driver.
//!
//! Pure code without I/O: CDB builders and parsers for responses and sense data. It is
//! empty until the virtio-scsi issue fills it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
