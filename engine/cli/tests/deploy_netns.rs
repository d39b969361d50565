//! The walkthrough of `docs/deploy.md`, followed on network namespaces that
//! stand in for machines (issue 12): three "machines" (10.X.0.1–3) each run a
//! consensus node, a storage unit and (the first two) a sequencer, every one
//! started from its own TOML config file; the first layout is installed; a
//! client appends; then machine 3 "fails": its consensus node is replaced by
//! a new one on machine 4 (`trex endpoint remove`/`add`, `join = true` in the
//! new node's file) and its storage unit by a spare on machine 4; the client
//! appends again and reads everything back.
//!
//! Root, `ip` and `nft` are needed; elsewhere the test prints `skipped: …` and
//! passes without running.

mod common;
mod netns_bed;

use common::trex_cli;
use netns_bed::{wait_until, Bed, NodeProc};

/// A node process: its machine, its role, the process (killed on drop).
type Proc = (u8, &'static str, NodeProc);
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const CLUSTER_ID: &str = "7";

/// Writes `name` under `dir` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Runs the CLI from the test's own namespace (it reaches every machine over
/// the bridge), with the cluster id; panics unless it exits 0.
fn cli(eps: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--cluster-id", CLUSTER_ID]);
    let (code, out, err) = trex_cli(eps, &all, T);
    assert_eq!(code, Some(0), "trex {}: {out}{err}", args.join(" "));
    out
}

#[test]
fn three_machines_from_config_files_replace_a_consensus_node_and_a_unit() {
    let dir = tempfile::tempdir().unwrap();
    let bed = match Bed::new(&[1, 2, 3, 4], dir.path()) {
        Ok(b) => b,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let ip = |m: u8| bed.ip(m);
    let eps = format!("{}:7400,{}:7400,{}:7400", ip(1), ip(2), ip(3));
    let mut procs: Vec<Proc> = Vec::new();
    let start = |m: u8, role: &'static str, conf: &str| -> Proc {
        let args: Vec<String> = ["node", role, "--config", conf]
            .iter()
            .map(|s| s.to_string())
            .collect();
        (m, role, bed.spawn(m, &args))
    };
    let consensus_conf = |m: u8, id: u8, peers: &str, join: bool| {
        let d = dir.path().join(format!("m{m}-consensus"));
        write(
            dir.path(),
            &format!("m{m}-consensus.toml"),
            &format!(
                "id = {id}\nlisten = \"{}:7400\"\npeers = [{peers}]\ndata-dir = \"{}\"\ncluster-id = {CLUSTER_ID}\njoin = {join}\n",
                ip(m),
                d.display()
            ),
        )
    };
    let storage_conf = |m: u8| {
        let d = dir.path().join(format!("m{m}-unit"));
        write(
            dir.path(),
            &format!("m{m}-storage.toml"),
            &format!(
                "listen = \"0.0.0.0:7420\"\nadvertise = \"{}:7420\"\ndata-dir = \"{}\"\nendpoints = \"{eps}\"\ncluster-id = {CLUSTER_ID}\nsync = \"always\"\nsegment-size = \"8MiB\"\n",
                ip(m),
                d.display()
            ),
        )
    };
    let sequencer_conf = |m: u8| {
        write(
            dir.path(),
            &format!("m{m}-sequencer.toml"),
            &format!(
                "listen = \"{}:7410\"\nendpoints = \"{eps}\"\ncluster-id = {CLUSTER_ID}\nid = {}\nrepair-every = \"1s\"\n",
                ip(m),
                7410 + u32::from(m)
            ),
        )
    };

    // First start, in the order of docs/deploy.md.
    let peers: String = (1..=3)
        .map(|m| format!("\"{}:7400\"", ip(m)))
        .collect::<Vec<_>>()
        .join(", ");
    for m in 1..=3u8 {
        procs.push(start(m, "consensus", &consensus_conf(m, m, &peers, false)));
    }
    wait_until("a consensus leader", T, || {
        trex_cli(&eps, &["endpoint", "status", "--cluster-id", CLUSTER_ID], T)
            .1
            .contains("self")
    });
    for m in 1..=3u8 {
        procs.push(start(m, "storage", &storage_conf(m)));
    }
    wait_until("three units registered", T, || {
        let (_, out, _) = trex_cli(
            &eps,
            &["members", "-w", "json", "--cluster-id", CLUSTER_ID],
            T,
        );
        out.matches("storage").count() == 3
    });
    let members = cli(&eps, &["members"]);
    for m in 1..=3u8 {
        assert!(
            members.contains(&format!("{}:7420", ip(m))),
            "units register their advertised address, not 0.0.0.0: {members}"
        );
    }
    cli(
        &eps,
        &["layout", "init", "--stripes", "1", "--replicas", "3"],
    );
    for m in 1..=2u8 {
        procs.push(start(m, "sequencer", &sequencer_conf(m)));
    }
    let append = |tag: &str, n: usize| -> Vec<(u64, String)> {
        (0..n)
            .map(|i| {
                let data = format!("{tag}-{i}");
                let out = cli(&eps, &["append", &data]);
                (out.trim().parse().expect("an address"), data)
            })
            .collect()
    };
    wait_until("a sequencer serving", T, || {
        trex_cli(&eps, &["append", "warm-up", "--cluster-id", CLUSTER_ID], T).0 == Some(0)
    });
    let mut written = append("before", 20);

    // Machine 3 fails: its consensus node and its unit die.
    procs.retain(|(m, _, _)| *m != 3);
    // The consensus node is replaced by a new one on machine 4.
    cli(&eps, &["endpoint", "remove", "3"]);
    cli(&eps, &["endpoint", "add", "4", &format!("{}:7400", ip(4))]);
    let peers4 = format!(
        "\"1={}:7400\", \"2={}:7400\", \"4={}:7400\"",
        ip(1),
        ip(2),
        ip(4)
    );
    procs.push(start(4, "consensus", &consensus_conf(4, 4, &peers4, true)));
    // The unit is replaced by a spare on machine 4: the failure detector takes
    // the dead one out and lets the spare join the short chain.
    procs.push(start(4, "storage", &storage_conf(4)));
    let eps4 = format!("{}:7400,{}:7400,{}:7400", ip(1), ip(2), ip(4));
    wait_until(
        "the chain back at three replicas",
        Duration::from_secs(60),
        || {
            let (code, out, _) = trex_cli(
                &eps4,
                &["status", "-w", "json", "--cluster-id", CLUSTER_ID],
                T,
            );
            code == Some(0)
                && serde_json::from_str::<serde_json::Value>(&out)
                    .is_ok_and(|v| v["degraded"].as_array().is_some_and(|d| d.is_empty()))
                && out.contains(&format!("{}:7420", ip(4)))
        },
    );
    let group = cli(&eps4, &["endpoint", "list", "-w", "json"]);
    let g: serde_json::Value = serde_json::from_str(&group).unwrap();
    let voting: Vec<u64> = g["voting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(voting, vec![1, 2, 4], "{group}");

    // The new consensus node votes: with machine 1's node also gone, 2 and 4
    // are the majority.
    procs.retain(|(m, role, _)| !(*m == 1 && *role == "consensus"));
    written.extend(append("after", 20));
    for (a, data) in &written {
        let out = cli(&eps4, &["read", &a.to_string()]);
        assert!(
            out.contains(data.as_str()),
            "address {a}: {out} (wanted {data})"
        );
    }
    drop(procs);
}
