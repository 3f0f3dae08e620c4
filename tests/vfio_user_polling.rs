//! Polling mode (`ClientConfig::spin`): the waiting reader polls the socket
//! before blocking. Only behaviour is checked here; its speed is in the bench.

use std::time::Duration;

use vfio_io::device::DeviceIo;
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::ServerConfig;

#[path = "support/served.rs"]
mod served;

#[test]
fn a_polling_client_gets_every_reply_alone_and_shared() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = Client::connect(
        &s.path,
        ClientConfig {
            spin: Some(Duration::from_micros(50)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let mut b = [0u8; 4];
    for i in 0..200u32 {
        c.region_read(0, regs::ID, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), ID);
        c.region_write(0, regs::LIVENESS, &i.to_ne_bytes(), i % 2 == 0)
            .unwrap();
        c.region_read(0, regs::LIVENESS, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), !i);
    }
    // Several threads: one polls as the reader, the others sleep on the
    // condvar and are woken with their replies.
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                let mut b = [0u8; 4];
                for _ in 0..200 {
                    c.region_read(0, regs::ID, &mut b).unwrap();
                    assert_eq!(u32::from_ne_bytes(b), ID);
                }
            });
        }
    });
    drop(c);
    s.finish();
}
