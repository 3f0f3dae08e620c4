//! [`KernelDevice`]: one device fd from either road, driven through
//! [`DeviceIo`].

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use vfio_bindings::bindings::vfio as uapi;

use super::container::Group;
use super::iommufd::Iommufd;
use super::{ioctl, probe, region};
use crate::caps::{Capabilities, CapabilityRecord};
use crate::device::{DeviceInfo, DeviceIo, DmaMap, IrqData, IrqInfo, IrqSet, RegionInfo};
use crate::error::{Error, Result};

/// How the device's DMA is mapped: which road it was opened by.
#[derive(Debug)]
enum Iommu {
    Container(Arc<Group>),
    Iommufd(Iommufd),
}

/// A device opened through kernel VFIO, by either road.
#[derive(Debug)]
pub struct KernelDevice {
    // Declared first so it is closed first: the device must let go of its
    // group or iommufd binding before those are released.
    fd: Arc<OwnedFd>,
    iommu: Iommu,
    info: DeviceInfo,
    /// Region infos read at open; `None` where the kernel refused the index
    /// (vfio-pci does for absent regions such as VGA on a non-VGA device).
    regions: Vec<Option<RegionInfo>>,
    caps: CapabilityRecord,
}

/// sizeof(struct vfio_irq_set) without its data.
const IRQ_SET_HEADER: usize = std::mem::size_of::<uapi::vfio_irq_set>();
/// sizeof(struct vfio_device_feature) without its data.
const FEATURE_HEADER: usize = std::mem::size_of::<uapi::vfio_device_feature>();
/// A bound on one feature payload: the largest UAPI payload is tens of bytes
/// plus caller-sized range arrays; this keeps a bad length from allocating
/// without limit.
const MAX_FEATURE_DATA: usize = 1 << 20;

impl KernelDevice {
    fn new(fd: OwnedFd, iommu: Iommu) -> Result<Self> {
        let fd = Arc::new(fd);
        let raw = ioctl::device_info(fd.as_fd())?;
        let info = DeviceInfo {
            flags: raw.flags,
            num_regions: raw.num_regions,
            num_irqs: raw.num_irqs,
        };
        let regions = (0..info.num_regions)
            .map(|i| region::query(&fd, i).ok())
            .collect::<Vec<_>>();
        let caps = probe::device_caps(fd.as_fd(), &info, &regions);
        Ok(KernelDevice {
            fd,
            iommu,
            info,
            regions,
            caps,
        })
    }

    /// Opens by PCI address through the device's group and a type1v2 container.
    pub fn open_pci(addr: &str) -> Result<Self> {
        let (group, fd) = super::container::open_device(addr)?;
        Self::new(fd, Iommu::Container(group))
    }

    /// Opens a VFIO device cdev through iommufd.
    pub fn open_cdev(path: &str) -> Result<Self> {
        let (ctx, fd) = super::iommufd::open_device(path)?;
        Self::new(fd, Iommu::Iommufd(ctx))
    }

    /// The device fd (shared with the region infos that hand it out for mmap).
    pub fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    /// The IOMMU group number on the container road.
    pub fn group(&self) -> Option<u32> {
        match &self.iommu {
            Iommu::Container(g) => Some(g.number()),
            Iommu::Iommufd(_) => None,
        }
    }

    /// The file offset of `[offset, offset + len)` of region `index`, after
    /// checking the range lies inside the region.
    fn file_offset(&self, index: u32, offset: u64, len: usize) -> Result<u64> {
        if index >= self.info.num_regions {
            return Err(Error::InvalidArgument(
                "region index past the device's regions",
            ));
        }
        let r = self
            .regions
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::InvalidArgument("the device has no such region"))?;
        let end = offset
            .checked_add(len as u64)
            .ok_or(Error::InvalidArgument("region access overflows"))?;
        if end > r.size {
            return Err(Error::InvalidArgument(
                "region access past the region's end",
            ));
        }
        r.offset
            .checked_add(offset)
            .ok_or(Error::InvalidArgument("region offset overflows"))
    }
}

impl DeviceIo for KernelDevice {
    fn capability_record(&self) -> &CapabilityRecord {
        &self.caps
    }

    fn backend_capabilities(&self) -> Capabilities {
        probe::BACKEND
    }

