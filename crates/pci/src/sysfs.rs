//! Virtio PCI functions in sysfs: finding them, and binding them to a driver the way
//! SPDK's `scripts/setup.sh` does.
//!
//! Every function takes the sysfs mount point through [`Sysfs`] (`/sys` in production,
//! a directory tree in tests), so nothing here needs a real PCI bus to be tested.
//!
//! # Listing
//! [`Sysfs::virtio_functions`] reads `bus/pci/devices/*`: the functions with vendor
//! 0x1af4 and a virtio device ID (virtio 1.2 §4.1.2: modern 0x1041-0x107f, the device
//! type being `id - 0x1040`; transitional 0x1000-0x103f, the type in the subsystem
//! device ID), each with its [`Bdf`], [`DeviceType`], driver binding, IOMMU group
//! (and whether it is a VFIO no-IOMMU group) and NUMA node.
//!
//! # Binding
//! [`Sysfs::bind`] (setup.sh's `linux_bind_driver`):
//! 1. check the function is a virtio one and the driver is loaded
//!    (`bus/pci/drivers/<driver>` exists);
//! 2. write the driver's name to `devices/<BDF>/driver_override`, so that only it may
//!    take the function from now on;
//! 3. write the BDF to the current driver's `unbind`, and wait for the binding to go;
//! 4. write the BDF to `bus/pci/drivers_probe`, and wait for `devices/<BDF>/driver` to
//!    name the new driver.
//!
//! For `vfio-pci` and `uio_pci_generic` the override stays set (a later probe, e.g.
//! when `virtio_pci` is loaded, cannot take the function back); for the kernel's
//! `virtio-pci` it is cleared again once bound, as setup.sh does for every driver.
//! [`Sysfs::unbind`] writes the BDF to the driver's `unbind` and clears the override.
//!
//! Writing `unbind` of `vfio-pci` blocks while a process holds the function open (the
//! kernel asks it to let go and waits): unbinding a function a `vbdev serve` with the
//! hotplug monitor uses returns once the monitor has detached it.
//!
//! BDFs are parsed strictly ([`Bdf::from_str`]) before any path is built from them, and
//! driver names come from the closed set [`Driver`]: nothing here writes to a path the
//! caller typed.
#![deny(unsafe_code)]

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use vbdev_virtio::DeviceType;

use super::{
    DEVICE_ID_LAST, MODERN_DEVICE_ID_BASE, TRANSITIONAL_DEVICE_ID_FIRST, VIRTIO_VENDOR_ID,
};

