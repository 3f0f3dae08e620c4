//! Region areas the server offers with an fd are mmapped by the client at
//! connect, and accesses that fall inside them never become messages.
//!
//! The device model counts every region_read/region_write the server hands
//! it, so "went through the mapping" is observed as "the server never saw
//! it"; the bytes are checked both ways against the model's own memory.
//! A counting allocator also checks that the mapped path allocates nothing.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use vfio_io::device::DeviceIo;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::{DeviceContext, ServerConfig};
use vfio_io::Result;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
#[path = "support/forwarding_model.rs"]
mod forwarding_model;
#[path = "support/served.rs"]
mod served;
#[path = "support/shared_mem_device.rs"]
mod shared_mem_device;
use counting_alloc::allocations;
use forwarding_model::{Call, Hooks, Wrapped};
use shared_mem_device::{device_view, SharedMemDevice, AREA, BAR2_SIZE};

/// How many region accesses reached the model.
#[derive(Default)]
struct Seen {
    reads: AtomicUsize,
    writes: AtomicUsize,
}

/// Counts every access the server hands the device.
struct Count(Arc<Seen>);

impl Hooks<SharedMemDevice> for Count {
    fn call(
        &mut self,
        dev: &mut SharedMemDevice,
        ctx: &mut dyn DeviceContext,
        call: Call<'_>,
    ) -> Result<()> {
        match call {
            Call::Read { .. } => self.0.reads.fetch_add(1, Ordering::SeqCst),
            Call::Write { .. } => self.0.writes.fetch_add(1, Ordering::SeqCst),
            Call::Reset => 0,
        };
        call.apply(dev, ctx)
    }
}

/// The shared-memory device with its accesses counted.
type CountingDevice = Wrapped<SharedMemDevice, Count>;

/// `dev` with its accesses counted, the fd of its BAR2, and the count.
fn counting(dev: SharedMemDevice) -> (CountingDevice, Arc<OwnedFd>, Arc<Seen>) {
    let (fd, seen) = (dev.memory_fd(), Arc::new(Seen::default()));
    (Wrapped::new(dev, Count(seen.clone())), fd, seen)
}

fn serve(_name: &str, model: CountingDevice) -> served::Served {
    served::serve(model, ServerConfig::default())
}

