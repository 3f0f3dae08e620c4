//! The kernel VFIO backend, over both of the kernel's roads to a device:
//!
//! * a PCI address (`0000:00:01.0`) takes the legacy road: the device's IOMMU
//!   group (/dev/vfio/N) in a type1v2 container (/dev/vfio/vfio);
//! * a cdev path (`/dev/vfio/devices/vfioN`) takes the iommufd road: the
//!   device bound to /dev/iommu and attached to its own IO address space.
//!
//! Both end in a [`KernelDevice`] implementing [`crate::DeviceIo`], whose
//! capability mask is probed once at open.

mod container;
mod device;
mod ioctl;
mod iommufd;
mod migration;
#[cfg(test)]
mod mock_kernel;
mod probe;
mod region;

pub use container::parse_pci_address;
pub use device::KernelDevice;
pub use probe::BACKEND as BACKEND_CAPABILITIES;

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;

use crate::error::{Error, Result};

/// Opens a device by PCI address (container road) or by the path of its
/// VFIO cdev (iommufd road).
pub fn open(path: &str) -> Result<KernelDevice> {
    if path.starts_with('/') {
        KernelDevice::open_cdev(path)
    } else if parse_pci_address(path).is_some() {
        KernelDevice::open_pci(path)
    } else {
        Err(Error::InvalidArgument(
            "expected a PCI address (DDDD:BB:DD.F) or a /dev/vfio/devices/vfioN path",
        ))
    }
}

/// Opens a VFIO or iommufd device node for reading and writing; a failure
/// keeps the OS errno with `op`.
fn open_rw(path: &str, op: &'static str) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io(op, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pci_address_is_a_clear_enodev() {
        let e = open("0000:99:99.9").unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV, "{e}");
        assert!(
            e.to_string().contains("no PCI device at that address"),
            "{e}"
        );
    }

    #[test]
    fn missing_cdev_is_enoent_with_the_io_error_as_source() {
        let e = open("/dev/vfio/devices/vfio-none").unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
        let source = std::error::Error::source(&e).expect("the io::Error is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn garbage_is_einval() {
        assert_eq!(open("hello").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(open("").unwrap_err().errno(), libc::EINVAL);
    }
}
