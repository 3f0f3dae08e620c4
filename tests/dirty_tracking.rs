//! Dirty-page tracking over vfio-user, both sides of a real socket: the
//! server library logs every page edu's DMA engine writes to client memory,
//! through memory it mapped from the client's memfd and through DMA_WRITE
//! messages for memory mapped without an fd; the client's reports name
//! exactly those pages, once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MASK, VFIO_DEVICE_FEATURE_SET,
};
use vfio_io::device::DeviceInfo;
use vfio_io::device::{DeviceIo, DmaMap};
use vfio_io::dirty::{DirtyRange, DirtyTracking, MAX_RANGES, MAX_TRACKED_PAGES};
use vfio_io::memory::DmaBuffer;
use vfio_io::models::edu::Edu;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{self, cmd, DmaLoggingReport};
use vfio_io::user::server::ServerConfig;

#[path = "support/edu_dma.rs"]
mod edu_dma;
#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;
use edu_dma::{edu_load, edu_store};
use raw_peer::{Msg, Peer};

/// Records the largest single allocation any thread of this test binary
/// makes (the server runs in a thread of it), to show a refused start
/// allocated no bitmap.
struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// recording touches only an atomic.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, per GlobalAlloc's contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as in alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator (hence System) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence System) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: LargestAllocation = LargestAllocation;

const P: u64 = 4096;
/// Where the client's memory sits for the device.
const IOVA: u64 = 0x10_0000;
/// Pages of client memory mapped for the device.
const PAGES: u64 = 16;

/// How the device reaches the client's memory.
#[derive(Debug, Clone, Copy)]
enum Reach {
    /// The server mmaps the client's memfd.
    Mapped,
    /// No fd: the server writes with DMA_WRITE messages.
    Messages,
}

/// A served edu, a connected client and `PAGES` of client memory mapped at
/// `IOVA` as `reach` says.
struct Setup {
    c: Client,
    buf: DmaBuffer,
    _s: served::Served,
}

fn setup(reach: Reach) -> Setup {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();
    let buf = DmaBuffer::new((PAGES * P) as usize).unwrap();
    let map = match reach {
        Reach::Mapped => buf.dma_map(IOVA),
        Reach::Messages => DmaMap {
            fd: -1,
            ..buf.dma_map(IOVA)
        },
    };
    // SAFETY: `buf` lives in the returned Setup as long as the client.
    unsafe { c.dma_map(&map).unwrap() };
    Setup { c, buf, _s: s }
}

impl Setup {
    fn t(&self) -> &dyn DirtyTracking {
        self.c.dirty_tracking().expect("a vfio-user client tracks")
    }

    /// Has edu write 8 bytes of a pattern at `iova` (reading them first from
    /// the start of the client's memory, which logs nothing), and checks they
    /// landed.
    fn device_writes(&self, iova: u64, tag: u8) {
        let pattern = [tag; 8];
        self.buf.write(0, &pattern).unwrap();
        edu_load(&self.c, IOVA, 8);
        edu_store(&self.c, iova, 8);
        let mut got = [0u8; 8];
        self.buf.read((iova - IOVA) as usize, &mut got).unwrap();
        assert_eq!(got, pattern, "edu's DMA write at {iova:#x}");
    }

    fn report(&self, iova: u64, length: u64, page_size: u64) -> Vec<u64> {
        let words = vfio_io::dirty::bitmap_words(length, page_size).unwrap();
        let mut b = vec![u64::MAX; words];
        self.t()
            .dirty_report(iova, length, page_size, &mut b)
            .unwrap();
        b
    }
}

fn range(iova: u64, length: u64) -> DirtyRange {
    DirtyRange { iova, length }
}

const BOTH: [Reach; 2] = [Reach::Mapped, Reach::Messages];

#[test]
fn a_device_write_is_reported_at_its_page_alone_and_only_once() {
    for reach in BOTH {
        let s = setup(reach);
        assert!(s
            .c
            .capabilities()
            .contains(vfio_io::Capabilities::DIRTY_TRACKING));
        s.t().dirty_start(P, &[range(IOVA, PAGES * P)]).unwrap();
        s.device_writes(IOVA + 5 * P + 100, 0xa5);
        assert_eq!(s.report(IOVA, PAGES * P, P), vec![1 << 5], "{reach:?}");
        assert_eq!(
            s.report(IOVA, PAGES * P, P),
            vec![0],
            "{reach:?}: read clears"
        );
        // A write across a page boundary dirties both pages.
        s.device_writes(IOVA + 9 * P - 4, 0x3c);
        assert_eq!(s.report(IOVA, PAGES * P, P), vec![0b11 << 8], "{reach:?}");
        s.t().dirty_stop().unwrap();
    }
}

