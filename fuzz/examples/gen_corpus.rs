//! Writes the seed corpora under fuzz/corpus/<target>/: a handful of valid
//! messages and scripts per target, so the fuzzers start past the framing
//! and the handshake instead of rediscovering them byte by byte.
//!
//! Run: cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus

use std::path::{Path, PathBuf};

use vfio_io::device::{pci_irq, pci_region, RegionCap, RegionInfo, SparseArea};
use vfio_io::edu;
use vfio_io::user::proto::{self, cmd, Header};
use vfio_io_fuzz::{client_version_payload, frame, server_msg, server_version_payload};

fn corpus_dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).expect("create corpus dir");
    d
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus_dir(target).join(name), bytes).expect("write seed");
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn region_access(region: u32, offset: u64, data: &[u8], count: u32) -> Vec<u8> {
    let mut p = proto::RegionAccess {
        offset,
        region,
        count,
    }
    .encode()
    .to_vec();
    p.extend_from_slice(data);
    p
}

fn decode_seeds() {
    // Prefix of the decode target: receiver limit 1 MiB, one write per 64
    // bytes, an fd on the first write.
    let with_prefix = |msg: &[u8]| {
        let mut v = vec![3u8, 64, 1];
        v.extend_from_slice(msg);
        v
    };
    let version = client_version_payload(true);
    let region = RegionInfo {
        index: 0,
        flags: 7,
        size: 1 << 20,
        offset: 0,
        caps: vec![
            RegionCap::SparseMmap(vec![SparseArea {
                offset: 0,
                size: 4096,
            }]),
            RegionCap::Type {
                region_type: 1,
                subtype: 2,
            },
            RegionCap::MsixMappable,
        ],
        fd: None,
    };
    let region = proto::encode_region_info(&region, 4096);
    let mut multi = Vec::new();
    proto::encode_write_multi(
        &[proto::MultiWrite {
            offset: 4,
            region: 0,
            count: 4,
            data: [1, 2, 3, 4, 0, 0, 0, 0],
        }],
        &mut multi,
    );
    let io_fds = proto::encode_io_fds(
        4096,
        0,
        &[proto::IoFdSubRegion {
            offset: 0,
            size: 4,
            fd_index: 0,
            kind: 0,
            flags: 0,
            data: 0,
        }],
    );
    let irq_set = proto::IrqSetMsg {
        argsz: 24,
        flags: 0x4 | 0x20,
        index: 1,
        start: 0,
        count: 1,
    }
    .encode();
    let msgs: [(&str, u16, &[u8]); 5] = [
        ("version", cmd::VERSION, &version),
        ("region_info", cmd::DEVICE_GET_REGION_INFO, &region),
        ("write_multi", cmd::REGION_WRITE_MULTI, &multi),
        ("io_fds", cmd::DEVICE_GET_REGION_IO_FDS, &io_fds),
        ("irq_set", cmd::DEVICE_SET_IRQS, &irq_set),
    ];
    let mut all = Vec::new();
    for (i, (name, c, p)) in msgs.iter().enumerate() {
        let m = frame(&Header::command(i as u16, *c, p.len()), p);
        write("decode", name, &with_prefix(&m));
        all.extend_from_slice(&m);
    }
    write("decode", "stream", &with_prefix(&all));
}

