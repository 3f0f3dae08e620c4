//! Dirty-page tracking over vfio-user: DMA_LOGGING_START, _STOP and _REPORT
//! as DEVICE_FEATURE messages, a report larger than one message asked for
//! in parts. The bit is granted at connect when the server's probe of
//! DMA_LOGGING_START succeeds.

use super::Client;
use crate::caps::{Capabilities, CapabilityRecord, Source};
use crate::device::DeviceIo;
use crate::dirty::{bitmap_words, check_start, DirtyRange, DirtyTracking};
use crate::error::{Error, Result};
use crate::user::proto::{self, cmd, DmaLoggingReport};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET,
};

impl Client {
    /// Records DIRTY_TRACKING from the server's answer to a probe of
    /// DMA_LOGGING_START: this library carries the start, report and stop.
    pub(super) fn record_dirty_tracking_probe(&self, rec: &mut CapabilityRecord) {
        let feature = VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
        let flags = VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET | feature;
        let source = Source::FeatureProbe(feature);
        // A probe the server refuses just leaves the bit clear: nothing to log.
        if self.device_feature(flags, &mut []).is_ok() {
            rec.grant(
                Capabilities::DIRTY_TRACKING,
                source,
                "the server offers it; start, report and stop go as DEVICE_FEATURE messages",
            );
        } else {
            rec.withhold(
                Capabilities::DIRTY_TRACKING,
                source,
                "the server refuses the probe",
            );
        }
    }

    /// Sends DEVICE_FEATURE `flags` with `data`, accepting a reply of up to
    /// `reply_data` bytes of data, and hands that data to `f`.
    fn logging_feature<T>(
        &self,
        flags: u32,
        data: &[u8],
        reply_data: usize,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        if !self.caps.mask().contains(Capabilities::DIRTY_TRACKING) {
            return Err(Error::Unsupported("the server offers no DMA logging"));
        }
        let fixed = proto::encode_feature((8 + reply_data) as u32, flags);
        self.inner
            .request(cmd::DEVICE_FEATURE, &[&fixed, data], &[], |r| {
                let (_, got, d) = proto::decode_feature(r.payload)?;
                if got != flags {
                    return Err(Error::Protocol(
                        "DEVICE_FEATURE reply names other flags".into(),
                    ));
                }
                f(d)
            })
    }
}

impl DirtyTracking for Client {
    fn dirty_start(&self, page_size: u64, ranges: &[DirtyRange]) -> Result<()> {
        check_start(page_size, ranges)?;
        let data = proto::encode_dma_logging_start(page_size, ranges);
        let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
        self.logging_feature(flags, &data, data.len(), |_| Ok(()))
    }

    fn dirty_report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<()> {
        let words = bitmap_words(length, page_size)?;
        if iova.checked_add(length - 1).is_none() {
            return Err(Error::InvalidArgument("dirty report range wraps"));
        }
        let bitmap = bitmap
            .get_mut(..words)
            .ok_or(Error::InvalidArgument("dirty bitmap too short"))?;
        let pages = length.div_ceil(page_size);
        // Whole words per message, as many as one message carries.
        let per = (self.max_xfer as u64 / 8).max(1) * 64;
        let mut done = 0u64;
        while done < pages {
            let n = per.min(pages - done);
            let at = done * page_size;
            let part = if done + n == pages {
                length - at
            } else {
                n * page_size
            };
            let out = &mut bitmap[(done / 64) as usize..][..n.div_ceil(64) as usize];
            self.report_part(iova + at, part, page_size, out)?;
            if n % 64 != 0 {
                // Bits past the range are zero, whatever the server sent.
                *out.last_mut().unwrap_or(&mut 0) &= (1u64 << (n % 64)) - 1;
            }
            done += n;
        }
        Ok(())
    }

    fn dirty_stop(&self) -> Result<()> {
        let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP;
        self.logging_feature(flags, &[], 0, |_| Ok(()))
    }
}

impl Client {
    /// One DMA_LOGGING_REPORT whose bitmap fits one message, into `out`
    /// (exactly its words).
    fn report_part(&self, iova: u64, length: u64, page_size: u64, out: &mut [u64]) -> Result<()> {
        let req = DmaLoggingReport {
            iova,
            length,
            page_size,
        };
        let flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT;
        let reply_data = DmaLoggingReport::SIZE + out.len() * 8;
        self.logging_feature(flags, &req.encode(), reply_data, |d| {
            if d.len() != reply_data || DmaLoggingReport::decode(d)? != req {
                return Err(Error::Protocol(
                    "DMA_LOGGING_REPORT reply does not match the request".into(),
                ));
            }
            let bits = d[DmaLoggingReport::SIZE..].chunks_exact(8);
            for (w, b) in out.iter_mut().zip(bits) {
                *w = u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
            }
            Ok(())
        })
    }
}
