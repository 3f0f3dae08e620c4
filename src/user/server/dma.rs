//! The client memory a server may access: DMA_MAP'd ranges, mmapped when the
//! client passed an fd of memory that is safe to map.

use std::os::fd::{AsFd, OwnedFd};

use super::dirty::DirtyLog;
use crate::error::{Error, Result};
use crate::memory::{cannot_shrink, in_memory_file, read_file_at, Mapping};
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
    /// The client's memory, when it passed an fd the server could map.
    pub mapping: Option<ClientMemory>,
}

/// Client memory mmapped by the server, copied in the way its file allows.
#[derive(Debug)]
pub struct ClientMemory {
    /// The server's mapping of the client's fd.
    pub mapping: Mapping,
    /// The client can still truncate the file: a plain access past its new
    /// end would raise SIGBUS in the server, so copies go through the
    /// fault-safe (EFAULT-reporting) path.
    pub may_shrink: bool,
    /// For a file that may shrink, while the session holds few of them: the
    /// client's fd and the file offset of the mapping's first byte. Reads
    /// then `pread` the file (coherent with the mapping through the page
    /// cache, short past the end) at about half `process_vm_readv`'s cost.
    /// Writes stay with `process_vm_writev`: `pwrite` past a truncated end
    /// would grow the client's file instead of failing.
    file: Option<(OwnedFd, u64)>,
}

impl ClientMemory {
    /// Copies client memory at `offset` (within the mapping) into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        if let Some((fd, start)) = &self.file {
            self.mapping.check(offset, buf.len())?;
            read_file_at(fd.as_fd(), start + offset as u64, buf)
        } else if self.may_shrink {
            self.mapping.read_fault_safe(offset, buf)
        } else {
            self.mapping.read(offset, buf)
        }
    }

    /// Copies `buf` into client memory at `offset` (within the mapping).
    pub fn write(&self, offset: usize, buf: &[u8]) -> Result<()> {
        if self.may_shrink {
            self.mapping.write_fault_safe(offset, buf)
        } else {
            self.mapping.write(offset, buf)
        }
    }
}

/// Where an access to client memory goes.
pub enum DmaTarget<'a> {
    /// Through this mapping at this offset.
    Mapped(&'a ClientMemory, usize),
    /// Through DMA_READ/DMA_WRITE messages.
    Message,
}

/// Maps the client's DMA_MAP fd, or answers `None` when its accesses must go
/// through DMA_READ/DMA_WRITE messages instead.
///
/// * A range past the end of a regular file is refused: its pages would
///   raise SIGBUS from the start.
/// * A regular file outside memory (tmpfs, memfd, hugetlbfs) is not mapped: a
///   fault on it may wait on a disk or on a file system the client serves.
/// * A file the client can still shrink (an unsealed memfd, a /dev/shm or
///   hugetlbfs file) is mapped and copied fault-safely (reads by `pread` on
///   the kept fd, writes by `process_vm_writev`), unless that copy is
///   unavailable here (a seccomp filter refusing `process_vm_readv`).
/// * Sealed memfds (QEMU's memory-backend-memfd seals by default) and
///   non-regular files are mapped and copied plainly.
fn map_client_memory(
    fd: OwnedFd,
    offset: u64,
    size: u64,
    writable: bool,
    keep_fd: bool,
) -> Result<Option<ClientMemory>> {
    let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::sys("fstat DMA_MAP fd", e))?;
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    if regular {
        match offset.checked_add(size) {
            Some(end) if end <= st.st_size as u64 => {}
            _ => {
                return Err(Error::InvalidArgument(
                    "DMA_MAP range past the end of the file",
                ))
            }
        }
        if !in_memory_file(fd.as_fd())? {
            log::debug!(target: "vfio_io::server", "DMA_MAP fd not in memory: DMA by messages");
            return Ok(None);
        }
    }
    let len = usize::try_from(size).map_err(|_| Error::InvalidArgument("DMA_MAP size"))?;
    let mapping = Mapping::new(fd.as_fd(), offset, len, writable)?;
    let may_shrink = !cannot_shrink(fd.as_fd())?;
    if may_shrink {
        // One probe copy: EFAULT means the client already shrank the file
        // (later DMAs fail as they should); any other error means the
        // fault-safe copy cannot run in this process.
        match mapping.read_fault_safe(0, &mut [0u8; 1]) {
            Err(e) if e.errno() != libc::EFAULT => {
                log::warn!(target: "vfio_io::server", "fault-safe copy unavailable ({e}): DMA by messages");
                return Ok(None);
            }
            _ => {}
        }
    }
    let file = (may_shrink && keep_fd).then_some((fd, offset));
    Ok(Some(ClientMemory {
        mapping,
        may_shrink,
        file,
    }))
}

