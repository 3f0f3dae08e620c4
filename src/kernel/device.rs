//! [`KernelDevice`]: one device fd from either road, driven through
//! [`DeviceIo`].

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use vfio_bindings::bindings::vfio as uapi;

use super::container::Group;
use super::iommufd::Iommufd;
use super::migration::KernelMigration;
use super::{ioctl, probe, region};
use crate::caps::{Capabilities, CapabilityRecord};
use crate::device::{DeviceInfo, DeviceIo, DmaMap, IrqData, IrqInfo, IrqSet, RegionInfo};
use crate::error::{Error, Result};
use crate::migration::DeviceMigration;

/// How the device's DMA is mapped: which road it was opened by.
#[derive(Debug)]
enum Iommu {
    Container(Arc<Group>),
    Iommufd(Iommufd),
}

/// A device opened through kernel VFIO, by either road.
#[derive(Debug)]
pub struct KernelDevice {
    // Declared first so it is closed first: the device must let go of its
    // group or iommufd binding before those are released.
    fd: Arc<OwnedFd>,
    /// Holds the device fd too: declared next, so the fd still closes
    /// before the group or iommufd binding goes.
    migration: KernelMigration,
    iommu: Iommu,
    info: DeviceInfo,
    /// Region infos read at open; `None` where the kernel refused the index
    /// (vfio-pci does for absent regions such as VGA on a non-VGA device).
    regions: Vec<Option<RegionInfo>>,
    caps: CapabilityRecord,
}

/// sizeof(struct vfio_irq_set) without its data.
const IRQ_SET_HEADER: usize = std::mem::size_of::<uapi::vfio_irq_set>();
/// sizeof(struct vfio_device_feature) without its data.
const FEATURE_HEADER: usize = std::mem::size_of::<uapi::vfio_device_feature>();
/// A bound on one feature payload: the largest UAPI payload is tens of bytes
/// plus caller-sized range arrays; this keeps a bad length from allocating
/// without limit.
const MAX_FEATURE_DATA: usize = 1 << 20;

impl KernelDevice {
    fn new(fd: OwnedFd, iommu: Iommu) -> Result<Self> {
        let fd = Arc::new(fd);
        let raw = ioctl::device_info(fd.as_fd())?;
        let info = DeviceInfo {
            flags: raw.flags,
            num_regions: raw.num_regions,
            num_irqs: raw.num_irqs,
        };
        let regions = (0..info.num_regions)
            .map(|i| region::query(&fd, i).ok())
            .collect::<Vec<_>>();
        let caps = probe::device_caps(fd.as_fd(), &info, &regions);
        Ok(KernelDevice {
            migration: KernelMigration::new(Arc::clone(&fd)),
            fd,
            iommu,
            info,
            regions,
            caps,
        })
    }

    /// Opens by PCI address through the device's group and a type1v2 container.
    pub fn open_pci(addr: &str) -> Result<Self> {
        let (group, fd) = super::container::open_device(addr)?;
        Self::new(fd, Iommu::Container(group))
    }

    /// Opens a VFIO device cdev through iommufd.
    pub fn open_cdev(path: &str) -> Result<Self> {
        let (ctx, fd) = super::iommufd::open_device(path)?;
        Self::new(fd, Iommu::Iommufd(ctx))
    }

    /// The device fd (shared with the region infos that hand it out for mmap).
    pub fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    /// The IOMMU group number on the container road.
    pub fn group(&self) -> Option<u32> {
        match &self.iommu {
            Iommu::Container(g) => Some(g.number()),
            Iommu::Iommufd(_) => None,
        }
    }

    /// The file offset of `[offset, offset + len)` of region `index`, after
    /// checking the range lies inside the region.
    fn file_offset(&self, index: u32, offset: u64, len: usize) -> Result<u64> {
        if index >= self.info.num_regions {
            return Err(Error::InvalidArgument(
                "region index past the device's regions",
            ));
        }
        let r = self
            .regions
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::InvalidArgument("the device has no such region"))?;
        let end = offset
            .checked_add(len as u64)
            .ok_or(Error::InvalidArgument("region access overflows"))?;
        if end > r.size {
            return Err(Error::InvalidArgument(
                "region access past the region's end",
            ));
        }
        r.offset
            .checked_add(offset)
            .ok_or(Error::InvalidArgument("region offset overflows"))
    }
}

