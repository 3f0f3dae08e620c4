//! A mock of the kernel's VFIO and iommufd ioctls, standing in for the kernel
//! only in unit tests: under `cfg(test)` every request of [`super::ioctl`]
//! comes here instead. It lets the backend's logic (argsz growth, capability
//! probing, request layouts, error mapping, the group registry) run on any
//! machine; the real kernel is exercised by tests/kernel_guest.rs in a guest.
//!
//! Each scripted object (device, group, container or iommufd) is reached
//! through a real fd that means nothing to the kernel: an unlinked temporary
//! file. The mock keys on the file's inode, so dups of the fd reach the same
//! script, and pread/pwrite at a region's offset reach the file's bytes. Every
//! request is recorded with its argument as sent; a scripted errno per request
//! number makes that request fail. An fd the mock does not know answers
//! ENOTTY, as a file that is no VFIO object would.

use std::any::Any;
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::ioctl::ioctl_num_type as Req;
use vfio_bindings::bindings::vfio as uapi;

use super::ioctl::{self as k, Answer, Kernel, SizedArg};
use crate::bytes::{put_u32, u32_at};
use crate::device::{IrqInfo, RegionInfo, VFIO_REGION_INFO_FLAG_CAPS};
use crate::migration::MigrationState;
use crate::region_info::{encode_region_info, REGION_INFO_SIZE};

/// How the mock answers GET_REGION_INFO for one region index.
#[derive(Debug, Clone)]
pub enum RegionAnswer {
    /// As the kernel does: the info with its chain if the buffer holds them,
    /// else the fixed part with argsz raised to the size the chain needs.
    Info(RegionInfo),
    /// A confused kernel that always asks for 8 bytes more than it was given.
    Grows,
    /// A confused kernel that asks for this many bytes.
    Needs(u32),
    /// The index is refused with this errno (as vfio-pci refuses absent BARs).
    Refused(Errno),
}

/// How the mock answers a DMA_BUF GET of a device that has the feature.
#[derive(Debug, Clone, Copy)]
pub enum DmaBufAnswer {
    /// A new fd, as the kernel does.
    Fd,
    /// 0 instead of an fd.
    NoFd,
    /// The request is refused with this errno (as the kernel refuses a range
    /// outside the region).
    Fails(Errno),
}

/// What a scripted object answers. One script serves every kind of object;
/// each request reads only the fields it concerns.
#[derive(Debug, Clone)]
pub struct Script {
    /// `vfio_device_info.flags`; num_regions and num_irqs are the lengths of
    /// `regions` and `irqs`.
    pub device_flags: u32,
    /// GET_REGION_INFO, by index.
    pub regions: Vec<RegionAnswer>,
    /// GET_IRQ_INFO, by index.
    pub irqs: Vec<IrqInfo>,
    /// The `VFIO_DEVICE_FEATURE_*` numbers the device has; others answer ENOTTY.
    pub features: Vec<u32>,
    /// What a GET of a feature other than DMA_BUF writes into its payload.
    pub feature_reply: Vec<u8>,
    /// What a DMA_BUF GET returns.
    pub dma_buf: DmaBufAnswer,
    /// The state stream the data fd of a SET into STOP_COPY yields (with
    /// MIG_DEVICE_STATE among `features`; the device starts RUNNING and
    /// takes direct arcs only, the library walking the others).
    pub mig_stream: Vec<u8>,
    /// VFIO_GET_API_VERSION of a container.
    pub api_version: i32,
    /// The IOMMU types VFIO_CHECK_EXTENSION of a container reports.
    pub extensions: Vec<u32>,
    /// VFIO_GROUP_GET_STATUS of a group.
    pub group_flags: u32,
    /// The devices of a group, by name, for GET_DEVICE_FD.
    pub devices: Vec<(String, Arc<OwnedFd>)>,
    /// The device id BIND_IOMMUFD reports.
    pub dev_id: u32,
    /// The IOAS id IOMMU_IOAS_ALLOC reports.
    pub ioas_id: u32,
    /// Requests that fail, and the errno each fails with.
    pub fail: Vec<(Req, Errno)>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            device_flags: uapi::VFIO_DEVICE_FLAGS_PCI | uapi::VFIO_DEVICE_FLAGS_RESET,
            regions: Vec::new(),
            irqs: Vec::new(),
            features: Vec::new(),
            feature_reply: Vec::new(),
            dma_buf: DmaBufAnswer::Fd,
            mig_stream: Vec::new(),
            api_version: uapi::VFIO_API_VERSION as i32,
            extensions: vec![uapi::VFIO_TYPE1v2_IOMMU],
            group_flags: uapi::VFIO_GROUP_FLAGS_VIABLE,
            devices: Vec::new(),
            dev_id: 3,
            ioas_id: 7,
            fail: Vec::new(),
        }
    }
}

