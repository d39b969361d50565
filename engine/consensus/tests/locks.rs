//! The advisory lock service: its rules in the state machine (decided with the
//! leader's stamp, never a local clock), and `trex lock` against a real group.

use trex_consensus::sm::{decode_lock, Op, StateMachine, RESULT_OK};
use trex_wire::consensus::Command;
use trex_wire::Reader;

struct Sm {
    sm: StateMachine,
    seq: u64,
}

impl Sm {
    /// Applies `op` as if the leader proposed it at `at_ms`.
    fn at(&mut self, at_ms: u64, op: Op) -> Result<(String, u64, u64), String> {
        self.seq += 1;
        let r = self.sm.apply(&Command {
            client: 1,
            seq: self.seq,
            stamp_ms: at_ms,
            op: op.encode(),
        });
        match r.split_first() {
            Some((&RESULT_OK, [])) => Ok((String::new(), 0, 0)),
            // A lease when the result is one (installs answer a projection).
            Some((&RESULT_OK, rest)) => Ok(decode_lock(&mut Reader::new(rest))
                .map(|(_, l)| (l.holder, l.token, l.expire_ms))
                .unwrap_or_default()),
            Some((_, msg)) => Err(String::from_utf8_lossy(msg).into_owned()),
            None => panic!("empty result"),
        }
    }
}

fn acquire(name: &str, holder: &str, ttl_ms: u64) -> Op {
    Op::Acquire {
        name: name.into(),
        holder: holder.into(),
        ttl_ms,
    }
}

#[test]
fn leases_conflict_expire_with_grace_and_fence_with_increasing_tokens() {
    let mut s = Sm {
        sm: StateMachine::default(),
        seq: 0,
    };
    assert_eq!(
        s.at(1000, acquire("a", "p", 500)),
        Ok(("p".into(), 1, 1500))
    );
    let held = s.at(1200, acquire("a", "q", 500)).unwrap_err();
    assert!(held.contains("held by \"p\""), "{held}");
    // Locks conflict only by name.
    assert_eq!(s.at(1200, acquire("b", "q", 500)).unwrap().1, 2);
    // After expiry, but within the grace period (1 s by default): still refused.
    let grace = s.at(2000, acquire("a", "q", 500)).unwrap_err();
    assert!(grace.contains("grace"), "{grace}");
    // Expiry plus grace passed: the lock changes hands with a higher token.
    assert_eq!(
        s.at(2500, acquire("a", "q", 500)),
        Ok(("q".into(), 3, 3000))
    );
    // The old holder can neither renew nor release any more.
    assert!(s
        .at(
            2600,
            Op::Renew {
                name: "a".into(),
                token: 1,
                ttl_ms: 500
            }
        )
        .is_err());
    assert!(s
        .at(
            2600,
            Op::Release {
                name: "a".into(),
                token: 1
            }
        )
        .is_err());
    // The current holder renews (from any process: the handle is name + token)...
    assert_eq!(
        s.at(
            2900,
            Op::Renew {
                name: "a".into(),
                token: 3,
                ttl_ms: 1000
            }
        ),
        Ok(("q".into(), 3, 3900))
    );
    // ...and after a release the lock is free at once, with a higher token again.
    assert!(s
        .at(
            3000,
            Op::Release {
                name: "a".into(),
                token: 3
            }
        )
        .is_ok());
    assert_eq!(s.at(3001, acquire("a", "r", 500)).unwrap().1, 4);
    // A lease that ran out cannot be renewed.
    assert!(s
        .at(
            9999,
            Op::Renew {
                name: "a".into(),
                token: 4,
                ttl_ms: 500
            }
        )
        .unwrap_err()
        .contains("expired"));
}

#[test]
fn the_grace_period_is_part_of_the_replicated_state() {
    let mut s = Sm {
        sm: StateMachine::default(),
        seq: 0,
    };
    s.at(0, Op::SetLockGrace { grace_ms: 5000 }).unwrap();
    s.at(1000, acquire("a", "p", 100)).unwrap();
    assert!(
        s.at(5000, acquire("a", "q", 100)).is_err(),
        "expiry 1100 + grace 5000 not yet passed"
    );
    assert!(s.at(6100, acquire("a", "q", 100)).is_ok());
    let snap = StateMachine::decode(&s.sm.encode()).unwrap();
    assert_eq!(snap, s.sm, "locks, fence and grace survive a snapshot");
    assert!(
        s.at(7000, acquire("", "q", 100)).is_err(),
        "a lock needs a name"
    );
    assert!(
        s.at(7000, acquire("z", "q", 0)).is_err(),
        "a zero ttl is refused"
    );
}

