//! Random 4 KiB reads or writes at a fixed queue depth on one channel; prints IOPS.
//!
//! ```sh
//! cargo run --release -p vbdev-bdev --example randread -- SOCKET QD SECONDS [blk|scsi] [read|write] [QUEUE_SIZE]
//! ```
//!
//! With `scsi`, the first LUN of the virtio-scsi controller behind SOCKET is used. The workload
//! is `read` (or `randread`, the default) or `write` (or `randwrite`); the queue size defaults
//! to 256. Each in-flight request owns one 4 KiB `DmaBuf`, allocated (and for writes filled
//! with 0xa5) before the clock starts and handed back by its completion, so the loop does not
//! allocate. Output, one line:
//! `qd=.. ios=.. errors=.. iops=.. lat_avg_us=.. workload=.. queue_size=..`, where `lat_avg_us`
//! is `elapsed × QD / ios` (Little's law).

use std::time::{Duration, Instant};

use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_bdev::virtio_scsi;
use vbdev_bdev::{Completion, DmaBuf, Request};

const USAGE: &str =
    "usage: randread SOCKET [QD] [SECONDS] [blk|scsi] [read|write|randread|randwrite] [QUEUE_SIZE]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or(USAGE)?;
    let qd: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    let secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let scsi = match args.next().as_deref() {
        None | Some("blk") => false,
        Some("scsi") => true,
        Some(o) => return Err(format!("device type {o}: blk or scsi").into()),
    };
    let (workload, write) = match args.next().as_deref() {
        None | Some("read" | "randread") => ("randread", false),
        Some("write" | "randwrite") => ("randwrite", true),
        Some(o) => return Err(format!("workload {o}: read or write").into()),
    };
    let queue_size: u16 = args.next().map_or(Ok(256), |s| s.parse())?;
    if let Some(extra) = args.next() {
        return Err(format!("unexpected argument {extra}; {USAGE}").into());
    }
    let opts = AttachOptions {
        queue_size,
        ..AttachOptions::default()
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
    let request: fn(u64, u64, DmaBuf, u64) -> Request =
        if write { Request::write } else { Request::read };
    for i in 0..qd {
        let mut buf = DmaBuf::alloc(4096)?;
        if write {
            buf.fill(0xa5);
        }
        ch.submit(request(next(), blocks_per_io, buf, i as u64))
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
            let buf = c
                .buf
                .take()
                .expect("reads and writes give their buffer back");
            ch.submit(request(next(), blocks_per_io, buf, c.cookie))
                .map_err(|r| r.error)?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "qd={qd} ios={ios} errors={errors} iops={:.0} lat_avg_us={:.1} workload={workload} queue_size={queue_size}",
        ios as f64 / elapsed,
        elapsed * 1e6 * qd as f64 / ios.max(1) as f64
    );
    ch.drain(Duration::from_secs(10))?;
    drop(ch);
    bdev.detach();
    Ok(())
}
