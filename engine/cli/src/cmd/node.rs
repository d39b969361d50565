//! `trex node storage|consensus|sequencer`: run one node in the foreground.

use crate::common::check_endpoints;
use crate::error::{failed, usage, CliError};
use clap::{Args, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use trex_consensus::client::DEFAULT_ENDPOINTS;
use trex_consensus::node::{run_consensus, ConsensusOptions};
use trex_consensus::sm::Role;
use trex_net::metrics::{BuildInfo, MetricsConfig};
use trex_net::util::{duration_text, parse_duration, parse_size};
use trex_net::LoopConfig;
use trex_sequencer::{run_sequencer, SequencerOptions};
use trex_unit::node::{run_storage, StorageOptions};
use trex_unit::storage::mmap::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};

/// What this binary is: its release and the git revision it was built from
/// (`trex --version`, every node's `node-info` reply and `trex_build_info`).
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    revision: env!("TREX_GIT_REVISION"),
};

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Run a storage unit.
    Storage(StorageArgs),
    /// Run a consensus node (Multi-Paxos: membership, layout).
    Consensus(ConsensusArgs),
    /// Run a sequencer (serves tokens only while it holds the sequencer lease).
    Sequencer(SequencerArgs),
}

/// Connection deadlines every server applies (`trex_net::LoopConfig`), and
/// the config file every role reads.
#[derive(Args)]
pub struct ConnArgs {
    /// A TOML file whose keys are this command's flags (`data-dir = "/var/lib/trex"`,
    /// `peers = ["10.0.0.1:7400", …]`); flags given here and `TREX_*`
    /// variables override it (docs/deploy.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Close a client connection that has nothing in flight and sends nothing
    /// for this long (clients reconnect on their next call).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Once a frame's first byte has arrived, the whole frame must arrive
    /// within this time, or the connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    frame_timeout: Duration,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics, with /healthz and
    /// /readyz beside them (docs/metrics.md). Off when absent.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// Connections served at once. At the limit a new connection closes one
    /// that trickles its first frame, else one idle or stuck for a second,
    /// never a consensus peer's link; else it is refused (docs/wire.md, Limits).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

impl ConnArgs {
    /// The loop's limits with these deadlines; a zero duration is a usage error.
    fn limits(&self, base: LoopConfig) -> Result<LoopConfig, CliError> {
        if self.max_connections == 0 {
            return Err(usage!(
                "--max-connections must be at least 1 (the default is 1024)"
            ));
        }
        if self.idle_timeout.is_zero() || self.frame_timeout.is_zero() {
            return Err(usage!(
                "--idle-timeout and --frame-timeout must be above 0 (got {} and {})",
                duration_text(self.idle_timeout),
                duration_text(self.frame_timeout)
            ));
        }
        Ok(LoopConfig {
            idle_timeout: self.idle_timeout,
            frame_timeout: self.frame_timeout,
            max_connections: self.max_connections,
            ..base
        })
    }

    /// Where to serve metrics, if anywhere.
    fn metrics(&self) -> Option<MetricsConfig> {
        self.metrics_listen.map(|listen| MetricsConfig { listen })
    }
}

#[derive(Args)]
pub struct SequencerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7410")]
    listen: SocketAddr,
    /// Consensus nodes, comma-separated HOST:PORT.
    #[arg(long, env = "TREX_ENDPOINTS", default_value = DEFAULT_ENDPOINTS)]
    endpoints: String,
    /// Node id to register under (default: the listen port).
    #[arg(long)]
    id: Option<u64>,
    /// The address clients should use (HOST:PORT), registered with the
    /// cluster instead of --listen.
    #[arg(long)]
    advertise: Option<String>,
    /// Length of the sequencer lease.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    ttl: Duration,
    /// Stop serving this long before the lease could lapse (covers clock drift
    /// against the consensus leader).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    safety_gap: Duration,
    /// While this sequencer is active, probe every storage unit of the layout
    /// this often; a unit that fails two probes in a row is taken out and empty
    /// spares replace it (`trex repair` without an operator). `0s` turns the
    /// failure detector off.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    repair_every: Duration,
    /// With --repair-every: replicas every chain should have (default: the
    /// longest chain seen).
    #[arg(long)]
    replicas: Option<usize>,
    /// Cluster id that frames must carry (sent to the consensus nodes and
    /// storage units too).
    #[arg(long, env = "TREX_CLUSTER_ID", default_value_t = 0)]
    cluster_id: u32,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Args)]
