//! `trex-bench`: load generators for Trex Corfu, closed or open loop.
//!
//! This file parses and checks the command line (every check before anything
//! connects), prepares the workload, runs it under the driver (`run.rs`) and
//! writes what was measured (`report.rs`, `plot.rs`). The workloads are in
//! `log_load.rs`, `node_load.rs`, `consensus_load.rs` and `etcd.rs`.

mod consensus_load;
mod etcd;
mod log_load;
mod node_load;
mod plot;
mod report;
mod run;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::serialization::V2DeflateSerializer;
use report::{fmt_duration, HistogramLog, RunInfo, Summary};
use run::{ClientFn, Pace};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use trex_net::unit_client::{UnitApi, UnitClient};
use trex_net::util::{parse_duration, parse_size};
use trex_wire as wire;

const ABOUT: &str = "Load generators for Trex Corfu (and etcd, to compare with)";

const LONG_ABOUT: &str = "Load generators for Trex Corfu (and etcd, to compare with).

Closed loop (the default): each client sends its next request when its last one
is answered; latency counts from the send. This finds the peak throughput, and
hides stalls: while a request waits, the client sends nothing else.

Open loop (--rate OPS/S): requests go out on a fixed schedule shared by all
clients, whatever the answers do; each request's latency counts from its
scheduled time, so a stall is charged to every request it held up (the
coordinated-omission correction of wrk2 and HdrHistogram). This is what a user
at a steady arrival rate sees. Each client then has one request in flight;
more --clients allow more in flight.

Every run warms up first (--warmup, left out of the figures) and is bounded by
--duration (10s by default) and/or --count. Ctrl-C (or SIGTERM) stops it early
and prints the summary of what was measured so far.";

const AFTER_HELP: &str =
    "Exit status: 0 every request succeeded; 1 some request or client failed (the
summary says which); 2 bad arguments (nothing was contacted); 128+N stopped by
signal N (130 for Ctrl-C), after the summary.

TLS: with TREX_TLS_DIR (or ./trex-data/tls, where `trex up` writes it) every
connection runs mutual TLS with the certificate TREX_TLS_NAME of that
directory (default `client`); TREX_INSECURE=1 forces plain TCP.";

#[derive(Parser)]
#[command(
    name = "trex-bench",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Appends to the shared log (an operation: one entry).
    ///
    /// Each request is a batch of --batch entries (default --depth); in closed
    /// loop each client keeps --depth entries in flight through its pipeline.
    Append(AppendArgs),
    /// Reads from the shared log (an operation: one entry read).
    ///
    /// Each request reads a range of --depth addresses below the tail.
    Read(ReadArgs),
    /// Addresses from the active sequencer (an operation: one address).
    ///
    /// Each request asks for --batch addresses; in closed loop windows of
    /// --depth requests are pipelined, as `redis-benchmark -P` does.
    Tokens(TokenArgs),
    /// Committed commands of the consensus group (an operation: one command).
    ///
    /// Each request is one ~100-byte command through the log that leaves
    /// nothing behind (it reads a lock that does not exist).
    Consensus(GroupArgs),
    /// Lock acquire+release pairs (an operation: one pair).
    ///
    /// Each client takes and releases its own lock; a lock whose release failed
    /// is released before the client ends, so a run leaves no lock held.
    Lock(GroupArgs),
    /// Writes straight to one storage unit (an operation: one entry).
    ///
    /// Each request writes --batch entries from the unit's tail on; in closed
    /// loop --depth requests are in flight per connection. Use a unit that
    /// serves no log (`trex node storage` on its own): the entries go to
    /// addresses no sequencer handed out.
    UnitWrite(UnitWriteArgs),
    /// etcd puts, to compare with `consensus` (an operation: one put).
    ///
    /// 100-byte values through etcd's JSON gateway (`/v3/kv/put`).
    EtcdPut(EtcdArgs),
    /// etcd lease grant+revoke pairs, to compare with `lock` (an operation: one
    /// pair).
    ///
    /// Through etcd's JSON gateway; a lease whose revoke failed is revoked
    /// before the client ends.
    EtcdLease(EtcdArgs),
}

