//! Golden vectors: every message of `docs/wire.md`, built by the code here and
//! compared byte for byte with the hex in the document. Run with
//! `TREX_PRINT_VECTORS=1 cargo test -p trex-wire --test golden -- --nocapture`
//! to print the vectors (e.g. after a deliberate, versioned protocol change).

#[path = "support/doc_vectors.rs"]
mod doc_vectors;

use doc_vectors::{documented, hex};
use trex_wire::*;

fn frame(
    opcode: Opcode,
    flags: u16,
    request_id: u64,
    epoch: u64,
    body: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    body(&mut f);
    finish_frame(
        &mut f,
        s,
        Header {
            opcode: opcode as u8,
            flags,
            request_id,
            epoch,
            ..Header::default()
        },
    );
    f
}

const REQ: u16 = 0;
const REP: u16 = FLAG_RESPONSE;

fn consensus_vectors() -> Vec<(&'static str, Vec<u8>)> {
    use trex_wire::consensus::*;
    let b = Ballot {
        counter: 2,
        node: 1,
    };
    let cmd = Command {
        client: 9,
        seq: 1,
        stamp_ms: 1_700_000_000_000,
        op: vec![8],
    };
    vec![
        (
            "submit-request",
            frame(Opcode::Submit, REQ, 8, 0, |x| encode_submit(x, 9, 1, &[8])),
        ),
        (
            "submit-reply-applied",
            frame(Opcode::Submit, REP, 8, 0, |x| {
                encode_submit_reply(x, &SubmitReply::Applied(vec![0]))
            }),
        ),
        (
            "submit-reply-not-leader",
            frame(Opcode::Submit, REP, 8, 0, |x| {
                encode_submit_reply(
                    x,
                    &SubmitReply::NotLeader {
                        leader: 2,
                        addr: "127.0.0.1:7401".into(),
                    },
                )
            }),
        ),
        (
            "node-status-request",
            frame(Opcode::NodeStatus, REQ, 9, 0, |_| {}),
        ),
        (
            "node-status-reply",
            frame(Opcode::NodeStatus, REP, 9, 0, |x| {
                encode_node_status(
                    x,
                    &NodeStatus {
                        id: 1,
                        leader: 1,
                        leading: true,
                        promised: b,
                        commit: 5,
                        applied: 5,
                        snapshot: 0,
                        journal_bytes: 321,
                    },
                )
            }),
        ),
        (
            "peer-prepare",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(x, 1, &Msg::Prepare { ballot: b, from: 4 })
            }),
        ),
        (
            "peer-accept",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(
                    x,
                    1,
                    &Msg::Accept {
                        ballot: b,
                        slot: 4,
                        value: vec![cmd.clone()],
                        commit: 4,
                    },
                )
            }),
        ),
        (
            "peer-promise",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(
                    x,
                    3,
                    &Msg::Promise {
                        ballot: b,
                        accepted: vec![(
                            4,
                            Ballot {
                                counter: 1,
                                node: 2,
                            },
                            vec![],
                        )],
                        snapshot: 0,
                        upto: u64::MAX,
                    },
                )
            }),
        ),
        (
            "peer-commit",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(
                    x,
                    1,
                    &Msg::Commit {
                        ballot: b,
                        commit: 5,
                    },
                )
            }),
        ),
        (
            "peer-pre-vote",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(x, 1, &Msg::PreVote { ballot: b })
            }),
        ),
        (
            "peer-pre-vote-reply",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(
                    x,
                    3,
                    &Msg::PreVoteReply {
                        ballot: b,
                        granted: true,
                    },
                )
            }),
        ),
        (
            "peer-accepted",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(x, 3, &Msg::Accepted { ballot: b, slot: 4 })
            }),
        ),
        (
            "peer-nack",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(
                    x,
                    3,
                    &Msg::Nack {
                        ballot: b,
                        promised: Ballot {
                            counter: 3,
                            node: 2,
                        },
                    },
                )
            }),
        ),
        (
            "peer-catch-up",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(x, 3, &Msg::CatchUp { from: 4 })
            }),
        ),
        (
            "peer-chosen",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(
                    x,
                    1,
                    &Msg::Chosen {
                        entries: vec![(4, vec![cmd.clone()])],
                        commit: 5,
                    },
                )
            }),
        ),
        (
            "peer-snapshot",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(
                    x,
                    1,
                    &Msg::Snapshot {
                        upto: 5,
                        state: state_after_one_noop(&cmd),
                    },
                )
            }),
        ),
        (
            "peer-commit-ack",
            frame(Opcode::Peer, REQ, 0, 0, |x| {
                encode_peer(x, 3, &Msg::CommitAck { ballot: b })
            }),
        ),
        (
            "peer-hello",
            frame(Opcode::Peer, REQ, 0, 0, |x| encode_peer(x, 2, &Msg::Hello)),
        ),
    ]
}

