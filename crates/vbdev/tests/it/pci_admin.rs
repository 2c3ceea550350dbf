//! `vbdev pci list|bind|unbind`, `[VirtioPci] Enable Yes` and the virtio-blk hotplug
//! monitor of `vbdev serve`: against a fake sysfs tree on the host, and for real inside
//! the QEMU guest of scripts/pci-guest (kernel mode: functions on the kernel's
//! virtio-pci; vfio mode: on vfio-pci behind intel-iommu).
//!
//! The guest tests need the harness's cache (`scripts/pci-guest/setup.sh`); without it
//! they fail and say so.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

use crate::util::{VBDEV, vbdev};

/// `vbdev pci list --json` (`pci_cmd::ListJson`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListJson {
    functions: Vec<FunctionJson>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct FunctionJson {
    bdf: String,
    device_type: String,
    pci_id: String,
    transitional: bool,
    driver: Option<String>,
    iommu_group: Option<u32>,
    noiommu: bool,
    numa_node: Option<u32>,
}

impl ListJson {
    fn get(&self, bdf: &str) -> &FunctionJson {
        self.functions
            .iter()
            .find(|f| f.bdf == bdf)
            .unwrap_or_else(|| panic!("{bdf} is not listed: {self:?}"))
    }
}

// ----------------------------------------------------------------- fake sysfs ---

/// A sysfs tree laid out as the kernel's (`devices/pci0000:00/<BDF>`, linked from
/// `bus/pci/devices`, `driver` and `iommu_group` links).
struct FakeSys {
    dir: tempfile::TempDir,
}

impl FakeSys {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["devices/pci0000:00", "bus/pci/devices", "bus/pci/drivers"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("bus/pci/drivers_probe"), "").unwrap();
        Self { dir }
    }

    fn root(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn add(&self, bdf: &str, device: &str, driver: Option<&str>, group: Option<u32>) {
        let root = self.dir.path();
        let d = root.join("devices/pci0000:00").join(bdf);
        std::fs::create_dir_all(&d).unwrap();
        let vendor = if device == "0x2918" {
            "0x8086"
        } else {
            "0x1af4"
        };
        std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        std::fs::write(d.join("numa_node"), "0\n").unwrap();
        std::fs::write(d.join("driver_override"), "(null)\n").unwrap();
        symlink(
            format!("../../../devices/pci0000:00/{bdf}"),
            root.join("bus/pci/devices").join(bdf),
        )
        .unwrap();
        if let Some(drv) = driver {
            std::fs::create_dir_all(root.join("bus/pci/drivers").join(drv)).unwrap();
            symlink(format!("../../../bus/pci/drivers/{drv}"), d.join("driver")).unwrap();
        }
        if let Some(n) = group {
            let g = root.join(format!("kernel/iommu_groups/{n}/devices"));
            std::fs::create_dir_all(&g).unwrap();
            symlink(
                format!("../../../kernel/iommu_groups/{n}"),
                d.join("iommu_group"),
            )
            .unwrap();
        }
    }
}

