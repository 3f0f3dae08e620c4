//! The C ABI of serving a device over vfio-user: a device described by a
//! struct and implemented by callbacks, served by the library's server on a
//! thread the caller gives it (`vfio_io_server_run`), or from the caller's
//! event loop (`vfio_io_server_poll_fd`, `vfio_io_server_dispatch`).
//!
//! Interrupts and DMA may be asked for from any thread. Inside a callback
//! the session's context is lent to the serving thread for the duration of
//! the callback (see [`lend_context`]) and used directly; from any other
//! thread the request goes through the server's [`ServerHandle`], which the
//! serving thread runs between client commands.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::os::fd::AsRawFd;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};

use super::server_migration::MigrationCallbacks;
use super::server_options::{server_config, vfio_io_server_options};
use super::{fd_is_open, guard, path_arg, ret};
use crate::device::pci_irq;
use crate::error::{Error, Result};
use crate::models::described::{DescribedDevice, DeviceDesc, RegionDesc, RegionHandler};
use crate::user::server::{
    DeviceContext, Doorbell, Server, ServerConfig, ServerHandle, ServerStopper,
};

const SERVER_MAGIC: u64 = 0x7666_696f_2d73_7276;

/// One region of a served device.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vfio_io_server_region {
    /// `VFIO_PCI_BAR0_REGION_INDEX` .. `VFIO_PCI_BAR5_REGION_INDEX`, another
    /// vfio-pci index, or a device-specific index below 64. Index
    /// `VFIO_PCI_CONFIG_REGION_INDEX` (7) replaces the emulated
    /// configuration space: the callbacks then serve it (at least 256 bytes).
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_READ | _WRITE | _MMAP`: READ or WRITE at
    /// least; MMAP exactly when `fd` is given.
    pub flags: u32,
    /// Size in bytes, not 0. For BARs 0..5 with emulated configuration
    /// space: a power of two of at least 16 (above 2 GiB the BAR is 64-bit
    /// and takes the next index too).
    pub size: u64,
    /// -1: every access is a callback. Otherwise memory the client may
    /// mmap; the library duplicates it (the caller keeps and closes its fd)
    /// and answers accesses of a client that did not map it from its own
    /// mapping, so callbacks never see this region.
    pub fd: c_int,
    /// Where the region starts in `fd`: a multiple of 4096; the fd (a
    /// memfd or file) must hold `fd_offset + size` bytes.
    pub fd_offset: u64,
}

/// A served device's identity, regions and interrupts.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vfio_io_server_device {
    /// sizeof(struct vfio_io_server_device) as the caller was compiled: the
    /// whole struct, or its size up to and including `irq_count`.
    pub size: u32,
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// PCI subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// PCI subsystem ID.
    pub subsystem_id: u16,
    /// PCI class code (24 bits: base class, subclass, programming interface).
    pub class_code: u32,
    /// `num_regions` regions, each index once (NULL when `num_regions` is 0).
    /// Read during `vfio_io_server_create` only.
    pub regions: *const vfio_io_server_region,
    /// Number of entries in `regions` (at most 64).
    pub num_regions: u32,
    /// Vectors of each IRQ index: INTX, MSI, MSIX, ERR, REQ. INTX, ERR and
    /// REQ at most 1, MSI at most 1 with emulated configuration space (32
    /// otherwise), MSIX at most 2048. An INTx vector sets the interrupt pin
    /// to INTA#; an MSI vector adds an MSI capability. MSIX vectors with
    /// emulated configuration space add an MSI-X capability whose table
    /// (at offset 0) and PBA (after it) the library serves in a BAR of its
    /// own: the first of BARs 0..5 no region takes (create fails with
    /// -EINVAL when none is free), a power of two of at least 4 KiB,
    /// trapped; callbacks never see it. Vectors fire as the client's
    /// SET_IRQS on `VFIO_PCI_MSIX_IRQ_INDEX` says, as on kernel vfio-pci.
    pub irq_count: [u32; 5],
    /// `num_doorbells` doorbells (NULL when `num_doorbells` is 0): registers
    /// whose writes a client may deliver through an eventfd instead of a
    /// message. Read during `vfio_io_server_create` only.
    ///
    /// `doorbells` and `num_doorbells` came after `irq_count`: a program
    /// compiled before them passes the shorter `size` (up to and including
    /// `irq_count`), accepted as a device without doorbells.
    pub doorbells: *const vfio_io_server_doorbell,
    /// Number of entries in `doorbells` (at most 64).
    pub num_doorbells: u32,
}

impl Default for vfio_io_server_device {
    /// The current `size`, every other field zero or NULL.
    fn default() -> Self {
        vfio_io_server_device {
            size: std::mem::size_of::<Self>() as u32,
            vendor_id: 0,
            device_id: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            class_code: 0,
            regions: std::ptr::null(),
            num_regions: 0,
            irq_count: [0; 5],
            doorbells: std::ptr::null(),
            num_doorbells: 0,
        }
    }
}

/// `vfio_io_server_doorbell` flag: only writes of exactly `datamatch` go
/// through the eventfd, and each reaches `region_write` as a write of that
/// value.
pub const VFIO_IO_DOORBELL_DATAMATCH: u32 = 1 << 0;

/// A doorbell of a served device: a register of a region without an fd
/// whose writes a client that takes the server's eventfds
/// (`VFIO_IO_CAP_IOEVENTFD` on its side) signals through an eventfd, with no
/// message and no reply. The library reads the eventfd and calls
/// `region_write` on the serving thread, before the next command of that
/// client, so the device sees every write once and in order with the
/// client's other accesses. A write that does not match a doorbell (another
/// width, or another value than `datamatch`) comes as a message, as ever.
///
/// Checked by `vfio_io_server_create` (-EINVAL, with the reason logged):
/// `region` is in the device's `regions`, has no fd and is writable; the
/// register lies inside it; no two doorbells overlap.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vfio_io_server_doorbell {
    /// Index of the region.
    pub region: u32,
    /// Width of the register: 1, 2, 4 or 8 bytes.
    pub size: u32,
    /// Offset of the register in the region.
    pub offset: u64,
    /// With `VFIO_IO_DOORBELL_DATAMATCH`: the one value (of `size` bytes)
    /// that goes through the eventfd. Without it every write of `size`
    /// bytes does, and the eventfd carries only how many there were: the
    /// device gets one `region_write` whose value is that count (an 8-byte
    /// count cut to `size` bytes, little-endian), not the values written.
    pub datamatch: u64,
    /// `VFIO_IO_DOORBELL_DATAMATCH` or 0; other bits are refused (-EINVAL).
    pub flags: u32,
    /// 0; room for a later field.
    pub reserved: u32,
}

/// The callbacks of a served device, called on the thread in
/// `vfio_io_server_run`, one at a time, with the `opaque` given to
/// `vfio_io_server_create`.
///
/// The migration fields came after `reset`, and `client_connected` and
/// `client_disconnected` after them: a program compiled before either
/// passes a shorter `size`, which is accepted as if the fields it lacks
/// were NULL and 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vfio_io_server_ops {
    /// sizeof(struct vfio_io_server_ops) as the caller was compiled: the
    /// whole struct, its size up to and including `migration_max_state_len`,
    /// or up to and including `reset`.
    pub size: u32,
    /// Reads `count` bytes at `offset` of region `index` into `buf` (range
    /// and READ flag already checked). Returns `count`, or -errno, which
    /// becomes the client's error reply (any other value: EIO). May be NULL
    /// only if no region without an fd is readable.
    pub region_read: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            index: u32,
            offset: u64,
            buf: *mut c_void,
            count: u32,
        ) -> libc::ssize_t,
    >,
    /// Writes the `count` bytes of `buf` at `offset` of region `index`
    /// (range and WRITE flag checked). Returns `count` or -errno, as
    /// `region_read`. May be NULL only if no region without an fd is
    /// writable.
    pub region_write: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            index: u32,
            offset: u64,
            buf: *const c_void,
            count: u32,
        ) -> libc::ssize_t,
    >,
    /// Resets the device: 0 or -errno. NULL: the device offers no reset.
    /// The emulated configuration space is reset before it is called.
    pub reset: Option<unsafe extern "C" fn(opaque: *mut c_void) -> c_int>,
    /// Migration: stops the device (RUNNING -> STOP). Work in flight
    /// completes, or is kept in the state `migration_save` writes, and no
    /// new work starts until `migration_resume`. Returns 0 or -errno; on
    /// failure the device stays RUNNING. `vfio_io_server_irq_trigger` and
    /// the DMA calls work inside it.
    ///
    /// The four migration callbacks are all given or all NULL. All NULL:
    /// the device does not migrate and a client sees no
    /// `VFIO_IO_CAP_MIGRATION`. Given: the library runs the migration
    /// state machine and moves the stream; with emulated configuration
    /// space the stream carries that too, so the callbacks save only the
    /// device's own state (including what it keeps in region fds).
    pub migration_stop: Option<unsafe extern "C" fn(opaque: *mut c_void) -> c_int>,
    /// Migration: starts a stopped device again (STOP -> RUNNING), on the
    /// source after a cancelled migration or on the destination after a
    /// load. Interrupts the loaded state holds pending are raised here,
    /// with `vfio_io_server_irq_trigger`, so that this client sees them.
    /// Returns 0 or -errno; on failure the device stays stopped.
    pub migration_resume: Option<unsafe extern "C" fn(opaque: *mut c_void) -> c_int>,
    /// Migration: writes the stopped device's state, a byte stream of the
    /// device's own format, into `buf` (`len` writable bytes, owned by the
    /// library) and returns the state's length. A state longer than `len`
    /// returns its length without needing to write anything; the library
    /// calls again with a buffer that long (snprintf's convention), so the
    /// state may have any length up to `migration_max_state_len`. Returns
    /// the length, or -errno. The device is stopped and must not change
    /// between the calls; no interrupt or DMA is possible here (-EBUSY).
    pub migration_save: Option<
        unsafe extern "C" fn(opaque: *mut c_void, buf: *mut c_void, len: usize) -> libc::ssize_t,
    >,
    /// Migration: replaces the stopped device's state with the `len`
    /// bytes at `buf` (only read, valid during the call), a state
    /// `migration_save` wrote, perhaps in another process. All or nothing:
    /// returns 0 once loaded, or -EINVAL for a stream that is truncated,
    /// corrupted or of another device or version, leaving the device's
    /// state as it was (the client may then send a whole stream again).
    /// No interrupt or DMA is possible here (-EBUSY): raise pending ones
    /// in `migration_resume`.
    pub migration_load:
        Option<unsafe extern "C" fn(opaque: *mut c_void, buf: *const c_void, len: usize) -> c_int>,
    /// Migration: the longest state `migration_save` writes and
    /// `migration_load` accepts, in bytes; more than 0 when the callbacks
    /// are given. The library refuses a longer incoming stream before it
    /// reaches `migration_load`, and a longer saved state (EIO).
    pub migration_max_state_len: usize,
    /// A client was accepted: called on the serving thread (the one in
    /// `vfio_io_server_run`, or in the `vfio_io_server_dispatch` that
    /// accepts it) before the library reads the client's first command.
    /// The client has mapped no memory and attached no interrupt yet:
    /// interrupts and DMA from here are -ENOTCONN. NULL: not called.
    pub client_connected: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// The client's session is over: the client left, was dropped for
    /// breaking the protocol, or the server was stopped. Called once per
    /// `client_connected`, on the serving thread (for a session
    /// `vfio_io_server_dispatch` served that is still open at
    /// `vfio_io_server_destroy`: the thread in destroy), after the library
    /// returned a stopped device to RUNNING (through `migration_resume`)
    /// and unmapped the client's memory, and before the next client is
    /// accepted. Interrupts and DMA from here are -ENOTCONN; the place to
    /// drop what the device kept for this client, such as DMA work that
    /// would touch its memory. NULL: not called.
    pub client_disconnected: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
}

/// A served device. Opaque to C: made by `vfio_io_server_create`, freed by
/// `vfio_io_server_destroy`.
pub struct vfio_io_server {
    magic: u64,
    /// Tells this server's lent context from another's on the same thread.
    id: u64,
    server: Mutex<Server<DescribedDevice<Callbacks>>>,
    stopper: ServerStopper,
    /// Interrupts and DMA from threads other than the serving one.
    handle: ServerHandle,
    /// The server's epoll fd (`vfio_io_server_poll_fd`), owned by `server`.
    poll_fd: c_int,
    /// Set while `vfio_io_server_run` serves: `dispatch` is refused then.
    running: AtomicBool,
    /// Set while a `vfio_io_server_dispatch` is under way: a second one is refused.
    dispatching: AtomicBool,
    irq_count: [u32; 5],
    path: PathBuf,
}

/// The C callbacks as a [`RegionHandler`].
struct Callbacks {
    ops: vfio_io_server_ops,
    /// The caller's pointer, only handed back to its callbacks.
    opaque: usize,
    id: u64,
}

/// A server's id and the context lent with its running callback, or for a
/// callback that runs without one (migration save and load, client
/// events) the errno that interrupts and DMA from it get.
type LentContext = (
    u64,
    std::result::Result<*mut (dyn DeviceContext + 'static), c_int>,
);

thread_local! {
    /// The callback running on this thread: its server's id and context.
    static CURRENT: Cell<Option<LentContext>> = const { Cell::new(None) };
}

/// Puts back what `CURRENT` held, also when unwinding.
struct Restore(Option<LentContext>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Runs `f` (a C callback) with `ctx` reachable from the entry points
/// called on this thread for server `id`.
pub(super) fn lend_context<R>(id: u64, ctx: &mut dyn DeviceContext, f: impl FnOnce() -> R) -> R {
    let p: *mut (dyn DeviceContext + '_) = ctx;
    // SAFETY: only the trait object's lifetime bound is erased. The pointer
    // leaves CURRENT when `_restore` drops, before this function returns and
    // so while `ctx`'s borrow is still live; it is never used after.
    let p: *mut (dyn DeviceContext + 'static) = unsafe { std::mem::transmute(p) };
    let _restore = Restore(CURRENT.with(|c| c.replace(Some((id, Ok(p))))));
    f()
}

/// Runs `f` (a C callback that gets no context) marked as a callback of
/// server `id`: interrupts and DMA from it fail at once with `errno`
/// rather than wait, queued for the session this very thread is running.
pub(super) fn in_callback_without_context<R>(id: u64, errno: c_int, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(CURRENT.with(|c| c.replace(Some((id, Err(errno))))));
    f()
}

/// Runs `f` with the context lent for server `id` on this thread; `None`
/// when no callback of that server runs here (another thread, or outside a
/// callback); -EBUSY in a callback that has no context.
fn with_lent_context<R>(
    id: u64,
    f: impl FnOnce(&mut dyn DeviceContext) -> Result<R>,
) -> Option<Result<R>> {
    let lent = CURRENT.with(|c| c.get());
    let (owner, p) = lent.filter(|(owner, _)| *owner == id)?;
    let p = match p {
        Ok(p) => p,
        Err(errno) => {
            return Some(Err(Error::Errno {
                op: "interrupt or DMA from a callback without the session's context",
                errno,
            }))
        }
    };
    // Taken out while in use, so that no second reference to it can exist.
    let _restore = Restore(CURRENT.with(|c| c.replace(None)));
    debug_assert_eq!(owner, id);
    // SAFETY: `p` was lent by `lend_context` on this thread, whose borrow is
    // live (the pointer is removed before it returns), and it is out of
    // CURRENT while this reference exists.
    Some(f(unsafe { &mut *p }))
}

/// A callback's return value: `count` is success, -errno the reply's errno.
pub(super) fn callback_result(what: &'static str, r: libc::ssize_t, count: usize) -> Result<()> {
    match r {
        r if r >= 0 && r as usize == count => Ok(()),
        r if (-4095..0).contains(&r) => Err(Error::Errno {
            op: what,
            errno: -r as i32,
        }),
        r => {
            log::error!(target: "vfio_io::server", "{what} returned {r} for {count} bytes");
            Err(Error::Errno {
                op: what,
                errno: libc::EIO,
            })
        }
    }
}

impl Callbacks {
    /// Runs callback `call` (given the opaque) with `ctx` lent, and turns
    /// its return value into the result of a `count`-byte access.
    fn call(
        &self,
        ctx: &mut dyn DeviceContext,
        what: &'static str,
        count: usize,
        call: impl FnOnce(*mut c_void) -> libc::ssize_t,
    ) -> Result<()> {
        let opaque = self.opaque as *mut c_void;
        callback_result(what, lend_context(self.id, ctx, || call(opaque)), count)
    }
}

impl RegionHandler for Callbacks {
    fn read(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        let f = self
            .ops
            .region_read
            .ok_or(Error::Unsupported("region_read"))?;
        let (buf, count) = (data.as_mut_ptr().cast(), data.len());
        // SAFETY: the caller of vfio_io_server_create promised the callback
        // may be called with its opaque; `buf` is valid for `count` bytes
        // (at most max_data_xfer_size, so it fits in u32).
        self.call(ctx, "device region_read callback", count, |opaque| unsafe {
            f(opaque, index, offset, buf, count as u32)
        })
    }

    fn write(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let f = self
            .ops
            .region_write
            .ok_or(Error::Unsupported("region_write"))?;
        let (buf, count) = (data.as_ptr().cast(), data.len());
        // SAFETY: as in `read`; `buf` is only read.
        self.call(
            ctx,
            "device region_write callback",
            count,
            |opaque| unsafe { f(opaque, index, offset, buf, count as u32) },
        )
    }

    fn reset(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        let f = self.ops.reset.ok_or(Error::Unsupported("reset"))?;
        // SAFETY: as in `read`. Any result but -errno counts as success.
        self.call(ctx, "device reset callback", 0, |opaque| unsafe {
            (f(opaque) as libc::ssize_t).min(0)
        })
    }

    fn client_connected(&mut self) {
        self.client_event(self.ops.client_connected);
    }

    fn client_disconnected(&mut self) {
        self.client_event(self.ops.client_disconnected);
    }
}

impl Callbacks {
    /// Calls `client_connected` or `client_disconnected`, if given: no
    /// session context is lent, there is no client memory to reach.
    fn client_event(&self, f: Option<unsafe extern "C" fn(*mut c_void)>) {
        if let Some(f) = f {
            let opaque = self.opaque as *mut c_void;
            // SAFETY: the caller of vfio_io_server_create promised the
            // callback may be called with its opaque.
            in_callback_without_context(self.id, libc::ENOTCONN, || unsafe { f(opaque) });
        }
    }
}

/// Logs why `vfio_io_server_create` refuses its arguments.
pub(super) fn refuse(detail: &str) -> Error {
    log::error!(target: "vfio_io::server", "vfio_io_server_create: {detail}");
    Error::InvalidArgument("vfio_io_server_create argument")
}

/// The description behind `dev`, with each region fd duplicated.
///
/// # Safety
/// `dev`'s `regions` must be NULL or hold `num_regions` entries, and its
/// `doorbells` NULL or hold `num_doorbells`.
unsafe fn description(dev: &vfio_io_server_device) -> Result<DeviceDesc> {
    if dev.num_regions > crate::models::described::MAX_REGIONS {
        return Err(refuse("device->num_regions is above 64"));
    }
    if dev.num_doorbells as usize > crate::models::described::MAX_DOORBELLS {
        return Err(refuse("device->num_doorbells is above 64"));
    }
    // SAFETY: per this function's contract.
    let regions = unsafe { c_array(dev.regions, dev.num_regions, "device->regions is NULL") }?;
    // SAFETY: per this function's contract.
    let doorbells = unsafe {
        c_array(
            dev.doorbells,
            dev.num_doorbells,
            "device->doorbells is NULL",
        )
    }?;
    let mut desc = DeviceDesc {
        vendor_id: dev.vendor_id,
        device_id: dev.device_id,
        subsystem_vendor_id: dev.subsystem_vendor_id,
        subsystem_id: dev.subsystem_id,
        class_code: dev.class_code,
        irq_count: dev.irq_count,
        ..DeviceDesc::default()
    };
    for (i, b) in doorbells.iter().enumerate() {
        if b.flags & !VFIO_IO_DOORBELL_DATAMATCH != 0 || b.reserved != 0 {
            return Err(refuse(&format!(
                "doorbell {i}: unknown flags {:#x} or reserved {:#x} set",
                b.flags, b.reserved
            )));
        }
        let datamatch = b.flags & VFIO_IO_DOORBELL_DATAMATCH != 0;
        desc.doorbells.push(Doorbell {
            region: b.region,
            offset: b.offset,
            size: b.size,
            datamatch: datamatch.then_some(b.datamatch),
        });
    }
    for r in regions {
        desc.regions.push(RegionDesc {
            index: r.index,
            flags: r.flags,
            size: r.size,
            fd: dup_fd(r.fd)?,
            fd_offset: r.fd_offset,
        });
    }
    Ok(desc)
}

/// The `n` entries at `p` (none for `n` 0, whatever `p`); `null` is
/// refused when `n` > 0.
///
/// # Safety
/// `p` must be NULL or point to `n` entries that outlive the slice.
unsafe fn c_array<'a, T>(p: *const T, n: u32, null: &str) -> Result<&'a [T]> {
    match (n, p.is_null()) {
        (0, _) => Ok(&[]),
        (_, true) => Err(refuse(null)),
        // SAFETY: per this function's contract, checked non-NULL.
        (n, false) => Ok(unsafe { std::slice::from_raw_parts(p, n as usize) }),
    }
}

/// Reads the caller's struct at `p` into a `T`: the current one, or an
/// older version whose `size` is one of `older` (each the offset of the
/// first field that version lacks), the fields past it left at their
/// defaults. `null` and `bad_size` are the logged reasons of a refusal.
///
/// # Safety
/// `p` must be NULL or point to a struct of at least `p->size` bytes whose
/// first field is its uint32_t `size`, laid out as `T` up to that size.
unsafe fn read_version<T: Default>(
    p: *const T,
    older: &[usize],
    null: &str,
    bad_size: &str,
) -> Result<T> {
    if p.is_null() {
        return Err(refuse(null));
    }
    // SAFETY: non-NULL; `size` is the first field of every version.
    let size = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    let current = std::mem::size_of::<T>();
    if size != current && !older.iter().any(|&o| o == size && o < current) {
        return Err(refuse(bad_size));
    }
    let mut out = T::default();
    // SAFETY: `size` bytes of the caller's struct are readable and end at a
    // field boundary of `T` (a version's end), so the bytes copied make
    // whole fields of `T`, each valid as the caller wrote it; `size` is
    // at most `size_of::<T>()`.
    unsafe { ptr::copy_nonoverlapping(p.cast::<u8>(), ptr::addr_of_mut!(out).cast::<u8>(), size) };
    Ok(out)
}

/// The caller's device, of either size; a shorter struct has no doorbells.
///
/// # Safety
/// `dev` must be NULL or point to a struct of at least `dev->size` bytes
/// (`size` comes first in every version).
unsafe fn read_device(dev: *const vfio_io_server_device) -> Result<vfio_io_server_device> {
    // SAFETY: per this function's contract; a program compiled before the
    // doorbell fields has the struct up to `doorbells`.
    unsafe {
        read_version(
            dev,
            &[std::mem::offset_of!(vfio_io_server_device, doorbells)],
            "NULL device description",
            "device->size is not sizeof(struct vfio_io_server_device), now or before its doorbells",
        )
    }
}

/// A duplicate of the caller's `fd`, or `None` for -1.
fn dup_fd(fd: c_int) -> Result<Option<OwnedFd>> {
    if fd == -1 {
        return Ok(None);
    }
    if !fd_is_open(fd) {
        log::error!(target: "vfio_io::server", "vfio_io_server_create: region fd {fd} is not open");
        return Err(Error::sys("region fd", nix::errno::Errno::EBADF));
    }
    // SAFETY: `fd` is open (checked just above) and only borrowed for the dup.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fd.try_clone_to_owned()
        .map(Some)
        .map_err(|e| Error::io("dup region fd", e))
}

/// The caller's ops, of any of its sizes; the fields a shorter struct
/// lacks are NULL and 0.
///
/// # Safety
/// `ops` must be NULL or point to a struct of at least `ops->size` bytes
/// (the struct's `size` field comes first in every version).
unsafe fn read_ops(ops: *const vfio_io_server_ops) -> Result<vfio_io_server_ops> {
    use std::mem::offset_of;
    // SAFETY: per this function's contract; programs compiled before the
    // migration fields, or before the client events, have the struct up
    // to the first field they lack.
    unsafe {
        read_version(
            ops,
            &[
                offset_of!(vfio_io_server_ops, migration_stop),
                offset_of!(vfio_io_server_ops, client_connected),
            ],
            "NULL ops",
            "ops->size is not sizeof(struct vfio_io_server_ops), now or before its migration fields or client events",
        )
    }
}

/// # Safety
/// See `vfio_io_server_create`.
unsafe fn create(
    socket_path: *const c_char,
    dev: *const vfio_io_server_device,
    ops: *const vfio_io_server_ops,
    opaque: *mut c_void,
    config: ServerConfig,
) -> Result<Box<vfio_io_server>> {
    // SAFETY: the caller passes NULL or a C string.
    let path =
        unsafe { path_arg(socket_path) }.map_err(|_| refuse("NULL or non-UTF-8 socket_path"))?;
    // SAFETY: the caller passes NULL or a valid struct of either size.
    let dev = unsafe { read_device(dev) }?;
    // SAFETY: as above.
    let ops = unsafe { read_ops(ops) }?;
    // SAFETY: `dev`'s arrays are valid per the contract.
    let mut desc = unsafe { description(&dev) }?;
    for r in desc.regions.iter().filter(|r| r.fd.is_none()) {
        let reads = r.flags & crate::device::VFIO_REGION_INFO_FLAG_READ != 0;
        let writes = r.flags & crate::device::VFIO_REGION_INFO_FLAG_WRITE != 0;
        if (reads && ops.region_read.is_none()) || (writes && ops.region_write.is_none()) {
            return Err(refuse(&format!(
                "region {} is trapped and readable/writable, but ops->region_read/write is NULL",
                r.index
            )));
        }
    }
    desc.reset = ops.reset.is_some();
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let irq_count = desc.irq_count;
    let callbacks = Callbacks {
        ops,
        opaque: opaque as usize,
        id,
    };
    let migration = MigrationCallbacks::from_ops(&ops, opaque, id)?;
    let mut model = DescribedDevice::new(desc, callbacks)?;
    if let Some(m) = migration {
        model = model.with_migration(Box::new(m));
    }
    let mut server = Server::bind(path, model, config)?;
    let handles = server
        .handle()
        .and_then(|h| Ok((h, server.poll_fd()?.as_raw_fd())));
    let (handle, poll_fd) = match handles {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };
    Ok(Box::new(vfio_io_server {
        magic: SERVER_MAGIC,
        id,
        stopper: server.stopper(),
        handle,
        poll_fd,
        running: AtomicBool::new(false),
        dispatching: AtomicBool::new(false),
        server: Mutex::new(server),
        irq_count,
        path: PathBuf::from(path),
    }))
}

/// Describes a device and listens for vfio-user clients on the Unix socket
/// `socket_path` (NUL-terminated UTF-8; it must not exist), with the
/// default server options: `vfio_io_server_create_with` with NULL options.
/// `dev` and `ops` are read during the call only; `opaque` is handed to
/// every callback. Region fds in `dev` are borrowed: the library duplicates
/// them, the caller still closes its own. Configuration space (region 7) is
/// emulated from `dev` unless it lists region 7. On success `*out` receives
/// a new server, owned by the caller, freed with `vfio_io_server_destroy`;
/// on failure `*out` is left alone. Returns 0 or -errno: -EINVAL for a NULL
/// argument, a `dev->size` or `ops->size` of no version, migration
/// callbacks given in part, or an inconsistent description or doorbell
/// (what is wrong goes to the log handler at error level), -EBADF for a
/// region fd that is not open, -EADDRINUSE when `socket_path` exists.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_create(
    socket_path: *const c_char,
    dev: *const vfio_io_server_device,
    ops: *const vfio_io_server_ops,
    opaque: *mut c_void,
    out: *mut *mut vfio_io_server,
) -> c_int {
    // SAFETY: the same contract, with NULL options.
    unsafe { vfio_io_server_create_with(socket_path, dev, ops, opaque, ptr::null(), out) }
}

/// `vfio_io_server_create` with server options `opts` (NULL: all
/// defaults): timeouts, polling and tracing of the server (see `struct
/// vfio_io_server_options`). `opts` is read during the call only.
/// `opts->size` follows the kernel's extensible structs (as `openat2`'s
/// `struct open_how`): smaller than the fields of the first version (20
/// bytes) is -EINVAL; larger than this library's struct is accepted if
/// every byte past it is zero (a newer caller leaving newer fields at their
/// defaults) and -E2BIG otherwise, or when larger than 4096. Returns 0 or
/// -errno as `vfio_io_server_create`, and besides -EINVAL for a short
/// `opts->size` or unknown `opts->flags`, -E2BIG as said.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_create_with(
    socket_path: *const c_char,
    dev: *const vfio_io_server_device,
    ops: *const vfio_io_server_ops,
    opaque: *mut c_void,
    opts: *const vfio_io_server_options,
    out: *mut *mut vfio_io_server,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return -refuse("NULL out").errno();
        }
        let made = (|| {
            // SAFETY: the caller passes NULL or options of `opts->size`
            // readable bytes.
            let config = unsafe { server_config(opts) }.inspect_err(|e| {
                log::error!(target: "vfio_io::server", "vfio_io_server_create_with: {e}");
            })?;
            // SAFETY: per this function's contract.
            unsafe { create(socket_path, dev, ops, opaque, config) }
        })();
        match made {
            Ok(srv) => {
                // SAFETY: `out` is non-NULL and writable per the contract.
                unsafe { *out = Box::into_raw(srv) };
                0
            }
            Err(e) => -e.errno(),
        }
    })
}

