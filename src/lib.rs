//! vfio-io: one set of device operations, with a truthful capability mask, over
//! kernel VFIO and vfio-user, for Rust and (through `include/vfio-io.h`) for C.
//!
//! * [`device::DeviceIo`]: the operations (QEMU's `VFIODeviceIOOps`).
//! * [`caps::Capabilities`]: what a backend, and each device, can do.
//! * [`user`]: the vfio-user protocol, a client backend and a device server.
//! * [`kernel`]: the kernel VFIO backend (container/group and iommufd).
//! * [`edu`]: QEMU's educational PCI device, as a vfio-user device model.
//! * [`scratch`]: a sample device whose BAR2 is shared memory a client maps.
//! * [`conformance`]: the edu suite that every backend must pass.

#![deny(missing_docs)]

mod bytes;
pub mod caps;
pub mod conformance;
pub mod device;
pub mod edu;
pub mod error;
pub mod ffi;
pub mod kernel;
pub mod memory;
pub mod pci;
pub mod region_info;
pub mod scratch;
pub mod user;

pub use caps::Capabilities;
pub use device::DeviceIo;
pub use error::{Error, Result};
