//! Migration of a vfio-user device: [`DeviceMigration`] over DEVICE_FEATURE
//! MIG_DEVICE_STATE and MIG_DATA_READ/MIG_DATA_WRITE, and the probe that
//! decides [`Capabilities::MIGRATION`].
//!
//! The server is untrusted: a read reply must carry the bytes it claims and
//! no more than asked, and one STOP_COPY stream may not run past the length
//! the server announced (MIG_DATA_SIZE) or, for a server that announces
//! none, [`MAX_STREAM_WITHOUT_SIZE`]: a stream that never ends is an error,
//! not a hang.

use std::sync::{Arc, Mutex, MutexGuard};

use super::multiplex::Inner;
use super::Client;
use crate::caps::{Capabilities, CapabilityRecord, Source};
use crate::error::{Error, Result};
use crate::migration::{walk, DeviceMigration, MigrationState, MIGRATION_STOP_COPY};
use crate::user::proto::{self, cmd, MigDataMsg, MigDataSize, MigStateMsg, MigrationFeature};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

/// The longest STOP_COPY stream read from a server that does not answer
/// MIG_DATA_SIZE (4 GiB).
pub const MAX_STREAM_WITHOUT_SIZE: u64 = 1 << 32;

/// The migration side of one connection: what both the caller's calls and
/// the data fd's thread (`data_fd`) use to move state and stream.
pub(super) struct MigrationLink {
    inner: Arc<Inner>,
    max_xfer: usize,
    /// Bytes the STOP_COPY stream may still bring; `None` until its first read.
    left: Mutex<Option<u64>>,
}

impl MigrationLink {
    pub(super) fn new(inner: Arc<Inner>, max_xfer: usize) -> Self {
        MigrationLink {
            inner,
            max_xfer,
            left: Mutex::new(None),
        }
    }

    /// DEVICE_FEATURE with `input` as its data; returns the reply's data,
    /// which must be exactly `reply_len` bytes.
    fn feature(&self, flags: u32, input: &[u8], reply_len: usize) -> Result<Vec<u8>> {
        let fixed = proto::encode_feature((8 + input.len().max(reply_len)) as u32, flags);
        self.inner
            .request(cmd::DEVICE_FEATURE, &[&fixed, input], &[], |r| {
                let (_, _, d) = proto::decode_feature(r.payload)?;
                if d.len() != reply_len {
                    return Err(Error::Protocol(format!(
                        "migration feature {flags:#x} answered with {} bytes of data, not {reply_len}",
                        d.len()
                    )));
                }
                Ok(d.to_vec())
            })
    }

    /// GET MIG_DEVICE_STATE.
    fn state(&self) -> Result<MigrationState> {
        let flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
        let d = self.feature(flags, &[], MigStateMsg::SIZE)?;
        let v = MigStateMsg::decode(&d)?.device_state;
        MigrationState::from_u32(v)
            .ok_or_else(|| Error::Protocol(format!("the server is in migration state {v}")))
    }

    /// SET MIG_DEVICE_STATE: one arc, taken by the server. A new state
    /// starts a new stream.
    fn set_state_once(&self, to: MigrationState) -> Result<()> {
        let m = MigStateMsg {
            device_state: to as u32,
            data_fd: u32::MAX,
        };
        let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
        self.feature(flags, &m.encode(), MigStateMsg::SIZE)?;
        *lock(&self.left) = None;
        Ok(())
    }

    /// How many more bytes this STOP_COPY stream may bring: what is left of
    /// the length the server announced when the stream's first read asked.
    fn stream_left(&self) -> Result<u64> {
        let mut left = lock(&self.left);
        if let Some(n) = *left {
            return Ok(n);
        }
        let flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE;
        let n = match self.feature(flags, &[], MigDataSize::SIZE) {
            Ok(d) => MigDataSize::decode(&d)?.stop_copy_length,
            Err(Error::Remote { .. }) => MAX_STREAM_WITHOUT_SIZE,
            Err(e) => return Err(e),
        };
        *left = Some(n);
        Ok(n)
    }

