//! The vfio-user client: a [`DeviceIo`] backend over a UNIX socket.
//!
//! Many threads may issue requests at once. Each request takes a slot whose
//! index and generation form the message id. Whichever waiting thread finds
//! the socket unowned becomes its reader: it reads messages, files replies
//! into their slots and wakes their owners, and answers the server's
//! DMA_READ/DMA_WRITE. So a lone caller reads its own reply with no thread
//! hand-off, and no background thread sits on the main socket.
//!
//! Regions (or sparse areas of them) that the server offers with an fd are
//! mmapped at connect; reads and writes that fall entirely inside one go
//! straight to that memory, with no message at all.
//!
//! This file holds [`Client`] and its [`DeviceIo`] operations; the parts
//! are one module each: request multiplexing (`multiplex`), the server's
//! DMA requests (`dma`), mapped areas (`mapped`), doorbells rung through
//! ioeventfds (`doorbells`), connection setup (`connect`), dirty-page tracking (`dirty`), migration (`migration`) and
//! its data fd (`data_fd`).

mod connect;
mod data_fd;
mod dirty;
mod dma;
mod doorbells;
mod mapped;
mod migration;
mod multiplex;

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::caps::{Backends, Capabilities, CapabilityRecord};
use crate::device::{DeviceInfo, DeviceIo, DmaMap, IrqData, IrqInfo, IrqSet, RegionInfo};
use crate::error::{Error, Result};
use crate::migration::DeviceMigration;
use crate::user::proto::{
    self, cmd, DmaMapMsg, DmaUnmapMsg, Header, IrqSetMsg, RegionAccess, DMA_MAP_READ,
    DMA_MAP_WRITE, FLAG_NO_REPLY,
};
use crate::user::version::{self, VersionCaps};
use dma::TwinSocket;
use mapped::MappedArea;
use multiplex::{Inner, LinkDown, POSTED_ID};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MASK, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_PROBE,
};

pub use migration::MAX_STREAM_WITHOUT_SIZE;
pub use multiplex::MAX_OUTSTANDING;

/// Most regions a server may declare.
pub const MAX_REGIONS: u32 = 256;
/// Most IRQ indices a server may declare.
pub const MAX_IRQS: u32 = 64;

/// What the capability mask of every vfio-user device may contain (from the
/// capability table).
pub const BACKEND_CAPABILITIES: Capabilities = Backends::VFIO_USER.possible_capabilities();

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long one request may wait for its reply (and a send for the socket).
    pub timeout: Duration,
    /// Largest data count per message this client accepts.
    pub max_data_xfer_size: u32,
    /// Propose twin-socket mode, so DMA requests from the server are served
    /// by a thread of their own even while no request is in flight.
    pub twin_socket: bool,
    /// Polling mode: a thread waiting for a reply first polls the socket with
    /// non-blocking receives for up to this long before it blocks. On another
    /// core than the server this saves the wake-up of a blocked thread (tens
    /// of µs on a VM) at the price of a busy CPU while it waits; on the
    /// server's own core it only steals the server's time. `None`: block at once.
    pub spin: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            max_data_xfer_size: version::DEFAULT_MAX_DATA_XFER,
            twin_socket: true,
            spin: None,
        }
    }
}

/// A connected vfio-user device.
pub struct Client {
    inner: Arc<Inner>,
    server: VersionCaps,
    info: DeviceInfo,
    regions: Vec<RegionInfo>,
    caps: CapabilityRecord,
    max_xfer: usize,
    twin: Mutex<Option<TwinSocket>>,
    /// The mmapped areas of mappable regions, accessed without messages.
    mapped: Vec<MappedArea>,
    /// Migration state and stream, shared with the data fd's thread.
    migration: Arc<migration::MigrationLink>,
    /// The data fd's thread, while a state stream moves through one.
    data_fd: Mutex<Option<data_fd::DataFd>>,
    /// The ioeventfds the server offered, rung instead of messages.
    doorbells: Vec<doorbells::Doorbell>,
}

/// Checks that a reply's payload holds at least the `want` bytes of its
/// fixed part.
fn expect_len(what: &'static str, payload: &[u8], want: usize) -> Result<()> {
    if payload.len() < want {
        return Err(Error::Protocol(format!(
            "{what} reply carries {} bytes, needs {want}",
            payload.len()
        )));
    }
    Ok(())
}

