//! The edu conformance suite, written once against [`DeviceIo`].
//!
//! The same cases run on QEMU's real edu device behind kernel VFIO and on our
//! [`crate::edu::Edu`] model behind vfio-user; passing both shows that the two
//! backends are interchangeable. The cases therefore rely only on what the
//! real device does:
//!
//! * factorial runs on a thread and DMA on a ~100 ms timer, so the suite polls
//!   the busy bits, each poll bounded by a deadline;
//! * kernel vfio-pci automasks INTx, so the suite unmasks after acknowledging;
//! * kernel vfio-pci programs the MSI capability itself when an eventfd is
//!   attached to IRQ index 1, so the suite only attaches one;
//! * edu masks DMA addresses to 28 bits, so mappings live below `1 << 28`;
//! * QEMU drops DMA and MSI writes from a device that is not bus master, so the
//!   suite sets the bus master bit first.
//!
//! Accesses are 4 bytes wide throughout, which every kernel's vfio-pci passes
//! through (8-byte BAR accesses need a newer kernel).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::device::{pci_irq, pci_region, DeviceIo, IrqAction, IrqData, IrqSet};
use crate::edu::{self, regs};
use crate::error::{Error, Result};
use crate::memory::DmaBuffer;
use crate::pci::{command, reg};

/// How long a busy bit may stay set before a case fails.
const BUSY_DEADLINE: Duration = Duration::from_secs(5);
/// How long a case waits for an interrupt.
const IRQ_DEADLINE: Duration = Duration::from_secs(5);
/// How long a case watches for an interrupt that must not come.
const QUIET_PERIOD: Duration = Duration::from_millis(100);
/// Where the suite maps its DMA buffer: below edu's 28-bit DMA mask.
pub const DMA_IOVA: u64 = 0x10_0000;
/// Size of the suite's DMA buffer.
const DMA_LEN: usize = 2 * 4096;

/// One conformance case.
#[derive(Debug, Clone, Copy)]
pub struct EduCase {
    /// A short name, e.g. `factorial`.
    pub name: &'static str,
    /// Runs the case; an error names what differed.
    pub run: fn(&dyn DeviceIo) -> Result<()>,
}

static CASES: &[EduCase] = &[
    EduCase { name: "identify", run: identify },
    EduCase { name: "liveness", run: liveness },
    EduCase { name: "factorial", run: factorial },
    EduCase { name: "factorial_irq", run: factorial_irq },
    EduCase { name: "interrupt_intx", run: interrupt_intx },
    EduCase { name: "interrupt_msi", run: interrupt_msi },
    EduCase { name: "dma_roundtrip", run: dma_roundtrip },
    EduCase { name: "dma_irq", run: dma_irq },
];

/// Every case of the suite, in the order [`run_edu_suite`] runs them.
pub fn edu_cases() -> &'static [EduCase] {
    CASES
}

/// Runs every case on `dev` and returns each one's name and outcome. A case
/// that fails does not stop the others: each starts by quiescing the device.
pub fn run_edu_suite(dev: &dyn DeviceIo) -> Vec<(&'static str, Result<()>)> {
    CASES.iter().map(|c| (c.name, (c.run)(dev))).collect()
}

/// A failed expectation.
fn mismatch(msg: String) -> Error {
    Error::Protocol(msg)
}

fn expect_eq(what: &str, got: u32, want: u32) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(mismatch(format!("{what}: expected {want:#x}, read {got:#x}")))
    }
}

