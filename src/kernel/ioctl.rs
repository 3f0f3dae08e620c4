//! Every ioctl the kernel backend issues, and the iommufd UAPI structs that
//! vfio-bindings does not carry.
//!
//! Keeping them in one module keeps the `unsafe` surface to the six methods
//! of [`Linux`], one per kind of argument: nothing or an integer, a struct
//! whose size field is set from its real size, a byte buffer whose argsz is
//! its real length (with or without a new fd coming back), an int through a
//! pointer, and a device name. The public wrappers pair each request with the
//! one argument type it expects, so no caller can hand a request the wrong
//! kind of memory. Under `cfg(test)` the wrappers talk to `mock_kernel`
//! instead, which is safe Rust.

use std::any::Any;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::ioctl::ioctl_num_type as Req;
use vfio_bindings::bindings::vfio as uapi;

use crate::error::{Error, Result};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: VFIO passes its arguments without size or
/// direction encoded in the number (the size lives in each struct's argsz).
const fn vfio(n: u32) -> Req {
    nix::request_code_none!(uapi::VFIO_TYPE, uapi::VFIO_BASE + n)
}

/// `_IO(IOMMUFD_TYPE, cmd)`; iommufd shares VFIO's type byte ';'.
const fn iommufd(cmd: u32) -> Req {
    nix::request_code_none!(IOMMUFD_TYPE, cmd)
}

/// `VFIO_GET_API_VERSION`.
pub const VFIO_GET_API_VERSION: Req = vfio(0);
/// `VFIO_CHECK_EXTENSION`.
pub const VFIO_CHECK_EXTENSION: Req = vfio(1);
/// `VFIO_SET_IOMMU`.
pub const VFIO_SET_IOMMU: Req = vfio(2);
/// `VFIO_GROUP_GET_STATUS`.
pub const VFIO_GROUP_GET_STATUS: Req = vfio(3);
/// `VFIO_GROUP_SET_CONTAINER`.
pub const VFIO_GROUP_SET_CONTAINER: Req = vfio(4);
/// `VFIO_GROUP_GET_DEVICE_FD`.
pub const VFIO_GROUP_GET_DEVICE_FD: Req = vfio(6);
/// `VFIO_DEVICE_GET_INFO`.
pub const VFIO_DEVICE_GET_INFO: Req = vfio(7);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub const VFIO_DEVICE_GET_REGION_INFO: Req = vfio(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub const VFIO_DEVICE_GET_IRQ_INFO: Req = vfio(9);
/// `VFIO_DEVICE_SET_IRQS`.
pub const VFIO_DEVICE_SET_IRQS: Req = vfio(10);
/// `VFIO_DEVICE_RESET`.
pub const VFIO_DEVICE_RESET: Req = vfio(11);
/// `VFIO_IOMMU_MAP_DMA` (container; shares its number with a device ioctl).
pub const VFIO_IOMMU_MAP_DMA: Req = vfio(13);
/// `VFIO_IOMMU_UNMAP_DMA` (container).
pub const VFIO_IOMMU_UNMAP_DMA: Req = vfio(14);
/// `VFIO_DEVICE_FEATURE`.
pub const VFIO_DEVICE_FEATURE: Req = vfio(17);
/// `VFIO_DEVICE_BIND_IOMMUFD`.
pub const VFIO_DEVICE_BIND_IOMMUFD: Req = vfio(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: Req = vfio(19);

/// `IOMMUFD_TYPE`.
const IOMMUFD_TYPE: u8 = b';';
/// `IOMMU_DESTROY`.
pub const IOMMU_DESTROY: Req = iommufd(0x80);
/// `IOMMU_IOAS_ALLOC`.
pub const IOMMU_IOAS_ALLOC: Req = iommufd(0x81);
/// `IOMMU_IOAS_MAP`.
pub const IOMMU_IOAS_MAP: Req = iommufd(0x85);
/// `IOMMU_IOAS_UNMAP`.
pub const IOMMU_IOAS_UNMAP: Req = iommufd(0x86);
/// `IOMMU_IOAS_MAP_FILE`.
pub const IOMMU_IOAS_MAP_FILE: Req = iommufd(0x8f);

/// `IOMMU_IOAS_MAP_FIXED_IOVA`: map at the given IOVA instead of choosing one.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
/// `IOMMU_IOAS_MAP_WRITEABLE`.
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
/// `IOMMU_IOAS_MAP_READABLE`.
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// `struct iommu_destroy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuDestroy {
    /// sizeof(struct iommu_destroy).
    pub size: u32,
    /// Object to destroy.
    pub id: u32,
}

/// `struct iommu_ioas_alloc`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasAlloc {
    /// sizeof(struct iommu_ioas_alloc).
    pub size: u32,
    /// Must be 0.
    pub flags: u32,
    /// The new IOAS's id.
    pub out_ioas_id: u32,
}