/// The snapshot state ("Snapshot state" in docs/wire.md) of a state machine
/// that applied one command, a `noop` (result `00`), and nothing else. Spelled
/// out here (trex-wire does not know the state machine); the engine's
/// `golden_ops` test checks it against `StateMachine::encode`.
fn state_after_one_noop(c: &trex_wire::consensus::Command) -> Vec<u8> {
    let mut s = Vec::new();
    put_u32(&mut s, 0); // members
    put_u32(&mut s, 0); // projections
    put_u32(&mut s, 1); // client entries
    put_u64(&mut s, c.client);
    put_u64(&mut s, c.seq);
    put_u32(&mut s, 1);
    s.push(0); // the noop's result: ok
    put_u32(&mut s, 0); // leases
    put_u64(&mut s, 0); // fence
    put_u64(&mut s, 0); // lock_grace_ms
    put_u32(&mut s, 1); // client stamps
    put_u64(&mut s, c.client);
    put_u64(&mut s, c.stamp_ms);
    put_u64(&mut s, 0); // trim_mark
    put_u32(&mut s, 0); // replication
    s
}

fn sequencer_vectors() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "token-request",
            frame(Opcode::Token, REQ, 10, 0, |x| encode_token_request(x, 100)),
        ),
        (
            "token-reply-granted",
            frame(Opcode::Token, REP, 10, 0, |x| {
                encode_token_reply(
                    x,
                    &TokenReply::Granted {
                        epoch: 3,
                        first: 4096,
                    },
                )
            }),
        ),
        (
            "token-reply-not-sequencer",
            frame(Opcode::Token, REP, 10, 0, |x| {
                encode_token_reply(
                    x,
                    &TokenReply::NotSequencer {
                        hint: "127.0.0.1:7411".into(),
                    },
                )
            }),
        ),
    ]
}

/// `node-info`, which every role answers: a sequencer's reply, and a storage
/// unit's (its sealed epoch in the header).
fn node_info_vectors() -> Vec<(&'static str, Vec<u8>)> {
    use trex_wire::ops::Role;
    let info = |role| NodeInfo {
        role,
        version: "0.1.0".into(),
        revision: "0123456789ab".into(),
    };
    vec![
        (
            "node-info-request",
            frame(Opcode::NodeInfo, REQ, 11, 0, |_| {}),
        ),
        (
            "node-info-reply-sequencer",
            frame(Opcode::NodeInfo, REP, 11, 0, |x| {
                encode_node_info(x, &info(Role::Sequencer))
            }),
        ),
        (
            "node-info-reply-storage",
            frame(Opcode::NodeInfo, REP, 11, 4, |x| {
                encode_node_info(x, &info(Role::Storage))
            }),
        ),
    ]
}

fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = storage_vectors();
    v.extend(consensus_vectors());
    v.extend(sequencer_vectors());
    v.extend(node_info_vectors());
    v
}

fn storage_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let ops = [
        WriteOp {
            addr: 0x10,
            writer: 7,
            seq: 1,
            data: b"hi",
        },
        WriteOp {
            addr: 0x11,
            writer: 7,
            seq: 2,
            data: b"",
        },
    ];
    vec![
        (
            "write-request",
            frame(Opcode::Write, REQ, 1, 3, |b| encode_write_request(b, &ops)),
        ),
        (
            "write-reply",
            frame(Opcode::Write, REP, 1, 3, |b| {
                encode_status_list(b, &[Status::Ok, Status::Written])
            }),
        ),
        (
            "read-request",
            frame(Opcode::Read, REQ, 2, 3, |b| {
                encode_addr_list(b, &[0x10, 0x12])
            }),
        ),
        (
            "read-reply",
            frame(Opcode::Read, REP, 2, 3, |b| {
                let mut r = ReadReplyBuilder::begin(b);
                r.entry(
                    b,
                    0x10,
                    Entry {
                        writer: 7,
                        seq: 1,
                        data: b"hi",
                    },
                );
                r.status(b, 0x12, Status::Unwritten);
                r.finish(b);
            }),
        ),
        (
            "fill-request",
            frame(Opcode::Fill, REQ, 3, 3, |b| encode_addr_list(b, &[0x12])),
        ),
        (
            "fill-reply",
            frame(Opcode::Fill, REP, 3, 3, |b| {
                encode_status_list(b, &[Status::Ok])
            }),
        ),
        (
            "trim-request",
            frame(Opcode::Trim, REQ, 4, 3, |b| encode_u64(b, 0x10)),
        ),
        (
            "trim-reply",
            frame(Opcode::Trim, REP, 4, 3, |b| encode_u64(b, 0x10)),
        ),
        (
            "seal-request",
            frame(Opcode::Seal, REQ, 5, 3, |b| encode_u64(b, 4)),
        ),
        (
            "seal-reply",
            frame(Opcode::Seal, REP, 5, 4, |b| {
                encode_seal_reply(
                    b,
                    &SealReply {
                        sealed: true,
                        sealed_epoch: 4,
                        tail: 0x13,
                    },
                )
            }),
        ),
        ("info-request", frame(Opcode::Info, REQ, 6, 0, |_| {})),
        (
            "info-reply",
            frame(Opcode::Info, REP, 6, 4, |b| {
                encode_info_reply(
                    b,
                    &InfoReply {
                        sealed_epoch: 4,
                        trim_mark: 0x10,
                        tail: 0x13,
                        entries: 2,
                        junk: 1,
                        corrupt: 0,
                        segments: 1,
                        flags: 0,
                        segment_size_bytes: 64 << 20,
                        // The segment header (64), the opening meta record,
                        // seal 3, trim and seal 4 (40 each), the entries at
                        // 0x11 and 0x10 (48 each), the junk at 0x12 (40).
                        used_bytes: 360,
                    },
                )
            }),
        ),
        (
            "stale-write-request",
            frame(Opcode::Write, REQ, 7, 3, |b| {
                encode_write_request(
                    b,
                    &[WriteOp {
                        addr: 0x13,
                        writer: 7,
                        seq: 3,
                        data: b"hi",
                    }],
                )
            }),
        ),
        (
            "error-reply",
            frame(Opcode::Write, REP | FLAG_ERROR, 7, 4, |b| {
                encode_error(
                    b,
                    ErrorCode::SealedEpoch as u16,
                    "epoch 3 is sealed; the unit is at epoch 4: refresh the layout and retry",
                )
            }),
        ),
    ]
}

