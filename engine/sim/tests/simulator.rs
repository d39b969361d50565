//! The deterministic consensus simulator, run over a bounded number of seeds
//! (more with `scripts/simulate.sh`), the seeds that ever failed, and a check
//! that a seed replays identically.

mod common;

use trex_sim::consensus_sim::{run, SimOptions};

fn check(seed: u64, opts: SimOptions) {
    if let Err(e) = run(seed, opts) {
        panic!("{e}\nreplay: cargo run --release -p trex-sim --bin trex-sim -- --seed {seed}");
    }
}

#[test]
fn seeds_that_once_failed_pass() {
    for seed in common::seed_list(include_str!("sim-seeds.txt")) {
        check(seed, SimOptions::default());
    }
}

#[test]
fn a_range_of_seeds_passes() {
    let n: u64 = std::env::var("TREX_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let first = 1000;
    for seed in first..first + n {
        check(seed, SimOptions::default());
    }
}

#[test]
fn a_seed_replays_identically() {
    for seed in [3, 77, 1234] {
        let a = run(seed, SimOptions::default()).unwrap();
        let b = run(seed, SimOptions::default()).unwrap();
        assert_eq!(a, b, "seed {seed} replayed differently");
        assert!(
            a.events > 1000 && a.acked > 0,
            "seed {seed} did real work: {a:?}"
        );
    }
}
