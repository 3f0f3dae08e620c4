//! Interrupts and DMA from threads other than the serving one, through
//! [`ServerHandle`]: many threads at once while the client drives the
//! device, each byte and each interrupt counted; no client gives `ENOTCONN`;
//! a model that waits for a thread blocked on the handle gets `ETIMEDOUT`
//! back instead of a hang. Real UNIX sockets to a server thread in this
//! process.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use vfio_io::device::{pci_irq, pci_region, DeviceIo, IrqAction, IrqData, IrqSet};
use vfio_io::memory::DmaBuffer;
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::{
    DeviceContext, DeviceModel, Server, ServerConfig, ServerHandle, ServerStopper,
};

#[path = "support/forwarding_model.rs"]
mod forwarding_model;
#[path = "support/open_fds.rs"]
mod open_fds;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;

use forwarding_model::{Call, Hooks, Wrapped};

/// The fd count is process-wide: the tests here run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const THREADS: usize = 4;
const ROUNDS: usize = 40;
const IRQS_PER_ROUND: usize = 3;
const SLICE: u64 = 0x800;
/// Client memory with an fd (the server maps it) and without (DMA messages).
const IOVA_FD: u64 = 0x10_0000;
const IOVA_NOFD: u64 = 0x20_0000;

/// A server thread with a handle to its sessions.
struct Remote {
    dir: served::TempDir,
    handle: ServerHandle,
    stopper: ServerStopper,
    thread: Option<JoinHandle<()>>,
}

impl Remote {
    fn serve<M: DeviceModel + 'static>(model: M, config: ServerConfig) -> Remote {
        let dir = served::TempDir::new("remote");
        let mut server = Server::bind(dir.join("s.sock"), model, config).unwrap();
        let handle = server.handle().unwrap();
        let stopper = server.stopper();
        let thread = std::thread::spawn(move || server.serve().unwrap());
        Remote {
            dir,
            handle,
            stopper,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> Client {
        let config = ClientConfig {
            timeout: Duration::from_secs(20),
            ..ClientConfig::default()
        };
        Client::connect(self.dir.join("s.sock"), config).unwrap()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.unwrap();
            }
        }
    }
}

/// Maps `buf` at `iova`, with its fd or (`fd` false) without.
fn map(c: &Client, buf: &DmaBuffer, iova: u64, fd: bool) {
    let mut m = buf.dma_map(iova);
    if !fd {
        m.fd = -1;
    }
    // SAFETY: `buf` outlives the mapping: each test unmaps before dropping it.
    unsafe { c.dma_map(&m).unwrap() };
}

/// Thread `t`'s rounds: a pattern written to its slice of both memories and
/// read back through the handle, and IRQS_PER_ROUND interrupts. Returns
/// (rounds read back right, interrupts reported signalled).
fn hammer(h: &ServerHandle, t: usize) -> (usize, usize) {
    let (mut right, mut fired) = (0, 0);
    for i in 0..ROUNDS {
        let len = 1 + (t * 131 + i * 57) % SLICE as usize;
        let pattern: Vec<u8> = (0..len).map(|k| (t * 37 + i * 11 + k) as u8).collect();
        let mut ok = true;
        for base in [IOVA_FD, IOVA_NOFD] {
            let iova = base + t as u64 * SLICE;
            h.dma_write(iova, &pattern).unwrap();
            let mut back = vec![0u8; len];
            h.dma_read(iova, &mut back).unwrap();
            ok &= back == pattern;
        }
        right += usize::from(ok);
        for _ in 0..IRQS_PER_ROUND {
            fired += usize::from(h.trigger_irq(pci_irq::MSI, 0).unwrap());
        }
    }
    (right, fired)
}

#[test]
fn threads_raise_interrupts_and_do_dma_while_the_client_drives_the_device() {
    threads_while_the_client_drives(ServerConfig::default());
}

/// The same with a polling session: requests are seen in its spin loop.
#[test]
fn threads_reach_a_polling_session() {
    threads_while_the_client_drives(ServerConfig {
        spin: Some(Duration::from_micros(200)),
        ..ServerConfig::default()
    });
}

