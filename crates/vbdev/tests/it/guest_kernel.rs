//! The Linux kernel's virtio-blk and virtio-scsi drivers as the initiator of `vbdev
//! target`: a QEMU guest (scripts/pci-guest, mode `kernel`) gets a vhost-user-blk-pci
//! and a vhost-user-scsi-pci function connected to targets running on the host, each
//! serving an image file. In the guest, `dd` writes patterns at a few offsets of
//! `/dev/vdX` and `/dev/sdX`, from both vCPUs (so both request queues), caches are
//! dropped and everything is read back and compared; data the host put into the images
//! is read too. After the guest exits the host checks that each image holds exactly the
//! patterns at their offsets and its original bytes everywhere else, and that the
//! targets stop cleanly on SIGTERM.
//!
//! Needs the harness's cache (`scripts/pci-guest/setup.sh`); without it the test fails
//! and says so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::pci::harness;
use crate::util::{VBDEV, det_bytes, path};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Each image's size.
const SIZE: u64 = 16 * MIB;
/// Request queues of each target and each vhost-user function (the guest has 2 vCPUs).
const QUEUES: &str = "2";
/// How long a target may take to listen, and to exit after SIGTERM.
const TARGET_DEADLINE: Duration = Duration::from_secs(20);

/// A region the guest writes: `len` bytes of a pattern at byte `offset`, with `dd`'s
/// block size `bs`, from the vCPUs of `cpus` (a taskset mask), with `flag` (O_DIRECT or
/// through the page cache).
struct Region {
    offset: u64,
    len: u64,
    bs: u64,
    cpus: u8,
    flag: &'static str,
}

/// What the guest writes on each disk: the first sector's page, a 1 MiB-aligned MiB,
/// one 512-byte sector through the page cache, the last 4 KiB.
const REGIONS: [Region; 4] = [
    Region {
        offset: 0,
        len: 4 * KIB,
        bs: 4 * KIB,
        cpus: 1,
        flag: "oflag=direct",
    },
    Region {
        offset: 5 * MIB,
        len: MIB,
        bs: 256 * KIB,
        cpus: 2,
        flag: "oflag=direct",
    },
    Region {
        offset: 9 * 512,
        len: 512,
        bs: 512,
        cpus: 2,
        flag: "",
    },
    Region {
        offset: SIZE - 4 * KIB,
        len: 4 * KIB,
        bs: 4 * KIB,
        cpus: 1,
        flag: "oflag=direct",
    },
];

/// The host's data the guest reads (before writing anything): 64 KiB at 8 MiB.
const HOST_OFFSET: u64 = 8 * MIB;
const HOST_LEN: u64 = 64 * KIB;

/// One disk of the test: its image, its original bytes and its patterns.
struct Disk {
    /// `blk` or `scsi`: the target's `--dev-type` and the guest's file names.
    kind: &'static str,
    image: PathBuf,
    /// The image as the host wrote it.
    original: Vec<u8>,
    /// One pattern per entry of [`REGIONS`].
    patterns: Vec<Vec<u8>>,
}

impl Disk {
    /// Writes the image (pseudo-random bytes, so a misplaced read or write shows) and
    /// the pattern files the guest gets.
    fn create(dir: &Path, kind: &'static str, seed: u64) -> Self {
        let image = dir.join(format!("{kind}.img"));
        let original = det_bytes(seed, SIZE as usize);
        std::fs::write(&image, &original).unwrap();
        let patterns: Vec<Vec<u8>> = REGIONS
            .iter()
            .enumerate()
            .map(|(i, r)| det_bytes(seed * 100 + i as u64 + 1, r.len as usize))
            .collect();
        for (i, p) in patterns.iter().enumerate() {
            std::fs::write(dir.join(format!("{kind}-{i}")), p).unwrap();
        }
        let host = &original[HOST_OFFSET as usize..(HOST_OFFSET + HOST_LEN) as usize];
        std::fs::write(dir.join(format!("{kind}-host")), host).unwrap();
        Self {
            kind,
            image,
            original,
            patterns,
        }
    }

