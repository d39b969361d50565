//! The state machine's vectors of `docs/wire.md`, built by the code and
//! compared byte for byte with the document: every operation ("op-…"), results
//! of operations as a real `StateMachine` answers them ("result-…"), and the
//! snapshot state ("snapshot-state"). Run with
//! `TREX_PRINT_VECTORS=1 cargo test -p trex-consensus --test golden_ops -- --nocapture`
//! to print them.

#[path = "../../../wire/tests/support/doc_vectors.rs"]
mod doc_vectors;

use doc_vectors::{documented, hex};
use trex_consensus::sm::{
    decode_group, decode_lock, decode_members, decode_projection, decode_result, LayoutSegment, Op,
    Projection, Refusal, Role, StateMachine,
};
use trex_wire::consensus::Command;
use trex_wire::{DecodeError, Reader};

/// The leader's stamp of the first command of the histories below.
const T: u64 = 1_700_000_000_000;

fn one_segment(epoch: u64, sequencer: u64, stripes: Vec<Vec<u64>>) -> Projection {
    Projection {
        epoch,
        sequencer,
        segments: vec![LayoutSegment {
            start: 0,
            end: u64::MAX,
            stripes,
        }],
    }
}

fn op_vectors() -> Vec<(&'static str, Op)> {
    vec![
        (
            "op-register",
            Op::Register {
                id: 7420,
                role: Role::Storage,
                addr: "127.0.0.1:7420".into(),
            },
        ),
        ("op-deregister", Op::Deregister { id: 7420 }),
        ("op-heartbeat", Op::Heartbeat { id: 7420 }),
        (
            "op-init-layout",
            Op::InitLayout {
                stripes: 2,
                replicas: 2,
            },
        ),
        (
            "op-install",
            Op::Install {
                expected_epoch: 1,
                projection: one_segment(2, 0, vec![vec![1, 2], vec![3, 4]]),
            },
        ),
        ("op-members", Op::Members),
        ("op-layout", Op::Layout),
        ("op-layout-history", Op::LayoutHistory { from: 1, max: 2 }),
        ("op-noop", Op::Noop),
        (
            "op-install-as-sequencer",
            Op::InstallAsSequencer {
                expected_epoch: 1,
                projection: one_segment(2, 7410, vec![vec![1, 2]]),
                lease_token: 3,
            },
        ),
        (
            "op-acquire",
            Op::Acquire {
                name: "jobs".into(),
                holder: "alice".into(),
                ttl_ms: 10_000,
            },
        ),
        (
            "op-renew",
            Op::Renew {
                name: "jobs".into(),
                token: 7,
                ttl_ms: 10_000,
            },
        ),
        (
            "op-release",
            Op::Release {
                name: "jobs".into(),
                token: 7,
            },
        ),
        (
            "op-get-lock",
            Op::GetLock {
                name: "jobs".into(),
            },
        ),
        ("op-set-lock-grace", Op::SetLockGrace { grace_ms: 2_000 }),
        ("op-trim", Op::Trim { mark: 4096 }),
        ("op-replication", Op::Replication { replicas: 3 }),
        (
            "op-group-init",
            Op::GroupInit {
                nodes: vec![
                    (1, "10.0.0.1:7400".into()),
                    (2, "10.0.0.2:7400".into()),
                    (3, "10.0.0.3:7400".into()),
                ],
            },
        ),
        (
            "op-group-add",
            Op::GroupAdd {
                id: 4,
                addr: "10.0.0.4:7400".into(),
            },
        ),
        ("op-group-remove", Op::GroupRemove { id: 3 }),
        ("op-group", Op::Group),
        (
            "op-group-replace",
            Op::GroupReplace {
                old: 2,
                id: 5,
                addr: "10.0.0.2:7400".into(),
            },
        ),
        (
            "op-system",
            Op::System(Box::new(Op::Renew {
                name: "sequencer".into(),
                token: 3,
                ttl_ms: 3_000,
            })),
        ),
    ]
}

/// A state machine fed commands of one client, as a leader would stamp them.
struct History {
    sm: StateMachine,
    client: u64,
    seq: u64,
}

impl History {
    fn new(client: u64) -> History {
        History {
            sm: StateMachine::default(),
            client,
            seq: 0,
        }
    }

    /// Applies `op` stamped `at_ms` and returns the result bytes.
    fn apply(&mut self, at_ms: u64, op: Op) -> Vec<u8> {
        self.apply_in(0, at_ms, op)
    }

    /// [`History::apply`] for a command chosen in `slot`.
    fn apply_in(&mut self, slot: u64, at_ms: u64, op: Op) -> Vec<u8> {
        self.seq += 1;
        self.sm.apply_in(
            &Command {
                client: self.client,
                seq: self.seq,
                stamp_ms: at_ms,
                op: op.encode(),
            },
            slot,
        )
    }
}

