//! Three real `trex node consensus` processes on loopback: bootstrap a layout,
//! SIGKILL the leader, elect a new one without losing anything committed,
//! restart the killed node and watch it catch up; garbage on a consensus port
//! disturbs nobody.

mod common;

use common::{free_port, group, group_with};
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trex_consensus::client::Submit;
use trex_consensus::sm::{LayoutSegment, Op, Projection, Role};

#[test]
fn the_group_survives_its_leader_and_the_leader_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = group(dir.path());
    g.wait_leader(Duration::from_secs(10));
    let mut c = g.client();
    for id in 1..=4 {
        let op = Op::Register {
            id,
            role: Role::Storage,
            addr: format!("127.0.0.1:{}", 7420 + id),
        };
        c.submit_ok(&op).unwrap();
    }
    c.submit_ok(&Op::InitLayout {
        stripes: 2,
        replicas: 2,
    })
    .unwrap();
    let (_, p) = c.layout().unwrap();
    let p = p.expect("layout installed");
    assert_eq!(p.epoch, 1);
    assert_eq!(p.segments[0].stripes, vec![vec![1, 2], vec![3, 4]]);

    // Kill the leader: a new one commits within a few election timeouts.
    let old = g.wait_leader(Duration::from_secs(5));
    let before = g.status(old).unwrap().commit;
    g.kill(old);
    let t0 = Instant::now();
    let new = g.wait_leader(Duration::from_secs(10));
    assert_ne!(new, old);
    let next = Projection {
        epoch: 2,
        sequencer: 0,
        segments: vec![LayoutSegment {
            start: 0,
            end: u64::MAX,
            stripes: vec![vec![1], vec![3, 4]],
        }],
    };
    c.submit_ok(&Op::Install {
        expected_epoch: 1,
        projection: next.clone(),
    })
    .unwrap();
    eprintln!(
        "new leader {} committed {:?} after the kill",
        new + 1,
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Nothing committed is lost; the compare-and-set refuses a stale epoch.
    let (n, cur) = c.layout().unwrap();
    assert_eq!((n, cur), (2, Some(next.clone())));
    let stale = c.submit_ok(&Op::Install {
        expected_epoch: 1,
        projection: next,
    });
    let e = stale.unwrap_err();
    assert!(
        e.is_refused(trex_wire::ops::Refusal::EpochMismatch)
            && e.to_string().contains("epoch is 2"),
        "a stale install is refused: {e}"
    );
    assert_eq!(c.members().unwrap().len(), 4);
    assert!(g.status(new).unwrap().commit > before);

    // Restart the killed node: it catches up with the others.
    g.start_node(old);
    let t0 = Instant::now();
    loop {
        let target = g.status(new).unwrap().applied;
        if g.status(old)
            .is_some_and(|s| s.applied >= target && s.leader == new as u64 + 1)
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "restarted node did not catch up: {:?}",
            g.status(old)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Garbage to a consensus port disturbs nobody.
    for i in 0..3 {
        if let Ok(mut s) = TcpStream::connect(&g.addrs[i]) {
            let _ = s.write_all(b"\x00\xffnot a frame at all, just noise\r\n");
        }
        if let Ok(mut s) = TcpStream::connect(&g.addrs[i]) {
            // A well-formed peer frame from a node that is not a member.
            let mut f = Vec::new();
            let st = trex_wire::begin_frame(&mut f);
            trex_wire::consensus::encode_peer(
                &mut f,
                99,
                &trex_wire::consensus::Msg::CatchUp { from: 0 },
            );
            trex_wire::finish_frame(
                &mut f,
                st,
                trex_wire::Header {
                    opcode: 0x20,
                    ..Default::default()
                },
            );
            let _ = s.write_all(&f);
        }
    }
    let leader = g.wait_leader(Duration::from_secs(5));
    assert_eq!(leader, new, "garbage does not cost the leader its place");
    c.submit_ok(&Op::Noop).unwrap();
}

#[test]
fn a_storage_unit_with_endpoints_registers_itself() {
    let dir = tempfile::tempdir().unwrap();
    let g = group(dir.path());
    g.wait_leader(Duration::from_secs(10));
    let port = free_port();
    let mut unit = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args([
            "node",
            "storage",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("unit"))
        .args(["--endpoints", &g.addrs.join(","), "--id", "77"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut c = g.client();
    let t0 = Instant::now();
    let found = loop {
        let m = c.members().unwrap();
        if let Some(m) = m.get(&77) {
            break m.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the unit never registered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = unit.kill();
    let _ = unit.wait();
    assert_eq!(
        (found.role, found.addr),
        (Role::Storage, format!("127.0.0.1:{port}"))
    );
}

/// Whether the server still holds `s` open and has sent nothing on it.
fn still_open(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A flood of silent connections at a consensus node's connection limit never
/// closes the links between the nodes. Each link names itself with a `hello`
/// peer message as it opens; a node makes room by closing the flood's own
/// connections. (Before, the link between the two followers, idle since it
/// opened, was the first one closed, and a node that then needed it found it
/// gone or was refused at the limit.)
#[test]
fn a_flood_of_idle_connections_never_cuts_the_links_between_consensus_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let g = group_with(dir.path(), &["--max-connections", "8"]);
    g.wait_leader(Duration::from_secs(10));
    // Long enough that the followers' link to each other has been idle for
    // more than the second after which an idle connection may be closed.
    std::thread::sleep(Duration::from_millis(1_500));
    let until = Instant::now() + Duration::from_secs(4);
    let mut flood: Vec<Vec<TcpStream>> = (0..3).map(|_| Vec::new()).collect();
    while Instant::now() < until {
        for (conns, addr) in flood.iter_mut().zip(&g.addrs) {
            conns.retain(still_open);
            while conns.len() < 12 {
                match TcpStream::connect(addr) {
                    Ok(s) => conns.push(s),
                    Err(_) => break,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(flood);
    let logs: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(g.log_path(i)).unwrap_or_default())
        .collect();
    assert!(
        logs.iter().any(|l| l.contains("to make room at the limit")),
        "the flood never filled a node: the test proves nothing\n{logs:#?}"
    );
    for (i, log) in logs.iter().enumerate() {
        assert!(
            !log.contains("lost connection to peer"),
            "node {} lost a peer link to the flood:\n{log}",
            i + 1
        );
    }
}
