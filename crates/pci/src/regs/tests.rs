use super::*;
use crate::fake::{self, ConfigSpaceBuilder, FakePciConfig, FakePciDevice};
use proptest::prelude::*;
use vbdev_virtio::device::{features as vfeat, status};

const B4: u8 = fake::BAR;

/// A minimal valid modern layout in BAR 4 with `device` as PCI device ID.
fn minimal(device: u16) -> ConfigSpaceBuilder {
    ConfigSpaceBuilder::new(device)
        .virtio_cap(CfgType::COMMON, B4, 0, 0x38)
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
}

fn bar4() -> BarIndex {
    BarIndex::new(4).unwrap()
}

fn blk() -> (FakePciDevice, VirtioPciLayout) {
    blk_with(FakePciConfig::blk(2048))
}

fn blk_with(cfg: FakePciConfig) -> (FakePciDevice, VirtioPciLayout) {
    let dev = FakePciDevice::new(cfg);
    let layout = parse_config_space(&dev.config_space()).unwrap();
    (dev, layout)
}

fn addrs(size: u16) -> RingAddrs {
    RingAddrs {
        size,
        desc: Iova(0x1_2345_6000),
        avail: Iova(0x1_2345_7000),
        used: Iova(0x1_2345_8000),
    }
}

// ---- identity and capability parsing (§4.1.2, §4.1.4) ----

#[test]
fn qemu_like_blk_layout_parses() {
    let (dev, l) = blk();
    assert_eq!(l.ids.vendor, 0x1af4);
    assert_eq!(l.ids.device, DEVICE_ID_BLK);
    assert_eq!(l.virtio_id, VirtioId::BLOCK);
    assert!(!l.transitional);
    assert_eq!(l.common.bar, bar4());
    assert_eq!(l.common.offset, fake::COMMON_OFFSET);
    assert_eq!(l.common.length, common_cfg::LEN as u32);
    assert_eq!(l.notify.cap.offset, fake::NOTIFY_OFFSET);
    assert_eq!(l.notify.multiplier, 4);
    assert_eq!(l.isr.unwrap().offset, fake::ISR_OFFSET);
    assert_eq!(l.device.offset, fake::DEVICE_OFFSET);
    assert_eq!(l.device.length, 60);
    assert_eq!(l.pci_cfg.unwrap().cfg_type, CfgType::PCI_CFG);
    let msix = l.msix.unwrap();
    assert_eq!(msix.table_size, 3);
    assert_eq!(msix.table_bar.get(), fake::MSIX_BAR);
    assert_eq!(
        (msix.pba_bar.get(), msix.pba_offset),
        (fake::MSIX_BAR, 0x800)
    );
    l.check_bars(|b| (b == bar4()).then_some(fake::BAR_LEN))
        .unwrap();
    drop(dev);
}

#[test]
fn scsi_and_pcie_config_spaces_parse() {
    let l = parse_config_space(&minimal(DEVICE_ID_SCSI).extended().build()).unwrap();
    assert_eq!(l.virtio_id, VirtioId::SCSI);
    assert_eq!(l.isr, None);
    assert_eq!(l.msix, None);
}

#[test]
fn transitional_id_with_modern_caps_is_accepted() {
    let l = parse_config_space(&minimal(TRANSITIONAL_DEVICE_ID_BLK).build()).unwrap();
    assert!(l.transitional);
    assert_eq!(l.virtio_id, VirtioId::BLOCK);
    let l = parse_config_space(&minimal(TRANSITIONAL_DEVICE_ID_SCSI).build()).unwrap();
    assert_eq!(l.virtio_id, VirtioId::SCSI);
}

#[test]
fn transitional_id_without_modern_caps_is_legacy_only() {
    // §4.1.5.1.1: no virtio capabilities means a legacy device; fail, naming it.
    let cfg = ConfigSpaceBuilder::new(TRANSITIONAL_DEVICE_ID_SCSI).build();
    let e = parse_config_space(&cfg).unwrap_err();
    assert!(matches!(e, PciError::LegacyOnly { device: 0x1004 }), "{e}");
    assert!(e.to_string().contains("legacy interface is not supported"));
    // Other capabilities (MSI-X) do not make it modern.
    let cfg = ConfigSpaceBuilder::new(TRANSITIONAL_DEVICE_ID_BLK)
        .msix_cap(2, 1, 0, 1, 0x800)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::LegacyOnly { .. })
    ));
}

#[test]
fn modern_id_without_caps_names_the_missing_structure() {
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK).build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::MissingCap {
            cfg_type: CfgType::COMMON
        })
    ));
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, B4, 0, 0x38)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
        .build();
    let e = parse_config_space(&cfg).unwrap_err();
    assert!(
        matches!(
            e,
            PciError::MissingCap {
                cfg_type: CfgType::NOTIFY
            }
        ),
        "{e}"
    );
    assert_eq!(e.to_string(), "no usable notify capability");
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, B4, 0, 0x38)
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::MissingCap {
            cfg_type: CfgType::DEVICE
        })
    ));
}

