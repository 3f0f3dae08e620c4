//! Programming edu's DMA engine from a vfio-user client, for the tests that
//! move data between client memory and the device. Include it with
//! `#[path = "support/edu_dma.rs"] mod edu_dma;`.

use vfio_io::device::DeviceIo;
use vfio_io::edu::{regs, DMA_BUF_ADDR, DMA_CMD_START, DMA_CMD_TO_RAM};
use vfio_io::user::client::Client;

/// Runs one transfer; the model completes it within the write that starts it.
fn edu_dma(c: &Client, src: u64, dst: u64, len: u64, cmd: u64) {
    let w = |off: u64, v: u64| c.region_write(0, off, &v.to_ne_bytes(), false).unwrap();
    w(regs::DMA_SRC, src);
    w(regs::DMA_DST, dst);
    w(regs::DMA_COUNT, len);
    w(regs::DMA_CMD, cmd);
}

/// Has edu copy `len` bytes of client memory at `iova` into the start of its buffer.
pub fn edu_load(c: &Client, iova: u64, len: u64) {
    edu_dma(c, iova, DMA_BUF_ADDR, len, DMA_CMD_START);
}

/// Has edu copy the first `len` bytes of its buffer to client memory at `iova`.
pub fn edu_store(c: &Client, iova: u64, len: u64) {
    edu_dma(c, DMA_BUF_ADDR, iova, len, DMA_CMD_START | DMA_CMD_TO_RAM);
}

/// Has edu copy `len` bytes from client memory at `from` into its buffer and
/// back out to `to`.
pub fn edu_round_trip(c: &Client, from: u64, to: u64, len: u64) {
    edu_load(c, from, len);
    edu_store(c, to, len);
}