#[test]
fn every_documented_vector_matches_the_code() {
    let code = vectors();
    if std::env::var("TREX_PRINT_VECTORS").is_ok() {
        for (name, bytes) in &code {
            println!("```hex {name}\n{}\n```\n", hex(bytes));
        }
    }
    let doc = documented();
    let names: Vec<&str> = doc.iter().map(|(n, _)| n.as_str()).collect();
    for (name, bytes) in &code {
        let Some((_, d)) = doc.iter().find(|(n, _)| n == name) else {
            panic!("docs/wire.md lacks the vector '{name}' (has {names:?})");
        };
        assert_eq!(
            hex(d),
            hex(bytes),
            "vector '{name}' differs between docs/wire.md and the code"
        );
    }
    // `op-…`, `result-…` and `snapshot-…` vectors are the state machine's
    // operations, results and state, checked by the engine's `golden_ops`
    // test; every other vector must be one of ours.
    let engine = ["op-", "result-", "snapshot-"];
    let unchecked: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !engine.iter().any(|p| n.starts_with(p)) && !code.iter().any(|(c, _)| c == n))
        .collect();
    assert!(
        unchecked.is_empty(),
        "docs/wire.md has vectors no test checks: {unchecked:?}"
    );
}

#[test]
fn every_documented_vector_decodes_to_what_the_doc_says() {
    for (name, bytes) in vectors() {
        let n = check_frame(&bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len(), "{name}");
        let f = parse_frame(&bytes).unwrap().unwrap();
        if !f.header.is_response() && f.header.opcode < 0x10 {
            let req =
                decode_request(f.header.opcode, f.body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(req.opcode() as u8, f.header.opcode);
        }
        if f.header.opcode == Opcode::NodeInfo as u8 {
            if f.header.is_response() {
                let info = decode_node_info(f.body).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    (info.version.as_str(), info.revision.as_str()),
                    ("0.1.0", "0123456789ab")
                );
            } else {
                decode_node_info_request(f.body).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        if f.header.opcode == Opcode::Peer as u8 {
            use trex_wire::consensus::{decode_peer, encode_peer};
            let (from, msg) = decode_peer(f.body).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut again = Vec::new();
            encode_peer(&mut again, from, &msg);
            assert_eq!(again, f.body, "{name} round-trips");
        }
    }
    let f = vectors()
        .into_iter()
        .find(|(n, _)| *n == "read-reply")
        .unwrap()
        .1;
    let body = parse_frame(&f).unwrap().unwrap().body;
    let got: Vec<_> = decode_read_reply(body).unwrap().iter().collect();
    assert_eq!(got[0].entry.unwrap().data, b"hi");
    assert_eq!(got[1].status, Status::Unwritten);
}

#[test]
fn every_peer_message_type_has_a_vector() {
    use trex_wire::consensus::decode_msg;
    let types: Vec<u8> = vectors()
        .iter()
        .filter(|(n, _)| n.starts_with("peer-"))
        .map(|(_, f)| f[HEADER_LEN + 8])
        .collect();
    for t in 0..=u8::MAX {
        let known = !matches!(decode_msg(&[t]), Err(DecodeError::UnknownOpcode(_)));
        assert_eq!(
            known,
            types.contains(&t),
            "peer message type {t}: known to the decoder: {known}, has a golden vector: {}",
            !known
        );
    }
}
