//! Virtio over PCI (virtio 1.2 §4.1), the parts that need no device: the capability
//! walk of a function's configuration space ([`parse_config_space`]), BAR register
//! access behind a trait ([`PciBars`]), the common configuration registers
//! ([`CommonCfg`]), doorbell addresses ([`NotifyCap::doorbell`]) and device-config reads
//! that honour `config_generation`.
//!
//! Transitional device IDs pass only with the modern capabilities present
//! ([`PciError::LegacyOnly`] otherwise): there is no legacy I/O-port interface
//! (§4.1.5.1.1). [`CommonCfg`] takes `&mut self` for everything that writes a select
//! register, so its users keep it in a `Mutex` (select-then-access pairs must not
//! interleave).
#![deny(unsafe_code)]

mod common;
#[cfg(test)]
mod tests;

pub use common::*;

use std::fmt;
use std::mem::offset_of;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vbdev_virtio::mem::Iova;
use vbdev_virtio::split::{MAX_QUEUE_SIZE, RingAddrs};

const TARGET: &str = "vbdev::pci";

/// PCI vendor ID of every virtio function (virtio 1.2 §4.1.2).
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern PCI device IDs are this plus the virtio device ID (§4.1.2).
pub const MODERN_DEVICE_ID_BASE: u16 = 0x1040;
/// Last PCI device ID of the virtio range (§4.1.2).
pub const DEVICE_ID_LAST: u16 = 0x107f;
/// First transitional PCI device ID (§4.1.2).
pub const TRANSITIONAL_DEVICE_ID_FIRST: u16 = 0x1000;
/// Modern virtio-blk.
pub const DEVICE_ID_BLK: u16 = 0x1042;
/// Modern virtio-scsi.
pub const DEVICE_ID_SCSI: u16 = 0x1048;
/// Transitional virtio-blk.
pub const TRANSITIONAL_DEVICE_ID_BLK: u16 = 0x1001;
/// Transitional virtio-scsi.
pub const TRANSITIONAL_DEVICE_ID_SCSI: u16 = 0x1004;

/// `VIRTIO_MSI_NO_VECTOR`: no MSI-X vector for this event (§4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// Most attempts of a device-config read before the generation is declared unstable.
pub const CONFIG_READ_ATTEMPTS: u32 = 16;

/// Offsets in the type 0 configuration header (PCI Local Bus 3.0 §6.1) and the bits of
/// it this module uses.
pub mod header {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: usize = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status register (16 bits).
    pub const STATUS: usize = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION_ID: usize = 0x08;
    /// Header type (8 bits; bit 7 is "multi-function").
    pub const HEADER_TYPE: usize = 0x0e;
    /// First base address register.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer (8 bits, low 2 bits reserved).
    pub const CAP_PTR: usize = 0x34;
    /// Bytes of the header; capabilities live after it.
    pub const LEN: usize = 0x40;
    /// End of the standard capability list's space (extended capabilities start here).
    pub const CAP_SPACE_END: usize = 0x100;
    /// Status: the function has a capability list (bit 4).
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// Command: respond to memory space accesses.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command: the function may master the bus (DMA).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Command: INTx disabled.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// Capability ID of a vendor-specific capability (virtio's, §4.1.4).
    pub const CAP_ID_VENDOR: u8 = 0x09;
    /// Capability ID of MSI-X (PCI Local Bus 3.0 §6.8.2).
    pub const CAP_ID_MSIX: u8 = 0x11;
}

/// Feature bits (virtio 1.2 §6) that concern the PCI transport rather than the device.
pub mod transport_features {
    /// The device's DMA goes through the platform's IOMMU (VIRTIO_F_ACCESS_PLATFORM).
    pub const ACCESS_PLATFORM: u64 = vbdev_virtio::device::features::ACCESS_PLATFORM;
    /// Doorbells carry 32 bits of extra data (VIRTIO_F_NOTIFICATION_DATA); never accepted.
    pub const NOTIFICATION_DATA: u64 = 1 << 38;
    /// Doorbells carry `queue_notify_data` instead of the index (VIRTIO_F_NOTIF_CONFIG_DATA).
    pub const NOTIF_CONFIG_DATA: u64 = 1 << 39;
    /// Queues can be reset one by one through `queue_reset` (VIRTIO_F_RING_RESET).
    pub const RING_RESET: u64 = 1 << 40;
}

/// The virtio device ID (virtio 1.2 §5), e.g. 2 for a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VirtioId(pub u16);

