//! The vhost-user-blk target (virtio 1.2 §5.2, device side).
//!
//! [`start_blk`] serves any [`Bdev`] as a virtio-blk device on a vhost-user socket, in
//! the serving model of [`crate::server`]. Each request queue has its own
//! [`ChannelIo`] on the bdev, opened at start, so the bdev must allow `num_queues`
//! channels at once.
//!
//! # What the device offers
//! `SIZE_MAX` (unless `size_max` is 0), `SEG_MAX`, `BLK_SIZE`, `FLUSH`, `MQ`, `DISCARD`
//! (when the bdev can unmap), `WRITE_ZEROES` (done with writes of zeros when the bdev
//! cannot), `RO` (read-only target or bdev), `CONFIG_WCE`, `RING_EVENT_IDX`,
//! `RING_INDIRECT_DESC` and `VERSION_1`; vhost-user protocol features `MQ`, `CONFIG`,
//! `REPLY_ACK` and `CONFIGURE_MEM_SLOTS`. `GET_CONFIG` returns any range that starts inside the
//! 96-byte `struct virtio_blk_config` (§5.2.4), honouring the offset; bytes asked for
//! past its end read as zero (SPDK's initiator asks for 256). The write cache starts in
//! write-back mode; a driver that clears `writeback` (`SET_CONFIG`, offset 32) gets
//! write-through: every write, discard and write-zeroes is followed by a flush.
//!
//! # Requests (§5.2.6)
//! IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES. Everything the driver wrote is
//! checked before anything is done:
//! - a header shorter than 16 bytes, data not a whole number of blocks, a sector not on a
//!   block boundary or a range beyond the capacity: `IOERR`;
//! - OUT, DISCARD or WRITE_ZEROES on a read-only device: `IOERR`, nothing written
//!   (§5.2.6.2);
//! - DISCARD or WRITE_ZEROES: a segment list that is not a multiple of 16 bytes or is
//!   empty, or a segment beyond `max_*_sectors`: `IOERR`; more segments than
//!   `max_*_seg`, unknown flags, or `UNMAP` on a discard: `UNSUPP` (§5.2.6.2);
//! - an unknown type, or DISCARD without the feature: `UNSUPP`;
//! - GET_ID with fewer than 20 writable bytes: `IOERR`.
//!
//! The status byte is the last writable byte of the chain; a chain without one is given
//! back with used length 0. The used length is the bytes written to the driver, status
//! included.
//!
//! Reads and writes of a bdev with direct access (`malloc`, `null`) move data straight
//! between the bdev's memory and the driver's buffers ([`ChannelIo`]); for other bdevs
//! data moves through a per-queue bounce buffer of 1 MiB (or the bdev channel's DMA
//! buffers), so a request of any size costs no more memory than that.

use std::io::{Read, Write};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vbdev_bdev::Bdev;
use vbdev_virtio::blk::{DiscardWriteZeroes, ID_BYTES, SECTOR_SIZE, features, req, status};
use vbdev_virtio::device::features as vfeat;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemory;

use vbdev_bdev::{ReadDest, WriteSrc};

use crate::disk::{BlockIo, ChannelIo, DiskError, DiskInfo};
use crate::fast::{Requests, Segments, put_zeros};
use crate::fault::{CorruptLast, Fault, Faults};
use crate::server::{self, Chain, Device, Error, Mem, Quirks, Result, ServeOptions, TargetHandle};

const TARGET: &str = "vbdev::target::blk";

/// Bytes of `struct virtio_blk_config` in virtio 1.2 (§5.2.4), up to and including the
/// zoned characteristics.
pub const CONFIG_LEN: usize = 96;

/// Offset of `writeback` in the configuration space.
const CONFIG_WRITEBACK: u32 = 32;

/// Size of the per-queue bounce buffer (rounded up to a block).
const CHUNK: usize = 1 << 20;

