//! The C entry points of dirty-page tracking (DMA logging).

use std::ffi::c_int;

use vfio_bindings::bindings::vfio::vfio_device_feature_dma_logging_range;

use super::{ret, vfio_io_device, with_device};
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
    let op = |d: &vfio_io_device| {
        if ranges.is_null() || nr_ranges == 0 {
            return -libc::EINVAL;
        }
        if nr_ranges as usize > MAX_RANGES {
            return -libc::E2BIG;
        }
        // SAFETY: per the contract `ranges` holds `nr_ranges` entries, a
        // count bounded just above, and they are only read during the call.
        let raw = unsafe { std::slice::from_raw_parts(ranges, nr_ranges as usize) };
        let ranges: Vec<DirtyRange> = raw
            .iter()
            .map(|r| DirtyRange {
                iova: r.iova,
                length: r.length,
            })
            .collect();
        ret(tracking(d).and_then(|t| t.dirty_start(page_size, &ranges).map(|_| 0)))
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
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
        if bitmap.is_null() {
            return -libc::EINVAL;
        }
        let report = |t: &dyn DirtyTracking| {
            let words = bitmap_words(length, page_size)?;
            // SAFETY: per the contract `bitmap` holds `words` words, at most
            // 2^23 (bitmap_words refuses more pages), written only here.
            let out = unsafe { std::slice::from_raw_parts_mut(bitmap, words) };
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
    let op = |d: &vfio_io_device| ret(tracking(d).and_then(|t| t.dirty_stop().map(|_| 0)));
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}