#[test]
fn a_sequencer_installs_a_layout_only_while_its_lease_is_live() {
    use trex_consensus::sm::{LayoutSegment, Projection};
    let mut s = Sm {
        sm: StateMachine::default(),
        seq: 0,
    };
    let p = |epoch| Projection {
        epoch,
        sequencer: 11,
        segments: vec![LayoutSegment {
            start: 0,
            end: u64::MAX,
            stripes: vec![vec![1]],
        }],
    };
    let install = |epoch, lease_token| Op::InstallAsSequencer {
        expected_epoch: epoch - 1,
        projection: p(epoch),
        lease_token,
    };
    let take = Op::System(Box::new(acquire("sequencer", "11@a", 3000)));
    let (_, token, _) = s.at(1000, take).unwrap();
    assert!(
        s.at(1500, install(1, token)).is_ok(),
        "a live lease installs"
    );
    assert!(
        s.at(1500, install(2, token + 1))
            .unwrap_err()
            .contains("does not hold"),
        "a wrong token does not"
    );
    let stale = s.at(4500, install(2, token)).unwrap_err();
    assert!(
        stale.contains("does not hold"),
        "an expired lease does not: {stale}"
    );
    assert_eq!(s.sm.current().unwrap().epoch, 1);
}

/// Issue 12: the sequencer's lease is not a user lock. `acquire`, `renew` and
/// `release` of its name (or any `trex.` name) are refused `reserved-name`,
/// and change nothing; the `system` operations of the sequencers work, and
/// `system` does not reach user locks.
#[test]
fn system_leases_are_out_of_the_user_namespace() {
    let mut s = Sm {
        sm: StateMachine::default(),
        seq: 0,
    };
    let (_, token, _) = s
        .at(
            1000,
            Op::System(Box::new(acquire("sequencer", "11@a", 3000))),
        )
        .unwrap();
    for name in ["sequencer", "trex.anything"] {
        let e = s.at(1100, acquire(name, "mallory", 3000)).unwrap_err();
        assert!(e.contains("system lease"), "{e}");
        let e = s
            .at(
                1100,
                Op::Release {
                    name: name.into(),
                    token,
                },
            )
            .unwrap_err();
        assert!(e.contains("system lease"), "{e}");
        let e = s
            .at(
                1100,
                Op::Renew {
                    name: name.into(),
                    token,
                    ttl_ms: 3000,
                },
            )
            .unwrap_err();
        assert!(e.contains("system lease"), "{e}");
    }
    // The sequencer still holds it and renews it.
    assert!(s
        .at(
            1200,
            Op::System(Box::new(Op::Renew {
                name: "sequencer".into(),
                token,
                ttl_ms: 3000,
            }))
        )
        .is_ok());
    // `system` is for system leases only.
    let e = s
        .at(1300, Op::System(Box::new(acquire("jobs", "x", 3000))))
        .unwrap_err();
    assert!(e.contains("not an operation on a system lease"), "{e}");
}

/// Issue 14: state that is released is forgotten. Lock cycles on distinct
/// names (acquire then release, and acquire then let expire) leave the state
/// machine as small as they found it, while tokens keep increasing.
#[test]
fn released_and_expired_locks_are_forgotten_and_tokens_still_increase() {
    let mut s = Sm {
        sm: StateMachine::default(),
        seq: 0,
    };
    let t0 = 1_700_000_000_000u64;
    let base = s.sm.encode().len();
    let mut last = 0;
    for i in 0..100_000u64 {
        let name = format!("job-{i}");
        let (_, token, _) = s.at(t0 + i, acquire(&name, "w", 60_000)).unwrap();
        assert!(token > last, "tokens increase");
        last = token;
        s.at(t0 + i, Op::Release { name, token }).unwrap();
    }
    assert!(
        s.sm.locks.is_empty(),
        "{} released locks kept",
        s.sm.locks.len()
    );
    // The client table holds one client; the snapshot stays its size.
    assert!(s.sm.encode().len() < base + 200, "snapshot grew");
    // Expired leases: kept through their grace and 10 s more (a late renew
    // still hears lease-expired), then forgotten as time passes.
    for i in 0..50_000u64 {
        s.at(t0 + 200_000 + i, acquire(&format!("tmp-{i}"), "w", 5))
            .unwrap();
    }
    let held = s.sm.locks.len();
    assert!(
        held <= 11_100,
        "{held} expired locks kept (at most the last ~11 s)"
    );
    s.at(t0 + 200_000 + 50_000 + 12_000, Op::Noop).unwrap();
    assert!(
        s.sm.locks.is_empty(),
        "{} expired locks kept",
        s.sm.locks.len()
    );
    // A late renew within the window learns why; after it, the lock is gone.
    let (_, token, exp) = s.at(t0 + 400_000, acquire("late", "w", 1_000)).unwrap();
    let e = s
        .at(
            exp + 5_000,
            Op::Renew {
                name: "late".into(),
                token,
                ttl_ms: 1_000,
            },
        )
        .unwrap_err();
    assert!(e.contains("expired"), "{e}");
    let e = s
        .at(
            exp + 20_000,
            Op::Renew {
                name: "late".into(),
                token,
                ttl_ms: 1_000,
            },
        )
        .unwrap_err();
    assert!(e.contains("not held"), "{e}");
    // Tokens never go back, even for a name used before.
    let (_, again, _) = s.at(exp + 30_000, acquire("job-0", "w", 1_000)).unwrap();
    assert!(again > token);
}
