//! [`DeviceMigration`] over kernel VFIO: the state through
//! `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`, one arc per SET, and the stream
//! through the data fd the kernel returns entering STOP_COPY or RESUMING.
//!
//! A device whose driver has no migration (edu under vfio-pci) answers the
//! feature with ENOTTY: every call then fails at once with that errno.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio as uapi;

use super::ioctl;
use crate::error::{Error, Result};
use crate::migration::{walk, DeviceMigration, MigrationState};

/// The migration of one kernel device: its fd, and the data fd of the state
/// it is in (none outside STOP_COPY and RESUMING).
#[derive(Debug)]
pub(super) struct KernelMigration {
    device: Arc<OwnedFd>,
    data_fd: Mutex<Option<OwnedFd>>,
}

impl KernelMigration {
    pub(super) fn new(device: Arc<OwnedFd>) -> Self {
        KernelMigration {
            device,
            data_fd: Mutex::new(None),
        }
    }

    fn data_fd(&self) -> MutexGuard<'_, Option<OwnedFd>> {
        self.data_fd.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `EINVAL` for a stream call outside STOP_COPY or RESUMING, unless the
    /// kernel refuses the state query itself (ENOTTY without a migration
    /// driver): then its errno.
    fn no_stream(&self) -> Error {
        match self.get_state() {
            Err(e) => e,
            Ok(_) => Error::InvalidArgument("no state stream in this migration state"),
        }
    }
}

impl DeviceMigration for KernelMigration {
    fn get_state(&self) -> Result<MigrationState> {
        let (v, _) =
            ioctl::mig_device_state(self.device.as_fd(), uapi::VFIO_DEVICE_FEATURE_GET, 0)?;
        MigrationState::from_u32(v).ok_or(Error::Errno {
            op: "the kernel reported an unknown migration state",
            errno: libc::EIO,
        })
    }

    fn set_state(&self, to: MigrationState) -> Result<()> {
        let mut data_fd = self.data_fd();
        walk(self.get_state()?, to, |next| {
            let set = uapi::VFIO_DEVICE_FEATURE_SET;
            let (_, fd) = ioctl::mig_device_state(self.device.as_fd(), set, next as u32)?;
            // The previous state's data fd is done with: closing it here is
            // what the kernel expects once the state moved on.
            *data_fd = fd;
            Ok(())
        })?;
        Ok(())
    }

    fn read(&self, buf: &mut [u8]) -> Result<usize> {
        match self.data_fd().as_ref() {
            Some(fd) => nix::unistd::read(fd, buf).map_err(|e| Error::sys("read the data fd", e)),
            None => Err(self.no_stream()),
        }
    }

    fn write(&self, buf: &[u8]) -> Result<usize> {
        match self.data_fd().as_ref() {
            Some(fd) => nix::unistd::write(fd, buf).map_err(|e| Error::sys("write the data fd", e)),
            None => Err(self.no_stream()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ioctl::VFIO_DEVICE_FEATURE;
    use super::super::mock_kernel::{MockFd, Script};
    use super::*;
    use crate::bytes::u32_at;
    use MigrationState::{Resuming, Running, Stop, StopCopy};

    fn migrating(stream: &[u8]) -> (KernelMigration, MockFd) {
        let dev = MockFd::new(Script {
            features: vec![
                uapi::VFIO_DEVICE_FEATURE_MIGRATION,
                uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            ],
            mig_stream: stream.to_vec(),
            ..Script::default()
        });
        (KernelMigration::new(Arc::new(dev.fd())), dev)
    }

    /// The (flags, device_state) of each MIG_DEVICE_STATE request, after
    /// checking its layout: argsz 16, data_fd sent as -1.
    fn requests(dev: &MockFd) -> Vec<(u32, u32)> {
        dev.bytes_sent(VFIO_DEVICE_FEATURE)
            .iter()
            .map(|b| {
                assert_eq!(b.len(), 16);
                assert_eq!(u32_at(b, 0), Some(16), "argsz");
                assert_eq!(&b[12..16], &(-1i32).to_ne_bytes(), "data_fd");
                (u32_at(b, 4).unwrap(), u32_at(b, 8).unwrap())
            })
            .collect()
    }

    const GET: u32 = uapi::VFIO_DEVICE_FEATURE_GET | uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
    const SET: u32 = uapi::VFIO_DEVICE_FEATURE_SET | uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;

    #[test]
    fn set_state_walks_the_arcs_and_the_stream_goes_through_the_kernels_data_fd() {
        let stream: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let (m, dev) = migrating(&stream);
        assert_eq!(m.get_state().unwrap(), Running);
        dev.forget_requests();

        // RUNNING -> STOP_COPY is two SETs, after one GET.
        m.set_state(StopCopy).unwrap();
        assert_eq!(
            requests(&dev),
            [(GET, 0), (SET, Stop as u32), (SET, StopCopy as u32)]
        );
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        for _ in 0..10 {
            match m.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, stream);
        assert_eq!(m.write(&[1]).unwrap_err().errno(), libc::EBADF);

        // STOP_COPY -> RESUMING goes through STOP; what is written reaches
        // the kernel's fd, closed when the state moves on.
        m.set_state(Resuming).unwrap();
        assert_eq!(m.write(b"resumed").unwrap(), 7);
        dev.forget_requests();
        m.set_state(Running).unwrap();
        assert_eq!(
            requests(&dev),
            [(GET, 0), (SET, Stop as u32), (SET, Running as u32)]
        );
        assert_eq!(dev.resumed_stream(), b"resumed");

        // No stream in RUNNING; states the device lacks are refused.
        assert_eq!(m.read(&mut buf).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.write(&buf).unwrap_err().errno(), libc::EINVAL);
        let e = m.set_state(MigrationState::PreCopy).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert_eq!(m.get_state().unwrap(), Running);
    }

    /// edu under vfio-pci: no migration driver, ENOTTY from the feature.
    #[test]
    fn without_a_migration_driver_every_call_fails_at_once_with_enotty() {
        let dev = MockFd::new(Script::default());
        let m = KernelMigration::new(Arc::new(dev.fd()));
        let mut buf = [0u8; 8];
        let errnos = [
            m.get_state().map(drop),
            m.set_state(Running),
            m.set_state(StopCopy),
            m.read(&mut buf).map(drop),
            m.write(&buf).map(drop),
        ]
        .map(|r| r.unwrap_err().errno());
        assert_eq!(errnos, [libc::ENOTTY; 5]);
        // One request each: nothing is retried or walked.
        assert_eq!(dev.requests().len(), 5);
    }
}
