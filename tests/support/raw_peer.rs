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

use vfio_io::device::DeviceIo;
use vfio_io::error::Error;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{
    self, cmd, DmaMapMsg, Header, IrqSetMsg, RegionAccess, DMA_MAP_READ, DMA_MAP_WRITE,
    IRQ_SET_SIZE,
};
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

    /// Raw client: a header announcing a 64 MiB message, more than any
    /// server accepts.
    pub fn send_oversized_header(&self) {
        let mut h = Header::command(9, cmd::REGION_WRITE, 0);
        h.size = 64 << 20;
        self.bytes(&h.encode());
    }

    /// Raw client: a header whose type bits are the undefined 3.
    pub fn send_unknown_type(&self) {
        let mut h = Header::command(9, cmd::DEVICE_RESET, 0);
        h.flags = 0x7;
        self.bytes(&h.encode());
    }

    /// Raw client: the first part of a REGION_WRITE of 1024 bytes at BAR0
    /// `offset` (its header and access, none of the data).
    pub fn send_half_message(&self, offset: u64) {
        let h = Header::command(9, cmd::REGION_WRITE, RegionAccess::SIZE + 1024);
        self.bytes(&h.encode());
        self.bytes(&region_read_msg(offset, 1024));
    }

    /// Raw client: a reply to a DMA_READ nobody sent, carrying `fd`.
    pub fn send_stray_reply_with_fd(&self, fd: RawFd) {
        let h = Header::reply(&Header::command(77, cmd::DMA_READ, 0), 0);
        send_msg(self.s.as_fd(), &[&h.encode()], &[fd]).expect("send a stray reply");
    }

    /// Raw client: `n` REGION_READs of BAR0 in one send, not waiting for
    /// replies; the server may hang up before it has all of them.
    pub fn flood_reads(&self, n: u16) {
        let mut flood = Vec::new();
        for i in 0..n {
            flood.extend_from_slice(&Header::command(500 + i, cmd::REGION_READ, 16).encode());
            flood.extend_from_slice(&region_read_msg(0, 4));
        }
        match send_msg(self.s.as_fd(), &[&flood], &[]) {
            Ok(()) | Err(Error::Disconnected) => {}
            Err(e) => panic!("flood: {e:?}"),
        }
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

/// Raw client: the server drops it, with at most an error reply carrying
/// `errno` first.
pub fn assert_dropped(p: &mut Peer, errno: Option<i32>) {
    let seen = p.expect_closed();
    match errno {
        None => assert!(seen.is_empty(), "unexpected replies {seen:?}"),
        Some(e) => {
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert_eq!(seen[0].error_errno(), Some(e));
        }
    }
}

/// The access part of a REGION_READ (or a REGION_WRITE, data appended) of
/// `count` bytes at `offset` of BAR0.
pub fn region_read_msg(offset: u64, count: u32) -> [u8; RegionAccess::SIZE] {
    RegionAccess {
        offset,
        region: 0,
        count,
    }
    .encode()
}

/// A readable and writable DMA_MAP of `size` bytes at `address`.
pub fn dma_map_msg(address: u64, size: u64) -> [u8; DmaMapMsg::SIZE] {
    DmaMapMsg {
        argsz: DmaMapMsg::SIZE as u32,
        flags: DMA_MAP_READ | DMA_MAP_WRITE,
        offset: 0,
        address,
        size,
    }
    .encode()
}

/// A DEVICE_SET_IRQS payload attaching eventfds (sent with it) as the
/// triggers of vectors 0..`count` of IRQ index `index`.
pub fn irq_eventfds_msg(index: u32, count: u32) -> Vec<u8> {
    IrqSetMsg {
        argsz: IRQ_SET_SIZE as u32,
        flags: 0x20 | 0x4, // ACTION_TRIGGER | DATA_EVENTFD
        index,
        start: 0,
        count,
    }
    .encode()
    .to_vec()
}

/// After a hostile peer: a well-behaved client (replies within `timeout`)
/// connects to `path` and reads `id` at BAR0 offset 0. Returns the client.
pub fn assert_serves_id(path: &Path, timeout: Duration, id: u32) -> Client {
    let c = Client::connect(
        path,
        ClientConfig {
            timeout,
            ..ClientConfig::default()
        },
    )
    .expect("a well-behaved client is served");
    let mut b = [0u8; 4];
    c.region_read(0, 0, &mut b).expect("read the ID");
    assert_eq!(u32::from_ne_bytes(b), id, "the ID register");
    c
}
