#![allow(unsafe_code)] // the SIGBUS handler and its jump buffer, each block with its SAFETY.
//! A SIGBUS guard for device memory mapped into the process.
//!
//! The PCI transport maps a BAR (the virtio notify area; with `uio_pci_generic` every
//! register) and accesses it with volatile loads and stores. When the PCI function is
//! hot-removed, the next access to that mapping raises SIGBUS, whose default action
//! kills the process. A [`Guard`] registers such a mapping with a process-wide SIGBUS
//! handler: when a fault hits a registered range, the handler atomically replaces the
//! whole range with private anonymous memory filled with `0xff` bytes and returns, so
//! the faulting instruction runs again against ordinary memory. Reads then see all
//! ones, which is what a removed PCI device answers and what the transport already
//! treats as "device gone"; writes (doorbells) land in memory nobody reads. The guard
//! records the fault ([`Guard::is_faulted`]).
//!
//! A SIGBUS for any other address, or one sent by `kill`, keeps its previous
//! behaviour: the handler that was installed before ours is called, or, when there was
//! none, the default action kills the process as it would have without the guard.
//!
//! This is SPDK's approach (the handler list of `lib/env_dpdk/sigbus_handler.c`, and
//! the NVMe PCIe driver's handler that maps anonymous memory over the BAR and fills it
//! with `0xff`), with two changes: the handler reads the registry without locks (SPDK's
//! takes a pthread mutex in the handler), and the replacement memory is filled before
//! it is moved into place, so a concurrent reader never sees zeroes.
//!
//! # How the transport uses it
//! 1. Right after `mmap` of the BAR succeeds, call [`Guard::register`] on the mapping.
//! 2. Keep the `Guard` next to the mapping (a field of `BarMapping`) for exactly the
//!    mapping's lifetime.
//! 3. Drop the `Guard` **before** `munmap`. Fields are dropped after `Drop::drop`
//!    returns, so a `BarMapping` that holds the guard as a field must drop it first
//!    explicitly, e.g. keep it in an `Option<Guard>` and `take()` it at the top of
//!    `drop`, then `munmap`.
//! 4. When a register read returns all ones (`0xff..`), call [`Guard::is_faulted`]:
//!    `true` means the device is gone and the mapping is now inert memory, so fail the
//!    device (the bdev layer then marks its bdevs removed) instead of retrying. The admin path may also poll
//!    `is_faulted` periodically (a doorbell-only mapping is never read). The check is
//!    one atomic load; it does not lock or make a system call.
//!
//! A fault can only be repaired while its range is registered, so nothing may access
//! the mapping once its `Guard` has begun to drop; in the transport this holds because
//! every doorbell keeps the mapping (and so the guard) alive through an `Arc`.
//!
//! # Design
//! The registry is a fixed array of [`MAX_GUARDS`] slots in static memory. Each slot
//! holds atomics only: its state (free, active, retiring), the range (`start`, `len`),
//! the fault state, and a count of signal handlers currently looking at it. Writers
//! (register and unregister) are serialised by a mutex; the handler never takes it,
//! never allocates and only does atomic loads and read-modify-writes on the slots.
//!
//! Unregistering a slot sets it to retiring, then waits until no handler is looking
//! at it, and only then frees it. Together with the handler's "announce, then check
//! the state" order (a Dekker-style pair of `SeqCst` operations, see
//! `Slot::enter` and `Guard::drop`) this means: once [`Guard`]'s `drop` returns,
//! no handler is using the range or will use it, so the caller's `munmap` cannot race
//! with the handler's replacement of the range, and the handler can never replace
//! memory that someone else has mapped at the same address afterwards.

use std::ffi::{c_int, c_void};
use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use rustix::mm::{MapFlags, MremapFlags, ProtFlags};

use vbdev_virtio::{Error, Result};

/// How many ranges can be registered at the same time. A virtio-pci device registers
/// one or two BAR mappings.
pub const MAX_GUARDS: usize = 256;

/// What a guarded range reads as after the device is gone: all ones, like a read from
/// a PCI function that no longer answers.
pub const GONE_BYTE: u8 = 0xff;

/// Slot states (`Slot::state`).
const FREE: u32 = 0;
const ACTIVE: u32 = 1;
const RETIRING: u32 = 2;

/// Fault states (`Slot::remap`).
const CLEAN: u32 = 0;
const REMAPPING: u32 = 1;
const REMAPPED: u32 = 2;
const FAILED: u32 = 3;

