//! `vbdev perf`: runs against the embedded target, `vbdev target` (blk and scsi) and
//! qemu-storage-daemon; verify for 512 B and 4 KiB blocks; the table's layout; the
//! `perform_tests` JSON shape; a verify failure on corrupted data; usage errors.
//! Runs are 1 s long and no figure is asserted beyond "some I/O completed".

use serde::Deserialize;

use crate::qsd::{Backend, QsdBuilder};
use crate::util::{Run, Target, path, vbdev};

const MIB: u64 = 1 << 20;

/// SPDK `perform_tests` result, as `vbdev perf --json` prints it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PerfJson {
    results: Vec<PerfJobJson>,
    core_count: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRange {
    start: u64,
    length: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PerfJobJson {
    job: String,
    core_mask: String,
    workload: String,
    percentage: Option<u8>,
    status: String,
    verify_range: Option<VerifyRange>,
    queue_depth: u32,
    io_size: u64,
    runtime: f64,
    iops: f64,
    mibps: f64,
    io_failed: u64,
    io_timeout: u64,
    avg_latency_us: f64,
    min_latency_us: f64,
    max_latency_us: f64,
}

impl PerfJobJson {
    /// Finished cleanly and did some I/O, with consistent figures.
    #[track_caller]
    fn expect_sane(&self) {
        assert_eq!(self.status, "finished", "{self:?}");
        assert!(self.iops > 0.0 && self.mibps > 0.0, "{self:?}");
        assert!(self.runtime > 0.5 && self.runtime < 30.0, "{self:?}");
        assert_eq!((self.io_failed, self.io_timeout), (0, 0), "{self:?}");
        assert!(
            self.min_latency_us > 0.0
                && self.min_latency_us <= self.avg_latency_us
                && self.avg_latency_us <= self.max_latency_us,
            "{self:?}"
        );
        assert!(self.core_mask.starts_with("0x"), "{self:?}");
    }
}

fn perf(args: &[&str]) -> Run {
    let mut all = vec!["perf"];
    all.extend_from_slice(args);
    vbdev(&all)
}

fn perf_json(args: &[&str]) -> PerfJson {
    let mut all = args.to_vec();
    all.push("--json");
    let run = perf(&all);
    run.expect_code(0);
    run.json()
}

/// Runs `-w verify` for one second on `args`' target and checks the one job.
#[track_caller]
fn verify_passes(args: &[&str], job: &str) {
    let mut all = vec!["-q", "16", "-o", "4k", "-w", "verify", "-t", "1"];
    all.extend_from_slice(args);
    let r = perf_json(&all);
    assert_eq!(r.results.len(), 1, "{r:?}");
    let j = &r.results[0];
    j.expect_sane();
    assert_eq!(j.job, job);
    assert_eq!(j.workload, "verify");
    assert!(
        j.verify_range
            .as_ref()
            .is_some_and(|v| v.start == 0 && v.length > 0)
    );
}

#[test]
fn embedded_target_table_has_bdevperf_layout() {
    let run = perf(&["-q", "32", "-o", "4k", "-w", "randread", "-t", "1"]);
    run.expect_ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "Running I/O for 1 seconds...", "{}", run.stdout);
    let at = lines
        .iter()
        .position(|l| l.trim() == "Latency(us)")
        .expect("header");
    assert_eq!(lines[at].len(), 107, "Latency(us) ends at column 107");
    assert_eq!(
        lines[at + 1],
        " Device Information          : runtime(s)       IOPS      MiB/s     Fail/s     TO/s    Average        min        max"
    );
    assert_eq!(
        lines[at + 2],
        format!(
            "Job: VirtioScsi0t0 (Core Mask {}, workload: randread, depth: 32, IO size: 4096)",
            core_of(lines[at + 2])
        )
    );
    assert!(
        lines[at + 3].starts_with("\t VirtioScsi0t0       : "),
        "{}",
        lines[at + 3]
    );
    assert_eq!(lines[at + 4], format!(" {}", "=".repeat(115)));
    let total = lines[at + 5];
    assert!(
        total.starts_with(" Total                       :            "),
        "{total}"
    );
    // Total: a blank runtime, then seven numbers.
    assert_eq!(
        total.split(':').nth(1).unwrap().split_whitespace().count(),
        7
    );
    assert_eq!(lines.len(), at + 6);
}

/// The core mask a `Job:` line shows.
fn core_of(line: &str) -> String {
    let at = line.find("Core Mask ").expect("core mask") + "Core Mask ".len();
    line[at..].split(',').next().unwrap().to_owned()
}

