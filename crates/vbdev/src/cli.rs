//! Command-line definitions (what the user typed; validated by each command).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// vbdev: drive virtio-blk and virtio-scsi devices from user space.
#[derive(Debug, Parser)]
#[command(name = "vbdev", version, about)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax, e.g. `debug` or `vbdev::vhost_user=debug`).
    #[arg(long, global = true, default_value = "warn")]
    pub log: String,
    /// Back DMA memory with 2 MiB huge pages (falls back to normal pages with a
    /// warning). The default already does when the system has free huge pages
    /// (`HugePages_Free` in /proc/meminfo): SPDK's vhost targets register the memory
    /// they are given in 2 MiB pages, which 4 KiB pages cannot satisfy. Regions start
    /// at 16 MiB (8 huge pages) and double.
    #[arg(long, global = true, conflicts_with = "no_hugetlb")]
    pub hugetlb: bool,
    /// Never use huge pages for DMA memory (normal 4 KiB pages in memfd regions).
    #[arg(long, global = true)]
    pub no_hugetlb: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One-shot I/O on a device, like qemu-io.
    Io(IoArgs),
    /// Run an embedded vhost-user target in the foreground until SIGINT/SIGTERM.
    Target(TargetArgs),
    /// Benchmark bdevs like SPDK's bdevperf (with no target given: an embedded
    /// virtio-scsi target on a RAM disk, in this process).
    Perf(PerfArgs),
    /// Run the management daemon: SPDK-compatible JSON-RPC on a Unix socket, until
    /// SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Call a JSON-RPC method of a running `vbdev serve` (or SPDK) and print the result.
    Rpc(RpcArgs),
    /// List virtio PCI functions and bind them to vfio-pci or uio_pci_generic (or back
    /// to the kernel's virtio-pci), as SPDK's scripts/setup.sh does.
    Pci(PciArgs),
}

/// Default JSON-RPC socket of `vbdev serve` and `vbdev rpc`.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/vbdev.sock";

/// `vbdev serve`: the daemon.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// JSON-RPC listening socket (created mode 0600, removed at exit).
    #[arg(short = 'r', long = "rpc-socket", value_name = "PATH", default_value = DEFAULT_RPC_SOCKET)]
    pub rpc_socket: PathBuf,
    /// SPDK JSON config to load at start (`{"subsystems": [...]}`).
    #[arg(long = "json", value_name = "FILE", conflicts_with = "config")]
    pub json: Option<PathBuf>,
    /// Legacy SPDK INI config to load at start (`[VirtioUser0]` sections).
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the sockets of vhost controllers created by RPC
    /// (`vhost_create_blk_controller`, ...), as SPDK's `-S`.
    #[arg(
        short = 'S',
        long = "vhost-dir",
        value_name = "DIR",
        default_value = "/var/tmp"
    )]
    pub vhost_dir: PathBuf,
    /// Allow `bdev_virtio_attach_controller` with `trtype` `pci` (virtio-pci functions
    /// bound to vfio-pci or uio_pci_generic). DMA memory is then placed below 2^39, where
    /// an emulated IOMMU can reach it: hugetlb with known physical addresses (needed for
    /// uio and VFIO no-IOMMU) when huge pages are reserved, else pinned 32 MiB regions
    /// (VFIO type1 only).
    #[arg(long)]
    pub pci: bool,
    /// Largest JSON-RPC request accepted, in bytes; a larger one gets an error and its
    /// connection is closed.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub max_request: usize,
    /// Reply deadline of vhost-user targets, in milliseconds, for attaches that give no
    /// `timeout_ms` (a vbdev extension of `bdev_virtio_attach_controller`). A message
    /// that shares memory gets 20 s more per GiB it shares.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
}

/// `vbdev rpc`: a small JSON-RPC client.
#[derive(Debug, Args)]
pub struct RpcArgs {
    /// Server socket.
    #[arg(short = 's', long = "server", value_name = "PATH", default_value = DEFAULT_RPC_SOCKET)]
    pub server: PathBuf,
    /// Seconds to wait for the answer.
    #[arg(short = 't', long, value_name = "SECONDS", default_value_t = 60.0)]
    pub timeout: f64,
    /// All params as one JSON object (instead of, or merged under, `--key value` pairs).
    #[arg(short = 'p', long = "params", value_name = "JSON")]
    pub params: Option<String>,
    /// The method, e.g. `bdev_get_bdevs`.
    pub method: String,
    /// Params as `--key value` pairs (`-` in keys becomes `_`); a value that parses as
    /// JSON (a number, true, false, null, an array or an object) is sent as such,
    /// anything else as a string. A `--flag` without a value is `true`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "--KEY VALUE"
    )]
    pub args: Vec<String>,
}

