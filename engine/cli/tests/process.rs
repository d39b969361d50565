//! Real `trex node storage` processes on loopback: SIGKILL under load, bad
//! input from the network, and clean shutdown.

mod common;

use common::{Rng, UnitProcess};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trex_net::unit_client::{UnitApi, UnitClient};
use trex_wire::{
    self as wire, begin_frame, finish_frame, ErrorCode, Header, Opcode, Status, WriteOp, HEADER_LEN,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn value(writer: u64, seq: u64, addr: u64) -> Vec<u8> {
    let len = 100 + (addr % 23) as usize * 97;
    (0..len)
        .map(|i| (i as u64 ^ addr ^ (writer << 3) ^ seq) as u8)
        .collect()
}

/// Writes batches from several clients until stopped; returns what was acked
/// and what was attempted (acked or not).
fn load(addr: &str, stop: &AtomicBool, next: &AtomicU64) -> (Vec<u64>, Vec<u64>) {
    let mut acked = Vec::new();
    let mut tried = Vec::new();
    let Ok(mut c) = UnitClient::connect(addr, TIMEOUT) else {
        return (acked, tried);
    };
    let writer = 1;
    while !stop.load(Ordering::Relaxed) {
        let first = next.fetch_add(8, Ordering::Relaxed);
        let vals: Vec<Vec<u8>> = (first..first + 8).map(|a| value(writer, a, a)).collect();
        let ops: Vec<WriteOp<'_>> = (0..8)
            .map(|i| WriteOp {
                addr: first + i,
                writer,
                seq: first + i,
                data: &vals[i as usize],
            })
            .collect();
        tried.extend(first..first + 8);
        match c.write(0, &ops) {
            Ok(st) => {
                assert!(
                    st.iter().all(|s| *s == Status::Ok),
                    "unexpected statuses {st:?}"
                );
                acked.extend(first..first + 8);
            }
            Err(_) => break, // the unit was killed: these writes are in doubt
        }
    }
    (acked, tried)
}

#[test]
fn acknowledged_writes_survive_sigkill_at_a_random_moment() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_time();
    eprintln!(
        "crash test seed {} (data in {})",
        rng.0,
        dir.path().display()
    );
    let mut acked_all: Vec<u64> = Vec::new();
    let mut tried_all: Vec<u64> = Vec::new();
    let mut next_start = 0;
    for round in 0..3 {
        let mut unit = UnitProcess::start(dir.path(), &["--segment-size", "256KiB"]);
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(next_start));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (a, s, n) = (unit.addr.clone(), stop.clone(), next.clone());
                std::thread::spawn(move || load(&a, &s, &n))
            })
            .collect();
        let delay = Duration::from_millis(150 + rng.below(900));
        std::thread::sleep(delay);
        unit.kill9();
        stop.store(true, Ordering::Relaxed);
        let mut round_acked = 0;
        for w in workers {
            let (acked, tried) = w.join().unwrap();
            round_acked += acked.len();
            acked_all.extend(acked);
            tried_all.extend(tried);
        }
        eprintln!("round {round}: killed after {delay:?} with {round_acked} writes acknowledged");
        next_start = next.load(Ordering::Relaxed) + 100;
    }
    assert!(
        acked_all.len() > 100,
        "the load did not get going ({} acks)",
        acked_all.len()
    );
    let unit = UnitProcess::start(dir.path(), &["--segment-size", "256KiB"]);
    let mut c = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    let tried: std::collections::HashSet<u64> = tried_all.iter().copied().collect();
    let mut by_addr = HashMap::new();
    let max = next_start + 16;
    for chunk in (0..max).collect::<Vec<_>>().chunks(2048) {
        for r in c.read(0, chunk).unwrap() {
            by_addr.insert(r.addr, r);
        }
    }
    for a in &acked_all {
        let r = &by_addr[a];
        assert_eq!(
            r.status,
            Status::Ok,
            "acknowledged write at {a} is missing after SIGKILL"
        );
        assert_eq!(
            r.data,
            value(1, *a, *a),
            "acknowledged write at {a} has the wrong bytes"
        );
    }
    for (a, r) in &by_addr {
        match r.status {
            Status::Ok => {
                assert!(
                    tried.contains(a),
                    "address {a} was never written but is served"
                );
                assert_eq!(
                    r.data,
                    value(1, *a, *a),
                    "address {a} serves bytes nobody wrote"
                );
            }
            Status::Unwritten => assert!(!acked_all.contains(a)),
            s => panic!("address {a}: unexpected status {s}"),
        }
    }
    let info = c.info().unwrap();
    assert_eq!(info.corrupt, 0, "a process crash leaves no corrupt records");
}

