//! `struct vfio_region_info` with its capability chain: the layout the kernel
//! ioctl, the vfio-user reply and the C ABI share, encoded and decoded once.
//! Decoding takes untrusted bytes (a vfio-user server's reply) and never panics.

use crate::device::{RegionCap, RegionInfo, SparseArea};
use crate::error::{Error, Result};

use crate::bytes::{put_u16, put_u32, put_u64, short, u16_at, u32_at, u64_at};

/// Fixed part of `struct vfio_region_info`.
pub const REGION_INFO_SIZE: usize = 32;
const CAP_HEADER_SIZE: usize = 8;
const CAP_SPARSE_MMAP: u16 = 1;
const CAP_TYPE: u16 = 2;
const CAP_MSIX_MAPPABLE: u16 = 3;
/// Most capabilities one region info may carry; a longer chain is refused.
pub const MAX_REGION_CAPS: usize = 16;
/// Most sparse areas one capability may describe.
pub const MAX_SPARSE_AREAS: usize = 1024;
/// Largest region info, capability chain included, taken from the kernel or a
/// vfio-user server: real chains are a few hundred bytes, so an argsz near
/// this means a confused or hostile peer, not a big region.
pub const MAX_REGION_INFO: usize = 64 * 1024;

/// A DEVICE_GET_REGION_INFO request for `index`, accepting `argsz` bytes back.
pub fn encode_region_info_request(argsz: u32, index: u32) -> [u8; REGION_INFO_SIZE] {
    let mut b = [0u8; REGION_INFO_SIZE];
    put_u32(&mut b, 0, argsz);
    put_u32(&mut b, 8, index);
    b
}

/// The (argsz, index) of a DEVICE_GET_REGION_INFO request.
pub fn decode_region_info_request(b: &[u8]) -> Result<(u32, u32)> {
    if b.len() < REGION_INFO_SIZE {
        return Err(short("DEVICE_GET_REGION_INFO"));
    }
    Ok((u32_at(b, 0).unwrap_or(0), u32_at(b, 8).unwrap_or(0)))
}

fn encode_cap(id: u16, version: u16, body: &[u8], out: &mut Vec<u8>, last: bool) {
    let start = out.len();
    let mut hdr = [0u8; CAP_HEADER_SIZE];
    put_u16(&mut hdr, 0, id);
    put_u16(&mut hdr, 2, version);
    out.extend_from_slice(&hdr);
    out.extend_from_slice(body);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    let next = if last { 0 } else { out.len() as u32 };
    put_u32(out, start + 4, next);
}

/// Encodes `info` as `struct vfio_region_info` with its capability chain, the
/// layout shared by the kernel ioctl and the vfio-user reply. The first field
/// (argsz) is the full size needed. If that exceeds `room`, only the fixed part
/// is produced, with CAPS still flagged, so the caller can retry with more room.
pub fn encode_region_info(info: &RegionInfo, room: usize) -> Vec<u8> {
    let mut out = vec![0u8; REGION_INFO_SIZE];
    let mut flags = info.flags & !crate::device::VFIO_REGION_INFO_FLAG_CAPS;
    let n = info.caps.len();
    for (i, cap) in info.caps.iter().enumerate() {
        let last = i + 1 == n;
        match cap {
            RegionCap::SparseMmap(areas) => {
                let mut body = vec![0u8; 8 + 16 * areas.len()];
                put_u32(&mut body, 0, areas.len() as u32);
                for (j, a) in areas.iter().enumerate() {
                    put_u64(&mut body, 8 + 16 * j, a.offset);
                    put_u64(&mut body, 16 + 16 * j, a.size);
                }
                encode_cap(CAP_SPARSE_MMAP, 1, &body, &mut out, last);
            }
            RegionCap::Type {
                region_type,
                subtype,
            } => {
                let mut body = [0u8; 8];
                put_u32(&mut body, 0, *region_type);
                put_u32(&mut body, 4, *subtype);
                encode_cap(CAP_TYPE, 1, &body, &mut out, last);
            }
            RegionCap::MsixMappable => encode_cap(CAP_MSIX_MAPPABLE, 1, &[], &mut out, last),
            RegionCap::Other { id, version, data } => {
                encode_cap(*id, *version, data, &mut out, last)
            }
        }
    }
    let needed = out.len();
    let cap_offset = if n > 0 { REGION_INFO_SIZE as u32 } else { 0 };
    if n > 0 {
        flags |= crate::device::VFIO_REGION_INFO_FLAG_CAPS;
    }
    if needed > room {
        out.truncate(REGION_INFO_SIZE);
    }
    put_u32(&mut out, 0, needed as u32);
    put_u32(&mut out, 4, flags);
    put_u32(&mut out, 8, info.index);
    put_u32(&mut out, 12, if needed > room { 0 } else { cap_offset });
    put_u64(&mut out, 16, info.size);
    put_u64(&mut out, 24, info.offset);
    out
}

