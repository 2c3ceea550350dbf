//! vbdev's virtio-scsi initiator (`vbdev_bdev::virtio_scsi`) against our scsi target.

use std::time::Duration;

use tempfile::TempDir;
use vbdev_bdev::virtio_scsi::{self, AttachOptions, ScsiController, ScsiEvent};
use vbdev_bdev::{Bdev, IoError, IoStatus, Request, null};
use vbdev_target::vscsi::{ScsiHandle, ScsiTargetConfig, start_scsi};

use crate::util::{dma, error_chain, malloc_bdev, pattern, read, run, write};

/// A scsi target in its own temporary directory, with the backing bdevs at hand.
struct Scsi {
    handle: ScsiHandle,
    /// (target, lun, backing bdev)
    disks: Vec<(u8, u16, Bdev)>,
    _dir: TempDir,
}

impl Scsi {
    fn start(disks: Vec<(u8, u16, Bdev)>, f: impl FnOnce(&mut ScsiTargetConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ScsiTargetConfig::new(dir.path().join("scsi.sock"));
        f(&mut cfg);
        let mut targets: Vec<(u8, Vec<(u16, Bdev)>)> = Vec::new();
        for (t, l, b) in &disks {
            match targets.iter_mut().find(|(x, _)| x == t) {
                Some((_, v)) => v.push((*l, b.clone())),
                None => targets.push((*t, vec![(*l, b.clone())])),
            }
        }
        let handle = start_scsi(cfg, targets).expect("scsi target starts");
        Self {
            handle,
            disks,
            _dir: dir,
        }
    }

    fn attach(&self, name: &str, opts: AttachOptions) -> ScsiController {
        match virtio_scsi::attach_vhost_user(name, &self.handle.socket, &opts) {
            Ok(c) => c,
            Err(e) => panic!("attach {name}: {}", error_chain(&e)),
        }
    }
}

fn opts(queues: u16, size: u16) -> AttachOptions {
    AttachOptions {
        num_queues: queues,
        queue_size: size,
        ..AttachOptions::default()
    }
}

#[test]
fn scan_finds_every_lun_of_several_targets_and_io_lands_on_each() {
    let s = Scsi::start(
        vec![
            (0, 0, malloc_bdev("a", 2048, 512, 0x11)),
            (0, 3, malloc_bdev("b", 4096, 512, 0x22)),
            (2, 0, malloc_bdev("c", 1024, 4096, 0x33)),
            (2, 1, malloc_bdev("d", 512, 4096, 0x44)),
        ],
        |_| {},
    );
    let ctrl = s.attach("Scsi0", opts(1, 128));
    let names: Vec<String> = ctrl.bdevs().iter().map(|b| b.name().to_owned()).collect();
    assert_eq!(names, ["Scsi0t0", "Scsi0t0l3", "Scsi0t2", "Scsi0t2l1"]);
    for (i, ((t, l, disk), bdev)) in s.disks.iter().zip(ctrl.bdevs()).enumerate() {
        assert_eq!(bdev.block_size(), disk.block_size(), "t{t} l{l}");
        assert_eq!(bdev.num_blocks(), disk.num_blocks(), "t{t} l{l}");
        assert_eq!(bdev.info().driver, "virtio_scsi");
        let bs = bdev.block_size() as usize;
        let mut ch = bdev.open_channel().unwrap();
        let data = pattern(i as u64, 8 * bs);
        write(&mut ch, 5, &data);
        assert_eq!(read(&mut ch, 5, data.len()), data);
        let mut dch = disk.open_channel().unwrap();
        assert_eq!(
            read(&mut dch, 5, data.len()),
            data,
            "backing bdev of t{t} l{l}"
        );
        let fill = [0x11u8, 0x22, 0x33, 0x44][i];
        assert_eq!(read(&mut ch, 0, bs), vec![fill; bs]);
    }
}
