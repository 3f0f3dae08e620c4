//! Session- and device-wide messages: VERSION, DEVICE_GET_INFO and
//! DEVICE_FEATURE.

use crate::device::DeviceInfo;
use crate::error::{Error, Result};

wire_struct! {
    /// The fixed part of a VERSION payload; NUL-terminated JSON follows.
    struct VersionMsg("VERSION", 4 bytes) {
        major: u16,
        minor: u16,
    }
}

/// The version payload's fixed part: major, minor (4 bytes); JSON follows.
pub fn encode_version(major: u16, minor: u16, json: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(VersionMsg::SIZE + json.len() + 1);
    b.extend_from_slice(&VersionMsg { major, minor }.encode());
    b.extend_from_slice(json.as_bytes());
    b.push(0);
    b
}

/// Decodes a version payload into (major, minor, JSON text without its NUL).
pub fn decode_version(b: &[u8]) -> Result<(u16, u16, &str)> {
    let VersionMsg { major, minor } = VersionMsg::decode(b)?;
    let rest = &b[VersionMsg::SIZE..];
    let text = match rest.iter().position(|&c| c == 0) {
        Some(n) => &rest[..n],
        None if rest.is_empty() => rest,
        None => return Err(Error::Protocol("VERSION data is not NUL-terminated".into())),
    };
    let s = std::str::from_utf8(text)
        .map_err(|_| Error::Protocol("VERSION data is not UTF-8".into()))?;
    Ok((major, minor, s))
}

wire_struct! {
    /// `struct vfio_device_info` as DEVICE_GET_INFO carries it.
    struct DeviceInfoMsg("DEVICE_GET_INFO", 16 bytes) {
        argsz: u32,
        flags: u32,
        num_regions: u32,
        num_irqs: u32,
    }
}

/// Encodes a DEVICE_GET_INFO payload (request with zeros, or reply).
pub fn encode_device_info(argsz: u32, info: &DeviceInfo) -> [u8; 16] {
    DeviceInfoMsg {
        argsz,
        flags: info.flags,
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
    }
    .encode()
}

/// Decodes a DEVICE_GET_INFO payload.
pub fn decode_device_info(b: &[u8]) -> Result<DeviceInfo> {
    let m = DeviceInfoMsg::decode(b)?;
    Ok(DeviceInfo {
        flags: m.flags,
        num_regions: m.num_regions,
        num_irqs: m.num_irqs,
    })
}

wire_struct! {
    /// The fixed part of DEVICE_FEATURE; the feature's data follows.
    struct FeatureMsg("DEVICE_FEATURE", 8 bytes) {
        argsz: u32,
        flags: u32,
    }
}

/// DEVICE_FEATURE fixed part: argsz and flags (8 bytes); data follows.
pub fn encode_feature(argsz: u32, flags: u32) -> [u8; 8] {
    FeatureMsg { argsz, flags }.encode()
}

/// Decodes DEVICE_FEATURE's (argsz, flags, data).
pub fn decode_feature(b: &[u8]) -> Result<(u32, u32, &[u8])> {
    let FeatureMsg { argsz, flags } = FeatureMsg::decode(b)?;
    Ok((argsz, flags, &b[FeatureMsg::SIZE..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_payload_needs_nul_and_utf8() {
        let b = encode_version(0, 0, "{}");
        assert_eq!(decode_version(&b).unwrap(), (0, 0, "{}"));
        assert!(decode_version(&[0, 0, 0, 0, b'{']).is_err());
        assert!(decode_version(&[0, 0, 0, 0, 0xff, 0]).is_err());
        assert_eq!(decode_version(&[1, 0, 2, 0]).unwrap(), (1, 2, ""));
        assert!(decode_version(&[1, 0, 2]).is_err());
    }

    #[test]
    fn device_info_round_trips_and_needs_16_bytes() {
        let di = DeviceInfo {
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
        };
        let b = encode_device_info(16, &di);
        assert_eq!(decode_device_info(&b).unwrap(), di);
        assert!(decode_device_info(&b[..15]).is_err());
    }

    #[test]
    fn feature_round_trips_with_its_data_and_needs_8_bytes() {
        let mut b = encode_feature(11, 0x0001_0001).to_vec();
        b.extend_from_slice(&[7, 8, 9]);
        assert_eq!(
            decode_feature(&b).unwrap(),
            (11, 0x0001_0001, &[7u8, 8, 9][..])
        );
        assert!(decode_feature(&b[..7]).is_err());
    }
}
