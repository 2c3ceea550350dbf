use std::sync::atomic::AtomicUsize;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::fault::BadUsed;

/// A disk in a `Vec`, counting flushes.
#[derive(Debug, Clone)]
struct MemDisk {
    info: DiskInfo,
    data: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<AtomicUsize>,
}

impl MemDisk {
    fn new(block_size: u32, num_blocks: u64, fill: u8) -> Self {
        Self {
            info: DiskInfo {
                block_size,
                num_blocks,
                read_only: false,
                unmap: true,
                write_zeroes: true,
            },
            data: Arc::new(Mutex::new(vec![
                fill;
                (u64::from(block_size) * num_blocks)
                    as usize
            ])),
            flushes: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
        self.data.lock().unwrap()[off..off + len].to_vec()
    }

    fn span(&self, lba: u64, len: usize) -> std::ops::Range<usize> {
        let off = (lba * u64::from(self.info.block_size)) as usize;
        off..off + len
    }
}

impl BlockIo for MemDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> std::result::Result<(), DiskError> {
        let r = self.span(lba, buf.len());
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> std::result::Result<(), DiskError> {
        let r = self.span(lba, buf.len());
        self.data.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> std::result::Result<(), DiskError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn unmap(&mut self, lba: u64, blocks: u64) -> std::result::Result<(), DiskError> {
        let r = self.span(lba, (blocks * u64::from(self.info.block_size)) as usize);
        self.data.lock().unwrap()[r].fill(0);
        Ok(())
    }
    fn write_zeroes(&mut self, lba: u64, blocks: u64) -> std::result::Result<(), DiskError> {
        self.unmap(lba, blocks)
    }
}

fn device(disk: &MemDisk, cfg: BlkTargetConfig) -> BlkDevice {
    BlkDevice::new("disk0", vec![Box::new(disk.clone())], &cfg).unwrap()
}

fn cfg() -> BlkTargetConfig {
    BlkTargetConfig::new("/nonexistent")
}

/// What a request got back.
#[derive(Debug)]
struct Done {
    used: u32,
    status: u8,
    data: Vec<u8>,
}

/// Builds a chain: readable `out` pieces, then `in_len` writable bytes (when non-zero),
/// then a status byte (when `with_status`); serves it and reads the answer back.
fn run_raw(
    dev: &BlkDevice,
    out: &[&[u8]],
    in_len: u32,
    with_status: bool,
    fault: Option<Fault>,
) -> Done {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let mut descs = Vec::new();
    let mut addr = 0x10_0000u64;
    for piece in out {
        mem.write_slice(piece, GuestAddress(addr)).unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            addr,
            piece.len() as u32,
            0,
            0,
        )));
        addr += (piece.len() as u64).next_multiple_of(4096).max(4096);
    }
    let data_addr = addr;
    if in_len > 0 {
        mem.write_slice(&vec![0xeeu8; in_len as usize], GuestAddress(data_addr))
            .unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            data_addr,
            in_len,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
        addr += u64::from(in_len).next_multiple_of(4096);
    }
    let status_addr = addr;
    mem.write_obj(0xffu8, GuestAddress(status_addr)).unwrap();
    if with_status {
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            status_addr,
            1,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
    }
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq.build_desc_chain(&descs).unwrap();
    let mut q = dev.queues[0].lock().unwrap();
    let used = dev.serve_request(&mut q, &mem, chain, fault);
    let mut data = vec![0u8; in_len as usize];
    mem.read_slice(&mut data, GuestAddress(data_addr)).unwrap();
    Done {
        used,
        status: mem.read_obj(GuestAddress(status_addr)).unwrap(),
        data,
    }
}

fn header(type_: u32, sector: u64) -> [u8; 16] {
    vbdev_virtio::blk::ReqHeader {
        type_,
        reserved: 0,
        sector,
    }
    .to_bytes()
}

fn seg(sector: u64, num_sectors: u32, flags: u32) -> [u8; 16] {
    DiscardWriteZeroes {
        sector,
        num_sectors,
        flags,
    }
    .to_bytes()
}

fn run(dev: &BlkDevice, out: &[&[u8]], in_len: u32) -> Done {
    run_raw(dev, out, in_len, true, None)
}