/// Runs `op` on the server behind `srv` under the panic guard; a NULL or
/// invalid handle gives -EINVAL.
///
/// # Safety
/// `srv` must be NULL or a live server.
unsafe fn with_server(
    srv: *const vfio_io_server,
    op: impl FnOnce(&vfio_io_server) -> c_int,
) -> c_int {
    guard(|| {
        // SAFETY: per this function's contract the pointer is NULL or live.
        match unsafe { srv.as_ref() } {
            Some(s) if s.magic == SERVER_MAGIC => op(s),
            _ => -libc::EINVAL,
        }
    })
}

/// Serves clients one after another on the calling thread until
/// `vfio_io_server_stop`; the callbacks run on this thread. A client that
/// breaks the protocol is dropped (logged) and the next one served. Returns
/// 0 once stopped (at once if it was stopped before), -EBUSY if `run` or
/// `vfio_io_server_dispatch` is already under way on another thread, -EINVAL for a NULL `srv`, or the
/// -errno of a failing accept. `srv` must be NULL or a live server.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_run(srv: *mut vfio_io_server) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        with_server(srv, |s| {
            let mut server = match s.server.try_lock() {
                Ok(g) => g,
                Err(TryLockError::WouldBlock) => return -libc::EBUSY,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
            };
            s.running.store(true, Ordering::SeqCst);
            let r = ret(server.serve().map(|()| 0));
            s.running.store(false, Ordering::SeqCst);
            r
        })
    }
}

