//! Polling mode (`ClientConfig::spin`, `ServerConfig::spin`): the waiting
//! side polls its socket before blocking. Only behaviour is checked here;
//! its speed is in the bench.

use std::time::Duration;

use vfio_io::conformance::run_edu_suite;
use vfio_io::device::DeviceIo;
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{cmd, Header, RegionAccess};
use vfio_io::user::server::ServerConfig;

#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;

const SPIN: Duration = Duration::from_micros(50);

fn polling_server(twin_socket: bool) -> served::Served {
    served::serve(
        Edu::new(),
        ServerConfig {
            spin: Some(SPIN),
            twin_socket,
            ..ServerConfig::default()
        },
    )
}

#[test]
fn a_polling_client_gets_every_reply_alone_and_shared() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = Client::connect(
        &s.path,
        ClientConfig {
            spin: Some(Duration::from_micros(50)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let mut b = [0u8; 4];
    for i in 0..200u32 {
        c.region_read(0, regs::ID, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), ID);
        c.region_write(0, regs::LIVENESS, &i.to_ne_bytes(), i % 2 == 0)
            .unwrap();
        c.region_read(0, regs::LIVENESS, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), !i);
    }
    // Several threads: one polls as the reader, the others sleep on the
    // condvar and are woken with their replies.
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                let mut b = [0u8; 4];
                for _ in 0..200 {
                    c.region_read(0, regs::ID, &mut b).unwrap();
                    assert_eq!(u32::from_ne_bytes(b), ID);
                }
            });
        }
    });
    drop(c);
    s.finish();
}

#[test]
fn a_polling_server_passes_the_edu_suite_with_dma_on_either_socket() {
    // edu's DMA cases make the server wait for DMA replies: on the twin
    // socket, and on the main socket with client commands queued meanwhile.
    for twin_socket in [true, false] {
        let s = polling_server(twin_socket);
        let c = Client::connect(
            &s.path,
            ClientConfig {
                spin: Some(SPIN),
                twin_socket,
                ..ClientConfig::default()
            },
        )
        .unwrap();
        assert_eq!(c.twin_socket(), twin_socket);
        let results = run_edu_suite(&c);
        assert!(results.iter().any(|(n, _)| *n == "dma_roundtrip"));
        let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(failed.is_empty(), "twin {twin_socket}: {failed:?}");
        drop(c);
        s.finish();
    }
}

#[test]
fn a_polling_server_blocks_past_its_budget_with_a_partial_message_kept() {
    let s = polling_server(false);
    let mut p = raw_peer::Peer::connect(&s.path);
    p.version();
    // Half a REGION_READ while the server spins, the rest long after its
    // budget, when it waits in a blocking receive: the halves make one command.
    let a = RegionAccess {
        offset: regs::ID,
        region: 0,
        count: 4,
    }
    .encode();
    let h = Header::command(7, cmd::REGION_READ, a.len()).encode();
    let whole: Vec<u8> = h.iter().chain(a.iter()).copied().collect();
    let (first, rest) = whole.split_at(10);
    p.bytes(first);
    std::thread::sleep(SPIN * 400);
    p.bytes(rest);
    let m = p.recv().expect("the reply to the split read");
    assert_eq!(
        (m.h.id, m.h.command, m.h.error_errno()),
        (7, cmd::REGION_READ, None)
    );
    assert_eq!(m.p[RegionAccess::SIZE..], ID.to_ne_bytes());
    // Idle past the budget again: the next command is still served.
    std::thread::sleep(SPIN * 400);
    assert_eq!(p.read32(regs::ID), ID);
    drop(p);
    s.finish();
}
