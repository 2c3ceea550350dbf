use super::*;
use proptest::prelude::*;

fn encode(c: &CommandDescriptor) -> Vec<u8> {
    let mut v = vec![c.opcode, 0];
    v.extend_from_slice(&c.service_action.to_be_bytes());
    v.push(0);
    v.push(u8::from(c.ctdp) << 1 | u8::from(c.servactv));
    v.extend_from_slice(&c.cdb_length.to_be_bytes());
    if let Some(t) = c.timeouts {
        v.extend_from_slice(&[0, 0x0A, 0, t.command_specific]);
        v.extend_from_slice(&t.nominal.to_be_bytes());
        v.extend_from_slice(&t.recommended.to_be_bytes());
    }
    v
}

fn data(cs: &[CommandDescriptor]) -> Vec<u8> {
    let body: Vec<u8> = cs.iter().flat_map(encode).collect();
    let mut v = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

fn cmd(opcode: u8, sa: Option<u16>, cdb_length: u16) -> CommandDescriptor {
    CommandDescriptor {
        opcode,
        service_action: sa.unwrap_or(0),
        servactv: sa.is_some(),
        ctdp: false,
        cdb_length,
        timeouts: None,
    }
}

#[test]
fn lists_commands_and_service_actions() {
    let mut sync = cmd(0x35, None, 10);
    sync.ctdp = true;
    sync.timeouts = Some(CommandTimeouts {
        command_specific: 0,
        nominal: 30,
        recommended: 60,
    });
    let cs = [
        cmd(0x00, None, 6),
        cmd(0x28, None, 10),
        sync,
        cmd(0x88, None, 16),
        cmd(0x9E, Some(0x10), 16),
        cmd(0xA3, Some(0x0C), 12),
    ];
    let d = data(&cs);
    assert_eq!(d.len(), 4 + 5 * 8 + 20);
    let s = SupportedOpcodes::parse(&d).unwrap();
    assert_eq!(s.commands, cs);
    assert_eq!(s.command_data_length, 60);
    assert!(!s.is_truncated());
    assert_eq!(s.needed_len(), 64);
    assert!(s.supports(0x28, None));
    assert!(s.supports(0x35, None));
    assert!(s.supports(0x9E, Some(0x10)));
    assert!(s.supports(0xA3, Some(0x0C)));
    // READ CAPACITY(16) is a service action of 9Eh, not 9Eh itself.
    assert!(!s.supports(0x9E, None));
    assert!(!s.supports(0x9E, Some(0x11)));
    assert!(!s.supports(0x28, Some(0)));
    assert!(!s.supports(0x2A, None));
    assert_eq!(s.commands[2].encoded_len(), 20);
}

#[test]
fn ignores_reserved_and_other_bits() {
    // CDLP and other bits of byte 5, reserved bytes 1 and 4 set.
    let d = [0, 0, 0, 8, 0x8A, 0xFF, 0, 0, 0xFF, 0xFC, 0, 16];
    let s = SupportedOpcodes::parse(&d).unwrap();
    assert_eq!(s.commands, [cmd(0x8A, None, 16)]);
}

#[test]
fn empty_list() {
    let s = SupportedOpcodes::parse(&[0; 4]).unwrap();
    assert!(s.commands.is_empty() && !s.is_truncated());
    assert!(!s.supports(0, None));
    // Bytes past COMMAND DATA LENGTH are not descriptors.
    let s = SupportedOpcodes::parse(&[0, 0, 0, 0, 0x28, 0, 0, 0, 0, 0, 0, 10]).unwrap();
    assert!(s.commands.is_empty());
}

#[test]
fn truncated_list_keeps_whole_descriptors() {
    let mut with_t = cmd(0x2A, None, 10);
    with_t.ctdp = true;
    with_t.timeouts = Some(CommandTimeouts {
        command_specific: 1,
        nominal: 2,
        recommended: 3,
    });
    let d = data(&[cmd(0x28, None, 10), with_t, cmd(0x88, None, 16)]);
    assert_eq!(d.len(), 40);
    for (cut, n) in [(4, 0), (11, 0), (12, 1), (19, 1), (31, 1), (32, 2), (39, 2)] {
        let s = SupportedOpcodes::parse(&d[..cut]).unwrap();
        assert_eq!(s.commands.len(), n, "cut at {cut}");
        assert!(s.is_truncated());
        assert_eq!(s.needed_len(), 40);
    }
    assert!(!SupportedOpcodes::parse(&d).unwrap().is_truncated());
}

#[test]
fn malformed_data_is_an_error() {
    assert_eq!(
        SupportedOpcodes::parse(&[0, 0, 0]),
        Err(Error::Short {
            what: "supported operation codes data",
            need: 4,
            got: 3
        })
    );
    // COMMAND DATA LENGTH 12: the second descriptor ends past it.
    let mut d = data(&[cmd(0x28, None, 10), cmd(0x2A, None, 10)]);
    d[3] = 12;
    assert_eq!(
        SupportedOpcodes::parse(&d),
        Err(Error::Overrun {
            what: "command descriptor",
            offset: 12,
            len: 8,
            end: 16
        })
    );
    // CTDP set, but COMMAND DATA LENGTH leaves room for 8 bytes only.
    let d = [0, 0, 0, 8, 0x35, 0, 0, 0, 0, 0x02, 0, 10, 0, 0x0A];
    assert_eq!(
        SupportedOpcodes::parse(&d),
        Err(Error::Overrun {
            what: "command descriptor",
            offset: 4,
            len: 20,
            end: 12
        })
    );
}

fn descriptor() -> impl Strategy<Value = CommandDescriptor> {
    (
        any::<u8>(),
        any::<u16>(),
        any::<bool>(),
        any::<u16>(),
        proptest::option::of((any::<u8>(), any::<u32>(), any::<u32>())),
    )
        .prop_map(|(opcode, sa, servactv, cdb_length, t)| CommandDescriptor {
            opcode,
            service_action: sa,
            servactv,
            ctdp: t.is_some(),
            cdb_length,
            timeouts: t.map(|(c, n, r)| CommandTimeouts {
                command_specific: c,
                nominal: n,
                recommended: r,
            }),
        })
}

proptest! {
    #[test]
    fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
        if let Ok(s) = SupportedOpcodes::parse(&data) {
            let held: usize = s.commands.iter().map(CommandDescriptor::encoded_len).sum();
            prop_assert!(held <= data.len() - 4);
            for c in &s.commands {
                prop_assert_eq!(c.timeouts.is_some(), c.ctdp);
            }
            let _ = (s.needed_len(), s.is_truncated(), s.supports(0x28, None));
        }
    }

    #[test]
    fn round_trips(cs in proptest::collection::vec(descriptor(), 0..20), cut: usize) {
        let d = data(&cs);
        let s = SupportedOpcodes::parse(&d).unwrap();
        prop_assert_eq!(&s.commands, &cs);
        prop_assert!(!s.is_truncated());
        for c in &cs {
            prop_assert!(s.supports(c.opcode, c.servactv.then_some(c.service_action)));
        }
        // Cut to an allocation length: the descriptors that fit whole.
        let cut = cut % (d.len() + 1);
        let r = SupportedOpcodes::parse(&d[..cut]);
        if cut < 4 {
            let short = matches!(r, Err(Error::Short { .. }));
            prop_assert!(short);
        } else {
            let s = r.unwrap();
            let mut end = 4;
            let fit = cs.iter().take_while(|c| { end += c.encoded_len(); end <= cut }).count();
            prop_assert_eq!(&s.commands[..], &cs[..fit]);
            prop_assert_eq!(s.is_truncated(), cut < d.len());
        }
    }
}