    /// The `--file` arguments that put the pattern files into the guest's /vbdev/data.
    fn guest_files(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = (0..REGIONS.len())
            .map(|i| format!("{}-{i}", self.kind))
            .collect();
        names.push(format!("{}-host", self.kind));
        names
            .iter()
            .map(|n| format!("{}:/vbdev/data/{n}", path(&dir.join(n))))
            .collect()
    }

    /// The image as it must be after the guest's writes.
    fn expected(&self) -> Vec<u8> {
        let mut e = self.original.clone();
        for (r, p) in REGIONS.iter().zip(&self.patterns) {
            e[r.offset as usize..(r.offset + r.len) as usize].copy_from_slice(p);
        }
        e
    }

    /// The guest script's lines for this disk (`$dev` names it): a function writing
    /// every region, and the checks.
    fn script(&self) -> (String, String) {
        let k = self.kind;
        let mut writes = format!("writes_{k}() {{\n");
        let mut checks = format!("check ${k} $D/{k}-host {HOST_OFFSET} {}\n", 64 * KIB);
        for (i, r) in REGIONS.iter().enumerate() {
            writes += &format!(
                "    put ${k} $D/{k}-{i} {} {} {} {}\n",
                r.offset, r.bs, r.cpus, r.flag
            );
            checks += &format!("check ${k} $D/{k}-{i} {} {}\n", r.offset, r.bs);
        }
        writes += "}\n";
        (writes, checks)
    }
}

const SCRIPT_HEAD: &str = r#"#!/bin/sh
D=/vbdev/data
fail() { echo "GUEST-FAIL $*"; exit 1; }
blk=$VBDEV_VHOST_BLK_DEV
scsi=$VBDEV_VHOST_SCSI_DEV
[ -b "$blk" ] || fail "no vhost-user-blk disk (VBDEV_VHOST_BLK_DEV='$blk')"
[ -b "$scsi" ] || fail "no vhost-user-scsi disk (VBDEV_VHOST_SCSI_DEV='$scsi')"
for d in $blk $scsi; do
    n=${d##*/}
    echo "GUEST-DISK $d sectors=$(cat /sys/block/$n/size) queues=$(ls /sys/block/$n/mq | wc -l)"
done
# put DEV FILE OFFSET BS CPUMASK [FLAG]: FILE written at OFFSET from the vCPUs of CPUMASK
put() {
    taskset "$5" dd if="$2" of="$1" bs="$4" seek=$(($3 / $4)) conv=notrunc,fsync $6 2>/dev/null ||
        fail "writing $2 to $1 at $3 failed"
}
# check DEV FILE OFFSET BS: DEV holds FILE at OFFSET (read with O_DIRECT)
check() {
    n=$(wc -c <"$2")
    dd if="$1" bs="$4" skip=$(($3 / $4)) count=$((n / $4)) iflag=direct 2>/dev/null | cmp - "$2" ||
        fail "$1 does not hold $2 at $3"
    echo "GUEST-CHECK $1 $3 $n ok"
}
"#;

/// The whole guest script: the host's data read first, both disks written at once,
/// caches dropped, everything read back.
fn guest_script(disks: &[Disk]) -> String {
    let mut s = SCRIPT_HEAD.to_owned();
    let parts: Vec<(String, String)> = disks.iter().map(Disk::script).collect();
    for (w, _) in &parts {
        s += w;
    }
    s += "echo GUEST-STEP host data\n";
    for (_, c) in &parts {
        // The first check line is the host's data.
        s += c.lines().next().unwrap();
        s += "\n";
    }
    s += "echo GUEST-STEP writes\n";
    for d in disks {
        s += &format!("writes_{0} & pid_{0}=$!\n", d.kind);
    }
    for d in disks {
        s += &format!("wait $pid_{0} || fail \"writes to ${0} failed\"\n", d.kind);
    }
    s += "sync\necho 3 >/proc/sys/vm/drop_caches\necho GUEST-STEP read back\n";
    for (_, c) in &parts {
        for line in c.lines().skip(1) {
            s += line;
            s += "\n";
        }
    }
    s += &rebind_script();
    s += "echo GUEST-OK\n";
    s
}

/// Unbind/rebind cycles of the vhost-user-scsi function after the checks.
const REBINDS: u32 = 2;

/// The guest script's rebind part: [`REBINDS`] times, the vhost-user-scsi function is
/// unbound from virtio-pci and bound again (the target sees the rings stopped and new
/// ones started on the same connection), and the host's data is read from the new disk
/// with a timeout, so a lost completion shows as a failed cycle instead of a hang.
// See: scripts/pci-guest/rebind-stress.sh (a completion published before QEMU's
// SET_VRING_CALL was never signalled: about one rebind boot in eight hung).
fn rebind_script() -> String {
    format!(
        r#"echo GUEST-STEP rebind
bdf=${{VBDEV_PCI_VHOST_SCSI%% *}}
sdisk() {{
    for b in /sys/bus/pci/devices/$bdf/virtio*/host*/target*/*/block/*; do
        [ -e "$b" ] && {{ echo /dev/${{b##*/}}; return 0; }}
    done
    return 1
}}
i=1
while [ $i -le {REBINDS} ]; do
    echo $bdf >/sys/bus/pci/drivers/virtio-pci/unbind || fail "unbind $bdf (cycle $i)"
    echo $bdf >/sys/bus/pci/drivers/virtio-pci/bind &
    t=0
    scsi=""
    while [ $t -lt 100 ]; do
        scsi=$(sdisk) && break
        usleep 100000
        t=$((t + 1))
    done
    [ -n "$scsi" ] || fail "rebind cycle $i: no disk 10 s after bind"
    wait $! || fail "rebind cycle $i: bind failed"
    timeout 10 dd if=$scsi bs=4096 skip={skip} count={count} iflag=direct 2>/dev/null | cmp - $D/scsi-host ||
        fail "rebind cycle $i: $scsi does not hold the host data (or the read timed out)"
    echo "GUEST-REBIND $i $scsi ok"
    i=$((i + 1))
