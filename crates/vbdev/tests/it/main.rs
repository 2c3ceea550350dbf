//! Integration tests of the `vbdev` binary against qemu-storage-daemon.

mod io_errors;
mod io_info;
mod io_rw;
mod qsd;
mod target_cli;
mod util;
