//! What several commands share: where the consensus nodes are, the output
//! format flag, and how projections and entries are printed.

use crate::error::{usage, CliError};
use clap::{Args, ValueEnum};
use std::time::Duration;
use trex_consensus::client::ConsensusClient;
use trex_consensus::endpoints;
use trex_consensus::sm::Projection;
use trex_net::util::parse_duration;

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
        "{what} {addr:?} is not HOST:PORT; give one such as {example}"
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
}
