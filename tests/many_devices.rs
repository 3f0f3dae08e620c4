//! Many devices in one process, a `Server` on a thread of its own for each:
//! a device whose model panics and a client that breaks the protocol touch
//! only their own device. Every other device keeps answering its client
//! correctly the whole time, and the broken sessions' ends stop nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vfio_io::device::DeviceIo;
use vfio_io::error::{Error, Result};
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{cmd, Header, RegionAccess};
use vfio_io::user::server::{DeviceContext, ServerConfig};

#[path = "support/forwarding_model.rs"]
mod forwarding_model;
#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;
use forwarding_model::{Call, Hooks, Wrapped};
use raw_peer::Peer;
use served::{serve, Served};
use watchdog::Watchdog;

/// Devices served by this process.
const DEVICES: usize = 8;
/// The device whose model panics on every access.
const PANICKING: usize = 3;
/// The device whose client is hostile.
const HOSTILE: usize = 5;
/// Checked accesses each well-behaved client completes while the hostile
/// client and the panicking device are at work.
const GOOD_OPS: usize = 300;
/// Failed accesses the panicking device's client sees in that time, at least.
const PANICKED_OPS: usize = 50;

/// Makes every access to edu (read, write, reset) panic inside the model.
struct PanicsOnEveryCall {
    calls: Arc<AtomicUsize>,
}

impl Hooks<Edu> for PanicsOnEveryCall {
    fn call(&mut self, _: &mut Edu, _: &mut dyn DeviceContext, call: Call<'_>) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match call {
            Call::Read { offset, .. } => panic!("model bug: region_read at {offset:#x}"),
            Call::Write { offset, .. } => panic!("model bug: region_write at {offset:#x}"),
            Call::Reset => panic!("model bug: reset"),
        }
    }
}

fn connect(s: &Served) -> Client {
    Client::connect(
        &s.path,
        ClientConfig {
            timeout: Duration::from_secs(20),
            ..ClientConfig::default()
        },
    )
    .expect("connect")
}

/// One checked exchange with edu: its ID, then a write of a value unique to
/// this device and round whose complement the liveness register returns (a
/// reply meant for another device or an older request would not match).
fn checked_access(c: &Client, device: usize, round: usize) {
    let mut b = [0u8; 4];
    c.region_read(0, regs::ID, &mut b).expect("read ID");
    assert_eq!(u32::from_ne_bytes(b), ID, "device {device}: ID");
    let v = ((device as u32) << 24) | (round as u32 & 0xff_ffff);
    c.region_write(0, regs::LIVENESS, &v.to_ne_bytes(), false)
        .expect("write liveness");
    c.region_read(0, regs::LIVENESS, &mut b)
        .expect("read liveness");
    assert_eq!(u32::from_ne_bytes(b), !v, "device {device}: liveness");
}

/// The device answered `what` with an EIO error reply.
fn assert_eio(r: Result<()>, what: &str) {
    match r {
        Err(Error::Remote { errno, .. }) => assert_eq!(errno, libc::EIO, "{what}"),
        other => panic!("a panicking model's {what} gave {other:?}"),
    }
}

fn region_read_msg(offset: u64) -> [u8; RegionAccess::SIZE] {
    RegionAccess {
        offset,
        region: 0,
        count: 4,
    }
    .encode()
}

/// One round of abuse of the hostile device, each session ended by the
/// client: garbage bytes, a flood of requests whose replies it never reads,
/// and a message cut off in the middle.
fn hostile_round(s: &Served) {
    // Garbage: not a header the server can take; it closes the connection.
    let mut p = Peer::connect(&s.path);
    p.bytes(&[0xff; 48]);
    p.expect_closed();
    drop(p);

    // Flood: 500 reads sent back to back (their replies fit the socket
    // buffer, so the server never blocks on them), then a hang-up unread.
    let mut p = Peer::connect(&s.path);
    p.version();
    let read = region_read_msg(regs::ID);
    for _ in 0..500 {
        p.send_cmd(cmd::REGION_READ, &[&read], &[]);
    }
    drop(p);

    // Hang-up mid-message: a header announcing more than is ever sent.
    let mut p = Peer::connect(&s.path);
    p.version();
    p.bytes(&Header::command(7, cmd::REGION_WRITE, RegionAccess::SIZE + 1024).encode());
    p.bytes(&region_read_msg(0));
    drop(p);
}

