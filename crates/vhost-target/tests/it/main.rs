//! Integration tests of vbdev-target with real frontends: vbdev's own initiator and the
//! `blkio` crate (libblkio).

mod blk;
mod blkio;
mod faults;
mod poll;
mod ring_restart;
mod scsi;
mod scsi_init;
mod server;
mod spdk_like;
mod util;
