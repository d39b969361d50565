//! Where the consensus nodes are: one rule for every client program (`trex`,
//! `trex-bench`), so a cluster found by one is found by all.
//!
//! The list comes from the `--endpoints` flag, else `TREX_ENDPOINTS`, else the
//! file `./trex-data/endpoints` (which `trex up` writes), else
//! [`DEFAULT_ENDPOINTS`]. A list that does not parse is a configuration error
//! ([`ConsensusError::Config`]), found before anything connects rather than as
//! a timeout later.

use crate::client::DEFAULT_ENDPOINTS;
use crate::error::ConsensusError;

/// The consensus endpoints to use, given the `--endpoints` flag (if any).
pub fn resolve(flag: Option<&str>) -> Result<String, ConsensusError> {
    if let Some(e) = flag {
        check(e, "--endpoints")?;
        return Ok(e.to_string());
    }
    if let Ok(e) = std::env::var("TREX_ENDPOINTS") {
        if !e.trim().is_empty() {
            check(&e, "TREX_ENDPOINTS")?;
            return Ok(e);
        }
    }
    if let Ok(e) = std::fs::read_to_string("trex-data/endpoints") {
        if !e.trim().is_empty() {
            check(&e, "./trex-data/endpoints")?;
            return Ok(e.trim().to_string());
        }
    }
    Ok(DEFAULT_ENDPOINTS.to_string())
}

/// Checks a comma-separated list of consensus endpoints, as the clients will
/// split it, naming `from` (where the list came from) if an entry is not
/// HOST:PORT.
pub fn check(list: &str, from: &str) -> Result<(), ConsensusError> {
    let entries: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(ConsensusError::Config(
            "no consensus endpoints given: pass --endpoints HOST:PORT,... or set TREX_ENDPOINTS"
                .to_string(),
        ));
    }
    match entries.into_iter().find(|e| !is_host_port(e)) {
        Some(bad) => Err(ConsensusError::Config(format!(
            "consensus endpoint \"{bad}\" in {from} is not HOST:PORT; give a comma-separated list such as {DEFAULT_ENDPOINTS}"
        ))),
        None => Ok(()),
    }
}

/// Whether `s` has the shape std's address lookup requires (a port after the
/// last colon). Whether HOST resolves is for the connection to find out.
pub fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_host_ports_passes_and_anything_else_names_its_source() {
        assert!(check("127.0.0.1:7400, localhost:7401,", "--endpoints").is_ok());
        let e = check("127.0.0.1:7400,nonsense", "TREX_ENDPOINTS").unwrap_err();
        assert!(matches!(e, ConsensusError::Config(_)));
        let text = e.to_string();
        assert!(
            text.contains("\"nonsense\"") && text.contains("TREX_ENDPOINTS"),
            "{text}"
        );
        assert!(matches!(
            check(" , ", "--endpoints"),
            Err(ConsensusError::Config(_))
        ));
        assert!(!is_host_port("host:99999"));
        assert!(is_host_port("[::1]:7400"));
    }

    #[test]
    fn the_flag_wins_and_is_checked() {
        assert_eq!(resolve(Some("h:1")).unwrap(), "h:1");
        assert!(resolve(Some("h")).is_err());
    }
}