#[test]
fn write_then_read_round_trips_with_used_len_counting_data_and_status() {
    let disk = MemDisk::new(512, 4096, 0);
    let dev = device(&disk, cfg());
    let data: Vec<u8> = (0..3 * 512).map(|i| (i * 7 % 251) as u8).collect();
    let w = run(&dev, &[&header(req::OUT, 5), &data], 0);
    assert_eq!((w.status, w.used), (status::OK, 1));
    assert_eq!(disk.bytes(5 * 512, data.len()), data);
    let r = run(&dev, &[&header(req::IN, 5)], data.len() as u32);
    assert_eq!(r.status, status::OK);
    assert_eq!(r.used, data.len() as u32 + 1);
    assert_eq!(r.data, data);
}

#[test]
fn reads_larger_than_the_bounce_buffer_are_complete() {
    let disk = MemDisk::new(512, 8192, 0);
    let data: Vec<u8> = (0..(3 << 20) + 512).map(|i| (i % 253) as u8).collect();
    disk.data.lock().unwrap()[512..512 + data.len()].copy_from_slice(&data);
    let dev = device(&disk, cfg());
    let r = run(&dev, &[&header(req::IN, 1)], data.len() as u32);
    assert_eq!(r.status, status::OK);
    assert!(r.data == data);
}

#[test]
fn unknown_request_type_is_unsupp() {
    let dev = device(&MemDisk::new(512, 64, 0), cfg());
    let d = run(&dev, &[&header(99, 0)], 0);
    assert_eq!((d.status, d.used), (status::UNSUPP, 1));
}

#[test]
fn header_shorter_than_16_bytes_is_ioerr() {
    let dev = device(&MemDisk::new(512, 64, 0), cfg());
    let d = run(&dev, &[&header(req::IN, 0)[..12]], 512);
    assert_eq!((d.status, d.used), (status::IOERR, 1));
}

#[test]
fn chain_without_writable_bytes_is_given_back_with_len_0() {
    let dev = device(&MemDisk::new(512, 64, 0), cfg());
    let d = run_raw(&dev, &[&header(req::FLUSH, 0)], 0, false, None);
    assert_eq!(d.used, 0);
}

#[test]
fn range_at_or_beyond_capacity_is_ioerr() {
    let disk = MemDisk::new(512, 64, 0x5a);
    let dev = device(&disk, cfg());
    assert_eq!(
        run(&dev, &[&header(req::IN, 64)], 512).status,
        status::IOERR
    );
    assert_eq!(
        run(&dev, &[&header(req::IN, 63)], 1024).status,
        status::IOERR
    );
    let w = run(&dev, &[&header(req::OUT, u64::MAX / 256), &[1u8; 512]], 0);
    assert_eq!(w.status, status::IOERR);
    assert_eq!(run(&dev, &[&header(req::IN, 63)], 512).status, status::OK);
}

#[test]
fn data_not_a_whole_number_of_blocks_is_ioerr() {
    let disk = MemDisk::new(512, 64, 0x5a);
    let dev = device(&disk, cfg());
    let w = run(&dev, &[&header(req::OUT, 0), &[1u8; 700]], 0);
    assert_eq!(w.status, status::IOERR);
    assert!(disk.bytes(0, 700).iter().all(|&b| b == 0x5a));
}

#[test]
fn sector_off_a_4k_block_boundary_is_ioerr() {
    let disk = MemDisk::new(4096, 64, 0);
    let dev = device(&disk, cfg());
    assert_eq!(
        run(&dev, &[&header(req::IN, 1)], 4096).status,
        status::IOERR
    );
    assert_eq!(run(&dev, &[&header(req::IN, 8)], 512).status, status::IOERR);
    assert_eq!(run(&dev, &[&header(req::IN, 8)], 4096).status, status::OK);
}

#[test]
fn writes_on_a_read_only_device_are_ioerr_and_write_nothing() {
    // virtio 1.2 §5.2.6.2: IOERR for a write with VIRTIO_BLK_F_RO, no data written.
    let disk = MemDisk::new(512, 64, 0x5a);
    let dev = device(
        &disk,
        BlkTargetConfig {
            read_only: true,
            ..cfg()
        },
    );
    assert_ne!(dev.features & features::RO, 0);
    let w = run(&dev, &[&header(req::OUT, 0), &[1u8; 512]], 0);
    assert_eq!(w.status, status::IOERR);
    let z = run(&dev, &[&header(req::WRITE_ZEROES, 0), &seg(0, 8, 0)], 0);
    assert_eq!(z.status, status::IOERR);
    let d = run(&dev, &[&header(req::DISCARD, 0), &seg(0, 8, 0)], 0);
    assert_eq!(d.status, status::IOERR);
    assert!(disk.bytes(0, 4096).iter().all(|&b| b == 0x5a));
    assert_eq!(run(&dev, &[&header(req::IN, 0)], 512).status, status::OK);
}

