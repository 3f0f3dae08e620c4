//! A watchdog for tests that could hang: it aborts the whole test process
//! with a message (a hang cannot be unwound out of) unless dropped in time.
//! Include it with `#[path = "support/watchdog.rs"] mod watchdog;`.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Aborts the process unless dropped within the limit it was started with.
pub struct Watchdog(Option<mpsc::Sender<()>>, Option<JoinHandle<()>>);

impl Watchdog {
    /// Starts watching `what`, which must be done (this dropped) within `limit`.
    pub fn start(what: &str, limit: Duration) -> Watchdog {
        let what = what.to_owned();
        let (tx, rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("WATCHDOG: {what} still running after {limit:?}: a request hung");
                std::process::abort();
            }
        });
        Watchdog(Some(tx), Some(t))
    }

    /// Starts watching the calling test, named after its thread (the test
    /// harness names each test's thread after the test).
    #[allow(dead_code)] // not every test that includes this file names itself
    pub fn for_this_test(limit: Duration) -> Watchdog {
        let name = std::thread::current().name().unwrap_or("a test").to_owned();
        Watchdog::start(&name, limit)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.0.take()); // disconnects the channel: the watchdog returns
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}
