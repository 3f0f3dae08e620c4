//! The device operations every backend implements, and the types they speak.
//!
//! [`DeviceIo`] is the Rust form of QEMU's `VFIODeviceIOOps`: device feature,
//! region info, IRQ info, set IRQs, region read and write, plus the DMA map,
//! reset and DMA-BUF operations a VMM needs beside them.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use crate::caps::{Capabilities, CapabilityRecord};
use crate::error::{Error, Result};
use crate::migration::DeviceMigration;

pub use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

/// vfio-pci's fixed region indices (`VFIO_PCI_*_REGION_INDEX`).
pub mod pci_region {
    /// BAR0 .. BAR5 are regions 0 .. 5.
    pub const BAR0: u32 = 0;
    /// BAR2 (region 2).
    pub const BAR2: u32 = 2;
    /// The expansion ROM.
    pub const ROM: u32 = 6;
    /// PCI configuration space.
    pub const CONFIG: u32 = 7;
    /// Legacy VGA ranges.
    pub const VGA: u32 = 8;
    /// Number of fixed vfio-pci regions.
    pub const COUNT: u32 = 9;
}

/// vfio-pci's fixed IRQ indices (`VFIO_PCI_*_IRQ_INDEX`).
pub mod pci_irq {
    /// Legacy INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// Error reporting.
    pub const ERR: u32 = 3;
    /// Device request.
    pub const REQ: u32 = 4;
    /// Number of fixed vfio-pci IRQ indices.
    pub const COUNT: u32 = 5;
}

/// `struct vfio_device_info`, without argsz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// A vfio-pci device: every fixed region and IRQ index, with
    /// `VFIO_DEVICE_FLAGS_PCI` and `flags` (e.g. `VFIO_DEVICE_FLAGS_RESET`).
    pub fn pci(flags: u32) -> Self {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | flags,
            num_regions: pci_region::COUNT,
            num_irqs: pci_irq::COUNT,
        }
    }
}

/// One mmappable area of a region, relative to the region's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset of the area inside the region.
    pub offset: u64,
    /// Length of the area.
    pub size: u64,
}

/// One entry of a region info capability chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionCap {
    /// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: only these areas may be mmapped.
    SparseMmap(Vec<SparseArea>),
    /// `VFIO_REGION_INFO_CAP_TYPE`: a device-specific region's type.
    Type {
        /// Region type.
        region_type: u32,
        /// Region subtype.
        subtype: u32,
    },
    /// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: the MSI-X table's BAR may be mmapped.
    MsixMappable,
    /// A capability this library does not interpret, kept as it came.
    Other {
        /// Capability id.
        id: u16,
        /// Capability version.
        version: u16,
        /// The bytes after the capability header.
        data: Vec<u8>,
    },
}

/// `struct vfio_region_info` with its capability chain parsed.
#[derive(Debug, Clone, Default)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*` (CAPS is set when `caps` is not empty).
    pub flags: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Offset to pass to mmap() of `fd` (and the base of sparse areas).
    pub offset: u64,
    /// The capability chain.
    pub caps: Vec<RegionCap>,
    /// The fd to mmap the region through, when it is mappable: the device fd for
    /// kernel VFIO, the server's region fd for vfio-user.
    pub fd: Option<Arc<OwnedFd>>,
}

impl RegionInfo {
    /// Region `index` with `flags` and `size`: no capabilities, no fd.
    pub fn plain(index: u32, flags: u32, size: u64) -> Self {
        RegionInfo {
            index,
            flags,
            size,
            ..RegionInfo::default()
        }
    }

    /// Whether the region (or part of it) may be mmapped.
    pub fn is_mappable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && self.fd.is_some()
    }

    /// The mmappable areas: the sparse areas if the region has that capability,
    /// the whole region if it is mappable without one, else none.
    pub fn mmap_areas(&self) -> Vec<SparseArea> {
        if self.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Vec::new();
        }
        for cap in &self.caps {
            if let RegionCap::SparseMmap(areas) = cap {
                return areas.clone();
            }
        }
        vec![SparseArea {
            offset: 0,
            size: self.size,
        }]
    }
}

/// `struct vfio_irq_info`, without argsz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// IRQ index.
    pub index: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// Number of vectors of this index.
    pub count: u32,
}

impl IrqInfo {
    /// IRQ index `index`, signalled through eventfds, with `count` vectors.
    pub fn eventfd(index: u32, count: u32) -> Self {
        IrqInfo {
            index,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count,
        }
    }
}

/// What a SET_IRQS does (`VFIO_IRQ_SET_ACTION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask the vectors, or be told when they are masked (with eventfds).
    Mask,
    /// Unmask the vectors, or unmask them when an eventfd is signalled.
    Unmask,
    /// Trigger the vectors, or signal eventfds when the device triggers them.
    Trigger,
}

/// The data part of a SET_IRQS (`VFIO_IRQ_SET_DATA_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqData<'a> {
    /// Act on every vector in the range. With `Trigger` and count 0, disable the index.
    None,
    /// Act on the vectors whose byte is non-zero.
    Bool(&'a [u8]),
    /// Attach these eventfds (borrowed, not consumed); -1 detaches a vector.
    Eventfds(&'a [RawFd]),
}

/// One SET_IRQS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqSet<'a> {
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// The action.
    pub action: IrqAction,
    /// The data.
    pub data: IrqData<'a>,
}

