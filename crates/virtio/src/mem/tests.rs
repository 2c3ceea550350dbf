use super::*;

#[test]
fn buffers_are_aligned_disjoint_and_reused() {
    let d = DmaDomain::global();
    let a = d.alloc_aligned(1000, 512).unwrap();
    let b = d.alloc_aligned(4096, 4096).unwrap();
    assert_eq!(a.iova().0 % 512, 0);
    assert_eq!(b.iova().0 % 4096, 0);
    let (ra, rb) = (a.iova().0, b.iova().0);
    assert!(ra + 1000 <= rb || rb + 4096 <= ra, "buffers overlap");
    let (region, off) = d.lookup(b.iova().0, 4096).unwrap();
    assert_eq!(region, b.region());
    assert_eq!(off % 4096, 0);
    drop(b);
    let regions = d.regions();
    assert!(regions.iter().all(|r| r.addr % REGION_ALIGN as u64 == 0));
    assert!(regions.iter().all(|r| r.len % REGION_ALIGN as u64 == 0));
}

#[test]
fn regions_start_small_and_double_up_to_the_cap() {
    let d: &'static DmaDomain = Box::leak(Box::new(DmaDomain::new(DmaConfig {
        region_size: REGION_ALIGN,
        max_region_size: 4 * REGION_ALIGN,
        ..DmaConfig::default()
    })));
    let sizes = [1, 2, 4, 4, 4].map(|m| m * REGION_ALIGN as u64);
    let mut bufs = Vec::new();
    for (i, want) in sizes.into_iter().enumerate() {
        // Each buffer fills what is left of the regions so far: one more region.
        let left: u64 = d.regions().iter().map(|r| r.len).sum::<u64>()
            - bufs.iter().map(|b: &DmaBuf| b.len() as u64).sum::<u64>();
        if left > 0 {
            bufs.push(d.alloc(left as usize).unwrap());
        }
        bufs.push(d.alloc(4096).unwrap());
        let regions = d.regions();
        assert_eq!(regions.len(), i + 1);
        assert_eq!(regions[i].len, want, "region {i}");
    }
    // A buffer larger than the next region's size gets a region its own size.
    let big = d.alloc(9 * REGION_ALIGN).unwrap();
    assert_eq!(
        d.regions()[big.region().0 as usize].len,
        9 * REGION_ALIGN as u64
    );
    // Fixed-size configurations do not grow.
    let pinned = DmaDomain::new(DmaConfig::pinned());
    assert_eq!(pinned.next_region_size(5), PINNED_REGION_SIZE);
    let default = DmaDomain::new(DmaConfig::default());
    assert_eq!(default.next_region_size(0), DEFAULT_REGION_SIZE);
    assert_eq!(default.next_region_size(63), DEFAULT_MAX_REGION_SIZE);
}

#[test]
fn writes_are_visible_through_the_memfd() {
    let mut buf = DmaBuf::zeroed(8192, 4096).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    buf[100] = 0xa5;
    let info = DmaDomain::global()
        .regions()
        .into_iter()
        .find(|r| r.id == buf.region())
        .unwrap();
    let off = buf.iova().0 - info.addr + 100;
    let mut byte = [0u8; 1];
    rustix::io::pread(info.fd, &mut byte, off).unwrap();
    assert_eq!(byte[0], 0xa5);
}

#[test]
fn hugetlb_is_used_when_pages_are_free_and_never_required() {
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let config = DmaConfig {
        hugetlb: true,
        addr_limit: None,
        ..DmaConfig::default()
    };
    let r = Region::create(RegionId(63), REGION_ALIGN, &config).expect("falls back");
    if free == 0 {
        assert!(!r.info.hugetlb, "no free huge pages, yet hugetlb claimed");
    }
    assert_eq!(r.info.addr % REGION_ALIGN as u64, 0);
    assert_eq!(r.info.len, REGION_ALIGN as u64);
}

