//! A deterministic simulator of a whole cluster: storage units (the real
//! [`Unit`] rules over an in-memory store that loses unsynced records on a
//! crash), sequencers (the real token service and the real lease loop,
//! [`trex_sequencer::leadership`]), the consensus group's replicated state
//! machine (the real [`StateMachine`]: layout, members, locks, exactly-once
//! table), and clients running the real [`Log`] client — appending, reading,
//! filling, checking and following — all on one seeded PRNG, one queue of timed
//! events and virtual time.
//!
//! The log client and the lease loop are blocking code written against
//! [`Env`]. Each runs on its own thread, but only one thread runs at a time: an
//! actor runs until it blocks on a call or a sleep, then hands the baton back to
//! the scheduler, which delivers the next event. Runs are therefore
//! reproducible from the seed (the trace hash proves it).
//!
//! Faults, drawn per seed: message loss and delay (requests and replies),
//! storage-unit crashes (unsynced records lost) and restarts, pauses of
//! sequencers (their lease loop and their token service, like SIGSTOP) and of
//! clients (mid-append, leaving holes for others to fill), consensus
//! unavailability (an election), and a new consensus leader's clock skew.
//! Consensus itself is modelled as one linearizable state machine whose
//! replies may be lost; Multi-Paxos under faults has its own simulator
//! ([`crate::consensus_sim`]).
//!
//! Checks (TESTING.md P1–P5), over every observation of the run:
//! - P1: an acknowledged append is never read as unwritten or as a hole by a
//!   read that started after the acknowledgement, and reads back with its
//!   bytes after the run (a fresh client reads every address at the end);
//! - P2: an address never shows two different values; one entry (its bytes)
//!   never appears at two addresses; only entries some client wrote appear;
//! - P3: an address seen as a hole is never seen with data, and vice versa;
//! - P4: no two grants of one epoch overlap; a `check` that started after an
//!   acknowledgement returns a tail above its address;
//! - P5: no storage unit acknowledges a write whose epoch is below the epoch it
//!   was sealed at when the write arrived.
//!
//! After the faults stop, every client must finish its script and the follower
//! must reach the end of the log (liveness).

use crate::consensus_sim::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use trex_consensus::client::Submit;
use trex_consensus::sm::{Op, Role, StateMachine};
use trex_consensus::ConsensusError;
use trex_log::env::Env;
use trex_log::LogError;
use trex_log::{Log, Slot};
use trex_net::unit_client::{reply_or_error, ClientError};
use trex_net::{Flow, LoopConfig, Service};
use trex_sequencer::{leadership, SequencerOptions, SequencerService, Shared as SeqShared};
use trex_unit::storage::memory::MemStore;
use trex_unit::unit::{Unit, UnitConfig};
use trex_wire::consensus::Command;
use trex_wire::{Header, Opcode, TokenReply, HEADER_LEN};

const MS: u64 = 1_000_000;

/// Settings of one run.
#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions {
    /// Simulated milliseconds with faults.
    pub safety_ms: u64,
    /// Simulated milliseconds the cluster may take afterwards to finish.
    pub liveness_ms: u64,
    /// Appending clients.
    pub clients: usize,
    /// Operations per client.
    pub ops: usize,
    /// Also damage records and fill a unit (off by default; the regression
    /// list and a range of seeds run with it; see docs/testing.md).
    pub hard_faults: bool,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            safety_ms: 10_000,
            liveness_ms: 60_000,
            clients: 3,
            ops: 40,
            hard_faults: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// Seed.
    pub seed: u64,
    /// Events processed.
    pub events: u64,
    /// Appends acknowledged to clients.
    pub acked: u64,
    /// Appends that failed (outcome unknown to the client).
    pub failed_appends: u64,
    /// Addresses observed by reads, fills and the follower.
    pub observations: u64,
    /// Holes seen (filled).
    pub holes: u64,
    /// Layout epochs installed.
    pub epochs: u64,
    /// Storage-unit crashes.
    pub unit_crashes: u64,
    /// Sequencer pauses.
    pub sequencer_pauses: u64,
    /// Client pauses.
    pub client_pauses: u64,
    /// Spares that joined a chain through a repair.
    pub spares_joined: u64,
    /// Addresses copied to spares.
    pub copied: u64,
    /// Writes of a sealed epoch that units refused.
    pub stale_refused: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Records damaged on one replica (at a unit's restart, before recovery).
    pub damaged_records: u64,
    /// Units given a byte budget they then run into (answering `full`).
    pub full_units: u64,
    /// Whether the full unit had left the layout at the end.
    pub full_taken_out: u64,
    /// Readers-only windows (a unit down, appenders and operator stopped).
    pub reader_windows: u64,
    /// Reads, range reads and checks the reader ran inside those windows.
    pub reader_ops: u64,
    /// Of those, how many returned an error.
    pub reader_failures: u64,
    /// Trims below the tail asked for, and how many were reported applied.
    pub trims: u64,
    /// Trims below the tail reported applied.
    pub trims_applied: u64,
    /// Trims above the tail asked for (each must be refused).
    pub trims_above: u64,
    /// Of those, refused with `LogError::Invalid`.
    pub trims_refused: u64,
    /// Addresses read as trimmed.
    pub trimmed_seen: u64,
    /// Simulated ms from the end of the faults until every chain of the open
    /// segment was back at 2 replicas, all of them up.
    pub restored_ms: u64,
    /// Units the operator wiped because repair said so (a returning unit
    /// holding values the log decided otherwise).
    pub wipes: u64,
    /// Hash of the event trace (replays must match).
    pub trace_hash: u64,
}

/// A failed check, naming the seed.
pub type ClusterSimError = String;

enum Payload {
    Reply(Result<(Header, Vec<u8>), ClientError>),
    Result(Vec<u8>),
    Timeout,
    Wake,
}

enum Ev {
    /// Something an actor may be waiting for.
    Ready {
        actor: usize,
        key: u64,
        p: Payload,
    },
    /// A request arrives at a storage unit or a sequencer.
    ToNode {
        addr: String,
        actor: usize,
        key: u64,
        header: Header,
        body: Vec<u8>,
    },
    /// A submission arrives at the consensus group.
    ToConsensus {
        actor: usize,
        key: u64,
        client: u64,
        seq: u64,
        op: Vec<u8>,
    },
    Synced {
        addr: String,
        incarnation: u64,
        lsn: u64,
    },
    Restart {
        addr: String,
    },
    Chaos,
    EndFaults,
}

struct SimUnit {
    unit: Option<Unit<MemStore>>,
    /// The store of a crashed unit, until it restarts.
    dead: Option<MemStore>,
    incarnation: u64,
}

struct SimSeq {
    service: SequencerService,
    actor: usize,
}

enum Node {
    Unit(Box<SimUnit>),
    Seq(SimSeq),
}

#[derive(Default)]
struct Actor {
    name: String,
    waiting: Option<u64>,
    inbox: BTreeMap<u64, Payload>,
    paused_until: u64,
    done: bool,
}

/// Where a reply goes, and what to check about it.
struct Route {
    actor: usize,
    /// A write whose epoch was below the unit's sealed epoch on arrival.
    stale_write: bool,
    /// Token count asked for (token requests).
    token_count: Option<u32>,
    from: String,
}

#[derive(Default)]
struct History {
    /// Entry bytes → (writer, n): every entry any client tried to append.
    issued: BTreeMap<Vec<u8>, (u64, u64)>,
    /// Address → (bytes, time acknowledged).
    acked: BTreeMap<u64, (Vec<u8>, u64)>,
    /// (address, what was seen, when the operation started).
    seen: Vec<(u64, Slot, u64)>,
    /// (tail returned by `check`, when it started).
    checks: Vec<(u64, u64)>,
    /// Epoch → granted ranges (first → end, sequencer).
    grants: BTreeMap<u64, BTreeMap<u64, (u64, String)>>,
    /// Where the follower is.
    follower_at: u64,
    /// The highest trim mark any client asked for (applied or not).
    trim_mark: u64,
}

