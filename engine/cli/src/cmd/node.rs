//! `trex node storage|consensus|sequencer`: run one node in the foreground.

use crate::common::check_endpoints;
use crate::error::{usage, CliError};
use clap::{Args, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use trex_consensus::client::DEFAULT_ENDPOINTS;
use trex_consensus::node::{run_consensus, ConsensusOptions};
use trex_consensus::sm::Role;
use trex_net::metrics::{BuildInfo, MetricsConfig};
use trex_net::util::{parse_duration, parse_size};
use trex_net::LoopConfig;
use trex_sequencer::{run_sequencer, SequencerOptions};
use trex_unit::node::{run_storage, StorageOptions};
use trex_unit::storage::mmap::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Run a storage unit.
    Storage(StorageArgs),
    /// Run a consensus node (Multi-Paxos: membership, layout).
    Consensus(ConsensusArgs),
    /// Run a sequencer (serves tokens only while it holds the sequencer lease).
    Sequencer(SequencerArgs),
}

/// Connection deadlines every server applies (`trex_net::LoopConfig`).
#[derive(Args)]
pub struct ConnArgs {
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
}

impl ConnArgs {
    /// The loop's limits with these deadlines; a zero duration is a usage error.
    fn limits(&self, base: LoopConfig) -> Result<LoopConfig, CliError> {
        if self.idle_timeout.is_zero() || self.frame_timeout.is_zero() {
            return Err(usage!(
                "--idle-timeout and --frame-timeout must be above 0 (got {:?} and {:?})",
                self.idle_timeout,
                self.frame_timeout
            ));
        }
        Ok(LoopConfig {
            idle_timeout: self.idle_timeout,
            frame_timeout: self.frame_timeout,
            ..base
        })
    }

    /// Where to serve metrics, if anywhere, and what this build is.
    fn metrics(&self) -> Option<MetricsConfig> {
        let build = BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            revision: env!("TREX_GIT_REVISION"),
        };
        self.metrics_listen
            .map(|listen| MetricsConfig { listen, build })
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
    #[arg(long, default_value_t = 0)]
    cluster_id: u32,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Args)]
pub struct ConsensusArgs {
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
    #[command(flatten)]
    conn: ConnArgs,
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
        if a.listen.port() == 0 {
            return Err(usage!(
                "--listen {} with --endpoints: a unit registers the address it listens on, and port 0 is not one clients can reach; choose a port",
                a.listen
            ));
        }
    }
    let opts = StorageOptions {
        listen: a.listen,
        data_dir: a.data_dir,
        segment_size: a.segment_size,
        sync_never: a.sync == SyncMode::Never,
        cluster_id: a.cluster_id,
        metrics: a.conn.metrics(),
        limits: a.conn.limits(LoopConfig {
            max_connections: a.max_connections,
            max_inflight: a.max_inflight.max(1),
            ..LoopConfig::default()
        })?,
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

fn sequencer(a: SequencerArgs) -> Result<(), CliError> {
    // Checked again by the sequencer; here so that it is a usage error.
    if a.safety_gap >= a.ttl {
        return Err(usage!(
            "--safety-gap {:?} must be below --ttl {:?}",
            a.safety_gap,
            a.ttl
        ));
    }
    check_endpoints(&a.endpoints, "--endpoints (or TREX_ENDPOINTS)")?;
    if a.listen.port() == 0 {
        return Err(usage!(
            "--listen {}: a sequencer registers the address it listens on, and port 0 is not one clients can reach; choose a port",
            a.listen
        ));
    }
    Ok(run_sequencer(&SequencerOptions {
        listen: a.listen,
        endpoints: a.endpoints,
        id: a.id.unwrap_or(u64::from(a.listen.port())),
        ttl: a.ttl,
        safety_gap: a.safety_gap,
        limits: a.conn.limits(LoopConfig::default())?,
        repair_every: (!a.repair_every.is_zero()).then_some(a.repair_every),
        replicas: a.replicas,
        cluster_id: a.cluster_id,
        metrics: a.conn.metrics(),
    })?)
}

fn consensus(a: ConsensusArgs) -> Result<(), CliError> {
    // Checked again by the node; here so that it is a usage error.
    let n = a.peers.len() as u64;
    if a.id == 0 || a.id > n {
        return Err(usage!(
            "--id {} is not a position in --peers (1 to {n})",
            a.id
        ));
    }
    Ok(run_consensus(&ConsensusOptions {
        id: a.id,
        listen: a.listen,
        peers: a.peers,
        data_dir: a.data_dir,
        election_ms: a.election_timeout.as_millis().max(1) as u64,
        heartbeat_ms: a.heartbeat.as_millis().max(1) as u64,
        limits: a.conn.limits(LoopConfig::default())?,
        cluster_id: a.cluster_id,
        metrics: a.conn.metrics(),
    })?)
}
