//! Command-level tests of the SCSI target emulation over an in-memory disk.
//!
//! Expected bytes are written out from the SPC-5 / SBC-4 layouts (byte offsets and bit
//! masks), never produced by the code under test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------
// In-memory disk

#[derive(Debug, Default)]
struct State {
    /// Sparse contents: missing blocks read as zeros.
    blocks: BTreeMap<u64, Vec<u8>>,
    flushes: usize,
    unmaps: Vec<(u64, u64)>,
    write_zeroes: Vec<(u64, u64)>,
    /// Every call fails with this error while set.
    fail: Option<DiskError>,
}

#[derive(Debug)]
struct MemDisk {
    info: DiskInfo,
    state: Arc<Mutex<State>>,
}

type Shared = Arc<Mutex<State>>;

impl MemDisk {
    fn new(info: DiskInfo) -> (Self, Shared) {
        let state = Shared::default();
        (
            Self {
                info,
                state: state.clone(),
            },
            state,
        )
    }

    fn range(&self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.info.num_blocks => Ok(()),
            _ => Err(DiskError::OutOfRange {
                lba,
                blocks,
                num_blocks: self.info.num_blocks,
            }),
        }
    }

    fn blocks_of(&self, len: usize) -> Result<u64, DiskError> {
        let bs = self.info.block_size as usize;
        if len % bs != 0 {
            return Err(DiskError::Misaligned {
                len,
                block_size: self.info.block_size,
            });
        }
        Ok((len / bs) as u64)
    }

    fn failing(&self) -> Result<(), DiskError> {
        match self.state.lock().unwrap().fail {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn drop_blocks(&self, lba: u64, blocks: u64) {
        let mut st = self.state.lock().unwrap();
        let keys: Vec<u64> = st
            .blocks
            .range(lba..lba + blocks)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            st.blocks.remove(&k);
        }
    }
}

impl BlockIo for MemDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.failing()?;
        let n = self.blocks_of(buf.len())?;
        self.range(lba, n)?;
        let bs = self.info.block_size as usize;
        let st = self.state.lock().unwrap();
        for (i, chunk) in buf.chunks_exact_mut(bs).enumerate() {
            match st.blocks.get(&(lba + i as u64)) {
                Some(b) => chunk.copy_from_slice(b),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.failing()?;
        if self.info.read_only {
            return Err(DiskError::ReadOnly);
        }
        let n = self.blocks_of(buf.len())?;
        self.range(lba, n)?;
        let bs = self.info.block_size as usize;
        let mut st = self.state.lock().unwrap();
        for (i, chunk) in buf.chunks_exact(bs).enumerate() {
            st.blocks.insert(lba + i as u64, chunk.to_vec());
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        self.failing()?;
        self.state.lock().unwrap().flushes += 1;
        Ok(())
    }

    fn unmap(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        self.failing()?;
        if !self.info.unmap {
            return Err(DiskError::Unsupported);
        }
        self.range(lba, blocks)?;
        self.drop_blocks(lba, blocks);
        self.state.lock().unwrap().unmaps.push((lba, blocks));
        Ok(())
    }

    fn write_zeroes(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        self.failing()?;
        if !self.info.write_zeroes {
            return Err(DiskError::Unsupported);
        }
        self.range(lba, blocks)?;
        self.drop_blocks(lba, blocks);
        self.state.lock().unwrap().write_zeroes.push((lba, blocks));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Helpers

const BS: u32 = 512;
const BLOCKS: u64 = 1024;
const SERIAL: &str = "SN0001";

fn info(num_blocks: u64, block_size: u32) -> DiskInfo {
    DiskInfo {
        block_size,
        num_blocks,
        read_only: false,
        unmap: true,
        write_zeroes: true,
    }
}

/// A target with LUN 0 over a disk described by `info`.
fn target_with(info: DiskInfo, limits: Limits) -> (ScsiTarget, Shared) {
    let (disk, state) = MemDisk::new(info);
    let mut t = ScsiTarget::new(0);
    t.add_lun(0, Lun::new(Box::new(disk), SERIAL).with_limits(limits))
        .unwrap();
    (t, state)
}

/// A target with LUN 0: 1024 blocks of 512 bytes, unmap and write zeroes supported.
fn target() -> (ScsiTarget, Shared) {
    target_with(info(BLOCKS, BS), Limits::default())
}

/// Runs a command on `lun` with a Data-In buffer of `data_in_len` bytes; returns the
/// outcome and the Data-In bytes it reports.
fn run_on(
    t: &mut ScsiTarget,
    lun: u16,
    cdb: &[u8],
    data_out: &[u8],
    data_in_len: usize,
) -> (CmdOutcome, Vec<u8>) {
    let mut buf = vec![0xEE; data_in_len];
    let o = t.execute(lun, cdb, data_out, &mut buf);
    assert!(o.data_in_len <= data_in_len);
    buf.truncate(o.data_in_len);
    (o, buf)
}

fn run(
    t: &mut ScsiTarget,
    cdb: &[u8],
    data_out: &[u8],
    data_in_len: usize,
) -> (CmdOutcome, Vec<u8>) {
    run_on(t, 0, cdb, data_out, data_in_len)
}

fn good(t: &mut ScsiTarget, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> Vec<u8> {
    let (o, d) = run(t, cdb, data_out, data_in_len);
    assert_eq!(o.status, Status::GOOD, "cdb {cdb:02x?}: {o:?}");
    assert_eq!(o.sense, None);
    assert!(!o.overrun);
    d
}

/// The fixed format sense bytes of a CHECK CONDITION, checked against SPC-5 §4.4.3:
/// response code 70h, additional sense length 10, key in byte 2 bits 3-0, ASC/ASCQ in
/// bytes 12/13.
fn check(o: &CmdOutcome, key: u8, asc: u8, ascq: u8) -> [u8; 18] {
    assert_eq!(o.status, Status::CHECK_CONDITION, "{o:?}");
    assert_eq!(o.status.0, 0x02);
    assert_eq!(o.data_in_len, 0);
    let b = o.sense.expect("sense data").fixed_format();
    assert_eq!(b[0] & 0x7F, 0x70, "response code");
    assert_eq!(b[2] & 0x0F, key, "sense key in {b:02x?}");
    assert_eq!(b[7], 10, "additional sense length");
    assert_eq!((b[12], b[13]), (asc, ascq), "asc/ascq in {b:02x?}");
    b
}

/// CHECK CONDITION, ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h) with a field
/// pointer (SPC-5 §4.4.2.4.2): byte 15 = SKSV (80h) | C/D (40h) | BPV (08h) | bit, and
/// the FIELD POINTER in bytes 16-17.
fn check_invalid_cdb_field(o: &CmdOutcome, byte: u16, bit: u8) {
    let b = check(o, 0x05, 0x24, 0x00);
    assert_eq!(b[15], 0x80 | 0x40 | 0x08 | bit, "sksv byte in {b:02x?}");
    assert_eq!(
        u16::from_be_bytes([b[16], b[17]]),
        byte,
        "field pointer in {b:02x?}"
    );
}

/// INVALID FIELD IN PARAMETER LIST (26h/00h) with C/D = 0.
fn check_invalid_param_field(o: &CmdOutcome, byte: u16, bit: u8) {
    let b = check(o, 0x05, 0x26, 0x00);
    assert_eq!(b[15], 0x80 | 0x08 | bit, "sksv byte in {b:02x?}");
    assert_eq!(u16::from_be_bytes([b[16], b[17]]), byte);
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2A;
    c
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const TUR: [u8; 6] = [0x00, 0, 0, 0, 0, 0];

// ---------------------------------------------------------------------------------
// Dispatch, opcodes, CDB checks

#[test]
fn test_unit_ready_is_good() {
    let (mut t, _) = target();
    assert!(good(&mut t, &TUR, &[], 0).is_empty());
}

#[test]
fn test_unit_ready_without_medium_is_not_ready_medium_not_present() {
    let (mut t, _) = target_with(info(0, BS), Limits::default());
    let (o, _) = run(&mut t, &TUR, &[], 0);
    check(&o, 0x02, 0x3A, 0x00);
}

#[test]
fn empty_cdb_is_invalid_command_operation_code() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &[], &[], 0);
    let b = check(&o, 0x05, 0x20, 0x00);
    assert_eq!(b[15], 0, "no SKSV");
}

#[test]
fn unimplemented_opcode_is_invalid_command_operation_code() {
    let (mut t, _) = target();
    // MODE SELECT(6), FORMAT UNIT, COMPARE AND WRITE, READ(32).
    for opcode in [0x15u8, 0x04, 0x89, 0x7F] {
        let mut cdb = [0u8; 32];
        cdb[0] = opcode;
        let (o, _) = run(&mut t, &cdb, &[], 64);
        check(&o, 0x05, 0x20, 0x00);
    }
}

#[test]
fn reserved_bit_is_invalid_field_in_cdb_with_field_pointer() {
    let (mut t, _) = target();
    // TEST UNIT READY byte 3 bit 6.
    let (o, _) = run(&mut t, &[0x00, 0, 0, 0x40, 0, 0], &[], 0);
    check_invalid_cdb_field(&o, 3, 6);
    // NACA (CONTROL bit 2) is refused: NORMACA = 0.
    let (o, _) = run(&mut t, &[0x00, 0, 0, 0, 0, 0x04], &[], 0);
    check_invalid_cdb_field(&o, 5, 2);
    // READ(10) RDPROTECT = 111b: no protection information; bit pointer 7.
    let mut cdb = read10(0, 1);
    cdb[1] = 0xE0;
    let (o, _) = run(&mut t, &cdb, &[], 512);
    check_invalid_cdb_field(&o, 1, 7);
    // READ(10) GROUP NUMBER.
    let mut cdb = read10(0, 1);
    cdb[6] = 0x01;
    let (o, _) = run(&mut t, &cdb, &[], 512);
    check_invalid_cdb_field(&o, 6, 0);
}

#[test]
fn short_cdb_is_invalid_field_in_cdb() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &read10(0, 1)[..6], &[], 512);
    check(&o, 0x05, 0x24, 0x00);
}

#[test]
fn bytes_after_the_cdb_length_are_ignored() {
    // virtio-scsi hands over a 32-byte CDB field.
    let (mut t, _) = target();
    let mut cdb = [0xFFu8; 32];
    cdb[..6].copy_from_slice(&TUR);
    good(&mut t, &cdb, &[], 0);
}

#[test]
fn command_to_missing_lun_is_logical_unit_not_supported() {
    let (mut t, _) = target();
    let (o, _) = run_on(&mut t, 3, &TUR, &[], 0);
    check(&o, 0x05, 0x25, 0x00);
    let (o, _) = run_on(&mut t, 3, &read10(0, 1), &[], 512);
    check(&o, 0x05, 0x25, 0x00);
}

// ---------------------------------------------------------------------------------
// REQUEST SENSE

#[test]
fn request_sense_without_condition_returns_no_sense() {
    let (mut t, _) = target();
    let d = good(&mut t, &[0x03, 0, 0, 0, 252, 0], &[], 252);
    let mut want = [0u8; 18];
    want[0] = 0x70;
    want[7] = 10;
    assert_eq!(d, want);
}

#[test]
fn request_sense_returns_unit_attention_once_in_fixed_format() {
    let (mut t, _) = target();
    assert!(t.lun_reset(0));
    let d = good(&mut t, &[0x03, 0, 0, 0, 18, 0], &[], 96);
    assert_eq!(
        d,
        [
            0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0x03, 0, 0, 0, 0
        ]
    );
    // Cleared: the next command runs.
    good(&mut t, &TUR, &[], 0);
    let d = good(&mut t, &[0x03, 0, 0, 0, 18, 0], &[], 96);
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
}

#[test]
fn request_sense_desc_returns_descriptor_format() {
    let (mut t, _) = target();
    t.set_capacity(0, 100).unwrap();
    let d = good(&mut t, &[0x03, 0x01, 0, 0, 252, 0], &[], 252);
    // SPC-5 §4.4.2: 72h, key, ASC, ASCQ, reserved, ADDITIONAL SENSE LENGTH 0.
    assert_eq!(d, [0x72, 0x06, 0x2A, 0x09, 0, 0, 0, 0]);
}

#[test]
fn request_sense_allocation_length_cuts_data() {
    let (mut t, _) = target();
    let d = good(&mut t, &[0x03, 0, 0, 0, 8, 0], &[], 96);
    assert_eq!(d, [0x70, 0, 0, 0, 0, 0, 0, 10]);
    assert!(good(&mut t, &[0x03, 0, 0, 0, 0, 0], &[], 96).is_empty());
}

#[test]
fn request_sense_without_medium_reports_not_ready() {
    let (mut t, _) = target_with(info(0, BS), Limits::default());
    let d = good(&mut t, &[0x03, 0, 0, 0, 18, 0], &[], 18);
    assert_eq!((d[2], d[12], d[13]), (0x02, 0x3A, 0x00));
}

#[test]
fn request_sense_to_missing_lun_returns_logical_unit_not_supported_with_good() {
    let (mut t, _) = target();
    let (o, d) = run_on(&mut t, 9, &[0x03, 0, 0, 0, 18, 0], &[], 18);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(
        d,
        [
            0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0x00, 0, 0, 0, 0
        ]
    );
}

// ---------------------------------------------------------------------------------
// INQUIRY

fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, u8::from(evpd), page, a[0], a[1], 0]
}

