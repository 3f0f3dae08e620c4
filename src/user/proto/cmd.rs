//! vfio-user command numbers.

/// Version and capability negotiation.
pub const VERSION: u16 = 1;
/// Client memory made available for DMA.
pub const DMA_MAP: u16 = 2;
/// Client memory withdrawn.
pub const DMA_UNMAP: u16 = 3;
/// Device flags and counts.
pub const DEVICE_GET_INFO: u16 = 4;
/// Region info with its capability chain.
pub const DEVICE_GET_REGION_INFO: u16 = 5;
/// ioeventfd/ioregionfd sub-regions of a region.
pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
/// IRQ index info.
pub const DEVICE_GET_IRQ_INFO: u16 = 7;
/// IRQ actions and eventfds.
pub const DEVICE_SET_IRQS: u16 = 8;
/// Region read.
pub const REGION_READ: u16 = 9;
/// Region write.
pub const REGION_WRITE: u16 = 10;
/// Server reads client memory.
pub const DMA_READ: u16 = 11;
/// Server writes client memory.
pub const DMA_WRITE: u16 = 12;
/// Device reset.
pub const DEVICE_RESET: u16 = 13;
/// Several small writes in one message.
pub const REGION_WRITE_MULTI: u16 = 15;
/// Device feature get/set/probe.
pub const DEVICE_FEATURE: u16 = 16;
/// Migration data read.
pub const MIG_DATA_READ: u16 = 17;
/// Migration data write.
pub const MIG_DATA_WRITE: u16 = 18;

/// A command's name, for logs and errors.
pub fn name(command: u16) -> &'static str {
    match command {
        VERSION => "VERSION",
        DMA_MAP => "DMA_MAP",
        DMA_UNMAP => "DMA_UNMAP",
        DEVICE_GET_INFO => "DEVICE_GET_INFO",
        DEVICE_GET_REGION_INFO => "DEVICE_GET_REGION_INFO",
        DEVICE_GET_REGION_IO_FDS => "DEVICE_GET_REGION_IO_FDS",
        DEVICE_GET_IRQ_INFO => "DEVICE_GET_IRQ_INFO",
        DEVICE_SET_IRQS => "DEVICE_SET_IRQS",
        REGION_READ => "REGION_READ",
        REGION_WRITE => "REGION_WRITE",
        DMA_READ => "DMA_READ",
        DMA_WRITE => "DMA_WRITE",
        DEVICE_RESET => "DEVICE_RESET",
        REGION_WRITE_MULTI => "REGION_WRITE_MULTI",
        DEVICE_FEATURE => "DEVICE_FEATURE",
        MIG_DATA_READ => "MIG_DATA_READ",
        MIG_DATA_WRITE => "MIG_DATA_WRITE",
        _ => "UNKNOWN",
    }
}
