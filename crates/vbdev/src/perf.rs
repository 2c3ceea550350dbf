//! `vbdev perf`: a bdevperf-class benchmark with bdevperf's options, table and
//! `perform_tests` JSON result.
//!
//! Where it attaches: `--vhost-user PATH --dev-type blk|scsi`, or an SPDK JSON config
//! (`-c/--config`, [`config`]), or, with neither, an embedded virtio-scsi target in
//! this process: polling, on a temporary socket, over a RAM disk (`--malloc`, 1 GiB,
//! memory taken as written), attached as `VirtioScsi0` like any other target.
//!
//! Jobs: without `-C` each bdev gets one job, on the cores of `-m` in turn; with `-C`
//! every core runs a job on each bdev, each on its own slice of the LBA range
//! (`num_blocks / cores`). One thread per core, pinned, runs its jobs ([`job`]).
//!
//! Exit: 0 when every job finished cleanly; 1 when an I/O failed (tolerated in
//! `reset`), timed out (`-k`), a verify read differed from what was written, or a reset
//! failed; 2 for usage and config errors (including `-o` not a multiple of a bdev's
//! block size).

mod config;
mod histogram;
mod job;
mod report;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use vbdev_bdev::{Bdev, malloc, null};
use vbdev_target::{Fault, ScsiHandle, ScsiTargetConfig, start_scsi};

use self::config::BdevConfig;
use self::job::{JobResult, JobSpec, Live, RunParams};
use self::report::JobRow;
use crate::Failure;
use crate::attach::{Attach, Attached, SCSI_NAME};
use crate::cli::{DevType, EmbeddedFault, PerfArgs, Workload};

/// Largest queue depth per job: each in-flight I/O has its buffers (two with verify), so
/// `-q 100000` took 430 MB; a device queue holds at most 32768 requests anyway.
const MAX_QUEUE_DEPTH: u32 = 32768;

/// Where the bdevs come from.
#[derive(Debug)]
enum Source {
    VhostUser {
        path: PathBuf,
        attach: Attach,
    },
    /// A virtio-pci function through VFIO.
    Pci {
        bdf: String,
        attach: Attach,
    },
    Config {
        /// The bdevs, in order.
        items: Vec<BdevConfig>,
        /// Reply deadline of attaches that give no `timeout_ms` (`--timeout-ms`).
        timeout: Duration,
    },
    Embedded {
        size: u64,
        block_size: u32,
        attach: Attach,
        fault: Option<EmbeddedFault>,
    },
}

/// Validated `vbdev perf` options.
#[derive(Debug)]
struct PerfConfig {
    workload: Workload,
    depth: u32,
    io_size: u64,
    read_pct: u8,
    time: Duration,
    bdev: Option<String>,
    every_core: bool,
    cores: Vec<usize>,
    period: Option<Duration>,
    latency: bool,
    timeout: Option<Duration>,
    unique: bool,
    json: bool,
    source: Source,
}

/// bdevperf's spelling of a workload.
fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Read => "read",
        Workload::Write => "write",
        Workload::Randread => "randread",
        Workload::Randwrite => "randwrite",
        Workload::Rw => "rw",
        Workload::Randrw => "randrw",
        Workload::Verify => "verify",
        Workload::Reset => "reset",
        Workload::Unmap => "unmap",
        Workload::Flush => "flush",
        Workload::WriteZeroes => "write_zeroes",
    }
}

/// Parses `-m`: a hex mask (`0x3`, `3`) or a list (`[0,2-3]`, `0,2-3`).
fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let t = s.trim();
    let bad = || format!("-m {s:?} is not a core mask (0x3) or list ([0,2-3])");
    let mut cores = Vec::new();
    let list = t.strip_prefix('[').and_then(|x| x.strip_suffix(']'));
    if list.is_some() || t.contains(',') || t.contains('-') {
        for part in list.unwrap_or(t).split(',') {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if a > b || b >= rustix::thread::CpuSet::MAX_CPU {
                return Err(bad());
            }
            cores.extend(a..=b);
        }
    } else {
        let hex = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if hex.is_empty() {
            return Err(bad());
        }
        for (pos, c) in hex.chars().rev().enumerate() {
            let d = c.to_digit(16).ok_or_else(bad)?;
            for bit in 0..4 {
                if d & (1 << bit) != 0 {
                    cores.push(pos * 4 + bit);
                }
            }
        }
    }
    cores.sort_unstable();
    cores.dedup();
    if cores.is_empty() {
        return Err(format!("-m {s:?} selects no core"));
    }
    Ok(cores)
}

