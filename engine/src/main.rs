//! `trex`: run Trex Corfu nodes and talk to them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use trex_engine::client::{ClientError, UnitClient};
use trex_engine::net::LoopConfig;
use trex_engine::node::{run_storage, StorageOptions};
use trex_engine::util::{parse_duration, parse_size};
use trex_wire::{Status, WriteOp, INFO_IO_URING, INFO_POISONED, INFO_SYNC_NEVER};

#[derive(Parser)]
#[command(name = "trex", version, about = "Trex Corfu: a distributed shared log")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node in the foreground.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Talk directly to one storage unit (an operator's tool).
    Unit(UnitArgs),
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Run a storage unit.
    Storage(StorageArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SyncMode {
    /// Acknowledge a write only after an fdatasync covers it (group commit).
    Always,
    /// Acknowledge before syncing: loses acknowledged writes on a crash. Benchmarks only.
    Never,
}

#[derive(Args)]
struct StorageArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Directory for segment files (created if missing; locked while running).
    #[arg(long)]
    data_dir: PathBuf,
    /// When to sync writes before acknowledging them.
    #[arg(long, value_enum, default_value = "always")]
    sync: SyncMode,
    /// Size of each segment file (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    segment_size: u64,
    /// Connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Requests in flight per connection before the unit stops reading it.
    #[arg(long, default_value_t = 1024)]
    max_inflight: usize,
    /// Cluster id that frames must carry.
    #[arg(long, default_value_t = 0)]
    cluster_id: u32,
}

#[derive(Args)]
struct UnitArgs {
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
    /// Cluster id to send.
    #[arg(long, global = true, default_value_t = 0)]
    cluster_id: u32,
    /// How long to wait for a reply.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    cmd: UnitCmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
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
    /// Show the unit's state.
    Info {
        /// Output format.
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
        format: Format,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Node(NodeCmd::Storage(a)) => {
            let opts = StorageOptions {
                listen: a.listen,
                data_dir: a.data_dir,
                segment_size: a.segment_size,
                sync_never: a.sync == SyncMode::Never,
                cluster_id: a.cluster_id,
                limits: LoopConfig {
                    max_connections: a.max_connections,
                    max_inflight: a.max_inflight.max(1),
                    ..LoopConfig::default()
                },
            };
            run_storage(&opts)
        }
        Cmd::Unit(u) => unit_cmd(u),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn escape(data: &[u8]) -> String {
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

fn explain(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Written => "written: the address already holds another value",
        Status::Junk => "junk: the address was filled (a hole)",
        Status::Unwritten => "unwritten: nothing is stored at this address",
        Status::Trimmed => "trimmed: the address is below the trim mark",
        Status::Full => "full: the unit has no room; trim the log or add space",
        Status::Io => "io: the unit failed to write and is poisoned; restart it",
        Status::Corrupt => "corrupt: the stored record fails its checksum; read another replica",
        Status::TooLarge => "too-large: the entry exceeds the unit's limit",
        Status::Deferred => "deferred: the reply was full; ask again for this address",
        Status::OutOfRange => "out-of-range: address 18446744073709551615 (u64::MAX) is reserved",
    }
}

fn unit_cmd(u: UnitArgs) -> Result<(), String> {
    let mut c = UnitClient::connect(&u.node, u.timeout).map_err(|e| e.to_string())?;
    c.cluster_id = u.cluster_id;
    let err = |e: ClientError| e.to_string();
    let epoch = match (u.epoch, &u.cmd) {
        (Some(e), _) => e,
        (None, UnitCmd::Info { .. } | UnitCmd::Seal { .. }) => 0,
        (None, _) => c.info().map_err(err)?.sealed_epoch,
    };
    let mut failed = 0usize;
    match u.cmd {
        UnitCmd::Write {
            addr,
            data,
            writer,
            seq,
        } => {
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
            let st = c
                .write(
                    epoch,
                    &[WriteOp {
                        addr,
                        writer,
                        seq,
                        data: &bytes,
                    }],
                )
                .map_err(err)?;
            match st[0] {
                Status::Ok => println!(
                    "{addr}\tok\twriter={writer}\tseq={seq}\tlen={}",
                    bytes.len()
                ),
                s => return Err(format!("address {addr}: {}", explain(s))),
            }
        }
        UnitCmd::Read { addr, count, raw } => {
            if raw && count != 1 {
                return Err("--raw prints one entry; use --count 1".into());
            }
            let addrs: Vec<u64> = (0..u64::from(count))
                .filter_map(|i| addr.checked_add(i))
                .collect();
            let mut out = std::io::stdout().lock();
            for chunk in addrs.chunks(4096) {
                for item in c.read(epoch, chunk).map_err(err)? {
                    if raw && item.status == Status::Ok {
                        out.write_all(&item.data).map_err(|e| e.to_string())?;
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
                        failed += usize::from(item.status != Status::Junk);
                        let _ = writeln!(out, "{}\t{}", item.addr, item.status);
                        if count == 1 {
                            eprintln!("address {}: {}", item.addr, explain(item.status));
                        }
                    }
                }
            }
        }
        UnitCmd::Fill { addr, count } => {
            let addrs: Vec<u64> = (0..u64::from(count))
                .filter_map(|i| addr.checked_add(i))
                .collect();
            for chunk in addrs.chunks(4096) {
                for (a, s) in chunk.iter().zip(c.fill(epoch, chunk).map_err(err)?) {
                    println!("{a}\t{s}");
                    if s != Status::Ok {
                        failed += 1;
                        if count == 1 {
                            eprintln!("address {a}: {}", explain(s));
                        }
                    }
                }
            }
        }
        UnitCmd::Trim { prefix } => {
            let mark = c.trim(epoch, prefix).map_err(err)?;
            println!("trim mark {mark}");
        }
        UnitCmd::Seal { epoch: new } => {
            let s = c.seal(new).map_err(err)?;
            if !s.sealed {
                return Err(format!(
                    "epoch {new} is not higher than the unit's sealed epoch {}; seal at {} or higher (tail {})",
                    s.sealed_epoch,
                    s.sealed_epoch + 1,
                    s.tail
                ));
            }
            println!("sealed at epoch {}; tail {}", s.sealed_epoch, s.tail);
        }
        UnitCmd::Info { format } => {
            let i = c.info().map_err(err)?;
            let sync = if i.flags & INFO_SYNC_NEVER != 0 {
                "never"
            } else if i.flags & INFO_IO_URING != 0 {
                "always (io_uring)"
            } else {
                "always (sync thread)"
            };
            let poisoned = i.flags & INFO_POISONED != 0;
            match format {
                Format::Json => println!(
                    "{{\"node\":\"{}\",\"sealed_epoch\":{},\"trim_mark\":{},\"tail\":{},\"entries\":{},\"junk\":{},\"corrupt\":{},\"segments\":{},\"segment_size_bytes\":{},\"used_bytes\":{},\"sync\":\"{}\",\"poisoned\":{}}}",
                    u.node, i.sealed_epoch, i.trim_mark, i.tail, i.entries, i.junk, i.corrupt, i.segments,
                    i.segment_size_bytes, i.used_bytes, sync, poisoned
                ),
                Format::Table => {
                    let rows = [
                        ("node", u.node.clone()),
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
                    ];
                    for (k, v) in rows {
                        println!("{k:<14}{v}");
                    }
                }
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} address(es) not ok"));
    }
    Ok(())
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
