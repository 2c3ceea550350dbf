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
use vbdev_pci::sysfs::{Bdf, DeviceType, PciFunction, Sysfs};
use vbdev_target::{BlkTargetConfig, ScsiHandle, ScsiTargetConfig, TargetHandle};
use vbdev_virtio::DeviceType as VirtioType;
use vbdev_virtio::transport::vhost_user::VhostUserOptions;

use super::rpc::{Handler, RpcError};

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
/// JSON-RPC invalid params, SPDK's usual code for a failed call.
const INVALID_PARAMS: i32 = -32602;
/// SPDK's code for params that do not decode (`spdk_json_decode_object failed`).
const DECODE_FAILED: i32 = -32603;

/// A local bdev (`bdev_malloc_create`, `bdev_null_create`).
#[derive(Debug)]
struct Local {
    malloc: bool,
    bdev: Bdev,
}

/// A virtio device attached by `bdev_virtio_attach_controller`.
#[derive(Debug)]
struct Virtio {
    name: String,
    /// The vhost-user socket, or the PCI address with `pci`.
    socket: PathBuf,
    /// Reached through virtio-pci (VFIO) rather than vhost-user.
    pci: bool,
    vq_count: u16,
    vq_size: u16,
    /// The reply deadline asked for in the attach (`timeout_ms`), kept by `save_config`.
    timeout_ms: Option<u64>,
    dev: VirtioDev,
}

impl Virtio {
    fn bdevs(&self) -> Vec<Bdev> {
        self.dev.bdevs()
    }

    fn detach(&self) {
        self.dev.detach();
    }

    fn is_scsi(&self) -> bool {
        matches!(self.dev, VirtioDev::Scsi(_))
    }

    /// The device is gone (its transport died).
    fn is_removed(&self) -> bool {
        match &self.dev {
            VirtioDev::Blk(b) => b.is_removed(),
            VirtioDev::Scsi(c) => c.is_removed(),
        }
    }

    /// The `bdev_virtio_attach_controller` call that recreates it.
    fn config(&self) -> Value {
        if self.pci {
            // SPDK: PCI takes no queue parameters.
            return json!({"method": "bdev_virtio_attach_controller", "params": {
                "name": self.name,
                "dev_type": if self.is_scsi() { "scsi" } else { "blk" },
                "trtype": "pci",
                "traddr": self.socket,
            }});
        }
        let mut call = json!({"method": "bdev_virtio_attach_controller", "params": {
            "name": self.name,
            "dev_type": if self.is_scsi() { "scsi" } else { "blk" },
            "trtype": "user",
            "traddr": self.socket,
            "vq_count": self.vq_count,
            "vq_size": self.vq_size,
        }});
        if let Some(ms) = self.timeout_ms {
            call["params"]["timeout_ms"] = json!(ms);
        }
        call
    }

    /// `driver_specific.virtio` of its bdevs, and `bdev_virtio_scsi_get_devices`.
    fn virtio_json(&self) -> Value {
        // SPDK counts the scsi controller's two fixed queues in vq_count here.
        let vq_count = if self.is_scsi() {
            u32::from(self.vq_count) + 2
        } else {
            u32::from(self.vq_count)
        };
        if self.pci {
            return json!({"vq_count": vq_count, "vq_size": self.vq_size,
                          "type": "pci-modern", "pci_address": self.socket});
        }
        json!({"vq_count": vq_count, "vq_size": self.vq_size, "type": "user",
               "socket": self.socket})
    }
}

/// A vhost controller: an embedded target created by RPC.
#[derive(Debug)]
struct Vhost {
    name: String,
    socket: PathBuf,
    kind: VhostKind,
}

#[derive(Debug)]
enum VhostKind {
    Blk {
        bdev: String,
        readonly: bool,
        handle: TargetHandle,
    },
    Scsi {
        handle: ScsiHandle,
        /// SCSI target id → the bdev served as its LUN 0.
        targets: BTreeMap<u8, String>,
    },
}

impl Vhost {
    fn uses(&self, bdev: &str) -> bool {
        match &self.kind {
            VhostKind::Blk { bdev: b, .. } => b == bdev,
            VhostKind::Scsi { targets, .. } => targets.values().any(|b| b == bdev),
        }
    }

    fn stop(&mut self) {
        match &mut self.kind {
            VhostKind::Blk { handle, .. } => handle.stop(),
            VhostKind::Scsi { handle, .. } => handle.stop(),
        }
    }

    fn config(&self) -> Vec<Value> {
        match &self.kind {
            VhostKind::Blk { bdev, readonly, .. } => vec![json!({
                "method": "vhost_create_blk_controller",
                "params": {"ctrlr": self.name, "dev_name": bdev, "readonly": readonly}
            })],
            VhostKind::Scsi { targets, .. } => {
                let mut v = vec![json!({
                    "method": "vhost_create_scsi_controller",
                    "params": {"ctrlr": self.name}
                })];
                for (id, bdev) in targets {
                    v.push(json!({
                        "method": "vhost_scsi_controller_add_target",
                        "params": {"ctrlr": self.name, "scsi_target_num": id, "bdev_name": bdev}
                    }));
                }
                v
            }
        }
    }

