//! Region info: the two-step GET_REGION_INFO call and the capability chain
//! parser.
//!
//! The chain comes from the kernel, but it is parsed as untrusted bytes all
//! the same: every offset is checked against the buffer, and the walk only
//! moves forward, so a corrupt chain is an error rather than a loop or an
//! out-of-bounds read.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use vfio_bindings::bindings::vfio as uapi;

use super::ioctl;
use crate::device::{
    RegionCap, RegionInfo, SparseArea, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
};
use crate::error::{Error, Result};

/// sizeof(struct vfio_region_info): capabilities start at or after it.
pub const REGION_INFO_SIZE: usize = std::mem::size_of::<uapi::vfio_region_info>();
const CAP_HEADER_SIZE: usize = std::mem::size_of::<uapi::vfio_info_cap_header>();
/// A bound on the buffer the kernel may ask for: real chains are a few hundred
/// bytes, so anything near this means a confused kernel, not a big region.
const MAX_REGION_INFO: usize = 64 * 1024;

fn u16_at(buf: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        buf.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        buf.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(buf: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        buf.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

const fn bad(what: &'static str) -> Error {
    Error::Sys {
        op: what,
        errno: libc::EPROTO,
    }
}

/// Parses the capability chain of a `vfio_region_info` held in `buf`, starting
/// at `first` (the struct's `cap_offset`; 0 means no chain).
///
/// Offsets are relative to the start of `buf`. Each capability must lie after
/// the fixed struct and after the previous capability, and inside `buf`.
pub fn parse_region_caps(buf: &[u8], first: u32) -> Result<Vec<RegionCap>> {
    let mut caps = Vec::new();
    let mut off = first as usize;
    // The chain must move forward: this both ends every walk and rejects a
    // capability pointing back into the fixed struct or at itself.
    let mut min = REGION_INFO_SIZE;
    while off != 0 {
        if off < min {
            return Err(bad("region info capability chain goes backwards or loops"));
        }
        let end = off
            .checked_add(CAP_HEADER_SIZE)
            .filter(|&e| e <= buf.len())
            .ok_or(bad("region info capability offset past the buffer"))?;
        let id = u16_at(buf, off).ok_or(bad("capability header"))?;
        let version = u16_at(buf, off + 2).ok_or(bad("capability header"))?;
        let next = u32_at(buf, off + 4).ok_or(bad("capability header"))? as usize;
        // The body runs up to the next capability, or to the end of the buffer.
        let body_end = if next == 0 {
            buf.len()
        } else {
            next.min(buf.len()).max(end)
        };
        caps.push(parse_cap(id, version, &buf[off..body_end])?);
        min = end;
        off = next;
    }
    Ok(caps)
}

/// One capability; `cap` starts at its header.
fn parse_cap(id: u16, version: u16, cap: &[u8]) -> Result<RegionCap> {
    let h = CAP_HEADER_SIZE;
    Ok(match u32::from(id) {
        uapi::VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
            let nr = u32_at(cap, h).ok_or(bad("sparse mmap capability truncated"))? as usize;
            let areas_at = h + 8;
            let need = nr.checked_mul(16).and_then(|n| n.checked_add(areas_at));
            if need.is_none_or(|n| n > cap.len()) {
                return Err(bad("sparse mmap capability has more areas than bytes"));
            }
            let areas = (0..nr)
                .map(|i| {
                    let a = areas_at + i * 16;
                    // In bounds: checked against `need` above.
                    SparseArea {
                        offset: u64_at(cap, a).unwrap_or(0),
                        size: u64_at(cap, a + 8).unwrap_or(0),
                    }
                })
                .collect();
            RegionCap::SparseMmap(areas)
        }
        uapi::VFIO_REGION_INFO_CAP_TYPE => RegionCap::Type {
            region_type: u32_at(cap, h).ok_or(bad("type capability truncated"))?,
            subtype: u32_at(cap, h + 4).ok_or(bad("type capability truncated"))?,
        },
        uapi::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => RegionCap::MsixMappable,
        _ => RegionCap::Other {
            id,
            version,
            data: cap[h..].to_vec(),
        },
    })
}

/// Asks the kernel for region `index`, growing the buffer once if the
/// capability chain does not fit, and parses the result.
pub fn query(dev: &Arc<OwnedFd>, index: u32) -> Result<RegionInfo> {
    let mut buf = vec![0u8; REGION_INFO_SIZE];
    loop {
        buf[8..12].copy_from_slice(&index.to_ne_bytes());
        ioctl::region_info(dev.as_fd(), &mut buf)?;
        let argsz = u32_at(&buf, 0).unwrap_or(0) as usize;
        if argsz <= buf.len() {
            break;
        }
        // The kernel wrote the size it needs for the chain: ask again with
        // room for it. The chain does not change between the two calls, so
        // the second call always fits; the bound keeps a bad value harmless.
        if argsz > MAX_REGION_INFO || buf.len() > REGION_INFO_SIZE {
            return Err(bad("region info keeps growing"));
        }
        buf = vec![0u8; argsz];
    }
    let flags = u32_at(&buf, 4).unwrap_or(0);
    let cap_offset = u32_at(&buf, 12).unwrap_or(0);
    let caps = if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
        parse_region_caps(&buf, cap_offset)?
    } else {
        Vec::new()
    };
    let fd = (flags & VFIO_REGION_INFO_FLAG_MMAP != 0).then(|| Arc::clone(dev));
    Ok(RegionInfo {
        index,
        flags,
        size: u64_at(&buf, 16).unwrap_or(0),
        offset: u64_at(&buf, 24).unwrap_or(0),
        caps,
        fd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(buf: &mut Vec<u8>, id: u16, version: u16, next: u32) {
        buf.extend_from_slice(&id.to_ne_bytes());
        buf.extend_from_slice(&version.to_ne_bytes());
        buf.extend_from_slice(&next.to_ne_bytes());
    }

    /// A region info buffer: 32 bytes of fixed struct, then `tail`.
    fn info_with(tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; REGION_INFO_SIZE];
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn parses_a_valid_chain() {
        let mut tail = Vec::new();
        // sparse mmap at 32 with two areas (8 + 8 + 32 = 48 bytes) -> next at 80
        header(&mut tail, 1, 1, 80);
        tail.extend_from_slice(&2u32.to_ne_bytes());
        tail.extend_from_slice(&0u32.to_ne_bytes());
        for (o, s) in [(0u64, 0x1000u64), (0x3000, 0x2000)] {
            tail.extend_from_slice(&o.to_ne_bytes());
            tail.extend_from_slice(&s.to_ne_bytes());
        }
        // type at 80 -> next 96
        header(&mut tail, 2, 1, 96);
        tail.extend_from_slice(&3u32.to_ne_bytes());
        tail.extend_from_slice(&7u32.to_ne_bytes());
        // msix mappable at 96 -> next 104
        header(&mut tail, 3, 1, 104);
        // unknown id 99 at 104, end of chain, 4 payload bytes
        header(&mut tail, 99, 2, 0);
        tail.extend_from_slice(&[1, 2, 3, 4]);
        let buf = info_with(&tail);
        let caps = parse_region_caps(&buf, 32).unwrap();
        assert_eq!(
            caps,
            vec![
                RegionCap::SparseMmap(vec![
                    SparseArea {
                        offset: 0,
                        size: 0x1000
                    },
                    SparseArea {
                        offset: 0x3000,
                        size: 0x2000
                    }
                ]),
                RegionCap::Type {
                    region_type: 3,
                    subtype: 7
                },
                RegionCap::MsixMappable,
                RegionCap::Other {
                    id: 99,
                    version: 2,
                    data: vec![1, 2, 3, 4]
                },
            ]
        );
    }

    #[test]
    fn no_chain_is_empty() {
        assert!(parse_region_caps(&info_with(&[]), 0).unwrap().is_empty());
    }

    #[test]
    fn rejects_offsets_past_the_buffer() {
        let mut tail = Vec::new();
        header(&mut tail, 3, 1, 4096);
        let buf = info_with(&tail);
        assert_eq!(
            parse_region_caps(&buf, 32).unwrap_err().errno(),
            libc::EPROTO
        );
        // A first offset past the end, and one whose header straddles the end.
        assert!(parse_region_caps(&buf, 4096).is_err());
        assert!(parse_region_caps(&buf, 36).is_err());
        assert!(parse_region_caps(&buf, u32::MAX).is_err());
    }

    #[test]
    fn rejects_loops_and_backward_links() {
        let mut tail = Vec::new();
        header(&mut tail, 3, 1, 40); // 32 -> 40
        header(&mut tail, 3, 1, 32); // 40 -> 32: a loop
        assert!(parse_region_caps(&info_with(&tail), 32).is_err());
        let mut tail = Vec::new();
        header(&mut tail, 3, 1, 32); // points at itself
        assert!(parse_region_caps(&info_with(&tail), 32).is_err());
        // Into the fixed struct.
        assert!(parse_region_caps(&info_with(&tail), 8).is_err());
    }

    #[test]
    fn rejects_sparse_areas_beyond_the_capability() {
        let mut tail = Vec::new();
        header(&mut tail, 1, 1, 0);
        tail.extend_from_slice(&u32::MAX.to_ne_bytes());
        tail.extend_from_slice(&0u32.to_ne_bytes());
        assert!(parse_region_caps(&info_with(&tail), 32).is_err());
    }

    #[test]
    fn rejects_truncated_type() {
        let mut tail = Vec::new();
        header(&mut tail, 2, 1, 0);
        tail.extend_from_slice(&1u32.to_ne_bytes());
        assert!(parse_region_caps(&info_with(&tail), 32).is_err());
    }
}
