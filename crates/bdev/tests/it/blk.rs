//! virtio-blk over vhost-user against qemu-storage-daemon.

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use vbdev_bdev::Target;
use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_bdev::{DmaBuf, Error, IoError, IoStatus, RejectReason, Request};
use vbdev_virtio::transport::vhost_user::VhostUserOptions;

use crate::qsd::{Backend, QsdBuilder};
use crate::util::{attach, dma, drain, error_chain, pattern, run};

const MIB: u64 = 1 << 20;

#[test]
fn writes_from_512_bytes_to_4_mib_read_back_and_land_in_the_image() {
    let mut q = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let bdev = attach(&q, "blk0", 1, 256);
    assert_eq!(bdev.block_size(), 512);
    assert_eq!(bdev.num_blocks(), 64 * MIB / 512);
    let mut ch = bdev.open_channel().unwrap();
    // Block aligned, never page aligned.
    let cases = vbdev_testkit::data::ODD_OFFSET_SIZES_64MIB;
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64, len);
        let c = run(
            &mut ch,
            Request::write(off / 512, data.len() as u64 / 512, dma(&data), i as u64),
        );
        assert_eq!(c.status, IoStatus::Success, "write {off}+{len}");
        assert_eq!(c.cookie, i as u64);
        let c = run(
            &mut ch,
            Request::read(
                off / 512,
                len as u64 / 512,
                DmaBuf::alloc(len).unwrap(),
                100,
            ),
        );
        assert_eq!(c.status, IoStatus::Success, "read {off}+{len}");
        assert!(
            c.buf.unwrap()[..] == data[..],
            "read-back of {off}+{len} differs"
        );
    }
    drop(ch);
    bdev.detach();
    q.stop();
    for (i, &(off, len)) in cases.iter().enumerate() {
        assert!(
            q.read_image(off, len) == pattern(i as u64, len),
            "image at {off}+{len} differs"
        );
    }
}

#[test]
fn flush_discard_and_write_zeroes_reach_the_image() {
    let mut q = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .prefill(0xff)
        .start();
    let bdev = attach(&q, "blk0", 1, 128);
    let info = bdev.info().clone();
    assert!(info.flush && info.unmap && info.write_zeroes);
    let mut ch = bdev.open_channel().unwrap();
    // 20 MiB is more than qsd's max_discard_sectors (16 MiB): the request is split.
    let c = run(&mut ch, Request::unmap(MIB / 512, 20 * MIB / 512, 1));
    assert_eq!(c.status, IoStatus::Success);
    let c = run(
        &mut ch,
        Request::write_zeroes(40 * MIB / 512 + 1, 17 * MIB / 512, 2),
    );
    assert_eq!(c.status, IoStatus::Success);
    let c = run(&mut ch, Request::flush(3));
    assert_eq!(c.status, IoStatus::Success);
    assert_eq!(c.cookie, 3);
    drop(ch);
    bdev.detach();
    q.stop();
    let all = |off: u64, len: usize, v: u8| q.read_image(off, len).iter().all(|&b| b == v);
    assert!(
        all(MIB, (20 * MIB) as usize, 0),
        "discarded range reads as zero"
    );
    assert!(
        all(MIB - 512, 512, 0xff),
        "block before the discard untouched"
    );
    assert!(
        all(21 * MIB, 512, 0xff),
        "block after the discard untouched"
    );
    assert!(all(40 * MIB + 512, (17 * MIB) as usize, 0), "zeroed range");
    assert!(
        all(40 * MIB, 512, 0xff),
        "block before write-zeroes untouched"
    );
    assert!(
        all(57 * MIB + 512, 512, 0xff),
        "block after write-zeroes untouched"
    );
}

