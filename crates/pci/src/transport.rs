#![allow(unsafe_code)] // VFIO ioctls, BAR mappings and DMA maps, each block with its SAFETY.
//! The virtio-pci transport (virtio 1.2 §4.1): a function bound to `vfio-pci` or
//! `uio_pci_generic`, driven from user space in polled mode.
//!
//! [`PciTransport::open`] picks the way in from the driver binding ([`PciAccess`]):
//! - **VFIO type1** ([`PciTransport::open_vfio`]): the VFIO sequence (container, group,
//!   IOMMU type, device fd); configuration space and registers through the VFIO
//!   regions; every region of the [`DmaDomain`] mapped with `VFIO_IOMMU_MAP_DMA` at
//!   IOVA = process address, so descriptors carry the same addresses as with
//!   vhost-user. Regions created later are mapped from a [`RegionListener`]. A region
//!   outside the IOMMU's IOVA ranges fails the attach naming the ranges; an IOMMU
//!   while the device does not offer ACCESS_PLATFORM fails it too.
//! - **VFIO no-IOMMU** (same function, `/dev/vfio/noiommu-N`, `VFIO_NOIOMMU_IOMMU`):
//!   no DMA mapping; the device sees physical addresses.
//! - **uio_pci_generic** ([`PciTransport::open_uio`]): registers through mappings of
//!   the sysfs `resourceN` files ([`MmapBars`]), configuration space through the sysfs
//!   `config` file; physical addresses.
//!
//! With physical addresses the domain must be in physical mode
//! ([`DmaConfig::physical`](vbdev_virtio::DmaConfig::physical)) and the transport hands its
//! [`PhysMap`] to the queues ([`Transport::phys_map`]), which split every buffer at
//! physical discontinuities. The driver sets Memory Space and Bus Master itself (and
//! INTx Disable for uio).
//!
//! With VFIO, register access on the control path is `pread`/`pwrite` on the device fd,
//! so a vanished device gives errors, not signals. Every BAR mapping (the notify BAR
//! for doorbells, every BAR for uio) is registered with the SIGBUS guard
//! ([`crate::sigbus`]): an access to a removed function turns the mapping into memory
//! that reads all ones, the register layer reports [`PciError::DeviceGone`], and
//! [`Transport::is_alive`] turns false.
//!
//! Used-buffer notifications: through VFIO, MSI-X is enabled with one eventfd per
//! vector (`VFIO_DEVICE_SET_IRQS`), queue `i` gets vector `i` modulo the vectors, and
//! its [`CallFd`] is that eventfd. With uio (INTx only) or without MSI-X the queues get
//! [`NO_VECTOR`] and [`CallFd::polled`], whose wait naps 50 µs. VFIO's device request
//! interrupt, or the unregistration of the uio device (the kernel removing the
//! function), resets the device and marks the transport dead, so the bdevs fail as removed and their owner can let go of it.
//! Not done: per-queue reset (VIRTIO_F_RING_RESET is not accepted; `stop_queue` does
//! nothing and `shutdown` resets the device).
//!
//! [`DmaDomain`]: vbdev_virtio::DmaDomain

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::mm::{MapFlags, ProtFlags};
use vfio_bindings::bindings::vfio as vb;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val,
};

use vbdev_virtio::transport::{CallFd, Notifier, QueueHandles, Transport};
use vbdev_virtio::{Error, Result};

use crate::error::{IovaOutOfRange, PciTransportError, VfioError};
use crate::{
    BarIndex, CommonCfg, Doorbell, NO_VECTOR, PciBars, PciError, VirtioPciLayout, header,
    parse_config_space, transport_features,
};
use vbdev_virtio::mem::{DmaDomain, PhysMap, RegionId, RegionInfo, RegionListener};
use vbdev_virtio::split::RingAddrs;

const TARGET: &str = "vbdev::pci";

mod bars;
mod removal;
mod vfio;

use bars::*;
pub use bars::{BarMapping, MmapBars, MmioDoorbell, VfioBars};
use removal::*;
use vfio::*;

/// Largest configuration space read (PCIe extended space).
const CONFIG_SPACE_MAX: u64 = 4096;

/// Options of a PCI attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciOptions {
    /// Longest wait for a device reset to complete (default 1 s).
    pub reset_timeout: Duration,
    /// Ring doorbells with a store into the mapped notify BAR (default); `false` uses a
    /// `pwrite` per notification.
    pub mmio_doorbell: bool,
}

impl Default for PciOptions {
    fn default() -> Self {
        Self {
            reset_timeout: Duration::from_secs(1),
            mmio_doorbell: true,
        }
    }
}