impl VirtioId {
    /// Network device.
    pub const NET: Self = Self(1);
    /// Block device.
    pub const BLOCK: Self = Self(2);
    /// Console.
    pub const CONSOLE: Self = Self(3);
    /// Entropy source.
    pub const ENTROPY: Self = Self(4);
    /// Traditional memory balloon.
    pub const BALLOON: Self = Self(5);
    /// SCSI host.
    pub const SCSI: Self = Self(8);
    /// 9P transport.
    pub const NINE_P: Self = Self(9);

    /// The ID a transitional PCI device ID stands for (the table of §4.1.2).
    pub fn from_transitional(device_id: u16) -> Option<Self> {
        Some(match device_id {
            0x1000 => Self::NET,
            0x1001 => Self::BLOCK,
            0x1002 => Self::BALLOON,
            0x1003 => Self::CONSOLE,
            0x1004 => Self::SCSI,
            0x1005 => Self::ENTROPY,
            0x1009 => Self::NINE_P,
            _ => return None,
        })
    }
}

/// `cfg_type` of a virtio structure capability (virtio 1.2 §4.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CfgType(pub u8);

impl CfgType {
    /// VIRTIO_PCI_CAP_COMMON_CFG.
    pub const COMMON: Self = Self(1);
    /// VIRTIO_PCI_CAP_NOTIFY_CFG.
    pub const NOTIFY: Self = Self(2);
    /// VIRTIO_PCI_CAP_ISR_CFG.
    pub const ISR: Self = Self(3);
    /// VIRTIO_PCI_CAP_DEVICE_CFG.
    pub const DEVICE: Self = Self(4);
    /// VIRTIO_PCI_CAP_PCI_CFG.
    pub const PCI_CFG: Self = Self(5);
    /// VIRTIO_PCI_CAP_SHARED_MEMORY_CFG (not used by this driver).
    pub const SHARED_MEMORY: Self = Self(8);
    /// VIRTIO_PCI_CAP_VENDOR_CFG (not used by this driver).
    pub const VENDOR: Self = Self(9);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::COMMON => "common",
            Self::NOTIFY => "notify",
            Self::ISR => "isr",
            Self::DEVICE => "device",
            Self::PCI_CFG => "pci_cfg",
            Self::SHARED_MEMORY => "shared_memory",
            Self::VENDOR => "vendor",
            _ => return None,
        })
    }
}

impl fmt::Display for CfgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "type {}", self.0),
        }
    }
}

/// A base address register index.
///
/// # Invariants
/// The index is in `0..=5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BarIndex(u8);

impl BarIndex {
    /// The BAR `index`, or `None` when it is not 0 to 5.
    pub const fn new(index: u8) -> Option<Self> {
        if index <= 5 { Some(Self(index)) } else { None }
    }

    /// The index, 0 to 5.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for BarIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BAR{}", self.0)
    }
}

