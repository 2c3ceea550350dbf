//! `vbdev io --pci` inside a QEMU guest (scripts/pci-guest): virtio-blk and
//! virtio-scsi functions bound to vfio-pci behind QEMU's intel-iommu (VFIO type1).
//! The image files are checked on the host after the guest exits.
//!
//! Needs the harness's cache (`scripts/pci-guest/setup.sh`); without it the test fails
//! and says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{InfoJson, VBDEV};

const MIB: u64 = 1 << 20;
const MARKER: &[u8] = b"VBDEV-PCI-MARKER";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The harness, after checking its cache is there (never downloads from a test).
pub(crate) fn harness() -> PathBuf {
    let root = workspace_root();
    let run = root.join("scripts/pci-guest/run.sh");
    assert!(run.exists(), "{} is missing", run.display());
    let cache = std::env::var_os("VBDEV_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/vbdev")))
        .expect("HOME or VBDEV_CACHE must be set")
        .join("pci-guest/env");
    assert!(
        cache.exists(),
        "the PCI guest harness is not set up ({} is missing): run scripts/pci-guest/setup.sh",
        cache.display()
    );
    run
}

/// One guest boot: a blk image and two scsi disks (targets 0 and 1 of one controller)
/// of `size` zero bytes each (`prepare` may change the blk one first), `script` run as
/// the guest program with the `vbdev` under test beside it. The run must exit 0; the
/// images stay for the caller to check.
pub(crate) struct GuestRun {
    _dir: tempfile::TempDir,
    pub(crate) blk: PathBuf,
    pub(crate) scsi: PathBuf,
    pub(crate) scsi1: PathBuf,
    pub(crate) stdout: String,
    /// stdout and stderr, for failure messages.
    pub(crate) whole: String,
}

fn run_guest(script: &str, size: u64, prepare: impl FnOnce(&mut [u8])) -> GuestRun {
    run_guest_in("vfio", &[], script, size, prepare)
}

/// [`run_guest`] with the functions bound the way `mode` says (run.sh's `--mode`).
impl GuestRun {
    /// The BDF run.sh reported for the first function of `kind` (`VBDEV-PCI kind BDF`).
    pub(crate) fn stdout_bdf(&self, kind: &str) -> String {
        let tag = format!("VBDEV-PCI {kind} ");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&tag))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {tag:?} line:\n{}", self.whole))
            .to_owned()
    }
}

pub(crate) fn run_guest_in(
    mode: &str,
    files: &[&Path],
    script: &str,
    size: u64,
    prepare: impl FnOnce(&mut [u8]),
) -> GuestRun {
    run_guest_with(mode, files, |_| Vec::new(), script, size, prepare)
}

