//! The iommufd road: a VFIO device cdev (/dev/vfio/devices/vfioN) bound to
//! its own iommufd (/dev/iommu) and attached to a fresh IO address space.
//!
//! Each device gets its own iommufd and IOAS: nothing is shared, so there is
//! no registry, and closing the device releases everything.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};

use super::ioctl;
use crate::device::DmaMap;
use crate::error::{Error, Result};

/// An iommufd with one IOAS that the device is attached to.
#[derive(Debug)]
pub struct Iommufd {
    fd: OwnedFd,
    ioas: u32,
}

fn open_rw(path: &str, op: &'static str) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io(op, &e))
}

/// Opens the cdev at `path`, binds it to a new iommufd and attaches it to a
/// new IOAS.
pub fn open_device(path: &str) -> Result<(Iommufd, OwnedFd)> {
    // Open the device first: a wrong path is the likeliest mistake, and its
    // errno (ENOENT) says so better than anything from /dev/iommu would.
    let dev = open_rw(path, "open VFIO device cdev")?;
    let fd = open_rw("/dev/iommu", "open /dev/iommu")?;
    ioctl::bind_iommufd(dev.as_fd(), fd.as_fd())?;
    let ioas = ioctl::ioas_alloc(fd.as_fd())?;
    let ctx = Iommufd { fd, ioas };
    ioctl::attach_iommufd_pt(dev.as_fd(), ctx.ioas)?;
    Ok((ctx, dev))
}

impl Iommufd {
    /// Maps by virtual address, or from the fd when there is no address.
    pub fn map(&self, map: &DmaMap) -> Result<()> {
        let mut flags = ioctl::IOMMU_IOAS_MAP_FIXED_IOVA;
        if map.readable {
            flags |= ioctl::IOMMU_IOAS_MAP_READABLE;
        }
        if map.writable {
            flags |= ioctl::IOMMU_IOAS_MAP_WRITEABLE;
        }
        if map.vaddr != 0 {
            let mut m = ioctl::IommuIoasMap {
                flags,
                ioas_id: self.ioas,
                user_va: map.vaddr,
                length: map.size,
                iova: map.iova,
                ..Default::default()
            };
            ioctl::ioas_map(self.fd.as_fd(), &mut m)
        } else if map.fd >= 0 {
            let mut m = ioctl::IommuIoasMapFile {
                flags,
                ioas_id: self.ioas,
                fd: map.fd,
                start: map.offset,
                length: map.size,
                iova: map.iova,
                ..Default::default()
            };
            ioctl::ioas_map_file(self.fd.as_fd(), &mut m)
        } else {
            Err(Error::InvalidArgument(
                "a DMA mapping needs a virtual address or an fd",
            ))
        }
    }

    /// `IOMMU_IOAS_UNMAP` of exactly one earlier mapping.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<()> {
        let mut u = ioctl::IommuIoasUnmap {
            ioas_id: self.ioas,
            iova,
            length: size,
            ..Default::default()
        };
        ioctl::ioas_unmap(self.fd.as_fd(), &mut u)
    }
}

impl Drop for Iommufd {
    fn drop(&mut self) {
        // Best effort: while a RegionInfo still holds the device fd the IOAS
        // is busy, and closing the iommufd releases it anyway.
        let _ = ioctl::destroy(self.fd.as_fd(), self.ioas);
    }
}
