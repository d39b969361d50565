//! Issue 12, CLI polish: `-w json` on every command that prints data, parsed
//! here with serde_json field by field (the shapes docs/cli.md promises); times
//! as Unix milliseconds with an RFC 3339 twin that names the same instant;
//! and the version every node reports in `trex status` (`node-info`), with
//! `unknown` for a node that does not answer.

mod common;

use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::UNIX_EPOCH;

/// Runs `trex ARGS` against the cluster (TREX_ENDPOINTS), standard input empty.
fn trex(eps: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(args)
        .env("TREX_ENDPOINTS", eps)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `trex ARGS -w json`, which must succeed and print one JSON value.
fn json(eps: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let out = trex(eps, &all);
    assert!(out.status.success(), "trex {all:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "trex {all:?} printed no JSON value ({e}): {}",
            text(&out.stdout)
        )
    })
}

/// `trex ARGS -w json` that prints one JSON object per line.
fn json_lines(eps: &str, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let out = trex(eps, &all);
    assert!(out.status.success(), "trex {all:?}: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("trex {all:?}: {e}: {l}")))
        .collect()
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// `X_ms` and `X_at` name the same instant, to the millisecond.
fn same_instant(v: &Value, name: &str) {
    let ms = u64_of(v, &format!("{name}_ms"));
    let at = v[format!("{name}_at")]
        .as_str()
        .unwrap_or_else(|| panic!("no {name}_at in {v}"));
    assert!(at.ends_with('Z'), "UTC: {at}");
    let t = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
    let back = t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(back, ms, "{name}_at {at} is not {name}_ms {ms}");
}

/// The base64 that `read` and `tail` put in `data`, decoded (RFC 4648, padded).
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {s}"),
        }
    };
    assert_eq!(s.len() % 4, 0, "padded: {s}");
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let pad = q.iter().filter(|c| **c == b'=').count();
        let n = q[..4 - pad]
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | val(*c) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

