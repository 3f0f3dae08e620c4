//! The library's error type: every failure maps to one errno for the C ABI.

use std::fmt;

/// Why an operation failed. [`Error::errno`] gives the errno each variant
/// reports to C.
#[derive(Debug)]
pub enum Error {
    /// An operation failed with an errno: a system call's, or one the library
    /// chose for a failure of its own (`EFAULT` for DMA outside a mapping).
    Errno {
        /// What was being done.
        op: &'static str,
        /// The errno it failed with; reported to C as is.
        errno: i32,
    },
    /// A `std::io` operation failed; the [`std::io::Error`] is kept as the
    /// [`source`](std::error::Error::source).
    Io {
        /// What was being done.
        op: &'static str,
        /// The error `std` returned. Its OS errno is reported to C, or `EIO`
        /// if it carries none.
        source: std::io::Error,
    },
    /// The vfio-user peer answered a command with an error reply.
    Remote {
        /// The vfio-user command number.
        command: u16,
        /// The errno carried by the reply (`EIO` if the peer sent 0); reported
        /// to C as is.
        errno: i32,
    },
    /// The peer broke the protocol; the connection is no longer usable.
    /// Reported to C as `EPROTO`.
    Protocol(String),
    /// A device did something other than its specification says, e.g. a
    /// register read returned another value (the conformance suite's finding).
    ///
    /// Reported to C as `EIO`: the transport worked and the peer spoke the
    /// protocol, so `EPROTO` would blame the wrong party and `EBADMSG` a
    /// malformed message that was not there; the device itself answered
    /// wrongly, which is what `EIO` reports for hardware.
    Mismatch {
        /// What was checked, e.g. `identification register`.
        what: String,
        /// What the specification says.
        expected: String,
        /// What the device did.
        got: String,
    },
    /// An argument is out of range or malformed. Reported to C as `EINVAL`.
    InvalidArgument(&'static str),
    /// The device or backend lacks the operation. Reported to C as `ENOTTY`,
    /// the kernel's answer to an ioctl a driver does not know.
    Unsupported(&'static str),
    /// No reply came within the configured timeout. Reported to C as
    /// `ETIMEDOUT`.
    Timeout,
    /// The connection to the peer is closed. Reported to C as `ENOTCONN`.
    Disconnected,
}

impl Error {
    /// The positive errno this error reports through the C ABI.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Errno { errno, .. } | Error::Remote { errno, .. } => *errno,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Protocol(_) => libc::EPROTO,
            Error::Mismatch { .. } => libc::EIO,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::Unsupported(_) => libc::ENOTTY,
            Error::Timeout => libc::ETIMEDOUT,
            Error::Disconnected => libc::ENOTCONN,
        }
    }

    /// An error from a failed system call.
    pub fn sys(op: &'static str, errno: nix::errno::Errno) -> Self {
        Error::Errno {
            op,
            errno: errno as i32,
        }
    }

    /// An error from a failed `std::io` operation, keeping `source`.
    pub fn io(op: &'static str, source: std::io::Error) -> Self {
        Error::Io { op, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Errno { op, errno } => {
                write!(f, "{op}: {}", std::io::Error::from_raw_os_error(*errno))
            }
            Error::Io { op, source } => write!(f, "{op}: {source}"),
            Error::Remote { command, errno } => write!(
                f,
                "vfio-user command {command} failed on the peer: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::Protocol(m) => write!(f, "vfio-user protocol error: {m}"),
            Error::Mismatch {
                what,
                expected,
                got,
            } => write!(f, "{what}: expected {expected}, got {got}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Unsupported(m) => write!(f, "not supported: {m}"),
            Error::Timeout => write!(f, "timed out waiting for the peer"),
            Error::Disconnected => write!(f, "the peer has disconnected"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;

    use super::*;

    #[test]
    fn errno_variant_reports_its_errno() {
        let e = Error::sys("open", nix::errno::Errno::EACCES);
        assert_eq!(e.errno(), libc::EACCES);
        assert!(e.source().is_none());
        assert_eq!(e.to_string(), "open: Permission denied (os error 13)");
    }

    #[test]
    fn io_variant_reports_the_os_errno_and_keeps_the_io_error() {
        let e = Error::io("connect", io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(e.errno(), libc::ECONNREFUSED);
        let src = e.source().expect("the io::Error is the source");
        let src = src.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(src.raw_os_error(), Some(libc::ECONNREFUSED));
        // The same text the errno alone gave.
        assert_eq!(
            e.to_string(),
            format!(
                "connect: {}",
                io::Error::from_raw_os_error(libc::ECONNREFUSED)
            )
        );
    }

    #[test]
    fn io_variant_without_an_os_errno_reports_eio() {
        let e = Error::io("spawn", io::Error::other("no thread"));
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(e.source().unwrap().to_string(), "no thread");
        assert_eq!(e.to_string(), "spawn: no thread");
    }

    #[test]
    fn remote_reports_the_peers_errno() {
        let e = Error::Remote {
            command: 9,
            errno: libc::EBUSY,
        };
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(e.source().is_none());
    }

    #[test]
    fn protocol_reports_eproto() {
        assert_eq!(Error::Protocol("short".into()).errno(), libc::EPROTO);
    }

    #[test]
    fn mismatch_reports_eio_and_names_both_values() {
        let e = Error::Mismatch {
            what: "identification register".into(),
            expected: "0x10000ed".into(),
            got: "0x10000ec".into(),
        };
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.source().is_none());
        assert_eq!(
            e.to_string(),
            "identification register: expected 0x10000ed, got 0x10000ec"
        );
    }

    #[test]
    fn invalid_argument_reports_einval() {
        assert_eq!(Error::InvalidArgument("size").errno(), libc::EINVAL);
    }

    #[test]
    fn unsupported_reports_enotty() {
        assert_eq!(Error::Unsupported("reset").errno(), libc::ENOTTY);
    }

    #[test]
    fn timeout_reports_etimedout() {
        assert_eq!(Error::Timeout.errno(), libc::ETIMEDOUT);
    }

    #[test]
    fn disconnected_reports_enotconn() {
        assert_eq!(Error::Disconnected.errno(), libc::ENOTCONN);
    }
}
