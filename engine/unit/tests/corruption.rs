//! Corruption test: flip bits and append garbage in real segment files, reopen,
//! and check that damage is detected, never served, and that a torn tail is
//! truncated while every intact entry reads back.

mod common;

use common::{replies, send, sync, write};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use trex_unit::storage::mmap::{MmapOptions, MmapStore};
use trex_unit::unit::{Unit, UnitConfig};
use trex_wire::{self as wire, Opcode, Status};

const SEG: u64 = 64 * 1024;

fn open(dir: &Path) -> Unit<MmapStore> {
    let store = MmapStore::open(dir, &MmapOptions { segment_size: SEG }).expect("open");
    Unit::open(store, UnitConfig::default()).expect("recover").0
}

fn value(addr: u64) -> Vec<u8> {
    format!("entry-{addr:05}-").repeat(60).into_bytes() // 720 bytes
}

fn read_all<S: trex_unit::storage::Store>(u: &mut Unit<S>, n: u64) -> Vec<(u64, Status, Vec<u8>)> {
    let addrs: Vec<u64> = (0..n).collect();
    send(u, 999, Opcode::Read, 0, |b| {
        wire::encode_addr_list(b, &addrs)
    });
    let r = replies(u).pop().expect("read reply");
    let f = wire::parse_frame(&r.frame).unwrap().unwrap();
    wire::decode_read_reply(f.body)
        .unwrap()
        .iter()
        .map(|x| {
            (
                x.addr,
                x.status,
                x.entry.map(|e| e.data.to_vec()).unwrap_or_default(),
            )
        })
        .collect()
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Finds the file offset of the payload of `addr`'s record in a segment.
fn find(path: &Path, addr: u64) -> Option<usize> {
    let bytes = std::fs::read(path).unwrap();
    let needle = format!("entry-{addr:05}-");
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

fn populate(dir: &Path, n: u64) {
    let mut u = open(dir);
    for a in 0..n {
        write(&mut u, a + 1, a, &value(a));
    }
    sync(&mut u);
    assert_eq!(replies(&mut u).len() as u64, n);
}

/// A run of damaged records (here two in a row, then an intact one): each is
/// attributed to its address and answers `corrupt`. Before, the scan searched
/// for the next valid record and passed over the second damaged one: the unit
/// then answered `unwritten` for an entry it had acknowledged, and a reader
/// trusting the chain's tail read a hole where the log had data.
#[test]
fn every_record_of_a_damaged_run_answers_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 30); // one segment (the newest, scanned on open)
    let seg = segments(dir.path()).remove(0);
    for addr in [10u64, 11, 12] {
        let off = find(&seg, addr).expect("entry in segment");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        f.seek(SeekFrom::Start(off as u64 + 100)).unwrap();
        f.write_all(&[0xFF]).unwrap();
    }
    let mut u = open(dir.path());
    for (addr, status, data) in read_all(&mut u, 30) {
        if (10..=12).contains(&addr) {
            assert_eq!(status, Status::Corrupt, "address {addr} is damaged");
        } else {
            assert_eq!((status, data), (Status::Ok, value(addr)), "address {addr}");
        }
    }
}

#[test]
fn flipped_bits_are_detected_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 200); // ~160 KiB: three segments, the older ones indexed
    let segs = segments(dir.path());
    assert!(
        segs.len() >= 3,
        "test needs several segments, got {}",
        segs.len()
    );
    // Damage one entry in an indexed (full) segment and one in the newest.
    let victims = [
        (segs[0].clone(), 10u64),
        (segs[segs.len() - 1].clone(), 195u64),
    ];
    for (path, addr) in &victims {
        let off = find(path, *addr).expect("entry in segment");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        f.seek(SeekFrom::Start(off as u64 + 100)).unwrap();
        f.write_all(&[0xFF]).unwrap();
    }
    let mut u = open(dir.path());
    for (addr, status, data) in read_all(&mut u, 200) {
        if addr == 10 || addr == 195 {
            assert_eq!(
                status,
                Status::Corrupt,
                "address {addr} is damaged and must not be served"
            );
        } else {
            assert_eq!(
                (status, data),
                (Status::Ok, value(addr)),
                "address {addr} is intact"
            );
        }
    }
    send(&mut u, 1, Opcode::Info, 0, |_| {});
    let r = replies(&mut u).pop().unwrap();
    let info = wire::decode_info_reply(wire::parse_frame(&r.frame).unwrap().unwrap().body).unwrap();
    assert_eq!(info.corrupt, 2, "both damaged records are counted");
}