#[test]
fn discard_with_the_unmap_flag_is_unsupp() {
    // §5.2.6.2: the device MUST answer UNSUPP to a discard with unmap set.
    let disk = MemDisk::new(512, 64, 0x5a);
    let dev = device(&disk, cfg());
    let d = run(
        &dev,
        &[
            &header(req::DISCARD, 0),
            &seg(0, 8, DiscardWriteZeroes::UNMAP),
        ],
        0,
    );
    assert_eq!(d.status, status::UNSUPP);
    assert!(disk.bytes(0, 4096).iter().all(|&b| b == 0x5a));
}

#[test]
fn unknown_discard_or_write_zeroes_flags_are_unsupp() {
    let dev = device(&MemDisk::new(512, 64, 0), cfg());
    for t in [req::DISCARD, req::WRITE_ZEROES] {
        let d = run(&dev, &[&header(t, 0), &seg(0, 8, 2)], 0);
        assert_eq!(d.status, status::UNSUPP, "type {t}");
    }
}

#[test]
fn write_zeroes_with_unmap_zeroes_the_range() {
    let disk = MemDisk::new(512, 64, 0x5a);
    let dev = device(&disk, cfg());
    let d = run(
        &dev,
        &[
            &header(req::WRITE_ZEROES, 0),
            &seg(8, 8, DiscardWriteZeroes::UNMAP),
        ],
        0,
    );
    assert_eq!(d.status, status::OK);
    assert!(disk.bytes(8 * 512, 4096).iter().all(|&b| b == 0));
    assert!(disk.bytes(7 * 512, 512).iter().all(|&b| b == 0x5a));
    assert!(disk.bytes(16 * 512, 512).iter().all(|&b| b == 0x5a));
}

#[test]
fn several_segments_up_to_max_seg_apply_each_range() {
    let disk = MemDisk::new(512, 64, 0x5a);
    let dev = device(
        &disk,
        BlkTargetConfig {
            max_discard_seg: 3,
            ..cfg()
        },
    );
    let segs = [seg(0, 1, 0), seg(10, 2, 0), seg(40, 4, 0)].concat();
    let d = run(&dev, &[&header(req::WRITE_ZEROES, 0), &segs], 0);
    assert_eq!(d.status, status::OK);
    let img = disk.bytes(0, 64 * 512);
    for (i, block) in img.chunks(512).enumerate() {
        let zero = matches!(i, 0 | 10 | 11 | 40..=43);
        assert_eq!(block[0], if zero { 0 } else { 0x5a }, "block {i}");
    }
    let four = [segs.as_slice(), &seg(50, 1, 0)].concat();
    let d = run(&dev, &[&header(req::DISCARD, 0), &four], 0);
    assert_eq!(
        d.status,
        status::UNSUPP,
        "more segments than max_discard_seg"
    );
    assert_eq!(disk.bytes(50 * 512, 1)[0], 0x5a);
}

#[test]
fn a_bad_segment_fails_the_request_before_any_range_is_applied() {
    let disk = MemDisk::new(512, 64, 0x5a);
    let dev = device(&disk, cfg());
    let segs = [seg(0, 8, 0), seg(60, 8, 0)].concat();
    let d = run(&dev, &[&header(req::WRITE_ZEROES, 0), &segs], 0);
    assert_eq!(d.status, status::IOERR);
    assert!(disk.bytes(0, 4096).iter().all(|&b| b == 0x5a));
}

