//! One client session: the command loop, the handlers, and the device
//! context through which a model reaches the client's memory and eventfds.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::dma::{DmaSpace, DmaTarget};
use super::irq::IrqState;
use super::model::{DeviceContext, DeviceModel};
use super::{ServerConfig, SessionEnd};
use crate::device::{
    IrqAction, RegionInfo, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use crate::error::{Error, Result};
use crate::user::proto::{
    self, cmd, DmaAccess, DmaMapMsg, DmaUnmapMsg, Header, IrqSetMsg, RegionAccess,
};
use crate::user::version::{self, VersionCaps};
use crate::user::wire::{send_msg, set_timeouts, Receiver};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
};

/// A client command held back while the server waited for a DMA reply.
struct Queued {
    header: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// The sockets of a session and the commands queued on them.
struct Link<'a> {
    sock: BorrowedFd<'a>,
    rx: Receiver,
    twin_sock: Option<OwnedFd>,
    twin_rx: Receiver,
    queued: VecDeque<Queued>,
    max_queued: usize,
    next_id: u16,
    /// How long one DMA request waits for its reply, in all.
    dma_timeout: Duration,
    /// (id, command) of DMA requests given up on: their ids are not reused
    /// while a late reply may still come, so a late reply never answers a
    /// newer request. Bounded: the oldest is forgotten first.
    abandoned: VecDeque<(u16, u16)>,
    /// The client's max_data_xfer_size: bounds DMA messages we send.
    peer_max_xfer: usize,
    /// Set when a server-to-client request broke the link (flood, malformed
    /// or lost stream). The model may swallow the error it gets, as edu does
    /// for a failed DMA, so the session checks this after each command.
    broken: Option<String>,
}

/// Most abandoned DMA request ids remembered at once.
const MAX_ABANDONED: usize = 64;

/// Waits until `sock` is readable or `left` has passed; `false` on timeout.
/// An interrupted wait counts as readable: the caller reads without blocking
/// and comes back.
fn wait_readable_for(sock: BorrowedFd<'_>, left: Duration) -> Result<bool> {
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    let mut pfd = [PollFd::new(sock, PollFlags::POLLIN)];
    match poll(
        &mut pfd,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    ) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(true),
        Err(e) => Err(Error::sys("poll", e)),
    }
}

