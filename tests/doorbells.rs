//! Doorbells over vfio-user: ioeventfds offered by DEVICE_GET_REGION_IO_FDS,
//! rung by the client instead of a message, delivered by the server to the
//! model exactly once and in order with the messages around them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vfio_io::caps::{Capabilities, Source};
use vfio_io::device::{pci_region, DeviceIo};
use vfio_io::models::doorbell::{new_device, DoorbellDevice, COUNTER, RING, RING_COUNT};
use vfio_io::models::edu::Edu;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::{DeviceContext, ServerConfig};

#[path = "support/forwarding_model.rs"]
mod forwarding_model;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;

use forwarding_model::{Call, Hooks, Wrapped};
use watchdog::Watchdog;

const BAR0: u32 = pci_region::BAR0;

/// Counts the region writes the model receives, however they arrived.
struct CountWrites(Arc<AtomicU64>);

impl Hooks<DoorbellDevice> for CountWrites {
    fn call(
        &mut self,
        inner: &mut DoorbellDevice,
        ctx: &mut dyn DeviceContext,
        call: Call<'_>,
    ) -> vfio_io::Result<()> {
        if matches!(call, Call::Write { .. }) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        call.apply(inner, ctx)
    }
}

/// The doorbell device served with its writes counted, and a client.
fn doorbell_device(config: ServerConfig) -> (served::Served, Client, Arc<AtomicU64>) {
    let writes = Arc::new(AtomicU64::new(0));
    let model = Wrapped::new(new_device().unwrap(), CountWrites(writes.clone()));
    let s = served::serve(model, config);
    let c = Client::connect(&s.path, ClientConfig::default()).expect("connect");
    (s, c, writes)
}

fn ring(c: &Client, offset: u64, value: u32) {
    c.region_write(BAR0, offset, &value.to_le_bytes(), false)
        .expect("doorbell write");
}

fn counter(c: &Client) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(BAR0, COUNTER, &mut b)
        .expect("read the counter");
    u64::from_le_bytes(b)
}

#[test]
fn region_io_fds_offers_one_eventfd_per_doorbell_with_its_datamatch() {
    let _w = Watchdog::for_this_test(Duration::from_secs(60));
    let (s, c, _) = doorbell_device(ServerConfig::default());
    let (subs, fds) = c.region_io_fds(BAR0).unwrap();
    assert_eq!(fds.len(), 2);
    let got: Vec<_> = subs
        .iter()
        .map(|s| (s.offset, s.size, s.kind, s.flags, s.data, s.fd_index))
        .collect();
    assert_eq!(got, [(RING, 4, 0, 1, 1, 0), (RING_COUNT, 4, 0, 0, 0, 1)]);
    for fd in &fds {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            fd.as_raw_fd()
        }))
        .unwrap();
        assert_eq!(link.as_os_str(), "anon_inode:[eventfd]");
    }
    let (none, no_fds) = c.region_io_fds(pci_region::CONFIG).unwrap();
    assert!(none.is_empty() && no_fds.is_empty());
    drop(c);
    s.finish();
}

#[test]
fn every_doorbell_write_reaches_the_device_exactly_once() {
    let _w = Watchdog::for_this_test(Duration::from_secs(60));
    let (s, c, writes) = doorbell_device(ServerConfig::default());
    const N: u64 = 2000;
    for _ in 0..N {
        ring(&c, RING, 1);
    }
    assert_eq!(counter(&c), N);
    // Without datamatch the value is not carried: each write counts once.
    for _ in 0..N {
        ring(&c, RING_COUNT, 7);
    }
    assert_eq!(counter(&c), 2 * N);
    // Datamatch writes arrive one model write each; count writes arrive
    // coalesced, so at most N calls carry the second N.
    let calls = writes.load(Ordering::SeqCst);
    assert!((N + 1..=2 * N).contains(&calls), "{calls} model writes");
    drop(c);
    s.finish();
}

