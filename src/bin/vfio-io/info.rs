//! `vfio-io info TARGET`: what lspci -vv would want to show for a VFIO device,
//! as JSON or for a person to read.

use serde_json::{json, Value};
use vfio_io::caps;
use vfio_io::device::{
    DeviceIo, IrqInfo, RegionCap, RegionInfo, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET,
};
use vfio_io::Error;

use crate::target;

const REGION_NAMES: [&str; 9] = [
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
];
const IRQ_NAMES: [&str; 5] = ["INTX", "MSI", "MSIX", "ERR", "REQ"];

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

/// Describes `dev` as the JSON object `vfio-io info --json` prints.
fn describe(dev: &dyn DeviceIo) -> Result<Value, Error> {
    let info = dev.device_info()?;
    let regions = (0..info.num_regions)
        .map(|i| describe_index(&REGION_NAMES, i, dev.region_info(i), describe_region))
        .collect::<Result<Vec<_>, _>>()?;
    let irqs = (0..info.num_irqs)
        .map(|i| describe_index(&IRQ_NAMES, i, dev.irq_info(i), describe_irq))
        .collect::<Result<Vec<_>, _>>()?;
    let caps = dev.capabilities();
    let backend = dev.backend_name();
    let bits = describe_capability_bits(dev);
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

/// Region or IRQ index `i`, named from `names` ("device-specific" past their
/// end), described by `present` from the device's `answer`, or marked absent.
fn describe_index<T>(
    names: &[&'static str],
    i: u32,
    answer: Result<T, Error>,
    present: fn(u32, &str, T) -> Value,
) -> Result<Value, Error> {
    let name = names.get(i as usize).copied().unwrap_or("device-specific");
    // vfio-pci answers EINVAL for a fixed index the device lacks (VGA on
    // most devices): that index is absent, not an error of the device.
    match answer {
        Ok(a) => Ok(present(i, name, a)),
        Err(e) if e.errno() == libc::EINVAL => {
            Ok(json!({"index": i, "name": name, "absent": true}))
        }
        Err(e) => Err(e),
    }
}

/// Region `i`, named `name`, with its size, offset, flags and capabilities.
fn describe_region(i: u32, name: &str, r: RegionInfo) -> Value {
    let caps: Vec<Value> = r.caps.iter().map(describe_region_cap).collect();
    json!({
        "index": i,
        "name": name,
        "size": r.size,
        "offset": r.offset,
        "flags": flag_names(r.flags, &REGION_FLAGS),
        "caps": caps,
    })
}

/// One capability of a region.
fn describe_region_cap(c: &RegionCap) -> Value {
    match c {
        RegionCap::SparseMmap(a) => {
            json!({"sparse_mmap": a.iter().map(|a| json!({"offset": a.offset, "size": a.size})).collect::<Vec<_>>()})
        }
        RegionCap::Type {
            region_type,
            subtype,
        } => json!({"type": region_type, "subtype": subtype}),
        RegionCap::MsixMappable => json!({"msix_mappable": true}),
        RegionCap::Other { id, version, .. } => json!({"id": id, "version": version}),
    }
}

/// IRQ index `i`, named `name`, with its vector count and flags.
fn describe_irq(i: u32, name: &str, q: IrqInfo) -> Value {
    json!({
        "index": i,
        "name": name,
        "count": q.count,
        "flags": flag_names(q.flags, &IRQ_FLAGS),
    })
}

/// Each capability bit, on the device and on the backend, with the finding
/// that decided it while this device opened.
fn describe_capability_bits(dev: &dyn DeviceIo) -> Vec<Value> {
    let caps = dev.capabilities();
    let record = dev.capability_record();
    caps::TABLE
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
        .collect()
}

/// Prints what `describe` made of a device, for a person to read.
fn print_human(target: &str, v: &Value) {
    println!("{target}: backend {}", v["backend"].as_str().unwrap_or("?"));
    let d = &v["device"];
    println!(
        "  device flags: {}  regions: {}  IRQ indices: {}",
        d["flags"], d["num_regions"], d["num_irqs"]
    );
    print_regions(&v["regions"]);
    print_irqs(&v["irqs"]);
    print_capabilities(&v["capabilities"]);
}

/// Prints the regions, one a line.
fn print_regions(regions: &Value) {
    println!("  regions:");
    for r in regions.as_array().into_iter().flatten() {
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
}

/// Prints the IRQ indices, one a line.
fn print_irqs(irqs: &Value) {
    println!("  IRQs:");
    for q in irqs.as_array().into_iter().flatten() {
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
}

/// Prints the capability masks, then each bit, one a line.
fn print_capabilities(c: &Value) {
    println!(
        "  capabilities: device {:#x}, backend {:#x}",
        c["device"].as_u64().unwrap_or(0),
        c["backend"].as_u64().unwrap_or(0)
    );
    for b in c["bits"].as_array().into_iter().flatten() {
        let state = bit_state(b);
        println!(
            "    bit {:>2} {:<15} {state}",
            b["bit"],
            b["name"].as_str().unwrap_or("?")
        );
    }
}

/// Whether a device has capability bit `b`, and why.
fn bit_state(b: &Value) -> String {
    match (b["device"].as_bool(), b["backend"].as_bool()) {
        (Some(true), _) => format!("yes ({})", bit_finding(b)),
        (_, Some(true)) => format!("no ({})", bit_finding(b)),
        _ => "no (never on this backend)".to_string(),
    }
}

/// The finding that decided capability bit `b`: its source and detail.
fn bit_finding(b: &Value) -> String {
    let source = b["source"].as_str().unwrap_or("not recorded");
    match b["detail"].as_str() {
        Some(d) => format!("{source}: {d}"),
        None => source.to_string(),
    }
}

/// Runs `vfio-io info`.
pub fn run(target: &str, as_json: bool) -> Result<(), String> {
    let dev = target::open(target)?;
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
