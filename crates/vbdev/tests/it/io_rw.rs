//! `vbdev io read|write|flush|discard|write-zeroes` against a real image: the
//! data is checked through vbdev and, after qsd has stopped, in the image file.

use std::path::Path;

use crate::qsd::{Backend, QsdBuilder};
use crate::util::{det_bytes, first_not, io, path, vbdev_stdout_closed};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn s(n: u64) -> String {
    n.to_string()
}

/// `read --json --offset OFF --length LEN --pattern BYTE`, which must succeed;
/// returns whether the data matched.
#[track_caller]
fn read_matches(socket: &Path, off: u64, len: u64, byte: u8) -> bool {
    let pattern = format!("{byte:#04x}");
    let args = [
        "--json",
        "read",
        "--offset",
        &s(off),
        "--length",
        &s(len),
        "--pattern",
        &pattern,
    ];
    let run = io(socket, &args);
    assert!(matches!(run.code, Some(0 | 1)), "{run:#?}");
    let op = run.op();
    op.expect("read", off, len);
    let ok = op.pattern_ok.expect("read --pattern reports pattern_ok");
    if ok {
        run.expect_ok();
    } else {
        run.expect_code(1).expect_stderr(&["pattern mismatch"]);
    }
    ok
}

#[test]
fn pattern_write_then_read_round_trips_at_unaligned_offset() {
    // Block aligned but not page aligned.
    const OFF: u64 = 512 * 3;
    const LEN: u64 = 64 * KIB;
    let mut qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let sock = qsd.socket().to_owned();

    let w = io(
        &sock,
        &[
            "--json",
            "write",
            "--offset",
            &s(OFF),
            "--pattern",
            "0x5a",
            "--length",
            &s(LEN),
        ],
    );
    w.expect_ok();
    let op = w.op();
    op.expect("write", OFF, LEN);
    assert_eq!(op.pattern_ok, None, "writes report no pattern_ok");

    let r = io(
        &sock,
        &[
            "read",
            "--offset",
            &s(OFF),
            "--length",
            &s(LEN),
            "--pattern",
            "90", // 0x5a in decimal
            "--json",
        ],
    );
    r.expect_ok();
    let op = r.op();
    op.expect("read", OFF, LEN);
    assert_eq!(op.pattern_ok, Some(true));

    // The blocks around the range are untouched.
    assert!(read_matches(&sock, OFF - 512, 512, 0));
    assert!(read_matches(&sock, OFF + LEN, 512, 0));

    // The wrong pattern: exit 1, the first bad offset on stderr, and the
    // result (pattern_ok false) still on stdout.
    let bad = io(
        &sock,
        &[
            "--json",
            "read",
            "--offset",
            &s(OFF),
            "--length",
            &s(LEN),
            "--pattern",
            "0x5b",
        ],
    );
    bad.expect_code(1)
        .expect_stderr(&["vbdev: pattern mismatch at offset 1536: expected 0x5b, found 0x5a"]);
    let op = bad.op();
    assert_eq!(op.pattern_ok, Some(false));

    // A range running one block past the written data fails at its end.
    let past = io(
        &sock,
        &[
            "read",
            "--offset",
            &s(OFF),
            "--length",
            &s(LEN + 512),
            "--pattern",
            "0x5a",
        ],
    );
    // In text mode a mismatch prints nothing on stdout: the error goes to stderr.
    past.expect_failure(
        1,
        &[&format!(
            "pattern mismatch at offset {}: expected 0x5a, found 0x00",
            OFF + LEN
        )],
    );

    qsd.stop();
    let data = qsd.read_image(OFF, LEN as usize);
    assert_eq!(first_not(&data, 0x5a), None, "image not written");
    assert_eq!(qsd.read_image(OFF - 1, 1), [0]);
    assert_eq!(qsd.read_image(OFF + LEN, 1), [0]);
}

