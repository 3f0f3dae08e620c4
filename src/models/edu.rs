//! QEMU's edu device as a vfio-user device model.
//!
//! [`Edu`] has the register map of QEMU's educational PCI device (PCI
//! 1234:11e8, specified in QEMU's `docs/specs/edu.rst`) and the region and IRQ
//! layout of a device bound to vfio-pci, so that one client, and one
//! conformance suite ([`crate::conformance`]), can drive either this model or
//! the real device behind kernel VFIO.
//!
//! Unlike QEMU's edu, factorial and DMA complete inside the register write that
//! starts them, so their busy bits always read 0; drivers that poll them, as
//! they must for the real device, see the work already done.

use crate::device::{
    pci_irq, pci_region, DeviceInfo, IrqInfo, RegionInfo, VFIO_DEVICE_FLAGS_RESET,
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use crate::error::{Error, Result};
use crate::models::pci::{BarKind, PciConfig, CONFIG_SPACE_SIZE};
use crate::user::server::{DeviceContext, DeviceModel, Migratable};

/// edu's PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1234;
/// edu's PCI device ID.
pub const DEVICE_ID: u16 = 0x11e8;
/// edu's PCI revision ID.
pub const REVISION: u8 = 0x10;
/// edu's class code ("other" devices).
pub const CLASS_CODE: u32 = 0x00ff00;
/// Size of BAR0, the register BAR.
pub const BAR0_SIZE: u64 = 1 << 20;
/// Value of the identification register: version 1.0, magic 0xed.
pub const ID: u32 = 0x0100_00ed;

/// Offsets of the BAR0 registers.
pub mod regs {
    /// Identification (RO).
    pub const ID: u64 = 0x00;
    /// Liveness check: reads return the bitwise NOT of the last value written.
    pub const LIVENESS: u64 = 0x04;
    /// Factorial: write n to compute n!, read the result.
    pub const FACTORIAL: u64 = 0x08;
    /// Status: bit 0 computing (RO), bit 7 raise an interrupt after factorial.
    pub const STATUS: u64 = 0x20;
    /// Interrupt status (RO).
    pub const IRQ_STATUS: u64 = 0x24;
    /// Interrupt raise (WO): ORs the value into the interrupt status.
    pub const IRQ_RAISE: u64 = 0x60;
    /// Interrupt acknowledge (WO): clears the value's bits from the interrupt status.
    pub const IRQ_ACK: u64 = 0x64;
    /// DMA source address.
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination address.
    pub const DMA_DST: u64 = 0x88;
    /// DMA transfer count in bytes.
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command.
    pub const DMA_CMD: u64 = 0x98;
}

/// Status register: a factorial is being computed.
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status register: raise [`FACT_IRQ`] when a factorial completes.
pub const STATUS_IRQ_FACT: u32 = 0x80;
/// DMA command: start the transfer (reads 1 while it runs).
pub const DMA_CMD_START: u64 = 0x1;
/// DMA command: direction edu -> RAM (clear: RAM -> edu).
pub const DMA_CMD_TO_RAM: u64 = 0x2;
/// DMA command: raise [`DMA_IRQ`] when the transfer completes.
pub const DMA_CMD_IRQ: u64 = 0x4;
/// Interrupt status bit of a completed factorial.
pub const FACT_IRQ: u32 = 0x001;
/// Interrupt status bit of a completed DMA.
pub const DMA_IRQ: u32 = 0x100;
/// Address of the DMA buffer in edu's own address space (a DMA address, not a
/// BAR offset: the buffer is not visible through BAR0).
pub const DMA_BUF_ADDR: u64 = 0x40000;
/// Size of the DMA buffer.
pub const DMA_BUF_SIZE: usize = 4096;
/// edu's default DMA mask: RAM-side addresses are clamped to 28 bits.
pub const DMA_MASK: u64 = (1 << 28) - 1;

/// QEMU's edu device: registers in BAR0, INTx and MSI, a 4 KiB DMA engine.
#[derive(Debug, Clone)]
pub struct Edu {
    config: PciConfig,
    /// Bitwise NOT of the last liveness write.
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    /// Whether this model drives the INTx line high.
    intx_asserted: bool,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    dma_buf: Vec<u8>,
}

impl Default for Edu {
    fn default() -> Self {
        Self::new()
    }
}

impl Edu {
    /// An edu device in its power-on state.
    pub fn new() -> Self {
        Edu {
            config: Self::config_space(),
            liveness: 0,
            factorial: 0,
            status: 0,
            irq_status: 0,
            intx_asserted: false,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            dma_buf: vec![0; DMA_BUF_SIZE],
        }
    }

    /// The device's configuration space.
    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_space() -> PciConfig {
        let cfg = PciConfig::new(VENDOR_ID, DEVICE_ID)
            .with_revision(REVISION)
            .with_class_code(CLASS_CODE)
            .with_interrupt_pin(1)
            .and_then(|c| {
                c.with_bar(
                    0,
                    BarKind::Memory32 {
                        prefetchable: false,
                    },
                    BAR0_SIZE,
                )
            })
            .and_then(PciConfig::with_msi);
        // The layout is fixed and valid (see the unit tests), so this never fails.
        cfg.expect("edu configuration layout is valid")
    }

    /// BAR0 read. Accesses QEMU's edu rejects (wrong size, unknown offset)
    /// read as all ones, as they do there.
    fn bar0_read(&self, offset: u64, data: &mut [u8]) {
        let val = if Self::size_ok(offset, data.len()) {
            match offset {
                regs::ID => u64::from(ID),
                regs::LIVENESS => u64::from(self.liveness),
                regs::FACTORIAL => u64::from(self.factorial),
                regs::STATUS => u64::from(self.status),
                regs::IRQ_STATUS => u64::from(self.irq_status),
                regs::DMA_SRC => self.dma_src,
                regs::DMA_DST => self.dma_dst,
                regs::DMA_COUNT => self.dma_count,
                regs::DMA_CMD => self.dma_cmd,
                _ => u64::MAX,
            }
        } else {
            u64::MAX
        };
        let bytes = val.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0xff);
        }
    }

    /// BAR0 write. Accesses QEMU's edu rejects are ignored.
    fn bar0_write(&mut self, ctx: &mut dyn DeviceContext, offset: u64, data: &[u8]) {
        if !Self::size_ok(offset, data.len()) {
            return;
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let val = u64::from_le_bytes(bytes);
        let val32 = val as u32;
        // The DMA registers cannot change under a running transfer.
        let dma_busy = self.dma_cmd & DMA_CMD_START != 0;
        match offset {
            regs::LIVENESS => self.liveness = !val32,
            regs::FACTORIAL if self.status & STATUS_COMPUTING == 0 => {
                self.factorial = factorial(val32);
                if self.status & STATUS_IRQ_FACT != 0 {
                    self.raise(ctx, FACT_IRQ);
                }
            }
            regs::STATUS => {
                self.status = (self.status & !STATUS_IRQ_FACT) | (val32 & STATUS_IRQ_FACT);
            }
            regs::IRQ_RAISE => self.raise(ctx, val32),
            regs::IRQ_ACK => self.lower(ctx, val32),
            regs::DMA_SRC if !dma_busy => self.dma_src = val,
            regs::DMA_DST if !dma_busy => self.dma_dst = val,
            regs::DMA_COUNT if !dma_busy => self.dma_count = val,
            // A command without the start bit is ignored, as in QEMU.
            regs::DMA_CMD if !dma_busy && val & DMA_CMD_START != 0 => {
                self.dma_cmd = val;
                self.run_dma(ctx);
            }
            _ => {}
        }
    }

    /// Registers below 0x80 take 4-byte accesses, the DMA block 4 or 8.
    fn size_ok(offset: u64, size: usize) -> bool {
        size == 4 || (offset >= regs::DMA_SRC && size == 8)
    }

    /// Runs the programmed transfer to completion. A transfer outside the
    /// buffer, or one the client's memory refuses, moves nothing (or part of
    /// the data) but still completes, so a driver waiting on it is not stuck.
    fn run_dma(&mut self, ctx: &mut dyn DeviceContext) {
        let to_ram = self.dma_cmd & DMA_CMD_TO_RAM != 0;
        let (edu_addr, ram_addr) = if to_ram {
            (self.dma_src, self.dma_dst)
        } else {
            (self.dma_dst, self.dma_src)
        };
        let iova = ram_addr & DMA_MASK;
        match buffer_range(edu_addr, self.dma_count) {
            None => log::warn!(
                "edu: DMA of {:#x} bytes at {edu_addr:#x} is outside the buffer at {DMA_BUF_ADDR:#x}",
                self.dma_count
            ),
            Some(r) if r.is_empty() => {}
            Some(r) => {
                let res = if to_ram {
                    ctx.dma_write(iova, &self.dma_buf[r])
                } else {
                    ctx.dma_read(iova, &mut self.dma_buf[r])
                };
                if let Err(e) = res {
                    log::warn!("edu: DMA at IOVA {iova:#x} failed: {e}");
                }
            }
        }
        self.dma_cmd &= !DMA_CMD_START;
        if self.dma_cmd & DMA_CMD_IRQ != 0 {
            self.raise(ctx, DMA_IRQ);
        }
    }

    /// Sets interrupt status bits and signals: an MSI per raise when the client
    /// attached one, else the INTx level line.
    fn raise(&mut self, ctx: &mut dyn DeviceContext, bits: u32) {
        self.irq_status |= bits;
        if self.irq_status == 0 {
            return;
        }
        if ctx.irq_enabled(pci_irq::MSI, 0) {
            ctx.trigger_irq(pci_irq::MSI, 0);
        } else {
            self.set_intx(ctx, true);
        }
    }

    /// Clears interrupt status bits; the line drops once none is left.
    fn lower(&mut self, ctx: &mut dyn DeviceContext, bits: u32) {
        self.irq_status &= !bits;
        if self.irq_status == 0 {
            self.set_intx(ctx, false);
        }
    }

    /// Drives INTx on changes only: a level line has no edge to repeat.
    fn set_intx(&mut self, ctx: &mut dyn DeviceContext, asserted: bool) {
        if self.intx_asserted != asserted {
            self.intx_asserted = asserted;
            self.config.set_interrupt_status(asserted);
            ctx.set_irq_level(pci_irq::INTX, 0, asserted);
        }
    }
}

