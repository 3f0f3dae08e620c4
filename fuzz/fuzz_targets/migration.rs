//! Migration's bad input, from both ends: edu's state-stream decoder fed
//! any bytes, and the real server's migration commands, in any order and
//! with any sizes, from a raw client over a real socket.
//!
//! Input: a first byte whose bit 0 picks the part.
//!
//! Decoder (bit 0 clear): bit 1 of the first byte frames the rest as a
//! stream of edu's length with a correct checksum, so mutations reach the
//! field checks; otherwise the rest goes to `load` as it is. A load either
//! succeeds or fails leaving edu's state byte for byte as it was.
//!
//! Server (bit 0 set): steps of an op byte and its arguments, see [`step`].
//! Every command gets its reply; after a SET of MIG_DEVICE_STATE the state
//! is the one asked for when the reply was a success and the old one when
//! it was an error; STOP_COPY never yields more than edu's stream.
#![no_main]

use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_SET,
};
use vfio_io::models::edu::{regs, Edu, STATE_LEN};
use vfio_io::user::proto::{self, cmd, Header, MigDataMsg, MigDataSize, MigStateMsg};
use vfio_io::user::server::{Migratable, Server, ServerConfig, SessionEnd};
use vfio_io::user::wire::{send_msg, Receiver};
use vfio_io_fuzz::{client_version_payload, frame, Cursor, FdLeakCheck, MAX_INPUT};

/// FNV-1a, 64 bits, the checksum that ends edu's stream.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `body` cut or zero-padded to edu's stream less its checksum, then the
/// checksum: a stream only its fields can make edu refuse.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut s = body.to_vec();
    s.resize(STATE_LEN - 8, 0);
    let sum = fnv1a(&s);
    s.extend_from_slice(&sum.to_le_bytes());
    s
}

/// An edu away from power-on: liveness and its DMA buffer set by loading a
/// stream, so a load that half-applies would show.
fn busy_edu() -> Edu {
    let mut edu = Edu::new();
    let mut s = edu.save().expect("save a fresh edu");
    // Liveness sits after the 12-byte header and 8 bytes of identification.
    s[20..24].copy_from_slice(&0x5a5a_a5a5u32.to_le_bytes());
    let dma_buf = STATE_LEN - 8 - 4096..STATE_LEN - 8;
    for (i, b) in s[dma_buf].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    edu.load(&framed(&s[..STATE_LEN - 8]))
        .expect("a patched, re-checksummed stream loads");
    edu
}

fn fuzz_decoder(mode: u8, rest: &[u8]) {
    let mut edu = busy_edu();
    let before = edu.save().expect("save");
    let stream = if mode & 2 != 0 {
        framed(rest)
    } else {
        rest.to_vec()
    };
    match edu.load(&stream) {
        Err(e) => {
            assert_eq!(e.errno(), libc::EINVAL, "{e}");
            assert_eq!(
                edu.save().expect("save"),
                before,
                "a refused load changed edu"
            );
        }
        // What loaded saves to a stream that loads to the same state.
        Ok(()) => {
            let again = edu.save().expect("save");
            let mut other = Edu::new();
            other.load(&again).expect("a saved stream loads");
            assert_eq!(other.save().expect("save"), again);
        }
    }
}

// ------------------------------------------------------------- server part

/// An abstract-namespace name, unique per process: nothing on disk.
fn addr() -> SocketAddr {
    let name = format!("vfio-io-fuzz-migration-{}", std::process::id());
    SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address")
}

/// One listener for the run; each input's server gets a clone of it.
fn listener() -> &'static UnixListener {
    static L: OnceLock<UnixListener> = OnceLock::new();
    L.get_or_init(|| UnixListener::bind_addr(&addr()).expect("bind"))
}

/// The raw client: its socket, receiver and next message id.
struct Peer {
    sock: UnixStream,
    rx: Receiver,
    id: u16,
}

/// A reply: its errno (`None` for success) and payload.
struct Reply {
    errno: Option<i32>,
    payload: Vec<u8>,
}

