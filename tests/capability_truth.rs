//! Every capability bit of a vfio-user device checked against what the device
//! then does, over a real socket: a set bit's behaviour works, a clear bit's
//! operation fails at once (or the library does not do it), and the record
//! names what decided each bit. The kernel backend's bits are checked the same
//! way in tests/kernel_guest.rs, inside the test guest.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_BUF, VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_SET,
};
use vfio_io::caps::{Capabilities, Source};
use vfio_io::device::*;
use vfio_io::memory::{DmaBuffer, Mapping};
use vfio_io::migration::MigrationState;
use vfio_io::models::edu::{regs, Edu};
use vfio_io::models::scratch::{Scratch, BAR2_SIZE};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::MultiWrite;
use vfio_io::user::server::{DeviceContext, DeviceModel, ServerConfig};
use vfio_io::Result;

#[path = "support/edu_dma.rs"]
mod edu_dma;
#[path = "support/forwarding_model.rs"]
mod forwarding_model;
#[path = "support/served.rs"]
mod served;
use forwarding_model::{Call, Hooks, Wrapped};

/// How long a gated model waits for the test before it gives up: long enough
/// for any loaded machine, short enough that a broken promise fails the test.
const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the gate of a model's [`Alterations`] saw when it handled a BAR0 write.
#[derive(Default)]
struct GateState {
    entered: bool,
    open: bool,
    /// Whether the writer had already returned when the model ran the write.
    writer_had_returned: Option<bool>,
    timed_out: bool,
}

/// Shared between a test and the gate in its model's [`Alterations`].
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
    writer_returned: AtomicBool,
}

impl Gate {
    fn wait_until(&self, what: impl Fn(&GateState) -> bool) -> bool {
        let s = self.state.lock().unwrap();
        let (s, t) = self
            .cv
            .wait_timeout_while(s, GATE_TIMEOUT, |s| !what(s))
            .unwrap();
        drop(s);
        !t.timed_out()
    }

    fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.cv.notify_all();
    }
}

/// What a test changes about the model it serves: a gate that BAR0 writes
/// wait at, device flags replaced, or a yes to every feature probe.
#[derive(Default)]
struct Alterations {
    gate: Option<Arc<Gate>>,
    flags: Option<u32>,
    offers_features: bool,
}

impl<M: DeviceModel> Hooks<M> for Alterations {
    fn device_info(&self, inner: &M) -> DeviceInfo {
        let info = inner.device_info();
        DeviceInfo {
            flags: self.flags.unwrap_or(info.flags),
            ..info
        }
    }
    fn call(&mut self, inner: &mut M, ctx: &mut dyn DeviceContext, call: Call<'_>) -> Result<()> {
        let bar0_write = matches!(call, Call::Write { index, .. } if index == pci_region::BAR0);
        if let Some(g) = self.gate.as_ref().filter(|_| bar0_write) {
            let mut s = g.state.lock().unwrap();
            s.entered = true;
            g.cv.notify_all();
            let (mut s, t) =
                g.cv.wait_timeout_while(s, GATE_TIMEOUT, |s| !s.open)
                    .unwrap();
            s.timed_out |= t.timed_out();
            s.writer_had_returned = Some(g.writer_returned.load(Ordering::SeqCst));
        }
        call.apply(inner, ctx)
    }
    fn device_feature(&mut self, inner: &mut M, flags: u32, data: &[u8]) -> Result<Vec<u8>> {
        if self.offers_features {
            return Ok(Vec::new());
        }
        inner.device_feature(flags, data)
    }
}

fn connect(s: &served::Served) -> Client {
    Client::connect(&s.path, ClientConfig::default()).unwrap()
}