#[test]
fn read_only_export_refuses_writes_before_sending() {
    let q = QsdBuilder::new(Backend::File { size: 8 * MIB })
        .prefill(0x5a)
        .read_only()
        .start();
    let bdev = attach(&q, "ro0", 1, 64);
    assert!(bdev.info().read_only);
    let mut ch = bdev.open_channel().unwrap();
    for (i, req) in [
        Request::write(0, 1, dma(&[1u8; 512]), 0),
        Request::unmap(0, 8, 1),
        Request::write_zeroes(0, 8, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let op = req.op;
        let r = ch.submit(req).expect_err("refused");
        assert_eq!(r.error, RejectReason::ReadOnly { op });
        assert!(r.to_string().contains("read-only"), "{r}");
        assert_eq!(r.request.cookie, i as u64, "the request is given back");
    }
    assert_eq!(ch.pending(), 0, "nothing was sent");
    let c = run(
        &mut ch,
        Request::read(0, 8, DmaBuf::alloc(4096).unwrap(), 4),
    );
    assert_eq!(c.status, IoStatus::Success);
    assert!(c.buf.unwrap().iter().all(|&b| b == 0x5a));
}

#[test]
fn four_threads_on_four_queues_write_and_verify_disjoint_ranges() {
    let mut q = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .num_queues(4)
        .start();
    let bdev = attach(&q, "mq0", 4, 128);
    assert_eq!(bdev.info().num_queues, 4);
    const PER_THREAD: u64 = 8 * MIB;
    const CHUNK: usize = 64 << 10;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let bdev = bdev.clone();
            std::thread::spawn(move || {
                let mut ch = bdev.open_channel().expect("a queue per thread");
                let base = t * PER_THREAD;
                let n = PER_THREAD / CHUNK as u64;
                for i in 0..n {
                    let off = base + i * CHUNK as u64;
                    let data = pattern(off, CHUNK);
                    ch.submit(Request::write(
                        off / 512,
                        data.len() as u64 / 512,
                        dma(&data),
                        i,
                    ))
                    .unwrap();
                }
                let done = drain(&mut ch, Duration::from_secs(60));
                assert_eq!(done.len() as u64, n);
                assert!(done.iter().all(|c| c.status.is_success()));
                for i in 0..n {
                    let off = base + i * CHUNK as u64;
                    ch.submit(Request::read(
                        off / 512,
                        CHUNK as u64 / 512,
                        DmaBuf::alloc(CHUNK).unwrap(),
                        i,
                    ))
                    .unwrap();
                }
                for c in drain(&mut ch, Duration::from_secs(60)) {
                    assert!(c.status.is_success());
                    let off = base + c.cookie * CHUNK as u64;
                    assert!(
                        c.buf.unwrap()[..] == pattern(off, CHUNK)[..],
                        "thread {t} at {off}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread succeeded");
    }
    bdev.detach();
    q.stop();
    for off in (0..4 * PER_THREAD).step_by(CHUNK * 7) {
        assert!(
            q.read_image(off, CHUNK) == pattern(off, CHUNK),
            "image at {off}"
        );
    }
}

#[test]
fn more_channels_than_queues_is_a_clear_error() {
    let q = QsdBuilder::new(Backend::Null { size: 8 * MIB })
        .num_queues(2)
        .start();
    let bdev = attach(&q, "two", 2, 64);
    let a = bdev.open_channel().unwrap();
    let _b = bdev.open_channel().unwrap();
    let e = bdev.open_channel().expect_err("only two queues");
    assert!(matches!(e, Error::NoFreeQueue { queues: 2, .. }), "{e}");
    assert!(e.to_string().contains("vq_count"), "{e}");
    drop(a);
    bdev.open_channel()
        .expect("a dropped channel frees its queue");
    let opts = AttachOptions {
        num_queues: 3,
        ..AttachOptions::default()
    };
    // Detach closes the connection even with channels open (qsd takes one frontend).
    bdev.detach();
    let e = virtio_blk::attach_vhost_user("three", q.socket(), &opts).expect_err("3 > 2");
    let msg = format!("{e:#}");
    let chain = error_chain(&e);
    assert!(
        chain.contains("3 request queues requested but the device has 2"),
        "{msg} / {chain}"
    );
}

#[test]
fn queue_full_requests_wait_in_the_channel_and_all_succeed() {
    let mut q = QsdBuilder::new(Backend::File { size: 16 * MIB }).start();
    let bdev = attach(&q, "qf0", 1, 16);
    let mut ch = bdev.open_channel().unwrap();
    const N: u64 = 16 * 8; // 8x the queue size
    for i in 0..N {
        ch.submit(Request::write(
            i * 8,
            pattern(i, 4096).len() as u64 / 512,
            dma(&pattern(i, 4096)),
            i,
        ))
        .expect("a full queue is not an error");
    }
    assert!(ch.queued() > 0, "some requests wait for room");
    assert_eq!(ch.pending() as u64, N);
    let done = drain(&mut ch, Duration::from_secs(30));
    assert_eq!(done.len() as u64, N);
    let mut seen = vec![false; N as usize];
    for c in &done {
        assert_eq!(c.status, IoStatus::Success);
        assert!(
            !std::mem::replace(&mut seen[c.cookie as usize], true),
            "cookie twice"
        );
    }
    drop(ch);
    bdev.detach();
    q.stop();
    for i in 0..N {
        assert!(
            q.read_image(i * 4096, 4096) == pattern(i, 4096),
            "block {i}"
        );
    }
}

#[test]
fn target_killed_during_io_fails_every_outstanding_request_quickly() {
    let mut q = QsdBuilder::new(Backend::File { size: 256 * MIB }).start();
    let bdev = attach(&q, "dies", 1, 64);
    let mut ch = bdev.open_channel().unwrap();
    const N: u64 = 256;
    for i in 0..N {
        ch.submit(Request::write(
            i * 2048,
            pattern(i, 1 << 20).len() as u64 / 512,
            dma(&pattern(i, 1 << 20)),
            i,
        ))
        .unwrap();
    }
    let mut out: Vec<_> = (0..8).map(|_| Default::default()).collect();
    let mut done = ch.poll(&mut out); // publish the first batch
    q.kill();
    let killed = Instant::now();
    let mut failed = 0;
    while (done as u64) < N {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "requests still pending 5 s after the kill"
        );
        let n = ch.poll(&mut out);
        for c in out[..n].iter() {
            if let IoStatus::Failed(e) = c.status {
                assert_eq!(e, IoError::Removed);
                failed += 1;
            }
        }
        done += n;
        if n == 0 {
            std::thread::yield_now();
        }
    }
    assert!(failed > 0, "the kill interrupted the workload");
    assert!(ch.is_removed());
    assert!(bdev.is_removed());
    let r = ch.submit(Request::flush(0)).expect_err("device is gone");
    assert_eq!(r.error, RejectReason::Removed);
}

#[test]
fn silent_target_fails_attach_with_a_timeout() {
    let dir = tempfile::Builder::new()
        .prefix("vbdev-silent")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("silent.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let target = Target::VhostUser {
        path: path.clone(),
        options: VhostUserOptions {
            timeout: Duration::from_millis(500),
        },
    };
    let start = Instant::now();
    let e =
        virtio_blk::attach_to("silent", &target, &AttachOptions::default()).expect_err("no answer");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    let chain = error_chain(&e);
    assert!(chain.contains("did not answer"), "{chain}");
}

/// A target that reads a message and hangs up (SPDK's vhost segfaulting on a memory
/// table) is reported as gone, never as a timeout, even with a long deadline armed.
/// See: issue 15 (the hang-up raced the deadline and came out as "did not answer").
#[test]
fn regression_15_a_target_that_hangs_up_mid_call_is_not_a_timeout() {
    use std::io::Read;
    let dir = tempfile::Builder::new()
        .prefix("vbdev-hangup")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("hangup.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // SET_OWNER's 12-byte header, then GET_FEATURES's: hang up without an answer.
        let mut hdr = [0u8; 24];
        let _ = s.read_exact(&mut hdr);
    });
    let target = Target::VhostUser {
        path: path.clone(),
        options: VhostUserOptions {
            timeout: Duration::from_secs(30),
        },
    };
    let e =
        virtio_blk::attach_to("hangup", &target, &AttachOptions::default()).expect_err("hung up");
    server.join().unwrap();
    let chain = error_chain(&e);
    assert!(!chain.contains("did not answer"), "{chain}");
    assert!(
        !format!("{e:?}").contains("Timeout"),
        "a hang-up is not a timeout: {e:?}"
    );
}

#[test]
fn second_frontend_on_a_busy_qsd_times_out_and_the_first_keeps_working() {
    let q = QsdBuilder::new(Backend::Null { size: 8 * MIB }).start();
    let first = attach(&q, "first", 1, 64);
    let target = Target::VhostUser {
        path: q.socket().into(),
        options: VhostUserOptions {
            timeout: Duration::from_millis(500),
        },
    };
    let e = virtio_blk::attach_to("second", &target, &AttachOptions::default())
        .expect_err("qsd is busy");
    assert!(format!("{:?}", e).contains("Timeout"), "{e:?}");
    let mut ch = first.open_channel().unwrap();
    let c = run(
        &mut ch,
        Request::read(0, 8, DmaBuf::alloc(4096).unwrap(), 1),
    );
    assert_eq!(c.status, IoStatus::Success);
    drop(ch);
    first.detach();
    // qsd serves the next frontend once the first is gone.
    let again = attach(&q, "again", 1, 64);
    let mut ch = again.open_channel().unwrap();
    assert!(run(&mut ch, Request::flush(2)).status.is_success());
}

#[test]
fn missing_socket_is_a_connect_error_naming_the_path() {
    let e =
        virtio_blk::attach_vhost_user("none", "/tmp/vbdev-no-such.sock", &AttachOptions::default())
            .expect_err("no socket");
    let chain = error_chain(&e);
    assert!(chain.contains("/tmp/vbdev-no-such.sock"), "{chain}");
}

#[test]
fn block_size_4096_export() {
    let q = QsdBuilder::new(Backend::File { size: 16 * MIB })
        .block_size(4096)
        .start();
    let bdev = attach(&q, "b4k", 1, 64);
    assert_eq!(bdev.block_size(), 4096);
    assert_eq!(bdev.num_blocks(), 16 * MIB / 4096);
    let mut ch = bdev.open_channel().unwrap();
    let data = pattern(7, 3 * 4096);
    assert!(
        run(&mut ch, Request::write(5, 3, dma(&data), 1))
            .status
            .is_success()
    );
    let c = run(
        &mut ch,
        Request::read(5, 3, DmaBuf::alloc(3 * 4096).unwrap(), 2),
    );
    assert!(c.buf.unwrap()[..] == data[..]);
    let r = ch
        .submit(Request::read(5, 1, DmaBuf::alloc(512).unwrap(), 3))
        .expect_err("not a whole block");
    assert!(matches!(r.error, RejectReason::BufferSize { .. }));
    let r = ch
        .submit(Request::read(
            bdev.num_blocks(),
            1,
            DmaBuf::alloc(4096).unwrap(),
            3,
        ))
        .expect_err("beyond the end");
    assert!(matches!(r.error, RejectReason::OutOfRange { .. }));
}

#[test]
fn buffers_in_a_region_created_after_attach_are_shared_with_add_mem_reg() {
    let mut q = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let bdev = attach(&q, "grow", 1, 64);
    let before = vbdev_virtio::DmaDomain::global().regions().len();
    // Fill the existing regions until an allocation needs a region of its own.
    let mut filler = Vec::new();
    let buf = loop {
        let b = DmaBuf::alloc((4 * MIB) as usize).unwrap();
        if usize::from(b.region().0) >= before {
            break b;
        }
        filler.push(b);
    };
    drop(filler);
    let mut data = buf;
    let expected = pattern(99, data.len());
    data.copy_from_slice(&expected);
    let mut ch = bdev.open_channel().unwrap();
    let blocks = data.len() as u64 / 512;
    let c = run(&mut ch, Request::write(MIB / 512, blocks, data, 1));
    assert_eq!(c.status, IoStatus::Success);
    let c = run(&mut ch, Request::read(MIB / 512, blocks, c.buf.unwrap(), 2));
    assert_eq!(c.status, IoStatus::Success);
    assert!(c.buf.unwrap()[..] == expected[..]);
    drop(ch);
    bdev.detach();
    q.stop();
    assert!(q.read_image(MIB, (4 * MIB) as usize) == expected);
}

#[test]
fn queue_sizes_from_1_to_32768_carry_verified_io() {
    let q = QsdBuilder::new(Backend::File { size: 16 * MIB }).start();
    for (i, size) in [32768u16, 1, 2].into_iter().enumerate() {
        let bdev = attach(&q, "qs", 1, size);
        assert_eq!(bdev.info().queue_size, size);
        let mut ch = bdev.open_channel().unwrap();
        let data = pattern(i as u64, 1 << 20);
        for k in 0..4u64 {
            ch.submit(Request::write(
                k * 2048,
                data.len() as u64 / 512,
                dma(&data),
                k,
            ))
            .unwrap();
        }
        assert!(
            drain(&mut ch, Duration::from_secs(30))
                .iter()
                .all(|c| c.status.is_success())
        );
        let c = run(
            &mut ch,
            Request::read(3 * 2048, 2048, DmaBuf::alloc(1 << 20).unwrap(), 9),
        );
        assert!(c.buf.unwrap()[..] == data[..], "queue size {size}");
        drop(ch);
        bdev.detach();
    }
}