#[test]
fn foreign_functions_are_not_virtio() {
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[0] = 0x86;
    cfg[1] = 0x80;
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::NotVirtio {
            vendor: 0x8086,
            device: 0x1042
        })
    ));
    for device in [0x0fff, 0x1080, 0x1006, 0x103f] {
        let cfg = minimal(device).build();
        assert!(
            matches!(parse_config_space(&cfg), Err(PciError::NotVirtio { .. })),
            "{device:#x}"
        );
    }
}

#[test]
fn bridges_are_not_endpoints() {
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[header::HEADER_TYPE] = 0x81;
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::NotAnEndpoint { header_type: 1 })
    ));
    // The multi-function bit alone is fine.
    cfg[header::HEADER_TYPE] = 0x80;
    parse_config_space(&cfg).unwrap();
}

#[test]
fn config_space_shorter_than_the_header_is_refused() {
    assert!(matches!(
        parse_config_space(&[0u8; 63]),
        Err(PciError::ConfigSpaceTooShort { len: 63 })
    ));
    assert!(matches!(
        parse_config_space(&[]),
        Err(PciError::ConfigSpaceTooShort { len: 0 })
    ));
}

#[test]
fn capability_pointers_into_the_header_are_refused() {
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[header::CAP_PTR] = 0x20;
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapPointerOutOfRange {
            from: 0x34,
            ptr: 0x20
        })
    ));
    // A later link pointing back into the header.
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[0x41] = 0x3c;
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapPointerOutOfRange {
            from: 0x41,
            ptr: 0x3c
        })
    ));
}

#[test]
fn capability_pointers_past_the_bytes_given_are_refused() {
    // Only the 64-byte header was read, but it points at 0x40.
    let cfg = minimal(DEVICE_ID_BLK).build();
    let e = parse_config_space(&cfg[..64]).unwrap_err();
    assert!(
        matches!(
            e,
            PciError::CapTruncated {
                at: 0x40,
                need: 2,
                avail: 0
            }
        ),
        "{e}"
    );
}

#[test]
fn capability_loops_are_detected() {
    // The last capability points back at the first.
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    let mut at = usize::from(cfg[header::CAP_PTR]);
    while cfg[at + 1] != 0 {
        at = usize::from(cfg[at + 1]);
    }
    cfg[at + 1] = cfg[header::CAP_PTR];
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapLoop { ptr: 0x40 })
    ));
    // A capability that points at itself, with the reserved low bits set.
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[0x41] = 0x43;
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapLoop { ptr: 0x40 })
    ));
}

#[test]
fn reserved_pointer_bits_are_masked() {
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[header::CAP_PTR] |= 3;
    let l = parse_config_space(&cfg).unwrap();
    assert_eq!(l.common.at, 0x40);
}

#[test]
fn without_the_capability_list_bit_the_list_is_not_walked() {
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[header::STATUS] &= !(header::STATUS_CAP_LIST as u8);
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::MissingCap { .. })
    ));
}

#[test]
fn capabilities_running_past_the_capability_space_are_truncated() {
    // A virtio capability at 0xf8 cannot hold its 16 bytes below 0x100.
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[0x41] = 0xf8; // common -> 0xf8
    cfg[0xf8] = header::CAP_ID_VENDOR;
    cfg[0xf9] = 0;
    cfg[0xfa] = 16;
    cfg[0xfb] = CfgType::DEVICE.0;
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapTruncated {
            at: 0xf8,
            need: 16,
            avail: 8
        })
    ));
    // The last dword holds cap_len and cfg_type but not the structure.
    cfg[0x41] = 0xfc;
    cfg[0xfc] = header::CAP_ID_VENDOR;
    cfg[0xfd] = 0;
    cfg[0xfe] = 16;
    cfg[0xff] = CfgType::COMMON.0;
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapTruncated {
            at: 0xfc,
            need: 16,
            avail: 4
        })
    ));
    // A short read of the space (254 bytes) leaves no room for cap_len and cfg_type.
    assert!(matches!(
        parse_config_space(&cfg[..254]),
        Err(PciError::CapTruncated {
            at: 0xfc,
            need: 4,
            avail: 2
        })
    ));
    // MSI-X needs 12 bytes.
    cfg[0xfc] = header::CAP_ID_MSIX;
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapTruncated {
            at: 0xfc,
            need: 12,
            avail: 4
        })
    ));
}

