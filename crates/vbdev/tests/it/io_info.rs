//! `vbdev io info`: geometry, features, queues, JSON and human output.

use crate::qsd::{Backend, QsdBuilder};
use crate::util::{InfoJson, io};

const MIB: u64 = 1 << 20;

#[test]
fn info_json_reports_geometry_features_and_serial() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .num_queues(2)
        .start();
    let run = io(qsd.socket(), &["info", "--json"]);
    run.expect_ok();
    let info: InfoJson = run.json();

    assert_eq!(info.name, "VirtioBlk0");
    assert_eq!(info.product_name, "VirtioBlk Disk");
    assert_eq!(info.driver, "virtio_blk");
    assert_eq!(info.block_size, 512);
    assert_eq!(info.num_blocks, 64 * MIB / 512);
    assert_eq!(info.size_bytes, 64 * MIB);
    assert!(!info.read_only, "{info:?}");
    assert!(info.flush, "{info:?}");
    assert!(info.unmap, "{info:?}");
    assert!(info.write_zeroes, "{info:?}");
    // Defaults of --queues and --queue-size.
    assert_eq!(info.num_queues, 1);
    assert_eq!(info.queue_size, 256);
    assert_eq!(info.serial.as_deref(), Some("vhost_user_blk"));

    let names = info.feature_names();
    for f in [
        "VERSION_1",
        "MQ",
        "FLUSH",
        "DISCARD",
        "WRITE_ZEROES",
        "BLK_SIZE",
    ] {
        assert!(names.contains(&f), "{f} missing from {names:?}");
    }
    assert!(
        !names.contains(&"RO"),
        "writable export offers RO: {names:?}"
    );
    assert_eq!(
        info.details.get("transport").map(String::as_str),
        Some("vhost-user")
    );
    // virtio capacity is in 512-byte sectors whatever the block size.
    assert_eq!(
        info.details.get("capacity_sectors").map(String::as_str),
        Some("131072")
    );
}

#[test]
fn info_json_sets_up_the_requested_queues_and_size() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .num_queues(2)
        .start();
    let run = io(
        qsd.socket(),
        &["--queues", "2", "--queue-size", "64", "--json", "info"],
    );
    run.expect_ok();
    let info: InfoJson = run.json();
    assert_eq!((info.num_queues, info.queue_size), (2, 64), "{info:?}");
}

#[test]
fn info_with_more_queues_than_offered_fails() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .num_queues(2)
        .start();
    let run = io(qsd.socket(), &["--queues", "3", "--json", "info"]);
    run.expect_failure(1, &["3 request queues", "the device has 2"]);
    // The daemon is still usable afterwards.
    io(qsd.socket(), &["--queues", "2", "info"]).expect_ok();
}

#[test]
fn info_json_reports_4096_byte_blocks() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .block_size(4096)
        .start();
    let run = io(qsd.socket(), &["--json", "info"]);
    run.expect_ok();
    let info: InfoJson = run.json();
    assert_eq!(info.block_size, 4096);
    assert_eq!(info.num_blocks, 64 * MIB / 4096);
    assert_eq!(info.size_bytes, 64 * MIB);
    assert_eq!(
        info.details.get("capacity_sectors").map(String::as_str),
        Some("131072")
    );
}

#[test]
fn info_json_on_read_only_export_reports_read_only() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .read_only()
        .start();
    let run = io(qsd.socket(), &["--json", "info"]);
    run.expect_ok();
    let info: InfoJson = run.json();
    assert!(info.read_only, "{info:?}");
    assert!(info.feature_names().contains(&"RO"), "{info:?}");
}

#[test]
fn info_human_lists_name_block_size_and_size() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
        .num_queues(2)
        .start();
    let run = io(qsd.socket(), &["info"]);
    run.expect_ok();
    assert_eq!(run.field("name"), "VirtioBlk0");
    assert_eq!(run.field("driver"), "virtio_blk");
    assert_eq!(run.field("block size"), "512");
    assert_eq!(run.field("blocks"), "131072");
    assert_eq!(run.field("size"), "67108864 bytes");
    assert_eq!(run.field("read-only"), "false");
    assert_eq!(run.field("queues"), "1 x 256");
    assert_eq!(run.field("serial"), "vhost_user_blk");
    assert!(
        run.field("feature_names")
            .split(',')
            .any(|f| f == "VERSION_1"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.trim_start().starts_with('{'),
        "human output is JSON: {}",
        run.stdout
    );
}

#[test]
fn hugetlb_flag_uses_huge_pages_when_free_and_falls_back_otherwise() {
    let qsd = QsdBuilder::new(Backend::File { size: 8 * MIB }).start();
    let run = io(
        qsd.socket(),
        &[
            "--hugetlb",
            "write",
            "--offset",
            "512",
            "--pattern",
            "7",
            "--length",
            "4096",
        ],
    );
    run.expect_code(0);
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if free < 8 {
        // The first 16 MiB region needs 8 free 2 MiB pages: vbdev says so and carries on.
        assert!(
            run.stderr.contains("huge pages unavailable"),
            "{}",
            run.stderr
        );
    }
    io(
        qsd.socket(),
        &[
            "read",
            "--offset",
            "512",
            "--length",
            "4096",
            "--pattern",
            "7",
        ],
    )
    .expect_ok();
}