impl Cmd {
    /// The subcommand's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Cmd::Append(_) => "append",
            Cmd::Read(_) => "read",
            Cmd::Tokens(_) => "tokens",
            Cmd::Consensus(_) => "consensus",
            Cmd::Lock(_) => "lock",
            Cmd::UnitWrite(_) => "unit-write",
            Cmd::EtcdPut(_) => "etcd-put",
            Cmd::EtcdLease(_) => "etcd-lease",
        }
    }
}

/// How long, how fast, and what to write: the same for every workload.
#[derive(Args, Clone, Debug)]
struct RunArgs {
    /// Open loop: offer this many operations per second in all clients
    /// together (e.g. 20000, 20k, 1.5M). Requests go out at their scheduled
    /// times and latency counts from those times (coordinated omission
    /// corrected). Without --rate the run is closed loop.
    #[arg(long, value_name = "OPS/S", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Measure for this long (10s when neither --duration nor --count is
    /// given). With --count too, the run ends at whichever comes first.
    #[arg(long, value_parser = parse_bound)]
    duration: Option<Duration>,
    /// Measure this many operations (e.g. 10000, 10k), then stop; a whole
    /// number of requests.
    #[arg(long, value_parser = parse_count)]
    count: Option<u64>,
    /// Run this long before measuring; the warm-up is left out of every figure
    /// and file.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// How to print the summary on standard output.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    format: Format,
    /// Also write the JSON summary to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the latency histogram of each second as an HdrHistogram interval
    /// log (values in microseconds), for HistogramLogAnalyzer or the
    /// hdrhistogram libraries' log readers.
    #[arg(long, value_name = "FILE")]
    histogram_log: Option<PathBuf>,
    /// Draw the latency by percentile and over time into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// How the summary is printed.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    /// A table for people.
    Table,
    /// One JSON object, the same as --json writes.
    Json,
}

/// Where the cluster is, found as `trex` finds it.
#[derive(Args, Clone, Debug)]
struct ClusterArgs {
    /// Consensus nodes, comma-separated HOST:PORT (else TREX_ENDPOINTS, else
    /// ./trex-data/endpoints, else 127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402).
    #[arg(long)]
    endpoints: Option<String>,
    /// The cluster id every frame carries (the servers' --cluster-id).
    #[arg(long, env = "TREX_CLUSTER_ID", default_value_t = 0)]
    cluster_id: u32,
}

