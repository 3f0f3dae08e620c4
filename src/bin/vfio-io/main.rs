//! The `vfio-io` command: serve a device over vfio-user, or run the demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use vfio_io::caps::Capabilities;
use vfio_io::conformance::run_edu_suite;
use vfio_io::device::DeviceIo;
use vfio_io::models::doorbell;
use vfio_io::models::edu::Edu;
use vfio_io::models::scratch::Scratch;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::{DeviceModel, Server, ServerConfig, ServerStopper};

mod info;
mod migrate;
mod target;

const USAGE: &str = "\
usage: vfio-io serve MODEL SOCKET [--trace] [--spin-us N]
                                            serve a device over vfio-user on SOCKET (MODEL: edu, scratch, doorbell)
       vfio-io demo                         serve edu on a temporary socket and drive it through the library
       vfio-io info TARGET [--json]         show a device: TARGET is a vfio-user socket, a PCI address
                                            (0000:00:01.0) or /dev/vfio/devices/vfioN
       vfio-io migrate [--factorial N] [--chunk BYTES]
                                            move edu live between two temporary servers and check it
       vfio-io COMMAND --help               help on one command";

const SERVE_USAGE: &str = "\
usage: vfio-io serve MODEL SOCKET [--trace] [--spin-us N]

Serves a device over vfio-user on the Unix socket SOCKET until SIGINT or
SIGTERM, then removes SOCKET. Connect with vfio_io_user_connect(),
`vfio-io info SOCKET` or QEMU's vfio-user-pci. MODEL is one of:
  edu       QEMU's edu device (PCI 1234:11e8): every access is a message
  scratch   a sample device (PCI 1234:5c7c): BAR0 4 KiB of trapped registers,
            BAR2 64 KiB of shared memory offered with its fd for mmap
  doorbell  a sample device (PCI 1234:d0be): BAR0 doorbells at 0x0 and 0x4,
            rung through ioeventfds, adding to a counter at 0x8

  --trace       log every vfio-user message to stderr
  --spin-us N   polling mode: wait for each message with non-blocking
                receives for up to N microseconds before blocking (faster
                replies to a client on another core, at the price of a busy
                CPU); 0 or absent: block at once";

const INFO_USAGE: &str = "\
usage: vfio-io info TARGET [--json]

Shows a device's regions, IRQ indices and capability bits (and where each bit
was learned). TARGET is one of:
  SOCKET                   a vfio-user socket (vfio-io serve edu SOCKET)
  0000:00:01.0             a PCI address bound to vfio-pci (legacy container road)
  /dev/vfio/devices/vfioN  a VFIO device cdev (iommufd road)

  --json    print one JSON object (schema in README, \"## vfio-io info\")

Exit status: 0, 1 when the device cannot be opened or read, 2 for bad usage.";

/// Prints log records to stderr (the library itself prints nothing).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        eprintln!(
            "vfio-io: {}: {}",
            r.level().as_str().to_lowercase(),
            r.args()
        );
    }
    fn flush(&self) {}
}

/// The device models `vfio-io serve` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Edu,
    Scratch,
    Doorbell,
}

impl Model {
    fn describe(self) -> &'static str {
        match self {
            Model::Edu => "edu (1234:11e8)",
            Model::Scratch => "scratch (1234:5c7c)",
            Model::Doorbell => "doorbell (1234:d0be)",
        }
    }
}

fn serve(model: Model, path: &Path, trace: bool, spin_us: u32) -> Result<(), String> {
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(if trace {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    });
    // Block SIGINT/SIGTERM here so that only the waiting thread receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let config = ServerConfig {
        trace,
        spin: (spin_us > 0).then(|| std::time::Duration::from_micros(spin_us.into())),
        ..ServerConfig::default()
    };
    let (stopper, thread) = match model {
        Model::Edu => listen(path, Edu::new(), config)?,
        Model::Scratch => listen(path, Scratch::new().map_err(|e| e.to_string())?, config)?,
        Model::Doorbell => listen(
            path,
            doorbell::new_device().map_err(|e| e.to_string())?,
            config,
        )?,
    };
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            stopper.stop();
        }
    });
    eprintln!(
        "vfio-io: serving {} on {}",
        model.describe(),
        path.display()
    );
    let r = thread
        .join()
        .unwrap_or(Err("the server thread panicked".into()));
    let _ = std::fs::remove_file(path);
    r
}

/// Binds `path` and serves `model` on a thread of its own; returns its stopper
/// and the thread.
fn listen<M: DeviceModel + 'static>(
    path: &Path,
    model: M,
    config: ServerConfig,
) -> Result<Serving, String> {
    let mut server = Server::bind(path, model, config)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let stopper = server.stopper();
    let thread = std::thread::spawn(move || server.serve().map_err(|e| e.to_string()));
    Ok((stopper, thread))
}

/// A running server: its stopper and the thread serving it.
type Serving = (ServerStopper, std::thread::JoinHandle<Result<(), String>>);