pub struct ConsensusArgs {
    /// This node's id: its position in --peers (from 1), or the ID of its
    /// `ID=HOST:PORT` entry.
    #[arg(long)]
    id: u64,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// The consensus group, comma-separated: HOST:PORT entries in id order
    /// (node 1 first), or ID=HOST:PORT entries. Read on the first start only
    /// (the data directory keeps it; the log records later changes). With
    /// --join: the running group's nodes, to learn the group from.
    #[arg(
        long,
        default_value = "127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402",
        value_delimiter = ','
    )]
    peers: Vec<String>,
    /// Join a running group: this node was added with `trex endpoint add ID
    /// HOST:PORT` and learns the log from the others (its --peers) before it
    /// votes.
    #[arg(long)]
    join: bool,
    /// Directory for the journal (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Base election timeout (the actual one is random between 1x and 2x).
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    election_timeout: Duration,
    /// Leader heartbeat interval.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Applied slots between checkpoints: the state machine is encoded and
    /// written as a new journal generation on a thread of its own, and the
    /// journal before it deleted. Lower keeps journals and restarts short;
    /// each checkpoint writes the whole state once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// Cluster id that client and peer frames must carry (sent to the peers too).
    #[arg(long, env = "TREX_CLUSTER_ID", default_value_t = 0)]
    cluster_id: u32,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SyncMode {
    /// Acknowledge a write only after an fdatasync covers it (group commit).
    Always,
    /// Acknowledge before syncing: loses acknowledged writes on a crash. Benchmarks only.
    Never,
}

#[derive(Args)]
pub struct StorageArgs {
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
    /// Requests in flight per connection before the unit stops reading it.
    #[arg(long, default_value_t = 1024)]
    max_inflight: usize,
    /// Cluster id that frames must carry.
    #[arg(long, env = "TREX_CLUSTER_ID", default_value_t = 0)]
    cluster_id: u32,
    /// Register with these consensus nodes (comma-separated HOST:PORT) and keep
    /// the registration fresh; without it the unit runs standalone.
    #[arg(long)]
    endpoints: Option<String>,
    /// Node id to register under (default: the one stored in the data
    /// directory, else a new random id).
    #[arg(long)]
    id: Option<u64>,
    /// The address clients should use (HOST:PORT), registered with the
    /// cluster instead of --listen (needed when listening on 0.0.0.0 or
    /// behind a NAT).
    #[arg(long)]
    advertise: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// The address a node registers: `--advertise`, else `--listen`, which must
/// then be one clients can reach (not a wildcard, not port 0).
fn advertised(listen: SocketAddr, advertise: Option<&str>, role: &str) -> Result<String, CliError> {
    if let Some(a) = advertise {
        crate::common::check_address(a, "--advertise", "10.0.0.5:7420")?;
        return Ok(a.to_string());
    }
    if listen.ip().is_unspecified() || listen.port() == 0 {
        return Err(usage!(
            "--listen {listen}: a {role} registers the address clients should use, and this is not one they can reach; pass --advertise HOST:PORT (or listen on a concrete address and port)"
        ));
    }
    Ok(listen.to_string())
}

pub fn run(cmd: NodeCmd) -> Result<(), CliError> {
    match cmd {
        NodeCmd::Storage(a) => storage(a),
        NodeCmd::Sequencer(a) => sequencer(a),
        NodeCmd::Consensus(a) => consensus(a),
    }
}

fn storage(a: StorageArgs) -> Result<(), CliError> {
    // The unit checks this too, but only after the registration thread could
    // have announced it; and a bad flag is a usage error.
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&a.segment_size) {
        return Err(usage!(
            "--segment-size {} is out of range: choose between 64KiB and 2GiB",
            a.segment_size
        ));
    }
    if let Some(ep) = &a.endpoints {
        check_endpoints(ep, "--endpoints")?;
    }
    // The address registered (with --endpoints): checked before anything starts.
    let addr = match &a.endpoints {
        Some(_) => advertised(a.listen, a.advertise.as_deref(), "storage unit")?,
        None => a.listen.to_string(),
    };
    let opts = StorageOptions {
        listen: a.listen,
        data_dir: a.data_dir,
        segment_size: a.segment_size,
        sync_never: a.sync == SyncMode::Never,
        cluster_id: a.cluster_id,
        metrics: a.conn.metrics(),
        build: BUILD,
        tls: crate::tls::loaded(),
        limits: a.conn.limits(LoopConfig {
            max_inflight: a.max_inflight.max(1),
            ..LoopConfig::default()
        })?,
    };
    let id = node_id(&opts.data_dir, a.id, a.listen.port())?;
    if let Some(ep) = a.endpoints {
        // Refused at once if a live node holds the id elsewhere; if the group
        // does not answer, the unit serves and registers when it does.
        register_first(&ep, id, Role::Storage, &addr, a.cluster_id)?;
        // Before the registration thread exists, so that only the event
        // loop sees SIGINT/SIGTERM.
        trex_net::block_shutdown_signals().map_err(|e| e.to_string())?;
        trex_consensus::client::keep_registered(ep, id, Role::Storage, addr, a.cluster_id);
    }
    Ok(run_storage(&opts)?)
}

