//! Round-trip latency of vfio-io's vfio-user client and server, side by side
//! with the floor: a raw AF_UNIX ping-pong of messages the size of a
//! REGION_READ (16+16 bytes request, 16+16+4 bytes reply), one read() each.
//! Posted writes, which get no reply, are compared with a one-way floor
//! instead: 16+16+4 bytes sent with sendmsg, read by the server, no reply.
//!
//! Run with `cargo bench --bench roundtrip`; `cargo bench --bench roundtrip --
//! dma posted` runs only the named sections (names in [`SECTIONS`]). Servers
//! run in child processes (this binary re-executed with `VFIO_IO_BENCH_ROLE`
//! set), because that is how vfio-user is deployed: client and device model in
//! different processes, each woken by the kernel. Re-executing rather than
//! forking keeps the child free of the parent's threads and allocator state.
//!
//! "same core" pins the client thread and the server process to CPU 0;
//! "cross core" pins the server to CPU 1, so every message is a cross-CPU
//! wake-up. The scaling rows are unpinned and say so.
//!
//! Besides vfio-io against the floors, it measures: edu's 4 KiB DMA through a
//! sealed memfd, an unsealed tmpfs file and by messages; a read through an
//! mmapped region area against the same read by message; rust-vmm's
//! `vfio_user` client and server on the same 4-byte read; polling mode
//! (`ClientConfig::spin`, and `ServerConfig::spin` against a busy-poll
//! floor) across cores; server DMA of 64 KiB - 1 MiB through fd-mapped
//! memory against memcpy, with a bench-only DMA device; and live migration
//! between two server processes (downtime and state transfer rate) of edu
//! and of a bench-only device with 64 MiB of state; and a device served
//! through the C ABI (`vfio_io_server_*`, callbacks written here) against
//! the same register in Rust, with its interrupts raised from a worker thread.

