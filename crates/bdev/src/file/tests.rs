use super::*;

use crate::local::testing::{buf_with, pattern, read, run, write};
use crate::{IoChannel, IoStatus, RejectReason, Request};

/// A temporary image of `len` bytes holding a pattern, in a directory under `dir`.
fn image(dir: &str, len: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let tmp = tempfile::tempdir_in(dir).expect("tempdir");
    let path = tmp.path().join("disk.img");
    let data = pattern(len, 0x3c);
    std::fs::write(&path, &data).expect("write image");
    (tmp, path, data)
}

fn detail(bdev: &Bdev, key: &str) -> String {
    bdev.details()
        .into_iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no {key} detail"))
        .1
}

fn opts(block_size: u32) -> FileOptions {
    FileOptions {
        block_size,
        ..FileOptions::default()
    }
}

fn channel(bdev: &Bdev) -> IoChannel {
    bdev.open_channel().expect("channel")
}

#[test]
fn describes_itself_like_spdk() {
    let (_tmp, path, _) = image("/tmp", 64 * 4096);
    let bdev = open("File0", &path, opts(4096)).expect("open");
    let i = bdev.info();
    assert_eq!(i.name, "File0");
    assert_eq!(i.product_name, "File disk");
    assert_eq!(i.driver, "file");
    assert_eq!((i.block_size, i.num_blocks), (4096, 64));
    assert!(i.flush && i.unmap && i.write_zeroes && !i.read_only);
    assert_eq!(i.serial.as_deref(), Some("File0"));
    assert_eq!(detail(&bdev, "path"), path.display().to_string());
}

#[test]
fn data_lands_in_the_file_with_several_block_sizes() {
    for bs in [512usize, 4096, 65536] {
        let (_tmp, path, mut expect) = image("/tmp", 16 * bs);
        let bdev = open("File0", &path, opts(bs as u32)).expect("open");
        assert_eq!(bdev.num_blocks(), 16);
        let mut ch = channel(&bdev);
        assert_eq!(read(&mut ch, 2, 3 * bs), expect[2 * bs..5 * bs]);
        let data = pattern(3 * bs, bs as u8);
        write(&mut ch, 7, &data);
        assert_eq!(read(&mut ch, 7, 3 * bs), data);
        assert_eq!(run(&mut ch, Request::flush(9)).status, IoStatus::Success);
        expect[7 * bs..10 * bs].copy_from_slice(&data);
        assert_eq!(std::fs::read(&path).expect("read image"), expect, "{bs}");
    }
}

#[test]
fn direct_io_is_used_on_the_tmp_file_system() {
    let (_tmp, path, _) = image("/tmp", 8 * 4096);
    for direct in [None, Some(true)] {
        let o = FileOptions {
            direct,
            ..opts(512)
        };
        let bdev = open("File0", &path, o).expect("open");
        assert_eq!(detail(&bdev, "direct"), "true", "{direct:?}");
        let mut ch = channel(&bdev);
        write(&mut ch, 1, &pattern(1024, 1));
        assert_eq!(read(&mut ch, 1, 1024), pattern(1024, 1));
    }
    let o = FileOptions {
        direct: Some(false),
        ..opts(512)
    };
    let bdev = open("File0", &path, o).expect("open");
    assert_eq!(detail(&bdev, "direct"), "false");
}

