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
    for port in base..base + 3 {
        for from in [1, 2, 3] {
            for ballot in [top, past_step] {
                send_to(port, &peer_frame(from, &Msg::Prepare { ballot, from: 0 }));
                send_to(port, &peer_frame(from, &Msg::Commit { ballot, commit: 0 }));
                send_to(port, &peer_frame(from, &Msg::PreVote { ballot }));
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
