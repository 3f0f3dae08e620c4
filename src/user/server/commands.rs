//! The session's command handlers, one per vfio-user command: each decodes
//! its payload, checks it against the device and the negotiated limits,
//! calls the model, and leaves the reply payload in the session's `out`.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::context::Ctx;
use super::dma_logging;
use super::model::DeviceModel;
use super::session::{ReplyFd, Session, SessionState};
use super::ServerConfig;
use crate::bytes::u32_at;
use crate::device::{
    IrqAction, RegionInfo, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use crate::error::{Error, Result};
use crate::user::proto::{self, cmd, DmaMapMsg, DmaUnmapMsg, Header, IrqSetMsg, RegionAccess};
use crate::user::version::{self, VersionCaps};
use crate::user::wire::set_timeouts;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
};

impl<'a, M: DeviceModel> Session<'a, M> {
    /// Runs the handler of `hdr.command` on payload `p` and the fds that came
    /// with it (only DMA_MAP and DEVICE_SET_IRQS take any).
    pub(super) fn handle(&mut self, hdr: &Header, p: &[u8], fds: Vec<OwnedFd>) -> Result<ReplyFd> {
        let expects_fds = matches!(hdr.command, cmd::DMA_MAP | cmd::DEVICE_SET_IRQS);
        if !expects_fds && !fds.is_empty() {
            return Err(Error::InvalidArgument(
                "fds sent with a command that takes none",
            ));
        }
        if fds.len() > self.config.max_msg_fds as usize {
            return Err(Error::InvalidArgument("more fds than max_msg_fds"));
        }
        match hdr.command {
            cmd::VERSION => return self.version(p),
            cmd::DEVICE_GET_REGION_INFO => return self.region_info(p),
            cmd::DMA_MAP => self.dma_map(p, fds)?,
            cmd::DMA_UNMAP => self.dma_unmap(p)?,
            cmd::DEVICE_GET_INFO => self.device_info(p)?,
            cmd::DEVICE_GET_REGION_IO_FDS => return self.region_io_fds(p),
            cmd::DEVICE_GET_IRQ_INFO => self.irq_info(p)?,
            cmd::DEVICE_SET_IRQS => self.set_irqs(p, fds)?,
            cmd::REGION_READ => self.region_read(p)?,
            cmd::REGION_WRITE => self.region_write(p)?,
            cmd::REGION_WRITE_MULTI => self.region_write_multi(p)?,
            cmd::DEVICE_RESET => self.reset().and_then(|_| self.migration_to_running())?,
            cmd::DEVICE_FEATURE if dma_logging::is_dma_logging(p) => self.dma_logging(p)?,
            cmd::DEVICE_FEATURE => self.feature(p)?,
            cmd::MIG_DATA_READ => self.mig_data_read(p)?,
            cmd::MIG_DATA_WRITE => self.mig_data_write(p)?,
            cmd::DMA_READ | cmd::DMA_WRITE => {
                return Err(Error::InvalidArgument(
                    "DMA_READ/DMA_WRITE go from server to client",
                ))
            }
            _ => {
                return Err(Error::Errno {
                    op: "unknown vfio-user command",
                    errno: libc::ENOSYS,
                })
            }
        }
        Ok(ReplyFd::None)
    }

    /// The model with the context it sees, and the reply payload: split
    /// borrows of the session, for handlers that call into the model.
    pub(super) fn model_ctx(&mut self) -> (&mut M, Ctx<'_>, &mut Vec<u8>) {
        let ctx = Ctx {
            link: &mut self.st.link,
            dma: &mut self.st.dma,
            irqs: &mut self.st.irqs,
        };
        (&mut *self.model, ctx, &mut self.st.out)
    }

    /// VERSION: agrees on capabilities, and hands out the twin socket when
    /// both sides want one.
    fn version(&mut self, p: &[u8]) -> Result<ReplyFd> {
        if self.st.negotiated.is_some() {
            return Err(Error::Protocol("second VERSION".into()));
        }
        let (major, _minor, json) = proto::decode_version(p)?;
        if major != version::MAJOR {
            return Err(Error::Protocol(format!(
                "client speaks major version {major}"
            )));
        }
        let theirs = VersionCaps::parse(json)?;
        let mut reply = VersionCaps::accept(&self.config.version_caps(), &theirs);
        self.st.link.peer_max_xfer = theirs.max_data_xfer_size as usize;
        let mut fd = ReplyFd::None;
        if reply.twin_socket {
            let (ours, client) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
            let ours: OwnedFd = ours.into();
            set_timeouts(
                ours.as_fd(),
                Some(self.config.timeout),
                Some(self.config.timeout),
            )?;
            let max = theirs.max_data_xfer_size as usize + 64;
            self.st.link.set_twin(ours, max);
            reply.twin_fd_index = Some(0);
            fd = ReplyFd::Owned(client.into());
        }
        self.st.out.extend_from_slice(&proto::encode_version(
            version::MAJOR,
            version::MINOR,
            &reply.to_json(),
        ));
        self.st.negotiated = Some(reply);
        Ok(fd)
    }

