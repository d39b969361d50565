//! A blocking client of the consensus group: submits commands (following
//! not-leader hints, retrying with the same sequence number so a command is
//! applied once), and asks nodes for their status. Used by the command line and
//! by storage units to register themselves.

use crate::error::ConsensusError;
use crate::sm::{
    decode_group, decode_members, decode_projection, decode_result, GroupView, Member, Op,
    Projection,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};
use trex_net::conn::{read_frame, ReadFrameError};
use trex_net::tls::ClientStream;
use trex_wire::consensus::{self as cw, NodeId, SubmitReply};
use trex_wire::{begin_frame, finish_frame, ErrorCode, Header, Opcode, Reader};

/// The default consensus endpoints (the addresses `trex up` uses).
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402";

/// A client of the consensus group.
pub struct ConsensusClient {
    endpoints: Vec<String>,
    /// Where the next round through the endpoints starts: after the last one
    /// whose call failed.
    preferred: usize,
    leader: Option<String>,
    /// A connection kept open to the node that answered last.
    conn: Option<(String, ClientStream)>,
    client_id: u64,
    seq: u64,
    timeout: Duration,
    /// How long one submission may take in all, every endpoint and retry
    /// included (default: three call timeouts, at least 3 s).
    total: Option<Duration>,
    /// Sent in every frame: the nodes refuse frames of another cluster.
    cluster_id: u32,
    /// The endpoints given (kept after the group's own, in case the group
    /// cannot be read).
    configured: Vec<String>,
    /// When the endpoints were last set from the group's record (`None`:
    /// never): a long-lived client follows changes of the consensus group.
    learned_at: Option<Instant>,
    /// Set when a leader hint named a node outside the endpoints: the group
    /// changed, learn it at the next chance.
    stale: bool,
}

/// How often a long-lived client reads the consensus group to follow its
/// changes (`trex endpoint add|remove|replace`): a unit or sequencer started
/// with the old nodes keeps reaching the group after all of them were
/// replaced one at a time. (10 s; sooner when a leader hint names a node it
/// did not know.)
pub const GROUP_REFRESH: Duration = Duration::from_secs(10);

fn connect(addr: &str, timeout: Duration) -> Result<ClientStream, CallError> {
    trex_net::conn::connect(addr, timeout)
        .map(|(s, _)| s)
        .map_err(|e| match e {
            // A name that does not resolve will not on the next try either.
            trex_net::conn::ConnectError::Resolve { .. } => CallError::WrongCluster(e.to_string()),
            // Certificates the other side refuses (its message says which
            // to check) are refused by every node alike.
            trex_net::conn::ConnectError::Tls { .. } => CallError::WrongCluster(e.to_string()),
            e => CallError::Failed(e.to_string()),
        })
}

/// Why one call to one node failed.
enum CallError {
    /// No retry helps: the node belongs to another cluster (`wrong-cluster`),
    /// or its address does not resolve. The text says what to fix.
    WrongCluster(String),
    /// No retry helps: the node refused the request as `not-authorized`.
    NotAuthorized(String),
    /// Anything else (no connection, no reply, a refusal): try again or elsewhere.
    Failed(String),
}

impl From<String> for CallError {
    fn from(s: String) -> CallError {
        CallError::Failed(s)
    }
}

impl CallError {
    fn into_consensus(self, addr: &str) -> ConsensusError {
        match self {
            // The server's message says what to do (check --cluster-id).
            CallError::WrongCluster(t) => ConsensusError::Config(t),
            CallError::NotAuthorized(t) => ConsensusError::NotAuthorized(t),
            CallError::Failed(reason) => ConsensusError::Unreachable {
                addr: addr.to_string(),
                reason,
            },
        }
    }
}

fn one_call(
    addr: &str,
    op: Opcode,
    body: &[u8],
    timeout: Duration,
    cluster_id: u32,
) -> Result<(Header, Vec<u8>), CallError> {
    let mut s = connect(addr, timeout)?;
    call_on(&mut s, addr, op, body, cluster_id)
}