#[test]
fn standard_inquiry_data_layout() {
    let (mut t, _) = target();
    let d = good(&mut t, &inquiry(false, 0, 255), &[], 255);
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0x00, "PQ 000b, PDT 00h (direct access block device)");
    assert_eq!(d[1], 0x00, "RMB = 0");
    assert_eq!(d[2], 0x07, "VERSION: SPC-5");
    assert_eq!(d[3] & 0x0F, 0x02, "RESPONSE DATA FORMAT 2");
    assert_eq!(d[3] & 0x20, 0, "NORMACA = 0");
    assert_eq!(d[4], 91, "ADDITIONAL LENGTH = 96 - 5");
    assert_eq!(d[7] & 0x02, 0x02, "CMDQUE");
    assert_eq!(&d[8..16], b"VBDEV   ");
    assert_eq!(&d[16..32], b"vbdev disk      ");
    assert_eq!(&d[32..36], b"0001");
    // Version descriptors: SAM-5, SPC-5, SBC-4 (no version claimed).
    assert_eq!(&d[58..64], &[0x00, 0xA0, 0x05, 0xC0, 0x06, 0x00]);
    assert!(d[64..].iter().all(|&b| b == 0));
}

#[test]
fn inquiry_is_cut_at_allocation_length_and_buffer() {
    let (mut t, _) = target();
    let d = good(&mut t, &inquiry(false, 0, 36), &[], 255);
    assert_eq!(d.len(), 36);
    assert_eq!(d[4], 91, "ADDITIONAL LENGTH keeps the full length");
    let d = good(&mut t, &inquiry(false, 0, 255), &[], 5);
    assert_eq!(d, [0x00, 0x00, 0x07, 0x02, 91]);
    assert!(good(&mut t, &inquiry(false, 0, 0), &[], 255).is_empty());
}

#[test]
fn inquiry_with_product_override() {
    let (disk, _) = MemDisk::new(info(8, BS));
    let mut t = ScsiTarget::new(1);
    t.add_lun(
        0,
        Lun::new(Box::new(disk), "x").with_product("a very long product name\u{e9}"),
    )
    .unwrap();
    let d = good(&mut t, &inquiry(false, 0, 96), &[], 96);
    assert_eq!(&d[16..32], b"a very long prod");
}

#[test]
fn inquiry_page_code_without_evpd_is_invalid_field() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &inquiry(false, 0x80, 255), &[], 255);
    check_invalid_cdb_field(&o, 2, 7);
}

#[test]
fn inquiry_unsupported_vpd_page_is_invalid_field() {
    let (mut t, _) = target();
    for page in [0x01u8, 0x86, 0x89, 0xB3, 0xB7, 0xFF] {
        let (o, _) = run(&mut t, &inquiry(true, page, 255), &[], 255);
        check_invalid_cdb_field(&o, 2, 7);
    }
}

#[test]
fn inquiry_cmddt_bit_is_invalid_field() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &[0x12, 0x02, 0, 0, 255, 0], &[], 255);
    check_invalid_cdb_field(&o, 1, 1);
}

#[test]
fn inquiry_to_missing_lun_returns_qualifier_3_type_1f() {
    let (mut t, _) = target();
    let (o, d) = run_on(&mut t, 1, &inquiry(false, 0, 96), &[], 96);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0x7F);
    let (o, d) = run_on(&mut t, 1, &inquiry(true, 0x00, 96), &[], 96);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(d, [0x7F, 0x00, 0x00, 0x01, 0x00]);
    let (o, _) = run_on(&mut t, 1, &inquiry(true, 0x80, 96), &[], 96);
    check_invalid_cdb_field(&o, 2, 7);
}