    /// DMA_MAP: client memory, shared through at most one fd or reached by
    /// messages without one.
    fn dma_map(&mut self, p: &[u8], mut fds: Vec<OwnedFd>) -> Result<()> {
        let m = DmaMapMsg::decode(p)?;
        if fds.len() > 1 {
            return Err(Error::InvalidArgument("DMA_MAP with more than one fd"));
        }
        self.st.dma.map(&m, fds.pop())
    }

    /// DMA_UNMAP: the reply echoes the request with its own argsz.
    fn dma_unmap(&mut self, p: &[u8]) -> Result<()> {
        let m = DmaUnmapMsg::decode(p)?;
        self.st.dma.unmap(m.address, m.size)?;
        let echo = DmaUnmapMsg {
            argsz: DmaUnmapMsg::SIZE as u32,
            ..m
        };
        self.st.out.extend_from_slice(&echo.encode());
        Ok(())
    }

    /// DEVICE_GET_INFO.
    fn device_info(&mut self, p: &[u8]) -> Result<()> {
        if p.len() < 16 {
            return Err(Error::InvalidArgument("DEVICE_GET_INFO too short"));
        }
        let info = self.model.device_info();
        self.st
            .out
            .extend_from_slice(&proto::encode_device_info(16, &info));
        Ok(())
    }

    /// DEVICE_GET_REGION_INFO: the region's mmap fd goes along only with a
    /// reply that carries the whole capability chain.
    fn region_info(&mut self, p: &[u8]) -> Result<ReplyFd> {
        let (argsz, index) = proto::decode_region_info_request(p)?;
        let info = self
            .model
            .region_info(index)
            .ok_or(Error::InvalidArgument("region index"))?;
        let bytes = proto::encode_region_info_reply(&info, argsz as usize);
        let full = bytes.len() > proto::REGION_INFO_SIZE || argsz as usize >= bytes.len();
        self.st.out.extend_from_slice(&bytes);
        if info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && full {
            if let Some(fd) = info.fd {
                return Ok(ReplyFd::Shared(fd));
            }
        }
        Ok(ReplyFd::None)
    }

    /// DEVICE_GET_REGION_IO_FDS: the region's doorbells as ioeventfd
    /// sub-regions, their eventfds along when the whole list fits argsz and
    /// the client's max_msg_fds (otherwise argsz tells what it needs).
    fn region_io_fds(&mut self, p: &[u8]) -> Result<ReplyFd> {
        let (argsz, index) = proto::decode_io_fds_request(p)?;
        if index as usize >= self.st.regions.len() {
            return Err(Error::InvalidArgument("region index"));
        }
        let (subs, fds) = self.st.doorbells.sub_regions(index);
        let peer_max = self.st.negotiated.as_ref().map_or(0, |n| n.max_msg_fds);
        if fds.len() > peer_max as usize {
            return Err(Error::Errno {
                op: "REGION_IO_FDS: more eventfds than the client's max_msg_fds",
                errno: libc::ENOSPC,
            });
        }
        let body = proto::encode_io_fds(argsz, index, &subs);
        let complete = body.len() > proto::RegionIoFds::SIZE || subs.is_empty();
        self.st.out.extend_from_slice(&body);
        Ok(if complete {
            ReplyFd::Lent(fds)
        } else {
            ReplyFd::None
        })
    }

    /// DEVICE_GET_IRQ_INFO: only the index (at offset 8) is read.
    fn irq_info(&mut self, p: &[u8]) -> Result<()> {
        let index = u32_at(p, 8).ok_or(Error::InvalidArgument("IRQ_INFO"))?;
        let info = self
            .model
            .irq_info(index)
            .ok_or(Error::InvalidArgument("IRQ index"))?;
        self.st
            .out
            .extend_from_slice(&proto::encode_irq_info(16, &info));
        Ok(())
    }