/// How the device reaches DMA memory.
#[derive(Debug)]
enum Dma {
    /// Through an IOMMU, region by region.
    Vfio(Arc<VfioDma>),
    /// By physical address (uio, VFIO no-IOMMU): every region of a physical-mode
    /// domain is populated and translated when it is created.
    Physical(&'static PhysMap),
    /// Every address as is (a fake device in tests).
    Identity,
}

/// How a function is reached, from its driver binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciAccess {
    /// vfio-pci with an IOMMU: IOVAs mapped with `VFIO_IOMMU_MAP_DMA`.
    VfioType1,
    /// vfio-pci in no-IOMMU mode: physical addresses.
    VfioNoIommu,
    /// uio_pci_generic: sysfs resource mappings, physical addresses.
    Uio,
}

impl PciAccess {
    /// Whether the device sees physical addresses (the DMA domain must be in physical
    /// mode, [`DmaConfig::physical`](vbdev_virtio::DmaConfig::physical)).
    pub fn physical(self) -> bool {
        !matches!(self, PciAccess::VfioType1)
    }

    /// How `bdf` can be reached now, from its driver binding and IOMMU group.
    ///
    /// # Errors
    /// [`PciTransportError::Setup`] when the function does not exist or is bound to another
    /// driver (or none).
    pub fn of(bdf: &str) -> Result<Self> {
        let v = VfioOpen::new(bdf)?;
        match v.driver().as_deref() {
            Some("vfio-pci") => Ok(if v.find_group()?.2 {
                PciAccess::VfioNoIommu
            } else {
                PciAccess::VfioType1
            }),
            Some("uio_pci_generic") => Ok(PciAccess::Uio),
            Some(other) => Err(v.setup(format!(
                "bound to {other}, not vfio-pci or uio_pci_generic (vbdev pci bind {bdf} vfio-pci)"
            ))),
            None => Err(v.setup(format!(
                "bound to no driver (vbdev pci bind {bdf} vfio-pci, or uio_pci_generic)"
            ))),
        }
    }
}

/// A virtio-pci function driven from user space.
///
/// Thread-safe: the common configuration sits behind a mutex (its select registers
/// must not interleave), everything else is read-only after construction or atomic.
#[derive(Debug)]
pub struct PciTransport {
    bdf: String,
    layout: VirtioPciLayout,
    bars: Arc<dyn PciBars>,
    common: Mutex<CommonCfg<Arc<dyn PciBars>>>,
    notify_map: Option<Arc<BarMapping>>,
    /// Every BAR mapping (guarded): one that faulted means the device is gone.
    mappings: Vec<Arc<BarMapping>>,
    dma: Dma,
    num_queues: u16,
    offered: u64,
    alive: AtomicBool,
    opts: PciOptions,
    /// The thread that answers VFIO's device request (hot-remove), when there is one.
    req_watch: std::sync::OnceLock<RequestWatch>,
    /// One eventfd per MSI-X vector set up through VFIO (empty: polled).
    msix: Vec<EventFd>,
    // Last, so the device is reset (in `Drop`) before the group and container close.
    _vfio: Option<VfioHandles>,
}

impl PciTransport {
    /// Opens the virtio-pci function `bdf` (`0000:00:02.0`), bound to `vfio-pci` behind an
    /// IOMMU (VFIO type1), and maps `domain`'s regions for its DMA.
    ///
    /// `domain` should be configured with [`DmaConfig::pinned`](vbdev_virtio::DmaConfig::pinned)
    /// before its first use: type1 pins whole regions, and the IOMMU may translate fewer
    /// address bits than the process uses.
    ///
    /// # Errors
    /// [`PciTransportError::Setup`] when the function does not exist, is not bound to `vfio-pci`
    /// or has no IOMMU group; [`PciTransportError::Vfio`] naming the VFIO step that failed;
    /// [`PciTransportError::Pci`] for a config space or register failure;
    /// [`PciTransportError::IovaOutOfRange`] when a DMA region is outside the IOMMU's ranges;
    /// [`PciTransportError::NoAccessPlatform`] when the device would bypass the IOMMU.
    /// Opens the virtio-pci function `bdf` the way its driver binding allows
    /// ([`PciAccess::of`]): VFIO type1, VFIO no-IOMMU or uio_pci_generic.
    ///
    /// The two no-IOMMU ways need `domain` in physical mode
    /// ([`DmaConfig::physical`](vbdev_virtio::DmaConfig::physical)); type1 works with either,
    /// and wants [`DmaConfig::pinned`](vbdev_virtio::DmaConfig::pinned) or `physical` (small
    /// regions below 2^39).
    ///
    /// # Errors
    /// As [`PciTransport::open_vfio`] and [`PciTransport::open_uio`].
    pub fn open(
        bdf: &str,
        domain: &'static DmaDomain,
        opts: &PciOptions,
    ) -> Result<Arc<PciTransport>> {
        match PciAccess::of(bdf)? {
            PciAccess::VfioType1 | PciAccess::VfioNoIommu => Self::open_vfio(bdf, domain, opts),
            PciAccess::Uio => Self::open_uio(bdf, domain, opts),
        }
    }