#[test]
fn pci_list_reads_a_sysfs_tree_and_bind_checks_before_writing() {
    let sys = FakeSys::new();
    sys.add("0000:00:02.0", "0x1042", Some("vfio-pci"), Some(2));
    sys.add("0000:00:01.0", "0x1048", None, None);
    sys.add("0000:00:03.0", "0x1001", Some("virtio-pci"), None);
    sys.add("0000:00:1f.0", "0x2918", Some("lpc_ich"), None);
    let root = sys.root();

    let run = vbdev(&["pci", "list", "--json", "--sysfs-root", root]);
    run.expect_ok();
    let list: ListJson = run.json();
    let bdfs: Vec<&str> = list.functions.iter().map(|f| f.bdf.as_str()).collect();
    assert_eq!(bdfs, ["0000:00:01.0", "0000:00:02.0", "0000:00:03.0"]);
    assert_eq!(
        list.get("0000:00:02.0"),
        &FunctionJson {
            bdf: "0000:00:02.0".into(),
            device_type: "blk".into(),
            pci_id: "1af4:1042".into(),
            transitional: false,
            driver: Some("vfio-pci".into()),
            iommu_group: Some(2),
            noiommu: false,
            numa_node: Some(0),
        }
    );
    assert_eq!(list.get("0000:00:01.0").device_type, "scsi");
    assert_eq!(list.get("0000:00:01.0").driver, None);
    assert!(list.get("0000:00:03.0").transitional);

    // The table: a header and one line per function.
    let run = vbdev(&["pci", "list", "--sysfs-root", root]);
    run.expect_ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(lines[0].starts_with("BDF "), "{}", run.stdout);
    assert!(
        lines[2].starts_with("0000:00:02.0  blk       1af4:1042  vfio-pci         2"),
        "{}",
        run.stdout
    );
    assert!(lines[3].ends_with(" transitional"), "{}", run.stdout);

    // Errors: the driver's module, a missing function, a non-virtio function, a bad
    // address (usage: exit 2), an unknown driver (clap: exit 2).
    vbdev(&[
        "pci",
        "bind",
        "0000:00:01.0",
        "uio_pci_generic",
        "--sysfs-root",
        root,
    ])
    .expect_failure(
        1,
        &[
            "uio_pci_generic is not loaded (no ",
            ": modprobe uio_pci_generic",
        ],
    );
    vbdev(&["pci", "unbind", "0000:00:05.0", "--sysfs-root", root])
        .expect_failure(1, &["0000:00:05.0 is not a PCI function"]);
    vbdev(&["pci", "unbind", "00:1f.0", "--sysfs-root", root]).expect_failure(
        1,
        &["0000:00:1f.0 is not a virtio function (8086:2918); vbdev binds only virtio functions"],
    );
    vbdev(&["pci", "unbind", "../../x", "--sysfs-root", root])
        .expect_failure(2, &["invalid PCI address \"../../x\""]);
    vbdev(&["pci", "bind", "0000:00:01.0", "nvme", "--sysfs-root", root])
        .expect_failure(2, &["invalid value 'nvme'"]);
    // Nothing was written.
    let o = std::fs::read_to_string(
        sys.dir
            .path()
            .join("devices/pci0000:00/0000:00:01.0/driver_override"),
    )
    .unwrap();
    assert_eq!(o, "(null)\n");

    // No sysfs at all.
    vbdev(&["pci", "list", "--sysfs-root", "/nonexistent"])
        .expect_failure(1, &["/nonexistent/bus/pci/devices does not exist"]);
}

#[test]
fn pci_bind_and_unbind_refuse_a_function_whose_disk_the_kernel_uses() {
    // As SPDK's setup.sh: a function whose disk is mounted, swap or held (here by a
    // device-mapper target) stays with the kernel unless --force.
    let sys = FakeSys::new();
    sys.add("0000:00:03.0", "0x1042", Some("virtio-pci"), Some(3));
    let disk = sys
        .dir
        .path()
        .join("devices/pci0000:00/0000:00:03.0/virtio0/block/vdy");
    std::fs::create_dir_all(disk.join("holders/dm-3")).unwrap();
    let root = sys.root();
    vbdev(&["pci", "bind", "00:03.0", "vfio-pci", "--sysfs-root", root]).expect_failure(
        1,
        &[
            "0000:00:03.0 is in use by the kernel: vdy is held by dm-3",
            "--force",
        ],
    );
    vbdev(&["pci", "unbind", "00:03.0", "--sysfs-root", root])
        .expect_failure(1, &["vdy is held by dm-3"]);
    let override_of = || {
        std::fs::read_to_string(
            sys.dir
                .path()
                .join("devices/pci0000:00/0000:00:03.0/driver_override"),
        )
        .unwrap()
    };
    assert_eq!(
        override_of(),
        "(null)
",
        "nothing written"
    );
    // --force goes on to the bind itself (which then finds vfio-pci not loaded here).
    vbdev(&[
        "pci",
        "bind",
        "00:03.0",
        "vfio-pci",
        "--force",
        "--sysfs-root",
        root,
    ])
    .expect_failure(1, &["vfio-pci is not loaded"]);
    // Released by the kernel, the check passes.
    std::fs::remove_dir(disk.join("holders/dm-3")).unwrap();
    vbdev(&["pci", "bind", "00:03.0", "vfio-pci", "--sysfs-root", root])
        .expect_failure(1, &["vfio-pci is not loaded"]);
}

