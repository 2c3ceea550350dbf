use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::RegionId;
use crate::split::{QueueConfig, RingAddrs};
use crate::testing::{FakeDevice, read_mem, write_mem};
use crate::transport::QueueHandles;

const LAYOUT: ContextLayout = ContextLayout {
    header: 64,
    status: 16,
};

fn queue(size: u16, owners: usize) -> (RequestQueue, FakeDevice) {
    queue_on(size, owners, Arc::new(ShutTransport::default()))
}

fn queue_on(size: u16, owners: usize, t: Arc<ShutTransport>) -> (RequestQueue, FakeDevice) {
    let vq = SplitQueue::new(
        DmaDomain::global(),
        QueueConfig {
            size,
            event_idx: false,
            indirect_desc: true,
            indirect_max: 8,
            phys: None,
        },
    )
    .unwrap();
    let dev = FakeDevice::new(vq.addrs());
    (RequestQueue::new(vq, LAYOUT, owners, t).unwrap(), dev)
}

/// A read-like chain: header, data (device-writable), status.
fn read_chain(len: u32) -> [Piece; 3] {
    [
        Piece::Header { off: 0, len: 16 },
        Piece::Data {
            off: 0,
            len,
            writable: true,
        },
        Piece::Status { off: 0, len: 1 },
    ]
}

#[test]
fn a_lent_buffer_comes_back_only_after_the_device_gave_its_chains_back() {
    let (mut q, mut dev) = queue(8, 4);
    q.lend(2, DmaBuf::zeroed(8192, 4096).unwrap()).unwrap();
    q.write_header(5, 0, &[7u8; 16]);
    q.add(5, Some(2), &read_chain(4096)).unwrap();
    let second = [
        Piece::Header { off: 0, len: 16 },
        Piece::Data {
            off: 4096,
            len: 4096,
            writable: true,
        },
        Piece::Status { off: 0, len: 1 },
    ];
    q.add(6, Some(2), &second).unwrap();
    assert!(q.is_busy(5) && q.is_busy(6));
    assert!(q.take_back(2).is_none(), "two chains still name the buffer");
    assert!(q.publish());

    let c = dev.pop_avail().unwrap();
    assert_eq!(read_mem(c.segs[0].addr, 16), vec![7u8; 16]);
    assert_eq!(c.segs[1].len, 4096);
    assert!(c.segs[1].device_writable && c.segs[2].device_writable);
    write_mem(c.segs[1].addr, &[0xab; 4096]);
    write_mem(c.segs[2].addr, &[0]);
    dev.push_used(u32::from(c.head), 4097);
    let u = q.pop_used().unwrap();
    assert_eq!((u.cookie, u.written), (5, Ok(4097)));
    assert_eq!(q.status_u8(5, 0), 0);
    assert!(!q.is_busy(5));
    assert!(q.take_back(2).is_none(), "one chain still names the buffer");

    let c = dev.pop_avail().unwrap();
    dev.push_used(u32::from(c.head), 4097);
    assert_eq!(q.pop_used().unwrap().cookie, 6);
    let buf = q.take_back(2).expect("no chain names it any more");
    assert_eq!(&buf[..4096], &[0xab; 4096][..]);
    assert!(q.take_back(2).is_none(), "taken once");
}

#[test]
fn chains_outside_their_memory_are_refused_and_add_nothing() {
    let (mut q, _dev) = queue(8, 2);
    q.lend(0, DmaBuf::zeroed(4096, 4096).unwrap()).unwrap();
    let zeros = q.add_fixed(Arc::new(DmaBuf::zeroed(512, 512).unwrap()));
    let data = |off, len, writable| Piece::Data { off, len, writable };
    let bad: Vec<(u16, Option<u32>, Vec<Piece>)> = vec![
        // past the header slot, past the status area, empty
        (0, None, vec![Piece::Header { off: 60, len: 8 }]),
        (0, None, vec![Piece::Status { off: 0, len: 17 }]),
        (0, None, vec![Piece::Header { off: 0, len: 0 }]),
        (
            0,
            None,
            vec![Piece::Header {
                off: usize::MAX,
                len: 2,
            }],
        ),
        // past the lent buffer, no buffer lent, no such owner, no owner at all
        (0, Some(0), vec![data(4000, 200, true)]),
        (0, Some(0), vec![data(u64::MAX, 2, true)]),
        (0, Some(1), vec![data(0, 512, true)]),
        (0, Some(9), vec![data(0, 512, true)]),
        (0, None, vec![data(0, 512, true)]),
        // no such fixed buffer, past it
        (
            0,
            None,
            vec![Piece::Fixed {
                id: 1,
                off: 0,
                len: 8,
            }],
        ),
        (
            0,
            None,
            vec![Piece::Fixed {
                id: zeros,
                off: 256,
                len: 512,
            }],
        ),
        // device-readable after device-writable
        (
            0,
            Some(0),
            vec![data(0, 512, true), Piece::Header { off: 0, len: 16 }],
        ),
        // no such context
        (8, None, vec![Piece::Header { off: 0, len: 16 }]),
    ];
    for (ctx, owner, pieces) in bad {
        assert_eq!(
            q.add(ctx, owner, &pieces),
            Err(AddError::Invalid),
            "{ctx} {owner:?} {pieces:?}"
        );
        assert_eq!(q.ring().len(), 0, "nothing added for {pieces:?}");
    }
    assert_eq!(
        q.lend(0, DmaBuf::zeroed(512, 512).unwrap())
            .map_err(|b| b.len()),
        Err(512),
        "owner 0 holds a buffer"
    );
    assert!(
        q.lend(7, DmaBuf::zeroed(512, 512).unwrap()).is_err(),
        "no owner 7"
    );
    // A busy context takes no second chain.
    q.add(
        3,
        None,
        &[
            Piece::Fixed {
                id: zeros,
                off: 0,
                len: 512,
            },
            Piece::Status { off: 0, len: 1 },
        ],
    )
    .unwrap();
    assert_eq!(
        q.add(3, None, &[Piece::Header { off: 0, len: 16 }]),
        Err(AddError::Invalid)
    );
    assert_eq!(q.ring().len(), 1);
}

