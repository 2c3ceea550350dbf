//! What the server serves and how: the [`Device`] trait a device type implements, the
//! [`ServeOptions`] of a target, the [`Quirks`] that make it behave like another
//! target, and the errors of starting one.

use std::io;
use std::path::PathBuf;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

use super::Completer;
use crate::fast::Requests;
use crate::fault::Fault;

/// The frontend's memory as the target maps it.
pub type Mem = GuestMemoryMmap<()>;

/// A descriptor chain taken off a request queue.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<Mem>>;

/// Most request queues a target can have.
pub const MAX_QUEUES: u16 = 64;

/// Largest split virtqueue (virtio 1.2 §2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Result with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Errors of starting a target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A target option is out of range.
    #[error("invalid target option {option}: {why}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The socket path is taken by something that is not a socket.
    #[error("{} exists and is not a socket", path.display())]
    PathInUse {
        /// The path.
        path: PathBuf,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {}", path.display())]
    Listen {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A SCSI LUN could not be added, removed or resized.
    #[error("scsi target {target}")]
    Lun {
        /// The SCSI target id.
        target: u8,
        /// Cause.
        #[source]
        source: crate::scsi::LunError,
    },
    /// Opening the channels to the served bdev failed.
    #[error("cannot open a channel on bdev {bdev}")]
    Bdev {
        /// The bdev name.
        bdev: String,
        /// Cause.
        #[source]
        source: vbdev_bdev::Error,
    },
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A device type the server can run: what vhost-user needs to know about it, and how it
/// serves one request.
///
/// One value serves every frontend of a target, one after the other; [`Device::reset`]
/// runs before and after each. [`Device::serve`] and [`Device::serve_fast`] are called
/// for queue `q` one request (or batch) at a time, from the thread that serves the
/// queue (a polling thread serves several), or, for a request a `Delay` fault set aside
/// on a polling queue, from the thread that stops the ring.
pub trait Device: Send + Sync + 'static {
    /// Virtqueues, request queues and others (1 to [`MAX_QUEUES`]).
    fn num_queues(&self) -> u16;

    /// Largest queue size a frontend may set up (a power of two up to [`MAX_QUEUE_SIZE`]).
    fn max_queue_size(&self) -> u16;

    /// Virtio feature bits offered: device bits plus `VERSION_1` and the ring features
    /// the device handles. The server adds `VHOST_USER_F_PROTOCOL_FEATURES`.
    fn features(&self) -> u64;

    /// The whole device configuration space, as the device type defines it. The server
    /// answers `GET_CONFIG` from it ([`config_reply`](super::config_reply)).
    fn config(&self) -> Vec<u8>;

    /// Writes the configuration space (`SET_CONFIG`).
    ///
    /// # Errors
    /// When the range is not writable; the default refuses everything.
    fn set_config(&self, offset: u32, data: &[u8]) -> io::Result<()> {
        let _ = (offset, data);
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "configuration space is read-only",
        ))
    }

    /// Back to the power-on state, before a new frontend is served and after one is
    /// gone. Drops any [`Completer`] and kept chain of the old connection.
    fn reset(&self) {}

    /// The feature bits the driver accepted (`SET_FEATURES`), transport bits included.
    fn set_features(&self, features: u64) {
        let _ = features;
    }

    /// Whether `queue` carries requests (the default: all do). Faults apply, and
    /// polling spins, only on request queues; the others are served on kicks.
    fn is_request_queue(&self, queue: u16) -> bool {
        let _ = queue;
        true
    }

    /// Gives the device `queue`'s [`Completer`] for this connection, before the
    /// queue's first chain is served. Default: dropped (the device keeps no chains).
    fn queue_ready(&self, queue: u16, completer: Completer) {
        let _ = (queue, completer);
    }

    /// Serves one request of queue `queue`: reads it from `chain`, does it, writes the
    /// answer into the chain's writable buffers and returns the used length (bytes
    /// written, status included), which the server puts on the used ring. `None` keeps
    /// the chain off the used ring: the device completes it later with the queue's
    /// [`Completer`] (a virtio-scsi event queue holds its buffers until an event), or
    /// never.
    ///
    /// `fault` is the fault [`Faults::decide`](crate::fault::Faults::decide) chose for this request; the device applies
    /// the ones that concern it (`BlkStatus`, `ScsiSense`) and ignores the rest, which
    /// the server handles.
    fn serve(&self, queue: u16, mem: &Mem, chain: Chain, fault: Option<Fault>) -> Option<u32>;

    /// The frontend stopped `queue` (`GET_VRING_BASE`: a device reset, or a stop before
    /// the ring is handed over). The device lets go of every chain of `queue` it kept
    /// ([`Device::serve`] returned `None`) and returns how many; those must be the last
    /// chains taken off the queue's avail ring. The server gives them back to the ring:
    /// the base it reports points at the first of them, so a frontend that restarts the
    /// ring from there hands them out again, and one that resets the device forgets
    /// them with the old ring (a kept chain completed on the new ring would write into
    /// freed memory and name a descriptor the driver never made). Default: 0.
    fn queue_stopped(&self, queue: u16) -> u16 {
        let _ = queue;
        0
    }

    /// Whether the device has a fast path ([`Device::serve_fast`]); polling request
    /// queues then use it while no fault is armed. Default: no.
    fn has_fast_path(&self) -> bool {
        false
    }

    /// Serves a batch of polling request queue `queue`'s requests from their resolved
    /// buffers ([`crate::fast`]): takes each with [`Requests::next`] and completes it with
    /// [`Requests::complete`] and its used length, as [`Device::serve`] returns it.
    /// Returning with a request taken and not completed declines it: the server then
    /// serves it through [`Device::serve`]. A device declines before it has done anything
    /// with the request. One call per batch (up to 32 requests), so per-queue state is
    /// locked once per batch: an atomic read-modify-write per request would wait, each
    /// time, for the cache misses on the driver's ring before it. Default: declines the
    /// first request.
    fn serve_fast(&self, queue: u16, mem: &Mem, requests: &mut dyn Requests) {
        let _ = (queue, mem, requests.next());
    }
}