#[test]
fn human_write_and_flush_report_one_line() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let w = io(
        qsd.socket(),
        &[
            "write",
            "--offset",
            "4096",
            "--pattern",
            "7",
            "--length",
            "8192",
        ],
    );
    w.expect_ok();
    assert_eq!(w.stdout.lines().count(), 1, "{}", w.stdout);
    assert!(
        w.stdout.starts_with("write 8192 bytes at offset 4096 ok ("),
        "{}",
        w.stdout
    );
    let f = io(qsd.socket(), &["flush"]);
    f.expect_ok();
    assert!(
        f.stdout.starts_with("flush 0 bytes at offset 0 ok ("),
        "{}",
        f.stdout
    );
    assert!(read_matches(qsd.socket(), 4096, 8192, 7));
}

#[test]
fn read_without_out_or_pattern_hexdumps() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    io(
        qsd.socket(),
        &[
            "write",
            "--offset",
            "512",
            "--pattern",
            "0x41",
            "--length",
            "512",
        ],
    )
    .expect_ok();
    let r = io(
        qsd.socket(),
        &["read", "--offset", "512", "--length", "1024"],
    );
    r.expect_ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1024 / 16 + 1, "{}", r.stdout);
    assert_eq!(
        lines[0],
        "00000200: 4141 4141 4141 4141 4141 4141 4141 4141  AAAAAAAAAAAAAAAA"
    );
    assert_eq!(
        lines[31],
        "000003f0: 4141 4141 4141 4141 4141 4141 4141 4141  AAAAAAAAAAAAAAAA"
    );
    assert_eq!(
        lines[32],
        "00000400: 0000 0000 0000 0000 0000 0000 0000 0000  ................"
    );
    assert!(
        lines[64].starts_with("read 1024 bytes at offset 512 ok ("),
        "{}",
        lines[64]
    );
}

#[test]
fn read_json_without_pattern_prints_only_the_result() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let r = io(
        qsd.socket(),
        &["--json", "read", "--offset", "0", "--length", "4096"],
    );
    r.expect_ok();
    let op = r.op();
    op.expect("read", 0, 4096);
    assert_eq!(op.pattern_ok, None);
}

#[test]
fn file_write_then_read_to_file_round_trips_1_mib() {
    const OFF: u64 = 2 * MIB + 7 * 512;
    const LEN: usize = 1 << 20;
    let mut qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let data = det_bytes(0x7662_6465_7631, LEN);
    std::fs::write(&input, &data).expect("write input file");

    let w = io(
        qsd.socket(),
        &["--json", "write", "--offset", &s(OFF), "--in", path(&input)],
    );
    w.expect_ok();
    let op = w.op();
    op.expect("write", OFF, LEN as u64);

    let r = io(
        qsd.socket(),
        &[
            "--json",
            "read",
            "--offset",
            &s(OFF),
            "--length",
            &s(LEN as u64),
            "--out",
            path(&output),
        ],
    );
    r.expect_ok();
    let op = r.op();
    op.expect("read", OFF, LEN as u64);
    assert_eq!(op.pattern_ok, None);
    let back = std::fs::read(&output).expect("read output file");
    assert_eq!(back.len(), LEN);
    assert!(back == data, "read --out differs from write --in");

    qsd.stop();
    assert!(
        qsd.read_image(OFF, LEN) == data,
        "the image does not hold the written file"
    );
    assert_eq!(first_not(&qsd.read_image(OFF - 512, 512), 0), None);
    assert_eq!(first_not(&qsd.read_image(OFF + LEN as u64, 512), 0), None);
}

