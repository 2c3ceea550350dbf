use super::*;
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A scratch directory removed on drop (this crate has no `tempfile`).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vbdev-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A fake `/sys` with the layout the kernel uses: `devices/pci0000:00/<BDF>`
/// directories, `bus/pci/devices/<BDF>` links to them, `bus/pci/drivers/<name>`
/// directories, `driver` and `iommu_group` links.
struct FakeSys {
    dir: TempDir,
}

impl FakeSys {
    fn new() -> Self {
        let dir = TempDir::new();
        for d in ["devices/pci0000:00", "bus/pci/devices", "bus/pci/drivers"] {
            fs::create_dir_all(dir.0.join(d)).unwrap();
        }
        fs::write(dir.0.join("bus/pci/drivers_probe"), "").unwrap();
        Self { dir }
    }

    fn root(&self) -> &Path {
        &self.dir.0
    }

    fn sysfs(&self) -> Sysfs {
        Sysfs::new(self.root()).with_settle_timeout(Duration::from_millis(300))
    }

    fn dev(&self, bdf: &str) -> PathBuf {
        self.root().join("devices/pci0000:00").join(bdf)
    }

    fn add(&self, bdf: &str, vendor: u16, device: u16) -> &Self {
        let d = self.dev(bdf);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("vendor"), format!("0x{vendor:04x}\n")).unwrap();
        fs::write(d.join("device"), format!("0x{device:04x}\n")).unwrap();
        fs::write(d.join("numa_node"), "-1\n").unwrap();
        fs::write(d.join("driver_override"), "(null)\n").unwrap();
        symlink(
            format!("../../../devices/pci0000:00/{bdf}"),
            self.root().join("bus/pci/devices").join(bdf),
        )
        .unwrap();
        self
    }

    fn load(&self, driver: &str) -> &Self {
        let d = self.root().join("bus/pci/drivers").join(driver);
        if !d.is_dir() {
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("unbind"), "").unwrap();
        }
        self
    }

    fn bind(&self, bdf: &str, driver: &str) -> &Self {
        self.load(driver);
        let link = self.dev(bdf).join("driver");
        let _ = fs::remove_file(&link);
        symlink(format!("../../../bus/pci/drivers/{driver}"), link).unwrap();
        self
    }

    fn group(&self, bdf: &str, n: u32, name: Option<&str>) -> &Self {
        let g = self.root().join(format!("kernel/iommu_groups/{n}"));
        fs::create_dir_all(g.join("devices")).unwrap();
        if let Some(name) = name {
            fs::write(g.join("name"), format!("{name}\n")).unwrap();
        }
        symlink(
            format!("../../../../devices/pci0000:00/{bdf}"),
            g.join("devices").join(bdf),
        )
        .unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{n}"),
            self.dev(bdf).join("iommu_group"),
        )
        .unwrap();
        self
    }

    fn override_of(&self, bdf: &str) -> String {
        fs::read_to_string(self.dev(bdf).join("driver_override")).unwrap()
    }
}