#[test]
fn a_doorbell_is_delivered_before_a_later_read() {
    let _w = Watchdog::for_this_test(Duration::from_secs(60));
    let (s, c, _) = doorbell_device(ServerConfig::default());
    for i in 1..=500 {
        ring(&c, if i % 2 == 0 { RING } else { RING_COUNT }, 1);
        assert_eq!(counter(&c), i, "after write {i}");
    }
    drop(c);
    s.finish();
}

#[test]
fn a_doorbell_with_no_following_message_is_still_delivered() {
    let _w = Watchdog::for_this_test(Duration::from_secs(60));
    let (s, c, writes) = doorbell_device(ServerConfig::default());
    let before = writes.load(Ordering::SeqCst);
    ring(&c, RING, 1);
    // No message follows: only the server's wait on the eventfd delivers it.
    while writes.load(Ordering::SeqCst) == before {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(writes.load(Ordering::SeqCst), before + 1);
    assert_eq!(counter(&c), 1);
    drop(c);
    s.finish();
}

/// Counts REGION_WRITE messages in the server's trace.
struct TraceCounter;

static TRACED_WRITES: AtomicUsize = AtomicUsize::new(0);

impl log::Log for TraceCounter {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target() == "vfio_io::server"
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) && r.args().to_string().starts_with("REGION_WRITE ") {
            TRACED_WRITES.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

// The only test here that traces: the count is its own.
#[test]
fn doorbell_writes_send_no_message_and_a_datamatch_mismatch_does() {
    let _w = Watchdog::for_this_test(Duration::from_secs(60));
    log::set_logger(&TraceCounter).expect("the only logger of this binary");
    log::set_max_level(log::LevelFilter::Info);
    let config = ServerConfig {
        trace: true,
        ..ServerConfig::default()
    };
    let (s, c, writes) = doorbell_device(config);
    const N: u64 = 100;
    for _ in 0..N {
        ring(&c, RING, 1);
    }
    assert_eq!(counter(&c), N);
    assert_eq!(writes.load(Ordering::SeqCst), N, "one model write per ring");
    assert_eq!(
        TRACED_WRITES.load(Ordering::SeqCst),
        0,
        "no REGION_WRITE sent"
    );
    // 5 is not the datamatch value 1: a message, and the device adds 5.
    ring(&c, RING, 5);
    assert_eq!(TRACED_WRITES.load(Ordering::SeqCst), 1);
    assert_eq!(counter(&c), N + 5);
    // Another width at the doorbell's offset is no match either.
    c.region_write(BAR0, RING, &[1, 0], false).unwrap();
    assert_eq!(TRACED_WRITES.load(Ordering::SeqCst), 2);
    assert_eq!(writes.load(Ordering::SeqCst), N + 2);
    drop(c);
    s.finish();
}

#[test]
fn ioeventfd_bit_is_set_on_the_doorbell_device_and_clear_on_edu() {
    let _w = Watchdog::for_this_test(Duration::from_secs(60));
    let (s, c, _) = doorbell_device(ServerConfig::default());
    assert!(c.capabilities().contains(Capabilities::IOEVENTFD));
    let why = c
        .capability_record()
        .deciding(Capabilities::IOEVENTFD)
        .unwrap();
    assert!(why.present);
    assert_eq!(why.source, Source::RegionInfo(BAR0));
    // A doorbell rung after a posted write must not overtake it: posting stops.
    assert!(!c.capabilities().contains(Capabilities::POSTED_WRITES));
    let posted = c
        .capability_record()
        .deciding(Capabilities::POSTED_WRITES)
        .unwrap();
    assert_eq!(
        (posted.present, &posted.source),
        (false, &Source::RegionInfo(BAR0))
    );
    drop(c);
    s.finish();

    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    assert!(!c.capabilities().contains(Capabilities::IOEVENTFD));
    assert!(
        !c.capability_record()
            .deciding(Capabilities::IOEVENTFD)
            .unwrap()
            .present
    );
    drop(c);
    s.finish();
}