    fn backend_name(&self) -> &'static str {
        match self.iommu {
            Iommu::Container(_) => "kernel-container",
            Iommu::Iommufd(_) => "kernel-iommufd",
        }
    }

    fn device_info(&self) -> Result<DeviceInfo> {
        Ok(self.info)
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        match self.regions.get(index as usize) {
            Some(Some(r)) => Ok(r.clone()),
            // Past the end, or refused at open: ask again so the caller gets
            // the kernel's own answer.
            _ => region::query(&self.fd, index),
        }
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        let i = ioctl::irq_info(self.fd.as_fd(), index)?;
        Ok(IrqInfo {
            index: i.index,
            flags: i.flags,
            count: i.count,
        })
    }

    fn set_irqs(&self, set: &IrqSet<'_>) -> Result<()> {
        set.validate()?;
        let mut buf = vec![0u8; IRQ_SET_HEADER];
        match set.data {
            IrqData::None => {}
            IrqData::Bool(b) => buf.extend_from_slice(b),
            IrqData::Eventfds(fds) => fds
                .iter()
                .for_each(|fd| buf.extend_from_slice(&fd.to_ne_bytes())),
        }
        buf[4..8].copy_from_slice(&set.flags().to_ne_bytes());
        buf[8..12].copy_from_slice(&set.index.to_ne_bytes());
        buf[12..16].copy_from_slice(&set.start.to_ne_bytes());
        buf[16..20].copy_from_slice(&set.count.to_ne_bytes());
        ioctl::set_irqs(self.fd.as_fd(), &mut buf)
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let mut at = self.file_offset(index, offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let off = i64::try_from(at).map_err(|_| Error::InvalidArgument("region offset"))?;
            let n = nix::sys::uio::pread(self.fd.as_fd(), &mut data[done..], off)
                .map_err(|e| Error::sys("pread region", e))?;
            if n == 0 {
                return Err(Error::Sys {
                    op: "pread region: short read",
                    errno: libc::EIO,
                });
            }
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8], _post: bool) -> Result<()> {
        // The kernel completes a pwrite before returning: there is nothing to
        // post, so `post` changes nothing here.
        let mut at = self.file_offset(index, offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let off = i64::try_from(at).map_err(|_| Error::InvalidArgument("region offset"))?;
            let n = nix::sys::uio::pwrite(self.fd.as_fd(), &data[done..], off)
                .map_err(|e| Error::sys("pwrite region", e))?;
            if n == 0 {
                return Err(Error::Sys {
                    op: "pwrite region: short write",
                    errno: libc::EIO,
                });
            }
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    fn device_feature(&self, flags: u32, data: &mut [u8]) -> Result<i32> {
        if data.len() > MAX_FEATURE_DATA {
            return Err(Error::InvalidArgument("feature payload too large"));
        }
        let mut buf = vec![0u8; FEATURE_HEADER + data.len()];
        buf[4..8].copy_from_slice(&flags.to_ne_bytes());
        buf[FEATURE_HEADER..].copy_from_slice(data);
        let ret = ioctl::device_feature(self.fd.as_fd(), &mut buf)?;
        if flags & uapi::VFIO_DEVICE_FEATURE_GET != 0 {
            data.copy_from_slice(&buf[FEATURE_HEADER..]);
        }
        Ok(ret)
    }

    fn reset(&self) -> Result<()> {
        ioctl::device_reset(self.fd.as_fd())
    }

    unsafe fn dma_map(&self, map: &DmaMap) -> Result<()> {
        match &self.iommu {
            Iommu::Container(g) => g.map(map),
            Iommu::Iommufd(i) => i.map(map),
        }
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
        match &self.iommu {
            Iommu::Container(g) => g.unmap(iova, size),
            Iommu::Iommufd(i) => i.unmap(iova, size),
        }
    }

    fn region_create_dma_buf(&self, index: u32, ranges: &[(u64, u64)]) -> Result<Option<OwnedFd>> {
        if !self.caps.mask().contains(Capabilities::DMA_BUF) {
            return Ok(None);
        }
        let nr = u32::try_from(ranges.len())
            .map_err(|_| Error::InvalidArgument("too many DMA-BUF ranges"))?;
        let dma_buf_size = std::mem::size_of::<uapi::vfio_device_feature_dma_buf>();
        let range_size = std::mem::size_of::<uapi::vfio_region_dma_range>();
        let len = ranges
            .len()
            .checked_mul(range_size)
            .and_then(|n| n.checked_add(FEATURE_HEADER + dma_buf_size))
            .filter(|&n| n <= FEATURE_HEADER + MAX_FEATURE_DATA)
            .ok_or(Error::InvalidArgument("too many DMA-BUF ranges"))?;
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // argsz, set by the ioctl layer
        buf.extend_from_slice(
            &(uapi::VFIO_DEVICE_FEATURE_GET | uapi::VFIO_DEVICE_FEATURE_DMA_BUF).to_ne_bytes(),
        );
        buf.extend_from_slice(&index.to_ne_bytes());
        let open_flags = (libc::O_CLOEXEC | libc::O_RDWR) as u32;
        buf.extend_from_slice(&open_flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // flags
        buf.extend_from_slice(&nr.to_ne_bytes());
        for &(offset, length) in ranges {
            buf.extend_from_slice(&offset.to_ne_bytes());
            buf.extend_from_slice(&length.to_ne_bytes());
        }
        ioctl::device_feature_fd(self.fd.as_fd(), &mut buf).map(Some)
    }
}
