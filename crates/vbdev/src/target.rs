//! `vbdev target`: serve a bdev over vhost-user in the foreground until SIGINT/SIGTERM.

use anyhow::{Context, anyhow};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vbdev_bdev::file::FileOptions;
use vbdev_bdev::{Bdev, file, malloc, null};

use crate::Failure;
use crate::cli::{TargetArgs, TargetType};

/// Creates the backing bdev `name` the arguments ask for.
fn backing(args: &TargetArgs, name: &str) -> Result<Bdev, Failure> {
    let bs = u64::from(args.block_size);
    let blocks = |size: u64, flag: &str| {
        if size % bs != 0 {
            return Err(Failure::usage(anyhow!(
                "{flag} {size} is not a multiple of the block size {bs}"
            )));
        }
        Ok(size / bs)
    };
    if args.null_read_zeroes.is_some() && args.null.is_none() {
        return Err(Failure::usage(anyhow!(
            "--null-read-zeroes applies to --null only"
        )));
    }
    let bdev = if let Some(size) = args.malloc {
        malloc::create(name, blocks(size, "--malloc")?, args.block_size)
    } else if let Some(size) = args.null {
        let opts = null::NullOptions {
            read_zeroes: args.null_read_zeroes.unwrap_or(true),
        };
        null::create_with(name, blocks(size, "--null")?, args.block_size, opts)
    } else if let Some(path) = &args.file {
        // A file that is missing, unreadable or too small is the world's answer.
        return file::open(
            name,
            path,
            FileOptions {
                block_size: args.block_size,
                read_only: args.read_only,
                ..FileOptions::default()
            },
        )
        .map_err(Failure::run);
    } else {
        return Err(Failure::usage(anyhow!(
            "a target needs a disk: --malloc SIZE, --null SIZE or --file PATH"
        )));
    };
    bdev.map_err(Failure::usage)
}

/// Blocks until SIGINT or SIGTERM arrives (the handlers were installed before the
/// target started, so a signal right after the "serving" line is not lost).
fn wait_for_signal(signals: &mut Signals) -> i32 {
    signals.forever().next().unwrap_or(SIGTERM)
}

/// Longest socket path a Unix socket takes (`sun_path`, 108 bytes with its NUL).
const SOCKET_PATH_MAX: usize = 107;

pub fn run(args: TargetArgs) -> Result<(), Failure> {
    // What the command line alone decides is a usage error (exit 2); what the world
    // answers (a missing file, a socket in use) is a runtime failure (exit 1).
    let max_queues = vbdev_target::server::MAX_QUEUES;
    if args.queues == 0 || args.queues > max_queues {
        return Err(Failure::usage(anyhow!(
            "--queues {} is not from 1 to {max_queues}",
            args.queues
        )));
    }
    let path_len = args.socket.as_os_str().len();
    if path_len > SOCKET_PATH_MAX {
        return Err(Failure::usage(anyhow!(
            "--socket {} is {path_len} bytes long; a Unix socket path holds at most {SOCKET_PATH_MAX}",
            args.socket.display()
        )));
    }
    if let Some(n) = args.poll_threads {
        if n == 0 || n > args.queues {
            return Err(Failure::usage(anyhow!(
                "--poll-threads {n} is not from 1 to --queues ({})",
                args.queues
            )));
        }
    }
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")
        .map_err(Failure::run)?;
    match args.dev_type {
        TargetType::Blk => run_blk(&args, &mut signals),
        TargetType::Scsi => run_scsi(&args, &mut signals),
    }
}

fn run_blk(args: &TargetArgs, signals: &mut Signals) -> Result<(), Failure> {
    if args.targets != 1 || args.luns != 1 {
        return Err(Failure::usage(anyhow!(
            "--targets and --luns apply to --dev-type scsi only"
        )));
    }
    let bdev = backing(args, "Target0")?;
    let cfg = vbdev_target::blk::BlkTargetConfig {
        num_queues: args.queues,
        read_only: args.read_only,
        poll: args.poll,
        poll_threads: args.poll_threads.unwrap_or(1),
        ..vbdev_target::blk::BlkTargetConfig::new(&args.socket)
    };
    let mut handle = vbdev_target::blk::start_blk(bdev, cfg)
        .with_context(|| format!("cannot serve {}", args.socket.display()))
        .map_err(Failure::run)?;
    eprintln!(
        "vbdev: serving vhost-user-blk on {} (Ctrl-C to stop)",
        args.socket.display()
    );
    let sig = wait_for_signal(signals);
    tracing::info!(target: "vbdev::target", signal = sig, "stopping");
    handle.stop();
    Ok(())
}

fn run_scsi(args: &TargetArgs, signals: &mut Signals) -> Result<(), Failure> {
    if args.targets == 0 || args.luns == 0 {
        return Err(Failure::usage(anyhow!(
            "--targets and --luns must be at least 1"
        )));
    }
    if args.file.is_some() && (args.targets, args.luns) != (1, 1) {
        return Err(Failure::usage(anyhow!(
            "--file serves one LUN: use --targets 1 --luns 1"
        )));
    }
    if args.luns > vbdev_target::scsi::MAX_LUN + 1 {
        return Err(Failure::usage(anyhow!(
            "--luns {} exceeds {} LUNs per target",
            args.luns,
            vbdev_target::scsi::MAX_LUN + 1
        )));
    }
    if args.read_only && args.file.is_none() {
        return Err(Failure::usage(anyhow!(
            "--read-only with --dev-type scsi needs --file (malloc and null LUNs are writable)"
        )));
    }
    let mut targets = Vec::new();
    for t in 0..args.targets {
        let mut luns = Vec::new();
        for l in 0..args.luns {
            luns.push((l, backing(args, &format!("Target{t}Lun{l}"))?));
        }
        targets.push((t, luns));
    }
    let cfg = vbdev_target::ScsiTargetConfig {
        num_queues: args.queues,
        poll: args.poll,
        poll_threads: args.poll_threads.unwrap_or(1),
        ..vbdev_target::ScsiTargetConfig::new(&args.socket)
    };
    let mut handle = vbdev_target::start_scsi(cfg, targets)
        .with_context(|| format!("cannot serve {}", args.socket.display()))
        .map_err(Failure::run)?;
    eprintln!(
        "vbdev: serving vhost-user-scsi on {} with {} target(s) x {} LUN(s) (Ctrl-C to stop)",
        args.socket.display(),
        args.targets,
        args.luns
    );
    let sig = wait_for_signal(signals);
    tracing::info!(target: "vbdev::target", signal = sig, "stopping");
    handle.stop();
    Ok(())
}
