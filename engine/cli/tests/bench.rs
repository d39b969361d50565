//! `trex-bench` against a real `trex up` cluster: a short open-loop run with a
//! warm-up and a count, checked through its JSON summary, its HdrHistogram
//! interval log (read back with the hdrhistogram crate) and its SVG plot; the
//! workloads leave nothing behind (no member, no held lock), Ctrl-C prints the
//! summary, and the endpoint fallback is the CLI's.
//!
//! The binary is `trex-bench`, built beside `trex` by `cargo test --workspace`
//! (its own argument tests are in `bench/tests/args.rs`).

mod common;

use base64::Engine as _;
use common::{trex_cli, trex_up};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `trex-bench` binary next to the `trex` under test.
fn bench_exe() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_trex")).with_file_name("trex-bench");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p trex-bench`; `cargo test --workspace` builds it)",
        p.display()
    );
    p
}

/// Starts `trex-bench ARGS` with the given environment (and no other TREX_*
/// variables), its output piped.
fn spawn_bench(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(bench_exe());
    cmd.args(args)
        .env_remove("TREX_ENDPOINTS")
        .env_remove("TREX_CLUSTER_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn trex-bench")
}

/// Waits for `child` (killing it after `within`); returns its exit code,
/// standard output and standard error.
fn finish(mut child: Child, within: Duration) -> (Option<i32>, String, String) {
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let t0 = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "trex-bench did not finish within {within:?}; stderr: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, out.join().unwrap(), err.join().unwrap())
}

fn run_bench(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    finish(spawn_bench(args, env), Duration::from_secs(90))
}

/// The cluster's members as (id, role, address), without the times that move.
fn members(eps: &str) -> BTreeSet<(u64, String, String)> {
    let (code, out, err) = trex_cli(eps, &["members", "-w", "json"], Duration::from_secs(20));
    assert_eq!(code, Some(0), "trex members: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
                m["addr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The histograms of an interval log, each read back with the crate's reader.
fn read_interval_log(path: &Path) -> Vec<Histogram<u64>> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(&bytes) {
        match entry.unwrap_or_else(|e| panic!("{}: unparsable: {e:?}", path.display())) {
            LogEntry::Interval(ilh) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(ilh.encoded_histogram())
                    .unwrap();
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut raw.as_slice())
                    .unwrap();
                assert!(ilh.duration() > Duration::ZERO);
                out.push(h);
            }
            LogEntry::StartTime(_) | LogEntry::BaseTime(_) => {}
        }
    }
    out
}