    fn json(&self) -> Value {
        let backend = match &self.kind {
            VhostKind::Blk { bdev, readonly, .. } => json!({"block": {
                "readonly": readonly, "bdev": bdev, "transport": "vhost_user_blk"}}),
            VhostKind::Scsi { targets, .. } => {
                let t: Vec<Value> = targets
                    .iter()
                    .map(|(id, bdev)| {
                        json!({"scsi_dev_num": id, "id": id,
                               "target_name": format!("Target {id}"),
                               "luns": [{"id": 0, "bdev_name": bdev}]})
                    })
                    .collect();
                json!({"scsi": t})
            }
        };
        json!({"ctrlr": self.name, "cpumask": "0x1", "delay_base_us": 0,
               "iops_threshold": 60000, "socket": self.socket,
               "sessions": [], "backend_specific": backend})
    }
}

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
}

/// A function the hotplug monitor failed to attach.
#[derive(Debug)]
struct AttachFailure {
    /// Its driver then; another one makes it new.
    driver: Option<String>,
    /// The wait before the next try.
    backoff: Duration,
    retry_at: Instant,
}

/// The hotplug monitor thread and its stop flag.
#[derive(Debug)]
struct Monitor {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl Monitor {
    /// Tells the thread to stop and waits for it (at most one attach or detach long).
    fn stop(self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if self.thread.join().is_err() {
            tracing::error!(target: TARGET, "the hotplug monitor panicked");
        }
    }
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
struct AttachParams {
    name: String,
    trtype: String,
    traddr: String,
    dev_type: String,
    #[serde(default)]
    vq_count: Option<u32>,
    #[serde(default)]
    vq_size: Option<u32>,
    /// vbdev's extension: the vhost-user reply deadline in milliseconds (default: the
    /// daemon's `--timeout-ms`).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A validated `bdev_virtio_attach_controller`.
#[derive(Debug)]
struct AttachSpec {
    name: String,
    /// Socket path, or the PCI address in the kernel's form.
    traddr: String,
    pci: bool,
    scsi: bool,
    vq_count: u16,
    vq_size: u16,
    /// `timeout_ms` as asked for; the daemon's default without it.
    timeout_ms: Option<u64>,
}

/// A function `[VirtioPci] Enable` attaches: modern virtio-blk or virtio-scsi, bound to
/// a user-space driver (SPDK took 0x1042 and 0x1048 only).
fn attachable(f: &PciFunction) -> bool {
    !f.transitional
        && matches!(f.device_type, DeviceType::Blk | DeviceType::Scsi)
        && f.is_user_space_bound()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevsParams {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HotplugParams {
    enable: bool,
    #[serde(default)]
    period_us: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskParams {
    #[serde(default)]
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
    #[serde(default)]
    uuid: Option<String>,
    // Sent by SPDK's client (some always, as false); accepted when they ask for nothing
    // we lack: no metadata, no protection information.
    #[serde(default)]
    md_size: Option<u32>,
    #[serde(default)]
    md_interleave: bool,
    #[serde(default)]
    dif_type: Option<u32>,
    #[serde(default)]
    dif_is_head_of_md: bool,
    #[serde(default)]
    dif_pi_format: Option<u32>,
    // Hints with no effect here.
    #[serde(default)]
    physical_block_size: Option<u32>,
    #[serde(default)]
    optimal_io_boundary: Option<u32>,
    #[serde(default)]
    numa_id: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlkCtrlParams {
    ctrlr: String,
    dev_name: String,
    #[serde(default)]
    cpumask: Option<String>,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    packed_ring: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScsiCtrlParams {
    ctrlr: String,
    #[serde(default)]
    cpumask: Option<String>,
    #[serde(default)]
    delay: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTargetParams {
    ctrlr: String,
    scsi_target_num: i32,
    bdev_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveTargetParams {
    ctrlr: String,
    scsi_target_num: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CtrlrParams {
    ctrlr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptCtrlrParams {
    #[serde(default)]
    name: Option<String>,
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
        })
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

    /// Stops everything: vhost controllers first (they use the bdevs), then the virtio
    /// devices (each detach stops its queues and reads back the ring state), then the
    /// local bdevs.
    pub fn shutdown(&self) {
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

    /// Reserves `name` for a creation; errors when a bdev or controller has it.
    fn reserve(&self, name: &str) -> Result<(), RpcError> {
        let mut s = lock(&self.state);
        if s.name_taken(name) {
            return Err(RpcError::new(
                EEXIST,
                format!("File exists: {name:?} is already used"),
            ));
        }
        s.reserved.insert(name.to_owned());
        Ok(())
    }

    fn attach(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let p: AttachParams = decode(ATTACH, params, DECODE_FAILED)?;
        let mut traddr = p.traddr.clone();
        match p.trtype.as_str() {
            "user" => {}
            "pci" => {
                self.check_pci(&p.name)?;
                // SPDK: queue parameters are for the user transport only.
                if p.vq_count.unwrap_or(0) != 0 || p.vq_size.unwrap_or(0) != 0 {
                    return Err(RpcError::new(
                        EINVAL,
                        "vq_count or vq_size is not allowed for PCI transport type.",
                    ));
                }
                // SPDK's message; the kernel's form from here on (`00:02.0` too).
                let bdf: Bdf = p.traddr.parse().map_err(|_| {
                    RpcError::new(EINVAL, format!("Invalid PCI address '{}'", p.traddr))
                })?;
                traddr = bdf.to_string();
            }
            "vfio-user" => {
                return Err(RpcError::new(
                    ENOTSUP,
                    format!("{ATTACH} {}: trtype \"vfio-user\" is not supported", p.name),
                ));
            }
            t => {
                return Err(RpcError::new(
                    DECODE_FAILED,
                    format!(
                        "{ATTACH}: trtype {t:?} is not one of \"user\", \"pci\", \"vfio-user\""
                    ),
                ));
            }
        }
        let scsi = match p.dev_type.as_str() {
            "blk" => false,
            "scsi" => true,
            t => {
                return Err(RpcError::new(
                    DECODE_FAILED,
                    format!("{ATTACH}: dev_type {t:?} is not \"blk\" or \"scsi\""),
                ));
            }
        };
        // SPDK: zero or missing means the default.
        let vq_count = match p.vq_count.unwrap_or(0) {
            0 => 1,
            n => u16::try_from(n).map_err(|_| {
                RpcError::new(
                    EINVAL,
                    format!("{ATTACH} {}: vq_count {n} is too large", p.name),
                )
            })?,
        };
        let vq_size = match p.vq_size.unwrap_or(0) {
            0 => 512,
            n if n.is_power_of_two() && n <= 32768 => n as u16,
            n => {
                return Err(RpcError::new(
                    EINVAL,
                    format!(
                        "{ATTACH} {}: vq_size {n} is not a power of two from 1 to 32768",
                        p.name
                    ),
                ));
            }
        };
        if p.name.is_empty() {
            return Err(RpcError::new(EINVAL, format!("{ATTACH}: name is empty")));
        }
        let timeout_ms = match p.timeout_ms {
            Some(0) => {
                return Err(RpcError::new(
                    EINVAL,
                    format!("{ATTACH} {}: timeout_ms must be positive", p.name),
                ));
            }
            t => t,
        };
        let pci = p.trtype == "pci";
        // PCI: one request queue of PCI_QUEUE_SIZE (QEMU's virtio-pci devices take 256).
        let (vq_count, vq_size) = if pci {
            (1, PCI_QUEUE_SIZE)
        } else {
            (vq_count, vq_size)
        };
        let spec = AttachSpec {
            name: p.name,
            traddr,
            pci,
            scsi,
            vq_count,
            vq_size,
            timeout_ms: if pci { None } else { timeout_ms },
        };
        if pci {
            let mut s = lock(&self.state);
            s.reserve_pci(&spec.name, &spec.traddr)?;
        } else {
            self.reserve(&spec.name)?;
        }
        self.attach_reserved(spec).map(|names| json!(names))
    }

    /// PCI attaches need the DMA memory set up for them (`vbdev serve --pci`).
    fn check_pci(&self, name: &str) -> Result<(), RpcError> {
        if self.pci {
            return Ok(());
        }
        Err(RpcError::new(
            ENOTSUP,
            format!(
                "{ATTACH} {name}: trtype \"pci\" needs the daemon started with --pci (its DMA memory is then pinned and placed for the IOMMU)"
            ),
        ))
    }

    /// Attaches what `spec` says, its name (and PCI address) reserved by the caller;
    /// releases them. Returns the names of the bdevs created.
    fn attach_reserved(&self, spec: AttachSpec) -> Result<Vec<String>, RpcError> {
        let AttachSpec {
            name,
            traddr,
            pci,
            scsi,
            vq_count,
            vq_size,
            timeout_ms,
        } = spec;
        let socket = PathBuf::from(&traddr);
        // One description of where the device is and one of its queues (SPDK: PCI takes
        // no queue count).
        let target = if pci {
            Target::Pci {
                bdf: traddr.clone(),
                options: PciOptions::default(),
            }
        } else {
            Target::VhostUser {
                path: socket.clone(),
                options: VhostUserOptions {
                    timeout: timeout_ms.map_or(self.vhost_timeout, Duration::from_millis),
                },
            }
        };
        let queues = QueueOptions {
            num_queues: if pci { 1 } else { vq_count },
            queue_size: vq_size,
            ..QueueOptions::default()
        };
        let device = if scsi {
            VirtioType::Scsi
        } else {
            VirtioType::Blk
        };
        let dev = vbdev_bdev::attach::attach(&name, &target, device, &queues);
        let dev = match dev {
            Ok(d) => d,
            Err(e) => {
                let mut s = lock(&self.state);
                s.reserved.remove(&name);
                s.reserved_pci.remove(&traddr);
                drop(s);
                tracing::warn!(target: TARGET, name = %name, error = %format!("{e:#}"), "attach failed");
                return Err(failed(ATTACH, &name, &e));
            }
        };
        let v = Virtio {
            name: name.clone(),
            socket,
            pci,
            vq_count,
            vq_size,
            timeout_ms,
            dev,
        };
        let names: Vec<String> = v.bdevs().iter().map(|b| b.name().to_owned()).collect();
        let mut s = lock(&self.state);
        s.reserved.remove(&name);
        s.reserved_pci.remove(&traddr);
        // A LUN name may collide with a bdev created meanwhile (a malloc called
        // VirtioScsi0t0): refuse the whole device rather than shadow one.
        if let Some(b) = v.bdevs().iter().find(|b| s.bdev(b.name()).is_some()) {
            let msg = format!("{ATTACH} {name}: bdev name {:?} is already used", b.name());
            drop(s);
            v.detach();
            return Err(RpcError::new(EEXIST, msg));
        }
        tracing::info!(target: TARGET, name = %name, bdevs = names.len(), "virtio device attached");
        s.virtio.push(v);
        Ok(names)
    }

    /// `[VirtioPci] Enable Yes`: attaches every modern virtio-blk and virtio-scsi
    /// function bound to `vfio-pci` or `uio_pci_generic` and not attached yet, as
    /// `VirtioBlk<N>` / `VirtioScsi<N>` (the first free N). Returns the device names.
    ///
    /// # Errors
    /// Sysfs cannot be read, or a function fails to attach (the ones attached before it
    /// stay).
    pub fn attach_all_pci(&self) -> Result<Vec<String>, RpcError> {
        self.check_pci("VirtioPci")?;
        let fns = self.sysfs.virtio_functions().map_err(|e| {
            RpcError::new(
                INVALID_PARAMS,
                format!("[VirtioPci] Enable: {}", error_chain(&e)),
            )
        })?;
        let mut names = Vec::new();
        for f in fns.iter().filter(|f| attachable(f)) {
            let scsi = f.device_type == DeviceType::Scsi;
            if let Some(name) = self.attach_auto(f.bdf, scsi)? {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Attaches the PCI function `bdf` under the first free `VirtioBlk<N>` or
    /// `VirtioScsi<N>`; `None` when it is attached (or being attached) already.
    fn attach_auto(&self, bdf: Bdf, scsi: bool) -> Result<Option<String>, RpcError> {
        let traddr = bdf.to_string();
        let prefix = if scsi { "VirtioScsi" } else { "VirtioBlk" };
        let name = {
            let mut s = lock(&self.state);
            if s.pci_taken(&traddr) {
                return Ok(None);
            }
            let name = (0u32..)
                .map(|i| format!("{prefix}{i}"))
                .find(|n| !s.name_taken(n))
                .unwrap_or_default();
            s.reserve_pci(&name, &traddr)?;
            name
        };
        self.attach_reserved(AttachSpec {
            name: name.clone(),
            traddr,
            pci: true,
            scsi,
            vq_count: 1,
            vq_size: PCI_QUEUE_SIZE,
            timeout_ms: None,
        })?;
        Ok(Some(name))
    }

    fn detach(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "bdev_virtio_detach_controller";
        let p: NameParams = decode(M, params, DECODE_FAILED)?;
        let v = {
            let mut s = lock(&self.state);
            let i = s
                .virtio
                .iter()
                .position(|v| v.name == p.name)
                .ok_or_else(|| not_found("virtio device", &p.name))?;
            if let Some(b) = s.virtio[i].bdevs().iter().find_map(|b| {
                s.claimed_by(b.name())
                    .map(|c| (b.name().to_owned(), c.to_owned()))
            }) {
                return Err(RpcError::new(
                    EBUSY,
                    format!(
                        "{M} {}: bdev {} is used by vhost controller {}",
                        p.name, b.0, b.1
                    ),
                ));
            }
            s.virtio.remove(i)
        };
        v.detach();
        tracing::info!(target: TARGET, name = %p.name, "virtio device detached");
        Ok(json!(true))
    }

    fn scsi_devices(&self, params: Option<Value>) -> Result<Value, RpcError> {
        no_params("bdev_virtio_scsi_get_devices", params)?;
        let s = lock(&self.state);
        Ok(Value::Array(
            s.virtio
                .iter()
                .filter(|v| v.is_scsi())
                .map(|v| json!({"name": v.name, "virtio": v.virtio_json()}))
                .collect(),
        ))
    }

    fn get_bdevs(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "bdev_get_bdevs";
        let p: GetBdevsParams = decode(M, params, INVALID_PARAMS)?;
        let deadline = Instant::now() + Duration::from_millis(p.timeout.unwrap_or(0));
        loop {
            {
                let s = lock(&self.state);
                let all = s.bdevs();
                let out: Vec<Value> = all
                    .iter()
                    .filter(|(b, _)| p.name.as_deref().is_none_or(|n| n == b.name()))
                    .map(|(b, v)| bdev_json(b, *v, s.claimed_by(b.name()).is_some()))
                    .collect();
                match &p.name {
                    None => return Ok(Value::Array(out)),
                    Some(_) if !out.is_empty() => return Ok(Value::Array(out)),
                    Some(n) if Instant::now() >= deadline => return Err(not_found("bdev", n)),
                    Some(_) => {}
                }
            }
            // Waiting for a bdev to appear (a scsi hot-add): polled, as SPDK does.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn iostat(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "bdev_get_iostat";
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            per_channel: Option<bool>,
        }
        let p: P = decode(M, params, INVALID_PARAMS)?;
        if p.per_channel == Some(true) {
            return Err(RpcError::new(
                ENOTSUP,
                format!("{M}: per_channel is not supported"),
            ));
        }
        let s = lock(&self.state);
        let bdevs: Vec<Value> = s
            .bdevs()
            .iter()
            .filter(|(b, _)| p.name.as_deref().is_none_or(|n| n == b.name()))
            .map(|(b, _)| iostat_json(b))
            .collect();
        if let (Some(n), true) = (&p.name, bdevs.is_empty()) {
            return Err(not_found("bdev", n));
        }
        let ticks = self.started.elapsed().as_nanos() as u64;
        Ok(json!({"tick_rate": 1_000_000_000u64, "ticks": ticks, "bdevs": bdevs}))
    }

    fn create_local(&self, malloc: bool, params: Option<Value>) -> Result<Value, RpcError> {
        let m = if malloc {
            "bdev_malloc_create"
        } else {
            "bdev_null_create"
        };
        let p: DiskParams = decode(m, params, INVALID_PARAMS)?;
        if p.uuid.is_some() {
            return Err(RpcError::new(
                ENOTSUP,
                format!("{m}: uuid is not supported"),
            ));
        }
        if p.md_size.unwrap_or(0) != 0
            || p.md_interleave
            || p.dif_type.unwrap_or(0) != 0
            || p.dif_is_head_of_md
            || p.dif_pi_format.unwrap_or(0) != 0
        {
            return Err(RpcError::new(
                ENOTSUP,
                format!("{m}: metadata and protection information are not supported"),
            ));
        }
        // Hints with no effect on a RAM or null disk.
        let _ = (p.physical_block_size, p.optimal_io_boundary, p.numa_id);
        let name = match p.name {
            Some(n) => n,
            None if malloc => {
                // SPDK's default names: Malloc0, Malloc1, ... (the first free one).
                let s = lock(&self.state);
                (0..)
                    .map(|i| format!("Malloc{i}"))
                    .find(|n| !s.name_taken(n))
                    .unwrap_or_default()
            }
            None => return Err(RpcError::invalid_params(format!("{m}: name is required"))),
        };
        self.reserve(&name)?;
        let made = if malloc {
            malloc::create(&name, p.num_blocks, p.block_size)
        } else {
            null::create(&name, p.num_blocks, p.block_size)
        };
        let mut s = lock(&self.state);
        s.reserved.remove(&name);
        let bdev =
            made.map_err(|e| RpcError::new(EINVAL, format!("{m} {name}: {}", error_chain(&e))))?;
        s.locals.push(Local { malloc, bdev });
        Ok(json!(name))
    }

    fn delete_local(&self, malloc: bool, params: Option<Value>) -> Result<Value, RpcError> {
        let m = if malloc {
            "bdev_malloc_delete"
        } else {
            "bdev_null_delete"
        };
        let p: NameParams = decode(m, params, INVALID_PARAMS)?;
        let mut s = lock(&self.state);
        let i = s
            .locals
            .iter()
            .position(|l| l.malloc == malloc && l.bdev.name() == p.name)
            .ok_or_else(|| not_found("bdev", &p.name))?;
        if let Some(c) = s.claimed_by(&p.name) {
            return Err(RpcError::new(
                EBUSY,
                format!("{m} {}: used by vhost controller {c}", p.name),
            ));
        }
        let l = s.locals.remove(i);
        drop(s);
        l.bdev.detach();
        Ok(json!(true))
    }

    fn hotplug(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "bdev_virtio_blk_set_hotplug";
        let p: HotplugParams = decode(M, params, INVALID_PARAMS)?;
        // SPDK: 0 means 100 ms, capped at 10 s.
        let period = match p.period_us.unwrap_or(0) {
            0 => HOTPLUG_PERIOD_DEFAULT_US,
            n => n.min(HOTPLUG_PERIOD_MAX_US),
        };
        if p.enable && !self.pci {
            return Err(RpcError::new(
                ENOTSUP,
                format!(
                    "{M}: the hotplug monitor attaches PCI functions: it needs the daemon started with --pci"
                ),
            ));
        }
        // Held throughout, so that two calls cannot both start a thread; the thread
        // never takes it.
        let mut monitor = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = monitor.take() {
            m.stop();
        }
        if p.enable {
            let stop = Arc::new((Mutex::new(false), Condvar::new()));
            let me = self.me.clone();
            let flag = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name("vbdev-hotplug".into())
                .spawn(move || monitor_loop(&me, &flag, Duration::from_micros(period)))
                .map_err(|e| {
                    RpcError::invalid_params(format!("{M}: cannot start the monitor thread: {e}"))
                })?;
            *monitor = Some(Monitor { stop, thread });
            tracing::info!(target: TARGET, period_us = period, "hotplug monitor started");
        } else {
            tracing::info!(target: TARGET, "hotplug monitor stopped");
        }
        lock(&self.state).hotplug = p.enable.then_some(period);
        Ok(json!(true))
    }

    /// One pass of the hotplug monitor: detach the PCI virtio-blk devices whose function
    /// is gone or unbound, then attach the new ones. `failed` holds the functions whose
    /// attach failed: each is tried again after a backoff that doubles up to
    /// [`HOTPLUG_PERIOD_MAX_US`] (a `/dev/vfio` node may appear a moment after the bind),
    /// and forgotten when it goes or changes driver.
    fn hotplug_poll(&self, period: Duration, failed: &mut HashMap<Bdf, AttachFailure>) {
        let fns = match self.sysfs.virtio_functions() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(target: TARGET, error = %error_chain(&e), "hotplug: cannot list PCI functions");
                return;
            }
        };
        // Still there for an attached device: present and bound to a user-space driver
        // (whatever its ID: an RPC may have attached a transitional one).
        let bound: HashSet<String> = fns
            .iter()
            .filter(|f| f.is_user_space_bound())
            .map(|f| f.bdf.to_string())
            .collect();
        // To attach: the modern virtio-blk ones among them.
        let usable: Vec<&PciFunction> = fns
            .iter()
            .filter(|f| f.device_type == DeviceType::Blk && attachable(f))
            .collect();
        let gone: Vec<Virtio> = {
            let mut s = lock(&self.state);
            // Gone: a blk function no longer bound to a user-space driver, or any PCI
            // device whose transport died (VFIO asked for it back, its BARs faulted):
            // detaching closes the device so that the kernel can finish the removal.
            let (gone, kept) = std::mem::take(&mut s.virtio).into_iter().partition(|v| {
                v.pci
                    && ((!v.is_scsi() && !v.socket.to_str().is_some_and(|b| bound.contains(b)))
                        || v.is_removed())
            });
            s.virtio = kept;
            for v in &gone {
                for b in v.bdevs() {
                    if let Some(c) = s.claimed_by(b.name()) {
                        tracing::warn!(target: TARGET, bdev = %b.name(), ctrlr = %c, "hot-removed bdev was used by a vhost controller");
                    }
                }
            }
            gone
        };
        for v in gone {
            tracing::info!(target: TARGET, name = %v.name, bdf = %v.socket.display(), "hotplug: PCI function removed; detaching");
            v.detach();
        }
        failed.retain(|bdf, fail| fns.iter().any(|f| f.bdf == *bdf && f.driver == fail.driver));
        let now = Instant::now();
        for f in usable {
            if failed.get(&f.bdf).is_some_and(|fail| now < fail.retry_at) {
                continue;
            }
            match self.attach_auto(f.bdf, false) {
                Ok(Some(name)) => {
                    failed.remove(&f.bdf);
                    tracing::info!(target: TARGET, name = %name, bdf = %f.bdf, "hotplug: PCI function attached");
                }
                Ok(None) => {}
                Err(e) => {
                    let backoff = match failed.get(&f.bdf) {
                        Some(fail) => {
                            tracing::debug!(target: TARGET, bdf = %f.bdf, error = %e.message, "hotplug: attach failed again");
                            (fail.backoff * 2).min(Duration::from_micros(HOTPLUG_PERIOD_MAX_US))
                        }
                        None => {
                            tracing::warn!(target: TARGET, bdf = %f.bdf, error = %e.message, "hotplug: attach failed; retrying with a backoff");
                            period
                        }
                    };
                    failed.insert(
                        f.bdf,
                        AttachFailure {
                            driver: f.driver.clone(),
                            backoff,
                            retry_at: Instant::now() + backoff,
                        },
                    );
                }
            }
        }
    }

    fn socket_for(&self, ctrlr: &str) -> Result<PathBuf, RpcError> {
        if ctrlr.is_empty() || ctrlr.contains('/') || ctrlr == "." || ctrlr == ".." {
            return Err(RpcError::new(
                EINVAL,
                format!("controller name {ctrlr:?} is not a file name"),
            ));
        }
        Ok(self.vhost_dir.join(ctrlr))
    }

    fn reserve_ctrlr(&self, ctrlr: &str) -> Result<(), RpcError> {
        let mut s = lock(&self.state);
        if s.vhost.iter().any(|v| v.name == ctrlr) || s.reserved.contains(ctrlr) {
            return Err(RpcError::new(
                EEXIST,
                format!("File exists: vhost controller {ctrlr:?} already exists"),
            ));
        }
        s.reserved.insert(ctrlr.to_owned());
        Ok(())
    }

    fn create_blk_ctrlr(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "vhost_create_blk_controller";
        let p: BlkCtrlParams = decode(M, params, INVALID_PARAMS)?;
        let _ = p.cpumask;
        if p.packed_ring {
            return Err(RpcError::new(
                ENOTSUP,
                format!("{M}: packed_ring is not supported"),
            ));
        }
        let socket = self.socket_for(&p.ctrlr)?;
        let bdev = lock(&self.state)
            .bdev(&p.dev_name)
            .ok_or_else(|| not_found("bdev", &p.dev_name))?;
        self.reserve_ctrlr(&p.ctrlr)?;
        let mut cfg = BlkTargetConfig::new(&socket);
        cfg.read_only = p.readonly;
        let started = vbdev_target::start_blk(bdev, cfg);
        self.add_ctrlr(M, p.ctrlr, socket, started, |handle| VhostKind::Blk {
            bdev: p.dev_name,
            readonly: p.readonly,
            handle,
        })
    }

    fn create_scsi_ctrlr(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "vhost_create_scsi_controller";
        let p: ScsiCtrlParams = decode(M, params, INVALID_PARAMS)?;
        let _ = (p.cpumask, p.delay);
        let socket = self.socket_for(&p.ctrlr)?;
        self.reserve_ctrlr(&p.ctrlr)?;
        let started = vbdev_target::start_scsi(ScsiTargetConfig::new(&socket), Vec::new());
        self.add_ctrlr(M, p.ctrlr, socket, started, |handle| VhostKind::Scsi {
            handle,
            targets: BTreeMap::new(),
        })
    }

    /// Puts a started vhost controller into the state, or says why it did not start.
    fn add_ctrlr<H, E: std::error::Error>(
        &self,
        method: &str,
        name: String,
        socket: PathBuf,
        started: Result<H, E>,
        kind: impl FnOnce(H) -> VhostKind,
    ) -> Result<Value, RpcError> {
        let mut s = lock(&self.state);
        s.reserved.remove(&name);
        let handle = started.map_err(|e| failed(method, &name, &e))?;
        s.vhost.push(Vhost {
            name,
            socket,
            kind: kind(handle),
        });
        Ok(json!(true))
    }

    fn add_target(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "vhost_scsi_controller_add_target";
        let p: AddTargetParams = decode(M, params, INVALID_PARAMS)?;
        let mut s = lock(&self.state);
        let bdev = s
            .bdev(&p.bdev_name)
            .ok_or_else(|| not_found("bdev", &p.bdev_name))?;
        let (handle, targets) = scsi_ctrlr(&mut s, M, &p.ctrlr)?;
        // SPDK: -1 takes the first free target id; there are 8 (0-7).
        let id = if p.scsi_target_num < 0 {
            (0u8..8).find(|i| !targets.contains_key(i)).ok_or_else(|| {
                RpcError::new(
                    -28,
                    format!("{M} {}: every SCSI target id 0-7 is taken", p.ctrlr),
                )
            })?
        } else {
            u8::try_from(p.scsi_target_num)
                .ok()
                .filter(|i| *i < 8)
                .ok_or_else(|| {
                    RpcError::new(
                        EINVAL,
                        format!(
                            "{M}: scsi_target_num {} is not from 0 to 7",
                            p.scsi_target_num
                        ),
                    )
                })?
        };
        if targets.contains_key(&id) {
            return Err(RpcError::new(
                EEXIST,
                format!("{M} {}: SCSI target {id} exists", p.ctrlr),
            ));
        }
        handle
            .add_lun(id, 0, &bdev)
            .map_err(|e| failed(M, &p.ctrlr, &e))?;
        targets.insert(id, p.bdev_name);
        Ok(json!(id))
    }

    fn remove_target(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "vhost_scsi_controller_remove_target";
        let p: RemoveTargetParams = decode(M, params, INVALID_PARAMS)?;
        let mut s = lock(&self.state);
        let (handle, targets) = scsi_ctrlr(&mut s, M, &p.ctrlr)?;
        let id = u8::try_from(p.scsi_target_num)
            .ok()
            .filter(|i| targets.contains_key(i))
            .ok_or_else(|| not_found("SCSI target", &p.scsi_target_num.to_string()))?;
        handle
            .remove_lun(id, 0)
            .map_err(|e| failed(M, &p.ctrlr, &e))?;
        targets.remove(&id);
        Ok(json!(true))
    }

    fn delete_ctrlr(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let p: CtrlrParams = decode("vhost_delete_controller", params, INVALID_PARAMS)?;
        let mut v = {
            let mut s = lock(&self.state);
            let i = s
                .vhost
                .iter()
                .position(|v| v.name == p.ctrlr)
                .ok_or_else(|| not_found("vhost controller", &p.ctrlr))?;
            s.vhost.remove(i)
        };
        v.stop();
        Ok(json!(true))
    }

    fn get_ctrlrs(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let p: OptCtrlrParams = decode("vhost_get_controllers", params, INVALID_PARAMS)?;
        let s = lock(&self.state);
        let out: Vec<Value> = s
            .vhost
            .iter()
            .filter(|v| p.name.as_deref().is_none_or(|n| n == v.name))
            .map(Vhost::json)
            .collect();
        if let (Some(n), true) = (&p.name, out.is_empty()) {
            return Err(not_found("vhost controller", n));
        }
        Ok(Value::Array(out))
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

/// The hotplug monitor thread: [`Daemon::hotplug_poll`] every `period` until `stop` is
/// set or the daemon is gone.
fn monitor_loop(daemon: &Weak<Daemon>, stop: &(Mutex<bool>, Condvar), period: Duration) {
    let mut failed = HashMap::new();
    let (flag, cv) = stop;
    loop {
        match daemon.upgrade() {
            Some(d) => d.hotplug_poll(period, &mut failed),
            None => return,
        }
        let stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
        let (stopped, _) = cv
            .wait_timeout_while(stopped, period, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
    }
}

/// `bdev_get_bdevs`' object for one bdev (SPDK's fields; `driver_specific.virtio` for
/// virtio bdevs).
fn bdev_json(b: &Bdev, v: Option<&Virtio>, claimed: bool) -> Value {
    let i = b.info();
    let driver_specific = match v {
        Some(v) => json!({"virtio": v.virtio_json()}),
        None => json!({}),
    };
    let mut o = json!({
        "name": b.name(),
        "aliases": [],
        "product_name": i.product_name,
        "block_size": i.block_size,
        "num_blocks": b.num_blocks(),
        "assigned_rate_limits": {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
                                 "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0},
        "claimed": claimed,
        "zoned": false,
        "supported_io_types": {
            "read": true, "write": !i.read_only, "unmap": i.unmap, "flush": i.flush,
            "reset": v.is_some_and(Virtio::is_scsi), "nvme_admin": false, "nvme_io": false,
            "write_zeroes": i.write_zeroes, "compare": false, "compare_and_write": false,
            "abort": false, "zcopy": false,
        },
        "driver_specific": driver_specific,
    });
    if let (Some(uuid), Some(m)) = (&i.uuid, o.as_object_mut()) {
        m.insert("uuid".into(), json!(uuid));
    }
    if claimed {
        if let Some(m) = o.as_object_mut() {
            m.insert("claim_type".into(), json!("exclusive_write"));
        }
    }
    o
}

/// `bdev_get_iostat`'s object for one bdev: SPDK's counters, plus write-zeroes, flush
/// and error counts. The latency sums are 0: measuring them would take a clock read per
/// request on the data path (ticks are nanoseconds, `tick_rate` 10^9).
fn iostat_json(b: &Bdev) -> Value {
    let st = b.iostat();
    json!({
        "name": b.name(),
        "bytes_read": st.bytes_read,
        "num_read_ops": st.num_read_ops,
        "bytes_written": st.bytes_written,
        "num_write_ops": st.num_write_ops,
        "bytes_unmapped": st.bytes_unmapped,
        "num_unmap_ops": st.num_unmap_ops,
        "bytes_copied": 0,
        "num_copy_ops": 0,
        "read_latency_ticks": st.read_latency_ns,
        "write_latency_ticks": st.write_latency_ns,
        "unmap_latency_ticks": st.unmap_latency_ns,
        "copy_latency_ticks": 0,
        "bytes_zeroed": st.bytes_zeroed,
        "num_write_zeroes_ops": st.num_write_zeroes_ops,
        "num_flush_ops": st.num_flush_ops,
        "num_io_errors": st.num_io_errors,
    })
}

/// The vhost-scsi controller `ctrlr`: its target and its SCSI targets.
fn scsi_ctrlr<'a>(
    s: &'a mut State,
    method: &str,
    ctrlr: &str,
) -> Result<(&'a ScsiHandle, &'a mut BTreeMap<u8, String>), RpcError> {
    let v = s
        .vhost
        .iter_mut()
        .find(|v| v.name == ctrlr)
        .ok_or_else(|| not_found("vhost controller", ctrlr))?;
    match &mut v.kind {
        VhostKind::Scsi { handle, targets } => Ok((handle, targets)),
        VhostKind::Blk { .. } => Err(RpcError::new(
            EINVAL,
            format!("{method}: {ctrlr} is not a vhost-scsi controller"),
        )),
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