fn read32(dev: &dyn DeviceIo, offset: u64) -> Result<u32> {
    let mut b = [0u8; 4];
    dev.region_read(pci_region::BAR0, offset, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn write32(dev: &dyn DeviceIo, offset: u64, val: u32) -> Result<()> {
    dev.region_write(pci_region::BAR0, offset, &val.to_le_bytes(), false)
}

fn config_read(dev: &dyn DeviceIo, offset: usize, data: &mut [u8]) -> Result<()> {
    dev.region_read(pci_region::CONFIG, offset as u64, data)
}

/// Turns on memory decoding and bus mastering, which DMA and MSI need.
fn enable_bus_master(dev: &dyn DeviceIo) -> Result<()> {
    let mut b = [0u8; 2];
    config_read(dev, reg::COMMAND, &mut b)?;
    let cmd = u16::from_le_bytes(b) | command::MEMORY | command::BUS_MASTER;
    dev.region_write(pci_region::CONFIG, reg::COMMAND as u64, &cmd.to_le_bytes(), false)?;
    config_read(dev, reg::COMMAND, &mut b)?;
    let now = u16::from_le_bytes(b);
    if now & command::BUS_MASTER == 0 {
        return Err(mismatch(format!("command register {now:#06x}: bus master did not stick")));
    }
    Ok(())
}

/// Polls register `offset` until `bit` clears, at most [`BUSY_DEADLINE`].
fn wait_clear(dev: &dyn DeviceIo, offset: u64, bit: u32, what: &str) -> Result<()> {
    let deadline = Instant::now() + BUSY_DEADLINE;
    loop {
        let v = read32(dev, offset)?;
        if v & bit == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(mismatch(format!(
                "{what}: register {offset:#x} = {v:#x} still busy after {BUSY_DEADLINE:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Brings the device to a known state: nothing running, no interrupt
/// requested or pending.
fn quiesce(dev: &dyn DeviceIo) -> Result<()> {
    wait_clear(dev, regs::STATUS, edu::STATUS_COMPUTING, "factorial")?;
    wait_clear(dev, regs::DMA_CMD, edu::DMA_CMD_START as u32, "DMA")?;
    write32(dev, regs::STATUS, 0)?;
    write32(dev, regs::IRQ_ACK, u32::MAX)?;
    expect_eq("interrupt status after acknowledging all", read32(dev, regs::IRQ_STATUS)?, 0)
}

/// An eventfd attached as the trigger of vector 0 of one IRQ index; detached
/// on drop if the case did not detach it.
struct Irq<'a> {
    dev: &'a dyn DeviceIo,
    index: u32,
    efd: EventFd,
    attached: bool,
}

impl<'a> Irq<'a> {
    fn attach(dev: &'a dyn DeviceIo, index: u32) -> Result<Self> {
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::sys("eventfd", e))?;
        let fds = [efd.as_raw_fd()];
        dev.set_irqs(&IrqSet {
            index,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            data: IrqData::Eventfds(&fds),
        })?;
        Ok(Irq { dev, index, efd, attached: true })
    }

    /// Waits for the eventfd to be signalled and consumes the signal.
    fn wait(&self, what: &str) -> Result<()> {
        if !readable(self.efd.as_fd(), IRQ_DEADLINE)? {
            return Err(mismatch(format!(
                "{what}: no interrupt on IRQ index {} within {IRQ_DEADLINE:?}",
                self.index
            )));
        }
        self.efd.read().map_err(|e| Error::sys("eventfd read", e))?;
        Ok(())
    }

    /// Fails if the eventfd is signalled within `period`.
    fn expect_quiet(&self, period: Duration, what: &str) -> Result<()> {
        if readable(self.efd.as_fd(), period)? {
            return Err(mismatch(format!(
                "{what}: unexpected interrupt on IRQ index {}",
                self.index
            )));
        }
        Ok(())
    }

    /// Unmasks an automasked INTx after the interrupt was handled.
    fn unmask(&self) -> Result<()> {
        self.dev.set_irqs(&IrqSet {
            index: self.index,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            data: IrqData::None,
        })
    }

    fn detach(mut self) -> Result<()> {
        self.attached = false;
        disable_irq(self.dev, self.index)
    }
}

impl Drop for Irq<'_> {
    fn drop(&mut self) {
        if self.attached {
            let _ = disable_irq(self.dev, self.index);
        }
    }
}

/// TRIGGER with no data and count 0 disables the whole index.
fn disable_irq(dev: &dyn DeviceIo, index: u32) -> Result<()> {
    dev.set_irqs(&IrqSet { index, start: 0, count: 0, action: IrqAction::Trigger, data: IrqData::None })
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll", e)),
        }
    }
}

/// A DMA buffer mapped for the device at [`DMA_IOVA`]. The buffer is freed
/// only once the mapping is gone; if unmapping fails it is leaked instead, so
/// the device can never reach freed memory.
struct Mapped<'a> {
    dev: &'a dyn DeviceIo,
    buf: Option<DmaBuffer>,
    mapped: bool,
}

impl<'a> Mapped<'a> {
    fn new(dev: &'a dyn DeviceIo) -> Result<Self> {
        let buf = DmaBuffer::new(DMA_LEN)?;
        let map = buf.dma_map(DMA_IOVA);
        // SAFETY: `buf` lives in the returned guard, whose drop unmaps before
        // freeing it (or leaks it when the unmap fails), so the memory stays
        // valid for as long as it is mapped.
        unsafe { dev.dma_map(&map) }?;
        Ok(Mapped { dev, buf: Some(buf), mapped: true })
    }

    fn buf(&self) -> Result<&DmaBuffer> {
        self.buf.as_ref().ok_or(Error::InvalidArgument("DMA buffer already released"))
    }

    fn unmap(mut self) -> Result<()> {
        self.dev.dma_unmap(DMA_IOVA, DMA_LEN as u64)?;
        self.mapped = false;
        Ok(())
    }
}

impl Drop for Mapped<'_> {
    fn drop(&mut self) {
        if self.mapped && self.dev.dma_unmap(DMA_IOVA, DMA_LEN as u64).is_err() {
            std::mem::forget(self.buf.take());
        }
    }
}

