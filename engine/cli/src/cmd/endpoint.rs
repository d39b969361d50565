//! `trex endpoint status`: each consensus node's own view, asked directly.

use crate::common::{print_json, resolve_endpoints, Endpoints, Format};
use crate::error::CliError;
use clap::Subcommand;
use serde::Serialize;
use trex_consensus::client::ConsensusClient;
use trex_consensus::ConsensusError;
use trex_wire::consensus::NodeStatus;

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Each consensus node's view: leader, ballot, commit and applied index, journal size.
    Status(Endpoints),
}

/// One endpoint and what it answered.
type Row = (String, Result<NodeStatus, ConsensusError>);

pub fn run(cmd: EndpointCmd) -> Result<(), CliError> {
    match cmd {
        EndpointCmd::Status(a) => status(a),
    }
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