#[test]
fn every_command_that_prints_data_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::trex_up(dir.path(), &[]);
    let eps = cluster.eps.clone();
    let version = env!("CARGO_PKG_VERSION");

    // append: one object per entry, its place and its address.
    let a = json_lines(&eps, &["append", "plain"]);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["entry"], 1);
    let first = u64_of(&a[0], "address");
    let out = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["append", "-", "-w", "json"])
        .env("TREX_ENDPOINTS", &eps)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"two\nthree\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out.stdout));
    assert_eq!(
        (lines[0]["entry"].as_u64(), lines[1]["entry"].as_u64()),
        (Some(1), Some(2))
    );
    let binary = dir.path().join("bin");
    std::fs::write(&binary, [0u8, 255, 10, 13, b'"']).unwrap();
    let b = json_lines(&eps, &["append", "--file", binary.to_str().unwrap()]);
    let bin_addr = u64_of(&b[0], "address");

    // read and tail: one object per address; bytes in base64, lossless.
    let r = json_lines(&eps, &["read", &first.to_string()]);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (u64_of(&r[0], "address"), r[0]["state"].as_str()),
        (first, Some("data"))
    );
    assert_eq!(unbase64(r[0]["data"].as_str().unwrap()), b"plain");
    assert_eq!(u64_of(&r[0], "len"), 5);
    let r = json_lines(&eps, &["read", &bin_addr.to_string(), "--count", "2"]);
    assert_eq!(
        unbase64(r[0]["data"].as_str().unwrap()),
        [0u8, 255, 10, 13, b'"']
    );
    assert_eq!(r[1]["state"], "unwritten", "{}", r[1]);
    assert!(r[1]["data"].is_null());
    let t = json_lines(&eps, &["tail"]);
    assert_eq!(t.len() as u64, bin_addr + 1, "{t:?}");
    let addrs: Vec<u64> = t.iter().map(|v| u64_of(v, "address")).collect();
    assert_eq!(addrs, (0..=bin_addr).collect::<Vec<_>>());

    // check, both ways.
    let c = json(&eps, &["check"]);
    assert_eq!(
        (u64_of(&c, "next"), c["fast"].as_bool()),
        (bin_addr + 1, Some(false))
    );
    let c = json(&eps, &["check", "--fast"]);
    assert_eq!(c["fast"], true);
    assert!(u64_of(&c, "next") > bin_addr, "{c}");

    // members: every registered node, times as ms and RFC 3339.
    let m = json(&eps, &["members"]);
    let m = m.as_array().expect("an array");
    assert_eq!(m.len(), 6, "2 sequencers and 4 units: {m:?}");
    for x in m {
        assert!(
            matches!(x["role"].as_str(), Some("storage" | "sequencer")),
            "{x}"
        );
        assert!(x["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{x}");
        same_instant(x, "registered");
        same_instant(x, "seen");
    }

    // layout show, layout replicas, layout history.
    let l = json(&eps, &["layout", "show"]);
    assert!(
        u64_of(&l, "epoch") >= 1 && u64_of(&l, "history") >= 1,
        "{l}"
    );
    let seg = &l["segments"][0];
    assert_eq!(seg["start"], 0);
    assert!(seg["end"].is_null(), "the open segment: {seg}");
    assert_eq!(seg["stripes"].as_array().unwrap().len(), 2);
    assert_eq!(seg["stripes"][0].as_array().unwrap().len(), 2);
    assert_eq!(json(&eps, &["layout", "replicas"])["replicas"], 2);
    // layout history: every projection, oldest first, the last the current one.
    let h = json(&eps, &["layout", "history"]);
    let h = h.as_array().unwrap();
    // (A takeover in between may add one.)
    assert!(h.len() as u64 >= u64_of(&l, "history"), "{h:?}");
    assert_eq!(h[0]["epoch"], 1, "{h:?}");
    assert!(
        h.windows(2)
            .all(|w| u64_of(&w[0], "epoch") < u64_of(&w[1], "epoch")),
        "{h:?}"
    );
    assert!(
        u64_of(h.last().unwrap(), "epoch") >= u64_of(&l, "epoch"),
        "{h:?}"
    );
    assert!(h[0].get("history").is_none(), "{h:?}");

    // endpoint status: one object per consensus node, exactly one leader.
    let e = json(&eps, &["endpoint", "status"]);
    let e = e.as_array().unwrap();
    assert_eq!(e.len(), 3);
    assert_eq!(
        e.iter().filter(|n| n["leading"] == true).count(),
        1,
        "{e:?}"
    );
    for n in e {
        assert!(n["ballot"].as_str().unwrap().contains('.'), "{n}");
        assert!(u64_of(n, "applied") <= u64_of(n, "commit"), "{n}");
    }

    // locks: acquire, renew, show, release.
    let l = json(
        &eps,
        &[
            "lock", "acquire", "jobs", "--holder", "alice", "--ttl", "30s",
        ],
    );
    assert_eq!(
        (l["name"].as_str(), l["holder"].as_str()),
        (Some("jobs"), Some("alice"))
    );
    assert_eq!(l["released"], false);
    same_instant(&l, "expire");
    let token = u64_of(&l, "token").to_string();
    let r = json(
        &eps,
        &["lock", "renew", "jobs", "--token", &token, "--ttl", "60s"],
    );
    assert!(u64_of(&r, "expire_ms") > u64_of(&l, "expire_ms"), "{r}");
    same_instant(&r, "expire");
    let s = json(&eps, &["lock", "show", "jobs"]);
    assert_eq!(u64_of(&s, "token").to_string(), token);
    let rel = json(&eps, &["lock", "release", "jobs", "--token", &token]);
    assert_eq!(
        (rel["name"].as_str(), rel["released"].as_bool()),
        (Some("jobs"), Some(true))
    );
    // A released lock is forgotten (issue 14): showing it says so.
    let gone = trex(&eps, &["lock", "show", "jobs", "-w", "json"]);
    assert!(!gone.status.success());
    assert!(
        text(&gone.stderr).contains("not held"),
        "{}",
        text(&gone.stderr)
    );
    // The table says the same expiry for people.
    let out = trex(&eps, &["lock", "show", "sequencer"]);
    let line = text(&out.stdout);
    assert!(
        line.contains(" expires ") && line.contains("Z, in ") && line.contains("s)"),
        "{line}"
    );

    // trim and repair.
    let t = json(&eps, &["trim", "1"]);
    assert_eq!((u64_of(&t, "mark"), u64_of(&t, "asked")), (1, 1));
    assert_eq!(t["applied"].as_array().unwrap().len(), 4, "{t}");
    assert!(t["pending"].as_array().unwrap().is_empty(), "{t}");
    let r = json(&eps, &["repair"]);
    assert!(
        r["joined"].as_array().unwrap().is_empty(),
        "nothing to repair: {r}"
    );
    assert!(u64_of(&r, "epoch") >= 1);

    // status: the lease with its times, every node with its version.
    let s = json(&eps, &["status"]);
    assert_eq!(u64_of(&s, "trim_mark"), 1);
    assert_eq!(s["replication"], 2);
    assert!(s["degraded"].as_array().unwrap().is_empty());
    same_instant(&s["sequencer_lease"], "expire");
    let units = s["units"].as_array().unwrap();
    let sequencers = s["sequencers"].as_array().unwrap();
    let consensus = s["consensus"].as_array().unwrap();
    assert_eq!((units.len(), sequencers.len(), consensus.len()), (4, 2, 3));
    let revision = units[0]["revision"].as_str().unwrap().to_string();
    assert!(!revision.is_empty());
    for n in units.iter().chain(sequencers).chain(consensus) {
        assert_eq!(n["version"], version, "{n}");
        assert_eq!(n["revision"], revision.as_str(), "one build: {n}");
    }
    for u in units {
        assert_eq!(
            (u["role"].as_str(), u["healthy"].as_bool()),
            (Some("chain"), Some(true))
        );
        assert!(u64_of(u, "tail") >= bin_addr / 2, "{u}");
    }
    assert_eq!(sequencers.iter().filter(|q| q["active"] == true).count(), 1);
    assert_eq!(consensus.iter().filter(|c| c["leading"] == true).count(), 1);
    let active = sequencers.iter().find(|q| q["active"] == true).unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string();

    // token, straight from the active sequencer.
    let out = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["token", "--node", &active, "--count", "3", "-w", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tk: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u64_of(&tk, "count"), 3);
    assert!(
        u64_of(&tk, "first") > bin_addr && u64_of(&tk, "epoch") >= 1,
        "{tk}"
    );

    // unit: info (with its version), read, fill, trim, seal.
    let unit = units[0]["addr"].as_str().unwrap().to_string();
    // Exit 0, except 1 when an address read is neither data nor junk.
    let on_unit_exit = |code: i32, args: &[&str]| -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_trex"))
            .args(["unit"])
            .args(args)
            .args(["--node", &unit, "-w", "json"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "unit {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let on_unit = |args: &[&str]| on_unit_exit(0, args);
    let i = &on_unit(&["info"])[0];
    assert_eq!(
        (i["node"].as_str(), i["version"].as_str()),
        (Some(unit.as_str()), Some(version))
    );
    assert_eq!(i["poisoned"], false);
    assert_eq!(u64_of(i, "trim_mark"), 1);
    let r = on_unit_exit(1, &["read", "1000000", "--count", "2"]);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (u64_of(&r[1], "address"), r[1]["status"].as_str()),
        (1_000_001, Some("unwritten"))
    );
    let f = on_unit(&["fill", "1000000"]);
    assert_eq!(f[0]["status"], "ok");
    let r = on_unit(&["read", "1000000"]);
    assert_eq!(r[0]["status"], "junk");
    let w = on_unit(&["write", "1000002", "unit-bytes"]);
    assert_eq!(
        (w[0]["status"].as_str(), u64_of(&w[0], "len")),
        (Some("ok"), 10)
    );
    let r = on_unit(&["read", "1000002"]);
    assert_eq!(unbase64(r[0]["data"].as_str().unwrap()), b"unit-bytes");
    assert_eq!(u64_of(&on_unit(&["trim", "1"])[0], "trim_mark"), 1);
    let epoch = u64_of(i, "sealed_epoch") + 1;
    let s = on_unit(&["seal", &epoch.to_string()]);
    assert_eq!(u64_of(&s[0], "sealed_epoch"), epoch);
    assert!(u64_of(&s[0], "tail") > 1_000_002, "{}", s[0]);

    // A node that does not answer has no known version: null in JSON,
    // `unknown` in the table. The standby sequencer is stopped for it.
    let standby = sequencers.iter().find(|q| q["active"] == false).unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string();
    common::kill(&format!("sequencer --listen {standby} "), libc::SIGKILL);
    let dead_unit = units[3]["addr"].as_str().unwrap().to_string();
    common::kill(&format!("storage --listen {dead_unit} "), libc::SIGKILL);
    let s = json(&eps, &["status", "--timeout", "3s"]);
    let q = s["sequencers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["addr"] == standby.as_str())
        .unwrap()
        .clone();
    assert_eq!(q["reachable"], false, "{q}");
    assert!(q["version"].is_null() && q["revision"].is_null(), "{q}");
    let out = trex(&eps, &["status", "--timeout", "3s"]);
    let table = text(&out.stdout);
    assert!(table.contains("VERSION"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&standby))
        .unwrap_or_else(|| panic!("no row for {standby}: {table}"));
    assert!(
        row.contains("unreachable") && row.ends_with("unknown"),
        "{row}"
    );
    let u = s["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["addr"] == dead_unit.as_str())
        .unwrap()
        .clone();
    assert_eq!(u["healthy"], false, "{u}");
    assert!(
        u["error"].is_string() && u["version"].is_null() && u.get("tail").is_none(),
        "{u}"
    );
    let row = table
        .lines()
        .find(|l| l.contains(&dead_unit))
        .unwrap_or_else(|| panic!("no row for {dead_unit}: {table}"));
    assert!(
        row.contains("unreachable") && row.contains("unknown ("),
        "{row}"
    );
    let row = table
        .lines()
        .find(|l| l.contains(&active) && l.contains(" active "))
        .unwrap_or_else(|| panic!("no row for {active}: {table}"));
    assert!(
        row.contains(&format!("{version} (git {revision})")),
        "{row}"
    );
    drop(cluster);
}

#[test]
fn raw_output_and_json_do_not_mix() {
    let out = trex("127.0.0.1:1", &["read", "0", "--raw", "-w", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--raw"), "{}", text(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args([
            "unit",
            "read",
            "0",
            "--raw",
            "-w",
            "json",
            "--node",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
