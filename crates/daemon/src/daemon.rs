//! The daemon's state and its JSON-RPC methods (SPDK's names, params, results and error
//! codes; `../shared/research/spdk-virtio.md` §6-7).
//!
//! # State
//! Three kinds of objects, each kept in creation order so `save_config` replays them in an
//! order that works: local bdevs (`bdev_malloc_create`, `bdev_null_create`), virtio
//! devices (`bdev_virtio_attach_controller`: a blk bdev or a scsi controller with its LUN
//! bdevs) and vhost controllers (embedded targets serving local or virtio bdevs).
//!
//! One mutex guards the state, but never while a device is attached or a target started
//! (that can take seconds): the name is reserved first, the work done unlocked, and the
//! result put in under the lock. So a slow attach never holds up `bdev_get_bdevs` on
//! another connection.
//!
//! # Bdevs in use
//! A bdev served by a vhost controller is "claimed" (as SPDK says): deleting or detaching
//! it fails with `-16` (EBUSY) naming the controller, instead of pulling it from under a
//! frontend.
//!
//! # PCI enumeration and the hotplug monitor
//! [`Daemon::attach_all_pci`] (`[VirtioPci] Enable Yes`) attaches every modern
//! virtio-blk and virtio-scsi function bound to `vfio-pci` or `uio_pci_generic`, under
//! the first free `VirtioBlk<N>` / `VirtioScsi<N>` name. `bdev_virtio_blk_set_hotplug`
//! starts a monitor thread (SPDK §4.4) that reads sysfs every `period_us`: it detaches
//! the PCI virtio-blk devices whose function is gone or no longer bound to a user-space
//! driver (a hot-remove: their bdevs go), then attaches the virtio-blk functions bound
//! to one that are not attached yet. It goes through the same reserve / attach unlocked
//! / add steps as the RPC; it holds no lock while it sleeps or attaches. Unbinding
//! `vfio-pci` from a function in use blocks in the kernel until the process lets go: the
//! monitor sees the `driver` link go first, detaches, and the unbind completes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use vbdev_bdev::attach::{Attached as VirtioDev, QueueOptions, Target};
use vbdev_bdev::{Bdev, malloc, null};
use vbdev_pci::PciOptions;
use vbdev_pci::sysfs::{Bdf, PciFunction, Sysfs};
use vbdev_target::{BlkTargetConfig, ScsiHandle, ScsiTargetConfig, TargetHandle};
use vbdev_virtio::DeviceType as VirtioType;
use vbdev_virtio::transport::vhost_user::VhostUserOptions;

use super::rpc::{Handler, RpcError};

mod bdevs;
mod vhost;
mod virtio;

use bdevs::*;
use vhost::*;
use virtio::*;

const TARGET: &str = "vbdev::serve";

/// The attach method.
const ATTACH: &str = "bdev_virtio_attach_controller";

/// `-ENODEV`.
const ENODEV: i32 = -19;
/// `-EEXIST`.
const EEXIST: i32 = -17;
/// `-EBUSY`.
const EBUSY: i32 = -16;
/// `-EINVAL`.
const EINVAL: i32 = -22;
/// `-ENOTSUP`.
const ENOTSUP: i32 = -95;
/// Queue size of a PCI function attached by RPC.
const PCI_QUEUE_SIZE: u16 = 256;
/// SPDK's hotplug period when 0 is given, in microseconds.
const HOTPLUG_PERIOD_DEFAULT_US: u64 = 100_000;
/// SPDK's longest hotplug period, in microseconds.
const HOTPLUG_PERIOD_MAX_US: u64 = 10_000_000;
/// Environment variable naming the sysfs mount point (tests); `/sys` without it.
const SYSFS_ROOT_ENV: &str = "VBDEV_SYSFS_ROOT";
/// The longest a call may be asked to wait, in milliseconds (`bdev_get_bdevs`'
/// `timeout`, `bdev_virtio_attach_controller`'s `timeout_ms`): one hour. A waiting call
/// also ends when its client hangs up or the daemon stops.
const MAX_WAIT_MS: u64 = 3_600_000;
/// JSON-RPC invalid params, SPDK's usual code for a failed call.
const INVALID_PARAMS: i32 = -32602;
/// SPDK's code for params that do not decode (`spdk_json_decode_object failed`).
const DECODE_FAILED: i32 = -32603;