/// What a result's payload is, to decode it.
#[derive(Clone, Copy, Debug)]
enum Payload {
    Nothing,
    Projection,
    Layout,
    Members,
    Lease,
    Mark,
    Factor,
    Group,
    History,
    Refused(Refusal),
}

/// The results of the document: one client (9) submitting, in this order and
/// with these stamps, the operations the document lists. Also returns the
/// results of the operations whose result is `result-ok`.
#[allow(clippy::type_complexity)]
fn result_vectors() -> (
    Vec<(&'static str, Vec<u8>, Payload)>,
    Vec<(&'static str, Vec<u8>)>,
) {
    let mut h = History::new(9);
    let mut v = Vec::new();
    let mut ok = Vec::new();
    let register = |id: u64, role: Role, port: u16| Op::Register {
        id,
        role,
        addr: format!("127.0.0.1:{port}"),
    };
    v.push((
        "result-layout-none",
        h.apply(T, Op::Layout),
        Payload::Layout,
    ));
    ok.push(("register", h.apply(T, register(1, Role::Storage, 7421))));
    ok.push(("register", h.apply(T, register(2, Role::Storage, 7422))));
    ok.push(("heartbeat", h.apply(T + 1_000, Op::Heartbeat { id: 1 })));
    let init = Op::InitLayout {
        stripes: 1,
        replicas: 2,
    };
    v.push((
        "result-init-layout",
        h.apply(T + 1_000, init),
        Payload::Projection,
    ));
    v.push((
        "result-members",
        h.apply(T + 1_000, Op::Members),
        Payload::Members,
    ));
    v.push((
        "result-layout",
        h.apply(T + 1_000, Op::Layout),
        Payload::Layout,
    ));
    let install = |expected_epoch| Op::Install {
        expected_epoch,
        projection: one_segment(2, 0, vec![vec![2, 1]]),
    };
    v.push((
        "result-install-epoch-mismatch",
        h.apply(T + 1_000, install(2)),
        Payload::Refused(Refusal::EpochMismatch),
    ));
    v.push((
        "result-install",
        h.apply(T + 1_000, install(1)),
        Payload::Projection,
    ));
    let acquire = |holder: &str| Op::Acquire {
        name: "jobs".into(),
        holder: holder.into(),
        ttl_ms: 10_000,
    };
    v.push((
        "result-acquire",
        h.apply(T + 2_000, acquire("alice")),
        Payload::Lease,
    ));
    v.push((
        "result-acquire-lock-held",
        h.apply(T + 3_000, acquire("bob")),
        Payload::Refused(Refusal::LockHeld),
    ));
    let renew = Op::Renew {
        name: "jobs".into(),
        token: 1,
        ttl_ms: 10_000,
    };
    v.push((
        "result-renew",
        h.apply(T + 4_000, renew.clone()),
        Payload::Lease,
    ));
    v.push((
        "result-get-lock",
        h.apply(
            T + 5_000,
            Op::GetLock {
                name: "jobs".into(),
            },
        ),
        Payload::Lease,
    ));
    v.push((
        "result-renew-lease-expired",
        h.apply(T + 20_000, renew),
        Payload::Refused(Refusal::LeaseExpired),
    ));
    let release = Op::Release {
        name: "jobs".into(),
        token: 1,
    };
    ok.push(("release", h.apply(T + 20_000, release)));
    ok.push((
        "register",
        h.apply(T + 21_000, register(7410, Role::Sequencer, 7410)),
    ));
    let lease = h.apply(
        T + 21_000,
        Op::System(Box::new(Op::Acquire {
            name: "sequencer".into(),
            holder: "127.0.0.1:7410".into(),
            ttl_ms: 5_000,
        })),
    );
    let (_, l) = decode_lock(&mut Reader::new(&lease[1..])).unwrap();
    assert_eq!(l.token, 2, "the sequencer's lease is the second grant");
    v.push((
        "result-install-as-sequencer",
        h.apply(
            T + 22_000,
            Op::InstallAsSequencer {
                expected_epoch: 2,
                projection: one_segment(3, 7410, vec![vec![2, 1]]),
                lease_token: 2,
            },
        ),
        Payload::Projection,
    ));
    v.push((
        "result-heartbeat-not-registered",
        h.apply(T + 22_000, Op::Heartbeat { id: 99 }),
        Payload::Refused(Refusal::NotRegistered),
    ));
    v.push((
        "result-get-lock-no-such-lock",
        h.apply(
            T + 22_000,
            Op::GetLock {
                name: "nope".into(),
            },
        ),
        Payload::Refused(Refusal::NoSuchLock),
    ));
    ok.push((
        "set-lock-grace",
        h.apply(T + 22_000, Op::SetLockGrace { grace_ms: 2_000 }),
    ));
    ok.push(("noop", h.apply(T + 22_000, Op::Noop)));
    ok.push(("deregister", h.apply(T + 22_000, Op::Deregister { id: 2 })));
    v.push((
        "result-trim",
        h.apply(T + 23_000, Op::Trim { mark: 4096 }),
        Payload::Mark,
    ));
    // A lower mark (and 0, a read) leaves the recorded one: a mark never moves back.
    let lower = h.apply(T + 23_000, Op::Trim { mark: 100 });
    assert_eq!(
        lower,
        v.last().unwrap().1,
        "a lower trim mark moved the mark back"
    );
    v.push((
        "result-acquire-reserved-name",
        h.apply(
            T + 23_000,
            Op::Acquire {
                name: "sequencer".into(),
                holder: "mallory".into(),
                ttl_ms: 10_000,
            },
        ),
        Payload::Refused(Refusal::ReservedName),
    ));
    v.push((
        "result-replication",
        h.apply(T + 23_000, Op::Replication { replicas: 3 }),
        Payload::Factor,
    ));
    // The consensus group: recorded by the first leader, then changed one
    // node at a time, each change voting GROUP_LAG (64) slots after its own.
    let node = |id: u64| (id, format!("10.0.0.{id}:7400"));
    v.push((
        "result-group-not-recorded",
        h.apply_in(9, T + 24_000, Op::GroupRemove { id: 3 }),
        Payload::Refused(Refusal::ChangeInProgress),
    ));
    v.push((
        "result-group-init",
        h.apply_in(
            10,
            T + 24_000,
            Op::GroupInit {
                nodes: vec![node(1), node(2), node(3)],
            },
        ),
        Payload::Group,
    ));
    v.push((
        "result-group-add",
        h.apply_in(
            11,
            T + 24_000,
            Op::GroupAdd {
                id: 4,
                addr: node(4).1,
            },
        ),
        Payload::Group,
    ));
    v.push((
        "result-group-change-in-progress",
        h.apply_in(12, T + 24_000, Op::GroupRemove { id: 3 }),
        Payload::Refused(Refusal::ChangeInProgress),
    ));
    v.push((
        "result-group-remove",
        h.apply_in(80, T + 25_000, Op::GroupRemove { id: 3 }),
        Payload::Group,
    ));
    v.push((
        "result-group",
        h.apply_in(81, T + 25_000, Op::Group),
        Payload::Group,
    ));
    v.push((
        "result-group-add-retired-id",
        h.apply_in(
            200,
            T + 26_000,
            Op::GroupAdd {
                id: 3,
                addr: node(5).1,
            },
        ),
        Payload::Refused(Refusal::IdInUse),
    ));
    v.push((
        "result-group-replace",
        h.apply_in(
            210,
            T + 26_000,
            Op::GroupReplace {
                old: 2,
                id: 5,
                addr: node(2).1,
            },
        ),
        Payload::Group,
    ));
    v.push((
        "result-layout-history",
        h.apply(T + 26_000, Op::LayoutHistory { from: 1, max: 2 }),
        Payload::History,
    ));
    // Every operation whose result is "—" answers the same bytes: register's.
    v.push(("result-ok", ok[0].1.clone(), Payload::Nothing));
    (v, ok)
}

/// The snapshot state after a small history of one client (9): register storage
/// unit 1, init-layout 1 × 1 (epoch 1), install epoch 2 naming sequencer 7410,
/// acquire `jobs` for `alice`.
fn snapshot_history() -> StateMachine {
    let mut h = History::new(9);
    h.apply(
        T,
        Op::Register {
            id: 1,
            role: Role::Storage,
            addr: "127.0.0.1:7421".into(),
        },
    );
    h.apply(
        T,
        Op::InitLayout {
            stripes: 1,
            replicas: 1,
        },
    );
    h.apply(
        T,
        Op::Install {
            expected_epoch: 1,
            projection: one_segment(2, 7410, vec![vec![1]]),
        },
    );
    h.apply(
        T + 1_000,
        Op::Acquire {
            name: "jobs".into(),
            holder: "alice".into(),
            ttl_ms: 10_000,
        },
    );
    h.sm
}

fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<_> = op_vectors()
        .into_iter()
        .map(|(n, op)| (n, op.encode()))
        .collect();
    v.extend(result_vectors().0.into_iter().map(|(n, r, _)| (n, r)));
    v.push(("snapshot-state", snapshot_history().encode()));
    v
}

/// The prefixes of the vectors this test owns (`wire/tests/golden.rs` checks
/// the frames).
const OURS: [&str; 3] = ["op-", "result-", "snapshot-"];

#[test]
fn documented_operations_match_the_code() {
    let code = vectors();
    if std::env::var("TREX_PRINT_VECTORS").is_ok() {
        for (name, bytes) in &code {
            println!("```hex {name}\n{}\n```\n", hex(bytes));
        }
    }
    let doc = documented();
    for (name, bytes) in &code {
        let Some((_, d)) = doc.iter().find(|(n, _)| n == name) else {
            panic!("docs/wire.md lacks the vector '{name}'");
        };
        assert_eq!(
            hex(d),
            hex(bytes),
            "vector '{name}' differs between docs/wire.md and the code"
        );
    }
    let unchecked: Vec<&str> = doc
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| OURS.iter().any(|p| n.starts_with(p)) && !code.iter().any(|(c, _)| c == n))
        .collect();
    assert!(
        unchecked.is_empty(),
        "docs/wire.md has vectors no test checks: {unchecked:?}"
    );
    for (name, op) in op_vectors() {
        assert_eq!(
            Op::decode(&op.encode()).unwrap(),
            op,
            "'{name}' round-trips"
        );
    }
}

