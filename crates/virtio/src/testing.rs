//! An in-process fake device for tests: it reads and writes ring memory through the DMA
//! region's memfd, as a target process would through its own mapping, and misbehaves on
//! command (bad used ids, absurd lengths, index jumps).
//!
//! Enabled for this crate's tests and, for other crates, by the `test-utils` feature.

pub mod blk_transport;

use std::os::fd::BorrowedFd;

use crate::blk;
use crate::mem::{DmaDomain, Iova};
use crate::split::{
    RingAddrs, Segment, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

pub use blk_transport::{FakeBlk, FakeBlkConfig};

/// A descriptor chain as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Head descriptor index (the used id to return).
    pub head: u16,
    /// The buffers, in order.
    pub segs: Vec<Segment>,
    /// Whether the chain came through an indirect table.
    pub indirect: bool,
}

impl Chain {
    /// Total device-writable bytes.
    pub fn writable(&self) -> u32 {
        self.segs
            .iter()
            .filter(|s| s.device_writable)
            .map(|s| s.len)
            .sum()
    }
}

/// The device side of one split ring, driven by the test.
#[derive(Debug)]
pub struct FakeDevice {
    addrs: RingAddrs,
    next_avail: u16,
    used_idx: u16,
}

fn locate(addr: Iova, len: usize) -> (BorrowedFd<'static>, u64) {
    let domain = DmaDomain::global();
    let (region, off) = domain.lookup(addr.0, len as u64).unwrap_or_else(|| {
        panic!(
            "fake device: address {:#x}+{len} outside DMA memory",
            addr.0
        )
    });
    let info = domain
        .regions()
        .into_iter()
        .find(|r| r.id == region)
        .expect("region exists");
    (info.fd, off)
}

/// Reads `len` bytes of DMA memory at `addr`, as a device would.
pub fn read_mem(addr: Iova, len: usize) -> Vec<u8> {
    let (fd, off) = locate(addr, len);
    let mut buf = vec![0u8; len];
    let n = rustix::io::pread(fd, &mut buf, off).expect("pread of the DMA memfd");
    assert_eq!(n, len);
    buf
}

/// Writes DMA memory at `addr`, as a device would.
pub fn write_mem(addr: Iova, data: &[u8]) {
    let (fd, off) = locate(addr, data.len());
    let n = rustix::io::pwrite(fd, data, off).expect("pwrite of the DMA memfd");
    assert_eq!(n, data.len());
}

fn rd16(addr: u64) -> u16 {
    u16::from_le_bytes(read_mem(Iova(addr), 2).try_into().expect("2 bytes"))
}

fn wr16(addr: u64, v: u16) {
    write_mem(Iova(addr), &v.to_le_bytes());
}

impl FakeDevice {
    /// A device for the ring at `addrs`, starting at index 0 like a fresh device.
    pub fn new(addrs: RingAddrs) -> Self {
        Self {
            addrs,
            next_avail: 0,
            used_idx: 0,
        }
    }

    /// The driver's `avail.idx`.
    pub fn avail_idx(&self) -> u16 {
        rd16(self.addrs.avail.0 + 2)
    }

    /// The driver's `avail.flags`.
    pub fn avail_flags(&self) -> u16 {
        rd16(self.addrs.avail.0)
    }

    /// The driver's `used_event`.
    pub fn used_event(&self) -> u16 {
        rd16(self.addrs.avail.0 + 4 + 2 * u64::from(self.addrs.size))
    }

    /// Sets `used.flags` (e.g. `VIRTQ_USED_F_NO_NOTIFY`).
    pub fn set_used_flags(&self, flags: u16) {
        wr16(self.addrs.used.0, flags);
    }

    /// Sets `avail_event`.
    pub fn set_avail_event(&self, v: u16) {
        wr16(self.addrs.used.0 + 4 + 8 * u64::from(self.addrs.size), v);
    }

