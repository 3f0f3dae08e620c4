//! Helpers shared by the fuzz targets and the seed-corpus generator: a cursor
//! over the fuzz input, message framing, and the few valid messages that get
//! the fuzzers past the VERSION handshake.

use std::os::fd::{FromRawFd, OwnedFd};

use vfio_io::user::proto::{self, Header, HEADER_SIZE};
use vfio_io::user::version::{self, VersionCaps};

/// Reads structured values off the fuzz input; past the end everything is 0
/// so every input, however short, decodes to some scenario.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let v = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        v
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }
}

/// Header and payload as one buffer.
pub fn frame(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A client's VERSION command payload, optionally proposing twin sockets.
pub fn client_version_payload(twin: bool) -> Vec<u8> {
    let caps = VersionCaps {
        twin_socket: twin,
        ..VersionCaps::default()
    };
    proto::encode_version(version::MAJOR, version::MINOR, &caps.to_json())
}

/// A server's VERSION reply payload, declining twin sockets (so no fd is needed).
pub fn server_version_payload() -> Vec<u8> {
    let caps = VersionCaps {
        twin_socket: false,
        ..VersionCaps::default()
    };
    proto::encode_version(version::MAJOR, version::MINOR, &caps.to_json())
}

/// A small memfd to attach to messages: DMA_MAP maps it, SET_IRQS uses it as
/// an eventfd stand-in (writes of 8 bytes succeed), the client mmaps it as a
/// region fd.
pub fn memfd(len: i64) -> OwnedFd {
    // SAFETY: memfd_create takes a NUL-terminated name (a C string literal)
    // and flags; it returns a new fd or -1 and touches no memory of ours.
    let fd = unsafe { libc::memfd_create(c"vfio-io-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd was just created by memfd_create and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on an fd we own; failure only leaves it 0 bytes long.
    unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len) };
    fd
}

/// Largest fuzz input processed; longer ones are cut so writes never fill
/// the socket buffers and block (the peers run concurrently anyway).
pub const MAX_INPUT: usize = 64 * 1024;

/// Encodes a server-target input message: (command, flags byte, payload).
pub fn server_msg(command: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = command.to_le_bytes().to_vec();
    v.push(flags);
    v.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Size of a header, for callers outside vfio-io's proto module.
pub const HDR: usize = HEADER_SIZE;
