use super::*;

use std::collections::HashSet;

use vbdev_virtio::QueueError;
use vbdev_virtio::testing::{FakeBlk, FakeBlkConfig};

use crate::{Error, IoChannel, RejectReason};

const MIB: usize = 1 << 20;
/// Generous bound for anything the fake device does; it serves within milliseconds.
const DEADLINE: Duration = Duration::from_secs(5);

fn fake(cfg: FakeBlkConfig) -> Arc<FakeBlk> {
    Arc::new(FakeBlk::new(cfg).expect("fake device"))
}

fn attach_fake(cfg: FakeBlkConfig, opts: &AttachOptions) -> (Bdev, Arc<FakeBlk>) {
    let dev = fake(cfg);
    let bdev = attach("fake0", dev.clone(), opts).expect("attach");
    (bdev, dev)
}

fn opts(queue_size: u16) -> AttachOptions {
    AttachOptions {
        queue_size,
        ..AttachOptions::default()
    }
}

/// Bytes that differ from block to block and from seed to seed.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ ((i >> 9) as u8))
        .collect()
}

fn buf_with(data: &[u8]) -> DmaBuf {
    let mut buf = DmaBuf::alloc(data.len()).expect("dma buffer");
    buf.copy_from_slice(data);
    buf
}

fn zero_buf(len: usize) -> DmaBuf {
    DmaBuf::zeroed(len, 4096).expect("dma buffer")
}

fn submit(ch: &mut IoChannel, req: Request) {
    if let Err(r) = ch.submit(req) {
        panic!("submit rejected: {}", r.error);
    }
}

fn drain(ch: &mut IoChannel) -> Vec<Completion> {
    ch.drain(DEADLINE).expect("requests complete")
}

/// Submits one request and returns its completion.
fn run(ch: &mut IoChannel, req: Request) -> Completion {
    submit(ch, req);
    let mut done = drain(ch);
    assert_eq!(done.len(), 1);
    done.pop().expect("one completion")
}

fn read_blocks(ch: &mut IoChannel, offset_blocks: u64, len: usize) -> Vec<u8> {
    let c = run(
        ch,
        Request::read(
            offset_blocks,
            len as u64 / u64::from(ch.block_size()),
            zero_buf(len),
            0,
        ),
    );
    assert_eq!(c.status, IoStatus::Success);
    c.buf.expect("read gives its buffer back").to_vec()
}

/// Polls until `n` completions arrived or the deadline passed.
fn poll_n(ch: &mut IoChannel, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + DEADLINE;
    let mut out: Vec<Completion> = (0..16).map(|_| Completion::default()).collect();
    let mut all = Vec::new();
    while all.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} completions after {DEADLINE:?}",
            all.len()
        );
        let got = ch.poll(&mut out);
        all.extend(out[..got].iter_mut().map(std::mem::take));
        if got == 0 {
            std::thread::yield_now();
        }
    }
    all
}

#[test]
fn attach_reads_block_size_and_capacity_from_config() {
    let mut cfg = FakeBlkConfig::new(8 * MIB);
    cfg.config.blk_size = 4096;
    let (bdev, _dev) = attach_fake(cfg, &opts(64));
    let info = bdev.info();
    assert_eq!(info.block_size, 4096);
    assert_eq!(info.num_blocks, cfg.config.capacity * 512 / 4096);
    assert_eq!(info.num_blocks, 2048);
    assert!(!info.read_only);
    assert!(info.flush && info.unmap && info.write_zeroes);
    assert_eq!(info.serial.as_deref(), Some("fake"), "GET_ID at attach");
}

