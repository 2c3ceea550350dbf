//! vbdev's virtio-scsi initiator (`vbdev_bdev::virtio_scsi`) against our scsi target.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vbdev_bdev::virtio_scsi::{self, AttachOptions, ScsiController, ScsiEvent};
use vbdev_bdev::{Bdev, DmaBuf, IoChannel, IoError, IoStatus, Request, malloc, null};
use vbdev_target::BadUsed;
use vbdev_target::fault::Fault;
use vbdev_target::vscsi::{ScsiHandle, ScsiTargetConfig, start_scsi};
use vbdev_virtio::QueueError;

use crate::util::{
    dma, error_chain, malloc_bdev, pattern, read, read_injected_medium_error, run, write,
};

/// A scsi target in its own temporary directory, with the backing bdevs at hand.
struct Scsi {
    handle: ScsiHandle,
    /// (target, lun, backing bdev)
    disks: Vec<(u8, u16, Bdev)>,
    _dir: TempDir,
}

impl Scsi {
    fn start(disks: Vec<(u8, u16, Bdev)>, f: impl FnOnce(&mut ScsiTargetConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ScsiTargetConfig::new(dir.path().join("scsi.sock"));
        f(&mut cfg);
        let mut targets: Vec<(u8, Vec<(u16, Bdev)>)> = Vec::new();
        for (t, l, b) in &disks {
            match targets.iter_mut().find(|(x, _)| x == t) {
                Some((_, v)) => v.push((*l, b.clone())),
                None => targets.push((*t, vec![(*l, b.clone())])),
            }
        }
        let handle = start_scsi(cfg, targets).expect("scsi target starts");
        Self {
            handle,
            disks,
            _dir: dir,
        }
    }

    fn attach(&self, name: &str, opts: AttachOptions) -> ScsiController {
        match virtio_scsi::attach_vhost_user(name, &self.handle.socket, &opts) {
            Ok(c) => c,
            Err(e) => panic!("attach {name}: {}", error_chain(&e)),
        }
    }
}

fn opts(queues: u16, size: u16) -> AttachOptions {
    AttachOptions {
        num_queues: queues,
        queue_size: size,
        ..AttachOptions::default()
    }
}

#[test]
fn scan_finds_every_lun_of_several_targets_and_io_lands_on_each() {
    let s = Scsi::start(
        vec![
            (0, 0, malloc_bdev("a", 2048, 512, 0x11)),
            (0, 3, malloc_bdev("b", 4096, 512, 0x22)),
            (2, 0, malloc_bdev("c", 1024, 4096, 0x33)),
            (2, 1, malloc_bdev("d", 512, 4096, 0x44)),
        ],
        |_| {},
    );
    let ctrl = s.attach("Scsi0", opts(1, 128));
    let names: Vec<String> = ctrl.bdevs().iter().map(|b| b.name().to_owned()).collect();
    assert_eq!(names, ["Scsi0t0", "Scsi0t0l3", "Scsi0t2", "Scsi0t2l1"]);
    for (i, ((t, l, disk), bdev)) in s.disks.iter().zip(ctrl.bdevs()).enumerate() {
        assert_eq!(bdev.block_size(), disk.block_size(), "t{t} l{l}");
        assert_eq!(bdev.num_blocks(), disk.num_blocks(), "t{t} l{l}");
        assert_eq!(bdev.info().driver, "virtio_scsi");
        assert_eq!(
            bdev.info().serial.as_deref(),
            Some(disk.name()),
            "serial from VPD 0x80"
        );
        let uuid = bdev.info().uuid.clone().expect("UUID from VPD 0x83");
        assert_eq!(uuid.len(), 36);
        let bs = bdev.block_size() as usize;
        let mut ch = bdev.open_channel().unwrap();
        let data = pattern(i as u64, 8 * bs);
        write(&mut ch, 5, &data);
        assert_eq!(read(&mut ch, 5, data.len()), data);
        let mut dch = disk.open_channel().unwrap();
        assert_eq!(
            read(&mut dch, 5, data.len()),
            data,
            "backing bdev of t{t} l{l}"
        );
        let fill = [0x11u8, 0x22, 0x33, 0x44][i];
        assert_eq!(read(&mut ch, 0, bs), vec![fill; bs]);
        drop(ch);
        // Every handle of the LUN reports the same statistics: a fresh one from the
        // controller counts the I/O done through this one.
        let again = ctrl.bdev(bdev.name()).expect("still there");
        let st = again.iostat();
        assert_eq!((st.num_write_ops, st.num_read_ops), (1, 2), "t{t} l{l}");
        assert_eq!(st.bytes_written, 8 * bs as u64);
    }
}

/// The next event within 5 s.
fn next_event(rx: &Receiver<ScsiEvent>) -> ScsiEvent {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("an event within 5 s")
}

#[test]
fn disk_beyond_2_tib_uses_16_byte_cdbs_and_keeps_data_above_2_pow_32() {
    // 3 TiB of 512-byte blocks: LBAs above 2^32 need READ/WRITE(16). malloc allocates
    // only what is written.
    let blocks = 3u64 << 31;
    let big = malloc::create("big", blocks, 512).unwrap();
    let nul = null::create("nul", 5u64 << 30, 4096).unwrap();
    let s = Scsi::start(vec![(0, 0, big.clone()), (1, 0, nul)], |_| {});
    let ctrl = s.attach("Big", opts(1, 64));
    let b = ctrl.bdev("Bigt0").expect("LUN 0 of target 0");
    assert_eq!(b.num_blocks(), blocks);
    let mut ch = b.open_channel().unwrap();
    for lba in [(1u64 << 32) - 3, (1 << 32) + 7, blocks - 8] {
        let data = pattern(lba, 8 * 512);
        write(&mut ch, lba, &data);
        assert_eq!(read(&mut ch, lba, data.len()), data, "lba {lba}");
        let mut bch = big.open_channel().unwrap();
        assert_eq!(read(&mut bch, lba, data.len()), data, "backing lba {lba}");
    }
    let n = ctrl.bdev("Bigt1").expect("null LUN");
    assert_eq!((n.num_blocks(), n.block_size()), (5 << 30, 4096));
    let mut ch = n.open_channel().unwrap();
    assert_eq!(read(&mut ch, (5 << 30) - 1, 4096), vec![0; 4096]);
}

#[test]
fn large_transfers_split_at_max_sectors_and_unmap_write_zeroes_read_back_zero() {
    let disk = malloc_bdev("m", 8192, 512, 0x5a);
    let s = Scsi::start(vec![(0, 0, disk.clone())], |c| c.max_sectors = 64);
    let ctrl = s.attach("S", opts(1, 32));
    let b = ctrl.bdev("St0").unwrap();
    let details: std::collections::HashMap<_, _> = b.details().into_iter().collect();
    assert_eq!(details["max_transfer_bytes"], (64 * 512).to_string());
    assert!(b.info().unmap && b.info().write_zeroes);
    let mut ch = b.open_channel().unwrap();
    let data = pattern(9, 1 << 20); // 32 children of 64 sectors
    write(&mut ch, 3, &data);
    assert_eq!(read(&mut ch, 3, data.len()), data);
    let c = run(&mut ch, Request::unmap(100, 300, 1));
    assert_eq!(c.status, IoStatus::Success);
    let c = run(&mut ch, Request::write_zeroes(1000, 1400, 2));
    assert_eq!(c.status, IoStatus::Success);
    let c = run(&mut ch, Request::flush(3));
    assert_eq!(c.status, IoStatus::Success);
    let mut dch = disk.open_channel().unwrap();
    assert_eq!(read(&mut dch, 100, 300 * 512), vec![0; 300 * 512]);
    assert_eq!(read(&mut dch, 1000, 1400 * 512), vec![0; 1400 * 512]);
    assert_eq!(read(&mut dch, 99, 512), data[96 * 512..97 * 512]);
    assert_eq!(read(&mut dch, 2400, 512), vec![0x5a; 512]);
    assert_eq!(read(&mut dch, 2399, 512), vec![0; 512]);
}

#[test]
fn four_threads_on_four_queues_share_each_queue_between_two_luns() {
    let s = Scsi::start(
        vec![
            (0, 0, malloc_bdev("x", 16384, 512, 0)),
            (0, 1, malloc_bdev("y", 4096, 4096, 0)),
        ],
        |c| c.num_queues = 4,
    );
    let ctrl = s.attach("Q", opts(4, 64));
    let bdevs = ctrl.bdevs();
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            let bdevs = bdevs.clone();
            sc.spawn(move || {
                let mut chans: Vec<IoChannel> =
                    bdevs.iter().map(|b| b.open_channel().unwrap()).collect();
                for round in 0..20u64 {
                    for (i, ch) in chans.iter_mut().enumerate() {
                        let bs = bdevs[i].block_size() as u64;
                        let lba = t * 1024 + (round * 37) % 900;
                        let data = pattern(t << 32 | round << 8 | i as u64, (16 * bs) as usize);
                        write(ch, lba, &data);
                        assert_eq!(read(ch, lba, data.len()), data);
                    }
                }
            });
        }
    });
    // While four threads hold channels, a fifth finds no free queue and is told why.
    let barrier = std::sync::Barrier::new(5);
    let release = std::sync::Barrier::new(5);
    std::thread::scope(|sc| {
        for _ in 0..4 {
            let b = bdevs[0].clone();
            let (barrier, release) = (&barrier, &release);
            sc.spawn(move || {
                let _ch = b.open_channel().unwrap();
                barrier.wait();
                release.wait();
            });
        }
        barrier.wait();
        let e = sc
            .spawn(|| bdevs[1].open_channel().map(|_| ()))
            .join()
            .unwrap()
            .unwrap_err();
        release.wait();
        let msg = error_chain(&e);
        assert!(msg.contains("all 4 request queues are in use"), "{msg}");
    });
}