#[derive(Args)]
struct AppendArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Entry size (e.g. 100, 4KiB); at most 4 MiB.
    #[arg(long, default_value = "1KiB", value_parser = parse_entry_size)]
    size: u64,
    /// Client threads, each with its own connections.
    #[arg(long, default_value_t = 32, value_parser = parse_positive)]
    clients: usize,
    /// Entries in flight per client [default: 64]; with --rate, the entries of
    /// each request unless --batch says otherwise.
    #[arg(long, value_parser = parse_positive)]
    depth: Option<usize>,
    /// Entries per request (one batch) [default: --depth].
    #[arg(long, value_parser = parse_positive)]
    batch: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct ReadArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The size of the entries read, for MB/s.
    #[arg(long, default_value = "1KiB", value_parser = parse_entry_size)]
    size: u64,
    /// Client threads, each with its own connections.
    #[arg(long, default_value_t = 32, value_parser = parse_positive)]
    clients: usize,
    /// Addresses per request (one range read).
    #[arg(long, default_value_t = 64, value_parser = parse_positive)]
    depth: usize,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct TokenArgs {
    /// The sequencer, HOST:PORT (default: the active one, found through the
    /// consensus group).
    #[arg(long)]
    sequencer: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Client connections, each on its own thread.
    #[arg(long, default_value_t = 50, value_parser = parse_positive)]
    clients: usize,
    /// Closed loop: requests pipelined per connection, in windows
    /// [default: 64]. Not with --rate (one request in flight per client).
    #[arg(long, value_parser = parse_positive)]
    depth: Option<usize>,
    /// Addresses per request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct GroupArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Client threads, each with one request in flight.
    #[arg(long, default_value_t = 64, value_parser = parse_positive)]
    clients: usize,
    /// `lock` only: every pair takes a lock name never used before (instead
    /// of one name per client), to check that released locks leave the
    /// state machine (memory and journal stay flat).
    #[arg(long)]
    distinct_names: bool,
    /// `lock --distinct-names` only: acquire each new name and keep it (a
    /// one-hour lease, never released): the state machine grows by one held
    /// lock per operation, to measure what a large state costs (checkpoints,
    /// memory). The locks run out on their own after the hour.
    #[arg(long)]
    keep_held: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct UnitWriteArgs {
    /// The storage unit, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7420")]
    node: String,
    /// The cluster id every frame carries (the unit's --cluster-id).
    #[arg(long, env = "TREX_CLUSTER_ID", default_value_t = 0)]
    cluster_id: u32,
    /// Entry size (e.g. 4KiB); at most 4 MiB.
    #[arg(long, default_value = "4KiB", value_parser = parse_entry_size)]
    size: u64,
    /// Client connections, each on its own thread.
    #[arg(long, default_value_t = 8, value_parser = parse_positive)]
    clients: usize,
    /// Closed loop: requests in flight per connection [default: 32]. Not with
    /// --rate (one request in flight per client).
    #[arg(long, value_parser = parse_positive)]
    depth: Option<usize>,
    /// Entries per write request.
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    batch: usize,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct EtcdArgs {
    /// etcd's client address host:port (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoint: String,
    /// Concurrent clients (threads), each with one request in flight.
    #[arg(long, default_value_t = 64, value_parser = parse_positive)]
    clients: usize,
    #[command(flatten)]
    run: RunArgs,
}

/// A number with an optional SI suffix: `20000`, `20k`, `1.5M`, `2G`.
fn parse_si(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('G') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a number; write e.g. 20000, 20k or 1.5M"))?;
    Ok(n * mult)
}

/// `--rate`: operations per second, above zero.
fn parse_rate(s: &str) -> Result<f64, String> {
    let r = parse_si(s)?;
    if !r.is_finite() || r <= 0.0 {
        return Err(format!(
            "the rate must be above 0 operations per second (got '{s}'); leave --rate out for a closed-loop run"
        ));
    }
    Ok(r)
}

/// `--count`: a whole number of operations, at least 1.
fn parse_count(s: &str) -> Result<u64, String> {
    let n = parse_si(s)?;
    if n.fract() != 0.0 || !(1.0..=1e18).contains(&n) {
        return Err(format!(
            "the count must be a whole number of operations, at least 1 (got '{s}')"
        ));
    }
    Ok(n as u64)
}

/// `--duration`: above zero.
fn parse_bound(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "a run of '{s}' measures nothing; give a duration above 0 (e.g. 10s), or --count"
        ));
    }
    Ok(d)
}

/// Entry sizes: 1 byte up to the wire's entry limit.
fn parse_entry_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n == 0 || n > u64::from(wire::MAX_ENTRY_LEN) {
        return Err(format!(
            "entries are 1 byte to {} bytes (4 MiB) long; '{s}' is {n} bytes",
            wire::MAX_ENTRY_LEN
        ));
    }
    Ok(n)
}

/// Clients, depths and batches: at least 1.
fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a whole number of at least 1")),
    }
}

/// A checked command line, ready to run.
struct Plan {
    info: RunInfo,
    pace: Pace,
    run: RunArgs,
    /// Prepares the clients (what needs the cluster: the active sequencer, a
    /// unit's tail); an error here is not a usage error.
    prepare: Box<dyn FnOnce() -> Result<Prepared, String>>,
}

/// The clients of a run, and what preparing them found out.
struct Prepared {
    client: Arc<ClientFn>,
    /// Whether acknowledgements mean durability, where the workload can tell
    /// (a storage unit says whether it runs with `--sync never`).
    durable: Option<bool>,
}

/// The pace of `r` for requests of `per` operations.
fn pace_of(r: &RunArgs, per: u64) -> Result<Pace, String> {
    if let Some(n) = r.count {
        if n % per != 0 {
            return Err(format!(
                "--count {n} is not a whole number of requests: each request carries {per} operations; use --count {}",
                n.div_ceil(per) * per
            ));
        }
    }
    let request_rate = r.rate.map(|ops| ops / per as f64);
    if request_rate.is_some_and(|q| q > 1e8) {
        return Err(format!(
            "--rate {} is {} requests per second, more than any client can send; lower it",
            r.rate.unwrap_or_default(),
            request_rate.unwrap_or_default()
        ));
    }
    Ok(Pace {
        request_rate,
        warmup: r.warmup,
        duration: match (r.duration, r.count) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        },
        requests: r.count.map(|n| n / per),
    })
}