    /// DEVICE_SET_IRQS: mask, unmask or trigger vectors, or wire eventfds to
    /// them.
    fn set_irqs(&mut self, p: &[u8], fds: Vec<OwnedFd>) -> Result<()> {
        let m = IrqSetMsg::decode(p)?;
        let action = match m.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK {
            VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
            VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            VFIO_IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
            _ => return Err(Error::InvalidArgument("SET_IRQS action")),
        };
        let (index, start, count) = (m.index, m.start, m.count);
        match m.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE if fds.is_empty() => {
                self.st.irqs.set(index, action, start, count, None, None)
            }
            VFIO_IRQ_SET_DATA_BOOL if fds.is_empty() => {
                let b = p
                    .get(proto::IRQ_SET_SIZE..proto::IRQ_SET_SIZE + count as usize)
                    .ok_or(Error::InvalidArgument("SET_IRQS bool data short"))?;
                self.st.irqs.set(index, action, start, count, Some(b), None)
            }
            VFIO_IRQ_SET_DATA_EVENTFD => {
                self.st
                    .irqs
                    .set(index, action, start, count, None, Some(fds))
            }
            _ => Err(Error::InvalidArgument("SET_IRQS data type")),
        }
    }

    /// REGION_READ: the reply is the request's fixed part and the data.
    fn region_read(&mut self, p: &[u8]) -> Result<()> {
        let a = RegionAccess::decode(p)?;
        let count = a.count as usize;
        check_region(
            &self.st.regions,
            self.config,
            a.region,
            a.offset,
            count,
            false,
        )?;
        let (model, mut ctx, out) = self.model_ctx();
        out.extend_from_slice(&a.encode());
        out.resize(RegionAccess::SIZE + count, 0);
        model.region_read(&mut ctx, a.region, a.offset, &mut out[RegionAccess::SIZE..])
    }

    /// REGION_WRITE: the reply is the request's fixed part.
    fn region_write(&mut self, p: &[u8]) -> Result<()> {
        let a = RegionAccess::decode(p)?;
        let data = &p[RegionAccess::SIZE..];
        if data.len() != a.count as usize {
            return Err(Error::InvalidArgument(
                "REGION_WRITE count differs from the data sent",
            ));
        }
        check_region(
            &self.st.regions,
            self.config,
            a.region,
            a.offset,
            data.len(),
            true,
        )?;
        let (model, mut ctx, out) = self.model_ctx();
        model.region_write(&mut ctx, a.region, a.offset, data)?;
        out.extend_from_slice(&a.encode());
        Ok(())
    }

    /// REGION_WRITE_MULTI, when negotiated: the writes in order, each checked
    /// as a REGION_WRITE; the reply is the count of writes.
    fn region_write_multi(&mut self, p: &[u8]) -> Result<()> {
        if !self
            .st
            .negotiated
            .as_ref()
            .is_some_and(|n| n.write_multiple)
        {
            return Err(Error::InvalidArgument("REGION_WRITE_MULTI not negotiated"));
        }
        let writes = proto::decode_write_multi(p)?;
        // Each write is checked just before it is made, as a run of
        // REGION_WRITEs would be: the borrows are split by hand for that.
        let Session { st, model, config } = self;
        let SessionState {
            link,
            dma,
            irqs,
            regions,
            out,
            ..
        } = &mut **st;
        let mut ctx = Ctx { link, dma, irqs };
        for w in &writes {
            let n = w.count as usize;
            check_region(regions, config, w.region, w.offset, n, true)?;
            model.region_write(&mut ctx, w.region, w.offset, &w.data[..n])?;
        }
        out.extend_from_slice(&(writes.len() as u64).to_ne_bytes());
        Ok(())
    }

    /// DEVICE_RESET.
    fn reset(&mut self) -> Result<()> {
        let (model, mut ctx, _) = self.model_ctx();
        model.reset(&mut ctx)
    }

    /// DEVICE_FEATURE: the model's answer follows the echoed flags.
    fn feature(&mut self, p: &[u8]) -> Result<()> {
        let (_argsz, flags, data) = proto::decode_feature(p)?;
        let reply = match self.migration_feature(flags, data) {
            Some(migration) => migration?,
            None => self.model.device_feature(flags, data)?,
        };
        self.st
            .out
            .extend_from_slice(&proto::encode_feature((8 + reply.len()) as u32, flags));
        self.st.out.extend_from_slice(&reply);
        Ok(())
    }
}

/// Checks an access of `count` bytes at `offset` of region `index`: the
/// region exists and allows it, it fits the region, and it is no larger than
/// one message may carry.
fn check_region(
    regions: &[RegionInfo],
    config: &ServerConfig,
    index: u32,
    offset: u64,
    count: usize,
    write: bool,
) -> Result<()> {
    let r = regions
        .get(index as usize)
        .ok_or(Error::InvalidArgument("region index"))?;
    let flag = if write {
        VFIO_REGION_INFO_FLAG_WRITE
    } else {
        VFIO_REGION_INFO_FLAG_READ
    };
    if r.flags & flag == 0 {
        return Err(Error::InvalidArgument("region lacks the access permission"));
    }
    if count > config.max_data_xfer_size as usize {
        return Err(Error::InvalidArgument(
            "access larger than max_data_xfer_size",
        ));
    }
    match offset.checked_add(count as u64) {
        Some(end) if end <= r.size => Ok(()),
        _ => Err(Error::InvalidArgument("access past the region's end")),
    }
}
