//! The vfio-user wire format: pure encoding and decoding, no I/O.
//!
//! All integers are in host byte order, as the protocol specifies. Decoders take
//! untrusted bytes and return [`Error::Protocol`] for anything malformed; they
//! never panic and never allocate more than the input justifies.

use crate::device::{DeviceInfo, IrqInfo};
use crate::error::{Error, Result};
pub use crate::region_info::{
    decode_region_info, decode_region_info_request, encode_region_info, encode_region_info_request,
    MAX_REGION_CAPS, MAX_SPARSE_AREAS, REGION_INFO_SIZE,
};

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// Header flag bits 0-3: the message type.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Message type: a command.
pub const FLAG_TYPE_COMMAND: u32 = 0;
/// Message type: a reply.
pub const FLAG_TYPE_REPLY: u32 = 1;
/// The command wants no reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error in the header's error field.
pub const FLAG_ERROR: u32 = 1 << 5;

/// vfio-user command numbers.
pub mod cmd {
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
}

use crate::bytes::{put_u16, put_u32, put_u64, short, u16_at, u32_at, u64_at};

/// The 16-byte header that starts every message.
///
/// ```
/// use vfio_io::user::proto::{cmd, Header, HEADER_SIZE};
///
/// let req = Header::command(7, cmd::DEVICE_GET_INFO, 32); // message id 7, 32-byte payload
/// let bytes = req.encode();
/// assert_eq!(bytes.len(), HEADER_SIZE);
/// let back = Header::decode(&bytes, 4096)?;
/// assert_eq!(back, req);
/// assert_eq!(back.payload_len(), 32);
/// assert!(!back.is_reply());
///
/// let err = Header::decode(&Header::error_reply(&req, libc::EINVAL).encode(), 4096)?;
/// assert!(err.is_reply());
/// assert_eq!(err.error_errno(), Some(libc::EINVAL));
///
/// // A size field past the receiver's limit is refused before any payload is read.
/// assert!(Header::decode(&Header::command(1, cmd::DMA_MAP, 8192).encode(), 4096).is_err());
/// # Ok::<(), vfio_io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Message id, chosen by the sender of a command and echoed in its reply.
    pub id: u16,
    /// Command number.
    pub command: u16,
    /// Whole message size, header included.
    pub size: u32,
    /// Type, no-reply and error bits.
    pub flags: u32,
    /// errno of a failed command (in a reply with [`FLAG_ERROR`]).
    pub error: u32,
}

impl Header {
    /// A command header for a payload of `payload_len` bytes.
    pub fn command(id: u16, command: u16, payload_len: usize) -> Self {
        Header {
            id,
            command,
            size: (HEADER_SIZE + payload_len) as u32,
            flags: FLAG_TYPE_COMMAND,
            error: 0,
        }
    }

    /// A successful reply to `req` with a payload of `payload_len` bytes.
    pub fn reply(req: &Header, payload_len: usize) -> Self {
        Header {
            id: req.id,
            command: req.command,
            size: (HEADER_SIZE + payload_len) as u32,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        }
    }

    /// An error reply to `req`: the header alone.
    pub fn error_reply(req: &Header, errno: i32) -> Self {
        Header {
            id: req.id,
            command: req.command,
            size: HEADER_SIZE as u32,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: errno as u32,
        }
    }

    /// Decodes a header and checks its size field against `max_size`.
    pub fn decode(b: &[u8], max_size: usize) -> Result<Self> {
        if b.len() < HEADER_SIZE {
            return Err(short("header"));
        }
        let h = Header {
            id: u16_at(b, 0).unwrap_or(0),
            command: u16_at(b, 2).unwrap_or(0),
            size: u32_at(b, 4).unwrap_or(0),
            flags: u32_at(b, 8).unwrap_or(0),
            error: u32_at(b, 12).unwrap_or(0),
        };
        if (h.size as usize) < HEADER_SIZE {
            return Err(Error::Protocol(format!(
                "message size {} is smaller than the header",
                h.size
            )));
        }
        if h.size as usize > max_size {
            return Err(Error::Protocol(format!(
                "message size {} exceeds the limit {max_size}",
                h.size
            )));
        }
        match h.flags & FLAG_TYPE_MASK {
            FLAG_TYPE_COMMAND | FLAG_TYPE_REPLY => Ok(h),
            t => Err(Error::Protocol(format!("unknown message type {t}"))),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        put_u16(&mut b, 0, self.id);
        put_u16(&mut b, 2, self.command);
        put_u32(&mut b, 4, self.size);
        put_u32(&mut b, 8, self.flags);
        put_u32(&mut b, 12, self.error);
        b
    }

    /// Whether this is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_TYPE_MASK == FLAG_TYPE_REPLY
    }