/// A posted write to BAR0 on a device served through a gate; returns what the
/// model saw. `opens_after_return`: the test opens the gate only once the
/// write has returned (so a write that waited would never return by itself).
fn posted_write_through_gate<M: DeviceModel + 'static>(
    model: M,
    opens_after_return: bool,
) -> (Client, GateState, served::Served) {
    let gate = Arc::new(Gate::default());
    let model = Wrapped::new(
        model,
        Alterations {
            gate: Some(gate.clone()),
            ..Alterations::default()
        },
    );
    let s = served::serve(model, ServerConfig::default());
    let c = Arc::new(connect(&s));
    let writer = {
        let (c, gate) = (c.clone(), gate.clone());
        std::thread::spawn(move || {
            c.region_write(pci_region::BAR0, 4, &7u32.to_ne_bytes(), true)
                .unwrap();
            gate.writer_returned.store(true, Ordering::SeqCst);
        })
    };
    if opens_after_return {
        while !gate.writer_returned.load(Ordering::SeqCst) && !writer.is_finished() {
            std::thread::yield_now();
        }
    } else {
        assert!(
            gate.wait_until(|s| s.entered),
            "the write never reached the model"
        );
    }
    gate.open();
    writer.join().unwrap();
    // A read after the write is ordered behind it, so the model has run it.
    c.region_read(pci_region::BAR0, 4, &mut [0u8; 4]).unwrap();
    let seen = std::mem::take(&mut *gate.state.lock().unwrap());
    let c = Arc::into_inner(c).unwrap();
    (c, seen, s)
}

#[test]
fn posted_writes_set_on_a_trapped_device_return_before_the_device_runs_them() {
    let (c, seen, _s) = posted_write_through_gate(Edu::new(), true);
    assert!(c.capabilities().contains(Capabilities::POSTED_WRITES));
    assert!(!seen.timed_out, "the posted write waited for the device");
    assert_eq!(seen.writer_had_returned, Some(true));
    let e = c
        .capability_record()
        .deciding(Capabilities::POSTED_WRITES)
        .unwrap();
    assert_eq!(e.source, Source::Backend);
}

#[test]
fn posted_writes_clear_on_a_mapped_device_wait_for_the_device() {
    let (c, seen, _s) = posted_write_through_gate(Scratch::new().unwrap(), false);
    assert!(!c.capabilities().contains(Capabilities::POSTED_WRITES));
    assert!(!seen.timed_out);
    assert_eq!(
        seen.writer_had_returned,
        Some(false),
        "a write on a device without POSTED_WRITES returned before the device ran it"
    );
    let e = c
        .capability_record()
        .deciding(Capabilities::POSTED_WRITES)
        .unwrap();
    assert_eq!(e.source, Source::MappedArea(pci_region::BAR2));
}

#[test]
fn region_mmap_and_region_fds_set_where_a_region_comes_with_its_memory() {
    let model = Scratch::new().unwrap();
    // The device's own view of BAR2, taken before it is served.
    let bar2_fd = model.region_info(pci_region::BAR2).unwrap().fd.unwrap();
    let device_view = Mapping::new(bar2_fd.as_fd(), 0, BAR2_SIZE as usize, true).unwrap();
    let s = served::serve(model, ServerConfig::default());
    let c = connect(&s);
    let caps = c.capabilities();
    assert!(caps.contains(Capabilities::REGION_MMAP | Capabilities::REGION_FDS));
    let r = c.region_info(pci_region::BAR2).unwrap();
    let fd =
        r.fd.clone()
            .expect("REGION_FDS: region info carries the region's fd");
    let area = r.mmap_areas()[0];
    let mine = Mapping::new(fd.as_fd(), r.offset + area.offset, area.size as usize, true)
        .expect("REGION_MMAP: the caller can mmap the area");
    mine.write(0x40, b"mapped").unwrap();
    let mut b = [0u8; 6];
    device_view.read(0x40, &mut b).unwrap();
    assert_eq!(&b, b"mapped", "the caller's mapping is the device's memory");
    for bit in [Capabilities::REGION_MMAP, Capabilities::REGION_FDS] {
        let e = c.capability_record().deciding(bit).unwrap();
        assert_eq!(e.source, Source::RegionInfo(pci_region::BAR2));
    }
}

#[test]
fn region_mmap_and_region_fds_clear_where_every_access_traps() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    assert!(!c
        .capabilities()
        .intersects(Capabilities::REGION_MMAP | Capabilities::REGION_FDS));
    for i in 0..c.device_info().unwrap().num_regions {
        let r = c.region_info(i).unwrap();
        assert!(
            r.fd.is_none() && !r.is_mappable(),
            "region {i} offers memory"
        );
    }
}

fn read32(c: &Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(pci_region::BAR0, off, &mut b).unwrap();
    u32::from_ne_bytes(b)
}

fn write32(c: &Client, off: u64, v: u32) {
    c.region_write(pci_region::BAR0, off, &v.to_ne_bytes(), false)
        .unwrap();
}