/// Errors of the PCI layer: a config space or device that breaks the rules, or a
/// register access that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PciError {
    /// Fewer bytes than the 64-byte header.
    #[error("config space of {len} bytes is shorter than the 64-byte header")]
    ConfigSpaceTooShort {
        /// Bytes given.
        len: usize,
    },
    /// Not a virtio function (§4.1.2: vendor 0x1af4, device 0x1000..=0x107f).
    #[error("{vendor:04x}:{device:04x} is not a virtio PCI function")]
    NotVirtio {
        /// PCI vendor ID.
        vendor: u16,
        /// PCI device ID.
        device: u16,
    },
    /// A header type other than 0 (a bridge, or garbage).
    #[error("header type {header_type:#04x} is not a type 0 (endpoint) header")]
    NotAnEndpoint {
        /// Header type without the multi-function bit.
        header_type: u8,
    },
    /// A transitional device without the virtio 1.x capabilities: only the legacy
    /// interface, which this driver does not implement (§4.1.5.1.1).
    #[error(
        "transitional device 1af4:{device:04x} has no virtio 1.x capabilities; the legacy interface is not supported"
    )]
    LegacyOnly {
        /// PCI device ID.
        device: u16,
    },
    /// A capability pointer into the header or past the capability space.
    #[error("capability pointer {ptr:#04x} (from {from:#04x}) is outside 0x40..0x100")]
    CapPointerOutOfRange {
        /// Where the pointer was read (0x34 for the list head).
        from: usize,
        /// The pointer, low two bits masked.
        ptr: u8,
    },
    /// The capability list comes back to a capability it has visited.
    #[error("capability list loops back to {ptr:#04x}")]
    CapLoop {
        /// The capability seen twice.
        ptr: u8,
    },
    /// A capability whose bytes run past the capability space (or past the bytes given).
    #[error("capability at {at:#04x} needs {need} bytes but only {avail} remain")]
    CapTruncated {
        /// Position of the capability.
        at: u8,
        /// Bytes it needs (its structure, or its `cap_len` if larger).
        need: usize,
        /// Bytes from `at` to the end of the capability space.
        avail: usize,
    },
    /// A virtio capability whose `cap_len` is smaller than its structure.
    #[error("{cfg_type} capability at {at:#04x} has cap_len {cap_len}, needs {need}")]
    CapTooShort {
        /// Position of the capability.
        at: u8,
        /// Its type.
        cfg_type: CfgType,
        /// The `cap_len` it claims.
        cap_len: u8,
        /// The size of its structure.
        need: u8,
    },
    /// `offset + length` of a capability does not fit in 32 bits.
    #[error("{cfg_type} capability: offset {offset:#x} + length {length:#x} overflows 32 bits")]
    CapRangeOverflow {
        /// Its type.
        cfg_type: CfgType,
        /// The offset in the BAR.
        offset: u32,
        /// The length.
        length: u32,
    },
    /// A structure at an offset its section forbids (§4.1.4.3.1, §4.1.4.4.1, §4.1.4.6.1).
    #[error("{cfg_type} structure at offset {offset:#x} is not {align}-byte aligned")]
    CapMisaligned {
        /// Its type.
        cfg_type: CfgType,
        /// The offset in the BAR.
        offset: u32,
        /// The alignment required.
        align: u32,
    },
    /// A structure too short to hold its registers.
    #[error("{cfg_type} structure of {length} bytes is shorter than the {need} bytes needed")]
    CapTooSmall {
        /// Its type.
        cfg_type: CfgType,
        /// The `length` the capability gives.
        length: u32,
        /// Bytes needed.
        need: u32,
    },
    /// `notify_off_multiplier` is neither 0 nor an even power of two (§4.1.4.4.1).
    #[error("notify_off_multiplier {multiplier} is neither 0 nor an even power of two")]
    BadNotifyMultiplier {
        /// The value read.
        multiplier: u32,
    },
    /// A required virtio capability is absent (or every instance of it was ignored for a
    /// reserved BAR, §4.1.4.1).
    #[error("no usable {cfg_type} capability")]
    MissingCap {
        /// The type missing.
        cfg_type: CfgType,
    },
    /// A capability names a BAR the function does not have (or that is not mapped).
    #[error("{cfg_type} structure is in {bar}, which is not available")]
    BarMissing {
        /// Its type.
        cfg_type: CfgType,
        /// The BAR.
        bar: BarIndex,
    },
    /// A structure extends past the end of its BAR.
    #[error("{cfg_type} structure ends at {end:#x}, past the end of {bar} ({bar_len:#x} bytes)")]
    CapBeyondBar {
        /// Its type.
        cfg_type: CfgType,
        /// The BAR.
        bar: BarIndex,
        /// `offset + length`.
        end: u64,
        /// The BAR's size.
        bar_len: u64,
    },
    /// A BAR access outside the BAR, misaligned, or of a width the register does not
    /// take (§4.1.3.1).
    #[error("bad {width}-byte access to {bar} at {offset:#x}")]
    BadAccess {
        /// The BAR.
        bar: BarIndex,
        /// Offset in the BAR.
        offset: u64,
        /// Access width in bytes.
        width: u8,
    },
    /// A BAR access failed in the system (for example `pread` on a VFIO region).
    #[error("{width}-byte access to {bar} at {offset:#x} failed")]
    BarIo {
        /// The BAR.
        bar: BarIndex,
        /// Offset in the BAR.
        offset: u64,
        /// Access width in bytes.
        width: u8,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `device_status` reads 0xff, which no live device presents (bits 4 and 5 are
    /// reserved, §2.1): the function is gone (surprise removal) or its BARs are.
    #[error("device reads all ones: it was removed")]
    DeviceGone,
    /// The device did not present 0 in `device_status` in time after a reset
    /// (§4.1.4.3.2: the driver waits for it).
    #[error("device status still {status:#04x} {waited_ms} ms after reset")]
    ResetTimeout {
        /// Last status read.
        status: u8,
        /// How long the driver waited.
        waited_ms: u64,
    },
    /// The common configuration structure is too short for the field (fields after
    /// `queue_device` are virtio 1.2 additions).
    #[error("common configuration of {len} bytes has no {field}")]
    FieldAbsent {
        /// The register.
        field: &'static str,
        /// Length of the structure.
        len: u32,
    },
    /// A queue index at or beyond `num_queues`.
    #[error("queue {index} does not exist (the device has {num_queues})")]
    NoSuchQueue {
        /// The index.
        index: u16,
        /// What the device reports.
        num_queues: u16,
    },
    /// `queue_size` reads 0: the queue is unavailable (§4.1.4.3).
    #[error("queue {index} is unavailable (queue_size 0)")]
    QueueUnavailable {
        /// The index.
        index: u16,
    },
    /// A queue size that is not a power of two from 1 to 32768 (split rings, §2.7).
    #[error("invalid queue size {size}: must be a power of two from 1 to 32768")]
    InvalidQueueSize {
        /// The size asked for.
        size: u16,
    },
    /// The driver asked for more descriptors than the device's `queue_size`.
    #[error("queue {index}: size {size} exceeds the device's maximum of {max}")]
    QueueTooLarge {
        /// The index.
        index: u16,
        /// Asked for.
        size: u16,
        /// The device's limit.
        max: u16,
    },
    /// The device did not keep the queue size the driver wrote.
    #[error("queue {index}: device kept size {kept} after {size} was written")]
    QueueSizeRejected {
        /// The index.
        index: u16,
        /// Written.
        size: u16,
        /// Read back.
        kept: u16,
    },
    /// The queue is enabled already; its registers must be set before enabling
    /// (§4.1.4.3.2) and there is no going back without a reset.
    #[error("queue {index} is already enabled")]
    QueueAlreadyEnabled {
        /// The index.
        index: u16,
    },
    /// The device answered NO_VECTOR (or another value) to an MSI-X mapping (§4.1.5.1.2).
    #[error("queue {index}: MSI-X vector {vector} rejected (reads back {read:#06x})")]
    MsixVectorRejected {
        /// The index, or `u16::MAX` for `config_msix_vector`.
        index: u16,
        /// The vector written.
        vector: u16,
        /// What the device presents.
        read: u16,
    },
    /// A doorbell outside the notify structure (§4.1.4.4.1: `cap.length >=
    /// queue_notify_off * notify_off_multiplier + 2`).
    #[error(
        "queue {queue}: notify offset {notify_off} x {multiplier} + 2 exceeds the notify structure's {length} bytes"
    )]
    NotifyOutOfRange {
        /// The queue.
        queue: u16,
        /// Its `queue_notify_off`.
        notify_off: u16,
        /// `notify_off_multiplier`.
        multiplier: u32,
        /// Length of the notify structure.
        length: u32,
    },
    /// A device-config read beyond the device-specific structure.
    #[error("device config read of {len} bytes at {offset} exceeds its {size} bytes")]
    ConfigOutOfRange {
        /// Offset asked for.
        offset: u32,
        /// Bytes asked for.
        len: usize,
        /// Length of the structure.
        size: u32,
    },
    /// `config_generation` changed during every one of the attempts (§2.5.1).
    #[error("device config kept changing over {attempts} reads")]
    ConfigUnstable {
        /// Reads tried.
        attempts: u32,
    },
}

