//! Hostile vfio-user clients against the C device of c-tests/sample_device.c
//! served through vfio-io's C API: raw peers send garbage, floods, half
//! messages, wrong fds and hang up mid-message; after each, a fresh
//! well-behaved client must read the device's ID and round-trip its scratch
//! register, and neither this process nor the server's has an fd more than
//! before.
//!
//! The server is the meson-built program sample_device_server (the device
//! and a C `main`, linked to the library as a C user links it), run in its
//! own process and named by VFIO_IO_SAMPLE_DEVICE_SERVER; scripts/test-all
//! sets it after the meson build. Without it every test says so loudly and
//! returns: cargo does not build C, and compiling the device in this
//! package's build script would link it into the library users get.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vfio_io::device::DeviceIo;
use vfio_io::error::Error;
use vfio_io::user::proto::{cmd, DmaAccess, Header, RegionAccess, FLAG_NO_REPLY};

#[path = "support/open_fds.rs"]
mod open_fds;
#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;
use open_fds::OpenFds;
use raw_peer::{assert_dropped, dma_map_msg, irq_eventfds_msg, region_read_msg, Peer};
use served::TempDir;
use watchdog::Watchdog;

/// The environment variable naming the sample_device_server program.
const SERVER_ENV: &str = "VFIO_IO_SAMPLE_DEVICE_SERVER";
/// c-tests/sample_device.h: the registers of BAR0 and what ID reads.
const SAMPLE_ID: u32 = 0xc0de_0001;
const REG_SCRATCH: u64 = 0x04;
const REG_DMA_SRC: u64 = 0x10;
const REG_DMA_DST: u64 = 0x18;
const REG_DMA_LEN: u64 = 0x20;
const REG_DMA_GO: u64 = 0x24;
const REG_DMA_RESULT: u64 = 0x28;
const BAR0_SIZE: u64 = 0x1000;
/// A hang the watchdog turns into an abort: generous, a bound on hangs only.
const LIMIT: Duration = Duration::from_secs(60);

/// fd counts are process-wide: every test holds this lock for its whole body.
static SERIAL: Mutex<()> = Mutex::new(());

/// The sample_device_server process serving one socket; SIGTERM on drop.
struct CServer {
    child: Child,
    path: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl CServer {
    /// Starts `program` on a fresh socket and waits (at most 3000 looks,
    /// 10 ms apart) until it listens.
    fn start(program: &Path) -> CServer {
        let dir = TempDir::new("c-server-hostile");
        let path = dir.join("sample.sock");
        let log = dir.join("server.log");
        let child = Command::new(program)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("server log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let mut s = CServer {
            child,
            path,
            log,
            _dir: dir,
        };
        for _ in 0..3000 {
            if s.path.exists() {
                return s;
            }
            if let Some(st) = s.child.try_wait().expect("try_wait") {
                panic!("the server exited at start ({st}): {}", s.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the server never listened: {}", s.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server process's open fds.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the server's /proc/PID/fd")
            .count()
    }

    /// Fails unless the server is back to `before` fds once the clients
    /// left (it closes a session's fds as it notices the hang-up: at most
    /// 1000 looks, 10 ms apart).
    fn assert_fds_back_to(&self, before: usize) {
        let mut now = self.fds();
        for _ in 0..1000 {
            if now == before {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
            now = self.fds();
        }
        panic!(
            "the server holds {now} fds, {before} before the hostile client: {}",
            self.log_text()
        );
    }

    /// SIGTERM: the server must exit 0 and remove its socket.
    fn stop(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let st = self.child.wait().expect("wait for the server");
        assert!(st.success(), "server exit {st}: {}", self.log_text());
        assert!(!self.path.exists(), "the socket is left after SIGTERM");
    }
}

impl Drop for CServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.log_text());
        }
    }
}

