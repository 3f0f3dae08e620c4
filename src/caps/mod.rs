//! The capability mask: what a backend, and what one device behind it, can do.
//!
//! A caller checks a bit instead of trying an operation and reading `-ENOTTY`.
//! Bit 0 has the value QEMU gives `VFIO_IO_CAP_DMA_BUF`; every other bit is ours.
//!
//! The table below is the one definition of every bit: its value, name,
//! meaning (the doc comment) and the backends that can ever have it. The
//! bitflags type, [`TABLE`], each backend's mask, the C `#define`s (build.rs
//! reads this file) and `vfio_io_capability_name` all come from it.

use std::fmt;

use bitflags::bitflags;

bitflags! {
    /// The backends a capability bit can appear on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Backends: u8 {
        /// Kernel VFIO through a legacy container and group.
        const KERNEL_CONTAINER = 1 << 0;
        /// Kernel VFIO through iommufd and the device cdev.
        const KERNEL_IOMMUFD = 1 << 1;
        /// A vfio-user client.
        const VFIO_USER = 1 << 2;
        /// Both kernel roads.
        const KERNEL = Self::KERNEL_CONTAINER.bits() | Self::KERNEL_IOMMUFD.bits();
    }
}

/// One row of the capability table.
#[derive(Debug, Clone, Copy)]
pub struct CapabilityDef {
    /// The bit.
    pub bit: Capabilities,
    /// Its name without the `VFIO_IO_CAP_` prefix, as C spells it.
    pub name: &'static str,
    /// The same name NUL-terminated, for the C ABI.
    pub c_name: &'static std::ffi::CStr,
    /// What a device with the bit does (the bit's doc comment).
    pub meaning: &'static str,
    /// The backends on which a device can have the bit.
    pub backends: Backends,
}