/// Result with [`PciError`].
pub type Result<T> = std::result::Result<T, PciError>;

/// PCI identification of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID (0x1af4 for virtio).
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// One virtio structure capability (`struct virtio_pci_cap`, virtio 1.2 §4.1.4).
///
/// [`parse_config_space`] only returns capabilities whose `offset + length` fits in 32
/// bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioCap {
    /// Position of the capability in config space.
    pub at: u8,
    /// Which structure it describes.
    pub cfg_type: CfgType,
    /// The BAR that holds the structure.
    pub bar: BarIndex,
    /// `id` (meaningful for some types only).
    pub id: u8,
    /// Offset of the structure in the BAR.
    pub offset: u32,
    /// Length of the structure.
    pub length: u32,
}

impl VirtioCap {
    /// `offset + length`: the end of the structure in its BAR.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.length)
    }
}

/// The notification capability (`struct virtio_pci_notify_cap`, §4.1.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyCap {
    /// The structure.
    pub cap: VirtioCap,
    /// `notify_off_multiplier`: 0 or an even power of two.
    pub multiplier: u32,
}

/// Where and what to write to notify one queue (§4.1.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doorbell {
    /// The notify BAR.
    pub bar: BarIndex,
    /// Byte offset in the BAR, 2-byte aligned.
    pub offset: u64,
    /// The 16-bit value: the queue index, or `queue_notify_data`.
    pub value: u16,
}

