//! `trex unit …`: talk directly to one storage unit (an operator's tool).

use crate::common::{base64, check_address, escape, print_json, Format};
use crate::error::{failed, usage, CliError};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::io::{Read, Write};
use std::time::Duration;
use trex_net::unit_client::{UnitApi, UnitClient};
use trex_net::util::parse_duration;
use trex_wire::{Status, WriteOp, INFO_FULL, INFO_IO_URING, INFO_POISONED, INFO_SYNC_NEVER};

#[derive(Args)]
pub struct UnitArgs {
    /// The storage unit, HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "TREX_NODE",
        default_value = "127.0.0.1:7420"
    )]
    node: String,
    /// Epoch to send; defaults to the unit's current sealed epoch (asked first).
    #[arg(long, global = true)]
    epoch: Option<u64>,
    /// Cluster id to send (the unit's `--cluster-id`).
    #[arg(long, global = true, env = "TREX_CLUSTER_ID", default_value_t = 0)]
    cluster_id: u32,
    /// How long to wait for a reply.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Output format: `table` for people, `json` for programs (docs/cli.md).
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        value_enum,
        default_value = "table"
    )]
    format: Format,
    #[command(subcommand)]
    cmd: UnitCmd,
}

#[derive(Subcommand)]
enum UnitCmd {
    /// Write DATA (or standard input, with `-`) at ADDR.
    Write {
        /// Address.
        addr: u64,
        /// The entry's bytes, or `-` to read them from standard input.
        data: String,
        /// Writer id; a retry with the same writer, sequence number and bytes succeeds again.
        #[arg(long)]
        writer: Option<u64>,
        /// Writer sequence number.
        #[arg(long, default_value_t = 1)]
        seq: u64,
    },
    /// Read COUNT entries starting at ADDR.
    Read {
        /// First address.
        addr: u64,
        /// How many consecutive addresses.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Print only the entry's bytes, exactly (one address only).
        #[arg(long)]
        raw: bool,
    },
    /// Fill COUNT addresses starting at ADDR with junk, where unwritten.
    Fill {
        /// First address.
        addr: u64,
        /// How many consecutive addresses.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Trim every address below PREFIX.
    Trim {
        /// New trim mark.
        prefix: u64,
    },
    /// Seal the unit at EPOCH: requests with a lower epoch are refused from now on.
    Seal {
        /// New epoch (must be higher than the current one).
        epoch: u64,
    },
    /// Show the unit's state and the version it runs.
    Info,
}

pub fn run(u: UnitArgs) -> Result<(), CliError> {
    // Usage errors before any connection: they are the same whether or not
    // the unit is up.
    if let UnitCmd::Read {
        raw: true, count, ..
    } = u.cmd
    {
        if count != 1 {
            return Err(usage!("--raw prints one entry; use --count 1"));
        }
        if u.format == Format::Json {
            return Err(usage!(
                "--raw writes the entry's bytes alone; leave out -w json (whose `data` is base64)"
            ));
        }
    }
    let format = u.format;
    check_address(
        &u.node,
        "the storage unit (--node or TREX_NODE)",
        "127.0.0.1:7420",
    )?;
    let mut c = UnitClient::connect(&u.node, u.timeout)?;
    c.cluster_id = u.cluster_id;
    let epoch = match (u.epoch, &u.cmd) {
        (Some(e), _) => e,
        (None, UnitCmd::Info | UnitCmd::Seal { .. }) => 0,
        (None, _) => c.info()?.sealed_epoch,
    };
    let not_ok = match u.cmd {
        UnitCmd::Write {
            addr,
            data,
            writer,
            seq,
        } => write(&mut c, format, epoch, addr, data, writer, seq).map(|()| 0)?,
        UnitCmd::Read { addr, count, raw } => read(&mut c, format, epoch, addr, count, raw)?,
        UnitCmd::Fill { addr, count } => fill(&mut c, format, epoch, addr, count)?,
        UnitCmd::Trim { prefix } => {
            let mark = c.trim(epoch, prefix)?;
            match format {
                Format::Json => print_json(&serde_json::json!({ "trim_mark": mark })),
                Format::Table => println!("trim mark {mark}"),
            }
            0
        }
        UnitCmd::Seal { epoch: new } => seal(&mut c, format, new).map(|()| 0)?,
        UnitCmd::Info => info(&mut c, &u.node, format).map(|()| 0)?,
    };
    if not_ok > 0 {
        return Err(failed!(
            "{not_ok} address(es) not ok: the status beside each address above says why (`trex unit read ADDR` of one explains it)"
        ));
    }
    Ok(())
}

fn write(
    c: &mut UnitClient,
    format: Format,
    epoch: u64,
    addr: u64,
    data: String,
    writer: Option<u64>,
    seq: u64,
) -> Result<(), CliError> {
    let bytes = if data == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        b
    } else {
        data.into_bytes()
    };
    let writer = writer.unwrap_or_else(default_writer);
    let op = WriteOp {
        addr,
        writer,
        seq,
        data: &bytes,
    };
    match c.write(epoch, &[op])?[0] {
        Status::Ok => match format {
            Format::Json => print_json(&serde_json::json!({
                "address": addr,
                "status": "ok",
                "writer": writer,
                "seq": seq,
                "len": bytes.len(),
            })),
            Format::Table => println!(
                "{addr}\tok\twriter={writer}\tseq={seq}\tlen={}",
                bytes.len()
            ),
        },
        s => return Err(failed!("address {addr}: {}", explain(s))),
    }
    Ok(())
}

