//! `vbdev`: a user-space virtio-blk / virtio-scsi initiator.
#![deny(unsafe_code)]

mod attach;
mod cli;
mod io;
mod logging;
mod output;
mod pci_cmd;
mod perf;
mod rpc_cmd;
mod serve;
mod target;

use std::process::ExitCode;

use clap::Parser;

/// How a command ended, mapped to the exit code in one place.
#[derive(Debug)]
enum Failure {
    /// Bad usage or configuration: exit 2.
    Usage(anyhow::Error),
    /// The command ran and failed: exit 1.
    Run(anyhow::Error),
}

impl Failure {
    fn usage(e: impl Into<anyhow::Error>) -> Self {
        Failure::Usage(e.into())
    }
    fn run(e: impl Into<anyhow::Error>) -> Self {
        Failure::Run(e.into())
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.log);
    if let Some(config) = dma_config(&cli) {
        if let Err(e) = vbdev_virtio::DmaDomain::configure(config) {
            eprintln!("vbdev: {e}");
            return ExitCode::from(2);
        }
    }
    // Only the daemon sets its DMA memory up itself (after reading its INI).
    let vhost_dma = matches!(cli.command, cli::Command::Serve(_))
        .then(|| vhost_user_dma_config(&cli))
        .flatten();
    let result = match cli.command {
        cli::Command::Io(args) => io::run(args),
        cli::Command::Target(args) => target::run(args),
        cli::Command::Perf(args) => perf::run(args),
        cli::Command::Serve(args) => serve::run(args, vhost_dma),
        cli::Command::Rpc(args) => rpc_cmd::run(args),
        cli::Command::Pci(args) => pci_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("vbdev: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("vbdev: {e:#}");
            ExitCode::from(1)
        }
    }
}

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
fn dma_config(cli: &cli::Cli) -> Option<vbdev_virtio::DmaConfig> {
    use vbdev_pci::PciAccess;
    use vbdev_virtio::DmaConfig;
    let physical = |bdf: &str| PciAccess::of(bdf).is_ok_and(PciAccess::physical);
    let pci = match &cli.command {
        cli::Command::Io(a) => a.pci.as_deref().map(physical),
        cli::Command::Perf(a) => a.pci.as_deref().map(physical),
        cli::Command::Serve(a) if a.pci => return Some(serve_pci_dma_config()),
        // The daemon decides once it has read its INI (`[VirtioPci] Enable`).
        cli::Command::Serve(_) => return None,
        _ => None,
    };
    match pci {
        Some(true) => Some(DmaConfig::physical()),
        Some(false) => Some(DmaConfig {
            hugetlb: cli.hugetlb,
            ..DmaConfig::pinned()
        }),
        None => vhost_user_dma_config(cli),
    }
}

/// The DMA memory for vhost-user targets, when it is not the default: huge pages when
/// asked for (`--hugetlb`), or when some are free and not refused (`--no-hugetlb`).
/// SPDK's targets register our regions for DMA in 2 MiB pages: with 4 KiB pages that
/// fails ("Failed to register memory region"), and SPDK v24.01 may even crash, touching
/// the 2 MiB page below a mapping the kernel did not align (hugetlb mappings always are).
fn vhost_user_dma_config(cli: &cli::Cli) -> Option<vbdev_virtio::DmaConfig> {
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
fn serve_pci_dma_config() -> vbdev_virtio::DmaConfig {
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
