//! The C API of serving a device (`vfio_io_server_*`) driven from Rust with
//! `extern "C"` callbacks, for what a C test states less directly: what a
//! misbehaving callback's client sees, that a server's context is lent only
//! to its own callbacks, that `run` is not entered twice, and that refused
//! or destroyed servers leak no fd, and that the DMA timeout of
//! `vfio_io_server_create_with`'s options bounds a DMA by message.

use std::ffi::{c_int, c_void, CString};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vfio_io::device::{
    pci_irq, pci_region, DeviceIo, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_io::ffi::{
    vfio_io_server, vfio_io_server_create, vfio_io_server_create_with, vfio_io_server_destroy,
    vfio_io_server_device, vfio_io_server_dispatch, vfio_io_server_dma_read,
    vfio_io_server_irq_trigger, vfio_io_server_ops, vfio_io_server_options, vfio_io_server_region,
    vfio_io_server_run, vfio_io_server_stop,
};
use vfio_io::memory::DmaBuffer;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::cmd;

#[path = "support/open_fds.rs"]
mod open_fds;
#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/watchdog.rs"]
mod watchdog;

/// The fd count is process-wide: the tests here run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// BAR0 offsets and what the callbacks do there.
const SHORT_READ_AT: u64 = 0x0; // returns 2 for a 4-byte read
const ENODEV_AT: u64 = 0x4; // returns -ENODEV
const OTHER_SERVER_IRQ_AT: u64 = 0x8; // triggers an IRQ of another server
const STOP_AT: u64 = 0xc; // a write stops the server from its own callback
const DMA_AT: u64 = 0x20; // a read DMA-reads 8 bytes at DMA_IOVA into the data
/// Where the raw client maps memory without an fd, for DMA by message.
const DMA_IOVA: u64 = 0x10_0000;

/// What the callbacks share with the test.
struct State {
    /// Another server, whose context must not be reachable from ours.
    other: AtomicPtr<vfio_io_server>,
    /// This server, for the stop callback.
    this: AtomicPtr<vfio_io_server>,
    /// What irq_trigger on the other server returned.
    other_irq: AtomicI32,
}

unsafe extern "C" fn read_cb(
    opaque: *mut c_void,
    _index: u32,
    offset: u64,
    _buf: *mut c_void,
    count: u32,
) -> libc::ssize_t {
    // SAFETY: the opaque is the test's State, alive while the server runs.
    let state = unsafe { &*opaque.cast::<State>() };
    match offset {
        SHORT_READ_AT => 2,
        ENODEV_AT => -(libc::ENODEV as libc::ssize_t),
        OTHER_SERVER_IRQ_AT => {
            let other = state.other.load(Ordering::SeqCst);
            // SAFETY: the other server outlives this callback.
            let r = unsafe { vfio_io_server_irq_trigger(other, pci_irq::MSI, 0) };
            state.other_irq.store(r, Ordering::SeqCst);
            count as libc::ssize_t
        }
        DMA_AT => {
            let this = state.this.load(Ordering::SeqCst);
            // SAFETY: this server is live while its callback runs; `buf`
            // holds `count` (8) bytes.
            match unsafe { vfio_io_server_dma_read(this, DMA_IOVA, _buf, count as usize) } {
                0 => count as libc::ssize_t,
                e => e as libc::ssize_t,
            }
        }
        _ => count as libc::ssize_t,
    }
}

unsafe extern "C" fn write_cb(
    opaque: *mut c_void,
    _index: u32,
    offset: u64,
    _buf: *const c_void,
    count: u32,
) -> libc::ssize_t {
    // SAFETY: as in read_cb.
    let state = unsafe { &*opaque.cast::<State>() };
    if offset == STOP_AT {
        // SAFETY: this server is live while its callback runs.
        unsafe { vfio_io_server_stop(state.this.load(Ordering::SeqCst)) };
    }
    count as libc::ssize_t
}

unsafe extern "C" fn failing_reset(_: *mut c_void) -> c_int {
    -libc::EIO
}

fn ops() -> vfio_io_server_ops {
    vfio_io_server_ops {
        size: std::mem::size_of::<vfio_io_server_ops>() as u32,
        region_read: Some(read_cb),
        region_write: Some(write_cb),
        reset: Some(failing_reset),
        ..vfio_io_server_ops::default()
    }
}

fn device(regions: &[vfio_io_server_region]) -> vfio_io_server_device {
    vfio_io_server_device {
        size: std::mem::size_of::<vfio_io_server_device>() as u32,
        vendor_id: 0x1234,
        device_id: 0xc0de,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        class_code: 0xff_0000,
        regions: regions.as_ptr(),
        num_regions: regions.len() as u32,
        irq_count: [0, 1, 0, 0, 0],
        ..vfio_io_server_device::default()
    }
}

fn bar0() -> vfio_io_server_region {
    vfio_io_server_region {
        index: pci_region::BAR0,
        flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
        size: 0x1000,
        fd: -1,
        fd_offset: 0,
    }
}

/// Creates a server on `path`; panics on failure.
fn create(path: &CString, dev: &vfio_io_server_device, state: &State) -> *mut vfio_io_server {
    let mut srv = ptr::null_mut();
    let opaque = (state as *const State).cast_mut().cast();
    // SAFETY: every pointer is valid for the call; `state` outlives the server.
    let r = unsafe { vfio_io_server_create(path.as_ptr(), dev, &ops(), opaque, &mut srv) };
    assert_eq!(r, 0, "vfio_io_server_create");
    srv
}

/// An empty folder of this test process for sockets.
fn fresh_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vfio-io-c-server-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// A raw server pointer sent to the serving thread.
struct SendPtr(*mut vfio_io_server);
// SAFETY: the server's entry points may be called from any thread.
unsafe impl Send for SendPtr {}

#[test]
fn misbehaving_callbacks_reach_the_client_as_errors_and_contexts_stay_private() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _wd = watchdog::Watchdog::for_this_test(Duration::from_secs(60));
    let dir = fresh_dir("contexts");
    let (pa, pb) = (dir.join("a.sock"), dir.join("b.sock"));
    let (ca, cb) = (
        CString::new(pa.to_str().unwrap()).unwrap(),
        CString::new(pb.to_str().unwrap()).unwrap(),
    );
    let state = State {
        other: AtomicPtr::new(ptr::null_mut()),
        this: AtomicPtr::new(ptr::null_mut()),
        other_irq: AtomicI32::new(1234),
    };
    let regions = [bar0()];
    let a = create(&ca, &device(&regions), &state);
    let b = create(&cb, &device(&regions), &state);
    state.this.store(a, Ordering::SeqCst);
    state.other.store(b, Ordering::SeqCst);

    let pa_ = SendPtr(a);
    // SAFETY: `a` stays live until the thread is joined.
    let serving = std::thread::spawn(move || unsafe { vfio_io_server_run({ pa_ }.0) });
    let client = Client::connect(&pa, ClientConfig::default()).unwrap();
    // `run` is under way on the other thread (it serves this client).
    // SAFETY: `a` is live.
    assert_eq!(unsafe { vfio_io_server_run(a) }, -libc::EBUSY);
    // Nor is dispatch, which would serve the same server from another loop.
    // SAFETY: `a` is live.
    assert_eq!(unsafe { vfio_io_server_dispatch(a) }, -libc::EBUSY);

    let mut v = [0u8; 4];
    let short = client.region_read(pci_region::BAR0, SHORT_READ_AT, &mut v);
    assert_eq!(short.unwrap_err().errno(), libc::EIO, "a short count");
    let enodev = client.region_read(pci_region::BAR0, ENODEV_AT, &mut v);
    assert_eq!(
        enodev.unwrap_err().errno(),
        libc::ENODEV,
        "a callback's -errno"
    );
    assert_eq!(
        client.reset().unwrap_err().errno(),
        libc::EIO,
        "failing reset"
    );

    client
        .region_read(pci_region::BAR0, OTHER_SERVER_IRQ_AT, &mut v)
        .unwrap();
    // The other server serves no client: its own session is not there to
    // queue the request for, and ours is never used for it.
    assert_eq!(
        state.other_irq.load(Ordering::SeqCst),
        -libc::ENOTCONN,
        "a callback reached another server's session"
    );

    // The server still answers, then stops from inside its own callback.
    client.region_read(pci_region::BAR0, 0x10, &mut v).unwrap();
    // The stop cuts the connection before the reply is sent.
    let stopping = client.region_write(pci_region::BAR0, STOP_AT, &[0; 4], false);
    assert!(
        matches!(stopping, Err(vfio_io::Error::Disconnected)),
        "{stopping:?}"
    );
    assert_eq!(serving.join().unwrap(), 0, "run after a stop");
    drop(client);
    // SAFETY: neither server runs; both were created above.
    unsafe {
        vfio_io_server_destroy(a);
        vfio_io_server_destroy(b);
    }
    assert!(!pa.exists() && !pb.exists(), "socket files left behind");
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn refused_and_destroyed_servers_leak_no_fd() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fresh_dir("fds");
    let path = CString::new(dir.join("s.sock").to_str().unwrap()).unwrap();
    let mem = DmaBuffer::new(0x2000).unwrap();
    let state = State {
        other: AtomicPtr::new(ptr::null_mut()),
        this: AtomicPtr::new(ptr::null_mut()),
        other_irq: AtomicI32::new(0),
    };
    let mapped = vfio_io_server_region {
        index: pci_region::BAR2,
        flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP,
        size: 0x2000,
        fd: mem.fd().as_raw_fd(),
        fd_offset: 0,
    };
    let before = open_fds::OpenFds::now();

    // Refused after the fd was duplicated: BAR0 of 100 bytes.
    let refused = [
        mapped,
        vfio_io_server_region {
            size: 100,
            ..bar0()
        },
    ];
    // A region reaching past the end of its memfd.
    let too_long = [vfio_io_server_region {
        size: 0x4000,
        ..mapped
    }];
    // An fd offset mmap cannot take.
    let unaligned = [vfio_io_server_region {
        fd_offset: 0x10,
        ..mapped
    }];
    for regions in [&refused[..], &too_long[..], &unaligned[..]] {
        let mut srv = ptr::null_mut();
        let opaque = (&state as *const State).cast_mut().cast();
        // SAFETY: every pointer is valid for the call.
        let r = unsafe {
            vfio_io_server_create(path.as_ptr(), &device(regions), &ops(), opaque, &mut srv)
        };
        assert_eq!(r, -libc::EINVAL, "{:?}", regions);
        assert!(srv.is_null(), "*out written on failure");
    }
    before.assert_none_leaked();

    let good = [bar0(), mapped];
    let srv = create(&path, &device(&good), &state);
    // SAFETY: `srv` is live and not running.
    unsafe { vfio_io_server_destroy(srv) };
    before.assert_none_leaked();
    std::fs::remove_dir(&dir).unwrap();
}

