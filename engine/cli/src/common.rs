//! What several commands share: where the consensus nodes are, the output
//! format flag, and how projections, entries and times are printed.

use crate::error::{usage, CliError};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::time::Duration;
use trex_consensus::client::ConsensusClient;
use trex_consensus::endpoints;
use trex_consensus::sm::Projection;
use trex_net::util::parse_duration;

/// Where the cluster is, how long to wait for it, and how to print what it
/// answers: the options of every command that talks to the cluster.
#[derive(Args)]
pub struct Endpoints {
    /// Consensus nodes, comma-separated HOST:PORT (else TREX_ENDPOINTS, else
    /// ./trex-data/endpoints, else the three default addresses).
    #[arg(long, global = true)]
    pub endpoints: Option<String>,
    /// How long a request may wait for the cluster in all (every endpoint and
    /// retry included; a silent node gets a third of it).
    #[arg(long, global = true, default_value = "6s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The cluster id every frame carries (the servers' `--cluster-id`).
    #[arg(long, global = true, env = "TREX_CLUSTER_ID", default_value_t = 0)]
    pub cluster_id: u32,
    /// Output format: `table` for people, `json` for programs (one JSON
    /// value; commands that print one item per entry print one JSON object
    /// per line). The shapes are in docs/cli.md.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub format: Format,
}

/// How a command prints what it got.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Lines for people.
    Table,
    /// JSON for programs (docs/cli.md).
    Json,
}

/// Where the consensus nodes are: `--endpoints`, else `TREX_ENDPOINTS`, else
/// the file `./trex-data/endpoints`, else the defaults
/// ([`trex_consensus::endpoints::resolve`], the rule `trex-bench` follows too).
/// A list that does not parse is a usage error, found here rather than as a
/// timeout later.
pub fn resolve_endpoints(ep: &Endpoints) -> Result<String, CliError> {
    Ok(endpoints::resolve(ep.endpoints.as_deref())?)
}

/// Checks a comma-separated list of consensus endpoints, as the clients will
/// split it, naming `from` (where the list came from) if an entry is not
/// HOST:PORT.
pub fn check_endpoints(list: &str, from: &str) -> Result<(), CliError> {
    Ok(endpoints::check(list, from)?)
}

/// Checks one HOST:PORT address; `what` says what it names and how it was
/// given, for the message.
pub fn check_address(addr: &str, what: &str, example: &str) -> Result<(), CliError> {
    if endpoints::is_host_port(addr.trim()) {
        return Ok(());
    }
    Err(usage!(
        "{what} \"{addr}\" is not HOST:PORT; give one such as {example}"
    ))
}

