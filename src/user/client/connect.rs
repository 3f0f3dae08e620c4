//! Connection setup: from a connected socket to a ready [`Client`].
//!
//! This module owns what happens once per connection: version negotiation
//! (and taking the twin socket the server may pass with its answer),
//! discovery of the device, its regions and their fds, the record of which
//! capabilities the device has and why, and mapping the mappable areas.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::dma::TwinSocket;
use super::mapped::map_regions;
use super::migration::MigrationLink;
use super::multiplex::Inner;
use super::{expect_len, Client, ClientConfig, MAX_IRQS, MAX_REGIONS};
use crate::caps::{Capabilities, CapabilityRecord, Source};
use crate::device::{DeviceInfo, RegionInfo};
use crate::error::{Error, Result};
use crate::region_info::MAX_REGION_INFO;
use crate::user::proto::{self, cmd};
use crate::user::version::{self, VersionCaps};
use crate::user::wire::set_timeouts;

impl Client {
    /// Connects to a vfio-user server socket and negotiates with it.
    pub fn connect(path: impl AsRef<Path>, config: ClientConfig) -> Result<Self> {
        let stream = UnixStream::connect(path.as_ref())
            .map_err(|e| Error::io("connect to vfio-user socket", e))?;
        Self::from_stream(stream, config)
    }

    /// Uses an already connected socket.
    pub fn from_stream(stream: UnixStream, config: ClientConfig) -> Result<Self> {
        let sock: OwnedFd = stream.into();
        // Short receive timeouts let a reader notice its deadline; sends may
        // block at most the request timeout.
        set_timeouts(
            sock.as_fd(),
            Some(config.timeout.min(Duration::from_millis(200))),
            Some(config.timeout),
        )?;
        let max_msg = config.max_data_xfer_size as usize + 64 * 1024;
        let inner = Arc::new(Inner::new(sock, &config, max_msg));
        let (server, twin_fd) = negotiate_version(&inner, &config)?;
        let max_xfer = server
            .max_data_xfer_size
            .min(config.max_data_xfer_size)
            .max(1) as usize;
        let twin = match twin_fd {
            Some(fd) => Some(TwinSocket::spawn(
                inner.clone(),
                fd,
                config.timeout,
                max_msg,
            )?),
            None => None,
        };
        let migration = Arc::new(MigrationLink::new(Arc::clone(&inner), max_xfer));
        let mut client = Client {
            inner,
            server,
            info: DeviceInfo {
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            },
            regions: Vec::new(),
            caps: CapabilityRecord::new(),
            max_xfer,
            twin: Mutex::new(twin),
            mapped: Vec::new(),
            migration,
            data_fd: Mutex::new(None),
            doorbells: Vec::new(),
        };
        client.discover()?;
        Ok(client)
    }

    /// Learns the device, its regions and capabilities, and maps what it can.
    fn discover(&mut self) -> Result<()> {
        let req = proto::encode_device_info(
            16,
            &DeviceInfo {
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            },
        );
        let info = self
            .inner
            .request(cmd::DEVICE_GET_INFO, &[&req], &[], |r| {
                expect_len("DEVICE_GET_INFO", r.payload, 16)?;
                proto::decode_device_info(r.payload)
            })?;
        if info.num_regions > MAX_REGIONS || info.num_irqs > MAX_IRQS {
            return Err(Error::Protocol(format!(
                "server declares {} regions and {} IRQ indices",
                info.num_regions, info.num_irqs
            )));
        }
        self.info = info;
        for index in 0..info.num_regions {
            let r = self.fetch_region_info(index)?;
            self.regions.push(r);
        }
        self.record_capabilities();
        self.mapped = map_regions(&self.regions);
        if let Some(a) = self.mapped.first() {
            self.caps.withhold(
                Capabilities::POSTED_WRITES,
                Source::MappedArea(a.region),
                "an area is mapped, so posted writes wait for their reply to stay in order",
            );
        }
        let mut rec = std::mem::take(&mut self.caps);
        let fetched = self.fetch_doorbells(&mut rec);
        self.caps = rec;
        fetched
    }

