//! The load generator refuses nonsense before it contacts anything: each bad
//! command line exits 2 (as clap's own usage errors do) with a message naming
//! the argument, and the cluster it names sees no connection.
//!
//! The runs against a real cluster are in `engine/cli/tests/bench.rs`.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `trex-bench ARGS` (at most 20 s); returns its exit code and standard
/// error.
fn bench(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trex-bench"));
    cmd.args(args)
        .env_remove("TREX_ENDPOINTS")
        .env_remove("TREX_CLUSTER_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn trex-bench");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trex-bench {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn nonsense_is_a_usage_error_before_anything_connects() {
    // A "cluster" that counts who connects: nothing may.
    let spy = TcpListener::bind("127.0.0.1:0").unwrap();
    spy.set_nonblocking(true).unwrap();
    let eps = spy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("plot.png");
    let nowhere = dir.path().join("missing/dir/log.hlog");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["append", "--rate", "0"], "--rate"),
        (vec!["append", "--rate=-3"], "--rate"),
        (vec!["append", "--size", "0"], "--size"),
        (vec!["append", "--size", "5MiB"], "--size"),
        (vec!["append", "--count", "0"], "--count"),
        (vec!["append", "--count", "2.5"], "--count"),
        (vec!["append", "--duration", "0s"], "--duration"),
        (vec!["lock", "--clients", "0"], "--clients"),
        (
            vec!["append", "--depth", "64", "--count", "100"],
            "--count 128",
        ),
        (
            vec!["tokens", "--batch", "10", "--count", "15"],
            "--count 20",
        ),
        (
            vec!["tokens", "--rate", "1000", "--depth", "8"],
            "--depth 8",
        ),
        (
            vec!["unit-write", "--rate", "1000", "--depth", "4"],
            "--depth 4",
        ),
        (
            vec!["append", "--rate", "1000", "--depth", "8", "--batch", "4"],
            "--batch",
        ),
        (
            vec!["append", "--depth", "8", "--batch", "16"],
            "--batch 16",
        ),
        (vec!["append", "--plot", png.to_str().unwrap()], "--plot"),
        (
            vec!["consensus", "--histogram-log", nowhere.to_str().unwrap()],
            "--histogram-log",
        ),
        (vec!["tokens", "--sequencer", "nonsense"], "--sequencer"),
        (vec!["unit-write", "--node", "nonsense"], "--node"),
    ];
    for (args, names) in &cases {
        let mut args = args.clone();
        if args[0] != "unit-write" && !args.contains(&"--sequencer") {
            args.extend(["--endpoints", &eps]);
        }
        let (code, err) = bench(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: exit {code:?}, stderr: {err}");
        assert!(
            err.contains("error:") && err.contains(names),
            "{args:?}: the message should name {names:?}: {err}"
        );
    }
    let (code, err) = bench(&["append", "--endpoints", "127.0.0.1:7400,nonsense"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("\"nonsense\"") && err.contains("--endpoints"),
        "{err}"
    );
    // The endpoint fallback is the CLI's: TREX_ENDPOINTS when no flag, checked
    // the same way.
    let (code, err) = bench(&["lock"], &[("TREX_ENDPOINTS", "also-nonsense")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TREX_ENDPOINTS"), "{err}");
    assert!(
        matches!(spy.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a refused command line connected to the cluster"
    );
}

#[test]
fn a_cluster_that_is_not_there_is_a_failure_not_a_usage_error() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let eps = format!("127.0.0.1:{port}");
    let (code, err) = bench(
        &[
            "append",
            "--endpoints",
            &eps,
            "--clients",
            "1",
            "--count",
            "64",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&eps) && err.contains("trex status"), "{err}");
}

#[test]
fn the_help_says_which_loop_a_run_is() {
    let out = Command::new(env!("CARGO_BIN_EXE_trex-bench"))
        .args(["append", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("Open loop") && help.contains("closed loop"),
        "{help}"
    );
}
