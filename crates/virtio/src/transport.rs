//! How a virtio device is reached: the [`Transport`] trait and the doorbell ([`Notifier`]).
//!
//! A transport carries any device type: it knows features, status, config space and
//! virtqueue setup, never what the queues carry.

pub mod vhost_user;

use std::fmt::Debug;

use std::os::fd::AsRawFd;

use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::error::Result;
use crate::mem::RegionId;
use crate::split::RingAddrs;

/// A virtio transport (virtio 1.2 §4): feature bits, status, config space and queues.
pub trait Transport: Send + Sync + Debug {
    /// A short name for logs and `info` output (`"vhost-user"`, `"pci"`).
    fn kind(&self) -> &'static str;

    /// The device's feature bits (virtio 1.2 §2.2), without transport-private bits.
    ///
    /// # Errors
    /// When the device cannot be asked.
    fn device_features(&self) -> Result<u64>;

    /// Transport feature bits (virtio 1.2 §6) the driver accepts whenever the device
    /// offers them, on top of what the device driver wants; [`VirtioDevice::init`]
    /// ORs them in. Default: none.
    ///
    /// [`VirtioDevice::init`]: crate::VirtioDevice::init
    fn transport_features(&self) -> u64 {
        0
    }

    /// The physical-address map to translate DMA addresses with, when the device sees
    /// physical addresses (PCI through uio or VFIO no-IOMMU). Default: `None`, the
    /// device sees DMA addresses as they are.
    fn phys_map(&self) -> Option<&'static crate::mem::PhysMap> {
        None
    }

    /// Writes the driver's accepted features.
    ///
    /// # Errors
    /// When the device cannot be told.
    fn set_driver_features(&self, features: u64) -> Result<()>;

    /// Reads the device status byte (virtio 1.2 §2.1).
    ///
    /// # Errors
    /// When the device cannot be asked.
    fn status(&self) -> Result<u8>;

    /// Writes the device status byte; 0 resets the device.
    ///
    /// # Errors
    /// When the device cannot be told.
    fn set_status(&self, status: u8) -> Result<()>;

    /// Reads `buf.len()` bytes of the device config space at `offset` (virtio 1.2 §2.5).
    ///
    /// # Errors
    /// When the device does not answer or rejects the range, and
    /// [`crate::Error::MissingFeature`] when the transport has no way to read it
    /// ([`Transport::has_config`] is false).
    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<()>;

    /// Whether the configuration space can be read at all. A vhost-user target that does
    /// not offer `VHOST_USER_PROTOCOL_F_CONFIG` has none to read (SPDK's vhost-scsi, in
    /// every version): a driver that can do without (virtio-scsi) then works from the
    /// spec's initial values, one that cannot (virtio-blk: the capacity lives there)
    /// fails the attach. Default: true.
    fn has_config(&self) -> bool {
        true
    }

    /// Number of virtqueues the device has. When the transport cannot ask, an upper
    /// bound ([`Transport::request_queues`] is then what the driver may use).
    fn num_queues(&self) -> u16;

    /// Request queues the driver may use on a device type with `fixed` other queues
    /// first (virtio-scsi's control and event queues: 2; virtio-blk: 0). Default: the
    /// rest of [`Transport::num_queues`]. A vhost-user target that does not offer
    /// `VHOST_USER_PROTOCOL_F_MQ` cannot be asked (`GET_QUEUE_NUM`): one, as SPDK's
    /// initiator uses then.
    fn request_queues(&self, fixed: u16) -> u16 {
        self.num_queues().saturating_sub(fixed)
    }

    /// Largest queue size the device takes for queue `index`.
    fn max_queue_size(&self, index: u16) -> u16;

    /// Tells the device where queue `index` lives and returns its doorbell and its
    /// used-buffer notification eventfd.
    ///
    /// # Errors
    /// When the device rejects the queue.
    fn setup_queue(&self, index: u16, addrs: &RingAddrs) -> Result<QueueHandles>;

    /// Stops queue `index` and returns the device's last available index.
    ///
    /// # Errors
    /// When the device does not answer.
    fn stop_queue(&self, index: u16) -> Result<u16>;

    /// Whether buffers in DMA region `region` are visible to the device.
    fn region_visible(&self, region: RegionId) -> bool;

    /// False once the device is gone (connection closed, surprise removal).
    fn is_alive(&self) -> bool;

    /// Disconnects from the device for good; every later call fails.
    fn shutdown(&self);
}

