//! A deterministic simulator for the consensus group: several [`Replica`]s and
//! clients on one seeded PRNG and one queue of timed events, with message loss,
//! duplication, reordering and delay, partitions (whole nodes, and single links
//! cut and restored in random order), crashes that lose every journal write not
//! yet synced, restarts, and clock skew. Fault rates are drawn per seed.
//!
//! A run has a safety phase under faults, then a liveness phase without faults
//! in which the group must elect a leader, answer every client and converge.
//! Invariants are checked after every event; a failure names the seed, and the
//! same seed replays the same run (the event log hash is reported to prove it).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use trex_consensus::driver::{Driver, ReadyIo};
use trex_consensus::paxos::{Applied, CheckpointJob, Config, JournalRecord, Replica};
use trex_consensus::sm::{decode_lock, LayoutSegment, Op, Projection, Role};
use trex_wire::consensus::{Command, Msg, NodeId};
use trex_wire::Reader;

/// Settings of one run.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// Simulated milliseconds of the safety phase.
    pub safety_ms: u64,
    /// Simulated milliseconds the liveness phase may take at most.
    pub liveness_ms: u64,
    /// Clients of the layout service.
    pub clients: u64,
    /// Clients of the lock service (competing for one lock).
    pub lock_clients: u64,
    /// The full-group restart scenario: no compaction (the journal only
    /// grows), small promise reports (so recovery takes many rounds), and at
    /// the end of the safety phase every node crashes at once; the liveness
    /// phase then starts from the journals alone.
    pub full_restart: bool,
    /// The deaf-leader scenario: after the safety phase, every message to the
    /// leader is lost (it still sends: a one-way cut of all its incoming
    /// links, clients' requests included) until the others have elected a new
    /// leader and answered new commands; then it is healed.
    pub deaf_leader: bool,
    /// The group-change scenario: during the safety phase an operator adds
    /// and removes consensus nodes one at a time (`group-add`,
    /// `group-remove`), starting each added node as a joining one; removed
    /// nodes keep running (and crashing) with their stale view. The liveness
    /// phase then requires the final group to converge.
    pub reconfigure: bool,
    /// The damaged-journal scenario (issue 13): twice during the safety
    /// phase, a voting node crashes and its journal is found damaged. It
    /// takes the safe way back of a real node: it never runs under its old id
    /// again; the group retires that id and adds the node under a new one,
    /// and it starts empty as a joining node.
    pub journal_damage: bool,
    /// With `journal_damage`: restart the damaged node on what is left of its
    /// journal, under its old id (what a node must NOT do; for showing that
    /// the checks catch it).
    pub unsafe_damage: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            safety_ms: 20_000,
            liveness_ms: 20_000,
            clients: 4,
            lock_clients: 3,
            full_restart: false,
            deaf_leader: false,
            reconfigure: false,
            journal_damage: false,
            unsafe_damage: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Seed.
    pub seed: u64,
    /// Nodes in the group.
    pub nodes: usize,
    /// Events processed.
    pub events: u64,
    /// Commands acknowledged to clients.
    pub acked: u64,
    /// Slots chosen.
    pub slots: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Messages dropped by the network.
    pub dropped: u64,
    /// Hash of the event log: equal for equal seeds.
    pub trace_hash: u64,
    /// Operations on the protected resource accepted with a current token.
    pub fenced_ops: u64,
    /// Operations by a paused lock holder refused for a stale token.
    pub stale_refused: u64,
    /// Full-group restart: the most journal records one node recovered from.
    pub restart_journal: u64,
    /// Messages lost for being larger than the (simulated) frame limit.
    pub oversized: u64,
    /// Deaf leader: from the cut to a new leader with new commands answered.
    pub deaf_recovery_ms: u64,
    /// Group changes: changes that took effect, and the final group's size.
    pub group_changes: u64,
    /// The group at the end (ids).
    pub final_group: Vec<NodeId>,
    /// Damaged journals: nodes that came back under a new id.
    pub damaged: u64,
}

/// The simulators' PRNG (splitmix64): small, fast, and the same everywhere.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: NodeId,
        from: NodeId,
        msg: Msg,
    },
    Tick {
        node: NodeId,
    },
    SyncDone {
        node: NodeId,
        incarnation: u64,
    },
    /// A background checkpoint of the node's was encoded, written and
    /// synced ([`Config::background_checkpoints`]).
    CheckpointDone {
        node: NodeId,
        incarnation: u64,
        job: Box<CheckpointJob>,
    },
    Request {
        node: NodeId,
        client: u64,
        seq: u64,
    },
    Reply {
        client: u64,
        seq: u64,
        ok: bool,
        hint: Option<NodeId>,
        result: Vec<u8>,
    },
    /// A lock client acts on the protected resource with `token` (after a pause
    /// that began once it had checked its lease).
    LockAct {
        client: u64,
        token: u64,
    },
    ClientTimer {
        client: u64,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    Chaos,
    /// A voting node's journal is found damaged (`journal_damage`).
    Damage,
}

struct SimNode {
    replica: Option<Replica>,
    /// How it is (re)started: a joining node keeps `joining` and its contacts.
    cfg: Config,
    /// Releases each step's messages and answers once its records are synced.
    driver: Driver,
    /// What a sync made durable: survives a crash.
    durable: Vec<JournalRecord>,
    /// What was written since the last sync (a crash loses it), as the
    /// driver's I/O.
    disk: SimDisk,
    syncing: bool,
    incarnation: u64,
    skew_ms: i64,
    /// Next slot this node must apply (snapshots may jump it forward).
    next_slot: u64,
    /// Client commands this node took as leader: (client, seq).
    proposed: BTreeSet<(u64, u64)>,
}

