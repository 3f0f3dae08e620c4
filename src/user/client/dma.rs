//! The server's DMA requests: DMA_READ and DMA_WRITE into the client's memory.
//!
//! This module owns the table of mappings the server may reach (filled by
//! `dma_map`, emptied by `dma_unmap`), the checks that keep every access
//! inside one of them, and the twin-socket thread, which serves these
//! requests on a socket of their own even while no request is in flight.
//! Without a twin socket they arrive on the main socket and the elected
//! reader serves them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::multiplex::Inner;
use crate::device::DmaMap;
use crate::error::{Error, Result};
use crate::user::proto::{cmd, DmaAccess, Header};
use crate::user::version;
use crate::user::wire::{send_msg, set_timeouts, Receiver};

/// One mapping the server may reach: `[iova, iova + size)` at `vaddr`.
#[derive(Clone, Copy)]
pub(super) struct DmaEntry {
    iova: u64,
    size: u64,
    vaddr: u64,
    readable: bool,
    writable: bool,
}

impl Inner {
    /// Enters `map` in the table, before the server hears of it: the server
    /// may DMA as soon as it has the mapping. Overlaps and the limit are
    /// checked under the same lock as the push, so each entry is unique and
    /// a failed map removes its own entry only (see [`Inner::dma_forget`]).
    pub(super) fn dma_register(&self, map: &DmaMap, end: u64, max_maps: u32) -> Result<()> {
        let mut table = self.dma.write().unwrap_or_else(|p| p.into_inner());
        if table
            .iter()
            .any(|e| map.iova < e.iova + e.size && e.iova < end)
        {
            return Err(Error::Errno {
                op: "DMA mapping overlaps another",
                errno: libc::EEXIST,
            });
        }
        if table.len() >= max_maps as usize {
            return Err(Error::Errno {
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
        Ok(())
    }

    /// Removes the entry of a mapping the server refused.
    pub(super) fn dma_forget(&self, iova: u64, size: u64) {
        let mut t = self.dma.write().unwrap_or_else(|p| p.into_inner());
        t.retain(|e| e.iova != iova || e.size != size);
    }

    /// Removes every mapping wholly inside `[iova, iova + size)`, as type1
    /// and the server do (128-bit ends, so a range may end exactly at 2^64).
    pub(super) fn dma_forget_range(&self, iova: u64, size: u64) {
        let end = iova as u128 + size as u128;
        let mut t = self.dma.write().unwrap_or_else(|p| p.into_inner());
        t.retain(|e| !(e.iova >= iova && e.iova as u128 + e.size as u128 <= end));
    }

    /// Answers a server-to-client command.
    pub(super) fn serve_dma(&self, sock: BorrowedFd<'_>, h: &Header, p: &[u8]) -> Result<()> {
        let mut data = Vec::new();
        let result = self.dma_access(h, p, &mut data);
        if h.no_reply() {
            return Ok(());
        }
        // On the main socket, other threads send requests meanwhile: a
        // reply must not interleave with them.
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

    /// Carries out one DMA_READ (into `data`) or DMA_WRITE, after checking
    /// it lies wholly inside one mapping that permits it.
    fn dma_access(&self, h: &Header, p: &[u8], data: &mut Vec<u8>) -> Result<DmaAccess> {
        let a = DmaAccess::decode(p)?;
        let write = match h.command {
            cmd::DMA_READ => false,
            cmd::DMA_WRITE => true,
            _ => {
                return Err(Error::Errno {
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
            .ok_or(Error::Errno {
                op: "DMA outside the client's mappings",
                errno: libc::EFAULT,
            })?;
        if (write && !e.writable) || (!write && !e.readable) || e.vaddr == 0 {
            return Err(Error::Errno {
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

/// The twin socket and the thread serving DMA requests on it.
pub(super) struct TwinSocket {
    /// A duplicate of the thread's fd, kept to shut the socket down.
    fd: OwnedFd,
    thread: JoinHandle<()>,
}

impl TwinSocket {
    /// Starts serving the server's DMA requests on `fd`.
    pub(super) fn spawn(
        inner: Arc<Inner>,
        fd: OwnedFd,
        timeout: Duration,
        max_msg: usize,
    ) -> Result<Self> {
        // No receive timeout: the thread waits for requests for as long as
        // the link lives. Sends may block at most the request timeout.
        set_timeouts(fd.as_fd(), None, Some(timeout))?;
        let keep = fd.try_clone().map_err(|e| Error::io("dup", e))?;
        let thread = std::thread::Builder::new()
            .name("vfio-user-dma".into())
            .spawn(move || twin_loop(inner, fd, max_msg))
            .map_err(|e| Error::io("spawn", e))?;
        Ok(TwinSocket { fd: keep, thread })
    }

    /// Shuts the socket down, which ends the thread's receive, and joins it.
    pub(super) fn stop(self) {
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = self.thread.join();
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
        // Replies never come on the twin socket: the client sends no
        // requests there.
        if m.header.is_reply() {
            continue;
        }
        let (h, p) = (m.header, m.payload.to_vec());
        if inner.serve_dma(sock.as_fd(), &h, &p).is_err() || inner.closed.load(Ordering::SeqCst) {
            return;
        }
    }
}
