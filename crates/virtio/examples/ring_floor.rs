//! The floor of an initiator on vbdev's split ring: random 4 KiB reads at a fixed queue
//! depth with the least work a virtio-blk or virtio-scsi driver can do per request, and
//! none of the bdev layer (no channel, no engine, no request splitting, no checks beyond
//! the status byte). Prints IOPS.
//!
//! ```sh
//! cargo run --release -p vbdev-virtio --example ring_floor -- SOCKET blk|scsi QD SECONDS [BLOCK_SIZE] [--hugetlb]
//! ```
//!
//! `--hugetlb` puts the DMA memory in 2 MiB huge pages, as SPDK's targets need (as
//! `vbdev --hugetlb`).
//!
//! What `vbdev perf` reaches on the same target, divided by this, is what the bdev layer
//! costs; what SPDK's bdevperf reaches, divided by this, says how far any initiator on
//! this ring layout could go past it. Per request it does what a driver must: write the
//! request header (blk: type and sector; scsi: LUN, tag and a READ(10) CDB), add the
//! chain header + response + data (three direct descriptors and the avail entry),
//! publish every 8 (the engine's batch) or when it runs out of completions, and read the
//! status of each completion. Each context keeps its header, response and 4 KiB buffer;
//! notifications are suppressed (the target is expected to poll). scsi addresses target
//! 0 LUN 0; BLOCK_SIZE (default 512) is the LUN's, for the LBAs; reads stay in the first
//! GiB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vbdev_virtio::device::DeviceType;
use vbdev_virtio::transport::vhost_user::{VhostUser, VhostUserOptions};
use vbdev_virtio::{
    DmaBuf, DmaConfig, DmaDomain, Iova, QueueConfig, Segment, SharedMem, SplitQueue, VirtioDevice,
    features,
};
use vbdev_virtio::{blk, scsi};

