//! The vfio-user client: a [`DeviceIo`] backend over a UNIX socket.
//!
//! Many threads may issue requests at once. Each request takes a slot whose
//! index and generation form the message id. Whichever waiting thread finds
//! the socket unowned becomes its reader: it reads messages, files replies
//! into their slots and wakes their owners, and answers the server's
//! DMA_READ/DMA_WRITE. So a lone caller reads its own reply with no thread
//! hand-off, and no background thread sits on the main socket.
//!
//! Regions (or sparse areas of them) that the server offers with an fd are
//! mmapped at connect; reads and writes that fall entirely inside one go
//! straight to that memory, with no message at all.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::caps::{Backends, Capabilities, CapabilityRecord, Source};
use crate::device::{
    DeviceInfo, DeviceIo, DmaMap, IrqData, IrqInfo, IrqSet, RegionInfo, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use crate::error::{Error, Result};
use crate::memory::Mapping;
use crate::user::proto::{
    self, cmd, DmaAccess, DmaMapMsg, DmaUnmapMsg, Header, IrqSetMsg, RegionAccess, DMA_MAP_READ,
    DMA_MAP_WRITE, FLAG_NO_REPLY,
};
use crate::user::version::{self, VersionCaps};
use crate::user::wire::{send_msg, set_timeouts, Receiver};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

/// Most regions a server may declare.
pub const MAX_REGIONS: u32 = 256;
/// Most IRQ indices a server may declare.
pub const MAX_IRQS: u32 = 64;
/// Largest region info reply accepted (capability chain included).
pub const MAX_REGION_INFO: u32 = 64 * 1024;
const SLOT_BITS: u32 = 6;
/// Most requests in flight at once on one client (the last slot id is kept
/// for posted writes, which get no reply).
pub const MAX_OUTSTANDING: usize = (1 << SLOT_BITS) - 1;
const POSTED_ID: u16 = (1 << SLOT_BITS) - 1;

/// What the capability mask of every vfio-user device may contain (from the
/// capability table).
pub const BACKEND_CAPABILITIES: Capabilities = Backends::VFIO_USER.possible_capabilities();

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long one request may wait for its reply (and a send for the socket).
    pub timeout: Duration,
    /// Largest data count per message this client accepts.
    pub max_data_xfer_size: u32,
    /// Propose twin-socket mode, so DMA requests from the server are served
    /// by a thread of their own even while no request is in flight.
    pub twin_socket: bool,
    /// Polling mode: a thread waiting for a reply first polls the socket with
    /// non-blocking receives for up to this long before it blocks. On another
    /// core than the server this saves the wake-up of a blocked thread (tens
    /// of µs on a VM) at the price of a busy CPU while it waits; on the
    /// server's own core it only steals the server's time. `None`: block at once.
    pub spin: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            max_data_xfer_size: version::DEFAULT_MAX_DATA_XFER,
            twin_socket: true,
            spin: None,
        }
    }
}