struct Faults {
    loss: f64,
    delay_max: u64,
    chaos_every: u64,
    /// Chance that a unit's restart also damages one of its records.
    damage: f64,
    /// Whether one unit runs out of space during the run.
    fill: bool,
    /// Whether readers-only windows happen.
    readers: bool,
    /// Whether clients trim.
    trims: bool,
}

struct World {
    seed: u64,
    now: u64,
    clock: Arc<AtomicU64>,
    rng: Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Ev>,
    turn: Option<usize>,
    actors: Vec<Actor>,
    nodes: BTreeMap<String, Node>,
    routes: BTreeMap<u64, Route>,
    abandoned: BTreeSet<u64>,
    next_key: u64,
    sm: StateMachine,
    consensus_down_until: u64,
    leader_skew_ms: i64,
    faulty: bool,
    faults: Faults,
    shutdown: bool,
    shutdown_clock: u64,
    /// `TREX_SIM_DEBUG` set: print every event (to debug a failing seed).
    debug: bool,
    hist: History,
    report: ClusterReport,
    error: Option<String>,
    /// Units holding a damaged record (for good: nothing rewrites it in place).
    damaged: BTreeSet<String>,
    /// The unit that runs out of space (at most one per run).
    full_unit: Option<String>,
    /// The end of the current readers-only window (0: none).
    readers_until: u64,
    /// When the faults stop (simulated ms).
    end_faults_ms: u64,
}

impl World {
    fn at(&mut self, delay_ns: u64, e: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay_ns, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn trace(&mut self, x: u64) {
        self.report.trace_hash = (self.report.trace_hash ^ x).wrapping_mul(0x100_0000_01b3);
    }

    fn fail(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(format!("seed {}: {msg}", self.seed));
        }
    }

    /// Network delay of one message, or `None` if it is lost.
    fn net_delay(&mut self) -> Option<u64> {
        if self.faulty && self.rng.chance(self.faults.loss) {
            self.report.dropped += 1;
            return None;
        }
        let max = if self.faulty {
            self.faults.delay_max
        } else {
            2
        };
        let mut d = 50_000 + self.rng.below(max * MS);
        if self.faulty && self.rng.chance(0.01) {
            d += self.rng.below(600) * MS; // a long stall: the caller times out
        }
        Some(d)
    }

    fn reply(&mut self, actor: usize, key: u64, p: Payload) {
        if let Some(d) = self.net_delay() {
            self.at(d, Ev::Ready { actor, key, p });
        }
    }

    /// Replies a node produced: frames back to the actors that asked.
    fn route_replies(&mut self, addr: &str) {
        let mut out = Vec::new();
        match self.nodes.get_mut(addr) {
            Some(Node::Unit(u)) => {
                let Some(unit) = u.unit.as_mut() else { return };
                while let Some(r) = unit.poll_reply() {
                    out.push(r);
                }
                if let Some(job) = unit.poll_sync() {
                    let inc = u.incarnation;
                    let d = 200_000 + self.rng.below(2 * MS);
                    self.at(
                        d,
                        Ev::Synced {
                            addr: addr.to_string(),
                            incarnation: inc,
                            lsn: job.lsn,
                        },
                    );
                }
            }
            Some(Node::Seq(s)) => {
                while let Some(r) = s.service.poll_reply() {
                    out.push(r);
                }
            }
            None => {}
        }
        for r in out {
            let Some(route) = self.routes.remove(&r.to) else {
                continue;
            };
            let head: Option<&[u8; HEADER_LEN]> =
                r.frame.get(..HEADER_LEN).and_then(|b| b.try_into().ok());
            let h = match head.map(Header::decode) {
                Some(Ok(h)) => h,
                None => return self.fail(format!("{addr} sent a reply shorter than a header")),
                Some(Err(e)) => return self.fail(format!("{addr} sent an undecodable reply: {e}")),
            };
            let body = r.frame[HEADER_LEN..].to_vec();
            let reply = reply_or_error(h, body);
            if route.stale_write {
                match &reply {
                    Ok((_, b)) => {
                        let l = trex_wire::decode_status_list(b);
                        if l.is_ok_and(|l| l.iter().any(|s| s == trex_wire::Status::Ok)) {
                            self.fail(format!(
                                "P5: {addr} acknowledged a write of an epoch below its seal"
                            ));
                        }
                    }
                    Err(_) => self.report.stale_refused += 1,
                }
            }
            if let (Some(count @ 1..), Ok((_, b))) = (route.token_count, &reply) {
                if let Ok(TokenReply::Granted { epoch, first }) = trex_wire::decode_token_reply(b) {
                    self.grant(epoch, first, u64::from(count), &route.from);
                }
            }
            self.reply(route.actor, r.to, Payload::Reply(reply));
        }
    }

    /// P4: grants of one epoch never overlap.
    fn grant(&mut self, epoch: u64, first: u64, count: u64, by: &str) {
        let end = first + count;
        let g = self.hist.grants.entry(epoch).or_default();
        let before = g
            .range(..end)
            .next_back()
            .map(|(f, (e, s))| (*f, *e, s.clone()));
        if let Some((f, e, s)) = before {
            if e > first {
                return self.fail(format!(
                    "P4: epoch {epoch}: {by} granted {first}..{end} overlapping {f}..{e} granted by {s}"
                ));
            }
        }
        g.insert(first, (end, by.to_string()));
    }

    fn deliver(&mut self, addr: String, actor: usize, key: u64, header: Header, body: Vec<u8>) {
        let paused_until = match self.nodes.get(&addr) {
            Some(Node::Seq(s)) => self.actors[s.actor].paused_until,
            _ => 0,
        };
        if paused_until > self.now {
            // A stopped process: the kernel holds the request until it runs.
            let d = paused_until - self.now;
            return self.at(
                d,
                Ev::ToNode {
                    addr,
                    actor,
                    key,
                    header,
                    body,
                },
            );
        }
        let mut route = Route {
            actor,
            stale_write: false,
            token_count: None,
            from: addr.clone(),
        };
        match self.nodes.get_mut(&addr) {
            Some(Node::Unit(u)) => {
                let Some(unit) = u.unit.as_mut() else {
                    return; // crashed: the caller times out
                };
                if header.opcode == Opcode::Write as u8 && header.epoch < unit.meta().sealed_epoch {
                    route.stale_write = true;
                }
                self.routes.insert(key, route);
                unit.on_frame(key, &header, &body);
            }
            Some(Node::Seq(s)) => {
                route.token_count = trex_wire::decode_token_request(&body).ok();
                self.routes.insert(key, route);
                if let Flow::Close = s.service.on_frame(key, &header, &body) {
                    self.fail(format!("{addr} refused a token request as a violation"));
                }
            }
            None => return,
        }
        self.route_replies(&addr);
    }

    fn consensus(&mut self, actor: usize, key: u64, client: u64, seq: u64, op: Vec<u8>) {
        if self.consensus_down_until > self.now {
            return; // electing: the submission is lost, the client retries
        }
        let stamp_ms = ((self.now / MS) as i64 + self.leader_skew_ms) as u64 + 1_700_000_000_000;
        let before = self.sm.history.len();
        let result = self.sm.apply(&Command {
            client,
            seq,
            stamp_ms,
            op,
        });
        if self.sm.history.len() > before {
            self.report.epochs += 1;
        }
        self.reply(actor, key, Payload::Result(result));
    }