#[test]
fn segments_over_max_sectors_or_not_a_multiple_of_16_bytes_are_ioerr() {
    let dev = device(
        &MemDisk::new(512, 4096, 0),
        BlkTargetConfig {
            max_discard_sectors: 64,
            ..cfg()
        },
    );
    let d = run(&dev, &[&header(req::DISCARD, 0), &seg(0, 65, 0)], 0);
    assert_eq!(d.status, status::IOERR);
    let d = run(&dev, &[&header(req::DISCARD, 0), &seg(0, 64, 0)], 0);
    assert_eq!(d.status, status::OK);
    let d = run(&dev, &[&header(req::DISCARD, 0), &seg(0, 8, 0)[..12]], 0);
    assert_eq!(d.status, status::IOERR);
    let d = run(&dev, &[&header(req::DISCARD, 0)], 0);
    assert_eq!(d.status, status::IOERR);
}

#[test]
fn discard_without_bdev_unmap_is_not_offered_and_unsupp() {
    let mut disk = MemDisk::new(512, 64, 0x5a);
    disk.info.unmap = false;
    let dev = device(&disk, cfg());
    assert_eq!(dev.features & features::DISCARD, 0);
    let d = run(&dev, &[&header(req::DISCARD, 0), &seg(0, 8, 0)], 0);
    assert_eq!(d.status, status::UNSUPP);
}

#[test]
fn write_zeroes_without_bdev_support_is_done_with_writes() {
    let mut disk = MemDisk::new(512, 8192, 0x5a);
    disk.info.write_zeroes = false;
    let dev = device(&disk, cfg());
    let d = run(&dev, &[&header(req::WRITE_ZEROES, 0), &seg(1, 4097, 0)], 0);
    assert_eq!(d.status, status::OK);
    assert!(disk.bytes(512, 4097 * 512).iter().all(|&b| b == 0));
    assert_eq!(disk.bytes(0, 1)[0], 0x5a);
    assert_eq!(disk.bytes(4098 * 512, 1)[0], 0x5a);
}

#[test]
fn get_id_returns_the_serial_nul_padded() {
    let dev = device(
        &MemDisk::new(512, 64, 0),
        BlkTargetConfig {
            serial: Some("sn-42".into()),
            ..cfg()
        },
    );
    let d = run(&dev, &[&header(req::GET_ID, 0)], 20);
    assert_eq!((d.status, d.used), (status::OK, 21));
    assert_eq!(&d.data[..5], b"sn-42");
    assert!(d.data[5..].iter().all(|&b| b == 0));
    let d = run(&dev, &[&header(req::GET_ID, 0)], 19);
    assert_eq!(d.status, status::IOERR);
}

#[test]
fn default_serial_is_the_bdev_name_cut_to_20_bytes() {
    let disk = MemDisk::new(512, 64, 0);
    let dev = BlkDevice::new("a-very-long-bdev-name-indeed", vec![Box::new(disk)], &cfg()).unwrap();
    assert_eq!(&dev.serial, b"a-very-long-bdev-nam");
}

#[test]
fn serial_longer_than_20_bytes_is_refused() {
    let e = BlkDevice::new(
        "d",
        vec![Box::new(MemDisk::new(512, 64, 0))],
        &BlkTargetConfig {
            serial: Some("x".repeat(21)),
            ..cfg()
        },
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidOption {
            option: "serial",
            ..
        }
    ));
}

#[test]
fn blk_status_fault_answers_without_executing() {
    let disk = MemDisk::new(512, 64, 0x5a);
    let dev = device(&disk, cfg());
    let d = run_raw(
        &dev,
        &[&header(req::OUT, 0), &[1u8; 512]],
        0,
        true,
        Some(Fault::BlkStatus(status::IOERR)),
    );
    assert_eq!((d.status, d.used), (status::IOERR, 1));
    assert_eq!(disk.bytes(0, 1)[0], 0x5a);
    // Faults the server handles do not change what the device does.
    let d = run_raw(
        &dev,
        &[&header(req::OUT, 0), &[1u8; 512]],
        0,
        true,
        Some(Fault::BadUsed(BadUsed::IdxJump)),
    );
    assert_eq!(d.status, status::OK);
    assert_eq!(disk.bytes(0, 1)[0], 1);
}

