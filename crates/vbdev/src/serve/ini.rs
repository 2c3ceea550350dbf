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
mod tests {
    use super::*;

    /// The calls only.
    fn parse(text: &str) -> anyhow::Result<Vec<Call>> {
        parse_full(text).map(|ini| ini.calls)
    }

    fn attach(name: &str, path: &str, dev_type: &str, vq_count: u16) -> Call {
        Call {
            method: "bdev_virtio_attach_controller".into(),
            params: json!({
                "name": name,
                "trtype": "user",
                "traddr": path,
                "dev_type": dev_type,
                "vq_count": vq_count,
                "vq_size": 512,
            }),
        }
    }

    /// The error chain as `{:#}` prints it.
    fn err(text: &str) -> String {
        format!("{:#}", parse_full(text).expect_err("should fail"))
    }

    #[test]
    fn seed_readme_user_example_attaches_scsi() {
        let text = "[VirtioUser0]\n  Path /tmp/vhost.0\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![attach("VirtioScsi0", "/tmp/vhost.0", "scsi", 1)]
        );
    }

    #[test]
    fn seed_readme_pci_example_enables_enumeration() {
        let ini = parse_full("[VirtioPci]\n  Enable Yes\n").unwrap();
        assert!(ini.pci_enable);
        assert!(ini.calls.is_empty());
        assert!(ini.ignored_sections.is_empty());
        // With user sections: their calls, and the enumeration after them.
        let ini = parse_full("[VirtioPci]\nEnable Yes\n[VirtioUser0]\nPath /p\n").unwrap();
        assert!(ini.pci_enable);
        assert_eq!(ini.calls, vec![attach("VirtioScsi0", "/p", "scsi", 1)]);
    }

    #[test]
    fn spdk_v17_10_doc_example_with_pci_disabled() {
        let text = "\
[VirtioPci]
  # If enabled, the driver will automatically use all available Virtio-SCSI PCI
  # devices. Disabled by default.
  Enable No

[VirtioUser0]
  # Path to the Unix domain socket using vhost-user protocol.
  Path /tmp/vhost.0
  # Maximum number of request queues to use. Default value is 1.
  Queues 1
";
        let ini = parse_full(text).unwrap();
        assert_eq!(
            ini.calls,
            vec![attach("VirtioScsi0", "/tmp/vhost.0", "scsi", 1)]
        );
        assert!(ini.ignored_sections.is_empty());
    }

    #[test]
    fn spdk_test_configs_convert_like_config_converter() {
        let text = "\
[VirtioUser3]
  Path naa.Nvme0n1_blk0.0
  Type Blk
  Queues 8

[VirtioUser0]
  Path Malloc.0
  Queues 2
  Type Blk
  Name VirtioBlk0
";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                attach("VirtioBlk3", "naa.Nvme0n1_blk0.0", "blk", 8),
                attach("VirtioBlk0", "Malloc.0", "blk", 2),
            ]
        );
    }

    #[test]
    fn defaults_and_case_insensitive_type() {
        let text = "[VirtioUser12]\nPath /s\nType scsi\n[VirtioUser7]\nPath /b\nType bLK\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                attach("VirtioScsi12", "/s", "scsi", 1),
                attach("VirtioBlk7", "/b", "blk", 1),
            ]
        );
    }

    #[test]
    fn queues_below_one_become_one() {
        for q in ["0", "-3", "+0"] {
            let text = format!("[VirtioUser0]\nPath /p\nQueues {q}\n");
            assert_eq!(
                parse(&text).unwrap(),
                vec![attach("VirtioScsi0", "/p", "scsi", 1)],
                "Queues {q}"
            );
        }
        let text = "[VirtioUser0]\nPath /p\nQueues +4\n";
        assert_eq!(parse(text).unwrap()[0].params["vq_count"], 4);
    }

    #[test]
    fn queues_not_a_number_fails() {
        assert_eq!(
            err("[VirtioUser0]\nPath /p\nQueues two\n"),
            "line 3: [VirtioUser0]: Queues: `two` is not a number"
        );
        assert_eq!(
            err("[VirtioUser0]\nPath /p\nQueues 2 3\n"),
            "line 3: [VirtioUser0]: Queues: `2 3` is not a number"
        );
        assert_eq!(
            err("[VirtioUser0]\nPath /p\nQueues 70000\n"),
            "line 3: [VirtioUser0]: Queues: 70000 is too large (at most 65535)"
        );
        assert_eq!(
            err("[VirtioUser0]\nPath /p\nQueues 99999999999999999999999\n"),
            "line 3: [VirtioUser0]: Queues: `99999999999999999999999` is too large (at most 65535)"
        );
    }

    #[test]
    fn missing_path_names_the_section_line() {
        assert_eq!(
            err("# c\n\n[VirtioUser0]\n  Queues 2\n"),
            "line 3: [VirtioUser0]: missing Path"
        );
        // Also when the section is not the last one.
        assert_eq!(
            err("[VirtioUser0]\n[VirtioUser1]\nPath /p\n"),
            "line 1: [VirtioUser0]: missing Path"
        );
    }

    #[test]
    fn non_numeric_suffix_fails() {
        for name in ["VirtioUserX", "VirtioUser", "VirtioUser1x", "VirtioUser-1"] {
            let e = err(&format!("[Global]\n[{name}]\nPath /p\n"));
            assert_eq!(
                e,
                format!("line 2: Section '{name}' has non-numeric suffix.")
            );
        }
        assert_eq!(
            err("[VirtioUser99999999999]\nPath /p\n"),
            "line 1: Section 'VirtioUser99999999999': suffix 99999999999 is too large"
        );
    }

    #[test]
    fn bad_type_fails() {
        assert_eq!(
            err("[VirtioUser0]\nPath /p\nType nvme\n"),
            "line 3: [VirtioUser0]: Type must be SCSI or Blk, not `nvme`"
        );
    }

    #[test]
    fn duplicate_key_fails() {
        assert_eq!(
            err("[VirtioUser0]\nPath /p\n  Path /q\n"),
            "line 3: [VirtioUser0]: duplicate key `Path` (first at line 2)"
        );
        assert_eq!(
            err("[VirtioPci]\nEnable No\nEnable No\n"),
            "line 3: [VirtioPci]: duplicate key `Enable` (first at line 2)"
        );
    }

    #[test]
    fn unknown_key_fails() {
        assert_eq!(
            err("[VirtioUser0]\nPath /p\nQueueSize 256\n"),
            "line 3: [VirtioUser0]: unknown key `QueueSize` (expected one of: Path, Type, Queues, Name)"
        );
        // Keys are case-sensitive, as in SPDK.
        assert_eq!(
            err("[VirtioUser0]\npath /p\n"),
            "line 2: [VirtioUser0]: unknown key `path` (expected one of: Path, Type, Queues, Name)"
        );
        assert_eq!(
            err("[VirtioPci]\nEnabled No\n"),
            "line 2: [VirtioPci]: unknown key `Enabled` (expected one of: Enable)"
        );
    }

    #[test]
    fn key_without_value_fails() {
        assert_eq!(
            err("[VirtioUser0]\nPath   # none\n"),
            "line 2: [VirtioUser0]: `Path` has no value"
        );
    }

    #[test]
    fn duplicate_controller_name_fails() {
        assert_eq!(
            err("[VirtioUser0]\nPath /a\n\n[VirtioUser1]\nPath /b\nName VirtioScsi0\n"),
            "line 4: [VirtioUser1]: controller name VirtioScsi0 is already used by the section at line 1"
        );
    }

    #[test]
    fn pci_enable_values() {
        for v in ["No", "no", "N", "False", "FALSE", "0"] {
            let ini = parse_full(&format!("[VirtioPci]\n  Enable {v}\n")).unwrap();
            assert_eq!(ini, Ini::default(), "Enable {v}");
        }
        for v in ["Yes", "yes", "Y", "True", "true", "1"] {
            let ini = parse_full(&format!("[VirtioPci]\n  Enable {v}\n")).unwrap();
            assert!(ini.pci_enable, "Enable {v}");
        }
        assert_eq!(
            err("[VirtioPci]\nEnable maybe\n"),
            "line 2: [VirtioPci]: Enable: `maybe` is not a boolean (Yes or No)"
        );
        // No Enable key: disabled, as in SPDK.
        assert_eq!(parse_full("[VirtioPci]\n").unwrap(), Ini::default());
    }

    #[test]
    fn comments_blank_lines_and_indentation() {
        let text = "\
# whole-line comment
   # indented comment

\t[VirtioUser0]   # trailing comment on a header
\tPath /tmp/a#b   # the first # is part of the path
    Name  my ctrl  # values keep inner spaces
\r
  Type Blk#not-a-comment-so-a-bad-type
";
        let e = err(text);
        assert_eq!(
            e,
            "line 8: [VirtioUser0]: Type must be SCSI or Blk, not `Blk#not-a-comment-so-a-bad-type`"
        );
        let text = text.replace("Blk#not-a-comment-so-a-bad-type", "Blk\t#ok");
        assert_eq!(
            parse(&text).unwrap(),
            vec![attach("my ctrl", "/tmp/a#b", "blk", 1)]
        );
    }

    #[test]
    fn crlf_line_endings() {
        let text = "[VirtioUser0]\r\n  Path /p\r\n  Queues 3\r\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![attach("VirtioScsi0", "/p", "scsi", 3)]
        );
    }

    #[test]
    fn other_sections_are_ignored_and_listed() {
        let text = "\
[Global]
  ReactorMask 0x3
[Malloc]
  NumberOfLuns 2
  LunSizeInMB 64
[VirtioUser0]
  Path /p
[Nvme]
  TransportID \"trtype:PCIe traddr:0000:00:04.0\" Nvme0
  TransportID \"trtype:PCIe traddr:0000:00:05.0\" Nvme1
[virtiouser1]
  anything goes
";
        let ini = parse_full(text).unwrap();
        assert_eq!(ini.calls, vec![attach("VirtioScsi0", "/p", "scsi", 1)]);
        assert_eq!(
            ini.ignored_sections,
            ["Global", "Malloc", "Nvme", "virtiouser1"]
        );
    }

    #[test]
    fn empty_text_is_no_calls() {
        assert_eq!(parse_full("").unwrap(), Ini::default());
        assert_eq!(parse_full("\n# only comments\n\n").unwrap(), Ini::default());
    }

    #[test]
    fn malformed_lines_name_their_line() {
        assert_eq!(
            err("\n[Global\n"),
            "line 2: malformed section header (expected `[Name]`)"
        );
        assert_eq!(
            err("[]\n"),
            "line 1: malformed section header (expected `[Name]`)"
        );
        assert_eq!(
            err("[Global] junk\n"),
            "line 1: malformed section header (expected `[Name]`)"
        );
        assert_eq!(
            err("[a[b]]\n"),
            "line 1: malformed section header (expected `[Name]`)"
        );
        assert_eq!(
            err("# hello\nPath /p\n"),
            "line 2: `Path` is outside any section (expected `[Name]` first)"
        );
    }

    /// Arbitrary text never panics (proptest is not a dev-dependency of this crate, so a
    /// seeded generator over INI-shaped tokens and arbitrary characters stands in for it).
    #[test]
    fn arbitrary_text_never_panics() {
        const TOKENS: &[&str] = &[
            "[",
            "]",
            "[VirtioUser",
            "[VirtioPci]",
            "[Global]",
            "0",
            "1",
            "99999999999999999999",
            "-",
            "+",
            "\n",
            "\r\n",
            " ",
            "\t",
            "#",
            "Path",
            "Type",
            "Queues",
            "Name",
            "Enable",
            "Blk",
            "SCSI",
            "Yes",
            "No",
            "/tmp/x",
            "User",
            "é",
            "\u{0}",
            "\u{2028}",
            "\u{a0}",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..20_000 {
            let len = next() % 40;
            let mut text = String::new();
            for _ in 0..len {
                let r = next();
                if r % 5 == 0 {
                    text.push(char::from_u32((r >> 8) as u32 % 0x11_0000).unwrap_or('?'));
                } else {
                    text.push_str(TOKENS[(r >> 8) as usize % TOKENS.len()]);
                }
            }
            let _ = parse_full(&text);
        }
    }
}
