//! Integration tests of the `vbdev` binary against qemu-storage-daemon and its own
//! `vbdev target`.

mod io_errors;
mod io_info;
mod io_rw;
mod perf;
mod qsd;
mod scsi_io;
mod serve;
mod target_cli;
mod util;