#[test]
fn read_only_device_rejects_writes_before_the_device_sees_them() {
    let mut cfg = FakeBlkConfig::new(MIB);
    cfg.features |= blk::features::RO;
    let (bdev, dev) = attach_fake(cfg, &opts(64));
    assert!(bdev.info().read_only);
    let mut ch = bdev.open_channel().unwrap();
    let before = dev.stats().requests;
    let rejected = ch
        .submit(Request::write(0, 1, buf_with(&[1; 512]), 1))
        .expect_err("write to a read-only device");
    assert_eq!(rejected.error, RejectReason::ReadOnly { op: IoOp::Write });
    assert!(rejected.request.buf.is_some(), "the buffer is given back");
    let rejected = ch
        .submit(Request::unmap(0, 1, 2))
        .expect_err("unmap on a read-only device");
    assert_eq!(rejected.error, RejectReason::ReadOnly { op: IoOp::Unmap });
    // A read after the rejected requests: had they gone out, the device would have
    // served them first.
    assert_eq!(read_blocks(&mut ch, 0, 512), vec![0; 512]);
    assert_eq!(dev.stats().requests, before + 1);
}

/// Writes 1 MiB at block 8 on a device with seg_max 4 and size_max 4096, checks the
/// disk, the device's view of the children, and reads it back.
fn large_write_respects_segment_limits(mut cfg: FakeBlkConfig, queue_size: u16) -> FakeBlk {
    cfg.config.size_max = 4096;
    cfg.config.seg_max = 4;
    let (bdev, dev) = attach_fake(cfg, &opts(queue_size));
    let mut ch = bdev.open_channel().unwrap();
    let data = pattern(MIB, 0x3c);
    let before = dev.stats().requests;
    let c = run(
        &mut ch,
        Request::write(8, data.len() as u64 / 512, buf_with(&data), 77),
    );
    assert_eq!((c.cookie, c.status), (77, IoStatus::Success));
    assert_eq!(c.buf.as_ref().map(|b| b.len()), Some(MIB));
    assert_eq!(&dev.disk()[8 * 512..8 * 512 + MIB], &data[..]);
    assert!(dev.disk()[..8 * 512].iter().all(|&b| b == 0));
    let stats = dev.stats();
    assert_eq!(
        stats.requests - before,
        (MIB / (4 * 4096)) as u64,
        "16 KiB children"
    );
    assert!(stats.max_data_segs <= 4, "{stats:?}");
    assert!(stats.max_seg_len <= 4096, "{stats:?}");
    assert_eq!(read_blocks(&mut ch, 8, MIB), data);
    let stats = dev.stats();
    assert!(
        stats.max_data_segs <= 4 && stats.max_seg_len <= 4096,
        "{stats:?}"
    );
    drop(ch);
    drop(bdev);
    Arc::try_unwrap(dev).expect("the bdev let go of the transport")
}

#[test]
fn large_write_is_split_within_seg_max_and_size_max() {
    let dev = large_write_respects_segment_limits(FakeBlkConfig::new(4 * MIB), 512);
    assert!(
        dev.stats().indirect > 0,
        "chains go through indirect tables"
    );
}

#[test]
fn large_write_without_indirect_descriptors_fits_a_small_queue() {
    let mut cfg = FakeBlkConfig::new(4 * MIB);
    cfg.features &= !vfeat::RING_INDIRECT_DESC;
    // Each child takes 6 of the queue's 8 descriptors: one child in flight at a time.
    let dev = large_write_respects_segment_limits(cfg, 8);
    assert_eq!(dev.stats().indirect, 0);
}

#[test]
fn unmap_is_split_at_max_discard_sectors_and_zeroes_the_range() {
    let mut cfg = FakeBlkConfig::new(MIB);
    cfg.config.max_discard_sectors = 16;
    let (bdev, dev) = attach_fake(cfg, &opts(64));
    dev.write_disk(0, &[0xaa; MIB]);
    let mut ch = bdev.open_channel().unwrap();
    let c = run(&mut ch, Request::unmap(3, 1000, 5));
    assert_eq!((c.cookie, c.status), (5, IoStatus::Success));
    let disk = dev.disk();
    assert!(
        disk[..3 * 512].iter().all(|&b| b == 0xaa),
        "before the range"
    );
    assert!(
        disk[3 * 512..1003 * 512].iter().all(|&b| b == 0),
        "the range"
    );
    assert!(
        disk[1003 * 512..].iter().all(|&b| b == 0xaa),
        "after the range"
    );
    let stats = dev.stats();
    assert_eq!(stats.discards, 1000u64.div_ceil(16));
    assert_eq!(stats.max_discard_sectors, 16);
}