/// How long a bind or unbind may take to show in sysfs.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often sysfs is read while waiting for it.
const SETTLE_POLL: Duration = Duration::from_millis(10);
/// `drivers_probe` writes tried before giving up (setup.sh retries too: a probe right
/// after an unbind can fail transiently).
const PROBE_ATTEMPTS: u32 = 3;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SysfsError {
    /// Not a PCI address.
    #[error("invalid PCI address {input:?} (expected DDDD:BB:DD.F or BB:DD.F, in hex)")]
    InvalidBdf {
        /// What was given.
        input: String,
    },
    /// No such function in sysfs.
    #[error("{bdf} is not a PCI function (no {})", path.display())]
    NoSuchFunction {
        /// The address.
        bdf: Bdf,
        /// The sysfs directory that is missing.
        path: PathBuf,
    },
    /// A PCI function that is not a virtio one.
    #[error(
        "{bdf} is not a virtio function ({vendor:04x}:{device:04x}); vbdev binds only virtio functions"
    )]
    NotVirtio {
        /// The address.
        bdf: Bdf,
        /// PCI vendor ID.
        vendor: u16,
        /// PCI device ID.
        device: u16,
    },
    /// A driver name outside [`Driver`].
    #[error("unknown driver {name:?} (expected vfio-pci, uio_pci_generic or virtio-pci)")]
    UnknownDriver {
        /// What was given.
        name: String,
    },
    /// The driver's module is not loaded.
    #[error("{driver} is not loaded (no {}): modprobe {}", path.display(), driver.module())]
    DriverNotLoaded {
        /// The driver.
        driver: Driver,
        /// The sysfs directory that is missing.
        path: PathBuf,
    },
    /// There is no PCI bus under the root (sysfs not mounted, wrong root).
    #[error("{} does not exist (is sysfs mounted?)", path.display())]
    NoPciBus {
        /// `bus/pci/devices` under the root.
        path: PathBuf,
    },
    /// A sysfs read failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A sysfs write failed.
    #[error("cannot write {value:?} to {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A sysfs attribute that does not hold what the kernel writes there.
    #[error("unexpected content {content:?} in {}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its content.
        content: String,
    },
    /// The function is still bound after its driver's `unbind` was written.
    #[error("{bdf} is still bound to {driver} after unbind")]
    UnbindFailed {
        /// The address.
        bdf: Bdf,
        /// The driver that kept it.
        driver: String,
    },
    /// `drivers_probe` did not bind the function to the driver.
    #[error(
        "{bdf} did not bind to {driver} (bound to {}); the kernel log (dmesg) may say why",
        now.as_deref().unwrap_or("no driver")
    )]
    BindFailed {
        /// The address.
        bdf: Bdf,
        /// The driver asked for.
        driver: Driver,
        /// The binding after the probe.
        now: Option<String>,
    },
    /// The function's IOMMU group holds devices bound to drivers other than vfio-pci:
    /// VFIO refuses to open the group until they are unbound or bound to vfio-pci.
    #[error(
        "IOMMU group {group} of {bdf} has other devices not bound to vfio-pci: {others} (unbind them, or bind them to vfio-pci)"
    )]
    GroupNotViable {
        /// The address.
        bdf: Bdf,
        /// The group number.
        group: u32,
        /// The other devices and their drivers, `BDF (driver)`, comma separated.
        others: String,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, SysfsError>;

/// A PCI address: domain, bus, device, function (`0000:00:02.0`).
///
/// Parsing is strict: `DDDD:BB:DD.F` (the domain 4 to 8 hex digits, as the kernel
/// prints domains above 0xffff) or `BB:DD.F` for domain 0, hex digits of either case,
/// device at most 0x1f, function at most 7. [`fmt::Display`] gives the kernel's form,
/// which is also the sysfs directory name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI domain (segment).
    pub domain: u32,
    /// Bus.
    pub bus: u8,
    /// Device (0-31).
    pub device: u8,
    /// Function (0-7).
    pub function: u8,
}

impl FromStr for Bdf {
    type Err = SysfsError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || SysfsError::InvalidBdf {
            input: s.to_owned(),
        };
        let hex = |t: &str, min: usize, max: usize| -> Result<u32> {
            if t.len() < min || t.len() > max || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(t, 16).map_err(|_| bad())
        };
        let (domain, rest) = match s.split_once(':') {
            Some((d, rest)) if rest.contains(':') => (hex(d, 4, 8)?, rest),
            _ => (0, s),
        };
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (device, function) = rest.split_once('.').ok_or_else(bad)?;
        let bus = hex(bus, 2, 2)?;
        let device = hex(device, 2, 2)?;
        let function = hex(function, 1, 1)?;
        if device > 0x1f || function > 7 {
            return Err(bad());
        }
        // The bounds above make the narrowing casts lossless.
        Ok(Self {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// The drivers [`Sysfs::bind`] binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// `vfio-pci`: user space through `/dev/vfio` (type1 IOMMU or no-IOMMU).
    VfioPci,
    /// `uio_pci_generic`: user space through `/dev/uioN` and the sysfs resources.
    UioPciGeneric,
    /// `virtio-pci`: the kernel's own virtio drivers.
    VirtioPci,
}

impl Driver {
    /// Every driver, in the order error messages list them.
    pub const ALL: [Driver; 3] = [Driver::VfioPci, Driver::UioPciGeneric, Driver::VirtioPci];

    /// The driver's name in sysfs (`bus/pci/drivers/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Driver::VfioPci => "vfio-pci",
            Driver::UioPciGeneric => "uio_pci_generic",
            Driver::VirtioPci => "virtio-pci",
        }
    }