#[test]
fn garbage_after_the_last_record_is_a_torn_tail_and_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 20);
    let last = segments(dir.path()).pop().unwrap();
    let end = find(&last, 19).unwrap() + value(19).len();
    let garbage_at = end.next_multiple_of(8);
    {
        // A half-written record: a plausible header and a few payload bytes.
        let mut f = OpenOptions::new().write(true).open(&last).unwrap();
        f.seek(SeekFrom::Start(garbage_at as u64)).unwrap();
        let mut torn = vec![0u8; 40];
        torn[4..8].copy_from_slice(&500u32.to_le_bytes());
        torn[8..16].copy_from_slice(&20u64.to_le_bytes());
        torn[32] = 1;
        torn.extend_from_slice(b"half-written payload");
        f.write_all(&torn).unwrap();
    }
    let store = MmapStore::open(dir.path(), &MmapOptions { segment_size: SEG }).unwrap();
    let (mut u, stats) = Unit::open(store, UnitConfig::default()).unwrap();
    assert_eq!(stats.corrupt, 0, "a torn tail is not corruption");
    assert!(
        u.store().report.torn_bytes >= 60,
        "torn tail truncated: {:?}",
        u.store().report
    );
    let got = read_all(&mut u, 21);
    assert_eq!(
        got[20].1,
        Status::Unwritten,
        "the torn record is not served"
    );
    assert!(got[..20]
        .iter()
        .all(|(a, s, d)| *s == Status::Ok && *d == value(*a)));
    // The space is reused cleanly: a new write there survives another reopen.
    write(&mut u, 1, 20, &value(20));
    sync(&mut u);
    drop(u);
    let mut u = open(dir.path());
    assert_eq!(read_all(&mut u, 21)[20], (20, Status::Ok, value(20)));
}

#[test]
fn random_garbage_appended_to_every_segment_never_turns_into_entries() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 120);
    let mut rng = common::Rng::from_time();
    eprintln!("seed {}", rng.0);
    for path in segments(dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        let used = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(used.next_multiple_of(8) as u64))
            .unwrap();
        let junk: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
        f.write_all(&junk).unwrap();
    }
    let mut u = open(dir.path());
    for (addr, status, data) in read_all(&mut u, 130) {
        if addr < 120 {
            assert_eq!((status, data), (Status::Ok, value(addr)), "address {addr}");
        } else {
            // Junk after the newest segment's last record is not a write cut
            // short (no zero page, no zero checksum): it may be a damaged
            // record of unknown address, so the unit may answer `corrupt`
            // (the client reads another replica), but never serves it.
            assert!(
                matches!(status, Status::Unwritten | Status::Corrupt),
                "address {addr} was never written: {status:?}"
            );
        }
    }
    assert!(
        u.tail() == 120,
        "garbage does not move the tail (tail {})",
        u.tail()
    );
}

