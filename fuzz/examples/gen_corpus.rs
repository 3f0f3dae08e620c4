//! Writes the seed corpora under fuzz/corpus/<target>/: a handful of valid
//! messages and scripts per target, so the fuzzers start past the framing
//! and the handshake instead of rediscovering them byte by byte.
//!
//! Run: cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus

use std::path::{Path, PathBuf};

use vfio_io::device::{pci_irq, pci_region, RegionCap, RegionInfo, SparseArea};
use vfio_io::models::edu;
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
    let version = client_version_payload(true, None);
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

/// A BAR0 register write of the server target (8 bytes at the DMA
/// registers, 4 elsewhere, as edu wants).
fn bar0_write(reg: u64, val: u64, fds: u8) -> Vec<u8> {
    let data = if reg >= edu::regs::DMA_SRC {
        val.to_ne_bytes().to_vec()
    } else {
        (val as u32).to_ne_bytes().to_vec()
    };
    let p = region_access(pci_region::BAR0, reg, &data, data.len() as u32);
    server_msg(cmd::REGION_WRITE, 0, fds, &p)
}

/// An edu DMA of `count` bytes between RAM at `iova` and the device buffer.
fn edu_dma(iova: u64, count: u64, to_ram: bool, irq: bool) -> Vec<u8> {
    let (src, dst) = if to_ram {
        (edu::DMA_BUF_ADDR, iova)
    } else {
        (iova, edu::DMA_BUF_ADDR)
    };
    let mut command = edu::DMA_CMD_START;
    if to_ram {
        command |= edu::DMA_CMD_TO_RAM;
    }
    if irq {
        command |= edu::DMA_CMD_IRQ;
    }
    [
        bar0_write(edu::regs::DMA_SRC, src, 0),
        bar0_write(edu::regs::DMA_DST, dst, 0),
        bar0_write(edu::regs::DMA_COUNT, count, 0),
        bar0_write(edu::regs::DMA_CMD, command, 0),
    ]
    .concat()
}

fn set_irqs(index: u32, flags: u32, count: u32) -> Vec<u8> {
    proto::IrqSetMsg {
        argsz: proto::IRQ_SET_SIZE as u32,
        flags,
        index,
        start: 0,
        count,
    }
    .encode()
    .to_vec()
}