#[test]
fn regions_with_an_addr_limit_are_placed_below_it_without_overlap() {
    let limit = IOMMU_39BIT_LIMIT;
    let config = DmaConfig {
        addr_limit: Some(limit),
        ..DmaConfig::default()
    };
    let a = Region::create(RegionId(62), REGION_ALIGN, &config).unwrap();
    let b = Region::create(RegionId(61), 2 * REGION_ALIGN, &config).unwrap();
    for r in [&a, &b] {
        assert!(
            r.info.addr >= limit / 8,
            "{:#x} below the window",
            r.info.addr
        );
        assert!(r.info.addr + r.info.len <= limit);
        assert_eq!(r.info.addr % REGION_ALIGN as u64, 0);
    }
    let (lo, hi) = if a.info.addr < b.info.addr {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(
        lo.info.addr + lo.info.len <= hi.info.addr,
        "regions overlap"
    );
    // The memory is usable.
    // SAFETY: `base` points at the start of the region's live, writable mapping.
    unsafe { b.base.as_ptr().write(7) };
}

#[test]
fn a_full_window_below_the_limit_is_an_error() {
    // A limit whose window [limit / 8, limit) cannot hold the region.
    let config = DmaConfig {
        addr_limit: Some(8 << 20),
        ..DmaConfig::default()
    };
    let r = Region::create(RegionId(60), 64 * REGION_ALIGN, &config);
    assert!(matches!(r, Err(Error::DmaMap(_))));
}

#[test]
fn bad_requests_are_errors() {
    let d = DmaDomain::global();
    assert!(matches!(d.alloc(0), Err(Error::DmaAlloc { .. })));
    assert!(matches!(d.alloc_aligned(8, 3), Err(Error::DmaAlloc { .. })));
}

#[test]
fn translation_splits_at_physical_discontinuities_and_merges_contiguous_pages() {
    const H: u64 = HUGE_PAGE;
    // Region at 64 MiB: pages 0 and 1 contiguous, page 2 elsewhere, page 3 below.
    let m = PhysMap::from_pages(vec![
        (64 << 20, 4 * H, vec![10 * H, 11 * H, 40 * H, 3 * H]),
        (128 << 20, H, vec![7 * H]),
    ]);
    let pieces = |addr: u64, len: u64| {
        let mut v = Vec::new();
        let ok = m.translate(addr, len, |pa, l| v.push((pa, l)));
        ok.then_some(v)
    };
    let base = 64 << 20;
    assert_eq!(pieces(base + 100, 50), Some(vec![(10 * H + 100, 50)]));
    // Across the contiguous boundary: one piece.
    assert_eq!(
        pieces(base + H - 4096, 8192),
        Some(vec![(11 * H - 4096, 8192)])
    );
    // Across the discontinuity between pages 1 and 2: two pieces.
    assert_eq!(
        pieces(base + 2 * H - 512, 1024),
        Some(vec![(12 * H - 512, 512), (40 * H, 512)])
    );
    // The whole region: three pieces.
    assert_eq!(
        pieces(base, 4 * H),
        Some(vec![(10 * H, 2 * H), (40 * H, H), (3 * H, H)])
    );
    assert_eq!(pieces(128 << 20, 16), Some(vec![(7 * H, 16)]));
    assert_eq!(pieces(base, 0), Some(vec![(10 * H, 0)]));
    // Outside, or running past the end of a region.
    assert_eq!(pieces(base - 1, 2), None);
    assert_eq!(pieces(base + 4 * H - 8, 16), None);
    assert_eq!(pieces(0, 1), None);
    assert_eq!(m.contiguous(base + H, 4096), Some(11 * H));
    assert_eq!(m.contiguous(base + 2 * H - 8, 16), None);
    assert_eq!(m.contiguous(1, 1), None);
}

#[test]
fn physical_addresses_come_from_pagemap_for_root_only() {
    let mut buf = DmaBuf::zeroed(4096, 4096).unwrap();
    buf[0] = 1;
    let r = physical_address(buf.as_ptr() as u64 + 12);
    if rustix::process::geteuid().is_root() {
        let pa = r.expect("root reads page frame numbers");
        assert_eq!(pa % 4096, 12);
        assert!(pa >= 4096);
    } else {
        let e = r.expect_err("frame numbers are hidden from non-root");
        assert!(format!("{:?}", e).contains("CAP_SYS_ADMIN"), "{e:?}");
    }
}

#[test]
fn physical_regions_need_free_huge_pages_and_record_their_frames() {
    let config = DmaConfig {
        region_size: REGION_ALIGN,
        addr_limit: None,
        ..DmaConfig::physical()
    };
    match Region::create(RegionId(59), 2 * REGION_ALIGN, &config) {
        Ok(r) => {
            let pages = r.pages.as_ref().expect("physical regions know their pages");
            assert_eq!(pages.len(), 2);
            for (i, &pa) in pages.iter().enumerate() {
                assert_eq!(pa % HUGE_PAGE, 0, "page {i} at {pa:#x}");
                let va = r.info.addr + i as u64 * HUGE_PAGE + 4096 * 3;
                assert_eq!(physical_address(va).unwrap(), pa + 4096 * 3);
            }
            assert!(r.info.hugetlb);
        }
        Err(e) => {
            // No free huge pages here: the error says what is missing.
            let msg = format!("{e}: {:?}", e);
            assert!(
                msg.contains("huge pages") || msg.contains("CAP_SYS_ADMIN"),
                "{msg}"
            );
        }
    }
}

#[test]
fn free_ranges_coalesce() {
    DmaDomain::global().reserve().unwrap();
    let fd = DmaDomain::global().regions()[0].fd;
    let mut r = Region {
        info: RegionInfo {
            id: RegionId(0),
            addr: 0,
            len: 100,
            fd,
            hugetlb: false,
        },
        base: NonNull::dangling(),
        pages: None,
        free: vec![],
    };
    r.give_back(10, 10);
    r.give_back(30, 10);
    r.give_back(20, 10);
    assert_eq!(r.free, vec![(10, 30)]);
    r.give_back(0, 10);
    r.give_back(40, 60);
    assert_eq!(r.free, vec![(0, 100)]);
}
