//! The split ring and the request queue alone, against an in-process device that answers
//! every chain at once (no target process, no second core): what the driver side costs per
//! request. `cargo bench -p vbdev-virtio --features test-utils`; the test command builds it
//! (`--no-run`) so that it keeps compiling.
//!
//! The device reads `avail.idx` and the avail ring and writes used elements straight into
//! the ring memory (the ring's addresses are this process's own, as for vhost-user), the
//! least a device can do; the chains' descriptors are not walked.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vbdev_virtio::split::RingAddrs;
use vbdev_virtio::testing::blk_transport::{FakeBlk, FakeBlkConfig};
use vbdev_virtio::{
    ContextLayout, DmaBuf, DmaDomain, Iova, Piece, QueueConfig, RequestQueue, Segment, SplitQueue,
};

/// Requests per batch: added, published, answered, reaped.
const BATCH: u16 = 8;
const SIZE: u16 = 256;

/// The device side: answers every published chain with a used element of `len` bytes.
struct Device {
    addrs: RingAddrs,
    next_avail: u16,
    used_idx: u16,
}

impl Device {
    fn at16(&self, addr: u64) -> &AtomicU16 {
        // SAFETY: `addr` is inside the ring (avail or used ring fields, 2-byte aligned by
        // the layout of virtio 1.2 §2.7), which lives as long as the queue the bench keeps
        // beside this device; atomics are how a device shares it with the driver.
        unsafe { AtomicU16::from_ptr(addr as *mut u16) }
    }

    fn at32(&self, addr: u64) -> &AtomicU32 {
        // SAFETY: as in `at16`, for the 4-byte aligned fields of used elements.
        unsafe { AtomicU32::from_ptr(addr as *mut u32) }
    }

    fn answer_all(&mut self, len: u32) -> u16 {
        let avail = self.addrs.avail.0;
        let used = self.addrs.used.0;
        let size = self.addrs.size;
        let idx = u16::from_le(self.at16(avail + 2).load(Ordering::Acquire));
        let mut n = 0;
        while self.next_avail != idx {
            let slot = u64::from(self.next_avail % size);
            let head = u16::from_le(self.at16(avail + 4 + 2 * slot).load(Ordering::Relaxed));
            let u = used + 4 + 8 * u64::from(self.used_idx % size);
            self.at32(u)
                .store(u32::from(head).to_le(), Ordering::Relaxed);
            self.at32(u + 4).store(len.to_le(), Ordering::Relaxed);
            self.next_avail = self.next_avail.wrapping_add(1);
            self.used_idx = self.used_idx.wrapping_add(1);
            n += 1;
        }
        self.at16(used + 2)
            .store(self.used_idx.to_le(), Ordering::Release);
        n
    }
}

fn split_queue() -> SplitQueue {
    SplitQueue::new(
        DmaDomain::global(),
        QueueConfig {
            size: SIZE,
            event_idx: false,
            indirect_desc: true,
            indirect_max: 8,
            phys: None,
        },
    )
    .expect("queue")
}

/// SplitQueue: 8 chains of header + 4 KiB data + status (direct), publish, answer, reap.
fn split(c: &mut Criterion) {
    let mut q = split_queue();
    q.set_direct_max(3);
    let mut dev = Device {
        addrs: q.addrs(),
        next_avail: 0,
        used_idx: 0,
    };
    let hdr = DmaBuf::zeroed(64 * usize::from(BATCH), 64).expect("headers");
    let data = DmaBuf::zeroed(4096 * usize::from(BATCH), 4096).expect("data");
    let status = DmaBuf::zeroed(8 * usize::from(BATCH), 64).expect("statuses");
    let chains: Vec<[Segment; 3]> = (0..u64::from(BATCH))
        .map(|i| {
            [
                Segment::readable(Iova(hdr.iova().0 + 64 * i), 16),
                Segment::writable(Iova(data.iova().0 + 4096 * i), 4096),
                Segment::writable(Iova(status.iova().0 + 8 * i), 1),
            ]
        })
        .collect();
    let mut g = c.benchmark_group("split");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    g.bench_function("add_publish_pop_8x3", |b| {
        b.iter(|| {
            for (i, segs) in chains.iter().enumerate() {
                // SAFETY: the segments lie in `hdr`, `data` and `status`, which outlive the
                // queue's use of them (every chain is reaped below, before the next
                // iteration adds it again); nothing else touches them.
                unsafe { q.try_add(segs, i as u64) }.expect("room");
            }
            black_box(q.publish());
            dev.answer_all(4097);
            let mut n = 0;
            while let Some(u) = q.pop_used() {
                black_box(u);
                n += 1;
            }
            assert_eq!(n, BATCH);
        })
    });
    g.finish();
}

/// RequestQueue: 8 chains built with ChainBuilder (header words, lent buffer, status),
/// publish, answer, reap, status read.
fn request_queue(c: &mut Criterion) {
    let t = Arc::new(FakeBlk::new(FakeBlkConfig::new(1 << 20)).expect("transport"));
    let mut vq = split_queue();
    vq.set_direct_max(3);
    let mut dev = Device {
        addrs: vq.addrs(),
        next_avail: 0,
        used_idx: 0,
    };
    let layout = ContextLayout {
        header: 64,
        status: 8,
    };
    let mut q = RequestQueue::new(vq, layout, usize::from(BATCH), t).expect("request queue");
    for o in 0..u32::from(BATCH) {
        q.lend(o, DmaBuf::zeroed(4096, 4096).expect("data"))
            .expect("owner free");
    }
    let mut g = c.benchmark_group("reqq");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    g.bench_function("chain_submit_pop_8x3", |b| {
        b.iter(|| {
            for ctx in 0..BATCH {
                let mut ch = q.chain(ctx, Some(u32::from(ctx)));
                ch.write_header_words(0, &[0, u64::from(ctx) * 8]);
                ch.header(0, 16);
                ch.data(0, 4096, true);
                ch.status(0, 1);
                ch.submit().expect("room");
            }
            black_box(q.publish());
            dev.answer_all(4097);
            let mut n = 0;
            while let Some(u) = q.pop_used() {
                black_box(q.status_u8(u.cookie as u16, 0));
                n += 1;
            }
            assert_eq!(n, BATCH);
        })
    });
    g.finish();
    // The pieces API is the same chain through a slice.
    let pieces = [
        Piece::Header { off: 0, len: 16 },
        Piece::Data {
            off: 0,
            len: 4096,
            writable: true,
        },
        Piece::Status { off: 0, len: 1 },
    ];
    q.add(0, Some(0), &pieces).expect("room");
    q.publish();
    dev.answer_all(4097);
    assert!(q.pop_used().is_some());
}

criterion_group!(benches, split, request_queue);
criterion_main!(benches);
