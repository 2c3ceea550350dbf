//! Per-bdev I/O statistics (`Bdev::iostat`) on local bdevs.

use std::time::Duration;

use vbdev_bdev::{DmaBuf, IoError, IoStat, IoStatus, RejectReason, Request, malloc, null};

use crate::util::{drain, run};

/// What one thread does on its own channel, and what it should count.
#[derive(Debug, Clone, Copy)]
struct Mix {
    reads: u64,
    read_bytes: usize,
    writes: u64,
    write_bytes: usize,
    unmaps: u64,
    unmap_blocks: u64,
    zeroes: u64,
    zero_blocks: u64,
    flushes: u64,
}

impl Mix {
    fn expected(&self, block_size: u64) -> IoStat {
        IoStat {
            bytes_read: self.reads * self.read_bytes as u64,
            num_read_ops: self.reads,
            bytes_written: self.writes * self.write_bytes as u64,
            num_write_ops: self.writes,
            bytes_unmapped: self.unmaps * self.unmap_blocks * block_size,
            num_unmap_ops: self.unmaps,
            bytes_zeroed: self.zeroes * self.zero_blocks * block_size,
            num_write_zeroes_ops: self.zeroes,
            num_flush_ops: self.flushes,
            ..IoStat::default()
        }
    }
}

fn sum(a: &IoStat, b: &IoStat) -> IoStat {
    IoStat {
        bytes_read: a.bytes_read + b.bytes_read,
        num_read_ops: a.num_read_ops + b.num_read_ops,
        bytes_written: a.bytes_written + b.bytes_written,
        num_write_ops: a.num_write_ops + b.num_write_ops,
        bytes_unmapped: a.bytes_unmapped + b.bytes_unmapped,
        num_unmap_ops: a.num_unmap_ops + b.num_unmap_ops,
        bytes_zeroed: a.bytes_zeroed + b.bytes_zeroed,
        num_write_zeroes_ops: a.num_write_zeroes_ops + b.num_write_zeroes_ops,
        num_flush_ops: a.num_flush_ops + b.num_flush_ops,
        num_io_errors: a.num_io_errors + b.num_io_errors,
        read_latency_ns: 0,
        write_latency_ns: 0,
        unmap_latency_ns: 0,
    }
}

/// Runs `mix` on `ch`, keeping up to 16 requests in flight; every request must succeed.
fn run_mix(ch: &mut vbdev_bdev::IoChannel, mix: &Mix) {
    let submit = |ch: &mut vbdev_bdev::IoChannel, req: Request| {
        ch.submit(req).expect("submit");
        if ch.pending() >= 16 {
            for c in drain(ch, Duration::from_secs(10)) {
                assert_eq!(c.status, IoStatus::Success, "cookie {}", c.cookie);
            }
        }
    };
    for i in 0..mix.reads {
        let buf = DmaBuf::alloc(mix.read_bytes).expect("dma alloc");
        submit(
            ch,
            Request::read(i % 64 * 8, buf.len() as u64 / 512, buf, i),
        );
    }
    for i in 0..mix.writes {
        let mut buf = DmaBuf::alloc(mix.write_bytes).expect("dma alloc");
        buf.fill(i as u8);
        submit(
            ch,
            Request::write(i % 64 * 16, buf.len() as u64 / 512, buf, i),
        );
    }
    for i in 0..mix.unmaps {
        submit(
            ch,
            Request::unmap(i * mix.unmap_blocks, mix.unmap_blocks, i),
        );
    }
    for i in 0..mix.zeroes {
        submit(ch, Request::write_zeroes(i, mix.zero_blocks, i));
    }
    for i in 0..mix.flushes {
        submit(ch, Request::flush(i));
    }
    for c in drain(ch, Duration::from_secs(10)) {
        assert_eq!(c.status, IoStatus::Success, "cookie {}", c.cookie);
    }
}

