//! The legacy SPDK INI config (`--config`), converted to the JSON-RPC calls it stands for.
//!
//! SPDK v17.10 to v20.07 read an INI-like file (`lib/conf`); SPDK v20.10 removed it, and its
//! `scripts/config_converter.py` turned the virtio sections into RPC calls. This module does the
//! same conversion (research `spdk-virtio.md` §8):
//!
//! ```text
//! [VirtioUser0]          # -> bdev_virtio_attach_controller
//!   Path /tmp/vhost.0    #    traddr (required)
//!   Type Blk             #    dev_type: "scsi" (default) or "blk"
//!   Queues 2             #    vq_count: default 1, values < 1 become 1
//!   Name VirtioBlk0      #    name: default the section name with User -> Scsi/Blk
//! ```
//!
//! Every call also gets `trtype: "user"` and `vq_size: 512` (SPDK's hard-coded queue size).
//! `[VirtioPci] Enable Yes` (attach every virtio PCI device at start) has no RPC (SPDK
//! dropped it without one): it sets [`Ini::pci_enable`], and the daemon attaches every
//! modern virtio-blk and virtio-scsi function bound to a user-space driver after the
//! calls, as `VirtioBlk<N>` / `VirtioScsi<N>`. `save_config` then writes one
//! `bdev_virtio_attach_controller` call with `trtype: "pci"` per device. Every other
//! section (`[Global]`, `[Malloc]`, `[Nvme]`, ...) is skipped and listed in
//! [`Ini::ignored_sections`] so that the caller can warn about it.
//!
//! Syntax, as SPDK's `lib/conf`: `[Section]` headers; `Key Value` lines where the key ends at
//! the first whitespace and the value is the rest of the line, trimmed; `#` starts a comment
//! at the start of a line or after whitespace (`/tmp/a#b` keeps its `#`); blank lines and
//! indentation are allowed. Keys are case-sensitive (`Path`, `Type`, `Queues`, `Name`,
//! `Enable`).

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde_json::json;

/// The RPC a `[VirtioUser<N>]` section becomes.
const ATTACH: &str = "bdev_virtio_attach_controller";

/// SPDK's legacy config hard-coded the queue size of vhost-user devices.
const VQ_SIZE: u16 = 512;

/// The prefix of the sections that describe one vhost-user controller each.
const USER_PREFIX: &str = "VirtioUser";

/// The section that enumerates virtio PCI devices.
const PCI_SECTION: &str = "VirtioPci";

/// One call: a method and its params.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Method name.
    pub method: String,
    /// Params object.
    pub params: serde_json::Value,
}

/// What an INI config stands for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ini {
    /// The calls, in the order of their sections in the file.
    pub calls: Vec<Call>,
    /// Sections this module does not handle (`Global`, `Malloc`, ...), by name, in file
    /// order, once per occurrence; the caller should warn that they were ignored.
    pub ignored_sections: Vec<String>,
    /// `[VirtioPci] Enable Yes`: attach every virtio-blk and virtio-scsi PCI function
    /// bound to `vfio-pci` or `uio_pci_generic`, after the calls.
    pub pci_enable: bool,
}

/// Parses INI text into the calls it stands for and the sections it ignored.
///
/// # Errors
/// A message that starts with `line <n>: ` and says what is wrong: a line that is neither a
/// section header, a `Key Value` line nor a comment; a key outside any section; in a virtio
/// section, an unknown or repeated key or a bad value; a `[VirtioUser<N>]` section without
/// `Path` or with a suffix that is not a decimal number; two controllers with one name.
pub fn parse_full(text: &str) -> anyhow::Result<Ini> {
    let mut ini = Ini::default();
    // Controller names given so far, with the line of their section, to refuse doubles
    // here rather than fail the second attach after the first one is up.
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut section: Option<Section> = None;
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']').map(str::trim) else {
                bail!("line {lineno}: malformed section header (expected `[Name]`)");
            };
            if name.is_empty() || name.contains(['[', ']']) {
                bail!("line {lineno}: malformed section header (expected `[Name]`)");
            }
            if let Some(done) = section.take() {
                done.finish(&mut ini, &mut names)?;
            }
            section = Some(Section::open(name, lineno, &mut ini)?);
            continue;
        }
        let (key, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k, v.trim()),
            None => (line, ""),
        };
        let Some(sec) = section.as_mut() else {
            bail!("line {lineno}: `{key}` is outside any section (expected `[Name]` first)");
        };
        sec.set(key, value, lineno)?;
    }
    if let Some(done) = section.take() {
        done.finish(&mut ini, &mut names)?;
    }
    Ok(ini)
}

/// Cuts a `#` comment: at the start of the line or after whitespace.
fn strip_comment(line: &str) -> &str {
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_ws {
            return &line[..i];
        }
        prev_ws = c.is_whitespace();
    }
    line
}

/// A key's value and the line it was on.
#[derive(Debug)]
struct Entry {
    value: String,
    line: usize,
}

/// The kinds of section this module reads.
#[derive(Debug)]
enum Kind {
    /// `[VirtioUser<N>]` (the suffix only names the default controller).
    User,
    /// `[VirtioPci]`.
    Pci,
    /// Anything else: skipped.
    Ignored,
}

/// A section being read.
#[derive(Debug)]
struct Section {
    name: String,
    line: usize,
    kind: Kind,
    keys: HashMap<&'static str, Entry>,
}

