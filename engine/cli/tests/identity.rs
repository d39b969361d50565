//! Issue 12, identity and exclusivity, on real processes: a node id belongs to
//! one live node; a data directory to one process; `trex up` says at once when
//! its directory or a port is taken, and keeps the logs of earlier runs.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::trex_cli;

fn trex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A second storage unit started elsewhere with the id of a live unit is
/// refused and exits at once; the first keeps its id, its address in the
/// members and its entries. Before, the second took the id over: `trex read`
/// answered unwritten and `trex tail` filled acknowledged addresses with junk.
#[test]
fn a_second_unit_with_a_live_units_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let cluster = common::trex_up_at(
        dir.path(),
        base,
        &["--stripes", "1", "--replicas", "1", "--units", "1"],
    );
    let eps = cluster.eps.clone();
    let within = Duration::from_secs(30);
    for e in ["a", "b", "c"] {
        let (code, _, err) = trex_cli(&eps, &["append", e], within);
        assert_eq!(code, Some(0), "{err}");
    }
    let id = (base + 20).to_string();
    let other = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let t0 = Instant::now();
    let out = trex(&[
        "node",
        "storage",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        other.path().to_str().unwrap(),
        "--endpoints",
        &eps,
        "--id",
        &id,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("belongs to a live storage"),
        "{}",
        text(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "refused at once");
    let (code, out, err) = trex_cli(&eps, &["members"], within);
    assert_eq!(code, Some(0), "{err}");
    let row = out.lines().find(|l| l.contains(&id)).unwrap_or_default();
    assert!(row.contains(&format!("127.0.0.1:{}", base + 20)), "{out}");
    let (code, out, err) = trex_cli(&eps, &["read", "0", "--count", "3"], within);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "0\ta\n1\tb\n2\tc\n");
}

