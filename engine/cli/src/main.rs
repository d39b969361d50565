//! `trex`: run Trex Corfu nodes and talk to them.

mod error;
mod up;

use error::{failed, usage, CliError};

use crate::up::{run_up, UpOptions};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use trex_consensus::client::{ConsensusClient, Submit, DEFAULT_ENDPOINTS};
use trex_consensus::lock::{Lease, LockClient};
use trex_consensus::node::{run_consensus, ConsensusOptions};
use trex_consensus::sm::{decode_projection, Op, Projection, Role};
use trex_log::{Log, Slot};
use trex_net::unit_client::{ClientError, UnitApi, UnitClient};
use trex_net::util::{parse_duration, parse_size};
use trex_net::LoopConfig;
use trex_sequencer::{run_sequencer, SequencerOptions};
use trex_unit::node::{run_storage, StorageOptions};
use trex_wire::ops::Refusal;
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
    /// List the cluster's members (linearizable read through the consensus log).
    Members(ShowArgs),
    /// Show or bootstrap the layout (projections).
    #[command(subcommand)]
    Layout(LayoutCmd),
    /// Consensus endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Advisory locks with leases and fencing tokens.
    #[command(subcommand)]
    Lock(LockCmd),
    /// Start a whole local cluster (3 consensus nodes, 2 sequencers, 4 storage
    /// units as 2 stripes x 2 replicas) and run until Ctrl-C.
    Up {
        /// Data directory of every node (reused when run again).
        #[arg(long, default_value = "./trex-data")]
        data_dir: PathBuf,
        /// Consensus nodes listen from this port, sequencers from +10, units from +20.
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
        /// Consensus nodes.
        #[arg(long, default_value_t = 3)]
        consensus: u16,
        /// Sequencers.
        #[arg(long, default_value_t = 2)]
        sequencers: u16,
        /// Storage units.
        #[arg(long, default_value_t = 4)]
        units: u16,
        /// Stripes of the first layout.
        #[arg(long, default_value_t = 2)]
        stripes: u32,
        /// Replicas per stripe.
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        /// Storage units' sync mode (`never` for benchmarks only).
        #[arg(long, value_enum, default_value = "always")]
        sync: SyncMode,
        /// Let the active sequencer repair this often (`trex node sequencer
        /// --repair-every`): units that stop answering are replaced by spares
        /// (start some with --units above stripes x replicas).
        #[arg(long, value_parser = parse_duration)]
        repair_every: Option<Duration>,
    },
    /// Append DATA as one entry, or with `-` each line of standard input; prints
    /// the address of each.
    Append {
        #[command(flatten)]
        ep: Endpoints,
        /// The entry, or `-`.
        data: String,
    },
    /// Read entries from the log.
    Read {
        #[command(flatten)]
        ep: Endpoints,
        /// First address.
        addr: u64,
        /// How many addresses.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Print the log from an address to its tail; with --follow, keep following.
    Tail {
        #[command(flatten)]
        ep: Endpoints,
        /// First address.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep waiting for new entries (fills holes that stay unwritten for 1 s).
        #[arg(long)]
        follow: bool,
    },
    /// Trim the log below PREFIX.
    Trim {
        #[command(flatten)]
        ep: Endpoints,
        /// New trim mark.
        prefix: u64,
    },
    /// One past the highest address written (asks the storage units), or with
    /// --fast the next address the sequencer would hand out.
    Check {
        #[command(flatten)]
        ep: Endpoints,
        /// Ask the sequencer instead (one round trip; counts addresses handed
        /// out but not yet written).
        #[arg(long)]
        fast: bool,
    },
    /// Restore replication after a storage unit was taken out: empty spare
    /// units (registered, in no chain) join the short chains, and the old range
    /// is copied to them. Resumable: after an interruption, run it again.
    Repair {
        #[command(flatten)]
        ep: Endpoints,
        /// Replicas every chain should have (default: as many as the longest
        /// chain has now).
        #[arg(long)]
        replicas: Option<usize>,
    },
    /// The cluster at a glance: layout, sequencer lease, every unit's tail.
    Status(ShowArgs),
    /// Ask a sequencer for COUNT consecutive log addresses.
    Token {
        /// The sequencer, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:7410")]
        node: String,
        /// How many addresses.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
}

#[derive(Subcommand)]
enum LockCmd {
    /// Take a lock; fails (exit 1) if someone holds it.
    Acquire {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
        /// Lease length.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
        /// Who holds it (default: HOSTNAME:PID).
        #[arg(long)]
        holder: Option<String>,
    },
    /// Extend a lease that has not expired.
    Renew {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
        /// The lease's fencing token.
        #[arg(long)]
        token: u64,
        /// New lease length from now.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Give a lock up.
    Release {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
        /// The lease's fencing token.
        #[arg(long)]
        token: u64,
    },
    /// Show a lock's lease.
    Show {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
    },
    /// Hold a lock while a command runs: wait for it, renew it every third of
    /// the TTL, release it when the command exits (exit code passed on). The
    /// command gets TREX_LOCK_NAME and TREX_LOCK_TOKEN; if the lease is lost, it
    /// gets SIGTERM and `trex` exits with 3.
    Run {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
        /// Lease length.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
        /// Who holds it (default: HOSTNAME:PID).
        #[arg(long)]
        holder: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Args)]
struct Endpoints {
    /// Consensus nodes, comma-separated HOST:PORT (else TREX_ENDPOINTS, else
    /// ./trex-data/endpoints, else the three default addresses).
    #[arg(long, global = true)]
    endpoints: Option<String>,
    /// How long to wait for one reply.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct ShowArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    format: Format,
}

#[derive(Subcommand)]
enum LayoutCmd {
    /// Show the current projection.
    Show(ShowArgs),
    /// Install the first projection from the registered storage units.
    Init {
        #[command(flatten)]
        ep: Endpoints,
        /// Stripes.
        #[arg(long, default_value_t = 2)]
        stripes: u32,
        /// Replicas per stripe (chain length).
        #[arg(long, default_value_t = 2)]
        replicas: u32,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Each consensus node's view: leader, ballot, commit and applied index, journal size.
    Status(ShowArgs),
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Run a storage unit.
    Storage(StorageArgs),
    /// Run a consensus node (Multi-Paxos: membership, layout).
    Consensus(ConsensusArgs),
    /// Run a sequencer (serves tokens only while it holds the sequencer lease).
    Sequencer(SequencerArgs),
}

#[derive(Args)]
struct SequencerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7410")]
    listen: SocketAddr,
    /// Consensus nodes, comma-separated HOST:PORT.
    #[arg(long, env = "TREX_ENDPOINTS", default_value = DEFAULT_ENDPOINTS)]
    endpoints: String,
    /// Node id to register under (default: the listen port).
    #[arg(long)]
    id: Option<u64>,
    /// Length of the sequencer lease.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    ttl: Duration,
    /// Stop serving this long before the lease could lapse (covers clock drift
    /// against the consensus leader).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    safety_gap: Duration,
    /// While this sequencer is active, run `trex repair` this often: take out
    /// storage units that stopped answering and let empty spares replace them
    /// (default: never; leave it to the operator).
    #[arg(long, value_parser = parse_duration)]
    repair_every: Option<Duration>,
    /// With --repair-every: replicas every chain should have (default: the
    /// longest chain seen).
    #[arg(long)]
    replicas: Option<usize>,
    /// Cluster id that frames must carry (sent to the consensus nodes and
    /// storage units too).
    #[arg(long, default_value_t = 0)]
    cluster_id: u32,
}

#[derive(Args)]
struct ConsensusArgs {
    /// This node's id: its position in --peers, from 1.
    #[arg(long)]
    id: u64,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Every consensus node's address, in id order, comma-separated.
    #[arg(
        long,
        default_value = "127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402",
        value_delimiter = ','
    )]
    peers: Vec<SocketAddr>,
    /// Directory for the journal (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Base election timeout (the actual one is random between 1x and 2x).
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    election_timeout: Duration,
    /// Leader heartbeat interval.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Cluster id that client and peer frames must carry (sent to the peers too).
    #[arg(long, default_value_t = 0)]
    cluster_id: u32,
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
    /// Register with these consensus nodes (comma-separated HOST:PORT) and keep
    /// the registration fresh; without it the unit runs standalone.
    #[arg(long)]
    endpoints: Option<String>,
    /// Node id to register under (default: the listen port).
    #[arg(long)]
    id: Option<u64>,
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
    let result = run(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

/// Where the consensus nodes are: `--endpoints`, else `TREX_ENDPOINTS`, else
/// the file `./trex-data/endpoints`, else the defaults.
fn resolve_endpoints(ep: &Endpoints) -> String {
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

fn consensus_client(ep: &Endpoints) -> Result<ConsensusClient, CliError> {
    Ok(ConsensusClient::new(&resolve_endpoints(ep), ep.timeout)?)
}

fn members_cmd(a: ShowArgs) -> Result<(), CliError> {
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
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
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

fn print_projection(p: &Projection) {
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

fn layout_show(a: ShowArgs) -> Result<(), CliError> {
    let (n, p) = consensus_client(&a.ep)?.layout()?;
    let Some(p) = p else {
        return Err("no layout is installed yet; bootstrap one with `trex layout init --stripes 2 --replicas 2`".into());
    };
    match a.format {
        Format::Json => {
            let segs: Vec<String> = p
                .segments
                .iter()
                .map(|s| {
                    let stripes: Vec<String> = s.stripes.iter().map(|c| format!("{c:?}")).collect();
                    let end = if s.end == u64::MAX {
                        "null".to_string()
                    } else {
                        s.end.to_string()
                    };
                    format!(
                        "{{\"start\":{},\"end\":{end},\"stripes\":[{}]}}",
                        s.start,
                        stripes.join(",")
                    )
                })
                .collect();
            println!(
                "{{\"epoch\":{},\"sequencer\":{},\"history\":{n},\"segments\":[{}]}}",
                p.epoch,
                p.sequencer,
                segs.join(",")
            );
        }
        Format::Table => {
            print_projection(&p);
            println!("history    {n} projections");
        }
    }
    Ok(())
}

fn endpoint_status(a: ShowArgs) -> Result<(), CliError> {
    let eps = resolve_endpoints(&a.ep);
    let mut rows = Vec::new();
    let mut reachable = 0;
    for ep in eps.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let st = ConsensusClient::node_status(ep, a.ep.timeout);
        reachable += usize::from(st.is_ok());
        rows.push((ep.to_string(), st));
    }
    match a.format {
        Format::Json => {
            let items: Vec<String> = rows
                .iter()
                .map(|(ep, st)| match st {
                    Ok(s) => format!(
                        "{{\"endpoint\":\"{ep}\",\"id\":{},\"leader\":{},\"leading\":{},\"ballot\":\"{}.{}\",\"commit\":{},\"applied\":{},\"snapshot\":{},\"journal_bytes\":{}}}",
                        s.id, s.leader, s.leading, s.promised.counter, s.promised.node, s.commit, s.applied, s.snapshot, s.journal_bytes
                    ),
                    Err(e) => format!("{{\"endpoint\":\"{ep}\",\"error\":{e:?}}}"),
                })
                .collect();
            println!("[{}]", items.join(","));
        }
        Format::Table => {
            println!(
                "{:<22}{:<5}{:<8}{:<9}{:<10}{:<10}{:<10}JOURNAL",
                "ENDPOINT", "ID", "LEADER", "BALLOT", "COMMIT", "APPLIED", "SNAPSHOT"
            );
            for (ep, st) in &rows {
                match st {
                    Ok(s) => println!(
                        "{ep:<22}{:<5}{:<8}{:<9}{:<10}{:<10}{:<10}{} bytes",
                        s.id,
                        if s.leading {
                            "self".to_string()
                        } else if s.leader == 0 {
                            "-".to_string()
                        } else {
                            s.leader.to_string()
                        },
                        format!("{}.{}", s.promised.counter, s.promised.node),
                        s.commit,
                        s.applied,
                        s.snapshot,
                        s.journal_bytes
                    ),
                    Err(e) => println!("{ep:<22}unreachable: {e}"),
                }
            }
        }
    }
    if reachable == 0 {
        return Err(
            "no consensus node answered; start them with `trex node consensus` (or `trex up`)"
                .into(),
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
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
            if let Some(ep) = a.endpoints {
                // Before the registration thread exists, so that only the event
                // loop sees SIGINT/SIGTERM.
                trex_net::block_shutdown_signals().map_err(|e| e.to_string())?;
                let id = a.id.unwrap_or(u64::from(a.listen.port()));
                trex_consensus::client::keep_registered(
                    ep,
                    id,
                    Role::Storage,
                    a.listen.to_string(),
                    a.cluster_id,
                );
            }
            Ok(run_storage(&opts)?)
        }
        Cmd::Node(NodeCmd::Sequencer(a)) => run_sequencer(&SequencerOptions {
            listen: a.listen,
            endpoints: a.endpoints,
            id: a.id.unwrap_or(u64::from(a.listen.port())),
            ttl: a.ttl,
            safety_gap: a.safety_gap,
            limits: LoopConfig::default(),
            repair_every: a.repair_every,
            replicas: a.replicas,
            cluster_id: a.cluster_id,
        })
        .map_err(CliError::from),
        Cmd::Node(NodeCmd::Consensus(a)) => run_consensus(&ConsensusOptions {
            id: a.id,
            listen: a.listen,
            peers: a.peers,
            data_dir: a.data_dir,
            election_ms: a.election_timeout.as_millis().max(1) as u64,
            heartbeat_ms: a.heartbeat.as_millis().max(1) as u64,
            limits: LoopConfig::default(),
            cluster_id: a.cluster_id,
        })
        .map_err(CliError::from),
        Cmd::Unit(u) => unit_cmd(u),
        Cmd::Members(a) => members_cmd(a),
        Cmd::Layout(LayoutCmd::Show(a)) => layout_show(a),
        Cmd::Layout(LayoutCmd::Init {
            ep,
            stripes,
            replicas,
        }) => {
            let mut c = consensus_client(&ep)?;
            let b = c.submit_ok(&Op::InitLayout { stripes, replicas })?;
            let p = decode_projection(&mut trex_wire::Reader::new(&b))
                .map_err(|e| failed!("bad layout from the consensus group: {e}"))?;
            print_projection(&p);
            Ok(())
        }
        Cmd::Endpoint(EndpointCmd::Status(a)) => endpoint_status(a),
        Cmd::Lock(cmd) => lock_cmd(cmd),
        Cmd::Up {
            data_dir,
            base_port,
            consensus,
            sequencers,
            units,
            stripes,
            replicas,
            sync,
            repair_every,
        } => run_up(&UpOptions {
            data_dir,
            base_port,
            consensus,
            sequencers,
            units,
            stripes,
            replicas,
            sync: if sync == SyncMode::Never {
                "never".into()
            } else {
                "always".into()
            },
            repair_every,
        }),
        Cmd::Append { ep, data } => {
            let mut log = Log::connect(&resolve_endpoints(&ep))?;
            if data == "-" {
                let stdin = std::io::stdin();
                let mut lines: Vec<String> = Vec::new();
                let flush = |log: &mut Log, lines: &mut Vec<String>| -> Result<(), CliError> {
                    let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
                    for a in log.append_batch(&refs)? {
                        println!("{a}");
                    }
                    lines.clear();
                    Ok(())
                };
                for line in std::io::BufRead::lines(stdin.lock()) {
                    lines.push(line.map_err(|e| format!("cannot read standard input: {e}"))?);
                    if lines.len() == 1000 {
                        flush(&mut log, &mut lines)?;
                    }
                }
                if !lines.is_empty() {
                    flush(&mut log, &mut lines)?;
                }
            } else {
                println!("{}", log.append(data.as_bytes())?);
            }
            Ok(())
        }
        Cmd::Read { ep, addr, count } => {
            let mut log = Log::connect(&resolve_endpoints(&ep))?;
            let mut a = addr;
            while a < addr.saturating_add(count) {
                let n = (addr.saturating_add(count) - a).min(4096);
                for (k, s) in log.read_range(a, n)?.into_iter().enumerate() {
                    print_slot(a + k as u64, &s);
                }
                a += n;
            }
            Ok(())
        }
        Cmd::Tail { ep, from, follow } => {
            let mut log = Log::connect(&resolve_endpoints(&ep))?;
            let end = log.check()?;
            let mut sub = log.subscribe(from, Duration::from_secs(1));
            while follow || sub.position() < end {
                let (a, s) = sub.next_entry()?;
                print_slot(a, &s);
            }
            Ok(())
        }
        Cmd::Trim { ep, prefix } => {
            Log::connect(&resolve_endpoints(&ep))?.trim(prefix)?;
            println!("trimmed below {prefix}");
            Ok(())
        }
        Cmd::Repair { ep, replicas } => {
            if replicas == Some(0) {
                return Err(usage!("--replicas must be at least 1"));
            }
            let mut log = Log::connect(&resolve_endpoints(&ep))?;
            let r = log.repair(replicas, &mut |line| eprintln!("{line}"))?;
            if r.joined.is_empty() {
                println!(
                    "nothing to repair: every chain is complete (layout epoch {})",
                    r.epoch
                );
            } else {
                let joined: Vec<String> = r
                    .joined
                    .iter()
                    .map(|(s, u)| format!("unit {u} -> stripe {s}"))
                    .collect();
                println!(
                    "repaired: {}; {} entries and {} holes copied, {} already there; layout epoch {}",
                    joined.join(", "),
                    r.copied,
                    r.holes,
                    r.present,
                    r.epoch
                );
            }
            Ok(())
        }
        Cmd::Check { ep, fast } => {
            let mut log = Log::connect(&resolve_endpoints(&ep))?;
            println!(
                "{}",
                if fast {
                    log.check_fast()?
                } else {
                    log.check()?
                }
            );
            Ok(())
        }
        Cmd::Status(a) => cluster_status(a),
        Cmd::Token { node, count } => {
            let mut c =
                UnitClient::connect(&node, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            let (_, body) = c
                .call(trex_wire::Opcode::Token, 0, &|b| {
                    trex_wire::encode_token_request(b, count)
                })
                .map_err(|e| e.to_string())?;
            match trex_wire::decode_token_reply(&body).map_err(|e| e.to_string())? {
                trex_wire::TokenReply::Granted { epoch, first } => {
                    println!("epoch {epoch} first {first} count {count}");
                    Ok(())
                }
                trex_wire::TokenReply::NotSequencer { hint } if hint.is_empty() => Err(failed!(
                    "{node} is not the active sequencer and knows of none; is a layout installed?"
                )),
                trex_wire::TokenReply::NotSequencer { hint } => {
                    Err(failed!("{node} is not the active sequencer; ask {hint}"))
                }
            }
        }
    }
}

fn print_slot(addr: u64, s: &Slot) {
    match s {
        Slot::Data { data, .. } => println!("{addr}\t{}", escape(data)),
        Slot::Hole => println!("{addr}\t(hole)"),
        Slot::Unwritten => println!("{addr}\t(unwritten)"),
        Slot::Trimmed => println!("{addr}\t(trimmed)"),
    }
}

fn cluster_status(a: ShowArgs) -> Result<(), CliError> {
    let eps = resolve_endpoints(&a.ep);
    let log = Log::connect(&eps)?;
    let p = log.projection().clone();
    let mut c = ConsensusClient::new(&eps, a.ep.timeout)?;
    let members = c.members()?;
    let lease = LockClient::new(ConsensusClient::new(&eps, a.ep.timeout)?)
        .get(trex_sequencer::SEQUENCER_LOCK)
        .ok();
    // Every registered storage unit: those in a chain, then the others
    // ("spare" if empty and healthy: `trex repair` can use it; else "out").
    let in_layout: std::collections::BTreeSet<u64> = p
        .segments
        .iter()
        .flat_map(|s| s.stripes.iter().flatten().copied())
        .collect();
    let mut units = Vec::new();
    for (id, m) in members.iter().filter(|(_, m)| m.role == Role::Storage) {
        let info = UnitClient::connect(&m.addr, a.ep.timeout)
            .and_then(|mut u| u.info())
            .map_err(|e| e.to_string());
        let role = match &info {
            _ if in_layout.contains(id) => "chain",
            Ok(i) if i.tail == 0 && i.trim_mark == 0 && i.flags & INFO_POISONED == 0 => "spare",
            _ => "out",
        };
        units.push((*id, m.addr.clone(), info, role));
    }
    units.sort_by_key(|u| (u.3 != "chain", u.0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match a.format {
        Format::Json => {
            let us: Vec<String> = units
                .iter()
                .map(|(id, addr, i, role)| match i {
                    Ok(i) => format!(
                        "{{\"id\":{id},\"addr\":\"{addr}\",\"role\":\"{role}\",\"tail\":{},\"trim_mark\":{},\"sealed_epoch\":{},\"healthy\":{}}}",
                        i.tail, i.trim_mark, i.sealed_epoch, i.flags & INFO_POISONED == 0
                    ),
                    Err(e) => format!("{{\"id\":{id},\"addr\":\"{addr}\",\"role\":\"{role}\",\"healthy\":false,\"error\":{e:?}}}"),
                })
                .collect();
            let l = lease.as_ref().map_or("null".to_string(), |l| {
                format!(
                    "{{\"holder\":{:?},\"token\":{},\"expire_ms\":{}}}",
                    l.holder,
                    l.token,
                    l.expire_time_unsafe()
                )
            });
            println!(
                "{{\"epoch\":{},\"sequencer\":{},\"sequencer_lease\":{l},\"units\":[{}]}}",
                p.epoch,
                p.sequencer,
                us.join(",")
            );
        }
        Format::Table => {
            print_projection(&p);
            match &lease {
                Some(l) => println!(
                    "lease      {} (token {}), {}",
                    l.holder,
                    l.token,
                    if l.released {
                        "released".to_string()
                    } else {
                        format!(
                            "expires in {:.1}s",
                            (l.expire_time_unsafe() as i64 - now) as f64 / 1000.0
                        )
                    }
                ),
                None => println!("lease      none"),
            }
            println!(
                "{:<8}{:<7}{:<22}{:<10}{:<10}{:<8}HEALTH",
                "UNIT", "ROLE", "ADDRESS", "TAIL", "TRIM", "EPOCH"
            );
            for (id, addr, i, role) in &units {
                match i {
                    Ok(i) => println!(
                        "{id:<8}{role:<7}{addr:<22}{:<10}{:<10}{:<8}{}",
                        i.tail,
                        i.trim_mark,
                        i.sealed_epoch,
                        if i.flags & INFO_POISONED != 0 {
                            "poisoned"
                        } else {
                            "ok"
                        }
                    ),
                    Err(e) => println!("{id:<8}{role:<7}{addr:<22}unreachable: {e}"),
                }
            }
        }
    }
    Ok(())
}

fn default_holder() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    format!("{}:{}", host.trim(), std::process::id())
}

fn print_lease(l: &Lease) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i128);
    let left = l.expire_time_unsafe() as i128 - now;
    let state = if l.released {
        "released".to_string()
    } else if left > 0 {
        format!("expires in {:.1}s", left as f64 / 1000.0)
    } else {
        format!("expired {:.1}s ago", -left as f64 / 1000.0)
    };
    println!(
        "lock {:?} holder {:?} token {} expires {} (Unix ms; {state})",
        l.name,
        l.holder,
        l.token,
        l.expire_time_unsafe()
    );
}

fn lock_cmd(cmd: LockCmd) -> Result<(), CliError> {
    match cmd {
        LockCmd::Acquire {
            ep,
            name,
            ttl,
            holder,
        } => {
            let mut c = LockClient::new(consensus_client(&ep)?);
            let l = c.acquire(&name, &holder.unwrap_or_else(default_holder), ttl)?;
            print_lease(&l);
        }
        LockCmd::Renew {
            ep,
            name,
            token,
            ttl,
        } => print_lease(&LockClient::new(consensus_client(&ep)?).renew(&name, token, ttl)?),
        LockCmd::Release { ep, name, token } => {
            LockClient::new(consensus_client(&ep)?).release(&name, token)?;
            println!("released lock {name:?} (token {token})");
        }
        LockCmd::Show { ep, name } => {
            print_lease(&LockClient::new(consensus_client(&ep)?).get(&name)?)
        }
        LockCmd::Run {
            ep,
            name,
            ttl,
            holder,
            command,
        } => lock_run(&ep, &name, ttl, holder, &command)?,
    }
    Ok(())
}

fn lock_run(
    ep: &Endpoints,
    name: &str,
    ttl: Duration,
    holder: Option<String>,
    command: &[String],
) -> Result<(), CliError> {
    let holder = holder.unwrap_or_else(default_holder);
    let mut c = LockClient::new(consensus_client(ep)?);
    let mut told = false;
    let lease = loop {
        match c.acquire(name, &holder, ttl) {
            Ok(l) => break l,
            Err(e) if e.is_refused(Refusal::LockHeld) => {
                if !told {
                    eprintln!("waiting for {e}");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    eprintln!(
        "holding lock {name:?} with token {}; running {}",
        lease.token,
        command.join(" ")
    );
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("TREX_LOCK_NAME", name)
        .env("TREX_LOCK_TOKEN", lease.token.to_string())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", command[0]))?;
    let mut lost = None;
    let mut renewed_at = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        std::thread::sleep((ttl / 3).min(Duration::from_millis(100)));
        if lost.is_none() && renewed_at.elapsed() >= ttl / 3 {
            match c.renew(name, lease.token, ttl) {
                Ok(_) => renewed_at = std::time::Instant::now(),
                Err(e) => {
                    // The lease is gone: stop relying on it.
                    // SAFETY: signalling our own child process.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                    lost = Some(e);
                }
            }
        }
    };
    if let Some(e) = lost {
        eprintln!(
            "error: lost lock {name:?} while the command ran ({e}); the command was sent SIGTERM"
        );
        std::process::exit(3);
    }
    if let Err(e) = c.release(name, lease.token) {
        eprintln!(
            "warning: could not release lock {name:?}: {e}; it frees itself when the lease expires"
        );
    }
    std::process::exit(status.code().unwrap_or(1));
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

fn unit_cmd(u: UnitArgs) -> Result<(), CliError> {
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
                s => return Err(failed!("address {addr}: {}", explain(s))),
            }
        }
        UnitCmd::Read { addr, count, raw } => {
            if raw && count != 1 {
                return Err(usage!("--raw prints one entry; use --count 1"));
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
                return Err(failed!(
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
        return Err(failed!("{failed} address(es) not ok"));
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