    /// The kernel module that provides it.
    pub fn module(self) -> &'static str {
        match self {
            Driver::VfioPci => "vfio-pci",
            Driver::UioPciGeneric => "uio_pci_generic",
            Driver::VirtioPci => "virtio_pci",
        }
    }

    /// A driver through which a user-space initiator reaches the function.
    pub fn is_user_space(self) -> bool {
        !matches!(self, Driver::VirtioPci)
    }

    /// The driver called `name` in sysfs, if it is one of these.
    pub fn from_sysfs_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl FromStr for Driver {
    type Err = SysfsError;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_sysfs_name(s).ok_or_else(|| SysfsError::UnknownDriver { name: s.to_owned() })
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The IOMMU group of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IommuGroup {
    /// Group number (`/dev/vfio/<number>`, or `/dev/vfio/noiommu-<number>`).
    pub number: u32,
    /// A fake group of VFIO's no-IOMMU mode (`kernel/iommu_groups/N/name` is
    /// `vfio-noiommu`): no DMA translation.
    pub noiommu: bool,
}

/// A virtio PCI function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address.
    pub bdf: Bdf,
    /// PCI device ID.
    pub device_id: u16,
    /// The virtio device ID (virtio 1.2 §5), from the PCI device ID.
    pub virtio_id: u16,
    /// The virtio device type, when it is one vbdev drives (blk, scsi).
    pub device_type: Option<DeviceType>,
    /// A transitional device ID (0x1000-0x103f): the function may also offer the legacy
    /// interface.
    pub transitional: bool,
    /// The bound driver's name (`vfio-pci`, `virtio-pci`, ...), if any.
    pub driver: Option<String>,
    /// The IOMMU group, if the function is in one.
    pub iommu_group: Option<IommuGroup>,
    /// NUMA node, when the platform reports one.
    pub numa_node: Option<u32>,
}

impl PciFunction {
    /// `blk`, `scsi`, or `virtio-<id>` for the types vbdev does not drive.
    pub fn type_name(&self) -> String {
        match self.device_type {
            Some(t) => t.name().into(),
            None => format!("virtio-{}", self.virtio_id),
        }
    }

    /// Bound to `vfio-pci` or `uio_pci_generic`.
    pub fn is_user_space_bound(&self) -> bool {
        self.driver
            .as_deref()
            .and_then(Driver::from_sysfs_name)
            .is_some_and(Driver::is_user_space)
    }
}

/// What [`Sysfs::bind`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOutcome {
    /// The driver before (`None`: no driver).
    pub previous: Option<String>,
    /// It was bound to the driver already; nothing was written.
    pub unchanged: bool,
}

/// A sysfs tree (`/sys`, or a test's copy).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
    settle_timeout: Duration,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/sys")
    }
}