/// One registered range.
///
/// # Invariants
/// - `start` and `len` change only while `state` is `FREE`, and only under [`WRITERS`].
/// - While `state` is `ACTIVE`, `start..start + len` is page-aligned and lies inside a
///   mapping that the owner of the slot's [`Guard`] keeps mapped.
/// - A slot goes `ACTIVE -> RETIRING -> FREE` only once `users` has been seen at zero
///   while `RETIRING`, so a handler that saw `ACTIVE` after announcing itself in
///   `users` can use `start`/`len` until it leaves.
struct Slot {
    state: AtomicU32,
    users: AtomicU32,
    start: AtomicUsize,
    len: AtomicUsize,
    remap: AtomicU32,
}

impl Slot {
    const fn new() -> Self {
        Self {
            state: AtomicU32::new(FREE),
            users: AtomicU32::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            remap: AtomicU32::new(CLEAN),
        }
    }

    /// Announces a handler in `users`, then reports whether the slot is active and
    /// covers `addr`. The caller must call [`Slot::leave`] afterwards either way.
    ///
    /// Async-signal-safe: atomics only.
    fn enter(&self, addr: usize) -> Option<(usize, usize)> {
        // `SeqCst` on this increment and on the state load below pairs with the
        // `SeqCst` store of `RETIRING` and load of `users` in `Guard::drop`: in the
        // single total order either our increment comes first, and the unregistering
        // thread sees `users > 0` and waits for `leave`, or its `RETIRING` store comes
        // first, and we do not see `ACTIVE`.
        self.users.fetch_add(1, Ordering::SeqCst);
        if self.state.load(Ordering::SeqCst) != ACTIVE {
            return None;
        }
        // Relaxed: the `ACTIVE` load above (`SeqCst`, so also acquire) synchronises
        // with the `SeqCst` store in `register` that followed these stores, and the
        // slot cannot be re-registered while we are counted in `users`.
        let start = self.start.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        // `start + len` does not overflow (checked at registration), so this is
        // `start <= addr < start + len` without overflow on either side.
        (addr.wrapping_sub(start) < len).then_some((start, len))
    }

    /// Ends what [`Slot::enter`] began.
    fn leave(&self) {
        // SeqCst (release part): everything this handler did with the range, including
        // its mremap, happens before the unregistering thread's acquiring load that
        // sees `users == 0`.
        self.users.fetch_sub(1, Ordering::SeqCst);
    }

    /// Replaces `start..start + len` with all-ones memory unless another thread has
    /// done it or is doing it; returns whether the range is now safe to access again.
    ///
    /// Async-signal-safe on Linux: atomics, `mmap`, `mremap`, `munmap` (plain system
    /// calls) and stores to memory only this function can see.
    ///
    /// # Safety
    /// The caller is a SIGBUS handler that entered this slot with [`Slot::enter`],
    /// which returned `Some((start, len))`, and has not yet left it.
    unsafe fn repair(&self, start: usize, len: usize) -> bool {
        match self
            .remap
            .compare_exchange(CLEAN, REMAPPING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                // SAFETY: the slot is `ACTIVE` and we are counted in `users`, so
                // `start..start + len` is still the registered mapping (type invariant)
                // and will not be unmapped by its owner before we leave; the owner
                // accepted at registration that it may be replaced.
                let ok = unsafe { fill_with_gone(start, len) };
                // Release pairs with the Acquire loads below and in `Guard::is_faulted`.
                self.remap
                    .store(if ok { REMAPPED } else { FAILED }, Ordering::Release);
                ok
            }
            // Another thread faulted in the same range first. Wait for it: returning
            // before the range is replaced would fault again, and returning `false`
            // would kill the process. The wait is bounded by two system calls and a
            // fill on the other thread; it cannot be this thread, because every
            // signal is blocked while our handler runs (full sa_mask, no SA_NODEFER),
            // so a nested fault kills the process instead of re-entering.
            Err(_) => loop {
                match self.remap.load(Ordering::Acquire) {
                    REMAPPING => std::hint::spin_loop(),
                    state => return state == REMAPPED,
                }
            },
        }
    }
}

static SLOTS: [Slot; MAX_GUARDS] = [const { Slot::new() }; MAX_GUARDS];

/// Serialises writers of [`SLOTS`] (register, unregister, handler installation). The
/// signal handler never takes it.
static WRITERS: Mutex<()> = Mutex::new(());

/// The SIGBUS disposition that was in place before ours, set once right after our
/// handler is installed. The handler reads it with `OnceLock::get`, an atomic load.
static PREVIOUS: OnceLock<Previous> = OnceLock::new();

