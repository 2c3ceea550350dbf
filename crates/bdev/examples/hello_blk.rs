//! Attach a vhost-user-blk target, write a block, read it back.
//!
//! ```sh
//! scripts/qsd-example.sh /tmp/vbdev-disk.raw /tmp/vbdev-blk.sock
//! cargo run -p vbdev-bdev --example hello_blk -- /tmp/vbdev-blk.sock
//! ```

use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_bdev::{DmaBuf, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/vbdev-blk.sock".into());
    let bdev = virtio_blk::attach_vhost_user("VirtioBlk0", &path, &AttachOptions::default())?;
    let info = bdev.info();
    println!(
        "{}: {} blocks of {} bytes, serial {:?}",
        info.name, info.num_blocks, info.block_size, info.serial
    );

    // One channel per thread; buffers come from the DMA domain the target can see.
    let mut ch = bdev.open_channel()?;
    let bs = bdev.block_size() as usize;
    let mut buf = DmaBuf::alloc(bs)?;
    buf.fill(0x42);
    ch.submit(Request::write(1, 1, buf, 1))
        .map_err(|r| r.error)?;
    let done = ch.wait_one()?;
    assert!(done.status.is_success(), "write failed: {:?}", done.status);

    ch.submit(Request::read(1, 1, DmaBuf::alloc(bs)?, 2))
        .map_err(|r| r.error)?;
    let done = ch.wait_one()?;
    let data = done.buf.expect("reads give their buffer back");
    if data.iter().all(|&b| b == 0x42) {
        println!("block 1 written and read back");
    } else {
        println!("block 1 reads back other data (a null-co target drops writes)");
    }
    drop(ch);
    bdev.detach();
    Ok(())
}