/// Prints COUNT addresses from ADDR; returns how many were neither ok nor junk.
fn read(
    c: &mut UnitClient,
    format: Format,
    epoch: u64,
    addr: u64,
    count: u32,
    raw: bool,
) -> Result<usize, CliError> {
    let mut not_ok = 0;
    let mut out = std::io::stdout().lock();
    for chunk in addresses(addr, count).chunks(4096) {
        for item in c.read(epoch, chunk)? {
            if format == Format::Json {
                let ok = item.status == Status::Ok;
                let line = serde_json::json!({
                    "address": item.addr,
                    "status": item.status.name(),
                    "writer": ok.then_some(item.writer),
                    "seq": ok.then_some(item.seq),
                    "data": ok.then(|| base64(&item.data)),
                });
                let _ = writeln!(out, "{line}");
                not_ok += usize::from(!ok && item.status != Status::Junk);
            } else if raw && item.status == Status::Ok {
                out.write_all(&item.data)
                    .map_err(|e| format!("cannot write the entry at {}: {e}", item.addr))?;
            } else if item.status == Status::Ok {
                let _ = writeln!(
                    out,
                    "{}\tok\twriter={}\tseq={}\t{}",
                    item.addr,
                    item.writer,
                    item.seq,
                    escape(&item.data)
                );
            } else {
                not_ok += usize::from(item.status != Status::Junk);
                let _ = writeln!(out, "{}\t{}", item.addr, item.status);
                if count == 1 {
                    eprintln!("address {}: {}", item.addr, explain(item.status));
                }
            }
        }
    }
    Ok(not_ok)
}

/// Fills COUNT addresses from ADDR; returns how many were not filled.
fn fill(
    c: &mut UnitClient,
    format: Format,
    epoch: u64,
    addr: u64,
    count: u32,
) -> Result<usize, CliError> {
    let mut not_ok = 0;
    for chunk in addresses(addr, count).chunks(4096) {
        for (a, s) in chunk.iter().zip(c.fill(epoch, chunk)?) {
            match format {
                Format::Json => {
                    print_json(&serde_json::json!({ "address": a, "status": s.name() }))
                }
                Format::Table => println!("{a}\t{s}"),
            }
            if s != Status::Ok {
                not_ok += 1;
                if count == 1 {
                    eprintln!("address {a}: {}", explain(s));
                }
            }
        }
    }
    Ok(not_ok)
}

/// COUNT consecutive addresses from ADDR, stopping short of overflow.
fn addresses(addr: u64, count: u32) -> Vec<u64> {
    (0..u64::from(count))
        .filter_map(|i| addr.checked_add(i))
        .collect()
}

