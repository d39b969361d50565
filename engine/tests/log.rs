//! The shared log end to end on real processes: `trex up`, several clients
//! appending while the active sequencer is stopped past its lease; every
//! acknowledged append reads back with its bytes at its address, no address
//! holds two values, holes stay holes; then the whole cluster restarts and
//! everything reads back again.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trex_engine::log::{Log, Slot};

/// A base port with the 24 ports `trex up` uses free.
fn free_base() -> u16 {
    // Tests in this file run in parallel in one process: never hand out the
    // same range twice.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = (std::process::id() as u16)
        .wrapping_add(NEXT.fetch_add(101, std::sync::atomic::Ordering::SeqCst));
    for k in 0..200u16 {
        let base = 20_000 + (seed.wrapping_mul(7).wrapping_add(k * 37)) % 30_000;
        if (0..24).all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range for trex up");
}

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

fn up(dir: &Path, base: u16) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["up", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let ready = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("cluster is up"));
    let cluster = Up(child); // stopped (and waited for) on drop, whatever happens
    assert!(ready, "trex up did not come up; see {}/logs", dir.display());
    cluster
}

/// Acknowledged appends by address.
type Acked = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

/// Starts `clients` threads, each appending `batches` batches of `per_batch`
/// entries, recording every acknowledged address (and failing on a repeat).
fn appenders(
    eps: &str,
    clients: usize,
    batches: usize,
    per_batch: usize,
    acked: &Acked,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (eps, acked) = (eps.to_string(), acked.clone());
            std::thread::spawn(move || {
                let mut log = Log::connect(&eps).unwrap();
                for i in 0..batches {
                    let entries: Vec<Vec<u8>> = (0..per_batch)
                        .map(|k| format!("client {c} batch {i} entry {k}").into_bytes())
                        .collect();
                    let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_slice()).collect();
                    let addrs = log
                        .append_batch(&refs)
                        .expect("every append is acknowledged, faults or not");
                    let mut a = acked.lock().unwrap();
                    for (addr, e) in addrs.into_iter().zip(entries) {
                        assert!(
                            a.insert(addr, e).is_none(),
                            "address {addr} acknowledged twice"
                        );
                    }
                    drop(a);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect()
}

/// A free base port for `trex up` and the consensus endpoints it will use.
fn ports() -> (u16, String) {
    let base = free_base();
    (
        base,
        format!(
            "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            base,
            base + 1,
            base + 2
        ),
    )
}

fn pid_of(pattern: &str) -> Option<i32> {
    let out = Command::new("pgrep").args(["-f", pattern]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn acknowledged_appends_survive_a_sequencer_pause_and_a_full_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (base, eps) = ports();
    let cluster = up(dir.path(), base);
    let acked: Acked = Arc::default();
    let workers = appenders(&eps, 3, 60, 10, &acked);
    // Stop the active sequencer past its lease while the clients append.
    std::thread::sleep(Duration::from_millis(300));
    let mut log = Log::connect(&eps).unwrap();
    let seq_port = log.projection().sequencer;
    let pid =
        pid_of(&format!("sequencer --listen 127.0.0.1:{seq_port}")).expect("sequencer process");
    // SAFETY: signalling a process of our own cluster.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let t0 = Instant::now();
    for w in workers {
        w.join().expect("a client failed");
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 1800);
    eprintln!(
        "1800 appends acknowledged in {:?} across a sequencer takeover",
        t0.elapsed()
    );
    log.refresh().unwrap();
    assert_ne!(
        log.projection().sequencer,
        seq_port,
        "the standby took over"
    );

    let check = |log: &mut Log| {
        let end = log.check().unwrap();
        let slots = log.read_range(0, end).unwrap();
        let mut holes = Vec::new();
        for (a, s) in slots.iter().enumerate() {
            let a = a as u64;
            match (s, acked.get(&a)) {
                (Slot::Data { data, .. }, Some(want)) => {
                    assert_eq!(data, want, "address {a} has the wrong bytes")
                }
                (Slot::Data { .. }, None) => {
                    panic!("address {a} holds data nobody was told was appended")
                }
                (_, Some(_)) => panic!("acknowledged address {a} reads as {s:?}"),
                (Slot::Hole | Slot::Unwritten, None) => holes.push(a),
                (Slot::Trimmed, None) => panic!("nothing was trimmed"),
            }
        }
        holes
    };
    let holes = check(&mut log);
    // Fill the holes; a filled hole stays a hole.
    for a in &holes {
        assert_eq!(log.fill(*a).unwrap(), Slot::Hole, "address {a}");
    }
    drop(cluster); // Ctrl-C: the whole cluster stops
    let _cluster = up(dir.path(), base);
    let mut log = Log::connect(&eps).unwrap();
    let after = check(&mut log);
    assert_eq!(after, holes, "the same holes after a restart");
    for a in &after {
        assert_eq!(
            log.read(*a).unwrap(),
            Slot::Hole,
            "filled address {a} is still junk"
        );
    }
    let next = log.append(b"after restart").unwrap();
    assert!(
        next > *acked.keys().max().unwrap(),
        "the restarted sequencer starts past every written address"
    );
}

#[test]
fn appends_go_on_when_a_storage_unit_is_killed_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (base, eps) = ports();
    let _cluster = up(dir.path(), base);
    let acked: Acked = Arc::default();
    let workers = appenders(&eps, 2, 80, 8, &acked);
    // A client whose layout goes stale during the test.
    let mut stale = Log::connect(&eps).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // Kill the tail of stripe 0 (the second unit) with SIGKILL.
    let victim = base + 21;
    let pid = pid_of(&format!("storage --listen 127.0.0.1:{victim}")).expect("unit process");
    // SAFETY: signalling a process of our own cluster.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for w in workers {
        w.join().expect("a client failed");
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 1280);
    let mut log = Log::connect(&eps).unwrap();
    let p = log.projection().clone();
    assert!(
        p.segments
            .iter()
            .all(|s| s.stripes.iter().all(|c| !c.contains(&u64::from(victim)))),
        "the dead unit was taken out of the layout: {p:?}"
    );
    for (a, want) in &acked {
        match log.read(*a).unwrap() {
            Slot::Data { data, .. } => assert_eq!(&data, want, "address {a}"),
            other => panic!("acknowledged address {a} reads as {other:?}"),
        }
    }
    // The stale client is never told "unwritten" for an address the current
    // layout has as written: it refreshes on sealed-epoch or a dead unit.
    let old_epoch = stale.projection().epoch;
    assert!(old_epoch < p.epoch, "the client's layout really is stale");
    for (a, want) in &acked {
        match stale.read(*a).unwrap() {
            Slot::Data { data, .. } => assert_eq!(&data, want, "stale client, address {a}"),
            other => {
                panic!("a client with a stale layout read {other:?} at acknowledged address {a}")
            }
        }
    }
    // No entry shows up twice: every address holding data was acknowledged for it.
    let end = log.check().unwrap();
    for (a, s) in log.read_range(0, end).unwrap().into_iter().enumerate() {
        if let Slot::Data { data, .. } = s {
            assert_eq!(
                acked.get(&(a as u64)),
                Some(&data),
                "address {a} holds an entry that was not acknowledged there"
            );
        }
    }
}
