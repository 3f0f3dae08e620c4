//! A session's doorbell eventfds: one per doorbell the model declares,
//! offered by DEVICE_GET_REGION_IO_FDS and drained into region writes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::model::Doorbell;
use crate::device::{RegionInfo, VFIO_REGION_INFO_FLAG_WRITE};
use crate::error::{Error, Result};
use crate::user::proto::IoFdSubRegion;

/// `KVM_IOEVENTFD_FLAG_DATAMATCH`: the sub-region's `data` is the one value
/// that signals the eventfd.
pub const IOEVENTFD_FLAG_DATAMATCH: u32 = 1;

/// Most writes one drain delivers for a datamatch doorbell: a client that
/// adds more than one per write to the counter is served on later drains,
/// so the socket is not starved meanwhile.
const MAX_WRITES_PER_DRAIN: u64 = 4096;

/// The eventfds of one session's doorbells.
pub(super) struct DoorbellFds {
    bells: Vec<(Doorbell, EventFd)>,
}

/// A write read out of a doorbell's eventfd: `times` writes of `data` (its
/// first `size` bytes, little-endian).
pub(super) struct RungWrite {
    pub(super) bell: Doorbell,
    pub(super) data: [u8; 8],
    pub(super) times: u64,
}

impl DoorbellFds {
    /// Eventfds for the model's doorbells that fit its regions; a doorbell
    /// that does not (no such region, not writable, past its end, a width
    /// other than 1, 2, 4 or 8) is left out with a warning.
    pub(super) fn new(bells: Vec<Doorbell>, regions: &[RegionInfo]) -> Self {
        let mut out = Vec::new();
        for b in bells {
            if let Err(e) = check(&b, regions) {
                log::warn!(target: "vfio_io::server", "doorbell {b:?} left out: {e}");
                continue;
            }
            match EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK) {
                Ok(fd) => out.push((b, fd)),
                Err(e) => {
                    log::warn!(target: "vfio_io::server", "doorbell {b:?} left out: eventfd: {e}")
                }
            }
        }
        DoorbellFds { bells: out }
    }

    /// The sub-regions of region `index` and the fds they name, in order.
    pub(super) fn sub_regions(&self, index: u32) -> (Vec<IoFdSubRegion>, Vec<RawFd>) {
        let mut subs = Vec::new();
        let mut fds = Vec::new();
        for (b, fd) in self.bells.iter().filter(|(b, _)| b.region == index) {
            subs.push(IoFdSubRegion {
                offset: b.offset,
                size: b.size.into(),
                fd_index: fds.len() as u32,
                kind: 0,
                flags: if b.datamatch.is_some() {
                    IOEVENTFD_FLAG_DATAMATCH
                } else {
                    0
                },
                data: b.datamatch.unwrap_or(0),
            });
            fds.push(fd.as_fd().as_raw_fd());
        }
        (subs, fds)
    }

    /// The eventfds, for the session's wait.
    pub(super) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.bells.iter().map(|(_, fd)| fd.as_fd())
    }

    /// Whether the session has any doorbell.
    pub(super) fn is_empty(&self) -> bool {
        self.bells.is_empty()
    }

    /// Reads every signalled eventfd, in declaration order, into the writes
    /// it stands for.
    pub(super) fn drain(&self) -> Vec<RungWrite> {
        let mut rung = Vec::new();
        for (bell, fd) in &self.bells {
            let mut b = [0u8; 8];
            let count = match nix::unistd::read(fd.as_fd(), &mut b) {
                Ok(8) => u64::from_ne_bytes(b),
                _ => continue,
            };
            let (data, times) = match bell.datamatch {
                Some(v) => {
                    let times = count.min(MAX_WRITES_PER_DRAIN);
                    if count > times {
                        // Put the rest back: the eventfd stays readable.
                        let _ = nix::unistd::write(fd.as_fd(), &(count - times).to_ne_bytes());
                    }
                    (v.to_le_bytes(), times)
                }
                None => (count.to_le_bytes(), 1),
            };
            rung.push(RungWrite {
                bell: *bell,
                data,
                times,
            });
        }
        rung
    }
}

/// Whether doorbell `b` lies inside a writable region with a register width.
fn check(b: &Doorbell, regions: &[RegionInfo]) -> Result<()> {
    let r = regions
        .get(b.region as usize)
        .ok_or(Error::InvalidArgument("no such region"))?;
    if r.flags & VFIO_REGION_INFO_FLAG_WRITE == 0 {
        return Err(Error::InvalidArgument("region not writable"));
    }
    if !matches!(b.size, 1 | 2 | 4 | 8) {
        return Err(Error::InvalidArgument("width not 1, 2, 4 or 8 bytes"));
    }
    match b.offset.checked_add(b.size.into()) {
        Some(end) if end <= r.size => Ok(()),
        _ => Err(Error::InvalidArgument("past the region's end")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::VFIO_REGION_INFO_FLAG_READ;

    fn bell(offset: u64, size: u32, datamatch: Option<u64>) -> Doorbell {
        Doorbell {
            region: 0,
            offset,
            size,
            datamatch,
        }
    }

    fn regions() -> Vec<RegionInfo> {
        vec![
            RegionInfo::plain(0, VFIO_REGION_INFO_FLAG_WRITE, 0x100),
            RegionInfo::plain(1, VFIO_REGION_INFO_FLAG_READ, 0x100),
        ]
    }

    fn signal(d: &DoorbellFds, i: usize, n: u64) {
        nix::unistd::write(d.bells[i].1.as_fd(), &n.to_ne_bytes()).unwrap();
    }

    #[test]
    fn doorbells_outside_writable_regions_are_left_out() {
        let bad = [
            bell(0xfe, 4, None),
            bell(0, 3, None),
            Doorbell {
                region: 1,
                ..bell(0, 4, None)
            },
            Doorbell {
                region: 2,
                ..bell(0, 4, None)
            },
        ];
        let mut all = bad.to_vec();
        all.push(bell(0xfc, 4, Some(1)));
        let d = DoorbellFds::new(all, &regions());
        assert_eq!(d.bells.len(), 1);
        let (subs, fds) = d.sub_regions(0);
        assert_eq!(fds.len(), 1);
        assert_eq!(
            (subs[0].offset, subs[0].size, subs[0].flags, subs[0].data),
            (0xfc, 4, IOEVENTFD_FLAG_DATAMATCH, 1)
        );
        assert!(d.sub_regions(1).0.is_empty());
    }

    #[test]
    fn drain_turns_counts_into_writes() {
        let d = DoorbellFds::new(vec![bell(0, 4, Some(7)), bell(8, 4, None)], &regions());
        assert!(d.drain().is_empty());
        signal(&d, 0, 3);
        signal(&d, 1, 5);
        let w = d.drain();
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].bell.offset, w[0].times, w[0].data[0]), (0, 3, 7));
        assert_eq!((w[1].bell.offset, w[1].times, w[1].data[0]), (8, 1, 5));
        assert!(d.drain().is_empty(), "a drain empties the eventfds");
    }

    #[test]
    fn a_huge_datamatch_count_is_served_in_bounded_drains() {
        let d = DoorbellFds::new(vec![bell(0, 4, Some(1))], &regions());
        signal(&d, 0, MAX_WRITES_PER_DRAIN + 2);
        assert_eq!(d.drain()[0].times, MAX_WRITES_PER_DRAIN);
        assert_eq!(d.drain()[0].times, 2);
        assert!(d.drain().is_empty());
    }
}
