//! Server-side IRQ state: the eventfds a client attached and the mask bits.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::device::{IrqAction, IrqInfo, VFIO_IRQ_INFO_AUTOMASKED};
use crate::error::{Error, Result};
use crate::user::wire::is_eventfd;

#[derive(Debug, Default)]
struct Vector {
    trigger: Option<OwnedFd>,
    mask_fd: Option<OwnedFd>,
    unmask_fd: Option<OwnedFd>,
    masked: bool,
    asserted: bool,
}

#[derive(Debug)]
struct Index {
    automasked: bool,
    vectors: Vec<Vector>,
}

impl Index {
    /// A SET_IRQS of count 0: only TRIGGER without data is one (it disables
    /// every vector of the index); anything else is refused.
    fn disable_all(
        &mut self,
        action: IrqAction,
        bools: Option<&[u8]>,
        fds: Option<&[OwnedFd]>,
    ) -> Result<()> {
        if action == IrqAction::Trigger && bools.is_none() && fds.is_none_or(|f| f.is_empty()) {
            for v in &mut self.vectors {
                *v = Vector::default();
            }
            return Ok(());
        }
        Err(Error::InvalidArgument("SET_IRQS count 0"))
    }

    /// Attaches `fds` as the `action` eventfds of vectors `start..end`, one
    /// each, or detaches them all when `fds` is empty.
    fn attach(&mut self, action: IrqAction, start: u32, end: u32, fds: Vec<OwnedFd>) -> Result<()> {
        if !fds.is_empty() && fds.len() != (end - start) as usize {
            return Err(Error::InvalidArgument(
                "SET_IRQS fd count differs from count",
            ));
        }
        if !fds.iter().all(is_eventfd) {
            return Err(Error::InvalidArgument("SET_IRQS fd that is not an eventfd"));
        }
        let mut it = fds.into_iter();
        for v in &mut self.vectors[start as usize..end as usize] {
            let fd = it.next();
            match action {
                IrqAction::Trigger => v.trigger = fd,
                IrqAction::Mask => v.mask_fd = fd,
                IrqAction::Unmask => v.unmask_fd = fd,
            }
        }
        Ok(())
    }
}

/// All IRQ indices of one device, for one client session.
#[derive(Debug, Default)]
pub struct IrqState {
    indices: Vec<Index>,
}

/// Most vectors per IRQ index the server tracks.
pub const MAX_VECTORS: u32 = 2048;

fn signal(fd: &Option<OwnedFd>) -> bool {
    match fd {
        Some(fd) => {
            // The client owns the eventfd and shares its file description, so
            // it cannot be made non-blocking here; a counter the client ran up
            // to its maximum would block the write, and the server with it.
            // Such a counter is not writable, and its event is pending anyway.
            let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
            if matches!(poll(&mut p, PollTimeout::ZERO), Ok(1)) {
                let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
            }
            true
        }
        None => false,
    }
}

impl IrqState {
    /// State for a device with these IRQ indices.
    pub fn new(infos: &[IrqInfo]) -> Self {
        IrqState {
            indices: infos
                .iter()
                .map(|i| Index {
                    automasked: i.flags & VFIO_IRQ_INFO_AUTOMASKED != 0,
                    vectors: (0..i.count.min(MAX_VECTORS))
                        .map(|_| Vector::default())
                        .collect(),
                })
                .collect(),
        }
    }

    fn vector(&mut self, index: u32, vector: u32) -> Option<&mut Vector> {
        self.indices
            .get_mut(index as usize)?
            .vectors
            .get_mut(vector as usize)
    }

    /// Whether a trigger eventfd is attached.
    pub fn enabled(&self, index: u32, vector: u32) -> bool {
        self.indices
            .get(index as usize)
            .and_then(|i| i.vectors.get(vector as usize))
            .is_some_and(|v| v.trigger.is_some())
    }

    /// Signals the trigger eventfd of an unmasked vector.
    pub fn trigger(&mut self, index: u32, vector: u32) -> bool {
        match self.vector(index, vector) {
            Some(v) if !v.masked => signal(&v.trigger),
            _ => false,
        }
    }

    /// Whether IRQ index `index` masks itself when it fires (INTx).
    fn automasked(&self, index: u32) -> bool {
        self.indices
            .get(index as usize)
            .is_some_and(|i| i.automasked)
    }