impl Peer {
    fn connect() -> Peer {
        let sock = UnixStream::connect_addr(&addr()).expect("connect");
        // A server that never answers fails the input instead of hanging it.
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Peer {
            sock,
            rx: Receiver::new(2 << 20),
            id: 0,
        }
    }

    /// Sends one command and returns its reply, which must come.
    fn call(&mut self, command: u16, parts: &[&[u8]]) -> Reply {
        self.id = self.id.wrapping_add(1);
        let payload: Vec<u8> = parts.concat();
        let h = Header::command(self.id, command, payload.len());
        send_msg(self.sock.as_fd(), &[&frame(&h, &payload)], &[]).expect("send a command");
        let m = self
            .rx
            .recv(self.sock.as_fd(), false)
            .unwrap_or_else(|e| panic!("no reply to command {command}: {e}"));
        assert!(m.header.is_reply(), "the server sent a command");
        assert_eq!(
            (m.header.id, m.header.command),
            (self.id, command),
            "the reply to another message"
        );
        Reply {
            errno: m.header.error_errno(),
            payload: m.payload.to_vec(),
        }
    }

    fn feature(&mut self, flags: u32, data: &[u8]) -> Reply {
        let fixed = proto::encode_feature((8 + data.len()) as u32, flags);
        self.call(cmd::DEVICE_FEATURE, &[&fixed, data])
    }

    /// The feature reply's data, for a reply that succeeded.
    fn feature_data(r: &Reply) -> &[u8] {
        let (_, _, d) = proto::decode_feature(&r.payload).expect("a feature reply");
        d
    }

    fn get_state(&mut self) -> u32 {
        let r = self.feature(
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            &[],
        );
        assert_eq!(r.errno, None, "GET MIG_DEVICE_STATE failed");
        MigStateMsg::decode(Self::feature_data(&r))
            .expect("MIG_DEVICE_STATE data")
            .device_state
    }
}

/// What the harness knows of the session.
#[derive(Default)]
struct Track {
    /// Bytes read from the stream since the last STOP_COPY began.
    read: usize,
    /// Every byte read from the stream, to write back in RESUMING.
    saved: Vec<u8>,
}

const STOP_COPY: u32 = 3;

/// One step. Ops: 0 GET state; 1 SET state (a small number, or any u32
/// when the next byte's top bit is set); 2 GET MIG_DATA_SIZE; 3
/// MIG_DATA_READ of any size, its argsz right or any; 4 MIG_DATA_WRITE of
/// up to 8 KiB, of saved stream bytes or of the input, its size field right
/// or lying; 5 DEVICE_FEATURE with any flags and data; 6 DEVICE_RESET;
/// 7 a liveness write and read, answered in every state.
fn step(p: &mut Peer, c: &mut Cursor<'_>, t: &mut Track) {
    match c.u8() % 8 {
        0 => {
            p.get_state();
        }
        1 => set_state(p, c, t),
        2 => {
            let r = p.feature(
                VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
                &[],
            );
            if r.errno.is_none() {
                let size = MigDataSize::decode(Peer::feature_data(&r)).expect("MIG_DATA_SIZE");
                assert!(size.stop_copy_length as usize <= STATE_LEN);
            }
        }
        3 => data_read(p, c, t),
        4 => data_write(p, c, t),
        5 => {
            let flags = c.u32();
            let n = usize::from(c.u8());
            let data = c.bytes(n);
            p.feature(flags, data);
        }
        6 => {
            let r = p.call(cmd::DEVICE_RESET, &[]);
            assert_eq!(r.errno, None, "reset failed");
            assert_eq!(p.get_state(), 2, "reset leaves RUNNING");
        }
        _ => liveness(p, c.u32()),
    }
}

fn set_state(p: &mut Peer, c: &mut Cursor<'_>, t: &mut Track) {
    let b = c.u8();
    let to = if b & 0x80 != 0 {
        c.u32()
    } else {
        u32::from(b % 9)
    };
    let from = p.get_state();
    let m = MigStateMsg {
        device_state: to,
        data_fd: u32::MAX,
    };
    let r = p.feature(
        VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
        &m.encode(),
    );
    let now = p.get_state();
    match r.errno {
        None => assert_eq!(now, to, "SET succeeded but the state is {now}"),
        Some(e) => {
            assert_eq!(e, libc::EINVAL, "SET {from} -> {to}");
            assert_eq!(now, from, "a refused SET {from} -> {to} moved the state");
        }
    }
    if now == STOP_COPY && from != STOP_COPY {
        t.read = 0;
    }
}