    /// The operator wipes the unit at `addr` (taken out of the layout) and
    /// starts it again, empty, on a disk of the same size.
    fn wipe_unit(&mut self, addr: &str) {
        let Some(Node::Unit(u)) = self.nodes.get_mut(addr) else {
            return;
        };
        let budget = match (u.unit.take(), u.dead.take()) {
            (Some(unit), _) => unit.into_store().budget_bytes,
            (None, Some(store)) => store.budget_bytes,
            (None, None) => None,
        };
        let mut store = MemStore::new();
        store.budget_bytes = budget;
        match Unit::open(store, UnitConfig::default()) {
            Ok((unit, _)) => u.unit = Some(unit),
            Err(e) => return self.fail(format!("{addr} did not start empty: {e}")),
        }
        u.incarnation += 1;
        self.damaged.remove(addr);
        self.report.wipes += 1;
        if self.debug {
            eprintln!("operator wipes {addr}");
        }
    }

    /// Whether the storage unit at `addr` is running.
    fn unit_up(&self, addr: &str) -> bool {
        matches!(self.nodes.get(addr), Some(Node::Unit(u)) if u.unit.is_some())
    }

    /// The units sharing a chain with the unit at `addr` in any segment of
    /// the current layout.
    fn partners(&self, addr: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Some(id) = unit_id(addr) else { return out };
        if let Some(p) = self.sm.current() {
            for c in p.segments.iter().flat_map(|s| s.stripes.iter()) {
                if c.contains(&id) {
                    out.extend(c.iter().filter(|u| **u != id).map(|u| unit_addr(*u)));
                }
            }
        }
        out
    }

    /// A unit with a fault that lasts (a damaged record, no space left).
    fn lasting_fault(&self, addr: &str) -> bool {
        self.damaged.contains(addr) || self.full_unit.as_deref() == Some(addr)
    }

    /// Whether a new fault on `addr` keeps one fault per chain: none of its
    /// chain partners has a lasting fault (and, with `partners_up`, every
    /// partner is running).
    fn chain_free(&self, addr: &str, partners_up: bool) -> bool {
        self.partners(addr)
            .iter()
            .all(|p| !self.lasting_fault(p) && (!partners_up || self.unit_up(p)))
    }

    /// Crashes the unit at `addr` (unsynced records lost); it restarts after
    /// `down_ns`.
    fn crash_unit(&mut self, addr: &str, down_ns: u64) {
        if let Some(Node::Unit(u)) = self.nodes.get_mut(addr) {
            let Some(unit) = u.unit.take() else { return };
            let mut store = unit.into_store();
            store.crash();
            if self.debug {
                eprintln!("crash {addr}");
            }
            u.dead = Some(store);
            u.incarnation += 1;
        }
        self.report.unit_crashes += 1;
        self.at(
            down_ns,
            Ev::Restart {
                addr: addr.to_string(),
            },
        );
    }

    /// An address whose newest record on the (crashed) unit at `addr` may be
    /// damaged: in the current layout it belongs to a chain of that unit with
    /// at least one other replica, every one of them running and holding a
    /// record of it; no partner of the unit has a fault of its own.
    fn damage_candidate(&mut self, addr: &str, store: &MemStore) -> Option<u64> {
        if self.lasting_fault(addr) || !self.chain_free(addr, true) {
            return None;
        }
        let id = unit_id(addr)?;
        let p = self.sm.current()?.clone();
        let mut held: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for u in 1..=5u64 {
            if let Some(Node::Unit(n)) = self.nodes.get(&unit_addr(u)) {
                if let Some(unit) = n.unit.as_ref() {
                    held.insert(u, unit.store().addresses().into_iter().collect());
                }
            }
        }
        let candidates: Vec<u64> = store
            .addresses()
            .into_iter()
            .filter(|a| {
                let Some(seg) = p.segments.iter().find(|s| s.start <= *a && *a < s.end) else {
                    return false;
                };
                let chain = &seg.stripes[(*a % seg.stripes.len() as u64) as usize];
                chain.contains(&id)
                    && chain.len() > 1
                    && chain
                        .iter()
                        .filter(|u| **u != id)
                        .all(|u| held.get(u).is_some_and(|h| h.contains(a)))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.below(candidates.len() as u64) as usize])
    }