/// The action our handler chains to for faults it does not own.
struct Previous(libc::sigaction);

fn writers() -> MutexGuard<'static, ()> {
    // The critical sections do not panic, and the slots are atomics kept consistent at
    // every step, so a poisoned lock carries no broken state.
    WRITERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A registered range: while it exists, a SIGBUS inside the range does not kill the
/// process but turns the range into all-ones memory. Dropping it unregisters the range.
///
/// `Send` and `Sync`: it is an index into the static registry; [`Guard::is_faulted`] is
/// an atomic load and dropping takes the registry's writer lock.
pub struct Guard {
    slot: usize,
}

impl Guard {
    /// Registers the mapping at `ptr..ptr + len` (rounded up to whole pages) and, the
    /// first time, installs the process-wide SIGBUS handler.
    ///
    /// # Safety
    /// From now until the returned `Guard` is dropped:
    /// - `ptr..ptr + len` is a mapping the caller created and owns (typically a BAR
    ///   mapping just returned by `mmap`), and the caller unmaps it only after dropping
    ///   the `Guard`;
    /// - the caller accepts that a SIGBUS in the range, from any thread, replaces the
    ///   whole range with private anonymous memory filled with `0xff` (writes no longer
    ///   reach the file or device, reads return all ones);
    /// - the range is only accessed through raw pointers (volatile loads and stores),
    ///   never through Rust references, since its contents may change under them.
    ///
    /// # Example
    /// ```
    /// use std::ptr::NonNull;
    /// use rustix::mm::{MapFlags, ProtFlags};
    /// use vbdev_pci::sigbus::Guard;
    ///
    /// let len = 4096;
    /// // SAFETY: a new private mapping at an address the kernel chooses.
    /// let p = unsafe {
    ///     rustix::mm::mmap_anonymous(
    ///         std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE,
    ///     )
    /// }?;
    /// let ptr = NonNull::new(p.cast::<u8>()).unwrap();
    /// // SAFETY: we own the mapping, access it only through raw pointers, and drop the
    /// // guard before unmapping it.
    /// let guard = unsafe { Guard::register(ptr, len) }?;
    /// assert!(!guard.is_faulted());
    /// drop(guard);
    /// // SAFETY: the guard is gone and nothing points into the mapping.
    /// unsafe { rustix::mm::munmap(p, len) }?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] when `ptr` is not page-aligned, `len` is zero or the range wraps
    /// the address space; when the range overlaps one that is already registered; when
    /// all [`MAX_GUARDS`] slots are in use; or when `sigaction` fails.
    pub unsafe fn register(ptr: NonNull<u8>, len: usize) -> Result<Guard> {
        const OP: &str = "register a mapping with the SIGBUS guard";
        let fail = |kind, msg: &'static str| Error::Io {
            op: OP,
            source: io::Error::new(kind, msg),
        };
        // The handler compares fault addresses with plain integers and gives them back
        // to mremap as pointers, so expose the mapping's provenance here.
        let start = ptr.as_ptr().expose_provenance();
        let page = page_size();
        let len = match len.checked_next_multiple_of(page) {
            Some(len) if len != 0 && start % page == 0 && start.checked_add(len).is_some() => len,
            _ => {
                return Err(fail(
                    io::ErrorKind::InvalidInput,
                    "range is not page-aligned, is empty or wraps the address space",
                ));
            }
        };
        let end = start + len; // checked above

        let _w = writers();
        install_handler().map_err(|source| Error::Io {
            op: "install the SIGBUS handler",
            source,
        })?;
        let mut free = None;
        for (i, slot) in SLOTS.iter().enumerate() {
            // Relaxed: under `WRITERS`, every slot's last write was made by a writer
            // that released the lock we now hold (the handler never writes these).
            match slot.state.load(Ordering::Relaxed) {
                FREE => {
                    free.get_or_insert(i);
                }
                _ => {
                    let s = slot.start.load(Ordering::Relaxed);
                    let e = s + slot.len.load(Ordering::Relaxed); // checked when registered
                    if start < e && s < end {
                        return Err(fail(
                            io::ErrorKind::AlreadyExists,
                            "range overlaps a mapping that is already guarded",
                        ));
                    }
                }
            }
        }
        let Some(i) = free else {
            return Err(fail(
                io::ErrorKind::OutOfMemory,
                "every slot of the SIGBUS guard is in use",
            ));
        };
        let slot = &SLOTS[i];
        // The slot is FREE, so a handler that announced itself in `users` does not read
        // these fields (it sees FREE, or ACTIVE after the store below).
        slot.start.store(start, Ordering::Relaxed);
        slot.len.store(len, Ordering::Relaxed);
        slot.remap.store(CLEAN, Ordering::Relaxed);
        // SeqCst (release part): publishes the three stores above to a handler that
        // loads ACTIVE in `Slot::enter`.
        slot.state.store(ACTIVE, Ordering::SeqCst);
        Ok(Guard { slot: i })
    }

    /// Whether a SIGBUS hit the range, i.e. the device behind the mapping is gone and
    /// the range now reads as all ones. One atomic load: no lock, no system call.
    pub fn is_faulted(&self) -> bool {
        // Acquire pairs with the Release store in `Slot::repair`.
        SLOTS[self.slot].remap.load(Ordering::Acquire) != CLEAN
    }
}