    /// Whether the command asks for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// The errno of an error reply, if this is one (`EIO` when the peer sent 0).
    pub fn error_errno(&self) -> Option<i32> {
        if self.flags & FLAG_ERROR == 0 {
            return None;
        }
        let e = self.error as i32;
        Some(if e <= 0 || e > 4095 { libc::EIO } else { e })
    }

    /// Payload length (size minus header).
    pub fn payload_len(&self) -> usize {
        self.size as usize - HEADER_SIZE
    }
}

/// `VFIO_USER_DMA_MAP` flags: the server may read the memory.
pub const DMA_MAP_READ: u32 = 1 << 0;
/// `VFIO_USER_DMA_MAP` flags: the server may write the memory.
pub const DMA_MAP_WRITE: u32 = 1 << 1;

/// The DMA_MAP request payload (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapMsg {
    /// Size of this structure.
    pub argsz: u32,
    /// [`DMA_MAP_READ`] | [`DMA_MAP_WRITE`].
    pub flags: u32,
    /// Offset of the memory within the passed fd (0 without one).
    pub offset: u64,
    /// DMA address of the first byte.
    pub address: u64,
    /// Length.
    pub size: u64,
}

impl DmaMapMsg {
    /// Encoded size.
    pub const SIZE: usize = 32;

    /// Encodes the payload.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, self.argsz);
        put_u32(&mut b, 4, self.flags);
        put_u64(&mut b, 8, self.offset);
        put_u64(&mut b, 16, self.address);
        put_u64(&mut b, 24, self.size);
        b
    }

    /// Decodes the payload.
    pub fn decode(b: &[u8]) -> Result<Self> {
        Ok(DmaMapMsg {
            argsz: u32_at(b, 0).ok_or_else(|| short("DMA_MAP"))?,
            flags: u32_at(b, 4).ok_or_else(|| short("DMA_MAP"))?,
            offset: u64_at(b, 8).ok_or_else(|| short("DMA_MAP"))?,
            address: u64_at(b, 16).ok_or_else(|| short("DMA_MAP"))?,
            size: u64_at(b, 24).ok_or_else(|| short("DMA_MAP"))?,
        })
    }
}

/// The DMA_UNMAP payload (24 bytes), in the request and echoed in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmapMsg {
    /// Largest reply accepted.
    pub argsz: u32,
    /// Unused (0).
    pub flags: u32,
    /// DMA address of the mapping.
    pub address: u64,
    /// Length of the mapping.
    pub size: u64,
}

impl DmaUnmapMsg {
    /// Encoded size.
    pub const SIZE: usize = 24;

    /// Encodes the payload.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, self.argsz);
        put_u32(&mut b, 4, self.flags);
        put_u64(&mut b, 8, self.address);
        put_u64(&mut b, 16, self.size);
        b
    }

    /// Decodes the payload.
    pub fn decode(b: &[u8]) -> Result<Self> {
        Ok(DmaUnmapMsg {
            argsz: u32_at(b, 0).ok_or_else(|| short("DMA_UNMAP"))?,
            flags: u32_at(b, 4).ok_or_else(|| short("DMA_UNMAP"))?,
            address: u64_at(b, 8).ok_or_else(|| short("DMA_UNMAP"))?,
            size: u64_at(b, 16).ok_or_else(|| short("DMA_UNMAP"))?,
        })
    }
}

