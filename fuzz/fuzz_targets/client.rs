//! The client's handshake against a scripted, mostly hostile server: every
//! request Client::from_stream sends (VERSION, DEVICE_GET_INFO, region info,
//! feature probes) is answered from the fuzz input.
//!
//! Input: a config byte, then script steps, one consumed per request (op
//! byte, then op-specific bytes; see `answer`). When the script ends the
//! fake server hangs up, so every run ends promptly.
#![no_main]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vfio_io::device::{DeviceInfo, RegionCap, RegionInfo, SparseArea};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{self, cmd, Header, FLAG_ERROR, FLAG_TYPE_REPLY};
use vfio_io::user::wire::{send_msg, set_timeouts, Receiver};
use vfio_io_fuzz::{frame, memfd, server_version_payload, Cursor, MAX_INPUT};

/// What the fake server does with one request; false: hang up.
fn answer(c: &mut Cursor<'_>, sock: &OwnedFd, req: &Header, payload: &[u8], fd: &OwnedFd) -> bool {
    let mut fds: Vec<i32> = Vec::new();
    let op = c.u8();
    if op & 0x80 != 0 {
        // Attach an fd to whatever goes out: a region fd to mmap, a bogus
        // twin socket, or one nobody expected.
        fds.push(fd.as_raw_fd());
    }
    let out: Vec<u8> = match op % 8 {
        // A valid answer, so the handshake gets further.
        0 | 1 => {
            let p = match req.command {
                cmd::VERSION => server_version_payload(),
                cmd::DEVICE_GET_INFO => proto::encode_device_info(
                    16,
                    &DeviceInfo {
                        flags: u32::from(c.u8() & 1),
                        num_regions: u32::from(c.u8() % 10),
                        num_irqs: u32::from(c.u8() % 6),
                    },
                )
                .to_vec(),
                cmd::DEVICE_GET_REGION_INFO => {
                    let (argsz, index) =
                        proto::decode_region_info_request(payload).unwrap_or((32, 0));
                    let mut caps = Vec::new();
                    let k = c.u8();
                    if k & 1 != 0 {
                        let n = usize::from(c.u8() % 4);
                        caps.push(RegionCap::SparseMmap(
                            (0..n)
                                .map(|i| SparseArea {
                                    offset: (i as u64) << (c.u8() % 48),
                                    size: u64::from(c.u16()),
                                })
                                .collect(),
                        ));
                    }
                    if k & 2 != 0 {
                        caps.push(RegionCap::Type {
                            region_type: c.u32(),
                            subtype: c.u32(),
                        });
                    }
                    if k & 4 != 0 {
                        caps.push(RegionCap::MsixMappable);
                    }
                    let info = RegionInfo {
                        index,
                        flags: c.u32() & 0xf,
                        size: u64::from(c.u32()),
                        offset: u64::from(c.u16()) << 12,
                        caps,
                        fd: None,
                    };
                    proto::encode_region_info(&info, argsz as usize)
                }
                _ => Vec::new(),
            };
            frame(&Header::reply(req, p.len()), &p)
        }
        // The right id and command, fuzzed flags, error and payload.
        2 | 3 => {
            let mut h = Header::reply(req, 0);
            h.flags = FLAG_TYPE_REPLY | (u32::from(c.u8()) << 4);
            h.error = u32::from(c.u8());
            let len = usize::from(c.u16() % 1024);
            let p = c.bytes(len);
            h.size = (proto::HEADER_SIZE + p.len()) as u32;
            frame(&h, p)
        }
        // An error reply.
        4 => {
            let mut h = Header::error_reply(req, i32::from(c.u8()));
            h.flags |= FLAG_ERROR;
            frame(&h, &[])
        }
        // Raw bytes, header included, exactly as in the input.
        5 => {
            let len = usize::from(c.u16() % 2048);
            c.bytes(len).to_vec()
        }
        // A server-to-client command first (DMA and whatever else), then
        // the next step answers the request.
        6 => {
            let command = c.u16() % 20;
            let len = usize::from(c.u8());
            let p = c.bytes(len);
            let h = Header::command(c.u16(), command, p.len());
            if send_msg(sock.as_fd(), &[&frame(&h, p)], &fds).is_err() {
                return false;
            }
            return !c.is_empty() && answer(c, sock, req, payload, fd);
        }
        // Hang up mid-handshake.
        _ => return false,
    };
    send_msg(sock.as_fd(), &[&out], &fds).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let config = ClientConfig {
        timeout: Duration::from_millis(50),
        twin_socket: mode & 1 != 0,
        max_data_xfer_size: if mode & 2 != 0 { 4096 } else { 1 << 20 },
        spin: None,
    };
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    std::thread::scope(|scope| {
        let server = scope.spawn(move || {
            let sock: OwnedFd = theirs.into();
            // Bounds the fake server's wait: a client that neither asks nor
            // hangs up would otherwise keep it (and the run) forever.
            set_timeouts(
                sock.as_fd(),
                Some(Duration::from_secs(5)),
                Some(Duration::from_secs(5)),
            )
            .expect("timeouts");
            let fd = memfd(1 << 16);
            let mut rx = Receiver::new(1 << 21);
            while !c.is_empty() {
                let (hdr, payload) = match rx.recv(sock.as_fd(), false) {
                    Ok(m) => (m.header, m.payload.to_vec()),
                    Err(_) => break,
                };
                if hdr.is_reply() {
                    continue; // the client answering one of our DMA commands
                }
                if !answer(&mut c, &sock, &hdr, &payload, &fd) {
                    break;
                }
            }
            // Dropping the socket here is the hang-up.
        });
        // Ok and Err are both acceptable answers to a hostile server; only
        // a panic or a hang is a finding. Dropping an Ok client closes it.
        drop(Client::from_stream(ours, config));
        server.join().expect("fake server thread panicked");
    });
});