#[test]
fn write_through_mode_flushes_after_each_write() {
    let disk = MemDisk::new(512, 64, 0);
    let dev = device(&disk, cfg());
    run(&dev, &[&header(req::OUT, 0), &[1u8; 512]], 0);
    assert_eq!(disk.flushes.load(Ordering::Relaxed), 0);
    dev.set_config(CONFIG_WRITEBACK, &[0]).unwrap();
    assert_eq!(dev.config()[CONFIG_WRITEBACK as usize], 0);
    run(&dev, &[&header(req::OUT, 0), &[1u8; 512]], 0);
    run(&dev, &[&header(req::WRITE_ZEROES, 0), &seg(0, 1, 0)], 0);
    assert_eq!(disk.flushes.load(Ordering::Relaxed), 2);
    dev.reset();
    assert_eq!(dev.config()[CONFIG_WRITEBACK as usize], 1);
    assert!(dev.set_config(0, &[0; 8]).is_err());
}

#[test]
fn config_space_honours_offset_and_size() {
    let dev = device(
        &MemDisk::new(4096, 1000, 0),
        BlkTargetConfig {
            num_queues: 1,
            ..cfg()
        },
    );
    let all = dev.config();
    assert_eq!(all.len(), CONFIG_LEN);
    let c = vbdev_virtio::blk::BlkConfig::parse(&all[..60], dev.features);
    assert_eq!(c.capacity, 8000);
    assert_eq!(c.blk_size, 4096);
    assert_eq!((c.seg_max, c.size_max), (126, 1 << 20));
    assert_eq!(c.num_queues, 1);
    assert_eq!(c.discard_sector_alignment, 8);
    assert_eq!((c.max_discard_sectors, c.max_discard_seg), (1 << 22, 16));
    assert_eq!(c.writeback, 1);
    let reply = |offset, size| crate::server::config_reply(&all, offset, size);
    assert_eq!(reply(20, 4).unwrap(), 4096u32.to_le_bytes());
    assert_eq!(reply(34, 2).unwrap(), 1u16.to_le_bytes());
    assert_eq!(reply(90, 6).unwrap(), all[90..96]);
    assert_eq!(reply(96, 1), None);
    assert_eq!(reply(u32::MAX, 2), None);
}

/// SPDK's virtio-user initiator asks for 256 bytes from 0 and wants all 256 back.
#[test]
fn regression_15_over_long_get_config_is_the_space_then_zeros() {
    let dev = device(&MemDisk::new(512, 1000, 0), cfg());
    let all = dev.config();
    let reply = crate::server::config_reply(&all, 0, 256).unwrap();
    assert_eq!(reply.len(), 256);
    assert_eq!(reply[..CONFIG_LEN], all[..]);
    assert!(reply[CONFIG_LEN..].iter().all(|&b| b == 0));
    // From inside the space, past its end: the tail, then zeros.
    let reply = crate::server::config_reply(&all, 90, 10).unwrap();
    assert_eq!((&reply[..6], &reply[6..]), (&all[90..], &[0u8; 4][..]));
}

#[test]
fn bad_options_are_refused() {
    let disk = || vec![Box::new(MemDisk::new(4096, 64, 0)) as Box<dyn BlockIo>];
    for (c, option) in [
        (
            BlkTargetConfig {
                queue_size: 1000,
                ..cfg()
            },
            "queue_size",
        ),
        (
            BlkTargetConfig {
                seg_max: 0,
                ..cfg()
            },
            "seg_max",
        ),
        (
            BlkTargetConfig {
                max_discard_sectors: 12,
                ..cfg()
            },
            "max_discard_sectors",
        ),
        (
            BlkTargetConfig {
                max_discard_seg: 0,
                ..cfg()
            },
            "max_discard_seg",
        ),
    ] {
        match BlkDevice::new("d", disk(), &c) {
            Err(Error::InvalidOption { option: o, .. }) => assert_eq!(o, option),
            other => panic!("{option}: {other:?}"),
        }
    }
}

/// A device serving `bdev` through a [`ChannelIo`] (direct access for malloc and null).
fn bdev_device(bdev: &vbdev_bdev::Bdev) -> BlkDevice {
    let io = ChannelIo::open(bdev).unwrap();
    BlkDevice::new("disk0", vec![Box::new(io)], &cfg()).unwrap()
}

/// Region boundary of [`two_regions`].
const BOUNDARY: u64 = 0x20_0000;

/// Driver memory in two adjacent regions: [0, 2 MiB) and [2 MiB, 16 MiB).
fn two_regions() -> Mem {
    Mem::from_ranges(&[
        (GuestAddress(0), BOUNDARY as usize),
        (GuestAddress(BOUNDARY), (16 << 20) - BOUNDARY as usize),
    ])
    .unwrap()
}

