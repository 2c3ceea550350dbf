//! vbdev's own initiator (`virtio_blk::attach_vhost_user`) against the blk target.

use std::time::Duration;

use vbdev_bdev::{Completion, DmaBuf, IoChannel, IoError, IoStatus, RejectReason, Request};
use vbdev_target::Fault;
use vbdev_virtio::blk::status;

use crate::util::{Target, dma, pattern, read, run, write};

const MIB: u64 = 1 << 20;

/// Writes of 512 B to 4 MiB at block-aligned, never page-aligned offsets, read back
/// through the initiator and checked on the served disk.
fn sizes_round_trip(t: &Target, queues: u16) {
    let bdev = t.attach("blk0", queues, 256);
    assert_eq!(bdev.block_size(), 512);
    assert_eq!(bdev.num_blocks(), 64 * MIB / 512);
    let mut ch = bdev.open_channel().unwrap();
    let cases = vbdev_testkit::data::ODD_OFFSET_SIZES_64MIB;
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64, len);
        write(&mut ch, off / 512, &data);
        assert!(
            read(&mut ch, off / 512, len) == data,
            "read-back of {off}+{len}"
        );
        assert!(t.bytes(off, len) == data, "disk at {off}+{len}");
    }
    drop(ch);
    bdev.detach();
}

#[test]
fn writes_from_512_bytes_to_4_mib_read_back_and_land_on_the_bdev() {
    let t = Target::start(64 * MIB / 512, 512, 0, |_| {});
    sizes_round_trip(&t, 1);
}

#[test]
fn polling_mode_serves_the_same_requests() {
    let t = Target::start(64 * MIB / 512, 512, 0, |c| {
        c.poll = true;
        c.num_queues = 2;
    });
    sizes_round_trip(&t, 2);
    // A second frontend finds the polling workers of the first gone and new ones started.
    sizes_round_trip(&t, 1);
}

#[test]
fn flush_discard_and_write_zeroes_read_back_as_zeros() {
    // 1 MiB per discard / write-zeroes segment: the initiator splits the 5 MiB requests.
    let t = Target::start(16 * MIB / 512, 512, 0xff, |c| c.max_discard_sectors = 2048);
    let bdev = t.attach("blk0", 1, 128);
    let info = bdev.info().clone();
    assert!(info.flush && info.unmap && info.write_zeroes);
    let mut ch = bdev.open_channel().unwrap();
    let c = run(&mut ch, Request::unmap(MIB / 512 + 1, 5 * MIB / 512, 1));
    assert_eq!(c.status, IoStatus::Success);
    let c = run(
        &mut ch,
        Request::write_zeroes(8 * MIB / 512 + 3, 5 * MIB / 512, 2),
    );
    assert_eq!(c.status, IoStatus::Success);
    let c = run(&mut ch, Request::flush(3));
    assert_eq!((c.status, c.cookie), (IoStatus::Success, 3));
    let mut zero = |lba: u64, len: u64| read(&mut ch, lba, len as usize).iter().all(|&b| b == 0);
    assert!(
        zero(MIB / 512 + 1, 5 * MIB),
        "discarded range reads as zeros"
    );
    assert!(
        zero(8 * MIB / 512 + 3, 5 * MIB),
        "zeroed range reads as zeros"
    );
    for lba in [
        MIB / 512,
        6 * MIB / 512 + 1,
        8 * MIB / 512 + 2,
        13 * MIB / 512 + 3,
    ] {
        assert!(
            read(&mut ch, lba, 512).iter().all(|&b| b == 0xff),
            "block {lba} next to a range is untouched"
        );
    }
}

