//! The migration callbacks of `struct vfio_io_server_ops` as the server's
//! [`Migratable`] hooks: checked at create time (all four or none), with
//! the session's context lent to `migration_stop` and `migration_resume`
//! as to the region callbacks, and `migration_save`'s snprintf-style
//! length answer turned into one buffer of the state's size.

use std::ffi::{c_int, c_void};

use super::server::{
    callback_result, in_callback_without_context, lend_context, refuse, vfio_io_server_ops,
};
use crate::error::{Error, Result};
use crate::user::server::{DeviceContext, Migratable};

/// The save callback.
type SaveFn = unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> libc::ssize_t;
/// The load callback.
type LoadFn = unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> c_int;
/// The stop and resume callbacks.
type StepFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// The first buffer `migration_save` gets, unless the device's longest
/// state is shorter: a small state is saved in one call.
const FIRST_SAVE_LEN: usize = 4096;
/// Calls of `migration_save` per state: the first, and one with the
/// length it asked for; more means its state changed while stopped.
const SAVE_CALLS: usize = 2;

/// A C device's migration callbacks and the opaque they get.
pub(super) struct MigrationCallbacks {
    stop: StepFn,
    resume: StepFn,
    save: SaveFn,
    load: LoadFn,
    max_state_len: usize,
    /// The caller's pointer, only handed back to its callbacks.
    opaque: usize,
    /// The server whose context `stop` and `resume` are lent.
    id: u64,
}

impl MigrationCallbacks {
    /// The hooks in `ops`: `None` when all four callbacks are NULL, an
    /// error (logged) when only some are or the longest state is 0.
    pub(super) fn from_ops(
        ops: &vfio_io_server_ops,
        opaque: *mut c_void,
        id: u64,
    ) -> Result<Option<Self>> {
        let given = [
            ops.migration_stop.is_some(),
            ops.migration_resume.is_some(),
            ops.migration_save.is_some(),
            ops.migration_load.is_some(),
        ];
        let (Some(stop), Some(resume), Some(save), Some(load)) = (
            ops.migration_stop,
            ops.migration_resume,
            ops.migration_save,
            ops.migration_load,
        ) else {
            if given.contains(&true) {
                return Err(refuse(
                    "ops->migration_stop, _resume, _save and _load are given together or not at all",
                ));
            }
            return Ok(None);
        };
        if ops.migration_max_state_len == 0 {
            return Err(refuse(
                "ops->migration_max_state_len is 0 while the migration callbacks are given",
            ));
        }
        Ok(Some(MigrationCallbacks {
            stop,
            resume,
            save,
            load,
            max_state_len: ops.migration_max_state_len,
            opaque: opaque as usize,
            id,
        }))
    }

    /// Runs `migration_stop` or `migration_resume` with `ctx` lent.
    fn step(&self, ctx: &mut dyn DeviceContext, what: &'static str, f: StepFn) -> Result<()> {
        let opaque = self.opaque as *mut c_void;
        // SAFETY: the caller of vfio_io_server_create promised the callback
        // may be called with its opaque. Any result but -errno is success.
        let r = lend_context(self.id, ctx, || unsafe { f(opaque) });
        callback_result(what, (r as libc::ssize_t).min(0), 0)
    }

    /// One call of `migration_save` with a `buf.len()`-byte buffer: the
    /// state's length, or the callback's error.
    fn save_into(&self, buf: &mut [u8]) -> Result<usize> {
        let what = "device migration_save callback";
        // SAFETY: as in `step`; `buf` is valid for `buf.len()` bytes.
        let r = in_callback_without_context(self.id, libc::EBUSY, || unsafe {
            (self.save)(
                self.opaque as *mut c_void,
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        });
        match usize::try_from(r) {
            Ok(n) if n <= self.max_state_len => Ok(n),
            Ok(n) => {
                log::error!(target: "vfio_io::server",
                    "{what} returned {n} bytes, above migration_max_state_len {}", self.max_state_len);
                Err(Error::Errno {
                    op: what,
                    errno: libc::EIO,
                })
            }
            Err(_) => callback_result(what, r, 0).map(|()| 0),
        }
    }
}

impl Migratable for MigrationCallbacks {
    fn stop(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        self.step(ctx, "device migration_stop callback", self.stop)
    }

    fn resume(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        self.step(ctx, "device migration_resume callback", self.resume)
    }

    fn save(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.max_state_len.min(FIRST_SAVE_LEN)];
        for _ in 0..SAVE_CALLS {
            let n = self.save_into(&mut buf)?;
            if n <= buf.len() {
                buf.truncate(n);
                return Ok(buf);
            }
            buf.resize(n, 0);
        }
        log::error!(target: "vfio_io::server",
            "device migration_save callback asked for a longer buffer twice: its state changed while stopped");
        Err(Error::Errno {
            op: "device migration_save callback",
            errno: libc::EIO,
        })
    }

    fn load(&mut self, stream: &[u8]) -> Result<()> {
        // SAFETY: as in `step`; `stream` is valid for its length and only read.
        let r = in_callback_without_context(self.id, libc::EBUSY, || unsafe {
            (self.load)(
                self.opaque as *mut c_void,
                stream.as_ptr().cast(),
                stream.len(),
            )
        });
        callback_result(
            "device migration_load callback",
            (r as libc::ssize_t).min(0),
            0,
        )
    }

    fn max_stream_len(&self) -> usize {
        self.max_state_len
    }
}