impl Doorbell {
    /// Rings the doorbell through `bars` (a 16-bit write); the transport's
    /// `MmioDoorbell` does the same store into a mapping.
    ///
    /// # Errors
    /// When the BAR write fails.
    pub fn ring(&self, bars: &(impl PciBars + ?Sized)) -> Result<()> {
        bars.write16(self.bar, self.offset, self.value)
    }
}

impl NotifyCap {
    /// The doorbell of queue `queue`, whose `queue_notify_off` is `notify_off`:
    /// `cap.offset + notify_off * notify_off_multiplier` (§4.1.4.4). `notify_data` is
    /// the queue's `queue_notify_data` when VIRTIO_F_NOTIF_CONFIG_DATA was negotiated,
    /// written instead of the index (§4.1.5.2).
    ///
    /// # Errors
    /// [`PciError::NotifyOutOfRange`] when the 2-byte doorbell is not inside the notify
    /// structure (§4.1.4.4.1); [`PciError::CapMisaligned`] when it would not be 2-byte
    /// aligned (never for a parsed layout).
    pub fn doorbell(
        &self,
        queue: u16,
        notify_off: u16,
        notify_data: Option<u16>,
    ) -> Result<Doorbell> {
        // u16 * u32 < 2^48: no overflow in u64.
        let rel = u64::from(notify_off) * u64::from(self.multiplier);
        if rel + 2 > u64::from(self.cap.length) {
            return Err(PciError::NotifyOutOfRange {
                queue,
                notify_off,
                multiplier: self.multiplier,
                length: self.cap.length,
            });
        }
        let offset = u64::from(self.cap.offset) + rel;
        // Parsed layouts have an even offset and a multiplier of 0 or an even number.
        if offset % 2 != 0 {
            return Err(PciError::CapMisaligned {
                cfg_type: CfgType::NOTIFY,
                offset: self.cap.offset,
                align: 2,
            });
        }
        Ok(Doorbell {
            bar: self.cap.bar,
            offset,
            value: notify_data.unwrap_or(queue),
        })
    }
}

/// The MSI-X capability (PCI Local Bus 3.0 §6.8.2), for interrupt setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    /// Position of the capability.
    pub at: u8,
    /// Number of table entries (Table Size + 1).
    pub table_size: u16,
    /// BAR of the vector table.
    pub table_bar: BarIndex,
    /// Offset of the table in its BAR.
    pub table_offset: u32,
    /// BAR of the pending-bit array.
    pub pba_bar: BarIndex,
    /// Offset of the PBA in its BAR.
    pub pba_offset: u32,
}

/// What a virtio function's config space says: identity and where its structures are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciLayout {
    /// PCI identification.
    pub ids: PciIds,
    /// The virtio device type.
    pub virtio_id: VirtioId,
    /// Whether the PCI device ID is a transitional one (0x1000..=0x103f).
    pub transitional: bool,
    /// The common configuration structure (§4.1.4.3).
    pub common: VirtioCap,
    /// The notification structure (§4.1.4.4).
    pub notify: NotifyCap,
    /// The ISR status byte (§4.1.4.5); only needed for INTx.
    pub isr: Option<VirtioCap>,
    /// The device-specific configuration (§4.1.4.6).
    pub device: VirtioCap,
    /// The PCI configuration access capability, if any.
    pub pci_cfg: Option<VirtioCap>,
    /// The MSI-X capability, if any and well formed.
    pub msix: Option<MsixCap>,
}

impl VirtioPciLayout {
    /// The structures the driver uses, for mapping.
    pub fn used_caps(&self) -> impl Iterator<Item = VirtioCap> + '_ {
        [
            Some(self.common),
            Some(self.notify.cap),
            self.isr,
            Some(self.device),
        ]
        .into_iter()
        .flatten()
    }

    /// Checks that every used structure lies inside its BAR; `bar_len` gives a BAR's size
    /// (from `VFIO_DEVICE_GET_REGION_INFO` or the sysfs resource file), `None` when the
    /// BAR is absent or cannot be mapped.
    ///
    /// # Errors
    /// [`PciError::BarMissing`] or [`PciError::CapBeyondBar`].
    pub fn check_bars(&self, bar_len: impl Fn(BarIndex) -> Option<u64>) -> Result<()> {
        for cap in self.used_caps() {
            let Some(len) = bar_len(cap.bar) else {
                return Err(PciError::BarMissing {
                    cfg_type: cap.cfg_type,
                    bar: cap.bar,
                });
            };
            let end = cap.end();
            if end > len {
                return Err(PciError::CapBeyondBar {
                    cfg_type: cap.cfg_type,
                    bar: cap.bar,
                    end,
                    bar_len: len,
                });
            }
        }
        Ok(())
    }
}