#[test]
fn write_zeroes_is_split_at_max_write_zeroes_sectors() {
    let mut cfg = FakeBlkConfig::new(MIB);
    cfg.config.max_write_zeroes_sectors = 8;
    let (bdev, dev) = attach_fake(cfg, &opts(16));
    dev.write_disk(0, &[0x55; MIB]);
    let mut ch = bdev.open_channel().unwrap();
    let c = run(&mut ch, Request::write_zeroes(10, 100, 6));
    assert_eq!(c.status, IoStatus::Success);
    let disk = dev.disk();
    assert!(disk[10 * 512..110 * 512].iter().all(|&b| b == 0));
    assert_eq!(disk[10 * 512 - 1], 0x55);
    assert_eq!(disk[110 * 512], 0x55);
    let stats = dev.stats();
    assert_eq!(stats.write_zeroes, 100u64.div_ceil(8));
    assert_eq!(stats.max_write_zeroes_sectors, 8);
}

#[test]
fn full_queue_keeps_requests_in_the_channel_until_space_frees() {
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts(8));
    let mut ch = bdev.open_channel().unwrap();
    let data: Vec<Vec<u8>> = (0..64u8).map(|i| pattern(4096, i)).collect();
    for (i, d) in data.iter().enumerate() {
        submit(
            &mut ch,
            Request::write(i as u64 * 8, 8, buf_with(d), i as u64),
        );
    }
    assert_eq!(
        ch.queued(),
        64 - 8,
        "eight fit the ring, the rest wait in order"
    );
    assert_eq!(ch.pending(), 64);
    let done = poll_n(&mut ch, 64);
    assert_eq!(ch.pending(), 0);
    let mut seen = HashSet::new();
    for c in &done {
        assert_eq!(c.status, IoStatus::Success, "cookie {}", c.cookie);
        assert!(seen.insert(c.cookie), "cookie {} twice", c.cookie);
    }
    assert_eq!(seen, (0..64).collect());
    let disk = dev.disk();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(&disk[i * 4096..(i + 1) * 4096], &d[..], "block {}", i * 8);
    }
}

#[test]
fn request_behind_a_full_queue_goes_out_after_earlier_ones() {
    let mut cfg = FakeBlkConfig::new(MIB);
    cfg.config.size_max = 4096;
    cfg.config.seg_max = 4;
    let (bdev, dev) = attach_fake(cfg, &opts(8));
    let mut ch = bdev.open_channel().unwrap();
    dev.hold(true);
    for i in 0..6u64 {
        submit(
            &mut ch,
            Request::write(512 + i * 8, 8, zero_buf(4096), 100 + i),
        );
    }
    // 64 KiB: four 16 KiB children, of which two fit beside the six fillers; the read
    // of its last block fits too, but must wait behind it.
    let data = pattern(65536, 0x77);
    submit(
        &mut ch,
        Request::write(0, data.len() as u64 / 512, buf_with(&data), 1),
    );
    submit(&mut ch, Request::read(120, 8, zero_buf(4096), 2));
    assert_eq!(ch.poll(&mut []), 0);
    assert_eq!(ch.queued(), 1, "the read waits in the channel");
    dev.hold(false);
    let done = drain(&mut ch);
    assert_eq!(done.len(), 8);
    assert!(done.iter().all(|c| c.status == IoStatus::Success));
    let pos = |cookie| done.iter().position(|c| c.cookie == cookie).unwrap();
    assert!(pos(1) < pos(2), "the write completes before the read");
    let read = done[pos(2)].buf.as_ref().expect("read buffer");
    assert_eq!(&read[..], &data[60 * 1024..]);
    assert_eq!(&dev.disk()[..65536], &data[..]);
}