#[test]
fn accesses_inside_the_sparse_area_never_reach_the_server() {
    let (dev, fd, seen) = counting(SharedMemDevice::new());
    let s = serve("mmap-inside", dev);
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    assert!(c.has_mapped_areas());
    let bar2 = device_view(&fd);

    // Client writes of every width, and an odd size, land in the device's memory.
    let start = AREA.offset;
    c.region_write(2, start, &[0x11], false).unwrap();
    c.region_write(2, start + 2, &0x2233u16.to_ne_bytes(), false)
        .unwrap();
    c.region_write(2, start + 4, &0x4455_6677u32.to_ne_bytes(), true)
        .unwrap();
    c.region_write(2, start + 8, &0x0102_0304_0506_0708u64.to_ne_bytes(), false)
        .unwrap();
    c.region_write(2, start + 0x101, b"odd-sized", false)
        .unwrap();
    let last = AREA.offset + AREA.size - 4;
    c.region_write(2, last, &0xdead_beefu32.to_ne_bytes(), false)
        .unwrap();
    let mut got = [0u8; 16];
    bar2.read(start as usize, &mut got).unwrap();
    let mut want = [0u8; 16];
    want[0] = 0x11;
    want[2..4].copy_from_slice(&0x2233u16.to_ne_bytes());
    want[4..8].copy_from_slice(&0x4455_6677u32.to_ne_bytes());
    want[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_ne_bytes());
    assert_eq!(got, want);
    let mut odd = [0u8; 9];
    bar2.read(start as usize + 0x101, &mut odd).unwrap();
    assert_eq!(&odd, b"odd-sized");
    let mut tail = [0u8; 4];
    bar2.read(last as usize, &mut tail).unwrap();
    assert_eq!(u32::from_ne_bytes(tail), 0xdead_beef);

    // Device-side stores are what client reads of every width return.
    bar2.write(start as usize + 0x200, &0x99u8.to_ne_bytes())
        .unwrap();
    bar2.write(start as usize + 0x202, &0xabcdu16.to_ne_bytes())
        .unwrap();
    bar2.write(start as usize + 0x204, &0x1234_5678u32.to_ne_bytes())
        .unwrap();
    bar2.write(
        start as usize + 0x208,
        &0x1122_3344_5566_7788u64.to_ne_bytes(),
    )
    .unwrap();
    bar2.write(start as usize + 0x301, b"from the device")
        .unwrap();
    let mut b1 = [0u8; 1];
    let mut b2 = [0u8; 2];
    let mut b4 = [0u8; 4];
    let mut b8 = [0u8; 8];
    let mut b15 = [0u8; 15];
    c.region_read(2, start + 0x200, &mut b1).unwrap();
    c.region_read(2, start + 0x202, &mut b2).unwrap();
    c.region_read(2, start + 0x204, &mut b4).unwrap();
    c.region_read(2, start + 0x208, &mut b8).unwrap();
    c.region_read(2, start + 0x301, &mut b15).unwrap();
    assert_eq!(b1, [0x99]);
    assert_eq!(u16::from_ne_bytes(b2), 0xabcd);
    assert_eq!(u32::from_ne_bytes(b4), 0x1234_5678);
    assert_eq!(u64::from_ne_bytes(b8), 0x1122_3344_5566_7788);
    assert_eq!(&b15, b"from the device");

    assert_eq!(seen.reads.load(Ordering::SeqCst), 0, "a read was trapped");
    assert_eq!(seen.writes.load(Ordering::SeqCst), 0, "a write was trapped");
}

#[test]
fn a_region_fd_the_server_could_shrink_is_not_mapped() {
    let fd =
        nix::sys::memfd::memfd_create(c"bar2", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, BAR2_SIZE as i64).unwrap();
    let (dev, _fd, seen) = counting(SharedMemDevice::with_memory(fd, BAR2_SIZE as usize));
    let s = serve("mmap-shrinkable", dev);
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    assert!(!c.has_mapped_areas(), "a shrinkable region fd was mapped");
    // Had the client mapped it, the server could shrink the file and raise
    // SIGBUS in the client; by message, every access reaches the model.
    c.region_read(2, AREA.offset, &mut [0u8; 4]).unwrap();
    assert_eq!(
        seen.reads.load(Ordering::SeqCst),
        1,
        "the read went by message"
    );
}

#[test]
fn an_area_past_the_end_of_its_fd_is_not_mapped() {
    // Sealed, but smaller than the area the server declares: touching the
    // missing pages through a mapping would raise SIGBUS in the client.
    let fd = vfio_io::memory::sealed_memfd(c"bar2", AREA.offset as usize).unwrap();
    let (dev, _fd, seen) = counting(SharedMemDevice::with_memory(fd, AREA.offset as usize));
    let s = serve("mmap-short", dev);
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    assert!(
        !c.has_mapped_areas(),
        "an area past the end of its fd was mapped"
    );
    let e = c.region_read(2, AREA.offset, &mut [0u8; 4]).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "the model refuses: {e}");
    assert_eq!(
        seen.reads.load(Ordering::SeqCst),
        1,
        "the read went by message"
    );
}

