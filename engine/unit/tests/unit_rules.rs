//! Exact replies of the unit core for the rules the model test cannot see:
//! when a reply is released, what a failed sync does, and how bad frames are
//! answered.

use trex_unit::storage::memory::MemStore;
mod common;

use common::{error_code, read_statuses, replies, send, sync, write};
use trex_unit::unit::{Reply, Unit, UnitConfig};
use trex_wire::{self as wire, begin_frame, finish_frame, ErrorCode, Header, Opcode, Status};

fn unit() -> Unit<MemStore> {
    Unit::open(MemStore::new(), UnitConfig::default())
        .expect("open")
        .0
}

#[test]
fn a_write_is_acknowledged_only_after_a_sync_covers_it() {
    let mut u = unit();
    write(&mut u, 1, 0, b"a");
    write(&mut u, 2, 1, b"b");
    assert!(replies(&mut u).is_empty(), "no ack before the sync");
    let job = u.poll_sync().expect("sync due");
    assert!(u.poll_sync().is_none(), "one sync at a time");
    write(&mut u, 3, 2, b"c"); // arrives while the sync runs: not covered by it
    u.on_synced(job.lsn, Ok(()));
    let got: Vec<u64> = replies(&mut u).iter().map(|r| r.to).collect();
    assert_eq!(
        got,
        vec![1, 2],
        "one sync acknowledges the whole group, and only it"
    );
    sync(&mut u);
    assert_eq!(
        replies(&mut u).iter().map(|r| r.to).collect::<Vec<_>>(),
        vec![3]
    );
}

