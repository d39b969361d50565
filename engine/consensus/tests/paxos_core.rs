//! The Paxos core's exact outputs for single steps: what it journals, what it
//! sends, and in which order (messages only ever follow the journal writes of
//! the same step, which the driver makes durable first).

use trex_consensus::paxos::{Config, JournalRecord, Replica};
use trex_consensus::sm::{Op, StateMachine};
use trex_wire::consensus::{Ballot, Command, Msg};

const NOW: u64 = 1_000_000;

fn replica(id: u64) -> Replica {
    Replica::recover(Config::new(id, vec![1, 2, 3]), Vec::new(), NOW).unwrap()
}

fn b(counter: u64, node: u64) -> Ballot {
    Ballot { counter, node }
}

#[test]
fn a_prepare_is_promised_durably_and_a_lower_one_refused() {
    let mut r = replica(2);
    r.handle(
        1,
        Msg::Prepare {
            ballot: b(1, 1),
            from: 0,
        },
        NOW,
    );
    let out = r.take_ready();
    assert_eq!(out.persist, vec![JournalRecord::Promise(b(1, 1))]);
    assert_eq!(
        out.on_durable.send,
        vec![(
            1,
            Msg::Promise {
                ballot: b(1, 1),
                accepted: vec![],
                snapshot: 0,
                upto: u64::MAX
            }
        )]
    );
    r.handle(
        3,
        Msg::Prepare {
            ballot: b(0, 3),
            from: 0,
        },
        NOW,
    );
    let out = r.take_ready();
    assert!(out.persist.is_empty());
    assert_eq!(
        out.on_durable.send,
        vec![(
            3,
            Msg::Nack {
                ballot: b(0, 3),
                promised: b(1, 1)
            }
        )]
    );
}

#[test]
fn an_accept_is_journalled_before_it_is_acknowledged_and_reported_in_promises() {
    let mut r = replica(2);
    let v = vec![Command {
        client: 1,
        seq: 1,
        stamp_ms: 5,
        op: Op::Noop.encode(),
    }];
    r.handle(
        1,
        Msg::Accept {
            ballot: b(1, 1),
            slot: 0,
            value: v.clone(),
            commit: 0,
        },
        NOW,
    );
    let out = r.take_ready();
    assert_eq!(
        out.persist,
        vec![JournalRecord::Accept {
            slot: 0,
            ballot: b(1, 1),
            value: v.clone()
        }]
    );
    assert_eq!(
        out.on_durable.send,
        vec![(
            1,
            Msg::Accepted {
                ballot: b(1, 1),
                slot: 0
            }
        )]
    );
    // A later candidate learns what was accepted.
    r.handle(
        3,
        Msg::Prepare {
            ballot: b(2, 3),
            from: 0,
        },
        NOW,
    );
    let out = r.take_ready();
    assert_eq!(
        out.on_durable.send,
        vec![(
            3,
            Msg::Promise {
                ballot: b(2, 3),
                accepted: vec![(0, b(1, 1), v.clone())],
                snapshot: 0,
                upto: u64::MAX
            }
        )]
    );
    // A newer leader's commit does not say which value was chosen at slot 0:
    // ours was accepted under 1.1, so ask rather than guess.
    r.handle(
        3,
        Msg::Commit {
            ballot: b(2, 3),
            commit: 1,
        },
        NOW,
    );
    let out = r.take_ready();
    assert_eq!(
        r.status().applied,
        0,
        "a value accepted under 1.1 is not known chosen by 2.3's commit"
    );
    assert_eq!(
        out.on_durable.send,
        vec![
            (3, Msg::CommitAck { ballot: b(2, 3) }),
            (3, Msg::CatchUp { from: 0 })
        ],
        "it answers the heartbeat and asks for the chosen value instead"
    );
    // The leader of 1.1 saying slot 0 is chosen does: it proposed one value there.
    r.handle(
        1,
        Msg::Commit {
            ballot: b(1, 1),
            commit: 1,
        },
        NOW,
    );
    assert_eq!(r.status().applied, 1);
    assert_eq!(r.take_ready().on_durable.applied.len(), 1);
}

