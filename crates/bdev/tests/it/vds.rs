//! The helper `vbdev_testkit::vds` (rust-vmm's vhost-device-scsi as a third-party
//! vhost-user-scsi target) checked on its own, then vbdev's virtio-scsi initiator against it.

use std::fs;
use std::time::Duration;

use vbdev_testkit::vds::*;

#[test]
fn vds_starts_and_exits_when_killed() {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::process::ExitStatusExt;

    let images = tempfile::tempdir().unwrap();
    let lun0 = images.path().join("lun0.raw");
    let lun1 = images.path().join("lun1.raw");
    create_image(&lun0, 1 << 20, 0);
    create_image(&lun1, (64 << 10) + 512, 1);

    let mut vds = Vds::start(&[&lun0, &lun1]);
    let meta = fs::symlink_metadata(vds.socket()).expect("socket exists");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert!(vds.is_listening(), "{}", vds.log_tail());
    assert!(vds.is_running());
    // Without a frontend it stays up.
    assert_eq!(vds.wait_exit(Duration::from_millis(200)), None);
    assert_eq!(vds.images(), [lun0.clone(), lun1.clone()]);

    let status = vds.kill();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(!vds.is_running());
    assert_eq!(vds.wait_exit(Duration::ZERO), Some(status));
    assert!(!vds.is_listening());

    // vds opened the images read-write but must not have changed them.
    assert_image_pattern(&lun0, 0, 0, 1 << 20);
    assert_image_pattern(&lun1, 1, 0, (64 << 10) + 512);

    let socket = vds.socket().to_path_buf();
    let dir = vds.dir().to_path_buf();
    drop(vds);
    assert!(!socket.exists());
    assert!(!dir.exists());
}

#[test]
#[should_panic(expected = "Opening image")]
fn vds_start_panics_with_the_log_when_an_image_is_missing() {
    // vds panics with "Opening image: ..." before it binds its socket; the
    // helper's panic message carries that from the log.
    let images = tempfile::tempdir().unwrap();
    let _vds = Vds::start(&[&images.path().join("missing.raw")]);
}

#[test]
fn vds_image_pattern_depends_on_seed_and_position_at_any_alignment() {
    let images = tempfile::tempdir().unwrap();
    let path = images.path().join("img.raw");
    create_image(&path, 8 * BLOCK_SIZE, 7);
    assert_eq!(fs::metadata(&path).unwrap().len(), 8 * BLOCK_SIZE);

    let whole = image_pattern(7, 0, 4096);
    assert_eq!(read_image(&path, 0, 4096), whole);
    for (off, len) in [(0, 1), (3, 5), (5, 13), (511, 2), (1000, 3000), (4095, 1)] {
        assert_eq!(image_pattern(7, off, len), whole[off as usize..][..len]);
        assert_eq!(read_image(&path, off, len), whole[off as usize..][..len]);
    }
    // Another seed, another block: different data.
    assert_ne!(image_pattern(8, 0, 512), whole[..512]);
    assert_ne!(whole[..512], whole[512..1024]);
    assert_image_pattern(&path, 7, 100, 3000);
    let wrong = std::panic::catch_unwind(|| assert_image_pattern(&path, 8, 0, 512));
    assert!(wrong.is_err());
}

// ---------------------------------------------------------------------------
// The virtio-scsi initiator against vds
// ---------------------------------------------------------------------------

/// Integration tests of `vbdev_bdev::virtio_scsi` against vds. They live in
/// this module so that only it uses vbdev crates: the helper above stays
/// shareable verbatim.
///
/// Every test starts its own vds (one frontend per process), attaches with
/// one request queue of 128 descriptors (the most vds allows), and ends by
/// detaching, waiting for vds to exit by itself and checking the image files.
///
/// DMA buffers are allocated before the attach: vds lacks
/// `CONFIGURE_MEM_SLOTS`, so a DMA region created after the attach (another
/// test of this binary may fill the existing ones for a while) would not be
/// visible to it. Every region that exists at the attach is shared.
mod scsi {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use vbdev_bdev::Request;
    use vbdev_bdev::virtio_scsi::{self, AttachOptions, ScsiController};
    use vbdev_bdev::{
        Bdev, Completion, DmaBuf, Error, IoChannel, IoError, IoOp, IoStatus, RejectReason,
    };