/// Worker threads hammer the handle while the client reads registers; every
/// round, every interrupt and the final bytes are checked.
fn threads_while_the_client_drives(config: ServerConfig) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _dog = watchdog::Watchdog::for_this_test(Duration::from_secs(120));
    let r = Remote::serve(Edu::new(), config);
    let c = r.connect();
    let with_fd = DmaBuffer::new(0x4000).unwrap();
    let without = DmaBuffer::new(0x4000).unwrap();
    map(&c, &with_fd, IOVA_FD, true);
    map(&c, &without, IOVA_NOFD, false);
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap();
    let fds = [efd.as_fd().as_raw_fd()];
    c.set_irqs(&IrqSet {
        index: pci_irq::MSI,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::Eventfds(&fds),
    })
    .unwrap();

    let (right, fired, reads) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (h, right, fired) = (&r.handle, &right, &fired);
            sc.spawn(move || {
                let (a, b) = hammer(h, t);
                right.fetch_add(a, Ordering::SeqCst);
                fired.fetch_add(b, Ordering::SeqCst);
            });
        }
        // The client's own commands go on meanwhile.
        let (c, reads) = (&c, &reads);
        sc.spawn(move || {
            for _ in 0..300 {
                let mut b = [0u8; 4];
                c.region_read(pci_region::BAR0, regs::ID, &mut b).unwrap();
                reads.fetch_add(usize::from(u32::from_le_bytes(b) == ID), Ordering::SeqCst);
            }
        });
    });
    assert_eq!(
        right.into_inner(),
        THREADS * ROUNDS,
        "rounds read back right"
    );
    assert_eq!(reads.into_inner(), 300, "the client's reads");
    let raised = THREADS * ROUNDS * IRQS_PER_ROUND;
    assert_eq!(fired.into_inner(), raised, "interrupts reported signalled");
    assert_eq!(
        efd.read().unwrap(),
        raised as u64,
        "interrupts on the eventfd"
    );
    // Each thread's last pattern, in both memories, byte for byte.
    for t in 0..THREADS {
        let i = ROUNDS - 1;
        let len = 1 + (t * 131 + i * 57) % SLICE as usize;
        let want: Vec<u8> = (0..len).map(|k| (t * 37 + i * 11 + k) as u8).collect();
        for buf in [&with_fd, &without] {
            let mut got = vec![0u8; len];
            buf.read(t * SLICE as usize, &mut got).unwrap();
            assert_eq!(got, want, "thread {t}'s bytes");
        }
    }
    c.dma_unmap(IOVA_FD, 0x4000).unwrap();
    c.dma_unmap(IOVA_NOFD, 0x4000).unwrap();
}

#[test]
fn without_a_client_the_handle_says_not_connected_and_leaks_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _dog = watchdog::Watchdog::for_this_test(Duration::from_secs(60));
    let before = open_fds::OpenFds::now();
    {
        let r = Remote::serve(Edu::new(), ServerConfig::default());
        let h = r.handle.clone();
        let enotconn = |res: vfio_io::Result<()>| res.unwrap_err().errno() == libc::ENOTCONN;
        assert_eq!(
            h.trigger_irq(pci_irq::MSI, 0).unwrap_err().errno(),
            libc::ENOTCONN
        );
        assert!(enotconn(h.dma_read(IOVA_FD, &mut [0; 4])));
        assert!(enotconn(h.dma_write(IOVA_FD, &[0; 4])));
        {
            let c = r.connect();
            // Connected but nothing attached: no eventfd to signal.
            assert!(!h.trigger_irq(pci_irq::MSI, 0).unwrap());
            let e = h.dma_read(IOVA_FD, &mut [0; 4]).unwrap_err();
            assert_eq!(e.errno(), libc::EFAULT, "unmapped memory");
            drop(c);
        }
        // The session ends on its own thread once it sees the disconnect.
        while h.trigger_irq(pci_irq::MSI, 0).is_ok() {
            std::thread::yield_now();
        }
        assert!(enotconn(h.dma_write(IOVA_FD, &[0; 4])));
    }
    before.assert_none_leaked();
}

/// A model whose write to BAR0 offset `WAIT_AT` waits for a thread that
/// reads client memory through the handle, and records what it got.
struct WaitsForThread {
    handle: Arc<OnceLock<ServerHandle>>,
    got: Arc<Mutex<Option<i32>>>,
}

const WAIT_AT: u64 = 0x80;

impl Hooks<Edu> for WaitsForThread {
    fn call(
        &mut self,
        inner: &mut Edu,
        ctx: &mut dyn DeviceContext,
        call: Call<'_>,
    ) -> vfio_io::Result<()> {
        if let Call::Write {
            offset: WAIT_AT, ..
        } = call
        {
            let h = self.handle.get().unwrap().clone();
            let r = std::thread::spawn(move || h.dma_read(IOVA_FD, &mut [0; 8]))
                .join()
                .unwrap();
            *self.got.lock().unwrap() = Some(r.map_or_else(|e| e.errno(), |()| 0));
            return Ok(());
        }
        call.apply(inner, ctx)
    }
}

#[test]
fn a_model_waiting_for_a_thread_on_the_handle_gets_a_timeout_not_a_hang() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _dog = watchdog::Watchdog::for_this_test(Duration::from_secs(60));
    let handle = Arc::new(OnceLock::new());
    let got = Arc::new(Mutex::new(None));
    let hooks = WaitsForThread {
        handle: handle.clone(),
        got: got.clone(),
    };
    let config = ServerConfig {
        dma_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let r = Remote::serve(Wrapped::new(Edu::new(), hooks), config);
    handle.set(r.handle.clone()).unwrap();
    let c = r.connect();
    c.region_write(pci_region::BAR0, WAIT_AT, &[0; 4], false)
        .unwrap();
    assert_eq!(*got.lock().unwrap(), Some(libc::ETIMEDOUT));
    // The withdrawn request left nothing behind: the session goes on.
    let mut b = [0u8; 4];
    c.region_read(pci_region::BAR0, regs::ID, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), ID);
    assert!(!r.handle.trigger_irq(pci_irq::MSI, 0).unwrap());
}
