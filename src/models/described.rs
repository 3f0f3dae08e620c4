//! A PCI device given as plain data (IDs, regions, IRQ counts) whose
//! register accesses go to a [`RegionHandler`]: what the C API
//! (`vfio_io_server_create`) serves.
//!
//! The model does what every such device needs so its author does not:
//! it emulates PCI configuration space (region 7) from the description
//! unless the device supplies that region, and it answers accesses to a
//! region offered with an fd from its own mapping of that fd, so the
//! handler sees only trapped registers. With MSI-X vectors it adds the
//! MSI-X capability and serves its table and PBA in a BAR of its own. A device given migration hooks
//! ([`DescribedDevice::with_migration`]) migrates with its emulated
//! configuration space carried in the stream next to the hooks' own state.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::device::{
    pci_irq, pci_region, DeviceInfo, IrqInfo, RegionCap, RegionInfo, SparseArea,
    VFIO_DEVICE_FLAGS_RESET, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use crate::error::{Error, Result};
use crate::memory::Mapping;
use crate::models::msix::{MsixBar, CAP_ID_MSIX};
use crate::models::pci::{BarKind, PciConfig, CONFIG_SPACE_SIZE};
use crate::user::server::{DeviceContext, DeviceModel, Doorbell, Migratable};

/// Region indices a description may use: the vfio-pci ones and
/// device-specific ones after them.
pub const MAX_REGIONS: u32 = 64;
/// Most MSI-X vectors a description may declare (the PCI limit).
pub const MAX_MSIX_VECTORS: u32 = 2048;
/// Most doorbells a description may declare: each is an eventfd per session.
pub const MAX_DOORBELLS: usize = 64;
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
    /// Each lies inside a writable region without an fd, 1, 2, 4 or 8
    /// bytes wide, overlapping no other; at most [`MAX_DOORBELLS`].
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

    /// A client was accepted (see [`DeviceModel::client_connected`]).
    fn client_connected(&mut self) {}

    /// The client's session is over (see [`DeviceModel::client_disconnected`]).
    fn client_disconnected(&mut self) {}
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
    /// The MSI-X table and PBA, with MSI-X vectors and emulated config space.
    msix: Option<MsixBar>,
    handler: H,
    /// The device's own migration hooks; `None`: it does not migrate.
    migration: Option<Box<dyn Migratable + Send>>,
}

/// The first bytes of a described device's migration stream.
const STATE_MAGIC: [u8; 4] = *b"VIOD";
/// The version of the stream layout this model writes and reads.
const STATE_VERSION: u16 = 1;
/// Bytes of the stream's header: magic, version, reserved, lengths of the
/// configuration space part, the MSI-X table part and the device's own part.
const STATE_HEADER_LEN: usize = 4 + 2 + 2 + 4 + 4 + 8;

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
/// region 0..=5 sized from it, INTA# with an INTx vector, MSI with one,
/// MSI-X with its table and PBA in the first BAR no region uses.
fn emulated_config(desc: &DeviceDesc) -> Result<(PciConfig, Option<MsixBar>)> {
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
    let msix = desc.irq_count[pci_irq::MSIX as usize];
    if msix == 0 {
        return Ok((config, None));
    }
    let bir = (0..6u8).find(|&i| config.bar(usize::from(i)).is_none() && !bar_upper_half(desc, i));
    let Some(bir) = bir else {
        return Err(invalid(format!(
            "{msix} MSI-X vectors: their table needs a BAR, but regions 0-5 take all six \
             (leave one free, or supply region 7)"
        )));
    };
    let table = MsixBar::new(bir, msix)?;
    config = config.with_bar(
        usize::from(bir),
        BarKind::Memory32 {
            prefetchable: false,
        },
        table.bar_size(),
    )?;
    let (body, wmask) = table.capability();
    config.add_capability(CAP_ID_MSIX, &body, &wmask)?;
    Ok((config, Some(table)))
}

