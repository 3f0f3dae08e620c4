//! Sending and receiving whole vfio-user messages, with fds as SCM_RIGHTS.
//!
//! A [`Receiver`] reads as much as the socket holds in one `recvmsg`, so a
//! small message normally costs one system call; it then cuts messages out of
//! its buffer. fds are attributed to messages by stream position: the kernel
//! ends a read right after the segment that carried fds, so they belong to the
//! message containing the read's last byte.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, send, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use nix::sys::time::TimeVal;

use super::proto::{Header, HEADER_SIZE};
use crate::error::{Error, Result};

/// Most fds one received message may carry; more is a protocol error.
pub const MAX_RECV_FDS: usize = 32;

/// Linux's SCM_MAX_FD: the most fds one sendmsg can pass, and so the most one
/// recvmsg on a stream socket can receive (a read stops after the segment that
/// carried fds).
const SCM_MAX_FD: usize = 253;

/// fd-less messages up to this size are gathered into one buffer and sent
/// with `send()`: every request of the hot paths, and most replies.
const SMALL_MSG: usize = 256;

fn send_error(e: Errno) -> Error {
    match e {
        Errno::EAGAIN => Error::Timeout,
        Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN | Errno::ESHUTDOWN => {
            Error::Disconnected
        }
        e => Error::sys("sendmsg", e),
    }
}

