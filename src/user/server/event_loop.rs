//! Serving from the caller's event loop: one fd ([`Server::poll_fd`]) that
//! becomes readable when the server has work, and [`Server::dispatch`],
//! which does that work without waiting for input.
//!
//! The fd is an epoll set owned by the server. Without a session it holds
//! the listening socket; with one, the session socket, the mailbox eventfd
//! and the doorbell eventfds (all owned by the server, taken out before they
//! close), and duplicates of the client's unmask eventfds, made afresh on
//! every dispatch: a duplicate is ours, so it is always taken out of the set
//! before it closes, whatever the client's own fd does meanwhile.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use super::context::Ctx;
use super::model::{DeviceContext, DeviceModel};
use super::session::{Session, SessionState, Step};
use super::{Server, SessionEnd};
use crate::error::{Error, Result};

/// Most client commands one dispatch handles; more wait for the next one
/// (the poll fd stays readable), so a flooding client cannot starve the
/// caller's loop.
const MAX_COMMANDS_PER_DISPATCH: usize = 64;

/// The epoll set behind [`Server::poll_fd`].
pub(super) struct Poller {
    epoll: Epoll,
    /// Duplicates of the session's unmask eventfds currently in the set.
    unmask: Vec<OwnedFd>,
}

fn add(epoll: &Epoll, fd: BorrowedFd<'_>) -> Result<()> {
    epoll
        .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, 0))
        .map_err(|e| Error::sys("epoll_ctl add", e))
}

impl Poller {
    fn new(listener: &UnixListener) -> Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| Error::sys("epoll_create", e))?;
        add(&epoll, listener.as_fd())?;
        Ok(Poller {
            epoll,
            unmask: Vec::new(),
        })
    }

    /// The server-owned fds of a session: its socket, mailbox, doorbells.
    fn session_fds(st: &SessionState) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![st.link.sock.as_fd()];
        fds.extend(st.remote.as_ref().map(|m| m.fd()));
        fds.extend(st.doorbells.fds());
        fds
    }

    /// Watches session `st` instead of the listener.
    fn watch_session(&mut self, listener: &UnixListener, st: &SessionState) -> Result<()> {
        let _ = self.epoll.delete(listener.as_fd());
        for fd in Self::session_fds(st) {
            add(&self.epoll, fd)?;
        }
        self.sync_unmask(st)
    }

    /// Watches the listener again; `st` is still open, so each of its fds
    /// is surely taken out of the set.
    fn watch_listener(&mut self, listener: &UnixListener, st: &SessionState) -> Result<()> {
        for fd in Self::session_fds(st) {
            let _ = self.epoll.delete(fd);
        }
        for fd in self.unmask.drain(..) {
            let _ = self.epoll.delete(&fd);
        }
        add(&self.epoll, listener.as_fd())
    }

    /// Replaces the unmask duplicates with ones of the session's current fds.
    fn sync_unmask(&mut self, st: &SessionState) -> Result<()> {
        for fd in self.unmask.drain(..) {
            let _ = self.epoll.delete(&fd);
        }
        for (_, _, fd) in st.irqs.unmask_fds() {
            let dup = fd
                .try_clone_to_owned()
                .map_err(|e| Error::io("dup unmask eventfd", e))?;
            add(&self.epoll, dup.as_fd())?;
            self.unmask.push(dup);
        }
        Ok(())
    }
}

/// Whether `listener` has a client waiting, without waiting for one.
fn client_waiting(listener: &UnixListener) -> Result<bool> {
    let mut pfd = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    match poll(&mut pfd, PollTimeout::ZERO) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(Error::sys("poll", e)),
    }
}