/// Runs `vfio-io demo`: serves edu on a temporary socket, drives it through
/// the library, and removes the socket again.
fn demo() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("vfio-io-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path: PathBuf = dir.join("edu.sock");
    let mut server =
        Server::bind(&path, Edu::new(), ServerConfig::default()).map_err(|e| e.to_string())?;
    let stopper = server.stopper();
    let thread = std::thread::spawn(move || server.serve());
    println!("served QEMU's edu device on {}", path.display());
    let result = drive_demo(&path);
    stopper.stop();
    let _ = thread.join();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Connects to the edu server on `path` and shows what the library sees of
/// it, then runs the conformance suite on it.
fn drive_demo(path: &Path) -> Result<(), String> {
    let dev = Client::connect(path, ClientConfig::default()).map_err(|e| e.to_string())?;
    println!(
        "connected through the vfio-user backend ({})",
        dev.backend_name()
    );
    print_capability_bits(&dev);
    show_device(&dev)?;
    run_conformance(&dev)
}

/// Prints the device's capability mask and whether it has each named bit.
fn print_capability_bits(dev: &dyn DeviceIo) {
    let caps = dev.capabilities();
    println!("device capabilities {:#06x}:", caps.bits());
    for (name, bit) in Capabilities::named_bits() {
        let mark = if caps.contains(bit) { "yes" } else { "no " };
        println!(
            "  bit {:2} {:<15} {mark}",
            bit.bits().trailing_zeros(),
            name
        );
    }
}

/// Prints the device's shape, its BAR0 identification register, and whether
/// it exports BAR0 as a DMA-BUF.
fn show_device(dev: &dyn DeviceIo) -> Result<(), String> {
    let info = dev.device_info().map_err(|e| e.to_string())?;
    println!(
        "device: {} regions, {} IRQ indices",
        info.num_regions, info.num_irqs
    );
    let mut id = [0u8; 4];
    dev.region_read(0, 0, &mut id).map_err(|e| e.to_string())?;
    println!(
        "BAR0 identification register: {:#010x}",
        u32::from_ne_bytes(id)
    );
    let dmabuf = dev
        .region_create_dma_buf(0, &[(0, 4096)])
        .map_err(|e| e.to_string())?;
    println!(
        "DMA-BUF export of BAR0: {}",
        if dmabuf.is_some() {
            "fd"
        } else {
            "not offered (no DMA_BUF bit), nothing tried"
        }
    );
    Ok(())
}

/// Runs the edu conformance suite, one line a case; fails if any case did.
fn run_conformance(dev: &dyn DeviceIo) -> Result<(), String> {
    let mut failed = 0;
    for (name, r) in run_edu_suite(dev) {
        match r {
            Ok(()) => println!("  conformance {name:<16} ok"),
            Err(e) => {
                failed += 1;
                println!("  conformance {name:<16} FAILED: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} conformance cases failed"));
    }
    Ok(())
}

/// A parsed command line.
enum Command<'a> {
    Serve {
        model: Model,
        socket: &'a str,
        trace: bool,
        /// `--spin-us`: the server's spin budget in µs, 0 for none.
        spin_us: u32,
    },
    Demo,
    Info {
        target: &'a str,
        json: bool,
    },
    Migrate(migrate::Options),
    /// Print this text on stdout and succeed.
    Help(&'static str),
    /// Print this message and the usage on stderr and exit 2.
    Usage(String, &'static str),
}

fn parse<'a>(args: &[&'a str]) -> Command<'a> {
    let help = |rest: &[&str]| rest.iter().any(|a| *a == "--help" || *a == "-h");
    match args {
        [] => Command::Usage("no command".into(), USAGE),
        ["--help" | "-h" | "help"] => Command::Help(USAGE),
        ["help", "serve"] => Command::Help(SERVE_USAGE),
        ["help", "info"] => Command::Help(INFO_USAGE),
        ["serve", rest @ ..] if help(rest) => Command::Help(SERVE_USAGE),
        ["info", rest @ ..] if help(rest) => Command::Help(INFO_USAGE),
        ["help", "migrate"] => Command::Help(migrate::USAGE),
        ["migrate", rest @ ..] if help(rest) => Command::Help(migrate::USAGE),
        ["migrate", rest @ ..] => match migrate::parse(rest) {
            Ok(o) => Command::Migrate(o),
            Err(e) => Command::Usage(e, migrate::USAGE),
        },
        ["serve", rest @ ..] => {
            let trace = rest.contains(&"--trace");
            let (spin_us, rest) = match take_spin_us(rest) {
                Ok(v) => v,
                Err(msg) => return Command::Usage(msg, SERVE_USAGE),
            };
            let pos: Vec<&str> = rest.into_iter().filter(|a| *a != "--trace").collect();
            match pos.as_slice() {
                [model, socket] if !socket.starts_with('-') => {
                    let model = match *model {
                        "edu" => Model::Edu,
                        "scratch" => Model::Scratch,
                        "doorbell" => Model::Doorbell,
                        other => {
                            return Command::Usage(
                                format!(
                                    "unknown device model '{other}' (edu, scratch or doorbell)"
                                ),
                                SERVE_USAGE,
                            )
                        }
                    };
                    Command::Serve {
                        model,
                        socket,
                        trace,
                        spin_us,
                    }
                }
                _ => Command::Usage("serve takes a model and a socket path".into(), SERVE_USAGE),
            }
        }
        ["demo"] => Command::Demo,
        ["info", rest @ ..] => {
            let json = rest.contains(&"--json");
            let pos: Vec<&str> = rest.iter().copied().filter(|a| *a != "--json").collect();
            match pos.as_slice() {
                [target] if !target.starts_with('-') => Command::Info { target, json },
                _ => Command::Usage("info takes one TARGET".into(), INFO_USAGE),
            }
        }
        [other, ..] => Command::Usage(format!("unknown command '{other}'"), USAGE),
    }
}

