//! Integration tests of the `vbdev` binary against qemu-storage-daemon, its own
//! `vbdev target`, and virtio PCI functions in a QEMU guest.

mod guest_kernel;
mod io_errors;
mod io_info;
mod io_rw;
mod numeric;
mod pci;
mod pci_admin;
mod perf;
mod scsi_io;
mod serve;
mod target_cli;
mod util;

use vbdev_testkit::qsd;
