//! Shared helpers for the integration tests.

use std::time::{Duration, Instant};

use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_bdev::{Bdev, Completion, IoChannel};

use crate::qsd::Qsd;
pub use vbdev_testkit::data::{dma, error_chain, pattern, run};

/// Attaches the qsd export with `queues` queues of `size` descriptors.
pub fn attach(q: &Qsd, name: &str, queues: u16, size: u16) -> Bdev {
    let opts = AttachOptions {
        num_queues: queues,
        queue_size: size,
        ..AttachOptions::default()
    };
    virtio_blk::attach_vhost_user(name, q.socket(), &opts).expect("attach")
}

/// Polls until every pending request completed or `timeout` passed.
pub fn drain(ch: &mut IoChannel, timeout: Duration) -> Vec<Completion> {
    let start = Instant::now();
    let all = ch.drain(timeout).expect("requests complete in time");
    assert!(start.elapsed() <= timeout + Duration::from_secs(1));
    all
}
