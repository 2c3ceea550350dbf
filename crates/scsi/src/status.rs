//! SCSI status codes (SAM-5 "Status codes") and sense keys (SPC-5 "Sense key
//! descriptions").

use std::fmt;

/// A SCSI status byte, as returned in a virtio-scsi response.
///
/// Every byte converts: values without a name are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u8);

impl Status {
    /// GOOD: the command completed.
    pub const GOOD: Self = Self(0x00);
    /// CHECK CONDITION: sense data describes what went wrong.
    pub const CHECK_CONDITION: Self = Self(0x02);
    /// CONDITION MET.
    pub const CONDITION_MET: Self = Self(0x04);
    /// BUSY: the logical unit cannot accept the command now.
    pub const BUSY: Self = Self(0x08);
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: Self = Self(0x18);
    /// TASK SET FULL: the task set has no room; retry later.
    pub const TASK_SET_FULL: Self = Self(0x28);
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: Self = Self(0x30);
    /// TASK ABORTED.
    pub const TASK_ABORTED: Self = Self(0x40);

    /// The SAM-5 name of this status, if it has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::GOOD => "GOOD",
            Self::CHECK_CONDITION => "CHECK CONDITION",
            Self::CONDITION_MET => "CONDITION MET",
            Self::BUSY => "BUSY",
            Self::RESERVATION_CONFLICT => "RESERVATION CONFLICT",
            Self::TASK_SET_FULL => "TASK SET FULL",
            Self::ACA_ACTIVE => "ACA ACTIVE",
            Self::TASK_ABORTED => "TASK ABORTED",
            _ => return None,
        })
    }

    /// Whether this is GOOD.
    pub fn is_good(self) -> bool {
        self == Self::GOOD
    }

    /// Whether this is CHECK CONDITION (sense data follows).
    pub fn is_check_condition(self) -> bool {
        self == Self::CHECK_CONDITION
    }

    /// Whether the command may succeed if retried later unchanged (BUSY, TASK SET FULL).
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::BUSY | Self::TASK_SET_FULL)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "status {:#04x}", self.0),
        }
    }
}

/// A 4-bit SENSE KEY (SPC-5 "Sense key descriptions").
///
/// Invariant: the value is at most 0x0F; [`SenseKey::new`] masks the upper bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseKey(u8);

impl SenseKey {
    /// NO SENSE.
    pub const NO_SENSE: Self = Self(0x0);
    /// RECOVERED ERROR.
    pub const RECOVERED_ERROR: Self = Self(0x1);
    /// NOT READY.
    pub const NOT_READY: Self = Self(0x2);
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: Self = Self(0x3);
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: Self = Self(0x4);
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: Self = Self(0x5);
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: Self = Self(0x6);
    /// DATA PROTECT.
    pub const DATA_PROTECT: Self = Self(0x7);
    /// BLANK CHECK.
    pub const BLANK_CHECK: Self = Self(0x8);
    /// VENDOR SPECIFIC.
    pub const VENDOR_SPECIFIC: Self = Self(0x9);
    /// COPY ABORTED.
    pub const COPY_ABORTED: Self = Self(0xA);
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: Self = Self(0xB);
    /// VOLUME OVERFLOW.
    pub const VOLUME_OVERFLOW: Self = Self(0xD);
    /// MISCOMPARE.
    pub const MISCOMPARE: Self = Self(0xE);
    /// COMPLETED.
    pub const COMPLETED: Self = Self(0xF);

    /// The sense key in the low 4 bits of `raw`.
    pub const fn new(raw: u8) -> Self {
        Self(raw & 0x0F)
    }

    /// The 4-bit value.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The SPC-5 name of this sense key (0xC is reserved and has none).
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NO_SENSE => "NO SENSE",
            Self::RECOVERED_ERROR => "RECOVERED ERROR",
            Self::NOT_READY => "NOT READY",
            Self::MEDIUM_ERROR => "MEDIUM ERROR",
            Self::HARDWARE_ERROR => "HARDWARE ERROR",
            Self::ILLEGAL_REQUEST => "ILLEGAL REQUEST",
            Self::UNIT_ATTENTION => "UNIT ATTENTION",
            Self::DATA_PROTECT => "DATA PROTECT",
            Self::BLANK_CHECK => "BLANK CHECK",
            Self::VENDOR_SPECIFIC => "VENDOR SPECIFIC",
            Self::COPY_ABORTED => "COPY ABORTED",
            Self::ABORTED_COMMAND => "ABORTED COMMAND",
            Self::VOLUME_OVERFLOW => "VOLUME OVERFLOW",
            Self::MISCOMPARE => "MISCOMPARE",
            Self::COMPLETED => "COMPLETED",
            _ => return None,
        })
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "sense key {:#03x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_follow_sam5() {
        assert_eq!(Status(0x02).name(), Some("CHECK CONDITION"));
        assert_eq!(Status(0x28).to_string(), "TASK SET FULL");
        assert_eq!(Status(0x03).name(), None);
        assert_eq!(Status(0x03).to_string(), "status 0x03");
        assert!(Status::BUSY.is_retryable());
        assert!(!Status::CHECK_CONDITION.is_retryable());
    }

    #[test]
    fn sense_key_masks_to_four_bits() {
        assert_eq!(SenseKey::new(0xF6), SenseKey::UNIT_ATTENTION);
        assert_eq!(SenseKey::new(0x0C).name(), None);
        assert_eq!(SenseKey::new(0x05).to_string(), "ILLEGAL REQUEST");
        for v in 0..=0xFFu8 {
            assert!(SenseKey::new(v).get() <= 0x0F);
        }
    }
}