fn server_seeds() {
    let r = proto::encode_region_info_request(256, pci_region::BAR0);
    let cfg = proto::encode_region_info_request(256, pci_region::CONFIG);
    let map = proto::DmaMapMsg {
        argsz: proto::DmaMapMsg::SIZE as u32,
        flags: proto::DMA_MAP_READ | proto::DMA_MAP_WRITE,
        offset: 0,
        address: 0x10000,
        size: 0x10000,
    }
    .encode();
    let unmap = proto::DmaUnmapMsg {
        argsz: proto::DmaUnmapMsg::SIZE as u32,
        flags: 0,
        address: 0x10000,
        size: 0x10000,
    }
    .encode();
    let mut irq = proto::IrqSetMsg {
        argsz: (proto::IRQ_SET_SIZE + 4) as u32,
        // DATA_EVENTFD | ACTION_TRIGGER, with the fd attached.
        flags: 0x4 | 0x20,
        index: pci_irq::MSI,
        start: 0,
        count: 1,
    }
    .encode()
    .to_vec();
    irq.extend_from_slice(&0u32.to_ne_bytes());
    let mut multi = Vec::new();
    proto::encode_write_multi(
        &[proto::MultiWrite {
            offset: edu::regs::LIVENESS,
            region: pci_region::BAR0,
            count: 4,
            data: [0xff, 0, 0, 0, 0, 0, 0, 0],
        }],
        &mut multi,
    );
    // Mode byte: bit 0 a valid VERSION first, bit 2 twin socket offered, bit 3 write multi.
    let scripts: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "info",
            1,
            server_msg(cmd::DEVICE_GET_INFO, 0, &u32s(&[16, 0, 0, 0])),
        ),
        (
            "regions",
            1,
            [
                server_msg(cmd::DEVICE_GET_REGION_INFO, 0, &r),
                server_msg(cmd::DEVICE_GET_REGION_INFO, 0, &cfg),
            ]
            .concat(),
        ),
        (
            "bar0_rw",
            1,
            [
                server_msg(cmd::REGION_READ, 0, &region_access(0, 0, &[], 4)),
                server_msg(
                    cmd::REGION_WRITE,
                    0,
                    &region_access(0, edu::regs::FACTORIAL, &5u32.to_ne_bytes(), 4),
                ),
                server_msg(
                    cmd::REGION_READ,
                    0,
                    &region_access(0, edu::regs::FACTORIAL, &[], 4),
                ),
                server_msg(
                    cmd::REGION_READ,
                    0,
                    &region_access(pci_region::CONFIG, 0, &[], 64),
                ),
            ]
            .concat(),
        ),
        (
            "dma",
            1,
            [
                server_msg(cmd::DMA_MAP, 0x10, &map),
                server_msg(
                    cmd::REGION_WRITE,
                    0,
                    &region_access(0, edu::regs::DMA_SRC, &0x10000u64.to_ne_bytes(), 8),
                ),
                server_msg(
                    cmd::REGION_WRITE,
                    0,
                    &region_access(0, edu::regs::DMA_DST, &edu::DMA_BUF_ADDR.to_ne_bytes(), 8),
                ),
                server_msg(
                    cmd::REGION_WRITE,
                    0,
                    &region_access(0, edu::regs::DMA_COUNT, &64u64.to_ne_bytes(), 8),
                ),
                server_msg(
                    cmd::REGION_WRITE,
                    0,
                    &region_access(0, edu::regs::DMA_CMD, &1u64.to_ne_bytes(), 8),
                ),
                server_msg(cmd::DMA_UNMAP, 0, &unmap),
            ]
            .concat(),
        ),
        (
            "irqs",
            1,
            [
                server_msg(
                    cmd::DEVICE_GET_IRQ_INFO,
                    0,
                    &u32s(&[16, 0, pci_irq::MSI, 0]),
                ),
                server_msg(cmd::DEVICE_SET_IRQS, 0x10, &irq),
                server_msg(
                    cmd::REGION_WRITE,
                    0,
                    &region_access(0, edu::regs::IRQ_RAISE, &1u32.to_ne_bytes(), 4),
                ),
            ]
            .concat(),
        ),
        (
            "multi_reset",
            1 | 8,
            [
                server_msg(cmd::REGION_WRITE_MULTI, 0, &multi),
                server_msg(cmd::DEVICE_RESET, 0, &[]),
            ]
            .concat(),
        ),
        (
            "twin_version",
            1 | 2 | 4,
            server_msg(cmd::DEVICE_GET_INFO, 0, &u32s(&[16, 0, 0, 0])),
        ),
        (
            "no_version",
            0,
            server_msg(cmd::VERSION, 0, &client_version_payload(false)),
        ),
    ];
    for (name, mode, body) in scripts {
        let mut v = vec![mode];
        v.extend_from_slice(&body);
        write("server", name, &v);
    }
}

fn client_seeds() {
    // Mode 0: no twin socket, 1 MiB transfers. Steps: op 0 answers validly;
    // DEVICE_GET_INFO's valid answer reads flags, num_regions, num_irqs; a
    // region's reads caps kind, flags u32, size u32, offset u16.
    let region = |k: u8| {
        let mut v = vec![0u8, k];
        if k & 1 != 0 {
            v.extend_from_slice(&[1, 0, 0x10, 0]);
        }
        if k & 2 != 0 {
            v.extend_from_slice(&[0; 8]);
        }
        v.extend_from_slice(&7u32.to_le_bytes());
        v.extend_from_slice(&4096u32.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v
    };
    let info = |n: u8| vec![0u8, 1, n, 2];
    let err = vec![4u8, 95];
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("version_only", vec![0, 0]),
        (
            "no_regions",
            [vec![0, 0], info(0), err.clone(), err.clone()].concat(),
        ),
        (
            "one_region",
            [vec![0, 0], info(1), region(0), err.clone(), err.clone()].concat(),
        ),
        (
            "caps_region",
            [
                vec![0, 0],
                info(2),
                region(1),
                region(7),
                err.clone(),
                err.clone(),
            ]
            .concat(),
        ),
        (
            "dma_first",
            [
                vec![0, 6, 11, 0, 16],
                vec![0; 16],
                vec![0, 0],
                vec![0],
                info(0),
                err.clone(),
                err,
            ]
            .concat(),
        ),
        ("error_version", vec![0, 4, 22]),
    ];
    for (name, v) in seeds {
        write("client", name, &v);
    }
    // A valid VERSION reply frame to splice in as raw bytes (op 5).
    let p = server_version_payload();
    let f = frame(
        &Header::reply(&Header::command(0, cmd::VERSION, 0), p.len()),
        &p,
    );
    let mut raw = vec![0u8, 5];
    raw.extend_from_slice(&(f.len() as u16).to_le_bytes());
    raw.extend_from_slice(&f);
    write("client", "raw_version", &raw);
}

fn main() {
    decode_seeds();
    server_seeds();
    client_seeds();
}
