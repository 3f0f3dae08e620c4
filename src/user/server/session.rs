//! One client session: the command loop that receives a command, hands it to
//! its handler (in `commands`) and sends the reply, and the session's state.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use super::context::Ctx;
use super::dma::DmaSpace;
use super::doorbells::DoorbellFds;
use super::irq::IrqState;
use super::link::Link;
use super::migration::MigrationSession;
use super::model::DeviceModel;
use super::remote::Mailbox;
use super::{ServerConfig, SessionEnd};
use crate::device::RegionInfo;
use crate::error::{Error, Result};
use crate::user::proto::{cmd, Header};
use crate::user::version::VersionCaps;
use crate::user::wire::set_timeouts;

/// fds that go with a reply.
pub(super) enum ReplyFd {
    None,
    Shared(Arc<OwnedFd>),
    Owned(OwnedFd),
    /// fds the session keeps (its doorbell eventfds), lent to one reply.
    Lent(Vec<RawFd>),
}

impl ReplyFd {
    fn raw(&self) -> Vec<RawFd> {
        match self {
            ReplyFd::None => Vec::new(),
            ReplyFd::Shared(f) => vec![f.as_raw_fd()],
            ReplyFd::Owned(f) => vec![f.as_raw_fd()],
            ReplyFd::Lent(fds) => fds.clone(),
        }
    }
}

/// A session's state, owned from the accept to the end of the session; the
/// model and the configuration are lent to each step (see [`Session`]), so
/// a session can be served in steps from an event loop as well as by `run`.
pub(super) struct SessionState {
    pub(super) link: Link,
    pub(super) dma: DmaSpace,
    pub(super) irqs: IrqState,
    /// Region info read from the model once, when the session starts.
    pub(super) regions: Vec<RegionInfo>,
    /// The capabilities agreed by VERSION; `None` before it.
    pub(super) negotiated: Option<VersionCaps>,
    inbuf: Vec<u8>,
    /// The reply payload being built.
    pub(super) out: Vec<u8>,
    /// The migration state machine and the stream in flight.
    pub(super) migration: MigrationSession,
    /// The eventfds of the model's doorbells, made for this session.
    pub(super) doorbells: DoorbellFds,
    /// Requests of other threads, when the server hands out handles.
    pub(super) remote: Option<Arc<Mailbox>>,
    /// The session's wait for input while no unmask eventfd is watched:
    /// its socket, doorbells and mailbox, made on the first such wait.
    waiter: Option<Epoll>,
}

impl SessionState {
    /// The state of a new session on `sock` for `model`.
    pub(super) fn new<M: DeviceModel>(
        sock: Arc<OwnedFd>,
        model: &M,
        config: &ServerConfig,
        remote: Option<Arc<Mailbox>>,
    ) -> Self {
        let info = model.device_info();
        let regions: Vec<RegionInfo> = (0..info.num_regions.min(1024))
            .map(|i| model.region_info(i).unwrap_or_default())
            .collect();
        let irq_infos: Vec<_> = (0..info.num_irqs.min(64))
            .filter_map(|i| model.irq_info(i))
            .collect();
        let doorbells = DoorbellFds::new(model.doorbells(), &regions);
        SessionState {
            link: Link::new(sock, config),
            dma: DmaSpace::new(config.max_dma_maps as usize),
            irqs: IrqState::new(&irq_infos),
            regions,
            negotiated: None,
            inbuf: Vec::new(),
            out: Vec::new(),
            migration: MigrationSession::default(),
            doorbells,
            remote,
            waiter: None,
        }
    }
}

/// A session at work: its state, with the model and the configuration lent
/// for one step or for a whole `run`. The command handlers are in `commands`.
pub(super) struct Session<'a, M: DeviceModel> {
    pub(super) st: &'a mut SessionState,
    pub(super) model: &'a mut M,
    pub(super) config: &'a ServerConfig,
}

/// What one step of a session did.
pub(super) enum Step {
    /// A client command was handled.
    Handled,
    /// No command was ready (eventfds may have been served).
    Idle,
    /// The session is over; `finish` it.
    End(SessionEnd),
}