/// The fd to poll for `vfio_io_server_dispatch`, for serving the device
/// from the caller's own event loop instead of `vfio_io_server_run`: it is
/// readable (level-triggered, `POLLIN`) while `dispatch` has work (a client
/// to accept, a command, an interrupt eventfd, a request of another thread).
/// It belongs to the server: the same fd for the server's whole life, closed
/// by `vfio_io_server_destroy`; do not close, read or write it, only poll
/// it (poll, select, or add it to an epoll set). Callable from any thread.
/// Returns the fd, or -EINVAL for a NULL `srv`. `srv` must be NULL or a
/// live server.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_poll_fd(srv: *mut vfio_io_server) -> c_int {
    // SAFETY: per the contract.
    unsafe { with_server(srv, |s| s.poll_fd) }
}

/// Clears a flag when dropped, also when unwinding.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Does what is ready on the server, without waiting for input, and returns:
/// accepts a waiting client, or handles the commands already received (a
/// bounded number; the poll fd stays readable for the rest), the interrupt
/// eventfds that fired and the requests of other threads. The callbacks run
/// on the calling thread, within this call. Call it when
/// `vfio_io_server_poll_fd` is readable; a call with nothing ready returns 0
/// at once. A command whose callback does DMA by message waits for the
/// client's reply (at most the DMA timeout), as under `run`.
///
/// One call at a time: a call while another thread's `dispatch` or
/// `vfio_io_server_run` is under way, or from within a callback of this
/// server, gets -EBUSY. Which thread calls may change from call to call. While no
/// `dispatch` is under way, `vfio_io_server_irq_trigger` and the DMA calls
/// act at once on the session from any thread; during one, another thread's
/// call is handed to it (the poll fd wakes the loop), as under `run`.
///
/// Returns 0 (also when the client left or was dropped for breaking the
/// protocol: the next call accepts the next client), -ESHUTDOWN after
/// `vfio_io_server_stop` (the session is ended), -EBUSY as above, -EINVAL
/// for a NULL `srv`, or another -errno of a failing accept or epoll call.
/// `srv` must be NULL or a live server.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_dispatch(srv: *mut vfio_io_server) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        with_server(srv, |s| {
            let in_callback = CURRENT.with(|c| c.get()).is_some_and(|(id, _)| id == s.id);
            if in_callback
                || s.running.load(Ordering::SeqCst)
                || s.dispatching.swap(true, Ordering::SeqCst)
            {
                return -libc::EBUSY;
            }
            let _done = ClearOnDrop(&s.dispatching);
            // Held briefly by another thread's interrupt or DMA, else free.
            let mut server = s.server.lock().unwrap_or_else(|p| p.into_inner());
            ret(server.dispatch().map(|()| 0))
        })
    }
}

