//! The device side of vfio-user: serves a [`DeviceModel`] to one client at a
//! time on a listening UNIX socket, and the next one after a disconnect.

mod commands;
mod context;
mod dirty;
mod dma;
mod dma_logging;
mod doorbells;
mod event_loop;
mod irq;
mod link;
mod migration;
mod model;
mod remote;
mod session;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::Shutdown;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use dma::{ClientMemory, DmaRegion, DmaSpace};
pub use irq::IrqState;
pub use model::{DeviceContext, DeviceModel, Doorbell, Migratable};
pub use remote::ServerHandle;

use crate::error::{Error, Result};
use crate::user::version::{VersionCaps, DEFAULT_MAX_DATA_XFER};

/// Limits and features the server offers.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest data count of one read/write message (and of DMA messages sent).
    pub max_data_xfer_size: u32,
    /// Most fds the server accepts in one message.
    pub max_msg_fds: u32,
    /// Most simultaneous DMA mappings per client.
    pub max_dma_maps: u32,
    /// Offer twin-socket mode (server-to-client commands on their own socket).
    pub twin_socket: bool,
    /// Accept REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// How long a send to the client may take (longer ends the session), and
    /// how long the session waits for the next command before it looks at
    /// its eventfds and mailbox again (with none, it waits for the command).
    pub timeout: Duration,
    /// How long the server waits for the client's reply to one DMA_READ or
    /// DMA_WRITE it sent. Past it the model's DMA fails with `ETIMEDOUT`, the
    /// session goes on, and a late reply is discarded when it arrives.
    pub dma_timeout: Duration,
    /// Most client commands buffered while waiting for a DMA reply on the main socket.
    pub max_queued: usize,
    /// Log every command received at `info` level (target `vfio_io::server`).
    pub trace: bool,
    /// Polling mode: the session polls its socket with non-blocking receives
    /// for up to this long before it blocks for the next command (and for a
    /// DMA reply). On a core of its own this saves the wake-up of a blocked
    /// thread on every message, at the price of a busy CPU while it waits;
    /// unmask eventfds are looked at once the budget is spent. `None` (or
    /// zero): block at once.
    pub spin: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER,
            max_msg_fds: 16,
            max_dma_maps: 1024,
            twin_socket: true,
            write_multiple: true,
            timeout: Duration::from_secs(5),
            dma_timeout: Duration::from_secs(5),
            max_queued: 256,
            trace: false,
            spin: None,
        }
    }
}

impl ServerConfig {
    fn version_caps(&self) -> VersionCaps {
        VersionCaps {
            max_msg_fds: self.max_msg_fds,
            max_data_xfer_size: self.max_data_xfer_size,
            max_dma_maps: self.max_dma_maps,
            pgsizes: 4096,
            write_multiple: self.write_multiple,
            migration: None,
            twin_socket: self.twin_socket,
            twin_fd_index: None,
        }
    }
}

/// Stops a running [`Server`] from another thread or a signal handler thread.
///
/// It shares ownership of the listening socket and of the current session's
/// socket, so neither fd can be closed and its number reused by something
/// else while a `stop` is under way, even after the server is gone.
#[derive(Debug, Clone)]
pub struct ServerStopper {
    stop: Arc<AtomicBool>,
    listener: Arc<UnixListener>,
    active: Arc<Mutex<Option<Arc<OwnedFd>>>>,
}

impl ServerStopper {
    /// Asks the server to stop: the accept and the current session end promptly.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown() wakes threads blocked in accept()/recvmsg() on the socket.
        let _ = nix::sys::socket::shutdown(self.listener.as_raw_fd(), Shutdown::Both);
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = active.as_ref() {
            let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), Shutdown::Both);
        }
    }
}

/// How one client session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed the connection.
    Disconnected,
    /// The client broke the protocol or a limit; the connection was closed.
    Dropped(Error),
    /// The server was asked to stop.
    Stopped,
}

/// A vfio-user server for one device model.
pub struct Server<M: DeviceModel> {
    listener: Arc<UnixListener>,
    model: M,
    config: ServerConfig,
    stop: Arc<AtomicBool>,
    /// The current session's socket, shared with the stopper.
    active: Arc<Mutex<Option<Arc<OwnedFd>>>>,
    /// Requests of other threads; made by the first [`Server::handle`]
    /// or [`Server::poll_fd`].
    remote: Option<Arc<remote::Mailbox>>,
    /// The session served through [`Server::dispatch`], between calls.
    live: Option<session::SessionState>,
    /// The epoll set behind [`Server::poll_fd`], once asked for.
    poller: Option<event_loop::Poller>,
}

