//! Region info from the kernel: the two-step GET_REGION_INFO call. The bytes
//! are decoded by [`crate::region_info`], the same checked decoder that reads
//! vfio-user replies, so a corrupt chain is an error, not a loop or an
//! out-of-bounds read.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use vfio_bindings::bindings::vfio as uapi;

use super::ioctl;
use crate::device::{RegionInfo, VFIO_REGION_INFO_FLAG_MMAP};
use crate::error::{Error, Result};
use crate::region_info::decode_region_info;

/// sizeof(struct vfio_region_info): capabilities start at or after it.
pub const REGION_INFO_SIZE: usize = std::mem::size_of::<uapi::vfio_region_info>();
/// A bound on the buffer the kernel may ask for: real chains are a few hundred
/// bytes, so anything near this means a confused kernel, not a big region.
const MAX_REGION_INFO: usize = 64 * 1024;

/// Asks the kernel for region `index`, growing the buffer once if the
/// capability chain does not fit, and parses the result.
pub fn query(dev: &Arc<OwnedFd>, index: u32) -> Result<RegionInfo> {
    let mut buf = vec![0u8; REGION_INFO_SIZE];
    loop {
        buf[8..12].copy_from_slice(&index.to_ne_bytes());
        ioctl::region_info(dev.as_fd(), &mut buf)?;
        let argsz = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if argsz <= buf.len() {
            break;
        }
        // The kernel wrote the size it needs for the chain: ask again with
        // room for it. The chain does not change between the two calls, so
        // the second call always fits; the bound keeps a bad value harmless.
        if argsz > MAX_REGION_INFO || buf.len() > REGION_INFO_SIZE {
            return Err(Error::Sys {
                op: "region info keeps growing",
                errno: libc::EPROTO,
            });
        }
        buf = vec![0u8; argsz];
    }
    let (mut info, _) = decode_region_info(&buf)?;
    info.index = index;
    info.fd = (info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0).then(|| Arc::clone(dev));
    Ok(info)
}