/// A set of cores as an SPDK hex mask, `0x..`.
fn core_mask(cores: &[usize]) -> String {
    let top = cores.iter().copied().max().unwrap_or(0);
    let mut nibbles = vec![0u8; top / 4 + 1];
    for &c in cores {
        nibbles[c / 4] |= 1 << (c % 4);
    }
    let digits: String = nibbles
        .iter()
        .rev()
        .map(|&n| char::from_digit(u32::from(n), 16).expect("nibble"))
        .collect();
    format!("0x{}", digits.trim_start_matches('0').max("0"))
}

/// The cores this process may run on.
fn allowed_cores() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => vec![0],
    }
}

impl TryFrom<&PerfArgs> for PerfConfig {
    type Error = Failure;
    fn try_from(a: &PerfArgs) -> Result<Self, Failure> {
        let usage = |m: String| Failure::usage(anyhow!(m));
        if a.queue_depth == 0 || a.queue_depth > MAX_QUEUE_DEPTH {
            return Err(usage(format!(
                "-q {} is not from 1 to {MAX_QUEUE_DEPTH} (each I/O slot has its buffers)",
                a.queue_depth
            )));
        }
        if a.time == 0 {
            return Err(usage("-t must be at least 1 second".into()));
        }
        if a.io_size > u64::from(u32::MAX) {
            return Err(usage(format!("-o {} is larger than 4 GiB", a.io_size)));
        }
        let mixed = matches!(a.workload, Workload::Rw | Workload::Randrw);
        let read_pct = match (mixed, a.rw_percentage) {
            (true, None) => {
                return Err(usage(format!(
                    "-M (read percentage, 0 to 100) is required with -w {}",
                    workload_name(a.workload)
                )));
            }
            (true, Some(p)) if p > 100 => {
                return Err(usage(format!("-M {p} is not from 0 to 100")));
            }
            (true, Some(p)) => p,
            (false, Some(_)) => {
                eprintln!("Ignoring -M option");
                0
            }
            (false, None) => 0,
        };
        if a.period == Some(0) {
            return Err(usage("-S must be at least 1 second".into()));
        }
        let allowed = allowed_cores();
        let cores = match &a.cores {
            Some(s) => parse_cores(s).map_err(usage)?,
            None => vec![allowed.first().copied().unwrap_or(0)],
        };
        if let Some(c) = cores.iter().find(|c| !allowed.contains(c)) {
            return Err(usage(format!(
                "-m: core {c} is not available to this process (allowed: {})",
                core_mask(&allowed)
            )));
        }
        let threads = u16::try_from(cores.len()).unwrap_or(u16::MAX);
        let queues = a.queues.unwrap_or(threads);
        let timeout = Duration::from_millis(a.timeout_ms);
        let source = if let Some(path) = &a.config {
            Source::Config {
                items: config::load(path).map_err(Failure::usage)?,
                timeout,
            }
        } else if let Some(path) = &a.vhost_user {
            Source::VhostUser {
                path: path.clone(),
                attach: Attach::new(
                    a.dev_type.unwrap_or(DevType::Blk),
                    queues,
                    a.queue_size,
                    timeout,
                )?,
            }
        } else if let Some(bdf) = &a.pci {
            Source::Pci {
                bdf: bdf.clone(),
                attach: Attach::new(
                    a.dev_type.unwrap_or(DevType::Blk),
                    queues,
                    a.queue_size,
                    timeout,
                )?,
            }
        } else {
            let bs = u64::from(a.block_size);
            if a.malloc % bs != 0 {
                return Err(usage(format!(
                    "--malloc {} is not a multiple of the block size {bs}",
                    a.malloc
                )));
            }
            Source::Embedded {
                size: a.malloc,
                block_size: a.block_size,
                attach: Attach::new(DevType::Scsi, queues, a.queue_size, timeout)?,
                fault: a.inject_fault,
            }
        };
        if a.dev_type.is_some() && !matches!(source, Source::VhostUser { .. } | Source::Pci { .. })
        {
            return Err(usage(
                "--dev-type applies to --vhost-user and --pci only".into(),
            ));
        }
        if a.inject_fault.is_some() && !matches!(source, Source::Embedded { .. }) {
            return Err(usage(
                "--inject-fault applies to the embedded target only".into(),
            ));
        }
        Ok(Self {
            workload: a.workload,
            depth: a.queue_depth,
            io_size: a.io_size,
            read_pct,
            time: Duration::from_secs(a.time),
            bdev: a.bdev.clone(),
            every_core: a.every_core,
            cores,
            period: a.period.map(Duration::from_secs),
            latency: a.latency,
            timeout: (a.timeout > 0).then(|| Duration::from_secs(a.timeout)),
            unique: a.unique,
            json: a.json,
            source,
        })
    }
}