/// Plays the kernel for bind tests: an `unbind` file written under a driver
/// removes the function's `driver` link; a BDF written to `drivers_probe` links
/// the function to its `driver_override` (if that driver is loaded and
/// `accept` is set).
struct FakeKernel {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKernel {
    fn start(root: &Path, accept: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_owned();
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let drivers = root.join("bus/pci/drivers");
                for d in fs::read_dir(&drivers).unwrap().flatten() {
                    let unbind = d.path().join("unbind");
                    let bdf = fs::read_to_string(&unbind).unwrap_or_default();
                    if !bdf.is_empty() {
                        fs::write(&unbind, "").unwrap();
                        let link = root.join("bus/pci/devices").join(bdf.trim()).join("driver");
                        let _ = fs::remove_file(link);
                    }
                }
                let probe = root.join("bus/pci/drivers_probe");
                let bdf = fs::read_to_string(&probe).unwrap_or_default();
                if !bdf.is_empty() {
                    fs::write(&probe, "").unwrap();
                    let dev = root.join("bus/pci/devices").join(bdf.trim());
                    let o = fs::read_to_string(dev.join("driver_override")).unwrap();
                    let o = o.trim();
                    if accept && drivers.join(o).is_dir() {
                        let _ =
                            symlink(format!("../../../bus/pci/drivers/{o}"), dev.join("driver"));
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeKernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

#[test]
fn bdfs_parse_strictly() {
    assert_eq!(
        bdf("0000:00:02.0"),
        Bdf {
            domain: 0,
            bus: 0,
            device: 2,
            function: 0
        }
    );
    assert_eq!(bdf("00:1F.7").to_string(), "0000:00:1f.7");
    assert_eq!(bdf("10000:3a:00.1").to_string(), "10000:3a:00.1");
    assert_eq!(bdf("ABCD:ff:1f.0").to_string(), "abcd:ff:1f.0");
    for bad in [
        "",
        "0000:00:02",
        "0000:00:20.0",
        "0000:00:02.8",
        "000:00:02.0",
        "0000:0:02.0",
        "0000:00:2.0",
        "0000:00:02.00",
        "0000:00:02.0\n",
        " 0000:00:02.0",
        "0000:00:02.0/../../x",
        "../../../etc",
        "0000:00:0g.0",
        "+000:00:02.0",
        "0000:00:02:0",
        "123456789:00:02.0",
        "0000:00:02.-1",
    ] {
        let e = bad.parse::<Bdf>().expect_err(bad);
        assert!(matches!(e, SysfsError::InvalidBdf { .. }), "{bad:?}: {e}");
    }
    assert_eq!(
        "x".parse::<Bdf>().unwrap_err().to_string(),
        "invalid PCI address \"x\" (expected DDDD:BB:DD.F or BB:DD.F, in hex)"
    );
}

#[test]
fn drivers_parse_by_their_sysfs_names() {
    assert_eq!("vfio-pci".parse::<Driver>().unwrap(), Driver::VfioPci);
    assert_eq!(
        "uio_pci_generic".parse::<Driver>().unwrap(),
        Driver::UioPciGeneric
    );
    assert_eq!("virtio-pci".parse::<Driver>().unwrap(), Driver::VirtioPci);
    assert_eq!(
        "nvme".parse::<Driver>().unwrap_err().to_string(),
        "unknown driver \"nvme\" (expected vfio-pci, uio_pci_generic or virtio-pci)"
    );
    assert!("../vfio-pci".parse::<Driver>().is_err());
}

#[test]
fn lists_virtio_functions_with_kind_driver_group_and_node() {
    let sys = FakeSys::new();
    sys.add("0000:00:01.0", 0x1af4, 0x1042)
        .bind("0000:00:01.0", "vfio-pci")
        .group("0000:00:01.0", 1, None);
    sys.add("0000:00:02.0", 0x1af4, 0x1048)
        .bind("0000:00:02.0", "vfio-pci")
        .group("0000:00:02.0", 0, Some("vfio-noiommu"));
    sys.add("0000:00:03.0", 0x1af4, 0x1001);
    fs::write(sys.dev("0000:00:03.0").join("subsystem_device"), "0x0002\n").unwrap();
    fs::write(sys.dev("0000:00:03.0").join("numa_node"), "1\n").unwrap();
    sys.add("0000:00:04.0", 0x1af4, 0x1004)
        .bind("0000:00:04.0", "virtio-pci");
    sys.add("0000:00:05.0", 0x1af4, 0x1041); // virtio-net, listed as other
    sys.add("0000:00:06.0", 0x1af4, 0x1040); // no device type 0
    sys.add("0000:00:07.0", 0x1af4, 0x1110); // ivshmem: not virtio
    sys.add("0000:00:1f.0", 0x8086, 0x2918);
    // Noise a real tree does not have but a reader must survive.
    fs::create_dir_all(sys.root().join("bus/pci/devices/not-a-bdf")).unwrap();

    let fns = sys.sysfs().virtio_functions().unwrap();
    let got: Vec<(String, Option<DeviceType>, bool, Option<&str>)> = fns
        .iter()
        .map(|f| {
            (
                f.bdf.to_string(),
                f.device_type,
                f.transitional,
                f.driver.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "0000:00:01.0".into(),
                Some(DeviceType::Blk),
                false,
                Some("vfio-pci")
            ),
            (
                "0000:00:02.0".into(),
                Some(DeviceType::Scsi),
                false,
                Some("vfio-pci")
            ),
            ("0000:00:03.0".into(), Some(DeviceType::Blk), true, None),
            (
                "0000:00:04.0".into(),
                Some(DeviceType::Scsi),
                true,
                Some("virtio-pci")
            ),
            ("0000:00:05.0".into(), None, false, None),
        ]
    );
    assert_eq!(
        fns[0].iommu_group,
        Some(IommuGroup {
            number: 1,
            noiommu: false
        })
    );
    assert_eq!(
        fns[1].iommu_group,
        Some(IommuGroup {
            number: 0,
            noiommu: true
        })
    );
    assert_eq!(fns[2].iommu_group, None);
    assert_eq!(fns[0].numa_node, None);
    assert_eq!(fns[2].numa_node, Some(1));
    assert!(fns[0].is_user_space_bound());
    assert!(!fns[3].is_user_space_bound());
    assert!(!fns[2].is_user_space_bound());
    assert_eq!(fns[4].type_name(), "virtio-1");
}

#[test]
fn missing_pci_bus_is_an_error() {
    let dir = TempDir::new();
    let e = Sysfs::new(&dir.0).virtio_functions().unwrap_err();
    assert!(matches!(e, SysfsError::NoPciBus { .. }), "{e}");
    assert!(
        e.to_string()
            .ends_with("bus/pci/devices does not exist (is sysfs mounted?)")
    );
}

#[test]
fn malformed_attributes_are_errors() {
    let sys = FakeSys::new();
    sys.add("0000:00:01.0", 0x1af4, 0x1042);
    fs::write(sys.dev("0000:00:01.0").join("device"), "garbage\n").unwrap();
    let e = sys.sysfs().virtio_functions().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("unexpected content \"garbage\" in "),
        "{e}"
    );
}

#[test]
fn binding_to_vfio_unbinds_probes_and_keeps_the_override() {
    let sys = FakeSys::new();
    sys.add("0000:00:02.0", 0x1af4, 0x1042)
        .bind("0000:00:02.0", "virtio-pci")
        .load("vfio-pci");
    let _k = FakeKernel::start(sys.root(), true);
    let out = sys
        .sysfs()
        .bind(bdf("0000:00:02.0"), Driver::VfioPci)
        .unwrap();
    assert_eq!(
        out,
        BindOutcome {
            previous: Some("virtio-pci".into()),
            unchanged: false
        }
    );
    assert_eq!(
        sys.sysfs().driver(bdf("0000:00:02.0")).unwrap().as_deref(),
        Some("vfio-pci")
    );
    assert_eq!(sys.override_of("0000:00:02.0"), "vfio-pci");

    // Again: nothing to do.
    let out = sys.sysfs().bind(bdf("00:02.0"), Driver::VfioPci).unwrap();
    assert!(out.unchanged);

    // Unbind: no driver, override cleared.
    let old = sys.sysfs().unbind(bdf("0000:00:02.0")).unwrap();
    assert_eq!(old.as_deref(), Some("vfio-pci"));
    assert_eq!(sys.sysfs().driver(bdf("0000:00:02.0")).unwrap(), None);
    assert_eq!(sys.override_of("0000:00:02.0"), "\n");
    // Unbinding an unbound function only clears the override.
    assert_eq!(sys.sysfs().unbind(bdf("0000:00:02.0")).unwrap(), None);

    // Back to the kernel: override cleared once bound.
    let out = sys
        .sysfs()
        .bind(bdf("0000:00:02.0"), Driver::VirtioPci)
        .unwrap();
    assert_eq!(out.previous, None);
    assert_eq!(
        sys.sysfs().driver(bdf("0000:00:02.0")).unwrap().as_deref(),
        Some("virtio-pci")
    );
    assert_eq!(sys.override_of("0000:00:02.0"), "\n");
}

#[test]
fn binding_to_an_unloaded_driver_says_which_module_to_load() {
    let sys = FakeSys::new();
    sys.add("0000:00:02.0", 0x1af4, 0x1042);
    let e = sys
        .sysfs()
        .bind(bdf("0000:00:02.0"), Driver::VfioPci)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "vfio-pci is not loaded (no {}/bus/pci/drivers/vfio-pci): modprobe vfio-pci",
            sys.root().display()
        )
    );
    let e = sys
        .sysfs()
        .bind(bdf("0000:00:02.0"), Driver::VirtioPci)
        .unwrap_err();
    assert!(e.to_string().ends_with(": modprobe virtio_pci"), "{e}");
    // Nothing was written.
    assert_eq!(sys.override_of("0000:00:02.0"), "(null)\n");
}

#[test]
fn a_probe_that_does_not_bind_fails() {
    let sys = FakeSys::new();
    sys.add("0000:00:02.0", 0x1af4, 0x1042)
        .load("uio_pci_generic");
    let _k = FakeKernel::start(sys.root(), false);
    let e = sys
        .sysfs()
        .bind(bdf("0000:00:02.0"), Driver::UioPciGeneric)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:00:02.0 did not bind to uio_pci_generic (bound to no driver); the kernel log (dmesg) may say why"
    );
}

#[test]
fn an_unbind_that_does_not_release_fails() {
    let sys = FakeSys::new();
    sys.add("0000:00:02.0", 0x1af4, 0x1042)
        .bind("0000:00:02.0", "virtio-pci");
    // No fake kernel: the link stays.
    let e = sys.sysfs().unbind(bdf("0000:00:02.0")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:00:02.0 is still bound to virtio-pci after unbind"
    );
}

#[test]
fn only_existing_virtio_functions_are_bound() {
    let sys = FakeSys::new();
    sys.add("0000:00:1f.0", 0x8086, 0x2918).load("vfio-pci");
    let e = sys
        .sysfs()
        .bind(bdf("0000:00:05.0"), Driver::VfioPci)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "0000:00:05.0 is not a PCI function (no {}/bus/pci/devices/0000:00:05.0)",
            sys.root().display()
        )
    );
    let e = sys.sysfs().unbind(bdf("0000:00:1f.0")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:00:1f.0 is not a virtio function (8086:2918); vbdev binds only virtio functions"
    );
    assert_eq!(sys.override_of("0000:00:1f.0"), "(null)\n");
}

