//! The server's side of migration for a model with [`Migratable`] hooks:
//! the state machine (the direct arcs only; a client walks longer paths
//! one arc at a time, as the kernel does inside one ioctl), the migration
//! features of DEVICE_FEATURE, and the state stream cut into MIG_DATA_READ
//! chunks or gathered from MIG_DATA_WRITEs.

use super::context::Ctx;
use super::model::{DeviceModel, Migratable};
use super::session::{Session, SessionState};
use crate::error::{Error, Result};
use crate::migration::{requested_state, MigrationState, MIGRATION_STOP_COPY};
use crate::user::proto::{MigDataMsg, MigDataSize, MigStateMsg, MigrationFeature};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MASK, VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

/// One session's migration state. A session starts RUNNING; one that ends
/// elsewhere resumes the device, as closing a kernel device fd does.
#[derive(Debug)]
pub(super) struct MigrationSession {
    state: MigrationState,
    /// STOP_COPY: the saved stream, and how much of it was read.
    saved: Vec<u8>,
    read: usize,
    /// RESUMING: the bytes written so far.
    incoming: Vec<u8>,
}

impl Default for MigrationSession {
    fn default() -> Self {
        MigrationSession {
            state: MigrationState::Running,
            saved: Vec::new(),
            read: 0,
            incoming: Vec::new(),
        }
    }
}

/// The model's hooks, or `EINVAL` for a model without them.
fn hooks<M: DeviceModel>(model: &mut M) -> Result<&mut dyn Migratable> {
    model
        .migration()
        .ok_or(Error::InvalidArgument("the device does not migrate"))
}