/// Encodes a DEVICE_GET_INFO payload (request with zeros, or reply).
pub fn encode_device_info(argsz: u32, info: &DeviceInfo) -> [u8; 16] {
    let mut b = [0u8; 16];
    put_u32(&mut b, 0, argsz);
    put_u32(&mut b, 4, info.flags);
    put_u32(&mut b, 8, info.num_regions);
    put_u32(&mut b, 12, info.num_irqs);
    b
}

/// Decodes a DEVICE_GET_INFO payload.
pub fn decode_device_info(b: &[u8]) -> Result<DeviceInfo> {
    Ok(DeviceInfo {
        flags: u32_at(b, 4).ok_or_else(|| short("DEVICE_GET_INFO"))?,
        num_regions: u32_at(b, 8).ok_or_else(|| short("DEVICE_GET_INFO"))?,
        num_irqs: u32_at(b, 12).ok_or_else(|| short("DEVICE_GET_INFO"))?,
    })
}

/// IRQ info payload size.
pub const IRQ_INFO_SIZE: usize = 16;

/// Encodes a DEVICE_GET_IRQ_INFO payload.
pub fn encode_irq_info(argsz: u32, info: &IrqInfo) -> [u8; IRQ_INFO_SIZE] {
    let mut b = [0u8; IRQ_INFO_SIZE];
    put_u32(&mut b, 0, argsz);
    put_u32(&mut b, 4, info.flags);
    put_u32(&mut b, 8, info.index);
    put_u32(&mut b, 12, info.count);
    b
}

/// Decodes a DEVICE_GET_IRQ_INFO payload.
pub fn decode_irq_info(b: &[u8]) -> Result<IrqInfo> {
    Ok(IrqInfo {
        flags: u32_at(b, 4).ok_or_else(|| short("DEVICE_GET_IRQ_INFO"))?,
        index: u32_at(b, 8).ok_or_else(|| short("DEVICE_GET_IRQ_INFO"))?,
        count: u32_at(b, 12).ok_or_else(|| short("DEVICE_GET_IRQ_INFO"))?,
    })
}

/// Fixed part of a SET_IRQS payload.
pub const IRQ_SET_SIZE: usize = 20;

/// The fixed part of `struct vfio_irq_set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqSetMsg {
    /// Size of the request payload, data included.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}

impl IrqSetMsg {
    /// Encodes the fixed part.
    pub fn encode(&self) -> [u8; IRQ_SET_SIZE] {
        let mut b = [0u8; IRQ_SET_SIZE];
        put_u32(&mut b, 0, self.argsz);
        put_u32(&mut b, 4, self.flags);
        put_u32(&mut b, 8, self.index);
        put_u32(&mut b, 12, self.start);
        put_u32(&mut b, 16, self.count);
        b
    }

    /// Decodes the fixed part; the data follows at [`IRQ_SET_SIZE`].
    pub fn decode(b: &[u8]) -> Result<Self> {
        Ok(IrqSetMsg {
            argsz: u32_at(b, 0).ok_or_else(|| short("DEVICE_SET_IRQS"))?,
            flags: u32_at(b, 4).ok_or_else(|| short("DEVICE_SET_IRQS"))?,
            index: u32_at(b, 8).ok_or_else(|| short("DEVICE_SET_IRQS"))?,
            start: u32_at(b, 12).ok_or_else(|| short("DEVICE_SET_IRQS"))?,
            count: u32_at(b, 16).ok_or_else(|| short("DEVICE_SET_IRQS"))?,
        })
    }
}

/// The fixed part of REGION_READ/REGION_WRITE (16 bytes); data follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset into the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Byte count.
    pub count: u32,
}

impl RegionAccess {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Encodes the fixed part.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, 0, self.offset);
        put_u32(&mut b, 8, self.region);
        put_u32(&mut b, 12, self.count);
        b
    }

    /// Decodes the fixed part.
    pub fn decode(b: &[u8]) -> Result<Self> {
        Ok(RegionAccess {
            offset: u64_at(b, 0).ok_or_else(|| short("region access"))?,
            region: u32_at(b, 8).ok_or_else(|| short("region access"))?,
            count: u32_at(b, 12).ok_or_else(|| short("region access"))?,
        })
    }
}