/// `vbdev serve` on the host with a fake sysfs: `[VirtioPci] Enable Yes` with no bound
/// function starts (and says so), the hotplug monitor starts and stops, `save_config`
/// keeps its setting; without PCI DMA set up the monitor is refused.
#[test]
fn serve_pci_enable_and_hotplug_monitor_with_nothing_to_attach() {
    let sys = FakeSys::new();
    sys.add("0000:00:01.0", "0x1042", Some("virtio-pci"), None);
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pci.ini");
    std::fs::write(&ini, "[VirtioPci]\n  Enable Yes\n").unwrap();

    let sock = dir.path().join("rpc.sock");
    let mut serve = Daemon::start(
        &[
            "serve",
            "--config",
            ini.to_str().unwrap(),
            "-r",
            sock.to_str().unwrap(),
            "-S",
            dir.path().to_str().unwrap(),
        ],
        sys.root(),
        &sock,
    );
    let rpc = |args: &[&str]| {
        let mut a = vec!["rpc", "-s", sock.to_str().unwrap()];
        a.extend_from_slice(args);
        vbdev(&a)
    };
    rpc(&[
        "bdev_virtio_blk_set_hotplug",
        "--enable",
        "true",
        "--period-us",
        "20000",
    ])
    .expect_ok();
    let cfg = rpc(&["save_config"]);
    cfg.expect_ok();
    assert!(
        cfg.stdout.contains("\"bdev_virtio_blk_set_hotplug\"")
            && cfg.stdout.contains("\"period_us\": 20000"),
        "{}",
        cfg.stdout
    );
    rpc(&["bdev_virtio_blk_set_hotplug", "--enable", "false"]).expect_ok();
    let cfg = rpc(&["save_config"]);
    assert!(
        !cfg.stdout.contains("bdev_virtio_blk_set_hotplug"),
        "{}",
        cfg.stdout
    );
    // Enabled again, then left running for the shutdown to stop.
    rpc(&["bdev_virtio_blk_set_hotplug", "--enable", "true"]).expect_ok();
    let stderr = serve.stop();
    assert!(
        stderr.contains(
            "[VirtioPci] Enable: no virtio-blk or virtio-scsi PCI function is bound to vfio-pci or uio_pci_generic"
        ),
        "{stderr}"
    );

    // Without --pci or [VirtioPci], no PCI DMA: the monitor is refused.
    let sock2 = dir.path().join("rpc2.sock");
    let mut serve = Daemon::start(
        &[
            "serve",
            "-r",
            sock2.to_str().unwrap(),
            "-S",
            dir.path().to_str().unwrap(),
        ],
        sys.root(),
        &sock2,
    );
    let run = vbdev(&[
        "rpc",
        "-s",
        sock2.to_str().unwrap(),
        "bdev_virtio_blk_set_hotplug",
        "--enable",
        "true",
    ]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("needs the daemon started with --pci"),
        "{}",
        run.stderr
    );
    serve.stop();
}