/// A client of the consensus nodes `ep` names.
pub fn consensus_client(ep: &Endpoints) -> Result<ConsensusClient, CliError> {
    Ok(ConsensusClient::new(&resolve_endpoints(ep)?, ep.timeout)?
        .with_total(ep.timeout)
        .with_cluster_id(ep.cluster_id))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A projection as `trex layout show`, `trex layout init` and `trex status`
/// print it.
pub fn print_projection(p: &Projection) {
    println!("epoch      {}", p.epoch);
    println!(
        "sequencer  {}",
        if p.sequencer == 0 {
            "none".to_string()
        } else {
            p.sequencer.to_string()
        }
    );
    for s in &p.segments {
        let end = if s.end == u64::MAX {
            "open".to_string()
        } else {
            s.end.to_string()
        };
        println!("segment    [{}, {end})", s.start);
        for (i, chain) in s.stripes.iter().enumerate() {
            let c: Vec<String> = chain.iter().map(|x| x.to_string()).collect();
            println!("  stripe {i}  chain {}", c.join(" -> "));
        }
    }
}

/// A projection as JSON (docs/cli.md, "projection").
#[derive(Serialize)]
pub struct ProjectionJson {
    /// Its epoch.
    pub epoch: u64,
    /// The active sequencer's node id (0: none).
    pub sequencer: u64,
    /// How many projections were ever installed (`trex layout show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<u64>,
    /// Its segments, oldest first.
    pub segments: Vec<SegmentJson>,
}

/// One segment of a projection as JSON.
#[derive(Serialize)]
pub struct SegmentJson {
    /// First address.
    pub start: u64,
    /// One past the last address; `null` for the open segment.
    pub end: Option<u64>,
    /// Each stripe's chain of storage-unit ids, head first.
    pub stripes: Vec<Vec<u64>>,
}

impl ProjectionJson {
    /// `p` as JSON, with the history count if known.
    pub fn new(p: &Projection, history: Option<u64>) -> ProjectionJson {
        ProjectionJson {
            epoch: p.epoch,
            sequencer: p.sequencer,
            history,
            segments: p
                .segments
                .iter()
                .map(|s| SegmentJson {
                    start: s.start,
                    end: (s.end != u64::MAX).then_some(s.end),
                    stripes: s.stripes.clone(),
                })
                .collect(),
        }
    }
}

/// Prints `v` as one line of compact JSON.
pub fn print_json(v: &impl Serialize) {
    // Serializing our own structs cannot fail: every map key is a string and
    // no Serialize impl here returns an error.
    let line = serde_json::to_string(v).expect("output serializes to JSON");
    println!("{line}");
}

/// An entry's bytes in JSON: standard base64 with padding (RFC 4648 §4), so
/// that any bytes survive (`jq -r .data | base64 -d`).
pub fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Unix milliseconds as an RFC 3339 UTC time with milliseconds
/// (`2026-12-01T04:05:06.123Z`); times after year 9999 are written as its
/// last millisecond.
pub fn rfc3339(ms: u64) -> String {
    trex_net::util::rfc3339_ms(ms)
}

/// How far `ms` is from `now_ms`, for people: `in 4.2s`, `3.0s ago`,
/// `in 2h 5m 3s`, `now`.
pub fn relative(ms: u64, now_ms: u64) -> String {
    let (d, ahead) = if ms >= now_ms {
        (ms - now_ms, true)
    } else {
        (now_ms - ms, false)
    };
    if d == 0 {
        return "now".into();
    }
    let text = if d < 60_000 {
        format!("{:.1}s", d as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(d / 1000)).to_string()
    };
    if ahead {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A time for people beside its Unix milliseconds:
/// `1764567890123 (2026-12-01T04:05:06.123Z, in 4.2s)`.
pub fn when(ms: u64, now_ms: u64) -> String {
    format!("{ms} ({}, {})", rfc3339(ms), relative(ms, now_ms))
}

/// An entry's bytes on one line: printable ASCII as is, the rest escaped.
pub fn escape(data: &[u8]) -> String {
    let mut s = String::new();
    for &b in data {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_are_checked_entry_by_entry() {
        assert!(check_endpoints("127.0.0.1:7400, localhost:7401,[::1]:7402,", "x").is_ok());
        for bad in ["127.0.0.1", "127.0.0.1:7400,host", "h:99999", "h:port"] {
            let e = check_endpoints(bad, "--endpoints").unwrap_err();
            assert!(matches!(e, CliError::Usage(_)), "{bad}: {e:?}");
            assert!(e.to_string().contains("--endpoints"), "{e}");
        }
        assert!(matches!(
            check_endpoints(" , ", "--endpoints"),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn times_are_written_for_people_and_programs() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_567_890_123), "2025-12-01T05:44:50.123Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(relative(5_200, 1_000), "in 4.2s");
        assert_eq!(relative(1_000, 4_000), "3.0s ago");
        assert_eq!(relative(7, 7), "now");
        assert_eq!(relative(0, 7_503_000), "2h 5m 3s ago");
        assert_eq!(
            when(1_764_567_890_123, 1_764_567_885_923),
            "1764567890123 (2025-12-01T05:44:50.123Z, in 4.2s)"
        );
    }

    #[test]
    fn bytes_survive_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(&[0, 0xff, b'a']), "AP9h");
        assert_eq!(base64(b"hi"), "aGk=");
    }
}
