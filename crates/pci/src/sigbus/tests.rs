use super::*;

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier};

/// The slot whose active range holds `addr`, read the way the handler reads it.
fn guarded_slot(addr: usize) -> Option<usize> {
    SLOTS.iter().position(|s| {
        let hit = s.enter(addr).is_some();
        s.leave();
        hit
    })
}

/// A shared mapping of a temporary file, unmapped on drop.
struct FileMap {
    file: File,
    ptr: NonNull<u8>,
    len: usize,
}

impl FileMap {
    /// `pages` pages of a new file filled with `fill`, mapped shared.
    fn new(pages: usize, fill: u8) -> Self {
        let len = pages * page_size();
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&vec![fill; len]).expect("fill the file");
        // SAFETY: a new shared mapping of our own file at a kernel-chosen address.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &file,
                0,
            )
        }
        .expect("mmap");
        Self {
            file,
            ptr: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
        }
    }

    /// Registers the whole mapping.
    fn guard(&self) -> Guard {
        // SAFETY: `self` owns the mapping; each test drops the guard before `self`,
        // accepts its replacement, and accesses it only through `read`/`write`.
        unsafe { Guard::register(self.ptr, self.len) }.expect("register")
    }

    /// Makes the next access to any page fault with SIGBUS (BUS_ADRERR).
    fn truncate(&self) {
        self.file.set_len(0).expect("ftruncate");
    }

    fn addr(&self, off: usize) -> usize {
        self.ptr.as_ptr().addr() + off
    }

    fn read(&self, off: usize) -> u32 {
        assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: in bounds and aligned (asserted), inside our live mapping.
        unsafe { self.ptr.as_ptr().add(off).cast::<u32>().read_volatile() }
    }

    fn write(&self, off: usize, v: u32) {
        assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: as for `read`.
        unsafe { self.ptr.as_ptr().add(off).cast::<u32>().write_volatile(v) }
    }
}

// SAFETY: the mapping is shared memory that any thread may access; `FileMap` only
// hands out volatile reads and writes of `u32`s, never references.
unsafe impl Send for FileMap {}
// SAFETY: as for `Send`.
unsafe impl Sync for FileMap {}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; nothing points into it past this point.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[test]
fn read_fault_in_guarded_range_returns_ones_and_sets_faulted() {
    let map = FileMap::new(2, 0x5a);
    let guard = map.guard();
    assert_eq!(map.read(0), 0x5a5a_5a5a);
    assert!(!guard.is_faulted());

    map.truncate();
    assert_eq!(map.read(8), u32::MAX);
    assert!(guard.is_faulted());
    // The whole range was replaced, the second page too.
    assert_eq!(map.read(page_size() + 4), u32::MAX);
    // Writes after the fault go to the replacement memory and do not fault.
    map.write(12, 7);
    assert_eq!(map.read(12), 7);
    drop(guard);
}

#[test]
fn write_fault_in_guarded_range_survives() {
    let map = FileMap::new(1, 0);
    let guard = map.guard();
    map.truncate();
    map.write(16, 0x1234_5678);
    assert!(guard.is_faulted());
    assert_eq!(map.read(16), 0x1234_5678);
    assert_eq!(map.read(0), u32::MAX);
    drop(guard);
}

#[test]
fn fault_leaves_other_guards_alone() {
    let gone = FileMap::new(1, 0x11);
    let alive = FileMap::new(1, 0x22);
    let g_gone = gone.guard();
    let g_alive = alive.guard();
    gone.truncate();
    assert_eq!(gone.read(0), u32::MAX);
    assert!(g_gone.is_faulted());
    assert!(!g_alive.is_faulted());
    assert_eq!(alive.read(0), 0x2222_2222);
    // Still the file: a write reaches it.
    alive.write(0, 0x33);
    let mut buf = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&alive.file, &mut buf, 0).expect("pread");
    assert_eq!(u32::from_ne_bytes(buf), 0x33);
    drop(g_alive);
    drop(g_gone);
}

#[test]
fn drop_unregisters_the_range() {
    let map = FileMap::new(2, 0);
    let guard = map.guard();
    let slot = guarded_slot(map.addr(0)).expect("registered");
    assert_eq!(guard.slot, slot);
    assert_eq!(guarded_slot(map.addr(2 * page_size() - 1)), Some(slot));
    drop(guard);
    assert_eq!(guarded_slot(map.addr(0)), None);
    assert_eq!(guarded_slot(map.addr(page_size())), None);
    assert_eq!(SLOTS[slot].users.load(Ordering::SeqCst), 0);
    // The range can be registered again.
    let again = map.guard();
    assert!(!again.is_faulted());
    drop(again);
}

#[test]
fn register_rejects_bad_and_overlapping_ranges() {
    let map = FileMap::new(2, 0);
    let reject = |ptr: NonNull<u8>, len| {
        // SAFETY: every call here fails before anything is registered.
        let r = unsafe { Guard::register(ptr, len) };
        assert!(r.is_err(), "{ptr:?}+{len} was accepted");
    };
    reject(map.ptr, 0);
    // SAFETY: one byte into our own mapping.
    reject(unsafe { map.ptr.add(1) }, 16);
    let top = std::ptr::without_provenance_mut::<u8>(usize::MAX & !(page_size() - 1));
    reject(NonNull::new(top).expect("non-null"), 2 * page_size());

    let guard = map.guard();
    // SAFETY: the second page of the guarded mapping; rejected as an overlap.
    reject(unsafe { map.ptr.add(page_size()) }, 1);
    drop(guard);
}

