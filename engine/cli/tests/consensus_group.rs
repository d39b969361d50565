//! Changing the consensus group online (`trex endpoint add|remove|list`), on
//! real processes: a killed consensus node is replaced by a new one on
//! another port while a client appends, and the group then survives the loss
//! of one of its original nodes only because the new node votes.

mod common;

use common::{free_port, kill, trex_cli, trex_up};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trex_consensus::client::ConsensusClient;

const T: Duration = Duration::from_secs(20);

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Appends `n`-numbered entries one `trex append` at a time until `stop`;
/// records `(address, data, when)` of every acknowledged one.
fn appender(
    eps: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(u64, String, Instant)>>>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut failed = 0;
        let t0 = Instant::now();
        for n in 0..5_000 {
            if stop.load(Ordering::SeqCst) || t0.elapsed() > Duration::from_secs(120) {
                break;
            }
            let data = format!("entry-{n}");
            let (code, out, _) = trex_cli(&eps, &["append", &data, "--timeout", "3s"], T);
            match (code, out.trim().parse::<u64>()) {
                (Some(0), Ok(addr)) => acked.lock().unwrap().push((addr, data, Instant::now())),
                _ => failed += 1,
            }
        }
        failed
    })
}

fn group_json(eps: &str) -> serde_json::Value {
    let (code, out, err) = trex_cli(eps, &["endpoint", "list", "-w", "json"], T);
    assert_eq!(code, Some(0), "endpoint list: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn voting(g: &serde_json::Value) -> Vec<u64> {
    g["voting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_killed_consensus_node_is_replaced_by_a_new_one_while_a_client_appends() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = trex_up(dir.path(), &["--segment-size", "8MiB"]);
    let base = cluster.base;
    let addr = |i: u16| format!("127.0.0.1:{}", base + i - 1);
    let p4 = free_port();
    let addr4 = format!("127.0.0.1:{p4}");
    let all = format!("{},{addr4}", cluster.eps);

    let g = group_json(&cluster.eps);
    assert_eq!(voting(&g), vec![1, 2, 3], "{g}");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load = appender(all.clone(), stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_millis(800));

    // Node 3 dies; the operator replaces it: remove, then add on a new port.
    kill(
        &format!("consensus --id 3 --listen {}", addr(3)),
        libc::SIGKILL,
    );
    let (code, out, err) = trex_cli(&cluster.eps, &["endpoint", "remove", "3"], T);
    assert_eq!(code, Some(0), "remove: {out}{err}");
    assert!(out.contains("consensus node 3 left the group"), "{out}");
    let (code, out, err) = trex_cli(&cluster.eps, &["endpoint", "add", "4", &addr4], T);
    assert_eq!(code, Some(0), "add: {out}{err}");
    assert!(
        out.contains("--join"),
        "it says how to start the node: {out}"
    );
    // Changes go one at a time, and ids are never reused.
    let (code, _, err) = trex_cli(&cluster.eps, &["endpoint", "add", "3", "127.0.0.1:1"], T);
    assert_ne!(code, Some(0));
    assert!(err.contains("never used before"), "{err}");

    let d4 = dir.path().join("consensus-4");
    let peers = format!("1={},2={},4={addr4}", addr(1), addr(2));
    let _n4 = Node(
        Command::new(env!("CARGO_BIN_EXE_trex"))
            .args(["node", "consensus", "--id", "4", "--listen", &addr4])
            .args(["--join", "--peers", &peers, "--data-dir"])
            .arg(&d4)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The new node catches up with the log.
    let t0 = Instant::now();
    loop {
        let leader = ConsensusClient::node_status(&addr(1), T)
            .or_else(|_| ConsensusClient::node_status(&addr(2), T))
            .unwrap();
        if let Ok(s) = ConsensusClient::node_status(&addr4, T) {
            if s.applied + 5 >= leader.commit && s.applied > 0 {
                break;
            }
        }
        assert!(t0.elapsed() < T, "node 4 did not catch up within {T:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Now one of the original nodes dies too: of {1, 2, 4} two remain, a
    // majority only because node 4 votes.
    kill(
        &format!("consensus --id 1 --listen {}", addr(1)),
        libc::SIGKILL,
    );
    let killed_at = Instant::now();
    let survivors = format!("{},{addr4}", addr(2));
    let (code, out, err) = trex_cli(
        &survivors,
        &[
            "lock",
            "acquire",
            "after-replace",
            "--holder",
            "t",
            "--ttl",
            "30s",
        ],
        T,
    );
    assert_eq!(code, Some(0), "a lock after the replacement: {out}{err}");
    // Appends go on (the sequencer renews its lease through the new group).
    let t0 = Instant::now();
    while acked
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.2 > killed_at)
        .count()
        < 20
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "appends did not resume after node 1 died ({} acknowledged before)",
            acked.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let failed = load.join().unwrap();

    let g = group_json(&survivors);
    assert_eq!(voting(&g), vec![1, 2, 4], "{g}");
    assert_eq!(g["retired"], serde_json::json!([3]), "{g}");
    assert!(g["pending"].is_null(), "{g}");

    // Every acknowledged entry reads back.
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 40, "{} appends acknowledged", acked.len());
    for (a, data, _) in acked.iter() {
        let (code, out, err) = trex_cli(&survivors, &["read", &a.to_string()], T);
        assert_eq!(code, Some(0), "read {a}: {err}");
        assert!(
            out.contains(data.as_str()),
            "address {a}: {out} (wanted {data})"
        );
    }
    eprintln!(
        "{} appends acknowledged, {failed} failed (while nodes died and the group changed)",
        acked.len()
    );
}

#[test]
fn group_changes_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = trex_up(dir.path(), &[]);
    let eps = &cluster.eps;
    let cases: [(&[&str], &str); 4] = [
        (&["endpoint", "remove", "9"], "not in the consensus group"),
        (
            &[
                "endpoint",
                "add",
                "5",
                &format!("127.0.0.1:{}", cluster.base),
            ],
            "already listens",
        ),
        (&["endpoint", "add", "6", "nonsense"], "not HOST:PORT"),
        (
            &["endpoint", "add", "0", "127.0.0.1:1"],
            "between 1 and 2^62",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = trex_cli(eps, args, T);
        assert_ne!(code, Some(0), "{args:?} succeeded: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Nothing changed.
    assert_eq!(voting(&group_json(eps)), vec![1, 2, 3]);
    // A replacement is one change: node 3 leaves and node 8 joins at once
    // (here on node 3's own address), and the group keeps its size.
    let (code, out, err) = trex_cli(
        eps,
        &[
            "endpoint",
            "replace",
            "3",
            "8",
            &format!("127.0.0.1:{}", cluster.base + 2),
            "-w",
            "json",
        ],
        T,
    );
    assert_eq!(code, Some(0), "replace: {out}{err}");
    let g: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(voting(&g), vec![1, 2, 8], "{g}");
    assert_eq!(g["retired"], serde_json::json!([3]), "{g}");
    // A node that is not in its --peers and not joining is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["node", "consensus", "--id", "7", "--listen", "127.0.0.1:1"])
        .args(["--peers", "127.0.0.1:1,127.0.0.1:2", "--data-dir"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    let (code, err) = (out.status.code(), String::from_utf8_lossy(&out.stderr));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--join"), "{err}");
}

/// Long-lived clients follow the group (`GROUP_REFRESH`): the storage units
/// and sequencers of `trex up` keep the consensus endpoints they were started
/// with, yet after all three consensus nodes are replaced one at a time by
/// nodes on other ports (none of the original addresses answers any more),
/// the sequencer still renews its lease and appends go on.
#[test]
fn every_consensus_node_replaced_one_at_a_time_and_the_cluster_follows() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = trex_up(dir.path(), &["--segment-size", "8MiB"]);
    let base = cluster.base;
    let addr = |i: u16| format!("127.0.0.1:{}", base + i - 1);
    let mut nodes: Vec<(u64, String)> = (1..=3).map(|i| (i, addr(i as u16))).collect();
    let mut started = Vec::new();
    for (k, old) in [3u64, 2, 1].into_iter().enumerate() {
        let new = 4 + k as u64;
        let new_addr = format!("127.0.0.1:{}", free_port());
        let old_addr = nodes.iter().find(|(i, _)| *i == old).unwrap().1.clone();
        kill(
            &format!("consensus --id {old} --listen {old_addr}"),
            libc::SIGKILL,
        );
        let live: Vec<String> = nodes
            .iter()
            .filter(|(i, _)| *i != old)
            .map(|(_, a)| a.clone())
            .collect();
        let eps = live.join(",");
        let (code, out, err) = trex_cli(
            &eps,
            &[
                "endpoint",
                "replace",
                &old.to_string(),
                &new.to_string(),
                &new_addr,
            ],
            T,
        );
        assert_eq!(code, Some(0), "replace {old} by {new}: {out}{err}");
        nodes.retain(|(i, _)| *i != old);
        nodes.push((new, new_addr.clone()));
        let peers: Vec<String> = nodes.iter().map(|(i, a)| format!("{i}={a}")).collect();
        started.push(Node(
            Command::new(env!("CARGO_BIN_EXE_trex"))
                .args([
                    "node",
                    "consensus",
                    "--id",
                    &new.to_string(),
                    "--listen",
                    &new_addr,
                ])
                .args(["--join", "--peers", &peers.join(","), "--data-dir"])
                .arg(dir.path().join(format!("consensus-{new}")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        // The new node catches up; the cluster's clients learn the group.
        let t0 = Instant::now();
        while ConsensusClient::node_status(&new_addr, T).map_or(true, |s| s.applied == 0) {
            assert!(t0.elapsed() < T, "node {new} did not catch up");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(11_000));
    }
    // No original address answers; the sequencer and units were started
    // with those alone.
    let now: Vec<String> = nodes.iter().map(|(_, a)| a.clone()).collect();
    let eps = now.join(",");
    assert_eq!(voting(&group_json(&eps)), vec![4, 5, 6]);
    for i in 0..20 {
        let (code, out, err) = trex_cli(&eps, &["append", &format!("after-{i}")], T);
        assert_eq!(code, Some(0), "append after the group moved: {out}{err}");
    }
    let (code, out, err) = trex_cli(&eps, &["status", "-w", "json"], T);
    assert_eq!(code, Some(0), "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!st["sequencer_lease"].is_null(), "the lease is held: {st}");
}
