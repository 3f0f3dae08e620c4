//! The client's hot path (region read, write, posted write) makes no heap
//! allocation once warmed up.
//!
//! A counting global allocator counts only allocations made by a thread that
//! has switched counting on, so the server thread and the client's twin-socket
//! thread in this process do not disturb the count. A lone caller reads its
//! own reply (it becomes the socket's reader), so everything the client does
//! for one request happens on the measuring thread.

use vfio_io::device::DeviceIo;
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::ServerConfig;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
#[path = "support/served.rs"]
mod served;
use counting_alloc::allocations;

#[test]
fn region_reads_writes_and_posted_writes_do_not_allocate() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = Client::connect(&s.path, ClientConfig::default()).unwrap();

    // The counter itself works: a lone Box is seen.
    assert_eq!(
        allocations(|| drop(std::hint::black_box(Box::new(1u64)))),
        1
    );

    let mut b4 = [0u8; 4];
    let mut b8 = [0u8; 8];
    let round = |i: u32, b4: &mut [u8; 4], b8: &mut [u8; 8]| {
        c.region_read(0, regs::ID, b4).unwrap();
        c.region_read(0, regs::DMA_SRC, b8).unwrap();
        c.region_write(0, regs::LIVENESS, &i.to_ne_bytes(), false)
            .unwrap();
        c.region_write(0, regs::LIVENESS, &(i + 1).to_ne_bytes(), true)
            .unwrap();
    };
    // Warm-up: slot payload buffers grow to their working size here.
    for i in 0..100 {
        round(i, &mut b4, &mut b8);
    }
    const N: u32 = 1000;
    let n = allocations(|| {
        for i in 0..N {
            round(i, &mut b4, &mut b8);
        }
    });
    assert_eq!(u32::from_ne_bytes(b4), ID);
    // The posted write took effect: the read after it saw its value.
    c.region_read(0, regs::LIVENESS, &mut b4).unwrap();
    assert_eq!(u32::from_ne_bytes(b4), !N);
    assert_eq!(
        n, 0,
        "{n} heap allocations in {N} rounds of read 4 B, read 8 B, write, posted write"
    );

    // Each kind alone, so a failure names the operation.
    for (what, op) in [("read", 0), ("write", 1), ("posted write", 2)] {
        let n = allocations(|| {
            for i in 0..200u32 {
                match op {
                    0 => c.region_read(0, regs::ID, &mut b4).unwrap(),
                    1 => c
                        .region_write(0, regs::LIVENESS, &i.to_ne_bytes(), false)
                        .unwrap(),
                    _ => c
                        .region_write(0, regs::LIVENESS, &i.to_ne_bytes(), true)
                        .unwrap(),
                }
            }
        });
        assert_eq!(n, 0, "{n} allocations in 200 region {what}s");
    }

    drop(c);
    s.finish();
}
