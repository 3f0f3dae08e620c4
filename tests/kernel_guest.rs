//! The kernel backend against real kernel VFIO: QEMU's edu device bound to
//! vfio-pci inside a test VM. `vm/run-guest-tests` builds and boots that VM
//! and runs these tests there, once per road; on a host without VFIO they are
//! ignored.
//!
//! `VFIO_IO_TEST_DEVICE` names the device: a PCI address for the container
//! road, or `/dev/vfio/devices/vfioN` for the iommufd road.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio as uapi;
use vfio_io::device::{
    pci_region, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_io::ffi;
use vfio_io::kernel::{self, KernelDevice};
use vfio_io::memory::{DmaBuffer, Mapping};
use vfio_io::migration::MigrationState;
use vfio_io::models::edu::{self, Edu};
use vfio_io::user::server::{DeviceContext, DeviceModel};
use vfio_io::{Capabilities, DeviceIo, Error, Result};

const EDU_ID: u32 = 0x010000ed;
const MIB: u64 = 1 << 20;

fn device_name() -> String {
    std::env::var("VFIO_IO_TEST_DEVICE").expect(
        "VFIO_IO_TEST_DEVICE must name the device (a PCI address or /dev/vfio/devices/vfioN)",
    )
}

/// Lines the library handed to the C log handler, as a C caller (QEMU) gets them.
static LOG_LINES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_log_line(level: c_int, msg: *const c_char, _opaque: *mut c_void) {
    LOG_LINES.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the library passes a NUL-terminated line valid during the call.
    let msg = unsafe { CStr::from_ptr(msg) };
    eprintln!("library log (level {level}): {}", msg.to_string_lossy());
}

/// Routes every library log line, at every level, to `count_log_line`.
fn install_log_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: the handler is a plain function that keeps no state behind
        // `opaque`, valid for the whole process.
        unsafe {
            ffi::vfio_io_set_log_handler(
                Some(count_log_line),
                std::ptr::null_mut(),
                ffi::VFIO_IO_LOG_DEBUG,
            )
        };
    });
}

