//! Any request sequence against the real vfio-user server serving [`Edu`],
//! with the harness as its client: it passes real fds (eventfds for
//! SET_IRQS, sealed memfds and regular files for DMA_MAP) and answers the
//! server's own DMA_READ/DMA_WRITE requests, rightly or wrongly.
//!
//! Input: a mode byte; an answer-script length byte and that many answer
//! bytes (one per DMA request the server sends, see [`Answers`]); then steps
//! of (command u16 LE, flags u8, fds u8, payload length u16 LE, payload).
//!
//! Mode: bit 0 a valid VERSION first (so most inputs reach the device
//! commands), bit 1 the client proposes twin sockets, bit 2 the server offers
//! them, bit 3 the server accepts REGION_WRITE_MULTI, bit 4 the client's
//! max_data_xfer_size is 256 (so the server cuts its DMA into many messages).
//!
//! Flags: bits 0-1 the message type (including the two undefined ones), bit 2
//! NO_REPLY, bit 3 ERROR, bit 4 attach fds, bit 5 a size field that lies
//! (by bits 6-7 times 8, minus 4).
//!
//! Fds byte: bits 0-1 which fds to attach (0 eventfds, 1 a sealed memfd, 2 a
//! regular file, 3 an unsealed memfd), bits 2-3 how many minus one; bit 4
//! waits for this message's reply before the next step, bit 5 then signals
//! every eventfd (so unmask eventfds fire); bits 6-7 pick which eventfd comes
//! first, and for the regular file truncate it after the step (to 0, 4 KiB or
//! 48 KiB of its 64 KiB) while the server may hold it mapped.
#![no_main]

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vfio_io::models::edu::Edu;
use vfio_io::user::proto::{cmd, DmaAccess, Header};
use vfio_io::user::server::{Server, ServerConfig, SessionEnd};
use vfio_io::user::wire::{send_msg, Receiver};
use vfio_io::Error;
use vfio_io_fuzz::{
    client_version_payload, eventfd, memfd, pattern, poll_readable, sealed_memfd, shm_file, Cursor,
    FdLeakCheck, HDR, MAX_INPUT,
};

/// Size of every memfd and file passed with DMA_MAP.
const DMA_FILE_SIZE: u64 = 64 * 1024;
/// Eventfds in the pool the SET_IRQS messages draw from.
const EVENTFDS: usize = 4;
/// How long the server waits for a DMA reply: short, as the harness leaves
/// some unanswered on purpose.
const SERVER_TIMEOUT: Duration = Duration::from_millis(100);
/// Most DMA requests left unanswered (or answered only with a stale id) per
/// input: each costs the server its whole timeout.
const MAX_SILENT: u32 = 4;
/// Total time the writer may wait for replies it asked to see: bounds an
/// input whose size lies desynchronise the stream.
const SYNC_BUDGET: Duration = Duration::from_millis(1500);
/// How long the writer waits, after its last message, for that message's
/// reply before it ends the session: the server may still be asking for DMA
/// on this socket, which a half-closed socket could not answer.
const FINAL_WAIT: Duration = Duration::from_secs(2);
/// The longest the reader waits for the server to say anything.
const READ_IDLE: Duration = Duration::from_secs(3);

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
    // Bounds every blocking call of the harness on this socket.
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// One message to send and what to do around it.
struct Msg {
    id: u16,
    bytes: Vec<u8>,
    with_fds: bool,
    fds: u8,
    /// The server will answer it (a command without NO_REPLY).
    answered: bool,
    /// Its size field disagrees with the bytes sent.
    lies: bool,
}