/// n! modulo 2^32, as QEMU's u32 loop computes it. From n = 34 on the product
/// holds 2^32 and stays 0, so the loop stops early instead of running n times.
fn factorial(n: u32) -> u32 {
    let mut acc: u32 = 1;
    for i in 2..=n {
        acc = acc.wrapping_mul(i);
        if acc == 0 {
            break;
        }
    }
    acc
}

/// The DMA buffer's byte range for a transfer of `count` bytes at edu address
/// `addr`, or `None` if any of it falls outside the buffer.
fn buffer_range(addr: u64, count: u64) -> Option<std::ops::Range<usize>> {
    let start = addr.checked_sub(DMA_BUF_ADDR)?;
    let end = start.checked_add(count)?;
    if end > DMA_BUF_SIZE as u64 {
        return None;
    }
    Some(start as usize..end as usize)
}

impl DeviceModel for Edu {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo::pci(VFIO_DEVICE_FLAGS_RESET)
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        match index {
            // Not mappable: every register access must reach the model.
            pci_region::BAR0 => Some(RegionInfo::plain(index, rw, BAR0_SIZE)),
            pci_region::CONFIG => Some(RegionInfo::plain(index, rw, CONFIG_SPACE_SIZE as u64)),
            i if i < pci_region::COUNT => Some(RegionInfo::plain(index, 0, 0)),
            _ => None,
        }
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let (flags, count) = match index {
            pci_irq::INTX => (
                VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
                1,
            ),
            pci_irq::MSI => (VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 1),
            pci_irq::MSIX => (VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 0),
            pci_irq::ERR | pci_irq::REQ => (VFIO_IRQ_INFO_EVENTFD, 1),
            _ => return None,
        };
        Some(IrqInfo {
            index,
            flags,
            count,
        })
    }

    fn region_read(
        &mut self,
        _ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        match index {
            pci_region::BAR0 => {
                self.bar0_read(offset, data);
                Ok(())
            }
            pci_region::CONFIG => self.config.read(offset, data),
            _ => Err(Error::InvalidArgument("edu: region has no readable space")),
        }
    }

    fn region_write(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        match index {
            pci_region::BAR0 => {
                self.bar0_write(ctx, offset, data);
                Ok(())
            }
            pci_region::CONFIG => self.config.write(offset, data),
            _ => Err(Error::InvalidArgument("edu: region has no writable space")),
        }
    }

    fn reset(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        self.set_intx(ctx, false);
        self.config.reset();
        self.liveness = 0;
        self.factorial = 0;
        self.status = 0;
        self.irq_status = 0;
        self.dma_src = 0;
        self.dma_dst = 0;
        self.dma_count = 0;
        self.dma_cmd = 0;
        self.dma_buf.fill(0);
        Ok(())
    }

    fn migration(&mut self) -> Option<&mut dyn Migratable> {
        Some(self)
    }
}

