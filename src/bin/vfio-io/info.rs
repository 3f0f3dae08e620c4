//! `vfio-io info TARGET`: what lspci -vv would want to show for a VFIO device.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use serde_json::{json, Value};
use vfio_io::caps::Capabilities;
use vfio_io::device::{DeviceIo, RegionCap, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::Error;

const REGION_NAMES: [&str; 9] = [
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
];
const IRQ_NAMES: [&str; 5] = ["INTX", "MSI", "MSIX", "ERR", "REQ"];

fn open(target: &str) -> Result<Box<dyn DeviceIo>, String> {
    let p = Path::new(target);
    if let Ok(m) = std::fs::metadata(p) {
        if m.file_type().is_socket() {
            return Client::connect(p, ClientConfig::default()).map(|c| Box::new(c) as Box<dyn DeviceIo>).map_err(|e| {
                match e {
                    Error::Protocol(_) | Error::Timeout => {
                        format!("{target}: {e} (is a vfio-user server listening there?)")
                    }
                    Error::Sys { errno, .. } if errno == libc::ECONNREFUSED => {
                        format!("{target}: connection refused (the server has exited; the socket file is stale)")
                    }
                    e => format!("{target}: {e}"),
                }
            });
        }
    }
    open_kernel(target)
}

fn open_kernel(target: &str) -> Result<Box<dyn DeviceIo>, String> {
    if !Path::new(target).exists() && !target.contains(':') {
        return Err(format!("{target}: no such socket or device (expected a vfio-user socket, a PCI address or /dev/vfio/devices/vfioN)"));
    }
    vfio_io::kernel::open(target)
        .map(|d| Box::new(d) as Box<dyn DeviceIo>)
        .map_err(|e| format!("{target}: {e}"))
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

/// Where a capability bit of this device was learned.
fn source(backend: &str, bit: Capabilities) -> &'static str {
    let kernel = backend.starts_with("kernel");
    match bit {
        b if b == Capabilities::RESET => "device info",
        b if b == Capabilities::REGION_MMAP || b == Capabilities::REGION_FDS => "region info",
        b if b == Capabilities::WRITE_MULTI => "negotiation",
        b if b == Capabilities::POSTED_WRITES
            || b == Capabilities::DMA_MESSAGES
            || b == Capabilities::IOMMU_DMA =>
        {
            "backend"
        }
        _ if kernel => "VFIO_DEVICE_FEATURE probe",
        _ => "DEVICE_FEATURE probe",
    }
}

fn describe(dev: &dyn DeviceIo) -> Result<Value, Error> {
    let info = dev.device_info()?;
    let mut regions = Vec::new();
    for i in 0..info.num_regions {
        let r = dev.region_info(i)?;
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
            "name": REGION_NAMES.get(i as usize).copied().unwrap_or("device-specific"),
            "size": r.size,
            "offset": r.offset,
            "flags": flag_names(r.flags, &REGION_FLAGS),
            "caps": caps,
        }));
    }
    let mut irqs = Vec::new();
    for i in 0..info.num_irqs {
        let q = dev.irq_info(i)?;
        irqs.push(json!({
            "index": i,
            "name": IRQ_NAMES.get(i as usize).copied().unwrap_or("device-specific"),
            "count": q.count,
            "flags": flag_names(q.flags, &IRQ_FLAGS),
        }));
    }
    let caps = dev.capabilities();
    let backend = dev.backend_name();
    let bits: Vec<Value> = Capabilities::named_bits()
        .map(|(name, bit)| {
            json!({
                "bit": bit.bits().trailing_zeros(),
                "name": name,
                "device": caps.contains(bit),
                "backend": dev.backend_capabilities().contains(bit),
                "source": if caps.contains(bit) { Value::from(source(backend, bit)) } else { Value::Null },
            })
        })
        .collect();
    Ok(json!({
        "schema": 1,
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
        if r["size"].as_u64() == Some(0) {
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
        let state = match (b["device"].as_bool(), b["backend"].as_bool()) {
            (Some(true), _) => format!("yes ({})", b["source"].as_str().unwrap_or("")),
            (_, Some(true)) => "no (this device lacks it)".to_string(),
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