/// A segment whose header is damaged (or an older segment cut short) cannot
/// be used: before, the unit refused to start. Now it is set aside (left in
/// place, never read or written), the unit starts, and, as it cannot know
/// which addresses were there, answers `corrupt` for every address it does
/// not hold (never `unwritten`): readers go to the other replicas, and the
/// copies are rewritten from them. Intact segments are served as before, and
/// new segments never reuse the set-aside segment's id.
#[test]
fn an_unusable_segment_is_set_aside_and_its_addresses_answer_corrupt() {
    for cut in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), 200);
        let first = segments(dir.path()).remove(0);
        if cut {
            let f = OpenOptions::new().write(true).open(&first).unwrap();
            f.set_len(SEG / 2).unwrap();
        } else {
            let mut f = OpenOptions::new().write(true).open(&first).unwrap();
            f.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap(); // damage the magic
        }
        let mut u = open(dir.path());
        assert!(
            u.store()
                .report
                .notes
                .iter()
                .any(|n| n.contains("left in place")),
            "{:?}",
            u.store().report.notes
        );
        let got = read_all(&mut u, 200);
        let first_held = got.iter().position(|(_, s, _)| *s == Status::Ok).unwrap();
        assert!(first_held > 0, "the first segment's entries are not served");
        for (addr, status, data) in &got {
            if (*addr as usize) < first_held {
                assert_eq!(*status, Status::Corrupt, "address {addr} (cut: {cut})");
            } else {
                assert_eq!(
                    (*status, data),
                    (Status::Ok, &value(*addr)),
                    "address {addr}"
                );
            }
        }
        // Appends go on, into new segments, and survive a restart.
        for a in 200..300 {
            write(&mut u, a + 1, a, &value(a));
        }
        sync(&mut u);
        assert_eq!(replies(&mut u).len(), 100);
        drop(u);
        assert!(first.exists(), "left in place");
        let mut u = open(dir.path());
        let got = read_all(&mut u, 300);
        assert!(got[200..]
            .iter()
            .all(|(a, s, d)| *s == Status::Ok && *d == value(*a)));
    }
}

#[test]
fn the_newest_segment_is_dropped_only_when_it_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 200);
    let mut segs = segments(dir.path());
    let newest = segs.pop().unwrap();
    // A damaged header on the newest segment is not taken for an unfinished
    // creation: acknowledged entries live there.
    let saved = std::fs::read(&newest).unwrap();
    let extra = segs.last().unwrap().with_extension("idx");
    assert!(extra.exists(), "the full segment before it was indexed");
    let mut f = OpenOptions::new().write(true).open(&newest).unwrap();
    f.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap(); // damage the magic
    drop(f);
    {
        let u = open(dir.path());
        assert!(
            u.store()
                .report
                .notes
                .iter()
                .any(|n| n.contains("damaged header")),
            "{:?}",
            u.store().report.notes
        );
    }
    // An all-zero newest segment (creation cut short) is removed, and the segment
    // before it takes appends again without a stale index.
    std::fs::write(&newest, vec![0u8; saved.len()]).unwrap();
    {
        let mut u = open(dir.path());
        assert!(!newest.exists(), "the empty segment was removed");
        assert!(
            !extra.exists(),
            "the index of the segment that is now appended to is gone"
        );
        write(&mut u, 1, 500, &value(500));
        sync(&mut u);
        assert_eq!(replies(&mut u).len(), 1);
    }
    let mut u = open(dir.path());
    let got = read_all(&mut u, 501);
    assert_eq!(
        got[500],
        (500, Status::Ok, value(500)),
        "the append after reopening is found again"
    );
}