#[test]
fn pages_written_before_the_start_are_not_reported() {
    for reach in BOTH {
        let s = setup(reach);
        s.device_writes(IOVA + 3 * P, 1);
        s.t().dirty_start(P, &[range(IOVA, PAGES * P)]).unwrap();
        assert_eq!(s.report(IOVA, PAGES * P, P), vec![0], "{reach:?}");
        s.device_writes(IOVA + 7 * P, 2);
        assert_eq!(s.report(IOVA, PAGES * P, P), vec![1 << 7], "{reach:?}");
    }
}

#[test]
fn a_report_at_a_larger_page_size_folds_pages_and_a_part_clears_its_part() {
    let s = setup(Reach::Mapped);
    s.t().dirty_start(P, &[range(IOVA, PAGES * P)]).unwrap();
    s.device_writes(IOVA + 2 * P, 1);
    s.device_writes(IOVA + 13 * P, 2);
    // 16 KiB pages: logged pages 2 and 13 lie in report pages 0 and 3.
    assert_eq!(s.report(IOVA, 8 * P, 4 * P), vec![0b1]);
    assert_eq!(s.report(IOVA, PAGES * P, P), vec![1 << 13]);
}

#[test]
fn after_stop_a_report_is_einval_and_a_new_start_begins_clean() {
    let s = setup(Reach::Mapped);
    let mut b = [0u64; 1];
    let e = s.t().dirty_report(IOVA, P, P, &mut b).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "never started: {e}");
    s.t().dirty_start(P, &[range(IOVA, PAGES * P)]).unwrap();
    let again = s.t().dirty_start(P, &[range(IOVA, PAGES * P)]).unwrap_err();
    assert_eq!(again.errno(), libc::EBUSY, "{again}");
    s.device_writes(IOVA + P, 1);
    s.t().dirty_stop().unwrap();
    let e = s.t().dirty_report(IOVA, P, P, &mut b).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "stopped: {e}");
    s.t().dirty_stop().unwrap();
    s.t().dirty_start(P, &[range(IOVA, PAGES * P)]).unwrap();
    assert_eq!(s.report(IOVA, PAGES * P, P), vec![0], "the old log is gone");
}

#[test]
fn a_new_client_finds_no_log_left_by_the_last_one() {
    let s = setup(Reach::Mapped);
    s.t().dirty_start(P, &[range(IOVA, PAGES * P)]).unwrap();
    s.c.close();
    let c = Client::connect(&s._s.path, ClientConfig::default()).unwrap();
    let mut b = [0u64; 1];
    let t = c.dirty_tracking().unwrap();
    assert_eq!(
        t.dirty_report(IOVA, P, P, &mut b).unwrap_err().errno(),
        libc::EINVAL
    );
    t.dirty_start(P, &[range(IOVA, P)]).unwrap();
}