#[test]
fn eight_devices_survive_a_panicking_model_and_a_hostile_client() {
    let _dog = Watchdog::for_this_test(Duration::from_secs(120));
    let panicked_calls = Arc::new(AtomicUsize::new(0));
    let devices: Vec<Served> = (0..DEVICES)
        .map(|i| {
            if i == PANICKING {
                let hooks = PanicsOnEveryCall {
                    calls: panicked_calls.clone(),
                };
                serve(Wrapped::new(Edu::new(), hooks), ServerConfig::default())
            } else {
                serve(Edu::new(), ServerConfig::default())
            }
        })
        .collect();
    let good: Vec<usize> = (0..DEVICES)
        .filter(|&i| i != PANICKING && i != HOSTILE)
        .collect();
    let done = AtomicBool::new(false);
    let good_ops: Vec<AtomicUsize> = (0..DEVICES).map(|_| AtomicUsize::new(0)).collect();
    let panicked_ops = AtomicUsize::new(0);
    let hostile_rounds = AtomicUsize::new(0);
    // Whether the well-behaved clients and the panicking device's client
    // have all done their share: the hostile client keeps going until then.
    let all_done = || {
        good.iter()
            .all(|&i| good_ops[i].load(Ordering::SeqCst) >= GOOD_OPS)
            && panicked_ops.load(Ordering::SeqCst) >= PANICKED_OPS
    };

    std::thread::scope(|sc| {
        let mut clients = Vec::new();
        for &i in &good {
            let (s, done, n) = (&devices[i], &done, &good_ops[i]);
            clients.push(sc.spawn(move || {
                let c = connect(s);
                let mut round = 0;
                while !done.load(Ordering::SeqCst) {
                    checked_access(&c, i, round);
                    round += 1;
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        {
            let (s, done, n) = (&devices[PANICKING], &done, &panicked_ops);
            clients.push(sc.spawn(move || {
                let c = connect(s);
                let mut b = [0u8; 4];
                while !done.load(Ordering::SeqCst) {
                    // Every access fails with EIO; the session stays up.
                    let r = c.region_read(0, regs::ID, &mut b);
                    assert_eio(r, "read");
                    let w = c.region_write(0, regs::LIVENESS, &[1, 2, 3, 4], false);
                    assert_eio(w, "write");
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        let s = &devices[HOSTILE];
        // A client thread that ended early failed: stop, and let the scope
        // re-raise its panic.
        while !all_done() && !clients.iter().any(|c| c.is_finished()) {
            hostile_round(s);
            hostile_rounds.fetch_add(1, Ordering::SeqCst);
        }
        done.store(true, Ordering::SeqCst);
    });

    assert!(hostile_rounds.load(Ordering::SeqCst) >= 1);
    // Two calls per round of the panicking client reached its model.
    assert!(panicked_calls.load(Ordering::SeqCst) >= 2 * PANICKED_OPS);
    // After all that, every device serves a new client: the hostile device's
    // server outlived its broken sessions, the panicking one its panics.
    for (i, s) in devices.iter().enumerate() {
        let c = connect(s);
        if i == PANICKING {
            let mut b = [0u8; 4];
            assert!(c.region_read(0, regs::ID, &mut b).is_err());
        } else {
            checked_access(&c, i, 0);
        }
    }
    // Each server thread ends cleanly when stopped: none panicked or failed.
    for s in devices {
        s.finish();
    }
}
