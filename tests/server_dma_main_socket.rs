//! Server DMA by messages on the main socket, with a client that did not
//! negotiate twin_socket: the server's DMA_READ/DMA_WRITE share the socket
//! with the client's commands and the server's replies. Over real UNIX
//! sockets to a server thread in this process.
//!
//! Every test runs under a watchdog that aborts the process instead of
//! hanging; the checks are on values, ids and counts, never on elapsed time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use vfio_io::device::{pci_region, DeviceIo};
use vfio_io::memory::DmaBuffer;
use vfio_io::models::edu::{regs, Edu, DMA_BUF_ADDR, DMA_CMD_START, DMA_CMD_TO_RAM, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{
    cmd, DmaAccess, DmaMapMsg, Header, RegionAccess, DMA_MAP_READ, DMA_MAP_WRITE,
};
use vfio_io::user::server::ServerConfig;

#[path = "support/dma_errors.rs"]
mod dma_errors;
#[path = "support/forwarding_model.rs"]
mod forwarding_model;
#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;

use dma_errors::{recording_dma_errors, DmaErrors};
use raw_peer::Peer;
use watchdog::Watchdog;

/// Past this the watchdog aborts the test process: a request hung.
const WATCHDOG: Duration = Duration::from_secs(60);
/// edu's vendor and device IDs as the first dword of configuration space.
const CONFIG_IDS: u32 = 0x11e8_1234;

/// Serves edu without twin sockets, DMA replies awaited for `dma_timeout`;
/// returns the server and the DMA errors its model saw.
fn serve(dma_timeout: Duration) -> (served::Served, DmaErrors) {
    let (model, dma_errors) = recording_dma_errors(Edu::new());
    let config = ServerConfig {
        twin_socket: false,
        dma_timeout,
        ..ServerConfig::default()
    };
    (served::serve(model, config), dma_errors)
}

// ---------------------------------------------------------------------------
// Our client, twin_socket off.
// ---------------------------------------------------------------------------

const DMA_THREADS: usize = 2;
const DMA_ROUNDS: usize = 30;
const READ_THREADS: usize = 3;
const READS: usize = 300;

/// edu has one DMA engine: its registers are programmed by one thread at a time.
static EDU_DMA: Mutex<()> = Mutex::new(());

/// Has edu copy `len` bytes from client memory at `from` into its buffer and
/// back out to `to`; each transfer completes within its command write, as a
/// DMA_READ then a DMA_WRITE on the main socket.
fn edu_round_trip(c: &Client, from: u64, to: u64, len: u64) {
    let _g = EDU_DMA.lock().unwrap_or_else(|p| p.into_inner());
    let w = |off: u64, v: u64| {
        c.region_write(pci_region::BAR0, off, &v.to_le_bytes(), false)
            .unwrap()
    };
    for (src, dst, command) in [
        (from, DMA_BUF_ADDR, DMA_CMD_START),
        (DMA_BUF_ADDR, to, DMA_CMD_START | DMA_CMD_TO_RAM),
    ] {
        w(regs::DMA_SRC, src);
        w(regs::DMA_DST, dst);
        w(regs::DMA_COUNT, len);
        w(regs::DMA_CMD, command);
    }
}

/// DMA thread `t`: maps its own fd-less buffer (so every access is a message)
/// and round-trips a pattern unique to each round; returns the rounds whose
/// data came back right.
fn dma_rounds(c: &Client, t: usize) -> usize {
    let iova = 0x20_0000 + t as u64 * 0x10_000;
    let buf = DmaBuffer::new(0x2000).unwrap();
    let mut map = buf.dma_map(iova);
    map.fd = -1;
    // SAFETY: `buf` outlives the mapping, which is removed below.
    unsafe { c.dma_map(&map).unwrap() };
    let mut right = 0;
    for i in 0..DMA_ROUNDS {
        let len = 16 + (t * 97 + i * 131) % 4000;
        let pattern: Vec<u8> = (0..len).map(|k| (t * 31 + i * 7 + k) as u8).collect();
        buf.write(0, &pattern).unwrap();
        buf.write(0x1000, &vec![0u8; len]).unwrap();
        edu_round_trip(c, iova, iova + 0x1000, len as u64);
        let mut back = vec![0u8; len];
        buf.read(0x1000, &mut back).unwrap();
        if back == pattern {
            right += 1;
        }
    }
    c.dma_unmap(iova, 0x2000).unwrap();
    right
}

/// Register-reading thread: returns how many of its reads saw the right value.
fn register_reads(c: &Client) -> usize {
    let mut right = 0;
    for i in 0..READS {
        let mut b = [0u8; 4];
        let (region, offset, want) = if i % 2 == 0 {
            (pci_region::BAR0, regs::ID, ID)
        } else {
            (pci_region::CONFIG, 0, CONFIG_IDS)
        };
        c.region_read(region, offset, &mut b).unwrap();
        if u32::from_le_bytes(b) == want {
            right += 1;
        }
    }
    right
}

#[test]
fn our_client_without_twin_socket_gets_every_reply_during_server_dma() {
    let _dog = Watchdog::start("our_client_without_twin_socket", WATCHDOG);
    let (s, dma_errors) = serve(ServerConfig::default().dma_timeout);
    let c = Client::connect(
        &s.path,
        ClientConfig {
            twin_socket: false,
            timeout: Duration::from_secs(20),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    assert!(!c.twin_socket());
    let dma_right = AtomicUsize::new(0);
    let reads_right = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for t in 0..DMA_THREADS {
            let (c, n) = (&c, &dma_right);
            sc.spawn(move || n.fetch_add(dma_rounds(c, t), Ordering::SeqCst));
        }
        for _ in 0..READ_THREADS {
            let (c, n) = (&c, &reads_right);
            sc.spawn(move || n.fetch_add(register_reads(c), Ordering::SeqCst));
        }
    });
    assert_eq!(dma_right.into_inner(), DMA_THREADS * DMA_ROUNDS);
    assert_eq!(reads_right.into_inner(), READ_THREADS * READS);
    assert!(dma_errors.lock().unwrap().is_empty(), "{dma_errors:?}");
}

// ---------------------------------------------------------------------------
// A raw client that drives the main socket message by message.
// ---------------------------------------------------------------------------

/// Where the raw client's memory is, from the server's point of view.
const RAW_IOVA: u64 = 0x10_0000;

/// Raw client: VERSION without twin_socket, then an fd-less DMA_MAP of
/// RAW_IOVA, so the server reaches it by messages only.
fn raw_client(s: &served::Served) -> Peer {
    let mut p = Peer::connect(&s.path);
    p.version();
    let m = DmaMapMsg {
        argsz: DmaMapMsg::SIZE as u32,
        flags: DMA_MAP_READ | DMA_MAP_WRITE,
        offset: 0,
        address: RAW_IOVA,
        size: 0x1000,
    };
    assert_eq!(p.errno_of(cmd::DMA_MAP, &[&m.encode()], &[]), None);
    p
}

/// An access of `count` bytes at `offset` of BAR0, where edu's registers are.
fn bar0(offset: u64, count: u32) -> RegionAccess {
    RegionAccess {
        offset,
        region: pci_region::BAR0,
        count,
    }
}

fn write64(p: &mut Peer, offset: u64, v: u64) {
    let a = bar0(offset, 8);
    assert_eq!(
        p.errno_of(cmd::REGION_WRITE, &[&a.encode(), &v.to_le_bytes()], &[]),
        None
    );
}

/// Programs an edu transfer of `len` bytes between RAW_IOVA and edu's buffer
/// and sends the command write that starts it; returns that write's id. The
/// server sends its DMA request before it replies to the write.
fn start_dma(p: &mut Peer, to_ram: bool, len: u64) -> u16 {
    let (src, dst) = if to_ram {
        (DMA_BUF_ADDR, RAW_IOVA)
    } else {
        (RAW_IOVA, DMA_BUF_ADDR)
    };
    write64(p, regs::DMA_SRC, src);
    write64(p, regs::DMA_DST, dst);
    write64(p, regs::DMA_COUNT, len);
    let command = DMA_CMD_START | if to_ram { DMA_CMD_TO_RAM } else { 0 };
    let a = bar0(regs::DMA_CMD, 8);
    p.send_cmd(
        cmd::REGION_WRITE,
        &[&a.encode(), &command.to_le_bytes()],
        &[],
    )
}

/// Receives the server's DMA request, which must be `command` for `len`
/// bytes at RAW_IOVA.
fn expect_dma(p: &mut Peer, command: u16, len: u64) -> raw_peer::Msg {
    let m = p.expect(command);
    let a = DmaAccess::decode(&m.p).unwrap();
    assert_eq!((a.address, a.count), (RAW_IOVA, len));
    m
}

/// Answers a DMA_READ with `data`, as the spec shapes the reply: the access
/// echoed, then the bytes.
fn answer_dma_read(p: &Peer, req: &Header, data: &[u8]) {
    let a = DmaAccess {
        address: RAW_IOVA,
        count: data.len() as u64,
    };
    p.reply(req, &[&a.encode(), data], &[]);
}

/// Receives the reply to the command with `id`, which must be a success.
fn expect_reply(p: &mut Peer, id: u16, command: u16) -> raw_peer::Msg {
    let m = p.recv().expect("a reply");
    assert!(m.h.is_reply(), "expected the reply to {id}, got a command");
    assert_eq!((m.h.id, m.h.command), (id, command));
    assert_eq!(m.h.error_errno(), None);
    m
}

/// Has edu write its buffer's first `len` bytes to RAW_IOVA and returns what
/// the server's DMA_WRITE carried (answered with success).
fn edu_buffer(p: &mut Peer, len: u64) -> Vec<u8> {
    let id = start_dma(p, true, len);
    let m = expect_dma(p, cmd::DMA_WRITE, len);
    let a = DmaAccess::decode(&m.p).unwrap();
    p.reply(&m.h, &[&a.encode()], &[]);
    expect_reply(p, id, cmd::REGION_WRITE);
    m.p[DmaAccess::SIZE..].to_vec()
}

#[test]
fn client_that_never_answers_dma_read_costs_that_dma_only() {
    let _dog = Watchdog::start("client_that_never_answers_dma_read", WATCHDOG);
    let (s, dma_errors) = serve(Duration::from_millis(200));
    let mut p = raw_client(&s);

    // The server asks for 4 bytes and gets no answer: after its DMA timeout
    // the model's DMA fails with ETIMEDOUT and the write is answered.
    let write = start_dma(&mut p, false, 4);
    let ignored = expect_dma(&mut p, cmd::DMA_READ, 4);
    expect_reply(&mut p, write, cmd::REGION_WRITE);
    assert_eq!(*dma_errors.lock().unwrap(), [libc::ETIMEDOUT]);
    assert_eq!(p.read32(regs::ID), ID, "the session goes on");

    // A late answer while the server waits for nothing is discarded.
    answer_dma_read(&p, &ignored.h, &[0xee; 4]);
    assert_eq!(p.read32(regs::ID), ID);

    // One that arrives while the server waits for a newer DMA_READ does not
    // answer it: the newer request's own reply does.
    let write = start_dma(&mut p, false, 4);
    let next = expect_dma(&mut p, cmd::DMA_READ, 4);
    assert_ne!(next.h.id, ignored.h.id, "an abandoned id is not reused");
    answer_dma_read(&p, &ignored.h, &[0xee; 4]);
    answer_dma_read(&p, &next.h, &[1, 2, 3, 4]);
    expect_reply(&mut p, write, cmd::REGION_WRITE);
    assert_eq!(edu_buffer(&mut p, 4), [1, 2, 3, 4]);
    assert_eq!(
        *dma_errors.lock().unwrap(),
        [libc::ETIMEDOUT],
        "only the unanswered DMA failed"
    );
    assert_eq!(p.read32(regs::ID), ID);
}

#[test]
fn client_commands_pipelined_during_dma_read_each_get_their_own_reply() {
    let _dog = Watchdog::start("client_commands_pipelined_during_dma_read", WATCHDOG);
    let (s, dma_errors) = serve(ServerConfig::default().dma_timeout);
    let mut p = raw_client(&s);
    let write = start_dma(&mut p, false, 8);
    let dma = expect_dma(&mut p, cmd::DMA_READ, 8);
    // Before answering, send reads of two registers with different values,
    // and a liveness write with a read of its inversion.
    let read = |p: &mut Peer, offset: u64| {
        let a = bar0(offset, 4);
        p.send_cmd(cmd::REGION_READ, &[&a.encode()], &[])
    };
    let id_read = read(&mut p, regs::ID);
    let live = bar0(regs::LIVENESS, 4);
    let live_write = p.send_cmd(
        cmd::REGION_WRITE,
        &[&live.encode(), &0x1234_5678u32.to_le_bytes()],
        &[],
    );
    let live_read = read(&mut p, regs::LIVENESS);
    answer_dma_read(&p, &dma.h, &[9, 8, 7, 6, 5, 4, 3, 2]);

    expect_reply(&mut p, write, cmd::REGION_WRITE);
    let value =
        |m: raw_peer::Msg| u32::from_le_bytes(m.p[RegionAccess::SIZE..].try_into().unwrap());
    assert_eq!(value(expect_reply(&mut p, id_read, cmd::REGION_READ)), ID);
    expect_reply(&mut p, live_write, cmd::REGION_WRITE);
    assert_eq!(
        value(expect_reply(&mut p, live_read, cmd::REGION_READ)),
        !0x1234_5678u32
    );
    assert_eq!(edu_buffer(&mut p, 8), [9, 8, 7, 6, 5, 4, 3, 2]);
    assert!(dma_errors.lock().unwrap().is_empty(), "{dma_errors:?}");
}

#[test]
fn commands_arriving_during_an_unanswered_dma_do_not_extend_its_timeout() {
    let _dog = Watchdog::start("commands_arriving_during_an_unanswered_dma", WATCHDOG);
    let (s, dma_errors) = serve(Duration::from_millis(100));
    let mut p = raw_client(&s);
    let write = start_dma(&mut p, false, 4);
    expect_dma(&mut p, cmd::DMA_READ, 4);
    // Keep the server busy queueing reads, one every 20 ms, until the write's
    // reply shows it gave up on the DMA. At most 250 (under max_queued):
    // 50 times the DMA timeout, so only a wait that each command restarts
    // runs out of them.
    let a = bar0(regs::ID, 4);
    let mut reads = Vec::new();
    let reply = loop {
        assert!(
            reads.len() < 250,
            "the DMA wait outlived 250 queued commands"
        );
        reads.push(p.send_cmd(cmd::REGION_READ, &[&a.encode()], &[]));
        std::thread::sleep(Duration::from_millis(20));
        let nonblock = true;
        match p.rx.recv(std::os::fd::AsFd::as_fd(&p.s), nonblock) {
            Ok(m) => break m.header,
            Err(vfio_io::Error::Timeout) => continue,
            Err(e) => panic!("waiting for the write's reply: {e:?}"),
        }
    };
    assert_eq!((reply.id, reply.command), (write, cmd::REGION_WRITE));
    assert_eq!(*dma_errors.lock().unwrap(), [libc::ETIMEDOUT]);
    // Every queued read then gets its own reply, in order.
    for id in reads {
        let m = expect_reply(&mut p, id, cmd::REGION_READ);
        assert_eq!(m.p[RegionAccess::SIZE..], ID.to_le_bytes());
    }
}
