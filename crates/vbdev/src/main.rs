//! `vbdev`: a user-space virtio-blk / virtio-scsi initiator.
#![deny(unsafe_code)]

mod attach;
mod cli;
mod dma;
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
    if let Some(config) = dma::config(&cli) {
        if let Err(e) = vbdev_virtio::DmaDomain::configure(config) {
            eprintln!("vbdev: {e}");
            return ExitCode::from(2);
        }
    }
    // Only the daemon sets its DMA memory up itself (after reading its INI).
    let vhost_dma = matches!(cli.command, cli::Command::Serve(_))
        .then(|| dma::vhost_user_config(&cli))
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