    fn chaos(&mut self) {
        let d = (self.faults.chaos_every / 2 + self.rng.below(self.faults.chaos_every)) * MS;
        self.at(d, Ev::Chaos);
        if self.now < self.readers_until {
            return; // a readers-only window: one fault at a time
        }
        // A crash never hits a unit whose chain partner has a lasting fault;
        // after a record is damaged no unit fails any more (nothing rewrites
        // the damaged copy, and the layout may move the good ones around).
        let damaged = !self.damaged.is_empty();
        let units: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n, Node::Unit(u) if u.unit.is_some()))
            .map(|(a, _)| a.clone())
            .filter(|a| !damaged && self.chain_free(a, false))
            .collect();
        match self.rng.below(100) {
            0..=24 if !units.is_empty() => {
                let addr = units[self.rng.below(units.len() as u64) as usize].clone();
                let d = (100 + self.rng.below(1500)) * MS;
                self.crash_unit(&addr, d);
            }
            25..=44 => {
                let seqs: Vec<usize> = self
                    .nodes
                    .values()
                    .filter_map(|n| match n {
                        Node::Seq(s) => Some(s.actor),
                        _ => None,
                    })
                    .collect();
                let a = seqs[self.rng.below(seqs.len() as u64) as usize];
                let d = (500 + self.rng.below(2500)) * MS;
                self.actors[a].paused_until = self.actors[a].paused_until.max(self.now + d);
                self.report.sequencer_pauses += 1;
            }
            45..=69 => {
                let clients: Vec<usize> = (0..self.actors.len())
                    .filter(|a| self.actors[*a].name.starts_with("client"))
                    .collect();
                if !clients.is_empty() {
                    let a = clients[self.rng.below(clients.len() as u64) as usize];
                    let d = (300 + self.rng.below(2700)) * MS;
                    self.actors[a].paused_until = self.actors[a].paused_until.max(self.now + d);
                    self.report.client_pauses += 1;
                }
            }
            70..=84 => {
                let d = (100 + self.rng.below(700)) * MS;
                self.consensus_down_until = self.now + d;
                self.leader_skew_ms = self.rng.below(201) as i64 - 100;
            }
            85..=91 if self.faults.fill && self.full_unit.is_none() => {
                // A disk that fills: a unit of the layout, running, whose
                // partners run and have no fault, gets a byte budget a little
                // above what it holds.
                let fits: Vec<String> = units
                    .iter()
                    .filter(|a| {
                        !self.partners(a).is_empty()
                            && !self.lasting_fault(a)
                            && self.chain_free(a, true)
                    })
                    .cloned()
                    .collect();
                if fits.is_empty() {
                    return;
                }
                let addr = fits[self.rng.below(fits.len() as u64) as usize].clone();
                let extra = self.rng.below(3_000);
                if let Some(Node::Unit(u)) = self.nodes.get_mut(&addr) {
                    if let Some(unit) = u.unit.as_mut() {
                        let store = unit.store_mut();
                        store.budget_bytes = Some(store.used_bytes() + extra);
                    }
                }
                if self.debug {
                    eprintln!("{addr} fills up after {extra} more bytes");
                }
                self.full_unit = Some(addr);
                self.report.full_units += 1;
            }
            92..=97 if self.faults.readers && self.report.reader_windows < 2 => {
                // Readers only: a unit of the layout goes down while the
                // appenders and the operator stand still, so only the reader
                // and the follower meet it and must route around it.
                let fits: Vec<String> = units
                    .iter()
                    .filter(|a| !self.partners(a).is_empty() && self.chain_free(a, true))
                    .cloned()
                    .collect();
                if fits.is_empty() {
                    return;
                }
                let addr = fits[self.rng.below(fits.len() as u64) as usize].clone();
                let d = (1_500 + self.rng.below(1_500)) * MS;
                self.crash_unit(&addr, d);
                for a in 0..self.actors.len() {
                    let name = &self.actors[a].name;
                    if name.starts_with("client") || name == "operator" {
                        self.actors[a].paused_until =
                            self.actors[a].paused_until.max(self.now + d + 100 * MS);
                    }
                }
                if self.debug {
                    eprintln!("readers only while {addr} is down");
                }
                self.readers_until = self.now + d;
                self.report.reader_windows += 1;
            }
            _ => {}
        }
    }

    /// Processes one event; returns the actor to run, if any.
    fn step(&mut self, e: Ev) -> Option<usize> {
        self.report.events += 1;
        if self.debug {
            let what = match &e {
                Ev::Ready { actor, key, p } => format!(
                    "ready {} key {key} {}",
                    self.actors[*actor].name,
                    match p {
                        Payload::Reply(Ok(_)) => "reply",
                        Payload::Reply(Err(_)) => "error",
                        Payload::Result(_) => "result",
                        Payload::Timeout => "timeout",
                        Payload::Wake => "wake",
                    }
                ),
                Ev::ToNode {
                    addr,
                    actor,
                    key,
                    header,
                    body,
                } => format!(
                    "to {addr} from {} key {key} op {:#x} epoch {} addrs {:?}",
                    self.actors[*actor].name,
                    header.opcode,
                    header.epoch,
                    trex_wire::decode_write_request(body)
                        .map(|b| b.iter().map(|o| o.addr).collect::<Vec<_>>())
                        .or_else(|_| trex_wire::decode_addr_list(body)
                            .map(|l| l.iter().collect::<Vec<_>>()))
                        .unwrap_or_default()
                ),
                Ev::ToConsensus { actor, key, op, .. } => format!(
                    "consensus from {} key {key} {:?}",
                    self.actors[*actor].name,
                    Op::decode(op).map(|o| format!("{o:?}").chars().take(80).collect::<String>())
                ),
                Ev::Synced { addr, .. } => format!("synced {addr}"),
                Ev::Restart { addr } => format!("restart {addr}"),
                Ev::Chaos => "chaos".into(),
                Ev::EndFaults => "end of faults".into(),
            };
            eprintln!("{:>8.3} ms {what}", self.now as f64 / MS as f64);
        }
        match e {
            Ev::Ready { actor, key, p } => {
                self.trace(actor as u64 * 7919 + key);
                let a = &mut self.actors[actor];
                if a.done {
                    return None;
                }
                if a.paused_until > self.now {
                    let d = a.paused_until - self.now;
                    self.at(d, Ev::Ready { actor, key, p });
                    return None;
                }
                if a.waiting == Some(key) {
                    a.waiting = None;
                    if matches!(p, Payload::Timeout) {
                        self.abandoned.insert(key);
                    }
                    a.inbox.insert(key, p);
                    return Some(actor);
                }
                if !matches!(p, Payload::Timeout) && !self.abandoned.remove(&key) {
                    a.inbox.insert(key, p); // sent, not yet waited for
                }
                None
            }
            Ev::ToNode {
                addr,
                actor,
                key,
                header,
                body,
            } => {
                self.trace(key ^ 0x5555);
                self.deliver(addr, actor, key, header, body);
                None
            }
            Ev::ToConsensus {
                actor,
                key,
                client,
                seq,
                op,
            } => {
                self.trace(key ^ 0xcccc);
                self.consensus(actor, key, client, seq, op);
                None
            }
            Ev::Synced {
                addr,
                incarnation,
                lsn,
            } => {
                if let Some(Node::Unit(u)) = self.nodes.get_mut(&addr) {
                    if u.incarnation == incarnation {
                        if let Some(unit) = u.unit.as_mut() {
                            unit.on_synced(lsn, Ok(()));
                        }
                    }
                }
                self.route_replies(&addr);
                None
            }
            Ev::Restart { addr } => {
                let store = match self.nodes.get_mut(&addr) {
                    Some(Node::Unit(u)) => u.dead.take(),
                    _ => None,
                };
                let mut store = store?;
                // A damaged record: flipped before recovery reads it; or
                // (odd addresses) a record the device fails to read back (EIO
                // on every read, the bytes intact: a bad sector).
                if self.faulty && self.rng.chance(self.faults.damage) {
                    if let Some(a) = self.damage_candidate(&addr, &store) {
                        let done = if a % 2 == 1 {
                            store.fail_reads(a)
                        } else {
                            store.corrupt_payload(a)
                        };
                        if done {
                            if self.debug {
                                let how = if a % 2 == 1 { "read errors" } else { "damage" };
                                eprintln!("{how} at address {a} on {addr}");
                            }
                            self.damaged.insert(addr.clone());
                            self.report.damaged_records += 1;
                        }
                    }
                }
                match Unit::open(store, UnitConfig::default()) {
                    Ok((unit, _)) => {
                        if let Some(Node::Unit(u)) = self.nodes.get_mut(&addr) {
                            u.unit = Some(unit);
                        }
                    }
                    Err(e) => {
                        let msg = format!("{addr} did not recover: {e}");
                        self.fail(msg);
                    }
                }
                None
            }
            Ev::Chaos => {
                if self.faulty {
                    self.chaos();
                }
                None
            }
            Ev::EndFaults => {
                self.faulty = false;
                self.consensus_down_until = 0;
                None
            }
        }
    }
}

struct Handle {
    world: Mutex<World>,
    cv: Condvar,
}

