//! `vfio-io migrate`: edu moved live from one vfio-user server to another,
//! driven through the library's `DeviceMigration`, and checked on arrival.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vfio_io::caps::Capabilities;
use vfio_io::device::{pci_region, DeviceIo};
use vfio_io::dirty::DirtyRange;
use vfio_io::memory::DmaBuffer;
use vfio_io::migration::{DeviceMigration, MigrationState};
use vfio_io::models::edu::{self, regs, Edu};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::ServerConfig;

pub const USAGE: &str = "\
usage: vfio-io migrate [--factorial N] [--chunk BYTES]

Serves edu on two temporary sockets, connects a client to each and, on the
source, computes N! (default 10), writes the liveness register, fills edu's
4 KiB DMA buffer by a DMA from one page of client memory and copies it out
to the next, with dirty-page logging on over both pages where the device
offers it (the pages the log names are printed). Then migrates: the source
goes RUNNING -> STOP_COPY, its state stream is read in BYTES-sized chunks
(default 1024) and written into the destination in RESUMING, and the
destination goes to RUNNING. On arrival it checks and prints the
identification, liveness and factorial registers, the DMA buffer's checksum,
the state's size and the time taken.

  --factorial N   the factorial computed on the source (0-12: 13! overflows)
  --chunk BYTES   bytes per state-stream read and write (1 - 1048576)

Exit status: 0 when every check holds, 1 when one fails, 2 for bad usage.";

/// What to do, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The factorial the source computes.
    pub factorial: u32,
    /// Bytes per state-stream read and write.
    pub chunk: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            factorial: 10,
            chunk: 1024,
        }
    }
}

/// Parses the words after `migrate`: `Err` says what is wrong.
pub fn parse(args: &[&str]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(&flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} takes a value"));
        match flag {
            "--factorial" => o.factorial = number(flag, value?, 0, 12)? as u32,
            "--chunk" => o.chunk = number(flag, value?, 1, 1 << 20)?,
            other => return Err(format!("unknown migrate option '{other}'")),
        }
    }
    Ok(o)
}

/// `value` as a number in `lo..=hi`.
fn number(flag: &str, value: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("{flag} takes a number from {lo} to {hi}")),
    }
}

/// IOVA of the client memory edu reads from and writes to.
const IOVA: u64 = 0x10_0000;
/// Page size of the dirty log, and of the client memory's pages.
const PAGE: u64 = 4096;
/// Bytes of client memory: a page edu reads and a page it writes.
const MEMORY: usize = 2 * PAGE as usize;
/// DMA command: edu's buffer to client memory.
const TO_RAM: u64 = edu::DMA_CMD_START | edu::DMA_CMD_TO_RAM;
/// The value written to liveness on the source.
const LIVENESS: u32 = 0x1234_5678;

/// Runs `vfio-io migrate`: two servers on temporary sockets, removed again.
pub fn run(o: Options) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("vfio-io-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let r = serve_both_and_migrate(&dir, o);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn serve_both_and_migrate(dir: &Path, o: Options) -> Result<(), String> {
    let (src_path, dst_path): (PathBuf, PathBuf) = (dir.join("source.sock"), dir.join("dest.sock"));
    let (src_stop, src_thread) = super::listen(&src_path, Edu::new(), ServerConfig::default())?;
    let dst = super::listen(&dst_path, Edu::new(), ServerConfig::default());
    let r = match dst {
        Ok((dst_stop, dst_thread)) => {
            println!(
                "source: edu served on {}\ndestination: edu served on {}",
                src_path.display(),
                dst_path.display()
            );
            let r = connect_and_migrate(&src_path, &dst_path, o);
            dst_stop.stop();
            let _ = dst_thread.join();
            r
        }
        Err(e) => Err(e),
    };
    src_stop.stop();
    let _ = src_thread.join();
    r
}

fn connect(path: &Path) -> Result<Client, String> {
    Client::connect(path, ClientConfig::default())
        .map_err(|e| format!("connecting to {}: {e}", path.display()))
}

fn connect_and_migrate(src_path: &Path, dst_path: &Path, o: Options) -> Result<(), String> {
    let (src, dst) = (connect(src_path)?, connect(dst_path)?);
    let expected = prepare_source(&src, o)?;
    let moved = migrate(&src, &dst, o.chunk)?;
    println!(
        "migrated: {} bytes of state in {} chunks of up to {} bytes; \
         downtime {:.3} ms (STOP_COPY on the source -> RUNNING on the destination)",
        moved.bytes,
        moved.chunks,
        o.chunk,
        moved.downtime.as_secs_f64() * 1e3
    );
    check_arrival(&dst, &expected)
}

