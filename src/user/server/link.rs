//! The link that carries server-to-client requests (DMA_READ, DMA_WRITE):
//! sending one, waiting for its reply under a deadline, holding back client
//! commands that arrive meanwhile, and remembering requests given up on so a
//! late reply never answers a newer one.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::ServerConfig;
use crate::error::{Error, Result};
use crate::user::proto::{cmd, DmaAccess, Header};
use crate::user::version;
use crate::user::wire::{send_msg, Outbox, Receiver};

/// A client command held back while the server waited for a DMA reply.
pub(super) struct Queued {
    pub(super) header: Header,
    pub(super) payload: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
}

/// The sockets of a session and the commands queued on them.
pub(super) struct Link {
    /// The main socket: client commands in, replies out.
    pub(super) sock: Arc<OwnedFd>,
    pub(super) rx: Receiver,
    /// The twin socket, when negotiated: server-to-client requests go there.
    twin_sock: Option<OwnedFd>,
    twin_rx: Receiver,
    /// Client commands that arrived while a DMA reply was awaited.
    pub(super) queued: VecDeque<Queued>,
    max_queued: usize,
    next_id: u16,
    /// How long one DMA request waits for its reply, in all.
    dma_timeout: Duration,
    /// How long a DMA reply is polled for with non-blocking receives before
    /// the wait blocks in poll(); `None`: block at once.
    spin: Option<Duration>,
    /// (id, command) of DMA requests given up on: their ids are not reused
    /// while a late reply may still come, so a late reply never answers a
    /// newer request. Bounded: the oldest is forgotten first.
    abandoned: VecDeque<(u16, u16)>,
    /// The client's max_data_xfer_size: bounds DMA messages we send.
    pub(super) peer_max_xfer: usize,
    /// Set when a server-to-client request broke the link (flood, malformed
    /// or lost stream). The model may swallow the error it gets, as edu does
    /// for a failed DMA, so the session checks this after each command.
    pub(super) broken: Option<String>,
    /// Replies held back while more client input is already buffered.
    outbox: Outbox,
}

/// Most abandoned DMA request ids remembered at once.
const MAX_ABANDONED: usize = 64;

/// Waits until `sock` is readable or `left` has passed; `false` on timeout.
/// An interrupted wait counts as readable: the caller reads without blocking
/// and comes back.
fn wait_readable_for(sock: BorrowedFd<'_>, left: Duration) -> Result<bool> {
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    let mut pfd = [PollFd::new(sock, PollFlags::POLLIN)];
    match poll(
        &mut pfd,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    ) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(true),
        Err(e) => Err(Error::sys("poll", e)),
    }
}

impl Link {
    /// A link on the main socket `sock`, before VERSION: no twin socket yet,
    /// and DMA messages bounded by the protocol's default transfer size.
    pub(super) fn new(sock: Arc<OwnedFd>, config: &ServerConfig) -> Self {
        let max_msg = config.max_data_xfer_size as usize + 32 * 1024;
        Link {
            sock,
            rx: Receiver::new(max_msg),
            twin_sock: None,
            twin_rx: Receiver::new(0),
            queued: VecDeque::new(),
            max_queued: config.max_queued,
            next_id: 0,
            dma_timeout: config.dma_timeout,
            spin: config.spin.filter(|d| !d.is_zero()),
            abandoned: VecDeque::new(),
            peer_max_xfer: version::DEFAULT_MAX_DATA_XFER as usize,
            broken: None,
            outbox: Outbox::default(),
        }
    }

    /// Whether client input was read but not handled yet: commands held
    /// back during a DMA request, or a whole message buffered.
    pub(super) fn has_pending_input(&self) -> bool {
        !self.queued.is_empty() || self.rx.has_message()
    }

    /// Carries server-to-client requests on `sock` from now on, reading
    /// replies of up to `max_msg` bytes.
    pub(super) fn set_twin(&mut self, sock: OwnedFd, max_msg: usize) {
        self.twin_sock = Some(sock);
        self.twin_rx = Receiver::new(max_msg);
    }

    /// Sends a reply on the main socket, or holds it to go out with the
    /// replies to commands already buffered behind it, in one `sendmsg`
    /// (see [`Link::flush_replies`]).
    pub(super) fn reply(&mut self, parts: &[&[u8]], fds: &[RawFd]) -> Result<()> {
        // The one-request case goes straight out, not copied into the outbox.
        if self.outbox.is_empty() && !self.has_pending_input() {
            return send_msg(self.sock.as_fd(), parts, fds);
        }
        self.outbox.push(self.sock.as_fd(), parts, fds)
    }

    /// Sends every held reply.
    pub(super) fn flush_replies(&mut self) -> Result<()> {
        self.outbox.flush(self.sock.as_fd())
    }

