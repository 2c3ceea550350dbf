//! Faults injected in the target, as vbdev's initiator sees them.

use std::time::{Duration, Instant};

use vbdev_bdev::virtio_blk::AttachOptions;
use vbdev_bdev::{Bdev, DmaBuf, IoChannel, IoError, IoStatus, Request};
use vbdev_target::{BadUsed, Fault};
use vbdev_virtio::QueueError;
use vbdev_virtio::blk::status;

use crate::util::{Target, attach_opts, dma, pattern, read, run, write};

fn target() -> Target {
    Target::start(8192, 512, 0, |_| {})
}

/// Attaches with a short I/O timeout so a silent target is given up on quickly.
fn attach(t: &Target, name: &str) -> Bdev {
    attach_opts(
        t.socket(),
        name,
        &AttachOptions {
            num_queues: 1,
            queue_size: 64,
            io_timeout: Duration::from_secs(1),
            ..AttachOptions::default()
        },
    )
}

fn read_status(ch: &mut IoChannel, lba: u64) -> IoStatus {
    run(ch, Request::read(lba, 1, DmaBuf::alloc(512).unwrap(), lba)).status
}

/// After a fault that cost the connection: the target serves the next frontend, and
/// the data written before the fault is there.
fn next_frontend_is_served(t: &Target, lba: u64, data: &[u8]) {
    t.handle.faults.clear();
    let b = attach(t, "next");
    let mut ch = b.open_channel().unwrap();
    assert!(read(&mut ch, lba, data.len()) == data);
    write(&mut ch, lba + 64, data);
}

#[test]
fn blk_status_fault_fails_that_request_with_its_status() {
    let t = target();
    let bdev = attach(&t, "st");
    let mut ch = bdev.open_channel().unwrap();
    t.handle.faults.inject(Fault::BlkStatus(status::IOERR));
    let c = run(&mut ch, Request::write(0, 1, dma(&[7u8; 512]), 0));
    assert_eq!(c.status, IoStatus::Failed(IoError::BlkIoErr));
    assert_eq!(t.bytes(0, 1), [0], "the failed write was not done");
    t.handle.faults.inject(Fault::BlkStatus(status::UNSUPP));
    assert_eq!(
        read_status(&mut ch, 0),
        IoStatus::Failed(IoError::BlkUnsupp)
    );
    t.handle.faults.inject(Fault::BlkStatus(0x7f));
    assert_eq!(
        read_status(&mut ch, 0),
        IoStatus::Failed(IoError::BlkBadStatus(0x7f))
    );
    // One-shot: the next request is served.
    write(&mut ch, 0, &[7u8; 512]);
    assert_eq!(t.bytes(0, 1), [7]);
}

#[test]
fn delay_fault_holds_the_completion_for_at_least_the_delay() {
    let t = target();
    let bdev = attach(&t, "delay");
    let mut ch = bdev.open_channel().unwrap();
    let d = Duration::from_millis(300);
    t.handle.faults.inject(Fault::Delay(d));
    let start = Instant::now();
    assert_eq!(read_status(&mut ch, 3), IoStatus::Success);
    assert!(
        start.elapsed() >= d,
        "completed after {:?}",
        start.elapsed()
    );
}

#[test]
fn close_after_two_fails_the_third_request_and_removes_the_bdev() {
    let t = target();
    let data = pattern(1, 4096);
    let bdev = attach(&t, "close");
    let mut ch = bdev.open_channel().unwrap();
    t.handle.faults.inject(Fault::CloseAfter(2));
    write(&mut ch, 10, &data);
    // The target completes the second request before it hangs up: it is a success
    // (see `completions_published_before_a_hang_up_are_delivered`).
    let second = read_status(&mut ch, 10);
    assert_eq!(second, IoStatus::Success);
    let third = ch.submit(Request::read(10, 1, DmaBuf::alloc(512).unwrap(), 3));
    match third {
        Ok(()) => {
            let c = ch.wait_one().unwrap();
            assert_eq!(c.status, IoStatus::Failed(IoError::Removed));
        }
        // The initiator may have noticed the hang-up before this submit.
        Err(r) => assert_eq!(r.error, vbdev_bdev::RejectReason::Removed),
    }
    assert!(bdev.is_removed());
    drop(ch);
    next_frontend_is_served(&t, 10, &data);
}

/// The target publishes the second completion before it hangs up, so the initiator
/// delivers it as a success. Regression: `BlkQueue::reap` used to fail every request
/// in flight as soon as it saw the connection gone, before draining the used ring
/// (about one run in three here).
#[test]
fn completions_published_before_a_hang_up_are_delivered() {
    for i in 0..20 {
        let t = target();
        let bdev = attach(&t, "race");
        let mut ch = bdev.open_channel().unwrap();
        t.handle.faults.inject(Fault::CloseAfter(1));
        assert_eq!(read_status(&mut ch, 1), IoStatus::Success, "run {i}");
    }
}