#[test]
fn dead_device_fails_in_flight_requests_with_removed() {
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts(64));
    let mut ch = bdev.open_channel().unwrap();
    dev.hold(true);
    for i in 0..4u64 {
        submit(&mut ch, Request::read(i, 1, zero_buf(512), i));
    }
    assert_eq!(ch.poll(&mut []), 0);
    assert_eq!(ch.pending(), 4);
    dev.kill();
    let done = poll_n(&mut ch, 4);
    let cookies: HashSet<u64> = done.iter().map(|c| c.cookie).collect();
    assert_eq!(cookies, (0..4).collect());
    for c in &done {
        assert_eq!(c.status, IoStatus::Failed(IoError::Removed));
        assert!(c.buf.is_some(), "the buffer comes back");
    }
    assert!(ch.is_removed());
    assert!(bdev.is_removed());
    let rejected = ch
        .submit(Request::read(0, 1, zero_buf(512), 9))
        .expect_err("submit to a dead device");
    assert_eq!(rejected.error, RejectReason::Removed);
    assert!(matches!(bdev.open_channel(), Err(Error::Removed(_))));
}

/// Holds four writes, makes the device answer the first with used id `id`, and checks
/// that all four fail with the protocol error and the channel stops.
fn bad_used_id_fails_everything(id: u32) -> QueueError {
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts(8));
    let mut ch = bdev.open_channel().unwrap();
    dev.hold(true);
    for i in 0..4u64 {
        submit(&mut ch, Request::write(i, 1, zero_buf(512), i));
    }
    assert_eq!(ch.poll(&mut []), 0);
    dev.corrupt_next_used_id(id);
    dev.hold(false);
    let done = poll_n(&mut ch, 4);
    let errors: Vec<QueueError> = done
        .iter()
        .map(|c| match c.status {
            IoStatus::Failed(IoError::Protocol(e)) => e,
            s => panic!("cookie {}: {s:?}, expected a protocol error", c.cookie),
        })
        .collect();
    assert!(errors.iter().all(|e| *e == errors[0]), "{errors:?}");
    assert!(ch.is_removed(), "a broken queue takes no more requests");
    let rejected = ch
        .submit(Request::read(0, 1, zero_buf(512), 9))
        .expect_err("submit to a broken queue");
    assert_eq!(rejected.error, RejectReason::Removed);
    assert!(!dev.is_alive(), "the transport was shut down");
    errors[0]
}

#[test]
fn used_id_out_of_range_fails_in_flight_requests_with_protocol() {
    assert_eq!(
        bad_used_id_fails_everything(999),
        QueueError::UsedIdOutOfRange { id: 999, size: 8 }
    );
}

#[test]
fn used_id_not_in_flight_fails_in_flight_requests_with_protocol() {
    // Four chains of one (indirect) descriptor each hold heads 0..4 of 8.
    assert_eq!(
        bad_used_id_fails_everything(7),
        QueueError::UsedIdNotInFlight { id: 7 }
    );
}

