//! Issue 13, the storage unit's side: one on-disk fault in one unit of a
//! `trex up` cluster (2 stripes × 2 replicas, 64 KiB segments), applied with
//! the unit stopped, then the unit restarted on its data. Nothing acknowledged
//! may be lost, nothing damaged served, reads must answer from the chain's
//! other replica at once, and the damaged copy must be rewritten from it (by
//! read repair, or by the sequencer's repair loop when no client reads it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{append_entries, entry, line, trex_cli};

/// A cluster whose unit at `victim` (its data in `data`) is stopped,
/// damaged and restarted by the test.
struct Bed {
    _cluster: common::Cluster,
    eps: String,
    victim: u16,
    data: PathBuf,
    cmdline: Vec<String>,
    restarted: Option<common::Proc>,
    _dir: tempfile::TempDir,
}

/// Which unit of the cluster to damage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    /// The head of stripe 1's chain (odd addresses).
    Head,
    /// The tail of stripe 1's chain: every read of an odd address goes to it.
    Tail,
}

impl Bed {
    /// `trex up` with `repair_every`, entries `0..n` appended; unit `role`
    /// of stripe 1 stopped.
    fn new(n: usize, repair_every: &str, role: Role) -> Bed {
        let bed = Bed::start(n, repair_every, role);
        bed.stop();
        bed
    }

