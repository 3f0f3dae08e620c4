//! The client memory a server may access: DMA_MAP'd ranges, mmapped when the
//! client passed an fd.

use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, Result};
use crate::memory::Mapping;
use crate::user::proto::{DmaMapMsg, DMA_MAP_READ, DMA_MAP_WRITE};

/// One mapped range.
#[derive(Debug)]
pub struct DmaRegion {
    /// DMA address of the first byte.
    pub iova: u64,
    /// Length.
    pub size: u64,
    /// Server may read.
    pub readable: bool,
    /// Server may write.
    pub writable: bool,
    /// The client's memory, when it passed an fd.
    pub mapping: Option<Mapping>,
}

/// Where an access to client memory goes.
pub enum DmaTarget<'a> {
    /// Through this mapping at this offset.
    Mapped(&'a Mapping, usize),
    /// Through DMA_READ/DMA_WRITE messages.
    Message,
}

/// Whether the server may mmap this fd for DMA. A range past the end of a
/// regular file (memfd, tmpfs, hugetlbfs) is refused: touching those pages
/// raises SIGBUS, which would kill the whole server. A regular file that the
/// client could still shrink later is not mapped either (the same SIGBUS,
/// later): its accesses go through DMA_READ/DMA_WRITE messages instead.
/// Sealed memfds (QEMU's memory-backend-memfd seals by default) are mapped.
fn mappable(fd: &OwnedFd, offset: u64, size: u64) -> Result<bool> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| Error::sys("fstat DMA_MAP fd", e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(true);
    }
    match offset.checked_add(size) {
        Some(end) if end <= st.st_size as u64 => {}
        _ => {
            return Err(Error::InvalidArgument(
                "DMA_MAP range past the end of the file",
            ))
        }
    }
    let seals = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap_or(0);
    Ok(seals & libc::F_SEAL_SHRINK != 0)
}

/// The DMA mappings of one client session.
#[derive(Debug, Default)]
pub struct DmaSpace {
    regions: Vec<DmaRegion>,
    max_maps: usize,
}

impl DmaSpace {
    /// An empty space admitting at most `max_maps` mappings.
    pub fn new(max_maps: usize) -> Self {
        DmaSpace {
            regions: Vec::new(),
            max_maps,
        }
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are no mappings.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Adds a mapping (DMA_MAP). Refuses empty, wrapping, overlapping (EEXIST)
    /// and excess (ENOSPC) mappings, and an fd that cannot be mmapped.
    pub fn map(&mut self, m: &DmaMapMsg, fd: Option<OwnedFd>) -> Result<()> {
        let end = m.address.checked_add(m.size).filter(|_| m.size > 0);
        let Some(end) = end else {
            return Err(Error::InvalidArgument("DMA_MAP range empty or wraps"));
        };
        if m.flags & !(DMA_MAP_READ | DMA_MAP_WRITE) != 0 {
            return Err(Error::InvalidArgument("DMA_MAP flags"));
        }
        if self
            .regions
            .iter()
            .any(|r| m.address < r.iova + r.size && r.iova < end)
        {
            return Err(Error::Sys {
                op: "DMA_MAP overlaps an existing mapping",
                errno: libc::EEXIST,
            });
        }
        if self.regions.len() >= self.max_maps {
            return Err(Error::Sys {
                op: "DMA_MAP past max_dma_maps",
                errno: libc::ENOSPC,
            });
        }
        let writable = m.flags & DMA_MAP_WRITE != 0;
        let mapping = match fd {
            Some(fd) if mappable(&fd, m.offset, m.size)? => {
                let len =
                    usize::try_from(m.size).map_err(|_| Error::InvalidArgument("DMA_MAP size"))?;
                Some(Mapping::new(fd.as_fd(), m.offset, len, writable)?)
            }
            Some(_) => {
                log::debug!(target: "vfio_io::server", "DMA_MAP fd can shrink: DMA by messages");
                None
            }
            None => None,
        };
        self.regions.push(DmaRegion {
            iova: m.address,
            size: m.size,
            readable: m.flags & DMA_MAP_READ != 0,
            writable,
            mapping,
        });
        Ok(())
    }

    /// Removes the mapping with exactly this address and size (DMA_UNMAP).
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        // VFIO type1 semantics, which QEMU's vfio-user client relies on: the
        // range removes every mapping lying wholly inside it, and a range that
        // holds none is not an error. Behind a guest vIOMMU (intel-iommu with
        // caching-mode) QEMU forwards each IOTLB invalidation as an unmap,
        // often of large ranges with nothing mapped (0xff000000+16 MiB,
        // 4 GiB+4 GiB); refusing those made QEMU print an error per
        // invalidation. Splitting a mapping is still refused, as type1 does.
        // u128: QEMU's last invalidation range ends exactly at 2^64.
        let (start, end) = (iova as u128, iova as u128 + size as u128);
        if end > 1u128 << 64 {
            return Err(Error::InvalidArgument("DMA_UNMAP range wraps"));
        }
        let bounds = |r: &DmaRegion| (r.iova as u128, r.iova as u128 + r.size as u128);
        let splits = self.regions.iter().any(|r| {
            let (a, b) = bounds(r);
            a < end && start < b && (a < start || b > end)
        });
        if splits {
            return Err(Error::InvalidArgument("DMA_UNMAP would split a mapping"));
        }
        self.regions.retain(|r| {
            let (a, b) = bounds(r);
            !(a >= start && b <= end)
        });
        Ok(())
    }