#[test]
fn more_channels_than_queues_fails_with_no_free_queue() {
    let cfg = FakeBlkConfig::new(MIB).queues(2);
    let opts = AttachOptions {
        num_queues: 2,
        ..opts(64)
    };
    let (bdev, dev) = attach_fake(cfg, &opts);
    let mut a = bdev.open_channel().unwrap();
    let mut b = bdev.open_channel().unwrap();
    let err = bdev
        .open_channel()
        .expect_err("a third channel on two queues");
    assert!(
        matches!(err, Error::NoFreeQueue { queues: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("vq_count"), "{err}");
    assert_eq!(
        run(&mut a, Request::write(0, 1, buf_with(&[1; 512]), 1)).status,
        IoStatus::Success
    );
    assert_eq!(
        run(&mut b, Request::write(1, 1, buf_with(&[2; 512]), 2)).status,
        IoStatus::Success
    );
    drop(a);
    let mut c = bdev
        .open_channel()
        .expect("the dropped channel's queue is free");
    assert_eq!(
        read_blocks(&mut c, 0, 1024)[..],
        [[1; 512], [2; 512]].concat()
    );
    let stats = dev.stats();
    assert!(
        stats.per_queue.iter().all(|&n| n >= 2),
        "both queues served: {stats:?}"
    );
}

#[test]
fn init_fails_when_the_device_rejects_the_features() {
    let dev = fake(FakeBlkConfig::new(MIB));
    dev.reject_features(true);
    let err = VirtioDevice::init(
        dev.clone(),
        vbdev_virtio::device::DeviceType::Blk,
        WANTED_FEATURES,
        0,
    )
    .expect_err("rejected");
    assert!(
        matches!(err, vbdev_virtio::Error::FeaturesRejected { .. }),
        "{err:?}"
    );
    let err = attach("fake0", dev.clone(), &opts(64)).expect_err("attach");
    assert!(
        matches!(
            err,
            Error::Attach {
                source: vbdev_virtio::Error::FeaturesRejected { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!dev.is_alive(), "a failed attach shuts the transport down");
}

#[test]
fn init_requires_version_1() {
    let mut cfg = FakeBlkConfig::new(MIB);
    cfg.features &= !vfeat::VERSION_1;
    let dev = fake(cfg);
    let err = VirtioDevice::init(
        dev.clone(),
        vbdev_virtio::device::DeviceType::Blk,
        WANTED_FEATURES,
        0,
    )
    .expect_err("legacy device");
    assert!(
        matches!(
            err,
            vbdev_virtio::Error::MissingFeature { name: "VERSION_1" }
        ),
        "{err:?}"
    );
}

#[test]
fn dead_device_fails_requests_waiting_in_the_channel_too() {
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts(8));
    let mut ch = bdev.open_channel().unwrap();
    dev.hold(true);
    for i in 0..12u64 {
        submit(&mut ch, Request::read(i, 1, zero_buf(512), i));
    }
    assert_eq!(ch.poll(&mut []), 0);
    assert_eq!(ch.queued(), 4, "eight on the ring, four in the channel");
    dev.kill();
    let done = poll_n(&mut ch, 12);
    let cookies: HashSet<u64> = done.iter().map(|c| c.cookie).collect();
    assert_eq!(cookies, (0..12).collect());
    assert!(
        done.iter()
            .all(|c| c.status == IoStatus::Failed(IoError::Removed))
    );
    assert_eq!(ch.pending(), 0);
}

#[test]
fn detach_fails_requests_in_flight_and_stops_the_device() {
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts(8));
    let mut ch = bdev.open_channel().unwrap();
    dev.hold(true);
    for i in 0..12u64 {
        submit(&mut ch, Request::read(i, 1, zero_buf(512), i));
    }
    assert_eq!(ch.poll(&mut []), 0);
    bdev.detach();
    assert!(!dev.is_alive(), "detach shuts the transport down");
    let done = poll_n(&mut ch, 12);
    assert!(
        done.iter()
            .all(|c| c.status == IoStatus::Failed(IoError::Removed))
    );
    drop(ch);
    drop(bdev);
    assert_eq!(
        Arc::strong_count(&dev),
        1,
        "the driver let go of the transport"
    );
}

#[test]
fn hung_device_fails_requests_after_the_io_timeout() {
    let opts = AttachOptions {
        io_timeout: Duration::from_millis(200),
        ..opts(64)
    };
    // Measured from before the attach: the driver counts from its last progress.
    let start = Instant::now();
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts);
    let mut ch = bdev.open_channel().unwrap();
    dev.hold(true);
    submit(&mut ch, Request::read(0, 1, zero_buf(512), 1));
    submit(&mut ch, Request::write(1, 1, zero_buf(512), 2));
    let done = drain(&mut ch);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(done.len(), 2);
    assert!(
        done.iter()
            .all(|c| c.status == IoStatus::Failed(IoError::TimedOut))
    );
    assert!(ch.is_removed(), "a hung queue takes no more requests");
}

#[test]
fn idle_time_does_not_count_toward_the_io_timeout() {
    let opts = AttachOptions {
        io_timeout: Duration::from_millis(200),
        ..opts(64)
    };
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts);
    let mut ch = bdev.open_channel().unwrap();
    assert_eq!(read_blocks(&mut ch, 0, 512), vec![0; 512]);
    // Not a synchronisation: the channel must sit idle for longer than the timeout.
    std::thread::sleep(Duration::from_millis(300));
    dev.hold(true);
    submit(&mut ch, Request::read(0, 1, zero_buf(512), 1));
    // Held for 50 ms, far below the 200 ms timeout: nothing may complete yet.
    match ch.drain(Duration::from_millis(50)) {
        Err(Error::WaitTimeout(_)) => {}
        other => panic!("request ended early: {other:?}"),
    }
    dev.hold(false);
    let done = drain(&mut ch);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, IoStatus::Success);
}

