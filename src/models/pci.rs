//! PCI configuration space for served devices.
//!
//! [`PciConfig`] holds a type-0 (endpoint) configuration header, BAR
//! declarations and a capability list in the 256 bytes of conventional PCI
//! configuration space. Every byte has a writable mask: writes change only the
//! bits a real device lets software change, so BAR sizing, read-only
//! identification registers and the MSI capability behave as a driver expects.
//!
//! ```
//! use vfio_io::models::pci::{BarKind, PciConfig};
//! let mut cfg = PciConfig::new(0x1234, 0x11e8)
//!     .with_revision(0x10)
//!     .with_bar(0, BarKind::Memory32 { prefetchable: false }, 1 << 20)
//!     .unwrap();
//! cfg.write(0x10, &0xffff_ffffu32.to_le_bytes()).unwrap();
//! let mut bar = [0; 4];
//! cfg.read(0x10, &mut bar).unwrap();
//! assert_eq!(u32::from_le_bytes(bar), 0xfff0_0000);
//! ```

use crate::error::{Error, Result};

/// Size of conventional PCI configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Offsets of the type-0 header registers.
pub mod reg {
    /// Vendor ID (16 bits, read-only).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16 bits, read-only).
    pub const DEVICE_ID: usize = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status register (16 bits, read-only here).
    pub const STATUS: usize = 0x06;
    /// Revision ID (8 bits, read-only).
    pub const REVISION_ID: usize = 0x08;
    /// Class code: programming interface, subclass, base class (24 bits).
    pub const CLASS_CODE: usize = 0x09;
    /// Cache line size (8 bits, writable).
    pub const CACHE_LINE_SIZE: usize = 0x0c;
    /// Header type (8 bits, 0 for an endpoint).
    pub const HEADER_TYPE: usize = 0x0e;
    /// First base address register; BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (16 bits, read-only).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (16 bits, read-only).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Expansion ROM base address (no ROM here: reads as 0).
    pub const ROM_ADDRESS: usize = 0x30;
    /// Pointer to the first capability (8 bits, read-only).
    pub const CAPABILITIES_POINTER: usize = 0x34;
    /// Interrupt line (8 bits, writable scratch for the OS).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin: 0 none, 1..=4 INTA..INTD (read-only).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Bits of the command register.
pub mod command {
    /// Respond to I/O space accesses.
    pub const IO: u16 = 1 << 0;
    /// Respond to memory space accesses.
    pub const MEMORY: u16 = 1 << 1;
    /// The device may master the bus (DMA, MSI writes).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity error response.
    pub const PARITY: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// INTx emulation disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Bits of the status register.
pub mod status {
    /// An INTx interrupt is pending in the device.
    pub const INTERRUPT: u16 = 1 << 3;
    /// The capabilities pointer is valid.
    pub const CAP_LIST: u16 = 1 << 4;
}

/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;

/// First byte after the type-0 header, where capabilities may go.
const CAP_START: usize = 0x40;
/// MSI message control: MSI enable.
const MSI_CTRL_ENABLE: u16 = 1 << 0;
/// MSI message control: the function can send 64-bit addresses.
const MSI_CTRL_64BIT: u16 = 1 << 7;
/// Length of a 64-bit MSI capability without per-vector masking.
const MSI_CAP_LEN: usize = 14;

/// What kind of space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space (at most 256 bytes).
    Io,
    /// 32-bit memory space.
    Memory32 {
        /// Reads have no side effects and may be prefetched.
        prefetchable: bool,
    },
    /// 64-bit memory space; uses this BAR and the next.
    Memory64 {
        /// Reads have no side effects and may be prefetched.
        prefetchable: bool,
    },
}

/// A declared BAR: its kind and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// The space it decodes.
    pub kind: BarKind,
    /// Its size in bytes (a power of two).
    pub size: u64,
}

/// One entry of the capability list, as found by walking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityEntry {
    /// Offset of the capability in configuration space.
    pub offset: u8,
    /// Its capability ID.
    pub id: u8,
}

