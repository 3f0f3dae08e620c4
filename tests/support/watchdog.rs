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
    pub fn start(what: &'static str, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("WATCHDOG: {what} still running after {limit:?}: a request hung");
                std::process::abort();
            }
        });
        Watchdog(Some(tx), Some(t))
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
