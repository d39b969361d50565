//! What several commands share: where the consensus nodes are, the output
//! format flag, and how projections and entries are printed.

use crate::error::{usage, CliError};
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
/// the file `./trex-data/endpoints`, else the defaults. A list that does not
/// parse is a usage error, found here rather than as a timeout later.
pub fn resolve_endpoints(ep: &Endpoints) -> Result<String, CliError> {
    if let Some(e) = &ep.endpoints {
        check_endpoints(e, "--endpoints")?;
        return Ok(e.clone());
    }
    if let Ok(e) = std::env::var("TREX_ENDPOINTS") {
        if !e.trim().is_empty() {
            check_endpoints(&e, "TREX_ENDPOINTS")?;
            return Ok(e);
        }
    }
    if let Ok(e) = std::fs::read_to_string("trex-data/endpoints") {
        if !e.trim().is_empty() {
            check_endpoints(&e, "./trex-data/endpoints")?;
            return Ok(e.trim().to_string());
        }
    }
    Ok(DEFAULT_ENDPOINTS.to_string())
}

/// Checks a comma-separated list of consensus endpoints, as the clients will
/// split it, naming `from` (where the list came from) if an entry is not
/// HOST:PORT.
pub fn check_endpoints(list: &str, from: &str) -> Result<(), CliError> {
    let entries: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(usage!(
            "no consensus endpoints given: pass --endpoints HOST:PORT,... or set TREX_ENDPOINTS"
        ));
    }
    match entries.into_iter().find(|e| !is_host_port(e)) {
        Some(bad) => Err(usage!(
            "consensus endpoint {bad:?} in {from} is not HOST:PORT; give a comma-separated list such as {DEFAULT_ENDPOINTS}"
        )),
        None => Ok(()),
    }
}

/// Checks one HOST:PORT address; `what` says what it names and how it was
/// given, for the message.
pub fn check_address(addr: &str, what: &str, example: &str) -> Result<(), CliError> {
    if is_host_port(addr.trim()) {
        return Ok(());
    }
    Err(usage!(
        "{what} {addr:?} is not HOST:PORT; give one such as {example}"
    ))
}

/// Whether `s` has the shape std's address lookup requires (a port after the
/// last colon). Whether HOST resolves is for the connection to find out.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
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