#[test]
fn cap_len_shorter_than_the_structure_is_refused() {
    let mut cfg = minimal(DEVICE_ID_BLK).build();
    cfg[0x42] = 12; // common's cap_len
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapTooShort {
            at: 0x40,
            cfg_type: CfgType::COMMON,
            cap_len: 12,
            need: 16
        })
    ));
    // A notify capability without its multiplier.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::NOTIFY, B4, 0x3000, 0x1000)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapTooShort {
            cfg_type: CfgType::NOTIFY,
            cap_len: 16,
            need: 20,
            ..
        })
    ));
}

#[test]
fn cap_len_larger_than_the_structure_is_accepted() {
    // §4.1.4.1: the driver MUST accept a larger cap_len.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap_with(CfgType::COMMON, B4, 0, 0x38, &[0xaa; 8])
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
        .build();
    assert_eq!(cfg[0x42], 24);
    parse_config_space(&cfg).unwrap();
}

#[test]
fn reserved_bars_and_types_are_ignored() {
    // §4.1.4.1: MUST ignore a reserved cfg_type or bar; the next instance is used.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType(7), B4, 0x100, 0x38)
        .virtio_cap(CfgType::SHARED_MEMORY, B4, 0x100, 0x38)
        .virtio_cap(CfgType::COMMON, 6, 0x100, 0x38)
        .virtio_cap(CfgType::COMMON, B4, 0, 0x38)
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
        .build();
    let l = parse_config_space(&cfg).unwrap();
    assert_eq!((l.common.bar, l.common.offset), (bar4(), 0));
    // When every instance has a reserved BAR, the structure is missing.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, 7, 0, 0x38)
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::MissingCap {
            cfg_type: CfgType::COMMON
        })
    ));
}

#[test]
fn first_instance_of_each_structure_wins() {
    let cfg = minimal(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, 2, 0x800, 0x3c)
        .notify_cap(2, 0x1000, 0x100, 0)
        .build();
    let l = parse_config_space(&cfg).unwrap();
    assert_eq!(l.common.bar, bar4());
    assert_eq!(l.notify.multiplier, 4);
}

#[test]
fn ranges_overflowing_32_bits_are_refused() {
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::DEVICE, B4, 0xffff_f000, 0x2000)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapRangeOverflow {
            cfg_type: CfgType::DEVICE,
            offset: 0xffff_f000,
            length: 0x2000
        })
    ));
    // Exactly 2^32 - 1 is fine as far as the parser goes.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, B4, 0xffff_ff00, 0xff)
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
        .build();
    let l = parse_config_space(&cfg).unwrap();
    assert_eq!(l.common.end(), u64::from(u32::MAX));
}

#[test]
fn misaligned_or_short_structures_are_refused() {
    // §4.1.4.3.1: common offset 4-byte aligned.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, B4, 2, 0x38)
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapMisaligned {
            cfg_type: CfgType::COMMON,
            offset: 2,
            align: 4
        })
    ));
    // The registers up to queue_device must be there.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, B4, 0, 0x30)
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapTooSmall {
            cfg_type: CfgType::COMMON,
            length: 0x30,
            need: 0x38
        })
    ));
    // §4.1.4.4.1: notify offset 2-byte aligned, length at least 2.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, B4, 0, 0x38)
        .notify_cap(B4, 0x3001, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapMisaligned {
            cfg_type: CfgType::NOTIFY,
            align: 2,
            ..
        })
    ));
    // §4.1.4.6.1: device config 4-byte aligned.
    let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
        .virtio_cap(CfgType::COMMON, B4, 0, 0x38)
        .notify_cap(B4, 0x3000, 0x1000, 4)
        .virtio_cap(CfgType::DEVICE, B4, 0x2002, 0x40)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapMisaligned {
            cfg_type: CfgType::DEVICE,
            align: 4,
            ..
        })
    ));
    // §4.1.4.5: the ISR structure holds at least its byte.
    let cfg = minimal(DEVICE_ID_BLK)
        .virtio_cap(CfgType::ISR, B4, 0x1000, 0)
        .build();
    assert!(matches!(
        parse_config_space(&cfg),
        Err(PciError::CapTooSmall {
            cfg_type: CfgType::ISR,
            length: 0,
            need: 1
        })
    ));
}

#[test]
fn notify_multiplier_must_be_zero_or_an_even_power_of_two() {
    // §4.1.4.4.1.
    for (m, ok) in [
        (0, true),
        (1, false),
        (2, true),
        (3, false),
        (4, true),
        (6, false),
        (4096, true),
    ] {
        let cfg = ConfigSpaceBuilder::new(DEVICE_ID_BLK)
            .virtio_cap(CfgType::COMMON, B4, 0, 0x38)
            .notify_cap(B4, 0x3000, 0x1000, m)
            .virtio_cap(CfgType::DEVICE, B4, 0x2000, 0x40)
            .build();
        let r = parse_config_space(&cfg);
        assert_eq!(r.is_ok(), ok, "multiplier {m}: {r:?}");
        if !ok {
            assert!(
                matches!(r, Err(PciError::BadNotifyMultiplier { multiplier }) if multiplier == m)
            );
        }
    }
}

