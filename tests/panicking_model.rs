//! A device model that panics inside its callbacks. The server promises (see
//! `DeviceModel`) that a panic becomes an `EIO` reply: the client's request
//! fails cleanly, the session goes on, and the server thread survives to
//! serve the next client.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vfio_io::device::{pci_region, DeviceIo};
use vfio_io::error::{Error, Result};
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::cmd;
use vfio_io::user::server::{DeviceContext, ServerConfig};

#[path = "support/forwarding_model.rs"]
mod forwarding_model;
#[path = "support/served.rs"]
mod served;
use forwarding_model::{Call, Hooks, Wrapped};

/// A BAR0 offset edu ignores: writing it panics.
const PANIC_WRITE_AT: u64 = 0x40;
/// Another ignored BAR0 offset: reading it panics.
const PANIC_READ_AT: u64 = 0x44;

/// Edu's booby traps: the accesses above, and a reset that panics while
/// `panic_on_reset` is set.
struct Traps {
    panic_on_reset: Arc<AtomicBool>,
    /// Calls that reached the model: proves the panicking ones really ran.
    calls: Arc<AtomicUsize>,
}

impl Hooks<Edu> for Traps {
    fn call(&mut self, edu: &mut Edu, ctx: &mut dyn DeviceContext, call: Call<'_>) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match call {
            Call::Read { index, offset, .. }
                if index == pci_region::BAR0 && offset == PANIC_READ_AT =>
            {
                panic!("model bug: region_read at {offset:#x}")
            }
            Call::Write { index, offset, .. }
                if index == pci_region::BAR0 && offset == PANIC_WRITE_AT =>
            {
                panic!("model bug: region_write at {offset:#x}")
            }
            Call::Reset if self.panic_on_reset.load(Ordering::SeqCst) => panic!("model bug: reset"),
            _ => call.apply(edu, ctx),
        }
    }
}

/// Edu with its traps, served.
struct Served {
    served: served::Served,
    panic_on_reset: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

fn serve(_name: &str) -> Served {
    let panic_on_reset = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let traps = Traps {
        panic_on_reset: panic_on_reset.clone(),
        calls: calls.clone(),
    };
    Served {
        served: served::serve(Wrapped::new(Edu::new(), traps), ServerConfig::default()),
        panic_on_reset,
        calls,
    }
}

impl Served {
    fn connect(&self) -> Client {
        Client::connect(
            &self.served.path,
            ClientConfig {
                timeout: Duration::from_secs(3),
                ..ClientConfig::default()
            },
        )
        .expect("connect")
    }

    /// Drops `c`, checks that the server thread survived to serve the next
    /// client, then stops it and checks that its thread neither panicked nor
    /// returned an error: the panics stayed inside the session.
    fn finish(self, c: Client) {
        drop(c);
        let c = self.connect();
        assert_session_alive(&c);
        drop(c);
        self.served.finish();
    }
}

fn read32(c: &Client, offset: u64) -> Result<u32> {
    let mut b = [0u8; 4];
    c.region_read(pci_region::BAR0, offset, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// The error the server sends for a panic: EIO, as a reply to `command`.
fn assert_eio(r: Result<()>, command: u16) {
    match r {
        Err(Error::Remote { command: c, errno }) => {
            assert_eq!(c, command, "error reply to the wrong command");
            assert_eq!(errno, libc::EIO, "a model panic must be reported as EIO");
        }
        other => panic!("expected an EIO reply, got {other:?}"),
    }
}

/// The session still works after a panic, and the model's state survived.
fn assert_session_alive(c: &Client) {
    assert_eq!(read32(c, regs::ID).expect("read after a panic"), ID);
    c.region_write(pci_region::BAR0, regs::LIVENESS, &7u32.to_le_bytes(), false)
        .expect("write after a panic");
    assert_eq!(read32(c, regs::LIVENESS).unwrap(), !7u32);
}

#[test]
fn panic_in_region_write_is_eio_and_the_session_goes_on() {
    let s = serve("write");
    let c = s.connect();
    let before = s.calls.load(Ordering::SeqCst);
    assert_eio(
        c.region_write(pci_region::BAR0, PANIC_WRITE_AT, &1u32.to_le_bytes(), false),
        cmd::REGION_WRITE,
    );
    assert_eq!(s.calls.load(Ordering::SeqCst), before + 1, "the model ran");
    assert_session_alive(&c);

    // A posted write that panics has no reply to carry the error; the
    // session must still survive it and answer the next request in order.
    c.region_write(pci_region::BAR0, PANIC_WRITE_AT, &1u32.to_le_bytes(), true)
        .expect("a posted write only fails locally");
    assert_session_alive(&c);
    s.finish(c);
}

#[test]
fn panic_in_region_read_is_eio_and_the_session_goes_on() {
    let s = serve("read");
    let c = s.connect();
    let mut b = [0u8; 4];
    assert_eio(
        c.region_read(pci_region::BAR0, PANIC_READ_AT, &mut b),
        cmd::REGION_READ,
    );
    assert_session_alive(&c);
    // Several in a row: each panic is contained on its own.
    for _ in 0..3 {
        assert_eio(
            c.region_read(pci_region::BAR0, PANIC_READ_AT, &mut b),
            cmd::REGION_READ,
        );
    }
    assert_session_alive(&c);
    s.finish(c);
}

#[test]
fn panic_in_reset_is_eio_and_the_session_goes_on() {
    let s = serve("reset");
    let c = s.connect();
    s.panic_on_reset.store(true, Ordering::SeqCst);
    let before = s.calls.load(Ordering::SeqCst);
    assert_eio(c.reset(), cmd::DEVICE_RESET);
    assert_eq!(s.calls.load(Ordering::SeqCst), before + 1, "the model ran");
    assert_session_alive(&c);

    // Once the model behaves again, reset works on the same session.
    s.panic_on_reset.store(false, Ordering::SeqCst);
    c.reset().expect("reset after the model recovered");
    assert_eq!(
        read32(&c, regs::LIVENESS).unwrap(),
        0,
        "reset cleared liveness"
    );
    s.finish(c);
}
