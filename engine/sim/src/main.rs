//! `trex-sim`: runs a deterministic simulator over many seeds, or replays one:
//! the consensus group's (default) or the whole cluster's (`--cluster`).
//! `trex-sim --seed 42` replays seed 42 exactly.

use clap::Parser;
use std::process::ExitCode;
use std::time::Instant;
use trex_sim::cluster_sim::{run_cluster, ClusterOptions};
use trex_sim::consensus_sim::{run, SimOptions};

#[derive(Parser)]
#[command(
    name = "trex-sim",
    about = "Deterministic simulation of the consensus group, or (--cluster) of a whole cluster"
)]
struct Args {
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run this many seeds, from --first.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Simulated milliseconds under faults per seed (default: 20000 for the
    /// consensus group, 10000 for a cluster).
    #[arg(long)]
    safety_ms: Option<u64>,
    /// Simulate whole clusters (units, sequencers, consensus state machine,
    /// log clients and a follower) and check P1-P5 of TESTING.md.
    #[arg(long)]
    cluster: bool,
    /// The full-group restart scenario: no compaction, small promise
    /// reports, every node crashes at once at the end of the safety phase.
    #[arg(long)]
    full_restart: bool,
    /// The deaf-leader scenario: after the safety phase the leader receives
    /// nothing (it still sends) until the others elect a leader and serve.
    #[arg(long)]
    deaf_leader: bool,
    /// With --cluster: operations per client.
    #[arg(long, default_value_t = 40)]
    ops: usize,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = SimOptions {
        safety_ms: a.safety_ms.unwrap_or(20_000),
        full_restart: a.full_restart,
        deaf_leader: a.deaf_leader,
        ..SimOptions::default()
    };
    let copts = ClusterOptions {
        safety_ms: a.safety_ms.unwrap_or(10_000),
        ops: a.ops,
        ..ClusterOptions::default()
    };
    let flag = if a.cluster { " --cluster" } else { "" };
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first..a.first + a.seeds).collect(),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        if a.cluster {
            match run_cluster(*seed, copts) {
                Ok(r) => {
                    if a.seed.is_some() || (i + 1) % 10 == 0 || i + 1 == seeds.len() {
                        eprintln!(
                            "[{}/{}] seed {seed}: ok ({} events, {} appends acked, {} failed, {} observations, {} holes, {} epochs, {} spares joined, {} copied, {} unit crashes, {} sequencer pauses, {} client pauses, {} stale writes refused, {} dropped; trace {:016x}) {:.1?}",
                            i + 1, seeds.len(), r.events, r.acked, r.failed_appends, r.observations, r.holes, r.epochs, r.spares_joined, r.copied, r.unit_crashes, r.sequencer_pauses, r.client_pauses, r.stale_refused, r.dropped, r.trace_hash, started.elapsed()
                        );
                    }
                }
                Err(e) => {
                    eprintln!("FAILED {e}\n  replay: cargo run --release -p trex-sim --bin trex-sim --{flag} --seed {seed}");
                    failed.push(*seed);
                }
            }
            continue;
        }
        match run(*seed, opts) {
            Ok(r) => {
                if a.seed.is_some() || (i + 1) % 10 == 0 || i + 1 == seeds.len() {
                    eprintln!(
                        "[{}/{}] seed {seed}: ok ({} nodes, {} events, {} acked, {} slots, {} crashes, {} partitions, {} dropped; {} fenced lock ops, {} stale refused; {} journal records at the restart; {} ms to replace a deaf leader; trace {:016x}) {:.1?}",
                        i + 1, seeds.len(), r.nodes, r.events, r.acked, r.slots, r.crashes, r.partitions, r.dropped, r.fenced_ops, r.stale_refused, r.restart_journal, r.deaf_recovery_ms, r.trace_hash, started.elapsed()
                    );
                }
            }
            Err(e) => {
                let fr = match (a.full_restart, a.deaf_leader) {
                    (true, true) => " --full-restart --deaf-leader",
                    (true, false) => " --full-restart",
                    (false, true) => " --deaf-leader",
                    _ => "",
                };
                eprintln!("FAILED {e}\n  replay: cargo run --release -p trex-sim --bin trex-sim --{fr} --seed {seed}");
                failed.push(*seed);
            }
        }
    }
    if failed.is_empty() {
        println!("{} seeds passed", seeds.len());
        ExitCode::SUCCESS
    } else {
        println!(
            "{} of {} seeds failed: {:?}",
            failed.len(),
            seeds.len(),
            failed
        );
        ExitCode::FAILURE
    }
}