/// Makes `vfio_io_server_run` return soon, from any thread (or from a
/// callback): the current client is disconnected at once (a request whose
/// callback stops the server gets no reply) and no other is accepted, now
/// or by a later `run`; `vfio_io_server_dispatch` returns -ESHUTDOWN from
/// then on. `srv` must be NULL (ignored) or a live server.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_stop(srv: *mut vfio_io_server) {
    // SAFETY: per the contract.
    let _ = unsafe {
        with_server(srv, |s| {
            s.stopper.stop();
            0
        })
    };
}

/// Frees a server: closes its socket and the library's duplicates of region
/// fds, and removes the socket file. `srv` must be NULL (ignored) or a live
/// server whose `vfio_io_server_run` or `vfio_io_server_dispatch` is not
/// under way (stop it and join its thread first), nor any other call on it;
/// it is invalid afterwards, and so is its poll fd.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_destroy(srv: *mut vfio_io_server) {
    let _ = guard(|| {
        // SAFETY: per the contract `srv` is NULL or live.
        if let Some(s) = unsafe { srv.as_mut() }.filter(|s| s.magic == SERVER_MAGIC) {
            s.magic = 0;
            let _ = std::fs::remove_file(&s.path);
            // SAFETY: a live server came from Box::into_raw in vfio_io_server_create.
            drop(unsafe { Box::from_raw(srv) });
        }
        0
    });
}