/// Runs model code; a panic in it becomes an `EIO` error for this command.
fn model_call<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(Error::Errno {
        op: "device model panicked",
        errno: libc::EIO,
    }))
}

impl<'a, M: DeviceModel> Session<'a, M> {
    pub(super) fn new(
        st: &'a mut SessionState,
        model: &'a mut M,
        config: &'a ServerConfig,
    ) -> Self {
        Session { st, model, config }
    }

    /// Serves until the client leaves or breaks the protocol.
    pub(super) fn run(mut self) -> SessionEnd {
        if let Err(e) = self.start() {
            return SessionEnd::Dropped(e);
        }
        let end = self.serve_until_end();
        self.finish();
        end
    }

    /// Takes blocking steps until the session ends; `finish` it then.
    pub(super) fn serve_until_end(&mut self) -> SessionEnd {
        loop {
            if let Step::End(end) = self.step(true) {
                return end;
            }
        }
    }

    /// Prepares a new session's socket and opens the mailbox to it.
    pub(super) fn start(&mut self) -> Result<()> {
        // Receives wait without a socket timeout (see `next_command`); a
        // client that stops reading still cannot stall a send for longer.
        set_timeouts(self.st.link.sock.as_fd(), None, Some(self.config.timeout))?;
        if let Some(m) = &self.st.remote {
            m.open();
        }
        Ok(())
    }

    /// Handles the next client command, waiting for it when `block`, and
    /// serves the eventfds (unmask, doorbell, mailbox) that fired meanwhile.
    /// Without `block` it never waits for input: a command not (fully)
    /// there yet stays buffered for a later step.
    pub(super) fn step(&mut self, block: bool) -> Step {
        match self.next_command(block) {
            Ok(Some((hdr, fds))) => {
                // Doorbells rung before this message was sent reach the
                // model before it does.
                self.ring_doorbells();
                if let Err(e) = self.dispatch(hdr, fds) {
                    return Step::End(SessionEnd::Dropped(e));
                }
                if let Some(why) = self.st.link.broken.take() {
                    return Step::End(SessionEnd::Dropped(Error::Protocol(why)));
                }
                // Replies held while more input was buffered go out once
                // none is left, in one sendmsg.
                if !self.st.link.has_pending_input() {
                    if let Err(e) = self.st.link.flush_replies() {
                        return Step::End(SessionEnd::Dropped(e));
                    }
                }
                self.serve_remote();
                Step::Handled
            }
            Ok(None) => {
                self.ring_doorbells();
                self.serve_remote();
                Step::Idle
            }
            Err(Error::Disconnected) => Step::End(SessionEnd::Disconnected),
            Err(e) => Step::End(SessionEnd::Dropped(e)),
        }
    }

    /// Ends the session: requests of other threads fail, the device runs
    /// again, the client's memory and interrupts are let go.
    pub(super) fn finish(&mut self) {
        if let Some(m) = &self.st.remote {
            m.close();
        }
        if let Err(e) = model_call(|| self.migration_to_running()) {
            log::warn!(target: "vfio_io::server", "resuming the device after the session: {e}");
        }
        self.st.dma.clear();
        self.st.irqs.clear();
    }

