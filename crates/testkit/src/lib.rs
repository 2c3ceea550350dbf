//! Test helpers shared by the integration tests of the workspace (a dev-dependency only,
//! never published): the third-party peers the tests run against, and test data.
//!
//! - [`qsd`]: qemu-storage-daemon as a vhost-user-blk target.
//! - [`vds`]: rust-vmm's vhost-device-scsi as a vhost-user-scsi target, with its images.
//! - [`data`]: deterministic test data, DMA buffers holding it, one request run to its
//!   end, error chains for messages.
//!
//! A test that needs a peer fails loudly (a panic naming the missing binary and how to get
//! it), never skips.

pub mod data;
pub mod qsd;
pub mod vds;
