//! `trex token`: ask a sequencer for log addresses.

use crate::common::{check_address, print_json, Format};
use crate::error::{failed, CliError};
use clap::Args;
use std::time::Duration;
use trex_net::unit_client::{UnitApi, UnitClient};
use trex_wire::TokenReply;

#[derive(Args)]
pub struct TokenArgs {
    /// The sequencer, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7410")]
    node: String,
    /// How many addresses.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Cluster id to send (the sequencer's `--cluster-id`).
    #[arg(long, env = "TREX_CLUSTER_ID", default_value_t = 0)]
    cluster_id: u32,
    /// Output format (docs/cli.md).
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    format: Format,
}

pub fn run(a: TokenArgs) -> Result<(), CliError> {
    let TokenArgs {
        node,
        count,
        cluster_id,
        format,
    } = a;
    check_address(&node, "the sequencer (--node)", "127.0.0.1:7410")?;
    let mut c = UnitClient::connect(&node, Duration::from_secs(2))?;
    c.cluster_id = cluster_id;
    let (_, body) = c.call(trex_wire::Opcode::Token, 0, &|b| {
        trex_wire::encode_token_request(b, count)
    })?;
    match trex_wire::decode_token_reply(&body).map_err(|e| failed!("{e}"))? {
        TokenReply::Granted { epoch, first } => {
            match format {
                Format::Json => print_json(&serde_json::json!({
                    "epoch": epoch,
                    "first": first,
                    "count": count,
                })),
                Format::Table => println!("epoch {epoch} first {first} count {count}"),
            }
            Ok(())
        }
        TokenReply::NotSequencer { hint } if hint.is_empty() => Err(failed!(
            "{node} is not the active sequencer and knows of none; is a layout installed?"
        )),
        TokenReply::NotSequencer { hint } => {
            Err(failed!("{node} is not the active sequencer; ask {hint}"))
        }
    }
}
