//! A consensus node whose journal is damaged (issue 13) never votes with what
//! is left: it sets the journal aside, has the group retire its id and add it
//! back under a new one, and learns the log from the others. Real processes:
//! one flipped length bit in a follower's journal, then (later, on another
//! node) a cut at a record boundary, found by the durable mark.

mod common;

use common::{group, journal_record_starts, newest_journal, trex_cli};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use trex_consensus::client::ConsensusClient;

const T: Duration = Duration::from_secs(20);

/// `trex lock acquire NAME --holder HOLDER --ttl 1h` against `eps`: its exit
/// code, standard output and standard error.
fn acquire(eps: &str, name: &str, holder: &str) -> (Option<i32>, String, String) {
    trex_cli(
        eps,
        &["lock", "acquire", name, "--holder", holder, "--ttl", "1h"],
        T,
    )
}

fn group_json(eps: &str) -> serde_json::Value {
    let (code, out, err) = trex_cli(eps, &["endpoint", "list", "-w", "json"], T);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().or_else(|| n["id"].as_u64()).unwrap())
        .collect()
}

/// Waits until the node at `addr` reports id `id` and has applied what the
/// rest of the group committed.
fn caught_up(addr: &str, others: &[&str], id: u64) {
    let t0 = Instant::now();
    loop {
        let commit = others
            .iter()
            .filter_map(|a| ConsensusClient::node_status(a, T).ok())
            .map(|s| s.commit)
            .max()
            .unwrap_or(0);
        if let Ok(s) = ConsensusClient::node_status(addr, T) {
            if s.id == id && s.applied >= commit && commit > 0 {
                return;
            }
        }
        assert!(t0.elapsed() < T, "node {id} at {addr} did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_damaged_journal_makes_the_node_rejoin_under_a_new_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = group(dir.path());
    g.wait_leader(T);
    let eps = g.addrs.join(",");
    for i in 0..30 {
        let (code, _, err) = acquire(&eps, &format!("l{i}"), "h");
        assert_eq!(code, Some(0), "{err}");
    }

    // A follower: one bit of a length field in the middle of its journal.
    let leader = g.wait_leader(T);
    let f = (leader + 1) % 3;
    g.kill(f);
    let path = newest_journal(&g.dirs[f]);
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = journal_record_starts(&bytes);
    assert!(starts.len() > 4, "a journal of {} records", starts.len());
    bytes[starts[starts.len() / 2] + 6] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    g.start_node(f);
    let new_f = 4;
    let others: Vec<&str> = (0..3)
        .filter(|i| *i != f)
        .map(|i| g.addrs[i].as_str())
        .collect();
    caught_up(&g.addrs[f], &others, new_f);
    let v = group_json(&eps);
    let mut want: Vec<u64> = (1..=3).filter(|i| *i != f as u64 + 1).collect();
    want.push(new_f);
    assert_eq!(ids(&v["voting"]), want, "{v}");
    assert_eq!(ids(&v["retired"]), vec![f as u64 + 1], "{v}");
    let aside = std::fs::read_dir(&g.dirs[f])
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .count();
    assert!(aside >= 1, "the damaged journal is kept aside");

    // Later, the leader: its journal cut at a record boundary (a shorter but
    // well-formed journal), found by the durable mark. (If the rejoined node
    // leads now, the other original node.)
    let leader = g.wait_leader(T);
    let h = if leader != f {
        leader
    } else {
        (0..3).find(|i| *i != f).unwrap()
    };
    g.kill(h);
    let path = newest_journal(&g.dirs[h]);
    let bytes = std::fs::read(&path).unwrap();
    let starts = journal_record_starts(&bytes);
    std::fs::write(&path, &bytes[..starts[starts.len() / 2]]).unwrap();
    g.start_node(h);
    let new_h = 5;
    let others: Vec<&str> = (0..3)
        .filter(|i| *i != h)
        .map(|i| g.addrs[i].as_str())
        .collect();
    caught_up(&g.addrs[h], &others, new_h);
    let v = group_json(&eps);
    assert_eq!(ids(&v["voting"]).len(), 3, "{v}");
    assert!(ids(&v["voting"]).contains(&new_h), "{v}");
    assert_eq!(ids(&v["retired"]).len(), 2, "{v}");

    // Nothing was lost: every lock is still held (a second acquire is refused),
    // and the group takes new commands with its last original node gone too:
    // the two that came back under new ids are its majority.
    let last = (0..3).find(|i| *i != f && *i != h).unwrap();
    g.kill(last);
    for i in 0..30 {
        let (code, _, err) = acquire(&eps, &format!("l{i}"), "x");
        assert_ne!(code, Some(0), "lock l{i} was free again");
        assert!(err.contains("held"), "l{i}: {err}");
    }
    let (code, _, err) = acquire(&eps, "after", "x");
    assert_eq!(code, Some(0), "{err}");
}

/// A tmpfs of `size` at a fresh directory (root only), unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir_all(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { _dir: dir, path })
    }

    fn grow(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount the tmpfs");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn a_consensus_node_whose_disk_fills_stops_and_comes_back_when_space_is_freed() {
    let Some(disk) = SmallDisk::mount("256k") else {
        return eprintln!("skipped: mounting a tmpfs needs root");
    };
    let dir = tempfile::tempdir().unwrap();
    let mut g = group(dir.path());
    // Node 3's journal on the small disk.
    g.kill(2);
    g.dirs[2] = disk.path.join("n3");
    g.start_node(2);
    g.wait_leader(T);
    let eps = g.addrs.join(",");
    let holder = "h".repeat(2000);
    let mut held = 0;
    for i in 0..400 {
        let (code, _, err) = acquire(&eps, &format!("big{i}"), &holder);
        assert_eq!(
            code,
            Some(0),
            "the group serves while node 3's disk fills: {err}"
        );
        held += 1;
        if g.procs[2].as_mut().unwrap().try_wait().unwrap().is_some() {
            break;
        }
    }
    let status = g.procs[2].as_mut().unwrap().wait().unwrap();
    assert!(
        !status.success(),
        "node 3 stopped when its disk filled ({held} locks)"
    );
    // Space freed: it restarts on its journal, under its own id, and catches up.
    disk.grow("64m");
    g.start_node(2);
    let others = [g.addrs[0].as_str(), g.addrs[1].as_str()];
    caught_up(&g.addrs[2], &others, 3);
    assert!(
        !std::fs::read_dir(&g.dirs[2]).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("damaged-")),
        "a full disk is not damage"
    );
    // It votes again: with node 1 gone, nodes 2 and 3 are the majority.
    g.kill(0);
    let (code, _, err) = acquire(&eps, "after", "x");
    assert_eq!(code, Some(0), "{err}");
}
