//! `trex members`: the cluster's members, read through the consensus log;
//! `trex members remove ID` removes one that is gone.

use crate::common::{consensus_client, print_json, relative, rfc3339, unix_ms, Endpoints, Format};
use crate::error::{failed, CliError};
use clap::{Args, Subcommand};
use serde::Serialize;
use trex_consensus::client::Submit;
use trex_consensus::sm::{Op, Role, MEMBER_LIVE_MS};

/// `trex members [remove ID]`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MembersArgs {
    #[command(subcommand)]
    cmd: Option<MembersCmd>,
    #[command(flatten)]
    show: Endpoints,
}

#[derive(Subcommand)]
enum MembersCmd {
    /// Remove a member that is gone (a storage unit or sequencer no longer
    /// running, or one a benchmark registered). Refused for a node the layout
    /// names, a consensus node, or a node seen in the last 15 s (it would
    /// register again).
    Remove {
        /// The member's node id (`trex members` lists them).
        id: u64,
        #[command(flatten)]
        ep: Endpoints,
    },
}

pub fn run(a: MembersArgs) -> Result<(), CliError> {
    match a.cmd {
        None => list(a.show),
        Some(MembersCmd::Remove { id, ep }) => remove(id, &ep),
    }
}

fn remove(id: u64, ep: &Endpoints) -> Result<(), CliError> {
    let mut c = consensus_client(ep)?;
    let members = c.members()?;
    let Some(m) = members.get(&id) else {
        return Err(failed!(
            "node {id} is not a member (`trex members` lists them)"
        ));
    };
    if m.role == Role::Consensus {
        return Err(failed!(
            "node {id} is a consensus node: change the consensus group with `trex endpoint remove {id}`"
        ));
    }
    let (_, layout) = c.layout()?;
    if let Some(p) = layout {
        let in_chain = p
            .segments
            .iter()
            .any(|s| s.stripes.iter().any(|ch| ch.contains(&id)));
        if in_chain || p.sequencer == id {
            return Err(failed!(
                "node {id} is named by layout epoch {} ({}); it stays a member while the layout needs it (a failed unit is taken out by the active sequencer, or `trex repair`)",
                p.epoch,
                if in_chain { "in a chain" } else { "as its sequencer" }
            ));
        }
    }
    let idle = unix_ms().saturating_sub(m.seen_ms);
    if idle < MEMBER_LIVE_MS {
        return Err(failed!(
            "node {id} ({} at {}) was seen {idle} ms ago: stop it first, or it registers again; retry once it has been silent for {} s",
            m.role.name(),
            m.addr,
            MEMBER_LIVE_MS / 1000
        ));
    }
    c.submit_ok(&Op::Deregister { id })?;
    match ep.format {
        Format::Json => print_json(&serde_json::json!({
            "removed": id,
            "role": m.role.name(),
            "addr": m.addr,
        })),
        Format::Table => println!("removed node {id} ({} at {})", m.role.name(), m.addr),
    }
    Ok(())
}

/// One member in `trex members -w json` (docs/cli.md).
#[derive(Serialize)]
struct MemberJson<'a> {
    id: u64,
    role: &'static str,
    addr: &'a str,
    registered_ms: u64,
    registered_at: String,
    seen_ms: u64,
    seen_at: String,
}

fn list(a: Endpoints) -> Result<(), CliError> {
    let m = consensus_client(&a)?.members()?;
    match a.format {
        Format::Json => {
            let rows: Vec<MemberJson> = m
                .iter()
                .map(|(id, m)| MemberJson {
                    id: *id,
                    role: m.role.name(),
                    addr: &m.addr,
                    registered_ms: m.registered_ms,
                    registered_at: rfc3339(m.registered_ms),
                    seen_ms: m.seen_ms,
                    seen_at: rfc3339(m.seen_ms),
                })
                .collect();
            print_json(&rows);
        }
        Format::Table => {
            println!("{:<8}{:<11}{:<24}LAST SEEN", "ID", "ROLE", "ADDRESS");
            let now = unix_ms();
            for (id, m) in &m {
                println!(
                    "{id:<8}{:<11}{:<24}{} ({})",
                    m.role.name(),
                    m.addr,
                    rfc3339(m.seen_ms),
                    relative(m.seen_ms, now)
                );
            }
        }
    }
    Ok(())
}