/// The client checks its arguments before sending, and the server checks
/// them again: a raw DEVICE_FEATURE carries them past the client's checks.
#[test]
fn bad_page_sizes_and_ranges_are_einval_on_both_sides() {
    let s = setup(Reach::Mapped);
    let good = [range(IOVA, PAGES * P)];
    for ps in [0, 1, 2048, 3000, 4097, 12288, 2 << 30] {
        let e = s.t().dirty_start(ps, &good).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "client, page size {ps}");
        let mut raw = proto::encode_dma_logging_start(ps, &good);
        let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
        let e = s.c.device_feature(flags, &mut raw).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "server, page size {ps}");
    }
    let bad: [&[DirtyRange]; 4] = [
        &[],
        &[range(IOVA, 0)],
        &[range(u64::MAX - P, 2 * P)],
        &[range(IOVA, 2 * P), range(IOVA + P, P)],
    ];
    for ranges in bad {
        let e = s.t().dirty_start(P, ranges).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "client, {ranges:?}");
        let mut raw = proto::encode_dma_logging_start(P, ranges);
        let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
        let e = s.c.device_feature(flags, &mut raw).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "server, {ranges:?}");
    }
    // Data that counts more ranges than it holds fails the command only.
    let mut lie = proto::encode_dma_logging_start(P, &good);
    lie[8..12].copy_from_slice(&1000u32.to_ne_bytes());
    let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
    let e = s.c.device_feature(flags, &mut lie).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");

    s.t().dirty_start(P, &good).unwrap();
    let mut b = [0u64; 4];
    for (iova, len, ps) in [
        (IOVA, PAGES * P, 2048),
        (IOVA, PAGES * P, 3 * P),
        (IOVA, 0, P),
        (IOVA - P, 2 * P, P),
        (IOVA, (PAGES + 1) * P, P),
        (0, P, P),
    ] {
        let e = s.t().dirty_report(iova, len, ps, &mut b).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "report {iova:#x}+{len:#x} at {ps}");
    }
    // A report without its data (GET sends none through device_feature).
    let flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT;
    let e = s.c.device_feature(flags, &mut [0u8; 64]).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    // Too short a bitmap is refused before anything is sent.
    let e = s.t().dirty_report(IOVA, 65 * P, P, &mut [0u64; 1]);
    assert_eq!(e.unwrap_err().errno(), libc::EINVAL);
    // The session is intact and the log still works.
    s.device_writes(IOVA + 4 * P, 9);
    assert_eq!(s.report(IOVA, PAGES * P, P), vec![1 << 4]);
}

#[test]
fn a_huge_start_is_refused_without_allocating_its_bitmap() {
    let s = setup(Reach::Mapped);
    let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
    let just_over = [range(0, (MAX_TRACKED_PAGES + 1) * P)];
    let whole_space = [range(0, u64::MAX)];
    let split: Vec<_> = (0..4)
        .map(|i| range(i << 40, MAX_TRACKED_PAGES / 2 * P))
        .collect();
    let too_many: Vec<_> = (0..=MAX_RANGES as u64)
        .map(|i| range(i * 2 * P, P))
        .collect();
    LARGEST.store(0, Ordering::Relaxed);
    for ranges in [&just_over[..], &whole_space, &split, &too_many] {
        let e = s.t().dirty_start(P, ranges).unwrap_err();
        assert_eq!(e.errno(), libc::E2BIG, "client, {} ranges", ranges.len());
        let mut raw = proto::encode_dma_logging_start(P, ranges);
        let e = s.c.device_feature(flags, &mut raw).unwrap_err();
        assert_eq!(e.errno(), libc::E2BIG, "server, {} ranges", ranges.len());
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < 16 << 20,
        "a refused start allocated {largest} bytes at once"
    );
    // The most a log may cover is granted.
    s.t()
        .dirty_start(P, &[range(0, MAX_TRACKED_PAGES * P)])
        .unwrap();
    s.device_writes(IOVA + 6 * P, 3);
    assert_eq!(s.report(IOVA, PAGES * P, P), vec![1 << 6]);
}

#[test]
fn a_report_larger_than_one_message_goes_in_parts() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    // 4 KiB per message: 32768 pages of bitmap each.
    let config = ClientConfig {
        max_data_xfer_size: 4096,
        ..ClientConfig::default()
    };
    let c = Client::connect(&s.path, config).unwrap();
    let far = 40_000 * P;
    let buf = DmaBuffer::new(2 * P as usize).unwrap();
    // SAFETY: `buf` outlives the client.
    unsafe { c.dma_map(&buf.dma_map(IOVA + far)).unwrap() };
    let t = c.dirty_tracking().unwrap();
    let pages = 40_002u64;
    t.dirty_start(P, &[range(IOVA, pages * P)]).unwrap();
    edu_store(&c, IOVA + far + P, 8);
    let mut b = vec![u64::MAX; pages.div_ceil(64) as usize];
    t.dirty_report(IOVA, pages * P, P, &mut b).unwrap();
    let set: Vec<u64> = (0..pages)
        .filter(|n| b[(n / 64) as usize] & (1 << (n % 64)) != 0)
        .collect();
    assert_eq!(set, vec![40_001]);
    assert_eq!(b.last().unwrap() >> (pages % 64), 0, "bits past the range");
}

