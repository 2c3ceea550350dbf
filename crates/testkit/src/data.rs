//! Test data and small helpers around one request.

use vbdev_bdev::{Completion, DmaBuf, IoChannel, Request};

const MIB: u64 = 1 << 20;

/// Writes of 512 B to 4 MiB at block-aligned, never page-aligned byte offsets of a disk
/// of 64 MiB of 512-byte blocks, as (offset, length): the request sizes and alignments a
/// round-trip test of any blk path covers (the last block of the disk too).
pub const ODD_OFFSET_SIZES_64MIB: [(u64, usize); 7] = [
    (512, 512),
    (3 * 512, 1024),
    (9 * 512, 4096 + 512),
    (MIB + 512, 64 << 10),
    (5 * MIB + 1536, 1 << 20),
    (17 * MIB + 512, 4 << 20),
    (63 * MIB - 512, 512),
];

/// Deterministic test data: a different byte sequence for every `seed` (xorshift64).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A DMA buffer holding `data`.
///
/// # Panics
/// When DMA memory runs out.
pub fn dma(data: &[u8]) -> DmaBuf {
    let mut b = DmaBuf::alloc(data.len()).expect("dma alloc");
    b.copy_from_slice(data);
    b
}

/// Submits `req` and waits for its completion.
///
/// # Panics
/// When the channel refuses the request or fails while waiting.
pub fn run(ch: &mut IoChannel, req: Request) -> Completion {
    if let Err(r) = ch.submit(req) {
        panic!("submit refused: {}", r.error);
    }
    ch.wait_one().expect("completion")
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_repeat_by_seed() {
        assert_eq!(pattern(7, 64), pattern(7, 64));
        assert_ne!(pattern(7, 64), pattern(8, 64));
        assert_eq!(&pattern(7, 64)[..16], &pattern(7, 16)[..]);
    }
}