#[test]
fn tmpfs_falls_back_to_buffered_io() {
    let (_tmp, path, data) = image("/dev/shm", 8 * 512);
    let bdev = open("File0", &path, opts(512)).expect("open");
    assert_eq!(detail(&bdev, "direct"), "false");
    let mut ch = channel(&bdev);
    assert_eq!(read(&mut ch, 0, 4096), data);
    write(&mut ch, 3, &pattern(512, 2));
    assert_eq!(read(&mut ch, 3, 512), pattern(512, 2));

    let required = FileOptions {
        direct: Some(true),
        ..opts(512)
    };
    let err = open("File0", &path, required).expect_err("direct I/O is required");
    assert!(matches!(
        err,
        Error::InvalidOption {
            option: "direct",
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn open_refusing_o_direct_falls_back_unless_required() {
    let (_tmp, path, _) = image("/tmp", 8 * 512);
    let refuse_direct = |p: &Path, ro: bool, direct: bool| {
        if direct {
            Err(io::Error::from_raw_os_error(Errno::INVAL.raw_os_error()))
        } else {
            open_raw(p, ro, false)
        }
    };
    let (_, direct) =
        open_file("File0", &path, opts(512), refuse_direct).expect("buffered fallback");
    assert!(!direct);
    let required = FileOptions {
        direct: Some(true),
        ..opts(512)
    };
    let err = open_file("File0", &path, required, refuse_direct).expect_err("required");
    let msg = err.to_string();
    assert!(msg.contains("refuses O_DIRECT"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn direct_io_needs_alignment_the_block_size_and_buffers_meet() {
    let dio = |mem, offset| Some(DioAlign { mem, offset });
    assert_eq!(dio_verdict(dio(512, 512), false, 512), None);
    assert_eq!(dio_verdict(dio(4096, 4096), false, 4096), None);
    assert!(dio_verdict(dio(0, 0), false, 512).is_some());
    let why = dio_verdict(dio(512, 4096), false, 512).expect("4Kn with 512-byte blocks");
    assert!(why.contains("4096-byte aligned offsets"), "{why}");
    assert!(dio_verdict(dio(8192, 512), false, 512).is_some());
    assert!(dio_verdict(None, true, 512).is_some());
    assert_eq!(dio_verdict(None, false, 512), None);
}

#[test]
fn read_only_file_refuses_writes() {
    let (_tmp, path, data) = image("/tmp", 8 * 512);
    let o = FileOptions {
        read_only: true,
        ..opts(512)
    };
    let bdev = open("File0", &path, o).expect("open");
    assert!(bdev.info().read_only);
    let mut ch = channel(&bdev);
    for req in [
        Request::write(0, 1, buf_with(&[1; 512]), 1),
        Request::unmap(0, 1, 2),
        Request::write_zeroes(0, 1, 3),
    ] {
        let r = ch.submit(req).expect_err("read-only");
        assert!(matches!(r.error, RejectReason::ReadOnly { .. }));
    }
    assert_eq!(read(&mut ch, 0, 8 * 512), data);
    assert_eq!(run(&mut ch, Request::flush(4)).status, IoStatus::Success);
    assert_eq!(std::fs::read(&path).expect("read image"), data);
}

#[test]
fn out_of_range_and_misaligned_requests_are_refused() {
    let (_tmp, path, _) = image("/tmp", 8 * 4096);
    let bdev = open("File0", &path, opts(4096)).expect("open");
    let mut ch = channel(&bdev);
    let r = ch
        .submit(Request::read(7, 2, buf_with(&[0; 8192]), 1))
        .expect_err("beyond the end");
    assert!(matches!(
        r.error,
        RejectReason::OutOfRange {
            offset_blocks: 7,
            num_blocks: 2,
            capacity: 8
        }
    ));
    let r = ch
        .submit(Request::write(0, 1, buf_with(&[0; 1024]), 2))
        .expect_err("part of a block");
    assert!(matches!(r.error, RejectReason::BufferSize { .. }));
    let r = ch
        .submit(Request::unmap(4, 5, 3))
        .expect_err("beyond the end");
    assert!(matches!(r.error, RejectReason::OutOfRange { .. }));
}

#[test]
fn unmap_and_write_zeroes_zero_exactly_their_range() {
    // On ext4 (/tmp) both are fallocate calls; on tmpfs ZERO_RANGE is unsupported
    // and write-zeroes writes zeros.
    for dir in ["/tmp", "/dev/shm"] {
        for bs in [512usize, 4096] {
            let (_tmp, path, data) = image(dir, 64 * bs);
            let bdev = open("File0", &path, opts(bs as u32)).expect("open");
            let mut ch = channel(&bdev);
            let c = run(&mut ch, Request::unmap(3, 5, 1));
            assert_eq!(c.status, IoStatus::Success);
            let c = run(&mut ch, Request::write_zeroes(20, 33, 2));
            assert_eq!(c.status, IoStatus::Success);
            let mut expect = data.clone();
            expect[3 * bs..8 * bs].fill(0);
            expect[20 * bs..53 * bs].fill(0);
            assert_eq!(read(&mut ch, 0, 64 * bs), expect, "{dir} {bs}");
            assert_eq!(std::fs::read(&path).expect("read image"), expect);
            assert_eq!(
                std::fs::metadata(&path).expect("stat").len(),
                64 * bs as u64
            );
        }
    }
}

#[test]
fn writing_zeros_covers_ranges_beyond_one_chunk() {
    let (_tmp, path, data) = image("/tmp", 3 << 20);
    let bdev = open("File0", &path, opts(4096)).expect("open");
    let disk = FileDisk {
        file: open_raw(&path, false, true).expect("open"),
        path: path.clone(),
        direct: true,
    };
    disk.write_zero_bytes(4096, (2 << 20) + 8192)
        .expect("write zeros");
    let mut expect = data.clone();
    expect[4096..(2 << 20) + 12288].fill(0);
    let mut ch = channel(&bdev);
    assert_eq!(read(&mut ch, 0, 3 << 20), expect);
}

#[test]
fn sizes_that_are_not_whole_blocks_are_refused_naming_the_path() {
    for (len, bs) in [(1000, 512), (256, 512), (0, 512), (8192 + 512, 4096)] {
        let (_tmp, path, _) = image("/tmp", len);
        let err = open("File0", &path, opts(bs)).expect_err("bad size");
        assert!(matches!(err, Error::InvalidOption { option: "path", .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{len} bytes")), "{msg}");
    }
}

#[test]
fn missing_files_and_directories_are_refused_naming_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing.img");
    let err = open("File0", &missing, FileOptions::default()).expect_err("missing");
    assert!(err.to_string().contains("missing.img"), "{err}");
    let o = FileOptions {
        read_only: true,
        ..FileOptions::default()
    };
    let err = open("File0", tmp.path(), o).expect_err("directory");
    let msg = err.to_string();
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    assert!(matches!(
        open("File0", tmp.path(), opts(3000)),
        Err(Error::InvalidOption {
            option: "block_size",
            ..
        })
    ));
}

#[test]
fn channels_on_several_threads_share_the_file() {
    let (_tmp, path, _) = image("/tmp", 64 * 4096);
    let bdev = open("File0", &path, opts(4096)).expect("open");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let bdev = bdev.clone();
            s.spawn(move || {
                let mut ch = channel(&bdev);
                for b in 0..16 {
                    write(&mut ch, t * 16 + b, &pattern(4096, (t * 16 + b) as u8));
                }
            });
        }
    });
    let mut ch = channel(&bdev);
    for b in 0..64 {
        assert_eq!(read(&mut ch, b, 4096), pattern(4096, b as u8), "block {b}");
    }
}
