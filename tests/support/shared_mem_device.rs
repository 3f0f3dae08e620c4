//! A test device with shared memory: BAR0 is 16 trapped bytes, BAR2 is a
//! memfd the client may mmap in part (one sparse area, [`AREA`]); the rest of
//! BAR2 traps. Unlike `vfio_io::models::scratch::Scratch`, whose BAR2 maps
//! whole, it keeps a trapped part of the same memory beside the area, and
//! it can be built on any fd (one the server could shrink, one shorter than
//! the area). Include it with
//! `#[path = "support/shared_mem_device.rs"] mod shared_mem_device;`.

// Each test binary (and the bench) uses a part of it.
#![allow(dead_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use vfio_io::device::{
    pci_irq, pci_region, DeviceInfo, IrqInfo, RegionCap, RegionInfo, SparseArea,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_io::memory::Mapping;
use vfio_io::user::server::{DeviceContext, DeviceModel};
use vfio_io::Result;

/// Size of BAR2.
pub const BAR2_SIZE: u64 = 0x4000;
/// BAR2's one sparse (mmappable) area; the rest of BAR2 is trapped.
pub const AREA: SparseArea = SparseArea {
    offset: 0x1000,
    size: 0x2000,
};
/// The vendor-specific region type BAR2 declares besides its area.
pub const BAR2_TYPE: RegionCap = RegionCap::Type {
    region_type: 0x8000_0000,
    subtype: 7,
};

/// The device. See the module docs.
pub struct SharedMemDevice {
    fd: Arc<OwnedFd>,
    map: Mapping,
    regs: [u8; 16],
}

impl SharedMemDevice {
    /// BAR2 backed by a new sealed memfd (the client maps only region fds
    /// that cannot shrink), zeroed.
    pub fn new() -> Self {
        let fd = vfio_io::memory::sealed_memfd(c"bar2", BAR2_SIZE as usize).expect("memfd");
        Self::with_memory(fd, BAR2_SIZE as usize)
    }

    /// BAR2 backed by the first `len` bytes of `fd`.
    pub fn with_memory(fd: OwnedFd, len: usize) -> Self {
        let map = Mapping::new(fd.as_fd(), 0, len, true).expect("map BAR2's memory");
        SharedMemDevice {
            fd: Arc::new(fd),
            map,
            regs: [0; 16],
        }
    }

    /// The fd behind BAR2, to look at the memory as the device does once the
    /// device itself has moved into a server.
    pub fn memory_fd(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }
}

/// The device's view of BAR2: a mapping of the whole of its memory `fd`.
pub fn device_view(fd: &OwnedFd) -> Mapping {
    Mapping::new(fd.as_fd(), 0, BAR2_SIZE as usize, true).expect("map BAR2's memory")
}

impl DeviceModel for SharedMemDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo::pci(0)
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let mut r = RegionInfo::plain(index, 0, 0);
        match index {
            pci_region::BAR0 => (r.flags, r.size) = (rw, 16),
            pci_region::BAR2 => {
                (r.flags, r.size) = (rw | VFIO_REGION_INFO_FLAG_MMAP, BAR2_SIZE);
                r.caps = vec![RegionCap::SparseMmap(vec![AREA]), BAR2_TYPE];
                r.fd = Some(self.fd.clone());
            }
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
        // The server checked the range against the region's size.
        let o = offset as usize;
        match index {
            pci_region::BAR0 => data.copy_from_slice(&self.regs[o..o + data.len()]),
            _ => self.map.read(o, data)?,
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
        let o = offset as usize;
        match index {
            pci_region::BAR0 => self.regs[o..o + data.len()].copy_from_slice(data),
            _ => self.map.write(o, data)?,
        }
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn DeviceContext) -> Result<()> {
        self.regs = [0; 16];
        Ok(())
    }
}
