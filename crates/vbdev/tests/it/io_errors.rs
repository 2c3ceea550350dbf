//! `vbdev io` failures: usage errors (exit 2), attach failures and timeouts
//! (exit 1). Errors go to stderr only and name the flag or path at fault.

use std::os::unix::net::UnixListener;
use std::time::Duration;

use crate::qsd::{Backend, QsdBuilder};
use crate::util::{io, path, vbdev};

const MIB: u64 = 1 << 20;

/// The `vbdev io` commands that take `--offset`/`--length`, with the extra
/// arguments each one needs.
const RANGE_CMDS: [&[&str]; 4] = [
    &["read"],
    &["write", "--pattern", "1"],
    &["discard"],
    &["write-zeroes"],
];

fn range_args<'a>(cmd: &[&'a str], offset: &'a str, length: &'a str) -> Vec<&'a str> {
    let mut a = cmd.to_vec();
    a.extend(["--offset", offset, "--length", length]);
    a
}

#[test]
fn unaligned_offset_is_usage_error() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    for cmd in RANGE_CMDS {
        io(qsd.socket(), &range_args(cmd, "100", "512")).expect_failure(
            2,
            &["vbdev: --offset 100 is not a multiple of the block size 512"],
        );
    }
}

#[test]
fn unaligned_length_is_usage_error() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    for cmd in RANGE_CMDS {
        io(qsd.socket(), &range_args(cmd, "0", "1000")).expect_failure(
            2,
            &["vbdev: --length 1000 is not a multiple of the block size 512"],
        );
    }
}

#[test]
fn alignment_follows_the_device_block_size() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .block_size(4096)
        .start();
    io(
        qsd.socket(),
        &["read", "--offset", "512", "--length", "4096"],
    )
    .expect_failure(
        2,
        &["--offset 512 is not a multiple of the block size 4096"],
    );
    io(
        qsd.socket(),
        &["read", "--offset", "4096", "--length", "512"],
    )
    .expect_failure(
        2,
        &["--length 512 is not a multiple of the block size 4096"],
    );
    io(
        qsd.socket(),
        &["read", "--offset", "4096", "--length", "4096"],
    )
    .expect_ok();
}

#[test]
fn zero_length_is_usage_error() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    for cmd in RANGE_CMDS {
        io(qsd.socket(), &range_args(cmd, "0", "0"))
            .expect_failure(2, &["vbdev: --length must be positive"]);
    }
}

/// A range beyond the device is a runtime failure (exit 1): the command line is well
/// formed, only the device can say it is smaller.
#[test]
fn range_beyond_device_size_fails_with_exit_1() {
    let size = 64 * MIB;
    let qsd = QsdBuilder::new(Backend::File { size }).start();
    let last = (size - 512).to_string();
    let end = size.to_string();
    let huge = (u64::MAX - 511).to_string();
    for cmd in RANGE_CMDS {
        // Straddling the end.
        io(qsd.socket(), &range_args(cmd, &last, "1024")).expect_failure(
            1,
            &[&format!(
                "vbdev: range {last}+1024 exceeds the device size of {size} bytes"
            )],
        );
        // Starting at the end.
        io(qsd.socket(), &range_args(cmd, &end, "512"))
            .expect_failure(1, &["exceeds the device size of 67108864 bytes"]);
        // Far beyond.
        io(qsd.socket(), &range_args(cmd, &huge, "1024"))
            .expect_failure(1, &["exceeds the device size"]);
    }
    // The last block itself is fine.
    io(
        qsd.socket(),
        &["read", "--offset", &last, "--length", "512"],
    )
    .expect_ok();
}

#[test]
fn bad_queue_options_are_usage_errors() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    io(qsd.socket(), &["--queue-size", "100", "info"])
        .expect_failure(2, &["vbdev: --queue-size 100 is not a power of two"]);
    io(qsd.socket(), &["--queue-size", "0", "info"]).expect_failure(2, &["--queue-size 0"]);
    io(qsd.socket(), &["--queues", "0", "info"])
        .expect_failure(2, &["vbdev: --queues must be at least 1"]);
    io(qsd.socket(), &["--timeout-ms", "0", "info"])
        .expect_failure(2, &["vbdev: --timeout-ms must be positive"]);
    // Out of the u16 range: clap rejects it.
    io(qsd.socket(), &["--queue-size", "65536", "info"]).expect_failure(2, &["--queue-size"]);
}

#[test]
fn option_errors_are_found_before_attaching() {
    // Nothing listens here: a usage error must win over the attach failure.
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("nobody.sock");
    io(&sock, &["--queue-size", "100", "info"]).expect_failure(2, &["--queue-size 100"]);
    io(&sock, &["--queues", "0", "info"]).expect_failure(2, &["--queues"]);
}