#[test]
fn vpd_supported_pages_are_listed_ascending() {
    let (mut t, _) = target();
    let d = good(&mut t, &inquiry(true, 0x00, 255), &[], 255);
    assert_eq!(
        d,
        [0x00, 0x00, 0x00, 0x06, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    );
}

#[test]
fn vpd_unit_serial_number_page() {
    let (mut t, _) = target();
    let d = good(&mut t, &inquiry(true, 0x80, 255), &[], 255);
    assert_eq!(&d[..4], &[0x00, 0x80, 0x00, 6]);
    assert_eq!(&d[4..], b"SN0001");
}

#[test]
fn serial_is_printable_ascii_and_bounded() {
    let (disk, _) = MemDisk::new(info(8, BS));
    let long = format!("\u{1}a\u{e9}{}", "x".repeat(100));
    let l = Lun::new(Box::new(disk), &long);
    assert_eq!(l.serial().len(), MAX_SERIAL_LEN);
    assert!(l.serial().starts_with("_a_xxx"));
}

#[test]
fn vpd_device_identification_has_t10_vendor_and_naa_designators() {
    let (mut t, _) = target();
    let d = good(&mut t, &inquiry(true, 0x83, 255), &[], 255);
    assert_eq!(&d[..2], &[0x00, 0x83]);
    let page_len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    assert_eq!(page_len, d.len() - 4);
    // Designation descriptor 1: CODE SET 2h (ASCII), ASSOCIATION 00b, TYPE 1h (T10
    // vendor ID based), DESIGNATOR LENGTH, then T10 VENDOR IDENTIFICATION.
    let t10 = &d[4..];
    assert_eq!(t10[0], 0x02);
    assert_eq!(t10[1], 0x01);
    let t10_len = usize::from(t10[3]);
    assert_eq!(&t10[4..4 + t10_len], b"VBDEV   vbdev disk      SN0001");
    // Designation descriptor 2: CODE SET 1h (binary), TYPE 3h (NAA), length 8, NAA 3h.
    let naa = &t10[4 + t10_len..];
    assert_eq!(&naa[..4], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(naa[4] >> 4, 0x3, "NAA Locally Assigned");
    assert_eq!(naa.len(), 12);
}

#[test]
fn vpd_naa_designator_differs_between_serials() {
    let mut t = ScsiTarget::new(0);
    for (id, serial) in [(0, "disk-a"), (1, "disk-b")] {
        let (disk, _) = MemDisk::new(info(8, BS));
        t.add_lun(id, Lun::new(Box::new(disk), serial)).unwrap();
    }
    let naa = |t: &mut ScsiTarget, lun| {
        let (_, d) = run_on(t, lun, &inquiry(true, 0x83, 255), &[], 255);
        d[d.len() - 8..].to_vec()
    };
    assert_ne!(naa(&mut t, 0), naa(&mut t, 1));
}

#[test]
fn vpd_block_limits_page_reports_limits() {
    let limits = Limits {
        max_transfer_blocks: 0x1234,
        max_unmap_blocks: 0x5678,
        max_unmap_descriptors: 7,
        max_write_same_blocks: 0x1_0000_0001,
    };
    let (mut t, _) = target_with(info(BLOCKS, BS), limits);
    let d = good(&mut t, &inquiry(true, 0xB0, 255), &[], 255);
    assert_eq!(d.len(), 64);
    assert_eq!(&d[..4], &[0x00, 0xB0, 0x00, 0x3C]);
    assert_eq!(d[4] & 0x01, 0x01, "WSNZ");
    assert_eq!(d[5], 0, "no COMPARE AND WRITE");
    assert_eq!(
        &d[6..8],
        &[0x00, 0x08],
        "OPTIMAL TRANSFER LENGTH GRANULARITY: 4 KiB"
    );
    assert_eq!(&d[8..12], &[0, 0, 0x12, 0x34], "MAXIMUM TRANSFER LENGTH");
    assert_eq!(&d[20..24], &[0, 0, 0x56, 0x78], "MAXIMUM UNMAP LBA COUNT");
    assert_eq!(
        &d[24..28],
        &[0, 0, 0, 7],
        "MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT"
    );
    assert_eq!(&d[28..32], &[0, 0, 0, 8], "OPTIMAL UNMAP GRANULARITY");
    assert_eq!(d[32] & 0x80, 0, "UGAVALID");
    assert_eq!(
        &d[36..44],
        &[0, 0, 0, 1, 0, 0, 0, 1],
        "MAXIMUM WRITE SAME LENGTH"
    );
}

#[test]
fn vpd_block_limits_without_unmap_has_zero_unmap_fields() {
    let mut i = info(BLOCKS, 4096);
    i.unmap = false;
    let (mut t, _) = target_with(i, Limits::default());
    let d = good(&mut t, &inquiry(true, 0xB0, 255), &[], 255);
    assert_eq!(&d[6..8], &[0x00, 0x01]);
    assert_eq!(&d[8..12], &[0, 0, 0xFF, 0xFF]);
    assert!(d[20..32].iter().all(|&b| b == 0));
}

#[test]
fn vpd_block_device_characteristics_is_non_rotating() {
    let (mut t, _) = target();
    let d = good(&mut t, &inquiry(true, 0xB1, 255), &[], 255);
    assert_eq!(d.len(), 64);
    assert_eq!(&d[..4], &[0x00, 0xB1, 0x00, 0x3C]);
    assert_eq!(&d[4..6], &[0x00, 0x01], "MEDIUM ROTATION RATE 0001h");
}

#[test]
fn vpd_logical_block_provisioning_follows_unmap_support() {
    let (mut t, _) = target();
    let d = good(&mut t, &inquiry(true, 0xB2, 255), &[], 255);
    assert_eq!(&d[..4], &[0x00, 0xB2, 0x00, 0x04]);
    assert_eq!(d[5] & 0x80, 0x80, "LBPU");
    assert_eq!(d[5] & 0x40, 0x40, "LBPWS");
    assert_eq!(d[5] & 0x20, 0x20, "LBPWS10");
    assert_eq!((d[5] >> 2) & 0x07, 0b001, "LBPRZ");
    assert_eq!(d[5] & 0x03, 0, "ANC_SUP, DP");
    assert_eq!(d[6] & 0x07, 0b010, "thin provisioned");

    let mut i = info(BLOCKS, BS);
    i.unmap = false;
    let (mut t, _) = target_with(i, Limits::default());
    let d = good(&mut t, &inquiry(true, 0xB2, 255), &[], 255);
    assert_eq!(d[5], 0x00);
    assert_eq!(d[6] & 0x07, 0);
}

// ---------------------------------------------------------------------------------
// READ CAPACITY

const READ_CAPACITY_10: [u8; 10] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn read_capacity_16(alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn read_capacity_10_returns_last_lba_and_block_length() {
    let (mut t, _) = target();
    let d = good(&mut t, &READ_CAPACITY_10, &[], 8);
    assert_eq!(d, [0, 0, 0x03, 0xFF, 0, 0, 0x02, 0x00]);
    // The obsolete PMI bit and LBA field are ignored.
    let mut cdb = READ_CAPACITY_10;
    cdb[5] = 7;
    cdb[8] = 1;
    assert_eq!(good(&mut t, &cdb, &[], 8), d);
}

#[test]
fn read_capacity_10_saturates_when_last_lba_needs_more_than_32_bits() {
    for (blocks, want) in [
        ((1u64 << 32) - 1, 0xFFFF_FFFEu32),
        (1 << 32, 0xFFFF_FFFF),
        ((1 << 32) + 1, 0xFFFF_FFFF),
        (1 << 40, 0xFFFF_FFFF),
    ] {
        let (mut t, _) = target_with(info(blocks, 4096), Limits::default());
        let d = good(&mut t, &READ_CAPACITY_10, &[], 8);
        assert_eq!(&d[..4], &want.to_be_bytes());
        assert_eq!(&d[4..], &[0, 0, 0x10, 0x00]);
        let d = good(&mut t, &read_capacity_16(32), &[], 32);
        assert_eq!(&d[..8], &(blocks - 1).to_be_bytes());
    }
}

#[test]
fn read_capacity_16_layout_with_thin_provisioning() {
    let (mut t, _) = target();
    let d = good(&mut t, &read_capacity_16(32), &[], 64);
    assert_eq!(d.len(), 32);
    assert_eq!(&d[..8], &[0, 0, 0, 0, 0, 0, 0x03, 0xFF]);
    assert_eq!(&d[8..12], &[0, 0, 0x02, 0x00]);
    assert_eq!(d[12], 0x10, "RC BASIS 01b, no protection");
    assert_eq!(d[13], 0x00);
    assert_eq!(d[14] & 0x80, 0x80, "LBPME");
    assert_eq!(d[14] & 0x40, 0x40, "LBPRZ");
    assert!(d[15..].iter().all(|&b| b == 0));

    let mut i = info(BLOCKS, BS);
    i.unmap = false;
    let (mut t, _) = target_with(i, Limits::default());
    let d = good(&mut t, &read_capacity_16(32), &[], 64);
    assert_eq!(d[14], 0x00);
}

#[test]
fn read_capacity_16_is_cut_at_allocation_length() {
    let (mut t, _) = target();
    assert_eq!(good(&mut t, &read_capacity_16(12), &[], 64).len(), 12);
    assert!(good(&mut t, &read_capacity_16(0), &[], 64).is_empty());
    assert_eq!(good(&mut t, &read_capacity_16(32), &[], 10).len(), 10);
}

#[test]
fn other_service_action_in_16_is_invalid_field() {
    let (mut t, _) = target();
    let mut cdb = read_capacity_16(32);
    cdb[1] = 0x12; // GET LBA STATUS
    let (o, _) = run(&mut t, &cdb, &[], 32);
    check_invalid_cdb_field(&o, 1, 4);
    // Reserved bits above the service action.
    let mut cdb = read_capacity_16(32);
    cdb[1] = 0x30;
    let (o, _) = run(&mut t, &cdb, &[], 32);
    check_invalid_cdb_field(&o, 1, 5);
}

#[test]
fn read_capacity_without_medium_is_not_ready() {
    let (mut t, _) = target_with(info(BLOCKS, 0), Limits::default());
    let (o, _) = run(&mut t, &READ_CAPACITY_10, &[], 8);
    check(&o, 0x02, 0x3A, 0x00);
    let (o, _) = run(&mut t, &read_capacity_16(32), &[], 32);
    check(&o, 0x02, 0x3A, 0x00);
}

// ---------------------------------------------------------------------------------
// READ and WRITE

#[test]
fn write_then_read_10_returns_the_data() {
    let (mut t, _) = target();
    let data = pattern(3 * 512, 1);
    assert!(good(&mut t, &write10(100, 3), &data, 0).is_empty());
    assert_eq!(good(&mut t, &read10(100, 3), &[], 3 * 512), data);
    assert_eq!(good(&mut t, &read10(101, 1), &[], 512), &data[512..1024]);
}

#[test]
fn write_then_read_6_12_16_return_the_data() {
    let (mut t, _) = target();
    let data = pattern(2 * 512, 7);
    // WRITE(6): LBA 0x0203F0 would be out of range; use 0x0003F0 = 1008.
    good(&mut t, &[0x0A, 0x00, 0x03, 0xF0, 2, 0], &data, 0);
    assert_eq!(
        good(&mut t, &[0x08, 0x00, 0x03, 0xF0, 2, 0], &[], 1024),
        data
    );
    // WRITE(12) / READ(12).
    let w12 = [0xAA, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0];
    let r12 = [0xA8, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0];
    good(&mut t, &w12, &data, 0);
    assert_eq!(good(&mut t, &r12, &[], 1024), data);
    // WRITE(16) / READ(16).
    good(&mut t, &rw16(0x8A, 1022, 2), &data, 0);
    assert_eq!(good(&mut t, &rw16(0x88, 1022, 2), &[], 1024), data);
}

#[test]
fn read_6_transfer_length_zero_means_256_blocks() {
    let (mut t, _) = target();
    let d = good(&mut t, &[0x08, 0, 0, 0, 0, 0], &[], 256 * 512);
    assert_eq!(d.len(), 256 * 512);
    // Only 255 blocks left from LBA 769: out of range.
    let (o, _) = run(&mut t, &[0x08, 0, 0x03, 0x01, 0, 0], &[], 256 * 512);
    check(&o, 0x05, 0x21, 0x00);
}

#[test]
fn read_6_reserved_lba_bits_are_invalid_field() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &[0x08, 0x20, 0, 0, 1, 0], &[], 512);
    check_invalid_cdb_field(&o, 1, 5);
}

#[test]
fn transfer_length_zero_moves_nothing() {
    let (mut t, state) = target();
    assert!(good(&mut t, &read10(5, 0), &[], 4096).is_empty());
    assert!(good(&mut t, &rw16(0x88, 1024, 0), &[], 4096).is_empty());
    good(&mut t, &write10(5, 0), &[], 0);
    assert!(state.lock().unwrap().blocks.is_empty());
    // LBA beyond the capacity still counts, even with no blocks.
    let (o, _) = run(&mut t, &read10(1025, 0), &[], 0);
    check(&o, 0x05, 0x21, 0x00);
}

#[test]
fn read_past_capacity_is_lba_out_of_range() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &read10(1023, 2), &[], 1024);
    let b = check(&o, 0x05, 0x21, 0x00);
    assert_eq!(b[0], 0x70, "VALID = 0: no INFORMATION");
    let (o, _) = run(&mut t, &rw16(0x88, u64::MAX, 1), &[], 512);
    check(&o, 0x05, 0x21, 0x00);
    let (o, _) = run(&mut t, &rw16(0x8A, u64::MAX - 1, 4), &[0; 2048], 0);
    check(&o, 0x05, 0x21, 0x00);
}