/// `vbdev pci`: virtio PCI functions and their driver binding.
#[derive(Debug, Args)]
pub struct PciArgs {
    /// Where sysfs is mounted (default: $VBDEV_SYSFS_ROOT, else /sys); for tests.
    #[arg(long, value_name = "DIR", hide = true, global = true)]
    pub sysfs_root: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: PciCmd,
}

/// `vbdev pci` commands.
#[derive(Debug, Subcommand)]
pub enum PciCmd {
    /// List the virtio PCI functions (vendor 1af4): address, device type, driver
    /// binding, IOMMU group, NUMA node.
    List {
        /// Print one JSON object (`{"functions": [...]}`).
        #[arg(long)]
        json: bool,
    },
    /// Bind a virtio function to a driver: write driver_override, unbind it from its
    /// driver, probe (writing vfio-pci's unbind waits while a process uses the function).
    Bind {
        /// PCI address, DDDD:BB:DD.F (or BB:DD.F for domain 0000).
        bdf: String,
        /// The driver: vfio-pci or uio_pci_generic for user space, virtio-pci to give the
        /// function back to the kernel.
        #[arg(value_enum)]
        driver: PciDriver,
        /// Take the function from the kernel even when one of its disks is mounted, used
        /// as swap or held by another device (refused without it, as SPDK's setup.sh does).
        #[arg(long)]
        force: bool,
    },
    /// Unbind a virtio function from its driver and clear its driver_override.
    Unbind {
        /// PCI address, DDDD:BB:DD.F (or BB:DD.F for domain 0000).
        bdf: String,
        /// As for bind: unbind even a function whose disks the kernel uses.
        #[arg(long)]
        force: bool,
    },
}

/// Drivers `vbdev pci bind` binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PciDriver {
    /// VFIO (type1 IOMMU, or no-IOMMU mode).
    #[value(name = "vfio-pci")]
    VfioPci,
    /// UIO (no IOMMU translation).
    #[value(name = "uio_pci_generic")]
    UioPciGeneric,
    /// The kernel's virtio drivers.
    #[value(name = "virtio-pci")]
    VirtioPci,
}

/// bdevperf's workloads (`-w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential reads and writes, `-M` percent reads.
    Rw,
    /// Random reads and writes, `-M` percent reads.
    Randrw,
    /// Write, read back and compare, at sequential offsets.
    Verify,
    /// `verify` plus a bdev reset every 10 s.
    Reset,
    /// Unmap (discard) at sequential offsets.
    Unmap,
    /// Flush.
    Flush,
    /// Write zeroes at sequential offsets.
    #[value(name = "write_zeroes")]
    WriteZeroes,
}

/// Faults the embedded target can be told to inject (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmbeddedFault {
    /// Flip one byte of the first read's data.
    CorruptRead,
}

/// `vbdev perf`: bdevperf's options, and where to attach.
#[derive(Debug, Args)]
pub struct PerfArgs {
    /// I/O depth: requests kept in flight per job.
    #[arg(short = 'q', long = "queue-depth", value_name = "DEPTH")]
    pub queue_depth: u32,
    /// I/O size in bytes (suffixes: 4k, 1m); a multiple of the bdev block size.
    #[arg(short = 'o', long = "io-size", value_name = "SIZE", value_parser = parse_size)]
    pub io_size: u64,
    /// Workload.
    #[arg(short = 'w', long = "workload", value_enum)]
    pub workload: Workload,
    /// Read percentage for rw and randrw (0 = all writes, 100 = all reads).
    #[arg(short = 'M', long = "rwmixread", value_name = "PERCENT")]
    pub rw_percentage: Option<u8>,
    /// Run time in seconds.
    #[arg(short = 't', long = "time", value_name = "SECONDS")]
    pub time: u64,
    /// Bdev to run on (default: every bdev).
    #[arg(short = 'T', long = "bdev", value_name = "NAME")]
    pub bdev: Option<String>,
    /// Every core runs a job on each bdev, each on its own part of the LBA range.
    #[arg(short = 'C')]
    pub every_core: bool,
    /// Cores to run on, one pinned thread each: a hex mask (0x3) or a list ([0,2-3])
    /// (default: the first core this process may run on).
    #[arg(short = 'm', long = "cores", value_name = "MASK|LIST")]
    pub cores: Option<String>,
    /// Print the results every PERIOD seconds while running.
    #[arg(short = 'S', long = "period", value_name = "PERIOD")]
    pub period: Option<u64>,
    /// Print latency percentiles (p50, p90, p99, p99.9, p99.99) per job.
    #[arg(short = 'l')]
    pub latency: bool,
    /// Count an I/O outstanding longer than this many seconds as timed out (0: never).
    #[arg(
        short = 'k',
        long = "timeout",
        value_name = "SECONDS",
        default_value_t = 0
    )]
    pub timeout: u64,
    /// Unique data in every write.
    #[arg(short = 'U')]
    pub unique: bool,
    /// Print the result as one JSON object in the shape of SPDK's `perform_tests` result
    /// (with -S: one object per period, then the final one).
    #[arg(long)]
    pub json: bool,
    /// vhost-user socket of the target.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["config", "pci"])]
    pub vhost_user: Option<PathBuf>,
    /// A virtio-pci function bound to vfio-pci or uio_pci_generic, e.g. `0000:00:04.0`
    /// (uio and VFIO no-IOMMU need reserved 2 MiB huge pages).
    #[arg(long, value_name = "BDF", conflicts_with = "config")]
    pub pci: Option<String>,
    /// Device type behind --vhost-user or --pci (default blk).
    #[arg(long, value_enum)]
    pub dev_type: Option<DevType>,
    /// SPDK JSON config to set up bdevs from (`bdev_virtio_attach_controller`,
    /// `bdev_malloc_create`, `bdev_null_create`); SPDK's `--json CONFIG`.
    #[arg(
        short = 'c',
        long = "config",
        visible_alias = "json-config",
        value_name = "CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// Request queues to set up with --vhost-user and for the embedded target
    /// (default: one per core).
    #[arg(long)]
    pub queues: Option<u16>,
    /// Descriptors per queue (power of two, up to 32768).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Control-message and connect timeout, in milliseconds (a message that shares
    /// memory gets 20 s more per GiB it shares).
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Size of the embedded target's RAM disk (memory is taken as it is written).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    pub malloc: u64,
    /// Block size of the embedded target's RAM disk: a power of two from 512 to 65536.
    #[arg(long, default_value_t = 512, value_parser = parse_block_size)]
    pub block_size: u32,
    /// Test hook: make the embedded target inject this fault.
    #[arg(long, value_enum, hide = true)]
    pub inject_fault: Option<EmbeddedFault>,
}

