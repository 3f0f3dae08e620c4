//! The edu conformance suite, written once against [`DeviceIo`].
//!
//! The same cases run on QEMU's real edu device behind kernel VFIO and on our
//! [`crate::models::edu::Edu`] model behind vfio-user; passing both shows that the two
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
use crate::error::{Error, Result};
use crate::memory::DmaBuffer;
use crate::models::edu::{self, regs};
use crate::models::pci::{command, reg};

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
    EduCase {
        name: "identify",
        run: identify,
    },
    EduCase {
        name: "liveness",
        run: liveness,
    },
    EduCase {
        name: "factorial",
        run: factorial,
    },
    EduCase {
        name: "factorial_irq",
        run: factorial_irq,
    },
    EduCase {
        name: "interrupt_intx",
        run: interrupt_intx,
    },
    EduCase {
        name: "interrupt_msi",
        run: interrupt_msi,
    },
    EduCase {
        name: "dma_roundtrip",
        run: dma_roundtrip,
    },
    EduCase {
        name: "dma_irq",
        run: dma_irq,
    },
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

/// A failed expectation: the device did `got` where the edu spec says `expected`.
fn mismatch(what: impl Into<String>, expected: impl Into<String>, got: impl Into<String>) -> Error {
    Error::Mismatch {
        what: what.into(),
        expected: expected.into(),
        got: got.into(),
    }
}