fn raw_frame(opcode: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    f.extend_from_slice(body);
    finish_frame(
        &mut f,
        s,
        Header {
            opcode,
            request_id: id,
            ..Header::default()
        },
    );
    f
}

/// Sends `bytes`, then reads until the server closes; returns the error codes
/// of the frames received.
fn poke(addr: &str, bytes: &[u8], half_close: bool) -> Vec<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let mut codes = Vec::new();
    let mut rest = &got[..];
    while let Ok(Some(n)) = wire::check_frame(rest) {
        let f = wire::parse_frame(&rest[..n]).unwrap().unwrap();
        assert!(f.header.is_response());
        if f.header.is_error() {
            let e = wire::decode_error(f.body).unwrap();
            assert!(!e.message.is_empty(), "an error says what went wrong");
            codes.push(e.code);
        } else {
            codes.push(0);
        }
        rest = &rest[n..];
    }
    assert!(rest.is_empty(), "the server sent a partial frame");
    codes
}

#[test]
fn bad_input_gets_errors_and_never_disturbs_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut unit = UnitProcess::start(dir.path(), &[]);
    let mut good = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    let v = b"steady".to_vec();
    assert_eq!(
        good.write(
            0,
            &[WriteOp {
                addr: 0,
                writer: 9,
                seq: 1,
                data: &v
            }]
        )
        .unwrap(),
        vec![Status::Ok]
    );

    let info = raw_frame(Opcode::Info as u8, 1, &[]);
    let mut bad_header_crc = info.clone();
    bad_header_crc[10] ^= 1;
    let mut bad_body_crc = raw_frame(Opcode::Read as u8, 7, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let n = bad_body_crc.len();
    bad_body_crc[n - 1] ^= 0x80;
    let mut oversized = raw_frame(Opcode::Write as u8, 2, &[]);
    oversized[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = crc32fast::hash(&oversized[..36]);
    oversized[36..40].copy_from_slice(&crc.to_le_bytes());
    let mut too_many = raw_frame(Opcode::Read as u8, 3, &u32::MAX.to_le_bytes());
    too_many.extend_from_slice(&info);
    let cases: Vec<(&str, Vec<u8>, Vec<u16>)> = vec![
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            vec![ErrorCode::BadMagic as u16],
        ),
        (
            "bad header checksum",
            bad_header_crc,
            vec![ErrorCode::BadHeaderChecksum as u16],
        ),
        (
            "bad body checksum",
            bad_body_crc,
            vec![ErrorCode::BadBodyChecksum as u16],
        ),
        (
            "oversized length",
            oversized,
            vec![ErrorCode::FrameTooLarge as u16],
        ),
        (
            "unknown opcode",
            raw_frame(0x42, 4, &[]),
            vec![ErrorCode::UnknownOpcode as u16],
        ),
        (
            "absurd count, then a good frame",
            too_many,
            vec![ErrorCode::MalformedBody as u16],
        ),
        ("truncated frame", info[..HEADER_LEN - 15].to_vec(), vec![]),
        (
            "good frame then garbage",
            [info.clone(), vec![0xde; 50]].concat(),
            vec![0, ErrorCode::BadMagic as u16],
        ),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(poke(&unit.addr, &bytes, true), want, "{what}");
        // The well-behaved client is still served, every time.
        assert_eq!(good.read(0, &[0]).unwrap()[0].data, v, "after {what}");
    }
    let mut rng = Rng::from_time();
    eprintln!("garbage seed {}", rng.0);
    for i in 0..200 {
        let len = 1 + rng.below(300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 {
            // Start with a valid header so the garbage reaches the body decoders.
            // Not trim or seal: a random 8-byte body is a valid one for those.
            let op = [1u8, 2, 3, 6, 0x07, 0xff][rng.below(6) as usize];
            bytes = raw_frame(op, i, &bytes);
        }
        let _ = poke(&unit.addr, &bytes, true);
    }
    // A peer that sends half a frame and goes quiet blocks nobody.
    let mut idle = TcpStream::connect(&unit.addr).unwrap();
    idle.write_all(&info[..30]).unwrap();
    assert_eq!(good.info().unwrap().entries, 1);
    assert!(
        unit.drain_log().iter().all(|l| !l.contains("panicked")),
        "the unit never panics"
    );
}

#[test]
fn sigterm_shuts_down_cleanly_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut unit = UnitProcess::start(dir.path(), &[]);
    let mut c = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    let v = b"before shutdown".to_vec();
    c.write(
        0,
        &[WriteOp {
            addr: 5,
            writer: 1,
            seq: 1,
            data: &v,
        }],
    )
    .unwrap();
    unit.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = unit.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "unit did not exit within 10s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "clean exit after SIGTERM, got {status}");
    std::thread::sleep(Duration::from_millis(100));
    let log = unit.drain_log().join("\n");
    assert!(log.contains("stopped cleanly"), "log: {log}");
    let unit = UnitProcess::start(dir.path(), &[]);
    let mut c = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    assert_eq!(c.read(0, &[5]).unwrap()[0].data, v);
}

