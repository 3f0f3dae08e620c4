//! The capability mask: what a backend, and what one device behind it, can do.
//!
//! A caller checks a bit instead of trying an operation and reading `-ENOTTY`.
//! Bit 0 has the value QEMU gives `VFIO_IO_CAP_DMA_BUF`; every other bit is ours.

use bitflags::bitflags;

bitflags! {
    /// Capability bits, one meaning each. The same values are exported to C as
    /// `VFIO_IO_CAP_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Capabilities: u64 {
        /// A region's mappable ranges can be exported as a DMA-BUF fd
        /// (`VFIO_DEVICE_FEATURE_DMA_BUF`). Kernel VFIO only, Linux >= 6.19.
        const DMA_BUF = 1 << 0;
        /// The v2 migration state machine (`VFIO_DEVICE_FEATURE_MIGRATION`) is available.
        const MIGRATION = 1 << 1;
        /// Device dirty-page tracking (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`) is available.
        const DIRTY_TRACKING = 1 << 2;
        /// The device can enter a low-power state (`VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY`).
        const LOW_POWER = 1 << 3;
        /// At least one region (or sparse area of one) can be mmapped by the caller.
        const REGION_MMAP = 1 << 4;
        /// Region info can come with a region-specific fd to mmap (vfio-user),
        /// rather than only the device fd at an offset (kernel).
        const REGION_FDS = 1 << 5;
        /// `region_write(.., post = true)` returns without waiting for the device.
        const POSTED_WRITES = 1 << 6;
        /// The device supports `reset` (`VFIO_DEVICE_FLAGS_RESET`).
        const RESET = 1 << 7;
        /// Small posted writes may be coalesced into one message (vfio-user
        /// `write_multiple` negotiated).
        const WRITE_MULTI = 1 << 8;
        /// The device side may read and write mapped DMA memory through messages
        /// (vfio-user `DMA_READ`/`DMA_WRITE`), not only through shared fds.
        const DMA_MESSAGES = 1 << 9;
        /// DMA mappings are made through an IOMMU (kernel container or iommufd IOAS):
        /// `dma_map` needs the mapping's host virtual address.
        const IOMMU_DMA = 1 << 10;
    }
}

impl Capabilities {
    /// Every bit with its name, in bit order: for decoding a mask for people.
    ///
    /// ```
    /// use vfio_io::caps::Capabilities;
    ///
    /// let (name, bit) = Capabilities::named_bits().next().unwrap();
    /// assert_eq!((name, bit), ("DMA_BUF", Capabilities::DMA_BUF));
    /// assert_eq!(Capabilities::named_bits().count(), 11);
    /// ```
    pub fn named_bits() -> impl Iterator<Item = (&'static str, Capabilities)> {
        Capabilities::all().iter_names()
    }

    /// A readable `A|B|C` rendering of the set bits (`none` when empty).
    ///
    /// ```
    /// use vfio_io::caps::Capabilities;
    ///
    /// // What QEMU's edu device reports over vfio-user.
    /// let edu = Capabilities::from_bits_truncate(0x3c0);
    /// assert_eq!(edu.describe(), "POSTED_WRITES|RESET|WRITE_MULTI|DMA_MESSAGES");
    /// // A caller checks a bit instead of trying and reading -ENOTTY.
    /// assert!(!edu.contains(Capabilities::DMA_BUF));
    /// assert_eq!(Capabilities::empty().describe(), "none");
    /// ```
    pub fn describe(self) -> String {
        if self.is_empty() {
            return "none".to_string();
        }
        self.iter_names()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
            .join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_buf_is_qemus_bit_zero() {
        assert_eq!(Capabilities::DMA_BUF.bits(), 1u64 << 0);
    }

    #[test]
    fn every_bit_is_distinct_and_named() {
        let mut seen = 0u64;
        for (name, bit) in Capabilities::named_bits() {
            assert_eq!(bit.bits().count_ones(), 1, "{name} must be one bit");
            assert_eq!(seen & bit.bits(), 0, "{name} overlaps another bit");
            seen |= bit.bits();
        }
        assert_eq!(seen, Capabilities::all().bits());
    }

    #[test]
    fn describe_lists_set_bits() {
        let c = Capabilities::DMA_BUF | Capabilities::RESET;
        assert_eq!(c.describe(), "DMA_BUF|RESET");
        assert_eq!(Capabilities::empty().describe(), "none");
    }
}