impl Link<'_> {
    /// Sends a server-to-client command and waits up to the DMA timeout for
    /// its reply, queueing client commands that arrive meanwhile on a shared
    /// socket. A client that does not answer in time costs this request only
    /// (`Error::Timeout`); a failed send or a broken stream ends the session.
    fn request(&mut self, command: u16, parts: &[&[u8]], reply_into: &mut [u8]) -> Result<()> {
        let id = self.next_request_id();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hdr = Header::command(id, command, len).encode();
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&hdr);
        all.extend_from_slice(parts);
        let sock = match &self.twin_sock {
            Some(s) => s.as_fd(),
            None => self.sock,
        };
        if let Err(e) = send_msg(sock, &all, &[]) {
            // A send cut short, even by a timeout, leaves part of a message
            // in the stream: the link is gone.
            self.broken.get_or_insert_with(|| e.to_string());
            return Err(e);
        }
        let r = self.await_reply(id, command, reply_into);
        match &r {
            Err(Error::Timeout) => self.abandon(id, command),
            Err(e @ (Error::Protocol(_) | Error::Disconnected | Error::Sys { .. })) => {
                self.broken.get_or_insert_with(|| e.to_string());
            }
            _ => {}
        }
        r
    }

    /// The id of the next request: never one whose late reply may still come.
    fn next_request_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if !self.abandoned.iter().any(|&(id, _)| id == self.next_id) {
                return self.next_id;
            }
        }
    }

    fn abandon(&mut self, id: u16, command: u16) {
        if self.abandoned.len() >= MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back((id, command));
        log::debug!(target: "vfio_io::server",
            "{} id={id}: no reply within {:?}, given up", cmd::name(command), self.dma_timeout);
    }

    /// Notes a reply to no current request: a late one ends its abandonment.
    fn discard_reply(&mut self, h: &Header) {
        self.abandoned.retain(|&a| a != (h.id, h.command));
    }

    /// Waits for the reply to request `id`. Stale replies are skipped, client
    /// commands queued; the whole wait is bounded by the DMA timeout, however
    /// many commands arrive meanwhile.
    fn await_reply(&mut self, id: u16, command: u16, reply_into: &mut [u8]) -> Result<()> {
        let deadline = Instant::now() + self.dma_timeout;
        loop {
            let (sock, rx) = match &self.twin_sock {
                Some(s) => (s.as_fd(), &mut self.twin_rx),
                None => (self.sock, &mut self.rx),
            };
            if !rx.has_message() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !wait_readable_for(sock, left)? {
                    return Err(Error::Timeout);
                }
            }
            let m = match rx.recv(sock, true) {
                Ok(m) => m,
                Err(Error::Timeout) => continue, // part of a message so far
                Err(e) => return Err(e),
            };
            if m.header.is_reply() {
                if m.header.id != id || m.header.command != command {
                    let h = m.header;
                    self.discard_reply(&h);
                    continue;
                }
                if let Some(errno) = m.header.error_errno() {
                    return Err(Error::Remote { command, errno });
                }
                let want = DmaAccess::SIZE + reply_into.len();
                if command == cmd::DMA_READ {
                    if m.payload.len() != want {
                        return Err(Error::Protocol("DMA_READ reply of the wrong size".into()));
                    }
                    reply_into.copy_from_slice(&m.payload[DmaAccess::SIZE..]);
                }
                return Ok(());
            }
            if self.queued.len() >= self.max_queued {
                return Err(Error::Protocol(
                    "client flooded commands during a DMA request".into(),
                ));
            }
            self.queued.push_back(Queued {
                header: m.header,
                payload: m.payload.to_vec(),
                fds: m.fds,
            });
        }
    }

    fn dma_message(
        &mut self,
        iova: u64,
        read: Option<&mut [u8]>,
        write: Option<&[u8]>,
    ) -> Result<()> {
        let step = self.peer_max_xfer.max(1);
        if let Some(buf) = read {
            for (i, chunk) in buf.chunks_mut(step).enumerate() {
                let a = DmaAccess {
                    address: iova + (i * step) as u64,
                    count: chunk.len() as u64,
                };
                self.request(cmd::DMA_READ, &[&a.encode()], chunk)?;
            }
        }
        if let Some(buf) = write {
            for (i, chunk) in buf.chunks(step).enumerate() {
                let a = DmaAccess {
                    address: iova + (i * step) as u64,
                    count: chunk.len() as u64,
                };
                self.request(cmd::DMA_WRITE, &[&a.encode(), chunk], &mut [])?;
            }
        }
        Ok(())
    }
}

/// What a model sees of the session while it handles one request.
struct Ctx<'s, 'a> {
    link: &'s mut Link<'a>,
    dma: &'s DmaSpace,
    irqs: &'s mut IrqState,
}

impl DeviceContext for Ctx<'_, '_> {
    fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<()> {
        match self.dma.target(iova, buf.len(), false)? {
            DmaTarget::Mapped(m, off) => m.read(off, buf),
            DmaTarget::Message => self.link.dma_message(iova, Some(buf), None),
        }
    }

    fn dma_write(&mut self, iova: u64, buf: &[u8]) -> Result<()> {
        match self.dma.target(iova, buf.len(), true)? {
            DmaTarget::Mapped(m, off) => m.write(off, buf),
            DmaTarget::Message => self.link.dma_message(iova, None, Some(buf)),
        }
    }

    fn irq_enabled(&self, index: u32, vector: u32) -> bool {
        self.irqs.enabled(index, vector)
    }

    fn trigger_irq(&mut self, index: u32, vector: u32) -> bool {
        self.irqs.trigger(index, vector)
    }

    fn set_irq_level(&mut self, index: u32, vector: u32, asserted: bool) {
        self.irqs.set_level(index, vector, asserted)
    }
}

/// fds that go with a reply.
enum ReplyFd {
    None,
    Shared(Arc<OwnedFd>),
    Owned(OwnedFd),
}

pub(super) struct Session<'a, M: DeviceModel> {
    link: Link<'a>,
    model: &'a mut M,
    config: &'a ServerConfig,
    dma: DmaSpace,
    irqs: IrqState,
    regions: Vec<RegionInfo>,
    negotiated: Option<VersionCaps>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

