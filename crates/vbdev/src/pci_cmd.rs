//! `vbdev pci list|bind|unbind`: virtio PCI functions and their driver binding, the
//! part of SPDK's `scripts/setup.sh` that concerns virtio (through
//! [`vbdev_pci::sysfs`]).
//!
//! `list --json` prints one [`ListJson`] object.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use serde::Serialize;
use vbdev_pci::sysfs::{Bdf, Driver, PciFunction, Sysfs, SysfsError};

use crate::Failure;
use crate::cli::{PciArgs, PciCmd, PciDriver};

/// Environment variable naming the sysfs mount point (tests), below `--sysfs-root`.
const SYSFS_ROOT_ENV: &str = "VBDEV_SYSFS_ROOT";

/// `vbdev pci list --json`.
#[derive(Debug, Serialize)]
pub struct ListJson {
    /// Every virtio PCI function, by address.
    pub functions: Vec<FunctionJson>,
}

/// One function of [`ListJson`].
#[derive(Debug, Serialize)]
pub struct FunctionJson {
    /// PCI address, `DDDD:BB:DD.F`.
    pub bdf: String,
    /// `blk`, `scsi`, or `virtio-<device id>`.
    pub device_type: String,
    /// PCI vendor and device ID, `1af4:1042`.
    pub pci_id: String,
    /// A transitional device ID (0x1000-0x103f).
    pub transitional: bool,
    /// The bound driver, or null.
    pub driver: Option<String>,
    /// IOMMU group number, or null.
    pub iommu_group: Option<u32>,
    /// The IOMMU group is a VFIO no-IOMMU one.
    pub noiommu: bool,
    /// NUMA node, or null.
    pub numa_node: Option<u32>,
}

impl From<&PciFunction> for FunctionJson {
    fn from(f: &PciFunction) -> Self {
        Self {
            bdf: f.bdf.to_string(),
            device_type: f.type_name(),
            pci_id: format!("1af4:{:04x}", f.device_id),
            transitional: f.transitional,
            driver: f.driver.clone(),
            iommu_group: f.iommu_group.map(|g| g.number),
            noiommu: f.iommu_group.is_some_and(|g| g.noiommu),
            numa_node: f.numa_node,
        }
    }
}

/// What `vbdev pci` was asked, validated.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    List {
        json: bool,
    },
    Bind {
        bdf: Bdf,
        driver: Driver,
        force: bool,
    },
    Unbind {
        bdf: Bdf,
        force: bool,
    },
}

impl TryFrom<PciCmd> for Action {
    type Error = anyhow::Error;

    fn try_from(cmd: PciCmd) -> anyhow::Result<Self> {
        Ok(match cmd {
            PciCmd::List { json } => Action::List { json },
            PciCmd::Bind { bdf, driver, force } => Action::Bind {
                bdf: parse_bdf(&bdf)?,
                driver: match driver {
                    PciDriver::VfioPci => Driver::VfioPci,
                    PciDriver::UioPciGeneric => Driver::UioPciGeneric,
                    PciDriver::VirtioPci => Driver::VirtioPci,
                },
                force,
            },
            PciCmd::Unbind { bdf, force } => Action::Unbind {
                bdf: parse_bdf(&bdf)?,
                force,
            },
        })
    }
}

fn parse_bdf(s: &str) -> anyhow::Result<Bdf> {
    s.parse::<Bdf>().map_err(|e| anyhow!("BDF: {e}"))
}

/// The sysfs mount point: `--sysfs-root`, `$VBDEV_SYSFS_ROOT`, or `/sys`.
fn sysfs_root(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os(SYSFS_ROOT_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/sys"))
}

/// Runs `vbdev pci`.
pub fn run(args: PciArgs) -> Result<(), Failure> {
    let sysfs = Sysfs::new(sysfs_root(args.sysfs_root));
    let action = Action::try_from(args.cmd).map_err(Failure::usage)?;
    match action {
        Action::List { json } => list(&sysfs, json),
        Action::Bind { bdf, driver, force } => {
            if driver != Driver::VirtioPci && !force {
                refuse_if_the_kernel_uses(&sysfs, bdf)?;
            }
            let out = sysfs.bind(bdf, driver).map_err(failure)?;
            let before = out.previous.as_deref().unwrap_or("no driver");
            if out.unchanged {
                println!("{bdf}: already bound to {driver}");
            } else {
                println!("{bdf}: {before} -> {driver}");
            }
            if driver == Driver::VfioPci {
                // Bound, but VFIO will not open the group yet: say so, as a warning,
                // since the other devices may be bound next.
                if let Err(e @ SysfsError::GroupNotViable { .. }) = sysfs.check_vfio_group(bdf) {
                    eprintln!("vbdev: warning: {e}");
                }
            }
            Ok(())
        }
        Action::Unbind { bdf, force } => {
            if !force {
                refuse_if_the_kernel_uses(&sysfs, bdf)?;
            }
            let old = sysfs.unbind(bdf).map_err(failure)?;
            match old {
                Some(d) => println!("{bdf}: {d} -> no driver"),
                None => println!("{bdf}: no driver (driver_override cleared)"),
            }
            Ok(())
        }
    }
}

/// Refuses to take `bdf` from the kernel while one of its disks is in use there (a
/// mounted file system, swap, a holder such as LVM): unbinding would pull the disk from
/// under it. A function not bound to virtio-pci has no kernel disks.
fn refuse_if_the_kernel_uses(sysfs: &Sysfs, bdf: Bdf) -> Result<(), Failure> {
    let f = sysfs.function(bdf).map_err(failure)?;
    if f.driver.as_deref() != Some(Driver::VirtioPci.name()) {
        return Ok(());
    }
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {path} to see whether {bdf} is in use"))
            .map_err(Failure::run)
    };
    let users = sysfs.kernel_users(bdf, &read("/proc/self/mounts")?, &read("/proc/swaps")?);
    if users.is_empty() {
        return Ok(());
    }
    Err(Failure::run(anyhow!(
        "{bdf} is in use by the kernel: {}; not taking it away (--force to do it anyway)",
        users.join("; ")
    )))
}