fn server_seeds() {
    // vfio_irq_set flags.
    const DATA_EVENTFD: u32 = 0x4;
    const ACTION_UNMASK: u32 = 0x10;
    const ACTION_TRIGGER: u32 = 0x20;
    // Flags byte: 0x10 attach fds. Fds byte: bits 0-1 kind (0 eventfds,
    // 1 sealed memfd, 2 regular file, 3 unsealed memfd), 0x10 wait for the
    // reply, 0x20 then signal the eventfds, bits 6-7 first eventfd or truncate.
    const WITH_FDS: u8 = 0x10;
    const SEALED: u8 = 1;
    const FILE: u8 = 2;
    const UNSEALED: u8 = 3;
    const SYNC: u8 = 0x10;
    const SIGNAL: u8 = 0x20;
    const TRUNCATE_TO_0: u8 = 0x40;
    let r = proto::encode_region_info_request(256, pci_region::BAR0);
    let cfg = proto::encode_region_info_request(256, pci_region::CONFIG);
    let map_at = |offset: u64, size: u64| {
        proto::DmaMapMsg {
            argsz: proto::DmaMapMsg::SIZE as u32,
            flags: proto::DMA_MAP_READ | proto::DMA_MAP_WRITE,
            offset,
            address: 0x10000,
            size,
        }
        .encode()
    };
    let map = map_at(0, 0x10000);
    let unmap = proto::DmaUnmapMsg {
        argsz: proto::DmaUnmapMsg::SIZE as u32,
        flags: 0,
        address: 0x10000,
        size: 0x10000,
    }
    .encode();
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
    let read_status = server_msg(
        cmd::REGION_READ,
        0,
        SYNC,
        &region_access(pci_region::BAR0, edu::regs::IRQ_STATUS, &[], 4),
    );
    // Both directions of an edu DMA, the second raising the DMA interrupt.
    let dma_both = [
        edu_dma(0x10000, 64, false, false),
        edu_dma(0x10800, 4096, true, true),
    ]
    .concat();
    // (name, mode, DMA answer script, steps). Mode: bit 0 a valid VERSION
    // first, bit 1 the client proposes twin sockets, bit 2 the server offers
    // them, bit 3 write multi, bit 4 a 256-byte max_data_xfer_size.
    let scripts: Vec<(&str, u8, Vec<u8>, Vec<u8>)> = vec![
        (
            "info",
            1,
            vec![],
            server_msg(cmd::DEVICE_GET_INFO, 0, 0, &u32s(&[16, 0, 0, 0])),
        ),
        (
            "regions",
            1,
            vec![],
            [
                server_msg(cmd::DEVICE_GET_REGION_INFO, 0, 0, &r),
                server_msg(cmd::DEVICE_GET_REGION_INFO, 0, 0, &cfg),
            ]
            .concat(),
        ),
        (
            "bar0_rw",
            1,
            vec![],
            [
                server_msg(cmd::REGION_READ, 0, 0, &region_access(0, 0, &[], 4)),
                bar0_write(edu::regs::FACTORIAL, 5, 0),
                server_msg(
                    cmd::REGION_READ,
                    0,
                    0,
                    &region_access(0, edu::regs::FACTORIAL, &[], 4),
                ),
                server_msg(
                    cmd::REGION_READ,
                    0,
                    0,
                    &region_access(pci_region::CONFIG, 0, &[], 64),
                ),
            ]
            .concat(),
        ),
        // DMA through a sealed memfd the server maps.
        (
            "dma_sealed_memfd",
            1,
            vec![],
            [
                server_msg(cmd::DMA_MAP, WITH_FDS, SEALED | SYNC, &map),
                dma_both.clone(),
                server_msg(cmd::DMA_UNMAP, 0, 0, &unmap),
            ]
            .concat(),
        ),
        // A regular file, truncated to nothing once mapped, then DMA into it.
        (
            "dma_file_truncated",
            1,
            vec![],
            [
                server_msg(cmd::DMA_MAP, WITH_FDS, FILE | SYNC | TRUNCATE_TO_0, &map),
                dma_both.clone(),
            ]
            .concat(),
        ),
        // No fd: the server's DMA goes by DMA_READ/DMA_WRITE, answered right.
        (
            "dma_messages",
            1,
            vec![],
            [server_msg(cmd::DMA_MAP, 0, 0, &map), dma_both.clone()].concat(),
        ),
        // The same, cut into 256-byte messages on the twin socket.
        (
            "dma_messages_twin_small",
            1 | 2 | 4 | 0x10,
            vec![],
            [server_msg(cmd::DMA_MAP, 0, 0, &map), dma_both.clone()].concat(),
        ),
        // Answered wrongly: a stale id then the right one, an error, nothing,
        // the other command's reply (both time out), and a short write echo
        // (a short read would end the session before the rest).
        (
            "dma_messages_wrong_answers",
            1,
            vec![3 | 8, 4 | (14 << 3), 6, 7, 5],
            [
                server_msg(cmd::DMA_MAP, 0, 0, &map),
                dma_both.clone(),
                edu_dma(0x10000, 64, false, false),
                edu_dma(0x10000, 64, false, false),
                edu_dma(0x10000, 64, true, false),
            ]
            .concat(),
        ),
        // MSI with a real eventfd: raising the interrupt signals it.
        (
            "irqs_msi_eventfd",
            1,
            vec![],
            [
                server_msg(
                    cmd::DEVICE_GET_IRQ_INFO,
                    0,
                    0,
                    &u32s(&[16, 0, pci_irq::MSI, 0]),
                ),
                server_msg(
                    cmd::DEVICE_SET_IRQS,
                    WITH_FDS,
                    SYNC,
                    &set_irqs(pci_irq::MSI, DATA_EVENTFD | ACTION_TRIGGER, 1),
                ),
                bar0_write(edu::regs::IRQ_RAISE, 1, 0),
                edu_dma(0x40000, 8, false, true),
            ]
            .concat(),
        ),
        // INTx (automasked) with trigger and unmask eventfds: the raised line
        // masks itself, the harness signals the unmask eventfd, the server
        // unmasks and the still asserted line fires again.
        (
            "irqs_intx_unmask_eventfd",
            1,
            vec![],
            [
                server_msg(
                    cmd::DEVICE_SET_IRQS,
                    WITH_FDS,
                    SYNC,
                    &set_irqs(pci_irq::INTX, DATA_EVENTFD | ACTION_TRIGGER, 1),
                ),
                server_msg(
                    cmd::DEVICE_SET_IRQS,
                    WITH_FDS,
                    SYNC | 0x40,
                    &set_irqs(pci_irq::INTX, DATA_EVENTFD | ACTION_UNMASK, 1),
                ),
                bar0_write(edu::regs::IRQ_RAISE, 1, SYNC | SIGNAL),
                read_status.clone(),
                bar0_write(edu::regs::IRQ_ACK, 1, SYNC),
            ]
            .concat(),
        ),
        (
            "multi_reset",
            1 | 8,
            vec![],
            [
                server_msg(cmd::REGION_WRITE_MULTI, 0, 0, &multi),
                server_msg(cmd::DEVICE_RESET, 0, 0, &[]),
            ]
            .concat(),
        ),
        (
            "twin_version",
            1 | 2 | 4,
            vec![],
            server_msg(cmd::DEVICE_GET_INFO, 0, 0, &u32s(&[16, 0, 0, 0])),
        ),
        (
            "no_version",
            0,
            vec![],
            server_msg(cmd::VERSION, 0, 0, &client_version_payload(false, None)),
        ),
        // Regressions: a DMA_MAP range past the end of the fd's file, and an
        // unmask "eventfd" that is a memfd (always readable).
        (
            "dma_map_past_file_end",
            1,
            vec![],
            [
                server_msg(cmd::DMA_MAP, WITH_FDS, SEALED, &map_at(0x8000, 0x10000)),
                server_msg(cmd::DMA_MAP, WITH_FDS, UNSEALED, &map_at(0x10000, 0x1000)),
                edu_dma(0x10000, 64, false, false),
            ]
            .concat(),
        ),
        (
            "unmask_fd_not_an_eventfd",
            1,
            vec![],
            [
                server_msg(
                    cmd::DEVICE_SET_IRQS,
                    WITH_FDS,
                    UNSEALED,
                    &set_irqs(pci_irq::INTX, DATA_EVENTFD | ACTION_UNMASK, 1),
                ),
                read_status,
            ]
            .concat(),
        ),
    ];
    for (name, mode, answers, body) in scripts {
        let mut v = vec![mode, answers.len() as u8];
        v.extend_from_slice(&answers);
        v.extend_from_slice(&body);
        write("server", name, &v);
    }
}

