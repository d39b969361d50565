//! `trex repair`: restore replication with empty spare units.

use crate::common::{print_json, resolve_endpoints, Endpoints, Format};
use crate::error::{usage, CliError};
use clap::Args;
use trex_log::Log;

#[derive(Args)]
pub struct RepairArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// Replicas every chain should have (default: as many as the longest
    /// chain has now).
    #[arg(long)]
    replicas: Option<usize>,
}

pub fn run(a: RepairArgs) -> Result<(), CliError> {
    if a.replicas == Some(0) {
        return Err(usage!("--replicas must be at least 1"));
    }
    let mut log = Log::connect_to(&resolve_endpoints(&a.ep)?, a.ep.cluster_id)?;
    let r = log.repair(a.replicas, &mut |line| eprintln!("{line}"))?;
    if a.ep.format == Format::Json {
        let joined: Vec<_> = r
            .joined
            .iter()
            .map(|(stripe, unit)| serde_json::json!({ "stripe": stripe, "unit": unit }))
            .collect();
        print_json(&serde_json::json!({
            "epoch": r.epoch,
            "joined": joined,
            "copied": r.copied,
            "holes": r.holes,
            "present": r.present,
            "rewritten": r.rewritten,
        }));
        return Ok(());
    }
    if r.joined.is_empty() {
        println!(
            "nothing to repair: every chain is complete (layout epoch {})",
            r.epoch
        );
        return Ok(());
    }
    let joined: Vec<String> = r
        .joined
        .iter()
        .map(|(s, u)| format!("unit {u} -> stripe {s}"))
        .collect();
    println!(
        "repaired: {}; {} entries and {} holes copied, {} already there; layout epoch {}",
        joined.join(", "),
        r.copied,
        r.holes,
        r.present,
        r.epoch
    );
    Ok(())
}
