//! Prefix trim on real segment files: whole segments below a durable trim mark
//! are deleted, the rest reopen from their index files, and nothing trimmed comes
//! back.

mod common;

use common::{replies, send, sync, write};
use std::path::Path;
use trex_unit::storage::mmap::{MmapOptions, MmapStore};
use trex_unit::unit::{Unit, UnitConfig};
use trex_wire::{self as wire, Opcode, Status};

fn open(dir: &Path) -> Unit<MmapStore> {
    let store = MmapStore::open(
        dir,
        &MmapOptions {
            segment_size: 64 * 1024,
        },
    )
    .expect("open");
    Unit::open(store, UnitConfig::default()).expect("recover").0
}

fn count(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == ext)
        })
        .count()
}

fn statuses(u: &mut Unit<MmapStore>, addrs: &[u64]) -> Vec<Status> {
    common::read_statuses(u, 77, addrs)
}

#[test]
fn trim_deletes_whole_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut u = open(dir.path());
    let data = vec![7u8; 1000];
    for a in 0..300 {
        write(&mut u, a + 1, a, &data);
    }
    sync(&mut u);
    assert_eq!(replies(&mut u).len(), 300);
    // Index files are written, and reclaimed segments deleted, by the
    // store's background thread.
    u.store().flush_background();
    let before = count(dir.path(), "seg");
    assert!(before >= 5, "300 KB in 64 KiB segments: got {before}");
    assert_eq!(
        count(dir.path(), "idx"),
        before - 1,
        "every full segment is indexed once durable"
    );

    send(&mut u, 1000, Opcode::Trim, 0, |b| wire::encode_u64(b, 250));
    assert!(
        replies(&mut u).is_empty(),
        "trim is acknowledged only once durable"
    );
    sync(&mut u);
    let r = replies(&mut u);
    let mark = wire::decode_u64(wire::parse_frame(&r[0].frame).unwrap().unwrap().body).unwrap();
    assert_eq!(mark, 250);
    // Appending more lets the store reclaim once a later segment is durable.
    for a in 300..400 {
        write(&mut u, a + 1, a, &data);
    }
    sync(&mut u);
    replies(&mut u);
    u.store().flush_background();
    let after = count(dir.path(), "seg");
    assert!(
        after < before,
        "segments below the trim mark are deleted ({before} -> {after})"
    );
    assert_eq!(
        statuses(&mut u, &[0, 249, 250, 399]),
        vec![Status::Trimmed, Status::Trimmed, Status::Ok, Status::Ok]
    );
    // A write below the mark is refused, and the tail never moves back.
    write(&mut u, 5000, 10, &data);
    let r = replies(&mut u);
    let st: Vec<Status> =
        wire::decode_status_list(wire::parse_frame(&r[0].frame).unwrap().unwrap().body)
            .unwrap()
            .iter()
            .collect();
    assert_eq!(st, vec![Status::Trimmed]);
    drop(u);

    let store = MmapStore::open(
        dir.path(),
        &MmapOptions {
            segment_size: 64 * 1024,
        },
    )
    .unwrap();
    let (mut u, _) = Unit::open(store, UnitConfig::default()).unwrap();
    let report = u.store().report.clone();
    assert!(
        report.indexed >= 1 && report.scanned == 1,
        "only the newest segment is scanned: {report:?}"
    );
    assert_eq!(u.meta().trim_mark, 250);
    assert_eq!(u.tail(), 400);
    assert_eq!(
        statuses(&mut u, &[0, 249, 250, 399]),
        vec![Status::Trimmed, Status::Trimmed, Status::Ok, Status::Ok]
    );
}

#[test]
fn a_full_segment_still_takes_a_seal_or_trim() {
    use trex_unit::storage::{Kind, Meta, RecordHead, Store};
    let dir = tempfile::tempdir().unwrap();
    let mut st = MmapStore::open(
        dir.path(),
        &MmapOptions {
            segment_size: 64 * 1024,
        },
    )
    .unwrap();
    st.recover(&mut |_| {}).unwrap();
    let data = |addr| RecordHead {
        kind: Kind::Data,
        addr,
        writer: 1,
        seq: addr,
    };
    // docs/wire.md: min(segment size − 1,144 − max(segment size ÷ 256, 640), 4 MiB).
    assert_eq!(st.max_payload(), 64 * 1024 - 1_144 - 640);
    let big = vec![1u8; st.max_payload()];
    assert_eq!(
        st.append(&data(0), &big).unwrap().loc.seg,
        1,
        "the largest entry fits one segment"
    );
    let meta = RecordHead::meta(Meta {
        sealed_epoch: 3,
        trim_mark: 0,
    });
    assert_eq!(
        st.append(&meta, &[]).unwrap().loc.seg,
        1,
        "a seal uses the room kept for meta records"
    );
    assert_eq!(
        st.append(&data(1), &[]).unwrap().loc.seg,
        2,
        "data never uses that room"
    );
}
