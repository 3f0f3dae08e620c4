//! The legacy road: a VFIO container (/dev/vfio/vfio) holding an IOMMU group
//! (/dev/vfio/N), from which device fds are taken by PCI address.
//!
//! One group can be attached to only one container, and a group fd can be
//! open only once, so every device of one group must share them. A
//! process-wide registry keyed by group number hands out the live group (weak
//! references: the group closes when its last device does).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use vfio_bindings::bindings::vfio as uapi;

use super::{ioctl, open_rw};
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

/// Checks that a new container speaks this library's VFIO API and offers the
/// type1v2 IOMMU.
fn check_container(container: BorrowedFd<'_>) -> Result<()> {
    let version = ioctl::get_api_version(container)?;
    if version != uapi::VFIO_API_VERSION as i32 {
        return Err(Error::Unsupported(
            "VFIO API version differs from the one this library speaks",
        ));
    }
    if !ioctl::check_extension(container, uapi::VFIO_TYPE1v2_IOMMU)? {
        return Err(Error::Unsupported(
            "the VFIO container lacks the type1v2 IOMMU",
        ));
    }
    Ok(())
}

fn no_dev(op: &'static str) -> Error {
    Error::Errno {
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
        check_container(container.as_fd())?;
        let group = open_rw(&format!("/dev/vfio/{number}"), "open /dev/vfio/<group>")?;
        Group::attach(number, group, container)
    }

    /// Puts a viable group into `container` and gives the container its
    /// type1v2 IOMMU (which needs a group in it first).
    fn attach(number: u32, group: OwnedFd, container: OwnedFd) -> Result<Group> {
        let status = ioctl::group_status(group.as_fd())?;
        if status & uapi::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::Errno {
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
        Group::get_or_open(number, Group::open)
    }

    /// The live group `number`, or the one `open` makes. The registry holds
    /// no strong reference, so the group closes with its last device.
    fn get_or_open(number: u32, open: impl FnOnce(u32) -> Result<Group>) -> Result<Arc<Group>> {
        // A poisoned lock only means another thread panicked while holding
        // it; the map of weak references is still consistent.
        let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = groups.get(&number).and_then(Weak::upgrade) {
            return Ok(g);
        }
        let g = Arc::new(open(number)?);
        groups.retain(|_, w| w.strong_count() > 0);
        groups.insert(number, Arc::downgrade(&g));
        Ok(g)
    }

    /// The fd of the group's device named `name` (its PCI address).
    fn device(&self, name: &str) -> Result<OwnedFd> {
        let name = CString::new(name).map_err(|_| Error::InvalidArgument("PCI address"))?;
        ioctl::group_get_device_fd(self.group.as_fd(), &name)
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
            return Err(Error::Errno {
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
    let fd = group.device(&addr)?;
    Ok((group, fd))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nix::errno::Errno;

    use super::super::mock_kernel::{MockFd, Script};
    use super::*;

    /// Group `number` attached to a container, both mock objects.
    fn attached(number: u32) -> (Group, MockFd, MockFd) {
        let (group, container) = (
            MockFd::new(Script::default()),
            MockFd::new(Script::default()),
        );
        let g = Group::attach(number, group.fd(), container.fd()).unwrap();
        (g, group, container)
    }

    fn map(vaddr: u64, readable: bool, writable: bool) -> DmaMap {
        DmaMap {
            iova: 0x10_0000,
            size: 0x1000,
            vaddr,
            fd: -1,
            offset: 0,
            readable,
            writable,
        }
    }

    #[test]
    fn a_container_must_speak_api_0_and_offer_type1v2() {
        let good = MockFd::new(Script::default());
        check_container(good.fd().as_fd()).unwrap();
        // VFIO_TYPE1v2_IOMMU is 3.
        assert_eq!(good.vals_sent(ioctl::VFIO_CHECK_EXTENSION), [3]);
        let newer = MockFd::new(Script {
            api_version: 1,
            ..Script::default()
        });
        let e = check_container(newer.fd().as_fd()).unwrap_err();
        assert!(e.to_string().contains("API version"), "{e}");
        let without = MockFd::new(Script {
            extensions: vec![uapi::VFIO_TYPE1_IOMMU],
            ..Script::default()
        });
        let e = check_container(without.fd().as_fd()).unwrap_err();
        assert!(e.to_string().contains("type1v2"), "{e}");
    }

    #[test]
    fn attach_puts_the_group_in_the_container_then_sets_type1v2() {
        let (g, group, container) = attached(5);
        assert_eq!(g.number(), 5);
        assert_eq!(
            group.requests(),
            [
                ioctl::VFIO_GROUP_GET_STATUS,
                ioctl::VFIO_GROUP_SET_CONTAINER
            ]
        );
        assert_eq!(
            group.vals_sent(ioctl::VFIO_GROUP_SET_CONTAINER),
            [container.inode()]
        );
        assert_eq!(container.vals_sent(ioctl::VFIO_SET_IOMMU), [3]);
    }

    #[test]
    fn a_group_that_is_not_viable_is_ebusy_and_left_alone() {
        let group = MockFd::new(Script {
            group_flags: 0,
            ..Script::default()
        });
        let container = MockFd::new(Script::default());
        let e = Group::attach(5, group.fd(), container.fd()).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(e.to_string().contains("not viable"), "{e}");
        assert_eq!(group.requests(), [ioctl::VFIO_GROUP_GET_STATUS]);
        assert!(container.requests().is_empty());
    }

    #[test]
    fn a_refused_iommu_type_fails_the_attach_with_its_errno() {
        let group = MockFd::new(Script::default());
        let container = MockFd::new(Script {
            fail: vec![(ioctl::VFIO_SET_IOMMU, Errno::EPERM)],
            ..Script::default()
        });
        let e = Group::attach(5, group.fd(), container.fd()).unwrap_err();
        assert_eq!(e.errno(), libc::EPERM);
        assert!(e.to_string().contains("VFIO_SET_IOMMU"), "{e}");
    }

    // Each registry test uses its own group numbers: the registry is shared
    // by every test of the process.
    #[test]
    fn one_group_number_is_opened_once_while_in_use() {
        let opens = AtomicUsize::new(0);
        let open = |n| {
            opens.fetch_add(1, Ordering::SeqCst);
            Ok(attached(n).0)
        };
        let a = Group::get_or_open(9001, open).unwrap();
        let b = Group::get_or_open(9001, open).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        // The registry holds no strong reference of its own.
        assert_eq!(Arc::strong_count(&a), 2);
        let other = Group::get_or_open(9002, open).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(opens.load(Ordering::SeqCst), 2);
        drop((a, b));
        let again = Group::get_or_open(9001, open).unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 3, "closed with its last user");
        assert_eq!(again.number(), 9001);
    }

    #[test]
    fn a_failed_open_is_not_remembered() {
        let e = Group::get_or_open(9003, |_| {
            Err(Error::Errno {
                op: "open /dev/vfio/<group>",
                errno: libc::EACCES,
            })
        })
        .unwrap_err();
        assert_eq!(e.errno(), libc::EACCES);
        let g = Group::get_or_open(9003, |n| Ok(attached(n).0)).unwrap();
        assert_eq!(g.number(), 9003);
    }

    #[test]
    fn devices_are_taken_from_the_group_by_name() {
        let dev = MockFd::new(Script {
            device_flags: 0x2,
            ..Script::default()
        });
        let group = MockFd::new(Script {
            devices: vec![("0000:00:01.0".into(), Arc::new(dev.fd()))],
            ..Script::default()
        });
        let container = MockFd::new(Script::default());
        let g = Group::attach(1, group.fd(), container.fd()).unwrap();
        let fd = g.device("0000:00:01.0").unwrap();
        // The fd reaches the named device.
        assert_eq!(ioctl::device_info(fd.as_fd()).unwrap().flags, 0x2);
        let e = g.device("0000:00:02.0").unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV);
        assert!(e.to_string().contains("VFIO_GROUP_GET_DEVICE_FD"), "{e}");
        assert_eq!(
            group.bytes_sent(ioctl::VFIO_GROUP_GET_DEVICE_FD),
            [&b"0000:00:01.0\0"[..], &b"0000:00:02.0\0"[..]]
        );
        assert_eq!(g.device("0000\0:00").unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn container_maps_carry_the_address_and_the_access() {
        let (g, _group, container) = attached(5);
        g.map(&map(0x7f00_0000_0000, true, false)).unwrap();
        g.map(&map(0x7f00_0000_1000, false, true)).unwrap();
        let m = container.structs_sent::<uapi::vfio_iommu_type1_dma_map>(ioctl::VFIO_IOMMU_MAP_DMA);
        // argsz 32; VFIO_DMA_MAP_FLAG_READ 1, WRITE 2.
        assert_eq!((m[0].argsz, m[0].flags), (32, 1));
        assert_eq!(
            (m[0].vaddr, m[0].iova, m[0].size),
            (0x7f00_0000_0000, 0x10_0000, 0x1000)
        );
        assert_eq!((m[1].flags, m[1].vaddr), (2, 0x7f00_0000_1000));
        container.forget_requests();
        let e = g.map(&map(0, true, true)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(container.requests().is_empty(), "refused before the kernel");
    }

    #[test]
    fn a_container_unmap_of_nothing_is_enoent() {
        let (g, _group, container) = attached(5);
        g.map(&map(0x7f00_0000_0000, true, true)).unwrap();
        g.unmap(0x10_0000, 0x1000).unwrap();
        let u =
            container.structs_sent::<uapi::vfio_iommu_type1_dma_unmap>(ioctl::VFIO_IOMMU_UNMAP_DMA);
        assert_eq!((u[0].argsz, u[0].iova, u[0].size), (24, 0x10_0000, 0x1000));
        let e = g.unmap(0x10_0000, 0x1000).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(e.to_string().contains("no mapping"), "{e}");
    }

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
