//! Model test: a storage unit against an in-memory `BTreeMap` model over random
//! sequences of write/read/fill/trim/seal, sync steps, and reopen/crash steps.
//!
//! The model keeps two states: what the unit has applied (`live`) and what a
//! completed sync made durable (`durable`). Every reply is predicted when its
//! request is applied and checked when the unit releases it. A power loss
//! (in-memory store) drops everything after the last completed sync; a process
//! crash (memory-mapped store) keeps what reached the page cache.

use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use trex_unit::storage::memory::MemStore;
use trex_unit::storage::mmap::{MmapOptions, MmapStore};
use trex_unit::storage::{Store, SyncJob};
use trex_unit::unit::{Unit, UnitConfig};
use trex_wire::{
    self as wire, begin_frame, finish_frame, ErrorCode, Header, Opcode, Status, WriteOp,
};

#[derive(Clone, Debug)]
enum Op {
    Write {
        addr: u64,
        writer: u64,
        seq: u64,
        len: usize,
        epoch_delta: i8,
    },
    Read {
        addr: u64,
        count: u64,
        epoch_delta: i8,
    },
    Fill {
        addr: u64,
        epoch_delta: i8,
    },
    Trim {
        prefix: u64,
    },
    Seal {
        bump: u64,
    },
    StartSync,
    FinishSync,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let addr = 0u64..40;
    let delta = prop_oneof![8 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)];
    prop_oneof![
        10 => (addr.clone(), 1u64..4, 1u64..3, 0usize..6000, delta.clone())
            .prop_map(|(addr, writer, seq, len, epoch_delta)| Op::Write { addr, writer, seq, len, epoch_delta }),
        5 => (addr.clone(), 1u64..5, delta.clone()).prop_map(|(addr, count, epoch_delta)| Op::Read { addr, count, epoch_delta }),
        3 => (addr.clone(), delta).prop_map(|(addr, epoch_delta)| Op::Fill { addr, epoch_delta }),
        1 => (0u64..45).prop_map(|prefix| Op::Trim { prefix }),
        1 => (0u64..3).prop_map(|bump| Op::Seal { bump }),
        4 => Just(Op::StartSync),
        4 => Just(Op::FinishSync),
        1 => Just(Op::Crash),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Val {
    Data {
        writer: u64,
        seq: u64,
        bytes: Vec<u8>,
    },
    Junk,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    map: BTreeMap<u64, Val>,
    sealed: u64,
    trim: u64,
    tail: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Error(ErrorCode),
    Statuses(Vec<Status>),
    Reads(Vec<(u64, Status, Option<Val>)>),
    Mark(u64),
    Seal(wire::SealReply),
}

fn payload(writer: u64, seq: u64, addr: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + writer * 7 + seq * 3 + addr) as u8)
        .collect()
}

fn epoch_of(s: &State, delta: i8) -> u64 {
    (s.sealed as i64 + i64::from(delta)).max(0) as u64
}

/// Applies `op` to the model and predicts the reply.
fn predict(s: &mut State, op: &Op) -> Option<Expect> {
    let sealed_err = |e: u64, s: &State| e < s.sealed;
    Some(match op {
        Op::Write {
            addr,
            writer,
            seq,
            len,
            epoch_delta,
        } => {
            if sealed_err(epoch_of(s, *epoch_delta), s) {
                return Some(Expect::Error(ErrorCode::SealedEpoch));
            }
            let bytes = payload(*writer, *seq, *addr, *len);
            let st = if *addr < s.trim {
                Status::Trimmed
            } else {
                match s.map.get(addr) {
                    Some(Val::Data {
                        writer: w,
                        seq: q,
                        bytes: b,
                    }) => {
                        if w == writer && q == seq && *b == bytes {
                            Status::Ok
                        } else {
                            Status::Written
                        }
                    }
                    Some(Val::Junk) => Status::Junk,
                    None => {
                        s.map.insert(
                            *addr,
                            Val::Data {
                                writer: *writer,
                                seq: *seq,
                                bytes,
                            },
                        );
                        s.tail = s.tail.max(addr + 1);
                        Status::Ok
                    }
                }
            };
            Expect::Statuses(vec![st])
        }
        Op::Fill { addr, epoch_delta } => {
            if sealed_err(epoch_of(s, *epoch_delta), s) {
                return Some(Expect::Error(ErrorCode::SealedEpoch));
            }
            let st = if *addr < s.trim {
                Status::Trimmed
            } else {
                match s.map.get(addr) {
                    Some(Val::Data { .. }) => Status::Written,
                    Some(Val::Junk) => Status::Ok,
                    None => {
                        s.map.insert(*addr, Val::Junk);
                        s.tail = s.tail.max(addr + 1);
                        Status::Ok
                    }
                }
            };
            Expect::Statuses(vec![st])
        }
        Op::Read {
            addr,
            count,
            epoch_delta,
        } => {
            if sealed_err(epoch_of(s, *epoch_delta), s) {
                return Some(Expect::Error(ErrorCode::SealedEpoch));
            }
            Expect::Reads(
                (*addr..addr + count)
                    .map(|a| match s.map.get(&a) {
                        _ if a < s.trim => (a, Status::Trimmed, None),
                        None => (a, Status::Unwritten, None),
                        Some(Val::Junk) => (a, Status::Junk, None),
                        Some(v) => (a, Status::Ok, Some(v.clone())),
                    })
                    .collect(),
            )
        }
        Op::Trim { prefix } => {
            if *prefix > s.trim {
                s.trim = *prefix;
                s.map.retain(|a, _| *a >= *prefix);
                s.tail = s.tail.max(*prefix);
            }
            Expect::Mark(s.trim)
        }
        Op::Seal { bump } => {
            let e = s.sealed + bump;
            let sealed = e > s.sealed;
            s.sealed = s.sealed.max(e);
            Expect::Seal(wire::SealReply {
                sealed,
                sealed_epoch: s.sealed,
                tail: s.tail,
            })
        }
        Op::StartSync | Op::FinishSync | Op::Crash => return None,
    })
}