fn open() -> KernelDevice {
    install_log_handler();
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
    Error::Errno {
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

/// One edu DMA transfer; waits for the engine to finish. QEMU's edu finishes
/// a transfer on a 100 ms timer; the 60 s watchdog only stops a dead engine
/// from hanging the guest, however slow TCG on a loaded host is.
fn edu_dma(dev: &dyn DeviceIo, src: u64, dst: u64, len: u32, to_ram: bool) -> Result<()> {
    write64(dev, 0x80, src)?;
    write64(dev, 0x88, dst)?;
    write32(dev, 0x90, len)?;
    write32(dev, 0x98, 1 | if to_ram { 2 } else { 0 })?;
    let watchdog = Instant::now() + Duration::from_secs(60);
    while read32(dev, 0x98)? & 1 != 0 {
        if Instant::now() > watchdog {
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

/// A device context without guest memory: every DMA fails.
struct NoMemory;

impl DeviceContext for NoMemory {
    fn dma_read(&mut self, _iova: u64, _buf: &mut [u8]) -> Result<()> {
        Err(Error::InvalidArgument("no guest memory"))
    }
    fn dma_write(&mut self, _iova: u64, _buf: &[u8]) -> Result<()> {
        Err(Error::InvalidArgument("no guest memory"))
    }
    fn irq_enabled(&self, _index: u32, _vector: u32) -> bool {
        false
    }
    fn trigger_irq(&mut self, _index: u32, _vector: u32) -> bool {
        false
    }
    fn set_irq_level(&mut self, _index: u32, _vector: u32, _asserted: bool) {}
}

/// Log lines from one failed DMA of the edu model, whose failures do log:
/// proof that this process's handler receives what library code logs.
fn lines_from_a_failed_edu_model_dma() -> usize {
    install_log_handler();
    let before = LOG_LINES.load(Ordering::SeqCst);
    let mut model = Edu::new();
    let mut ctx = NoMemory;
    for (reg, v) in [
        (edu::regs::DMA_SRC, 0x1000),
        (edu::regs::DMA_DST, edu::DMA_BUF_ADDR),
        (edu::regs::DMA_COUNT, 8),
        (edu::regs::DMA_CMD, edu::DMA_CMD_START),
    ] {
        model
            .region_write(&mut ctx, pci_region::BAR0, reg, &v.to_le_bytes())
            .expect("edu BAR0 write");
    }
    LOG_LINES.load(Ordering::SeqCst) - before
}

/// The device through the C ABI, as QEMU holds it.
struct CDevice(*mut ffi::vfio_io_device);

impl CDevice {
    fn open(name: &str) -> std::result::Result<Self, c_int> {
        let path = CString::new(name).expect("no NUL in a device name");
        let mut dev = std::ptr::null_mut();
        // SAFETY: a C string and a pointer to a handle slot, both live for the call.
        match unsafe { ffi::vfio_io_kernel_open(path.as_ptr(), &mut dev) } {
            0 => Ok(CDevice(dev)),
            err => Err(err),
        }
    }

    fn ops(&self) -> &ffi::vfio_io_ops {
        // SAFETY: `self.0` is a live handle; the table lives as long as it.
        unsafe { &*ffi::vfio_io_device_ops(self.0) }
    }

    /// `VFIO_DEVICE_FEATURE` PROBE of `feature` with `op`: QEMU's try-and-see.
    fn probe_feature(&self, feature: u32, op: u32) -> c_int {
        let mut f = uapi::vfio_device_feature {
            argsz: std::mem::size_of::<uapi::vfio_device_feature>() as u32,
            flags: uapi::VFIO_DEVICE_FEATURE_PROBE | op | feature,
            ..Default::default()
        };
        let call = self.ops().device_feature.expect("device_feature");
        // SAFETY: a live handle and a header-only feature of the size it states.
        unsafe { call(self.0, &mut f) }
    }

    /// `vfio_io_region_create_dma_buf`: (return value, fd out).
    fn create_dma_buf(&self, region: u32) -> (c_int, c_int) {
        let mut fd = 0;
        // SAFETY: a live handle and a writable int.
        let r = unsafe { ffi::vfio_io_region_create_dma_buf(self.0, region, &mut fd) };
        (r, fd)
    }

    fn irq_info(&self, index: u32) -> c_int {
        let mut irq = uapi::vfio_irq_info {
            argsz: std::mem::size_of::<uapi::vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        let call = self.ops().get_irq_info.expect("get_irq_info");
        // SAFETY: a live handle and a full-size vfio_irq_info.
        unsafe { call(self.0, &mut irq) }
    }

    fn read(&self, region: u8, off: i64, buf: &mut [u8]) -> c_int {
        let call = self.ops().region_read.expect("region_read");
        // SAFETY: a live handle; `buf` holds the byte count passed.
        unsafe {
            call(
                self.0,
                region,
                off,
                buf.len() as u32,
                buf.as_mut_ptr().cast(),
            )
        }
    }
}

impl Drop for CDevice {
    fn drop(&mut self) {
        // SAFETY: the handle is live and not used after this.
        unsafe { ffi::vfio_io_device_close(self.0) };
    }
}

/// What a caller gets for a refused request on the kernel road is the
/// kernel's errno and nothing in its log: the failure paths a library could
/// log on (a feature the device lacks, a DMA-BUF the kernel refuses, ranges
/// past the device) run here through the C ABI with a log handler at DEBUG.
#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn refused_requests_log_nothing_through_the_c_log_handler() {
    assert_eq!(
        lines_from_a_failed_edu_model_dma(),
        1,
        "the log handler must see library log lines, or silence below proves nothing"
    );
    // Read through the Rust API first: a cdev binds once, so the C handle
    // below must be the only open of the device.
    let info = open().device_info().unwrap();
    let before = LOG_LINES.load(Ordering::SeqCst);
    {
        assert_eq!(CDevice::open("0000:99:99.9").err(), Some(-libc::ENODEV));
        let dev = CDevice::open(&device_name()).unwrap_or_else(|e| panic!("open: {e}"));
        // SAFETY: a live handle.
        let caps = unsafe { ffi::vfio_io_device_capabilities(dev.0) };
        assert_eq!(caps, dev.ops().capabilities);
        // edu has no migration driver: the bit is clear, and a caller that
        // tries anyway gets the kernel's ENOTTY, unlogged.
        assert_eq!(caps & Capabilities::MIGRATION.bits(), 0);
        assert_eq!(
            dev.probe_feature(
                uapi::VFIO_DEVICE_FEATURE_MIGRATION,
                uapi::VFIO_DEVICE_FEATURE_GET
            ),
            -libc::ENOTTY
        );
        // The feature it has answers the same probe.
        assert_ne!(caps & Capabilities::DMA_BUF.bits(), 0);
        assert_eq!(
            dev.probe_feature(
                uapi::VFIO_DEVICE_FEATURE_DMA_BUF,
                uapi::VFIO_DEVICE_FEATURE_GET
            ),
            0
        );
        // Config space has nothing mappable: no ranges, which the kernel refuses.
        assert_eq!(dev.create_dma_buf(pci_region::CONFIG), (-libc::EINVAL, -1));
        assert_eq!(dev.irq_info(info.num_irqs), -libc::EINVAL);
        let mut b = [0u8; 4];
        assert_eq!(dev.read(info.num_regions as u8, 0, &mut b), -libc::EINVAL);
        assert_eq!(
            dev.read(pci_region::CONFIG as u8, 256, &mut b),
            -libc::EINVAL
        );
    }
    assert_eq!(
        LOG_LINES.load(Ordering::SeqCst) - before,
        0,
        "the library logged on the kernel road (lines above)"
    );
}

/// edu has no migration driver: the four migration calls, and QEMU's SET
/// of MIG_DEVICE_STATE through `device_feature`, each fail at once with the
/// kernel's ENOTTY, and nothing is logged.
#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn migration_calls_on_edu_fail_at_once_with_the_kernels_enotty() {
    install_log_handler();
    let dev = CDevice::open(&device_name()).unwrap_or_else(|e| panic!("open: {e}"));
    let before = LOG_LINES.load(Ordering::SeqCst);
    let mut state = 0u32;
    let mut buf = [0u8; 64];
    // SAFETY: a live handle, a writable u32 and a buffer of the stated size.
    let got = unsafe {
        [
            ffi::vfio_io_migration_get_state(dev.0, &mut state) as isize,
            ffi::vfio_io_migration_set_state(dev.0, MigrationState::StopCopy as u32) as isize,
            ffi::vfio_io_migration_read(dev.0, buf.as_mut_ptr().cast(), buf.len()),
            ffi::vfio_io_migration_write(dev.0, buf.as_ptr().cast(), buf.len()),
        ]
    };
    assert_eq!(got, [-libc::ENOTTY as isize; 4]);
    // QEMU's own road: struct vfio_device_feature + vfio_device_feature_mig_state.
    let mut feature = [0u32; 4];
    feature[0] = 16;
    feature[1] = uapi::VFIO_DEVICE_FEATURE_SET | uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
    feature[2] = MigrationState::Stop as u32;
    let call = dev.ops().device_feature.expect("device_feature");
    // SAFETY: a live handle and a feature of the 16 bytes its argsz states.
    let r = unsafe { call(dev.0, feature.as_mut_ptr().cast()) };
    assert_eq!(r, -libc::ENOTTY);
    assert_eq!(
        LOG_LINES.load(Ordering::SeqCst) - before,
        0,
        "the library logged on the kernel road (lines above)"
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
    install_log_handler();
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
        // The kernel's own refusals keep their errno: an IRQ index past
        // vfio-pci's, a DMA-BUF length that is not page-aligned, a DMA-BUF of
        // a region that is not a BAR.
        assert_eq!(dev.irq_info(1000).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(
            dev.region_create_dma_buf(pci_region::BAR0, &[(0, 0x1001)])
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            dev.region_create_dma_buf(pci_region::CONFIG, &[(0, 0x1000)])
                .unwrap_err()
                .errno(),
            libc::ENODEV
        );
        // Nothing mapped there: type1 unmaps nothing (the library says
        // ENOENT), iommufd answers ENOENT itself.
        assert_eq!(
            dev.dma_unmap(0x0dead000, 4096).unwrap_err().errno(),
            libc::ENOENT
        );
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
            // Only the group path opens one device twice: the kernel refuses
            // a second bind of an open cdev with EINVAL.
            let e = second.expect_err("a second bind of one cdev");
            assert_eq!(e.errno(), libc::EINVAL, "{e}");
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

/// One capability bit against what the device then does: with the bit set the
/// behaviour works; without it the operation fails at once with the kernel's
/// own errno (or the library's refusal).
fn check_bit(dev: &KernelDevice, bit: Capabilities) {
    let has = dev.capabilities().contains(bit);
    let name = bit.describe();
    let feature = |flags: u32, data: &mut [u8]| dev.device_feature(flags, data);
    match bit {
        b if b == Capabilities::DMA_BUF => {
            let fd = dev
                .region_create_dma_buf(pci_region::BAR0, &[(0, 0x1000)])
                .expect("DMA-BUF export");
            assert_eq!(
                fd.is_some(),
                has,
                "{name}: an fd comes back exactly when the bit is set"
            );
        }
        b if b == Capabilities::MIGRATION || b == Capabilities::DIRTY_TRACKING => {
            let f = if b == Capabilities::MIGRATION {
                uapi::VFIO_DEVICE_FEATURE_GET | uapi::VFIO_DEVICE_FEATURE_MIGRATION
            } else {
                uapi::VFIO_DEVICE_FEATURE_PROBE
                    | uapi::VFIO_DEVICE_FEATURE_SET
                    | uapi::VFIO_DEVICE_FEATURE_DMA_LOGGING_START
            };
            let r = feature(f, &mut [0u8; 8]);
            assert_eq!(r.is_ok(), has, "{name}: {r:?}");
            if !has {
                assert_eq!(
                    r.unwrap_err().errno(),
                    libc::ENOTTY,
                    "{name}: the kernel's errno"
                );
            }
        }
        b if b == Capabilities::LOW_POWER => {
            let entry = feature(
                uapi::VFIO_DEVICE_FEATURE_SET | uapi::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
                &mut [],
            );
            assert_eq!(entry.is_ok(), has, "{name}: {entry:?}");
            if has {
                feature(
                    uapi::VFIO_DEVICE_FEATURE_SET | uapi::VFIO_DEVICE_FEATURE_LOW_POWER_EXIT,
                    &mut [],
                )
                .expect("low-power exit");
                assert_eq!(read32(dev, 0).unwrap(), EDU_ID, "usable after low power");
            }
        }
        b if b == Capabilities::REGION_MMAP => {
            let bar0 = dev.region_info(pci_region::BAR0).unwrap();
            let mapped = bar0.fd.as_ref().and_then(|fd| {
                Mapping::new(fd.as_fd(), bar0.offset, bar0.size as usize, false).ok()
            });
            assert_eq!(mapped.is_some(), has, "{name}: BAR0 maps exactly when set");
            if let Some(m) = mapped {
                let mut id = [0u8; 4];
                m.read_reg(0, &mut id).unwrap();
                assert_eq!(u32::from_le_bytes(id), EDU_ID);
            }
        }
        b if b == Capabilities::REGION_FDS => {
            assert!(!has, "the kernel has no region fds");
            let bar0 = dev.region_info(pci_region::BAR0).unwrap();
            if let Some(fd) = bar0.fd {
                let ino = |f: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(f).unwrap().st_ino;
                assert_eq!(
                    ino(fd.as_fd()),
                    ino(dev.fd().as_fd()),
                    "the region's fd is the device fd"
                );
            }
        }
        b if b == Capabilities::POSTED_WRITES => {
            assert!(!has, "kernel writes complete before they return");
            dev.region_write(pci_region::BAR0, 4, &0x1234u32.to_le_bytes(), true)
                .unwrap();
            assert_eq!(read32(dev, 4).unwrap(), !0x1234u32);
        }
        b if b == Capabilities::RESET => {
            let r = dev.reset();
            assert_eq!(r.is_ok(), has, "{name}: {r:?}");
        }
        b if b == Capabilities::WRITE_MULTI => assert!(!has, "no coalesced writes on the kernel"),
        b if b == Capabilities::IOEVENTFD => assert!(!has, "no vfio-user doorbells on the kernel"),
        b if b == Capabilities::DMA_MESSAGES => {
            assert!(!has, "the kernel serves no DMA messages");
            let buf = DmaBuffer::new(4096).unwrap();
            let mut map = buf.dma_map(0x10_0000);
            (map.vaddr, map.fd) = (0, -1);
            // SAFETY: nothing is mapped: the map is refused before the kernel.
            let e = unsafe { dev.dma_map(&map) }.unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "a map of no memory: {e}");
        }
        b if b == Capabilities::IOMMU_DMA => {
            assert!(has, "kernel DMA goes through the IOMMU");
            dma_round_trip_mapped(dev, false).expect("DMA through a map by address");
        }
        other => panic!("no check for {}", other.describe()),
    }
}

#[test]
#[ignore = "needs real kernel VFIO: run by vm/run-guest-tests"]
fn every_capability_bit_matches_what_the_device_does() {
    let dev = open();
    for (_, bit) in Capabilities::named_bits() {
        check_bit(&dev, bit);
    }
    let rec = dev.capability_record();
    for (name, bit) in Capabilities::named_bits() {
        if dev.backend_capabilities().contains(bit) {
            assert!(
                rec.deciding(bit).is_some(),
                "{name}: nothing recorded what decided it"
            );
        }
    }
}