#[test]
fn a_group_with_devices_on_other_drivers_is_not_viable() {
    let sys = FakeSys::new();
    sys.add("0000:00:02.0", 0x1af4, 0x1042)
        .bind("0000:00:02.0", "vfio-pci")
        .group("0000:00:02.0", 3, None);
    sys.add("0000:00:1f.0", 0x8086, 0x2918)
        .bind("0000:00:1f.0", "lpc_ich")
        .group("0000:00:1f.0", 3, None);
    sys.add("0000:00:1f.2", 0x8086, 0x2922)
        .bind("0000:00:1f.2", "ahci")
        .group("0000:00:1f.2", 3, None);
    sys.add("0000:00:1f.3", 0x8086, 0x2930)
        .group("0000:00:1f.3", 3, None);
    let e = sys
        .sysfs()
        .check_vfio_group(bdf("0000:00:02.0"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "IOMMU group 3 of 0000:00:02.0 has other devices not bound to vfio-pci: 0000:00:1f.0 (lpc_ich), 0000:00:1f.2 (ahci) (unbind them, or bind them to vfio-pci)"
    );
    sys.bind("0000:00:1f.0", "vfio-pci")
        .bind("0000:00:1f.2", "pci-stub");
    sys.sysfs().check_vfio_group(bdf("0000:00:02.0")).unwrap();
}

#[test]
fn a_function_whose_disks_the_kernel_uses_says_how() {
    let sys = FakeSys::new();
    sys.add("0000:00:04.0", 0x1af4, 0x1042)
        .bind("0000:00:04.0", "virtio-pci");
    sys.add("0000:00:05.0", 0x1af4, 0x1048)
        .bind("0000:00:05.0", "virtio-pci");
    // virtio-blk: virtio1/block/vdz with partitions vdz1 and vdz2; vdz2 held by dm-0.
    let disk = sys.dev("0000:00:04.0").join("virtio1/block/vdz");
    for p in ["vdz1", "vdz2"] {
        fs::create_dir_all(disk.join(p).join("holders")).unwrap();
        fs::write(disk.join(p).join("partition"), "1\n").unwrap();
    }
    fs::create_dir_all(disk.join("holders")).unwrap();
    fs::create_dir_all(disk.join("vdz2/holders/dm-0")).unwrap();
    // virtio-scsi: a LUN's disk further down.
    let lun = sys
        .dev("0000:00:05.0")
        .join("virtio2/host0/target0:0:0/0:0:0:0/block/sdq");
    fs::create_dir_all(lun.join("holders")).unwrap();
    let s = sys.sysfs();
    assert_eq!(
        s.block_devices(bdf("0000:00:04.0")),
        ["vdz", "vdz1", "vdz2"]
    );
    assert_eq!(s.block_devices(bdf("0000:00:05.0")), ["sdq"]);
    let mounts = "/dev/vdz1 /data ext4 rw 0 0\nproc /proc proc rw 0 0\n";
    let swaps = "Filename Type Size Used Priority\n/dev/sdq partition 1 0 -2\n";
    assert_eq!(
        s.kernel_users(bdf("0000:00:04.0"), mounts, swaps),
        ["vdz1 is mounted at /data", "vdz2 is held by dm-0"]
    );
    assert_eq!(
        s.kernel_users(bdf("0000:00:05.0"), mounts, swaps),
        ["sdq is in use as swap"]
    );
    assert!(s.kernel_users(bdf("0000:00:05.0"), mounts, "").is_empty());
}