impl<M: DeviceModel> Server<M> {
    /// Listens on `path` (which must not exist).
    pub fn bind(path: impl AsRef<Path>, model: M, config: ServerConfig) -> Result<Self> {
        let listener =
            UnixListener::bind(path).map_err(|e| Error::io("bind vfio-user socket", e))?;
        Ok(Self::from_listener(listener, model, config))
    }

    /// Serves on an already listening socket.
    pub fn from_listener(listener: UnixListener, model: M, config: ServerConfig) -> Self {
        Server {
            listener: Arc::new(listener),
            model,
            config,
            stop: Arc::new(AtomicBool::new(false)),
            active: Arc::new(Mutex::new(None)),
            remote: None,
            live: None,
            poller: None,
        }
    }

    /// The server's mailbox, made on first use.
    fn mailbox(&mut self) -> Result<Arc<remote::Mailbox>> {
        Ok(match &self.remote {
            Some(m) => m.clone(),
            None => self
                .remote
                .insert(Arc::new(remote::Mailbox::new()?))
                .clone(),
        })
    }

    /// A handle that raises interrupts and does DMA on this server's
    /// current session from any thread (see [`ServerHandle`]). The first
    /// call makes the server's mailbox, an eventfd its sessions then watch:
    /// from then on a session waits in epoll_wait() before each receive, one
    /// more system call per command (3-7% of a 4-byte read's round trip in
    /// the `c-server` bench section).
    pub fn handle(&mut self) -> Result<ServerHandle> {
        let mailbox = match &self.remote {
            Some(m) => m.clone(),
            None => self
                .remote
                .insert(Arc::new(remote::Mailbox::new()?))
                .clone(),
        };
        Ok(ServerHandle::new(mailbox, self.config.dma_timeout))
    }

    /// A handle that stops this server.
    pub fn stopper(&self) -> ServerStopper {
        ServerStopper {
            stop: self.stop.clone(),
            listener: self.listener.clone(),
            active: self.active.clone(),
        }
    }

    /// Publishes (or withdraws) the session socket the stopper shuts down.
    fn set_active(&self, sock: Option<Arc<OwnedFd>>) {
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = sock;
    }

    /// The device model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Accepts one client and serves it until it leaves; a session begun
    /// by [`Server::dispatch`] is served to its end first.
    pub fn serve_one(&mut self) -> Result<SessionEnd> {
        if let Some(mut st) = self.live.take() {
            let end =
                session::Session::new(&mut st, &mut self.model, &self.config).serve_until_end();
            self.live = Some(st);
            self.end_live();
            if self.stop.load(Ordering::SeqCst) {
                return Ok(SessionEnd::Stopped);
            }
            return Ok(end);
        }
        let (stream, _) = loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(SessionEnd::Stopped);
            }
            match self.listener.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) if self.stop.load(Ordering::SeqCst) => return Ok(SessionEnd::Stopped),
                Err(e) => return Err(Error::io("accept", e)),
            }
        };
        let sock = Arc::new(OwnedFd::from(stream));
        self.set_active(Some(sock.clone()));
        if self.stop.load(Ordering::SeqCst) {
            let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), Shutdown::Both);
        }
        let remote = self.remote.clone();
        let mut state = session::SessionState::new(sock.clone(), &self.model, &self.config, remote);
        self.model.client_connected();
        let end = session::Session::new(&mut state, &mut self.model, &self.config).run();
        self.set_active(None);
        self.model.client_disconnected();
        if self.stop.load(Ordering::SeqCst) {
            return Ok(SessionEnd::Stopped);
        }
        Ok(end)
    }

    /// Serves clients one after another until stopped.
    pub fn serve(&mut self) -> Result<()> {
        loop {
            match self.serve_one()? {
                SessionEnd::Stopped => return Ok(()),
                SessionEnd::Disconnected => {
                    log::debug!(target: "vfio_io::server", "client disconnected")
                }
                SessionEnd::Dropped(e) => {
                    log::warn!(target: "vfio_io::server", "client dropped: {e}")
                }
            }
        }
    }
}
