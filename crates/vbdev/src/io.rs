//! `vbdev io`: attach a device, run one command, detach.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_bdev::{Bdev, Completion, DmaBuf, IoChannel, Request};
use vbdev_virtio::transport::vhost_user::VhostUserOptions;

use crate::Failure;
use crate::cli::{IoArgs, IoCmd};
use crate::output::{self, InfoJson, OpJson};

/// The bdev name `vbdev io` attaches under.
const NAME: &str = "VirtioBlk0";

/// Validated `vbdev io` options.
#[derive(Debug)]
struct IoConfig {
    attach: AttachOptions,
}

impl TryFrom<&IoArgs> for IoConfig {
    type Error = Failure;
    fn try_from(a: &IoArgs) -> Result<Self, Failure> {
        if a.queues == 0 {
            return Err(Failure::usage(anyhow!("--queues must be at least 1")));
        }
        if !a.queue_size.is_power_of_two() {
            return Err(Failure::usage(anyhow!(
                "--queue-size {} is not a power of two from 1 to 32768",
                a.queue_size
            )));
        }
        if a.timeout_ms == 0 {
            return Err(Failure::usage(anyhow!("--timeout-ms must be positive")));
        }
        Ok(Self {
            attach: AttachOptions {
                num_queues: a.queues,
                queue_size: a.queue_size,
                vhost_user: VhostUserOptions {
                    timeout: Duration::from_millis(a.timeout_ms),
                },
                ..AttachOptions::default()
            },
        })
    }
}

pub fn run(args: IoArgs) -> Result<(), Failure> {
    let cfg = IoConfig::try_from(&args)?;
    let bdev =
        virtio_blk::attach_vhost_user(NAME, &args.vhost_user, &cfg.attach).map_err(Failure::run)?;
    let result = execute(&bdev, &args);
    bdev.detach();
    result
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
        return Err(Failure::usage(anyhow!(
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
            let (off, _) = range(bdev, *offset, *length)?;
            let (c, t) = one(&mut ch, Request::read(off, alloc(*length)?, 0))?;
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
            let (buf, len, len_flag) = match (input, pattern, length) {
                (Some(path), _, _) => {
                    let data = std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))
                        .map_err(Failure::usage)?;
                    if data.is_empty() {
                        return Err(Failure::usage(anyhow!("{} is empty", path.display())));
                    }
                    let mut buf = alloc(data.len() as u64)?;
                    buf.copy_from_slice(&data);
                    (buf, data.len() as u64, "--in file size")
                }
                (None, Some(p), Some(len)) => {
                    let mut buf = alloc((*len).max(1))?;
                    buf.fill(*p);
                    (buf, *len, "--length")
                }
                _ => {
                    return Err(Failure::usage(anyhow!(
                        "write needs --in FILE or --pattern BYTE --length BYTES"
                    )));
                }
            };
            let (off, _) = range_of(bdev, *offset, len_flag, len)?;
            let (_, t) = one(&mut ch, Request::write(off, buf, 0))?;
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