fn call_on(
    s: &mut ClientStream,
    addr: &str,
    op: Opcode,
    body: &[u8],
    cluster_id: u32,
) -> Result<(Header, Vec<u8>), CallError> {
    let mut f = Vec::new();
    let st = begin_frame(&mut f);
    f.extend_from_slice(body);
    finish_frame(
        &mut f,
        st,
        Header {
            opcode: op as u8,
            request_id: 1,
            cluster_id,
            ..Header::default()
        },
    );
    s.write_all(&f).map_err(|e| format!("{addr}: {e}"))?;
    let (h, b) = read_frame(s).map_err(|e| match e {
        // A TLS failure after the handshake: the node refused this
        // certificate (TLS 1.3 says so only once the client reads).
        ReadFrameError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            CallError::WrongCluster(format!("{addr}: {e}"))
        }
        ReadFrameError::Io(e) => CallError::Failed(format!("{addr}: no reply ({e})")),
        ReadFrameError::Frame(e) => CallError::Failed(format!("{addr}: {e}")),
    })?;
    if h.is_error() {
        let e = trex_wire::decode_error(&b).map_err(|e| e.to_string())?;
        let code = ErrorCode::from_u16(e.code);
        let text = format!(
            "{addr}: {}: {}",
            code.map_or("error", ErrorCode::name),
            e.message
        );
        return Err(match code {
            Some(ErrorCode::WrongCluster) => CallError::WrongCluster(text),
            Some(ErrorCode::NotAuthorized) => CallError::NotAuthorized(text),
            _ => CallError::Failed(text),
        });
    }
    Ok((h, b))
}

