//! The consensus node: a [`Replica`] driven by the event loop, with its
//! journal group-committed through the same sync path as the storage unit,
//! outgoing links to its peers, and the client protocol (`submit`,
//! `node-status`).
//!
//! The core's one rule (the messages and client answers of a step are released
//! only once the journal writes of that step, and of every earlier step, are
//! durable) is kept by the shared [`Driver`]; this node supplies its I/O
//! (`NodeIo`) and tells the driver when a group-committed sync completes.

use super::driver::{Driver, ReadyIo};
use super::journal::{Journal, OpenError, DURABLE_FILE};
use super::paxos::{Applied, CheckpointJob, Config, JournalRecord, Replica};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry as MetricRegistry, Unit as MetricUnit};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use trex_net::metrics::{self, BuildInfo, CounterFamily, Health, MetricsConfig, U64Gauge};
use trex_net::reply::{node_info, refuse_foreign_cluster, reply_header, violation, Reply, ReplyTo};
use trex_net::sync::Syncer;
use trex_net::tls::ServerName;
use trex_net::tls::{self, Transport};
use trex_net::{service_token, EventLoop, Flow, LoopConfig, Service};
use trex_wire::consensus::{self as cw, Command, Msg, NodeId, SubmitReply};
use trex_wire::ops::Role;
use trex_wire::{begin_frame, finish_frame, ErrorCode, Header, Opcode};

const SYNC_TOKEN: usize = 0;
const TICK_TIMER: u64 = 1;
const TICK: Duration = Duration::from_millis(10);
/// How long a submit waits to be applied before the client is told to retry.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Unsent bytes to one peer before messages to it are dropped (Paxos copes).
const PEER_BUFFER_LIMIT: usize = 16 << 20;

/// How to run a consensus node.
#[derive(Clone, Debug)]
pub struct ConsensusOptions {
    /// This node's id (1 to 2^62).
    pub id: NodeId,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The group to start with, `(id, address)`: every node of it, this one
    /// included. With `join`, the nodes to learn the group from instead.
    /// Used on the first start only: the data directory keeps it (file
    /// `GROUP`), and once the group is recorded in the log, the log decides.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// This node was added to a running group (`trex endpoint add`): it
    /// learns the group from `peers` and votes only once the log says so.
    pub join: bool,
    /// Data directory (the journal).
    pub data_dir: PathBuf,
    /// Base election timeout.
    pub election_ms: u64,
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Applied slots between checkpoints ([`Config::snapshot_every`]).
    pub checkpoint_every: u64,
    /// Event-loop limits.
    pub limits: LoopConfig,
    /// Cluster id: client and peer frames must carry it, and it is sent to
    /// the peers.
    pub cluster_id: u32,
    /// Serve metrics, `/healthz` and `/readyz` over HTTP (`--metrics-listen`).
    pub metrics: Option<MetricsConfig>,
    /// This binary's version and revision (`node-info`, `trex_build_info`).
    pub build: BuildInfo,
    /// Mutual TLS on every connection, and the roles certificates grant
    /// (`None`: plain TCP, every request served).
    pub tls: Option<trex_net::tls::TlsConfig>,
}

/// The consensus node's own metrics (beside the event loop's). Gauges are
/// sampled every tick (10 ms).
struct NodeMetrics {
    submits: CounterFamily,
    applied: Counter,
    not_leader: Counter,
    timed_out: Counter,
    malformed: Counter,
    peer_dropped: CounterFamily,
    sync_duration: Histogram,
    checkpoint_duration: Histogram,
    ballot: U64Gauge,
    leader: U64Gauge,
    leading: U64Gauge,
    commit: U64Gauge,
    applied_index: U64Gauge,
    snapshot: U64Gauge,
    journal: U64Gauge,
    pending: U64Gauge,
    peers_connected: U64Gauge,
}

impl NodeMetrics {
    fn new() -> NodeMetrics {
        let submits = CounterFamily::default();
        let by = |r: &'static str| submits.get_or_create(&[("result", r)]).clone();
        NodeMetrics {
            applied: by("applied"),
            not_leader: by("not_leader"),
            timed_out: by("timeout"),
            malformed: by("malformed"),
            submits,
            peer_dropped: CounterFamily::default(),
            sync_duration: metrics::latency_histogram(),
            checkpoint_duration: metrics::latency_histogram(),
            ballot: U64Gauge::default(),
            leader: U64Gauge::default(),
            leading: U64Gauge::default(),
            commit: U64Gauge::default(),
            applied_index: U64Gauge::default(),
            snapshot: U64Gauge::default(),
            journal: U64Gauge::default(),
            pending: U64Gauge::default(),
            peers_connected: U64Gauge::default(),
        }
    }