impl DeviceIo for KernelDevice {
    fn capability_record(&self) -> &CapabilityRecord {
        &self.caps
    }

    fn backend_capabilities(&self) -> Capabilities {
        probe::BACKEND
    }

    fn backend_name(&self) -> &'static str {
        match self.iommu {
            Iommu::Container(_) => "kernel-container",
            Iommu::Iommufd(_) => "kernel-iommufd",
        }
    }

    fn device_info(&self) -> Result<DeviceInfo> {
        Ok(self.info)
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        match self.regions.get(index as usize) {
            Some(Some(r)) => Ok(r.clone()),
            // Past the end, or refused at open: ask again so the caller gets
            // the kernel's own answer.
            _ => region::query(&self.fd, index),
        }
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        let i = ioctl::irq_info(self.fd.as_fd(), index)?;
        Ok(IrqInfo {
            index: i.index,
            flags: i.flags,
            count: i.count,
        })
    }

    fn set_irqs(&self, set: &IrqSet<'_>) -> Result<()> {
        set.validate()?;
        let mut buf = vec![0u8; IRQ_SET_HEADER];
        match set.data {
            IrqData::None => {}
            IrqData::Bool(b) => buf.extend_from_slice(b),
            IrqData::Eventfds(fds) => fds
                .iter()
                .for_each(|fd| buf.extend_from_slice(&fd.to_ne_bytes())),
        }
        buf[4..8].copy_from_slice(&set.flags().to_ne_bytes());
        buf[8..12].copy_from_slice(&set.index.to_ne_bytes());
        buf[12..16].copy_from_slice(&set.start.to_ne_bytes());
        buf[16..20].copy_from_slice(&set.count.to_ne_bytes());
        ioctl::set_irqs(self.fd.as_fd(), &mut buf)
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let mut at = self.file_offset(index, offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let off = i64::try_from(at).map_err(|_| Error::InvalidArgument("region offset"))?;
            let n = nix::sys::uio::pread(self.fd.as_fd(), &mut data[done..], off)
                .map_err(|e| Error::sys("pread region", e))?;
            if n == 0 {
                return Err(Error::Errno {
                    op: "pread region: short read",
                    errno: libc::EIO,
                });
            }
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8], _post: bool) -> Result<()> {
        // The kernel completes a pwrite before returning: there is nothing to
        // post, so `post` changes nothing here.
        let mut at = self.file_offset(index, offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let off = i64::try_from(at).map_err(|_| Error::InvalidArgument("region offset"))?;
            let n = nix::sys::uio::pwrite(self.fd.as_fd(), &data[done..], off)
                .map_err(|e| Error::sys("pwrite region", e))?;
            if n == 0 {
                return Err(Error::Errno {
                    op: "pwrite region: short write",
                    errno: libc::EIO,
                });
            }
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    fn device_feature(&self, flags: u32, data: &mut [u8]) -> Result<i32> {
        if data.len() > MAX_FEATURE_DATA {
            return Err(Error::InvalidArgument("feature payload too large"));
        }
        let mut buf = vec![0u8; FEATURE_HEADER + data.len()];
        buf[4..8].copy_from_slice(&flags.to_ne_bytes());
        buf[FEATURE_HEADER..].copy_from_slice(data);
        let ret = ioctl::device_feature(self.fd.as_fd(), &mut buf)?;
        // GET fills the payload; a SET of MIG_DEVICE_STATE writes its
        // data_fd back. Otherwise the kernel leaves the bytes as they were.
        data.copy_from_slice(&buf[FEATURE_HEADER..]);
        Ok(ret)
    }

    fn reset(&self) -> Result<()> {
        ioctl::device_reset(self.fd.as_fd())
    }

    unsafe fn dma_map(&self, map: &DmaMap) -> Result<()> {
        match &self.iommu {
            Iommu::Container(g) => g.map(map),
            Iommu::Iommufd(i) => i.map(map),
        }
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
        match &self.iommu {
            Iommu::Container(g) => g.unmap(iova, size),
            Iommu::Iommufd(i) => i.unmap(iova, size),
        }
    }

    fn migration(&self) -> Option<&dyn DeviceMigration> {
        Some(&self.migration)
    }

    fn region_create_dma_buf(&self, index: u32, ranges: &[(u64, u64)]) -> Result<Option<OwnedFd>> {
        if !self.caps.mask().contains(Capabilities::DMA_BUF) {
            return Ok(None);
        }
        let nr = u32::try_from(ranges.len())
            .map_err(|_| Error::InvalidArgument("too many DMA-BUF ranges"))?;
        let dma_buf_size = std::mem::size_of::<uapi::vfio_device_feature_dma_buf>();
        let range_size = std::mem::size_of::<uapi::vfio_region_dma_range>();
        let len = ranges
            .len()
            .checked_mul(range_size)
            .and_then(|n| n.checked_add(FEATURE_HEADER + dma_buf_size))
            .filter(|&n| n <= FEATURE_HEADER + MAX_FEATURE_DATA)
            .ok_or(Error::InvalidArgument("too many DMA-BUF ranges"))?;
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // argsz, set by the ioctl layer
        buf.extend_from_slice(
            &(uapi::VFIO_DEVICE_FEATURE_GET | uapi::VFIO_DEVICE_FEATURE_DMA_BUF).to_ne_bytes(),
        );
        buf.extend_from_slice(&index.to_ne_bytes());
        let open_flags = (libc::O_CLOEXEC | libc::O_RDWR) as u32;
        buf.extend_from_slice(&open_flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // flags
        buf.extend_from_slice(&nr.to_ne_bytes());
        for &(offset, length) in ranges {
            buf.extend_from_slice(&offset.to_ne_bytes());
            buf.extend_from_slice(&length.to_ne_bytes());
        }
        ioctl::device_feature_fd(self.fd.as_fd(), &mut buf).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use nix::errno::Errno;

    use super::super::mock_kernel::{DmaBufAnswer, MockFd, RegionAnswer, Script};
    use super::*;
    use crate::bytes::{u32_at, u64_at};
    use crate::caps::Source;
    use crate::device::{
        pci_region, RegionCap, SparseArea, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    };

    const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    const RW_MMAP: u32 = RW | crate::device::VFIO_REGION_INFO_FLAG_MMAP;

    fn region(flags: u32, size: u64, offset: u64, caps: Vec<RegionCap>) -> RegionAnswer {
        RegionAnswer::Info(RegionInfo {
            flags,
            size,
            offset,
            caps,
            ..Default::default()
        })
    }

    /// An edu-like device: BAR0 mappable, BAR1 absent, BAR2 with a chain
    /// longer than the fixed part, and a small config space.
    fn edu_like() -> Script {
        Script {
            regions: vec![
                region(RW_MMAP, 0x1000, 0x1000, vec![]),
                RegionAnswer::Refused(Errno::EINVAL),
                region(
                    RW_MMAP,
                    0x4000,
                    0x8000,
                    vec![
                        RegionCap::SparseMmap(vec![SparseArea {
                            offset: 0x1000,
                            size: 0x1000,
                        }]),
                        RegionCap::Type {
                            region_type: 1,
                            subtype: 2,
                        },
                    ],
                ),
                region(RW, 0x100, 0x10000, vec![]),
            ],
            irqs: vec![
                IrqInfo {
                    index: 0,
                    flags: 0x7,
                    count: 1,
                },
                IrqInfo {
                    index: 1,
                    flags: 0x9,
                    count: 1,
                },
            ],
            features: vec![uapi::VFIO_DEVICE_FEATURE_DMA_BUF],
            ..Script::default()
        }
    }

    /// A KernelDevice on the iommufd road over mock objects.
    fn open_mock(script: Script) -> (KernelDevice, MockFd) {
        let dev = MockFd::new(script);
        let iommufd = MockFd::new(Script::default());
        let fd = dev.fd();
        let ctx = Iommufd::attach(fd.as_fd(), iommufd.fd()).unwrap();
        dev.forget_requests();
        let d = KernelDevice::new(fd, Iommu::Iommufd(ctx)).unwrap();
        (d, dev)
    }

    /// Whether the record grants `bit`, and what decided it.
    fn decided(d: &KernelDevice, bit: Capabilities) -> (bool, Source) {
        let ev = d.capability_record().deciding(bit).unwrap();
        (ev.present, ev.source.clone())
    }

    #[test]
    fn open_reads_the_device_info_and_every_region() {
        let (d, dev) = open_mock(edu_like());
        assert_eq!(
            d.device_info().unwrap(),
            DeviceInfo {
                flags: uapi::VFIO_DEVICE_FLAGS_PCI | uapi::VFIO_DEVICE_FLAGS_RESET,
                num_regions: 4,
                num_irqs: 2,
            }
        );
        assert_eq!(dev.requests()[0], ioctl::VFIO_DEVICE_GET_INFO);
        let bar2 = d.region_info(2).unwrap();
        assert_eq!((bar2.index, bar2.size, bar2.offset), (2, 0x4000, 0x8000));
        assert_eq!(bar2.caps.len(), 2, "{:?}", bar2.caps);
        assert_eq!(d.region_info(3).unwrap().size, 0x100);
        // Region 1 was refused at open; asking again brings the kernel's answer.
        dev.forget_requests();
        let e = d.region_info(1).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.to_string().contains("VFIO_DEVICE_GET_REGION_INFO"), "{e}");
        assert_eq!(dev.requests(), [ioctl::VFIO_DEVICE_GET_REGION_INFO]);
    }

    #[test]
    fn a_failed_device_info_fails_the_open_with_its_errno() {
        let dev = MockFd::new(Script {
            fail: vec![(ioctl::VFIO_DEVICE_GET_INFO, Errno::EACCES)],
            ..edu_like()
        });
        let iommufd = MockFd::new(Script::default());
        let fd = dev.fd();
        let ctx = Iommufd::attach(fd.as_fd(), iommufd.fd()).unwrap();
        let e = KernelDevice::new(fd, Iommu::Iommufd(ctx)).unwrap_err();
        assert_eq!(e.errno(), libc::EACCES);
        assert!(e.to_string().contains("VFIO_DEVICE_GET_INFO"), "{e}");
        assert!(dev
            .bytes_sent(ioctl::VFIO_DEVICE_GET_REGION_INFO)
            .is_empty());
    }

    #[test]
    fn probe_records_each_feature_with_its_number() {
        let (d, _dev) = open_mock(Script {
            features: vec![
                uapi::VFIO_DEVICE_FEATURE_DMA_BUF,
                uapi::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
            ],
            ..edu_like()
        });
        for (bit, feature, present) in [
            (Capabilities::DMA_BUF, 11, true),
            (Capabilities::MIGRATION, 1, false),
            (Capabilities::DIRTY_TRACKING, 6, false),
            (Capabilities::LOW_POWER, 3, true),
        ] {
            assert_eq!(
                decided(&d, bit),
                (present, Source::FeatureProbe(feature)),
                "{bit:?}"
            );
        }
        assert!(d
            .capabilities()
            .contains(Capabilities::DMA_BUF | Capabilities::LOW_POWER));
        assert!(!d
            .capabilities()
            .intersects(Capabilities::MIGRATION | Capabilities::DIRTY_TRACKING));
        assert_eq!(
            decided(&d, Capabilities::IOMMU_DMA),
            (true, Source::Backend)
        );
    }

    #[test]
    fn probes_are_bare_headers_with_the_probe_flag() {
        let (_d, dev) = open_mock(edu_like());
        let sent = dev.bytes_sent(ioctl::VFIO_DEVICE_FEATURE);
        // PROBE 0x40000 | GET 0x10000 or SET 0x20000 | feature.
        let expected = [0x50000 | 11, 0x50000 | 1, 0x60000 | 6, 0x60000 | 3];
        assert_eq!(sent.len(), expected.len());
        for (buf, flags) in sent.iter().zip(expected) {
            assert_eq!(buf.len(), 8, "a probe carries no payload");
            assert_eq!(u32_at(buf, 0), Some(8), "argsz");
            assert_eq!(u32_at(buf, 4), Some(flags), "flags");
        }
    }

    #[test]
    fn reset_is_decided_by_the_device_flags() {
        let (with, _a) = open_mock(edu_like());
        let ev = with
            .capability_record()
            .deciding(Capabilities::RESET)
            .unwrap();
        assert!(ev.present);
        assert_eq!(ev.source, Source::DeviceInfo);
        let (without, _b) = open_mock(Script {
            device_flags: uapi::VFIO_DEVICE_FLAGS_PCI,
            ..edu_like()
        });
        let ev = without
            .capability_record()
            .deciding(Capabilities::RESET)
            .unwrap();
        assert!(!ev.present);
        assert_eq!(ev.source, Source::DeviceInfo);
        assert!(!without.capabilities().contains(Capabilities::RESET));
    }

    #[test]
    fn region_mmap_is_granted_by_the_first_mappable_region() {
        let empty_sparse = vec![RegionCap::SparseMmap(vec![SparseArea {
            offset: 0,
            size: 0,
        }])];
        let (d, _a) = open_mock(Script {
            regions: vec![
                region(RW, 0x1000, 0, vec![]),
                region(RW_MMAP, 0x1000, 0x1000, empty_sparse.clone()),
                region(RW_MMAP, 0x1000, 0x2000, vec![]),
            ],
            ..Script::default()
        });
        assert_eq!(
            decided(&d, Capabilities::REGION_MMAP),
            (true, Source::RegionInfo(2))
        );
        let (none, _b) = open_mock(Script {
            regions: vec![
                region(RW, 0x1000, 0, vec![]),
                region(RW_MMAP, 0x1000, 0x1000, empty_sparse),
            ],
            ..Script::default()
        });
        assert_eq!(
            decided(&none, Capabilities::REGION_MMAP),
            (false, Source::DeviceInfo)
        );
    }

    #[test]
    fn dma_buf_request_carries_the_region_and_its_ranges() {
        let (d, dev) = open_mock(edu_like());
        dev.forget_requests();
        let fd = d
            .region_create_dma_buf(2, &[(0x1000, 0x1000), (0x3000, 0x800)])
            .unwrap();
        assert!(fd.is_some());
        let sent = dev.bytes_sent(ioctl::VFIO_DEVICE_FEATURE);
        assert_eq!(sent.len(), 1);
        let b = &sent[0];
        // vfio_device_feature (argsz, flags), then vfio_device_feature_dma_buf
        // (region_index, open_flags, flags, nr_ranges), then {offset, length}s.
        assert_eq!(b.len(), 8 + 16 + 2 * 16);
        assert_eq!(u32_at(b, 0), Some(b.len() as u32), "argsz");
        assert_eq!(u32_at(b, 4), Some(0x10000 | 11), "GET | DMA_BUF");
        assert_eq!(u32_at(b, 8), Some(2), "region_index");
        assert_eq!(
            u32_at(b, 12),
            Some((libc::O_CLOEXEC | libc::O_RDWR) as u32),
            "open_flags"
        );
        assert_eq!(u32_at(b, 16), Some(0), "flags");
        assert_eq!(u32_at(b, 20), Some(2), "nr_ranges");
        assert_eq!(
            [24, 32, 40, 48].map(|o| u64_at(b, o).unwrap()),
            [0x1000, 0x1000, 0x3000, 0x800]
        );
    }

    #[test]
    fn dma_buf_without_the_capability_asks_the_kernel_nothing() {
        let (d, dev) = open_mock(Script {
            features: vec![],
            ..edu_like()
        });
        dev.forget_requests();
        assert!(d
            .region_create_dma_buf(0, &[(0, 0x1000)])
            .unwrap()
            .is_none());
        assert!(dev.requests().is_empty(), "{:?}", dev.requests());
    }

    #[test]
    fn dma_buf_answered_without_an_fd_is_eio() {
        let (d, _dev) = open_mock(Script {
            dma_buf: DmaBufAnswer::NoFd,
            ..edu_like()
        });
        let e = d.region_create_dma_buf(0, &[(0, 0x1000)]).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("returned no fd"), "{e}");
    }

    #[test]
    fn failed_requests_keep_their_errno_and_operation() {
        let (d, _dev) = open_mock(Script {
            fail: vec![
                (ioctl::VFIO_DEVICE_RESET, Errno::EPERM),
                (ioctl::VFIO_DEVICE_SET_IRQS, Errno::EBUSY),
            ],
            ..edu_like()
        });
        let e = d.reset().unwrap_err();
        assert_eq!(e.errno(), libc::EPERM);
        assert!(e.to_string().contains("VFIO_DEVICE_RESET"), "{e}");
        let set = IrqSet {
            index: 0,
            start: 0,
            count: 0,
            action: crate::device::IrqAction::Trigger,
            data: IrqData::None,
        };
        let e = d.set_irqs(&set).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(e.to_string().contains("VFIO_DEVICE_SET_IRQS"), "{e}");
        let e = d.irq_info(5).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.to_string().contains("VFIO_DEVICE_GET_IRQ_INFO"), "{e}");
        let (d, _dev) = open_mock(Script {
            dma_buf: DmaBufAnswer::Fails(Errno::EINVAL),
            ..edu_like()
        });
        let e = d.region_create_dma_buf(0, &[(1, 3)]).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.to_string().contains("VFIO_DEVICE_FEATURE"), "{e}");
    }

    #[test]
    fn irq_info_is_the_kernels_answer() {
        let (d, _dev) = open_mock(edu_like());
        assert_eq!(
            d.irq_info(1).unwrap(),
            IrqInfo {
                index: 1,
                flags: 0x9,
                count: 1
            }
        );
    }

    #[test]
    fn region_access_outside_a_region_is_refused_before_any_io() {
        let (d, dev) = open_mock(edu_like());
        let mut four = [0u8; 4];
        let cases: [(u32, u64, &str); 4] = [
            (9, 0, "past the device's regions"),
            (1, 0, "no such region"),
            (0, 0xffd, "past the region's end"),
            (0, u64::MAX - 1, "overflows"),
        ];
        for (index, offset, why) in cases {
            let e = d.region_read(index, offset, &mut four).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{why}");
            assert!(e.to_string().contains(why), "{e}");
            let e = d.region_write(index, offset, &four, false).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        assert_eq!(dev.file().metadata().unwrap().len(), 0, "nothing written");
        // The last four bytes are inside.
        d.region_write(pci_region::BAR0, 0xffc, &[1, 2, 3, 4], false)
            .unwrap();
    }

    #[test]
    fn region_access_lands_at_the_region_offset() {
        let (d, dev) = open_mock(edu_like());
        // Region 3 starts at 0x10000 of the device fd.
        dev.file()
            .write_all_at(&[0xed, 0, 0, 1], 0x10000 + 0x10)
            .unwrap();
        let mut id = [0u8; 4];
        d.region_read(3, 0x10, &mut id).unwrap();
        assert_eq!(id, [0xed, 0, 0, 1]);
        d.region_write(3, 0x20, &[7, 8], true).unwrap();
        let mut back = [0u8; 2];
        dev.file().read_exact_at(&mut back, 0x10000 + 0x20).unwrap();
        assert_eq!(back, [7, 8]);
    }

    #[test]
    fn set_irqs_lays_out_the_header_and_its_data() {
        let (d, dev) = open_mock(edu_like());
        d.set_irqs(&IrqSet {
            index: 2,
            start: 1,
            count: 2,
            action: crate::device::IrqAction::Trigger,
            data: IrqData::Eventfds(&[10, -1]),
        })
        .unwrap();
        d.set_irqs(&IrqSet {
            index: 0,
            start: 0,
            count: 3,
            action: crate::device::IrqAction::Unmask,
            data: IrqData::Bool(&[1, 0, 1]),
        })
        .unwrap();
        let sent = dev.bytes_sent(ioctl::VFIO_DEVICE_SET_IRQS);
        assert_eq!(sent.len(), 2);
        let header = |b: &[u8]| [0, 4, 8, 12, 16].map(|o| u32_at(b, o).unwrap());
        // ACTION_TRIGGER 0x20 | DATA_EVENTFD 0x4; the fds as i32s.
        assert_eq!(header(&sent[0]), [28, 0x24, 2, 1, 2]);
        assert_eq!(&sent[0][20..], [10i32, -1].map(i32::to_ne_bytes).concat());
        // ACTION_UNMASK 0x10 | DATA_BOOL 0x2; one byte per vector.
        assert_eq!(header(&sent[1]), [23, 0x12, 0, 0, 3]);
        assert_eq!(&sent[1][20..], [1, 0, 1]);
    }

    #[test]
    fn set_irqs_with_data_of_the_wrong_length_asks_nothing() {
        let (d, dev) = open_mock(edu_like());
        dev.forget_requests();
        let e = d
            .set_irqs(&IrqSet {
                index: 1,
                start: 0,
                count: 2,
                action: crate::device::IrqAction::Trigger,
                data: IrqData::Eventfds(&[10]),
            })
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(dev.requests().is_empty());
    }

    #[test]
    fn feature_get_copies_the_payload_back_and_set_does_not() {
        let (d, dev) = open_mock(Script {
            features: vec![uapi::VFIO_DEVICE_FEATURE_MIGRATION],
            feature_reply: vec![1, 2, 3, 4],
            ..edu_like()
        });
        dev.forget_requests();
        let get = uapi::VFIO_DEVICE_FEATURE_GET | uapi::VFIO_DEVICE_FEATURE_MIGRATION;
        let mut data = [0u8; 4];
        assert_eq!(d.device_feature(get, &mut data).unwrap(), 0);
        assert_eq!(data, [1, 2, 3, 4]);
        let set = uapi::VFIO_DEVICE_FEATURE_SET | uapi::VFIO_DEVICE_FEATURE_MIGRATION;
        let mut data = [9u8; 4];
        d.device_feature(set, &mut data).unwrap();
        assert_eq!(data, [9; 4]);
        let sent = dev.bytes_sent(ioctl::VFIO_DEVICE_FEATURE);
        assert_eq!(
            sent[0],
            [12u32.to_ne_bytes(), get.to_ne_bytes(), [0; 4]].concat()
        );
        assert_eq!(
            sent[1],
            [12u32.to_ne_bytes(), set.to_ne_bytes(), [9; 4]].concat()
        );
    }

    /// QEMU's road: SET MIG_DEVICE_STATE through `device_feature` gets the
    /// data_fd the kernel wrote into the struct.
    #[test]
    fn feature_set_of_mig_device_state_hands_back_the_kernels_data_fd() {
        let (d, _dev) = open_mock(Script {
            features: vec![uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE],
            mig_stream: b"state".to_vec(),
            ..edu_like()
        });
        let set = uapi::VFIO_DEVICE_FEATURE_SET | uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
        let mut mig = [0u8; 8];
        mig[..4].copy_from_slice(&(crate::migration::MigrationState::Stop as u32).to_ne_bytes());
        d.device_feature(set, &mut mig).unwrap();
        assert_eq!(&mig[4..], &(-1i32).to_ne_bytes(), "STOP has no data");
        mig[..4]
            .copy_from_slice(&(crate::migration::MigrationState::StopCopy as u32).to_ne_bytes());
        d.device_feature(set, &mut mig).unwrap();
        let fd = i32::from_ne_bytes(mig[4..].try_into().unwrap());
        assert!(fd >= 0);
        // SAFETY: the data fd the mock installed for this call, owned here.
        let mut f =
            std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut got).unwrap();
        assert_eq!(got, b"state");
        assert!(d.migration().is_some());
    }

    #[test]
    fn an_oversized_feature_payload_is_refused_before_the_kernel() {
        let (d, dev) = open_mock(edu_like());
        dev.forget_requests();
        let mut big = vec![0u8; MAX_FEATURE_DATA + 1];
        let e = d
            .device_feature(uapi::VFIO_DEVICE_FEATURE_GET | 1, &mut big)
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(dev.requests().is_empty());
    }
}