/// `struct virtio_pci_cap` (§4.1.4), for the offsets the parser reads.
#[repr(C)]
#[allow(dead_code)] // a layout description: only `offset_of!` reads it
struct VirtioPciCapLayout {
    cap_vndr: u8,
    cap_next: u8,
    cap_len: u8,
    cfg_type: u8,
    bar: u8,
    id: u8,
    padding: [u8; 2],
    offset: u32,
    length: u32,
}

/// `struct virtio_pci_notify_cap` (§4.1.4.4).
#[repr(C)]
#[allow(dead_code)] // a layout description: only `offset_of!` reads it
struct VirtioPciNotifyCapLayout {
    cap: VirtioPciCapLayout,
    notify_off_multiplier: u32,
}

const CAP_LEN: usize = size_of::<VirtioPciCapLayout>();
const NOTIFY_CAP_LEN: usize = size_of::<VirtioPciNotifyCapLayout>();
/// `struct virtio_pci_cfg_cap`: the capability and 4 bytes of window.
const PCI_CFG_CAP_LEN: usize = CAP_LEN + 4;
/// Message Control, Table Offset/BIR and PBA Offset/BIR after the 2-byte header.
const MSIX_CAP_LEN: usize = 12;

const _: () = assert!(CAP_LEN == 16);
const _: () = assert!(NOTIFY_CAP_LEN == 20);
const _: () = assert!(offset_of!(VirtioPciCapLayout, cfg_type) == 3);
const _: () = assert!(offset_of!(VirtioPciCapLayout, bar) == 4);
const _: () = assert!(offset_of!(VirtioPciCapLayout, id) == 5);
const _: () = assert!(offset_of!(VirtioPciCapLayout, offset) == 8);
const _: () = assert!(offset_of!(VirtioPciCapLayout, length) == 12);
const _: () = assert!(offset_of!(VirtioPciNotifyCapLayout, notify_off_multiplier) == 16);

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Walks the standard capability list (PCI Local Bus 3.0 §6.7) of `cfg` and yields
/// `(position, capability ID)`. Ends at a null pointer; fails on pointers into the
/// header or past `limit`, on loops, and on headers that do not fit.
struct CapWalk<'a> {
    cfg: &'a [u8],
    /// `min(cfg.len(), 0x100)`.
    limit: usize,
    from: usize,
    ptr: u8,
    /// Bit `p >> 2` set once position `p` was visited (positions are dword aligned).
    visited: u64,
    done: bool,
}

impl<'a> CapWalk<'a> {
    fn new(cfg: &'a [u8]) -> Self {
        let has_list = le16(cfg, header::STATUS) & header::STATUS_CAP_LIST != 0;
        Self {
            cfg,
            limit: cfg.len().min(header::CAP_SPACE_END),
            from: header::CAP_PTR,
            // The low two bits are reserved and must be masked (PCI 3.0 §6.7).
            ptr: cfg[header::CAP_PTR] & !3,
            visited: 0,
            done: !has_list,
        }
    }
}

impl Iterator for CapWalk<'_> {
    type Item = Result<(u8, u8)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.ptr == 0 {
            return None;
        }
        let ptr = self.ptr;
        let at = usize::from(ptr);
        let fail = |e| Some(Err(e));
        if at < header::LEN {
            self.done = true;
            return fail(PciError::CapPointerOutOfRange {
                from: self.from,
                ptr,
            });
        }
        if at + 2 > self.limit {
            self.done = true;
            return fail(PciError::CapTruncated {
                at: ptr,
                need: 2,
                avail: self.limit.saturating_sub(at),
            });
        }
        let bit = 1u64 << (ptr >> 2); // ptr >> 2 < 64
        if self.visited & bit != 0 {
            self.done = true;
            return fail(PciError::CapLoop { ptr });
        }
        self.visited |= bit;
        self.from = at + 1;
        self.ptr = self.cfg[at + 1] & !3;
        Some(Ok((ptr, self.cfg[at])))
    }
}

/// A vendor capability that is virtio's and usable, or the reason to skip it.
enum Parsed {
    Cap(VirtioCap, Option<u32>),
    /// Reserved `cfg_type` or `bar`: the driver MUST ignore it (§4.1.4.1).
    Ignored,
}