impl<M: DeviceModel> Session<'_, M> {
    /// DEVICE_FEATURE for MIGRATION, MIG_DEVICE_STATE and MIG_DATA_SIZE when
    /// the model has migration hooks: `Some` with the reply's data or the
    /// error. `None` for other features and models without hooks, which
    /// the model's own `device_feature` answers.
    pub(super) fn migration_feature(&mut self, flags: u32, data: &[u8]) -> Option<Result<Vec<u8>>> {
        let feature = flags & VFIO_DEVICE_FEATURE_MASK;
        let allowed = match feature {
            VFIO_DEVICE_FEATURE_MIGRATION | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => {
                VFIO_DEVICE_FEATURE_GET
            }
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET
            }
            _ => return None,
        };
        self.model.migration()?;
        let how = flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET);
        if flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
            return Some(if how & !allowed == 0 {
                Ok(Vec::new())
            } else {
                Err(Error::InvalidArgument("feature lacks that access"))
            });
        }
        Some(match (feature, how) {
            (_, h) if h & !allowed != 0 || h.count_ones() != 1 => {
                Err(Error::InvalidArgument("feature lacks that access"))
            }
            (VFIO_DEVICE_FEATURE_MIGRATION, _) => Ok(MigrationFeature {
                flags: MIGRATION_STOP_COPY,
            }
            .encode()
            .to_vec()),
            (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, _) => self.data_size(),
            (_, VFIO_DEVICE_FEATURE_GET) => Ok(MigStateMsg {
                device_state: self.st.migration.state as u32,
                data_fd: u32::MAX,
            }
            .encode()
            .to_vec()),
            _ => self.set_state_feature(data),
        })
    }

    /// SET MIG_DEVICE_STATE: one direct arc; the reply echoes the request.
    fn set_state_feature(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let m = MigStateMsg::decode(data)
            .map_err(|_| Error::InvalidArgument("MIG_DEVICE_STATE data too short"))?;
        self.change_state(requested_state(m.device_state)?)?;
        Ok(m.encode().to_vec())
    }

    /// GET MIG_DATA_SIZE: in STOP_COPY the bytes left to read, elsewhere the
    /// length a save would have now.
    fn data_size(&mut self) -> Result<Vec<u8>> {
        let len = if self.st.migration.state == MigrationState::StopCopy {
            self.st.migration.saved.len() - self.st.migration.read
        } else {
            hooks(&mut *self.model)?.save()?.len()
        };
        Ok(MigDataSize {
            stop_copy_length: len as u64,
        }
        .encode()
        .to_vec())
    }

    /// Takes the direct arc to `to` (staying put is no change). Another arc,
    /// ERROR or a state a STOP_COPY device lacks is `EINVAL`; an arc whose
    /// hook fails keeps the state it had.
    fn change_state(&mut self, to: MigrationState) -> Result<()> {
        use MigrationState::{Resuming, Running, Stop, StopCopy};
        let from = self.st.migration.state;
        if !to.is_stop_copy_state() {
            return Err(Error::InvalidArgument("migration state the device lacks"));
        }
        if from == to {
            return Ok(());
        }
        if !from.is_direct_arc(to) {
            return Err(Error::InvalidArgument("no direct arc to that state"));
        }
        let Session { st, model, .. } = self;
        let SessionState {
            link,
            dma,
            irqs,
            migration: m,
            ..
        } = &mut **st;
        let mut ctx = Ctx { link, dma, irqs };
        let dev = hooks(&mut **model)?;
        match (from, to) {
            (Running, Stop) => dev.stop(&mut ctx)?,
            (Stop, Running) => dev.resume(&mut ctx)?,
            (Stop, StopCopy) => {
                m.saved = dev.save()?;
                m.read = 0;
            }
            (Stop, Resuming) => m.incoming.clear(),
            (Resuming, Stop) => {
                // A refused stream is dropped whole: the next attempt
                // starts from an empty stream, and the device is unchanged.
                let stream = std::mem::take(&mut m.incoming);
                dev.load(&stream)?;
            }
            _ => m.saved = Vec::new(),
        }
        m.state = to;
        Ok(())
    }

    /// MIG_DATA_READ: the next chunk of the saved stream, shorter than asked
    /// (down to empty) at its end.
    pub(super) fn mig_data_read(&mut self, p: &[u8]) -> Result<()> {
        let req = MigDataMsg::decode(p)?;
        let m = &mut self.st.migration;
        if m.state != MigrationState::StopCopy {
            return Err(Error::InvalidArgument("MIG_DATA_READ outside STOP_COPY"));
        }
        let want = req.size as usize;
        if want > self.config.max_data_xfer_size as usize {
            return Err(Error::InvalidArgument(
                "MIG_DATA_READ larger than max_data_xfer_size",
            ));
        }
        if (req.argsz as usize) < MigDataMsg::SIZE + want {
            return Err(Error::InvalidArgument("MIG_DATA_READ argsz too small"));
        }
        let n = want.min(m.saved.len() - m.read);
        let head = MigDataMsg {
            argsz: (MigDataMsg::SIZE + n) as u32,
            size: n as u32,
        };
        self.st.out.extend_from_slice(&head.encode());
        self.st.out.extend_from_slice(&m.saved[m.read..m.read + n]);
        m.read += n;
        Ok(())
    }

    /// MIG_DATA_WRITE: appends to the incoming stream, up to the longest
    /// the model loads; a write past that appends nothing.
    pub(super) fn mig_data_write(&mut self, p: &[u8]) -> Result<()> {
        let req = MigDataMsg::decode(p)?;
        let data = &p[MigDataMsg::SIZE..];
        if self.st.migration.state != MigrationState::Resuming {
            return Err(Error::InvalidArgument("MIG_DATA_WRITE outside RESUMING"));
        }
        if data.len() != req.size as usize {
            return Err(Error::InvalidArgument(
                "MIG_DATA_WRITE size differs from the data sent",
            ));
        }
        let max = hooks(&mut *self.model)?.max_stream_len();
        let m = &mut self.st.migration;
        if m.incoming.len().saturating_add(data.len()) > max {
            return Err(Error::InvalidArgument(
                "migration stream longer than the device loads",
            ));
        }
        m.incoming.extend_from_slice(data);
        Ok(())
    }

    /// After a device reset, or when the session ends: the device runs
    /// again and any stream in flight is dropped.
    pub(super) fn migration_to_running(&mut self) -> Result<()> {
        let was = std::mem::take(&mut self.st.migration).state;
        if was == MigrationState::Running {
            return Ok(());
        }
        let mut ctx = Ctx {
            link: &mut self.st.link,
            dma: &mut self.st.dma,
            irqs: &mut self.st.irqs,
        };
        hooks(&mut *self.model)?.resume(&mut ctx)
    }
}
