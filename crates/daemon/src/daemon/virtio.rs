//! Virtio devices: `bdev_virtio_attach_controller` and `_detach_controller`, the
//! PCI enumeration and the hotplug monitor, `bdev_virtio_scsi_get_devices`.

use super::*;

/// A virtio device attached by `bdev_virtio_attach_controller`.
#[derive(Debug)]
pub(super) struct Virtio {
    pub(super) name: String,
    /// The vhost-user socket, or the PCI address with `pci`.
    pub(super) socket: PathBuf,
    /// Reached through virtio-pci (VFIO) rather than vhost-user.
    pub(super) pci: bool,
    pub(super) vq_count: u16,
    pub(super) vq_size: u16,
    /// The reply deadline asked for in the attach (`timeout_ms`), kept by `save_config`.
    pub(super) timeout_ms: Option<u64>,
    pub(super) dev: VirtioDev,
}

impl Virtio {
    pub(super) fn bdevs(&self) -> Vec<Bdev> {
        self.dev.bdevs()
    }

    pub(super) fn detach(&self) {
        self.dev.detach();
    }

    pub(super) fn is_scsi(&self) -> bool {
        matches!(self.dev, VirtioDev::Scsi(_))
    }

    /// The device is gone (its transport died).
    pub(super) fn is_removed(&self) -> bool {
        match &self.dev {
            VirtioDev::Blk(b) => b.is_removed(),
            VirtioDev::Scsi(c) => c.is_removed(),
        }
    }

    /// The `bdev_virtio_attach_controller` call that recreates it.
    pub(super) fn config(&self) -> Value {
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
    pub(super) fn virtio_json(&self) -> Value {
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

/// A function the hotplug monitor failed to attach.
#[derive(Debug)]
pub(super) struct AttachFailure {
    /// Its driver then; another one makes it new.
    pub(super) driver: Option<String>,
    /// The wait before the next try.
    pub(super) backoff: Duration,
    pub(super) retry_at: Instant,
}

/// The hotplug monitor thread and its stop flag.
#[derive(Debug)]
pub(super) struct Monitor {
    pub(super) stop: Arc<(Mutex<bool>, Condvar)>,
    pub(super) thread: JoinHandle<()>,
}

impl Monitor {
    /// Tells the thread to stop and waits for it (at most one attach or detach long).
    pub(super) fn stop(self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if self.thread.join().is_err() {
            tracing::error!(target: TARGET, "the hotplug monitor panicked");
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttachParams {
    pub(super) name: String,
    pub(super) trtype: String,
    pub(super) traddr: String,
    pub(super) dev_type: String,
    #[serde(default)]
    pub(super) vq_count: Option<u32>,
    #[serde(default)]
    pub(super) vq_size: Option<u32>,
    /// vbdev's extension: the vhost-user reply deadline in milliseconds (default: the
    /// daemon's `--timeout-ms`).
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
}

/// A validated `bdev_virtio_attach_controller`.
#[derive(Debug)]
pub(super) struct AttachSpec {
    pub(super) name: String,
    /// Socket path, or the PCI address in the kernel's form.
    pub(super) traddr: String,
    pub(super) pci: bool,
    pub(super) scsi: bool,
    pub(super) vq_count: u16,
    pub(super) vq_size: u16,
    /// `timeout_ms` as asked for; the daemon's default without it.
    pub(super) timeout_ms: Option<u64>,
}

/// A function `[VirtioPci] Enable` attaches: modern virtio-blk or virtio-scsi, bound to
/// a user-space driver (SPDK took 0x1042 and 0x1048 only).
pub(super) fn attachable(f: &PciFunction) -> bool {
    !f.transitional && f.device_type.is_some() && f.is_user_space_bound()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HotplugParams {
    pub(super) enable: bool,
    #[serde(default)]
    pub(super) period_us: Option<u64>,
}

/// The hotplug monitor thread: [`Daemon::hotplug_poll`] every `period` until `stop` is
/// set or the daemon is gone.
pub(super) fn monitor_loop(daemon: &Weak<Daemon>, stop: &(Mutex<bool>, Condvar), period: Duration) {
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

impl Daemon {
    /// Reserves `name` for a creation; errors when a bdev or controller has it.
    pub(super) fn reserve(&self, name: &str) -> Result<(), RpcError> {
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

    pub(super) fn attach(&self, params: Option<Value>) -> Result<Value, RpcError> {
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
        check_name(ATTACH, "device", &p.name)?;
        let timeout_ms = match p.timeout_ms {
            Some(0) => {
                return Err(RpcError::new(
                    EINVAL,
                    format!("{ATTACH} {}: timeout_ms must be positive", p.name),
                ));
            }
            Some(t) if t > MAX_WAIT_MS => {
                return Err(RpcError::new(
                    EINVAL,
                    format!(
                        "{ATTACH} {}: timeout_ms {t} is beyond the limit of {MAX_WAIT_MS} (one hour)",
                        p.name
                    ),
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
    pub(super) fn check_pci(&self, name: &str) -> Result<(), RpcError> {
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
    pub(super) fn attach_reserved(&self, spec: AttachSpec) -> Result<Vec<String>, RpcError> {
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
            let scsi = f.device_type == Some(VirtioType::Scsi);
            if let Some(name) = self.attach_auto(f.bdf, scsi)? {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Attaches the PCI function `bdf` under the first free `VirtioBlk<N>` or
    /// `VirtioScsi<N>`; `None` when it is attached (or being attached) already.
    pub(super) fn attach_auto(&self, bdf: Bdf, scsi: bool) -> Result<Option<String>, RpcError> {
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

    pub(super) fn detach(&self, params: Option<Value>) -> Result<Value, RpcError> {
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

    pub(super) fn scsi_devices(&self, params: Option<Value>) -> Result<Value, RpcError> {
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

    pub(super) fn hotplug(&self, params: Option<Value>) -> Result<Value, RpcError> {
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
    pub(super) fn hotplug_poll(&self, period: Duration, failed: &mut HashMap<Bdf, AttachFailure>) {
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
            .filter(|f| f.device_type == Some(VirtioType::Blk) && attachable(f))
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
}