    /// As [`Bed::new`], the unit still running.
    fn start(n: usize, repair_every: &str, role: Role) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let base = common::free_base();
        // Chains [u1, u2] (even addresses) and [u3, u4] (odd), ports +20…+23.
        let (victim, unit) = match role {
            Role::Head => (base + 22, "unit-3"),
            Role::Tail => (base + 23, "unit-4"),
        };
        let cluster = common::trex_up_at(
            dir.path(),
            base,
            &["--repair-every", repair_every, "--segment-size", "64KiB"],
        );
        let eps = cluster.eps.clone();
        append_entries(&eps, 0..n);
        let pattern = format!("storage --listen 127.0.0.1:{victim} ");
        let cmdline = common::cmdline_of(&pattern);
        Bed {
            _cluster: cluster,
            eps,
            victim,
            data: dir.path().join(unit),
            cmdline,
            restarted: None,
            _dir: dir,
        }
    }

    /// Stops the unit (SIGKILL) that [`Bed::start`] left running.
    fn stop(&self) {
        common::kill(
            &format!("storage --listen 127.0.0.1:{} ", self.victim),
            libc::SIGKILL,
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Starts the damaged unit again on its data; waits until it answers.
    fn restart(&mut self) {
        self.restarted = Some(common::restart(&self.cmdline));
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.victim)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "no restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `trex unit ARGS --node VICTIM`: exit code, standard output and error.
    fn unit(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_trex"))
            .arg("unit")
            .args(args)
            .args(["--node", &format!("127.0.0.1:{}", self.victim)])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The victim's `info`.
    fn info(&self) -> serde_json::Value {
        let (code, out, err) = self.unit(&["info", "-w", "json"]);
        assert_eq!(code, Some(0), "unit info: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// What the victim itself answers for `addr`: the entry's bytes, or its
    /// status in words.
    fn unit_read(&self, addr: usize) -> String {
        let (_, out, err) = self.unit(&["read", &addr.to_string(), "--raw"]);
        if out.is_empty() {
            err
        } else {
            out
        }
    }

    /// Segment files of the victim, oldest first.
    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    /// The segment file holding entry `i`'s record, and the offset of the
    /// record's header in it.
    fn record_of(&self, i: usize) -> (PathBuf, usize) {
        let tag = format!("entry-{i}-");
        for p in self.segments() {
            let bytes = std::fs::read(&p).unwrap();
            if let Some(at) = bytes.windows(tag.len()).position(|w| w == tag.as_bytes()) {
                return (p, at - RECORD_HEADER_LEN);
            }
        }
        panic!("entry {i} is in no segment of {}", self.data.display());
    }
}

/// Size of a record header (`engine/unit/src/storage/record.rs`).
const RECORD_HEADER_LEN: usize = 40;

/// XORs `mask` into the byte at `off` of `path`.
fn flip(path: &Path, off: usize, mask: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[off] ^= mask;
    std::fs::write(path, &b).unwrap();
}

/// The start of a long output, for a message.
fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Polls `f` until it is true, for at most `within`.
fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if t0.elapsed() > within => panic!("{what} not within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

const WITHIN: Duration = Duration::from_secs(40);

/// Case 1: one bit flipped in the address field of entry 3's record on the
/// tail of its chain (bit 62: the address becomes 2^62 + 3). Before, the unit
/// believed the damaged header: its tail became 2^62 + 4, and `trex read 3`
/// answered unwritten for the acknowledged entry. Now the header fails its
/// own checksum, so nothing of it is used: the tail stays, the unit answers
/// `corrupt` (never `unwritten`) for what it does not hold, the read comes
/// from the head and is repaired back, and a takeover starts the counter where
/// the log really ends.
#[test]
fn a_flipped_address_bit_is_trusted_for_nothing() {
    let mut bed = Bed::new(6, "0s", Role::Tail);
    let (seg, at) = bed.record_of(3);
    flip(&seg, at + 8 + 7, 0x40);
    bed.restart();
    let info = bed.info();
    assert!(
        info["tail"].as_u64().unwrap() < 100,
        "the damaged record moved the unit's tail: {info}"
    );
    let got = bed.unit_read(3);
    assert!(got.contains("corrupt"), "the unit's own answer: {got}");
    let (code, out, err) = trex_cli(&bed.eps, &["read", "3"], WITHIN);
    assert_eq!(code, Some(0), "read 3: {err}");
    assert_eq!(out.trim_end(), line(3, 3), "read 3");
    // Read repair copied the head's value to the damaged unit.
    assert!(bed.unit_read(3) == entry(3), "read repair");
    let (code, out, err) = trex_cli(&bed.eps, &["check"], WITHIN);
    assert_eq!((code, out.trim()), (Some(0), "6"), "check: {err}");
    // A takeover: the new counter starts at the log's end, not at 2^62.
    let addr = takeover(&bed.eps);
    assert!(addr < 1000, "the log's address space jumped to {addr}");
}

/// Kills the active sequencer and appends until a standby has taken over
/// (sealing every unit at a new epoch); returns the append's address.
fn takeover(eps: &str) -> u64 {
    let (code, status, err) = trex_cli(eps, &["status"], WITHIN);
    assert_eq!(code, Some(0), "status: {err}");
    let active = status
        .lines()
        .find_map(|l| l.strip_prefix("sequencer  "))
        .unwrap_or_else(|| panic!("no sequencer: {status}"))
        .trim()
        .to_string();
    common::kill(&format!("[-]-listen 127.0.0.1:{active} "), libc::SIGKILL);
    let mut addr = None;
    eventually(
        Duration::from_secs(30),
        "an append after the takeover",
        || {
            let (code, out, err) = trex_cli(eps, &["append", "after"], WITHIN);
            if code == Some(0) {
                addr = out.trim().parse::<u64>().ok();
                Ok(())
            } else {
                Err(err)
            }
        },
    );
    addr.expect("an address")
}

/// Case 3: a payload bit flipped in the last record of the tail's newest
/// segment. Every byte of the record is there, so it is damage, not a write
/// cut short: before, the unit cut it as a torn tail and answered `unwritten`
/// for the acknowledged entry. Now it answers `corrupt`, the client reads the
/// head, and read repair rewrites the copy.
#[test]
fn a_damaged_last_record_is_not_cut_as_a_torn_write() {
    let mut bed = Bed::new(6, "0s", Role::Tail);
    let (seg, at) = bed.record_of(5);
    flip(&seg, at + RECORD_HEADER_LEN + 100, 0x20);
    bed.restart();
    let got = bed.unit_read(5);
    assert!(got.contains("corrupt"), "the unit's own answer: {got}");
    assert_eq!(bed.info()["corrupt"].as_u64(), Some(1), "{}", bed.info());
    // `trex status` says so (the repair loop is off here: it stays).
    let (code, status, err) = trex_cli(&bed.eps, &["status"], WITHIN);
    assert_eq!(code, Some(0), "status: {err}");
    let row = status
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{} ", bed.victim)))
        .unwrap_or_else(|| panic!("no row for the unit: {status}"));
    assert!(row.contains("damaged 1"), "status row: {row}");
    let (code, out, err) = trex_cli(&bed.eps, &["read", "5"], WITHIN);
    assert_eq!(code, Some(0), "read 5: {err}");
    assert_eq!(out.trim_end(), line(5, 5), "read 5");
    assert!(bed.unit_read(5) == entry(5), "read repair");
    assert_eq!(bed.info()["corrupt"].as_u64(), Some(0), "{}", bed.info());
}

/// How an older, indexed segment is damaged.
#[derive(Clone, Copy, Debug)]
enum OldDamage {
    /// One payload bit.
    PayloadBit,
    /// One bit of the record's length field.
    LengthBit,
    /// The 4 KiB block holding the middle of the record, zeroed.
    ZeroedBlock,
}

/// Case 2: entries 1 and 3, in the tail's oldest segment (full, with an index
/// file, so not scanned at start), damaged one way. Reads answer at once from
/// the head; the sequencer's repair loop rewrites the damaged copies without
/// any client reading them; the index is rebuilt where it was removed.
fn an_old_segment_is_healed_from_peers(how: OldDamage) {
    let mut bed = Bed::new(30, "2s", Role::Tail);
    let segs = bed.segments();
    assert!(segs.len() >= 2, "two segments: {segs:?}");
    assert!(
        segs[0].with_extension("idx").exists(),
        "the full segment is indexed"
    );
    let records: Vec<(PathBuf, usize)> = [1, 3].iter().map(|i| bed.record_of(*i)).collect();
    for (seg, at) in records {
        assert_eq!(seg, segs[0], "entries 1 and 3 in the oldest segment");
        match how {
            OldDamage::PayloadBit => flip(&seg, at + RECORD_HEADER_LEN + 100, 0x20),
            OldDamage::LengthBit => flip(&seg, at + 5, 0x01),
            OldDamage::ZeroedBlock => {
                let mut b = std::fs::read(&seg).unwrap();
                let block = (at + RECORD_HEADER_LEN + 5000) / 4096 * 4096;
                b[block..block + 4096].fill(0);
                std::fs::write(&seg, &b).unwrap();
            }
        }
    }
    bed.restart();
    // The repair loop finds and rewrites both copies; nobody reads them (a
    // read would find the damage by itself). Four repair rounds, then the
    // head goes: what the tail serves now is its own copy.
    std::thread::sleep(Duration::from_secs(8));
    let info = bed.info();
    assert_eq!(
        info["corrupt"].as_u64(),
        Some(0),
        "{how:?}: repaired: {info}"
    );
    common::kill(
        &format!("storage --listen 127.0.0.1:{} ", bed.victim - 1),
        libc::SIGKILL,
    );
    for i in [1, 3] {
        let got = bed.unit_read(i);
        assert!(
            got == entry(i),
            "{how:?}: entry {i} repaired: {}",
            short(&got)
        );
    }
    let (code, out, err) = trex_cli(&bed.eps, &["read", "0", "--count", "30"], WITHIN);
    assert_eq!(code, Some(0), "{how:?}: read: {err}");
    let all: Vec<String> = (0..30).map(|i| line(i, i)).collect();
    assert!(out.lines().eq(all.iter()), "{how:?}: read: {}", short(&out));
}

#[test]
fn an_old_segment_with_a_payload_bit_flipped_is_healed() {
    an_old_segment_is_healed_from_peers(OldDamage::PayloadBit);
}

#[test]
fn an_old_segment_with_a_length_bit_flipped_is_healed() {
    an_old_segment_is_healed_from_peers(OldDamage::LengthBit);
}

#[test]
fn an_old_segment_with_a_zeroed_block_is_healed() {
    an_old_segment_is_healed_from_peers(OldDamage::ZeroedBlock);
}

/// Case 3 again, healed by the sequencer's repair loop alone: nobody reads
/// the damaged entry; after four repair rounds the head goes, and the tail
/// serves its own, rewritten copy.
#[test]
fn a_damaged_last_record_is_rewritten_by_the_repair_loop() {
    let mut bed = Bed::new(6, "2s", Role::Tail);
    let (seg, at) = bed.record_of(5);
    flip(&seg, at + RECORD_HEADER_LEN + 100, 0x20);
    bed.restart();
    std::thread::sleep(Duration::from_secs(8));
    let info = bed.info();
    assert_eq!(info["corrupt"].as_u64(), Some(0), "repaired: {info}");
    common::kill(
        &format!("storage --listen 127.0.0.1:{} ", bed.victim - 1),
        libc::SIGKILL,
    );
    let got = bed.unit_read(5);
    assert!(got == entry(5), "entry 5 repaired: {}", short(&got));
    let (code, out, err) = trex_cli(&bed.eps, &["read", "5"], WITHIN);
    assert_eq!(code, Some(0), "read 5: {err}");
    assert!(out.trim_end() == line(5, 5), "read 5: {}", short(&out));
}

/// The offset of the last record in a segment file (records follow each
/// other from offset 64, each `(40 + len)` rounded up to 8 bytes).
fn last_record(seg: &Path) -> usize {
    let b = std::fs::read(seg).unwrap();
    let (mut off, mut last) = (64, None);
    while off + RECORD_HEADER_LEN <= b.len()
        && b[off..off + RECORD_HEADER_LEN].iter().any(|x| *x != 0)
    {
        let len = u32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        last = Some(off);
        off += (RECORD_HEADER_LEN + len).next_multiple_of(8);
    }
    last.expect("a record")
}

/// Case 4: one bit flipped in the sealed epoch of the unit's last record, its
/// seal. Before, the unit cut it as a torn write and came back sealed at an
/// older epoch than it had acknowledged, accepting a write at that epoch which
/// a healthy unit refuses. Now every seal is also in `META`, durable before
/// the seal is acknowledged, and the unit takes the larger: fencing survives.
#[test]
fn a_damaged_seal_record_does_not_lower_the_fence() {
    let bed = Bed::start(2, "0s", Role::Tail);
    takeover(&bed.eps);
    // A takeover with no append after it on this chain: the seal is the
    // unit's last record.
    let sealed = bed.info()["sealed_epoch"].as_u64().unwrap();
    assert!(sealed >= 2, "sealed at {sealed}");
    bed.stop();
    let seg = bed.segments().pop().unwrap();
    let at = last_record(&seg);
    let b = std::fs::read(&seg).unwrap();
    assert_eq!(b[at + 32], 3, "the last record is a meta record (a seal)");
    assert_eq!(
        u64::from_le_bytes(b[at + 16..at + 24].try_into().unwrap()),
        sealed,
        "it holds the sealed epoch"
    );
    flip(&seg, at + 16, 0x01);
    let mut bed = bed;
    bed.restart();
    let info = bed.info();
    assert!(
        info["sealed_epoch"].as_u64().unwrap() >= sealed,
        "the fence went back: sealed at {sealed} before, now {info}"
    );
    let (code, _, err) = bed.unit(&[
        "write",
        "1001",
        "stale",
        "--epoch",
        &(sealed - 1).to_string(),
    ]);
    assert_ne!(
        code,
        Some(0),
        "a write at epoch {} was accepted",
        sealed - 1
    );
    assert!(err.contains("sealed"), "refused as sealed: {err}");
}

/// A tmpfs mounted for one unit's data, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Case 5: a unit with less free space than one segment (a 48 KiB tmpfs, 64
/// KiB segments) is full from the start. Before, every sequencer takeover
/// failed ("cannot preallocate … disk full") and with it every append. Now it
/// is sealed all the same (its seals go to `META`), answers `full` to writes
/// so the cluster routes around it, and takeovers and appends go on.
#[test]
fn a_unit_smaller_than_a_segment_is_full_and_takeovers_go_on() {
    a_full_unit_lets_takeovers_go_on(0);
}

/// Case 5 on a disk so full that not even the 4 KiB `META` file fits at
/// start (two free pages: the unit's `LOCK` and `NODE_ID` take them): the
/// unit can record no seal at all. It can record nothing else either (a
/// write needs more room than a seal), so it is harmless unsealed; before,
/// its refusal failed every takeover, and with them every append.
#[test]
fn a_unit_without_room_for_a_seal_lets_takeovers_go_on() {
    a_full_unit_lets_takeovers_go_on(40960);
}

fn a_full_unit_lets_takeovers_go_on(filler: usize) {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("unit-4");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48k", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let _mount = Mount(small.clone());
    if filler > 0 {
        std::fs::write(small.join("filler"), vec![1u8; filler]).unwrap();
    }
    let base = common::free_base();
    let cluster = common::trex_up_at(
        dir.path(),
        base,
        &["--repair-every", "1s", "--segment-size", "64KiB"],
    );
    let eps = cluster.eps.clone();
    append_entries(&eps, 0..6);
    // (`trex up` runs two sequencers: one takeover.)
    let addr = takeover(&eps);
    assert!(addr >= 6, "appended at {addr}");
    append_entries(&eps, 6..10);
    let (code, out, err) = trex_cli(&eps, &["check"], WITHIN);
    assert_eq!(code, Some(0), "check: {err}");
    assert_eq!(out.trim(), "11", "check: 6 + 1 + 4 entries");
}

/// The layout's chain for the odd addresses, from `trex layout -w json`.
fn odd_chain(eps: &str) -> Vec<u64> {
    let (code, out, err) = trex_cli(eps, &["layout", "show", "-w", "json"], WITHIN);
    assert_eq!(code, Some(0), "layout: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let seg = v["segments"].as_array().unwrap().last().unwrap().clone();
    seg["stripes"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_u64().unwrap())
        .collect()
}

/// A damaged copy on the last replica of its chain, whose partner left the
/// chain before the damage was repaired (stopped, then taken out by the next
/// append), is restored from that former replica once it runs again. With
/// the damaged unit at the head, the partner (the former tail) stood behind
/// it in every projection that named it, so it holds the head's own bytes;
/// with the damaged unit at the tail, the former head could hold a value the
/// tail never had, so its copy goes in only through `verified-repair`, which
/// the tail's intact record header and checksum confirm (docs/protocol.md,
/// "Damaged copies"). Before, both reads failed ("damaged or unreachable on
/// every replica") although an intact copy was running.
fn a_damaged_copy_is_restored_from_a_former_replica(damaged: Role) {
    // Stripe 1's chain is unit 3 (head, port +22) -> unit 4 (tail, +23).
    let mut bed = Bed::start(6, "0s", damaged);
    let partner_port = match damaged {
        Role::Head => bed.victim + 1,
        Role::Tail => bed.victim - 1,
    };
    let partner = format!("storage --listen 127.0.0.1:{partner_port} ");
    let partner_cmd = common::cmdline_of(&partner);
    common::kill(&partner, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    // Appends reach the dead partner and take it out of the layout.
    append_entries(&bed.eps, 6..10);
    let chain = odd_chain(&bed.eps);
    assert_eq!(chain.len(), 1, "the partner was taken out: chain {chain:?}");
    // Entry 3's copy on the victim, now the chain's only replica, damaged.
    bed.stop();
    let (seg, at) = bed.record_of(3);
    flip(&seg, at + RECORD_HEADER_LEN + 100, 0x20);
    bed.restart();
    assert!(bed.unit_read(3).contains("corrupt"), "{}", bed.unit_read(3));
    // The partner runs again, outside the layout, with its data.
    let _partner = common::restart(&partner_cmd);
    eventually(WITHIN, "read 3 from the former replica", || {
        let (code, out, err) = trex_cli(&bed.eps, &["read", "3"], WITHIN);
        (code == Some(0) && out.trim_end() == line(3, 3))
            .then_some(())
            .ok_or(format!("{code:?} {} {}", short(&out), short(&err)))
    });
    assert_eq!(odd_chain(&bed.eps), chain, "the layout did not change");
    assert!(
        bed.unit_read(3) == entry(3),
        "the damaged copy was repaired"
    );
    let (code, out, err) = trex_cli(&bed.eps, &["read", "0", "--count", "10"], WITHIN);
    assert_eq!(code, Some(0), "read: {err}");
    let all: Vec<String> = (0..10).map(|i| line(i, i)).collect();
    assert!(out.lines().eq(all.iter()), "read: {}", short(&out));
}

#[test]
fn a_damaged_head_copy_is_restored_from_the_former_tail() {
    a_damaged_copy_is_restored_from_a_former_replica(Role::Head);
}

#[test]
fn a_damaged_tail_copy_is_restored_from_the_former_head_when_it_proves_its_own() {
    a_damaged_copy_is_restored_from_a_former_replica(Role::Tail);
}
