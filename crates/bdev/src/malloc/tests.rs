use super::*;

use std::sync::{Arc, Barrier};

use crate::local::testing::{buf_with, pattern, read, run, write};
use crate::{IoStatus, RejectReason, Request};

fn allocated(bdev: &Bdev) -> u64 {
    let details = bdev.details();
    let (_, v) = details
        .iter()
        .find(|(k, _)| *k == "allocated_bytes")
        .expect("allocated_bytes detail");
    v.parse().expect("a number")
}

#[test]
fn describes_itself_like_spdk() {
    let bdev = create("Malloc0", 2048, 512).expect("create");
    let i = bdev.info();
    assert_eq!(i.name, "Malloc0");
    assert_eq!(i.product_name, "Malloc disk");
    assert_eq!(i.driver, "malloc");
    assert_eq!((i.block_size, i.num_blocks), (512, 2048));
    assert!(i.flush && i.unmap && i.write_zeroes && !i.read_only);
    assert_eq!(i.serial.as_deref(), Some("Malloc0"));
    assert_eq!(allocated(&bdev), 0);
}

#[test]
fn bad_geometry_is_refused() {
    for bs in [0, 256, 513, 131072] {
        assert!(matches!(
            create("Malloc0", 8, bs),
            Err(Error::InvalidOption {
                option: "block_size",
                ..
            })
        ));
    }
    assert!(matches!(
        create("Malloc0", 0, 512),
        Err(Error::InvalidOption {
            option: "num_blocks",
            ..
        })
    ));
    assert!(matches!(
        create("Malloc0", u64::MAX / 4096, 4096),
        Err(Error::InvalidOption {
            option: "num_blocks",
            ..
        })
    ));
}

#[test]
fn write_read_round_trip_with_several_block_sizes() {
    for bs in [512usize, 1024, 4096, 65536] {
        // 3.5 shards, so requests cross shard boundaries and the last shard is short.
        let num_blocks = (7 * SHARD_BYTES / 2 / bs) as u64;
        let bdev = create("Malloc0", num_blocks, bs as u32).expect("create");
        let mut ch = bdev.open_channel().expect("channel");
        let len = SHARD_BYTES + 3 * bs;
        let at = (SHARD_BYTES / bs - 1) as u64;
        let data = pattern(len, bs as u8);
        write(&mut ch, at, &data);
        assert_eq!(read(&mut ch, at, len), data, "block size {bs}");
        // The last block of the disk, and the untouched first one.
        write(&mut ch, num_blocks - 1, &data[..bs]);
        assert_eq!(read(&mut ch, num_blocks - 1, bs), data[..bs]);
        assert_eq!(read(&mut ch, 0, bs), vec![0; bs]);
    }
}

#[test]
fn direct_writes_and_reads_go_straight_to_the_shards_and_are_counted() {
    use crate::direct::{DirectError, SliceDest, SliceSrc};
    let bs = 4096;
    let blocks = (2 * SHARD_BYTES / bs) as u64;
    let bdev = create("Malloc0", blocks, bs as u32).expect("create");
    let mut ch = bdev.open_channel().expect("channel");
    assert!(ch.is_direct());
    // Across the shard boundary.
    let at = (SHARD_BYTES / bs - 1) as u64;
    let data = pattern(3 * bs, 4);
    assert_eq!(ch.write_direct(at, 3, &mut SliceSrc::new(&data)), Ok(true));
    assert_eq!(
        read(&mut ch, at, 3 * bs),
        data,
        "requests see direct writes"
    );
    let mut back = vec![0u8; 4 * bs];
    let mut dest = SliceDest::new(&mut back);
    assert_eq!(ch.read_direct(at - 1, 4, &mut dest), Ok(true));
    assert_eq!(&back[..bs], &vec![0; bs][..], "never written: zeros");
    assert_eq!(&back[bs..], &data[..]);
    // A destination that ends early stops the read; a short source the write.
    let mut short = vec![0u8; bs];
    assert_eq!(
        ch.read_direct(at, 3, &mut SliceDest::new(&mut short)),
        Ok(false)
    );
    assert_eq!(
        ch.write_direct(0, 2, &mut SliceSrc::new(&data[..bs])),
        Ok(false)
    );
    assert!(matches!(
        ch.read_direct(blocks - 1, 2, &mut SliceDest::new(&mut back)),
        Err(DirectError::Rejected(RejectReason::OutOfRange { .. }))
    ));
    let s = ch.iostat();
    assert_eq!(
        (s.num_read_ops, s.bytes_read),
        (2, (3 * bs + 4 * bs) as u64)
    );
    assert_eq!(s.num_write_ops, 1);
    assert_eq!(s.num_io_errors, 2);
    assert_eq!(bdev.iostat(), s, "published without a poll");
    bdev.detach();
    assert!(matches!(
        ch.read_direct(0, 1, &mut SliceDest::new(&mut back)),
        Err(DirectError::Rejected(RejectReason::Removed))
    ));
}

#[test]
fn out_of_range_and_misaligned_requests_are_refused() {
    let bdev = create("Malloc0", 16, 4096).expect("create");
    let mut ch = bdev.open_channel().expect("channel");
    let r = ch
        .submit(Request::write(15, 2, buf_with(&[1; 8192]), 1))
        .expect_err("beyond the end");
    assert!(matches!(
        r.error,
        RejectReason::OutOfRange {
            offset_blocks: 15,
            num_blocks: 2,
            capacity: 16
        }
    ));
    let r = ch
        .submit(Request::read(0, 1, buf_with(&[0; 512]), 2))
        .expect_err("not a whole block");
    assert!(matches!(
        r.error,
        RejectReason::BufferSize { actual: 512, .. }
    ));
    let r = ch
        .submit(Request::unmap(16, 1, 3))
        .expect_err("beyond the end");
    assert!(matches!(r.error, RejectReason::OutOfRange { .. }));
    let r = ch
        .submit(Request::write_zeroes(u64::MAX, 2, 4))
        .expect_err("overflowing range");
    assert!(matches!(r.error, RejectReason::OutOfRange { .. }));
    assert_eq!(ch.pending(), 0);
}