    fn register(&self, reg: &mut MetricRegistry) {
        let r = reg.sub_registry_with_prefix("consensus");
        r.register(
            "submits",
            "Client submits answered, by result (applied, not_leader, timeout, malformed)",
            self.submits.clone(),
        );
        r.register(
            "peer_messages_dropped",
            "Peer messages dropped, by reason (sending: disconnected, backlog, oversized; receiving: out_of_range, foreign_sender, malformed)",
            self.peer_dropped.clone(),
        );
        r.register_with_unit(
            "sync_duration",
            "Time of one durable journal sync",
            MetricUnit::Seconds,
            self.sync_duration.clone(),
        );
        r.register_with_unit(
            "checkpoint_duration",
            "Time to encode, write and sync one checkpoint, on the checkpoint thread (the event loop goes on meanwhile)",
            MetricUnit::Seconds,
            self.checkpoint_duration.clone(),
        );
        let gauges = [
            (
                "ballot",
                "Counter of the highest ballot promised",
                &self.ballot,
            ),
            (
                "leader",
                "Id of the node this one believes leads (0: none known)",
                &self.leader,
            ),
            ("leading", "1 while this node leads", &self.leading),
            (
                "commit_index",
                "Slots below this are committed",
                &self.commit,
            ),
            (
                "applied_index",
                "Slots below this are applied to the state machine",
                &self.applied_index,
            ),
            (
                "snapshot_index",
                "Slots below this are compacted into the snapshot",
                &self.snapshot,
            ),
            (
                "pending_submits",
                "Client submits waiting to be applied",
                &self.pending,
            ),
            (
                "peers_connected",
                "Outgoing links to peers that are connected",
                &self.peers_connected,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        r.register_with_unit(
            "journal",
            "Bytes in the current journal file",
            MetricUnit::Bytes,
            self.journal.clone(),
        );
    }

    fn dropped(&self, reason: &'static str) {
        self.peer_dropped.get_or_create(&[("reason", reason)]).inc();
    }
}

struct PeerLink {
    addr: SocketAddr,
    token: Token,
    /// Plain, or TLS with this node's certificate (the peer checks it is a node's).
    stream: Option<Transport>,
    connected: bool,
    wbuf: Vec<u8>,
    wpos: usize,
    retry_at: Instant,
}

impl PeerLink {
    fn new(addr: SocketAddr, token: Token) -> PeerLink {
        PeerLink {
            addr,
            token,
            stream: None,
            connected: false,
            wbuf: Vec::new(),
            wpos: 0,
            retry_at: Instant::now(),
        }
    }
}

/// A client waiting for its command: where to answer, its request, since when.
type Waiting = (ReplyTo, Header, Instant);

/// What the [`Driver`] acts on for this node: the journal, the peer links, the
/// clients waiting for their commands, and the messages this node sends itself
/// (kept here and handed to the replica once the driver returns, because the
/// replica cannot take them while its output is being driven).
struct NodeIo {
    id: NodeId,
    cluster_id: u32,
    journal: Journal,
    peers: BTreeMap<NodeId, PeerLink>,
    /// Submits waiting to be applied, by (client, seq).
    pending: HashMap<(u64, u64), Vec<Waiting>>,
    replies: VecDeque<Reply>,
    to_self: Vec<Msg>,
    frame: Vec<u8>,
    metrics: NodeMetrics,
}

/// What the checkpoint thread did with one [`CheckpointJob`].
struct CheckpointDone {
    upto: u64,
    /// The file it wrote ([`Journal::next_checkpoint_path`]).
    path: PathBuf,
    /// The encoded state machine, or why the file could not be written.
    result: Result<Vec<u8>, String>,
    took: Duration,
}

/// Encodes and writes checkpoints on a thread of its own (`trex-checkpoint`,
/// at nice 10), so that the event loop never stops for them: a state of
/// 100,000 held locks encodes to 15 MB in ~22 ms, and its write and sync
/// take longer. The loop hands over a [`CheckpointJob`] (a copy of the
/// state machine that shares its tables) and is woken when the file is
/// durable; the journal then takes it over ([`JournalRecord::Resume`]).
struct Checkpointer {
    jobs: mpsc::Sender<(CheckpointJob, PathBuf)>,
    done: mpsc::Receiver<CheckpointDone>,
}

impl Checkpointer {
    fn start(waker: Arc<mio::Waker>) -> io::Result<Checkpointer> {
        let (jobs, rx) = mpsc::channel::<(CheckpointJob, PathBuf)>();
        let (tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("trex-checkpoint".into())
            .spawn(move || {
                trex_net::util::lower_priority();
                for (job, path) in rx {
                    let t0 = Instant::now();
                    let upto = job.upto;
                    let record = JournalRecord::Checkpoint {
                        promised: job.promised,
                        upto,
                        state: job.sm.encode(),
                        accepted: job.accepted,
                    };
                    let written =
                        super::journal::write_checkpoint_file(&path, &record).map_err(|e| {
                            format!("cannot write the checkpoint {}: {e}", path.display())
                        });
                    let JournalRecord::Checkpoint { state, .. } = record else {
                        unreachable!("built above")
                    };
                    let result = written.map(|()| state);
                    let took = t0.elapsed();
                    if tx
                        .send(CheckpointDone {
                            upto,
                            path,
                            result,
                            took,
                        })
                        .is_err()
                    {
                        return; // the node is stopping
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Checkpointer { jobs, done })
    }
}

/// The consensus node as an event-loop service.
pub struct ConsensusService {
    id: NodeId,
    replica: Replica,
    driver: Driver,
    io: NodeIo,
    syncer: Syncer,
    registry: Registry,
    /// Peer addresses by node id (this node's included), resolved from
    /// `peer_names`.
    addrs: BTreeMap<NodeId, SocketAddr>,
    /// The peer addresses the replica gave last ([`Replica::peer_addrs`]).
    peer_names: BTreeMap<NodeId, String>,
    /// The last event-loop token given to a peer link.
    next_token: usize,
    syncing: bool,
    /// Whether the replica led when last looked at (leadership changes are logged).
    leading: bool,
    /// Peer messages refused (a forged sender, a ballot out of range), logged
    /// once per interval with a count.
    refused_peer: trex_net::util::Throttle,
    /// When the journal sync in flight started.
    sync_started: Option<Instant>,
    health: Arc<Health>,
    /// Answered to `node-info`.
    build: BuildInfo,
    checkpointer: Checkpointer,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A reply of a node of `cluster_id` (consensus nodes have no epoch).
fn reply_frame(req: &Header, cluster_id: u32, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    body(&mut f);
    finish_frame(&mut f, s, reply_header(req, 0, 0, cluster_id));
    f
}

impl NodeIo {
    fn send_peer(&mut self, to: NodeId, m: &Msg) {
        let Some(link) = self.peers.get_mut(&to) else {
            return;
        };
        if link.stream.is_none() {
            return self.metrics.dropped("disconnected"); // retransmission covers it
        }
        if link.wbuf.len() - link.wpos > PEER_BUFFER_LIMIT {
            return self.metrics.dropped("backlog"); // far behind: as above
        }
        self.frame.clear();
        let body = encode_peer_frame(&mut self.frame, self.id, self.cluster_id, m);
        if body > trex_wire::MAX_BODY_LEN as usize {
            // The peer would refuse the frame and close the link, and every
            // message queued behind it would be lost with it. The core bounds
            // what one message carries; reaching this is a bug, so say so.
            trex_net::log_line!(
                "ERROR",
                "not sending a {body}-byte peer message to node {to}: over the {}-byte frame limit",
                trex_wire::MAX_BODY_LEN
            );
            return self.metrics.dropped("oversized");
        }
        link.wbuf.extend_from_slice(&self.frame);
        if link.connected {
            flush_link(link);
        }
    }
}

impl ReadyIo for NodeIo {
    type Error = io::Error;

    fn write(&mut self, records: Vec<JournalRecord>) -> io::Result<u64> {
        // A step without records waits only for the writes before it.
        if records.is_empty() {
            return Ok(self.journal.lsn());
        }
        self.journal.append(&records)
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        if to == self.id {
            self.to_self.push(msg);
        } else {
            self.send_peer(to, &msg);
        }
    }

    fn answer(&mut self, a: Applied) {
        let Some(waiting) = self.pending.remove(&(a.client, a.seq)) else {
            return; // submitted elsewhere, or the client gave up
        };
        for (to, req, _) in waiting {
            self.metrics.applied.inc();
            let frame = reply_frame(&req, self.cluster_id, |b| {
                cw::encode_submit_reply(b, &SubmitReply::Applied(a.result.clone()))
            });
            self.replies.push_back(Reply {
                to,
                frame,
                close: false,
            });
        }
    }
}

impl ConsensusService {
    /// The replica inside (for status).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    fn status(&self) -> cw::NodeStatus {
        let s = self.replica.status();
        cw::NodeStatus {
            id: self.id,
            leader: s.leader.unwrap_or(0),
            leading: s.leading,
            promised: s.promised,
            commit: s.commit,
            applied: s.applied,
            snapshot: s.snapshot,
            journal_bytes: self.io.journal.size_bytes(),
        }
    }

    /// Takes the core's output through the driver: journal writes now, the
    /// rest once durable. Messages to self are handled in turn, until the
    /// replica has nothing more to say.
    fn process(&mut self) {
        loop {
            let mut ready = self.replica.take_ready();
            if ready.is_empty() {
                break;
            }
            if let Some(job) = ready.checkpoint.take() {
                let path = self.io.journal.next_checkpoint_path();
                if self.checkpointer.jobs.send((job, path)).is_err() {
                    trex_net::log_line!("ERROR", "the checkpoint thread is gone; stopping the node (restart it: it recovers from its journal)");
                    std::process::exit(1);
                }
            }
            if let Err(e) = self.driver.step(ready, &mut self.io) {
                // The promises of this step cannot be kept: stop rather than lie.
                trex_net::log_line!("ERROR", "journal write failed: {e}; stopping the node so that it never acknowledges what it could not write. Free space if the disk is full (or replace a failing disk), then restart it: it recovers from its journal, and the others serve meanwhile");
                std::process::exit(1);
            }
            if !self.deliver_to_self() {
                break;
            }
        }
        self.log_leadership();
    }

    /// Samples the replica into the gauges; ready while a leader is known.
    fn refresh_metrics(&self) {
        let (s, m) = (self.replica.status(), &self.io.metrics);
        m.ballot.set(s.promised.counter);
        m.leader.set(s.leader.unwrap_or(0));
        m.leading.set(u64::from(s.leading));
        m.commit.set(s.commit);
        m.applied_index.set(s.applied);
        m.snapshot.set(s.snapshot);
        m.journal.set(self.io.journal.size_bytes());
        metrics::set(
            &m.pending,
            self.io.pending.values().map(Vec::len).sum::<usize>(),
        );
        let up = self.io.peers.values().filter(|l| l.connected).count();
        metrics::set(&m.peers_connected, up);
        match s.leader {
            Some(l) if l == self.id => self.health.set_ready(true, "leading"),
            Some(_) => self.health.set_ready(true, "following a known leader"),
            None => self
                .health
                .set_ready(false, "no leader known (an election is running)"),
        }
    }

    /// Logs when this node starts or stops leading.
    fn log_leadership(&mut self) {
        let s = self.replica.status();
        if s.leading == self.leading {
            return;
        }
        self.leading = s.leading;
        if s.leading {
            trex_net::log_line!(
                "INFO",
                "node {} leads with ballot {}.{} from slot {}",
                self.id,
                s.promised.counter,
                s.promised.node,
                s.commit
            );
        } else {
            trex_net::log_line!(
                "INFO",
                "node {} no longer leads (a higher ballot, or it heard no quorum for an election timeout)",
                self.id
            );
        }
    }

    /// Hands the replica the messages it sent itself that the driver released.
    /// Returns true if there were any (their output then needs processing).
    fn deliver_to_self(&mut self) -> bool {
        if self.io.to_self.is_empty() {
            return false;
        }
        let now = unix_ms();
        for m in std::mem::take(&mut self.io.to_self) {
            self.replica.handle(self.id, m, now);
        }
        true
    }

    /// Follows the group the log records: links to nodes that joined it,
    /// none to nodes that left (checked every tick).
    fn refresh_peers(&mut self) {
        let want = self.replica.peer_addrs();
        if want == self.peer_names {
            return;
        }
        let mut addrs = BTreeMap::new();
        for (id, name) in &want {
            let known = self.peer_names.get(id) == Some(name);
            match self.addrs.get(id) {
                Some(a) if known => {
                    addrs.insert(*id, *a);
                }
                _ => match name.to_socket_addrs().map(|mut i| i.next()) {
                    Ok(Some(a)) => {
                        addrs.insert(*id, a);
                    }
                    _ => trex_net::log_line!(
                        "WARN",
                        "consensus node {id}'s address \"{name}\" does not resolve; retrying on the next change"
                    ),
                },
            }
        }
        for (id, a) in &addrs {
            if *id == self.id || self.io.peers.get(id).is_some_and(|l| l.addr == *a) {
                continue;
            }
            if let Some(mut old) = self.io.peers.remove(id).and_then(|l| l.stream) {
                let _ = self.registry.deregister(&mut old.tcp);
            }
            self.next_token += 1;
            trex_net::log_line!("INFO", "consensus node {id} at {a} is in the group");
            self.io
                .peers
                .insert(*id, PeerLink::new(*a, service_token(self.next_token)));
        }
        let gone: Vec<NodeId> = self
            .io
            .peers
            .keys()
            .filter(|id| !addrs.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            trex_net::log_line!(
                "INFO",
                "consensus node {id} left the group; closing its link"
            );
            if let Some(mut old) = self.io.peers.remove(&id).and_then(|l| l.stream) {
                let _ = self.registry.deregister(&mut old.tcp);
            }
        }
        self.addrs = addrs;
        self.peer_names = want;
    }

    fn reconnect_peers(&mut self) {
        let now = Instant::now();
        let mut hello = Vec::new();
        encode_peer_frame(&mut hello, self.id, self.io.cluster_id, &Msg::Hello);
        for link in self.io.peers.values_mut() {
            if link.stream.is_some() && !link.connected && now >= link.retry_at {
                // A connect that neither completed nor failed in time: start over.
                if let Some(mut s) = link.stream.take() {
                    let _ = self.registry.deregister(&mut s.tcp);
                }
            }
            if link.stream.is_some() || now < link.retry_at {
                continue;
            }
            link.retry_at = now + Duration::from_millis(300);
            if let Ok(s) = TcpStream::connect(link.addr) {
                let _ = s.set_nodelay(true);
                // The peer's certificate must name the address dialled.
                let name = ServerName::IpAddress(link.addr.ip().into());
                let mut s = match trex_net::tls::client_config() {
                    None => Transport::plain(s),
                    Some(config) => match Transport::client(s, config, name) {
                        Ok(t) => t,
                        Err(_) => continue,
                    },
                };
                if self
                    .registry
                    .register(
                        &mut s.tcp,
                        link.token,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_ok()
                {
                    link.stream = Some(s);
                    link.connected = false;
                    link.wbuf.clear();
                    link.wpos = 0;
                    // First on the link: it names this connection as a
                    // peer's at the receiver (never closed for clients).
                    link.wbuf.extend_from_slice(&hello);
                }
            }
        }
    }

    fn on_peer_event(&mut self, token: Token) {
        let registry = &self.registry;
        let Some(link) = self.io.peers.values_mut().find(|l| l.token == token) else {
            return;
        };
        let Some(stream) = link.stream.as_mut() else {
            return;
        };
        let mut broken = !matches!(stream.tcp.take_error(), Ok(None));
        if !broken && !link.connected {
            match stream.tcp.peer_addr() {
                Ok(_) => {
                    link.connected = true;
                    trex_net::log_line!("INFO", "connected to peer at {}", link.addr);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // still connecting
                Err(_) => broken = true,
            }
        }
        if !broken {
            // Peers never answer on this link; drain whatever arrives (e.g. an error frame).
            let mut sink = [0u8; 4096];
            loop {
                match stream.read(&mut sink) {
                    Ok(0) => {
                        broken = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            broken |= !flush_link(link);
        }
        if broken {
            if let Some(mut s) = link.stream.take() {
                let _ = registry.deregister(&mut s.tcp);
            }
            if link.connected {
                trex_net::log_line!(
                    "WARN",
                    "lost connection to peer at {}; reconnecting",
                    link.addr
                );
            }
            link.connected = false;
            link.wbuf.clear();
            link.wpos = 0;
        }
    }

    fn reap_syncs(&mut self) {
        while let Some((lsn, result)) = self.syncer.poll_done() {
            self.syncing = false;
            if result.is_ok() {
                self.io.journal.note_durable(lsn);
            }
            if let Some(at) = self.sync_started.take() {
                self.io
                    .metrics
                    .sync_duration
                    .observe(at.elapsed().as_secs_f64());
            }
            if let Err(e) = result {
                trex_net::log_line!("ERROR", "journal sync failed: {e}; stopping the node: its promises can no longer be kept (restart it to recover from its journal)");
                std::process::exit(1);
            }
            self.driver.synced(lsn, &mut self.io);
        }
        if self.deliver_to_self() {
            self.process();
        }
    }

    /// Hands finished checkpoints to the replica: the journal switches to
    /// the file written (in this step's records), or it is deleted when a
    /// snapshot from a peer made it moot.
    fn reap_checkpoints(&mut self) {
        while let Ok(done) = self.checkpointer.done.try_recv() {
            self.io
                .metrics
                .checkpoint_duration
                .observe(done.took.as_secs_f64());
            let state = match done.result {
                Ok(state) => state,
                Err(e) => {
                    // As a failed journal write: what this node promised
                    // could not be compacted, and a disk that cannot take
                    // the checkpoint will not take the records either.
                    trex_net::log_line!("ERROR", "{e}; stopping the node. Free space if the disk is full (or replace a failing disk), then restart it: it recovers from its journal, and the others serve meanwhile");
                    std::process::exit(1);
                }
            };
            if !self.replica.checkpoint_written(done.upto, state) {
                let _ = std::fs::remove_file(&done.path);
                continue;
            }
            self.process();
        }
    }

    fn on_submit(&mut self, to: ReplyTo, header: &Header, body: &[u8]) -> Flow {
        let (client, seq, op) = match cw::decode_submit(body) {
            Ok(x) => x,
            Err(e) => {
                self.io.metrics.malformed.inc();
                let msg = format!("submit body does not decode: {e}");
                self.io.replies.push_back(violation(
                    to,
                    header,
                    self.io.cluster_id,
                    ErrorCode::MalformedBody,
                    &msg,
                ));
                return Flow::Close;
            }
        };
        let cmd = Command {
            client,
            seq,
            stamp_ms: 0,
            op: op.to_vec(),
        };
        match self.replica.propose(cmd, unix_ms()) {
            Ok(()) => {
                self.io.pending.entry((client, seq)).or_default().push((
                    to,
                    *header,
                    Instant::now(),
                ));
                self.process();
            }
            Err(nl) => {
                self.io.metrics.not_leader.inc();
                let leader = nl.hint.unwrap_or(0);
                let addr = self
                    .addrs
                    .get(&leader)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let frame = reply_frame(header, self.io.cluster_id, |b| {
                    cw::encode_submit_reply(b, &SubmitReply::NotLeader { leader, addr })
                });
                self.io.replies.push_back(Reply {
                    to,
                    frame,
                    close: false,
                });
            }
        }
        Flow::Reply
    }

    fn expire_pending(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.io.pending.retain(|_, waiting| {
            waiting.retain(|(to, req, at)| {
                let keep = now.duration_since(*at) < SUBMIT_TIMEOUT;
                if !keep {
                    expired.push((*to, *req));
                }
                keep
            });
            !waiting.is_empty()
        });
        for (to, req) in expired {
            self.io.metrics.timed_out.inc();
            let frame = reply_frame(&req, self.io.cluster_id, |b| {
                cw::encode_submit_reply(b, &SubmitReply::Timeout)
            });
            self.io.replies.push_back(Reply {
                to,
                frame,
                close: false,
            });
        }
    }
}

/// Writes what a peer link has queued; false if the link broke.
/// Appends a whole `peer` frame carrying `m` from node `id` to `out`; returns
/// the length of its body (the caller refuses one over the frame limit).
fn encode_peer_frame(out: &mut Vec<u8>, id: NodeId, cluster_id: u32, m: &Msg) -> usize {
    let s = begin_frame(out);
    cw::encode_peer(out, id, m);
    let body = out.len() - s - trex_wire::HEADER_LEN;
    finish_frame(
        out,
        s,
        Header {
            opcode: Opcode::Peer as u8,
            cluster_id,
            ..Header::default()
        },
    );
    body
}

fn flush_link(link: &mut PeerLink) -> bool {
    let Some(stream) = link.stream.as_mut() else {
        return false;
    };
    // TLS records left over from an earlier call (the socket was full).
    if stream.flush().is_err() {
        return false;
    }
    while link.wpos < link.wbuf.len() {
        match stream.write(&link.wbuf[link.wpos..]) {
            Ok(0) => return false,
            Ok(n) => link.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    link.wbuf.clear();
    link.wpos = 0;
    true
}

/// The least role a state-machine operation needs (docs/security.md). Reads,
/// no-ops and user locks: a client. Changing the layout, the members, the
/// group, the trim mark, the replication factor or the lock grace: an admin.
/// What only nodes do (registering, heartbeats, system leases, a sequencer's
/// install, recording the group): a node. An operation that does not decode
/// is left to the state machine, which refuses it.
pub fn op_needs(op: &[u8]) -> (tls::Role, &'static str) {
    use trex_wire::ops::Op;
    let Ok(op) = Op::decode(op) else {
        return (tls::Role::Client, "submit");
    };
    let needs = match &op {
        Op::Members
        | Op::Layout
        | Op::LayoutHistory { .. }
        | Op::Noop
        | Op::Group
        | Op::Acquire { .. }
        | Op::Renew { .. }
        | Op::Release { .. }
        | Op::GetLock { .. }
        | Op::Replication { replicas: 0 }
        | Op::Trim { mark: 0 } => tls::Role::Client,
        Op::InitLayout { .. }
        | Op::Install { .. }
        | Op::Deregister { .. }
        | Op::SetLockGrace { .. }
        | Op::Replication { .. }
        | Op::Trim { .. }
        | Op::GroupAdd { .. }
        | Op::GroupRemove { .. }
        | Op::GroupReplace { .. } => tls::Role::Admin,
        Op::Register { .. }
        | Op::Heartbeat { .. }
        | Op::System(_)
        | Op::InstallAsSequencer { .. }
        | Op::GroupInit { .. } => tls::Role::Node,
    };
    (needs, op.name())
}

impl Service for ConsensusService {
    /// Peer messages need a node certificate; a submit needs what its
    /// operation needs ([`op_needs`]); status and node-info, a client.
    fn authorize(&self, role: tls::Role, header: &Header, body: &[u8]) -> Result<(), String> {
        match Opcode::from_u8(header.opcode) {
            Some(Opcode::Peer) => tls::check(role, tls::Role::Node, "a peer message"),
            Some(Opcode::Submit) => {
                let Ok((_, _, op)) = cw::decode_submit(body) else {
                    return tls::check(role, tls::Role::Client, "submit");
                };
                let (needs, name) = op_needs(op);
                tls::check(role, needs, name)
            }
            Some(Opcode::NodeInfo) => Ok(()),
            _ => tls::check(role, tls::Role::Client, "node-status"),
        }
    }

    fn on_frame(&mut self, to: ReplyTo, header: &Header, body: &[u8]) -> Flow {
        // As a storage unit does, for client and peer frames alike: a request
        // of another cluster is refused before its opcode is looked at.
        let cluster_id = self.io.cluster_id;
        if !header.is_response() {
            if let Some(r) = refuse_foreign_cluster(to, header, "consensus node", 0, cluster_id) {
                self.io.replies.push_back(r);
                return Flow::Close;
            }
        }
        match Opcode::from_u8(header.opcode) {
            Some(Opcode::Peer) if !header.is_response() => {
                match cw::decode_peer(body) {
                    // Any node of this cluster but this one: the group may
                    // have changed while this node was away, so a sender it
                    // does not know yet is heard (the replica decides what
                    // such a message may do; see `Replica::handle`).
                    Ok((from, m))
                        if from != self.id
                            && from != 0
                            && from <= trex_wire::range::MAX_COUNTER =>
                    {
                        let before = self.replica.dropped_out_of_range();
                        self.replica.handle(from, m, unix_ms());
                        if self.replica.dropped_out_of_range() > before {
                            self.io.metrics.dropped("out_of_range");
                            if let Some(n) = self.refused_peer.hit() {
                                trex_net::log_line!(
                                    "WARN",
                                    "dropped {n} peer message(s) whose ballot is out of range (the latest claiming to be from node {from}): {}",
                                    "a forged or damaged message; a ballot may be at most 2^24 above the highest seen and at most 2^62"
                                );
                            }
                        }
                        self.process();
                        Flow::NoReply
                    }
                    Ok((from, _)) => {
                        self.io.metrics.dropped("foreign_sender");
                        if let Some(n) = self.refused_peer.hit() {
                            trex_net::log_line!(
                                "WARN",
                                "refused {n} peer message(s) claiming an impossible sender (the latest claiming node id {from}: this node's own, 0 or above 2^62); closing its connection"
                            );
                        }
                        Flow::Close
                    }
                    // A damaged or foreign peer message: drop the connection.
                    Err(_) => {
                        self.io.metrics.dropped("malformed");
                        Flow::Close
                    }
                }
            }
            Some(Opcode::Submit) if !header.is_response() => self.on_submit(to, header, body),
            Some(Opcode::NodeStatus) if !header.is_response() => {
                let st = self.status();
                let frame = reply_frame(header, self.io.cluster_id, |b| {
                    cw::encode_node_status(b, &st)
                });
                self.io.replies.push_back(Reply {
                    to,
                    frame,
                    close: false,
                });
                Flow::Reply
            }
            Some(Opcode::NodeInfo) if !header.is_response() => {
                let r = node_info(
                    to,
                    header,
                    body,
                    Role::Consensus,
                    &self.build,
                    0,
                    cluster_id,
                );
                let flow = if r.close { Flow::Close } else { Flow::Reply };
                self.io.replies.push_back(r);
                flow
            }
            _ => {
                let msg = format!(
                    "opcode {:#04x} is not a consensus-node request (submit 0x10, node-status 0x11, peer 0x20, node-info 0x40)",
                    header.opcode
                );
                self.io.replies.push_back(violation(
                    to,
                    header,
                    self.io.cluster_id,
                    ErrorCode::UnknownOpcode,
                    &msg,
                ));
                Flow::Close
            }
        }
    }

    fn poll_reply(&mut self) -> Option<Reply> {
        self.io.replies.pop_front()
    }

    fn on_event(&mut self, token: Token) {
        if token == service_token(SYNC_TOKEN) {
            self.reap_syncs();
        } else {
            self.on_peer_event(token);
        }
    }

    fn on_wake(&mut self) {
        self.reap_syncs();
        self.reap_checkpoints();
    }

    fn periodic_timers(&self) -> Vec<(Duration, u64)> {
        vec![(TICK, TICK_TIMER)]
    }

    fn on_timer(&mut self, _id: u64, _now: Instant) {
        self.replica.tick(unix_ms());
        self.process();
        self.refresh_peers();
        self.reconnect_peers();
        self.expire_pending();
        self.refresh_metrics();
    }

    fn tick(&mut self) {
        if !self.syncing && self.io.journal.lsn() > self.driver.durable() {
            self.syncing = true;
            let job = self.io.journal.sync_job();
            self.sync_started = Some(Instant::now());
            self.syncer.submit(job);
            self.reap_syncs();
        }
    }

    fn busy(&self) -> bool {
        self.syncing
    }
}

/// Opens the journal, recovers, and serves until SIGINT/SIGTERM.
pub fn run_consensus(opts: &ConsensusOptions) -> Result<(), String> {
    trex_net::block_shutdown_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let mut id = match read_node_id(&opts.data_dir)? {
        Some(kept) => {
            if kept != opts.id {
                trex_net::log_line!(
                    "INFO",
                    "this node is consensus node {kept} (kept in {}/{NODE_ID_FILE}: it was added again under that id after its journal was damaged); --id {} is not used",
                    opts.data_dir.display(),
                    opts.id
                );
            }
            kept
        }
        None => opts.id,
    };
    let opened = match Journal::open(&opts.data_dir) {
        Ok(x) => Ok(x),
        Err(OpenError::Io(e)) => return Err(e),
        Err(e @ OpenError::Damaged { .. }) => Err(e),
    };
    // The group it started with counts as much as the journal: until the log
    // records the group, it says whose majority this node's votes join.
    let opened = match opened {
        Ok((journal, records)) => {
            match StartGroup::load_or_store(&opts.data_dir, opts, records.is_empty()) {
                Ok(start) => Ok((journal, records, start)),
                Err(StartError::Damaged(path, why)) => {
                    drop(journal); // releases the directory for the way back
                    Err(OpenError::Damaged { path, what: why })
                }
                Err(StartError::Io(e)) => return Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let (journal, records, start) = match opened {
        Ok(x) => x,
        Err(e) => {
            id = recover_from_damage(opts, id, &e)?;
            let (journal, records) = Journal::open(&opts.data_dir).map_err(|e| e.to_string())?;
            let start = StartGroup::load_or_store(&opts.data_dir, opts, records.is_empty())
                .map_err(|e| e.to_string())?;
            (journal, records, start)
        }
    };
    if !start.join && !start.nodes.iter().any(|(n, _)| *n == id) {
        return Err(format!(
            "node {} is not in the group it was started with ({}); give --id of one of them, or --join to add a node to a running group",
            id,
            start.describe()
        ));
    }
    if let Some((_, a)) = start.nodes.iter().find(|(n, _)| *n == id) {
        if *a != opts.listen {
            trex_net::log_line!(
                "WARN",
                "--listen {} differs from this node's address in its group ({a}); the others will look for it there",
                opts.listen
            );
        }
    }
    let ids: Vec<NodeId> = start.nodes.iter().map(|(id, _)| *id).collect();
    let mut cfg = Config::new(id, ids);
    cfg.addrs = start
        .nodes
        .iter()
        .map(|(id, a)| (*id, a.to_string()))
        .collect();
    cfg.joining = start.join;
    cfg.election_ms = opts.election_ms;
    cfg.heartbeat_ms = opts.heartbeat_ms;
    cfg.seed = unix_ms() ^ id;
    cfg.background_checkpoints = true;
    cfg.snapshot_every = opts.checkpoint_every.max(1);
    let count = records.len();
    let replica = Replica::recover(cfg, records, unix_ms())?;
    let st = replica.status();
    trex_net::log_line!(
        "INFO",
        "node {} recovered {count} journal records from {}: promised ballot {}.{}, snapshot at slot {}",
        id,
        opts.data_dir.display(),
        st.promised.counter,
        st.promised.node,
        st.snapshot
    );
    let n = replica.voters(st.applied).len();
    let health = Arc::new(Health::default());
    let mut el = EventLoop::bind(opts.listen, opts.limits, |registry, waker| {
        let checkpointer = Checkpointer::start(waker.clone())?;
        let (syncer, how) = Syncer::detect(registry, service_token(SYNC_TOKEN), waker);
        trex_net::log_line!("INFO", "{how}");
        let mut svc = ConsensusService {
            id,
            replica,
            // Journal::open synced what it read back: all of it is durable.
            driver: Driver::new(journal.lsn()),
            io: NodeIo {
                id,
                cluster_id: opts.cluster_id,
                journal,
                peers: BTreeMap::new(),
                pending: HashMap::new(),
                replies: VecDeque::new(),
                to_self: Vec::new(),
                frame: Vec::new(),
                metrics: NodeMetrics::new(),
            },
            syncer,
            registry: registry.try_clone()?,
            addrs: BTreeMap::new(),
            peer_names: BTreeMap::new(),
            next_token: 0,
            syncing: false,
            leading: false,
            refused_peer: trex_net::util::Throttle::new(Duration::from_secs(10)),
            sync_started: None,
            health: health.clone(),
            build: opts.build,
            checkpointer,
        };
        svc.refresh_peers();
        Ok(svc)
    })
    .map_err(|e| {
        format!(
            "cannot listen on {}: {e}; is another process using the port?",
            opts.listen
        )
    })?;
    if let Some(tls) = &opts.tls {
        el.enable_tls(tls.clone());
    }
    el.stop_on_signals()
        .map_err(|e| format!("cannot install signal handling: {e}"))?;
    el.set_health(health.clone());
    if let Some(m) = &opts.metrics {
        let mut reg = metrics::registry(&opts.build);
        el.enable_metrics(&mut reg);
        el.service().io.metrics.register(&mut reg);
        let at = metrics::serve(m.listen, reg, health)
            .map_err(|e| format!("cannot serve metrics on {}: {e}", m.listen))?;
        trex_net::log_line!(
            "INFO",
            "metrics on http://{at}/metrics (and /healthz, /readyz)"
        );
    }
    trex_net::log_line!(
        "INFO",
        "consensus node {} listening on {} ({})",
        id,
        el.local_addr(),
        if start.join {
            "joining a running group".to_string()
        } else {
            format!("group of {n}")
        }
    );
    trex_net::util::sd_notify("READY=1\nSTATUS=consensus node listening");
    el.run().map_err(|e| format!("event loop failed: {e}"))?;
    trex_net::util::sd_notify("STOPPING=1");
    trex_net::log_line!("INFO", "consensus node {} stopped cleanly", id);
    Ok(())
}

/// The file in a consensus node's data directory that keeps the group it was
/// first started with.
pub const GROUP_FILE: &str = "GROUP";

/// Why the `GROUP` file could not be used.
enum StartError {
    /// It is there but damaged: handled as a damaged journal.
    Damaged(std::path::PathBuf, String),
    /// The directory cannot be used (permissions, I/O).
    Io(String),
}

impl From<String> for StartError {
    fn from(e: String) -> StartError {
        StartError::Io(e)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Damaged(p, why) => write!(f, "{}: {why}", p.display()),
            StartError::Io(e) => f.write_str(e),
        }
    }
}

/// The group a node was first started with, as its data directory keeps it:
/// until the log records the group, this is what the node counts quorums
/// of, so a later start with other `--peers` must not change it.
struct StartGroup {
    join: bool,
    nodes: Vec<(NodeId, SocketAddr)>,
}

impl StartGroup {
    fn describe(&self) -> String {
        let v: Vec<String> = self.nodes.iter().map(|(i, a)| format!("{i}={a}")).collect();
        v.join(",")
    }

    /// Reads `GROUP` from `dir`, or (first start: an empty journal and no
    /// file) writes it from `opts`. File format, one line each: `join` or
    /// `start`, then `ID=HOST:PORT` per node.
    fn load_or_store(
        dir: &std::path::Path,
        opts: &ConsensusOptions,
        fresh: bool,
    ) -> Result<StartGroup, StartError> {
        let path = dir.join(GROUP_FILE);
        let given = StartGroup {
            join: opts.join,
            nodes: opts.peers.clone(),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let kept = StartGroup::parse(&text).map_err(|e| {
                    StartError::Damaged(path.clone(), format!("its group file is damaged ({e})"))
                })?;
                if kept.join != given.join || kept.nodes != given.nodes {
                    trex_net::log_line!(
                        "INFO",
                        "this node was first started {} {}; it keeps that (--peers and --join on later starts only give addresses to reach the others; the log records the group's changes)",
                        if kept.join { "to join" } else { "with the group" },
                        kept.describe()
                    );
                }
                // Addresses of nodes the kept group lacks still help a
                // joining node find the others.
                Ok(kept)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !fresh && !given.join {
                    trex_net::log_line!(
                        "WARN",
                        "{} is missing (a data directory from before it was kept); taking the group from --peers: {}",
                        path.display(),
                        given.describe()
                    );
                }
                let mut text = String::from(if given.join { "join\n" } else { "start\n" });
                for (id, a) in &given.nodes {
                    text.push_str(&format!("{id}={a}\n"));
                }
                let text = with_crc(text);
                let tmp = dir.join(format!("{GROUP_FILE}.tmp"));
                std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .and_then(|()| std::fs::File::open(dir)?.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}; check the data directory's permissions and free space", path.display()))?;
                Ok(given)
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(StartError::Damaged(
                path.clone(),
                format!("its group file is damaged ({e})"),
            )),
            Err(e) => Err(StartError::Io(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn parse(text: &str) -> Result<StartGroup, String> {
        let body = text.trim_end_matches('\n');
        let text = match body.rsplit_once('\n') {
            Some((before, last)) if last.starts_with("crc=") => {
                let want = u32::from_str_radix(&last[4..], 16)
                    .map_err(|_| format!("line \"{last}\" is not a checksum"))?;
                let covered = &text[..before.len() + 1];
                if crc32fast::hash(covered.as_bytes()) != want {
                    return Err("its checksum does not match".into());
                }
                covered
            }
            _ => return Err("its checksum line is missing".into()),
        };
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let join = match lines.next() {
            Some("join") => true,
            Some("start") => false,
            Some(other) => return Err(format!("first line \"{other}\" is neither start nor join")),
            None => return Err("the file is empty".into()),
        };
        let mut nodes = Vec::new();
        for l in lines {
            let (id, a) = l
                .split_once('=')
                .ok_or_else(|| format!("line \"{l}\" is not ID=HOST:PORT"))?;
            let id = id.parse().map_err(|_| format!("bad id in line \"{l}\""))?;
            let a = a
                .parse()
                .map_err(|_| format!("bad address in line \"{l}\""))?;
            nodes.push((id, a));
        }
        Ok(StartGroup { join, nodes })
    }
}

/// The file in a consensus node's data directory that holds the id it was
/// added under after its journal was damaged (absent otherwise: `--id`).
pub const NODE_ID_FILE: &str = "NODE_ID";

fn read_node_id(dir: &std::path::Path) -> Result<Option<NodeId>, String> {
    match std::fs::read_to_string(dir.join(NODE_ID_FILE)) {
        Ok(t) => t.trim().parse().map(Some).map_err(|_| {
            format!(
                "{}/{NODE_ID_FILE} holds {:?}, not a node id; restore it, or move the data directory aside and add the node again (`trex endpoint add`, then --join)",
                dir.display(),
                t.trim()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}/{NODE_ID_FILE}: {e}", dir.display())),
    }
}

/// Writes `text` to `dir/name` atomically and durably.
fn write_durably(dir: &std::path::Path, name: &str, text: &str) -> Result<(), String> {
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(name));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| {
            format!(
                "cannot write {}: {e}; check the data directory's permissions and free space",
                path.display()
            )
        })
}

/// The safe way back for a node whose journal is damaged (see
/// `docs/consensus.md`, "A damaged journal"): what is left may lack a promise
/// or an accepted value this node acknowledged, so it must never vote under
/// its old id again. It sets the damaged files aside, asks the group to
/// remove its old id and to add it under a new one (the next unused id, same
/// address; one `group-replace`), and starts as a joining node that learns
/// the log before it votes. Retried (with a line every 10 s) for up to 10 minutes while no
/// majority answers. Returns the new id.
fn recover_from_damage(
    opts: &ConsensusOptions,
    old: NodeId,
    damage: &OpenError,
) -> Result<NodeId, String> {
    let dir = &opts.data_dir;
    trex_net::log_line!(
        "ERROR",
        "{damage}; consensus node {old} may have lost a promise or an accepted value, so it will not vote under id {old} again: it asks the group to add it back under a new id and learns the log from the others"
    );
    // The group and the addresses this node knows, before anything moves.
    let kept = std::fs::read_to_string(dir.join(GROUP_FILE))
        .ok()
        .and_then(|t| StartGroup::parse(&t).ok());
    let mut known: Vec<(NodeId, SocketAddr)> = kept.map(|g| g.nodes).unwrap_or_default();
    known.extend(opts.peers.iter().copied());
    let addr = known
        .iter()
        .find(|(i, _)| *i == old)
        .map_or(opts.listen, |(_, a)| *a);
    let contacts: Vec<String> = known
        .iter()
        .filter(|(_, a)| *a != addr)
        .map(|(_, a)| a.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if contacts.is_empty() {
        return Err(format!(
            "{damage}; no other consensus node is known to learn the log from: restore the journal from a backup, or start a new group"
        ));
    }
    // Set the damaged journal aside (kept for inspection, never read again).
    let stamp = unix_ms();
    for e in std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))? {
        let Ok(e) = e else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.starts_with("journal-") && name.ends_with(".log")) || name == DURABLE_FILE {
            let to = dir.join(format!("damaged-{stamp}-{name}"));
            std::fs::rename(e.path(), &to).map_err(|e| format!("cannot set {name} aside: {e}"))?;
        }
    }
    let t0 = Instant::now();
    let mut said = Instant::now() - Duration::from_secs(60);
    let (new, group_text) = loop {
        match rejoin_attempt(old, &addr.to_string(), &contacts.join(","), opts.cluster_id) {
            Ok(Some(done)) => break done,
            Ok(None) => {}
            Err(e) if t0.elapsed() > Duration::from_secs(600) => {
                return Err(format!(
                    "could not be added back to the group within 10 minutes ({e}); the damaged journal is set aside as damaged-{stamp}-*. Check that a majority of the group runs (`trex endpoint status`), then start this node again"
                ));
            }
            Err(e) if said.elapsed() >= Duration::from_secs(10) => {
                said = Instant::now();
                trex_net::log_line!("WARN", "not added back yet: {e}; retrying");
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // GROUP first: a crash between the two leaves the old id with a joining
    // group, which the next start recovers from the same way.
    write_durably(dir, GROUP_FILE, &group_text)?;
    write_durably(dir, NODE_ID_FILE, &format!("{new}\n"))?;
    trex_net::log_line!(
        "INFO",
        "added back to the consensus group as node {new} at {addr} (id {old} is retired); learning the log from {}",
        contacts.join(",")
    );
    Ok(new)
}

/// One step of [`recover_from_damage`]: `Some(new id)` once this address is in
/// the group under an id other than `old`; `None` after a step that needs
/// another (the removal was submitted).
fn rejoin_attempt(
    old: NodeId,
    addr: &str,
    contacts: &str,
    cluster_id: u32,
) -> Result<Option<(NodeId, String)>, String> {
    use crate::client::{ConsensusClient, Submit};
    use crate::sm::Op;
    let mut c = ConsensusClient::new(contacts, Duration::from_secs(1))
        .map_err(|e| e.to_string())?
        .with_total(Duration::from_secs(3))
        .with_cluster_id(cluster_id);
    let g = c.group(&Op::Group).map_err(|e| e.to_string())?;
    if g.current.is_empty() {
        return Err("the group is not recorded yet (no leader since it started)".into());
    }
    let mut all = g.current.clone();
    if let Some((_, next)) = &g.pending {
        all.extend(next.clone());
    }
    // A previous attempt may have got this far.
    if let Some((id, _)) = all.iter().find(|(id, a)| a.as_str() == addr && **id != old) {
        return Ok(Some((*id, joining_group_text(&g))));
    }
    if g.pending.is_some() {
        return Err("a change of the group is in progress".into());
    }
    let new = all
        .keys()
        .chain(g.retired.iter())
        .copied()
        .chain([old])
        .max()
        .unwrap_or(old)
        + 1;
    // One change: the old id leaves and the new one joins (the group keeps
    // its size, so it never passes through a smaller, more fragile one).
    let op = if g.current.contains_key(&old) {
        Op::GroupReplace {
            old,
            id: new,
            addr: addr.to_string(),
        }
    } else {
        Op::GroupAdd {
            id: new,
            addr: addr.to_string(),
        }
    };
    let g = c
        .group(&op)
        .map_err(|e| format!("replacing id {old} by {new}: {e}"))?;
    Ok(Some((new, joining_group_text(&g))))
}

/// The `GROUP` file of a node that joins `g` (whom to learn the log from).
fn joining_group_text(g: &crate::sm::GroupView) -> String {
    let mut text = String::from("join\n");
    let mut nodes = g.current.clone();
    if let Some((_, next)) = &g.pending {
        nodes.extend(next.clone());
    }
    for (id, a) in &nodes {
        text.push_str(&format!("{id}={a}\n"));
    }
    with_crc(text)
}

/// Ends `text` with a checksum line, `crc=` and eight lower-case hex digits:
/// the CRC-32 of everything before it, so that a damaged `GROUP` file is
/// found (one that still parses could name another group).
fn with_crc(mut text: String) -> String {
    let crc = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("crc={crc:08x}\n"));
    text
}