    use super::{BLOCK_SIZE, Vds, assert_image_pattern, create_image, image_pattern, read_image};
    use crate::util::{dma, error_chain, pattern, run};

    const MIB: u64 = 1 << 20;
    /// How long vds may take to exit after the detach.
    const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The most blocks a READ/WRITE(10) carries.
    const MAX_BLOCKS_10: u64 = 65_535;

    fn opts() -> AttachOptions {
        AttachOptions {
            num_queues: 1,
            queue_size: 128,
            ..AttachOptions::default()
        }
    }

    /// Creates one image per `(size, seed)` in `dir`, named `lun<i>.raw`.
    fn images(dir: &Path, specs: &[(u64, u8)]) -> Vec<PathBuf> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(size, seed))| {
                let p = dir.join(format!("lun{i}.raw"));
                create_image(&p, size, seed);
                p
            })
            .collect()
    }

    fn attach(vds: &Vds, name: &str) -> ScsiController {
        virtio_scsi::attach_vhost_user(name, vds.socket(), &opts())
            .unwrap_or_else(|e| panic!("attach {name}: {}", error_chain(&e)))
    }

    fn bdev(ctrl: &ScsiController, name: &str) -> Bdev {
        ctrl.bdev(name).unwrap_or_else(|| {
            let names: Vec<_> = ctrl.bdevs().iter().map(|b| b.name().to_owned()).collect();
            panic!("no bdev {name}; the controller has {names:?}")
        })
    }

    fn detail(b: &Bdev, key: &str) -> String {
        b.details()
            .into_iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("{} has no detail {key:?}", b.name()))
            .1
    }

    /// Detaches the controller (the caller has dropped its channels), then
    /// waits for vds to exit by itself, which it does when its only frontend
    /// disconnects, with status 0.
    fn detach_and_wait_exit(ctrl: ScsiController, vds: &mut Vds) {
        ctrl.detach();
        drop(ctrl);
        let start = Instant::now();
        let Some(status) = vds.wait_exit(EXIT_TIMEOUT) else {
            panic!(
                "vds is still running {EXIT_TIMEOUT:?} after the detach\n{}",
                vds.log_tail()
            );
        };
        assert!(
            status.success(),
            "vds exited with {status}\n{}",
            vds.log_tail()
        );
        eprintln!("vds exited {:?} after the detach", start.elapsed());
    }

    /// Asserts `got == want`, naming the first differing byte instead of
    /// printing megabytes.
    fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        if got == want {
            return; // memcmp, fast in debug builds too
        }
        if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
            panic!(
                "{what}: differs at byte {i} (block {} of the range): got {:#04x}, want {:#04x}",
                i as u64 / BLOCK_SIZE,
                got[i],
                want[i]
            );
        }
    }

    /// Submits one request and waits for it; asserts success.
    fn run_ok(ch: &mut IoChannel, req: Request, what: &str) -> Completion {
        let cookie = req.cookie;
        let c = run(ch, req);
        assert_eq!(c.status, IoStatus::Success, "{what}");
        assert_eq!(c.cookie, cookie, "{what}: cookie");
        c
    }

    /// Polls both channels until `want[i]` completions came from channel `i`,
    /// at most 10 s.
    fn collect_both(mut chs: [&mut IoChannel; 2], want: [usize; 2]) -> [Vec<Completion>; 2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done: [Vec<Completion>; 2] = [Vec::new(), Vec::new()];
        let mut out: Vec<Completion> = (0..32).map(|_| Completion::default()).collect();
        loop {
            let mut got = 0;
            for (i, ch) in chs.iter_mut().enumerate() {
                let n = ch.poll(&mut out);
                done[i].extend(out[..n].iter_mut().map(std::mem::take));
                got += n;
            }
            if done[0].len() >= want[0] && done[1].len() >= want[1] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after 10 s: {} of {} and {} of {} completions",
                done[0].len(),
                want[0],
                done[1].len(),
                want[1]
            );
            if got == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        assert_eq!(done[0].len(), want[0], "completions of channel 0");
        assert_eq!(done[1].len(), want[1], "completions of channel 1");
        done
    }

    /// One write of test 1: LUN, first block, data.
    struct Case {
        lun: usize,
        block: u64,
        data: Vec<u8>,
    }

    impl Case {
        fn blocks(&self) -> u64 {
            self.data.len() as u64 / BLOCK_SIZE
        }
    }

    #[test]
    fn vds_two_images_are_two_luns_of_target_0_with_verified_io_in_the_images() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let sizes = [64 * MIB, 32 * MIB];
        let imgs = images(dir.path(), &[(sizes[0], 0), (sizes[1], 1)]);
        let blocks = sizes.map(|s| s / BLOCK_SIZE);
        // Odd first blocks; ranges at least 2 blocks apart, so every range
        // has untouched neighbours (but the ones at a LUN's end).
        let spec: [(usize, u64, u64); 12] = [
            (0, 1, 1),
            (0, 7, 3),
            (0, 4_097, 9),
            (0, 10_001, 255),
            (0, 20_001, 2_049),
            // More than one WRITE(10)/READ(10) carries: split in two.
            (0, 30_001, MAX_BLOCKS_10 + 4_466),
            (0, blocks[0] - 1, 1),
            (1, 1, 1),
            (1, 333, 17),
            (1, 5_001, 4_097),
            (1, 40_001, 20_001),
            (1, blocks[1] - 3, 3),
        ];
        let cases: Vec<Case> = spec
            .iter()
            .enumerate()
            .map(|(i, &(lun, block, n))| Case {
                lun,
                block,
                // Another seed than the images': no word of it is in them.
                data: image_pattern(
                    0x80 + i as u8,
                    block * BLOCK_SIZE,
                    (n * BLOCK_SIZE) as usize,
                ),
            })
            .collect();
        // Read-backs cover one neighbour block on each side (where there is one).
        let span = |c: &Case| {
            let first = c.block.saturating_sub(1);
            let end = (c.block + c.blocks() + 1).min(blocks[c.lun]);
            (first, end)
        };
        let mut wbufs: Vec<Option<DmaBuf>> = cases.iter().map(|c| Some(dma(&c.data))).collect();
        let mut rbufs: Vec<Option<DmaBuf>> = cases
            .iter()
            .map(|c| {
                let (first, end) = span(c);
                Some(DmaBuf::alloc(((end - first) * BLOCK_SIZE) as usize).unwrap())
            })
            .collect();

        let mut vds = Vds::start(&[&imgs[0], &imgs[1]]);
        let prepared = t0.elapsed();
        let ctrl = attach(&vds, "vds1");
        let attached = t0.elapsed();
        let names: Vec<_> = ctrl.bdevs().iter().map(|b| b.name().to_owned()).collect();
        assert_eq!(names, ["vds1t0", "vds1t0l1"]);
        let luns = ctrl.luns();
        assert_eq!(luns.len(), 2, "{luns:?}");
        for (i, l) in luns.iter().enumerate() {
            assert_eq!((l.target, l.lun), (0, i as u16), "{l:?}");
            assert_eq!(l.vendor, "rust-vmm", "{l:?}");
            assert_eq!(l.product, "vhost-user-scsi", "{l:?}");
        }
        let cdetails = ctrl.details();
        let cd = |k: &str| {
            cdetails
                .iter()
                .find(|(kk, _)| *kk == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(cd("num_queues"), Some("1"), "{cdetails:?}");
        assert_eq!(cd("max_sectors"), Some("65535"), "{cdetails:?}");
        assert_eq!(cd("vq_size"), Some("128"), "{cdetails:?}");
        let bdevs = [bdev(&ctrl, "vds1t0"), bdev(&ctrl, "vds1t0l1")];
        for (b, n) in bdevs.iter().zip(blocks) {
            let info = b.info();
            assert_eq!(info.driver, "virtio_scsi");
            assert_eq!(b.block_size(), 512, "{}", b.name());
            assert_eq!(b.num_blocks(), n, "{}", b.name());
            assert_eq!(info.num_blocks, n, "{}", b.name());
            assert!(
                !info.read_only && info.flush && info.write_zeroes,
                "{info:?}"
            );
            assert_eq!((info.num_queues, info.queue_size), (1, 128), "{info:?}");
            assert_eq!(
                detail(b, "max_transfer_bytes"),
                (MAX_BLOCKS_10 * 512).to_string()
            );
        }
        // Two channels on this thread: both on the one request queue.
        let mut chs = [
            bdevs[0].open_channel().unwrap(),
            bdevs[1].open_channel().unwrap(),
        ];

        for (i, c) in cases.iter().enumerate() {
            let buf = wbufs[i].take().unwrap();
            let what = format!(
                "write of {} blocks at {} on LUN {}",
                c.blocks(),
                c.block,
                c.lun
            );
            let done = run_ok(
                &mut chs[c.lun],
                Request::write(c.block, buf.len() as u64 / BLOCK_SIZE, buf, i as u64),
                &what,
            );
            wbufs[i] = done.buf;
        }
        for (lun, ch) in chs.iter_mut().enumerate() {
            let done = run_ok(ch, Request::flush(1000 + lun as u64), "flush");
            assert!(done.buf.is_none());
        }
        for (i, c) in cases.iter().enumerate() {
            let (first, end) = span(c);
            let buf = rbufs[i].take().unwrap();
            let what = format!(
                "read-back of {} blocks at {} on LUN {}",
                c.blocks(),
                c.block,
                c.lun
            );
            let done = run_ok(
                &mut chs[c.lun],
                Request::read(first, buf.len() as u64 / BLOCK_SIZE, buf, 2000 + i as u64),
                &what,
            );
            let got = done.buf.unwrap();
            let seed = c.lun as u8;
            let mut want = image_pattern(
                seed,
                first * BLOCK_SIZE,
                ((c.block - first) * BLOCK_SIZE) as usize,
            );
            want.extend_from_slice(&c.data);
            let after = c.block + c.blocks();
            want.extend(image_pattern(
                seed,
                after * BLOCK_SIZE,
                ((end - after) * BLOCK_SIZE) as usize,
            ));
            assert_bytes(&got, &want, &what);
        }
        let io_done = t0.elapsed();

        drop(chs);
        drop(bdevs);
        detach_and_wait_exit(ctrl, &mut vds);
        for c in &cases {
            let img = &imgs[c.lun];
            let seed = c.lun as u8;
            let what = format!(
                "image {} at block {}+{}",
                img.display(),
                c.block,
                c.blocks()
            );
            assert_bytes(
                &read_image(img, c.block * BLOCK_SIZE, c.data.len()),
                &c.data,
                &what,
            );
            // Up to eight blocks on each side that no case wrote.
            let after = c.block + c.blocks();
            let near =
                (c.block.saturating_sub(8)..c.block).chain(after..(after + 8).min(blocks[c.lun]));
            for b in near {
                let written = cases
                    .iter()
                    .any(|o| o.lun == c.lun && (o.block..o.block + o.blocks()).contains(&b));
                if !written {
                    assert_image_pattern(img, seed, b * BLOCK_SIZE, BLOCK_SIZE as usize);
                }
            }
        }
        eprintln!(
            "images and vds ready {prepared:?}, attached {attached:?}, I/O done {io_done:?}, \
             checked {:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn vds_write_zeroes_goes_out_as_write_same_16_and_unmap_changes_nothing() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        const SIZE: u64 = 16 * MIB;
        const SEED: u8 = 3;
        let blocks = SIZE / BLOCK_SIZE;
        let imgs = images(dir.path(), &[(SIZE, SEED)]);
        // (first block, blocks): a range in the middle, and the last blocks.
        let zeroed = [(1_001, 3_001), (blocks - 3, 3)];
        let unmapped = (5_001, 64);
        // Read-backs cover one neighbour block on each side (none after the end).
        let span = |(first, n): (u64, u64)| (first - 1, (first + n + 1).min(blocks));
        let rbufs: Vec<DmaBuf> = zeroed
            .iter()
            .chain([&unmapped])
            .map(|&r| {
                let (from, end) = span(r);
                DmaBuf::alloc(((end - from) * BLOCK_SIZE) as usize).unwrap()
            })
            .collect();

        let mut vds = Vds::start(&[&imgs[0]]);
        let ctrl = attach(&vds, "vds2");
        let b = bdev(&ctrl, "vds2t0");
        let info = b.info().clone();
        assert!(info.write_zeroes, "{info:?}");
        assert_eq!(detail(&b, "write_zeroes_method"), "WRITE SAME(16)");
        let mut ch = b.open_channel().unwrap();

        for (i, &(first, n)) in zeroed.iter().enumerate() {
            run_ok(
                &mut ch,
                Request::write_zeroes(first, n, i as u64),
                &format!("write-zeroes of {n} blocks at {first}"),
            );
        }
        // VPD page B2 claims LBPU, but vds rejects UNMAP, and its REPORT
        // SUPPORTED OPERATION CODES does not list it. The initiator either
        // believes the latter and does not offer unmap (what it does now), or
        // sends UNMAP and reports ILLEGAL REQUEST. Nothing may be unmapped.
        let unmap = Request::unmap(unmapped.0, unmapped.1, 7);
        if info.unmap {
            let c = run(&mut ch, unmap);
            assert_eq!(c.cookie, 7);
            match c.status {
                IoStatus::Failed(IoError::ScsiCheckCondition { sense }) => {
                    assert!(
                        sense.sense().is_illegal_request(),
                        "ILLEGAL REQUEST expected: {:?}",
                        c.status
                    );
                }
                s => panic!("unmap: {s:?}, not CHECK CONDITION with ILLEGAL REQUEST"),
            }
            eprintln!("unmap offered, and failed with {:?}", c.status);
        } else {
            assert_eq!(detail(&b, "max_unmap_blocks"), "0");
            let r = ch.submit(unmap).expect_err("unmap is not offered");
            assert_eq!(
                r.error,
                RejectReason::Unsupported { op: IoOp::Unmap },
                "{r}"
            );
            assert_eq!(r.request.cookie, 7, "the request is given back");
            assert_eq!(ch.pending(), 0, "nothing was sent");
            eprintln!("unmap not offered");
        }
        run_ok(&mut ch, Request::flush(8), "flush");

        let reads = zeroed.iter().copied().chain([unmapped]);
        for (i, ((first, n), buf)) in reads.zip(rbufs).enumerate() {
            let (from, end) = span((first, n));
            let what = format!("read-back of {n} blocks at {first}");
            let got = run_ok(
                &mut ch,
                Request::read(from, buf.len() as u64 / BLOCK_SIZE, buf, 10 + i as u64),
                &what,
            )
            .buf
            .unwrap();
            let want: Vec<u8> = if (first, n) == unmapped {
                image_pattern(
                    SEED,
                    from * BLOCK_SIZE,
                    ((end - from) * BLOCK_SIZE) as usize,
                )
            } else {
                let mut w = image_pattern(SEED, from * BLOCK_SIZE, BLOCK_SIZE as usize);
                w.resize((w.len() as u64 + n * BLOCK_SIZE) as usize, 0);
                w.extend(image_pattern(
                    SEED,
                    (first + n) * BLOCK_SIZE,
                    ((end - first - n) * BLOCK_SIZE) as usize,
                ));
                w
            };
            assert_bytes(&got, &want, &what);
        }

        drop(ch);
        drop(b);
        detach_and_wait_exit(ctrl, &mut vds);
        let img = &imgs[0];
        for &(first, n) in &zeroed {
            let got = read_image(img, first * BLOCK_SIZE, (n * BLOCK_SIZE) as usize);
            if let Some(i) = got.iter().position(|&x| x != 0) {
                panic!(
                    "image byte {} is {:#04x}, not zero",
                    first * BLOCK_SIZE + i as u64,
                    got[i]
                );
            }
            assert_image_pattern(img, SEED, (first - 8) * BLOCK_SIZE, 8 * BLOCK_SIZE as usize);
            let after = first + n;
            let end = (after + 8).min(blocks);
            assert_image_pattern(
                img,
                SEED,
                after * BLOCK_SIZE,
                ((end - after) * BLOCK_SIZE) as usize,
            );
        }
        // The unmap range and its surroundings are untouched.
        assert_image_pattern(
            img,
            SEED,
            (unmapped.0 - 8) * BLOCK_SIZE,
            ((unmapped.1 + 16) * BLOCK_SIZE) as usize,
        );
        eprintln!("done in {:?}", t0.elapsed());
    }

    #[test]
    fn vds_lun_reset_times_out_on_the_silent_control_queue_and_io_goes_on() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        const SIZE: u64 = 8 * MIB;
        const SEED: u8 = 4;
        const TIMEOUT: Duration = Duration::from_millis(300);
        const N: u64 = 8;
        const LEN: usize = 16 << 10;
        const BLOCKS: u64 = LEN as u64 / BLOCK_SIZE;
        let imgs = images(dir.path(), &[(SIZE, SEED)]);
        // Request i writes LEN bytes at block 3 + 64 * i.
        let at = |i: u64| 3 + 64 * i;
        let data: Vec<Vec<u8>> = (0..N).map(|i| pattern(300 + i, LEN)).collect();
        let wbufs: Vec<DmaBuf> = data.iter().map(|d| dma(d)).collect();
        let mut rbuf = Some(DmaBuf::alloc(LEN).unwrap());

        let mut vds = Vds::start(&[&imgs[0]]);
        let ctrl = attach(&vds, "vds3");
        let b = bdev(&ctrl, "vds3t0");
        let mut ch = b.open_channel().unwrap();
        let mut wbufs = wbufs.into_iter();
        // Before the reset: one write, and the rest in flight during it.
        run_ok(
            &mut ch,
            Request::write(at(0), BLOCKS, wbufs.next().unwrap(), 0),
            "write 0",
        );
        for (i, buf) in (1..).zip(wbufs) {
            ch.submit(Request::write(at(i), BLOCKS, buf, i)).unwrap();
        }
        let mut out: Vec<Completion> = (0..8).map(|_| Completion::default()).collect();
        let mut done = ch.poll(&mut out); // publishes them

        for attempt in 0..2 {
            let start = Instant::now();
            let e = b
                .reset(TIMEOUT)
                .expect_err("vds never answers the control queue");
            let took = start.elapsed();
            match &e {
                Error::Reset { name, why } => {
                    assert_eq!(name, "vds3t0");
                    assert!(why.contains("no answer"), "{why}");
                }
                e => panic!("reset {attempt}: not Error::Reset: {}", error_chain(e)),
            }
            assert!(took >= TIMEOUT, "reset {attempt} gave up after {took:?}");
            assert!(
                took < Duration::from_secs(5),
                "reset {attempt} took {took:?}"
            );
            eprintln!("reset {attempt} failed after {took:?}: {e}");
        }
        assert!(!b.is_removed() && !ch.is_removed());

        // The writes in flight during the resets complete.
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &out[..done] {
            assert_eq!(c.status, IoStatus::Success, "write {}", c.cookie);
        }
        while done < N as usize - 1 {
            assert!(Instant::now() < deadline, "{done} of {} writes done", N - 1);
            let n = ch.poll(&mut out);
            for c in &out[..n] {
                assert_eq!(c.status, IoStatus::Success, "write {}", c.cookie);
            }
            done += n;
            if n == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        // New I/O after the resets.
        for i in 0..N {
            let buf = rbuf.take().unwrap();
            let got = run_ok(
                &mut ch,
                Request::read(at(i), buf.len() as u64 / BLOCK_SIZE, buf, 100 + i),
                "read",
            )
            .buf
            .unwrap();
            assert_bytes(&got, &data[i as usize], &format!("read-back of write {i}"));
            rbuf = Some(got);
        }
        let mut buf = rbuf.take().unwrap();
        buf.copy_from_slice(&pattern(399, LEN));
        run_ok(
            &mut ch,
            Request::write(at(N), buf.len() as u64 / BLOCK_SIZE, buf, 200),
            "write after the resets",
        );
        run_ok(&mut ch, Request::flush(201), "flush after the resets");

        drop(ch);
        drop(b);
        detach_and_wait_exit(ctrl, &mut vds);
        for i in 0..=N {
            let want = if i < N {
                data[i as usize].clone()
            } else {
                pattern(399, LEN)
            };
            let got = read_image(&imgs[0], at(i) * BLOCK_SIZE, LEN);
            assert_bytes(&got, &want, &format!("image at write {i}"));
            let after = at(i) * BLOCK_SIZE + LEN as u64;
            assert_image_pattern(&imgs[0], SEED, after, BLOCK_SIZE as usize);
        }
        assert_image_pattern(&imgs[0], SEED, 0, (3 * BLOCK_SIZE) as usize);
        eprintln!("done in {:?}", t0.elapsed());
    }

    #[test]
    fn vds_two_luns_share_the_one_request_queue_from_one_thread() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        const SIZE: u64 = 8 * MIB;
        const SEEDS: [u8; 2] = [5, 6];
        // Per LUN: more requests than the ring has descriptors.
        const N: u64 = 96;
        let imgs = images(dir.path(), &[(SIZE, SEEDS[0]), (SIZE, SEEDS[1])]);
        // Request i of either LUN: 1 to 64 blocks at block 1 + 128 * i; the
        // same places on both LUNs, different data.
        let at = |i: u64| 1 + 128 * i;
        let len = |i: u64| ((i * 37) % 64 + 1) * BLOCK_SIZE;
        let data: [Vec<Vec<u8>>; 2] = [0u64, 1].map(|lun| {
            (0..N)
                .map(|i| pattern(1000 * (lun + 1) + i, len(i) as usize))
                .collect()
        });
        let wbufs: [Vec<DmaBuf>; 2] = [0, 1].map(|lun| data[lun].iter().map(|d| dma(d)).collect());
        let rbufs: [Vec<DmaBuf>; 2] = [0, 1].map(|_| {
            (0..N)
                .map(|i| DmaBuf::alloc(len(i) as usize).unwrap())
                .collect()
        });
        let cookie = |lun: usize, i: u64| ((lun as u64) << 32) | i;

        let mut vds = Vds::start(&[&imgs[0], &imgs[1]]);
        let ctrl = attach(&vds, "vds4");
        let bdevs = [bdev(&ctrl, "vds4t0"), bdev(&ctrl, "vds4t0l1")];
        let [mut ch0, mut ch1] = [0, 1].map(|l| bdevs[l].open_channel().unwrap());
        // Both channels took this thread's queue, the only one: another thread
        // gets none.
        let other = bdevs[1].clone();
        let e = std::thread::spawn(move || other.open_channel().map(drop))
            .join()
            .unwrap()
            .expect_err("the one request queue belongs to this thread");
        assert!(matches!(e, Error::NoFreeQueue { queues: 1, .. }), "{e}");

        // Writes: all 2 * N submitted alternately before any poll; more than
        // the ring holds, so some wait in the channels (staged or in their FIFOs).
        let mut w = wbufs.map(Vec::into_iter);
        for i in 0..N {
            ch0.submit(Request::write(
                at(i),
                len(i) / BLOCK_SIZE,
                w[0].next().unwrap(),
                cookie(0, i),
            ))
            .unwrap();
            ch1.submit(Request::write(
                at(i),
                len(i) / BLOCK_SIZE,
                w[1].next().unwrap(),
                cookie(1, i),
            ))
            .unwrap();
        }
        drop(w);
        assert_eq!(ch0.pending() + ch1.pending(), 2 * N as usize);
        let writes = collect_both([&mut ch0, &mut ch1], [N as usize; 2]);
        for (lun, done) in writes.iter().enumerate() {
            let mut seen = vec![false; N as usize];
            for c in done {
                assert_eq!(
                    c.status,
                    IoStatus::Success,
                    "LUN {lun} write {:#x}",
                    c.cookie
                );
                assert_eq!(
                    c.cookie >> 32,
                    lun as u64,
                    "channel {lun} got {:#x}",
                    c.cookie
                );
                let i = (c.cookie & 0xffff_ffff) as usize;
                assert!(
                    !std::mem::replace(&mut seen[i], true),
                    "cookie {:#x} twice",
                    c.cookie
                );
            }
        }

        // Reads: submitted alternately, polling both channels every 8
        // submissions, so completions arrive while the other LUN submits.
        let mut r = rbufs.map(Vec::into_iter);
        let mut done: [Vec<Completion>; 2] = [Vec::new(), Vec::new()];
        let mut out: Vec<Completion> = (0..32).map(|_| Completion::default()).collect();
        for i in 0..N {
            ch1.submit(Request::read(
                at(i),
                len(i) / BLOCK_SIZE,
                r[1].next().unwrap(),
                cookie(1, i),
            ))
            .unwrap();
            ch0.submit(Request::read(
                at(i),
                len(i) / BLOCK_SIZE,
                r[0].next().unwrap(),
                cookie(0, i),
            ))
            .unwrap();
            if i % 8 == 7 {
                for (lun, ch) in [&mut ch0, &mut ch1].into_iter().enumerate() {
                    let n = ch.poll(&mut out);
                    done[lun].extend(out[..n].iter_mut().map(std::mem::take));
                }
            }
        }
        drop(r);
        let left = [N as usize - done[0].len(), N as usize - done[1].len()];
        let rest = collect_both([&mut ch0, &mut ch1], left);
        for (lun, rest) in rest.into_iter().enumerate() {
            done[lun].extend(rest);
        }
        for (lun, done) in done.iter_mut().enumerate() {
            assert_eq!(done.len(), N as usize);
            done.sort_by_key(|c| c.cookie);
            for (i, c) in done.iter_mut().enumerate() {
                assert_eq!(c.cookie, cookie(lun, i as u64), "LUN {lun}: cookies");
                assert_eq!(c.status, IoStatus::Success, "LUN {lun} read {i}");
                let got = c.buf.take().unwrap();
                assert_bytes(&got, &data[lun][i], &format!("LUN {lun} read {i}"));
            }
        }

        drop((ch0, ch1));
        drop(bdevs);
        detach_and_wait_exit(ctrl, &mut vds);
        for (lun, img) in imgs.iter().enumerate() {
            for i in 0..N {
                let off = at(i) * BLOCK_SIZE;
                let got = read_image(img, off, len(i) as usize);
                assert_bytes(
                    &got,
                    &data[lun][i as usize],
                    &format!("image of LUN {lun} at write {i}"),
                );
                // Block before and block after are untouched.
                assert_image_pattern(img, SEEDS[lun], off - BLOCK_SIZE, BLOCK_SIZE as usize);
                assert_image_pattern(img, SEEDS[lun], off + len(i), BLOCK_SIZE as usize);
            }
        }
        eprintln!("done in {:?}", t0.elapsed());
    }
}
