//! The device's capability mask, probed once at open.
//!
//! `VFIO_DEVICE_FEATURE_PROBE` asks whether a feature exists without using
//! it. A feature the device lacks answers ENOTTY (or EINVAL for an op it does
//! not support); either way the bit is simply left clear: absence is not an
//! error and is not logged.

use std::os::fd::BorrowedFd;

use vfio_bindings::bindings::vfio as uapi;

use super::ioctl;
use crate::caps::Capabilities;
use crate::device::{DeviceInfo, RegionInfo, VFIO_DEVICE_FLAGS_RESET};

/// What the kernel backend can ever offer.
pub const BACKEND: Capabilities = Capabilities::DMA_BUF
    .union(Capabilities::MIGRATION)
    .union(Capabilities::DIRTY_TRACKING)
    .union(Capabilities::LOW_POWER)
    .union(Capabilities::REGION_MMAP)
    .union(Capabilities::RESET)
    .union(Capabilities::IOMMU_DMA);

/// Feature, the op it is used with, and the bit it grants.
const FEATURES: [(u32, u32, Capabilities); 4] = [
    (
        uapi::VFIO_DEVICE_FEATURE_DMA_BUF,
        uapi::VFIO_DEVICE_FEATURE_GET,
        Capabilities::DMA_BUF,
    ),
    (
        uapi::VFIO_DEVICE_FEATURE_MIGRATION,
        uapi::VFIO_DEVICE_FEATURE_GET,
        Capabilities::MIGRATION,
    ),
    (
        uapi::VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
        uapi::VFIO_DEVICE_FEATURE_SET,
        Capabilities::DIRTY_TRACKING,
    ),
    (
        uapi::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
        uapi::VFIO_DEVICE_FEATURE_SET,
        Capabilities::LOW_POWER,
    ),
];

/// Whether the device answers a PROBE of `feature` with `op`.
fn has_feature(dev: BorrowedFd<'_>, feature: u32, op: u32) -> bool {
    // A bare `vfio_device_feature` header: PROBE carries no payload.
    let mut buf = [0u8; 8];
    buf[4..8].copy_from_slice(&(uapi::VFIO_DEVICE_FEATURE_PROBE | op | feature).to_ne_bytes());
    ioctl::device_feature(dev, &mut buf).is_ok()
}

/// The device's mask from its features, flags and regions.
pub fn device_caps(
    dev: BorrowedFd<'_>,
    info: &DeviceInfo,
    regions: &[Option<RegionInfo>],
) -> Capabilities {
    let mut caps = Capabilities::IOMMU_DMA;
    for (feature, op, bit) in FEATURES {
        if has_feature(dev, feature, op) {
            caps |= bit;
        }
    }
    if info.flags & VFIO_DEVICE_FLAGS_RESET != 0 {
        caps |= Capabilities::RESET;
    }
    if regions
        .iter()
        .flatten()
        .any(|r| r.mmap_areas().iter().any(|a| a.size > 0))
    {
        caps |= Capabilities::REGION_MMAP;
    }
    caps
}