/// What the destination must show on arrival.
struct Expected {
    liveness: u32,
    factorial: u32,
    checksum: u64,
}

/// Drives the source away from power-on: factorial, liveness, and edu's
/// DMA buffer filled from the first page of client memory and copied back
/// out to the second, with dirty-page logging on around the DMA.
fn prepare_source(c: &Client, o: Options) -> Result<Expected, String> {
    write32(c, regs::FACTORIAL, o.factorial)?;
    let factorial = read32(c, regs::FACTORIAL)?;
    write32(c, regs::LIVENESS, LIVENESS)?;
    let liveness = read32(c, regs::LIVENESS)?;
    let pattern: Vec<u8> = (0..edu::DMA_BUF_SIZE as u32)
        .map(|i| (i * 31 + 7) as u8)
        .collect();
    let buf = DmaBuffer::new(MEMORY).map_err(|e| e.to_string())?;
    buf.write(0, &pattern).map_err(|e| e.to_string())?;
    let dirty = with_mapped(c, &buf, || {
        logging_dirty_pages(c, || {
            edu_dma(c, IOVA, edu::DMA_BUF_ADDR, edu::DMA_CMD_START)?;
            edu_dma(c, edu::DMA_BUF_ADDR, IOVA + PAGE, TO_RAM)
        })
    })?;
    let checksum = fnv1a(&pattern);
    println!(
        "source: {}! = {factorial}, liveness reads {liveness:#010x}, \
         DMA buffer filled from client memory ({} bytes, FNV-1a {checksum:#018x})",
        o.factorial,
        edu::DMA_BUF_SIZE
    );
    println!("{dirty}");
    Ok(Expected {
        liveness,
        factorial,
        checksum,
    })
}

/// Runs `dma` with dirty-page logging on over the client memory, where the
/// device offers it, and says which pages the report names.
fn logging_dirty_pages(
    c: &Client,
    dma: impl FnOnce() -> Result<(), String>,
) -> Result<String, String> {
    let Some(log) = c
        .dirty_tracking()
        .filter(|_| c.capabilities().contains(Capabilities::DIRTY_TRACKING))
    else {
        dma()?;
        return Ok("dirty pages: not shown (the device offers no dirty-page tracking)".into());
    };
    let range = DirtyRange {
        iova: IOVA,
        length: MEMORY as u64,
    };
    let e = |what: &str, err: vfio_io::Error| format!("{what}: {err}");
    log.dirty_start(PAGE, &[range])
        .map_err(|x| e("dirty_start", x))?;
    let r = dma();
    let mut bitmap = [0u64; 1];
    let report = log.dirty_report(IOVA, range.length, PAGE, &mut bitmap);
    log.dirty_stop().map_err(|x| e("dirty_stop", x))?;
    r?;
    report.map_err(|x| e("dirty_report", x))?;
    let pages: Vec<String> = (0..MEMORY as u64 / PAGE)
        .filter(|n| bitmap[0] & (1 << n) != 0)
        .map(|n| format!("{:#x}", IOVA + n * PAGE))
        .collect();
    Ok(format!(
        "dirty pages: {} of {} logged, written by the device: [{}]",
        pages.len(),
        MEMORY as u64 / PAGE,
        pages.join(", ")
    ))
}

/// How a migration went.
struct Moved {
    bytes: usize,
    chunks: usize,
    downtime: Duration,
}

/// Moves the device's state from `src` to `dst`, `chunk` bytes at a time:
/// the destination enters RESUMING before the source stops, as a VMM
/// prepares it, so the downtime is the source's stop, the stream and the
/// destination's load and start.
fn migrate(src: &Client, dst: &Client, chunk: usize) -> Result<Moved, String> {
    let (s, d) = (mig(src)?, mig(dst)?);
    let e = |what: &str, err: vfio_io::Error| format!("{what}: {err}");
    d.set_state(MigrationState::Resuming)
        .map_err(|x| e("destination to RESUMING", x))?;
    let started = Instant::now();
    s.set_state(MigrationState::StopCopy)
        .map_err(|x| e("source to STOP_COPY", x))?;
    let mut buf = vec![0u8; chunk];
    let (mut bytes, mut chunks) = (0, 0);
    // Bounded by reads, not time: edu's stream is STATE_LEN bytes.
    for _ in 0..=edu::STATE_LEN {
        let n = s.read(&mut buf).map_err(|x| e("reading the stream", x))?;
        if n == 0 {
            break;
        }
        d.write(&buf[..n]).map_err(|x| e("writing the stream", x))?;
        bytes += n;
        chunks += 1;
    }
    d.set_state(MigrationState::Running)
        .map_err(|x| e("destination to RUNNING", x))?;
    let downtime = started.elapsed();
    Ok(Moved {
        bytes,
        chunks,
        downtime,
    })
}