#[test]
fn queue_full_waits_in_order_and_every_request_completes() {
    let disk = malloc_bdev("m", 4096, 512, 0);
    let s = Scsi::start(vec![(0, 0, disk)], |_| {});
    let ctrl = s.attach("F", opts(1, 8));
    let b = ctrl.bdev("Ft0").unwrap();
    let mut ch = b.open_channel().unwrap();
    let n = 8 * 8u64;
    for i in 0..n {
        ch.submit(Request::write(
            i * 4,
            pattern(i, 2048).len() as u64 / 512,
            dma(&pattern(i, 2048)),
            i,
        ))
        .unwrap();
    }
    let mut seen = vec![false; n as usize];
    let mut out: [vbdev_bdev::Completion; 16] = Default::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = 0;
    while done < n {
        assert!(Instant::now() < deadline, "{done} of {n} completed");
        let k = ch.poll(&mut out);
        for c in &out[..k] {
            assert_eq!(c.status, IoStatus::Success);
            assert!(!seen[c.cookie as usize]);
            seen[c.cookie as usize] = true;
        }
        done += k as u64;
    }
    for i in [0u64, 17, 63] {
        assert_eq!(read(&mut ch, i * 4, 2048), pattern(i, 2048));
    }
}

#[test]
fn injected_check_condition_reaches_the_caller_with_its_sense_and_unit_attention_is_retried() {
    let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 1024, 512, 7))], |_| {});
    let ctrl = s.attach("E", opts(1, 32));
    let b = ctrl.bdev("Et0").unwrap();
    let mut ch = b.open_channel().unwrap();
    let c = read_injected_medium_error(&s.handle.faults, &mut ch, 512);
    let msg = match c.status {
        IoStatus::Failed(e) => e.to_string(),
        IoStatus::Success => unreachable!(),
    };
    assert!(
        msg.contains("MEDIUM ERROR") && msg.contains("0x11"),
        "{msg}"
    );
    // A UNIT ATTENTION (power on) is retried: the caller sees success.
    s.handle.faults.inject(Fault::ScsiSense {
        key: 0x6,
        asc: 0x29,
        ascq: 0x00,
    });
    assert_eq!(read(&mut ch, 0, 512), vec![7; 512]);
    // BUSY-like transient: NOT READY, becoming ready, retried too.
    s.handle.faults.inject(Fault::ScsiSense {
        key: 0x2,
        asc: 0x04,
        ascq: 0x01,
    });
    assert_eq!(read(&mut ch, 0, 512), vec![7; 512]);
}

