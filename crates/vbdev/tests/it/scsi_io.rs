//! `vbdev io --dev-type scsi`: the controller, its LUN bdevs and `--bdev`, against
//! `vbdev target --dev-type scsi`.

use crate::util::{OpJson, ScsiInfoJson, Target, det_bytes, first_not, io, path, vbdev};

const MIB: u64 = 1 << 20;

/// The bdevs of `--targets 2 --luns 2`, by target and LUN.
const FOUR: [(&str, u8, u16); 4] = [
    ("VirtioScsi0t0", 0, 0),
    ("VirtioScsi0t0l1", 0, 1),
    ("VirtioScsi0t1", 1, 0),
    ("VirtioScsi0t1l1", 1, 1),
];

/// A scsi target with 2 targets x 2 LUNs of 8 MiB each (plus `extra` options).
pub fn four_luns(extra: &[&str]) -> Target {
    let mut args = vec![
        "--dev-type",
        "scsi",
        "--targets",
        "2",
        "--luns",
        "2",
        "--malloc",
        "8M",
    ];
    args.extend_from_slice(extra);
    Target::start(&args)
}

/// `vbdev io --vhost-user <t> --dev-type scsi args...`.
fn scsi<S: AsRef<str>>(t: &Target, args: &[S]) -> crate::util::Run {
    let mut all = vec!["--dev-type".to_owned(), "scsi".to_owned()];
    all.extend(args.iter().map(|a| a.as_ref().to_owned()));
    io(t.socket(), &all)
}

#[test]
fn info_json_lists_the_controller_and_every_lun() {
    let t = four_luns(&[]);
    let run = scsi(&t, &["info", "--json"]);
    run.expect_ok();
    let info: ScsiInfoJson = run.json();

    let c = &info.controller;
    assert_eq!(c.name, "VirtioScsi0");
    assert_eq!(c.driver, "virtio_scsi");
    assert_eq!((c.num_queues, c.queue_size), (1, 256), "{c:?}");
    assert_eq!(
        c.details.get("transport").map(String::as_str),
        Some("vhost-user")
    );
    let features = &c.details["feature_names"];
    assert!(features.split(',').any(|f| f == "VERSION_1"), "{features}");

    assert_eq!(
        info.names(),
        FOUR.iter().map(|(n, _, _)| *n).collect::<Vec<_>>()
    );
    for (b, (name, target, lun)) in info.bdevs.iter().zip(FOUR) {
        assert_eq!((b.name.as_str(), b.target, b.lun), (name, target, lun));
        assert_eq!(b.driver, "virtio_scsi", "{b:?}");
        assert_eq!(b.product_name, "Virtio SCSI Disk", "{b:?}");
        assert_eq!(b.vendor, "VBDEV", "{b:?}");
        assert!(!b.product.is_empty(), "{b:?}");
        assert_eq!(b.block_size, 512);
        assert_eq!(b.num_blocks, 8 * MIB / 512);
        assert_eq!(b.size_bytes, 8 * MIB);
        assert!(!b.read_only, "{b:?}");
        assert!(b.flush && b.unmap && b.write_zeroes, "{b:?}");
        // vbdev target names each LUN's disk (its serial) after its place.
        let serial = format!("Target{target}Lun{lun}");
        assert_eq!(b.serial.as_deref(), Some(serial.as_str()), "{b:?}");
        assert!(b.uuid.is_some(), "{b:?}");
        assert_eq!(
            b.details.get("controller").map(String::as_str),
            Some("VirtioScsi0"),
            "{b:?}"
        );
        // Controller details are in the controller object only.
        assert!(!b.details.contains_key("feature_names"), "{b:?}");
    }
    let uuids: std::collections::BTreeSet<_> = info.bdevs.iter().map(|b| &b.uuid).collect();
    assert_eq!(uuids.len(), 4, "LUN uuids are distinct: {uuids:?}");

    // --bdev narrows the list to that LUN.
    let one: ScsiInfoJson = scsi(&t, &["--bdev", "VirtioScsi0t1l1", "info", "--json"]).json();
    assert_eq!(one.names(), ["VirtioScsi0t1l1"]);
    assert_eq!(one.controller.name, "VirtioScsi0");
}

