//! SPDK JSON config (`{"subsystems":[{"subsystem":"bdev","config":[{"method":..,
//! "params":..}]}]}`): the bdevs `vbdev perf` sets up from it.
//!
//! Supported `bdev` methods: `bdev_virtio_attach_controller` (`trtype` `"user"`),
//! `bdev_malloc_create`, `bdev_null_create`; `bdev_set_options` and
//! `bdev_wait_for_examine` are accepted and have no effect. Any other `bdev` method is an
//! error naming it. Other subsystems (`accel`, `iobuf`, ...) are ignored.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;

/// One bdev-creating call of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdevConfig {
    /// `bdev_virtio_attach_controller`.
    Virtio {
        /// Controller (scsi) or bdev (blk) name.
        name: String,
        /// vhost-user socket path.
        traddr: PathBuf,
        /// `"blk"` or `"scsi"`.
        scsi: bool,
        /// `vq_count` (default 1).
        vq_count: u16,
        /// `vq_size` (default 512).
        vq_size: u16,
        /// vbdev's `timeout_ms` (default: `--timeout-ms`).
        timeout_ms: Option<u64>,
    },
    /// `bdev_malloc_create`.
    Malloc {
        /// Bdev name.
        name: String,
        /// Size in blocks.
        num_blocks: u64,
        /// Block size.
        block_size: u32,
    },
    /// `bdev_null_create`.
    Null {
        /// Bdev name.
        name: String,
        /// Size in blocks.
        num_blocks: u64,
        /// Block size.
        block_size: u32,
    },
}

#[derive(Debug, Deserialize)]
struct File {
    subsystems: Vec<Subsystem>,
}

#[derive(Debug, Deserialize)]
struct Subsystem {
    subsystem: String,
    #[serde(default)]
    config: Option<Vec<Call>>,
}

#[derive(Debug, Deserialize)]
struct Call {
    method: String,
    #[serde(default)]
    params: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct VirtioParams {
    name: String,
    trtype: String,
    traddr: PathBuf,
    dev_type: String,
    #[serde(default = "one")]
    vq_count: u16,
    #[serde(default = "five_twelve")]
    vq_size: u16,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn one() -> u16 {
    1
}

fn five_twelve() -> u16 {
    512
}

#[derive(Debug, Deserialize)]
struct DiskParams {
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
}

/// Reads and parses the config at `path`.
///
/// # Errors
/// When the file cannot be read or parsed, or has an unsupported method or transport.
pub fn load(path: &Path) -> anyhow::Result<Vec<BdevConfig>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    parse(&text).with_context(|| format!("config {}", path.display()))
}

/// Parses a config's text.
///
/// # Errors
/// As [`load`].
pub fn parse(text: &str) -> anyhow::Result<Vec<BdevConfig>> {
    let file: File = serde_json::from_str(text).context("not an SPDK JSON config")?;
    let mut out = Vec::new();
    let mut mallocs = 0;
    for sub in file.subsystems.iter().filter(|s| s.subsystem == "bdev") {
        for call in sub.config.iter().flatten() {
            let params = || call.params.clone();
            let bad = |e: serde_json::Error| anyhow!("{}: bad params: {e}", call.method);
            match call.method.as_str() {
                "bdev_virtio_attach_controller" => {
                    let p: VirtioParams = serde_json::from_value(params()).map_err(bad)?;
                    if p.trtype != "user" {
                        bail!(
                            "bdev_virtio_attach_controller {}: trtype {:?} is not supported (only \"user\")",
                            p.name,
                            p.trtype
                        );
                    }
                    let scsi = match p.dev_type.as_str() {
                        "scsi" => true,
                        "blk" => false,
                        t => bail!(
                            "bdev_virtio_attach_controller {}: dev_type {t:?} is not \"blk\" or \"scsi\"",
                            p.name
                        ),
                    };
                    out.push(BdevConfig::Virtio {
                        name: p.name,
                        traddr: p.traddr,
                        scsi,
                        vq_count: p.vq_count,
                        vq_size: p.vq_size,
                        timeout_ms: p.timeout_ms,
                    });
                }
                "bdev_malloc_create" => {
                    let p: DiskParams = serde_json::from_value(params()).map_err(bad)?;
                    // SPDK's default names are Malloc0, Malloc1, ...
                    let name = p.name.unwrap_or_else(|| format!("Malloc{mallocs}"));
                    mallocs += 1;
                    out.push(BdevConfig::Malloc {
                        name,
                        num_blocks: p.num_blocks,
                        block_size: p.block_size,
                    });
                }
                "bdev_null_create" => {
                    let p: DiskParams = serde_json::from_value(params()).map_err(bad)?;
                    let name = p
                        .name
                        .ok_or_else(|| anyhow!("bdev_null_create: params need a name"))?;
                    out.push(BdevConfig::Null {
                        name,
                        num_blocks: p.num_blocks,
                        block_size: p.block_size,
                    });
                }
                "bdev_set_options" | "bdev_wait_for_examine" => {}
                m => bail!(
                    "method {m} is not supported (supported: bdev_virtio_attach_controller, \
                     bdev_malloc_create, bdev_null_create)"
                ),
            }
        }
    }
    if out.is_empty() {
        bail!("no bdev in the config (no bdev subsystem method that creates one)");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdk_config_with_virtio_malloc_and_null_parses() {
        let text = r#"{"subsystems":[
            {"subsystem":"accel","config":[{"method":"accel_set_options","params":{}}]},
            {"subsystem":"bdev","config":[
              {"method":"bdev_set_options","params":{"bdev_io_pool_size":65535}},
              {"method":"bdev_virtio_attach_controller","params":{"name":"VirtioScsi0",
                "trtype":"user","traddr":"/tmp/s.sock","dev_type":"scsi","vq_count":2,"vq_size":128}},
              {"method":"bdev_virtio_attach_controller","params":{"name":"VirtioBlk1",
                "trtype":"user","traddr":"/tmp/b.sock","dev_type":"blk"}},
              {"method":"bdev_malloc_create","params":{"num_blocks":2048,"block_size":4096}},
              {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":10,"block_size":512}},
              {"method":"bdev_wait_for_examine"}]}]}"#;
        let c = parse(text).unwrap();
        assert_eq!(
            c,
            vec![
                BdevConfig::Virtio {
                    name: "VirtioScsi0".into(),
                    traddr: "/tmp/s.sock".into(),
                    scsi: true,
                    vq_count: 2,
                    vq_size: 128,
                    timeout_ms: None
                },
                BdevConfig::Virtio {
                    name: "VirtioBlk1".into(),
                    traddr: "/tmp/b.sock".into(),
                    scsi: false,
                    vq_count: 1,
                    vq_size: 512,
                    timeout_ms: None
                },
                BdevConfig::Malloc {
                    name: "Malloc0".into(),
                    num_blocks: 2048,
                    block_size: 4096
                },
                BdevConfig::Null {
                    name: "Null0".into(),
                    num_blocks: 10,
                    block_size: 512
                },
            ]
        );
    }

    #[test]
    fn unsupported_methods_and_transports_are_named() {
        let e = parse(r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_nvme_attach_controller","params":{}}]}]}"#)
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("bdev_nvme_attach_controller"),
            "{e:#}"
        );
        let e = parse(r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_virtio_attach_controller","params":{"name":"V","trtype":"pci","traddr":"0000:00:04.0","dev_type":"blk"}}]}]}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("trtype \"pci\""), "{e:#}");
        assert!(parse(r#"{"subsystems":[]}"#).is_err());
        assert!(parse("not json").is_err());
    }
}