/// Runs verified writes and reads on `b` from another thread until `stop`; returns
/// the number of rounds and the failures.
fn io_loop(
    b: Bdev,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let mut ch = b.open_channel().unwrap();
        let bs = b.block_size() as usize;
        let mut rounds = 0u64;
        let mut errors = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let lba = (rounds * 8) % 512;
            let data = pattern(rounds, 8 * bs);
            let c = run(
                &mut ch,
                Request::write(lba, data.len() as u64 / 512, dma(&data), 0),
            );
            if c.status != IoStatus::Success {
                errors.push(format!("write {rounds}: {:?}", c.status));
                continue;
            }
            let c = run(
                &mut ch,
                Request::read(
                    lba,
                    data.len() as u64 / 512,
                    DmaBuf::alloc(data.len()).unwrap(),
                    0,
                ),
            );
            match c.status {
                IoStatus::Success if c.buf.as_deref() == Some(&data[..]) => {}
                st => errors.push(format!("read {rounds}: {st:?}")),
            }
            rounds += 1;
        }
        (rounds, errors)
    })
}

#[test]
fn lun_reset_during_io_succeeds_and_io_goes_on_through_the_unit_attention() {
    let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 4096, 512, 0))], |_| {});
    let ctrl = s.attach("R", opts(1, 32));
    let b = ctrl.bdev("Rt0").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = io_loop(b.clone(), stop.clone());
    for _ in 0..5 {
        b.reset(Duration::from_secs(2)).expect("LUN reset answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, errors) = io.join().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(rounds > 0);
}

#[test]
fn hot_add_resize_and_hot_remove_events_during_io() {
    let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 4096, 512, 0))], |c| {
        c.num_queues = 2;
    });
    let ctrl = s.attach("H", opts(2, 32));
    let events = ctrl.subscribe();
    let b0 = ctrl.bdev("Ht0").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = io_loop(b0.clone(), stop.clone());

    // Hot-add LUN 2 of target 0 and target 3.
    let added = malloc_bdev("n", 2048, 4096, 0x66);
    s.handle.add_lun(0, 2, &added).unwrap();
    let ScsiEvent::Added(b2) = next_event(&events) else {
        panic!("expected Added")
    };
    assert_eq!(b2.name(), "Ht0l2");
    assert_eq!((b2.num_blocks(), b2.block_size()), (2048, 4096));
    let mut ch2 = b2.open_channel().unwrap();
    assert_eq!(read(&mut ch2, 7, 4096), vec![0x66; 4096]);

    // Shrink it: the bdev follows and refuses I/O past the new end; grow it back.
    s.handle.set_capacity(0, 2, 1024).unwrap();
    match next_event(&events) {
        ScsiEvent::Resized { name, num_blocks } => {
            assert_eq!((name.as_str(), num_blocks), ("Ht0l2", 1024));
        }
        e => panic!("expected Resized, got {e:?}"),
    }
    assert_eq!(b2.num_blocks(), 1024);
    let r = ch2.submit(Request::read(1500, 8, DmaBuf::alloc(4096).unwrap(), 0));
    assert!(r.is_err(), "read past the new end is refused");
    s.handle.set_capacity(0, 2, 2048).unwrap();
    match next_event(&events) {
        ScsiEvent::Resized { num_blocks, .. } => assert_eq!(num_blocks, 2048),
        e => panic!("expected Resized, got {e:?}"),
    }
    assert_eq!(read(&mut ch2, 1500, 4096), vec![0x66; 4096]);

    // Hot-remove: the bdev reports removed and refuses I/O.
    s.handle.remove_lun(0, 2).unwrap();
    match next_event(&events) {
        ScsiEvent::Removed { name } => assert_eq!(name, "Ht0l2"),
        e => panic!("expected Removed, got {e:?}"),
    }
    assert!(b2.is_removed());
    let r = ch2.submit(Request::read(0, 8, DmaBuf::alloc(4096).unwrap(), 0));
    assert!(r.is_err(), "I/O on a removed LUN is refused");
    assert_eq!(ctrl.bdevs().len(), 1);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, errors) = io.join().unwrap();
    assert!(errors.is_empty(), "LUN 0 unaffected: {errors:?}");
    assert!(rounds > 0);
}

