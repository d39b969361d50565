//! The whole-cluster simulator (units, sequencers, the consensus state machine,
//! log clients and a follower under faults), checked against P1-P5 of
//! TESTING.md over a bounded number of seeds (more with
//! `scripts/simulate.sh --cluster`), the seeds that ever failed, and a check
//! that a seed replays identically.

mod common;

use trex_sim::cluster_sim::{run_cluster, ClusterOptions};

fn check(seed: u64) {
    if let Err(e) = run_cluster(seed, ClusterOptions::default()) {
        panic!(
            "{e}\nreplay: cargo run --release -p trex-sim --bin trex-sim -- --cluster --seed {seed}"
        );
    }
}

#[test]
fn cluster_seeds_that_once_failed_pass() {
    for seed in common::seed_list(include_str!("cluster-seeds.txt")) {
        check(seed);
    }
}

#[test]
fn a_range_of_cluster_seeds_passes() {
    let n: u64 = std::env::var("TREX_CLUSTER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for seed in 1..=n {
        check(seed);
    }
}

#[test]
fn a_cluster_seed_replays_identically_and_does_real_work() {
    for seed in [7, 42] {
        let a = run_cluster(seed, ClusterOptions::default()).unwrap();
        let b = run_cluster(seed, ClusterOptions::default()).unwrap();
        assert_eq!(a, b, "seed {seed} replayed differently");
        assert!(a.acked > 50, "seed {seed} acknowledged appends: {a:?}");
        assert!(a.observations > 100, "seed {seed} observed the log: {a:?}");
        assert!(
            a.unit_crashes + a.sequencer_pauses + a.client_pauses > 0,
            "seed {seed} injected faults: {a:?}"
        );
    }
}

#[test]
fn faults_move_the_layout_and_leave_holes_across_seeds() {
    // Over a handful of seeds the faults must actually exercise failover:
    // layouts installed beyond the first takeover, holes filled, stale
    // writes refused by sealed units.
    let (mut epochs, mut holes, mut stale) = (0, 0, 0);
    for seed in 1..=20 {
        let r = run_cluster(seed, ClusterOptions::default()).unwrap();
        epochs += r.epochs;
        holes += r.holes;
        stale += r.stale_refused;
    }
    assert!(epochs > 40, "layouts installed over 20 seeds: {epochs}");
    assert!(holes > 0, "holes filled over 20 seeds: {holes}");
    assert!(stale > 0, "stale writes refused over 20 seeds: {stale}");
}
