//! A sample device with shared memory, served by `vfio-io serve scratch`.
//!
//! BAR0 is 4 KiB of trapped scratch registers: every access is a message the
//! model answers. BAR2 is 64 KiB of a sealed memfd offered with its fd and
//! mmappable whole, so a client reaches it without messages. Reset zeroes
//! both. It is the device on which a vfio-user client maps an area, which
//! changes what its capability mask can promise (posted writes wait there).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::device::{
    pci_irq, pci_region, DeviceInfo, IrqInfo, RegionCap, RegionInfo, SparseArea,
    VFIO_DEVICE_FLAGS_RESET, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use crate::error::{Error, Result};
use crate::memory::DmaBuffer;
use crate::models::pci::{BarKind, PciConfig, CONFIG_SPACE_SIZE};
use crate::user::server::{DeviceContext, DeviceModel};

/// PCI vendor ID (QEMU's, as edu uses).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID of the scratch device.
pub const DEVICE_ID: u16 = 0x5c7c;
/// Size of BAR0, the trapped registers.
pub const BAR0_SIZE: u64 = 0x1000;
/// Size of BAR2, the shared memory.
pub const BAR2_SIZE: u64 = 0x10000;

/// The scratch device. See the module docs.
#[derive(Debug)]
pub struct Scratch {
    regs: Vec<u8>,
    bar2: DmaBuffer,
    bar2_fd: Arc<OwnedFd>,
    config: PciConfig,
}

impl Scratch {
    /// A device with zeroed registers and memory.
    pub fn new() -> Result<Self> {
        let bar2 = DmaBuffer::new(BAR2_SIZE as usize)?;
        let bar2_fd = Arc::new(
            bar2.fd()
                .try_clone_to_owned()
                .map_err(|e| Error::io("dup", e))?,
        );
        let memory = BarKind::Memory32 {
            prefetchable: false,
        };
        let config = PciConfig::new(VENDOR_ID, DEVICE_ID)
            .with_class_code(0xff_0000)
            .with_bar(0, memory, BAR0_SIZE)?
            .with_bar(2, memory, BAR2_SIZE)?;
        Ok(Scratch {
            regs: vec![0; BAR0_SIZE as usize],
            bar2,
            bar2_fd,
            config,
        })
    }

    /// Copies out of BAR2's memory as the device sees it.
    pub fn read_memory(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.bar2.read(offset, buf)
    }
}

fn byte_range(offset: u64, len: usize) -> std::ops::Range<usize> {
    // The server checked the range against the region's size.
    offset as usize..offset as usize + len
}

impl DeviceModel for Scratch {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo::pci(VFIO_DEVICE_FLAGS_RESET)
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let mut r = RegionInfo::plain(index, 0, 0);
        match index {
            pci_region::BAR0 => (r.flags, r.size) = (rw, BAR0_SIZE),
            pci_region::BAR2 => {
                (r.flags, r.size) = (rw | VFIO_REGION_INFO_FLAG_MMAP, BAR2_SIZE);
                r.caps = vec![RegionCap::SparseMmap(vec![SparseArea {
                    offset: 0,
                    size: BAR2_SIZE,
                }])];
                r.fd = Some(self.bar2_fd.clone());
            }
            pci_region::CONFIG => (r.flags, r.size) = (rw, CONFIG_SPACE_SIZE as u64),
            i if i < pci_region::COUNT => {}
            _ => return None,
        }
        Some(r)
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        (index < pci_irq::COUNT).then_some(IrqInfo::eventfd(index, 0))
    }

    fn region_read(
        &mut self,
        _: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        match index {
            pci_region::BAR0 => data.copy_from_slice(&self.regs[byte_range(offset, data.len())]),
            pci_region::BAR2 => self.bar2.read(offset as usize, data)?,
            pci_region::CONFIG => self.config.read(offset, data)?,
            _ => {
                return Err(Error::InvalidArgument(
                    "the scratch device has no such region",
                ))
            }
        }
        Ok(())
    }

    fn region_write(
        &mut self,
        _: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        match index {
            pci_region::BAR0 => self.regs[byte_range(offset, data.len())].copy_from_slice(data),
            pci_region::BAR2 => self.bar2.write(offset as usize, data)?,
            pci_region::CONFIG => self.config.write(offset, data)?,
            _ => {
                return Err(Error::InvalidArgument(
                    "the scratch device has no such region",
                ))
            }
        }
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn DeviceContext) -> Result<()> {
        self.regs.fill(0);
        self.bar2.write(0, &vec![0; BAR2_SIZE as usize])?;
        self.config.reset();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::memory::Mapping;

    #[test]
    fn bar2_is_one_mappable_area_backed_by_the_devices_memory() {
        let dev = Scratch::new().unwrap();
        let r = dev.region_info(pci_region::BAR2).unwrap();
        assert!(r.is_mappable());
        assert_eq!(r.mmap_areas()[0].size, BAR2_SIZE);
        let fd = r.fd.unwrap();
        let outside = Mapping::new(fd.as_fd(), 0, BAR2_SIZE as usize, true).unwrap();
        outside.write(0x100, b"seen").unwrap();
        let mut b = [0u8; 4];
        dev.read_memory(0x100, &mut b).unwrap();
        assert_eq!(&b, b"seen");
    }

    #[test]
    fn bar0_traps_and_config_names_the_device() {
        let dev = Scratch::new().unwrap();
        assert!(!dev.region_info(pci_region::BAR0).unwrap().is_mappable());
        let mut id = [0u8; 4];
        dev.config.read(0, &mut id).unwrap();
        assert_eq!(
            u32::from_le_bytes(id),
            u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16
        );
    }
}