/// A client-target input: mode, the driver script (length first), then the
/// fake server's script.
fn client_seed(mode: u8, driver: &[u8], server: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(&(driver.len() as u16).to_le_bytes());
    v.extend_from_slice(driver);
    for step in server {
        v.extend_from_slice(step);
    }
    v
}

fn client_seeds() {
    // Fake server steps. Op 0 answers validly: DEVICE_GET_INFO's answer reads
    // flags, num_regions, num_irqs; a region's reads a caps byte (bit 0
    // sparse areas, bit 1 type, bit 3 attach the region fd), flags u32, size
    // u32, offset u16; REGION_READ's reads the data. Op 4 is an error reply,
    // op 7 a DMA command before the next step.
    let region = |k: u8, flags: u32, size: u32| {
        let mut v = vec![0u8, k];
        if k & 1 != 0 {
            v.extend_from_slice(&[1, 0, 0x10, 0]);
        }
        if k & 2 != 0 {
            v.extend_from_slice(&[0; 8]);
        }
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v
    };
    let info = |regions: u8, irqs: u8| vec![0u8, 1, regions, irqs];
    let err = vec![4u8, 95];
    let ok = vec![0u8];
    // op 7, a DMA command: kind byte (bit 0 write, bit 1 into a mapping the
    // fake server saw, bit 2 a data length of its own), then the mapping's
    // index and offset or an address and shift, count u16, data, id u16.
    let dma_into_map = |write: bool, offset: u16, count: u16, id: u16| {
        let mut v = vec![7u8, 2 | u8::from(write), 0];
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&count.to_le_bytes());
        if write {
            v.extend((0..count).map(|i| i as u8));
        }
        v.extend_from_slice(&id.to_le_bytes());
        v
    };
    let mut dma_unmapped = vec![7u8, 0];
    dma_unmapped.extend_from_slice(&0x0099_0000u32.to_le_bytes());
    dma_unmapped.extend_from_slice(&[0, 16, 0, 9, 0]);

    // Driver ops: 0 read (region u8, offset u16, len u16), 1 write and
    // 2 posted write (the same, then the data), 3 SET_IRQS with eventfds
    // (index, start, kind byte), 4 SET_IRQS without (index, start, count,
    // kind byte, bools), 5 dma_map (kind byte, IOVA page), 6 dma_unmap (IOVA
    // page, pages), 7 irq_info (index), 8 reset.
    let rw = |op: u8, region: u8, offset: u16, len: u16| {
        let mut v = vec![op, region];
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        if op != 0 {
            v.extend((0..len).map(|i| i as u8 ^ 0x5a));
        }
        v
    };
    let handshake = |regions: &[Vec<u8>], irqs: u8| {
        let mut v = vec![ok.clone(), info(regions.len() as u8, irqs)];
        v.extend(regions.iter().cloned());
        v.push(err.clone());
        v.push(err.clone());
        v
    };
    let as_steps = |v: &[Vec<u8>]| v.concat();
    // dma_map (of the given kind) at IOVA 0x1000, DMA commands while its
    // DMA_MAP waits for the answer, then dma_unmap.
    let dma_map_serve = |mode: u8, kind: u8| {
        client_seed(
            mode,
            &[5, kind, 1, 6, 1, 1],
            &[
                &as_steps(&handshake(&[], 0)),
                &dma_into_map(true, 16, 64, 0x100),
                &dma_into_map(false, 0, 128, 0x101),
                &dma_unmapped,
                &ok,
                &ok,
            ],
        )
    };

    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("version_only", client_seed(0, &[], &[&[0]])),
        ("error_version", client_seed(0, &[], &[&[4, 22]])),
        (
            "handshake_regions",
            client_seed(
                0,
                &[],
                &[&as_steps(&handshake(
                    &[region(1, 7, 4096), region(7, 3, 4096)],
                    0,
                ))],
            ),
        ),
        // Region 0 mmapped (its accesses go to memory), region 1 by messages.
        (
            "region_rw",
            client_seed(
                0,
                &[
                    rw(0, 0, 0, 4),
                    rw(1, 0, 8, 4),
                    rw(0, 1, 16, 4),
                    rw(1, 1, 16, 8),
                    rw(2, 1, 32, 4),
                    rw(0, 1, 0, 4),
                ]
                .concat(),
                &[
                    &as_steps(&handshake(&[region(8, 7, 4096), region(0, 3, 0x10000)], 0)),
                    &[0, 1, 2, 3, 4],
                    &ok,
                    // Not posted after all: with an area mapped, the client
                    // waits for the write's reply to keep the order.
                    &ok,
                    &[0, 9, 9, 9, 9],
                ],
            ),
        ),
        // MSI eventfds attached (the fake server fires them), detached, and
        // SET_IRQS by bools; then irq_info and a reset.
        (
            "set_irqs_eventfds",
            client_seed(
                0,
                &[3, 1, 0, 0x00, 3, 1, 0, 0x10, 4, 1, 0, 1, 1, 1, 7, 1, 8],
                &[
                    &as_steps(&handshake(&[], 5)),
                    &ok,
                    &ok,
                    &ok,
                    &[0, 4, 1],
                    &ok,
                ],
            ),
        ),
        // A heap buffer with a sealed memfd mapped at IOVA 0x1000; while the
        // DMA_MAP is pending the fake server writes into it, reads it back,
        // and reads an unmapped address; then the buffer is unmapped.
        ("dma_map_serve", dma_map_serve(0, 0)),
        // The same over a twin socket, with a DmaBuffer.
        ("dma_map_serve_twin", dma_map_serve(1 | 4, 1)),
    ];
    for (name, v) in seeds {
        write("client", name, &v);
    }
    // A valid VERSION reply frame to splice in as raw bytes (op 5).
    let p = server_version_payload(None);
    let f = frame(
        &Header::reply(&Header::command(0, cmd::VERSION, 0), p.len()),
        &p,
    );
    let mut raw = vec![5u8];
    raw.extend_from_slice(&(f.len() as u16).to_le_bytes());
    raw.extend_from_slice(&f);
    write("client", "raw_version", &client_seed(0, &[], &[&raw]));
}

