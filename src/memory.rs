//! Shared memory for DMA (a memfd mapped into this process), mappings of
//! device regions and of another process's memory, and what makes an fd safe
//! to map.

use std::io::{IoSlice, IoSliceMut};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::statfs::{fstatfs, HUGETLBFS_MAGIC, TMPFS_MAGIC};
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::getpid;

use crate::device::DmaMap;
use crate::error::{Error, Result};

/// A shared mapping of an fd in this process, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is a plain range of shared memory; access goes through
// volatile copies or raw pointers whose users synchronise among themselves.
unsafe impl Send for Mapping {}
// SAFETY: as above; &Mapping only hands out raw pointers and copying reads/writes.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// mmaps `len` bytes of `fd` at `offset`, shared, with the given protection.
    pub fn new(fd: BorrowedFd<'_>, offset: u64, len: usize, writable: bool) -> Result<Self> {
        let len_nz = NonZeroUsize::new(len).ok_or(Error::InvalidArgument("empty mapping"))?;
        let off = i64::try_from(offset).map_err(|_| Error::InvalidArgument("mmap offset"))?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh shared mapping chosen by the kernel aliases no Rust object.
        let ptr = unsafe { mmap(None, len_nz, prot, MapFlags::MAP_SHARED, fd, off) }
            .map_err(|e| Error::sys("mmap", e))?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true: mappings are non-empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte's address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Whether `[offset, offset + len)` lies inside the mapping.
    pub(crate) fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::InvalidArgument("access past the end of a mapping")),
        }
    }

    /// Copies out of the mapping. Another process may write it concurrently, so
    /// this is a volatile copy of shared memory, never a reference into it: the
    /// compiler may neither assume the bytes stable nor merge, split or elide
    /// the loads. Each aligned 8 bytes is read in one access (see
    /// `VolatileSplit`), in vector-wide loads where the CPU has them.
    /// Volatile accesses are what Rust defines for memory outside its own
    /// allocations, as this mapping is: each returns what the memory holds
    /// at that moment, whoever writes it.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        let src = self.as_ptr().wrapping_add(offset) as *const u8;
        let copy = SharedCopy::<false> {
            src,
            dst: buf.as_mut_ptr(),
        };
        // SAFETY: every address read lies in [offset, offset + buf.len()),
        // checked to be inside the live mapping, and every one written in
        // `buf`; the split aligns each volatile load to its width.
        unsafe { VolatileSplit::new(src as usize, buf.len()).run(&copy) };
        Ok(())
    }

    /// Copies into the mapping, with volatile stores as [`Mapping::read`] loads.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        let dst = self.as_ptr().wrapping_add(offset);
        let copy = SharedCopy::<true> {
            src: buf.as_ptr(),
            dst,
        };
        // SAFETY: as in `read`, with the mapping the written side: in range
        // (checked), each volatile store aligned to its width by the split.
        unsafe { VolatileSplit::new(dst as usize, buf.len()).run(&copy) };
        Ok(())
    }

    /// Copies out of the mapping like [`Mapping::read`], but a page the kernel
    /// cannot supply (past the end of a file truncated under the mapping, an
    /// I/O error) yields `Err` with EFAULT instead of SIGBUS.
    ///
    /// The kernel does the copy (`process_vm_readv` on this very process, which
    /// needs no ptrace permission within one thread group): it pins the pages
    /// and reports a failed fault as EFAULT or a short count, both mapped to
    /// EFAULT here. It costs a system call, so use it only for mappings of
    /// files that can shrink (see [`cannot_shrink`]).
    pub fn read_fault_safe(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        let len = buf.len();
        let remote = [self.remote_iovec(offset, len)];
        let done = process_vm_readv(getpid(), &mut [IoSliceMut::new(buf)], &remote)
            .map_err(|e| Error::sys("fault-safe copy out of a mapping", e))?;
        whole_copy(done, len)
    }

    /// Copies into the mapping, as [`Mapping::read_fault_safe`] copies out of it.
    pub fn write_fault_safe(&self, offset: usize, buf: &[u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        let remote = [self.remote_iovec(offset, buf.len())];
        // Sound without `unsafe` at this call: the kernel writes only inside
        // the mapping (range checked), which no Rust reference covers.
        let done = process_vm_writev(getpid(), &[IoSlice::new(buf)], &remote)
            .map_err(|e| Error::sys("fault-safe copy into a mapping", e))?;
        whole_copy(done, buf.len())
    }

    fn remote_iovec(&self, offset: usize, len: usize) -> RemoteIoVec {
        RemoteIoVec {
            base: self.as_ptr() as usize + offset,
            len,
        }
    }

    /// Reads a naturally sized, aligned register (1, 2, 4 or 8 bytes) with one
    /// access, as MMIO needs. Other sizes and misaligned offsets are copied as
    /// [`Mapping::read`] does.
    pub fn read_reg(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        let p = self.as_ptr().wrapping_add(offset);
        let aligned = |n: usize| (p as usize) % n == 0;
        // SAFETY: in range (checked) and aligned to the access size; volatile
        // so the access width is kept.
        unsafe {
            match buf.len() {
                1 => buf[0] = p.read_volatile(),
                2 if aligned(2) => {
                    buf.copy_from_slice(&p.cast::<u16>().read_volatile().to_ne_bytes())
                }
                4 if aligned(4) => {
                    buf.copy_from_slice(&p.cast::<u32>().read_volatile().to_ne_bytes())
                }
                8 if aligned(8) => {
                    buf.copy_from_slice(&p.cast::<u64>().read_volatile().to_ne_bytes())
                }
                _ => return self.read(offset, buf),
            }
        }
        Ok(())
    }

    /// Writes a naturally sized, aligned register (1, 2, 4 or 8 bytes) with one
    /// store, as MMIO needs. Other sizes and misaligned offsets are copied as
    /// [`Mapping::write`] does.
    pub fn write_reg(&self, offset: usize, buf: &[u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        let p = self.as_ptr().wrapping_add(offset);
        let aligned = |n: usize| (p as usize) % n == 0;
        // SAFETY: as in `read_reg`.
        unsafe {
            match *buf {
                [b] => p.write_volatile(b),
                [a, b] if aligned(2) => p.cast::<u16>().write_volatile(u16::from_ne_bytes([a, b])),
                [a, b, c, d] if aligned(4) => p
                    .cast::<u32>()
                    .write_volatile(u32::from_ne_bytes([a, b, c, d])),
                [a, b, c, d, e, f, g, h] if aligned(8) => p
                    .cast::<u64>()
                    .write_volatile(u64::from_ne_bytes([a, b, c, d, e, f, g, h])),
                _ => return self.write(offset, buf),
            }
        }
        Ok(())
    }
}

/// The widest integer or vector the CPU loads and stores in one instruction
/// without optional features: SSE2 and NEON are part of x86_64 and aarch64.
/// Volatile accesses of it compile to one load or store each, so the copy
/// runs at memcpy's pace; a plain `u64` loop reaches about two thirds of it.
#[cfg(target_arch = "x86_64")]
type Wide = core::arch::x86_64::__m128i;
#[cfg(target_arch = "aarch64")]
type Wide = core::arch::aarch64::uint8x16_t;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
type Wide = u64;
const WIDE: usize = std::mem::size_of::<Wide>();

/// How a volatile copy of `len` bytes at address `addr` splits into aligned
/// accesses: single bytes up to 8-byte alignment, one 8-byte word up to
/// [`Wide`] alignment, [`Wide`] words, then one 8-byte word and single bytes
/// for the tail. Every aligned 8-byte unit of shared memory is thus read or
/// written by one access, at least 8 bytes wide.
#[derive(Debug, PartialEq)]
struct VolatileSplit {
    head_bytes: usize,
    head_word: bool,
    wide: usize,
    tail_word: bool,
    tail_bytes: usize,
}

impl VolatileSplit {
    fn new(addr: usize, len: usize) -> Self {
        let head_bytes = addr.wrapping_neg() % 8;
        if len < head_bytes + 8 {
            // No aligned word fits: single bytes only.
            return VolatileSplit {
                head_bytes: len,
                head_word: false,
                wide: 0,
                tail_word: false,
                tail_bytes: 0,
            };
        }
        let word_addr = addr + head_bytes;
        let head_word = WIDE > 8 && word_addr % WIDE != 0;
        let rest = len - head_bytes - if head_word { 8 } else { 0 };
        let wide = rest / WIDE;
        let rest = rest % WIDE;
        VolatileSplit {
            head_bytes,
            head_word,
            wide,
            tail_word: rest >= 8,
            tail_bytes: rest % 8,
        }
    }

    /// Moves the range, access by access, from its first byte up.
    ///
    /// # Safety
    /// `copy` must be valid for every access at offsets `0..len` from the
    /// address the split was made for, at the widths the split chose.
    unsafe fn run<const INTO_SHARED: bool>(&self, copy: &SharedCopy<INTO_SHARED>) {
        // Every `unit` call below is at the offset and width the split chose
        // (the caller's contract), so meets `unit`'s.
        let mut i = 0;
        for _ in 0..self.head_bytes {
            copy.unit::<u8>(i);
            i += 1;
        }
        if self.head_word {
            copy.unit::<u64>(i);
            i += 8;
        }
        for _ in 0..self.wide {
            copy.unit::<Wide>(i);
            i += WIDE;
        }
        if self.tail_word {
            copy.unit::<u64>(i);
            i += 8;
        }
        for _ in 0..self.tail_bytes {
            copy.unit::<u8>(i);
            i += 1;
        }
    }
}

/// A copy between shared memory and a private buffer: volatile accesses on
/// the shared side (the destination when `INTO_SHARED`, else the source),
/// plain ones on the other.
struct SharedCopy<const INTO_SHARED: bool> {
    src: *const u8,
    dst: *mut u8,
}

impl<const INTO_SHARED: bool> SharedCopy<INTO_SHARED> {
    /// Copies the `T` at byte offset `i`: one volatile access on the shared
    /// side and a plain, possibly unaligned one on the other.
    ///
    /// # Safety
    /// Both sides must be valid for `size_of::<T>()` bytes at `i`, and the
    /// shared side aligned for `T` there.
    unsafe fn unit<T: Copy>(&self, i: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            let (src, dst) = (self.src.add(i).cast::<T>(), self.dst.add(i).cast::<T>());
            if INTO_SHARED {
                dst.write_volatile(src.read_unaligned());
            } else {
                dst.write_unaligned(src.read_volatile());
            }
        }
    }
}