/// Checks the destination against what the source showed; prints each check.
fn check_arrival(c: &Client, want: &Expected) -> Result<(), String> {
    let state = mig(c)?.get_state().map_err(|e| e.to_string())?;
    let buf = DmaBuffer::new(MEMORY).map_err(|e| e.to_string())?;
    with_mapped(c, &buf, || edu_dma(c, edu::DMA_BUF_ADDR, IOVA, TO_RAM))?;
    let mut back = vec![0u8; edu::DMA_BUF_SIZE];
    buf.read(0, &mut back).map_err(|e| e.to_string())?;
    let checks = [
        ("state", format!("{state:?}"), "Running".to_string()),
        (
            "identification",
            format!("{:#010x}", read32(c, regs::ID)?),
            format!("{:#010x}", edu::ID),
        ),
        (
            "liveness",
            format!("{:#010x}", read32(c, regs::LIVENESS)?),
            format!("{:#010x}", want.liveness),
        ),
        (
            "factorial",
            read32(c, regs::FACTORIAL)?.to_string(),
            want.factorial.to_string(),
        ),
        (
            "DMA buffer FNV-1a",
            format!("{:#018x}", fnv1a(&back)),
            format!("{:#018x}", want.checksum),
        ),
    ];
    let mut failed = 0;
    for (what, got, want) in &checks {
        if got == want {
            println!("destination: {what} {got} ok");
        } else {
            failed += 1;
            println!("destination: {what} {got} FAILED, the source had {want}");
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} checks failed on the destination")),
    }
}

fn mig(c: &Client) -> Result<&dyn DeviceMigration, String> {
    c.migration()
        .ok_or_else(|| "the device does not offer migration".to_string())
}

/// Maps `buf` at [`IOVA`], runs `f`, and unmaps.
fn with_mapped<T>(
    c: &Client,
    buf: &DmaBuffer,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let map = buf.dma_map(IOVA);
    // SAFETY: `buf` outlives the mapping, which is removed before returning.
    unsafe { c.dma_map(&map) }.map_err(|e| format!("dma_map: {e}"))?;
    let r = f();
    c.dma_unmap(map.iova, map.size)
        .map_err(|e| format!("dma_unmap: {e}"))?;
    r
}

/// One edu DMA of the whole buffer: the model completes it inside the
/// command write.
fn edu_dma(c: &Client, src: u64, dst: u64, cmd: u64) -> Result<(), String> {
    for (reg, v) in [
        (regs::DMA_SRC, src),
        (regs::DMA_DST, dst),
        (regs::DMA_COUNT, edu::DMA_BUF_SIZE as u64),
        (regs::DMA_CMD, cmd),
    ] {
        c.region_write(pci_region::BAR0, reg, &v.to_le_bytes(), false)
            .map_err(|e| format!("edu DMA register {reg:#x}: {e}"))?;
    }
    Ok(())
}

fn read32(c: &Client, off: u64) -> Result<u32, String> {
    let mut b = [0u8; 4];
    c.region_read(pci_region::BAR0, off, &mut b)
        .map_err(|e| format!("reading BAR0 {off:#x}: {e}"))?;
    Ok(u32::from_le_bytes(b))
}

fn write32(c: &Client, off: u64, v: u32) -> Result<(), String> {
    c.region_write(pci_region::BAR0, off, &v.to_le_bytes(), false)
        .map_err(|e| format!("writing BAR0 {off:#x}: {e}"))
}

/// FNV-1a, 64 bits: a checksum that shows any changed byte.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_defaults_and_bounds() {
        assert_eq!(parse(&[]), Ok(Options::default()));
        assert_eq!(
            parse(&["--chunk", "64", "--factorial", "5"]),
            Ok(Options {
                factorial: 5,
                chunk: 64
            })
        );
        for bad in [
            &["--chunk"][..],
            &["--chunk", "0"],
            &["--chunk", "2000000"],
            &["--factorial", "13"],
            &["--factorial", "x"],
            &["--frob", "1"],
            &["extra"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