/// Seeds of the migration target: streams for edu's decoder (mode byte
/// even; bit 1 re-frames the body with a correct checksum), and command
/// scripts for the server (mode byte odd), one op byte and its arguments
/// per step as fuzz_targets/migration.rs reads them.
fn migration_seeds() {
    use vfio_io::user::server::Migratable;
    let stream = edu::Edu::new().save().expect("save a fresh edu");
    let with_mode = |mode: u8, body: &[u8]| [&[mode][..], body].concat();
    write("migration", "stream_valid", &with_mode(0, &stream));
    write(
        "migration",
        "stream_truncated",
        &with_mode(0, &stream[..100]),
    );
    write(
        "migration",
        "stream_reframed",
        &with_mode(2, &stream[..stream.len() - 8]),
    );

    let set = |state: u8| vec![1, state];
    let read = |size: u16| [&[3, 0][..], &size.to_le_bytes()].concat();
    let n = edu::STATE_LEN as u16;
    let write_saved = [&[4, 1][..], &n.to_le_bytes(), &0u16.to_le_bytes()].concat();
    let liveness = [&[7][..], &0x1234_5678u32.to_le_bytes()].concat();
    // RUNNING -> STOP -> STOP_COPY, the stream read out, STOP -> RESUMING,
    // the stream written back, STOP (the load) -> RUNNING.
    let round_trip = [
        vec![1],
        liveness.clone(),
        set(1),
        set(3),
        vec![2],
        read(4096),
        read(4096),
        read(4096),
        set(1),
        set(4),
        write_saved,
        set(1),
        set(2),
        liveness,
    ]
    .concat();
    write("migration", "server_round_trip", &round_trip);
    // Arcs that do not exist, data in the wrong state, a reset mid-way.
    let wrong = [
        vec![1],
        set(3),
        read(64),
        set(4),
        set(1),
        set(4),
        [&[4, 0][..], &4u16.to_le_bytes(), b"EDUS"].concat(),
        set(1),
        vec![6],
        vec![0],
    ]
    .concat();
    write("migration", "server_wrong_order", &wrong);
}

