//! The errors of the virtio-pci transport. They reach callers inside
//! [`vbdev_virtio::Error::Transport`]; [`PciTransportError::of`] finds them there.

use crate::PciError;

/// A failure of the virtio-pci transport: a register access or layout, a VFIO step, the
/// IOMMU, or a function not set up for the transport.
#[derive(Debug, thiserror::Error)]
pub enum PciTransportError {
    /// A register access or the layout of a virtio-pci function failed.
    #[error("virtio-pci function {bdf}")]
    Pci {
        /// The function's address (`0000:00:02.0`).
        bdf: Box<str>,
        /// Cause.
        #[source]
        source: PciError,
    },
    /// A step of opening a function through VFIO failed.
    #[error(transparent)]
    Vfio(Box<VfioError>),
    /// A function is not set up for the transport (wrong driver, no IOMMU group).
    #[error("{bdf}: {what}")]
    Setup {
        /// The function's address.
        bdf: Box<str>,
        /// What is wrong and what to do.
        what: String,
    },
    /// A DMA region lies outside every IOVA range the IOMMU translates.
    #[error(transparent)]
    IovaOutOfRange(Box<IovaOutOfRange>),
    /// The function is behind an IOMMU but does not offer VIRTIO_F_ACCESS_PLATFORM: its
    /// DMA would bypass the IOMMU and land at the IOVAs taken as physical addresses.
    #[error(
        "{bdf}: the device is behind an IOMMU but does not offer VIRTIO_F_ACCESS_PLATFORM, so its DMA would bypass the IOMMU (QEMU: iommu_platform=on)"
    )]
    NoAccessPlatform {
        /// The function's address.
        bdf: Box<str>,
    },
}

impl PciTransportError {
    /// The virtio-pci error inside `e`, if it is one.
    pub fn of(e: &vbdev_virtio::Error) -> Option<&Self> {
        match e {
            vbdev_virtio::Error::Transport(b) => b.downcast_ref(),
            _ => None,
        }
    }
}

impl From<PciTransportError> for vbdev_virtio::Error {
    fn from(e: PciTransportError) -> Self {
        vbdev_virtio::Error::Transport(Box::new(e))
    }
}

/// A step of opening a PCI function through VFIO failed. The message carries the
/// system error and, where one helps, what to check.
#[derive(Debug, thiserror::Error)]
#[error("{bdf}: {step}: {cause}{hint}")]
pub struct VfioError {
    /// The function's address (`0000:00:02.0`).
    pub bdf: String,
    /// What was being done, naming the file (`open /dev/vfio/3`).
    pub step: String,
    /// The system error.
    pub cause: std::io::Error,
    /// Empty, or `": "` and what to check.
    pub hint: &'static str,
}

/// A DMA region lies outside every IOVA range the IOMMU translates.
#[derive(Debug, thiserror::Error)]
#[error(
    "{bdf}: DMA region {addr:#x}..{end:#x} is outside the IOMMU's IOVA ranges {ranges} (place DMA memory with DmaConfig::addr_limit)"
)]
pub struct IovaOutOfRange {
    /// The function's address.
    pub bdf: String,
    /// Start of the region (its IOVA).
    pub addr: u64,
    /// End of the region (exclusive).
    pub end: u64,
    /// The usable ranges, as `[start-end, ...]` (inclusive ends).
    pub ranges: String,
}
