//! vfio-io: one set of device operations, with a truthful capability mask, over
//! kernel VFIO and vfio-user, for Rust and (through `include/vfio-io.h`) for C.
//!
//! * [`device::DeviceIo`]: the operations (QEMU's `VFIODeviceIOOps`).
//! * [`caps::Capabilities`]: what a backend, and each device, can do.
//! * [`dirty::DirtyTracking`]: dirty-page tracking (DMA logging) on any backend.
//! * [`user`]: the vfio-user protocol, a client backend and a device server.
//! * [`kernel`]: the kernel VFIO backend (container/group and iommufd).
//! * [`models`]: device models to serve: QEMU's edu, a shared-memory sample, PCI config space.
//! * [`conformance`]: the edu suite that every backend must pass.

#![deny(missing_docs)]

mod bytes;
pub mod caps;
pub mod conformance;
pub mod device;
pub mod dirty;
pub mod error;
pub mod ffi;
pub mod kernel;
pub mod memory;
pub mod migration;
pub mod models;
pub mod region_info;
pub mod user;

pub use caps::Capabilities;
pub use device::DeviceIo;
pub use error::{Error, Result};
