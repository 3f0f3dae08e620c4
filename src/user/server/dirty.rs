//! The log of the pages the device wrote to client memory while the client
//! has DMA logging started: one bitmap per started range, at the page size
//! of the start. Pure: no I/O, no knowledge of messages.

use crate::dirty::{check_start, page_count, DirtyRange, MAX_TRACKED_PAGES};
use crate::error::{Error, Result};

/// The bitmap of one started range, widened to whole pages.
#[derive(Debug)]
struct Tracked {
    /// First IOVA of the first page.
    start: u64,
    /// One past the last byte of the last page (u128: a range may end at 2^64).
    end: u128,
    bits: Vec<u64>,
}

/// The pages written while logging runs.
#[derive(Debug)]
struct Logging {
    page_shift: u32,
    /// Sorted by `start`, not overlapping.
    ranges: Vec<Tracked>,
}

/// A session's dirty-page log: empty until a start, dropped at a stop.
#[derive(Debug, Default)]
pub struct DirtyLog {
    logging: Option<Logging>,
}

fn busy() -> Error {
    Error::Errno {
        op: "DMA logging already started",
        errno: libc::EBUSY,
    }
}

/// Whether any bit in `lo..=hi` is set.
fn any_set(bits: &[u64], lo: u64, hi: u64) -> bool {
    let (wlo, whi) = ((lo / 64) as usize, (hi / 64) as usize);
    (wlo..=whi).any(|w| {
        let mut m = u64::MAX;
        if w == wlo {
            m &= u64::MAX << (lo % 64);
        }
        if w == whi {
            m &= u64::MAX >> (63 - hi % 64);
        }
        bits[w] & m != 0
    })
}

/// Sets (or clears) every bit in `lo..=hi`.
fn set_bits(bits: &mut [u64], lo: u64, hi: u64, value: bool) {
    let (wlo, whi) = ((lo / 64) as usize, (hi / 64) as usize);
    for (w, word) in bits.iter_mut().enumerate().take(whi + 1).skip(wlo) {
        let mut m = u64::MAX;
        if w == wlo {
            m &= u64::MAX << (lo % 64);
        }
        if w == whi {
            m &= u64::MAX >> (63 - hi % 64);
        }
        if value {
            *word |= m;
        } else {
            *word &= !m;
        }
    }
}

impl DirtyLog {
    /// Whether logging is started.
    #[cfg(test)]
    pub fn is_started(&self) -> bool {
        self.logging.is_some()
    }