#[test]
fn discard_and_write_zeroes_zero_exactly_their_ranges() {
    const DISCARD: (u64, u64) = (MIB, MIB);
    const ZEROES: (u64, u64) = (4 * MIB, 64 * KIB);
    let mut qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .prefill(0xff)
        .start();
    let sock = qsd.socket().to_owned();

    let d = io(
        &sock,
        &[
            "discard",
            "--offset",
            &s(DISCARD.0),
            "--length",
            &s(DISCARD.1),
            "--json",
        ],
    );
    d.expect_ok();
    let op = d.op();
    op.expect("discard", DISCARD.0, DISCARD.1);

    let z = io(
        &sock,
        &[
            "write-zeroes",
            "--offset",
            &s(ZEROES.0),
            "--length",
            &s(ZEROES.1),
            "--json",
        ],
    );
    z.expect_ok();
    let op = z.op();
    op.expect("write_zeroes", ZEROES.0, ZEROES.1);

    let f = io(&sock, &["flush", "--json"]);
    f.expect_ok();
    let op = f.op();
    op.expect("flush", 0, 0);

    // Through the device: zeroed ranges read as zero, their neighbours as 0xff.
    assert!(read_matches(&sock, ZEROES.0, ZEROES.1, 0));
    assert!(read_matches(&sock, ZEROES.0 - 512, 512, 0xff));
    assert!(read_matches(&sock, ZEROES.0 + ZEROES.1, 512, 0xff));
    assert!(read_matches(&sock, DISCARD.0 - 512, 512, 0xff));
    assert!(read_matches(&sock, DISCARD.0 + DISCARD.1, 512, 0xff));

    qsd.stop();
    for (off, len) in [DISCARD, ZEROES] {
        let data = qsd.read_image(off, len as usize);
        assert_eq!(
            first_not(&data, 0),
            None,
            "range {off}+{len} is not zero in the image"
        );
        let before = qsd.read_image(off - 4096, 4096);
        assert_eq!(first_not(&before, 0xff), None, "bytes before {off} changed");
        let after = qsd.read_image(off + len, 4096);
        assert_eq!(
            first_not(&after, 0xff),
            None,
            "bytes after {off}+{len} changed"
        );
    }
    // Far away from both ranges.
    assert_eq!(first_not(&qsd.read_image(32 * MIB, 4096), 0xff), None);
}

#[test]
fn read_only_export_refuses_changes_and_serves_reads() {
    let mut qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .read_only()
        .prefill(0x11)
        .start();
    let sock = qsd.socket().to_owned();

    let w = io(
        &sock,
        &[
            "write",
            "--offset",
            "0",
            "--pattern",
            "0x22",
            "--length",
            "4096",
        ],
    );
    w.expect_failure(1, &["vbdev: write refused", "read-only"]);
    // --json changes nothing for errors: a human message on stderr only.
    let w = io(
        &sock,
        &[
            "--json",
            "write",
            "--offset",
            "0",
            "--pattern",
            "0x22",
            "--length",
            "4096",
        ],
    );
    w.expect_failure(1, &["vbdev: write refused", "read-only"]);
    io(&sock, &["discard", "--offset", "0", "--length", "4096"]).expect_failure(1, &["read-only"]);
    io(
        &sock,
        &["write-zeroes", "--offset", "0", "--length", "4096"],
    )
    .expect_failure(1, &["read-only"]);

    // Reads work and see the untouched data.
    assert!(read_matches(&sock, 0, 64 * KIB, 0x11));
    io(&sock, &["read", "--offset", "0", "--length", "512"]).expect_ok();

    qsd.stop();
    assert_eq!(first_not(&qsd.read_image(0, 64 * KIB as usize), 0x11), None);
}

#[test]
fn closed_stdout_exits_0_quietly() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    // A 1 MiB hex dump (about 4 MiB of text) cannot fit in a pipe buffer.
    let mut args = vec![
        "io".to_owned(),
        "--vhost-user".to_owned(),
        path(qsd.socket()).to_owned(),
    ];
    args.extend(["read", "--offset", "0", "--length", "1048576"].map(String::from));
    let run = vbdev_stdout_closed(&args);
    run.expect_ok();
}