/// How to serve a bdev as a vhost-user-blk target.
///
/// ```no_run
/// # use vbdev_target::blk::{BlkTargetConfig, start_blk};
/// # fn f(bdev: vbdev_bdev::Bdev) -> vbdev_target::server::Result<()> {
/// let target = start_blk(bdev, BlkTargetConfig {
///     num_queues: 4,
///     ..BlkTargetConfig::new("/tmp/vblk.sock")
/// })?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkTargetConfig {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// Request queues, 1 to 64 (default 1).
    pub num_queues: u16,
    /// Largest queue size a frontend may use, a power of two up to 32768 (default 1024).
    pub queue_size: u16,
    /// Refuse writes even if the bdev takes them (default false).
    pub read_only: bool,
    /// The GET_ID answer, at most 20 bytes (default: the bdev name, cut to 20 bytes).
    pub serial: Option<String>,
    /// Busy-poll the queues instead of waiting for kicks (default false).
    pub poll: bool,
    /// With `poll`: threads polling the request queues, from 1 to `num_queues`
    /// (default 1: one thread polls every request queue in turn, as an SPDK reactor does).
    pub poll_threads: u16,
    /// Most data segments per request, `seg_max` (default 126).
    pub seg_max: u32,
    /// Largest data segment in bytes, `size_max`; 0 leaves `SIZE_MAX` out (default 1 MiB).
    pub size_max: u32,
    /// Most sectors per discard or write-zeroes segment, a multiple of the block size in
    /// sectors (default 4194304, 2 GiB).
    pub max_discard_sectors: u32,
    /// Most segments per discard or write-zeroes request (default 16).
    pub max_discard_seg: u32,
    /// Behave like another target (default: none).
    pub quirks: Quirks,
}

impl BlkTargetConfig {
    /// The defaults, listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            num_queues: 1,
            queue_size: 1024,
            read_only: false,
            serial: None,
            poll: false,
            poll_threads: 1,
            seg_max: 126,
            size_max: 1 << 20,
            max_discard_sectors: 1 << 22,
            max_discard_seg: 16,
            quirks: Quirks::default(),
        }
    }
}

/// Starts a vhost-user-blk target serving `bdev`.
///
/// # Errors
/// [`Error::InvalidOption`] for a bad option, [`Error::Bdev`] when the bdev cannot give
/// one channel per queue, and the errors of [`server::serve`].
pub fn start_blk(bdev: Bdev, cfg: BlkTargetConfig) -> Result<TargetHandle> {
    let name = bdev.name().to_owned();
    let mut queues: Vec<Box<dyn BlockIo>> = Vec::with_capacity(usize::from(cfg.num_queues));
    if cfg.num_queues == 0 || cfg.num_queues > server::MAX_QUEUES {
        return Err(invalid(
            "num_queues",
            format!("{} is not from 1 to {}", cfg.num_queues, server::MAX_QUEUES),
        ));
    }
    for _ in 0..cfg.num_queues {
        let io = ChannelIo::open(&bdev).map_err(|source| Error::Bdev {
            bdev: name.clone(),
            source,
        })?;
        queues.push(Box::new(io));
    }
    let device = BlkDevice::new(&name, queues, &cfg)?;
    let faults = Arc::clone(&device.faults);
    tracing::info!(target: TARGET, bdev = %name, socket = %cfg.socket.display(), queues = cfg.num_queues, read_only = device.read_only, "vhost-user-blk target");
    server::serve(
        Arc::new(device),
        ServeOptions {
            socket: cfg.socket,
            poll: cfg.poll,
            poll_threads: cfg.poll_threads,
            quirks: cfg.quirks,
        },
        faults,
    )
}

fn invalid(option: &'static str, why: String) -> Error {
    Error::InvalidOption { option, why }
}

/// A virtio-blk device over one [`BlockIo`] per queue.
///
/// # Invariants
/// `disk.block_size` is a power of two; `max_dwz_sectors` is a non-zero multiple of the
/// block size in sectors; `queues.len() == num_queues`.
struct BlkDevice {
    disk: DiskInfo,
    read_only: bool,
    features: u64,
    num_queues: u16,
    queue_size: u16,
    seg_max: u32,
    size_max: u32,
    max_dwz_sectors: u32,
    max_dwz_seg: u32,
    serial: [u8; ID_BYTES],
    /// Write-back cache on (CONFIG_WCE `writeback`); off means a flush after each write.
    writeback: AtomicBool,
    queues: Box<[Mutex<BlkQueue>]>,
    /// The target's faults (shared with the server): reads consult
    /// [`Faults::take_corrupt_read`].
    faults: Arc<Faults>,
}