#[test]
fn read_only_target_is_read_only_to_the_initiator() {
    let t = Target::start(2048, 512, 0x5a, |c| c.read_only = true);
    let bdev = t.attach("ro0", 1, 64);
    assert!(bdev.info().read_only);
    let mut ch = bdev.open_channel().unwrap();
    for req in [
        Request::write(0, 1, dma(&[1u8; 512]), 0),
        Request::unmap(0, 8, 1),
        Request::write_zeroes(0, 8, 2),
    ] {
        let r = ch.submit(req).expect_err("refused before sending");
        assert!(
            matches!(r.error, RejectReason::ReadOnly { .. }),
            "{}",
            r.error
        );
    }
    assert!(read(&mut ch, 0, 4096).iter().all(|&b| b == 0x5a));
}

#[test]
fn four_queues_four_threads_on_disjoint_ranges() {
    let t = Target::start(64 * MIB / 512, 512, 0, |c| c.num_queues = 4);
    let bdev = t.attach("mq0", 4, 128);
    assert_eq!(bdev.info().num_queues, 4);
    let len = |i: u64| 4096 + 512 * (i as usize % 7);
    std::thread::scope(|s| {
        for q in 0..4u64 {
            let bdev = bdev.clone();
            s.spawn(move || {
                let mut ch = bdev.open_channel().unwrap();
                let base = q * 16 * MIB / 512;
                for i in 0..64u64 {
                    let lba = base + i * 257;
                    let data = pattern(q * 1000 + i, len(i));
                    write(&mut ch, lba, &data);
                    assert!(
                        read(&mut ch, lba, data.len()) == data,
                        "queue {q} block {lba}"
                    );
                }
            });
        }
    });
    // The last write of each range, on the disk.
    for q in 0..4u64 {
        let lba = q * 16 * MIB / 512 + 63 * 257;
        let data = pattern(q * 1000 + 63, len(63));
        assert!(t.bytes(lba * 512, data.len()) == data, "queue {q} on disk");
    }
}

#[test]
fn four_times_the_queue_size_in_flight_completes_in_order_of_need() {
    let t = Target::start(8 * MIB / 512, 512, 0, |c| c.queue_size = 64);
    let bdev = t.attach("full0", 1, 64);
    let mut ch = bdev.open_channel().unwrap();
    let n = 4 * 64u64;
    for i in 0..n {
        ch.submit(Request::write(
            i * 8,
            pattern(i, 4096).len() as u64 / 512,
            dma(&pattern(i, 4096)),
            i,
        ))
        .expect("submit");
    }
    assert!(ch.queued() > 0, "some requests wait for room in the ring");
    let done = ch.drain(Duration::from_secs(30)).expect("all complete");
    assert_eq!(done.len(), n as usize);
    assert!(done.iter().all(|c| c.status == IoStatus::Success));
    for i in 0..n {
        ch.submit(Request::read(i * 8, 8, DmaBuf::alloc(4096).unwrap(), i))
            .expect("submit");
    }
    let done = ch.drain(Duration::from_secs(30)).expect("all complete");
    assert_eq!(done.len(), n as usize);
    for c in done {
        assert_eq!(c.status, IoStatus::Success);
        assert!(
            c.buf.unwrap()[..] == pattern(c.cookie, 4096)[..],
            "block {}",
            c.cookie * 8
        );
    }
}

#[test]
fn block_size_4096_reaches_the_initiator_and_serves_io() {
    let t = Target::start(4096, 4096, 0, |c| c.num_queues = 2);
    let bdev = t.attach("b4k", 2, 128);
    assert_eq!(bdev.block_size(), 4096);
    assert_eq!(bdev.num_blocks(), 4096);
    let mut ch = bdev.open_channel().unwrap();
    for (i, (lba, len)) in [(1u64, 4096usize), (7, 12288), (333, 1 << 20), (4095, 4096)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u64 + 50, len);
        write(&mut ch, lba, &data);
        assert!(read(&mut ch, lba, len) == data);
        assert!(t.bytes(lba * 4096, len) == data);
    }
    let c = run(&mut ch, Request::write_zeroes(7, 2, 9));
    assert_eq!(c.status, IoStatus::Success);
    assert!(t.bytes(7 * 4096, 8192).iter().all(|&b| b == 0));
    let r = ch.submit(Request::read(4096, 1, DmaBuf::alloc(4096).unwrap(), 0));
    assert!(matches!(
        r.map_err(|r| r.error),
        Err(RejectReason::OutOfRange { .. })
    ));
}