use std::ffi::CString;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::socket::{recvmsg, sendmsg, MsgFlags};
use nix::unistd::Pid;
use vfio_io::device::DeviceIo;
use vfio_io::device::{
    pci_irq, pci_region, DeviceInfo, DmaMap, IrqInfo, RegionInfo, VFIO_DEVICE_FLAGS_PCI,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_io::ffi::{
    vfio_io_device, vfio_io_device_close, vfio_io_device_ops, vfio_io_user_connect,
    vfio_io_user_connect_with, vfio_io_user_options,
};
use vfio_io::memory::{DmaBuffer, Mapping};
use vfio_io::models::edu::{regs, Edu, DMA_BUF_ADDR, DMA_BUF_SIZE, DMA_CMD_START, DMA_CMD_TO_RAM};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::{DeviceContext, DeviceModel, Migratable, Server, ServerConfig};

#[path = "../tests/support/served.rs"]
mod served;
#[path = "../tests/support/shared_mem_device.rs"]
mod shared_mem_device;
use served::TempDir;
use shared_mem_device::{device_view, SharedMemDevice, AREA};

const ROLE: &str = "VFIO_IO_BENCH_ROLE";
const SOCK: &str = "VFIO_IO_BENCH_SOCK";
const CPU: &str = "VFIO_IO_BENCH_CPU";

/// Iterations per same-core row (~10 µs each) and per cross-core row (~40 µs each).
const N_SAME: usize = 50_000;
const N_CROSS: usize = 20_000;
const WARMUP: usize = 2_000;
/// The round-trip floor's row names.
const RT_FLOOR: &str = "floor: round trip 32/36 B, read()/write()";
const RT_FLOOR_SAME: &str = "floor: round trip 32/36 B, read()/write(), same core";
const RT_FLOOR_CROSS: &str = "floor: round trip 32/36 B, read()/write(), cross core";
/// Calls per block of an interleaved measurement.
const BLOCK: usize = 500;
/// The scaling rows take turns in slices of this length, [`SCALE_ROUNDS`] each.
const SCALE_SLICE: Duration = Duration::from_millis(50);
const SCALE_ROUNDS: usize = 16;
/// The frame of the one-way floor: 16+16+4 bytes, the size of a 4-byte
/// REGION_WRITE. A first byte of [`SYNC`] asks for a 36-byte reply.
const ONEWAY: usize = 36;
const SYNC: u8 = 1;
const DMA_IOVA: u64 = 0x20_0000;
/// The bench-only DMA device's largest transfer.
const BIG_DMA: usize = 1 << 20;
/// The spin budget of the polling-mode rows.
const SPIN: Duration = Duration::from_micros(50);

/// CPUs online, read before anything pins this process.
static NCPU: AtomicUsize = AtomicUsize::new(1);

fn pin(cpu: Option<usize>) {
    let mut set = CpuSet::new();
    match cpu {
        Some(c) => set.set(c).expect("CPU index"),
        None => {
            for c in 0..NCPU.load(Ordering::Relaxed) {
                set.set(c).expect("CPU index");
            }
        }
    }
    // Pid 0 is the calling thread: threads spawned later inherit its mask.
    sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
}

// ---------------------------------------------------------------- children

fn child_main(role: &str) {
    let path = PathBuf::from(std::env::var(SOCK).expect("socket path"));
    pin(std::env::var(CPU).ok().and_then(|s| s.parse().ok()));
    match role {
        "floor" | "floor-msg" | "floor-oneway" | "floor-spin" => {
            let l = UnixListener::bind(&path).expect("bind");
            ready();
            for s in l.incoming() {
                let s = s.expect("accept");
                match role {
                    "floor" => floor_serve(s),
                    "floor-msg" => floor_serve_msg(s),
                    "floor-spin" => floor_serve_spin(s),
                    _ => floor_serve_oneway(s),
                }
            }
        }
        "edu" | "edu-spin" => {
            let config = ServerConfig {
                spin: (role == "edu-spin").then_some(SPIN),
                ..ServerConfig::default()
            };
            let mut server = Server::bind(&path, Edu::new(), config).expect("bind");
            ready();
            server.serve().expect("serve");
        }
        "shm" => {
            let dev = SharedMemDevice::new();
            // What the mapped read checks it got.
            device_view(&dev.memory_fd())
                .write(
                    AREA.offset as usize,
                    &vfio_io::models::edu::ID.to_ne_bytes(),
                )
                .expect("write");
            let mut server = Server::bind(&path, dev, ServerConfig::default()).expect("bind");
            ready();
            server.serve().expect("serve");
        }
        "dmacopy" => {
            let mut server =
                Server::bind(&path, DmaCopyDevice::new(), ServerConfig::default()).expect("bind");
            ready();
            server.serve().expect("serve");
        }
        "bigstate" => {
            let mut server =
                Server::bind(&path, BigStateDevice::new(), ServerConfig::default()).expect("bind");
            ready();
            server.serve().expect("serve");
        }
        "rust-vmm" => rust_vmm_serve(&path),
        "c-server" | "c-server-loop" => c_serve(&path, role == "c-server-loop"),
        "register" | "register-handle" => {
            let mut server =
                Server::bind(&path, RegisterDevice, ServerConfig::default()).expect("bind");
            // A handle gives the server a mailbox, which its sessions watch.
            let _handle = (role == "register-handle").then(|| server.handle().expect("handle"));
            ready();
            server.serve().expect("serve");
        }
        r if r.starts_with(MANY_EDU) => {
            serve_many_edu(&path, r[MANY_EDU.len()..].parse().expect("count"))
        }
        _ => panic!("unknown {ROLE} {role}"),
    }
}

// ---------------------------------------------------------------- device models

/// The regions every bench device declares: BAR0 of `bar0` trapped bytes,
/// the rest of vfio-pci's fixed regions empty.
fn pci_regions(index: u32, bar0: u64) -> Option<RegionInfo> {
    let mut r = RegionInfo {
        index,
        ..RegionInfo::default()
    };
    match index {
        0 => {
            r.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            r.size = bar0;
        }
        i if i < pci_region::COUNT => {}
        _ => return None,
    }
    Some(r)
}

fn pci_info() -> DeviceInfo {
    DeviceInfo {
        flags: VFIO_DEVICE_FLAGS_PCI,
        num_regions: pci_region::COUNT,
        num_irqs: pci_irq::COUNT,
    }
}

fn no_irq(index: u32) -> Option<IrqInfo> {
    (index < pci_irq::COUNT).then_some(IrqInfo {
        index,
        flags: 0,
        count: 0,
    })
}

/// The shape of a bench device that has only 8 bytes of BAR0: vfio-pci's
/// regions and IRQ indices, no interrupts.
macro_rules! eight_byte_bar0_device {
    () => {
        fn device_info(&self) -> DeviceInfo {
            pci_info()
        }

        fn region_info(&self, index: u32) -> Option<RegionInfo> {
            pci_regions(index, 8)
        }

        fn irq_info(&self, index: u32) -> Option<IrqInfo> {
            no_irq(index)
        }
    };
}

/// A bench-only DMA engine: writing N (u64) to BAR0 offset 0 makes the
/// device read N bytes of client memory at [`DMA_IOVA`] into its own buffer
/// with `ctx.dma_read`, inside the write. N = 0 is a plain register write.
struct DmaCopyDevice {
    buf: Vec<u8>,
}

impl DmaCopyDevice {
    fn new() -> Self {
        DmaCopyDevice {
            buf: vec![0; BIG_DMA],
        }
    }
}

impl DeviceModel for DmaCopyDevice {
    eight_byte_bar0_device!();

    fn region_read(
        &mut self,
        _: &mut dyn DeviceContext,
        _: u32,
        _: u64,
        data: &mut [u8],
    ) -> vfio_io::Result<()> {
        // The first bytes of what the last DMA brought, so the client can
        // check the copy really happened.
        let n = data.len().min(self.buf.len());
        data[..n].copy_from_slice(&self.buf[..n]);
        Ok(())
    }

    fn region_write(
        &mut self,
        ctx: &mut dyn DeviceContext,
        _: u32,
        _: u64,
        data: &[u8],
    ) -> vfio_io::Result<()> {
        let mut n = [0u8; 8];
        n[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        let n = (u64::from_ne_bytes(n) as usize).min(self.buf.len());
        if n > 0 {
            ctx.dma_read(DMA_IOVA, &mut self.buf[..n])?;
        }
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn DeviceContext) -> vfio_io::Result<()> {
        Ok(())
    }
}

/// Bytes of state of the bench-only migrating device.
const BIG_STATE: usize = 64 << 20;

/// A bench-only device whose migration state is a [`BIG_STATE`] buffer:
/// save copies it out, load copies a stream of that length back in. A BAR0
/// write lands in the buffer's first bytes and a read returns them, so a
/// client can tell one state from another.
struct BigStateDevice {
    state: Vec<u8>,
}

impl BigStateDevice {
    fn new() -> Self {
        BigStateDevice {
            state: (0..BIG_STATE).map(|i| (i * 7) as u8).collect(),
        }
    }
}

impl DeviceModel for BigStateDevice {
    eight_byte_bar0_device!();

    fn region_read(
        &mut self,
        _: &mut dyn DeviceContext,
        _: u32,
        offset: u64,
        data: &mut [u8],
    ) -> vfio_io::Result<()> {
        let at = offset as usize;
        data.copy_from_slice(&self.state[at..at + data.len()]);
        Ok(())
    }

    fn region_write(
        &mut self,
        _: &mut dyn DeviceContext,
        _: u32,
        offset: u64,
        data: &[u8],
    ) -> vfio_io::Result<()> {
        let at = offset as usize;
        self.state[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn DeviceContext) -> vfio_io::Result<()> {
        Ok(())
    }

    fn migration(&mut self) -> Option<&mut dyn Migratable> {
        Some(self)
    }
}

impl Migratable for BigStateDevice {
    fn stop(&mut self, _: &mut dyn DeviceContext) -> vfio_io::Result<()> {
        Ok(())
    }

    fn resume(&mut self, _: &mut dyn DeviceContext) -> vfio_io::Result<()> {
        Ok(())
    }

    fn save(&self) -> vfio_io::Result<Vec<u8>> {
        Ok(self.state.clone())
    }

    fn load(&mut self, stream: &[u8]) -> vfio_io::Result<()> {
        if stream.len() != BIG_STATE {
            return Err(vfio_io::Error::InvalidArgument("wrong state length"));
        }
        self.state.copy_from_slice(stream);
        Ok(())
    }

    fn max_stream_len(&self) -> usize {
        BIG_STATE
    }
}

/// rust-vmm's vfio-user server with a device whose BAR0 answers 4-byte
/// reads with edu's ID; it serves one client per `run`, so it loops.
fn rust_vmm_serve(path: &std::path::Path) {
    use vfio_bindings::bindings::vfio::vfio_region_info;

    struct Backend;
    impl vfio_user::ServerBackend for Backend {
        fn region_read(&mut self, _: u32, _: u64, data: &mut [u8]) -> std::io::Result<()> {
            let id = vfio_io::models::edu::ID.to_ne_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = id[i % 4];
            }
            Ok(())
        }
        fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn dma_map(
            &mut self,
            _: vfio_user::DmaMapFlags,
            _: u64,
            _: u64,
            _: u64,
            _: Option<std::fs::File>,
        ) -> std::io::Result<()> {
            Ok(())
        }
        fn dma_unmap(
            &mut self,
            _: vfio_user::DmaUnmapFlags,
            _: u64,
            _: u64,
        ) -> std::io::Result<()> {
            Ok(())
        }
        fn reset(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn set_irqs(
            &mut self,
            _: u32,
            _: u32,
            _: u32,
            _: u32,
            _: Vec<std::fs::File>,
        ) -> std::io::Result<()> {
            Ok(())
        }
    }
    let regions = (0..pci_region::COUNT)
        .map(|index| {
            let mut r = vfio_region_info {
                argsz: std::mem::size_of::<vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            if index == 0 || index == pci_region::CONFIG {
                r.size = 256;
                r.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            }
            vfio_user::ServerRegion {
                region_info: r,
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect();
    let irqs = (0..pci_irq::COUNT)
        .map(|index| vfio_user::IrqInfo {
            index,
            flags: 0,
            count: 0,
        })
        .collect();
    let server = vfio_user::Server::new(path, false, irqs, regions).expect("rust-vmm bind");
    ready();
    let mut backend = Backend;
    loop {
        let _ = server.run(&mut backend);
    }
}

fn ready() {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|_| out.flush())
        .expect("stdout");
}

/// The floor's server: one read() per 32-byte request, one write() of a
/// 36-byte reply, nothing else.
fn floor_serve(mut s: UnixStream) {
    let mut req = [0u8; 64];
    let reply = [0x5au8; 36];
    loop {
        match s.read(&mut req) {
            Ok(0) | Err(_) => return,
            Ok(n) => debug_assert_eq!(n, 32),
        }
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// The busy-poll floor's server: [`floor_serve`] with each request awaited
/// by [`spin_read`], so in a steady ping-pong it never sleeps.
fn floor_serve_spin(mut s: UnixStream) {
    let mut req = [0u8; 64];
    let reply = [0x5au8; 36];
    loop {
        if spin_read(&s, &mut req, 32).is_none() || s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Reads exactly `len` bytes into `buf` with non-blocking recv() calls,
/// spinning between them for up to [`SPIN`], then with blocking ones (so an
/// idle side stops burning the CPU another case is measured on). `None`
/// when the peer is gone.
fn spin_read(s: &UnixStream, buf: &mut [u8], len: usize) -> Option<()> {
    let until = Instant::now() + SPIN;
    let mut got = 0;
    while got < len {
        let flags = if Instant::now() < until {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::empty()
        };
        match nix::sys::socket::recv(s.as_raw_fd(), &mut buf[got..len], flags) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => std::hint::spin_loop(),
            Err(_) => return None,
        }
    }
    Some(())
}

/// The floor in the shape of vfio-io's I/O: sendmsg of header and payload as
/// two iovecs, recvmsg with room for SCM_RIGHTS, still one call per message.
/// The gap between this and [`floor_serve`] is the cost of the system calls
/// vfio-io has to use (fds may ride on any message), not of vfio-io itself.
fn floor_serve_msg(s: UnixStream) {
    let mut req = [0u8; 64];
    let (hdr, body) = ([0x5au8; 16], [0x5au8; 20]);
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 32]);
    loop {
        match recv_msg(&s, &mut req, &mut cmsg) {
            0 => return,
            n => debug_assert_eq!(n, 32),
        }
        if send_msg(&s, &[&hdr, &body]).is_err() {
            return;
        }
    }
}

/// The one-way floor's server: receives [`ONEWAY`]-byte frames the way
/// vfio-io's server does (recvmsg with room for SCM_RIGHTS into a buffer that
/// may hold several), and answers only frames marked [`SYNC`].
fn floor_serve_oneway(s: UnixStream) {
    let mut buf = vec![0u8; 64 << 10];
    let (mut start, mut end) = (0, 0);
    let reply = [0x5au8; ONEWAY];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 32]);
    loop {
        match recv_msg(&s, &mut buf[end..], &mut cmsg) {
            0 => return,
            n => end += n,
        }
        while end - start >= ONEWAY {
            if buf[start] == SYNC && send_msg(&s, &[&reply]).is_err() {
                return;
            }
            start += ONEWAY;
        }
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
    }
}

fn recv_msg(s: &UnixStream, buf: &mut [u8], cmsg: &mut [u8]) -> usize {
    let mut iov = [IoSliceMut::new(buf)];
    match recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m.bytes,
        Err(_) => 0,
    }
}

/// One sendmsg of up to three iovecs, no fds.
fn send_msg(s: &UnixStream, parts: &[&[u8]]) -> nix::Result<usize> {
    let mut iov = [IoSlice::new(&[]); 3];
    for (v, p) in iov.iter_mut().zip(parts) {
        *v = IoSlice::new(p);
    }
    sendmsg::<()>(
        s.as_raw_fd(),
        &iov[..parts.len()],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
}

/// A server child process, killed (by its own pid) on drop.
struct Served {
    child: Child,
    path: PathBuf,
    _dir: TempDir,
}

fn spawn_server(role: &str, cpu: Option<usize>) -> Served {
    let dir = TempDir::new("bench");
    let path = dir.join("s.sock");
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(ROLE, role)
        .env(SOCK, &path)
        .env(CPU, cpu.map(|c| c.to_string()).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server ready line");
    assert_eq!(line.trim(), "ready", "server child failed to start");
    Served {
        child,
        path,
        _dir: dir,
    }
}

/// `vfio-io serve edu SOCKET --spin-us N`, the command-line server, with
/// every thread of it pinned to `cpu` once it says it is serving.
fn spawn_cli_edu_spin(spin_us: u32, cpu: usize) -> Served {
    let dir = TempDir::new("bench");
    let path = dir.join("s.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-io"))
        .arg("serve")
        .arg("edu")
        .arg(&path)
        .args(["--spin-us", &spin_us.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vfio-io serve");
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("server ready line");
    assert!(line.contains("serving"), "vfio-io serve failed: {line}");
    // Session threads start later from the accepting thread and inherit its mask.
    let mut set = CpuSet::new();
    set.set(cpu).expect("CPU index");
    for task in std::fs::read_dir(format!("/proc/{}/task", child.id())).expect("tasks") {
        let tid = task.expect("task").file_name();
        let tid: i32 = tid.to_str().and_then(|t| t.parse().ok()).expect("tid");
        sched_setaffinity(Pid::from_raw(tid), &set).expect("pin the server");
    }
    Served {
        child,
        path,
        _dir: dir,
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- timing

#[derive(Clone, Copy)]
struct Stats {
    p50: f64,
    p99: f64,
    ops: f64,
}

/// Per-op samples from `Instant` (its ~20-30 ns cost is inside every sample).
fn stats(mut ns: Vec<u64>, ops: usize, total: Duration) -> Stats {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        ops: ops as f64 / total.as_secs_f64(),
    }
}

struct Row {
    name: String,
    s: Stats,
    /// p50 of the floor this row is compared with.
    floor: Option<f64>,
    note: String,
}

struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, name: impl Into<String>, s: Stats, floor: Option<f64>, note: String) {
        let r = Row {
            name: name.into(),
            s,
            floor,
            note,
        };
        // Print as we go: a long run shows progress, and a crash keeps the rows.
        eprintln!("  {}", fmt_row(&r));
        self.0.push(r);
    }

    /// Adds a section's floor row; returns its p50, what the section's
    /// other rows are divided by.
    fn floor(&mut self, name: impl Into<String>, s: Stats, note: String) -> f64 {
        self.add(name, s, Some(s.p50), note);
        s.p50
    }

    fn print(&self) {
        println!("| case | p50 µs | p99 µs | ops/s | p50 / floor | note |");
        println!("|---|---:|---:|---:|---:|---|");
        for r in &self.0 {
            println!("{}", fmt_row(r));
        }
    }
}

fn fmt_row(r: &Row) -> String {
    let ratio = r
        .floor
        .map(|f| format!("{:.2}x", r.s.p50 / f))
        .unwrap_or_else(|| "-".into());
    format!(
        "| {} | {:.2} | {:.2} | {:.0} | {} | {} |",
        r.name, r.s.p50, r.s.p99, r.s.ops, ratio, r.note
    )
}

// ---------------------------------------------------------------- cases

/// Runs `ops` in turn, [`BLOCK`] calls at a time, until each has run `n`
/// times, and returns their stats in order. Alternating in blocks means a
/// burst of load from elsewhere on this shared machine hits every case alike,
/// so the ratios between them hold even when absolute figures wander.
fn interleaved(n: usize, ops: &mut [&mut dyn FnMut()]) -> Vec<Stats> {
    interleaved_flushed(n, ops, &mut [])
}

/// [`interleaved`], where `flush[i]` (for the first `flush.len()` cases) runs after each block
/// of `ops[i]` and after its warm-up: it waits until the server has handled
/// everything the block sent, so no work spills into the next case's block.
/// Its time counts in ops/s (sustained rate), not in the per-call samples.
fn interleaved_flushed(
    n: usize,
    ops: &mut [&mut dyn FnMut()],
    flush: &mut [&mut dyn FnMut()],
) -> Vec<Stats> {
    let mut flush_after = |i: usize| {
        if let Some(f) = flush.get_mut(i) {
            f();
        }
    };
    for (i, op) in ops.iter_mut().enumerate() {
        for _ in 0..WARMUP {
            op();
        }
        flush_after(i);
    }
    let mut ns: Vec<Vec<u64>> = ops.iter().map(|_| Vec::with_capacity(n + BLOCK)).collect();
    let mut time = vec![Duration::ZERO; ops.len()];
    let rounds = n.div_ceil(BLOCK);
    for _ in 0..rounds {
        for (i, op) in ops.iter_mut().enumerate() {
            let t0 = Instant::now();
            for _ in 0..BLOCK {
                let t = Instant::now();
                op();
                ns[i].push(t.elapsed().as_nanos() as u64);
            }
            flush_after(i);
            time[i] += t0.elapsed();
        }
    }
    ns.into_iter()
        .zip(time)
        .map(|(ns, time)| stats(ns, rounds * BLOCK, time))
        .collect()
}

/// Calls an [`interleaved`] run of `n` makes to each case, warm-up included.
fn interleaved_calls(n: usize) -> usize {
    WARMUP + n.div_ceil(BLOCK) * BLOCK
}

/// A client of the floor's server: one write() of the 32-byte request, one
/// read() of the 36-byte reply.
fn floor_client(path: &std::path::Path) -> impl FnMut() {
    let mut s = UnixStream::connect(path).expect("connect floor");
    let req = [0xa5u8; 32];
    let mut reply = [0u8; 64];
    move || {
        s.write_all(&req).expect("floor write");
        // A short read (never seen for 36 bytes) is completed so the stream
        // stays in step; the common case is exactly one read().
        let mut got = s.read(&mut reply).expect("floor read");
        while got < 36 {
            got += s.read(&mut reply[got..36]).expect("floor read");
        }
    }
}

/// A client of the busy-poll floor: one write() of the request, the reply
/// awaited by [`spin_read`].
fn floor_spin_client(path: &std::path::Path) -> impl FnMut() {
    let mut s = UnixStream::connect(path).expect("connect floor");
    let req = [0xa5u8; 32];
    let mut reply = [0u8; 64];
    move || {
        s.write_all(&req).expect("floor write");
        spin_read(&s, &mut reply, 36).expect("floor reply");
    }
}

/// A client of the sendmsg/recvmsg floor.
fn floor_msg_client(path: &std::path::Path) -> impl FnMut() {
    let s = UnixStream::connect(path).expect("connect floor");
    let (hdr, body) = ([0xa5u8; 16], [0xa5u8; 16]);
    let mut reply = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 32]);
    move || {
        send_msg(&s, &[&hdr, &body]).expect("floor sendmsg");
        let got = recv_msg(&s, &mut reply, &mut cmsg);
        assert_eq!(got, 36, "short recvmsg");
    }
}

fn client(path: &std::path::Path) -> Client {
    Client::connect(path, ClientConfig::default()).expect("connect vfio-user")
}

/// The round-trip floors and vfio-io's synchronous accesses (each a round
/// trip too), interleaved, with every server process pinned to `server_cpu`
/// and this thread to CPU 0.
fn round_trips(t: &mut Table, label: &str, server_cpu: usize, n: usize) {
    let (f1, f2, srv) = (
        spawn_server("floor", Some(server_cpu)),
        spawn_server("floor-msg", Some(server_cpu)),
        spawn_server("edu", Some(server_cpu)),
    );
    let mut floor = floor_client(&f1.path);
    let mut floor_msg = floor_msg_client(&f2.path);
    let c = client(&srv.path);
    let (mut b4, mut b8, mut v) = ([0u8; 4], [0u8; 8], 0u32);
    let mut read4 = || c.region_read(0, regs::ID, &mut b4).expect("read");
    let mut read8 = || c.region_read(0, regs::DMA_SRC, &mut b8).expect("read");
    let mut write4 = || {
        v = v.wrapping_add(1);
        c.region_write(0, regs::LIVENESS, &v.to_ne_bytes(), false)
            .expect("write")
    };
    let st = interleaved(
        n,
        &mut [
            &mut floor,
            &mut floor_msg,
            &mut read4,
            &mut read8,
            &mut write4,
        ],
    );
    let f = st[0].p50;
    let names = [
        (RT_FLOOR, ""),
        (
            "floor: round trip 32/36 B, sendmsg/recvmsg with cmsg room",
            "the syscalls vfio-io uses",
        ),
        ("vfio-io region read 4 B (BAR0 0x0)", ""),
        ("vfio-io region read 8 B (BAR0 0x80)", ""),
        (
            "vfio-io region write 4 B (BAR0 0x4), not posted",
            "request 36 B, reply 32 B",
        ),
    ];
    for (s, (name, note)) in st.into_iter().zip(names) {
        t.add(format!("{name}, {label}"), s, Some(f), note.into());
    }
    assert_eq!(u32::from_ne_bytes(b4), vfio_io::models::edu::ID);
}

/// Posted writes against the one-way floor, interleaved: each sample is one
/// send. Every block ends with a flush (vfio-io: a read, which the server
/// answers only after the writes before it; the floor: a [`SYNC`] frame), so
/// ops/s is the sustained rate, not the rate of filling the socket buffer.
/// The same write not posted runs alongside for reference.
fn posted(t: &mut Table, label: &str, server_cpu: usize, n: usize) {
    let (f, srv) = (
        spawn_server("floor-oneway", Some(server_cpu)),
        spawn_server("edu", Some(server_cpu)),
    );
    let s = UnixStream::connect(&f.path).expect("connect floor");
    let (hdr, mut sync_hdr, body, data) = ([0u8; 16], [0u8; 16], [0xa5u8; 16], [0xa5u8; 4]);
    sync_hdr[0] = SYNC;
    let mut oneway = || {
        send_msg(&s, &[&hdr, &body, &data]).expect("floor sendmsg");
    };
    let mut reply = [0u8; ONEWAY];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 32]);
    let mut oneway_flush = || {
        send_msg(&s, &[&sync_hdr, &body, &data]).expect("floor sendmsg");
        let mut got = 0;
        while got < ONEWAY {
            match recv_msg(&s, &mut reply[got..], &mut cmsg) {
                0 => panic!("one-way floor closed"),
                n => got += n,
            }
        }
    };
    let c = client(&srv.path);
    let last = std::cell::Cell::new(0u32);
    let mut post = || {
        last.set(last.get().wrapping_add(1));
        c.region_write(0, regs::LIVENESS, &last.get().to_ne_bytes(), true)
            .expect("posted write")
    };
    let mut post_flush = || {
        let mut b4 = [0u8; 4];
        c.region_read(0, regs::LIVENESS, &mut b4).expect("read");
        // edu's liveness register reads back the complement of the last write.
        assert_eq!(
            u32::from_ne_bytes(b4),
            !last.get(),
            "posted writes lost or reordered"
        );
    };
    let mut v = 0u32;
    let mut sync_write = || {
        v = v.wrapping_add(1);
        c.region_write(0, regs::LIVENESS, &v.to_ne_bytes(), false)
            .expect("write")
    };
    let st = interleaved_flushed(
        n,
        &mut [&mut oneway, &mut post, &mut sync_write],
        &mut [&mut oneway_flush, &mut post_flush],
    );
    let flushed = format!("ops/s incl. one flush per {BLOCK}");
    let f = t.floor(
        format!("floor: one way 16+16+4 B, sendmsg, no reply, {label}"),
        st[0],
        flushed.clone(),
    );
    t.add(
        format!("vfio-io posted write 4 B (BAR0 0x4), {label}"),
        st[1],
        Some(f),
        flushed,
    );
    t.add(
        format!("vfio-io region write 4 B, not posted (round trip, reference), {label}"),
        st[2],
        None,
        format!("posted: {:.1}x its ops/s", st[1].ops / st[2].ops),
    );
}

/// One slice of the scaling rows: runs `ops` on threads of their own for
/// [`SCALE_SLICE`], each pushing its per-call samples into its `ns` (up to
/// its capacity). Returns the calls made and the slice's wall time.
fn scale_slice(ops: &mut [Box<dyn FnMut() + Send + '_>], ns: &mut [Vec<u64>]) -> (usize, Duration) {
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let calls: usize = std::thread::scope(|sc| {
        let hs: Vec<_> = ops
            .iter_mut()
            .zip(ns.iter_mut())
            .map(|(op, ns)| {
                let stop = &stop;
                sc.spawn(move || {
                    let mut calls = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        op();
                        if ns.len() < ns.capacity() {
                            ns.push(t.elapsed().as_nanos() as u64);
                        }
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        std::thread::sleep(SCALE_SLICE);
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    (calls, t0.elapsed())
}

/// A 4-byte read of edu's ID through `c` that checks the value, for a
/// thread of its own.
fn checked_id_read(c: &Client) -> Box<dyn FnMut() + Send + '_> {
    let mut b = [0u8; 4];
    Box::new(move || {
        c.region_read(0, regs::ID, &mut b).expect("read");
        assert_eq!(u32::from_ne_bytes(b), vfio_io::models::edu::ID);
    })
}

/// 1, 2, 4 and 8 threads sharing one `Client`, and the round-trip floor on
/// one thread, taking turns in slices of [`SCALE_SLICE`]. `placement`: None
/// pins nothing (client threads and server processes go wherever the
/// scheduler puts them); `Some((client, server))` puts every client thread
/// on CPU `client` and the server processes on CPU `server`.
fn scaling(t: &mut Table, placement: Option<(usize, usize)>) {
    let (client_cpu, server_cpu) = placement.unzip();
    let label = match placement {
        None => "unpinned".to_string(),
        Some((c, s)) if c == s => "same core".to_string(),
        Some((c, s)) => format!("cross core (client threads CPU {c}, server CPU {s})"),
    };
    pin(client_cpu);
    let f = spawn_server("floor", server_cpu);
    let srv = spawn_server("edu", server_cpu);
    let c = client(&srv.path);
    const THREADS: [usize; 4] = [1, 2, 4, 8];
    let mut floor = floor_client(&f.path);
    let mut b = [0u8; 4];
    for _ in 0..WARMUP {
        floor();
        c.region_read(0, regs::ID, &mut b).expect("read");
    }
    let mut floor_op: [Box<dyn FnMut() + Send + '_>; 1] = [Box::new(floor)];
    let reads = |n: usize| -> Vec<Box<dyn FnMut() + Send + '_>> {
        (0..n).map(|_| checked_id_read(&c)).collect()
    };
    let mut read_ops: Vec<_> = THREADS.iter().map(|&n| reads(n)).collect();
    // Per row: per-thread samples, calls, wall time.
    let per_thread = SCALE_ROUNDS * 15_000;
    let mut acc: Vec<(Vec<Vec<u64>>, usize, Duration)> = std::iter::once(1)
        .chain(THREADS)
        .map(|n| {
            let ns = (0..n).map(|_| Vec::with_capacity(per_thread)).collect();
            (ns, 0, Duration::ZERO)
        })
        .collect();
    for _ in 0..SCALE_ROUNDS {
        for (row, (ns, calls, time)) in acc.iter_mut().enumerate() {
            let ops = match row {
                0 => &mut floor_op[..],
                r => &mut read_ops[r - 1][..],
            };
            let (c, d) = scale_slice(ops, ns);
            *calls += c;
            *time += d;
        }
    }
    let rows: Vec<Stats> = acc
        .into_iter()
        .map(|(ns, calls, time)| stats(ns.concat(), calls, time))
        .collect();
    let (f_ops, one_ops) = (rows[0].ops, rows[1].ops);
    let f = t.floor(
        format!("{RT_FLOOR}, 1 thread, {label}"),
        rows[0],
        String::new(),
    );
    for (s, n) in rows[1..].iter().zip(THREADS) {
        t.add(
            format!("scaling: {n} thread(s), 4 B reads, one Client, {label}"),
            *s,
            Some(f),
            format!(
                "ops/s of all threads: {:.2}x the floor's, {:.2}x 1 thread's",
                s.ops / f_ops,
                s.ops / one_ops
            ),
        );
    }
    pin(Some(0));
}

/// Numbers the /dev/shm files of this process.
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Client memory that is a file in /dev/shm (tmpfs): created, sized, mmapped
/// shared and passed as the DMA_MAP fd, with no seals. Removed on drop.
struct TmpfsBuffer {
    path: PathBuf,
    file: std::fs::File,
    map: Mapping,
}

impl TmpfsBuffer {
    fn new(len: usize) -> std::io::Result<Self> {
        let path = PathBuf::from(format!(
            "/dev/shm/vfio-io-bench-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let buf = |file| -> std::io::Result<Self> {
            let file: std::fs::File = file;
            file.set_len(len as u64)?;
            let map = Mapping::new(std::os::fd::AsFd::as_fd(&file), 0, len, true)
                .map_err(std::io::Error::other)?;
            Ok(TmpfsBuffer {
                path: path.clone(),
                file,
                map,
            })
        };
        buf(file).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })
    }

    fn dma_map(&self, iova: u64) -> DmaMap {
        DmaMap {
            iova,
            size: self.map.len() as u64,
            vaddr: self.map.as_ptr() as u64,
            fd: self.file.as_raw_fd(),
            offset: 0,
            readable: true,
            writable: true,
        }
    }
}

impl Drop for TmpfsBuffer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// This process's threads named `vfio-user-dma`: each client's twin-socket
/// thread, which serves the server's DMA_READ/DMA_WRITE messages.
fn dma_threads() -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "vfio-user-dma")
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
    .collect()
}

/// How often thread `tid` of this process has blocked so far. A client's DMA
/// thread sleeps while no DMA_READ/DMA_WRITE comes and wakes for each one, so
/// the count stays put when the server reaches client memory by its mapping.
fn wakeups(tid: Option<u64>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{}/status", tid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether process `pid` has a mapping whose name contains `name`.
fn maps_contain(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains(name))
}

/// One edu client for the DMA section, with the DMA thread it owns (if the
/// server took twin-socket mode) and the name its memory has in the server's
/// /proc/PID/maps when the server mmapped it.
struct DmaCase<'a> {
    label: &'a str,
    srv: Served,
    c: Client,
    thread: Option<u64>,
    mapped_as: Option<String>,
    mem: &'a dyn Fn(usize, &mut [u8]),
}

/// edu DMA of its whole 4 KiB buffer, each op one DMA_CMD write that edu
/// completes inside the write, through three kinds of client memory: a
/// sealed memfd ([`DmaBuffer`]), an unsealed tmpfs file, and memory mapped
/// with fd=-1 (the server sends DMA_READ/DMA_WRITE to the client).
/// Interleaved with the floor and a plain 8-byte register write, so the
/// DMA's own cost is the difference from that write. Which way the tmpfs
/// case went is observed, not assumed: the server process's maps, and the
/// wake-ups of the client's DMA thread per op.
fn dma(t: &mut Table, n: usize) {
    let f = spawn_server("floor", Some(0));
    let mut floor = floor_client(&f.path);
    let memfd = DmaBuffer::new(DMA_BUF_SIZE).expect("DMA buffer");
    let nofd = DmaBuffer::new(DMA_BUF_SIZE).expect("DMA buffer");
    let tmpfs = TmpfsBuffer::new(DMA_BUF_SIZE)
        .inspect_err(|e| eprintln!("  SKIPPED the tmpfs rows: no file in /dev/shm: {e}"))
        .ok();
    let read_memfd = |o: usize, b: &mut [u8]| memfd.read(o, b).expect("read");
    let read_nofd = |o: usize, b: &mut [u8]| nofd.read(o, b).expect("read");
    let read_tmpfs = |o: usize, b: &mut [u8]| {
        if let Some(m) = &tmpfs {
            m.map.read(o, b).expect("read");
        }
    };
    let mut maps = vec![(
        "sealed memfd (DmaBuffer)",
        memfd.dma_map(DMA_IOVA),
        Some("memfd:vfio-io-dma".to_string()),
        &read_memfd as &dyn Fn(usize, &mut [u8]),
    )];
    if let Some(m) = &tmpfs {
        maps.push((
            "tmpfs file in /dev/shm, unsealed",
            m.dma_map(DMA_IOVA),
            Some(m.path.display().to_string()),
            &read_tmpfs,
        ));
    }
    let mut msg_map = nofd.dma_map(DMA_IOVA);
    msg_map.fd = -1;
    maps.push((
        "fd=-1, DMA_READ/DMA_WRITE messages",
        msg_map,
        None,
        &read_nofd,
    ));
    let cases: Vec<DmaCase> = maps
        .into_iter()
        .map(|(label, map, mapped_as, mem)| {
            let srv = spawn_server("edu", Some(0));
            let before = dma_threads();
            let c = client(&srv.path);
            let thread = dma_threads().into_iter().find(|t| !before.contains(t));
            // SAFETY: every buffer outlives its mapping, removed at the end.
            unsafe { c.dma_map(&map).expect("dma_map") };
            DmaCase {
                label,
                srv,
                c,
                thread,
                mapped_as,
                mem,
            }
        })
        .collect();
    let w = |c: &Client, off: u64, v: u64| {
        c.region_write(0, off, &v.to_ne_bytes(), false)
            .expect("write")
    };
    let pattern: Vec<u8> = (0..DMA_BUF_SIZE).map(|i| (i * 13) as u8).collect();
    memfd.write(0, &pattern).expect("fill");
    nofd.write(0, &pattern).expect("fill");
    if let Some(m) = &tmpfs {
        m.map.write(0, &pattern).expect("fill");
    }
    for (dir, src, dst, cmd) in [
        ("RAM->edu", DMA_IOVA, DMA_BUF_ADDR, DMA_CMD_START),
        (
            "edu->RAM",
            DMA_BUF_ADDR,
            DMA_IOVA,
            DMA_CMD_START | DMA_CMD_TO_RAM,
        ),
    ] {
        for k in &cases {
            w(&k.c, regs::DMA_SRC, src);
            w(&k.c, regs::DMA_DST, dst);
            w(&k.c, regs::DMA_COUNT, DMA_BUF_SIZE as u64);
        }
        if dir == "edu->RAM" {
            // edu holds the pattern from RAM->edu: clear client memory, so
            // the check below proves the copy back happened.
            memfd.write(0, &[0; DMA_BUF_SIZE]).expect("clear");
            nofd.write(0, &[0; DMA_BUF_SIZE]).expect("clear");
            if let Some(m) = &tmpfs {
                m.map.write(0, &[0; DMA_BUF_SIZE]).expect("clear");
            }
        }
        // DMA_COUNT rewritten with its own value: a write with no side effect.
        let mut plain = || w(&cases[0].c, regs::DMA_COUNT, DMA_BUF_SIZE as u64);
        let mut dmas: Vec<_> = cases
            .iter()
            .map(|k| move || w(&k.c, regs::DMA_CMD, cmd))
            .collect();
        let mut ops: Vec<&mut dyn FnMut()> = vec![&mut floor, &mut plain];
        ops.extend(dmas.iter_mut().map(|d| d as &mut dyn FnMut()));
        let woke0: Vec<_> = cases.iter().map(|k| wakeups(k.thread)).collect();
        let st = interleaved(n, &mut ops);
        let calls = interleaved_calls(n) as f64;
        let fl = t.floor(RT_FLOOR_SAME, st[0], String::new());
        let base = st[1].p50;
        t.add(
            "edu 8 B register write, no DMA (baseline), same core",
            st[1],
            Some(fl),
            String::new(),
        );
        let (memfd_p50, msg_p50) = (st[2].p50, st[st.len() - 1].p50);
        for ((k, s), w0) in cases.iter().zip(&st[2..]).zip(woke0) {
            if dir == "edu->RAM" {
                let mut back = vec![0u8; DMA_BUF_SIZE];
                (k.mem)(0, &mut back);
                assert!(back == pattern, "{}: the data did not come back", k.label);
            }
            let woke = match (w0, wakeups(k.thread)) {
                (Some(a), Some(b)) => format!("{:.2}", (b - a) as f64 / calls),
                _ => "n/a".into(),
            };
            let path = match &k.mapped_as {
                Some(name) if maps_contain(k.srv.child.id(), name) => "server mmapped it",
                Some(_) => "server did not mmap it",
                None => "no fd",
            };
            t.add(
                format!("edu DMA 4 KiB {dir}, {}, same core", k.label),
                *s,
                Some(fl),
                format!(
                    "{:+.2} µs over baseline; {path}; client DMA thread woke {woke}/op; p50 {:.2}x memfd's, {:.2}x messages'",
                    s.p50 - base,
                    s.p50 / memfd_p50,
                    s.p50 / msg_p50
                ),
            );
        }
    }
    for k in &cases {
        k.c.dma_unmap(DMA_IOVA, DMA_BUF_SIZE as u64)
            .expect("dma_unmap");
    }
}

/// The C ABI and the Rust call, each on its own server process (a server
/// takes one client at a time), interleaved with the floor.
fn c_abi(t: &mut Table, n: usize) {
    let f = spawn_server("floor", Some(0));
    let mut floor = floor_client(&f.path);
    let (srv_c, srv_rust) = (spawn_server("edu", Some(0)), spawn_server("edu", Some(0)));
    let path = CString::new(srv_c.path.to_str().expect("UTF-8 path")).expect("path");
    let mut dev: *mut vfio_io_device = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path and a writable out pointer.
    let rc = unsafe { vfio_io_user_connect(path.as_ptr(), &mut dev) };
    assert_eq!(rc, 0, "vfio_io_user_connect");
    // SAFETY: `dev` is a live handle; the ops table lives as long as it.
    let ops = unsafe { &*vfio_io_device_ops(dev) };
    let read = ops.region_read.expect("region_read op");
    let c = client(&srv_rust.path);
    let mut b = [0u8; 4];
    let mut via_c = || {
        // SAFETY: live handle, and a 4-byte buffer for a 4-byte read.
        let r = unsafe { read(dev, 0, 0, 4, b.as_mut_ptr().cast()) };
        assert_eq!(r, 4);
    };
    let mut b2 = [0u8; 4];
    let mut via_rust = || c.region_read(0, regs::ID, &mut b2).expect("read");
    let st = interleaved(n, &mut [&mut floor, &mut via_c, &mut via_rust]);
    let fl = st[0].p50;
    let names = [
        RT_FLOOR_SAME,
        "C ABI ops->region_read 4 B, same core",
        "Rust Client::region_read 4 B, same core",
    ];
    for (s, name) in st.into_iter().zip(names) {
        t.add(name, s, Some(fl), String::new());
    }
    assert_eq!(u32::from_ne_bytes(b), vfio_io::models::edu::ID);
    // SAFETY: closed once, after its last use.
    unsafe { vfio_io_device_close(dev) };
}

/// A 4-byte read of a region area the client has mmapped (no message at
/// all) against the same read of a trapped part of the same region, by
/// message. The mapped row's p50 is mostly `Instant`'s own cost.
fn mmap_path(t: &mut Table, n: usize) {
    let f = spawn_server("floor", Some(0));
    let mut floor = floor_client(&f.path);
    let srv = spawn_server("shm", Some(0));
    let c = client(&srv.path);
    assert!(c.has_mapped_areas(), "the shm device's area was not mapped");
    let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
    let mut mapped = || c.region_read(2, AREA.offset, &mut a).expect("mapped read");
    let mut trapped = || c.region_read(2, 0x3000, &mut b).expect("read");
    let st = interleaved(n, &mut [&mut floor, &mut trapped, &mut mapped]);
    assert_eq!(u32::from_ne_bytes(a), vfio_io::models::edu::ID);
    let fl = t.floor(RT_FLOOR_SAME, st[0], String::new());
    t.add(
        "region read 4 B by message (BAR2 trapped part), same core",
        st[1],
        Some(fl),
        String::new(),
    );
    // No socket at all: a ratio to the socket floor would compare unlike things.
    t.add(
        "region read 4 B through the mmapped sparse area (BAR2), same core",
        st[2],
        None,
        format!(
            "no message; p50 is mostly Instant's own cost; {:.0}x the message read's ops/s",
            st[2].ops / st[1].ops
        ),
    );
}

/// rust-vmm's vfio-user crate (its Client and Server, in the same process
/// layout: server in a child pinned like the others) against vfio-io's client
/// and server on the same 4-byte region read, interleaved with the floor.
fn rust_vmm(t: &mut Table, label: &str, server_cpu: usize, n: usize) {
    let f = spawn_server("floor", Some(server_cpu));
    let mut floor = floor_client(&f.path);
    let (ours, theirs) = (
        spawn_server("edu", Some(server_cpu)),
        spawn_server("rust-vmm", Some(server_cpu)),
    );
    let c = client(&ours.path);
    let mut rc = vfio_user::Client::new(&theirs.path).expect("rust-vmm client");
    let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
    let mut vio = || c.region_read(0, regs::ID, &mut a).expect("read");
    let mut rv = || rc.region_read(0, 0, &mut b).expect("rust-vmm read");
    let st = interleaved(n, &mut [&mut floor, &mut vio, &mut rv]);
    assert_eq!(u32::from_ne_bytes(a), vfio_io::models::edu::ID);
    assert_eq!(u32::from_ne_bytes(b), vfio_io::models::edu::ID);
    let fl = st[0].p50;
    let ratio = st[1].ops / st[2].ops;
    let names = [
        (RT_FLOOR, String::new()),
        (
            "vfio-io client + server, region read 4 B",
            format!("{ratio:.2}x rust-vmm's ops/s"),
        ),
        (
            "rust-vmm vfio-user 0.1.7 client + server, region read 4 B",
            String::new(),
        ),
    ];
    for (s, (name, note)) in st.into_iter().zip(names) {
        t.add(format!("{name}, {label}"), s, Some(fl), note);
    }
}

/// Polling mode, client on CPU 0 and servers on CPU 1: a client that polls
/// the socket for up to [`SPIN`] before blocking against one that blocks at
/// once (its server still blocks in recvmsg and pays its wake-up), and both
/// sides polling (`ServerConfig::spin` too) against the busy-poll floor, a
/// raw ping-pong whose two sides spin on non-blocking recv() alike.
fn polling(t: &mut Table, n: usize) {
    let (f, fs) = (
        spawn_server("floor", Some(1)),
        spawn_server("floor-spin", Some(1)),
    );
    let mut floor = floor_client(&f.path);
    let mut floor_spin = floor_spin_client(&fs.path);
    let (s1, s2, s3) = (
        spawn_server("edu", Some(1)),
        spawn_server("edu", Some(1)),
        spawn_server("edu-spin", Some(1)),
    );
    let spin_config = ClientConfig {
        spin: Some(SPIN),
        ..ClientConfig::default()
    };
    let blocking = client(&s1.path);
    let spinning = Client::connect(&s2.path, spin_config.clone()).expect("connect");
    let both = Client::connect(&s3.path, spin_config).expect("connect");
    // The C client, polling, against the command-line server, polling.
    let cli = spawn_cli_edu_spin(SPIN.as_micros() as u32, 1);
    let cpath = CString::new(cli.path.to_str().expect("UTF-8 path")).expect("path");
    let opts = vfio_io_user_options {
        size: std::mem::size_of::<vfio_io_user_options>() as u32,
        timeout_ms: 0,
        spin_us: SPIN.as_micros() as u32,
    };
    let mut dev: *mut vfio_io_device = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path, options of `opts.size` bytes and a
    // writable out pointer.
    let rc = unsafe { vfio_io_user_connect_with(cpath.as_ptr(), &opts, &mut dev) };
    assert_eq!(rc, 0, "vfio_io_user_connect_with");
    // SAFETY: `dev` is a live handle; the ops table lives as long as it.
    let c_read = unsafe { &*vfio_io_device_ops(dev) }
        .region_read
        .expect("region_read op");
    let (mut a, mut b, mut c, mut d) = ([0u8; 4], [0u8; 4], [0u8; 4], [0u8; 4]);
    let mut blk = || blocking.region_read(0, regs::ID, &mut a).expect("read");
    let mut spn = || spinning.region_read(0, regs::ID, &mut b).expect("read");
    let mut bth = || both.region_read(0, regs::ID, &mut c).expect("read");
    let mut via_c = || {
        // SAFETY: live handle, and a 4-byte buffer for a 4-byte read.
        let r = unsafe { c_read(dev, 0, 0, 4, d.as_mut_ptr().cast()) };
        assert_eq!(r, 4);
    };
    let st = interleaved(
        n,
        &mut [
            &mut floor,
            &mut floor_spin,
            &mut blk,
            &mut spn,
            &mut bth,
            &mut via_c,
        ],
    );
    // SAFETY: closed once, after its last use.
    unsafe { vfio_io_device_close(dev) };
    for got in [a, b, c, d] {
        assert_eq!(u32::from_ne_bytes(got), vfio_io::models::edu::ID);
    }
    let (fl, busy) = (st[0].p50, st[1].p50);
    let saved = st[2].p50 - st[3].p50;
    let rows = [
        (RT_FLOOR_CROSS, fl, String::new()),
        (
            "floor: busy-poll round trip 32/36 B, recv(MSG_DONTWAIT) both sides, cross core",
            fl,
            "both sides spin up to 50 µs, then block".into(),
        ),
        (
            "vfio-io region read 4 B, blocking, cross core",
            fl,
            String::new(),
        ),
        (
            "vfio-io region read 4 B, spin 50 µs, cross core",
            fl,
            format!("{saved:.2} µs below blocking at p50"),
        ),
        (
            "vfio-io region read 4 B, client and server both polling, cross core",
            busy,
            "spin 50 µs each side; ratio to the busy-poll floor".into(),
        ),
        (
            "C ABI region_read 4 B, vfio_io_user_connect_with spin_us 50 against `vfio-io serve edu --spin-us 50`, cross core",
            busy,
            "both sides polling; ratio to the busy-poll floor".into(),
        ),
    ];
    for (s, (name, floor, note)) in st.into_iter().zip(rows) {
        t.add(name, s, Some(floor), note);
    }
}

/// Server DMA through mapped memory at sizes past edu's 4 KiB: each op is one
/// register write that makes the bench's DMA device `ctx.dma_read` N bytes of
/// the client's fd-mapped buffer, against a plain register write (the round
/// trip alone) and a memcpy of N bytes in this process, interleaved.
fn dma_bandwidth(t: &mut Table) {
    let srv = spawn_server("dmacopy", Some(0));
    let c = client(&srv.path);
    let buf = DmaBuffer::new(BIG_DMA).expect("DMA buffer");
    let pattern: Vec<u8> = (0..BIG_DMA).map(|i| (i * 7) as u8).collect();
    buf.write(0, &pattern).expect("fill");
    // SAFETY: the buffer outlives its mapping, which is removed below.
    unsafe { c.dma_map(&buf.dma_map(DMA_IOVA)).expect("dma_map") };
    // Both 64-byte aligned: this CPU's `rep movsb`, which memcpy uses at these
    // sizes, runs up to 15x slower for some relative misalignments.
    let (mut src, mut dst) = (vec![0u8; BIG_DMA + 64], vec![0u8; BIG_DMA + 64]);
    let (so, d_o) = (src.as_ptr().align_offset(64), dst.as_ptr().align_offset(64));
    let (src, dst) = (&mut src[so..so + BIG_DMA], &mut dst[d_o..d_o + BIG_DMA]);
    src.copy_from_slice(&pattern);
    for size in [64 << 10, 256 << 10, BIG_DMA] {
        let n = (40 << 20) / size * 10;
        let w = |v: u64| {
            c.region_write(0, 0, &v.to_ne_bytes(), false)
                .expect("write")
        };
        let mut plain = || w(0);
        let mut dma = || w(size as u64);
        let mut copy = || {
            dst[..size].copy_from_slice(std::hint::black_box(&src[..size]));
            std::hint::black_box(&mut *dst);
        };
        let st = interleaved(n, &mut [&mut plain, &mut dma, &mut copy]);
        // Bandwidth at p50 (bytes per µs are MB/s): ops/s also carries the
        // tail, which on this shared VM differs wildly between rows.
        let bw = |p50: f64| size as f64 / p50;
        let (dma_bw, copy_bw) = (bw(st[1].p50), bw(st[2].p50));
        // The copy alone: the DMA op's p50 less the plain write's.
        let only = bw((st[1].p50 - st[0].p50).max(1e-3));
        let kib = size >> 10;
        t.add(
            format!("DMA device: register write, no DMA (baseline, {kib} KiB set), same core"),
            st[0],
            None,
            String::new(),
        );
        t.add(
            format!("DMA device: server dma_read {kib} KiB, fd-mapped, same core"),
            st[1],
            None,
            format!(
                "{dma_bw:.0} MB/s = {:.0}% of memcpy incl. the round trip; copy alone (p50 less baseline) {only:.0} MB/s = {:.0}%",
                100.0 * dma_bw / copy_bw,
                100.0 * only / copy_bw
            ),
        );
        t.add(
            format!("memcpy {kib} KiB in process"),
            st[2],
            None,
            format!("{copy_bw:.0} MB/s at p50"),
        );
    }
    let mut back = [0u8; 8];
    c.region_read(0, 0, &mut back).expect("read");
    assert_eq!(&back[..], &pattern[..8], "the DMA did not copy the buffer");
    c.dma_unmap(DMA_IOVA, buf.len() as u64).expect("dma_unmap");
}

/// One migration's times: the downtime (STOP_COPY asked of the source ->
/// the destination RUNNING) and the stream's transfer inside it.
struct Migrated {
    downtime: Duration,
    transfer: Duration,
}

/// Migrates the device behind `src` to `dst` through the library's
/// `DeviceMigration`, as a VMM would: the destination enters RESUMING
/// first, outside the downtime; the source runs again afterwards, also
/// outside, so the next run can migrate back.
fn migrate_once(src: &Client, dst: &Client, buf: &mut [u8], stream_len: usize) -> Migrated {
    use vfio_io::migration::MigrationState::{Resuming, Running, StopCopy};
    let (s, d) = (
        src.migration().expect("source migrates"),
        dst.migration().expect("destination migrates"),
    );
    d.set_state(Resuming).expect("destination to RESUMING");
    let t0 = Instant::now();
    s.set_state(StopCopy).expect("source to STOP_COPY");
    let t1 = Instant::now();
    let mut moved = 0;
    loop {
        let n = s.read(buf).expect("MIG_DATA_READ");
        if n == 0 {
            break;
        }
        assert_eq!(d.write(&buf[..n]).expect("MIG_DATA_WRITE"), n);
        moved += n;
    }
    let t2 = Instant::now();
    d.set_state(Running).expect("destination to RUNNING");
    let t3 = Instant::now();
    s.set_state(Running).expect("source back to RUNNING");
    assert_eq!(moved, stream_len, "the whole stream moved");
    Migrated {
        downtime: t3 - t0,
        transfer: t2 - t1,
    }
}

/// Migrates a device served by `role` back and forth between two server
/// processes `runs` times, and adds its downtime row, with the transfer
/// rate at the median in the note.
fn migration_rows(t: &mut Table, role: &str, what: &str, stream_len: usize, runs: usize) {
    let servers = [spawn_server(role, None), spawn_server(role, None)];
    let clients = [client(&servers[0].path), client(&servers[1].path)];
    let mut buf = vec![0u8; 1 << 20];
    let (mut down, mut xfer) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for run in 0..runs {
        let (src, dst) = (&clients[run % 2], &clients[1 - run % 2]);
        // A mark in the state that only this run wrote, checked on arrival.
        let mark = (run as u32).wrapping_mul(0x9e37_79b9) | 1;
        src.region_write(0, 4, &mark.to_le_bytes(), false)
            .expect("mark");
        let seen = |c: &Client| {
            let mut b = [0u8; 4];
            c.region_read(0, 4, &mut b).expect("read the mark");
            b
        };
        let before = seen(src);
        let m = migrate_once(src, dst, &mut buf, stream_len);
        assert_eq!(seen(dst), before, "the state arrived");
        down.push(m.downtime.as_nanos() as u64);
        xfer.push(m.transfer.as_nanos() as u64);
    }
    let total = started.elapsed();
    xfer.sort_unstable();
    let mb_s = stream_len as f64 / (xfer[xfer.len() / 2] as f64 / 1000.0);
    t.add(
        format!("migration {what}: downtime, STOP_COPY on source -> RUNNING on destination"),
        stats(down, runs, total),
        None,
        format!(
            "{stream_len} B of state; transfer {mb_s:.0} MB/s at the median of {runs} runs \
             (MIG_DATA_READ + MIG_DATA_WRITE, 1 MiB chunks); downtime includes RUNNING->STOP->STOP_COPY \
             with the save, the stream, RESUMING->STOP with the load, STOP->RUNNING; servers unpinned"
        ),
    );
}

/// Live migration between two server processes: edu, and the bench-only
/// device with [`BIG_STATE`] bytes of state.
fn migration(t: &mut Table) {
    migration_rows(t, "edu", "edu", vfio_io::models::edu::STATE_LEN, 400);
    migration_rows(t, "bigstate", "64 MiB device", BIG_STATE, 9);
}

/// A doorbell write (an ioeventfd the server offered, signalled with no
/// message) against the same 4-byte write sent as a REGION_WRITE round
/// trip, interleaved, on the doorbell sample device. Its server runs on a
/// thread of this process, pinned to this thread's CPU. Each doorbell block
/// ends with a read of the counter, which the server answers only after
/// draining the eventfd: ops/s is what the device took, and the count is
/// checked.
fn doorbell(t: &mut Table, n: usize) {
    use vfio_io::models::doorbell::{new_device, COUNTER, RING};
    let srv = served::serve(
        new_device().expect("doorbell device"),
        ServerConfig::default(),
    );
    let c = client(&srv.path);
    assert!(
        c.capabilities()
            .contains(vfio_io::caps::Capabilities::IOEVENTFD),
        "the doorbell device offers no ioeventfd"
    );
    let expected = std::cell::Cell::new(0u64);
    // Value 1 matches the doorbell's datamatch: the eventfd.
    let mut ring = || {
        c.region_write(0, RING, &1u32.to_le_bytes(), false)
            .expect("doorbell write");
        expected.set(expected.get() + 1);
    };
    // Value 2 does not: the same register, by message.
    let mut by_message = || {
        c.region_write(0, RING, &2u32.to_le_bytes(), false)
            .expect("write");
        expected.set(expected.get() + 2);
    };
    let mut check = || {
        let mut b = [0u8; 8];
        c.region_read(0, COUNTER, &mut b).expect("read");
        assert_eq!(
            u64::from_le_bytes(b),
            expected.get(),
            "doorbell writes lost"
        );
    };
    let st = interleaved_flushed(n, &mut [&mut ring, &mut by_message], &mut [&mut check]);
    let label = "same core, server on a thread";
    t.add(
        format!("vfio-io region write 4 B by message (REGION_WRITE), {label}"),
        st[1],
        None,
        "request 36 B, reply 32 B".into(),
    );
    t.add(
        format!("vfio-io doorbell write 4 B (ioeventfd), {label}"),
        st[0],
        None,
        format!(
            "by message: {:.2} µs p50; ops/s incl. one counter read per {BLOCK}",
            st[1].p50
        ),
    );
    drop(c);
    srv.finish();
}

/// The role prefix of a child serving several edu devices: `edu-many-N`.
const MANY_EDU: &str = "edu-many-";

/// Socket of device `i` of an `edu-many-N` child whose socket path is `path`.
fn many_edu_path(path: &std::path::Path, i: usize) -> PathBuf {
    path.with_extension(i.to_string())
}

/// Serves `n` edu devices from this process, each by a `Server` on a thread
/// of its own, on [`many_edu_path`]'s sockets.
fn serve_many_edu(path: &std::path::Path, n: usize) {
    let servers: Vec<_> = (0..n)
        .map(|i| {
            Server::bind(many_edu_path(path, i), Edu::new(), ServerConfig::default()).expect("bind")
        })
        .collect();
    ready();
    let threads: Vec<_> = servers
        .into_iter()
        .map(|mut s| std::thread::spawn(move || s.serve().expect("serve")))
        .collect();
    for t in threads {
        t.join().expect("server thread");
    }
}

/// 1, 4, 16 and 64 edu devices served by one child process (a thread per
/// `Server`), each with a `Client` and a thread of its own here doing 4-byte
/// reads; the rows take turns in slices of [`SCALE_SLICE`]. Nothing is pinned.
fn many_devices(t: &mut Table) {
    pin(None);
    const DEVICES: [usize; 4] = [1, 4, 16, 64];
    let children: Vec<Served> = DEVICES
        .iter()
        .map(|n| spawn_server(&format!("{MANY_EDU}{n}"), None))
        .collect();
    let clients: Vec<Vec<Client>> = DEVICES
        .iter()
        .zip(&children)
        .map(|(&n, child)| {
            (0..n)
                .map(|i| client(&many_edu_path(&child.path, i)))
                .collect()
        })
        .collect();
    let mut b = [0u8; 4];
    for c in clients.iter().flatten() {
        for _ in 0..WARMUP / 10 {
            c.region_read(0, regs::ID, &mut b).expect("read");
        }
    }
    let mut ops: Vec<Vec<Box<dyn FnMut() + Send + '_>>> = clients
        .iter()
        .map(|row| row.iter().map(checked_id_read).collect())
        .collect();
    // Per row: per-thread samples, calls, wall time.
    let mut acc: Vec<(Vec<Vec<u64>>, usize, Duration)> = DEVICES
        .iter()
        .map(|&n| {
            let per_thread = SCALE_ROUNDS * 20_000 / n;
            let ns = (0..n).map(|_| Vec::with_capacity(per_thread)).collect();
            (ns, 0, Duration::ZERO)
        })
        .collect();
    for _ in 0..SCALE_ROUNDS {
        for ((ns, calls, time), row) in acc.iter_mut().zip(ops.iter_mut()) {
            let (c, d) = scale_slice(row, ns);
            *calls += c;
            *time += d;
        }
    }
    let rows: Vec<Stats> = acc
        .into_iter()
        .map(|(ns, calls, time)| stats(ns.concat(), calls, time))
        .collect();
    let one = rows[0];
    for (s, n) in rows.into_iter().zip(DEVICES) {
        t.add(
            format!("many devices: {n} edu device(s) in one server process, a Client and thread each, 4 B reads, unpinned"),
            s,
            Some(one.p50),
            format!("ops/s of all devices: {:.2}x one device's", s.ops / one.ops),
        );
    }
}

/// An eventfd attached as edu's MSI trigger, non-blocking so a waiter can
/// spin on it.
fn msi_eventfd(c: &Client) -> nix::sys::eventfd::EventFd {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use vfio_io::device::{IrqAction, IrqData, IrqSet};
    let e = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).expect("eventfd");
    c.set_irqs(&IrqSet {
        index: pci_irq::MSI,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::Eventfds(&[e.as_raw_fd()]),
    })
    .expect("attach the MSI eventfd");
    e
}

/// One interrupt, timed from the client's posted write of 1 to BAR0 `at`
/// (edu's IRQ_RAISE, say) to the read of its MSI eventfd: blocking in poll() for it, or spinning
/// on non-blocking reads. The count read must be exactly this raise.
fn raise_and_wait(c: &Client, at: u64, e: &nix::sys::eventfd::EventFd, spin: bool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    c.region_write(0, at, &1u32.to_ne_bytes(), true)
        .expect("posted IRQ_RAISE");
    loop {
        if !spin {
            let mut p = [PollFd::new(e.as_fd(), PollFlags::POLLIN)];
            poll(&mut p, PollTimeout::NONE).expect("poll eventfd");
        }
        match e.read() {
            Ok(n) => {
                assert_eq!(n, 1, "one MSI per raise");
                return;
            }
            Err(nix::errno::Errno::EAGAIN) => std::hint::spin_loop(),
            Err(err) => panic!("eventfd read: {err}"),
        }
    }
}

/// Interrupt latency: edu raises MSI on a posted IRQ_RAISE write and the
/// client waits for its eventfd, blocking or spinning; a synchronous
/// register write (one round trip) runs interleaved for reference. Cross
/// core: server on CPU 1, this thread on CPU 0; the blocking waiter also
/// same core.
fn irq_latency(t: &mut Table, n: usize) {
    pin(Some(0));
    let (cross, same) = (spawn_server("edu", Some(1)), spawn_server("edu", Some(0)));
    let (cc, cs) = (client(&cross.path), client(&same.path));
    let (ec, es) = (msi_eventfd(&cc), msi_eventfd(&cs));
    let v = std::cell::Cell::new(0u32);
    let round_trip = |c: &Client| {
        v.set(v.get().wrapping_add(1));
        c.region_write(0, regs::LIVENESS, &v.get().to_ne_bytes(), false)
            .expect("write")
    };
    let mut rt_cross = || round_trip(&cc);
    let mut blocking = || raise_and_wait(&cc, regs::IRQ_RAISE, &ec, false);
    let mut polling = || raise_and_wait(&cc, regs::IRQ_RAISE, &ec, true);
    let mut rt_same = || round_trip(&cs);
    let mut blocking_same = || raise_and_wait(&cs, regs::IRQ_RAISE, &es, false);
    let st = interleaved(
        n,
        &mut [
            &mut rt_cross,
            &mut blocking,
            &mut polling,
            &mut rt_same,
            &mut blocking_same,
        ],
    );
    let raised = "irq: posted IRQ_RAISE -> MSI eventfd read";
    let rows = [
        (
            0,
            "irq: region write 4 B, not posted (round trip, reference), cross core".to_owned(),
        ),
        (0, format!("{raised}, waiter blocks in poll(), cross core")),
        (0, format!("{raised}, waiter spins on read(), cross core")),
        (
            3,
            "irq: region write 4 B, not posted (round trip, reference), same core".to_owned(),
        ),
        (3, format!("{raised}, waiter blocks in poll(), same core")),
    ];
    for (i, (s, (rt, name))) in st.iter().zip(rows).enumerate() {
        let note = match i == rt {
            true => String::new(),
            false => format!(
                "p50 {:.2}x the round trip's on the same cores",
                s.p50 / st[rt].p50
            ),
        };
        t.add(name, *s, None, note);
    }
}

// ---------------------------------------------------------------- c-server

/// What BAR0 offset 0 of the `c-server` section's devices reads.
const C_ID: u32 = 0xc5e7_0001;
/// A write here makes the write callback raise MSI vector 0 itself.
const C_RAISE_IN_CALLBACK: u64 = 0x4;
/// A write here makes the write callback wake the worker thread, which
/// raises MSI vector 0 with `vfio_io_server_irq_trigger` (not a callback).
const C_RAISE_ON_WORKER: u64 = 0x8;

/// The state the bench's C callbacks share with the child's worker thread.
struct CDevice {
    srv: std::sync::atomic::AtomicPtr<vfio_io::ffi::vfio_io_server>,
    /// Written by the write callback, read (blocking) by the worker.
    worker: nix::sys::eventfd::EventFd,
}

/// The value a BAR0 read at `offset` returns, for both the C and the Rust device.
fn c_register(offset: u64, data: &mut [u8]) {
    let v = if offset == 0 { C_ID } else { 0 }.to_ne_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = v[i % 4];
    }
}

/// The bench's `region_read` callback (extern "C", called through the C ABI).
unsafe extern "C" fn c_region_read(
    _opaque: *mut std::ffi::c_void,
    _index: u32,
    offset: u64,
    buf: *mut std::ffi::c_void,
    count: u32,
) -> libc::ssize_t {
    // SAFETY: the library hands a buffer of `count` writable bytes, valid
    // for the call.
    let data = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), count as usize) };
    c_register(offset, data);
    count as libc::ssize_t
}

