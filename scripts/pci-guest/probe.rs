//! Self-test probe of the PCI guest harness (selftest.sh). Runs inside the
//! guest, with no crates: `rustc -O probe.rs`.
//!
//! For every BDF in VBDEV_PCI_BLK and VBDEV_PCI_SCSI it
//! - reads `/sys/bus/pci/devices/$BDF/config`, checks vendor 0x1af4 and the
//!   device id (0x1042 blk, 0x1048 scsi, virtio 1.2 §4.1.2.1),
//! - walks the capability list and prints the virtio vendor-specific
//!   capabilities (id 0x09, virtio 1.2 §4.1.4) and MSI-X; requires common (1),
//!   notify (2), ISR (3) and device (4) configuration,
//! - prints the BARs from sysfs `resource`,
//! - maps the BAR holding the common configuration (VFIO region or sysfs
//!   `resourceN`) and reads `device_feature` and `num_queues` from it,
//! - in the vfio modes: `VFIO_GET_API_VERSION` (0), `VFIO_CHECK_EXTENSION`,
//!   group viability, container + IOMMU type, device fd, regions and IRQs.
//!
//! Prints `PROBE-OK` and exits 0 when every check passed, otherwise exits 1.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

// VFIO ioctls: _IO(VFIO_TYPE ';' = 0x3b, VFIO_BASE 100 + n) (linux/vfio.h).
const VFIO_GET_API_VERSION: u64 = 0x3b64;
const VFIO_CHECK_EXTENSION: u64 = 0x3b65;
const VFIO_SET_IOMMU: u64 = 0x3b66;
const VFIO_GROUP_GET_STATUS: u64 = 0x3b67;
const VFIO_GROUP_SET_CONTAINER: u64 = 0x3b68;
const VFIO_GROUP_GET_DEVICE_FD: u64 = 0x3b6a;
const VFIO_DEVICE_GET_INFO: u64 = 0x3b6b;
const VFIO_DEVICE_GET_REGION_INFO: u64 = 0x3b6c;
const VFIO_DEVICE_GET_IRQ_INFO: u64 = 0x3b6d;
const VFIO_DEVICE_SET_IRQS: u64 = 0x3b6e;
const VFIO_IOMMU_MAP_DMA: u64 = 0x3b71;
const VFIO_TYPE1V2_IOMMU: u64 = 3;
const VFIO_NOIOMMU_IOMMU: u64 = 8;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 4;

const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_SHARED: i32 = 1;
const MAP_PRIVATE: i32 = 2;
const MAP_ANONYMOUS: i32 = 0x20;
const MAP_POPULATE: i32 = 0x8000;
const O_SYNC: i32 = 0o4010000;

const VIRTIO_F_VERSION_1: u32 = 32;
const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;