/// What was set up: attached devices, and the embedded target if any (kept alive).
struct Setup {
    attached: Vec<Attached>,
    target: Option<(ScsiHandle, tempfile::TempDir)>,
}

impl Setup {
    fn bdevs(&self) -> Vec<Bdev> {
        self.attached.iter().flat_map(Attached::bdevs).collect()
    }

    fn teardown(mut self) {
        for a in &self.attached {
            a.detach();
        }
        if let Some((mut h, dir)) = self.target.take() {
            h.stop();
            drop(dir);
        }
    }
}

fn set_up(cfg: &PerfConfig) -> Result<Setup, Failure> {
    let mut s = Setup {
        attached: Vec::new(),
        target: None,
    };
    let result = set_up_into(cfg, &mut s);
    match result {
        Ok(()) => Ok(s),
        Err(e) => {
            s.teardown();
            Err(e)
        }
    }
}

/// The attach name of a device type: `VirtioBlk0` or `VirtioScsi0`.
fn set_up_into(cfg: &PerfConfig, s: &mut Setup) -> Result<(), Failure> {
    match &cfg.source {
        Source::VhostUser { path, attach } => {
            s.attached.push(attach.connect(attach.name(), path)?);
        }
        Source::Pci { bdf, attach } => {
            s.attached.push(attach.connect_pci(attach.name(), bdf)?);
        }
        Source::Config { items, timeout } => {
            for item in items {
                let a = match item {
                    BdevConfig::Virtio {
                        name,
                        traddr,
                        scsi,
                        vq_count,
                        vq_size,
                        timeout_ms,
                    } => {
                        let dev = if *scsi { DevType::Scsi } else { DevType::Blk };
                        let timeout = timeout_ms.map_or(*timeout, Duration::from_millis);
                        Attach::new(dev, *vq_count, *vq_size, timeout)?.connect(name, traddr)?
                    }
                    BdevConfig::Malloc {
                        name,
                        num_blocks,
                        block_size,
                    } => Attached::Local(
                        malloc::create(name, *num_blocks, *block_size).map_err(Failure::usage)?,
                    ),
                    BdevConfig::Null {
                        name,
                        num_blocks,
                        block_size,
                    } => Attached::Local(
                        null::create(name, *num_blocks, *block_size).map_err(Failure::usage)?,
                    ),
                };
                s.attached.push(a);
            }
        }
        Source::Embedded {
            size,
            block_size,
            attach,
            fault,
        } => {
            let dir = tempfile::Builder::new()
                .prefix("vbdev-perf")
                .tempdir()
                .context("cannot create a directory for the embedded target's socket")
                .map_err(Failure::run)?;
            let socket = dir.path().join("scsi.sock");
            let disk = malloc::create("Malloc0", size / u64::from(*block_size), *block_size)
                .map_err(Failure::usage)?;
            debug_assert_eq!(attach.device, vbdev_virtio::DeviceType::Scsi);
            let tcfg = ScsiTargetConfig {
                num_queues: attach.queues.num_queues,
                poll: true,
                ..ScsiTargetConfig::new(&socket)
            };
            let handle = start_scsi(tcfg, vec![(0, vec![(0, disk)])])
                .context("cannot start the embedded target")
                .map_err(Failure::run)?;
            if let Some(EmbeddedFault::CorruptRead) = fault {
                handle.faults.inject(Fault::CorruptRead);
            }
            s.target = Some((handle, dir));
            s.attached.push(attach.connect(SCSI_NAME, &socket)?);
        }
    }
    Ok(())
}

