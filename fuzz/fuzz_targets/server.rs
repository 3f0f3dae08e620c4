//! Any request sequence against the real vfio-user server serving [`Edu`].
//!
//! Input: one mode byte, then messages of (command u16 LE, flags u8, payload
//! length u16 LE, payload). Mode bit 0 puts a valid VERSION first, so half of
//! the inputs get past the handshake and reach the device commands.
#![no_main]

use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vfio_io::edu::Edu;
use vfio_io::user::proto::{cmd, Header, FLAG_ERROR, FLAG_NO_REPLY};
use vfio_io::user::server::{Server, ServerConfig, SessionEnd};
use vfio_io::user::wire::send_msg;
use vfio_io_fuzz::{client_version_payload, memfd, Cursor, HDR, MAX_INPUT};

/// An abstract-namespace name: nothing to clean up on disk, unique per process
/// so parallel fuzz jobs do not connect to each other.
fn addr() -> SocketAddr {
    let name = format!("vfio-io-fuzz-server-{}", std::process::id());
    SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address")
}

/// One listener for the whole run; each iteration's Server gets a clone, so
/// every input meets a fresh Edu and a fresh server, as a new process would.
fn listener() -> &'static UnixListener {
    static L: OnceLock<UnixListener> = OnceLock::new();
    L.get_or_init(|| UnixListener::bind_addr(&addr()).expect("bind"))
}

fn connect() -> UnixStream {
    let s = UnixStream::connect_addr(&addr()).expect("connect");
    // Bounds every wait of the harness, so a wedged server shows up as a
    // libFuzzer timeout on this input rather than as silence.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// One message to send: bytes and whether to attach an fd.
struct Msg {
    bytes: Vec<u8>,
    with_fd: bool,
}

fn parse(data: &[u8]) -> (u8, Vec<Msg>) {
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let mut msgs = Vec::new();
    if mode & 1 != 0 {
        let p = client_version_payload(mode & 2 != 0);
        let h = Header::command(0, cmd::VERSION, p.len());
        msgs.push(Msg {
            bytes: vfio_io_fuzz::frame(&h, &p),
            with_fd: false,
        });
    }
    let mut id = 1u16;
    while !c.is_empty() {
        let command = c.u16();
        let flags = c.u8();
        let len = c.u16() as usize;
        let payload = c.bytes(len);
        let mut h = Header::command(id, command, payload.len());
        id = id.wrapping_add(1);
        // Low two bits: the message type, including the two undefined ones.
        h.flags = (flags & 3) as u32;
        if flags & 4 != 0 {
            h.flags |= FLAG_NO_REPLY;
        }
        if flags & 8 != 0 {
            h.flags |= FLAG_ERROR;
            h.error = 22;
        }
        // A size field that disagrees with the bytes sent: the receiver must
        // resynchronise on its own (or drop the client), never trust it.
        if flags & 0x20 != 0 {
            h.size = h
                .size
                .wrapping_add(u32::from(flags >> 6) * 8)
                .wrapping_sub(4);
        }
        msgs.push(Msg {
            bytes: vfio_io_fuzz::frame(&h, payload),
            with_fd: flags & 0x10 != 0,
        });
    }
    (mode, msgs)
}

fn check_end(what: &str, end: &vfio_io::Result<SessionEnd>) {
    match end {
        Ok(SessionEnd::Disconnected) | Ok(SessionEnd::Dropped(_)) => {}
        other => panic!("{what}: unexpected session end {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let (mode, msgs) = parse(data);
    let config = ServerConfig {
        twin_socket: mode & 4 != 0,
        write_multiple: mode & 8 != 0,
        // Short, so a DMA request the harness never answers costs little.
        timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let listener = listener().try_clone().expect("dup listener");
    let mut server = Server::from_listener(listener, Edu::new(), config);
    let server_thread = std::thread::spawn(move || {
        let first = server.serve_one();
        let second = server.serve_one();
        (first, second)
    });

    // Session 1: the fuzzed messages, written by a thread while this one
    // drains replies, so neither side can stall on a full socket buffer.
    let sock = connect();
    let writer_sock = sock.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let fd = memfd(64 * 1024);
        for m in &msgs {
            let fds: &[i32] = if m.with_fd { &[fd.as_raw_fd()] } else { &[] };
            if send_msg(writer_sock.as_fd(), &[&m.bytes], fds).is_err() {
                break; // the server dropped us: fine
            }
        }
        let _ = writer_sock.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Plain read() discards any fds the server sends (the twin socket),
        // which just looks like a client that went away.
        match std::io::Read::read(&mut &sock, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    writer.join().expect("writer thread");
    drop(sock);

    // Session 2: the same server must still negotiate with a well-behaved client.
    let sock = connect();
    let p = client_version_payload(false);
    let h = Header::command(7, cmd::VERSION, p.len());
    send_msg(sock.as_fd(), &[&vfio_io_fuzz::frame(&h, &p)], &[]).expect("send VERSION");
    let mut hdr = [0u8; HDR];
    std::io::Read::read_exact(&mut &sock, &mut hdr).expect("VERSION reply after a fuzzed session");
    let reply = Header::decode(&hdr, 1 << 20).expect("VERSION reply header");
    assert!(reply.is_reply() && reply.id == 7 && reply.error_errno().is_none());
    drop(sock);

    let (first, second) = server_thread.join().expect("server thread panicked");
    check_end("fuzzed session", &first);
    check_end("second session", &second);
});