/// The bench's `region_write` callback: the two interrupt registers.
unsafe extern "C" fn c_region_write(
    opaque: *mut std::ffi::c_void,
    _index: u32,
    offset: u64,
    _buf: *const std::ffi::c_void,
    count: u32,
) -> libc::ssize_t {
    // SAFETY: the opaque is the child's leaked `CDevice`, alive for the process.
    let dev = unsafe { &*opaque.cast::<CDevice>() };
    match offset {
        C_RAISE_IN_CALLBACK => {
            // SAFETY: the server is live while its callback runs.
            let r = unsafe {
                vfio_io::ffi::vfio_io_server_irq_trigger(
                    dev.srv.load(Ordering::Acquire),
                    pci_irq::MSI,
                    0,
                )
            };
            assert_eq!(r, 1, "irq_trigger in a callback");
        }
        C_RAISE_ON_WORKER => {
            dev.worker.write(1).expect("wake the worker");
        }
        _ => {}
    }
    count as libc::ssize_t
}

/// Serves the bench's C-ABI device (BAR0 of 4 KiB through the callbacks
/// above, one MSI vector): with `vfio_io_server_run`, or with
/// `vfio_io_server_dispatch` from a poll() loop on its poll fd. A worker
/// thread raises MSI when the write callback wakes it.
fn c_serve(path: &std::path::Path, by_dispatch: bool) {
    use std::os::unix::ffi::OsStrExt;
    use vfio_io::ffi::{
        vfio_io_server_create, vfio_io_server_device, vfio_io_server_dispatch,
        vfio_io_server_irq_trigger, vfio_io_server_ops, vfio_io_server_poll_fd,
        vfio_io_server_region, vfio_io_server_run,
    };
    let dev: &'static CDevice = Box::leak(Box::new(CDevice {
        srv: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        worker: nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
            .expect("eventfd"),
    }));
    let regions = [vfio_io_server_region {
        index: pci_region::BAR0,
        flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
        size: 0x1000,
        fd: -1,
        fd_offset: 0,
    }];
    let desc = vfio_io_server_device {
        size: std::mem::size_of::<vfio_io_server_device>() as u32,
        vendor_id: 0x1234,
        device_id: 0xbe4c,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        class_code: 0xff_0000,
        regions: regions.as_ptr(),
        num_regions: regions.len() as u32,
        irq_count: [0, 1, 0, 0, 0],
        ..vfio_io_server_device::default()
    };
    let ops = vfio_io_server_ops {
        size: std::mem::size_of::<vfio_io_server_ops>() as u32,
        region_read: Some(c_region_read),
        region_write: Some(c_region_write),
        ..vfio_io_server_ops::default()
    };
    let cpath = CString::new(path.as_os_str().as_bytes()).expect("socket path");
    let mut srv = std::ptr::null_mut();
    let opaque = (dev as *const CDevice).cast_mut().cast();
    // SAFETY: every pointer is valid for the call; `dev` lives for the process.
    let r = unsafe { vfio_io_server_create(cpath.as_ptr(), &desc, &ops, opaque, &mut srv) };
    assert_eq!(r, 0, "vfio_io_server_create");
    dev.srv.store(srv, Ordering::Release);
    std::thread::spawn(move || loop {
        dev.worker.read().expect("worker eventfd");
        // SAFETY: the server lives for the process (never destroyed).
        let r =
            unsafe { vfio_io_server_irq_trigger(dev.srv.load(Ordering::Acquire), pci_irq::MSI, 0) };
        assert_eq!(r, 1, "irq_trigger on the worker");
    });
    ready();
    if !by_dispatch {
        // SAFETY: `srv` is live; nothing else runs or dispatches it.
        let r = unsafe { vfio_io_server_run(srv) };
        panic!("vfio_io_server_run returned {r}");
    }
    // SAFETY: `srv` is live.
    let fd = unsafe { vfio_io_server_poll_fd(srv) };
    assert!(fd >= 0, "vfio_io_server_poll_fd");
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
            continue;
        }
        // SAFETY: `srv` is live; only this thread dispatches it.
        let r = unsafe { vfio_io_server_dispatch(srv) };
        assert_eq!(r, 0, "vfio_io_server_dispatch");
    }
}

