//! Hostile peers in both directions: a scripted fake server that answers our
//! `Client` with crafted bytes, and a raw client that sends crafted bytes to
//! our `Server` serving `Edu`. Every test checks a specific outcome, bounded
//! time, and that no fd leaks (the process fd count is back where it started).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use vfio_io::caps::Capabilities;
use vfio_io::device::{
    DeviceInfo, DeviceIo, RegionCap, RegionInfo, SparseArea, VFIO_DEVICE_FLAGS_RESET,
    VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_io::error::Error;
use vfio_io::models::edu::Edu;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{
    self, cmd, DmaAccess, DmaUnmapMsg, Header, IoFdSubRegion, IrqSetMsg, RegionAccess,
    FLAG_NO_REPLY,
};
use vfio_io::user::server::ServerConfig;

#[path = "support/open_fds.rs"]
mod open_fds;
#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;
#[path = "support/shared_mem_device.rs"]
mod shared_mem_device;
#[path = "support/watchdog.rs"]
mod watchdog;
use open_fds::OpenFds;
use raw_peer::{assert_dropped, dma_map_msg, region_read_msg, Peer, PEER_TIMEOUT};
use served::{Served, TempDir};
use shared_mem_device::{SharedMemDevice, BAR2_SIZE};
use watchdog::Watchdog;

const EDU_ID: u32 = 0x0100_00ed;
const EDU_LIVENESS: u64 = 0x04;
/// How long our client waits for a reply in these tests: long enough for a
/// fake server on a loaded machine, short for the tests that wait it out.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Harness: serialisation, watchdog, fd accounting.
// ---------------------------------------------------------------------------

/// fd counts are process-wide and the harness runs tests on parallel threads,
/// so every test in this file holds this lock for its whole body.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `body` under the lock and a watchdog for hangs (not a speed check)
/// that aborts the process after `limit`; fails if it leaves more or fewer
/// fds open than before.
fn hostile(limit: Duration, body: impl FnOnce()) {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let before = OpenFds::now();
    {
        let _dog = Watchdog::for_this_test(limit);
        body();
    }
    before.assert_none_leaked();
}

const LIMIT: Duration = Duration::from_secs(30);

fn eventfd() -> OwnedFd {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC)
        .expect("eventfd")
        .into()
}

// ---------------------------------------------------------------------------
// The fake server and its scripts.
// ---------------------------------------------------------------------------

struct Fake {
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

/// Listens on a temp socket; the first connection is handed to `script`.
fn fake(script: impl FnOnce(&mut Peer) + Send + 'static) -> Fake {
    let dir = TempDir::new("hostile");
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        drop(listener);
        let mut p = Peer::new(s);
        script(&mut p);
    });
    Fake {
        path,
        thread: Some(thread),
        _dir: dir,
    }
}

impl Fake {
    /// Waits for the script; its assertion failures fail the test.
    fn join(mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        timeout: CLIENT_TIMEOUT,
        twin_socket: false,
        ..ClientConfig::default()
    }
}

const PLAIN_JSON: &str = r#"{"capabilities":{"max_msg_fds":8}}"#;

/// The one region the fake device has: 16 MiB, read/write, no caps.
fn plain_region() -> RegionInfo {
    RegionInfo {
        index: 0,
        flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
        size: 16 << 20,
        ..RegionInfo::default()
    }
}

/// The fake device's info: it declares reset, which several scripts use as
/// the simplest request with a reply.
fn device_info(num_regions: u32, num_irqs: u32) -> [u8; 16] {
    proto::encode_device_info(
        16,
        &DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_RESET,
            num_regions,
            num_irqs,
        },
    )
}

fn answer_version(p: &mut Peer, json: &str) {
    let v = p.expect(cmd::VERSION);
    p.reply(&v.h, &[&proto::encode_version(0, 0, json)], &[]);
}

/// Answers GET_INFO with one region, that region's info with `region`, and
/// refuses the feature probes and the ioeventfd query: what
/// `Client::connect` needs after VERSION.
fn answer_discovery(p: &mut Peer, region: &[u8]) {
    answer_probes(p, region);
    let io = p.expect(cmd::DEVICE_GET_REGION_IO_FDS);
    p.error(&io.h, libc::ENOTTY);
}

/// [`answer_discovery`] up to the ioeventfd query, which is left to the
/// script.
fn answer_probes(p: &mut Peer, region: &[u8]) {
    let i = p.expect(cmd::DEVICE_GET_INFO);
    p.reply(&i.h, &[&device_info(1, 0)], &[]);
    let r = p.expect(cmd::DEVICE_GET_REGION_INFO);
    p.reply(&r.h, &[region], &[]);
    for _ in 0..2 {
        let f = p.expect(cmd::DEVICE_FEATURE);
        p.error(&f.h, libc::ENOTTY);
    }
}

/// An ioeventfd sub-region of 4 bytes at offset 0 naming fd `fd_index`.
fn doorbell_sub(fd_index: u32) -> IoFdSubRegion {
    IoFdSubRegion {
        offset: 0,
        size: 4,
        fd_index,
        kind: 0,
        flags: 0,
        data: 0,
    }
}

fn handshake(p: &mut Peer) {
    answer_version(p, PLAIN_JSON);
    answer_discovery(p, &proto::encode_region_info(&plain_region(), 4096));
}

fn connect_err(f: &Fake) -> Error {
    match Client::connect(&f.path, client_config()) {
        Ok(_) => panic!("connect to a hostile server succeeded"),
        Err(e) => e,
    }
}

/// A fake server whose reply to VERSION is `bytes` (raw); then it closes, or
/// with `stay` keeps the connection open until the client leaves (so an error
/// is the client's own finding, not the EOF's).
fn version_reply_raw(bytes: Vec<u8>, stay: bool) -> Error {
    let f = fake(move |p| {
        let _ = p.expect(cmd::VERSION);
        p.bytes(&bytes);
        if stay {
            p.drain();
        }
    });
    let e = connect_err(&f);
    f.join();
    e
}

/// A fake server whose VERSION reply carries `json`.
fn version_reply_json(json: String) -> Error {
    let f = fake(move |p| {
        answer_version(p, &json);
        p.drain();
    });
    let e = connect_err(&f);
    f.join();
    e
}

