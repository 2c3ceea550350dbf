//! Fuzzes standard INQUIRY and every VPD page parser: any bytes, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vbdev_scsi::{
    BlockDeviceCharacteristics, BlockLimits, DeviceIdentification, LogicalBlockProvisioning,
    StandardInquiry, vpd,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = StandardInquiry::parse(data) {
        assert!(data.len() >= 36);
        assert!(i.device_type.get() <= 0x1F);
    }
    let _ = vpd::parse_supported_pages(data);
    let _ = vpd::parse_unit_serial_number(data);
    if let Ok(p) = DeviceIdentification::parse(data) {
        let _ = p.unique_id();
    }
    let _ = BlockLimits::parse(data);
    let _ = BlockDeviceCharacteristics::parse(data);
    let _ = LogicalBlockProvisioning::parse(data);
});
