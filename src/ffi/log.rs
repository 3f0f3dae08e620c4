//! Routes the crate's `log` records to a C callback.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::RwLock;

/// A C log handler: `level` is a `VFIO_IO_LOG_*` value, `msg` a NUL-terminated
/// line valid only during the call.
pub type vfio_io_log_fn =
    Option<unsafe extern "C" fn(level: c_int, msg: *const c_char, opaque: *mut c_void)>;

/// Something is really wrong (a peer broke the protocol, a device failed).
pub const VFIO_IO_LOG_ERROR: c_int = 3;
/// Something unexpected that the library worked around.
pub const VFIO_IO_LOG_WARNING: c_int = 4;
/// Noteworthy events (a client connected, a session ended).
pub const VFIO_IO_LOG_INFO: c_int = 6;
/// Detail for debugging.
pub const VFIO_IO_LOG_DEBUG: c_int = 7;

struct Handler {
    f: unsafe extern "C" fn(c_int, *const c_char, *mut c_void),
    opaque: usize,
}

static HANDLER: RwLock<Option<Handler>> = RwLock::new(None);

struct CLogger;

static LOGGER: CLogger = CLogger;

impl log::Log for CLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        HANDLER.read().map(|h| h.is_some()).unwrap_or(false)
    }

    fn log(&self, record: &log::Record<'_>) {
        let Ok(h) = HANDLER.read() else { return };
        let Some(h) = h.as_ref() else { return };
        let level = match record.level() {
            log::Level::Error => VFIO_IO_LOG_ERROR,
            log::Level::Warn => VFIO_IO_LOG_WARNING,
            log::Level::Info => VFIO_IO_LOG_INFO,
            _ => VFIO_IO_LOG_DEBUG,
        };
        let text = format!("{}", record.args()).replace('\0', " ");
        if let Ok(msg) = CString::new(text) {
            // SAFETY: the caller of vfio_io_set_log_handler promised that `f`
            // may be called with its `opaque` from any thread until replaced.
            unsafe { (h.f)(level, msg.as_ptr(), h.opaque as *mut c_void) };
        }
    }

    fn flush(&self) {}
}

/// Sets (or with NULL removes) the handler for library log lines.
pub(crate) fn set_handler(f: vfio_io_log_fn, opaque: *mut c_void, max_level: c_int) {
    let level = match max_level {
        l if l <= VFIO_IO_LOG_ERROR => log::LevelFilter::Error,
        VFIO_IO_LOG_WARNING | 5 => log::LevelFilter::Warn,
        VFIO_IO_LOG_INFO => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    if let Ok(mut h) = HANDLER.write() {
        *h = f.map(|f| Handler {
            f,
            opaque: opaque as usize,
        });
    }
    // Fails harmlessly if a Rust program installed its own logger first.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if f.is_some() {
        level
    } else {
        log::LevelFilter::Off
    });
}
