//! QEMU's migration road over vfio-user: SET MIG_DEVICE_STATE through
//! `device_feature` returns a `data_fd` as kernel VFIO does, the stream is
//! read from it to EOF and written into it, and nothing else is used. Both
//! sides are real servers on real UNIX sockets.
//!
//! Every test counts the process's fds and threads, so the tests of this
//! file run one at a time (`SERIAL`).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_SET,
};
use vfio_io::device::DeviceIo;
use vfio_io::migration::MigrationState::{self, Resuming, Running, Stop, StopCopy};
use vfio_io::models::edu::{regs, Edu, STATE_LEN};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::ServerConfig;

#[path = "support/edu_state.rs"]
mod edu_state;
#[path = "support/open_fds.rs"]
mod open_fds;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;

use edu_state::{busy_edu, config_space, dma_buffer, read32, registers, write32};
use open_fds::OpenFds;

static SERIAL: Mutex<()> = Mutex::new(());

/// The data fds' threads alive in this process now (the library names
/// them; the count does not depend on the test harness's own threads).
fn data_fd_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "vfio-io-data-fd")
        .count()
}

/// Fails unless `n` data fd threads run now; a new thread names itself
/// and a joined one leaves /proc a moment later, so the count gets at most
/// 50 looks.
fn assert_data_fd_threads(n: usize) {
    let mut now = data_fd_threads();
    for _ in 0..50 {
        if now == n {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        now = data_fd_threads();
    }
    assert_eq!(now, n, "data fd threads");
}

/// Checks, when a test ends, that the fds open when it started are all
/// that are open and that no data fd thread is left.
struct LeakCheck(OpenFds);

impl LeakCheck {
    fn start() -> LeakCheck {
        assert_eq!(data_fd_threads(), 0);
        LeakCheck(OpenFds::now())
    }

    fn assert_none_leaked(self) {
        self.0.assert_none_leaked();
        assert_data_fd_threads(0);
    }
}

fn connect(s: &served::Served) -> Client {
    Client::connect(&s.path, ClientConfig::default()).unwrap()
}

/// Runs `test` on clients of two edu servers, alone in this process (see
/// `SERIAL`), then closes everything and checks that no fd or data fd
/// thread is left.
fn two_edus(test: impl FnOnce(&Client, &Client)) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let _w = watchdog::Watchdog::for_this_test(Duration::from_secs(60));
    let leaks = LeakCheck::start();
    let (a, b) = (
        served::serve(Edu::new(), ServerConfig::default()),
        served::serve(Edu::new(), ServerConfig::default()),
    );
    let (src, dst) = (connect(&a), connect(&b));
    test(&src, &dst);
    drop((src, dst));
    a.finish();
    b.finish();
    leaks.assert_none_leaked();
}