#[test]
fn a_second_unit_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _unit = UnitProcess::start(dir.path(), &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["node", "storage", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
}

#[test]
fn the_sync_thread_fallback_serves_durable_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut unit = UnitProcess::start_with_env(dir.path(), &[], &[("TREX_SYNC_BACKEND", "thread")]);
    let mut c = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    let vals: Vec<Vec<u8>> = (0..64u64).map(|a| value(3, a, a)).collect();
    let ops: Vec<WriteOp<'_>> = (0..64u64)
        .map(|a| WriteOp {
            addr: a,
            writer: 3,
            seq: a,
            data: &vals[a as usize],
        })
        .collect();
    assert!(c.write(0, &ops).unwrap().iter().all(|s| *s == Status::Ok));
    let info = c.info().unwrap();
    assert_eq!(
        info.flags & wire::INFO_IO_URING,
        0,
        "the thread path is in use"
    );
    let got = c.read(0, &(0..64).collect::<Vec<_>>()).unwrap();
    assert!(got
        .iter()
        .all(|r| r.status == Status::Ok && r.data == vals[r.addr as usize]));
    assert!(
        unit.drain_log().iter().any(|l| l.contains("sync thread")),
        "the log names the sync path"
    );
}

#[test]
fn the_largest_entries_and_frames_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let unit = UnitProcess::start(dir.path(), &[]);
    let mut c = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    let max = wire::MAX_ENTRY_LEN as usize;
    let vals: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i ^ 0x5a; max]).collect();
    let ops: Vec<WriteOp<'_>> = (0..3u64)
        .map(|a| WriteOp {
            addr: a,
            writer: 1,
            seq: a,
            data: &vals[a as usize],
        })
        .collect();
    assert_eq!(
        c.write(0, &ops).unwrap(),
        vec![Status::Ok; 3],
        "a 12 MiB frame of 4 MiB entries"
    );
    let got = c.read(0, &[0, 1, 2]).unwrap();
    assert!(got
        .iter()
        .all(|r| r.status == Status::Ok && r.data == vals[r.addr as usize]));
    // One byte more than the limit: that entry is answered `too-large`, the
    // rest of the batch lands, and the connection stays usable (docs/wire.md,
    // "Write").
    let big = vec![0u8; max + 1];
    let statuses = c
        .write(
            0,
            &[
                WriteOp {
                    addr: 9,
                    writer: 1,
                    seq: 9,
                    data: &big,
                },
                WriteOp {
                    addr: 10,
                    writer: 1,
                    seq: 10,
                    data: b"small",
                },
            ],
        )
        .unwrap();
    assert_eq!(statuses, vec![Status::TooLarge, Status::Ok]);
    assert_eq!(c.read(0, &[9]).unwrap()[0].status, Status::Unwritten);
    assert_eq!(c.read(0, &[10]).unwrap()[0].data, b"small");
    assert_eq!(c.info().unwrap().entries, 4);
}

