//! Issue 10, case 7 on real processes (the part that needs no root): a leader
//! that hears no quorum steps down. Both followers of a three-node group are
//! stopped (SIGSTOP): the leader can still write to their sockets for a while
//! but hears nothing back. Before check-quorum it went on calling itself
//! leader indefinitely; now it steps down within about one election timeout
//! (200 ms here) and names no leader, and once the followers resume, the group
//! elects a leader and commits. (The one-way cut itself — the followers hear
//! the leader but it hears nothing — is the simulator's `--deaf-leader`
//! scenario; a netns/nft test bed runs it on real links.)

mod common;

use common::group;
use std::time::{Duration, Instant};
use trex_consensus::client::Submit;
use trex_consensus::sm::Op;

/// From stopping the followers to the leader stepping down.
const STEP_DOWN_BOUND: Duration = Duration::from_secs(2);

#[test]
fn a_leader_that_hears_no_quorum_steps_down_and_the_group_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let g = group(dir.path());
    let leader = g.wait_leader(Duration::from_secs(10));
    let mut c = g.client();
    c.submit_ok(&Op::Noop).unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let signal = |g: &common::Group, i: usize, sig: i32| {
        let pid = g.procs[i].as_ref().unwrap().id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, sig) };
    };
    for &f in &followers {
        signal(&g, f, libc::SIGSTOP);
    }
    let t0 = Instant::now();
    loop {
        let s = g.status(leader).expect("the leader still answers status");
        if !s.leading {
            assert_eq!(s.leader, 0, "it names no leader: {s:?}");
            break;
        }
        assert!(
            t0.elapsed() < STEP_DOWN_BOUND,
            "node {} still leads {:?} after its followers stopped: {s:?}",
            leader + 1,
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "the leader stepped down {:?} after it stopped hearing a quorum",
        t0.elapsed()
    );
    // Still no quorum: nobody leads while the followers are stopped.
    std::thread::sleep(Duration::from_millis(600));
    assert!(!g.status(leader).unwrap().leading);
    for &f in &followers {
        signal(&g, f, libc::SIGCONT);
    }
    let t1 = Instant::now();
    g.wait_leader(Duration::from_secs(10));
    c.submit_ok(&Op::Noop).unwrap();
    eprintln!(
        "a leader committed {:?} after the followers resumed",
        t1.elapsed()
    );
}