done
"#,
        skip = HOST_OFFSET / 4096,
        count = HOST_LEN / 4096,
    )
}

/// A `vbdev target` on the host, its stderr collected for failure messages; killed on
/// drop if still running.
struct HostTarget {
    child: Child,
    socket: PathBuf,
    log: Arc<Mutex<String>>,
}

impl HostTarget {
    /// Starts `vbdev target --dev-type KIND --file IMAGE` and waits for its "serving"
    /// line, printed once the socket listens.
    fn start(kind: &str, socket: PathBuf, image: &Path) -> Self {
        let mut child = Command::new(VBDEV)
            .args([
                "--log",
                "info",
                "target",
                "--dev-type",
                kind,
                "--queues",
                QUEUES,
            ])
            .arg("--socket")
            .arg(&socket)
            .arg("--file")
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vbdev target");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = Arc::clone(&log);
        // Reads stderr to its end, so the target never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if line.contains("vbdev: serving") {
                    let _ = ready_tx.send(());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut t = Self { child, socket, log };
        if ready_rx.recv_timeout(TARGET_DEADLINE).is_err() {
            let _ = t.child.kill();
            panic!(
                "vbdev target --dev-type {kind} did not start within {TARGET_DEADLINE:?}:\n{}",
                t.log()
            );
        }
        assert!(t.socket.exists(), "no socket after the serving line");
        t
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit code (panics if it does not exit in time).
    fn stop(&mut self) -> Option<i32> {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid, which has not been waited for yet;
        // no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let (tx, rx) = mpsc::channel();
        let child = &mut self.child;
        let status = std::thread::scope(|s| {
            s.spawn(move || tx.send(child.wait()));
            let r = rx.recv_timeout(TARGET_DEADLINE);
            if r.is_err() {
                // SAFETY: as above; ends the child so the waiting thread returns.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            r
        });
        match status {
            Ok(st) => st.unwrap().code(),
            Err(_) => panic!(
                "vbdev target did not exit within {TARGET_DEADLINE:?} of SIGTERM:\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for HostTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first offset where `got` and `want` differ, and what the test wrote there.
fn first_difference(got: &[u8], want: &[u8]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("size {} instead of {}", got.len(), want.len()));
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b)?;
    let what = REGIONS
        .iter()
        .position(|r| (r.offset..r.offset + r.len).contains(&(at as u64)))
        .map_or("a byte the guest did not write".to_owned(), |i| {
            format!(
                "region {i} (offset {}, {} bytes) written by the guest",
                REGIONS[i].offset, REGIONS[i].len
            )
        });
    Some(format!(
        "byte {at} is {:#04x}, not {:#04x}: {what}",
        got[at], want[at]
    ))
}

#[test]
fn linux_virtio_drivers_read_and_write_through_vhost_user_blk_and_scsi_targets() {
    let run_sh = harness();
    // Under /tmp: socket paths must fit in sun_path.
    let dir = tempfile::Builder::new()
        .prefix("vbdev-gk")
        .tempdir_in("/tmp")
        .unwrap();
    let disks = [
        Disk::create(dir.path(), "blk", 11),
        Disk::create(dir.path(), "scsi", 12),
    ];
    let mut blk = HostTarget::start("blk", dir.path().join("blk.sock"), &disks[0].image);
    let mut scsi = HostTarget::start("scsi", dir.path().join("scsi.sock"), &disks[1].image);

    let guest = dir.path().join("guest.sh");
    std::fs::write(&guest, guest_script(&disks)).unwrap();
    std::fs::set_permissions(&guest, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(&run_sh);
    cmd.args([
        "--mode",
        "kernel",
        "--timeout",
        "180",
        "--vhost-queues",
        QUEUES,
    ])
    .arg("--vhost-user-blk")
    .arg(&blk.socket)
    .arg("--vhost-user-scsi")
    .arg(&scsi.socket);
    for d in &disks {
        for f in d.guest_files(dir.path()) {
            cmd.arg("--file").arg(f);
        }
    }
    let started = Instant::now();
    let out = cmd
        .arg("--")
        .arg(&guest)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/pci-guest/run.sh");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let logs = [Arc::clone(&blk.log), Arc::clone(&scsi.log)];
    let whole = || {
        format!(
            "--- guest console\n{stdout}\n--- run.sh stderr\n{}\n--- blk target\n{}\n--- scsi target\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs[0].lock().unwrap(),
            logs[1].lock().unwrap()
        )
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "the guest run failed after {took:?}:\n{}",
        whole()
    );
    assert!(stdout.contains("GUEST-OK"), "{}", whole());
    for i in 1..=REBINDS {
        assert!(
            stdout.contains(&format!("GUEST-REBIND {i} /dev/sd")),
            "rebind cycle {i} missing:\n{}",
            whole()
        );
    }
    assert!(
        stdout.contains("VBDEV-PCI vhost-blk 0000:00:10.0 virtio-pci")
            && stdout.contains("VBDEV-PCI vhost-scsi 0000:00:18.0 virtio-pci"),
        "the vhost-user functions are not where run.sh puts them:\n{}",
        whole()
    );
    // Both disks have the target's size and one hardware queue per request queue.
    let sectors = SIZE / 512;
    for dev in ["vd", "sd"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("GUEST-DISK /dev/{dev}"))
                    && l.ends_with(&format!("sectors={sectors} queues={QUEUES}"))),
            "/dev/{dev}X: wrong size or queue count:\n{}",
            whole()
        );
    }

    // The targets saw one frontend each, and stop cleanly.
    let (blk_code, scsi_code) = (blk.stop(), scsi.stop());
    assert_eq!(blk_code, Some(0), "blk target exit:\n{}", whole());
    assert_eq!(scsi_code, Some(0), "scsi target exit:\n{}", whole());
    for (t, log) in [("blk", blk.log()), ("scsi", scsi.log())] {
        assert!(
            log.contains("frontend connected") && log.contains("frontend disconnected"),
            "{t} target log:\n{log}"
        );
        assert!(
            !log.contains(" ERROR "),
            "{t} target logged an error:\n{log}"
        );
    }
    assert!(
        !blk.socket.exists() && !scsi.socket.exists(),
        "sockets left"
    );

    // Each image holds the guest's patterns at their offsets, and nothing else changed.
    for d in &disks {
        let got = std::fs::read(&d.image).unwrap();
        if let Some(diff) = first_difference(&got, &d.expected()) {
            panic!(
                "{} after the guest run: {diff}\n{}",
                d.image.display(),
                whole()
            );
        }
    }
    eprintln!("guest run took {took:?}");
}