#[test]
fn two_threads_one_channel_closed_totals_are_exact() {
    let bdev = malloc::create("Stat0", 4096, 512).expect("malloc");
    assert_eq!(bdev.iostat(), IoStat::default());
    let a = Mix {
        reads: 100,
        read_bytes: 4096,
        writes: 37,
        write_bytes: 8192,
        unmaps: 5,
        unmap_blocks: 64,
        zeroes: 3,
        zero_blocks: 9,
        flushes: 2,
    };
    let b = Mix {
        reads: 41,
        read_bytes: 512,
        writes: 250,
        write_bytes: 1024,
        unmaps: 1,
        unmap_blocks: 7,
        zeroes: 11,
        zero_blocks: 1,
        flushes: 6,
    };
    let ch_a = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            let mut ch = bdev.open_channel().expect("channel a");
            run_mix(&mut ch, &a);
            assert_eq!(ch.iostat(), a.expected(512));
            ch // stays open
        });
        let tb = s.spawn(|| {
            let mut ch = bdev.open_channel().expect("channel b");
            run_mix(&mut ch, &b);
            assert_eq!(ch.iostat(), b.expected(512));
            // Closed here, in its own thread.
        });
        tb.join().expect("thread b");
        ta.join().expect("thread a")
    });
    let want = sum(&a.expected(512), &b.expected(512));
    assert_eq!(bdev.iostat(), want);
    // Clones share the statistics.
    assert_eq!(bdev.clone().iostat(), want);
    drop(ch_a);
    assert_eq!(bdev.iostat(), want, "closing a channel keeps its counts");
    // A channel opened later adds to the same totals.
    let mut ch = bdev.open_channel().expect("channel c");
    let c = run(&mut ch, Request::read(0, 1, DmaBuf::alloc(512).unwrap(), 1));
    assert_eq!(c.status, IoStatus::Success);
    let want = IoStat {
        num_read_ops: want.num_read_ops + 1,
        bytes_read: want.bytes_read + 512,
        ..want
    };
    assert_eq!(bdev.iostat(), want);
}

#[test]
fn rejected_requests_are_not_counted() {
    let bdev = null::create("Stat1", 128, 4096).expect("null");
    let mut ch = bdev.open_channel().expect("channel");
    let r = ch
        .submit(Request::read(127, 2, DmaBuf::alloc(8192).unwrap(), 1))
        .expect_err("out of range");
    assert!(matches!(r.error, RejectReason::OutOfRange { .. }));
    let r = ch
        .submit(Request::write(0, 1, DmaBuf::alloc(100).unwrap(), 2))
        .expect_err("bad size");
    assert!(matches!(r.error, RejectReason::BufferSize { .. }));
    let r = ch.submit(Request::unmap(0, 0, 3)).expect_err("empty unmap");
    assert!(matches!(r.error, RejectReason::Empty { .. }));
    let mut out = [vbdev_bdev::Completion::default()];
    assert_eq!(ch.poll(&mut out), 0);
    assert_eq!(ch.iostat(), IoStat::default());
    assert_eq!(bdev.iostat(), IoStat::default());
}

#[test]
fn requests_failed_by_removal_count_as_errors() {
    let bdev = null::create("Stat2", 1 << 20, 512).expect("null");
    let mut ch = bdev.open_channel().expect("channel");
    // A local channel runs each request at submit and holds up to its queue size
    // (1024) of completions; the rest wait in the channel's FIFO. Detaching the bdev
    // then fails the waiting ones.
    let n = 1024 + 5;
    for i in 0..n {
        ch.submit(Request::unmap(i, 1, i)).expect("submit");
    }
    assert_eq!(ch.queued(), 5);
    bdev.detach();
    let done = ch.drain(Duration::from_secs(10)).expect("drain");
    assert_eq!(done.len(), n as usize);
    let failed: Vec<u64> = done
        .iter()
        .filter(|c| c.status == IoStatus::Failed(IoError::Removed))
        .map(|c| c.cookie)
        .collect();
    assert_eq!(
        failed,
        (1024..n).collect::<Vec<_>>(),
        "the caller's cookies"
    );
    let want = IoStat {
        num_unmap_ops: 1024,
        bytes_unmapped: 1024 * 512,
        num_io_errors: 5,
        ..IoStat::default()
    };
    assert_eq!(ch.iostat(), want);
    assert_eq!(bdev.iostat(), want);
    // After removal, submit refuses: not counted.
    let r = ch.submit(Request::flush(9)).expect_err("removed");
    assert_eq!(r.error, RejectReason::Removed);
    drop(ch);
    assert_eq!(bdev.iostat(), want);
}