#[test]
fn transfer_beyond_maximum_transfer_length_is_invalid_field_at_transfer_length() {
    let limits = Limits {
        max_transfer_blocks: 8,
        ..Limits::default()
    };
    let (mut t, _) = target_with(info(BLOCKS, BS), limits);
    good(&mut t, &read10(0, 8), &[], 8 * 512);
    let (o, _) = run(&mut t, &read10(0, 9), &[], 9 * 512);
    check_invalid_cdb_field(&o, 7, 7);
    let (o, _) = run(&mut t, &rw16(0x8A, 0, 9), &[0; 9 * 512], 0);
    check_invalid_cdb_field(&o, 10, 7);
    let (o, _) = run(&mut t, &[0x08, 0, 0, 0, 0, 0], &[], 256 * 512);
    check_invalid_cdb_field(&o, 4, 7);
}

#[test]
fn write_fua_flushes_after_the_write() {
    let (mut t, state) = target();
    good(&mut t, &write10(0, 1), &[1; 512], 0);
    assert_eq!(state.lock().unwrap().flushes, 0);
    let mut cdb = write10(0, 1);
    cdb[1] = 0x08; // FUA
    good(&mut t, &cdb, &[2; 512], 0);
    assert_eq!(state.lock().unwrap().flushes, 1);
    // DPO and FUA on a READ are accepted.
    let mut cdb = read10(0, 1);
    cdb[1] = 0x18;
    assert_eq!(good(&mut t, &cdb, &[], 512), vec![2; 512]);
}

#[test]
fn write_with_short_data_out_overruns_and_writes_nothing() {
    let (mut t, state) = target();
    let (o, _) = run(&mut t, &write10(0, 2), &[1; 1000], 0);
    assert!(o.overrun);
    check(&o, 0x0B, 0x4B, 0x00);
    assert!(state.lock().unwrap().blocks.is_empty());
    // Extra Data-Out bytes are ignored.
    good(&mut t, &write10(0, 1), &[3; 4096], 0);
    assert_eq!(state.lock().unwrap().blocks.len(), 1);
}

#[test]
fn read_into_short_data_in_overruns() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &read10(0, 2), &[], 1023);
    assert!(o.overrun);
    check(&o, 0x0B, 0x4B, 0x00);
    // A larger buffer is fine; the length reported is the transfer.
    assert_eq!(good(&mut t, &read10(0, 2), &[], 4096).len(), 1024);
}

#[test]
fn write_to_read_only_lun_is_data_protect_write_protected() {
    let mut i = info(BLOCKS, BS);
    i.read_only = true;
    let (mut t, state) = target_with(i, Limits::default());
    let (o, _) = run(&mut t, &write10(0, 1), &[1; 512], 0);
    check(&o, 0x07, 0x27, 0x00);
    let (o, _) = run(&mut t, &[0x0A, 0, 0, 0, 1, 0], &[1; 512], 0);
    check(&o, 0x07, 0x27, 0x00);
    assert!(state.lock().unwrap().blocks.is_empty());
    // Reads and cache syncs still work.
    good(&mut t, &read10(0, 1), &[], 512);
    good(&mut t, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
}

#[test]
fn backend_errors_become_medium_and_hardware_errors() {
    let (mut t, state) = target();
    state.lock().unwrap().fail = Some(DiskError::Io);
    let (o, _) = run(&mut t, &read10(0, 1), &[], 512);
    check(&o, 0x03, 0x11, 0x00);
    let (o, _) = run(&mut t, &write10(0, 1), &[0; 512], 0);
    check(&o, 0x03, 0x0C, 0x00);
    let (o, _) = run(&mut t, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    check(&o, 0x03, 0x0C, 0x00);
    state.lock().unwrap().fail = Some(DiskError::Unsupported);
    let (o, _) = run(&mut t, &read10(0, 1), &[], 512);
    check(&o, 0x04, 0x44, 0x00);
    state.lock().unwrap().fail = Some(DiskError::ReadOnly);
    let (o, _) = run(&mut t, &write10(0, 1), &[0; 512], 0);
    check(&o, 0x07, 0x27, 0x00);
}

// ---------------------------------------------------------------------------------
// SYNCHRONIZE CACHE

#[test]
fn synchronize_cache_10_and_16_flush() {
    let (mut t, state) = target();
    good(&mut t, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    // IMMED is accepted (and ignored: status follows the flush).
    good(&mut t, &[0x35, 0x02, 0, 0, 0x03, 0xFF, 0, 0, 1, 0], &[], 0);
    let mut c16 = rw16(0x91, 1000, 24);
    good(&mut t, &c16, &[], 0);
    c16[1] = 0x02;
    good(&mut t, &c16, &[], 0);
    assert_eq!(state.lock().unwrap().flushes, 4);
}

#[test]
fn synchronize_cache_out_of_range_is_lba_out_of_range() {
    let (mut t, state) = target();
    let (o, _) = run(&mut t, &[0x35, 0, 0, 0, 0x03, 0xFF, 0, 0, 2, 0], &[], 0);
    check(&o, 0x05, 0x21, 0x00);
    let (o, _) = run(&mut t, &rw16(0x91, 1024, 0), &[], 0);
    check(&o, 0x05, 0x21, 0x00);
    assert_eq!(state.lock().unwrap().flushes, 0);
    // The obsolete bits 2 and 0 of byte 1 are reserved here.
    let (o, _) = run(&mut t, &[0x35, 0x04, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    check_invalid_cdb_field(&o, 1, 2);
}

// ---------------------------------------------------------------------------------
// WRITE SAME

fn write_same_16(flags: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = rw16(0x93, lba, blocks);
    c[1] = flags;
    c
}

fn write_same_10(flags: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x41;
    c[1] = flags;
    c
}

#[test]
fn write_same_writes_the_block_n_times() {
    let (mut t, _) = target();
    let block = pattern(512, 9);
    good(&mut t, &write_same_16(0, 10, 5), &block, 0);
    let d = good(&mut t, &read10(10, 5), &[], 5 * 512);
    for c in d.chunks(512) {
        assert_eq!(c, &block[..]);
    }
    good(&mut t, &write_same_10(0, 20, 3), &block, 0);
    assert_eq!(good(&mut t, &read10(22, 1), &[], 512), block);
    // Neighbours untouched.
    assert_eq!(good(&mut t, &read10(15, 1), &[], 512), vec![0; 512]);
}

#[test]
fn write_same_larger_than_one_chunk_writes_everything() {
    let (mut t, _) = target_with(info(8192, BS), Limits::default());
    let block = pattern(512, 3);
    good(&mut t, &write_same_16(0, 1, 4000), &block, 0);
    let d = good(&mut t, &rw16(0x88, 1, 4000), &[], 4000 * 512);
    assert!(d.chunks(512).all(|c| c == &block[..]));
    assert_eq!(good(&mut t, &read10(4001, 1), &[], 512), vec![0; 512]);
}

#[test]
fn write_same_unmap_with_zero_block_unmaps() {
    let (mut t, state) = target();
    good(&mut t, &write10(30, 2), &[7; 1024], 0);
    good(&mut t, &write_same_16(0x08, 30, 2), &[0; 512], 0);
    assert_eq!(state.lock().unwrap().unmaps, vec![(30, 2)]);
    assert_eq!(good(&mut t, &read10(30, 2), &[], 1024), vec![0; 1024]);
    good(&mut t, &write_same_10(0x08, 40, 4), &[0; 512], 0);
    assert_eq!(state.lock().unwrap().unmaps, vec![(30, 2), (40, 4)]);
}

#[test]
fn write_same_unmap_with_nonzero_block_writes_it() {
    let (mut t, state) = target();
    good(&mut t, &write_same_16(0x08, 30, 2), &[5; 512], 0);
    assert!(state.lock().unwrap().unmaps.is_empty());
    assert_eq!(good(&mut t, &read10(30, 2), &[], 1024), vec![5; 1024]);
}

#[test]
fn write_same_ndob_writes_zeros_without_data_out() {
    let (mut t, state) = target();
    good(&mut t, &write10(50, 3), &[9; 1536], 0);
    good(&mut t, &write_same_16(0x01, 50, 3), &[], 0);
    assert_eq!(state.lock().unwrap().write_zeroes, vec![(50, 3)]);
    assert_eq!(good(&mut t, &read10(50, 3), &[], 1536), vec![0; 1536]);
    // NDOB with UNMAP unmaps.
    good(&mut t, &write_same_16(0x09, 60, 1), &[], 0);
    assert_eq!(state.lock().unwrap().unmaps, vec![(60, 1)]);
}

#[test]
fn write_same_zeros_without_write_zeroes_support_are_written() {
    let mut i = info(BLOCKS, BS);
    i.unmap = false;
    i.write_zeroes = false;
    let (mut t, state) = target_with(i, Limits::default());
    good(&mut t, &write10(70, 2), &[9; 1024], 0);
    good(&mut t, &write_same_16(0x01, 70, 2), &[], 0);
    assert_eq!(good(&mut t, &read10(70, 2), &[], 1024), vec![0; 1024]);
    let st = state.lock().unwrap();
    assert!(st.unmaps.is_empty() && st.write_zeroes.is_empty());
}

#[test]
fn write_same_zero_blocks_is_invalid_field_wsnz() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &write_same_16(0, 0, 0), &[0; 512], 0);
    check_invalid_cdb_field(&o, 10, 7);
    let (o, _) = run(&mut t, &write_same_10(0, 0, 0), &[0; 512], 0);
    check_invalid_cdb_field(&o, 7, 7);
}

#[test]
fn write_same_above_maximum_length_is_invalid_field() {
    let limits = Limits {
        max_write_same_blocks: 16,
        ..Limits::default()
    };
    let (mut t, _) = target_with(info(BLOCKS, BS), limits);
    good(&mut t, &write_same_16(0, 0, 16), &[1; 512], 0);
    let (o, _) = run(&mut t, &write_same_16(0, 0, 17), &[1; 512], 0);
    check_invalid_cdb_field(&o, 10, 7);
}

#[test]
fn write_same_out_of_range_short_data_and_read_only() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &write_same_16(0, 1020, 5), &[1; 512], 0);
    check(&o, 0x05, 0x21, 0x00);
    let (o, _) = run(&mut t, &write_same_16(0, 0, 1), &[1; 511], 0);
    assert!(o.overrun);
    check(&o, 0x0B, 0x4B, 0x00);

    let mut i = info(BLOCKS, BS);
    i.read_only = true;
    let (mut t, _) = target_with(i, Limits::default());
    let (o, _) = run(&mut t, &write_same_16(0, 0, 1), &[1; 512], 0);
    check(&o, 0x07, 0x27, 0x00);
}

#[test]
fn write_same_unmap_bit_without_provisioning_is_invalid_field() {
    let mut i = info(BLOCKS, BS);
    i.unmap = false;
    let (mut t, _) = target_with(i, Limits::default());
    let (o, _) = run(&mut t, &write_same_16(0x08, 0, 1), &[0; 512], 0);
    check_invalid_cdb_field(&o, 1, 3);
    let (o, _) = run(&mut t, &write_same_10(0x08, 0, 1), &[0; 512], 0);
    check_invalid_cdb_field(&o, 1, 3);
    // ANCHOR is never supported (ANC_SUP = 0).
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &write_same_16(0x18, 0, 1), &[0; 512], 0);
    check_invalid_cdb_field(&o, 1, 4);
}