#[test]
fn a_read_of_an_entry_not_yet_durable_waits_for_the_sync() {
    let mut u = unit();
    write(&mut u, 1, 7, b"x");
    send(&mut u, 2, Opcode::Read, 0, |b| {
        wire::encode_addr_list(b, &[7])
    });
    send(&mut u, 3, Opcode::Read, 0, |b| {
        wire::encode_addr_list(b, &[8])
    });
    // The read of an unwritten address depends on nothing and goes at once.
    assert_eq!(
        replies(&mut u).iter().map(|r| r.to).collect::<Vec<_>>(),
        vec![3]
    );
    sync(&mut u);
    assert_eq!(
        replies(&mut u).iter().map(|r| r.to).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn a_failed_sync_poisons_the_unit() {
    let mut u = unit();
    write(&mut u, 1, 0, b"a");
    let job = u.poll_sync().unwrap();
    u.on_synced(job.lsn, Err("EIO".into()));
    let r = replies(&mut u);
    assert_eq!(r.len(), 1);
    assert_eq!(
        error_code(&r[0]),
        Some(ErrorCode::Poisoned),
        "the in-doubt write is not acknowledged"
    );
    assert!(u.poisoned().unwrap().contains("EIO"));
    write(&mut u, 2, 1, b"b");
    send(&mut u, 3, Opcode::Seal, 0, |b| wire::encode_u64(b, 5));
    let r = replies(&mut u);
    assert_eq!(
        r.iter().map(error_code).collect::<Vec<_>>(),
        vec![Some(ErrorCode::Poisoned); 2]
    );
    assert!(u.poll_sync().is_none(), "a poisoned unit never syncs again");
    send(&mut u, 4, Opcode::Info, 0, |_| {});
    let info = replies(&mut u).pop().unwrap();
    let f = wire::parse_frame(&info.frame).unwrap().unwrap();
    assert_ne!(
        wire::decode_info_reply(f.body).unwrap().flags & wire::INFO_POISONED,
        0
    );
}

#[test]
fn bad_frames_get_errors_and_protocol_violations_close() {
    let mut u = unit();
    send(&mut u, 1, Opcode::Write, 0, |b| {
        b.extend_from_slice(&[1, 0, 0, 0, 9])
    });
    send(&mut u, 2, Opcode::Error, 0, |_| {});
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    finish_frame(
        &mut f,
        s,
        Header {
            opcode: Opcode::Info as u8,
            request_id: 3,
            cluster_id: 9,
            ..Header::default()
        },
    );
    let fr = wire::parse_frame(&f).unwrap().unwrap();
    assert!(
        !u.on_frame(3, &fr.header, fr.body),
        "a frame for another cluster ends the connection"
    );
    send(&mut u, 4, Opcode::Seal, 0, |b| wire::encode_u64(b, 2));
    sync(&mut u);
    send(&mut u, 5, Opcode::Read, 1, |b| {
        wire::encode_addr_list(b, &[0])
    });
    let r = replies(&mut u);
    let got: Vec<(u64, Option<ErrorCode>, bool)> =
        r.iter().map(|r| (r.to, error_code(r), r.close)).collect();
    assert_eq!(
        got,
        vec![
            (1, Some(ErrorCode::MalformedBody), true),
            (2, Some(ErrorCode::UnknownOpcode), true),
            (3, Some(ErrorCode::WrongCluster), true),
            (4, None, false),
            (5, Some(ErrorCode::SealedEpoch), false),
        ]
    );
    let sealed = wire::parse_frame(&r[4].frame).unwrap().unwrap();
    assert_eq!(
        sealed.header.epoch, 2,
        "a SealedEpoch reply carries the unit's epoch"
    );
    assert_eq!(sealed.header.request_id, 5);
}

#[test]
fn a_corrupt_record_is_never_served() {
    let mut u = unit();
    write(&mut u, 1, 3, b"precious");
    sync(&mut u);
    replies(&mut u);
    let mut store = u.into_store();
    assert!(store.corrupt_payload(3));
    let (mut u, stats) = Unit::open(store, UnitConfig::default()).unwrap();
    assert_eq!(stats.corrupt, 1, "recovery reports the damage");
    send(&mut u, 2, Opcode::Read, 0, |b| {
        wire::encode_addr_list(b, &[3])
    });
    write(&mut u, 3, 3, b"other");
    let r = replies(&mut u);
    let f = wire::parse_frame(&r[0].frame).unwrap().unwrap();
    let read = wire::decode_read_reply(f.body).unwrap();
    assert_eq!(read.iter().next().unwrap().status, Status::Corrupt);
    let f = wire::parse_frame(&r[1].frame).unwrap().unwrap();
    let st: Vec<Status> = wire::decode_status_list(f.body).unwrap().iter().collect();
    assert_eq!(
        st,
        vec![Status::Corrupt],
        "a corrupt address is not silently overwritten"
    );
}

/// A record whose header is damaged names no address anyone may believe
/// (a flipped address bit once moved a unit's tail to 2^62): the unit's tail
/// ignores it, and every address the unit holds no record of answers
/// `corrupt` — it may be the lost one — so a reader asks another replica
/// rather than trusting `unwritten`. Intact records are still served.
#[test]
fn a_record_with_a_damaged_header_is_trusted_for_nothing() {
    let mut u = unit();
    write(&mut u, 1, 2, b"before");
    write(&mut u, 2, 3, b"precious");
    write(&mut u, 3, 4, b"after");
    sync(&mut u);
    replies(&mut u);
    let mut store = u.into_store();
    assert!(
        store.corrupt(3),
        "the flip lands in the header of 3's record"
    );
    let (mut u, stats) = Unit::open(store, UnitConfig::default()).unwrap();
    assert_eq!((stats.corrupt, stats.unattributed), (1, 1));
    assert_eq!(u.tail(), 5, "the damaged header does not move the tail");
    assert_eq!(u.info().corrupt, 1, "info counts it");
    send(&mut u, 9, Opcode::Read, 0, |b| {
        wire::encode_addr_list(b, &[2, 3, 4, 7])
    });
    let r = replies(&mut u);
    let f = wire::parse_frame(&r[0].frame).unwrap().unwrap();
    let got: Vec<(u64, Status)> = wire::decode_read_reply(f.body)
        .unwrap()
        .iter()
        .map(|x| (x.addr, x.status))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, Status::Ok),
            (3, Status::Corrupt),
            (4, Status::Ok),
            (7, Status::Corrupt)
        ]
    );
}