/// Declared BAR slots: a 64-bit BAR's upper half is `Upper`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarSlot {
    Unused,
    Bar(Bar),
    Upper,
}

/// A type-0 PCI configuration space with per-byte writable masks.
#[derive(Debug, Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SPACE_SIZE],
    /// Bits software may change, byte by byte.
    wmask: [u8; CONFIG_SPACE_SIZE],
    /// The power-on image, which `reset` restores.
    initial: [u8; CONFIG_SPACE_SIZE],
    bars: [BarSlot; 6],
    msi: Option<usize>,
    /// Where the next capability goes.
    next_cap: usize,
    /// The last capability of the list, whose next pointer a new one fills.
    last_cap: Option<usize>,
}

impl PciConfig {
    /// An endpoint header with these IDs, no BARs, no capabilities, no interrupt
    /// pin and class code 0.
    pub fn new(vendor_id: u16, device_id: u16) -> Self {
        let mut cfg = PciConfig {
            bytes: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            initial: [0; CONFIG_SPACE_SIZE],
            bars: [BarSlot::Unused; 6],
            msi: None,
            next_cap: CAP_START,
            last_cap: None,
        };
        cfg.put(reg::VENDOR_ID, &vendor_id.to_le_bytes());
        cfg.put(reg::DEVICE_ID, &device_id.to_le_bytes());
        cfg.wmask[reg::CACHE_LINE_SIZE] = 0xff;
        cfg.wmask[reg::INTERRUPT_LINE] = 0xff;
        cfg.update_command_mask();
        cfg
    }

    /// Sets the subsystem vendor and subsystem IDs.
    pub fn with_subsystem(mut self, vendor_id: u16, subsystem_id: u16) -> Self {
        self.put(reg::SUBSYSTEM_VENDOR_ID, &vendor_id.to_le_bytes());
        self.put(reg::SUBSYSTEM_ID, &subsystem_id.to_le_bytes());
        self
    }

    /// Sets the revision ID.
    pub fn with_revision(mut self, revision: u8) -> Self {
        self.put(reg::REVISION_ID, &[revision]);
        self
    }

    /// Sets the 24-bit class code (base class in bits 23:16, subclass in 15:8,
    /// programming interface in 7:0); bits above 23 are ignored.
    pub fn with_class_code(mut self, class_code: u32) -> Self {
        let b = class_code.to_le_bytes();
        self.put(reg::CLASS_CODE, &b[..3]);
        self
    }

    /// Sets the interrupt pin: 0 for none, 1..=4 for INTA#..INTD#.
    pub fn with_interrupt_pin(mut self, pin: u8) -> Result<Self> {
        if pin > 4 {
            return Err(Error::InvalidArgument("PCI interrupt pin must be 0..=4"));
        }
        self.put(reg::INTERRUPT_PIN, &[pin]);
        Ok(self)
    }

    /// Declares BAR `index` (0..=5) of `kind` and `size` bytes. Memory BARs
    /// must be a power of two of at least 16 bytes (at most 2 GiB for 32-bit),
    /// I/O BARs a power of two of 4 to 256 bytes. A 64-bit BAR also takes
    /// `index + 1`.
    pub fn with_bar(mut self, index: usize, kind: BarKind, size: u64) -> Result<Self> {
        let (min, max) = match kind {
            BarKind::Io => (4, 256),
            BarKind::Memory32 { .. } => (16, 1 << 31),
            BarKind::Memory64 { .. } => (16, 1 << 63),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(Error::InvalidArgument(
                "BAR size must be a power of two in the kind's range",
            ));
        }
        let slots = if matches!(kind, BarKind::Memory64 { .. }) {
            2
        } else {
            1
        };
        if index + slots > self.bars.len() {
            return Err(Error::InvalidArgument("BAR index out of range"));
        }
        if self.bars[index..index + slots]
            .iter()
            .any(|s| *s != BarSlot::Unused)
        {
            return Err(Error::InvalidArgument("BAR already declared"));
        }

        let off = reg::BAR0 + 4 * index;
        // The low bits are read-only type flags; the address bits below the
        // size stay zero, which is how software reads the size back.
        let addr_mask = !(size - 1);
        let (flags, low_mask): (u32, u32) = match kind {
            BarKind::Io => (0x1, addr_mask as u32 & !0x3),
            BarKind::Memory32 { prefetchable } => {
                (if prefetchable { 0x8 } else { 0 }, addr_mask as u32 & !0xf)
            }
            BarKind::Memory64 { prefetchable } => (
                0x4 | if prefetchable { 0x8 } else { 0 },
                addr_mask as u32 & !0xf,
            ),
        };
        self.put(off, &flags.to_le_bytes());
        self.wmask[off..off + 4].copy_from_slice(&low_mask.to_le_bytes());
        self.bars[index] = BarSlot::Bar(Bar { kind, size });
        if slots == 2 {
            let high_mask = (addr_mask >> 32) as u32;
            self.wmask[off + 4..off + 8].copy_from_slice(&high_mask.to_le_bytes());
            self.bars[index + 1] = BarSlot::Upper;
        }
        self.update_command_mask();
        Ok(self)
    }