/// A fake server whose region 0 info reply is `region`.
fn region_info_reply(region: Vec<u8>) -> Error {
    let f = fake(move |p| {
        answer_version(p, PLAIN_JSON);
        let i = p.expect(cmd::DEVICE_GET_INFO);
        p.reply(&i.h, &[&device_info(1, 0)], &[]);
        let r = p.expect(cmd::DEVICE_GET_REGION_INFO);
        p.reply(&r.h, &[&region], &[]);
        p.drain();
    });
    let e = connect_err(&f);
    f.join();
    e
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn region_with_caps(caps: Vec<RegionCap>) -> Vec<u8> {
    let b = proto::encode_region_info(
        &RegionInfo {
            caps,
            ..plain_region()
        },
        4096,
    );
    // The corruptions below only mean something if the chain is really walked.
    let flags = u32::from_ne_bytes(b[4..8].try_into().unwrap());
    assert_ne!(flags & VFIO_REGION_INFO_FLAG_CAPS, 0);
    b
}

fn two_caps() -> Vec<RegionCap> {
    vec![
        RegionCap::SparseMmap(vec![SparseArea {
            offset: 0,
            size: 0x1000,
        }]),
        RegionCap::Type {
            region_type: 1,
            subtype: 2,
        },
    ]
}

fn assert_protocol(e: &Error) {
    assert!(
        matches!(e, Error::Protocol(_)),
        "expected Protocol, got {e:?}"
    );
    assert_eq!(e.errno(), libc::EPROTO);
}

// ---------------------------------------------------------------------------
// Hostile servers against our client.
// ---------------------------------------------------------------------------

#[test]
fn server_sends_truncated_header_then_closes() {
    hostile(LIMIT, || {
        let e = version_reply_raw(vec![1, 0, 1, 0, 20, 0], false);
        assert!(matches!(e, Error::Disconnected), "{e:?}");
    });
}

#[test]
fn server_reply_size_smaller_than_header() {
    hostile(LIMIT, || {
        let mut h = Header::reply(&Header::command(0, cmd::VERSION, 0), 0);
        h.size = 8;
        // The reader refuses the header and takes the link down.
        assert_protocol(&version_reply_raw(h.encode().to_vec(), true));
    });
}

#[test]
fn server_reply_size_larger_than_maximum() {
    hostile(LIMIT, || {
        let mut h = Header::reply(&Header::command(0, cmd::VERSION, 0), 0);
        h.size = u32::MAX;
        assert_protocol(&version_reply_raw(h.encode().to_vec(), true));
    });
}

#[test]
fn server_disconnects_mid_message() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            let v = p.expect(cmd::VERSION);
            let mut h = Header::reply(&v.h, 4096);
            h.size = 4096;
            p.bytes(&h.encode());
            p.bytes(&[0u8; 100]);
            // Closing here leaves the message 3980 bytes short.
        });
        let e = connect_err(&f);
        assert!(matches!(e, Error::Disconnected), "{e:?}");
        f.join();
    });
}

#[test]
fn server_replies_with_unknown_id_carrying_an_fd() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let r = p.expect(cmd::DEVICE_RESET);
            let mut bogus = r.h;
            bogus.id ^= 0x5a5a;
            let efd = eventfd();
            // Nobody waits for this id: dropped, and its fd closed by the client.
            p.reply(&bogus, &[], &[efd.as_raw_fd()]);
            p.reply(&r.h, &[], &[]);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        c.reset()
            .expect("the real reply still completes the request");
        drop(c);
        f.join();
    });
}

#[test]
fn server_sends_duplicate_reply() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let r = p.expect(cmd::DEVICE_RESET);
            p.reply(&r.h, &[], &[]);
            let efd = eventfd();
            p.reply(&r.h, &[], &[efd.as_raw_fd()]);
            let r2 = p.expect(cmd::DEVICE_RESET);
            assert_ne!(r2.h.id, r.h.id, "a reused id would match the duplicate");
            p.reply(&r2.h, &[], &[]);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        c.reset().unwrap();
        // The duplicate must not be taken as the answer to this second request.
        c.reset().unwrap();
        drop(c);
        f.join();
    });
}

#[test]
fn server_replies_with_the_wrong_command() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let r = p.expect(cmd::DEVICE_RESET);
            let mut h = r.h;
            h.command = cmd::REGION_READ;
            p.reply(&h, &[], &[]);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        let e = c.reset().unwrap_err();
        assert_protocol(&e);
        drop(c);
        f.join();
    });
}

#[test]
fn server_offers_a_pipe_as_an_ioeventfd() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            answer_version(p, PLAIN_JSON);
            answer_probes(p, &proto::encode_region_info(&plain_region(), 4096));
            let io = p.expect(cmd::DEVICE_GET_REGION_IO_FDS);
            let (_r, w) = nix::unistd::pipe().unwrap();
            let body = proto::encode_io_fds(4096, 0, &[doorbell_sub(0)]);
            p.reply(&io.h, &[&body], &[w.as_raw_fd()]);
            // Not an eventfd, so not used: the write comes as a message.
            let m = p.expect(cmd::REGION_WRITE);
            p.reply(&m.h, &[&m.p[..RegionAccess::SIZE]], &[]);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        assert!(!c.capabilities().contains(Capabilities::IOEVENTFD));
        c.region_write(0, 0, &[1, 0, 0, 0], false).unwrap();
        drop(c);
        f.join();
    });
}

#[test]
fn server_names_a_missing_ioeventfd() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            answer_version(p, PLAIN_JSON);
            answer_probes(p, &proto::encode_region_info(&plain_region(), 4096));
            let io = p.expect(cmd::DEVICE_GET_REGION_IO_FDS);
            let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap();
            let body = proto::encode_io_fds(4096, 0, &[doorbell_sub(0), doorbell_sub(1)]);
            p.reply(&io.h, &[&body], &[efd.as_fd().as_raw_fd()]);
            p.drain();
        });
        assert_protocol(&connect_err(&f));
        f.join();
    });
}