    /// The next client command into `inbuf`; `None` when only an unmask eventfd
    /// fired or the receive timed out. With a spin budget, non-blocking
    /// receives come first (a partial message stays buffered between them);
    /// once the budget is spent, the ordinary wait and blocking receive.
    fn next_command(&mut self, block: bool) -> Result<Option<(Header, Vec<OwnedFd>)>> {
        if let Some(q) = self.st.link.queued.pop_front() {
            self.st.inbuf = q.payload;
            return Ok(Some((q.header, q.fds)));
        }
        // Without unmask eventfds to serve first, a message already there
        // is taken by one non-blocking receive, without a poll: the
        // doorbells and the mailbox are looked at after it all the same.
        let unmask_watched = self.st.irqs.has_unmask_fds();
        if !block {
            if !self.st.link.rx.has_message() && unmask_watched && !self.wait_readable(0)? {
                return Ok(None);
            }
            return self.recv_now();
        }
        let spin_until = self
            .config
            .spin
            .filter(|d| !d.is_zero())
            .map(|d| Instant::now() + d);
        // With nothing but the socket to wait on, the receive itself blocks,
        // with no timeout: a timed socket wait arms a kernel timer on every
        // command, and there is nothing else to look at meanwhile (a stop
        // shuts the socket down, which ends the wait). With eventfds or the
        // mailbox watched, the bounded wait is theirs, and the receive takes
        // only what is there, so a partial message cannot hold them up.
        let socket_only =
            !unmask_watched && self.st.doorbells.is_empty() && self.st.remote.is_none();
        loop {
            let spinning = spin_until.is_some_and(|t| Instant::now() < t);
            let ms = self.config.timeout.as_millis().min(i32::MAX as u128) as i32;
            if !spinning && !self.st.link.rx.has_message() && !self.wait_readable(ms)? {
                return Ok(None);
            }
            let nonblock = spinning || !socket_only;
            match self.st.link.rx.recv(self.st.link.sock.as_fd(), nonblock) {
                Ok(m) => {
                    self.st.inbuf.clear();
                    self.st.inbuf.extend_from_slice(m.payload);
                    return Ok(Some((m.header, m.fds)));
                }
                Err(Error::Timeout) if spinning => {
                    if self.st.remote.as_ref().is_some_and(|m| m.pending()) {
                        return Ok(None);
                    }
                    std::hint::spin_loop()
                }
                Err(Error::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message if it is already (wholly) there, without waiting.
    fn recv_now(&mut self) -> Result<Option<(Header, Vec<OwnedFd>)>> {
        match self.st.link.rx.recv(self.st.link.sock.as_fd(), true) {
            Ok(m) => {
                self.st.inbuf.clear();
                self.st.inbuf.extend_from_slice(m.payload);
                Ok(Some((m.header, m.fds)))
            }
            Err(Error::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `wait_readable` without unmask eventfds: waits in an epoll
    /// set of the socket, the doorbells and the mailbox, made once for the
    /// session (those fds stay the same all along), which costs less per
    /// wait than a poll() that registers every fd anew.
    fn wait_in_epoll(&mut self, ms: i32) -> Result<bool> {
        const SOCKET: u64 = 1;
        let epoll = match &mut self.st.waiter {
            Some(e) => e,
            None => {
                let e = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                    .map_err(|e| Error::sys("epoll_create", e))?;
                let add = |fd: BorrowedFd<'_>, token| {
                    e.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
                        .map_err(|e| Error::sys("epoll_ctl add", e))
                };
                add(self.st.link.sock.as_fd(), SOCKET)?;
                for fd in self.st.doorbells.fds() {
                    add(fd, 0)?;
                }
                if let Some(m) = &self.st.remote {
                    add(m.fd(), 0)?;
                }
                self.st.waiter.insert(e)
            }
        };
        let mut events = [EpollEvent::empty(); 16];
        match epoll.wait(
            &mut events,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) => Ok(events[..n].iter().any(|e| e.data() == SOCKET)),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(Error::sys("epoll_wait", e)),
        }
    }

    /// Waits up to `ms` until the socket is readable, serving unmask
    /// eventfds meanwhile; a doorbell eventfd or the mailbox's ends the wait
    /// too (the caller serves them). Without any such eventfd, returns at
    /// once and lets recvmsg block.
    fn wait_readable(&mut self, ms: i32) -> Result<bool> {
        let fired: Vec<(u32, u32)>;
        let sock_ready: bool;
        {
            let watched = self.st.irqs.unmask_fds();
            if watched.is_empty() {
                if self.st.doorbells.is_empty() && self.st.remote.is_none() {
                    return Ok(true);
                }
                drop(watched);
                return self.wait_in_epoll(ms);
            }
            let mut pfds = Vec::with_capacity(watched.len() + 1);
            pfds.push(PollFd::new(self.st.link.sock.as_fd(), PollFlags::POLLIN));
            pfds.extend(
                watched
                    .iter()
                    .map(|(_, _, fd)| PollFd::new(*fd, PollFlags::POLLIN)),
            );
            pfds.extend(
                self.st
                    .doorbells
                    .fds()
                    .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
            );
            // Readable when another thread queued a request: the wait ends,
            // and the loop serves it.
            if let Some(m) = &self.st.remote {
                pfds.push(PollFd::new(m.fd(), PollFlags::POLLIN));
            }
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
                .zip(&pfds[1..=watched.len()])
                .filter(|(_, p)| ready(p))
                .map(|((i, v, fd), _)| {
                    let mut b = [0u8; 8];
                    let _ = nix::unistd::read(fd, &mut b);
                    (*i, *v)
                })
                .collect();
        }
        for (i, v) in fired {
            self.st.irqs.unmask(i, v);
        }
        Ok(sock_ready)
    }

    /// Runs the requests other threads queued, if any, with the session's
    /// context.
    fn serve_remote(&mut self) {
        let Some(m) = self.st.remote.as_ref().filter(|m| m.pending()) else {
            return;
        };
        let mut ctx = Ctx {
            link: &mut self.st.link,
            dma: &mut self.st.dma,
            irqs: &mut self.st.irqs,
        };
        m.serve(&mut ctx);
    }

    /// Delivers every signalled doorbell to the model as the writes it
    /// stands for. A failed write is logged: no client waits for it.
    fn ring_doorbells(&mut self) {
        for w in self.st.doorbells.drain() {
            let b = w.bell;
            let data = &w.data[..b.size as usize];
            let (model, mut ctx, _) = self.model_ctx();
            for _ in 0..w.times {
                if let Err(e) =
                    model_call(|| model.region_write(&mut ctx, b.region, b.offset, data))
                {
                    log::warn!(target: "vfio_io::server", "doorbell {b:?}: {e}");
                    break;
                }
            }
        }
    }

    /// Handles one received message: a command gets its reply (unless it
    /// asked for none); a stray reply is dropped. `Err` ends the session.
    fn dispatch(&mut self, hdr: Header, fds: Vec<OwnedFd>) -> Result<()> {
        if hdr.is_reply() {
            // A reply to nothing we wait for (late, or never asked): ignored,
            // its fds closed.
            self.st.link.discard_reply(&hdr);
            return Ok(());
        }
        if self.config.trace {
            log::info!(target: "vfio_io::server", "{} id={} size={} flags={:#x} fds={}",
                cmd::name(hdr.command), hdr.id, hdr.size, hdr.flags, fds.len());
        }
        let payload = std::mem::take(&mut self.st.inbuf);
        self.st.out.clear();
        let result = if self.st.negotiated.is_none() && hdr.command != cmd::VERSION {
            Err(Error::Protocol(format!(
                "{} before VERSION",
                cmd::name(hdr.command)
            )))
        } else {
            model_call(|| self.handle(&hdr, &payload, fds))
        };
        self.st.inbuf = payload;
        if !hdr.no_reply() {
            self.send_reply(&hdr, &result)?;
        }
        match result {
            Err(e @ (Error::Protocol(_) | Error::Disconnected)) => Err(e),
            Err(e) => {
                self.log_failure(&hdr, &e);
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    /// Sends the reply to `req`: the payload in `out` with its fd, or the
    /// error's errno alone.
    fn send_reply(&mut self, req: &Header, result: &Result<ReplyFd>) -> Result<()> {
        let st = &mut *self.st;
        match result {
            Ok(fd) => {
                let raw = fd.raw();
                let h = Header::reply(req, st.out.len()).encode();
                st.link.reply(&[&h, &st.out], &raw)
            }
            Err(e) => {
                let h = Header::error_reply(req, e.errno()).encode();
                st.link.reply(&[&h], &[])
            }
        }
    }

    /// Logs a command that failed without ending the session. A traced
    /// session shows the error replies too: a client such as QEMU may carry
    /// on after one, and a command log without them would read as a clean
    /// session.
    fn log_failure(&self, hdr: &Header, e: &Error) {
        if self.config.trace {
            log::info!(target: "vfio_io::server", "{} id={} failed with errno {}: {e}",
                cmd::name(hdr.command), hdr.id, e.errno());
        } else {
            log::debug!(target: "vfio_io::server", "{} failed: {e}", cmd::name(hdr.command));
        }
    }
}