/// Raises vector `vector` of IRQ index `irq_index` (`VFIO_PCI_MSI_IRQ_INDEX`
/// ...) by signalling the eventfd the client attached to it.
///
/// Callable from any thread, concurrently. Inside a callback of this server
/// it acts at once on the session the callback serves. From any other
/// thread it is queued for the thread in `vfio_io_server_run` (or in
/// `vfio_io_server_dispatch`), which runs it between client commands, and
/// the caller waits for it: at most the server's DMA timeout (5 s) for it
/// to begin, so a callback that waits for such a thread delays it, but
/// cannot hang it, and gets -ETIMEDOUT back. When no thread is serving (a
/// device served by `dispatch`, between calls) the caller acts at once.
///
/// Returns 1 when an eventfd was signalled, 0 when the client attached none
/// or masked the vector; -EINVAL for a NULL `srv` or a vector the device
/// does not have, -ENOTCONN when no client is being served (none connected,
/// or `run` not under way), -ETIMEDOUT as above. `srv` must be NULL or a
/// live server.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_irq_trigger(
    srv: *mut vfio_io_server,
    irq_index: u32,
    vector: u32,
) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        with_server(srv, |s| {
            let count = s.irq_count.get(irq_index as usize).copied().unwrap_or(0);
            if irq_index >= pci_irq::COUNT || vector >= count {
                return -libc::EINVAL;
            }
            let fired = on_session(
                s,
                |ctx| Ok(ctx.trigger_irq(irq_index, vector)),
                |h| h.trigger_irq(irq_index, vector),
            );
            ret(fired.map(c_int::from))
        })
    }
}