/// A `vbdev serve` child, killed on drop.
struct Daemon {
    child: Option<std::process::Child>,
    /// Collects the child's stderr until it exits.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Daemon {
    fn start(args: &[&str], sysfs_root: &str, sock: &Path) -> Self {
        let mut child = Command::new(VBDEV)
            .args(args)
            .env("VBDEV_SYSFS_ROOT", sysfs_root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vbdev serve");
        // The daemon says "JSON-RPC on <path>" once it listens: that line, not the socket
        // file, is the signal (the file appears at bind(2), before listen(2), and a
        // client connecting in between is refused).
        let mut err = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut all = String::new();
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.contains("JSON-RPC on") {
                    let _ = ready_tx.send(());
                }
                all.push_str(&line);
                line.clear();
            }
            all
        });
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.wait().unwrap();
                let out = stderr.join().unwrap();
                panic!("vbdev serve exited with {st} before listening:\n{out}");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("vbdev serve did not listen within 20 s");
            }
        }
        assert!(
            sock.exists(),
            "listening, but no socket at {}",
            sock.display()
        );
        Self {
            child: Some(child),
            stderr: Some(stderr),
        }
    }

    /// SIGTERM, wait, check exit 0; returns stderr.
    fn stop(&mut self) -> String {
        let child = self.child.take().expect("stopped twice");
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM failed");
        let mut child = child;
        let status = child.wait().unwrap();
        let stderr = self
            .stderr
            .take()
            .expect("stderr collected once")
            .join()
            .unwrap();
        assert!(status.success(), "vbdev serve: {status}\n{stderr}");
        stderr
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------ the guest ---

/// Boots the guest in `mode` with `vbdev` beside `script` (8 MiB images); the run must
/// exit 0. Returns the console (stdout) and the whole output for failure messages.
fn run_guest(mode: &str, script: &str) -> (String, String) {
    let g = crate::pci::run_guest_in(mode, &[], script, 8 << 20, |_| {});
    (g.stdout, g.whole)
}

/// The `LIST <tag> <json>` line of the console, parsed.
fn listed(stdout: &str, whole: &str, tag: &str) -> ListJson {
    let prefix = format!("LIST {tag} ");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{whole}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad list JSON {line:?}: {e}\n{whole}"))
}

/// Kernel mode: both functions start on virtio-pci; the uio modules are loaded by the
/// script. Each step exits with its own code.
const KERNEL_SCRIPT: &str = r#"#!/bin/sh
V=/vbdev/bin/vbdev
blk=$VBDEV_PCI_BLK
scsi=$VBDEV_PCI_SCSI
MODDIR=/lib/modules/$(cat /etc/kver)
while read -r m; do insmod "$MODDIR/$m" || exit 40; done </etc/modorder-uio
echo "STEP list"
$V pci list || exit 41
out=$($V pci list --json) || exit 42
echo "LIST kernel $out"
echo "STEP bind uio"
$V pci bind "$blk" uio_pci_generic || exit 43
$V pci bind "$scsi" uio_pci_generic || exit 44
out=$($V pci list --json) || exit 45
echo "LIST uio $out"
ls /sys/class/uio
echo "STEP bind uio again"
$V pci bind "$blk" uio_pci_generic || exit 46
echo "STEP unbind"
$V pci unbind "$blk" || exit 47
out=$($V pci list --json) || exit 48
echo "LIST unbound $out"
echo "OVERRIDE '$(cat /sys/bus/pci/devices/$blk/driver_override)'"
echo "STEP bind back"
$V pci bind "$blk" virtio-pci || exit 49
$V pci bind "$scsi" virtio-pci || exit 50
out=$($V pci list --json) || exit 51
echo "LIST back $out"
i=0
while [ ! -e /sys/block/vda ]; do i=$((i + 1)); [ $i -gt 100 ] && exit 52; usleep 50000; done
echo "DISK back vda"
echo "STEP vfio not loaded"
$V pci bind "$blk" vfio-pci && exit 53
echo "STEP not virtio"
$V pci unbind 0000:00:1f.0 && exit 54
echo "STEP no such function"
$V pci unbind 0000:00:1e.7 && exit 55
echo "STEP bad address"
$V pci unbind ../x
[ $? -eq 2 ] || exit 56
echo "STEP done"
"#;

#[test]
fn pci_list_bind_unbind_in_a_guest() {
    let (stdout, whole) = run_guest("kernel", KERNEL_SCRIPT);
    let kernel = listed(&stdout, &whole, "kernel");
    assert_eq!(kernel.functions.len(), 2, "{whole}");
    let blk = kernel
        .functions
        .iter()
        .find(|f| f.device_type == "blk")
        .unwrap_or_else(|| panic!("no blk function:\n{whole}"))
        .bdf
        .clone();
    let scsi = kernel
        .functions
        .iter()
        .find(|f| f.device_type == "scsi")
        .unwrap_or_else(|| panic!("no scsi function:\n{whole}"))
        .bdf
        .clone();
    for f in &kernel.functions {
        assert_eq!(f.driver.as_deref(), Some("virtio-pci"), "{whole}");
        assert!(!f.transitional, "{whole}");
    }
    assert_eq!(kernel.get(&blk).pci_id, "1af4:1042");
    assert_eq!(kernel.get(&scsi).pci_id, "1af4:1048");

    let uio = listed(&stdout, &whole, "uio");
    assert_eq!(uio.get(&blk).driver.as_deref(), Some("uio_pci_generic"));
    assert_eq!(uio.get(&scsi).driver.as_deref(), Some("uio_pci_generic"));
    for needle in [
        format!("{blk}: virtio-pci -> uio_pci_generic"),
        format!("{blk}: already bound to uio_pci_generic"),
        format!("{blk}: uio_pci_generic -> no driver"),
        format!("{blk}: no driver -> virtio-pci"),
        format!("{scsi}: uio_pci_generic -> virtio-pci"),
        "uio0".into(),
        "OVERRIDE '(null)'".into(),
        "DISK back vda".into(),
        "vfio-pci is not loaded (no /sys/bus/pci/drivers/vfio-pci): modprobe vfio-pci".into(),
        "0000:00:1f.0 is not a virtio function".into(),
        "0000:00:1e.7 is not a PCI function".into(),
        "invalid PCI address \"../x\"".into(),
        "STEP done".into(),
    ] {
        assert!(stdout.contains(&needle), "{needle:?} missing:\n{whole}");
    }
    let unbound = listed(&stdout, &whole, "unbound");
    assert_eq!(unbound.get(&blk).driver, None, "{whole}");
    assert_eq!(
        unbound.get(&scsi).driver.as_deref(),
        Some("uio_pci_generic")
    );
    let back = listed(&stdout, &whole, "back");
    assert_eq!(back.get(&blk).driver.as_deref(), Some("virtio-pci"));
    assert_eq!(back.get(&scsi).driver.as_deref(), Some("virtio-pci"));
}

/// vfio mode: `[VirtioPci] Enable Yes` (without --pci: the DMA set-up follows the
/// config) attaches both functions; the hotplug monitor detaches the blk function when
/// it is unbound and attaches it again when it is bound back.
const SERVE_SCRIPT: &str = r#"#!/bin/sh
V=/vbdev/bin/vbdev
S=/tmp/rpc.sock
blk=$VBDEV_PCI_BLK
scsi=$VBDEV_PCI_SCSI
out=$($V pci list --json) || exit 29
echo "LIST vfio $out"
printf '[VirtioPci]\n  Enable Yes\n' >/tmp/pci.ini
$V serve --config /tmp/pci.ini -r $S -S /tmp 2>/tmp/serve.err &
pid=$!
i=0
while [ ! -S $S ]; do
  i=$((i + 1)); [ $i -gt 600 ] && { cat /tmp/serve.err; exit 30; }
  kill -0 $pid 2>/dev/null || { cat /tmp/serve.err; exit 30; }
  sleep 0.05
done
echo "STEP enumerated"
$V rpc -s $S bdev_get_bdevs --name VirtioBlk0 || exit 31
$V rpc -s $S bdev_get_bdevs --name VirtioScsi0t0 || exit 32
echo "STEP saved"
$V rpc -s $S save_config || exit 33
echo "STEP hotplug on"
$V rpc -s $S bdev_virtio_blk_set_hotplug --enable true --period-us 50000 || exit 34
echo "STEP unbind"
$V pci unbind "$blk" || exit 35
$V rpc -s $S bdev_get_bdevs --name VirtioBlk0 && exit 36
echo "GONE VirtioBlk0"
$V rpc -s $S bdev_get_bdevs --name VirtioScsi0t0 >/dev/null || exit 37
echo "STEP bind back"
$V pci bind "$blk" vfio-pci || exit 38
$V rpc -s $S bdev_get_bdevs --name VirtioBlk0 --timeout 20000 || exit 39
echo "BACK VirtioBlk0"
echo "STEP hotplug off"
$V rpc -s $S bdev_virtio_blk_set_hotplug --enable false || exit 40
$V rpc -s $S save_config | grep -q set_hotplug && exit 41
kill -TERM $pid
wait $pid || { cat /tmp/serve.err; exit 42; }
cat /tmp/serve.err
echo "STEP done"
"#;

#[test]
fn serve_pci_enable_and_hotplug_monitor_in_a_guest() {
    let (stdout, whole) = run_guest("vfio", SERVE_SCRIPT);
    let list = listed(&stdout, &whole, "vfio");
    assert_eq!(list.functions.len(), 2, "{whole}");
    for f in &list.functions {
        assert_eq!(f.driver.as_deref(), Some("vfio-pci"), "{whole}");
        assert!(f.iommu_group.is_some() && !f.noiommu, "{whole}");
    }
    let blk = &list
        .functions
        .iter()
        .find(|f| f.device_type == "blk")
        .unwrap_or_else(|| panic!("no blk function:\n{whole}"))
        .bdf;
    let scsi = &list
        .functions
        .iter()
        .find(|f| f.device_type == "scsi")
        .unwrap_or_else(|| panic!("no scsi function:\n{whole}"))
        .bdf;
    // save_config: one pci attach per device, as SPDK writes them.
    let saved = stdout
        .split("STEP saved")
        .nth(1)
        .and_then(|s| s.split("STEP hotplug on").next())
        .unwrap_or_else(|| panic!("no save_config output:\n{whole}"));
    let cfg: serde_json::Value = serde_json::from_str(saved.trim())
        .unwrap_or_else(|e| panic!("save_config is not JSON ({e}):\n{whole}"));
    let attaches: Vec<&serde_json::Value> = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["subsystem"] == "bdev")
        .flat_map(|s| s["config"].as_array().unwrap())
        .filter(|c| c["method"] == "bdev_virtio_attach_controller")
        .map(|c| &c["params"])
        .collect();
    assert_eq!(
        attaches,
        [
            &serde_json::json!({"name": "VirtioBlk0", "dev_type": "blk", "trtype": "pci", "traddr": blk}),
            &serde_json::json!({"name": "VirtioScsi0", "dev_type": "scsi", "trtype": "pci", "traddr": scsi}),
        ],
        "{whole}"
    );
    for needle in [
        "\"product_name\": \"VirtioBlk Disk\"",
        &format!("{blk}: vfio-pci -> no driver"),
        "GONE VirtioBlk0",
        &format!("{blk}: no driver -> vfio-pci"),
        "BACK VirtioBlk0",
        "STEP done",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{whole}");
    }
}