fn sequencer(a: SequencerArgs) -> Result<(), CliError> {
    // Checked again by the sequencer; here so that it is a usage error.
    if a.safety_gap >= a.ttl {
        return Err(usage!(
            "--safety-gap {} must be below --ttl {}; shorten the gap or lengthen the lease",
            duration_text(a.safety_gap),
            duration_text(a.ttl)
        ));
    }
    check_endpoints(&a.endpoints, "--endpoints (or TREX_ENDPOINTS)")?;
    let addr = advertised(a.listen, a.advertise.as_deref(), "sequencer")?;
    Ok(run_sequencer(&SequencerOptions {
        listen: a.listen,
        advertise: Some(addr),
        endpoints: a.endpoints,
        id: a.id.unwrap_or(u64::from(a.listen.port())),
        ttl: a.ttl,
        safety_gap: a.safety_gap,
        limits: a.conn.limits(LoopConfig::default())?,
        repair_every: (!a.repair_every.is_zero()).then_some(a.repair_every),
        replicas: a.replicas,
        cluster_id: a.cluster_id,
        metrics: a.conn.metrics(),
        build: BUILD,
        tls: crate::tls::loaded(),
    })?)
}

/// Parses `--peers`: all `HOST:PORT` (ids 1, 2, … in order) or all
/// `ID=HOST:PORT`.
pub fn parse_peers(entries: &[String]) -> Result<Vec<(u64, SocketAddr)>, CliError> {
    let entries: Vec<&str> = entries
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(usage!(
            "--peers is empty; give the group's nodes as HOST:PORT,... or ID=HOST:PORT,..."
        ));
    }
    let with_ids = entries.iter().filter(|e| e.contains('=')).count();
    if with_ids != 0 && with_ids != entries.len() {
        return Err(usage!(
            "--peers mixes ID=HOST:PORT and HOST:PORT entries; give every entry one way"
        ));
    }
    let mut out: Vec<(u64, SocketAddr)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let (id, addr) = match e.split_once('=') {
            Some((id, addr)) => {
                let id = id
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|id| (1..=1u64 << 62).contains(id));
                let Some(id) = id else {
                    return Err(usage!(
                        "--peers entry \"{e}\": the id must be a number from 1 to 2^62"
                    ));
                };
                (id, addr.trim())
            }
            None => (i as u64 + 1, *e),
        };
        let addr: SocketAddr = addr.parse().map_err(|_| {
            usage!("--peers entry \"{e}\": \"{addr}\" is not IP:PORT (e.g. 10.0.0.1:7400)")
        })?;
        if out.iter().any(|(i, _)| *i == id) {
            return Err(usage!("--peers names node {id} twice"));
        }
        out.push((id, addr));
    }
    Ok(out)
}

