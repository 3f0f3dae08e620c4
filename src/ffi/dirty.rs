//! The C entry points of dirty-page tracking (DMA logging).

use std::ffi::c_int;
use std::mem::size_of;

use vfio_bindings::bindings::vfio::{
    vfio_device_feature_dma_logging_control, vfio_device_feature_dma_logging_range,
    vfio_device_feature_dma_logging_report, VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MASK, VFIO_DEVICE_FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET,
};

use super::{ret, vfio_io_device, with_device};
use crate::bytes::{u32_at, u64_at};
use crate::caps::Capabilities;
use crate::dirty::{bitmap_words, DirtyRange, DirtyTracking, MAX_RANGES};
use crate::error::{Error, Result};

/// The device's dirty tracking, or ENOTTY where its backend carries none.
fn tracking(d: &vfio_io_device) -> Result<&dyn DirtyTracking> {
    d.io.dirty_tracking().ok_or(Error::Unsupported(
        "dirty tracking through vfio_io_dirty_* is vfio-user only",
    ))
}

/// Starts logging the pages the device writes in `nr_ranges` IOVA ranges
/// at `ranges` (non-empty, not overlapping; read only during the call), at
/// the granularity `page_size` (a power of two from 4096 to 1 GiB). Pages
/// written before the start are not logged; only device writes are.
/// `dev` must be NULL or a live handle. Returns 0 or -errno: -EINVAL for a
/// NULL `dev` or `ranges`, no range, a bad page size, an empty, wrapping or
/// overlapping range; -E2BIG for more than 256 ranges or more than 2^29
/// pages in all (a bitmap of 64 MiB); -EBUSY when already started;
/// -ENOTTY when the device lacks `VFIO_IO_CAP_DIRTY_TRACKING` over
/// vfio-user, and on kernel VFIO (use `device_feature` there).
#[no_mangle]
pub unsafe extern "C" fn vfio_io_dirty_start(
    dev: *mut vfio_io_device,
    page_size: u64,
    ranges: *const vfio_device_feature_dma_logging_range,
    nr_ranges: u32,
) -> c_int {
    // SAFETY: `ranges` holds `nr_ranges` entries and `dev` is NULL or a
    // live handle, per the contract.
    unsafe { with_device(dev, |d| start(d, page_size, ranges, nr_ranges)) }
}

/// Reads and clears the log of `[iova, iova + length)` into `bitmap`: one
/// bit per `page_size` page (a power of two from 4096 to 1 GiB, which need
/// not be the start's), bit `n % 64` of `bitmap[n / 64]` for the page at
/// `iova + n * page_size`, set when the device wrote any byte of it since
/// the last report. `bitmap` must hold ceil(ceil(length / page_size) / 64)
/// uint64_t words; they are overwritten (bits past the range are 0).
/// Reading clears: a second report of the same range shows only writes made
/// after the first. `dev` must be NULL or a live handle. Returns 0 or -errno:
/// -EINVAL for a NULL `dev` or `bitmap`, logging not started (or stopped),
/// a bad page size, an empty or wrapping range, or one outside the started
/// ranges; -E2BIG for more than 2^29 pages; -ENOTTY as for
/// `vfio_io_dirty_start`. On an error other than -EINVAL and -ENOTTY the log
/// may have lost bits: treat all memory as dirty.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_dirty_report(
    dev: *mut vfio_io_device,
    iova: u64,
    length: u64,
    page_size: u64,
    bitmap: *mut u64,
) -> c_int {
    let op = |d: &vfio_io_device| {
        let report = |t: &dyn DirtyTracking| {
            // SAFETY: `bitmap` holds the words a report of `length` at
            // `page_size` takes, per the contract.
            let out = unsafe { bitmap_out(bitmap, length, page_size) }?;
            t.dirty_report(iova, length, page_size, out).map(|_| 0)
        };
        ret(tracking(d).and_then(report))
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

/// Stops logging and frees the log; a stop while not started succeeds.
/// `dev` must be NULL or a live handle. Returns 0 or -errno: -EINVAL for a
/// NULL `dev`; -ENOTTY as for `vfio_io_dirty_start`.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_dirty_stop(dev: *mut vfio_io_device) -> c_int {
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, stop) }
}

fn stop(d: &vfio_io_device) -> c_int {
    ret(tracking(d).and_then(|t| t.dirty_stop().map(|_| 0)))
}

/// The start of logging behind `vfio_io_dirty_start` and a SET of
/// DMA_LOGGING_START: the same checks and answers.
///
/// # Safety
/// `ranges` must be NULL or hold `nr_ranges` entries, read only here.
unsafe fn start(
    d: &vfio_io_device,
    page_size: u64,
    ranges: *const vfio_device_feature_dma_logging_range,
    nr_ranges: u32,
) -> c_int {
    if ranges.is_null() || nr_ranges == 0 {
        return -libc::EINVAL;
    }
    if nr_ranges as usize > MAX_RANGES {
        return -libc::E2BIG;
    }
    // SAFETY: per this function's contract `ranges` holds `nr_ranges`
    // entries, a count bounded just above, and they are only read here.
    let raw = unsafe { std::slice::from_raw_parts(ranges, nr_ranges as usize) };
    let ranges: Vec<DirtyRange> = raw
        .iter()
        .map(|r| DirtyRange {
            iova: r.iova,
            length: r.length,
        })
        .collect();
    ret(tracking(d).and_then(|t| t.dirty_start(page_size, &ranges).map(|_| 0)))
}

