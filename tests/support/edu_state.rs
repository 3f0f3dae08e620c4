//! edu's state as a migration test compares it: every register a driver
//! reads, config space and the DMA buffer, and an edu with all of them away
//! from power-on. Include it with `#[path = "support/edu_state.rs"] mod edu_state;`.

#[path = "edu_dma.rs"]
mod edu_dma;

use vfio_io::device::{pci_region, DeviceIo};
use vfio_io::memory::DmaBuffer;
use vfio_io::models::edu::{self, regs};

pub fn read32(c: &dyn DeviceIo, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(pci_region::BAR0, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

pub fn write32(c: &dyn DeviceIo, off: u64, v: u32) {
    c.region_write(pci_region::BAR0, off, &v.to_le_bytes(), false)
        .unwrap();
}

fn read64(c: &dyn DeviceIo, off: u64) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(pci_region::BAR0, off, &mut b).unwrap();
    u64::from_le_bytes(b)
}

pub fn config_space(c: &dyn DeviceIo) -> Vec<u8> {
    let mut b = vec![0u8; 256];
    c.region_read(pci_region::CONFIG, 0, &mut b).unwrap();
    b
}

/// Every BAR0 register a driver can read, by offset.
pub fn registers(c: &dyn DeviceIo) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = [
        regs::ID,
        regs::LIVENESS,
        regs::FACTORIAL,
        regs::STATUS,
        regs::IRQ_STATUS,
    ]
    .iter()
    .map(|&o| (o, u64::from(read32(c, o))))
    .collect();
    for o in [regs::DMA_SRC, regs::DMA_DST, regs::DMA_COUNT, regs::DMA_CMD] {
        v.push((o, read64(c, o)));
    }
    v
}

/// edu with every part of its state away from power-on: factorial done,
/// liveness written, DMA buffer filled from client memory, interrupt status
/// set, config space written. Returns the pattern in the DMA buffer.
pub fn busy_edu(c: &dyn DeviceIo) -> Vec<u8> {
    let pattern: Vec<u8> = (0..edu::DMA_BUF_SIZE as u32)
        .map(|i| (i * 31 + 7) as u8)
        .collect();
    let buf = DmaBuffer::new(0x2000).unwrap();
    buf.write(0, &pattern).unwrap();
    let map = buf.dma_map(0x10_0000);
    // SAFETY: `buf` outlives the mapping, removed below.
    unsafe { c.dma_map(&map).unwrap() };
    edu_dma::edu_load(c, map.iova, pattern.len() as u64);
    c.dma_unmap(map.iova, map.size).unwrap();
    write32(c, regs::FACTORIAL, 10);
    write32(c, regs::LIVENESS, 0x1234_5678);
    write32(c, regs::IRQ_RAISE, 0x40);
    c.region_write(pci_region::CONFIG, 0x3c, &[0x0b], false)
        .unwrap();
    c.region_write(pci_region::CONFIG, 0x04, &6u16.to_le_bytes(), false)
        .unwrap();
    pattern
}

/// The DMA buffer's contents, copied out by edu into client memory.
pub fn dma_buffer(c: &dyn DeviceIo) -> Vec<u8> {
    let buf = DmaBuffer::new(0x2000).unwrap();
    let map = buf.dma_map(0x20_0000);
    // SAFETY: `buf` outlives the mapping, removed below.
    unsafe { c.dma_map(&map).unwrap() };
    edu_dma::edu_store(c, map.iova, edu::DMA_BUF_SIZE as u64);
    c.dma_unmap(map.iova, map.size).unwrap();
    let mut out = vec![0u8; edu::DMA_BUF_SIZE];
    buf.read(0, &mut out).unwrap();
    out
}
