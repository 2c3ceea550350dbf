use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::disk::{DiskError, DiskInfo};

/// A zero-filled disk that keeps nothing.
#[derive(Debug)]
struct ZeroDisk(DiskInfo);

impl BlockIo for ZeroDisk {
    fn info(&self) -> DiskInfo {
        self.0
    }
    fn read(&mut self, _lba: u64, buf: &mut [u8]) -> std::result::Result<(), DiskError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, _lba: u64, _buf: &[u8]) -> std::result::Result<(), DiskError> {
        Ok(())
    }
    fn flush(&mut self) -> std::result::Result<(), DiskError> {
        Ok(())
    }
    fn unmap(&mut self, _lba: u64, _blocks: u64) -> std::result::Result<(), DiskError> {
        Ok(())
    }
    fn write_zeroes(&mut self, _lba: u64, _blocks: u64) -> std::result::Result<(), DiskError> {
        Ok(())
    }
}

fn device() -> ScsiDevice {
    let mut t = ScsiTarget::new(2);
    let disk = ZeroDisk(DiskInfo {
        block_size: 512,
        num_blocks: 64,
        read_only: false,
        unmap: false,
        write_zeroes: false,
    });
    t.add_lun(0, new_lun(Box::new(disk), "zero", 8)).unwrap();
    ScsiDevice::new(&ScsiTargetConfig::new("/nonexistent"), vec![t]).unwrap()
}

/// Serves a command chain of `readable` pieces then `writable` buffers; returns the used
/// length and the writable bytes.
fn run(dev: &ScsiDevice, readable: &[&[u8]], writable: &[u32]) -> (u32, Vec<Vec<u8>>) {
    run_filled(dev, readable, writable, 0)
}

/// As [`run`], with the driver's memory filled with `fill` first.
fn run_filled(
    dev: &ScsiDevice,
    readable: &[&[u8]],
    writable: &[u32],
    fill: u8,
) -> (u32, Vec<Vec<u8>>) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    mem.write_slice(&vec![fill; 1 << 20], GuestAddress(0))
        .unwrap();
    let mut descs = Vec::new();
    let mut addr = 0x1000u64;
    for piece in readable {
        mem.write_slice(piece, GuestAddress(addr)).unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            addr,
            piece.len() as u32,
            0,
            0,
        )));
        addr += 0x1000;
    }
    let mut outs = Vec::new();
    for &len in writable {
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            addr,
            len,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
        outs.push((addr, len));
        addr += 0x1000;
    }
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq.build_desc_chain(&descs).unwrap();
    let mut q = dev.queues[0].lock().unwrap();
    let mut segs = crate::fast::Segments::new();
    assert!(segs.fill_from_chain(&mem, chain));
    let used = dev.serve_command(&mut q, &mem, &segs, None);
    let bytes = outs
        .into_iter()
        .map(|(a, len)| {
            let mut b = vec![0u8; len as usize];
            mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            b
        })
        .collect();
    (used, bytes)
}

fn header(cdb: &[u8], cdb_size: usize) -> Vec<u8> {
    let mut h = vec![0u8; wire::CMD_HEADER_LEN + cdb_size];
    h[..4].copy_from_slice(&[1, 2, 0x40, 0]);
    h[wire::CMD_HEADER_LEN..wire::CMD_HEADER_LEN + cdb.len()].copy_from_slice(cdb);
    h
}

#[test]
fn config_space_honours_offset_and_size() {
    let dev = device();
    let all = dev.config();
    assert_eq!(all.len(), 36);
    assert_eq!(&all[16..20], &16u32.to_le_bytes());
    let reply = |offset, size| crate::server::config_reply(&all, offset, size);
    assert_eq!(reply(20, 8).unwrap(), all[20..28]);
    assert_eq!(reply(30, 2).unwrap(), 255u16.to_le_bytes());
    assert_eq!(
        reply(32, 8).unwrap(),
        [&all[32..36], &[0u8; 4][..]].concat()
    );
    assert!(reply(36, 1).is_none());
    assert!(reply(u32::MAX, 2).is_none());
}

#[test]
fn driver_sets_sense_and_cdb_size_and_a_reset_restores_them() {
    let dev = device();
    dev.set_config(config::SENSE_SIZE as u32, &8u32.to_le_bytes())
        .unwrap();
    dev.set_config(config::CDB_SIZE as u32, &16u32.to_le_bytes())
        .unwrap();
    assert_eq!(dev.config()[20..28], [8, 0, 0, 0, 16, 0, 0, 0]);
    // Out of range, or outside the two fields: refused, nothing changed.
    assert!(
        dev.set_config(config::CDB_SIZE as u32, &256u32.to_le_bytes())
            .is_err()
    );
    assert!(dev.set_config(0, &[1, 0, 0, 0]).is_err());
    assert!(dev.set_config(26, &[0, 0, 0, 0]).is_err());
    assert!(dev.set_config(20, &[]).is_err());
    assert_eq!(dev.config()[20..28], [8, 0, 0, 0, 16, 0, 0, 0]);

    // The request layout follows: a 16-byte CDB field, and 8 sense bytes (of 18).
    let (used, w) = run(&dev, &[&header(&[0xFF], 16)], &[12 + 8]);
    assert_eq!(used, 20);
    assert_eq!(w[0][10], 0x02, "CHECK CONDITION");
    assert_eq!(u32::from_le_bytes(w[0][0..4].try_into().unwrap()), 8);
    assert_eq!((w[0][12], w[0][12 + 2]), (0x70, 0x05), "ILLEGAL REQUEST");

    dev.reset();
    assert_eq!(dev.config()[20..28], [96, 0, 0, 0, 32, 0, 0, 0]);
}

