//! Unit tests of the virtio-scsi module.