impl IrqSet<'_> {
    /// The `flags` word of `struct vfio_irq_set` for this request.
    pub fn flags(&self) -> u32 {
        use vfio_bindings::bindings::vfio::*;
        let action = match self.action {
            IrqAction::Mask => VFIO_IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => VFIO_IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => VFIO_IRQ_SET_ACTION_TRIGGER,
        };
        let data = match self.data {
            IrqData::None => VFIO_IRQ_SET_DATA_NONE,
            IrqData::Bool(_) => VFIO_IRQ_SET_DATA_BOOL,
            IrqData::Eventfds(_) => VFIO_IRQ_SET_DATA_EVENTFD,
        };
        action | data
    }

    /// Checks that the data length matches `count`.
    pub fn validate(&self) -> Result<()> {
        let len = match self.data {
            IrqData::None => return Ok(()),
            IrqData::Bool(b) => b.len(),
            IrqData::Eventfds(f) => f.len(),
        };
        if len != self.count as usize {
            return Err(Error::InvalidArgument(
                "SET_IRQS data length differs from count",
            ));
        }
        Ok(())
    }
}

/// One DMA mapping of the caller's memory into the device's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    /// The device-visible address (IOVA) of the first byte.
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address of the first byte in this process (0 if unknown).
    /// Kernel VFIO needs it; the vfio-user client uses it to answer DMA_READ/WRITE.
    pub vaddr: u64,
    /// An fd backing the memory (memfd, shm), or -1. vfio-user passes it to the
    /// server so that it can mmap the memory; the fd is borrowed, not consumed.
    pub fd: RawFd,
    /// Offset of the first byte within `fd`.
    pub offset: u64,
    /// The device may read the memory.
    pub readable: bool,
    /// The device may write the memory.
    pub writable: bool,
}

/// The operations of one device, whatever the backend. Many threads may call
/// them on one device at once.
pub trait DeviceIo: Send + Sync {
    /// What this device really supports, learned at open (probe or negotiation).
    fn capabilities(&self) -> Capabilities {
        self.capability_record().mask()
    }

    /// How the device arrived at its mask while it opened: each bit granted or
    /// withheld, with what decided it.
    fn capability_record(&self) -> &CapabilityRecord;

    /// What the backend could ever support, on any device.
    fn backend_capabilities(&self) -> Capabilities;

    /// A short backend name, e.g. `vfio-user` or `kernel-iommufd`.
    fn backend_name(&self) -> &'static str;

    /// `VFIO_DEVICE_GET_INFO`.
    fn device_info(&self) -> Result<DeviceInfo>;

    /// `VFIO_DEVICE_GET_REGION_INFO`, capability chain parsed.
    fn region_info(&self, index: u32) -> Result<RegionInfo>;

    /// `VFIO_DEVICE_GET_IRQ_INFO`.
    fn irq_info(&self, index: u32) -> Result<IrqInfo>;

    /// `VFIO_DEVICE_SET_IRQS`.
    fn set_irqs(&self, set: &IrqSet<'_>) -> Result<()>;

    /// Reads `data.len()` bytes at `offset` of region `index`.
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()>;

    /// Writes `data` at `offset` of region `index`. With `post`, returns once the
    /// write is sent, without waiting for the device (where the backend can).
    fn region_write(&self, index: u32, offset: u64, data: &[u8], post: bool) -> Result<()>;

    /// `VFIO_DEVICE_FEATURE`: `flags` holds the feature index and GET/SET/PROBE;
    /// `data` is the feature payload, read for SET and overwritten for GET.
    /// Returns the non-negative value the kernel returns (an fd for DMA_BUF, which
    /// the caller then owns).
    fn device_feature(&self, flags: u32, data: &mut [u8]) -> Result<i32>;

    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> Result<()>;

    /// Maps memory for device DMA.
    ///
    /// # Safety
    /// If `map.vaddr` is not 0, `[vaddr, vaddr + size)` must stay valid, mapped
    /// memory of this process until it is unmapped or the device is closed: the
    /// device (and the library, answering vfio-user DMA messages) reads and writes it.
    unsafe fn dma_map(&self, map: &DmaMap) -> Result<()>;

    /// Removes a mapping made by `dma_map`, with the same IOVA and size.
    fn dma_unmap(&self, iova: u64, size: u64) -> Result<()>;

    /// Exports `ranges` (offset, length) of region `index` as a DMA-BUF.
    /// Returns `Ok(None)` without trying anything when the device lacks
    /// [`Capabilities::DMA_BUF`].
    fn region_create_dma_buf(&self, index: u32, ranges: &[(u64, u64)]) -> Result<Option<OwnedFd>> {
        let _ = (index, ranges);
        Ok(None)
    }

    /// The device's migration (state machine and state stream), where this
    /// backend carries it (vfio-user and kernel VFIO do); on a device
    /// without [`Capabilities::MIGRATION`] its calls fail with ENOTTY.
    /// `None` where the backend has none.
    fn migration(&self) -> Option<&dyn DeviceMigration> {
        None
    }

    /// Dirty-page tracking through the library's one API, where this backend
    /// carries it (a vfio-user client); `None` elsewhere (kernel VFIO, whose
    /// DMA logging stays reachable through `device_feature`).
    fn dirty_tracking(&self) -> Option<&dyn crate::dirty::DirtyTracking> {
        None
    }
}