    /// Drives a level-triggered line (INTx).
    pub fn set_level(&mut self, index: u32, vector: u32, asserted: bool) {
        let automasked = self.automasked(index);
        let Some(v) = self.vector(index, vector) else {
            return;
        };
        let rising = asserted && !v.asserted;
        v.asserted = asserted;
        // Edge-style lines fire on the rising edge; automasked ones on any
        // assertion while unmasked, and then mask themselves until unmasked.
        if asserted && !v.masked && (rising || automasked) {
            let fired = signal(&v.trigger);
            if fired && automasked {
                v.masked = true;
                signal(&v.mask_fd);
            }
        }
    }

    /// Applies one SET_IRQS. `range` vectors start at `start`; `bools` selects
    /// vectors (None: all); `fds` attaches eventfds (Some(empty): detach).
    pub fn set(
        &mut self,
        index: u32,
        action: IrqAction,
        start: u32,
        count: u32,
        bools: Option<&[u8]>,
        fds: Option<Vec<OwnedFd>>,
    ) -> Result<()> {
        let idx = self
            .indices
            .get_mut(index as usize)
            .ok_or(Error::InvalidArgument("IRQ index"))?;
        if count == 0 {
            return idx.disable_all(action, bools, fds.as_deref());
        }
        let end = start
            .checked_add(count)
            .ok_or(Error::InvalidArgument("SET_IRQS range"))?;
        if end as usize > idx.vectors.len() {
            return Err(Error::InvalidArgument(
                "SET_IRQS range past the index's count",
            ));
        }
        if let Some(fds) = fds {
            return idx.attach(action, start, end, fds);
        }
        self.apply(index, action, start, end, bools)
    }

    /// Masks, unmasks or triggers vectors `start..end` of `index`, those
    /// `bools` selects (None: all).
    fn apply(
        &mut self,
        index: u32,
        action: IrqAction,
        start: u32,
        end: u32,
        bools: Option<&[u8]>,
    ) -> Result<()> {
        if let Some(b) = bools {
            if b.len() != (end - start) as usize {
                return Err(Error::InvalidArgument(
                    "SET_IRQS bool count differs from count",
                ));
            }
        }
        for n in start..end {
            if bools.is_some_and(|b| b[(n - start) as usize] == 0) {
                continue;
            }
            match action {
                IrqAction::Mask => {
                    if let Some(v) = self.vector(index, n) {
                        v.masked = true;
                    }
                }
                IrqAction::Unmask => self.unmask(index, n),
                IrqAction::Trigger => {
                    self.trigger(index, n);
                }
            }
        }
        Ok(())
    }

    /// Whether any vector has an unmask eventfd (no list built: asked per command).
    pub fn has_unmask_fds(&self) -> bool {
        self.indices
            .iter()
            .any(|idx| idx.vectors.iter().any(|v| v.unmask_fd.is_some()))
    }

    /// Unmask eventfds to watch: (index, vector, fd).
    pub fn unmask_fds(&self) -> Vec<(u32, u32, BorrowedFd<'_>)> {
        let mut v = Vec::new();
        for (i, idx) in self.indices.iter().enumerate() {
            for (n, vec) in idx.vectors.iter().enumerate() {
                if let Some(fd) = &vec.unmask_fd {
                    v.push((i as u32, n as u32, fd.as_fd()));
                }
            }
        }
        v
    }

    /// Unmasks a vector (SET_IRQS UNMASK, or the client signalled the unmask
    /// eventfd). A level line still asserted fires again.
    pub fn unmask(&mut self, index: u32, vector: u32) {
        let automasked = self.automasked(index);
        let Some(v) = self.vector(index, vector) else {
            return;
        };
        if !v.masked {
            return;
        }
        v.masked = false;
        if v.asserted && signal(&v.trigger) && automasked {
            v.masked = true;
        }
    }

    /// Drops every eventfd (client gone); mask state returns to power-on.
    pub fn clear(&mut self) {
        for idx in &mut self.indices {
            for v in &mut idx.vectors {
                let asserted = v.asserted;
                *v = Vector {
                    asserted,
                    ..Vector::default()
                };
            }
        }
    }
}