    /// Opens `bdf` bound to `vfio-pci`: with an IOMMU (type1) the DMA regions are
    /// mapped at IOVA = address; in a no-IOMMU group the device gets physical addresses
    /// and `domain` must be in physical mode.
    ///
    /// # Errors
    /// As for [`PciTransport::open`]; [`PciTransportError::Setup`] for a no-IOMMU group when
    /// `domain` is not in physical mode.
    pub fn open_vfio(
        bdf: &str,
        domain: &'static DmaDomain,
        opts: &PciOptions,
    ) -> Result<Arc<PciTransport>> {
        let v = VfioOpen::new(bdf)?;
        let (group_no, group_path, noiommu) = v.find_group()?;
        let phys = if noiommu {
            Some(v.phys_map(domain, "VFIO no-IOMMU")?)
        } else {
            None
        };
        let container = v.open_file(Path::new("/dev/vfio/vfio"), ": is the vfio module loaded?")?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument and only returns a value.
        let api = unsafe { ioctl(&container, VFIO_GET_API_VERSION()) };
        if api != vb::VFIO_API_VERSION as i32 {
            return Err(v.setup(format!(
                "/dev/vfio/vfio speaks VFIO API {api}, not {}",
                vb::VFIO_API_VERSION
            )));
        }
        let wanted: &[u32] = if noiommu {
            &[vb::VFIO_NOIOMMU_IOMMU]
        } else {
            &[vb::VFIO_TYPE1v2_IOMMU, vb::VFIO_TYPE1_IOMMU]
        };
        let iommu_type = wanted
            .iter()
            .copied()
            // SAFETY: VFIO_CHECK_EXTENSION takes the extension number by value and only
            // returns a value.
            .find(|&t| unsafe { ioctl_with_val(&container, VFIO_CHECK_EXTENSION(), t.into()) } > 0)
            .ok_or_else(|| {
                v.setup(if noiommu {
                    "the VFIO container does not offer no-IOMMU mode (load vfio with enable_unsafe_noiommu_mode=1, on a kernel with CONFIG_VFIO_NOIOMMU)".into()
                } else {
                    "the VFIO container supports no type1 IOMMU".into()
                })
            })?;
        let group = v.open_file(&group_path, ": is the device bound to vfio-pci?")?;
        let mut status = vb::vfio_group_status {
            argsz: size_of::<vb::vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: VFIO_GROUP_GET_STATUS writes a `vfio_group_status` of `argsz` bytes into
        // `status`, which is exactly that struct, exclusively borrowed.
        let rc = unsafe { ioctl_with_mut_ref(&group, VFIO_GROUP_GET_STATUS(), &mut status) };
        v.check(
            rc,
            || format!("VFIO_GROUP_GET_STATUS on {}", group_path.display()),
            "",
        )?;
        if status.flags & vb::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(v.setup(format!(
                "IOMMU group {group_no} is not viable: bind every device of /sys/kernel/iommu_groups/{group_no}/devices to vfio-pci"
            )));
        }
        let container_fd = container.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads one `int`, the container fd, through the
        // pointer; `container_fd` lives across the call.
        let rc = unsafe { ioctl_with_ref(&group, VFIO_GROUP_SET_CONTAINER(), &container_fd) };
        v.check(
            rc,
            || format!("VFIO_GROUP_SET_CONTAINER for {}", group_path.display()),
            ": is the group in use by another process?",
        )?;
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value.
        let rc = unsafe { ioctl_with_val(&container, VFIO_SET_IOMMU(), iommu_type.into()) };
        v.check(rc, || format!("VFIO_SET_IOMMU({iommu_type})"), "")?;
        let ranges = if noiommu {
            None
        } else {
            iova_ranges(&container)
        };
        match &ranges {
            Some(r) => {
                tracing::debug!(target: TARGET, bdf, ranges = %format_ranges(r), "IOMMU IOVA ranges")
            }
            None => tracing::debug!(target: TARGET, bdf, "the kernel reports no IOVA ranges"),
        }
        let name =
            CString::new(bdf).map_err(|_| v.setup("the address contains a NUL byte".into()))?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD reads a NUL-terminated string, which `name`
        // is, alive across the call; it returns a new fd or -1.
        let fd = unsafe { ioctl_with_ptr(&group, VFIO_GROUP_GET_DEVICE_FD(), name.as_ptr()) };
        v.check(fd, || "VFIO_GROUP_GET_DEVICE_FD".to_owned(), "")?;
        // SAFETY: `fd >= 0` (checked) is a new descriptor the kernel gave us alone.
        let device = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut info = vb::vfio_device_info {
            argsz: size_of::<vb::vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: VFIO_DEVICE_GET_INFO writes at most `argsz` bytes of a
        // `vfio_device_info` into `info`, which is that struct, exclusively borrowed.
        let rc = unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_GET_INFO(), &mut info) };
        v.check(rc, || "VFIO_DEVICE_GET_INFO".to_owned(), "")?;
        if info.flags & DEVICE_FLAGS_PCI == 0
            || info.num_regions <= vb::VFIO_PCI_CONFIG_REGION_INDEX
        {
            return Err(v.setup(format!(
                "VFIO device is not a PCI device (flags {:#x}, {} regions)",
                info.flags, info.num_regions
            )));
        }
        let region = |index: u32| -> Result<Option<VfioRegion>> {
            let mut ri = vb::vfio_region_info {
                argsz: size_of::<vb::vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            // SAFETY: VFIO_DEVICE_GET_REGION_INFO writes at most `argsz` bytes of a
            // `vfio_region_info` into `ri`, which is that struct, exclusively borrowed.
            let rc = unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_GET_REGION_INFO(), &mut ri) };
            v.check(rc, || format!("VFIO_DEVICE_GET_REGION_INFO({index})"), "")?;
            Ok((ri.size > 0).then_some(VfioRegion {
                offset: ri.offset,
                size: ri.size,
                flags: ri.flags,
            }))
        };
        let config = region(vb::VFIO_PCI_CONFIG_REGION_INDEX)?
            .ok_or_else(|| v.setup("the VFIO config region is empty".into()))?;
        let mut bars = [None; 6];
        for (i, b) in bars.iter_mut().enumerate() {
            *b = region(vb::VFIO_PCI_BAR0_REGION_INDEX + i as u32)?;
        }
        let vbars = VfioBars {
            device,
            bars,
            config,
        };
        let mut cfg = vec![0u8; config.size.min(CONFIG_SPACE_MAX) as usize];
        vbars
            .read_config(0, &mut cfg)
            .map_err(|e| v.vfio("read the config space", e, ""))?;
        let layout = parse_config_space(&cfg).map_err(|e| v.pci(e))?;
        layout
            .check_bars(|b| bars[usize::from(b.get())].map(|r| r.size))
            .map_err(|e| v.pci(e))?;
        // The driver enables memory decoding and DMA itself (vfio-pci leaves both off).
        let mut cmd = [0u8; 2];
        vbars
            .read_config(header::COMMAND as u64, &mut cmd)
            .map_err(|e| v.vfio("read the command register", e, ""))?;
        let cmd = u16::from_le_bytes(cmd) | header::COMMAND_MEMORY | header::COMMAND_BUS_MASTER;
        vbars
            .write_config(header::COMMAND as u64, &cmd.to_le_bytes())
            .map_err(|e| v.vfio("write the command register", e, ""))?;
        let notify_map = if opts.mmio_doorbell {
            map_bar(&vbars, layout.notify.cap.bar, bdf)
        } else {
            None
        };
        let req = request_eventfd(&vbars.device, bdf).map(Removal::VfioRequest);
        let msix = msix_eventfds(&vbars.device, bdf);
        if let Some(map) = phys {
            domain.reserve()?;
            let mappings = notify_map.iter().cloned().collect();
            let mut t = Self::from_parts(
                bdf,
                layout,
                Arc::new(vbars),
                mappings,
                notify_map,
                Dma::Physical(map),
                Some(VfioHandles {
                    _group: Some(group),
                    _container: Some(container),
                }),
                opts,
            )?;
            t.msix = msix;
            tracing::info!(target: TARGET, bdf, virtio_id = t.layout.virtio_id.0, features = t.offered, queues = t.num_queues, msix_vectors = t.msix.len(), mmio_doorbell = t.notify_map.is_some(), "virtio-pci function opened through VFIO no-IOMMU (physical addresses)");
            let t = Arc::new(t);
            RequestWatch::start(&t, req);
            return Ok(t);
        }
        let dma = Arc::new(VfioDma {
            bdf: bdf.to_owned(),
            domain,
            container,
            ranges,
            mapped: AtomicU64::new(0),
        });
        domain.reserve()?;
        let listener: Arc<dyn RegionListener> = dma.clone();
        for r in domain.subscribe(Arc::downgrade(&listener)) {
            dma.map(&r)?;
        }
        let mappings = notify_map.iter().cloned().collect();
        let t = Self::from_parts(
            bdf,
            layout,
            Arc::new(vbars),
            mappings,
            notify_map,
            Dma::Vfio(dma),
            Some(VfioHandles {
                _group: Some(group),
                _container: None,
            }),
            opts,
        )?;
        let mut t = t;
        t.msix = msix;
        if t.offered & vbdev_virtio::device::features::ACCESS_PLATFORM == 0 {
            return Err(PciTransportError::NoAccessPlatform { bdf: bdf.into() }.into());
        }
        tracing::info!(target: TARGET, bdf, virtio_id = t.layout.virtio_id.0, features = t.offered, queues = t.num_queues, iommu_type, msix_vectors = t.msix.len(), mmio_doorbell = t.notify_map.is_some(), "virtio-pci function opened through VFIO");
        let t = Arc::new(t);
        RequestWatch::start(&t, req);
        Ok(t)
    }

    /// Opens `bdf` bound to `uio_pci_generic`: registers through mappings of its sysfs
    /// `resourceN` files, configuration space through its sysfs `config` file, and
    /// physical addresses for DMA, so `domain` must be in physical mode.
    ///
    /// The driver sets Memory Space, Bus Master and Interrupt Disable (polled mode:
    /// uio_pci_generic only has INTx) in the command register.
    ///
    /// # Errors
    /// [`PciTransportError::Setup`] when the function is not bound to uio_pci_generic or `domain`
    /// is not in physical mode; [`PciTransportError::Vfio`] naming the file that could not be
    /// opened, read or mapped; [`PciTransportError::Pci`] for a config space or register failure.
    pub fn open_uio(
        bdf: &str,
        domain: &'static DmaDomain,
        opts: &PciOptions,
    ) -> Result<Arc<PciTransport>> {
        let v = VfioOpen::new(bdf)?;
        match v.driver().as_deref() {
            Some("uio_pci_generic") => {}
            other => {
                return Err(v.setup(format!(
                    "bound to {}, not uio_pci_generic (vbdev pci bind {bdf} uio_pci_generic)",
                    other.unwrap_or("no driver")
                )));
            }
        }
        let phys = v.phys_map(domain, "uio_pci_generic")?;
        let config_path = v.sysfs.join("config");
        let config = File::options()
            .read(true)
            .write(true)
            .open(&config_path)
            .map_err(|e| v.vfio(&format!("open {}", config_path.display()), e, ""))?;
        let mut cfg = vec![0u8; CONFIG_SPACE_MAX as usize];
        let n = rustix::io::pread(&config, &mut cfg, 0)
            .map_err(|e| v.vfio(&format!("read {}", config_path.display()), e.into(), ""))?;
        cfg.truncate(n);
        let layout = parse_config_space(&cfg).map_err(|e| v.pci(e))?;
        let mut bars: [Option<Arc<BarMapping>>; 6] = Default::default();
        for cap in layout.used_caps() {
            let i = usize::from(cap.bar.get());
            if bars[i].is_some() {
                continue;
            }
            let path = v.sysfs.join(format!("resource{i}"));
            let file = File::options()
                .read(true)
                .write(true)
                .custom_flags(rustix::fs::OFlags::SYNC.bits() as i32)
                .open(&path)
                .map_err(|e| {
                    v.vfio(
                        &format!("open {}", path.display()),
                        e,
                        ": the BAR must be a memory BAR",
                    )
                })?;
            let len = file
                .metadata()
                .map_err(|e| v.vfio(&format!("stat {}", path.display()), e, ""))?
                .len();
            let len = usize::try_from(len)
                .map_err(|_| v.setup(format!("{} is too large", path.display())))?;
            bars[i] = Some(
                map_shared(&file, 0, len)
                    .map_err(|e| v.vfio(&format!("mmap {}", path.display()), e, ""))?,
            );
        }
        layout
            .check_bars(|b| bars[usize::from(b.get())].as_ref().map(|m| m.len as u64))
            .map_err(|e| v.pci(e))?;
        let mut cmd = [0u8; 2];
        rustix::io::pread(&config, &mut cmd, header::COMMAND as u64)
            .map_err(|e| v.vfio("read the command register", e.into(), ""))?;
        let cmd = u16::from_le_bytes(cmd)
            | header::COMMAND_MEMORY
            | header::COMMAND_BUS_MASTER
            | header::COMMAND_INTX_DISABLE;
        rustix::io::pwrite(&config, &cmd.to_le_bytes(), header::COMMAND as u64)
            .map_err(|e| v.vfio("write the command register", e.into(), ""))?;
        let notify_map = bars[usize::from(layout.notify.cap.bar.get())].clone();
        domain.reserve()?;
        let mappings: Vec<Arc<BarMapping>> = bars.iter().flatten().cloned().collect();
        let t = Self::from_parts(
            bdf,
            layout,
            Arc::new(MmapBars { bars }),
            mappings,
            if opts.mmio_doorbell { notify_map } else { None },
            Dma::Physical(phys),
            None,
            opts,
        )?;
        tracing::info!(target: TARGET, bdf, virtio_id = t.layout.virtio_id.0, features = t.offered, queues = t.num_queues, "virtio-pci function opened through uio_pci_generic (physical addresses)");
        let t = Arc::new(t);
        RequestWatch::start(&t, uio_removal(&v.sysfs, bdf));
        Ok(t)
    }

    /// A transport over any BAR accessor, for a device whose DMA needs no mapping (a
    /// fake device in tests): every DMA region counts as visible and doorbells go
    /// through `bars`.
    ///
    /// # Errors
    /// [`PciTransportError::Pci`] when the config space does not parse, a structure lies outside its
    /// BAR (`bar_len`), or the device cannot be read.
    pub fn with_bars(
        name: &str,
        config_space: &[u8],
        bars: Arc<dyn PciBars>,
        bar_len: impl Fn(BarIndex) -> Option<u64>,
        opts: &PciOptions,
    ) -> Result<Self> {
        let pci = |source| -> Error {
            PciTransportError::Pci {
                bdf: name.into(),
                source,
            }
            .into()
        };
        let layout = parse_config_space(config_space).map_err(pci)?;
        layout.check_bars(bar_len).map_err(pci)?;
        Self::from_parts(
            name,
            layout,
            bars,
            Vec::new(),
            None,
            Dma::Identity,
            None,
            opts,
        )
    }

    #[allow(clippy::too_many_arguments)] // one private constructor for three ways in
    fn from_parts(
        bdf: &str,
        layout: VirtioPciLayout,
        bars: Arc<dyn PciBars>,
        mappings: Vec<Arc<BarMapping>>,
        notify_map: Option<Arc<BarMapping>>,
        dma: Dma,
        vfio: Option<VfioHandles>,
        opts: &PciOptions,
    ) -> Result<Self> {
        let pci = |source| -> Error {
            PciTransportError::Pci {
                bdf: bdf.into(),
                source,
            }
            .into()
        };
        let mut common = CommonCfg::new(Arc::clone(&bars), &layout.common).map_err(pci)?;
        // Reset first: an earlier driver may have left the device running.
        common.reset(opts.reset_timeout).map_err(pci)?;
        let num_queues = common.num_queues().map_err(pci)?;
        let offered = common.device_features().map_err(pci)?;
        Ok(Self {
            bdf: bdf.to_owned(),
            layout,
            bars,
            common: Mutex::new(common),
            notify_map,
            mappings,
            dma,
            num_queues,
            offered,
            alive: AtomicBool::new(true),
            req_watch: std::sync::OnceLock::new(),
            msix: Vec::new(),
            opts: *opts,
            _vfio: vfio,
        })
    }

    /// The function's address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// What the config space says.
    pub fn layout(&self) -> &VirtioPciLayout {
        &self.layout
    }

    fn lock(&self) -> Result<MutexGuard<'_, CommonCfg<Arc<dyn PciBars>>>> {
        if !self.alive.load(Ordering::Acquire) {
            return Err(Error::Disconnected);
        }
        Ok(self.common.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Wraps a register error; a device that reads all ones is gone for good.
    fn err(&self, source: PciError) -> Error {
        if matches!(source, PciError::DeviceGone) && self.alive.swap(false, Ordering::AcqRel) {
            tracing::error!(target: TARGET, bdf = %self.bdf, "virtio-pci function reads all ones: removed");
        }
        PciTransportError::Pci {
            bdf: self.bdf.as_str().into(),
            source,
        }
        .into()
    }

    fn ring_visible(&self, addrs: &RingAddrs) -> bool {
        match &self.dma {
            // Physical: the queue translated the ring; every region is visible.
            Dma::Identity | Dma::Physical(_) => true,
            Dma::Vfio(d) => [addrs.desc, addrs.avail, addrs.used].iter().all(|a| {
                d.domain
                    .lookup(a.0, 1)
                    .is_some_and(|(r, _)| self.region_visible(r))
            }),
        }
    }
}

