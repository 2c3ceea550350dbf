//! Result printing. JSON schemas (`--json`, one object per command, snake_case, units in
//! names):
//!
//! - `io info` (virtio-blk): [`InfoJson`].
//! - `io --dev-type scsi info`: [`ScsiInfoJson`], the controller and its LUN bdevs.
//! - `io read|write|flush|discard|write-zeroes`: [`OpJson`].
//! - `perf`: SPDK's `perform_tests` result, `perf::report::PerfJson` (with `-S`, JSON Lines:
//!   one object per period, then the final one).

use serde::Serialize;

/// `vbdev io info --json`.
#[derive(Debug, Serialize)]
pub struct InfoJson {
    /// Bdev name.
    pub name: String,
    /// Product name.
    pub product_name: String,
    /// Module.
    pub driver: String,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Read-only device.
    pub read_only: bool,
    /// FLUSH supported.
    pub flush: bool,
    /// DISCARD supported.
    pub unmap: bool,
    /// WRITE ZEROES supported.
    pub write_zeroes: bool,
    /// Request queues set up.
    pub num_queues: u16,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// Device serial (GET_ID), if any.
    pub serial: Option<String>,
    /// Module details (features, limits) as strings.
    pub details: std::collections::BTreeMap<String, String>,
}

/// `vbdev io --dev-type scsi info --json`.
#[derive(Debug, Serialize)]
pub struct ScsiInfoJson {
    /// The virtio-scsi controller.
    pub controller: ScsiControllerJson,
    /// Its LUN bdevs, by target and LUN (only the `--bdev` one when given).
    pub bdevs: Vec<ScsiBdevJson>,
}

/// The controller of [`ScsiInfoJson`].
#[derive(Debug, Serialize)]
pub struct ScsiControllerJson {
    /// Controller name (bdev names start with it).
    pub name: String,
    /// Module.
    pub driver: String,
    /// Request queues set up for I/O.
    pub num_queues: u16,
    /// Descriptors per request queue.
    pub queue_size: u16,
    /// Controller details (features, queue counts, config) as strings.
    pub details: std::collections::BTreeMap<String, String>,
}

/// One LUN bdev of [`ScsiInfoJson`].
#[derive(Debug, Serialize)]
pub struct ScsiBdevJson {
    /// Bdev name.
    pub name: String,
    /// SCSI target id.
    pub target: u8,
    /// LUN.
    pub lun: u16,
    /// INQUIRY vendor.
    pub vendor: String,
    /// INQUIRY product.
    pub product: String,
    /// Product name of the bdev.
    pub product_name: String,
    /// Module.
    pub driver: String,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Read-only (write-protected) LUN.
    pub read_only: bool,
    /// FLUSH (SYNCHRONIZE CACHE) supported.
    pub flush: bool,
    /// DISCARD (UNMAP) supported.
    pub unmap: bool,
    /// WRITE ZEROES supported.
    pub write_zeroes: bool,
    /// Unit serial number (VPD 0x80), if any.
    pub serial: Option<String>,
    /// UUID from the device identification (VPD 0x83), if any.
    pub uuid: Option<String>,
    /// LUN details (revision, write cache, limits) as strings; the controller's are in
    /// [`ScsiControllerJson::details`].
    pub details: std::collections::BTreeMap<String, String>,
}

/// `vbdev io <op> --json`.
#[derive(Debug, Serialize)]
pub struct OpJson {
    /// Operation.
    pub op: String,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
    /// `"ok"` or the error.
    pub status: String,
    /// Wall time of the I/O in microseconds.
    pub elapsed_us: u64,
    /// For reads with `--pattern`: whether the data matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern_ok: Option<bool>,
}

/// Prints `value` as one line of JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)
}

/// Writes a hex dump of `data` (offsets from `base`) in `xxd` style.
pub fn hexdump(base: u64, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, line) in data.chunks(16).enumerate() {
        write!(out, "{:08x}:", base + 16 * i as u64)?;
        for pair in line.chunks(2) {
            write!(out, " ")?;
            for b in pair {
                write!(out, "{b:02x}")?;
            }
        }
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        writeln!(out, "  {ascii}")?;
    }
    out.flush()
}