/// The Rust equivalent of the C device's BAR0 register, as a `DeviceModel`.
struct RegisterDevice;

impl DeviceModel for RegisterDevice {
    fn device_info(&self) -> DeviceInfo {
        pci_info()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        pci_regions(index, 0x1000)
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        no_irq(index)
    }

    fn region_read(
        &mut self,
        _: &mut dyn DeviceContext,
        _: u32,
        offset: u64,
        data: &mut [u8],
    ) -> vfio_io::Result<()> {
        c_register(offset, data);
        Ok(())
    }

    fn region_write(
        &mut self,
        _: &mut dyn DeviceContext,
        _: u32,
        _: u64,
        _: &[u8],
    ) -> vfio_io::Result<()> {
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn DeviceContext) -> vfio_io::Result<()> {
        Ok(())
    }
}

/// A 4-byte BAR0 read of [`C_ID`] through `c`.
fn c_id_read(c: &Client) -> impl FnMut() + '_ {
    let mut b = [0u8; 4];
    move || {
        c.region_read(0, 0, &mut b).expect("read");
        assert_eq!(u32::from_ne_bytes(b), C_ID, "the register's value");
    }
}

/// A device served through the C ABI (extern "C" callbacks written in this
/// bench) by `vfio_io_server_run` and by `vfio_io_server_dispatch` from a
/// poll() loop, against the same register in a Rust `DeviceModel` served by
/// `Server::serve` and the round-trip floor, 4-byte reads interleaved, same
/// core. Then MSI latency, posted write -> eventfd read: raised by
/// `vfio_io_server_irq_trigger` inside the write callback, and by a worker
/// thread the callback wakes (so that row adds one thread wake-up to the
/// queued trigger).
fn c_server(t: &mut Table, n: usize) {
    pin(Some(0));
    let (f, run, loop_, rust, rust_handle) = (
        spawn_server("floor", Some(0)),
        spawn_server("c-server", Some(0)),
        spawn_server("c-server-loop", Some(0)),
        spawn_server("register", Some(0)),
        spawn_server("register-handle", Some(0)),
    );
    let mut floor = floor_client(&f.path);
    let (cr, cl, cs, ch) = (
        client(&run.path),
        client(&loop_.path),
        client(&rust.path),
        client(&rust_handle.path),
    );
    let mut b = [0u8; 4];
    for c in [&cr, &cl, &cs, &ch] {
        c.region_read(0, 0, &mut b).expect("read");
        assert_eq!(u32::from_ne_bytes(b), C_ID, "the register's value");
    }
    let (mut read_run, mut read_loop, mut read_rust, mut read_handle) = (
        c_id_read(&cr),
        c_id_read(&cl),
        c_id_read(&cs),
        c_id_read(&ch),
    );
    let st = interleaved(
        n,
        &mut [
            &mut floor,
            &mut read_rust,
            &mut read_handle,
            &mut read_run,
            &mut read_loop,
        ],
    );
    let label = "same core";
    let fl = t.floor(format!("{RT_FLOOR}, {label}"), st[0], String::new());
    let rust_p50 = st[1].p50;
    let rows = [
        "c-server: region read 4 B, Rust DeviceModel, Server::serve",
        "c-server: region read 4 B, Rust DeviceModel with a ServerHandle (mailbox), Server::serve",
        "c-server: region read 4 B, C callbacks, vfio_io_server_run",
        "c-server: region read 4 B, C callbacks, vfio_io_server_dispatch from poll()",
    ];
    for (i, (s, name)) in st[1..].iter().zip(rows).enumerate() {
        let note = match i {
            0 => String::new(),
            _ => format!("{:.2}x the Rust model's p50", s.p50 / rust_p50),
        };
        t.add(format!("{name}, {label}"), *s, Some(fl), note);
    }

    let (er, el) = (msi_eventfd(&cr), msi_eventfd(&cl));
    let mut in_callback = || raise_and_wait(&cr, C_RAISE_IN_CALLBACK, &er, false);
    let mut on_worker = || raise_and_wait(&cr, C_RAISE_ON_WORKER, &er, false);
    let mut on_worker_loop = || raise_and_wait(&cl, C_RAISE_ON_WORKER, &el, false);
    let st = interleaved(
        n / 5,
        &mut [&mut in_callback, &mut on_worker, &mut on_worker_loop],
    );
    let raised = "c-server: posted write -> MSI eventfd read, irq_trigger";
    let rows = [
        "in the write callback, vfio_io_server_run",
        "on a worker thread the callback wakes, vfio_io_server_run",
        "on a worker thread the callback wakes, vfio_io_server_dispatch from poll()",
    ];
    for (i, (s, name)) in st.iter().zip(rows).enumerate() {
        let note = match i {
            0 => "waiter blocks in poll()".to_owned(),
            _ => format!("p50 {:.2}x the callback's", s.p50 / st[0].p50),
        };
        t.add(format!("{raised} {name}, {label}"), *s, None, note);
    }
}