    /// MIG_DATA_READ: the next bytes of the STOP_COPY stream into `buf`, 0
    /// at its end.
    pub(super) fn read(&self, buf: &mut [u8]) -> Result<usize> {
        let want = buf.len().min(self.max_xfer);
        let left = self.stream_left()?;
        let req = MigDataMsg {
            argsz: (MigDataMsg::SIZE + want) as u32,
            size: want as u32,
        };
        let n = self
            .inner
            .request(cmd::MIG_DATA_READ, &[&req.encode()], &[], |r| {
                let head = MigDataMsg::decode(r.payload)?;
                let data = &r.payload[MigDataMsg::SIZE..];
                if data.len() != head.size as usize || data.len() > want {
                    return Err(Error::Protocol(format!(
                        "MIG_DATA_READ of {want} bytes answered with size {} and {} bytes",
                        head.size,
                        data.len()
                    )));
                }
                if data.len() as u64 > left {
                    return Err(Error::Protocol(
                        "the migration stream runs past the length the server announced".into(),
                    ));
                }
                buf[..data.len()].copy_from_slice(data);
                Ok(data.len())
            })?;
        if let Some(l) = lock(&self.left).as_mut() {
            *l = l.saturating_sub(n as u64);
        }
        Ok(n)
    }

    /// MIG_DATA_WRITE of `buf` in chunks; returns how many bytes the server
    /// took.
    pub(super) fn write(&self, buf: &[u8]) -> Result<usize> {
        let mut done = 0;
        for chunk in buf.chunks(self.max_xfer) {
            let head = MigDataMsg {
                argsz: MigDataMsg::SIZE as u32,
                size: chunk.len() as u32,
            };
            match self
                .inner
                .request(cmd::MIG_DATA_WRITE, &[&head.encode(), chunk], &[], |_| {
                    Ok(())
                }) {
                Ok(()) => done += chunk.len(),
                // Like write(2): what was taken counts; the error comes with
                // the next call.
                Err(_) if done > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Fails at once when the device lacks [`Capabilities::MIGRATION`].
    pub(super) fn check_migrates(&self) -> Result<()> {
        if self.caps.mask().contains(Capabilities::MIGRATION) {
            Ok(())
        } else {
            Err(Error::Unsupported("the device does not migrate"))
        }
    }

    /// Walks the device to `to` one arc at a time, through STOP where no
    /// direct arc leads. Returns whether an arc was taken (false when the
    /// device already was in `to`).
    pub(super) fn walk_to(&self, to: MigrationState) -> Result<bool> {
        self.check_migrates()?;
        let arcs = walk(self.migration.state()?, to, |next| {
            self.migration.set_state_once(next)
        })?;
        Ok(arcs > 0)
    }

    /// Records [`Capabilities::MIGRATION`]: granted when the server answers
    /// GET MIGRATION with `VFIO_MIGRATION_STOP_COPY`, the data path this
    /// library carries; withheld otherwise.
    pub(super) fn record_migration(&self, rec: &mut CapabilityRecord) {
        let key = Source::FeatureProbe(VFIO_DEVICE_FEATURE_MIGRATION);
        let probe = VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET;
        if self
            .migration
            .feature(probe | VFIO_DEVICE_FEATURE_MIGRATION, &[], 0)
            .is_err()
        {
            rec.withhold(Capabilities::MIGRATION, key, "the server refuses the probe");
            return;
        }
        let get = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION;
        let flags = self
            .migration
            .feature(get, &[], MigrationFeature::SIZE)
            .and_then(|d| MigrationFeature::decode(&d))
            .map(|f| f.flags);
        match flags {
            Ok(f) if f & MIGRATION_STOP_COPY != 0 => rec.grant(
                Capabilities::MIGRATION,
                key,
                "the server offers STOP_COPY migration; the library moves its stream with MIG_DATA_READ/WRITE",
            ),
            _ => rec.withhold(
                Capabilities::MIGRATION,
                key,
                "the server offers it, but GET MIGRATION answers without VFIO_MIGRATION_STOP_COPY",
            ),
        }
    }
}

impl DeviceMigration for Client {
    fn get_state(&self) -> Result<MigrationState> {
        self.check_migrates()?;
        self.migration.state()
    }

    fn set_state(&self, to: MigrationState) -> Result<()> {
        self.change_state(to, false).map(drop)
    }

    fn read(&self, buf: &mut [u8]) -> Result<usize> {
        self.check_migrates()?;
        self.check_no_data_fd()?;
        self.migration.read(buf)
    }

    fn write(&self, buf: &[u8]) -> Result<usize> {
        self.check_migrates()?;
        self.check_no_data_fd()?;
        self.migration.write(buf)
    }
}
