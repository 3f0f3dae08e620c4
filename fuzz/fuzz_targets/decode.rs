//! Any byte string as vfio-user messages: every pure decoder in proto and
//! version, then the stream framing of wire::Receiver over a real socket.
#![no_main]

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use vfio_io::user::proto::{self, Header};
use vfio_io::user::version::VersionCaps;
use vfio_io::user::wire::{send_msg, Receiver};
use vfio_io_fuzz::{memfd, Cursor, FdLeakCheck, MAX_INPUT};

/// Every payload decoder on one byte string. Results are dropped: only
/// panics (and sanitizer reports) count.
fn decoders(b: &[u8]) {
    let _ = Header::decode(b, usize::MAX);
    let _ = Header::decode(b, 4096);
    let _ = proto::DmaMapMsg::decode(b);
    let _ = proto::DmaUnmapMsg::decode(b);
    let _ = proto::decode_device_info(b);
    let _ = proto::decode_region_info_request(b);
    if let Ok((info, _)) = proto::decode_region_info(b) {
        // A decoded chain must survive re-encoding and the mmap-area logic.
        let _ = info.mmap_areas();
        let _ = proto::encode_region_info(&info, b.len());
    }
    let _ = proto::decode_irq_info(b);
    let _ = proto::IrqSetMsg::decode(b);
    let _ = proto::RegionAccess::decode(b);
    let _ = proto::DmaAccess::decode(b);
    let _ = proto::decode_write_multi(b);
    let _ = proto::decode_feature(b);
    let _ = proto::decode_io_fds(b);
    if let Ok((_, _, json)) = proto::decode_version(b) {
        if let Ok(caps) = VersionCaps::parse(json) {
            // What we parse we must be able to print and accept.
            let _ = VersionCaps::parse(&caps.to_json());
            let _ = VersionCaps::accept(&VersionCaps::default(), &caps);
        }
    }
    if let Ok(s) = std::str::from_utf8(b) {
        let _ = VersionCaps::parse(s);
    }
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let leaks = FdLeakCheck::start();
    // The whole input, and the payload after a 16-byte header as a receiver
    // would hand it over.
    decoders(data);
    if data.len() > proto::HEADER_SIZE {
        decoders(&data[proto::HEADER_SIZE..]);
    }

    // The first bytes choose the receiver's limit and how the stream is cut
    // into writes (and which writes carry an fd); the rest is the stream.
    let mut c = Cursor::new(data);
    let max_msg = match c.u8() % 4 {
        0 => 16,
        1 => 64,
        2 => 4096,
        _ => 1 << 20,
    };
    let chunk = usize::from(c.u8()).max(1);
    let fd_mask = c.u8();
    let stream = c.bytes(MAX_INPUT);
    // The stream's own first message, as the decoders would see it framed.
    decoders(stream);
    if stream.len() > proto::HEADER_SIZE {
        decoders(&stream[proto::HEADER_SIZE..]);
    }
    let (a, b) = UnixStream::pair().expect("socketpair");
    // Many small writes can fill the socket's buffer (each costs an skb), so
    // a thread writes while this one receives.
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let fd = memfd(0);
            for (i, part) in stream.chunks(chunk).enumerate() {
                let fds: &[i32] = if fd_mask & (1 << (i % 8)) != 0 {
                    &[fd.as_raw_fd()]
                } else {
                    &[]
                };
                if send_msg(a.as_fd(), &[part], fds).is_err() {
                    break; // the receiver gave up and closed
                }
            }
        });
        let mut rx = Receiver::new(max_msg);
        for _ in 0..=stream.len() {
            match rx.recv(b.as_fd(), false) {
                Ok(m) => decoders(m.payload),
                Err(_) => break,
            }
        }
        // Unblocks the writer if the receiver stopped early.
        drop(b);
        // An explicit join waits for the thread to exit; the scope alone
        // waits only for its closure, and the thread's TLS teardown would
        // then race the leak check.
        writer.join().expect("writer thread");
    });
    leaks.check();
});