/// One argument as it reached the mock.
#[derive(Debug)]
enum Arg {
    /// An integer passed by value (0 for requests without an argument).
    Val(u64),
    /// A byte buffer, or a device name with its NUL.
    Bytes(Vec<u8>),
    /// A copy of a fixed-size struct.
    Struct(Box<dyn Any + Send>),
}

#[derive(Debug)]
struct State {
    script: Script,
    calls: Vec<(Req, Arg)>,
    /// Live DMA mappings by IOVA (container or IOAS), with their sizes.
    dma: BTreeMap<u64, u64>,
    /// The migration state (`enum vfio_device_mig_state`).
    mig_state: u32,
    /// The read end behind the data fd of the last SET into RESUMING.
    resumed: Option<OwnedFd>,
}

type Key = (u64, u64);

static OBJECTS: Mutex<BTreeMap<Key, Arc<Mutex<State>>>> = Mutex::new(BTreeMap::new());

fn key_of(fd: BorrowedFd<'_>) -> Option<Key> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// A scripted object and the fd that stands for it.
#[derive(Debug)]
pub struct MockFd {
    file: File,
    key: Key,
    state: Arc<Mutex<State>>,
}

impl MockFd {
    /// A new object answering from `script`.
    pub fn new(script: Script) -> MockFd {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "vfio-io-mock-kernel-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("mock kernel: create its handle file");
        // Unlinked at once: the inode lives exactly as long as its fds.
        std::fs::remove_file(&path).expect("mock kernel: unlink its handle file");
        let key = key_of(file.as_fd()).expect("mock kernel: fstat its handle file");
        let state = Arc::new(Mutex::new(State {
            script,
            calls: Vec::new(),
            dma: BTreeMap::new(),
            mig_state: MigrationState::Running as u32,
            resumed: None,
        }));
        lock(&OBJECTS).insert(key, Arc::clone(&state));
        MockFd { file, key, state }
    }

    /// A new fd for the object, for the code under test to own.
    pub fn fd(&self) -> OwnedFd {
        self.file
            .as_fd()
            .try_clone_to_owned()
            .expect("mock kernel: dup")
    }

    /// The file behind the fd: what pread and pwrite of the object reach.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The inode that identifies the object.
    pub fn inode(&self) -> u64 {
        self.key.1
    }

    /// The request numbers received so far, in order.
    pub fn requests(&self) -> Vec<Req> {
        lock(&self.state).calls.iter().map(|(r, _)| *r).collect()
    }

    /// Forgets the requests received so far.
    pub fn forget_requests(&self) {
        lock(&self.state).calls.clear();
    }

    /// What was written into the data fd of the last SET into RESUMING, once
    /// the code under test closed it.
    pub fn resumed_stream(&self) -> Vec<u8> {
        let rx = lock(&self.state).resumed.take();
        let mut out = Vec::new();
        if let Some(rx) = rx {
            File::from(rx)
                .read_to_end(&mut out)
                .expect("mock kernel: read the resumed stream");
        }
        out
    }

    /// The byte buffers (or names) sent with `req`, as they arrived.
    pub fn bytes_sent(&self, req: Req) -> Vec<Vec<u8>> {
        self.sent(req, |a| match a {
            Arg::Bytes(b) => Some(b.clone()),
            _ => None,
        })
    }

    /// The integers sent with `req`.
    pub fn vals_sent(&self, req: Req) -> Vec<u64> {
        self.sent(req, |a| match a {
            Arg::Val(v) => Some(*v),
            _ => None,
        })
    }

    /// The structs of type `T` sent with `req`, as they arrived.
    pub fn structs_sent<T: SizedArg>(&self, req: Req) -> Vec<T> {
        self.sent(req, |a| match a {
            Arg::Struct(s) => s.downcast_ref::<T>().map(T::duplicate),
            _ => None,
        })
    }

    fn sent<T>(&self, req: Req, pick: impl Fn(&Arg) -> Option<T>) -> Vec<T> {
        lock(&self.state)
            .calls
            .iter()
            .filter(|(r, _)| *r == req)
            .filter_map(|(_, a)| pick(a))
            .collect()
    }
}

impl Drop for MockFd {
    fn drop(&mut self) {
        let mut objects = lock(&OBJECTS);
        // A later object may have taken the inode number over: leave it be.
        if objects
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.state))
        {
            objects.remove(&self.key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A test that panicked while holding the lock leaves consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records `req` on the object behind `fd`, fails it if the script says so,
/// else answers it with `answer`.
fn on<T>(
    fd: BorrowedFd<'_>,
    req: Req,
    arg: Arg,
    answer: impl FnOnce(&mut State) -> Answer<T>,
) -> Answer<T> {
    let state = key_of(fd)
        .and_then(|key| lock(&OBJECTS).get(&key).cloned())
        .ok_or(Errno::ENOTTY)?;
    let mut s = lock(&state);
    s.calls.push((req, arg));
    if let Some(&(_, errno)) = s.script.fail.iter().find(|(r, _)| *r == req) {
        return Err(errno);
    }
    answer(&mut s)
}

/// The struct a request carries, as the type its wrapper pairs with it.
fn arg_as<T: Any>(arg: &mut dyn Any) -> &mut T {
    arg.downcast_mut()
        .expect("mock kernel: a request came with another struct than its own")
}

impl State {
    /// Removes the mapping at exactly `iova` and `size`; returns the bytes
    /// unmapped (0 when there was none).
    fn unmap(&mut self, iova: u64, size: u64) -> u64 {
        match self.dma.get(&iova) {
            Some(&s) if s == size => {
                self.dma.remove(&iova);
                size
            }
            _ => 0,
        }
    }

    fn region_info(&self, buf: &mut [u8]) -> Answer<()> {
        let argsz = u32_at(buf, 0).unwrap_or(0) as usize;
        // vfio-pci refuses an argsz below the fixed part.
        if argsz < REGION_INFO_SIZE || argsz != buf.len() {
            return Err(Errno::EINVAL);
        }
        let index = u32_at(buf, 8).unwrap_or(0);
        let needs = |buf: &mut [u8], n: usize| {
            buf.fill(0);
            put_u32(buf, 0, n as u32);
            put_u32(buf, 4, VFIO_REGION_INFO_FLAG_CAPS);
            put_u32(buf, 8, index);
        };
        match self.script.regions.get(index as usize) {
            None => return Err(Errno::EINVAL),
            Some(RegionAnswer::Refused(e)) => return Err(*e),
            Some(RegionAnswer::Grows) => needs(buf, buf.len() + 8),
            Some(RegionAnswer::Needs(n)) => needs(buf, *n as usize),
            Some(RegionAnswer::Info(info)) => {
                let info = RegionInfo {
                    index,
                    ..info.clone()
                };
                let out = encode_region_info(&info, buf.len());
                buf[..out.len()].copy_from_slice(&out);
            }
        }
        Ok(())
    }

    /// MIG_DEVICE_STATE as the kernel answers it: GET reports the state,
    /// SET takes one direct arc and writes back the data fd of the arc
    /// (a pipe) or -1.
    fn mig_device_state(&mut self, buf: &mut [u8], get: bool) -> Answer<i32> {
        const HEADER: usize = std::mem::size_of::<uapi::vfio_device_feature>();
        if buf.len() < HEADER + 8 {
            return Err(Errno::EINVAL);
        }
        let mut data_fd = -1;
        if get {
            put_u32(buf, HEADER, self.mig_state);
        } else {
            let to = u32_at(buf, HEADER).and_then(MigrationState::from_u32);
            let from = MigrationState::from_u32(self.mig_state);
            let (Some(from), Some(to)) = (from, to) else {
                return Err(Errno::EINVAL);
            };
            if !from.is_direct_arc(to) {
                return Err(Errno::EINVAL);
            }
            self.mig_state = to as u32;
            let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
            data_fd = match to {
                MigrationState::StopCopy => {
                    let (rx, tx) = pipe()?;
                    File::from(tx)
                        .write_all(&self.script.mig_stream)
                        .map_err(|_| Errno::EIO)?;
                    rx.into_raw_fd()
                }
                MigrationState::Resuming => {
                    let (rx, tx) = pipe()?;
                    self.resumed = Some(rx);
                    tx.into_raw_fd()
                }
                _ => -1,
            };
        }
        buf[HEADER + 4..HEADER + 8].copy_from_slice(&data_fd.to_ne_bytes());
        Ok(0)
    }

    fn feature(&mut self, buf: &mut [u8]) -> Answer<i32> {
        if u32_at(buf, 0) != Some(buf.len() as u32) {
            return Err(Errno::EINVAL);
        }
        let flags = u32_at(buf, 4).unwrap_or(0);
        let feature = flags & uapi::VFIO_DEVICE_FEATURE_MASK;
        if !self.script.features.contains(&feature) {
            return Err(Errno::ENOTTY);
        }
        let get = flags & uapi::VFIO_DEVICE_FEATURE_GET != 0;
        let probe = flags & uapi::VFIO_DEVICE_FEATURE_PROBE != 0;
        if feature == uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && !probe {
            return self.mig_device_state(buf, get);
        }
        if flags & uapi::VFIO_DEVICE_FEATURE_PROBE == 0
            && get
            && feature != uapi::VFIO_DEVICE_FEATURE_DMA_BUF
        {
            let payload = &mut buf[std::mem::size_of::<uapi::vfio_device_feature>()..];
            let reply = &self.script.feature_reply;
            let n = payload.len().min(reply.len());
            payload[..n].copy_from_slice(&reply[..n]);
        }
        Ok(0)
    }
}

/// The mock's side of every request; see the module doc.
pub struct MockKernel;

impl Kernel for MockKernel {
    fn val(fd: BorrowedFd<'_>, req: Req, val: libc::c_ulong) -> Answer<i32> {
        // c_ulong is narrower than u64 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let sent = Arg::Val(val.into());
        on(fd, req, sent, |s| match req {
            k::VFIO_GET_API_VERSION => Ok(s.script.api_version),
            k::VFIO_CHECK_EXTENSION => Ok(i32::from(
                u32::try_from(val).is_ok_and(|e| s.script.extensions.contains(&e)),
            )),
            k::VFIO_SET_IOMMU | k::VFIO_DEVICE_RESET => Ok(0),
            _ => Err(Errno::ENOTTY),
        })
    }

    // Long by design: a table, one arm per struct request, that reads best whole.
    fn sized<T: SizedArg>(fd: BorrowedFd<'_>, req: Req, arg: &mut T) -> Answer<i32> {
        on(fd, req, Arg::Struct(Box::new(arg.duplicate())), |s| {
            // The kernel reads the struct at the size it knows; a smaller size
            // field is refused.
            if arg.size() as usize != std::mem::size_of::<T>() {
                return Err(Errno::EINVAL);
            }
            let arg: &mut dyn Any = arg;
            match req {
                k::VFIO_GROUP_GET_STATUS => {
                    arg_as::<uapi::vfio_group_status>(arg).flags = s.script.group_flags;
                }
                k::VFIO_DEVICE_GET_INFO => {
                    let info = arg_as::<uapi::vfio_device_info>(arg);
                    info.flags = s.script.device_flags;
                    info.num_regions = s.script.regions.len() as u32;
                    info.num_irqs = s.script.irqs.len() as u32;
                }
                k::VFIO_DEVICE_GET_IRQ_INFO => {
                    let info = arg_as::<uapi::vfio_irq_info>(arg);
                    let irq = s
                        .script
                        .irqs
                        .get(info.index as usize)
                        .ok_or(Errno::EINVAL)?;
                    info.flags = irq.flags;
                    info.count = irq.count;
                }
                k::VFIO_IOMMU_MAP_DMA => {
                    let m = arg_as::<uapi::vfio_iommu_type1_dma_map>(arg);
                    s.dma.insert(m.iova, m.size);
                }
                k::VFIO_IOMMU_UNMAP_DMA => {
                    let u = arg_as::<uapi::vfio_iommu_type1_dma_unmap>(arg);
                    // type1 reports an unmap of nothing as success of 0 bytes.
                    u.size = s.unmap(u.iova, u.size);
                }
                k::VFIO_DEVICE_BIND_IOMMUFD => {
                    arg_as::<uapi::vfio_device_bind_iommufd>(arg).out_devid = s.script.dev_id;
                }
                k::VFIO_DEVICE_ATTACH_IOMMUFD_PT => {
                    arg_as::<uapi::vfio_device_attach_iommufd_pt>(arg);
                }
                k::IOMMU_IOAS_ALLOC => {
                    arg_as::<k::IommuIoasAlloc>(arg).out_ioas_id = s.script.ioas_id;
                }
                k::IOMMU_IOAS_MAP => {
                    let m = arg_as::<k::IommuIoasMap>(arg);
                    s.dma.insert(m.iova, m.length);
                }
                k::IOMMU_IOAS_MAP_FILE => {
                    let m = arg_as::<k::IommuIoasMapFile>(arg);
                    s.dma.insert(m.iova, m.length);
                }
                k::IOMMU_IOAS_UNMAP => {
                    let u = arg_as::<k::IommuIoasUnmap>(arg);
                    // iommufd reports an unmap of nothing as ENOENT.
                    u.length = match s.unmap(u.iova, u.length) {
                        0 => return Err(Errno::ENOENT),
                        n => n,
                    };
                }
                k::IOMMU_DESTROY => {
                    arg_as::<k::IommuDestroy>(arg);
                }
                _ => return Err(Errno::ENOTTY),
            }
            Ok(0)
        })
    }

    fn bytes(fd: BorrowedFd<'_>, req: Req, buf: &mut [u8]) -> Answer<i32> {
        on(fd, req, Arg::Bytes(buf.to_vec()), |s| match req {
            k::VFIO_DEVICE_GET_REGION_INFO => s.region_info(buf).map(|()| 0),
            k::VFIO_DEVICE_SET_IRQS => Ok(0),
            k::VFIO_DEVICE_FEATURE => s.feature(buf),
            _ => Err(Errno::ENOTTY),
        })
    }

    fn bytes_new_fd(fd: BorrowedFd<'_>, req: Req, buf: &mut [u8]) -> Answer<Option<OwnedFd>> {
        on(fd, req, Arg::Bytes(buf.to_vec()), |s| {
            if req != k::VFIO_DEVICE_FEATURE {
                return Err(Errno::ENOTTY);
            }
            s.feature(buf)?;
            match s.script.dma_buf {
                DmaBufAnswer::Fd => {
                    let fd = File::open("/dev/null").map_err(|_| Errno::EMFILE)?;
                    Ok(Some(fd.into()))
                }
                DmaBufAnswer::NoFd => Ok(None),
                DmaBufAnswer::Fails(e) => Err(e),
            }
        })
    }

    fn set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> Answer<()> {
        // Recorded as the container's inode, which a test can tell apart.
        let inode = key_of(container).map_or(0, |k| k.1);
        on(group, k::VFIO_GROUP_SET_CONTAINER, Arg::Val(inode), |_| {
            Ok(())
        })
    }

    fn get_device_fd(group: BorrowedFd<'_>, name: &CStr) -> Answer<OwnedFd> {
        let sent = Arg::Bytes(name.to_bytes_with_nul().to_vec());
        on(group, k::VFIO_GROUP_GET_DEVICE_FD, sent, |s| {
            let (_, dev) = s
                .script
                .devices
                .iter()
                .find(|(n, _)| n.as_bytes() == name.to_bytes())
                .ok_or(Errno::ENODEV)?;
            dev.try_clone().map_err(|_| Errno::EMFILE)
        })
    }
}