/// Programs and starts one DMA transfer, then waits for it to finish.
fn run_dma(dev: &dyn DeviceIo, src: u64, dst: u64, count: u32, cmd: u64, what: &str) -> Result<()> {
    // All addresses the suite uses are below 1 << 28, so 4-byte writes hold them.
    let src = u32::try_from(src).map_err(|_| Error::InvalidArgument("DMA source above 4 GiB"))?;
    let dst = u32::try_from(dst).map_err(|_| Error::InvalidArgument("DMA destination above 4 GiB"))?;
    write32(dev, regs::DMA_SRC, src)?;
    write32(dev, regs::DMA_DST, dst)?;
    write32(dev, regs::DMA_COUNT, count)?;
    expect_eq(&format!("{what}: DMA source register"), read32(dev, regs::DMA_SRC)?, src)?;
    expect_eq(&format!("{what}: DMA destination register"), read32(dev, regs::DMA_DST)?, dst)?;
    expect_eq(&format!("{what}: DMA count register"), read32(dev, regs::DMA_COUNT)?, count)?;
    write32(dev, regs::DMA_CMD, cmd as u32)?;
    wait_clear(dev, regs::DMA_CMD, edu::DMA_CMD_START as u32, what)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

/// The ID register and the PCI identity in configuration space.
fn identify(dev: &dyn DeviceIo) -> Result<()> {
    expect_eq("identification register", read32(dev, regs::ID)?, edu::ID)?;
    let mut b = [0u8; 4];
    config_read(dev, reg::VENDOR_ID, &mut b)?;
    let ids = u32::from_le_bytes(b);
    expect_eq("config vendor ID", ids & 0xffff, u32::from(edu::VENDOR_ID))?;
    expect_eq("config device ID", ids >> 16, u32::from(edu::DEVICE_ID))?;
    config_read(dev, reg::REVISION_ID, &mut b)?;
    let class_rev = u32::from_le_bytes(b);
    expect_eq("config revision ID", class_rev & 0xff, u32::from(edu::REVISION))?;
    expect_eq("config class code", class_rev >> 8, edu::CLASS_CODE)
}

/// Reads of the liveness register return the inverse of the last write.
fn liveness(dev: &dyn DeviceIo) -> Result<()> {
    for v in [0, 1, 0x1234_5678, 0x8000_0000, 0xa5a5_5a5a, u32::MAX] {
        write32(dev, regs::LIVENESS, v)?;
        let got = read32(dev, regs::LIVENESS)?;
        if got != !v {
            return Err(mismatch(format!("liveness: wrote {v:#010x}, read {got:#010x}")));
        }
    }
    Ok(())
}

/// Factorials, including 0! = 1 and the u32 wrap of 13!.
fn factorial(dev: &dyn DeviceIo) -> Result<()> {
    quiesce(dev)?;
    for (n, want) in [(10, 3_628_800), (0, 1), (1, 1), (12, 479_001_600), (13, 1_932_053_504)] {
        write32(dev, regs::FACTORIAL, n)?;
        wait_clear(dev, regs::STATUS, edu::STATUS_COMPUTING, "factorial")?;
        expect_eq(&format!("factorial of {n}"), read32(dev, regs::FACTORIAL)?, want)?;
    }
    Ok(())
}

/// Status bit 7 raises the factorial interrupt when the result is ready.
fn factorial_irq(dev: &dyn DeviceIo) -> Result<()> {
    quiesce(dev)?;
    enable_bus_master(dev)?;
    let irq = Irq::attach(dev, pci_irq::MSI)?;
    write32(dev, regs::STATUS, edu::STATUS_IRQ_FACT)?;
    expect_eq("status after setting bit 7", read32(dev, regs::STATUS)?, edu::STATUS_IRQ_FACT)?;
    write32(dev, regs::FACTORIAL, 5)?;
    irq.wait("factorial_irq")?;
    wait_clear(dev, regs::STATUS, edu::STATUS_COMPUTING, "factorial_irq")?;
    expect_eq("factorial of 5", read32(dev, regs::FACTORIAL)?, 120)?;
    expect_eq("factorial_irq: interrupt status", read32(dev, regs::IRQ_STATUS)?, edu::FACT_IRQ)?;
    write32(dev, regs::IRQ_ACK, edu::FACT_IRQ)?;
    write32(dev, regs::STATUS, 0)?;
    expect_eq("factorial_irq: interrupt status after ack", read32(dev, regs::IRQ_STATUS)?, 0)?;
    irq.detach()
}

/// Raise and acknowledge through the INTx line.
fn interrupt_intx(dev: &dyn DeviceIo) -> Result<()> {
    quiesce(dev)?;
    let irq = Irq::attach(dev, pci_irq::INTX)?;
    irq.expect_quiet(Duration::ZERO, "interrupt_intx before raise")?;
    let value = 0x00c0_ffee;
    write32(dev, regs::IRQ_RAISE, value)?;
    irq.wait("interrupt_intx")?;
    expect_eq("interrupt_intx: interrupt status", read32(dev, regs::IRQ_STATUS)?, value)?;
    write32(dev, regs::IRQ_ACK, value)?;
    expect_eq("interrupt_intx: interrupt status after ack", read32(dev, regs::IRQ_STATUS)?, 0)?;
    // With the line low, unmasking must not fire again.
    irq.unmask()?;
    irq.expect_quiet(QUIET_PERIOD, "interrupt_intx after ack and unmask")?;
    irq.detach()
}

/// Raise and acknowledge through MSI; every raise sends a message.
fn interrupt_msi(dev: &dyn DeviceIo) -> Result<()> {
    quiesce(dev)?;
    enable_bus_master(dev)?;
    let irq = Irq::attach(dev, pci_irq::MSI)?;
    irq.expect_quiet(Duration::ZERO, "interrupt_msi before raise")?;
    for value in [0x0000_0040, 0x0001_0000] {
        write32(dev, regs::IRQ_RAISE, value)?;
        irq.wait("interrupt_msi")?;
        expect_eq("interrupt_msi: interrupt status", read32(dev, regs::IRQ_STATUS)?, value)?;
        write32(dev, regs::IRQ_ACK, value)?;
        expect_eq("interrupt_msi: interrupt status after ack", read32(dev, regs::IRQ_STATUS)?, 0)?;
    }
    irq.expect_quiet(QUIET_PERIOD, "interrupt_msi after ack")?;
    irq.detach()
}

/// RAM -> edu twice, at two buffer offsets, then one edu -> RAM of both, so
/// an offset error in either direction shows up as misplaced bytes.
fn dma_roundtrip(dev: &dyn DeviceIo) -> Result<()> {
    quiesce(dev)?;
    enable_bus_master(dev)?;
    let map = Mapped::new(dev)?;
    let result = dma_roundtrip_on(dev, &map);
    let unmapped = map.unmap();
    result.and(unmapped)
}

fn dma_roundtrip_on(dev: &dyn DeviceIo, map: &Mapped<'_>) -> Result<()> {
    let buf = map.buf()?;
    let a = pattern(256, 0x11);
    let b = pattern(256, 0x80);
    buf.write(0, &a)?;
    buf.write(256, &b)?;
    let start = edu::DMA_CMD_START;
    let to_ram = edu::DMA_CMD_START | edu::DMA_CMD_TO_RAM;
    run_dma(dev, DMA_IOVA, edu::DMA_BUF_ADDR + 256, 256, start, "DMA RAM->edu (first)")?;
    run_dma(dev, DMA_IOVA + 256, edu::DMA_BUF_ADDR, 256, start, "DMA RAM->edu (second)")?;
    run_dma(dev, edu::DMA_BUF_ADDR, DMA_IOVA + 4096, 512, to_ram, "DMA edu->RAM")?;
    let mut got = vec![0u8; 512];
    buf.read(4096, &mut got)?;
    let want: Vec<u8> = b.iter().chain(&a).copied().collect();
    if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
        return Err(mismatch(format!(
            "dma_roundtrip: byte {i} of the copy is {:#04x}, expected {:#04x}",
            got[i], want[i]
        )));
    }
    expect_eq("dma_roundtrip: interrupt status", read32(dev, regs::IRQ_STATUS)?, 0)
}

/// A DMA with command bit 2 raises the DMA interrupt when it completes.
fn dma_irq(dev: &dyn DeviceIo) -> Result<()> {
    quiesce(dev)?;
    enable_bus_master(dev)?;
    let map = Mapped::new(dev)?;
    let result = dma_irq_on(dev, &map);
    let unmapped = map.unmap();
    result.and(unmapped)
}

fn dma_irq_on(dev: &dyn DeviceIo, map: &Mapped<'_>) -> Result<()> {
    map.buf()?.write(0, &pattern(64, 0x42))?;
    let irq = Irq::attach(dev, pci_irq::MSI)?;
    let cmd = edu::DMA_CMD_START | edu::DMA_CMD_IRQ;
    run_dma(dev, DMA_IOVA, edu::DMA_BUF_ADDR, 64, cmd, "dma_irq")?;
    irq.wait("dma_irq")?;
    expect_eq("dma_irq: interrupt status", read32(dev, regs::IRQ_STATUS)?, edu::DMA_IRQ)?;
    write32(dev, regs::IRQ_ACK, edu::DMA_IRQ)?;
    expect_eq("dma_irq: interrupt status after ack", read32(dev, regs::IRQ_STATUS)?, 0)?;
    irq.detach()
}