/// The first bytes of edu's migration stream.
pub const STATE_MAGIC: [u8; 4] = *b"EDUS";
/// The version of edu's migration stream this model writes and reads.
pub const STATE_VERSION: u16 = 1;
/// Bytes of the stream's header: magic, version, reserved, body length.
const STATE_HEADER_LEN: usize = 12;
/// Bytes of the body: identification, registers, config space, DMA buffer.
const STATE_BODY_LEN: usize = 8 + 4 * 4 + 4 + 4 * 8 + CONFIG_SPACE_SIZE + DMA_BUF_SIZE;
/// Length of edu's whole migration stream: header, body, FNV-1a checksum.
pub const STATE_LEN: usize = STATE_HEADER_LEN + STATE_BODY_LEN + 8;

/// FNV-1a, 64 bits: catches a changed byte anywhere in a stream.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads little-endian fields off the front of a stream whose length was
/// already checked.
struct StateReader<'a>(&'a [u8]);

impl StateReader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().unwrap_or([0; N])
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// edu's stream: `EDUS`, version (u16), reserved (u16), body length (u32);
/// the body: ID, vendor and device ID, liveness, factorial, status, IRQ
/// status, INTx level, the four DMA registers, the 256 bytes of config
/// space, the 4 KiB DMA buffer; then FNV-1a of all that. Little-endian.
impl Migratable for Edu {
    /// DMA runs to completion inside the register write that starts it, so
    /// a stopped edu never holds a transfer in flight.
    fn stop(&mut self, _ctx: &mut dyn DeviceContext) -> Result<()> {
        debug_assert_eq!(self.dma_cmd & DMA_CMD_START, 0);
        Ok(())
    }

