//! VFIO: ioctl numbers, the container/group/device opening sequence, DMA maps through
//! the IOMMU (and its IOVA ranges), and interrupt eventfds.

use super::*;

/// VFIO ioctl request numbers: `_IO(VFIO_TYPE, VFIO_BASE + n)` (linux/vfio.h).
pub(super) mod nr {
    use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
    use vmm_sys_util::ioctl_io_nr;

    const T: u32 = VFIO_TYPE as u32;
    ioctl_io_nr!(VFIO_GET_API_VERSION, T, VFIO_BASE);
    ioctl_io_nr!(VFIO_CHECK_EXTENSION, T, VFIO_BASE + 1);
    ioctl_io_nr!(VFIO_SET_IOMMU, T, VFIO_BASE + 2);
    ioctl_io_nr!(VFIO_GROUP_GET_STATUS, T, VFIO_BASE + 3);
    ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, T, VFIO_BASE + 4);
    ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, T, VFIO_BASE + 6);
    ioctl_io_nr!(VFIO_DEVICE_GET_INFO, T, VFIO_BASE + 7);
    ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, T, VFIO_BASE + 8);
    ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, T, VFIO_BASE + 9);
    ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, T, VFIO_BASE + 10);
    ioctl_io_nr!(VFIO_IOMMU_GET_INFO, T, VFIO_BASE + 12);
    ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, T, VFIO_BASE + 13);

    #[cfg(test)]
    #[test]
    fn request_numbers_match_linux() {
        // From linux/vfio.h on x86-64: _IO(';', 100 + n) = 0x3b64 + n.
        assert_eq!(VFIO_GET_API_VERSION(), 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD(), 0x3b6a);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
    }
}
pub(super) use nr::*;

/// `VFIO_DEVICE_FLAGS_PCI`.
pub(super) const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// The IOMMU side: the VFIO container, its IOVA ranges, and which DMA regions are
/// mapped in it.
#[derive(Debug)]
pub(super) struct VfioDma {
    pub(super) bdf: String,
    pub(super) domain: &'static DmaDomain,
    pub(super) container: OwnedFd,
    /// Usable IOVA ranges, inclusive ends; `None` when the kernel does not report them.
    pub(super) ranges: Option<Vec<(u64, u64)>>,
    pub(super) mapped: AtomicU64,
}

impl VfioDma {
    pub(super) fn check_range(&self, r: &RegionInfo) -> Result<()> {
        let Some(ranges) = &self.ranges else {
            return Ok(());
        };
        let last = r.addr + (r.len - 1); // regions are mapped, so this does not overflow
        if ranges.iter().any(|&(s, e)| s <= r.addr && last <= e) {
            return Ok(());
        }
        Err(PciTransportError::IovaOutOfRange(Box::new(IovaOutOfRange {
            bdf: self.bdf.clone(),
            addr: r.addr,
            end: r.addr + r.len,
            ranges: format_ranges(ranges),
        }))
        .into())
    }

    /// Maps region `r` at IOVA = its address, unless it is mapped already.
    pub(super) fn map(&self, r: &RegionInfo) -> Result<()> {
        let bit = r.id.bit();
        if self.mapped.load(Ordering::Acquire) & bit != 0 {
            return Ok(());
        }
        self.check_range(r)?;
        let map = vb::vfio_iommu_type1_dma_map {
            argsz: size_of::<vb::vfio_iommu_type1_dma_map>() as u32,
            flags: vb::VFIO_DMA_MAP_FLAG_READ | vb::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: r.addr,
            iova: r.addr,
            size: r.len,
        };
        // SAFETY: VFIO_IOMMU_MAP_DMA reads a `vfio_iommu_type1_dma_map` of `argsz` bytes,
        // which `map` is (vfio-bindings pins its layout). The range it names is a DMA
        // region, mapped read-write until the process exits (DmaDomain's invariant), so
        // the pages the kernel pins stay ours for as long as the container exists.
        let rc = unsafe { ioctl_with_ref(&self.container, VFIO_IOMMU_MAP_DMA(), &map) };
        if rc < 0 {
            // EEXIST: mapped meanwhile by the other path (listener or attach).
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) {
                self.mapped.fetch_or(bit, Ordering::AcqRel);
                return Ok(());
            }
            return Err(PciTransportError::Vfio(Box::new(VfioError {
                bdf: self.bdf.clone(),
                step: format!(
                    "VFIO_IOMMU_MAP_DMA of DMA region {} ({:#x}+{:#x})",
                    r.id.0, r.addr, r.len
                ),
                cause: e,
                hint: ": is RLIMIT_MEMLOCK large enough (it counts pinned memory)?",
            }))
            .into());
        }
        self.mapped.fetch_or(bit, Ordering::AcqRel);
        tracing::debug!(target: TARGET, bdf = %self.bdf, region = r.id.0, addr = r.addr, len = r.len, "DMA region mapped in the IOMMU");
        Ok(())
    }
}