#[test]
fn concurrent_faults_in_one_range_all_read_ones() {
    const THREADS: usize = 4;
    let map = Arc::new(FileMap::new(4, 0));
    let guard = map.guard();
    map.truncate();
    let barrier = Arc::new(Barrier::new(THREADS));
    let readers: Vec<_> = (0..THREADS)
        .map(|i| {
            let (map, barrier) = (Arc::clone(&map), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                (0..4)
                    .map(|p| map.read(p * page_size() + i * 4))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().expect("reader"), vec![u32::MAX; 4]);
    }
    assert!(guard.is_faulted());
    drop(guard);
}

#[test]
fn register_and_unregister_race_with_faults() {
    const CHURNERS: usize = 4;
    const ROUNDS: usize = 200;
    const FAULTS: usize = 100;
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..CHURNERS)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rounds = 0;
                while rounds < ROUNDS || !stop.load(Ordering::Relaxed) {
                    let map = FileMap::new(1, 0x77);
                    let guard = map.guard();
                    assert_eq!(map.read(0), 0x7777_7777);
                    assert!(!guard.is_faulted());
                    drop(guard);
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    for _ in 0..FAULTS {
        let map = FileMap::new(1, 0);
        let guard = map.guard();
        map.truncate();
        assert_eq!(map.read(4), u32::MAX);
        assert!(guard.is_faulted());
        drop(guard);
    }
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        assert!(c.join().expect("churner") >= ROUNDS);
    }
}

const CHILD_ENV: &str = "VBDEV_SIGBUS_CHILD";

/// Runs [`child_process_entry`] in a new process of this test binary with `mode`.
fn run_child(mode: &str) -> std::process::Output {
    let exe = std::env::current_exe().expect("current_exe");
    Command::new(exe)
        .args([
            "--exact",
            "sigbus::tests::child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .output()
        .expect("run the test binary")
}

/// What a child prints once its guarded fault is repaired, before the fault that
/// is meant to end it.
const REPAIRED: &str = "guarded fault repaired";

fn assert_killed_by_sigbus(mode: &str) {
    let out = run_child(mode);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(REPAIRED),
        "child {mode}: {out:?}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "child {mode}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

fn assert_exit_code(mode: &str, code: i32) {
    let out = run_child(mode);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(REPAIRED),
        "child {mode}: {out:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "child {mode}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[test]
fn fault_outside_guarded_ranges_still_kills() {
    assert_killed_by_sigbus("unguarded");
}

#[test]
fn fault_after_drop_kills() {
    assert_killed_by_sigbus("after_drop");
}

#[test]
fn sigbus_sent_by_raise_keeps_default_action() {
    assert_killed_by_sigbus("raise_default");
}

#[test]
fn foreign_fault_chains_to_previous_siginfo_handler() {
    assert_exit_code("chain_siginfo", 42);
}

#[test]
fn foreign_fault_chains_to_previous_plain_handler() {
    assert_exit_code("chain_plain", 43);
}

extern "C" fn exit_42(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(42) }
}

extern "C" fn exit_43(_: c_int) {
    // SAFETY: as above.
    unsafe { libc::_exit(43) }
}

/// Installs `handler` for SIGBUS in this (child) process.
fn set_sigbus(handler: libc::sighandler_t, flags: c_int) {
    // SAFETY: zeroed is a valid action that we fill in.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    // SAFETY: `act` is valid; the handlers given here are async-signal-safe.
    let rc = unsafe { libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
}

/// Not a test on its own: the body of the child processes above, selected by
/// [`CHILD_ENV`]. Without it this does nothing. A child that is not killed returns
/// normally, so the test harness exits 0 and the parent's assertion fails.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    // No core files from the children that are meant to die.
    let none = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    rustix::process::setrlimit(rustix::process::Resource::Core, none).expect("setrlimit");

    match mode.as_str() {
        "chain_siginfo" => set_sigbus(exit_42 as *const () as usize, libc::SA_SIGINFO),
        "chain_plain" => set_sigbus(exit_43 as *const () as usize, 0),
        "raise_default" => set_sigbus(libc::SIG_DFL, 0),
        _ => {}
    }
    // A guarded mapping that faults: the handler repairs it without chaining.
    let guarded = FileMap::new(1, 0);
    let guard = guarded.guard();
    guarded.truncate();
    assert_eq!(guarded.read(0), u32::MAX);
    assert!(guard.is_faulted());
    println!("{REPAIRED}");

    let other = FileMap::new(1, 0);
    match mode.as_str() {
        "unguarded" | "chain_siginfo" | "chain_plain" => {
            other.truncate();
            println!("read {:#x}", other.read(0));
        }
        "after_drop" => {
            let g = other.guard();
            drop(g);
            other.truncate();
            println!("read {:#x}", other.read(0));
        }
        "raise_default" => {
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGBUS) };
        }
        _ => panic!("unknown child mode {mode}"),
    }
    println!("child {mode} survived");
    drop(guard);
}