/// A fault-safe copy succeeded only if it moved every byte: the kernel stops
/// at the first page it cannot fault in.
fn whole_copy(done: usize, len: usize) -> Result<()> {
    if done == len {
        Ok(())
    } else {
        Err(Error::Errno {
            op: "fault-safe copy stopped at a page past the end of its file",
            errno: libc::EFAULT,
        })
    }
}

/// Copies `buf.len()` bytes of the file behind `fd` at `offset` with `pread`:
/// what a fault-safe copy out of a shared mapping of that range would read,
/// since both go through the file's page cache. Bytes past the file's end
/// yield `Err` with EFAULT (after the bytes before it were copied), as a
/// truncated mapping does with [`Mapping::read_fault_safe`].
///
/// For in-memory files it is the cheaper fault-safe read: one system call
/// with no page pinning, against `process_vm_readv`'s lookup and pinning.
pub fn read_file_at(fd: BorrowedFd<'_>, offset: u64, buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .and_then(|at| i64::try_from(at).ok())
            .ok_or(Error::InvalidArgument("file offset"))?;
        match nix::sys::uio::pread(fd, &mut buf[done..], at) {
            Ok(0) => return whole_copy(done, buf.len()),
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("pread of client memory", e)),
        }
    }
    Ok(())
}

