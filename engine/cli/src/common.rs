//! What several commands share: where the consensus nodes are, the output
//! format flag, and how projections and entries are printed.

use crate::error::CliError;
use clap::{Args, ValueEnum};
use std::time::Duration;
use trex_consensus::client::{ConsensusClient, DEFAULT_ENDPOINTS};
use trex_consensus::sm::Projection;
use trex_net::util::parse_duration;

#[derive(Args)]
pub struct Endpoints {
    /// Consensus nodes, comma-separated HOST:PORT (else TREX_ENDPOINTS, else
    /// ./trex-data/endpoints, else the three default addresses).
    #[arg(long, global = true)]
    pub endpoints: Option<String>,
    /// How long to wait for one reply.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub ep: Endpoints,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Where the consensus nodes are: `--endpoints`, else `TREX_ENDPOINTS`, else
/// the file `./trex-data/endpoints`, else the defaults.
pub fn resolve_endpoints(ep: &Endpoints) -> String {
    if let Some(e) = &ep.endpoints {
        return e.clone();
    }
    if let Ok(e) = std::env::var("TREX_ENDPOINTS") {
        if !e.trim().is_empty() {
            return e;
        }
    }
    if let Ok(e) = std::fs::read_to_string("trex-data/endpoints") {
        if !e.trim().is_empty() {
            return e.trim().to_string();
        }
    }
    DEFAULT_ENDPOINTS.to_string()
}

/// A client of the consensus nodes `ep` names.
pub fn consensus_client(ep: &Endpoints) -> Result<ConsensusClient, CliError> {
    Ok(ConsensusClient::new(&resolve_endpoints(ep), ep.timeout)?)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A projection as `trex layout show` and `trex status` print it.
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
