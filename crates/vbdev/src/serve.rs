//! `vbdev serve`: the management daemon (SPDK-compatible JSON-RPC and config files).
//!
//! Start-up: the config (`--json` SPDK JSON, or `--config` legacy INI converted to the
//! same calls) is replayed first; a failing call stops the start with its error, and what
//! was created is torn down again. An INI's `[VirtioPci] Enable Yes` then attaches every
//! virtio-blk/virtio-scsi PCI function bound to a user-space driver; it sets up the DMA
//! memory for PCI as `--pci` does when that flag is not given. Then the JSON-RPC socket
//! is opened. SIGINT/SIGTERM
//! close the socket (calls in progress finish), stop the vhost controllers, detach every
//! virtio device (its queues stopped, the ring state read back with GET_VRING_BASE) and
//! remove the sockets.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::Failure;
use crate::cli::ServeArgs;
use vbdev_daemon::{Daemon, Handler, RpcOptions, RpcServer, daemon, ini};

/// Runs `vbdev serve` until SIGINT/SIGTERM; `vhost_dma`: the DMA memory for vhost-user
/// attaches when it is not the default (unless the daemon is set up for PCI).
pub fn run(args: ServeArgs, vhost_dma: Option<vbdev_virtio::DmaConfig>) -> Result<(), Failure> {
    if !args.vhost_dir.is_dir() {
        return Err(Failure::usage(anyhow!(
            "--vhost-dir {} is not a directory",
            args.vhost_dir.display()
        )));
    }
    if args.max_request < 1024 {
        return Err(Failure::usage(anyhow!(
            "--max-request {} is below 1024 bytes",
            args.max_request
        )));
    }
    // Before anything is created, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")
        .map_err(Failure::run)?;
    let ini = read_ini(&args)?;
    let pci_enable = ini.as_ref().is_some_and(|i| i.pci_enable);
    if pci_enable && !args.pci {
        // What main does for --pci, before any DMA memory exists.
        vbdev_virtio::DmaDomain::configure(crate::dma::serve_pci_config()).map_err(|e| {
            Failure::usage(anyhow!(
                "[VirtioPci] Enable Yes: cannot set up DMA memory for PCI ({e}); start with --pci"
            ))
        })?;
    } else if let (false, Some(config)) = (args.pci, vhost_dma) {
        vbdev_virtio::DmaDomain::configure(config)
            .map_err(|e| Failure::usage(anyhow!("cannot set up DMA memory: {e}")))?;
    }
    if args.timeout_ms == 0 {
        return Err(Failure::usage(anyhow!("--timeout-ms must be positive")));
    }
    let daemon = Daemon::new(
        args.vhost_dir.clone(),
        args.pci || pci_enable,
        std::time::Duration::from_millis(args.timeout_ms),
    );
    if let Err(e) = load_config(&daemon, &args, ini) {
        daemon.shutdown();
        return Err(e);
    }
    let handler: Arc<dyn Handler> = daemon.clone();
    let opts = RpcOptions {
        max_request: args.max_request,
        ..RpcOptions::default()
    };
    let mut server = match RpcServer::start(&args.rpc_socket, handler, opts) {
        Ok(s) => s,
        Err(e) => {
            daemon.shutdown();
            return Err(Failure::run(e));
        }
    };
    eprintln!(
        "vbdev serve: JSON-RPC on {} (vhost sockets in {})",
        server.path().display(),
        args.vhost_dir.display()
    );
    let sig = signals.forever().next().unwrap_or(SIGTERM);
    tracing::info!(target: "vbdev::serve", signal = sig, "shutting down");
    // Calls that wait stop waiting first, so the server's stop (which waits for the
    // calls in progress) is not held up by one.
    daemon.begin_shutdown();
    server.stop();
    daemon.shutdown();
    eprintln!("vbdev serve: stopped");
    Ok(())
}

/// Reads and converts `--config`, if given.
fn read_ini(args: &ServeArgs) -> Result<Option<ini::Ini>, Failure> {
    let Some(path) = &args.config else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Failure::usage)?;
    let ini = ini::parse_full(&text)
        .with_context(|| format!("config {}", path.display()))
        .map_err(Failure::usage)?;
    Ok(Some(ini))
}

/// Replays `--json` or `--config` (read by [`read_ini`]).
fn load_config(daemon: &Daemon, args: &ServeArgs, ini: Option<ini::Ini>) -> Result<(), Failure> {
    if let Some(path) = &args.json {
        let cfg = daemon::read_json(path).map_err(Failure::usage)?;
        let n = daemon.load(&cfg).map_err(|e| {
            Failure::run(anyhow!(
                "config {}: {} (code {})",
                path.display(),
                e.message,
                e.code
            ))
        })?;
        tracing::info!(target: "vbdev::serve", calls = n, config = %path.display(), "config loaded");
    }
    if let (Some(path), Some(ini)) = (&args.config, ini) {
        for section in &ini.ignored_sections {
            eprintln!(
                "vbdev serve: config {}: section [{section}] ignored (only [VirtioUser<N>] and [VirtioPci] are read)",
                path.display()
            );
        }
        for c in ini.calls {
            daemon.call(&c.method, Some(c.params)).map_err(|e| {
                Failure::run(anyhow!(
                    "config {}: {}: {} (code {})",
                    path.display(),
                    c.method,
                    e.message,
                    e.code
                ))
            })?;
        }
        if ini.pci_enable {
            let names = daemon.attach_all_pci().map_err(|e| {
                Failure::run(anyhow!(
                    "config {}: [VirtioPci] Enable: {} (code {})",
                    path.display(),
                    e.message,
                    e.code
                ))
            })?;
            if names.is_empty() {
                eprintln!(
                    "vbdev serve: config {}: [VirtioPci] Enable: no virtio-blk or virtio-scsi PCI function is bound to vfio-pci or uio_pci_generic",
                    path.display()
                );
            }
            tracing::info!(target: "vbdev::serve", devices = ?names, "[VirtioPci] functions attached");
        }
    }
    Ok(())
}
