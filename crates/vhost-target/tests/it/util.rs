//! Shared helpers: targets serving malloc bdevs on temporary sockets, vbdev's initiator.

use std::path::Path;

use tempfile::TempDir;
use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_bdev::{Bdev, Completion, DmaBuf, IoChannel, IoError, IoStatus, Request, malloc};
use vbdev_target::Faults;
use vbdev_target::blk::{BlkTargetConfig, start_blk};
use vbdev_target::fault::Fault;
use vbdev_target::server::TargetHandle;
pub use vbdev_testkit::data::{dma, error_chain, pattern, run};

/// A malloc bdev of `num_blocks` blocks of `block_size` bytes, every byte `fill`.
pub fn malloc_bdev(name: &str, num_blocks: u64, block_size: u32, fill: u8) -> Bdev {
    let bdev = malloc::create(name, num_blocks, block_size).expect("malloc bdev");
    if fill != 0 {
        let mut ch = bdev.open_channel().unwrap();
        let per = (1u64 << 20) / u64::from(block_size);
        let mut lba = 0;
        while lba < num_blocks {
            let n = per.min(num_blocks - lba);
            let buf = dma(&vec![fill; (n * u64::from(block_size)) as usize]);
            let c = run(&mut ch, Request::write(lba, n, buf, 0));
            assert_eq!(c.status, IoStatus::Success);
            lba += n;
        }
    }
    bdev
}

/// A running target on a socket in its own temporary directory, serving a malloc bdev.
pub struct Target {
    pub handle: TargetHandle,
    /// The served bdev, for looking at the disk behind the target's back.
    pub disk: Bdev,
    _dir: TempDir,
}

impl Target {
    /// Serves a fresh malloc bdev (`num_blocks` × `block_size`, filled with `fill`) with
    /// the default config changed by `f`.
    pub fn start(
        num_blocks: u64,
        block_size: u32,
        fill: u8,
        f: impl FnOnce(&mut BlkTargetConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let disk = malloc_bdev("malloc0", num_blocks, block_size, fill);
        let mut cfg = BlkTargetConfig::new(dir.path().join("blk.sock"));
        f(&mut cfg);
        let handle = start_blk(disk.clone(), cfg).expect("target starts");
        Self {
            handle,
            disk,
            _dir: dir,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.handle.socket
    }

    /// `len` bytes of the served disk at byte `off` (whole blocks), read on a channel
    /// of its own.
    pub fn bytes(&self, off: u64, len: usize) -> Vec<u8> {
        let bs = u64::from(self.disk.block_size());
        let (first, end) = (off / bs, (off + len as u64).div_ceil(bs));
        let mut ch = self.disk.open_channel().unwrap();
        let all = read(&mut ch, first, ((end - first) * bs) as usize);
        let skip = (off - first * bs) as usize;
        all[skip..skip + len].to_vec()
    }

    /// Attaches vbdev's initiator with `queues` queues of `size` descriptors.
    pub fn attach(&self, name: &str, queues: u16, size: u16) -> Bdev {
        attach_opts(
            self.socket(),
            name,
            &AttachOptions {
                num_queues: queues,
                queue_size: size,
                ..AttachOptions::default()
            },
        )
    }
}

pub fn attach_opts(socket: &Path, name: &str, opts: &AttachOptions) -> Bdev {
    match virtio_blk::attach_vhost_user(name, socket, opts) {
        Ok(b) => b,
        Err(e) => panic!("attach {name}: {}", error_chain(&e)),
    }
}

/// Reads `len` bytes at block 0 with a MEDIUM ERROR (03/11/00) injected by the scsi
/// target's `faults`: the completion carries that CHECK CONDITION's sense.
pub fn read_injected_medium_error(faults: &Faults, ch: &mut IoChannel, len: usize) -> Completion {
    faults.inject(Fault::ScsiSense {
        key: 0x3,
        asc: 0x11,
        ascq: 0x00,
    });
    let c = run(
        ch,
        Request::read(
            0,
            len as u64 / u64::from(ch.block_size()),
            DmaBuf::alloc(len).unwrap(),
            1,
        ),
    );
    match c.status {
        IoStatus::Failed(IoError::ScsiCheckCondition { sense }) => {
            let sense = sense.sense();
            assert!(sense.is_medium_error(), "{sense:?}");
            assert_eq!((sense.asc, sense.ascq), (0x11, 0));
        }
        s => panic!("expected CHECK CONDITION with MEDIUM ERROR, got {s:?}"),
    }
    c
}

/// Writes `data` at block `lba` and checks the completion.
pub fn write(ch: &mut IoChannel, lba: u64, data: &[u8]) {
    let c = run(
        ch,
        Request::write(
            lba,
            data.len() as u64 / u64::from(ch.block_size()),
            dma(data),
            lba,
        ),
    );
    assert_eq!(c.status, IoStatus::Success, "write at block {lba}");
}

/// Reads `len` bytes at block `lba`.
pub fn read(ch: &mut IoChannel, lba: u64, len: usize) -> Vec<u8> {
    let c = run(
        ch,
        Request::read(
            lba,
            len as u64 / u64::from(ch.block_size()),
            DmaBuf::alloc(len).unwrap(),
            lba,
        ),
    );
    assert_eq!(c.status, IoStatus::Success, "read at block {lba}");
    c.buf.expect("read buffer back").to_vec()
}
