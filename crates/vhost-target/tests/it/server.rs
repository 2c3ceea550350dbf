//! The serving infrastructure: lifecycle, one frontend at a time, several targets.

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use vbdev_bdev::virtio_blk::{self, AttachOptions};
use vbdev_target::blk::{BlkTargetConfig, start_blk};
use vbdev_target::server::Error;
use vbdev_virtio::transport::vhost_user::VhostUserOptions;

use crate::util::{Target, malloc_bdev, pattern, read, write};

/// Waits (bounded) until the initiator's connection thread has seen the hang-up.
fn wait_removed(bdev: &vbdev_bdev::Bdev) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bdev.is_removed() {
        assert!(Instant::now() < deadline, "hang-up not noticed");
        std::thread::yield_now();
    }
}

fn stop_hangs_up_the_frontend_and_removes_the_socket(poll: bool) {
    let mut t = Target::start(2048, 512, 0, |c| {
        c.poll = poll;
        c.num_queues = 2;
    });
    let bdev = t.attach("a", 2, 64);
    let mut ch = bdev.open_channel().unwrap();
    write(&mut ch, 0, &[1u8; 512]);
    assert!(t.handle.is_connected());
    let socket = t.socket().to_owned();
    t.handle.stop();
    assert!(!socket.exists(), "socket file removed");
    wait_removed(&bdev);
    assert!(UnixStream::connect(&socket).is_err());
    t.handle.stop(); // idempotent
}

#[test]
fn stop_hangs_up_the_frontend_and_removes_the_socket_in_event_mode() {
    stop_hangs_up_the_frontend_and_removes_the_socket(false);
}

#[test]
fn stop_hangs_up_the_frontend_and_removes_the_socket_in_polling_mode() {
    stop_hangs_up_the_frontend_and_removes_the_socket(true);
}

#[test]
fn dropping_the_handle_stops_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let bdev = malloc_bdev("d", 64, 512, 0);
    let h = start_blk(bdev, BlkTargetConfig::new(&socket)).unwrap();
    assert!(socket.exists());
    assert_eq!(h.connections(), 0);
    drop(h);
    assert!(!socket.exists());
}

#[test]
fn one_frontend_at_a_time_the_next_is_served_when_the_first_goes() {
    let t = Target::start(2048, 512, 0, |_| {});
    let data = pattern(9, 4096);
    let a = t.attach("a", 1, 64);
    let mut ch = a.open_channel().unwrap();
    write(&mut ch, 8, &data);
    // A second frontend connects (the backlog takes it) but gets no answer.
    let short = vbdev_bdev::Target::VhostUser {
        path: t.socket().to_path_buf(),
        options: VhostUserOptions {
            timeout: Duration::from_millis(300),
        },
    };
    let e = virtio_blk::attach_to("b", &short, &AttachOptions::default()).expect_err("not served");
    assert!(matches!(e, vbdev_bdev::Error::Attach { .. }), "{e}");
    assert!(!a.is_removed(), "the first frontend is unaffected");
    write(&mut ch, 16, &data);
    drop(ch);
    a.detach();
    // The target then takes the abandoned connection off the backlog, finds it closed,
    // and serves the next one.
    let c = t.attach("c", 1, 64);
    let mut ch = c.open_channel().unwrap();
    assert!(read(&mut ch, 8, 4096) == data);
    assert!(read(&mut ch, 16, 4096) == data);
}

#[test]
fn several_targets_in_one_process_serve_at_once() {
    let targets: Vec<Target> = (0..3)
        .map(|i| {
            Target::start(4096, 512, 0, |c| {
                c.num_queues = 2;
                c.poll = i == 2;
            })
        })
        .collect();
    std::thread::scope(|s| {
        for (i, t) in targets.iter().enumerate() {
            s.spawn(move || {
                let bdev = t.attach(&format!("t{i}"), 2, 64);
                let mut ch = bdev.open_channel().unwrap();
                for k in 0..32u64 {
                    let data = pattern(i as u64 * 100 + k, 2048);
                    write(&mut ch, k * 8, &data);
                    assert!(read(&mut ch, k * 8, 2048) == data);
                }
            });
        }
    });
    for (i, t) in targets.iter().enumerate() {
        assert!(t.bytes(31 * 8 * 512, 2048) == pattern(i as u64 * 100 + 31, 2048));
    }
}

#[test]
fn a_stale_socket_is_replaced_but_another_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let bdev = malloc_bdev("s", 64, 512, 0);
    let t = start_blk(bdev.clone(), BlkTargetConfig::new(&stale)).expect("replaces");
    assert!(UnixStream::connect(&stale).is_ok());
    drop(t);
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let e = start_blk(bdev, BlkTargetConfig::new(&file)).unwrap_err();
    assert!(matches!(e, Error::PathInUse { .. }), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn a_live_socket_is_never_taken_over_nor_removed_by_another_target() {
    let mut first = Target::start(2048, 512, 0, |_| {});
    let socket = first.socket().to_owned();
    // A second target on the first one's live socket is refused; the first serves on.
    let other = malloc_bdev("other", 64, 512, 0);
    let e = start_blk(other.clone(), BlkTargetConfig::new(&socket)).unwrap_err();
    assert!(matches!(e, Error::SocketInUse { .. }), "{e}");
    assert!(e.to_string().contains("another process listens"), "{e}");
    let bdev = first.attach("a", 1, 64);
    let mut ch = bdev.open_channel().unwrap();
    write(&mut ch, 7, &[9u8; 512]);
    assert_eq!(read(&mut ch, 7, 512), vec![9u8; 512]);
    drop(ch);
    bdev.detach();
    // A listener that is not a target counts the same (a daemon's RPC socket).
    let dir = tempfile::tempdir().unwrap();
    let rpc = dir.path().join("rpc.sock");
    let listener = UnixListener::bind(&rpc).unwrap();
    let e = start_blk(other.clone(), BlkTargetConfig::new(&rpc)).unwrap_err();
    assert!(matches!(e, Error::SocketInUse { .. }), "{e}");
    drop(listener);

    // The first target's file removed behind its back and a second target on the path:
    // stopping the first leaves the second's socket alone.
    std::fs::remove_file(&socket).unwrap();
    let second = start_blk(other, BlkTargetConfig::new(&socket)).expect("path free again");
    first.handle.stop();
    assert!(socket.exists(), "the second target's socket was removed");
    let bdev = virtio_blk::attach_vhost_user("b", &socket, &AttachOptions::default())
        .expect("the second target still serves");
    assert_eq!(bdev.num_blocks(), 64);
    bdev.detach();
    drop(second);
    assert!(!socket.exists(), "each target removes its own socket");
}

#[test]
fn bad_options_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bdev = malloc_bdev("o", 64, 512, 0);
    for (cfg, option) in [
        (
            BlkTargetConfig {
                num_queues: 0,
                ..BlkTargetConfig::new(dir.path().join("a"))
            },
            "num_queues",
        ),
        (
            BlkTargetConfig {
                num_queues: 65,
                ..BlkTargetConfig::new(dir.path().join("b"))
            },
            "num_queues",
        ),
        (
            BlkTargetConfig {
                serial: Some("123456789012345678901".into()),
                ..BlkTargetConfig::new(dir.path().join("c"))
            },
            "serial",
        ),
    ] {
        match start_blk(bdev.clone(), cfg) {
            Err(Error::InvalidOption { option: o, .. }) => assert_eq!(o, option),
            other => panic!("{option}: {other:?}"),
        }
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no socket left"
    );
}