proptest! {
    #[test]
    fn what_a_target_encodes_an_initiator_decodes(
        cmds in proptest::collection::vec(
            (any::<u8>(), any::<u16>(), any::<bool>(), any::<u16>(),
             proptest::option::of((any::<u8>(), any::<u32>(), any::<u32>()))),
            0..40,
        ),
    ) {
        let commands: Vec<CommandDescriptor> = cmds
            .into_iter()
            .map(|(opcode, service_action, servactv, cdb_length, t)| CommandDescriptor {
                opcode,
                service_action,
                servactv,
                ctdp: t.is_some(),
                cdb_length,
                timeouts: t.map(|(command_specific, nominal, recommended)| CommandTimeouts {
                    command_specific,
                    nominal,
                    recommended,
                }),
            })
            .collect();
        let data = SupportedOpcodes::encode(&commands);
        let parsed = SupportedOpcodes::parse(&data).unwrap();
        prop_assert!(!parsed.is_truncated());
        prop_assert_eq!(parsed.commands, commands);
    }
}

#[test]
fn one_command_supported_and_not() {
    // SYNCHRONIZE CACHE(10) with timeouts: CTDP, SUPPORT 011b, CDB SIZE 10.
    let usage = vec![0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0x00];
    let o = OneCommand {
        support: support::STANDARD,
        usage: usage.clone(),
        timeouts: Some(CommandTimeouts::default()),
    };
    let d = o.encode();
    assert_eq!(d[..4], [0x00, 0x83, 0x00, 0x0A]);
    assert_eq!(d[4..14], usage[..]);
    assert_eq!(d[14..], [0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(OneCommand::parse(&d).unwrap(), o);
    // Cut: the parser asks for all of it.
    assert!(matches!(
        OneCommand::parse(&d[..20]),
        Err(Error::Short {
            need: 26,
            got: 20,
            ..
        })
    ));
    assert_eq!(
        OneCommand::not_supported().encode(),
        [0x00, 0x01, 0x00, 0x00]
    );
    assert_eq!(
        OneCommand::parse(&[0x00, 0x01, 0x00, 0x00]).unwrap(),
        OneCommand::not_supported()
    );
}

proptest! {
    #[test]
    fn one_command_round_trips(
        support in 0u8..8,
        usage in proptest::collection::vec(any::<u8>(), 0..32),
        timeouts in proptest::option::of((any::<u8>(), any::<u32>(), any::<u32>())),
    ) {
        let o = OneCommand {
            support,
            usage,
            timeouts: timeouts.map(|(c, n, r)| CommandTimeouts {
                command_specific: c,
                nominal: n,
                recommended: r,
            }),
        };
        prop_assert_eq!(OneCommand::parse(&o.encode()).unwrap(), o);
    }

    #[test]
    fn one_command_parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..48)) {
        if let Ok(o) = OneCommand::parse(&data) {
            prop_assert!(4 + o.usage.len() <= data.len());
        }
    }
}
