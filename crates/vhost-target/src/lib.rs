//! `vbdev-target`: embedded vhost-user targets that serve any vbdev bdev.
//!
//! # Overview
//! - [`disk`]: [`BlockIo`], the synchronous block access a target's request handlers use,
//!   and [`ChannelIo`], which provides it over any [`Bdev`](vbdev_bdev::Bdev).
//! - [`fast`]: the polling request queues' fast path ([`fast::Segments`]).
//! - [`fault`]: [`Faults`], the fault-injection switchboard (off unless a test arms it).
//! - [`server`]: serving a [`Device`] on a vhost-user socket ([`serve`], [`TargetHandle`]):
//!   one frontend at a time, event-driven (a worker per queue) or polling (one poller,
//!   or a few, for all request queues).
//! - [`blk`]: the vhost-user-blk device ([`start_blk`], [`BlkTargetConfig`]).
//! - [`scsi`]: SPC-5/SBC-4 emulation ([`scsi::ScsiTarget`], [`scsi::Lun`]).
//! - [`vscsi`]: the vhost-user-scsi device over that emulation ([`start_scsi`],
//!   [`ScsiTargetConfig`], [`ScsiHandle`]).
//!
//! Targets run on rust-vmm `vhost-user-backend`, `virtio-queue` and `vm-memory`.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod blk;
pub mod disk;
pub mod fast;
pub mod fault;
pub mod scsi;
pub mod server;
pub mod socket_path;
pub mod vscsi;

pub use blk::{BlkTargetConfig, start_blk};
pub use disk::{BlockIo, ChannelIo, DiskError, DiskInfo};
pub use fault::{BadUsed, Fault, Faults};
pub use server::{Completer, Device, Error, Quirks, Result, ServeOptions, TargetHandle, serve};
pub use vscsi::{ScsiHandle, ScsiTargetConfig, start_scsi};