impl Drop for Guard {
    /// Unregisters the range. Returns once no signal handler is using it any more, so
    /// the caller may `munmap` right after.
    fn drop(&mut self) {
        let _w = writers();
        let slot = &SLOTS[self.slot];
        // SeqCst store, then SeqCst load of `users`: pairs with `Slot::enter` (see
        // there). After this store no new handler will use the range.
        slot.state.store(RETIRING, Ordering::SeqCst);
        // A handler in the range is doing at most two system calls and a fill, or
        // waiting for the thread that does; it never takes `WRITERS`, so this ends.
        while slot.users.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        slot.state.store(FREE, Ordering::SeqCst);
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = &SLOTS[self.slot];
        f.debug_struct("Guard")
            .field("slot", &self.slot)
            .field(
                "start",
                &format_args!("{:#x}", slot.start.load(Ordering::Relaxed)),
            )
            .field("len", &slot.len.load(Ordering::Relaxed))
            .field("faulted", &self.is_faulted())
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; _SC_PAGESIZE is always supported on Linux.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}

/// Installs [`on_sigbus`] for SIGBUS unless it is installed already. Called with
/// [`WRITERS`] held.
fn install_handler() -> io::Result<()> {
    if PREVIOUS.get().is_some() {
        return Ok(());
    }
    // SAFETY: `sigaction` is plain data; all zeroes is a valid value (SIG_DFL, empty
    // flags, no restorer) that we fill in below.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
    // SA_SIGINFO for the fault address and code; SA_ONSTACK so a thread with an
    // alternate signal stack (threads started by Rust's std normally have one) can take
    // the fault even near the end of its stack. No SA_NODEFER: SIGBUS stays blocked
    // while our handler runs, so a fault inside it (or inside a handler we chain to)
    // kills the process instead of re-entering, and a SIGBUS we re-raise is delivered
    // when we return. The full mask keeps other signal handlers from interrupting ours
    // (one that touched the same range mid-repair would wait for itself).
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `new.sa_mask` is a valid, writable sigset_t.
    unsafe { libc::sigfillset(&mut new.sa_mask) };
    // SAFETY: as above, a placeholder the kernel overwrites.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; `on_sigbus` has the SA_SIGINFO
    // signature and is async-signal-safe (see there).
    if unsafe { libc::sigaction(libc::SIGBUS, &new, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Until this `set`, a SIGBUS we do not own is treated as if the previous action were
    // SIG_DFL: a window of a few instructions, once per process. `set` cannot fail:
    // `WRITERS` is held and `PREVIOUS` was empty.
    let _ = PREVIOUS.set(Previous(old));
    Ok(())
}

/// The SIGBUS handler.
///
/// It only does what is safe in a signal handler: atomic loads and read-modify-writes
/// on [`SLOTS`], `OnceLock::get` (an atomic load), the system calls `mmap`, `mremap`
/// and `munmap` (which POSIX does not list as async-signal-safe, but which are single
/// system calls on Linux that touch no user-space lock or state; SPDK's handler relies
/// on the same), stores into a fresh private mapping, and `sigaction`/`raise` (both on
/// POSIX's list). It never allocates, locks or logs, and it saves and restores `errno`.
extern "C" fn on_sigbus(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    let mut repaired = false;
    if !info.is_null() {
        // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t for this signal.
        let code = unsafe { (*info).si_code };
        // Only faults on an access: BUS_ADRERR (no page behind the address: a
        // truncated file, a BAR whose device is gone) and BUS_OBJERR. Not alignment
        // faults, not memory-failure reports, not SIGBUS sent by kill (si_code <= 0).
        if code == libc::BUS_ADRERR || code == libc::BUS_OBJERR {
            // SAFETY: for these codes the kernel fills the sigfault member of the union,
            // which `si_addr` reads.
            let addr = unsafe { (*info).si_addr() }.addr();
            repaired = repair(addr);
        }
    }
    if !repaired {
        forward(sig, info, ctx);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Repairs the registered range that holds `addr`; false when none does or the
/// repair failed.
fn repair(addr: usize) -> bool {
    for slot in &SLOTS {
        // Relaxed pre-filter, to skip free slots without a read-modify-write. A range
        // that was registered before the faulting access happens-before that access (the
        // pointer was handed over after `register` returned), so coherence guarantees
        // this load sees ACTIVE for it.
        if slot.state.load(Ordering::Relaxed) != ACTIVE {
            continue;
        }
        let hit = slot.enter(addr);
        // SAFETY: `enter` returned this range and we leave the slot only below.
        let done = hit.map(|(start, len)| unsafe { slot.repair(start, len) });
        slot.leave();
        if let Some(done) = done {
            return done;
        }
    }
    false
}

/// Fills a fresh private anonymous mapping with [`GONE_BYTE`] and moves it over
/// `start..start + len` with one `mremap`, which replaces the old mapping atomically
/// for every other thread: each either faults (and waits in [`Slot::repair`]) or reads
/// all ones, never a zero page that is still being filled.
///
/// # Safety
/// `start..start + len` is page-aligned, mapped, owned by a registered [`Guard`] whose
/// owner accepted that it be replaced, and not unmapped until this returns.
unsafe fn fill_with_gone(start: usize, len: usize) -> bool {
    // SAFETY: a new mapping at an address the kernel chooses, so it replaces nothing.
    let tmp = match unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    } {
        Ok(p) => p,
        Err(_) => return false,
    };
    // SAFETY: `tmp` is a fresh, writable mapping of `len` bytes that no other code
    // knows about. `write_bytes` may become a call to memset, which is
    // async-signal-safe (POSIX.1-2008 TC2).
    unsafe { tmp.cast::<u8>().write_bytes(GONE_BYTE, len) };
    let target = std::ptr::with_exposed_provenance_mut::<c_void>(start);
    // SAFETY: `tmp..tmp + len` is ours; `target..target + len` is the registered range,
    // page-aligned (checked at registration) and replaceable by the caller's contract,
    // with its provenance exposed in `register`. No Rust reference points into either.
    let moved = unsafe { rustix::mm::mremap_fixed(tmp, len, len, MremapFlags::MAYMOVE, target) };
    if moved.is_err() {
        // SAFETY: `tmp` is still our private mapping of `len` bytes.
        let _ = unsafe { rustix::mm::munmap(tmp, len) };
        return false;
    }
    true
}

/// Hands a SIGBUS that is not ours to the action that was installed before ours, or
/// does what the default action would have done.
fn forward(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let (handler, flags) = PREVIOUS
        .get()
        .map_or((libc::SIG_DFL, 0), |p| (p.0.sa_sigaction, p.0.sa_flags));
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // A SIGBUS sent with kill/raise (si_code <= 0) is really ignored under SIG_IGN;
        // a fault is not (the kernel forces the default action for it).
        // SAFETY: as in `on_sigbus`: a valid siginfo_t from the kernel when non-null.
        let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
        if handler == libc::SIG_IGN && sent {
            return;
        }
        die(sig);
    } else if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action was installed with SA_SIGINFO, so its handler has
        // this signature; it was async-signal-safe when it was installed as a handler,
        // and it gets the arguments the kernel gave us. (Its own sa_mask and flags such
        // as SA_RESETHAND are not applied: we run under ours.)
        let f = unsafe {
            std::mem::transmute::<
                libc::sighandler_t,
                extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void),
            >(handler)
        };
        f(sig, info, ctx);
    } else {
        // SAFETY: an action without SA_SIGINFO has a one-argument handler.
        let f = unsafe { std::mem::transmute::<libc::sighandler_t, extern "C" fn(c_int)>(handler) };
        f(sig);
    }
}

/// Restores the default action and raises `sig`. SIGBUS is blocked while our handler
/// runs, so the signal is delivered, and kills the process, as soon as we return.
fn die(sig: c_int) {
    // SAFETY: zeroed is SIG_DFL with an empty mask and no flags, a valid action.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `dfl` is valid for the call; sigaction and raise are async-signal-safe.
    unsafe {
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        libc::raise(sig);
    }
}

#[cfg(test)]
mod tests;