    /// A loaded state may hold INTx asserted: the line is driven again here,
    /// where this session's client sees it.
    fn resume(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        if self.intx_asserted {
            ctx.set_irq_level(pci_irq::INTX, 0, true);
        }
        Ok(())
    }

    fn save(&self) -> Result<Vec<u8>> {
        let mut b = Vec::with_capacity(STATE_LEN);
        b.extend_from_slice(&STATE_MAGIC);
        b.extend_from_slice(&STATE_VERSION.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(STATE_BODY_LEN as u32).to_le_bytes());
        b.extend_from_slice(&ID.to_le_bytes());
        b.extend_from_slice(&VENDOR_ID.to_le_bytes());
        b.extend_from_slice(&DEVICE_ID.to_le_bytes());
        for v in [
            self.liveness,
            self.factorial,
            self.status,
            self.irq_status,
            u32::from(self.intx_asserted),
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.dma_src, self.dma_dst, self.dma_count, self.dma_cmd] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut config = [0u8; CONFIG_SPACE_SIZE];
        self.config.read(0, &mut config)?;
        b.extend_from_slice(&config);
        b.extend_from_slice(&self.dma_buf);
        b.extend_from_slice(&fnv1a(&b).to_le_bytes());
        debug_assert_eq!(b.len(), STATE_LEN);
        Ok(b)
    }

    fn load(&mut self, stream: &[u8]) -> Result<()> {
        let bad = Error::InvalidArgument;
        if stream.len() != STATE_LEN {
            return Err(bad("edu state: wrong length"));
        }
        let (data, sum) = stream.split_at(STATE_LEN - 8);
        if fnv1a(data).to_le_bytes() != sum {
            return Err(bad("edu state: checksum mismatch"));
        }
        let mut r = StateReader(data);
        if r.take::<4>() != STATE_MAGIC {
            return Err(bad("edu state: not an edu stream"));
        }
        if r.u16() != STATE_VERSION {
            return Err(bad("edu state: unknown version"));
        }
        let _reserved = r.u16();
        if r.u32() as usize != STATE_BODY_LEN {
            return Err(bad("edu state: wrong body length"));
        }
        if (r.u32(), r.u16(), r.u16()) != (ID, VENDOR_ID, DEVICE_ID) {
            return Err(bad("edu state: another device's identification"));
        }
        // Everything is decoded into a copy and checked before any of it
        // replaces the device's state.
        let mut next = self.clone();
        next.liveness = r.u32();
        next.factorial = r.u32();
        next.status = r.u32();
        next.irq_status = r.u32();
        let intx = r.u32();
        next.dma_src = r.u64();
        next.dma_dst = r.u64();
        next.dma_count = r.u64();
        next.dma_cmd = r.u64();
        if next.status & !STATUS_IRQ_FACT != 0 || intx > 1 || next.dma_cmd & DMA_CMD_START != 0 {
            return Err(bad("edu state: a busy or impossible register value"));
        }
        next.config.write(0, &r.take::<CONFIG_SPACE_SIZE>())?;
        next.intx_asserted = intx == 1;
        next.config.set_interrupt_status(next.intx_asserted);
        next.dma_buf.copy_from_slice(&r.take::<DMA_BUF_SIZE>());
        *self = next;
        Ok(())
    }