#[test]
fn info_human_shows_the_controller_then_each_lun() {
    let t = four_luns(&[]);
    let run = scsi(&t, &["info"]);
    run.expect_ok();
    assert_eq!(run.field("controller"), "VirtioScsi0");
    assert_eq!(run.field("driver"), "virtio_scsi");
    assert_eq!(run.field("queues"), "1 x 256");
    assert_eq!(run.field("bdevs"), "4");
    assert_eq!(run.field("transport"), "vhost-user");
    let headers: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("bdev "))
        .collect();
    assert_eq!(
        headers,
        FOUR.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(),
        "{}",
        run.stdout
    );
    // Each LUN's section: its fields, indented, in the order of the headers.
    let values = |key: &str| -> Vec<String> {
        let prefix = format!("  {key}:");
        run.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
            .collect()
    };
    assert_eq!(values("target"), ["0", "0", "1", "1"], "{}", run.stdout);
    assert_eq!(values("lun"), ["0", "1", "0", "1"], "{}", run.stdout);
    assert_eq!(values("vendor"), ["VBDEV"; 4], "{}", run.stdout);
    assert_eq!(values("block size"), ["512"; 4], "{}", run.stdout);
    assert_eq!(values("blocks"), ["16384"; 4], "{}", run.stdout);
    assert_eq!(values("size"), ["8388608 bytes"; 4], "{}", run.stdout);
    assert_eq!(values("read-only"), ["false"; 4], "{}", run.stdout);
    assert_eq!(values("unmap"), ["true"; 4], "{}", run.stdout);
    assert_eq!(values("write zeroes"), ["true"; 4], "{}", run.stdout);
    assert_eq!(
        values("serial"),
        ["Target0Lun0", "Target0Lun1", "Target1Lun0", "Target1Lun1"],
        "{}",
        run.stdout
    );
    assert_eq!(values("uuid").len(), 4, "{}", run.stdout);
    assert!(!run.stdout.trim_start().starts_with('{'), "{}", run.stdout);
}

#[test]
fn a_file_written_to_one_lun_reads_back_from_it_alone() {
    let t = four_luns(&["--queues", "2"]);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = det_bytes(41, 192 * 1024);
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, &data).unwrap();
    let offset = (3 * MIB + 1536).to_string();
    let length = data.len().to_string();

    let w = scsi(
        &t,
        &[
            "--bdev",
            "VirtioScsi0t1l1",
            "--json",
            "write",
            "--offset",
            &offset,
            "--in",
            path(&input),
        ],
    );
    w.expect_ok();
    w.op().expect("write", 3 * MIB + 1536, data.len() as u64);
    // --bdev after the subcommand works as well; --queues 2 opens the second queue.
    scsi(
        &t,
        &[
            "--queues",
            "2",
            "read",
            "--bdev",
            "VirtioScsi0t1l1",
            "--offset",
            &offset,
            "--length",
            &length,
            "--out",
            path(&output),
        ],
    )
    .expect_ok();
    let back = std::fs::read(&output).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "data read back differs from the file written");

    // The other LUNs (and the default bdev, the first one) did not see the write.
    for name in ["VirtioScsi0t0", "VirtioScsi0t0l1", "VirtioScsi0t1"] {
        scsi(
            &t,
            &[
                "--bdev",
                name,
                "read",
                "--offset",
                &offset,
                "--length",
                &length,
                "--pattern",
                "0",
            ],
        )
        .expect_ok();
    }
    scsi(
        &t,
        &[
            "read",
            "--offset",
            &offset,
            "--length",
            &length,
            "--out",
            path(&output),
        ],
    )
    .expect_ok();
    assert_eq!(first_not(&std::fs::read(&output).unwrap(), 0), None);

    // Without --bdev, I/O goes to the first LUN.
    scsi(
        &t,
        &[
            "write",
            "--offset",
            "0",
            "--pattern",
            "0x5a",
            "--length",
            "4096",
        ],
    )
    .expect_ok();
    scsi(
        &t,
        &[
            "--bdev",
            "VirtioScsi0t0",
            "read",
            "--offset",
            "0",
            "--length",
            "4096",
            "--pattern",
            "0x5a",
        ],
    )
    .expect_ok();

    // flush, write-zeroes and discard on the LUN.
    let on = |args: &[&str]| {
        let mut all = vec!["--bdev", "VirtioScsi0t1l1", "--json"];
        all.extend_from_slice(args);
        scsi(&t, &all)
    };
    on(&["flush"]).expect_ok().op().expect("flush", 0, 0);
    let op: OpJson = on(&["write-zeroes", "--offset", &offset, "--length", "65536"])
        .expect_ok()
        .op();
    op.expect("write_zeroes", 3 * MIB + 1536, 65536);
    let zeroed = (3 * MIB + 1536 + 65536).to_string();
    on(&["discard", "--offset", &zeroed, "--length", "65536"])
        .expect_ok()
        .op()
        .expect("discard", 3 * MIB + 1536 + 65536, 65536);
    on(&[
        "read",
        "--offset",
        &offset,
        "--length",
        "65536",
        "--pattern",
        "0",
    ])
    .expect_ok();
}

