//! An emulated MSI-X capability: its configuration space bytes, and the
//! vector table and pending-bit array (PBA) it points to, both in one BAR
//! of their own that the model serves.
//!
//! Layout (PCI Local Bus 3.0, 6.8.2): capability ID 0x11; Message Control
//! holds the table size N - 1 in bits 10:0, Function Mask in bit 14 and
//! MSI-X Enable in bit 15; Table and PBA Offset/BIR registers give a
//! QWORD-aligned offset with the BAR index in bits 2:0. Each table entry
//! is 16 bytes: message address low (bits 1:0 zero) and high, message
//! data, vector control (bit 0: masked, set at reset). The PBA holds one
//! bit per vector in QWORDs.
//!
//! Delivery follows the client's SET_IRQS on `VFIO_PCI_MSIX_IRQ_INDEX`, as
//! with kernel vfio-pci, whose users (QEMU) trap the table themselves: the
//! table here is what a client reads back, and the PBA reads as zero, for
//! no vector is ever held pending by the model.

use crate::error::{Error, Result};

/// The MSI-X capability ID.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Most vectors an MSI-X capability describes (11 bits of table size).
pub const MAX_VECTORS: u32 = 2048;
/// Bytes of one table entry.
pub const ENTRY_LEN: usize = 16;
/// Message Control: MSI-X Enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Message Control: Function Mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector Control: the vector is masked.
pub const VECTOR_MASKED: u8 = 1;
/// Smallest BAR the table and PBA get: a page, so that neither shares one
/// with anything a client could map.
const MIN_BAR_SIZE: u64 = 4096;
/// Writable bits of a table entry, byte by byte: the address's two low
/// bits and all of vector control but the mask bit are read-only zero.
const ENTRY_WMASK: [u8; ENTRY_LEN] = [
    0xfc,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    VECTOR_MASKED,
    0,
    0,
    0,
];

/// An MSI-X table and PBA, in BAR `bir`.
#[derive(Debug, Clone)]
pub struct MsixBar {
    bir: u8,
    vectors: u32,
    table: Vec<u8>,
}

impl MsixBar {
    /// The table and PBA of `vectors` vectors (1..=2048) in BAR `bir` (0..=5),
    /// every vector masked.
    pub fn new(bir: u8, vectors: u32) -> Result<Self> {
        if bir > 5 || !(1..=MAX_VECTORS).contains(&vectors) {
            return Err(Error::InvalidArgument(
                "MSI-X: 1 to 2048 vectors in BAR 0 to 5",
            ));
        }
        let mut bar = MsixBar {
            bir,
            vectors,
            table: vec![0; vectors as usize * ENTRY_LEN],
        };
        bar.reset();
        Ok(bar)
    }

    /// The BAR index holding the table and PBA.
    pub fn bir(&self) -> u8 {
        self.bir
    }

    /// Where the PBA starts in the BAR: right after the table, which
    /// starts at 0 (a multiple of 16, so QWORD aligned).
    pub fn pba_offset(&self) -> u64 {
        self.table.len() as u64
    }

    /// Bytes of the PBA: one bit per vector, in whole QWORDs.
    fn pba_len(&self) -> u64 {
        u64::from(self.vectors.div_ceil(64)) * 8
    }

    /// Size of the BAR: a power of two holding table and PBA, at least a page.
    pub fn bar_size(&self) -> u64 {
        (self.pba_offset() + self.pba_len())
            .next_power_of_two()
            .max(MIN_BAR_SIZE)
    }

