//! The vfio-user client against a scripted, mostly hostile fake server, from
//! the handshake on: after VERSION and discovery the harness drives the
//! public [`DeviceIo`] API (region reads and writes, posted writes, SET_IRQS
//! with real eventfds, DMA map/unmap with sealed memfds) while the fake
//! server answers from the input and sends DMA_READ/DMA_WRITE commands of its
//! own into the client's mapped and unmapped ranges.
//!
//! Input: a mode byte (bit 0 the client proposes twin sockets, bit 1 its
//! max_data_xfer_size is 4096, bit 2 the fake server offers twin sockets);
//! the driver script's length (u16 LE) and the driver script, one op per call
//! into the client (see `drive`); then the fake server's script, one step per
//! request (see `Fake::answer`). When that script ends the fake server hangs
//! up, so every run ends promptly.
#![no_main]

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vfio_io::device::{
    DeviceInfo, DmaMap, IrqAction, IrqData, IrqInfo, IrqSet, RegionCap, RegionInfo, SparseArea,
};
use vfio_io::memory::DmaBuffer;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{
    self, cmd, DmaAccess, DmaMapMsg, DmaUnmapMsg, Header, RegionAccess, FLAG_ERROR, FLAG_NO_REPLY,
    FLAG_TYPE_REPLY,
};
use vfio_io::user::wire::{send_msg, set_timeouts, Receiver};
use vfio_io::DeviceIo;
use vfio_io_fuzz::{
    eventfd, frame, readable_within, sealed_memfd, server_version_payload, Cursor, FdLeakCheck,
    MAX_INPUT,
};

/// Size of the sealed memfd the fake server offers as a region fd.
const REGION_FILE_SIZE: u64 = 64 * 1024;
/// Most driver ops per input.
const MAX_OPS: usize = 64;
/// Eventfds the driver attaches with SET_IRQS.
const EVENTFDS: usize = 4;
/// How long the fake server waits for the client to answer one of its DMA
/// commands (the client only reads while a request of its own is waiting).
const DMA_REPLY_WAIT: Duration = Duration::from_millis(300);
/// Total time per input the fake server may spend waiting for DMA replies,
/// so a long chain of DMA commands the client no longer reads stays cheap.
const DMA_WAIT_BUDGET: Duration = Duration::from_secs(1);

/// One message as received: header, payload and fds.
type Msg = (Header, Vec<u8>, Vec<OwnedFd>);

/// The fake server's side of the socket and what it has learnt.
struct Fake<'a> {
    c: Cursor<'a>,
    sock: OwnedFd,
    rx: Receiver,
    /// Offer twin sockets in the VERSION reply.
    offer_twin: bool,
    twin: Option<(OwnedFd, Receiver)>,
    /// Client commands that came while waiting for a DMA reply.
    pending: VecDeque<Msg>,
    /// The DMA ranges the client mapped (as far as we answered DMA_MAP).
    maps: Vec<(u64, u64)>,
    /// A region fd the client can map: sealed, so it never shrinks.
    region_fd: OwnedFd,
    /// An fd that is not mappable, for replies that carry an unexpected fd.
    junk_fd: OwnedFd,
    /// The client's end of the twin socket until the VERSION reply is sent.
    twin_peer: Option<OwnedFd>,
    /// Until when DMA replies are still waited for.
    dma_wait_until: Instant,
}

/// Whether every mmap area of `info` lies inside the region file, so the
/// client's mapping never reaches past the file's end (see the report in
/// `valid_region_info`).
fn fits_region_file(info: &RegionInfo) -> bool {
    info.mmap_areas().iter().all(|a| {
        info.offset
            .checked_add(a.offset)
            .and_then(|o| o.checked_add(a.size))
            .is_some_and(|end| end <= REGION_FILE_SIZE)
    })
}

