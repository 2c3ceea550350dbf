//! Feature negotiation and the device status handshake (virtio 1.2 §2.1, §2.2, §3.1).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::transport::Transport;

const TARGET: &str = "vbdev::virtio";

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The driver found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The driver knows how to drive the device.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

pub use crate::features::{self, DeviceType};

/// A device past feature negotiation: the transport plus the agreed feature bits.
#[derive(Debug, Clone)]
pub struct VirtioDevice {
    transport: Arc<dyn Transport>,
    features: u64,
    offered: u64,
}

impl VirtioDevice {
    /// Runs the initialisation sequence of virtio 1.2 §3.1.1 up to FEATURES_OK: reset,
    /// ACKNOWLEDGE, DRIVER, negotiate `offered & (wanted | required |
    /// transport.transport_features())`, FEATURES_OK and read it back.
    ///
    /// VERSION_1 is always required. Call [`Self::driver_ok`] once the queues are set up.
    ///
    /// # Errors
    /// [`Error::MissingFeature`] when a bit in `required` is not offered,
    /// [`Error::FeaturesRejected`] when the device does not keep FEATURES_OK.
    pub fn init(
        transport: Arc<dyn Transport>,
        device: DeviceType,
        wanted: u64,
        required: u64,
    ) -> Result<Self> {
        let t = &transport;
        t.set_status(0)?;
        t.set_status(status::ACKNOWLEDGE)?;
        t.set_status(status::ACKNOWLEDGE | status::DRIVER)?;
        let offered = t.device_features()?;
        let required = required | features::VERSION_1;
        if let Some(missing) = (0..64)
            .map(|b| 1u64 << b)
            .find(|b| required & b != 0 && offered & b == 0)
        {
            t.set_status(status::FAILED)?;
            return Err(Error::MissingFeature {
                name: device.feature_name(missing),
            });
        }
        let negotiated = offered & (wanted | required | t.transport_features());
        t.set_driver_features(negotiated)?;
        t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
        // §3.1.1 step 6: the device may refuse the subset by clearing FEATURES_OK.
        if t.status()? & status::FEATURES_OK == 0 {
            t.set_status(status::FAILED)?;
            return Err(Error::FeaturesRejected {
                features: negotiated,
            });
        }
        tracing::debug!(target: TARGET, offered, negotiated, "features negotiated");
        Ok(Self {
            transport,
            features: negotiated,
            offered,
        })
    }

    /// Sets DRIVER_OK: the device is live (§3.1.1 step 8).
    ///
    /// # Errors
    /// [`Error::NeedsReset`] when the device reports DEVICE_NEEDS_RESET.
    pub fn driver_ok(&self) -> Result<()> {
        let t = &self.transport;
        t.set_status(
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        )?;
        self.check()
    }

    /// Fails when the device needs a reset or the driver marked it failed (§2.1.2).
    ///
    /// # Errors
    /// [`Error::NeedsReset`] with the status byte.
    pub fn check(&self) -> Result<()> {
        let s = self.transport.status()?;
        if s & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 {
            return Err(Error::NeedsReset { status: s });
        }
        Ok(())
    }

    /// Marks the device FAILED and disconnects it; every later call fails.
    pub fn fail(&self) {
        let _ = self.transport.set_status(status::FAILED);
        self.transport.shutdown();
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The bits the device offered.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// Whether feature `bit` (a mask) was negotiated.
    pub fn has(&self, bit: u64) -> bool {
        self.features & bit == bit
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }
}