/// Serves one chain of `(addr, len, writable)` buffers: on the general path
/// (virtio-queue's chain, `Reader` and `Writer`) or on the fast path (the ring parser and
/// `serve_segments`). The used length, or `None` when the fast path declined.
fn serve_descs(dev: &BlkDevice, mem: &Mem, descs: &[(u64, u32, bool)], fast: bool) -> Option<u32> {
    let mut q = dev.queues[0].lock().unwrap();
    if !fast {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, w)| {
                let flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(a, l, flags, 0))
            })
            .collect();
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_desc_chain(&raw).unwrap();
        return Some(dev.serve_request(&mut q, mem, chain, None));
    }
    // A descriptor table and rings of 16 at 64 KiB, where the data never goes.
    let (desc, avail, used) = (0x1_0000u64, 0x1_1000u64, 0x1_2000u64);
    for (i, &(a, l, w)) in descs.iter().enumerate() {
        let at = desc + 16 * i as u64;
        let last = i + 1 == descs.len();
        let flags: u16 = if w { 2 } else { 0 } | if last { 0 } else { 1 };
        mem.write_obj(a.to_le(), GuestAddress(at)).unwrap();
        mem.write_obj(l.to_le(), GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
        mem.write_obj((i as u16 + 1).to_le(), GuestAddress(at + 14))
            .unwrap();
    }
    let addrs = crate::fast::RingAddrs {
        desc,
        avail,
        used,
        size: 16,
        event_idx: false,
    };
    let ring = crate::fast::Ring::new(mem, &addrs).unwrap();
    let mut segs = Segments::new();
    assert!(
        ring.parse(mem, 0, &mut segs),
        "the fast path takes the chain"
    );
    dev.serve_segments(&mut q, mem, &segs)
}

/// The bytes of `bufs` in order.
fn gather(mem: &Mem, bufs: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(a, l) in bufs {
        let mut b = vec![0u8; l as usize];
        mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        out.extend(b);
    }
    out
}

fn status_at(mem: &Mem, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

#[test]
fn direct_malloc_writes_land_in_the_bdev_and_read_back_across_descriptors_and_regions() {
    for fast in [false, true] {
        let bdev = vbdev_bdev::malloc::create("m", 2048, 512).unwrap();
        let dev = bdev_device(&bdev);
        let mem = two_regions();
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 251) as u8 ^ 0x40).collect();
        // WRITE at sector 8 from three buffers, the middle one across the regions.
        let out = [
            (0x11_0000, 1536),
            (BOUNDARY - 2048, 4096),
            (0x12_0000, 2560),
        ];
        mem.write_slice(&header(req::OUT, 8), GuestAddress(0x10_0000))
            .unwrap();
        let mut at = 0;
        for &(a, l) in &out {
            mem.write_slice(&data[at..at + l as usize], GuestAddress(a))
                .unwrap();
            at += l as usize;
        }
        let mut descs = vec![(0x10_0000, 16, false)];
        descs.extend(out.iter().map(|&(a, l)| (a, l, false)));
        descs.push((0x13_0000, 1, true));
        assert_eq!(
            serve_descs(&dev, &mem, &descs, fast),
            Some(1),
            "fast {fast}"
        );
        assert_eq!(status_at(&mem, 0x13_0000), status::OK);
        let mut ch = bdev.open_channel().unwrap();
        let c = {
            ch.submit(vbdev_bdev::Request::read(
                8,
                16,
                vbdev_bdev::DmaBuf::alloc(8192).unwrap(),
                0,
            ))
            .unwrap();
            ch.wait_one().unwrap()
        };
        assert!(c.buf.unwrap()[..] == data[..], "the data is in the bdev");

        // READ it back into three other buffers, one across the regions.
        let inb = [(0x14_0000, 512), (BOUNDARY - 1024, 6656), (0x15_0000, 1024)];
        for &(a, l) in &inb {
            mem.write_slice(&vec![0xee; l as usize], GuestAddress(a))
                .unwrap();
        }
        mem.write_slice(&header(req::IN, 8), GuestAddress(0x10_0000))
            .unwrap();
        let mut descs = vec![(0x10_0000, 16, false)];
        descs.extend(inb.iter().map(|&(a, l)| (a, l, true)));
        descs.push((0x16_0000, 1, true));
        assert_eq!(serve_descs(&dev, &mem, &descs, fast), Some(8193));
        assert_eq!(status_at(&mem, 0x16_0000), status::OK);
        assert!(gather(&mem, &inb) == data, "fast {fast}");
    }
}