impl Fake<'_> {
    /// The next client message: a held-back one, or one off the socket.
    fn next(&mut self) -> Option<Msg> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        match self.rx.recv(self.sock.as_fd(), false) {
            Ok(m) => Some((m.header, m.payload.to_vec(), m.fds)),
            Err(_) => None,
        }
    }

    /// A region info reply as the client asked, fields from the input. The
    /// region fd goes along only when the areas fit inside it: the client
    /// maps a server's region fd without checking its size, and a read past
    /// the file's end would kill it with SIGBUS.
    fn valid_region_info(&mut self, payload: &[u8], fds: &mut Vec<RawFd>) -> Vec<u8> {
        let (argsz, index) = proto::decode_region_info_request(payload).unwrap_or((32, 0));
        let c = &mut self.c;
        let mut caps = Vec::new();
        let k = c.u8();
        if k & 1 != 0 {
            let n = usize::from(c.u8() % 4);
            caps.push(RegionCap::SparseMmap(
                (0..n)
                    .map(|i| SparseArea {
                        offset: (i as u64) << (c.u8() % 48),
                        size: u64::from(c.u16()),
                    })
                    .collect(),
            ));
        }
        if k & 2 != 0 {
            caps.push(RegionCap::Type {
                region_type: c.u32(),
                subtype: c.u32(),
            });
        }
        if k & 4 != 0 {
            caps.push(RegionCap::MsixMappable);
        }
        let info = RegionInfo {
            index,
            flags: c.u32() & 0xf,
            size: u64::from(c.u32()),
            offset: u64::from(c.u16() % 16) << 12,
            caps,
            fd: None,
        };
        if k & 8 != 0 {
            fds.clear();
            fds.push(if fits_region_file(&info) {
                self.region_fd.as_raw_fd()
            } else {
                self.junk_fd.as_raw_fd()
            });
        }
        proto::encode_region_info(&info, argsz as usize)
    }

    /// The payload of a valid answer to `req` (fields from the input), and
    /// the fds that go with it.
    fn valid(
        &mut self,
        req: &Header,
        payload: &[u8],
        got: &[OwnedFd],
        fds: &mut Vec<RawFd>,
    ) -> Vec<u8> {
        let c = &mut self.c;
        match req.command {
            cmd::VERSION => {
                if self.offer_twin {
                    let (ours, theirs) = UnixStream::pair().expect("socketpair");
                    let ours: OwnedFd = ours.into();
                    set_timeouts(ours.as_fd(), Some(DMA_REPLY_WAIT), Some(DMA_REPLY_WAIT))
                        .expect("twin timeouts");
                    self.twin = Some((ours, Receiver::new(1 << 21)));
                    // The client's end, index 0: sent, then closed here.
                    let theirs: OwnedFd = theirs.into();
                    fds.insert(0, theirs.as_raw_fd());
                    self.twin_peer = Some(theirs);
                    return server_version_payload(Some(0));
                }
                server_version_payload(None)
            }
            cmd::DEVICE_GET_INFO => proto::encode_device_info(
                16,
                &DeviceInfo {
                    flags: u32::from(c.u8() & 3),
                    num_regions: u32::from(c.u8() % 10),
                    num_irqs: u32::from(c.u8() % 6),
                },
            )
            .to_vec(),
            cmd::DEVICE_GET_REGION_INFO => self.valid_region_info(payload, fds),
            cmd::DEVICE_GET_IRQ_INFO => {
                let index = payload
                    .get(8..12)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
                    .unwrap_or(0);
                proto::encode_irq_info(
                    16,
                    &IrqInfo {
                        index,
                        flags: u32::from(c.u8() & 0xf),
                        count: u32::from(c.u8() % 4),
                    },
                )
                .to_vec()
            }
            cmd::DEVICE_SET_IRQS => {
                // The device fires whatever eventfds it was given.
                for fd in got {
                    let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
                }
                Vec::new()
            }
            cmd::REGION_READ => match RegionAccess::decode(payload) {
                Ok(a) => {
                    let mut p = a.encode().to_vec();
                    let n = (a.count as usize).min(1 << 20);
                    let data = c.bytes(n);
                    p.extend_from_slice(data);
                    p.resize(RegionAccess::SIZE + n, 0xa5);
                    p
                }
                Err(_) => Vec::new(),
            },
            cmd::REGION_WRITE => RegionAccess::decode(payload)
                .map(|a| a.encode().to_vec())
                .unwrap_or_default(),
            cmd::REGION_WRITE_MULTI => {
                let n = proto::decode_write_multi(payload).map_or(0, |w| w.len() as u64);
                n.to_ne_bytes().to_vec()
            }
            cmd::DMA_MAP => Vec::new(),
            cmd::DMA_UNMAP => match DmaUnmapMsg::decode(payload) {
                Ok(m) => {
                    let end = m.address as u128 + m.size as u128;
                    self.maps
                        .retain(|&(a, s)| !(a >= m.address && a as u128 + s as u128 <= end));
                    m.encode().to_vec()
                }
                Err(_) => Vec::new(),
            },
            cmd::DEVICE_FEATURE => {
                let flags = proto::decode_feature(payload).map_or(0, |f| f.1);
                let n = usize::from(c.u8() % 16);
                let mut p = proto::encode_feature((8 + n) as u32, flags).to_vec();
                p.extend(std::iter::repeat_n(0x5a, n));
                p
            }
            cmd::DEVICE_GET_REGION_IO_FDS => {
                let index = payload
                    .get(8..12)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
                    .unwrap_or(0);
                let subs: Vec<proto::IoFdSubRegion> = (0..c.u8() % 3)
                    .map(|i| proto::IoFdSubRegion {
                        offset: u64::from(c.u16()),
                        size: u64::from(c.u8() % 9),
                        fd_index: u32::from(i),
                        kind: 0,
                        flags: 0,
                        data: 0,
                    })
                    .collect();
                for _ in &subs {
                    fds.push(self.junk_fd.as_raw_fd());
                }
                proto::encode_io_fds(4096, index, &subs)
            }
            _ => Vec::new(),
        }
    }

    /// Sends a well-formed DMA_READ or DMA_WRITE into a mapped range (or
    /// anywhere) and waits, briefly, for the client's answer.
    fn dma_command(&mut self) {
        let c = &mut self.c;
        let k = c.u8();
        let write = k & 1 != 0;
        let address = match self.maps.len() {
            n if n > 0 && k & 2 != 0 => {
                let (iova, size) = self.maps[usize::from(c.u8()) % n];
                iova.wrapping_add(u64::from(c.u16()) % size.saturating_add(64).max(1))
            }
            _ => u64::from(c.u32()) << (c.u8() % 40),
        };
        let count = u64::from(c.u16() % 8200);
        let mut p = DmaAccess { address, count }.encode().to_vec();
        if write {
            // The right amount of data, or (bit 2) some other amount.
            let len = if k & 4 == 0 {
                count as usize
            } else {
                usize::from(c.u8())
            };
            let data = c.bytes(len);
            p.extend_from_slice(data);
            p.resize(DmaAccess::SIZE + len, 0x3c);
        }
        let id = c.u16();
        let command = if write { cmd::DMA_WRITE } else { cmd::DMA_READ };
        let mut h = Header::command(id, command, p.len());
        if k & 8 != 0 {
            h.flags |= FLAG_NO_REPLY;
        }
        let msg = frame(&h, &p);
        let wait = self
            .dma_wait_until
            .saturating_duration_since(Instant::now())
            .min(DMA_REPLY_WAIT);
        match self.twin.as_mut() {
            Some((t, trx)) => {
                if send_msg(t.as_fd(), &[&msg], &[]).is_err() || h.flags & FLAG_NO_REPLY != 0 {
                    return;
                }
                while readable_within(t.as_fd(), wait) {
                    match trx.recv(t.as_fd(), false) {
                        Ok(m) if m.header.is_reply() && m.header.id == id => return,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
            None => {
                if send_msg(self.sock.as_fd(), &[&msg], &[]).is_err()
                    || h.flags & FLAG_NO_REPLY != 0
                {
                    return;
                }
                // The reply comes on the main socket among the client's own
                // commands, which wait their turn.
                while readable_within(self.sock.as_fd(), wait) {
                    match self.rx.recv(self.sock.as_fd(), false) {
                        Ok(m) if m.header.is_reply() => {
                            if m.header.id == id {
                                return;
                            }
                        }
                        Ok(m) => self
                            .pending
                            .push_back((m.header, m.payload.to_vec(), m.fds)),
                        Err(_) => return,
                    }
                }
            }
        }
    }

    /// What the fake server does with one request; false: hang up.
    fn answer(&mut self, req: &Header, payload: &[u8], got: Vec<OwnedFd>) -> bool {
        // The client registers a mapping before it sends DMA_MAP, so DMA
        // commands sent before the answer may already use it.
        if req.command == cmd::DMA_MAP {
            if let Ok(m) = DmaMapMsg::decode(payload) {
                self.maps.push((m.address, m.size));
            }
        }
        loop {
            let op = self.c.u8();
            let mut fds: Vec<RawFd> = Vec::new();
            if op & 0x80 != 0 {
                // Attach an fd to whatever goes out: one nobody expected.
                fds.push(self.junk_fd.as_raw_fd());
            }
            let out: Vec<u8> = match op % 10 {
                // A valid answer, so the client gets further.
                0 | 1 => {
                    let p = self.valid(req, payload, &got, &mut fds);
                    frame(&Header::reply(req, p.len()), &p)
                }
                // The right id and command, fuzzed flags, error and payload.
                2 | 3 => {
                    let c = &mut self.c;
                    let mut h = Header::reply(req, 0);
                    h.flags = FLAG_TYPE_REPLY | (u32::from(c.u8()) << 4);
                    h.error = u32::from(c.u8());
                    let len = usize::from(c.u16() % 1024);
                    let p = c.bytes(len);
                    h.size = (proto::HEADER_SIZE + p.len()) as u32;
                    frame(&h, p)
                }
                // An error reply.
                4 => {
                    let mut h = Header::error_reply(req, i32::from(self.c.u8()));
                    h.flags |= FLAG_ERROR;
                    frame(&h, &[])
                }
                // Raw bytes, header included, exactly as in the input.
                5 => {
                    let len = usize::from(self.c.u16() % 2048);
                    self.c.bytes(len).to_vec()
                }
                // Any server-to-client command first, then the next step
                // answers the request.
                6 => {
                    let c = &mut self.c;
                    let command = c.u16() % 20;
                    let len = usize::from(c.u8());
                    let p = c.bytes(len);
                    let h = Header::command(c.u16(), command, p.len());
                    if send_msg(self.sock.as_fd(), &[&frame(&h, p)], &fds).is_err() {
                        return false;
                    }
                    if self.c.is_empty() {
                        return false;
                    }
                    continue;
                }
                // A well-formed DMA command first, then the next step answers.
                7 => {
                    self.dma_command();
                    if self.c.is_empty() {
                        return false;
                    }
                    continue;
                }
                // No answer: the client's request times out.
                8 => return true,
                // Hang up.
                _ => return false,
            };
            let sent = send_msg(self.sock.as_fd(), &[&out], &fds).is_ok();
            self.twin_peer = None;
            return sent;
        }
    }
}

/// Memory the driver maps for DMA; it outlives the client, which may keep
/// a mapping whose DMA_UNMAP the fake server refused.
#[derive(Default)]
struct Arena {
    heap: Vec<Vec<u8>>,
    buffers: Vec<DmaBuffer>,
    fds: Vec<OwnedFd>,
}

/// Calls into the connected client, one op per step of the driver script;
/// every result is acceptable, only a panic, hang or leak is a finding.
fn drive(d: &mut Cursor<'_>, client: &Client, eventfds: &[OwnedFd], arena: &mut Arena) {
    let info = client.device_info().unwrap_or(DeviceInfo {
        flags: 0,
        num_regions: 0,
        num_irqs: 0,
    });
    // One past the last index too, which the client must refuse itself.
    let region = |d: &mut Cursor<'_>| u32::from(d.u8()) % (info.num_regions + 1);
    let irq = |d: &mut Cursor<'_>| u32::from(d.u8()) % (info.num_irqs + 1);
    for _ in 0..MAX_OPS {
        if d.is_empty() {
            return;
        }
        match d.u8() % 12 {
            0 => {
                let (index, offset) = (region(d), u64::from(d.u16()));
                let mut buf = vec![0u8; usize::from(d.u16()) % 9000];
                let _ = client.region_read(index, offset, &mut buf);
            }
            // A write, then (op 2) posted.
            op @ (1 | 2) => {
                let (index, offset) = (region(d), u64::from(d.u16()));
                let len = usize::from(d.u16()) % 9000;
                let mut data = d.bytes(len).to_vec();
                data.resize(len, 0x77);
                let _ = client.region_write(index, offset, &data, op == 2);
            }
            3 => {
                let (index, start) = (irq(d), u32::from(d.u8() % 4));
                let k = d.u8();
                let count = usize::from(k % 4) + 1;
                // Bits 4-7: which vectors detach (-1) instead of attaching.
                let fds: Vec<RawFd> = (0..count)
                    .map(|i| match k & (0x10 << i) {
                        0 => eventfds[(usize::from(k >> 2) + i) % EVENTFDS].as_raw_fd(),
                        _ => -1,
                    })
                    .collect();
                let _ = client.set_irqs(&IrqSet {
                    index,
                    start,
                    count: count as u32,
                    action: action(k >> 2),
                    data: IrqData::Eventfds(&fds),
                });
            }
            4 => {
                let (index, start, count) = (irq(d), u32::from(d.u8() % 4), u32::from(d.u8() % 4));
                let k = d.u8();
                let bools = d.bytes(count as usize).to_vec();
                let data = if k & 1 != 0 {
                    IrqData::Bool(&bools)
                } else {
                    IrqData::None
                };
                let _ = client.set_irqs(&IrqSet {
                    index,
                    start,
                    count,
                    action: action(k >> 1),
                    data,
                });
            }
            5 => dma_map(d, client, arena),
            6 => {
                let iova = u64::from(d.u8() % 20) << 12;
                let size = u64::from(d.u8() % 8) << 12;
                let _ = client.dma_unmap(iova, size);
            }
            7 => {
                let _ = client.irq_info(irq(d));
            }
            8 => {
                let _ = client.reset();
            }
            9 => {
                let flags = d.u32();
                let mut data = vec![0u8; usize::from(d.u8() % 64)];
                let _ = client.device_feature(flags, &mut data);
            }
            10 => {
                let writes: Vec<proto::MultiWrite> = (0..d.u8() % 4)
                    .map(|_| proto::MultiWrite {
                        offset: u64::from(d.u16()),
                        region: region(d),
                        count: u32::from(d.u8() % 10),
                        data: [d.u8(), 0, 0, 0, 0, 0, 0, 1],
                    })
                    .collect();
                let _ = client.region_write_multi(&writes);
            }
            _ => {
                let _ = client.region_io_fds(region(d));
            }
        }
    }
}

fn action(k: u8) -> IrqAction {
    match k % 3 {
        0 => IrqAction::Trigger,
        1 => IrqAction::Mask,
        _ => IrqAction::Unmask,
    }
}

/// One dma_map: 4 to 16 KiB at an IOVA from a small set (so maps overlap and
/// unmaps hit), backed by a heap buffer of exactly that size (AddressSanitizer
/// then catches any access past it) with a sealed memfd, or a DmaBuffer
/// (memfd mapped here), or no fd, or no address (the server must use the fd).
fn dma_map(d: &mut Cursor<'_>, client: &Client, arena: &mut Arena) {
    let k = d.u8();
    let size = 4096 * (1 + usize::from((k >> 4) % 4));
    let iova = u64::from(d.u8() % 16) << 12;
    let (vaddr, fd) = match k & 3 {
        0 | 2 => {
            let mut mem = vec![0u8; size];
            let vaddr = mem.as_mut_ptr() as u64;
            arena.heap.push(mem);
            let fd = if k & 3 == 0 {
                let fd = sealed_memfd(size as i64);
                let raw = fd.as_raw_fd();
                arena.fds.push(fd);
                raw
            } else {
                -1
            };
            (vaddr, fd)
        }
        1 => {
            let Ok(buf) = DmaBuffer::new(size) else {
                return;
            };
            let m = buf.dma_map(iova);
            arena.buffers.push(buf);
            (m.vaddr, m.fd)
        }
        _ => {
            let fd = sealed_memfd(size as i64);
            let raw = fd.as_raw_fd();
            arena.fds.push(fd);
            (0, raw)
        }
    };
    let map = DmaMap {
        iova,
        size: size as u64,
        vaddr,
        fd,
        offset: 0,
        readable: k & 4 == 0,
        writable: k & 8 == 0,
    };
    // SAFETY: vaddr is 0 or the start of `size` bytes the arena owns, and
    // the arena is dropped only after the client, so the memory stays valid
    // for as long as the client may reach it.
    let _ = unsafe { client.dma_map(&map) };
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let leaks = FdLeakCheck::start();
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let driver_len = usize::from(c.u16());
    let mut driver = c.split(driver_len);
    let config = ClientConfig {
        timeout: Duration::from_millis(50),
        twin_socket: mode & 1 != 0,
        max_data_xfer_size: if mode & 2 != 0 { 4096 } else { 1 << 20 },
        spin: None,
    };
    let eventfds: Vec<OwnedFd> = (0..EVENTFDS).map(|_| eventfd()).collect();
    let mut arena = Arena::default();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    std::thread::scope(|scope| {
        let server = scope.spawn(move || {
            let sock: OwnedFd = theirs.into();
            // Bounds the fake server's wait: a client that neither asks nor
            // hangs up would otherwise keep it (and the run) forever.
            set_timeouts(
                sock.as_fd(),
                Some(Duration::from_secs(3)),
                Some(Duration::from_secs(3)),
            )
            .expect("timeouts");
            let mut fake = Fake {
                c,
                sock,
                rx: Receiver::new(1 << 21),
                offer_twin: mode & 4 != 0,
                twin: None,
                pending: VecDeque::new(),
                maps: Vec::new(),
                region_fd: sealed_memfd(REGION_FILE_SIZE as i64),
                junk_fd: eventfd(),
                twin_peer: None,
                dma_wait_until: Instant::now() + DMA_WAIT_BUDGET,
            };
            while !fake.c.is_empty() {
                let Some((hdr, payload, fds)) = fake.next() else {
                    break;
                };
                // Replies (to DMA commands whose wait ran out) and posted
                // writes get no answer.
                if hdr.is_reply() || hdr.no_reply() {
                    continue;
                }
                if !fake.answer(&hdr, &payload, fds) {
                    break;
                }
            }
            // Dropping the sockets here is the hang-up.
        });
        // Ok and Err are both acceptable answers to a hostile server; only
        // a panic or a hang is a finding. Dropping the client closes it.
        if let Ok(client) = Client::from_stream(ours, config) {
            drive(&mut driver, &client, &eventfds, &mut arena);
        }
        server.join().expect("fake server thread panicked");
    });
    drop((eventfds, arena));
    leaks.check();
});