/// Takes `--spin-us N` out of `serve`'s arguments: N (0 when absent) and
/// the other arguments, or why N is not a number of microseconds.
fn take_spin_us<'a>(args: &[&'a str]) -> Result<(u32, Vec<&'a str>), String> {
    let Some(i) = args.iter().position(|a| *a == "--spin-us") else {
        return Ok((0, args.to_vec()));
    };
    let n = match args.get(i + 1) {
        Some(v) => v.parse::<u32>().map_err(|_| {
            format!(
                "--spin-us takes microseconds (0 to {}), not '{v}'",
                u32::MAX
            )
        })?,
        None => return Err("--spin-us needs a number of microseconds".into()),
    };
    let mut rest = args.to_vec();
    rest.drain(i..i + 2);
    if rest.contains(&"--spin-us") {
        return Err("--spin-us given twice".into());
    }
    Ok((n, rest))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match parse(&a) {
        Command::Serve {
            model,
            socket,
            trace,
            spin_us,
        } => serve(model, Path::new(socket), trace, spin_us),
        Command::Demo => demo(),
        Command::Info { target, json } => info::run(target, json),
        Command::Migrate(o) => migrate::run(o),
        Command::Help(text) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Command::Usage(msg, text) => {
            eprintln!("vfio-io: {msg}\n{text}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: scripts and humans both read the first line.
            eprintln!("vfio-io: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert!(matches!(
            parse(&["serve", "edu", "/s"]),
            Command::Serve {
                model: Model::Edu,
                socket: "/s",
                trace: false,
                spin_us: 0
            }
        ));
        assert!(matches!(
            parse(&["serve", "--trace", "edu", "/s"]),
            Command::Serve {
                model: Model::Edu,
                socket: "/s",
                trace: true,
                spin_us: 0
            }
        ));
        assert!(matches!(
            parse(&["serve", "--help"]),
            Command::Help(SERVE_USAGE)
        ));
        assert!(matches!(
            parse(&["serve", "edu", "-h"]),
            Command::Help(SERVE_USAGE)
        ));
        assert!(matches!(
            parse(&["info", "--help"]),
            Command::Help(INFO_USAGE)
        ));
        assert!(matches!(
            parse(&["info", "--json", "x"]),
            Command::Info {
                target: "x",
                json: true
            }
        ));
        assert!(matches!(
            parse(&["serve", "nvme", "/s"]),
            Command::Usage(..)
        ));
        assert!(matches!(parse(&["info"]), Command::Usage(..)));
        assert!(matches!(parse(&["info", "a", "b"]), Command::Usage(..)));
        assert!(matches!(parse(&[]), Command::Usage(..)));
        assert!(matches!(parse(&["frob"]), Command::Usage(..)));
    }

    #[test]
    fn serve_spin_us() {
        assert!(matches!(
            parse(&["serve", "edu", "/s", "--spin-us", "50"]),
            Command::Serve {
                model: Model::Edu,
                socket: "/s",
                trace: false,
                spin_us: 50
            }
        ));
        assert!(matches!(
            parse(&["serve", "--spin-us", "0", "--trace", "scratch", "/s"]),
            Command::Serve {
                model: Model::Scratch,
                socket: "/s",
                trace: true,
                spin_us: 0
            }
        ));
        for bad in [
            &["serve", "edu", "/s", "--spin-us"][..],
            &["serve", "edu", "/s", "--spin-us", "-1"],
            &["serve", "edu", "/s", "--spin-us", "5us"],
            &["serve", "edu", "/s", "--spin-us", "4294967296"],
            &["serve", "edu", "/s", "--spin-us", "1", "--spin-us", "2"],
            // The socket path where the number belongs.
            &["serve", "edu", "--spin-us", "/s"],
        ] {
            match parse(bad) {
                Command::Usage(msg, text) => {
                    assert!(msg.contains("spin-us"), "{bad:?}: {msg}");
                    assert_eq!(text, SERVE_USAGE);
                }
                _ => panic!("{bad:?} parsed"),
            }
        }
        // The number is not taken for the socket path.
        assert!(matches!(
            parse(&["serve", "edu", "--spin-us", "5"]),
            Command::Usage(..)
        ));
    }
}