impl Sysfs {
    /// The tree mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            settle_timeout: SETTLE_TIMEOUT,
        }
    }

    /// The same tree, waiting at most `timeout` for a bind or unbind to show.
    pub fn with_settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.devices_dir().join(bdf.to_string())
    }

    fn driver_dir(&self, driver: Driver) -> PathBuf {
        self.root.join("bus/pci/drivers").join(driver.name())
    }

    /// Every virtio PCI function, by address.
    ///
    /// Entries that vanish while being read (a hot-remove) are left out; entries whose
    /// names are not PCI addresses are skipped.
    ///
    /// # Errors
    /// [`SysfsError::NoPciBus`] when `bus/pci/devices` is missing; [`SysfsError::Read`]
    /// when it cannot be listed.
    pub fn virtio_functions(&self) -> Result<Vec<PciFunction>> {
        let dir = self.devices_dir();
        if !dir.is_dir() {
            return Err(SysfsError::NoPciBus { path: dir });
        }
        let entries = fs::read_dir(&dir).map_err(|source| SysfsError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SysfsError::Read {
                path: dir.clone(),
                source,
            })?;
            let Some(bdf) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Bdf>().ok())
            else {
                continue;
            };
            match self.read_function(bdf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => {}
                // Gone between the listing and the read: a hot-remove.
                Err(SysfsError::NoSuchFunction { .. }) => {}
                Err(SysfsError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|f| f.bdf);
        Ok(out)
    }

    /// The virtio function at `bdf`.
    ///
    /// # Errors
    /// [`SysfsError::NoSuchFunction`], [`SysfsError::NotVirtio`], or a read error.
    pub fn function(&self, bdf: Bdf) -> Result<PciFunction> {
        match self.read_function(bdf)? {
            Some(f) => Ok(f),
            None => {
                let (vendor, device) = self.ids(bdf)?;
                Err(SysfsError::NotVirtio {
                    bdf,
                    vendor,
                    device,
                })
            }
        }
    }

    /// The kernel block devices of function `bdf` (its disks and their partitions, as
    /// `vda`, `vda1`, `sdb`), found under its sysfs directory: a virtio-blk disk at
    /// `virtioN/block/<disk>`, a virtio-scsi LUN's a few levels further down.
    pub fn block_devices(&self, bdf: Bdf) -> Vec<String> {
        self.block_device_dirs(bdf)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// [`Self::block_devices`] with each one's sysfs directory, sorted by name.
    fn block_device_dirs(&self, bdf: Bdf) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        collect_block_devices(&self.device_dir(bdf), 0, &mut out);
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Why function `bdf` must not be taken from the kernel, as SPDK's `setup.sh` checks
    /// it: each of its block devices that is mounted (in `mounts`, `/proc/self/mounts`'
    /// text), used as swap (in `swaps`, `/proc/swaps`' text) or held by another device
    /// (`holders/`: LVM, dm-crypt, md). Empty: nothing in the kernel uses it.
    pub fn kernel_users(&self, bdf: Bdf, mounts: &str, swaps: &str) -> Vec<String> {
        let mut why = Vec::new();
        for (dev, dir) in self.block_device_dirs(bdf) {
            let node = format!("/dev/{dev}");
            for line in mounts.lines() {
                let mut f = line.split_whitespace();
                if f.next() == Some(node.as_str()) {
                    let at = f.next().unwrap_or("?");
                    why.push(format!("{dev} is mounted at {at}"));
                }
            }
            if swaps
                .lines()
                .any(|l| l.split_whitespace().next() == Some(node.as_str()))
            {
                why.push(format!("{dev} is in use as swap"));
            }
            let holders = list_names(&dir.join("holders"));
            if !holders.is_empty() {
                why.push(format!("{dev} is held by {}", holders.join(", ")));
            }
        }
        why
    }

    /// The driver `bdf` is bound to, if any.
    ///
    /// # Errors
    /// [`SysfsError::NoSuchFunction`], or a link that cannot be read.
    pub fn driver(&self, bdf: Bdf) -> Result<Option<String>> {
        let dir = self.device_dir(bdf);
        if !dir.is_dir() {
            return Err(SysfsError::NoSuchFunction { bdf, path: dir });
        }
        link_name(&dir.join("driver"))
    }

    fn ids(&self, bdf: Bdf) -> Result<(u16, u16)> {
        let dir = self.device_dir(bdf);
        if !dir.is_dir() {
            return Err(SysfsError::NoSuchFunction { bdf, path: dir });
        }
        Ok((
            read_hex16(&dir.join("vendor"))?,
            read_hex16(&dir.join("device"))?,
        ))
    }

    /// The function at `bdf` if it is a virtio one.
    fn read_function(&self, bdf: Bdf) -> Result<Option<PciFunction>> {
        let dir = self.device_dir(bdf);
        let (vendor, device_id) = self.ids(bdf)?;
        if vendor != VIRTIO_VENDOR_ID
            || !(TRANSITIONAL_DEVICE_ID_FIRST..=DEVICE_ID_LAST).contains(&device_id)
            || device_id == MODERN_DEVICE_ID_BASE
        {
            return Ok(None);
        }
        let transitional = device_id < MODERN_DEVICE_ID_BASE;
        let virtio_id = if transitional {
            // §4.1.2.1: a transitional device's subsystem device ID is its virtio ID;
            // the fixed IDs of §4.1.2.3 stand in when that reads 0 or is missing.
            match read_hex16(&dir.join("subsystem_device")) {
                Ok(id) if id != 0 => id,
                _ => transitional_virtio_id(device_id),
            }
        } else {
            device_id - MODERN_DEVICE_ID_BASE
        };
        let driver = link_name(&dir.join("driver"))?;
        let iommu_group = match link_name(&dir.join("iommu_group"))? {
            None => None,
            Some(n) => {
                let path = dir.join("iommu_group");
                let number = n.parse::<u32>().map_err(|_| SysfsError::Malformed {
                    path,
                    content: n.clone(),
                })?;
                let name = self.root.join(format!("kernel/iommu_groups/{number}/name"));
                let noiommu = read_opt(&name)?.is_some_and(|s| s.trim() == "vfio-noiommu");
                Some(IommuGroup { number, noiommu })
            }
        };
        let numa_path = dir.join("numa_node");
        let numa_node = match read_opt(&numa_path)? {
            None => None,
            Some(s) => {
                let n = s.trim().parse::<i64>().map_err(|_| SysfsError::Malformed {
                    path: numa_path,
                    content: s.clone(),
                })?;
                u32::try_from(n).ok()
            }
        };
        Ok(Some(PciFunction {
            bdf,
            device_id,
            virtio_id,
            device_type: DeviceType::from_id(virtio_id),
            transitional,
            driver,
            iommu_group,
            numa_node,
        }))
    }

    /// The devices of `bdf`'s IOMMU group, other than `bdf`, that keep VFIO from opening
    /// the group: those bound to a driver other than `vfio-pci` (unbound ones, `pci-stub`
    /// and `pcieport` bridges are fine, as for the kernel's viability check).
    ///
    /// # Errors
    /// [`SysfsError::GroupNotViable`] naming them; a read error.
    pub fn check_vfio_group(&self, bdf: Bdf) -> Result<()> {
        let f = self.function(bdf)?;
        let Some(group) = f.iommu_group else {
            return Ok(());
        };
        let dir = self
            .root
            .join(format!("kernel/iommu_groups/{}/devices", group.number));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(SysfsError::Read { path: dir, source }),
        };
        let mut others = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SysfsError::Read {
                path: dir.clone(),
                source,
            })?;
            let Some(other) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Bdf>().ok())
            else {
                continue;
            };
            if other == bdf {
                continue;
            }
            let driver = link_name(&entry.path().join("driver"))?;
            if let Some(d) =
                driver.filter(|d| !matches!(d.as_str(), "vfio-pci" | "pci-stub" | "pcieport"))
            {
                others.push(format!("{other} ({d})"));
            }
        }
        if others.is_empty() {
            return Ok(());
        }
        others.sort();
        Err(SysfsError::GroupNotViable {
            bdf,
            group: group.number,
            others: others.join(", "),
        })
    }

    /// Binds the virtio function `bdf` to `driver` (see the module docs for the steps).
    ///
    /// # Errors
    /// [`SysfsError::NotVirtio`], [`SysfsError::NoSuchFunction`],
    /// [`SysfsError::DriverNotLoaded`], a failed write, [`SysfsError::UnbindFailed`] or
    /// [`SysfsError::BindFailed`].
    pub fn bind(&self, bdf: Bdf, driver: Driver) -> Result<BindOutcome> {
        let f = self.function(bdf)?;
        let previous = f.driver;
        if previous.as_deref() == Some(driver.name()) {
            return Ok(BindOutcome {
                previous,
                unchanged: true,
            });
        }
        let driver_dir = self.driver_dir(driver);
        if !driver_dir.is_dir() {
            return Err(SysfsError::DriverNotLoaded {
                driver,
                path: driver_dir,
            });
        }
        let dir = self.device_dir(bdf);
        write(&dir.join("driver_override"), driver.name())?;
        if let Some(old) = &previous {
            self.release(bdf, old)?;
        }
        let probe = self.root.join("bus/pci/drivers_probe");
        let mut attempt = 1;
        loop {
            match write(&probe, &bdf.to_string()) {
                Ok(()) => break,
                Err(e) if attempt >= PROBE_ATTEMPTS => return Err(e),
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(SETTLE_POLL * 10);
                }
            }
        }
        let now = self.wait_for(bdf, |d| d == Some(driver.name()))?;
        if now.as_deref() != Some(driver.name()) {
            return Err(SysfsError::BindFailed { bdf, driver, now });
        }
        if !driver.is_user_space() {
            write(&dir.join("driver_override"), "\n")?;
        }
        Ok(BindOutcome {
            previous,
            unchanged: false,
        })
    }

    /// Unbinds `bdf` from its driver, if any, and clears its `driver_override`. Returns
    /// the driver it was bound to.
    ///
    /// # Errors
    /// [`SysfsError::NotVirtio`], [`SysfsError::NoSuchFunction`], a failed write, or
    /// [`SysfsError::UnbindFailed`].
    pub fn unbind(&self, bdf: Bdf) -> Result<Option<String>> {
        let f = self.function(bdf)?;
        if let Some(old) = &f.driver {
            self.release(bdf, old)?;
        }
        write(&self.device_dir(bdf).join("driver_override"), "\n")?;
        Ok(f.driver)
    }

    /// Writes `bdf` to its driver's `unbind` and waits until the binding is gone.
    fn release(&self, bdf: Bdf, driver: &str) -> Result<()> {
        let unbind = self.device_dir(bdf).join("driver/unbind");
        write(&unbind, &bdf.to_string())?;
        if self.wait_for(bdf, |d| d.is_none())?.is_some() {
            return Err(SysfsError::UnbindFailed {
                bdf,
                driver: driver.to_owned(),
            });
        }
        Ok(())
    }

    /// Reads `bdf`'s driver until `done` holds or the settle timeout passes; returns the
    /// last binding read.
    fn wait_for(&self, bdf: Bdf, done: impl Fn(Option<&str>) -> bool) -> Result<Option<String>> {
        let deadline = Instant::now() + self.settle_timeout;
        loop {
            let now = self.driver(bdf)?;
            if done(now.as_deref()) || Instant::now() >= deadline {
                return Ok(now);
            }
            std::thread::sleep(SETTLE_POLL);
        }
    }
}