fn expect_eq(what: &str, got: u32, want: u32) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(mismatch(what, format!("{want:#x}"), format!("{got:#x}")))
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
    dev.region_write(
        pci_region::CONFIG,
        reg::COMMAND as u64,
        &cmd.to_le_bytes(),
        false,
    )?;
    config_read(dev, reg::COMMAND, &mut b)?;
    let now = u16::from_le_bytes(b);
    if now & command::BUS_MASTER == 0 {
        return Err(mismatch(
            "bus master bit of the command register after setting it",
            "set",
            format!("clear ({now:#06x})"),
        ));
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
            return Err(mismatch(
                format!("{what}: busy bit {bit:#x} of register {offset:#x}"),
                format!("clear within {BUSY_DEADLINE:?}"),
                format!("still set ({v:#x})"),
            ));
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
    expect_eq(
        "interrupt status after acknowledging all",
        read32(dev, regs::IRQ_STATUS)?,
        0,
    )
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
        Ok(Irq {
            dev,
            index,
            efd,
            attached: true,
        })
    }

    /// Waits for the eventfd to be signalled and consumes the signal.
    fn wait(&self, what: &str) -> Result<()> {
        if !readable(self.efd.as_fd(), IRQ_DEADLINE)? {
            return Err(mismatch(
                format!("{what}: IRQ index {}", self.index),
                format!("an interrupt within {IRQ_DEADLINE:?}"),
                "none",
            ));
        }
        self.efd.read().map_err(|e| Error::sys("eventfd read", e))?;
        Ok(())
    }

    /// Fails if the eventfd is signalled within `period`.
    fn expect_quiet(&self, period: Duration, what: &str) -> Result<()> {
        if readable(self.efd.as_fd(), period)? {
            return Err(mismatch(
                format!("{what}: IRQ index {}", self.index),
                format!("no interrupt for {period:?}"),
                "an interrupt",
            ));
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
    dev.set_irqs(&IrqSet {
        index,
        start: 0,
        count: 0,
        action: IrqAction::Trigger,
        data: IrqData::None,
    })
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
            Ok(_) => {
                return Ok(fds[0]
                    .revents()
                    .is_some_and(|r| r.contains(PollFlags::POLLIN)))
            }
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
        Ok(Mapped {
            dev,
            buf: Some(buf),
            mapped: true,
        })
    }

    fn buf(&self) -> Result<&DmaBuffer> {
        self.buf
            .as_ref()
            .ok_or(Error::InvalidArgument("DMA buffer already released"))
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
    let dst =
        u32::try_from(dst).map_err(|_| Error::InvalidArgument("DMA destination above 4 GiB"))?;
    write32(dev, regs::DMA_SRC, src)?;
    write32(dev, regs::DMA_DST, dst)?;
    write32(dev, regs::DMA_COUNT, count)?;
    expect_eq(
        &format!("{what}: DMA source register"),
        read32(dev, regs::DMA_SRC)?,
        src,
    )?;
    expect_eq(
        &format!("{what}: DMA destination register"),
        read32(dev, regs::DMA_DST)?,
        dst,
    )?;
    expect_eq(
        &format!("{what}: DMA count register"),
        read32(dev, regs::DMA_COUNT)?,
        count,
    )?;
    write32(dev, regs::DMA_CMD, cmd as u32)?;
    wait_clear(dev, regs::DMA_CMD, edu::DMA_CMD_START as u32, what)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
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
    expect_eq(
        "config revision ID",
        class_rev & 0xff,
        u32::from(edu::REVISION),
    )?;
    expect_eq("config class code", class_rev >> 8, edu::CLASS_CODE)
}

/// Reads of the liveness register return the inverse of the last write.
fn liveness(dev: &dyn DeviceIo) -> Result<()> {
    for v in [0, 1, 0x1234_5678, 0x8000_0000, 0xa5a5_5a5a, u32::MAX] {
        write32(dev, regs::LIVENESS, v)?;
        let got = read32(dev, regs::LIVENESS)?;
        if got != !v {
            return Err(mismatch(
                format!("liveness: read after writing {v:#010x}"),
                format!("{:#010x}", !v),
                format!("{got:#010x}"),
            ));
        }
    }
    Ok(())
}

/// Factorials, including 0! = 1 and the u32 wrap of 13!.
fn factorial(dev: &dyn DeviceIo) -> Result<()> {
    quiesce(dev)?;
    for (n, want) in [
        (10, 3_628_800),
        (0, 1),
        (1, 1),
        (12, 479_001_600),
        (13, 1_932_053_504),
    ] {
        write32(dev, regs::FACTORIAL, n)?;
        wait_clear(dev, regs::STATUS, edu::STATUS_COMPUTING, "factorial")?;
        expect_eq(
            &format!("factorial of {n}"),
            read32(dev, regs::FACTORIAL)?,
            want,
        )?;
    }
    Ok(())
}

/// Status bit 7 raises the factorial interrupt when the result is ready.
fn factorial_irq(dev: &dyn DeviceIo) -> Result<()> {
    quiesce(dev)?;
    enable_bus_master(dev)?;
    let irq = Irq::attach(dev, pci_irq::MSI)?;
    write32(dev, regs::STATUS, edu::STATUS_IRQ_FACT)?;
    expect_eq(
        "status after setting bit 7",
        read32(dev, regs::STATUS)?,
        edu::STATUS_IRQ_FACT,
    )?;
    write32(dev, regs::FACTORIAL, 5)?;
    irq.wait("factorial_irq")?;
    wait_clear(dev, regs::STATUS, edu::STATUS_COMPUTING, "factorial_irq")?;
    expect_eq("factorial of 5", read32(dev, regs::FACTORIAL)?, 120)?;
    expect_eq(
        "factorial_irq: interrupt status",
        read32(dev, regs::IRQ_STATUS)?,
        edu::FACT_IRQ,
    )?;
    write32(dev, regs::IRQ_ACK, edu::FACT_IRQ)?;
    write32(dev, regs::STATUS, 0)?;
    expect_eq(
        "factorial_irq: interrupt status after ack",
        read32(dev, regs::IRQ_STATUS)?,
        0,
    )?;
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
    expect_eq(
        "interrupt_intx: interrupt status",
        read32(dev, regs::IRQ_STATUS)?,
        value,
    )?;
    write32(dev, regs::IRQ_ACK, value)?;
    expect_eq(
        "interrupt_intx: interrupt status after ack",
        read32(dev, regs::IRQ_STATUS)?,
        0,
    )?;
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
        expect_eq(
            "interrupt_msi: interrupt status",
            read32(dev, regs::IRQ_STATUS)?,
            value,
        )?;
        write32(dev, regs::IRQ_ACK, value)?;
        expect_eq(
            "interrupt_msi: interrupt status after ack",
            read32(dev, regs::IRQ_STATUS)?,
            0,
        )?;
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
    run_dma(
        dev,
        DMA_IOVA,
        edu::DMA_BUF_ADDR + 256,
        256,
        start,
        "DMA RAM->edu (first)",
    )?;
    run_dma(
        dev,
        DMA_IOVA + 256,
        edu::DMA_BUF_ADDR,
        256,
        start,
        "DMA RAM->edu (second)",
    )?;
    run_dma(
        dev,
        edu::DMA_BUF_ADDR,
        DMA_IOVA + 4096,
        512,
        to_ram,
        "DMA edu->RAM",
    )?;
    let mut got = vec![0u8; 512];
    buf.read(4096, &mut got)?;
    let want: Vec<u8> = b.iter().chain(&a).copied().collect();
    if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
        return Err(mismatch(
            format!("dma_roundtrip: byte {i} of the copy"),
            format!("{:#04x}", want[i]),
            format!("{:#04x}", got[i]),
        ));
    }
    expect_eq(
        "dma_roundtrip: interrupt status",
        read32(dev, regs::IRQ_STATUS)?,
        0,
    )
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
    expect_eq(
        "dma_irq: interrupt status",
        read32(dev, regs::IRQ_STATUS)?,
        edu::DMA_IRQ,
    )?;
    write32(dev, regs::IRQ_ACK, edu::DMA_IRQ)?;
    expect_eq(
        "dma_irq: interrupt status after ack",
        read32(dev, regs::IRQ_STATUS)?,
        0,
    )?;
    irq.detach()
}