impl std::fmt::Debug for BlkDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkDevice")
            .field("disk", &self.disk)
            .field("read_only", &self.read_only)
            .field("features", &format_args!("{:#x}", self.features))
            .field("num_queues", &self.num_queues)
            .finish_non_exhaustive()
    }
}

/// One queue's disk access and scratch space, allocated at start.
struct BlkQueue {
    io: Box<dyn BlockIo>,
    /// Bounce buffer: a whole number of blocks.
    buf: Vec<u8>,
    /// The segments of the discard / write-zeroes request being served.
    ranges: Vec<(u64, u64)>,
}

/// A request's outcome: its status byte and the data bytes written to the driver.
type Outcome = (u8, usize);

impl BlkDevice {
    fn new(name: &str, queues: Vec<Box<dyn BlockIo>>, cfg: &BlkTargetConfig) -> Result<Self> {
        let disk = queues
            .first()
            .map(|q| q.info())
            .ok_or_else(|| invalid("num_queues", "0 is not from 1 to 64".into()))?;
        let bs = disk.block_size;
        if !bs.is_power_of_two() || u64::from(bs) < SECTOR_SIZE {
            return Err(invalid(
                "block_size",
                format!("bdev {name}: block size {bs} is not a power of two of at least 512"),
            ));
        }
        let q = cfg.queue_size;
        if !q.is_power_of_two() || q > server::MAX_QUEUE_SIZE {
            return Err(invalid(
                "queue_size",
                format!("{q} is not a power of two from 1 to 32768"),
            ));
        }
        let serial_src = cfg.serial.as_deref().unwrap_or(name);
        let serial = match &cfg.serial {
            Some(s) if s.len() > ID_BYTES => {
                return Err(invalid(
                    "serial",
                    format!("{s:?} is longer than {ID_BYTES} bytes"),
                ));
            }
            _ => {
                let mut id = [0u8; ID_BYTES];
                // The bdev name is cut to 20 bytes, possibly mid-character: GET_ID is
                // bytes, NUL-padded (§5.2.6).
                let n = serial_src.len().min(ID_BYTES);
                id[..n].copy_from_slice(&serial_src.as_bytes()[..n]);
                id
            }
        };
        if cfg.seg_max == 0 {
            return Err(invalid("seg_max", "must be at least 1".into()));
        }
        if cfg.max_discard_seg == 0 {
            return Err(invalid("max_discard_seg", "must be at least 1".into()));
        }
        let block_sectors = u64::from(bs) / SECTOR_SIZE;
        let m = u64::from(cfg.max_discard_sectors);
        if m == 0 || m % block_sectors != 0 {
            return Err(invalid(
                "max_discard_sectors",
                format!(
                    "{m} is not a non-zero multiple of {block_sectors} (the block size in sectors)"
                ),
            ));
        }
        let read_only = cfg.read_only || disk.read_only;
        let mut f = features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH
            | features::MQ
            | features::WRITE_ZEROES
            | features::CONFIG_WCE
            | vfeat::RING_EVENT_IDX
            | vfeat::RING_INDIRECT_DESC
            | vfeat::VERSION_1;
        if cfg.size_max > 0 {
            f |= features::SIZE_MAX;
        }
        if disk.unmap {
            f |= features::DISCARD;
        }
        if read_only {
            f |= features::RO;
        }
        let chunk = CHUNK.max(bs as usize);
        let queues = queues
            .into_iter()
            .map(|io| {
                Mutex::new(BlkQueue {
                    io,
                    buf: vec![0u8; chunk],
                    ranges: Vec::with_capacity(cfg.max_discard_seg.min(256) as usize),
                })
            })
            .collect();
        Ok(Self {
            disk,
            read_only,
            features: f,
            num_queues: cfg.num_queues,
            queue_size: q,
            seg_max: cfg.seg_max,
            size_max: cfg.size_max,
            max_dwz_sectors: cfg.max_discard_sectors,
            max_dwz_seg: cfg.max_discard_seg,
            serial,
            writeback: AtomicBool::new(true),
            queues,
            faults: Arc::new(Faults::new()),
        })
    }

