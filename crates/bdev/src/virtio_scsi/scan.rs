//! Target and LUN scanning: the command sequence of the module documentation, each
//! command bounded by the controller's command timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vbdev_scsi::{
    BlockLimits, DeviceIdentification, DeviceType, LogicalBlockProvisioning, LunEntry, ModeSense6,
    ReadCapacity10, ReadCapacity16, ReportLuns, StandardInquiry, SupportedOpcodes, cdb, mode, vpd,
};
use vbdev_virtio::DmaDomain;
use vbdev_virtio::scsi::{self as wire, response};

use super::queue::{Cmd, CmdOutcome};
use super::{Ctrl, LunLimits, MAX_CHILD_BYTES, TARGET};
use crate::error::{Error, Result};
use crate::io::IoError;

/// Attempts per scan command (SPDK uses 5).
const SCAN_RETRIES: u32 = 5;
/// TEST UNIT READY attempts while the unit reports UNIT ATTENTION or becoming ready.
const TUR_RETRIES: u32 = 20;
/// WRITE SAME(16) blocks per command when the disk reports no limit (Linux's default).
const DEFAULT_MAX_WRITE_SAME: u64 = 0x7f_ffff;

/// What a scan learned about one LUN.
#[derive(Debug, Clone)]
pub(super) struct LunDesc {
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    pub write_cache: bool,
    pub limits: LunLimits,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub serial: Option<String>,
    pub uuid: Option<String>,
}

/// The answer to "what is at this address".
#[derive(Debug)]
enum Probe<T> {
    Found(T),
    /// Nothing there (BAD_TARGET, INCORRECT_LUN, peripheral qualifier, not a disk).
    Absent,
    /// Something there that does not answer usably now (failed commands after retries,
    /// bad data): an existing bdev for it is kept as it is, no new one is made.
    Unavailable,
}