fn model_call<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(Error::Sys {
        op: "device model panicked",
        errno: libc::EIO,
    }))
}

impl<'a, M: DeviceModel> Session<'a, M> {
    pub(super) fn new(sock: BorrowedFd<'a>, model: &'a mut M, config: &'a ServerConfig) -> Self {
        let info = model.device_info();
        let regions = (0..info.num_regions.min(1024))
            .map(|i| model.region_info(i).unwrap_or_default())
            .collect();
        let irq_infos: Vec<_> = (0..info.num_irqs.min(64))
            .filter_map(|i| model.irq_info(i))
            .collect();
        let max_msg = config.max_data_xfer_size as usize + 32 * 1024;
        Session {
            link: Link {
                sock,
                rx: Receiver::new(max_msg),
                twin_sock: None,
                twin_rx: Receiver::new(0),
                queued: VecDeque::new(),
                max_queued: config.max_queued,
                next_id: 0,
                dma_timeout: config.dma_timeout,
                abandoned: VecDeque::new(),
                peer_max_xfer: version::DEFAULT_MAX_DATA_XFER as usize,
                broken: None,
            },
            model,
            config,
            dma: DmaSpace::new(config.max_dma_maps as usize),
            irqs: IrqState::new(&irq_infos),
            regions,
            negotiated: None,
            inbuf: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Serves until the client leaves or breaks the protocol.
    pub(super) fn run(mut self) -> SessionEnd {
        if let Err(e) = set_timeouts(
            self.link.sock,
            Some(self.config.timeout),
            Some(self.config.timeout),
        ) {
            return SessionEnd::Dropped(e);
        }
        let end = loop {
            match self.next_command() {
                Ok(Some((hdr, fds))) => {
                    if let Err(e) = self.dispatch(hdr, fds) {
                        break SessionEnd::Dropped(e);
                    }
                    if let Some(why) = self.link.broken.take() {
                        break SessionEnd::Dropped(Error::Protocol(why));
                    }
                }
                Ok(None) => continue,
                Err(Error::Disconnected) => break SessionEnd::Disconnected,
                Err(e) => break SessionEnd::Dropped(e),
            }
        };
        self.dma.clear();
        self.irqs.clear();
        end
    }

    /// The next client command into `inbuf`; `None` when only an unmask eventfd
    /// fired or the receive timed out.
    fn next_command(&mut self) -> Result<Option<(Header, Vec<OwnedFd>)>> {
        if let Some(q) = self.link.queued.pop_front() {
            self.inbuf = q.payload;
            return Ok(Some((q.header, q.fds)));
        }
        if !self.link.rx.has_message() && !self.wait_readable()? {
            return Ok(None);
        }
        match self.link.rx.recv(self.link.sock, false) {
            Ok(m) => {
                self.inbuf.clear();
                self.inbuf.extend_from_slice(m.payload);
                Ok(Some((m.header, m.fds)))
            }
            Err(Error::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until the socket is readable, serving unmask eventfds meanwhile.
    /// Without unmask eventfds, returns at once and lets recvmsg block.
    fn wait_readable(&mut self) -> Result<bool> {
        let fired: Vec<(u32, u32)>;
        let sock_ready: bool;
        {
            let watched = self.irqs.unmask_fds();
            if watched.is_empty() {
                return Ok(true);
            }
            let mut pfds = Vec::with_capacity(watched.len() + 1);
            pfds.push(PollFd::new(self.link.sock, PollFlags::POLLIN));
            pfds.extend(
                watched
                    .iter()
                    .map(|(_, _, fd)| PollFd::new(*fd, PollFlags::POLLIN)),
            );
            let ms = self.config.timeout.as_millis().min(i32::MAX as u128) as i32;
            match poll(
                &mut pfds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return Ok(false),
                Err(e) => return Err(Error::sys("poll", e)),
            }
            let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            // The socket's readiness counts even when unmask fds fired: a
            // client may pass an fd that is always readable (a file, not an
            // eventfd), and answering only the unmasks would then starve the
            // socket forever, wedging the session and the server behind it.
            sock_ready = ready(&pfds[0]);
            fired = watched
                .iter()
                .zip(&pfds[1..])
                .filter(|(_, p)| ready(p))
                .map(|((i, v, fd), _)| {
                    let mut b = [0u8; 8];
                    let _ = nix::unistd::read(fd, &mut b);
                    (*i, *v)
                })
                .collect();
        }
        for (i, v) in fired {
            self.irqs.unmask(i, v);
        }
        Ok(sock_ready)
    }

    fn dispatch(&mut self, hdr: Header, fds: Vec<OwnedFd>) -> Result<()> {
        if hdr.is_reply() {
            // A reply to nothing we wait for (late, or never asked): ignored,
            // its fds closed.
            self.link.discard_reply(&hdr);
            return Ok(());
        }
        if self.config.trace {
            log::info!(target: "vfio_io::server", "{} id={} size={} flags={:#x} fds={}",
                cmd::name(hdr.command), hdr.id, hdr.size, hdr.flags, fds.len());
        }
        let payload = std::mem::take(&mut self.inbuf);
        self.out.clear();
        let result = if self.negotiated.is_none() && hdr.command != cmd::VERSION {
            Err(Error::Protocol(format!(
                "{} before VERSION",
                cmd::name(hdr.command)
            )))
        } else {
            model_call(|| self.handle(&hdr, &payload, fds))
        };
        self.inbuf = payload;
        let fatal = matches!(result, Err(Error::Protocol(_)) | Err(Error::Disconnected));
        let reply_fd = match &result {
            Ok(fd) => fd,
            Err(_) => &ReplyFd::None,
        };
        if !hdr.no_reply() {
            let raw: Option<RawFd> = match reply_fd {
                ReplyFd::None => None,
                ReplyFd::Shared(f) => Some(f.as_raw_fd()),
                ReplyFd::Owned(f) => Some(f.as_raw_fd()),
            };
            let fd_slice: &[RawFd] = match &raw {
                Some(f) => std::slice::from_ref(f),
                None => &[],
            };
            match &result {
                Ok(_) => {
                    let h = Header::reply(&hdr, self.out.len()).encode();
                    send_msg(self.link.sock, &[&h, &self.out], fd_slice)?;
                }
                Err(e) => {
                    let h = Header::error_reply(&hdr, e.errno()).encode();
                    send_msg(self.link.sock, &[&h], &[])?;
                }
            }
        }
        match result {
            Err(e) if fatal => Err(e),
            Err(e) => {
                // A traced session shows the error replies too: a client such
                // as QEMU may carry on after one, and a command log without
                // them would read as a clean session.
                if self.config.trace {
                    log::info!(target: "vfio_io::server", "{} id={} failed with errno {}: {e}",
                        cmd::name(hdr.command), hdr.id, e.errno());
                } else {
                    log::debug!(target: "vfio_io::server", "{} failed: {e}", cmd::name(hdr.command));
                }
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    fn handle(&mut self, hdr: &Header, p: &[u8], mut fds: Vec<OwnedFd>) -> Result<ReplyFd> {
        let expects_fds = matches!(hdr.command, cmd::DMA_MAP | cmd::DEVICE_SET_IRQS);
        if !expects_fds && !fds.is_empty() {
            return Err(Error::InvalidArgument(
                "fds sent with a command that takes none",
            ));
        }
        if fds.len() > self.config.max_msg_fds as usize {
            return Err(Error::InvalidArgument("more fds than max_msg_fds"));
        }
        let Session {
            link,
            model,
            dma,
            irqs,
            out,
            ..
        } = self;
        let mut ctx = Ctx { link, dma, irqs };
        match hdr.command {
            cmd::VERSION => return self.version(p),
            cmd::DMA_MAP => {
                let m = DmaMapMsg::decode(p)?;
                if fds.len() > 1 {
                    return Err(Error::InvalidArgument("DMA_MAP with more than one fd"));
                }
                self.dma.map(&m, fds.pop())?;
            }
            cmd::DMA_UNMAP => {
                let m = DmaUnmapMsg::decode(p)?;
                self.dma.unmap(m.address, m.size)?;
                out.extend_from_slice(
                    &DmaUnmapMsg {
                        argsz: DmaUnmapMsg::SIZE as u32,
                        ..m
                    }
                    .encode(),
                );
            }
            cmd::DEVICE_GET_INFO => {
                if p.len() < 16 {
                    return Err(Error::InvalidArgument("DEVICE_GET_INFO too short"));
                }
                out.extend_from_slice(&proto::encode_device_info(16, &model.device_info()));
            }
            cmd::DEVICE_GET_REGION_INFO => {
                let (argsz, index) = proto::decode_region_info_request(p)?;
                let info = model
                    .region_info(index)
                    .ok_or(Error::InvalidArgument("region index"))?;
                let bytes = proto::encode_region_info(&info, argsz as usize);
                let full = bytes.len() > proto::REGION_INFO_SIZE || argsz as usize >= bytes.len();
                out.extend_from_slice(&bytes);
                if info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && full {
                    if let Some(fd) = info.fd {
                        return Ok(ReplyFd::Shared(fd));
                    }
                }
            }
            cmd::DEVICE_GET_REGION_IO_FDS => {
                // argsz (room for the reply), flags, index, count; the spec
                // wants flags and count zero, and the reply needs 16 bytes.
                let field = |at: usize| {
                    p.get(at..at + 4)
                        .and_then(|s| s.try_into().ok())
                        .map(u32::from_ne_bytes)
                };
                let (Some(argsz), Some(flags), Some(index), Some(count)) =
                    (field(0), field(4), field(8), field(12))
                else {
                    return Err(Error::InvalidArgument("DEVICE_GET_REGION_IO_FDS too short"));
                };
                if argsz < 16 {
                    return Err(Error::InvalidArgument(
                        "DEVICE_GET_REGION_IO_FDS argsz below its reply's 16 bytes",
                    ));
                }
                if flags != 0 || count != 0 {
                    return Err(Error::InvalidArgument(
                        "DEVICE_GET_REGION_IO_FDS flags and count must be zero",
                    ));
                }
                if index as usize >= self.regions.len() {
                    return Err(Error::InvalidArgument("region index"));
                }
                out.extend_from_slice(&proto::encode_io_fds(argsz, index, &[]));
            }
            cmd::DEVICE_GET_IRQ_INFO => {
                let index = u32::from_ne_bytes(
                    p.get(8..12)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(Error::InvalidArgument("IRQ_INFO"))?,
                );
                let info = model
                    .irq_info(index)
                    .ok_or(Error::InvalidArgument("IRQ index"))?;
                out.extend_from_slice(&proto::encode_irq_info(16, &info));
            }
            cmd::DEVICE_SET_IRQS => {
                let m = IrqSetMsg::decode(p)?;
                let action = match m.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK {
                    VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
                    VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
                    VFIO_IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
                    _ => return Err(Error::InvalidArgument("SET_IRQS action")),
                };
                match m.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
                    VFIO_IRQ_SET_DATA_NONE if fds.is_empty() => ctx
                        .irqs
                        .set(m.index, action, m.start, m.count, None, None)?,
                    VFIO_IRQ_SET_DATA_BOOL if fds.is_empty() => {
                        let b = p
                            .get(proto::IRQ_SET_SIZE..proto::IRQ_SET_SIZE + m.count as usize)
                            .ok_or(Error::InvalidArgument("SET_IRQS bool data short"))?;
                        ctx.irqs
                            .set(m.index, action, m.start, m.count, Some(b), None)?
                    }
                    VFIO_IRQ_SET_DATA_EVENTFD => {
                        ctx.irqs
                            .set(m.index, action, m.start, m.count, None, Some(fds))?
                    }
                    _ => return Err(Error::InvalidArgument("SET_IRQS data type")),
                }
            }
            cmd::REGION_READ => {
                let a = RegionAccess::decode(p)?;
                let count = a.count as usize;
                Self::check_region_of(
                    &self.regions,
                    self.config,
                    a.region,
                    a.offset,
                    count,
                    false,
                )?;
                out.extend_from_slice(&a.encode());
                out.resize(RegionAccess::SIZE + count, 0);
                model.region_read(&mut ctx, a.region, a.offset, &mut out[RegionAccess::SIZE..])?;
            }
            cmd::REGION_WRITE => {
                let a = RegionAccess::decode(p)?;
                let data = &p[RegionAccess::SIZE..];
                if data.len() != a.count as usize {
                    return Err(Error::InvalidArgument(
                        "REGION_WRITE count differs from the data sent",
                    ));
                }
                Self::check_region_of(
                    &self.regions,
                    self.config,
                    a.region,
                    a.offset,
                    data.len(),
                    true,
                )?;
                model.region_write(&mut ctx, a.region, a.offset, data)?;
                out.extend_from_slice(&a.encode());
            }
            cmd::REGION_WRITE_MULTI => {
                if !self.negotiated.as_ref().is_some_and(|n| n.write_multiple) {
                    return Err(Error::InvalidArgument("REGION_WRITE_MULTI not negotiated"));
                }
                let writes = proto::decode_write_multi(p)?;
                for w in &writes {
                    let n = w.count as usize;
                    Self::check_region_of(&self.regions, self.config, w.region, w.offset, n, true)?;
                    model.region_write(&mut ctx, w.region, w.offset, &w.data[..n])?;
                }
                out.extend_from_slice(&(writes.len() as u64).to_ne_bytes());
            }
            cmd::DEVICE_RESET => model.reset(&mut ctx)?,
            cmd::DEVICE_FEATURE => {
                let (_argsz, flags, data) = proto::decode_feature(p)?;
                let reply = model.device_feature(flags, data)?;
                out.extend_from_slice(&proto::encode_feature((8 + reply.len()) as u32, flags));
                out.extend_from_slice(&reply);
            }
            cmd::DMA_READ | cmd::DMA_WRITE => {
                return Err(Error::InvalidArgument(
                    "DMA_READ/DMA_WRITE go from server to client",
                ))
            }
            _ => {
                return Err(Error::Sys {
                    op: "unknown vfio-user command",
                    errno: libc::ENOSYS,
                })
            }
        }
        Ok(ReplyFd::None)
    }

    fn check_region_of(
        regions: &[RegionInfo],
        config: &ServerConfig,
        index: u32,
        offset: u64,
        count: usize,
        write: bool,
    ) -> Result<()> {
        let r = regions
            .get(index as usize)
            .ok_or(Error::InvalidArgument("region index"))?;
        let flag = if write {
            VFIO_REGION_INFO_FLAG_WRITE
        } else {
            VFIO_REGION_INFO_FLAG_READ
        };
        if r.flags & flag == 0 {
            return Err(Error::InvalidArgument("region lacks the access permission"));
        }
        if count > config.max_data_xfer_size as usize {
            return Err(Error::InvalidArgument(
                "access larger than max_data_xfer_size",
            ));
        }
        match offset.checked_add(count as u64) {
            Some(end) if end <= r.size => Ok(()),
            _ => Err(Error::InvalidArgument("access past the region's end")),
        }
    }

    fn version(&mut self, p: &[u8]) -> Result<ReplyFd> {
        if self.negotiated.is_some() {
            return Err(Error::Protocol("second VERSION".into()));
        }
        let (major, _minor, json) = proto::decode_version(p)?;
        if major != version::MAJOR {
            return Err(Error::Protocol(format!(
                "client speaks major version {major}"
            )));
        }
        let theirs = VersionCaps::parse(json)?;
        let mut reply = VersionCaps::accept(&self.config.version_caps(), &theirs);
        self.link.peer_max_xfer = theirs.max_data_xfer_size as usize;
        let mut fd = ReplyFd::None;
        if reply.twin_socket {
            let (ours, client) = UnixStream::pair().map_err(|e| Error::io("socketpair", &e))?;
            let ours: OwnedFd = ours.into();
            set_timeouts(
                ours.as_fd(),
                Some(self.config.timeout),
                Some(self.config.timeout),
            )?;
            let max = theirs.max_data_xfer_size as usize + 64;
            self.link.twin_sock = Some(ours);
            self.link.twin_rx = Receiver::new(max);
            reply.twin_fd_index = Some(0);
            fd = ReplyFd::Owned(client.into());
        }
        self.out.extend_from_slice(&proto::encode_version(
            version::MAJOR,
            version::MINOR,
            &reply.to_json(),
        ));
        self.negotiated = Some(reply);
        Ok(fd)
    }
}