#[test]
fn msix_with_a_reserved_bir_is_ignored() {
    let cfg = minimal(DEVICE_ID_BLK).msix_cap(4, 6, 0, 1, 0x800).build();
    assert_eq!(parse_config_space(&cfg).unwrap().msix, None);
}

#[test]
fn structures_beyond_their_bar_are_refused() {
    let (_, l) = blk();
    let e = l.check_bars(|_| Some(0x3800)).unwrap_err();
    assert!(
        matches!(
            e,
            PciError::CapBeyondBar {
                cfg_type: CfgType::NOTIFY,
                end: 0x4000,
                bar_len: 0x3800,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        l.check_bars(|_| None),
        Err(PciError::BarMissing {
            cfg_type: CfgType::COMMON,
            ..
        })
    ));
}

#[test]
fn bar_indexes_stop_at_five() {
    assert_eq!(BarIndex::new(5).map(BarIndex::get), Some(5));
    assert_eq!(BarIndex::new(6), None);
    assert_eq!(bar4().to_string(), "BAR4");
    assert_eq!(CfgType(42).to_string(), "type 42");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_config_space(&bytes);
    }

    #[test]
    fn arbitrary_capability_lists_never_panic_and_keep_invariants(
        pokes in proptest::collection::vec((0x34usize..0x100, any::<u8>()), 0..64),
        extended in any::<bool>(),
    ) {
        // Start from a valid QEMU-like space so the walk gets deep, then corrupt it.
        let mut cfg = FakePciDevice::new(FakePciConfig::blk(8)).config_space();
        if extended {
            cfg.resize(4096, 0);
        }
        for (at, v) in pokes {
            cfg[at] = v;
        }
        if let Ok(l) = parse_config_space(&cfg) {
            for cap in l.used_caps() {
                prop_assert!(cap.bar.get() <= 5);
                prop_assert!(u64::from(cap.offset) + u64::from(cap.length) <= u64::from(u32::MAX));
                prop_assert!(usize::from(cap.at) >= header::LEN);
            }
            prop_assert_eq!(l.common.offset % 4, 0);
            prop_assert!(l.common.length >= COMMON_CFG_MIN_LEN);
            prop_assert_eq!(l.notify.cap.offset % 2, 0);
            prop_assert_eq!(l.device.offset % 4, 0);
            prop_assert!(l.notify.multiplier == 0 || l.notify.multiplier % 2 == 0);
        }
    }
}

// ---- common configuration against the fake device (§4.1.4.3) ----

#[test]
fn common_cfg_refuses_other_or_short_structures() {
    let (dev, l) = blk();
    assert!(matches!(
        CommonCfg::new(&dev, &l.device),
        Err(PciError::CapTooSmall {
            cfg_type: CfgType::DEVICE,
            ..
        })
    ));
    let short = VirtioCap {
        length: 0x30,
        ..l.common
    };
    assert!(matches!(
        CommonCfg::new(&dev, &short),
        Err(PciError::CapTooSmall {
            length: 0x30,
            need: 0x38,
            ..
        })
    ));
    let c = CommonCfg::new(&dev, &l.common).unwrap();
    assert_eq!(c.len(), 0x3c);
    assert!(!c.is_empty());
}

#[test]
fn features_go_through_the_select_registers_in_halves() {
    let (dev, l) = blk();
    let offered = FakePciConfig::blk(0).features;
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    assert_eq!(c.device_features().unwrap(), offered);
    let want = vfeat::VERSION_1 | vfeat::RING_EVENT_IDX;
    c.set_driver_features(want).unwrap();
    assert_eq!(dev.driver_features(), want);
    assert_eq!(c.driver_features().unwrap(), want);
    let writes = dev.take_common_writes();
    // device select 0, 1; driver select 0, value, select 1, value; driver select 0, 1.
    use common_cfg as cc;
    assert_eq!(
        writes,
        vec![
            (cc::DEVICE_FEATURE_SELECT, 4),
            (cc::DEVICE_FEATURE_SELECT, 4),
            (cc::DRIVER_FEATURE_SELECT, 4),
            (cc::DRIVER_FEATURE, 4),
            (cc::DRIVER_FEATURE_SELECT, 4),
            (cc::DRIVER_FEATURE, 4),
            (cc::DRIVER_FEATURE_SELECT, 4),
            (cc::DRIVER_FEATURE_SELECT, 4),
        ]
    );
}