/// Pipelining is for closed loop: with --rate each client has one request in
/// flight, and the schedule, not the clients, sets the pace.
fn no_depth_with_rate(depth: Option<usize>, r: &RunArgs) -> Result<(), String> {
    match (depth, r.rate) {
        (Some(d), Some(_)) if d > 1 => Err(format!(
            "--depth {d} pipelines requests, which is for closed-loop runs; with --rate each client has one request in flight: leave out --depth and raise --clients for more in flight"
        )),
        _ => Ok(()),
    }
}

fn resolve_cluster(c: &ClusterArgs) -> Result<String, String> {
    trex_consensus::endpoints::resolve(c.endpoints.as_deref()).map_err(|e| e.to_string())
}

fn info(workload: &'static str, clients: usize, per: u64, size: u64, r: &RunArgs) -> RunInfo {
    RunInfo {
        workload,
        clients,
        rate: r.rate,
        ops_per_request: per,
        size,
        warmup: r.warmup,
        durable: None,
    }
}

/// The clients running `body` with `cfg`.
fn clients_of<T: Send + Sync + 'static>(
    cfg: T,
    body: fn(&T, usize, &mut run::Ctx) -> Result<(), String>,
) -> Prepared {
    Prepared {
        client: Arc::new(move |i, ctx| body(&cfg, i, ctx)),
        durable: None,
    }
}

