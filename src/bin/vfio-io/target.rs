//! A `vfio-io info` TARGET: opening it as a vfio-user socket or a kernel VFIO
//! device, and explaining in one line, with a hint, why it cannot be opened.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use vfio_io::device::DeviceIo;
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::Error;

/// Opens TARGET through the backend its kind calls for; the error is one line.
pub fn open(target: &str) -> Result<Box<dyn DeviceIo>, String> {
    let p = Path::new(target);
    let is_pci = vfio_io::kernel::parse_pci_address(target).is_some();
    match std::fs::metadata(p) {
        Ok(m) if m.file_type().is_socket() => Client::connect(p, ClientConfig::default())
            .map(|c| Box::new(c) as Box<dyn DeviceIo>)
            .map_err(|e| user_error(target, &e)),
        Ok(m) if m.file_type().is_char_device() || is_pci => open_kernel(target),
        Ok(_) => Err(format!(
            "{target}: neither a vfio-user socket nor a VFIO device (hint: {EXPECTED})"
        )),
        Err(_) if is_pci || target.starts_with("/dev/") => open_kernel(target),
        Err(_) => Err(format!(
            "{target}: no such socket (hint: start a server with `vfio-io serve edu {target}`; {EXPECTED})"
        )),
    }
}

const EXPECTED: &str =
    "TARGET is a vfio-user socket, a PCI address such as 0000:00:01.0, or /dev/vfio/devices/vfioN";

/// One line for a vfio-user connection that failed.
fn user_error(target: &str, e: &Error) -> String {
    match e {
        Error::Protocol(_) | Error::Timeout | Error::Disconnected => format!(
            "{target}: not a vfio-user server ({e}) (hint: is `vfio-io serve` or another vfio-user server listening there?)"
        ),
        e @ (Error::Errno { .. } | Error::Io { .. }) if e.errno() == libc::ECONNREFUSED => format!(
            "{target}: connection refused: nothing listens on this socket (hint: the server has exited and left a stale socket file; restart it)"
        ),
        e @ (Error::Errno { .. } | Error::Io { .. })
            if e.errno() == libc::EACCES || e.errno() == libc::EPERM =>
        {
            format!("{target}: permission denied (hint: the socket's owner or root can connect)")
        }
        e => format!("{target}: {e}"),
    }
}

fn open_kernel(target: &str) -> Result<Box<dyn DeviceIo>, String> {
    vfio_io::kernel::open(target)
        .map(|d| Box::new(d) as Box<dyn DeviceIo>)
        .map_err(|e| kernel_error(&Sys::host(), target, &e))
}

/// Where sysfs and /dev are: the host's, or a fake tree in tests.
struct Sys {
    sysfs: PathBuf,
    dev: PathBuf,
}