fn seal(c: &mut UnitClient, format: Format, new: u64) -> Result<(), CliError> {
    let s = c.seal(new)?;
    if !s.sealed {
        return Err(failed!(
            "epoch {new} is not higher than the unit's sealed epoch {}; seal at {} or higher (tail {})",
            s.sealed_epoch,
            s.sealed_epoch + 1,
            s.tail
        ));
    }
    match format {
        Format::Json => print_json(&serde_json::json!({
            "sealed_epoch": s.sealed_epoch,
            "tail": s.tail,
        })),
        Format::Table => println!("sealed at epoch {}; tail {}", s.sealed_epoch, s.tail),
    }
    Ok(())
}

/// `trex unit info -w json` (docs/cli.md).
#[derive(Serialize)]
struct InfoJson<'a> {
    node: &'a str,
    sealed_epoch: u64,
    trim_mark: u64,
    tail: u64,
    entries: u64,
    junk: u64,
    corrupt: u64,
    segments: u32,
    segment_size_bytes: u64,
    used_bytes: u64,
    sync: &'static str,
    poisoned: bool,
    full: bool,
    version: Option<String>,
    revision: Option<String>,
}

fn info(c: &mut UnitClient, node: &str, format: Format) -> Result<(), CliError> {
    let i = c.info()?;
    // Asked last: a unit older than `node-info` refuses it and closes the
    // connection; its version is then unknown.
    let build = c.node_info().ok();
    let sync = if i.flags & INFO_SYNC_NEVER != 0 {
        "never"
    } else if i.flags & INFO_IO_URING != 0 {
        "always (io_uring)"
    } else {
        "always (sync thread)"
    };
    let poisoned = i.flags & INFO_POISONED != 0;
    let full = i.flags & INFO_FULL != 0;
    match format {
        Format::Json => print_json(&InfoJson {
            node,
            sealed_epoch: i.sealed_epoch,
            trim_mark: i.trim_mark,
            tail: i.tail,
            entries: i.entries,
            junk: i.junk,
            corrupt: i.corrupt,
            segments: i.segments,
            segment_size_bytes: i.segment_size_bytes,
            used_bytes: i.used_bytes,
            sync,
            poisoned,
            full,
            version: build.as_ref().map(|b| b.version.clone()),
            revision: build.as_ref().map(|b| b.revision.clone()),
        }),
        Format::Table => {
            let version = build.map_or_else(
                || "unknown".to_string(),
                |b| format!("{} (git {})", b.version, b.revision),
            );
            let rows = [
                ("node", node.to_string()),
                ("version", version),
                ("sealed epoch", i.sealed_epoch.to_string()),
                ("trim mark", i.trim_mark.to_string()),
                ("tail", i.tail.to_string()),
                ("entries", i.entries.to_string()),
                ("junk", i.junk.to_string()),
                ("corrupt", i.corrupt.to_string()),
                ("segments", i.segments.to_string()),
                ("segment size", format!("{} bytes", i.segment_size_bytes)),
                ("used", format!("{} bytes", i.used_bytes)),
                ("sync", sync.to_string()),
                ("poisoned", poisoned.to_string()),
                ("full", full.to_string()),
            ];
            for (k, v) in rows {
                println!("{k:<14}{v}");
            }
        }
    }
    Ok(())
}

/// A status in words, with what to do about it.
fn explain(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Written => "written: the address already holds another value",
        Status::Junk => "junk: the address was filled (a hole)",
        Status::Unwritten => "unwritten: nothing is stored at this address",
        Status::Trimmed => "trimmed: the address is below the trim mark",
        Status::Full => "full: the unit has no room; trim the log or add space",
        Status::Io => "io: an I/O error; for a read, read another replica (repair rewrites this copy); after a failed write the unit is poisoned: restart it",
        Status::Corrupt => "corrupt: the stored record fails its checksum; read another replica",
        Status::TooLarge => "too-large: the entry exceeds the unit's limit",
        Status::Deferred => "deferred: the reply was full; ask again for this address",
        Status::OutOfRange => "out-of-range: address 18446744073709551615 (u64::MAX) is reserved",
    }
}

/// A writer id for one command-line write: different for each invocation
/// unless `--writer` pins it (to retry a write idempotently).
fn default_writer() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t << 16) ^ u64::from(std::process::id()) | 1
}