/// The caller's bitmap of a report of `length` bytes at `page_size`: EINVAL
/// for NULL, and the checks of [`bitmap_words`] (at most 2^23 words).
///
/// # Safety
/// `bitmap` must be NULL or hold that many words, used only by the caller
/// until the report returns.
unsafe fn bitmap_out<'a>(bitmap: *mut u64, length: u64, page_size: u64) -> Result<&'a mut [u64]> {
    if bitmap.is_null() {
        return Err(Error::InvalidArgument("NULL dirty bitmap"));
    }
    let words = bitmap_words(length, page_size)?;
    // SAFETY: per this function's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(bitmap, words) })
}

/// Words of the log read per step of a DMA_LOGGING_REPORT (1 MiB, 2^23
/// pages), so merging into the caller's bitmap needs a bounded buffer.
const REPORT_STEP_WORDS: usize = 1 << 17;

/// `VFIO_DEVICE_FEATURE` of DMA logging (START, STOP, REPORT) on a device
/// whose backend carries [`DirtyTracking`], answered as the kernel answers
/// it; `data` is the caller's bytes after the header. `None` for another
/// feature or a backend without it (kernel VFIO passes these to the kernel).
pub(super) fn dma_logging_feature(d: &vfio_io_device, flags: u32, data: &[u8]) -> Option<c_int> {
    let op = match flags & VFIO_DEVICE_FEATURE_MASK {
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => {
            VFIO_DEVICE_FEATURE_SET
        }
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => VFIO_DEVICE_FEATURE_GET,
        _ => return None,
    };
    d.io.dirty_tracking()?;
    let known = VFIO_DEVICE_FEATURE_MASK
        | VFIO_DEVICE_FEATURE_GET
        | VFIO_DEVICE_FEATURE_SET
        | VFIO_DEVICE_FEATURE_PROBE;
    if flags & !known != 0 {
        return Some(-libc::EINVAL);
    }
    if !d.io.capabilities().contains(Capabilities::DIRTY_TRACKING) {
        return Some(-libc::ENOTTY);
    }
    // The kernel's vfio_check_feature: only the feature's own direction,
    // PROBE answers 0 there, and without PROBE that direction is required.
    let dirs = flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET);
    if dirs & !op != 0 {
        return Some(-libc::EINVAL);
    }
    if flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
        return Some(0);
    }
    if dirs == 0 {
        return Some(-libc::EINVAL);
    }
    Some(match flags & VFIO_DEVICE_FEATURE_MASK {
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START => feature_start(d, data),
        VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => stop(d),
        _ => feature_report(d, data),
    })
}

/// SET of DMA_LOGGING_START: `struct vfio_device_feature_dma_logging_control`
/// whose `ranges` names an array of `num_ranges` ranges.
fn feature_start(d: &vfio_io_device, data: &[u8]) -> c_int {
    if data.len() < size_of::<vfio_device_feature_dma_logging_control>() {
        return -libc::EINVAL;
    }
    let (Some(page_size), Some(nr_ranges), Some(ranges)) =
        (u64_at(data, 0), u32_at(data, 8), u64_at(data, 16))
    else {
        return -libc::EINVAL;
    };
    // SAFETY: per VFIO_DEVICE_FEATURE's contract `ranges` is NULL or the
    // address of `num_ranges` ranges, only read during the call.
    unsafe { start(d, page_size, ranges as usize as *const _, nr_ranges) }
}

/// GET of DMA_LOGGING_REPORT: `struct vfio_device_feature_dma_logging_report`
/// whose `bitmap` names the words the report sets bits in. As the UAPI
/// states, bits are only set, never cleared: the log is merged into the
/// caller's bitmap.
fn feature_report(d: &vfio_io_device, data: &[u8]) -> c_int {
    if data.len() < size_of::<vfio_device_feature_dma_logging_report>() {
        return -libc::EINVAL;
    }
    let (Some(iova), Some(length), Some(page_size), Some(bitmap)) = (
        u64_at(data, 0),
        u64_at(data, 8),
        u64_at(data, 16),
        u64_at(data, 24),
    ) else {
        return -libc::EINVAL;
    };
    // As the kernel: a range reaching past the top of the IOVA space.
    if iova.checked_add(length).is_none() {
        return -libc::EOVERFLOW;
    }
    let report = |t: &dyn DirtyTracking| {
        // SAFETY: per VFIO_DEVICE_FEATURE's contract `bitmap` is NULL or
        // holds the words of this report, used only during the call.
        let out = unsafe { bitmap_out(bitmap as usize as *mut u64, length, page_size) }?;
        let step_bytes = REPORT_STEP_WORDS as u64 * 64 * page_size;
        let mut log = vec![0u64; out.len().min(REPORT_STEP_WORDS)];
        for (i, words) in out.chunks_mut(REPORT_STEP_WORDS).enumerate() {
            let at = i as u64 * step_bytes;
            let part = (length - at).min(step_bytes);
            let log = &mut log[..words.len()];
            t.dirty_report(iova + at, part, page_size, log)?;
            for (w, l) in words.iter_mut().zip(log.iter()) {
                *w |= *l;
            }
        }
        Ok(0)
    };
    ret(tracking(d).and_then(report))
}
