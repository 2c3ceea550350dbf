//! Where each command's DMA memory comes from: the policy `main` applies before it
//! dispatches (huge pages for SPDK's vhost targets, pinned or physical memory for PCI
//! functions by their binding).

use crate::cli::{Cli, Command};

/// The DMA memory a command needs, when it is not the default.
///
/// PCI functions pin their DMA memory (VFIO type1) and may translate only 39 address
/// bits: small regions, placed low ([`DmaConfig::pinned`]). A function bound to
/// uio_pci_generic or to vfio-pci without an IOMMU sees physical addresses: physical
/// mode, hugetlb ([`DmaConfig::physical`]). `vbdev serve --pci` attaches functions
/// later, so it takes physical mode whenever huge pages are reserved.
///
/// [`DmaConfig::pinned`]: vbdev_virtio::DmaConfig::pinned
/// [`DmaConfig::physical`]: vbdev_virtio::DmaConfig::physical
pub fn config(cli: &Cli) -> Option<vbdev_virtio::DmaConfig> {
    use vbdev_pci::PciAccess;
    use vbdev_virtio::DmaConfig;
    let physical = |bdf: &str| PciAccess::of(bdf).is_ok_and(PciAccess::physical);
    let pci = match &cli.command {
        Command::Io(a) => a.pci.as_deref().map(physical),
        Command::Perf(a) => a.pci.as_deref().map(physical),
        Command::Serve(a) if a.pci => return Some(serve_pci_config()),
        // The daemon decides once it has read its INI (`[VirtioPci] Enable`).
        Command::Serve(_) => return None,
        _ => None,
    };
    match pci {
        Some(true) => Some(DmaConfig::physical()),
        Some(false) => Some(DmaConfig {
            hugetlb: cli.hugetlb,
            ..DmaConfig::pinned()
        }),
        None => vhost_user_config(cli),
    }
}

/// The DMA memory for vhost-user targets, when it is not the default: huge pages when
/// asked for (`--hugetlb`), or when some are free and not refused (`--no-hugetlb`).
/// SPDK's targets register our regions for DMA in 2 MiB pages: with 4 KiB pages that
/// fails ("Failed to register memory region"), and SPDK v24.01 may even crash, touching
/// the 2 MiB page below a mapping the kernel did not align (hugetlb mappings always are).
pub fn vhost_user_config(cli: &Cli) -> Option<vbdev_virtio::DmaConfig> {
    let huge = cli.hugetlb || (!cli.no_hugetlb && huge_pages_free());
    huge.then(|| vbdev_virtio::DmaConfig {
        hugetlb: true,
        ..vbdev_virtio::DmaConfig::default()
    })
}

/// Whether the system has free 2 MiB huge pages now (`HugePages_Free`).
fn huge_pages_free() -> bool {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .is_some_and(|n| n > 0)
}

/// DMA memory for a daemon that attaches PCI functions later: physical mode when huge
/// pages are reserved (every way in works), else pinned (VFIO type1 only).
pub fn serve_pci_config() -> vbdev_virtio::DmaConfig {
    if huge_pages_reserved() {
        vbdev_virtio::DmaConfig::physical()
    } else {
        vbdev_virtio::DmaConfig::pinned()
    }
}

/// Whether the system has 2 MiB huge pages reserved (`/proc/sys/vm/nr_hugepages`).
fn huge_pages_reserved() -> bool {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}