/// How many client fds one session keeps open for `pread`: each holds a slot
/// in the server's fd table, which a client mapping many files must not
/// exhaust. Mappings past it read through `process_vm_readv` instead.
const MAX_KEPT_FDS: usize = 32;

impl DmaRegion {
    fn keeps_fd(&self) -> bool {
        self.mapping.as_ref().is_some_and(|m| m.file.is_some())
    }
}

/// The DMA mappings of one client session, and the log of the pages the
/// device writes to them while the client has DMA logging started.
#[derive(Debug, Default)]
pub struct DmaSpace {
    regions: Vec<DmaRegion>,
    max_maps: usize,
    dirty: DirtyLog,
}

impl DmaSpace {
    /// An empty space admitting at most `max_maps` mappings.
    pub fn new(max_maps: usize) -> Self {
        DmaSpace {
            regions: Vec::new(),
            max_maps,
            dirty: DirtyLog::default(),
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
            return Err(Error::Errno {
                op: "DMA_MAP overlaps an existing mapping",
                errno: libc::EEXIST,
            });
        }
        if self.regions.len() >= self.max_maps {
            return Err(Error::Errno {
                op: "DMA_MAP past max_dma_maps",
                errno: libc::ENOSPC,
            });
        }
        let writable = m.flags & DMA_MAP_WRITE != 0;
        let mapping = match fd {
            Some(fd) => {
                let kept = self.regions.iter().filter(|r| r.keeps_fd()).count();
                map_client_memory(fd, m.offset, m.size, writable, kept < MAX_KEPT_FDS)?
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

    /// Drops every mapping, and the dirty log with them.
    pub fn clear(&mut self) {
        self.regions.clear();
        self.dirty.stop();
    }

    /// The dirty-page log.
    pub(super) fn dirty_log(&mut self) -> &mut DirtyLog {
        &mut self.dirty
    }

    /// Finds how to access `[iova, iova + len)`, which must lie in one mapping
    /// with the needed permission.
    pub fn target(&self, iova: u64, len: usize, write: bool) -> Result<DmaTarget<'_>> {
        find_target(&self.regions, iova, len, write)
    }

    /// Finds how to write `[iova, iova + len)`, as `target` does, and logs
    /// the pages as written. They are logged before the copy is made: one
    /// that fails part-way may still have changed some of them, and a page
    /// reported dirty in vain costs a migration one resend, while a page
    /// missed is lost.
    pub fn write_target(&mut self, iova: u64, len: usize) -> Result<DmaTarget<'_>> {
        let t = find_target(&self.regions, iova, len, true)?;
        self.dirty.mark(iova, len);
        Ok(t)
    }
}

/// The mapping `[iova, iova + len)` lies in, checked for the access.
fn find_target(regions: &[DmaRegion], iova: u64, len: usize, write: bool) -> Result<DmaTarget<'_>> {
    let end = iova
        .checked_add(len as u64)
        .ok_or(Error::InvalidArgument("DMA range wraps"))?;
    let r = regions
        .iter()
        .find(|r| iova >= r.iova && end <= r.iova + r.size)
        .ok_or(Error::Errno {
            op: "DMA outside the client's mappings",
            errno: libc::EFAULT,
        })?;
    if (write && !r.writable) || (!write && !r.readable) {
        return Err(Error::Errno {
            op: "DMA against the mapping's permissions",
            errno: libc::EPERM,
        });
    }
    Ok(match &r.mapping {
        Some(m) => DmaTarget::Mapped(m, (iova - r.iova) as usize),
        None => DmaTarget::Message,
    })
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

