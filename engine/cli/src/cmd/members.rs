//! `trex members`: the cluster's members, read through the consensus log.

use crate::common::{consensus_client, unix_ms, Format, ShowArgs};
use crate::error::CliError;
use trex_consensus::client::Submit;

pub fn run(a: ShowArgs) -> Result<(), CliError> {
    let m = consensus_client(&a.ep)?.members()?;
    match a.format {
        Format::Json => {
            let rows: Vec<String> = m
                .iter()
                .map(|(id, m)| {
                    format!(
                        "{{\"id\":{id},\"role\":\"{}\",\"addr\":\"{}\",\"registered_ms\":{},\"seen_ms\":{}}}",
                        m.role.name(),
                        m.addr,
                        m.registered_ms,
                        m.seen_ms
                    )
                })
                .collect();
            println!("[{}]", rows.join(","));
        }
        Format::Table => {
            println!("{:<8}{:<11}{:<24}LAST SEEN", "ID", "ROLE", "ADDRESS");
            let now = unix_ms();
            for (id, m) in &m {
                println!(
                    "{id:<8}{:<11}{:<24}{}s ago",
                    m.role.name(),
                    m.addr,
                    now.saturating_sub(m.seen_ms) / 1000
                );
            }
        }
    }
    Ok(())
}
