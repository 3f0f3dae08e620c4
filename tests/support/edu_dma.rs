//! Programming edu's DMA engine from a vfio-user client, for the tests that
//! move data between client memory and the device, over any backend. Include it with
//! `#[path = "support/edu_dma.rs"] mod edu_dma;`.

use vfio_io::device::{DeviceIo, DmaMap};
use vfio_io::memory::DmaBuffer;
use vfio_io::models::edu::{regs, DMA_BUF_ADDR, DMA_CMD_START, DMA_CMD_TO_RAM};

/// Runs one transfer; the model completes it within the write that starts it.
fn edu_dma(c: &dyn DeviceIo, src: u64, dst: u64, len: u64, cmd: u64) {
    let w = |off: u64, v: u64| c.region_write(0, off, &v.to_ne_bytes(), false).unwrap();
    w(regs::DMA_SRC, src);
    w(regs::DMA_DST, dst);
    w(regs::DMA_COUNT, len);
    w(regs::DMA_CMD, cmd);
}

/// Has edu copy `len` bytes of client memory at `iova` into the start of its buffer.
pub fn edu_load(c: &dyn DeviceIo, iova: u64, len: u64) {
    edu_dma(c, iova, DMA_BUF_ADDR, len, DMA_CMD_START);
}

/// Has edu copy the first `len` bytes of its buffer to client memory at `iova`.
pub fn edu_store(c: &dyn DeviceIo, iova: u64, len: u64) {
    edu_dma(c, DMA_BUF_ADDR, iova, len, DMA_CMD_START | DMA_CMD_TO_RAM);
}

/// Has edu copy `len` bytes from client memory at `from` into its buffer and
/// back out to `to`.
pub fn edu_round_trip(c: &dyn DeviceIo, from: u64, to: u64, len: u64) {
    edu_load(c, from, len);
    edu_store(c, to, len);
}

/// Maps `buf` as `map` describes it (two pages at least), has edu copy a
/// pattern from its first page into edu's buffer and back out to its second
/// page, checks the copy, and unmaps.
#[allow(dead_code)] // not every test that includes this file maps memory itself
pub fn mapped_round_trip(c: &dyn DeviceIo, buf: &DmaBuffer, map: &DmaMap) {
    let pattern: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
    buf.write(0, &pattern).unwrap();
    buf.write(0x1000, &[0; 200]).unwrap();
    // SAFETY: `buf` outlives the mapping, which is removed below.
    unsafe { c.dma_map(map).unwrap() };
    edu_round_trip(c, map.iova, map.iova + 0x1000, pattern.len() as u64);
    let mut back = vec![0u8; pattern.len()];
    buf.read(0x1000, &mut back).unwrap();
    c.dma_unmap(map.iova, map.size).unwrap();
    assert_eq!(back, pattern, "edu's DMA round trip");
}
