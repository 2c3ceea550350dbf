//! `vbdev io`: attach a device, run one command, detach.
//!
//! virtio-blk attaches as the one bdev `VirtioBlk0`; `--bdev` may only name it (anything
//! else is a usage error, checked before connecting). virtio-scsi attaches as controller
//! `VirtioScsi0` whose LUNs become bdevs `VirtioScsi0t<T>` (LUN 0) and
//! `VirtioScsi0t<T>l<L>`: I/O commands use the `--bdev` one or the first found, `info`
//! lists the controller and every LUN (only the `--bdev` one when given). A `--bdev`
//! the scan did not find, or no LUN at all for an I/O command, fails the run (exit 1)
//! with the bdevs that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use vbdev_bdev::virtio_scsi::{self, ScsiController};
use vbdev_bdev::{Bdev, Completion, DmaBuf, IoChannel, Request};

use crate::Failure;
use crate::attach::{Attach, Attached, BLK_NAME};
use crate::cli::{DevType, IoArgs, IoCmd};
use crate::output::{self, InfoJson, OpJson, ScsiBdevJson, ScsiControllerJson, ScsiInfoJson};

/// Validated `vbdev io` options.
#[derive(Debug)]
struct IoConfig {
    attach: Attach,
}

impl TryFrom<&IoArgs> for IoConfig {
    type Error = Failure;
    fn try_from(a: &IoArgs) -> Result<Self, Failure> {
        let attach = Attach::new(
            a.dev_type,
            a.queues,
            a.queue_size,
            Duration::from_millis(a.timeout_ms),
        )?;
        if a.dev_type == DevType::Blk {
            if let Some(name) = a.bdev.as_deref().filter(|&n| n != BLK_NAME) {
                return Err(Failure::usage(anyhow!(
                    "--bdev {name}: a virtio-blk device has one bdev, {BLK_NAME} \
                     (--bdev selects a LUN with --dev-type scsi)"
                )));
            }
        }
        Ok(Self { attach })
    }
}

pub fn run(args: IoArgs) -> Result<(), Failure> {
    let cfg = IoConfig::try_from(&args)?;
    let name = cfg.attach.name();
    let attached = match (&args.vhost_user, &args.pci) {
        (Some(path), _) => cfg.attach.connect(name, path)?,
        (None, Some(bdf)) => cfg.attach.connect_pci(name, bdf)?,
        (None, None) => unreachable!("clap requires --vhost-user or --pci"),
    };
    let result = match &attached {
        Attached::Virtio(vbdev_bdev::Attached::Scsi(ctrl)) => {
            execute_scsi(ctrl, &cfg.attach.queues, &args)
        }
        Attached::Virtio(vbdev_bdev::Attached::Blk(bdev)) => execute(bdev, &args),
        Attached::Local(_) => unreachable!("vbdev io attaches virtio devices only"),
    };
    attached.detach();
    result
}

/// `vbdev io --dev-type scsi`: `info` on the controller, anything else on one LUN.
fn execute_scsi(
    ctrl: &ScsiController,
    opts: &virtio_scsi::AttachOptions,
    args: &IoArgs,
) -> Result<(), Failure> {
    if let IoCmd::Info = args.cmd {
        let bdevs = match args.bdev.as_deref() {
            Some(name) => vec![select_lun(ctrl, Some(name))?],
            None => ctrl.bdevs(),
        };
        return scsi_info(ctrl, opts, &bdevs, args.json);
    }
    let bdev = select_lun(ctrl, args.bdev.as_deref())?;
    execute(&bdev, args)
}

/// The LUN bdev `want`, or the first one; a run failure listing what exists otherwise.
fn select_lun(ctrl: &ScsiController, want: Option<&str>) -> Result<Bdev, Failure> {
    let bdevs = ctrl.bdevs();
    let names: Vec<&str> = bdevs.iter().map(Bdev::name).collect();
    let found = match want {
        Some(name) => bdevs.iter().find(|b| b.name() == name),
        None => bdevs.first(),
    };
    if let Some(b) = found {
        return Ok(b.clone());
    }
    let what = if names.is_empty() {
        "the scan found no LUN (no direct-access disk on any target)".to_owned()
    } else {
        format!("available: {}", names.join(", "))
    };
    Err(Failure::run(match want {
        Some(name) => anyhow!("no bdev {name} on controller {}: {what}", ctrl.name()),
        None => anyhow!("controller {} has no bdev to use: {what}", ctrl.name()),
    }))
}

