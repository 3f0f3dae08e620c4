//! Serving a device model on a fresh socket in a thread, for the integration
//! tests; stopped and cleaned up on drop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use vfio_io::user::server::{DeviceModel, Server, ServerConfig, ServerStopper};

/// A server thread and the private directory holding its socket.
pub struct Served {
    /// The socket path.
    pub path: PathBuf,
    dir: PathBuf,
    stopper: ServerStopper,
    thread: Option<JoinHandle<()>>,
}

/// Serves `model` on a new socket until the returned value is dropped.
pub fn serve<M: DeviceModel + 'static>(model: M, config: ServerConfig) -> Served {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("vfio-io-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("device.sock");
    let mut server = Server::bind(&path, model, config).unwrap();
    let stopper = server.stopper();
    let thread = Some(std::thread::spawn(move || server.serve().unwrap()));
    Served {
        path,
        dir,
        stopper,
        thread,
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            // Re-raise a server panic, unless this test is already failing.
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the server thread panicked");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