fn consensus(a: ConsensusArgs) -> Result<(), CliError> {
    // Checked again by the node; here so that it is a usage error.
    let peers = parse_peers(&a.peers)?;
    if !a.join && !peers.iter().any(|(id, _)| *id == a.id) {
        let ids: Vec<String> = peers.iter().map(|(id, _)| id.to_string()).collect();
        return Err(usage!(
            "--id {} is not in --peers (ids {}); a node added to a running group starts with --join",
            a.id,
            ids.join(", ")
        ));
    }
    if a.id == 0 || a.id > 1 << 62 {
        return Err(usage!("--id {} is not between 1 and 2^62", a.id));
    }
    Ok(run_consensus(&ConsensusOptions {
        id: a.id,
        listen: a.listen,
        peers,
        join: a.join,
        data_dir: a.data_dir,
        election_ms: a.election_timeout.as_millis().max(1) as u64,
        heartbeat_ms: a.heartbeat.as_millis().max(1) as u64,
        checkpoint_every: a.checkpoint_every,
        limits: a.conn.limits(LoopConfig::default())?,
        cluster_id: a.cluster_id,
        metrics: a.conn.metrics(),
        build: BUILD,
        tls: crate::tls::loaded(),
    })?)
}

/// The file in a unit's data directory that holds its node id.
const NODE_ID_FILE: &str = "NODE_ID";

/// The node id of the unit whose data is in `dir`: the one stored there, else
/// `--id`, else (a directory holding data from before ids were stored: its
/// `--listen` port, the old default) or a new random id, stored for next
/// time. An `--id` that differs from the stored one is a usage error: the
/// data belongs to the stored id's chains.
fn node_id(dir: &std::path::Path, flag: Option<u64>, port: u16) -> Result<u64, CliError> {
    let path = dir.join(NODE_ID_FILE);
    let max = trex_wire::range::MAX_COUNTER;
    if let Some(id) = flag.filter(|id| *id == 0 || *id > max) {
        return Err(usage!("--id {id} is out of range: use 1 to {max}"));
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: u64 = text.trim().parse().map_err(|_| {
                failed!(
                    "{} does not hold a node id (it holds \"{}\"); restore it from a backup, or move the data directory away",
                    path.display(),
                    text.trim()
                )
            })?;
            if let Some(id) = flag.filter(|id| *id != stored) {
                return Err(usage!(
                    "data directory {} belongs to node id {stored}, not --id {id}: start it with --id {stored} (or without --id), or use another --data-dir",
                    dir.display()
                ));
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| failed!("cannot create {}: {e}", dir.display()))?;
            let has_data = std::fs::read_dir(dir).is_ok_and(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg")))
            });
            let id = match flag {
                Some(id) => id,
                None if has_data => u64::from(port),
                // Random, above the port range, far below 2^62.
                None => 65_536 + trex_net::util::random_u64() % (1 << 32),
            };
            let tmp = dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| failed!("cannot write {}: {e}", path.display()))?;
            trex_net::log_line!("INFO", "node id {id}, stored in {}", path.display());
            Ok(id)
        }
        Err(e) => Err(failed!("cannot read {}: {e}", path.display())),
    }
}

/// The first registration, synchronous: a live node holding `id` at another
/// address is an error now (exit 1) rather than a unit serving under a
/// stolen id. A group that does not answer is not: the registration thread
/// keeps trying.
fn register_first(
    endpoints: &str,
    id: u64,
    role: Role,
    addr: &str,
    cluster_id: u32,
) -> Result<(), CliError> {
    use trex_consensus::client::{ConsensusClient, Submit};
    let Ok(c) = ConsensusClient::new(endpoints, Duration::from_secs(2)) else {
        return Ok(());
    };
    let op = trex_consensus::sm::Op::Register {
        id,
        role,
        addr: addr.to_string(),
    };
    match c.with_cluster_id(cluster_id).submit_ok(&op) {
        Err(e) if e.is_refused(trex_wire::ops::Refusal::IdInUse) => {
            Err(failed!("cannot register as node {id}: {e}"))
        }
        _ => Ok(()),
    }
}
