//! Request multiplexing: many threads share one socket.
//!
//! This module owns the slots (a request's slot index and generation form its
//! message id), the election of the one thread that reads the socket, the
//! wait/notify between callers, and sending. Whichever waiting thread finds
//! the socket unowned becomes its reader: it files replies into their slots,
//! wakes their owners, and answers the server's DMA requests, so a lone caller
//! reads its own reply with no thread hand-off.
//!
//! With several requests in flight the server may answer them in one write:
//! the reader files every reply already received before it gives up the
//! role, and wakes only the owners of those replies (each waits on its
//! slot's own condvar), plus one waiter still without its reply to read next.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::dma::DmaEntry;
use super::ClientConfig;
use crate::error::{Error, Result};
use crate::user::proto::{cmd, Header};
use crate::user::wire::{send_msg, Receiver};

const SLOT_BITS: u32 = 6;
/// Most requests in flight at once on one client (the last slot id is kept
/// for posted writes, which get no reply).
pub const MAX_OUTSTANDING: usize = (1 << SLOT_BITS) - 1;
/// The message id of posted writes: no slot has it, so their (unexpected)
/// replies are dropped.
pub(super) const POSTED_ID: u16 = (1 << SLOT_BITS) - 1;

#[derive(Default)]
struct Slot {
    gen: u16,
    busy: bool,
    done: bool,
    /// Its owner sleeps on the slot's condvar (and has not been woken yet).
    sleeping: bool,
    /// Its owner was woken to take the reader role.
    handed: bool,
    header: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

pub(super) struct State {
    slots: Vec<Slot>,
    free: Vec<usize>,
    reader_busy: bool,
    /// A sleeper was woken to take the reader role and has not yet run: no
    /// second one is woken for it.
    reader_handed: bool,
    /// Why the link is down; None while it is up.
    down: Option<LinkDown>,
    /// Threads waiting for a free slot: notifying none would still cost a
    /// futex call per request, so wake-ups are skipped when this is 0.
    sleepers: usize,
}

/// How the link went down, which decides what later requests report.
pub(super) enum LinkDown {
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

/// What the client's threads share: the socket, its slots and reader, and
/// the DMA table the server's requests are checked against.
pub(super) struct Inner {
    pub(super) sock: OwnedFd,
    pub(super) send_lock: Mutex<()>,
    state: Mutex<State>,
    /// Where threads wait for a free slot.
    cond: Condvar,
    /// Where each slot's owner waits for its reply or the reader role.
    slot_conds: Vec<Condvar>,
    reader: Mutex<Receiver>,
    pub(super) dma: RwLock<Vec<DmaEntry>>,
    timeout: Duration,
    spin: Option<Duration>,
    /// Set by `Client::close`, so the twin-socket thread stops.
    pub(super) closed: AtomicBool,
}

/// A reply, as filed in its slot.
pub(super) struct Reply<'a> {
    pub(super) payload: &'a [u8],
    pub(super) fds: &'a mut Vec<OwnedFd>,
}

impl Inner {
    /// Shares `sock` with all slots free; `max_msg` bounds a received message.
    pub(super) fn new(sock: OwnedFd, config: &ClientConfig, max_msg: usize) -> Self {
        Inner {
            sock,
            send_lock: Mutex::new(()),
            state: Mutex::new(State {
                slots: (0..MAX_OUTSTANDING).map(|_| Slot::default()).collect(),
                free: (0..MAX_OUTSTANDING).rev().collect(),
                reader_busy: false,
                reader_handed: false,
                down: None,
                sleepers: 0,
            }),
            cond: Condvar::new(),
            slot_conds: (0..MAX_OUTSTANDING).map(|_| Condvar::new()).collect(),
            reader: Mutex::new(Receiver::new(max_msg)),
            dma: RwLock::new(Vec::new()),
            timeout: config.timeout,
            spin: config.spin.filter(|d| !d.is_zero()),
            closed: AtomicBool::new(false),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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

    /// Sleeps on `slot`'s condvar until its reply is filed, the reader role
    /// is handed to it, the link goes down, or `left` passes.
    fn sleep_on_slot<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        slot: usize,
        left: Duration,
    ) -> MutexGuard<'a, State> {
        st.slots[slot].sleeping = true;
        let mut st = self.slot_conds[slot]
            .wait_timeout(st, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        let s = &mut st.slots[slot];
        s.sleeping = false;
        if std::mem::take(&mut s.handed) {
            st.reader_handed = false;
        }
        st
    }

    /// Wakes the owner of `slot` if it sleeps, once.
    fn wake_slot(&self, st: &mut State, slot: usize) {
        if std::mem::take(&mut st.slots[slot].sleeping) {
            self.slot_conds[slot].notify_one();
        }
    }

    /// Wakes the owners of the slots in `mask` (bit i: slot i) that
    /// [`Inner::take_sleepers`] found asleep. Called with the state unlocked:
    /// a woken owner that ran at once would otherwise block on the lock its
    /// waker still holds, costing two more switches.
    fn notify_slots(&self, mask: u64) {
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            self.slot_conds[i].notify_one();
            m &= m - 1;
        }
    }