/// Converts a byte range to blocks, or a usage error naming the flag.
fn blocks(bdev: &Bdev, flag: &str, bytes: u64) -> Result<u64, Failure> {
    let bs = u64::from(bdev.block_size());
    if bytes % bs != 0 {
        return Err(Failure::usage(anyhow!(
            "{flag} {bytes} is not a multiple of the block size {bs}"
        )));
    }
    Ok(bytes / bs)
}

fn range(bdev: &Bdev, offset: u64, length: u64) -> Result<(u64, u64), Failure> {
    range_of(bdev, offset, "--length", length)
}

/// As [`range`], naming `len_flag` for the length (`--in` when it comes from a file).
fn range_of(bdev: &Bdev, offset: u64, len_flag: &str, length: u64) -> Result<(u64, u64), Failure> {
    let off = blocks(bdev, "--offset", offset)?;
    let len = blocks(bdev, len_flag, length)?;
    if len == 0 {
        return Err(Failure::usage(anyhow!("--length must be positive")));
    }
    let size = bdev.num_blocks() * u64::from(bdev.block_size());
    if off
        .checked_add(len)
        .is_none_or(|end| end > bdev.num_blocks())
    {
        // A runtime failure (exit 1): the command line is well formed, the device is
        // smaller than it asks for (only the device can say).
        return Err(Failure::run(anyhow!(
            "range {offset}+{length} exceeds the device size of {size} bytes"
        )));
    }
    Ok((off, len))
}

/// Submits one request and waits for it; a refusal or an I/O error is a run failure.
fn one(ch: &mut IoChannel, req: Request) -> Result<(Completion, Duration), Failure> {
    let start = Instant::now();
    ch.submit(req)
        .map_err(|r| Failure::run(anyhow!("{}", r.error)))?;
    let c = ch.wait_one().map_err(Failure::run)?;
    let elapsed = start.elapsed();
    if let vbdev_bdev::IoStatus::Failed(e) = c.status {
        return Err(Failure::run(anyhow!("request failed: {e}")));
    }
    Ok((c, elapsed))
}

fn alloc(len: u64) -> Result<DmaBuf, Failure> {
    let len =
        usize::try_from(len).map_err(|_| Failure::usage(anyhow!("length {len} too large")))?;
    DmaBuf::alloc(len).map_err(Failure::run)
}

fn report(
    json: bool,
    op: &str,
    offset: u64,
    length: u64,
    elapsed: Duration,
    pattern_ok: Option<bool>,
) -> Result<(), Failure> {
    if json {
        output::json(&OpJson {
            op: op.into(),
            offset,
            length,
            status: "ok".into(),
            elapsed_us: elapsed.as_micros() as u64,
            pattern_ok,
        })
        .map_err(Failure::run)
    } else {
        println!(
            "{op} {length} bytes at offset {offset} ok ({:.1} us)",
            elapsed.as_secs_f64() * 1e6
        );
        Ok(())
    }
}