/// The server program, or `None` when the variable is unset: said once, on
/// stderr itself (not the captured output, which a passing test hides).
fn server_program() -> Option<PathBuf> {
    static SAID: Once = Once::new();
    let p = std::env::var_os(SERVER_ENV).map(PathBuf::from);
    if p.is_none() {
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED c_server_hostile: {SERVER_ENV} is not set: it names the meson-built \
                 c-tests/build/sample_device_server (scripts/test-all sets it)"
            );
        });
    }
    p
}

/// Serves the C device, connects a raw client that has made its VERSION
/// exchange, runs `body` with it, then checks that a fresh client is served
/// and that no fd leaked on either side; the server then stops on SIGTERM.
fn against_c_server(body: impl FnOnce(&mut Peer)) {
    against_c_server_raw(|path| {
        let mut p = Peer::connect(path);
        p.version();
        body(&mut p);
    });
}

/// As [`against_c_server`], with `body` connecting by itself.
fn against_c_server_raw(body: impl FnOnce(&Path)) {
    let Some(program) = server_program() else {
        return;
    };
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ours = OpenFds::now();
    {
        let _dog = Watchdog::for_this_test(LIMIT);
        let server = CServer::start(&program);
        let theirs = server.fds();
        body(&server.path);
        assert_serves(&server.path);
        server.assert_fds_back_to(theirs);
        server.stop();
    }
    ours.assert_none_leaked();
}

/// A well-behaved client reads the ID and round-trips the scratch register.
fn assert_serves(path: &Path) {
    let c = raw_peer::assert_serves_id(path, Duration::from_secs(10), SAMPLE_ID);
    let mut b = [0u8; 4];
    c.region_write(0, REG_SCRATCH, &0x5eed_1234u32.to_ne_bytes(), false)
        .unwrap();
    c.region_read(0, REG_SCRATCH, &mut b).unwrap();
    assert_eq!(u32::from_ne_bytes(b), 0x5eed_1234, "scratch round trip");
}

/// Raw client: a 4-byte BAR0 write that must succeed.
fn write32(p: &mut Peer, offset: u64, v: u32) {
    let e = p.errno_of(
        cmd::REGION_WRITE,
        &[&region_read_msg(offset, 4), &v.to_ne_bytes()],
        &[],
    );
    assert_eq!(e, None, "write of {offset:#x}");
}

fn eventfd() -> OwnedFd {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC)
        .expect("eventfd")
        .into()
}

/// Raw client: maps 0x10_0000 without an fd (the server's DMA then goes by
/// messages) and sets the device's DMA registers for 16 bytes from there.
fn prepare_message_dma(p: &mut Peer) {
    let map = dma_map_msg(0x10_0000, 0x1000);
    assert_eq!(p.errno_of(cmd::DMA_MAP, &[&map], &[]), None);
    for (reg, v) in [
        (REG_DMA_SRC, 0x10_0000),
        (REG_DMA_SRC + 4, 0),
        (REG_DMA_DST, 0x10_0800),
        (REG_DMA_DST + 4, 0),
        (REG_DMA_LEN, 16),
    ] {
        write32(p, reg, v);
    }
}

/// Raw client: writes DMA_GO, whose callback makes the server send DMA_READ
/// before it replies. Returns the write's id and the DMA_READ.
fn start_message_dma(p: &mut Peer) -> (u16, raw_peer::Msg) {
    prepare_message_dma(p);
    let id = p.send_cmd(
        cmd::REGION_WRITE,
        &[&region_read_msg(REG_DMA_GO, 4), &1u32.to_ne_bytes()],
        &[],
    );
    let m = p.recv().expect("the server's DMA_READ");
    assert!(!m.h.is_reply());
    assert_eq!(m.h.command, cmd::DMA_READ);
    (id, m)
}

#[test]
fn garbage_instead_of_version_is_dropped() {
    against_c_server_raw(|path| {
        let mut p = Peer::connect(path);
        // A "header" whose size is below the header's own: not a message.
        p.bytes(&[0x5a; 64]);
        let seen = p.expect_closed();
        assert!(seen.len() <= 1, "{seen:?}");
    });
}

