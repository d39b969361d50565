//! `trex endpoint`: the consensus group. `status` asks each node for its own
//! view; `list`, `add` and `remove` read and change the group through its log
//! (one node at a time; see `docs/consensus.md`, "Changing the group").

use crate::common::{
    check_address, consensus_client, print_json, resolve_endpoints, Endpoints, Format,
};
use crate::error::{failed, CliError};
use clap::Subcommand;
use serde::Serialize;
use std::time::{Duration, Instant};
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::sm::{GroupView, Op, Refusal};
use trex_consensus::ConsensusError;
use trex_wire::consensus::NodeStatus;

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Each consensus node's view: leader, ballot, commit and applied index, journal size.
    Status(Endpoints),
    /// The consensus group as its log records it: the voting nodes, a change
    /// in progress, and the ids retired.
    List(Endpoints),
    /// Add a consensus node to the group (one at a time; waits until it
    /// votes). Then start it with `trex node consensus --id ID --listen
    /// HOST:PORT --join --peers <the group>` (the command prints it).
    Add {
        /// The new node's id: never used in this group before.
        id: u64,
        /// Where it listens for its peers and clients (IP:PORT).
        addr: String,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Replace consensus node OLD by a new node ID at HOST:PORT in one change
    /// (the group keeps its size; HOST:PORT may be OLD's). Waits until it is in
    /// effect; then start the new node with --join (the command prints how).
    Replace {
        /// The node leaving (`trex endpoint list`).
        old: u64,
        /// The new node's id: never used in this group before.
        id: u64,
        /// Where the new node listens (IP:PORT).
        addr: String,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Remove a consensus node from the group (one at a time; waits until
    /// the change is in effect). To replace a dead node: remove it, then add
    /// its replacement. Stop the removed node afterwards.
    Remove {
        /// The node's id (`trex endpoint list`).
        id: u64,
        #[command(flatten)]
        ep: Endpoints,
    },
}

/// One endpoint and what it answered.
type Row = (String, Result<NodeStatus, ConsensusError>);

pub fn run(cmd: EndpointCmd) -> Result<(), CliError> {
    match cmd {
        EndpointCmd::Status(a) => status(a),
        EndpointCmd::List(a) => list(a),
        EndpointCmd::Add { id, addr, ep } => change(None, Some((id, addr)), &ep),
        EndpointCmd::Remove { id, ep } => change(Some(id), None, &ep),
        EndpointCmd::Replace { old, id, addr, ep } => change(Some(old), Some((id, addr)), &ep),
    }
}

fn list(a: Endpoints) -> Result<(), CliError> {
    let g = consensus_client(&a)?.group(&Op::Group)?;
    match a.format {
        Format::Json => print_json(&group_json(&g)),
        Format::Table => {
            if g.current.is_empty() {
                println!("the group is not recorded yet: no leader has been elected since the cluster started; retry in a moment");
                return Ok(());
            }
            println!("{:<8}{:<24}STATE", "ID", "ADDRESS");
            let next = g.pending.as_ref();
            let mut ids: Vec<u64> = g.current.keys().copied().collect();
            if let Some((_, n)) = next {
                ids.extend(n.keys().filter(|i| !g.current.contains_key(i)));
            }
            for id in ids {
                let addr = g
                    .current
                    .get(&id)
                    .or_else(|| next.and_then(|(_, n)| n.get(&id)))
                    .cloned()
                    .unwrap_or_default();
                let state = match next {
                    Some((from, n)) if !n.contains_key(&id) => {
                        format!("voting; leaves at slot {from}")
                    }
                    Some((from, _)) if !g.current.contains_key(&id) => {
                        format!("joins at slot {from}")
                    }
                    _ => "voting".to_string(),
                };
                println!("{id:<8}{addr:<24}{state}");
            }
            if !g.retired.is_empty() {
                let r: Vec<String> = g.retired.iter().map(|i| i.to_string()).collect();
                println!("retired ids (never reused): {}", r.join(", "));
            }
        }
    }
    Ok(())
}

/// The group as JSON: `{"voting":[{"id","addr"}],"pending":null|{"from_slot",
/// "nodes":[…]},"retired":[ids]}`.
fn group_json(g: &GroupView) -> serde_json::Value {
    let nodes = |m: &std::collections::BTreeMap<u64, String>| {
        m.iter()
            .map(|(id, addr)| serde_json::json!({"id": id, "addr": addr}))
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "voting": nodes(&g.current),
        "pending": g.pending.as_ref().map(|(from, n)| serde_json::json!({"from_slot": from, "nodes": nodes(n)})),
        "retired": g.retired,
    })
}

/// `trex endpoint add` (`join` given), `remove` (`leave` given) or
/// `replace` (both): submits the change, then waits (within --timeout,
/// retrying while an earlier change is finishing) until it is in effect, and
/// prints the group (`-w json`: as `trex endpoint list` does).
fn change(leave: Option<u64>, join: Option<(u64, String)>, ep: &Endpoints) -> Result<(), CliError> {
    if let Some((_, a)) = &join {
        check_address(a, "the new node's address", "10.0.0.4:7400")?;
    }
    let mut c = consensus_client(ep)?;
    let op = match (leave, &join) {
        (Some(old), Some((id, a))) => Op::GroupReplace {
            old,
            id: *id,
            addr: a.trim().to_string(),
        },
        (None, Some((id, a))) => Op::GroupAdd {
            id: *id,
            addr: a.trim().to_string(),
        },
        (Some(id), None) => Op::GroupRemove { id },
        (None, None) => unreachable!("every endpoint command changes something"),
    };
    let deadline = Instant::now() + ep.timeout;
    let mut g = loop {
        match c.group(&op) {
            Ok(g) => break g,
            Err(ConsensusError::Refused(r))
                if r.code == Refusal::ChangeInProgress && Instant::now() < deadline =>
            {
                eprintln!("waiting: {r}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    // In effect once no change is pending (the leader fills the slots up to
    // it with no-ops, so this takes milliseconds on a healthy group).
    while g.pending.is_some() {
        if Instant::now() >= deadline {
            let from = g.pending.as_ref().map_or(0, |(f, _)| *f);
            return Err(failed!(
                "the change is recorded and takes effect at slot {from}, which the group has not reached within --timeout; check `trex endpoint status` (is a quorum up?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
        g = c.group(&Op::Group)?;
    }
    if ep.format == Format::Json {
        print_json(&group_json(&g));
        return Ok(());
    }
    let peers = g
        .current
        .iter()
        .map(|(i, a)| format!("{i}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    if let Some(old) = leave {
        println!("consensus node {old} left the group (its id is retired)");
    }
    match &join {
        Some((id, a)) => {
            println!("consensus node {id} at {a} is in the group; the group is now {peers}");
            println!(
                "start it (if it is not running) with:\n  trex node consensus --id {id} --listen {a} --join --peers {peers} --data-dir <an empty directory>"
            );
        }
        None => println!("the group is now {peers}"),
    }
    if let Some(old) = leave {
        println!("stop node {old} if it still runs, and drop its address from every --endpoints list and config file");
    }
    Ok(())
}

fn status(a: Endpoints) -> Result<(), CliError> {
    let eps = resolve_endpoints(&a)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut reachable = 0;
    for ep in eps.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let st = ConsensusClient::node_status_in(ep, a.timeout, a.cluster_id);
        reachable += usize::from(st.is_ok());
        rows.push((ep.to_string(), st));
    }
    match a.format {
        Format::Json => print_json(&rows.iter().map(row_json).collect::<Vec<_>>()),
        Format::Table => print_table(&rows),
    }
    if let Some((_, Err(e))) = rows
        .iter()
        .find(|(_, st)| matches!(st, Err(e) if e.is_fatal()))
    {
        // A node of another cluster (or a foreign server): waiting won't help.
        return Err(CliError::from(e.clone()));
    }
    if reachable == 0 {
        return Err(CliError::Unavailable(
            "no consensus node answered; start them with `trex node consensus` (or `trex up`)"
                .into(),
        ));
    }
    Ok(())
}

/// One endpoint in `trex endpoint status -w json` (docs/cli.md).
#[derive(Serialize)]
struct RowJson<'a> {
    endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leading: Option<bool>,
    /// `counter.node`.
    #[serde(skip_serializing_if = "Option::is_none")]
    ballot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    journal_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn row_json((ep, st): &Row) -> RowJson<'_> {
    let s = st.as_ref().ok();
    RowJson {
        endpoint: ep,
        id: s.map(|s| s.id),
        leader: s.map(|s| s.leader),
        leading: s.map(|s| s.leading),
        ballot: s.map(|s| format!("{}.{}", s.promised.counter, s.promised.node)),
        commit: s.map(|s| s.commit),
        applied: s.map(|s| s.applied),
        snapshot: s.map(|s| s.snapshot),
        journal_bytes: s.map(|s| s.journal_bytes),
        error: st.as_ref().err().map(|e| e.to_string()),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<22}{:<5}{:<8}{:<9}{:<10}{:<10}{:<10}JOURNAL",
        "ENDPOINT", "ID", "LEADER", "BALLOT", "COMMIT", "APPLIED", "SNAPSHOT"
    );
    for (ep, st) in rows {
        match st {
            Ok(s) => println!(
                "{ep:<22}{:<5}{:<8}{:<9}{:<10}{:<10}{:<10}{} bytes",
                s.id,
                if s.leading {
                    "self".to_string()
                } else if s.leader == 0 {
                    "-".to_string()
                } else {
                    s.leader.to_string()
                },
                format!("{}.{}", s.promised.counter, s.promised.node),
                s.commit,
                s.applied,
                s.snapshot,
                s.journal_bytes
            ),
            Err(e) => println!("{ep:<22}unreachable: {e}"),
        }
    }
}