#[test]
fn a_missing_bdev_fails_and_lists_the_available_ones() {
    let t = four_luns(&[]);
    let mut needles = vec!["VirtioScsi0t1l5"];
    needles.extend(FOUR.iter().map(|(n, _, _)| *n));
    scsi(
        &t,
        &[
            "--bdev",
            "VirtioScsi0t1l5",
            "read",
            "--offset",
            "0",
            "--length",
            "512",
        ],
    )
    .expect_failure(1, &needles);
    scsi(&t, &["--bdev", "VirtioScsi0t1l5", "info"]).expect_failure(1, &needles);
    scsi(&t, &["--bdev", "VirtioBlk0", "flush"]).expect_failure(1, &["VirtioBlk0", "available"]);
    // The target is still usable afterwards.
    scsi(&t, &["--bdev", "VirtioScsi0t1l1", "flush"]).expect_ok();
}

#[test]
fn luns_with_4096_byte_blocks_work() {
    let t = Target::start(&[
        "--dev-type",
        "scsi",
        "--malloc",
        "8M",
        "--block-size",
        "4096",
    ]);
    let info: ScsiInfoJson = scsi(&t, &["info", "--json"]).json();
    assert_eq!(info.names(), ["VirtioScsi0t0"]);
    let b = &info.bdevs[0];
    assert_eq!(b.block_size, 4096);
    assert_eq!(b.num_blocks, 8 * MIB / 4096);
    assert_eq!(b.size_bytes, 8 * MIB);

    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = det_bytes(7, 3 * 4096);
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, &data).unwrap();
    scsi(&t, &["write", "--offset", "12288", "--in", path(&input)]).expect_ok();
    scsi(
        &t,
        &[
            "read",
            "--offset",
            "12288",
            "--length",
            "12288",
            "--out",
            path(&output),
        ],
    )
    .expect_ok();
    assert!(
        std::fs::read(&output).unwrap() == data,
        "data read back differs"
    );
    scsi(
        &t,
        &[
            "read",
            "--offset",
            "512",
            "--length",
            "4096",
            "--pattern",
            "0",
        ],
    )
    .expect_failure(2, &["--offset 512", "block size 4096"]);
    let end = (8 * MIB).to_string();
    scsi(
        &t,
        &[
            "read",
            "--offset",
            &end,
            "--length",
            "4096",
            "--pattern",
            "0",
        ],
    )
    .expect_failure(1, &["exceeds the device size"]);
}

#[test]
fn bdev_and_queue_size_usage_errors_exit_2_before_connecting() {
    // virtio-blk has one bdev: --bdev may only name it.
    vbdev(&[
        "io",
        "--vhost-user",
        "/nonexistent",
        "--bdev",
        "VirtioScsi0t0",
        "info",
    ])
    .expect_failure(
        2,
        &["--bdev VirtioScsi0t0", "VirtioBlk0", "--dev-type scsi"],
    );
    vbdev(&[
        "io",
        "--vhost-user",
        "/nonexistent",
        "--dev-type",
        "scsi",
        "--queue-size",
        "2",
        "info",
    ])
    .expect_failure(2, &["--queue-size 2"]);
    // With the right --bdev, the usage is fine and the (missing) socket fails the run.
    vbdev(&[
        "io",
        "--vhost-user",
        "/nonexistent",
        "--bdev",
        "VirtioBlk0",
        "info",
    ])
    .expect_failure(1, &["/nonexistent"]);
    vbdev(&[
        "io",
        "--vhost-user",
        "/nonexistent",
        "--dev-type",
        "scsi",
        "info",
    ])
    .expect_failure(1, &["VirtioScsi0"]);
}

#[test]
fn blk_accepts_its_own_name_as_bdev() {
    let t = Target::start(&["--malloc", "8M"]);
    io(
        t.socket(),
        &[
            "--bdev",
            "VirtioBlk0",
            "write",
            "--offset",
            "4096",
            "--pattern",
            "9",
            "--length",
            "4096",
        ],
    )
    .expect_ok();
    io(
        t.socket(),
        &[
            "read",
            "--offset",
            "4096",
            "--pattern",
            "9",
            "--length",
            "4096",
        ],
    )
    .expect_ok();
}
