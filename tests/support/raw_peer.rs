//! A vfio-user peer on a raw UNIX socket, driven message by message: the
//! fake server that answers our `Client` with crafted bytes, or the raw
//! client that sends crafted bytes to our `Server`. Include it with
//! `#[path = "support/raw_peer.rs"] mod raw_peer;`.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vfio_io::error::Error;
use vfio_io::user::proto::{self, cmd, Header, RegionAccess};
use vfio_io::user::wire::{send_msg, set_timeouts, Receiver};

/// How long a peer waits for the other side before it gives up (a
/// well-behaved other side never makes it wait that long).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// One message received by a [`Peer`].
pub struct Msg {
    /// Its header.
    pub h: Header,
    /// The bytes after the header.
    pub p: Vec<u8>,
    /// The fds that came with it.
    pub fds: Vec<OwnedFd>,
}

/// One end of a vfio-user connection driven message by message.
pub struct Peer {
    /// The socket.
    pub s: UnixStream,
    /// Cuts what arrives into messages.
    pub rx: Receiver,
    next_id: u16,
}

impl Peer {
    /// A peer on a connected socket, whose sends and receives wait at most
    /// [`PEER_TIMEOUT`].
    pub fn new(s: UnixStream) -> Peer {
        set_timeouts(s.as_fd(), Some(PEER_TIMEOUT), Some(PEER_TIMEOUT)).unwrap();
        Peer {
            s,
            rx: Receiver::new((1 << 20) + 64 * 1024),
            next_id: 0,
        }
    }

    /// Connects to the server listening on `path`.
    pub fn connect(path: &Path) -> Peer {
        Peer::new(UnixStream::connect(path).expect("connect"))
    }

    /// Sends `b` as they are, framed or not.
    pub fn bytes(&self, b: &[u8]) {
        send_msg(self.s.as_fd(), &[b], &[]).expect("send raw bytes");
    }

    /// The next whole message.
    pub fn recv(&mut self) -> vfio_io::Result<Msg> {
        let m = self.rx.recv(self.s.as_fd(), false)?;
        Ok(Msg {
            h: m.header,
            p: m.payload.to_vec(),
            fds: m.fds,
        })
    }

    /// Receives a command, which must be `command`.
    pub fn expect(&mut self, command: u16) -> Msg {
        let m = self.recv().expect("a command from the peer");
        assert!(!m.h.is_reply(), "expected a command, got a reply");
        assert_eq!(cmd::name(m.h.command), cmd::name(command));
        m
    }

    /// Sends a command with the next id; returns that id.
    pub fn send_cmd(&mut self, command: u16, parts: &[&[u8]], fds: &[RawFd]) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let h = Header::command(self.next_id, command, len).encode();
        let mut all: Vec<&[u8]> = vec![&h];
        all.extend_from_slice(parts);
        send_msg(self.s.as_fd(), &all, fds).expect("send command");
        self.next_id
    }

    /// Sends a command and returns its reply (which must carry the same id).
    pub fn call(&mut self, command: u16, parts: &[&[u8]], fds: &[RawFd]) -> Msg {
        let id = self.send_cmd(command, parts, fds);
        let m = self.recv().expect("a reply");
        assert!(m.h.is_reply());
        assert_eq!((m.h.id, m.h.command), (id, command));
        m
    }

    /// The errno of the reply to a command, `None` for success.
    pub fn errno_of(&mut self, command: u16, parts: &[&[u8]], fds: &[RawFd]) -> Option<i32> {
        self.call(command, parts, fds).h.error_errno()
    }

    /// Answers `req` with success and `parts` as the payload.
    pub fn reply(&self, req: &Header, parts: &[&[u8]], fds: &[RawFd]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let h = Header::reply(req, len).encode();
        let mut all: Vec<&[u8]> = vec![&h];
        all.extend_from_slice(parts);
        send_msg(self.s.as_fd(), &all, fds).expect("send reply");
    }

    /// Answers `req` with an error reply carrying `errno`.
    pub fn error(&self, req: &Header, errno: i32) {
        send_msg(
            self.s.as_fd(),
            &[&Header::error_reply(req, errno).encode()],
            &[],
        )
        .expect("send error reply");
    }

    /// Raw client: a proper VERSION exchange (no twin socket).
    pub fn version(&mut self) {
        let v = proto::encode_version(0, 0, r#"{"capabilities":{"max_msg_fds":32}}"#);
        assert_eq!(self.errno_of(cmd::VERSION, &[&v], &[]), None);
    }

    /// Raw client: reads 4 bytes of BAR0 at `offset`.
    pub fn read32(&mut self, offset: u64) -> u32 {
        let a = RegionAccess {
            offset,
            region: 0,
            count: 4,
        };
        let m = self.call(cmd::REGION_READ, &[&a.encode()], &[]);
        assert_eq!(m.h.error_errno(), None);
        assert_eq!(m.p.len(), RegionAccess::SIZE + 4);
        u32::from_ne_bytes(m.p[RegionAccess::SIZE..].try_into().unwrap())
    }

    /// Reads until the peer closes; returns what came before. Fails if the
    /// peer neither closes nor talks within PEER_TIMEOUT.
    pub fn expect_closed(&mut self) -> Vec<Header> {
        let mut seen = Vec::new();
        loop {
            match self.recv() {
                Ok(m) => seen.push(m.h),
                Err(Error::Disconnected) => return seen,
                Err(e) => panic!("expected the peer to close, got {e:?}"),
            }
        }
    }

    /// Fake server: lets the client go, consuming whatever it still sends.
    pub fn drain(&mut self) {
        while self.recv().is_ok() {}
    }
}