    /// `struct virtio_blk_config` (virtio 1.2 §5.2.4), little-endian.
    fn config_space(&self) -> [u8; CONFIG_LEN] {
        fn put(c: &mut [u8], off: usize, bytes: &[u8]) {
            c[off..off + bytes.len()].copy_from_slice(bytes);
        }
        let bs = u64::from(self.disk.block_size);
        let capacity = self.disk.num_blocks.saturating_mul(bs / SECTOR_SIZE);
        let block_sectors = (bs / SECTOR_SIZE) as u32; // bs <= u32::MAX
        let mut c = [0u8; CONFIG_LEN];
        put(&mut c, 0, &capacity.to_le_bytes());
        put(&mut c, 8, &self.size_max.to_le_bytes());
        put(&mut c, 12, &self.seg_max.to_le_bytes());
        // 16..20 geometry, 24..32 topology: features not offered, left 0.
        put(&mut c, 20, &self.disk.block_size.to_le_bytes());
        c[CONFIG_WRITEBACK as usize] = u8::from(self.writeback.load(Ordering::Relaxed));
        put(&mut c, 34, &self.num_queues.to_le_bytes());
        put(&mut c, 36, &self.max_dwz_sectors.to_le_bytes());
        put(&mut c, 40, &self.max_dwz_seg.to_le_bytes());
        put(&mut c, 44, &block_sectors.to_le_bytes());
        put(&mut c, 48, &self.max_dwz_sectors.to_le_bytes());
        put(&mut c, 52, &self.max_dwz_seg.to_le_bytes());
        // 56 write_zeroes_may_unmap: 0, the bdev decides and may not deallocate.
        // 60..96 secure erase and zoned: features not offered, left 0.
        c
    }

