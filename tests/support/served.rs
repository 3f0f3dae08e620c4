//! A device model served on a fresh socket by a server thread in this
//! process, and the private directory its socket lives in; both cleaned up on
//! drop. Include it with `#[path = "support/served.rs"] mod served;`.

// Each test binary uses a part of it (some only the directory).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use vfio_io::user::server::{DeviceModel, Server, ServerConfig, ServerStopper};

/// A private directory under the system's temporary directory, unique to
/// this process and call, removed with its contents on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `vfio-io-<what>-<pid>-<n>`, empty.
    pub fn new(what: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("vfio-io-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server thread and the private directory holding its socket. Dropping it
/// stops and joins the server and re-raises a panic of the server thread
/// (a failed `serve` is one), unless the test is already failing.
pub struct Served {
    /// The socket path.
    pub path: PathBuf,
    stopper: ServerStopper,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

/// Serves `model` on a new socket until the returned value is dropped.
pub fn serve<M: DeviceModel + 'static>(model: M, config: ServerConfig) -> Served {
    let dir = TempDir::new("test");
    let path = dir.join("device.sock");
    let mut server = Server::bind(&path, model, config).expect("bind the test server");
    let stopper = server.stopper();
    let thread = std::thread::spawn(move || {
        if let Err(e) = server.serve() {
            panic!("the server loop failed: {e}");
        }
    });
    Served {
        path,
        stopper,
        thread: Some(thread),
        _dir: dir,
    }
}

impl Served {
    /// Stops the server and fails unless its thread ended cleanly: neither
    /// panicked nor returned an error.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            if let Err(p) = t.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(p);
                }
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
