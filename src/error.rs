//! The library's error type: every failure maps to one errno for the C ABI.

use std::fmt;

/// Why an operation failed. Each variant keeps the errno it reports to C.
#[derive(Debug)]
pub enum Error {
    /// A system call failed.
    Sys {
        /// What was being done.
        op: &'static str,
        /// The errno the kernel returned.
        errno: i32,
    },
    /// The vfio-user peer answered a command with an error reply.
    Remote {
        /// The vfio-user command number.
        command: u16,
        /// The errno carried by the reply (`EIO` if the peer sent 0).
        errno: i32,
    },
    /// The peer broke the protocol; the connection is no longer usable.
    Protocol(String),
    /// An argument is out of range or malformed.
    InvalidArgument(&'static str),
    /// The device or backend lacks the operation.
    Unsupported(&'static str),
    /// No reply came within the configured timeout.
    Timeout,
    /// The connection to the peer is closed.
    Disconnected,
}

impl Error {
    /// The positive errno this error reports through the C ABI.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Sys { errno, .. } | Error::Remote { errno, .. } => *errno,
            Error::Protocol(_) => libc::EPROTO,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::Unsupported(_) => libc::ENOTTY,
            Error::Timeout => libc::ETIMEDOUT,
            Error::Disconnected => libc::ENOTCONN,
        }
    }

    /// An error from a failed system call.
    pub fn sys(op: &'static str, errno: nix::errno::Errno) -> Self {
        Error::Sys {
            op,
            errno: errno as i32,
        }
    }

    /// An error from a `std::io::Error`.
    pub fn io(op: &'static str, e: &std::io::Error) -> Self {
        Error::Sys {
            op,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sys { op, errno } => {
                write!(f, "{op}: {}", std::io::Error::from_raw_os_error(*errno))
            }
            Error::Remote { command, errno } => write!(
                f,
                "vfio-user command {command} failed on the peer: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::Protocol(m) => write!(f, "vfio-user protocol error: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Unsupported(m) => write!(f, "not supported: {m}"),
            Error::Timeout => write!(f, "timed out waiting for the peer"),
            Error::Disconnected => write!(f, "the peer has disconnected"),
        }
    }
}

impl std::error::Error for Error {}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;