    /// Serves one request chain; returns the used length.
    fn serve_request<T>(
        &self,
        q: &mut BlkQueue,
        mem: &Mem,
        chain: DescriptorChain<T>,
        fault: Option<Fault>,
    ) -> u32
    where
        T: Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let head = chain.head_index();
        let writer = Writer::new(mem, chain.clone());
        let reader = Reader::new(mem, chain);
        let mut data_w = match writer {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(target: TARGET, head, error = %e, "writable buffers outside the shared memory");
                return 0;
            }
        };
        let Some(last) = data_w.available_bytes().checked_sub(1) else {
            tracing::debug!(target: TARGET, head, "request without a status byte");
            return 0;
        };
        let mut status_w = match data_w.split_at(last) {
            Ok(w) => w,
            Err(_) => return 0,
        };
        let (st, written) = match reader {
            Ok(mut r) => self.execute(q, &mut r, &mut data_w, fault),
            Err(e) => {
                tracing::debug!(target: TARGET, head, error = %e, "readable buffers outside the shared memory");
                (status::IOERR, 0)
            }
        };
        let written = u32::try_from(written).unwrap_or(u32::MAX);
        if status_w.write_all(&[st]).is_err() {
            return written;
        }
        tracing::trace!(target: TARGET, head, status = st, written, "request done");
        written.saturating_add(1)
    }

    fn execute(
        &self,
        q: &mut BlkQueue,
        r: &mut Reader<'_>,
        w: &mut Writer<'_>,
        fault: Option<Fault>,
    ) -> Outcome {
        let mut hdr = [0u8; 16];
        if r.read_exact(&mut hdr).is_err() {
            tracing::debug!(target: TARGET, "request header shorter than 16 bytes");
            return (status::IOERR, 0);
        }
        let (type_, sector) = parse_header(&hdr);
        if let Some(Fault::BlkStatus(st)) = fault {
            return (st, 0);
        }
        match type_ {
            req::IN => self.read(q, sector, w),
            req::OUT => (self.write(q, sector, r), 0),
            req::FLUSH => (code(q.io.flush()), 0),
            req::GET_ID => self.get_id(w),
            req::DISCARD => (self.discard_or_zero(q, r, false), 0),
            req::WRITE_ZEROES => (self.discard_or_zero(q, r, true), 0),
            t => {
                tracing::debug!(target: TARGET, type_ = t, "unknown request type");
                (status::UNSUPP, 0)
            }
        }
    }

    /// Blocks `(lba, count)` of `bytes` bytes at `sector`, or `None` when they are not
    /// whole blocks on block boundaries within the disk.
    fn blocks(&self, sector: u64, bytes: u64) -> Option<(u64, u64)> {
        let bs = u64::from(self.disk.block_size);
        let off = sector.checked_mul(SECTOR_SIZE)?;
        if off % bs != 0 || bytes % bs != 0 {
            return None;
        }
        let (lba, n) = (off / bs, bytes / bs);
        (lba.checked_add(n)? <= self.disk.num_blocks).then_some((lba, n))
    }

    fn read(&self, q: &mut BlkQueue, sector: u64, w: &mut Writer<'_>) -> Outcome {
        let len = w.available_bytes();
        self.read_with(q, sector, len, &mut WriterDest(w))
    }

    /// Reads `len` bytes at `sector` into `dest`; returns the status and the bytes
    /// handed over (all of them, or none).
    fn read_with(
        &self,
        q: &mut BlkQueue,
        sector: u64,
        len: usize,
        dest: &mut dyn ReadDest,
    ) -> Outcome {
        let Some((lba, _)) = self.blocks(sector, len as u64) else {
            tracing::debug!(target: TARGET, sector, len, "read outside the disk or misaligned");
            return (status::IOERR, 0);
        };
        let bs = self.disk.block_size as usize;
        let mut dest = CorruptLast {
            inner: dest,
            left: len,
            faults: &self.faults,
        };
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(q.buf.len());
            let at = lba + (done / bs) as u64;
            match q.io.read_to(at, n, &mut q.buf, &mut dest) {
                Ok(true) => {}
                Ok(false) | Err(_) => return (status::IOERR, done),
            }
            done += n;
        }
        (status::OK, done)
    }

    fn write(&self, q: &mut BlkQueue, sector: u64, r: &mut Reader<'_>) -> u8 {
        let len = r.available_bytes();
        self.write_with(q, sector, len, &mut ReaderSrc(r))
    }

    /// Writes `len` bytes at `sector`, taking them in order from `src`.
    fn write_with(&self, q: &mut BlkQueue, sector: u64, len: usize, src: &mut dyn WriteSrc) -> u8 {
        if self.read_only {
            return status::IOERR;
        }
        let Some((lba, _)) = self.blocks(sector, len as u64) else {
            tracing::debug!(target: TARGET, sector, len, "write outside the disk or misaligned");
            return status::IOERR;
        };
        let bs = self.disk.block_size as usize;
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(q.buf.len());
            let at = lba + (done / bs) as u64;
            match q.io.write_from(at, n, &mut q.buf, src) {
                Ok(true) => {}
                Ok(false) | Err(_) => return status::IOERR,
            }
            done += n;
        }
        self.settle(q)
    }

    /// The fast path's IN and OUT ([`Device::serve_fast`]): a 16-byte header alone in the
    /// readable bytes for IN, a single status byte writable for OUT. Anything else is
    /// left to the general path.
    fn serve_segments(&self, q: &mut BlkQueue, mem: &Mem, segs: &Segments) -> Option<u32> {
        let mut hdr = [0u8; 16];
        if segs.writable_len() == 0 || !segs.read_at(mem, 0, &mut hdr) {
            return None;
        }
        let (type_, sector) = parse_header(&hdr);
        let data = segs.writable_len() - 1;
        let (st, written) = match type_ {
            req::IN if segs.readable_len() == 16 => {
                self.read_with(q, sector, data, &mut segs.dest_at(mem, 0))
            }
            req::OUT if data == 0 && !self.read_only => {
                let len = segs.readable_len() - 16;
                (
                    self.write_with(q, sector, len, &mut segs.src_at(mem, 16)),
                    0,
                )
            }
            _ => return None,
        };
        let written = u32::try_from(written).unwrap_or(u32::MAX);
        if !segs.write_at(mem, data, &[st]) {
            return Some(written);
        }
        Some(written.saturating_add(1))
    }

    /// In write-through mode, makes the write just done durable.
    fn settle(&self, q: &mut BlkQueue) -> u8 {
        if self.writeback.load(Ordering::Relaxed) {
            status::OK
        } else {
            code(q.io.flush())
        }
    }

    fn get_id(&self, w: &mut Writer<'_>) -> Outcome {
        if w.available_bytes() < ID_BYTES {
            tracing::debug!(target: TARGET, len = w.available_bytes(), "GET_ID buffer shorter than 20 bytes");
            return (status::IOERR, 0);
        }
        match w.write_all(&self.serial) {
            Ok(()) => (status::OK, ID_BYTES),
            Err(_) => (status::IOERR, w.bytes_written()),
        }
    }

    fn discard_or_zero(&self, q: &mut BlkQueue, r: &mut Reader<'_>, zero: bool) -> u8 {
        let feature = if zero {
            features::WRITE_ZEROES
        } else {
            features::DISCARD
        };
        if self.features & feature == 0 {
            return status::UNSUPP;
        }
        if self.read_only {
            return status::IOERR;
        }
        let len = r.available_bytes();
        if len == 0 || len % 16 != 0 {
            tracing::debug!(target: TARGET, len, "discard / write-zeroes segments not a multiple of 16 bytes");
            return status::IOERR;
        }
        if (len / 16) as u64 > u64::from(self.max_dwz_seg) {
            return status::UNSUPP;
        }
        let mut ranges = std::mem::take(&mut q.ranges);
        ranges.clear();
        let st = self.parse_segments(r, len / 16, zero, &mut ranges);
        let st = if st != status::OK {
            st
        } else {
            self.apply_segments(q, &ranges, zero)
        };
        q.ranges = ranges;
        st
    }

    /// Reads and checks every segment before any is applied.
    fn parse_segments(
        &self,
        r: &mut Reader<'_>,
        n: usize,
        zero: bool,
        out: &mut Vec<(u64, u64)>,
    ) -> u8 {
        for _ in 0..n {
            let mut b = [0u8; 16];
            if r.read_exact(&mut b).is_err() {
                return status::IOERR;
            }
            let mut s = [0u8; 8];
            s.copy_from_slice(&b[0..8]);
            let seg = DiscardWriteZeroes {
                sector: u64::from_le_bytes(s),
                num_sectors: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
                flags: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            };
            // §5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
            if seg.flags & !DiscardWriteZeroes::UNMAP != 0
                || (!zero && seg.flags & DiscardWriteZeroes::UNMAP != 0)
            {
                return status::UNSUPP;
            }
            if seg.num_sectors > self.max_dwz_sectors {
                return status::IOERR;
            }
            let Some(range) = self.blocks(seg.sector, u64::from(seg.num_sectors) * SECTOR_SIZE)
            else {
                tracing::debug!(target: TARGET, sector = seg.sector, num_sectors = seg.num_sectors, "discard / write-zeroes outside the disk or misaligned");
                return status::IOERR;
            };
            out.push(range);
        }
        status::OK
    }

    fn apply_segments(&self, q: &mut BlkQueue, ranges: &[(u64, u64)], zero: bool) -> u8 {
        for &(lba, n) in ranges {
            let r = if !zero {
                q.io.unmap(lba, n)
            } else if self.disk.write_zeroes {
                q.io.write_zeroes(lba, n)
            } else {
                self.write_zero_blocks(q, lba, n)
            };
            if r.is_err() {
                return code(r);
            }
        }
        self.settle(q)
    }

    /// WRITE_ZEROES for a bdev that cannot: plain writes of zeros.
    fn write_zero_blocks(
        &self,
        q: &mut BlkQueue,
        lba: u64,
        n: u64,
    ) -> std::result::Result<(), DiskError> {
        let bs = u64::from(self.disk.block_size);
        let per = q.buf.len() as u64 / bs;
        q.buf.fill(0);
        let mut done = 0;
        while done < n {
            let k = (n - done).min(per);
            q.io.write(lba + done, &q.buf[..(k * bs) as usize])?;
            done += k;
        }
        Ok(())
    }
}