#[derive(Debug, Default)]
struct State {
    locals: Vec<Local>,
    virtio: Vec<Virtio>,
    vhost: Vec<Vhost>,
    /// Names being created right now (bdevs, controllers).
    reserved: HashSet<String>,
    /// PCI functions being attached right now, by address.
    reserved_pci: HashSet<String>,
    hotplug: Option<u64>,
}

impl State {
    /// Every bdev, in creation order.
    fn bdevs(&self) -> Vec<(Bdev, Option<&Virtio>)> {
        let mut out: Vec<(Bdev, Option<&Virtio>)> =
            self.locals.iter().map(|l| (l.bdev.clone(), None)).collect();
        for v in &self.virtio {
            out.extend(v.bdevs().into_iter().map(|b| (b, Some(v))));
        }
        out
    }

    fn bdev(&self, name: &str) -> Option<Bdev> {
        self.bdevs()
            .into_iter()
            .map(|(b, _)| b)
            .find(|b| b.name() == name)
    }

    /// Whether a bdev or controller is called `name` (or is being created under it).
    fn name_taken(&self, name: &str) -> bool {
        self.reserved.contains(name)
            || self.bdev(name).is_some()
            || self.virtio.iter().any(|v| v.name == name)
    }

    /// Whether the PCI function `bdf` (the kernel's form) is attached or being attached.
    fn pci_taken(&self, bdf: &str) -> bool {
        self.reserved_pci.contains(bdf)
            || self
                .virtio
                .iter()
                .any(|v| v.pci && v.socket.as_os_str() == bdf)
    }

    /// Reserves `name` and the PCI function `bdf` for an attach.
    fn reserve_pci(&mut self, name: &str, bdf: &str) -> Result<(), RpcError> {
        if self.name_taken(name) {
            return Err(RpcError::new(
                EEXIST,
                format!("File exists: {name:?} is already used"),
            ));
        }
        if let Some(v) = self
            .virtio
            .iter()
            .find(|v| v.pci && v.socket.as_os_str() == bdf)
        {
            return Err(RpcError::new(
                EEXIST,
                format!("File exists: {bdf} is attached already, as {}", v.name),
            ));
        }
        if self.reserved_pci.contains(bdf) {
            return Err(RpcError::new(
                EEXIST,
                format!("File exists: {bdf} is being attached"),
            ));
        }
        self.reserved.insert(name.to_owned());
        self.reserved_pci.insert(bdf.to_owned());
        Ok(())
    }

    fn claimed_by(&self, bdev: &str) -> Option<&str> {
        self.vhost
            .iter()
            .find(|v| v.uses(bdev))
            .map(|v| v.name.as_str())
    }
}

/// The daemon: its state and the vhost socket directory.
#[derive(Debug)]
pub struct Daemon {
    state: Mutex<State>,
    vhost_dir: PathBuf,
    started: Instant,
    /// DMA memory is set up for PCI functions (`vbdev serve --pci`).
    pci: bool,
    /// Where PCI functions are found.
    sysfs: Sysfs,
    /// The vhost-user reply deadline of attaches that give no `timeout_ms`.
    vhost_timeout: Duration,
    /// The hotplug monitor, when enabled. Never locked by the monitor thread itself, so
    /// stopping it (a join) under this lock cannot deadlock.
    monitor: Mutex<Option<Monitor>>,
    /// This daemon, for the monitor thread.
    me: Weak<Daemon>,
    /// Set by [`Daemon::begin_shutdown`]: calls that wait stop waiting.
    stopping: std::sync::atomic::AtomicBool,
}