/// A planned job and what the report needs to know about it.
struct Planned {
    spec: JobSpec,
    live: Arc<Live>,
    verify_range: Option<(u64, u64)>,
}

/// Chooses the bdevs and cuts them into jobs.
fn plan(cfg: &PerfConfig, bdevs: Vec<Bdev>) -> Result<Vec<Planned>, Failure> {
    let names = || {
        bdevs
            .iter()
            .map(|b| b.name().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Vec<Bdev> = match &cfg.bdev {
        Some(n) => match bdevs.iter().find(|b| b.name() == n) {
            Some(b) => vec![b.clone()],
            None => {
                return Err(Failure::run(anyhow!(
                    "no bdev {n} (-T); available: {}",
                    if bdevs.is_empty() {
                        "none".into()
                    } else {
                        names()
                    }
                )));
            }
        },
        None => bdevs.clone(),
    };
    if chosen.is_empty() {
        return Err(Failure::run(anyhow!("no bdev to run on")));
    }
    let verify = matches!(cfg.workload, Workload::Verify | Workload::Reset);
    let mut jobs = Vec::new();
    let mut next_core = 0usize;
    for b in chosen {
        let info = b.info();
        if cfg.workload == Workload::Unmap && !info.unmap {
            eprintln!("Skipping {} because it does not support unmap", b.name());
            continue;
        }
        if cfg.workload == Workload::WriteZeroes && !info.write_zeroes {
            eprintln!(
                "Skipping {} because it does not support write_zeroes",
                b.name()
            );
            continue;
        }
        let bs = u64::from(b.block_size());
        if cfg.io_size % bs != 0 {
            return Err(Failure::usage(anyhow!(
                "-o {} is not a multiple of the block size {bs} of bdev {}",
                cfg.io_size,
                b.name()
            )));
        }
        let total = b.num_blocks() * bs / cfg.io_size;
        let cores: Vec<usize> = if cfg.every_core {
            cfg.cores.clone()
        } else {
            let c = cfg.cores[next_core % cfg.cores.len()];
            next_core += 1;
            vec![c]
        };
        let per = total / cores.len() as u64;
        if per == 0 {
            return Err(Failure::usage(anyhow!(
                "-o {}: bdev {} ({} bytes) has no room for one I/O per job",
                cfg.io_size,
                b.name(),
                b.num_blocks() * bs
            )));
        }
        for (k, &core) in cores.iter().enumerate() {
            let ios_base = per * k as u64;
            let depth = if verify {
                cfg.depth.min(u32::try_from(per).unwrap_or(u32::MAX))
            } else {
                cfg.depth
            };
            jobs.push(Planned {
                spec: JobSpec {
                    bdev: b.clone(),
                    core,
                    ios_base,
                    size_in_ios: per,
                    depth,
                    io_size: cfg.io_size as usize,
                    workload: cfg.workload,
                    read_pct: cfg.read_pct,
                    unique: cfg.unique,
                },
                live: Arc::new(Live::default()),
                verify_range: verify.then_some((ios_base, per)),
            });
        }
    }
    if jobs.is_empty() {
        return Err(Failure::run(anyhow!("no bdev to run on")));
    }
    Ok(jobs)
}

fn row(cfg: &PerfConfig, p: &Planned, runtime: f64, totals: job::Totals, error: bool) -> JobRow {
    let mixed = matches!(cfg.workload, Workload::Rw | Workload::Randrw);
    JobRow {
        name: p.spec.name().to_owned(),
        core_mask: core_mask(&[p.spec.core]),
        workload: workload_name(cfg.workload),
        percentage: mixed.then_some(cfg.read_pct),
        verify_range: p.verify_range,
        queue_depth: p.spec.depth,
        io_size: cfg.io_size,
        runtime,
        totals,
        error,
    }
}

fn core_count(jobs: &[Planned]) -> u32 {
    let mut cores: Vec<usize> = jobs.iter().map(|p| p.spec.core).collect();
    cores.sort_unstable();
    cores.dedup();
    cores.len() as u32
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Failure::run)
}

pub fn run(args: PerfArgs) -> Result<(), Failure> {
    let cfg = PerfConfig::try_from(&args)?;
    // The per-I/O clock's rate is measured now (20 ms), not in the first timed I/O.
    vbdev_bdev::ticks::calibrate();
    let setup = set_up(&cfg)?;
    let result = plan(&cfg, setup.bdevs()).and_then(|jobs| execute(&cfg, &jobs));
    setup.teardown();
    result
}

/// Runs the planned jobs, prints the results, and says whether the run failed.
fn execute(cfg: &PerfConfig, jobs: &[Planned]) -> Result<(), Failure> {
    let params = RunParams {
        time: cfg.time,
        timeout: cfg.timeout,
        histogram: cfg.latency,
    };
    let mut cores: Vec<usize> = jobs.iter().map(|p| p.spec.core).collect();
    cores.sort_unstable();
    cores.dedup();
    let start = Arc::new(Barrier::new(cores.len() + 1));
    let abort = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for &core in &cores {
        let mine: Vec<(JobSpec, Arc<Live>)> = jobs
            .iter()
            .filter(|p| p.spec.core == core)
            .map(|p| (p.spec.clone(), Arc::clone(&p.live)))
            .collect();
        let (tx, start, abort) = (tx.clone(), Arc::clone(&start), Arc::clone(&abort));
        let t = std::thread::Builder::new()
            .name(format!("vbdev-perf-{core}"))
            .spawn(move || job::run_thread(core, mine, params, tx, start, abort))
            .context("cannot start a job thread")
            .map_err(Failure::run)?;
        threads.push(t);
    }
    drop(tx);
    let mut setup_error = None;
    for _ in 0..threads.len() {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => setup_error = setup_error.or(Some(e)),
            Err(_) => setup_error = setup_error.or(Some("a job thread died".into())),
        }
    }
    if setup_error.is_some() {
        abort.store(true, Ordering::Release);
    }
    if !cfg.json && setup_error.is_none() {
        let mut text = format!("Running I/O for {} seconds...\n", cfg.time.as_secs());
        if cfg.period.is_some() {
            text.push_str(&report::header());
        }
        print(&text)?;
    }
    start.wait();
    let begin = Instant::now();
    if let Some(e) = setup_error {
        for t in threads {
            let _ = t.join();
        }
        return Err(Failure::run(anyhow!(e)));
    }
    watch(cfg, jobs, &threads, begin)?;
    let mut results: Vec<JobResult> = Vec::new();
    let mut per_core: Vec<(usize, Vec<JobResult>)> = Vec::new();
    for (t, &core) in threads.into_iter().zip(&cores) {
        let r = t
            .join()
            .map_err(|_| Failure::run(anyhow!("job thread of core {core} panicked")))?;
        per_core.push((core, r));
    }
    // Back in plan order: each thread returns its jobs in the order it was given them.
    let mut iters: Vec<(usize, std::vec::IntoIter<JobResult>)> = per_core
        .into_iter()
        .map(|(c, v)| (c, v.into_iter()))
        .collect();
    for p in jobs {
        let it = iters
            .iter_mut()
            .find(|(c, _)| *c == p.spec.core)
            .map(|(_, it)| it)
            .expect("a thread per core");
        results.push(it.next().expect("a result per job"));
    }
    let rows: Vec<JobRow> = jobs
        .iter()
        .zip(&results)
        .map(|(p, r)| row(cfg, p, r.runtime.as_secs_f64(), r.totals, r.error))
        .collect();
    if cfg.json {
        crate::output::json(&report::json(&rows, core_count(jobs))).map_err(Failure::run)?;
    } else {
        let mut text = report::header();
        text.push_str(&report::rows(&rows));
        if cfg.latency {
            let with_hist: Vec<(JobRow, Option<histogram::Histogram>)> = rows
                .iter()
                .cloned()
                .zip(results.iter_mut().map(|r| r.histogram.take()))
                .collect();
            text.push_str(&report::latency_summary(&with_hist));
        }
        print(&text)?;
    }
    let failed: u64 = rows
        .iter()
        .filter(|r| r.workload != "reset")
        .map(|r| r.totals.failed)
        .sum();
    let timeouts: u64 = rows.iter().map(|r| r.totals.timeouts).sum();
    let errors: Vec<&str> = rows
        .iter()
        .filter(|r| r.error)
        .map(|r| r.name.as_str())
        .collect();
    if failed > 0 || timeouts > 0 || !errors.is_empty() {
        return Err(Failure::run(anyhow!(
            "run failed: {failed} I/O failed, {timeouts} timed out{}",
            if errors.is_empty() {
                String::new()
            } else {
                format!("; jobs ended with error: {}", errors.join(", "))
            }
        )));
    }
    Ok(())
}