/// Declares every capability bit once: the bitflags type and [`TABLE`].
macro_rules! capability_table {
    ($($(#[doc = $doc:literal])+ $name:ident = 1 << $bit:literal on $backends:expr;)+) => {
        bitflags! {
            /// Capability bits, one meaning each. The same values are exported to C as
            /// `VFIO_IO_CAP_*`.
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
            pub struct Capabilities: u64 {
                $($(#[doc = $doc])+ const $name = 1 << $bit;)+
            }
        }

        /// Every capability bit in bit order.
        pub const TABLE: &[CapabilityDef] = &[$(CapabilityDef {
            bit: Capabilities::$name,
            name: stringify!($name),
            c_name: match std::ffi::CStr::from_bytes_with_nul(
                concat!(stringify!($name), "\0").as_bytes(),
            ) {
                Ok(c) => c,
                Err(_) => panic!("a capability name holds a NUL"),
            },
            meaning: concat!($($doc),+),
            backends: $backends,
        }),+];
    };
}

capability_table! {
    /// A region's mappable ranges can be exported as a DMA-BUF fd
    /// (`VFIO_DEVICE_FEATURE_DMA_BUF`). Kernel VFIO only, Linux >= 6.19.
    DMA_BUF = 1 << 0 on Backends::KERNEL;
    /// The v2 migration state machine (`VFIO_DEVICE_FEATURE_MIGRATION`,
    /// STOP_COPY at least) is available, data path included, on both
    /// roads: `device_feature` and the data fd it returns, and
    /// `vfio_io_migration_*` (vfio-user carries both over MIG_DATA_READ/WRITE).
    MIGRATION = 1 << 1 on Backends::KERNEL.union(Backends::VFIO_USER);
    /// Device dirty-page tracking (DMA logging) is available: on kernel VFIO
    /// through `device_feature` (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`); on
    /// vfio-user through `vfio_io_dirty_start`/`_report`/`_stop`, a server of
    /// this library logging every page its device writes to client memory.
    DIRTY_TRACKING = 1 << 2 on Backends::all();
    /// The device can enter a low-power state (`VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY`).
    LOW_POWER = 1 << 3 on Backends::KERNEL;
    /// At least one region (or sparse area of one) can be mmapped by the caller.
    REGION_MMAP = 1 << 4 on Backends::all();
    /// Region info can come with a region-specific fd to mmap (vfio-user),
    /// rather than only the device fd at an offset (kernel).
    REGION_FDS = 1 << 5 on Backends::VFIO_USER;
    /// `region_write(.., post = true)` returns without waiting for the device;
    /// a later read or non-posted write still sees it. Clear where posted
    /// writes wait (a vfio-user device with a mapped area or doorbells, whose
    /// stores or eventfd writes could otherwise overtake them).
    POSTED_WRITES = 1 << 6 on Backends::VFIO_USER;
    /// The device supports `reset` (`VFIO_DEVICE_FLAGS_RESET`).
    RESET = 1 << 7 on Backends::all();
    /// Several small writes can go to the device in one message (vfio-user
    /// `write_multiple` negotiated): `Client::region_write_multi` sends them.
    WRITE_MULTI = 1 << 8 on Backends::VFIO_USER;
    /// The device side reaches DMA memory mapped without an fd through
    /// messages (vfio-user `DMA_READ`/`DMA_WRITE`), which the library answers
    /// from the memory at the map's `vaddr`.
    DMA_MESSAGES = 1 << 9 on Backends::VFIO_USER;
    /// DMA mappings are programmed into the host IOMMU (a type1 container or
    /// an iommufd IOAS) from the mapping's host virtual address, which every
    /// kernel road takes (only iommufd can also map from an fd alone).
    IOMMU_DMA = 1 << 10 on Backends::KERNEL;
    /// Some region writes are delivered through an eventfd with no message:
    /// the server offered ioeventfds (vfio-user `DEVICE_GET_REGION_IO_FDS`),
    /// and a `region_write` matching one (offset, size and any datamatch
    /// value) signals it; the device still sees it before any later access.
    IOEVENTFD = 1 << 11 on Backends::VFIO_USER;
}

mod record;
pub use record::{CapabilityRecord, Evidence, Source};

impl Backends {
    /// Every bit a device of these backends can ever have: the union of the
    /// table rows that name any of them.
    pub const fn possible_capabilities(self) -> Capabilities {
        let mut mask = 0u64;
        let mut i = 0;
        while i < TABLE.len() {
            if TABLE[i].backends.intersects(self) {
                mask |= TABLE[i].bit.bits();
            }
            i += 1;
        }
        Capabilities::from_bits_retain(mask)
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
    /// assert_eq!(Capabilities::named_bits().count(), 12);
    /// ```
    pub fn named_bits() -> impl Iterator<Item = (&'static str, Capabilities)> {
        TABLE.iter().map(|d| (d.name, d.bit))
    }

    /// The table row of a single bit; `None` for no bit, several bits or an
    /// unknown one.
    ///
    /// ```
    /// use vfio_io::caps::{Backends, Capabilities};
    ///
    /// let row = Capabilities::DMA_BUF.definition().unwrap();
    /// assert_eq!(row.name, "DMA_BUF");
    /// assert!(!row.backends.contains(Backends::VFIO_USER));
    /// assert!(Capabilities::empty().definition().is_none());
    /// ```
    pub fn definition(self) -> Option<&'static CapabilityDef> {
        TABLE.iter().find(|d| d.bit == self)
    }

    /// A readable `A|B|C` rendering of the set bits (`none` when empty).
    ///
    /// ```
    /// use vfio_io::caps::Capabilities;
    ///
    /// // What QEMU's edu device reports over vfio-user.
    /// let edu = Capabilities::from_bits_truncate(0x3c6);
    /// assert_eq!(
    ///     edu.describe(),
    ///     "MIGRATION|DIRTY_TRACKING|POSTED_WRITES|RESET|WRITE_MULTI|DMA_MESSAGES"
    /// );
    /// // A caller checks a bit instead of trying and reading -ENOTTY.
    /// assert!(!edu.contains(Capabilities::DMA_BUF));
    /// assert_eq!(Capabilities::empty().describe(), "none");
    /// ```
    pub fn describe(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut sep = "";
        for d in TABLE.iter().filter(|d| self.contains(d.bit)) {
            write!(f, "{sep}{}", d.name)?;
            sep = "|";
        }
        Ok(())
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
    fn the_table_is_in_bit_order_and_covers_every_bit() {
        let mut seen = 0u64;
        for (i, d) in TABLE.iter().enumerate() {
            assert_eq!(d.bit.bits(), 1 << i, "{} is out of order", d.name);
            assert_eq!(d.c_name.to_str().unwrap(), d.name);
            assert!(!d.meaning.trim().is_empty(), "{} has no meaning", d.name);
            assert!(!d.backends.is_empty(), "{} is on no backend", d.name);
            seen |= d.bit.bits();
        }
        assert_eq!(seen, Capabilities::all().bits());
    }

    #[test]
    fn backend_masks_follow_the_table() {
        let user = Backends::VFIO_USER.possible_capabilities();
        assert!(user.contains(Capabilities::POSTED_WRITES | Capabilities::REGION_FDS));
        assert!(!user.intersects(Capabilities::DMA_BUF | Capabilities::IOMMU_DMA));
        let kernel = Backends::KERNEL_CONTAINER.possible_capabilities();
        assert_eq!(kernel, Backends::KERNEL_IOMMUFD.possible_capabilities());
        assert!(kernel.contains(Capabilities::DMA_BUF | Capabilities::IOMMU_DMA));
        assert!(!kernel.intersects(Capabilities::POSTED_WRITES | Capabilities::REGION_FDS));
        assert_eq!(Backends::all().possible_capabilities(), Capabilities::all());
    }

    #[test]
    fn describe_lists_set_bits() {
        let c = Capabilities::DMA_BUF | Capabilities::RESET;
        assert_eq!(c.describe(), "DMA_BUF|RESET");
        assert_eq!(Capabilities::empty().describe(), "none");
    }
}
