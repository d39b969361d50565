//! The deterministic consensus simulator, run over a bounded number of seeds
//! (more with `scripts/simulate.sh`), the seeds that ever failed, and a check
//! that a seed replays identically.

use trex_engine::consensus::sim::{run, SimOptions};

fn check(seed: u64, opts: SimOptions) {
    if let Err(e) = run(seed, opts) {
        panic!("{e}\nreplay: cargo run --release -p trex-engine --bin trex-sim -- --seed {seed}");
    }
}

#[test]
fn seeds_that_once_failed_pass() {
    let list = include_str!("sim-seeds.txt");
    let seeds: Vec<u64> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(!seeds.is_empty());
    for seed in seeds {
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
