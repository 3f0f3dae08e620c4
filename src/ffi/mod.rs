//! The C ABI: an opaque device handle, QEMU's ops table with the capability
//! mask first, and entry points that return 0 (or a byte count) or -errno.
//!
//! No panic crosses this boundary: every entry point runs under
//! `catch_unwind` and reports a panic as `-EIO`.
//!
//! The doc comments here become the comments of `include/vfio-io.h`, so they
//! are written for C callers: each states its arguments, its return value,
//! who owns each fd, and what the pointers must be (instead of Rust's
//! `# Safety` sections, which is why `clippy::missing_safety_doc` is off).

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

mod connect;
mod dirty;
mod extensible;
mod log;
mod migration;
mod server;
mod server_migration;
mod server_options;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::IntoRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

use vfio_bindings::bindings::vfio::{
    vfio_device_feature, vfio_irq_info, vfio_irq_set, vfio_region_info,
};

pub use self::connect::{vfio_io_user_connect_with, vfio_io_user_options};
pub use self::dirty::{vfio_io_dirty_report, vfio_io_dirty_start, vfio_io_dirty_stop};
pub use self::log::{
    vfio_io_log_fn, VFIO_IO_LOG_DEBUG, VFIO_IO_LOG_ERROR, VFIO_IO_LOG_INFO, VFIO_IO_LOG_WARNING,
};
pub use self::migration::{
    vfio_io_migration_get_state, vfio_io_migration_read, vfio_io_migration_set_state,
    vfio_io_migration_write,
};
pub use self::server::{
    vfio_io_server, vfio_io_server_create, vfio_io_server_create_with, vfio_io_server_destroy,
    vfio_io_server_device, vfio_io_server_dispatch, vfio_io_server_dma_read,
    vfio_io_server_dma_write, vfio_io_server_doorbell, vfio_io_server_irq_trigger,
    vfio_io_server_ops, vfio_io_server_poll_fd, vfio_io_server_region, vfio_io_server_run,
    vfio_io_server_stop, VFIO_IO_DOORBELL_DATAMATCH,
};
pub use self::server_options::{vfio_io_server_options, VFIO_IO_SERVER_TRACE};
use crate::caps::Capabilities;
use crate::device::{DeviceIo, DmaMap, IrqAction, IrqData, IrqSet};
use crate::error::{Error, Result};
use crate::user::proto;

/// `vfio_io_dma_map` flag: the device may read the memory.
pub const VFIO_IO_DMA_READ: u32 = 1 << 0;
/// `vfio_io_dma_map` flag: the device may write the memory.
pub const VFIO_IO_DMA_WRITE: u32 = 1 << 1;

const MAGIC: u64 = 0x7666_696f_2d69_6f21;

/// An open device. Opaque to C: created by `vfio_io_user_connect` or
/// `vfio_io_kernel_open`, freed by `vfio_io_device_close`. One handle may be
/// used from many threads at once, except that closing it must not race
/// with other calls on it.
pub struct vfio_io_device {
    magic: u64,
    io: Box<dyn DeviceIo>,
    ops: vfio_io_ops,
}

