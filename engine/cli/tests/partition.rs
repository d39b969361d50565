//! Real partitions on loopback: `nft` drops every TCP packet to one node's
//! port (new and established connections alike), while that node's own
//! outgoing connections keep working — the one-way cut of issue 10. Clients keep
//! appending through it; nothing acknowledged is lost, and the longest gap
//! between two acknowledged appends is bounded.
//!
//! Root and `nft` (Debian: nftables) are needed; elsewhere each test says so
//! and passes without running. Every rule lives in a table of this process's
//! own, removed when the test ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trex_log::{Log, Slot};

mod common;

use common::{can_cut, Cut};

/// `trex up --units 5` on free ports; returns it, its base port and endpoints.
fn up(dir: &std::path::Path) -> (common::Cluster, u16, String) {
    let c = common::trex_up(dir, &["--units", "5"]);
    let (base, eps) = (c.base, c.eps.clone());
    (c, base, eps)
}

/// Acknowledged appends, and the time of each acknowledgement.
#[derive(Default)]
struct History {
    acked: HashMap<u64, Vec<u8>>,
    times: Vec<Instant>,
}

/// Two writers appending batches of 4 until `stop` (each call bounded by the
/// client's own retries).
fn writers(
    eps: &str,
    stop: &Arc<AtomicBool>,
    h: &Arc<Mutex<History>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|w| {
            let (eps, stop, h) = (eps.to_string(), stop.clone(), h.clone());
            std::thread::spawn(move || {
                let mut log = Log::connect(&eps).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let entries: Vec<Vec<u8>> = (0..4)
                        .map(|k| format!("writer {w} batch {i} entry {k}").into_bytes())
                        .collect();
                    let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_slice()).collect();
                    let addrs = log
                        .append_batch(&refs)
                        .expect("every append is acknowledged");
                    let mut g = h.lock().unwrap();
                    let now = Instant::now();
                    for (a, e) in addrs.into_iter().zip(entries) {
                        assert!(
                            g.acked.insert(a, e).is_none(),
                            "address {a} acknowledged twice"
                        );
                        g.times.push(now);
                    }
                    drop(g);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect()
}

/// Appends through a cut of `victim`'s port lasting `cut_for`; returns the
/// longest gap between acknowledgements, after checking every acknowledged
/// append reads back.
fn appends_through_a_cut(eps: &str, victim: u16, cut_for: Duration) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let h: Arc<Mutex<History>> = Arc::default();
    let ws = writers(eps, &stop, &h);
    std::thread::sleep(Duration::from_secs(1));
    let cut = Cut::port(victim).expect("nft worked a moment ago");
    std::thread::sleep(cut_for);
    drop(cut);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in ws {
        w.join().expect("a writer failed");
    }
    let h = h.lock().unwrap();
    let mut times = h.times.clone();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let mut log = Log::connect(eps).unwrap();
    for (a, want) in &h.acked {
        match log.read(*a).unwrap() {
            Slot::Data { data, .. } => assert_eq!(&data, want, "address {a}"),
            other => panic!("acknowledged address {a} reads as {other:?}"),
        }
    }
    assert!(
        h.acked.len() > 40,
        "only {} appends acknowledged",
        h.acked.len()
    );
    gap
}

/// Issue 10, case 8: the active sequencer cut off from its clients (it still
/// reaches the consensus nodes) lets its lease go; the standby takes over and
/// appends resume within the lease TTL (3 s) and a bit.
#[test]
fn a_sequencer_its_clients_cannot_reach_hands_over_its_lease() {
    if !can_cut() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, base, eps) = up(dir.path());
    let log = Log::connect(&eps).unwrap();
    let active = log.projection().sequencer;
    assert!(
        active == u64::from(base + 10) || active == u64::from(base + 11),
        "the active sequencer {active} is one of trex up's"
    );
    let gap = appends_through_a_cut(&eps, active as u16, Duration::from_secs(8));
    eprintln!("longest gap between acknowledged appends: {gap:?}");
    assert!(gap < Duration::from_secs(7), "appends stalled for {gap:?}");
    let mut log = Log::connect(&eps).unwrap();
    log.refresh().unwrap();
    assert_ne!(log.projection().sequencer, active, "the standby took over");
}

/// A storage unit cut off (one-way: its own connections still work) is taken
/// out by the clients that meet it, and appends go on.
#[test]
fn a_unit_its_clients_cannot_reach_costs_no_append() {
    if !can_cut() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, base, eps) = up(dir.path());
    let gap = appends_through_a_cut(&eps, base + 23, Duration::from_secs(6));
    eprintln!("longest gap between acknowledged appends: {gap:?}");
    assert!(gap < Duration::from_secs(7), "appends stalled for {gap:?}");
}

/// Issue 10, case 7: the consensus leader cut off one way (it still sends, it
/// hears nothing) steps down (check-quorum), the others elect a leader, and
/// appends (whose sequencer renews its lease through the group) go on.
#[test]
fn a_consensus_leader_that_hears_nothing_is_replaced() {
    if !can_cut() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, base, eps) = up(dir.path());
    let leader = (0..3)
        .map(|i| base + i)
        .find(|p| {
            trex_consensus::client::ConsensusClient::node_status(
                &format!("127.0.0.1:{p}"),
                Duration::from_secs(1),
            )
            .is_ok_and(|s| s.leading)
        })
        .expect("a consensus node leads");
    let gap = appends_through_a_cut(&eps, leader, Duration::from_secs(6));
    eprintln!("longest gap between acknowledged appends: {gap:?}");
    assert!(gap < Duration::from_secs(4), "appends stalled for {gap:?}");
}