#[test]
fn damage_found_by_a_scan_is_still_reported_after_the_next_restart() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 200);
    let segs = segments(dir.path());
    for s in &segs {
        let _ = std::fs::remove_file(s.with_extension("idx")); // force scans
    }
    let off = find(&segs[0], 10).unwrap();
    let mut f = OpenOptions::new().write(true).open(&segs[0]).unwrap();
    f.seek(SeekFrom::Start(off as u64 + 50)).unwrap();
    f.write_all(&[0xAA]).unwrap();
    drop(f);
    for round in 0..2 {
        let mut u = open(dir.path());
        let got = read_all(&mut u, 200);
        assert_eq!(
            got[10].1,
            Status::Corrupt,
            "round {round}: damage is answered as corrupt"
        );
        assert!(got
            .iter()
            .filter(|g| g.0 != 10)
            .all(|(a, s, d)| *s == Status::Ok && *d == value(*a)));
        // A fill must not paper over an acknowledged (damaged) entry.
        send(&mut u, 5, Opcode::Fill, 0, |b| {
            wire::encode_addr_list(b, &[10])
        });
        let r = replies(&mut u).pop().unwrap();
        let st: Vec<Status> =
            wire::decode_status_list(wire::parse_frame(&r.frame).unwrap().unwrap().body)
                .unwrap()
                .iter()
                .collect();
        assert_eq!(st, vec![Status::Corrupt], "round {round}");
    }
    assert!(
        !segs[0].with_extension("idx").exists(),
        "a damaged segment is never indexed"
    );
}

/// A segment file that is gone (not reclaimed by a trim: `META` names the
/// first segment that must exist, and ids are consecutive) held entries
/// nobody can name: the unit answers `corrupt` for every address it does not
/// hold, never `unwritten`, so readers go to the other replicas. Before, it
/// answered `unwritten` for the acknowledged entries of the lost file.
#[test]
fn a_missing_segment_file_makes_absent_addresses_answer_corrupt() {
    for which in ["oldest", "middle"] {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), 200);
        {
            // A trim records, in `META`, the first segment that must exist.
            let mut u = open(dir.path());
            send(&mut u, 1, Opcode::Trim, 0, |b| wire::encode_u64(b, 1));
            sync(&mut u);
            replies(&mut u);
        }
        let segs = segments(dir.path());
        assert!(segs.len() >= 3);
        let gone = if which == "oldest" {
            &segs[0]
        } else {
            &segs[1]
        };
        let held: Vec<u64> = (0..200).filter(|a| find(gone, *a).is_none()).collect();
        std::fs::remove_file(gone).unwrap();
        let _ = std::fs::remove_file(gone.with_extension("idx"));
        let mut u = open(dir.path());
        for (addr, status, data) in read_all(&mut u, 200) {
            if addr == 0 {
                assert_eq!(status, Status::Trimmed);
            } else if held.contains(&addr) {
                assert_eq!((status, data), (Status::Ok, value(addr)), "{which}: {addr}");
            } else {
                assert_eq!(status, Status::Corrupt, "{which}: address {addr}");
            }
        }
    }
}

/// A segment loaded from its index is not read at start (a start stays
/// fast); the scrub verifies its records while the unit runs, and one found
/// damaged answers `corrupt` and counts in `info` from then on — so the
/// repair loop rewrites it without a client ever reading it. Before, such
/// damage stayed unknown, and unrepaired, until a read.
#[test]
fn the_scrub_finds_damage_in_indexed_segments() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 200);
    let first = segments(dir.path()).remove(0);
    assert!(first.with_extension("idx").exists(), "indexed");
    let off = find(&first, 10).expect("entry 10 in the oldest segment");
    let mut f = OpenOptions::new().write(true).open(&first).unwrap();
    f.seek(SeekFrom::Start(off as u64 + 100)).unwrap();
    f.write_all(&[0xFF]).unwrap();
    drop(f);
    let mut u = open(dir.path());
    assert_eq!(u.store().report.indexed, 2, "{:?}", u.store().report);
    assert_eq!(u.info().corrupt, 0, "not read at start");
    assert_eq!(u.scrub(usize::MAX), 1, "found by the scrub");
    assert_eq!(u.scrub(usize::MAX), 0, "once");
    assert_eq!(u.info().corrupt, 1);
    let got = read_all(&mut u, 200);
    assert_eq!(got[10].1, Status::Corrupt);
    assert!(got
        .iter()
        .filter(|(a, _, _)| *a != 10)
        .all(|(a, s, d)| *s == Status::Ok && *d == value(*a)));
}