fn parse(c: &mut Cursor<'_>, mode: u8) -> Vec<Msg> {
    let mut msgs = Vec::new();
    if mode & 1 != 0 {
        let small = (mode & 0x10 != 0).then_some(256);
        let p = client_version_payload(mode & 2 != 0, small);
        let h = Header::command(0, cmd::VERSION, p.len());
        msgs.push(Msg {
            id: 0,
            bytes: vfio_io_fuzz::frame(&h, &p),
            with_fds: false,
            fds: 0,
            answered: true,
            lies: false,
        });
    }
    for step in vfio_io_fuzz::read_steps(c) {
        msgs.push(Msg {
            id: step.id,
            with_fds: step.flags & 0x10 != 0,
            fds: step.fds,
            answered: step.flags & 0x27 == 0,
            lies: step.flags & 0x20 != 0,
            bytes: step.bytes,
        });
    }
    msgs
}

/// The fds an input may attach, alive for the whole input.
struct Fds {
    eventfds: Vec<OwnedFd>,
    sealed: OwnedFd,
    file: std::fs::File,
    unsealed: OwnedFd,
}

impl Fds {
    fn new() -> Self {
        Fds {
            eventfds: (0..EVENTFDS).map(|_| eventfd()).collect(),
            sealed: sealed_memfd(DMA_FILE_SIZE as i64),
            file: shm_file(DMA_FILE_SIZE),
            unsealed: memfd(DMA_FILE_SIZE as i64),
        }
    }

    /// The fds a message attaches, as its fds byte chooses.
    fn pick(&self, sel: u8) -> Vec<RawFd> {
        let n = usize::from((sel >> 2) & 3) + 1;
        let one: RawFd = match sel & 3 {
            0 => {
                let first = usize::from(sel >> 6);
                return (0..n)
                    .map(|i| self.eventfds[(first + i) % EVENTFDS].as_raw_fd())
                    .collect();
            }
            1 => self.sealed.as_raw_fd(),
            2 => self.file.as_raw_fd(),
            _ => self.unsealed.as_raw_fd(),
        };
        vec![one; n]
    }

    /// Shrinks the regular file under a mapping the server may hold.
    fn truncate(&self, sel: u8) {
        if sel & 3 == 2 {
            let len = match sel >> 6 {
                1 => 0,
                2 => 4096,
                3 => 48 * 1024,
                _ => return,
            };
            let _ = self.file.set_len(len);
        }
    }

    fn signal_eventfds(&self) {
        for fd in &self.eventfds {
            let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
        }
    }
}

/// Replies the reader has seen, so the writer can wait for one.
#[derive(Default)]
struct Seen {
    state: Mutex<(HashSet<u16>, bool)>,
    cond: Condvar,
}

impl Seen {
    fn reply(&self, id: u16) {
        let mut st = self.state.lock().unwrap();
        st.0.insert(id);
        self.cond.notify_all();
    }

    fn closed(&self) {
        self.state.lock().unwrap().1 = true;
        self.cond.notify_all();
    }

    /// Waits until the reply to `id` came, the session ended, or `deadline`.
    fn wait(&self, id: u16, deadline: Instant) {
        let mut st = self.state.lock().unwrap();
        while !st.0.contains(&id) && !st.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self.cond.wait_timeout(st, left).unwrap().0;
        }
    }
}

/// How the harness answers the server's DMA_READ/DMA_WRITE requests: one
/// script byte per request, and correct answers once the script ends.
struct Answers<'a> {
    script: Cursor<'a>,
    silent: u32,
    /// The client memory the server reads and writes by message.
    memory: Vec<u8>,
}