#[test]
fn server_region_read_reply_too_short() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let r = p.expect(cmd::REGION_READ);
            // Success, echoing the access, but 2 data bytes of the 4 asked.
            p.reply(&r.h, &[&r.p[..RegionAccess::SIZE], &[1, 2]], &[]);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        let mut b = [0u8; 4];
        assert_protocol(&c.region_read(0, 0, &mut b).unwrap_err());
        drop(c);
        f.join();
    });
}

#[test]
fn server_region_info_cap_points_outside_reply() {
    hostile(LIMIT, || {
        let mut b = region_with_caps(two_caps());
        let len = b.len() as u32;
        put_u32(&mut b, 12, len + 64);
        assert_protocol(&region_info_reply(b));
    });
}

#[test]
fn server_region_info_cap_chain_loops() {
    hostile(LIMIT, || {
        let mut b = region_with_caps(two_caps());
        // The second cap's next points back at the first.
        let second = u32::from_ne_bytes(b[36..40].try_into().unwrap()) as usize;
        put_u32(&mut b, second + 4, proto::REGION_INFO_SIZE as u32);
        assert_protocol(&region_info_reply(b));
    });
}

#[test]
fn server_region_info_caps_overlap() {
    hostile(LIMIT, || {
        let mut b = region_with_caps(two_caps());
        // The sparse cap needs 8+8+16 bytes; make the next cap start 8 bytes in,
        // inside the first one's area list.
        put_u32(
            &mut b,
            proto::REGION_INFO_SIZE + 4,
            proto::REGION_INFO_SIZE as u32 + 16,
        );
        assert_protocol(&region_info_reply(b));
    });
}

#[test]
fn server_sparse_area_past_region_end() {
    hostile(LIMIT, || {
        let b = region_with_caps(vec![RegionCap::SparseMmap(vec![SparseArea {
            offset: (16 << 20) - 0x1000,
            size: 0x2000,
        }])]);
        assert_protocol(&region_info_reply(b));
    });
}

#[test]
fn server_declares_u32_max_regions() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            answer_version(p, PLAIN_JSON);
            let i = p.expect(cmd::DEVICE_GET_INFO);
            p.reply(&i.h, &[&device_info(u32::MAX, 0)], &[]);
            p.drain();
        });
        assert_protocol(&connect_err(&f));
        f.join();
    });
}

#[test]
fn server_declares_u32_max_irqs() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            answer_version(p, PLAIN_JSON);
            let i = p.expect(cmd::DEVICE_GET_INFO);
            p.reply(&i.h, &[&device_info(1, u32::MAX)], &[]);
            p.drain();
        });
        assert_protocol(&connect_err(&f));
        f.join();
    });
}

#[test]
fn server_version_json_invalid() {
    hostile(LIMIT, || {
        assert_protocol(&version_reply_json(r#"{"capabilities":{"#.into()));
    });
}

#[test]
fn server_version_json_huge() {
    hostile(LIMIT, || {
        let pad = "x".repeat(8192);
        assert_protocol(&version_reply_json(format!(
            r#"{{"capabilities":{{"pad":"{pad}"}}}}"#
        )));
    });
}

#[test]
fn server_version_json_deeply_nested() {
    hostile(LIMIT, || {
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_protocol(&version_reply_json(format!(
            r#"{{"capabilities":{{"x":{deep}}}}}"#
        )));
    });
}

#[test]
fn server_version_json_wrong_types() {
    hostile(LIMIT, || {
        assert_protocol(&version_reply_json(
            r#"{"capabilities":{"max_data_xfer_size":"lots"}}"#.into(),
        ));
    });
}

#[test]
fn server_answers_another_major_version() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            let v = p.expect(cmd::VERSION);
            p.reply(&v.h, &[&proto::encode_version(1, 0, PLAIN_JSON)], &[]);
            p.drain();
        });
        assert_protocol(&connect_err(&f));
        f.join();
    });
}

#[test]
fn server_claims_twin_socket_without_fd_index() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            answer_version(p, r#"{"capabilities":{"twin_socket":{"supported":true}}}"#);
            p.drain();
        });
        let e = Client::connect(
            &f.path,
            ClientConfig {
                twin_socket: true,
                ..client_config()
            },
        )
        .err()
        .expect("connect must fail");
        assert_eq!(e.errno(), libc::EPROTO, "{e:?}");
        f.join();
    });
}

#[test]
fn server_sends_more_fds_than_the_client_accepts() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let r = p.expect(cmd::DEVICE_RESET);
            let efd = eventfd();
            // 40 > MAX_RECV_FDS: the kernel truncates the control data.
            let many = vec![efd.as_raw_fd(); 40];
            p.reply(&r.h, &[], &many);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        assert_protocol(&c.reset().unwrap_err());
        drop(c);
        f.join();
    });
}

#[test]
fn server_dma_read_outside_any_mapping_gets_efault() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let r = p.expect(cmd::REGION_READ);
            // While the client waits for this read, ask it for memory it never mapped.
            let a = DmaAccess {
                address: 0xdead_0000,
                count: 8,
            };
            let h = Header::command(0x4242, cmd::DMA_READ, DmaAccess::SIZE);
            p.bytes(&[h.encode().as_slice(), &a.encode()].concat());
            let m = p.recv().expect("the client answers DMA_READ");
            assert!(m.h.is_reply());
            assert_eq!((m.h.id, m.h.command), (0x4242, cmd::DMA_READ));
            assert_eq!(m.h.error_errno(), Some(libc::EFAULT));
            assert!(m.fds.is_empty());
            p.reply(
                &r.h,
                &[&r.p[..RegionAccess::SIZE], &[0x11, 0x22, 0x33, 0x44]],
                &[],
            );
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        let mut b = [0u8; 4];
        c.region_read(0, 0x100, &mut b).unwrap();
        assert_eq!(b, [0x11, 0x22, 0x33, 0x44]);
        drop(c);
        f.join();
    });
}

