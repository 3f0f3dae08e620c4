//! Mapped areas: the fast path for region access.
//!
//! Regions (or sparse areas of them) that the server offers with an fd are
//! mmapped at connect; reads and writes that fall entirely inside one area go
//! straight to that memory (through `Mapping::read_reg/write_reg`), with no
//! message at all. This module owns those areas and the lookup of one.

use std::os::fd::AsFd;

use super::Client;
use crate::device::{RegionInfo, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE};
use crate::memory::Mapping;

/// One mmapped area: `[start, end)` of region `region`.
pub(super) struct MappedArea {
    pub(super) region: u32,
    start: u64,
    end: u64,
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) map: Mapping,
}

/// mmaps every area of every region that came with an fd. An area that
/// cannot be mapped, or that the server declared outside its region, is
/// left to messages: mapping is an optimisation, never a requirement.
pub(super) fn map_regions(regions: &[RegionInfo]) -> Vec<MappedArea> {
    let mut mapped = Vec::new();
    for r in regions {
        map_region(r, &mut mapped);
    }
    mapped
}

/// mmaps the areas of one region into `mapped`, if its fd is safe to map.
fn map_region(r: &RegionInfo, mapped: &mut Vec<MappedArea>) {
    let Some(fd) = r.fd.as_ref().filter(|_| r.is_mappable()) else {
        return;
    };
    // A server that could shrink the file under our mapping could
    // raise SIGBUS in this process: such regions go by messages.
    if !crate::memory::cannot_shrink(fd.as_fd()).unwrap_or(false) {
        log::debug!(
            target: "vfio_io::client",
            "region {} not mapped: its fd may shrink; using messages",
            r.index
        );
        return;
    }
    let readable = r.flags & VFIO_REGION_INFO_FLAG_READ != 0;
    let writable = r.flags & VFIO_REGION_INFO_FLAG_WRITE != 0;
    for a in r.mmap_areas() {
        let end = match a.offset.checked_add(a.size) {
            Some(e) if a.size > 0 && e <= r.size => e,
            _ => continue,
        };
        let (Some(off), Ok(len)) = (r.offset.checked_add(a.offset), usize::try_from(a.size)) else {
            continue;
        };
        // Pages past the end of the file would raise SIGBUS when touched.
        if !file_holds(fd.as_fd(), off.saturating_add(a.size)) {
            log::debug!(
                target: "vfio_io::client",
                "region {} area {:#x}+{:#x} lies past the end of its fd; using messages",
                r.index, a.offset, a.size
            );
            continue;
        }
        match Mapping::new(fd.as_fd(), off, len, writable) {
            Ok(map) => mapped.push(MappedArea {
                region: r.index,
                start: a.offset,
                end,
                readable,
                writable,
                map,
            }),
            Err(e) => log::debug!(
                target: "vfio_io::client",
                "region {} area {:#x}+{:#x} not mapped ({e}); using messages",
                r.index, a.offset, a.size
            ),
        }
    }
}

/// Whether the file behind `fd` reaches `end`: always for what is not a
/// regular file (the kernel refuses an mmap it cannot back).
fn file_holds(fd: std::os::fd::BorrowedFd<'_>, end: u64) -> bool {
    match nix::sys::stat::fstat(fd) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => end <= st.st_size as u64,
        Ok(_) => true,
        Err(_) => false,
    }
}

impl Client {
    /// The mapped area holding all of `[offset, offset + len)` of region
    /// `index`, and the offset inside it. A range that straddles an area's
    /// edge gets `None` and goes by message, so the server sees every byte
    /// outside the mapping.
    pub(super) fn mapped_area(
        &self,
        index: u32,
        offset: u64,
        len: usize,
    ) -> Option<(&MappedArea, usize)> {
        let end = offset.checked_add(len as u64)?;
        self.mapped
            .iter()
            .find(|a| a.region == index && offset >= a.start && end <= a.end)
            .map(|a| (a, (offset - a.start) as usize))
    }

    /// Whether some region area is mmapped (see `region_write` for what
    /// that does to posted writes).
    pub fn has_mapped_areas(&self) -> bool {
        !self.mapped.is_empty()
    }
}