/// Sends one message made of `parts` (header first), with `fds` attached to
/// its first byte. Loops over partial writes; never raises SIGPIPE.
pub fn send_msg(sock: BorrowedFd<'_>, parts: &[&[u8]], fds: &[RawFd]) -> Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0usize;
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let flags = MsgFlags::MSG_NOSIGNAL;
    // Fast path: the whole message in one call. Without fds a small message
    // is gathered here and goes by send(), which the kernel takes with less
    // work than sendmsg() (no msghdr or iovec to copy in).
    let iov: [IoSlice<'_>; 4];
    let n = parts.len();
    let mut small = [0u8; SMALL_MSG];
    if fds.is_empty() && (n == 1 || total <= SMALL_MSG) {
        let whole: &[u8] = if n == 1 {
            parts[0]
        } else {
            let mut at = 0;
            for p in parts {
                small[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            &small[..total]
        };
        loop {
            match send(sock.as_raw_fd(), whole, flags) {
                Ok(w) => {
                    sent = w;
                    break;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(send_error(e)),
            }
        }
    } else if n <= 4 {
        iov = [
            IoSlice::new(parts.first().copied().unwrap_or(&[])),
            IoSlice::new(parts.get(1).copied().unwrap_or(&[])),
            IoSlice::new(parts.get(2).copied().unwrap_or(&[])),
            IoSlice::new(parts.get(3).copied().unwrap_or(&[])),
        ];
        loop {
            match sendmsg::<()>(sock.as_raw_fd(), &iov[..n], cmsgs, flags, None) {
                Ok(w) => {
                    sent = w;
                    break;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(send_error(e)),
            }
        }
    }
    // Slow path: a partial write (or many parts); fds went with the first byte.
    let mut first = sent == 0 && n > 4;
    while sent < total {
        let mut skip = sent;
        let mut rest: Vec<IoSlice<'_>> = Vec::with_capacity(n);
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            rest.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
        let c: &[ControlMessage<'_>] = if first { cmsgs } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &rest, c, flags, None) {
            Ok(0) => return Err(Error::Disconnected),
            Ok(w) => {
                sent += w;
                first = false;
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(send_error(e)),
        }
    }
    Ok(())
}

/// Messages held back so that several go out in one `sendmsg`: a server that
/// has more commands already buffered answers them all with one system call
/// (and the client's reader finds them all in one read).
///
/// A message with fds is never held: it goes out alone, after anything held,
/// because a receiver attributes fds to the message a read ends in and the
/// kernel ends a read after the segment that carried them.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    held: usize,
}

impl Outbox {
    /// Most messages held at once.
    pub const MAX_HELD: usize = 16;
    /// Messages larger than this go out at once from their own parts.
    const MAX_COPIED: usize = 4096;
    /// Held bytes past which the outbox sends.
    const MAX_BYTES: usize = 64 * 1024;

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Holds the message made of `parts`, or sends it (after anything held)
    /// when it carries fds or is large. Sends everything when the limits
    /// are reached.
    pub fn push(&mut self, sock: BorrowedFd<'_>, parts: &[&[u8]], fds: &[RawFd]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if !fds.is_empty() || len > Self::MAX_COPIED {
            self.flush(sock)?;
            return send_msg(sock, parts, fds);
        }
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.held += 1;
        if self.held >= Self::MAX_HELD || self.buf.len() >= Self::MAX_BYTES {
            self.flush(sock)?;
        }
        Ok(())
    }

    /// Sends every held message, in order, in one `sendmsg` (more only on a
    /// partial write).
    pub fn flush(&mut self, sock: BorrowedFd<'_>) -> Result<()> {
        if self.held == 0 {
            return Ok(());
        }
        // Emptied first: after a failed send the stream is unusable anyway,
        // and nothing is sent twice.
        self.held = 0;
        let r = send_msg(sock, &[&self.buf], &[]);
        self.buf.clear();
        r
    }
}

/// Sets how long a blocking send or receive on `sock` may wait.
pub fn set_timeouts(
    sock: BorrowedFd<'_>,
    recv: Option<Duration>,
    send: Option<Duration>,
) -> Result<()> {
    let tv = |d: Option<Duration>| {
        let d = d.unwrap_or(Duration::ZERO);
        TimeVal::new(d.as_secs() as i64, d.subsec_micros() as i64)
    };
    setsockopt(&sock, sockopt::ReceiveTimeout, &tv(recv))
        .map_err(|e| Error::sys("SO_RCVTIMEO", e))?;
    setsockopt(&sock, sockopt::SendTimeout, &tv(send)).map_err(|e| Error::sys("SO_SNDTIMEO", e))?;
    Ok(())
}

/// One received message; the payload borrows the receiver's buffer.
#[derive(Debug)]
pub struct Received<'a> {
    /// The header.
    pub header: Header,
    /// The bytes after the header.
    pub payload: &'a [u8],
    /// fds that came with the message (closed on drop unless taken).
    pub fds: Vec<OwnedFd>,
}

/// Cuts a byte stream into messages, bounded by a maximum message size.
#[derive(Debug)]
pub struct Receiver {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream position of `buf[0]`.
    base: u64,
    /// (stream position of the last byte of the read that brought them, fds).
    fd_batches: VecDeque<(u64, Vec<OwnedFd>)>,
    cmsg: Vec<u8>,
    max_msg: usize,
}

impl Receiver {
    /// A receiver refusing messages larger than `max_msg` bytes.
    pub fn new(max_msg: usize) -> Self {
        let max_msg = max_msg.max(HEADER_SIZE);
        Receiver {
            buf: vec![0u8; max_msg.max(64 * 1024)],
            start: 0,
            end: 0,
            base: 0,
            fd_batches: VecDeque::new(),
            // Room for every fd a peer can pass at once: on truncation the
            // kernel installs the fds that fit but nix then refuses to parse
            // the control data, which leaked them. Excess fds are received,
            // owned, and closed with a protocol error instead.
            cmsg: nix::cmsg_space!([RawFd; SCM_MAX_FD]),
            max_msg,
        }
    }

    /// Whether a whole message is already buffered (no system call needed).
    pub fn has_message(&self) -> bool {
        let avail = self.end - self.start;
        if avail < HEADER_SIZE {
            return false;
        }
        let size = u32::from_ne_bytes(
            self.buf[self.start + 4..self.start + 8]
                .try_into()
                .unwrap_or([0; 4]),
        );
        avail >= size as usize
    }

    /// Reads once from `sock` into the buffer. `nonblock` returns
    /// `Err(Timeout)` at once when nothing is there.
    fn fill(&mut self, sock: BorrowedFd<'_>, nonblock: bool) -> Result<()> {
        if self.end == self.buf.len() {
            return Err(Error::Protocol("receive buffer full".into()));
        }
        let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
        if nonblock {
            flags |= MsgFlags::MSG_DONTWAIT;
        }
        let (n, fds, truncated) = loop {
            let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
            match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut self.cmsg), flags) {
                Ok(msg) => {
                    let mut raw: Vec<RawFd> = Vec::new();
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                raw.extend(fds);
                            }
                        }
                    }
                    break (
                        msg.bytes,
                        own_fds(raw),
                        msg.flags.contains(MsgFlags::MSG_CTRUNC),
                    );
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(Error::Timeout),
                Err(Errno::ECONNRESET) => return Err(Error::Disconnected),
                Err(e) => return Err(Error::sys("recvmsg", e)),
            }
        };
        if truncated || fds.len() > MAX_RECV_FDS {
            // `fds` are owned here and close as the error returns.
            return Err(Error::Protocol(format!(
                "more than {MAX_RECV_FDS} fds in one message"
            )));
        }
        if n == 0 {
            return Err(Error::Disconnected);
        }
        self.end += n;
        if !fds.is_empty() {
            self.fd_batches
                .push_back((self.base + self.end as u64 - 1, fds));
        }
        Ok(())
    }

    /// Receives the next whole message. Errors other than `Timeout` leave the
    /// stream unusable. With `nonblock`, returns `Err(Timeout)` when a whole
    /// message is not available without waiting.
    pub fn recv(&mut self, sock: BorrowedFd<'_>, nonblock: bool) -> Result<Received<'_>> {
        while self.end - self.start < HEADER_SIZE {
            self.compact_if_needed(HEADER_SIZE);
            self.fill(sock, nonblock)?;
        }
        let header = Header::decode(&self.buf[self.start..self.end], self.max_msg)?;
        let size = header.size as usize;
        self.compact_if_needed(size);
        while self.end - self.start < size {
            self.fill(sock, nonblock)?;
        }
        let first = self.base + self.start as u64;
        let last = first + size as u64 - 1;
        let mut fds = Vec::new();
        while let Some((pos, _)) = self.fd_batches.front() {
            if *pos > last {
                break;
            }
            let (pos, batch) = self.fd_batches.pop_front().unwrap_or((0, Vec::new()));
            // Batches before this message belonged to one already consumed: closed.
            if pos >= first {
                fds.extend(batch);
            }
        }
        let payload_start = self.start + HEADER_SIZE;
        self.start += size;
        let payload = &self.buf[payload_start..payload_start + size - HEADER_SIZE];
        Ok(Received {
            header,
            payload,
            fds,
        })
    }

    fn compact_if_needed(&mut self, need: usize) {
        if self.start == self.end {
            self.base += self.end as u64;
            self.start = 0;
            self.end = 0;
        } else if self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
    }
}

