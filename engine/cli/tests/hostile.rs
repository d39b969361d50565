//! Issue 11: hostile or broken peers never disable the cluster. Real processes
//! (`trex up`), values at the edge of their range sent as a hostile client
//! would, and then the cluster must still elect, take over, append and read.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use trex_wire::consensus::{encode_peer, Ballot, Msg};
use trex_wire::{begin_frame, finish_frame, Header, Opcode};

mod common;

use common::trex_cli;

/// A peer frame claiming to be from node `from`.
fn peer_frame(from: u64, m: &Msg) -> Vec<u8> {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    encode_peer(&mut f, from, m);
    finish_frame(
        &mut f,
        s,
        Header {
            opcode: Opcode::Peer as u8,
            ..Header::default()
        },
    );
    f
}

fn send_to(port: u16, frame: &[u8]) {
    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
        let _ = s.write_all(frame);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Appends one entry with `trex append` and returns its address; panics with
/// the error if it fails within `within`.
fn append(eps: &str, data: &str, within: Duration) -> u64 {
    let (code, out, err) = trex_cli(eps, &["append", data], within);
    assert_eq!(code, Some(0), "append {data}: {err}");
    out.trim().parse().unwrap()
}

/// Appends until one succeeds (at most `within`): service resumed.
fn append_eventually(eps: &str, data: &str, within: Duration) -> u64 {
    let t0 = Instant::now();
    loop {
        let (code, out, err) = trex_cli(eps, &["append", data], Duration::from_secs(60));
        if code == Some(0) {
            return out.trim().parse().unwrap();
        }
        assert!(
            t0.elapsed() < within,
            "no append succeeded within {within:?}: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 11, case 1: one forged `prepare` at ballot (u64::MAX, 1) sent to
/// every consensus port (and, as the same family, a ballot just past the
/// allowed step, and `accept`/`commit` at the top of the range) moves no
/// node's ballot: after the leader is killed, the others still elect one,
/// appends go on, and a restart of the whole cluster on its data comes up.
#[test]
fn a_forged_ballot_at_the_top_of_the_range_moves_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let cluster = common::trex_up_at(dir.path(), base, &[]);
    let eps = cluster.eps.clone();
    let within = Duration::from_secs(30);
    let first = append(&eps, "before", within);
    let top = Ballot {
        counter: u64::MAX,
        node: 1,
    };
    let past_step = Ballot {
        counter: trex_wire::range::MAX_STEP + 1_000,
        node: 2,
    };
    // A ballot the nodes accept, carrying commit indexes and slots at the top
    // of their range (a node once looped over every slot up to a forged
    // commit index, and never answered again).
    let current = Ballot {
        counter: 1,
        node: 1,
    };
    for port in base..base + 3 {
        for from in [1, 2, 3] {
            for ballot in [top, past_step] {
                send_to(port, &peer_frame(from, &Msg::Prepare { ballot, from: 0 }));
                send_to(port, &peer_frame(from, &Msg::Commit { ballot, commit: 0 }));
                send_to(port, &peer_frame(from, &Msg::PreVote { ballot }));
            }
            for commit in [u64::MAX, 1 << 62, (1 << 62) + 1] {
                let m = Msg::Commit {
                    ballot: current,
                    commit,
                };
                send_to(port, &peer_frame(from, &m));
                send_to(port, &peer_frame(from, &Msg::CatchUp { from: commit }));
            }
        }
    }
    let second = append(&eps, "after-the-forgery", within);
    assert!(second > first);
    // Every node's promised ballot stayed small.
    let (code, out, err) = trex_cli(&eps, &["endpoint", "status", "-w", "json"], within);
    assert_eq!(code, Some(0), "endpoint status: {err}");
    for ballot in out.split("\"ballot\":\"").skip(1) {
        let counter: u64 = ballot.split('.').next().unwrap().parse().unwrap();
        assert!(counter < 1_000, "a node adopted a forged ballot: {out}");
    }
    // An election must still be possible: kill the leader.
    let leader = out
        .split('{')
        .find(|n| n.contains("\"leading\":true"))
        .and_then(|n| n.split("\"endpoint\":\"").nth(1))
        .and_then(|n| n.split('"').next())
        .unwrap_or_else(|| panic!("no leader: {out}"))
        .to_string();
    common::kill(&format!("[-]-listen {leader} "), libc::SIGKILL);
    append_eventually(&eps, "after-an-election", Duration::from_secs(20));
    // And the whole cluster restarts on its data.
    drop(cluster);
    let again = common::trex_up_at(dir.path(), base, &[]);
    let (code, out, err) = trex_cli(&again.eps, &["read", "0", "--count", "3"], within);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("before") && out.contains("after-the-forgery"),
        "{out}"
    );
    append_eventually(&again.eps, "after-a-restart", Duration::from_secs(20));
}

/// Issue 11, case 2: a seal at epoch u64::MAX (or just past the allowed step)
/// is refused by the unit with `out-of-range`, and nothing changes: sequencer
/// takeovers still work afterwards.
#[test]
fn a_seal_at_the_top_of_the_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let cluster = common::trex_up_at(dir.path(), base, &[]);
    let eps = cluster.eps.clone();
    let within = Duration::from_secs(30);
    append(&eps, "before", within);
    let unit = format!("127.0.0.1:{}", base + 20);
    for epoch in [
        u64::MAX.to_string(),
        (trex_wire::range::MAX_STEP + 100).to_string(),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trex"))
            .args(["unit", "seal", &epoch, "--node", &unit])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "seal {epoch}: {err}");
        assert!(err.contains("out-of-range"), "seal {epoch}: {err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["unit", "info", "-w", "json", "--node", &unit])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        !info.contains(&u64::MAX.to_string()),
        "the unit's sealed epoch moved: {info}"
    );
    // A takeover still works: kill the active sequencer; appends resume.
    let (code, status, err) = trex_cli(&eps, &["status"], within);
    assert_eq!(code, Some(0), "status: {err}");
    let active = status
        .lines()
        .find_map(|l| l.strip_prefix("sequencer  "))
        .unwrap_or_else(|| panic!("no sequencer: {status}"))
        .trim()
        .to_string();
    common::kill(&format!("[-]-listen 127.0.0.1:{active} "), libc::SIGKILL);
    append_eventually(&eps, "after-a-takeover", Duration::from_secs(20));
}

/// Issue 11, case 5: a lease of 0 s (already expired when granted) is refused
/// as a usage error, naming the range.
#[test]
fn a_zero_ttl_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::trex_up(dir.path(), &[]);
    let (code, _, err) = trex_cli(
        &cluster.eps,
        &["lock", "acquire", "jobs", "--ttl", "0s"],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(err.contains("ttl"), "{err}");
}

/// Issue 11, the family: a value at the edge of its range (0, just past each
/// limit, 2^62 + 1, `u64::MAX − 1`, `u64::MAX`) in every field of every request
/// a client can send — storage units (write, fill, read, trim, seal), the
/// sequencer (token counts), the consensus group (every state-machine
/// operation) — is refused or harmless, nothing crashes, and afterwards the
/// cluster appends, takes over and reads every earlier acknowledged entry.
#[test]
fn extreme_values_in_every_request_leave_the_cluster_serving() {
    use trex_consensus::client::ConsensusClient;
    use trex_consensus::sm::{decode_result, LayoutSegment, Op, Projection, Role};
    use trex_net::unit_client::{ClientError, UnitApi, UnitClient};
    use trex_wire::{Status, WriteOp};
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let cluster = common::trex_up_at(dir.path(), base, &[]);
    let eps = cluster.eps.clone();
    let within = Duration::from_secs(30);
    let before: Vec<u64> = (0..4)
        .map(|i| append(&eps, &format!("before-{i}"), within))
        .collect();
    let edges = [
        u64::MAX,
        u64::MAX - 1,
        (1 << 62) + 1,
        1 << 63,
        trex_wire::range::MAX_STEP + 7,
    ];
    // Storage units.
    for port in base + 20..base + 24 {
        let mut u = UnitClient::connect(&format!("127.0.0.1:{port}"), within).unwrap();
        let epoch = u.info().unwrap().sealed_epoch;
        for &a in &edges[..4] {
            let w = u
                .write(
                    epoch,
                    &[WriteOp {
                        addr: a,
                        writer: 9,
                        seq: 1,
                        data: b"x",
                    }],
                )
                .unwrap();
            assert_eq!(w, vec![Status::OutOfRange], "write at {a}");
            assert_eq!(
                u.fill(epoch, &[a]).unwrap(),
                vec![Status::OutOfRange],
                "fill at {a}"
            );
            let r = u.read(epoch, &[a]).unwrap();
            assert_ne!(r[0].status, Status::Ok, "read at {a}");
            match u.trim(epoch, a) {
                Err(ClientError::Server { .. }) => {}
                other => panic!("trim at {a}: {other:?}"),
            }
        }
        for &e in &edges {
            match u.seal(e) {
                Err(ClientError::Server { .. }) => {}
                other => panic!("seal at {e}: {other:?}"),
            }
        }
        // A write at an epoch far above the seal is not a seal: it is served
        // (fencing refuses only older epochs) and moves nothing.
        let info = u.info().unwrap();
        assert_eq!(info.sealed_epoch, epoch, "unit {port}'s seal moved");
        assert_eq!(info.trim_mark, 0, "unit {port} was trimmed");
    }
    // The sequencers: absurd token counts are refused, the connection closed.
    for port in base + 10..base + 12 {
        for count in [u32::MAX, (1 << 20) + 1] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut f = Vec::new();
            let st = begin_frame(&mut f);
            trex_wire::encode_token_request(&mut f, count);
            finish_frame(
                &mut f,
                st,
                Header {
                    opcode: Opcode::Token as u8,
                    request_id: 1,
                    epoch: 1,
                    ..Header::default()
                },
            );
            s.write_all(&f).unwrap();
            s.set_read_timeout(Some(within)).unwrap();
            let mut reply = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut reply);
            assert!(
                !reply.is_empty(),
                "sequencer {port} answered nothing to count {count}"
            );
        }
    }
    // Every state-machine operation with its fields at the edges.
    let mut c = ConsensusClient::new(&eps, within).unwrap();
    let one_segment = |epoch: u64| Projection {
        epoch,
        sequencer: u64::from(base + 10),
        segments: vec![LayoutSegment {
            start: 0,
            end: u64::MAX,
            stripes: vec![vec![u64::from(base + 20)]],
        }],
    };
    let ops = [
        Op::Register {
            id: u64::MAX,
            role: Role::Storage,
            addr: "127.0.0.1:1".into(),
        },
        Op::Register {
            id: 0,
            role: Role::Sequencer,
            addr: "127.0.0.1:1".into(),
        },
        Op::Heartbeat { id: u64::MAX },
        Op::Deregister { id: u64::MAX },
        Op::InitLayout {
            stripes: u32::MAX,
            replicas: u32::MAX,
        },
        Op::Install {
            expected_epoch: u64::MAX,
            projection: one_segment(u64::MAX),
        },
        Op::Acquire {
            name: "edge".into(),
            holder: "x".into(),
            ttl_ms: u64::MAX,
        },
        Op::Acquire {
            name: "edge".into(),
            holder: "x".into(),
            ttl_ms: 0,
        },
        Op::Renew {
            name: "sequencer".into(),
            token: u64::MAX,
            ttl_ms: u64::MAX,
        },
        Op::Release {
            name: "sequencer".into(),
            token: u64::MAX,
        },
        Op::SetLockGrace { grace_ms: u64::MAX },
        Op::Trim { mark: u64::MAX },
        Op::Trim {
            mark: (1 << 62) + 1,
        },
    ];
    for op in &ops {
        let r = c.submit(op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        assert!(
            matches!(decode_result(&r), Ok(Err(_))),
            "{op:?} was not refused"
        );
    }
    // An install at the current epoch + a step past the bound is refused too.
    let layout = trex_log::Log::connect(&eps).unwrap().projection().clone();
    let op = Op::Install {
        expected_epoch: layout.epoch,
        projection: one_segment(layout.epoch + trex_wire::range::MAX_STEP + 1),
    };
    assert!(matches!(decode_result(&c.submit(&op).unwrap()), Ok(Err(_))));
    // Still serving: appends, a takeover, and every earlier entry.
    append(&eps, "after-the-edges", within);
    let (_, status, _) = trex_cli(&eps, &["status"], within);
    let active = status
        .lines()
        .find_map(|l| l.strip_prefix("sequencer  "))
        .unwrap()
        .trim()
        .to_string();
    common::kill(&format!("[-]-listen 127.0.0.1:{active} "), libc::SIGKILL);
    append_eventually(&eps, "after-a-takeover", Duration::from_secs(20));
    let (code, out, err) = trex_cli(&eps, &["read", "0", "--count", "4"], within);
    assert_eq!(code, Some(0), "{err}");
    for (i, a) in before.iter().enumerate() {
        assert!(out.contains(&format!("{a}\tbefore-{i}")), "{out}");
    }
}