/// `struct iommu_ioas_map`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasMap {
    /// sizeof(struct iommu_ioas_map).
    pub size: u32,
    /// `IOMMU_IOAS_MAP_*`.
    pub flags: u32,
    /// Target IOAS.
    pub ioas_id: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Host virtual address of the memory.
    pub user_va: u64,
    /// Length in bytes.
    pub length: u64,
    /// The IOVA (input with FIXED_IOVA).
    pub iova: u64,
}

/// `struct iommu_ioas_map_file`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasMapFile {
    /// sizeof(struct iommu_ioas_map_file).
    pub size: u32,
    /// `IOMMU_IOAS_MAP_*`.
    pub flags: u32,
    /// Target IOAS.
    pub ioas_id: u32,
    /// The memfd to map.
    pub fd: i32,
    /// Offset in the file.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// The IOVA (input with FIXED_IOVA).
    pub iova: u64,
}

/// `struct iommu_ioas_unmap`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasUnmap {
    /// sizeof(struct iommu_ioas_unmap).
    pub size: u32,
    /// Target IOAS.
    pub ioas_id: u32,
    /// First IOVA.
    pub iova: u64,
    /// Length in; bytes unmapped out.
    pub length: u64,
}

// The kernel checks `size` against these exact layouts; a mismatch would be
// read as a different (older or newer) struct version.
const _: () = assert!(std::mem::size_of::<IommuDestroy>() == 8);
const _: () = assert!(std::mem::size_of::<IommuIoasAlloc>() == 12);
const _: () = assert!(std::mem::size_of::<IommuIoasMap>() == 40);
const _: () = assert!(std::mem::size_of::<IommuIoasMapFile>() == 40);
const _: () = assert!(std::mem::size_of::<IommuIoasUnmap>() == 24);

/// A fixed-size UAPI struct whose first u32 is its own size (`argsz`/`size`).
pub(super) trait SizedArg: Any + Send {
    /// Sets the size field to `size_of::<Self>()`.
    fn set_size(&mut self);
    /// The size field as it stands, which the mock kernel checks.
    #[cfg(test)]
    fn size(&self) -> u32;
    /// A copy, for the record the mock kernel keeps (not every binding
    /// derives `Copy`).
    #[cfg(test)]
    fn duplicate(&self) -> Self;
}

macro_rules! sized_arg {
    ($($t:ty => $field:ident),* $(,)?) => {
        $(impl SizedArg for $t {
            fn set_size(&mut self) {
                self.$field = std::mem::size_of::<Self>() as u32;
            }
            #[cfg(test)]
            fn size(&self) -> u32 {
                self.$field
            }
            #[cfg(test)]
            fn duplicate(&self) -> Self {
                *self
            }
        })*
    };
}

sized_arg!(
    uapi::vfio_group_status => argsz,
    uapi::vfio_device_info => argsz,
    uapi::vfio_irq_info => argsz,
    uapi::vfio_iommu_type1_dma_map => argsz,
    uapi::vfio_device_bind_iommufd => argsz,
    uapi::vfio_device_attach_iommufd_pt => argsz,
    IommuDestroy => size,
    IommuIoasAlloc => size,
    IommuIoasMap => size,
    IommuIoasMapFile => size,
    IommuIoasUnmap => size,
);