impl ConsensusClient {
    /// A client for `endpoints` (comma-separated HOST:PORT list).
    pub fn new(endpoints: &str, timeout: Duration) -> Result<ConsensusClient, ConsensusError> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ConsensusError::Config(
                "no consensus endpoints given: pass --endpoints HOST:PORT,... or set TREX_ENDPOINTS"
                    .into(),
            ));
        }
        Ok(ConsensusClient {
            configured: endpoints.clone(),
            learned_at: None,
            stale: false,
            endpoints,
            preferred: 0,
            leader: None,
            conn: None,
            client_id: trex_net::util::random_u64() | 1,
            seq: 0,
            timeout,
            total: None,
            cluster_id: 0,
        })
    }

    /// Bounds each submission to `total` in all (what a user's `--timeout`
    /// means): each call then waits at most a third of it (at least 100 ms),
    /// so a silent node leaves time to try the others.
    pub fn with_total(mut self, total: Duration) -> ConsensusClient {
        self.total = Some(total);
        self.timeout = (total / 3).max(Duration::from_millis(100));
        self
    }

    /// How long one submission may take in all.
    fn budget(&self) -> Duration {
        self.total
            .unwrap_or(self.timeout.max(Duration::from_secs(1)) * 3)
    }

    /// Sends `cluster_id` in every frame instead of the default 0 (the nodes'
    /// `--cluster-id`).
    pub fn with_cluster_id(mut self, cluster_id: u32) -> ConsensusClient {
        self.cluster_id = cluster_id;
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Submits an operation and returns its result, following the leader.
    /// Retries (after timeouts too) reuse the sequence number, so the command is
    /// applied at most once.
    pub fn submit(&mut self, op: &Op) -> Result<Vec<u8>, ConsensusError> {
        self.seq += 1;
        let mut body = Vec::new();
        cw::encode_submit(&mut body, self.client_id, self.seq, &op.encode());
        let deadline = Instant::now() + self.budget();
        let mut last_err = String::new();
        let mut tries = 0usize;
        while Instant::now() < deadline {
            let addr = match self.leader.take() {
                Some(a) => a,
                None => {
                    let a = self.endpoints[(self.preferred + tries) % self.endpoints.len()].clone();
                    tries += 1;
                    a
                }
            };
            match self.call_kept(&addr, &body) {
                Ok((_, b)) => match cw::decode_submit_reply(&b)
                    .map_err(|e| ConsensusError::Protocol(format!("{addr}: {e}")))?
                {
                    SubmitReply::Applied(res) => {
                        self.leader = Some(addr);
                        if !matches!(op, Op::Group) {
                            self.follow_group();
                        }
                        return Ok(res);
                    }
                    SubmitReply::NotLeader { addr: hint, .. } if !hint.is_empty() => {
                        self.stale |= !self.endpoints.contains(&hint);
                        self.leader = Some(hint);
                    }
                    SubmitReply::NotLeader { .. } => {
                        last_err =
                            format!("{addr} does not know a leader yet (election under way?)");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    SubmitReply::Timeout => last_err = format!("{addr} could not commit in time"),
                },
                Err(e @ (CallError::WrongCluster(_) | CallError::NotAuthorized(_))) => {
                    return Err(e.into_consensus(&addr));
                }
                Err(CallError::Failed(e)) => {
                    last_err = e;
                    // Go on with the endpoint after the one that failed, not
                    // with it again: a leader cut off (its calls time out)
                    // would otherwise cost a second timeout when it is first in
                    // the list, as long as a whole sequencer lease.
                    if let Some(i) = self.endpoints.iter().position(|a| *a == addr) {
                        self.preferred = (i + 1) % self.endpoints.len();
                        tries = 0;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Err(ConsensusError::Unavailable {
            waited: self.budget(),
            last: last_err,
            endpoints: self.endpoints.join(","),
        })
    }

    /// Sets the endpoints from the group's record (its voting nodes and a
    /// change in progress, then the configured ones), every
    /// [`GROUP_REFRESH`] or when a hint showed them stale. Best effort: the
    /// endpoints stay as they are if the group cannot be read.
    fn follow_group(&mut self) {
        let due = match self.learned_at {
            None => {
                // A fresh client (a command) does not pay for this; a
                // long-lived one starts the clock on its first success.
                self.learned_at = Some(Instant::now());
                self.stale
            }
            Some(t) => self.stale || t.elapsed() >= GROUP_REFRESH,
        };
        if !due {
            return;
        }
        self.learned_at = Some(Instant::now());
        self.stale = false;
        let Ok(b) = self.submit(&Op::Group) else {
            return;
        };
        let Ok(Ok(payload)) = decode_result(&b) else {
            return;
        };
        let Ok(g) = decode_group(&mut Reader::new(payload)) else {
            return;
        };
        let mut eps: Vec<String> = g.current.values().cloned().collect();
        if let Some((_, next)) = &g.pending {
            eps.extend(next.values().cloned());
        }
        if eps.is_empty() {
            return; // not recorded yet
        }
        for e in &self.configured {
            eps.push(e.clone());
        }
        let mut seen = std::collections::BTreeSet::new();
        eps.retain(|e| seen.insert(e.clone()));
        if eps != self.endpoints {
            self.endpoints = eps;
            self.preferred = 0;
        }
    }

    /// Calls `addr` over the kept connection, opening one if needed.
    fn call_kept(&mut self, addr: &str, body: &[u8]) -> Result<(Header, Vec<u8>), CallError> {
        let mut conn = match self.conn.take() {
            Some((a, s)) if a == addr => s,
            _ => connect(addr, self.timeout)?,
        };
        let r = call_on(&mut conn, addr, Opcode::Submit, body, self.cluster_id);
        if r.is_ok() {
            self.conn = Some((addr.to_string(), conn));
        }
        r
    }

    /// One node's status (not through the log), asked as cluster 0 (the
    /// default; a node of another cluster refuses with `wrong-cluster`).
    pub fn node_status(addr: &str, timeout: Duration) -> Result<cw::NodeStatus, ConsensusError> {
        ConsensusClient::node_status_in(addr, timeout, 0)
    }

    /// One node's status, asked as cluster `cluster_id`.
    pub fn node_status_in(
        addr: &str,
        timeout: Duration,
        cluster_id: u32,
    ) -> Result<cw::NodeStatus, ConsensusError> {
        let (_, b) = one_call(addr, Opcode::NodeStatus, &[], timeout, cluster_id)
            .map_err(|e| e.into_consensus(addr))?;
        cw::decode_node_status(&b).map_err(|e| ConsensusError::Protocol(format!("{addr}: {e}")))
    }
}

/// Anything that submits operations to the consensus group and returns their
/// results: a [`ConsensusClient`], or an `Env` (trex-log).
pub trait Submit {
    /// Submits an operation and returns its raw result (a status byte, then
    /// the payload or a refusal; see `trex_wire::ops`). Retries reuse the
    /// command's sequence number, so it is applied at most once.
    fn submit(&mut self, op: &Op) -> Result<Vec<u8>, ConsensusError>;

    /// Submits an operation and returns its payload, or
    /// [`ConsensusError::Refused`] with the state machine's typed reason.
    fn submit_ok(&mut self, op: &Op) -> Result<Vec<u8>, ConsensusError> {
        let r = self.submit(op)?;
        match decode_result(&r) {
            Ok(Ok(payload)) => Ok(payload.to_vec()),
            Ok(Err(refused)) => Err(ConsensusError::Refused(refused)),
            Err(e) => Err(ConsensusError::Protocol(format!(
                "the result of {} does not decode: {e}; the consensus group may run another version of trex",
                op.name()
            ))),
        }
    }

    /// The members, read through the log (linearizable).
    fn members(&mut self) -> Result<BTreeMap<NodeId, Member>, ConsensusError> {
        let b = self.submit_ok(&Op::Members)?;
        decode_members(&mut Reader::new(&b)).map_err(|e| ConsensusError::Protocol(e.to_string()))
    }

    /// Submits a consensus-group operation (`Group`, `GroupAdd`,
    /// `GroupRemove`) and decodes the group it answers.
    fn group(&mut self, op: &Op) -> Result<GroupView, ConsensusError> {
        let b = self.submit_ok(op)?;
        let mut r = Reader::new(&b);
        let g = decode_group(&mut r).map_err(|e| ConsensusError::Protocol(e.to_string()))?;
        r.finish()
            .map_err(|e| ConsensusError::Protocol(e.to_string()))?;
        Ok(g)
    }

    /// Every projection ever installed, oldest first, through the log (in
    /// pages of `layout-history`).
    fn layout_history(&mut self) -> Result<Vec<Projection>, ConsensusError> {
        let bad = |e: trex_wire::DecodeError| ConsensusError::Protocol(e.to_string());
        let mut out = Vec::new();
        loop {
            let b = self.submit_ok(&Op::LayoutHistory {
                from: out.len() as u64,
                max: trex_wire::ops::LAYOUT_HISTORY_MAX,
            })?;
            let mut r = Reader::new(&b);
            let len = r.u64().map_err(bad)?;
            let n = r.u32().map_err(bad)?;
            for _ in 0..n {
                out.push(decode_projection(&mut r).map_err(bad)?);
            }
            r.finish().map_err(bad)?;
            if n == 0 || out.len() as u64 >= len {
                return Ok(out);
            }
        }
    }

    /// The current projection (if any) and how many were ever installed,
    /// through the log.
    fn layout(&mut self) -> Result<(u64, Option<Projection>), ConsensusError> {
        let b = self.submit_ok(&Op::Layout)?;
        let bad = |e: trex_wire::DecodeError| ConsensusError::Protocol(e.to_string());
        let mut r = Reader::new(&b);
        let n = r.u64().map_err(bad)?;
        let p = if r.remaining() > 0 {
            Some(decode_projection(&mut r).map_err(bad)?)
        } else {
            None
        };
        Ok((n, p))
    }
}

impl Submit for ConsensusClient {
    fn submit(&mut self, op: &Op) -> Result<Vec<u8>, ConsensusError> {
        ConsensusClient::submit(self, op)
    }
}

impl<T: Submit + ?Sized> Submit for &mut T {
    fn submit(&mut self, op: &Op) -> Result<Vec<u8>, ConsensusError> {
        (**self).submit(op)
    }
}

/// Registers node `id` with the consensus group and keeps the registration
/// fresh (every 5 s) on a background thread, for as long as the process runs,
/// sending `cluster_id` (the registering node's own). Failures are logged and
/// retried: a storage unit serves whether or not the group is reachable.
pub fn keep_registered(
    endpoints: String,
    id: NodeId,
    role: crate::sm::Role,
    addr: String,
    cluster_id: u32,
) {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    keep_registered_with(endpoints, id, role, addr, cluster_id, flag);
}

/// [`keep_registered`], also telling through `registered` whether the group
/// holds the registration (set after a successful register or heartbeat,
/// cleared after a failed one): a node's readiness.
pub fn keep_registered_with(
    endpoints: String,
    id: NodeId,
    role: crate::sm::Role,
    addr: String,
    cluster_id: u32,
    registered_flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let spawned = std::thread::Builder::new()
        .name("trex-register".into())
        .spawn(move || {
            let mut registered = false;
            let mut client = match ConsensusClient::new(&endpoints, Duration::from_secs(2)) {
                Ok(c) => c.with_cluster_id(cluster_id),
                Err(e) => return trex_net::log_line!("ERROR", "cannot register: {e}"),
            };
            loop {
                let op = if registered {
                    Op::Heartbeat { id }
                } else {
                    Op::Register {
                        id,
                        role,
                        addr: addr.clone(),
                    }
                };
                let result = client.submit_ok(&op);
                registered_flag.store(result.is_ok(), Ordering::Relaxed);
                match result {
                    Ok(_) if !registered => {
                        registered = true;
                        trex_net::log_line!(
                            "INFO",
                            "registered as node {id} ({}) with {endpoints}",
                            role.name()
                        );
                    }
                    Ok(_) => {}
                    Err(e) if e.is_refused(crate::sm::Refusal::IdInUse) => {
                        // Another live node holds this id: serving on under it
                        // would hand that node's clients to this one.
                        trex_net::log_line!("ERROR", "cannot register as node {id}: {e}; stopping");
                        std::process::exit(1);
                    }
                    Err(e) => {
                        trex_net::log_line!(
                            "WARN",
                            "registration with {endpoints} failed: {e}; retrying"
                        );
                        registered = false;
                    }
                }
                std::thread::sleep(Duration::from_secs(if registered { 5 } else { 1 }));
            }
        });
    if let Err(e) = spawned {
        trex_net::log_line!("ERROR", "cannot start the registration thread: {e}");
    }
}