pub(super) fn format_ranges(ranges: &[(u64, u64)]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|(s, e)| format!("{s:#x}-{e:#x}"))
        .collect();
    format!("[{}]", parts.join(", "))
}

impl RegionListener for VfioDma {
    fn region_added(&self, region: &RegionInfo) {
        if let Err(e) = self.map(region) {
            tracing::warn!(target: TARGET, bdf = %self.bdf, region = region.id.0, error = %e, "new DMA region is not visible to the device");
        }
    }
}

/// What keeps an opened function open: dropped after the device is reset.
#[derive(Debug)]
pub(super) struct VfioHandles {
    pub(super) _group: Option<OwnedFd>,
    pub(super) _container: Option<OwnedFd>,
}

/// The number of interrupts of VFIO index `index` that can signal an eventfd (0: none).
pub(super) fn irq_count(device: &OwnedFd, index: u32) -> u32 {
    let mut info = vb::vfio_irq_info {
        argsz: size_of::<vb::vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_IRQ_INFO writes at most `argsz` bytes of a `vfio_irq_info`
    // into `info`, which is that struct, exclusively borrowed.
    let rc = unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_IRQ_INFO(), &mut info) };
    if rc < 0 || info.flags & vb::VFIO_IRQ_INFO_EVENTFD == 0 {
        return 0;
    }
    info.count
}