#[cfg(test)]
mod tests {
    use std::os::fd::{OwnedFd, RawFd};
    use std::sync::Mutex;

    use super::*;
    use crate::caps::{Capabilities, CapabilityRecord};
    use crate::device::{DeviceInfo, DmaMap, IrqInfo, RegionInfo};
    use crate::memory::Mapping;
    use crate::models::edu::Edu;
    use crate::user::server::{DeviceContext, DeviceModel};

    /// Takes our own copy of an fd the caller lends for the duration of a call,
    /// as a vfio-user server receives its own copy through SCM_RIGHTS.
    fn dup_borrowed(raw: RawFd) -> Result<OwnedFd> {
        if raw < 0 {
            return Err(Error::InvalidArgument("negative fd"));
        }
        // SAFETY: DeviceIo lends eventfds and DMA fds for the duration of the
        // call, and we only duplicate it before returning.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        nix::unistd::dup(fd).map_err(|e| Error::sys("dup", e))
    }

    fn signal(fd: &OwnedFd) {
        let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
    }

    /// Test double for a served device: the edu model driven in-process, with
    /// the interrupt and DMA plumbing a vfio-user server would provide
    /// (eventfds, automasked INTx, client memory mapped from the DMA fd).
    struct InProcess {
        state: Mutex<State>,
    }

    struct State {
        edu: Edu,
        ctx: Ctx,
    }

    #[derive(Default)]
    struct Ctx {
        triggers: [Option<OwnedFd>; 5],
        maps: Vec<(u64, Mapping)>,
        intx_asserted: bool,
        intx_masked: bool,
    }

    impl Ctx {
        fn mapping(&self, iova: u64, len: usize) -> Result<(&Mapping, usize)> {
            for (base, m) in &self.maps {
                if let Some(off) = iova
                    .checked_sub(*base)
                    .and_then(|o| usize::try_from(o).ok())
                {
                    if off.checked_add(len).is_some_and(|end| end <= m.len()) {
                        return Ok((m, off));
                    }
                }
            }
            Err(Error::InvalidArgument("IOVA not mapped"))
        }