/// A raw client of a server made with `dma_timeout_ms`: maps memory without
/// an fd, reads DMA_AT, whose callback DMA-reads by message, and answers
/// the server's DMA_READ after `answer_after` (never for `None`). Returns
/// the read's reply: its errno, or its data.
fn dma_by_message(dma_timeout_ms: u32, answer_after: Option<Duration>) -> Result<u64, i32> {
    let dir = fresh_dir(&format!("dma-timeout-{dma_timeout_ms}"));
    let path = dir.join("s.sock");
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let state = State {
        other: AtomicPtr::new(ptr::null_mut()),
        this: AtomicPtr::new(ptr::null_mut()),
        other_irq: AtomicI32::new(0),
    };
    let opts = vfio_io_server_options {
        size: std::mem::size_of::<vfio_io_server_options>() as u32,
        dma_timeout_ms,
        ..vfio_io_server_options::default()
    };
    let regions = [bar0()];
    let mut srv = ptr::null_mut();
    let opaque = (&state as *const State).cast_mut().cast();
    // SAFETY: every pointer is valid for the call; `state` outlives the server.
    let r = unsafe {
        vfio_io_server_create_with(
            cpath.as_ptr(),
            &device(&regions),
            &ops(),
            opaque,
            &opts,
            &mut srv,
        )
    };
    assert_eq!(r, 0, "vfio_io_server_create_with");
    state.this.store(srv, Ordering::SeqCst);
    let running = SendPtr(srv);
    // SAFETY: `srv` stays live until the thread is joined.
    let serving = std::thread::spawn(move || unsafe { vfio_io_server_run({ running }.0) });

    let mut p = raw_peer::Peer::connect(&path);
    p.version();
    let map = raw_peer::dma_map_msg(DMA_IOVA, 0x1000);
    assert_eq!(p.errno_of(cmd::DMA_MAP, &[&map], &[]), None);
    let sent = Instant::now();
    let id = p.send_cmd(
        cmd::REGION_READ,
        &[&raw_peer::region_read_msg(DMA_AT, 8)],
        &[],
    );
    let dma = p.recv().expect("the server's DMA_READ");
    assert_eq!((dma.h.is_reply(), dma.h.command), (false, cmd::DMA_READ));
    if let Some(after) = answer_after {
        std::thread::sleep(after);
        p.reply(
            &dma.h,
            &[&dma.p, &0x1122_3344_5566_7788u64.to_ne_bytes()],
            &[],
        );
    }
    let m = p.recv().expect("the REGION_READ reply");
    assert_eq!((m.h.id, m.h.command), (id, cmd::REGION_READ));
    let waited = sent.elapsed();
    let result = match m.h.error_errno() {
        Some(e) => Err(e),
        None => Ok(u64::from_ne_bytes(m.p[m.p.len() - 8..].try_into().unwrap())),
    };
    if answer_after.is_none() {
        // The server waits out its DMA timeout (its waits round to
        // milliseconds, hence the slack) before it gives up.
        let timeout = Duration::from_millis(dma_timeout_ms.into());
        assert!(waited >= timeout * 9 / 10, "{waited:?}");
    }
    drop(p);
    // SAFETY: `srv` is live; stopped and joined before it is destroyed.
    unsafe { vfio_io_server_stop(srv) };
    assert_eq!(serving.join().unwrap(), 0);
    // SAFETY: as above.
    unsafe { vfio_io_server_destroy(srv) };
    std::fs::remove_dir(&dir).unwrap();
    result
}

#[test]
fn the_dma_timeout_option_bounds_a_dma_by_message() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _wd = watchdog::Watchdog::for_this_test(Duration::from_secs(60));
    // A short timeout: an unanswered DMA fails with ETIMEDOUT, and the
    // callback's -ETIMEDOUT is the client's reply.
    assert_eq!(dma_by_message(200, None), Err(libc::ETIMEDOUT));
    // A long one: an answer later than the default timeout (5 s) still
    // completes the DMA, so the option, not the default, was applied.
    assert_eq!(
        dma_by_message(30_000, Some(Duration::from_millis(5500))),
        Ok(0x1122_3344_5566_7788)
    );
}