/// The virtio device ID of a transitional PCI device ID (virtio 1.2 §4.1.2.3).
fn transitional_virtio_id(device_id: u16) -> u16 {
    match device_id {
        0x1000 => 1,
        0x1001 => 2,
        0x1002 => 5,
        0x1003 => 3,
        0x1004 => 8,
        0x1005 => 4,
        0x1009 => 9,
        _ => 0,
    }
}

/// The last component of the symlink at `path`, or `None` when there is no link.
fn link_name(path: &Path) -> Result<Option<String>> {
    match fs::read_link(path) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysfsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The file's content, or `None` when it does not exist.
fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysfsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A `0x1af4`-style attribute (`vendor`, `device`, `subsystem_device`).
fn read_hex16(path: &Path) -> Result<u16> {
    let s = fs::read_to_string(path).map_err(|source| SysfsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let t = s.trim();
    t.strip_prefix("0x")
        .and_then(|h| u16::from_str_radix(h, 16).ok())
        .ok_or_else(|| SysfsError::Malformed {
            path: path.to_owned(),
            content: t.to_owned(),
        })
}

/// One write of `value` to a sysfs attribute, as the shell's `echo value > path` does
/// (`O_TRUNC`, never `O_CREAT`: sysfs attributes exist, and take the value in one
/// `write`).
fn write(path: &Path, value: &str) -> Result<()> {
    use std::io::Write;
    let err = |source| SysfsError::Write {
        path: path.to_owned(),
        value: value.trim_end().to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

/// Directories deeper than this under a function are not searched for block devices
/// (a virtio-scsi LUN's disk is six levels down).
const BLOCK_SEARCH_DEPTH: usize = 8;

/// Adds the disks under `dir` (entries of any `block/` directory found, not following
/// links) and their partitions (their subdirectories with a `partition` file) to `out`,
/// each with its directory.
fn collect_block_devices(dir: &Path, depth: usize, out: &mut Vec<(String, PathBuf)>) {
    if depth > BLOCK_SEARCH_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if !t.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "block" {
            for disk in list_names(&e.path()) {
                let disk_dir = e.path().join(&disk);
                for part in list_names(&disk_dir) {
                    let part_dir = disk_dir.join(&part);
                    if part_dir.join("partition").is_file() {
                        out.push((part, part_dir));
                    }
                }
                out.push((disk, disk_dir));
            }
        } else if !matches!(
            name.as_str(),
            "driver" | "iommu_group" | "subsystem" | "power"
        ) {
            collect_block_devices(&e.path(), depth + 1, out);
        }
    }
}

/// The names in directory `dir`, sorted; empty when it cannot be read.
fn list_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests;
