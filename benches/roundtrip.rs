//! Round-trip latency of vfio-io's vfio-user client and server, side by side
//! with the floor: a raw AF_UNIX ping-pong of messages the size of a
//! REGION_READ (16+16 bytes request, 16+16+4 bytes reply), one read() each.
//!
//! Run with `cargo bench --bench roundtrip`. Servers run in child processes
//! (this binary re-executed with `VFIO_IO_BENCH_ROLE` set), because that is
//! how vfio-user is deployed: client and device model in different processes,
//! each woken by the kernel. Re-executing rather than forking keeps the child
//! free of the parent's threads and allocator state.
//!
//! "same core" pins the client thread and the server process to CPU 0;
//! "cross core" pins the server to CPU 1, so every message is a cross-CPU wake-up.
//!
//! Besides vfio-io against the floor, it measures: a read through an mmapped
//! region area against the same read by message; rust-vmm's `vfio_user`
//! client and server on the same 4-byte read; polling mode
//! (`ClientConfig::spin`) across cores; and server DMA of 64 KiB - 1 MiB
//! through fd-mapped memory against memcpy, with a bench-only DMA device.

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
    pci_irq, pci_region, DeviceInfo, IrqInfo, RegionCap, RegionInfo, SparseArea,
    VFIO_DEVICE_FLAGS_PCI, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_io::edu::{regs, Edu, DMA_BUF_ADDR, DMA_BUF_SIZE};
use vfio_io::ffi::{
    vfio_io_device, vfio_io_device_close, vfio_io_device_ops, vfio_io_user_connect,
};
use vfio_io::memory::{DmaBuffer, Mapping};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::{DeviceContext, DeviceModel, Server, ServerConfig};

const ROLE: &str = "VFIO_IO_BENCH_ROLE";
const SOCK: &str = "VFIO_IO_BENCH_SOCK";
const CPU: &str = "VFIO_IO_BENCH_CPU";

/// Iterations per same-core row (~10 µs each) and per cross-core row (~40 µs each).
const N_SAME: usize = 50_000;
const N_CROSS: usize = 20_000;
const WARMUP: usize = 2_000;
/// Posted writes sent between two reads (the read flushes them through the server).
const POSTED_BATCH: usize = 256;
/// How long each scaling row runs.
const SCALE_TIME: Duration = Duration::from_millis(800);
const DMA_IOVA: u64 = 0x20_0000;
/// The bench-only DMA device's largest transfer.
const BIG_DMA: usize = 1 << 20;
/// BAR2 of the shared-memory device: its mmappable sparse area.
const SHM_AREA: SparseArea = SparseArea {
    offset: 0x1000,
    size: 0x1000,
};
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
        "floor" | "floor-msg" => {
            let l = UnixListener::bind(&path).expect("bind");
            ready();
            for s in l.incoming() {
                let s = s.expect("accept");
                if role == "floor" {
                    floor_serve(s);
                } else {
                    floor_serve_msg(s);
                }
            }
        }
        "edu" => {
            let mut server =
                Server::bind(&path, Edu::new(), ServerConfig::default()).expect("bind");
            ready();
            server.serve().expect("serve");
        }
        "shm" => {
            let mut server =
                Server::bind(&path, ShmDevice::new(), ServerConfig::default()).expect("bind");
            ready();
            server.serve().expect("serve");
        }
        "dmacopy" => {
            let mut server =
                Server::bind(&path, DmaCopyDevice::new(), ServerConfig::default()).expect("bind");
            ready();
            server.serve().expect("serve");
        }
        "rust-vmm" => rust_vmm_serve(&path),
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

/// BAR0: 16 trapped bytes. BAR2: 16 KiB of shared memory (a memfd) whose
/// [`SHM_AREA`] the client may mmap.
struct ShmDevice {
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
    map: Mapping,
    regs: [u8; 16],
}

impl ShmDevice {
    fn new() -> Self {
        let fd =
            nix::sys::memfd::memfd_create(c"bench-bar2", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .expect("memfd");
        nix::unistd::ftruncate(&fd, 0x4000).expect("ftruncate");
        let map = Mapping::new(std::os::fd::AsFd::as_fd(&fd), 0, 0x4000, true).expect("mmap");
        map.write(SHM_AREA.offset as usize, &vfio_io::edu::ID.to_ne_bytes())
            .expect("write");
        let mut regs = [0u8; 16];
        regs[..4].copy_from_slice(&vfio_io::edu::ID.to_ne_bytes());
        ShmDevice {
            fd: std::sync::Arc::new(fd),
            map,
            regs,
        }
    }
}

impl DeviceModel for ShmDevice {
    fn device_info(&self) -> DeviceInfo {
        pci_info()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        if index != 2 {
            return pci_regions(index, 16);
        }
        Some(RegionInfo {
            index,
            flags: VFIO_REGION_INFO_FLAG_READ
                | VFIO_REGION_INFO_FLAG_WRITE
                | VFIO_REGION_INFO_FLAG_MMAP,
            size: 0x4000,
            offset: 0,
            caps: vec![RegionCap::SparseMmap(vec![SHM_AREA])],
            fd: Some(self.fd.clone()),
        })
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        no_irq(index)
    }