    /// Drops every mapping.
    pub fn clear(&mut self) {
        self.regions.clear();
    }

    /// Finds how to access `[iova, iova + len)`, which must lie in one mapping
    /// with the needed permission.
    pub fn target(&self, iova: u64, len: usize, write: bool) -> Result<DmaTarget<'_>> {
        let end = iova
            .checked_add(len as u64)
            .ok_or(Error::InvalidArgument("DMA range wraps"))?;
        let r = self
            .regions
            .iter()
            .find(|r| iova >= r.iova && end <= r.iova + r.size)
            .ok_or(Error::Sys {
                op: "DMA outside the client's mappings",
                errno: libc::EFAULT,
            })?;
        if (write && !r.writable) || (!write && !r.readable) {
            return Err(Error::Sys {
                op: "DMA against the mapping's permissions",
                errno: libc::EPERM,
            });
        }
        Ok(match &r.mapping {
            Some(m) => DmaTarget::Mapped(m, (iova - r.iova) as usize),
            None => DmaTarget::Message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(address: u64, size: u64) -> DmaMapMsg {
        DmaMapMsg {
            argsz: 32,
            flags: DMA_MAP_READ | DMA_MAP_WRITE,
            offset: 0,
            address,
            size,
        }
    }

    #[test]
    fn overlap_wrap_and_limit_are_refused() {
        let mut s = DmaSpace::new(2);
        s.map(&msg(0x1000, 0x1000), None).unwrap();
        assert_eq!(
            s.map(&msg(0x1800, 0x1000), None).unwrap_err().errno(),
            libc::EEXIST
        );
        assert_eq!(
            s.map(&msg(u64::MAX - 10, 0x1000), None)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            s.map(&msg(0x5000, 0), None).unwrap_err().errno(),
            libc::EINVAL
        );
        s.map(&msg(0x2000, 0x1000), None).unwrap();
        assert_eq!(
            s.map(&msg(0x9000, 0x1000), None).unwrap_err().errno(),
            libc::ENOSPC
        );
    }

    #[test]
    fn access_outside_mappings_faults_and_unmap_takes_whole_mappings() {
        let mut s = DmaSpace::new(8);
        s.map(&msg(0x1000, 0x1000), None).unwrap();
        assert!(matches!(
            s.target(0x1800, 0x100, false),
            Ok(DmaTarget::Message)
        ));
        assert_eq!(
            s.target(0x1f00, 0x200, false).err().unwrap().errno(),
            libc::EFAULT
        );
        assert_eq!(
            s.target(u64::MAX, 2, false).err().unwrap().errno(),
            libc::EINVAL
        );
        assert_eq!(s.unmap(0x1000, 0x800).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(s.unmap(0x800, 0x1000).unwrap_err().errno(), libc::EINVAL);
        // Nothing mapped there: fine, as with VFIO type1.
        s.unmap(0x10_0000, 0x1000).unwrap();
        assert!(!s.is_empty());
        s.unmap(0x1000, 0x1000).unwrap();
        assert!(s.is_empty());
        // One range takes every mapping inside it.
        s.map(&msg(0x1000, 0x1000), None).unwrap();
        s.map(&msg(0x3000, 0x1000), None).unwrap();
        s.unmap(0, 0x1_0000).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.unmap(u64::MAX, 2).unwrap_err().errno(), libc::EINVAL);
        // A range reaching exactly the top of the address space is valid.
        s.unmap(1 << 63, 1 << 63).unwrap();
    }
}