/// SET MIG_DEVICE_STATE through `device_feature`, as QEMU sets it: returns
/// the data fd the call handed over, or the errno.
fn set(c: &Client, state: MigrationState) -> Result<Option<OwnedFd>, i32> {
    let mut mig = [0u8; 8];
    mig[..4].copy_from_slice(&(state as u32).to_ne_bytes());
    mig[4..].copy_from_slice(&0x5a5a_5a5au32.to_ne_bytes());
    let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
    c.device_feature(flags, &mut mig).map_err(|e| e.errno())?;
    let fd = i32::from_ne_bytes(mig[4..].try_into().unwrap());
    assert!(fd >= -1, "data_fd {fd}");
    // SAFETY: a data_fd other than -1 is a new fd the call gave this caller.
    Ok((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// GET MIG_DEVICE_STATE through `device_feature`; its data_fd is -1.
fn get(c: &Client) -> MigrationState {
    let mut mig = [0xffu8; 8];
    let flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
    c.device_feature(flags, &mut mig).unwrap();
    assert_eq!(i32::from_ne_bytes(mig[4..].try_into().unwrap()), -1);
    MigrationState::from_u32(u32::from_ne_bytes(mig[..4].try_into().unwrap())).unwrap()
}

/// Moves `src` to STOP_COPY and reads its data fd to EOF.
fn save(src: &Client) -> Vec<u8> {
    let fd = set(src, StopCopy)
        .unwrap()
        .expect("STOP_COPY hands a data fd");
    assert_eq!(get(src), StopCopy);
    let mut stream = Vec::new();
    File::from(fd).read_to_end(&mut stream).unwrap();
    assert_eq!(stream.len(), STATE_LEN);
    stream
}

/// Moves `dst` to RESUMING and writes `stream` into its data fd, which is
/// returned open.
fn load(dst: &Client, stream: &[u8]) -> File {
    let fd = set(dst, Resuming)
        .unwrap()
        .expect("RESUMING hands a data fd");
    let mut f = File::from(fd);
    for chunk in stream.chunks(1500) {
        f.write_all(chunk).unwrap();
    }
    f
}

#[test]
fn edu_migrates_through_the_data_fd_alone() {
    two_edus(|src, dst| {
        let pattern = busy_edu(src);
        let before = registers(src);
        let config = config_space(src);
        assert_ne!(registers(dst), before, "the destination starts elsewhere");

        // RUNNING -> STOP_COPY walks through STOP, as the kernel does.
        let stream = save(src);
        assert!(set(src, Stop).unwrap().is_none(), "STOP has no data");
        assert_eq!(get(src), Stop);

        let f = load(dst, &stream);
        drop(f);
        assert!(set(dst, Stop).unwrap().is_none());
        assert!(set(dst, Running).unwrap().is_none());
        assert_eq!(get(dst), Running);
        assert_eq!(registers(dst), before);
        assert_eq!(config_space(dst), config);
        assert_eq!(dma_buffer(dst), pattern);
        write32(dst, regs::FACTORIAL, 5);
        assert_eq!(read32(dst, regs::FACTORIAL), 120);

        // A state already reached hands no fd.
        assert!(set(dst, Running).unwrap().is_none());
    });
}

#[test]
fn a_writer_that_does_not_close_still_gets_every_byte_applied() {
    two_edus(|src, dst| {
        let pattern = busy_edu(src);
        let before = registers(src);
        let stream = save(src);

        let mut f = load(dst, &stream);
        // Still open: RESUMING -> STOP -> RUNNING takes what was written first.
        assert!(set(dst, Running).unwrap().is_none());
        assert_eq!(registers(dst), before);
        assert_eq!(dma_buffer(dst), pattern);
        // The state moved on: the fd takes no more.
        assert_eq!(f.write(&[0]).unwrap_err().kind(), ErrorKind::BrokenPipe);
        drop(f);
    });
}

/// Leaves `dst` in RESUMING with `bad` written through its data fd, and
/// checks that the next state change fails with EINVAL and changes nothing.
fn refused(dst: &Client, bad: &[u8], what: &str) {
    write32(dst, regs::LIVENESS, 0xaaaa_5555);
    drop(load(dst, bad));
    assert_eq!(set(dst, Stop).unwrap_err(), libc::EINVAL, "{what}");
    assert_eq!(get(dst), Resuming, "{what}");
    assert_eq!(read32(dst, regs::LIVENESS), !0xaaaa_5555, "{what}");
}

#[test]
fn a_corrupt_stream_through_the_fd_fails_the_next_state_change_with_einval() {
    two_edus(|src, dst| {
        busy_edu(src);
        let before = registers(src);
        let stream = save(src);
        let mut corrupt = stream.clone();
        corrupt[STATE_LEN / 2] ^= 0x01;
        refused(dst, &corrupt, "corrupt");
        // The refused stream is dropped; a whole one still goes in.
        let m = dst.migration().unwrap();
        assert_eq!(m.write(&stream).unwrap(), STATE_LEN);
        assert!(set(dst, Running).unwrap().is_none());
        assert_eq!(registers(dst), before);

        // Past the longest stream edu takes: the device refuses a write the
        // fd's thread makes, and the next state change reports it.
        let mut oversized = stream;
        oversized.push(0);
        let c = served::serve(Edu::new(), ServerConfig::default());
        refused(&connect(&c), &oversized, "oversized");
        c.finish();
    });
}

#[test]
fn an_unread_stream_and_a_dropped_client_leak_nothing() {
    two_edus(|src, dst| {
        for _ in 0..3 {
            // The caller reads nothing and moves on (edu's stream fits in
            // the socket, so the thread may already have ended).
            let fd = set(src, StopCopy).unwrap().unwrap();
            assert!(set(src, Stop).unwrap().is_none());
            assert_data_fd_threads(0);
            // The caller closes early: no SIGPIPE, no error.
            let fd2 = set(src, StopCopy).unwrap().unwrap();
            drop(fd2);
            assert!(set(src, Stop).unwrap().is_none());
            drop(fd);
        }
        // A client closed with a RESUMING data fd open and half a stream in
        // it: dropping it (in two_edus) ends the fd's thread.
        let mut f = File::from(set(dst, Resuming).unwrap().unwrap());
        f.write_all(&[1; 100]).unwrap();
        assert_data_fd_threads(1);
        dst.close();
        drop(f);
    });
}