/// Every method, for `rpc_get_methods`.
const METHODS: &[&str] = &[
    "bdev_get_bdevs",
    "bdev_get_iostat",
    "bdev_malloc_create",
    "bdev_malloc_delete",
    "bdev_null_create",
    "bdev_null_delete",
    "bdev_set_options",
    "bdev_virtio_attach_controller",
    "bdev_virtio_blk_set_hotplug",
    "bdev_virtio_detach_controller",
    "bdev_virtio_scsi_get_devices",
    "bdev_wait_for_examine",
    "framework_get_config",
    "framework_get_subsystems",
    "load_config",
    "rpc_get_methods",
    "save_config",
    "spdk_get_version",
    "vhost_create_blk_controller",
    "vhost_create_scsi_controller",
    "vhost_delete_controller",
    "vhost_get_controllers",
    "vhost_scsi_controller_add_target",
    "vhost_scsi_controller_remove_target",
];

/// The subsystems `framework_get_subsystems` lists, in init order.
const SUBSYSTEMS: &[(&str, &[&str])] = &[
    ("bdev", &[]),
    ("vhost_blk", &["bdev"]),
    ("vhost_scsi", &["bdev"]),
];

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decodes `params` (absent: `{}`) into `T`; a failure is `code` with serde's message.
fn decode<T: DeserializeOwned>(
    method: &str,
    params: Option<Value>,
    code: i32,
) -> Result<T, RpcError> {
    let v = params.unwrap_or_else(|| json!({}));
    if !v.is_object() {
        return Err(RpcError::new(
            code,
            format!("{method}: params must be an object"),
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| RpcError::new(code, format!("{method}: invalid params: {e}")))
}

/// For methods without params: any params are an error (-32602, as SPDK).
/// Longest name of a bdev, virtio device or vhost controller, in bytes (a file name's
/// limit: a controller's name is its socket's file name).
const NAME_MAX: usize = 255;

/// Checks a name a call gives a bdev, a virtio device or a vhost controller: not empty
/// or blank, at most [`NAME_MAX`] bytes, no control characters (newline, NUL, ...) and
/// no `/`, so that it shows on one line in every listing and can be a file name.
fn check_name(method: &str, what: &str, name: &str) -> Result<(), RpcError> {
    let why = if name.trim().is_empty() {
        "is empty or blank"
    } else if name.len() > NAME_MAX {
        "is longer than 255 bytes"
    } else if name.chars().any(char::is_control) {
        "holds a control character"
    } else if name.contains('/') || name == "." || name == ".." {
        "is not a plain file name (a '/', or . or ..)"
    } else {
        return Ok(());
    };
    // The name itself, cut and escaped: it may be a megabyte of newlines.
    let shown: String = name.chars().take(40).collect();
    Err(RpcError::new(
        EINVAL,
        format!("{method}: {what} name {shown:?} {why}"),
    ))
}

fn no_params(method: &str, params: Option<Value>) -> Result<(), RpcError> {
    match params {
        None => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(RpcError::invalid_params(format!(
            "{method} requires no parameters"
        ))),
    }
}

fn not_found(what: &str, name: &str) -> RpcError {
    RpcError::new(ENODEV, format!("No such device: {what} {name:?}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethodsParams {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfigParams {
    name: String,
    #[serde(default)]
    with_batches: bool,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    subsystems: Vec<ConfigSubsystem>,
}

#[derive(Debug, Deserialize)]
struct ConfigSubsystem {
    subsystem: String,
    #[serde(default)]
    config: Option<Vec<Value>>,
}

impl Daemon {
    /// An empty daemon whose vhost controllers get their sockets in `vhost_dir`; `pci`:
    /// DMA memory is set up for PCI functions; `vhost_timeout`: the vhost-user reply
    /// deadline of attaches that name none. PCI functions are looked up under
    /// `$VBDEV_SYSFS_ROOT`, `/sys` without it.
    pub fn new(vhost_dir: PathBuf, pci: bool, vhost_timeout: Duration) -> Arc<Self> {
        let sysfs = std::env::var_os(SYSFS_ROOT_ENV)
            .map(Sysfs::new)
            .unwrap_or_default();
        Arc::new_cyclic(|me| Self {
            state: Mutex::new(State::default()),
            vhost_dir,
            started: Instant::now(),
            pci,
            sysfs,
            vhost_timeout,
            monitor: Mutex::new(None),
            me: me.clone(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The bdev `name`, local or of a virtio device, for a program that embeds the
    /// daemon: it opens channels on it as on any bdev. `None` when there is none.
    pub fn bdev(&self, name: &str) -> Option<Bdev> {
        lock(&self.state).bdev(name)
    }

    /// Replays an SPDK JSON config (`{"subsystems": [...]}`): every call of every
    /// subsystem in order (batches flattened). Stops at the first failing call.
    ///
    /// # Errors
    /// The failing call's method and error, or a config that is not that shape.
    pub fn load(&self, config: &Value) -> Result<usize, RpcError> {
        let file: ConfigFile = serde_json::from_value(config.clone()).map_err(|e| {
            RpcError::invalid_params(format!(
                "not an SPDK JSON config ({{\"subsystems\": [...]}}): {e}"
            ))
        })?;
        let mut n = 0;
        for sub in &file.subsystems {
            if !SUBSYSTEMS.iter().any(|(s, _)| *s == sub.subsystem) {
                // accel, iobuf, sock, scheduler...: nothing of ours; SPDK's own configs have them.
                tracing::info!(target: TARGET, subsystem = %sub.subsystem, "config: subsystem ignored");
                continue;
            }
            for entry in sub.config.iter().flatten() {
                let calls: Vec<&Value> = match entry {
                    Value::Array(batch) => batch.iter().collect(),
                    e => vec![e],
                };
                for call in calls {
                    let method = call.get("method").and_then(Value::as_str).ok_or_else(|| {
                        RpcError::invalid_params(format!(
                            "subsystem {}: a config entry without a method: {call}",
                            sub.subsystem
                        ))
                    })?;
                    let params = call.get("params").cloned();
                    if method == "load_config" || method == "save_config" {
                        return Err(RpcError::invalid_params(format!(
                            "{method} cannot appear inside a config"
                        )));
                    }
                    self.call(method, params)
                        .map_err(|e| RpcError::new(e.code, format!("{method}: {}", e.message)))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The whole configuration, as `save_config` writes it.
    pub fn save(&self) -> Value {
        let subsystems: Vec<Value> = SUBSYSTEMS
            .iter()
            .map(|(name, _)| json!({"subsystem": name, "config": self.subsystem_config(name)}))
            .collect();
        json!({ "subsystems": subsystems })
    }

    fn subsystem_config(&self, name: &str) -> Value {
        let s = lock(&self.state);
        match name {
            "bdev" => {
                let mut v = Vec::new();
                for l in &s.locals {
                    let method = if l.malloc {
                        "bdev_malloc_create"
                    } else {
                        "bdev_null_create"
                    };
                    v.push(json!({"method": method, "params": {
                        "name": l.bdev.name(),
                        "num_blocks": l.bdev.num_blocks(),
                        "block_size": l.bdev.block_size(),
                    }}));
                }
                for d in &s.virtio {
                    v.push(d.config());
                }
                if let Some(period) = s.hotplug {
                    v.push(json!({"method": "bdev_virtio_blk_set_hotplug",
                                  "params": {"enable": true, "period_us": period}}));
                }
                v.push(json!({"method": "bdev_wait_for_examine"}));
                Value::Array(v)
            }
            "vhost_blk" => Value::Array(
                s.vhost
                    .iter()
                    .filter(|v| matches!(v.kind, VhostKind::Blk { .. }))
                    .flat_map(Vhost::config)
                    .collect(),
            ),
            "vhost_scsi" => Value::Array(
                s.vhost
                    .iter()
                    .filter(|v| matches!(v.kind, VhostKind::Scsi { .. }))
                    .flat_map(Vhost::config)
                    .collect(),
            ),
            _ => Value::Null,
        }
    }

    /// Tells calls that wait (`bdev_get_bdevs` with a `timeout`) to stop waiting and
    /// answer now: the first step of a shutdown, before the RPC server waits for the
    /// calls in progress. [`Daemon::shutdown`] does it too.
    pub fn begin_shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`Daemon::begin_shutdown`] was called.
    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops everything: vhost controllers first (they use the bdevs), then the virtio
    /// devices (each detach stops its queues and reads back the ring state), then the
    /// local bdevs.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        // First, so that nothing is attached behind our back.
        if let Some(m) = self
            .monitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            m.stop();
        }
        let (mut vhost, virtio, locals) = {
            let mut s = lock(&self.state);
            (
                std::mem::take(&mut s.vhost),
                std::mem::take(&mut s.virtio),
                std::mem::take(&mut s.locals),
            )
        };
        for v in &mut vhost {
            tracing::info!(target: TARGET, ctrlr = %v.name, "stopping vhost controller");
            v.stop();
        }
        for d in &virtio {
            tracing::info!(target: TARGET, name = %d.name, "detaching virtio device");
            d.detach();
        }
        drop(locals);
    }

    fn get_config(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let p: GetConfigParams = decode("framework_get_config", params, INVALID_PARAMS)?;
        let _ = p.with_batches;
        if !SUBSYSTEMS.iter().any(|(s, _)| *s == p.name) {
            return Err(RpcError::invalid_params(format!(
                "framework_get_config: no subsystem {:?}",
                p.name
            )));
        }
        Ok(self.subsystem_config(&p.name))
    }
}

/// A call on `name` that failed for `e`: SPDK's -32602 with the whole error chain.
fn failed(method: &str, name: &str, e: &dyn std::error::Error) -> RpcError {
    RpcError::new(
        INVALID_PARAMS,
        format!("{method} {name}: {}", error_chain(e)),
    )
}

/// An error and its sources, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

impl Handler for Daemon {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match method {
            "bdev_virtio_attach_controller" => self.attach(params),
            "bdev_virtio_detach_controller" => self.detach(params),
            "bdev_virtio_scsi_get_devices" => self.scsi_devices(params),
            "bdev_virtio_blk_set_hotplug" => self.hotplug(params),
            "bdev_get_bdevs" => self.get_bdevs(params),
            "bdev_get_iostat" => self.iostat(params),
            "bdev_malloc_create" => self.create_local(true, params),
            "bdev_malloc_delete" => self.delete_local(true, params),
            "bdev_null_create" => self.create_local(false, params),
            "bdev_null_delete" => self.delete_local(false, params),
            // Accepted for SPDK configs; nothing to set or wait for here.
            "bdev_set_options" | "bdev_wait_for_examine" => Ok(json!(true)),
            "vhost_create_blk_controller" => self.create_blk_ctrlr(params),
            "vhost_create_scsi_controller" => self.create_scsi_ctrlr(params),
            "vhost_scsi_controller_add_target" => self.add_target(params),
            "vhost_scsi_controller_remove_target" => self.remove_target(params),
            "vhost_delete_controller" => self.delete_ctrlr(params),
            "vhost_get_controllers" => self.get_ctrlrs(params),
            "rpc_get_methods" => {
                let p: GetMethodsParams = decode(method, params, INVALID_PARAMS)?;
                let _ = (p.current, p.include_aliases);
                Ok(json!(METHODS))
            }
            "spdk_get_version" => {
                no_params(method, params)?;
                let v = env!("CARGO_PKG_VERSION");
                let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
                let (major, minor, patch) = (
                    it.next().unwrap_or(0),
                    it.next().unwrap_or(0),
                    it.next().unwrap_or(0),
                );
                Ok(json!({"version": format!("vbdev {v}"),
                          "fields": {"major": major, "minor": minor, "patch": patch, "suffix": ""}}))
            }
            "framework_get_subsystems" => {
                no_params(method, params)?;
                Ok(Value::Array(
                    SUBSYSTEMS
                        .iter()
                        .map(|(s, d)| json!({"subsystem": s, "depends_on": d}))
                        .collect(),
                ))
            }
            "framework_get_config" => self.get_config(params),
            "save_config" => {
                no_params(method, params)?;
                Ok(self.save())
            }
            "load_config" => {
                let cfg = params.ok_or_else(|| {
                    RpcError::invalid_params("load_config: params must be the config object")
                })?;
                self.load(&cfg).map(|n| json!(n))
            }
            m => Err(RpcError::method_not_found(m)),
        }
    }
}

/// Reads a config file: SPDK JSON.
///
/// # Errors
/// A message naming the file.
pub fn read_json(path: &Path) -> anyhow::Result<Value> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}
