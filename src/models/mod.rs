//! Device models served over vfio-user by [`crate::user::server`], and the PCI
//! configuration space they share.
//!
//! * [`edu`]: QEMU's educational PCI device, the shared conformance target.
//! * [`scratch`]: a sample device whose BAR2 is shared memory a client maps.
//! * [`doorbell`]: a sample device whose doorbell writes may come through ioeventfds.
//! * [`described`]: a device given as plain data and callbacks (the C API's).
//! * [`pci`]: a type-0 PCI configuration space with writable masks and MSI.
//! * [`msix`]: an MSI-X capability with its table and PBA in a BAR of their own.

pub mod described;
pub mod doorbell;
pub mod edu;
pub mod msix;
pub mod pci;
pub mod scratch;
