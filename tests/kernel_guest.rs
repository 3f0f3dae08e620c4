//! The kernel backend against real kernel VFIO: QEMU's edu device bound to
//! vfio-pci inside a test VM. `vm/run-guest-tests` builds and boots that VM
//! and runs these tests there, once per road; on a host without VFIO they are
//! ignored.
//!
//! `VFIO_IO_TEST_DEVICE` names the device: a PCI address for the container
//! road, or `/dev/vfio/devices/vfioN` for the iommufd road.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vfio_io::device::{
    pci_region, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_io::kernel::{self, KernelDevice};
use vfio_io::memory::{DmaBuffer, Mapping};
use vfio_io::{Capabilities, DeviceIo, Error, Result};

const EDU_ID: u32 = 0x010000ed;
const MIB: u64 = 1 << 20;

fn device_name() -> String {
    std::env::var("VFIO_IO_TEST_DEVICE").expect(
        "VFIO_IO_TEST_DEVICE must name the device (a PCI address or /dev/vfio/devices/vfioN)",
    )
}

/// Counts every log record, so a test can show the library stayed quiet.
struct CountingLogger;

static LOG_RECORDS: AtomicUsize = AtomicUsize::new(0);

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOG_RECORDS.fetch_add(1, Ordering::SeqCst);
        eprintln!("log record: {} {}", record.level(), record.args());
    }
    fn flush(&self) {}
}

fn install_logger() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        static LOGGER: CountingLogger = CountingLogger;
        log::set_logger(&LOGGER).expect("no other logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn open() -> KernelDevice {
    install_logger();
    let name = device_name();
    kernel::open(&name).unwrap_or_else(|e| panic!("open {name}: {e}"))
}

