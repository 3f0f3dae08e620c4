//! The process's open fds, for tests that prove they leak none. The count is
//! process-wide: a test using it must not run beside another that opens fds
//! (hold one lock for the whole test). Include it with
//! `#[path = "support/open_fds.rs"] mod open_fds;`.

use std::time::Duration;

/// The fds open at one moment, each as `n -> target`, for the message.
pub struct OpenFds(Vec<String>);

impl OpenFds {
    /// The fds open now.
    pub fn now() -> OpenFds {
        let fds = std::fs::read_dir("/proc/self/fd")
            .expect("read /proc/self/fd")
            .filter_map(|e| e.ok())
            .map(|e| {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                )
            })
            .collect();
        OpenFds(fds)
    }

    /// Fails unless as many fds are open now as at `self`. Every thread the
    /// test started must have been joined; the kernel may still be finishing
    /// a close on a loaded machine, so the count gets a moment (at most 50
    /// looks 10 ms apart) to come back.
    pub fn assert_none_leaked(&self) {
        let mut after = OpenFds::now();
        for _ in 0..50 {
            if after.0.len() == self.0.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            after = OpenFds::now();
        }
        assert_eq!(
            after.0.len(),
            self.0.len(),
            "fds leaked (or closed twice) by this test: before {:?}, after {:?}",
            self.0,
            after.0
        );
    }
}
