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
    /// The group-change scenario: consensus nodes are added and removed one
    /// at a time during the safety phase.
    #[arg(long)]
    reconfigure: bool,
    /// The damaged-journal scenario: twice a voting node's journal is found
    /// damaged; it comes back under a new id, empty.
    #[arg(long)]
    journal_damage: bool,
    /// With --journal-damage: restart the damaged node on what is left of
    /// its journal under its old id instead (unsafe; to show the checks
    /// catch it).
    #[arg(long)]
    unsafe_damage: bool,
    /// With --cluster: operations per client.
    #[arg(long, default_value_t = 40)]
    ops: usize,
    /// With --cluster: also damage records and fill a unit.
    #[arg(long)]
    hard_faults: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = SimOptions {
        safety_ms: a.safety_ms.unwrap_or(20_000),
        full_restart: a.full_restart,
        deaf_leader: a.deaf_leader,
        reconfigure: a.reconfigure,
        journal_damage: a.journal_damage,
        unsafe_damage: a.unsafe_damage,
        ..SimOptions::default()
    };
    let copts = ClusterOptions {
        safety_ms: a.safety_ms.unwrap_or(10_000),
        ops: a.ops,
        hard_faults: a.hard_faults,
        ..ClusterOptions::default()
    };
    let flag = match (a.cluster, a.hard_faults) {
        (true, true) => " --cluster --hard-faults",
        (true, false) => " --cluster",
        _ => "",
    };
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first..a.first + a.seeds).collect(),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    // With --cluster: fault and outcome totals over the passing seeds.
    let mut t = trex_sim::cluster_sim::ClusterReport::default();
    for (i, seed) in seeds.iter().enumerate() {
        if a.cluster {
            match run_cluster(*seed, copts) {
                Ok(r) => {
                    t.acked += r.acked;
                    t.unit_crashes += r.unit_crashes;
                    t.damaged_records += r.damaged_records;
                    t.full_units += r.full_units;
                    t.full_taken_out += r.full_taken_out;
                    t.reader_windows += r.reader_windows;
                    t.reader_ops += r.reader_ops;
                    t.reader_failures += r.reader_failures;
                    t.trims += r.trims;
                    t.trims_applied += r.trims_applied;
                    t.trims_above += r.trims_above;
                    t.trims_refused += r.trims_refused;
                    t.trimmed_seen += r.trimmed_seen;
                    t.spares_joined += r.spares_joined;
                    t.wipes += r.wipes;
                    t.restored_ms = t.restored_ms.max(r.restored_ms);
                    if a.seed.is_some() {
                        eprintln!("{r:?}");
                    }
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
                        "[{}/{}] seed {seed}: ok ({} nodes, {} events, {} acked, {} slots, {} crashes, {} partitions, {} dropped; {} fenced lock ops, {} stale refused; {} journal records at the restart; {} ms to replace a deaf leader; {} group changes, final group {:?}; trace {:016x}) {:.1?}",
                        i + 1, seeds.len(), r.nodes, r.events, r.acked, r.slots, r.crashes, r.partitions, r.dropped, r.fenced_ops, r.stale_refused, r.restart_journal, r.deaf_recovery_ms, r.group_changes, r.final_group, r.trace_hash, started.elapsed()
                    );
                }
            }
            Err(e) => {
                let mut fr = String::new();
                for (on, flag) in [
                    (a.full_restart, " --full-restart"),
                    (a.deaf_leader, " --deaf-leader"),
                    (a.reconfigure, " --reconfigure"),
                    (a.journal_damage, " --journal-damage"),
                    (a.unsafe_damage, " --unsafe-damage"),
                ] {
                    if on {
                        fr.push_str(flag);
                    }
                }
                eprintln!("FAILED {e}\n  replay: cargo run --release -p trex-sim --bin trex-sim --{fr} --seed {seed}");
                failed.push(*seed);
            }
        }
    }
    if a.cluster {
        println!(
            "totals over the passing seeds: {} appends acked, {} unit crashes, {} records damaged, {} units filled ({} taken out by the end), {} readers-only windows ({} reader ops, {} failed), {} trims below the tail ({} applied), {} above ({} refused), {} addresses read as trimmed, {} spares joined, {} units wiped by the operator; full replication restored at most {} ms after the faults stopped",
            t.acked, t.unit_crashes, t.damaged_records, t.full_units, t.full_taken_out, t.reader_windows, t.reader_ops, t.reader_failures, t.trims, t.trims_applied, t.trims_above, t.trims_refused, t.trimmed_seen, t.spares_joined, t.wipes, t.restored_ms
        );
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
