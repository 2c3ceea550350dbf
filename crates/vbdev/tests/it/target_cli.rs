//! `vbdev target`: a foreground vhost-user target driven by `vbdev io`.

use crate::util::{InfoJson, Target, det_bytes, io, path, vbdev};

const MIB: u64 = 1 << 20;

#[test]
fn blk_target_serves_vbdev_io_and_removes_its_socket_on_sigterm() {
    let mut t = Target::start(&["--malloc", "16M", "--queues", "2"]);
    let info: InfoJson = io(t.socket(), &["--queues", "2", "info", "--json"]).json();
    assert_eq!(info.block_size, 512);
    assert_eq!(info.num_blocks, 16 * MIB / 512);
    assert_eq!(info.num_queues, 2);
    assert!(info.unmap && info.write_zeroes && info.flush, "{info:?}");
    io(
        t.socket(),
        &[
            "write",
            "--offset",
            "1536",
            "--pattern",
            "0x6b",
            "--length",
            "1048576",
        ],
    )
    .expect_ok();
    io(
        t.socket(),
        &[
            "read",
            "--offset",
            "1536",
            "--pattern",
            "0x6b",
            "--length",
            "1048576",
        ],
    )
    .expect_ok();
    io(
        t.socket(),
        &["write-zeroes", "--offset", "1536", "--length", "4096"],
    )
    .expect_ok();
    io(
        t.socket(),
        &[
            "read",
            "--offset",
            "1536",
            "--pattern",
            "0",
            "--length",
            "4096",
        ],
    )
    .expect_ok();
    assert_eq!(t.signal(libc::SIGTERM), 0);
    assert!(!t.socket().exists(), "socket removed on exit");
}

#[test]
fn null_target_without_read_zeroes_serves_io() {
    let mut t = Target::start(&["--null", "16M", "--null-read-zeroes", "off", "--poll"]);
    let info: InfoJson = io(t.socket(), &["info", "--json"]).json();
    assert_eq!(info.num_blocks, 16 * MIB / 512);
    for cmd in ["write", "read"] {
        // The initiator's read buffers start zeroed, and are left so.
        io(
            t.socket(),
            &[
                cmd,
                "--offset",
                "4096",
                "--pattern",
                "0",
                "--length",
                "65536",
            ],
        )
        .expect_ok();
    }
    assert_eq!(t.signal(libc::SIGTERM), 0);
}

#[test]
fn polling_target_with_more_queues_than_poll_threads_serves_every_queue() {
    let mut t = Target::start(&[
        "--malloc",
        "16M",
        "--poll",
        "--queues",
        "4",
        "--poll-threads",
        "2",
    ]);
    for pattern in ["0x5c", "0x3d"] {
        for cmd in ["write", "read"] {
            io(
                t.socket(),
                &[
                    "--queues",
                    "4",
                    cmd,
                    "--offset",
                    "4096",
                    "--pattern",
                    pattern,
                    "--length",
                    "4194304",
                ],
            )
            .expect_ok();
        }
    }
    assert_eq!(t.signal(libc::SIGTERM), 0);
    assert!(!t.socket().exists());
}

#[test]
fn file_target_writes_land_in_the_file_and_sigint_stops_it() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let img = dir.path().join("disk.raw");
    std::fs::write(&img, vec![0u8; 8 * MIB as usize]).unwrap();
    let data = det_bytes(5, 65536);
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &data).unwrap();
    let mut t = Target::start(&["--file", path(&img), "--poll"]);
    io(
        t.socket(),
        &["write", "--offset", "4608", "--in", path(&input)],
    )
    .expect_ok();
    io(t.socket(), &["flush"]).expect_ok();
    assert_eq!(t.signal(libc::SIGINT), 0);
    let disk = std::fs::read(&img).unwrap();
    assert!(
        disk[4608..4608 + 65536] == data[..],
        "data in the image file"
    );
    assert!(!t.socket().exists());
}

#[test]
fn read_only_and_4096_byte_targets_show_through_vbdev_io() {
    let t = Target::start(&["--null", "64M", "--block-size", "4096", "--read-only"]);
    let info: InfoJson = io(t.socket(), &["info", "--json"]).json();
    assert_eq!(info.block_size, 4096);
    assert_eq!(info.num_blocks, 64 * MIB / 4096);
    assert!(info.read_only);
    io(
        t.socket(),
        &[
            "write",
            "--offset",
            "0",
            "--pattern",
            "1",
            "--length",
            "4096",
        ],
    )
    .expect_failure(1, &["read-only"]);
    io(
        t.socket(),
        &[
            "read",
            "--offset",
            "4096",
            "--pattern",
            "0",
            "--length",
            "8192",
        ],
    )
    .expect_ok();
}

