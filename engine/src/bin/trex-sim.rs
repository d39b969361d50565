//! `trex-sim`: runs the deterministic consensus simulator over many seeds, or
//! replays one. `trex-sim --seed 42` replays seed 42 exactly.

use clap::Parser;
use std::process::ExitCode;
use std::time::Instant;
use trex_engine::consensus::sim::{run, SimOptions};

#[derive(Parser)]
#[command(
    name = "trex-sim",
    about = "Deterministic simulation of the consensus group"
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
    /// Simulated milliseconds under faults per seed.
    #[arg(long, default_value_t = 20_000)]
    safety_ms: u64,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = SimOptions {
        safety_ms: a.safety_ms,
        ..SimOptions::default()
    };
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first..a.first + a.seeds).collect(),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        match run(*seed, opts) {
            Ok(r) => {
                if a.seed.is_some() || (i + 1) % 10 == 0 || i + 1 == seeds.len() {
                    eprintln!(
                        "[{}/{}] seed {seed}: ok ({} nodes, {} events, {} acked, {} slots, {} crashes, {} partitions, {} dropped; {} fenced lock ops, {} stale refused; trace {:016x}) {:.1?}",
                        i + 1, seeds.len(), r.nodes, r.events, r.acked, r.slots, r.crashes, r.partitions, r.dropped, r.fenced_ops, r.stale_refused, r.trace_hash, started.elapsed()
                    );
                }
            }
            Err(e) => {
                eprintln!("FAILED {e}\n  replay: cargo run --release -p trex-engine --bin trex-sim -- --seed {seed}");
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
