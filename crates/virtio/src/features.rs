//! Feature bits (virtio 1.2 §6) and their names: the device-independent bits here, the
//! device types' own in [`crate::blk::features`] and [`crate::scsi::features`], named
//! through [`DeviceType`].

/// Indirect descriptors (§2.7.5.3).
pub const RING_INDIRECT_DESC: u64 = 1 << 28;
/// `used_event` / `avail_event` notification suppression (§2.7.7, §2.7.10).
pub const RING_EVENT_IDX: u64 = 1 << 29;
/// A virtio 1.x device (not legacy).
pub const VERSION_1: u64 = 1 << 32;
/// The device's DMA goes through the platform's IOMMU (VIRTIO_F_ACCESS_PLATFORM).
pub const ACCESS_PLATFORM: u64 = 1 << 33;
/// Packed virtqueues (§2.8).
pub const RING_PACKED: u64 = 1 << 34;

/// The device types this crate drives (virtio 1.2 §5): they name their feature bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// virtio-blk (device ID 2).
    Blk,
    /// virtio-scsi (device ID 8).
    Scsi,
}

impl DeviceType {
    /// The virtio device ID.
    pub fn id(self) -> u16 {
        match self {
            Self::Blk => 2,
            Self::Scsi => 8,
        }
    }

    /// The type of virtio device ID `id`; `None` for the types this crate does not
    /// drive (network, console, ...).
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            2 => Some(Self::Blk),
            8 => Some(Self::Scsi),
            _ => None,
        }
    }

    /// `blk` or `scsi`, as the command line and SPDK's `dev_type` say it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blk => "blk",
            Self::Scsi => "scsi",
        }
    }

    /// The name of feature `bit` (a mask) for this device type: a device-independent
    /// name, the type's own, or `"unknown"`.
    pub fn feature_name(self, bit: u64) -> &'static str {
        generic_name(bit)
            .or_else(|| match self {
                Self::Blk => crate::blk::feature_name(bit),
                Self::Scsi => crate::scsi::feature_name(bit),
            })
            .unwrap_or("unknown")
    }

    /// The names of every bit set in `f`.
    pub fn feature_names(self, f: u64) -> Vec<&'static str> {
        (0..64)
            .map(|b| 1u64 << b)
            .filter(|b| f & b != 0)
            .map(|b| self.feature_name(b))
            .collect()
    }
}

/// The name of a device-independent feature bit (virtio 1.2 §6), if it has one.
pub fn generic_name(bit: u64) -> Option<&'static str> {
    Some(match bit {
        RING_INDIRECT_DESC => "RING_INDIRECT_DESC",
        RING_EVENT_IDX => "RING_EVENT_IDX",
        VERSION_1 => "VERSION_1",
        ACCESS_PLATFORM => "ACCESS_PLATFORM",
        RING_PACKED => "RING_PACKED",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names_come_from_the_device_type() {
        // Bit 1 is virtio-blk's SIZE_MAX and virtio-scsi's HOTPLUG.
        assert_eq!(
            DeviceType::Blk.feature_name(crate::blk::features::SIZE_MAX),
            "SIZE_MAX"
        );
        assert_eq!(
            DeviceType::Scsi.feature_name(crate::scsi::features::HOTPLUG),
            "HOTPLUG"
        );
        assert_eq!(
            crate::blk::features::SIZE_MAX,
            crate::scsi::features::HOTPLUG
        );
        assert_eq!(DeviceType::Scsi.feature_name(VERSION_1), "VERSION_1");
        assert_eq!(
            DeviceType::Blk.feature_name(ACCESS_PLATFORM),
            "ACCESS_PLATFORM"
        );
        assert_eq!(
            DeviceType::Scsi.feature_name(crate::blk::features::DISCARD),
            "unknown"
        );
    }
}