    fn max_stream_len(&self) -> usize {
        STATE_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::pci::reg;

    /// Test double for [`DeviceContext`]: client memory is a `Vec<u8>` at IOVA
    /// `base`, interrupts are counted, and DMA can be made to fail.
    #[derive(Default)]
    struct FakeContext {
        base: u64,
        mem: Vec<u8>,
        fail_dma: bool,
        dma_calls: u32,
        msi_attached: bool,
        msi_count: u32,
        intx_level: bool,
        intx_changes: u32,
    }

    impl FakeContext {
        fn with_memory(base: u64, len: usize) -> Self {
            FakeContext {
                base,
                mem: vec![0; len],
                ..Default::default()
            }
        }

        fn range(&self, iova: u64, len: usize) -> Result<std::ops::Range<usize>> {
            let start = iova
                .checked_sub(self.base)
                .and_then(|s| usize::try_from(s).ok())
                .ok_or(Error::InvalidArgument("IOVA not mapped"))?;
            match start.checked_add(len) {
                Some(end) if end <= self.mem.len() => Ok(start..end),
                _ => Err(Error::InvalidArgument("IOVA not mapped")),
            }
        }
    }

    impl DeviceContext for FakeContext {
        fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<()> {
            self.dma_calls += 1;
            if self.fail_dma {
                return Err(Error::Timeout);
            }
            let r = self.range(iova, buf.len())?;
            buf.copy_from_slice(&self.mem[r]);
            Ok(())
        }

        fn dma_write(&mut self, iova: u64, buf: &[u8]) -> Result<()> {
            self.dma_calls += 1;
            if self.fail_dma {
                return Err(Error::Timeout);
            }
            let r = self.range(iova, buf.len())?;
            self.mem[r].copy_from_slice(buf);
            Ok(())
        }

        fn irq_enabled(&self, index: u32, vector: u32) -> bool {
            index == pci_irq::MSI && vector == 0 && self.msi_attached
        }

        fn trigger_irq(&mut self, index: u32, vector: u32) -> bool {
            if self.irq_enabled(index, vector) {
                self.msi_count += 1;
                true
            } else {
                false
            }
        }

        fn set_irq_level(&mut self, index: u32, vector: u32, asserted: bool) {
            assert_eq!((index, vector), (pci_irq::INTX, 0));
            self.intx_level = asserted;
            self.intx_changes += 1;
        }
    }

    fn rd(edu: &mut Edu, ctx: &mut FakeContext, off: u64, size: usize) -> u64 {
        let mut b = [0u8; 8];
        edu.region_read(ctx, 0, off, &mut b[..size]).unwrap();
        u64::from_le_bytes(b)
    }

    fn rd32(edu: &mut Edu, ctx: &mut FakeContext, off: u64) -> u32 {
        rd(edu, ctx, off, 4) as u32
    }

    fn wr(edu: &mut Edu, ctx: &mut FakeContext, off: u64, val: u64, size: usize) {
        edu.region_write(ctx, 0, off, &val.to_le_bytes()[..size])
            .unwrap();
    }

    fn wr32(edu: &mut Edu, ctx: &mut FakeContext, off: u64, val: u32) {
        wr(edu, ctx, off, u64::from(val), 4);
    }

    fn cfg32(edu: &mut Edu, ctx: &mut FakeContext, off: u64) -> u32 {
        let mut b = [0u8; 4];
        edu.region_read(ctx, pci_region::CONFIG, off, &mut b)
            .unwrap();
        u32::from_le_bytes(b)
    }

    fn dma(edu: &mut Edu, ctx: &mut FakeContext, src: u64, dst: u64, count: u64, cmd: u64) {
        wr(edu, ctx, regs::DMA_SRC, src, 8);
        wr(edu, ctx, regs::DMA_DST, dst, 8);
        wr(edu, ctx, regs::DMA_COUNT, count, 8);
        wr(edu, ctx, regs::DMA_CMD, cmd, 8);
    }

    #[test]
    fn vfio_pci_layout() {
        let edu = Edu::new();
        let info = edu.device_info();
        assert_eq!(
            info.flags,
            crate::device::VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET
        );
        assert_eq!((info.num_regions, info.num_irqs), (9, 5));
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        for i in 0..9 {
            let r = edu.region_info(i).unwrap();
            assert_eq!(r.index, i);
            let want = match i {
                0 => (rw, 1 << 20),
                7 => (rw, 256),
                _ => (0, 0),
            };
            assert_eq!((r.flags, r.size), want, "region {i}");
            assert!(r.caps.is_empty() && !r.is_mappable());
        }
        assert!(edu.region_info(9).is_none());
        let irq = |i| edu.irq_info(i).map(|q| (q.flags, q.count));
        assert_eq!(
            irq(0),
            Some((
                VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
                1
            ))
        );
        assert_eq!(
            irq(1),
            Some((VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 1))
        );
        assert_eq!(irq(2).map(|q| q.1), Some(0));
        assert_eq!(irq(3), Some((VFIO_IRQ_INFO_EVENTFD, 1)));
        assert_eq!(irq(4), Some((VFIO_IRQ_INFO_EVENTFD, 1)));
        assert!(irq(5).is_none());
    }

    #[test]
    fn config_space() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::default();
        assert_eq!(cfg32(&mut edu, &mut ctx, 0), 0x11e8_1234);
        assert_eq!(cfg32(&mut edu, &mut ctx, 0x08), 0x00ff_0010);
        assert_eq!(edu.config().interrupt_pin(), 1);
        edu.region_write(&mut ctx, 7, 0x10, &[0xff; 4]).unwrap();
        assert_eq!(cfg32(&mut edu, &mut ctx, 0x10), 0xfff0_0000);
        assert_eq!(
            edu.config().capabilities()[0].id,
            crate::models::pci::CAP_ID_MSI
        );
        let mut all = [0u8; 256];
        edu.region_read(&mut ctx, 7, 0, &mut all).unwrap();
        assert!(edu.region_read(&mut ctx, 7, 255, &mut [0; 2]).is_err());
        assert!(edu.region_read(&mut ctx, 3, 0, &mut [0; 4]).is_err());
        assert!(edu.region_write(&mut ctx, 8, 0, &[0; 4]).is_err());
    }