    /// The slots of `mask` whose owners sleep, each marked woken.
    fn take_sleepers(st: &mut State, mask: u64) -> u64 {
        let mut asleep = 0;
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            if std::mem::take(&mut st.slots[i].sleeping) {
                asleep |= 1 << i;
            }
            m &= m - 1;
        }
        asleep
    }

    /// With the socket unowned, wakes one sleeper whose reply has not come
    /// to read it: the others stay asleep until their replies are filed.
    /// While a filed reply is still to be taken, its owner calls this again
    /// on its way out, and is often back with a new request first, taking
    /// the role itself: a sleeper woken now would find it taken.
    /// Returns the slot (as a mask for [`Inner::notify_slots`]) to wake.
    fn hand_off_reader(st: &mut State) -> u64 {
        if st.reader_busy || st.reader_handed || st.slots.iter().any(|s| s.busy && s.done) {
            return 0;
        }
        let Some(i) = (0..st.slots.len()).find(|&i| {
            let s = &st.slots[i];
            s.sleeping && s.busy && !s.done
        }) else {
            return 0;
        };
        st.slots[i].handed = true;
        st.reader_handed = true;
        Self::take_sleepers(st, 1 << i)
    }

    /// Marks the link down (the first reason sticks) and wakes every waiter,
    /// so each request in flight fails at once instead of at its deadline.
    pub(super) fn kill(&self, st: &mut State, why: LinkDown) {
        if st.down.is_none() {
            st.down = Some(why);
            let _ =
                nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        self.cond.notify_all();
        for i in 0..st.slots.len() {
            self.wake_slot(st, i);
        }
    }

    pub(super) fn send(&self, parts: &[&[u8]], fds: &[RawFd]) -> Result<()> {
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
    pub(super) fn request<T>(
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
        let (slot, id) = self.take_slot(deadline)?;
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

    /// A free slot and the message id of its next use, waiting for one
    /// until `deadline` when all are in flight.
    fn take_slot(&self, deadline: Instant) -> Result<(usize, u16)> {
        let mut st = self.lock();
        loop {
            if st.down.is_some() {
                return Err(st.down_error());
            }
            if let Some(i) = st.free.pop() {
                let s = &mut st.slots[i];
                // A new generation per use, so a late reply to an earlier use
                // of the slot is told apart and dropped.
                s.gen = s.gen.wrapping_add(1) & ((1 << (16 - SLOT_BITS)) - 1);
                s.busy = true;
                s.done = false;
                return Ok((i, (s.gen << SLOT_BITS) | i as u16));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            st = self.sleep(st, left);
        }
    }

    fn release(&self, slot: usize) {
        let mut st = self.lock();
        let s = &mut st.slots[slot];
        s.busy = false;
        s.done = false;
        s.fds.clear();
        st.free.push(slot);
        self.wake(&st);
        // A caller leaving (its reply in, or its deadline passed) may leave
        // the socket unowned while others still wait.
        let next = Self::hand_off_reader(&mut st);
        drop(st);
        self.notify_slots(next);
    }

    /// Waits for the reply in `slot`: reads the socket itself while no other
    /// thread does, sleeps otherwise. The slot is released on every outcome.
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
                let result = Self::take_reply(&mut st.slots[slot], command, f);
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
                st = self.read_as_reader(st);
                continue;
            }
            st = self.sleep_on_slot(st, slot, left);
        }
    }

    /// Checks the reply filed in `s` for `command` and hands it to `f`.
    fn take_reply<T>(
        s: &mut Slot,
        command: u16,
        f: impl FnOnce(Reply<'_>) -> Result<T>,
    ) -> Result<T> {
        if s.header.command != command {
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
        }
    }

    /// Becomes the socket's reader for one wait, with the state unlocked
    /// meanwhile: files every reply received by then, hands the role back and
    /// wakes the owners of those replies. A receive timeout only ends the
    /// turn; any other failure takes the link down.
    fn read_as_reader<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.reader_busy = true;
        drop(st);
        let mut filed = 0u64;
        let (mut st, r) = self.read_batch(&mut filed);
        st.reader_busy = false;
        let owners = Self::take_sleepers(&mut st, filed);
        if let Err(e) = r {
            match e {
                Error::Timeout => {}
                Error::Protocol(m) => self.kill(&mut st, LinkDown::Broken(m)),
                _ => self.kill(&mut st, LinkDown::Closed),
            }
        }
        if owners == 0 {
            return st;
        }
        drop(st);
        self.notify_slots(owners);
        self.lock()
    }

    /// Waits for a message, then takes every further one already buffered
    /// (no system call for those): replies are filed under one lock of the
    /// state, with their slots' bits set in `filed`; the server's requests
    /// are answered. Returns with the state locked.
    fn read_batch(&self, filed: &mut u64) -> (MutexGuard<'_, State>, Result<()>) {
        let mut rx = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        // Polling mode: non-blocking receives until a whole message is there
        // or the spin budget is spent, then an ordinary blocking receive. A
        // partial message stays buffered in the Receiver between attempts.
        let spin_until = self.spin.map(|d| Instant::now() + d);
        let mut st: Option<MutexGuard<'_, State>> = None;
        let mut first = true;
        loop {
            let m = if first {
                first = false;
                loop {
                    let nonblock = spin_until.is_some_and(|t| Instant::now() < t);
                    match rx.recv(self.sock.as_fd(), nonblock) {
                        Err(Error::Timeout) if nonblock => std::hint::spin_loop(),
                        r => break r,
                    }
                }
            } else if rx.has_message() {
                rx.recv(self.sock.as_fd(), true)
            } else {
                break;
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => return (st.unwrap_or_else(|| self.lock()), Err(e)),
            };
            if m.header.is_reply() {
                let st = st.get_or_insert_with(|| self.lock());
                if let Some(slot) = Self::file_reply(st, m.header, m.payload, m.fds) {
                    *filed |= 1 << slot;
                }
                continue;
            }
            // The state is not held while a DMA request is served: its
            // reply is a send, which takes the link down (locking the
            // state) if it fails.
            st = None;
            let (h, payload) = (m.header, m.payload.to_vec());
            if let Err(e) = self.serve_dma(self.sock.as_fd(), &h, &payload) {
                return (self.lock(), Err(e));
            }
        }
        (st.unwrap_or_else(|| self.lock()), Ok(()))
    }

    /// Files a reply into the slot its id names, if that slot still waits
    /// for it; returns that slot.
    fn file_reply(
        st: &mut State,
        header: Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Option<usize> {
        let slot = (header.id & ((1 << SLOT_BITS) - 1)) as usize;
        let gen = header.id >> SLOT_BITS;
        match st.slots.get_mut(slot) {
            Some(s) if s.busy && !s.done && s.gen == gen => {
                s.header = header;
                s.payload.clear();
                s.payload.extend_from_slice(payload);
                s.fds = fds;
                s.done = true;
                Some(slot)
            }
            // Unknown, duplicate or late: nobody waits for it. Its fds close here.
            _ => {
                log::debug!(target: "vfio_io::client", "dropped reply id {}", header.id);
                None
            }
        }
    }
}
