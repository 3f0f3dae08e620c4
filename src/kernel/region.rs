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
use crate::region_info::{decode_region_info, MAX_REGION_INFO, REGION_INFO_SIZE};

// The layout's owner and the UAPI agree on the fixed part, where the chain
// starts at the earliest.
const _: () = assert!(REGION_INFO_SIZE == std::mem::size_of::<uapi::vfio_region_info>());

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
            return Err(Error::Errno {
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

#[cfg(test)]
mod tests {
    use super::super::mock_kernel::{MockFd, RegionAnswer, Script};
    use super::*;
    use crate::bytes::u32_at;
    use crate::device::{RegionCap, SparseArea, VFIO_REGION_INFO_FLAG_READ};

    fn device(regions: Vec<RegionAnswer>) -> (MockFd, Arc<OwnedFd>) {
        let dev = MockFd::new(Script {
            regions,
            ..Script::default()
        });
        let fd = Arc::new(dev.fd());
        (dev, fd)
    }

    fn info(flags: u32, caps: Vec<RegionCap>) -> RegionAnswer {
        RegionAnswer::Info(RegionInfo {
            flags,
            size: 0x4000,
            offset: 0x10000,
            caps,
            ..Default::default()
        })
    }

    /// The argsz of each GET_REGION_INFO the mock saw.
    fn argszs(dev: &MockFd) -> Vec<u32> {
        dev.bytes_sent(ioctl::VFIO_DEVICE_GET_REGION_INFO)
            .iter()
            .map(|b| u32_at(b, 0).unwrap())
            .collect()
    }

    #[test]
    fn a_chain_longer_than_the_fixed_part_is_fetched_again_with_room() {
        let caps = vec![
            RegionCap::SparseMmap(vec![
                SparseArea {
                    offset: 0,
                    size: 0x1000,
                },
                SparseArea {
                    offset: 0x3000,
                    size: 0x1000,
                },
            ]),
            RegionCap::Type {
                region_type: 1,
                subtype: 3,
            },
        ];
        let (dev, fd) = device(vec![info(VFIO_REGION_INFO_FLAG_MMAP, caps.clone())]);
        let got = query(&fd, 0).unwrap();
        assert_eq!(got.caps, caps);
        assert_eq!((got.size, got.offset), (0x4000, 0x10000));
        // Fixed part first, then exactly the size the chain needs: 32 + sparse
        // (8 header + 8 + 2 * 16) + type (8 header + 8).
        assert_eq!(argszs(&dev), [32, 32 + 48 + 16]);
    }

    #[test]
    fn a_region_without_a_chain_takes_one_call() {
        let (dev, fd) = device(vec![info(VFIO_REGION_INFO_FLAG_READ, vec![])]);
        let got = query(&fd, 0).unwrap();
        assert!(got.caps.is_empty());
        assert_eq!(argszs(&dev), [32]);
        assert_eq!(got.index, 0);
    }

    #[test]
    fn a_kernel_that_keeps_asking_for_more_is_eproto() {
        let (dev, fd) = device(vec![RegionAnswer::Grows]);
        let e = query(&fd, 0).unwrap_err();
        assert_eq!(e.errno(), libc::EPROTO);
        assert!(e.to_string().contains("keeps growing"), "{e}");
        assert_eq!(argszs(&dev), [32, 40], "one retry, no more");
    }

    #[test]
    fn a_kernel_asking_for_too_much_is_eproto_without_a_retry() {
        let (dev, fd) = device(vec![RegionAnswer::Needs(1 << 20)]);
        assert_eq!(query(&fd, 0).unwrap_err().errno(), libc::EPROTO);
        assert_eq!(argszs(&dev), [32]);
    }

    #[test]
    fn a_mappable_region_lends_the_device_fd_and_others_do_not() {
        let (_dev, fd) = device(vec![
            info(VFIO_REGION_INFO_FLAG_MMAP, vec![]),
            info(VFIO_REGION_INFO_FLAG_READ, vec![]),
        ]);
        let mappable = query(&fd, 0).unwrap();
        assert!(mappable.fd.as_ref().is_some_and(|f| Arc::ptr_eq(f, &fd)));
        let plain = query(&fd, 1).unwrap();
        assert!(plain.fd.is_none());
        assert_eq!(plain.index, 1);
    }
}