/// Runs an interrupt or DMA request on the session of `s`: `direct` with
/// the context lent to this thread inside a callback of `s`, or with the
/// session's context when no thread serves it now (a session served by
/// `dispatch`, between calls); else `queued` through the server's handle,
/// for the thread serving it.
fn on_session<R>(
    s: &vfio_io_server,
    mut direct: impl FnMut(&mut dyn DeviceContext) -> Result<R>,
    queued: impl FnOnce(&ServerHandle) -> Result<R>,
) -> Result<R> {
    if let Some(r) = with_lent_context(s.id, &mut direct) {
        return r;
    }
    match s.server.try_lock() {
        Ok(mut server) => server.with_context(&mut direct)?,
        Err(TryLockError::Poisoned(p)) => p.into_inner().with_context(&mut direct)?,
        Err(TryLockError::WouldBlock) => queued(&s.handle),
    }
}

/// Runs a DMA of `len` bytes on the session of `srv` (see [`on_session`]):
/// 0 at once for `len` 0, else 0 or -errno.
///
/// # Safety
/// `srv` must be NULL or a live server.
unsafe fn with_dma(
    srv: *const vfio_io_server,
    len: usize,
    direct: impl FnMut(&mut dyn DeviceContext) -> Result<()>,
    queued: impl FnOnce(&ServerHandle) -> Result<()>,
) -> c_int {
    // SAFETY: per this function's contract.
    unsafe {
        with_server(srv, |s| match len {
            0 => 0,
            _ => ret(on_session(s, direct, queued).map(|()| 0)),
        })
    }
}

