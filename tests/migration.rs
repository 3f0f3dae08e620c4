//! Live migration over vfio-user, both sides over real UNIX sockets: edu
//! moved from one server to another, the state machine's arcs, the data
//! path's states, streams the destination must refuse, and servers that lie
//! about their stream.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MASK, VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET, VFIO_REGION_INFO_FLAG_READ,
};
use vfio_io::caps::Capabilities;
use vfio_io::device::{DeviceInfo, DeviceIo, RegionInfo};
use vfio_io::migration::{DeviceMigration, MigrationState};
use vfio_io::models::edu::{self, regs, Edu, STATE_LEN};
use vfio_io::user::client::{Client, ClientConfig};
use vfio_io::user::proto::{self, cmd, MigDataMsg, MigDataSize, MigStateMsg, MigrationFeature};
use vfio_io::user::server::ServerConfig;

#[path = "support/edu_state.rs"]
mod edu_state;
#[path = "support/raw_peer.rs"]
mod raw_peer;
#[path = "support/served.rs"]
mod served;
#[path = "support/watchdog.rs"]
mod watchdog;

use edu_state::{busy_edu, config_space, dma_buffer, read32, registers, write32};
use raw_peer::Peer;
use served::TempDir;
use MigrationState::{Resuming, Running, Stop, StopCopy};

fn connect(s: &served::Served) -> Client {
    Client::connect(&s.path, ClientConfig::default()).unwrap()
}

fn mig(c: &Client) -> &dyn DeviceMigration {
    c.migration().expect("vfio-user carries migration")
}