// ---------------------------------------------------------------------------------
// UNMAP

fn unmap_cdb(param_len: u16) -> [u8; 10] {
    let p = param_len.to_be_bytes();
    [0x42, 0, 0, 0, 0, 0, 0, p[0], p[1], 0]
}

/// An UNMAP parameter list (SBC-4): header, then 16-byte block descriptors.
fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let bd_len = (descs.len() * 16) as u16;
    let mut v = Vec::new();
    v.extend_from_slice(&(bd_len + 6).to_be_bytes()); // UNMAP DATA LENGTH (n - 1)
    v.extend_from_slice(&bd_len.to_be_bytes()); // UNMAP BLOCK DESCRIPTOR DATA LENGTH
    v.extend_from_slice(&[0; 4]);
    for (lba, n) in descs {
        v.extend_from_slice(&lba.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    v
}

#[test]
fn unmap_unmaps_every_descriptor() {
    let (mut t, state) = target();
    good(&mut t, &write10(0, 8), &[4; 8 * 512], 0);
    let list = unmap_list(&[(1, 2), (5, 0), (6, 2)]);
    good(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    assert_eq!(state.lock().unwrap().unmaps, vec![(1, 2), (6, 2)]);
    let d = good(&mut t, &read10(0, 8), &[], 8 * 512);
    let zeroed: Vec<bool> = d.chunks(512).map(|c| c.iter().all(|&b| b == 0)).collect();
    assert_eq!(zeroed, [false, true, true, false, false, false, true, true]);
}

#[test]
fn unmap_parameter_list_length_zero_does_nothing() {
    let (mut t, state) = target();
    good(&mut t, &unmap_cdb(0), &[], 0);
    assert!(state.lock().unwrap().unmaps.is_empty());
}

#[test]
fn unmap_parameter_list_shorter_than_header_is_parameter_list_length_error() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &unmap_cdb(7), &[0; 7], 0);
    check(&o, 0x05, 0x1A, 0x00);
}

#[test]
fn unmap_descriptor_past_capacity_is_lba_out_of_range_and_unmaps_nothing() {
    let (mut t, state) = target();
    let list = unmap_list(&[(0, 1), (1023, 2)]);
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    check(&o, 0x05, 0x21, 0x00);
    assert!(state.lock().unwrap().unmaps.is_empty());
}

#[test]
fn unmap_limits_are_invalid_field_in_parameter_list() {
    let limits = Limits {
        max_unmap_blocks: 10,
        max_unmap_descriptors: 2,
        ..Limits::default()
    };
    let (mut t, state) = target_with(info(BLOCKS, BS), limits);
    // Three descriptors: pointer at UNMAP BLOCK DESCRIPTOR DATA LENGTH (byte 2).
    let list = unmap_list(&[(0, 1), (2, 1), (4, 1)]);
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    check_invalid_param_field(&o, 2, 7);
    // 6 + 5 blocks: pointer at the second descriptor's NUMBER OF LOGICAL BLOCKS.
    let list = unmap_list(&[(0, 6), (10, 5)]);
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    check_invalid_param_field(&o, 8 + 16 + 8, 7);
    let list = unmap_list(&[(0, 6), (10, 4)]);
    good(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    assert_eq!(state.lock().unwrap().unmaps, vec![(0, 6), (10, 4)]);
}

#[test]
fn unmap_reserved_parameter_bytes_are_invalid_field_in_parameter_list() {
    let (mut t, _) = target();
    let mut list = unmap_list(&[(0, 1)]);
    list[5] = 0x10;
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    check_invalid_param_field(&o, 5, 4);
    let mut list = unmap_list(&[(0, 1)]);
    list[8 + 15] = 0x01;
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    check_invalid_param_field(&o, 23, 0);
}

#[test]
fn unmap_descriptors_beyond_parameter_list_are_invalid_field() {
    let (mut t, _) = target();
    let mut list = unmap_list(&[(0, 1)]);
    list[3] = 32; // claims two descriptors, sends one
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    check_invalid_param_field(&o, 2, 7);
}

#[test]
fn unmap_incomplete_last_descriptor_is_ignored() {
    let (mut t, state) = target();
    let mut list = unmap_list(&[(3, 1)]);
    list.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 0]);
    list[3] = 16 + 10;
    good(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    assert_eq!(state.lock().unwrap().unmaps, vec![(3, 1)]);
}

#[test]
fn unmap_short_data_out_overruns() {
    let (mut t, state) = target();
    let list = unmap_list(&[(0, 1)]);
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16 + 16), &list, 0);
    assert!(o.overrun);
    assert!(state.lock().unwrap().unmaps.is_empty());
}

#[test]
fn unmap_anchor_is_invalid_field_and_read_only_is_write_protected() {
    let (mut t, _) = target();
    let list = unmap_list(&[(0, 1)]);
    let mut cdb = unmap_cdb(list.len() as u16);
    cdb[1] = 0x01;
    let (o, _) = run(&mut t, &cdb, &list, 0);
    check_invalid_cdb_field(&o, 1, 0);

    let mut i = info(BLOCKS, BS);
    i.read_only = true;
    let (mut t, _) = target_with(i, Limits::default());
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    check(&o, 0x07, 0x27, 0x00);
}

#[test]
fn unmap_without_provisioning_is_invalid_command_operation_code() {
    let mut i = info(BLOCKS, BS);
    i.unmap = false;
    let (mut t, _) = target_with(i, Limits::default());
    let list = unmap_list(&[(0, 1)]);
    let (o, _) = run(&mut t, &unmap_cdb(list.len() as u16), &list, 0);
    check(&o, 0x05, 0x20, 0x00);
}

// ---------------------------------------------------------------------------------
// MODE SENSE

fn mode_sense_6(flags: u8, pc_page: u8, subpage: u8, alloc: u8) -> [u8; 6] {
    [0x1A, flags, pc_page, subpage, alloc, 0]
}

fn mode_sense_10(flags: u8, pc_page: u8, subpage: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [0x5A, flags, pc_page, subpage, 0, 0, 0, a[0], a[1], 0]
}

/// Caching mode page, current values: PAGE CODE 08h, PAGE LENGTH 12h, WCE (byte 2 bit 2).
fn caching_page() -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x08;
    p[1] = 0x12;
    p[2] = 0x04;
    p
}

/// Control mode page, current values: PAGE CODE 0Ah, PAGE LENGTH 0Ah, GLTSD (byte 2
/// bit 1), D_SENSE = 0 (byte 2 bit 2), QUEUE ALGORITHM MODIFIER 1 (byte 3 bits 7-4).
fn control_page() -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = 0x0A;
    p[1] = 0x0A;
    p[2] = 0x02;
    p[3] = 0x10;
    p
}