#[test]
fn embedded_target_json_and_latency_percentiles() {
    let r = perf_json(&["-q", "8", "-o", "8k", "-w", "randrw", "-M", "70", "-t", "1"]);
    assert_eq!(r.core_count, 1);
    let j = &r.results[0];
    j.expect_sane();
    assert_eq!(
        (j.job.as_str(), j.workload.as_str()),
        ("VirtioScsi0t0", "randrw")
    );
    assert_eq!(
        (j.percentage, j.queue_depth, j.io_size),
        (Some(70), 8, 8192)
    );
    assert!(j.verify_range.is_none());

    let run = perf(&["-q", "4", "-o", "4k", "-w", "write", "-t", "1", "-l", "-U"]);
    run.expect_ok();
    assert!(
        run.stdout.contains("\n Latency summary\n"),
        "{}",
        run.stdout
    );
    for p in [
        " 50.00000% : ",
        " 90.00000% : ",
        " 99.00000% : ",
        " 99.90000% : ",
        " 99.99000% : ",
    ] {
        assert!(run.stdout.contains(p), "{p} in {}", run.stdout);
    }
}

#[test]
fn verify_passes_on_the_embedded_target_with_512_and_4096_byte_blocks() {
    verify_passes(&[], "VirtioScsi0t0");
    verify_passes(
        &["--block-size", "4096", "--malloc", "64M"],
        "VirtioScsi0t0",
    );
}

#[test]
fn verify_passes_on_vbdev_blk_and_scsi_targets() {
    for bs in ["512", "4096"] {
        let blk = Target::start(&["--dev-type", "blk", "--malloc", "64M", "--block-size", bs]);
        verify_passes(&["--vhost-user", path(blk.socket())], "VirtioBlk0");
        let scsi = Target::start(&["--dev-type", "scsi", "--malloc", "64M", "--block-size", bs]);
        verify_passes(
            &["--vhost-user", path(scsi.socket()), "--dev-type", "scsi"],
            "VirtioScsi0t0",
        );
    }
}

#[test]
fn verify_and_randread_pass_on_qemu_storage_daemon() {
    for bs in [512, 4096] {
        let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB })
            .block_size(bs)
            .start();
        verify_passes(&["--vhost-user", path(qsd.socket())], "VirtioBlk0");
    }
    let qsd = QsdBuilder::new(Backend::Null { size: 64 * MIB })
        .num_queues(2)
        .start();
    let r = perf_json(&[
        "-q",
        "32",
        "-o",
        "4k",
        "-w",
        "randread",
        "-t",
        "1",
        "--vhost-user",
        path(qsd.socket()),
    ]);
    r.results[0].expect_sane();
}

#[test]
fn every_core_runs_a_job_on_a_disjoint_range() {
    let cores = allowed_core_list();
    let one = format!("[{}]", cores[0]);
    let r = perf_json(&[
        "-q", "4", "-o", "4k", "-w", "verify", "-t", "1", "-C", "-m", &one,
    ]);
    assert_eq!(r.results.len(), 1);
    r.results[0].expect_sane();
    if cores.len() >= 2 {
        let list = format!("[{},{}]", cores[0], cores[1]);
        let r = perf_json(&[
            "-q", "4", "-o", "4k", "-w", "verify", "-t", "1", "-C", "-m", &list,
        ]);
        assert_eq!((r.results.len(), r.core_count), (2, 2));
        let (a, b) = (&r.results[0], &r.results[1]);
        a.expect_sane();
        b.expect_sane();
        let (ra, rb) = (
            a.verify_range.as_ref().unwrap(),
            b.verify_range.as_ref().unwrap(),
        );
        assert_eq!(ra.start + ra.length, rb.start, "disjoint, adjacent slices");
        assert_ne!(a.core_mask, b.core_mask);
    }
}

/// The cores this test process may run on (from /proc/self/status).
pub fn allowed_core_list() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    let mut out = Vec::new();
    for part in line.split(':').nth(1).unwrap().trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    out
}

#[test]
fn verify_fails_loudly_when_the_target_corrupts_a_read() {
    let run = perf(&[
        "-q",
        "8",
        "-o",
        "4k",
        "-w",
        "verify",
        "-t",
        "1",
        "--inject-fault",
        "corrupt-read",
    ]);
    run.expect_code(1)
        .expect_stderr(&["Buffer mismatch! Target: VirtioScsi0t0 Disk Offset: "]);
    assert!(
        run.stderr.contains("first difference at byte 4095"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("ended in about"), "{}", run.stdout);

    let run = perf(&[
        "-q",
        "8",
        "-o",
        "4k",
        "-w",
        "verify",
        "-t",
        "1",
        "--json",
        "--inject-fault",
        "corrupt-read",
    ]);
    run.expect_code(1);
    let r: PerfJson = run.json();
    assert_eq!(r.results[0].status, "failed");
}

#[test]
fn spdk_json_config_sets_up_bdevs() {
    let scsi = Target::start(&["--dev-type", "scsi", "--malloc", "64M"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bdev.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[
              {{"method":"bdev_virtio_attach_controller","params":{{"name":"VirtioScsi7",
                "trtype":"user","traddr":"{}","dev_type":"scsi","vq_count":1,"vq_size":128}}}},
              {{"method":"bdev_malloc_create","params":{{"name":"Malloc3","num_blocks":16384,"block_size":4096}}}},
              {{"method":"bdev_null_create","params":{{"name":"Null0","num_blocks":16384,"block_size":512}}}}]}}]}}"#,
            path(scsi.socket())
        ),
    )
    .unwrap();
    let c = path(&cfg);
    let r = perf_json(&[
        "-q",
        "4",
        "-o",
        "4k",
        "-w",
        "verify",
        "-t",
        "1",
        "-c",
        c,
        "-T",
        "VirtioScsi7t0",
    ]);
    assert_eq!(r.results.len(), 1);
    r.results[0].expect_sane();
    let r = perf_json(&[
        "-q", "4", "-o", "4k", "-w", "read", "-t", "1", "--config", c,
    ]);
    let jobs: Vec<&str> = r.results.iter().map(|j| j.job.as_str()).collect();
    assert_eq!(jobs, ["VirtioScsi7t0", "Malloc3", "Null0"]);
    r.results.iter().for_each(PerfJobJson::expect_sane);

    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_aio_create","params":{}}]}]}"#,
    )
    .unwrap();
    perf(&["-q", "4", "-o", "4k", "-w", "read", "-t", "1", "-c", c])
        .expect_failure(2, &["bdev_aio_create"]);
}