fn frame(op: &Op, id: u64, s: &State) -> Vec<u8> {
    let mut f = Vec::new();
    let start = begin_frame(&mut f);
    let (opcode, epoch) = match op {
        Op::Write {
            addr,
            writer,
            seq,
            len,
            epoch_delta,
        } => {
            let bytes = payload(*writer, *seq, *addr, *len);
            let w = WriteOp {
                addr: *addr,
                writer: *writer,
                seq: *seq,
                data: &bytes,
            };
            wire::encode_write_request(&mut f, &[w]);
            (Opcode::Write, epoch_of(s, *epoch_delta))
        }
        Op::Read {
            addr,
            count,
            epoch_delta,
        } => {
            let addrs: Vec<u64> = (*addr..addr + count).collect();
            wire::encode_addr_list(&mut f, &addrs);
            (Opcode::Read, epoch_of(s, *epoch_delta))
        }
        Op::Fill { addr, epoch_delta } => {
            wire::encode_addr_list(&mut f, &[*addr]);
            (Opcode::Fill, epoch_of(s, *epoch_delta))
        }
        Op::Trim { prefix } => {
            wire::encode_u64(&mut f, *prefix);
            (Opcode::Trim, s.sealed)
        }
        Op::Seal { bump } => {
            wire::encode_u64(&mut f, s.sealed + bump);
            (Opcode::Seal, 0)
        }
        _ => unreachable!("not a request"),
    };
    let h = Header {
        opcode: opcode as u8,
        request_id: id,
        epoch,
        ..Header::default()
    };
    finish_frame(&mut f, start, h);
    f
}

fn observe(f: &[u8]) -> Expect {
    let fr = wire::parse_frame(f)
        .expect("valid reply frame")
        .expect("whole reply frame");
    assert!(fr.header.is_response());
    if fr.header.is_error() {
        let e = wire::decode_error(fr.body).expect("error body");
        return Expect::Error(ErrorCode::from_u16(e.code).expect("known code"));
    }
    match Opcode::from_u8(fr.header.opcode).expect("known opcode") {
        Opcode::Write | Opcode::Fill => Expect::Statuses(
            wire::decode_status_list(fr.body)
                .expect("statuses")
                .iter()
                .collect(),
        ),
        Opcode::Read => Expect::Reads(
            wire::decode_read_reply(fr.body)
                .expect("read reply")
                .iter()
                .map(|r| {
                    let v = r.entry.map(|e| Val::Data {
                        writer: e.writer,
                        seq: e.seq,
                        bytes: e.data.to_vec(),
                    });
                    (r.addr, r.status, v)
                })
                .collect(),
        ),
        Opcode::Trim => Expect::Mark(wire::decode_u64(fr.body).expect("mark")),
        Opcode::Seal => Expect::Seal(wire::decode_seal_reply(fr.body).expect("seal reply")),
        other => panic!("unexpected reply opcode {other:?}"),
    }
}

