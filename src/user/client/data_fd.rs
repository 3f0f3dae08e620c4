//! The kernel's migration road over vfio-user: SET MIG_DEVICE_STATE through
//! `device_feature` hands the caller a `data_fd`, as kernel VFIO does.
//!
//! vfio-user moves the state stream in MIG_DATA_READ/WRITE messages and the
//! server has no fd to give, so the client makes one: a socketpair. Entering
//! STOP_COPY the caller gets the end to read; a thread fills the other end
//! with MIG_DATA_READ chunks until the stream ends, then closes it, and the
//! caller reads to EOF. Entering RESUMING the caller gets the end to write;
//! the thread turns what arrives into MIG_DATA_WRITE messages.
//!
//! The next state change first finishes the thread: in RESUMING it hands the
//! device every byte already written, whether or not the caller closed its
//! end, so the stream is whole before the state moves on. A failure of the
//! thread (the device refusing a write, a lying server) comes back from that
//! state change, which then changes nothing. Until then a failed RESUMING
//! thread keeps taking (and dropping) the caller's bytes, so the caller's
//! writes never fail halfway; a failed STOP_COPY thread closes its end, so
//! the caller reads an early EOF and learns why from the state change.

use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, send, MsgFlags};

use super::migration::MigrationLink;
use super::Client;
use crate::bytes::{put_u32, u32_at};
use crate::error::{Error, Result};
use crate::migration::{requested_state, DeviceMigration, MigrationState};
use crate::user::proto::MigStateMsg;
use vfio_bindings::bindings::vfio::{VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_SET};

/// The most bytes moved per MIG_DATA_READ or MIG_DATA_WRITE by the thread.
const CHUNK: usize = 64 * 1024;

/// Which way the stream goes through the data fd.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// STOP_COPY: from the device to the caller.
    Save,
    /// RESUMING: from the caller to the device.
    Load,
}

