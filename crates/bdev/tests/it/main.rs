//! Integration tests of vbdev-bdev against real vhost-user targets.

mod blk;
mod iostat;
mod qsd;
mod util;
mod vds;
