//! An edu DMA round trip through any backend: client memory -> edu's buffer
//! -> client memory, with the bytes checked.

use vfio_io::device::{pci_region, DeviceIo, DmaMap};
use vfio_io::edu::{regs, DMA_BUF_ADDR, DMA_CMD_START, DMA_CMD_TO_RAM};
use vfio_io::memory::DmaBuffer;

/// Maps `buf` as `map` describes it (at least two pages), has edu copy a
/// pattern from its first page into edu's buffer and back out to its second
/// page, and checks the copy; then unmaps.
pub fn edu_dma_round_trip(dev: &dyn DeviceIo, buf: &DmaBuffer, map: &DmaMap) {
    let pattern: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
    buf.write(0, &pattern).unwrap();
    buf.write(0x1000, &[0; 200]).unwrap();
    // SAFETY: `buf` outlives the mapping, which is removed below.
    unsafe { dev.dma_map(map).unwrap() };
    let w = |off: u64, v: u64| {
        dev.region_write(pci_region::BAR0, off, &v.to_ne_bytes(), false)
            .unwrap()
    };
    let (from, to) = (map.iova, map.iova + 0x1000);
    for (src, dst, cmd) in [
        (from, DMA_BUF_ADDR, DMA_CMD_START),
        (DMA_BUF_ADDR, to, DMA_CMD_START | DMA_CMD_TO_RAM),
    ] {
        w(regs::DMA_SRC, src);
        w(regs::DMA_DST, dst);
        w(regs::DMA_COUNT, pattern.len() as u64);
        w(regs::DMA_CMD, cmd);
    }
    let mut back = vec![0u8; pattern.len()];
    buf.read(0x1000, &mut back).unwrap();
    dev.dma_unmap(map.iova, map.size).unwrap();
    assert_eq!(back, pattern, "edu's DMA round trip");
}
