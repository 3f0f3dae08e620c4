//! The C ABI of connecting to a vfio-user server with client options, in an
//! extensible struct: a caller built against an older or newer header passes
//! its own `size`, and the library reads what both know.

use std::ffi::{c_char, c_int};
use std::time::Duration;

use super::extensible::{options_bytes, u32_at};
use super::{guard, new_handle, path_arg, vfio_io_device};
use crate::error::Result;
use crate::user::client::{Client, ClientConfig};

/// Options of `vfio_io_user_connect_with`. Zero-fill it (`= {0}` or
/// memset), set `size` to `sizeof(struct vfio_io_user_options)`, then the
/// fields wanted: a zero field means its default, so fields a later version
/// adds keep today's behaviour when left zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct vfio_io_user_options {
    /// sizeof(struct vfio_io_user_options) as the caller was compiled: the
    /// struct may grow. At least 12 (the three fields here) and at most
    /// 4096.
    pub size: u32,
    /// How long one request may wait for its reply (and a send for the
    /// socket), in milliseconds. 0: the default, 5000.
    pub timeout_ms: u32,
    /// Polling mode: a thread waiting for a reply first polls the socket
    /// with non-blocking receives for up to this many microseconds before it
    /// blocks. It pays off when the server runs on another core (it saves a
    /// thread wake-up per reply) and costs a busy CPU while it waits. 0:
    /// block at once.
    pub spin_us: u32,
}

/// The options struct of this version: what a `size` must at least cover.
const KNOWN_SIZE: usize = std::mem::size_of::<vfio_io_user_options>();

/// The client settings the caller's options ask for, checked as an
/// extensible struct ([`options_bytes`]).
///
/// # Safety
/// `opts` must be NULL or point to a uint32_t `size` followed by readable
/// memory up to `size` bytes in all (only the first 4 bytes when `size` is
/// out of range).
unsafe fn client_config(opts: *const vfio_io_user_options) -> Result<ClientConfig> {
    let mut config = ClientConfig::default();
    // SAFETY: per this function's contract.
    let Some(bytes) = (unsafe { options_bytes(opts.cast(), KNOWN_SIZE, KNOWN_SIZE) })? else {
        return Ok(config);
    };
    let (timeout_ms, spin_us) = (u32_at(&bytes, 4), u32_at(&bytes, 8));
    if timeout_ms != 0 {
        config.timeout = Duration::from_millis(timeout_ms.into());
    }
    config.spin = (spin_us != 0).then(|| Duration::from_micros(spin_us.into()));
    Ok(config)
}

