//! Any request sequence against the C device of c-tests/sample_device.c
//! (compiled by build.rs), served through vfio-io's C API
//! (`vfio_io_server_create`/`_run`/`_stop`/`_destroy`, the device's
//! callbacks calling `vfio_io_server_irq_trigger` and `_dma_read`/`_write`).
//! The harness is the client: it passes real eventfds and sealed memfds and
//! answers the server's DMA_READ/DMA_WRITE requests from its own memory.
//! After the fuzzed session a well-behaved client must still find the
//! device's ID and a working scratch register, the server must stop, and
//! no fd may be left open.
//!
//! Input: a mode byte (bit 0: a valid VERSION first, so most inputs reach
//! the device), then steps of (command u16 LE, flags u8, fds u8, payload
//! length u16 LE, payload) as in the `server` target.
//!
//! Flags: bits 0-1 the message type, bit 2 NO_REPLY, bit 3 ERROR, bit 4
//! attach fds, bit 5 a size field that lies (by bits 6-7 times 8, minus 4).
//! Fds byte: bit 0 a sealed memfd instead of eventfds, bits 1-2 how many
//! minus one.
#![no_main]

use std::ffi::{c_char, c_int, c_void, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vfio_io::device::DeviceIo;
use vfio_io::ffi::{
    vfio_io_server, vfio_io_server_destroy, vfio_io_server_run, vfio_io_server_stop,
};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{cmd, DmaAccess, Header};
use vfio_io::user::wire::{send_msg, Receiver};
use vfio_io::Error;
use vfio_io_fuzz::{
    client_version_payload, eventfd, pattern, poll_readable, sealed_memfd, Cursor, FdLeakCheck,
    Step, MAX_INPUT,
};

/// c-tests/sample_device.h: what the ID register (BAR0 offset 0) reads, and
/// the scratch register's offset.
const SAMPLE_ID: u32 = 0xc0de_0001;
const SAMPLE_REG_SCRATCH: u64 = 0x04;
/// Size of each sealed memfd passed with DMA_MAP.
const DMA_FILE_SIZE: i64 = 64 * 1024;
/// The longest the reader waits for the server to say anything.
const READ_IDLE: Duration = Duration::from_secs(3);

/// `struct sample_device` of c-tests/sample_device.h, field for field: the
/// harness only owns its storage, the C code reads and writes it.
#[repr(C)]
struct SampleDevice {
    /// The `vfio_io_server *`, opaque here.
    srv: *mut c_void,
    scratch: u32,
    irq_result: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_len: u32,
    dma_result: i32,
    resets: c_int,
}

extern "C" {
    /// c-tests/sample_device.c: zeroes `d` and creates its server.
    fn sample_device_create(
        d: *mut SampleDevice,
        socket_path: *const c_char,
        bar2_fd: c_int,
        bar2_size: u64,
    ) -> c_int;
}

/// A served C device; stopped, joined and destroyed on drop.
struct Served {
    // Boxed: the C callbacks hold its address for the server's lifetime.
    dev: Box<SampleDevice>,
    path: PathBuf,
}

/// The server pointer handed to the serving thread.
struct SrvPtr(*mut vfio_io_server);
// SAFETY: vfio_io_server_run may run on any one thread; the pointer stays
// valid until vfio_io_server_destroy, which happens after that thread joined.
unsafe impl Send for SrvPtr {}

impl Served {
    /// A fresh device on a fresh socket path, as a new process would have.
    fn new() -> Served {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vfio-io-fuzz-c-server-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).expect("socket path");
        let mut dev = Box::new(SampleDevice {
            srv: std::ptr::null_mut(),
            scratch: 0,
            irq_result: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_len: 0,
            dma_result: 0,
            resets: 0,
        });
        // SAFETY: `dev` is a live, exclusively owned struct sample_device and
        // `c_path` a NUL-terminated path; -1: no BAR2.
        let r = unsafe { sample_device_create(&mut *dev, c_path.as_ptr(), -1, 0) };
        assert_eq!(r, 0, "sample_device_create");
        assert!(!dev.srv.is_null());
        Served { dev, path }
    }

    fn srv(&self) -> SrvPtr {
        SrvPtr(self.dev.srv.cast())
    }
}

fn run(srv: SrvPtr) -> c_int {
    // SAFETY: a live server (destroyed only after this thread is joined).
    unsafe { vfio_io_server_run(srv.0) }
}

fn stop(srv: &SrvPtr) {
    // SAFETY: a live server; stop may be called from any thread.
    unsafe { vfio_io_server_stop(srv.0) }
}

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: the serving thread was joined before this drop (see the
        // target), so no run is under way; the pointer is not used again.
        unsafe { vfio_io_server_destroy(self.dev.srv.cast()) };
        assert!(!self.path.exists(), "destroy left the socket file");
    }
}