#[test]
fn ranges_outside_or_straddling_the_area_go_by_message() {
    let (dev, fd, seen) = counting(SharedMemDevice::new());
    let s = serve("mmap-outside", dev);
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let bar2 = device_view(&fd);

    // Wholly in the trapped part of BAR2, before and after the area.
    c.region_write(2, 0x10, b"trapped", false).unwrap();
    let mut t = [0u8; 7];
    bar2.read(0x10, &mut t).unwrap();
    assert_eq!(&t, b"trapped");
    bar2.write(0x3800, &0x5555_aaaau32.to_ne_bytes()).unwrap();
    let mut b4 = [0u8; 4];
    c.region_read(2, 0x3800, &mut b4).unwrap();
    assert_eq!(u32::from_ne_bytes(b4), 0x5555_aaaa);
    assert_eq!(seen.writes.load(Ordering::SeqCst), 1);
    assert_eq!(seen.reads.load(Ordering::SeqCst), 1);

    // Straddling the area's start and its end: one message each, whole.
    let before = AREA.offset - 2;
    c.region_write(2, before, &[1, 2, 3, 4], false).unwrap();
    bar2.read(before as usize, &mut b4).unwrap();
    assert_eq!(b4, [1, 2, 3, 4]);
    let after = AREA.offset + AREA.size - 2;
    bar2.write(after as usize, &[9, 8, 7, 6]).unwrap();
    c.region_read(2, after, &mut b4).unwrap();
    assert_eq!(b4, [9, 8, 7, 6]);
    assert_eq!(seen.writes.load(Ordering::SeqCst), 2);
    assert_eq!(seen.reads.load(Ordering::SeqCst), 2);

    // A region without an fd (BAR0) is always trapped.
    c.region_write(0, 4, &7u32.to_ne_bytes(), false).unwrap();
    c.region_read(0, 4, &mut b4).unwrap();
    assert_eq!(u32::from_ne_bytes(b4), 7);
    assert_eq!(seen.writes.load(Ordering::SeqCst), 3);
    assert_eq!(seen.reads.load(Ordering::SeqCst), 3);
}

#[test]
fn posted_writes_to_trapped_ranges_wait_once_areas_are_mapped() {
    let (dev, fd, seen) = counting(SharedMemDevice::new());
    let s = serve("mmap-posted", dev);
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let bar2 = device_view(&fd);
    // A "posted" write to the trapped part, then a store through the mapping:
    // the trapped write must already be in the device when the mapped store
    // lands, so the device sees them in program order. With a real post the
    // message could still sit in the socket here.
    c.region_write(2, 0x20, &0x1111_2222u32.to_ne_bytes(), true)
        .unwrap();
    assert_eq!(
        seen.writes.load(Ordering::SeqCst),
        1,
        "the posted write had not reached the device when region_write returned"
    );
    let mut b4 = [0u8; 4];
    bar2.read(0x20, &mut b4).unwrap();
    assert_eq!(u32::from_ne_bytes(b4), 0x1111_2222);
    c.region_write(2, AREA.offset, &1u32.to_ne_bytes(), true)
        .unwrap();
    assert_eq!(seen.writes.load(Ordering::SeqCst), 1);
}

#[test]
fn the_mapped_path_does_not_allocate() {
    let (dev, _fd, seen) = counting(SharedMemDevice::new());
    let s = serve("mmap-alloc", dev);
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let mut b4 = [0u8; 4];
    let mut b8 = [0u8; 8];
    let mut b64 = [0u8; 64];
    let n = allocations(|| {
        for i in 0..1000u32 {
            c.region_write(2, AREA.offset + 4, &i.to_ne_bytes(), false)
                .unwrap();
            c.region_read(2, AREA.offset + 4, &mut b4).unwrap();
            c.region_read(2, AREA.offset + 8, &mut b8).unwrap();
            c.region_write(2, AREA.offset + 0x100, &b64, true).unwrap();
            c.region_read(2, AREA.offset + 0x100, &mut b64).unwrap();
        }
    });
    assert_eq!(u32::from_ne_bytes(b4), 999);
    assert_eq!(n, 0, "{n} allocations in 1000 rounds of mapped accesses");
    assert_eq!(seen.reads.load(Ordering::SeqCst), 0);
    assert_eq!(seen.writes.load(Ordering::SeqCst), 0);
}