/// A unit's data directory keeps its id: started again with another `--id`,
/// it refuses (usage error) instead of serving that data under a new name.
#[test]
fn a_data_directory_keeps_its_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().to_str().unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["node", "storage", "--listen", &listen, "--data-dir", data])
        .args(["--id", "4242"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "unit did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("NODE_ID"))
            .unwrap()
            .trim(),
        "4242"
    );
    let out = trex(&[
        "node",
        "storage",
        "--listen",
        &listen,
        "--data-dir",
        data,
        "--id",
        "7",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("belongs to node id 4242"),
        "{}",
        text(&out.stderr)
    );
}

/// A second consensus process on a running node's journal is refused at once
/// (before, it truncated the running node's log files); so is a second `trex
/// up` on a running cluster's data directory, and a `trex up` whose ports are
/// taken — each naming the reason. The logs of the first run are kept.
#[test]
fn a_data_directory_and_the_ports_belong_to_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let _cluster = common::trex_up_at(dir.path(), base, &[]);
    let journal = dir.path().join("consensus-1");
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let journal_bytes: u64 = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| size(&e.unwrap().path()))
        .sum();
    let peers = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        common::free_port(),
        base + 1,
        base + 2
    );
    let listen = peers.split(',').next().unwrap().to_string();
    let t0 = Instant::now();
    let out = trex(&[
        "node",
        "consensus",
        "--id",
        "1",
        "--listen",
        &listen,
        "--peers",
        &peers,
        "--data-dir",
        journal.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("in use by another process"),
        "{}",
        text(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let after: u64 = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| size(&e.unwrap().path()))
        .sum();
    assert!(after >= journal_bytes, "the running node's journal shrank");

    // A second `trex up` on the same directory.
    let t0 = Instant::now();
    let out = trex(&[
        "up",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--base-port",
        &common::free_base().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("in use by another process"),
        "{}",
        text(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(5));

    // A `trex up` elsewhere whose ports are taken (the running cluster's).
    let other = tempfile::tempdir().unwrap();
    let out = trex(&[
        "up",
        "--data-dir",
        other.path().to_str().unwrap(),
        "--base-port",
        &base.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("port {base} is not free")),
        "{}",
        text(&out.stderr)
    );
    // The first run's logs are still there (appended to, never truncated).
    let log = std::fs::read_to_string(dir.path().join("logs").join("unit-1.log")).unwrap();
    assert!(log.contains("listening on"), "{log}");
}

/// The sequencer's lease is not a user lock: `trex lock release sequencer
/// --token T` (T as `trex status` prints it) and `trex lock acquire
/// sequencer` are refused (exit 1, naming the reason), and appends go on.
/// Before, the impostor held the lease and every append stopped.
#[test]
fn the_sequencer_lease_is_not_a_user_lock() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::trex_up(dir.path(), &[]);
    let eps = cluster.eps.clone();
    let within = Duration::from_secs(30);
    let (code, out, err) = trex_cli(&eps, &["lock", "show", "sequencer"], within);
    assert_eq!(code, Some(0), "reading it is fine: {err}");
    let token = out
        .split("token ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_string();
    for args in [
        vec!["lock", "release", "sequencer", "--token", &token],
        vec!["lock", "acquire", "sequencer"],
        vec!["lock", "renew", "sequencer", "--token", &token],
        vec!["lock", "acquire", "trex.mine"],
    ] {
        let (code, _, err) = trex_cli(&eps, &args, within);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("system lease"), "{args:?}: {err}");
    }
    for i in 0..3 {
        let (code, _, err) = trex_cli(&eps, &["append", &format!("still-{i}")], within);
        assert_eq!(code, Some(0), "{err}");
    }
}

/// `trex members remove ID` removes a member that is gone (a benchmark's or a
/// dead node's registration), and refuses, naming the reason, a node the
/// layout names, a node seen in the last 15 s (a standby sequencer, a
/// fresh registration), or an unknown id.
#[test]
fn a_stale_member_can_be_removed_and_a_needed_one_cannot() {
    use trex_consensus::client::{ConsensusClient, Submit};
    use trex_consensus::sm::{Op, Role};
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let cluster = common::trex_up_at(dir.path(), base, &[]);
    let eps = cluster.eps.clone();
    let within = Duration::from_secs(30);
    let mut c = ConsensusClient::new(&eps, within).unwrap();
    c.submit_ok(&Op::Register {
        id: 999,
        role: Role::Storage,
        addr: "127.0.0.1:9".into(),
    })
    .unwrap();
    let unit = (base + 20).to_string();
    let (_, status, _) = trex_cli(&eps, &["status"], within);
    let active: u16 = status
        .lines()
        .find_map(|l| l.strip_prefix("sequencer  "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sequencer in {status}"));
    let standby = if active == base + 10 {
        base + 11
    } else {
        base + 10
    }
    .to_string();
    for (id, why) in [
        (unit.as_str(), "named by layout"),
        (standby.as_str(), "stop it first"),
        ("999", "stop it first"),
        ("4242", "not a member"),
    ] {
        let (code, _, err) = trex_cli(&eps, &["members", "remove", id], within);
        assert_eq!(code, Some(1), "remove {id}: {err}");
        assert!(err.contains(why), "remove {id}: {err}");
    }
    // Silent for 15 s: it goes.
    std::thread::sleep(Duration::from_millis(15_500));
    let (code, out, err) = trex_cli(&eps, &["members", "remove", "999"], within);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("removed node 999"), "{out}");
    let (_, out, _) = trex_cli(&eps, &["members"], within);
    assert!(!out.lines().any(|l| l.starts_with("999 ")), "{out}");
    assert!(out.contains(&unit), "the others stay: {out}");
}

/// The replication factor is a target the cluster stores: after one unit of
/// every stripe is gone, `trex status` shows each chain below it and `trex
/// repair` (with no spare) says a spare is missing — before, both judged the
/// chains against the longest one left and reported "every chain is
/// complete". Lowering the factor with `trex layout replicas 1` makes them
/// complete.
#[test]
fn the_replication_factor_is_stored_and_repair_works_toward_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let cluster = common::trex_up_at(dir.path(), base, &["--repair-every", "0s"]);
    let eps = cluster.eps.clone();
    let within = Duration::from_secs(30);
    let (code, out, err) = trex_cli(&eps, &["layout", "replicas"], within);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "replication factor 2");
    // One unit of each stripe dies; appends take them out.
    for o in [21, 23] {
        common::kill(
            &format!("storage --listen 127.0.0.1:{} ", base + o),
            libc::SIGKILL,
        );
    }
    for i in 0..4 {
        let (code, _, err) = trex_cli(&eps, &["append", &format!("e{i}")], within);
        assert_eq!(code, Some(0), "{err}");
    }
    let (code, out, err) = trex_cli(&eps, &["status"], within);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("replicas   stripe 0: 1, stripe 1: 1"), "{out}");
    assert!(out.contains("stripe 0 has 1 of 2 replicas"), "{out}");
    assert!(out.contains("stripe 1 has 1 of 2 replicas"), "{out}");
    let (code, out, err) = trex_cli(&eps, &["repair"], within);
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(err.contains("spare"), "{err}");
    assert!(!out.contains("complete"), "{out}");
    // A factor of 1: nothing is missing any more.
    let (code, out, err) = trex_cli(&eps, &["layout", "replicas", "1"], within);
    assert_eq!(
        (code, out.trim()),
        (Some(0), "replication factor 1"),
        "{err}"
    );
    let (_, out, _) = trex_cli(&eps, &["status"], within);
    assert!(!out.contains("degraded"), "{out}");
    let (code, out, err) = trex_cli(&eps, &["repair"], within);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("every chain is complete"), "{out}");
    let (code, _, err) = trex_cli(&eps, &["layout", "replicas", "17"], within);
    assert_eq!(code, Some(2), "{err}");
}

/// A node listening on every interface registers the address clients should
/// use: `--advertise HOST:PORT`. Without it, a wildcard `--listen` is a usage
/// error (it used to register `0.0.0.0:PORT`, which no client can reach).
#[test]
fn a_node_registers_the_address_it_advertises() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::trex_up(dir.path(), &[]);
    let eps = cluster.eps.clone();
    let port = common::free_port();
    let data = dir.path().join("extra-unit");
    let out = trex(&[
        "node",
        "storage",
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--data-dir",
        data.to_str().unwrap(),
        "--endpoints",
        &eps,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--advertise"),
        "{}",
        text(&out.stderr)
    );
    let mut unit = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["node", "storage", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--advertise", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .args(["--endpoints", &eps, "--id", "777"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let within = Duration::from_secs(30);
    loop {
        let (_, out, _) = trex_cli(&eps, &["members"], within);
        if let Some(row) = out.lines().find(|l| l.starts_with("777 ")) {
            assert!(row.contains(&format!("127.0.0.1:{port}")), "{row}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not registered: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = unit.kill();
    let _ = unit.wait();
}