/// The fixed part of DMA_READ/DMA_WRITE (16 bytes); data follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaAccess {
    /// DMA address.
    pub address: u64,
    /// Byte count.
    pub count: u64,
}

impl DmaAccess {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Encodes the fixed part.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, 0, self.address);
        put_u64(&mut b, 8, self.count);
        b
    }

    /// Decodes the fixed part.
    pub fn decode(b: &[u8]) -> Result<Self> {
        Ok(DmaAccess {
            address: u64_at(b, 0).ok_or_else(|| short("DMA access"))?,
            count: u64_at(b, 8).ok_or_else(|| short("DMA access"))?,
        })
    }
}

/// One write of REGION_WRITE_MULTI (24 bytes; at most 8 data bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiWrite {
    /// Offset into the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Byte count, 1..=8.
    pub count: u32,
    /// The data, first `count` bytes used.
    pub data: [u8; 8],
}

impl MultiWrite {
    /// Encoded size of one entry.
    pub const SIZE: usize = 24;
    /// Most entries one message may carry.
    pub const MAX_ENTRIES: usize = 1024;
}

/// Encodes a REGION_WRITE_MULTI payload.
pub fn encode_write_multi(writes: &[MultiWrite], out: &mut Vec<u8>) {
    out.extend_from_slice(&(writes.len() as u64).to_ne_bytes());
    for w in writes {
        let mut e = [0u8; MultiWrite::SIZE];
        put_u64(&mut e, 0, w.offset);
        put_u32(&mut e, 8, w.region);
        put_u32(&mut e, 12, w.count);
        e[16..24].copy_from_slice(&w.data);
        out.extend_from_slice(&e);
    }
}

/// Decodes a REGION_WRITE_MULTI payload.
pub fn decode_write_multi(b: &[u8]) -> Result<Vec<MultiWrite>> {
    let n = u64_at(b, 0).ok_or_else(|| short("REGION_WRITE_MULTI"))?;
    if n as usize > MultiWrite::MAX_ENTRIES || b.len() < 8 + n as usize * MultiWrite::SIZE {
        return Err(Error::Protocol(format!(
            "REGION_WRITE_MULTI claims {n} writes"
        )));
    }
    let mut v = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let e = &b[8 + i * MultiWrite::SIZE..8 + (i + 1) * MultiWrite::SIZE];
        let count = u32_at(e, 12).unwrap_or(0);
        if count == 0 || count > 8 {
            return Err(Error::Protocol(format!(
                "REGION_WRITE_MULTI entry of {count} bytes"
            )));
        }
        let mut data = [0u8; 8];
        data.copy_from_slice(&e[16..24]);
        v.push(MultiWrite {
            offset: u64_at(e, 0).unwrap_or(0),
            region: u32_at(e, 8).unwrap_or(0),
            count,
            data,
        });
    }
    Ok(v)
}

/// DEVICE_FEATURE fixed part: argsz and flags (8 bytes); data follows.
pub fn encode_feature(argsz: u32, flags: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    put_u32(&mut b, 0, argsz);
    put_u32(&mut b, 4, flags);
    b
}

/// Decodes DEVICE_FEATURE's (argsz, flags, data).
pub fn decode_feature(b: &[u8]) -> Result<(u32, u32, &[u8])> {
    let argsz = u32_at(b, 0).ok_or_else(|| short("DEVICE_FEATURE"))?;
    let flags = u32_at(b, 4).ok_or_else(|| short("DEVICE_FEATURE"))?;
    Ok((argsz, flags, &b[8..]))
}

/// One sub-region of a DEVICE_GET_REGION_IO_FDS reply (40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFdSubRegion {
    /// Offset within the region.
    pub offset: u64,
    /// Length (0: any access size).
    pub size: u64,
    /// Index of the fd in the message's fd array.
    pub fd_index: u32,
    /// 0 ioeventfd, 1 ioregionfd.
    pub kind: u32,
    /// KVM ioeventfd/ioregionfd flags.
    pub flags: u32,
    /// Datamatch value (ioeventfd) or user data (ioregionfd).
    pub data: u64,
}