/// A node's simulated journal between syncs, as the driver's I/O. It counts
/// every step as one write, even a step with no records, so every step's output
/// waits for the next sync: stricter than the real node (whose record-less steps
/// wait only for earlier writes), and kept so that recorded seeds replay as they
/// always have. Sends and answers are queued in release order and carried out
/// by the simulator once the driver returns (they need the network and the
/// event queue).
#[derive(Default)]
struct SimDisk {
    /// Steps written since the last sync.
    writes: u64,
    records: Vec<JournalRecord>,
    released: Vec<Released>,
}

/// Something the driver released, in order.
enum Released {
    Send(NodeId, Msg),
    Answer(Applied),
}

impl SimNode {
    fn new(replica: Replica, cfg: Config, skew_ms: i64) -> SimNode {
        SimNode {
            replica: Some(replica),
            cfg,
            driver: Driver::default(),
            durable: Vec::new(),
            disk: SimDisk::default(),
            syncing: false,
            incarnation: 0,
            skew_ms,
            next_slot: 0,
            proposed: BTreeSet::new(),
        }
    }
}

impl ReadyIo for SimDisk {
    type Error = std::convert::Infallible;

    fn write(&mut self, records: Vec<JournalRecord>) -> Result<u64, Self::Error> {
        self.records.extend(records);
        self.writes += 1;
        Ok(self.writes)
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        self.released.push(Released::Send(to, msg));
    }

    fn answer(&mut self, applied: Applied) {
        self.released.push(Released::Answer(applied));
    }
}

struct Client {
    seq: u64,
    target: NodeId,
    inflight: Option<(u64, Op, u64)>, // seq, op, sent at
    epoch_seen: u64,
    /// Set for clients of the lock service.
    lock: Option<LockRole>,
    /// The next operation a lock client decided on.
    planned: Option<Op>,
    /// The operator changing the consensus group.
    admin: bool,
}

/// A client of the lock service: it acts on a protected resource only while its
/// own (skewed) clock says its lease is valid with the safety gap to spare; a
/// "pauser" sometimes stalls between that check and the act.
struct LockRole {
    holding: Option<(u64, u64)>, // token, expire_ms (leader clock)
    skew_ms: i64,
    pauser: bool,
}

/// Lease length and safety gap of the simulated lock clients (the gap exceeds
/// the largest clock skew between any two parties, 200 ms).
const LOCK_TTL_MS: u64 = 1_000;
const LOCK_GAP_MS: u64 = 300;

struct Faults {
    loss: f64,
    dup: f64,
    delay_max: u64,
    crash: f64,
    partition: f64,
}

/// A failed check: what went wrong, with the seed.
pub type ConsensusSimError = String;

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: BTreeMap<u64, Client>,
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    faulty: bool,
    chosen: BTreeMap<u64, u64>,
    acked: BTreeMap<(u64, u64), Vec<u8>>,
    committed_cmds: BTreeSet<(u64, u64)>,
    /// The highest fencing token the protected resource has accepted.
    resource_max: u64,
    report: SimReport,
    cfg_base: Config,
    /// The largest peer message the network carries (encoded bytes); a larger
    /// one is lost, as a real peer refuses the frame and drops the link.
    frame_limit: Option<usize>,
    /// A node that receives nothing (faults or not).
    deaf: Option<NodeId>,
    /// The next id an added consensus node gets.
    next_node_id: NodeId,
    /// Ids of nodes whose journal was damaged, to be retired (and the node
    /// added back under a new id) by the operator client.
    rejoin: std::collections::VecDeque<NodeId>,
    /// A node added back after damage (its new id, and the damaged id it
    /// replaces) whose change has not taken effect yet (asked again until it
    /// has).
    awaiting_add: Option<(NodeId, NodeId)>,
    /// Whether the operator client makes changes of its own.
    reconfigure: bool,
    /// See [`SimOptions::unsafe_damage`].
    unsafe_damage: bool,
}