/// A fake vfio-user server on one end of a socket pair: it answers VERSION
/// and DEVICE_GET_INFO (no regions, no IRQs) itself and every other command
/// with `answer`, until the client leaves; returns the commands it saw
/// after setup as (command, DEVICE_FEATURE flags or 0).
fn fake_server(
    answer: impl Fn(&Peer, &Msg) + Send + 'static,
) -> (Client, JoinHandle<Vec<(u16, u32)>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread = std::thread::spawn(move || {
        let mut p = Peer::new(theirs);
        let mut seen = Vec::new();
        while let Ok(m) = p.recv() {
            match m.h.command {
                cmd::VERSION => {
                    let v = proto::encode_version(0, 0, r#"{"capabilities":{"max_msg_fds":8}}"#);
                    p.reply(&m.h, &[&v], &[]);
                }
                cmd::DEVICE_GET_INFO => {
                    let info = DeviceInfo {
                        flags: 0,
                        num_regions: 0,
                        num_irqs: 0,
                    };
                    p.reply(&m.h, &[&proto::encode_device_info(16, &info)], &[]);
                }
                c => {
                    let flags = proto::decode_feature(&m.p).map_or(0, |f| f.1);
                    seen.push((c, flags));
                    answer(&p, &m);
                }
            }
        }
        seen
    });
    let config = ClientConfig {
        twin_socket: false,
        ..ClientConfig::default()
    };
    (Client::from_stream(ours, config).unwrap(), thread)
}

#[test]
fn a_server_that_refuses_the_probe_gets_no_dirty_tracking_requests() {
    let (c, server) = fake_server(|p, m| p.error(&m.h, libc::ENOTTY));
    assert!(!c
        .capabilities()
        .contains(vfio_io::Capabilities::DIRTY_TRACKING));
    let t = c.dirty_tracking().unwrap();
    let e = t.dirty_start(P, &[range(IOVA, P)]).unwrap_err();
    assert_eq!(e.errno(), libc::ENOTTY, "{e}");
    let e = t.dirty_report(IOVA, P, P, &mut [0u64; 1]).unwrap_err();
    assert_eq!(e.errno(), libc::ENOTTY, "{e}");
    assert_eq!(t.dirty_stop().unwrap_err().errno(), libc::ENOTTY);
    drop(c);
    // Only the connect-time probes reached the server.
    let seen = server.join().unwrap();
    assert!(
        seen.iter().all(|&(c, _)| c == cmd::DEVICE_FEATURE),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .any(|&(_, f)| f & VFIO_DEVICE_FEATURE_MASK == VFIO_DEVICE_FEATURE_DMA_LOGGING_START));
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// A server's report is untrusted: bits it sets past the range are dropped,
/// and a reply that does not match the request is a protocol error.
#[test]
fn a_lying_report_is_trimmed_or_refused() {
    let (c, server) = fake_server(|p, m| {
        let (argsz, flags, data) = proto::decode_feature(&m.p).unwrap();
        if flags & VFIO_DEVICE_FEATURE_MASK != VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
            || flags & VFIO_DEVICE_FEATURE_GET == 0
        {
            p.reply(&m.h, &[&m.p], &[]);
            return;
        }
        let r = DmaLoggingReport::decode(data).unwrap();
        let words = (argsz as usize - 8 - DmaLoggingReport::SIZE) / 8;
        let mut out = proto::encode_feature(argsz, flags).to_vec();
        if r.iova == IOVA {
            out.extend_from_slice(&r.encode());
            out.extend(std::iter::repeat_n(0xffu8, words * 8));
        } else {
            // Another range than the one asked for.
            out.extend_from_slice(&DmaLoggingReport { iova: IOVA, ..r }.encode());
            out.extend(std::iter::repeat_n(0u8, words * 8));
        }
        p.reply(&m.h, &[&out], &[]);
    });
    let t = c.dirty_tracking().unwrap();
    t.dirty_start(P, &[range(0, 1 << 30)]).unwrap();
    let mut b = [0u64; 2];
    t.dirty_report(IOVA, 70 * P, P, &mut b).unwrap();
    assert_eq!(
        b,
        [u64::MAX, (1 << 6) - 1],
        "70 pages: 6 bits of the second word"
    );
    let e = t.dirty_report(IOVA + P, P, P, &mut b).unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO, "{e}");
    drop(c);
    server.join().unwrap();
}
