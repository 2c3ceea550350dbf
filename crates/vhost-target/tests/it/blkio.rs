//! The `blkio` crate (libblkio's `virtio-blk-vhost-user` driver) against the blk target:
//! a third-party frontend that must work unmodified. blkio hands out raw memory and
//! completions, so `Client` has the only `unsafe` of these tests.

use std::mem::MaybeUninit;
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

use crate::util::{Target, pattern};

const MIB: u64 = 1 << 20;

/// A started blkio device with one queue and one mapped memory region.
struct Client {
    blkio: Blkio,
    q: Blkioq,
    region: MemoryRegion,
}

impl Client {
    fn connect(t: &Target, num_queues: i32, region_len: usize) -> Self {
        Self::try_connect(t, num_queues, region_len, false).expect("blkio starts")
    }

    fn try_connect(
        t: &Target,
        num_queues: i32,
        region_len: usize,
        read_only: bool,
    ) -> blkio::Result<Self> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", t.socket().to_str().unwrap())?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", num_queues)?;
        blkio.set_i32("queue-size", 128)?;
        let mut queues = blkio.start()?.queues;
        let q = queues.swap_remove(0);
        let align = blkio.get_u64("mem-region-alignment")?.max(1) as usize;
        let region = blkio.alloc_mem_region(region_len.next_multiple_of(align))?;
        blkio.map_mem_region(&region)?;
        Ok(Self { blkio, q, region })
    }

    /// The mapped region as bytes.
    fn mem(&mut self) -> &mut [u8] {
        // SAFETY: `region` is `len` bytes of memory blkio allocated and keeps mapped
        // until `free_mem_region` in `Drop`; no request is in flight whenever this is
        // called (every request is waited for), so nobody else touches it.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    fn buf(&self, off: usize) -> *mut u8 {
        assert!(off < self.region.len);
        (self.region.addr + off) as *mut u8
    }

    /// Waits for the one request in flight; returns its `ret` (0 or a negative errno).
    fn complete(&mut self) -> i32 {
        let mut out = [MaybeUninit::<Completion>::uninit()];
        let mut timeout = Duration::from_secs(10);
        let n = self
            .q
            .do_io(&mut out, 1, Some(&mut timeout), None)
            .expect("do_io");
        assert_eq!(n, 1, "no completion within 10 s");
        // SAFETY: `do_io` initialised the first `n` (= 1) entries.
        let c = unsafe { out[0].assume_init_ref() };
        c.ret
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        self.mem()[..data.len()].copy_from_slice(data);
        let p = self.buf(0);
        self.q.write(off, p, data.len(), 1, ReqFlags::empty());
        assert_eq!(self.complete(), 0, "write at {off}");
    }

    fn read(&mut self, off: u64, len: usize) -> Vec<u8> {
        self.mem()[..len].fill(0xee);
        let p = self.buf(0);
        self.q.read(off, p, len, 2, ReqFlags::empty());
        assert_eq!(self.complete(), 0, "read at {off}");
        self.mem()[..len].to_vec()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.blkio.unmap_mem_region(&self.region);
        self.blkio.free_mem_region(&self.region);
    }
}

fn verified_io(t: &Target, num_queues: i32) {
    let mut c = Client::connect(t, num_queues, (4 * MIB) as usize);
    assert_eq!(c.blkio.get_u64("capacity").unwrap(), 64 * MIB);
    let block = c.blkio.get_i32("request-alignment").unwrap() as u64;
    for (i, &(off, len)) in [
        (block, block as usize),
        (3 * block, 8 * block as usize),
        (MIB + block, MIB as usize),
        (7 * MIB + 5 * block, (4 * MIB) as usize),
        (64 * MIB - block, block as usize),
    ]
    .iter()
    .enumerate()
    {
        let data = pattern(100 + i as u64, len);
        c.write(off, &data);
        assert!(c.read(off, len) == data, "read-back at {off}+{len}");
        assert!(t.bytes(off, len) == data, "disk at {off}+{len}");
    }
    // Discard, then read back zeros (the served bdev zeroes what it unmaps).
    let (off, len) = (2 * MIB + block, 3 * MIB);
    c.write(off, &pattern(7, len as usize));
    c.q.discard(off, len, 3, ReqFlags::empty());
    assert_eq!(c.complete(), 0, "discard");
    assert!(c.read(off, len as usize).iter().all(|&b| b == 0));
    assert!(t.bytes(off, len as usize).iter().all(|&b| b == 0));
    // Write zeroes, with and without unmap allowed.
    for (i, flags) in [ReqFlags::empty(), ReqFlags::NO_UNMAP]
        .into_iter()
        .enumerate()
    {
        let off = 20 * MIB + i as u64 * MIB + block;
        c.write(off, &pattern(8, MIB as usize));
        c.q.write_zeroes(off, MIB, 4, flags);
        assert_eq!(c.complete(), 0, "write zeroes {flags:?}");
        assert!(c.read(off, MIB as usize).iter().all(|&b| b == 0));
    }
    c.q.flush(5, ReqFlags::empty());
    assert_eq!(c.complete(), 0, "flush");
}

#[test]
fn blkio_writes_reads_discards_and_flushes() {
    let t = Target::start(64 * MIB / 512, 512, 0x11, |_| {});
    verified_io(&t, 1);
}

#[test]
fn blkio_against_a_polling_4k_target_with_two_queues() {
    let t = Target::start(64 * MIB / 4096, 4096, 0x11, |c| {
        c.poll = true;
        c.num_queues = 2;
    });
    verified_io(&t, 2);
}

#[test]
fn blkio_sees_a_read_only_target_as_read_only() {
    let t = Target::start(2048, 512, 0x22, |c| c.read_only = true);
    // blkio refuses to start a read-only device for a read-write client.
    let e = Client::try_connect(&t, 1, 4096, false)
        .err()
        .expect("refused");
    assert_eq!(
        e.errno().raw_os_error(),
        rustix::io::Errno::ROFS.raw_os_error(),
        "{}",
        e.message()
    );
    let mut c = Client::try_connect(&t, 1, 4096, true).expect("read-only client starts");
    assert!(c.blkio.get_bool("read-only").unwrap());
    assert!(c.read(0, 4096).iter().all(|&b| b == 0x22));
}