#[test]
fn reset_set_restores_power_on_registers() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    assert!(c.capabilities().contains(Capabilities::RESET));
    write32(&c, regs::LIVENESS, 0x1234_5678);
    write32(&c, regs::FACTORIAL, 5);
    assert_eq!(read32(&c, regs::FACTORIAL), 120);
    c.reset().unwrap();
    assert_eq!(read32(&c, regs::LIVENESS), 0, "liveness back to power-on");
    assert_eq!(read32(&c, regs::FACTORIAL), 0, "factorial back to power-on");
    let e = c.capability_record().deciding(Capabilities::RESET).unwrap();
    assert_eq!((e.present, &e.source), (true, &Source::DeviceInfo));
}

#[test]
fn reset_clear_fails_at_once_and_leaves_the_device_alone() {
    let model = Wrapped::new(
        Edu::new(),
        Alterations {
            flags: Some(VFIO_DEVICE_FLAGS_PCI),
            ..Alterations::default()
        },
    );
    let s = served::serve(model, ServerConfig::default());
    let c = connect(&s);
    assert!(!c.capabilities().contains(Capabilities::RESET));
    write32(&c, regs::LIVENESS, 0x1234_5678);
    assert_eq!(c.reset().unwrap_err().errno(), libc::ENOTTY);
    assert_eq!(
        read32(&c, regs::LIVENESS),
        !0x1234_5678u32,
        "no reset happened"
    );
}

#[test]
fn migration_set_moves_a_real_state_stream() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    assert!(c.capabilities().contains(Capabilities::MIGRATION));
    assert!(c.backend_capabilities().contains(Capabilities::MIGRATION));
    let e = c
        .capability_record()
        .deciding(Capabilities::MIGRATION)
        .unwrap();
    assert_eq!(
        (e.present, &e.source),
        (true, &Source::FeatureProbe(VFIO_DEVICE_FEATURE_MIGRATION))
    );
    // The bit's behaviour: the device's state comes out as a stream.
    write32(&c, regs::LIVENESS, 0x0bad_cafe);
    let m = c.migration().expect("a vfio-user client carries migration");
    m.set_state(MigrationState::StopCopy).unwrap();
    let mut stream = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        match m.read(&mut buf).unwrap() {
            0 => break,
            n => stream.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(stream.len(), vfio_io::models::edu::STATE_LEN);
    assert!(stream
        .windows(4)
        .any(|w| w == (!0x0bad_cafeu32).to_le_bytes()));
    m.set_state(MigrationState::Running).unwrap();
}

#[test]
fn migration_clear_without_hooks_though_the_server_offers_it_and_fails_at_once() {
    // Edu behind a wrapper that forwards no migration hooks, and answers
    // every feature probe (and GET) with success and no data.
    let model = Wrapped::new(
        Edu::new(),
        Alterations {
            offers_features: true,
            ..Alterations::default()
        },
    );
    let s = served::serve(model, ServerConfig::default());
    let c = connect(&s);
    let caps = c.capabilities();
    assert!(!caps.intersects(Capabilities::MIGRATION));
    let e = c
        .capability_record()
        .deciding(Capabilities::MIGRATION)
        .unwrap();
    assert!(!e.present);
    assert_eq!(
        e.source,
        Source::FeatureProbe(VFIO_DEVICE_FEATURE_MIGRATION)
    );
    assert!(e.detail.contains("offers"), "{}", e.detail);
    let m = c.migration().unwrap();
    assert_eq!(m.get_state().unwrap_err().errno(), libc::ENOTTY);
    assert_eq!(
        m.set_state(MigrationState::Stop).unwrap_err().errno(),
        libc::ENOTTY
    );
    assert_eq!(m.read(&mut [0; 8]).unwrap_err().errno(), libc::ENOTTY);
    write32(&c, regs::LIVENESS, 1);
    assert_eq!(read32(&c, regs::LIVENESS), !1u32, "the device still runs");
}