    /// Sends a server-to-client command and waits up to the DMA timeout for
    /// its reply, queueing client commands that arrive meanwhile on a shared
    /// socket. A client that does not answer in time costs this request only
    /// (`Error::Timeout`); a failed send or a broken stream ends the session.
    fn request(&mut self, command: u16, parts: &[&[u8]], reply_into: &mut [u8]) -> Result<()> {
        let id = self.next_request_id();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hdr = Header::command(id, command, len).encode();
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&hdr);
        all.extend_from_slice(parts);
        // Held replies first: their callers must not wait out this request.
        let sent = self.flush_replies();
        let sock = match &self.twin_sock {
            Some(s) => s.as_fd(),
            None => self.sock.as_fd(),
        };
        if let Err(e) = sent.and_then(|()| send_msg(sock, &all, &[])) {
            // A send cut short, even by a timeout, leaves part of a message
            // in the stream: the link is gone.
            self.broken.get_or_insert_with(|| e.to_string());
            return Err(e);
        }
        let r = self.await_reply(id, command, reply_into);
        match &r {
            Err(Error::Timeout) => self.abandon(id, command),
            Err(
                e @ (Error::Protocol(_)
                | Error::Disconnected
                | Error::Errno { .. }
                | Error::Io { .. }),
            ) => {
                self.broken.get_or_insert_with(|| e.to_string());
            }
            _ => {}
        }
        r
    }

    /// The id of the next request: never one whose late reply may still come.
    fn next_request_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if !self.abandoned.iter().any(|&(id, _)| id == self.next_id) {
                return self.next_id;
            }
        }
    }

    fn abandon(&mut self, id: u16, command: u16) {
        if self.abandoned.len() >= MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back((id, command));
        log::debug!(target: "vfio_io::server",
            "{} id={id}: no reply within {:?}, given up", cmd::name(command), self.dma_timeout);
    }

    /// Notes a reply to no current request: a late one ends its abandonment.
    pub(super) fn discard_reply(&mut self, h: &Header) {
        self.abandoned.retain(|&a| a != (h.id, h.command));
    }

    /// Waits for the reply to request `id`. Stale replies are skipped, client
    /// commands queued; the whole wait is bounded by the DMA timeout, however
    /// many commands arrive meanwhile.
    fn await_reply(&mut self, id: u16, command: u16, reply_into: &mut [u8]) -> Result<()> {
        let deadline = Instant::now() + self.dma_timeout;
        let spin_until = self.spin.map(|d| deadline.min(Instant::now() + d));
        loop {
            let (sock, rx) = match &self.twin_sock {
                Some(s) => (s.as_fd(), &mut self.twin_rx),
                None => (self.sock.as_fd(), &mut self.rx),
            };
            let spinning = spin_until.is_some_and(|t| Instant::now() < t);
            if !spinning && !rx.has_message() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !wait_readable_for(sock, left)? {
                    return Err(Error::Timeout);
                }
            }
            let m = match rx.recv(sock, true) {
                Ok(m) => m,
                // Part of a message so far, or nothing yet while spinning.
                Err(Error::Timeout) => {
                    std::hint::spin_loop();
                    continue;
                }
                Err(e) => return Err(e),
            };
            if m.header.is_reply() {
                if m.header.id != id || m.header.command != command {
                    let h = m.header;
                    self.discard_reply(&h);
                    continue;
                }
                if let Some(errno) = m.header.error_errno() {
                    return Err(Error::Remote { command, errno });
                }
                let want = DmaAccess::SIZE + reply_into.len();
                if command == cmd::DMA_READ {
                    if m.payload.len() != want {
                        return Err(Error::Protocol("DMA_READ reply of the wrong size".into()));
                    }
                    reply_into.copy_from_slice(&m.payload[DmaAccess::SIZE..]);
                }
                return Ok(());
            }
            if self.queued.len() >= self.max_queued {
                return Err(Error::Protocol(
                    "client flooded commands during a DMA request".into(),
                ));
            }
            self.queued.push_back(Queued {
                header: m.header,
                payload: m.payload.to_vec(),
                fds: m.fds,
            });
        }
    }

    /// Reads or writes client memory at `iova` with DMA_READ/DMA_WRITE
    /// messages, each at most the client's max_data_xfer_size.
    pub(super) fn dma_message(
        &mut self,
        iova: u64,
        read: Option<&mut [u8]>,
        write: Option<&[u8]>,
    ) -> Result<()> {
        let step = self.peer_max_xfer.max(1);
        if let Some(buf) = read {
            for (i, chunk) in buf.chunks_mut(step).enumerate() {
                let a = DmaAccess {
                    address: iova + (i * step) as u64,
                    count: chunk.len() as u64,
                };
                self.request(cmd::DMA_READ, &[&a.encode()], chunk)?;
            }
        }
        if let Some(buf) = write {
            for (i, chunk) in buf.chunks(step).enumerate() {
                let a = DmaAccess {
                    address: iova + (i * step) as u64,
                    count: chunk.len() as u64,
                };
                self.request(cmd::DMA_WRITE, &[&a.encode(), chunk], &mut [])?;
            }
        }
        Ok(())
    }
}

impl Drop for Link {
    /// Replies held when the session ends (a command after them broke the
    /// protocol, or the stream) still go out: their commands were handled.
    fn drop(&mut self) {
        if let Err(e) = self.outbox.flush(self.sock.as_fd()) {
            log::debug!(target: "vfio_io::server", "held replies not sent: {e}");
        }
    }
}