impl Transport for PciTransport {
    fn kind(&self) -> &'static str {
        "pci"
    }

    fn transport_features(&self) -> u64 {
        // ACCESS_PLATFORM must be accepted when offered (QEMU clears FEATURES_OK
        // otherwise); IOVAs are what the descriptors carry.
        vbdev_virtio::device::features::ACCESS_PLATFORM
    }

    fn device_features(&self) -> Result<u64> {
        let mut c = self.lock()?;
        c.device_features().map_err(|e| self.err(e))
    }

    fn set_driver_features(&self, features: u64) -> Result<()> {
        // Never NOTIFICATION_DATA (the doorbell is the 16-bit index) nor
        // NOTIF_CONFIG_DATA or RING_RESET (not implemented).
        let f = features
            & !(transport_features::NOTIFICATION_DATA
                | transport_features::NOTIF_CONFIG_DATA
                | transport_features::RING_RESET);
        let mut c = self.lock()?;
        c.set_driver_features(f).map_err(|e| self.err(e))
    }

    fn status(&self) -> Result<u8> {
        let c = self.lock()?;
        c.device_status().map_err(|e| self.err(e))
    }

    fn set_status(&self, status: u8) -> Result<()> {
        let c = self.lock()?;
        if status == 0 {
            // §4.1.4.3.2: wait until the reset completes.
            c.reset(self.opts.reset_timeout).map_err(|e| self.err(e))
        } else {
            c.set_device_status(status).map_err(|e| self.err(e))
        }
    }

    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<()> {
        let c = self.lock()?;
        c.read_device_config(&self.layout.device, offset, buf)
            .map_err(|e| self.err(e))
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn max_queue_size(&self, index: u16) -> u16 {
        let Ok(mut c) = self.lock() else { return 0 };
        c.queue(index).and_then(|q| q.size()).unwrap_or(0)
    }

    fn setup_queue(&self, index: u16, addrs: &RingAddrs) -> Result<QueueHandles> {
        if index >= self.num_queues {
            return Err(Error::NoSuchQueue { index });
        }
        if !self.ring_visible(addrs) {
            return Err(Error::BadConfig {
                what: format!("queue {index}: its ring is in a DMA region the IOMMU does not map"),
            });
        }
        // Queue i takes MSI-X vector i (modulo the vectors there are); none: polled.
        let vector = (!self.msix.is_empty()).then(|| usize::from(index) % self.msix.len());
        let setup = {
            let mut c = self.lock()?;
            let q = c.queue(index).map_err(|e| self.err(e))?;
            let v = vector.map_or(NO_VECTOR, |v| v as u16); // v < msix.len() <= MAX_MSIX
            q.configure(addrs, v).map_err(|e| self.err(e))?
        };
        // NOTIF_CONFIG_DATA is never negotiated: the doorbell value is the index.
        let doorbell = self
            .layout
            .notify
            .doorbell(index, setup.notify_off, None)
            .map_err(|e| self.err(e))?;
        let notifier = match self
            .notify_map
            .as_ref()
            .and_then(|m| MmioDoorbell::new(Arc::clone(m), &doorbell))
        {
            Some(d) => Notifier::doorbell(Box::new(d)),
            None => Notifier::doorbell(Box::new(BarsDoorbell {
                bars: Arc::clone(&self.bars),
                doorbell,
            })),
        };
        let io = |op| move |source| Error::Io { op, source };
        let call = match vector {
            // The vector's eventfd (shared by the queues on the same vector: a spurious
            // wake-up only costs an empty poll).
            Some(v) => CallFd::new(self.msix[v].try_clone().map_err(io("dup eventfd"))?)
                .map_err(io("epoll"))?,
            None => CallFd::polled().map_err(io("eventfd"))?,
        };
        tracing::debug!(target: TARGET, bdf = %self.bdf, queue = index, size = setup.size, doorbell = doorbell.offset, "virtqueue set up");
        Ok(QueueHandles { notifier, call })
    }

    /// Does nothing and returns 0: without VIRTIO_F_RING_RESET a queue cannot be
    /// stopped alone (the driver MUST NOT write 0 to `queue_enable`, §4.1.4.3.2) and PCI
    /// has no register with the device's available index; `shutdown` resets the device.
    fn stop_queue(&self, index: u16) -> Result<u16> {
        if index >= self.num_queues {
            return Err(Error::NoSuchQueue { index });
        }
        Ok(0)
    }

    fn phys_map(&self) -> Option<&'static PhysMap> {
        match &self.dma {
            Dma::Physical(m) => Some(m),
            Dma::Vfio(_) | Dma::Identity => None,
        }
    }

    fn region_visible(&self, region: RegionId) -> bool {
        match &self.dma {
            Dma::Identity | Dma::Physical(_) => true,
            Dma::Vfio(d) => d.mapped.load(Ordering::Relaxed) & region.bit() != 0,
        }
    }

    fn is_alive(&self) -> bool {
        if !self.alive.load(Ordering::Relaxed) {
            return false;
        }
        if self.mappings.iter().any(|m| m.is_gone()) {
            // A BAR access faulted: the function was removed (the SIGBUS guard made
            // the mapping inert).
            if self.alive.swap(false, Ordering::AcqRel) {
                tracing::error!(target: TARGET, bdf = %self.bdf, "virtio-pci function removed (BAR access faulted)");
            }
            return false;
        }
        true
    }

    /// Resets the device, which stops its DMA, and fails every later call.
    fn shutdown(&self) {
        let c = self.common.lock().unwrap_or_else(|e| e.into_inner());
        if self.alive.swap(false, Ordering::AcqRel) {
            if let Err(e) = c.reset(self.opts.reset_timeout) {
                tracing::warn!(target: TARGET, bdf = %self.bdf, error = %e, "reset at shutdown failed");
            }
            tracing::info!(target: TARGET, bdf = %self.bdf, "virtio-pci function reset and released");
        }
    }
}

