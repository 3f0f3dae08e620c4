//! The legacy road: a VFIO container (/dev/vfio/vfio) holding an IOMMU group
//! (/dev/vfio/N), from which device fds are taken by PCI address.
//!
//! One group can be attached to only one container, and a group fd can be
//! open only once, so every device of one group must share them. A
//! process-wide registry keyed by group number hands out the live group (weak
//! references: the group closes when its last device does).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use vfio_bindings::bindings::vfio as uapi;

use super::ioctl;
use crate::device::DmaMap;
use crate::error::{Error, Result};

/// An IOMMU group attached to its own type1v2 container.
#[derive(Debug)]
pub struct Group {
    number: u32,
    // Dropped first: closing the group detaches it from the container.
    group: OwnedFd,
    container: OwnedFd,
}

static GROUPS: Mutex<BTreeMap<u32, Weak<Group>>> = Mutex::new(BTreeMap::new());

/// Checks the shape of a PCI address, `DDDD:BB:DD.F` (or `BB:DD.F`, taken as
/// domain 0), and returns it in the full lower-case form sysfs uses.
pub fn parse_pci_address(s: &str) -> Option<String> {
    let full = match s.len() {
        7 => format!("0000:{s}"),
        12 => s.to_string(),
        _ => return None,
    };
    let b = full.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    // Only the shape is checked: whether such a device exists (and so whether
    // device and function are in range) is for sysfs to say, as ENODEV.
    if !(hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && hex(11..12))
    {
        return None;
    }
    Some(full.to_ascii_lowercase())
}

fn no_dev(op: &'static str) -> Error {
    Error::Sys {
        op,
        errno: libc::ENODEV,
    }
}

/// Finds the IOMMU group number of the PCI device at `addr` (normalised),
/// checking on the way that it exists and is bound to vfio-pci.
fn group_of(sysfs: &Path) -> Result<u32> {
    if !sysfs.exists() {
        return Err(no_dev("open: no PCI device at that address"));
    }
    let driver = std::fs::read_link(sysfs.join("driver"))
        .map_err(|_| no_dev("open: the PCI device has no driver: bind it to vfio-pci"))?;
    if driver.file_name().and_then(|n| n.to_str()) != Some("vfio-pci") {
        return Err(no_dev(
            "open: the PCI device is bound to another driver than vfio-pci",
        ));
    }
    let link = std::fs::read_link(sysfs.join("iommu_group"))
        .map_err(|_| no_dev("open: the PCI device has no IOMMU group (is the IOMMU enabled?)"))?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or(no_dev("open: unreadable IOMMU group link"))
}

fn open_rw(path: &str, op: &'static str) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io(op, &e))
}

impl Group {
    /// The group's number (N of /dev/vfio/N).
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The container fd, for DMA mappings.
    pub fn container(&self) -> BorrowedFd<'_> {
        self.container.as_fd()
    }

    /// Opens group `number` in a new type1v2 container.
    fn open(number: u32) -> Result<Group> {
        let container = open_rw("/dev/vfio/vfio", "open /dev/vfio/vfio")?;
        let version = ioctl::get_api_version(container.as_fd())?;
        if version != uapi::VFIO_API_VERSION as i32 {
            return Err(Error::Unsupported(
                "VFIO API version differs from the one this library speaks",
            ));
        }
        if !ioctl::check_extension(container.as_fd(), uapi::VFIO_TYPE1v2_IOMMU)? {
            return Err(Error::Unsupported(
                "the VFIO container lacks the type1v2 IOMMU",
            ));
        }
        let group = open_rw(&format!("/dev/vfio/{number}"), "open /dev/vfio/<group>")?;
        let status = ioctl::group_status(group.as_fd())?;
        if status & uapi::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::Sys {
                op: "VFIO group is not viable: bind every device of the IOMMU group to vfio-pci",
                errno: libc::EBUSY,
            });
        }
        ioctl::group_set_container(group.as_fd(), container.as_fd())?;
        ioctl::set_iommu(container.as_fd(), uapi::VFIO_TYPE1v2_IOMMU)?;
        Ok(Group {
            number,
            group,
            container,
        })
    }

    /// The live group `number`, or a newly opened one.
    fn get(number: u32) -> Result<Arc<Group>> {
        // A poisoned lock only means another thread panicked while holding
        // it; the map of weak references is still consistent.
        let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = groups.get(&number).and_then(Weak::upgrade) {
            return Ok(g);
        }
        let g = Arc::new(Group::open(number)?);
        groups.retain(|_, w| w.strong_count() > 0);
        groups.insert(number, Arc::downgrade(&g));
        Ok(g)
    }

    /// `VFIO_IOMMU_MAP_DMA`.
    pub fn map(&self, map: &DmaMap) -> Result<()> {
        if map.vaddr == 0 {
            return Err(Error::InvalidArgument(
                "a container mapping needs the host virtual address",
            ));
        }
        let mut flags = 0;
        if map.readable {
            flags |= uapi::VFIO_DMA_MAP_FLAG_READ;
        }
        if map.writable {
            flags |= uapi::VFIO_DMA_MAP_FLAG_WRITE;
        }
        let mut m = uapi::vfio_iommu_type1_dma_map {
            flags,
            vaddr: map.vaddr,
            iova: map.iova,
            size: map.size,
            ..Default::default()
        };
        ioctl::iommu_map_dma(self.container(), &mut m)
    }

    /// `VFIO_IOMMU_UNMAP_DMA`.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<()> {
        let mut u = uapi::vfio_iommu_type1_dma_unmap {
            iova,
            size,
            ..Default::default()
        };
        ioctl::iommu_unmap_dma(self.container(), &mut u)?;
        // The kernel reports what it unmapped; nothing means nothing was there.
        if u.size == 0 {
            return Err(Error::Sys {
                op: "VFIO_IOMMU_UNMAP_DMA: no mapping at that IOVA",
                errno: libc::ENOENT,
            });
        }
        Ok(())
    }
}

/// Opens the device at PCI address `addr` through its group and container.
pub fn open_device(addr: &str) -> Result<(Arc<Group>, OwnedFd)> {
    let addr = parse_pci_address(addr)
        .ok_or(Error::InvalidArgument("not a PCI address (DDDD:BB:DD.F)"))?;
    let number = group_of(&Path::new("/sys/bus/pci/devices").join(&addr))?;
    let group = Group::get(number)?;
    let name = CString::new(addr).map_err(|_| Error::InvalidArgument("PCI address"))?;
    let fd = ioctl::group_get_device_fd(group.group.as_fd(), &name)?;
    Ok((group, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(
            parse_pci_address("0000:00:01.0").as_deref(),
            Some("0000:00:01.0")
        );
        assert_eq!(
            parse_pci_address("00:1f.7").as_deref(),
            Some("0000:00:1f.7")
        );
        assert_eq!(
            parse_pci_address("ABCD:EF:1F.3").as_deref(),
            Some("abcd:ef:1f.3")
        );
        assert_eq!(
            parse_pci_address("0000:99:99.9").as_deref(),
            Some("0000:99:99.9")
        );
        for bad in [
            "",
            "0000:00:01",
            "0000-00:01.0",
            "0000:0g:01.0",
            "/dev/vfio/1",
            "0000:00:01.0 ",
            "é000:00:01.0",
        ] {
            assert_eq!(parse_pci_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unknown_device_is_enodev() {
        let e = open_device("0000:99:99.9").unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV);
        assert!(e.to_string().contains("no PCI device"), "{e}");
        assert_eq!(
            open_device("not-an-address").unwrap_err().errno(),
            libc::EINVAL
        );
    }
}