/// Connects to the vfio-user server listening on the Unix socket
/// `socket_path` (a NUL-terminated UTF-8 path) as `vfio_io_user_connect`
/// does, with the client options in `opts` (NULL: all defaults). On success
/// `*out` receives a new handle, owned by the caller, who frees it with
/// `vfio_io_device_close`; on failure `*out` is left alone. `opts->size`
/// follows the kernel's extensible structs (as `openat2`'s `struct
/// open_how`): smaller than the fields of the first version (12 bytes) is
/// -EINVAL; larger than this library's struct is accepted if every byte
/// past it is zero (a newer caller leaving newer fields at their defaults)
/// and -E2BIG otherwise, or when larger than 4096. Returns 0 or -errno:
/// -EINVAL for a NULL `socket_path` or `out` or a short `size`, -E2BIG as
/// said, -ENOENT or -ECONNREFUSED when nothing listens, -EPROTO when the
/// peer does not speak vfio-user, -ETIMEDOUT when it does not answer within
/// the timeout.
#[no_mangle]
pub unsafe extern "C" fn vfio_io_user_connect_with(
    socket_path: *const c_char,
    opts: *const vfio_io_user_options,
    out: *mut *mut vfio_io_device,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        let r = (|| {
            // SAFETY: the caller passes NULL or a C string.
            let path = unsafe { path_arg(socket_path) }?;
            // SAFETY: the caller passes NULL or options of `opts->size`
            // readable bytes.
            let config = unsafe { client_config(opts) }?;
            Client::connect(path, config)
        })();
        match r {
            Ok(c) => {
                // SAFETY: `out` is non-NULL and writable per the contract.
                unsafe { *out = new_handle(Box::new(c)) };
                0
            }
            Err(e) => -e.errno(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::extensible::MAX_SIZE;
    use super::*;

    /// The options in a buffer of `size` bytes, with `tail` past the fields.
    fn options(size: usize, timeout_ms: u32, spin_us: u32, tail: u8) -> Vec<u32> {
        let mut words = vec![u32::from_ne_bytes([tail; 4]); size.div_ceil(4).max(3)];
        words[..3].copy_from_slice(&[size as u32, timeout_ms, spin_us]);
        words
    }

    fn config_of(words: &[u32]) -> Result<ClientConfig> {
        // SAFETY: `words` holds at least `size` bytes.
        unsafe { client_config(words.as_ptr().cast()) }
    }

    #[test]
    fn fields_become_the_client_config_and_zero_is_the_default() {
        let c = config_of(&options(12, 250, 40, 0)).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.spin, Some(Duration::from_micros(40)));
        let c = config_of(&options(12, 0, 0, 0)).unwrap();
        let d = ClientConfig::default();
        assert_eq!((c.timeout, c.spin), (d.timeout, d.spin));
        // SAFETY: NULL is part of the contract.
        let c = unsafe { client_config(std::ptr::null()) }.unwrap();
        assert_eq!((c.timeout, c.spin), (d.timeout, d.spin));
    }

    #[test]
    fn sizes_are_checked_like_the_kernels_extensible_structs() {
        assert_eq!(KNOWN_SIZE, 12);
        let errno = |w: &[u32]| config_of(w).map(|_| 0).unwrap_or_else(|e| e.errno());
        assert_eq!(errno(&options(0, 0, 0, 0)), libc::EINVAL);
        assert_eq!(errno(&options(8, 0, 0, 0)), libc::EINVAL);
        assert_eq!(errno(&options(11, 0, 0, 0)), libc::EINVAL);
        assert_eq!(errno(&options(64, 0, 7, 0)), 0);
        assert_eq!(
            config_of(&options(64, 0, 7, 0)).unwrap().spin,
            Some(Duration::from_micros(7))
        );
        assert_eq!(errno(&options(13, 0, 0, 1)), libc::E2BIG);
        assert_eq!(errno(&options(64, 0, 0, 0xff)), libc::E2BIG);
        assert_eq!(errno(&options(MAX_SIZE, 0, 0, 0)), 0);
        // Only the size word is read past the bound, so this buffer is short.
        assert_eq!(errno(&[MAX_SIZE as u32 + 1, 0, 0]), libc::E2BIG);
        assert_eq!(errno(&[u32::MAX, 0, 0]), libc::E2BIG);
    }

    #[test]
    fn bad_arguments_fail_before_connecting() {
        let mut out: *mut vfio_io_device = std::ptr::null_mut();
        let small = options(4, 0, 0, 0);
        // SAFETY: NULL and short options are part of the documented contract.
        unsafe {
            let o = small.as_ptr().cast();
            assert_eq!(
                vfio_io_user_connect_with(c"/nonexistent/s".as_ptr(), o, &mut out),
                -libc::EINVAL
            );
            assert_eq!(
                vfio_io_user_connect_with(std::ptr::null(), std::ptr::null(), &mut out),
                -libc::EINVAL
            );
            let none = std::ptr::null_mut();
            assert_eq!(
                vfio_io_user_connect_with(c"/nonexistent/s".as_ptr(), std::ptr::null(), none),
                -libc::EINVAL
            );
            assert_eq!(
                vfio_io_user_connect_with(c"/nonexistent/s".as_ptr(), std::ptr::null(), &mut out),
                -libc::ENOENT
            );
        }
        assert!(out.is_null());
    }
}
