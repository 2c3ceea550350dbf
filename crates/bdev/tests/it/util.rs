//! Shared helpers for the integration tests.

use std::time::{Duration, Instant};

use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_bdev::{Bdev, Completion, DmaBuf, IoChannel, Request};

use crate::qsd::Qsd;

/// Deterministic test data: a different byte sequence for every `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A DMA buffer holding `data`.
pub fn dma(data: &[u8]) -> DmaBuf {
    let mut b = DmaBuf::alloc(data.len()).expect("dma alloc");
    b.copy_from_slice(data);
    b
}

/// Attaches the qsd export with `queues` queues of `size` descriptors.
pub fn attach(q: &Qsd, name: &str, queues: u16, size: u16) -> Bdev {
    let opts = AttachOptions {
        num_queues: queues,
        queue_size: size,
        ..AttachOptions::default()
    };
    virtio_blk::attach_vhost_user(name, q.socket(), &opts).expect("attach")
}

/// Submits and waits for one request; panics if it is refused.
pub fn run(ch: &mut IoChannel, req: Request) -> Completion {
    ch.submit(req).expect("submit");
    ch.wait_one().expect("completion")
}

/// Polls until every pending request completed or `timeout` passed.
pub fn drain(ch: &mut IoChannel, timeout: Duration) -> Vec<Completion> {
    let start = Instant::now();
    let all = ch.drain(timeout).expect("requests complete in time");
    assert!(start.elapsed() <= timeout + Duration::from_secs(1));
    all
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