    /// Starts logging `ranges` at `page_size`. Ranges are widened to whole
    /// pages; ranges that then share a page are merged. `EINVAL` for a bad
    /// page size, no range, an empty, wrapping or overlapping range; `E2BIG`
    /// for more than [`MAX_RANGES`](crate::dirty::MAX_RANGES) ranges or [`MAX_TRACKED_PAGES`] pages
    /// (checked before any bitmap is allocated); `EBUSY` when started.
    pub fn start(&mut self, page_size: u64, ranges: &[DirtyRange]) -> Result<()> {
        if self.logging.is_some() {
            return Err(busy());
        }
        check_start(page_size, ranges)?;
        let mut sorted: Vec<(u64, u128)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            let end = r.iova as u128 + r.length as u128;
            if r.length == 0 || end > 1u128 << 64 {
                return Err(Error::InvalidArgument("DMA logging range empty or wraps"));
            }
            sorted.push((r.iova, end));
        }
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| (w[1].0 as u128) < w[0].1) {
            return Err(Error::InvalidArgument("DMA logging ranges overlap"));
        }
        let ps = page_size as u128;
        let mut widened: Vec<(u64, u128)> = Vec::with_capacity(sorted.len());
        for (iova, end) in sorted {
            let start = iova & !(page_size - 1);
            let end = end.div_ceil(ps) * ps;
            match widened.last_mut() {
                Some(last) if (start as u128) < last.1 => last.1 = end,
                _ => widened.push((start, end)),
            }
        }
        let mut pages = 0u64;
        for (start, end) in &widened {
            pages += ((end - *start as u128) / ps) as u64;
            if pages > MAX_TRACKED_PAGES {
                return Err(Error::Errno {
                    op: "DMA logging ranges past the most pages a log tracks",
                    errno: libc::E2BIG,
                });
            }
        }
        let page_shift = page_size.trailing_zeros();
        let ranges = widened
            .into_iter()
            .map(|(start, end)| {
                let n = ((end - start as u128) / ps) as u64;
                Tracked {
                    start,
                    end,
                    bits: vec![0; n.div_ceil(64) as usize],
                }
            })
            .collect();
        self.logging = Some(Logging { page_shift, ranges });
        Ok(())
    }

    /// Stops logging and frees the bitmaps.
    pub fn stop(&mut self) {
        self.logging = None;
    }

    /// Logs a device write of `len` bytes at `iova`: every page of a started
    /// range that the write touches. Nothing happens while logging is off.
    pub fn mark(&mut self, iova: u64, len: usize) {
        let Some(l) = &mut self.logging else {
            return;
        };
        if len == 0 {
            return;
        }
        let (a, b) = (iova as u128, iova as u128 + len as u128);
        let first = l.ranges.partition_point(|t| t.end <= a);
        for t in l.ranges[first..].iter_mut() {
            if t.start as u128 >= b {
                break;
            }
            let lo = (a.max(t.start as u128) - t.start as u128) >> l.page_shift;
            let hi = (b.min(t.end) - 1 - t.start as u128) >> l.page_shift;
            set_bits(&mut t.bits, lo as u64, hi as u64, true);
        }
    }

    /// Reads the log of `[iova, iova + length)` at `page_size` into
    /// `bitmap` (its words overwritten: one bit per page, set when the
    /// device wrote any byte of it) and clears the logged pages that lie
    /// wholly inside the range. A logged page only partly inside stays
    /// logged, so it is reported again rather than lost. `EINVAL` when not
    /// started, for a bad page size, an empty or wrapping range, part of it
    /// outside every started range, or a `bitmap` too short.
    pub fn report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<()> {
        let Some(l) = &mut self.logging else {
            return Err(Error::InvalidArgument("DMA logging is not started"));
        };
        let pages = page_count(length, page_size)?;
        let (a, b) = (iova as u128, iova as u128 + length as u128);
        if b > 1u128 << 64 {
            return Err(Error::InvalidArgument("dirty report range wraps"));
        }
        let words = pages.div_ceil(64) as usize;
        let Some(bitmap) = bitmap.get_mut(..words) else {
            return Err(Error::InvalidArgument("dirty bitmap too short"));
        };
        // Started ranges are sorted and disjoint: the range is covered when
        // the ones it overlaps run back to back from `a` to `b`.
        let first = l.ranges.partition_point(|t| t.end <= a);
        let mut covered = a;
        for t in &l.ranges[first..] {
            if covered >= b || t.start as u128 > covered {
                break;
            }
            covered = t.end;
        }
        if covered < b {
            return Err(Error::InvalidArgument(
                "dirty report range outside the started ranges",
            ));
        }
        bitmap.fill(0);
        let shift = l.page_shift;
        let mut next = first;
        for n in 0..pages {
            let pa = a + ((n as u128) << page_size.trailing_zeros());
            let pb = (pa + page_size as u128).min(b);
            while l.ranges[next].end <= pa {
                next += 1;
            }
            let dirty = l.ranges[next..]
                .iter()
                .take_while(|t| (t.start as u128) < pb)
                .any(|t| {
                    let lo = (pa.max(t.start as u128) - t.start as u128) >> shift;
                    let hi = (pb.min(t.end) - 1 - t.start as u128) >> shift;
                    any_set(&t.bits, lo as u64, hi as u64)
                });
            if dirty {
                bitmap[(n / 64) as usize] |= 1 << (n % 64);
            }
        }
        for t in &mut l.ranges[first..] {
            if t.start as u128 >= b {
                break;
            }
            // Logged pages wholly inside [a, b).
            let ps = 1u128 << shift;
            let lo = (a.max(t.start as u128) - t.start as u128).div_ceil(ps);
            let hi = (b.min(t.end) - t.start as u128) / ps;
            if lo < hi {
                set_bits(&mut t.bits, lo as u64, (hi - 1) as u64, false);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirty::MAX_RANGES;

    const P: u64 = 4096;

    fn range(iova: u64, length: u64) -> DirtyRange {
        DirtyRange { iova, length }
    }

    fn started(ranges: &[DirtyRange]) -> DirtyLog {
        let mut d = DirtyLog::default();
        d.start(P, ranges).unwrap();
        d
    }

    fn report(d: &mut DirtyLog, iova: u64, length: u64, ps: u64) -> Vec<u64> {
        let mut b = vec![u64::MAX; crate::dirty::bitmap_words(length, ps).unwrap()];
        d.report(iova, length, ps, &mut b).unwrap();
        b
    }

    #[test]
    fn a_write_is_reported_once_at_its_page() {
        let mut d = started(&[range(0x10_0000, 128 * P)]);
        d.mark(0x10_0000 + 70 * P + 5, 10);
        let b = report(&mut d, 0x10_0000, 128 * P, P);
        assert_eq!(b, vec![0, 1 << 6]);
        assert_eq!(report(&mut d, 0x10_0000, 128 * P, P), vec![0, 0]);
    }

    #[test]
    fn writes_outside_logged_ranges_or_before_start_are_not_logged() {
        let mut d = DirtyLog::default();
        d.mark(0x1000, 8);
        d.start(P, &[range(0x1000, 4 * P)]).unwrap();
        d.mark(0x10_0000, 8);
        d.mark(0x1000 + 4 * P, 8);
        assert_eq!(report(&mut d, 0x1000, 4 * P, P), vec![0]);
    }

    #[test]
    fn a_write_across_pages_and_ranges_marks_each_page() {
        let mut d = started(&[range(0, 2 * P), range(2 * P, 2 * P)]);
        d.mark(P - 1, 2 * P as usize + 2);
        assert_eq!(report(&mut d, 0, 4 * P, P), vec![0b1111]);
    }

    #[test]
    fn reports_at_another_page_size_fold_or_repeat_bits() {
        let mut d = started(&[range(0, 64 * P)]);
        d.mark(5 * P, 1);
        // 16 KiB pages: logged page 5 lies in report page 1.
        assert_eq!(report(&mut d, 0, 64 * P, 4 * P), vec![0b10]);
        let mut d = DirtyLog::default();
        d.start(4 * P, &[range(0, 64 * P)]).unwrap();
        d.mark(5 * P, 1);
        // 4 KiB reports of a 16 KiB log: its four pages all show.
        assert_eq!(report(&mut d, 0, 8 * P, P), vec![0b1111_0000]);
        assert_eq!(report(&mut d, 0, 8 * P, P), vec![0]);
    }

    #[test]
    fn a_partial_report_keeps_a_straddling_page_logged() {
        let mut d = DirtyLog::default();
        d.start(4 * P, &[range(0, 16 * P)]).unwrap();
        d.mark(P, 1);
        assert_eq!(report(&mut d, 0, P, P), vec![1]);
        // The 16 KiB page reaches past the first report: still logged.
        assert_eq!(report(&mut d, 0, 4 * P, 4 * P), vec![1]);
        assert_eq!(report(&mut d, 0, 4 * P, 4 * P), vec![0]);
    }

    #[test]
    fn unaligned_ranges_are_widened_and_merged() {
        let mut d = started(&[range(0x800, 0x400), range(0xc08, 0x800)]);
        d.mark(0x10, 1);
        d.mark(0x1fff, 1);
        assert_eq!(report(&mut d, 0, 2 * P, P), vec![0b11]);
    }

    #[test]
    fn bad_starts_are_refused_before_allocating() {
        let mut d = DirtyLog::default();
        let e = |d: &mut DirtyLog, ps, r: &[DirtyRange]| d.start(ps, r).unwrap_err().errno();
        assert_eq!(e(&mut d, 3000, &[range(0, P)]), libc::EINVAL);
        assert_eq!(e(&mut d, 2048, &[range(0, P)]), libc::EINVAL);
        assert_eq!(e(&mut d, P, &[]), libc::EINVAL);
        assert_eq!(e(&mut d, P, &[range(0, 0)]), libc::EINVAL);
        assert_eq!(e(&mut d, P, &[range(u64::MAX - 10, P)]), libc::EINVAL);
        assert_eq!(e(&mut d, P, &[range(0, 2 * P), range(P, P)]), libc::EINVAL);
        let huge = MAX_TRACKED_PAGES * P;
        assert_eq!(e(&mut d, P, &[range(0, huge + 1)]), libc::E2BIG);
        assert_eq!(e(&mut d, P, &[range(0, u64::MAX)]), libc::E2BIG);
        let many: Vec<_> = (0..=MAX_RANGES as u64).map(|i| range(i * P, P)).collect();
        assert_eq!(e(&mut d, P, &many), libc::E2BIG);
        assert!(!d.is_started());
        // The most pages allowed, and a range ending at 2^64.
        d.start(P, &[range(0, huge)]).unwrap();
        d.stop();
        d.start(P, &[range(u64::MAX - P + 1, P)]).unwrap();
        d.mark(u64::MAX, 1);
        assert_eq!(report(&mut d, u64::MAX - P + 1, P, P), vec![1]);
        assert_eq!(e(&mut d, P, &[range(0, P)]), libc::EBUSY);
    }

    #[test]
    fn bad_reports_are_einval() {
        let mut d = DirtyLog::default();
        let mut b = [0u64; 4];
        assert_eq!(
            d.report(0, P, P, &mut b).unwrap_err().errno(),
            libc::EINVAL,
            "not started"
        );
        d.start(P, &[range(0x10_0000, 128 * P)]).unwrap();
        let mut e = |iova, len, ps| d.report(iova, len, ps, &mut b).unwrap_err().errno();
        assert_eq!(e(0x10_0000 - P, 2 * P, P), libc::EINVAL, "starts before");
        assert_eq!(e(0x10_0000, 129 * P, P), libc::EINVAL, "ends after");
        assert_eq!(e(0x10_0000, P, 1000), libc::EINVAL);
        assert_eq!(e(0x10_0000, P, 1024), libc::EINVAL);
        assert_eq!(e(0x10_0000, 0, P), libc::EINVAL);
        assert_eq!(e(u64::MAX, 2, P), libc::EINVAL);
        let mut short = [0u64; 1];
        let r = d.report(0x10_0000, 65 * P, P, &mut short);
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        d.stop();
        assert_eq!(
            d.report(0x10_0000, P, P, &mut b).unwrap_err().errno(),
            libc::EINVAL,
            "stopped"
        );
    }
}