impl<M: DeviceModel> Server<M> {
    /// An fd that becomes readable when [`Server::dispatch`] has work: a
    /// client to accept, a command, an eventfd of the session, a request of
    /// another thread. It belongs to the server and stays the same for the
    /// server's life; it is level-triggered, so a caller polls it, calls
    /// `dispatch` when readable, and polls again.
    pub fn poll_fd(&mut self) -> Result<BorrowedFd<'_>> {
        // Its eventfd wakes the loop for other threads' requests, and for
        // input read ahead of a dispatch.
        self.mailbox()?;
        let poller = match self.poller.take() {
            Some(p) => p,
            None => Poller::new(&self.listener)?,
        };
        Ok(self.poller.insert(poller).epoll.0.as_fd())
    }

    /// Does what is ready without waiting for input: accepts a waiting
    /// client, or handles the commands (up to a bound; the poll fd stays
    /// readable for the rest), eventfds and other threads' requests already
    /// there. A client leaving or dropped ends its session here (`Ok`); the
    /// next client is accepted by a later call. A command that makes the
    /// model do DMA by message waits for the client's reply as in
    /// [`Server::serve`]. After [`ServerStopper::stop`](super::ServerStopper)
    /// it ends the session and fails with `ESHUTDOWN`.
    pub fn dispatch(&mut self) -> Result<()> {
        self.poll_fd()?;
        if self.stop.load(Ordering::SeqCst) {
            self.end_live();
            return Err(Error::Errno {
                op: "server stopped",
                errno: libc::ESHUTDOWN,
            });
        }
        match self.live.take() {
            None => self.accept_live(),
            Some(mut st) => {
                let mut session = Session::new(&mut st, &mut self.model, &self.config);
                let mut end = None;
                for _ in 0..MAX_COMMANDS_PER_DISPATCH {
                    match session.step(false) {
                        // Nothing more read ahead: rather than a receive
                        // that would find the socket empty, return; input
                        // still coming keeps the poll fd readable.
                        Step::Handled if !session.st.link.has_pending_input() => break,
                        Step::Handled => {}
                        Step::Idle => break,
                        Step::End(e) => {
                            end = Some(e);
                            break;
                        }
                    }
                }
                self.live = Some(st);
                match end {
                    Some(SessionEnd::Dropped(e)) => {
                        log::warn!(target: "vfio_io::server", "client dropped: {e}");
                        self.end_live();
                    }
                    Some(_) => {
                        log::debug!(target: "vfio_io::server", "client disconnected");
                        self.end_live();
                    }
                    None => self.after_dispatch()?,
                }
                Ok(())
            }
        }
    }

    /// Runs `f` with the context of a session served through
    /// [`Server::dispatch`], between dispatches: the caller's loop thread
    /// raising an interrupt or doing DMA itself. `Disconnected` without such
    /// a session.
    pub fn with_context<R>(&mut self, f: impl FnOnce(&mut dyn DeviceContext) -> R) -> Result<R> {
        let st = self.live.as_mut().ok_or(Error::Disconnected)?;
        let r = f(&mut Ctx {
            link: &mut st.link,
            dma: &mut st.dma,
            irqs: &mut st.irqs,
        });
        self.after_dispatch()?;
        Ok(r)
    }

    /// Accepts a waiting client, if any, as the live session.
    fn accept_live(&mut self) -> Result<()> {
        if !client_waiting(&self.listener)? {
            return Ok(());
        }
        let stream = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(Error::io("accept", e)),
        };
        let sock = Arc::new(OwnedFd::from(stream));
        let mut st =
            SessionState::new(sock.clone(), &self.model, &self.config, self.remote.clone());
        if let Err(e) = Session::new(&mut st, &mut self.model, &self.config).start() {
            log::warn!(target: "vfio_io::server", "client dropped: {e}");
            return Ok(());
        }
        if let Some(p) = &mut self.poller {
            p.watch_session(&self.listener, &st)?;
        }
        self.set_active(Some(sock));
        self.model.client_connected();
        self.live = Some(st);
        Ok(())
    }

    /// Keeps the poll fd true to the live session: its current unmask
    /// eventfds, and readable while input already read waits to be handled.
    fn after_dispatch(&mut self) -> Result<()> {
        let (Some(st), Some(p)) = (&self.live, &mut self.poller) else {
            return Ok(());
        };
        p.sync_unmask(st)?;
        if st.link.has_pending_input() {
            if let Some(m) = &st.remote {
                m.wake();
            }
        }
        Ok(())
    }

    /// Ends the live session, if any: the device is told, the poll fd
    /// watches the listener again.
    pub(super) fn end_live(&mut self) {
        let Some(mut st) = self.live.take() else {
            return;
        };
        Session::new(&mut st, &mut self.model, &self.config).finish();
        if let Some(p) = &mut self.poller {
            if let Err(e) = p.watch_listener(&self.listener, &st) {
                log::warn!(target: "vfio_io::server", "event loop: {e}");
            }
        }
        drop(st);
        self.set_active(None);
        self.model.client_disconnected();
    }
}

impl<M: DeviceModel> Drop for Server<M> {
    /// A session left by [`Server::dispatch`] ends as any other: the model
    /// is told, and other threads' requests fail instead of waiting.
    fn drop(&mut self) {
        self.end_live();
    }
}