#[test]
fn device_error_in_one_child_fails_the_request_and_spares_the_next() {
    // The device claims 2 MiB but holds 1 MiB: children beyond 1 MiB get IOERR.
    let mut cfg = FakeBlkConfig::new(MIB);
    cfg.config.capacity = 2 * MIB as u64 / 512;
    cfg.config.size_max = 4096;
    cfg.config.seg_max = 4;
    let (bdev, dev) = attach_fake(cfg, &opts(8));
    let mut ch = bdev.open_channel().unwrap();
    let before = dev.stats().requests;
    // 256 KiB in sixteen 16 KiB children from 40 KiB before the end: the third fails.
    let start = (MIB - 40 * 1024) / 512;
    let data = pattern(256 * 1024, 1);
    submit(
        &mut ch,
        Request::write(start as u64, data.len() as u64 / 512, buf_with(&data), 1),
    );
    let small = pattern(4096, 2);
    submit(
        &mut ch,
        Request::write(0, small.len() as u64 / 512, buf_with(&small), 2),
    );
    let done = drain(&mut ch);
    let status = |cookie| done.iter().find(|c| c.cookie == cookie).unwrap().status;
    assert_eq!(done.len(), 2);
    assert_eq!(status(1), IoStatus::Failed(IoError::BlkIoErr));
    assert_eq!(status(2), IoStatus::Success);
    // Eight children fit the ring; only the two that complete before the failing one
    // can make room for more, and none go out after it; plus the small write.
    let sent = dev.stats().requests - before;
    assert!(sent <= 8 + 2 + 1, "{sent} device requests");
    assert_eq!(
        &dev.disk()[start * 512..start * 512 + 32 * 1024],
        &data[..32 * 1024]
    );
    assert!(!ch.is_removed(), "a device error is not a dead device");
    assert_eq!(read_blocks(&mut ch, 0, 4096), small);
}

#[test]
fn range_limits_below_one_block_are_never_exceeded() {
    // 4-sector limits on a device of 8-sector blocks: refusing the device at attach,
    // refusing the request, or splitting below a block are all fine; sending one
    // 8-sector range is not.
    let mut cfg = FakeBlkConfig::new(MIB);
    cfg.config.blk_size = 4096;
    cfg.config.max_discard_sectors = 4;
    cfg.config.max_write_zeroes_sectors = 4;
    let dev = fake(cfg);
    let bdev = attach("fake0", dev.clone(), &opts(64)).unwrap();
    assert!(
        !bdev.info().unmap && !bdev.info().write_zeroes,
        "limits below a block"
    );
    let mut ch = bdev.open_channel().unwrap();
    for req in [Request::unmap(0, 2, 1), Request::write_zeroes(2, 2, 2)] {
        let op = req.op;
        let r = ch.submit(req).expect_err("operation not offered");
        assert_eq!(r.error, RejectReason::Unsupported { op });
    }
    let stats = dev.stats();
    assert!(stats.max_discard_sectors <= 4, "{stats:?}");
    assert!(stats.max_write_zeroes_sectors <= 4, "{stats:?}");
}