#[test]
fn full_store_answers_full_and_keeps_serving() {
    let mut store = MemStore::new();
    store.capacity = Some(1);
    let (mut u, _) = Unit::open(store, UnitConfig::default()).unwrap();
    write(&mut u, 1, 0, b"a");
    write(&mut u, 2, 1, b"b");
    sync(&mut u);
    let mut r = replies(&mut u);
    r.sort_by_key(|r| r.to);
    let st = |r: &Reply| {
        let f = wire::parse_frame(&r.frame).unwrap().unwrap();
        wire::decode_status_list(f.body)
            .unwrap()
            .iter()
            .next()
            .unwrap()
    };
    assert_eq!((st(&r[0]), st(&r[1])), (Status::Ok, Status::Full));
    assert!(u.poisoned().is_none(), "full is not a failure");
}

/// A seal the unit has no room to record is refused (`full`: it is not
/// durable, so not acknowledged), yet while the unit runs requests below that
/// epoch are refused: room could come back before a seal can be recorded, and
/// a write at the old epoch must not get in meanwhile.
#[test]
fn a_seal_refused_for_lack_of_room_still_fences_while_the_unit_runs() {
    let mut store = MemStore::new();
    store.capacity = Some(1);
    let (mut u, _) = Unit::open(store, UnitConfig::default()).unwrap();
    write(&mut u, 1, 0, b"a");
    sync(&mut u);
    replies(&mut u);
    send(&mut u, 2, Opcode::Seal, 0, |b| wire::encode_u64(b, 5));
    sync(&mut u);
    let r = replies(&mut u);
    assert_eq!(error_code(&r[0]), Some(ErrorCode::Full), "not recorded");
    u.store_mut().capacity = None; // room again
    send(&mut u, 3, Opcode::Fill, 4, |b| {
        wire::encode_addr_list(b, &[1])
    });
    sync(&mut u);
    let r = replies(&mut u);
    assert_eq!(
        error_code(&r[0]),
        Some(ErrorCode::SealedEpoch),
        "epoch 4 is fenced"
    );
}

/// Runtime I/O errors. A read the device fails answers `io` for that address
/// (the client reads another replica); the copy then counts as damaged, so a
/// `repair` (read repair, the repair loop) rewrites it elsewhere and it reads
/// again. A failed write poisons the unit: `io`, and no write after it.
#[test]
fn a_failed_read_answers_io_and_a_failed_write_poisons() {
    let mut u = unit();
    write(&mut u, 1, 3, b"precious");
    write(&mut u, 2, 4, b"other");
    sync(&mut u);
    replies(&mut u);
    assert!(u.store_mut().fail_reads(3));
    let read = |u: &mut Unit<MemStore>, id| read_statuses(u, id, &[3, 4]);
    assert_eq!(read(&mut u, 3), vec![Status::Io, Status::Ok]);
    assert_eq!(
        u.info().corrupt,
        1,
        "counted, so the repair loop rewrites it"
    );
    assert!(u.poisoned().is_none(), "a failed read does not poison");
    let op = wire::WriteOp {
        addr: 3,
        writer: 1,
        seq: 3,
        data: b"precious",
    };
    send(&mut u, 5, Opcode::Repair, 0, |b| {
        wire::encode_write_request(b, &[op])
    });
    sync(&mut u);
    replies(&mut u);
    assert_eq!(read(&mut u, 6), vec![Status::Ok, Status::Ok], "rewritten");
    assert_eq!(u.info().corrupt, 0);
    u.store_mut().failing_writes = true;
    write(&mut u, 7, 5, b"lost");
    sync(&mut u);
    let r = replies(&mut u);
    let f = wire::parse_frame(&r[0].frame).unwrap().unwrap();
    let st: Vec<Status> = wire::decode_status_list(f.body).unwrap().iter().collect();
    assert_eq!(st, vec![Status::Io]);
    assert!(u.poisoned().is_some(), "a failed write poisons the unit");
}