/// Encodes `info` as a vfio-user DEVICE_GET_REGION_INFO reply: as
/// [`encode_region_info`], except that a reply too short for the chain still
/// points `cap_offset` past the fixed part. The spec leaves it open; QEMU's
/// client refuses a CAPS reply whose `cap_offset` is below 32 before it
/// retries with the `argsz` asked for, so the kernel's 0 would fail it.
pub fn encode_region_info_reply(info: &RegionInfo, room: usize) -> Vec<u8> {
    let mut out = encode_region_info(info, room);
    if u32_at(&out, 4).unwrap_or(0) & crate::device::VFIO_REGION_INFO_FLAG_CAPS != 0 {
        put_u32(&mut out, 12, REGION_INFO_SIZE as u32);
    }
    out
}

/// Decodes `struct vfio_region_info` and walks its capability chain, refusing
/// offsets outside `b`, overlapping or backward links (which is how loops
/// show), and over-long chains. Returns the info and the argsz the peer said it
/// needs (larger than `b` when the caller should retry with more room).
pub fn decode_region_info(b: &[u8]) -> Result<(RegionInfo, u32)> {
    if b.len() < REGION_INFO_SIZE {
        return Err(short("region info"));
    }
    let argsz = u32_at(b, 0).unwrap_or(0);
    let flags = u32_at(b, 4).unwrap_or(0);
    let mut info = RegionInfo {
        index: u32_at(b, 8).unwrap_or(0),
        flags,
        size: u64_at(b, 16).unwrap_or(0),
        offset: u64_at(b, 24).unwrap_or(0),
        caps: Vec::new(),
        fd: None,
    };
    let first = u32_at(b, 12).unwrap_or(0) as usize;
    if flags & crate::device::VFIO_REGION_INFO_FLAG_CAPS == 0 || (argsz as usize) > b.len() {
        // No chain, or a truncated reply whose chain the caller must fetch again.
        return Ok((info, argsz));
    }
    info.caps = decode_cap_chain(b, first, argsz, info.size)?;
    Ok((info, argsz))
}

/// Walks the capability chain of reply `b` from offset `first`: each link
/// must lie inside `b` and after the end of the one before it.
fn decode_cap_chain(
    b: &[u8],
    first: usize,
    argsz: u32,
    region_size: u64,
) -> Result<Vec<RegionCap>> {
    let mut caps = Vec::new();
    let mut next = first;
    let mut min_next = REGION_INFO_SIZE;
    while next != 0 {
        if caps.len() == MAX_REGION_CAPS {
            return Err(Error::Protocol(
                "region info capability chain too long".into(),
            ));
        }
        if next < min_next || next % 4 != 0 || next + CAP_HEADER_SIZE > b.len() {
            return Err(Error::Protocol(format!(
                "region info capability at bad offset {next}"
            )));
        }
        let id = u16_at(b, next).unwrap_or(0);
        let version = u16_at(b, next + 2).unwrap_or(0);
        let following = u32_at(b, next + 4).unwrap_or(0) as usize;
        // A capability extends to the next one, or to the end of the reply.
        let end = if following == 0 {
            b.len().min(argsz as usize)
        } else {
            following
        };
        if end < next + CAP_HEADER_SIZE || end > b.len() {
            return Err(Error::Protocol(format!(
                "region info capability at {next} overlaps or overruns"
            )));
        }
        let body = &b[next + CAP_HEADER_SIZE..end];
        caps.push(decode_cap(id, version, body, region_size)?);
        min_next = end;
        next = following;
    }
    Ok(caps)
}

/// Decodes one capability from its header's `id` and `version` and its `body`.
fn decode_cap(id: u16, version: u16, body: &[u8], region_size: u64) -> Result<RegionCap> {
    Ok(match id {
        CAP_SPARSE_MMAP => RegionCap::SparseMmap(decode_sparse_areas(body, region_size)?),
        CAP_TYPE => RegionCap::Type {
            region_type: u32_at(body, 0).ok_or_else(|| short("type cap"))?,
            subtype: u32_at(body, 4).ok_or_else(|| short("type cap"))?,
        },
        CAP_MSIX_MAPPABLE => RegionCap::MsixMappable,
        _ => RegionCap::Other {
            id,
            version,
            data: body.to_vec(),
        },
    })
}