/// Checks the command line and turns it into a plan; `Err` is a usage error.
fn plan(cmd: Cmd) -> Result<Plan, String> {
    Ok(match cmd {
        Cmd::Append(a) => {
            let depth = a.depth.unwrap_or(64);
            let batch = a.batch.unwrap_or(a.depth.unwrap_or(64));
            if a.run.rate.is_some() && a.depth.is_some() && a.batch.is_some_and(|b| b != depth) {
                return Err(format!(
                    "with --rate each client has one request of --batch entries in flight; --depth {depth} and --batch {batch} disagree: give only one"
                ));
            }
            if a.run.rate.is_none() && batch > depth {
                return Err(format!(
                    "--batch {batch} is more than the --depth {depth} entries a client may have in flight; raise --depth or lower --batch"
                ));
            }
            if batch > wire::MAX_OPS_PER_FRAME as usize {
                return Err(format!(
                    "--batch {batch}: a request holds at most {} entries",
                    wire::MAX_OPS_PER_FRAME
                ));
            }
            let per = batch as u64;
            let cfg = log_load::AppendLoad {
                endpoints: resolve_cluster(&a.cluster)?,
                cluster_id: a.cluster.cluster_id,
                size: a.size as usize,
                batch,
                window: if a.run.rate.is_some() {
                    1
                } else {
                    depth.div_ceil(batch)
                },
            };
            Plan {
                info: info("append", a.clients, per, a.size, &a.run),
                pace: pace_of(&a.run, per)?,
                run: a.run,
                prepare: Box::new(move || Ok(clients_of(cfg, log_load::append_client))),
            }
        }
        Cmd::Read(a) => {
            let per = a.depth as u64;
            let cfg = log_load::ReadLoad {
                endpoints: resolve_cluster(&a.cluster)?,
                cluster_id: a.cluster.cluster_id,
                depth: per,
            };
            Plan {
                info: info("read", a.clients, per, a.size, &a.run),
                pace: pace_of(&a.run, per)?,
                run: a.run,
                prepare: Box::new(move || Ok(clients_of(cfg, log_load::read_client))),
            }
        }
        Cmd::Tokens(a) => {
            no_depth_with_rate(a.depth, &a.run)?;
            let per = u64::from(a.batch);
            let depth = if a.run.rate.is_some() {
                1
            } else {
                a.depth.unwrap_or(64)
            };
            if let Some(s) = &a.sequencer {
                if !trex_consensus::endpoints::is_host_port(s) {
                    return Err(format!(
                        "--sequencer \"{s}\" is not HOST:PORT; give one such as 127.0.0.1:7410"
                    ));
                }
            }
            let endpoints = match a.sequencer {
                Some(_) => String::new(),
                None => resolve_cluster(&a.cluster)?,
            };
            let (given, cluster_id, batch) = (a.sequencer, a.cluster.cluster_id, a.batch);
            Plan {
                info: info("tokens", a.clients, per, 0, &a.run),
                pace: pace_of(&a.run, per)?,
                run: a.run,
                prepare: Box::new(move || {
                    let sequencer = match given {
                        Some(s) => s,
                        None => node_load::find_sequencer(&endpoints, cluster_id)?,
                    };
                    eprintln!("tokens: sequencer {sequencer}");
                    let cfg = node_load::TokenLoad {
                        sequencer,
                        cluster_id,
                        depth,
                        batch,
                    };
                    Ok(clients_of(cfg, node_load::token_client))
                }),
            }
        }
        Cmd::Consensus(a) => group_plan("consensus", a, consensus_load::consensus_client)?,
        Cmd::Lock(a) => group_plan("lock", a, consensus_load::lock_client)?,
        Cmd::UnitWrite(a) => {
            no_depth_with_rate(a.depth, &a.run)?;
            let depth = if a.run.rate.is_some() {
                1
            } else {
                a.depth.unwrap_or(32)
            };
            if !trex_consensus::endpoints::is_host_port(&a.node) {
                return Err(format!(
                    "--node \"{}\" is not HOST:PORT; give the storage unit's address, such as 127.0.0.1:7420",
                    a.node
                ));
            }
            let frame = (a.size as usize + wire::WRITE_OP_OVERHEAD) * a.batch + 4;
            if frame > wire::MAX_BODY_LEN as usize {
                return Err(format!(
                    "a request of {} entries of {} bytes does not fit one frame ({} bytes at most); lower --size or --batch",
                    a.batch,
                    a.size,
                    wire::MAX_BODY_LEN
                ));
            }
            let per = a.batch as u64;
            let (node, cluster_id, size, batch) = (a.node, a.cluster_id, a.size as usize, a.batch);
            Plan {
                info: info("unit-write", a.clients, per, a.size, &a.run),
                pace: pace_of(&a.run, per)?,
                run: a.run,
                prepare: Box::new(move || {
                    let mut c = UnitClient::connect(&node, Duration::from_secs(5))
                        .map_err(|e| format!("cannot reach the storage unit at {node}: {e}"))?;
                    c.cluster_id = cluster_id;
                    let unit = c.info().map_err(|e| {
                        format!("the storage unit at {node} did not answer info: {e}")
                    })?;
                    let durable = unit.flags & wire::INFO_SYNC_NEVER == 0;
                    if !durable {
                        eprintln!("note: the unit runs with --sync never: these writes are acknowledged before they are durable");
                    }
                    eprintln!("unit-write: {node}, from address {}", unit.tail);
                    let cfg = node_load::UnitLoad {
                        node,
                        cluster_id,
                        epoch: unit.sealed_epoch,
                        size,
                        depth,
                        batch,
                        next_addr: Arc::new(AtomicU64::new(unit.tail)),
                    };
                    Ok(Prepared {
                        durable: Some(durable),
                        ..clients_of(cfg, node_load::write_client)
                    })
                }),
            }
        }
        Cmd::EtcdPut(a) => etcd_plan("etcd-put", a, etcd::put_client)?,
        Cmd::EtcdLease(a) => etcd_plan("etcd-lease", a, etcd::lease_client)?,
    })
}

fn group_plan(
    name: &'static str,
    a: GroupArgs,
    body: fn(&consensus_load::GroupLoad, usize, &mut run::Ctx) -> Result<(), String>,
) -> Result<Plan, String> {
    if a.distinct_names && name != "lock" {
        return Err(format!(
            "--distinct-names applies to `trex-bench lock` only, not `{name}`; drop it"
        ));
    }
    if a.keep_held && !(a.distinct_names && name == "lock") {
        return Err(
            "--keep-held applies to `trex-bench lock --distinct-names` only; add --distinct-names or drop --keep-held"
                .to_string(),
        );
    }
    let cfg = consensus_load::GroupLoad {
        endpoints: resolve_cluster(&a.cluster)?,
        cluster_id: a.cluster.cluster_id,
        distinct_names: a.distinct_names,
        keep_held: a.keep_held,
    };
    let p = Plan {
        info: info(name, a.clients, 1, 0, &a.run),
        pace: pace_of(&a.run, 1)?,
        run: a.run,
        prepare: Box::new(move || Ok(clients_of(cfg, body))),
    };
    Ok(p)
}