impl Drop for PciTransport {
    fn drop(&mut self) {
        // The device must stop before the container closes and its DMA mappings go.
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{BAR, BAR_LEN, FakePciConfig, FakePciDevice};
    use vbdev_virtio::device::{VirtioDevice, features as vfeat};
    use vbdev_virtio::{QueueConfig, SplitQueue};

    fn fake(cfg: FakePciConfig) -> (Arc<FakePciDevice>, Arc<PciTransport>) {
        let dev = Arc::new(FakePciDevice::new(cfg));
        let space = dev.config_space();
        let bars: Arc<dyn PciBars> = dev.clone();
        let t = PciTransport::with_bars(
            "fake",
            &space,
            bars,
            |b| (b.get() == BAR).then_some(BAR_LEN),
            &PciOptions::default(),
        )
        .unwrap();
        (dev, Arc::new(t))
    }

    #[test]
    fn init_accepts_access_platform_when_offered() {
        let mut cfg = FakePciConfig::blk(2048);
        cfg.features |=
            vbdev_virtio::device::features::ACCESS_PLATFORM | transport_features::RING_RESET;
        let (dev, t) = fake(cfg);
        let d = VirtioDevice::init(
            t,
            vbdev_virtio::device::DeviceType::Blk,
            vfeat::RING_EVENT_IDX,
            0,
        )
        .unwrap();
        assert!(d.has(vbdev_virtio::device::features::ACCESS_PLATFORM));
        assert_eq!(dev.driver_features() & transport_features::RING_RESET, 0);
        assert_ne!(
            dev.driver_features() & vbdev_virtio::device::features::ACCESS_PLATFORM,
            0
        );
    }

    #[test]
    fn queue_setup_programs_the_device_and_the_doorbell_writes_the_index() {
        let (dev, t) = fake(FakePciConfig::blk(2048));
        let d = VirtioDevice::init(
            t.clone(),
            vbdev_virtio::device::DeviceType::Blk,
            vfeat::RING_EVENT_IDX,
            0,
        )
        .unwrap();
        let vq = SplitQueue::new(
            DmaDomain::global(),
            QueueConfig {
                size: 64,
                event_idx: true,
                indirect_desc: false,
                indirect_max: 1,
                phys: None,
            },
        )
        .unwrap();
        let addrs = vq.addrs();
        let h = t.setup_queue(1, &addrs).unwrap();
        d.driver_ok().unwrap();
        let q = dev.queue(1);
        assert_eq!(q.size, 64);
        assert_eq!(q.msix_vector, NO_VECTOR);
        h.notifier.notify();
        // Queue 1's notify_off is 1, the multiplier 4.
        assert_eq!(dev.take_doorbells(), vec![(4, 1)]);
        assert!(matches!(
            t.setup_queue(2, &addrs),
            Err(Error::NoSuchQueue { index: 2 })
        ));
    }

    #[test]
    fn a_removed_device_turns_the_transport_dead() {
        let (dev, t) = fake(FakePciConfig::blk(2048));
        dev.remove();
        let e = t.status().expect_err("the function is gone");
        assert!(matches!(
            PciTransportError::of(&e),
            Some(PciTransportError::Pci {
                source: PciError::DeviceGone,
                ..
            })
        ));
        assert!(!t.is_alive());
        assert!(matches!(t.status(), Err(Error::Disconnected)));
    }

    #[test]
    fn shutdown_resets_the_device_and_fails_later_calls() {
        let (dev, t) = fake(FakePciConfig::blk(2048));
        let _d =
            VirtioDevice::init(t.clone(), vbdev_virtio::device::DeviceType::Blk, 0, 0).unwrap();
        assert_ne!(dev.status(), 0);
        t.shutdown();
        assert_eq!(dev.status(), 0);
        assert!(matches!(t.device_features(), Err(Error::Disconnected)));
    }

    #[test]
    fn iova_range_capability_is_parsed_and_bounded() {
        // info (24 bytes) + cap header (8) + nr_iovas/reserved (8) + 2 ranges (32).
        let mut b = vec![0u8; 72];
        b[16..20].copy_from_slice(&24u32.to_ne_bytes()); // cap_offset
        b[24..26].copy_from_slice(&1u16.to_ne_bytes()); // IOVA_RANGE
        b[32..36].copy_from_slice(&2u32.to_ne_bytes());
        b[40..48].copy_from_slice(&0u64.to_ne_bytes());
        b[48..56].copy_from_slice(&0xfedf_ffffu64.to_ne_bytes());
        b[56..64].copy_from_slice(&0xfef0_0000u64.to_ne_bytes());
        b[64..72].copy_from_slice(&((1u64 << 39) - 1).to_ne_bytes());
        assert_eq!(
            parse_iova_ranges(&b),
            Some(vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)])
        );
        // A count beyond the buffer, and a chain that loops, give None.
        let mut c = b.clone();
        c[32..36].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse_iova_ranges(&c), None);
        let mut l = b.clone();
        l[24..26].copy_from_slice(&7u16.to_ne_bytes());
        l[28..32].copy_from_slice(&24u32.to_ne_bytes()); // next = itself
        assert_eq!(parse_iova_ranges(&l), None);
    }

    #[test]
    fn regions_outside_the_iova_ranges_are_refused_with_the_ranges() {
        let dma = VfioDma {
            bdf: "0000:00:02.0".into(),
            domain: DmaDomain::global(),
            container: OwnedFd::from(File::open("/dev/null").unwrap()),
            ranges: Some(vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)]),
            mapped: AtomicU64::new(0),
        };
        let fd = {
            DmaDomain::global().reserve().unwrap();
            DmaDomain::global().regions()[0].fd
        };
        let r = |addr, len| RegionInfo {
            id: RegionId(5),
            addr,
            len,
            fd,
            hugetlb: false,
        };
        assert!(dma.check_range(&r(1 << 36, 32 << 20)).is_ok());
        let e = dma.check_range(&r(0x7f00_0000_0000, 32 << 20)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("0xfef00000-0x7fffffffff"), "{msg}");
        assert!(msg.contains("0000:00:02.0"), "{msg}");
        // Across the MSI window.
        assert!(dma.check_range(&r(0xfe00_0000, 32 << 20)).is_err());
    }
}