        fn fire_intx(&mut self) {
            if self.intx_asserted && !self.intx_masked {
                if let Some(fd) = &self.triggers[pci_irq::INTX as usize] {
                    signal(fd);
                    self.intx_masked = true;
                }
            }
        }
    }

    impl DeviceContext for Ctx {
        fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<()> {
            let (m, off) = self.mapping(iova, buf.len())?;
            m.read(off, buf)
        }

        fn dma_write(&mut self, iova: u64, buf: &[u8]) -> Result<()> {
            let (m, off) = self.mapping(iova, buf.len())?;
            m.write(off, buf)
        }

        fn irq_enabled(&self, index: u32, vector: u32) -> bool {
            vector == 0
                && self
                    .triggers
                    .get(index as usize)
                    .is_some_and(Option::is_some)
        }

        fn trigger_irq(&mut self, index: u32, vector: u32) -> bool {
            match self.triggers.get(index as usize) {
                Some(Some(fd)) if vector == 0 => {
                    signal(fd);
                    true
                }
                _ => false,
            }
        }

        fn set_irq_level(&mut self, _index: u32, _vector: u32, asserted: bool) {
            self.intx_asserted = asserted;
            self.fire_intx();
        }
    }

    impl InProcess {
        fn new() -> Self {
            InProcess {
                state: Mutex::new(State {
                    edu: Edu::new(),
                    ctx: Ctx::default(),
                }),
            }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn check_region(&self, index: u32, offset: u64, len: usize, flag: u32) -> Result<()> {
            let info = self.region_info(index)?;
            let end = offset.checked_add(len as u64);
            if info.flags & flag == 0 || end.is_none_or(|e| e > info.size) {
                return Err(Error::InvalidArgument("region access out of range"));
            }
            Ok(())
        }
    }

    /// The test doubles have no capabilities to record.
    static NO_CAPABILITIES: CapabilityRecord = CapabilityRecord::new();

    impl DeviceIo for InProcess {
        fn capability_record(&self) -> &CapabilityRecord {
            &NO_CAPABILITIES
        }

        fn backend_capabilities(&self) -> Capabilities {
            Capabilities::empty()
        }

        fn backend_name(&self) -> &'static str {
            "in-process"
        }

        fn device_info(&self) -> Result<DeviceInfo> {
            Ok(self.lock().edu.device_info())
        }

        fn region_info(&self, index: u32) -> Result<RegionInfo> {
            self.lock()
                .edu
                .region_info(index)
                .ok_or(Error::InvalidArgument("region index"))
        }

        fn irq_info(&self, index: u32) -> Result<IrqInfo> {
            self.lock()
                .edu
                .irq_info(index)
                .ok_or(Error::InvalidArgument("IRQ index"))
        }

        fn set_irqs(&self, set: &IrqSet<'_>) -> Result<()> {
            set.validate()?;
            let info = self.irq_info(set.index)?;
            if set
                .start
                .checked_add(set.count)
                .is_none_or(|e| e > info.count)
            {
                return Err(Error::InvalidArgument("IRQ vectors out of range"));
            }
            let st = &mut *self.lock();
            let i = set.index as usize;
            match (set.action, set.data) {
                (IrqAction::Trigger, IrqData::Eventfds(fds)) => {
                    st.ctx.triggers[i] = match fds.first() {
                        Some(&fd) if fd >= 0 => Some(dup_borrowed(fd)?),
                        _ => None,
                    };
                }
                (IrqAction::Trigger, IrqData::None) if set.count == 0 => {
                    st.ctx.triggers[i] = None;
                    if set.index == pci_irq::INTX {
                        st.ctx.intx_masked = false;
                    }
                }
                (IrqAction::Unmask, IrqData::None) if set.index == pci_irq::INTX => {
                    st.ctx.intx_masked = false;
                    st.ctx.fire_intx();
                }
                _ => return Err(Error::Unsupported("SET_IRQS combination")),
            }
            Ok(())
        }

        fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
            self.check_region(
                index,
                offset,
                data.len(),
                crate::device::VFIO_REGION_INFO_FLAG_READ,
            )?;
            let st = &mut *self.lock();
            st.edu.region_read(&mut st.ctx, index, offset, data)
        }