#[test]
fn nothing_waits_forever_on_a_poisoned_unit() {
    let mut u = unit();
    write(&mut u, 1, 0, b"a");
    let job = u.poll_sync().unwrap();
    u.on_synced(job.lsn, Err("EIO".into()));
    replies(&mut u);
    // The entry at 0 never became durable; a read of it must not hang.
    send(&mut u, 2, Opcode::Read, 0, |b| {
        wire::encode_addr_list(b, &[0])
    });
    let r = replies(&mut u);
    assert_eq!(
        r.iter().map(error_code).collect::<Vec<_>>(),
        vec![Some(ErrorCode::Poisoned)]
    );
    assert_eq!(u.pending_replies(), 0);
}

#[test]
fn the_reserved_address_is_refused() {
    let mut u = unit();
    write(&mut u, 1, u64::MAX, b"x");
    send(&mut u, 2, Opcode::Fill, 0, |b| {
        wire::encode_addr_list(b, &[u64::MAX])
    });
    let st: Vec<Status> = replies(&mut u)
        .iter()
        .map(|r| {
            wire::decode_status_list(wire::parse_frame(&r.frame).unwrap().unwrap().body)
                .unwrap()
                .iter()
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(st, vec![Status::OutOfRange, Status::OutOfRange]);
    assert_eq!(u.tail(), 0);
}

#[test]
fn trimmed_is_only_reported_once_the_trim_is_durable() {
    let mut u = unit();
    write(&mut u, 1, 5, b"old");
    sync(&mut u);
    replies(&mut u);
    send(&mut u, 2, Opcode::Trim, 0, |b| wire::encode_u64(b, 10));
    send(&mut u, 3, Opcode::Read, 0, |b| {
        wire::encode_addr_list(b, &[5])
    });
    write(&mut u, 4, 6, b"new");
    assert!(
        replies(&mut u).is_empty(),
        "a crash now would undo the trim: nothing may say 'trimmed' yet"
    );
    sync(&mut u);
    let mut r = replies(&mut u);
    r.sort_by_key(|r| r.to);
    assert_eq!(r.iter().map(|r| r.to).collect::<Vec<_>>(), vec![2, 3, 4]);
    let f = wire::parse_frame(&r[1].frame).unwrap().unwrap();
    assert_eq!(
        wire::decode_read_reply(f.body)
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .status,
        Status::Trimmed
    );
}

/// `node-info` is answered at once, by any epoch, with the role and the build
/// the unit was configured with and its sealed epoch in the header; a body is
/// refused and ends the connection.
#[test]
fn node_info_names_the_role_and_build_at_any_epoch() {
    let build = trex_net::metrics::BuildInfo {
        version: "7.7.7",
        revision: "feedbeef",
    };
    let cfg = UnitConfig {
        build,
        ..UnitConfig::default()
    };
    let mut u = Unit::open(MemStore::new(), cfg).expect("open").0;
    send(&mut u, 1, Opcode::Seal, 0, |b| wire::encode_u64(b, 3));
    sync(&mut u);
    send(&mut u, 2, Opcode::NodeInfo, 0, |_| {});
    send(&mut u, 3, Opcode::NodeInfo, 0, |b| b.push(1));
    let r = replies(&mut u);
    assert_eq!(
        r.iter()
            .map(|r| (r.to, error_code(r), r.close))
            .collect::<Vec<_>>(),
        vec![
            (1, None, false),
            (2, None, false),
            (3, Some(ErrorCode::MalformedBody), true)
        ]
    );
    let f = wire::parse_frame(&r[1].frame).unwrap().unwrap();
    assert_eq!(f.header.epoch, 3, "stamped with the sealed epoch");
    let info = wire::decode_node_info(f.body).unwrap();
    assert_eq!(info.role, wire::ops::Role::Storage);
    assert_eq!(
        (info.version.as_str(), info.revision.as_str()),
        ("7.7.7", "feedbeef")
    );
}

/// One request to `u`, run to its reply; the reply's status list.
fn statuses_of(
    u: &mut Unit<MemStore>,
    id: u64,
    op: Opcode,
    body: impl FnOnce(&mut Vec<u8>),
) -> Vec<Status> {
    send(u, id, op, 0, body);
    sync(u);
    let r = replies(u);
    assert_eq!(r.len(), 1, "one reply");
    assert_eq!(error_code(&r[0]), None, "answered");
    let f = wire::parse_frame(&r[0].frame).unwrap().unwrap();
    wire::decode_status_list(f.body).unwrap().iter().collect()
}

/// `verified-repair` takes an entry only where the damaged record provably
/// held it (intact header, matching checksum), and never writes an address
/// the unit holds nothing at; a fill restores a damaged hole whose header
/// survived. So copies from units that might hold an undecided value can be
/// offered safely (docs/protocol.md, "Damaged copies").
#[test]
fn a_verified_repair_restores_only_what_the_damaged_record_held() {
    let mut u = unit();
    write(&mut u, 1, 1, b"precious");
    sync(&mut u);
    replies(&mut u);
    let st = statuses_of(&mut u, 2, Opcode::Fill, |b| wire::encode_addr_list(b, &[2]));
    assert_eq!(st, vec![Status::Ok]);
    assert!(u.store_mut().corrupt_payload(1));
    assert!(u.store_mut().corrupt_payload(2)); // junk: its record checksum
                                               // Recovery finds both (a read of junk does not look at its record).
    let mut u = Unit::open(u.into_store(), UnitConfig::default())
        .expect("reopen")
        .0;
    assert_eq!(
        read_statuses(&mut u, 3, &[1, 2]),
        vec![Status::Corrupt, Status::Corrupt]
    );
    let vr = |addr, seq, data: &'static [u8]| {
        move |b: &mut Vec<u8>| {
            let op = wire::WriteOp {
                addr,
                writer: 1,
                seq,
                data,
            };
            wire::encode_write_request(b, &[op])
        }
    };
    // Another entry (its sequence number differs): refused as written.
    let st = statuses_of(&mut u, 4, Opcode::VerifiedRepair, vr(1, 99, b"precious"));
    assert_eq!(st, vec![Status::Written]);
    // The same entry with other bytes: the checksum cannot confirm it.
    let st = statuses_of(&mut u, 5, Opcode::VerifiedRepair, vr(1, 1, b"precioux"));
    assert_eq!(st, vec![Status::Corrupt]);
    // A fill does not touch damaged data.
    let st = statuses_of(&mut u, 6, Opcode::Fill, |b| wire::encode_addr_list(b, &[1]));
    assert_eq!(st, vec![Status::Corrupt]);
    assert_eq!(read_statuses(&mut u, 7, &[1]), vec![Status::Corrupt]);
    // Nothing held at 9: nothing to restore, nothing written.
    let st = statuses_of(&mut u, 8, Opcode::VerifiedRepair, vr(9, 9, b"new"));
    assert_eq!(st, vec![Status::Unwritten]);
    assert_eq!(read_statuses(&mut u, 9, &[9]), vec![Status::Unwritten]);
    // The entry it held: restored.
    let st = statuses_of(&mut u, 10, Opcode::VerifiedRepair, vr(1, 1, b"precious"));
    assert_eq!(st, vec![Status::Ok]);
    // The damaged hole: a fill restores its junk.
    let st = statuses_of(&mut u, 11, Opcode::Fill, |b| {
        wire::encode_addr_list(b, &[2])
    });
    assert_eq!(st, vec![Status::Ok]);
    assert_eq!(
        read_statuses(&mut u, 12, &[1, 2]),
        vec![Status::Ok, Status::Junk]
    );
    assert_eq!(u.info().corrupt, 0);
}