/// Reads the whole STOP_COPY stream in `chunk`-byte reads.
fn read_stream(m: &dyn DeviceMigration, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    // A bound on reads, not on time: the stream is STATE_LEN bytes.
    for _ in 0..=STATE_LEN / chunk + 1 {
        match m.read(&mut buf).unwrap() {
            0 => return out,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
    panic!("the stream did not end after {} bytes", out.len());
}

/// The source's state stream, leaving the source in STOP_COPY.
fn save(src: &Client) -> Vec<u8> {
    mig(src).set_state(StopCopy).unwrap();
    assert_eq!(mig(src).get_state().unwrap(), StopCopy);
    read_stream(mig(src), 777)
}

#[test]
fn edu_migrates_from_one_server_to_another_with_every_register_and_its_dma_buffer() {
    let _w = watchdog::Watchdog::start("edu migration", Duration::from_secs(60));
    let (a, b) = (
        served::serve(Edu::new(), ServerConfig::default()),
        served::serve(Edu::new(), ServerConfig::default()),
    );
    let (src, dst) = (connect(&a), connect(&b));
    assert!(src.capabilities().contains(Capabilities::MIGRATION));
    let pattern = busy_edu(&src);
    let before = registers(&src);
    assert_eq!(before[2], (regs::FACTORIAL, 3_628_800), "10! was computed");
    assert_eq!(before[4], (regs::IRQ_STATUS, 0x40));
    let config = config_space(&src);
    assert_ne!(registers(&dst), before, "the destination starts elsewhere");

    let stream = save(&src);
    assert_eq!(stream.len(), STATE_LEN);
    let d = mig(&dst);
    d.set_state(Resuming).unwrap();
    for chunk in stream.chunks(1000) {
        assert_eq!(d.write(chunk).unwrap(), chunk.len());
    }
    d.set_state(Running).unwrap();
    assert_eq!(d.get_state().unwrap(), Running);

    assert_eq!(registers(&dst), before);
    assert_eq!(config_space(&dst), config);
    assert_eq!(dma_buffer(&dst), pattern);
    // The destination runs: it computes and answers liveness.
    write32(&dst, regs::FACTORIAL, 5);
    assert_eq!(read32(&dst, regs::FACTORIAL), 120);
    // So does the source, once back in RUNNING.
    mig(&src).set_state(Running).unwrap();
    write32(&src, regs::LIVENESS, 1);
    assert_eq!(read32(&src, regs::LIVENESS), !1);
}

// ---------------------------------------------------------------------------
// The server's state machine, seen by a raw client.
// ---------------------------------------------------------------------------

fn feature(p: &mut Peer, flags: u32, data: &[u8]) -> raw_peer::Msg {
    let fixed = proto::encode_feature((8 + data.len().max(8)) as u32, flags);
    p.call(cmd::DEVICE_FEATURE, &[&fixed, data], &[])
}

/// SET MIG_DEVICE_STATE; the errno of the reply, `None` for success.
fn raw_set(p: &mut Peer, state: u32) -> Option<i32> {
    let m = MigStateMsg {
        device_state: state,
        data_fd: u32::MAX,
    };
    let flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
    feature(p, flags, &m.encode()).h.error_errno()
}

fn raw_get(p: &mut Peer) -> u32 {
    let flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
    let r = feature(p, flags, &[]);
    assert_eq!(r.h.error_errno(), None);
    let (_, _, d) = proto::decode_feature(&r.p).unwrap();
    MigStateMsg::decode(d).unwrap().device_state
}

fn raw_write(p: &mut Peer, data: &[u8]) -> Option<i32> {
    let h = MigDataMsg {
        argsz: 8,
        size: data.len() as u32,
    };
    p.errno_of(cmd::MIG_DATA_WRITE, &[&h.encode(), data], &[])
}

fn raw_read(p: &mut Peer, size: u32) -> raw_peer::Msg {
    let h = MigDataMsg {
        argsz: 8 + size,
        size,
    };
    p.call(cmd::MIG_DATA_READ, &[&h.encode()], &[])
}

/// Walks the server to `to` one direct arc at a time; a RESUMING -> STOP
/// arc first writes `stream`.
fn raw_walk(p: &mut Peer, to: MigrationState, stream: &[u8]) {
    let mut at = MigrationState::from_u32(raw_get(p)).unwrap();
    while at != to {
        let next = at.next_step(to).unwrap();
        if at == Resuming {
            assert_eq!(raw_write(p, stream), None);
        }
        assert_eq!(raw_set(p, next as u32), None, "{at:?} -> {next:?}");
        at = next;
    }
}

#[test]
fn the_server_takes_every_direct_arc_and_refuses_every_other_with_einval() {
    let _w = watchdog::Watchdog::start("the arc table", Duration::from_secs(60));
    let s = served::serve(Edu::new(), ServerConfig::default());
    let mut p = Peer::connect(&s.path);
    p.version();
    raw_walk(&mut p, StopCopy, &[]);
    let mut stream = Vec::new();
    loop {
        let r = raw_read(&mut p, 4096);
        let data = r.p[MigDataMsg::SIZE..].to_vec();
        assert_eq!(MigDataMsg::decode(&r.p).unwrap().size as usize, data.len());
        if data.is_empty() {
            break;
        }
        stream.extend_from_slice(&data);
    }
    assert_eq!(stream.len(), STATE_LEN);
    let four = [Running, Stop, StopCopy, Resuming];
    let mut direct = 0;
    for from in four {
        for to in four {
            raw_walk(&mut p, from, &stream);
            if from == Resuming && to == Stop {
                assert_eq!(raw_write(&mut p, &stream), None);
            }
            let r = raw_set(&mut p, to as u32);
            if from == to || from.is_direct_arc(to) {
                assert_eq!(r, None, "{from:?} -> {to:?}");
                assert_eq!(raw_get(&mut p), to as u32);
                direct += usize::from(from != to);
            } else {
                assert_eq!(r, Some(libc::EINVAL), "{from:?} -> {to:?}");
                assert_eq!(raw_get(&mut p), from as u32, "state unchanged");
            }
            // ERROR, the states a STOP_COPY device lacks, unknown numbers.
            let at = raw_get(&mut p);
            for bad in [0, 5, 6, 7, 8, u32::MAX] {
                assert_eq!(raw_set(&mut p, bad), Some(libc::EINVAL), "{bad}");
                assert_eq!(raw_get(&mut p), at);
            }
        }
    }
    assert_eq!(
        direct, 6,
        "RUNNING<->STOP, STOP<->STOP_COPY, STOP<->RESUMING"
    );
    // The features' answers, for a client that asks.
    let r = feature(
        &mut p,
        VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION,
        &[],
    );
    let (_, _, d) = proto::decode_feature(&r.p).unwrap();
    assert_eq!(MigrationFeature::decode(d).unwrap().flags, 1, "STOP_COPY");
    let probe = VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET;
    let r = feature(&mut p, probe | VFIO_DEVICE_FEATURE_MIGRATION, &[]);
    assert_eq!(
        r.h.error_errno(),
        Some(libc::EINVAL),
        "MIGRATION has no SET"
    );
    raw_walk(&mut p, Running, &stream);
    assert_eq!(p.read32(regs::ID), edu::ID);
}

#[test]
fn client_walks_through_stop_and_refuses_error_and_missing_states() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    let m = mig(&c);
    assert_eq!(m.get_state().unwrap(), Running);
    // RUNNING -> STOP_COPY, which the server takes only as two arcs.
    m.set_state(StopCopy).unwrap();
    assert_eq!(m.get_state().unwrap(), StopCopy);
    // STOP_COPY -> RESUMING -> RUNNING, both through STOP.
    m.set_state(Resuming).unwrap();
    assert_eq!(m.get_state().unwrap(), Resuming);
    m.set_state(Stop).unwrap_err();
    m.set_state(Running).unwrap_err();
    c.reset().unwrap();
    assert_eq!(m.get_state().unwrap(), Running, "reset leaves RESUMING");
    for bad in [
        MigrationState::Error,
        MigrationState::RunningP2p,
        MigrationState::PreCopy,
        MigrationState::PreCopyP2p,
    ] {
        assert_eq!(m.set_state(bad).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.get_state().unwrap(), Running);
    }
}

#[test]
fn mig_data_in_the_wrong_state_is_einval() {
    let s = served::serve(Edu::new(), ServerConfig::default());
    let c = connect(&s);
    let m = mig(&c);
    let mut buf = [0u8; 64];
    for state in [Running, Stop, Resuming] {
        m.set_state(state).unwrap();
        assert_eq!(
            m.read(&mut buf).unwrap_err().errno(),
            libc::EINVAL,
            "{state:?}"
        );
    }
    for state in [Running, Stop, StopCopy] {
        c.reset().unwrap();
        m.set_state(state).unwrap();
        assert_eq!(
            m.write(&buf).unwrap_err().errno(),
            libc::EINVAL,
            "{state:?}"
        );
        assert_eq!(m.get_state().unwrap(), state);
    }
}

#[test]
fn bad_streams_are_refused_and_the_destination_stays_usable() {
    let _w = watchdog::Watchdog::start("bad streams", Duration::from_secs(60));
    let (a, b) = (
        served::serve(Edu::new(), ServerConfig::default()),
        served::serve(Edu::new(), ServerConfig::default()),
    );
    let (src, dst) = (connect(&a), connect(&b));
    busy_edu(&src);
    let before = registers(&src);
    let stream = save(&src);
    write32(&dst, regs::LIVENESS, 0xaaaa_5555);
    let d = mig(&dst);
    d.set_state(Resuming).unwrap();

    let mut corrupted = stream.clone();
    corrupted[STATE_LEN / 2] ^= 0x01;
    let mut other_version = stream.clone();
    other_version[4] = 2;
    let truncated = &stream[..STATE_LEN - 100];
    for (what, bad) in [
        ("truncated", truncated),
        ("corrupted", &corrupted[..]),
        ("another version", &other_version[..]),
        ("empty", &[][..]),
    ] {
        assert_eq!(d.write(bad).unwrap(), bad.len(), "{what}");
        assert_eq!(
            d.set_state(Stop).unwrap_err().errno(),
            libc::EINVAL,
            "{what}"
        );
        assert_eq!(d.get_state().unwrap(), Resuming, "{what}");
        assert_eq!(
            read32(&dst, regs::LIVENESS),
            !0xaaaa_5555,
            "{what}: unchanged"
        );
    }
    // Longer than edu's stream: refused at the write that passes the end,
    // which appends nothing.
    let mut oversized = stream.clone();
    oversized.push(0);
    assert_eq!(d.write(&oversized).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(d.write(&stream).unwrap(), STATE_LEN);
    assert_eq!(d.write(&[0]).unwrap_err().errno(), libc::EINVAL);
    // The whole, good stream still goes in.
    d.set_state(Running).unwrap();
    assert_eq!(registers(&dst), before);
}

#[test]
fn a_server_without_migration_hooks_answers_no_migration() {
    // Scratch has no hooks: the features fall to the model, which has none.
    let s = served::serve(
        vfio_io::models::scratch::Scratch::new().unwrap(),
        ServerConfig::default(),
    );
    let c = connect(&s);
    assert!(!c.capabilities().contains(Capabilities::MIGRATION));
    let mut p = Peer::connect(&s.path);
    drop(c);
    p.version();
    let r = feature(
        &mut p,
        VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
        &[],
    );
    assert_eq!(r.h.error_errno(), Some(libc::ENOTTY));
    assert_eq!(raw_read(&mut p, 16).h.error_errno(), Some(libc::EINVAL));
}

// ---------------------------------------------------------------------------
// Servers that lie about their stream.
// ---------------------------------------------------------------------------

/// A fake server that migrates: discovery, the migration features (it
/// announces `announced` bytes of stream) and MIG_DATA_READ answered by
/// `reply(size asked)` as (size claimed, data). Returns the reads it saw.
struct FakeServer {
    path: PathBuf,
    _dir: TempDir,
    thread: Option<JoinHandle<usize>>,
}

fn fake_server(announced: u64, reply: fn(u32) -> (u32, Vec<u8>)) -> FakeServer {
    let dir = TempDir::new("migration-fake");
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut p = Peer::new(s);
        let mut state = Running as u32;
        let mut reads = 0;
        while let Ok(m) = p.recv() {
            match m.h.command {
                cmd::VERSION => p.reply(
                    &m.h,
                    &[&proto::encode_version(0, 0, r#"{"capabilities":{}}"#)],
                    &[],
                ),
                cmd::DEVICE_GET_INFO => {
                    let info = DeviceInfo {
                        flags: 0,
                        num_regions: 1,
                        num_irqs: 0,
                    };
                    p.reply(&m.h, &[&proto::encode_device_info(16, &info)], &[])
                }
                cmd::DEVICE_GET_REGION_INFO => {
                    let r = RegionInfo {
                        flags: VFIO_REGION_INFO_FLAG_READ,
                        size: 4096,
                        ..RegionInfo::default()
                    };
                    p.reply(&m.h, &[&proto::encode_region_info(&r, 4096)], &[])
                }
                cmd::DEVICE_FEATURE => {
                    let (_, flags, data) = proto::decode_feature(&m.p).unwrap();
                    let answer: Option<Vec<u8>> = match flags & VFIO_DEVICE_FEATURE_MASK {
                        _ if flags & VFIO_DEVICE_FEATURE_PROBE != 0 => {
                            (flags & VFIO_DEVICE_FEATURE_MASK == VFIO_DEVICE_FEATURE_MIGRATION)
                                .then(Vec::new)
                        }
                        VFIO_DEVICE_FEATURE_MIGRATION => {
                            Some(MigrationFeature { flags: 1 }.encode().to_vec())
                        }
                        VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => Some(
                            MigDataSize {
                                stop_copy_length: announced,
                            }
                            .encode()
                            .to_vec(),
                        ),
                        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
                            if flags & VFIO_DEVICE_FEATURE_SET != 0 =>
                        {
                            state = MigStateMsg::decode(data).unwrap().device_state;
                            Some(data.to_vec())
                        }
                        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => Some(
                            MigStateMsg {
                                device_state: state,
                                data_fd: u32::MAX,
                            }
                            .encode()
                            .to_vec(),
                        ),
                        _ => None,
                    };
                    match answer {
                        Some(d) => {
                            let fixed = proto::encode_feature(8 + d.len() as u32, flags);
                            p.reply(&m.h, &[&fixed, &d], &[])
                        }
                        None => p.error(&m.h, libc::ENOTTY),
                    }
                }
                cmd::MIG_DATA_READ => {
                    reads += 1;
                    let asked = MigDataMsg::decode(&m.p).unwrap().size;
                    let (size, data) = reply(asked);
                    let h = MigDataMsg {
                        argsz: 8 + data.len() as u32,
                        size,
                    };
                    p.reply(&m.h, &[&h.encode(), &data], &[])
                }
                _ => p.error(&m.h, libc::ENOSYS),
            }
        }
        reads
    });
    FakeServer {
        path,
        _dir: dir,
        thread: Some(thread),
    }
}

impl FakeServer {
    fn connect(&self) -> Client {
        let config = ClientConfig {
            twin_socket: false,
            timeout: Duration::from_secs(30),
            ..ClientConfig::default()
        };
        Client::connect(&self.path, config).unwrap()
    }

    /// The MIG_DATA_READs the server answered, once the client is gone.
    fn reads(mut self) -> usize {
        self.thread.take().unwrap().join().unwrap()
    }
}

#[test]
fn a_server_claiming_more_data_than_it_sends_is_a_protocol_error() {
    let _w = watchdog::Watchdog::start("a lying server", Duration::from_secs(60));
    let f = fake_server(1 << 20, |asked| (asked, vec![0x5a; 10]));
    let c = f.connect();
    assert!(c.capabilities().contains(Capabilities::MIGRATION));
    mig(&c).set_state(StopCopy).unwrap();
    let e = mig(&c).read(&mut [0u8; 100]).unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO, "{e}");
    drop(c);
    assert_eq!(f.reads(), 1);
}

#[test]
fn a_server_whose_stream_never_ends_is_cut_off_at_the_length_it_announced() {
    let _w = watchdog::Watchdog::start("an endless stream", Duration::from_secs(60));
    // Every read answered in full, forever; 4096 bytes announced.
    let f = fake_server(4096, |asked| (asked, vec![0xa5; asked as usize]));
    let c = f.connect();
    mig(&c).set_state(StopCopy).unwrap();
    let mut buf = [0u8; 1000];
    let mut got = 0;
    let err = loop {
        match mig(&c).read(&mut buf) {
            Ok(n) => {
                assert!(n > 0, "the fake never ends its stream");
                got += n;
                assert!(got <= 4096, "read past the announced length");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), libc::EPROTO, "{err}");
    assert_eq!(got, 4000);
    drop(c);
    assert_eq!(f.reads(), 5, "four whole reads, then the one past the end");
}
