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