impl Answers<'_> {
    /// The reply (or replies) to one server request.
    fn answer(&mut self, h: &Header, p: &[u8]) -> Vec<Vec<u8>> {
        let Ok(a) = DmaAccess::decode(p) else {
            return vec![err_reply(h, 22)];
        };
        let read = h.command == cmd::DMA_READ;
        let correct = |mem: &mut Vec<u8>| {
            if read {
                let n = usize::try_from(a.count).unwrap_or(usize::MAX);
                if n > 1 << 20 {
                    return err_reply(h, 14);
                }
                let mut out = a.encode().to_vec();
                out.extend((0..n).map(|i| mem[(a.address as usize).wrapping_add(i) % mem.len()]));
                ok_reply(h, &out)
            } else {
                let data = p.get(DmaAccess::SIZE..).unwrap_or(&[]);
                for (i, b) in data.iter().enumerate() {
                    let at = (a.address as usize).wrapping_add(i) % mem.len();
                    mem[at] = *b;
                }
                ok_reply(h, &a.encode())
            }
        };
        let op = if self.script.is_empty() {
            0
        } else {
            self.script.u8()
        };
        let silent = matches!(op % 8, 3 | 6 | 7);
        if silent {
            if self.silent >= MAX_SILENT {
                return vec![correct(&mut self.memory)];
            }
            self.silent += 1;
        }
        match op % 8 {
            0..=2 => vec![correct(&mut self.memory)],
            // A reply to another id: stale, to be skipped; maybe the right one after.
            3 => {
                let mut wrong = *h;
                wrong.id = h.id.wrapping_add(1 + u16::from(op >> 4));
                let mut v = vec![ok_reply(&wrong, &a.encode())];
                if op & 8 != 0 {
                    v.push(correct(&mut self.memory));
                }
                v
            }
            // An error reply; errno 0 is an error flag carrying no error.
            4 => vec![err_reply(h, u32::from(op >> 3))],
            // Fewer bytes than asked (or, for a write, a truncated echo).
            5 => {
                let mut r = correct(&mut self.memory);
                let cut = usize::from(op >> 3) + 1;
                r.truncate(r.len().saturating_sub(cut).max(HDR));
                let size = r.len() as u32;
                r[4..8].copy_from_slice(&size.to_ne_bytes());
                vec![r]
            }
            // No answer at all: the server must time out.
            6 => Vec::new(),
            // The reply names the other DMA command.
            _ => {
                let mut other = *h;
                other.command = if read { cmd::DMA_WRITE } else { cmd::DMA_READ };
                let mut v = vec![ok_reply(&other, &a.encode())];
                if op & 8 != 0 {
                    v.push(correct(&mut self.memory));
                }
                v
            }
        }
    }
}

/// A successful reply to `h` carrying `payload`.
fn ok_reply(h: &Header, payload: &[u8]) -> Vec<u8> {
    vfio_io_fuzz::frame(&Header::reply(h, payload.len()), payload)
}

/// An error reply to `h` (errno 0: the error flag with no error in it).
fn err_reply(h: &Header, errno: u32) -> Vec<u8> {
    Header::error_reply(h, errno as i32).encode().to_vec()
}

/// Reads everything the server sends on session 1: replies (noted in
/// `seen`, the twin socket taken from VERSION's) and DMA requests (answered
/// per `answers`), until the server hangs up or goes quiet for READ_IDLE.
fn read_session(
    sock: BorrowedFd<'_>,
    send_lock: &Mutex<()>,
    seen: &Seen,
    answers: &mut Answers<'_>,
) {
    let mut rx = Receiver::new(2 << 20);
    let mut twin: Option<(OwnedFd, Receiver)> = None;
    'outer: loop {
        let ready = match &twin {
            Some((t, _)) => poll_readable(&[sock, t.as_fd()], READ_IDLE),
            None => poll_readable(&[sock], READ_IDLE),
        };
        if !ready.iter().any(|r| *r) {
            break; // a silent server: session 2 tells whether it is wedged
        }
        if ready[0] {
            loop {
                let (h, p, mut fds) = match rx.recv(sock, true) {
                    Ok(m) => (m.header, m.payload.to_vec(), m.fds),
                    Err(Error::Timeout) => break,
                    Err(_) => break 'outer,
                };
                if h.is_reply() {
                    if h.command == cmd::VERSION && !fds.is_empty() {
                        twin = Some((fds.swap_remove(0), Receiver::new(2 << 20)));
                    }
                    seen.reply(h.id);
                    continue;
                }
                for r in answers.answer(&h, &p) {
                    let _g = send_lock.lock().unwrap();
                    let _ = send_msg(sock, &[&r], &[]);
                }
            }
        }
        if let (Some(true), Some((t, trx))) = (ready.get(1), twin.as_mut()) {
            let mut gone = false;
            loop {
                let (h, p) = match trx.recv(t.as_fd(), true) {
                    Ok(m) => (m.header, m.payload.to_vec()),
                    Err(Error::Timeout) => break,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                };
                if h.is_reply() {
                    continue;
                }
                for r in answers.answer(&h, &p) {
                    let _ = send_msg(t.as_fd(), &[&r], &[]);
                }
            }
            if gone {
                twin = None;
            }
        }
    }
    seen.closed();
}

