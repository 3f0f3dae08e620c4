//! The server mmaps client memory that the client could still shrink (a
//! /dev/shm file, an unsealed memfd) and survives the client truncating it:
//! the DMA fails with EFAULT instead of SIGBUS killing this process, which
//! runs the server thread. Real client, real socket, real fd passing.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vfio_io::device::{DeviceIo, DmaMap};
use vfio_io::memory::DmaBuffer;
use vfio_io::models::edu::{Edu, DMA_BUF_SIZE, ID};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::server::ServerConfig;

#[path = "support/dma_errors.rs"]
mod dma_errors;
#[path = "support/edu_dma.rs"]
mod edu_dma;
#[path = "support/forwarding_model.rs"]
mod forwarding_model;
#[path = "support/served.rs"]
mod served;
use dma_errors::{recording_dma_errors, DmaErrors};
use edu_dma::{edu_load, edu_round_trip, edu_store};

const PAGE: u64 = 4096;
/// Where the file under test is mapped for the device.
const FILE_IOVA: u64 = 0x20_0000;
/// Where a sealed buffer, which cannot shrink, is mapped for the device.
const SEALED_IOVA: u64 = 0x10_0000;

/// Serves edu with DMA faults recorded, and connects a client.
fn serve() -> (served::Served, DmaErrors, Client) {
    let (model, faults) = recording_dma_errors(Edu::new());
    let served = served::serve(model, ServerConfig::default());
    let client = connect(&served);
    (served, faults, client)
}

fn connect(s: &served::Served) -> Client {
    Client::connect(&s.path, ClientConfig::default()).unwrap()
}

/// A regular file of `len` bytes in /dev/shm (tmpfs), already unlinked; None
/// (with the reason printed) where /dev/shm is not tmpfs.
fn shm_file(len: u64) -> Option<File> {
    let dir = std::path::Path::new("/dev/shm");
    let on_tmpfs = nix::sys::statfs::statfs(dir)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    if !on_tmpfs {
        eprintln!("SKIPPED: /dev/shm is not a tmpfs here; the tmpfs file case cannot run");
        return None;
    }
    Some(unlinked_file(dir, len))
}

/// A regular file of `len` bytes in `dir`, already unlinked.
fn unlinked_file(dir: &std::path::Path, len: u64) -> File {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("vfio-io-dma-files-{}-{n}", std::process::id()));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.set_len(len).unwrap();
    f
}

/// An unsealed (so shrinkable) memfd of `len` bytes.
fn unsealed_memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create(c"dma-files", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .unwrap();
    let f = File::from(fd);
    f.set_len(len).unwrap();
    f
}

/// Maps `file` at [`FILE_IOVA`], telling the client to answer DMA messages
/// from `decoy`, a different buffer: data that moves through the file was
/// moved by the server's own mapping, data in the decoy by messages.
fn map_with_decoy(c: &Client, file: &File, decoy: &DmaBuffer) {
    let map = DmaMap {
        iova: FILE_IOVA,
        size: file.metadata().unwrap().len(),
        vaddr: decoy.dma_map(0).vaddr,
        fd: file.as_raw_fd(),
        offset: 0,
        readable: true,
        writable: true,
    };
    assert!(map.size <= decoy.len() as u64);
    // SAFETY: `decoy` is at least as large and outlives the client.
    unsafe { c.dma_map(&map).unwrap() };
}

