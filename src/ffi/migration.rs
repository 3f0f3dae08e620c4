//! The C ABI of device migration: the state machine and the state stream,
//! the same four calls on every backend (vfio-user moves the stream in
//! MIG_DATA_READ/WRITE, kernel VFIO through the data fd MIG_DEVICE_STATE
//! returns). QEMU's own road, SET MIG_DEVICE_STATE through
//! `ops->device_feature` and the data_fd it hands back, works on both.

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{device, vfio_io_device};
use crate::error::{Error, Result};
use crate::migration::{requested_state, DeviceMigration};

/// Runs `op` on the migration of the device behind `dev`, under the panic
/// guard (a panic is -EIO): -EINVAL for a NULL handle, -ENOTTY where the
/// backend carries no migration.
///
/// # Safety
/// `dev` must be NULL or a live handle.
unsafe fn with_migration(
    dev: *const vfio_io_device,
    op: impl FnOnce(&dyn DeviceMigration) -> Result<isize>,
) -> isize {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per this function's contract.
        let d = unsafe { device(dev) }?;
        let m =
            d.io.migration()
                .ok_or(Error::Unsupported("the backend carries no migration"))?;
        op(m)
    }))
    .unwrap_or(Err(Error::Errno {
        op: "vfio-io panicked",
        errno: libc::EIO,
    }))
    .unwrap_or_else(|e| -(e.errno() as isize))
}

/// Writes the device's migration state (`enum vfio_device_mig_state`:
/// `VFIO_DEVICE_STATE_RUNNING`, `_STOP`, `_STOP_COPY`, `_RESUMING`) to
/// `*state`. `dev` must be NULL or a live handle; `state` must point to a
/// uint32_t. Returns 0 or -errno: -EINVAL for a NULL argument, -ENOTTY for
/// a device without `VFIO_IO_CAP_MIGRATION` (on kernel VFIO the kernel's
/// answer: a driver without migration), the peer's or kernel's error
/// otherwise.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_migration_get_state(
    dev: *mut vfio_io_device,
    state: *mut u32,
) -> c_int {
    if state.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: per the contract; `state` was checked for NULL and points to a
    // uint32_t the caller owns.
    unsafe {
        with_migration(dev, |m| {
            let s = m.get_state()?;
            state.write(s as u32);
            Ok(0)
        }) as c_int
    }
}

/// Moves the device to migration state `state`, through STOP where no
/// direct arc leads (RUNNING -> STOP_COPY is RUNNING -> STOP -> STOP_COPY),
/// as the kernel does. Entering STOP_COPY saves the device's state for
/// `vfio_io_migration_read`; leaving RESUMING for STOP loads what
/// `vfio_io_migration_write` gave. `dev` must be NULL or a live handle.
/// Returns 0 or -errno: -EINVAL for NULL, for `VFIO_DEVICE_STATE_ERROR`, a
/// state the device lacks (the P2P and PRE_COPY states), or a stream the
/// device refuses on RESUMING -> STOP (the device keeps its state and stays
/// RESUMING, ready for a whole stream again); -ENOTTY as for
/// `vfio_io_migration_get_state`. A failed step leaves the device where the
/// steps before it took it.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_migration_set_state(
    dev: *mut vfio_io_device,
    state: u32,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { with_migration(dev, |m| m.set_state(requested_state(state)?).map(|_| 0)) as c_int }
}

/// Reads up to `len` bytes of the device's state stream into `buf`, which
/// holds `len` bytes; call it until it returns 0. STOP_COPY only. `dev`
/// must be NULL or a live handle. Returns the number of bytes read (fewer
/// than `len` is not the end: only 0 is), 0 at the end of the stream, or
/// -errno: -EINVAL for NULL or outside STOP_COPY, -EPROTO when the server
/// sends more than it announced or a malformed reply, -ENOTTY as for
/// `vfio_io_migration_get_state`.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_migration_read(
    dev: *mut vfio_io_device,
    buf: *mut c_void,
    len: usize,
) -> libc::ssize_t {
    // SAFETY: per the contract; `buf` is checked for NULL and holds `len`
    // writable bytes.
    unsafe {
        with_migration(dev, |m| {
            let b = super::bytes_mut(buf, len)?;
            Ok(m.read(b)? as isize)
        })
    }
}

/// Appends `len` bytes at `buf` (only read) to the incoming state stream.
/// RESUMING only; the stream is loaded by `vfio_io_migration_set_state` to
/// STOP. `dev` must be NULL or a live handle. Returns the number of bytes
/// taken (all of them unless a later chunk of a large write failed), or
/// -errno: -EINVAL for NULL, outside RESUMING, or past the longest stream
/// the device loads; -ENOTTY as for `vfio_io_migration_get_state`.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_migration_write(
    dev: *mut vfio_io_device,
    buf: *const c_void,
    len: usize,
) -> libc::ssize_t {
    // SAFETY: per the contract; `buf` is checked for NULL and holds `len`
    // readable bytes, only read.
    unsafe {
        with_migration(dev, |m| {
            let b: &[u8] = super::bytes_mut(buf.cast_mut(), len)?;
            Ok(m.write(b)? as isize)
        })
    }
}