/// The library logs DMA writes for every model, so a server built with it
/// offers dirty tracking whatever its model answers; tests/dirty_tracking.rs
/// checks the log itself.
#[test]
fn dirty_tracking_is_set_on_every_server_of_this_library() {
    for offers_features in [false, true] {
        let model = Wrapped::new(
            Edu::new(),
            Alterations {
                offers_features,
                ..Alterations::default()
            },
        );
        let s = served::serve(model, ServerConfig::default());
        let c = connect(&s);
        assert!(c.capabilities().contains(Capabilities::DIRTY_TRACKING));
        assert!(c
            .backend_capabilities()
            .contains(Capabilities::DIRTY_TRACKING));
        let e = c
            .capability_record()
            .deciding(Capabilities::DIRTY_TRACKING)
            .unwrap();
        assert!(e.present);
        assert_eq!(
            e.source,
            Source::FeatureProbe(VFIO_DEVICE_FEATURE_DMA_LOGGING_START)
        );
        assert!(e.detail.contains("offers"), "{}", e.detail);
        let t = c.dirty_tracking().expect("the vfio-user client tracks");
        t.dirty_start(
            4096,
            &[vfio_io::dirty::DirtyRange {
                iova: 0,
                length: 1 << 20,
            }],
        )
        .unwrap();
        t.dirty_stop().unwrap();
    }
}

#[test]
fn dma_buf_and_low_power_clear_fail_at_once() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    let caps = c.capabilities();
    assert!(!caps.intersects(Capabilities::DMA_BUF | Capabilities::LOW_POWER));
    assert!(c
        .region_create_dma_buf(pci_region::BAR0, &[(0, 4096)])
        .unwrap()
        .is_none());
    for flags in [
        VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
        VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
    ] {
        let e = c.device_feature(flags, &mut [0u8; 16]).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTTY, "feature {flags:#x}: {e}");
    }
}

#[test]
fn write_multi_set_applies_every_write() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    assert!(c.capabilities().contains(Capabilities::WRITE_MULTI));
    let w = |offset: u64, v: u32| MultiWrite {
        region: pci_region::BAR0,
        offset,
        count: 4,
        data: u64::from(v).to_ne_bytes(),
    };
    assert_eq!(
        c.region_write_multi(&[w(regs::LIVENESS, 9), w(regs::FACTORIAL, 4)])
            .unwrap(),
        2
    );
    assert_eq!(read32(&c, regs::LIVENESS), !9u32);
    assert_eq!(read32(&c, regs::FACTORIAL), 24);
    let e = c
        .capability_record()
        .deciding(Capabilities::WRITE_MULTI)
        .unwrap();
    assert_eq!(e.source, Source::Negotiation("write_multiple"));
}

#[test]
fn write_multi_clear_is_refused_before_anything_is_sent() {
    let config = ServerConfig {
        write_multiple: false,
        ..ServerConfig::default()
    };
    let s = served::serve(Edu::new(), config);
    let c = connect(&s);
    assert!(!c.capabilities().contains(Capabilities::WRITE_MULTI));
    let w = MultiWrite {
        region: pci_region::BAR0,
        offset: regs::LIVENESS,
        count: 4,
        data: [1, 0, 0, 0, 0, 0, 0, 0],
    };
    assert_eq!(
        c.region_write_multi(&[w]).unwrap_err().errno(),
        libc::ENOTTY
    );
    assert_eq!(read32(&c, regs::LIVENESS), 0, "the write never reached edu");
}

#[test]
fn dma_messages_set_serves_memory_mapped_without_an_fd() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    assert!(c.capabilities().contains(Capabilities::DMA_MESSAGES));
    let buf = DmaBuffer::new(0x2000).unwrap();
    let mut map = buf.dma_map(0x20_0000);
    // No fd: the server has no way into this memory but DMA_READ/DMA_WRITE.
    map.fd = -1;
    edu_dma::mapped_round_trip(&c, &buf, &map);
}

#[test]
fn iommu_dma_clear_maps_by_fd_without_a_virtual_address() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    assert!(!c.capabilities().contains(Capabilities::IOMMU_DMA));
    let buf = DmaBuffer::new(0x2000).unwrap();
    let mut map = buf.dma_map(0x30_0000);
    map.vaddr = 0;
    edu_dma::mapped_round_trip(&c, &buf, &map);
}

#[test]
fn the_device_mask_is_within_the_backend_mask_and_every_possible_bit_is_recorded() {
    for s in [
        served::serve(Edu::new(), ServerConfig::default()),
        served::serve(Scratch::new().unwrap(), ServerConfig::default()),
    ] {
        let c = connect(&s);
        assert!(c.backend_capabilities().contains(c.capabilities()));
        for (name, bit) in Capabilities::named_bits() {
            if c.backend_capabilities().contains(bit) {
                assert!(
                    c.capability_record().deciding(bit).is_some(),
                    "{name} not recorded"
                );
            }
        }
    }
}