#[test]
fn serial_and_limits_reach_the_initiator() {
    let t = Target::start(1000, 512, 0, |c| {
        c.serial = Some("vbdev-serial-01".into());
        c.num_queues = 3;
        c.max_discard_sectors = 4096;
        c.max_discard_seg = 4;
    });
    let bdev = t.attach("id0", 3, 32);
    let info = bdev.info().clone();
    assert_eq!(info.serial.as_deref(), Some("vbdev-serial-01"));
    assert_eq!(info.num_blocks, 1000);
    let details: std::collections::HashMap<_, _> = bdev.details().into_iter().collect();
    assert_eq!(details["capacity_sectors"], "1000");
    assert_eq!(details["seg_max"], "126");
    assert_eq!(details["size_max"], "1048576");
    assert_eq!(details["max_discard_sectors"], "4096");
    assert_eq!(details["max_discard_seg"], "4");
    assert_eq!(details["max_write_zeroes_sectors"], "4096");
    assert_eq!(details["writeback"], "1");
    let names = &details["feature_names"];
    for f in [
        "SIZE_MAX",
        "SEG_MAX",
        "BLK_SIZE",
        "FLUSH",
        "CONFIG_WCE",
        "MQ",
        "DISCARD",
        "WRITE_ZEROES",
        "RING_EVENT_IDX",
        "RING_INDIRECT_DESC",
        "VERSION_1",
    ] {
        assert!(names.split(',').any(|n| n == f), "{f} negotiated: {names}");
    }
    assert!(!names.split(',').any(|n| n == "RO"));
}

#[test]
fn second_frontend_sees_the_data_after_a_clean_detach() {
    let t = Target::start(4096, 512, 0, |c| c.num_queues = 2);
    let data = pattern(7, 64 << 10);
    {
        let a = t.attach("a", 2, 64);
        let mut ch = a.open_channel().unwrap();
        write(&mut ch, 101, &data);
        drop(ch);
        a.detach();
    }
    let b = t.attach("b", 2, 256);
    let mut ch = b.open_channel().unwrap();
    assert!(read(&mut ch, 101, data.len()) == data);
    assert_eq!(t.handle.connections(), 2);
}

#[test]
fn second_frontend_is_served_after_the_first_hangs_up_mid_handshake() {
    use std::io::Write;
    let t = Target::start(4096, 512, 0x33, |_| {});
    {
        // Half a message header, then gone.
        let mut s = std::os::unix::net::UnixStream::connect(t.socket()).unwrap();
        s.write_all(&[1, 0, 0, 0, 1]).unwrap();
    }
    {
        // A frontend that vanishes with a request in flight: the target holds it
        // unanswered, and the initiator detaches with the ring still busy.
        let a = t.attach("a", 1, 64);
        t.handle.faults.inject(vbdev_target::Fault::StopAnswering);
        let mut ch = a.open_channel().unwrap();
        ch.submit(Request::read(0, 1, DmaBuf::alloc(512).unwrap(), 0))
            .unwrap();
        let mut out = [vbdev_bdev::Completion::default()];
        assert_eq!(ch.poll(&mut out), 0);
        a.detach();
        // The channel fails its request once it notices the detach. The fault stays
        // armed until then: cleared earlier, a worker that wakes late would still serve
        // the request, and vbdev delivers completions published before a hang-up.
        let c = ch.wait_one().unwrap();
        assert!(!c.status.is_success());
        t.handle.faults.clear();
    }
    let b = t.attach("b", 1, 64);
    let mut ch = b.open_channel().unwrap();
    assert!(read(&mut ch, 0, 4096).iter().all(|&x| x == 0x33));
    write(&mut ch, 0, &[9u8; 512]);
    assert_eq!(t.bytes(0, 1), [9]);
}

