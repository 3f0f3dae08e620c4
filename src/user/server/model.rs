//! The trait a device implements to be served over vfio-user.

use crate::device::{DeviceInfo, IrqInfo, RegionInfo};
use crate::error::Result;

/// What a device model may do to the outside world while it handles a request:
/// DMA into the client's memory and raising interrupts.
pub trait DeviceContext {
    /// Reads client memory at DMA address `iova` (through the mapped fd, or a
    /// DMA_READ message when the client gave none).
    fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<()>;

    /// Writes client memory at DMA address `iova`.
    fn dma_write(&mut self, iova: u64, buf: &[u8]) -> Result<()>;

    /// Whether the client has attached a trigger eventfd to vector `vector` of
    /// IRQ index `index` (for PCI: MSI in use when index 1 has one).
    fn irq_enabled(&self, index: u32, vector: u32) -> bool;

    /// Raises vector `vector` of IRQ index `index`. Returns whether an eventfd
    /// was signalled (false when none is attached or the vector is masked).
    fn trigger_irq(&mut self, index: u32, vector: u32) -> bool;

    /// Drives an INTx-style level line: asserted signals (unless masked); with
    /// AUTOMASKED it stays masked until the client unmasks, and re-fires on
    /// unmask while still asserted.
    fn set_irq_level(&mut self, index: u32, vector: u32, asserted: bool);
}

/// A device served by [`crate::user::server::Server`]. Regions and IRQs follow
/// vfio-pci's layout (see [`crate::device::pci_region`], [`crate::device::pci_irq`]).
///
/// The server calls the model from one thread, one request at a time, in the
/// order the client sent them. A panic inside a callback becomes an `EIO` reply.
pub trait DeviceModel: Send {
    /// Device flags and counts.
    fn device_info(&self) -> DeviceInfo;

    /// Info of region `index` (`fd` is ignored here: see `region_fd`).
    /// `None` for an index past `num_regions`.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;

    /// Info of IRQ index `index`; `None` past `num_irqs`.
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;

    /// Reads `data.len()` bytes at `offset` of region `index`. The server has
    /// already checked the range against the region's size and READ flag.
    fn region_read(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()>;

    /// Writes `data` at `offset` of region `index` (range and WRITE flag checked).
    fn region_write(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()>;

    /// Resets the device.
    fn reset(&mut self, ctx: &mut dyn DeviceContext) -> Result<()>;

    /// `VFIO_USER_DEVICE_FEATURE`: returns the reply's data. Default: no features.
    fn device_feature(&mut self, flags: u32, data: &[u8]) -> Result<Vec<u8>> {
        let _ = (flags, data);
        Err(crate::error::Error::Unsupported("device feature"))
    }

    /// Called when a client has been accepted, before its first command.
    fn client_connected(&mut self) {}

    /// Called when the client disconnects, once the session is over (the
    /// device is RUNNING again and the client's memory is unmapped); the
    /// model keeps its state.
    fn client_disconnected(&mut self) {}

    /// The model's migration hooks. `None` (the default): the device does
    /// not migrate, and the server answers no migration feature. With
    /// hooks, the server runs the migration state machine and moves the
    /// state stream (see [`Migratable`]).
    fn migration(&mut self) -> Option<&mut dyn Migratable> {
        None
    }

    /// The model's doorbells: writes a client may deliver through an eventfd
    /// (an ioeventfd of DEVICE_GET_REGION_IO_FDS) instead of a message. The
    /// server asks once per session. Default: none.
    fn doorbells(&self) -> Vec<Doorbell> {
        Vec::new()
    }
}

/// A write-only range of a region whose writes may arrive through an eventfd.
///
/// The server hands the client one eventfd per doorbell and turns what it
/// reads from it back into [`DeviceModel::region_write`] calls of `size`
/// bytes at `offset`, before the next command it handles:
///
/// * with `datamatch`, one write of the datamatch value per signal (the
///   client signals only writes of exactly that value);
/// * without, one write whose data is the eventfd count, the number of
///   writes since the last drain (their values are not carried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doorbell {
    /// Region index.
    pub region: u32,
    /// Offset of the register in the region.
    pub offset: u64,
    /// Width of the write, 1, 2, 4 or 8 bytes.
    pub size: u32,
    /// The one value that goes through the eventfd; `None`: any value.
    pub datamatch: Option<u64>,
}

/// What a device does to migrate; the server owns the state machine, the
/// stream's chunking and the checks, and calls these on the arcs:
///
/// | arc | call |
/// | --- | --- |
/// | RUNNING -> STOP | [`stop`](Self::stop) |
/// | STOP -> RUNNING | [`resume`](Self::resume) |
/// | STOP -> STOP_COPY | [`save`](Self::save), read out in chunks |
/// | RESUMING -> STOP | [`load`](Self::load) of every byte written |
///
/// An error from a hook fails the change and leaves the state as it was.
pub trait Migratable {
    /// Stops the device: work in progress completes (or is put in the
    /// state) and it starts nothing new until [`resume`](Self::resume).
    fn stop(&mut self, ctx: &mut dyn DeviceContext) -> Result<()>;

    /// Starts a stopped device again, re-raising any interrupt its state
    /// holds asserted (a loaded state's level interrupts reach the client).
    fn resume(&mut self, ctx: &mut dyn DeviceContext) -> Result<()>;

    /// The stopped device's whole state as one byte stream.
    fn save(&self) -> Result<Vec<u8>>;

    /// Replaces the device's state with a stream [`save`](Self::save) made.
    /// A stream that is truncated, corrupted, of another device or version
    /// is refused with [`Error::InvalidArgument`](crate::Error::InvalidArgument)
    /// and the device keeps its state: all or nothing.
    fn load(&mut self, stream: &[u8]) -> Result<()>;

    /// The longest stream [`load`](Self::load) can accept: the server
    /// refuses a MIG_DATA_WRITE that would pass it.
    fn max_stream_len(&self) -> usize;
}