    fn region_read(
        &mut self,
        _: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> vfio_io::Result<()> {
        let o = offset as usize;
        match index {
            0 => data.copy_from_slice(&self.regs[o..o + data.len()]),
            _ => self.map.read(o, data)?,
        }
        Ok(())
    }

    fn region_write(
        &mut self,
        _: &mut dyn DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> vfio_io::Result<()> {
        let o = offset as usize;
        match index {
            0 => self.regs[o..o + data.len()].copy_from_slice(data),
            _ => self.map.write(o, data)?,
        }
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn DeviceContext) -> vfio_io::Result<()> {
        Ok(())
    }
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
    fn device_info(&self) -> DeviceInfo {
        pci_info()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        pci_regions(index, 8)
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        no_irq(index)
    }

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

/// rust-vmm's vfio-user server with a device whose BAR0 answers 4-byte
/// reads with edu's ID; it serves one client per `run`, so it loops.
fn rust_vmm_serve(path: &std::path::Path) {
    use vfio_bindings::bindings::vfio::vfio_region_info;

    struct Backend;
    impl vfio_user::ServerBackend for Backend {
        fn region_read(&mut self, _: u32, _: u64, data: &mut [u8]) -> std::io::Result<()> {
            let id = vfio_io::edu::ID.to_ne_bytes();
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
        if send_msg(&s, &hdr, &body).is_err() {
            return;
        }
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

fn send_msg(s: &UnixStream, hdr: &[u8], body: &[u8]) -> nix::Result<usize> {
    let iov = [IoSlice::new(hdr), IoSlice::new(body)];
    sendmsg::<()>(s.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None)
}

/// A server child process, killed (by its own pid) on drop.
struct Served {
    child: Child,
    path: PathBuf,
    dir: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn spawn_server(role: &str, cpu: Option<usize>) -> Served {
    let dir = std::env::temp_dir().join(format!(
        "vfio-io-bench-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
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
    Served { child, path, dir }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
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

fn measure(n: usize, mut op: impl FnMut()) -> Stats {
    for _ in 0..WARMUP {
        op();
    }
    let mut ns = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        op();
        ns.push(t.elapsed().as_nanos() as u64);
    }
    stats(ns, n, t0.elapsed())
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

/// Runs `ops` in turn, `BLOCK` calls at a time, until each has run `n` times,
/// and returns their stats in order. Alternating in blocks means a burst of
/// load from elsewhere on this shared machine hits every case alike, so the
/// ratios between them hold even when absolute figures wander.
fn interleaved(n: usize, ops: &mut [&mut dyn FnMut()]) -> Vec<Stats> {
    const BLOCK: usize = 500;
    for op in ops.iter_mut() {
        for _ in 0..WARMUP {
            op();
        }
    }
    let mut ns: Vec<Vec<u64>> = ops.iter().map(|_| Vec::with_capacity(n)).collect();
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
            time[i] += t0.elapsed();
        }
    }
    ns.into_iter()
        .zip(time)
        .map(|(ns, time)| stats(ns, rounds * BLOCK, time))
        .collect()
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

/// A client of the sendmsg/recvmsg floor.
fn floor_msg_client(path: &std::path::Path) -> impl FnMut() {
    let s = UnixStream::connect(path).expect("connect floor");
    let (hdr, body) = ([0xa5u8; 16], [0xa5u8; 16]);
    let mut reply = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 32]);
    move || {
        send_msg(&s, &hdr, &body).expect("floor sendmsg");
        let got = recv_msg(&s, &mut reply, &mut cmsg);
        assert_eq!(got, 36, "short recvmsg");
    }
}

fn client(path: &std::path::Path) -> Client {
    Client::connect(path, ClientConfig::default()).expect("connect vfio-user")
}

/// The floors and vfio-io's synchronous accesses, interleaved, with every
/// server process pinned to `server_cpu` and this thread to CPU 0. Returns
/// the raw floor's p50.
fn vfio_user(t: &mut Table, label: &str, server_cpu: usize, n: usize) -> f64 {
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
        ("floor: raw UNIX ping-pong 32/36 B, read()/write()", ""),
        (
            "floor: same, sendmsg/recvmsg with cmsg room",
            "the syscalls vfio-io uses",
        ),
        ("vfio-io region read 4 B (BAR0 0x0)", ""),
        ("vfio-io region read 8 B (BAR0 0x80)", ""),
        ("vfio-io region write 4 B (BAR0 0x4)", ""),
    ];
    for (s, (name, note)) in st.into_iter().zip(names) {
        t.add(format!("{name}, {label}"), s, Some(f), note.into());
    }
    assert_eq!(u32::from_ne_bytes(b4), vfio_io::edu::ID);
    let mut b4 = [0u8; 4];

    // Posted writes: each sample is one posted write; the read after every
    // batch waits until the server has processed all of them, so ops/s is
    // sustained throughput, not just the rate of filling the socket buffer.
    let batches = n / POSTED_BATCH;
    for _ in 0..WARMUP / POSTED_BATCH + 1 {
        for _ in 0..POSTED_BATCH {
            c.region_write(0, regs::LIVENESS, &1u32.to_ne_bytes(), true)
                .expect("posted write");
        }
        c.region_read(0, regs::LIVENESS, &mut b4).expect("read");
    }
    let mut ns = Vec::with_capacity(batches * POSTED_BATCH);
    let t0 = Instant::now();
    let mut last = 0u32;
    for b in 0..batches {
        for i in 0..POSTED_BATCH {
            last = (b * POSTED_BATCH + i) as u32;
            let t = Instant::now();
            c.region_write(0, regs::LIVENESS, &last.to_ne_bytes(), true)
                .expect("posted write");
            ns.push(t.elapsed().as_nanos() as u64);
        }
        c.region_read(0, regs::LIVENESS, &mut b4).expect("read");
    }
    let s = stats(ns, batches * POSTED_BATCH, t0.elapsed());
    assert_eq!(
        u32::from_ne_bytes(b4),
        !last,
        "posted writes lost or reordered"
    );
    t.add(
        format!("vfio-io posted write 4 B (BAR0 0x4), {label}"),
        s,
        Some(f),
        format!("ops/s incl. one read per {POSTED_BATCH} writes"),
    );
    f
}

fn scaling(t: &mut Table, floor: f64) {
    pin(None);
    let srv = spawn_server("edu", None);
    let c = client(&srv.path);
    for threads in [1usize, 2, 4, 8] {
        let stop = AtomicBool::new(false);
        let results: Vec<(Vec<u64>, usize)> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let (c, stop) = (&c, &stop);
                    sc.spawn(move || {
                        let mut b = [0u8; 4];
                        let mut ns = Vec::with_capacity(1 << 18);
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            c.region_read(0, regs::ID, &mut b).expect("read");
                            if ns.len() < ns.capacity() {
                                ns.push(t.elapsed().as_nanos() as u64);
                            }
                        }
                        let n = ns.len();
                        (ns, n)
                    })
                })
                .collect();
            std::thread::sleep(SCALE_TIME);
            stop.store(true, Ordering::Relaxed);
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let total: usize = results.iter().map(|r| r.1).sum();
        let all: Vec<u64> = results.into_iter().flat_map(|r| r.0).collect();
        let s = stats(all, total, SCALE_TIME);
        t.add(
            format!("scaling: {threads} thread(s), 4 B reads, one Client, unpinned"),
            s,
            Some(floor),
            "ops/s is the total of all threads".into(),
        );
    }
    pin(Some(0));
}

/// edu DMA of its whole 4 KiB buffer, each op one DMA_CMD write that edu
/// completes inside the write: from server A, whose mapping of the client's
/// buffer came with its fd (the server mmaps it), and from server B, mapped
/// with fd=-1 (the server sends DMA_READ/DMA_WRITE to the client). Interleaved
/// with the floor and a plain 8-byte register write, so the DMA's own cost is
/// the difference from that write.
fn dma(t: &mut Table, n: usize) {
    let f = spawn_server("floor", Some(0));
    let mut floor = floor_client(&f.path);
    let (srv_a, srv_b) = (spawn_server("edu", Some(0)), spawn_server("edu", Some(0)));
    let (ca, cb) = (client(&srv_a.path), client(&srv_b.path));
    let (buf_a, buf_b) = (
        DmaBuffer::new(DMA_BUF_SIZE).expect("DMA buffer"),
        DmaBuffer::new(DMA_BUF_SIZE).expect("DMA buffer"),
    );
    let map_a = buf_a.dma_map(DMA_IOVA);
    let mut map_b = buf_b.dma_map(DMA_IOVA);
    map_b.fd = -1;
    // SAFETY: the buffers outlive their mappings, which are removed below.
    unsafe {
        ca.dma_map(&map_a).expect("dma_map");
        cb.dma_map(&map_b).expect("dma_map");
    }
    let w = |c: &Client, off: u64, v: u64| {
        c.region_write(0, off, &v.to_ne_bytes(), false)
            .expect("write")
    };
    for (dir, src, dst, cmd) in [
        ("RAM->edu", DMA_IOVA, DMA_BUF_ADDR, 1u64),
        ("edu->RAM", DMA_BUF_ADDR, DMA_IOVA, 3u64),
    ] {
        for c in [&ca, &cb] {
            w(c, regs::DMA_SRC, src);
            w(c, regs::DMA_DST, dst);
            w(c, regs::DMA_COUNT, DMA_BUF_SIZE as u64);
        }
        // DMA_COUNT rewritten with its own value: a write with no side effect.
        let mut plain = || w(&ca, regs::DMA_COUNT, DMA_BUF_SIZE as u64);
        let mut mapped = || w(&ca, regs::DMA_CMD, cmd);
        let mut msgs = || w(&cb, regs::DMA_CMD, cmd);
        let st = interleaved(n, &mut [&mut floor, &mut plain, &mut mapped, &mut msgs]);
        let fl = st[0].p50;
        let names = [
            "floor (this section's), same core",
            "edu 8 B register write, no DMA (baseline), same core",
            "edu DMA 4 KiB {dir}, fd-mapped, same core",
            "edu DMA 4 KiB {dir}, fd=-1 via DMA_READ/DMA_WRITE msgs, same core",
        ];
        for (i, (s, name)) in st.into_iter().zip(names).enumerate() {
            let note = if i >= 2 {
                format!("{:.0} MB/s", s.ops * DMA_BUF_SIZE as f64 / 1e6)
            } else {
                String::new()
            };
            t.add(name.replace("{dir}", dir), s, Some(fl), note);
        }
    }
    ca.dma_unmap(DMA_IOVA, buf_a.len() as u64)
        .expect("dma_unmap");
    cb.dma_unmap(DMA_IOVA, buf_b.len() as u64)
        .expect("dma_unmap");
    // The ceiling: copying the 4 KiB in this process, timed in batches of
    // 1000 so Instant's own cost does not swamp it.
    let src = vec![1u8; DMA_BUF_SIZE];
    let mut dst = vec![0u8; DMA_BUF_SIZE];
    let mut ns = Vec::with_capacity(2000);
    let t0 = Instant::now();
    for _ in 0..2000 {
        let t = Instant::now();
        for _ in 0..1000 {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        ns.push(t.elapsed().as_nanos() as u64 / 1000);
    }
    let s = stats(ns, 2_000_000, t0.elapsed());
    t.add(
        "memcpy 4 KiB in process (ceiling)",
        s,
        None,
        format!("{:.0} MB/s", s.ops * DMA_BUF_SIZE as f64 / 1e6),
    );
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
        "floor (this section's), same core",
        "C ABI ops->region_read 4 B, same core",
        "Rust Client::region_read 4 B, same core",
    ];
    for (s, name) in st.into_iter().zip(names) {
        t.add(name, s, Some(fl), String::new());
    }
    assert_eq!(u32::from_ne_bytes(b), vfio_io::edu::ID);
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
    let mut mapped = || {
        c.region_read(2, SHM_AREA.offset, &mut a)
            .expect("mapped read")
    };
    let mut trapped = || c.region_read(2, 0x3000, &mut b).expect("read");
    let st = interleaved(n, &mut [&mut floor, &mut trapped, &mut mapped]);
    assert_eq!(u32::from_ne_bytes(a), vfio_io::edu::ID);
    let fl = st[0].p50;
    let names = [
        ("floor (this section's), same core", String::new()),
        (
            "region read 4 B by message (BAR2 trapped part), same core",
            String::new(),
        ),
        (
            "region read 4 B through the mmapped sparse area (BAR2), same core",
            "no socket round trip; p50 is mostly Instant's own cost".to_string(),
        ),
    ];
    let msg_ops = st[1].ops;
    for (i, (s, (name, note))) in st.into_iter().zip(names).enumerate() {
        let note = if i == 2 {
            format!("{note}; {:.0}x the message's ops/s", s.ops / msg_ops)
        } else {
            note
        };
        t.add(name, s, Some(fl), note);
    }
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
    assert_eq!(u32::from_ne_bytes(a), vfio_io::edu::ID);
    assert_eq!(u32::from_ne_bytes(b), vfio_io::edu::ID);
    let fl = st[0].p50;
    let ratio = st[1].ops / st[2].ops;
    let names = [
        (
            "floor: raw UNIX ping-pong 32/36 B, read()/write()",
            String::new(),
        ),
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

/// Polling mode: with the server on the other core, a client that polls the
/// socket for up to [`SPIN`] before blocking, against one that blocks at
/// once. The server still blocks in recvmsg, so it still pays its wake-up.
fn polling(t: &mut Table, n: usize) {
    let f = spawn_server("floor", Some(1));
    let mut floor = floor_client(&f.path);
    let (s1, s2) = (spawn_server("edu", Some(1)), spawn_server("edu", Some(1)));
    let blocking = client(&s1.path);
    let spinning = Client::connect(
        &s2.path,
        ClientConfig {
            spin: Some(SPIN),
            ..ClientConfig::default()
        },
    )
    .expect("connect");
    let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
    let mut blk = || blocking.region_read(0, regs::ID, &mut a).expect("read");
    let mut spn = || spinning.region_read(0, regs::ID, &mut b).expect("read");
    let st = interleaved(n, &mut [&mut floor, &mut blk, &mut spn]);
    assert_eq!(u32::from_ne_bytes(b), vfio_io::edu::ID);
    let fl = st[0].p50;
    let saved = st[1].p50 - st[2].p50;
    let names = [
        (
            "floor: raw UNIX ping-pong 32/36 B, cross core",
            String::new(),
        ),
        (
            "vfio-io region read 4 B, blocking, cross core",
            String::new(),
        ),
        (
            "vfio-io region read 4 B, spin 50 µs, cross core",
            format!("{saved:.2} µs below blocking at p50"),
        ),
    ];
    for (s, (name, note)) in st.into_iter().zip(names) {
        t.add(name, s, Some(fl), note);
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
    let src = pattern.clone();
    let mut dst = vec![0u8; BIG_DMA];
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
            std::hint::black_box(&mut dst);
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

/// What the client's hot path pays besides the socket: std's futex-based
/// Condvar makes a FUTEX_WAKE system call on every notify, waiters or not,
/// and a lone synchronous request notifies twice (strace: 2 futex calls per
/// request). Timed in batches of 100 so Instant's cost does not swamp it.
fn attribution(t: &mut Table) {
    let m = std::sync::Mutex::new(());
    let cv = std::sync::Condvar::new();
    let s = measure(N_SAME / 10, || {
        for _ in 0..100 {
            let _g = m.lock().expect("lock");
            cv.notify_all();
        }
    });
    let per = |x: f64| x / 100.0;
    t.add(
        "Mutex lock + Condvar::notify_all, no waiters",
        Stats {
            p50: per(s.p50),
            p99: per(s.p99),
            ops: s.ops * 100.0,
        },
        None,
        "the client does this twice per request".into(),
    );
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child_main(&role);
        return;
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    NCPU.store(ncpu, Ordering::Relaxed);
    let started = Instant::now();
    let mut t = Table(Vec::new());
    pin(Some(0));

    eprintln!("(a)");
    eprintln!("(b) vfio-io client + server, interleaved with the floors");
    let same = vfio_user(&mut t, "same core", 0, N_SAME);
    if ncpu > 1 {
        vfio_user(&mut t, "cross core", 1, N_CROSS);
    }
    eprintln!("(c) scaling");
    scaling(&mut t, same);
    eprintln!("(d) DMA");
    dma(&mut t, N_SAME / 5);
    eprintln!("(e) C ABI");
    c_abi(&mut t, N_SAME);
    eprintln!("(f) attribution");
    attribution(&mut t);
    eprintln!("(g) mmap fast path");
    mmap_path(&mut t, N_SAME);
    eprintln!("(h) rust-vmm vfio-user");
    rust_vmm(&mut t, "same core", 0, N_SAME);
    if ncpu > 1 {
        rust_vmm(&mut t, "cross core", 1, N_CROSS);
        eprintln!("(i) polling mode");
        polling(&mut t, N_CROSS);
    }
    eprintln!("(j) DMA bandwidth");
    dma_bandwidth(&mut t);

    println!();
    println!(
        "{ncpu} CPUs; same-core rows compare with the same-core floor, cross-core rows with the cross-core floor."
    );
    t.print();
    println!(
        "\ntotal bench time {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
