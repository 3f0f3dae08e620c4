//! A device model that panics inside its callbacks. The server promises (see
//! `DeviceModel`) that a panic becomes an `EIO` reply: the client's request
//! fails cleanly, the session goes on, and the server thread survives to
//! serve the next client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vfio_io::device::{pci_region, DeviceInfo, DeviceIo, IrqInfo, RegionInfo};
use vfio_io::error::{Error, Result};
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::cmd;
use vfio_io::user::server::{DeviceContext, DeviceModel, Server, ServerConfig, ServerStopper};

/// A BAR0 offset edu ignores: writing it panics.
const PANIC_WRITE_AT: u64 = 0x40;
/// Another ignored BAR0 offset: reading it panics.
const PANIC_READ_AT: u64 = 0x44;

/// Edu, except for the booby-trapped accesses above and a reset that panics
/// while `panic_on_reset` is set.
struct Panicky {
    edu: Edu,
    panic_on_reset: Arc<AtomicBool>,
    /// Calls that reached the model: proves the panicking ones really ran.
    calls: Arc<AtomicUsize>,
}

impl DeviceModel for Panicky {
    fn device_info(&self) -> DeviceInfo {
        self.edu.device_info()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.edu.region_info(index)
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.edu.irq_info(index)
    }

    fn region_read(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if index == pci_region::BAR0 && offset == PANIC_READ_AT {
            panic!("model bug: region_read at {offset:#x}");
        }
        self.edu.region_read(ctx, index, offset, data)
    }

    fn region_write(
        &mut self,
        ctx: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if index == pci_region::BAR0 && offset == PANIC_WRITE_AT {
            panic!("model bug: region_write at {offset:#x}");
        }
        self.edu.region_write(ctx, index, offset, data)
    }

    fn reset(&mut self, ctx: &mut dyn DeviceContext) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.panic_on_reset.load(Ordering::SeqCst) {
            panic!("model bug: reset");
        }
        self.edu.reset(ctx)
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Served {
    path: PathBuf,
    stopper: ServerStopper,
    thread: Option<JoinHandle<Result<()>>>,
    panic_on_reset: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    _dir: TempDir,
}

fn serve(name: &str) -> Served {
    let dir = std::env::temp_dir().join(format!("vfio-io-panicky-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let panic_on_reset = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let model = Panicky {
        edu: Edu::new(),
        panic_on_reset: panic_on_reset.clone(),
        calls: calls.clone(),
    };
    let mut server = Server::bind(&path, model, ServerConfig::default()).unwrap();
    let stopper = server.stopper();
    let thread = std::thread::spawn(move || server.serve());
    Served {
        path,
        stopper,
        thread: Some(thread),
        panic_on_reset,
        calls,
        _dir: TempDir(dir),
    }
}

impl Served {
    fn connect(&self) -> Client {
        Client::connect(
            &self.path,
            ClientConfig {
                timeout: Duration::from_secs(3),
                ..ClientConfig::default()
            },
        )
        .expect("connect")
    }

    /// Stops the server and checks that its thread neither panicked nor
    /// returned an error: the panics stayed inside the session.
    fn finish(mut self) {
        self.stopper.stop();
        let t = self.thread.take().unwrap();
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("server loop failed: {e}"),
            Err(_) => panic!("the server thread panicked"),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Only reached on a failed test (finish() took the thread): unblock it.
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    drop(c);

    // The server thread survived and serves the next client.
    let c = s.connect();
    assert_session_alive(&c);
    drop(c);
    s.finish();
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
    drop(c);
    let c = s.connect();
    assert_session_alive(&c);
    drop(c);
    s.finish();
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
    drop(c);
    let c = s.connect();
    assert_session_alive(&c);
    drop(c);
    s.finish();
}