/// Device type a target serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetType {
    /// vhost-user-blk.
    Blk,
    /// vhost-user-scsi.
    Scsi,
}

/// `vbdev target`: serve a bdev over vhost-user.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Listening socket to create (removed on exit).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Device type to offer.
    #[arg(long, value_enum, default_value = "blk")]
    pub dev_type: TargetType,
    /// Serve a RAM disk of this size (bytes; K, M, G, T suffixes are powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, group = "backing")]
    pub malloc: Option<u64>,
    /// Serve a null disk of this size (reads zeros, drops writes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, group = "backing")]
    pub null: Option<u64>,
    /// With --null: whether reads return zeros (default on). `off` leaves the reader's
    /// buffers as they are, as SPDK's null bdev and qemu-storage-daemon's null-co with
    /// read-zeroes=off do: no data is moved, for comparisons against those.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub null_read_zeroes: Option<bool>,
    /// Serve a raw image file (O_DIRECT where the file system allows it).
    #[arg(long, value_name = "PATH", group = "backing")]
    pub file: Option<PathBuf>,
    /// Logical block size in bytes: a power of two from 512 to 65536.
    #[arg(long, default_value_t = 512, value_parser = parse_block_size)]
    pub block_size: u32,
    /// Request queues offered (a frontend may use fewer). QEMU's vhost-user-blk-pci asks
    /// for one per vCPU unless its `num-queues` is set, and refuses a target that offers
    /// fewer; SPDK's initiator needs `vq_count` 2 for a plain bdevperf run and reads
    /// vhost-user-scsi's queue count as request queues, so it may set up two more than
    /// asked for. Idle queues cost a sleeping thread each, or nothing when polled.
    #[arg(long, default_value_t = 4)]
    pub queues: u16,
    /// SCSI targets (vhost-user-scsi only).
    #[arg(long, default_value_t = 1)]
    pub targets: u8,
    /// LUNs per SCSI target (vhost-user-scsi only); each LUN gets its own disk.
    #[arg(long, default_value_t = 1)]
    pub luns: u16,
    /// Busy-poll the request queues instead of waiting for kicks (for benchmarks).
    #[arg(long)]
    pub poll: bool,
    /// With --poll: threads polling the request queues, from 1 to --queues; each polls
    /// its share of the queues in turn (default 1: one busy core for all of them).
    #[arg(long, value_name = "N", requires = "poll")]
    pub poll_threads: Option<u16>,
    /// Offer a read-only device.
    #[arg(long)]
    pub read_only: bool,
}

/// Parses `on` or `off` (qemu's spelling of a boolean option).
/// Parses a block size: a power of two from 512 to 65536 bytes, as every bdev module
/// takes (SPDK's malloc and null bdevs take the same).
fn parse_block_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !n.is_power_of_two() || !(512..=65536).contains(&n) {
        return Err(format!(
            "{n} is not a block size: a power of two from 512 to 65536"
        ));
    }
    Ok(n)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?} is not on or off")),
    }
}