fn read32(dev: &dyn DeviceIo, off: u64) -> Result<u32> {
    let mut b = [0u8; 4];
    dev.region_read(pci_region::BAR0, off, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn write32(dev: &dyn DeviceIo, off: u64, v: u32) -> Result<()> {
    dev.region_write(pci_region::BAR0, off, &v.to_le_bytes(), false)
}

fn write64(dev: &dyn DeviceIo, off: u64, v: u64) -> Result<()> {
    dev.region_write(pci_region::BAR0, off, &v.to_le_bytes(), false)
}

fn fail(what: &'static str) -> Error {
    Error::Sys {
        op: what,
        errno: libc::EIO,
    }
}

/// Turns on bus mastering (PCI command register bit 2): without it edu's
/// DMA goes nowhere, and so do its MSI messages, which are DMA writes too.
fn bus_master_on(dev: &dyn DeviceIo) -> Result<()> {
    let mut cmd = [0u8; 2];
    dev.region_read(pci_region::CONFIG, 4, &mut cmd)?;
    let cmd = u16::from_le_bytes(cmd) | 0x4;
    dev.region_write(pci_region::CONFIG, 4, &cmd.to_le_bytes(), false)
}

/// One edu DMA transfer; waits for the engine to finish.
fn edu_dma(dev: &dyn DeviceIo, src: u64, dst: u64, len: u32, to_ram: bool) -> Result<()> {
    write64(dev, 0x80, src)?;
    write64(dev, 0x88, dst)?;
    write32(dev, 0x90, len)?;
    write32(dev, 0x98, 1 | if to_ram { 2 } else { 0 })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while read32(dev, 0x98)? & 1 != 0 {
        if Instant::now() > deadline {
            return Err(Error::Timeout);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The round trip with the buffer mapped by address, or (`by_fd`) only by its
/// memfd, which takes iommufd's MAP_FILE.
fn dma_round_trip_mapped(dev: &dyn DeviceIo, by_fd: bool) -> Result<()> {
    bus_master_on(dev)?;
    let buf = DmaBuffer::new(4096)?;
    // edu's DMA mask is 28 bits: keep the IOVA low.
    let iova = 0x10_0000;
    let pattern: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
    buf.write(0, &pattern)?;
    let mut map = buf.dma_map(iova);
    if by_fd {
        map.vaddr = 0;
    }
    // SAFETY: `buf` outlives the mapping, which is removed below.
    unsafe { dev.dma_map(&map)? };
    let result = (|| {
        edu_dma(dev, iova, 0x40000, 256, false)?;
        edu_dma(dev, 0x40000, iova + 2048, 256, true)?;
        let mut back = vec![0u8; 256];
        buf.read(2048, &mut back)?;
        if back != pattern {
            return Err(fail("edu DMA round trip changed the data"));
        }
        Ok(())
    })();
    let unmapped = dev.dma_unmap(iova, buf.len() as u64);
    result.and(unmapped)
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn conformance_suite() {
    let dev = open();
    let results = vfio_io::conformance::run_edu_suite(&dev);
    let mut failed = Vec::new();
    for (name, r) in &results {
        match r {
            Ok(()) => println!("  conformance {name}: ok"),
            Err(e) => {
                println!("  conformance {name}: FAILED: {e}");
                failed.push(*name);
            }
        }
    }
    assert!(!results.is_empty(), "the suite ran nothing");
    assert!(failed.is_empty(), "conformance failures: {failed:?}");
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn capabilities_are_probed() {
    let dev = open();
    let caps = dev.capabilities();
    println!("  {} device caps: {}", dev.backend_name(), caps.describe());
    assert!(
        caps.contains(Capabilities::DMA_BUF),
        "edu on Linux >= 6.19 exports DMA-BUFs: {caps:?}"
    );
    assert!(
        !caps.contains(Capabilities::MIGRATION),
        "edu has no migration driver: {caps:?}"
    );
    assert!(caps.contains(Capabilities::REGION_MMAP | Capabilities::IOMMU_DMA));
    assert!(
        dev.backend_capabilities().contains(caps),
        "device mask within the backend's"
    );
    let expected = if device_name().starts_with('/') {
        "kernel-iommufd"
    } else {
        "kernel-container"
    };
    assert_eq!(dev.backend_name(), expected);
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn dma_buf_of_bar0_has_the_requested_size() {
    let dev = open();
    let fd = dev
        .region_create_dma_buf(pci_region::BAR0, &[(0, 0x10000)])
        .expect("DMA-BUF export")
        .expect("the device has DMA_BUF, so an fd comes back");
    let size = nix::unistd::lseek(fd.as_fd(), 0, nix::unistd::Whence::SeekEnd).expect("lseek");
    assert_eq!(size, 0x10000);
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn the_library_logs_nothing() {
    install_logger();
    let before = LOG_RECORDS.load(Ordering::SeqCst);
    {
        // Open (which probes, including features edu lacks), use, fail, close.
        let dev = open();
        let _ = dev.region_create_dma_buf(pci_region::BAR0, &[(0, 0x1000)]);
        let _ = dev.region_read(99, 0, &mut [0u8; 4]);
        let _ = dev.region_info(pci_region::VGA);
        let _ = kernel::open("0000:99:99.9");
        for i in 0..dev.device_info().unwrap().num_irqs {
            let _ = dev.irq_info(i);
        }
    }
    assert_eq!(
        LOG_RECORDS.load(Ordering::SeqCst),
        before,
        "log records were emitted"
    );
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn region_infos_match_edu() {
    let dev = open();
    let info = dev.device_info().unwrap();
    assert!(info.num_regions > pci_region::CONFIG, "{info:?}");
    let bar0 = dev.region_info(pci_region::BAR0).unwrap();
    assert_eq!(bar0.size, MIB);
    let rwm = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
    assert_eq!(bar0.flags & rwm, rwm, "flags {:#x}", bar0.flags);
    assert!(bar0.fd.is_some() && bar0.is_mappable());
    let config = dev.region_info(pci_region::CONFIG).unwrap();
    assert_eq!(config.size, 256);
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn bar0_mmap_reads_what_region_read_reads() {
    let dev = open();
    let bar0 = dev.region_info(pci_region::BAR0).unwrap();
    let fd = bar0.fd.as_ref().expect("BAR0 is mappable");
    let map = Mapping::new(fd.as_fd(), bar0.offset, bar0.size as usize, true).expect("mmap BAR0");
    let mut b = [0u8; 4];
    map.read_reg(0, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), EDU_ID);
    assert_eq!(read32(&dev, 0).unwrap(), EDU_ID);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn bad_input_is_a_clear_errno_and_leaks_nothing() {
    install_logger();
    let fds = open_fds();
    {
        let e = kernel::open("0000:99:99.9").unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV, "{e}");
        assert!(e.to_string().contains("no PCI device"), "{e}");
        assert_eq!(
            kernel::open("/dev/vfio/devices/vfio999")
                .unwrap_err()
                .errno(),
            libc::ENOENT
        );

        let dev = open();
        let n = dev.device_info().unwrap().num_regions;
        let mut b = [0u8; 4];
        assert_eq!(
            dev.region_read(n, 0, &mut b).unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(
            dev.region_read(u32::MAX, 0, &mut b).unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(
            dev.region_write(n, 0, &b, false).unwrap_err().errno(),
            libc::EINVAL
        );
        // Past the end of the config space, and straddling it.
        assert_eq!(
            dev.region_read(pci_region::CONFIG, 256, &mut b)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            dev.region_read(pci_region::CONFIG, 254, &mut b)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            dev.region_read(pci_region::BAR0, u64::MAX - 1, &mut b)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        // One access larger than the whole region.
        let mut big = vec![0u8; (2 * MIB) as usize];
        assert_eq!(
            dev.region_read(pci_region::BAR0, 0, &mut big)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            dev.region_write(pci_region::BAR0, 0, &big, false)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        // The kernel's own refusals keep their errno.
        assert!(dev.irq_info(1000).unwrap_err().errno() != 0);
        assert!(dev
            .region_create_dma_buf(pci_region::BAR0, &[(0, 0x1001)])
            .is_err());
        assert!(dev.dma_unmap(0x0dead000, 4096).is_err());
    }
    assert_eq!(open_fds(), fds, "fds leaked");
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn second_open_shares_the_group_or_is_refused() {
    let fds = open_fds();
    {
        let first = open();
        let second = kernel::open(&device_name());
        if device_name().starts_with('/') {
            // A cdev can be bound to only one iommufd at a time.
            let e = second.expect_err("a second bind of one cdev");
            assert_ne!(e.errno(), 0, "{e}");
        } else {
            // The group path allows several fds of one device; both must go
            // through the one group and container the registry kept.
            let second = second.expect("a second open through the shared group");
            assert_eq!(first.group(), second.group());
            assert!(first.group().is_some());
            assert_eq!(read32(&second, 0).unwrap(), EDU_ID);
            drop(first);
            // The group stays open while the second device lives.
            assert_eq!(read32(&second, 0).unwrap(), EDU_ID);
        }
    }
    assert_eq!(open_fds(), fds, "fds leaked");
    // Everything was released: the device opens again from scratch.
    assert_eq!(read32(&open(), 0).unwrap(), EDU_ID);
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn dma_by_fd_alone() {
    let dev = open();
    let r = dma_round_trip_mapped(&dev, true);
    if device_name().starts_with('/') {
        r.expect("iommufd maps a memfd with IOMMU_IOAS_MAP_FILE");
    } else {
        // type1 pins by virtual address: a mapping without one is refused
        // before the kernel is asked.
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
    }
}
