//! DEVICE_FEATURE data of DMA logging: DMA_LOGGING_START's page size and
//! ranges (STOP carries none), and DMA_LOGGING_REPORT's range, page size and
//! the bitmap its reply adds at offset 24.

use crate::dirty::DirtyRange;
use crate::error::{Error, Result};

wire_struct! {
    /// The fixed part of DMA_LOGGING_START's data; the ranges follow.
    pub struct DmaLoggingControl("DMA_LOGGING_START", 16 bytes) {
        /// Granularity of the log.
        pub page_size: u64,
        /// Number of [`DmaLoggingRange`]s after this.
        pub num_ranges: u32,
        /// Unused (0).
        pub reserved: u32,
    }
}

wire_struct! {
    /// One range of DMA_LOGGING_START.
    pub struct DmaLoggingRange("DMA logging range", 16 bytes) {
        /// First IOVA.
        pub iova: u64,
        /// Length in bytes.
        pub length: u64,
    }
}

wire_struct! {
    /// DMA_LOGGING_REPORT's data in the request, and in the reply before the
    /// bitmap.
    pub struct DmaLoggingReport("DMA_LOGGING_REPORT", 24 bytes) {
        /// First IOVA reported.
        pub iova: u64,
        /// Length in bytes.
        pub length: u64,
        /// One bit of the bitmap per page of this size.
        pub page_size: u64,
    }
}

/// DMA_LOGGING_START's data: the fixed part and the ranges.
pub fn encode_dma_logging_start(page_size: u64, ranges: &[DirtyRange]) -> Vec<u8> {
    let fixed = DmaLoggingControl {
        page_size,
        num_ranges: ranges.len() as u32,
        reserved: 0,
    };
    let mut b = Vec::with_capacity(DmaLoggingControl::SIZE + ranges.len() * DmaLoggingRange::SIZE);
    b.extend_from_slice(&fixed.encode());
    for r in ranges {
        let r = DmaLoggingRange {
            iova: r.iova,
            length: r.length,
        };
        b.extend_from_slice(&r.encode());
    }
    b
}

/// Decodes DMA_LOGGING_START's data into the page size and the ranges; the
/// data must hold exactly the ranges it counts.
pub fn decode_dma_logging_start(b: &[u8]) -> Result<(u64, Vec<DirtyRange>)> {
    let c = DmaLoggingControl::decode(b)?;
    let rest = &b[DmaLoggingControl::SIZE..];
    if rest.len() != c.num_ranges as usize * DmaLoggingRange::SIZE {
        return Err(Error::Protocol(format!(
            "DMA_LOGGING_START counts {} ranges in {} bytes",
            c.num_ranges,
            rest.len()
        )));
    }
    let ranges = rest
        .chunks_exact(DmaLoggingRange::SIZE)
        .map(|r| {
            DmaLoggingRange::decode(r).map(|r| DirtyRange {
                iova: r.iova,
                length: r.length,
            })
        })
        .collect::<Result<_>>()?;
    Ok((c.page_size, ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_round_trips_and_needs_every_range_it_counts() {
        let ranges = [
            DirtyRange {
                iova: 0x1000,
                length: 0x2000,
            },
            DirtyRange {
                iova: 1 << 40,
                length: 1 << 20,
            },
        ];
        let b = encode_dma_logging_start(4096, &ranges);
        assert_eq!(b.len(), 16 + 2 * 16);
        assert_eq!(&b[8..12], &2u32.to_ne_bytes());
        assert_eq!(&b[16..24], &0x1000u64.to_ne_bytes());
        let (ps, got) = decode_dma_logging_start(&b).unwrap();
        assert_eq!((ps, &got[..]), (4096, &ranges[..]));
        assert!(decode_dma_logging_start(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(decode_dma_logging_start(&extra).is_err());
        // A count the bytes do not hold allocates nothing.
        let mut lie = b[..16].to_vec();
        lie[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(decode_dma_logging_start(&lie).is_err());
        assert!(decode_dma_logging_start(&b[..15]).is_err());
    }

    #[test]
    fn report_is_three_words() {
        let r = DmaLoggingReport {
            iova: 1,
            length: 2,
            page_size: 4096,
        };
        let b = r.encode();
        assert_eq!(&b[16..24], &4096u64.to_ne_bytes());
        assert_eq!(DmaLoggingReport::decode(&b).unwrap(), r);
    }
}