impl Client {
    /// DEVICE_GET_REGION_IO_FDS: the ioeventfd/ioregionfd sub-regions the
    /// server offers for region `index`, with the fds they refer to.
    pub fn region_io_fds(&self, index: u32) -> Result<(Vec<proto::IoFdSubRegion>, Vec<OwnedFd>)> {
        self.region(index, 0, 0)?;
        let req = proto::encode_io_fds_request(4096, index);
        self.inner
            .request(cmd::DEVICE_GET_REGION_IO_FDS, &[&req], &[], |r| {
                let (got, subs) = proto::decode_io_fds(r.payload)?;
                if got != index || subs.iter().any(|s| s.fd_index as usize >= r.fds.len()) {
                    return Err(Error::Protocol(
                        "REGION_IO_FDS reply names another region or a missing fd".into(),
                    ));
                }
                Ok((subs, std::mem::take(r.fds)))
            })
    }

    /// REGION_WRITE_MULTI: several writes of at most 8 bytes in one message,
    /// when the server negotiated `write_multiple`. Returns the count done.
    pub fn region_write_multi(&self, writes: &[proto::MultiWrite]) -> Result<u64> {
        if !self.server.write_multiple {
            return Err(Error::Unsupported(
                "the server did not negotiate write_multiple",
            ));
        }
        if writes.len() > proto::MultiWrite::MAX_ENTRIES {
            return Err(Error::InvalidArgument(
                "too many writes in one REGION_WRITE_MULTI",
            ));
        }
        for w in writes {
            if w.count == 0 || w.count > 8 {
                return Err(Error::InvalidArgument("REGION_WRITE_MULTI entry size"));
            }
            self.region(w.region, w.offset, w.count as usize)?;
        }
        let mut payload = Vec::with_capacity(8 + writes.len() * proto::MultiWrite::SIZE);
        proto::encode_write_multi(writes, &mut payload);
        self.inner
            .request(cmd::REGION_WRITE_MULTI, &[&payload], &[], |r| {
                expect_len("REGION_WRITE_MULTI", r.payload, 8)?;
                Ok(u64::from_ne_bytes(
                    r.payload[..8].try_into().unwrap_or([0; 8]),
                ))
            })
    }

    /// The capabilities the server answered VERSION with.
    pub fn server_version_caps(&self) -> &VersionCaps {
        &self.server
    }

    /// Whether DMA requests from the server come on their own socket.
    pub fn twin_socket(&self) -> bool {
        self.twin.lock().map(|t| t.is_some()).unwrap_or(false)
    }