fn parse_virtio_cap(cfg: &[u8], limit: usize, at: u8) -> Result<Parsed> {
    let pos = usize::from(at);
    let avail = limit - pos; // pos + 2 <= limit (CapWalk)
    if avail < 4 {
        return Err(PciError::CapTruncated { at, need: 4, avail });
    }
    let cap_len = cfg[pos + 2];
    let cfg_type = CfgType(cfg[pos + 3]);
    let need = match cfg_type {
        CfgType::NOTIFY => NOTIFY_CAP_LEN,
        CfgType::PCI_CFG => PCI_CFG_CAP_LEN,
        _ => CAP_LEN,
    };
    if !(1..=5).contains(&cfg_type.0) {
        tracing::debug!(target: TARGET, at, cfg_type = cfg_type.0, "ignoring virtio capability of a reserved or unused type");
        return Ok(Parsed::Ignored);
    }
    if usize::from(cap_len) < need {
        return Err(PciError::CapTooShort {
            at,
            cfg_type,
            cap_len,
            need: need as u8, // at most 20
        });
    }
    // cap_len may be larger than the structure (§4.1.4.1) but must stay in config space.
    let span = usize::from(cap_len);
    if span > avail {
        return Err(PciError::CapTruncated {
            at,
            need: span,
            avail,
        });
    }
    let Some(bar) = BarIndex::new(cfg[pos + offset_of!(VirtioPciCapLayout, bar)]) else {
        tracing::debug!(target: TARGET, at, %cfg_type, "ignoring virtio capability with a reserved BAR");
        return Ok(Parsed::Ignored);
    };
    let offset = le32(cfg, pos + offset_of!(VirtioPciCapLayout, offset));
    let length = le32(cfg, pos + offset_of!(VirtioPciCapLayout, length));
    if offset.checked_add(length).is_none() {
        return Err(PciError::CapRangeOverflow {
            cfg_type,
            offset,
            length,
        });
    }
    let cap = VirtioCap {
        at,
        cfg_type,
        bar,
        id: cfg[pos + offset_of!(VirtioPciCapLayout, id)],
        offset,
        length,
    };
    let multiplier = (cfg_type == CfgType::NOTIFY).then(|| {
        le32(
            cfg,
            pos + offset_of!(VirtioPciNotifyCapLayout, notify_off_multiplier),
        )
    });
    Ok(Parsed::Cap(cap, multiplier))
}

fn parse_msix_cap(cfg: &[u8], limit: usize, at: u8) -> Result<Option<MsixCap>> {
    let pos = usize::from(at);
    let avail = limit - pos;
    if avail < MSIX_CAP_LEN {
        return Err(PciError::CapTruncated {
            at,
            need: MSIX_CAP_LEN,
            avail,
        });
    }
    let control = le16(cfg, pos + 2);
    let table = le32(cfg, pos + 4);
    let pba = le32(cfg, pos + 8);
    let (Some(table_bar), Some(pba_bar)) = (
        BarIndex::new((table & 7) as u8),
        BarIndex::new((pba & 7) as u8),
    ) else {
        tracing::debug!(target: TARGET, at, "ignoring MSI-X capability with a reserved BIR");
        return Ok(None);
    };
    Ok(Some(MsixCap {
        at,
        table_size: (control & 0x7ff) + 1,
        table_bar,
        table_offset: table & !7,
        pba_bar,
        pba_offset: pba & !7,
    }))
}

/// Least bytes of common configuration: the virtio 1.0 layout, up to `queue_device`.
pub const COMMON_CFG_MIN_LEN: u32 = common_cfg::QUEUE_NOTIFY_DATA as u32;

fn check_cap(cap: &VirtioCap, align: u32, min_len: u32) -> Result<()> {
    if cap.offset % align != 0 {
        return Err(PciError::CapMisaligned {
            cfg_type: cap.cfg_type,
            offset: cap.offset,
            align,
        });
    }
    if cap.length < min_len {
        return Err(PciError::CapTooSmall {
            cfg_type: cap.cfg_type,
            length: cap.length,
            need: min_len,
        });
    }
    Ok(())
}