#[test]
fn server_dma_write_length_mismatch_and_unknown_command() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let r = p.expect(cmd::DEVICE_RESET);
            // DMA_WRITE claiming 64 bytes but carrying 4.
            let a = DmaAccess {
                address: 0x1000,
                count: 64,
            };
            let h = Header::command(0x100, cmd::DMA_WRITE, DmaAccess::SIZE + 4);
            p.bytes(&[h.encode().as_slice(), &a.encode(), &[1, 2, 3, 4]].concat());
            let m = p.recv().expect("the client answers DMA_WRITE");
            assert_eq!((m.h.id, m.h.error_errno()), (0x100, Some(libc::EINVAL)));
            // A command the client does not implement.
            let h = Header::command(0x101, 0x6666, DmaAccess::SIZE);
            p.bytes(&[h.encode().as_slice(), &a.encode()].concat());
            let m = p.recv().expect("the client answers the unknown command");
            assert_eq!((m.h.id, m.h.error_errno()), (0x101, Some(libc::ENOSYS)));
            p.reply(&r.h, &[], &[]);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        c.reset()
            .expect("the pending request completes after the bad commands");
        drop(c);
        f.join();
    });
}

#[test]
fn server_twin_fd_index_names_no_fd() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            let v = p.expect(cmd::VERSION);
            let json = r#"{"capabilities":{"twin_socket":{"supported":true,"fd_index":3}}}"#;
            let efd = eventfd();
            // One fd attached, index 3 claimed: the one fd must still be closed.
            p.reply(
                &v.h,
                &[&proto::encode_version(0, 0, json)],
                &[efd.as_raw_fd()],
            );
            p.drain();
        });
        let e = Client::connect(
            &f.path,
            ClientConfig {
                twin_socket: true,
                ..client_config()
            },
        )
        .err()
        .expect("connect must fail");
        assert_protocol(&e);
        f.join();
    });
}

#[test]
fn server_region_info_needs_more_than_the_limit() {
    hostile(LIMIT, || {
        let mut b = region_with_caps(two_caps());
        b.truncate(proto::REGION_INFO_SIZE);
        // argsz: "retry with 16 MiB of room".
        put_u32(&mut b, 0, 16 << 20);
        assert_protocol(&region_info_reply(b));
    });
}

#[test]
fn server_region_info_for_another_index() {
    hostile(LIMIT, || {
        let b = proto::encode_region_info(
            &RegionInfo {
                index: 5,
                ..plain_region()
            },
            4096,
        );
        assert_protocol(&region_info_reply(b));
    });
}

#[test]
fn server_stops_answering() {
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let _ = p.expect(cmd::DEVICE_RESET);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        let e = c.reset().unwrap_err();
        assert!(matches!(e, Error::Timeout), "{e:?}");
        assert_eq!(e.errno(), libc::ETIMEDOUT);
        drop(c);
        f.join();
    });
}