#[test]
fn unmap_write_zeroes_and_flush_run_on_qemu_storage_daemon() {
    let qsd = QsdBuilder::new(Backend::File { size: 64 * MIB }).start();
    for w in ["unmap", "write_zeroes", "flush"] {
        let r = perf_json(&[
            "-q",
            "4",
            "-o",
            "64k",
            "-w",
            w,
            "-t",
            "1",
            "--vhost-user",
            path(qsd.socket()),
        ]);
        assert_eq!(r.results[0].workload, w);
        r.results[0].expect_sane();
    }
}

#[test]
fn usage_errors_exit_2_naming_the_option() {
    let cases: [(&[&str], &str); 10] = [
        (
            &["-q", "4", "-o", "1000", "-w", "read", "-t", "1"],
            "-o 1000",
        ),
        (&["-q", "4", "-o", "4k", "-w", "rw", "-t", "1"], "-M"),
        (
            &[
                "-q", "4", "-o", "4k", "-w", "randrw", "-M", "101", "-t", "1",
            ],
            "-M 101",
        ),
        (&["-q", "0", "-o", "4k", "-w", "read", "-t", "1"], "-q"),
        // It ran with 430 MB of buffers.
        (
            &["-q", "100000", "-o", "4k", "-w", "read", "-t", "1"],
            "-q 100000 is not from 1 to 32768",
        ),
        (&["-q", "4", "-o", "4k", "-w", "read", "-t", "0"], "-t"),
        (&["-q", "4", "-o", "4k", "-w", "bogus", "-t", "1"], "bogus"),
        (
            &["-q", "4", "-o", "4k", "-w", "read", "-t", "1", "-m", "0xzz"],
            "-m",
        ),
        // The embedded target's block size: 0 divided by zero (a panic) before.
        (
            &[
                "-q",
                "4",
                "-o",
                "4k",
                "-w",
                "read",
                "-t",
                "1",
                "--block-size",
                "0",
            ],
            "is not a block size",
        ),
        (
            &[
                "-q",
                "4",
                "-o",
                "4k",
                "-w",
                "read",
                "-t",
                "1",
                "--block-size",
                "1000",
            ],
            "is not a block size",
        ),
    ];
    for (args, needle) in cases {
        perf(args).expect_failure(2, &[needle]);
    }
}

/// vhost-device-scsi (third-party, one frontend per process, 512-byte blocks, queues of
/// at most 128): `-w verify` on its LUN 0 and LUN 1, a fresh daemon for each run; the
/// verify pattern lands in the image files.
#[test]
fn verify_passes_on_vhost_device_scsi() {
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<_> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("lun{i}.raw"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(32 * MIB)
                .unwrap();
            p
        })
        .collect();
    let image_refs: Vec<&std::path::Path> = images.iter().map(|p| p.as_path()).collect();
    for (i, bdev) in ["VirtioScsi0t0", "VirtioScsi0t0l1"].iter().enumerate() {
        // Started and awaited (listening) by the test kit; one frontend per process.
        let mut vds = vbdev_testkit::vds::Vds::start(&image_refs);
        let sock = vds.socket().to_path_buf();
        let r = perf_json(&[
            "-q",
            "16",
            "-o",
            "4k",
            "-w",
            "verify",
            "-t",
            "1",
            "-T",
            bdev,
            "--vhost-user",
            path(&sock),
            "--dev-type",
            "scsi",
            "--queue-size",
            "128",
        ]);
        assert_eq!(r.results.len(), 1, "{r:?}");
        r.results[0].expect_sane();
        assert_eq!(r.results[0].job, *bdev);
        // It serves one frontend and exits when that one goes.
        let status = vds
            .wait_exit(std::time::Duration::from_secs(10))
            .expect("vhost-device-scsi exits when its frontend goes");
        assert!(status.success(), "vhost-device-scsi: {status}");
        let data = std::fs::read(&images[i]).unwrap();
        assert!(
            data[..4096].iter().any(|&b| b != 0),
            "{bdev}: nothing written"
        );
    }
}
