//! The shared log: `trex append`, `read`, `tail`, `trim` and `check`.

use crate::common::{escape, resolve_endpoints, Endpoints};
use crate::error::CliError;
use clap::Args;
use std::time::Duration;
use trex_log::{Log, Slot};

#[derive(Args)]
pub struct AppendArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// The entry, or `-`.
    data: String,
}

#[derive(Args)]
pub struct ReadArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// First address.
    addr: u64,
    /// How many addresses.
    #[arg(long, default_value_t = 1)]
    count: u64,
}

#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// First address.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep waiting for new entries (fills holes that stay unwritten for 1 s).
    #[arg(long)]
    follow: bool,
}

#[derive(Args)]
pub struct TrimArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// New trim mark.
    prefix: u64,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// Ask the sequencer instead (one round trip; counts addresses handed
    /// out but not yet written).
    #[arg(long)]
    fast: bool,
}

/// How many lines of standard input `trex append -` appends in one batch.
const APPEND_BATCH: usize = 1000;

fn connect(ep: &Endpoints) -> Result<Log, CliError> {
    Ok(Log::connect_to(&resolve_endpoints(ep)?, ep.cluster_id)?)
}

pub fn append(a: AppendArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    if a.data != "-" {
        println!("{}", log.append(a.data.as_bytes())?);
        return Ok(());
    }
    let mut lines: Vec<String> = Vec::new();
    for line in std::io::BufRead::lines(std::io::stdin().lock()) {
        lines.push(line.map_err(|e| format!("cannot read standard input: {e}"))?);
        if lines.len() == APPEND_BATCH {
            append_lines(&mut log, &mut lines)?;
        }
    }
    if !lines.is_empty() {
        append_lines(&mut log, &mut lines)?;
    }
    Ok(())
}

/// Appends `lines` as one batch, prints their addresses, and empties `lines`.
fn append_lines(log: &mut Log, lines: &mut Vec<String>) -> Result<(), CliError> {
    let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    for a in log.append_batch(&refs)? {
        println!("{a}");
    }
    lines.clear();
    Ok(())
}

pub fn read(a: ReadArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    let end = a.addr.saturating_add(a.count);
    let mut at = a.addr;
    while at < end {
        let n = (end - at).min(4096);
        for (k, s) in log.read_range(at, n)?.into_iter().enumerate() {
            print_slot(at + k as u64, &s);
        }
        at += n;
    }
    Ok(())
}

pub fn tail(a: TailArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    let end = log.check()?;
    let mut sub = log.subscribe(a.from, Duration::from_secs(1));
    while a.follow || sub.position() < end {
        let (at, s) = sub.next_entry()?;
        print_slot(at, &s);
    }
    Ok(())
}

pub fn trim(a: TrimArgs) -> Result<(), CliError> {
    let r = connect(&a.ep)?.trim(a.prefix)?;
    println!("trimmed below {}", a.prefix);
    for (id, e) in &r.missed {
        eprintln!(
            "warning: unit {id} did not apply the trim ({e}); the others did. Run `trex trim {}` again once it answers",
            a.prefix
        );
    }
    Ok(())
}

pub fn check(a: CheckArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    let next = if a.fast {
        log.check_fast()?
    } else {
        log.check()?
    };
    println!("{next}");
    Ok(())
}

fn print_slot(addr: u64, s: &Slot) {
    match s {
        Slot::Data { data, .. } => println!("{addr}\t{}", escape(data)),
        Slot::Hole => println!("{addr}\t(hole)"),
        Slot::Unwritten => println!("{addr}\t(unwritten)"),
        Slot::Trimmed => println!("{addr}\t(trimmed)"),
    }
}
