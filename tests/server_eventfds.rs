//! The server accepts only eventfds for interrupts, and never blocks on one
//! that the client filled up.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use vfio_io::device::{pci_irq, DeviceIo, IrqAction, IrqData, IrqSet};
use vfio_io::models::edu::Edu;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::ServerConfig;

#[path = "support/served.rs"]
mod served;

fn with_edu(_name: &str, f: impl FnOnce(&Client)) {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let config = ClientConfig {
        timeout: Duration::from_millis(800),
        ..ClientConfig::default()
    };
    let c = Client::connect(&s.path, config).unwrap();
    f(&c);
}

fn attach(c: &Client, index: u32, action: IrqAction, fd: i32) -> vfio_io::Result<()> {
    let fds = [fd];
    c.set_irqs(&IrqSet {
        index,
        start: 0,
        count: 1,
        action,
        data: IrqData::Eventfds(&fds),
    })
}

#[test]
fn a_pipe_is_refused_as_an_interrupt_fd() {
    with_edu("pipe", |c| {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let e = attach(c, pci_irq::MSI, IrqAction::Trigger, r.as_raw_fd()).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        let e = attach(c, pci_irq::INTX, IrqAction::Unmask, r.as_raw_fd()).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        let mut id = [0u8; 4];
        c.region_read(0, 0, &mut id).unwrap();
        assert_eq!(u32::from_ne_bytes(id), 0x010000ed);
    });
}

#[test]
fn a_full_eventfd_counter_does_not_block_the_server() {
    with_edu("full", |c| {
        let e = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap();
        // The largest value an eventfd counter holds: one more write would block.
        e.write(u64::MAX - 1).unwrap();
        attach(c, pci_irq::MSI, IrqAction::Trigger, e.as_fd().as_raw_fd()).unwrap();
        c.region_write(0, 0x60, &1u32.to_ne_bytes(), false)
            .expect("raising the interrupt returned");
        let mut status = [0u8; 4];
        c.region_read(0, 0x24, &mut status).unwrap();
        assert_eq!(u32::from_ne_bytes(status), 1);
        assert_eq!(
            e.read().unwrap(),
            u64::MAX - 1,
            "the event is pending all the same"
        );
    });
}