#[test]
fn missing_or_conflicting_arguments_are_usage_errors() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let sock = qsd.socket();
    io(sock, &["read", "--offset", "0"]).expect_failure(2, &["--length"]);
    io(sock, &["read", "--length", "512"]).expect_failure(2, &["--offset"]);
    io(sock, &["discard", "--offset", "0"]).expect_failure(2, &["--length"]);
    io(sock, &["write-zeroes", "--length", "512"]).expect_failure(2, &["--offset"]);
    io(sock, &["write", "--length", "512", "--pattern", "1"]).expect_failure(2, &["--offset"]);
    io(sock, &["write", "--offset", "0", "--pattern", "1"]).expect_failure(2, &["--length"]);
    io(
        sock,
        &[
            "write",
            "--offset",
            "0",
            "--in",
            "/dev/null",
            "--pattern",
            "1",
        ],
    )
    .expect_failure(2, &["--in", "--pattern"]);
    io(sock, &["write", "--offset", "0"]).expect_failure(
        2,
        &["vbdev: write needs --in FILE or --pattern BYTE --length BYTES"],
    );
    io(
        sock,
        &[
            "read",
            "--offset",
            "0",
            "--length",
            "512",
            "--pattern",
            "256",
        ],
    )
    .expect_failure(2, &["--pattern", "not a byte value"]);
    io(sock, &["read", "--offset", "-512", "--length", "512"]).expect_failure(2, &["--offset"]);
    io(sock, &[] as &[&str]).expect_failure(2, &["Usage:"]);
    vbdev(&["io", "info"]).expect_failure(2, &["--vhost-user"]);
    vbdev(&[
        "io",
        "--vhost-user",
        "/nonexistent",
        "--dev-type",
        "nvme",
        "info",
    ])
    .expect_failure(2, &["--dev-type"]);
    vbdev(&["frobnicate"]).expect_failure(2, &["frobnicate"]);
}

#[test]
fn bad_input_files_are_usage_errors() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.bin");
    io(
        qsd.socket(),
        &["write", "--offset", "0", "--in", path(&missing)],
    )
    .expect_failure(2, &[&format!("vbdev: cannot read {}", missing.display())]);

    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").expect("write empty file");
    io(
        qsd.socket(),
        &["write", "--offset", "0", "--in", path(&empty)],
    )
    .expect_failure(2, &[&format!("vbdev: {} is empty", empty.display())]);

    let odd = dir.path().join("odd.bin");
    std::fs::write(&odd, [1u8; 1000]).expect("write 1000-byte file");
    io(
        qsd.socket(),
        &["write", "--offset", "0", "--in", path(&odd)],
    )
    .expect_failure(
        2,
        &["--in file size 1000 is not a multiple of the block size 512"],
    );

    // Far more than the disk holds, and more than this machine's memory (24 GiB): the
    // range is refused before anything is read or allocated. Both were loaded first
    // (a 3 GiB file took 6.3 GB of memory before its refusal; 1 TiB of pattern failed
    // in the allocation).
    let huge = dir.path().join("huge.bin");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(64 << 30))
        .expect("sparse 64 GiB file");
    io(
        qsd.socket(),
        &["write", "--offset", "0", "--in", path(&huge)],
    )
    .expect_failure(
        1,
        &["range 0+68719476736 exceeds the device size of 67108864 bytes"],
    );
    io(
        qsd.socket(),
        &[
            "write",
            "--offset",
            "0",
            "--pattern",
            "7",
            "--length",
            "1099511627776",
        ],
    )
    .expect_failure(
        1,
        &["range 0+1099511627776 exceeds the device size of 67108864 bytes"],
    );
}

#[test]
fn output_file_that_cannot_be_written_fails() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("no/such/dir/out.bin");
    io(
        qsd.socket(),
        &[
            "read",
            "--offset",
            "0",
            "--length",
            "512",
            "--out",
            path(&out),
        ],
    )
    .expect_failure(1, &[&format!("vbdev: cannot write {}", out.display())]);
}

#[test]
fn missing_socket_fails_fast_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("nobody.sock");
    // A long timeout: the failure must not wait for it.
    let run = io(&sock, &["--timeout-ms", "30000", "info"]);
    run.expect_failure(1, &["vbdev: cannot attach", path(&sock)]);
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?} to report a missing socket",
        run.elapsed
    );
    let run = io(&sock, &["--json", "info"]);
    run.expect_failure(1, &[path(&sock)]);
}

#[test]
fn silent_target_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("silent.sock");
    // Connections queue in the backlog; none is ever accepted or answered.
    let listener = UnixListener::bind(&sock).expect("bind test socket");
    let run = io(&sock, &["--timeout-ms", "1000", "--json", "info"]);
    run.expect_failure(1, &["vbdev: cannot attach", "did not answer", "1000 ms"]);
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?} to time out after 1000 ms",
        run.elapsed
    );
    assert!(
        run.elapsed >= Duration::from_millis(900),
        "gave up after {:?}, before the 1000 ms timeout",
        run.elapsed
    );
    drop(listener);
}

#[test]
fn target_hanging_up_fails_with_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("hangup.sock");
    let listener = UnixListener::bind(&sock).expect("bind test socket");
    // Accept one connection and close it at once.
    let peer = std::thread::spawn(move || drop(listener.accept().expect("accept")));
    let run = io(&sock, &["--timeout-ms", "5000", "info"]);
    peer.join().expect("peer thread");
    // The broken vhost-user socket is an attach failure, not a quiet broken stdout pipe.
    run.expect_failure(1, &["vbdev: cannot attach"]);
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?} to notice the hang-up",
        run.elapsed
    );
}

#[test]
fn failures_with_json_print_nothing_on_stdout() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .num_queues(2)
        .start();
    for args in [
        &["--json", "read", "--offset", "100", "--length", "512"][..],
        &["--json", "--queues", "4", "info"],
        &["--json", "write", "--offset", "0"],
        &["--json", "read", "--offset", "0"],
    ] {
        let run = io(qsd.socket(), args);
        assert!(matches!(run.code, Some(1 | 2)), "{run:#?}");
        assert!(run.stdout.is_empty(), "{run:#?}");
        assert!(
            run.stderr.contains("vbdev: ") || run.stderr.contains("error: "),
            "{run:#?}"
        );
        assert!(!run.stderr.trim_start().starts_with('{'), "{run:#?}");
    }
}
