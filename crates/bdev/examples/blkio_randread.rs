//! The `randread` workload driven through the `blkio` crate (pure-Rust libblkio), as a peer to
//! compare against: random 4 KiB reads or writes at a fixed queue depth on one queue; prints IOPS.
//!
//! Same CLI, LBA sequence and output line as `randread` (virtio-blk only: the device type
//! argument may only be `blk`). One queue (of size 256 unless QUEUE_SIZE says otherwise),
//! buffers in one memory region from `alloc_mem_region`/`map_mem_region` (one 4 KiB slot per
//! in-flight request, allocated and for writes filled with 0xa5 before the clock starts),
//! completions busy-polled with `do_io(min_completions = 0)` so the queue never sleeps on its
//! completion eventfd.
//!
//! ```sh
//! cargo run --release -p vbdev-bdev --example blkio_randread -- SOCKET QD SECONDS [blk] [read|write] [QUEUE_SIZE]
//! ```

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};

const IO_SIZE: usize = 4096;
const USAGE: &str = "usage: blkio_randread SOCKET [QD] [SECONDS] [blk] [read|write|randread|randwrite] [QUEUE_SIZE]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or(USAGE)?;
    let qd: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    let secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    match args.next().as_deref() {
        None | Some("blk") => {}
        Some(o) => return Err(format!("device type {o}: the blkio crate drives blk only").into()),
    }
    let (workload, write) = match args.next().as_deref() {
        None | Some("read" | "randread") => ("randread", false),
        Some("write" | "randwrite") => ("randwrite", true),
        Some(o) => return Err(format!("workload {o}: read or write").into()),
    };
    let queue_size: i32 = args.next().map_or(Ok(256), |s| s.parse())?;
    if let Some(extra) = args.next() {
        return Err(format!("unexpected argument {extra}; {USAGE}").into());
    }

    let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
    blkio.set_str("path", &path)?;
    blkio.connect()?;
    blkio.set_i32("num-queues", 1)?;
    blkio.set_i32("num-poll-queues", 0)?;
    blkio.set_i32("queue-size", queue_size)?;
    let mut q = blkio
        .start()?
        .queues
        .pop()
        .ok_or("blkio started no queue")?;

    let align = usize::try_from(blkio.get_u64("mem-region-alignment")?)?.max(1);
    let region_len = (qd.max(1) * IO_SIZE).next_multiple_of(align);
    let region = blkio.alloc_mem_region(region_len)?;
    blkio.map_mem_region(&region)?;
    let buf = |slot: usize| (region.addr + slot * IO_SIZE) as *mut u8;
    if write {
        // SAFETY: the region is `region_len` bytes of mapped memory that this process owns and
        // no request uses yet.
        unsafe { std::ptr::write_bytes(region.addr as *mut u8, 0xa5, region_len) };
    }
    let submit = |q: &mut blkio::Blkioq, start: u64, slot: usize| {
        if write {
            q.write(start, buf(slot), IO_SIZE, slot, ReqFlags::empty());
        } else {
            q.read(start, buf(slot), IO_SIZE, slot, ReqFlags::empty());
        }
    };

    // Offsets in bytes; the same sequence as randread's LBAs (4 KiB units).
    let span = blkio.get_u64("capacity")? / IO_SIZE as u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % span) * IO_SIZE as u64
    };

    for slot in 0..qd {
        submit(&mut q, next(), slot);
    }
    let mut out: Vec<MaybeUninit<Completion>> =
        (0..qd.max(1)).map(|_| MaybeUninit::uninit()).collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut ios = 0u64;
    let mut errors = 0u64;
    while Instant::now() < end {
        let n = q.do_io(&mut out, 0, None, None)?;
        for c in &out[..n] {
            // SAFETY: `do_io` initialised the first `n` entries of `out`.
            let (slot, ret) = unsafe { (c.assume_init_ref().user_data, c.assume_init_ref().ret) };
            ios += 1;
            errors += u64::from(ret != 0);
            submit(&mut q, next(), slot);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "qd={qd} ios={ios} errors={errors} iops={:.0} lat_avg_us={:.1} workload={workload} queue_size={queue_size}",
        ios as f64 / elapsed,
        elapsed * 1e6 * qd as f64 / ios.max(1) as f64
    );

    // Drain: every slot still has one request in flight.
    let mut in_flight = qd;
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight > 0 {
        if Instant::now() >= deadline {
            return Err(format!("{in_flight} requests still in flight after 10 s").into());
        }
        in_flight -= q.do_io(&mut out, 0, None, None)?;
    }
    drop(q);
    blkio.unmap_mem_region(&region);
    blkio.free_mem_region(&region);
    Ok(())
}