#[test]
fn a_lone_node_without_a_leader_asks_before_it_disrupts() {
    let mut r = replica(1);
    r.tick(NOW + 10_000);
    let out = r.take_ready();
    let ballot = b(1, 1);
    assert!(out.persist.is_empty(), "a pre-vote changes nothing durable");
    assert_eq!(
        out.on_durable.send,
        vec![(2, Msg::PreVote { ballot }), (3, Msg::PreVote { ballot })]
    );
    // A follower that hears a live leader refuses the pre-vote.
    let mut f = replica(2);
    f.handle(
        3,
        Msg::Commit {
            ballot: b(5, 3),
            commit: 0,
        },
        NOW,
    );
    f.take_ready();
    f.handle(1, Msg::PreVote { ballot: b(6, 1) }, NOW + 10);
    assert_eq!(
        f.take_ready().on_durable.send,
        vec![(
            1,
            Msg::PreVoteReply {
                ballot: b(6, 1),
                granted: false
            }
        )]
    );
}

#[test]
fn a_new_leader_re_proposes_the_highest_accepted_value_and_fills_gaps_with_no_ops() {
    let mut r = replica(1);
    r.tick(NOW + 10_000);
    r.take_ready();
    r.handle(
        2,
        Msg::PreVoteReply {
            ballot: b(1, 1),
            granted: true,
        },
        NOW + 10_000,
    );
    let out = r.take_ready();
    let bal = b(1, 1);
    assert_eq!(
        out.on_durable.send[0],
        (
            1,
            Msg::Prepare {
                ballot: bal,
                from: 0
            }
        )
    );
    r.handle(
        1,
        Msg::Prepare {
            ballot: bal,
            from: 0,
        },
        NOW + 10_000,
    );
    r.take_ready();
    let old = vec![Command {
        client: 7,
        seq: 1,
        stamp_ms: 1,
        op: Op::Noop.encode(),
    }];
    let older = vec![Command {
        client: 8,
        seq: 1,
        stamp_ms: 1,
        op: Op::Noop.encode(),
    }];
    r.handle(
        1,
        Msg::Promise {
            ballot: bal,
            accepted: vec![],
            snapshot: 0,
            upto: u64::MAX,
        },
        NOW + 10_000,
    );
    r.handle(
        2,
        Msg::Promise {
            ballot: bal,
            accepted: vec![(0, b(0, 3), older), (2, b(0, 2), old.clone())],
            snapshot: 0,
            upto: u64::MAX,
        },
        NOW + 10_000,
    );
    let out = r.take_ready();
    let accepts: Vec<(u64, usize)> = out
        .on_durable
        .send
        .iter()
        .filter_map(|(to, m)| match m {
            Msg::Accept { slot, value, .. } if *to == 1 => Some((*slot, value.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        accepts,
        vec![(0, 1), (1, 0), (2, 1)],
        "slots 0 and 2 re-proposed, slot 1 a no-op"
    );
    assert!(r.status().leading);
}

fn cmd(client: u64) -> Command {
    Command {
        client,
        seq: 1,
        stamp_ms: 1,
        op: Op::Noop.encode(),
    }
}

/// The messages of `out` to `to`.
fn sent_to(out: &trex_consensus::paxos::Ready, to: u64) -> Vec<Msg> {
    out.on_durable
        .send
        .iter()
        .filter(|(t, _)| *t == to)
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
fn a_promise_reports_a_bounded_prefix_and_says_where_it_stopped() {
    // Each value is 4 + 28 + 1 bytes, each reported entry 24 more: 57 bytes.
    let mut cfg = Config::new(2, vec![1, 2, 3]);
    cfg.report_bytes = 120;
    let mut r = Replica::recover(cfg, Vec::new(), NOW).unwrap();
    for slot in 0..5 {
        r.handle(
            1,
            Msg::Accept {
                ballot: b(1, 1),
                slot,
                value: vec![cmd(slot)],
                commit: 0,
            },
            NOW,
        );
    }
    r.take_ready();
    let mut promise = |from| {
        r.handle(
            3,
            Msg::Prepare {
                ballot: b(2, 3),
                from,
            },
            NOW,
        );
        sent_to(&r.take_ready(), 3)
    };
    assert_eq!(
        promise(1),
        vec![Msg::Promise {
            ballot: b(2, 3),
            accepted: vec![(1, b(1, 1), vec![cmd(1)]), (2, b(1, 1), vec![cmd(2)])],
            snapshot: 0,
            upto: 3,
        }],
        "two entries fit 120 bytes: the report covers slots 1 and 2"
    );
    assert_eq!(
        promise(3),
        vec![Msg::Promise {
            ballot: b(2, 3),
            accepted: vec![(3, b(1, 1), vec![cmd(3)]), (4, b(1, 1), vec![cmd(4)])],
            snapshot: 0,
            upto: u64::MAX,
        }],
        "asked again from 3 with the same ballot: the rest, complete"
    );
    // One entry always goes, however large.
    let mut cfg = Config::new(2, vec![1, 2, 3]);
    cfg.report_bytes = 1;
    let mut r = Replica::recover(cfg, Vec::new(), NOW).unwrap();
    for slot in 0..2 {
        let value = vec![cmd(slot)];
        r.handle(
            1,
            Msg::Accept {
                ballot: b(1, 1),
                slot,
                value,
                commit: 0,
            },
            NOW,
        );
    }
    r.take_ready();
    r.handle(
        3,
        Msg::Prepare {
            ballot: b(2, 3),
            from: 0,
        },
        NOW,
    );
    let out = sent_to(&r.take_ready(), 3);
    assert!(
        matches!(&out[..], [Msg::Promise { accepted, upto: 1, .. }] if accepted.len() == 1),
        "{out:?}"
    );
}

/// Node 1 of {1, 2, 3}, elected with ballot 1.1: returns it with the output
/// of its winning step (node 2's promise arrives last).
fn elect(cfg: Config, mine: Msg, theirs: Msg) -> (Replica, trex_consensus::paxos::Ready) {
    let mut r = Replica::recover(cfg, Vec::new(), NOW).unwrap();
    r.tick(NOW + 10_000);
    r.take_ready();
    let granted = Msg::PreVoteReply {
        ballot: b(1, 1),
        granted: true,
    };
    r.handle(2, granted, NOW + 10_000);
    r.take_ready();
    r.handle(1, mine, NOW + 10_000);
    r.handle(2, theirs, NOW + 10_000);
    let out = r.take_ready();
    (r, out)
}

#[test]
fn a_leader_recovers_a_long_log_in_bounded_rounds_before_it_takes_new_commands() {
    let bal = b(1, 1);
    let old = |s: u64| (s, b(0, 2), vec![cmd(100 + s)]);
    // Node 1 accepted nothing; node 2 accepted slots 0..4 but reported only
    // 0..2 (its report is bounded).
    let (mut r, out) = elect(
        Config::new(1, vec![1, 2, 3]),
        Msg::Promise {
            ballot: bal,
            accepted: vec![],
            snapshot: 0,
            upto: u64::MAX,
        },
        Msg::Promise {
            ballot: bal,
            accepted: vec![old(0), old(1)],
            snapshot: 0,
            upto: 2,
        },
    );
    assert!(r.status().leading);
    let to2 = sent_to(&out, 2);
    assert_eq!(
        to2,
        vec![
            Msg::Accept {
                ballot: bal,
                slot: 0,
                value: vec![cmd(100)],
                commit: 0
            },
            Msg::Accept {
                ballot: bal,
                slot: 1,
                value: vec![cmd(101)],
                commit: 0
            },
            Msg::Commit {
                ballot: bal,
                commit: 0
            },
        ],
        "only the slots every report covers are re-proposed"
    );
    // A command now waits: slot 2 on may hold values a quorum accepted.
    r.propose(cmd(7), NOW + 10_000).unwrap();
    assert!(
        r.take_ready().on_durable.send.is_empty(),
        "no slot for it yet"
    );
    // The window is chosen; then, and only then, phase 1 continues from slot 2
    // with the same ballot (nothing new to journal: the promise stands).
    for slot in 0..2 {
        r.handle(1, Msg::Accepted { ballot: bal, slot }, NOW + 10_010);
        assert!(r.take_ready().on_durable.send.is_empty());
    }
    assert_eq!(r.status().commit, 0, "one acceptor is not a quorum");
    r.handle(
        2,
        Msg::Accepted {
            ballot: bal,
            slot: 0,
        },
        NOW + 10_010,
    );
    r.take_ready();
    r.handle(
        2,
        Msg::Accepted {
            ballot: bal,
            slot: 1,
        },
        NOW + 10_010,
    );
    let out = r.take_ready();
    assert!(out.persist.is_empty());
    assert_eq!(r.status().commit, 2);
    let prepare = Msg::Prepare {
        ballot: bal,
        from: 2,
    };
    assert_eq!(
        out.on_durable.send,
        vec![
            (1, prepare.clone()),
            (2, prepare.clone()),
            (3, prepare.clone())
        ]
    );
    // Unanswered, it is asked again after two heartbeats (of those missing).
    r.handle(
        1,
        Msg::Promise {
            ballot: bal,
            accepted: vec![],
            snapshot: 0,
            upto: u64::MAX,
        },
        NOW + 10_020,
    );
    r.take_ready();
    r.tick(NOW + 10_120);
    let resent: Vec<_> = r
        .take_ready()
        .on_durable
        .send
        .into_iter()
        .filter(|(_, m)| matches!(m, Msg::Prepare { .. }))
        .collect();
    assert_eq!(resent, vec![(2, prepare.clone()), (3, prepare)]);
    // The rest arrives complete: slots 2 and 3 re-proposed (slot 4, beyond
    // anything reported, is free), then the waiting command goes to slot 4.
    r.handle(
        2,
        Msg::Promise {
            ballot: bal,
            accepted: vec![old(3)],
            snapshot: 0,
            upto: u64::MAX,
        },
        NOW + 10_130,
    );
    let out = r.take_ready();
    let accepts: Vec<(u64, Vec<Command>)> = sent_to(&out, 3)
        .into_iter()
        .filter_map(|m| match m {
            Msg::Accept { slot, value, .. } => Some((slot, value)),
            _ => None,
        })
        .collect();
    assert_eq!(
        accepts,
        vec![(2, vec![]), (3, vec![cmd(103)])],
        "slot 2 a no-op"
    );
    r.propose(cmd(8), NOW + 10_130).unwrap();
    for slot in 2..4 {
        r.handle(2, Msg::Accepted { ballot: bal, slot }, NOW + 10_140);
        r.handle(1, Msg::Accepted { ballot: bal, slot }, NOW + 10_140);
    }
    let out = r.take_ready();
    let new: Vec<(u64, usize)> = sent_to(&out, 3)
        .into_iter()
        .filter_map(|m| match m {
            Msg::Accept { slot, value, .. } => Some((slot, value.len())),
            _ => None,
        })
        .collect();
    // The first leader records the group it was started with
    // (`group-init`) before the commands that waited; all share slot 4.
    assert_eq!(new, vec![(4, 3)], "the commands that waited share slot 4");
    assert_eq!(r.status().commit, 4);
}

#[test]
fn followers_answer_heartbeats_and_a_leader_that_hears_no_quorum_steps_down() {
    // Elected at NOW + 10_000 (election timeout 300 ms by default).
    let t = NOW + 10_000;
    let bal = b(1, 1);
    let done = || Msg::Promise {
        ballot: bal,
        accepted: vec![],
        snapshot: 0,
        upto: u64::MAX,
    };
    let (mut r, _) = elect(Config::new(1, vec![1, 2, 3]), done(), done());
    assert!(r.status().leading);
    // A follower answers a heartbeat of the ballot it follows, and only that.
    let mut f = replica(2);
    f.handle(
        1,
        Msg::Commit {
            ballot: bal,
            commit: 0,
        },
        t,
    );
    assert_eq!(
        f.take_ready().on_durable.send,
        vec![(1, Msg::CommitAck { ballot: bal })]
    );
    f.handle(
        3,
        Msg::Prepare {
            ballot: b(2, 3),
            from: 0,
        },
        t,
    );
    f.take_ready();
    f.handle(
        1,
        Msg::Commit {
            ballot: bal,
            commit: 0,
        },
        t,
    );
    assert!(
        f.take_ready()
            .on_durable
            .send
            .iter()
            .all(|(_, m)| !matches!(m, Msg::CommitAck { .. })),
        "a deposed leader gets no sign of support"
    );
    // The leader heard node 2 at t + 250: still leading at t + 540 (within
    // 300 ms of it), heartbeats going out.
    r.handle(2, Msg::CommitAck { ballot: bal }, t + 250);
    r.tick(t + 540);
    assert!(r.status().leading);
    assert!(r.take_ready().on_durable.send.contains(&(
        2,
        Msg::Commit {
            ballot: bal,
            commit: 0
        }
    )));
    // Nothing from anyone since t + 250: at t + 550 it no longer hears a
    // quorum; it steps down, names no leader, and sends no heartbeat.
    r.tick(t + 550);
    let st = r.status();
    assert!(!st.leading && st.leader.is_none(), "{st:?}");
    let out = r.take_ready();
    assert!(
        out.persist.is_empty(),
        "stepping down changes nothing durable"
    );
    assert!(
        out.on_durable.send.is_empty(),
        "no heartbeat: {:?}",
        out.on_durable.send
    );
    assert!(r.propose(cmd(1), t + 550).is_err());
}

#[test]
fn a_new_leader_has_one_election_timeout_before_check_quorum_judges() {
    let t = NOW + 10_000;
    let bal = b(1, 1);
    let done = || Msg::Promise {
        ballot: bal,
        accepted: vec![],
        snapshot: 0,
        upto: u64::MAX,
    };
    let (mut r, _) = elect(Config::new(1, vec![1, 2, 3]), done(), done());
    r.tick(t + 299);
    assert!(r.status().leading, "the promises were its quorum just now");
    // Any message counts as hearing a node, an accepted as well as an ack.
    r.handle(
        3,
        Msg::Accepted {
            ballot: bal,
            slot: 9,
        },
        t + 299,
    );
    r.tick(t + 598);
    assert!(r.status().leading);
    r.tick(t + 599);
    assert!(!r.status().leading);
}

#[test]
fn the_state_machine_applies_a_retried_command_once() {
    let mut sm = StateMachine::default();
    let reg = |seq| Command {
        client: 42,
        seq,
        stamp_ms: 10,
        op: Op::Register {
            id: 1,
            role: trex_consensus::sm::Role::Storage,
            addr: "a:1".into(),
        }
        .encode(),
    };
    let first = sm.apply(&reg(1));
    let members_after_first = sm.members.clone();
    assert_eq!(sm.apply(&reg(1)), first, "a retry gets the first result");
    assert_eq!(sm.members, members_after_first, "and changes nothing");
    assert!(String::from_utf8_lossy(&sm.apply(&Command { seq: 0, ..reg(0) })).contains("stale"));
    // Time comes from the leader's stamp, never a local clock.
    let hb = Command {
        client: 42,
        seq: 2,
        stamp_ms: 99,
        op: Op::Heartbeat { id: 1 }.encode(),
    };
    sm.apply(&hb);
    assert_eq!(sm.members[&1].seen_ms, 99);
    let snap = StateMachine::decode(&sm.encode()).unwrap();
    assert_eq!(snap, sm, "snapshots round-trip");
}

#[test]
fn idle_clients_are_forgotten_by_the_leaders_clock() {
    let mut sm = StateMachine::default();
    for client in 1..=1100u64 {
        sm.apply(&Command {
            client,
            seq: 1,
            stamp_ms: 1_000,
            op: Op::Noop.encode(),
        });
    }
    assert_eq!(sm.clients.len(), 1100);
    // Two hours later, new clients arrive; the idle ones are swept away.
    for client in 2000..2100u64 {
        sm.apply(&Command {
            client,
            seq: 1,
            stamp_ms: 7_201_000,
            op: Op::Noop.encode(),
        });
    }
    assert!(
        sm.clients.len() < 200,
        "idle clients were forgotten: {}",
        sm.clients.len()
    );
    assert!(sm.clients.contains_key(&2099));
    assert_eq!(
        StateMachine::decode(&sm.encode()).unwrap(),
        sm,
        "snapshots keep the last-seen times"
    );
}
