//! `trex endpoint status`: each consensus node's own view, asked directly.

use crate::common::{resolve_endpoints, Format, ShowArgs};
use crate::error::CliError;
use clap::Subcommand;
use trex_consensus::client::ConsensusClient;
use trex_consensus::ConsensusError;
use trex_wire::consensus::NodeStatus;

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Each consensus node's view: leader, ballot, commit and applied index, journal size.
    Status(ShowArgs),
}

/// One endpoint and what it answered.
type Row = (String, Result<NodeStatus, ConsensusError>);

pub fn run(cmd: EndpointCmd) -> Result<(), CliError> {
    match cmd {
        EndpointCmd::Status(a) => status(a),
    }
}

fn status(a: ShowArgs) -> Result<(), CliError> {
    let eps = resolve_endpoints(&a.ep)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut reachable = 0;
    for ep in eps.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let st = ConsensusClient::node_status_in(ep, a.ep.timeout, a.ep.cluster_id);
        reachable += usize::from(st.is_ok());
        rows.push((ep.to_string(), st));
    }
    match a.format {
        Format::Json => print_json(&rows),
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

fn print_json(rows: &[Row]) {
    let items: Vec<String> = rows
        .iter()
        .map(|(ep, st)| match st {
            Ok(s) => format!(
                "{{\"endpoint\":\"{ep}\",\"id\":{},\"leader\":{},\"leading\":{},\"ballot\":\"{}.{}\",\"commit\":{},\"applied\":{},\"snapshot\":{},\"journal_bytes\":{}}}",
                s.id, s.leader, s.leading, s.promised.counter, s.promised.node, s.commit, s.applied, s.snapshot, s.journal_bytes
            ),
            Err(e) => format!("{{\"endpoint\":\"{ep}\",\"error\":{e:?}}}"),
        })
        .collect();
    println!("[{}]", items.join(","));
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
