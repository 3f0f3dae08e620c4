//! Many threads on ONE vfio-user `Client`, against a served edu.
//!
//! Every check uses an operation whose answer does not depend on what the
//! other threads do (the ID register, slices of configuration space that no
//! one writes), or one done under a lock (the liveness register), so a wrong
//! value can only mean a reply that was lost or given to the wrong thread.
//! Unchecked posted writes go to a register no check reads (DMA_SRC).
//!
//! Both tests hold `SERIAL` (the fd count is process-wide) and run under a
//! watchdog that aborts the process with a message instead of hanging CI.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vfio_io::device::{pci_region, DeviceIo};
use vfio_io::error::Error;
use vfio_io::models::edu::{regs, Edu, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::ServerConfig;

#[path = "support/open_fds.rs"]
mod open_fds;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;
use open_fds::OpenFds;
use served::Served;
use watchdog::Watchdog;

const THREADS: usize = 8;
/// Operations in total over all threads (a liveness check is 4 round trips,
/// the others 1). A debug build on 2 cores runs them in about 6 s here.
const TOTAL_OPS: usize = 100_000;
/// Past this the watchdog aborts the whole test process.
const WATCHDOG: Duration = Duration::from_secs(30);
/// edu's vendor and device IDs as the first dword of configuration space.
const CONFIG_IDS: u32 = 0x11e8_1234;

static SERIAL: Mutex<()> = Mutex::new(());

fn serve(_name: &str) -> Served {
    served::serve(Edu::new(), ServerConfig::default())
}

fn connect(s: &Served) -> Client {
    Client::connect(
        &s.path,
        ClientConfig {
            // Generous: 8 threads share 63 slots on 2 cores in a debug build.
            timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        },
    )
    .expect("connect")
}

/// What the checks compare against, read once before the threads start.
struct Expected {
    config: [u8; 256],
}

/// Serialises the liveness write-then-read pairs, the only checks on a
/// register that writes change.
static LIVENESS: Mutex<()> = Mutex::new(());

/// One operation of thread `t`, step `i`. Returns a description of a wrong
/// answer, or the client's error.
fn op(c: &Client, exp: &Expected, t: usize, i: usize) -> Result<Option<String>, Error> {
    let mut b4 = [0u8; 4];
    match i % 5 {
        0 => {
            c.region_read(pci_region::BAR0, regs::ID, &mut b4)?;
            let v = u32::from_le_bytes(b4);
            Ok((v != ID).then(|| format!("ID register read {v:#x}")))
        }
        1 => {
            c.region_read(pci_region::CONFIG, 0, &mut b4)?;
            let v = u32::from_le_bytes(b4);
            Ok((v != CONFIG_IDS).then(|| format!("config vendor/device read {v:#x}")))
        }
        2 => {
            // A slice whose offset and length depend on the thread and step:
            // a reply meant for another request has another length or content.
            let off = (t * 29 + i * 7) % 200;
            let len = 1 + (t + i) % 56;
            let mut b = vec![0u8; len];
            c.region_read(pci_region::CONFIG, off as u64, &mut b)?;
            let want = &exp.config[off..off + len];
            Ok((b != want).then(|| format!("config[{off}..+{len}] read {b:x?}, want {want:x?}")))
        }
        3 => {
            // Unchecked posted write: no check reads DMA_SRC.
            let v = ((t as u64) << 32) | i as u64;
            c.region_write(pci_region::BAR0, regs::DMA_SRC, &v.to_le_bytes(), true)?;
            Ok(None)
        }
        _ => {
            // Liveness under the lock: a posted write, then a non-posted one,
            // each followed by a read that must see its inversion. The posted
            // write has no reply, so this also checks it is applied in order.
            let _g = LIVENESS.lock().unwrap_or_else(|p| p.into_inner());
            let v = ((t as u32) << 24) | i as u32;
            for (val, post) in [(v, true), (v ^ 0x00ff_0000, false)] {
                c.region_write(pci_region::BAR0, regs::LIVENESS, &val.to_le_bytes(), post)?;
                c.region_read(pci_region::BAR0, regs::LIVENESS, &mut b4)?;
                let got = u32::from_le_bytes(b4);
                if got != !val {
                    return Ok(Some(format!(
                        "liveness after writing {val:#x} (posted {post}) read {got:#x}"
                    )));
                }
            }
            Ok(None)
        }
    }
}

fn expected(c: &Client) -> Expected {
    let mut config = [0u8; 256];
    c.region_read(pci_region::CONFIG, 0, &mut config).unwrap();
    assert_eq!(
        u32::from_le_bytes(config[..4].try_into().unwrap()),
        CONFIG_IDS
    );
    Expected { config }
}

#[test]
fn eight_threads_share_one_client_and_every_reply_is_theirs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let _dog = Watchdog::start("eight_threads_share_one_client", WATCHDOG);
    let before = OpenFds::now();
    let start = Instant::now();
    {
        let s = serve("mixed");
        let c = connect(&s);
        let exp = expected(&c);
        let wrong: Vec<String> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (c, exp) = (&c, &exp);
                    sc.spawn(move || {
                        let mut wrong = Vec::new();
                        for i in 0..TOTAL_OPS / THREADS {
                            match op(c, exp, t, i) {
                                Ok(None) => {}
                                Ok(Some(w)) => wrong.push(format!("thread {t} op {i}: {w}")),
                                Err(e) => panic!("thread {t} op {i}: {e}"),
                            }
                        }
                        wrong
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("worker thread"))
                .collect()
        });
        assert!(
            wrong.is_empty(),
            "{} wrong replies: {wrong:#?}",
            wrong.len()
        );
        // The link is still in order after the storm.
        assert_eq!(op(&c, &exp, 0, 4).unwrap(), None);
    }
    eprintln!(
        "{TOTAL_OPS} operations on {THREADS} threads took {:?}",
        start.elapsed()
    );
    before.assert_none_leaked();
}