    /// Takes the next available chain, if the driver published one.
    pub fn pop_avail(&mut self) -> Option<Chain> {
        if self.avail_idx() == self.next_avail {
            return None;
        }
        let size = self.addrs.size;
        let slot = u64::from(self.next_avail % size);
        let head = rd16(self.addrs.avail.0 + 4 + 2 * slot);
        self.next_avail = self.next_avail.wrapping_add(1);
        assert!(head < size, "driver put head {head} in the avail ring");
        let desc = |table: u64, i: u16| {
            let d = read_mem(Iova(table + 16 * u64::from(i)), 16);
            let addr = u64::from_le_bytes(d[0..8].try_into().expect("8"));
            let len = u32::from_le_bytes(d[8..12].try_into().expect("4"));
            let flags = u16::from_le_bytes(d[12..14].try_into().expect("2"));
            let next = u16::from_le_bytes(d[14..16].try_into().expect("2"));
            (addr, len, flags, next)
        };
        let (addr, len, flags, _) = desc(self.addrs.desc.0, head);
        let (table, mut i, limit, indirect) = if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            assert_eq!(len % 16, 0, "indirect table length");
            (addr, 0u16, (len / 16) as u16, true)
        } else {
            (self.addrs.desc.0, head, size, false)
        };
        let mut segs = Vec::new();
        loop {
            assert!(segs.len() < usize::from(limit), "descriptor chain loops");
            let (addr, len, flags, next) = desc(table, i);
            assert_eq!(flags & VIRTQ_DESC_F_INDIRECT, 0, "nested indirect");
            segs.push(Segment {
                addr: Iova(addr),
                len,
                device_writable: flags & VIRTQ_DESC_F_WRITE != 0,
            });
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            i = next;
        }
        Some(Chain {
            head,
            segs,
            indirect,
        })
    }

    /// Puts a used element and publishes it (bumps `used.idx` by one).
    pub fn push_used(&mut self, id: u32, len: u32) {
        self.write_used_elem(id, len);
        self.used_idx = self.used_idx.wrapping_add(1);
        wr16(self.addrs.used.0 + 2, self.used_idx);
    }

    /// Writes a used element at the current position without publishing it.
    pub fn write_used_elem(&self, id: u32, len: u32) {
        let slot = u64::from(self.used_idx % self.addrs.size);
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&id.to_le_bytes());
        e[4..8].copy_from_slice(&len.to_le_bytes());
        write_mem(Iova(self.addrs.used.0 + 4 + 8 * slot), &e);
    }

    /// Writes any value into `used.idx` (to misbehave).
    pub fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        wr16(self.addrs.used.0 + 2, idx);
    }

    /// Serves every available chain as a virtio-blk device over `disk` (512-byte
    /// sectors), completing each at once; returns how many were served.
    pub fn serve_blk(&mut self, disk: &mut [u8]) -> usize {
        let mut n = 0;
        while let Some(chain) = self.pop_avail() {
            let len = serve_blk_chain(&chain, disk);
            self.push_used(u32::from(chain.head), len);
            n += 1;
        }
        n
    }
}

/// Executes one virtio-blk request chain against `disk`; returns the used length.
pub fn serve_blk_chain(chain: &Chain, disk: &mut [u8]) -> u32 {
    let hdr = read_mem(chain.segs[0].addr, 16);
    let type_ = u32::from_le_bytes(hdr[0..4].try_into().expect("4"));
    let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8"));
    let status_seg = *chain.segs.last().expect("status descriptor");
    let data = &chain.segs[1..chain.segs.len() - 1];
    let mut off = sector * blk::SECTOR_SIZE;
    let mut written = 0u32;
    let mut status = blk::status::OK;
    match type_ {
        blk::req::IN => {
            for s in data {
                let end = off + u64::from(s.len);
                if end > disk.len() as u64 {
                    status = blk::status::IOERR;
                    break;
                }
                write_mem(s.addr, &disk[off as usize..end as usize]);
                written += s.len;
                off = end;
            }
        }
        blk::req::OUT => {
            for s in data {
                let end = off + u64::from(s.len);
                if end > disk.len() as u64 {
                    status = blk::status::IOERR;
                    break;
                }
                disk[off as usize..end as usize].copy_from_slice(&read_mem(s.addr, s.len as usize));
                off = end;
            }
        }
        blk::req::FLUSH => {}
        blk::req::GET_ID => {
            let mut id = [0u8; blk::ID_BYTES];
            id[..4].copy_from_slice(b"fake");
            write_mem(data[0].addr, &id);
            written += blk::ID_BYTES as u32;
        }
        blk::req::DISCARD | blk::req::WRITE_ZEROES => {
            for s in data {
                let raw = read_mem(s.addr, s.len as usize);
                for seg in raw.chunks_exact(16) {
                    let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8"));
                    let n = u32::from_le_bytes(seg[8..12].try_into().expect("4"));
                    let start = (sector * blk::SECTOR_SIZE) as usize;
                    let end = start + n as usize * blk::SECTOR_SIZE as usize;
                    if end > disk.len() {
                        status = blk::status::IOERR;
                    } else {
                        disk[start..end].fill(0);
                    }
                }
            }
        }
        _ => status = blk::status::UNSUPP,
    }
    write_mem(status_seg.addr, &[status]);
    written + 1
}
