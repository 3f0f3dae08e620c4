//! DEVICE_FEATURE's DMA logging features, answered by the library for every
//! model: START and STOP of the session's dirty log, and REPORT, whose reply
//! carries the bitmap of a range and clears it. Probes of the three succeed
//! for the operation each takes (SET for START/STOP, GET for REPORT).

use super::model::DeviceModel;
use super::session::Session;
use crate::dirty::bitmap_words;
use crate::error::{Error, Result};
use crate::user::proto::{self, DmaLoggingReport};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MASK,
    VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

/// Whether a DEVICE_FEATURE payload names one of the DMA logging features
/// (a payload too short to name any is left to the general handler).
pub(super) fn is_dma_logging(p: &[u8]) -> bool {
    proto::decode_feature(p).is_ok_and(|(_, flags, _)| {
        matches!(
            flags & VFIO_DEVICE_FEATURE_MASK,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START
                | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
                | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
        )
    })
}

/// A malformed feature payload fails the command, not the session: it is
/// the client's argument, like an ioctl's.
fn bad_data(e: Error) -> Error {
    log::debug!(target: "vfio_io::server", "DMA logging data: {e}");
    Error::InvalidArgument("malformed DMA logging data")
}

impl<M: DeviceModel> Session<'_, M> {
    /// DEVICE_FEATURE for DMA_LOGGING_START, _STOP or _REPORT.
    pub(super) fn dma_logging(&mut self, p: &[u8]) -> Result<()> {
        let (_argsz, flags, data) = proto::decode_feature(p)?;
        let feature = flags & VFIO_DEVICE_FEATURE_MASK;
        let takes = if feature == VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT {
            VFIO_DEVICE_FEATURE_GET
        } else {
            VFIO_DEVICE_FEATURE_SET
        };
        let ops = flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET);
        if flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
            if ops & !takes != 0 {
                return Err(Error::InvalidArgument(
                    "DMA logging probed for an operation it lacks",
                ));
            }
            self.st
                .out
                .extend_from_slice(&proto::encode_feature(8, flags));
            return Ok(());
        }
        if ops != takes {
            return Err(Error::InvalidArgument("DMA logging operation"));
        }
        match feature {
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START => {
                let (page_size, ranges) =
                    proto::decode_dma_logging_start(data).map_err(bad_data)?;
                self.st.dma.dirty_log().start(page_size, &ranges)?;
                // The reply is the request: the log runs at the page size asked.
                self.st.out.extend_from_slice(p);
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => {
                self.st.dma.dirty_log().stop();
                self.st.out.extend_from_slice(p);
            }
            _ => self.dma_logging_report(flags, data)?,
        }
        Ok(())
    }

    /// DMA_LOGGING_REPORT: the request's data with the bitmap added. A
    /// bitmap larger than one message may carry (either side's
    /// max_data_xfer_size) is refused with `E2BIG`; the client asks for such
    /// a range in parts.
    fn dma_logging_report(&mut self, flags: u32, data: &[u8]) -> Result<()> {
        let r = DmaLoggingReport::decode(data).map_err(bad_data)?;
        let words = bitmap_words(r.length, r.page_size)?;
        let limit = (self.config.max_data_xfer_size as usize).min(self.st.link.peer_max_xfer);
        if words * 8 > limit {
            return Err(Error::Errno {
                op: "dirty bitmap larger than one message carries",
                errno: libc::E2BIG,
            });
        }
        let mut bitmap = vec![0u64; words];
        self.st
            .dma
            .dirty_log()
            .report(r.iova, r.length, r.page_size, &mut bitmap)?;
        let len = 8 + DmaLoggingReport::SIZE + words * 8;
        self.st.out.reserve(len);
        self.st
            .out
            .extend_from_slice(&proto::encode_feature(len as u32, flags));
        self.st.out.extend_from_slice(&r.encode());
        for w in bitmap {
            self.st.out.extend_from_slice(&w.to_ne_bytes());
        }
        Ok(())
    }
}