/// Seeds of the c_server target: mode 1 (VERSION first), then steps; the
/// registers are c-tests/sample_device.h's.
fn c_server_seeds() {
    const WITH_FDS: u8 = 0x10;
    const SEALED: u8 = 1;
    const DATA_EVENTFD: u32 = 0x4;
    const ACTION_TRIGGER: u32 = 0x20;
    let reg_read = |reg: u64| {
        server_msg(
            cmd::REGION_READ,
            0,
            0,
            &region_access(pci_region::BAR0, reg, &[], 4),
        )
    };
    let reg_write = |reg: u64, v: u32| {
        let p = region_access(pci_region::BAR0, reg, &v.to_ne_bytes(), 4);
        server_msg(cmd::REGION_WRITE, 0, 0, &p)
    };
    // DMA_SRC, DMA_DST (64 bit each), DMA_LEN, DMA_GO, then DMA_RESULT.
    let dma = |src: u64, dst: u64, len: u32| {
        [
            reg_write(0x10, src as u32),
            reg_write(0x14, (src >> 32) as u32),
            reg_write(0x18, dst as u32),
            reg_write(0x1c, (dst >> 32) as u32),
            reg_write(0x20, len),
            reg_write(0x24, 1),
            reg_read(0x28),
        ]
        .concat()
    };
    let map = |address: u64, size: u64| {
        proto::DmaMapMsg {
            argsz: proto::DmaMapMsg::SIZE as u32,
            flags: proto::DMA_MAP_READ | proto::DMA_MAP_WRITE,
            offset: 0,
            address,
            size,
        }
        .encode()
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "id_scratch",
            [reg_read(0), reg_write(0x04, 0x5a5a_a5a5), reg_read(0x04)].concat(),
        ),
        (
            "doorbell_msi",
            [
                server_msg(
                    cmd::DEVICE_SET_IRQS,
                    WITH_FDS,
                    0,
                    &set_irqs(pci_irq::MSI, DATA_EVENTFD | ACTION_TRIGGER, 1),
                ),
                reg_write(0x08, 1),
                reg_read(0x0c),
            ]
            .concat(),
        ),
        (
            "dma_sealed_memfd",
            [
                server_msg(cmd::DMA_MAP, WITH_FDS, SEALED, &map(0x10_0000, 0x10000)),
                dma(0x10_0000, 0x10_1000, 256),
            ]
            .concat(),
        ),
        (
            "dma_messages",
            [
                server_msg(cmd::DMA_MAP, 0, 0, &map(0x20_0000, 0x4000)),
                dma(0x20_0000, 0x20_0080, 256),
            ]
            .concat(),
        ),
        (
            "reset",
            [
                reg_write(0x04, 7),
                server_msg(cmd::DEVICE_RESET, 0, 0, &[]),
                reg_read(0x04),
            ]
            .concat(),
        ),
    ];
    for (name, steps) in seeds {
        write("c_server", name, &[&[1u8][..], &steps].concat());
    }
}

fn main() {
    decode_seeds();
    server_seeds();
    c_server_seeds();
    client_seeds();
    migration_seeds();
}