/// A general-path read's destination: the chain's writable buffers (a [`Writer`], which
/// checked that they are the driver's when it was made).
struct WriterDest<'a, 'b>(&'a mut Writer<'b>);

impl ReadDest for WriterDest<'_, '_> {
    fn put(&mut self, data: &[u8]) -> bool {
        self.0.write_all(data).is_ok()
    }

    fn zeros(&mut self, n: usize) -> bool {
        put_zeros(n, |_, zeros| self.0.write_all(zeros).is_ok())
    }

    fn skip(&mut self, n: usize) -> bool {
        match self.0.split_at(n) {
            Ok(rest) => {
                *self.0 = rest;
                true
            }
            Err(_) => false,
        }
    }
}

/// A general-path write's source: the chain's readable buffers after the header.
struct ReaderSrc<'a, 'b>(&'a mut Reader<'b>);

impl WriteSrc for ReaderSrc<'_, '_> {
    fn take(&mut self, buf: &mut [u8]) -> bool {
        self.0.read_exact(buf).is_ok()
    }

    fn skip(&mut self, n: usize) -> bool {
        match self.0.split_at(n) {
            Ok(rest) => {
                *self.0 = rest;
                true
            }
            Err(_) => false,
        }
    }
}

/// `struct virtio_blk_req`'s header (§5.2.6): its type and sector (`ioprio` unused).
fn parse_header(hdr: &[u8; 16]) -> (u32, u64) {
    let [t0, t1, t2, t3, _, _, _, _, s @ ..] = *hdr;
    (u32::from_le_bytes([t0, t1, t2, t3]), u64::from_le_bytes(s))
}

