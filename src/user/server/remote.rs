//! Interrupts and DMA asked for by threads other than the one serving the
//! session: each request is queued in the server's mailbox and its eventfd
//! signalled; the session, which polls that eventfd alongside its socket,
//! runs the request with its own context between client commands and hands
//! the result back. The session's state thus stays single-threaded.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::model::DeviceContext;
use crate::error::{Error, Result};

/// What another thread asks the session to do.
enum Request {
    Irq { index: u32, vector: u32 },
    DmaRead { iova: u64, len: usize },
    DmaWrite { iova: u64, data: Vec<u8> },
}

/// What a finished request gives back: whether an interrupt was signalled,
/// the bytes read.
#[derive(Default)]
struct Outcome {
    fired: bool,
    data: Vec<u8>,
}

/// One request and the place its result is handed back.
struct Job {
    request: Request,
    result: Mutex<Option<Result<Outcome>>>,
    done: Condvar,
}

impl Job {
    fn finish(&self, r: Result<Outcome>) {
        *lock(&self.result) = Some(r);
        self.done.notify_all();
    }
}

/// The requests waiting for the session; `open` while a session serves.
struct Queue {
    open: bool,
    jobs: VecDeque<Arc<Job>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server's mailbox: the queue, a flag the session's spin loop reads, and
/// the eventfd its blocking wait polls.
pub(super) struct Mailbox {
    queue: Mutex<Queue>,
    pending: AtomicBool,
    efd: EventFd,
}

impl Mailbox {
    pub(super) fn new() -> Result<Self> {
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::sys("mailbox eventfd", e))?;
        Ok(Mailbox {
            queue: Mutex::new(Queue {
                open: false,
                jobs: VecDeque::new(),
            }),
            pending: AtomicBool::new(false),
            efd,
        })
    }

    /// The eventfd that becomes readable when a request is queued.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Whether requests may be waiting (cheap: for the spin loop).
    pub(super) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Makes the session look at the mailbox soon, as if a request came.
    pub(super) fn wake(&self) {
        self.pending.store(true, Ordering::Release);
        let _ = self.efd.write(1);
    }

    /// A session starts: requests are accepted from now on.
    pub(super) fn open(&self) {
        lock(&self.queue).open = true;
    }

    /// The session ends: requests still queued fail with `Disconnected`,
    /// and new ones are refused until the next session.
    pub(super) fn close(&self) {
        let jobs = {
            let mut q = lock(&self.queue);
            q.open = false;
            std::mem::take(&mut q.jobs)
        };
        for job in jobs {
            job.finish(Err(Error::Disconnected));
        }
    }

    /// Runs every queued request with `ctx`, in the order they came.
    pub(super) fn serve(&self, ctx: &mut dyn DeviceContext) {
        // Cleared before the queue is drained, so a request queued meanwhile
        // sets them again and is not missed.
        self.pending.store(false, Ordering::Release);
        let _ = self.efd.read();
        loop {
            let Some(job) = lock(&self.queue).jobs.pop_front() else {
                return;
            };
            let r = catch_unwind(AssertUnwindSafe(|| run(&job.request, &mut *ctx))).unwrap_or(Err(
                Error::Errno {
                    op: "remote request panicked",
                    errno: libc::EIO,
                },
            ));
            job.finish(r);
        }
    }

    /// Queues `request`, waits for its result. A request still queued after
    /// `timeout` is withdrawn (`Timeout`); one the session has begun is
    /// waited for, as its DMA is bounded by the session's own DMA timeout.
    fn call(&self, request: Request, timeout: Duration) -> Result<Outcome> {
        let job = Arc::new(Job {
            request,
            result: Mutex::new(None),
            done: Condvar::new(),
        });
        {
            let mut q = lock(&self.queue);
            if !q.open {
                return Err(Error::Disconnected);
            }
            q.jobs.push_back(job.clone());
        }
        self.wake();
        let deadline = Instant::now() + timeout;
        let mut result = lock(&job.result);
        loop {
            if let Some(r) = result.take() {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(result);
                let withdrawn = {
                    let mut q = lock(&self.queue);
                    let before = q.jobs.len();
                    q.jobs.retain(|j| !Arc::ptr_eq(j, &job));
                    q.jobs.len() != before
                };
                if withdrawn {
                    return Err(Error::Timeout);
                }
                // Taken by the session (or finished): its result comes.
                result = lock(&job.result);
                while result.is_none() {
                    result = job
                        .done
                        .wait_timeout(result, timeout)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                continue;
            }
            result = job
                .done
                .wait_timeout(result, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Runs one request with the session's context.
fn run(request: &Request, ctx: &mut dyn DeviceContext) -> Result<Outcome> {
    match request {
        Request::Irq { index, vector } => Ok(Outcome {
            fired: ctx.trigger_irq(*index, *vector),
            data: Vec::new(),
        }),
        Request::DmaRead { iova, len } => {
            let mut data = vec![0u8; *len];
            ctx.dma_read(*iova, &mut data)?;
            Ok(Outcome { fired: false, data })
        }
        Request::DmaWrite { iova, data } => ctx.dma_write(*iova, data).map(|()| Outcome::default()),
    }
}

/// Raises interrupts and does DMA on a [`Server`](super::Server)'s current
/// session from any thread, while another thread serves it.
///
/// Each call is queued for the serving thread, which runs it between client
/// commands with the session's own state (so it is ordered with them), and
/// waits for the result. A call that the session has not begun within the
/// server's `dma_timeout` (it is busy in a long model call, perhaps one
/// waiting for this very thread) fails with [`Error::Timeout`]; without a
/// connected client it fails with [`Error::Disconnected`] (`ENOTCONN`) at once.
/// A model's own code, which runs on the serving thread, uses its
/// [`DeviceContext`] instead: a handle called there waits for itself.
#[derive(Clone)]
pub struct ServerHandle {
    mailbox: Arc<Mailbox>,
    timeout: Duration,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    pub(super) fn new(mailbox: Arc<Mailbox>, timeout: Duration) -> Self {
        ServerHandle { mailbox, timeout }
    }

    /// Signals the eventfd the client attached to `vector` of IRQ `index`,
    /// as [`DeviceContext::trigger_irq`]: `true` when one was signalled,
    /// `false` when none is attached or the vector is masked.
    pub fn trigger_irq(&self, index: u32, vector: u32) -> Result<bool> {
        let r = self
            .mailbox
            .call(Request::Irq { index, vector }, self.timeout)?;
        Ok(r.fired)
    }

    /// Reads client memory at `iova` into `buf`, as [`DeviceContext::dma_read`].
    pub fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len();
        let r = self
            .mailbox
            .call(Request::DmaRead { iova, len }, self.timeout)?;
        buf.copy_from_slice(&r.data);
        Ok(())
    }

    /// Writes `buf` into client memory at `iova`, as [`DeviceContext::dma_write`]
    /// (logged for dirty-page tracking).
    pub fn dma_write(&self, iova: u64, buf: &[u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let data = buf.to_vec();
        self.mailbox
            .call(Request::DmaWrite { iova, data }, self.timeout)
            .map(|_| ())
    }
}