/// Makes interrupts `0..fds.len()` of VFIO index `index` signal `fds` (enabling MSI-X
/// when `index` is the MSI-X one).
pub(super) fn set_irq_eventfds(
    device: &OwnedFd,
    index: u32,
    fds: &[EventFd],
) -> std::io::Result<()> {
    // vfio_irq_set's five u32 fields, then one eventfd number per interrupt.
    let header = size_of::<vb::vfio_irq_set>() / 4;
    let mut words = vec![0u32; header + fds.len()];
    words[0] = (words.len() * 4) as u32; // argsz
    words[1] = vb::VFIO_IRQ_SET_DATA_EVENTFD | vb::VFIO_IRQ_SET_ACTION_TRIGGER;
    words[2] = index;
    words[3] = 0; // start
    words[4] = fds.len() as u32; // count; callers pass at most MAX_MSIX
    for (w, fd) in words[header..].iter_mut().zip(fds) {
        *w = fd.as_raw_fd() as u32;
    }
    // SAFETY: VFIO_DEVICE_SET_IRQS reads `argsz` bytes from the pointer: the
    // `vfio_irq_set` header (five u32s, 4-byte aligned) followed by `count` i32 eventfd
    // numbers, all inside `words`, which lives across the call; VFIO takes its own
    // references to the eventfds.
    let rc = unsafe { ioctl_with_ptr(device, VFIO_DEVICE_SET_IRQS(), words.as_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Most MSI-X vectors set up (queues beyond share them).
pub(super) const MAX_MSIX: u32 = 64;

/// Enables MSI-X through VFIO with one eventfd per vector (up to [`MAX_MSIX`]), or
/// returns none when the function has no MSI-X or VFIO refuses (then polled).
pub(super) fn msix_eventfds(device: &OwnedFd, bdf: &str) -> Vec<EventFd> {
    let n = irq_count(device, vb::VFIO_PCI_MSIX_IRQ_INDEX).min(MAX_MSIX);
    if n == 0 {
        tracing::debug!(target: TARGET, bdf, "no MSI-X through VFIO: queues are polled");
        return Vec::new();
    }
    let Ok(fds) = (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK))
        .collect::<std::io::Result<Vec<_>>>()
    else {
        return Vec::new();
    };
    if let Err(e) = set_irq_eventfds(device, vb::VFIO_PCI_MSIX_IRQ_INDEX, &fds) {
        tracing::warn!(target: TARGET, bdf, error = %e, "MSI-X could not be enabled through VFIO: queues are polled");
        return Vec::new();
    }
    tracing::debug!(target: TARGET, bdf, vectors = n, "MSI-X enabled through VFIO");
    fds
}

/// The IOVA ranges of a type1 container (`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`), or
/// `None` when the kernel does not report them (before Linux 5.4).
pub(super) fn iova_ranges(container: &OwnedFd) -> Option<Vec<(u64, u64)>> {
    const INFO_LEN: usize = size_of::<vb::vfio_iommu_type1_info>();
    let mut info = vb::vfio_iommu_type1_info {
        argsz: INFO_LEN as u32,
        ..Default::default()
    };
    // SAFETY: VFIO_IOMMU_GET_INFO writes at most `argsz` bytes (the struct's size) into
    // `info`, exclusively borrowed; it raises `argsz` to say how much the capabilities need.
    let rc = unsafe { ioctl_with_mut_ref(container, VFIO_IOMMU_GET_INFO(), &mut info) };
    if rc < 0 || info.flags & vb::VFIO_IOMMU_INFO_CAPS == 0 || (info.argsz as usize) <= INFO_LEN {
        return None;
    }
    let len = info.argsz as usize;
    // u64 words keep the buffer aligned for the struct at its start.
    let mut words = vec![0u64; len.div_ceil(8)];
    let head = vb::vfio_iommu_type1_info {
        argsz: len as u32,
        ..Default::default()
    };
    // SAFETY: `words` holds at least INFO_LEN bytes, 8-byte aligned, and nothing else
    // references it; the struct is plain data.
    unsafe {
        words
            .as_mut_ptr()
            .cast::<vb::vfio_iommu_type1_info>()
            .write(head)
    };
    // SAFETY: the buffer is `argsz` bytes long (rounded up to whole words), starts with
    // the `vfio_iommu_type1_info` the request expects and is not otherwise referenced,
    // so the kernel's write of at most `argsz` bytes stays inside memory we own.
    let rc = unsafe { ioctl_with_mut_ptr(container, VFIO_IOMMU_GET_INFO(), words.as_mut_ptr()) };
    if rc < 0 {
        return None;
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    parse_iova_ranges(&bytes[..len])
}

pub(super) fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
pub(super) fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
pub(super) fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Walks the capability chain of a `vfio_iommu_type1_info` buffer for the IOVA range
/// capability; every offset is bounds-checked and the walk ends after 64 capabilities.
pub(super) fn parse_iova_ranges(b: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut at = rd_u32(
        b,
        std::mem::offset_of!(vb::vfio_iommu_type1_info, cap_offset),
    )? as usize;
    for _ in 0..64 {
        if at == 0 {
            return None;
        }
        let id = rd_u16(b, at)?;
        let next = rd_u32(b, at + 4)? as usize;
        if u32::from(id) == vb::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = rd_u32(b, at + 8)? as usize;
            let first = at + size_of::<vb::vfio_iommu_type1_info_cap_iova_range>();
            let ranges = (0..n.min(1024))
                .map(|i| {
                    let r = first + i * size_of::<vb::vfio_iova_range>();
                    Some((rd_u64(b, r)?, rd_u64(b, r + 8)?))
                })
                .collect::<Option<Vec<_>>>()?;
            return Some(ranges);
        }
        at = next;
    }
    None
}

/// Error helpers of [`PciTransport::open_vfio`], naming the function.
pub(super) struct VfioOpen {
    pub(super) bdf: String,
    pub(super) sysfs: PathBuf,
}

impl VfioOpen {
    pub(super) fn new(bdf: &str) -> Result<Self> {
        let sysfs = Path::new("/sys/bus/pci/devices").join(bdf);
        let v = Self {
            bdf: bdf.to_owned(),
            sysfs,
        };
        if !v.sysfs.exists() {
            return Err(v.setup(format!(
                "no such PCI function ({} does not exist; the form is 0000:00:02.0)",
                v.sysfs.display()
            )));
        }
        Ok(v)
    }

    pub(super) fn setup(&self, what: String) -> Error {
        PciTransportError::Setup {
            bdf: self.bdf.as_str().into(),
            what,
        }
        .into()
    }

    pub(super) fn vfio(&self, step: &str, cause: std::io::Error, hint: &'static str) -> Error {
        PciTransportError::Vfio(Box::new(VfioError {
            bdf: self.bdf.clone(),
            step: step.to_owned(),
            cause,
            hint,
        }))
        .into()
    }

    pub(super) fn pci(&self, source: PciError) -> Error {
        PciTransportError::Pci {
            bdf: self.bdf.as_str().into(),
            source,
        }
        .into()
    }

    /// Fails with the last OS error when an ioctl returned a negative value.
    pub(super) fn check(
        &self,
        rc: i32,
        step: impl FnOnce() -> String,
        hint: &'static str,
    ) -> Result<()> {
        if rc < 0 {
            let cause = std::io::Error::last_os_error();
            return Err(self.vfio(&step(), cause, hint));
        }
        Ok(())
    }

    pub(super) fn open_file(&self, path: &Path, hint: &'static str) -> Result<OwnedFd> {
        File::options()
            .read(true)
            .write(true)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|e| self.vfio(&format!("open {}", path.display()), e, hint))
    }

    /// The name of the driver the function is bound to.
    pub(super) fn driver(&self) -> Option<String> {
        std::fs::read_link(self.sysfs.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// The domain's physical map, or the error that `way` needs physical mode.
    pub(super) fn phys_map(
        &self,
        domain: &'static DmaDomain,
        way: &str,
    ) -> Result<&'static PhysMap> {
        domain.phys_map().ok_or_else(|| {
            self.setup(format!(
                "{way} gives the device physical addresses, and the DMA memory is not in physical mode (DmaConfig::physical: 2 MiB huge pages)"
            ))
        })
    }

    /// The IOMMU group number, its VFIO node and whether it is a no-IOMMU group, after
    /// checking the driver binding.
    pub(super) fn find_group(&self) -> Result<(String, PathBuf, bool)> {
        match self.driver().as_deref() {
            Some("vfio-pci") => {}
            Some(other) => {
                return Err(self.setup(format!(
                    "bound to {other}, not vfio-pci (echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe)",
                    bdf = self.bdf
                )));
            }
            None => return Err(self.setup("bound to no driver; bind it to vfio-pci".into())),
        }
        let link = std::fs::read_link(self.sysfs.join("iommu_group")).map_err(|e| {
            self.vfio(
                &format!("read {}/iommu_group", self.sysfs.display()),
                e,
                ": the function has no IOMMU group (is the IOMMU on? intel_iommu=on)",
            )
        })?;
        let group = link
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| self.setup(format!("odd iommu_group link {}", link.display())))?;
        let node = PathBuf::from(format!("/dev/vfio/{group}"));
        let noiommu = PathBuf::from(format!("/dev/vfio/noiommu-{group}"));
        if !node.exists() && noiommu.exists() {
            return Ok((group, noiommu, true));
        }
        Ok((group, node, false))
    }
}
