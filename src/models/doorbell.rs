//! A sample device with doorbells, served by `vfio-io serve doorbell`.
//!
//! BAR0 (4 KiB, trapped) holds two doorbell registers and a counter:
//!
//! | offset | width | register |
//! | --- | --- | --- |
//! | 0x0 | 4 | ring: a write adds its value to the counter; writes of 1 may come through an ioeventfd (datamatch 1) |
//! | 0x4 | 4 | ring by count: a write adds its value; through its ioeventfd (no datamatch) the value is the number of writes |
//! | 0x8 | 8 | the counter, read-only |
//!
//! A client rings 0x0 with 1 once per event; every write, by message or
//! eventfd, reaches the counter exactly once. Reset zeroes it. The device
//! is a [`DescribedDevice`]: configuration space comes from its description.

use crate::device::{pci_region, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE};
use crate::error::{Error, Result};
use crate::models::described::{DescribedDevice, DeviceDesc, RegionDesc, RegionHandler};
use crate::user::server::{DeviceContext, Doorbell};

/// PCI vendor ID (QEMU's, as edu uses).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID of the doorbell device.
pub const DEVICE_ID: u16 = 0xd0be;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 0x1000;
/// The ring register: adds the value written; ioeventfd with datamatch 1.
pub const RING: u64 = 0x0;
/// The ring-by-count register: adds the value written; ioeventfd without
/// datamatch, so the value is the number of writes.
pub const RING_COUNT: u64 = 0x4;
/// The counter (8 bytes, read-only).
pub const COUNTER: u64 = 0x8;

/// The doorbell device's BAR0 registers. See the module docs.
#[derive(Debug, Default)]
pub struct DoorbellRegisters {
    counter: u64,
}

/// The doorbell device as served.
pub type DoorbellDevice = DescribedDevice<DoorbellRegisters>;

/// A doorbell device with its counter at zero.
pub fn new_device() -> Result<DoorbellDevice> {
    let bell = |offset, datamatch| Doorbell {
        region: pci_region::BAR0,
        offset,
        size: 4,
        datamatch,
    };
    let desc = DeviceDesc {
        vendor_id: VENDOR_ID,
        device_id: DEVICE_ID,
        class_code: 0xff_0000,
        regions: vec![RegionDesc {
            index: pci_region::BAR0,
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            size: BAR0_SIZE,
            fd: None,
            fd_offset: 0,
        }],
        reset: true,
        doorbells: vec![bell(RING, Some(1)), bell(RING_COUNT, None)],
        ..DeviceDesc::default()
    };
    DescribedDevice::new(desc, DoorbellRegisters::default())
}

impl RegionHandler for DoorbellRegisters {
    fn read(
        &mut self,
        _: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        if index != pci_region::BAR0 {
            return Err(Error::InvalidArgument(
                "the doorbell device has no such region",
            ));
        }
        let counter = self.counter.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = (offset + i as u64).checked_sub(COUNTER);
            *b = at
                .and_then(|o| counter.get(o as usize))
                .copied()
                .unwrap_or(0);
        }
        Ok(())
    }

    fn write(
        &mut self,
        _: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        if index != pci_region::BAR0 {
            return Err(Error::InvalidArgument(
                "the doorbell device has no such region",
            ));
        }
        // Other writes are ignored, as a real device's would be.
        if let (RING | RING_COUNT, Ok(v)) = (offset, <[u8; 4]>::try_from(data)) {
            self.counter = self.counter.wrapping_add(u32::from_le_bytes(v).into());
        }
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn DeviceContext) -> Result<()> {
        self.counter = 0;
        Ok(())
    }
}