impl Handle {
    fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks actor `me` until `key` is ready (or the run is over: `None`).
    fn block(&self, me: usize, key: u64, timeout_ns: Option<u64>) -> Option<Payload> {
        let mut w = self.lock();
        if let Some(p) = w.actors[me].inbox.remove(&key) {
            return Some(p);
        }
        if w.shutdown {
            return None;
        }
        w.actors[me].waiting = Some(key);
        if let Some(t) = timeout_ns {
            w.at(
                t,
                Ev::Ready {
                    actor: me,
                    key,
                    p: Payload::Timeout,
                },
            );
        }
        w.turn = None;
        self.cv.notify_all();
        while (w.turn != Some(me) || w.actors[me].waiting.is_some()) && !w.shutdown {
            w = self.cv.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        if w.turn != Some(me) {
            return None;
        }
        w.actors[me].inbox.remove(&key)
    }
}

impl Handle {
    /// Actor `me` sleeps `ns` of simulated time.
    /// Returns `Err` once the run is over (scripts must then stop: time no
    /// longer passes).
    fn sleep(&self, me: usize, ns: u64) -> Result<(), String> {
        let key = {
            let mut w = self.lock();
            if w.shutdown {
                return Err("the simulation is over".into());
            }
            w.next_key += 1;
            let key = w.next_key;
            let ev = Ev::Ready {
                actor: me,
                key,
                p: Payload::Wake,
            };
            w.at(ns, ev);
            key
        };
        self.block(me, key, None)
            .map(|_| ())
            .ok_or_else(|| "the simulation is over".to_string())
    }
}

/// The [`Env`] of one simulated actor.
struct SimEnv {
    h: Arc<Handle>,
    me: usize,
    client_id: u64,
    seq: u64,
}

fn over() -> ClientError {
    ClientError::Io("the simulation is over".into())
}

impl Submit for SimEnv {
    fn submit(&mut self, op: &Op) -> Result<Vec<u8>, ConsensusError> {
        self.seq += 1;
        let bytes = op.encode();
        let deadline = self.now() + Duration::from_secs(3);
        while self.now() < deadline {
            let key = {
                let mut w = self.h.lock();
                w.next_key += 1;
                let key = w.next_key;
                if let Some(d) = w.net_delay() {
                    let ev = Ev::ToConsensus {
                        actor: self.me,
                        key,
                        client: self.client_id,
                        seq: self.seq,
                        op: bytes.clone(),
                    };
                    w.at(d, ev);
                }
                key
            };
            match self.h.block(self.me, key, Some(1_000 * MS)) {
                Some(Payload::Result(r)) => return Ok(r),
                Some(_) => {}
                None => {
                    return Err(ConsensusError::Unreachable {
                        addr: "simulated consensus group".into(),
                        reason: over().to_string(),
                    })
                }
            }
        }
        Err(ConsensusError::Unavailable {
            waited: Duration::from_secs(3),
            last: "no result (simulated)".into(),
            endpoints: "simulated consensus group".into(),
        })
    }
}

impl Env for SimEnv {
    fn send(
        &mut self,
        addr: &str,
        op: Opcode,
        epoch: u64,
        body: &dyn Fn(&mut Vec<u8>),
    ) -> Result<u64, ClientError> {
        let mut b = Vec::new();
        body(&mut b);
        let mut w = self.h.lock();
        if w.shutdown {
            return Err(over());
        }
        w.next_key += 1;
        let key = w.next_key;
        let header = Header {
            opcode: op as u8,
            request_id: key,
            epoch,
            body_len: b.len() as u32,
            body_crc: crc32fast::hash(&b),
            ..Header::default()
        };
        if let Some(d) = w.net_delay() {
            let ev = Ev::ToNode {
                addr: addr.to_string(),
                actor: self.me,
                key,
                header,
                body: b,
            };
            w.at(d, ev);
        }
        Ok(key)
    }

    fn recv(&mut self, addr: &str, id: u64) -> Result<(Header, Vec<u8>), ClientError> {
        match self.h.block(self.me, id, Some(500 * MS)) {
            Some(Payload::Reply(r)) => r,
            Some(_) => Err(ClientError::Timeout {
                addr: addr.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                timeout: Duration::from_millis(500),
            }),
            None => Err(over()),
        }
    }

    fn forget(&mut self, _addr: &str) {}

    fn now(&self) -> Duration {
        let mut w = self.h.lock();
        if w.shutdown {
            // Time runs on (a second per look) so every deadline passes and
            // every actor winds down.
            w.shutdown_clock += 1;
            return Duration::from_secs((1 << 40) + w.shutdown_clock);
        }
        Duration::from_nanos(w.now)
    }

