//! Metrics on real processes: `trex up --metrics-base-port`, appends through the
//! log client, then every node's `/metrics` scraped twice (before and after
//! more appends) and parsed as Prometheus/OpenMetrics text. The counters that
//! should move moved on every role (unit writes, stored bytes and syncs;
//! sequencer tokens; consensus commit and applied index), the gauges are sane
//! (one consensus leader, one sequencer holding the lease), and `/healthz`,
//! `/readyz` and unknown paths answer as documented.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use trex_log::Log;

mod common;

/// One scrape: series (name with its labels, exactly as printed) → value.
type Series = BTreeMap<String, f64>;

/// Parses the text format: `# …` lines are metadata, every other line is
/// `name{labels} value` (labels optional). Panics on a malformed line.
fn parse(text: &str) -> Series {
    let mut out = Series::new();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "a line after # EOF: {line:?}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // Label values here never hold spaces: the value is after the last one.
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "series {series} twice"
        );
    }
    assert!(eof, "no # EOF at the end");
    out
}

/// `GET path` (or another method): status code and body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("a whole response");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok());
    (code.expect("a status code"), body.to_string())
}

fn scrape(addr: &str) -> Series {
    let (code, body) = http(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{addr}: {body}");
    parse(&body)
}

fn get(s: &Series, key: &str) -> f64 {
    *s.get(key).unwrap_or_else(|| {
        let names: Vec<&String> = s.keys().collect();
        panic!("no series {key}; have {names:?}")
    })
}

/// A `trex up` base port with 24 ports free, and 9 more free 100 above it
/// (the metrics ports must be clear of the cluster's 100).
fn bases() -> (u16, u16) {
    for _ in 0..50 {
        let base = common::free_base();
        let m = base + 100;
        if (0..9).all(|o| std::net::TcpListener::bind(("127.0.0.1", m + o)).is_ok()) {
            return (base, m);
        }
    }
    panic!("no free ports for the cluster and its metrics");
}

fn append(log: &mut Log, n: usize, tag: &str) {
    for chunk in 0..n / 25 {
        let entries: Vec<Vec<u8>> = (0..25)
            .map(|k| format!("{tag} {chunk} {k}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_slice()).collect();
        log.append_batch(&refs).expect("appends are acknowledged");
    }
}

#[test]
fn every_role_serves_metrics_that_move_under_load() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (base, mbase) = bases();
    let cluster = common::trex_up_at(
        dir.path(),
        base,
        &["--metrics-base-port", &mbase.to_string()],
    );
    let listed = std::fs::read_to_string(dir.path().join("metrics")).unwrap();
    let nodes: Vec<(String, String)> = listed
        .lines()
        .map(|l| {
            let (name, addr) = l.split_once(' ').unwrap();
            (name.to_string(), addr.to_string())
        })
        .collect();
    let role = |prefix: &str| -> Vec<(String, String)> {
        nodes
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .cloned()
            .collect()
    };
    let (consensus, units, sequencers) = (role("consensus-"), role("unit-"), role("sequencer-"));
    assert_eq!(
        (consensus.len(), units.len(), sequencers.len()),
        (3, 4, 2),
        "{listed}"
    );
    for (i, (_, addr)) in nodes.iter().enumerate() {
        assert_eq!(*addr, format!("127.0.0.1:{}", mbase + i as u16));
    }

    // Liveness at once; readiness once every node registered and knows a leader.
    for (name, addr) in &nodes {
        let (code, body) = http(addr, "GET", "/healthz");
        assert_eq!(code, 200, "{name} /healthz: {body}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (code, body) = http(addr, "GET", "/readyz");
            if code == 200 {
                if name.starts_with("sequencer-") {
                    assert!(
                        body.starts_with("active") || body.starts_with("standby"),
                        "{name} /readyz: {body}"
                    );
                }
                break;
            }
            assert_eq!(code, 503, "{name} /readyz: {body}");
            assert!(Instant::now() < deadline, "{name} not ready: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(http(addr, "GET", "/nope").0, 404, "{name}");
        assert_eq!(http(addr, "POST", "/metrics").0, 405, "{name}");
    }

    let mut log = Log::connect(&cluster.eps).unwrap();
    append(&mut log, 300, "first");
    // Gauges and stored counts are sampled every 250 ms at most.
    std::thread::sleep(Duration::from_millis(400));
    let before: BTreeMap<String, Series> =
        nodes.iter().map(|(n, a)| (n.clone(), scrape(a))).collect();
    append(&mut log, 300, "second");
    // Long enough for a lease renewal (every second with the default 3 s
    // TTL): a command the consensus group commits without our appends.
    std::thread::sleep(Duration::from_millis(1500));
    let after: BTreeMap<String, Series> =
        nodes.iter().map(|(n, a)| (n.clone(), scrape(a))).collect();

    for (name, s) in &after {
        let info = s
            .keys()
            .find(|k| k.starts_with("trex_build_info{"))
            .unwrap_or_else(|| panic!("{name}: no trex_build_info"));
        assert!(
            info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && info.contains("revision=\""),
            "{name}: {info}"
        );
        assert_eq!(get(s, info), 1.0);
        assert!(
            get(s, "trex_connections_accepted_total") >= 1.0,
            "{name}: accepted connections"
        );
        assert!(
            s.contains_key("trex_errors_total{kind=\"frame\"}"),
            "{name}"
        );
    }

    // Storage units: every unit of the 2 x 2 layout took writes, stored them
    // and synced them.
    let moved = |name: &str, key: &str| get(&after[name], key) - get(&before[name], key);
    for (name, _) in &units {
        let s = &after[name.as_str()];
        assert!(
            moved(name, "trex_requests_total{op=\"write\"}") >= 1.0,
            "{name}: writes"
        );
        assert!(
            get(s, "trex_request_duration_seconds_count{op=\"write\"}") >= 1.0,
            "{name}: write latency"
        );
        assert!(
            moved(name, "trex_unit_stored_entries_total") >= 1.0,
            "{name}: entries"
        );
        assert!(
            moved(name, "trex_unit_stored_bytes_total") >= 1.0,
            "{name}: bytes"
        );
        assert!(
            moved(name, "trex_unit_sync_duration_seconds_count") >= 1.0,
            "{name}: syncs"
        );
        assert!(get(s, "trex_unit_tail") > 0.0, "{name}: tail");
        assert!(
            get(s, "trex_unit_sealed_epoch") >= 1.0,
            "{name}: sealed epoch"
        );
        assert!(get(s, "trex_unit_segments") >= 1.0, "{name}: segments");
        assert!(get(s, "trex_unit_used_bytes") > 0.0, "{name}: used bytes");
        assert!(get(s, "trex_unit_disk_total_bytes") > 0.0, "{name}: disk");
        assert_eq!(get(s, "trex_unit_poisoned"), 0.0, "{name}");
        assert_eq!(get(s, "trex_unit_full"), 0.0, "{name}");
        assert!(
            get(s, "trex_connections_open") >= 1.0,
            "{name}: the log's connection"
        );
    }
    // Each entry went to both replicas of its chain: 600 entries, 1200 copies.
    let stored: f64 = units
        .iter()
        .map(|(n, _)| get(&after[n.as_str()], "trex_unit_stored_entries_total"))
        .sum();
    assert!(stored >= 1200.0, "copies stored: {stored}");

    // Sequencers: exactly one holds the lease and serves; it handed out the
    // second 300 addresses.
    let holding: Vec<&String> = sequencers
        .iter()
        .map(|(n, _)| n)
        .filter(|n| get(&after[n.as_str()], "trex_sequencer_lease_held") == 1.0)
        .collect();
    assert_eq!(
        holding.len(),
        1,
        "sequencers holding the lease: {holding:?}"
    );
    let active = holding[0].as_str();
    let s = &after[active];
    assert_eq!(get(s, "trex_sequencer_serving"), 1.0);
    assert!(get(s, "trex_sequencer_lease_remaining_milliseconds") > 0.0);
    assert!(get(s, "trex_sequencer_epoch") >= 1.0);
    assert!(get(s, "trex_sequencer_takeovers_total") >= 1.0);
    assert!(
        moved(active, "trex_sequencer_tokens_total") >= 300.0,
        "tokens"
    );
    assert!(
        moved(
            active,
            "trex_sequencer_token_requests_total{result=\"granted\"}"
        ) >= 1.0
    );
    assert!(moved(active, "trex_requests_total{op=\"token\"}") >= 1.0);
    for (name, _) in &sequencers {
        assert_eq!(
            get(&after[name.as_str()], "trex_sequencer_registered"),
            1.0,
            "{name}"
        );
        if name != active {
            let s = &after[name.as_str()];
            assert_eq!(get(s, "trex_sequencer_serving"), 0.0, "{name}");
            assert_eq!(get(s, "trex_sequencer_lease_remaining_milliseconds"), 0.0);
        }
    }

    // Consensus nodes: one leader, all agree on it; commit and applied move on
    // every node (lease renewals and registrations are commands).
    let leaders: Vec<&String> = consensus
        .iter()
        .map(|(n, _)| n)
        .filter(|n| get(&after[n.as_str()], "trex_consensus_leading") == 1.0)
        .collect();
    assert_eq!(leaders.len(), 1, "leading consensus nodes: {leaders:?}");
    let leader_id: f64 = leaders[0].trim_start_matches("consensus-").parse().unwrap();
    for (name, _) in &consensus {
        let s = &after[name.as_str()];
        assert_eq!(get(s, "trex_consensus_leader"), leader_id, "{name}");
        assert!(get(s, "trex_consensus_ballot") >= 1.0, "{name}: ballot");
        assert!(
            moved(name, "trex_consensus_commit_index") >= 1.0,
            "{name}: commit"
        );
        assert!(
            moved(name, "trex_consensus_applied_index") >= 1.0,
            "{name}: applied"
        );
        assert!(
            get(s, "trex_consensus_journal_bytes") > 0.0,
            "{name}: journal"
        );
        assert!(
            get(s, "trex_consensus_peers_connected") >= 1.0,
            "{name}: peers"
        );
    }
    let leader = leaders[0].as_str();
    assert!(moved(leader, "trex_consensus_submits_total{result=\"applied\"}") >= 1.0);
    assert!(moved(leader, "trex_requests_total{op=\"submit\"}") >= 1.0);
    assert!(get(&after[leader], "trex_consensus_sync_duration_seconds_count") >= 1.0);
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_parser_reads_what_it_must() {
    let s = parse(
        "# HELP trex_x_total x\n# TYPE trex_x counter\ntrex_x_total{op=\"write\"} 3\ntrex_y 1.5\n# EOF\n",
    );
    assert_eq!(get(&s, "trex_x_total{op=\"write\"}"), 3.0);
    assert_eq!(get(&s, "trex_y"), 1.5);
}