const USAGE: &str = "usage: ring_floor SOCKET blk|scsi QD SECONDS [BLOCK_SIZE] [--hugetlb]";
/// Chains added before they are published (the engine's `PUBLISH_BATCH`).
const PUBLISH_BATCH: u16 = 8;
const IO_BYTES: u64 = 4096;
const SPAN_BYTES: u64 = 1 << 30;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let hugetlb = all.iter().any(|a| a == "--hugetlb");
    let mut args = all.into_iter().filter(|a| a != "--hugetlb");
    let path = args.next().ok_or(USAGE)?;
    let is_scsi = match args.next().as_deref() {
        Some("blk") => false,
        Some("scsi") => true,
        _ => return Err(USAGE.into()),
    };
    let qd: u16 = args.next().ok_or(USAGE)?.parse()?;
    let secs: u64 = args.next().ok_or(USAGE)?.parse()?;
    let block: u64 = args.next().map_or(Ok(512), |s| s.parse())?;
    if qd == 0 || qd > 128 || !block.is_power_of_two() || !(512..=IO_BYTES).contains(&block) {
        return Err(format!("QD 1..=128 and a block size of 512..=4096: {USAGE}").into());
    }
    let domain = if hugetlb {
        DmaDomain::configure(DmaConfig {
            hugetlb: true,
            ..DmaConfig::default()
        })?
    } else {
        DmaDomain::global()
    };
    let t = Arc::new(VhostUser::connect(
        &path,
        domain,
        VhostUserOptions::default(),
    )?);
    let wanted = features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC;
    let dev = VirtioDevice::init(
        t,
        if is_scsi {
            DeviceType::Scsi
        } else {
            DeviceType::Blk
        },
        wanted,
        features::VERSION_1,
    )?;
    let t = Arc::clone(dev.transport());
    let f = dev.features();
    let queue_size = 512u16;
    let cfg = QueueConfig {
        size: queue_size,
        event_idx: f & features::RING_EVENT_IDX != 0,
        indirect_desc: false,
        indirect_max: 4,
        phys: None,
    };
    // virtio-scsi: the control and event queues exist (a target may wait for them), idle.
    let mut idle = Vec::new();
    let first = if is_scsi {
        for i in 0..2 {
            let q = SplitQueue::new(domain, QueueConfig::new(16, cfg.event_idx))?;
            t.setup_queue(i, &q.addrs())?;
            idle.push(q);
        }
        2
    } else {
        0
    };
    let mut vq = SplitQueue::new(domain, cfg)?;
    vq.set_direct_max(4);
    vq.set_interrupts(false);
    let h = t.setup_queue(first, &vq.addrs())?;
    dev.driver_ok()?;

    // Per context: the request header on its own line, the response in a status area
    // apart (the device's writes stay off the lines the driver writes), 4 KiB of data.
    let (req_len, resp_len) = if is_scsi {
        (scsi::CMD_HEADER_LEN + 32, scsi::CMD_RESP_LEN + 96)
    } else {
        (16, 1)
    };
    let n = usize::from(qd);
    // Shared with the device (it reads headers and writes statuses of other contexts
    // while we write this one's): volatile access only.
    let mut hdr = SharedMem::zeroed(domain, 64 * n, 64)?;
    let status = SharedMem::zeroed(domain, resp_len.next_multiple_of(8) * n, 64)?;
    let status_at = |i: usize| i * resp_len.next_multiple_of(8);
    let data: Vec<DmaBuf> = (0..n)
        .map(|_| domain.alloc_zeroed(IO_BYTES as usize, 4096))
        .collect::<Result<_, _>>()?;
    let lun = scsi::lun_field(0, 0);
    let span = SPAN_BYTES / IO_BYTES;
    let mut rng = 0x2545_f491_4f6c_dd1du64;

    let mut add = |vq: &mut SplitQueue, hdr: &mut SharedMem, i: usize, tag: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let byte = (rng % span) * IO_BYTES;
        if is_scsi {
            let lba = (byte / block) as u32;
            let blocks = (IO_BYTES / block) as u16;
            let mut cdb = [0u8; 10];
            cdb[0] = 0x28; // READ(10)
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
            let mut req = [0u8; 64];
            scsi::write_cmd_req(&mut req[..req_len], lun, tag, &cdb);
            hdr.write(64 * i, &req);
        } else {
            let h = blk::ReqHeader {
                type_: blk::req::IN,
                reserved: 0,
                sector: byte / blk::SECTOR_SIZE,
            };
            hdr.write(64 * i, &h.to_bytes());
        }
        let req = Segment::readable(Iova(hdr.iova().0 + 64 * i as u64), req_len as u32);
        let resp = Segment::writable(Iova(status.iova().0 + status_at(i) as u64), resp_len as u32);
        let data = Segment::writable(data[i].iova(), IO_BYTES as u32);
        // virtio-scsi: the response comes before Data-In (§5.6.6.1); virtio-blk: the
        // status byte last (§5.2.6).
        let segs = if is_scsi {
            [req, resp, data]
        } else {
            [req, data, resp]
        };
        // SAFETY: the segments lie in `hdr`, `status` and `data[i]`, which live until the
        // end of `main`; context `i`'s header is written again, and its response and data
        // read, only after its chain came back from `pop_used`.
        unsafe { vq.try_add(&segs, i as u64) }
    };
    let publish = |vq: &mut SplitQueue| {
        if vq.publish() {
            h.notifier.notify();
        }
    };

    for i in 0..n {
        add(&mut vq, &mut hdr, i, i as u64).map_err(|e| format!("add: {e:?}"))?;
    }
    publish(&mut vq);
    let (mut ios, mut errors, mut tag) = (0u64, 0u64, u64::from(qd));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut last_progress = start;
    loop {
        let mut got = 0u32;
        while let Some(u) = vq.pop_used() {
            let i = u.cookie as usize;
            let ok = if is_scsi {
                status.read_u8(status_at(i) + scsi::CMD_RESP_RESPONSE_OFF) == 0
                    && status.read_u8(status_at(i) + scsi::CMD_RESP_STATUS_OFF) == 0
            } else {
                status.read_u8(status_at(i)) == blk::status::OK
            };
            errors += u64::from(!ok || u.written.is_err());
            ios += 1;
            got += 1;
            tag += 1;
            add(&mut vq, &mut hdr, i, tag).map_err(|e| format!("add: {e:?}"))?;
            if vq.unpublished() >= PUBLISH_BATCH {
                publish(&mut vq);
            }
        }
        publish(&mut vq);
        if got > 0 {
            last_progress = Instant::now();
        }
        if ios % 1024 < u64::from(got) || got == 0 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if now - last_progress > Duration::from_secs(5) {
                return Err("no completion for 5 s: is the target polling?".into());
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "ring_floor dev={} qd={qd} ios={ios} errors={errors} iops={:.0}",
        if is_scsi { "scsi" } else { "blk" },
        ios as f64 / elapsed
    );
    if errors > 0 {
        return Err(format!("{errors} requests did not complete with a good status").into());
    }
    Ok(())
}
