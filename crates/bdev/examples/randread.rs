//! Random 4 KiB reads at a fixed queue depth on one channel; prints IOPS.
//!
//! ```sh
//! cargo run --release -p vbdev-bdev --example randread -- SOCKET QD SECONDS [blk|scsi]
//! ```
//!
//! With `scsi`, the first LUN of the virtio-scsi controller behind SOCKET is used.

use std::time::{Duration, Instant};

use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_bdev::virtio_scsi;
use vbdev_bdev::{Completion, DmaBuf, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: randread SOCKET [QD] [SECONDS]")?;
    let qd: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    let secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let opts = AttachOptions {
        queue_size: 256,
        ..AttachOptions::default()
    };
    let scsi = match args.next().as_deref() {
        None | Some("blk") => false,
        Some("scsi") => true,
        Some(o) => return Err(format!("device type {o}: blk or scsi").into()),
    };
    let (bdev, _ctrl) = if scsi {
        let sopts = virtio_scsi::AttachOptions {
            queue_size: opts.queue_size,
            ..Default::default()
        };
        let ctrl = virtio_scsi::attach_vhost_user("VirtioScsi0", &path, &sopts)?;
        let bdev = ctrl.bdevs().into_iter().next().ok_or("no LUN found")?;
        (bdev, Some(ctrl))
    } else {
        (
            virtio_blk::attach_vhost_user("VirtioBlk0", &path, &opts)?,
            None,
        )
    };
    let blocks_per_io = 4096 / u64::from(bdev.block_size());
    let span = bdev.num_blocks() / blocks_per_io;
    let mut ch = bdev.open_channel()?;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % span) * blocks_per_io
    };
    for i in 0..qd {
        ch.submit(Request::read(next(), DmaBuf::alloc(4096)?, i as u64))
            .map_err(|r| r.error)?;
    }
    let mut out: Vec<Completion> = (0..qd.max(1)).map(|_| Completion::default()).collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut ios = 0u64;
    let mut errors = 0u64;
    while Instant::now() < end {
        let n = ch.poll(&mut out);
        for c in &mut out[..n] {
            ios += 1;
            errors += u64::from(!c.status.is_success());
            let buf = c.buf.take().expect("reads give their buffer back");
            ch.submit(Request::read(next(), buf, c.cookie))
                .map_err(|r| r.error)?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "qd={qd} ios={ios} errors={errors} iops={:.0} lat_avg_us={:.1}",
        ios as f64 / elapsed,
        elapsed * 1e6 * qd as f64 / ios.max(1) as f64
    );
    ch.drain(Duration::from_secs(10))?;
    drop(ch);
    bdev.detach();
    Ok(())
}