#[test]
fn busy_task_set_full_and_retryable_responses_are_retried_other_statuses_fail() {
    use vbdev_virtio::scsi::response;
    let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 1024, 512, 9))], |_| {});
    let ctrl = s.attach("B", opts(1, 32));
    let b = ctrl.bdev("Bt0").unwrap();
    let mut ch = b.open_channel().unwrap();
    for f in [
        Fault::ScsiStatus(0x28), // TASK SET FULL
        Fault::ScsiStatus(0x28),
        Fault::ScsiStatus(0x08), // BUSY
        Fault::ScsiResponse(response::BUSY),
        Fault::ScsiResponse(response::TRANSPORT_FAILURE),
    ] {
        s.handle.faults.inject(f);
    }
    assert_eq!(
        read(&mut ch, 0, 512),
        vec![9; 512],
        "retried through five transient failures"
    );
    s.handle.faults.inject(Fault::ScsiStatus(0x18)); // RESERVATION CONFLICT
    let c = run(&mut ch, Request::read(0, 1, DmaBuf::alloc(512).unwrap(), 1));
    assert_eq!(c.status, IoStatus::Failed(IoError::ScsiStatus(0x18)));
    s.handle
        .faults
        .inject(Fault::ScsiResponse(response::TARGET_FAILURE));
    let c = run(&mut ch, Request::write(0, 1, dma(&[1; 512]), 2));
    assert_eq!(
        c.status,
        IoStatus::Failed(IoError::ScsiResponse(response::TARGET_FAILURE))
    );
    assert_eq!(
        read(&mut ch, 0, 512),
        vec![9; 512],
        "the failed write did not run"
    );
}

