//! vhost controllers: the embedded targets serving bdevs (`vhost_create_blk_controller`,
//! `vhost_create_scsi_controller`, targets, `vhost_delete_controller`,
//! `vhost_get_controllers`).

use super::*;

/// A vhost controller: an embedded target created by RPC.
#[derive(Debug)]
pub(super) struct Vhost {
    pub(super) name: String,
    pub(super) socket: PathBuf,
    pub(super) kind: VhostKind,
}

#[derive(Debug)]
pub(super) enum VhostKind {
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
    pub(super) fn uses(&self, bdev: &str) -> bool {
        match &self.kind {
            VhostKind::Blk { bdev: b, .. } => b == bdev,
            VhostKind::Scsi { targets, .. } => targets.values().any(|b| b == bdev),
        }
    }

    pub(super) fn stop(&mut self) {
        match &mut self.kind {
            VhostKind::Blk { handle, .. } => handle.stop(),
            VhostKind::Scsi { handle, .. } => handle.stop(),
        }
    }

    pub(super) fn config(&self) -> Vec<Value> {
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

    pub(super) fn json(&self) -> Value {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlkCtrlParams {
    pub(super) ctrlr: String,
    pub(super) dev_name: String,
    #[serde(default)]
    pub(super) cpumask: Option<String>,
    #[serde(default)]
    pub(super) readonly: bool,
    #[serde(default)]
    pub(super) packed_ring: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScsiCtrlParams {
    pub(super) ctrlr: String,
    #[serde(default)]
    pub(super) cpumask: Option<String>,
    #[serde(default)]
    pub(super) delay: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddTargetParams {
    pub(super) ctrlr: String,
    pub(super) scsi_target_num: i32,
    pub(super) bdev_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveTargetParams {
    pub(super) ctrlr: String,
    pub(super) scsi_target_num: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CtrlrParams {
    pub(super) ctrlr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OptCtrlrParams {
    #[serde(default)]
    pub(super) name: Option<String>,
}

/// The vhost-scsi controller `ctrlr`: its target and its SCSI targets.
pub(super) fn scsi_ctrlr<'a>(
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

impl Daemon {
    pub(super) fn socket_for(&self, ctrlr: &str) -> Result<PathBuf, RpcError> {
        check_name("vhost controller", "controller", ctrlr)?;
        Ok(self.vhost_dir.join(ctrlr))
    }

    pub(super) fn reserve_ctrlr(&self, ctrlr: &str) -> Result<(), RpcError> {
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

    pub(super) fn create_blk_ctrlr(&self, params: Option<Value>) -> Result<Value, RpcError> {
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

    pub(super) fn create_scsi_ctrlr(&self, params: Option<Value>) -> Result<Value, RpcError> {
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
    pub(super) fn add_ctrlr<H, E: std::error::Error>(
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

    pub(super) fn add_target(&self, params: Option<Value>) -> Result<Value, RpcError> {
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

    pub(super) fn remove_target(&self, params: Option<Value>) -> Result<Value, RpcError> {
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

    pub(super) fn delete_ctrlr(&self, params: Option<Value>) -> Result<Value, RpcError> {
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

    pub(super) fn get_ctrlrs(&self, params: Option<Value>) -> Result<Value, RpcError> {
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
}
