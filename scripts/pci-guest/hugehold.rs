//! `hugehold N`: takes N 2 MiB huge pages, gives every other one back and holds the
//! rest until killed, so that the huge pages the next process gets are not physically
//! adjacent. The PCI guest tests use it to make DMA buffers cross physical
//! discontinuities (the descriptors must be split there). Built with plain `rustc`.
use std::ffi::c_void;
use std::io::Write;

unsafe extern "C" {
    fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, off: i64)
    -> *mut c_void;
    fn munmap(addr: *mut c_void, len: usize) -> i32;
    fn pause() -> i32;
}

const PROT_READ_WRITE: i32 = 0x1 | 0x2;
const MAP_PRIVATE: i32 = 0x02;
const MAP_ANONYMOUS: i32 = 0x20;
const MAP_POPULATE: i32 = 0x8000;
const MAP_HUGETLB: i32 = 0x40000;
const HUGE: usize = 2 << 20;

fn main() {
    let n: usize = match std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => {
            eprintln!("usage: hugehold N");
            std::process::exit(2);
        }
    };
    // SAFETY: a new private anonymous mapping at an address the kernel chooses.
    let p = unsafe {
        mmap(
            std::ptr::null_mut(),
            n * HUGE,
            PROT_READ_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE,
            -1,
            0,
        )
    };
    if p as isize == -1 {
        eprintln!(
            "hugehold: mmap of {n} huge pages failed: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    for i in (0..n).step_by(2) {
        // SAFETY: page `i` lies inside the mapping made above, which nothing references.
        if unsafe { munmap(p.cast::<u8>().add(i * HUGE).cast(), HUGE) } != 0 {
            eprintln!(
                "hugehold: munmap failed: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
    }
    println!("HUGEHOLD holding {} of {n} pages", n / 2);
    let _ = std::io::stdout().flush();
    loop {
        // SAFETY: pause has no preconditions; it returns when a signal is handled.
        unsafe { pause() };
    }
}
