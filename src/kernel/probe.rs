//! The device's capability mask, probed once at open.
//!
//! `VFIO_DEVICE_FEATURE_PROBE` asks whether a feature exists without using
//! it. A feature the device lacks answers ENOTTY (or EINVAL for an op it does
//! not support); either way the bit is simply left clear: absence is not an
//! error and is not logged.

use std::os::fd::BorrowedFd;

use vfio_bindings::bindings::vfio as uapi;

use super::ioctl;
use crate::caps::{Backends, Capabilities, CapabilityRecord, Source};
use crate::device::{DeviceInfo, RegionInfo};

/// What the kernel backend can ever offer (from the capability table).
pub const BACKEND: Capabilities = Backends::KERNEL.possible_capabilities();

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

/// The device's mask from its features, flags and regions, with what decided
/// each bit.
pub fn device_caps(
    dev: BorrowedFd<'_>,
    info: &DeviceInfo,
    regions: &[Option<RegionInfo>],
) -> CapabilityRecord {
    let mut rec = CapabilityRecord::new();
    rec.grant(
        Capabilities::IOMMU_DMA,
        Source::Backend,
        "DMA maps go through the container or the IOAS",
    );
    for (feature, op, bit) in FEATURES {
        if has_feature(dev, feature, op) {
            rec.grant(
                bit,
                Source::FeatureProbe(feature),
                "the kernel answers the probe",
            );
        } else {
            rec.withhold(
                bit,
                Source::FeatureProbe(feature),
                "the kernel refuses the probe",
            );
        }
    }
    rec.note_device_flags(info.flags);
    let mappable = regions
        .iter()
        .flatten()
        .find(|r| r.mmap_areas().iter().any(|a| a.size > 0));
    match mappable {
        Some(r) => rec.grant(
            Capabilities::REGION_MMAP,
            Source::RegionInfo(r.index),
            "an mmappable area of the device fd",
        ),
        None => rec.withhold(
            Capabilities::REGION_MMAP,
            Source::DeviceInfo,
            "no region has an mmappable area",
        ),
    }
    rec
}