    #[test]
    fn identification_and_liveness() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::default();
        assert_eq!(rd32(&mut edu, &mut ctx, regs::ID), ID);
        wr32(&mut edu, &mut ctx, regs::ID, 0);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::ID), ID);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::LIVENESS), 0);
        for v in [0, 0x1234_5678, 0xffff_ffff, 0xa5a5_5a5a] {
            wr32(&mut edu, &mut ctx, regs::LIVENESS, v);
            assert_eq!(rd32(&mut edu, &mut ctx, regs::LIVENESS), !v);
        }
    }

    #[test]
    fn factorial_values() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::default();
        for (n, want) in [
            (0, 1),
            (1, 1),
            (5, 120),
            (10, 3_628_800),
            (12, 479_001_600),
            (13, 1_932_053_504),
            (33, 2_147_483_648),
            (34, 0),
            (u32::MAX, 0),
        ] {
            wr32(&mut edu, &mut ctx, regs::FACTORIAL, n);
            assert_eq!(rd32(&mut edu, &mut ctx, regs::STATUS) & STATUS_COMPUTING, 0);
            assert_eq!(rd32(&mut edu, &mut ctx, regs::FACTORIAL), want, "{n}!");
        }
        // No interrupt unless asked for.
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), 0);
        assert_eq!(ctx.intx_changes, 0);
    }

    #[test]
    fn factorial_matches_plain_loop() {
        for n in 0..100u32 {
            let plain = (1..=n).fold(1u32, |a, i| a.wrapping_mul(i));
            assert_eq!(factorial(n), plain, "{n}!");
        }
    }

    #[test]
    fn factorial_interrupt() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::default();
        // Only bit 7 of status is writable.
        wr32(&mut edu, &mut ctx, regs::STATUS, 0xffff_ffff);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::STATUS), STATUS_IRQ_FACT);
        wr32(&mut edu, &mut ctx, regs::FACTORIAL, 4);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::FACTORIAL), 24);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), FACT_IRQ);
        assert!(ctx.intx_level);
        wr32(&mut edu, &mut ctx, regs::STATUS, 0);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::STATUS), 0);
    }

    #[test]
    fn rejected_accesses() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::default();
        wr32(&mut edu, &mut ctx, regs::LIVENESS, 0);
        // Sizes other than 4 below 0x80 read all ones and write nothing.
        assert_eq!(rd(&mut edu, &mut ctx, regs::ID, 2), 0xffff);
        assert_eq!(rd(&mut edu, &mut ctx, regs::ID, 1), 0xff);
        assert_eq!(rd(&mut edu, &mut ctx, regs::ID, 8), u64::MAX);
        let mut odd = [0u8; 3];
        edu.region_read(&mut ctx, 0, 0, &mut odd).unwrap();
        assert_eq!(odd, [0xff; 3]);
        wr(&mut edu, &mut ctx, regs::LIVENESS, 5, 2);
        wr(&mut edu, &mut ctx, regs::LIVENESS, 5, 8);
        edu.region_write(&mut ctx, 0, regs::LIVENESS, &[1, 2, 3])
            .unwrap();
        assert_eq!(rd32(&mut edu, &mut ctx, regs::LIVENESS), 0xffff_ffff);
        // Unknown and write-only offsets read all ones; writes there do nothing.
        for off in [0x0c, 0x10, 0x60, 0x64, 0x84, 0xa0, 0x40000, 0xffffc] {
            assert_eq!(rd32(&mut edu, &mut ctx, off), 0xffff_ffff, "{off:#x}");
            wr32(&mut edu, &mut ctx, off.max(0x68), 0x1234);
        }
        assert_eq!(rd(&mut edu, &mut ctx, regs::DMA_CMD, 2), 0xffff);
        // Read-only interrupt status.
        wr32(&mut edu, &mut ctx, regs::IRQ_STATUS, 0xff);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), 0);
        assert_eq!((ctx.intx_changes, ctx.dma_calls), (0, 0));
    }

    #[test]
    fn dma_registers_take_4_and_8_bytes() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::default();
        wr(&mut edu, &mut ctx, regs::DMA_SRC, 0x1_2345_6789, 8);
        assert_eq!(rd(&mut edu, &mut ctx, regs::DMA_SRC, 8), 0x1_2345_6789);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::DMA_SRC), 0x2345_6789);
        // A 4-byte write replaces the whole register.
        wr32(&mut edu, &mut ctx, regs::DMA_SRC, 0x100);
        assert_eq!(rd(&mut edu, &mut ctx, regs::DMA_SRC, 8), 0x100);
        // A command without the start bit is ignored.
        wr32(&mut edu, &mut ctx, regs::DMA_CMD, 0x6);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::DMA_CMD), 0);
    }

    #[test]
    fn intx_raise_and_acknowledge() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::default();
        wr32(&mut edu, &mut ctx, regs::IRQ_RAISE, 0);
        assert_eq!(ctx.intx_changes, 0);
        wr32(&mut edu, &mut ctx, regs::IRQ_RAISE, 0x5);
        assert!(ctx.intx_level);
        assert_ne!(
            edu.config().status() & crate::models::pci::status::INTERRUPT,
            0
        );
        wr32(&mut edu, &mut ctx, regs::IRQ_RAISE, 0x2);
        assert_eq!(ctx.intx_changes, 1);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), 0x7);
        wr32(&mut edu, &mut ctx, regs::IRQ_ACK, 0x5);
        assert!(ctx.intx_level);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), 0x2);
        wr32(&mut edu, &mut ctx, regs::IRQ_ACK, 0xffff_ffff);
        assert!(!ctx.intx_level);
        assert_eq!(ctx.intx_changes, 2);
        assert_eq!(
            edu.config().status() & crate::models::pci::status::INTERRUPT,
            0
        );
        assert_eq!(ctx.msi_count, 0);
    }

    #[test]
    fn msi_signals_each_raise() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext {
            msi_attached: true,
            ..Default::default()
        };
        wr32(&mut edu, &mut ctx, regs::IRQ_RAISE, 0x1);
        wr32(&mut edu, &mut ctx, regs::IRQ_RAISE, 0x1);
        assert_eq!(ctx.msi_count, 2);
        assert_eq!(ctx.intx_changes, 0);
        wr32(&mut edu, &mut ctx, regs::IRQ_ACK, 0x1);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), 0);
        assert_eq!(ctx.intx_changes, 0);
    }

    #[test]
    fn dma_roundtrip() {
        let base = 0x10_0000;
        let mut edu = Edu::new();
        let mut ctx = FakeContext::with_memory(base, 8192);
        for (i, b) in ctx.mem[..256].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7).wrapping_add(3);
        }
        let pattern = ctx.mem[..256].to_vec();
        dma(
            &mut edu,
            &mut ctx,
            base,
            DMA_BUF_ADDR + 0x100,
            256,
            DMA_CMD_START,
        );
        assert_eq!(rd32(&mut edu, &mut ctx, regs::DMA_CMD), 0);
        // RAM-side addresses are clamped to the 28-bit DMA mask.
        let dst = (1 << 28) | (base + 4096);
        dma(
            &mut edu,
            &mut ctx,
            DMA_BUF_ADDR + 0x100,
            dst,
            256,
            DMA_CMD_START | DMA_CMD_TO_RAM,
        );
        assert_eq!(
            rd32(&mut edu, &mut ctx, regs::DMA_CMD),
            DMA_CMD_TO_RAM as u32
        );
        assert_eq!(&ctx.mem[4096..4096 + 256], &pattern[..]);
        assert_eq!(ctx.dma_calls, 2);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), 0);
    }

    #[test]
    fn dma_interrupt() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::with_memory(0, 4096);
        ctx.msi_attached = true;
        dma(
            &mut edu,
            &mut ctx,
            0,
            DMA_BUF_ADDR,
            16,
            DMA_CMD_START | DMA_CMD_IRQ,
        );
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), DMA_IRQ);
        assert_eq!(ctx.msi_count, 1);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::DMA_CMD), DMA_CMD_IRQ as u32);
    }

    #[test]
    fn dma_outside_buffer_moves_nothing() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::with_memory(0, 8192);
        let cases = [
            (0, DMA_BUF_ADDR, 4097),
            (0, DMA_BUF_ADDR + 4095, 2),
            (0, DMA_BUF_ADDR - 1, 1),
            (0, 0, 16),
            (0, u64::MAX, 2),
            (0, DMA_BUF_ADDR, u64::MAX),
        ];
        for (src, dst, count) in cases {
            dma(
                &mut edu,
                &mut ctx,
                src,
                dst,
                count,
                DMA_CMD_START | DMA_CMD_IRQ,
            );
            assert_eq!(rd32(&mut edu, &mut ctx, regs::DMA_CMD) & 1, 0);
            dma(
                &mut edu,
                &mut ctx,
                dst,
                src,
                count,
                DMA_CMD_START | DMA_CMD_TO_RAM,
            );
            assert_eq!(rd32(&mut edu, &mut ctx, regs::DMA_CMD) & 1, 0);
        }
        assert_eq!(ctx.dma_calls, 0);
        // The transfer still completes, so the requested interrupt comes.
        assert_eq!(rd32(&mut edu, &mut ctx, regs::IRQ_STATUS), DMA_IRQ);
        // A zero-length transfer touches no memory.
        dma(&mut edu, &mut ctx, 0, DMA_BUF_ADDR + 4096, 0, DMA_CMD_START);
        assert_eq!(ctx.dma_calls, 0);
    }

    #[test]
    fn dma_failure_keeps_registers_consistent() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::with_memory(0, 4096);
        ctx.fail_dma = true;
        dma(&mut edu, &mut ctx, 0, DMA_BUF_ADDR, 64, DMA_CMD_START);
        dma(
            &mut edu,
            &mut ctx,
            DMA_BUF_ADDR,
            0,
            64,
            DMA_CMD_START | DMA_CMD_TO_RAM,
        );
        assert_eq!(ctx.dma_calls, 2);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::DMA_CMD) & 1, 0);
        // Unmapped IOVA: the client's memory refuses it.
        ctx.fail_dma = false;
        dma(
            &mut edu,
            &mut ctx,
            0x800_0000,
            DMA_BUF_ADDR,
            64,
            DMA_CMD_START,
        );
        assert_eq!(rd32(&mut edu, &mut ctx, regs::DMA_CMD) & 1, 0);
        // The device still works afterwards.
        wr32(&mut edu, &mut ctx, regs::LIVENESS, 1);
        assert_eq!(rd32(&mut edu, &mut ctx, regs::LIVENESS), !1);
    }

    #[test]
    fn reset_restores_power_on_state() {
        let mut edu = Edu::new();
        let mut ctx = FakeContext::with_memory(0, 4096);
        wr32(&mut edu, &mut ctx, regs::LIVENESS, 7);
        wr32(&mut edu, &mut ctx, regs::STATUS, STATUS_IRQ_FACT);
        wr32(&mut edu, &mut ctx, regs::FACTORIAL, 3);
        dma(
            &mut edu,
            &mut ctx,
            0,
            DMA_BUF_ADDR,
            16,
            DMA_CMD_START | DMA_CMD_IRQ,
        );
        edu.region_write(&mut ctx, 7, reg::COMMAND as u64, &[0x06, 0])
            .unwrap();
        assert!(ctx.intx_level);
        edu.reset(&mut ctx).unwrap();
        assert!(!ctx.intx_level);
        assert_eq!(edu.config().command(), 0);
        assert_eq!(
            edu.config().status() & crate::models::pci::status::INTERRUPT,
            0
        );
        assert_eq!(cfg32(&mut edu, &mut ctx, 0), 0x11e8_1234);
        for off in [
            regs::LIVENESS,
            regs::FACTORIAL,
            regs::STATUS,
            regs::IRQ_STATUS,
        ] {
            assert_eq!(rd32(&mut edu, &mut ctx, off), 0, "{off:#x}");
        }
        for off in [regs::DMA_SRC, regs::DMA_DST, regs::DMA_COUNT, regs::DMA_CMD] {
            assert_eq!(rd(&mut edu, &mut ctx, off, 8), 0, "{off:#x}");
        }
        assert_eq!(rd32(&mut edu, &mut ctx, regs::ID), ID);
    }
}