/// Where and how to serve a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The Unix socket path to listen on. A stale socket there is replaced.
    pub socket: PathBuf,
    /// Busy-poll the request queues instead of waiting for kicks.
    pub poll: bool,
    /// Polling threads: the request queues are shared out among them, queue `i` of the
    /// request queues to thread `i % poll_threads`, and each thread polls all of its
    /// queues in turn. From 1 to the number of request queues; ignored without `poll`.
    pub poll_threads: u16,
    /// Behave like another target where initiators notice ([`Quirks`]).
    pub quirks: Quirks,
}

/// Ways in which other vhost-user targets differ from ours, which an initiator must
/// cope with: the target offers less, or answers slowly. For regression tests of
/// interoperability (a stand-in, never the proof: the proof is a run against the real
/// target). Default: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Offer no `VHOST_USER_PROTOCOL_F_CONFIG`: the configuration space cannot be read
    /// (SPDK's vhost-scsi, every version).
    pub no_config: bool,
    /// Offer no `VHOST_USER_PROTOCOL_F_MQ`: the frontend cannot ask how many queues
    /// there are (`GET_QUEUE_NUM`).
    pub no_mq: bool,
    /// Offer no `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS`: memory can only be shared
    /// with `SET_MEM_TABLE` (DPDK's vhost library, under SPDK's targets).
    pub no_mem_slots: bool,
    /// Offer no `VIRTIO_RING_F_EVENT_IDX`: notifications are governed by the ring flags
    /// alone (SPDK's targets).
    pub no_event_idx: bool,
    /// Hold each memory-table reply (`SET_MEM_TABLE`, `ADD_MEM_REG`) this many
    /// microseconds per MiB of memory in the table. SPDK's targets map every region
    /// with `MAP_POPULATE` and look each 4 KiB page up in `/proc/self/pagemap`: about
    /// 5 ms per MiB on a 2-core VM.
    pub mem_table_us_per_mib: u32,
    /// Answer a completed LOGICAL UNIT RESET or I_T NEXUS RESET with
    /// `VIRTIO_SCSI_S_FUNCTION_SUCCEEDED` instead of FUNCTION COMPLETE (Linux's
    /// vhost-scsi does).
    pub tmf_succeeded: bool,
}

impl Quirks {
    /// SPDK's vhost-scsi target (v24.01 to v26.05, on DPDK's vhost library): no
    /// CONFIG, no memory slots, no EVENT_IDX, a slow memory table.
    pub fn spdk_scsi() -> Self {
        Self {
            no_config: true,
            ..Self::spdk_blk()
        }
    }

    /// SPDK's vhost-blk target: as [`Quirks::spdk_scsi`], with CONFIG.
    pub fn spdk_blk() -> Self {
        Self {
            no_config: false,
            no_mq: false,
            no_mem_slots: true,
            no_event_idx: true,
            mem_table_us_per_mib: 5000,
            tmf_succeeded: false,
        }
    }
}