impl Sys {
    fn host() -> Sys {
        Sys {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }

    /// The name of the driver bound to the PCI device at `dir`, if any.
    fn driver(dir: &Path) -> Option<String> {
        let link = std::fs::read_link(dir.join("driver")).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    /// The IOMMU group of the PCI device at `dir`, if it is in one.
    fn iommu_group(dir: &Path) -> Option<u32> {
        std::fs::read_link(dir.join("iommu_group"))
            .ok()
            .and_then(|l| l.file_name()?.to_str()?.parse::<u32>().ok())
    }
}

/// Whether this process may open `path` for reading and writing.
fn accessible(path: &Path) -> bool {
    nix::unistd::access(
        path,
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .is_ok()
}

/// Explains a failed kernel open in one line with a hint. The library's
/// error says what failed; sysfs says why (which driver, which group, which
/// other devices), so the explanation is read from there after the fact.
fn kernel_error(sys: &Sys, target: &str, e: &Error) -> String {
    match vfio_io::kernel::parse_pci_address(target) {
        Some(addr) => pci_error(sys, &addr, e),
        None => cdev_error(sys, target, e),
    }
}

/// Whether `errno` refuses this process access to a file.
fn is_denied(errno: i32) -> bool {
    errno == libc::EACCES || errno == libc::EPERM
}

/// Explains a failed open on the iommufd road: a device cdev and /dev/iommu.
fn cdev_error(sys: &Sys, target: &str, e: &Error) -> String {
    let errno = e.errno();
    if is_denied(errno) {
        let file = refused(PathBuf::from(target), sys.dev.join("iommu"));
        return permission_denied(target, &file);
    }
    if errno == libc::ENOENT {
        return format!("{target}: no such VFIO device (hint: `ls /dev/vfio/devices`; the kernel needs CONFIG_VFIO_DEVICE_CDEV)");
    }
    format!("{target}: {e}")
}

/// Explains a failed open of the PCI device at `addr` on the legacy road,
/// checking what sysfs says in the order the causes depend on each other.
fn pci_error(sys: &Sys, addr: &str, e: &Error) -> String {
    let dir = sys.sysfs.join("bus/pci/devices").join(addr);
    if !dir.exists() {
        return format!("{addr}: no PCI device at that address (hint: `lspci -D` lists them)");
    }
    // No group means no IOMMU: vfio-pci cannot take the device either, so
    // this comes before the driver.
    let Some(group) = Sys::iommu_group(&dir) else {
        return format!(
            "{addr}: no IOMMU group: the IOMMU is off or absent (hint: boot with intel_iommu=on or amd_iommu=on, and check `dmesg | grep -i -e DMAR -e IOMMU`)"
        );
    };
    match Sys::driver(&dir) {
        Some(d) if d == "vfio-pci" => {}
        other => return not_vfio_pci(addr, other.as_deref()),
    }
    let errno = e.errno();
    if errno == libc::EBUSY {
        return group_not_viable(sys, addr, group);
    }
    if is_denied(errno) {
        // Which of the two files the legacy road opens was refused.
        let group_file = sys.dev.join(format!("vfio/{group}"));
        let file = refused(group_file, sys.dev.join("vfio/vfio"));
        return permission_denied(addr, &file);
    }
    format!("{addr}: {e}")
}

/// The device at `addr` is bound to `driver` (or to none) instead of
/// vfio-pci: says so, with the commands that rebind it.
fn not_vfio_pci(addr: &str, driver: Option<&str>) -> String {
    let (bound, unbind) = match driver {
        Some(d) => (
            format!("bound to {d}"),
            format!("echo {addr} > /sys/bus/pci/drivers/{d}/unbind; "),
        ),
        None => ("not bound to any driver".to_string(), String::new()),
    };
    format!(
        "{addr}: {bound}, not vfio-pci (hint: {unbind}echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; echo {addr} > /sys/bus/pci/drivers_probe)"
    )
}

/// IOMMU group `group` of `addr` is not viable: says which other devices of
/// it are to blame.
fn group_not_viable(sys: &Sys, addr: &str, group: u32) -> String {
    let others = group_blockers(sys, addr, group);
    let list = if others.is_empty() {
        "another device of the group is in use".to_string()
    } else {
        format!("{} bound to another driver", others.join(", "))
    };
    format!(
        "{addr}: IOMMU group {group} is not viable: {list} (hint: bind every device in /sys/kernel/iommu_groups/{group}/devices to vfio-pci, or unbind it)"
    )
}

/// The devices of `group` other than `addr` whose drivers keep the group from
/// being viable, as "ADDRESS (driver)", sorted.
fn group_blockers(sys: &Sys, addr: &str, group: u32) -> Vec<String> {
    let devices = sys
        .sysfs
        .join(format!("kernel/iommu_groups/{group}/devices"));
    let mut others: Vec<String> = std::fs::read_dir(&devices)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|ent| {
            let name = ent.file_name().to_string_lossy().into_owned();
            // Drivers that leave DMA to vfio keep the group viable.
            match Sys::driver(&ent.path()) {
                Some(d) if !matches!(d.as_str(), "vfio-pci" | "pci-stub" | "pcieport") => {
                    Some(format!("{name} ({d})"))
                }
                _ => None,
            }
        })
        .filter(|n| !n.starts_with(addr))
        .collect();
    others.sort();
    others
}

/// Of two files an open needs, the one refused: `second` when only `first`
/// is accessible, else `first`.
fn refused(first: PathBuf, second: PathBuf) -> PathBuf {
    if accessible(&first) && !accessible(&second) {
        second
    } else {
        first
    }
}

/// The line for `who` when opening `file` was refused.
fn permission_denied(who: &str, file: &Path) -> String {
    let f = file.display();
    format!("{who}: permission denied on {f} (hint: run as root, or `chown $USER {f}` with a udev rule to keep it)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys and /dev under a temporary directory.
    struct Fake {
        root: PathBuf,
        sys: Sys,
    }

    impl Fake {
        fn new(name: &str) -> Fake {
            let root =
                std::env::temp_dir().join(format!("vfio-io-cli-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("sys/bus/pci/drivers")).unwrap();
            std::fs::create_dir_all(root.join("dev/vfio")).unwrap();
            let sys = Sys {
                sysfs: root.join("sys"),
                dev: root.join("dev"),
            };
            Fake { root, sys }
        }

        /// A PCI device, optionally in an IOMMU group and bound to a driver.
        fn device(&self, addr: &str, group: Option<u32>, driver: Option<&str>) {
            let dev = self.sys.sysfs.join("bus/pci/devices").join(addr);
            std::fs::create_dir_all(&dev).unwrap();
            if let Some(g) = group {
                let gdir = self
                    .sys
                    .sysfs
                    .join(format!("kernel/iommu_groups/{g}/devices"));
                std::fs::create_dir_all(&gdir).unwrap();
                std::os::unix::fs::symlink(&dev, gdir.join(addr)).unwrap();
                std::os::unix::fs::symlink(gdir.parent().unwrap(), dev.join("iommu_group"))
                    .unwrap();
            }
            if let Some(d) = driver {
                let ddir = self.sys.sysfs.join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&ddir).unwrap();
                std::os::unix::fs::symlink(&ddir, dev.join("driver")).unwrap();
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn sys_err(op: &'static str, errno: i32) -> Error {
        Error::Errno { op, errno }
    }

    #[test]
    fn unbound_device_gets_the_driver_override_hint() {
        let f = Fake::new("unbound");
        f.device("0000:00:03.0", Some(4), Some("e1000e"));
        f.device("0000:00:04.0", Some(5), None);
        let m = kernel_error(&f.sys, "0000:00:03.0", &sys_err("open", libc::ENODEV));
        assert!(m.contains("bound to e1000e, not vfio-pci"), "{m}");
        assert!(
            m.contains("echo 0000:00:03.0 > /sys/bus/pci/drivers/e1000e/unbind"),
            "{m}"
        );
        assert!(m.contains("echo vfio-pci > /sys/bus/pci/devices/0000:00:03.0/driver_override; echo 0000:00:03.0 > /sys/bus/pci/drivers_probe"), "{m}");
        let m = kernel_error(&f.sys, "00:04.0", &sys_err("open", libc::ENODEV));
        assert!(
            m.starts_with("0000:00:04.0: not bound to any driver"),
            "{m}"
        );
        assert!(!m.contains('\n'));
    }

    #[test]
    fn missing_group_is_no_iommu() {
        let f = Fake::new("noiommu");
        f.device("0000:00:03.0", None, Some("vfio-pci"));
        let m = kernel_error(&f.sys, "0000:00:03.0", &sys_err("open", libc::ENODEV));
        assert!(
            m.contains("no IOMMU group") && m.contains("intel_iommu=on"),
            "{m}"
        );
        let m = kernel_error(&f.sys, "0000:00:09.0", &sys_err("open", libc::ENODEV));
        assert!(m.contains("no PCI device at that address"), "{m}");
    }

    #[test]
    fn group_not_viable_names_the_other_devices() {
        let f = Fake::new("viable");
        f.device("0000:00:03.0", Some(7), Some("vfio-pci"));
        f.device("0000:00:03.1", Some(7), Some("snd_hda_intel"));
        f.device("0000:00:03.2", Some(7), Some("pcieport"));
        f.device("0000:00:03.3", Some(7), None);
        let m = kernel_error(
            &f.sys,
            "0000:00:03.0",
            &sys_err("VFIO group is not viable", libc::EBUSY),
        );
        assert!(
            m.contains(
                "IOMMU group 7 is not viable: 0000:00:03.1 (snd_hda_intel) bound to another driver"
            ),
            "{m}"
        );
        assert!(m.contains("/sys/kernel/iommu_groups/7/devices"), "{m}");
        assert!(!m.contains("03.2") && !m.contains("03.3"), "{m}");
    }

    #[test]
    fn permission_denied_names_the_file() {
        let f = Fake::new("perm");
        f.device("0000:00:03.0", Some(2), Some("vfio-pci"));
        let m = kernel_error(
            &f.sys,
            "0000:00:03.0",
            &sys_err("open /dev/vfio/<group>", libc::EACCES),
        );
        let group = f.sys.dev.join("vfio/2");
        assert!(
            m.contains(&format!("permission denied on {}", group.display())),
            "{m}"
        );
        assert!(m.contains("run as root"), "{m}");
        let m = kernel_error(
            &f.sys,
            "/dev/vfio/devices/vfio0",
            &sys_err("open", libc::EACCES),
        );
        assert!(
            m.contains("permission denied on /dev/vfio/devices/vfio0"),
            "{m}"
        );
    }

    #[test]
    fn user_errors_say_what_to_do() {
        let m = user_error("/s", &Error::Protocol("bad header".into()));
        assert!(m.contains("not a vfio-user server"), "{m}");
        let m = user_error("/s", &sys_err("connect", libc::ECONNREFUSED));
        assert!(m.contains("stale socket"), "{m}");
    }
}