#[test]
fn status_handshake_keeps_features_ok_for_an_offered_subset() {
    // §3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK read back, DRIVER_OK.
    let (dev, l) = blk();
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    c.reset(Duration::from_secs(1)).unwrap();
    c.set_device_status(status::ACKNOWLEDGE).unwrap();
    c.set_device_status(status::ACKNOWLEDGE | status::DRIVER)
        .unwrap();
    let offered = c.device_features().unwrap();
    c.set_driver_features(offered & (vfeat::VERSION_1 | vbdev_virtio::blk::features::MQ))
        .unwrap();
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    c.set_device_status(s).unwrap();
    assert_eq!(c.device_status().unwrap(), s);
    c.set_device_status(s | status::DRIVER_OK).unwrap();
    assert_eq!(c.device_status().unwrap(), s | status::DRIVER_OK);
    assert_eq!(dev.status(), s | status::DRIVER_OK);
}

#[test]
fn features_ok_is_not_kept_for_features_the_device_refuses() {
    let handshake = |cfg: FakePciConfig, driver: u64| {
        let (dev, l) = blk_with(cfg);
        let mut c = CommonCfg::new(&dev, &l.common).unwrap();
        c.set_device_status(status::ACKNOWLEDGE | status::DRIVER)
            .unwrap();
        c.set_driver_features(driver).unwrap();
        c.set_device_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)
            .unwrap();
        c.device_status().unwrap() & status::FEATURES_OK != 0
    };
    let blk = FakePciConfig::blk(0);
    assert!(handshake(blk.clone(), vfeat::VERSION_1));
    // A bit the device does not offer.
    assert!(!handshake(
        blk.clone(),
        vfeat::VERSION_1 | vfeat::RING_PACKED
    ));
    // No VERSION_1.
    assert!(!handshake(blk.clone(), vfeat::RING_EVENT_IDX));
    // ACCESS_PLATFORM offered (iommu_platform=on) but not accepted: research pitfall 3.
    let ap = transport_features::ACCESS_PLATFORM;
    let iommu = FakePciConfig {
        features: blk.features | ap,
        ..blk
    };
    assert!(!handshake(iommu.clone(), vfeat::VERSION_1));
    assert!(handshake(iommu, vfeat::VERSION_1 | ap));
}

#[test]
fn reset_waits_until_status_reads_zero() {
    // §4.1.4.3.2: the driver waits for 0 before reinitialising.
    let (dev, l) = blk_with(FakePciConfig {
        reset_latency: 100,
        ..FakePciConfig::blk(0)
    });
    let c = CommonCfg::new(&dev, &l.common).unwrap();
    c.set_device_status(status::ACKNOWLEDGE | status::DRIVER)
        .unwrap();
    c.reset(Duration::from_secs(5)).unwrap();
    assert_eq!(c.device_status().unwrap(), 0);
}

#[test]
fn reset_that_never_completes_times_out() {
    let (dev, l) = blk_with(FakePciConfig {
        reset_latency: u32::MAX,
        ..FakePciConfig::blk(0)
    });
    let c = CommonCfg::new(&dev, &l.common).unwrap();
    c.set_device_status(status::ACKNOWLEDGE).unwrap();
    let e = c.reset(Duration::from_millis(20)).unwrap_err();
    assert!(
        matches!(e, PciError::ResetTimeout { status: status::ACKNOWLEDGE, waited_ms } if waited_ms >= 20),
        "{e}"
    );
}

#[test]
fn a_removed_device_reads_as_gone() {
    let (dev, l) = blk();
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    c.set_device_status(status::ACKNOWLEDGE).unwrap();
    dev.remove();
    assert!(matches!(c.device_status(), Err(PciError::DeviceGone)));
    assert!(matches!(
        c.reset(Duration::from_secs(1)),
        Err(PciError::DeviceGone)
    ));
    assert_eq!(c.device_features().unwrap(), u64::MAX);
}