fn list(sysfs: &Sysfs, json: bool) -> Result<(), Failure> {
    use std::io::Write;
    let fns = sysfs.virtio_functions().map_err(failure)?;
    let mut out = std::io::stdout().lock();
    if json {
        let v = ListJson {
            functions: fns.iter().map(FunctionJson::from).collect(),
        };
        let text = serde_json::to_string(&v).map_err(Failure::run)?;
        writeln!(out, "{text}").map_err(Failure::run)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<13} {:<9} {:<10} {:<16} {:<12} {:<4}",
        "BDF", "TYPE", "ID", "DRIVER", "IOMMU_GROUP", "NUMA"
    )
    .map_err(Failure::run)?;
    for f in &fns {
        let group = match f.iommu_group {
            None => "-".to_owned(),
            Some(g) if g.noiommu => format!("{} noiommu", g.number),
            Some(g) => g.number.to_string(),
        };
        let numa = f
            .numa_node
            .map_or_else(|| "-".to_owned(), |n| n.to_string());
        let line = format!(
            "{:<13} {:<9} {:<10} {:<16} {:<12} {:<4}{}",
            f.bdf.to_string(),
            f.type_name(),
            format!("1af4:{:04x}", f.device_id),
            f.driver.as_deref().unwrap_or("-"),
            group,
            numa,
            if f.transitional { " transitional" } else { "" },
        );
        writeln!(out, "{}", line.trim_end()).map_err(Failure::run)?;
    }
    Ok(())
}

/// A library error as the command's failure: exit 1.
fn failure(e: SysfsError) -> Failure {
    Failure::run(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn action(args: &[&str]) -> anyhow::Result<Action> {
        let cli = Cli::try_parse_from(args)?;
        let Command::Pci(p) = cli.command else {
            panic!("not a pci command");
        };
        Action::try_from(p.cmd)
    }

    #[test]
    fn pci_commands_parse() {
        assert_eq!(
            action(&["vbdev", "pci", "list"]).unwrap(),
            Action::List { json: false }
        );
        assert_eq!(
            action(&["vbdev", "pci", "list", "--json"]).unwrap(),
            Action::List { json: true }
        );
        assert_eq!(
            action(&["vbdev", "pci", "bind", "00:02.0", "uio_pci_generic"]).unwrap(),
            Action::Bind {
                bdf: "0000:00:02.0".parse().unwrap(),
                driver: Driver::UioPciGeneric,
                force: false
            }
        );
        assert_eq!(
            action(&[
                "vbdev",
                "pci",
                "bind",
                "0000:00:02.0",
                "vfio-pci",
                "--force"
            ])
            .unwrap(),
            Action::Bind {
                bdf: "0000:00:02.0".parse().unwrap(),
                driver: Driver::VfioPci,
                force: true
            }
        );
        assert_eq!(
            action(&["vbdev", "pci", "bind", "0000:00:02.0", "virtio-pci"]).unwrap(),
            Action::Bind {
                bdf: "0000:00:02.0".parse().unwrap(),
                driver: Driver::VirtioPci,
                force: false
            }
        );
        assert_eq!(
            action(&["vbdev", "pci", "unbind", "0000:00:01.0"]).unwrap(),
            Action::Unbind {
                bdf: "0000:00:01.0".parse().unwrap(),
                force: false
            }
        );
    }

    #[test]
    fn bad_pci_arguments_are_refused() {
        // Unknown driver: clap's error.
        assert!(action(&["vbdev", "pci", "bind", "0000:00:02.0", "nvme"]).is_err());
        assert!(action(&["vbdev", "pci", "bind", "0000:00:02.0"]).is_err());
        let e = action(&["vbdev", "pci", "unbind", "../../../x"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BDF: invalid PCI address \"../../../x\" (expected DDDD:BB:DD.F or BB:DD.F, in hex)"
        );
    }

    #[test]
    fn sysfs_root_comes_from_the_flag_first() {
        let cli = Cli::try_parse_from(["vbdev", "pci", "list", "--sysfs-root", "/tmp/x"]).unwrap();
        let Command::Pci(p) = cli.command else {
            panic!("not a pci command");
        };
        assert_eq!(sysfs_root(p.sysfs_root), PathBuf::from("/tmp/x"));
    }
}