/// The decoy is still all zeros: no DMA message reached the client.
fn assert_untouched(decoy: &DmaBuffer) {
    let mut seen = vec![0u8; decoy.len()];
    decoy.read(0, &mut seen).unwrap();
    assert!(
        seen.iter().all(|&b| b == 0),
        "a DMA message reached the decoy"
    );
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn read_file(f: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

fn assert_serves(c: &Client) {
    let mut id = [0u8; 4];
    c.region_read(0, 0, &mut id).unwrap();
    assert_eq!(u32::from_ne_bytes(id), ID, "the session still answers");
}

/// Edu copies page 0 of the file to page 1 through its buffer; the result
/// shows in the file and not in the decoy, so the server used its mapping.
fn dma_goes_through_the_mapping(file: File) {
    let (_s, faults, c) = serve();
    let decoy = DmaBuffer::new(2 * PAGE as usize).unwrap();
    let data = pattern(DMA_BUF_SIZE, 0x5a);
    file.write_all_at(&data, 0).unwrap();
    map_with_decoy(&c, &file, &decoy);
    edu_round_trip(&c, FILE_IOVA, FILE_IOVA + PAGE, data.len() as u64);
    assert_eq!(
        read_file(&file, PAGE, data.len()),
        data,
        "edu's copy reached the file"
    );
    assert_untouched(&decoy);
    assert!(faults.lock().unwrap().is_empty());
}

#[test]
fn dma_through_a_tmpfs_file_is_mapped() {
    if let Some(f) = shm_file(2 * PAGE) {
        dma_goes_through_the_mapping(f);
    }
}

#[test]
fn dma_through_an_unsealed_memfd_is_mapped() {
    dma_goes_through_the_mapping(unsealed_memfd(2 * PAGE));
}

/// A file on a disk file system is not mapped (a fault on it may wait on
/// I/O): DMA reaches the client's memory through messages, here the decoy.
#[test]
fn dma_through_a_file_on_disk_goes_by_messages() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = unlinked_file(dir, 2 * PAGE);
    if vfio_io::memory::in_memory_file(file.as_fd()).unwrap() {
        eprintln!(
            "SKIPPED: {} is in memory here, not on a disk",
            dir.display()
        );
        return;
    }
    let (_s, faults, c) = serve();
    let decoy = DmaBuffer::new(2 * PAGE as usize).unwrap();
    let data = pattern(256, 0x6b);
    decoy.write(0, &data).unwrap();
    map_with_decoy(&c, &file, &decoy);
    edu_round_trip(&c, FILE_IOVA, FILE_IOVA + PAGE, data.len() as u64);
    let mut back = vec![0u8; data.len()];
    decoy.read(PAGE as usize, &mut back).unwrap();
    assert_eq!(back, data, "the copy went through the client's memory");
    assert_eq!(read_file(&file, PAGE, data.len()), vec![0; data.len()]);
    assert!(faults.lock().unwrap().is_empty());
}

/// A regular file past whose end the DMA_MAP range reaches is refused, as a
/// mapping of it would fault from the start.
#[test]
fn dma_map_past_the_end_of_a_file_is_refused() {
    let (_s, _faults, c) = serve();
    let decoy = DmaBuffer::new(2 * PAGE as usize).unwrap();
    let file = unsealed_memfd(PAGE);
    let mut map = decoy.dma_map(FILE_IOVA);
    map.fd = file.as_raw_fd();
    // SAFETY: the map is refused; `decoy` outlives the client anyway.
    let e = unsafe { c.dma_map(&map) }.unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert_serves(&c);
}

/// The client truncates its file under the server's mapping, then asks for
/// DMA into and out of the lost page: both fail with EFAULT (edu's buffer
/// keeps its old contents), the server lives, the session keeps serving, the
/// page still inside the file still works, and a new client is served.
fn truncation_is_survived(file: File) {
    let (s, faults, c) = serve();
    let decoy = DmaBuffer::new(2 * PAGE as usize).unwrap();
    let sealed = DmaBuffer::new(2 * PAGE as usize).unwrap();
    // SAFETY: `sealed` outlives the client.
    unsafe { c.dma_map(&sealed.dma_map(SEALED_IOVA)).unwrap() };
    let len = DMA_BUF_SIZE;
    let (old, lost) = (pattern(len, 0x11), pattern(len, 0x77));
    sealed.write(0, &old).unwrap();
    file.write_all_at(&lost, PAGE).unwrap();
    map_with_decoy(&c, &file, &decoy);
    edu_load(&c, SEALED_IOVA, len as u64);

    file.set_len(PAGE).unwrap();
    edu_load(&c, FILE_IOVA + PAGE, len as u64);
    edu_store(&c, FILE_IOVA + PAGE, len as u64);
    assert_eq!(*faults.lock().unwrap(), [libc::EFAULT, libc::EFAULT]);
    assert_serves(&c);
    edu_store(&c, SEALED_IOVA + PAGE, len as u64);
    let mut buffer = vec![0u8; len];
    sealed.read(PAGE as usize, &mut buffer).unwrap();
    assert_eq!(buffer, old, "the failed load left edu's buffer as it was");

    edu_store(&c, FILE_IOVA, len as u64);
    assert_eq!(
        read_file(&file, 0, len),
        old,
        "the page inside the file works"
    );
    assert_eq!(faults.lock().unwrap().len(), 2);
    assert_untouched(&decoy);
    drop(c);

    let next = connect(&s);
    let memory = DmaBuffer::new(2 * PAGE as usize).unwrap();
    let data = pattern(64, 0x3c);
    memory.write(0, &data).unwrap();
    // SAFETY: `memory` outlives the client.
    unsafe { next.dma_map(&memory.dma_map(SEALED_IOVA)).unwrap() };
    edu_round_trip(&next, SEALED_IOVA, SEALED_IOVA + PAGE, data.len() as u64);
    let mut back = vec![0u8; data.len()];
    memory.read(PAGE as usize, &mut back).unwrap();
    assert_eq!(back, data, "the next client's DMA works");
}

#[test]
fn truncated_tmpfs_file_fails_the_dma_and_the_server_survives() {
    if let Some(f) = shm_file(2 * PAGE) {
        truncation_is_survived(f);
    }
}

#[test]
fn truncated_memfd_fails_the_dma_and_the_server_survives() {
    truncation_is_survived(unsealed_memfd(2 * PAGE));
}

/// Most DMAs run against a file a thread keeps shrinking and growing.
const RACING_DMAS: usize = 2000;
/// DMAs after which the race may stop once both outcomes were seen.
const ENOUGH_DMAS: usize = 200;

/// A thread truncates the file's second page away and grows it back in a
/// loop while edu's DMAs straddle both pages: each DMA either completes or
/// fails with EFAULT, and the server survives every one.
fn racing_truncation_is_survived(file: File) {
    let (_s, faults, c) = serve();
    let decoy = DmaBuffer::new(2 * PAGE as usize).unwrap();
    map_with_decoy(&c, &file, &decoy);
    let stop = AtomicBool::new(false);
    let straddling = FILE_IOVA + PAGE / 2;
    let (mut done, mut failed) = (0, 0);
    std::thread::scope(|sc| {
        let resizer = sc.spawn(|| {
            let mut cycles = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::unistd::ftruncate(file.as_fd(), PAGE as i64).unwrap();
                nix::unistd::ftruncate(file.as_fd(), 2 * PAGE as i64).unwrap();
                cycles += 1;
            }
            cycles
        });
        while done < RACING_DMAS && !(done >= ENOUGH_DMAS && failed > 0 && failed < done) {
            if done % 2 == 0 {
                edu_load(&c, straddling, PAGE);
            } else {
                edu_store(&c, straddling, PAGE);
            }
            done += 1;
            failed = faults.lock().unwrap().len();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(resizer.join().unwrap() > 0);
    });
    assert_serves(&c);
    let faults = faults.lock().unwrap();
    assert!(
        faults.iter().all(|&e| e == libc::EFAULT),
        "only EFAULT: {faults:?}"
    );
    assert!(
        !faults.is_empty() && faults.len() < done,
        "{} of {done} DMAs failed: the race should yield both outcomes",
        faults.len()
    );
}

#[test]
fn memfd_shrinking_during_dmas_never_kills_the_server() {
    racing_truncation_is_survived(unsealed_memfd(2 * PAGE));
}

#[test]
fn tmpfs_file_shrinking_during_dmas_never_kills_the_server() {
    if let Some(f) = shm_file(2 * PAGE) {
        racing_truncation_is_survived(f);
    }
}