impl IoFdSubRegion {
    /// Encoded size.
    pub const SIZE: usize = 40;
}

/// Encodes a DEVICE_GET_REGION_IO_FDS reply; sub-regions are dropped (count
/// still reported through argsz) when they do not fit `argsz`.
pub fn encode_io_fds(argsz: u32, index: u32, subs: &[IoFdSubRegion]) -> Vec<u8> {
    let needed = 16 + subs.len() * IoFdSubRegion::SIZE;
    let fits = needed <= argsz as usize;
    let mut out = vec![0u8; 16];
    put_u32(&mut out, 0, needed as u32);
    put_u32(&mut out, 8, index);
    put_u32(&mut out, 12, subs.len() as u32);
    if fits {
        for s in subs {
            let mut e = [0u8; IoFdSubRegion::SIZE];
            put_u64(&mut e, 0, s.offset);
            put_u64(&mut e, 8, s.size);
            put_u32(&mut e, 16, s.fd_index);
            put_u32(&mut e, 20, s.kind);
            put_u32(&mut e, 24, s.flags);
            put_u64(&mut e, 32, s.data);
            out.extend_from_slice(&e);
        }
    }
    out
}

/// Decodes a DEVICE_GET_REGION_IO_FDS reply: (index, sub-regions).
pub fn decode_io_fds(b: &[u8]) -> Result<(u32, Vec<IoFdSubRegion>)> {
    let index = u32_at(b, 8).ok_or_else(|| short("DEVICE_GET_REGION_IO_FDS"))?;
    let count = u32_at(b, 12).ok_or_else(|| short("DEVICE_GET_REGION_IO_FDS"))? as usize;
    let have = (b.len() - 16) / IoFdSubRegion::SIZE;
    if count > have {
        return Err(Error::Protocol(format!(
            "REGION_IO_FDS claims {count} sub-regions, carries {have}"
        )));
    }
    let subs = (0..count)
        .map(|i| {
            let e = &b[16 + i * IoFdSubRegion::SIZE..];
            IoFdSubRegion {
                offset: u64_at(e, 0).unwrap_or(0),
                size: u64_at(e, 8).unwrap_or(0),
                fd_index: u32_at(e, 16).unwrap_or(0),
                kind: u32_at(e, 20).unwrap_or(0),
                flags: u32_at(e, 24).unwrap_or(0),
                data: u64_at(e, 32).unwrap_or(0),
            }
        })
        .collect();
    Ok((index, subs))
}

/// The version payload's fixed part: major, minor (4 bytes); JSON follows.
pub fn encode_version(major: u16, minor: u16, json: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + json.len() + 1);
    b.extend_from_slice(&major.to_ne_bytes());
    b.extend_from_slice(&minor.to_ne_bytes());
    b.extend_from_slice(json.as_bytes());
    b.push(0);
    b
}

