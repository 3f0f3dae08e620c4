//! A server driven from the caller's loop: `Server::poll_fd` and
//! `Server::dispatch`. Dispatch never waits for input (no client; half a
//! message), a session lives between calls, and the next client follows
//! the first. Real UNIX sockets; the waits are polls under a watchdog.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vfio_io::device::{pci_region, DeviceIo};
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{self, cmd, Header, RegionAccess};
use vfio_io::user::server::{Server, ServerConfig};

#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;

use raw_peer::Peer;

/// Whether the server's poll fd is readable within `ms` (0: right now).
fn readable(server: &mut Server<Edu>, ms: u16) -> bool {
    let fd = server.poll_fd().unwrap();
    let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut pfd, PollTimeout::from(ms)).unwrap() == 1
}

/// Dispatches once the poll fd says there is work (the wait is a watchdog).
fn dispatch_when_ready(server: &mut Server<Edu>) {
    assert!(
        readable(server, 30_000),
        "the poll fd never became readable"
    );
    server.dispatch().unwrap();
}

/// A REGION_READ of edu's ID register, as bytes on the wire.
fn read_id_msg(id: u16) -> Vec<u8> {
    let a = RegionAccess {
        offset: regs::ID,
        region: pci_region::BAR0,
        count: 4,
    }
    .encode();
    let mut m = Header::command(id, cmd::REGION_READ, a.len())
        .encode()
        .to_vec();
    m.extend_from_slice(&a);
    m
}

#[test]
fn dispatch_never_waits_for_input_and_a_session_lives_between_calls() {
    let _dog = watchdog::Watchdog::for_this_test(Duration::from_secs(60));
    let dir = served::TempDir::new("event-loop");
    let path = dir.join("s.sock");
    let mut server = Server::bind(&path, Edu::new(), ServerConfig::default()).unwrap();

    // No client: nothing to do, and dispatch returns without waiting.
    assert!(!readable(&mut server, 0));
    server.dispatch().unwrap();

    let mut peer = Peer::connect(&path);
    dispatch_when_ready(&mut server); // accepts
    let v = proto::encode_version(0, 0, r#"{"capabilities":{"max_msg_fds":8}}"#);
    let mut version = Header::command(1, cmd::VERSION, v.len()).encode().to_vec();
    version.extend_from_slice(&v);
    // Half a message: dispatch reads it, keeps it, and returns.
    peer.bytes(&version[..10]);
    dispatch_when_ready(&mut server);
    assert!(!readable(&mut server, 0), "half a message counts as work");
    server.dispatch().unwrap();
    // The rest: the session kept the first half.
    peer.bytes(&version[10..]);
    dispatch_when_ready(&mut server);
    let reply = peer.recv().unwrap();
    assert!(reply.h.is_reply() && reply.h.error_errno().is_none());
    assert_eq!(reply.h.command, cmd::VERSION);

    // Two commands at once: one dispatch answers both.
    let mut two = read_id_msg(2);
    two.extend_from_slice(&read_id_msg(3));
    peer.bytes(&two);
    dispatch_when_ready(&mut server);
    for id in [2, 3] {
        let m = peer.recv().unwrap();
        assert_eq!(m.h.id, id);
        assert_eq!(&m.p[RegionAccess::SIZE..], &ID.to_ne_bytes());
    }

    // The client leaves: the session ends in a dispatch, the next client comes.
    drop(peer);
    dispatch_when_ready(&mut server);
    assert!(!readable(&mut server, 0), "a closed session still polled");
    let mut second = Peer::connect(&path);
    dispatch_when_ready(&mut server);
    second.bytes(&version);
    dispatch_when_ready(&mut server);
    assert!(second.recv().unwrap().h.error_errno().is_none());

    // A stopped server ends its session and says so.
    server.stopper().stop();
    assert_eq!(server.dispatch().unwrap_err().errno(), libc::ESHUTDOWN);
    assert!(second.expect_closed().is_empty());
}

#[test]
fn our_client_is_served_from_a_poll_loop_one_client_after_another() {
    let _dog = watchdog::Watchdog::for_this_test(Duration::from_secs(60));
    let dir = served::TempDir::new("event-loop-client");
    let path = dir.join("s.sock");
    let mut server = Server::bind(&path, Edu::new(), ServerConfig::default()).unwrap();
    let done = AtomicBool::new(false);
    let reads = std::thread::scope(|sc| {
        let client = sc.spawn(|| {
            let mut right = 0;
            for _ in 0..2 {
                let c = Client::connect(&path, ClientConfig::default()).unwrap();
                for i in 0..100u32 {
                    let mut b = [0u8; 4];
                    c.region_read(pci_region::BAR0, regs::ID, &mut b).unwrap();
                    right += usize::from(u32::from_le_bytes(b) == ID);
                    c.region_write(pci_region::BAR0, regs::LIVENESS, &i.to_le_bytes(), false)
                        .unwrap();
                    c.region_read(pci_region::BAR0, regs::LIVENESS, &mut b)
                        .unwrap();
                    right += usize::from(u32::from_le_bytes(b) == !i);
                }
            }
            done.store(true, Ordering::SeqCst);
            right
        });
        while !done.load(Ordering::SeqCst) {
            if readable(&mut server, 100) {
                server.dispatch().unwrap();
            }
        }
        client.join().unwrap()
    });
    assert_eq!(reads, 2 * 200);
}

#[test]
fn a_reply_held_behind_a_posted_write_leaves_with_the_dispatch() {
    let _dog = watchdog::Watchdog::for_this_test(Duration::from_secs(60));
    let dir = served::TempDir::new("event-loop-held");
    let path = dir.join("s.sock");
    let mut server = Server::bind(&path, Edu::new(), ServerConfig::default()).unwrap();
    let mut peer = Peer::connect(&path);
    dispatch_when_ready(&mut server); // accepts
    let v = proto::encode_version(0, 0, r#"{"capabilities":{"max_msg_fds":8}}"#);
    peer.send_cmd(cmd::VERSION, &[&v], &[]);
    dispatch_when_ready(&mut server);
    assert!(peer.recv().unwrap().h.error_errno().is_none());
    // A read, then a posted write (no reply) in the same write: the read's
    // reply is held while the write is buffered, and must leave before the
    // dispatch returns to the caller's loop.
    let mut batch = read_id_msg(2);
    let a = RegionAccess {
        offset: regs::LIVENESS,
        region: pci_region::BAR0,
        count: 4,
    }
    .encode();
    let mut posted = Header::command(3, cmd::REGION_WRITE, a.len() + 4);
    posted.flags |= proto::FLAG_NO_REPLY;
    batch.extend_from_slice(&posted.encode());
    batch.extend_from_slice(&a);
    batch.extend_from_slice(&5u32.to_ne_bytes());
    peer.bytes(&batch);
    dispatch_when_ready(&mut server);
    let m = peer.recv().unwrap();
    assert_eq!((m.h.id, m.h.error_errno()), (2, None));
    assert_eq!(&m.p[RegionAccess::SIZE..], &ID.to_ne_bytes());
}