/// [`run_guest_in`] with extra QEMU arguments, made from the run's directory.
fn run_guest_with(
    mode: &str,
    files: &[&Path],
    qemu_args: impl FnOnce(&Path) -> Vec<String>,
    script: &str,
    size: u64,
    prepare: impl FnOnce(&mut [u8]),
) -> GuestRun {
    let run_sh = harness();
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<String> = qemu_args(dir.path())
        .into_iter()
        .flat_map(|a| ["--qemu-arg".to_owned(), a])
        .collect();
    let blk = dir.path().join("blk.img");
    let scsi = dir.path().join("scsi0.img");
    let scsi1 = dir.path().join("scsi1.img");
    let mut image = vec![0u8; size as usize];
    prepare(&mut image);
    std::fs::write(&blk, &image).unwrap();
    std::fs::write(&scsi, vec![0u8; size as usize]).unwrap();
    std::fs::write(&scsi1, vec![0u8; size as usize]).unwrap();
    let guest = dir.path().join("guest.sh");
    std::fs::write(&guest, script).unwrap();
    std::fs::set_permissions(&guest, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(&run_sh)
        .args(["--mode", mode, "--timeout", "180", "--disk"])
        .arg(&blk)
        .arg("--scsi-disk")
        .arg(&scsi)
        .arg("--scsi-disk")
        .arg(&scsi1)
        .arg("--file")
        .arg(VBDEV)
        .args(files.iter().flat_map(|f| [Path::new("--file"), f]))
        .args(&extra)
        .arg("--")
        .arg(&guest)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/pci-guest/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let whole = format!(
        "--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "the guest run failed:\n{whole}");
    GuestRun {
        _dir: dir,
        blk,
        scsi,
        scsi1,
        stdout,
        whole,
    }
}

/// The guest's script: every command's output goes to the console; the first failing
/// step exits with its own code.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
V=/vbdev/bin/vbdev
blk=$VBDEV_PCI_BLK
scsi=$VBDEV_PCI_SCSI
echo "STEP info"
$V io --pci "$blk" info --json || exit 10
echo "STEP marker"
$V io --pci "$blk" read --offset 0 --length 512 --out /tmp/sector0 || exit 11
echo "MARKER $(head -c 16 /tmp/sector0)"
echo "STEP write"
$V io --pci "$blk" write --offset 4096 --pattern 0xab --length 65536 || exit 12
echo "STEP read"
$V io --pci "$blk" read --offset 4096 --pattern 0xab --length 65536 || exit 13
echo "STEP wrong pattern"
$V io --pci "$blk" read --offset 4096 --pattern 0xac --length 65536 && exit 14
echo "STEP no such function"
$V io --pci 0000:00:1e.7 info && exit 15
echo "STEP scsi info"
$V io --pci "$scsi" --dev-type scsi info || exit 16
echo "STEP scsi write"
$V io --pci "$scsi" --dev-type scsi write --offset 8192 --pattern 0x5c --length 65536 || exit 17
echo "STEP scsi read"
$V io --pci "$scsi" --dev-type scsi read --offset 8192 --pattern 0x5c --length 65536 || exit 18
echo "STEP legacy"
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor) $(cat $d/device)" = "0x1af4 0x1001" ] && legacy=${d##*/}
done
[ -n "$legacy" ] || exit 19
$V pci bind "$legacy" vfio-pci || exit 20
$V io --pci "$legacy" info 2>&1 && exit 21
echo "STEP done"
"#;

#[test]
fn vfio_type1_blk_and_scsi_writes_and_reads_reach_the_images() {
    // Plus a legacy-only (virtio 0.9.5) blk function, which must be refused clearly.
    let legacy = |dir: &Path| {
        let img = dir.join("legacy.img");
        std::fs::write(&img, vec![0u8; MIB as usize]).unwrap();
        vec![
            "-drive".to_owned(),
            format!("file={},if=none,id=legacy,format=raw", img.display()),
            "-device".to_owned(),
            "virtio-blk-pci,drive=legacy,disable-modern=on,disable-legacy=off,addr=0x9".to_owned(),
        ]
    };
    let g = run_guest_with("vfio", &[], legacy, GUEST_SCRIPT, 64 * MIB, |image| {
        image[..MARKER.len()].copy_from_slice(MARKER);
    });
    let (stdout, whole, blk, scsi) = (&g.stdout, &g.whole, &g.blk, &g.scsi);

    // Each function bound to vfio-pci with its own IOMMU group.
    assert!(
        stdout.contains("VBDEV-PCI blk ") && stdout.contains("VBDEV-PCI scsi "),
        "{whole}"
    );
    let info_line = stdout
        .lines()
        .find(|l| l.starts_with('{') && l.contains("\"VirtioBlk0\""))
        .unwrap_or_else(|| panic!("no info JSON line:\n{whole}"));
    let info: InfoJson = serde_json::from_str(info_line)
        .unwrap_or_else(|e| panic!("bad info JSON {info_line:?}: {e}\n{whole}"));
    assert_eq!(info.block_size, 512);
    assert_eq!(info.num_blocks, 64 * MIB / 512);
    assert!(
        info.feature_names().contains(&"ACCESS_PLATFORM"),
        "ACCESS_PLATFORM not negotiated: {info:?}"
    );
    assert!(
        stdout.contains(&format!("MARKER {}", std::str::from_utf8(MARKER).unwrap())),
        "the marker written on the host was not read in the guest:\n{whole}"
    );
    assert!(
        stdout.contains("write 65536 bytes at offset 4096 ok"),
        "{whole}"
    );
    assert!(
        stdout.contains("read 65536 bytes at offset 4096 ok"),
        "{whole}"
    );
    assert!(
        stdout.contains("no such PCI function"),
        "the error for a missing function does not say so:\n{whole}"
    );
    assert!(stdout.contains("bdev VirtioScsi0t0"), "{whole}");
    assert!(
        stdout.contains("the legacy interface is not supported"),
        "a legacy-only function was not refused clearly:\n{whole}"
    );
    assert!(stdout.contains("STEP done"), "{whole}");

    // QEMU flushed the image when it exited: the guest's write is on the host.
    let image = std::fs::read(blk).unwrap();
    assert_eq!(&image[..MARKER.len()], MARKER);
    assert!(
        image[4096..4096 + 65536].iter().all(|&b| b == 0xab),
        "the pattern written in the guest is not in {}",
        blk.display()
    );
    assert_eq!(image[4095], 0, "write spilled before its range");
    assert_eq!(image[4096 + 65536], 0, "write spilled after its range");
    // The SCSI write too (QEMU counts its Data-Out in the used length; the response
    // decides).
    let image = std::fs::read(scsi).unwrap();
    assert!(
        image[8192..8192 + 65536].iter().all(|&b| b == 0x5c),
        "the SCSI write is not in {}",
        scsi.display()
    );
    assert_eq!(image[8191], 0);
    assert_eq!(image[8192 + 65536], 0);
}

/// Checks that `stdout` holds `n` bdevperf result tables whose Total rows show I/O done
/// and no failure.
fn assert_perf_totals(stdout: &str, n: usize, whole: &str) {
    let totals: Vec<&str> = stdout.lines().filter(|l| l.starts_with(" Total")).collect();
    assert_eq!(totals.len(), n, "{whole}");
    for t in totals {
        let cols: Vec<f64> = t
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        assert!(cols[0] > 0.0, "no IOPS: {t}");
        assert_eq!(cols[2], 0.0, "Fail/s: {t}");
    }
}

/// `vbdev perf -w verify` through vfio-pci, on virtio-blk and on virtio-scsi: every
/// byte written is read back and compared in the guest.
const PERF_SCRIPT: &str = r#"#!/bin/sh
V=/vbdev/bin/vbdev
echo "STEP perf blk"
$V perf --pci "$VBDEV_PCI_BLK" -q 8 -o 4k -w verify -t 2 || exit 21
echo "STEP perf scsi"
$V perf --pci "$VBDEV_PCI_SCSI" --dev-type scsi -q 8 -o 4k -w verify -t 2 || exit 22
echo "STEP done"
"#;

#[test]
fn vfio_type1_perf_verify_passes_on_blk_and_scsi() {
    let g = run_guest(PERF_SCRIPT, 16 * MIB, |_| {});
    let (stdout, whole) = (&g.stdout, &g.whole);
    // Two result tables (bdevperf's layout), each with I/O done and no failure.
    assert_perf_totals(stdout, 2, whole);
    assert!(stdout.contains("STEP done"), "{whole}");
    // The verify pattern reached both images.
    for img in [&g.blk, &g.scsi] {
        let data = std::fs::read(img).unwrap();
        assert!(
            data[..4096].iter().any(|&b| b != 0),
            "nothing written at the start of {}",
            img.display()
        );
    }
}

/// `vbdev serve --pci` in the guest: `bdev_virtio_attach_controller` with `trtype` `pci`
/// for both functions, their bdevs and `save_config`, then a clean SIGTERM.
const SERVE_SCRIPT: &str = r#"#!/bin/sh
V=/vbdev/bin/vbdev
S=/tmp/rpc.sock
$V serve --pci -r $S -S /tmp 2>/tmp/serve.err &
pid=$!
# The socket appears once the daemon listens.
i=0
while [ ! -S $S ]; do
  i=$((i + 1)); [ $i -gt 400 ] && { cat /tmp/serve.err; exit 30; }
  kill -0 $pid 2>/dev/null || { cat /tmp/serve.err; exit 30; }
  sleep 0.05
done
echo "STEP attach"
$V rpc -s $S bdev_virtio_attach_controller --name VirtioBlk0 --trtype pci --traddr "$VBDEV_PCI_BLK" --dev-type blk || exit 31
$V rpc -s $S bdev_virtio_attach_controller --name VirtioScsi0 --trtype pci --traddr "$VBDEV_PCI_SCSI" --dev-type scsi || exit 32
echo "STEP queue params refused"
$V rpc -s $S bdev_virtio_attach_controller --name X --trtype pci --traddr "$VBDEV_PCI_BLK" --dev-type blk --vq-count 2 && exit 33
echo "STEP list"
$V rpc -s $S bdev_get_bdevs || exit 34
$V rpc -s $S bdev_virtio_scsi_get_devices || exit 35
$V rpc -s $S save_config || exit 36
grep vfio-msix /proc/interrupts | sed 's/^/IRQ /'
kill -TERM $pid
wait $pid || exit 37
[ -S $S ] && exit 38
echo "STEP done"
"#;

#[test]
fn vbdev_serve_attaches_pci_functions_by_rpc() {
    let g = run_guest(SERVE_SCRIPT, 8 * MIB, |_| {});
    let (stdout, whole) = (&g.stdout, &g.whole);
    for needle in [
        "VirtioScsi0t0",
        "\"product_name\": \"VirtioBlk Disk\"",
        "\"type\": \"pci-modern\"",
        "\"trtype\": \"pci\"",
        "vq_count or vq_size is not allowed for PCI transport type.",
        "STEP done",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{whole}");
    } // The scan's commands completed through MSI-X: the scsi function's vectors fired
    // (counts per CPU after the IRQ number, then the chip and the name).
    let scsi_irqs: u64 = stdout
        .lines()
        .filter(|l| l.starts_with("IRQ ") && l.contains("vfio-msix"))
        .filter(|l| l.contains(g.stdout_bdf("scsi").as_str()))
        .flat_map(|l| {
            l.split_whitespace()
                .skip(2)
                .map_while(|c| c.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(
        scsi_irqs > 0,
        "no MSI-X interrupt of the scsi function:\n{whole}"
    );
}

/// The same I/O as [`GUEST_SCRIPT`] and [`PERF_SCRIPT`], plus transfers that cross
/// huge pages (2 MiB and 3 MiB buffers, whose descriptors are split wherever the
/// physical pages are not adjacent), and a verify run on two request queues.
const PHYSICAL_SCRIPT: &str = r#"#!/bin/sh
V=/vbdev/bin/vbdev
blk=$VBDEV_PCI_BLK
scsi=$VBDEV_PCI_SCSI
echo "STEP marker"
$V io --pci "$blk" read --offset 0 --length 512 --out /tmp/sector0 || exit 11
echo "MARKER $(head -c 16 /tmp/sector0)"
echo "STEP perf blk"
$V perf --pci "$blk" -C -m 0-1 -q 8 -o 16k -w verify -t 2 || exit 21
echo "STEP perf scsi"
$V perf --pci "$scsi" --dev-type scsi -C -m 0-1 -q 8 -o 16k -w verify -t 2 || exit 22
echo "STEP write"
$V io --pci "$blk" write --offset 4096 --pattern 0xab --length 65536 || exit 12
$V io --pci "$blk" read --offset 4096 --pattern 0xab --length 65536 || exit 13
$V io --pci "$blk" read --offset 4096 --pattern 0xac --length 65536 && exit 14
echo "STEP large"
# Every other huge page held elsewhere: the DMA region's pages are not adjacent.
/vbdev/bin/hugehold 16 >/tmp/hugehold &
i=0
until grep -q HUGEHOLD /tmp/hugehold; do
  i=$((i + 1)); [ $i -gt 200 ] && exit 19
  sleep 0.05
done
NO_COLOR=1 $V --log vbdev::mem=info io --pci "$blk" write --offset 1048576 --pattern 0x3c --length 3145728 2>&1 || exit 15
NO_COLOR=1 $V --log vbdev::mem=info io --pci "$blk" read --offset 1048576 --pattern 0x3c --length 3145728 2>&1 || exit 16
echo "STEP scsi"
$V io --pci "$scsi" --dev-type scsi write --offset 8192 --pattern 0x5c --length 2097152 || exit 17
$V io --pci "$scsi" --dev-type scsi read --offset 8192 --pattern 0x5c --length 2097152 || exit 18
echo "STEP scsi target 1"
$V io --pci "$scsi" --dev-type scsi --bdev VirtioScsi0t1 write --offset 65536 --pattern 0x71 --length 1048576 || exit 23
$V io --pci "$scsi" --dev-type scsi --bdev VirtioScsi0t1 read --offset 65536 --pattern 0x71 --length 1048576 || exit 24
echo "STEP done"
"#;

/// Checks a [`PHYSICAL_SCRIPT`] run: console lines, and the images on the host.
fn check_physical_run(mode: &str) {
    let hugehold = hugehold();
    let g = run_guest_in(mode, &[&hugehold], PHYSICAL_SCRIPT, 16 * MIB, |image| {
        image[..MARKER.len()].copy_from_slice(MARKER);
    });
    let (stdout, whole) = (&g.stdout, &g.whole);
    let driver = if mode == "uio" {
        "uio_pci_generic"
    } else {
        "vfio-pci"
    };
    for kind in ["blk", "scsi"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("VBDEV-PCI {kind} ")) && l.contains(driver)),
            "{kind} function not bound to {driver}:\n{whole}"
        );
    }
    assert!(
        stdout.contains(&format!("MARKER {}", std::str::from_utf8(MARKER).unwrap())),
        "the marker written on the host was not read in the guest:\n{whole}"
    );
    for needle in [
        "write 65536 bytes at offset 4096 ok",
        "read 65536 bytes at offset 4096 ok",
        "write 3145728 bytes at offset 1048576 ok",
        "read 3145728 bytes at offset 1048576 ok",
        "write 2097152 bytes at offset 8192 ok",
        "read 2097152 bytes at offset 8192 ok",
        "STEP done",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{whole}");
    }
    // The large transfers ran in a region with no two huge pages adjacent, so their
    // descriptors were split at every 2 MiB.
    let runs: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.split("contiguous_runs=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(
        runs.len(),
        2,
        "no region report from the large transfers:\n{whole}"
    );
    assert!(
        runs.iter().all(|&r| r >= 4),
        "the huge pages were adjacent anyway ({runs:?}): hugehold did not take effect\n{whole}"
    );
    // Two verify tables, each with two jobs (one per core and queue), no failure.
    assert_perf_totals(stdout, 2, whole);
    // The images hold what the guest wrote last (perf's verify data is around it).
    let image = std::fs::read(&g.blk).unwrap();
    assert!(
        image[4096..4096 + 65536].iter().all(|&b| b == 0xab),
        "blk write not in the image"
    );
    assert!(
        image[MIB as usize..4 * MIB as usize]
            .iter()
            .all(|&b| b == 0x3c),
        "blk 3 MiB write not in the image"
    );
    assert!(image[..4096].iter().any(|&b| b != 0), "perf wrote nothing");
    let scsi = std::fs::read(&g.scsi).unwrap();
    assert!(
        scsi[8192..8192 + 2 * MIB as usize]
            .iter()
            .all(|&b| b == 0x5c),
        "scsi 2 MiB write not in the image"
    );
    assert!(scsi[..4096].iter().any(|&b| b != 0), "perf wrote nothing");
    // The second disk (target 1) holds its own write.
    let scsi1 = std::fs::read(&g.scsi1).unwrap();
    let (at, len) = (65536, MIB as usize);
    assert!(
        scsi1[at..at + len].iter().all(|&b| b == 0x71),
        "scsi target 1 write not in its image"
    );
    // perf's jobs ran on both LUN bdevs of the controller.
    assert!(
        scsi1[..4096].iter().any(|&b| b != 0),
        "perf wrote nothing to scsi target 1"
    );
}

/// scripts/pci-guest/hugehold.rs, built once with the toolchain's `rustc`.
fn hugehold() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = workspace_root().join("scripts/pci-guest/hugehold.rs");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hugehold");
            let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
            let st = Command::new(rustc)
                .args(["--edition", "2024", "-O", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .expect("run rustc for hugehold");
            assert!(st.success(), "rustc failed to build {}", src.display());
            out
        })
        .clone()
}