    fn sleep(&mut self, d: Duration) {
        let _ = self.h.sleep(self.me, d.as_nanos() as u64); // over: time runs on anyway
    }
}

fn unit_addr(i: u64) -> String {
    format!("10.0.1.{i}:7420")
}

fn unit_id(addr: &str) -> Option<u64> {
    (1..=5).find(|i| unit_addr(*i) == addr)
}

fn seq_addr(i: u64) -> String {
    format!("10.0.2.{i}:7410")
}

/// A log client for actor `me`, writing as `writer`; connecting is retried
/// (the consensus group may be unreachable for a while under faults).
fn connect(h: &Arc<Handle>, me: usize, writer: u64) -> Result<Log, String> {
    let mut last = String::new();
    for attempt in 0..100 {
        // A fresh consensus client id each time, as a real client would have.
        let env = SimEnv {
            h: h.clone(),
            me,
            client_id: (writer << 8) | attempt,
            seq: 0,
        };
        match Log::with_env(Box::new(env), writer) {
            Ok(log) => return Ok(log),
            Err(e) => last = e.to_string(),
        }
        h.sleep(me, 100 * MS)?;
    }
    Err(last)
}

/// One client's script: appends (batches of 1–3), reads, fills and checks,
/// recording everything it sees.
fn client_script(
    h: &Arc<Handle>,
    me: usize,
    writer: u64,
    ops: usize,
    seed: u64,
) -> Result<(), String> {
    let mut log = connect(h, me, writer)?;
    let mut rng = Rng(seed ^ writer.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let now = |h: &Arc<Handle>| h.lock().now;
    let mut n = 0u64;
    let trims = h.lock().faults.trims;
    for _ in 0..ops {
        let start = now(h);
        let known = h.lock().hist.acked.keys().next_back().map_or(0, |a| a + 1);
        if trims && rng.chance(0.04) {
            trim_op(h, &mut log, &mut rng, known);
            h.sleep(me, (rng.below(30) + 1) * MS)?;
            continue;
        }
        match rng.below(100) {
            0..=59 => {
                let k = 1 + rng.below(3) as usize;
                let mut entries = Vec::new();
                for _ in 0..k {
                    n += 1;
                    let mut e = format!("w{writer}-n{n}-").into_bytes();
                    e.extend(std::iter::repeat_n(b'x', rng.below(40) as usize));
                    h.lock().hist.issued.insert(e.clone(), (writer, n));
                    entries.push(e);
                }
                let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_slice()).collect();
                // Half the appends go through the pipeline (batches of 1-2,
                // up to 3 in flight), half through the blocking call.
                let result = if rng.chance(0.5) {
                    log.append_batch(&refs)
                } else {
                    let mut p = log.pipeline(1 + rng.below(2) as usize, 3);
                    let mut out = vec![Err(LogError::Failed(String::new())); refs.len()];
                    let mut failed = None;
                    for e in &refs {
                        if let Err(e) = p.submit(e) {
                            failed = Some(e);
                        }
                    }
                    if let Err(e) = p.flush() {
                        failed = Some(e);
                    }
                    while let Some((t, r)) = p.poll() {
                        out[t as usize] = r;
                    }
                    match failed {
                        Some(e) => Err(e),
                        None => out.into_iter().collect(),
                    }
                };
                match result {
                    Ok(addrs) => {
                        let mut w = h.lock();
                        let t = w.now;
                        for (a, e) in addrs.iter().zip(entries) {
                            if let Some((prev, _)) = w.hist.acked.insert(*a, (e.clone(), t)) {
                                let msg = format!(
                                    "P2: address {a} acknowledged twice ({:?} and {:?})",
                                    String::from_utf8_lossy(&prev),
                                    String::from_utf8_lossy(&e)
                                );
                                w.fail(msg);
                            }
                            w.report.acked += 1;
                        }
                    }
                    Err(_) => h.lock().report.failed_appends += 1,
                }
            }
            60..=79 => {
                let from = rng.below(known + 3);
                let count = 1 + rng.below(4);
                if let Ok(slots) = log.read_range(from, count) {
                    let mut w = h.lock();
                    for (i, s) in slots.into_iter().enumerate() {
                        w.hist.seen.push((from + i as u64, s, start));
                    }
                }
            }
            80..=89 => {
                let addr = known.saturating_sub(4) + rng.below(6);
                if let Ok(s) = log.fill(addr) {
                    h.lock().hist.seen.push((addr, s, start));
                }
            }
            90..=94 => {
                if let Ok(t) = log.check() {
                    h.lock().hist.checks.push((t, start));
                }
            }
            _ => {
                if let Ok(t) = log.check_fast() {
                    h.lock().hist.checks.push((t, start));
                }
            }
        }
        let mut pause = (rng.below(30) + 1) * MS;
        if rng.chance(0.05) {
            pause += 200 * MS;
        }
        h.sleep(me, pause)?;
    }
    Ok(())
}

/// A trim: above the tail (it must be refused) or below it (a mark in the
/// lower half of what is acknowledged; recorded before it is asked, since it
/// may take effect even if the call fails).
fn trim_op(h: &Arc<Handle>, log: &mut Log, rng: &mut Rng, known: u64) {
    if rng.chance(0.4) {
        let mark = known + 100_000;
        h.lock().report.trims_above += 1;
        match log.trim(mark) {
            Ok(r) => h.lock().fail(format!(
                "a trim below {mark}, far above the tail, was accepted: {r:?}"
            )),
            Err(LogError::Invalid(_)) => h.lock().report.trims_refused += 1,
            Err(_) => {} // the tail could not be asked: nothing was trimmed
        }
    } else {
        let mark = rng.below(known / 2 + 1);
        {
            let mut w = h.lock();
            w.hist.trim_mark = w.hist.trim_mark.max(mark);
            w.report.trims += 1;
        }
        if log.trim(mark).is_ok() {
            h.lock().report.trims_applied += 1;
        }
    }
}

/// The reader: idle until a readers-only window (a unit down, nobody
/// appending), then reads, range-reads and checks until it closes, recording
/// what it sees; done once the clients are and the faults have stopped.
fn reader_script(h: &Arc<Handle>, me: usize, clients: &[usize], seed: u64) -> Result<(), String> {
    let mut log = connect(h, me, 9_003)?;
    let mut rng = Rng(seed ^ 0x7265_6164_6572);
    loop {
        h.sleep(me, 40 * MS)?;
        let (start, until, known, done) = {
            let w = h.lock();
            let known = w.hist.acked.keys().next_back().map_or(0, |a| a + 1);
            let done = clients.iter().all(|c| w.actors[*c].done) && !w.faulty;
            (w.now, w.readers_until, known, done)
        };
        if start >= until {
            if done {
                return Ok(());
            }
            continue;
        }
        let ok = match rng.below(4) {
            0 => {
                let from = rng.below(known + 1);
                let count = 1 + rng.below(8);
                log.read_range(from, count).map(|slots| {
                    let mut w = h.lock();
                    for (i, s) in slots.into_iter().enumerate() {
                        w.hist.seen.push((from + i as u64, s, start));
                    }
                })
            }
            1 => {
                let addr = rng.below(known + 1);
                log.read(addr)
                    .map(|s| h.lock().hist.seen.push((addr, s, start)))
            }
            2 => log.check().map(|t| h.lock().hist.checks.push((t, start))),
            _ => log
                .check_fast()
                .map(|t| h.lock().hist.checks.push((t, start))),
        };
        let mut w = h.lock();
        w.report.reader_ops += 1;
        if let Err(e) = ok {
            w.report.reader_failures += 1;
            if w.debug {
                eprintln!("reader: {e}");
            }
        }
    }
}

/// The follower: yields the log in address order from 0, filling holes that
/// stay unwritten, until the clients are done and it has passed every
/// acknowledged address.
fn follower_script(h: &Arc<Handle>, me: usize, clients: &[usize]) -> Result<(), String> {
    let mut log = connect(h, me, 9_000)?;
    let mut sub = log.subscribe(0, Duration::from_millis(300));
    let mut errors = 0;
    loop {
        {
            let w = h.lock();
            let end = w.hist.acked.keys().next_back().map_or(0, |a| a + 1);
            if clients.iter().all(|c| w.actors[*c].done) && sub.position() >= end {
                return Ok(());
            }
        }
        let start = h.lock().now;
        let (addr, slot) = match sub.try_next() {
            Ok(Some(x)) => x,
            Ok(None) => {
                h.sleep(me, 20 * MS)?;
                continue;
            }
            // A read that failed under faults: ask again (bounded, in case an
            // error comes back without any simulated time passing).
            Err(e) => {
                errors += 1;
                if errors > 10_000 {
                    return Err(e.to_string());
                }
                continue;
            }
        };
        let mut w = h.lock();
        w.hist.seen.push((addr, slot, start));
        w.hist.follower_at = addr + 1;
    }
}

/// The operator: now and then runs a repair (take out units that stopped
/// answering, let the spare or a returning unit join a short chain, copy the
/// old range to it), until the clients are done, the faults have stopped and
/// every chain of the open segment is back at 2 replicas, all running
/// (liveness: full replication restored).
fn operator_script(h: &Arc<Handle>, me: usize, clients: &[usize]) -> Result<(), String> {
    let mut log = connect(h, me, 9_002)?;
    loop {
        h.sleep(me, 1_500 * MS)?;
        let settled = {
            let w = h.lock();
            clients.iter().all(|c| w.actors[*c].done) && !w.faulty
        };
        if settled && log.refresh().is_ok() && !log.degraded(2) {
            let mut w = h.lock();
            let open = w.sm.current().and_then(|p| p.segments.last()).cloned();
            // Every unit of the open segment runs and holds the recorded
            // trim mark (one that missed a trim applied it on its return).
            let mark = w.sm.trim_mark;
            let all_up = open.as_ref().is_some_and(|s| {
                s.stripes.iter().flatten().all(|u| {
                    matches!(w.nodes.get(&unit_addr(*u)), Some(Node::Unit(n))
                        if n.unit.as_ref().is_some_and(|x| x.info().trim_mark >= mark))
                })
            });
            if all_up {
                w.report.restored_ms = (w.now / MS).saturating_sub(w.end_faults_ms);
                if let (Some(full), Some(s)) = (w.full_unit.clone(), open) {
                    let in_open = s.stripes.iter().flatten().any(|u| unit_addr(*u) == full);
                    if !in_open {
                        w.report.full_taken_out = 1;
                    }
                }
                return Ok(());
            }
        }
        // Under faults a repair may fail part way; the next one resumes.
        let debug = h.lock().debug;
        let mut say = |m: &str| {
            if debug {
                eprintln!("operator: {m}");
            }
        };
        // As the sequencer's repair loop does: units that missed a trim
        // apply the recorded mark.
        if let Err(e) = log.converge_trim() {
            say(&format!("cannot bring trim marks together: {e}"));
        }
        match log.repair(Some(2), &mut say) {
            Ok(r) => {
                let mut w = h.lock();
                w.report.spares_joined += r.joined.len() as u64;
                w.report.copied += r.copied + r.holes;
            }
            Err(e) => {
                let e = e.to_string();
                say(&format!("repair failed: {e}"));
                // The operator does what the message asks: a unit that holds
                // values the log decided otherwise (a head whose write went no
                // further) must be wiped before it can serve again.
                // The message names it ("unit N was taken out again: …", or
                // among the units passed over, "unit N: it holds values …").
                let named = |part: &str| {
                    part.strip_prefix("unit ")
                        .and_then(|r| r.split([' ', ':']).next())
                        .and_then(|n| n.parse::<u64>().ok())
                };
                let ids: BTreeSet<u64> = e
                    .split(['(', ';'])
                    .map(str::trim)
                    .filter(|_| e.contains("wipe its data directory"))
                    .filter(|p| {
                        p.contains("was taken out again")
                            || p.contains("holds values the log decided otherwise")
                    })
                    .filter_map(named)
                    .collect();
                for id in ids {
                    h.lock().wipe_unit(&unit_addr(id));
                }
            }
        }
    }
}

/// Reads the whole log with a fresh client at the end.
fn checker_script(h: &Arc<Handle>, me: usize) -> Result<(), String> {
    let mut log = connect(h, me, 9_001)?;
    let end = {
        let w = h.lock();
        let acked = w.hist.acked.keys().next_back().map_or(0, |a| a + 1);
        acked.max(w.hist.follower_at)
    };
    let mut at = 0;
    while at < end {
        let start = h.lock().now;
        let n = (end - at).min(64);
        // A unit that crashed just before the faults stopped may still be
        // restarting: ask again (the liveness deadline bounds this).
        let slots = match log.read_range(at, n) {
            Ok(s) => s,
            Err(_) => {
                h.sleep(me, 100 * MS)?;
                continue;
            }
        };
        let mut w = h.lock();
        for (i, s) in slots.into_iter().enumerate() {
            w.hist.seen.push((at + i as u64, s, start));
        }
        at += n;
    }
    Ok(())
}

/// The checks over the whole history.
fn check_history(w: &World) -> Result<(), String> {
    let hist = &w.hist;
    if let Some(a) = std::env::var("TREX_SIM_ADDR")
        .ok()
        .and_then(|a| a.parse::<u64>().ok())
    {
        for p in &w.sm.history {
            eprintln!("layout {p:?}");
        }
        eprintln!(
            "address {a}: acked {:?}",
            hist.acked
                .get(&a)
                .map(|(d, t)| (String::from_utf8_lossy(d), *t as f64 / MS as f64))
        );
        for (addr, slot, start) in &hist.seen {
            if *addr == a {
                eprintln!(
                    "  seen {slot:?} by an op started at {:.3} ms",
                    *start as f64 / MS as f64
                );
            }
        }
    }
    let mut value: BTreeMap<u64, &Slot> = BTreeMap::new();
    let mut at_addr: BTreeMap<&[u8], u64> = BTreeMap::new();
    for (addr, (data, _)) in &hist.acked {
        at_addr.insert(data, *addr);
    }
    for (addr, slot, start) in &hist.seen {
        let acked = hist.acked.get(addr);
        match slot {
            Slot::Data { data, .. } => {
                if !hist.issued.contains_key(data) {
                    return Err(format!(
                        "P2/P3: address {addr} holds bytes no client wrote: {:?}",
                        String::from_utf8_lossy(data)
                    ));
                }
                if let Some((a, _)) = acked {
                    if a != data {
                        return Err(format!(
                            "P2: address {addr} was acknowledged as {:?} but read as {:?}",
                            String::from_utf8_lossy(a),
                            String::from_utf8_lossy(data)
                        ));
                    }
                }
                if let Some(other) = at_addr.insert(data, *addr) {
                    // Below a trim mark an append's write may have landed on a
                    // unit before the trim refused the rest, and the append
                    // then went on at a new address: trimmed addresses are out
                    // of the log, a copy there is no duplicate.
                    if other != *addr && other.min(*addr) >= hist.trim_mark {
                        return Err(format!(
                            "P2: entry {:?} appears at addresses {other} and {addr} (a retry appended it twice)",
                            String::from_utf8_lossy(data)
                        ));
                    }
                }
            }
            Slot::Trimmed => {
                // P1 excludes trimmed addresses; nothing at or above every
                // mark asked for may read as trimmed.
                if *addr >= hist.trim_mark {
                    return Err(format!(
                        "address {addr} read as trimmed, but no trim mark above it was ever asked for (highest {})",
                        hist.trim_mark
                    ));
                }
            }
            Slot::Hole | Slot::Unwritten => {
                if let Some((a, t)) = acked {
                    if t < start {
                        return Err(format!(
                            "P1: address {addr} was acknowledged (as {:?}) but a read that started later saw {slot:?}",
                            String::from_utf8_lossy(a)
                        ));
                    }
                }
            }
        }
        if matches!(slot, Slot::Data { .. } | Slot::Hole) {
            if let Some(prev) = value.insert(*addr, slot) {
                if prev != slot {
                    return Err(format!(
                        "P2/P3: address {addr} was seen as {prev:?} and as {slot:?}"
                    ));
                }
            }
        }
    }
    for (addr, (data, _)) in &hist.acked {
        match value.get(addr) {
            Some(Slot::Data { data: d, .. }) if d == data => {}
            None if *addr < hist.trim_mark => {} // trimmed away
            other => {
                return Err(format!(
                    "P1: acknowledged address {addr} ({:?}) reads back as {other:?}",
                    String::from_utf8_lossy(data)
                ))
            }
        }
    }
    for (tail, start) in &hist.checks {
        if let Some((addr, _)) = hist
            .acked
            .iter()
            .find(|(a, (_, t))| t < start && **a >= *tail)
        {
            return Err(format!(
                "P4: check returned tail {tail} although address {addr} was acknowledged before it started (at {:.3} ms)",
                *start as f64 / MS as f64
            ));
        }
    }
    Ok(())
}

/// Runs one seed.
pub fn run_cluster(seed: u64, opts: ClusterOptions) -> Result<ClusterReport, ClusterSimError> {
    let mut rng = Rng(seed);
    let faults = Faults {
        loss: [0.0, 0.01, 0.03, 0.08][rng.below(4) as usize],
        delay_max: 1 + rng.below(10),
        chaos_every: 300 + rng.below(900),
        damage: 0.0,
        fill: false,
        readers: false,
        trims: false,
    };
    // The kinds added later are drawn from their own stream.
    let mut more = Rng(seed ^ 0x6661_756c_7473);
    let faults = Faults {
        damage: if more.chance(0.5) && opts.hard_faults {
            0.5
        } else {
            0.0
        },
        fill: more.chance(0.4) && opts.hard_faults,
        readers: more.chance(0.5),
        trims: more.chance(0.5),
        ..faults
    };
    let clock = Arc::new(AtomicU64::new(0));
    let mut sm = StateMachine::default();
    let mut apply = |op: Op| {
        sm.apply(&Command {
            client: 0,
            seq: 0,
            stamp_ms: 1_700_000_000_000,
            op: op.encode(),
        })
    };
    let mut nodes = BTreeMap::new();
    // Units 1-4 form the first layout (2 stripes x 2); unit 5 is a spare the
    // operator's repairs put to use.
    for i in 1..=5u64 {
        apply(Op::Register {
            id: i,
            role: Role::Storage,
            addr: unit_addr(i),
        });
        let (unit, _) = Unit::open(MemStore::new(), UnitConfig::default())?;
        nodes.insert(
            unit_addr(i),
            Node::Unit(Box::new(SimUnit {
                unit: Some(unit),
                dead: None,
                incarnation: 0,
            })),
        );
    }
    let mut actors = Vec::new();
    let mut seq_shared = Vec::new();
    for i in 1..=2u64 {
        apply(Op::Register {
            id: 10 + i,
            role: Role::Sequencer,
            addr: seq_addr(i),
        });
        let shared = Arc::new(SeqShared::new(Some(clock.clone())));
        nodes.insert(
            seq_addr(i),
            Node::Seq(SimSeq {
                service: SequencerService::new(shared.clone(), 0),
                actor: actors.len(),
            }),
        );
        seq_shared.push((i, actors.len(), shared));
        actors.push(Actor {
            name: format!("sequencer {}", 10 + i),
            ..Actor::default()
        });
    }
    apply(Op::InitLayout {
        stripes: 2,
        replicas: 2,
    });
    let first_client = actors.len();
    for c in 0..opts.clients {
        actors.push(Actor {
            name: format!("client {c}"),
            ..Actor::default()
        });
    }
    let follower = actors.len();
    actors.push(Actor {
        name: "follower".into(),
        ..Actor::default()
    });
    let operator = actors.len();
    actors.push(Actor {
        name: "operator".into(),
        ..Actor::default()
    });
    let reader = actors.len();
    actors.push(Actor {
        name: "reader".into(),
        ..Actor::default()
    });
    let checker = actors.len();
    actors.push(Actor {
        name: "checker".into(),
        ..Actor::default()
    });
    let world = World {
        seed,
        now: 0,
        clock: clock.clone(),
        rng: Rng(rng.next()),
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        turn: None,
        actors,
        nodes,
        routes: BTreeMap::new(),
        abandoned: BTreeSet::new(),
        next_key: 1_000,
        sm,
        consensus_down_until: 0,
        leader_skew_ms: 0,
        faulty: true,
        faults,
        damaged: BTreeSet::new(),
        full_unit: None,
        readers_until: 0,
        end_faults_ms: opts.safety_ms,
        shutdown: false,
        shutdown_clock: 0,
        debug: std::env::var_os("TREX_SIM_DEBUG").is_some(),
        hist: History::default(),
        report: ClusterReport {
            seed,
            ..ClusterReport::default()
        },
        error: None,
    };
    let h = Arc::new(Handle {
        world: Mutex::new(world),
        cv: Condvar::new(),
    });
    // Every actor first waits for key 0 (its start).
    let spawn = |me: usize, body: Box<dyn FnOnce() -> Result<(), String> + Send>| {
        let h = h.clone();
        std::thread::Builder::new()
            .name(format!("sim-actor-{me}"))
            .spawn(move || {
                trex_net::util::set_log_quiet(true);
                if h.block(me, 0, None).is_some() {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
                    let mut w = h.lock();
                    let name = w.actors[me].name.clone();
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            if !w.shutdown {
                                w.fail(format!("{name} gave up: {e}"));
                            }
                        }
                        Err(p) => {
                            let why = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            w.fail(format!("{name} panicked: {why}"))
                        }
                    }
                    w.actors[me].done = true;
                    if w.turn == Some(me) {
                        w.turn = None;
                    }
                    h.cv.notify_all();
                }
            })
            .expect("spawn a simulated actor")
    };
    let mut threads = Vec::new();
    for (i, actor, shared) in &seq_shared {
        let opts = SequencerOptions {
            tls: None,
            listen: seq_addr(*i).parse().expect("a socket address"),
            advertise: None,
            endpoints: String::new(),
            id: 10 + i,
            ttl: Duration::from_secs(1),
            safety_gap: Duration::from_millis(300),
            limits: LoopConfig::default(),
            // The simulator's operator actor repairs instead.
            repair_every: None,
            replicas: None,
            cluster_id: 0,
            metrics: None,
            build: trex_net::metrics::BuildInfo::default(),
        };
        let env = SimEnv {
            h: h.clone(),
            me: *actor,
            client_id: 100 + i,
            seq: 0,
        };
        let shared = shared.clone();
        threads.push(spawn(
            *actor,
            Box::new(move || {
                leadership(opts, shared, Box::new(env));
                Ok(())
            }),
        ));
    }
    let clients: Vec<usize> = (first_client..first_client + opts.clients).collect();
    for &c in &clients {
        let hh = h.clone();
        let ops = opts.ops;
        threads.push(spawn(
            c,
            Box::new(move || client_script(&hh, c, 1 + c as u64, ops, seed)),
        ));
    }
    {
        let hh = h.clone();
        let cl = clients.clone();
        threads.push(spawn(
            follower,
            Box::new(move || follower_script(&hh, follower, &cl)),
        ));
        let hh = h.clone();
        let cl = clients.clone();
        threads.push(spawn(
            operator,
            Box::new(move || operator_script(&hh, operator, &cl)),
        ));
        let hh = h.clone();
        let cl = clients.clone();
        threads.push(spawn(
            reader,
            Box::new(move || reader_script(&hh, reader, &cl, seed)),
        ));
        let hh = h.clone();
        threads.push(spawn(
            checker,
            Box::new(move || checker_script(&hh, checker)),
        ));
    }
    // Start everyone but the checker; the checker starts once the others are
    // done. First, every thread must be parked at its start.
    {
        let mut w = h.lock();
        while w.actors.iter().any(|a| a.waiting != Some(0)) {
            w = h.cv.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        for a in 0..checker {
            let d = (1 + a as u64) * MS;
            w.at(
                d,
                Ev::Ready {
                    actor: a,
                    key: 0,
                    p: Payload::Wake,
                },
            );
        }
        let first_chaos = 500 * MS;
        w.at(first_chaos, Ev::Chaos);
        w.at(opts.safety_ms * MS, Ev::EndFaults);
    }
    let end = (opts.safety_ms + opts.liveness_ms) * MS;
    let mut checker_started = false;
    let outcome = loop {
        let mut w = h.lock();
        while w.turn.is_some() {
            w = h.cv.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = w.error.clone() {
            break Err(e);
        }
        if w.report.events > 20_000_000 || w.hist.seen.len() > 5_000_000 {
            break Err(format!(
                "seed {seed}: runaway run ({} events, {} observations, at {} ms)",
                w.report.events,
                w.hist.seen.len(),
                w.now / MS
            ));
        }
        let others_done = clients.iter().all(|c| w.actors[*c].done)
            && w.actors[follower].done
            && w.actors[operator].done
            && w.actors[reader].done;
        if others_done && !checker_started && !w.faulty {
            checker_started = true;
            w.at(
                MS,
                Ev::Ready {
                    actor: checker,
                    key: 0,
                    p: Payload::Wake,
                },
            );
        }
        if w.actors[checker].done {
            break check_history(&w).map_err(|e| format!("seed {seed}: {e}"));
        }
        let Some(Reverse((t, id))) = w.queue.pop() else {
            break Err(format!(
                "seed {seed}: nothing left to do, yet the run is not finished"
            ));
        };
        if t > end {
            let stuck: Vec<String> = w
                .actors
                .iter()
                .filter(|a| !a.done && !a.name.starts_with("sequencer"))
                .map(|a| a.name.clone())
                .collect();
            let acked_end = w.hist.acked.keys().next_back().map_or(0, |a| a + 1);
            let layout = w.sm.current().map(|p| format!("{p:?}")).unwrap_or_default();
            let down: Vec<&String> = w
                .nodes
                .iter()
                .filter(|(_, n)| matches!(n, Node::Unit(u) if u.unit.is_none()))
                .map(|(a, _)| a)
                .collect();
            break Err(format!(
                "seed {seed}: liveness: {stuck:?} not finished {} ms after the faults stopped (follower at {}, acknowledged up to {acked_end}; layout {layout}; units down {down:?})",
                opts.liveness_ms, w.hist.follower_at
            ));
        }
        w.now = t;
        w.clock.store(t, Ordering::Release);
        let e = w.events.remove(&id).expect("every queued event is stored");
        if let Some(actor) = w.step(e) {
            w.turn = Some(actor);
            h.cv.notify_all();
        }
    };
    for (_, _, s) in &seq_shared {
        s.stop();
    }
    let report = {
        let mut w = h.lock();
        if outcome.is_err() && w.debug {
            for p in &w.sm.history {
                eprintln!("layout history: {p:?}");
            }
        }
        w.shutdown = true;
        w.turn = None;
        h.cv.notify_all();
        w.report.holes = w
            .hist
            .seen
            .iter()
            .filter(|(_, s, _)| *s == Slot::Hole)
            .map(|(a, _, _)| *a)
            .collect::<BTreeSet<_>>()
            .len() as u64;
        w.report.observations = w.hist.seen.len() as u64;
        w.report.trimmed_seen = w
            .hist
            .seen
            .iter()
            .filter(|(_, s, _)| *s == Slot::Trimmed)
            .count() as u64;
        w.report.clone()
    };
    for t in threads {
        let _ = t.join();
    }
    outcome.map(|()| report)
}