/// Whether the size of the file behind `fd` can never drop: true for a
/// non-regular file (a device) and for a file sealed with F_SEAL_SHRINK (as
/// QEMU's memory-backend-memfd and [`DmaBuffer`] are). Touching a mapped page
/// past the end of a shrunk file raises SIGBUS, so a mapping of a file that
/// can shrink must be accessed with the fault-safe copies.
pub fn cannot_shrink(fd: BorrowedFd<'_>) -> Result<bool> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| Error::sys("fstat", e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(true);
    }
    // Files that do not support sealing (anything but shmem and hugetlbfs)
    // answer EINVAL: no seals.
    let seals = match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(seals) => seals,
        Err(nix::errno::Errno::EINVAL) => 0,
        Err(e) => return Err(Error::sys("F_GET_SEALS", e)),
    };
    Ok(seals & libc::F_SEAL_SHRINK != 0)
}

/// Whether the file behind `fd` lives in memory: tmpfs (memfds, /dev/shm) or
/// hugetlbfs. Faulting in its pages never waits on a disk, a network or a
/// user-space file system that the fd's owner might control.
pub fn in_memory_file(fd: BorrowedFd<'_>) -> Result<bool> {
    let fs = fstatfs(fd).map_err(|e| Error::sys("fstatfs", e))?;
    Ok([TMPFS_MAGIC, HUGETLBFS_MAGIC].contains(&fs.filesystem_type()))
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// Memory to hand to a device for DMA: a memfd, mapped shared in this process,
/// so it has both the fd (vfio-user, iommufd MAP_FILE) and the address (type1).
///
/// ```
/// use vfio_io::memory::DmaBuffer;
///
/// let buf = DmaBuffer::new(100)?;
/// assert_eq!(buf.len(), 4096); // whole pages
/// buf.write(8, b"edu")?;
/// let mut back = [0u8; 3];
/// buf.read(8, &mut back)?;
/// assert_eq!(&back, b"edu");
/// assert!(buf.read(4095, &mut back).is_err()); // past the end
///
/// // What DeviceIo::dma_map takes: both the address and the fd.
/// let map = buf.dma_map(0x10_0000);
/// assert_eq!((map.iova, map.size), (0x10_0000, 4096));
/// assert!(map.vaddr != 0 && map.fd >= 0 && map.readable && map.writable);
/// # Ok::<(), vfio_io::Error>(())
/// ```
#[derive(Debug)]
pub struct DmaBuffer {
    fd: OwnedFd,
    map: Mapping,
}

/// A zeroed memfd of `len` bytes sealed against resizing: a peer that mmaps
/// it can trust it never to shrink under the mapping (which would raise
/// SIGBUS there), so it is the memory to offer for DMA or as a region's fd.
///
/// ```
/// use vfio_io::memory::{cannot_shrink, sealed_memfd};
/// use std::os::fd::AsFd;
///
/// let fd = sealed_memfd(c"bar2", 0x4000)?;
/// assert!(cannot_shrink(fd.as_fd())?);
/// # Ok::<(), vfio_io::Error>(())
/// ```
pub fn sealed_memfd(name: &std::ffi::CStr, len: usize) -> Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|e| Error::sys("memfd_create", e))?;
    let size = i64::try_from(len).map_err(|_| Error::InvalidArgument("memfd size"))?;
    nix::unistd::ftruncate(&fd, size).map_err(|e| Error::sys("ftruncate", e))?;
    let seals = nix::fcntl::SealFlag::F_SEAL_SHRINK | nix::fcntl::SealFlag::F_SEAL_GROW;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| Error::sys("F_ADD_SEALS", e))?;
    Ok(fd)
}