/// Section names, in run order: `cargo bench --bench roundtrip -- NAME...`
/// runs only those.
const SECTIONS: [&str; 14] = [
    "roundtrip",
    "posted",
    "scaling",
    "dma",
    "c-abi",
    "mmap",
    "rust-vmm",
    "polling",
    "dma-bandwidth",
    "migration",
    "many-devices",
    "irq-latency",
    "doorbell",
    "c-server",
];

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child_main(&role);
        return;
    }
    // cargo passes `--bench` to a bench without the test harness; other
    // words are section names.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(bad) = only.iter().find(|a| !SECTIONS.contains(&a.as_str())) {
        eprintln!("unknown section {bad:?}; sections: {}", SECTIONS.join(" "));
        std::process::exit(2);
    }
    let run = |name: &str| {
        let yes = only.is_empty() || only.iter().any(|a| a == name);
        if yes {
            eprintln!("{name}");
        }
        yes
    };
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    NCPU.store(ncpu, Ordering::Relaxed);
    let cross = ncpu > 1;
    if !cross {
        eprintln!("SKIPPED every cross-core row and polling: only one CPU");
    }
    let started = Instant::now();
    let mut t = Table(Vec::new());
    pin(Some(0));

    if run("roundtrip") {
        round_trips(&mut t, "same core", 0, N_SAME);
        if cross {
            round_trips(&mut t, "cross core", 1, N_CROSS);
        }
    }
    if run("posted") {
        posted(&mut t, "same core", 0, N_SAME);
        if cross {
            posted(&mut t, "cross core", 1, N_CROSS);
        }
    }
    if run("scaling") {
        scaling(&mut t, None);
        if cross {
            scaling(&mut t, Some((0, 1)));
        }
    }
    if run("dma") {
        dma(&mut t, N_SAME / 5);
    }
    if run("c-abi") {
        c_abi(&mut t, N_SAME);
    }
    if run("mmap") {
        mmap_path(&mut t, N_SAME);
    }
    if run("rust-vmm") {
        rust_vmm(&mut t, "same core", 0, N_SAME);
        if cross {
            rust_vmm(&mut t, "cross core", 1, N_CROSS);
        }
    }
    if cross && run("polling") {
        polling(&mut t, N_CROSS);
    }
    if run("dma-bandwidth") {
        dma_bandwidth(&mut t);
    }
    if run("migration") {
        migration(&mut t);
    }
    if run("many-devices") {
        many_devices(&mut t);
    }
    if run("irq-latency") {
        if cross {
            irq_latency(&mut t, N_CROSS);
        } else {
            eprintln!("SKIPPED irq-latency: its rows need two CPUs");
        }
    }
    if run("doorbell") {
        doorbell(&mut t, N_SAME);
    }
    if run("c-server") {
        c_server(&mut t, N_SAME);
    }

    println!();
    println!(
        "{ncpu} CPUs; each row's ratio is to the floor of its own section, measured interleaved with it."
    );
    t.print();
    println!(
        "\ntotal bench time {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
