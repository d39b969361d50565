//! Real processes: three consensus nodes, two storage units, two sequencers.
//! The active sequencer is stopped past its lease (SIGSTOP), the standby takes
//! over, and when the old one resumes (SIGCONT) no token it hands out is
//! accepted by a storage unit. Then the same with SIGKILL. Also `trex lock`.

mod common;

use common::{free_port, group, Group, T};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trex_consensus::client::Submit;
use trex_consensus::sm::Op;
use trex_net::unit_client::{UnitApi, UnitClient};
use trex_wire::{Status, TokenReply, WriteOp};

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trex")
}

struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: resuming our own child before killing it (it may be stopped).
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn token(addr: &str, count: u32) -> Option<(u64, u64)> {
    let mut c = UnitClient::connect(addr, T).ok()?;
    let (_, body) = c
        .call(trex_wire::Opcode::Token, 0, &|b| {
            trex_wire::encode_token_request(b, count)
        })
        .ok()?;
    match trex_wire::decode_token_reply(&body).ok()? {
        TokenReply::Granted { epoch, first } => Some((epoch, first)),
        TokenReply::NotSequencer { .. } => None,
    }
}

/// Writes `addr` to both units of the single chain, head first, at `epoch`;
/// returns whether the head accepted it.
fn write_chain(units: &[String], epoch: u64, addr: u64) -> bool {
    let data = format!("entry {addr}").into_bytes();
    let mut ok = true;
    for u in units {
        let mut c = UnitClient::connect(u, T).unwrap();
        match c.write(
            epoch,
            &[WriteOp {
                addr,
                writer: 1,
                seq: addr,
                data: &data,
            }],
        ) {
            Ok(st) => ok &= st == vec![Status::Ok],
            Err(_) => ok = false,
        }
    }
    ok
}

fn wait_token(addr: &str, within: Duration) -> (u64, u64) {
    let t0 = Instant::now();
    loop {
        if let Some(t) = token(addr, 1) {
            return t;
        }
        assert!(
            t0.elapsed() < within,
            "{addr} did not start serving within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stopped_or_killed_sequencer_never_gets_a_token_accepted_after_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let g: Group = group(dir.path());
    g.wait_leader(Duration::from_secs(10));
    let eps = g.addrs.join(",");
    let units: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let seqs: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut kids = Kids(Vec::new());
    for (i, u) in units.iter().enumerate() {
        let d = dir.path().join(format!("u{i}"));
        let id = (i + 1).to_string();
        kids.0.push(spawn(&[
            "node",
            "storage",
            "--listen",
            u,
            "--data-dir",
            d.to_str().unwrap(),
            "--endpoints",
            &eps,
            "--id",
            &id,
        ]));
    }
    let mut c = g.client();
    let t0 = Instant::now();
    while c.members().unwrap().len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "units did not register"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.submit_ok(&Op::InitLayout {
        stripes: 1,
        replicas: 2,
    })
    .unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let id = (11 + i).to_string();
        kids.0.push(spawn(&[
            "node",
            "sequencer",
            "--listen",
            s,
            "--endpoints",
            &eps,
            "--id",
            &id,
            "--ttl",
            "1s",
            "--safety-gap",
            "300ms",
        ]));
    }
    // One of them takes over; tokens from it are accepted.
    let t0 = Instant::now();
    let (active, (epoch1, _)) = loop {
        if let Some(t) = token(&seqs[0], 1) {
            break (0usize, t);
        }
        if let Some(t) = token(&seqs[1], 1) {
            break (1usize, t);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no sequencer started serving"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let standby = 1 - active;
    let mut written = Vec::new();
    for _ in 0..20 {
        let (e, a) = token(&seqs[active], 1).expect("the active sequencer serves");
        assert_eq!(e, epoch1);
        assert!(write_chain(&units, e, a), "a current token is accepted");
        written.push(a);
    }
    assert!(
        token(&seqs[standby], 1).is_none(),
        "the standby does not serve"
    );

    // SIGSTOP the active one past its lease: the standby takes over.
    let pid = kids.0[2 + active].id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let (epoch2, first2) = wait_token(&seqs[standby], Duration::from_secs(10));
    assert!(epoch2 > epoch1, "takeover installs a higher epoch");
    assert!(
        first2 > *written.iter().max().unwrap(),
        "the counter starts above every written address"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    for _ in 0..50 {
        if let Some((e, a)) = token(&seqs[active], 1) {
            assert!(
                !write_chain(&units, e, a),
                "a token from the resumed old sequencer was accepted"
            );
        }
    }
    for _ in 0..10 {
        let (e, a) = token(&seqs[standby], 1).unwrap();
        assert!(
            write_chain(&units, e, a),
            "the new sequencer's tokens are accepted"
        );
        written.push(a);
    }

    // SIGKILL the new active one: the other takes over again.
    let _ = kids.0[2 + standby].kill();
    let (epoch3, first3) = wait_token(&seqs[active], Duration::from_secs(10));
    assert!(epoch3 > epoch2);
    assert!(first3 > *written.iter().max().unwrap());
    assert!(write_chain(&units, epoch3, first3));
}

#[test]
fn trex_lock_refuses_a_held_lock_and_hands_it_on_with_a_higher_token() {
    let dir = tempfile::tempdir().unwrap();
    let g = group(dir.path());
    g.wait_leader(Duration::from_secs(10));
    let eps = g.addrs.join(",");
    let lock = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_trex"))
            .arg("lock")
            .arg(args[0])
            .args(["--endpoints", &eps])
            .args(&args[1..])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = lock(&["acquire", "jobs", "--ttl", "30s", "--holder", "alice"]);
    assert_eq!(code, Some(0));
    let token1: u64 = out
        .split("token ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (code, _, err) = lock(&["acquire", "jobs", "--ttl", "30s", "--holder", "bob"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("is held by \"alice\""),
        "a clear message: {err}"
    );
    let (code, _, _) = lock(&["release", "jobs", "--token", &token1.to_string()]);
    assert_eq!(code, Some(0));
    let (code, out, _) = lock(&["acquire", "jobs", "--ttl", "1s", "--holder", "bob"]);
    assert_eq!(code, Some(0));
    let token2: u64 = out
        .split("token ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        token2 > token1,
        "fencing token increases: {token1} -> {token2}"
    );
    // `lock run` waits for expiry plus grace, then runs with a higher token.
    let (code, _, err) = lock(&[
        "run",
        "jobs",
        "--ttl",
        "2s",
        "--",
        "sh",
        "-c",
        "test \"$TREX_LOCK_TOKEN\" -gt 0 && exit 7",
    ]);
    assert_eq!(
        code,
        Some(7),
        "the command's exit code is passed on ({err})"
    );
    assert!(err.contains("waiting for"), "it said it was waiting: {err}");
}