#[test]
fn vfio_noiommu_blk_and_scsi_with_physical_addresses() {
    check_physical_run("noiommu");
}

#[test]
fn uio_blk_and_scsi_with_physical_addresses() {
    check_physical_run("uio");
}

/// Hot-removal of functions in use (VFIO's device request, or the uio device going
/// away): `vbdev perf` on the
/// blk function fails its I/O as removed and exits (the kernel then finishes removing
/// the function), and `vbdev serve` with the hotplug monitor detaches the scsi
/// controller whose function is being removed.
const REMOVE_SCRIPT: &str = r#"#!/bin/sh
V=/vbdev/bin/vbdev
NO_COLOR=1 $V --log info perf --pci "$VBDEV_PCI_BLK" -q 8 -o 4k -w randread -t 60 >/tmp/perf.out 2>&1 &
pid=$!
i=0
until grep -q "Running I/O" /tmp/perf.out; do
  i=$((i + 1)); [ $i -gt 400 ] && { cat /tmp/perf.out; exit 40; }
  sleep 0.05
done
echo "STEP remove blk"
echo 1 >/sys/bus/pci/devices/$VBDEV_PCI_BLK/remove || exit 41
wait $pid
echo "PERF rc=$?"
cat /tmp/perf.out
[ -e /sys/bus/pci/devices/$VBDEV_PCI_BLK ] && exit 42
S=/tmp/rpc.sock
$V serve --pci -r $S -S /tmp 2>/tmp/serve.err &
spid=$!
i=0
while [ ! -S $S ]; do
  i=$((i + 1)); [ $i -gt 400 ] && { cat /tmp/serve.err; exit 43; }
  sleep 0.05
