//! Dirty-page tracking (DMA logging): the device logs the pages of client
//! memory it writes, and the VMM reads and clears that log while it copies
//! memory during a live migration.
//!
//! [`DirtyTracking`] is the one API for every backend; a backend that carries
//! it hands it out through [`DeviceIo::dirty_tracking`](crate::device::DeviceIo::dirty_tracking).
//! The limits below bound what a start may ask for, so neither side of a
//! vfio-user connection can make the other allocate without limit.

use crate::error::{Error, Result};

/// Smallest page size a log can be started or reported at.
pub const MIN_PAGE_SIZE: u64 = 4096;

/// Largest page size a log can be started or reported at (1 GiB).
pub const MAX_PAGE_SIZE: u64 = 1 << 30;

/// Most IOVA ranges one start may name (as many as fit in a 4 KiB page,
/// the least the kernel's `DMA_LOGGING_START` guarantees).
pub const MAX_RANGES: usize = 256;

/// Most pages one log may cover, over all its ranges: 2^29 pages, a bitmap
/// of 64 MiB, covering 2 TiB of memory at 4 KiB pages (more at larger
/// pages). A start asking for more is refused with `E2BIG` before anything
/// is allocated; a report of more pages than this is refused the same way.
pub const MAX_TRACKED_PAGES: u64 = 1 << 29;

/// One IOVA range to log (`struct vfio_device_feature_dma_logging_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyRange {
    /// First IOVA of the range.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Dirty-page tracking on a device.
///
/// Only writes by the device are logged. A report of a range sets one bit
/// per page of the report's page size (bit `n % 64` of word `n / 64` for the
/// page at `iova + n * page_size`) and clears what it read, so each write
/// is reported once.
pub trait DirtyTracking {
    /// Starts logging writes to `ranges` (non-empty, at most [`MAX_RANGES`],
    /// not overlapping) at the granularity `page_size` (a power of two in
    /// [[`MIN_PAGE_SIZE`], [`MAX_PAGE_SIZE`]]). Pages written before the
    /// start are not in the log. `EINVAL` for a bad page size or range,
    /// `E2BIG` past [`MAX_TRACKED_PAGES`], `EBUSY` while already started.
    fn dirty_start(&self, page_size: u64, ranges: &[DirtyRange]) -> Result<()>;

    /// Copies the log of `[iova, iova + length)` at `page_size` into
    /// `bitmap`, which must hold at least [`bitmap_words`]`(length,
    /// page_size)` words; those words are overwritten (bits past the range
    /// are zero) and the words after them left alone. The pages reported are
    /// cleared in the log. `EINVAL` when logging is not started, the range
    /// lies outside the started ranges, or the page size is bad.
    fn dirty_report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<()>;

    /// Stops logging and drops the log; a stop while not started succeeds.
    fn dirty_stop(&self) -> Result<()>;
}

/// Checks a page size for a start or a report: a power of two in
/// [[`MIN_PAGE_SIZE`], [`MAX_PAGE_SIZE`]].
pub fn check_page_size(page_size: u64) -> Result<()> {
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(Error::InvalidArgument(
            "dirty page size is not a power of two in [4 KiB, 1 GiB]",
        ));
    }
    Ok(())
}

/// Checks what a start can be checked for without the log: the page size,
/// and at least one and at most [`MAX_RANGES`] ranges (`E2BIG` past it).
pub fn check_start(page_size: u64, ranges: &[DirtyRange]) -> Result<()> {
    check_page_size(page_size)?;
    if ranges.is_empty() {
        return Err(Error::InvalidArgument("DMA logging start names no range"));
    }
    if ranges.len() > MAX_RANGES {
        return Err(Error::Errno {
            op: "more DMA logging ranges than one start may name",
            errno: libc::E2BIG,
        });
    }
    Ok(())
}

/// Pages of `page_size` that `length` bytes from a page boundary span (the
/// last one may be partial).
pub fn page_count(length: u64, page_size: u64) -> Result<u64> {
    check_page_size(page_size)?;
    if length == 0 {
        return Err(Error::InvalidArgument("dirty range is empty"));
    }
    Ok(length.div_ceil(page_size))
}

/// How many `u64` words the bitmap of a report of `length` bytes at
/// `page_size` takes. Checks the page size, refuses an empty range
/// (`EINVAL`) and one of more than [`MAX_TRACKED_PAGES`] pages (`E2BIG`).
pub fn bitmap_words(length: u64, page_size: u64) -> Result<usize> {
    let pages = page_count(length, page_size)?;
    if pages > MAX_TRACKED_PAGES {
        return Err(Error::Errno {
            op: "dirty report larger than the most pages a log tracks",
            errno: libc::E2BIG,
        });
    }
    Ok(pages.div_ceil(64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_powers_of_two_in_bounds() {
        for ok in [4096, 8192, 2 << 20, 1 << 30] {
            check_page_size(ok).unwrap();
        }
        for bad in [0, 1, 2048, 4095, 4097, 12288, 2 << 30, u64::MAX] {
            assert_eq!(check_page_size(bad).unwrap_err().errno(), libc::EINVAL);
        }
    }

    #[test]
    fn bitmap_words_round_up_and_are_bounded() {
        assert_eq!(bitmap_words(1, 4096).unwrap(), 1);
        assert_eq!(bitmap_words(64 * 4096, 4096).unwrap(), 1);
        assert_eq!(bitmap_words(64 * 4096 + 1, 4096).unwrap(), 2);
        assert_eq!(bitmap_words(0, 4096).unwrap_err().errno(), libc::EINVAL);
        let most = MAX_TRACKED_PAGES * 4096;
        assert_eq!(
            bitmap_words(most, 4096).unwrap(),
            (MAX_TRACKED_PAGES / 64) as usize
        );
        assert_eq!(
            bitmap_words(most + 1, 4096).unwrap_err().errno(),
            libc::E2BIG
        );
        assert_eq!(
            bitmap_words(u64::MAX, 4096).unwrap_err().errno(),
            libc::E2BIG
        );
    }
}