#[test]
fn a_sense_area_larger_than_one_write_is_zero_filled() {
    let dev = device();
    dev.set_config(config::SENSE_SIZE as u32, &600u32.to_le_bytes())
        .unwrap();
    // Split over three buffers, across the 256-byte pieces.
    let (used, w) = run_filled(&dev, &[&header(&[0xFF], 32)], &[100, 300, 212, 8], 0xaa);
    assert_eq!(used, 612);
    let resp: Vec<u8> = w[..3].concat();
    assert_eq!(resp[10], 0x02, "CHECK CONDITION");
    assert_eq!(u32::from_le_bytes(resp[0..4].try_into().unwrap()), 18);
    assert_eq!((resp[12], resp[12 + 2]), (0x70, 0x05), "ILLEGAL REQUEST");
    assert!(resp[12 + 18..].iter().all(|&b| b == 0), "sense tail zeroed");
    assert_eq!(w[3], [0xaa; 8], "no Data-In written");
}

#[test]
fn malformed_requests_fail_without_running() {
    let dev = device();
    // Header cut short: FAILURE.
    let (used, w) = run(&dev, &[&[1, 2, 0x40, 0]], &[108]);
    assert_eq!(used, 108);
    assert_eq!(w[0][11], response::FAILURE);
    // No room for the response: nothing written.
    let (used, w) = run(&dev, &[&header(&[0x12, 0, 0, 0, 36, 0], 32)], &[107]);
    assert_eq!(used, 0);
    assert!(w[0].iter().all(|&b| b == 0));
    // Target 3 does not exist.
    let mut h = header(&[0x12, 0, 0, 0, 36, 0], 32);
    h[1] = 3;
    let (_, w) = run(&dev, &[&h], &[108, 36]);
    assert_eq!(w[0][11], response::BAD_TARGET);
}

#[test]
fn event_lun_matches_report_luns_addressing() {
    assert_eq!(wire::event_lun(4, 7), [1, 4, 0, 7, 0, 0, 0, 0]);
    assert_eq!(wire::event_lun(0, 0x3FFF), [1, 0, 0x7F, 0xFF, 0, 0, 0, 0]);
    let e = Event {
        event: event::PARAM_CHANGE | event::EVENTS_MISSED,
        lun: wire::event_lun(1, 2),
        reason: 0x092A,
    };
    assert_eq!(
        e.to_bytes(),
        [3, 0, 0, 0x80, 1, 1, 0, 2, 0, 0, 0, 0, 0x2A, 0x09, 0, 0]
    );
}

#[test]
fn lun_transfer_limit_is_max_sectors() {
    let dev = device();
    // READ(10) of 9 blocks with max_sectors 8: INVALID FIELD IN CDB.
    let (_, w) = run(
        &dev,
        &[&header(&[0x28, 0, 0, 0, 0, 0, 0, 0, 9, 0], 32)],
        &[108, 9 * 512],
    );
    assert_eq!(w[0][10], 0x02);
    assert_eq!((w[0][12 + 2], w[0][12 + 12]), (0x05, 0x24));
}

/// A device with one LUN served by `bdev` through a [`ChannelIo`].
fn device_on(bdev: &vbdev_bdev::Bdev) -> ScsiDevice {
    let mut t = ScsiTarget::new(2);
    let io = ChannelIo::open(bdev).unwrap();
    t.add_lun(0, new_lun(Box::new(io), "direct", 64)).unwrap();
    ScsiDevice::new(&ScsiTargetConfig::new("/nonexistent"), vec![t]).unwrap()
}

#[test]
fn reads_of_direct_bdevs_go_straight_into_several_data_in_buffers() {
    // READ(10) of 8 blocks at LBA 2, into the response buffer and two data buffers.
    let read = header(&[0x28, 0, 0, 0, 0, 2, 0, 0, 8, 0], 32);
    let resp = (wire::CMD_RESP_LEN + 96) as u32;
    let bufs = [resp, 1000, 3096];
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 241) as u8 ^ 0x3c).collect();
    let malloc = vbdev_bdev::malloc::create("m", 64, 512).unwrap();
    let mut ch = malloc.open_channel().unwrap();
    let mut buf = vbdev_bdev::DmaBuf::alloc(4096).unwrap();
    buf.copy_from_slice(&data);
    ch.submit(vbdev_bdev::Request::write(
        2,
        buf.len() as u64 / 512,
        buf,
        0,
    ))
    .unwrap();
    assert!(ch.wait_one().unwrap().status.is_success());
    let (used, out) = run_filled(&device_on(&malloc), &[&read], &bufs, 0x77);
    assert_eq!(used, resp + 4096);
    assert_eq!(out[0][10..12], [0, 0], "GOOD, OK");
    assert!([&out[1][..], &out[2][..]].concat() == data);
    for (read_zeroes, byte) in [(true, 0u8), (false, 0x77)] {
        let opts = vbdev_bdev::null::NullOptions { read_zeroes };
        let null = vbdev_bdev::null::create_with("n", 64, 512, opts).unwrap();
        let (used, out) = run_filled(&device_on(&null), &[&read], &bufs, 0x77);
        assert_eq!(used, resp + 4096);
        assert_eq!(out[0][10..12], [0, 0]);
        assert!(
            out[1].iter().chain(&out[2]).all(|&b| b == byte),
            "read_zeroes {read_zeroes}"
        );
    }
}