    /// Closes the connection: requests in flight, and later ones, fail with
    /// `Disconnected`. Dropping the client does the same.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let mut st = self.inner.lock();
        self.inner.kill(&mut st, LinkDown::Closed);
        drop(st);
        if let Ok(mut t) = self.twin.lock() {
            if let Some(twin) = t.take() {
                twin.stop();
            }
        }
    }

    /// Region `index`, once `[offset, offset + len)` is checked to lie inside
    /// it: bad arguments fail here, before any message is sent.
    fn region(&self, index: u32, offset: u64, len: usize) -> Result<&RegionInfo> {
        let r = self
            .regions
            .get(index as usize)
            .ok_or(Error::InvalidArgument("region index past num_regions"))?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= r.size => Ok(r),
            _ => Err(Error::InvalidArgument("access past the region's end")),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

impl DeviceIo for Client {
    fn capability_record(&self) -> &CapabilityRecord {
        &self.caps
    }

    fn migration(&self) -> Option<&dyn DeviceMigration> {
        Some(self)
    }

    fn backend_capabilities(&self) -> Capabilities {
        BACKEND_CAPABILITIES
    }

    fn backend_name(&self) -> &'static str {
        "vfio-user"
    }

    fn dirty_tracking(&self) -> Option<&dyn crate::dirty::DirtyTracking> {
        Some(self)
    }

    fn device_info(&self) -> Result<DeviceInfo> {
        Ok(self.info)
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        self.regions
            .get(index as usize)
            .cloned()
            .ok_or(Error::InvalidArgument("region index past num_regions"))
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        if index >= self.info.num_irqs {
            return Err(Error::InvalidArgument("IRQ index past num_irqs"));
        }
        let req = proto::encode_irq_info(
            16,
            &IrqInfo {
                index,
                flags: 0,
                count: 0,
            },
        );
        self.inner
            .request(cmd::DEVICE_GET_IRQ_INFO, &[&req], &[], |r| {
                expect_len("DEVICE_GET_IRQ_INFO", r.payload, 16)?;
                let info = proto::decode_irq_info(r.payload)?;
                if info.index != index {
                    return Err(Error::Protocol(format!(
                        "asked for IRQ {index}, got {}",
                        info.index
                    )));
                }
                Ok(info)
            })
    }

    fn set_irqs(&self, set: &IrqSet<'_>) -> Result<()> {
        set.validate()?;
        if set.index >= self.info.num_irqs {
            return Err(Error::InvalidArgument("IRQ index past num_irqs"));
        }
        let flags = set.flags();
        let send = |start: u32, count: u32, data: &[u8], fds: &[RawFd]| {
            let m = IrqSetMsg {
                argsz: (proto::IRQ_SET_SIZE + data.len()) as u32,
                flags,
                index: set.index,
                start,
                count,
            };
            self.inner
                .request(cmd::DEVICE_SET_IRQS, &[&m.encode(), data], fds, |_| Ok(()))
        };
        match set.data {
            IrqData::None => send(set.start, set.count, &[], &[]),
            IrqData::Bool(b) => send(set.start, set.count, b, &[]),
            IrqData::Eventfds(fds) => {
                // One message carries all-valid or no fds, at most max_msg_fds.
                let per = self.server.max_msg_fds.max(1) as usize;
                let mut i = 0;
                while i < fds.len() {
                    let valid = fds[i] >= 0;
                    let mut j = i;
                    while j < fds.len() && (fds[j] >= 0) == valid && (!valid || j - i < per) {
                        j += 1;
                    }
                    let run: &[RawFd] = if valid { &fds[i..j] } else { &[] };
                    send(set.start + i as u32, (j - i) as u32, &[], run)?;
                    i = j;
                }
                Ok(())
            }
        }
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        self.region(index, offset, data.len())?;
        if !data.is_empty() {
            if let Some((a, off)) = self.mapped_area(index, offset, data.len()) {
                if a.readable {
                    return a.map.read_reg(off, data);
                }
            }
        }
        // Larger reads go as several messages of at most max_xfer bytes.
        let step = self.max_xfer;
        for (i, out) in data.chunks_mut(step).enumerate() {
            let n = out.len();
            let a = RegionAccess {
                offset: offset + (i * step) as u64,
                region: index,
                count: n as u32,
            };
            self.inner
                .request(cmd::REGION_READ, &[&a.encode()], &[], |r| {
                    if r.payload.len() != RegionAccess::SIZE + n
                        || RegionAccess::decode(r.payload)? != a
                    {
                        return Err(Error::Protocol(
                            "REGION_READ reply does not match the request".into(),
                        ));
                    }
                    out.copy_from_slice(&r.payload[RegionAccess::SIZE..]);
                    Ok(())
                })?;
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8], post: bool) -> Result<()> {
        self.region(index, offset, data.len())?;
        if !data.is_empty() {
            if let Some((a, off)) = self.mapped_area(index, offset, data.len()) {
                if a.writable {
                    return a.map.write_reg(off, data);
                }
            }
        }
        if self.ring_doorbell(index, offset, data) {
            return Ok(());
        }
        // Once any area is mapped, a posted write could be overtaken: it sits
        // in the socket until the server reads it, while a later store through
        // the mapping lands at once, so the device would see the two in the
        // wrong order (and a later mapped read would not be pushed behind the
        // write, as PCI ordering requires). QEMU's vfio-user client stops
        // posting for the same reason. Waiting for the reply keeps them in
        // program order; the write is still accepted, only not posted.
        // A doorbell rung after a posted write could overtake it the same
        // way: the server drains its eventfds before the message it reads
        // next, which may be that write. Connect withholds POSTED_WRITES in
        // both cases, so the bit is the one place that decides.
        let post = post && self.caps.mask().contains(Capabilities::POSTED_WRITES);
        for (i, chunk) in data.chunks(self.max_xfer).enumerate() {
            let a = RegionAccess {
                offset: offset + (i * self.max_xfer) as u64,
                region: index,
                count: chunk.len() as u32,
            };
            if post {
                let mut h = Header::command(
                    POSTED_ID,
                    cmd::REGION_WRITE,
                    RegionAccess::SIZE + chunk.len(),
                );
                h.flags |= FLAG_NO_REPLY;
                self.inner.send(&[&h.encode(), &a.encode(), chunk], &[])?;
                continue;
            }
            self.inner
                .request(cmd::REGION_WRITE, &[&a.encode(), chunk], &[], |r| {
                    expect_len("REGION_WRITE", r.payload, RegionAccess::SIZE)?;
                    if RegionAccess::decode(r.payload)?.count != a.count {
                        return Err(Error::Protocol("REGION_WRITE reply count differs".into()));
                    }
                    Ok(())
                })?;
        }
        Ok(())
    }

    fn device_feature(&self, flags: u32, data: &mut [u8]) -> Result<i32> {
        let feature = flags & VFIO_DEVICE_FEATURE_MASK;
        if feature == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && flags & VFIO_DEVICE_FEATURE_PROBE == 0
        {
            return self.mig_device_state_feature(flags, data);
        }
        let fixed = proto::encode_feature((8 + data.len()) as u32, flags);
        let get = flags & VFIO_DEVICE_FEATURE_GET != 0 && flags & VFIO_DEVICE_FEATURE_PROBE == 0;
        let input: &[u8] = if get { &[] } else { data };
        let reply = self
            .inner
            .request(cmd::DEVICE_FEATURE, &[&fixed, input], &[], |r| {
                let (_, _, d) = proto::decode_feature(r.payload)?;
                Ok(d.to_vec())
            })?;
        if get {
            if reply.len() > data.len() {
                return Err(Error::Protocol(
                    "DEVICE_FEATURE reply larger than asked".into(),
                ));
            }
            data[..reply.len()].copy_from_slice(&reply);
        }
        Ok(0)
    }

    fn reset(&self) -> Result<()> {
        // Without VFIO_DEVICE_FLAGS_RESET the device has no reset to ask for.
        if !self.caps.mask().contains(Capabilities::RESET) {
            return Err(Error::Unsupported("the device does not support reset"));
        }
        self.inner.request(cmd::DEVICE_RESET, &[], &[], |_| Ok(()))
    }

    unsafe fn dma_map(&self, map: &DmaMap) -> Result<()> {
        let Some(end) = map.iova.checked_add(map.size).filter(|_| map.size > 0) else {
            return Err(Error::InvalidArgument("DMA range empty or wraps"));
        };
        let mut flags = 0;
        if map.readable {
            flags |= DMA_MAP_READ;
        }
        if map.writable {
            flags |= DMA_MAP_WRITE;
        }
        let m = DmaMapMsg {
            argsz: DmaMapMsg::SIZE as u32,
            flags,
            offset: if map.fd >= 0 { map.offset } else { 0 },
            address: map.iova,
            size: map.size,
        };
        let fds: &[RawFd] = if map.fd >= 0 {
            std::slice::from_ref(&map.fd)
        } else {
            &[]
        };
        // Register first: the server may DMA as soon as it has the mapping.
        self.inner
            .dma_register(map, end, self.server.max_dma_maps)?;
        let r = self
            .inner
            .request(cmd::DMA_MAP, &[&m.encode()], fds, |_| Ok(()));
        if r.is_err() {
            self.inner.dma_forget(map.iova, map.size);
        }
        r
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
        let m = DmaUnmapMsg {
            argsz: DmaUnmapMsg::SIZE as u32,
            flags: 0,
            address: iova,
            size,
        };
        self.inner
            .request(cmd::DMA_UNMAP, &[&m.encode()], &[], |_| Ok(()))?;
        self.inner.dma_forget_range(iova, size);
        Ok(())
    }
}
