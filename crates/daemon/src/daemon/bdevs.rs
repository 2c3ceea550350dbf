//! Local bdevs (`bdev_malloc_create`, `bdev_null_create` and their deletes),
//! `bdev_get_bdevs` and `bdev_get_iostat`.

use super::*;

/// A local bdev (`bdev_malloc_create`, `bdev_null_create`).
#[derive(Debug)]
pub(super) struct Local {
    pub(super) malloc: bool,
    pub(super) bdev: Bdev,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetBdevsParams {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiskParams {
    #[serde(default)]
    pub(super) name: Option<String>,
    pub(super) num_blocks: u64,
    pub(super) block_size: u32,
    #[serde(default)]
    pub(super) uuid: Option<String>,
    // Sent by SPDK's client (some always, as false); accepted when they ask for nothing
    // we lack: no metadata, no protection information.
    #[serde(default)]
    pub(super) md_size: Option<u32>,
    #[serde(default)]
    pub(super) md_interleave: bool,
    #[serde(default)]
    pub(super) dif_type: Option<u32>,
    #[serde(default)]
    pub(super) dif_is_head_of_md: bool,
    #[serde(default)]
    pub(super) dif_pi_format: Option<u32>,
    // Hints with no effect here.
    #[serde(default)]
    pub(super) physical_block_size: Option<u32>,
    #[serde(default)]
    pub(super) optimal_io_boundary: Option<u32>,
    #[serde(default)]
    pub(super) numa_id: Option<i32>,
}

/// `bdev_get_bdevs`' object for one bdev (SPDK's fields; `driver_specific.virtio` for
/// virtio bdevs).
pub(super) fn bdev_json(b: &Bdev, v: Option<&Virtio>, claimed: bool) -> Value {
    let i = b.info();
    let driver_specific = match v {
        Some(v) => {
            let mut virtio = v.virtio_json();
            // vbdev's extension: a device whose target went away is listed as failed,
            // not as a healthy bdev whose every request fails.
            if let Some(m) = virtio.as_object_mut() {
                m.insert("state".into(), json!(b.state().as_str()));
            }
            json!({"virtio": virtio})
        }
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
pub(super) fn iostat_json(b: &Bdev) -> Value {
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

impl Daemon {
    pub(super) fn get_bdevs(&self, params: Option<Value>) -> Result<Value, RpcError> {
        const M: &str = "bdev_get_bdevs";
        let p: GetBdevsParams = decode(M, params, INVALID_PARAMS)?;
        let wait = p.timeout.unwrap_or(0);
        if wait > MAX_WAIT_MS {
            return Err(RpcError::invalid_params(format!(
                "{M}: timeout {wait} ms is beyond the limit of {MAX_WAIT_MS} ms (one hour)"
            )));
        }
        let deadline = Instant::now() + Duration::from_millis(wait);
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
                    // Nobody to answer, or the daemon is stopping: waiting on would hold a
                    // thread (and the shutdown) for nothing.
                    Some(n) if self.is_stopping() || crate::rpc::client_gone() => {
                        return Err(RpcError::new(
                            ENODEV,
                            format!(
                                "{M}: stopped waiting for bdev {n}: the daemon is stopping or the client left"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
            // Waiting for a bdev to appear (a scsi hot-add): polled, as SPDK does.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(super) fn iostat(&self, params: Option<Value>) -> Result<Value, RpcError> {
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

    pub(super) fn create_local(
        &self,
        malloc: bool,
        params: Option<Value>,
    ) -> Result<Value, RpcError> {
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
        check_name(m, "bdev", &name)?;
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

    pub(super) fn delete_local(
        &self,
        malloc: bool,
        params: Option<Value>,
    ) -> Result<Value, RpcError> {
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
}