fn data_read(p: &mut Peer, c: &mut Cursor<'_>, t: &mut Track) {
    let sel = c.u8();
    let size = if sel & 1 != 0 {
        c.u32()
    } else {
        u32::from(c.u16())
    };
    let argsz = if sel & 2 != 0 {
        c.u32()
    } else {
        size.wrapping_add(MigDataMsg::SIZE as u32)
    };
    let r = p.call(cmd::MIG_DATA_READ, &[&MigDataMsg { argsz, size }.encode()]);
    if r.errno.is_some() {
        return;
    }
    let head = MigDataMsg::decode(&r.payload).expect("MIG_DATA_READ reply");
    let data = &r.payload[MigDataMsg::SIZE..];
    assert_eq!(head.size as usize, data.len(), "reply size field");
    assert!(data.len() <= size as usize, "more than asked");
    t.read += data.len();
    assert!(t.read <= STATE_LEN, "STOP_COPY gave {} bytes", t.read);
    t.saved.extend_from_slice(data);
}

fn data_write(p: &mut Peer, c: &mut Cursor<'_>, t: &mut Track) {
    let sel = c.u8();
    let n = usize::from(c.u16()) % 8192;
    let data: Vec<u8> = if sel & 1 != 0 {
        let from = usize::from(c.u16()) % (t.saved.len() + 1);
        t.saved[from..(from + n).min(t.saved.len())].to_vec()
    } else {
        c.bytes(n).to_vec()
    };
    let size = if sel & 2 != 0 {
        c.u32()
    } else {
        data.len() as u32
    };
    let head = MigDataMsg {
        argsz: (MigDataMsg::SIZE + data.len()) as u32,
        size,
    };
    p.call(cmd::MIG_DATA_WRITE, &[&head.encode(), &data]);
}

/// A liveness write and read: when both are answered with success, the
/// read gives the NOT of the write, in whatever migration state.
fn liveness(p: &mut Peer, v: u32) {
    let access = |data: &[u8]| {
        let mut a = proto::RegionAccess {
            offset: regs::LIVENESS,
            region: 0,
            count: 4,
        }
        .encode()
        .to_vec();
        a.extend_from_slice(data);
        a
    };
    let w = p.call(cmd::REGION_WRITE, &[&access(&v.to_le_bytes())]);
    let r = p.call(cmd::REGION_READ, &[&access(&[])]);
    if w.errno.is_none() && r.errno.is_none() {
        let got = &r.payload[proto::RegionAccess::SIZE..];
        assert_eq!(got, (!v).to_le_bytes(), "liveness");
    }
}

fn check_end(end: &vfio_io::Result<SessionEnd>) {
    match end {
        Ok(SessionEnd::Disconnected) => {}
        other => panic!("the session ended with {other:?}"),
    }
}

fn fuzz_server(data: &[u8]) {
    let config = ServerConfig {
        timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let listener = listener().try_clone().expect("dup listener");
    let mut server = Server::from_listener(listener, Edu::new(), config);
    let mut peer = Peer::connect();
    let end = std::thread::scope(|s| {
        let served = s.spawn(move || server.serve_one());
        let v = client_version_payload(false, None);
        assert_eq!(peer.call(cmd::VERSION, &[&v]).errno, None, "VERSION");
        let mut c = Cursor::new(data);
        let mut t = Track::default();
        while !c.is_empty() {
            step(&mut peer, &mut c, &mut t);
        }
        drop(peer);
        served.join().expect("server thread")
    });
    check_end(&end);
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    // The run's listener is opened once, before any input counts its fds.
    listener();
    let leaks = FdLeakCheck::start();
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let rest = c.bytes(MAX_INPUT);
    if mode & 1 == 0 {
        fuzz_decoder(mode, rest);
    } else {
        fuzz_server(rest);
    }
    leaks.check();
});