fn execute(bdev: &Bdev, args: &IoArgs) -> Result<(), Failure> {
    let json = args.json;
    if let IoCmd::Info = args.cmd {
        return info(bdev, json);
    }
    let mut ch = bdev.open_channel().map_err(Failure::run)?;
    match &args.cmd {
        IoCmd::Info => unreachable!("handled above"),
        IoCmd::Read {
            offset,
            length,
            out,
            pattern,
        } => {
            let (off, n) = range(bdev, *offset, *length)?;
            let (c, t) = one(&mut ch, Request::read(off, n, alloc(*length)?, 0))?;
            let data = c.buf.expect("reads return their buffer");
            if let Some(path) = out {
                std::fs::write(path, &data[..])
                    .with_context(|| format!("cannot write {}", path.display()))
                    .map_err(Failure::run)?;
            }
            let pattern_ok = pattern.map(|p| data.iter().all(|&b| b == p));
            if out.is_none() && pattern.is_none() && !json {
                output::hexdump(*offset, &data).map_err(Failure::run)?;
            }
            if pattern_ok != Some(false) || json {
                // A mismatch is still a result in JSON (`pattern_ok: false`); in text,
                // stdout stays empty and the error goes to stderr.
                report(json, "read", *offset, *length, t, pattern_ok)?;
            }
            if pattern_ok == Some(false) {
                let p = pattern.expect("set");
                let at = data.iter().position(|&b| b != p).expect("mismatch exists");
                return Err(Failure::run(anyhow!(
                    "pattern mismatch at offset {}: expected 0x{p:02x}, found 0x{:02x}",
                    offset + at as u64,
                    data[at]
                )));
            }
            Ok(())
        }
        IoCmd::Write {
            offset,
            input,
            pattern,
            length,
        } => {
            // The range is checked before anything is read or allocated: a length or a
            // file far beyond the disk is refused, not loaded into memory first.
            let (buf, len, (off, n)) = match (input, pattern, length) {
                (Some(path), _, _) => {
                    let cannot_read = |e: std::io::Error| {
                        Failure::usage(anyhow!("cannot read {}: {e}", path.display()))
                    };
                    let mut file = std::fs::File::open(path).map_err(cannot_read)?;
                    let size = file.metadata().map_err(cannot_read)?.len();
                    if size == 0 {
                        return Err(Failure::usage(anyhow!("{} is empty", path.display())));
                    }
                    let range = range_of(bdev, *offset, "--in file size", size)?;
                    let mut buf = alloc(size)?;
                    // A file that changes size meanwhile is refused rather than written
                    // in part.
                    std::io::Read::read_exact(&mut file, &mut buf).map_err(cannot_read)?;
                    let mut more = [0u8; 1];
                    if std::io::Read::read(&mut file, &mut more).map_err(cannot_read)? != 0 {
                        return Err(Failure::usage(anyhow!(
                            "{} grew while it was read",
                            path.display()
                        )));
                    }
                    (buf, size, range)
                }
                (None, Some(p), Some(len)) => {
                    let range = range_of(bdev, *offset, "--length", *len)?;
                    let mut buf = alloc(*len)?;
                    buf.fill(*p);
                    (buf, *len, range)
                }
                _ => {
                    return Err(Failure::usage(anyhow!(
                        "write needs --in FILE or --pattern BYTE --length BYTES"
                    )));
                }
            };
            let (_, t) = one(&mut ch, Request::write(off, n, buf, 0))?;
            report(json, "write", *offset, len, t, None)
        }
        IoCmd::Flush => {
            let (_, t) = one(&mut ch, Request::flush(0))?;
            report(json, "flush", 0, 0, t, None)
        }
        IoCmd::Discard { offset, length } => {
            let (off, n) = range(bdev, *offset, *length)?;
            let (_, t) = one(&mut ch, Request::unmap(off, n, 0))?;
            report(json, "discard", *offset, *length, t, None)
        }
        IoCmd::WriteZeroes { offset, length } => {
            let (off, n) = range(bdev, *offset, *length)?;
            let (_, t) = one(&mut ch, Request::write_zeroes(off, n, 0))?;
            report(json, "write_zeroes", *offset, *length, t, None)
        }
    }
}

fn info(bdev: &Bdev, json: bool) -> Result<(), Failure> {
    let i = bdev.info();
    let details = bdev.details();
    if json {
        return output::json(&InfoJson {
            name: i.name.clone(),
            product_name: i.product_name.clone(),
            driver: i.driver.into(),
            block_size: i.block_size,
            num_blocks: i.num_blocks,
            size_bytes: i.num_blocks * u64::from(i.block_size),
            read_only: i.read_only,
            flush: i.flush,
            unmap: i.unmap,
            write_zeroes: i.write_zeroes,
            num_queues: i.num_queues,
            queue_size: i.queue_size,
            serial: i.serial.clone(),
            details: details
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        })
        .map_err(Failure::run);
    }
    println!("name:          {}", i.name);
    println!("product:       {}", i.product_name);
    println!("driver:        {}", i.driver);
    println!("block size:    {}", i.block_size);
    println!("blocks:        {}", i.num_blocks);
    println!(
        "size:          {} bytes",
        i.num_blocks * u64::from(i.block_size)
    );
    println!("read-only:     {}", i.read_only);
    println!("flush:         {}", i.flush);
    println!("unmap:         {}", i.unmap);
    println!("write zeroes:  {}", i.write_zeroes);
    println!("queues:        {} x {}", i.num_queues, i.queue_size);
    println!("serial:        {}", i.serial.as_deref().unwrap_or("-"));
    for (k, v) in details {
        println!("{:<14} {v}", format!("{k}:"));
    }
    Ok(())
}