/// What a set-up queue needs from its transport.
#[derive(Debug)]
pub struct QueueHandles {
    /// The doorbell.
    pub notifier: Notifier,
    /// Signalled by the device on used-buffer notifications.
    pub call: CallFd,
}

/// A queue's used-buffer notification eventfd ("call"), for sleeping until the device
/// completes something (interrupt mode).
///
/// The PCI transport signals it from an MSI-X vector through VFIO; without interrupts
/// (uio, or no MSI-X) it hands out [`CallFd::polled`], whose `wait` only naps.
#[derive(Debug)]
pub struct CallFd {
    fd: EventFd,
    epoll: Epoll,
    /// Nothing ever signals the eventfd: `wait` naps briefly instead.
    polled: bool,
}

/// How long [`CallFd::wait`] naps on a transport without interrupts.
pub const POLLED_NAP: Duration = Duration::from_micros(50);

impl CallFd {
    /// Wraps an eventfd the device signals.
    ///
    /// # Errors
    /// When the epoll instance cannot be created.
    pub fn new(fd: EventFd) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        Ok(Self {
            fd,
            epoll,
            polled: false,
        })
    }

    /// A call "fd" for a queue without used-buffer interrupts (polled PCI): `wait`
    /// sleeps [`POLLED_NAP`] (or less), so a caller waiting for a completion polls about
    /// every 50 µs instead of sleeping out its whole timeout.
    ///
    /// # Errors
    /// When the eventfd or the epoll instance cannot be created.
    pub fn polled() -> std::io::Result<Self> {
        let mut c = Self::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?)?;
        c.polled = true;
        Ok(c)
    }

    /// The eventfd, for handing to the device.
    pub fn eventfd(&self) -> &EventFd {
        &self.fd
    }

    /// Sleeps until the device signals or `timeout` passes; returns whether it signalled.
    /// Clears the signal.
    pub fn wait(&self, timeout: Duration) -> bool {
        if self.polled {
            std::thread::sleep(timeout.min(POLLED_NAP));
            return false;
        }
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut ev = [EpollEvent::default()];
        match self.epoll.wait(ms, &mut ev) {
            Ok(n) if n > 0 => {
                let _ = self.fd.read();
                true
            }
            _ => false,
        }
    }
}

/// A doorbell another crate provides (virtio-pci's BAR stores and writes).
pub trait Doorbell: Send + Sync + Debug {
    /// Rings it. A failure means the device is gone; the queue's timeout reports it, as
    /// for a lost completion.
    fn ring(&self);
}

/// A queue's doorbell (available-buffer notification, virtio 1.2 §2.7.13.3).
///
/// An eventfd write (vhost-user kick), or a [`Doorbell`] of another transport (a 16-bit
/// store into a mapped PCI BAR, or a write through a BAR accessor). `notify` is one
/// match on the kind, then the write or the call.
#[derive(Debug)]
pub struct Notifier {
    kind: NotifierKind,
}

#[derive(Debug)]
enum NotifierKind {
    EventFd(EventFd),
    Doorbell(Box<dyn Doorbell>),
}

impl Notifier {
    /// A doorbell that writes an eventfd (vhost-user kick).
    pub fn eventfd(kick: EventFd) -> Self {
        Self {
            kind: NotifierKind::EventFd(kick),
        }
    }

    /// A doorbell of another transport.
    pub fn doorbell(d: Box<dyn Doorbell>) -> Self {
        Self {
            kind: NotifierKind::Doorbell(d),
        }
    }

    /// Rings the doorbell.
    pub fn notify(&self) {
        match &self.kind {
            // An eventfd write only fails when the counter would overflow, which means
            // the device has not read it for 2^64 - 1 kicks: the device will still see
            // a kick.
            NotifierKind::EventFd(kick) => {
                let _ = kick.write(1);
            }
            NotifierKind::Doorbell(d) => d.ring(),
        }
    }
}