fn check_end(what: &str, end: &vfio_io::Result<SessionEnd>) {
    match end {
        Ok(SessionEnd::Disconnected) | Ok(SessionEnd::Dropped(_)) => {}
        other => panic!("{what}: unexpected session end {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let listener = listener().try_clone().expect("dup listener");
    let leaks = FdLeakCheck::start();
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let n = usize::from(c.u8());
    let mut answers = Answers {
        script: c.split(n),
        silent: 0,
        memory: (0..4096).map(pattern).collect(),
    };
    let msgs = parse(&mut c, mode);
    let config = ServerConfig {
        twin_socket: mode & 4 != 0,
        write_multiple: mode & 8 != 0,
        // Short, so a DMA request the harness leaves unanswered costs little.
        timeout: SERVER_TIMEOUT,
        dma_timeout: SERVER_TIMEOUT,
        ..ServerConfig::default()
    };
    let fds = Fds::new();
    let mut server = Server::from_listener(listener, Edu::new(), config);
    // Session 1's socket, waiting in the listener's backlog until served.
    let sock = connect();
    let send_lock = Mutex::new(());
    let seen = Seen::default();
    let (first, second) = std::thread::scope(|s| {
        let server_thread = s.spawn(move || {
            let first = server.serve_one();
            let second = server.serve_one();
            (first, second)
        });

        // Session 1: the fuzzed messages, written by a thread while this one
        // reads and answers, so neither side can stall on a full socket buffer.
        let writer = s.spawn(|| {
            let sync_until = Instant::now() + SYNC_BUDGET;
            for m in &msgs {
                let attach = if m.with_fds {
                    fds.pick(m.fds)
                } else {
                    Vec::new()
                };
                let sent = {
                    let _g = send_lock.lock().unwrap();
                    send_msg(sock.as_fd(), &[&m.bytes], &attach)
                };
                if sent.is_err() {
                    break; // the server dropped us: fine
                }
                if m.fds & 0x10 != 0 && m.answered {
                    seen.wait(m.id, sync_until);
                }
                if m.fds & 0x20 != 0 {
                    fds.signal_eventfds();
                }
                fds.truncate(m.fds);
            }
            // Unless a size field lied (the stream may then be out of step
            // for good), every answered message gets its reply in order.
            if !msgs.iter().any(|m| m.lies) {
                if let Some(last) = msgs.iter().rev().find(|m| m.answered) {
                    seen.wait(last.id, Instant::now() + FINAL_WAIT);
                }
            }
            let _ = sock.shutdown(std::net::Shutdown::Write);
        });
        read_session(sock.as_fd(), &send_lock, &seen, &mut answers);
        writer.join().expect("writer thread");

        // Session 2: the same server must still negotiate with a well-behaved client.
        let sock = connect();
        let p = client_version_payload(false, None);
        let h = Header::command(7, cmd::VERSION, p.len());
        send_msg(sock.as_fd(), &[&vfio_io_fuzz::frame(&h, &p)], &[]).expect("send VERSION");
        let mut hdr = [0u8; HDR];
        std::io::Read::read_exact(&mut &sock, &mut hdr)
            .expect("VERSION reply after a fuzzed session");
        let reply = Header::decode(&hdr, 1 << 20).expect("VERSION reply header");
        assert!(reply.is_reply() && reply.id == 7 && reply.error_errno().is_none());
        drop(sock);
        server_thread.join().expect("server thread panicked")
    });
    drop(sock);
    check_end("fuzzed session", &first);
    check_end("second session", &second);
    drop(fds);
    leaks.check();
});