#[test]
fn a_long_refill_reaches_the_device_in_batches_before_the_poll() {
    // The device starts on the first requests of a refill while the rest are built:
    // the first at once (the device had nothing), then every PUBLISH_BATCH requests,
    // without waiting for the poll.
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts(64));
    let mut ch = bdev.open_channel().unwrap();
    let before = dev.stats().requests;
    dev.hold(true);
    let n = 2 * u64::from(crate::engine::PUBLISH_BATCH) + 4;
    for i in 0..n {
        submit(&mut ch, Request::read(i * 8, 8, zero_buf(4096), i));
    }
    dev.hold(false);
    let batch = u64::from(crate::engine::PUBLISH_BATCH);
    let published = 1 + (n - 1) / batch * batch;
    assert!(published > 1 && published < n);
    let deadline = Instant::now() + DEADLINE;
    while dev.stats().requests - before < published {
        assert!(
            Instant::now() < deadline,
            "{} of the {published} published requests served",
            dev.stats().requests - before
        );
        std::thread::yield_now();
    }
    // The tail waits for the poll's flush (the device may only serve what it was given).
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(dev.stats().requests - before, published);
    let done = poll_n(&mut ch, n as usize);
    assert!(done.iter().all(|c| c.status == IoStatus::Success));
    assert_eq!(dev.stats().requests - before, n);
}

#[test]
fn a_request_to_an_idle_device_is_published_at_once() {
    // QD 1: the device has nothing else, so the request goes out when it is submitted,
    // not a poll later; the poll only collects the completion.
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts(64));
    let mut ch = bdev.open_channel().unwrap();
    for i in 0..3u64 {
        let before = dev.stats().requests;
        submit(&mut ch, Request::read(i * 8, 8, zero_buf(4096), i));
        let deadline = Instant::now() + DEADLINE;
        while dev.stats().requests == before {
            assert!(
                Instant::now() < deadline,
                "request {i} not served before a poll"
            );
            std::thread::yield_now();
        }
        let done = poll_n(&mut ch, 1);
        assert_eq!(done[0].status, IoStatus::Success);
    }
}

#[test]
fn a_completion_the_device_did_not_answer_fails_every_time() {
    // The status marker is armed again after every completion, not when the request is
    // built: a context whose last request succeeded must not pass its old OK status off
    // as the answer to a request the device did not answer.
    let (bdev, dev) = attach_fake(FakeBlkConfig::new(MIB), &opts(8));
    let mut ch = bdev.open_channel().unwrap();
    for round in 0..3u64 {
        let data = pattern(4096, round as u8);
        let ok = run(
            &mut ch,
            Request::write(
                8 * round,
                data.len() as u64 / 512,
                buf_with(&data),
                2 * round,
            ),
        );
        assert_eq!(ok.status, IoStatus::Success, "round {round}");
        dev.skip_next_status(1);
        let lost = run(
            &mut ch,
            Request::read(8 * round, 8, zero_buf(4096), 2 * round + 1),
        );
        assert_eq!(
            lost.status,
            IoStatus::Failed(IoError::BlkBadStatus(STATUS_UNSET)),
            "round {round}: an unanswered request must fail"
        );
        assert_eq!(read_blocks(&mut ch, 8 * round, 4096), data, "round {round}");
    }
    assert!(!ch.is_removed(), "an unanswered request fails alone");
}
