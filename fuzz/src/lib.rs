//! Helpers shared by the fuzz targets and the seed-corpus generator: a cursor
//! over the fuzz input, message framing, the few valid messages that get the
//! fuzzers past the VERSION handshake, the real fds the harnesses pass
//! (eventfds, sealed and unsealed memfds, a regular file), and the per-input
//! fd leak check.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};
use vfio_io::user::proto::{self, Header, FLAG_ERROR, FLAG_NO_REPLY, HEADER_SIZE};
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

    /// The next `n` bytes as a cursor of their own (fewer at the end), so
    /// two peers running at once each consume their own part of the input.
    pub fn split(&mut self, n: usize) -> Cursor<'a> {
        Cursor::new(self.bytes(n))
    }
}

/// Header and payload as one buffer.
pub fn frame(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A client's VERSION command payload, optionally proposing twin sockets and
/// a small max_data_xfer_size (so the server cuts its DMA into many messages).
pub fn client_version_payload(twin: bool, max_data_xfer_size: Option<u32>) -> Vec<u8> {
    let mut caps = VersionCaps {
        twin_socket: twin,
        ..VersionCaps::default()
    };
    if let Some(m) = max_data_xfer_size {
        caps.max_data_xfer_size = m;
    }
    proto::encode_version(version::MAJOR, version::MINOR, &caps.to_json())
}

/// A server's VERSION reply payload; with `twin_fd_index`, offering twin
/// sockets with the socket passed as that fd.
pub fn server_version_payload(twin_fd_index: Option<u32>) -> Vec<u8> {
    let caps = VersionCaps {
        twin_socket: twin_fd_index.is_some(),
        twin_fd_index,
        ..VersionCaps::default()
    };
    proto::encode_version(version::MAJOR, version::MINOR, &caps.to_json())
}

fn new_memfd(sealing: bool) -> OwnedFd {
    let mut flags = MFdFlags::MFD_CLOEXEC;
    if sealing {
        flags |= MFdFlags::MFD_ALLOW_SEALING;
    }
    memfd_create(c"vfio-io-fuzz", flags).expect("memfd_create")
}

/// A memfd of `len` bytes that can still shrink: the server must not map it
/// for DMA, and as an "eventfd" it must be refused.
pub fn memfd(len: i64) -> OwnedFd {
    let fd = new_memfd(false);
    nix::unistd::ftruncate(&fd, len).expect("ftruncate memfd");
    fd
}

/// The byte at `offset` of the memory the harnesses hand out for DMA: not a
/// multiple of 256 long, so a copy between two places shows as a change.
pub fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Fills the first `len` bytes of `fd` with [`pattern`].
fn fill(fd: OwnedFd, len: u64) -> OwnedFd {
    let f = File::from(fd);
    let bytes: Vec<u8> = (0..len).map(pattern).collect();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 0).expect("fill DMA memory");
    f.into()
}

/// A memfd of `len` bytes sealed against shrinking and growing, as QEMU's
/// memory backends pass them: the server maps it for DMA. Filled with
/// [`pattern`], so DMA moves something visible.
pub fn sealed_memfd(len: i64) -> OwnedFd {
    let fd = new_memfd(true);
    nix::unistd::ftruncate(&fd, len).expect("ftruncate memfd");
    let fd = fill(fd, len as u64);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )
    .expect("F_ADD_SEALS");
    fd
}

/// An unnamed regular file of `len` bytes on tmpfs (/dev/shm), or in the
/// temporary directory where /dev/shm is missing: a file that can shrink
/// while the server holds it (no seals on regular files).
pub fn shm_file(len: u64) -> File {
    let open = |dir: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir)
    };
    let f = open(std::path::Path::new("/dev/shm"))
        .or_else(|_| open(&std::env::temp_dir()))
        .expect("O_TMPFILE in /dev/shm or the temporary directory");
    f.set_len(len).expect("size the DMA file");
    fill(f.into(), len).into()
}

/// A real eventfd, non-blocking so the harness can drain it without waiting.
pub fn eventfd() -> OwnedFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .expect("eventfd")
        .into()
}

/// Waits up to `timeout` for `fd` to be readable (or hung up).
pub fn readable_within(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(
        poll(&mut p, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)),
        Ok(n) if n > 0
    )
}

/// Waits up to `timeout` for any of `fds`; returns which are readable.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> Vec<bool> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut p: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
        .collect();
    if poll(
        &mut p,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    )
    .is_err()
    {
        return vec![false; fds.len()];
    }
    p.iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect()
}

/// Number of open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Checks that one fuzz input leaves no fd open: every fd a harness, a
/// client or a server opened for the input is closed once its threads are
/// joined. Create it first thing in the input, call `check` last.
pub struct FdLeakCheck {
    before: usize,
}

impl FdLeakCheck {
    pub fn start() -> Self {
        FdLeakCheck { before: open_fds() }
    }

    /// Panics (a libFuzzer crash, with the input saved) on a leaked fd.
    pub fn check(self) {
        let after = open_fds();
        assert!(
            after <= self.before,
            "fd leak: {} open before this input, {after} after",
            self.before
        );
    }
}

/// Largest fuzz input processed; longer ones are cut so writes never fill
/// the socket buffers and block (the peers run concurrently anyway).
pub const MAX_INPUT: usize = 64 * 1024;

/// Encodes one step of the server target: (command, flags byte, fds byte,
/// payload); see fuzz_targets/server.rs for what the two bytes mean.
pub fn server_msg(command: u16, flags: u8, fds: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = command.to_le_bytes().to_vec();
    v.push(flags);
    v.push(fds);
    v.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// One step of the server targets' input, framed as a message.
pub struct Step {
    pub id: u16,
    pub bytes: Vec<u8>,
    /// The flags byte (bit 4: attach fds; bit 5: the size field lies).
    pub flags: u8,
    /// The fds byte: which fds to attach, and what the harness does around it.
    pub fds: u8,
}

/// Reads the steps (command u16 LE, flags u8, fds u8, payload length u16 LE,
/// payload) to the end of `c`, framed as messages with ids from 1 up.
pub fn read_steps(c: &mut Cursor<'_>) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut id = 1u16;
    while !c.is_empty() {
        steps.push(read_step(c, id));
        id = id.wrapping_add(1);
    }
    steps
}

fn read_step(c: &mut Cursor<'_>, id: u16) -> Step {
    let command = c.u16();
    let flags = c.u8();
    let fds = c.u8();
    let len = c.u16() as usize;
    let payload = c.bytes(len);
    let h = step_header(id, command, flags, payload.len());
    Step {
        id,
        bytes: frame(&h, payload),
        flags,
        fds,
    }
}

/// The header of one step: command `command` with `payload_len` bytes, and
/// the flags byte's bits 0-1 as the message type, bit 2 NO_REPLY, bit 3
/// ERROR, bit 5 a size field that lies (by bits 6-7 times 8, minus 4), which
/// the receiver must survive without trusting it.
fn step_header(id: u16, command: u16, flags: u8, payload_len: usize) -> Header {
    let mut h = Header::command(id, command, payload_len);
    h.flags = u32::from(flags & 3);
    if flags & 4 != 0 {
        h.flags |= FLAG_NO_REPLY;
    }
    if flags & 8 != 0 {
        h.flags |= FLAG_ERROR;
        h.error = 22;
    }
    if flags & 0x20 != 0 {
        h.size = h
            .size
            .wrapping_add(u32::from(flags >> 6) * 8)
            .wrapping_sub(4);
    }
    h
}

/// Size of a header, for callers outside vfio-io's proto module.
pub const HDR: usize = HEADER_SIZE;