#[test]
fn server_stops_reading() {
    hostile(LIMIT, || {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let f = fake(move |p| {
            handshake(p);
            // Never read again: the client's writes fill the socket buffer.
            let _ = done_rx.recv_timeout(PEER_TIMEOUT);
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        let big = vec![0xa5u8; 8 << 20];
        let e = c.region_write(0, 0, &big, false).unwrap_err();
        assert!(matches!(e, Error::Timeout), "{e:?}");
        assert_eq!(e.errno(), libc::ETIMEDOUT);
        done_tx.send(()).unwrap();
        drop(c);
        f.join();
    });
}

// ---------------------------------------------------------------------------
// Hostile clients against our server.
// ---------------------------------------------------------------------------

fn server_config() -> ServerConfig {
    ServerConfig {
        timeout: Duration::from_millis(300),
        dma_timeout: Duration::from_millis(300),
        max_data_xfer_size: 4096,
        max_msg_fds: 16,
        max_dma_maps: 4,
        ..ServerConfig::default()
    }
}

fn serve() -> Served {
    served::serve(Edu::new(), server_config())
}

/// Under [`hostile`]: serves edu, connects a raw client that has made its
/// VERSION exchange, runs `body` with both, then checks that the server
/// still serves a well-behaved client.
fn against_our_server(body: impl FnOnce(&mut Peer, &Served)) {
    hostile(LIMIT, || {
        let s = serve();
        let mut p = Peer::connect(&s.path);
        p.version();
        body(&mut p, &s);
        drop(p);
        assert_serves(&s);
    });
}

/// A well-behaved client is served after whatever came before.
fn assert_serves(s: &Served) {
    raw_peer::assert_serves_id(&s.path, Duration::from_secs(2), EDU_ID);
}

#[test]
fn client_command_before_version_is_dropped() {
    hostile(LIMIT, || {
        let s = serve();
        let mut p = Peer::connect(&s.path);
        p.send_cmd(cmd::REGION_READ, &[&region_read_msg(0, 4)], &[]);
        assert_dropped(&mut p, Some(libc::EPROTO));
        drop(p);
        assert_serves(&s);
    });
}

#[test]
fn client_second_version_is_dropped() {
    against_our_server(|p, _| {
        let v = proto::encode_version(0, 0, "{}");
        p.send_cmd(cmd::VERSION, &[&v], &[]);
        assert_dropped(p, Some(libc::EPROTO));
    });
}

#[test]
fn client_truncated_header_then_close() {
    hostile(LIMIT, || {
        let s = serve();
        let p = Peer::connect(&s.path);
        p.bytes(&Header::command(1, cmd::VERSION, 40).encode()[..7]);
        drop(p);
        assert_serves(&s);
    });
}

#[test]
fn client_size_smaller_than_header_is_dropped() {
    against_our_server(|p, _| {
        let mut h = Header::command(9, cmd::DEVICE_RESET, 0);
        h.size = 4;
        p.bytes(&h.encode());
        assert_dropped(p, None);
    });
}

#[test]
fn client_size_larger_than_maximum_is_dropped() {
    against_our_server(|p, _| {
        p.send_oversized_header();
        assert_dropped(p, None);
    });
}

#[test]
fn client_disconnects_mid_message() {
    against_our_server(|p, _| {
        p.send_half_message(0);
    });
}

#[test]
fn client_unknown_message_type_is_dropped() {
    against_our_server(|p, _| {
        p.send_unknown_type();
        assert_dropped(p, None);
    });
}

#[test]
fn client_stray_reply_with_fd_is_ignored() {
    against_our_server(|p, _| {
        let efd = eventfd();
        p.send_stray_reply_with_fd(efd.as_raw_fd());
        drop(efd);
        assert_eq!(p.read32(0), EDU_ID, "the session goes on");
    });
}

#[test]
fn client_unknown_command_gets_enosys_and_session_continues() {
    against_our_server(|p, _| {
        assert_eq!(p.errno_of(0x7777, &[&[0u8; 8]], &[]), Some(libc::ENOSYS));
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_region_write_count_differs_from_data() {
    against_our_server(|p, _| {
        let a = RegionAccess {
            offset: EDU_LIVENESS,
            region: 0,
            count: 8,
        };
        let errno = p.errno_of(cmd::REGION_WRITE, &[&a.encode(), &[1, 2, 3, 4]], &[]);
        assert_eq!(errno, Some(libc::EINVAL));
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_region_read_past_end_or_too_large() {
    against_our_server(|p, _| {
        let past = p.errno_of(cmd::REGION_READ, &[&region_read_msg((1 << 20) - 2, 4)], &[]);
        assert_eq!(past, Some(libc::EINVAL));
        let wraps = p.errno_of(cmd::REGION_READ, &[&region_read_msg(u64::MAX - 1, 4)], &[]);
        assert_eq!(wraps, Some(libc::EINVAL));
        let big = p.errno_of(cmd::REGION_READ, &[&region_read_msg(0, 4097)], &[]);
        assert_eq!(big, Some(libc::EINVAL), "count over max_data_xfer_size");
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_set_irqs_bad_index_or_overflowing_range() {
    against_our_server(|p, _| {
        let set = |index, start, count| {
            IrqSetMsg {
                argsz: proto::IRQ_SET_SIZE as u32,
                flags: 0x20 | 0x1, // ACTION_TRIGGER | DATA_NONE
                index,
                start,
                count,
            }
            .encode()
        };
        let e = p.errno_of(cmd::DEVICE_SET_IRQS, &[&set(99, 0, 1)], &[]);
        assert_eq!(e, Some(libc::EINVAL), "index out of range");
        let e = p.errno_of(cmd::DEVICE_SET_IRQS, &[&set(0, u32::MAX, 2)], &[]);
        assert_eq!(e, Some(libc::EINVAL), "start + count overflows");
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_sends_more_fds_than_max_msg_fds() {
    against_our_server(|p, _| {
        let fds: Vec<OwnedFd> = (0..20).map(|_| eventfd()).collect();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let m = IrqSetMsg {
            argsz: proto::IRQ_SET_SIZE as u32,
            flags: 0x20 | 0x4, // ACTION_TRIGGER | DATA_EVENTFD
            index: 1,
            start: 0,
            count: 20,
        };
        let e = p.errno_of(cmd::DEVICE_SET_IRQS, &[&m.encode()], &raw);
        assert_eq!(e, Some(libc::EINVAL));
        // Ours close here; the fd check in `hostile` catches copies the server kept.
        drop(fds);
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_set_irqs_fd_count_differs_from_count() {
    against_our_server(|p, _| {
        let (a, b) = (eventfd(), eventfd());
        let m = IrqSetMsg {
            argsz: proto::IRQ_SET_SIZE as u32,
            flags: 0x20 | 0x4, // ACTION_TRIGGER | DATA_EVENTFD
            index: 0,
            start: 0,
            count: 1,
        };
        let e = p.errno_of(
            cmd::DEVICE_SET_IRQS,
            &[&m.encode()],
            &[a.as_raw_fd(), b.as_raw_fd()],
        );
        assert_eq!(e, Some(libc::EINVAL));
        drop((a, b));
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_asks_region_info_of_u32_max() {
    against_our_server(|p, _| {
        let req = proto::encode_region_info_request(u32::MAX, u32::MAX);
        let e = p.errno_of(cmd::DEVICE_GET_REGION_INFO, &[&req], &[]);
        assert_eq!(e, Some(libc::EINVAL));
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_sends_fd_with_region_read() {
    against_our_server(|p, _| {
        let efd = eventfd();
        let e = p.errno_of(
            cmd::REGION_READ,
            &[&region_read_msg(0, 4)],
            &[efd.as_raw_fd()],
        );
        assert_eq!(e, Some(libc::EINVAL));
        drop(efd);
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_dma_map_without_fd_works_with_two_fds_refused() {
    against_our_server(|p, _| {
        let ok = p.errno_of(cmd::DMA_MAP, &[&dma_map_msg(0x10_0000, 0x1000)], &[]);
        assert_eq!(ok, None, "message-path DMA_MAP");
        let (a, b) = (eventfd(), eventfd());
        let two = p.errno_of(
            cmd::DMA_MAP,
            &[&dma_map_msg(0x20_0000, 0x1000)],
            &[a.as_raw_fd(), b.as_raw_fd()],
        );
        assert_eq!(two, Some(libc::EINVAL));
        drop((a, b));
    });
}

#[test]
fn client_dma_map_with_unmappable_fd_is_refused_and_closed() {
    against_our_server(|p, _| {
        let efd = eventfd();
        let e = p.errno_of(
            cmd::DMA_MAP,
            &[&dma_map_msg(0x10_0000, 0x1000)],
            &[efd.as_raw_fd()],
        );
        assert_eq!(e, Some(libc::ENODEV), "an eventfd cannot be mmapped");
        drop(efd);
        // The refused map left no mapping behind: the same range maps now.
        let ok = p.errno_of(cmd::DMA_MAP, &[&dma_map_msg(0x10_0000, 0x1000)], &[]);
        assert_eq!(ok, None);
    });
}

#[test]
fn client_sends_dma_read_to_the_server() {
    against_our_server(|p, _| {
        let a = DmaAccess {
            address: 0,
            count: 4,
        };
        let e = p.errno_of(cmd::DMA_READ, &[&a.encode()], &[]);
        assert_eq!(e, Some(libc::EINVAL), "DMA_READ goes server to client");
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_dma_map_overlapping_is_eexist() {
    against_our_server(|p, _| {
        assert_eq!(
            p.errno_of(cmd::DMA_MAP, &[&dma_map_msg(0x10_0000, 0x2000)], &[]),
            None
        );
        let e = p.errno_of(cmd::DMA_MAP, &[&dma_map_msg(0x10_1000, 0x2000)], &[]);
        assert_eq!(e, Some(libc::EEXIST));
    });
}

#[test]
fn client_dma_map_wrapping_is_einval() {
    against_our_server(|p, _| {
        let e = p.errno_of(cmd::DMA_MAP, &[&dma_map_msg(u64::MAX - 0xfff, 0x2000)], &[]);
        assert_eq!(e, Some(libc::EINVAL));
    });
}

#[test]
fn client_dma_map_past_max_dma_maps_is_enospc() {
    against_our_server(|p, _| {
        let max = server_config().max_dma_maps as u64;
        for i in 0..max {
            let m = dma_map_msg(0x10_0000 + i * 0x1000, 0x1000);
            assert_eq!(p.errno_of(cmd::DMA_MAP, &[&m], &[]), None);
        }
        let e = p.errno_of(cmd::DMA_MAP, &[&dma_map_msg(0x90_0000, 0x1000)], &[]);
        assert_eq!(e, Some(libc::ENOSPC));
    });
}

#[test]
fn client_dma_unmap_of_nothing_succeeds_as_with_type1() {
    against_our_server(|p, _| {
        let u = DmaUnmapMsg {
            argsz: DmaUnmapMsg::SIZE as u32,
            flags: 0,
            address: 0x10_0000,
            size: 0x1000,
        };
        // QEMU behind a vIOMMU unmaps ranges that hold nothing.
        assert_eq!(p.errno_of(cmd::DMA_UNMAP, &[&u.encode()], &[]), None);
    });
}

/// Raw client: maps 0x10_0000 without an fd (so the server's DMA goes through
/// messages) and starts an edu DMA from it: the REGION_WRITE of the command
/// register makes the server send DMA_READ before it replies. Returns the id
/// of that REGION_WRITE and the DMA_READ header.
fn start_message_dma(p: &mut Peer) -> (u16, Header) {
    assert_eq!(
        p.errno_of(cmd::DMA_MAP, &[&dma_map_msg(0x10_0000, 0x1000)], &[]),
        None
    );
    for (reg, val) in [(0x80u64, 0x10_0000u64), (0x88, 0x40000), (0x90, 4)] {
        let a = RegionAccess {
            offset: reg,
            region: 0,
            count: 8,
        };
        let m = p.call(cmd::REGION_WRITE, &[&a.encode(), &val.to_le_bytes()], &[]);
        assert_eq!(m.h.error_errno(), None);
    }
    let a = RegionAccess {
        offset: 0x98,
        region: 0,
        count: 8,
    };
    let id = p.send_cmd(cmd::REGION_WRITE, &[&a.encode(), &1u64.to_le_bytes()], &[]);
    let m = p.recv().expect("the server's DMA_READ");
    assert!(!m.h.is_reply());
    assert_eq!(m.h.command, cmd::DMA_READ);
    (id, m.h)
}

#[test]
fn client_never_answers_the_servers_dma_read() {
    against_our_server(|p, _| {
        let (id, dma) = start_message_dma(p);
        // Ignore it: the server gives up after its DMA timeout and goes on.
        let m = p.recv().expect("the REGION_WRITE reply");
        assert_eq!((m.h.id, m.h.command), (id, cmd::REGION_WRITE));
        assert_eq!(m.h.error_errno(), None, "edu completes a failed DMA");
        // A late answer is a reply to nothing now: ignored.
        let late = Header::reply(&dma, DmaAccess::SIZE + 4);
        p.bytes(&[late.encode().as_slice(), &[0u8; DmaAccess::SIZE], &[9; 4]].concat());
        assert_eq!(p.read32(0), EDU_ID);
    });
}

#[test]
fn client_floods_commands_while_the_server_waits_for_dma() {
    against_our_server(|p, _| {
        let (id, _) = start_message_dma(p);
        // More commands than the server queues while it waits (max_queued 256).
        p.flood_reads(server_config().max_queued as u16 + 10);
        // The flood ends the session: the REGION_WRITE still gets its reply
        // (edu completes a failed DMA), the queued commands none.
        let seen = p.expect_closed();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!((seen[0].id, seen[0].command), (id, cmd::REGION_WRITE));
    });
}

#[test]
fn client_floods_posted_writes_then_reads() {
    against_our_server(|p, _| {
        let mut stream = Vec::new();
        for i in 0..10_000u32 {
            let a = RegionAccess {
                offset: EDU_LIVENESS,
                region: 0,
                count: 4,
            };
            let mut h = Header::command(1000, cmd::REGION_WRITE, RegionAccess::SIZE + 4);
            h.flags |= FLAG_NO_REPLY;
            stream.extend_from_slice(&h.encode());
            stream.extend_from_slice(&a.encode());
            stream.extend_from_slice(&i.to_ne_bytes());
        }
        p.bytes(&stream);
        // No reply to any posted write may precede the read's reply (call checks the id).
        assert_eq!(p.read32(EDU_LIVENESS), !9_999u32);
    });
}

#[test]
fn client_connects_twice() {
    hostile(LIMIT, || {
        let s = serve();
        let mut first = Peer::connect(&s.path);
        first.version();
        let mut second = Peer::connect(&s.path);
        let v = proto::encode_version(0, 0, "{}");
        second.send_cmd(cmd::VERSION, &[&v], &[]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            matches!(second.rx.recv(second.s.as_fd(), true), Err(Error::Timeout)),
            "the second connection must wait while the first is served"
        );
        assert_eq!(first.read32(0), EDU_ID);
        drop(first);
        let m = second.recv().expect("served after the first leaves");
        assert_eq!((m.h.command, m.h.error_errno()), (cmd::VERSION, None));
        assert_eq!(second.read32(0), EDU_ID);
        drop(second);
        assert_serves(&s);
    });
}

#[test]
fn client_version_json_invalid_is_dropped() {
    hostile(LIMIT, || {
        let s = serve();
        for json in [
            r#"{"capabilities":"#.to_string(),
            format!(r#"{{"capabilities":{{"pad":"{}"}}}}"#, "y".repeat(5000)),
            r#"{"capabilities":{"max_msg_fds":true}}"#.to_string(),
            format!(
                r#"{{"capabilities":{{"x":{}{}}}}}"#,
                "[".repeat(1000),
                "]".repeat(1000)
            ),
        ] {
            let mut p = Peer::connect(&s.path);
            p.send_cmd(cmd::VERSION, &[&proto::encode_version(0, 0, &json)], &[]);
            assert_dropped(&mut p, Some(libc::EPROTO));
        }
        assert_serves(&s);
    });
}

#[test]
fn client_speaks_another_major_version() {
    hostile(LIMIT, || {
        let s = serve();
        let mut p = Peer::connect(&s.path);
        p.send_cmd(cmd::VERSION, &[&proto::encode_version(7, 0, "{}")], &[]);
        assert_dropped(&mut p, Some(libc::EPROTO));
        drop(p);
        assert_serves(&s);
    });
}

// ---------------------------------------------------------------------------
// Pipelining: several requests in flight, replies batched in one write.
// ---------------------------------------------------------------------------

/// A reply to `req` carrying `payload`, as bytes to batch with others.
fn reply_bytes(req: &Header, payload: &[u8]) -> Vec<u8> {
    let mut b = Header::reply(req, payload.len()).encode().to_vec();
    b.extend_from_slice(payload);
    b
}

/// What the fake device answers to a 4-byte read at `offset` in `round`.
fn pipelined_value(offset: u64, round: usize) -> u32 {
    ((offset as u32) << 16) | round as u32
}

/// The fake device's reply to the read `m` in `round`, as bytes to batch.
fn read_reply_bytes(m: &raw_peer::Msg, round: usize) -> Vec<u8> {
    let a = RegionAccess::decode(&m.p).unwrap();
    let v = pipelined_value(a.offset, round);
    reply_bytes(&m.h, &[&a.encode()[..], &v.to_ne_bytes()].concat())
}

/// Thread `t`'s read in `round`, checked against what the fake device answers.
fn pipelined_read(c: &Client, t: usize, round: usize) -> Result<(), Error> {
    let mut b = [0u8; 4];
    let offset = 4 * t as u64;
    c.region_read(0, offset, &mut b)?;
    assert_eq!(u32::from_ne_bytes(b), pipelined_value(offset, round));
    Ok(())
}

/// Runs `threads` threads on one client, each calling `op(thread, round)`
/// for `rounds` rounds.
fn on_threads(
    c: &Client,
    threads: usize,
    rounds: usize,
    op: impl Fn(&Client, usize, usize) + Sync,
) {
    std::thread::scope(|sc| {
        for t in 0..threads {
            let op = &op;
            sc.spawn(move || {
                for round in 0..rounds {
                    op(c, t, round);
                }
            });
        }
    });
}

#[test]
fn pipelined_replies_batched_out_of_order_reach_their_callers() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 40;
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            for round in 0..ROUNDS {
                // One read of each thread in flight: all answered in one
                // write, in an order that moves every round.
                let mut reqs: Vec<_> = (0..THREADS).map(|_| p.expect(cmd::REGION_READ)).collect();
                reqs.rotate_left(round % THREADS);
                reqs.reverse();
                let mut batch = Vec::new();
                for m in &reqs {
                    batch.extend(read_reply_bytes(m, round));
                }
                p.bytes(&batch);
            }
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        on_threads(&c, THREADS, ROUNDS, |c, t, round| {
            pipelined_read(c, t, round).unwrap()
        });
        drop(c);
        f.join();
    });
}

#[test]
fn pipelined_fds_in_batched_replies_stay_with_their_message() {
    const THREADS: usize = 6;
    const ROUNDS: usize = 20;
    // fds each reply of a round carries, by arrival order of the requests.
    const FDS: [usize; THREADS] = [0, 1, 0, 0, 2, 0];
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            for round in 0..ROUNDS {
                let reqs: Vec<_> = (0..THREADS)
                    .map(|_| p.expect(cmd::DEVICE_GET_REGION_IO_FDS))
                    .collect();
                // Back to back, with no wait between them: fd-less replies
                // batched in one write, each reply with fds in a write of its
                // own (where the sender puts them), last first.
                let mut batch = Vec::new();
                for (k, m) in reqs.iter().enumerate().rev() {
                    let marks: Vec<u64> = (0..FDS[k])
                        .map(|j| (round * 100 + k * 10 + j + 1) as u64)
                        .collect();
                    let subs: Vec<_> = marks
                        .iter()
                        .enumerate()
                        .map(|(j, &data)| IoFdSubRegion {
                            data,
                            offset: 4 * j as u64,
                            ..doorbell_sub(j as u32)
                        })
                        .collect();
                    let payload = proto::encode_io_fds(4096, 0, &subs);
                    if marks.is_empty() {
                        batch.extend(reply_bytes(&m.h, &payload));
                        continue;
                    }
                    // Each eventfd holds its mark, for its receiver to check.
                    let efds: Vec<OwnedFd> = marks
                        .iter()
                        .map(|&mark| {
                            let e = eventfd();
                            nix::unistd::write(&e, &mark.to_ne_bytes()).unwrap();
                            e
                        })
                        .collect();
                    if !batch.is_empty() {
                        p.bytes(&std::mem::take(&mut batch));
                    }
                    let raw: Vec<RawFd> = efds.iter().map(|e| e.as_raw_fd()).collect();
                    p.reply(&m.h, &[&payload], &raw);
                }
                if !batch.is_empty() {
                    p.bytes(&batch);
                }
            }
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        on_threads(&c, THREADS, ROUNDS, |c, _, _| {
            let (subs, fds) = c.region_io_fds(0).unwrap();
            assert_eq!(subs.len(), fds.len(), "a reply got fds of another");
            for (s, fd) in subs.iter().zip(&fds) {
                let mut b = [0u8; 8];
                assert_eq!(nix::unistd::read(fd, &mut b).unwrap(), 8);
                assert_eq!(u64::from_ne_bytes(b), s.data, "an fd went to another reply");
            }
        });
        drop(c);
        f.join();
    });
}

#[test]
fn pipelined_bad_message_after_good_replies_fails_only_the_rest() {
    const THREADS: usize = 4;
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            let reqs: Vec<_> = (0..THREADS).map(|_| p.expect(cmd::REGION_READ)).collect();
            // Threads 0 and 1 are answered; a header too short to be one
            // follows in the same write.
            let mut batch = Vec::new();
            let mut bad = Header::reply(&reqs[0].h, 0);
            for m in &reqs {
                if RegionAccess::decode(&m.p).unwrap().offset < 8 {
                    batch.extend(read_reply_bytes(m, 0));
                } else {
                    bad = Header::reply(&m.h, 0);
                }
            }
            bad.size = 3;
            batch.extend(bad.encode());
            p.bytes(&batch);
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        on_threads(&c, THREADS, 1, |c, t, _| {
            let r = pipelined_read(c, t, 0);
            if t < 2 {
                r.expect("a reply that came before the bad message");
            } else {
                assert_protocol(&r.unwrap_err());
            }
        });
        let mut b = [0u8; 4];
        assert_protocol(&c.region_read(0, 0, &mut b).unwrap_err());
        drop(c);
        f.join();
    });
}

#[test]
fn pipelined_commands_in_one_write_get_replies_in_order_fds_on_their_own() {
    hostile(LIMIT, || {
        let s = served::serve(SharedMemDevice::new(), server_config());
        let mut p = Peer::connect(&s.path);
        p.version();
        let read = region_read_msg(0, 4);
        let info = |index| proto::encode_region_info_request(4096, index);
        // (command, payload, fds its reply carries): BAR2's info comes with
        // its memory fd, BAR0's without.
        let cmds: [(u16, Vec<u8>, usize); 6] = [
            (cmd::REGION_READ, read.to_vec(), 0),
            (cmd::DEVICE_GET_REGION_INFO, info(2).to_vec(), 1),
            (cmd::REGION_READ, read.to_vec(), 0),
            (cmd::DEVICE_GET_REGION_INFO, info(0).to_vec(), 0),
            (cmd::DEVICE_GET_REGION_INFO, info(2).to_vec(), 1),
            (cmd::REGION_READ, read.to_vec(), 0),
        ];
        let mut batch = Vec::new();
        for (id, (command, payload, _)) in cmds.iter().enumerate() {
            batch.extend(Header::command(100 + id as u16, *command, payload.len()).encode());
            batch.extend(payload);
        }
        p.bytes(&batch);
        for (id, (command, _, fds)) in cmds.iter().enumerate() {
            let m = p.recv().unwrap();
            assert!(m.h.is_reply());
            assert_eq!((m.h.id, m.h.command), (100 + id as u16, *command));
            assert_eq!(m.h.error_errno(), None);
            assert_eq!(m.fds.len(), *fds, "reply {id} carries another's fds");
            for fd in &m.fds {
                let size = nix::sys::stat::fstat(fd).unwrap().st_size;
                assert_eq!(size as u64, BAR2_SIZE, "not BAR2's memory");
            }
        }
        drop(p);
        s.finish();
    });
}

#[test]
fn pipelined_commands_before_a_bad_one_are_answered() {
    against_our_server(|p, _| {
        let mut batch = Vec::new();
        for (id, offset) in [(1u16, 0u64), (2, EDU_LIVENESS)] {
            batch.extend(Header::command(id, cmd::REGION_READ, RegionAccess::SIZE).encode());
            batch.extend(region_read_msg(offset, 4));
        }
        let mut bad = Header::command(3, cmd::REGION_READ, 0);
        bad.size = 3;
        batch.extend(bad.encode());
        p.bytes(&batch);
        // The replies held while more was buffered go out before the
        // server drops the client for the bad header.
        let seen = p.expect_closed();
        let ids: Vec<_> = seen.iter().map(|h| (h.id, h.error_errno())).collect();
        assert_eq!(ids, [(1, None), (2, None)]);
    });
}

#[test]
fn pipelined_reply_before_a_command_without_reply_goes_out() {
    against_our_server(|p, _| {
        // A read, then a posted write to the liveness register, in one write:
        // the read's reply is held while the write is buffered, and must
        // not wait for a later command.
        let mut batch = Header::command(1, cmd::REGION_READ, RegionAccess::SIZE)
            .encode()
            .to_vec();
        batch.extend(region_read_msg(0, 4));
        let mut posted = Header::command(2, cmd::REGION_WRITE, RegionAccess::SIZE + 4);
        posted.flags |= FLAG_NO_REPLY;
        batch.extend(posted.encode());
        batch.extend(region_read_msg(EDU_LIVENESS, 4));
        batch.extend(7u32.to_ne_bytes());
        p.bytes(&batch);
        let m = p.recv().expect("the read's reply");
        assert_eq!((m.h.id, m.h.error_errno()), (1, None));
        assert_eq!(m.p[RegionAccess::SIZE..], EDU_ID.to_ne_bytes());
        assert_eq!(p.read32(EDU_LIVENESS), !7);
    });
}

#[test]
fn pipelined_replies_one_write_each_reach_waiters_after_the_reader_left() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 10;
    hostile(LIMIT, || {
        let f = fake(|p| {
            handshake(p);
            for round in 0..ROUNDS {
                // Each reply in a write of its own, apart, in the order the
                // requests came: the thread reading the socket (most often
                // the first to ask) leaves with its own reply and asks no
                // more, so another waiter must take over to read the rest
                // before its deadline.
                let reqs: Vec<_> = (0..THREADS).map(|_| p.expect(cmd::REGION_READ)).collect();
                for m in &reqs {
                    p.bytes(&read_reply_bytes(m, round));
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            p.drain();
        });
        let c = Client::connect(&f.path, client_config()).unwrap();
        for round in 0..ROUNDS {
            // One request per thread, and the threads end.
            on_threads(&c, THREADS, 1, |c, t, _| {
                pipelined_read(c, t, round).unwrap()
            });
        }
        drop(c);
        f.join();
    });
}