#[test]
fn stop_answering_times_the_request_out_and_the_next_frontend_is_served() {
    let t = target();
    let data = pattern(2, 2048);
    let bdev = attach(&t, "silent");
    let mut ch = bdev.open_channel().unwrap();
    write(&mut ch, 20, &data);
    t.handle.faults.inject(Fault::StopAnswering);
    let start = Instant::now();
    assert_eq!(
        read_status(&mut ch, 20),
        IoStatus::Failed(IoError::TimedOut)
    );
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(bdev.is_removed());
    drop(ch);
    next_frontend_is_served(&t, 20, &data);
}

#[test]
fn used_id_out_of_range_is_a_protocol_error_and_the_next_frontend_is_served() {
    let t = target();
    let data = pattern(3, 512);
    let bdev = attach(&t, "badid");
    let mut ch = bdev.open_channel().unwrap();
    write(&mut ch, 30, &data);
    t.handle
        .faults
        .inject(Fault::BadUsed(BadUsed::IdOutOfRange));
    match read_status(&mut ch, 30) {
        IoStatus::Failed(IoError::Protocol(QueueError::UsedIdOutOfRange { id: 64, size: 64 })) => {}
        s => panic!("{s:?}"),
    }
    assert!(bdev.is_removed());
    drop(ch);
    next_frontend_is_served(&t, 30, &data);
}

#[test]
fn used_idx_jump_is_a_protocol_error_and_the_next_frontend_is_served() {
    let t = target();
    let data = pattern(4, 512);
    let bdev = attach(&t, "jump");
    let mut ch = bdev.open_channel().unwrap();
    write(&mut ch, 40, &data);
    t.handle.faults.inject(Fault::BadUsed(BadUsed::IdxJump));
    match read_status(&mut ch, 40) {
        IoStatus::Failed(IoError::Protocol(QueueError::UsedIdxJump { .. })) => {}
        s => panic!("{s:?}"),
    }
    assert!(bdev.is_removed());
    drop(ch);
    next_frontend_is_served(&t, 40, &data);
}

#[test]
fn used_len_too_large_fails_only_that_request() {
    let t = target();
    let bdev = attach(&t, "len");
    let mut ch = bdev.open_channel().unwrap();
    t.handle.faults.inject(Fault::BadUsed(BadUsed::LenTooLarge));
    match read_status(&mut ch, 50) {
        IoStatus::Failed(IoError::Protocol(QueueError::UsedLenTooLarge {
            len: 514,
            writable: 513,
            ..
        })) => {}
        s => panic!("{s:?}"),
    }
    assert!(!bdev.is_removed());
    write(&mut ch, 50, &[5u8; 512]);
    assert_eq!(read(&mut ch, 50, 512), [5u8; 512]);
}

#[test]
fn target_side_disconnect_removes_the_bdev_and_the_next_frontend_is_served() {
    let t = target();
    let data = pattern(5, 512);
    let bdev = attach(&t, "dis");
    let mut ch = bdev.open_channel().unwrap();
    write(&mut ch, 60, &data);
    t.handle.disconnect();
    let deadline = Instant::now() + Duration::from_secs(5);
    // The hang-up reaches the initiator's connection thread asynchronously; poll the
    // flag it sets (bounded), then a request must fail.
    while !bdev.is_removed() {
        assert!(Instant::now() < deadline, "hang-up not noticed");
        std::thread::yield_now();
    }
    assert!(ch.submit(Request::flush(0)).is_err());
    drop(ch);
    next_frontend_is_served(&t, 60, &data);
}

#[test]
fn corrupt_read_flips_the_last_byte_of_the_next_read_only() {
    let t = target();
    let bdev = attach(&t, "corrupt");
    let mut ch = bdev.open_channel().unwrap();
    let data = pattern(11, 1024);
    t.handle.faults.inject(Fault::CorruptRead);
    // The write before it is served normally: the fault waits for a read.
    write(&mut ch, 8, &data);
    assert_eq!(
        t.bytes(8 * 512, 1024),
        data,
        "the disk holds what was written"
    );
    let got = read(&mut ch, 8, 1024);
    let mut want = data.clone();
    want[1023] ^= 0xff;
    assert_eq!(got, want, "exactly the last byte is flipped");
    assert_eq!(read(&mut ch, 8, 1024), data, "one read per injection");
}