    /// Records the device's capability bits from what discovery learned.
    fn record_capabilities(&mut self) {
        let mut rec = CapabilityRecord::new();
        rec.grant(
            Capabilities::DMA_MESSAGES,
            Source::Backend,
            "the client answers DMA_READ/DMA_WRITE from its maps",
        );
        rec.grant(
            Capabilities::POSTED_WRITES,
            Source::Backend,
            "a posted write is sent with no-reply and not waited for",
        );
        match self.regions.iter().find(|r| r.is_mappable()) {
            Some(r) => {
                let why = "the region comes with an fd and mmappable areas";
                rec.grant(Capabilities::REGION_MMAP, Source::RegionInfo(r.index), why);
                rec.grant(Capabilities::REGION_FDS, Source::RegionInfo(r.index), why);
            }
            None => {
                let why = "no region comes with an fd to mmap";
                rec.withhold(Capabilities::REGION_MMAP, Source::DeviceInfo, why);
                rec.withhold(Capabilities::REGION_FDS, Source::DeviceInfo, why);
            }
        }
        rec.note_device_flags(self.info.flags);
        let key = Source::Negotiation("write_multiple");
        if self.server.write_multiple {
            rec.grant(
                Capabilities::WRITE_MULTI,
                key,
                "the server accepts REGION_WRITE_MULTI",
            );
        } else {
            rec.withhold(
                Capabilities::WRITE_MULTI,
                key,
                "the server did not offer it",
            );
        }
        self.record_migration(&mut rec);
        self.record_dirty_tracking_probe(&mut rec);
        self.caps = rec;
    }

    /// DEVICE_GET_REGION_INFO for region `index`, asking again with a larger
    /// argsz while the server says its capability chain needs more room.
    fn fetch_region_info(&self, index: u32) -> Result<RegionInfo> {
        let mut argsz = 256u32;
        loop {
            let req = proto::encode_region_info_request(argsz, index);
            let (mut info, needed, fd) =
                self.inner
                    .request(cmd::DEVICE_GET_REGION_INFO, &[&req], &[], |r| {
                        let (info, needed) = proto::decode_region_info(r.payload)?;
                        Ok((info, needed, r.fds.pop()))
                    })?;
            if needed > argsz && needed as usize > proto::REGION_INFO_SIZE {
                if needed as usize > MAX_REGION_INFO || argsz as usize >= MAX_REGION_INFO {
                    return Err(Error::Protocol(format!(
                        "region {index} info needs {needed} bytes"
                    )));
                }
                argsz = needed;
                continue;
            }
            if info.index != index {
                return Err(Error::Protocol(format!(
                    "asked for region {index}, got {}",
                    info.index
                )));
            }
            info.fd = fd.map(Arc::new);
            return Ok(info);
        }
    }
}

/// VERSION: proposes our capabilities and checks the server's answer. Returns
/// the server's capabilities and, when both sides want twin-socket mode, the
/// socket the server passed for it.
fn negotiate_version(
    inner: &Inner,
    config: &ClientConfig,
) -> Result<(VersionCaps, Option<OwnedFd>)> {
    let ours = VersionCaps {
        max_msg_fds: crate::user::wire::MAX_RECV_FDS as u32,
        max_data_xfer_size: config.max_data_xfer_size,
        max_dma_maps: version::DEFAULT_MAX_DMA_MAPS,
        pgsizes: 4096,
        write_multiple: true,
        migration: None,
        twin_socket: config.twin_socket,
        twin_fd_index: None,
    };
    let payload = proto::encode_version(version::MAJOR, version::MINOR, &ours.to_json());
    inner.request(cmd::VERSION, &[&payload], &[], |r| {
        let (major, minor, json) = proto::decode_version(r.payload)?;
        if major != version::MAJOR || minor > version::MINOR {
            return Err(Error::Protocol(format!(
                "server answered version {major}.{minor}"
            )));
        }
        let caps = VersionCaps::parse(json)?;
        let twin = if caps.twin_socket && config.twin_socket {
            let i = caps
                .twin_fd_index
                .ok_or_else(|| Error::Protocol("twin_socket without fd_index".into()))?;
            if i as usize >= r.fds.len() {
                return Err(Error::Protocol("twin_socket fd_index names no fd".into()));
            }
            Some(r.fds.swap_remove(i as usize))
        } else {
            None
        };
        Ok((caps, twin))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn refused_connect_keeps_the_io_error_and_reports_econnrefused() {
        let dir = std::env::temp_dir().join(format!("vfio-io-refused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stale.sock");
        let _ = std::fs::remove_file(&path);
        // A socket file whose listener is gone: what a server that exited leaves.
        drop(UnixListener::bind(&path).unwrap());
        let Err(e) = Client::connect(&path, ClientConfig::default()) else {
            panic!("connected to a socket nobody listens on");
        };
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert_eq!(e.errno(), libc::ECONNREFUSED, "{e}");
        let source = std::error::Error::source(&e).expect("the io::Error is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::ECONNREFUSED));
        assert!(
            e.to_string().starts_with("connect to vfio-user socket: "),
            "{e}"
        );
    }
}
