//! `vfio-io info TARGET`: what lspci -vv would want to show for a VFIO device.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use vfio_io::caps;
use vfio_io::device::{DeviceIo, RegionCap, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::Error;

const REGION_NAMES: [&str; 9] = [
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
];
const IRQ_NAMES: [&str; 5] = ["INTX", "MSI", "MSIX", "ERR", "REQ"];

fn open(target: &str) -> Result<Box<dyn DeviceIo>, String> {
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
        Error::Sys { errno, .. } if *errno == libc::ECONNREFUSED => format!(
            "{target}: connection refused: nothing listens on this socket (hint: the server has exited and left a stale socket file; restart it)"
        ),
        Error::Sys { errno, .. } if *errno == libc::EACCES || *errno == libc::EPERM => {
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
    let errno = e.errno();
    let denied = errno == libc::EACCES || errno == libc::EPERM;
    let Some(addr) = vfio_io::kernel::parse_pci_address(target) else {
        // The iommufd road: a device cdev and /dev/iommu.
        if denied {
            let iommu = sys.dev.join("iommu");
            let file = if accessible(Path::new(target)) && !accessible(&iommu) {
                iommu
            } else {
                PathBuf::from(target)
            };
            let f = file.display();
            return format!(
                "{target}: permission denied on {f} (hint: run as root, or `chown $USER {f}` with a udev rule to keep it)"
            );
        }
        if errno == libc::ENOENT {
            return format!("{target}: no such VFIO device (hint: `ls /dev/vfio/devices`; the kernel needs CONFIG_VFIO_DEVICE_CDEV)");
        }
        return format!("{target}: {e}");
    };
    let dir = sys.sysfs.join("bus/pci/devices").join(&addr);
    if !dir.exists() {
        return format!("{addr}: no PCI device at that address (hint: `lspci -D` lists them)");
    }
    // No group means no IOMMU: vfio-pci cannot take the device either, so
    // this comes before the driver.
    let group = std::fs::read_link(dir.join("iommu_group"))
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse::<u32>().ok());
    let Some(group) = group else {
        return format!(
            "{addr}: no IOMMU group: the IOMMU is off or absent (hint: boot with intel_iommu=on or amd_iommu=on, and check `dmesg | grep -i -e DMAR -e IOMMU`)"
        );
    };
    match Sys::driver(&dir) {
        Some(d) if d == "vfio-pci" => {}
        other => {
            let (bound, unbind) = match &other {
                Some(d) => (
                    format!("bound to {d}"),
                    format!("echo {addr} > /sys/bus/pci/drivers/{d}/unbind; "),
                ),
                None => ("not bound to any driver".to_string(), String::new()),
            };
            return format!(
                "{addr}: {bound}, not vfio-pci (hint: {unbind}echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; echo {addr} > /sys/bus/pci/drivers_probe)"
            );
        }
    }
    if errno == libc::EBUSY {
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
            .filter(|n| !n.starts_with(&addr))
            .collect();
        others.sort();
        let list = if others.is_empty() {
            "another device of the group is in use".to_string()
        } else {
            format!("{} bound to another driver", others.join(", "))
        };
        return format!(
            "{addr}: IOMMU group {group} is not viable: {list} (hint: bind every device in /sys/kernel/iommu_groups/{group}/devices to vfio-pci, or unbind it)"
        );
    }
    if denied {
        // Which of the two files the legacy road opens was refused.
        let container = sys.dev.join("vfio/vfio");
        let group_file = sys.dev.join(format!("vfio/{group}"));
        let file = if accessible(&group_file) && !accessible(&container) {
            container
        } else {
            group_file
        };
        let f = file.display();
        return format!(
            "{addr}: permission denied on {f} (hint: run as root, or `chown $USER {f}` with a udev rule to keep it)"
        );
    }
    format!("{addr}: {e}")
}

fn flag_names(flags: u32, names: &[(u32, &'static str)]) -> Vec<&'static str> {
    names
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

const REGION_FLAGS: [(u32, &str); 4] = [(1, "READ"), (2, "WRITE"), (4, "MMAP"), (8, "CAPS")];
const IRQ_FLAGS: [(u32, &str); 4] = [
    (1, "EVENTFD"),
    (2, "MASKABLE"),
    (4, "AUTOMASKED"),
    (8, "NORESIZE"),
];

fn describe(dev: &dyn DeviceIo) -> Result<Value, Error> {
    let info = dev.device_info()?;
    let mut regions = Vec::new();
    for i in 0..info.num_regions {
        let name = REGION_NAMES
            .get(i as usize)
            .copied()
            .unwrap_or("device-specific");
        // vfio-pci answers EINVAL for a fixed index the device lacks (VGA on
        // most devices): that region is absent, not an error of the device.
        let r = match dev.region_info(i) {
            Ok(r) => r,
            Err(e) if e.errno() == libc::EINVAL => {
                regions.push(json!({"index": i, "name": name, "absent": true}));
                continue;
            }
            Err(e) => return Err(e),
        };
        let caps: Vec<Value> = r
            .caps
            .iter()
            .map(|c| match c {
                RegionCap::SparseMmap(a) => {
                    json!({"sparse_mmap": a.iter().map(|a| json!({"offset": a.offset, "size": a.size})).collect::<Vec<_>>()})
                }
                RegionCap::Type { region_type, subtype } => json!({"type": region_type, "subtype": subtype}),
                RegionCap::MsixMappable => json!({"msix_mappable": true}),
                RegionCap::Other { id, version, .. } => json!({"id": id, "version": version}),
            })
            .collect();
        regions.push(json!({
            "index": i,
            "name": name,
            "size": r.size,
            "offset": r.offset,
            "flags": flag_names(r.flags, &REGION_FLAGS),
            "caps": caps,
        }));
    }
    let mut irqs = Vec::new();
    for i in 0..info.num_irqs {
        let q = match dev.irq_info(i) {
            Ok(q) => q,
            Err(e) if e.errno() == libc::EINVAL => {
                let name = IRQ_NAMES
                    .get(i as usize)
                    .copied()
                    .unwrap_or("device-specific");
                irqs.push(json!({"index": i, "name": name, "absent": true}));
                continue;
            }
            Err(e) => return Err(e),
        };
        irqs.push(json!({
            "index": i,
            "name": IRQ_NAMES.get(i as usize).copied().unwrap_or("device-specific"),
            "count": q.count,
            "flags": flag_names(q.flags, &IRQ_FLAGS),
        }));
    }
    let caps = dev.capabilities();
    let backend = dev.backend_name();
    let record = dev.capability_record();
    // Each bit with the finding that decided it while this device opened.
    let bits: Vec<Value> = caps::TABLE
        .iter()
        .map(|d| {
            let finding = record.deciding(d.bit);
            json!({
                "bit": d.bit.bits().trailing_zeros(),
                "name": d.name,
                "device": caps.contains(d.bit),
                "backend": dev.backend_capabilities().contains(d.bit),
                "source": finding.map(|e| e.source.to_string()),
                "detail": finding.map(|e| e.detail.clone()),
            })
        })
        .collect();
    Ok(json!({
        "schema": 2,
        "backend": backend,
        "device": {
            "flags": flag_names(info.flags, &[(VFIO_DEVICE_FLAGS_RESET, "RESET"), (VFIO_DEVICE_FLAGS_PCI, "PCI")]),
            "num_regions": info.num_regions,
            "num_irqs": info.num_irqs,
        },
        "capabilities": {"device": caps.bits(), "backend": dev.backend_capabilities().bits(), "bits": bits},
        "regions": regions,
        "irqs": irqs,
    }))
}

fn print_human(target: &str, v: &Value) {
    println!("{target}: backend {}", v["backend"].as_str().unwrap_or("?"));
    let d = &v["device"];
    println!(
        "  device flags: {}  regions: {}  IRQ indices: {}",
        d["flags"], d["num_regions"], d["num_irqs"]
    );
    println!("  regions:");
    for r in v["regions"].as_array().into_iter().flatten() {
        // Absent and empty regions say nothing a person needs.
        if r["absent"] == true || r["size"].as_u64() == Some(0) {
            continue;
        }
        println!(
            "    {:>2} {:<7} size {:#x} offset {:#x} flags {}{}",
            r["index"],
            r["name"].as_str().unwrap_or("?"),
            r["size"].as_u64().unwrap_or(0),
            r["offset"].as_u64().unwrap_or(0),
            r["flags"],
            if r["caps"].as_array().is_some_and(|c| !c.is_empty()) {
                format!(" caps {}", r["caps"])
            } else {
                String::new()
            }
        );
    }
    println!("  IRQs:");
    for q in v["irqs"].as_array().into_iter().flatten() {
        if q["absent"] == true {
            println!(
                "    {:>2} {:<5} absent",
                q["index"],
                q["name"].as_str().unwrap_or("?")
            );
            continue;
        }
        println!(
            "    {:>2} {:<5} count {} flags {}",
            q["index"],
            q["name"].as_str().unwrap_or("?"),
            q["count"],
            q["flags"]
        );
    }
    let c = &v["capabilities"];
    println!(
        "  capabilities: device {:#x}, backend {:#x}",
        c["device"].as_u64().unwrap_or(0),
        c["backend"].as_u64().unwrap_or(0)
    );
    for b in c["bits"].as_array().into_iter().flatten() {
        let why = |b: &Value| {
            let source = b["source"].as_str().unwrap_or("not recorded");
            match b["detail"].as_str() {
                Some(d) => format!("{source}: {d}"),
                None => source.to_string(),
            }
        };
        let state = match (b["device"].as_bool(), b["backend"].as_bool()) {
            (Some(true), _) => format!("yes ({})", why(b)),
            (_, Some(true)) => format!("no ({})", why(b)),
            _ => "no (never on this backend)".to_string(),
        };
        println!(
            "    bit {:>2} {:<15} {state}",
            b["bit"],
            b["name"].as_str().unwrap_or("?")
        );
    }
}

/// Runs `vfio-io info`.
pub fn run(target: &str, as_json: bool) -> Result<(), String> {
    let dev = open(target)?;
    let v = describe(dev.as_ref()).map_err(|e| format!("{target}: {e}"))?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        print_human(target, &v);
    }
    Ok(())
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
        Error::Sys { op, errno }
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