// Its trailing flexible array keeps the binding from deriving Copy.
impl SizedArg for uapi::vfio_iommu_type1_dma_unmap {
    fn set_size(&mut self) {
        self.argsz = std::mem::size_of::<Self>() as u32;
    }
    #[cfg(test)]
    fn size(&self) -> u32 {
        self.argsz
    }
    #[cfg(test)]
    fn duplicate(&self) -> Self {
        uapi::vfio_iommu_type1_dma_unmap {
            argsz: self.argsz,
            flags: self.flags,
            iova: self.iova,
            size: self.size,
            data: Default::default(),
        }
    }
}

/// What the kernel answers one request: its non-negative return, or an errno.
pub(super) type Answer<T> = std::result::Result<T, Errno>;

/// The kernel's side of each kind of request. The public wrappers below build
/// every argument and name every operation, then hand the request to
/// [`Active`]: [`Linux`], which issues the ioctl, or under `cfg(test)` the
/// scripted stand-in in `mock_kernel`, so that the logic above this trait runs
/// in unit tests on any machine.
pub(super) trait Kernel {
    /// A request whose argument is an integer passed by value, or nothing.
    fn val(fd: BorrowedFd<'_>, req: Req, val: libc::c_ulong) -> Answer<i32>;
    /// A request on a fixed-size struct whose size field is already set.
    fn sized<T: SizedArg>(fd: BorrowedFd<'_>, req: Req, arg: &mut T) -> Answer<i32>;
    /// A request on a header and its data in `buf`, whose argsz already says
    /// `buf.len()`.
    fn bytes(fd: BorrowedFd<'_>, req: Req, buf: &mut [u8]) -> Answer<i32>;
    /// As [`Kernel::bytes`], for a request that installs a new fd and returns
    /// it; `None` when the request returned 0 instead.
    fn bytes_new_fd(fd: BorrowedFd<'_>, req: Req, buf: &mut [u8]) -> Answer<Option<OwnedFd>>;
    /// `VFIO_GROUP_SET_CONTAINER`, whose argument is an int behind a pointer.
    fn set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> Answer<()>;
    /// `VFIO_GROUP_GET_DEVICE_FD`, whose argument is a device name.
    fn get_device_fd(group: BorrowedFd<'_>, name: &CStr) -> Answer<OwnedFd>;
}

/// The kernel itself.
#[cfg_attr(test, allow(dead_code))]
struct Linux;

fn check(ret: libc::c_int) -> Answer<i32> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

impl Kernel for Linux {
    fn val(fd: BorrowedFd<'_>, req: Req, val: libc::c_ulong) -> Answer<i32> {
        // SAFETY: only called with requests that take their argument by value
        // (or ignore it), so the kernel dereferences no memory of ours.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), req, val) })
    }

    fn sized<T: SizedArg>(fd: BorrowedFd<'_>, req: Req, arg: &mut T) -> Answer<i32> {
        // SAFETY: `arg` is a live, exclusively borrowed T whose size field
        // io_struct (the only caller) set to size_of::<T>(), and each wrapper
        // pairs `req` with the struct it expects, so the kernel reads and
        // writes only inside `arg`.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) })
    }

    fn bytes(fd: BorrowedFd<'_>, req: Req, buf: &mut [u8]) -> Answer<i32> {
        // SAFETY: io_bytes (the only caller) set argsz to the buffer's length,
        // so the kernel (which bounds its copies by argsz for every request
        // passed here) stays inside `buf`. The kernel copies with
        // copy_from_user/copy_to_user, which need no alignment.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), req, buf.as_mut_ptr()) })
    }

    fn bytes_new_fd(fd: BorrowedFd<'_>, req: Req, buf: &mut [u8]) -> Answer<Option<OwnedFd>> {
        let ret = Self::bytes(fd, req, buf)?;
        // SAFETY: a positive return of a request that installs a new fd in
        // this process's table (the DMA_BUF feature) is that fd; nothing else
        // knows it, so it is ours to own and close.
        Ok((ret > 0).then(|| unsafe { OwnedFd::from_raw_fd(ret) }))
    }

    fn set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> Answer<()> {
        let mut raw: RawFd = container.as_raw_fd();
        // SAFETY: this request reads one int through the pointer, which points
        // at a live local.
        check(unsafe {
            libc::ioctl(
                group.as_raw_fd(),
                VFIO_GROUP_SET_CONTAINER,
                &mut raw as *mut RawFd,
            )
        })
        .map(drop)
    }

    fn get_device_fd(group: BorrowedFd<'_>, name: &CStr) -> Answer<OwnedFd> {
        // SAFETY: this request reads a NUL-terminated string, which `name` is.
        let ret = check(unsafe {
            libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr())
        })?;
        // SAFETY: GET_DEVICE_FD returns a new fd in this process's table;
        // nothing else knows it, so it is ours to own and close.
        Ok(unsafe { OwnedFd::from_raw_fd(ret) })
    }
}

/// Where the wrappers send their requests.
#[cfg(not(test))]
type Active = Linux;
#[cfg(test)]
type Active = super::mock_kernel::MockKernel;

/// An ioctl whose argument is an integer passed by value, or nothing.
fn io_val(fd: BorrowedFd<'_>, op: &'static str, req: Req, val: libc::c_ulong) -> Result<i32> {
    Active::val(fd, req, val).map_err(|e| Error::sys(op, e))
}

/// An ioctl on a fixed-size struct that starts with its own size.
fn io_struct<T: SizedArg>(
    fd: BorrowedFd<'_>,
    op: &'static str,
    req: Req,
    arg: &mut T,
) -> Result<i32> {
    arg.set_size();
    Active::sized(fd, req, arg).map_err(|e| Error::sys(op, e))
}

/// Sets argsz of a variable-length argument (a header followed by data) to
/// the buffer's length, refusing buffers that cannot hold a header.
fn set_argsz(buf: &mut [u8]) -> Result<()> {
    let argsz =
        u32::try_from(buf.len()).map_err(|_| Error::InvalidArgument("ioctl argument too large"))?;
    if buf.len() < 8 {
        return Err(Error::InvalidArgument("ioctl argument too small"));
    }
    buf[..4].copy_from_slice(&argsz.to_ne_bytes());
    Ok(())
}

/// An ioctl on a variable-length argument held in a byte buffer.
fn io_bytes(fd: BorrowedFd<'_>, op: &'static str, req: Req, buf: &mut [u8]) -> Result<i32> {
    set_argsz(buf)?;
    Active::bytes(fd, req, buf).map_err(|e| Error::sys(op, e))
}

/// `VFIO_GET_API_VERSION`.
pub fn get_api_version(container: BorrowedFd<'_>) -> Result<i32> {
    io_val(container, "VFIO_GET_API_VERSION", VFIO_GET_API_VERSION, 0)
}

/// `VFIO_CHECK_EXTENSION`: whether the container supports `ext`.
pub fn check_extension(container: BorrowedFd<'_>, ext: u32) -> Result<bool> {
    Ok(io_val(
        container,
        "VFIO_CHECK_EXTENSION",
        VFIO_CHECK_EXTENSION,
        ext.into(),
    )? > 0)
}

/// `VFIO_SET_IOMMU`.
pub fn set_iommu(container: BorrowedFd<'_>, iommu_type: u32) -> Result<()> {
    io_val(
        container,
        "VFIO_SET_IOMMU",
        VFIO_SET_IOMMU,
        iommu_type.into(),
    )
    .map(drop)
}

/// `VFIO_GROUP_GET_STATUS`: the group's `VFIO_GROUP_FLAGS_*`.
pub fn group_status(group: BorrowedFd<'_>) -> Result<u32> {
    let mut st = uapi::vfio_group_status::default();
    io_struct(
        group,
        "VFIO_GROUP_GET_STATUS",
        VFIO_GROUP_GET_STATUS,
        &mut st,
    )?;
    Ok(st.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`.
pub fn group_set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> Result<()> {
    Active::set_container(group, container).map_err(|e| Error::sys("VFIO_GROUP_SET_CONTAINER", e))
}

/// `VFIO_GROUP_GET_DEVICE_FD`.
pub fn group_get_device_fd(group: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd> {
    Active::get_device_fd(group, name).map_err(|e| Error::sys("VFIO_GROUP_GET_DEVICE_FD", e))
}

/// `VFIO_DEVICE_GET_INFO`.
pub fn device_info(dev: BorrowedFd<'_>) -> Result<uapi::vfio_device_info> {
    let mut info = uapi::vfio_device_info::default();
    io_struct(dev, "VFIO_DEVICE_GET_INFO", VFIO_DEVICE_GET_INFO, &mut info)?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO` into `buf` (a `vfio_region_info` with `index`
/// set, followed by room for capabilities).
pub fn region_info(dev: BorrowedFd<'_>, buf: &mut [u8]) -> Result<()> {
    io_bytes(
        dev,
        "VFIO_DEVICE_GET_REGION_INFO",
        VFIO_DEVICE_GET_REGION_INFO,
        buf,
    )
    .map(drop)
}

/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub fn irq_info(dev: BorrowedFd<'_>, index: u32) -> Result<uapi::vfio_irq_info> {
    let mut info = uapi::vfio_irq_info {
        index,
        ..Default::default()
    };
    io_struct(
        dev,
        "VFIO_DEVICE_GET_IRQ_INFO",
        VFIO_DEVICE_GET_IRQ_INFO,
        &mut info,
    )?;
    Ok(info)
}

/// `VFIO_DEVICE_SET_IRQS` with a `vfio_irq_set` and its data in `buf`.
pub fn set_irqs(dev: BorrowedFd<'_>, buf: &mut [u8]) -> Result<()> {
    io_bytes(dev, "VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS, buf).map(drop)
}

/// `VFIO_DEVICE_RESET`.
pub fn device_reset(dev: BorrowedFd<'_>) -> Result<()> {
    io_val(dev, "VFIO_DEVICE_RESET", VFIO_DEVICE_RESET, 0).map(drop)
}

/// `VFIO_DEVICE_FEATURE` with a `vfio_device_feature` and its payload in `buf`.
/// Returns what the kernel returns (an fd for features that create one, which
/// the caller then owns).
pub fn device_feature(dev: BorrowedFd<'_>, buf: &mut [u8]) -> Result<i32> {
    io_bytes(dev, "VFIO_DEVICE_FEATURE", VFIO_DEVICE_FEATURE, buf)
}

/// `VFIO_DEVICE_FEATURE` for a feature that returns a new fd (DMA_BUF).
pub fn device_feature_fd(dev: BorrowedFd<'_>, buf: &mut [u8]) -> Result<OwnedFd> {
    set_argsz(buf)?;
    match Active::bytes_new_fd(dev, VFIO_DEVICE_FEATURE, buf) {
        Ok(Some(fd)) => Ok(fd),
        // A GET of an fd-returning feature that returns 0 gave no fd: treat
        // it as the kernel not doing what was asked rather than owning fd 0.
        Ok(None) => Err(Error::Errno {
            op: "VFIO_DEVICE_FEATURE returned no fd",
            errno: libc::EIO,
        }),
        Err(e) => Err(Error::sys("VFIO_DEVICE_FEATURE", e)),
    }
}

/// `VFIO_DEVICE_FEATURE` MIG_DEVICE_STATE, `op` being GET or SET, with
/// `state` as the requested state (ignored by GET). Returns the
/// `vfio_device_feature_mig_state` the kernel wrote back: the state and, for
/// a SET whose arc has data, the data fd, which the caller then owns.
pub fn mig_device_state(
    dev: BorrowedFd<'_>,
    op: u32,
    state: u32,
) -> Result<(u32, Option<OwnedFd>)> {
    let mut buf = [0u8; 16];
    buf[4..8].copy_from_slice(&(op | uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE).to_ne_bytes());
    buf[8..12].copy_from_slice(&state.to_ne_bytes());
    buf[12..16].copy_from_slice(&(-1i32).to_ne_bytes());
    io_bytes(
        dev,
        "VFIO_DEVICE_FEATURE MIG_DEVICE_STATE",
        VFIO_DEVICE_FEATURE,
        &mut buf,
    )?;
    let state = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let fd = i32::from_ne_bytes([buf[12], buf[13], buf[14], buf[15]]);
    let set = op & uapi::VFIO_DEVICE_FEATURE_SET != 0;
    // SAFETY: after a successful SET, a data_fd other than -1 is a new fd the
    // kernel installed in this process's table for this call; nothing else
    // knows it, so it is ours to own and close.
    let fd = (set && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
    Ok((state, fd))
}

/// `VFIO_IOMMU_MAP_DMA`.
pub fn iommu_map_dma(
    container: BorrowedFd<'_>,
    map: &mut uapi::vfio_iommu_type1_dma_map,
) -> Result<()> {
    io_struct(container, "VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA, map).map(drop)
}

/// `VFIO_IOMMU_UNMAP_DMA`; the kernel writes back the size it unmapped.
pub fn iommu_unmap_dma(
    container: BorrowedFd<'_>,
    unmap: &mut uapi::vfio_iommu_type1_dma_unmap,
) -> Result<()> {
    io_struct(
        container,
        "VFIO_IOMMU_UNMAP_DMA",
        VFIO_IOMMU_UNMAP_DMA,
        unmap,
    )
    .map(drop)
}

/// `VFIO_DEVICE_BIND_IOMMUFD`: returns the device's id inside the iommufd.
pub fn bind_iommufd(dev: BorrowedFd<'_>, iommufd: BorrowedFd<'_>) -> Result<u32> {
    let mut bind = uapi::vfio_device_bind_iommufd {
        iommufd: iommufd.as_raw_fd(),
        ..Default::default()
    };
    io_struct(
        dev,
        "VFIO_DEVICE_BIND_IOMMUFD",
        VFIO_DEVICE_BIND_IOMMUFD,
        &mut bind,
    )?;
    Ok(bind.out_devid)
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub fn attach_iommufd_pt(dev: BorrowedFd<'_>, pt_id: u32) -> Result<()> {
    let mut at = uapi::vfio_device_attach_iommufd_pt {
        pt_id,
        ..Default::default()
    };
    io_struct(
        dev,
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        VFIO_DEVICE_ATTACH_IOMMUFD_PT,
        &mut at,
    )
    .map(drop)
}

/// `IOMMU_IOAS_ALLOC`: returns the new IOAS id.
pub fn ioas_alloc(iommufd: BorrowedFd<'_>) -> Result<u32> {
    let mut a = IommuIoasAlloc::default();
    io_struct(iommufd, "IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC, &mut a)?;
    Ok(a.out_ioas_id)
}

/// `IOMMU_IOAS_MAP`.
pub fn ioas_map(iommufd: BorrowedFd<'_>, map: &mut IommuIoasMap) -> Result<()> {
    io_struct(iommufd, "IOMMU_IOAS_MAP", IOMMU_IOAS_MAP, map).map(drop)
}

/// `IOMMU_IOAS_MAP_FILE`.
pub fn ioas_map_file(iommufd: BorrowedFd<'_>, map: &mut IommuIoasMapFile) -> Result<()> {
    io_struct(iommufd, "IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE, map).map(drop)
}

/// `IOMMU_IOAS_UNMAP`; the kernel writes back the length it unmapped.
pub fn ioas_unmap(iommufd: BorrowedFd<'_>, unmap: &mut IommuIoasUnmap) -> Result<()> {
    io_struct(iommufd, "IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP, unmap).map(drop)
}

/// `IOMMU_DESTROY`.
pub fn destroy(iommufd: BorrowedFd<'_>, id: u32) -> Result<()> {
    let mut d = IommuDestroy {
        id,
        ..Default::default()
    };
    io_struct(iommufd, "IOMMU_DESTROY", IOMMU_DESTROY, &mut d).map(drop)
}

#[cfg(test)]
// The request type is c_ulong on glibc but c_int on musl: the casts are only
// redundant on some targets.
#[allow(clippy::unnecessary_cast)]
mod tests {
    use super::*;

    #[test]
    fn vfio_numbers_match_the_uapi() {
        assert_eq!(VFIO_GET_API_VERSION as u64, 0x3b64);
        assert_eq!(VFIO_CHECK_EXTENSION as u64, 0x3b65);
        assert_eq!(VFIO_SET_IOMMU as u64, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS as u64, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER as u64, 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD as u64, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_INFO as u64, 0x3b6b);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO as u64, 0x3b6c);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO as u64, 0x3b6d);
        assert_eq!(VFIO_DEVICE_SET_IRQS as u64, 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET as u64, 0x3b6f);
        assert_eq!(VFIO_IOMMU_MAP_DMA as u64, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA as u64, 0x3b72);
        assert_eq!(VFIO_DEVICE_FEATURE as u64, 0x3b75);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD as u64, 0x3b76);
        assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT as u64, 0x3b77);
    }

    #[test]
    fn iommufd_numbers_match_the_uapi() {
        assert_eq!(IOMMU_DESTROY as u64, 0x3b80);
        assert_eq!(IOMMU_IOAS_ALLOC as u64, 0x3b81);
        assert_eq!(IOMMU_IOAS_MAP as u64, 0x3b85);
        assert_eq!(IOMMU_IOAS_UNMAP as u64, 0x3b86);
        assert_eq!(IOMMU_IOAS_MAP_FILE as u64, 0x3b8f);
    }

    #[test]
    fn sized_args_fill_their_own_size() {
        let mut m = IommuIoasMap::default();
        m.set_size();
        assert_eq!(m.size, 40);
        let mut i = uapi::vfio_irq_info::default();
        i.set_size();
        assert_eq!(i.argsz, 16);
    }

    /// The real path, on a file that is no VFIO object: the kernel's ENOTTY
    /// comes back from every kind of request.
    #[test]
    fn the_kernel_path_returns_the_kernels_errno() {
        use std::os::fd::AsFd;
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_fd();
        assert_eq!(Linux::val(fd, VFIO_GET_API_VERSION, 0), Err(Errno::ENOTTY));
        let mut info = uapi::vfio_device_info::default();
        info.set_size();
        assert_eq!(
            Linux::sized(fd, VFIO_DEVICE_GET_INFO, &mut info),
            Err(Errno::ENOTTY)
        );
        let mut buf = [0u8; 32];
        set_argsz(&mut buf).unwrap();
        assert_eq!(
            Linux::bytes(fd, VFIO_DEVICE_GET_REGION_INFO, &mut buf),
            Err(Errno::ENOTTY)
        );
        assert_eq!(
            Linux::bytes_new_fd(fd, VFIO_DEVICE_FEATURE, &mut buf).unwrap_err(),
            Errno::ENOTTY
        );
        assert_eq!(Linux::set_container(fd, fd), Err(Errno::ENOTTY));
        assert_eq!(
            Linux::get_device_fd(fd, c"0000:00:01.0").unwrap_err(),
            Errno::ENOTTY
        );
    }

    #[test]
    fn an_fd_the_mock_does_not_know_answers_enotty_with_the_operation() {
        use std::os::fd::AsFd;
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = device_reset(f.as_fd()).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTTY);
        assert!(e.to_string().starts_with("VFIO_DEVICE_RESET"), "{e}");
    }

    #[test]
    fn byte_arguments_below_a_header_are_refused_before_the_kernel() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let mut tiny = [0u8; 4];
        let e = region_info(f.as_fd(), &mut tiny).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
    }
}