/// Decodes the areas of a sparse mmap capability, each of which must lie
/// inside the region.
fn decode_sparse_areas(body: &[u8], region_size: u64) -> Result<Vec<SparseArea>> {
    let nr = u32_at(body, 0).ok_or_else(|| short("sparse mmap cap"))? as usize;
    if nr > MAX_SPARSE_AREAS || body.len() < 8 + nr * 16 {
        return Err(Error::Protocol(format!(
            "sparse mmap cap claims {nr} areas"
        )));
    }
    let mut areas = Vec::with_capacity(nr);
    for j in 0..nr {
        let a = SparseArea {
            offset: u64_at(body, 8 + 16 * j).unwrap_or(0),
            size: u64_at(body, 16 + 16 * j).unwrap_or(0),
        };
        let inside = a
            .offset
            .checked_add(a.size)
            .is_some_and(|e| e <= region_size);
        if !inside {
            return Err(Error::Protocol(format!(
                "sparse area {:#x}+{:#x} lies past the region end {:#x}",
                a.offset, a.size, region_size
            )));
        }
        areas.push(a);
    }
    Ok(areas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_region() -> RegionInfo {
        RegionInfo {
            index: 0,
            flags: crate::device::VFIO_REGION_INFO_FLAG_READ
                | crate::device::VFIO_REGION_INFO_FLAG_MMAP,
            size: 0x10000,
            offset: 0x1000,
            caps: vec![
                RegionCap::SparseMmap(vec![SparseArea {
                    offset: 0x1000,
                    size: 0x2000,
                }]),
                RegionCap::Type {
                    region_type: 3,
                    subtype: 1,
                },
                RegionCap::MsixMappable,
            ],
            fd: None,
        }
    }

    #[test]
    fn region_info_round_trips_with_caps() {
        let info = sample_region();
        let b = encode_region_info(&info, 4096);
        let (back, argsz) = decode_region_info(&b).unwrap();
        assert_eq!(argsz as usize, b.len());
        assert_eq!(back.caps, info.caps);
        assert_eq!(back.size, info.size);
        assert_eq!(back.offset, info.offset);
        assert_ne!(back.flags & crate::device::VFIO_REGION_INFO_FLAG_CAPS, 0);
    }

    #[test]
    fn region_info_too_small_room_reports_needed_size() {
        let b = encode_region_info(&sample_region(), REGION_INFO_SIZE);
        assert_eq!(b.len(), REGION_INFO_SIZE);
        let (info, argsz) = decode_region_info(&b).unwrap();
        assert!(argsz as usize > REGION_INFO_SIZE);
        assert!(info.caps.is_empty());
    }

    #[test]
    fn region_info_rejects_out_of_bounds_and_looping_chains() {
        let mut b = encode_region_info(&sample_region(), 4096);
        let len = b.len() as u32;
        put_u32(&mut b, 12, len + 8);
        assert!(decode_region_info(&b).is_err(), "cap offset past the end");
        let mut b = encode_region_info(&sample_region(), 4096);
        // First cap's next points back at itself.
        put_u32(&mut b, REGION_INFO_SIZE + 4, REGION_INFO_SIZE as u32);
        assert!(decode_region_info(&b).is_err(), "loop");
        let mut b = encode_region_info(&sample_region(), 4096);
        put_u32(&mut b, 12, 4);
        assert!(decode_region_info(&b).is_err(), "cap inside the fixed part");
    }

    #[test]
    fn sparse_area_past_region_end_is_refused() {
        let mut info = sample_region();
        info.caps = vec![RegionCap::SparseMmap(vec![SparseArea {
            offset: 0xf000,
            size: 0x2000,
        }])];
        let b = encode_region_info(&info, 4096);
        assert!(decode_region_info(&b).is_err());
        info.caps = vec![RegionCap::SparseMmap(vec![SparseArea {
            offset: u64::MAX,
            size: 2,
        }])];
        assert!(decode_region_info(&encode_region_info(&info, 4096)).is_err());
    }

    #[test]
    fn sparse_area_count_larger_than_payload_is_refused() {
        let mut b = encode_region_info(&sample_region(), 4096);
        put_u32(&mut b, REGION_INFO_SIZE + CAP_HEADER_SIZE, u32::MAX);
        assert!(decode_region_info(&b).is_err());
    }

    #[test]
    fn truncated_type_cap_is_refused() {
        let mut info = sample_region();
        info.caps = vec![RegionCap::Type {
            region_type: 1,
            subtype: 2,
        }];
        let mut b = encode_region_info(&info, 4096);
        // Cut the type capability's body short and say so in argsz.
        b.truncate(REGION_INFO_SIZE + CAP_HEADER_SIZE + 4);
        let len = b.len() as u32;
        put_u32(&mut b, 0, len);
        assert!(decode_region_info(&b).is_err());
    }
}
