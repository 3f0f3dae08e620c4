//! The iommufd road: a VFIO device cdev (/dev/vfio/devices/vfioN) bound to
//! its own iommufd (/dev/iommu) and attached to a fresh IO address space.
//!
//! Each device gets its own iommufd and IOAS: nothing is shared, so there is
//! no registry, and closing the device releases everything.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{ioctl, open_rw};
use crate::device::DmaMap;
use crate::error::{Error, Result};

/// An iommufd with one IOAS that the device is attached to.
#[derive(Debug)]
pub struct Iommufd {
    fd: OwnedFd,
    ioas: u32,
}

/// Opens the cdev at `path`, binds it to a new iommufd and attaches it to a
/// new IOAS.
pub fn open_device(path: &str) -> Result<(Iommufd, OwnedFd)> {
    // Open the device first: a wrong path is the likeliest mistake, and its
    // errno (ENOENT) says so better than anything from /dev/iommu would.
    let dev = open_rw(path, "open VFIO device cdev")?;
    let fd = open_rw("/dev/iommu", "open /dev/iommu")?;
    let ctx = Iommufd::attach(dev.as_fd(), fd)?;
    Ok((ctx, dev))
}

impl Iommufd {
    /// Binds `dev` to the iommufd `fd` and attaches it to a new IOAS there.
    pub(super) fn attach(dev: BorrowedFd<'_>, fd: OwnedFd) -> Result<Iommufd> {
        ioctl::bind_iommufd(dev, fd.as_fd())?;
        let ioas = ioctl::ioas_alloc(fd.as_fd())?;
        // From here a failure drops `ctx`, which destroys the IOAS.
        let ctx = Iommufd { fd, ioas };
        ioctl::attach_iommufd_pt(dev, ctx.ioas)?;
        Ok(ctx)
    }

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

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use nix::errno::Errno;
    use vfio_bindings::bindings::vfio as uapi;

    use super::super::mock_kernel::{MockFd, Script};
    use super::*;

    fn iommufd() -> MockFd {
        MockFd::new(Script {
            ioas_id: 42,
            ..Script::default()
        })
    }

    fn map(vaddr: u64, fd: i32) -> DmaMap {
        DmaMap {
            iova: 0x10_0000,
            size: 0x2000,
            vaddr,
            fd,
            offset: 0x3000,
            readable: true,
            writable: false,
        }
    }

    #[test]
    fn attach_binds_allocates_and_attaches_to_that_ioas() {
        let (dev, iommu) = (MockFd::new(Script::default()), iommufd());
        let ctx = Iommufd::attach(dev.fd().as_fd(), iommu.fd()).unwrap();
        assert_eq!(ctx.ioas, 42);
        assert_eq!(
            dev.requests(),
            [
                ioctl::VFIO_DEVICE_BIND_IOMMUFD,
                ioctl::VFIO_DEVICE_ATTACH_IOMMUFD_PT
            ]
        );
        let bind =
            dev.structs_sent::<uapi::vfio_device_bind_iommufd>(ioctl::VFIO_DEVICE_BIND_IOMMUFD);
        assert_eq!(bind[0].iommufd, ctx.fd.as_raw_fd());
        let at = dev.structs_sent::<uapi::vfio_device_attach_iommufd_pt>(
            ioctl::VFIO_DEVICE_ATTACH_IOMMUFD_PT,
        );
        // argsz, flags, pt_id and pasid.
        assert_eq!((at[0].argsz, at[0].pt_id), (16, 42));
        assert_eq!(iommu.requests(), [ioctl::IOMMU_IOAS_ALLOC]);
    }

    #[test]
    fn a_failed_attach_destroys_the_new_ioas() {
        let dev = MockFd::new(Script {
            fail: vec![(ioctl::VFIO_DEVICE_ATTACH_IOMMUFD_PT, Errno::EPERM)],
            ..Script::default()
        });
        let iommu = iommufd();
        let e = Iommufd::attach(dev.fd().as_fd(), iommu.fd()).unwrap_err();
        assert_eq!(e.errno(), libc::EPERM);
        assert!(
            e.to_string().contains("VFIO_DEVICE_ATTACH_IOMMUFD_PT"),
            "{e}"
        );
        let destroyed = iommu.structs_sent::<ioctl::IommuDestroy>(ioctl::IOMMU_DESTROY);
        assert_eq!(destroyed.len(), 1);
        assert_eq!((destroyed[0].size, destroyed[0].id), (8, 42));
    }

    #[test]
    fn dropping_destroys_the_ioas() {
        let (dev, iommu) = (MockFd::new(Script::default()), iommufd());
        let ctx = Iommufd::attach(dev.fd().as_fd(), iommu.fd()).unwrap();
        assert!(iommu
            .structs_sent::<ioctl::IommuDestroy>(ioctl::IOMMU_DESTROY)
            .is_empty());
        drop(ctx);
        let destroyed = iommu.structs_sent::<ioctl::IommuDestroy>(ioctl::IOMMU_DESTROY);
        assert_eq!(destroyed.iter().map(|d| d.id).collect::<Vec<_>>(), [42]);
    }

    #[test]
    fn maps_by_address_or_by_file_into_the_ioas() {
        let (dev, iommu) = (MockFd::new(Script::default()), iommufd());
        let ctx = Iommufd::attach(dev.fd().as_fd(), iommu.fd()).unwrap();
        iommu.forget_requests();
        ctx.map(&map(0x7f00_0000_0000, -1)).unwrap();
        let m = iommu.structs_sent::<ioctl::IommuIoasMap>(ioctl::IOMMU_IOAS_MAP);
        // FIXED_IOVA 1 | READABLE 4, not WRITEABLE 2.
        assert_eq!((m[0].size, m[0].flags, m[0].ioas_id), (40, 0x5, 42));
        assert_eq!(
            (m[0].user_va, m[0].length, m[0].iova),
            (0x7f00_0000_0000, 0x2000, 0x10_0000)
        );
        ctx.unmap(0x10_0000, 0x2000).unwrap();
        ctx.map(&map(0, 9)).unwrap();
        let f = iommu.structs_sent::<ioctl::IommuIoasMapFile>(ioctl::IOMMU_IOAS_MAP_FILE);
        assert_eq!((f[0].size, f[0].flags, f[0].ioas_id), (40, 0x5, 42));
        assert_eq!(
            (f[0].fd, f[0].start, f[0].length, f[0].iova),
            (9, 0x3000, 0x2000, 0x10_0000)
        );
        iommu.forget_requests();
        let e = ctx.map(&map(0, -1)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(iommu.requests().is_empty(), "refused before the kernel");
    }

    #[test]
    fn unmap_names_the_ioas_and_a_missing_mapping_is_enoent() {
        let (dev, iommu) = (MockFd::new(Script::default()), iommufd());
        let ctx = Iommufd::attach(dev.fd().as_fd(), iommu.fd()).unwrap();
        ctx.map(&map(0x1000, -1)).unwrap();
        ctx.unmap(0x10_0000, 0x2000).unwrap();
        let u = iommu.structs_sent::<ioctl::IommuIoasUnmap>(ioctl::IOMMU_IOAS_UNMAP);
        assert_eq!(
            (u[0].size, u[0].ioas_id, u[0].iova, u[0].length),
            (24, 42, 0x10_0000, 0x2000)
        );
        let e = ctx.unmap(0x10_0000, 0x2000).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(e.to_string().contains("IOMMU_IOAS_UNMAP"), "{e}");
    }
}
