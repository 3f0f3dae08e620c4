//! Region fds with sparse mmap areas, REGION_WRITE_MULTI, REGION_IO_FDS and
//! INTx resampling through an unmask eventfd, over real sockets.

use std::os::fd::{AsFd, AsRawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vfio_io::caps::Capabilities;
use vfio_io::device::*;
use vfio_io::memory::Mapping;
use vfio_io::models::edu::Edu;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{cmd, MultiWrite};
use vfio_io::user::server::{DeviceModel, ServerConfig};

#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;
#[path = "support/shared_mem_device.rs"]
mod shared_mem_device;
use raw_peer::Peer;
use shared_mem_device::SharedMemDevice;

fn serve<M: DeviceModel + 'static>(_name: &str, model: M) -> served::Served {
    served::serve(model, ServerConfig::default())
}

#[test]
fn region_fd_and_sparse_area_reach_the_same_memory_as_messages() {
    let s = serve("sparse", SharedMemDevice::new());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let caps = c.capabilities();
    assert!(
        caps.contains(Capabilities::REGION_MMAP | Capabilities::REGION_FDS),
        "{caps:?}"
    );
    assert!(
        !caps.contains(Capabilities::RESET),
        "this device has no reset flag"
    );
    let info = c.region_info(2).unwrap();
    assert!(info.is_mappable());
    assert_eq!(
        info.mmap_areas(),
        vec![SparseArea {
            offset: 0x1000,
            size: 0x2000
        }]
    );
    assert!(info.caps.contains(&RegionCap::Type {
        region_type: 0x8000_0000,
        subtype: 7
    }));
    let fd = info.fd.clone().unwrap();
    let area = Mapping::new(fd.as_fd(), info.offset + 0x1000, 0x2000, true).unwrap();
    area.write(0x10, b"through the mapping").unwrap();
    let mut back = [0u8; 19];
    c.region_read(2, 0x1010, &mut back).unwrap();
    assert_eq!(&back, b"through the mapping");
    c.region_write(2, 0x1100, b"by message", false).unwrap();
    let mut seen = [0u8; 10];
    area.read(0x100, &mut seen).unwrap();
    assert_eq!(&seen, b"by message");
    assert!(
        c.region_info(0).unwrap().fd.is_none(),
        "a trapped region carries no fd"
    );
}

#[test]
fn write_multi_applies_every_write_in_order() {
    let s = serve("multi", SharedMemDevice::new());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    assert!(c.capabilities().contains(Capabilities::WRITE_MULTI));
    let w = |offset: u64, v: u32| {
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&v.to_ne_bytes());
        MultiWrite {
            offset,
            region: 0,
            count: 4,
            data,
        }
    };
    assert_eq!(
        c.region_write_multi(&[w(0, 1), w(4, 2), w(0, 3)]).unwrap(),
        3
    );
    let mut b = [0u8; 8];
    c.region_read(0, 0, &mut b).unwrap();
    assert_eq!(b, [3, 0, 0, 0, 2, 0, 0, 0]);
    assert_eq!(
        c.region_write_multi(&[w(14, 9)]).unwrap_err().errno(),
        libc::EINVAL,
        "past the end"
    );
}

/// A DEVICE_GET_REGION_IO_FDS request as the spec lays it out.
fn io_fds_request(argsz: u32, flags: u32, index: u32, count: u32) -> Vec<u8> {
    [argsz, flags, index, count]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

#[test]
fn region_io_fds_requests_are_checked_and_answered_as_the_spec_says() {
    let s = serve("iofds", SharedMemDevice::new());
    let mut p = Peer::connect(&s.path);
    p.version();
    // A device with no ioeventfds: a 16-byte reply, argsz the size needed,
    // flags 0, the region asked, no sub-regions and no fds.
    let m = p.call(
        cmd::DEVICE_GET_REGION_IO_FDS,
        &[&io_fds_request(4096, 0, 2, 0)],
        &[],
    );
    assert_eq!(m.h.error_errno(), None);
    assert_eq!(m.p, io_fds_request(16, 0, 2, 0));
    assert!(m.fds.is_empty());
    let mut errno = |req: &[u8]| p.errno_of(cmd::DEVICE_GET_REGION_IO_FDS, &[req], &[]);
    assert_eq!(
        errno(&io_fds_request(8, 0, 2, 0)),
        Some(libc::EINVAL),
        "argsz < 16"
    );
    assert_eq!(
        errno(&io_fds_request(16, 1, 2, 0)),
        Some(libc::EINVAL),
        "flags"
    );
    assert_eq!(
        errno(&io_fds_request(16, 0, 2, 3)),
        Some(libc::EINVAL),
        "count"
    );
    assert_eq!(
        errno(&io_fds_request(16, 0, pci_region::COUNT, 0)),
        Some(libc::EINVAL),
        "region index past num_regions"
    );
    assert_eq!(
        errno(&io_fds_request(16, 0, 2, 0)[..12]),
        Some(libc::EINVAL),
        "short"
    );
    // Our client decodes the same answer.
    drop(p);
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let (subs, fds) = c.region_io_fds(2).unwrap();
    assert_eq!((subs.len(), fds.len()), (0, 0));
}

/// How long to wait for an eventfd that must fire: a watchdog, not a bound.
const SIGNALLED: u16 = 30_000;

fn fired(e: &EventFd, ms: u16) -> bool {
    let mut p = [PollFd::new(e.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut p, PollTimeout::from(ms)).unwrap();
    if n == 1 {
        e.read().unwrap();
    }
    n == 1
}

#[test]
fn intx_resamples_through_the_unmask_eventfd_while_the_line_stays_high() {
    let s = serve("intx", Edu::new());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let trigger = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap();
    let resample = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap();
    let fds = [trigger.as_fd().as_raw_fd()];
    c.set_irqs(&IrqSet {
        index: pci_irq::INTX,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::Eventfds(&fds),
    })
    .unwrap();
    let fds = [resample.as_fd().as_raw_fd()];
    c.set_irqs(&IrqSet {
        index: pci_irq::INTX,
        start: 0,
        count: 1,
        action: IrqAction::Unmask,
        data: IrqData::Eventfds(&fds),
    })
    .unwrap();
    let w = |off: u64, v: u32| c.region_write(0, off, &v.to_ne_bytes(), false).unwrap();
    w(0x60, 1);
    assert!(fired(&trigger, SIGNALLED), "INTx did not fire");
    w(0x60, 2);
    assert!(
        !fired(&trigger, 0),
        "an automasked line fired again before the unmask"
    );
    resample.write(1).unwrap();
    assert!(
        fired(&trigger, SIGNALLED),
        "a line still high must fire again on resample"
    );
    w(0x64, 3);
    resample.write(1).unwrap();
    // The server takes in an unmask that is pending before the next command
    // it answers: after this read, a re-fire would already be there.
    let mut id = [0u8; 4];
    c.region_read(0, 0, &mut id).unwrap();
    assert!(!fired(&trigger, 0), "an acknowledged line fired");
}