fn own_fds(raw: Vec<RawFd>) -> Vec<OwnedFd> {
    raw.into_iter()
        // SAFETY: SCM_RIGHTS installed these fds in this process for us alone;
        // nothing else refers to them, so taking ownership is sound.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// Whether `fd` is an eventfd. An fd the peer passed as one may be anything
/// (a pipe that blocks or fills up, a file that always polls readable),
/// which would let the peer stall or spin this side.
pub(crate) fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventfd]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::proto::cmd;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn msg(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Header::command(id, cmd::REGION_READ, payload.len())
            .encode()
            .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn messages_split_and_merged_in_the_stream_come_out_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut stream = msg(1, &[1, 2, 3]);
        stream.extend(msg(2, &[4; 100]));
        send_msg(a.as_fd(), &[&stream[..10]], &[]).unwrap();
        send_msg(a.as_fd(), &[&stream[10..]], &[]).unwrap();
        let mut r = Receiver::new(4096);
        let m = r.recv(b.as_fd(), false).unwrap();
        assert_eq!((m.header.id, m.payload), (1, &[1u8, 2, 3][..]));
        let m = r.recv(b.as_fd(), false).unwrap();
        assert_eq!((m.header.id, m.payload.len()), (2, 100));
    }

    #[test]
    fn fds_go_to_the_message_they_were_sent_with() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let first = msg(1, &[0; 8]);
        let second = msg(2, &[0; 8]);
        send_msg(a.as_fd(), &[&first], &[]).unwrap();
        send_msg(a.as_fd(), &[&second], &[x.as_raw_fd(), x.as_raw_fd()]).unwrap();
        let mut r = Receiver::new(4096);
        let m1 = r.recv(b.as_fd(), false).unwrap();
        assert_eq!(m1.header.id, 1);
        assert!(m1.fds.is_empty(), "the fd-less message got fds");
        let m2 = r.recv(b.as_fd(), false).unwrap();
        assert_eq!((m2.header.id, m2.fds.len()), (2, 2));
    }

    #[test]
    fn outbox_holds_messages_until_flushed_and_sends_fds_alone() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let mut out = Outbox::default();
        let mut r = Receiver::new(4096);
        out.push(a.as_fd(), &[&msg(1, &[1])], &[]).unwrap();
        out.push(a.as_fd(), &[&msg(2, &[2])], &[]).unwrap();
        assert!(matches!(r.recv(b.as_fd(), true), Err(Error::Timeout)));
        // A message with fds sends what is held, then goes alone.
        out.push(a.as_fd(), &[&msg(3, &[3])], &[x.as_raw_fd()])
            .unwrap();
        assert!(out.is_empty());
        out.push(a.as_fd(), &[&msg(4, &[4])], &[]).unwrap();
        out.flush(a.as_fd()).unwrap();
        for (id, fds) in [(1, 0), (2, 0), (3, 1), (4, 0)] {
            let m = r.recv(b.as_fd(), false).unwrap();
            assert_eq!(
                (m.header.id, m.payload, m.fds.len()),
                (id, &[id as u8][..], fds)
            );
        }
    }

    #[test]
    fn outbox_sends_when_full() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut out = Outbox::default();
        for id in 0..Outbox::MAX_HELD as u16 {
            out.push(a.as_fd(), &[&msg(id, &[0; 8])], &[]).unwrap();
        }
        assert!(out.is_empty(), "the limit did not send");
        let mut r = Receiver::new(4096);
        for id in 0..Outbox::MAX_HELD as u16 {
            assert_eq!(r.recv(b.as_fd(), true).unwrap().header.id, id);
        }
    }

    #[test]
    fn oversized_and_undersized_messages_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let m = msg(1, &[0; 200]);
        send_msg(a.as_fd(), &[&m], &[]).unwrap();
        let mut r = Receiver::new(64);
        assert!(matches!(r.recv(b.as_fd(), false), Err(Error::Protocol(_))));
        let (a, b) = UnixStream::pair().unwrap();
        let mut h = Header::command(1, cmd::REGION_READ, 0);
        h.size = 3;
        send_msg(a.as_fd(), &[&h.encode()], &[]).unwrap();
        assert!(matches!(
            Receiver::new(64).recv(b.as_fd(), false),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn eof_mid_message_is_a_disconnect_and_nonblock_times_out() {
        let (a, b) = UnixStream::pair().unwrap();
        let m = msg(1, &[0; 32]);
        let mut r = Receiver::new(4096);
        assert!(matches!(r.recv(b.as_fd(), true), Err(Error::Timeout)));
        send_msg(a.as_fd(), &[&m[..20]], &[]).unwrap();
        drop(a);
        assert!(matches!(r.recv(b.as_fd(), false), Err(Error::Disconnected)));
    }

    #[test]
    fn stalled_sender_times_out_instead_of_blocking() {
        let (a, _b) = UnixStream::pair().unwrap();
        set_timeouts(a.as_fd(), None, Some(Duration::from_millis(50))).unwrap();
        let big = vec![0u8; 1 << 20];
        let mut res = Ok(());
        for _ in 0..64 {
            res = send_msg(a.as_fd(), &[&big], &[]);
            if res.is_err() {
                break;
            }
        }
        assert!(matches!(res, Err(Error::Timeout)));
    }
}