#[test]
fn command_before_version_is_dropped() {
    against_c_server_raw(|path| {
        let mut p = Peer::connect(path);
        p.send_cmd(cmd::REGION_READ, &[&region_read_msg(0, 4)], &[]);
        assert_dropped(&mut p, Some(libc::EPROTO));
    });
}

#[test]
fn half_header_then_hang_up() {
    against_c_server_raw(|path| {
        let p = Peer::connect(path);
        p.bytes(&Header::command(1, cmd::VERSION, 40).encode()[..7]);
    });
}

#[test]
fn hang_up_mid_message() {
    against_c_server(|p| {
        p.send_half_message(REG_SCRATCH);
    });
}

#[test]
fn size_larger_than_maximum_is_dropped() {
    against_c_server(|p| {
        p.send_oversized_header();
        assert_dropped(p, None);
    });
}

#[test]
fn unknown_message_type_is_dropped() {
    against_c_server(|p| {
        p.send_unknown_type();
        assert_dropped(p, None);
    });
}

#[test]
fn callback_errors_and_bad_accesses_keep_the_session() {
    against_c_server(|p| {
        // The C callbacks refuse: a write to the read-only ID, a 2-byte read.
        let ro = p.errno_of(
            cmd::REGION_WRITE,
            &[&region_read_msg(0, 4), &1u32.to_ne_bytes()],
            &[],
        );
        assert_eq!(ro, Some(libc::EROFS), "the callback's -EROFS");
        assert_eq!(
            p.errno_of(cmd::REGION_READ, &[&region_read_msg(0, 2)], &[]),
            Some(libc::EINVAL)
        );
        // The library refuses before any callback: past BAR0, count != data.
        assert_eq!(
            p.errno_of(cmd::REGION_READ, &[&region_read_msg(BAR0_SIZE - 2, 4)], &[]),
            Some(libc::EINVAL)
        );
        let short = p.errno_of(
            cmd::REGION_WRITE,
            &[&region_read_msg(REG_SCRATCH, 8), &[1, 2, 3, 4]],
            &[],
        );
        assert_eq!(short, Some(libc::EINVAL));
        assert_eq!(p.errno_of(0x7777, &[&[0u8; 8]], &[]), Some(libc::ENOSYS));
        assert_eq!(p.read32(0), SAMPLE_ID, "the session goes on");
    });
}

#[test]
fn wrong_fds_are_refused_and_closed() {
    against_c_server(|p| {
        // An fd with a REGION_READ.
        let efd = eventfd();
        let read = region_read_msg(0, 4);
        let e = p.errno_of(cmd::REGION_READ, &[&read], &[efd.as_raw_fd()]);
        assert_eq!(e, Some(libc::EINVAL));
        // Two eventfds for one MSI vector.
        let (a, b) = (eventfd(), eventfd());
        let e = p.errno_of(
            cmd::DEVICE_SET_IRQS,
            &[&irq_eventfds_msg(1, 1)],
            &[a.as_raw_fd(), b.as_raw_fd()],
        );
        assert_eq!(e, Some(libc::EINVAL));
        // An eventfd as DMA memory: it cannot be mapped.
        let map = dma_map_msg(0x10_0000, 0x1000);
        let e = p.errno_of(cmd::DMA_MAP, &[&map], &[efd.as_raw_fd()]);
        assert_eq!(e, Some(libc::ENODEV));
        // A stray reply carrying an fd: ignored, the fd closed.
        p.send_stray_reply_with_fd(efd.as_raw_fd());
        // Ours close here; the server's fd count is checked after the session.
        drop((efd, a, b));
        assert_eq!(p.read32(0), SAMPLE_ID);
    });
}