/// Checks that each doorbell is a register of a trapped, writable region
/// (a write through its eventfd must reach the handler) and that no two
/// overlap (a write could not tell which one it rings).
fn check_doorbells(desc: &DeviceDesc) -> Result<()> {
    if desc.doorbells.len() > MAX_DOORBELLS {
        return Err(invalid(format!(
            "{} doorbells, at most {MAX_DOORBELLS}",
            desc.doorbells.len()
        )));
    }
    for (i, b) in desc.doorbells.iter().enumerate() {
        let at = format!("doorbell {i} (region {}, offset {:#x})", b.region, b.offset);
        let Some(r) = desc.regions.iter().find(|r| r.index == b.region) else {
            return Err(invalid(format!("{at}: the device has no such region")));
        };
        if r.fd.is_some() {
            return Err(invalid(format!(
                "{at}: the region has an fd; a doorbell needs a region of callbacks"
            )));
        }
        if r.flags & VFIO_REGION_INFO_FLAG_WRITE == 0 {
            return Err(invalid(format!("{at}: the region is not writable")));
        }
        if !matches!(b.size, 1 | 2 | 4 | 8) {
            return Err(invalid(format!("{at}: size {}, not 1, 2, 4 or 8", b.size)));
        }
        if b.offset
            .checked_add(b.size.into())
            .is_none_or(|end| end > r.size)
        {
            return Err(invalid(format!(
                "{at}: {} bytes past the region's end ({:#x})",
                b.size, r.size
            )));
        }
        let overlaps = |o: &Doorbell| {
            o.region == b.region
                && o.offset < b.offset + u64::from(b.size)
                && b.offset < o.offset + u64::from(o.size)
        };
        if let Some(j) = desc.doorbells[..i].iter().position(overlaps) {
            return Err(invalid(format!("{at}: overlaps doorbell {j}")));
        }
    }
    Ok(())
}