#[test]
fn direct_reads_into_buffers_outside_the_drivers_memory_fail_cleanly() {
    let bdev = vbdev_bdev::malloc::create("m", 2048, 512).unwrap();
    let dev = bdev_device(&bdev);
    let mem = two_regions();
    mem.write_slice(&header(req::IN, 0), GuestAddress(0x10_0000))
        .unwrap();
    // Wholly outside, and running off the end of the memory.
    for data in [(0x4000_0000u64, 4096u32), ((16 << 20) - 2048, 4096)] {
        let descs = [
            (0x10_0000, 16, false),
            (data.0, data.1, true),
            (0x13_0000, 1, true),
        ];
        // The general path's Writer refuses the chain: given back with used length 0.
        assert_eq!(serve_descs(&dev, &mem, &descs, false), Some(0));
        mem.write_obj(0xffu8, GuestAddress(0x13_0000)).unwrap();
        // The fast path fails the read: IOERR, no data counted.
        assert_eq!(serve_descs(&dev, &mem, &descs, true), Some(1));
        assert_eq!(status_at(&mem, 0x13_0000), status::IOERR);
    }
    // A null bdev that touches nothing still refuses buffers that are not the driver's,
    // for reads and for writes.
    let null = vbdev_bdev::null::create_with(
        "n",
        2048,
        512,
        vbdev_bdev::null::NullOptions { read_zeroes: false },
    )
    .unwrap();
    let dev = bdev_device(&null);
    let descs = [
        (0x10_0000, 16, false),
        (0x4000_0000, 4096, true),
        (0x13_0000, 1, true),
    ];
    assert_eq!(serve_descs(&dev, &mem, &descs, true), Some(1));
    assert_eq!(status_at(&mem, 0x13_0000), status::IOERR);
    mem.write_slice(&header(req::OUT, 0), GuestAddress(0x10_0000))
        .unwrap();
    let descs = [
        (0x10_0000, 16, false),
        (0x4000_0000, 4096, false),
        (0x13_0000, 1, true),
    ];
    for fast in [false, true] {
        mem.write_obj(0xffu8, GuestAddress(0x13_0000)).unwrap();
        assert_eq!(serve_descs(&dev, &mem, &descs, fast), Some(1));
        assert_eq!(status_at(&mem, 0x13_0000), status::IOERR, "fast {fast}");
    }
}

#[test]
fn null_reads_zero_the_buffers_or_with_read_zeroes_off_leave_them_as_they_are() {
    for read_zeroes in [true, false] {
        let null = vbdev_bdev::null::create_with(
            "n",
            2048,
            512,
            vbdev_bdev::null::NullOptions { read_zeroes },
        )
        .unwrap();
        let dev = bdev_device(&null);
        for fast in [false, true] {
            let mem = two_regions();
            mem.write_slice(&header(req::IN, 16), GuestAddress(0x10_0000))
                .unwrap();
            let inb = [(0x14_0000, 512), (BOUNDARY - 1024, 2048)];
            // The pattern the initiator left in its buffers.
            let before: Vec<u8> = (0..2560u32).map(|i| (i % 199) as u8 | 1).collect();
            let mut at = 0;
            for &(a, l) in &inb {
                mem.write_slice(&before[at..at + l as usize], GuestAddress(a))
                    .unwrap();
                at += l as usize;
            }
            let mut descs = vec![(0x10_0000, 16, false)];
            descs.extend(inb.iter().map(|&(a, l)| (a, l, true)));
            descs.push((0x16_0000, 1, true));
            assert_eq!(serve_descs(&dev, &mem, &descs, fast), Some(2561));
            assert_eq!(status_at(&mem, 0x16_0000), status::OK);
            let after = gather(&mem, &inb);
            if read_zeroes {
                assert!(after.iter().all(|&b| b == 0), "fast {fast}: zeros");
            } else {
                assert!(after == before, "fast {fast}: untouched");
            }
        }
    }
}