/// A store that can crash: returns the store as the next open finds it, and
/// whether unsynced state survives.
trait Backend: Store + Sized {
    fn crash(self) -> (Self, bool);
}

impl Backend for MemStore {
    fn crash(mut self) -> (Self, bool) {
        MemStore::crash(&mut self);
        (self, false)
    }
}

impl Backend for MmapStore {
    fn crash(self) -> (Self, bool) {
        let dir = self.dir().to_path_buf();
        drop(self); // a killed process: the page cache keeps what was written
        (open_disk(&dir), true)
    }
}

fn open_disk(dir: &std::path::Path) -> MmapStore {
    MmapStore::open(
        dir,
        &MmapOptions {
            segment_size: 64 * 1024,
        },
    )
    .expect("open store")
}

/// Runs a sync job's I/O the way the node's sync thread does.
fn run_job(job: &SyncJob) {
    for f in &job.files {
        f.sync_data().expect("fdatasync");
    }
}

fn run_model<B: Backend>(store: B, ops: &[Op]) {
    let (mut unit, _) = Unit::open(store, UnitConfig::default()).expect("open");
    let mut live = State::default();
    let mut durable = State::default();
    let mut syncing: Option<(SyncJob, State)> = None;
    let mut expected: HashMap<u64, Expect> = HashMap::new();
    let mut next_id = 1u64;
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::StartSync => {
                if syncing.is_none() {
                    if let Some(job) = unit.poll_sync() {
                        syncing = Some((job, live.clone()));
                    }
                }
            }
            Op::FinishSync => {
                if let Some((job, snap)) = syncing.take() {
                    run_job(&job);
                    unit.on_synced(job.lsn, Ok(()));
                    durable = snap;
                }
            }
            Op::Crash => {
                syncing = None;
                expected.clear(); // replies not yet released are lost with the process
                let (store, keeps_unsynced) = unit.into_store().crash();
                if keeps_unsynced {
                    durable = live.clone();
                } else {
                    live = durable.clone();
                }
                unit = Unit::open(store, UnitConfig::default()).expect("reopen").0;
                assert_eq!(
                    unit.meta().sealed_epoch,
                    live.sealed,
                    "step {step}: sealed epoch after crash"
                );
                assert_eq!(
                    unit.meta().trim_mark,
                    live.trim,
                    "step {step}: trim mark after crash"
                );
            }
            _ => {
                let f = frame(op, next_id, &live);
                let want = predict(&mut live, op).expect("request op");
                expected.insert(next_id, want);
                let fr = wire::parse_frame(&f).unwrap().unwrap();
                assert!(
                    unit.on_frame(next_id, &fr.header, fr.body),
                    "valid frames keep the connection"
                );
                next_id += 1;
            }
        }
        while let Some(r) = unit.poll_reply() {
            let want = expected
                .remove(&r.to)
                .unwrap_or_else(|| panic!("step {step}: unexpected reply to {}", r.to));
            assert_eq!(
                observe(&r.frame),
                want,
                "step {step}: reply to request {} ({op:?})",
                r.to
            );
        }
    }
    // Final: everything synced, every reply released, and a full read-back agrees.
    if let Some((job, _)) = syncing.take() {
        run_job(&job);
        unit.on_synced(job.lsn, Ok(()));
    }
    while let Some(job) = unit.poll_sync() {
        run_job(&job);
        unit.on_synced(job.lsn, Ok(()));
    }
    while let Some(r) = unit.poll_reply() {
        let want = expected.remove(&r.to).expect("reply to a known request");
        assert_eq!(observe(&r.frame), want, "final release of request {}", r.to);
    }
    assert!(
        expected.is_empty(),
        "requests never answered: {:?}",
        expected.keys().collect::<Vec<_>>()
    );
    let read = Op::Read {
        addr: 0,
        count: 46,
        epoch_delta: 0,
    };
    let f = frame(&read, u64::MAX, &live);
    let fr = wire::parse_frame(&f).unwrap().unwrap();
    unit.on_frame(u64::MAX, &fr.header, fr.body);
    let r = unit
        .poll_reply()
        .expect("read of durable data answers at once");
    assert_eq!(
        observe(&r.frame),
        predict(&mut live, &read).unwrap(),
        "final read-back"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn unit_matches_model_in_memory(ops in proptest::collection::vec(op(), 1..160)) {
        run_model(MemStore::new(), &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn unit_matches_model_on_disk(ops in proptest::collection::vec(op(), 1..160)) {
        let dir = tempfile::tempdir().expect("tempdir");
        run_model(open_disk(dir.path()), &ops);
    }
}