#[test]
fn queue_setup_programs_the_areas_and_enables() {
    let (dev, l) = blk();
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    assert_eq!(c.num_queues().unwrap(), 2);
    let a = addrs(256);
    dev.take_common_writes();
    let setup = c.queue(1).unwrap().configure(&a, NO_VECTOR).unwrap();
    assert_eq!(
        setup,
        QueueSetup {
            index: 1,
            size: 256,
            notify_off: 1,
            msix_vector: NO_VECTOR
        }
    );
    let q = dev.queue(1);
    assert!(q.enabled);
    assert_eq!(
        (q.desc, q.driver, q.device),
        (a.desc.0, a.avail.0, a.used.0)
    );
    assert_eq!(q.size, 256);
    assert!(!dev.queue(0).enabled);
    // §4.1.3: 64-bit fields as two 32-bit writes, low half first; queue_enable last.
    use common_cfg as cc;
    let writes = dev.take_common_writes();
    let pos = |w| writes.iter().position(|&x| x == w).unwrap();
    assert!(pos((cc::QUEUE_DESC, 4)) < pos((cc::QUEUE_DESC + 4, 4)));
    assert!(pos((cc::QUEUE_DRIVER, 4)) < pos((cc::QUEUE_DRIVER + 4, 4)));
    assert!(pos((cc::QUEUE_DEVICE, 4)) < pos((cc::QUEUE_DEVICE + 4, 4)));
    assert_eq!(writes.last(), Some(&(cc::QUEUE_ENABLE, 2)));
    assert_eq!(writes.first(), Some(&(cc::QUEUE_SELECT, 2)));
    // The registers read back.
    let r = c.queue(1).unwrap();
    assert_eq!(r.index(), 1);
    assert_eq!(
        (r.desc().unwrap(), r.driver().unwrap(), r.device().unwrap()),
        (a.desc, a.avail, a.used)
    );
    assert!(r.enabled().unwrap());
    assert_eq!(r.msix_vector().unwrap(), NO_VECTOR);
}

#[test]
fn smaller_queues_are_written_and_larger_ones_refused() {
    let (dev, l) = blk();
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    let s = c
        .queue(0)
        .unwrap()
        .configure(&addrs(64), NO_VECTOR)
        .unwrap();
    assert_eq!(s.size, 64);
    assert_eq!(dev.queue(0).size, 64);
    assert!(matches!(
        c.queue(1).unwrap().configure(&addrs(512), NO_VECTOR),
        Err(PciError::QueueTooLarge {
            index: 1,
            size: 512,
            max: 256
        })
    ));
    assert!(matches!(
        c.queue(1).unwrap().configure(&addrs(100), NO_VECTOR),
        Err(PciError::InvalidQueueSize { size: 100 })
    ));
    assert!(matches!(
        c.queue(1).unwrap().set_size(0),
        Err(PciError::InvalidQueueSize { size: 0 })
    ));
    assert!(!dev.queue(1).enabled);
}

#[test]
fn queues_beyond_num_queues_or_unavailable_are_refused() {
    let (dev, l) = blk();
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    assert!(matches!(
        c.queue(2),
        Err(PciError::NoSuchQueue {
            index: 2,
            num_queues: 2
        })
    ));
    dev.set_queue_unavailable(1);
    assert!(matches!(
        c.queue(1).unwrap().configure(&addrs(8), NO_VECTOR),
        Err(PciError::QueueUnavailable { index: 1 })
    ));
}

#[test]
fn an_enabled_queue_is_not_reconfigured() {
    let (dev, l) = blk();
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    c.queue(0).unwrap().configure(&addrs(8), NO_VECTOR).unwrap();
    assert!(matches!(
        c.queue(0).unwrap().configure(&addrs(8), NO_VECTOR),
        Err(PciError::QueueAlreadyEnabled { index: 0 })
    ));
    // A device reset disables it again (§4.1.4.3.1).
    c.reset(Duration::from_secs(1)).unwrap();
    assert!(!dev.queue(0).enabled);
    c.queue(0).unwrap().configure(&addrs(8), NO_VECTOR).unwrap();
}

#[test]
fn msix_vectors_are_read_back() {
    // §4.1.5.1.2: the driver MUST verify the mapping; NO_VECTOR means refused.
    let (dev, l) = blk();
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    let s = c.queue(0).unwrap().configure(&addrs(8), 1).unwrap();
    assert_eq!(s.msix_vector, 1);
    assert_eq!(dev.queue(0).msix_vector, 1);
    assert!(matches!(
        c.queue(1).unwrap().configure(&addrs(8), 3),
        Err(PciError::MsixVectorRejected {
            index: 1,
            vector: 3,
            read: NO_VECTOR
        })
    ));
    assert!(!dev.queue(1).enabled);
    c.set_config_msix_vector(2).unwrap();
    assert_eq!(c.config_msix_vector().unwrap(), 2);
    assert!(matches!(
        c.set_config_msix_vector(7),
        Err(PciError::MsixVectorRejected {
            index: u16::MAX,
            vector: 7,
            ..
        })
    ));
}

