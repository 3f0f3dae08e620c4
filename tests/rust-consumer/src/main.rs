//! Uses vfio-io as a dependency and prints the DMA-BUF capability bit.

use vfio_io::caps::Capabilities;

fn main() {
    let bits = Capabilities::DMA_BUF.bits();
    assert_eq!(bits, 1, "QEMU's DMA-BUF bit is bit 0");
    println!("DMA_BUF bits {bits:#x}");
}
