//! Hot removal: VFIO's device request interrupt and the uio device going away, watched
//! by a thread that resets the function and marks the transport dead.

use super::*;

/// An eventfd that VFIO signals when the kernel wants the device back (the function is
/// being removed: `VFIO_PCI_REQ_IRQ_INDEX`), or `None` when the device has no such
/// interrupt or it cannot be set up (then a removal waits until the process lets go).
pub(super) fn request_eventfd(device: &OwnedFd, bdf: &str) -> Option<EventFd> {
    if irq_count(device, vb::VFIO_PCI_REQ_IRQ_INDEX) == 0 {
        tracing::debug!(target: TARGET, bdf, "no VFIO device request interrupt");
        return None;
    }
    let efd = EventFd::new(EFD_NONBLOCK).ok()?;
    if let Err(e) = set_irq_eventfds(
        device,
        vb::VFIO_PCI_REQ_IRQ_INDEX,
        std::slice::from_ref(&efd),
    ) {
        tracing::debug!(target: TARGET, bdf, error = %e, "VFIO device request interrupt not set up");
        return None;
    }
    Some(efd)
}

/// What tells that the kernel is removing the function.
#[derive(Debug)]
pub(super) enum Removal {
    /// VFIO's device request eventfd.
    VfioRequest(EventFd),
    /// The function's `/dev/uioN`: with INTx disabled it only becomes readable when
    /// the uio device is unregistered, and then `read` fails with EIO.
    Uio(File),
}

impl Removal {
    pub(super) fn raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Removal::VfioRequest(e) => e.as_raw_fd(),
            Removal::Uio(f) => f.as_raw_fd(),
        }
    }

    /// Consumes the readiness; true when it means removal (not a stray interrupt).
    pub(super) fn removed(&self) -> bool {
        match self {
            Removal::VfioRequest(e) => {
                let _ = e.read();
                true
            }
            Removal::Uio(f) => {
                let mut count = [0u8; 4];
                // A full count is a stray interrupt; EIO (or anything odd) is removal.
                !matches!(
                    rustix::io::read(f, &mut count),
                    Ok(4) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR)
                )
            }
        }
    }
}

/// The function's `/dev/uioN`, opened non-blocking, when it has one that is usable for
/// removal notices (a uio device without an interrupt line fails every poll).
pub(super) fn uio_removal(sysfs: &Path, bdf: &str) -> Option<Removal> {
    let name = std::fs::read_dir(sysfs.join("uio"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("uio"))?;
    let path = Path::new("/dev").join(&name);
    let f = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&path)
        .map_err(|e| tracing::debug!(target: TARGET, bdf, path = %path.display(), error = %e, "no uio removal notices"))
        .ok()?;
    // Ready at once means "no interrupt line" (or already gone): not usable.
    let mut fds = [rustix::event::PollFd::new(&f, rustix::event::PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(0) => Some(Removal::Uio(f)),
        _ => {
            tracing::debug!(target: TARGET, bdf, path = %path.display(), "uio device is ready at once: no removal notices");
            None
        }
    }
}

/// A thread waiting for a removal notice ([`Removal`]): it resets the device (stopping its
/// DMA) and marks the transport dead, so the bdevs fail their I/O and their owner can
/// detach them, which closes the device and lets the kernel finish the removal.
#[derive(Debug)]
pub(super) struct RequestWatch {
    pub(super) stop: EventFd,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl RequestWatch {
    pub(super) fn start(t: &Arc<PciTransport>, req: Option<Removal>) {
        let (Some(req), Ok(stop)) = (req, EventFd::new(EFD_NONBLOCK)) else {
            return;
        };
        let Ok(stop2) = stop.try_clone() else { return };
        let weak = Arc::downgrade(t);
        let bdf = t.bdf.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vbdev-pci-req-{bdf}"))
            .spawn(move || {
                use rustix::event::{PollFd, PollFlags, poll};
                // SAFETY: both eventfds are owned by this closure and stay open until
                // it returns, so they outlive these borrows.
                let (req_fd, stop_fd) = unsafe {
                    (
                        std::os::fd::BorrowedFd::borrow_raw(req.raw_fd()),
                        std::os::fd::BorrowedFd::borrow_raw(stop2.as_raw_fd()),
                    )
                };
                loop {
                    let mut fds = [
                        PollFd::new(&req_fd, PollFlags::IN),
                        PollFd::new(&stop_fd, PollFlags::IN),
                    ];
                    match poll(&mut fds, None) {
                        Ok(_) => {}
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => {
                            tracing::warn!(target: TARGET, bdf = %bdf, error = %e, "waiting for VFIO device requests failed");
                            return;
                        }
                    }
                    if !fds[1].revents().is_empty() {
                        return;
                    }
                    if !fds[0].revents().is_empty() {
                        if !req.removed() {
                            continue;
                        }
                        tracing::warn!(target: TARGET, bdf = %bdf, "the kernel asks for the virtio-pci function back (it is being removed): resetting it and failing its I/O");
                        if let Some(t) = weak.upgrade() {
                            t.shutdown();
                        }
                        return;
                    }
                }
            });
        match spawned {
            Ok(thread) => {
                let _ = t.req_watch.set(RequestWatch {
                    stop,
                    thread: Some(thread),
                });
            }
            Err(e) => {
                tracing::warn!(target: TARGET, bdf = %t.bdf, error = %e, "cannot start the VFIO device request thread");
            }
        }
    }
}

impl Drop for RequestWatch {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(th) = self.thread.take() {
            // The watcher may hold the last reference to the transport for a moment:
            // then this runs on the watcher itself, which is returning anyway.
            if th.thread().id() != std::thread::current().id() {
                let _ = th.join();
            }
        }
    }
}