#[test]
fn an_open_loop_run_reports_exactly_its_count_with_a_histogram_log_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let c = trex_up(&dir.path().join("up"), &[]);
    let json = dir.path().join("summary.json");
    let hlog = dir.path().join("latency.hlog");
    let svg = dir.path().join("latency.svg");
    let before = members(&c.eps);

    // 300 appends at 150/s after a 0.5 s warm-up: about 2.5 s.
    let (code, out, err) = run_bench(
        &[
            "append",
            "--endpoints",
            &c.eps,
            "--size",
            "100",
            "--clients",
            "2",
            "--batch",
            "1",
            "--rate",
            "150",
            "--count",
            "300",
            "--warmup",
            "500ms",
            "-w",
            "json",
            "--json",
            json.to_str().unwrap(),
            "--histogram-log",
            hlog.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    let s: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(s, file, "-w json and --json write the same summary");
    assert_eq!(s["workload"], "append");
    assert_eq!(s["mode"], "open-loop");
    assert_eq!(s["rate"].as_f64(), Some(150.0));
    assert_eq!(s["ops"].as_u64(), Some(300), "{s}");
    assert_eq!(s["requests"].as_u64(), Some(300), "{s}");
    assert_eq!(s["errors"].as_u64(), Some(0), "{s}");
    assert_eq!(s["missed"].as_u64(), Some(0), "{s}");
    assert_eq!(s["interrupted"], false);
    // 300 requests scheduled at 150/s span 2 s; the warm-up is not in it.
    let secs = s["seconds"].as_f64().unwrap();
    assert!((1.9..10.0).contains(&secs), "measured {secs} s: {s}");
    let l = &s["latency_us"];
    let p: Vec<u64> = ["min", "p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| l[k].as_u64().unwrap())
        .collect();
    assert!(p[0] > 0, "latencies are positive: {l}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles in order: {l}"
    );

    // The interval log parses back, and holds exactly the measured requests.
    let hists = read_interval_log(&hlog);
    assert!(
        hists.len() >= 2,
        "one histogram per second: {}",
        hists.len()
    );
    let total: u64 = hists.iter().map(Histogram::len).sum();
    assert_eq!(total, 300, "the log holds every measured request, once");
    let max = hists.iter().map(Histogram::max).max().unwrap();
    assert_eq!(max, p[5], "the log's maximum is the summary's");

    let plot = std::fs::read_to_string(&svg).unwrap();
    let head = plot.trim_start();
    assert!(
        head.starts_with("<?xml") || head.starts_with("<svg"),
        "{plot}"
    );
    assert!(plot.contains("<svg") && plot.trim_end().ends_with("</svg>"));
    assert!(
        plot.contains("<polyline") || plot.contains("<path"),
        "{plot}"
    );

    // The consensus workload registers nothing: the members are as they were.
    let (code, out, err) = run_bench(
        &[
            "consensus",
            "--endpoints",
            &c.eps,
            "--clients",
            "2",
            "--rate",
            "100",
            "--count",
            "50",
            "--warmup",
            "0s",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("50 ops"), "{out}");
    assert_eq!(members(&c.eps), before, "the benchmark left members behind");

    // Tokens find the active sequencer through the consensus group, with the
    // endpoints from TREX_ENDPOINTS (no --endpoints, no --sequencer), closed
    // loop with pipelined windows.
    let (code, out, err) = run_bench(
        &[
            "tokens",
            "--clients",
            "2",
            "--depth",
            "8",
            "--batch",
            "4",
            "--count",
            "4000",
            "--warmup",
            "0s",
            "-w",
            "json",
        ],
        &[("TREX_ENDPOINTS", &c.eps)],
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["mode"], "closed-loop");
    assert_eq!(t["ops"].as_u64(), Some(4000), "{t}");
    assert_eq!(t["requests"].as_u64(), Some(1000), "{t}");
    assert!(
        err.contains(&format!("sequencer 127.0.0.1:{}", c.base + 10))
            || err.contains(&format!("sequencer 127.0.0.1:{}", c.base + 11)),
        "{err}"
    );
}

#[test]
fn ctrl_c_prints_the_summary_and_leaves_no_lock_held() {
    let dir = tempfile::tempdir().unwrap();
    let c = trex_up(&dir.path().join("up"), &[]);
    let child = spawn_bench(
        &[
            "lock",
            "--clients",
            "3",
            "--duration",
            "60s",
            "--warmup",
            "200ms",
            "-w",
            "json",
        ],
        &[("TREX_ENDPOINTS", &c.eps)],
    );
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let (code, out, err) = finish(child, Duration::from_secs(30));
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "Ctrl-C took {:?} to end the run",
        t0.elapsed()
    );
    assert_eq!(code, Some(130), "stdout: {out}\nstderr: {err}");
    let s: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(s["interrupted"], true);
    assert!(s["ops"].as_u64().unwrap() > 0, "{s}");
    assert!(s["seconds"].as_f64().unwrap() < 10.0, "{s}");
    assert!(s["latency_us"]["p50"].as_u64().unwrap() > 0, "{s}");
    // Each client's lock is free again: another holder takes it at once
    // (a lock left held would be refused for its 30 s lease).
    for i in 0..3 {
        let name = format!("bench-{pid}-{i}");
        let (code, out, err) = trex_cli(
            &c.eps,
            &["lock", "acquire", &name, "--ttl", "5s"],
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(0), "{name} is still held: {out}{err}");
    }
}