#[test]
fn every_operation_tag_has_a_vector() {
    let tags: Vec<u8> = op_vectors().iter().map(|(_, op)| op.encode()[0]).collect();
    for t in 0..=u8::MAX {
        let known = !matches!(Op::decode(&[t]), Err(DecodeError::UnknownOpcode(_)));
        assert_eq!(
            known,
            tags.contains(&t),
            "operation tag {t}: known to the decoder: {known}, has an op- vector: {}",
            !known
        );
    }
}

#[test]
fn result_vectors_decode_as_the_document_says() {
    let (results, ok) = result_vectors();
    for (op, r) in ok {
        assert_eq!(r, vec![0], "{op} answers the bare `00` of result-ok");
    }
    for (name, r, payload) in results {
        let decoded = decode_result(&r).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut rd = match (decoded, payload) {
            (Err(refused), Payload::Refused(code)) => {
                assert_eq!(refused.code, code, "{name}");
                continue;
            }
            (Ok(rest), _) => Reader::new(rest),
            (Err(refused), _) => panic!("{name} was refused: {refused}"),
        };
        match payload {
            Payload::Nothing => {}
            Payload::Projection => {
                decode_projection(&mut rd).unwrap();
            }
            Payload::Layout => {
                if rd.u64().unwrap() > 0 {
                    decode_projection(&mut rd).unwrap();
                }
            }
            Payload::Members => {
                decode_members(&mut rd).unwrap();
            }
            Payload::Lease => {
                decode_lock(&mut rd).unwrap();
            }
            Payload::Mark => {
                rd.u64().unwrap();
            }
            Payload::Factor => {
                rd.u32().unwrap();
            }
            Payload::Group => {
                decode_group(&mut rd).unwrap();
            }
            Payload::History => {
                assert_eq!(rd.u64().unwrap(), 3, "{name}: three projections installed");
                assert_eq!(rd.u32().unwrap(), 2, "{name}: two asked for from index 1");
                let epochs = [
                    decode_projection(&mut rd).unwrap().epoch,
                    decode_projection(&mut rd).unwrap().epoch,
                ];
                assert_eq!(epochs, [2, 3], "{name}: oldest first");
            }
            Payload::Refused(code) => panic!("{name} was not refused with {code:?}"),
        }
        rd.finish().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_snapshot_state_decodes_to_the_state_that_made_it() {
    let sm = snapshot_history();
    assert_eq!(sm.members.len(), 1);
    assert_eq!(sm.history.len(), 2);
    assert_eq!(sm.clients.len(), 1);
    assert_eq!(sm.locks.len(), 1);
    assert_eq!(StateMachine::decode(&sm.encode()).unwrap(), sm);
}

/// `peer-snapshot` (checked as a frame by `wire/tests/golden.rs`) carries the
/// state of a state machine that applied the command of `peer-accept` alone.
#[test]
fn the_peer_snapshot_vector_carries_a_real_state() {
    use trex_wire::consensus::{decode_peer, Msg};
    let doc = documented();
    let frame = &doc
        .iter()
        .find(|(n, _)| n == "peer-snapshot")
        .expect("docs/wire.md has peer-snapshot")
        .1;
    let f = trex_wire::parse_frame(frame).unwrap().unwrap();
    let (_, msg) = decode_peer(f.body).unwrap();
    let Msg::Snapshot { upto: 5, state } = msg else {
        panic!("peer-snapshot is a snapshot up to 5: {msg:?}");
    };
    let mut sm = StateMachine::default();
    assert_eq!(
        sm.apply(&Command {
            client: 9,
            seq: 1,
            stamp_ms: T,
            op: Op::Noop.encode(),
        }),
        vec![0]
    );
    assert_eq!(hex(&state), hex(&sm.encode()));
}
