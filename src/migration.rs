//! Device migration, the kernel's v2 state machine: the states, the arcs
//! between them, and [`DeviceMigration`], the caller's view of one device's
//! migration (the same on every backend).
//!
//! A device supporting migration always has RUNNING, STOP, STOP_COPY and
//! RESUMING (`VFIO_MIGRATION_STOP_COPY`); the direct arcs between them are
//! RUNNING <-> STOP, STOP <-> STOP_COPY and STOP <-> RESUMING. Any other
//! change walks through STOP, as the kernel's `vfio_mig_get_next_state`
//! does: RUNNING -> STOP_COPY is RUNNING -> STOP -> STOP_COPY.

use crate::error::{Error, Result};

/// `enum vfio_device_mig_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MigrationState {
    /// The device failed a change and must be reset; never requested.
    Error = 0,
    /// Stopped: the device changes neither its own nor outside state.
    Stop = 1,
    /// Running normally.
    Running = 2,
    /// Stopped, its state readable as a stream.
    StopCopy = 3,
    /// Stopped, taking in a state stream, applied on the way to STOP.
    Resuming = 4,
    /// Running but not initiating peer-to-peer DMA (`VFIO_MIGRATION_P2P`).
    RunningP2p = 5,
    /// Running, with its state readable ahead of STOP_COPY (`VFIO_MIGRATION_PRE_COPY`).
    PreCopy = 6,
    /// PRE_COPY without peer-to-peer DMA.
    PreCopyP2p = 7,
}

impl MigrationState {
    /// The state with number `v`; `None` past PRE_COPY_P2P.
    pub fn from_u32(v: u32) -> Option<Self> {
        use MigrationState::*;
        Some(match v {
            0 => Error,
            1 => Stop,
            2 => Running,
            3 => StopCopy,
            4 => Resuming,
            5 => RunningP2p,
            6 => PreCopy,
            7 => PreCopyP2p,
            _ => return None,
        })
    }

    /// Whether a device with `VFIO_MIGRATION_STOP_COPY` alone has this
    /// state (the states this library carries).
    pub fn is_stop_copy_state(self) -> bool {
        use MigrationState::*;
        matches!(self, Stop | Running | StopCopy | Resuming)
    }

    /// Whether `self -> to` is one direct arc of a STOP_COPY device.
    pub fn is_direct_arc(self, to: MigrationState) -> bool {
        use MigrationState::*;
        matches!(
            (self, to),
            (Running, Stop)
                | (Stop, Running)
                | (Stop, StopCopy)
                | (StopCopy, Stop)
                | (Stop, Resuming)
                | (Resuming, Stop)
        )
    }

    /// The next state on the way from `self` to `to` on a STOP_COPY device:
    /// `to` itself when the arc is direct, else STOP. `None` when `to` is
    /// ERROR or a state such a device lacks, or `self` is ERROR (only a reset
    /// leaves it).
    pub fn next_step(self, to: MigrationState) -> Option<MigrationState> {
        if self == MigrationState::Error || !to.is_stop_copy_state() {
            return None;
        }
        if self == to || self.is_direct_arc(to) {
            return Some(to);
        }
        self.is_direct_arc(MigrationState::Stop)
            .then_some(MigrationState::Stop)
    }
}

/// `VFIO_MIGRATION_STOP_COPY`, the one migration flag this library carries.
pub const MIGRATION_STOP_COPY: u64 = vfio_bindings::bindings::vfio::VFIO_MIGRATION_STOP_COPY as u64;

/// One device's migration, the same on every backend: get and set the state
/// (a set walks the intermediate arcs), read the state stream in STOP_COPY
/// and write it in RESUMING. Get it with [`crate::DeviceIo::migration`].
pub trait DeviceMigration: Send + Sync {
    /// The device's current state.
    fn get_state(&self) -> Result<MigrationState>;

    /// Moves the device to `state`, through STOP where no direct arc leads.
    /// ERROR, and states the device lacks, are `EINVAL` and change nothing.
    /// A step that fails leaves the device where that step left it.
    fn set_state(&self, state: MigrationState) -> Result<()>;

    /// Reads the next bytes of the state stream (STOP_COPY only) into `buf`;
    /// returns how many, 0 at the end of the stream. `EINVAL` in another state.
    fn read(&self, buf: &mut [u8]) -> Result<usize>;

    /// Appends `buf` to the incoming state stream (RESUMING only); returns
    /// how many bytes were taken. `EINVAL` in another state or past the
    /// largest stream the device accepts.
    fn write(&self, buf: &[u8]) -> Result<usize>;
}

/// Walks a device in state `at` to `to`, calling `take_arc` for each arc
/// (STOP first where no direct arc leads). Returns the number of arcs taken.
/// `EINVAL` for ERROR or a state a STOP_COPY device lacks, before any arc.
pub fn walk(
    mut at: MigrationState,
    to: MigrationState,
    mut take_arc: impl FnMut(MigrationState) -> Result<()>,
) -> Result<usize> {
    if !to.is_stop_copy_state() {
        return Err(Error::InvalidArgument(
            "migration state is ERROR or one the device lacks",
        ));
    }
    let mut arcs = 0;
    // Two arcs reach any state.
    while at != to && arcs < 2 {
        let next = at
            .next_step(to)
            .ok_or(Error::InvalidArgument("no path from the device's state"))?;
        take_arc(next)?;
        at = next;
        arcs += 1;
    }
    Ok(arcs)
}

/// Checks a state number from a caller: ERROR and unknown numbers are
/// `EINVAL` (the kernel's answer to both).
pub fn requested_state(v: u32) -> Result<MigrationState> {
    match MigrationState::from_u32(v) {
        Some(MigrationState::Error) | None => Err(Error::InvalidArgument(
            "migration state is ERROR or unknown",
        )),
        Some(s) => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::MigrationState::{self, *};

    const ALL: [MigrationState; 8] = [
        Error, Stop, Running, StopCopy, Resuming, RunningP2p, PreCopy, PreCopyP2p,
    ];

    #[test]
    fn numbers_are_the_kernels() {
        for (i, s) in ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32);
            assert_eq!(MigrationState::from_u32(i as u32), Some(*s));
        }
        assert_eq!(MigrationState::from_u32(8), None);
    }

    /// Every path between the four STOP_COPY states, walked with
    /// `next_step`, is the kernel's: direct where an arc exists, else
    /// through STOP, never longer than two arcs.
    #[test]
    fn every_path_goes_through_stop_in_at_most_two_arcs() {
        let four = [Stop, Running, StopCopy, Resuming];
        for from in four {
            for to in four {
                let mut at = from;
                let mut path = vec![at];
                while at != to {
                    at = at.next_step(to).unwrap();
                    path.push(at);
                    assert!(path.len() <= 3, "{from:?} -> {to:?}: {path:?}");
                }
                if from != to && !from.is_direct_arc(to) {
                    assert_eq!(path, [from, Stop, to]);
                }
            }
        }
    }

    #[test]
    fn error_and_missing_states_have_no_path() {
        for to in [Error, RunningP2p, PreCopy, PreCopyP2p] {
            assert_eq!(Running.next_step(to), None, "{to:?}");
        }
        assert_eq!(Error.next_step(Running), None);
        assert!(super::requested_state(0).is_err());
        assert!(super::requested_state(9).is_err());
        assert_eq!(super::requested_state(3).unwrap(), StopCopy);
    }
}