    /// The capability's body after its ID and next-pointer bytes (Message
    /// Control, Table Offset/BIR, PBA Offset/BIR) and its writable bits
    /// (Enable and Function Mask), for `PciConfig::add_capability`.
    pub fn capability(&self) -> ([u8; 10], [u8; 2]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&((self.vectors - 1) as u16).to_le_bytes());
        body[2..6].copy_from_slice(&u32::from(self.bir).to_le_bytes());
        // The PBA offset is below 2048 * 16 + 8 * 32 and QWORD aligned.
        let pba = self.pba_offset() as u32 | u32::from(self.bir);
        body[6..10].copy_from_slice(&pba.to_le_bytes());
        let wmask = (CTRL_ENABLE | CTRL_FUNCTION_MASK).to_le_bytes();
        (body, wmask)
    }

    /// Reads `data.len()` bytes at `offset` of the BAR (range checked by the
    /// server): the table as written, the PBA and the rest as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = usize::try_from(at)
                .ok()
                .and_then(|at| self.table.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes `data` at `offset` of the BAR: the writable bits of table
    /// entries change; the PBA and the rest ignore writes.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(at) = usize::try_from(offset.saturating_add(i as u64))
                .ok()
                .filter(|&at| at < self.table.len())
            else {
                continue;
            };
            let m = ENTRY_WMASK[at % ENTRY_LEN];
            self.table[at] = (self.table[at] & !m) | (v & m);
        }
    }

    /// Whether the table masks vector `vector`.
    pub fn masked(&self, vector: u32) -> bool {
        let at = vector as usize * ENTRY_LEN + 12;
        self.table.get(at).is_some_and(|c| c & VECTOR_MASKED != 0)
    }

    /// The table as at reset: zero, every vector masked.
    pub fn reset(&mut self) {
        self.table.fill(0);
        for entry in self.table.chunks_mut(ENTRY_LEN) {
            entry[12] = VECTOR_MASKED;
        }
    }

    /// The table's bytes, for a migration stream.
    pub fn table(&self) -> &[u8] {
        &self.table
    }

    /// Replaces the table with `bytes` (a `table()` of the same layout),
    /// through the writable bits.
    pub fn load_table(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() != self.table.len() {
            return Err(Error::InvalidArgument("MSI-X table of another size"));
        }
        self.write(0, bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_the_vector_count() {
        let one = MsixBar::new(1, 1).unwrap();
        assert_eq!(
            (one.pba_offset(), one.pba_len(), one.bar_size()),
            (16, 8, 4096)
        );
        let many = MsixBar::new(3, 2048).unwrap();
        assert_eq!(many.pba_offset(), 2048 * 16);
        assert_eq!(many.pba_len(), 256);
        assert_eq!(many.bar_size(), 65536);
        let (body, wmask) = many.capability();
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2047);
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 3);
        assert_eq!(
            u32::from_le_bytes(body[6..10].try_into().unwrap()),
            (2048 * 16) | 3
        );
        assert_eq!(u16::from_le_bytes(wmask), 0xc000);
        for bad in [(6, 1), (0, 0), (0, 2049)] {
            assert!(MsixBar::new(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_table_keeps_its_writable_bits_and_the_pba_reads_zero() {
        let mut m = MsixBar::new(0, 70).unwrap();
        assert!((0..70).all(|v| m.masked(v)), "masked at reset");
        let entry = 69 * ENTRY_LEN as u64;
        m.write(entry, &[0xff; 16]);
        let mut back = [0u8; 16];
        m.read(entry, &mut back);
        let mut want = [0xffu8; 16];
        want[0] = 0xfc;
        want[12..].copy_from_slice(&[1, 0, 0, 0]);
        assert_eq!(back, want);
        m.write(entry + 12, &[0]);
        assert!(!m.masked(69) && m.masked(68));

        m.write(m.pba_offset(), &[0xff; 16]);
        let mut pba = [0xaau8; 16];
        m.read(m.pba_offset(), &mut pba);
        assert_eq!(pba, [0; 16], "the PBA is read-only zero");

        let saved = m.table().to_vec();
        m.reset();
        assert!(m.masked(69));
        m.load_table(&saved).unwrap();
        assert!(!m.masked(69));
        assert!(m.load_table(&saved[1..]).is_err());
    }
}