#[test]
fn a_target_that_stops_answering_fails_the_scan_within_the_command_timeout() {
    let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 1024, 512, 0))], |_| {});
    s.handle.faults.inject(Fault::StopAnswering);
    let t = Instant::now();
    let e = virtio_scsi::attach_vhost_user(
        "T",
        &s.handle.socket,
        &AttachOptions {
            cmd_timeout: Duration::from_millis(300),
            queue_size: 32,
            ..AttachOptions::default()
        },
    )
    .unwrap_err();
    let msg = error_chain(&e);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(msg.contains("did not complete within 300 ms"), "{msg}");
}

#[test]
fn a_burst_of_hot_adds_beyond_the_posted_event_buffers_ends_with_every_lun_found() {
    // More events than the initiator keeps buffers posted for: the target reports
    // EVENTS_MISSED when it runs out, and the initiator rescans; either way every LUN
    // must end up as a bdev, each announced once.
    let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 64, 512, 0))], |_| {});
    let ctrl = s.attach("M", opts(1, 32));
    let events = ctrl.subscribe();
    let n = 40u16;
    for l in 1..=n {
        let b = malloc_bdev(&format!("x{l}"), 64 + u64::from(l), 512, l as u8);
        s.handle.add_lun(0, l, &b).unwrap();
    }
    let mut added = std::collections::BTreeSet::new();
    while added.len() < usize::from(n) {
        match next_event(&events) {
            ScsiEvent::Added(b) => assert!(added.insert(b.name().to_owned()), "{} twice", b.name()),
            e => panic!("unexpected {e:?}"),
        }
    }
    let bdevs = ctrl.bdevs();
    assert_eq!(bdevs.len(), usize::from(n) + 1);
    for b in &bdevs[1..] {
        let l: u64 = b.name().rsplit('l').next().unwrap().parse().unwrap();
        assert_eq!(b.num_blocks(), 64 + l, "{}", b.name());
    }
}

