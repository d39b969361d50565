//! The exit codes are a contract scripts rely on (src/error.rs): real `trex`
//! processes exit 0 when done, 1 when the operation is refused, 2 for usage
//! errors, 3 when a lease is lost, 4 when nothing answers in time. And
//! `trex --help` says so.

mod common;

use common::{free_port, group, UnitProcess};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished `trex` run left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `trex args` in `cwd` with none of the TREX_* variables set, killing it
/// if it runs for more than 20 s (no test here should come close).
fn trex(cwd: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TREX_ENDPOINTS")
        .env_remove("TREX_NODE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trex");
    // Drained on their own threads, so that a full pipe cannot stall it.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "trex {args:?} ran for more than 20 s; stderr: {}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Asserts that `trex args` exits with `code`; returns the run.
fn expect(cwd: &Path, code: i32, args: &[&str]) -> Run {
    let r = trex(cwd, args);
    assert_eq!(
        r.code,
        Some(code),
        "trex {args:?}\nstdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    r
}

/// The fencing token in a `trex lock acquire` line.
fn token(lease_line: &str) -> String {
    lease_line
        .split("token ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no token in {lease_line:?}"))
        .to_string()
}

#[test]
fn the_help_lists_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let r = expect(dir.path(), 0, &["--help"]);
    assert!(r.stdout.contains("Exit codes:"), "{}", r.stdout);
    for line in [
        "  0  done",
        "  1  the operation failed or was refused",
        "  2  usage: bad arguments or configuration",
        "  3  a lock's lease was lost",
        "  4  the cluster or a node did not answer in time",
    ] {
        assert!(r.stdout.contains(line), "missing {line:?} in {}", r.stdout);
    }
}

#[test]
fn usage_errors_exit_2_before_anything_is_contacted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nothing listens on `none`: a usage error must not wait for it.
    let none = format!("127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    expect(d, 2, &["members", "--bogus"]);
    let r = expect(
        d,
        2,
        &[
            "unit", "read", "0", "--raw", "--count", "2", "--node", &none,
        ],
    );
    assert!(r.stderr.contains("use --count 1"), "{}", r.stderr);
    let r = expect(
        d,
        2,
        &["members", "--endpoints", &format!("{none},nonsense")],
    );
    assert!(
        r.stderr
            .contains("\"nonsense\" in --endpoints is not HOST:PORT"),
        "{}",
        r.stderr
    );
    let r = expect(d, 2, &["unit", "info", "--node", "nonsense"]);
    assert!(r.stderr.contains("give one such as"), "{}", r.stderr);
    expect(d, 2, &["repair", "--replicas", "0", "--endpoints", &none]);
    expect(
        d,
        2,
        &["layout", "init", "--stripes", "0", "--endpoints", &none],
    );
    // A bad `trex up` creates nothing.
    let data = d.join("up-data");
    let data_arg = data.to_str().unwrap();
    expect(d, 2, &["up", "--consensus", "0", "--data-dir", data_arg]);
    assert!(!data.exists(), "trex up created {} anyway", data.display());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "usage errors took {:?}",
        t0.elapsed()
    );
}

#[test]
fn nothing_listening_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let none = format!("127.0.0.1:{}", free_port());
    let r = expect(
        d,
        4,
        &["members", "--endpoints", &none, "--timeout", "300ms"],
    );
    assert!(
        r.stderr.contains("no consensus leader answered"),
        "{}",
        r.stderr
    );
    expect(
        d,
        4,
        &[
            "endpoint",
            "status",
            "--endpoints",
            &none,
            "--timeout",
            "300ms",
        ],
    );
    let r = expect(
        d,
        4,
        &["unit", "info", "--node", &none, "--timeout", "300ms"],
    );
    assert!(r.stderr.contains("cannot connect"), "{}", r.stderr);
    expect(d, 4, &["token", "--node", &none]);
}

#[test]
fn a_standalone_unit_answers_0_and_refuses_with_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let unit = UnitProcess::start(&d.join("unit"), &[]);
    let node = unit.addr.as_str();
    expect(d, 0, &["unit", "write", "0", "hello", "--node", node]);
    let r = expect(d, 0, &["unit", "read", "0", "--raw", "--node", node]);
    assert_eq!(r.stdout, "hello");
    // Write-once: another value at the same address is refused.
    let r = expect(d, 1, &["unit", "write", "0", "other", "--node", node]);
    assert!(
        r.stderr.contains("already holds another value"),
        "{}",
        r.stderr
    );
    // Sealing at the current epoch again is refused, with the epoch to use.
    let r = expect(d, 1, &["unit", "seal", "0", "--node", node]);
    assert!(r.stderr.contains("seal at 1 or higher"), "{}", r.stderr);
    expect(d, 0, &["unit", "info", "--node", node]);
}