/// Whether BAR index `i` is the upper half of a 64-bit BAR the description
/// declares at `i - 1`.
fn bar_upper_half(desc: &DeviceDesc, i: u8) -> bool {
    i > 0
        && desc
            .regions
            .iter()
            .any(|r| r.index + 1 == u32::from(i) && r.size > 1 << 31)
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
        check_doorbells(&desc)?;
        let (config, msix) = match desc.regions.iter().find(|r| r.index == pci_region::CONFIG) {
            Some(r) if r.size < CONFIG_SPACE_SIZE as u64 => {
                return Err(invalid(format!(
                    "region 7 (config space) of {} bytes, at least 256",
                    r.size
                )))
            }
            Some(_) => (None, None),
            None => {
                let (config, msix) = emulated_config(&desc)?;
                (Some(config), msix)
            }
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
            msix,
            handler,
            migration: None,
        })
    }

    /// Makes the device migrate through `hooks`: the server calls them on
    /// the migration arcs, and the stream carries the emulated
    /// configuration space and MSI-X table ahead of what `hooks` save.
    pub fn with_migration(mut self, hooks: Box<dyn Migratable + Send>) -> Self {
        self.migration = Some(hooks);
        self
    }

    /// The migration hooks; only called once `migration()` said they exist.
    fn hooks(&mut self) -> Result<&mut (dyn Migratable + Send + 'static)> {
        self.migration
            .as_deref_mut()
            .ok_or(Error::InvalidArgument("the device does not migrate"))
    }

    /// Bytes of the configuration space part of the stream.
    fn config_len(&self) -> usize {
        self.config.as_ref().map_or(0, |_| CONFIG_SPACE_SIZE)
    }

    /// Bytes of the MSI-X table part of the stream.
    fn msix_len(&self) -> usize {
        self.msix.as_ref().map_or(0, |m| m.table().len())
    }

    /// The MSI-X table and PBA when `index` is their BAR.
    fn msix_at(&mut self, index: u32) -> Option<&mut MsixBar> {
        self.msix.as_mut().filter(|m| u32::from(m.bir()) == index)
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
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        if index == pci_region::CONFIG && self.config.is_some() {
            return Some(RegionInfo::plain(index, rw, CONFIG_SPACE_SIZE as u64));
        }
        if let Some(m) = self.msix.as_ref().filter(|m| u32::from(m.bir()) == index) {
            return Some(RegionInfo::plain(index, rw, m.bar_size()));
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
        if let Some(m) = self.msix_at(index) {
            m.read(offset, data);
            return Ok(());
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
        if let Some(m) = self.msix_at(index) {
            m.write(offset, data);
            return Ok(());
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
        if let Some(m) = &mut self.msix {
            m.reset();
        }
        self.handler.reset(ctx)
    }

    fn doorbells(&self) -> Vec<Doorbell> {
        self.doorbells.clone()
    }

    fn client_connected(&mut self) {
        self.handler.client_connected();
    }

    fn client_disconnected(&mut self) {
        self.handler.client_disconnected();
    }

    fn migration(&mut self) -> Option<&mut dyn Migratable> {
        self.migration.as_ref()?;
        Some(self)
    }
}

/// The stream: header, configuration space and MSI-X table (when
/// emulated), then the hooks' state. The configuration space is loaded through its writable
/// masks, so a stream cannot change what the description fixed.
impl<H: RegionHandler> Migratable for DescribedDevice<H> {
    fn stop(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        self.hooks()?.stop(ctx)
    }

    fn resume(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        self.hooks()?.resume(ctx)
    }

    fn save(&self) -> Result<Vec<u8>> {
        let hooks = self
            .migration
            .as_deref()
            .ok_or(Error::InvalidArgument("the device does not migrate"))?;
        let state = hooks.save()?;
        let (config_len, msix_len) = (self.config_len(), self.msix_len());
        let mut b = Vec::with_capacity(STATE_HEADER_LEN + config_len + msix_len + state.len());
        b.extend_from_slice(&STATE_MAGIC);
        b.extend_from_slice(&STATE_VERSION.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(config_len as u32).to_le_bytes());
        b.extend_from_slice(&(msix_len as u32).to_le_bytes());
        b.extend_from_slice(&(state.len() as u64).to_le_bytes());
        if let Some(config) = &self.config {
            let mut bytes = [0u8; CONFIG_SPACE_SIZE];
            config.read(0, &mut bytes)?;
            b.extend_from_slice(&bytes);
        }
        if let Some(m) = &self.msix {
            b.extend_from_slice(m.table());
        }
        b.extend_from_slice(&state);
        Ok(b)
    }

    fn load(&mut self, stream: &[u8]) -> Result<()> {
        let bad = Error::InvalidArgument;
        let (header, body) = stream
            .split_first_chunk::<STATE_HEADER_LEN>()
            .ok_or(bad("device state: shorter than its header"))?;
        let field = |at: usize, n: usize| &header[at..at + n];
        if field(0, 4) != STATE_MAGIC {
            return Err(bad("device state: not a described device's stream"));
        }
        if field(4, 2) != STATE_VERSION.to_le_bytes() {
            return Err(bad("device state: unknown version"));
        }
        let config_len = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        let msix_len = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
        let state_len = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
        if config_len as usize != self.config_len() || msix_len as usize != self.msix_len() {
            return Err(bad("device state: configuration space of another layout"));
        }
        let emulated = u64::from(config_len) + u64::from(msix_len);
        if body.len() as u64 != emulated.saturating_add(state_len) {
            return Err(bad("device state: length differs from its header"));
        }
        let (config_bytes, rest) = body.split_at(config_len as usize);
        let (msix_bytes, state) = rest.split_at(msix_len as usize);
        // The hooks load all or nothing: the emulated parts change only
        // once they have taken theirs.
        self.hooks()?.load(state)?;
        if let Some(config) = &mut self.config {
            config.write(0, config_bytes)?;
        }
        if let Some(m) = &mut self.msix {
            m.load_table(msix_bytes)?;
        }
        Ok(())
    }

    fn max_stream_len(&self) -> usize {
        let hooks = self.migration.as_deref().map_or(0, |m| m.max_stream_len());
        (STATE_HEADER_LEN + self.config_len() + self.msix_len()).saturating_add(hooks)
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

    #[test]
    fn doorbells_must_be_registers_of_a_trapped_writable_region() {
        let bell = |region, offset, size| Doorbell {
            region,
            offset,
            size,
            datamatch: None,
        };
        let with = |doorbells: Vec<Doorbell>| {
            let read_only = RegionDesc {
                flags: VFIO_REGION_INFO_FLAG_READ,
                ..bar(2, 0x1000)
            };
            let mut d = desc(vec![bar(0, 0x100), read_only], [0; 5]);
            d.doorbells = doorbells;
            DescribedDevice::new(d, Nothing).map(|d| d.doorbells().len())
        };
        assert_eq!(
            with(vec![bell(0, 0, 4), bell(0, 4, 4), bell(0, 0xf8, 8)]).unwrap(),
            3
        );
        let refused = [
            vec![bell(1, 0, 4)],                // no such region
            vec![bell(7, 0, 4)],                // emulated config space
            vec![bell(2, 0, 4)],                // read-only
            vec![bell(0, 0, 3)],                // no register width
            vec![bell(0, 0xfc, 8)],             // past the end
            vec![bell(0, u64::MAX - 1, 4)],     // offset overflows
            vec![bell(0, 0, 8), bell(0, 4, 4)], // overlap
            vec![bell(0, 0, 1); MAX_DOORBELLS + 1],
        ];
        for bells in refused {
            let what = format!("{bells:?}");
            assert!(
                matches!(with(bells), Err(Error::InvalidArgument(_))),
                "accepted {what}"
            );
        }
        let fd = nix::sys::memfd::memfd_create(c"bar", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, 0x1000).unwrap();
        let mut d = desc(
            vec![RegionDesc {
                flags: VFIO_REGION_INFO_FLAG_READ
                    | VFIO_REGION_INFO_FLAG_WRITE
                    | VFIO_REGION_INFO_FLAG_MMAP,
                fd: Some(fd),
                ..bar(0, 0x1000)
            }],
            [0; 5],
        );
        d.doorbells = vec![bell(0, 0, 4)];
        assert!(
            DescribedDevice::new(d, Nothing).is_err(),
            "a region with an fd"
        );
    }

    /// Migration hooks whose state is a byte vector; a stream of the wrong
    /// length is refused, as a device's own check would.
    struct Bytes(Vec<u8>);

    impl Migratable for Bytes {
        fn stop(&mut self, _: &mut dyn DeviceContext) -> Result<()> {
            Ok(())
        }
        fn resume(&mut self, _: &mut dyn DeviceContext) -> Result<()> {
            Ok(())
        }
        fn save(&self) -> Result<Vec<u8>> {
            Ok(self.0.clone())
        }
        fn load(&mut self, stream: &[u8]) -> Result<()> {
            if stream.len() != self.0.len() {
                return Err(Error::InvalidArgument("wrong length"));
            }
            self.0.copy_from_slice(stream);
            Ok(())
        }
        fn max_stream_len(&self) -> usize {
            self.0.len()
        }
    }

    fn migrating(state: &[u8]) -> DescribedDevice<Nothing> {
        DescribedDevice::new(desc(vec![bar(0, 0x1000)], [0, 1, 0, 0, 0]), Nothing)
            .unwrap()
            .with_migration(Box::new(Bytes(state.to_vec())))
    }

    fn config_bytes(d: &DescribedDevice<Nothing>) -> [u8; CONFIG_SPACE_SIZE] {
        let mut b = [0; CONFIG_SPACE_SIZE];
        d.config.as_ref().unwrap().read(0, &mut b).unwrap();
        b
    }

    #[test]
    fn migration_carries_the_emulated_config_space_and_the_hooks_state() {
        let mut none = DescribedDevice::new(desc(vec![], [0; 5]), Nothing).unwrap();
        assert!(none.migration().is_none(), "no hooks, no migration");

        let mut src = migrating(b"source state");
        let cfg = src.config.as_mut().unwrap();
        cfg.write(0x10, &0xfebf_0000u32.to_le_bytes()).unwrap();
        cfg.write(0x04, &6u16.to_le_bytes()).unwrap();
        let stream = src.migration().unwrap().save().unwrap();
        assert_eq!(stream.len(), STATE_HEADER_LEN + CONFIG_SPACE_SIZE + 12);
        assert!(stream.len() <= src.max_stream_len());

        let mut dst = migrating(b"initial data");
        dst.migration().unwrap().load(&stream).unwrap();
        assert_eq!(config_bytes(&dst), config_bytes(&src));
        assert_eq!(dst.migration().unwrap().save().unwrap(), stream);
    }

    #[test]
    fn a_refused_stream_changes_nothing() {
        let mut src = migrating(b"source state");
        src.config
            .as_mut()
            .unwrap()
            .write(0x04, &6u16.to_le_bytes())
            .unwrap();
        let stream = src.save().unwrap();
        let mut dst = migrating(b"initial data");
        let before = (config_bytes(&dst), dst.save().unwrap());

        let mut bad_magic = stream.clone();
        bad_magic[0] ^= 1;
        let mut bad_version = stream.clone();
        bad_version[4] ^= 1;
        let mut longer_state = stream.clone();
        longer_state.push(0);
        longer_state[16] += 1;
        let no_config = migrating(b"source state");
        let mut no_config = DescribedDevice {
            config: None,
            ..no_config
        };
        let refused = [
            stream[..stream.len() - 1].to_vec(),
            stream[..STATE_HEADER_LEN - 1].to_vec(),
            bad_magic,
            bad_version,
            // The library's framing holds, the hooks refuse their part.
            longer_state,
            no_config.save().unwrap(),
        ];
        for s in refused {
            assert!(matches!(dst.load(&s), Err(Error::InvalidArgument(_))));
            assert_eq!((config_bytes(&dst), dst.save().unwrap()), before);
        }
        assert!(
            no_config.load(&stream).is_err(),
            "config space the device lacks"
        );
    }

    /// A context for calls that must not reach the outside world.
    struct NoContext;

    impl DeviceContext for NoContext {
        fn dma_read(&mut self, _: u64, _: &mut [u8]) -> Result<()> {
            Err(Error::Unsupported("no DMA here"))
        }
        fn dma_write(&mut self, _: u64, _: &[u8]) -> Result<()> {
            Err(Error::Unsupported("no DMA here"))
        }
        fn irq_enabled(&self, _: u32, _: u32) -> bool {
            false
        }
        fn trigger_irq(&mut self, _: u32, _: u32) -> bool {
            false
        }
        fn set_irq_level(&mut self, _: u32, _: u32, _: bool) {}
    }

    #[test]
    fn msix_vectors_add_the_capability_and_its_bar() {
        // BAR0 is the device's (32-bit), so the table goes to BAR1.
        let mut d =
            DescribedDevice::new(desc(vec![bar(0, 0x1000)], [0, 1, 70, 0, 0]), Nothing).unwrap();
        let config = d.config.as_ref().unwrap();
        let caps = config.capabilities();
        let ids: Vec<u8> = caps.iter().map(|c| c.id).collect();
        assert_eq!(ids, [crate::models::pci::CAP_ID_MSI, CAP_ID_MSIX]);
        let mut cap = [0u8; 12];
        config.read(u64::from(caps[1].offset), &mut cap).unwrap();
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 69, "table size N - 1");
        assert_eq!(
            u32::from_le_bytes(cap[4..8].try_into().unwrap()),
            1,
            "table at 0 of BAR1"
        );
        assert_eq!(
            u32::from_le_bytes(cap[8..12].try_into().unwrap()),
            (70 * 16) | 1,
            "PBA after it"
        );
        assert_eq!(config.bar(1).unwrap().size, 4096);
        let info = d.region_info(1).unwrap();
        assert_eq!(
            (info.size, info.flags & VFIO_REGION_INFO_FLAG_MMAP),
            (4096, 0)
        );

        // Enable and Function Mask are the control's writable bits.
        let ctrl = u64::from(caps[1].offset) + 2;
        d.region_write(&mut NoContext, 7, ctrl, &[0xff, 0xff])
            .unwrap();
        let mut back = [0u8; 2];
        d.region_read(&mut NoContext, 7, ctrl, &mut back).unwrap();
        assert_eq!(u16::from_le_bytes(back), 0xc000 | 69);

        // The table is served by the model, never the handler (which reads zeros).
        let entry = 5 * 16;
        d.region_write(&mut NoContext, 1, entry, &0xfee0_1000u32.to_le_bytes())
            .unwrap();
        d.region_write(&mut NoContext, 1, entry + 12, &0u32.to_le_bytes())
            .unwrap();
        let mut word = [0u8; 4];
        d.region_read(&mut NoContext, 1, entry, &mut word).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xfee0_1000);
        assert!(!d.msix.as_ref().unwrap().masked(5));
        d.reset = true;
        d.reset(&mut NoContext).unwrap();
        assert!(
            d.msix.as_ref().unwrap().masked(5),
            "reset masks every vector"
        );
    }

    #[test]
    fn msix_takes_the_first_free_bar_or_is_refused() {
        let wide = |i| RegionDesc {
            size: 1 << 32,
            ..bar(i, 0)
        };
        // BAR0 and BAR1 are one 64-bit BAR, BAR2 is taken: BAR3.
        let d = DescribedDevice::new(desc(vec![wide(0), bar(2, 16)], [0, 0, 1, 0, 0]), Nothing)
            .unwrap();
        assert_eq!(d.msix.as_ref().unwrap().bir(), 3);
        let full: Vec<_> = (0..6).map(|i| bar(i, 0x1000)).collect();
        assert!(matches!(
            DescribedDevice::new(desc(full, [0, 0, 1, 0, 0]), Nothing),
            Err(Error::InvalidArgument(_))
        ));
        // The device's own config space: the device does MSI-X itself.
        let own = DescribedDevice::new(desc(vec![bar(7, 256)], [0, 0, 8, 0, 0]), Nothing).unwrap();
        assert!(own.msix.is_none());
        assert_eq!(own.irq_info(pci_irq::MSIX).unwrap().count, 8);
    }

    #[test]
    fn migration_carries_the_msix_table() {
        let make = || {
            DescribedDevice::new(desc(vec![bar(0, 0x1000)], [0, 0, 4, 0, 0]), Nothing)
                .unwrap()
                .with_migration(Box::new(Bytes(vec![7; 3])))
        };
        let mut src = make();
        src.region_write(&mut NoContext, 1, 3 * 16 + 12, &[0])
            .unwrap();
        let stream = src.save().unwrap();
        assert_eq!(
            stream.len(),
            STATE_HEADER_LEN + CONFIG_SPACE_SIZE + 4 * 16 + 3
        );
        let mut dst = make();
        dst.load(&stream).unwrap();
        let m = dst.msix.as_ref().unwrap();
        assert!(!m.masked(3) && m.masked(2));
    }
}
