//! Issue 10, case 6: a consensus group restarted on long journals (no
//! checkpoint yet) elects a leader and commits. Real `trex node consensus`
//! processes on loopback: load the group until each journal holds more than one
//! 16 MiB frame of accepted values, SIGINT all three, start them again on their
//! data, and require a leader and a new committed command within a bound.
//! Before the fix each promise carried the whole journal, every peer refused
//! the frame and dropped the link, and no leader was ever elected.

mod common;

use common::group;
use std::time::{Duration, Instant};
use trex_consensus::client::Submit;
use trex_consensus::lock::LockClient;
use trex_consensus::sm::{Op, Role};

/// Journal bytes each node must hold before the restart: above the 16 MiB
/// frame limit, with room for the record headers.
const LOADED: u64 = 18 << 20;
/// From the restart to a committed command.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

#[test]
fn a_group_restarted_on_journals_longer_than_a_frame_elects_a_leader_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = group(dir.path());
    g.wait_leader(Duration::from_secs(10));

    // Eight writers register nodes with 4,000-byte addresses (the longest a
    // string may be): about 4.1 KB a command, so 18 MiB takes ~4,600
    // commands and stays below the 10,000 slots of a checkpoint.
    let addr = "a".repeat(4000);
    let t0 = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let mut c = g.client();
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2_000 {
                    let op = Op::Register {
                        id: 100 + w,
                        role: Role::Storage,
                        addr: addr.clone(),
                    };
                    c.submit_ok(&op).expect("a command under load");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let journal = |g: &common::Group| {
        (0..3)
            .map(|i| g.status(i).map_or(0, |s| s.journal_bytes))
            .min()
            .unwrap()
    };
    while journal(&g) < LOADED {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the load took over 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let commands: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let before: Vec<_> = (0..3).map(|i| g.status(i).unwrap()).collect();
    eprintln!(
        "loaded {commands} commands in {:?}: {:?}",
        t0.elapsed(),
        before
            .iter()
            .map(|s| (s.commit, s.snapshot, s.journal_bytes))
            .collect::<Vec<_>>()
    );
    for s in &before {
        assert_eq!(s.snapshot, 0, "no checkpoint compacted the journal: {s:?}");
        assert!(s.journal_bytes >= LOADED, "{s:?}");
    }

    // SIGINT all three, wait until they are gone, start them on their data.
    for p in g.procs.iter().flatten() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
    }
    for p in g.procs.iter_mut() {
        if let Some(mut c) = p.take() {
            c.wait().unwrap();
        }
    }
    let t1 = Instant::now();
    for i in 0..3 {
        g.start_node(i);
    }
    let leader = g.wait_leader(RECOVERY_BOUND);
    let mut c = g.client();
    c.submit_ok(&Op::Register {
        id: 1,
        role: Role::Sequencer,
        addr: "127.0.0.1:7500".into(),
    })
    .unwrap();
    let took = t1.elapsed();
    eprintln!(
        "node {} leads; a new command committed {took:?} after the restart",
        leader + 1
    );
    assert!(took < RECOVERY_BOUND, "recovery took {took:?}");
    // Nothing chosen before the restart is lost.
    let members = c.members().unwrap();
    assert_eq!(members.len(), 9, "eight writers' nodes and the new one");
    assert!(members
        .iter()
        .filter(|(id, _)| **id >= 100)
        .all(|(_, m)| m.addr == addr));
    let s = g.status(leader).unwrap();
    assert!(s.commit > before[0].commit.min(before[1].commit).min(before[2].commit));
}

/// Issue 14: checkpoints are encoded and written on a thread of their own
/// (`--checkpoint-every`), and the journal before each one is deleted once
/// the next is durable. A group killed with SIGKILL between rounds of load,
/// and a follower killed in the middle of one, restarts with every lock it
/// granted, and its journals stay short.
#[test]
fn background_checkpoints_keep_every_lock_through_kills() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = common::group_with(dir.path(), &["--checkpoint-every", "40"]);
    g.wait_leader(Duration::from_secs(10));
    let mut locks = LockClient::new(g.client());
    let mut held: Vec<(String, u64)> = Vec::new();
    let hour = Duration::from_secs(3600);
    for round in 0..3 {
        for i in 0..150 {
            let name = format!("round-{round}-lock-{i}");
            let lease = locks.acquire(&name, "checkpoint-test", hour).unwrap();
            assert!(
                held.last().is_none_or(|(_, t)| lease.token > *t),
                "fencing tokens only grow"
            );
            held.push((name, lease.token));
            if i == 75 {
                // A follower dies with checkpoints going on, and comes back.
                let leader = g.wait_leader(Duration::from_secs(10));
                let follower = (leader + 1) % 3;
                g.kill(follower);
                g.start_node(follower);
            }
        }
        let status: Vec<_> = (0..3).filter_map(|i| g.status(i)).collect();
        for s in &status {
            assert!(s.snapshot > 0, "no checkpoint was taken: {s:?}");
            // A checkpoint of a few hundred locks (~100 B each) and at most
            // 40 slots after it; without compaction this would be the whole
            // history of the test.
            assert!(s.journal_bytes < 200_000, "the journal grows: {s:?}");
        }
        for d in &g.dirs {
            let logs = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
                .count();
            assert!(logs <= 3, "{logs} journal files in {}", d.display());
        }
        // SIGKILL the whole group, wherever its checkpoints are.
        for i in 0..3 {
            g.kill(i);
        }
        for i in 0..3 {
            g.start_node(i);
        }
        g.wait_leader(Duration::from_secs(10));
        locks = LockClient::new(g.client());
        for (name, token) in &held {
            let lease = locks.get(name).unwrap();
            assert_eq!(lease.token, *token, "lock {name} after the restart");
        }
    }
    let next = locks.acquire("after-all", "checkpoint-test", hour).unwrap();
    assert!(next.token > held.last().unwrap().1);
}
