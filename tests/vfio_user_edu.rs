//! The edu conformance suite and the vfio-user commands, over a real UNIX
//! socket to a server thread in this process.

use vfio_io::caps::Capabilities;
use vfio_io::conformance::run_edu_suite;
use vfio_io::device::{pci_irq, pci_region, DeviceIo};
use vfio_io::models::edu::Edu;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::ServerConfig;

#[path = "support/edu_dma.rs"]
mod edu_dma;
#[path = "support/served.rs"]
mod served;
use edu_dma::edu_round_trip;

fn serve(config: ServerConfig) -> served::Served {
    served::serve(Edu::new(), config)
}

/// Serves edu and connects a client, neither offering a twin socket: the
/// server's DMA messages share the main socket.
fn serve_without_twin_socket() -> (served::Served, Client) {
    let s = serve(ServerConfig {
        twin_socket: false,
        ..ServerConfig::default()
    });
    let config = ClientConfig {
        twin_socket: false,
        ..ClientConfig::default()
    };
    let c = Client::connect(&s.path, config).unwrap();
    (s, c)
}

fn check_suite(dev: &dyn DeviceIo) {
    let results = run_edu_suite(dev);
    assert!(!results.is_empty());
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, r)| format!("{n}: {r:?}"))
        .collect();
    assert!(failed.is_empty(), "conformance failures: {failed:#?}");
}

#[test]
fn edu_conformance_over_vfio_user_with_twin_socket() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    assert!(c.twin_socket());
    check_suite(&c);
}

#[test]
fn edu_conformance_over_vfio_user_dma_on_the_main_socket() {
    let (_s, c) = serve_without_twin_socket();
    assert!(!c.twin_socket());
    check_suite(&c);
}

#[test]
fn vfio_user_device_mask_is_truthful() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let caps = c.capabilities();
    assert!(
        !caps.contains(Capabilities::DMA_BUF),
        "vfio-user cannot export DMA-BUF"
    );
    assert!(
        caps.contains(Capabilities::MIGRATION),
        "edu migrates (tests/migration.rs)"
    );
    assert!(caps
        .contains(Capabilities::RESET | Capabilities::POSTED_WRITES | Capabilities::WRITE_MULTI));
    assert!(
        !caps.contains(Capabilities::REGION_MMAP),
        "edu's BAR0 traps every access"
    );
    assert!(c.backend_capabilities().contains(caps));
    assert!(c.region_create_dma_buf(0, &[(0, 4096)]).unwrap().is_none());
}

#[test]
fn region_and_irq_info_follow_vfio_pci() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let info = c.device_info().unwrap();
    assert_eq!(
        (info.num_regions, info.num_irqs),
        (pci_region::COUNT, pci_irq::COUNT)
    );
    assert_eq!(c.region_info(pci_region::BAR0).unwrap().size, 1 << 20);
    assert_eq!(c.region_info(pci_region::CONFIG).unwrap().size, 256);
    assert_eq!(c.irq_info(pci_irq::MSI).unwrap().count, 1);
    assert_eq!(c.region_info(99).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(c.irq_info(99).unwrap_err().errno(), libc::EINVAL);
    let mut b = [0u8; 4];
    assert_eq!(
        c.region_read(0, (1 << 20) - 2, &mut b).unwrap_err().errno(),
        libc::EINVAL
    );
}

#[test]
fn posted_writes_are_ordered_before_the_next_read() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    for v in [1u32, 0xdead_beef, 42] {
        c.region_write(0, 4, &v.to_ne_bytes(), true).unwrap();
        let mut b = [0u8; 4];
        c.region_read(0, 4, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), !v);
    }
}

#[test]
fn reset_restores_power_on_registers() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    c.region_write(0, 0x80, &0x1234u64.to_ne_bytes(), false)
        .unwrap();
    c.reset().unwrap();
    let mut b = [0u8; 8];
    c.region_read(0, 0x80, &mut b).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 0);
}

#[test]
fn server_serves_the_next_client_and_keeps_device_state() {
    let s = serve(ServerConfig::default());
    {
        let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
        c.region_write(0, 0x80, &0x5000u64.to_ne_bytes(), false)
            .unwrap();
    }
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let mut b = [0u8; 8];
    c.region_read(0, 0x80, &mut b).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 0x5000);
}

#[test]
fn many_threads_share_one_device() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    std::thread::scope(|sc| {
        for t in 0..8u32 {
            let c = &c;
            sc.spawn(move || {
                for i in 0..500u32 {
                    let mut b = [0u8; 4];
                    c.region_read(0, 0, &mut b).unwrap();
                    assert_eq!(
                        u32::from_ne_bytes(b),
                        0x010000ed,
                        "thread {t} iteration {i}"
                    );
                    let mut cfg = [0u8; 4];
                    c.region_read(pci_region::CONFIG, 0, &mut cfg).unwrap();
                    assert_eq!(u32::from_ne_bytes(cfg), 0x11e8_1234);
                }
            });
        }
    });
}

#[test]
fn closing_fails_later_requests_cleanly() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    c.close();
    let mut b = [0u8; 4];
    assert_eq!(
        c.region_read(0, 0, &mut b).unwrap_err().errno(),
        libc::ENOTCONN
    );
}

/// Maps memory without an fd, so the server must reach it through
/// DMA_READ/DMA_WRITE messages, then runs an edu DMA round trip.
fn dma_round_trip_through_messages(c: &Client) {
    let buf = vfio_io::memory::DmaBuffer::new(8192).unwrap();
    let pattern: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
    buf.write(0, &pattern).unwrap();
    let mut map = buf.dma_map(0x200000);
    map.fd = -1;
    // SAFETY: `buf` outlives the mapping, which is removed below.
    unsafe { c.dma_map(&map).unwrap() };
    edu_round_trip(c, 0x200000, 0x201000, pattern.len() as u64);
    let mut back = vec![0u8; pattern.len()];
    buf.read(0x1000, &mut back).unwrap();
    assert_eq!(back, pattern);
    c.dma_unmap(0x200000, buf.len() as u64).unwrap();
}

#[test]
fn server_dma_through_messages_on_the_twin_socket() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    dma_round_trip_through_messages(&c);
}

#[test]
fn server_dma_through_messages_on_the_main_socket() {
    let (_s, c) = serve_without_twin_socket();
    dma_round_trip_through_messages(&c);
}

/// Overlapping maps from racing threads: one wins, the others get EEXIST,
/// and DMA then reaches the winner's memory.
#[test]
fn racing_overlapping_dma_maps_leave_exactly_the_winner() {
    let s = serve(ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let bufs: Vec<_> = (0..4u8)
        .map(|i| {
            let b = vfio_io::memory::DmaBuffer::new(4096).unwrap();
            b.write(0, &[i + 1; 16]).unwrap();
            b
        })
        .collect();
    let results: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = bufs
            .iter()
            .map(|b| {
                let c = &c;
                sc.spawn(move || {
                    let mut m = b.dma_map(0x400000);
                    m.fd = -1;
                    // SAFETY: every buffer outlives the client's use of it below.
                    unsafe { c.dma_map(&m) }.map_err(|e| e.errno())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|r| r.is_ok() || *r == Err(libc::EEXIST)),
        "{results:?}"
    );
    edu_round_trip(&c, 0x400000, 0x400000 + 64, 16);
    let mut back = [0u8; 16];
    bufs[winners[0]].read(64, &mut back).unwrap();
    assert_eq!(back, [winners[0] as u8 + 1; 16]);
    c.dma_unmap(0x400000, 4096).unwrap();
}
