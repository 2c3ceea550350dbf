//! Integration tests of vbdev-bdev against real vhost-user targets.

mod blk;
mod iostat;
mod util;

use vbdev_testkit::qsd;
mod vds;
