//! Issue 13's fault matrix, the storage unit's rows: one on-disk fault on one
//! unit of a `trex up` cluster (2 stripes × 2 replicas, 64 KiB segments,
//! repair loop every 2 s), applied with the unit stopped, then the unit
//! restarted on its data; checked through the CLI against the four
//! expectations (nothing acknowledged lost, nothing corrupt served, reads and
//! appends available, nothing failing after a retry), and whether the unit
//! was healed from its peers (or stopped with advice).
//!
//! `cargo test` runs a fast subset; the whole matrix is ignored by default:
//! `scripts/fault-matrix.sh` runs it and prints the table and a summary line.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{entry, trex_cli};

/// Entries appended before the fault: stripe 1 (odd addresses) gets 15 of
/// 6 KiB, two segments on each of its units (the older one indexed).
const N: usize = 30;
const WITHIN: Duration = Duration::from_secs(40);
const RECORD_HEADER_LEN: usize = 40;

/// An on-disk structure of a storage unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Row {
    /// The header of a record in the newest segment (entry 25's).
    RecordHeader,
    /// The payload of a record in the newest segment (entry 25's).
    RecordPayload,
    /// The header of the oldest segment.
    SegmentHeader,
    /// The oldest segment, as a whole file.
    SegmentFile,
    /// The index file of the oldest (full) segment.
    IndexFile,
    /// The `META` file (sealed epoch, trim mark).
    Meta,
    /// The directory lock, `LOCK`.
    Lock,
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Col {
    BitFlip,
    ZeroedBlock,
    JunkBlock,
    CutInsideRecord,
    CutAtRecordBoundary,
    Missing,
}

/// Which unit of stripe 1's chain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    Head,
    Tail,
}

const ROWS: [Row; 7] = [
    Row::RecordHeader,
    Row::RecordPayload,
    Row::SegmentHeader,
    Row::SegmentFile,
    Row::IndexFile,
    Row::Meta,
    Row::Lock,
];
const COLS: [Col; 6] = [
    Col::BitFlip,
    Col::ZeroedBlock,
    Col::JunkBlock,
    Col::CutInsideRecord,
    Col::CutAtRecordBoundary,
    Col::Missing,
];