    fn memfd(len: i64, sealed: bool) -> OwnedFd {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create(c"dma-test", MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&fd, len).unwrap();
        if sealed {
            let seal = nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_SHRINK);
            nix::fcntl::fcntl(&fd, seal).unwrap();
        }
        fd
    }

    fn mapped(s: &DmaSpace, iova: u64) -> &ClientMemory {
        match s.target(iova, 1, false).unwrap() {
            DmaTarget::Mapped(m, _) => m,
            DmaTarget::Message => panic!("{iova:#x} is reached by messages"),
        }
    }

    #[test]
    fn shrinkable_memory_is_mapped_and_copied_fault_safely() {
        let mut s = DmaSpace::new(8);
        let (sealed, loose) = (memfd(0x2000, true), memfd(0x2000, false));
        let loose_dup = loose.try_clone().unwrap();
        s.map(&msg(0x1_0000, 0x2000), Some(sealed)).unwrap();
        s.map(&msg(0x2_0000, 0x2000), Some(loose)).unwrap();
        assert!(!mapped(&s, 0x1_0000).may_shrink);
        let m = mapped(&s, 0x2_0000);
        assert!(m.may_shrink);
        m.write(0x1000, b"dma").unwrap();
        nix::unistd::ftruncate(&loose_dup, 0x1000).unwrap();
        let mut b = [0u8; 3];
        assert_eq!(m.read(0x1000, &mut b).unwrap_err().errno(), libc::EFAULT);
        assert_eq!(m.write(0x1000, &b).unwrap_err().errno(), libc::EFAULT);
        m.read(0, &mut b).unwrap();
        // Past the file's current end is refused at DMA_MAP time.
        let e = s.map(&msg(0x3_0000, 0x2000), Some(memfd(0x1000, false)));
        assert_eq!(e.unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn shrinkable_memory_reads_the_file_at_the_mapping_offset() {
        let mut s = DmaSpace::new(8);
        let fd = memfd(0x3000, false);
        nix::sys::uio::pwrite(&fd, b"second page", 0x1000).unwrap();
        let mut m = msg(0x1_0000, 0x2000);
        m.offset = 0x1000;
        s.map(&m, Some(fd)).unwrap();
        let mem = mapped(&s, 0x1_0000);
        assert!(mem.file.is_some(), "reads go through the kept fd");
        let mut b = [0u8; 11];
        mem.read(0, &mut b).unwrap();
        assert_eq!(&b, b"second page");
        mem.write(0x1ff8, b"tail end").unwrap();
        let mut t = [0u8; 8];
        mem.read(0x1ff8, &mut t).unwrap();
        assert_eq!(&t, b"tail end");
        assert!(mem.read(0x1ffc, &mut t).is_err(), "past the mapping");
    }

    #[test]
    fn a_session_keeps_few_client_fds_and_copies_the_rest_by_process_vm() {
        let mut s = DmaSpace::new(MAX_KEPT_FDS + 2);
        let mut dups = Vec::new();
        for i in 0..=MAX_KEPT_FDS as u64 {
            let fd = memfd(0x2000, false);
            dups.push(fd.try_clone().unwrap());
            s.map(&msg((i + 1) << 20, 0x2000), Some(fd)).unwrap();
        }
        let kept = s.regions.iter().filter(|r| r.keeps_fd()).count();
        assert_eq!(kept, MAX_KEPT_FDS);
        let last = mapped(&s, (MAX_KEPT_FDS as u64 + 1) << 20);
        assert!(last.may_shrink && last.file.is_none());
        last.write(0x1000, b"dma").unwrap();
        let mut b = [0u8; 3];
        last.read(0x1000, &mut b).unwrap();
        assert_eq!(&b, b"dma");
        nix::unistd::ftruncate(dups.last().unwrap(), 0x1000).unwrap();
        assert_eq!(last.read(0x1000, &mut b).unwrap_err().errno(), libc::EFAULT);
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