fn status_of(ch: &mut IoChannel, req: Request) -> IoStatus {
    run(ch, req).status
}

#[test]
fn target_hang_up_mid_io_fails_every_outstanding_request_of_every_lun_and_the_next_frontend_is_served()
 {
    let s = Scsi::start(
        vec![
            (0, 0, malloc_bdev("a", 4096, 512, 0)),
            (0, 1, malloc_bdev("b", 4096, 512, 0)),
        ],
        |_| {},
    );
    let ctrl = s.attach("K", opts(1, 64));
    let bdevs = ctrl.bdevs();
    let mut chans: Vec<IoChannel> = bdevs.iter().map(|b| b.open_channel().unwrap()).collect();
    write(&mut chans[0], 0, &pattern(1, 4096));
    s.handle.faults.inject(Fault::CloseAfter(5));
    // Seven requests per channel: a scsi channel hands its staged requests to the queue
    // once eight are staged, so with more the target could serve five and hang up while
    // this loop still submits, and later submissions would be refused (device removed)
    // instead of being outstanding when it goes.
    let n = 14u64;
    for i in 0..n {
        let ch = &mut chans[(i % 2) as usize];
        ch.submit(Request::read(i * 8, 8, DmaBuf::alloc(4096).unwrap(), i))
            .unwrap();
    }
    let start = Instant::now();
    let (mut ok, mut removed) = (0, 0);
    for ch in &mut chans {
        while ch.pending() > 0 {
            let c = ch.wait_one().unwrap();
            match c.status {
                IoStatus::Success => ok += 1,
                IoStatus::Failed(IoError::Removed) => removed += 1,
                st => panic!("unexpected {st:?}"),
            }
        }
    }
    assert_eq!(ok + removed, n);
    assert!(ok <= 5 && removed >= n - 5, "ok {ok} removed {removed}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(ctrl.is_removed());
    assert!(bdevs.iter().all(|b| b.is_removed()));
    drop(chans);
    drop(bdevs);
    drop(ctrl);
    let again = s.attach("K2", opts(1, 64));
    let b = again.bdev("K2t0").unwrap();
    let mut ch = b.open_channel().unwrap();
    assert_eq!(read(&mut ch, 0, 4096), pattern(1, 4096));
}

#[test]
fn a_target_that_stops_answering_io_times_out_and_fails_the_controller() {
    let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 1024, 512, 0))], |_| {});
    let ctrl = s.attach(
        "T",
        AttachOptions {
            io_timeout: Duration::from_millis(500),
            queue_size: 32,
            ..AttachOptions::default()
        },
    );
    let b = ctrl.bdev("Tt0").unwrap();
    let mut ch = b.open_channel().unwrap();
    s.handle.faults.inject(Fault::StopAnswering);
    let start = Instant::now();
    let st = status_of(&mut ch, Request::read(0, 1, DmaBuf::alloc(512).unwrap(), 1));
    assert_eq!(st, IoStatus::Failed(IoError::TimedOut));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(b.is_removed() && ctrl.is_removed());
}

/// QEMU's virtio-scsi counts Data-Out in the used length; for a command without Data-In
/// the response decides and the length beyond the chain is only reported (once).
#[test]
fn a_too_long_used_length_on_a_write_is_let_through() {
    let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 1024, 512, 3))], |_| {});
    let ctrl = s.attach("W", opts(1, 32));
    let b = ctrl.bdev("Wt0").unwrap();
    let mut ch = b.open_channel().unwrap();
    s.handle.faults.inject(Fault::BadUsed(BadUsed::LenTooLarge));
    let data = pattern(9, 4096);
    write(&mut ch, 8, &data);
    s.handle.faults.clear();
    assert_eq!(read(&mut ch, 8, 4096), data);
    assert!(!b.is_removed());
}

