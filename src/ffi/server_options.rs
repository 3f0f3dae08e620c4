//! The options of a served device (`struct vfio_io_server_options`), an
//! extensible struct turned into the server's [`ServerConfig`].

use std::time::Duration;

use super::extensible::{options_bytes, u32_at};
use crate::error::{Error, Result};
use crate::user::server::ServerConfig;

/// `vfio_io_server_options` flag: log every command a client sends, at
/// info level (`VFIO_IO_LOG_INFO`), to the log handler.
pub const VFIO_IO_SERVER_TRACE: u32 = 1 << 0;

/// Options of `vfio_io_server_create_with`. Zero-fill it (`= {0}` or
/// memset), set `size` to `sizeof(struct vfio_io_server_options)`, then the
/// fields wanted: a zero field means its default, so fields a later version
/// adds keep today's behaviour when left zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct vfio_io_server_options {
    /// sizeof(struct vfio_io_server_options) as the caller was compiled:
    /// the struct may grow. At least 20 (the five fields here) and at most
    /// 4096.
    pub size: u32,
    /// How long a send to the client may take before the session is ended,
    /// in milliseconds. 0: the default, 5000.
    pub timeout_ms: u32,
    /// How long a DMA by message (`vfio_io_server_dma_read`/`_write` on
    /// memory the client mapped without an fd) waits for the client's
    /// answer, and a call from another thread for the serving thread to
    /// take it up, in milliseconds; past it the call gives -ETIMEDOUT and
    /// the session goes on. 0: the default, 5000.
    pub dma_timeout_ms: u32,
    /// Polling mode: the serving thread polls the client's socket with
    /// non-blocking receives for up to this many microseconds before it
    /// blocks for the next command (or DMA answer). It pays off when the
    /// server has a core of its own (it saves a thread wake-up per message)
    /// and costs a busy CPU while it waits. 0: block at once.
    pub spin_us: u32,
    /// `VFIO_IO_SERVER_TRACE` or 0; other bits are refused (-EINVAL).
    pub flags: u32,
}

/// The options struct of this version, also its first: what a `size` must
/// at least cover.
const KNOWN_SIZE: usize = std::mem::size_of::<vfio_io_server_options>();

/// The server settings the caller's options ask for: the defaults for NULL.
///
/// # Safety
/// `opts` must be NULL or point to a uint32_t `size` followed by readable
/// memory up to `size` bytes in all (only the first 4 bytes when `size` is
/// out of range).
pub(super) unsafe fn server_config(opts: *const vfio_io_server_options) -> Result<ServerConfig> {
    let mut config = ServerConfig::default();
    // SAFETY: per this function's contract.
    let Some(bytes) = (unsafe { options_bytes(opts.cast(), KNOWN_SIZE, KNOWN_SIZE) })? else {
        return Ok(config);
    };
    let [timeout_ms, dma_timeout_ms, spin_us, flags] = [4, 8, 12, 16].map(|at| u32_at(&bytes, at));
    if flags & !VFIO_IO_SERVER_TRACE != 0 {
        return Err(Error::InvalidArgument(
            "vfio_io_server_options flags this library does not know",
        ));
    }
    if timeout_ms != 0 {
        config.timeout = Duration::from_millis(timeout_ms.into());
    }
    if dma_timeout_ms != 0 {
        config.dma_timeout = Duration::from_millis(dma_timeout_ms.into());
    }
    config.spin = (spin_us != 0).then(|| Duration::from_micros(spin_us.into()));
    config.trace = flags & VFIO_IO_SERVER_TRACE != 0;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::super::extensible::MAX_SIZE;
    use super::*;

    /// The options in a buffer of `size` bytes, with `tail` past the fields.
    fn options(size: usize, fields: [u32; 4], tail: u8) -> Vec<u32> {
        let mut words = vec![u32::from_ne_bytes([tail; 4]); size.div_ceil(4).max(5)];
        words[0] = size as u32;
        words[1..5].copy_from_slice(&fields);
        words
    }

    fn config_of(words: &[u32]) -> Result<ServerConfig> {
        // SAFETY: `words` holds at least `size` bytes.
        unsafe { server_config(words.as_ptr().cast()) }
    }

    #[test]
    fn fields_become_the_server_config_and_zero_is_the_default() {
        let c = config_of(&options(20, [250, 40, 7, VFIO_IO_SERVER_TRACE], 0)).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.dma_timeout, Duration::from_millis(40));
        assert_eq!(c.spin, Some(Duration::from_micros(7)));
        assert!(c.trace);
        let d = ServerConfig::default();
        let fields = |c: &ServerConfig| (c.timeout, c.dma_timeout, c.spin, c.trace);
        assert_eq!(
            fields(&config_of(&options(20, [0; 4], 0)).unwrap()),
            fields(&d)
        );
        // SAFETY: NULL is part of the contract.
        let null = unsafe { server_config(std::ptr::null()) }.unwrap();
        assert_eq!(fields(&null), fields(&d));
    }

    #[test]
    fn sizes_and_flags_are_checked() {
        assert_eq!(KNOWN_SIZE, 20);
        let errno = |w: &[u32]| config_of(w).map(|_| 0).unwrap_or_else(|e| e.errno());
        assert_eq!(errno(&options(0, [0; 4], 0)), libc::EINVAL);
        assert_eq!(errno(&options(16, [0; 4], 0)), libc::EINVAL);
        assert_eq!(errno(&options(19, [0; 4], 0)), libc::EINVAL);
        assert_eq!(errno(&options(64, [0, 9, 0, 0], 0)), 0);
        assert_eq!(
            config_of(&options(64, [0, 9, 0, 0], 0))
                .unwrap()
                .dma_timeout,
            Duration::from_millis(9)
        );
        assert_eq!(errno(&options(21, [0; 4], 1)), libc::E2BIG);
        assert_eq!(errno(&options(MAX_SIZE, [0; 4], 0)), 0);
        assert_eq!(errno(&[MAX_SIZE as u32 + 1, 0, 0, 0, 0]), libc::E2BIG);
        assert_eq!(errno(&options(20, [0, 0, 0, 2], 0)), libc::EINVAL);
    }
}