        fn region_write(&self, index: u32, offset: u64, data: &[u8], _post: bool) -> Result<()> {
            self.check_region(
                index,
                offset,
                data.len(),
                crate::device::VFIO_REGION_INFO_FLAG_WRITE,
            )?;
            let st = &mut *self.lock();
            st.edu.region_write(&mut st.ctx, index, offset, data)
        }

        fn device_feature(&self, _flags: u32, _data: &mut [u8]) -> Result<i32> {
            Err(Error::Unsupported("device feature"))
        }

        fn reset(&self) -> Result<()> {
            let st = &mut *self.lock();
            st.edu.reset(&mut st.ctx)
        }

        unsafe fn dma_map(&self, map: &DmaMap) -> Result<()> {
            // The memory is reached through our own mapping of its fd, never
            // through `vaddr`, so this double needs nothing from the contract.
            let fd = dup_borrowed(map.fd)?;
            let len = usize::try_from(map.size).map_err(|_| Error::InvalidArgument("size"))?;
            let m = Mapping::new(fd.as_fd(), map.offset, len, map.writable)?;
            self.lock().ctx.maps.push((map.iova, m));
            Ok(())
        }

        fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
            let maps = &mut self.lock().ctx.maps;
            let pos = maps
                .iter()
                .position(|(base, m)| *base == iova && m.len() as u64 == size)
                .ok_or(Error::InvalidArgument("no such mapping"))?;
            maps.remove(pos);
            Ok(())
        }
    }

    /// A device that misbehaves in one way, to show the suite notices.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        WrongId,
        WrongVendor,
        LivenessNotInverted,
        FactorialOffByOne,
        IrqStatusReadsZero,
        DmaDestinationShifted,
    }

    struct Faulty {
        inner: InProcess,
        fault: Fault,
    }

    impl DeviceIo for Faulty {
        fn capability_record(&self) -> &CapabilityRecord {
            self.inner.capability_record()
        }
        fn backend_capabilities(&self) -> Capabilities {
            self.inner.backend_capabilities()
        }
        fn backend_name(&self) -> &'static str {
            "faulty"
        }
        fn device_info(&self) -> Result<DeviceInfo> {
            self.inner.device_info()
        }
        fn region_info(&self, index: u32) -> Result<RegionInfo> {
            self.inner.region_info(index)
        }
        fn irq_info(&self, index: u32) -> Result<IrqInfo> {
            self.inner.irq_info(index)
        }
        fn set_irqs(&self, set: &IrqSet<'_>) -> Result<()> {
            self.inner.set_irqs(set)
        }
        fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
            self.inner.region_read(index, offset, data)?;
            let bar0 = index == pci_region::BAR0;
            let hit = match self.fault {
                Fault::WrongId => bar0 && offset == regs::ID,
                Fault::WrongVendor => index == pci_region::CONFIG && offset == 0,
                Fault::LivenessNotInverted => bar0 && offset == regs::LIVENESS,
                Fault::FactorialOffByOne => bar0 && offset == regs::FACTORIAL,
                Fault::IrqStatusReadsZero => {
                    if bar0 && offset == regs::IRQ_STATUS {
                        data.fill(0);
                    }
                    false
                }
                Fault::DmaDestinationShifted => {
                    // Hide the shift from register read-back: only the data shows it.
                    if bar0 && offset == regs::DMA_DST {
                        data[0] = data[0].wrapping_sub(1);
                    }
                    false
                }
            };
            if hit {
                data[0] ^= match self.fault {
                    Fault::LivenessNotInverted => 0xff,
                    _ => 1,
                };
            }
            Ok(())
        }
        fn region_write(&self, index: u32, offset: u64, data: &[u8], post: bool) -> Result<()> {
            if self.fault == Fault::DmaDestinationShifted
                && index == pci_region::BAR0
                && offset == regs::DMA_DST
            {
                let mut v = data.to_vec();
                v[0] = v[0].wrapping_add(1);
                return self.inner.region_write(index, offset, &v, post);
            }
            self.inner.region_write(index, offset, data, post)
        }
        fn device_feature(&self, flags: u32, data: &mut [u8]) -> Result<i32> {
            self.inner.device_feature(flags, data)
        }
        fn reset(&self) -> Result<()> {
            self.inner.reset()
        }
        unsafe fn dma_map(&self, map: &DmaMap) -> Result<()> {
            // SAFETY: the caller's guarantee for `map` is passed on unchanged.
            unsafe { self.inner.dma_map(map) }
        }
        fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
            self.inner.dma_unmap(iova, size)
        }
    }

    #[test]
    fn suite_passes_on_the_edu_model() {
        let dev = InProcess::new();
        let results = run_edu_suite(&dev);
        assert_eq!(results.len(), edu_cases().len());
        for (name, r) in &results {
            assert!(r.is_ok(), "{name}: {}", r.as_ref().unwrap_err());
        }
        // Every mapping was removed and every interrupt detached.
        let st = dev.lock();
        assert!(st.ctx.maps.is_empty());
        assert!(st.ctx.triggers.iter().all(Option::is_none));
    }

    #[test]
    fn suite_passes_after_reset() {
        let dev = InProcess::new();
        write32(&dev, regs::IRQ_RAISE, 0x10).unwrap();
        dev.reset().unwrap();
        assert!(run_edu_suite(&dev).iter().all(|(_, r)| r.is_ok()));
    }

    #[test]
    fn suite_notices_faults() {
        let expectations = [
            (Fault::WrongId, "identify", "identification register"),
            (Fault::WrongVendor, "identify", "vendor ID"),
            (
                Fault::LivenessNotInverted,
                "liveness",
                "liveness: read after writing 0x00000000: expected 0xffffffff, got 0xffffff00",
            ),
            (Fault::FactorialOffByOne, "factorial", "factorial of 10"),
            (
                Fault::IrqStatusReadsZero,
                "interrupt_intx",
                "interrupt status",
            ),
            (
                Fault::IrqStatusReadsZero,
                "interrupt_msi",
                "interrupt status",
            ),
            (Fault::IrqStatusReadsZero, "dma_irq", "interrupt status"),
            (
                Fault::DmaDestinationShifted,
                "dma_roundtrip",
                "byte 0 of the copy",
            ),
        ];
        for (fault, case, text) in expectations {
            let dev = Faulty {
                inner: InProcess::new(),
                fault,
            };
            let run = edu_cases().iter().find(|c| c.name == case).unwrap().run;
            let err = run(&dev).expect_err(case);
            // A wrong answer from the device, not a transport or protocol failure.
            assert!(
                matches!(err, Error::Mismatch { .. }),
                "{fault:?} in {case}: {err:?}"
            );
            assert_eq!(err.errno(), libc::EIO, "{fault:?} in {case}");
            let err = err.to_string();
            assert!(err.contains(text), "{fault:?} in {case}: {err}");
            // Cleanup happened even though the case failed.
            let st = dev.inner.lock();
            assert!(st.ctx.maps.is_empty(), "{fault:?}: mapping left behind");
            assert!(
                st.ctx.triggers.iter().all(Option::is_none),
                "{fault:?}: IRQ left attached"
            );
        }
    }

    #[test]
    fn intx_stuck_high_is_noticed() {
        // A device that never lowers its line re-fires on unmask.
        let dev = InProcess::new();
        let irq = Irq::attach(&dev, pci_irq::INTX).unwrap();
        write32(&dev, regs::IRQ_RAISE, 1).unwrap();
        irq.wait("stuck").unwrap();
        irq.unmask().unwrap();
        assert!(matches!(
            irq.expect_quiet(QUIET_PERIOD, "stuck"),
            Err(Error::Mismatch { .. })
        ));
        write32(&dev, regs::IRQ_ACK, 1).unwrap();
        irq.detach().unwrap();
    }
}
