//! Real partitions between nodes (issue 10): every node of a cluster runs in
//! its own network namespace with its own address (the bed of
//! `netns_bed/mod.rs`), and `nft` inside one node's namespace cuts it off —
//! in both directions, or inbound only (nobody reaches it; its own
//! connections work). Two writers in the test process append through the cut
//! and after the heal; every acknowledged append must read back with its
//! bytes, and the longest gap between two acknowledged appends must stay
//! under the bound each test states.
//!
//! Root, `ip` and `nft` are needed; elsewhere each test prints `skipped: …`
//! and passes without running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trex_log::{Log, Slot};

mod netns_bed;
use netns_bed::{wait_until, Dir, NetCluster};

/// A directory for a cluster's data and node logs (`node-N.log`); kept, and
/// its path printed, when TREX_NETNS_KEEP is set.
fn data_dir() -> tempfile::TempDir {
    let mut d = tempfile::tempdir().unwrap();
    if std::env::var_os("TREX_NETNS_KEEP").is_some() {
        eprintln!("data and node logs in {}", d.path().display());
        d.disable_cleanup(true);
    }
    d
}

/// 3 consensus nodes, 2 sequencers, 5 units, 2 stripes x 2 replicas (a
/// spare); `None` (after saying why) where this machine cannot run it.
fn cluster(dir: &std::path::Path) -> Option<NetCluster> {
    match NetCluster::start(dir, 5, 2, 2) {
        Ok(c) => Some(c),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Acknowledged appends, the time of each acknowledgement, and failures.
#[derive(Default)]
struct History {
    acked: HashMap<u64, Vec<u8>>,
    times: Vec<Instant>,
    errors: Vec<String>,
}

/// Two writers appending batches of 4 every 20 ms or so, each at most 2,000
/// batches and 60 s.
struct Load {
    stop: Arc<AtomicBool>,
    h: Arc<Mutex<History>>,
    writers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(eps: &str, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let h: Arc<Mutex<History>> = Arc::default();
        let writers = (0..2)
            .map(|w| {
                let (eps, stop, h, tag) =
                    (eps.to_string(), stop.clone(), h.clone(), tag.to_string());
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut log = Log::connect(&eps).expect("connect");
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && i < 2_000
                        && t0.elapsed() < Duration::from_secs(60)
                    {
                        let entries: Vec<Vec<u8>> = (0..4)
                            .map(|k| format!("{tag} writer {w} batch {i} entry {k}").into_bytes())
                            .collect();
                        let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_slice()).collect();
                        let r = log.append_batch(&refs);
                        let now = Instant::now();
                        let mut g = h.lock().unwrap();
                        match r {
                            Ok(addrs) => {
                                for (a, e) in addrs.into_iter().zip(entries) {
                                    assert!(
                                        g.acked.insert(a, e).is_none(),
                                        "address {a} acknowledged twice"
                                    );
                                    g.times.push(now);
                                }
                            }
                            Err(e) => g.errors.push(format!("writer {w} batch {i}: {e}")),
                        }
                        drop(g);
                        i += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        Load { stop, h, writers }
    }

    /// Stops the writers; returns what they did and when they were told to stop.
    fn finish(mut self) -> (History, Instant) {
        let at = Instant::now();
        self.stop.store(true, Ordering::Relaxed);
        for w in std::mem::take(&mut self.writers) {
            w.join().expect("a writer panicked");
        }
        let h = std::mem::take(&mut *self.h.lock().unwrap());
        (h, at)
    }

    fn acked(&self) -> usize {
        self.h.lock().unwrap().acked.len()
    }
}

impl Drop for Load {
    /// Stops the writers if the test failed before it finished them.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What one cut cost.
struct Outcome {
    /// Longest time without an acknowledgement, from a second before the cut
    /// until the writers stopped (3 s after the heal).
    gap: Duration,
    /// From the heal to the first acknowledgement after it.
    resumed: Duration,
    acked: usize,
}

/// Cuts node `victim` in direction `dir` for `hold` while two writers append,
/// heals, lets them go on for 3 s; then checks that no append failed and that
/// every acknowledged append reads back with its bytes.
///
/// `during` runs while the cut holds, `hold` after the cut began at most.
fn through_a_cut(
    c: &NetCluster,
    victim: u8,
    dir: Dir,
    hold: Duration,
    what: &str,
    during: impl FnOnce(),
) -> Outcome {
    let load = Load::start(&c.eps, what);
    wait_until("appends before the cut", Duration::from_secs(10), || {
        load.acked() >= 40
    });
    std::thread::sleep(Duration::from_millis(500));
    let cut = c.bed.cut(victim, dir);
    let cut_at = Instant::now();
    during();
    std::thread::sleep(hold.saturating_sub(cut_at.elapsed()));
    cut.heal();
    let healed = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let (h, stopped) = load.finish();
    assert!(
        h.errors.is_empty(),
        "{what}: {} appends failed: {:?}",
        h.errors.len(),
        h.errors
    );
    // Acknowledgements from a second before the cut, and the stop itself (a
    // writer stuck at the end counts).
    let mut times: Vec<Instant> = h
        .times
        .iter()
        .copied()
        .filter(|t| *t + Duration::from_secs(1) >= cut_at)
        .collect();
    times.push(stopped);
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let resumed = times
        .iter()
        .find(|t| **t >= healed)
        .map_or(Duration::MAX, |t| *t - healed);
    let acked = h.acked.len();
    let mut log = Log::connect(&c.eps).unwrap();
    for (a, want) in &h.acked {
        match log.read(*a) {
            Ok(Slot::Data { data, .. }) => assert_eq!(&data, want, "{what}: address {a}"),
            other => panic!("{what}: acknowledged address {a} reads as {other:?}"),
        }
    }
    eprintln!(
        "{what}: {acked} appends acknowledged and read back; longest gap {gap:?}; first ack {resumed:?} after the heal"
    );
    Outcome {
        gap,
        resumed,
        acked,
    }
}

/// Checks what a cut cost against the bounds this file states: the longest
/// gap between acknowledgements under `gap`, the first acknowledgement within
/// `RESUME` of the heal, and enough appends for the gap to mean something.
fn within(o: &Outcome, gap: Duration, what: &str) {
    assert!(
        o.acked > 100,
        "{what}: only {} appends acknowledged",
        o.acked
    );
    assert!(o.gap < gap, "{what}: appends stalled for {:?}", o.gap);
    assert!(
        o.resumed < RESUME,
        "{what}: the first append after the heal took {:?}",
        o.resumed
    );
}

/// Once a cut heals, appends resume within this (measured: under 0.7 s in
/// every case, 20 ms unless the sequencer was cut inbound).
const RESUME: Duration = Duration::from_secs(2);

/// A storage unit of the layout cut off in both directions for 5 s: the first
/// client whose write times out (1 s) probes it (1 s more), takes it out and
/// seals; the spare joins with the active sequencer's next repair; after the
/// heal appends go on. Goal 1 s; measured 2.15 s (two client timeouts);
/// bound 4 s.
#[test]
fn a_unit_cut_off_loses_nothing_acknowledged() {
    let dir = data_dir();
    let Some(c) = cluster(dir.path()) else {
        return;
    };
    let p = c.layout();
    let victim = NetCluster::node_of(p.segments.last().unwrap().stripes[0][0]);
    let hold = Duration::from_secs(5);
    let o = through_a_cut(&c, victim, Dir::Both, hold, "unit, both ways", || {
        wait_until("the unit taken out", hold, || {
            let chains = c.layout().segments.last().unwrap().stripes.clone();
            !chains
                .iter()
                .flatten()
                .any(|u| NetCluster::node_of(*u) == victim)
        })
    });
    within(&o, Duration::from_secs(4), "unit, both ways");
}

/// The active sequencer cut off in both directions for 6 s: it cannot renew
/// its lease, the lease lapses (3 s TTL, then 1 s grace) and the standby
/// (asking every tenth of the TTL) takes over. Goal: TTL + 1 s = 4 s; measured
/// 3.3–3.4 s (4.45 s while the standby asked every quarter TTL); bound 6 s.
///
/// Then the new one cut off inbound only for 6 s: it still renews its lease
/// over its own connections, and its self-probe reaches it over loopback, so
/// it cannot see the cut. The clients whose token requests time out report it
/// to the standby, which probes the active sequencer itself and, failing
/// twice, releases its lease and takes over (docs/locks.md). Before the
/// reports, appends waited for the whole cut (6.65 s); measured 3.35 s; bound
/// 6 s. Cutting only loopback ports (`partition.rs`) hides the difference.
#[test]
fn a_sequencer_cut_off_hands_over_its_lease() {
    let dir = data_dir();
    let Some(c) = cluster(dir.path()) else {
        return;
    };
    let first = NetCluster::node_of(c.layout().sequencer);
    let hold = Duration::from_secs(6);
    let what = "sequencer, both ways";
    let o = through_a_cut(&c, first, Dir::Both, hold, what, || {
        wait_until("the standby taking over", hold, || {
            NetCluster::node_of(c.layout().sequencer) != first
        })
    });
    within(&o, Duration::from_secs(6), what);
    let second = NetCluster::node_of(c.layout().sequencer);
    let what = "sequencer, inbound only";
    let o = through_a_cut(&c, second, Dir::Inbound, hold, what, || {
        wait_until("the standby taking over", hold, || {
            NetCluster::node_of(c.layout().sequencer) != second
        })
    });
    within(&o, Duration::from_secs(6), what);
}

/// The consensus leader cut off in both directions, then the new leader cut
/// off inbound only (it still sends, it hears nothing), then the next one
/// outbound only (it hears everything, nothing it sends arrives), 5 s each:
/// each time another node leads before the heal, and appends (whose sequencer
/// renews its lease through the group) go on. Goal 2 s; measured: both ways
/// 1.2 s (2.4 s while the consensus client retried the node that had just
/// timed out: the sequencer's lease renewal waited out two timeouts and the
/// lease changed hands), inbound only 1.2 s, outbound only 0.1 s; bound 4 s.
#[test]
fn a_consensus_leader_cut_off_is_replaced() {
    let dir = data_dir();
    let Some(c) = cluster(dir.path()) else {
        return;
    };
    let hold = Duration::from_secs(5);
    for (dir, what) in [
        (Dir::Both, "consensus leader, both ways"),
        (Dir::Inbound, "consensus leader, inbound only"),
        (Dir::Outbound, "consensus leader, outbound only"),
    ] {
        let mut leader = None;
        wait_until("a single consensus leader", Duration::from_secs(10), || {
            leader = c.leader();
            leader.is_some()
        });
        let victim = leader.unwrap();
        let o = through_a_cut(&c, victim, dir, hold, what, || {
            wait_until("another leader", hold, || {
                c.leader().is_some_and(|n| n != victim)
            })
        });
        within(&o, Duration::from_secs(4), what);
    }
}
