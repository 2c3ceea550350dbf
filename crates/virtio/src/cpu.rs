#![allow(unsafe_code)] // the RDTSC intrinsic, with its SAFETY.
//! CPU instructions the crates above use, so that `unsafe` stays in this crate.

/// The time-stamp counter (RDTSC). Meaningful as a clock only where the TSC is
/// invariant (`constant_tsc` and `nonstop_tsc` in /proc/cpuinfo); the caller checks.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter register into registers: no memory operands, no
    // side effects, and every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}