done
$V rpc -s $S bdev_virtio_attach_controller --name VirtioScsi0 --trtype pci --traddr "$VBDEV_PCI_SCSI" --dev-type scsi || exit 44
$V rpc -s $S bdev_virtio_blk_set_hotplug --enable true --period-us 100000 || exit 45
echo "STEP remove scsi"
echo 1 >/sys/bus/pci/devices/$VBDEV_PCI_SCSI/remove || exit 46
[ -e /sys/bus/pci/devices/$VBDEV_PCI_SCSI ] && exit 47
# uio's removal does not wait for us: the monitor detaches within its period.
i=0
until [ "$($V rpc -s $S bdev_get_bdevs | tr -d '\n ')" = "[]" ]; do
  i=$((i + 1)); [ $i -gt 100 ] && break
  sleep 0.05
done
echo "BDEVS $($V rpc -s $S bdev_get_bdevs | tr -d '\n ')"
kill -TERM $spid
wait $spid || { cat /tmp/serve.err; exit 48; }
echo "STEP done"
"#;

#[test]
fn vfio_hot_removal_fails_io_and_releases_the_function() {
    check_hot_removal("vfio");
}

/// The same with uio_pci_generic: the uio device's unregistration wakes the watcher.
#[test]
fn uio_hot_removal_fails_io_and_releases_the_function() {
    check_hot_removal("uio");
}

fn check_hot_removal(mode: &str) {
    let g = run_guest_in(mode, &[], REMOVE_SCRIPT, 16 * MIB, |_| {});
    let (stdout, whole) = (&g.stdout, &g.whole);
    for needle in [
        "PERF rc=1",
        "the kernel asks for the virtio-pci function back",
        "STEP remove scsi",
        "BDEVS []",
        "STEP done",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{whole}");
    }
    // Failed I/O ("failed: device removed", "refused: the device was removed"), or, when
    // the request came before perf opened its channel, "bdev VirtioBlk0 was removed".
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("VirtioBlk0") && l.contains("removed")),
        "perf did not report the removal:\n{whole}"
    );
}