/// Decodes a version payload into (major, minor, JSON text without its NUL).
pub fn decode_version(b: &[u8]) -> Result<(u16, u16, &str)> {
    let major = u16_at(b, 0).ok_or_else(|| short("VERSION"))?;
    let minor = u16_at(b, 2).ok_or_else(|| short("VERSION"))?;
    let rest = &b[4..];
    let text = match rest.iter().position(|&c| c == 0) {
        Some(n) => &rest[..n],
        None if rest.is_empty() => rest,
        None => return Err(Error::Protocol("VERSION data is not NUL-terminated".into())),
    };
    let s = std::str::from_utf8(text)
        .map_err(|_| Error::Protocol("VERSION data is not UTF-8".into()))?;
    Ok((major, minor, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_bad_sizes() {
        let h = Header {
            id: 7,
            command: cmd::REGION_READ,
            size: 32,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        };
        assert_eq!(Header::decode(&h.encode(), 64).unwrap(), h);
        let mut small = h;
        small.size = 8;
        assert!(matches!(
            Header::decode(&small.encode(), 64),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            Header::decode(&h.encode(), 31),
            Err(Error::Protocol(_))
        ));
        assert!(Header::decode(&h.encode()[..15], 64).is_err());
        let mut bad_type = h;
        bad_type.flags = 7;
        assert!(Header::decode(&bad_type.encode(), 64).is_err());
    }

    #[test]
    fn error_reply_carries_errno_and_zero_becomes_eio() {
        let req = Header::command(3, cmd::DMA_MAP, 32);
        let r = Header::error_reply(&req, libc::EEXIST);
        assert_eq!(r.error_errno(), Some(libc::EEXIST));
        assert_eq!(r.payload_len(), 0);
        let mut z = r;
        z.error = 0;
        assert_eq!(z.error_errno(), Some(libc::EIO));
        assert_eq!(Header::reply(&req, 0).error_errno(), None);
    }

    #[test]
    fn write_multi_round_trips_and_bounds_entries() {
        let w = MultiWrite {
            offset: 4,
            region: 0,
            count: 4,
            data: [1, 2, 3, 4, 0, 0, 0, 0],
        };
        let mut b = Vec::new();
        encode_write_multi(&[w, w], &mut b);
        assert_eq!(decode_write_multi(&b).unwrap(), vec![w, w]);
        put_u64(&mut b, 0, 3);
        assert!(decode_write_multi(&b).is_err());
        let mut b = Vec::new();
        encode_write_multi(&[MultiWrite { count: 9, ..w }], &mut b);
        assert!(decode_write_multi(&b).is_err());
    }

    #[test]
    fn version_payload_needs_nul_and_utf8() {
        let b = encode_version(0, 0, "{}");
        assert_eq!(decode_version(&b).unwrap(), (0, 0, "{}"));
        assert!(decode_version(&[0, 0, 0, 0, b'{']).is_err());
        assert!(decode_version(&[0, 0, 0, 0, 0xff, 0]).is_err());
        assert_eq!(decode_version(&[1, 0, 2, 0]).unwrap(), (1, 2, ""));
    }

    #[test]
    fn fixed_structs_round_trip() {
        let m = DmaMapMsg {
            argsz: 32,
            flags: 3,
            offset: 1,
            address: 2,
            size: 3,
        };
        assert_eq!(DmaMapMsg::decode(&m.encode()).unwrap(), m);
        let u = DmaUnmapMsg {
            argsz: 24,
            flags: 0,
            address: 5,
            size: 6,
        };
        assert_eq!(DmaUnmapMsg::decode(&u.encode()).unwrap(), u);
        let s = IrqSetMsg {
            argsz: 24,
            flags: 0x24,
            index: 1,
            start: 0,
            count: 1,
        };
        assert_eq!(IrqSetMsg::decode(&s.encode()).unwrap(), s);
        let r = RegionAccess {
            offset: 8,
            region: 7,
            count: 4,
        };
        assert_eq!(RegionAccess::decode(&r.encode()).unwrap(), r);
        let d = DmaAccess {
            address: 9,
            count: 10,
        };
        assert_eq!(DmaAccess::decode(&d.encode()).unwrap(), d);
        assert!(DmaMapMsg::decode(&m.encode()[..31]).is_err());
        let i = IrqInfo {
            index: 1,
            flags: 9,
            count: 1,
        };
        assert_eq!(decode_irq_info(&encode_irq_info(16, &i)).unwrap(), i);
        let di = DeviceInfo {
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
        };
        assert_eq!(
            decode_device_info(&encode_device_info(16, &di)).unwrap(),
            di
        );
    }

    #[test]
    fn io_fds_round_trip_and_count_check() {
        let s = IoFdSubRegion {
            offset: 0x1000,
            size: 4,
            fd_index: 0,
            kind: 0,
            flags: 1,
            data: 7,
        };
        let b = encode_io_fds(4096, 0, &[s]);
        assert_eq!(decode_io_fds(&b).unwrap(), (0, vec![s]));
        let mut bad = b.clone();
        put_u32(&mut bad, 12, 2);
        assert!(decode_io_fds(&bad).is_err());
    }
}