unsafe extern "C" {
    fn ioctl(fd: i32, req: u64, ...) -> i32;
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn munmap(addr: *mut u8, len: usize) -> i32;
    fn mlock(addr: *mut u8, len: usize) -> i32;
    fn eventfd(initval: u32, flags: i32) -> i32;
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
    fn read(fd: i32, buf: *mut u8, count: usize) -> isize;
    fn close(fd: i32) -> i32;
}

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct DeviceInfo {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

/// A virtio PCI capability (virtio 1.2 §4.1.4 `struct virtio_pci_cap`).
struct VirtioCap {
    cfg_type: u8,
    bar: u8,
    offset: u32,
    length: u32,
    /// Only for cfg_type 2 (notify), else 0.
    notify_off_multiplier: u32,
}

struct Probe {
    failures: u32,
}

impl Probe {
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            println!("  ok   {what}");
        } else {
            println!("  FAIL {what}");
            self.failures += 1;
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// ioctl whose argument is an integer (or nothing); the errno on failure.
fn ioctl_val(fd: i32, req: u64, arg: u64) -> Result<i32, std::io::Error> {
    // SAFETY: every request passed here takes an integer argument or none
    // (linux/vfio.h), so the kernel reads no memory through `arg`; `fd` is open.
    let r = unsafe { ioctl(fd, req, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// ioctl whose argument points at `T`, a `#[repr(C)]` struct of linux/vfio.h
/// whose `argsz` the caller has set to its size.
fn ioctl_ptr<T>(fd: i32, req: u64, arg: &mut T) -> Result<i32, std::io::Error> {
    // SAFETY: `arg` is a valid, exclusive pointer to a `T` for the duration of
    // the call, and `T` is the layout `req` reads and writes, no larger than
    // its `argsz` (set by the caller to size_of::<T>()).
    let r = unsafe { ioctl(fd, req, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A shared mapping of part of a BAR, unmapped on drop.
struct Bar {
    base: *mut u8,
    len: usize,
}

impl Bar {
    fn map(fd: i32, offset: u64, len: usize) -> Result<Bar, std::io::Error> {
        // SAFETY: a fresh shared mapping chosen by the kernel (addr null); it
        // aliases no Rust object. `fd` is open for the call.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                PROT_READ | PROT_WRITE,
                MAP_SHARED,
                fd,
                offset as i64,
            )
        };
        if base as isize == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Bar { base, len })
    }

    fn read32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (asserted); device memory stays mapped
        // until drop. Volatile: every access is an MMIO access.
        unsafe { std::ptr::read_volatile(self.base.add(off) as *const u32) }
    }

    fn read16(&self, off: usize) -> u16 {
        assert!(off + 2 <= self.len && off.is_multiple_of(2));
        // SAFETY: as in read32.
        unsafe { std::ptr::read_volatile(self.base.add(off) as *const u16) }
    }

    fn read8(&self, off: usize) -> u8 {
        assert!(off < self.len);
        // SAFETY: as in read32.
        unsafe { std::ptr::read_volatile(self.base.add(off)) }
    }

    fn write8(&self, off: usize, v: u8) {
        assert!(off < self.len);
        // SAFETY: as in read32.
        unsafe { std::ptr::write_volatile(self.base.add(off), v) }
    }

    fn write16(&self, off: usize, v: u16) {
        assert!(off + 2 <= self.len && off.is_multiple_of(2));
        // SAFETY: as in read32.
        unsafe { std::ptr::write_volatile(self.base.add(off) as *mut u16, v) }
    }

    fn write32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: as in read32.
        unsafe { std::ptr::write_volatile(self.base.add(off) as *mut u32, v) }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made in `map`, used by nothing else.
        unsafe { munmap(self.base, self.len) };
    }
}

/// Reads the common configuration through `bar` (virtio 1.2 §4.1.4.3).
fn read_common(p: &mut Probe, bar: &Bar, off: usize, mode: &str) {
    bar.write32(off, 0); // device_feature_select
    let lo = bar.read32(off + 4);
    bar.write32(off, 1);
    let hi = bar.read32(off + 4);
    let features = (u64::from(hi) << 32) | u64::from(lo);
    let num_queues = bar.read16(off + 0x12);
    let status = bar.read32(off + 0x14) & 0xff;
    println!(
        "  common cfg: device_feature=0x{features:016x} num_queues={num_queues} device_status=0x{status:02x}"
    );
    p.check(
        features & (1 << VIRTIO_F_VERSION_1) != 0,
        "VIRTIO_F_VERSION_1 offered (modern device)",
    );
    let ap = features & (1 << VIRTIO_F_ACCESS_PLATFORM) != 0;
    if mode == "vfio" {
        p.check(
            ap,
            "VIRTIO_F_ACCESS_PLATFORM offered (iommu_platform=on behind the vIOMMU)",
        );
    } else {
        println!("  info ACCESS_PLATFORM offered: {ap}");
    }
    p.check(num_queues > 0, "num_queues > 0");
}

#[derive(Default)]
struct Opts {
    /// Run the virtio-blk I/O and interrupt test on each blk function.
    io: bool,
    /// The string sector 0 of the blk disk must start with.
    expect_mark: Option<String>,
}

/// How the device raises interrupts to user space.
enum Irq {
    /// VFIO device fd: MSI-X vector 0 through VFIO_DEVICE_SET_IRQS.
    Msix(File),
    /// /dev/uioN: INTx, unmasked by writing 1, signalled by read().
    Uio(File),
}

/// What the device is given as a DMA address.
enum Dma {
    /// VFIO type1 container fd: IOVAs mapped with VFIO_IOMMU_MAP_DMA.
    Type1(i32),
    /// Guest-physical addresses from /proc/self/pagemap (no-IOMMU, uio).
    Phys,
}

/// A device opened for user-space access.
struct Access {
    /// The BAR holding the common configuration, mapped whole.
    bar: Bar,
    bar_index: u8,
    /// Config space: the VFIO device fd (at `cfg_offset`) or sysfs `config`.
    cfg: File,
    cfg_offset: u64,
    irq: Irq,
    dma: Dma,
    /// Container and group files that must stay open.
    _keep: Vec<File>,
}

const PAGE: usize = 4096;
const QSIZE: u16 = 8;
const IOVA_BASE: u64 = 0x4000_0000;
const NO_VECTOR: u16 = 0xffff;

// virtio 1.2 §4.1.4.3 common configuration offsets.
const C_DFSELECT: usize = 0x00;
const C_DF: usize = 0x04;
const C_GFSELECT: usize = 0x08;
const C_GF: usize = 0x0c;
const C_MSIX: usize = 0x10;
const C_STATUS: usize = 0x14;
const C_Q_SELECT: usize = 0x16;
const C_Q_SIZE: usize = 0x18;
const C_Q_MSIX: usize = 0x1a;
const C_Q_ENABLE: usize = 0x1c;
const C_Q_NOFF: usize = 0x1e;
const C_Q_DESC: usize = 0x20;
const C_Q_DRIVER: usize = 0x28;
const C_Q_DEVICE: usize = 0x30;

// Layout of the two DMA pages: page 0 holds the split virtqueue (each part
// inside the page, so one physical address per page is enough), page 1 the
// request headers, data and status bytes.
const DESC_OFF: usize = 0;
const AVAIL_OFF: usize = 256;
const USED_OFF: usize = 512;

fn pagemap_phys(va: usize) -> Result<u64, String> {
    let f = File::open("/proc/self/pagemap").map_err(|e| format!("open pagemap: {e}"))?;
    let mut b = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, (va / PAGE * 8) as u64)
        .map_err(|e| format!("read pagemap: {e}"))?;
    let e = u64::from_le_bytes(b);
    let pfn = e & ((1 << 55) - 1);
    if e >> 63 == 0 || pfn == 0 {
        return Err(format!(
            "page 0x{va:x} not present or PFN hidden (entry 0x{e:x})"
        ));
    }
    Ok(pfn * PAGE as u64)
}

/// Waits up to `ms` for `fd` to become readable.
fn wait_readable(fd: i32, ms: i32) -> bool {
    let mut pfd = PollFd {
        fd,
        events: 1,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the call.
    let r = unsafe { poll(&mut pfd, 1, ms) };
    r == 1 && pfd.revents & 1 != 0
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

#[repr(C)]
struct IrqSet1 {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    data: [i32; 1],
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// Resets the device, negotiates VERSION_1 (+ ACCESS_PLATFORM when offered),
/// sets up request queue 0 with an interrupt, then reads sector 0 and writes
/// sector 1 (virtio 1.2 §3.1.1, §5.2.6). Reports whether the interrupts came.
fn io_test(p: &mut Probe, a: &Access, caps: &[VirtioCap], mode: &str, opts: &Opts) {
    println!("  io test (virtio-blk, queue 0, size {QSIZE}):");
    let cap = |t: u8| caps.iter().find(|c| c.cfg_type == t);
    let (Some(common), Some(notify), Some(isr)) = (cap(1), cap(2), cap(3)) else {
        return;
    };
    if notify.bar != a.bar_index || isr.bar != a.bar_index {
        p.check(false, "common, notify and ISR in the same BAR");
        return;
    }
    let co = common.offset as usize;
    let bar = &a.bar;

    // Bus mastering (PCI command bit 2) and memory space (bit 1).
    let mut cmd = [0u8; 2];
    let cfg = &a.cfg;
    use std::os::unix::fs::FileExt;
    if cfg.read_exact_at(&mut cmd, a.cfg_offset + 4).is_ok() {
        let v = u16::from_le_bytes(cmd) | 0x6;
        p.check(
            cfg.write_all_at(&v.to_le_bytes(), a.cfg_offset + 4).is_ok(),
            "bus master enabled",
        );
    }

    // Reset, then wait for the status to read back 0 (§4.1.4.3.2).
    bar.write8(co + C_STATUS, 0);
    let mut n = 0;
    while bar.read8(co + C_STATUS) != 0 && n < 1000 {
        n += 1;
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    p.check(
        bar.read8(co + C_STATUS) == 0,
        "reset: device_status reads back 0",
    );
    bar.write8(co + C_STATUS, 1); // ACKNOWLEDGE
    bar.write8(co + C_STATUS, 1 | 2); // DRIVER
    bar.write32(co + C_DFSELECT, 1);
    let hi = bar.read32(co + C_DF);
    let mut want_hi = 1; // VERSION_1 (bit 32)
    if hi & 2 != 0 {
        want_hi |= 2; // ACCESS_PLATFORM (bit 33)
    }
    bar.write32(co + C_GFSELECT, 0);
    bar.write32(co + C_GF, 0);
    bar.write32(co + C_GFSELECT, 1);
    bar.write32(co + C_GF, want_hi);
    bar.write8(co + C_STATUS, 1 | 2 | 8); // FEATURES_OK
    let st = bar.read8(co + C_STATUS);
    p.check(
        st & 8 != 0,
        &format!("FEATURES_OK accepted (driver features hi 0x{want_hi:x}, status 0x{st:02x})"),
    );
    if st & 8 == 0 {
        return;
    }

    // DMA memory: two locked 4 KiB pages.
    let len = 2 * PAGE;
    // SAFETY: a fresh private anonymous mapping; no Rust object aliases it.
    let va = unsafe {
        mmap(
            std::ptr::null_mut(),
            len,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
            -1,
            0,
        )
    };
    if va as isize == -1 {
        p.check(false, "mmap DMA pages");
        return;
    }
    // SAFETY: `va`/`len` is the mapping above.
    p.check(unsafe { mlock(va, len) } == 0, "mlock DMA pages");
    let mut dma = [0u64; 2];
    match a.dma {
        Dma::Type1(container) => {
            let mut m = DmaMap {
                argsz: size_of::<DmaMap>() as u32,
                flags: 3,
                vaddr: va as u64,
                iova: IOVA_BASE,
                size: len as u64,
            };
            let r = ioctl_ptr(container, VFIO_IOMMU_MAP_DMA, &mut m);
            p.check(
                r.is_ok(),
                &format!("VFIO_IOMMU_MAP_DMA va {va:p} -> iova 0x{IOVA_BASE:x} {r:?}"),
            );
            dma = [IOVA_BASE, IOVA_BASE + PAGE as u64];
        }
        Dma::Phys => {
            for (i, d) in dma.iter_mut().enumerate() {
                match pagemap_phys(va as usize + i * PAGE) {
                    Ok(pa) => *d = pa,
                    Err(e) => {
                        p.check(false, &e);
                        return;
                    }
                }
            }
            println!(
                "    DMA pages at guest-physical 0x{:x} 0x{:x} (pagemap)",
                dma[0], dma[1]
            );
        }
    }
    // SAFETY: `va` is valid for `len` bytes and stays mapped until munmap
    // below; the device writes parts of it, so it is read volatile.
    let mem = unsafe { std::slice::from_raw_parts_mut(va, len) };
    let w16 = |m: &mut [u8], off: usize, v: u16| m[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let w32 = |m: &mut [u8], off: usize, v: u32| m[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let w64 = |m: &mut [u8], off: usize, v: u64| m[off..off + 8].copy_from_slice(&v.to_le_bytes());

    // Interrupt: MSI-X vector 0 -> eventfd, or the uio fd (INTx).
    let (irq_fd, msix) = match &a.irq {
        Irq::Msix(dev) => {
            // SAFETY: plain syscall, no pointers.
            let efd = unsafe { eventfd(0, 0) };
            let mut set = IrqSet1 {
                argsz: size_of::<IrqSet1>() as u32,
                flags: (1 << 2) | (1 << 5),
                index: 2,
                start: 0,
                count: 1,
                data: [efd],
            };
            let r = ioctl_ptr(dev.as_raw_fd(), VFIO_DEVICE_SET_IRQS, &mut set);
            p.check(
                efd >= 0 && r.is_ok(),
                &format!("VFIO_DEVICE_SET_IRQS MSI-X vector 0 -> eventfd {efd} {r:?}"),
            );
            (efd, true)
        }
        Irq::Uio(f) => (f.as_raw_fd(), false),
    };
    bar.write16(co + C_MSIX, NO_VECTOR);
    bar.write16(co + C_Q_SELECT, 0);
    let max = bar.read16(co + C_Q_SIZE);
    p.check(max >= QSIZE, &format!("queue 0 max size {max} >= {QSIZE}"));
    bar.write16(co + C_Q_SIZE, QSIZE);
    if msix {
        bar.write16(co + C_Q_MSIX, 0);
        let v = bar.read16(co + C_Q_MSIX);
        p.check(
            v == 0,
            &format!("queue_msix_vector reads back 0 (got 0x{v:x})"),
        );
    }
    let q64 = |off: usize, v: u64| {
        bar.write32(co + off, v as u32);
        bar.write32(co + off + 4, (v >> 32) as u32);
    };
    q64(C_Q_DESC, dma[0] + DESC_OFF as u64);
    q64(C_Q_DRIVER, dma[0] + AVAIL_OFF as u64);
    q64(C_Q_DEVICE, dma[0] + USED_OFF as u64);
    let noff = bar.read16(co + C_Q_NOFF);
    bar.write16(co + C_Q_ENABLE, 1);
    bar.write8(co + C_STATUS, 1 | 2 | 8 | 4); // DRIVER_OK
    let mult = notify.notify_off_multiplier;
    let doorbell = notify.offset as usize + usize::from(noff) * mult as usize;
    println!(
        "    queue_notify_off {noff} multiplier {mult} -> doorbell BAR{} +0x{doorbell:x}",
        a.bar_index
    );

    // Requests: (type, sector, header offset, data offset, status offset).
    let mark = format!("VBDEV-PROBE-WROTE {mode}\n");
    let reqs = [
        (0u32, 0u64, 0usize, 512usize, 1024usize),
        (1, 1, 2048, 2560, 3072),
    ];
    let mut irqs = 0;
    for (n, &(typ, sector, h, d, s)) in reqs.iter().enumerate() {
        let page1 = PAGE;
        w32(mem, page1 + h, typ);
        w32(mem, page1 + h + 4, 0);
        w64(mem, page1 + h + 8, sector);
        if typ == 1 {
            mem[page1 + d..page1 + d + 512].fill(0);
            mem[page1 + d..page1 + d + mark.len()].copy_from_slice(mark.as_bytes());
        }
        mem[page1 + s] = 0xff;
        let base = 3 * n; // descriptors 3n, 3n+1, 3n+2
        let desc = |m: &mut [u8], i: usize, addr: u64, len: u32, flags: u16, next: u16| {
            let o = DESC_OFF + 16 * i;
            w64(m, o, addr);
            w32(m, o + 8, len);
            w16(m, o + 12, flags);
            w16(m, o + 14, next);
        };
        let data_flags = if typ == 0 { 1 | 2 } else { 1 }; // NEXT (| WRITE: device writes)
        desc(mem, base, dma[1] + h as u64, 16, 1, (base + 1) as u16);
        desc(
            mem,
            base + 1,
            dma[1] + d as u64,
            512,
            data_flags,
            (base + 2) as u16,
        );
        desc(mem, base + 2, dma[1] + s as u64, 1, 2, 0);
        w16(mem, AVAIL_OFF + 4 + 2 * n, base as u16);
        // The ring entry must be visible before the index (§2.7.13), and the
        // index before the notification (§2.7.13.3); x86 keeps store order,
        // the fence keeps the compiler from reordering.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        w16(mem, AVAIL_OFF + 2, (n + 1) as u16);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if let Irq::Uio(_) = &a.irq {
            // Unmask INTx: uio_pci_generic masks it (PCI command bit 10,
            // Interrupt Disable) in each interrupt and has no irqcontrol
            // (write(2) on /dev/uioN fails with ENOSYS), so the driver clears
            // the bit through config space, as DPDK does.
            let mut c = [0u8; 2];
            let r = cfg.read_exact_at(&mut c, a.cfg_offset + 4).and_then(|()| {
                let v = u16::from_le_bytes(c) & !0x400;
                cfg.write_all_at(&v.to_le_bytes(), a.cfg_offset + 4)
            });
            if let Err(e) = r {
                p.check(false, &format!("unmask INTx through config space: {e}"));
            }
        }
        let t = std::time::Instant::now();
        bar.write16(doorbell, 0);
        let got_irq = wait_readable(irq_fd, 5000);
        if got_irq {
            let mut b = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `b`.
            unsafe { read(irq_fd, b.as_mut_ptr(), if msix { 8 } else { 4 }) };
            irqs += 1;
            if !msix {
                let _ = bar.read8(isr.offset as usize); // ISR read deasserts INTx
            }
        }
        // Completion: used.idx (read volatile, the device writes it).
        let used_idx = || {
            // SAFETY: in bounds of the mapping; aligned to 2.
            unsafe { std::ptr::read_volatile(va.add(USED_OFF + 2) as *const u16) }
        };
        while used_idx() != (n + 1) as u16 && t.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let done = used_idx() == (n + 1) as u16;
        // The used entry, status and data are read after used.idx (§2.7.14).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: in bounds of the mapping.
        let status = unsafe { std::ptr::read_volatile(va.add(page1 + s)) };
        let what = if typ == 0 {
            "read sector 0"
        } else {
            "write sector 1"
        };
        p.check(
            done && status == 0,
            &format!(
                "{what}: completed {done} status {status} in {} us",
                t.elapsed().as_micros()
            ),
        );
        let how = if msix {
            "MSI-X vector 0 via VFIO eventfd"
        } else {
            "INTx via /dev/uio read"
        };
        p.check(got_irq, &format!("{what}: interrupt ({how})"));
        if typ == 0 {
            let data = &mem[page1 + d..page1 + d + 64];
            let text: String = data
                .iter()
                .take_while(|&&b| b != 0 && b != b'\n')
                .map(|&b| b as char)
                .collect();
            println!("    sector 0 starts with {text:?}");
            if let Some(m) = &opts.expect_mark {
                p.check(text == *m, &format!("sector 0 holds the host's mark {m:?}"));
            }
        }
    }
    println!("    interrupts received: {irqs} of {}", reqs.len());
    bar.write8(co + C_STATUS, 0); // reset: the device stops using the memory
    let mut n = 0;
    while bar.read8(co + C_STATUS) != 0 && n < 1000 {
        n += 1;
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    if msix {
        // SAFETY: closes the eventfd created above, used by nothing else now.
        unsafe { close(irq_fd) };
    }
    // SAFETY: the device is reset and no longer touches the pages.
    unsafe { munmap(va, len) };
}

fn probe_device(p: &mut Probe, kind: &str, bdf: &str, mode: &str, vfio: Option<File>, opts: &Opts) {
    println!("{kind} {bdf}:");
    let sys = format!("/sys/bus/pci/devices/{bdf}");
    let cfg = match fs::read(format!("{sys}/config")) {
        Ok(c) => c,
        Err(e) => {
            p.check(false, &format!("read {sys}/config: {e}"));
            return;
        }
    };
    p.check(
        cfg.len() >= 256,
        &format!("config space readable ({} bytes)", cfg.len()),
    );
    if cfg.len() < 256 {
        return;
    }
    let vendor = le16(&cfg, 0);
    let device = le16(&cfg, 2);
    let want = if kind == "blk" { 0x1042 } else { 0x1048 };
    p.check(
        vendor == 0x1af4,
        &format!("vendor 0x{vendor:04x} == 0x1af4"),
    );
    p.check(
        device == want,
        &format!("device 0x{device:04x} == 0x{want:04x}"),
    );
    println!(
        "  revision {} class 0x{:06x} command 0x{:04x} status 0x{:04x}",
        cfg[8],
        le32(&cfg, 8) >> 8,
        le16(&cfg, 4),
        le16(&cfg, 6)
    );

    // Capability list (PCI 3.0 §6.7): status bit 4, pointer at 0x34.
    let mut caps = Vec::new();
    p.check(le16(&cfg, 6) & 0x10 != 0, "capability list present");
    let mut ptr = usize::from(cfg[0x34] & 0xfc);
    let mut ttl = 48; // at most 48 capabilities fit in 192 bytes
    while ptr != 0 && ttl > 0 {
        ttl -= 1;
        if ptr + 2 > cfg.len() {
            p.check(false, &format!("capability pointer 0x{ptr:02x} in bounds"));
            break;
        }
        let id = cfg[ptr];
        let next = usize::from(cfg[ptr + 1] & 0xfc);
        match id {
            0x09 if ptr + 16 <= cfg.len() => {
                let c = VirtioCap {
                    cfg_type: cfg[ptr + 3],
                    bar: cfg[ptr + 4],
                    offset: le32(&cfg, ptr + 8),
                    length: le32(&cfg, ptr + 12),
                    notify_off_multiplier: if cfg[ptr + 3] == 2 && ptr + 20 <= cfg.len() {
                        le32(&cfg, ptr + 16)
                    } else {
                        0
                    },
                };
                let name = match c.cfg_type {
                    1 => "common",
                    2 => "notify",
                    3 => "isr",
                    4 => "device",
                    5 => "pci-cfg",
                    8 => "shared-memory",
                    _ => "unknown",
                };
                let extra = if c.cfg_type == 2 && ptr + 20 <= cfg.len() {
                    format!(" notify_off_multiplier={}", le32(&cfg, ptr + 16))
                } else {
                    String::new()
                };
                println!(
                    "  cap 0x{ptr:02x}: virtio {name:<7} (cfg_type {}) bar {} offset 0x{:05x} length 0x{:05x} cap_len {}{extra}",
                    c.cfg_type,
                    c.bar,
                    c.offset,
                    c.length,
                    cfg[ptr + 2]
                );
                caps.push(c);
            }
            0x11 => {
                let ctrl = le16(&cfg, ptr + 2);
                let table = le32(&cfg, ptr + 4);
                let pba = le32(&cfg, ptr + 8);
                println!(
                    "  cap 0x{ptr:02x}: MSI-X table size {} table bar {} offset 0x{:x}, PBA bar {} offset 0x{:x}, enabled {}",
                    (ctrl & 0x7ff) + 1,
                    table & 7,
                    table & !7,
                    pba & 7,
                    pba & !7,
                    ctrl >> 15
                );
            }
            _ => println!("  cap 0x{ptr:02x}: id 0x{id:02x}"),
        }
        ptr = next;
    }
    p.check(ttl > 0, "capability list ends");
    for (t, name) in [(1, "common"), (2, "notify"), (3, "isr"), (4, "device")] {
        p.check(
            caps.iter().any(|c| c.cfg_type == t),
            &format!("virtio {name} capability found"),
        );
    }

    // BARs: sysfs `resource` has "start end flags" per BAR.
    if let Ok(res) = fs::read_to_string(format!("{sys}/resource")) {
        for (i, line) in res.lines().take(6).enumerate() {
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok())
                .collect();
            if v.len() == 3 && v[1] > v[0] {
                let kind = if v[2] & 1 != 0 { "io" } else { "mem" };
                let bits = if v[2] & 0x0010_0000 != 0 {
                    ",64-bit"
                } else {
                    ""
                };
                let pf = if v[2] & 0x2000 != 0 {
                    ",prefetchable"
                } else {
                    ""
                };
                println!(
                    "  BAR{i}: 0x{:x} size 0x{:x} ({kind}{bits}{pf})",
                    v[0],
                    v[1] - v[0] + 1
                );
            }
        }
    }
    let Some(common) = caps.iter().find(|c| c.cfg_type == 1) else {
        return;
    };
    let access = match mode {
        "vfio" | "noiommu" => probe_vfio(p, bdf, mode, vfio, common),
        "uio" => probe_uio(p, bdf, common),
        _ => None,
    };
    let Some(access) = access else { return };
    read_common(p, &access.bar, common.offset as usize, mode);
    if kind == "blk" && opts.io {
        io_test(p, &access, &caps, mode, opts);
    }
}

fn probe_uio(p: &mut Probe, bdf: &str, common: &VirtioCap) -> Option<Access> {
    let sys = format!("/sys/bus/pci/devices/{bdf}");
    let uio = fs::read_dir(format!("{sys}/uio"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    p.check(uio.is_some(), "uio device present");
    let u = uio?;
    let ufile = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/{u}"));
    p.check(ufile.is_ok(), &format!("/dev/{u} opens"));
    let ufile = ufile.ok()?;
    let path = format!("{sys}/resource{}", common.bar);
    let f = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_SYNC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            p.check(false, &format!("open {path}: {e}"));
            return None;
        }
    };
    let len = fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
    let bar = match Bar::map(f.as_raw_fd(), 0, len) {
        Ok(bar) => bar,
        Err(e) => {
            p.check(false, &format!("mmap {path}: {e}"));
            return None;
        }
    };
    p.check(true, &format!("mmap {path} ({len} bytes)"));
    let cfg = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("{sys}/config"))
        .ok()?;
    Some(Access {
        bar,
        bar_index: common.bar,
        cfg,
        cfg_offset: 0,
        irq: Irq::Uio(ufile),
        dma: Dma::Phys,
        _keep: vec![],
    })
}

fn probe_vfio(
    p: &mut Probe,
    bdf: &str,
    mode: &str,
    container: Option<File>,
    common: &VirtioCap,
) -> Option<Access> {
    let container = container?;
    let cfd = container.as_raw_fd();
    let group = match fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group")) {
        Ok(g) => g
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        Err(e) => {
            p.check(false, &format!("iommu_group link: {e}"));
            return None;
        }
    };
    let gpath = if mode == "noiommu" {
        format!("/dev/vfio/noiommu-{group}")
    } else {
        format!("/dev/vfio/{group}")
    };
    let gfile = match OpenOptions::new().read(true).write(true).open(&gpath) {
        Ok(f) => f,
        Err(e) => {
            p.check(false, &format!("open {gpath}: {e}"));
            return None;
        }
    };
    p.check(true, &format!("open {gpath} (IOMMU group {group})"));
    let gfd = gfile.as_raw_fd();
    let mut st = GroupStatus {
        argsz: size_of::<GroupStatus>() as u32,
        ..Default::default()
    };
    let r = ioctl_ptr(gfd, VFIO_GROUP_GET_STATUS, &mut st);
    p.check(
        r.is_ok() && st.flags & VFIO_GROUP_FLAGS_VIABLE != 0,
        &format!("group viable (flags 0x{:x})", st.flags),
    );
    // GROUP_SET_CONTAINER takes a pointer to the container fd.
    let mut cfd_arg: i32 = cfd;
    let r = ioctl_ptr(gfd, VFIO_GROUP_SET_CONTAINER, &mut cfd_arg);
    p.check(r.is_ok(), &format!("VFIO_GROUP_SET_CONTAINER {r:?}"));
    let iommu = if mode == "noiommu" {
        VFIO_NOIOMMU_IOMMU
    } else {
        VFIO_TYPE1V2_IOMMU
    };
    // The IOMMU type is set once per container, after its first group.
    let r = ioctl_val(cfd, VFIO_SET_IOMMU, iommu);
    let already = matches!(&r, Err(e) if e.raw_os_error() == Some(16)); // EBUSY: set by an earlier device
    p.check(
        r.is_ok() || already,
        &format!("VFIO_SET_IOMMU({iommu}) {r:?}"),
    );
    let name = std::ffi::CString::new(bdf).expect("BDF has no NUL");
    // SAFETY: GET_DEVICE_FD reads a NUL-terminated string, which `name` is
    // and which lives across the call; `gfd` is open.
    let dfd = unsafe { ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) };
    if dfd < 0 {
        p.check(
            false,
            &format!(
                "VFIO_GROUP_GET_DEVICE_FD: {}",
                std::io::Error::last_os_error()
            ),
        );
        return None;
    }
    p.check(true, &format!("VFIO_GROUP_GET_DEVICE_FD -> fd {dfd}"));
    let mut info = DeviceInfo {
        argsz: size_of::<DeviceInfo>() as u32,
        ..Default::default()
    };
    let r = ioctl_ptr(dfd, VFIO_DEVICE_GET_INFO, &mut info);
    p.check(r.is_ok(), &format!("VFIO_DEVICE_GET_INFO {r:?}"));
    println!(
        "  vfio device: flags 0x{:x} (pci {}, reset {}) regions {} irqs {}",
        info.flags,
        info.flags & 2 != 0,
        info.flags & 1 != 0,
        info.num_regions,
        info.num_irqs
    );
    let mut regions = Vec::new();
    for index in 0..info.num_regions.min(9) {
        let mut ri = RegionInfo {
            argsz: size_of::<RegionInfo>() as u32,
            index,
            ..Default::default()
        };
        if ioctl_ptr(dfd, VFIO_DEVICE_GET_REGION_INFO, &mut ri).is_ok() && ri.size > 0 {
            let name = match index {
                0..=5 => format!("BAR{index}"),
                6 => "ROM".into(),
                7 => "CONFIG".into(),
                _ => "VGA".into(),
            };
            println!(
                "  region {name}: size 0x{:x} offset 0x{:x} flags 0x{:x}",
                ri.size, ri.offset, ri.flags
            );
            regions.push(ri);
        }
    }
    for (index, name) in [
        (0, "INTx"),
        (1, "MSI"),
        (2, "MSI-X"),
        (3, "ERR"),
        (4, "REQ"),
    ] {
        let mut ii = IrqInfo {
            argsz: size_of::<IrqInfo>() as u32,
            index,
            ..Default::default()
        };
        if ioctl_ptr(dfd, VFIO_DEVICE_GET_IRQ_INFO, &mut ii).is_ok() {
            println!("  irq {name}: count {} flags 0x{:x}", ii.count, ii.flags);
        }
    }
    // SAFETY: `dfd` is the new fd GET_DEVICE_FD returned; nothing else owns it.
    let device = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(dfd) };
    let cfg_region = regions.iter().find(|r| r.index == 7).map(|r| r.offset);
    p.check(cfg_region.is_some(), "CONFIG region present");
    let c = common;
    let bar = match regions.iter().find(|r| r.index == u32::from(c.bar)) {
        Some(r) if r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 => {
            match Bar::map(dfd, r.offset, r.size as usize) {
                Ok(bar) => {
                    p.check(true, &format!("mmap BAR{} region", c.bar));
                    bar
                }
                Err(e) => {
                    p.check(false, &format!("mmap BAR{}: {e}", c.bar));
                    return None;
                }
            }
        }
        _ => {
            p.check(false, &format!("BAR{} is an mmap-able region", c.bar));
            return None;
        }
    };
    let cfg = device.try_clone().ok()?;
    let dma = if mode == "vfio" {
        Dma::Type1(container.as_raw_fd())
    } else {
        Dma::Phys
    };
    Some(Access {
        bar,
        bar_index: c.bar,
        cfg,
        cfg_offset: cfg_region?,
        irq: Irq::Msix(device),
        dma,
        _keep: vec![container, gfile],
    })
}

fn main() -> ExitCode {
    let mode = std::env::var("VBDEV_PCI_MODE").unwrap_or_default();
    let blk = std::env::var("VBDEV_PCI_BLK").unwrap_or_default();
    let scsi = std::env::var("VBDEV_PCI_SCSI").unwrap_or_default();
    let mut p = Probe { failures: 0 };
    println!(
        "probe: mode {mode:?} blk {blk:?} scsi {scsi:?} args {:?}",
        std::env::args().skip(1).collect::<Vec<_>>()
    );
    let mut opts = Opts::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            // How many functions of each kind must be there.
            "--blk" | "--scsi" => {
                let n: usize = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(usize::MAX);
                let list = if a == "--blk" { &blk } else { &scsi };
                p.check(
                    list.split_whitespace().count() == n,
                    &format!("{n} {} functions", &a[2..]),
                );
            }
            "--io" => opts.io = true,
            "--expect-mark" => opts.expect_mark = args.next(),
            _ => p.check(false, &format!("known argument {a}")),
        }
    }

    let vfio = mode == "vfio" || mode == "noiommu";
    if vfio {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vfio/vfio")
        {
            Ok(f) => {
                let fd = f.as_raw_fd();
                let v = ioctl_val(fd, VFIO_GET_API_VERSION, 0);
                p.check(
                    matches!(v, Ok(0)),
                    &format!("VFIO_GET_API_VERSION == 0 ({v:?})"),
                );
                let ext = if mode == "noiommu" {
                    VFIO_NOIOMMU_IOMMU
                } else {
                    VFIO_TYPE1V2_IOMMU
                };
                let e = ioctl_val(fd, VFIO_CHECK_EXTENSION, ext);
                p.check(
                    matches!(e, Ok(1)),
                    &format!("VFIO_CHECK_EXTENSION({ext}) == 1 ({e:?})"),
                );
            }
            Err(e) => p.check(false, &format!("open /dev/vfio/vfio: {e}")),
        }
    }
    // One container per device, as a driver that attaches devices
    // independently would do.
    for (kind, list) in [("blk", &blk), ("scsi", &scsi)] {
        for bdf in list.split_whitespace() {
            let c = if vfio {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/vfio/vfio")
                    .ok()
            } else {
                None
            };
            probe_device(&mut p, kind, bdf, &mode, c, &opts);
        }
    }
    if p.failures == 0 {
        println!("PROBE-OK");
        ExitCode::SUCCESS
    } else {
        println!("PROBE-FAILED {} check(s)", p.failures);
        ExitCode::FAILURE
    }
}
