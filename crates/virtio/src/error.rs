//! Errors of the virtio library.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A device broke a rule of the ring (virtio 1.2 §2.7.8); `Copy` so that the data path
/// can carry it in completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A used element names a descriptor beyond the queue.
    #[error("used id {id} out of range (queue size {size})")]
    UsedIdOutOfRange {
        /// The id the device wrote.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// A used element names a descriptor that is not the head of a chain in flight.
    #[error("used id {id} is not a chain in flight")]
    UsedIdNotInFlight {
        /// The id the device wrote.
        id: u32,
    },
    /// used.idx moved further than the number of chains the device was given.
    #[error("used idx jumped from {last} to {idx} with only {in_flight} chains in flight")]
    UsedIdxJump {
        /// Our last used position.
        last: u16,
        /// The idx the device wrote.
        idx: u16,
        /// Chains the device could have returned.
        in_flight: u16,
    },
    /// A used element's len exceeds the writable space of its chain.
    #[error("used len {len} for id {id} exceeds the {writable} writable bytes")]
    UsedLenTooLarge {
        /// The chain's head.
        id: u32,
        /// The len the device wrote.
        len: u32,
        /// Writable bytes in the chain.
        writable: u64,
    },
}

/// Errors of the virtio library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A DMA buffer could not be allocated.
    #[error("cannot allocate {len} bytes of DMA memory aligned to {align}")]
    DmaAlloc {
        /// Requested length.
        len: usize,
        /// Requested alignment.
        align: usize,
    },
    /// A DMA region could not be created or mapped.
    #[error("cannot create DMA region")]
    DmaMap(#[source] std::io::Error),
    /// The global DMA domain exists already with another configuration.
    #[error("the DMA domain is already configured differently")]
    DmaAlreadyConfigured,
    /// A queue size that is not a power of two in 1..=32768.
    #[error("invalid queue size {size}: must be a power of two from 1 to 32768")]
    InvalidQueueSize {
        /// The size asked for.
        size: u32,
    },
    /// The device supports smaller queues than asked for.
    #[error("queue size {size} exceeds the device's maximum of {max}")]
    QueueTooLarge {
        /// The size asked for.
        size: u32,
        /// The device's limit.
        max: u32,
    },
    /// A queue cannot be reset while chains are in flight.
    #[error("queue has {in_flight} requests in flight")]
    QueueBusy {
        /// Chains in flight.
        in_flight: u16,
    },
    /// A ring rule was broken by the device.
    #[error("device broke the virtqueue protocol")]
    Queue(#[from] QueueError),
    /// Connecting to a vhost-user socket failed.
    #[error("cannot connect to vhost-user socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The target did not answer in time.
    #[error("vhost-user target did not answer {op} within {timeout_ms} ms")]
    Timeout {
        /// The message or phase that timed out.
        op: &'static str,
        /// The deadline.
        timeout_ms: u64,
    },
    /// A vhost-user message failed.
    #[error("vhost-user {op} failed")]
    VhostUser {
        /// The message.
        op: &'static str,
        /// Cause.
        #[source]
        source: vhost::Error,
    },
    /// The target hung up on, or did not answer, a memory table of 4 KiB-page regions.
    /// Targets built on DPDK's vhost library register shared memory in 2 MiB pages; SPDK
    /// v24.01 crashes on a region the kernel did not map 2 MiB-aligned, which only
    /// huge-page regions always are (a crash that dumps core may outlast the deadline).
    #[error(
        "the vhost-user target failed {op} of memory in 4 KiB pages (SPDK's targets need huge-page memory: reserve huge pages in /proc/sys/vm/nr_hugepages or use --hugetlb)"
    )]
    MemTableRefused {
        /// The message.
        op: &'static str,
        /// Cause.
        #[source]
        source: Box<Error>,
    },
    /// The connection to the device is gone.
    #[error("device disconnected")]
    Disconnected,
    /// The device lacks a feature the driver requires.
    #[error("device does not offer required feature {name}")]
    MissingFeature {
        /// Feature name.
        name: &'static str,
    },
    /// The device did not accept the feature set (FEATURES_OK not read back, §3.1.1).
    #[error("device rejected the features 0x{features:x}")]
    FeaturesRejected {
        /// Features the driver wrote.
        features: u64,
    },
    /// The device set DEVICE_NEEDS_RESET or the driver set FAILED (§2.1).
    #[error("device needs reset (status 0x{status:02x})")]
    NeedsReset {
        /// Device status byte.
        status: u8,
    },
    /// The device's configuration space holds an invalid value.
    #[error("invalid device config: {what}")]
    BadConfig {
        /// What is wrong.
        what: String,
    },
    /// More queues were asked for than the device has.
    #[error("{requested} request queues requested but the device has {available}")]
    TooManyQueues {
        /// Asked for.
        requested: u32,
        /// Offered.
        available: u32,
    },
    /// A queue index beyond what was set up.
    #[error("queue {index} does not exist")]
    NoSuchQueue {
        /// The index.
        index: u16,
    },
    /// A failure that belongs to a transport outside this crate (virtio-pci: register
    /// access, VFIO, the IOMMU; see the `vbdev-pci` crate), with its own message.
    #[error(transparent)]
    Transport(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