#[test]
#[should_panic(expected = "outside its slot")]
fn a_header_write_past_the_slot_panics() {
    let (mut q, _dev) = queue(8, 1);
    q.write_header(0, 60, &[0u8; 8]);
}

#[derive(Debug, Default)]
struct ShutTransport {
    down: AtomicBool,
}

impl Transport for ShutTransport {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn device_features(&self) -> crate::Result<u64> {
        Ok(0)
    }
    fn set_driver_features(&self, _: u64) -> crate::Result<()> {
        Ok(())
    }
    fn status(&self) -> crate::Result<u8> {
        Ok(0)
    }
    fn set_status(&self, _: u8) -> crate::Result<()> {
        Ok(())
    }
    fn read_config(&self, _: u32, _: &mut [u8]) -> crate::Result<()> {
        Ok(())
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn max_queue_size(&self, _: u16) -> u16 {
        8
    }
    fn setup_queue(&self, _: u16, _: &RingAddrs) -> crate::Result<QueueHandles> {
        unreachable!("not used by these tests")
    }
    fn stop_queue(&self, _: u16) -> crate::Result<u16> {
        Ok(0)
    }
    fn region_visible(&self, _: RegionId) -> bool {
        true
    }
    fn is_alive(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
    fn shutdown(&self) {
        self.down.store(true, Ordering::Relaxed);
    }
}

#[test]
fn reclaim_shuts_the_transport_down_and_frees_every_context_and_buffer() {
    let t = Arc::new(ShutTransport::default());
    let (mut q, _dev) = queue_on(8, 2, Arc::clone(&t));
    q.lend(1, DmaBuf::zeroed(4096, 4096).unwrap()).unwrap();
    q.add(2, Some(1), &read_chain(4096)).unwrap();
    q.add(4, None, &[Piece::Status { off: 0, len: 16 }])
        .unwrap();
    q.publish();
    assert!(t.is_alive());
    let mut back = Vec::new();
    q.reclaim_all(|c| back.push(c));
    back.sort_unstable();
    assert_eq!(back, vec![2, 4]);
    assert!(!t.is_alive(), "shut down before the reclaim");
    assert!(!q.is_busy(2) && !q.is_busy(4));
    assert_eq!(q.take_back(1).map(|b| b.len()), Some(4096));
    assert_eq!(q.ring().len(), 0);
}

#[test]
fn status_markers_and_reads_stay_in_their_context() {
    let (mut q, _dev) = queue(4, 1);
    for c in 0..4 {
        q.write_status_u8(c, 0, 0xf0 | c as u8);
    }
    let mut out = [0u8; 2];
    for c in 0..4 {
        assert_eq!(q.status_u8(c, 0), 0xf0 | c as u8);
        q.read_status(c, 0, &mut out);
        assert_eq!(out, [0xf0 | c as u8, 0]);
    }
    q.write_header(1, 8, &0x1122_3344_5566_7788u64.to_le_bytes());
    q.write_header(1, 0, &[1, 2, 3]);
    assert_eq!(
        q.status_u8(1, 0),
        0xf1,
        "headers and statuses do not overlap"
    );
}

#[test]
fn a_queue_dropped_with_chains_in_flight_shuts_its_transport_down_first() {
    let t = Arc::new(ShutTransport::default());
    let (mut q, _dev) = queue_on(8, 1, Arc::clone(&t));
    q.add(0, None, &[Piece::Status { off: 0, len: 16 }])
        .unwrap();
    q.publish();
    drop(q);
    assert!(
        !t.is_alive(),
        "the device may not keep memory that is freed"
    );

    let t = Arc::new(ShutTransport::default());
    let (q, _dev) = queue_on(8, 1, Arc::clone(&t));
    drop(q);
    assert!(t.is_alive(), "an idle queue leaves its device alone");
}