#[test]
fn unmap_and_write_zeroes_zero_exactly_their_range() {
    let bs = 4096;
    let blocks = 3 * SHARD_BYTES / bs;
    let bdev = create("Malloc0", blocks as u64, bs as u32).expect("create");
    let mut ch = bdev.open_channel().expect("channel");
    let data = pattern(blocks * bs, 9);
    write(&mut ch, 0, &data);
    assert_eq!(allocated(&bdev), 3 * SHARD_BYTES as u64);

    // Blocks 10..20, inside the first shard.
    let c = run(&mut ch, Request::unmap(10, 10, 1));
    assert_eq!(c.status, IoStatus::Success);
    // From the last block of shard 0 through all of shard 1 to the first of shard 2.
    let per_shard = SHARD_BYTES / bs;
    let (wz_at, wz_len) = (per_shard - 1, per_shard + 2);
    let c = run(
        &mut ch,
        Request::write_zeroes(wz_at as u64, wz_len as u64, 2),
    );
    assert_eq!(c.status, IoStatus::Success);

    let mut expect = data.clone();
    expect[10 * bs..20 * bs].fill(0);
    expect[wz_at * bs..(wz_at + wz_len) * bs].fill(0);
    assert_eq!(read(&mut ch, 0, blocks * bs), expect);
    // Shard 1 was covered whole and gave its memory back.
    assert_eq!(allocated(&bdev), 2 * SHARD_BYTES as u64);
    assert_eq!(run(&mut ch, Request::flush(3)).status, IoStatus::Success);
}

#[test]
fn channels_on_several_threads_see_each_others_writes() {
    const THREADS: usize = 8;
    const BLOCKS_EACH: u64 = 64;
    let bs = 512;
    let bdev = create("Malloc0", THREADS as u64 * BLOCKS_EACH, bs as u32).expect("create");
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let bdev = bdev.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut ch = bdev.open_channel().expect("channel");
                let mine = t as u64 * BLOCKS_EACH;
                for b in 0..BLOCKS_EACH {
                    write(&mut ch, mine + b, &pattern(bs, (t as u8) ^ (b as u8)));
                }
                barrier.wait();
                for other in 0..THREADS {
                    let theirs = other as u64 * BLOCKS_EACH;
                    for b in 0..BLOCKS_EACH {
                        assert_eq!(
                            read(&mut ch, theirs + b, bs),
                            pattern(bs, (other as u8) ^ (b as u8)),
                            "thread {t} reading block {b} of thread {other}"
                        );
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
}

#[test]
fn a_huge_sparse_disk_costs_nothing_until_written() {
    // 64 TiB: a flat shard table took 2 GiB and 7 s before anything was written.
    let bdev = create("Huge0", (64u64 << 40) / 512, 512).unwrap();
    assert_eq!(allocated(&bdev), 0);
    let mut ch = bdev.open_channel().unwrap();
    let last = bdev.num_blocks() - 8;
    write(&mut ch, last, &pattern(4096, 3));
    assert_eq!(read(&mut ch, last, 4096), pattern(4096, 3));
    assert_eq!(read(&mut ch, 1 << 30, 4096), vec![0; 4096], "never written");
    assert_eq!(allocated(&bdev), SHARD_BYTES as u64);
}

#[test]
fn writes_beyond_the_memory_limit_fail_with_enospc_and_unmaps_give_it_back() {
    let bdev = create_limited("Lim0", 8 << 11, 512, 2 * SHARD_BYTES as u64).unwrap();
    let mut ch = bdev.open_channel().unwrap();
    let per_shard = (SHARD_BYTES / 512) as u64;
    write(&mut ch, 0, &[1; 512]);
    write(&mut ch, per_shard, &[2; 512]);
    // A third shard would pass the limit: the write fails, nothing is allocated.
    let c = run(
        &mut ch,
        Request::write(2 * per_shard, 1, buf_with(&[3; 512]), 9),
    );
    assert_eq!(
        c.status,
        IoStatus::Failed(crate::IoError::Backend {
            errno: rustix::io::Errno::NOSPC.raw_os_error()
        })
    );
    assert_eq!(allocated(&bdev), 2 * SHARD_BYTES as u64);
    // Writes into shards that hold memory go on; an unmap of a whole shard frees it.
    write(&mut ch, 1, &[4; 512]);
    let c = run(&mut ch, Request::unmap(0, per_shard, 10));
    assert_eq!(c.status, IoStatus::Success);
    write(&mut ch, 2 * per_shard, &[3; 512]);
    assert_eq!(read(&mut ch, 2 * per_shard, 512), vec![3; 512]);
    assert_eq!(read(&mut ch, 0, 512), vec![0; 512], "unmapped");
}

#[test]
fn mem_total_is_read_in_kib_or_not_at_all() {
    assert_eq!(
        parse_mem_total("MemTotal:       24594112 kB\nMemFree:  1 kB\n"),
        Some(24_594_112 * 1024)
    );
    assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    assert_eq!(parse_mem_total("MemTotal: 12 MB\n"), None);
    assert_eq!(parse_mem_total("MemTotal: 18446744073709551615 kB\n"), None);
}
