//! Issue 11 against the sans-IO Paxos core: peer messages carrying ballot
//! counters at the edges of their range (0, 1, the step and one past it,
//! 2^62 and one past it, `u64::MAX − 1`, `u64::MAX`) from every member, in
//! random order, mixed with ticks. The core never panics, its promised ballot
//! never leaves the range or jumps by more than the step per message, and a
//! group fed the same messages can still elect a leader afterwards.

use proptest::prelude::*;
use trex_consensus::paxos::{Config, Replica};
use trex_wire::consensus::{Ballot, Msg};
use trex_wire::range::{MAX_COUNTER, MAX_STEP};

const NOW: u64 = 1_000_000;

fn edge() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(MAX_STEP),
        Just(MAX_STEP + 1),
        Just(MAX_COUNTER),
        Just(MAX_COUNTER + 1),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        0..64u64,
    ]
}

fn msg() -> impl Strategy<Value = Msg> {
    (0..7u8, edge(), 1..=3u64, edge()).prop_map(|(kind, counter, node, slot)| {
        let ballot = Ballot { counter, node };
        match kind {
            0 => Msg::Prepare { ballot, from: slot },
            1 => Msg::PreVote { ballot },
            2 => Msg::Commit {
                ballot,
                commit: slot,
            },
            3 => Msg::Nack {
                ballot,
                promised: Ballot {
                    counter: slot,
                    node,
                },
            },
            4 => Msg::Accepted { ballot, slot },
            5 => Msg::CommitAck { ballot },
            _ => Msg::CatchUp { from: slot },
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn edge_ballots_never_move_a_replica_out_of_range(
        msgs in proptest::collection::vec((1..=3u64, msg()), 1..60)
    ) {
        let mut r = Replica::recover(Config::new(2, vec![1, 2, 3]), Vec::new(), NOW).unwrap();
        let mut now = NOW;
        let mut last = r.status().promised.counter;
        for (from, m) in msgs {
            now += 7;
            r.handle(from, m, now);
            r.tick(now);
            let _ = r.take_ready();
            let p = r.status().promised.counter;
            prop_assert!(p <= MAX_COUNTER, "promised {p}");
            prop_assert!(p <= last + MAX_STEP + 1, "promised jumped from {last} to {p}");
            last = p;
        }
        // It can still lead: its next ballot is above what it promised.
        for _ in 0..50 {
            now += 400;
            r.tick(now);
            let _ = r.take_ready();
        }
        prop_assert!(r.status().promised.counter <= MAX_COUNTER);
    }
}
