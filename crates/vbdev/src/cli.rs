//! Command-line definitions (what the user typed; validated by each command).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// vbdev: drive virtio-blk devices from user space.
#[derive(Debug, Parser)]
#[command(name = "vbdev", version, about)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax, e.g. `debug` or `vbdev::vhost_user=debug`).
    #[arg(long, global = true, default_value = "warn")]
    pub log: String,
    /// Back DMA memory with 2 MiB huge pages when enough are free (falls back to normal
    /// pages with a warning; regions are 1 GiB, i.e. 512 pages each).
    #[arg(long, global = true)]
    pub hugetlb: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One-shot I/O on a device, like qemu-io.
    Io(IoArgs),
}

/// Device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DevType {
    /// virtio-blk.
    Blk,
}

/// `vbdev io`: attach, run one command, detach.
#[derive(Debug, Args)]
pub struct IoArgs {
    /// vhost-user socket of the target.
    #[arg(long, value_name = "PATH")]
    pub vhost_user: PathBuf,
    /// Device type behind the socket.
    #[arg(long, value_enum, default_value = "blk")]
    pub dev_type: DevType,
    /// Request queues to set up.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Descriptors per queue (power of two, up to 32768).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Control-message and connect timeout, in milliseconds.
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
    /// Print name, block size, block count, features and limits.
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
    fn byte_values_parse_in_decimal_and_hex() {
        assert_eq!(parse_byte("0xab"), Ok(0xab));
        assert_eq!(parse_byte("17"), Ok(17));
        assert!(parse_byte("256").is_err());
        assert!(parse_byte("x").is_err());
    }
}
