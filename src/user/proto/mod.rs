//! The vfio-user wire format: pure encoding and decoding, no I/O.
//!
//! All integers are in host byte order, as the protocol specifies. Decoders take
//! untrusted bytes and return [`Error::Protocol`](crate::Error::Protocol) for
//! anything malformed; they never panic and never allocate more than the input
//! justifies. Fixed-layout messages are declared once as field lists
//! (`layout::wire_struct!`); the files below group them by message family.

#[macro_use]
mod layout;
pub mod cmd;
mod device;
mod dma;
mod dma_logging;
mod header;
mod irq;
mod migration;
mod region;

pub use crate::region_info::{
    decode_region_info, decode_region_info_request, encode_region_info, encode_region_info_reply,
    encode_region_info_request, MAX_REGION_CAPS, MAX_SPARSE_AREAS, REGION_INFO_SIZE,
};
pub use device::{
    decode_device_info, decode_feature, decode_version, encode_device_info, encode_feature,
    encode_version,
};
pub use dma::{DmaAccess, DmaMapMsg, DmaUnmapMsg, DMA_MAP_READ, DMA_MAP_WRITE};
pub use dma_logging::{
    decode_dma_logging_start, encode_dma_logging_start, DmaLoggingControl, DmaLoggingRange,
    DmaLoggingReport,
};
pub use header::{
    Header, FLAG_ERROR, FLAG_NO_REPLY, FLAG_TYPE_COMMAND, FLAG_TYPE_MASK, FLAG_TYPE_REPLY,
    HEADER_SIZE,
};
pub use irq::{decode_irq_info, encode_irq_info, IrqSetMsg, IRQ_INFO_SIZE, IRQ_SET_SIZE};
pub use migration::{MigDataMsg, MigDataSize, MigStateMsg, MigrationFeature};
pub use region::{
    decode_io_fds, decode_io_fds_request, decode_write_multi, encode_io_fds, encode_io_fds_request,
    encode_write_multi, IoFdSubRegion, MultiWrite, RegionAccess, RegionIoFds,
};
