//! A PCI device given as plain data (IDs, regions, IRQ counts) whose
//! register accesses go to a [`RegionHandler`]: what the C API
//! (`vfio_io_server_create`) serves.
//!
//! The model does what every such device needs so its author does not:
//! it emulates PCI configuration space (region 7) from the description
//! unless the device supplies that region, and it answers accesses to a
//! region offered with an fd from its own mapping of that fd, so the
//! handler sees only trapped registers.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::device::{
    pci_irq, pci_region, DeviceInfo, IrqInfo, RegionCap, RegionInfo, SparseArea,
    VFIO_DEVICE_FLAGS_RESET, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use crate::error::{Error, Result};
use crate::memory::Mapping;
use crate::models::pci::{BarKind, PciConfig, CONFIG_SPACE_SIZE};
use crate::user::server::{DeviceContext, DeviceModel, Doorbell};

/// Region indices a description may use: the vfio-pci ones and
/// device-specific ones after them.
pub const MAX_REGIONS: u32 = 64;
/// Most MSI-X vectors a description may declare (the PCI limit).
pub const MAX_MSIX_VECTORS: u32 = 2048;
/// Bytes of a page: an fd's offset must be a multiple (mmap's rule).
const PAGE_SIZE: u64 = 4096;

/// One region of a [`DeviceDesc`].
#[derive(Debug)]
pub struct RegionDesc {
    /// Region index: `pci_region::BAR0`..BAR5, ROM, CONFIG, VGA or a
    /// device-specific index below [`MAX_REGIONS`].
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_READ | _WRITE | _MMAP`.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Memory offered for mmap (with `_MMAP`), or `None`: every access is
    /// a handler call.
    pub fd: Option<OwnedFd>,
    /// Where the region starts in `fd` (a multiple of 4096).
    pub fd_offset: u64,
}

/// A device: its PCI identity, regions and IRQ vector counts.
#[derive(Debug, Default)]
pub struct DeviceDesc {
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// PCI subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// PCI subsystem ID.
    pub subsystem_id: u16,
    /// PCI class code (24 bits).
    pub class_code: u32,
    /// The regions, each index at most once.
    pub regions: Vec<RegionDesc>,
    /// Vectors of INTx, MSI, MSI-X, ERR and REQ (`pci_irq` order).
    pub irq_count: [u32; pci_irq::COUNT as usize],
    /// The device can be reset ([`RegionHandler::reset`] is called).
    pub reset: bool,
    /// Trapped registers whose writes may arrive through an ioeventfd
    /// (see [`DeviceModel::doorbells`]); they reach the handler as writes.
    pub doorbells: Vec<Doorbell>,
}

/// What the device's author writes: accesses to trapped registers and
/// reset. Each is called on the serving thread with the session's
/// [`DeviceContext`]; an error becomes the client's error reply.
pub trait RegionHandler: Send {
    /// Reads `data.len()` bytes at `offset` of region `index` (range and
    /// READ flag already checked).
    fn read(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()>;

    /// Writes `data` at `offset` of region `index` (range and WRITE flag
    /// already checked).
    fn write(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()>;

    /// Resets the device; called only when the description says it can.
    fn reset(&mut self, ctx: &mut dyn DeviceContext) -> Result<()>;
}

struct Region {
    flags: u32,
    size: u64,
    fd_offset: u64,
    fd: Option<Arc<OwnedFd>>,
    /// The library's own view of `fd`, which answers REGION_READ/WRITE
    /// messages of a client that did not map the region.
    map: Option<Mapping>,
}

/// A device served from a [`DeviceDesc`] and a [`RegionHandler`].
pub struct DescribedDevice<H: RegionHandler> {
    /// Indexed by region index; `None` for an index the device lacks.
    regions: Vec<Option<Region>>,
    irq_count: [u32; pci_irq::COUNT as usize],
    reset: bool,
    doorbells: Vec<Doorbell>,
    /// Emulated configuration space, unless the device supplies region 7.
    config: Option<PciConfig>,
    handler: H,
}

/// Logs what is wrong with a description and returns the error for it.
fn invalid(detail: String) -> Error {
    log::error!(target: "vfio_io::server", "device description: {detail}");
    Error::InvalidArgument("inconsistent device description")
}

impl Region {
    fn new(r: RegionDesc) -> Result<Self> {
        let i = r.index;
        let known =
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
        if r.flags & !known != 0 {
            return Err(invalid(format!("region {i}: unknown flags {:#x}", r.flags)));
        }
        if r.flags & (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE) == 0 {
            return Err(invalid(format!("region {i}: neither READ nor WRITE")));
        }
        if r.size == 0 {
            return Err(invalid(format!("region {i}: size 0")));
        }
        if (r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0) != r.fd.is_some() {
            return Err(invalid(format!(
                "region {i}: MMAP must come with an fd, and an fd with MMAP"
            )));
        }
        let map = match &r.fd {
            None => None,
            Some(fd) => Some(map_region(i, fd, &r)?),
        };
        Ok(Region {
            flags: r.flags,
            size: r.size,
            fd_offset: r.fd_offset,
            fd: r.fd.map(Arc::new),
            map,
        })
    }
}

/// Maps region `i`'s memory, after checking the fd holds all of it.
fn map_region(i: u32, fd: &OwnedFd, r: &RegionDesc) -> Result<Mapping> {
    if r.fd_offset % PAGE_SIZE != 0 {
        return Err(invalid(format!(
            "region {i}: fd_offset {:#x} is not a multiple of 4096",
            r.fd_offset
        )));
    }
    let end = r.fd_offset.checked_add(r.size);
    let len = usize::try_from(r.size).ok();
    let (Some(end), Some(len)) = (end, len) else {
        return Err(invalid(format!("region {i}: size overflows")));
    };
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| Error::sys("fstat", e))?;
    // A file (a memfd) shorter than the region would SIGBUS on access.
    let is_file = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    if is_file && (st.st_size as u64) < end {
        return Err(invalid(format!(
            "region {i}: the fd holds {} bytes, the region needs {end}",
            st.st_size
        )));
    }
    let writable = r.flags & VFIO_REGION_INFO_FLAG_WRITE != 0;
    Mapping::new(fd.as_fd(), r.fd_offset, len, writable)
}

/// The configuration space the description implies: IDs, a BAR per
/// region 0..=5 sized from it, INTA# with an INTx vector, MSI with one.
fn emulated_config(desc: &DeviceDesc) -> Result<PciConfig> {
    if desc.class_code > 0xff_ffff {
        return Err(invalid(format!(
            "class_code {:#x} is wider than 24 bits",
            desc.class_code
        )));
    }
    let mut config = PciConfig::new(desc.vendor_id, desc.device_id)
        .with_subsystem(desc.subsystem_vendor_id, desc.subsystem_id)
        .with_class_code(desc.class_code);
    for r in desc.regions.iter().filter(|r| r.index <= 5) {
        let kind = if r.size > 1 << 31 {
            BarKind::Memory64 {
                prefetchable: false,
            }
        } else {
            BarKind::Memory32 {
                prefetchable: false,
            }
        };
        config = config
            .with_bar(r.index as usize, kind, r.size)
            .map_err(|e| {
                invalid(format!(
                    "region {} as a BAR of {:#x} bytes: {e} (a power of two of at least 16; \
                 above 2 GiB it is 64-bit and takes the next BAR too)",
                    r.index, r.size
                ))
            })?;
    }
    let [intx, msi, ..] = desc.irq_count;
    if intx > 0 {
        config = config.with_interrupt_pin(1)?;
    }
    if msi > 1 {
        return Err(invalid(format!(
            "{msi} MSI vectors: the emulated MSI capability has one (supply region 7 for more)"
        )));
    }
    if msi == 1 {
        config = config.with_msi()?;
    }
    Ok(config)
}

impl<H: RegionHandler> DescribedDevice<H> {
    /// Checks `desc` and builds the device. An inconsistent description is
    /// [`Error::InvalidArgument`], with what is wrong logged at error level
    /// (target `vfio_io::server`).
    pub fn new(desc: DeviceDesc, handler: H) -> Result<Self> {
        let limits = [1, 32, MAX_MSIX_VECTORS, 1, 1];
        for (i, (&n, &max)) in desc.irq_count.iter().zip(&limits).enumerate() {
            if n > max {
                return Err(invalid(format!(
                    "IRQ index {i}: {n} vectors, at most {max}"
                )));
            }
        }
        let mut slots: Vec<Option<RegionDesc>> = Vec::new();
        for r in &desc.regions {
            if r.index >= MAX_REGIONS {
                return Err(invalid(format!(
                    "region index {} is not below {MAX_REGIONS}",
                    r.index
                )));
            }
            if desc.regions.iter().filter(|o| o.index == r.index).count() > 1 {
                return Err(invalid(format!("region {} given twice", r.index)));
            }
        }
        let config = match desc.regions.iter().find(|r| r.index == pci_region::CONFIG) {
            Some(r) if r.size < CONFIG_SPACE_SIZE as u64 => {
                return Err(invalid(format!(
                    "region 7 (config space) of {} bytes, at least 256",
                    r.size
                )))
            }
            Some(_) => None,
            None => Some(emulated_config(&desc)?),
        };
        let DeviceDesc {
            regions,
            irq_count,
            reset,
            doorbells,
            ..
        } = desc;
        let count = regions
            .iter()
            .map(|r| r.index + 1)
            .max()
            .unwrap_or(0)
            .max(pci_region::COUNT);
        slots.resize_with(count as usize, || None);
        for r in regions {
            let i = r.index as usize;
            slots[i] = Some(r);
        }
        let regions = slots
            .into_iter()
            .map(|r| r.map(Region::new).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(DescribedDevice {
            regions,
            irq_count,
            reset,
            doorbells,
            config,
            handler,
        })
    }

    fn region(&self, index: u32) -> Result<&Region> {
        self.regions
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::InvalidArgument("the device has no such region"))
    }
}

impl<H: RegionHandler> DeviceModel for DescribedDevice<H> {
    fn device_info(&self) -> DeviceInfo {
        let mut info = DeviceInfo::pci(if self.reset {
            VFIO_DEVICE_FLAGS_RESET
        } else {
            0
        });
        info.num_regions = self.regions.len() as u32;
        info
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        if index == pci_region::CONFIG && self.config.is_some() {
            let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            return Some(RegionInfo::plain(index, rw, CONFIG_SPACE_SIZE as u64));
        }
        let r = match self.regions.get(index as usize)? {
            None => return Some(RegionInfo::plain(index, 0, 0)),
            Some(r) => r,
        };
        let mut info = RegionInfo::plain(index, r.flags, r.size);
        if let Some(fd) = &r.fd {
            info.offset = r.fd_offset;
            info.caps = vec![RegionCap::SparseMmap(vec![SparseArea {
                offset: 0,
                size: r.size,
            }])];
            info.fd = Some(fd.clone());
        }
        Some(info)
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let count = *self.irq_count.get(index as usize)?;
        Some(IrqInfo::eventfd(index, count))
    }

    fn region_read(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        if index == pci_region::CONFIG {
            if let Some(config) = &self.config {
                return config.read(offset, data);
            }
        }
        match &self.region(index)?.map {
            // The server checked the range against the region's size.
            Some(m) => m.read(offset as usize, data),
            None => self.handler.read(ctx, index, offset, data),
        }
    }

    fn region_write(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        if index == pci_region::CONFIG {
            if let Some(config) = &mut self.config {
                return config.write(offset, data);
            }
        }
        match &self.region(index)?.map {
            Some(m) => m.write(offset as usize, data),
            None => self.handler.write(ctx, index, offset, data),
        }
    }

    fn reset(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        if !self.reset {
            return Err(Error::Unsupported("the device has no reset"));
        }
        if let Some(config) = &mut self.config {
            config.reset();
        }
        self.handler.reset(ctx)
    }

    fn doorbells(&self) -> Vec<Doorbell> {
        self.doorbells.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl RegionHandler for Nothing {
        fn read(&mut self, _: &mut dyn DeviceContext, _: u32, _: u64, _: &mut [u8]) -> Result<()> {
            Ok(())
        }
        fn write(&mut self, _: &mut dyn DeviceContext, _: u32, _: u64, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn reset(&mut self, _: &mut dyn DeviceContext) -> Result<()> {
            Ok(())
        }
    }

    fn bar(index: u32, size: u64) -> RegionDesc {
        RegionDesc {
            index,
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            size,
            fd: None,
            fd_offset: 0,
        }
    }

    fn desc(regions: Vec<RegionDesc>, irq_count: [u32; 5]) -> DeviceDesc {
        DeviceDesc {
            vendor_id: 0x1234,
            device_id: 0xc0de,
            class_code: 0xff_0000,
            regions,
            irq_count,
            ..DeviceDesc::default()
        }
    }

    #[test]
    fn config_space_is_emulated_from_the_description() {
        let d = DescribedDevice::new(desc(vec![bar(0, 0x1000)], [0, 1, 0, 0, 0]), Nothing).unwrap();
        let config = d.config.as_ref().unwrap();
        assert_eq!((config.vendor_id(), config.device_id()), (0x1234, 0xc0de));
        assert_eq!(config.bar(0).unwrap().size, 0x1000);
        assert!(config.msi_offset().is_some());
        assert_eq!(d.region_info(7).unwrap().size, 256);
        assert_eq!(d.device_info().num_regions, pci_region::COUNT);
    }

    #[test]
    fn inconsistent_descriptions_are_refused() {
        let bad = [
            desc(vec![bar(0, 100)], [0; 5]),
            desc(vec![bar(1, 0x1000), bar(1, 0x1000)], [0; 5]),
            desc(vec![bar(MAX_REGIONS, 0x1000)], [0; 5]),
            desc(vec![bar(0, 0)], [0; 5]),
            desc(vec![bar(7, 64)], [0; 5]),
            desc(vec![], [0, 2, 0, 0, 0]),
            desc(vec![], [2, 0, 0, 0, 0]),
            desc(
                vec![RegionDesc {
                    flags: VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_READ,
                    ..bar(2, 0x1000)
                }],
                [0; 5],
            ),
        ];
        for d in bad {
            let what = format!("{d:?}");
            assert!(
                matches!(
                    DescribedDevice::new(d, Nothing),
                    Err(Error::InvalidArgument(_))
                ),
                "accepted {what}"
            );
        }
    }
}