/// Parses a function's configuration space (256 bytes for conventional PCI, 4096 for
/// PCIe; anything from the 64-byte header up is accepted) into its virtio layout.
///
/// Follows virtio 1.2 §4.1.2 (IDs) and §4.1.4 (capabilities): the first usable
/// instance of each structure wins; instances with a reserved `cfg_type` or `bar` are
/// ignored; `cap_len` may exceed the structure. Every pointer and length is checked
/// against the bytes given, and a looping list ends in an error, so any input returns.
///
/// # Errors
/// A [`PciError`] naming the first rule the bytes break: not virtio, not an endpoint,
/// a malformed capability list, a malformed or misplaced virtio capability, or a
/// missing common, notify or device structure ([`PciError::LegacyOnly`] for a
/// transitional device that has none of them).
pub fn parse_config_space(cfg: &[u8]) -> Result<VirtioPciLayout> {
    if cfg.len() < header::LEN {
        return Err(PciError::ConfigSpaceTooShort { len: cfg.len() });
    }
    let ids = PciIds {
        vendor: le16(cfg, header::VENDOR_ID),
        device: le16(cfg, header::DEVICE_ID),
        revision: cfg[header::REVISION_ID],
        subsystem_vendor: le16(cfg, header::SUBSYSTEM_VENDOR_ID),
        subsystem: le16(cfg, header::SUBSYSTEM_ID),
    };
    let not_virtio = PciError::NotVirtio {
        vendor: ids.vendor,
        device: ids.device,
    };
    if ids.vendor != VIRTIO_VENDOR_ID {
        return Err(not_virtio);
    }
    let (virtio_id, transitional) = match ids.device {
        MODERN_DEVICE_ID_BASE..=DEVICE_ID_LAST => {
            (VirtioId(ids.device - MODERN_DEVICE_ID_BASE), false)
        }
        TRANSITIONAL_DEVICE_ID_FIRST..MODERN_DEVICE_ID_BASE => {
            match VirtioId::from_transitional(ids.device) {
                Some(id) => (id, true),
                None => return Err(not_virtio),
            }
        }
        _ => return Err(not_virtio),
    };
    let header_type = cfg[header::HEADER_TYPE] & 0x7f;
    if header_type != 0 {
        return Err(PciError::NotAnEndpoint { header_type });
    }

    let walk = CapWalk::new(cfg);
    let limit = walk.limit;
    let (mut common, mut notify, mut isr, mut device, mut pci_cfg, mut msix) =
        (None, None, None, None, None, None);
    for item in walk {
        let (at, id) = item?;
        match id {
            header::CAP_ID_VENDOR => {
                let Parsed::Cap(cap, multiplier) = parse_virtio_cap(cfg, limit, at)? else {
                    continue;
                };
                let slot = match cap.cfg_type {
                    CfgType::COMMON => &mut common,
                    CfgType::NOTIFY => {
                        if notify.is_none() {
                            notify = multiplier.map(|m| (cap, m));
                        }
                        continue;
                    }
                    CfgType::ISR => &mut isr,
                    CfgType::DEVICE => &mut device,
                    _ => &mut pci_cfg,
                };
                slot.get_or_insert(cap);
            }
            header::CAP_ID_MSIX if msix.is_none() => msix = parse_msix_cap(cfg, limit, at)?,
            _ => {}
        }
    }

    if transitional && common.is_none() && notify.is_none() && device.is_none() {
        return Err(PciError::LegacyOnly { device: ids.device });
    }
    let missing = |cfg_type| PciError::MissingCap { cfg_type };
    let common = common.ok_or_else(|| missing(CfgType::COMMON))?;
    let (notify_cap, multiplier) = notify.ok_or_else(|| missing(CfgType::NOTIFY))?;
    let device = device.ok_or_else(|| missing(CfgType::DEVICE))?;
    // §4.1.4.3.1: offset 4-byte aligned; the registers up to queue_device must exist.
    check_cap(&common, 4, COMMON_CFG_MIN_LEN)?;
    // §4.1.4.4.1 (without NOTIFICATION_DATA, which is never accepted): offset 2-byte
    // aligned, length at least 2, multiplier 0 or an even power of two.
    check_cap(&notify_cap, 2, 2)?;
    if multiplier != 0 && !(multiplier.is_power_of_two() && multiplier >= 2) {
        return Err(PciError::BadNotifyMultiplier { multiplier });
    }
    // §4.1.4.6.1: offset 4-byte aligned.
    check_cap(&device, 4, 0)?;
    if let Some(isr) = &isr {
        // §4.1.4.5: at least the one status byte.
        check_cap(isr, 1, 1)?;
    }
    Ok(VirtioPciLayout {
        ids,
        virtio_id,
        transitional,
        common,
        notify: NotifyCap {
            cap: notify_cap,
            multiplier,
        },
        isr,
        device,
        pci_cfg,
        msix,
    })
}
