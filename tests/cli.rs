//! The `vfio-io` command as a user runs it: help, `info` against a socket
//! served by `vfio-io serve edu`, the JSON schema README documents, SIGTERM
//! cleanup, and one-line errors for bad targets.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/served.rs"]
mod served;
use served::TempDir;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vfio-io"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run vfio-io")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `vfio-io serve edu SOCKET`, stopped with SIGTERM on drop if still running.
struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    fn start(socket: &Path) -> Served {
        let child = bin()
            .args(["serve", "edu"])
            .arg(socket)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vfio-io serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the server did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Served {
            child,
            socket: socket.to_path_buf(),
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

#[test]
fn help_goes_to_stdout() {
    for cmd in [&["serve", "--help"][..], &["info", "--help"], &["--help"]] {
        let o = run(cmd);
        assert!(o.status.success(), "{cmd:?}");
        assert!(text(&o.stdout).starts_with("usage: vfio-io"), "{cmd:?}");
    }
    assert!(text(&run(&["serve", "--help"]).stdout).contains("SIGTERM"));
    assert!(text(&run(&["info", "--help"]).stdout).contains("--json"));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn info_shows_backend_and_bar0() {
    let dir = TempDir::new("info");
    let served = Served::start(&dir.join("edu.sock"));
    let sock = served.socket.to_str().unwrap();
    let o = run(&["info", sock]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("backend vfio-user"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("BAR0") && l.contains("size 0x100000")),
        "{out}"
    );
}

#[test]
fn info_json_has_the_documented_keys() {
    let dir = TempDir::new("json");
    let served = Served::start(&dir.join("edu.sock"));
    let o = run(&["info", "--json", served.socket.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info --json is JSON");
    assert_eq!(v["schema"], 2);
    assert_eq!(v["backend"], "vfio-user");
    for key in ["flags", "num_regions", "num_irqs"] {
        assert!(!v["device"][key].is_null(), "device.{key}");
    }
    for key in ["device", "backend", "bits"] {
        assert!(!v["capabilities"][key].is_null(), "capabilities.{key}");
    }
    let bits = v["capabilities"]["bits"].as_array().unwrap();
    assert_eq!(bits.len(), vfio_io::caps::TABLE.len());
    for b in bits {
        for key in ["bit", "name", "device", "backend", "source", "detail"] {
            assert!(b.get(key).is_some(), "capabilities.bits[].{key}: {b}");
        }
    }
    let bit = |name: &str| bits.iter().find(|b| b["name"] == name).unwrap();
    assert_eq!(bit("DMA_BUF")["device"], false);
    assert_eq!(
        bit("DMA_BUF")["source"],
        serde_json::Value::Null,
        "never on vfio-user"
    );
    // What decided each bit is what this open saw.
    assert_eq!(bit("RESET")["source"], "device info");
    assert_eq!(bit("WRITE_MULTI")["source"], "negotiation (write_multiple)");
    assert_eq!(bit("POSTED_WRITES")["source"], "backend");
    assert_eq!(bit("MIGRATION")["device"], true);
    assert_eq!(bit("MIGRATION")["source"], "feature probe (1)");
    let regions = v["regions"].as_array().unwrap();
    let bar0 = &regions[0];
    for key in ["index", "name", "size", "offset", "flags", "caps"] {
        assert!(bar0.get(key).is_some(), "regions[].{key}");
    }
    assert_eq!(bar0["name"], "BAR0");
    assert_eq!(bar0["size"], 1 << 20);
    let irq = &v["irqs"][1];
    for key in ["index", "name", "count", "flags"] {
        assert!(irq.get(key).is_some(), "irqs[].{key}");
    }
    assert_eq!(irq["name"], "MSI");
}

#[test]
fn serve_removes_its_socket_after_sigterm() {
    let dir = TempDir::new("sigterm");
    let mut served = Served::start(&dir.join("edu.sock"));
    let status = served.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!served.socket.exists(), "the socket file is left behind");
}

/// Exit code 1 and exactly one line on stderr naming the target.
fn one_line_failure(args: &[&str], expect: &str) {
    let o = run(args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("vfio-io: "), "{err}");
    assert!(
        err.contains(expect),
        "{args:?}: expected {expect:?} in {err}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn bad_targets_fail_with_one_line() {
    let dir = TempDir::new("bad");
    let missing = dir.join("missing.sock");
    one_line_failure(&["info", missing.to_str().unwrap()], "no such socket");
    one_line_failure(&["info", "0000:99:99.9"], "no PCI device at that address");
    one_line_failure(
        &["info", "/dev/vfio/devices/vfio-none"],
        "no such VFIO device",
    );
    let file = dir.join("plain");
    std::fs::write(&file, b"").unwrap();
    one_line_failure(
        &["info", file.to_str().unwrap()],
        "neither a vfio-user socket",
    );

    // A socket whose listener is gone: a stale file.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    one_line_failure(&["info", stale.to_str().unwrap()], "connection refused");

    // Something listens but does not speak vfio-user: it hangs up.
    let other = dir.join("other.sock");
    let listener = UnixListener::bind(&other).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        drop(s);
    });
    one_line_failure(&["info", other.to_str().unwrap()], "not a vfio-user server");
    t.join().unwrap();
}