#[test]
fn a_pipeline_past_the_inflight_limit_is_answered_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let unit = UnitProcess::start(dir.path(), &["--max-inflight", "4"]);
    let mut s = TcpStream::connect(&unit.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // 200 writes and reads in one burst: the unit pauses the connection at 4 in
    // flight and must resume it by itself, within the same turns, not on a timer.
    let mut burst = Vec::new();
    for i in 0..200u64 {
        let mut f = Vec::new();
        let st = begin_frame(&mut f);
        if i % 2 == 0 {
            wire::encode_write_request(
                &mut f,
                &[WriteOp {
                    addr: i,
                    writer: 1,
                    seq: i,
                    data: b"p",
                }],
            );
        } else {
            wire::encode_addr_list(&mut f, &[i - 1]);
        }
        let op = if i % 2 == 0 {
            Opcode::Write
        } else {
            Opcode::Read
        };
        finish_frame(
            &mut f,
            st,
            Header {
                opcode: op as u8,
                request_id: i + 1,
                ..Header::default()
            },
        );
        burst.extend_from_slice(&f);
    }
    let t0 = Instant::now();
    s.write_all(&burst).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut head = [0u8; HEADER_LEN];
    while seen.len() < 200 {
        s.read_exact(&mut head)
            .expect("every reply arrives within 3s");
        let h = Header::decode(&head).unwrap();
        let mut body = vec![0; h.body_len as usize];
        s.read_exact(&mut body).unwrap();
        assert!(!h.is_error(), "request {} failed", h.request_id);
        assert!(seen.insert(h.request_id), "one reply per request");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn connections_past_the_cap_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let unit = UnitProcess::start(dir.path(), &["--max-connections", "2"]);
    let mut a = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    let mut b = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    a.info().unwrap();
    b.info().unwrap();
    let codes = poke(&unit.addr, &raw_frame(Opcode::Info as u8, 1, &[]), false);
    assert_eq!(codes, vec![ErrorCode::TooManyConnections as u16]);
    drop(a);
    // A slot frees up once a client leaves.
    let t0 = Instant::now();
    loop {
        let mut c = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
        match c.info() {
            Ok(_) => break,
            Err(e) => assert!(
                t0.elapsed() < Duration::from_secs(5),
                "slot never freed: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    b.info().unwrap();
}

/// Reads one whole frame from `s`; its header and body.
fn read_frame(s: &mut TcpStream) -> (Header, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(n)) = wire::check_frame(&buf) {
            let f = wire::parse_frame(&buf[..n]).unwrap().unwrap();
            return (f.header, f.body.to_vec());
        }
        let got = s.read(&mut chunk).expect("a reply within the timeout");
        assert!(got > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Issue 11's flood, its kind: at its connection limit a unit makes room by
/// closing a connection that is still trickling its first frame, never one
/// whose client has spoken the protocol, even while that client is idle (an
/// idle client is only closed when no such connection exists).
#[test]
fn at_the_cap_a_trickling_connection_gives_way_before_an_idle_client() {
    let dir = tempfile::tempdir().unwrap();
    let unit = UnitProcess::start(dir.path(), &["--max-connections", "3"]);
    let info = raw_frame(Opcode::Info as u8, 1, &[]);
    let mut good = TcpStream::connect(&unit.addr).unwrap();
    good.set_read_timeout(Some(TIMEOUT)).unwrap();
    good.write_all(&info).unwrap();
    assert!(!read_frame(&mut good).0.is_error());
    let tricklers: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&unit.addr).unwrap();
            s.write_all(&info[..1]).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s
        })
        .collect();
    // Past the second after which an idle connection may be closed too.
    std::thread::sleep(Duration::from_millis(1_300));
    assert_eq!(
        poke(&unit.addr, &info, true),
        vec![0],
        "the newcomer is served"
    );
    // The idle client kept its connection; a trickler gave way.
    good.write_all(&info).unwrap();
    assert!(!read_frame(&mut good).0.is_error());
    let closed = tricklers
        .into_iter()
        .filter(|s| matches!((&*s).read(&mut [0u8; 64]), Ok(0)))
        .count();
    assert_eq!(
        closed, 1,
        "one trickling connection was closed to make room"
    );
}

#[test]
fn replies_that_overtake_earlier_requests_reach_their_own_caller() {
    // A unit answers a read at once while a new write waits for its sync, so on
    // one connection the read's reply can come first. The client must keep it
    // for the read instead of dropping it while waiting for the write's.
    let dir = tempfile::tempdir().unwrap();
    let unit = UnitProcess::start(dir.path(), &[]);
    let mut c = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
    let v = vec![7u8; 1 << 20];
    for round in 0..20u64 {
        let ops: Vec<WriteOp<'_>> = (0..4)
            .map(|k| WriteOp {
                addr: round * 8 + k,
                writer: 1,
                seq: round * 8 + k + 1,
                data: &v,
            })
            .collect();
        let w = c
            .send(Opcode::Write, 0, &|b| {
                trex_wire::encode_write_request(b, &ops)
            })
            .unwrap();
        let r = c
            .send(Opcode::Read, 0, &|b| {
                trex_wire::encode_addr_list(b, &[1_000_000])
            })
            .unwrap();
        assert_ne!(w, r, "request ids are unique");
        let (_, wb) = c.recv(w).expect("the write's own reply");
        let st = trex_wire::decode_status_list(&wb).unwrap();
        assert!(st.iter().all(|s| s == Status::Ok), "round {round}: {st:?}");
        let (_, rb) = c.recv(r).expect("the read's reply, even if it came first");
        let items = trex_wire::decode_read_reply(&rb).unwrap();
        assert_eq!(items.len(), 1);
    }
}