#[test]
fn mode_sense_6_caching_page_with_block_descriptor() {
    let (mut t, _) = target();
    let d = good(&mut t, &mode_sense_6(0, 0x08, 0, 255), &[], 255);
    // Header: MODE DATA LENGTH (n - 1), MEDIUM TYPE, DEVICE-SPECIFIC PARAMETER
    // (DPOFUA, bit 4), BLOCK DESCRIPTOR LENGTH 8.
    assert_eq!(&d[..4], &[(4 + 8 + 20 - 1) as u8, 0, 0x10, 8]);
    // Short LBA block descriptor: NUMBER OF LOGICAL BLOCKS, reserved, LOGICAL BLOCK
    // LENGTH (3 bytes).
    assert_eq!(&d[4..12], &[0, 0, 0x04, 0x00, 0, 0, 0x02, 0x00]);
    assert_eq!(&d[12..], &caching_page()[..]);
}

#[test]
fn mode_sense_6_dbd_leaves_out_the_block_descriptor() {
    let (mut t, _) = target();
    let d = good(&mut t, &mode_sense_6(0x08, 0x0A, 0, 255), &[], 255);
    assert_eq!(&d[..4], &[(4 + 12 - 1) as u8, 0, 0x10, 0]);
    assert_eq!(&d[4..], &control_page()[..]);
}

#[test]
fn mode_sense_10_all_pages_with_long_lba_descriptor() {
    let (mut t, _) = target_with(info(1 << 33, 4096), Limits::default());
    let d = good(&mut t, &mode_sense_10(0x10, 0x3F, 0, 1024), &[], 1024);
    let total = 8 + 16 + 20 + 12;
    assert_eq!(d.len(), total);
    // Header(10): MODE DATA LENGTH (n - 2), MEDIUM TYPE, DSP, LONGLBA, reserved,
    // BLOCK DESCRIPTOR LENGTH.
    assert_eq!(&d[..8], &[0, (total - 2) as u8, 0, 0x10, 0x01, 0, 0, 16]);
    // Long LBA block descriptor: NUMBER OF LOGICAL BLOCKS (8), reserved (4), LOGICAL
    // BLOCK LENGTH (4).
    assert_eq!(&d[8..16], &(1u64 << 33).to_be_bytes());
    assert_eq!(&d[16..24], &[0, 0, 0, 0, 0, 0, 0x10, 0x00]);
    // Pages in ascending order: Caching, then Control.
    assert_eq!(&d[24..44], &caching_page()[..]);
    assert_eq!(&d[44..], &control_page()[..]);
    // Short descriptor saturates NUMBER OF LOGICAL BLOCKS.
    let d = good(&mut t, &mode_sense_6(0, 0x08, 0, 255), &[], 255);
    assert_eq!(&d[4..8], &[0xFF; 4]);
}

#[test]
fn mode_sense_all_subpages_is_accepted() {
    let (mut t, _) = target();
    let a = good(&mut t, &mode_sense_6(0x08, 0x3F, 0xFF, 255), &[], 255);
    let b = good(&mut t, &mode_sense_6(0x08, 0x3F, 0x00, 255), &[], 255);
    assert_eq!(a, b);
    good(&mut t, &mode_sense_6(0x08, 0x08, 0xFF, 255), &[], 255);
}

#[test]
fn mode_sense_read_only_sets_wp() {
    let mut i = info(BLOCKS, BS);
    i.read_only = true;
    let (mut t, _) = target_with(i, Limits::default());
    let d = good(&mut t, &mode_sense_6(0x08, 0x3F, 0, 255), &[], 255);
    assert_eq!(d[2], 0x80 | 0x10, "WP | DPOFUA");
    let d = good(&mut t, &mode_sense_10(0x08, 0x3F, 0, 255), &[], 255);
    assert_eq!(d[3], 0x90);
}

#[test]
fn mode_sense_changeable_values_are_all_zero() {
    let (mut t, _) = target();
    let d = good(&mut t, &mode_sense_6(0x08, 0x40 | 0x3F, 0, 255), &[], 255);
    assert_eq!(&d[4..6], &[0x08, 0x12]);
    assert!(d[6..24].iter().all(|&b| b == 0));
    assert_eq!(&d[24..26], &[0x0A, 0x0A]);
    assert!(d[26..].iter().all(|&b| b == 0));
    // Default values equal the current ones.
    let d = good(&mut t, &mode_sense_6(0x08, 0x80 | 0x08, 0, 255), &[], 255);
    assert_eq!(&d[4..], &caching_page()[..]);
}

#[test]
fn mode_sense_saved_values_are_not_supported() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &mode_sense_6(0, 0xC0 | 0x08, 0, 255), &[], 255);
    check(&o, 0x05, 0x39, 0x00);
}

#[test]
fn mode_sense_unsupported_page_or_subpage_is_invalid_field() {
    let (mut t, _) = target();
    for page in [0x00u8, 0x01, 0x1C, 0x19, 0x3E] {
        let (o, _) = run(&mut t, &mode_sense_6(0, page, 0, 255), &[], 255);
        check_invalid_cdb_field(&o, 2, 5);
    }
    let (o, _) = run(&mut t, &mode_sense_10(0, 0x08, 0x01, 255), &[], 255);
    check_invalid_cdb_field(&o, 3, 7);
    // LLBAA is reserved in MODE SENSE(6).
    let (o, _) = run(&mut t, &mode_sense_6(0x10, 0x08, 0, 255), &[], 255);
    check_invalid_cdb_field(&o, 1, 4);
}

#[test]
fn mode_sense_is_cut_at_allocation_length() {
    let (mut t, _) = target();
    let d = good(&mut t, &mode_sense_6(0, 0x3F, 0, 4), &[], 255);
    assert_eq!(d, [(4 + 8 + 32 - 1) as u8, 0, 0x10, 8]);
}

// ---------------------------------------------------------------------------------
// START STOP UNIT

#[test]
fn start_stop_unit_is_accepted_and_stop_flushes() {
    let (mut t, state) = target();
    good(&mut t, &[0x1B, 0, 0, 0, 0x01, 0], &[], 0);
    good(&mut t, &[0x1B, 0x01, 0, 0, 0x01, 0], &[], 0); // IMMED ignored
    assert_eq!(state.lock().unwrap().flushes, 0);
    good(&mut t, &[0x1B, 0, 0, 0, 0x00, 0], &[], 0);
    assert_eq!(state.lock().unwrap().flushes, 1);
    good(&mut t, &[0x1B, 0, 0, 0, 0x04, 0], &[], 0); // NO_FLUSH
    assert_eq!(state.lock().unwrap().flushes, 1);
    // Still ready after a stop.
    good(&mut t, &TUR, &[], 0);
}

#[test]
fn start_stop_unit_power_condition_and_loej_are_invalid_field() {
    let (mut t, _) = target();
    let (o, _) = run(&mut t, &[0x1B, 0, 0, 0, 0x11, 0], &[], 0);
    check_invalid_cdb_field(&o, 4, 4);
    let (o, _) = run(&mut t, &[0x1B, 0, 0, 0, 0x02, 0], &[], 0);
    check_invalid_cdb_field(&o, 4, 1);
}

// ---------------------------------------------------------------------------------
// REPORT LUNS