/// While the jobs run: the live progress line on a terminal, and `-S` results.
fn watch(
    cfg: &PerfConfig,
    jobs: &[Planned],
    threads: &[std::thread::JoinHandle<Vec<JobResult>>],
    begin: Instant,
) -> Result<(), Failure> {
    let tty = std::io::stderr().is_terminal() && cfg.period.is_none();
    let tick = Duration::from_millis(50);
    let mut next_progress = begin + Duration::from_secs(1);
    let mut next_period = cfg.period.map(|p| begin + p);
    let mut last = (begin, 0u64);
    let mut shown = false;
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(tick);
        let now = Instant::now();
        if tty && now >= next_progress {
            next_progress += Duration::from_secs(1);
            let ios: u64 = jobs.iter().map(|p| p.live.totals().ios).sum();
            let secs = now.duration_since(last.0).as_secs_f64();
            let iops = (ios - last.1) as f64 / secs;
            let mibps = iops * cfg.io_size as f64 / (1024.0 * 1024.0);
            last = (now, ios);
            eprint!(
                "\r{iops:12.2} IOPS, {mibps:8.2} MiB/s, {:.0}/{} s elapsed",
                now.duration_since(begin).as_secs_f64(),
                cfg.time.as_secs()
            );
            shown = true;
        }
        if let Some(at) = next_period.filter(|&at| now >= at) {
            next_period = Some(at + cfg.period.expect("set"));
            let elapsed = now.duration_since(begin).as_secs_f64();
            let rows: Vec<JobRow> = jobs
                .iter()
                .map(|p| row(cfg, p, elapsed, p.live.totals(), false))
                .collect();
            if cfg.json {
                crate::output::json(&report::json(&rows, core_count(jobs)))
                    .map_err(Failure::run)?;
            } else {
                print(&report::rows(&rows))?;
            }
        }
    }
    if shown {
        eprint!("\r\x1b[2K");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_masks_and_lists_parse() {
        assert_eq!(parse_cores("0x1"), Ok(vec![0]));
        assert_eq!(parse_cores("0x5"), Ok(vec![0, 2]));
        assert_eq!(parse_cores("c"), Ok(vec![2, 3]));
        assert_eq!(parse_cores("[0,2-3]"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_cores("1,1"), Ok(vec![1]));
        assert_eq!(parse_cores("0x10"), Ok(vec![4]));
        assert!(parse_cores("0x0").is_err());
        assert!(parse_cores("[3-1]").is_err());
        assert!(parse_cores("zz").is_err());
    }

    #[test]
    fn core_masks_format_like_spdk() {
        assert_eq!(core_mask(&[0]), "0x1");
        assert_eq!(core_mask(&[0, 2]), "0x5");
        assert_eq!(core_mask(&[4]), "0x10");
        assert_eq!(core_mask(&[1, 65]), "0x20000000000000002");
    }
}