/// The fuzzed session: a valid VERSION when `mode` bit 0 asks, then the
/// input's steps.
fn parse(c: &mut Cursor<'_>, mode: u8) -> Vec<Step> {
    let mut msgs = Vec::new();
    if mode & 1 != 0 {
        let p = client_version_payload(false, None);
        let h = Header::command(0, cmd::VERSION, p.len());
        msgs.push(Step {
            id: 0,
            bytes: vfio_io_fuzz::frame(&h, &p),
            flags: 0,
            fds: 0,
        });
    }
    msgs.extend(vfio_io_fuzz::read_steps(c));
    msgs
}

/// The fds a message may attach, alive for the whole input.
struct Fds {
    eventfds: Vec<OwnedFd>,
    sealed: OwnedFd,
}

impl Fds {
    fn pick(&self, sel: u8) -> Vec<RawFd> {
        let n = usize::from((sel >> 1) & 3) + 1;
        if sel & 1 != 0 {
            vec![self.sealed.as_raw_fd(); n]
        } else {
            self.eventfds
                .iter()
                .take(n)
                .map(|f| f.as_raw_fd())
                .collect()
        }
    }
}

/// The correct reply to a DMA request of the server, against `memory`.
fn answer_dma(h: &Header, p: &[u8], memory: &mut [u8]) -> Vec<u8> {
    let Ok(a) = DmaAccess::decode(p) else {
        return Header::error_reply(h, 22).encode().to_vec();
    };
    let len = memory.len();
    let at = |i: usize| (a.address as usize).wrapping_add(i) % len;
    let payload = if h.command == cmd::DMA_READ {
        let n = usize::try_from(a.count).unwrap_or(usize::MAX);
        if n > 1 << 20 {
            return Header::error_reply(h, 14).encode().to_vec();
        }
        let mut out = a.encode().to_vec();
        out.extend((0..n).map(|i| memory[at(i)]));
        out
    } else {
        for (i, b) in p.get(DmaAccess::SIZE..).unwrap_or(&[]).iter().enumerate() {
            memory[at(i)] = *b;
        }
        a.encode().to_vec()
    };
    vfio_io_fuzz::frame(&Header::reply(h, payload.len()), &payload)
}

/// Reads everything the server sends on the fuzzed session, answering its
/// DMA requests, until it hangs up or stays silent for READ_IDLE.
fn read_session(sock: BorrowedFd<'_>, send_lock: &Mutex<()>) {
    let mut rx = Receiver::new(2 << 20);
    let mut memory: Vec<u8> = (0..4096).map(pattern).collect();
    while poll_readable(&[sock], READ_IDLE)[0] {
        loop {
            let (h, p) = match rx.recv(sock, true) {
                Ok(m) => (m.header, m.payload.to_vec()),
                Err(Error::Timeout) => break,
                Err(_) => return,
            };
            if h.is_reply() || (h.command != cmd::DMA_READ && h.command != cmd::DMA_WRITE) {
                continue;
            }
            let r = answer_dma(&h, &p, &mut memory);
            let _g = send_lock.lock().unwrap();
            let _ = send_msg(sock, &[&r], &[]);
        }
    }
}

/// A well-behaved client after the fuzzed session: the C device answers.
fn check_device(path: &std::path::Path) {
    let config = ClientConfig {
        timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let client = Client::connect(path, config).expect("a fresh client connects");
    let mut v = [0u8; 4];
    client.region_read(0, 0, &mut v).expect("read the ID");
    assert_eq!(u32::from_ne_bytes(v), SAMPLE_ID, "ID register");
    client
        .region_write(0, SAMPLE_REG_SCRATCH, &0x5eed_1234u32.to_ne_bytes(), false)
        .expect("write scratch");
    client
        .region_read(0, SAMPLE_REG_SCRATCH, &mut v)
        .expect("read scratch");
    assert_eq!(u32::from_ne_bytes(v), 0x5eed_1234, "scratch round trip");
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let leaks = FdLeakCheck::start();
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let msgs = parse(&mut c, mode);
    let fds = Fds {
        eventfds: (0..4).map(|_| eventfd()).collect(),
        sealed: sealed_memfd(DMA_FILE_SIZE),
    };
    let served = Served::new();
    let srv = served.srv();
    // The fuzzed session's socket, waiting in the listener's backlog until served.
    let sock = UnixStream::connect(&served.path).expect("connect");
    sock.set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let send_lock = Mutex::new(());
    let ran = std::thread::scope(|s| {
        let server_thread = s.spawn(move || run(srv));
        // Written by a thread while this one reads and answers, so neither
        // side can stall on a full socket buffer.
        let writer = s.spawn(|| {
            for m in &msgs {
                let attach = if m.flags & 0x10 != 0 {
                    fds.pick(m.fds)
                } else {
                    Vec::new()
                };
                let _g = send_lock.lock().unwrap();
                if send_msg(sock.as_fd(), &[&m.bytes], &attach).is_err() {
                    break; // the server dropped us: fine
                }
            }
            let _ = sock.shutdown(std::net::Shutdown::Write);
        });
        read_session(sock.as_fd(), &send_lock);
        writer.join().expect("writer thread");
        check_device(&served.path);
        stop(&served.srv());
        server_thread.join().expect("server thread")
    });
    drop(sock);
    assert_eq!(ran, 0, "vfio_io_server_run");
    drop(served);
    drop(fds);
    leaks.check();
});