    /// Adds an MSI capability: one vector, 64-bit message address, no
    /// per-vector masking.
    pub fn with_msi(mut self) -> Result<Self> {
        if self.msi.is_some() {
            return Err(Error::InvalidArgument("MSI capability already present"));
        }
        // Body after the ID and next bytes: control, address low and high, data.
        let mut body = [0u8; MSI_CAP_LEN - 2];
        let mut wmask = [0u8; MSI_CAP_LEN - 2];
        body[0..2].copy_from_slice(&MSI_CTRL_64BIT.to_le_bytes());
        // Only enable is writable in control: with one vector, multiple message
        // enable has just one legal value.
        wmask[0..2].copy_from_slice(&MSI_CTRL_ENABLE.to_le_bytes());
        // Message address is dword aligned.
        wmask[2..6].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
        wmask[6..10].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        wmask[10..12].copy_from_slice(&0xffffu16.to_le_bytes());
        let off = self.add_capability(CAP_ID_MSI, &body, &wmask)?;
        self.msi = Some(off as usize);
        Ok(self)
    }

    /// Appends a capability with ID `id` to the list. `body` is its content
    /// after the ID and next-pointer bytes, `wmask` the writable bits of
    /// `body` (shorter means the rest is read-only). Returns its offset.
    /// Capabilities are part of the device's layout: add them before serving.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> Result<u8> {
        if wmask.len() > body.len() {
            return Err(Error::InvalidArgument(
                "capability mask longer than its body",
            ));
        }
        let off = self.next_cap;
        let end = off
            .checked_add(2 + body.len())
            .filter(|&e| e <= CONFIG_SPACE_SIZE)
            .ok_or(Error::InvalidArgument(
                "no room left in configuration space",
            ))?;
        self.put(off, &[id, 0]);
        self.put(off + 2, body);
        self.wmask[off + 2..off + 2 + wmask.len()].copy_from_slice(wmask);
        // `off` fits in a byte: it is below CONFIG_SPACE_SIZE.
        let ptr = off as u8;
        match self.last_cap {
            Some(prev) => self.put(prev + 1, &[ptr]),
            None => {
                self.put(reg::CAPABILITIES_POINTER, &[ptr]);
                let st = self.status() | status::CAP_LIST;
                self.put(reg::STATUS, &st.to_le_bytes());
            }
        }
        self.last_cap = Some(off);
        // Capabilities start on dword boundaries.
        self.next_cap = (end + 3) & !3;
        Ok(ptr)
    }

    /// Reads `data.len()` bytes (1..=256) at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<()> {
        let range = Self::range(offset, data.len())?;
        data.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    /// Writes `data` (1..=256 bytes; drivers use 1, 2 or 4) at `offset`. Only
    /// the writable bits of each byte change; read-only bits keep their value.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let range = Self::range(offset, data.len())?;
        for (i, &v) in range.zip(data) {
            self.bytes[i] = (self.bytes[i] & !self.wmask[i]) | (v & self.wmask[i]);
        }
        Ok(())
    }

    fn range(offset: u64, len: usize) -> Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| Error::InvalidArgument("config offset"))?;
        match start.checked_add(len) {
            Some(end) if len > 0 && end <= CONFIG_SPACE_SIZE => Ok(start..end),
            _ => Err(Error::InvalidArgument(
                "access outside PCI configuration space",
            )),
        }
    }

    /// Returns the device to its power-on state, as a function-level reset
    /// does: command register cleared, BAR addresses, interrupt line and MSI
    /// registers back to their initial values, no interrupt pending.
    pub fn reset(&mut self) {
        for i in 0..CONFIG_SPACE_SIZE {
            self.bytes[i] = (self.bytes[i] & !self.wmask[i]) | (self.initial[i] & self.wmask[i]);
        }
        self.set_interrupt_status(false);
    }

    /// Reflects the device's INTx state in the status register's interrupt bit.
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let st = if pending {
            self.status() | status::INTERRUPT
        } else {
            self.status() & !status::INTERRUPT
        };
        self.bytes[reg::STATUS..reg::STATUS + 2].copy_from_slice(&st.to_le_bytes());
    }

    /// The vendor ID.
    pub fn vendor_id(&self) -> u16 {
        self.u16_at(reg::VENDOR_ID)
    }

    /// The device ID.
    pub fn device_id(&self) -> u16 {
        self.u16_at(reg::DEVICE_ID)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(reg::COMMAND)
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        self.u16_at(reg::STATUS)
    }

    /// Whether memory space decoding is on.
    pub fn memory_enabled(&self) -> bool {
        self.command() & command::MEMORY != 0
    }

    /// Whether the device may master the bus.
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Whether software has disabled INTx.
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }

    /// The interrupt line register.
    pub fn interrupt_line(&self) -> u8 {
        self.bytes[reg::INTERRUPT_LINE]
    }

    /// The interrupt pin (0 none, 1..=4 INTA#..INTD#).
    pub fn interrupt_pin(&self) -> u8 {
        self.bytes[reg::INTERRUPT_PIN]
    }

    /// BAR `index` as declared, `None` if unused or the upper half of a 64-bit BAR.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        match self.bars.get(index) {
            Some(BarSlot::Bar(b)) => Some(*b),
            _ => None,
        }
    }

    /// The address software programmed into BAR `index` (both halves of a
    /// 64-bit BAR), without the type bits.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let off = reg::BAR0 + 4 * index;
        let low = u64::from(self.u32_at(off));
        Some(match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 { .. } => low & !0xf,
            BarKind::Memory64 { .. } => (u64::from(self.u32_at(off + 4)) << 32) | (low & !0xf),
        })
    }

    /// Offset of the MSI capability, if there is one.
    pub fn msi_offset(&self) -> Option<u8> {
        self.msi.map(|o| o as u8)
    }

    /// Whether software has enabled MSI.
    pub fn msi_enabled(&self) -> bool {
        self.msi
            .is_some_and(|o| self.u16_at(o + 2) & MSI_CTRL_ENABLE != 0)
    }

    /// The programmed MSI message address (0 without an MSI capability).
    pub fn msi_address(&self) -> u64 {
        self.msi.map_or(0, |o| {
            (u64::from(self.u32_at(o + 8)) << 32) | u64::from(self.u32_at(o + 4))
        })
    }

    /// The programmed MSI message data (0 without an MSI capability).
    pub fn msi_data(&self) -> u16 {
        self.msi.map_or(0, |o| self.u16_at(o + 12))
    }

    /// Walks the capability list from the capabilities pointer. The walk stops
    /// at a pointer into the header or after as many entries as could fit, so
    /// a looping list cannot hang it.
    pub fn capabilities(&self) -> Vec<CapabilityEntry> {
        let mut out = Vec::new();
        if self.status() & status::CAP_LIST == 0 {
            return out;
        }
        let mut ptr = usize::from(self.bytes[reg::CAPABILITIES_POINTER] & !3);
        while ptr >= CAP_START && out.len() < (CONFIG_SPACE_SIZE - CAP_START) / 4 {
            out.push(CapabilityEntry {
                offset: ptr as u8,
                id: self.bytes[ptr],
            });
            ptr = usize::from(self.bytes[ptr + 1] & !3);
        }
        out
    }

    /// Writes read-only layout bytes, into both the live and the power-on image.
    fn put(&mut self, off: usize, data: &[u8]) {
        self.bytes[off..off + data.len()].copy_from_slice(data);
        self.initial[off..off + data.len()].copy_from_slice(data);
    }

    /// Makes the command bits writable that this device implements: I/O and
    /// memory decoding only when it has such a BAR.
    fn update_command_mask(&mut self) {
        let mut mask =
            command::BUS_MASTER | command::PARITY | command::SERR | command::INTX_DISABLE;
        for slot in &self.bars {
            if let BarSlot::Bar(b) = slot {
                mask |= match b.kind {
                    BarKind::Io => command::IO,
                    _ => command::MEMORY,
                };
            }
        }
        self.wmask[reg::COMMAND..reg::COMMAND + 2].copy_from_slice(&mask.to_le_bytes());
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[off],
            self.bytes[off + 1],
            self.bytes[off + 2],
            self.bytes[off + 3],
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(cfg: &PciConfig, off: u64) -> u32 {
        let mut b = [0; 4];
        cfg.read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn read16(cfg: &PciConfig, off: u64) -> u16 {
        let mut b = [0; 2];
        cfg.read(off, &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    fn write32(cfg: &mut PciConfig, off: u64, v: u32) {
        cfg.write(off, &v.to_le_bytes()).unwrap();
    }

    fn sample() -> PciConfig {
        PciConfig::new(0x1234, 0x11e8)
            .with_subsystem(0x1af4, 0x1100)
            .with_revision(0x10)
            .with_class_code(0x00ff00)
            .with_interrupt_pin(1)
            .unwrap()
            .with_bar(
                0,
                BarKind::Memory32 {
                    prefetchable: false,
                },
                1 << 20,
            )
            .unwrap()
            .with_msi()
            .unwrap()
    }

    #[test]
    fn identification_registers() {
        let cfg = sample();
        assert_eq!(read32(&cfg, 0), 0x11e8_1234);
        assert_eq!(read32(&cfg, 0x08), 0x00ff_0010);
        assert_eq!(read32(&cfg, 0x2c), 0x1100_1af4);
        assert_eq!(cfg.interrupt_pin(), 1);
        assert_eq!(cfg.bytes[reg::HEADER_TYPE], 0);
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut cfg = sample();
        let before: Vec<u8> = cfg.bytes.to_vec();
        for off in [0x00, 0x08, 0x0c, 0x2c, 0x30, 0x34, 0x3c] {
            write32(&mut cfg, off, 0xffff_ffff);
        }
        assert_eq!(read32(&cfg, 0), 0x11e8_1234);
        assert_eq!(read32(&cfg, 0x08), 0x00ff_0010);
        assert_eq!(read32(&cfg, 0x2c), 0x1100_1af4);
        assert_eq!(read32(&cfg, 0x30), 0);
        assert_eq!(
            cfg.bytes[reg::CAPABILITIES_POINTER],
            before[reg::CAPABILITIES_POINTER]
        );
        assert_eq!(cfg.interrupt_pin(), 1);
        // Cache line size and interrupt line are the writable bytes there.
        assert_eq!(cfg.bytes[reg::CACHE_LINE_SIZE], 0xff);
        assert_eq!(cfg.interrupt_line(), 0xff);
        assert_eq!(cfg.bytes[reg::HEADER_TYPE], 0);
    }

    #[test]
    fn command_register_masks_unimplemented_bits() {
        let mut cfg = sample();
        cfg.write(0x04, &0xffffu16.to_le_bytes()).unwrap();
        // No I/O BAR: the I/O enable bit stays 0.
        assert_eq!(
            cfg.command(),
            command::MEMORY
                | command::BUS_MASTER
                | command::PARITY
                | command::SERR
                | command::INTX_DISABLE
        );
        assert!(cfg.memory_enabled() && cfg.bus_master_enabled() && cfg.intx_disabled());
        // Status is read-only: writing ones to it changes nothing.
        let st = cfg.status();
        cfg.write(0x06, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(cfg.status(), st);
    }

    #[test]
    fn bar_sizing_32bit() {
        let mut cfg = sample();
        write32(&mut cfg, 0x10, 0xffff_ffff);
        assert_eq!(read32(&cfg, 0x10), 0xfff0_0000);
        write32(&mut cfg, 0x10, 0xfebc_1234);
        assert_eq!(read32(&cfg, 0x10), 0xfeb0_0000);
        assert_eq!(cfg.bar_address(0), Some(0xfeb0_0000));
        // Undeclared BARs are hardwired to zero.
        write32(&mut cfg, 0x14, 0xffff_ffff);
        assert_eq!(read32(&cfg, 0x14), 0);
        assert_eq!(cfg.bar(1), None);
    }

    #[test]
    fn bar_sizing_byte_writes() {
        let mut cfg = sample();
        for i in 0..4 {
            cfg.write(0x10 + i, &[0xff]).unwrap();
        }
        assert_eq!(read32(&cfg, 0x10), 0xfff0_0000);
    }

    #[test]
    fn bar_sizing_prefetchable_64bit_and_io() {
        let mut cfg = PciConfig::new(1, 2)
            .with_bar(0, BarKind::Io, 32)
            .unwrap()
            .with_bar(2, BarKind::Memory64 { prefetchable: true }, 1 << 33)
            .unwrap();
        write32(&mut cfg, 0x10, 0xffff_ffff);
        assert_eq!(read32(&cfg, 0x10), 0xffff_ffe1);
        write32(&mut cfg, 0x18, 0xffff_ffff);
        write32(&mut cfg, 0x1c, 0xffff_ffff);
        assert_eq!(read32(&cfg, 0x18), 0x0000_000c);
        assert_eq!(read32(&cfg, 0x1c), 0xffff_fffe);
        write32(&mut cfg, 0x18, 0);
        write32(&mut cfg, 0x1c, 0x4);
        assert_eq!(cfg.bar_address(2), Some(0x4_0000_0000));
        assert_eq!(cfg.bar(3), None);
        cfg.write(0x04, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(
            cfg.command() & (command::IO | command::MEMORY),
            command::IO | command::MEMORY
        );
    }

    #[test]
    fn bad_bar_declarations_are_rejected() {
        let m32 = BarKind::Memory32 {
            prefetchable: false,
        };
        let m64 = BarKind::Memory64 {
            prefetchable: false,
        };
        assert!(PciConfig::new(1, 2).with_bar(0, m32, 8).is_err());
        assert!(PciConfig::new(1, 2).with_bar(0, m32, 48).is_err());
        assert!(PciConfig::new(1, 2).with_bar(0, m32, 1 << 32).is_err());
        assert!(PciConfig::new(1, 2).with_bar(6, m32, 16).is_err());
        assert!(PciConfig::new(1, 2).with_bar(5, m64, 16).is_err());
        assert!(PciConfig::new(1, 2).with_bar(0, BarKind::Io, 512).is_err());
        let cfg = PciConfig::new(1, 2).with_bar(0, m64, 16).unwrap();
        assert!(cfg.clone().with_bar(1, m32, 16).is_err());
        assert!(cfg.with_bar(0, m32, 16).is_err());
        assert!(PciConfig::new(1, 2).with_interrupt_pin(5).is_err());
    }

    #[test]
    fn out_of_range_accesses_fail() {
        let mut cfg = sample();
        let mut b = [0; 4];
        assert!(cfg.read(254, &mut b).is_err());
        assert!(cfg.read(u64::MAX, &mut b).is_err());
        assert!(cfg.read(0, &mut []).is_err());
        assert!(cfg.write(256, &[0]).is_err());
        assert!(cfg.write(0, &[]).is_err());
        let mut all = [0; 256];
        cfg.read(0, &mut all).unwrap();
        assert_eq!(&all[..4], &[0x34, 0x12, 0xe8, 0x11]);
    }

    #[test]
    fn capability_list_walk() {
        let mut cfg = sample();
        assert_ne!(cfg.status() & status::CAP_LIST, 0);
        let vendor = cfg.add_capability(0x09, &[4, 0xaa], &[]).unwrap();
        let caps = cfg.capabilities();
        assert_eq!(caps.len(), 2);
        assert_eq!(
            caps[0],
            CapabilityEntry {
                offset: 0x40,
                id: CAP_ID_MSI
            }
        );
        assert_eq!(
            caps[1],
            CapabilityEntry {
                offset: vendor,
                id: 0x09
            }
        );
        assert_eq!(vendor % 4, 0);
        assert!(usize::from(vendor) >= 0x40 + MSI_CAP_LEN);
        assert_eq!(cfg.bytes[usize::from(vendor) + 1], 0);
        assert_eq!(cfg.msi_offset(), Some(0x40));
        // The walk ends even on a list that points to itself.
        let mut looped = cfg.clone();
        looped.bytes[usize::from(vendor) + 1] = vendor;
        assert_eq!(looped.capabilities().len(), (256 - 0x40) / 4);
    }

    #[test]
    fn no_capabilities_means_no_list() {
        let cfg = PciConfig::new(1, 2);
        assert_eq!(cfg.status() & status::CAP_LIST, 0);
        assert!(cfg.capabilities().is_empty());
        assert!(!cfg.msi_enabled());
        assert_eq!(cfg.msi_offset(), None);
    }

    #[test]
    fn capability_space_runs_out() {
        let mut cfg = PciConfig::new(1, 2);
        let body = [0u8; 62];
        for _ in 0..3 {
            cfg.add_capability(0x09, &body, &[]).unwrap();
        }
        assert!(cfg.add_capability(0x09, &body, &[]).is_err());
        assert!(cfg.add_capability(0x09, &[0], &[0, 0]).is_err());
    }

    #[test]
    fn msi_enable_and_message() {
        let mut cfg = sample();
        let msi = u64::from(cfg.msi_offset().unwrap());
        assert_eq!(read16(&cfg, msi + 2), MSI_CTRL_64BIT);
        assert!(!cfg.msi_enabled());
        write32(&mut cfg, msi + 4, 0xfee0_0003);
        write32(&mut cfg, msi + 8, 0x1);
        cfg.write(msi + 12, &0x4041u16.to_le_bytes()).unwrap();
        // Writing every control bit sets only enable.
        cfg.write(msi + 2, &0xffffu16.to_le_bytes()).unwrap();
        assert!(cfg.msi_enabled());
        assert_eq!(read16(&cfg, msi + 2), MSI_CTRL_64BIT | MSI_CTRL_ENABLE);
        assert_eq!(cfg.msi_address(), 0x1_fee0_0000);
        assert_eq!(cfg.msi_data(), 0x4041);
        // ID and next pointer are read-only.
        cfg.write(msi, &[0xff, 0xff]).unwrap();
        assert_eq!(cfg.capabilities()[0].id, CAP_ID_MSI);
        cfg.write(msi + 2, &[0]).unwrap();
        assert!(!cfg.msi_enabled());
    }

    #[test]
    fn reset_restores_power_on_state() {
        let mut cfg = sample();
        let power_on = cfg.bytes;
        let msi = u64::from(cfg.msi_offset().unwrap());
        cfg.write(0x04, &0x0006u16.to_le_bytes()).unwrap();
        write32(&mut cfg, 0x10, 0xfeb0_0000);
        cfg.write(msi + 2, &[1]).unwrap();
        cfg.set_interrupt_status(true);
        assert_ne!(cfg.status() & status::INTERRUPT, 0);
        cfg.reset();
        assert_eq!(cfg.command(), 0);
        assert!(!cfg.msi_enabled());
        assert_eq!(cfg.bytes, power_on);
    }
}