/// Keys of a LUN's details that `scsi_info` shows as fields of their own.
const LUN_FIELDS: [&str; 4] = ["target", "lun", "vendor", "product"];

/// `info` for a virtio-scsi controller and the LUN bdevs `bdevs`.
fn scsi_info(
    ctrl: &ScsiController,
    opts: &virtio_scsi::AttachOptions,
    bdevs: &[Bdev],
    json: bool,
) -> Result<(), Failure> {
    let ctrl_details = ctrl.details();
    let ctrl_keys: BTreeSet<&str> = ctrl_details.iter().map(|(k, _)| *k).collect();
    let luns: BTreeMap<String, virtio_scsi::LunSummary> = ctrl
        .luns()
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    let mut rows = Vec::with_capacity(bdevs.len());
    for b in bdevs {
        let details: Vec<(&'static str, String)> = b.details();
        let detail = |key: &str| {
            details
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        };
        // The summary and the bdev come from two looks at the LUN table; a LUN that
        // went away in between still has its details.
        let (target, lun, vendor, product) = match luns.get(b.name()) {
            Some(l) => (l.target, l.lun, l.vendor.clone(), l.product.clone()),
            None => (
                detail("target").and_then(|v| v.parse().ok()).unwrap_or(0),
                detail("lun").and_then(|v| v.parse().ok()).unwrap_or(0),
                detail("vendor").unwrap_or_default(),
                detail("product").unwrap_or_default(),
            ),
        };
        let i = b.info();
        let num_blocks = b.num_blocks();
        rows.push(ScsiBdevJson {
            name: i.name.clone(),
            target,
            lun,
            vendor,
            product,
            product_name: i.product_name.clone(),
            driver: i.driver.into(),
            block_size: i.block_size,
            num_blocks,
            size_bytes: num_blocks * u64::from(i.block_size),
            read_only: i.read_only,
            flush: i.flush,
            unmap: i.unmap,
            write_zeroes: i.write_zeroes,
            serial: i.serial.clone(),
            uuid: i.uuid.clone(),
            details: details
                .into_iter()
                .filter(|(k, _)| !ctrl_keys.contains(k) && !LUN_FIELDS.contains(k))
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        });
    }
    let controller = ScsiControllerJson {
        name: ctrl.name().to_owned(),
        driver: "virtio_scsi".into(),
        num_queues: opts.num_queues,
        queue_size: opts.queue_size,
        details: ctrl_details
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    };
    if json {
        return output::json(&ScsiInfoJson {
            controller,
            bdevs: rows,
        })
        .map_err(Failure::run);
    }
    println!("controller:    {}", controller.name);
    println!("driver:        {}", controller.driver);
    println!(
        "queues:        {} x {}",
        controller.num_queues, controller.queue_size
    );
    println!("bdevs:         {}", rows.len());
    for (k, v) in &ctrl_details {
        println!("{:<14} {v}", format!("{k}:"));
    }
    for r in rows {
        println!();
        println!("bdev {}", r.name);
        println!("  target:        {}", r.target);
        println!("  lun:           {}", r.lun);
        println!("  vendor:        {}", r.vendor);
        println!("  product:       {}", r.product);
        println!("  block size:    {}", r.block_size);
        println!("  blocks:        {}", r.num_blocks);
        println!("  size:          {} bytes", r.size_bytes);
        println!("  read-only:     {}", r.read_only);
        println!("  flush:         {}", r.flush);
        println!("  unmap:         {}", r.unmap);
        println!("  write zeroes:  {}", r.write_zeroes);
        println!("  serial:        {}", r.serial.as_deref().unwrap_or("-"));
        println!("  uuid:          {}", r.uuid.as_deref().unwrap_or("-"));
        for (k, v) in &r.details {
            println!("  {:<14} {v}", format!("{k}:"));
        }
    }
    Ok(())
}