impl Sim {
    fn at(&mut self, delay: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn node_now(&self, id: NodeId) -> u64 {
        let skew = self.nodes.get(&id).map_or(0, |n| n.skew_ms);
        (self.now as i64 + skew).max(0) as u64 + 1_000_000
    }

    fn trace(&mut self, x: u64) {
        self.report.trace_hash = (self.report.trace_hash ^ x).wrapping_mul(0x100_0000_01b3);
    }

    fn cfg_for(&self, id: NodeId) -> Config {
        Config {
            id,
            seed: self.cfg_base.seed ^ id.wrapping_mul(0x51),
            ..self.cfg_base.clone()
        }
    }

    /// Collects a replica's output: journal writes wait for a (simulated) sync,
    /// and so do the messages that depend on them.
    fn collect(&mut self, id: NodeId) -> Result<(), ConsensusSimError> {
        let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) else {
            return Ok(());
        };
        let mut ready = r.take_ready();
        for a in &ready.on_durable.applied {
            self.committed_cmds.insert((a.client, a.seq));
        }
        if let Some(upto) = ready.installed_snapshot {
            let n = self.nodes.get_mut(&id).expect("node exists");
            if upto > n.next_slot {
                n.next_slot = upto;
            }
        }
        // Slots are checked when applied (applying needs no sync: it is derived).
        for (slot, h) in &ready.applied_slots {
            let n = self.nodes.get_mut(&id).expect("node exists");
            if *slot < n.next_slot {
                return Err(format!(
                    "node {id} applied slot {slot} again (next was {})",
                    n.next_slot
                ));
            }
            if *slot != n.next_slot {
                return Err(format!(
                    "node {id} applied slot {slot} but slot {} came first",
                    n.next_slot
                ));
            }
            n.next_slot = slot + 1;
            match self.chosen.get(slot) {
                Some(prev) if prev != h => {
                    return Err(format!(
                        "two values chosen for slot {slot} (node {id} applied another)"
                    ))
                }
                Some(_) => {}
                None => {
                    self.chosen.insert(*slot, *h);
                    self.report.slots += 1;
                }
            }
        }
        if let Some(job) = ready.checkpoint.take() {
            // Encoding and writing take a while, during which the node goes on.
            let incarnation = self.nodes[&id].incarnation;
            let d = 1 + self.rng.below(20);
            self.at(
                d,
                Event::CheckpointDone {
                    node: id,
                    incarnation,
                    job: Box::new(job),
                },
            );
        }
        let n = self.nodes.get_mut(&id).expect("node exists");
        // A node answers clients only for commands it proposed as leader
        // (decided now, when applied, not when the answer is released).
        ready
            .on_durable
            .applied
            .retain(|a| n.proposed.remove(&(a.client, a.seq)));
        let Ok(()) = n.driver.step(ready, &mut n.disk);
        // Nothing is released here: every step waits for a sync (see SimDisk).
        assert!(n.disk.released.is_empty(), "released before a sync");
        if !n.syncing {
            n.syncing = true;
            let inc = n.incarnation;
            let d = 1 + self.rng.below(4);
            self.at(
                d,
                Event::SyncDone {
                    node: id,
                    incarnation: inc,
                },
            );
        }
        Ok(())
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        if from == to {
            return self.at(0, Event::Deliver { to, from, msg });
        }
        // A real node reaches only the nodes whose addresses it knows.
        let routable = self
            .nodes
            .get(&from)
            .and_then(|n| n.replica.as_ref())
            .is_some_and(|r| r.peer_addrs().contains_key(&to));
        if !routable {
            self.report.dropped += 1;
            return;
        }
        if self.deaf == Some(to) {
            self.report.dropped += 1;
            return;
        }
        if let Some(limit) = self.frame_limit {
            let mut b = Vec::new();
            trex_wire::consensus::encode_msg(&mut b, &msg);
            if b.len() > limit {
                self.report.dropped += 1;
                self.report.oversized += 1;
                return;
            }
        }
        if self.faulty && (self.cut.contains(&(from, to)) || self.rng.chance(self.faults.loss)) {
            self.report.dropped += 1;
            return;
        }
        let d = 1 + self.rng.below(if self.faulty {
            self.faults.delay_max
        } else {
            3
        });
        if self.faulty && self.rng.chance(self.faults.dup) {
            let d2 = 1 + self.rng.below(self.faults.delay_max);
            self.at(
                d2,
                Event::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
        self.at(d, Event::Deliver { to, from, msg });
    }

    /// A lock client with nothing in flight decides what to do next.
    fn lock_step(&mut self, client: u64) -> Result<(), ConsensusSimError> {
        let now = self.now as i64 + 1_000_000;
        let c = self.clients.get_mut(&client).expect("client");
        let role = c.lock.as_mut().expect("a lock client");
        let own_now = (now + role.skew_ms).max(0) as u64;
        let plan = match role.holding {
            None => Op::Acquire {
                name: "L".into(),
                holder: format!("c{client}"),
                ttl_ms: LOCK_TTL_MS,
            },
            Some((token, expire)) if own_now + LOCK_GAP_MS < expire => {
                let pauser = role.pauser;
                match self.rng.below(100) {
                    0..=49 => {
                        self.access(client, token, false)?;
                        let d = 20 + self.rng.below(80);
                        self.at(d, Event::ClientTimer { client });
                        return Ok(());
                    }
                    50..=64 if pauser => {
                        // Checked the lease; now stalls 0.5-4x the TTL before acting.
                        let d = LOCK_TTL_MS / 2 + self.rng.below(LOCK_TTL_MS * 7 / 2);
                        self.at(d, Event::LockAct { client, token });
                        return Ok(());
                    }
                    50..=84 => Op::Renew {
                        name: "L".into(),
                        token,
                        ttl_ms: LOCK_TTL_MS,
                    },
                    _ => Op::Release {
                        name: "L".into(),
                        token,
                    },
                }
            }
            Some(_) => {
                role.holding = None; // no longer safe to rely on
                Op::Acquire {
                    name: "L".into(),
                    holder: format!("c{client}"),
                    ttl_ms: LOCK_TTL_MS,
                }
            }
        };
        self.clients.get_mut(&client).expect("client").planned = Some(plan);
        self.issue(client);
        Ok(())
    }

    /// The protected resource: accepts only tokens at least as high as any it
    /// has seen. A client that did not pause must never present a stale token
    /// (its lease, checked with the safety gap, guarantees it); a paused one may,
    /// and is refused.
    fn access(&mut self, client: u64, token: u64, paused: bool) -> Result<(), ConsensusSimError> {
        if token < self.resource_max {
            if !paused {
                return Err(format!(
                    "client {client} used lock token {token} while the resource had seen {}: two holders without a pause",
                    self.resource_max
                ));
            }
            self.report.stale_refused += 1;
            return Ok(());
        }
        self.resource_max = token;
        self.report.fenced_ops += 1;
        Ok(())
    }

    fn next_op(&mut self, client: u64) -> Op {
        if let Some(op) = self.clients.get_mut(&client).and_then(|c| c.planned.take()) {
            return op;
        }
        if self.clients[&client].admin {
            return self.group_op();
        }
        let c = &self.clients[&client];
        match self.rng.below(10) {
            0..=3 => Op::Register {
                id: 100 + self.rng.below(20),
                role: Role::Storage,
                addr: format!("10.0.0.{client}:7420"),
            },
            4 => Op::Heartbeat {
                id: 100 + self.rng.below(20),
            },
            5 => Op::InitLayout {
                stripes: 2,
                replicas: 2,
            },
            6..=7 => Op::Install {
                expected_epoch: c.epoch_seen,
                projection: Projection {
                    epoch: c.epoch_seen + 1,
                    sequencer: client,
                    segments: vec![LayoutSegment {
                        start: 0,
                        end: u64::MAX,
                        stripes: vec![vec![100, 101]],
                    }],
                },
            },
            8 => Op::Layout,
            _ => Op::Noop,
        }
    }

    /// The group as the most advanced replica has applied it.
    fn group_view(&self) -> Option<trex_consensus::sm::GroupView> {
        self.nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .max_by_key(|r| r.status().applied)
            .and_then(|r| r.state().group.clone())
    }

    /// The voting nodes at the end: those of the most advanced replica.
    fn members(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .max_by_key(|r| r.status().applied)
            .map(|r| r.voters(r.status().applied))
            .unwrap_or_default()
    }

    /// The operator's next step: add a node (started at once, as joining)
    /// or remove one, keeping the group between 1 and 5 nodes; or read the
    /// group while a change is pending.
    fn group_op(&mut self) -> Op {
        let Some(g) = self.group_view() else {
            return Op::Group;
        };
        if g.pending.is_some() {
            return Op::Group;
        }
        // A damaged node first: retire its id, then add it back as a new one.
        if let Some((id, old)) = self.awaiting_add {
            if g.current.contains_key(&id) {
                self.awaiting_add = None;
            } else {
                // Refused or lost: ask again.
                let addr = format!("sim:{id}");
                return if g.current.contains_key(&old) {
                    Op::GroupReplace { old, id, addr }
                } else {
                    Op::GroupAdd { id, addr }
                };
            }
        }
        if let Some(old) = self.rejoin.pop_front() {
            // One change: the damaged id leaves, the new one joins.
            let op = self.add_node(&g);
            let Op::GroupAdd { id, addr } = op else {
                unreachable!("add_node adds")
            };
            self.awaiting_add = Some((id, old));
            return if g.current.contains_key(&old) {
                Op::GroupReplace { old, id, addr }
            } else {
                Op::GroupAdd { id, addr }
            };
        }
        if !self.reconfigure {
            return Op::Group;
        }
        let n = g.current.len() as u64;
        let remove = n >= 5 || (n >= 2 && self.rng.chance(0.5));
        if remove {
            let ids: Vec<NodeId> = g.current.keys().copied().collect();
            let id = ids[self.rng.below(n) as usize];
            return Op::GroupRemove { id };
        }
        self.add_node(&g)
    }

    /// Starts a new node (as joining) and returns the operation adding it.
    fn add_node(&mut self, g: &trex_consensus::sm::GroupView) -> Op {
        let id = self.next_node_id;
        self.next_node_id += 1;
        let mut cfg = self.cfg_for(id);
        cfg.joining = true;
        cfg.nodes = g.current.keys().copied().collect();
        cfg.addrs = g.current.clone();
        let r = Replica::recover(cfg.clone(), Vec::new(), self.node_now_any())
            .expect("an empty journal recovers");
        let skew = self.rng.below(200) as i64 - 100;
        self.nodes.insert(id, SimNode::new(r, cfg, skew));
        self.trace(id * 104_729);
        self.at(1, Event::Tick { node: id });
        Op::GroupAdd {
            id,
            addr: format!("sim:{id}"),
        }
    }

    /// The simulated clock without a node's skew.
    fn node_now_any(&self) -> u64 {
        self.now + 1_000_000
    }

    fn issue(&mut self, client: u64) {
        let c = self.clients.get_mut(&client).expect("client");
        let (seq, op) = match &c.inflight {
            Some((seq, op, _)) => (*seq, op.clone()), // a retry: same sequence number
            None => {
                c.seq += 1;
                let seq = c.seq;
                let op = self.next_op(client);
                (seq, op)
            }
        };
        let c = self.clients.get_mut(&client).expect("client");
        c.inflight = Some((seq, op, self.now));
        let node = c.target;
        let d = 1 + self.rng.below(3);
        self.at(d, Event::Request { node, client, seq });
        self.at(400, Event::ClientTimer { client });
    }

    fn check_state(&self, id: NodeId) -> Result<(), ConsensusSimError> {
        let Some(r) = &self.nodes[&id].replica else {
            return Ok(());
        };
        let h = &r.state().history;
        if h.iter()
            .zip(h.iter().skip(1))
            .any(|(a, b)| b.epoch <= a.epoch)
        {
            return Err(format!("node {id}: installed epochs do not increase"));
        }
        Ok(())
    }

    fn step(&mut self, e: Event) -> Result<(), ConsensusSimError> {
        self.report.events += 1;
        match e {
            Event::Deliver { to, from, msg } => {
                self.trace(to * 31 + from);
                let now = self.node_now(to);
                if let Some(r) = self.nodes.get_mut(&to).and_then(|n| n.replica.as_mut()) {
                    r.handle(from, msg, now);
                    self.collect(to)?;
                    self.check_state(to)?;
                }
            }
            Event::Tick { node } => {
                let now = self.node_now(node);
                if let Some(r) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) {
                    r.tick(now);
                    self.collect(node)?;
                }
                if self.nodes.contains_key(&node) {
                    self.at(10, Event::Tick { node });
                }
            }
            Event::CheckpointDone {
                node,
                incarnation,
                job,
            } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                if n.incarnation != incarnation {
                    return Ok(()); // crashed first: the file is deleted at open
                }
                let Some(r) = n.replica.as_mut() else {
                    return Ok(());
                };
                let job = *job;
                let state = job.sm.encode();
                let record = JournalRecord::Checkpoint {
                    promised: job.promised,
                    upto: job.upto,
                    state: state.clone(),
                    accepted: job.accepted,
                };
                if r.checkpoint_written(job.upto, state) {
                    // The worst case of the real journal: the new
                    // generation is in place (durable, as the thread synced
                    // it) but the records restating what came after it are
                    // not yet, so opening merges the older generation's
                    // records in after the checkpoint.
                    let rest: Vec<JournalRecord> = std::mem::take(&mut n.durable)
                        .into_iter()
                        .filter(|r| !matches!(r, JournalRecord::Checkpoint { .. }))
                        .collect();
                    n.durable.push(record);
                    n.durable.extend(rest);
                    self.collect(node)?;
                }
            }
            Event::SyncDone { node, incarnation } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(()); // retired after its journal was damaged
                };
                if n.incarnation != incarnation || n.replica.is_none() {
                    return Ok(());
                }
                n.syncing = false;
                // The sync covers every write made before it completes.
                n.durable.append(&mut n.disk.records);
                // Once a background checkpoint's restatement is durable, the
                // journal deletes the generation it replaced: from here on
                // only the checkpoint and the records after the resume count.
                if let Some(pos) = n
                    .durable
                    .iter()
                    .rposition(|r| matches!(r, JournalRecord::Resume { .. }))
                {
                    if matches!(n.durable.first(), Some(JournalRecord::Checkpoint { .. })) {
                        n.durable.drain(1..=pos);
                    }
                }
                let position = n.disk.writes;
                n.driver.synced(position, &mut n.disk);
                for out in std::mem::take(&mut n.disk.released) {
                    match out {
                        Released::Send(to, m) => self.send(node, to, m),
                        Released::Answer(a) => {
                            let d = 1 + self.rng.below(3);
                            self.at(
                                d,
                                Event::Reply {
                                    client: a.client,
                                    seq: a.seq,
                                    ok: true,
                                    hint: None,
                                    result: a.result,
                                },
                            );
                        }
                    }
                }
            }
            Event::Request { node, client, seq } => {
                let now = self.node_now(node);
                let Some(op) = self.clients[&client]
                    .inflight
                    .as_ref()
                    .filter(|f| f.0 == seq)
                    .map(|f| f.1.clone())
                else {
                    return Ok(());
                };
                let lost =
                    (self.faulty && self.rng.chance(self.faults.loss)) || self.deaf == Some(node);
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                let Some(r) = n.replica.as_mut() else {
                    return Ok(());
                };
                if lost {
                    return Ok(());
                }
                let cmd = Command {
                    client,
                    seq,
                    stamp_ms: 0,
                    op: op.encode(),
                };
                match r.propose(cmd, now) {
                    Ok(()) => {
                        n.proposed.insert((client, seq));
                        self.collect(node)?;
                    }
                    Err(nl) => {
                        let d = 1 + self.rng.below(3);
                        self.at(
                            d,
                            Event::Reply {
                                client,
                                seq,
                                ok: false,
                                hint: nl.hint,
                                result: Vec::new(),
                            },
                        );
                    }
                }
            }
            Event::Reply {
                client,
                seq,
                ok,
                hint,
                result,
            } => {
                let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
                let pick = nodes[self.rng.below(nodes.len() as u64) as usize];
                let c = self.clients.get_mut(&client).expect("client");
                if c.inflight.as_ref().is_none_or(|f| f.0 != seq) {
                    return Ok(()); // a duplicate or late reply
                }
                if !ok {
                    c.target = hint.unwrap_or(pick);
                    self.at(5, Event::ClientTimer { client });
                    return Ok(());
                }
                let (_, op, _) = c.inflight.take().expect("checked above");
                self.acked.insert((client, seq), Vec::new());
                self.report.acked += 1;
                if let Some(role) = c.lock.as_mut() {
                    // What the lock service said decides what this client holds.
                    role.holding = match (&op, result.split_first()) {
                        (Op::Acquire { .. } | Op::Renew { .. }, Some((&0, lease))) => {
                            let (_, l) = decode_lock(&mut Reader::new(lease))
                                .map_err(|e| format!("bad lease: {e}"))?;
                            Some((l.token, l.expire_ms))
                        }
                        _ => None,
                    };
                    let d = 20 + self.rng.below(80);
                    self.at(d, Event::ClientTimer { client });
                    return Ok(());
                }
                if c.admin {
                    if matches!(op, Op::GroupAdd { .. } | Op::GroupRemove { .. })
                        && result.first() == Some(&0)
                    {
                        self.report.group_changes += 1;
                    }
                    let d = 300 + self.rng.below(1500);
                    let keep_going =
                        self.faulty || !self.rejoin.is_empty() || self.awaiting_add.is_some();
                    if keep_going {
                        self.at(d, Event::ClientTimer { client });
                    }
                    return Ok(());
                }
                // Learn the current epoch, as a client reading the layout would.
                let e = self
                    .nodes
                    .values()
                    .filter_map(|n| n.replica.as_ref())
                    .map(|r| r.state().current().map_or(0, |p| p.epoch))
                    .max()
                    .unwrap_or(0);
                self.clients.get_mut(&client).expect("client").epoch_seen = e;
                self.issue(client);
            }
            Event::LockAct { client, token } => {
                self.access(client, token, true)?;
                let d = 20 + self.rng.below(80);
                self.at(d, Event::ClientTimer { client });
            }
            Event::ClientTimer { client } => {
                let c = &self.clients[&client];
                let due = c.inflight.as_ref().is_some_and(|f| self.now >= f.2 + 390)
                    || c.inflight.is_none();
                if due && c.inflight.is_none() && c.lock.is_some() {
                    return self.lock_step(client);
                }
                if due {
                    let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
                    if self.clients[&client].inflight.is_some() && self.rng.chance(0.5) {
                        let pick = nodes[self.rng.below(nodes.len() as u64) as usize];
                        self.clients.get_mut(&client).expect("client").target = pick;
                    }
                    self.issue(client);
                }
            }
            Event::Crash { node } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(()); // retired after its journal was damaged
                };
                if n.replica.take().is_some() {
                    // Every write not yet synced is lost, and with it what
                    // waited for it.
                    n.disk = SimDisk::default();
                    n.driver = Driver::default();
                    n.syncing = false;
                    n.incarnation += 1;
                    n.proposed.clear();
                    self.report.crashes += 1;
                    self.trace(node * 977);
                    let d = 100 + self.rng.below(2000);
                    self.at(d, Event::Restart { node });
                }
            }
            Event::Restart { node } => {
                let now = self.node_now(node);
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(()); // retired after its journal was damaged
                };
                let cfg = n.cfg.clone();
                if n.replica.is_none() {
                    let r = Replica::recover(cfg, n.durable.clone(), now)?;
                    n.next_slot = r.status().applied;
                    n.replica = Some(r);
                }
            }
            Event::Damage => {
                // One damaged node at a time: the next waits until the group
                // took the last one back and every voter runs and has caught
                // up (a second loss before that is two failures at once,
                // beyond what a group of three survives).
                let settled = self.rejoin.is_empty()
                    && self.awaiting_add.is_none()
                    && self.group_view().is_some_and(|g| g.pending.is_none())
                    && {
                        // Every voter runs, has nothing unsynced, and has a
                        // snapshot past the last change of the group (so a
                        // restart never needs the old group again).
                        let members = self.members();
                        let reps: Vec<Option<&Replica>> = members
                            .iter()
                            .map(|id| {
                                self.nodes
                                    .get(id)
                                    .filter(|n| n.disk.records.is_empty())
                                    .and_then(|n| n.replica.as_ref())
                            })
                            .collect();
                        let change = reps
                            .iter()
                            .flatten()
                            .map(|r| r.last_change_from())
                            .max()
                            .unwrap_or(0);
                        reps.iter()
                            .all(|r| r.is_some_and(|r| r.status().snapshot >= change))
                    };
                if !settled {
                    self.at(500, Event::Damage);
                    return Ok(());
                }
                // A voting node that runs, chosen at random.
                let members: Vec<NodeId> = self
                    .members()
                    .into_iter()
                    .filter(|id| self.nodes.get(id).is_some_and(|n| n.replica.is_some()))
                    .collect();
                if members.is_empty() {
                    return Ok(());
                }
                let node = members[self.rng.below(members.len() as u64) as usize];
                if std::env::var("SIMDBG").is_ok() {
                    eprintln!(
                        "t={} damage {node}; members {:?}; {:?}",
                        self.now,
                        members,
                        self.nodes
                            .iter()
                            .map(|(i, n)| (
                                *i,
                                n.replica.as_ref().map(|r| (
                                    r.status().applied,
                                    r.status().snapshot,
                                    r.voters(r.status().snapshot)
                                ))
                            ))
                            .collect::<Vec<_>>()
                    );
                }
                self.report.damaged += 1;
                self.trace(node * 6133);
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(()); // retired after its journal was damaged
                };
                n.replica = None;
                n.disk = SimDisk::default();
                n.driver = Driver::default();
                n.syncing = false;
                n.incarnation += 1;
                n.proposed.clear();
                if self.unsafe_damage {
                    // What must not be done: back under its old id on what is
                    // left (records lost from a random point on).
                    let keep = self.rng.below(n.durable.len() as u64 + 1) as usize;
                    n.durable.truncate(keep);
                    let d = 100 + self.rng.below(500);
                    self.at(d, Event::Restart { node });
                } else {
                    // The safe way back: never again under this id.
                    self.nodes.remove(&node);
                    self.rejoin.push_back(node);
                }
            }
            Event::Chaos => {
                if !self.faulty {
                    return Ok(());
                }
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
                if self.rng.chance(self.faults.crash) {
                    let n = pick(&mut self.rng);
                    self.at(0, Event::Crash { node: n });
                }
                if self.rng.chance(self.faults.partition) {
                    self.report.partitions += 1;
                    match self.rng.below(3) {
                        0 => {
                            // isolate one node
                            let n = pick(&mut self.rng);
                            for m in &ids {
                                if *m != n {
                                    self.cut.insert((n, *m));
                                    self.cut.insert((*m, n));
                                }
                            }
                        }
                        1 => {
                            // cut one link, one way
                            let (a, b) = (pick(&mut self.rng), pick(&mut self.rng));
                            if a != b {
                                self.cut.insert((a, b));
                            }
                        }
                        _ => {
                            // restore one cut link, in random order
                            if !self.cut.is_empty() {
                                let i = self.rng.below(self.cut.len() as u64) as usize;
                                let l = *self.cut.iter().nth(i).expect("index in range");
                                self.cut.remove(&l);
                            }
                        }
                    }
                }
                if self.rng.chance(0.05) {
                    self.cut.clear();
                }
                let d = 50 + self.rng.below(200);
                self.at(d, Event::Chaos);
            }
        }
        Ok(())
    }

    fn run_until(
        &mut self,
        end: u64,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Result<bool, ConsensusSimError> {
        while let Some(Reverse((t, id))) = self.queue.pop() {
            if t > end {
                self.queue.push(Reverse((t, id)));
                return Ok(false);
            }
            self.now = t;
            let e = self.events.remove(&id).expect("scheduled event");
            self.step(e)?;
            if done(self) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn leaders(sim: &Sim) -> Vec<NodeId> {
    sim.nodes
        .iter()
        .filter(|(_, n)| n.replica.as_ref().is_some_and(|r| r.status().leading))
        .map(|(id, _)| *id)
        .collect()
}

/// Waits (without faults) for a leader, then cuts every link into it, one
/// way: it still sends (heartbeats included) but hears nothing. Within the
/// liveness bound the others must elect a leader among themselves and answer
/// `want` new commands; then the cut heals.
fn deafen_the_leader(sim: &mut Sim, want: u64, opts: SimOptions) -> Result<(), String> {
    let end = sim.now + opts.liveness_ms;
    sim.run_until(end, |s| leaders(s).len() == 1)?;
    let Some(&deaf) = leaders(sim).first() else {
        return Err("no leader to deafen".into());
    };
    sim.deaf = Some(deaf);
    sim.trace(deaf * 7919);
    let (t0, start_acked) = (sim.now, sim.report.acked);
    let end = sim.now + opts.liveness_ms;
    let ok = sim.run_until(end, |s| {
        s.report.acked >= start_acked + want && {
            let l = leaders(s);
            l.len() == 1 && l[0] != deaf
        }
    })?;
    if !ok {
        let st: Vec<String> = sim
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| format!("{:?}", r.status()))
            .collect();
        return Err(format!(
            "leader {deaf} cannot hear anyone: no new leader with {want} new acks within {} ms ({} acks); nodes: {}",
            opts.liveness_ms,
            sim.report.acked - start_acked,
            st.join("; ")
        ));
    }
    sim.report.deaf_recovery_ms = sim.now - t0;
    sim.deaf = None;
    Ok(())
}

/// Runs one seed. `Err` names what broke; the same seed fails the same way.
pub fn run(seed: u64, opts: SimOptions) -> Result<SimReport, ConsensusSimError> {
    let mut rng = Rng(seed);
    let n_nodes = if rng.chance(0.3) { 5 } else { 3 };
    let faults = Faults {
        loss: rng.below(31) as f64 / 100.0,
        dup: rng.below(11) as f64 / 100.0,
        delay_max: 2 + rng.below(40),
        crash: rng.below(6) as f64 / 100.0,
        partition: rng.below(21) as f64 / 100.0,
    };
    let ids: Vec<NodeId> = (1..=n_nodes).collect();
    let mut base = Config::new(1, ids.clone());
    base.addrs = ids.iter().map(|i| (*i, format!("sim:{i}"))).collect();
    base.election_ms = 150;
    base.heartbeat_ms = 30;
    base.max_inflight = 1 + rng.below(8) as usize;
    base.max_batch = 1 + rng.below(16) as usize;
    base.snapshot_every = 5 + rng.below(50);
    base.seed = seed;
    // Drawn from a stream of their own, so the draws above (and the runs of
    // the seeds recorded before these settings existed) stay as they were.
    let mut more = Rng(seed ^ 0x7265_706f_7274);
    if opts.full_restart {
        base.snapshot_every = u64::MAX;
        base.report_bytes = 300 + more.below(3000) as usize;
    } else if more.chance(0.5) {
        // Promises and catch-up answers cut into many bounded pieces.
        base.report_bytes = 60 + more.below(600) as usize;
    }
    // Checkpoints encoded and written while the node goes on, as the real
    // node does them, in half the runs (drawn last: earlier draws stay).
    base.background_checkpoints = more.chance(0.5);
    let mut sim = Sim {
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        nodes: BTreeMap::new(),
        clients: BTreeMap::new(),
        cut: BTreeSet::new(),
        faults,
        faulty: true,
        chosen: BTreeMap::new(),
        acked: BTreeMap::new(),
        committed_cmds: BTreeSet::new(),
        resource_max: 0,
        report: SimReport {
            seed,
            nodes: n_nodes as usize,
            ..SimReport::default()
        },
        cfg_base: base,
        next_node_id: n_nodes + 1,
        rejoin: std::collections::VecDeque::new(),
        awaiting_add: None,
        reconfigure: opts.reconfigure,
        unsafe_damage: opts.unsafe_damage,
        // Scaled down with the reports: 16 KiB stands for the 16 MiB frame.
        frame_limit: opts.full_restart.then_some(16 << 10),
        deaf: None,
    };
    for id in &ids {
        let skew = sim.rng.below(200) as i64 - 100;
        let cfg = sim.cfg_for(*id);
        let r = Replica::recover(cfg.clone(), Vec::new(), 1_000_000)?;
        sim.nodes.insert(*id, SimNode::new(r, cfg, skew));
        let d = sim.rng.below(10);
        sim.at(d, Event::Tick { node: *id });
    }
    for c in 1..=opts.clients {
        let target = 1 + sim.rng.below(n_nodes);
        let client = Client {
            seq: 0,
            target,
            inflight: None,
            epoch_seen: 0,
            lock: None,
            planned: None,
            admin: false,
        };
        sim.clients.insert(c, client);
        let d = sim.rng.below(50);
        sim.at(d, Event::ClientTimer { client: c });
    }
    // Clients of the lock service, with their own clock skew; some pause.
    for c in 1001..1001 + opts.lock_clients {
        let target = 1 + sim.rng.below(n_nodes);
        let role = LockRole {
            holding: None,
            skew_ms: sim.rng.below(200) as i64 - 100,
            pauser: sim.rng.chance(0.5),
        };
        let client = Client {
            seq: 0,
            target,
            inflight: None,
            epoch_seen: 0,
            lock: Some(role),
            planned: None,
            admin: false,
        };
        sim.clients.insert(c, client);
        let d = sim.rng.below(50);
        sim.at(d, Event::ClientTimer { client: c });
    }
    if opts.journal_damage {
        // Twice, at random moments of the safety phase (a different node
        // each time, unless it was added back already).
        for _ in 0..2 {
            let at = 1_000 + sim.rng.below(opts.safety_ms.saturating_sub(6_000).max(1));
            sim.at(at, Event::Damage);
        }
    }
    if opts.reconfigure || opts.journal_damage {
        let admin = Client {
            seq: 0,
            target: 1,
            inflight: None,
            epoch_seen: 0,
            lock: None,
            planned: None,
            admin: true,
        };
        sim.clients.insert(2001, admin);
        sim.at(500, Event::ClientTimer { client: 2001 });
    }
    sim.at(100, Event::Chaos);
    // Safety phase: faults.
    sim.run_until(opts.safety_ms, |_| false)
        .map_err(|e| format!("seed {seed}: {e}"))?;
    let slots_before = sim.report.slots;
    // Liveness phase: heal everything and require progress.
    sim.faulty = false;
    sim.cut.clear();
    if opts.full_restart {
        // Every node goes down at the same moment; each comes back (after
        // 0.1-2.1 s) from what its journal holds.
        for id in ids.clone() {
            sim.at(0, Event::Crash { node: id });
        }
        sim.run_until(sim.now, |_| false)
            .map_err(|e| format!("seed {seed}: {e}"))?;
        // The journal must be long enough that reporting it in one promise
        // would not fit a frame.
        sim.report.restart_journal = sim
            .nodes
            .values()
            .map(|n| n.durable.len() as u64)
            .max()
            .unwrap_or(0);
    }
    let all: Vec<NodeId> = sim.nodes.keys().copied().collect();
    for id in all {
        sim.at(0, Event::Restart { node: id });
    }
    let want = (opts.clients + opts.lock_clients) * 3;
    if opts.deaf_leader {
        deafen_the_leader(&mut sim, want, opts).map_err(|e| format!("seed {seed}: {e}"))?;
    }
    let start_acked = sim.report.acked;
    let end = sim.now + opts.liveness_ms;
    let healed = sim
        .run_until(end, |s| {
            s.report.acked >= start_acked + want && {
                // The group's nodes (all of them, unless the group changed)
                // agree, and one of them leads.
                let members = s.members();
                let group: Vec<&Replica> = members
                    .iter()
                    .filter_map(|id| s.nodes.get(id).and_then(|n| n.replica.as_ref()))
                    .collect();
                let applied: Vec<u64> = group.iter().map(|r| r.status().applied).collect();
                !members.is_empty()
                    && applied.len() == members.len()
                    && applied.iter().all(|a| *a == applied[0])
                    && group.iter().filter(|r| r.status().leading).count() == 1
            }
        })
        .map_err(|e| format!("seed {seed}: {e}"))?;
    if !healed {
        let st: Vec<String> = sim
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| {
                format!(
                    "{:?}, voters {:?}, change pending from slot {:?}",
                    r.status(),
                    r.voters(r.status().applied),
                    r.state()
                        .group
                        .as_ref()
                        .and_then(|g| g.pending.as_ref().map(|p| p.0))
                )
            })
            .collect();
        return Err(format!(
            "seed {seed}: no progress within {} ms after healing ({} of {want} new acks; {slots_before} slots chosen before); nodes: {}",
            opts.liveness_ms,
            sim.report.acked - start_acked,
            st.join("; ")
        ));
    }
    // Every acknowledged command was chosen, and the replicas agree.
    for (client, seq) in sim.acked.keys() {
        if !sim.committed_cmds.contains(&(*client, *seq)) {
            return Err(format!(
                "seed {seed}: acknowledged command {client}/{seq} was never applied"
            ));
        }
    }
    let members = sim.members();
    let states: Vec<_> = members
        .iter()
        .filter_map(|id| sim.nodes.get(id).and_then(|n| n.replica.as_ref()))
        .map(|r| r.state().clone())
        .collect();
    sim.report.final_group = members;
    if states.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!(
            "seed {seed}: replicas applied the same slots but hold different states"
        ));
    }
    Ok(sim.report)
}
