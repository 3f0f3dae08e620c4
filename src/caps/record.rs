//! The record a device keeps of how it arrived at its capability mask.
//!
//! While a device opens, each bit it gains or is refused is written down with
//! what decided it, so `vfio-io info` reports what this open saw rather than
//! what the backend usually does.

use std::fmt;

use super::Capabilities;
use crate::device::VFIO_DEVICE_FLAGS_RESET;

/// What decided a capability bit while the device opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The backend itself: the library does it for every device of the backend.
    Backend,
    /// vfio-user VERSION negotiation, by the named capability key.
    Negotiation(&'static str),
    /// The device info flags (`VFIO_DEVICE_FLAGS_*`).
    DeviceInfo,
    /// The info of the region with this index.
    RegionInfo(u32),
    /// The device's answer to a probe of this `VFIO_DEVICE_FEATURE_*` number.
    FeatureProbe(u32),
    /// The library mapped an area of the region with this index.
    MappedArea(u32),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Backend => f.write_str("backend"),
            Source::Negotiation(key) => write!(f, "negotiation ({key})"),
            Source::DeviceInfo => f.write_str("device info"),
            Source::RegionInfo(i) => write!(f, "region info ({i})"),
            Source::FeatureProbe(n) => write!(f, "feature probe ({n})"),
            Source::MappedArea(i) => write!(f, "mapped area (region {i})"),
        }
    }
}

/// One finding: whether the device has `bit`, what decided it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The single bit the finding is about.
    pub bit: Capabilities,
    /// Whether the finding grants the bit (true) or withholds it.
    pub present: bool,
    /// What decided it.
    pub source: Source,
    /// Why, in words.
    pub detail: String,
}

/// A device's capability mask and the findings that built it, in the order
/// they were made; a later finding about a bit overrides an earlier one.
///
/// ```
/// use vfio_io::caps::{CapabilityRecord, Capabilities, Source};
///
/// let mut r = CapabilityRecord::new();
/// r.grant(Capabilities::POSTED_WRITES, Source::Backend, "sent without a reply");
/// r.withhold(Capabilities::POSTED_WRITES, Source::MappedArea(2), "writes wait");
/// assert!(r.mask().is_empty());
/// assert_eq!(r.deciding(Capabilities::POSTED_WRITES).unwrap().source, Source::MappedArea(2));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityRecord {
    mask: Capabilities,
    evidence: Vec<Evidence>,
}

impl CapabilityRecord {
    /// An empty record: no bits.
    pub const fn new() -> Self {
        CapabilityRecord {
            mask: Capabilities::empty(),
            evidence: Vec::new(),
        }
    }

    fn note(&mut self, bit: Capabilities, present: bool, source: Source, detail: &str) {
        debug_assert_eq!(bit.bits().count_ones(), 1, "one bit per finding");
        self.mask.set(bit, present);
        self.evidence.push(Evidence {
            bit,
            present,
            source,
            detail: detail.to_string(),
        });
    }

    /// Sets `bit`, recording what decided it.
    pub fn grant(&mut self, bit: Capabilities, source: Source, detail: &str) {
        self.note(bit, true, source, detail);
    }

    /// Clears `bit` (or leaves it clear), recording what decided it.
    pub fn withhold(&mut self, bit: Capabilities, source: Source, detail: &str) {
        self.note(bit, false, source, detail);
    }

    /// Records what the device info flags decide: RESET.
    pub fn note_device_flags(&mut self, flags: u32) {
        let bit = Capabilities::RESET;
        if flags & VFIO_DEVICE_FLAGS_RESET != 0 {
            self.grant(bit, Source::DeviceInfo, "VFIO_DEVICE_FLAGS_RESET");
        } else {
            self.withhold(bit, Source::DeviceInfo, "no VFIO_DEVICE_FLAGS_RESET");
        }
    }

    /// The device's mask.
    pub fn mask(&self) -> Capabilities {
        self.mask
    }

    /// Every finding, in the order it was made.
    pub fn evidence(&self) -> &[Evidence] {
        &self.evidence
    }

    /// The finding that decided `bit`: the last one about it.
    pub fn deciding(&self, bit: Capabilities) -> Option<&Evidence> {
        self.evidence.iter().rev().find(|e| e.bit == bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_finding_decides() {
        let mut r = CapabilityRecord::new();
        r.withhold(Capabilities::RESET, Source::DeviceInfo, "no flag");
        r.grant(Capabilities::RESET, Source::DeviceInfo, "flag");
        assert_eq!(r.mask(), Capabilities::RESET);
        assert!(r.deciding(Capabilities::RESET).unwrap().present);
        assert_eq!(r.evidence().len(), 2);
        assert!(r.deciding(Capabilities::DMA_BUF).is_none());
    }

    #[test]
    fn sources_read_as_words() {
        assert_eq!(Source::RegionInfo(2).to_string(), "region info (2)");
        assert_eq!(
            Source::Negotiation("write_multiple").to_string(),
            "negotiation (write_multiple)"
        );
    }
}
