//! The sequencer: hands out log addresses from a lock-free counter, and only
//! while it holds the sequencer lease with a safety gap to spare.
//!
//! The token path is one atomic load of the serving deadline and one
//! `fetch_add`. A background thread ("leadership") competes for the lock
//! `sequencer` in the lock service, and on winning takes over in this order:
//! install a projection naming this sequencer at the next epoch
//! (compare-and-set through the layout service) → seal every storage unit of the
//! projection at that epoch → start the counter at the highest tail the seals
//! report → serve. It renews the lease every third of the TTL; the serving
//! deadline is the *local monotonic* time the renewal was sent plus the TTL minus
//! the safety gap, so neither clock drift against the consensus leader (bounded
//! by the gap) nor a pause of this process (SIGSTOP, a long GC) lets it serve past
//! the lease: after a pause the deadline has simply passed. A token it handed out
//! just before a pause belongs to an epoch the next sequencer has sealed: storage
//! units refuse it.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit as MetricUnit};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use trex_consensus::client::keep_registered_with;
use trex_consensus::lock::LockClient;
use trex_consensus::sm::{Op, Role};
use trex_consensus::ConsensusError;
use trex_log::env::{mono_now, unit_alive, At, Env, TcpEnv};
use trex_log::LogError;
use trex_net::metrics::{self, BuildInfo, CounterFamily, Health, MetricsConfig, U64Gauge};
use trex_net::reply::{node_info, refuse_foreign_cluster, reply_header, violation, Reply, ReplyTo};
use trex_net::tls;
use trex_net::unit_client::UnitApi;
use trex_net::util::{duration_text, list_text};
use trex_net::{EventLoop, Flow, LoopConfig, Service};
use trex_wire::ops::Refusal;
use trex_wire::{self as wire, begin_frame, finish_frame, ErrorCode, Header, Opcode, TokenReply};

/// The name of the sequencer lease in the lock service.
pub const SEQUENCER_LOCK: &str = trex_consensus::sm::SEQUENCER_LEASE;

/// How to run a sequencer.
#[derive(Clone, Debug)]
pub struct SequencerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The address clients use (registered, probed, handed out in hints):
    /// `--advertise`, or `listen` when `None`.
    pub advertise: Option<String>,
    /// Consensus endpoints.
    pub endpoints: String,
    /// Node id (registered as a sequencer).
    pub id: u64,
    /// Lease length.
    pub ttl: Duration,
    /// Stop serving this long before the lease could lapse.
    pub safety_gap: Duration,
    /// Event-loop limits.
    pub limits: LoopConfig,
    /// While active, run a repair this often (take out units that stopped
    /// answering, let empty spares replace them): `None` leaves it to
    /// `trex repair`.
    pub repair_every: Option<Duration>,
    /// Replicas every chain should have (default: the longest chain seen).
    pub replicas: Option<usize>,
    /// Cluster id: token requests must carry it, and this sequencer sends it to
    /// the consensus nodes and storage units.
    pub cluster_id: u32,
    /// Serve metrics, `/healthz` and `/readyz` over HTTP (`--metrics-listen`).
    pub metrics: Option<MetricsConfig>,
    /// This binary's version and revision (`node-info`, `trex_build_info`).
    pub build: BuildInfo,
    /// Mutual TLS on every connection, and the roles certificates grant
    /// (`None`: plain TCP, every request served).
    pub tls: Option<trex_net::tls::TlsConfig>,
}

/// Counters of the sequencer's token path, lease loop and repair loop (the
/// gauges are sampled from [`Shared`] by [`SequencerService`]).
pub struct SequencerMetrics {
    token_requests: CounterFamily,
    granted: Counter,
    refused: Counter,
    tokens: Counter,
    takeovers: Counter,
    leases_lost: Counter,
    repair: CounterFamily,
    serving: U64Gauge,
    lease_held: U64Gauge,
    lease_remaining_ms: U64Gauge,
    epoch: U64Gauge,
    next_address: U64Gauge,
    registered: U64Gauge,
}

impl Default for SequencerMetrics {
    fn default() -> SequencerMetrics {
        let token_requests = CounterFamily::default();
        let granted = token_requests
            .get_or_create(&[("result", "granted")])
            .clone();
        let refused = token_requests
            .get_or_create(&[("result", "not_sequencer")])
            .clone();
        SequencerMetrics {
            token_requests,
            granted,
            refused,
            tokens: Counter::default(),
            takeovers: Counter::default(),
            leases_lost: Counter::default(),
            repair: CounterFamily::default(),
            serving: U64Gauge::default(),
            lease_held: U64Gauge::default(),
            lease_remaining_ms: U64Gauge::default(),
            epoch: U64Gauge::default(),
            next_address: U64Gauge::default(),
            registered: U64Gauge::default(),
        }
    }
}