/// What one cell found.
#[derive(Clone, Debug, Default)]
struct Outcome {
    /// Acknowledged entries a reader did not get back.
    lost: usize,
    /// Entries served with other bytes than appended.
    corrupt_served: usize,
    /// A read or append that failed (the first try).
    unavailable: bool,
    /// A read or append that failed again when retried.
    failing_after_retry: bool,
    /// The damaged unit serves every one of its entries again.
    healed: bool,
    /// The unit refused to start, with this advice.
    stopped: Option<String>,
    /// What was done, for the table.
    note: String,
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// The segment holding entry `i`, and its record's offset there.
fn record_of(dir: &Path, i: usize) -> (PathBuf, usize) {
    let tag = format!("entry-{i}-");
    for p in segments(dir) {
        let b = std::fs::read(&p).unwrap();
        if let Some(at) = b.windows(tag.len()).position(|w| w == tag.as_bytes()) {
            return (p, at - RECORD_HEADER_LEN);
        }
    }
    panic!("entry {i} is in no segment of {}", dir.display());
}

/// Applies `col` to `path` around byte `at` (a block fault covers the 4 KiB
/// block holding `at`; a cut truncates the file at `cut`); returns what it did.
fn apply(path: &Path, col: Col, at: usize, cut: usize) -> String {
    if col == Col::Missing {
        std::fs::remove_file(path).unwrap();
        return format!("removed {}", path.file_name().unwrap().to_string_lossy());
    }
    let mut b = std::fs::read(path).unwrap();
    let block = at / 4096 * 4096;
    let end = (block + 4096).min(b.len());
    let what = match col {
        Col::BitFlip => {
            b[at] ^= 0x04;
            format!("flipped bit 2 of byte {at}")
        }
        Col::ZeroedBlock => {
            b[block..end].fill(0);
            format!("zeroed bytes {block}..{end}")
        }
        Col::JunkBlock => {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ at as u64;
            for byte in &mut b[block..end] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            format!("junk in bytes {block}..{end}")
        }
        Col::CutInsideRecord | Col::CutAtRecordBoundary | Col::Missing => {
            let to = cut.min(b.len());
            b.truncate(to);
            format!("cut to {to} bytes")
        }
    };
    std::fs::write(path, &b).unwrap();
    what
}

/// Applies the fault of one cell to the stopped unit's directory; `None`
/// where the fault does not apply to the structure.
fn damage(dir: &Path, row: Row, col: Col) -> Option<String> {
    let segs = segments(dir);
    let (newest, rec) = record_of(dir, 25);
    let (_, old_rec) = record_of(dir, 3);
    let rec_end = rec + (RECORD_HEADER_LEN + entry(25).len()).next_multiple_of(8);
    let cut = |inside: usize, boundary: usize| match col {
        Col::CutInsideRecord => inside,
        _ => boundary,
    };
    let what = match row {
        Row::RecordHeader | Row::RecordPayload if col == Col::Missing => return None,
        // Entry 25's record in the newest segment: its address field, and
        // cuts inside its header or just before it.
        Row::RecordHeader => apply(&newest, col, rec + 8, cut(rec + 20, rec)),
        // Its payload, and cuts inside the payload or just after the record.
        Row::RecordPayload => apply(
            &newest,
            col,
            rec + RECORD_HEADER_LEN + 3000,
            cut(rec + RECORD_HEADER_LEN + 3000, rec_end),
        ),
        Row::SegmentHeader
            if matches!(
                col,
                Col::CutInsideRecord | Col::CutAtRecordBoundary | Col::Missing
            ) =>
        {
            return None
        }
        Row::SegmentHeader => apply(&segs[0], col, 20, 0),
        // The oldest segment as a file: cut inside entry 3's record or just
        // before it, or removed.
        Row::SegmentFile if matches!(col, Col::BitFlip | Col::ZeroedBlock | Col::JunkBlock) => {
            return None
        }
        Row::SegmentFile => apply(&segs[0], col, 0, cut(old_rec + 100, old_rec)),
        Row::IndexFile => {
            let idx = segs[0].with_extension("idx");
            assert!(idx.exists(), "the oldest segment is indexed");
            // Inside the third entry; a boundary: after the header.
            apply(&idx, col, 64 + 2 * 16 + 3, cut(64 + 2 * 16 + 3, 64))
        }
        // A slot field; cuts inside the first slot, or after it.
        Row::Meta => apply(&dir.join("META"), col, 20, cut(20, 64)),
        Row::Lock => apply(&dir.join("LOCK"), col, 0, cut(1, 0)),
    };
    Some(what)
}

/// `trex unit ARGS --node 127.0.0.1:PORT`.
fn unit_cli(port: u16, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trex"))
        .arg("unit")
        .args(args)
        .args(["--node", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads every entry through the log; counts what is lost or wrong.
fn read_all(eps: &str, o: &mut Outcome) -> bool {
    let (code, out, _) = trex_cli(eps, &["read", "0", "--count", &N.to_string()], WITHIN);
    if code != Some(0) {
        return false;
    }
    let lines: Vec<&str> = out.lines().collect();
    for i in 0..N {
        let want = format!("{i}\t{}", entry(i));
        match lines.get(i) {
            Some(l) if *l == want => {}
            Some(l) if l.starts_with(&format!("{i}\tentry-")) => o.corrupt_served += 1,
            _ => o.lost += 1,
        }
    }
    true
}

fn run_cell(row: Row, col: Col, role: Role) -> Option<Outcome> {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let (victim, name) = match role {
        Role::Head => (base + 22, "unit-3"),
        Role::Tail => (base + 23, "unit-4"),
    };
    let data = dir.path().join(name);
    let cluster = common::trex_up_at(
        dir.path(),
        base,
        &["--repair-every", "2s", "--segment-size", "64KiB"],
    );
    let eps = cluster.eps.clone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["append", "-", "--endpoints", &eps])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    for i in 0..N {
        writeln!(input, "{}", entry(i)).unwrap();
    }
    drop(input);
    assert!(child.wait().unwrap().success(), "trex append failed");
    let pattern = format!("storage --listen 127.0.0.1:{victim} ");
    let cmdline = common::cmdline_of(&pattern);
    common::kill(&pattern, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    let note = damage(&data, row, col)?;
    let mut o = Outcome {
        note,
        ..Outcome::default()
    };
    let log = dir.path().join("restarted.log");
    let mut restarted = common::Proc(
        Command::new(&cmdline[0])
            .args(&cmdline[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", victim)).is_err() {
        if let Ok(Some(_)) = restarted.0.try_wait() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            let advice = err.lines().last().unwrap_or("").to_string();
            o.stopped = Some(advice);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The four expectations, through the CLI: read everything (twice if the
    // first fails), append.
    if !read_all(&eps, &mut o) {
        o.unavailable = true;
        let mut again = Outcome::default();
        if !read_all(&eps, &mut again) {
            o.failing_after_retry = true;
        }
        o.lost += again.lost;
        o.corrupt_served += again.corrupt_served;
    }
    let (code, _, _) = trex_cli(&eps, &["append", "after-the-fault"], WITHIN);
    if code != Some(0) {
        o.unavailable = true;
        let (code, _, _) = trex_cli(&eps, &["append", "after-the-fault"], WITHIN);
        if code != Some(0) {
            o.failing_after_retry = true;
        }
    }
    // Healed: the unit itself serves each of its entries again (the repair
    // loop rewrites what it found damaged; a read found damaged here is
    // rewritten on its next round).
    if o.stopped.is_none() {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            let all = (1..N).step_by(2).all(|i| {
                let (_, out, _) = unit_cli(victim, &["read", &i.to_string(), "--raw"]);
                out == entry(i)
            });
            if all {
                o.healed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    drop(cluster);
    Some(o)
}

/// Runs `cells`; returns the table and the summary line, and whether every
/// cell met the four expectations and left the unit healed from its peers.
fn run(cells: &[(Row, Col, Role)]) -> (String, String, bool) {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| structure | fault | unit | lost | corrupt served | unavailable | failing after retry | unit afterwards | what was done |"
    );
    let _ = writeln!(table, "|---|---|---|---:|---:|---|---|---|---|");
    let (mut n, mut lost, mut corrupt, mut unavail, mut failing, mut healed) = (0, 0, 0, 0, 0, 0);
    let mut advised = 0;
    for &(row, col, role) in cells {
        let Some(o) = run_cell(row, col, role) else {
            continue;
        };
        n += 1;
        lost += o.lost;
        corrupt += o.corrupt_served;
        unavail += usize::from(o.unavailable);
        failing += usize::from(o.failing_after_retry);
        healed += usize::from(o.healed);
        advised += usize::from(o.stopped.is_some());
        let after = match (&o.stopped, o.healed) {
            (Some(advice), _) => format!("stopped: {advice}"),
            (None, true) => "healed from peers".to_string(),
            (None, false) => "not healed".to_string(),
        };
        let line = format!(
            "| {row:?} | {col:?} | {role:?} | {} | {} | {} | {} | {after} | {} |",
            o.lost,
            o.corrupt_served,
            if o.unavailable { "yes" } else { "no" },
            if o.failing_after_retry { "yes" } else { "no" },
            o.note
        );
        eprintln!("{line}");
        let _ = writeln!(table, "{line}");
    }
    let summary = format!(
        "cells {n}, lost {lost}, corrupt served {corrupt}, unavailable {unavail}, failing after retry {failing}, healed from peers {healed}"
    );
    // A unit that stopped with advice is not healed, but it is not left
    // serving wrong answers either (none does today).
    let ok = lost == 0 && corrupt == 0 && unavail == 0 && failing == 0 && healed + advised == n;
    (table, summary, ok)
}

/// A fast subset: a flipped record header at the tail, a zeroed block in a
/// record payload at the head, the newest segment cut at the head (its last
/// entries are above the head's own tail: before, the repair loop never read
/// them), a damaged index at the tail, the oldest segment missing at the head.
#[test]
fn fault_matrix_fast_subset() {
    let (table, summary, ok) = run(&[
        (Row::RecordHeader, Col::BitFlip, Role::Tail),
        (Row::RecordPayload, Col::ZeroedBlock, Role::Head),
        (Row::RecordPayload, Col::CutAtRecordBoundary, Role::Head),
        (Row::IndexFile, Col::JunkBlock, Role::Tail),
        (Row::SegmentFile, Col::Missing, Role::Head),
    ]);
    println!("{table}\n{summary}");
    assert!(ok, "{table}\n{summary}");
}

/// The whole matrix (a few minutes): `scripts/fault-matrix.sh`.
#[test]
#[ignore]
fn fault_matrix_full() {
    let mut cells = Vec::new();
    for row in ROWS {
        for col in COLS {
            for role in [Role::Head, Role::Tail] {
                cells.push((row, col, role));
            }
        }
    }
    let (table, summary, ok) = run(&cells);
    println!("{table}\n{summary}");
    assert!(ok, "{table}\n{summary}");
}