#[test]
fn doorbell_is_notify_offset_times_multiplier() {
    // §4.1.4.4: cap.offset + queue_notify_off * notify_off_multiplier; §4.1.5.2: the
    // 16-bit queue index.
    let (dev, l) = blk();
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    for i in 0..2 {
        let s = c.queue(i).unwrap().configure(&addrs(8), NO_VECTOR).unwrap();
        let bell = l.notify.doorbell(i, s.notify_off, None).unwrap();
        assert_eq!(bell.bar, bar4());
        assert_eq!(
            bell.offset,
            u64::from(fake::NOTIFY_OFFSET) + u64::from(i) * 4
        );
        assert_eq!(bell.value, i);
        bell.ring(&dev).unwrap();
    }
    assert_eq!(dev.take_doorbells(), vec![(0, 0), (4, 1)]);
    // With VIRTIO_F_NOTIF_CONFIG_DATA the device's value replaces the index.
    let bell = l.notify.doorbell(1, 1, Some(0xbeef)).unwrap();
    bell.ring(&dev).unwrap();
    assert_eq!(dev.take_doorbells(), vec![(4, 0xbeef)]);
}

#[test]
fn a_zero_multiplier_shares_one_doorbell() {
    let (_, l) = blk_with(FakePciConfig {
        notify_multiplier: 0,
        ..FakePciConfig::blk(0)
    });
    let a = l.notify.doorbell(0, 0, None).unwrap();
    let b = l.notify.doorbell(1, 1, None).unwrap();
    assert_eq!(a.offset, b.offset);
    assert_eq!((a.value, b.value), (0, 1));
}

#[test]
fn doorbells_outside_the_notify_structure_are_refused() {
    // §4.1.4.4.1: cap.length >= queue_notify_off * notify_off_multiplier + 2.
    let (_, l) = blk();
    // length 0x1000, multiplier 4: notify_off 1023 ends at 0xffe; 1024 is out.
    assert_eq!(
        l.notify.doorbell(0, 1023, None).unwrap().offset,
        0x3000 + 4092
    );
    let e = l.notify.doorbell(5, 1024, None).unwrap_err();
    assert!(
        matches!(
            e,
            PciError::NotifyOutOfRange {
                queue: 5,
                notify_off: 1024,
                multiplier: 4,
                length: 0x1000
            }
        ),
        "{e}"
    );
    let tiny = NotifyCap {
        cap: VirtioCap {
            length: 1,
            ..l.notify.cap
        },
        multiplier: 0,
    };
    assert!(matches!(
        tiny.doorbell(0, 0, None),
        Err(PciError::NotifyOutOfRange { .. })
    ));
    // A hand-made capability with an odd offset gets an error, not a misaligned store.
    let odd = NotifyCap {
        cap: VirtioCap {
            offset: 0x3001,
            ..l.notify.cap
        },
        multiplier: 4,
    };
    assert!(matches!(
        odd.doorbell(0, 0, None),
        Err(PciError::CapMisaligned { align: 2, .. })
    ));
}

#[test]
fn device_config_reads_use_natural_widths() {
    // §4.1.3.1: a field is accessed at its own width; 64-bit fields as two 32-bit.
    let (dev, l) = blk();
    let c = CommonCfg::new(&dev, &l.common).unwrap();
    let mut cap = [0u8; 8];
    c.read_device_config(&l.device, 0, &mut cap).unwrap();
    assert_eq!(u64::from_le_bytes(cap), 2048);
    assert_eq!(dev.take_device_reads(), vec![(0, 4), (4, 4)]);
    let mut nq = [0u8; 2];
    c.read_device_config(&l.device, 34, &mut nq).unwrap();
    assert_eq!(u16::from_le_bytes(nq), 2);
    assert_eq!(dev.take_device_reads(), vec![(34, 2)]);
    let mut bs = [0u8; 4];
    c.read_device_config(&l.device, 20, &mut bs).unwrap();
    assert_eq!(u32::from_le_bytes(bs), 512);
    assert_eq!(dev.take_device_reads(), vec![(20, 4)]);
    // A whole-struct read goes byte by byte and decodes like any other.
    let mut all = [0u8; 60];
    c.read_device_config(&l.device, 0, &mut all).unwrap();
    let reads = dev.take_device_reads();
    assert_eq!(reads.len(), 60);
    assert!(reads.iter().all(|&(_, w)| w == 1));
    let offered = FakePciConfig::blk(0).features;
    let parsed = vbdev_virtio::blk::BlkConfig::parse(&all, offered);
    assert_eq!(
        (
            parsed.capacity,
            parsed.blk_size,
            parsed.seg_max,
            parsed.num_queues
        ),
        (2048, 512, 126, 2)
    );
}

#[test]
fn device_config_reads_beyond_the_structure_are_refused() {
    let (dev, l) = blk();
    let c = CommonCfg::new(&dev, &l.common).unwrap();
    let mut b = [0u8; 8];
    assert!(matches!(
        c.read_device_config(&l.device, 56, &mut b),
        Err(PciError::ConfigOutOfRange {
            offset: 56,
            len: 8,
            size: 60
        })
    ));
    assert!(matches!(
        c.read_device_config(&l.device, u32::MAX, &mut b),
        Err(PciError::ConfigOutOfRange { .. })
    ));
    assert!(dev.take_device_reads().is_empty());
}