/// The status byte for a disk operation's result.
fn code(r: std::result::Result<(), DiskError>) -> u8 {
    match r {
        Ok(()) => status::OK,
        Err(DiskError::Unsupported) => status::UNSUPP,
        Err(_) => status::IOERR,
    }
}

impl Device for BlkDevice {
    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config(&self) -> Vec<u8> {
        self.config_space().to_vec()
    }

    fn set_config(&self, offset: u32, data: &[u8]) -> std::io::Result<()> {
        // Only `writeback` is writable (CONFIG_WCE, §5.2.5).
        if offset == CONFIG_WRITEBACK && data.len() == 1 {
            let on = data[0] != 0;
            self.writeback.store(on, Ordering::Relaxed);
            tracing::debug!(target: TARGET, writeback = on, "cache mode set");
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "only writeback (offset 32, 1 byte) is writable",
        ))
    }

    fn reset(&self) {
        self.writeback.store(true, Ordering::Relaxed);
    }

    fn serve(&self, queue: u16, mem: &Mem, chain: Chain, fault: Option<Fault>) -> Option<u32> {
        // The server only asks for queues below num_queues.
        let slot = self.queues.get(usize::from(queue))?;
        // Uncontended: only this queue's worker serves it.
        let mut q = slot.lock().unwrap_or_else(|e| e.into_inner());
        Some(self.serve_request(&mut q, mem, chain, fault))
    }

    fn has_fast_path(&self) -> bool {
        true
    }

    fn serve_fast(&self, queue: u16, mem: &Mem, requests: &mut dyn Requests) {
        let Some(slot) = self.queues.get(usize::from(queue)) else {
            return;
        };
        // Once per batch (see `Device::serve_fast`).
        let mut q = slot.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(segs) = requests.next() {
            match self.serve_segments(&mut q, mem, segs) {
                Some(len) => requests.complete(len),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