#[test]
fn refusals_exit_1_and_lost_leases_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let g = group(d);
    g.wait_leader(Duration::from_secs(10));
    let eps = g.addrs.join(",");
    let lock = |code: i32, args: &[&str]| {
        let mut all = vec!["lock"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--endpoints", &eps]);
        expect(d, code, &all)
    };
    let held = lock(0, &["acquire", "jobs", "--ttl", "30s", "--holder", "alice"]);
    let t = token(&held.stdout);
    // Refused: the lock is held; a lock never taken has no lease to show.
    lock(1, &["acquire", "jobs", "--holder", "bob"]);
    let r = lock(1, &["show", "never-taken"]);
    assert!(
        r.stderr.contains("trex lock acquire never-taken"),
        "{}",
        r.stderr
    );
    // A TTL the state machine will not take is a usage error.
    let r = lock(2, &["acquire", "other", "--ttl", "25h"]);
    assert!(r.stderr.contains("out of range"), "{}", r.stderr);
    // Releasing or renewing with a token that holds nothing: the lease is lost.
    lock(3, &["release", "jobs", "--token", "999"]);
    lock(3, &["release", "never-taken", "--token", "999"]);
    lock(0, &["release", "jobs", "--token", &t]);
    let r = lock(3, &["renew", "jobs", "--token", &t]);
    assert!(r.stderr.contains("acquire it"), "{}", r.stderr);
    // A released lock is forgotten (issue 14): showing it is a refusal.
    let r = lock(1, &["show", "jobs"]);
    assert!(r.stderr.contains("not held"), "{}", r.stderr);
    // A command that cannot start: refused, and the lock is free again at once.
    let run = [
        "lock",
        "run",
        "jobs",
        "--endpoints",
        &eps,
        "--",
        "/nonexistent/command",
    ];
    let r = expect(d, 1, &run);
    assert!(
        r.stderr.contains("cannot run /nonexistent/command"),
        "{}",
        r.stderr
    );
    lock(0, &["acquire", "jobs", "--holder", "carol"]);

    // The layout: refused without enough storage units, installed once there
    // is one, refused when asked again.
    let layout = |code: i32| {
        let args = ["layout", "init", "--stripes", "1", "--replicas", "1"];
        let mut all = args.to_vec();
        all.extend_from_slice(&["--endpoints", &eps]);
        expect(d, code, &all)
    };
    let r = layout(1);
    assert!(r.stderr.contains("start more units"), "{}", r.stderr);
    let _unit = UnitProcess::start(&d.join("unit"), &["--endpoints", &eps]);
    let t0 = Instant::now();
    while trex(
        d,
        &[
            "layout",
            "init",
            "--stripes",
            "1",
            "--replicas",
            "1",
            "--endpoints",
            &eps,
        ],
    )
    .code
        != Some(0)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the unit did not register within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = layout(1);
    assert!(r.stderr.contains("already installed"), "{}", r.stderr);
}

/// Issue 12: `trex tail | head -2` (and `trex read … | head`) end quietly when
/// the reader goes away, like any Unix filter: killed by SIGPIPE, no panic, no
/// exit 134 (abort).
#[test]
fn a_closed_pipe_ends_a_reader_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::trex_up(
        dir.path(),
        &["--stripes", "1", "--replicas", "1", "--units", "1"],
    );
    // More than a pipe buffer of output (64 KiB): 600 lines of 200 bytes.
    let line = "x".repeat(200);
    let input: String = (0..600).map(|_| format!("{line}\n")).collect();
    let mut append = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["append", "-", "--endpoints", &cluster.eps])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut append.stdin.take().unwrap(), input.as_bytes()).unwrap();
    assert!(append.wait().unwrap().success());
    for args in [vec!["tail"], vec!["read", "0", "--count", "600"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
            .args(&args)
            .args(["--endpoints", &cluster.eps])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read two lines, then close the pipe, as `head -2` does.
        let mut out = child.stdout.take().unwrap();
        let mut first = vec![0u8; 512];
        let n = out.read(&mut first).unwrap();
        assert!(n > 0, "trex {args:?} printed nothing");
        drop(out);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal() == Some(libc::SIGPIPE) || status.code() == Some(0),
            "trex {args:?} on a closed pipe: {status:?}: {err}"
        );
        assert!(!err.contains("panicked"), "trex {args:?}: {err}");
    }
}

/// Issue 12: the `--timeout` a user sets bounds the whole command (it used to
/// wait three times a call timeout, at least 3 s, for a leader); an endpoint
/// that does not resolve is a usage error at once (it used to be retried for
/// 6 s); `trex status` asks every unit at once (it used to wait for each
/// stopped unit in turn).
#[test]
fn the_timeout_a_user_sets_applies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One consensus node of three: it answers, but no leader can be elected.
    let ports: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = ports.join(",");
    let mut node = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["node", "consensus", "--id", "1", "--listen", &ports[0]])
        .args(["--peers", &peers, "--data-dir"])
        .arg(d.join("c1"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(&ports[0]).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "node did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    let r = expect(
        d,
        4,
        &["members", "--endpoints", &ports[0], "--timeout", "500ms"],
    );
    let took = t0.elapsed();
    let _ = node.kill();
    let _ = node.wait();
    assert!(
        took < Duration::from_millis(1_500),
        "--timeout 500ms took {took:?}: {}",
        r.stderr
    );
    let t0 = Instant::now();
    let r = expect(
        d,
        2,
        &["members", "--endpoints", "no-such-host.invalid:7400"],
    );
    assert!(r.stderr.contains("cannot resolve"), "{}", r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    // Two stopped units: `trex status --timeout 3s` waits for them once.
    let cluster = common::trex_up(d.join("up").as_path(), &[]);
    let base = cluster.base;
    let stopped: Vec<i32> = [20, 21]
        .iter()
        .map(|o| {
            common::kill(
                &format!("storage --listen 127.0.0.1:{} ", base + o),
                libc::SIGSTOP,
            )
        })
        .collect();
    let t0 = Instant::now();
    let r = expect(
        d,
        0,
        &["status", "--endpoints", &cluster.eps, "--timeout", "3s"],
    );
    let took = t0.elapsed();
    for pid in stopped {
        // SAFETY: continuing our own cluster's processes.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    assert!(took < Duration::from_millis(2_500), "status took {took:?}");
    assert!(r.stdout.contains("unreachable"), "{}", r.stdout);
}