/// Reads `len` bytes of client memory at DMA address `iova` into `buf`:
/// through the memory the client mapped with an fd, else by a DMA_READ
/// message the client answers.
///
/// Callable from any thread, concurrently, as `vfio_io_server_irq_trigger`:
/// inside a callback of this server at once, from another thread queued for
/// the serving thread (the bytes are copied into `buf` before it returns).
///
/// Returns 0 or -errno: -EINVAL for a NULL `srv` or `buf` (with `len` > 0),
/// -EFAULT for a range the client has not mapped readable, -ETIMEDOUT when
/// the client does not answer or (from another thread) the serving thread
/// does not get to it within the DMA timeout, -ENOTCONN when no client is
/// being served. `srv` must be NULL or a live server; `buf` holds `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_dma_read(
    srv: *mut vfio_io_server,
    iova: u64,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    if buf.is_null() && len > 0 {
        return -libc::EINVAL;
    }
    let buf = buf.cast::<u8>();
    // SAFETY: per the contract `srv` is NULL or live, and a non-NULL `buf`
    // holds `len` bytes; the slice is made only when `len` > 0, by one of
    // the two closures, never both.
    unsafe {
        with_dma(
            srv,
            len,
            |ctx| ctx.dma_read(iova, std::slice::from_raw_parts_mut(buf, len)),
            |h| h.dma_read(iova, std::slice::from_raw_parts_mut(buf, len)),
        )
    }
}

/// Writes the `len` bytes of `buf` into client memory at DMA address
/// `iova`, as `vfio_io_server_dma_read` reads (mapped memory, else a
/// DMA_WRITE message); the write is logged for dirty-page tracking.
/// Callable from any thread, concurrently, as `vfio_io_server_dma_read`
/// (from another thread `buf` is copied before the call is queued).
/// Returns 0 or -errno (-EINVAL for a NULL `srv` or `buf`, -EFAULT for a
/// range not mapped writable, -ETIMEDOUT, -ENOTCONN as for
/// `vfio_io_server_dma_read`). `buf` is only read.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_server_dma_write(
    srv: *mut vfio_io_server,
    iova: u64,
    buf: *const c_void,
    len: usize,
) -> c_int {
    if buf.is_null() && len > 0 {
        return -libc::EINVAL;
    }
    let buf = buf.cast::<u8>();
    // SAFETY: as in vfio_io_server_dma_read; `buf` is only read.
    unsafe {
        with_dma(
            srv,
            len,
            |ctx| ctx.dma_write(iova, std::slice::from_raw_parts(buf, len)),
            |h| h.dma_write(iova, std::slice::from_raw_parts(buf, len)),
        )
    }
}