#[test]
fn more_fds_than_the_server_accepts() {
    against_c_server(|p| {
        let fds: Vec<OwnedFd> = (0..40).map(|_| eventfd()).collect();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        // Refused with an error, or the session dropped: never accepted.
        let id = p.send_cmd(cmd::DEVICE_SET_IRQS, &[&irq_eventfds_msg(1, 40)], &raw);
        drop(fds);
        match p.recv() {
            Ok(m) => {
                assert_eq!(m.h.id, id);
                assert!(m.h.error_errno().is_some(), "40 eventfds accepted");
            }
            Err(Error::Disconnected) => {}
            Err(e) => panic!("{e:?}"),
        }
    });
}

#[test]
fn flood_of_posted_writes_then_a_read() {
    against_c_server(|p| {
        let mut stream = Vec::new();
        for i in 0..10_000u32 {
            let mut h = Header::command(1000, cmd::REGION_WRITE, RegionAccess::SIZE + 4);
            h.flags |= FLAG_NO_REPLY;
            stream.extend_from_slice(&h.encode());
            stream.extend_from_slice(&region_read_msg(REG_SCRATCH, 4));
            stream.extend_from_slice(&i.to_ne_bytes());
        }
        p.bytes(&stream);
        // Every write reached the C device in order, and none was answered
        // (call checks that the next message is the read's reply).
        assert_eq!(p.read32(REG_SCRATCH), 9_999);
    });
}

#[test]
fn dma_read_never_answered_fails_the_copy() {
    against_c_server(|p| {
        let (id, dma) = start_message_dma(p);
        // Ignored: dma_read in the callback gives up after the server's DMA
        // timeout and the write still gets its reply.
        let m = p.recv().expect("the DMA_GO reply");
        assert_eq!((m.h.id, m.h.command), (id, cmd::REGION_WRITE));
        assert_eq!(m.h.error_errno(), None);
        assert_eq!(
            p.read32(REG_DMA_RESULT) as i32,
            -libc::ETIMEDOUT,
            "the C device saw the timeout"
        );
        // A late answer is a reply to nothing now: ignored.
        let late = Header::reply(&dma.h, DmaAccess::SIZE + 16);
        p.bytes(&[late.encode().as_slice(), &[0u8; DmaAccess::SIZE], &[9; 16]].concat());
        assert_eq!(p.read32(0), SAMPLE_ID);
    });
}

#[test]
fn dma_read_answered_right_copies() {
    against_c_server(|p| {
        let (id, dma) = start_message_dma(p);
        let a = DmaAccess::decode(&dma.p).expect("DMA_READ payload");
        assert_eq!((a.address, a.count), (0x10_0000, 16));
        p.reply(&dma.h, &[&a.encode(), &[0xab; 16]], &[]);
        let w = p.recv().expect("the server's DMA_WRITE");
        assert_eq!(w.h.command, cmd::DMA_WRITE);
        let wa = DmaAccess::decode(&w.p).expect("DMA_WRITE payload");
        assert_eq!((wa.address, wa.count), (0x10_0800, 16));
        assert_eq!(&w.p[DmaAccess::SIZE..], &[0xab; 16]);
        p.reply(&w.h, &[&wa.encode()], &[]);
        let m = p.recv().expect("the DMA_GO reply");
        assert_eq!((m.h.id, m.h.error_errno()), (id, None));
        assert_eq!(p.read32(REG_DMA_RESULT), 0, "the copy succeeded");
    });
}

#[test]
fn hang_up_while_the_server_waits_for_dma() {
    against_c_server(|p| {
        start_message_dma(p);
    });
}

#[test]
fn flood_while_the_server_waits_for_dma() {
    against_c_server(|p| {
        let (id, _) = start_message_dma(p);
        // More commands than the server queues while it waits (256 by default).
        p.flood_reads(300);
        // The flood ends the session: the DMA_GO write still gets its reply
        // (the copy fails in the callback), the queued commands none.
        let seen = p.expect_closed();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!((seen[0].id, seen[0].command), (id, cmd::REGION_WRITE));
    });
}