impl DmaBuffer {
    /// A zeroed buffer of `len` bytes (rounded up to the page size).
    pub fn new(len: usize) -> Result<Self> {
        let page = 4096;
        let len = len
            .checked_add(page - 1)
            .ok_or(Error::InvalidArgument("size"))?
            / page
            * page;
        let fd = sealed_memfd(c"vfio-io-dma", len)?;
        let map = Mapping::new(fd.as_fd(), 0, len, true)?;
        Ok(DmaBuffer { fd, map })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the buffer is empty (never: buffers are at least one page).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The memfd backing the buffer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Copies out of the buffer.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.map.read(offset, buf)
    }

    /// Copies into the buffer.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Result<()> {
        self.map.write(offset, buf)
    }

    /// A read/write [`DmaMap`] of the whole buffer at `iova`.
    pub fn dma_map(&self, iova: u64) -> DmaMap {
        DmaMap {
            iova,
            size: self.len() as u64,
            vaddr: self.map.as_ptr() as u64,
            fd: self.fd.as_raw_fd(),
            offset: 0,
            readable: true,
            writable: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsealed_memfd(len: i64) -> OwnedFd {
        let fd = memfd_create(c"unsealed", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, len).unwrap();
        fd
    }

    #[test]
    fn volatile_copies_round_trip_at_any_alignment_and_length() {
        let buf = DmaBuffer::new(4096).unwrap();
        let data: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for offset in [0, 1, 3, 7, 8, 13, 16, 24] {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 24, 31, 33, 100] {
                buf.write(0, &[0; 128]).unwrap();
                buf.write(offset, &data[..len]).unwrap();
                let mut all = [0u8; 128];
                buf.read(0, &mut all).unwrap();
                let mut want = [0u8; 128];
                want[offset..offset + len].copy_from_slice(&data[..len]);
                assert_eq!(all, want, "offset {offset} len {len}");
                let mut back = vec![0u8; len];
                buf.read(offset, &mut back).unwrap();
                assert_eq!(back, &data[..len], "offset {offset} len {len}");
            }
        }
        assert!(buf.write(4090, &[0; 7]).is_err());
    }

    #[test]
    fn volatile_splits_cover_the_range_with_aligned_accesses() {
        for addr in 0x1000..0x1000 + 2 * WIDE {
            for len in 0..4 * WIDE + 9 {
                let s = VolatileSplit::new(addr, len);
                let word = 8 * (s.head_word as usize + s.tail_word as usize);
                assert_eq!(
                    s.head_bytes + word + s.wide * WIDE + s.tail_bytes,
                    len,
                    "{addr:#x}+{len}: {s:?}"
                );
                let first_word = addr + s.head_bytes;
                assert!(s.head_bytes < 8 || (s.wide == 0 && !s.tail_word), "{s:?}");
                if s.head_word || s.wide > 0 || s.tail_word {
                    assert_eq!(first_word % 8, 0, "{addr:#x}+{len}: {s:?}");
                }
                let first_wide = first_word + 8 * s.head_word as usize;
                if s.wide > 0 {
                    assert_eq!(first_wide % WIDE, 0, "{addr:#x}+{len}: {s:?}");
                }
                assert!(s.tail_bytes < 8, "{s:?}");
            }
        }
    }

    #[test]
    fn register_stores_are_single_naturally_sized_accesses() {
        let fd = unsealed_memfd(4096);
        let map = Mapping::new(fd.as_fd(), 0, 4096, true).unwrap();
        map.write_reg(0x10, &0x1122_3344_5566_7788u64.to_ne_bytes())
            .unwrap();
        map.write_reg(0x20, &0xaabb_ccddu32.to_ne_bytes()).unwrap();
        map.write_reg(0x26, &0xeeffu16.to_ne_bytes()).unwrap();
        map.write_reg(0x29, &[0x42]).unwrap();
        let mut w = [0u8; 8];
        map.read(0x10, &mut w).unwrap();
        assert_eq!(u64::from_ne_bytes(w), 0x1122_3344_5566_7788);
        let mut r4 = [0u8; 4];
        map.read_reg(0x20, &mut r4).unwrap();
        assert_eq!(u32::from_ne_bytes(r4), 0xaabb_ccdd);
        let mut r2 = [0u8; 2];
        map.read_reg(0x26, &mut r2).unwrap();
        assert_eq!(u16::from_ne_bytes(r2), 0xeeff);
        let mut r1 = [0u8; 1];
        map.read_reg(0x29, &mut r1).unwrap();
        assert_eq!(r1, [0x42]);
        // Misaligned and odd sizes still land, as plain volatile copies.
        map.write_reg(0x31, &0x0102_0304u32.to_ne_bytes()).unwrap();
        map.write_reg(0x40, &[9, 8, 7]).unwrap();
        map.read_reg(0x31, &mut r4).unwrap();
        assert_eq!(u32::from_ne_bytes(r4), 0x0102_0304);
        let mut r3 = [0u8; 3];
        map.read_reg(0x40, &mut r3).unwrap();
        assert_eq!(r3, [9, 8, 7]);
        assert!(map.write_reg(4092, &[0; 8]).is_err());
    }

    #[test]
    fn fault_safe_copies_report_efault_past_a_shrunk_end() {
        let fd = unsealed_memfd(2 * 4096);
        let map = Mapping::new(fd.as_fd(), 0, 2 * 4096, true).unwrap();
        map.write_fault_safe(4096, &[7; 64]).unwrap();
        let mut back = [0u8; 64];
        map.read_fault_safe(4096, &mut back).unwrap();
        assert_eq!(back, [7; 64]);
        map.write(4096 - 64, &[5; 64]).unwrap();

        nix::unistd::ftruncate(&fd, 4096).unwrap();
        let errno = |r: Result<()>| r.unwrap_err().errno();
        assert_eq!(
            errno(read_file_at(fd.as_fd(), 4096, &mut back)),
            libc::EFAULT
        );
        let mut straddle = [0u8; 128];
        assert_eq!(
            errno(read_file_at(fd.as_fd(), 4096 - 64, &mut straddle)),
            libc::EFAULT
        );
        assert_eq!(straddle[..64], [5; 64], "the bytes inside the file came");
        assert_eq!(errno(map.read_fault_safe(4096, &mut back)), libc::EFAULT);
        assert_eq!(errno(map.write_fault_safe(4096, &back)), libc::EFAULT);
        // Straddling the new end: the kernel copies the first page only.
        assert_eq!(
            errno(map.read_fault_safe(4096 - 64, &mut straddle)),
            libc::EFAULT
        );
        assert_eq!(
            errno(map.write_fault_safe(4096 - 64, &straddle)),
            libc::EFAULT
        );
        // The page still inside the file is untouched by all this.
        map.write_fault_safe(0, &[3; 16]).unwrap();
        map.read_fault_safe(0, &mut back[..16]).unwrap();
        assert_eq!(back[..16], [3; 16]);
        back.fill(0);
        read_file_at(fd.as_fd(), 0, &mut back[..16]).unwrap();
        assert_eq!(back[..16], [3; 16], "pread sees the mapping's bytes");
        // Grown again, the lost page reads back as zeros.
        nix::unistd::ftruncate(&fd, 2 * 4096).unwrap();
        map.read_fault_safe(4096, &mut back).unwrap();
        assert_eq!(back, [0; 64]);
        assert!(map.read_fault_safe(2 * 4096 - 8, &mut back).is_err());
    }

    #[test]
    fn only_unsealed_regular_files_can_shrink() {
        let buf = DmaBuffer::new(4096).unwrap();
        assert!(cannot_shrink(buf.fd()).unwrap(), "sealed memfd");
        let fd = unsealed_memfd(4096);
        assert!(!cannot_shrink(fd.as_fd()).unwrap(), "unsealed memfd");
        let dir = std::env::temp_dir();
        let file = tempfile_in(&dir);
        assert!(!cannot_shrink(file.as_fd()).unwrap(), "regular file");
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(cannot_shrink(r.as_fd()).unwrap(), "pipe");
    }

    #[test]
    fn memfds_are_in_memory_and_pipes_are_not() {
        let fd = unsealed_memfd(4096);
        assert!(in_memory_file(fd.as_fd()).unwrap());
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(!in_memory_file(r.as_fd()).unwrap());
    }

    /// An unnamed regular file in `dir`, deleted once closed.
    fn tempfile_in(dir: &std::path::Path) -> OwnedFd {
        let path = dir.join(format!("vfio-io-memory-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.into()
    }
}