#[test]
fn close_midway_fails_the_others_cleanly() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let _dog = Watchdog::start("close_midway_fails_the_others_cleanly", WATCHDOG);
    let before = OpenFds::now();
    {
        let s = serve("close");
        let c = connect(&s);
        let exp = expected(&c);
        let done = AtomicUsize::new(0);
        let closed = AtomicBool::new(false);
        // Close once this many operations have completed: well after all
        // threads are busy, well before they would finish on their own.
        let close_at = 2_000;
        let per_thread = 1_000_000; // never reached: close() ends every loop
        let results: Vec<(usize, usize)> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (c, exp, done, closed) = (&c, &exp, &done, &closed);
                    sc.spawn(move || {
                        let (mut ok, mut failed) = (0usize, 0usize);
                        for i in 0..per_thread {
                            match op(c, exp, t, i) {
                                Ok(None) if failed == 0 => ok += 1,
                                Ok(None) => panic!("thread {t}: op {i} succeeded after a failure"),
                                Ok(Some(w)) => panic!("thread {t} op {i}: wrong reply: {w}"),
                                Err(e) => {
                                    assert!(
                                        matches!(e.errno(), libc::ENOTCONN | libc::EPROTO),
                                        "thread {t} op {i}: {e} (errno {}), want ENOTCONN or EPROTO",
                                        e.errno()
                                    );
                                    assert!(
                                        closed.load(Ordering::SeqCst),
                                        "thread {t} op {i} failed before close(): {e}"
                                    );
                                    failed += 1;
                                    // A few more after the first failure: all must fail too.
                                    if failed == 10 {
                                        break;
                                    }
                                }
                            }
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        (ok, failed)
                    })
                })
                .collect();
            sc.spawn(|| {
                // The deadline keeps a worker that panicked early from
                // leaving this loop spinning until the watchdog fires.
                let give_up = Instant::now() + Duration::from_secs(20);
                while done.load(Ordering::SeqCst) < close_at && Instant::now() < give_up {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Set before close() so a failure seen by a worker always
                // finds it set.
                closed.store(true, Ordering::SeqCst);
                c.close();
            });
            hs.into_iter()
                .map(|h| h.join().expect("worker thread"))
                .collect()
        });
        for (t, (_, failed)) in results.iter().enumerate() {
            assert_eq!(*failed, 10, "thread {t} stopped without failing");
        }
        let total_ok: usize = results.iter().map(|r| r.0).sum();
        assert!(
            total_ok >= close_at - THREADS,
            "closed too early: {total_ok} ok"
        );
        // After close() everything fails cleanly, including a posted write.
        let e = c
            .region_write(pci_region::BAR0, regs::DMA_SRC, &[0; 8], true)
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOTCONN, "{e}");
        drop(c);
        // The server saw the disconnect and serves the next client.
        let c = connect(&s);
        assert_eq!(op(&c, &exp, 0, 0).unwrap(), None);
    }
    before.assert_none_leaked();
}
