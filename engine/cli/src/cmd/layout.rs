//! `trex layout show|history|init|replicas`: the layout (projections) and
//! the replication factor.

use crate::common::{
    consensus_client, print_json, print_projection, Endpoints, Format, ProjectionJson,
};
use crate::error::{failed, usage, CliError};
use clap::Subcommand;
use trex_consensus::client::Submit;
use trex_consensus::sm::{decode_projection, Op};

#[derive(Subcommand)]
pub enum LayoutCmd {
    /// Show the current projection.
    Show(Endpoints),
    /// Show every projection ever installed, oldest first (how each chain
    /// changed: units taken out, spares joined, sequencers taking over).
    History(Endpoints),
    /// Install the first projection from the registered storage units.
    Init {
        #[command(flatten)]
        ep: Endpoints,
        /// Stripes.
        #[arg(long, default_value_t = 2)]
        stripes: u32,
        /// Replicas per stripe (chain length); recorded as the replication
        /// factor.
        #[arg(long, default_value_t = 2)]
        replicas: u32,
    },
    /// Show the replication factor, or with N set it: how many replicas every
    /// chain should have. The active sequencer's failure detector (and `trex
    /// repair`) lets empty spares join shorter chains; `trex status` shows
    /// them as degraded.
    Replicas {
        #[command(flatten)]
        ep: Endpoints,
        /// Replicas per chain, 1 to 16.
        n: Option<u32>,
    },
}

pub fn run(cmd: LayoutCmd) -> Result<(), CliError> {
    match cmd {
        LayoutCmd::Show(a) => show(a),
        LayoutCmd::History(a) => history(a),
        LayoutCmd::Init {
            ep,
            stripes,
            replicas,
        } => init(&ep, stripes, replicas),
        LayoutCmd::Replicas { ep, n } => replicas(&ep, n),
    }
}

fn replicas(ep: &Endpoints, n: Option<u32>) -> Result<(), CliError> {
    if n.is_some_and(|n| n == 0 || n > 16) {
        return Err(usage!(
            "replicas must be 1 to 16, got {}",
            n.unwrap_or_default()
        ));
    }
    let b = consensus_client(ep)?.submit_ok(&Op::Replication {
        replicas: n.unwrap_or(0),
    })?;
    let now = b
        .get(..4)
        .map(|x| u32::from_le_bytes(x.try_into().expect("4 bytes")))
        .ok_or_else(|| failed!(
                "the replication result is {} bytes, not 4: the consensus group runs another version of trex; use a matching `trex`",
                b.len()
            ))?;
    match (ep.format, now) {
        (Format::Json, n) => print_json(&serde_json::json!({ "replicas": (n > 0).then_some(n) })),
        (Format::Table, 0) => {
            println!("replication factor not recorded (set it with `trex layout replicas N`)")
        }
        (Format::Table, n) => println!("replication factor {n}"),
    }
    Ok(())
}

fn show(a: Endpoints) -> Result<(), CliError> {
    let (n, p) = consensus_client(&a)?.layout()?;
    let Some(p) = p else {
        return Err("no layout is installed yet; bootstrap one with `trex layout init --stripes 2 --replicas 2`".into());
    };
    match a.format {
        Format::Json => print_json(&ProjectionJson::new(&p, Some(n))),
        Format::Table => {
            print_projection(&p);
            println!("history    {n} projections");
        }
    }
    Ok(())
}

fn history(a: Endpoints) -> Result<(), CliError> {
    let all = consensus_client(&a)?.layout_history()?;
    if all.is_empty() {
        return Err("no layout is installed yet; bootstrap one with `trex layout init --stripes 2 --replicas 2`".into());
    }
    match a.format {
        Format::Json => print_json(
            &all.iter()
                .map(|p| ProjectionJson::new(p, None))
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            for (i, p) in all.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_projection(p);
            }
        }
    }
    Ok(())
}

fn init(ep: &Endpoints, stripes: u32, replicas: u32) -> Result<(), CliError> {
    if stripes == 0 || replicas == 0 {
        return Err(usage!(
            "--stripes and --replicas must be at least 1; got {stripes} and {replicas}"
        ));
    }
    let mut c = consensus_client(ep)?;
    let b = c.submit_ok(&Op::InitLayout { stripes, replicas })?;
    let p = decode_projection(&mut trex_wire::Reader::new(&b))
        .map_err(|e| failed!("bad layout from the consensus group: {e}"))?;
    match ep.format {
        Format::Json => print_json(&ProjectionJson::new(&p, None)),
        Format::Table => print_projection(&p),
    }
    Ok(())
}
