//! Doorbells: the ioeventfds a server offers through
//! DEVICE_GET_REGION_IO_FDS, and the writes that go through them.
//!
//! A write that exactly matches one (region, offset, size, and the datamatch
//! value when there is one) signals its eventfd instead of sending a
//! message. The server drains its eventfds before it handles any command,
//! so a later read or write still finds the doorbell delivered.

use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::Client;
use crate::caps::{Capabilities, CapabilityRecord, Source};
use crate::device::VFIO_REGION_INFO_FLAG_WRITE;
use crate::error::{Error, Result};
use crate::user::proto::IoFdSubRegion;
use crate::user::wire::is_eventfd;

/// `KVM_IOEVENTFD_FLAG_DATAMATCH`, the only ioeventfd flag understood here.
const FLAG_DATAMATCH: u32 = 1;
/// `VFIO_USER_IO_FD_TYPE_IOEVENTFD`.
const KIND_IOEVENTFD: u32 = 0;

/// One ioeventfd the server offered.
#[derive(Debug)]
pub(super) struct Doorbell {
    region: u32,
    offset: u64,
    size: usize,
    datamatch: Option<u64>,
    fd: OwnedFd,
}

impl Doorbell {
    /// Whether a write of `data` at `offset` of `region` is this doorbell's.
    fn matches(&self, region: u32, offset: u64, data: &[u8]) -> bool {
        if region != self.region || offset != self.offset || data.len() != self.size {
            return false;
        }
        self.datamatch.is_none_or(|v| {
            let mut le = [0u8; 8];
            le[..data.len()].copy_from_slice(data);
            u64::from_le_bytes(le) == v
        })
    }
}

impl Client {
    /// Asks every writable region for its ioeventfds and keeps the usable
    /// ones; records IOEVENTFD in `rec`. Done only while nothing is mapped:
    /// like a posted write, a signalled eventfd could be overtaken by a
    /// later access through a mapping. A server that refuses the command
    /// (an error reply) offers none.
    pub(super) fn fetch_doorbells(&mut self, rec: &mut CapabilityRecord) -> Result<()> {
        if let Some(a) = self.mapped.first() {
            rec.withhold(
                Capabilities::IOEVENTFD,
                Source::MappedArea(a.region),
                "an area is mapped, so every write goes by message to stay in order",
            );
            return Ok(());
        }
        let writable: Vec<(u32, u64)> = self
            .regions
            .iter()
            .filter(|r| r.flags & VFIO_REGION_INFO_FLAG_WRITE != 0 && r.size > 0)
            .map(|r| (r.index, r.size))
            .collect();
        for (index, size) in writable {
            let (subs, fds) = match self.region_io_fds(index) {
                Ok(got) => got,
                Err(Error::Remote { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
            for s in subs {
                match usable(&s, size) {
                    Some(datamatch) => {
                        let Some(fd) = fds.get_mut(s.fd_index as usize).and_then(Option::take)
                        else {
                            continue;
                        };
                        if !is_eventfd(&fd) {
                            continue;
                        }
                        self.doorbells.push(Doorbell {
                            region: index,
                            offset: s.offset,
                            size: s.size as usize,
                            datamatch,
                            fd,
                        });
                    }
                    None => log::debug!(target: "vfio_io::client", "ignored sub-region {s:?}"),
                }
            }
        }
        match self.doorbells.first() {
            Some(d) => {
                rec.grant(
                    Capabilities::IOEVENTFD,
                    Source::RegionInfo(d.region),
                    "DEVICE_GET_REGION_IO_FDS offered an ioeventfd",
                );
                rec.withhold(
                    Capabilities::POSTED_WRITES,
                    Source::RegionInfo(d.region),
                    "doorbells ring through eventfds, so posted writes wait for their reply to stay in order",
                );
            }
            None => rec.withhold(
                Capabilities::IOEVENTFD,
                Source::DeviceInfo,
                "no region offers an ioeventfd",
            ),
        }
        Ok(())
    }

    /// Delivers a write through its doorbell, if one matches it. `false`:
    /// send it as a message (no doorbell, or its counter is full).
    pub(super) fn ring_doorbell(&self, region: u32, offset: u64, data: &[u8]) -> bool {
        let Some(d) = self
            .doorbells
            .iter()
            .find(|d| d.matches(region, offset, data))
        else {
            return false;
        };
        // The server shares the eventfd's file description and could make
        // it blocking; a counter it let fill up is not writable, and the
        // write then goes by message (still after everything rung before).
        let mut p = [PollFd::new(d.fd.as_fd(), PollFlags::POLLOUT)];
        if !matches!(poll(&mut p, PollTimeout::ZERO), Ok(1)) {
            return false;
        }
        matches!(nix::unistd::write(&d.fd, &1u64.to_ne_bytes()), Ok(8))
    }
}

/// The datamatch value of a sub-region this client can use (an ioeventfd of
/// a register width inside a region of `region_size` bytes); `None` for any
/// other.
fn usable(s: &IoFdSubRegion, region_size: u64) -> Option<Option<u64>> {
    let fits = s
        .offset
        .checked_add(s.size)
        .is_some_and(|e| e <= region_size);
    if s.kind != KIND_IOEVENTFD || !matches!(s.size, 1 | 2 | 4 | 8) || !fits {
        return None;
    }
    match s.flags {
        0 => Some(None),
        FLAG_DATAMATCH if s.size == 8 || s.data >> (8 * s.size) == 0 => Some(Some(s.data)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(size: u64, flags: u32, data: u64) -> IoFdSubRegion {
        IoFdSubRegion {
            offset: 0x10,
            size,
            fd_index: 0,
            kind: KIND_IOEVENTFD,
            flags,
            data,
        }
    }

    #[test]
    fn only_register_wide_ioeventfds_inside_the_region_are_used() {
        assert_eq!(usable(&sub(4, 0, 0), 0x20), Some(None));
        assert_eq!(usable(&sub(4, FLAG_DATAMATCH, 9), 0x20), Some(Some(9)));
        assert_eq!(
            usable(&sub(8, FLAG_DATAMATCH, u64::MAX), 0x20),
            Some(Some(u64::MAX))
        );
        assert_eq!(usable(&sub(4, 0, 0), 0x13), None, "past the end");
        assert_eq!(usable(&sub(0, 0, 0), 0x20), None, "any width");
        assert_eq!(usable(&sub(3, 0, 0), 0x20), None);
        assert_eq!(
            usable(&sub(2, FLAG_DATAMATCH, 0x1_0000), 0x20),
            None,
            "value wider than the write"
        );
        assert_eq!(usable(&sub(4, 2, 0), 0x20), None, "unknown flag");
        assert_eq!(
            usable(
                &IoFdSubRegion {
                    kind: 1,
                    ..sub(4, 0, 0)
                },
                0x20
            ),
            None,
            "ioregionfd"
        );
        assert_eq!(
            usable(
                &IoFdSubRegion {
                    offset: u64::MAX,
                    ..sub(4, 0, 0)
                },
                u64::MAX
            ),
            None
        );
    }
}