fn etcd_plan(
    name: &'static str,
    a: EtcdArgs,
    body: fn(&etcd::EtcdLoad, usize, &mut run::Ctx) -> Result<(), String>,
) -> Result<Plan, String> {
    let cfg = etcd::EtcdLoad {
        endpoint: a.endpoint,
    };
    let p = Plan {
        info: info(name, a.clients, 1, 0, &a.run),
        pace: pace_of(&a.run, 1)?,
        run: a.run,
        prepare: Box::new(move || Ok(clients_of(cfg, body))),
    };
    Ok(p)
}

/// The files a run writes, created before anything connects (a path that
/// cannot be written is a usage error, not a lost run).
struct Outputs {
    json: Option<(PathBuf, File)>,
    histogram_log: Option<BufWriter<File>>,
    plot: Option<(PathBuf, File)>,
}

fn create(path: &PathBuf, flag: &str) -> Result<File, String> {
    File::create(path).map_err(|e| {
        format!(
            "{flag} {}: cannot create the file ({e}); give a path in a directory that exists and can be written",
            path.display()
        )
    })
}

fn outputs(r: &RunArgs) -> Result<Outputs, String> {
    if let Some(p) = &r.plot {
        if !p.extension().is_some_and(|x| x.eq_ignore_ascii_case("svg")) {
            return Err(format!(
                "--plot {}: the plot is an SVG file; name it *.svg",
                p.display()
            ));
        }
    }
    Ok(Outputs {
        json: match &r.json {
            Some(p) => Some((p.clone(), create(p, "--json")?)),
            None => None,
        },
        histogram_log: match &r.histogram_log {
            Some(p) => Some(BufWriter::new(create(p, "--histogram-log")?)),
            None => None,
        },
        plot: match &r.plot {
            Some(p) => Some((p.clone(), create(p, "--plot")?)),
            None => None,
        },
    })
}

fn usage_error(sub: &str, msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n\nFor more information, try 'trex-bench {sub} --help'.");
    ExitCode::from(2)
}

/// Mutual TLS for every log-client connection when TREX_TLS_DIR (or
/// ./trex-data/tls) holds certificates, as `trex` finds them; plain TCP with
/// TREX_INSECURE set to anything but `0`/`false`, or without certificates.
fn tls_from_env() -> Result<(), String> {
    use trex_net::tls::{RoleMap, TlsConfig, TlsFiles};
    let insecure = std::env::var("TREX_INSECURE").is_ok_and(|v| v != "0" && v != "false");
    if insecure {
        return Ok(());
    }
    let dir = match std::env::var_os("TREX_TLS_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let d = std::path::PathBuf::from("./trex-data/tls");
            if !d.join("ca.pem").exists() {
                return Ok(());
            }
            d
        }
    };
    let name = std::env::var("TREX_TLS_NAME").unwrap_or_else(|_| "client".into());
    let config = TlsConfig::load(&TlsFiles::in_dir(&dir, &name), RoleMap::default())
        .map_err(|e| e.to_string())?;
    trex_net::tls::set_client_config(Some(config.client));
    eprintln!("TLS with certificate {name} of {}", dir.display());
    Ok(())
}