/// The device operations, shaped like QEMU's `VFIODeviceIOOps` with the
/// capability mask first. The argument structs are `<linux/vfio.h>`'s. Get
/// the table with `vfio_io_device_ops`; every member is non-NULL, and `dev`
/// must be the handle the table came from (NULL gives -EINVAL; a closed
/// handle must never be passed: its memory is freed).
#[repr(C)]
pub struct vfio_io_ops {
    /// `VFIO_IO_CAP_*` bits this device really supports (the same value as
    /// `vfio_io_device_capabilities`). Check a bit before trying what it
    /// names: nothing is logged for an operation the device lacks.
    pub capabilities: u64,
    /// `VFIO_DEVICE_FEATURE`. `feature` points to `feature->argsz` bytes
    /// (header and data), read and, for GET, written. Returns the
    /// operation's non-negative result or -errno (-EINVAL for a NULL
    /// `feature` or an argsz outside [sizeof(struct vfio_device_feature),
    /// 1 MiB]). For `VFIO_DEVICE_FEATURE_DMA_BUF` the result is a new fd,
    /// owned by the caller. A SET of `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`
    /// writes `data_fd` back as the kernel does, on every backend: a new fd
    /// the caller owns entering STOP_COPY (read it to EOF) or RESUMING
    /// (write the stream into it), else -1. Over vfio-user the next state
    /// change first hands the device every byte written into it, closed or
    /// not, and reports there a failure to do so. Over vfio-user the
    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_*` features behave as on the kernel:
    /// START reads the array its control's `ranges` points to, REPORT sets
    /// (never clears) bits in the words its `bitmap` points to, and PROBE
    /// answers 0 with `VFIO_IO_CAP_DIRTY_TRACKING` (else -ENOTTY); a NULL
    /// `ranges` or `bitmap` or an argsz short of the struct is -EINVAL.
    pub device_feature: Option<
        unsafe extern "C" fn(dev: *mut vfio_io_device, feature: *mut vfio_device_feature) -> c_int,
    >,
    /// `VFIO_DEVICE_GET_REGION_INFO` for region `info->index`. `info` points
    /// to `info->argsz` bytes (at least sizeof(struct vfio_region_info)),
    /// filled with the region info and as much of the capability chain as
    /// fits; when the chain needs more, `info->argsz` is set to the size
    /// needed and the caller asks again with a larger buffer. `fd` may be
    /// NULL; otherwise `*fd` receives a new fd, owned by the caller, to mmap
    /// the region at `info->offset`, or -1 when it is not mappable (also on
    /// failure). Returns 0 or -errno (-EINVAL for an index past the
    /// device's regions or a short argsz).
    pub get_region_info: Option<
        unsafe extern "C" fn(
            dev: *mut vfio_io_device,
            info: *mut vfio_region_info,
            fd: *mut c_int,
        ) -> c_int,
    >,
    /// `VFIO_DEVICE_GET_IRQ_INFO` for IRQ index `irq->index`: fills
    /// `irq->flags` and `irq->count`. `irq->argsz` must be at least
    /// sizeof(struct vfio_irq_info). Returns 0 or -errno (-EINVAL for an
    /// index the device lacks).
    pub get_irq_info:
        Option<unsafe extern "C" fn(dev: *mut vfio_io_device, irq: *mut vfio_irq_info) -> c_int>,
    /// `VFIO_DEVICE_SET_IRQS`. `irqs` points to `irqs->argsz` bytes: the
    /// struct and its data (`count` bools or `count` int32 eventfds). The
    /// eventfds are borrowed, not consumed: the caller still owns and
    /// closes them (the library duplicates what it keeps); -1 detaches a
    /// vector. Returns 0 or -errno (-EBADF for a closed eventfd).
    pub set_irqs:
        Option<unsafe extern "C" fn(dev: *mut vfio_io_device, irqs: *mut vfio_irq_set) -> c_int>,
    /// Reads `size` bytes at offset `off` of region `nr` into `data`, which
    /// holds `size` bytes. Returns `size` or -errno (-EINVAL for a NULL
    /// `data` or a range outside the region).
    pub region_read: Option<
        unsafe extern "C" fn(
            dev: *mut vfio_io_device,
            nr: u8,
            off: libc::off_t,
            size: u32,
            data: *mut c_void,
        ) -> c_int,
    >,
    /// Writes `size` bytes from `data` at offset `off` of region `nr`. With
    /// `post` the call may return before the device has seen the write
    /// (`VFIO_IO_CAP_POSTED_WRITES`); later reads still see it. `data` is
    /// only read. Returns `size` or -errno (-EINVAL for a NULL `data` or a
    /// range outside the region).
    pub region_write: Option<
        unsafe extern "C" fn(
            dev: *mut vfio_io_device,
            nr: u8,
            off: libc::off_t,
            size: u32,
            data: *mut c_void,
            post: bool,
        ) -> c_int,
    >,
}

fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(-libc::EIO)
}

fn ret(r: Result<c_int>) -> c_int {
    r.unwrap_or_else(|e| -e.errno())
}

/// Runs `op` on the device behind `dev` under the panic guard; a NULL or
/// invalid handle gives -EINVAL without calling `op`.
///
/// # Safety
/// `dev` must be NULL or a live handle.
unsafe fn with_device(
    dev: *const vfio_io_device,
    op: impl FnOnce(&vfio_io_device) -> c_int,
) -> c_int {
    // SAFETY: per this function's contract.
    guard(|| match unsafe { device(dev) } {
        Ok(d) => op(d),
        Err(e) => -e.errno(),
    })
}

/// Whether `fd` is an open file descriptor of this process.
fn fd_is_open(fd: c_int) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; on a number that is
    // not open it fails with EBADF and touches nothing.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// The device behind a C handle. The magic number catches NULL and some
/// stray pointers; it cannot make a freed (closed) handle safe to pass.
///
/// # Safety
/// `dev` must be NULL or a pointer returned by an open function and not yet
/// closed.
unsafe fn device<'a>(dev: *const vfio_io_device) -> Result<&'a vfio_io_device> {
    // SAFETY: per this function's contract the pointer is NULL or live.
    match unsafe { dev.as_ref() } {
        Some(d) if d.magic == MAGIC => Ok(d),
        _ => Err(Error::InvalidArgument("NULL or invalid device handle")),
    }
}

/// A writable view of `len` bytes at `p`.
///
/// # Safety
/// `p` must be NULL or valid for `len` bytes of reads and writes.
unsafe fn bytes_mut<'a>(p: *mut c_void, len: usize) -> Result<&'a mut [u8]> {
    if p.is_null() {
        return Err(Error::InvalidArgument("NULL buffer"));
    }
    // SAFETY: per this function's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
}

fn new_handle(io: Box<dyn DeviceIo>) -> *mut vfio_io_device {
    let ops = vfio_io_ops {
        capabilities: io.capabilities().bits(),
        device_feature: Some(op_device_feature),
        get_region_info: Some(op_get_region_info),
        get_irq_info: Some(op_get_irq_info),
        set_irqs: Some(op_set_irqs),
        region_read: Some(op_region_read),
        region_write: Some(op_region_write),
    };
    Box::into_raw(Box::new(vfio_io_device {
        magic: MAGIC,
        io,
        ops,
    }))
}

/// # Safety
/// `s` must be NULL or a NUL-terminated string.
unsafe fn path_arg<'a>(s: *const c_char) -> Result<&'a str> {
    if s.is_null() {
        return Err(Error::InvalidArgument("NULL path"));
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| Error::InvalidArgument("path is not UTF-8"))
}

/// Connects to the vfio-user server listening on the Unix socket
/// `socket_path` (a NUL-terminated UTF-8 path) and negotiates the protocol.
/// On success `*out` receives a new handle, owned by the caller, who frees
/// it with `vfio_io_device_close`; on failure `*out` is left alone.
/// Returns 0 or -errno: -EINVAL for a NULL argument, -ENOENT or
/// -ECONNREFUSED when nothing listens, -EPROTO when the peer does not speak
/// vfio-user, -ETIMEDOUT when it does not answer within 5 s.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_user_connect(
    socket_path: *const c_char,
    out: *mut *mut vfio_io_device,
) -> c_int {
    // SAFETY: the same contract, with default options.
    unsafe { vfio_io_user_connect_with(socket_path, std::ptr::null(), out) }
}

/// Opens a device through kernel VFIO and stores a new handle in `*out`.
/// `path` (NUL-terminated) is a PCI address such as `"0000:00:01.0"` (legacy container and
/// IOMMU group; devices of one group share them) or `"/dev/vfio/devices/vfioN"`
/// (iommufd and the device cdev). The device's capabilities are probed once
/// here; nothing is logged for a feature it lacks. Returns 0 or -errno
/// (`-ENODEV` for an unknown device or one not bound to vfio-pci or without
/// an IOMMU group, `-EBUSY` for a group that is not viable, `-EPERM`/`-EACCES`
/// without access to /dev/vfio, `-EINVAL` for a NULL argument). On success
/// `*out` receives a new handle, owned by the caller, who frees it with
/// `vfio_io_device_close`; on failure `*out` is left alone. The device, group
/// and container fds stay inside the handle.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_kernel_open(
    path: *const c_char,
    out: *mut *mut vfio_io_device,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: the caller passes NULL or a C string.
        match unsafe { path_arg(path) }.and_then(crate::kernel::open) {
            Ok(d) => {
                // SAFETY: `out` is non-NULL and writable per the contract.
                unsafe { *out = new_handle(Box::new(d)) };
                0
            }
            Err(e) => -e.errno(),
        }
    })
}

/// Closes a device and frees its handle; NULL is ignored. `dev` must be NULL
/// or a live handle, and is invalid afterwards; the call must not race with
/// other calls on the same handle. fds the caller received from the library
/// (region fds, DMA-BUFs) stay open and the caller's to close; the library
/// closes its own (device, group, container, socket, duplicated eventfds).
#[no_mangle]
pub unsafe extern "C" fn vfio_io_device_close(dev: *mut vfio_io_device) {
    let _ = guard(|| {
        // SAFETY: per the contract `dev` is NULL or live.
        if unsafe { device(dev) }.is_ok() {
            // SAFETY: a live handle came from Box::into_raw in new_handle.
            let mut b = unsafe { Box::from_raw(dev) };
            b.magic = 0;
            drop(b);
        }
        0
    });
}

/// The device's ops table, owned by the handle and valid until
/// `vfio_io_device_close(dev)`; its `capabilities` is the device's mask.
/// `dev` must be NULL or a live handle; NULL gives NULL.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_device_ops(dev: *const vfio_io_device) -> *const vfio_io_ops {
    // SAFETY: per the contract.
    match unsafe { device(dev) } {
        Ok(d) => &d.ops,
        Err(_) => std::ptr::null(),
    }
}

/// The device's capability mask (`VFIO_IO_CAP_*`): what this device really
/// supports, learned once at open. `dev` must be NULL or a live handle; NULL
/// gives 0.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_device_capabilities(dev: *const vfio_io_device) -> u64 {
    // SAFETY: per the contract.
    unsafe { device(dev) }
        .map(|d| d.ops.capabilities)
        .unwrap_or(0)
}

/// The backend's capability mask: what any device of this backend could
/// support (a superset of the device's). `dev` must be NULL or a live
/// handle; NULL gives 0.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_backend_capabilities(dev: *const vfio_io_device) -> u64 {
    // SAFETY: per the contract.
    unsafe { device(dev) }
        .map(|d| d.io.backend_capabilities().bits())
        .unwrap_or(0)
}

/// Exports the mappable ranges of region `region_index` as a DMA-BUF.
/// `dev` must be NULL or a live handle; `out_fd` must point to an int.
/// `*out_fd` is set to -1 first; on success it is a new DMA-BUF fd, owned
/// by the caller, who closes it. Without `VFIO_IO_CAP_DMA_BUF` this returns
/// 0 with `*out_fd` = -1, tries nothing and logs nothing. Returns 0 or
/// -errno (-EINVAL for a NULL argument or an unknown region; the kernel's
/// error for a region with nothing mappable).
#[no_mangle]
pub unsafe extern "C" fn vfio_io_region_create_dma_buf(
    dev: *mut vfio_io_device,
    region_index: u32,
    out_fd: *mut c_int,
) -> c_int {
    if out_fd.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: `out_fd` is non-NULL and writable per the contract.
    unsafe { *out_fd = -1 };
    let op = |d: &vfio_io_device| {
        if !d.io.capabilities().contains(Capabilities::DMA_BUF) {
            return 0;
        }
        let r = d.io.region_info(region_index).and_then(|info| {
            let ranges: Vec<(u64, u64)> = info
                .mmap_areas()
                .iter()
                .map(|a| (a.offset, a.size))
                .collect();
            d.io.region_create_dma_buf(region_index, &ranges)
        });
        match r {
            // SAFETY: as above.
            Ok(Some(fd)) => unsafe { *out_fd = fd.into_raw_fd() },
            Ok(None) => {}
            Err(e) => return -e.errno(),
        }
        0
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

/// Maps `size` bytes for device DMA at `iova`. `vaddr` is the memory's
/// address in this process (kernel VFIO needs it; vfio-user uses it to answer
/// the server's DMA messages); `fd`/`offset` the memory's fd, or -1 (vfio-user
/// passes it to the server; it is borrowed, not consumed). `flags` is
/// `VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE`. Returns 0 or -errno (`-EINVAL`
/// for a NULL `dev`, unknown flags, or neither `vaddr` nor `fd`; `-EBADF`
/// for a closed `fd`; `-EEXIST` for an overlap; `-ENOSPC` past the
/// device's mapping limit).
///
/// `dev` must be NULL or a live handle. `fd` stays the caller's: the
/// library duplicates what it keeps. When `vaddr` is not NULL,
/// `[vaddr, vaddr + size)` must stay mapped until `vfio_io_dma_unmap` or
/// `vfio_io_device_close`: the device reads and writes it.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_dma_map(
    dev: *mut vfio_io_device,
    iova: u64,
    size: u64,
    vaddr: *mut c_void,
    fd: c_int,
    offset: u64,
    flags: u32,
) -> c_int {
    let op = |d: &vfio_io_device| {
        if flags & !(VFIO_IO_DMA_READ | VFIO_IO_DMA_WRITE) != 0 || (vaddr.is_null() && fd < 0) {
            return -libc::EINVAL;
        }
        if fd >= 0 && !fd_is_open(fd) {
            return -libc::EBADF;
        }
        let map = DmaMap {
            iova,
            size,
            vaddr: vaddr as u64,
            fd,
            offset,
            readable: flags & VFIO_IO_DMA_READ != 0,
            writable: flags & VFIO_IO_DMA_WRITE != 0,
        };
        // SAFETY: the caller keeps the memory mapped, per the contract.
        ret(unsafe { d.io.dma_map(&map) }.map(|_| 0))
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

/// Removes every mapping that lies wholly inside `[iova, iova + size)`, as
/// type1 does; the device no longer reaches that memory when this returns.
/// `dev` must be NULL or a live handle. Returns 0 or -errno (`-EINVAL` for a
/// NULL `dev`, or for a range that would cut a mapping in two; a range
/// holding no mapping succeeds on vfio-user and type1, while iommufd answers
/// `-ENOENT`).
#[no_mangle]
pub unsafe extern "C" fn vfio_io_dma_unmap(
    dev: *mut vfio_io_device,
    iova: u64,
    size: u64,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        ret(unsafe { device(dev) }
            .and_then(|d| d.io.dma_unmap(iova, size))
            .map(|_| 0))
    })
}

/// Resets the device (`VFIO_DEVICE_RESET`). `dev` must be NULL or a live
/// handle. Returns 0 or -errno (`-EINVAL` for NULL; a device without
/// `VFIO_IO_CAP_RESET` fails with its backend's error).
#[no_mangle]
pub unsafe extern "C" fn vfio_io_device_reset(dev: *mut vfio_io_device) -> c_int {
    // SAFETY: per the contract.
    guard(|| ret(unsafe { device(dev) }.and_then(|d| d.io.reset()).map(|_| 0)))
}

/// Sets the handler that receives the library's log lines at `max_level`
/// (`VFIO_IO_LOG_*`) and above in severity; NULL removes it. Nothing is
/// printed without a handler. `f` is called with `opaque`, a
/// `VFIO_IO_LOG_*` level and a NUL-terminated line that is valid only during
/// the call; it may be called from any thread, concurrently, until another
/// call replaces it, so it and `opaque` must stay valid that long. The
/// handler is process-wide.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_set_log_handler(
    f: vfio_io_log_fn,
    opaque: *mut c_void,
    max_level: c_int,
) {
    let _ = guard(|| {
        log::set_handler(f, opaque, max_level);
        0
    });
}

/// The name of one capability bit (`"DMA_BUF"` for `VFIO_IO_CAP_DMA_BUF`), or
/// NULL for 0, an unknown bit or several bits. The string is static: never
/// free it.
#[no_mangle]
pub extern "C" fn vfio_io_capability_name(bit: u64) -> *const c_char {
    Capabilities::from_bits(bit)
        .and_then(Capabilities::definition)
        .map_or(std::ptr::null(), |d| d.c_name.as_ptr())
}

unsafe extern "C" fn op_device_feature(
    dev: *mut vfio_io_device,
    feature: *mut vfio_device_feature,
) -> c_int {
    let op = |d: &vfio_io_device| {
        if feature.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: non-NULL; the caller provides at least the fixed part.
        let (argsz, flags) = unsafe { ((*feature).argsz as usize, (*feature).flags) };
        let fixed = std::mem::size_of::<vfio_device_feature>();
        if !(fixed..=1 << 20).contains(&argsz) {
            return -libc::EINVAL;
        }
        // SAFETY: the caller's buffer holds argsz bytes, as VFIO_DEVICE_FEATURE requires.
        let data = match unsafe { bytes_mut(feature.cast(), argsz) } {
            Ok(b) => &mut b[fixed..],
            Err(e) => return -e.errno(),
        };
        if let Some(r) = dirty::dma_logging_feature(d, flags, data) {
            return r;
        }
        ret(d.io.device_feature(flags, data))
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

unsafe extern "C" fn op_get_region_info(
    dev: *mut vfio_io_device,
    info: *mut vfio_region_info,
    fd: *mut c_int,
) -> c_int {
    if !fd.is_null() {
        // SAFETY: non-NULL out pointer from the caller.
        unsafe { *fd = -1 };
    }
    let op = |d: &vfio_io_device| {
        if info.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: non-NULL; the fixed part is always there.
        let (argsz, index) = unsafe { ((*info).argsz as usize, (*info).index) };
        if argsz < proto::REGION_INFO_SIZE {
            return -libc::EINVAL;
        }
        let r = match d.io.region_info(index) {
            Ok(r) => r,
            Err(e) => return -e.errno(),
        };
        let bytes = proto::encode_region_info(&r, argsz);
        let n = bytes.len().min(argsz);
        // SAFETY: the caller's buffer holds argsz bytes, as the ioctl requires.
        match unsafe { bytes_mut(info.cast(), argsz) } {
            Ok(b) => b[..n].copy_from_slice(&bytes[..n]),
            Err(e) => return -e.errno(),
        }
        if !fd.is_null() && r.is_mappable() {
            if let Some(f) = &r.fd {
                match nix::unistd::dup(f.as_ref()) {
                    // SAFETY: non-NULL out pointer from the caller.
                    Ok(new) => unsafe { *fd = new.into_raw_fd() },
                    Err(e) => return -(e as c_int),
                }
            }
        }
        0
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

unsafe extern "C" fn op_get_irq_info(dev: *mut vfio_io_device, irq: *mut vfio_irq_info) -> c_int {
    let op = |d: &vfio_io_device| {
        // SAFETY: NULL is checked by as_mut; otherwise the caller's struct.
        let Some(irq) = (unsafe { irq.as_mut() }) else {
            return -libc::EINVAL;
        };
        if (irq.argsz as usize) < std::mem::size_of::<vfio_irq_info>() {
            return -libc::EINVAL;
        }
        match d.io.irq_info(irq.index) {
            Ok(i) => {
                irq.flags = i.flags;
                irq.count = i.count;
                0
            }
            Err(e) => -e.errno(),
        }
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

unsafe extern "C" fn op_set_irqs(dev: *mut vfio_io_device, irqs: *mut vfio_irq_set) -> c_int {
    use vfio_bindings::bindings::vfio::*;
    let op = |d: &vfio_io_device| {
        // SAFETY: NULL is checked by as_ref; otherwise the caller's struct.
        let Some(s) = (unsafe { irqs.as_ref() }) else {
            return -libc::EINVAL;
        };
        let fixed = std::mem::size_of::<vfio_irq_set>();
        let action = match s.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK {
            VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
            VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            VFIO_IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
            _ => return -libc::EINVAL,
        };
        let count = s.count as usize;
        let data_len = match s.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE => 0,
            VFIO_IRQ_SET_DATA_BOOL => count,
            VFIO_IRQ_SET_DATA_EVENTFD => count * 4,
            _ => return -libc::EINVAL,
        };
        if count > 65536 || (s.argsz as usize) < fixed + data_len {
            return -libc::EINVAL;
        }
        // SAFETY: argsz (checked above) covers the data that follows the struct.
        let data = unsafe { (irqs as *const u8).add(fixed) };
        let fds: Vec<c_int>;
        let payload = match s.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE => IrqData::None,
            // SAFETY: `count` bytes follow the struct, inside argsz.
            VFIO_IRQ_SET_DATA_BOOL => {
                IrqData::Bool(unsafe { std::slice::from_raw_parts(data, count) })
            }
            _ => {
                fds = (0..count)
                    // SAFETY: `count` ints follow the struct, inside argsz; read unaligned.
                    .map(|i| unsafe { std::ptr::read_unaligned(data.add(i * 4).cast::<c_int>()) })
                    .collect();
                if fds.iter().any(|&f| f >= 0 && !fd_is_open(f)) {
                    return -libc::EBADF;
                }
                IrqData::Eventfds(&fds)
            }
        };
        let set = IrqSet {
            index: s.index,
            start: s.start,
            count: s.count,
            action,
            data: payload,
        };
        ret(d.io.set_irqs(&set).map(|_| 0))
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

/// The caller's buffer of a region access, after checking the offset and
/// size a C caller passed; `Err(-EINVAL)` for a negative offset, a size past
/// `INT_MAX` (the return value could not say it) or a NULL buffer.
///
/// # Safety
/// `data` is NULL or points to `size` bytes the caller lets us use.
unsafe fn access_buffer<'a>(
    off: libc::off_t,
    size: u32,
    data: *mut c_void,
) -> std::result::Result<&'a mut [u8], c_int> {
    if off < 0 || size > i32::MAX as u32 {
        return Err(-libc::EINVAL);
    }
    // SAFETY: the caller's buffer holds `size` bytes (this function's contract).
    unsafe { bytes_mut(data, size as usize) }.map_err(|e| -e.errno())
}

unsafe extern "C" fn op_region_read(
    dev: *mut vfio_io_device,
    nr: u8,
    off: libc::off_t,
    size: u32,
    data: *mut c_void,
) -> c_int {
    let op = |d: &vfio_io_device| {
        // SAFETY: the caller's buffer holds `size` bytes.
        let buf = match unsafe { access_buffer(off, size, data) } {
            Ok(b) => b,
            Err(errno) => return errno,
        };
        ret(d
            .io
            .region_read(nr as u32, off as u64, buf)
            .map(|_| size as c_int))
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

unsafe extern "C" fn op_region_write(
    dev: *mut vfio_io_device,
    nr: u8,
    off: libc::off_t,
    size: u32,
    data: *mut c_void,
    post: bool,
) -> c_int {
    let op = |d: &vfio_io_device| {
        // SAFETY: the caller's buffer holds `size` bytes.
        let buf = match unsafe { access_buffer(off, size, data) } {
            Ok(b) => b,
            Err(errno) => return errno,
        };
        ret(d
            .io
            .region_write(nr as u32, off as u64, buf, post)
            .map(|_| size as c_int))
    };
    // SAFETY: `dev` is NULL or a live handle, per the contract.
    unsafe { with_device(dev, op) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_match_the_rust_names() {
        for (name, bit) in Capabilities::named_bits() {
            let p = vfio_io_capability_name(bit.bits());
            assert!(!p.is_null(), "{name}");
            // SAFETY: a static NUL-terminated string.
            assert_eq!(unsafe { CStr::from_ptr(p) }.to_str().unwrap(), name);
        }
        assert!(vfio_io_capability_name(0).is_null());
        assert!(vfio_io_capability_name(3).is_null());
        assert!(vfio_io_capability_name(1 << 40).is_null());
    }

    #[test]
    fn null_arguments_are_einval_not_crashes() {
        let mut out: *mut vfio_io_device = std::ptr::null_mut();
        // SAFETY: NULL arguments are part of the documented contract.
        unsafe {
            assert_eq!(
                vfio_io_user_connect(std::ptr::null(), &mut out),
                -libc::EINVAL
            );
            assert_eq!(
                vfio_io_user_connect(c"/nonexistent".as_ptr(), std::ptr::null_mut()),
                -libc::EINVAL
            );
            assert_eq!(
                vfio_io_user_connect(c"/nonexistent/sock".as_ptr(), &mut out),
                -libc::ENOENT
            );
            assert!(vfio_io_device_ops(std::ptr::null()).is_null());
            assert_eq!(
                vfio_io_kernel_open(std::ptr::null(), &mut out),
                -libc::EINVAL
            );
            assert_eq!(
                vfio_io_kernel_open(c"0000:99:99.9".as_ptr(), &mut out),
                -libc::ENODEV
            );
            assert_eq!(vfio_io_device_capabilities(std::ptr::null()), 0);
            assert_eq!(vfio_io_dma_unmap(std::ptr::null_mut(), 0, 0), -libc::EINVAL);
            assert_eq!(vfio_io_device_reset(std::ptr::null_mut()), -libc::EINVAL);
            let mut fd = 5;
            assert_eq!(
                vfio_io_region_create_dma_buf(std::ptr::null_mut(), 0, &mut fd),
                -libc::EINVAL
            );
            assert_eq!(fd, -1);
            vfio_io_device_close(std::ptr::null_mut());
        }
    }

    #[test]
    fn ops_table_starts_with_capabilities() {
        assert_eq!(std::mem::offset_of!(vfio_io_ops, capabilities), 0);
    }
}