#[test]
fn garbage_in_the_used_ring_is_a_protocol_error_and_a_bad_length_fails_one_request() {
    for (bad, whole_device) in [
        (BadUsed::IdOutOfRange, true),
        (BadUsed::IdxJump, true),
        (BadUsed::LenTooLarge, false),
    ] {
        let s = Scsi::start(vec![(0, 0, malloc_bdev("m", 1024, 512, 3))], |_| {});
        let ctrl = s.attach("G", opts(1, 32));
        let b = ctrl.bdev("Gt0").unwrap();
        let mut ch = b.open_channel().unwrap();
        s.handle.faults.inject(Fault::BadUsed(bad));
        let st = status_of(&mut ch, Request::read(0, 1, DmaBuf::alloc(512).unwrap(), 1));
        match (bad, st) {
            (
                BadUsed::IdOutOfRange,
                IoStatus::Failed(IoError::Protocol(QueueError::UsedIdOutOfRange { .. })),
            )
            | (
                BadUsed::IdxJump,
                IoStatus::Failed(IoError::Protocol(QueueError::UsedIdxJump { .. })),
            )
            | (
                BadUsed::LenTooLarge,
                IoStatus::Failed(IoError::Protocol(QueueError::UsedLenTooLarge { .. })),
            ) => {}
            (bad, st) => panic!("{bad:?}: {st:?}"),
        }
        assert_eq!(b.is_removed(), whole_device, "{bad:?}");
        if !whole_device {
            assert_eq!(read(&mut ch, 0, 512), vec![3; 512]);
        }
    }
}

#[test]
fn corrupt_read_flips_the_last_byte_of_the_next_scsi_read() {
    let s = Scsi::start(vec![(0, 0, malloc_bdev("cr", 256, 512, 0))], |_| {});
    let c = s.attach("CorruptScsi", opts(1, 64));
    let bdev = c.bdevs().into_iter().next().expect("one LUN");
    let mut ch = bdev.open_channel().unwrap();
    let data = pattern(5, 2048);
    s.handle.faults.inject(Fault::CorruptRead);
    write(&mut ch, 4, &data);
    let got = read(&mut ch, 4, 2048);
    let mut want = data.clone();
    want[2047] ^= 0xff;
    assert_eq!(got, want, "exactly the last byte is flipped");
    assert_eq!(read(&mut ch, 4, 2048), data, "one read per injection");
    c.detach();
}

#[test]
fn a_rescan_that_cannot_reach_a_target_keeps_its_bdevs() {
    use vbdev_virtio::scsi::response;
    let s = Scsi::start(
        vec![
            (0, 0, malloc_bdev("a", 1024, 512, 1)),
            (0, 1, malloc_bdev("b", 1024, 512, 2)),
        ],
        |_| {},
    );
    let ctrl = s.attach("U", opts(1, 32));
    let events = ctrl.subscribe();
    // Every attempt of the rescan's REPORT LUNS to target 0 fails: the target answers,
    // but not usably. Its LUNs must stay as they are.
    for _ in 0..5 {
        s.handle
            .faults
            .inject(Fault::ScsiResponse(response::TARGET_FAILURE));
    }
    ctrl.rescan().unwrap();
    let names: Vec<String> = ctrl.bdevs().iter().map(|b| b.name().to_owned()).collect();
    assert_eq!(names, ["Ut0", "Ut0l1"]);
    assert!(events.try_recv().is_err(), "no bdev was removed or added");
    // The next rescan reaches it and changes nothing either.
    ctrl.rescan().unwrap();
    assert!(events.try_recv().is_err());
    let b = ctrl.bdev("Ut0l1").unwrap();
    let mut ch = b.open_channel().unwrap();
    assert_eq!(read(&mut ch, 0, 512), vec![2; 512]);
}