/// Parses a size: bytes, or a number with a K/M/G/T (or KiB/MiB/GiB/TiB) suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512, 64M, 1G)"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown size unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} is not a positive size that fits in 64 bits"))
}

/// Device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DevType {
    /// virtio-blk: one bdev, `VirtioBlk0`.
    Blk,
    /// virtio-scsi: controller `VirtioScsi0`, one bdev per LUN (`VirtioScsi0t<T>` for
    /// LUN 0, `VirtioScsi0t<T>l<L>` otherwise).
    Scsi,
}

/// `vbdev io`: attach, run one command, detach.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("device").required(true).args(["vhost_user", "pci"])))]
pub struct IoArgs {
    /// vhost-user socket of the target.
    #[arg(long, value_name = "PATH")]
    pub vhost_user: Option<PathBuf>,
    /// Virtio PCI function to drive (e.g. 0000:00:02.0), bound to vfio-pci (with an
    /// IOMMU: pinned 32 MiB DMA regions below 512 GiB; without one: physical addresses)
    /// or uio_pci_generic (physical addresses). Physical addresses need reserved 2 MiB
    /// huge pages (/proc/sys/vm/nr_hugepages) and root.
    #[arg(long, value_name = "BDF")]
    pub pci: Option<String>,
    /// Device type behind the socket or PCI function.
    #[arg(long, value_enum, default_value = "blk")]
    pub dev_type: DevType,
    /// Bdev to use: a LUN bdev of the virtio-scsi controller (default: the first one
    /// found; with `info`, list only this one). With `--dev-type blk` only `VirtioBlk0`.
    #[arg(long, value_name = "NAME", global = true)]
    pub bdev: Option<String>,
    /// Request queues to set up.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Descriptors per queue (power of two, up to 32768).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Control-message and connect timeout, in milliseconds (a message that shares
    /// memory gets 20 s more per GiB it shares).
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print results as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: IoCmd,
}

/// `vbdev io` commands. Offsets and lengths are bytes and must be block aligned.
#[derive(Debug, Subcommand)]
pub enum IoCmd {
    /// Print name, block size, block count, features and limits (virtio-scsi: the
    /// controller and every LUN bdev).
    Info,
    /// Read a range; write it to a file, check it against a pattern, or hex-dump it.
    Read {
        /// Byte offset.
        #[arg(long)]
        offset: u64,
        /// Byte length.
        #[arg(long)]
        length: u64,
        /// Write the data to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Check that every byte equals this value (exit 1 if not).
        #[arg(long, value_name = "BYTE", value_parser = parse_byte)]
        pattern: Option<u8>,
    },
    /// Write a file's contents or a repeated byte.
    Write {
        /// Byte offset.
        #[arg(long)]
        offset: u64,
        /// Data to write (its size must be block aligned).
        #[arg(long = "in", value_name = "FILE", conflicts_with_all = ["pattern", "length"])]
        input: Option<PathBuf>,
        /// Byte value to write `--length` times (decimal or 0x hex).
        #[arg(long, value_name = "BYTE", value_parser = parse_byte, requires = "length")]
        pattern: Option<u8>,
        /// Byte length (with `--pattern`).
        #[arg(long)]
        length: Option<u64>,
    },
    /// Flush the device's write cache.
    Flush,
    /// Discard a range.
    Discard {
        /// Byte offset.
        #[arg(long)]
        offset: u64,
        /// Byte length.
        #[arg(long)]
        length: u64,
    },
    /// Zero a range.
    WriteZeroes {
        /// Byte offset.
        #[arg(long)]
        offset: u64,
        /// Byte length.
        #[arg(long)]
        length: u64,
    },
}

fn parse_byte(s: &str) -> Result<u8, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a byte value (0-255 or 0x00-0xff)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn block_sizes_are_powers_of_two_from_512_to_65536() {
        for n in 0..=70_000u32 {
            let want = n.is_power_of_two() && (512..=65536).contains(&n);
            assert_eq!(parse_block_size(&n.to_string()).is_ok(), want, "{n}");
        }
        for s in ["", "-512", "512.0", "4k", "99999999999", " 4096 "] {
            assert_eq!(parse_block_size(s).is_ok(), s == " 4096 ", "{s:?}");
        }
    }

    #[test]
    fn byte_values_parse_in_decimal_and_hex() {
        assert_eq!(parse_byte("0xab"), Ok(0xab));
        assert_eq!(parse_byte("17"), Ok(17));
        assert!(parse_byte("256").is_err());
        assert!(parse_byte("x").is_err());
    }
}