/// The thread that moves one state stream between the caller's data fd and
/// the device.
pub(super) struct DataFd {
    /// The write end of a pipe the thread polls; closing it asks the thread
    /// to finish.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl DataFd {
    /// Starts the thread; returns it and the caller's end of the data fd.
    fn start(link: Arc<MigrationLink>, dir: Direction) -> Result<(DataFd, OwnedFd)> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| Error::io("socketpair for the data fd", e))?;
        ours.set_nonblocking(true)
            .map_err(|e| Error::io("make the data fd's socket nonblocking", e))?;
        // The caller's end goes one way only; the other way fails at once.
        let _ = theirs.shutdown(match dir {
            Direction::Save => Shutdown::Write,
            Direction::Load => Shutdown::Read,
        });
        let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("pipe for the data fd's thread", e))?;
        let thread = std::thread::Builder::new()
            .name("vfio-io-data-fd".into())
            .spawn(move || match dir {
                Direction::Save => save(&link, &ours, &stop_rx),
                Direction::Load => load(&link, &ours, &stop_rx),
            })
            .map_err(|e| Error::io("start the data fd's thread", e))?;
        let bridge = DataFd {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        Ok((bridge, theirs.into()))
    }

    /// Asks the thread to finish (in RESUMING: after taking every byte
    /// already written), waits for it and returns its result.
    fn finish(mut self) -> Result<()> {
        self.stop.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Errno {
                op: "the data fd's thread panicked",
                errno: libc::EIO,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for DataFd {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// STOP_COPY: reads the stream off the device into `sock` until it ends;
/// returning closes `sock`, which the caller reads as EOF. Stops early,
/// without error, when the caller closes its end or `stop` closes.
fn save(link: &MigrationLink, sock: &UnixStream, stop: &OwnedFd) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = link.read(&mut buf)?;
        if n == 0 || !send_all(sock, &buf[..n], stop)? {
            return Ok(());
        }
    }
}

/// Sends all of `data` on the nonblocking `sock`, waiting for room. Returns
/// false when the caller closed its end or `stop` closed first.
fn send_all(sock: &UnixStream, mut data: &[u8], stop: &OwnedFd) -> Result<bool> {
    while !data.is_empty() {
        // MSG_NOSIGNAL: a caller that closed its end is no SIGPIPE here.
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match send(sock.as_raw_fd(), data, flags) {
            Ok(n) => data = &data[n..],
            Err(Errno::EAGAIN) => {
                if !wait(sock, PollFlags::POLLOUT, stop)? {
                    return Ok(false);
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Ok(false),
            Err(e) => return Err(Error::sys("send on the data fd", e)),
        }
    }
    Ok(true)
}

/// RESUMING: hands what the caller writes into `sock` to the device until
/// the caller closes its end, or `stop` closes and every byte written before
/// is taken. After a failure it keeps taking (and dropping) the caller's
/// bytes, and returns the failure at the end.
fn load(link: &MigrationLink, sock: &UnixStream, stop: &OwnedFd) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut failed = None;
    let mut stopping = false;
    loop {
        match recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => break,
            Ok(n) if failed.is_none() => failed = write_all(link, &buf[..n]).err(),
            Ok(_) => {}
            // Everything written before `stop` closed is in the socket by
            // now: an empty socket after that is the end.
            Err(Errno::EAGAIN) if stopping => break,
            Err(Errno::EAGAIN) => stopping = !wait(sock, PollFlags::POLLIN, stop)?,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("recv on the data fd", e)),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// MIG_DATA_WRITE of all of `data`.
fn write_all(link: &MigrationLink, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match link.write(data)? {
            0 => {
                return Err(Error::Errno {
                    op: "MIG_DATA_WRITE took nothing",
                    errno: libc::EIO,
                })
            }
            n => data = &data[n..],
        }
    }
    Ok(())
}

/// Waits until `sock` is ready for `events` (or hung up) or `stop` closes.
/// Returns false for the latter.
fn wait(sock: &UnixStream, events: PollFlags, stop: &OwnedFd) -> Result<bool> {
    loop {
        let mut fds = [
            PollFd::new(sock.as_fd(), events),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll the data fd", e)),
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[0]) {
            return Ok(true);
        }
        if ready(&fds[1]) {
            return Ok(false);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Moves the device to `to`, once the data fd of the current state (if
    /// any) has finished: its failure is returned and the state stays. With
    /// `open_fd`, a walk that entered STOP_COPY or RESUMING returns the
    /// caller's end of a new data fd.
    pub(super) fn change_state(
        &self,
        to: MigrationState,
        open_fd: bool,
    ) -> Result<Option<OwnedFd>> {
        let mut slot = lock(&self.data_fd);
        if let Some(old) = slot.take() {
            old.finish()?;
        }
        let moved = self.walk_to(to)?;
        let dir = match to {
            _ if !(open_fd && moved) => return Ok(None),
            MigrationState::StopCopy => Direction::Save,
            MigrationState::Resuming => Direction::Load,
            _ => return Ok(None),
        };
        let (bridge, fd) = DataFd::start(Arc::clone(&self.migration), dir)?;
        *slot = Some(bridge);
        Ok(Some(fd))
    }

    /// `EBUSY` while the state stream moves through a data fd: the explicit
    /// reads and writes would tear it.
    pub(super) fn check_no_data_fd(&self) -> Result<()> {
        match *lock(&self.data_fd) {
            Some(_) => Err(Error::Errno {
                op: "the state stream moves through a data fd",
                errno: libc::EBUSY,
            }),
            None => Ok(()),
        }
    }

    /// GET or SET of `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` as the kernel
    /// answers it: `data` is `struct vfio_device_feature_mig_state`, whose
    /// `data_fd` comes back as a new fd the caller owns (SET into STOP_COPY
    /// or RESUMING) or -1.
    pub(super) fn mig_device_state_feature(&self, flags: u32, data: &mut [u8]) -> Result<i32> {
        let get = flags & VFIO_DEVICE_FEATURE_GET != 0;
        let set = flags & VFIO_DEVICE_FEATURE_SET != 0;
        if data.len() < MigStateMsg::SIZE || get == set {
            return Err(Error::InvalidArgument(
                "MIG_DEVICE_STATE takes GET or SET and a vfio_device_feature_mig_state",
            ));
        }
        let (state, fd) = if get {
            (self.get_state()?, None)
        } else {
            let to = requested_state(u32_at(data, 0).unwrap_or(0))?;
            (to, self.change_state(to, true)?)
        };
        put_u32(data, 0, state as u32);
        let fd = fd.map_or(-1, IntoRawFd::into_raw_fd);
        data[4..8].copy_from_slice(&fd.to_ne_bytes());
        Ok(0)
    }
}