#[test]
fn a_config_change_mid_read_is_retried_to_a_consistent_value() {
    // §2.5.1: read generation, read, reread generation, retry on change. The capacity
    // changes between the two 32-bit halves: the first attempt is torn.
    let (dev, l) = blk_with(FakePciConfig::blk(0x0000_0001_ffff_ffff));
    let c = CommonCfg::new(&dev, &l.common).unwrap();
    let new: u64 = 0x0000_0002_0000_0000;
    dev.change_config_after(1, 0, &new.to_le_bytes());
    let mut cap = [0u8; 8];
    c.read_device_config(&l.device, 0, &mut cap).unwrap();
    assert_eq!(u64::from_le_bytes(cap), new);
    // Two attempts: 4 generation reads, 4 data reads.
    assert_eq!(dev.generation_reads(), 4);
    assert_eq!(
        dev.take_device_reads(),
        vec![(0, 4), (4, 4), (0, 4), (4, 4)]
    );
}

#[test]
fn a_config_that_never_settles_fails() {
    let (dev, l) = blk();
    let c = CommonCfg::new(&dev, &l.common).unwrap();
    dev.set_config_unstable(true);
    let mut b = [0u8; 4];
    assert!(matches!(
        c.read_device_config(&l.device, 0, &mut b),
        Err(PciError::ConfigUnstable {
            attempts: CONFIG_READ_ATTEMPTS
        })
    ));
    assert_eq!(dev.generation_reads(), 2 * CONFIG_READ_ATTEMPTS);
}

#[test]
fn virtio_1_2_fields_exist_only_when_the_structure_covers_them() {
    let old = FakePciConfig {
        common_len: COMMON_CFG_MIN_LEN,
        ..FakePciConfig::blk(0)
    };
    let (dev, l) = blk_with(old);
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    let q = c.queue(1).unwrap();
    assert_eq!(q.notify_data().unwrap(), None);
    assert!(matches!(
        q.reset(Duration::from_secs(1)),
        Err(PciError::FieldAbsent {
            field: "queue_reset",
            len: 0x38
        })
    ));

    let (dev, l) = blk_with(FakePciConfig {
        reset_latency: 3,
        ..FakePciConfig::blk(0)
    });
    let mut c = CommonCfg::new(&dev, &l.common).unwrap();
    let q = c.queue(1).unwrap();
    assert_eq!(q.notify_data().unwrap(), Some(1));
    q.configure(&addrs(16), NO_VECTOR).unwrap();
    assert!(dev.queue(1).enabled);
    // §4.1.4.3.2: reset is complete when queue_reset reads 0; the queue is disabled
    // and back at the device's size.
    q.reset(Duration::from_secs(1)).unwrap();
    let fq = dev.queue(1);
    assert!(!fq.enabled);
    assert_eq!(fq.size, 256);
    q.configure(&addrs(16), NO_VECTOR).unwrap();
}

#[test]
fn the_isr_byte_clears_on_read() {
    let (dev, l) = blk();
    let isr = l.isr.unwrap();
    dev.raise_isr(0b11);
    assert_eq!(read_isr(&dev, &isr).unwrap(), 0b11);
    assert_eq!(read_isr(&dev, &isr).unwrap(), 0);
}

#[test]
fn the_fake_refuses_accesses_a_driver_must_not_make() {
    // The model's strictness is what makes the tests above mean something.
    let (dev, l) = blk();
    let b = l.common.bar;
    use common_cfg as cc;
    // Wrong width for a field (§4.1.3.1).
    assert!(matches!(
        dev.read8(b, cc::NUM_QUEUES),
        Err(PciError::BadAccess { width: 1, .. })
    ));
    assert!(dev.read32(b, cc::QUEUE_SELECT).is_err());
    // Writes to read-only fields and a 0 to queue_enable (§4.1.4.3.2).
    assert!(dev.write16(b, cc::NUM_QUEUES, 1).is_err());
    assert!(dev.write32(b, cc::DEVICE_FEATURE, 1).is_err());
    assert!(dev.write16(b, cc::QUEUE_ENABLE, 0).is_err());
    // Misaligned, other BARs, beyond the BAR, 32-bit doorbells.
    assert!(dev.read16(b, cc::NUM_QUEUES + 1).is_err());
    assert!(dev.read32(BarIndex::new(0).unwrap(), 0).is_err());
    assert!(dev.read32(b, fake::BAR_LEN).is_err());
    assert!(dev.write32(b, u64::from(fake::NOTIFY_OFFSET), 0).is_err());
    assert!(dev.read64(b, u64::MAX - 2).is_err());
}