#[derive(Default)]
struct Slot {
    gen: u16,
    busy: bool,
    done: bool,
    header: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

struct State {
    slots: Vec<Slot>,
    free: Vec<usize>,
    reader_busy: bool,
    /// Why the link is down; None while it is up.
    down: Option<LinkDown>,
    /// Threads blocked on the condvar: notifying none would still cost a
    /// futex call per request, so wake-ups are skipped when this is 0.
    sleepers: usize,
}

/// How the link went down, which decides what later requests report.
enum LinkDown {
    /// Closed by us or lost (ENOTCONN).
    Closed,
    /// The peer sent something malformed (EPROTO, with what it was).
    Broken(String),
}

impl State {
    /// The error a request gets once the link is down.
    fn down_error(&self) -> Error {
        match &self.down {
            Some(LinkDown::Broken(m)) => Error::Protocol(m.clone()),
            _ => Error::Disconnected,
        }
    }
}

#[derive(Clone, Copy)]
struct DmaEntry {
    iova: u64,
    size: u64,
    vaddr: u64,
    readable: bool,
    writable: bool,
}

struct Inner {
    sock: OwnedFd,
    send_lock: Mutex<()>,
    state: Mutex<State>,
    cond: Condvar,
    reader: Mutex<Receiver>,
    dma: RwLock<Vec<DmaEntry>>,
    timeout: Duration,
    spin: Option<Duration>,
    closed: AtomicBool,
}

/// A connected vfio-user device.
pub struct Client {
    inner: Arc<Inner>,
    server: VersionCaps,
    info: DeviceInfo,
    regions: Vec<RegionInfo>,
    caps: CapabilityRecord,
    max_xfer: usize,
    twin: Mutex<Option<(OwnedFd, JoinHandle<()>)>>,
    /// The mmapped areas of mappable regions, accessed without messages.
    mapped: Vec<MappedArea>,
}

/// One mmapped area: `[start, end)` of region `region`.
struct MappedArea {
    region: u32,
    start: u64,
    end: u64,
    readable: bool,
    writable: bool,
    map: Mapping,
}

/// A reply, as filed in its slot.
struct Reply<'a> {
    payload: &'a [u8],
    fds: &'a mut Vec<OwnedFd>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sleep<'a>(&self, st: MutexGuard<'a, State>, left: Duration) -> MutexGuard<'a, State> {
        let mut st = st;
        st.sleepers += 1;
        let mut st = self
            .cond
            .wait_timeout(st, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        st.sleepers -= 1;
        st
    }

    fn wake(&self, st: &State) {
        if st.sleepers > 0 {
            self.cond.notify_all();
        }
    }

    fn kill(&self, st: &mut State, why: LinkDown) {
        if st.down.is_none() {
            st.down = Some(why);
            let _ =
                nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        self.cond.notify_all();
    }

    fn send(&self, parts: &[&[u8]], fds: &[RawFd]) -> Result<()> {
        let _g = self.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        let r = send_msg(self.sock.as_fd(), parts, fds);
        if r.is_err() {
            // A partial message would desynchronise the stream: the link is gone.
            let mut st = self.lock();
            self.kill(&mut st, LinkDown::Closed);
        }
        r
    }

    /// Sends a command and runs `f` on its reply. Error replies become
    /// `Error::Remote`; `f` validates the payload.
    fn request<T>(
        &self,
        command: u16,
        parts: &[&[u8]],
        fds: &[RawFd],
        f: impl FnOnce(Reply<'_>) -> Result<T>,
    ) -> Result<T> {
        // The header and at most three parts go out as one sendmsg.
        if parts.len() > 3 {
            return Err(Error::InvalidArgument("a request has at most three parts"));
        }
        let deadline = Instant::now() + self.timeout;
        let (slot, id) = {
            let mut st = self.lock();
            loop {
                if st.down.is_some() {
                    return Err(st.down_error());
                }
                if let Some(i) = st.free.pop() {
                    let s = &mut st.slots[i];
                    s.gen = s.gen.wrapping_add(1) & ((1 << (16 - SLOT_BITS)) - 1);
                    s.busy = true;
                    s.done = false;
                    break (i, (s.gen << SLOT_BITS) | i as u16);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout);
                }
                st = self.sleep(st, left);
            }
        };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hdr = Header::command(id, command, len).encode();
        let mut iov: [&[u8]; 4] = [&hdr, &[], &[], &[]];
        for (i, p) in parts.iter().enumerate() {
            iov[i + 1] = p;
        }
        if let Err(e) = self.send(&iov[..1 + parts.len()], fds) {
            self.release(slot);
            return Err(e);
        }
        self.wait(slot, command, deadline, f)
    }

    fn release(&self, slot: usize) {
        let mut st = self.lock();
        let s = &mut st.slots[slot];
        s.busy = false;
        s.done = false;
        s.fds.clear();
        st.free.push(slot);
        self.wake(&st);
    }

    fn wait<T>(
        &self,
        slot: usize,
        command: u16,
        deadline: Instant,
        f: impl FnOnce(Reply<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.lock();
        loop {
            if st.slots[slot].done {
                let s = &mut st.slots[slot];
                let result = if s.header.command != command {
                    Err(Error::Protocol(format!(
                        "reply to {} carries command {}",
                        cmd::name(command),
                        s.header.command
                    )))
                } else if let Some(errno) = s.header.error_errno() {
                    Err(Error::Remote { command, errno })
                } else {
                    f(Reply {
                        payload: &s.payload,
                        fds: &mut s.fds,
                    })
                };
                drop(st);
                self.release(slot);
                return result;
            }
            if st.down.is_some() {
                let e = st.down_error();
                drop(st);
                self.release(slot);
                return Err(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(st);
                self.release(slot);
                return Err(Error::Timeout);
            }
            if !st.reader_busy {
                st.reader_busy = true;
                drop(st);
                let r = self.read_one();
                st = self.lock();
                st.reader_busy = false;
                self.wake(&st);
                if let Err(e) = r {
                    match e {
                        Error::Timeout => {}
                        Error::Protocol(m) => self.kill(&mut st, LinkDown::Broken(m)),
                        _ => self.kill(&mut st, LinkDown::Closed),
                    }
                }
                continue;
            }
            st = self.sleep(st, left);
        }
    }

    /// Reads one message as the socket's reader and files or answers it.
    fn read_one(&self) -> Result<()> {
        let mut rx = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        // Polling mode: non-blocking receives until a whole message is there
        // or the spin budget is spent, then an ordinary blocking receive. A
        // partial message stays buffered in the Receiver between attempts.
        let spin_until = self.spin.map(|d| Instant::now() + d);
        let m = loop {
            let nonblock = spin_until.is_some_and(|t| Instant::now() < t);
            match rx.recv(self.sock.as_fd(), nonblock) {
                Err(Error::Timeout) if nonblock => std::hint::spin_loop(),
                r => break r?,
            }
        };
        if m.header.is_reply() {
            let slot = (m.header.id & ((1 << SLOT_BITS) - 1)) as usize;
            let gen = m.header.id >> SLOT_BITS;
            let mut st = self.lock();
            match st.slots.get_mut(slot) {
                Some(s) if s.busy && !s.done && s.gen == gen => {
                    s.header = m.header;
                    s.payload.clear();
                    s.payload.extend_from_slice(m.payload);
                    s.fds = m.fds;
                    s.done = true;
                }
                // Unknown, duplicate or late: nobody waits for it. Its fds close here.
                _ => log::debug!(target: "vfio_io::client", "dropped reply id {}", m.header.id),
            }
            return Ok(());
        }
        let (h, payload) = (m.header, m.payload.to_vec());
        drop(rx);
        self.serve_dma(self.sock.as_fd(), &h, &payload)
    }

    /// Answers a server-to-client command.
    fn serve_dma(&self, sock: BorrowedFd<'_>, h: &Header, p: &[u8]) -> Result<()> {
        let mut data = Vec::new();
        let result = self.dma_access(h, p, &mut data);
        if h.no_reply() {
            return Ok(());
        }
        let _g = self.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(a) => {
                let fixed = a.encode();
                let rh = Header::reply(h, fixed.len() + data.len()).encode();
                send_msg(sock, &[&rh, &fixed, &data], &[])
            }
            Err(e) => send_msg(sock, &[&Header::error_reply(h, e.errno()).encode()], &[]),
        }
    }

    fn dma_access(&self, h: &Header, p: &[u8], data: &mut Vec<u8>) -> Result<DmaAccess> {
        let a = DmaAccess::decode(p)?;
        let write = match h.command {
            cmd::DMA_READ => false,
            cmd::DMA_WRITE => true,
            _ => {
                return Err(Error::Sys {
                    op: "server sent an unknown command",
                    errno: libc::ENOSYS,
                })
            }
        };
        let count = usize::try_from(a.count).map_err(|_| Error::InvalidArgument("DMA count"))?;
        if count > version::DEFAULT_MAX_DATA_XFER as usize * 16 {
            return Err(Error::InvalidArgument("DMA count too large"));
        }
        if write && p.len() != DmaAccess::SIZE + count {
            return Err(Error::InvalidArgument(
                "DMA_WRITE data length differs from count",
            ));
        }
        let end = a
            .address
            .checked_add(a.count)
            .ok_or(Error::InvalidArgument("DMA range wraps"))?;
        let table = self.dma.read().unwrap_or_else(|p| p.into_inner());
        let e = table
            .iter()
            .find(|e| a.address >= e.iova && end <= e.iova + e.size)
            .ok_or(Error::Sys {
                op: "DMA outside the client's mappings",
                errno: libc::EFAULT,
            })?;
        if (write && !e.writable) || (!write && !e.readable) || e.vaddr == 0 {
            return Err(Error::Sys {
                op: "DMA not permitted",
                errno: libc::EPERM,
            });
        }
        let ptr = (e.vaddr + (a.address - e.iova)) as *mut u8;
        if write {
            // SAFETY: dma_map's contract keeps [vaddr, vaddr+size) valid while
            // mapped; the range was checked to lie inside that mapping, and
            // holding the table's read lock keeps the mapping from going away.
            unsafe { std::ptr::copy_nonoverlapping(p[DmaAccess::SIZE..].as_ptr(), ptr, count) };
        } else {
            data.resize(count, 0);
            // SAFETY: as above, for reading.
            unsafe { std::ptr::copy_nonoverlapping(ptr, data.as_mut_ptr(), count) };
        }
        Ok(a)
    }
}

fn twin_loop(inner: Arc<Inner>, sock: OwnedFd, max_msg: usize) {
    let mut rx = Receiver::new(max_msg);
    loop {
        let m = match rx.recv(sock.as_fd(), false) {
            Ok(m) => m,
            Err(Error::Timeout) => continue,
            Err(_) => return,
        };
        if m.header.is_reply() {
            continue;
        }
        let (h, p) = (m.header, m.payload.to_vec());
        if inner.serve_dma(sock.as_fd(), &h, &p).is_err() || inner.closed.load(Ordering::SeqCst) {
            return;
        }
    }
}

fn expect_len(what: &'static str, payload: &[u8], want: usize) -> Result<()> {
    if payload.len() < want {
        return Err(Error::Protocol(format!(
            "{what} reply carries {} bytes, needs {want}",
            payload.len()
        )));
    }
    Ok(())
}

impl Client {
    /// Connects to a vfio-user server socket and negotiates with it.
    pub fn connect(path: impl AsRef<Path>, config: ClientConfig) -> Result<Self> {
        let stream = UnixStream::connect(path.as_ref())
            .map_err(|e| Error::io("connect to vfio-user socket", &e))?;
        Self::from_stream(stream, config)
    }

    /// Uses an already connected socket.
    pub fn from_stream(stream: UnixStream, config: ClientConfig) -> Result<Self> {
        let sock: OwnedFd = stream.into();
        // Short receive timeouts let a reader notice its deadline; sends may
        // block at most the request timeout.
        set_timeouts(
            sock.as_fd(),
            Some(config.timeout.min(Duration::from_millis(200))),
            Some(config.timeout),
        )?;
        let max_msg = config.max_data_xfer_size as usize + 64 * 1024;
        let inner = Arc::new(Inner {
            sock,
            send_lock: Mutex::new(()),
            state: Mutex::new(State {
                slots: (0..MAX_OUTSTANDING).map(|_| Slot::default()).collect(),
                free: (0..MAX_OUTSTANDING).rev().collect(),
                reader_busy: false,
                down: None,
                sleepers: 0,
            }),
            cond: Condvar::new(),
            reader: Mutex::new(Receiver::new(max_msg)),
            dma: RwLock::new(Vec::new()),
            timeout: config.timeout,
            spin: config.spin.filter(|d| !d.is_zero()),
            closed: AtomicBool::new(false),
        });
        let ours = VersionCaps {
            max_msg_fds: crate::user::wire::MAX_RECV_FDS as u32,
            max_data_xfer_size: config.max_data_xfer_size,
            max_dma_maps: version::DEFAULT_MAX_DMA_MAPS,
            pgsizes: 4096,
            write_multiple: true,
            migration: None,
            twin_socket: config.twin_socket,
            twin_fd_index: None,
        };
        let payload = proto::encode_version(version::MAJOR, version::MINOR, &ours.to_json());
        let (server, twin_fd) = inner.request(cmd::VERSION, &[&payload], &[], |r| {
            let (major, minor, json) = proto::decode_version(r.payload)?;
            if major != version::MAJOR || minor > version::MINOR {
                return Err(Error::Protocol(format!(
                    "server answered version {major}.{minor}"
                )));
            }
            let caps = VersionCaps::parse(json)?;
            let twin = if caps.twin_socket && config.twin_socket {
                let i = caps
                    .twin_fd_index
                    .ok_or_else(|| Error::Protocol("twin_socket without fd_index".into()))?;
                if i as usize >= r.fds.len() {
                    return Err(Error::Protocol("twin_socket fd_index names no fd".into()));
                }
                Some(r.fds.swap_remove(i as usize))
            } else {
                None
            };
            Ok((caps, twin))
        })?;
        let max_xfer = server
            .max_data_xfer_size
            .min(config.max_data_xfer_size)
            .max(1) as usize;
        let twin = match twin_fd {
            Some(fd) => {
                set_timeouts(fd.as_fd(), None, Some(config.timeout))?;
                let keep = fd.try_clone().map_err(|e| Error::io("dup", &e))?;
                let i2 = inner.clone();
                let h = std::thread::Builder::new()
                    .name("vfio-user-dma".into())
                    .spawn(move || twin_loop(i2, fd, max_msg))
                    .map_err(|e| Error::io("spawn", &e))?;
                Some((keep, h))
            }
            None => None,
        };
        let mut client = Client {
            inner,
            server,
            info: DeviceInfo {
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            },
            regions: Vec::new(),
            caps: CapabilityRecord::new(),
            max_xfer,
            twin: Mutex::new(twin),
            mapped: Vec::new(),
        };
        client.discover()?;
        Ok(client)
    }

    fn discover(&mut self) -> Result<()> {
        let req = proto::encode_device_info(
            16,
            &DeviceInfo {
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            },
        );
        let info = self
            .inner
            .request(cmd::DEVICE_GET_INFO, &[&req], &[], |r| {
                expect_len("DEVICE_GET_INFO", r.payload, 16)?;
                proto::decode_device_info(r.payload)
            })?;
        if info.num_regions > MAX_REGIONS || info.num_irqs > MAX_IRQS {
            return Err(Error::Protocol(format!(
                "server declares {} regions and {} IRQ indices",
                info.num_regions, info.num_irqs
            )));
        }
        self.info = info;
        for index in 0..info.num_regions {
            let r = self.fetch_region_info(index)?;
            self.regions.push(r);
        }
        self.record_capabilities();
        self.map_regions();
        if let Some(a) = self.mapped.first() {
            self.caps.withhold(
                Capabilities::POSTED_WRITES,
                Source::MappedArea(a.region),
                "an area is mapped, so posted writes wait for their reply to stay in order",
            );
        }
        Ok(())
    }

    /// Records the device's capability bits from what discovery learned.
    fn record_capabilities(&mut self) {
        let mut rec = CapabilityRecord::new();
        rec.grant(
            Capabilities::DMA_MESSAGES,
            Source::Backend,
            "the client answers DMA_READ/DMA_WRITE from its maps",
        );
        rec.grant(
            Capabilities::POSTED_WRITES,
            Source::Backend,
            "a posted write is sent with no-reply and not waited for",
        );
        match self.regions.iter().find(|r| r.is_mappable()) {
            Some(r) => {
                let why = "the region comes with an fd and mmappable areas";
                rec.grant(Capabilities::REGION_MMAP, Source::RegionInfo(r.index), why);
                rec.grant(Capabilities::REGION_FDS, Source::RegionInfo(r.index), why);
            }
            None => {
                let why = "no region comes with an fd to mmap";
                rec.withhold(Capabilities::REGION_MMAP, Source::DeviceInfo, why);
                rec.withhold(Capabilities::REGION_FDS, Source::DeviceInfo, why);
            }
        }
        rec.note_device_flags(self.info.flags);
        let key = Source::Negotiation("write_multiple");
        if self.server.write_multiple {
            rec.grant(
                Capabilities::WRITE_MULTI,
                key,
                "the server accepts REGION_WRITE_MULTI",
            );
        } else {
            rec.withhold(
                Capabilities::WRITE_MULTI,
                key,
                "the server did not offer it",
            );
        }
        // The server's answers are recorded, but the bits stay clear: the
        // library carries no vfio-user migration or dirty-report data path.
        let probes = [
            (
                VFIO_DEVICE_FEATURE_MIGRATION,
                VFIO_DEVICE_FEATURE_GET,
                Capabilities::MIGRATION,
            ),
            (
                VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                VFIO_DEVICE_FEATURE_SET,
                Capabilities::DIRTY_TRACKING,
            ),
        ];
        for (feature, how, bit) in probes {
            // A probe the server refuses just leaves the bit clear: nothing to log.
            let offered = self
                .device_feature(VFIO_DEVICE_FEATURE_PROBE | how | feature, &mut [])
                .is_ok();
            let why = if offered {
                "the server offers it; the library has no vfio-user data path for it"
            } else {
                "the server refuses the probe"
            };
            rec.withhold(bit, Source::FeatureProbe(feature), why);
        }
        self.caps = rec;
    }

    /// mmaps every area of every region that came with an fd. An area that
    /// cannot be mapped, or that the server declared outside its region, is
    /// left to messages: mapping is an optimisation, never a requirement.
    fn map_regions(&mut self) {
        for r in &self.regions {
            let Some(fd) = r.fd.as_ref().filter(|_| r.is_mappable()) else {
                continue;
            };
            // A server that could shrink the file under our mapping could
            // raise SIGBUS in this process: such regions go by messages.
            if !crate::memory::cannot_shrink(fd.as_fd()).unwrap_or(false) {
                log::debug!(
                    target: "vfio_io::client",
                    "region {} not mapped: its fd may shrink; using messages",
                    r.index
                );
                continue;
            }
            let readable = r.flags & VFIO_REGION_INFO_FLAG_READ != 0;
            let writable = r.flags & VFIO_REGION_INFO_FLAG_WRITE != 0;
            for a in r.mmap_areas() {
                let end = match a.offset.checked_add(a.size) {
                    Some(e) if a.size > 0 && e <= r.size => e,
                    _ => continue,
                };
                let (Some(off), Ok(len)) =
                    (r.offset.checked_add(a.offset), usize::try_from(a.size))
                else {
                    continue;
                };
                match Mapping::new(fd.as_fd(), off, len, writable) {
                    Ok(map) => self.mapped.push(MappedArea {
                        region: r.index,
                        start: a.offset,
                        end,
                        readable,
                        writable,
                        map,
                    }),
                    Err(e) => log::debug!(
                        target: "vfio_io::client",
                        "region {} area {:#x}+{:#x} not mapped ({e}); using messages",
                        r.index, a.offset, a.size
                    ),
                }
            }
        }
    }

    /// The mapped area holding all of `[offset, offset + len)` of region
    /// `index`, and the offset inside it. A range that straddles an area's
    /// edge gets `None` and goes by message, so the server sees every byte
    /// outside the mapping.
    fn mapped_area(&self, index: u32, offset: u64, len: usize) -> Option<(&MappedArea, usize)> {
        let end = offset.checked_add(len as u64)?;
        self.mapped
            .iter()
            .find(|a| a.region == index && offset >= a.start && end <= a.end)
            .map(|a| (a, (offset - a.start) as usize))
    }

    /// Whether some region area is mmapped (see `region_write` for what
    /// that does to posted writes).
    pub fn has_mapped_areas(&self) -> bool {
        !self.mapped.is_empty()
    }

    fn fetch_region_info(&self, index: u32) -> Result<RegionInfo> {
        let mut argsz = 256u32;
        loop {
            let req = proto::encode_region_info_request(argsz, index);
            let (mut info, needed, fd) =
                self.inner
                    .request(cmd::DEVICE_GET_REGION_INFO, &[&req], &[], |r| {
                        let (info, needed) = proto::decode_region_info(r.payload)?;
                        Ok((info, needed, r.fds.pop()))
                    })?;
            if needed > argsz && needed as usize > proto::REGION_INFO_SIZE {
                if needed > MAX_REGION_INFO || argsz >= MAX_REGION_INFO {
                    return Err(Error::Protocol(format!(
                        "region {index} info needs {needed} bytes"
                    )));
                }
                argsz = needed;
                continue;
            }
            if info.index != index {
                return Err(Error::Protocol(format!(
                    "asked for region {index}, got {}",
                    info.index
                )));
            }
            info.fd = fd.map(Arc::new);
            return Ok(info);
        }
    }

    /// DEVICE_GET_REGION_IO_FDS: the ioeventfd/ioregionfd sub-regions the
    /// server offers for region `index`, with the fds they refer to.
    pub fn region_io_fds(&self, index: u32) -> Result<(Vec<proto::IoFdSubRegion>, Vec<OwnedFd>)> {
        self.region(index, 0, 0)?;
        let mut req = [0u8; 16];
        req[0..4].copy_from_slice(&4096u32.to_ne_bytes());
        req[8..12].copy_from_slice(&index.to_ne_bytes());
        self.inner
            .request(cmd::DEVICE_GET_REGION_IO_FDS, &[&req], &[], |r| {
                let (got, subs) = proto::decode_io_fds(r.payload)?;
                if got != index || subs.iter().any(|s| s.fd_index as usize >= r.fds.len()) {
                    return Err(Error::Protocol(
                        "REGION_IO_FDS reply names another region or a missing fd".into(),
                    ));
                }
                Ok((subs, std::mem::take(r.fds)))
            })
    }

    /// REGION_WRITE_MULTI: several writes of at most 8 bytes in one message,
    /// when the server negotiated `write_multiple`. Returns the count done.
    pub fn region_write_multi(&self, writes: &[proto::MultiWrite]) -> Result<u64> {
        if !self.server.write_multiple {
            return Err(Error::Unsupported(
                "the server did not negotiate write_multiple",
            ));
        }
        if writes.len() > proto::MultiWrite::MAX_ENTRIES {
            return Err(Error::InvalidArgument(
                "too many writes in one REGION_WRITE_MULTI",
            ));
        }
        for w in writes {
            if w.count == 0 || w.count > 8 {
                return Err(Error::InvalidArgument("REGION_WRITE_MULTI entry size"));
            }
            self.region(w.region, w.offset, w.count as usize)?;
        }
        let mut payload = Vec::with_capacity(8 + writes.len() * proto::MultiWrite::SIZE);
        proto::encode_write_multi(writes, &mut payload);
        self.inner
            .request(cmd::REGION_WRITE_MULTI, &[&payload], &[], |r| {
                expect_len("REGION_WRITE_MULTI", r.payload, 8)?;
                Ok(u64::from_ne_bytes(
                    r.payload[..8].try_into().unwrap_or([0; 8]),
                ))
            })
    }

    /// The capabilities the server answered VERSION with.
    pub fn server_version_caps(&self) -> &VersionCaps {
        &self.server
    }

    /// Whether DMA requests from the server come on their own socket.
    pub fn twin_socket(&self) -> bool {
        self.twin.lock().map(|t| t.is_some()).unwrap_or(false)
    }

    /// Closes the connection: requests in flight, and later ones, fail with
    /// `Disconnected`. Dropping the client does the same.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let mut st = self.inner.lock();
        self.inner.kill(&mut st, LinkDown::Closed);
        drop(st);
        if let Ok(mut t) = self.twin.lock() {
            if let Some((fd, h)) = t.take() {
                let _ =
                    nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
                let _ = h.join();
            }
        }
    }

    fn region(&self, index: u32, offset: u64, len: usize) -> Result<&RegionInfo> {
        let r = self
            .regions
            .get(index as usize)
            .ok_or(Error::InvalidArgument("region index past num_regions"))?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= r.size => Ok(r),
            _ => Err(Error::InvalidArgument("access past the region's end")),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

impl DeviceIo for Client {
    fn capability_record(&self) -> &CapabilityRecord {
        &self.caps
    }

    fn backend_capabilities(&self) -> Capabilities {
        BACKEND_CAPABILITIES
    }

    fn backend_name(&self) -> &'static str {
        "vfio-user"
    }

    fn device_info(&self) -> Result<DeviceInfo> {
        Ok(self.info)
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        self.regions
            .get(index as usize)
            .cloned()
            .ok_or(Error::InvalidArgument("region index past num_regions"))
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        if index >= self.info.num_irqs {
            return Err(Error::InvalidArgument("IRQ index past num_irqs"));
        }
        let req = proto::encode_irq_info(
            16,
            &IrqInfo {
                index,
                flags: 0,
                count: 0,
            },
        );
        self.inner
            .request(cmd::DEVICE_GET_IRQ_INFO, &[&req], &[], |r| {
                expect_len("DEVICE_GET_IRQ_INFO", r.payload, 16)?;
                let info = proto::decode_irq_info(r.payload)?;
                if info.index != index {
                    return Err(Error::Protocol(format!(
                        "asked for IRQ {index}, got {}",
                        info.index
                    )));
                }
                Ok(info)
            })
    }

    fn set_irqs(&self, set: &IrqSet<'_>) -> Result<()> {
        set.validate()?;
        if set.index >= self.info.num_irqs {
            return Err(Error::InvalidArgument("IRQ index past num_irqs"));
        }
        let flags = set.flags();
        let send = |start: u32, count: u32, data: &[u8], fds: &[RawFd]| {
            let m = IrqSetMsg {
                argsz: (proto::IRQ_SET_SIZE + data.len()) as u32,
                flags,
                index: set.index,
                start,
                count,
            };
            self.inner
                .request(cmd::DEVICE_SET_IRQS, &[&m.encode(), data], fds, |_| Ok(()))
        };
        match set.data {
            IrqData::None => send(set.start, set.count, &[], &[]),
            IrqData::Bool(b) => send(set.start, set.count, b, &[]),
            IrqData::Eventfds(fds) => {
                // One message carries all-valid or no fds, at most max_msg_fds.
                let per = self.server.max_msg_fds.max(1) as usize;
                let mut i = 0;
                while i < fds.len() {
                    let valid = fds[i] >= 0;
                    let mut j = i;
                    while j < fds.len() && (fds[j] >= 0) == valid && (!valid || j - i < per) {
                        j += 1;
                    }
                    let run: &[RawFd] = if valid { &fds[i..j] } else { &[] };
                    send(set.start + i as u32, (j - i) as u32, &[], run)?;
                    i = j;
                }
                Ok(())
            }
        }
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        self.region(index, offset, data.len())?;
        if !data.is_empty() {
            if let Some((a, off)) = self.mapped_area(index, offset, data.len()) {
                if a.readable {
                    return a.map.read_reg(off, data);
                }
            }
        }
        // Larger reads go as several messages of at most max_xfer bytes.
        let step = self.max_xfer;
        for (i, out) in data.chunks_mut(step).enumerate() {
            let n = out.len();
            let a = RegionAccess {
                offset: offset + (i * step) as u64,
                region: index,
                count: n as u32,
            };
            self.inner
                .request(cmd::REGION_READ, &[&a.encode()], &[], |r| {
                    if r.payload.len() != RegionAccess::SIZE + n
                        || RegionAccess::decode(r.payload)? != a
                    {
                        return Err(Error::Protocol(
                            "REGION_READ reply does not match the request".into(),
                        ));
                    }
                    out.copy_from_slice(&r.payload[RegionAccess::SIZE..]);
                    Ok(())
                })?;
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8], post: bool) -> Result<()> {
        self.region(index, offset, data.len())?;
        if !data.is_empty() {
            if let Some((a, off)) = self.mapped_area(index, offset, data.len()) {
                if a.writable {
                    return a.map.write_reg(off, data);
                }
            }
        }
        // Once any area is mapped, a posted write could be overtaken: it sits
        // in the socket until the server reads it, while a later store through
        // the mapping lands at once, so the device would see the two in the
        // wrong order (and a later mapped read would not be pushed behind the
        // write, as PCI ordering requires). QEMU's vfio-user client stops
        // posting for the same reason. Waiting for the reply keeps them in
        // program order; the write is still accepted, only not posted.
        let post = post && self.mapped.is_empty();
        for (i, chunk) in data.chunks(self.max_xfer).enumerate() {
            let a = RegionAccess {
                offset: offset + (i * self.max_xfer) as u64,
                region: index,
                count: chunk.len() as u32,
            };
            if post {
                let mut h = Header::command(
                    POSTED_ID,
                    cmd::REGION_WRITE,
                    RegionAccess::SIZE + chunk.len(),
                );
                h.flags |= FLAG_NO_REPLY;
                self.inner.send(&[&h.encode(), &a.encode(), chunk], &[])?;
                continue;
            }
            self.inner
                .request(cmd::REGION_WRITE, &[&a.encode(), chunk], &[], |r| {
                    expect_len("REGION_WRITE", r.payload, RegionAccess::SIZE)?;
                    if RegionAccess::decode(r.payload)?.count != a.count {
                        return Err(Error::Protocol("REGION_WRITE reply count differs".into()));
                    }
                    Ok(())
                })?;
        }
        Ok(())
    }

    fn device_feature(&self, flags: u32, data: &mut [u8]) -> Result<i32> {
        let fixed = proto::encode_feature((8 + data.len()) as u32, flags);
        let get = flags & VFIO_DEVICE_FEATURE_GET != 0 && flags & VFIO_DEVICE_FEATURE_PROBE == 0;
        let input: &[u8] = if get { &[] } else { data };
        let reply = self
            .inner
            .request(cmd::DEVICE_FEATURE, &[&fixed, input], &[], |r| {
                let (_, _, d) = proto::decode_feature(r.payload)?;
                Ok(d.to_vec())
            })?;
        if get {
            if reply.len() > data.len() {
                return Err(Error::Protocol(
                    "DEVICE_FEATURE reply larger than asked".into(),
                ));
            }
            data[..reply.len()].copy_from_slice(&reply);
        }
        Ok(0)
    }

    fn reset(&self) -> Result<()> {
        // Without VFIO_DEVICE_FLAGS_RESET the device has no reset to ask for.
        if !self.caps.mask().contains(Capabilities::RESET) {
            return Err(Error::Unsupported("the device does not support reset"));
        }
        self.inner.request(cmd::DEVICE_RESET, &[], &[], |_| Ok(()))
    }

    unsafe fn dma_map(&self, map: &DmaMap) -> Result<()> {
        let Some(end) = map.iova.checked_add(map.size).filter(|_| map.size > 0) else {
            return Err(Error::InvalidArgument("DMA range empty or wraps"));
        };
        let mut flags = 0;
        if map.readable {
            flags |= DMA_MAP_READ;
        }
        if map.writable {
            flags |= DMA_MAP_WRITE;
        }
        let m = DmaMapMsg {
            argsz: DmaMapMsg::SIZE as u32,
            flags,
            offset: if map.fd >= 0 { map.offset } else { 0 },
            address: map.iova,
            size: map.size,
        };
        let fds: &[RawFd] = if map.fd >= 0 {
            std::slice::from_ref(&map.fd)
        } else {
            &[]
        };
        // Register first: the server may DMA as soon as it has the mapping.
        // Overlaps and the limit are checked under the same lock as the push,
        // so each entry is unique and a failed map removes its own entry only.
        {
            let mut table = self.inner.dma.write().unwrap_or_else(|p| p.into_inner());
            if table
                .iter()
                .any(|e| map.iova < e.iova + e.size && e.iova < end)
            {
                return Err(Error::Sys {
                    op: "DMA mapping overlaps another",
                    errno: libc::EEXIST,
                });
            }
            if table.len() >= self.server.max_dma_maps as usize {
                return Err(Error::Sys {
                    op: "more DMA mappings than max_dma_maps",
                    errno: libc::ENOSPC,
                });
            }
            table.push(DmaEntry {
                iova: map.iova,
                size: map.size,
                vaddr: map.vaddr,
                readable: map.readable,
                writable: map.writable,
            });
        }
        let r = self
            .inner
            .request(cmd::DMA_MAP, &[&m.encode()], fds, |_| Ok(()));
        if r.is_err() {
            let mut t = self.inner.dma.write().unwrap_or_else(|p| p.into_inner());
            t.retain(|e| e.iova != map.iova || e.size != map.size);
        }
        r
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
        let m = DmaUnmapMsg {
            argsz: DmaUnmapMsg::SIZE as u32,
            flags: 0,
            address: iova,
            size,
        };
        self.inner
            .request(cmd::DMA_UNMAP, &[&m.encode()], &[], |_| Ok(()))?;
        // As with type1 and the server: every mapping wholly inside the range
        // goes (128-bit ends, so a range may end exactly at 2^64).
        let end = iova as u128 + size as u128;
        let mut t = self.inner.dma.write().unwrap_or_else(|p| p.into_inner());
        t.retain(|e| !(e.iova >= iova && e.iova as u128 + e.size as u128 <= end));
        Ok(())
    }
}