#[test]
fn a_second_target_on_a_live_socket_is_refused_and_the_first_keeps_it() {
    let mut first = Target::start(&["--malloc", "1M"]);
    let sock = path(first.socket()).to_owned();
    vbdev(&["target", "--socket", &sock, "--null", "1M"])
        .expect_failure(1, &["is in use: another process listens on it"]);
    // The refused one neither took the socket over nor removed it on its way out.
    let info: InfoJson = io(first.socket(), &["info", "--json"]).json();
    assert_eq!(info.num_blocks, MIB / 512);
    assert_eq!(first.signal(libc::SIGTERM), 0);
    assert!(!first.socket().exists(), "socket removed on exit");
}

#[test]
fn target_usage_errors_exit_2() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let sock = dir.path().join("x.sock");
    let s = path(&sock);
    vbdev(&["target", "--socket", s])
        .expect_failure(2, &["--malloc SIZE, --null SIZE or --file PATH"]);
    vbdev(&["target", "--socket", s, "--malloc", "1000"])
        .expect_failure(2, &["--malloc 1000", "block size 512"]);
    vbdev(&["target", "--socket", s, "--malloc", "1M", "--null", "1M"]).expect_code(2);
    // A block size of 0 divided the disk size (a panic); 768 is not a block size.
    for bs in ["0", "768", "131072"] {
        for disk in ["--malloc", "--null"] {
            vbdev(&["target", "--socket", s, disk, "1M", "--block-size", bs])
                .expect_failure(2, &["is not a block size"]);
        }
    }
    vbdev(&["target", "--socket", s, "--malloc", "12X"]).expect_code(2);
    vbdev(&[
        "target",
        "--socket",
        s,
        "--malloc",
        "1M",
        "--null-read-zeroes",
        "off",
    ])
    .expect_failure(2, &["--null-read-zeroes applies to --null only"]);
    vbdev(&[
        "target",
        "--socket",
        s,
        "--null",
        "1M",
        "--null-read-zeroes",
        "no",
    ])
    .expect_failure(2, &["not on or off"]);
    vbdev(&["target", "--socket", s, "--malloc", "1M", "--queues", "0"])
        .expect_failure(2, &["--queues"]);
    // Decided by the command line alone: usage errors (they exited 1 before).
    vbdev(&[
        "target", "--socket", s, "--malloc", "1M", "--queues", "65535",
    ])
    .expect_failure(2, &["--queues 65535 is not from 1 to 64"]);
    let long = dir.path().join("s".repeat(120));
    vbdev(&["target", "--socket", path(&long), "--malloc", "1M"])
        .expect_failure(2, &["a Unix socket path holds at most 107"]);
    // Answered by the world: a runtime failure (it exited 2 before).
    vbdev(&["target", "--socket", s, "--file", "/nonexistent/disk.raw"])
        .expect_failure(1, &["/nonexistent/disk.raw"]);
    vbdev(&[
        "target",
        "--socket",
        s,
        "--malloc",
        "1M",
        "--poll",
        "--queues",
        "2",
        "--poll-threads",
        "3",
    ])
    .expect_failure(2, &["--poll-threads 3"]);
    // Without --poll there is nothing to poll with.
    vbdev(&[
        "target",
        "--socket",
        s,
        "--malloc",
        "1M",
        "--poll-threads",
        "1",
    ])
    .expect_failure(2, &["--poll"]);
    assert!(!sock.exists());
}

#[test]
fn scsi_target_starts_with_targets_and_luns_and_stops_on_sigterm() {
    let mut t = Target::start(&[
        "--dev-type",
        "scsi",
        "--malloc",
        "8M",
        "--targets",
        "2",
        "--luns",
        "3",
        "--queues",
        "2",
    ]);
    // (vhost-user cannot tell a frontend the device type, so `vbdev io` needs
    // `--dev-type scsi` for it: see scsi_io.rs.)
    assert_eq!(t.signal(libc::SIGTERM), 0);
    assert!(!t.socket().exists());
}

#[test]
fn scsi_target_usage_errors_exit_2() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let sock = dir.path().join("s.sock");
    let s = path(&sock);
    let img = dir.path().join("d.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    vbdev(&[
        "target",
        "--socket",
        s,
        "--dev-type",
        "scsi",
        "--file",
        path(&img),
        "--luns",
        "2",
    ])
    .expect_failure(2, &["--file serves one LUN"]);
    vbdev(&[
        "target",
        "--socket",
        s,
        "--dev-type",
        "scsi",
        "--malloc",
        "1M",
        "--read-only",
    ])
    .expect_failure(2, &["--read-only"]);
    vbdev(&[
        "target",
        "--socket",
        s,
        "--dev-type",
        "scsi",
        "--malloc",
        "1M",
        "--luns",
        "0",
    ])
    .expect_failure(2, &["--luns"]);
    vbdev(&["target", "--socket", s, "--malloc", "1M", "--luns", "2"])
        .expect_failure(2, &["--dev-type scsi"]);
    assert!(!sock.exists());
}