impl SequencerMetrics {
    /// Registers every sequencer metric in `reg` under `trex_sequencer_`.
    pub fn register(&self, reg: &mut Registry) {
        let r = reg.sub_registry_with_prefix("sequencer");
        r.register(
            "token_requests",
            "Token requests answered, by result (granted, not_sequencer)",
            self.token_requests.clone(),
        );
        r.register("tokens", "Log addresses handed out", self.tokens.clone());
        r.register(
            "takeovers",
            "Takeovers completed (lease won, projection installed, units sealed)",
            self.takeovers.clone(),
        );
        r.register(
            "leases_lost",
            "Times the lease was lost or handed over after serving",
            self.leases_lost.clone(),
        );
        r.register(
            "repair_actions",
            "Repair-loop actions while active, by action (probe, suspect, repair, repair_failed, spare_joined)",
            self.repair.clone(),
        );
        let gauges = [
            ("serving", "1 while the token path serves", &self.serving),
            (
                "lease_held",
                "1 from winning the sequencer lease to losing or releasing it",
                &self.lease_held,
            ),
            ("epoch", "Layout epoch the tokens carry", &self.epoch),
            (
                "next_address",
                "The next address the counter hands out",
                &self.next_address,
            ),
            (
                "registered",
                "1 while the consensus group holds this node's registration",
                &self.registered,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        r.register_with_unit(
            "lease_remaining",
            "Milliseconds until the serving deadline (lease expiry less the safety gap); 0 when not serving",
            MetricUnit::Other("milliseconds".into()),
            self.lease_remaining_ms.clone(),
        );
    }

    fn repair(&self, action: &'static str) {
        self.repair.get_or_create(&[("action", action)]).inc();
    }
}

impl SequencerOptions {
    /// The address clients use: `advertise`, else `listen`.
    pub fn addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// What the token path reads: all atomics, no locks.
pub struct Shared {
    /// Simulated time (ns), or `None` for the process's monotonic clock
    /// ([`mono_now`], the clock of [`TcpEnv`]).
    sim_clock: Option<Arc<AtomicU64>>,
    /// Serve while the clock (ns) is below this.
    serve_until_ns: AtomicU64,
    epoch: AtomicU64,
    counter: AtomicU64,
    /// Where the active sequencer is, for not-sequencer hints.
    hint: Mutex<String>,
    /// Counters (token requests, tokens, takeovers, repairs).
    metrics: SequencerMetrics,
    /// From winning the lease to losing or releasing it.
    lease_held: AtomicBool,
    /// The consensus group holds this node's registration.
    registered: Arc<AtomicBool>,
    stop: AtomicBool,
    /// A client sent a token request naming a newer layout epoch than ours.
    newer_layout: AtomicBool,
    /// When (clock ns; 0: never) a client's token request reached this
    /// sequencer while it was not serving: a client that could not reach the
    /// active one reports it so ([`Log::token`](trex_log::Log::token)).
    reported_ns: AtomicU64,
}

impl Shared {
    /// Token state on the process's monotonic clock, or on a simulated one.
    pub fn new(sim_clock: Option<Arc<AtomicU64>>) -> Shared {
        Shared {
            sim_clock,
            serve_until_ns: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            hint: Mutex::new(String::new()),
            metrics: SequencerMetrics::default(),
            lease_held: AtomicBool::new(false),
            registered: Arc::new(AtomicBool::new(false)),
            stop: AtomicBool::new(false),
            newer_layout: AtomicBool::new(false),
            reported_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        match &self.sim_clock {
            Some(c) => c.load(Ordering::Acquire),
            None => mono_now().as_nanos() as u64,
        }
    }

    /// The token path: `count` consecutive addresses, if the lease allows.
    pub fn next(&self, count: u32) -> TokenReply {
        if self.now_ns() >= self.serve_until_ns.load(Ordering::Acquire) {
            let hint = self.hint.lock().map(|h| h.clone()).unwrap_or_default();
            self.metrics.refused.inc();
            return TokenReply::NotSequencer { hint };
        }
        let first = self.counter.fetch_add(u64::from(count), Ordering::Relaxed);
        self.metrics.granted.inc();
        self.metrics.tokens.inc_by(u64::from(count));
        TokenReply::Granted {
            epoch: self.epoch.load(Ordering::Acquire),
            first,
        }
    }

    fn stop_serving(&self) {
        self.serve_until_ns.store(0, Ordering::Release);
    }

    /// Whether the token path serves now.
    pub fn serving(&self) -> bool {
        self.now_ns() < self.serve_until_ns.load(Ordering::Acquire)
    }

    /// The sequencer's metrics.
    pub fn metrics(&self) -> &SequencerMetrics {
        &self.metrics
    }

    /// Samples the lease and counter into the gauges; says whether this
    /// sequencer is ready (registered) and whether it serves or stands by.
    fn refresh_metrics(&self, health: &Health) {
        let m = &self.metrics;
        let (now, until) = (self.now_ns(), self.serve_until_ns.load(Ordering::Acquire));
        let serving = now < until;
        let registered = self.registered.load(Ordering::Relaxed);
        m.serving.set(u64::from(serving));
        m.lease_held
            .set(u64::from(self.lease_held.load(Ordering::Relaxed)));
        m.lease_remaining_ms
            .set(until.saturating_sub(now) / 1_000_000);
        m.epoch.set(self.epoch.load(Ordering::Acquire));
        m.next_address.set(self.counter.load(Ordering::Relaxed));
        m.registered.set(u64::from(registered));
        match (registered, serving) {
            (false, _) => health.set_ready(false, "not registered with the consensus group (yet)"),
            (true, true) => health.set_ready(true, "active: serving tokens"),
            (true, false) => {
                health.set_ready(true, "standby: not serving; competing for the lease")
            }
        }
    }

    /// Asks the lease thread to release the lease and end.
    pub fn stop(&self) {
        self.stop_serving();
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The token service in the event loop.
pub struct SequencerService {
    shared: Arc<Shared>,
    replies: VecDeque<Reply>,
    cluster_id: u32,
    /// Readiness, refreshed with the gauges.
    health: Arc<Health>,
    /// Answered to `node-info`.
    build: BuildInfo,
}

const METRICS_TIMER: u64 = 1;
/// How often the lease gauges and readiness are sampled.
const METRICS_EVERY: Duration = Duration::from_millis(100);

impl SequencerService {
    /// The token service over `shared`, serving requests of `cluster_id` only.
    pub fn new(shared: Arc<Shared>, cluster_id: u32) -> SequencerService {
        SequencerService {
            shared,
            replies: VecDeque::new(),
            cluster_id,
            health: Arc::new(Health::default()),
            build: BuildInfo::default(),
        }
    }

    /// Answers `node-info` with `build` (the default: the workspace version,
    /// revision unknown).
    pub fn with_build(mut self, build: BuildInfo) -> SequencerService {
        self.build = build;
        self
    }

    /// Reports readiness to `health` (for `/readyz`).
    pub fn with_health(mut self, health: Arc<Health>) -> SequencerService {
        self.health = health;
        self
    }
}

impl Service for SequencerService {
    /// Tokens need a client certificate (or better); `node-info` needs none.
    fn authorize(&self, role: tls::Role, header: &Header, _body: &[u8]) -> Result<(), String> {
        if header.opcode == Opcode::NodeInfo as u8 {
            return Ok(());
        }
        tls::check(role, tls::Role::Client, "token")
    }

    fn on_frame(&mut self, to: ReplyTo, header: &Header, body: &[u8]) -> Flow {
        let cluster_id = self.cluster_id;
        let bad = |code: ErrorCode, msg: String| violation(to, header, cluster_id, code, &msg);
        // As a storage unit does: a request of another cluster is refused
        // before its opcode is looked at (a reply frame is refused as such).
        if !header.is_response() {
            if let Some(r) = refuse_foreign_cluster(to, header, "sequencer", 0, cluster_id) {
                self.replies.push_back(r);
                return Flow::Close;
            }
        }
        if header.opcode == Opcode::NodeInfo as u8 && !header.is_response() {
            let r = node_info(
                to,
                header,
                body,
                Role::Sequencer,
                &self.build,
                0,
                cluster_id,
            );
            let flow = if r.close { Flow::Close } else { Flow::Reply };
            self.replies.push_back(r);
            return flow;
        }
        if header.opcode != Opcode::Token as u8 || header.is_response() {
            let msg = format!(
                "opcode {:#04x} is not a sequencer request (token 0x30, node-info 0x40)",
                header.opcode
            );
            self.replies.push_back(bad(ErrorCode::UnknownOpcode, msg));
            return Flow::Close;
        }
        let count = match wire::decode_token_request(body) {
            Ok(c) => c,
            Err(e) => {
                self.replies.push_back(bad(
                    ErrorCode::MalformedBody,
                    format!("token body does not decode: {e}"),
                ));
                return Flow::Close;
            }
        };
        if header.epoch > self.shared.epoch.load(Ordering::Acquire) {
            self.shared.newer_layout.store(true, Ordering::Release);
        }
        let t = self.shared.next(count);
        // A client's request (its layout epoch, never 0; this sequencer's own
        // reachability probe sends 0) while not serving: it could not reach the
        // active sequencer, or has an old layout. The standby loop probes the
        // active one on it.
        if header.epoch > 0 && matches!(t, TokenReply::NotSequencer { .. }) {
            self.shared
                .reported_ns
                .store(self.shared.now_ns().max(1), Ordering::Release);
        }
        let mut f = Vec::with_capacity(64);
        let s = begin_frame(&mut f);
        wire::encode_token_reply(&mut f, &t);
        finish_frame(&mut f, s, reply_header(header, 0, 0, self.cluster_id));
        self.replies.push_back(Reply {
            to,
            frame: f,
            close: false,
        });
        Flow::Reply
    }

    fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }

    fn periodic_timers(&self) -> Vec<(Duration, u64)> {
        vec![(METRICS_EVERY, METRICS_TIMER)]
    }

    fn on_timer(&mut self, _id: u64, _now: Instant) {
        self.shared.refresh_metrics(&self.health);
    }
}

/// Seals every storage unit of the projection at `epoch`; returns the highest
/// tail they report.
///
/// A unit that refuses the seal as `full` has no room for even a seal record
/// (its disk was full before it could set aside its `META` file): it can
/// record no write at any epoch either (an entry needs more room than a
/// seal), so it needs no fence, and refusing the takeover for it would stop
/// every append. Its tail (from `info`) still counts; it is passed over with
/// a warning, and clients take it out of its chains when it answers `full`.
fn seal_all(env: &mut dyn Env, units: &[(u64, String)], epoch: u64) -> Result<u64, String> {
    let mut tail = 0;
    for (id, addr) in units {
        let r = match At(&mut *env, addr).seal(epoch) {
            Ok(r) => r,
            Err(e) if e.code() == Some(ErrorCode::Full) => {
                let info = At(&mut *env, addr)
                    .info()
                    .map_err(|e| format!("unit {id} at {addr}: {e}"))?;
                trex_net::log_line!(
                    "WARN",
                    "unit {id} at {addr} is full and cannot record the seal at epoch {epoch} ({e}); it cannot record any write either, so the takeover goes on without sealing it; free space on it and restart it"
                );
                tail = tail.max(info.tail);
                continue;
            }
            Err(e) => return Err(format!("unit {id} at {addr}: {e}")),
        };
        if r.sealed_epoch > epoch {
            return Err(format!(
                "unit {id} is already sealed at epoch {} (a newer sequencer?)",
                r.sealed_epoch
            ));
        }
        tail = tail.max(r.tail);
    }
    Ok(tail)
}

/// Competes for the lease, takes over, renews; runs until [`Shared::stop`].
/// One environment (one consensus client: an entry in the replicated client
/// table) for the whole life of the process. `env`'s clock must be the one
/// `shared` reads.
pub fn leadership(opts: SequencerOptions, shared: Arc<Shared>, mut env: Box<dyn Env>) {
    let holder = format!("{}@{}", opts.id, opts.addr());
    let gap = opts.safety_gap;
    let mut backoff_logged = false;
    let serve_until = |until: Duration| {
        shared
            .serve_until_ns
            .store(until.as_nanos() as u64, Ordering::Release);
    };
    while !shared.stop.load(Ordering::Relaxed) {
        // Every way back here gave the lease up (released, lost or never won).
        shared.lease_held.store(false, Ordering::Relaxed);
        // Compete only while clients can reach us (see the serving loop).
        if !reachable(&opts, &mut *env) {
            update_hint(&mut *env, &shared);
            env.sleep(opts.ttl / 4);
            continue;
        }
        let sent = env.now();
        let lease = match LockClient::system(&mut *env).acquire(SEQUENCER_LOCK, &holder, opts.ttl) {
            Ok(l) => l,
            Err(e) => {
                if !backoff_logged {
                    trex_net::log_line!("INFO", "standing by: {e}");
                    backoff_logged = true;
                }
                update_hint(&mut *env, &shared);
                if e.is_refused(Refusal::LockHeld) && revoke_unreachable(&opts, &mut *env, &shared)
                {
                    continue; // the lease is free: compete at once
                }
                // Often enough that a lapsed lease changes hands soon after
                // its grace ends (a tenth of the TTL: one small command per
                // 300 ms with the default 3 s).
                env.sleep((opts.ttl / 10).max(Duration::from_millis(50)));
                continue;
            }
        };
        backoff_logged = false;
        shared.lease_held.store(true, Ordering::Relaxed);
        trex_net::log_line!(
            "INFO",
            "won the sequencer lease (fencing token {}); taking over",
            lease.token
        );
        let deadline = sent + opts.ttl.saturating_sub(gap);
        match take_over(&opts, &mut *env, deadline, lease.token, &shared) {
            Ok((epoch, start)) => {
                shared.counter.store(start, Ordering::Release);
                shared.epoch.store(epoch, Ordering::Release);
                // Serve from a fresh renewal, not from the acquire the takeover used up.
                let sent = env.now();
                if LockClient::system(&mut *env)
                    .renew(SEQUENCER_LOCK, lease.token, opts.ttl)
                    .is_err()
                {
                    trex_net::log_line!(
                        "WARN",
                        "lost the lease right after the takeover; standing by"
                    );
                    continue;
                }
                serve_until(sent + opts.ttl.saturating_sub(gap));
                shared.metrics.takeovers.inc();
                trex_net::log_line!(
                    "INFO",
                    "serving tokens at epoch {epoch} from address {start}"
                );
            }
            Err(e) => {
                trex_net::log_line!(
                    "WARN",
                    "takeover failed: {e}; releasing the lease and retrying"
                );
                let _ = LockClient::system(&mut *env).release(SEQUENCER_LOCK, lease.token);
                shared.lease_held.store(false, Ordering::Relaxed);
                env.sleep(opts.ttl / 4);
                continue;
            }
        }
        // Renew well before the lease could lapse. A renewal that fails for a
        // transient reason (an election) is retried until the serving deadline;
        // serving stops at that deadline whatever happens.
        let mut last_ok = env.now();
        let mut next_renew = last_ok + opts.ttl / 3;
        let mut last_follow = Duration::ZERO;
        let mut unreachable = 0;
        shared.newer_layout.store(false, Ordering::Release);
        'serving: loop {
            // Renew every third of the TTL. Meanwhile, when a client reports a
            // newer layout (a reconfiguration), read the layout at once — at
            // most every 100 ms, and without renewing — rather than make every
            // append wait for the next renewal.
            while env.now() < next_renew && !shared.stop.load(Ordering::Relaxed) {
                if env.now() >= last_follow + Duration::from_millis(100)
                    && shared.newer_layout.swap(false, Ordering::AcqRel)
                {
                    last_follow = env.now();
                    if !follow_layout(&opts, &mut *env, &shared) {
                        let _ = LockClient::system(&mut *env).release(SEQUENCER_LOCK, lease.token);
                        break 'serving;
                    }
                }
                env.sleep(
                    next_renew
                        .saturating_sub(env.now())
                        .min(Duration::from_millis(50)),
                );
            }
            if shared.stop.load(Ordering::Relaxed) {
                let _ = LockClient::system(&mut *env).release(SEQUENCER_LOCK, lease.token);
                return;
            }
            // A sequencer its clients cannot reach must not keep the lease: it
            // renews over its own outgoing connections, so nothing else would
            // make it let go (issue 10, case 8). Two failed self-probes in a
            // row: hand the lease over at once.
            if reachable(&opts, &mut *env) {
                unreachable = 0;
            } else {
                unreachable += 1;
                if unreachable >= 2 {
                    shared.stop_serving();
                    let _ = LockClient::system(&mut *env).release(SEQUENCER_LOCK, lease.token);
                    if let Ok(mut h) = shared.hint.lock() {
                        h.clear();
                    }
                    trex_net::log_line!(
                        "WARN",
                        "clients cannot reach this sequencer at {} (two probes of its own address failed); released the lease, standing by until it is reachable again",
                        opts.listen
                    );
                    break;
                }
            }
            let sent = env.now();
            match LockClient::system(&mut *env).renew(SEQUENCER_LOCK, lease.token, opts.ttl) {
                Ok(_) => {
                    serve_until(sent + opts.ttl.saturating_sub(gap));
                    last_ok = sent;
                    next_renew = sent + opts.ttl / 3;
                    if !follow_layout(&opts, &mut *env, &shared) {
                        // The layout names another sequencer: hand the lease over.
                        let _ = LockClient::system(&mut *env).release(SEQUENCER_LOCK, lease.token);
                        break;
                    }
                }
                Err(e) => {
                    // Typed: the state machine said the lease is gone (expired,
                    // released, passed on). Anything else (no leader, a
                    // timeout) is retried while the lease may still hold.
                    let gone = e.refusal().is_some_and(Refusal::lease_lost);
                    if !gone && env.now() - last_ok < opts.ttl.saturating_sub(gap) {
                        trex_net::log_line!("WARN", "lease renewal failed ({e}); retrying");
                        // A short pause, not a hot loop (an election, say).
                        next_renew = env.now() + (opts.ttl / 10).max(Duration::from_millis(50));
                        continue;
                    }
                    shared.stop_serving();
                    if let Ok(mut h) = shared.hint.lock() {
                        h.clear(); // no longer us; learned again while standing by
                    }
                    trex_net::log_line!(
                        "WARN",
                        "lost the sequencer lease ({e}); stopped serving, standing by"
                    );
                    break;
                }
            }
        }
        // Out of the serving loop: the lease was lost or handed over.
        shared.metrics.leases_lost.inc();
    }
}

/// A standby's check on the active sequencer, run when a client reported it
/// could not reach it (within the last lease TTL): two token requests for no
/// addresses to the active sequencer, 100 ms apart, each within the
/// environment's timeout. If neither is answered while this standby reaches the
/// consensus group, the active sequencer's lease is released for it (by its
/// fencing token) and this returns true; the active one learns it at its next
/// renewal (a third of the TTL) and stops serving, and tokens it handed out
/// meanwhile are refused by the units the takeover seals.
///
/// Why a standby and a client: the active sequencer's own probe reaches it
/// over loopback and cannot see a cut of its inbound traffic (issue 10, case
/// 8); a client alone cannot tell a dead sequencer from its own partition, and a
/// standby alone could end a healthy lease it merely cannot see. Both failing
/// to reach it is the signal; a standby cut off from the active one and
/// reported to by a client with an old layout at the same time could still end
/// a healthy lease: that costs one takeover, never safety (docs/locks.md).
fn revoke_unreachable(opts: &SequencerOptions, env: &mut dyn Env, shared: &Shared) -> bool {
    let reported = shared.reported_ns.load(Ordering::Acquire);
    if reported == 0 || shared.now_ns().saturating_sub(reported) > opts.ttl.as_nanos() as u64 {
        return false;
    }
    shared.reported_ns.store(0, Ordering::Release);
    let active = shared.hint.lock().map(|h| h.clone()).unwrap_or_default();
    if active.is_empty() || active == opts.addr() {
        return false;
    }
    for attempt in 0..2 {
        if attempt > 0 {
            env.sleep(Duration::from_millis(100));
        }
        if answers(env, &active) {
            return false;
        }
    }
    let mut locks = LockClient::system(&mut *env);
    let Ok(lease) = locks.get(SEQUENCER_LOCK) else {
        return false; // the consensus group does not answer either: not our call
    };
    if lease.released {
        return true;
    }
    match locks.release(SEQUENCER_LOCK, lease.token) {
        Ok(()) => {
            trex_net::log_line!(
                "WARN",
                "a client could not reach the active sequencer at {active} and neither could this standby (two probes): released its lease (fencing token {}) to take over",
                lease.token
            );
            true
        }
        Err(_) => false,
    }
}

/// Whether clients can reach this sequencer: a token request for no addresses
/// (the fast check) sent to its own listen address, through the network like a
/// client's, is answered (granted or not) within the environment's timeout.
/// What it cannot see: a partition that cuts only some clients off; those
/// clients keep their appends waiting until it heals (docs/locks.md).
fn reachable(opts: &SequencerOptions, env: &mut dyn Env) -> bool {
    answers(env, &opts.addr())
}

/// Whether the sequencer at `addr` answers a token request for no addresses
/// (header epoch 0: not a client's report) on a fresh connection within
/// [`trex_log::env::PROBE_TIMEOUT`], granted or not.
fn answers(env: &mut dyn Env, addr: &str) -> bool {
    let ok = env
        .probe(
            addr,
            Opcode::Token,
            &|b| wire::encode_token_request(b, 0),
            trex_log::env::PROBE_TIMEOUT,
        )
        .is_ok_and(|(_, body)| wire::decode_token_reply(&body).is_ok());
    env.forget(addr);
    ok
}

/// Installs a projection naming this sequencer at the next epoch (without any
/// storage unit that cannot be reached, unless it is a stripe's last replica),
/// seals the units, and returns `(epoch, first address to hand out)`. Gives up
/// once `deadline` (the end of the lease, less the safety gap) has passed.
fn take_over(
    opts: &SequencerOptions,
    c: &mut dyn Env,
    deadline: Duration,
    lease_token: u64,
    shared: &Shared,
) -> Result<(u64, u64), SequencerError> {
    for _ in 0..10 {
        let (_, cur) = c.layout()?;
        let cur = cur.ok_or("no layout is installed yet; bootstrap one with `trex layout init`")?;
        let members = c.members()?;
        let addr_of = |id: &u64| members.get(id).map(|m| m.addr.clone()).unwrap_or_default();
        let mut next = cur.clone();
        next.epoch = trex_wire::range::next("epoch", cur.epoch).map_err(|e| e.to_string())?;
        next.sequencer = opts.id;
        let mut all: Vec<u64> = next
            .segments
            .iter()
            .flat_map(|s| s.stripes.iter().flatten().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        let down: Vec<u64> = all
            .iter()
            .copied()
            .filter(|id| unit_alive(&mut *c, &addr_of(id)).is_err())
            .collect();
        for seg in &mut next.segments {
            for chain in &mut seg.stripes {
                chain.retain(|u| !down.contains(u));
                if chain.is_empty() {
                    return Err(format!(
                        "every replica of a stripe is unreachable (units {}); restart them",
                        list_text(&down)
                    )
                    .into());
                }
            }
        }
        if c.now() >= deadline {
            return Err("the lease ran out before the projection was installed".into());
        }
        // Checked against our lease inside the state machine, at the leader's time.
        let op = Op::InstallAsSequencer {
            expected_epoch: cur.epoch,
            projection: next.clone(),
            lease_token,
        };
        match c.submit_ok(&op) {
            Ok(_) => {
                if !down.is_empty() {
                    trex_net::log_line!(
                        "WARN",
                        "took unreachable storage units {} out of the layout",
                        list_text(&down)
                    );
                }
                let units: Vec<(u64, String)> = all
                    .iter()
                    .filter(|u| !down.contains(u))
                    .map(|u| (*u, addr_of(u)))
                    .collect();
                if c.now() >= deadline {
                    return Err("the lease ran out before the units were sealed".into());
                }
                let tail = seal_all(c, &units, next.epoch)?;
                // Units taken out as unreachable may only be slow: seal them
                // too (best effort), so that they refuse the old epoch instead
                // of serving clients that still name them.
                for id in &down {
                    if c.now() >= deadline {
                        break; // the lease matters more
                    }
                    let addr = addr_of(id);
                    let _ = At(&mut *c, &addr).seal(next.epoch);
                }
                if let Ok(mut h) = shared.hint.lock() {
                    *h = opts.addr();
                }
                return Ok((next.epoch, tail));
            }
            Err(e) if e.is_refused(Refusal::EpochMismatch) => continue, // raced with another install: read again
            Err(e) => return Err(e.into()),
        }
    }
    Err("the layout kept changing under the takeover".into())
}

/// A reconfiguration (a storage unit taken out) installs a newer projection that
/// still names this sequencer and seals the units at its epoch: adopt that epoch,
/// or tokens would be refused. Returns false if the layout names another
/// sequencer (serving stops at once).
fn follow_layout(opts: &SequencerOptions, c: &mut dyn Env, shared: &Shared) -> bool {
    let Ok((_, Some(p))) = c.layout() else {
        return true;
    };
    if p.sequencer != opts.id {
        shared.stop_serving();
        trex_net::log_line!(
            "WARN",
            "layout epoch {} names sequencer {}; stopped serving",
            p.epoch,
            p.sequencer
        );
        return false;
    }
    if p.epoch > shared.epoch.load(Ordering::Acquire) {
        shared.epoch.store(p.epoch, Ordering::Release);
        trex_net::log_line!(
            "INFO",
            "layout moved to epoch {} (reconfiguration); serving at it",
            p.epoch
        );
    }
    true
}

/// Learns where the active sequencer is, for hints.
fn update_hint(c: &mut dyn Env, shared: &Shared) {
    let Ok((_, Some(p))) = c.layout() else { return };
    let Ok(members) = c.members() else { return };
    if let (Some(m), Ok(mut h)) = (members.get(&p.sequencer), shared.hint.lock()) {
        *h = m.addr.clone();
    }
}

/// A log client for the repair loop, of this sequencer's cluster.
fn repair_client(opts: &SequencerOptions) -> Result<trex_log::Log, LogError> {
    let env = TcpEnv::new(&opts.endpoints, Duration::from_secs(2))?;
    let env = env.with_cluster_id(opts.cluster_id);
    trex_log::Log::with_env(Box::new(env), trex_net::util::random_u64() | 1)
}

/// The active sequencer's repair loop (see [`SequencerOptions::repair_every`]).
fn repair_loop(opts: SequencerOptions, shared: Arc<Shared>, every: Duration) {
    let mut log: Option<trex_log::Log> = None;
    let mut want = opts.replicas.unwrap_or(0);
    let mut last_err = String::new();
    let mut suspects: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        if !shared.serving() {
            continue; // only the active sequencer repairs
        }
        let l = match log.as_mut() {
            Some(l) => l,
            None => match repair_client(&opts) {
                Ok(l) => log.insert(l),
                Err(e) => {
                    trex_net::log_line!("WARN", "repair: cannot connect: {e}");
                    continue;
                }
            },
        };
        if opts.replicas.is_none() {
            // The recorded factor; a cluster that never recorded one keeps
            // the longest chain it had.
            match l.replication_target() {
                Ok(Some(target)) => want = target,
                _ => {
                    let longest = l
                        .projection()
                        .segments
                        .iter()
                        .flat_map(|s| s.stripes.iter().map(Vec::len))
                        .max()
                        .unwrap_or(0);
                    want = want.max(longest);
                }
            }
        }
        // A unit is taken out only once it has failed two probes in a row,
        // `every` apart: a blip shorter than that costs nothing.
        shared.metrics.repair("probe");
        let down = match l.unreachable_units() {
            Ok(d) => d,
            Err(e) => {
                trex_net::log_line!("WARN", "repair: cannot probe the units: {e}");
                continue;
            }
        };
        let confirmed = down.iter().any(|(id, _)| suspects.contains(id));
        let was_suspect = std::mem::take(&mut suspects);
        for (id, why) in &down {
            shared.metrics.repair("suspect");
            if !was_suspect.contains(id) {
                trex_net::log_line!(
                    "WARN",
                    "repair: unit {id} does not answer ({why}); taking it out if it still does not in {}",
                    duration_text(every)
                );
            }
            suspects.insert(*id);
        }
        if down.is_empty() {
            // A unit that missed a trim applies it now (cheap: one info each).
            if let Err(e) = l.converge_trim() {
                trex_net::log_line!("WARN", "repair: cannot bring trim marks together: {e}");
            }
            // Damaged copies no client reads (a head's) are rewritten from the
            // other replicas while those are still in the layout (one info
            // each; a unit is read through only when it reports damage).
            if let Err(e) =
                l.repair_damaged(&mut |line| trex_net::log_line!("WARN", "repair: {line}"))
            {
                trex_net::log_line!("WARN", "repair: cannot rewrite damaged copies: {e}");
            }
        }
        let spare_may_join = down.is_empty() && l.degraded(want);
        if !(confirmed || spare_may_join) {
            continue; // nothing to do, or waiting for a second failed probe
        }
        match l.repair(Some(want), &mut |line| {
            trex_net::log_line!("INFO", "repair: {line}")
        }) {
            Ok(r) => {
                shared.metrics.repair("repair");
                shared
                    .metrics
                    .repair
                    .get_or_create(&[("action", "spare_joined")])
                    .inc_by(r.joined.len() as u64);
                last_err.clear();
                // Adopt whatever the repair installed at once.
                shared.newer_layout.store(true, Ordering::Release);
                if !r.joined.is_empty() {
                    trex_net::log_line!(
                        "INFO",
                        "repair: {} spare(s) joined; {} entries and {} holes copied; layout epoch {}",
                        r.joined.len(),
                        r.copied,
                        r.holes,
                        r.epoch
                    );
                }
            }
            Err(e) => {
                shared.metrics.repair("repair_failed");
                let e = e.to_string();
                if e != last_err {
                    trex_net::log_line!("WARN", "repair: {e}");
                    last_err = e;
                }
            }
        }
    }
}

/// Runs a sequencer until SIGINT/SIGTERM.
pub fn run_sequencer(opts: &SequencerOptions) -> Result<(), SequencerError> {
    trex_net::block_shutdown_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    if opts.safety_gap >= opts.ttl {
        return Err(SequencerError::Failed(format!(
            "--safety-gap {} must be below --ttl {}; shorten the gap or lengthen the lease",
            duration_text(opts.safety_gap),
            duration_text(opts.ttl)
        )));
    }
    let env = TcpEnv::new(&opts.endpoints, Duration::from_secs(1))?;
    let env = env.with_cluster_id(opts.cluster_id);
    let shared = Arc::new(Shared::new(None));
    let health = Arc::new(Health::default());
    let mut el = EventLoop::bind(opts.listen, opts.limits, |_, _| {
        Ok(SequencerService::new(shared.clone(), opts.cluster_id)
            .with_health(health.clone())
            .with_build(opts.build))
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
        shared.metrics.register(&mut reg);
        let at = metrics::serve(m.listen, reg, health)
            .map_err(|e| format!("cannot serve metrics on {}: {e}", m.listen))?;
        trex_net::log_line!(
            "INFO",
            "metrics on http://{at}/metrics (and /healthz, /readyz)"
        );
    }
    keep_registered_with(
        opts.endpoints.clone(),
        opts.id,
        Role::Sequencer,
        opts.addr(),
        opts.cluster_id,
        shared.registered.clone(),
    );
    let (o, s) = (opts.clone(), shared.clone());
    std::thread::Builder::new()
        .name("trex-lease".into())
        .spawn(move || leadership(o, s, Box::new(env)))
        .map_err(|e| format!("cannot start the lease thread: {e}"))?;
    if let Some(every) = opts.repair_every {
        let (o, s) = (opts.clone(), shared.clone());
        std::thread::Builder::new()
            .name("trex-repair".into())
            .spawn(move || repair_loop(o, s, every))
            .map_err(|e| format!("cannot start the repair thread: {e}"))?;
    }
    trex_net::log_line!(
        "INFO",
        "sequencer {} listening on {}",
        opts.id,
        el.local_addr()
    );
    trex_net::util::sd_notify("READY=1\nSTATUS=sequencer listening (serving or standing by)");
    el.run().map_err(|e| format!("event loop failed: {e}"))?;
    trex_net::util::sd_notify("STOPPING=1");
    shared.stop();
    trex_net::log_line!(
        "INFO",
        "sequencer stopped; {} token requests served",
        shared.metrics.granted.get()
    );
    Ok(())
}

/// Why a sequencer could not take over or start.
#[derive(Debug, Error)]
pub enum SequencerError {
    /// The consensus group refused an operation or could not be reached.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// A log operation (reading the layout, sealing) failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The takeover or the start failed; the text says why and what to do.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for SequencerError {
    fn from(s: String) -> SequencerError {
        SequencerError::Failed(s)
    }
}

impl From<&str> for SequencerError {
    fn from(s: &str) -> SequencerError {
        SequencerError::Failed(s.to_string())
    }
}