/// Submits every request at once and returns the completions by cookie.
fn run_all(ch: &mut IoChannel, reqs: Vec<Request>) -> Vec<Completion> {
    let n = reqs.len();
    for req in reqs {
        if let Err(r) = ch.submit(req) {
            panic!("submit refused: {}", r.error);
        }
    }
    let mut done: Vec<Option<Completion>> = (0..n).map(|_| None).collect();
    let mut comps: Vec<Completion> = (0..16).map(|_| Completion::default()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while done.iter().any(Option::is_none) {
        assert!(
            std::time::Instant::now() < deadline,
            "requests still pending"
        );
        ch.wait(Duration::from_millis(100));
        let k = ch.poll(&mut comps);
        for c in &mut comps[..k] {
            let c = std::mem::take(c);
            let i = c.cookie as usize;
            assert!(done[i].is_none(), "request {i} completed twice");
            done[i] = Some(c);
        }
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// On a polling target, requests the fast path takes (reads and writes with a header
/// alone in the readable bytes) and those it leaves to the general path (flush, discard,
/// write-zeroes, and any request while a fault is armed) share one queue in any order.
#[test]
fn polling_fast_path_and_general_path_interleave_on_one_queue() {
    for ring in [16u16, 128] {
        // Ring 16: every multi-buffer chain indirect; 128: short chains direct.
        let t = Target::start(16 * MIB / 512, 512, 0xee, |c| c.poll = true);
        let bdev = t.attach("fp0", 1, ring);
        let mut ch = bdev.open_channel().unwrap();
        let mut reqs = Vec::new();
        for i in 0..40u64 {
            let lba = i * 64;
            reqs.push(match i % 5 {
                0 => Request::flush(i),
                1 => Request::unmap(lba, 8, i),
                2 => Request::write_zeroes(lba, 8, i),
                _ => Request::write(
                    lba,
                    pattern(i, 512 * (1 + i as usize % 8)).len() as u64 / 512,
                    dma(&pattern(i, 512 * (1 + i as usize % 8))),
                    i,
                ),
            });
        }
        for (i, c) in run_all(&mut ch, reqs).iter().enumerate() {
            assert_eq!(c.status, IoStatus::Success, "ring {ring} request {i}");
        }
        let reads = (0..40u64)
            .map(|i| Request::read(i * 64, 8, DmaBuf::alloc(8 * 512).unwrap(), i))
            .collect();
        for (i, c) in run_all(&mut ch, reads).iter().enumerate() {
            let i = i as u64;
            let got = c.buf.as_ref().expect("read buffer");
            let (want, rest) = match i % 5 {
                0 => (vec![0xee; 4096], 0xee),
                1 | 2 => (vec![0; 4096], 0xee),
                _ => {
                    let mut w = pattern(i, 512 * (1 + i as usize % 8));
                    w.resize(4096, 0xee);
                    (w, 0xee)
                }
            };
            assert!(got[..] == want[..], "ring {ring} block {}", i * 64);
            assert!(
                t.bytes(i * 64 * 512 + 4096, 512).iter().all(|&b| b == rest),
                "ring {ring}: block after {} untouched",
                i * 64
            );
        }
        // A fault armed while the queue polls applies to the next request, then the fast
        // path takes over again.
        t.handle.faults.inject(Fault::BlkStatus(status::IOERR));
        let c = run(&mut ch, Request::write(1, 1, dma(&[7u8; 512]), 0));
        assert_eq!(c.status, IoStatus::Failed(IoError::BlkIoErr), "ring {ring}");
        t.handle.faults.clear();
        write(&mut ch, 1, &[9u8; 512]);
        assert_eq!(t.bytes(512, 2), [9, 9]);
        drop(ch);
        bdev.detach();
    }
}