impl Section {
    fn open(name: &str, line: usize, ini: &mut Ini) -> anyhow::Result<Self> {
        let kind = if let Some(suffix) = name.strip_prefix(USER_PREFIX) {
            // SPDK: sscanf("VirtioUser%u"); we also refuse trailing junk ("VirtioUser1x").
            match suffix {
                s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    // SPDK's %u: the suffix must fit 32 bits.
                    if s.parse::<u32>().is_err() {
                        bail!("line {line}: Section '{name}': suffix {s} is too large");
                    }
                    Kind::User
                }
                _ => bail!("line {line}: Section '{name}' has non-numeric suffix."),
            }
        } else if name == PCI_SECTION {
            Kind::Pci
        } else {
            ini.ignored_sections.push(name.to_owned());
            Kind::Ignored
        };
        Ok(Self {
            name: name.to_owned(),
            line,
            kind,
            keys: HashMap::new(),
        })
    }

    fn set(&mut self, key: &str, value: &str, line: usize) -> anyhow::Result<()> {
        let known: &[&'static str] = match self.kind {
            Kind::User => &["Path", "Type", "Queues", "Name"],
            Kind::Pci => &["Enable"],
            // SPDK sections such as [Nvme] repeat keys (TransportID); not ours to check.
            Kind::Ignored => return Ok(()),
        };
        let name = &self.name;
        let Some(&key) = known.iter().find(|k| **k == key) else {
            bail!(
                "line {line}: [{name}]: unknown key `{key}` (expected one of: {})",
                known.join(", ")
            );
        };
        if value.is_empty() {
            bail!("line {line}: [{name}]: `{key}` has no value");
        }
        if let Some(first) = self.keys.get(key) {
            bail!(
                "line {line}: [{name}]: duplicate key `{key}` (first at line {})",
                first.line
            );
        }
        self.keys.insert(
            key,
            Entry {
                value: value.to_owned(),
                line,
            },
        );
        Ok(())
    }

    fn finish(self, ini: &mut Ini, names: &mut HashMap<String, usize>) -> anyhow::Result<()> {
        match self.kind {
            Kind::User => {
                let (name, call) = self.attach_call()?;
                if let Some(first) = names.insert(name.clone(), self.line) {
                    bail!(
                        "line {}: [{}]: controller name {name} is already used by the section at line {first}",
                        self.line,
                        self.name
                    );
                }
                ini.calls.push(call);
            }
            Kind::Pci => {
                if let Some(e) = self.keys.get("Enable") {
                    // A second [VirtioPci] section may not turn off what a first enabled.
                    ini.pci_enable |= parse_bool(&e.value)
                        .with_context(|| format!("line {}: [{}]: Enable", e.line, self.name))?;
                }
            }
            Kind::Ignored => {}
        }
        Ok(())
    }

    /// The controller name and the `bdev_virtio_attach_controller` call of a
    /// `[VirtioUser<N>]` section.
    fn attach_call(&self) -> anyhow::Result<(String, Call)> {
        let sec = &self.name;
        let Some(path) = self.keys.get("Path") else {
            bail!("line {}: [{sec}]: missing Path", self.line);
        };
        let blk = match self.keys.get("Type") {
            None => false,
            Some(e) if e.value.eq_ignore_ascii_case("scsi") => false,
            Some(e) if e.value.eq_ignore_ascii_case("blk") => true,
            Some(e) => bail!(
                "line {}: [{sec}]: Type must be SCSI or Blk, not `{}`",
                e.line,
                e.value
            ),
        };
        let vq_count = match self.keys.get("Queues") {
            None => 1,
            Some(e) => parse_queues(&e.value)
                .with_context(|| format!("line {}: [{sec}]: Queues", e.line))?,
        };
        let name = match self.keys.get("Name") {
            Some(e) => e.value.clone(),
            None => sec.replacen("User", if blk { "Blk" } else { "Scsi" }, 1),
        };
        let call = Call {
            method: ATTACH.to_owned(),
            params: json!({
                "name": name,
                "trtype": "user",
                "traddr": path.value,
                "dev_type": if blk { "blk" } else { "scsi" },
                "vq_count": vq_count,
                "vq_size": VQ_SIZE,
            }),
        };
        Ok((name, call))
    }
}

/// `Queues`: a decimal integer; values below 1 become 1 (SPDK), above a `u16` are refused.
fn parse_queues(s: &str) -> anyhow::Result<u16> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        bail!("`{s}` is not a number");
    }
    if s.starts_with('-') {
        return Ok(1);
    }
    match digits.parse::<u64>() {
        Ok(0) => Ok(1),
        Ok(n) => u16::try_from(n).map_err(|_| anyhow::anyhow!("{n} is too large (at most 65535)")),
        Err(_) => bail!("`{s}` is too large (at most 65535)"),
    }
}

/// An SPDK boolean: Yes/Y/True/1 or No/N/False/0, in any case.
fn parse_bool(s: &str) -> anyhow::Result<bool> {
    const YES: [&str; 4] = ["yes", "y", "true", "1"];
    const NO: [&str; 4] = ["no", "n", "false", "0"];
    if YES.iter().any(|y| s.eq_ignore_ascii_case(y)) {
        Ok(true)
    } else if NO.iter().any(|n| s.eq_ignore_ascii_case(n)) {
        Ok(false)
    } else {
        bail!("`{s}` is not a boolean (Yes or No)")
    }
}

#[cfg(test)]
mod tests;