fn main() -> ExitCode {
    // A reader that goes away (`trex-bench … | head`) ends the run quietly,
    // as any Unix filter does, instead of a panic on the broken pipe.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Before any thread exists, so that only the driver's sigtimedwait takes
    // Ctrl-C and the run can print its summary.
    let signals = match trex_net::block_shutdown_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot block SIGINT/SIGTERM to handle Ctrl-C: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cmd = Cli::parse().cmd;
    let sub = cmd.name();
    if let Err(msg) = tls_from_env() {
        return usage_error(sub, &msg);
    }
    let plan = match plan(cmd) {
        Ok(p) => p,
        Err(msg) => return usage_error(sub, &msg),
    };
    let mut out = match outputs(&plan.run) {
        Ok(o) => o,
        Err(msg) => return usage_error(sub, &msg),
    };
    match execute(plan, &mut out, &signals) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(plan: Plan, out: &mut Outputs, signals: &libc::sigset_t) -> Result<ExitCode, String> {
    let Plan {
        mut info,
        pace,
        run: args,
        prepare,
    } = plan;
    let Prepared { client, durable } = prepare()?;
    info.durable = durable;
    let what = format!(
        "{}: {}, {}",
        info.workload,
        match info.rate {
            Some(r) => format!("open loop at {r} ops/s"),
            None => "closed loop".to_string(),
        },
        report::plural(info.clients as u64, "client")
    );
    eprintln!(
        "{what}; warm-up {}, then {}",
        fmt_duration(pace.warmup),
        match (pace.duration.map(fmt_duration), args.count) {
            (Some(d), Some(n)) => format!("{n} ops or {d}, whichever comes first"),
            (Some(d), None) => d,
            (None, Some(n)) => format!("{n} ops"),
            (None, None) => unreachable!("pace_of sets a bound"),
        }
    );
    let mut serializer = V2DeflateSerializer::new();
    let mut hlog = match out.histogram_log.as_mut() {
        Some(f) => Some(
            HistogramLog::begin(f, &mut serializer, &what)
                .map_err(|e| format!("cannot write the histogram log: {e}"))?,
        ),
        None => None,
    };
    let outcome = run::run(
        info.workload,
        info.clients,
        pace,
        client,
        signals,
        &mut |iv| hlog.as_mut().map_or(Ok(()), |l| l.write(iv)),
    )?;
    drop(hlog);
    if let Some(f) = out.histogram_log.as_mut() {
        f.flush()
            .map_err(|e| format!("cannot write the histogram log: {e}"))?;
    }
    let summary = Summary::new(&info, &outcome);
    let json = serde_json::to_string_pretty(&summary.json()).expect("a JSON value serialises");
    match args.format {
        Format::Table => summary.print(),
        Format::Json => println!("{json}"),
    }
    if let Some((path, f)) = out.json.as_mut() {
        writeln!(f, "{json}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some((path, f)) = out.plot.as_mut() {
        let title = format!(
            "{what}: {} ops in {:.1}s, {} errors",
            outcome.ops,
            outcome.seconds,
            summary.errors()
        );
        f.write_all(plot::latency_svg(&title, &outcome.hist, &outcome.points).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(sig) = outcome.interrupted {
        return Ok(ExitCode::from((128 + sig) as u8));
    }
    if let Some(first) = outcome.failures.first() {
        eprintln!(
            "error: {first}{}",
            match outcome.failures.len() {
                1 => String::new(),
                n => format!(" (and {} more; see the summary)", n - 1),
            }
        );
        return Ok(ExitCode::FAILURE);
    }
    if summary.errors() > 0 {
        eprintln!(
            "error: {} requests failed; the summary lists them by kind",
            summary.errors()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_counts_take_si_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("1.5M").unwrap(), 1.5e6);
        assert_eq!(parse_rate("20k").unwrap(), 20_000.0);
        assert!(parse_rate("0").is_err() && parse_rate("-5").is_err() && parse_rate("x").is_err());
        assert_eq!(parse_count("10k").unwrap(), 10_000);
        assert!(parse_count("0").is_err() && parse_count("1.5").is_err());
        assert!(parse_bound("0s").is_err());
        assert!(parse_entry_size("0").is_err() && parse_entry_size("5MiB").is_err());
        assert_eq!(parse_entry_size("4MiB").unwrap(), 4 << 20);
    }

    #[test]
    fn a_count_is_a_whole_number_of_requests() {
        let r = RunArgs {
            rate: Some(1000.0),
            duration: None,
            count: Some(640),
            warmup: Duration::ZERO,
            format: Format::Table,
            json: None,
            histogram_log: None,
            plot: None,
        };
        let p = pace_of(&r, 64).unwrap();
        assert_eq!(p.requests, Some(10));
        assert_eq!(p.duration, None);
        assert_eq!(p.request_rate, Some(1000.0 / 64.0));
        let e = pace_of(
            &RunArgs {
                count: Some(100),
                ..r
            },
            64,
        )
        .unwrap_err();
        assert!(e.contains("--count 128"), "{e}");
    }
}