fn report_luns(select: u8, alloc: u32) -> [u8; 12] {
    let a = alloc.to_be_bytes();
    [0xA0, 0, select, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
}

fn target_with_luns(ids: &[u16]) -> ScsiTarget {
    let mut t = ScsiTarget::new(2);
    for id in ids {
        let (disk, _) = MemDisk::new(info(64, BS));
        t.add_lun(*id, Lun::new(Box::new(disk), &format!("sn{id}")))
            .unwrap();
    }
    t
}

#[test]
fn report_luns_uses_peripheral_and_flat_space_addressing() {
    let mut t = target_with_luns(&[300, 0, 5, 0x3FFF]);
    let d = good(&mut t, &report_luns(0, 4096), &[], 4096);
    let mut want = vec![0, 0, 0, 32, 0, 0, 0, 0];
    want.extend_from_slice(&[0x00, 0x00, 0, 0, 0, 0, 0, 0]); // LUN 0
    want.extend_from_slice(&[0x00, 0x05, 0, 0, 0, 0, 0, 0]); // LUN 5
    want.extend_from_slice(&[0x41, 0x2C, 0, 0, 0, 0, 0, 0]); // LUN 300, flat space
    want.extend_from_slice(&[0x7F, 0xFF, 0, 0, 0, 0, 0, 0]); // LUN 16383
    assert_eq!(d, want);
    assert_eq!(good(&mut t, &report_luns(2, 4096), &[], 4096), want);
}

#[test]
fn report_luns_answers_on_any_lun_and_cuts_at_allocation_length() {
    let mut t = target_with_luns(&[0, 1]);
    let (o, d) = run_on(&mut t, 77, &report_luns(0, 12), &[], 4096);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(d, [0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut empty = ScsiTarget::new(0);
    assert_eq!(
        good(&mut empty, &report_luns(0, 64), &[], 64),
        [0, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn report_luns_select_report() {
    let mut t = target_with_luns(&[0]);
    // 01h: well-known logical units only; there are none.
    assert_eq!(
        good(&mut t, &report_luns(1, 64), &[], 64),
        [0, 0, 0, 0, 0, 0, 0, 0]
    );
    for select in [0x03u8, 0x10, 0x11, 0x12, 0xFF] {
        let (o, _) = run(&mut t, &report_luns(select, 64), &[], 64);
        check_invalid_cdb_field(&o, 2, 7);
    }
}

// ---------------------------------------------------------------------------------
// REPORT SUPPORTED OPERATION CODES

fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
    let s = sa.to_be_bytes();
    let a = alloc.to_be_bytes();
    [
        0xA3,
        0x0C,
        u8::from(rctd) << 7 | options,
        opcode,
        s[0],
        s[1],
        a[0],
        a[1],
        a[2],
        a[3],
        0,
        0,
    ]
}

/// (opcode, service action, CDB length) of every command, as the all_commands data
/// lists it.
fn listed(t: &mut ScsiTarget) -> Vec<(u8, Option<u16>, u16)> {
    let d = good(t, &rsoc(false, 0, 0, 0, 8192), &[], 8192);
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len, d.len() - 4);
    assert_eq!(len % 8, 0);
    d[4..]
        .chunks(8)
        .map(|c| {
            assert_eq!(c[1], 0);
            assert_eq!(c[4], 0);
            assert_eq!(c[5] & 0xFE, 0, "CTDP = 0 without RCTD");
            let sa = (c[5] & 0x01 != 0).then(|| u16::from_be_bytes([c[2], c[3]]));
            (c[0], sa, u16::from_be_bytes([c[6], c[7]]))
        })
        .collect()
}

#[test]
fn rsoc_all_commands_lists_the_command_set() {
    let (mut t, _) = target();
    let l = listed(&mut t);
    let want: Vec<(u8, Option<u16>, u16)> = vec![
        (0x00, None, 6),
        (0x03, None, 6),
        (0x08, None, 6),
        (0x0A, None, 6),
        (0x12, None, 6),
        (0x1A, None, 6),
        (0x1B, None, 6),
        (0x25, None, 10),
        (0x28, None, 10),
        (0x2A, None, 10),
        (0x35, None, 10),
        (0x41, None, 10),
        (0x42, None, 10),
        (0x5A, None, 10),
        (0x88, None, 16),
        (0x8A, None, 16),
        (0x91, None, 16),
        (0x93, None, 16),
        (0x9E, Some(0x10), 16),
        (0xA0, None, 12),
        (0xA3, Some(0x0C), 12),
        (0xA8, None, 12),
        (0xAA, None, 12),
    ];
    assert_eq!(l, want);

    let mut i = info(BLOCKS, BS);
    i.unmap = false;
    let (mut t, _) = target_with(i, Limits::default());
    assert!(!listed(&mut t).iter().any(|(op, _, _)| *op == 0x42));
}

#[test]
fn rsoc_all_commands_with_rctd_appends_timeouts_descriptors() {
    let (mut t, _) = target();
    let d = good(&mut t, &rsoc(true, 0, 0, 0, 8192), &[], 8192);
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len, 23 * 20);
    for c in d[4..].chunks(20) {
        assert_eq!(c[5] & 0x02, 0x02, "CTDP");
        // Command timeouts descriptor: DESCRIPTOR LENGTH 000Ah.
        assert_eq!(&c[8..10], &[0x00, 0x0A]);
    }
}

#[test]
fn rsoc_one_command_synchronize_cache_usage_data() {
    let (mut t, _) = target();
    let d = good(&mut t, &rsoc(false, 1, 0x35, 0, 64), &[], 64);
    // Byte 1: SUPPORT 011b; CDB SIZE 10; usage data starting with the opcode 35h.
    // Byte 1: IMMED ignored, so 0. LBA (2-5), NUMBER OF LOGICAL BLOCKS (7-8).
    // (vhost-device-scsi reports 53h as the first usage byte: wrong.)
    assert_eq!(
        d,
        [
            0x00, 0x03, 0x00, 0x0A, 0x35, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00
        ]
    );
    let d = good(&mut t, &rsoc(false, 1, 0x91, 0, 64), &[], 64);
    let mut want = vec![0x00, 0x03, 0x00, 0x10, 0x91, 0x00];
    want.extend_from_slice(&[0xFF; 12]);
    want.extend_from_slice(&[0x00, 0x00]);
    assert_eq!(d, want);
}

#[test]
fn rsoc_one_command_read_10_and_write_same_16_usage_data() {
    let (mut t, _) = target();
    let d = good(&mut t, &rsoc(false, 1, 0x28, 0, 64), &[], 64);
    assert_eq!(
        &d[4..],
        &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00]
    );
    let d = good(&mut t, &rsoc(false, 1, 0x93, 0, 64), &[], 64);
    assert_eq!(&d[4..6], &[0x93, 0x09], "UNMAP, NDOB");
    let mut i = info(BLOCKS, BS);
    i.unmap = false;
    let (mut t, _) = target_with(i, Limits::default());
    let d = good(&mut t, &rsoc(false, 1, 0x93, 0, 64), &[], 64);
    assert_eq!(&d[4..6], &[0x93, 0x01], "NDOB only");
}

#[test]
fn rsoc_one_command_with_service_action() {
    let (mut t, _) = target();
    let d = good(&mut t, &rsoc(false, 2, 0x9E, 0x10, 64), &[], 64);
    let mut want = vec![0x00, 0x03, 0x00, 0x10, 0x9E, 0x10];
    want.extend_from_slice(&[0; 8]);
    want.extend_from_slice(&[0xFF; 4]);
    want.extend_from_slice(&[0x00, 0x00]);
    assert_eq!(d, want);
    // Option 3 takes the service action for an operation code that has them...
    assert_eq!(good(&mut t, &rsoc(false, 3, 0x9E, 0x10, 64), &[], 64), want);
    // ...and ignores it for one that does not.
    let d = good(&mut t, &rsoc(false, 3, 0x00, 0x55, 64), &[], 64);
    assert_eq!(d, [0, 0x03, 0, 6, 0, 0, 0, 0, 0, 0]);
    // An unimplemented service action: SUPPORT 001b.
    assert_eq!(
        good(&mut t, &rsoc(false, 2, 0x9E, 0x12, 64), &[], 64),
        [0, 0x01, 0, 0]
    );
}

#[test]
fn rsoc_one_command_unsupported_and_invalid_requests() {
    let (mut t, _) = target();
    assert_eq!(
        good(&mut t, &rsoc(false, 1, 0x15, 0, 64), &[], 64),
        [0, 0x01, 0, 0]
    );
    // Option 1 for an operation code with service actions.
    let (o, _) = run(&mut t, &rsoc(false, 1, 0x9E, 0, 64), &[], 64);
    check_invalid_cdb_field(&o, 3, 7);
    // Option 2 for one without.
    let (o, _) = run(&mut t, &rsoc(false, 2, 0x28, 0, 64), &[], 64);
    check_invalid_cdb_field(&o, 3, 7);
    // Reserved reporting options.
    let (o, _) = run(&mut t, &rsoc(false, 4, 0x28, 0, 64), &[], 64);
    check_invalid_cdb_field(&o, 2, 2);
    // Other MAINTENANCE IN service actions are not implemented.
    let mut cdb = rsoc(false, 0, 0, 0, 64);
    cdb[1] = 0x0A; // REPORT TARGET PORT GROUPS
    let (o, _) = run(&mut t, &cdb, &[], 64);
    check_invalid_cdb_field(&o, 1, 4);
}

#[test]
fn rsoc_one_command_with_rctd_sets_ctdp_and_appends_timeouts() {
    let (mut t, _) = target();
    let d = good(&mut t, &rsoc(true, 1, 0x00, 0, 64), &[], 64);
    assert_eq!(&d[..4], &[0x00, 0x80 | 0x03, 0x00, 0x06]);
    assert_eq!(d.len(), 4 + 6 + 12);
    assert_eq!(&d[10..12], &[0x00, 0x0A]);
}

/// Every bit outside a command's reported usage map is either refused with a field
/// pointer to exactly that bit, or is one of the few bits the emulation ignores.
#[test]
fn rsoc_usage_maps_agree_with_cdb_checking() {
    let (mut t, _) = target();
    let mut ignored = Vec::new();
    for (opcode, sa, len) in listed(&mut t) {
        let mut q = rsoc(false, if sa.is_some() { 2 } else { 1 }, opcode, 0, 64);
        q[4..6].copy_from_slice(&sa.unwrap_or(0).to_be_bytes());
        let d = good(&mut t, &q, &[], 64);
        let usage = d[4..].to_vec();
        assert_eq!(usage.len(), usize::from(len));
        assert_eq!(usage[0], opcode);
        for byte in 1..usage.len() {
            for bit in 0..8u8 {
                let mask = 1 << bit;
                if usage[byte] & mask != 0 || (byte == 1 && sa.is_some() && bit < 5) {
                    continue;
                }
                let mut cdb = vec![0u8; usage.len()];
                cdb[0] = opcode;
                if let Some(sa) = sa {
                    cdb[1] = sa as u8;
                }
                cdb[byte] |= mask;
                let (o, _) = run(&mut t, &cdb, &[0; 4096], 4096);
                let pointed = o
                    .sense
                    .and_then(|s| s.field_pointer)
                    .map(|fp| (fp.byte, fp.bit));
                if pointed != Some((byte as u16, Some(bit))) {
                    ignored.push((opcode, byte, bit));
                }
            }
        }
    }
    let mut want = vec![(0x1B, 1, 0), (0x25, 1, 0)];
    want.extend((2..6).flat_map(|b| (0..8).map(move |bit| (0x25, b, bit))));
    want.push((0x25, 8, 0));
    want.push((0x35, 1, 1));
    want.push((0x91, 1, 1));
    want.extend((2..10).flat_map(|b| (0..8).map(move |bit| (0x9E, b, bit))));
    want.push((0x9E, 14, 0));
    assert_eq!(ignored, want);
}

// ---------------------------------------------------------------------------------
// Unit attentions, resets, capacity

#[test]
fn lun_reset_reports_bus_device_reset_once() {
    let (mut t, _) = target();
    assert!(t.lun_reset(0));
    assert!(!t.lun_reset(1));
    let (o, _) = run(&mut t, &read10(0, 1), &[], 512);
    check(&o, 0x06, 0x29, 0x03);
    good(&mut t, &read10(0, 1), &[], 512);
}

#[test]
fn target_reset_reports_power_on_reset_on_every_lun() {
    let mut t = target_with_luns(&[0, 4]);
    // Clear the REPORTED LUNS DATA HAS CHANGED from adding LUN 4.
    run_on(&mut t, 0, &TUR, &[], 0);
    t.target_reset();
    for lun in [0, 4] {
        let (o, _) = run_on(&mut t, lun, &TUR, &[], 0);
        check(&o, 0x06, 0x29, 0x00);
        let (o, _) = run_on(&mut t, lun, &TUR, &[], 0);
        assert_eq!(o.status, Status::GOOD);
    }
}

#[test]
fn inquiry_and_report_luns_leave_unit_attention_pending() {
    let (mut t, _) = target();
    t.lun_reset(0);
    good(&mut t, &inquiry(false, 0, 96), &[], 96);
    good(&mut t, &inquiry(true, 0x83, 96), &[], 96);
    good(&mut t, &report_luns(0, 64), &[], 64);
    let (o, _) = run(&mut t, &TUR, &[], 0);
    check(&o, 0x06, 0x29, 0x03);
}

#[test]
fn unit_attention_comes_before_cdb_checks() {
    let (mut t, _) = target();
    t.lun_reset(0);
    let (o, _) = run(&mut t, &[0x15, 0, 0, 0, 0, 0], &[], 0);
    check(&o, 0x06, 0x29, 0x03);
    let (o, _) = run(&mut t, &[0x15, 0, 0, 0, 0, 0], &[], 0);
    check(&o, 0x05, 0x20, 0x00);
}

#[test]
fn unit_attentions_are_reported_oldest_first_without_duplicates() {
    let (mut t, _) = target();
    t.lun_reset(0);
    t.set_capacity(0, 10).unwrap();
    t.lun_reset(0);
    assert_eq!(
        t.lun(0).unwrap().pending_unit_attention(),
        Some(Sense::BUS_DEVICE_RESET_FUNCTION)
    );
    let (o, _) = run(&mut t, &TUR, &[], 0);
    check(&o, 0x06, 0x29, 0x03);
    let (o, _) = run(&mut t, &TUR, &[], 0);
    check(&o, 0x06, 0x2A, 0x09);
    good(&mut t, &TUR, &[], 0);
}

#[test]
fn set_capacity_changes_read_capacity_and_reports_capacity_data_has_changed() {
    let (mut t, _) = target();
    t.set_capacity(0, 100).unwrap();
    assert_eq!(t.lun(0).unwrap().num_blocks(), 100);
    let (o, _) = run(&mut t, &READ_CAPACITY_10, &[], 8);
    check(&o, 0x06, 0x2A, 0x09);
    let d = good(&mut t, &READ_CAPACITY_10, &[], 8);
    assert_eq!(&d[..4], &[0, 0, 0, 99]);
    // The new capacity bounds I/O.
    let (o, _) = run(&mut t, &read10(100, 1), &[], 512);
    check(&o, 0x05, 0x21, 0x00);
    // Growing back within the disk works; the same value raises nothing.
    t.set_capacity(0, BLOCKS).unwrap();
    let (o, _) = run(&mut t, &TUR, &[], 0);
    check(&o, 0x06, 0x2A, 0x09);
    t.set_capacity(0, BLOCKS).unwrap();
    good(&mut t, &TUR, &[], 0);
}

#[test]
fn set_capacity_rejects_zero_oversize_and_missing_lun() {
    let (mut t, _) = target();
    assert_eq!(
        t.set_capacity(0, 0),
        Err(LunError::BadCapacity {
            lun: 0,
            num_blocks: 0,
            disk_blocks: BLOCKS
        })
    );
    assert!(matches!(
        t.set_capacity(0, BLOCKS + 1),
        Err(LunError::BadCapacity { .. })
    ));
    assert_eq!(t.set_capacity(5, 1), Err(LunError::NotFound { lun: 5 }));
    assert_eq!(t.lun(0).unwrap().pending_unit_attention(), None);
}

#[test]
fn adding_and_removing_luns_reports_reported_luns_data_has_changed() {
    let mut t = target_with_luns(&[0]);
    let (disk, _) = MemDisk::new(info(8, BS));
    t.add_lun(1, Lun::new(Box::new(disk), "b")).unwrap();
    // LUN 0 learns of the change; the new LUN has nothing pending.
    assert_eq!(t.lun(1).unwrap().pending_unit_attention(), None);
    let (o, _) = run_on(&mut t, 0, &TUR, &[], 0);
    check(&o, 0x06, 0x3F, 0x0E);
    good(&mut t, &TUR, &[], 0);
    // Removing raises it again; REPORT LUNS clears it.
    assert!(t.remove_lun(1).is_some());
    assert_eq!(
        t.lun(0).unwrap().pending_unit_attention(),
        Some(Sense::REPORTED_LUNS_DATA_HAS_CHANGED)
    );
    good(&mut t, &report_luns(0, 64), &[], 64);
    assert_eq!(t.lun(0).unwrap().pending_unit_attention(), None);
    good(&mut t, &TUR, &[], 0);
    assert!(t.remove_lun(1).is_none());
}

#[test]
fn add_lun_rejects_duplicates_and_unaddressable_ids() {
    let mut t = target_with_luns(&[0]);
    let (disk, _) = MemDisk::new(info(8, BS));
    assert_eq!(
        t.add_lun(0, Lun::new(Box::new(disk), "x")),
        Err(LunError::Exists { lun: 0 })
    );
    let (disk, _) = MemDisk::new(info(8, BS));
    assert_eq!(
        t.add_lun(0x4000, Lun::new(Box::new(disk), "x")),
        Err(LunError::OutOfRange { lun: 0x4000 })
    );
    assert_eq!(t.lun_ids().collect::<Vec<_>>(), vec![0]);
    assert_eq!(t.target_id(), 2);
}

// ---------------------------------------------------------------------------------
// Properties

/// Operation codes worth aiming at, so random CDBs reach the handlers.
const OPCODES: &[u8] = &[
    0x00, 0x03, 0x08, 0x0A, 0x12, 0x1A, 0x1B, 0x25, 0x28, 0x2A, 0x35, 0x41, 0x42, 0x5A, 0x88, 0x8A,
    0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA,
];

fn arb_cdb() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::option::weighted(0.8, prop::sample::select(OPCODES)),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec((0usize..16, any::<u8>()), 0..4),
    )
        .prop_map(|(opcode, mut cdb, small)| {
            if let Some(op) = opcode {
                if cdb.is_empty() {
                    cdb.push(op);
                } else {
                    cdb[0] = op;
                }
                // Mostly small numbers in a few places, so LBAs and lengths land in
                // range some of the time.
                for b in cdb.iter_mut().skip(1) {
                    *b &= 0x03;
                }
                for (i, v) in small {
                    if let Some(b) = cdb.get_mut(i + 1) {
                        *b = v;
                    }
                }
            }
            cdb
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn execute_never_panics(
        cmds in prop::collection::vec(
            (0u16..3, arb_cdb(), prop::collection::vec(any::<u8>(), 0..2048), 0usize..4096, 0u8..8),
            1..8,
        ),
        unmap in any::<bool>(),
        read_only in any::<bool>(),
    ) {
        let mut i = info(64, BS);
        i.unmap = unmap;
        i.read_only = read_only;
        let limits = Limits {
            max_transfer_blocks: 16,
            max_write_same_blocks: 32,
            ..Limits::default()
        };
        let (mut t, _) = target_with(i, limits);
        let (disk, _) = MemDisk::new(info(1, 4096));
        t.add_lun(1, Lun::new(Box::new(disk), "one")).unwrap();
        for (lun, cdb, data_out, data_in_len, event) in cmds {
            match event {
                0 => { t.lun_reset(lun); }
                1 => t.target_reset(),
                2 => { let _ = t.set_capacity(0, u64::from(lun) * 20 + 1); }
                _ => {}
            }
            let mut data_in = vec![0u8; data_in_len];
            let o = t.execute(lun, &cdb, &data_out, &mut data_in);
            prop_assert!(o.data_in_len <= data_in_len);
            match o.status {
                Status::GOOD => {
                    prop_assert!(o.sense.is_none());
                    prop_assert!(!o.overrun);
                }
                Status::CHECK_CONDITION => {
                    let b = o.sense.unwrap().fixed_format();
                    prop_assert_eq!(b[0] & 0x7F, 0x70);
                    prop_assert_eq!(o.data_in_len, 0);
                }
                s => prop_assert!(false, "unexpected status {:?}", s),
            }
        }
    }

    #[test]
    fn read_after_write_returns_the_data(
        writes in prop::collection::vec((0u64..256, 1u32..16, any::<u8>(), 0u8..4), 1..24),
    ) {
        let (mut t, _) = target_with(info(256, BS), Limits::default());
        let mut model = vec![0u8; 256 * 512];
        for (lba, blocks, seed, kind) in writes {
            let blocks = u64::from(blocks).min(256 - lba);
            let data = pattern(blocks as usize * 512, seed);
            let cdb: Vec<u8> = match kind {
                0 => write10(lba as u32, blocks as u16).to_vec(),
                1 => rw16(0x8A, lba, blocks as u32).to_vec(),
                2 => vec![0xAA, 0x08, 0, 0, 0, lba as u8, 0, 0, 0, blocks as u8, 0, 0],
                _ => vec![0x0A, 0, 0, lba as u8, blocks as u8, 0],
            };
            let (o, _) = run(&mut t, &cdb, &data, 0);
            prop_assert_eq!(o.status, Status::GOOD);
            let start = lba as usize * 512;
            model[start..start + data.len()].copy_from_slice(&data);
            // Read back a window around the write with READ(16).
            let from = lba.saturating_sub(2);
            let to = (lba + blocks + 2).min(256);
            let (o, d) = run(&mut t, &rw16(0x88, from, (to - from) as u32), &[], 256 * 512);
            prop_assert_eq!(o.status, Status::GOOD);
            prop_assert_eq!(&d[..], &model[from as usize * 512..to as usize * 512]);
        }
        let (_, d) = run(&mut t, &rw16(0x88, 0, 256), &[], 256 * 512);
        prop_assert_eq!(d, model);
    }
}