impl Ctrl {
    /// Runs one command on the management queue, waiting at most the command timeout.
    /// A command that does not complete in time fails the controller (the device may
    /// still write the buffer, so nothing can be reused) and is an error.
    fn command(
        &self,
        lun: [u8; 8],
        cdb: &[u8],
        data_in: usize,
        data_out: &[u8],
    ) -> Result<CmdOutcome> {
        let scan_err = |why: String| Error::Scan {
            name: self.name.clone(),
            why,
        };
        let buf = if data_in > 0 || !data_out.is_empty() {
            let len = data_in.max(data_out.len());
            let mut b = DmaDomain::global()
                .alloc_zeroed(len, 512)
                .map_err(|e| scan_err(format!("cannot allocate a scan buffer: {e}")))?;
            b.write_at(0, data_out);
            Some(b)
        } else {
            None
        };
        let mut cmd = Cmd {
            lun,
            cdb: cdb.to_vec(),
            buf,
            data_in: data_in > 0,
        };
        let mgmt = self.mgmt.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, client) = (&mgmt.slot, mgmt.client);
        let timeout = self.opts.cmd_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let mut q = slot.lock();
            match q.submit_cmd(client, cmd) {
                Ok(()) => {
                    q.flush();
                    break;
                }
                Err(c) => {
                    cmd = c;
                    q.flush();
                    q.pump(self.opts.io_timeout, self.removed());
                }
            }
            drop(q);
            if Instant::now() > deadline {
                return Err(scan_err(format!(
                    "request queue {} stayed full for {} ms",
                    slot.index,
                    timeout.as_millis()
                )));
            }
            slot.sleep(client, Duration::from_millis(10));
        }
        loop {
            {
                let mut q = slot.lock();
                q.pump(self.opts.io_timeout, self.removed());
                if let Some(o) = q.take_cmd(client).map(CmdOutcome::from) {
                    if q.failed {
                        slot.failed
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    return match o.error {
                        Some(IoError::Removed) => Err(scan_err("the device is gone".into())),
                        Some(e @ IoError::Protocol(_)) => Err(scan_err(format!("{e}"))),
                        _ => Ok(o),
                    };
                }
                if Instant::now() > deadline {
                    q.fail_all(IoError::TimedOut);
                    slot.failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = q.take_cmd(client);
                    return Err(scan_err(format!(
                        "{} did not complete within {} ms; the controller is failed",
                        command_name(cdb),
                        timeout.as_millis()
                    )));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            slot.sleep(client, left.min(Duration::from_millis(20)));
        }
    }

    /// A command retried on UNIT ATTENTION, transient NOT READY and non-OK responses
    /// other than BAD_TARGET / INCORRECT_LUN, up to [`SCAN_RETRIES`] attempts.
    fn command_retry(&self, lun: [u8; 8], cdb: &[u8], data_in: usize) -> Result<CmdOutcome> {
        // Each UNIT ATTENTION is reported once and cleared, and a burst of LUN changes
        // can queue many: those are retried at once, up to MAX_UA; the other transient
        // answers up to SCAN_RETRIES times with a growing pause.
        const MAX_UA: u32 = 64;
        let (mut attempt, mut uas) = (0, 0);
        loop {
            let o = self.command(lun, cdb, data_in, &[])?;
            let gone = matches!(
                o.resp.response,
                response::BAD_TARGET | response::INCORRECT_LUN
            );
            if gone || o.is_good() {
                return Ok(o);
            }
            let sense = o.sense();
            if sense.as_ref().is_some_and(|s| s.is_unit_attention()) {
                uas += 1;
                if uas >= MAX_UA {
                    return Ok(o);
                }
                continue;
            }
            let transient = if o.resp.response != response::OK {
                true
            } else if let Some(s) = sense {
                s.is_not_ready() && s.asc == 0x04 && s.ascq == 0x01
            } else {
                vbdev_scsi::Status(o.resp.status).is_retryable()
            };
            attempt += 1;
            if !transient || attempt >= SCAN_RETRIES {
                return Ok(o);
            }
            std::thread::sleep(Duration::from_millis(1 << attempt.min(6)));
        }
    }

    /// Scans every target and applies the result: new LUNs are added, vanished ones
    /// removed (only when `remove_missing`), changed ones resized.
    pub(super) fn full_scan(self: &Arc<Self>, remove_missing: bool) -> Result<()> {
        let max_target = self.config.max_target.min(255) as u8;
        let mut found = BTreeMap::new();
        let mut keep = BTreeSet::new();
        for t in 0..=max_target {
            if self.removed() {
                return Err(Error::Scan {
                    name: self.name.clone(),
                    why: "the device went away during the scan".into(),
                });
            }
            self.scan_target(t, &mut found, &mut keep)?;
        }
        if remove_missing {
            let gone: Vec<_> = self
                .luns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .filter(|k| !found.contains_key(k) && !keep.contains(k))
                .copied()
                .collect();
            for k in gone {
                self.remove_lun(k);
            }
        }
        for (k, d) in found {
            self.apply(k, d);
        }
        Ok(())
    }

    /// Scans target `t` into `found`; LUNs (or the whole target) that answer but not
    /// usably go into `keep`, so that their bdevs are left alone.
    fn scan_target(
        &self,
        t: u8,
        found: &mut BTreeMap<(u8, u16), LunDesc>,
        keep: &mut BTreeSet<(u8, u16)>,
    ) -> Result<()> {
        match self.report_luns(t)? {
            Probe::Found(luns) => {
                for l in luns {
                    match self.scan_lun(t, l)? {
                        Probe::Found(d) => {
                            found.insert((t, l), d);
                        }
                        Probe::Unavailable => {
                            keep.insert((t, l));
                        }
                        Probe::Absent => {}
                    }
                }
            }
            Probe::Unavailable => {
                let luns = self.luns.lock().unwrap_or_else(|e| e.into_inner());
                keep.extend(luns.keys().filter(|(tt, _)| *tt == t));
            }
            Probe::Absent => {}
        }
        Ok(())
    }

    /// Scans one target (after a hot-add or a REPORTED LUNS DATA HAS CHANGED) and
    /// applies the result; LUNs of the target that vanished are removed.
    pub(super) fn scan_target_and_apply(self: &Arc<Self>, t: u8) -> Result<()> {
        let mut found = BTreeMap::new();
        let mut keep = BTreeSet::new();
        self.scan_target(t, &mut found, &mut keep)?;
        let gone: Vec<_> = self
            .luns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|k| k.0 == t && !found.contains_key(k) && !keep.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.remove_lun(k);
        }
        for (k, d) in found {
            self.apply(k, d);
        }
        Ok(())
    }

    /// Scans one LUN (after a capacity change or a suspicious response) and applies it.
    pub(super) fn scan_lun_and_apply(self: &Arc<Self>, t: u8, l: u16) -> Result<()> {
        match self.scan_lun(t, l)? {
            Probe::Found(d) => self.apply((t, l), d),
            Probe::Absent => self.remove_lun((t, l)),
            Probe::Unavailable => {}
        }
        Ok(())
    }

    /// The LUNs of target `t`: REPORT LUNS, or LUN 0 alone when the target does not
    /// support it.
    fn report_luns(&self, t: u8) -> Result<Probe<Vec<u16>>> {
        let field = wire::lun_field(t, 0);
        let mut alloc: u32 = 8 + 8 * 256;
        loop {
            let o =
                self.command_retry(field, cdb::report_luns(0, alloc).as_bytes(), alloc as usize)?;
            if matches!(
                o.resp.response,
                response::BAD_TARGET | response::INCORRECT_LUN
            ) {
                return Ok(Probe::Absent);
            }
            if o.resp.response != response::OK {
                tracing::warn!(target: TARGET, name = %self.name, target_id = t, why = %o.describe(), "target present but unavailable; skipped");
                return Ok(Probe::Unavailable);
            }
            if !o.is_good() {
                // Not supported (ILLEGAL REQUEST) or otherwise failing: LUN 0 alone.
                tracing::debug!(target: TARGET, name = %self.name, target_id = t, why = %o.describe(), "REPORT LUNS failed; trying LUN 0 alone");
                return Ok(Probe::Found(vec![0]));
            }
            let r = match ReportLuns::parse(o.data()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(target: TARGET, name = %self.name, target_id = t, error = %e, "bad REPORT LUNS data; trying LUN 0 alone");
                    return Ok(Probe::Found(vec![0]));
                }
            };
            if r.is_truncated() && alloc < (1 << 18) {
                alloc = (r.needed_len().min(1 << 18)) as u32;
                continue;
            }
            let mut luns: Vec<u16> = r
                .luns
                .iter()
                .filter_map(LunEntry::lun)
                .map(|l| l.get())
                .filter(|&l| u32::from(l) <= self.config.max_lun)
                .collect();
            luns.sort_unstable();
            luns.dedup();
            return Ok(Probe::Found(luns));
        }
    }

    /// The scan of one LUN: INQUIRY, TEST UNIT READY (START STOP UNIT), VPD pages,
    /// READ CAPACITY, MODE SENSE, REPORT SUPPORTED OPERATION CODES.
    fn scan_lun(&self, t: u8, l: u16) -> Result<Probe<LunDesc>> {
        let field = wire::lun_field(t, l);
        let skip = |why: String| {
            tracing::warn!(target: TARGET, name = %self.name, target_id = t, lun = l, why, "LUN unavailable; skipped");
            Ok(Probe::Unavailable)
        };
        let o = self.command_retry(field, cdb::inquiry(96).as_bytes(), 96)?;
        if matches!(
            o.resp.response,
            response::BAD_TARGET | response::INCORRECT_LUN
        ) {
            return Ok(Probe::Absent);
        }
        if !o.is_good() {
            return skip(format!("INQUIRY failed: {}", o.describe()));
        }
        let inq = match StandardInquiry::parse(o.data()) {
            Ok(i) => i,
            Err(e) => return skip(format!("bad INQUIRY data: {e}")),
        };
        if inq.peripheral_qualifier != 0 || inq.device_type == DeviceType::UNKNOWN {
            return Ok(Probe::Absent);
        }
        if inq.device_type != DeviceType::DIRECT_ACCESS {
            tracing::warn!(target: TARGET, name = %self.name, target_id = t, lun = l, device_type = %inq.device_type, "not a direct-access block device; skipped");
            return Ok(Probe::Absent);
        }
        if let Err(why) = self.make_ready(field)? {
            return skip(why);
        }
        let pages = {
            let o = self.command_retry(field, cdb::inquiry_vpd(0x00, 255).as_bytes(), 255)?;
            if o.is_good() {
                vpd::parse_supported_pages(o.data()).unwrap_or_default()
            } else {
                Vec::new()
            }
        };
        let vpd_page = |page: u8| -> Result<Option<Vec<u8>>> {
            if !pages.contains(&page) {
                return Ok(None);
            }
            let o = self.command_retry(field, cdb::inquiry_vpd(page, 1024).as_bytes(), 1024)?;
            Ok(o.is_good().then(|| o.data().to_vec()))
        };
        let serial = vpd_page(0x80)?
            .and_then(|d| vpd::parse_unit_serial_number(&d).ok())
            .filter(|s| !s.is_empty());
        let uuid = vpd_page(0x83)?
            .and_then(|d| DeviceIdentification::parse(&d).ok())
            .and_then(|id| id.unique_id())
            .map(format_uuid);
        let limits = vpd_page(0xB0)?.and_then(|d| BlockLimits::parse(&d).ok());
        let lbp = vpd_page(0xB2)?.and_then(|d| LogicalBlockProvisioning::parse(&d).ok());
        // READ CAPACITY(10), and (16) when (10) overflows or the disk is SBC-3 or later
        // (it has the block limits or provisioning pages).
        let o = self.command_retry(field, cdb::read_capacity_10().as_bytes(), 8)?;
        if !o.is_good() {
            return skip(format!("READ CAPACITY(10) failed: {}", o.describe()));
        }
        let rc10 = match ReadCapacity10::parse(o.data()) {
            Ok(c) => c,
            Err(e) => return skip(format!("bad READ CAPACITY(10) data: {e}")),
        };
        let (mut block_size, mut num_blocks) = (rc10.block_length, rc10.block_count());
        let want16 = rc10.needs_16() || limits.is_some() || lbp.is_some();
        if want16 {
            let o = self.command_retry(field, cdb::read_capacity_16(32).as_bytes(), 32)?;
            match (o.is_good(), ReadCapacity16::parse(o.data())) {
                (true, Ok(c)) => match c.block_count() {
                    Some(n) => (block_size, num_blocks) = (c.block_length, n),
                    None => return skip("READ CAPACITY(16) reports 2^64 blocks".into()),
                },
                _ if rc10.needs_16() => {
                    return skip(format!(
                        "the disk needs READ CAPACITY(16), which failed: {}",
                        o.describe()
                    ));
                }
                _ => {}
            }
        }
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return skip(format!(
                "block size {block_size} is not a power of two from 512 to 65536"
            ));
        }
        if num_blocks == 0 {
            return skip("capacity is 0 blocks".into());
        }
        let (read_only, write_cache) = self.mode_sense(field)?;
        let ops = self.supported_opcodes(field)?;
        let supports = |op: u8| ops.as_ref().map(|o| o.supports(op, None));
        let bs = u64::from(block_size);
        // Transfer size: max_sectors (a hint, in 512-byte units), the VPD maximum, the
        // 10-byte CDB's 16-bit length unless READ/WRITE(16) are known to work.
        let mut max_transfer = (MAX_CHILD_BYTES / bs).min(u64::from(u32::MAX));
        if self.config.max_sectors > 0 {
            max_transfer = max_transfer.min((u64::from(self.config.max_sectors) * 512 / bs).max(1));
        }
        if let Some(b0) = &limits {
            if b0.max_transfer_length > 0 {
                max_transfer = max_transfer.min(u64::from(b0.max_transfer_length));
            }
        }
        if self.device.transport().phys_map().is_some() {
            // The device sees physical addresses: the data buffer becomes a descriptor
            // per huge page it touches (at most `ceil(bytes / 2 MiB) + 1`), sent as a
            // direct chain with the header and response; keep that within the ring and
            // the device's seg_max.
            let seg_max = match self.config.seg_max {
                0 => u64::MAX,
                m => u64::from(m),
            };
            let pieces = u64::from(self.queue_size)
                .saturating_sub(2)
                .min(seg_max)
                .max(2);
            max_transfer =
                max_transfer.min(((pieces - 1) * vbdev_virtio::mem::HUGE_PAGE / bs).max(1));
        }
        let rw16 = supports(cdb::opcode::READ_16) == Some(true)
            && supports(cdb::opcode::WRITE_16) == Some(true);
        if !rw16 && num_blocks <= u64::from(u32::MAX) {
            max_transfer = max_transfer.min(u64::from(u16::MAX));
        }
        // UNMAP: LBPU, a nonzero VPD limit, and not known to be rejected.
        let mut max_unmap = 0;
        if lbp.is_some_and(|p| p.lbpu) && supports(cdb::opcode::UNMAP) != Some(false) {
            max_unmap = match &limits {
                Some(b0) if b0.max_unmap_block_descriptor_count == 0 => 0,
                Some(b0) => u64::from(b0.max_unmap_lba_count),
                None => u64::from(u32::MAX),
            };
        }
        let write_same_16 = match supports(cdb::opcode::WRITE_SAME_16) {
            Some(s) => s,
            None => lbp.is_some_and(|p| p.lbpws),
        };
        let max_ws = limits
            .as_ref()
            .map(|b0| b0.max_write_same_length)
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_MAX_WRITE_SAME)
            .min(u64::from(u32::MAX));
        Ok(Probe::Found(LunDesc {
            block_size,
            num_blocks,
            read_only,
            write_cache,
            limits: LunLimits {
                max_transfer_blocks: max_transfer,
                max_unmap_blocks: max_unmap,
                write_same_16,
                max_write_same_blocks: max_ws,
            },
            vendor: inq.vendor,
            product: inq.product,
            revision: inq.revision,
            serial,
            uuid,
        }))
    }

    /// TEST UNIT READY until GOOD, retrying UNIT ATTENTION and "becoming ready", and
    /// sending START STOP UNIT once when the unit needs an initializing command.
    /// `Ok(Err(why))`: the unit is not usable.
    fn make_ready(&self, field: [u8; 8]) -> Result<std::result::Result<(), String>> {
        let mut started = false;
        let mut uas = 0;
        let mut attempt = 0;
        while attempt < TUR_RETRIES {
            attempt += 1;
            let o = self.command(field, cdb::test_unit_ready().as_bytes(), 0, &[])?;
            if o.is_good() {
                return Ok(Ok(()));
            }
            if o.resp.response != response::OK {
                if attempt >= SCAN_RETRIES {
                    return Ok(Err(format!("TEST UNIT READY: {}", o.describe())));
                }
                continue;
            }
            let Some(s) = o.sense() else {
                if vbdev_scsi::Status(o.resp.status).is_retryable() {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                return Ok(Err(format!("TEST UNIT READY: {}", o.describe())));
            };
            if s.is_unit_attention() {
                // Reported once each; a burst of changes can queue many. Not counted
                // as an attempt, bounded on its own.
                uas += 1;
                if uas < 64 {
                    attempt -= 1;
                }
                continue;
            }
            if s.is_not_ready() && s.asc == 0x04 && s.ascq == 0x02 && !started {
                started = true;
                let o = self.command(
                    field,
                    cdb::start_stop_unit(true, false, false).as_bytes(),
                    0,
                    &[],
                )?;
                if !o.is_good() {
                    return Ok(Err(format!("START STOP UNIT: {}", o.describe())));
                }
                continue;
            }
            if s.is_not_ready() && s.asc == 0x04 && s.ascq == 0x01 {
                std::thread::sleep(Duration::from_millis(10 << attempt.min(5)));
                continue;
            }
            return Ok(Err(format!("TEST UNIT READY: {}", o.describe())));
        }
        Ok(Err(format!(
            "not ready after {TUR_RETRIES} TEST UNIT READY attempts"
        )))
    }

    /// MODE SENSE(6) of the Caching page: (write protected, write cache enabled).
    /// A disk that does not answer is taken as writable without a cache.
    fn mode_sense(&self, field: [u8; 8]) -> Result<(bool, bool)> {
        let c = cdb::mode_sense_6(
            true,
            mode::page_control::CURRENT,
            mode::page::CACHING,
            0,
            64,
        );
        let o = self.command_retry(field, c.as_bytes(), 64)?;
        if !o.is_good() {
            return Ok((false, false));
        }
        match ModeSense6::parse(o.data()) {
            Ok(m) => Ok((m.write_protected(), m.write_cache_enabled())),
            Err(e) => {
                tracing::debug!(target: TARGET, name = %self.name, error = %e, "bad MODE SENSE(6) data; taken as writable without a cache");
                Ok((false, false))
            }
        }
    }

    /// REPORT SUPPORTED OPERATION CODES (all commands): the commands the disk supports,
    /// or `None` when it does not report them.
    fn supported_opcodes(&self, field: [u8; 8]) -> Result<Option<SupportedOpcodes>> {
        let mut alloc: u32 = 8192;
        loop {
            let c = cdb::report_supported_operation_codes_all(alloc);
            let o = self.command_retry(field, c.as_bytes(), alloc as usize)?;
            if !o.is_good() {
                return Ok(None);
            }
            match SupportedOpcodes::parse(o.data()) {
                // A list cut by the allocation length: ask again for all of it (a
                // command past the cut would look unsupported), or give up on it.
                Ok(s) if s.is_truncated() => {
                    let need = u32::try_from(s.needed_len()).unwrap_or(u32::MAX);
                    if need <= alloc || need > (1 << 20) {
                        return Ok(None);
                    }
                    alloc = need;
                }
                Ok(s) => return Ok(Some(s)),
                Err(e) => {
                    tracing::debug!(target: TARGET, name = %self.name, error = %e, "bad REPORT SUPPORTED OPERATION CODES data; commands unknown");
                    return Ok(None);
                }
            }
        }
    }
}

fn format_uuid(b: [u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn command_name(cdb: &[u8]) -> String {
    let name = match cdb.first() {
        Some(0x00) => "TEST UNIT READY",
        Some(0x12) => "INQUIRY",
        Some(0x1A) => "MODE SENSE(6)",
        Some(0x1B) => "START STOP UNIT",
        Some(0x25) => "READ CAPACITY(10)",
        Some(0x9E) => "READ CAPACITY(16)",
        Some(0xA0) => "REPORT LUNS",
        Some(0xA3) => "REPORT SUPPORTED OPERATION CODES",
        _ => return format!("command 0x{:02x}", cdb.first().copied().unwrap_or(0)),
    };
    name.to_owned()
}
