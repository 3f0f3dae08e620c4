//! Shared memory for DMA (a memfd mapped into this process) and mappings of
//! device regions.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

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

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::InvalidArgument("access past the end of a mapping")),
        }
    }

    /// Copies out of the mapping. Another process may write it concurrently, so
    /// this is a byte copy of shared memory, never a reference into it.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        // SAFETY: the range was checked to lie inside the live mapping, and `buf`
        // is a distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies into the mapping.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        // SAFETY: the range was checked to lie inside the live mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.as_ptr().add(offset), buf.len())
        };
        Ok(())
    }

    /// Reads a naturally sized register (1, 2, 4 or 8 bytes) with one access, as
    /// MMIO needs.
    pub fn read_reg(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        // SAFETY: in range (checked); volatile so the access width is kept.
        unsafe {
            let p = self.as_ptr().add(offset);
            match buf.len() {
                1 => buf[0] = std::ptr::read_volatile(p),
                2 => buf.copy_from_slice(&std::ptr::read_volatile(p as *const u16).to_ne_bytes()),
                4 => buf.copy_from_slice(&std::ptr::read_volatile(p as *const u32).to_ne_bytes()),
                8 => buf.copy_from_slice(&std::ptr::read_volatile(p as *const u64).to_ne_bytes()),
                _ => std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()),
            }
        }
        Ok(())
    }
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

impl DmaBuffer {
    /// A zeroed buffer of `len` bytes (rounded up to the page size).
    pub fn new(len: usize) -> Result<Self> {
        let page = 4096;
        let len = len
            .checked_add(page - 1)
            .ok_or(Error::InvalidArgument("size"))?
            / page
            * page;
        let fd = memfd_create(
            c"vfio-io-dma",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| Error::sys("memfd_create", e))?;
        nix::unistd::ftruncate(&fd, len as i64).map_err(|e| Error::sys("ftruncate", e))?;
        // Sealed against resizing, a device side that mmaps the buffer can
        // trust it never to shrink under it (which would raise SIGBUS there).
        let seals = nix::fcntl::SealFlag::F_SEAL_SHRINK | nix::fcntl::SealFlag::F_SEAL_GROW;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| Error::sys("F_ADD_SEALS", e))?;
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
