//! Multi-Paxos, sans-IO: messages, ticks with the current time and proposals
//! in; journal records, messages and applied commands out (in a [`Ready`]).
//! No sockets, clocks or files inside.
//!
//! The rule a driver must keep is in the shape of [`Ready`]: **everything in
//! `Ready::on_durable` takes effect only after `Ready::persist` is durable** (a
//! promise or an acceptance must survive a crash before anyone hears of it).
//! Messages a node sends to itself go through the same path. One function keeps
//! it for every caller: [`crate::driver::Driver`].
//!
//! Leadership comes only from timeouts and `prepare` (Paxos Made Simple): a node
//! that stops hearing a leader waits a randomised timeout, asks the others first
//! whether they also miss the leader (pre-vote, so a node cut off for a while
//! cannot depose a healthy leader when it returns), then runs phase 1 for every
//! slot from its commit index. Having won, it re-proposes per slot the value
//! with the highest ballot reported (or a no-op) and then "gallops": phase 2
//! only, with commands that arrive while accepts are in flight batched into the
//! next slots, several slots in flight.
//!
//! Phase 1 runs in rounds when the journals are long: a promise reports a
//! bounded prefix of what its sender accepted (`upto` says where it stopped),
//! and the leader, having re-proposed that prefix, asks again from there with
//! the same ballot. A leader that has not heard from a quorum for an election
//! timeout steps down (check-quorum), so followers it can still reach stop
//! deferring to it. `docs/consensus.md` argues both.

use super::sm::{Op, StateMachine, GROUP_LAG};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use trex_wire::consensus::{value_len, Ballot, Command, Msg, NodeId, Value};

/// Default for [`Config::report_bytes`]: a quarter of the 16 MiB frame, so a
/// report plus its one oversized entry still fits.
pub const REPORT_BYTES: usize = 4 << 20;
/// Default for [`Config::slot_bytes`]: one command's operation is at most
/// 1 MiB, so a slot stays under 2 MiB.
pub const SLOT_BYTES: usize = 1 << 20;

/// Settings of a replica.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The group this node was started with: the voting nodes, this one
    /// included, until the state machine records the group
    /// ([`Op::GroupInit`]; from then on the recorded group decides). For a
    /// joining node, only whom to ask for the log.
    pub nodes: Vec<NodeId>,
    /// Peer addresses of `nodes` (recorded by [`Op::GroupInit`]; empty in
    /// the simulator).
    pub addrs: BTreeMap<NodeId, String>,
    /// A node added to a running group: it votes, campaigns and counts
    /// quorums only once it has learned the recorded group from the others
    /// (its `nodes` were never a voting group).
    pub joining: bool,
    /// Base election timeout; the actual one is random in `[e, 2e)`.
    pub election_ms: u64,
    /// Heartbeat (commit) interval of a leader.
    pub heartbeat_ms: u64,
    /// Slots a leader keeps in flight.
    pub max_inflight: usize,
    /// Commands per slot.
    pub max_batch: usize,
    /// Applied slots between snapshots (journal compaction).
    pub snapshot_every: u64,
    /// Whether a due checkpoint is handed out as a [`CheckpointJob`] (encoded
    /// and written by the caller, off its event loop, then finished with
    /// [`Replica::checkpoint_written`]) instead of being encoded here and
    /// written as a [`JournalRecord::Checkpoint`] in the same step.
    pub background_checkpoints: bool,
    /// Bytes of values one promise or one `chosen` message carries at most
    /// (always at least one slot's value). A promise that would carry more
    /// reports a prefix and says where it stopped; the leader asks again from
    /// there, with the same ballot, once it has re-proposed what it learned.
    pub report_bytes: usize,
    /// Bytes of commands the leader puts into one slot at most (always at
    /// least one command).
    pub slot_bytes: usize,
    /// Seeds the timeout randomisation (deterministic in the simulator).
    pub seed: u64,
}

impl Config {
    /// Defaults for a group of `nodes`.
    pub fn new(id: NodeId, nodes: Vec<NodeId>) -> Config {
        Config {
            id,
            nodes,
            addrs: BTreeMap::new(),
            joining: false,
            election_ms: 300,
            heartbeat_ms: 50,
            max_inflight: 4,
            max_batch: 1024,
            snapshot_every: 10_000,
            background_checkpoints: false,
            report_bytes: REPORT_BYTES,
            slot_bytes: SLOT_BYTES,
            seed: id,
        }
    }
}

/// Whether `ids` hold a majority of `voters` (never of an empty group).
fn majority(voters: &[NodeId], ids: &BTreeSet<NodeId>) -> bool {
    !voters.is_empty() && voters.iter().filter(|n| ids.contains(n)).count() > voters.len() / 2
}

/// A journal record: what a replica must remember across a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalRecord {
    /// Promised not to accept ballots below this.
    Promise(Ballot),
    /// Accepted `value` at `slot` with `ballot` (implies a promise of `ballot`).
    Accept {
        /// Slot.
        slot: u64,
        /// Ballot.
        ballot: Ballot,
        /// Value.
        value: Value,
    },
    /// A snapshot with everything still needed after it: replaces all earlier
    /// records (the journal is compacted below it).
    Checkpoint {
        /// Promise at the time.
        promised: Ballot,
        /// Slots below are in `state`.
        upto: u64,
        /// Encoded state machine.
        state: Vec<u8>,
        /// Accepted values at or above `upto`.
        accepted: Vec<(u64, Ballot, Value)>,
    },
    /// The checkpoint of `upto` that a [`CheckpointJob`] wrote on its own
    /// (into the next journal generation, synced) takes over here. The
    /// records after it in the same step restate the promise and every
    /// value accepted at or above `upto`, so that together with the
    /// checkpoint they replace everything before. A journal acts on it and
    /// never stores it.
    Resume {
        /// The checkpoint's snapshot point.
        upto: u64,
    },
}

/// A checkpoint to encode and write off the event loop
/// ([`Config::background_checkpoints`]): the state machine as applied up to
/// `upto` (a copy that shares the live one's tables, see
/// [`StateMachine`]), and the promise and accepted values of that moment.
/// The caller encodes `sm`, writes and syncs a [`JournalRecord::Checkpoint`]
/// of these fields as the journal's next generation (not yet in use), and
/// then calls [`Replica::checkpoint_written`]. At most one is in flight.
#[derive(Clone, Debug)]
pub struct CheckpointJob {
    /// Slots below are in `sm`.
    pub upto: u64,
    /// The state machine at `upto`.
    pub sm: StateMachine,
    /// The promise when the job was made.
    pub promised: Ballot,
    /// Values accepted at or above `upto` when the job was made.
    pub accepted: Vec<(u64, Ballot, Value)>,
}

/// A command applied to the state machine, with its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Slot it was chosen in.
    pub slot: u64,
    /// Client id.
    pub client: u64,
    /// Client sequence number.
    pub seq: u64,
    /// Result bytes.
    pub result: Vec<u8>,
}

/// What a step produced, in the order it must take effect: first `persist`
/// is written to the journal, then `on_durable` is released, and only once
/// those records (and every earlier step's) are durable. A promise or an
/// acceptance must survive a crash before anyone hears of it. Messages a node
/// sends to itself wait too. [`crate::driver::Driver`] keeps this order for the
/// node and the simulator alike.
#[derive(Debug, Default)]
pub struct Ready {
    /// Step 1: journal records to write and make durable, oldest first.
    pub persist: Vec<JournalRecord>,
    /// Step 2: what others may observe only once `persist` is durable.
    pub on_durable: OnDurable,
    /// Every slot applied, in order, with a hash of its value (for checks;
    /// applying is derived state and needs no sync).
    pub applied_slots: Vec<(u64, u64)>,
    /// A snapshot from a peer moved the applied index here (slots below were
    /// not applied one by one).
    pub installed_snapshot: Option<u64>,
    /// A checkpoint to write off the loop ([`Config::background_checkpoints`]).
    pub checkpoint: Option<CheckpointJob>,
}

/// The part of a step that must wait until the step's journal records are
/// durable: its messages and the commands it applied (whose clients may be
/// answered).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OnDurable {
    /// Messages, to peers and to this node, in the order they were produced.
    pub send: Vec<(NodeId, Msg)>,
    /// Commands applied, in order (for client replies).
    pub applied: Vec<Applied>,
}

impl Ready {
    /// Whether there is nothing to write, send or answer.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.on_durable.send.is_empty()
            && self.on_durable.applied.is_empty()
            && self.checkpoint.is_none()
    }
}

/// What one promise reported: accepted `(slot, ballot, value)`, the
/// promiser's snapshot point, and the end of the slots the report covers
/// (`u64::MAX`: all).
type PromiseInfo = (Vec<(u64, Ballot, Value)>, u64, u64);

/// Where leadership stands at this node.
#[derive(Debug)]
enum Role {
    Follower,
    PreCandidate {
        ballot: Ballot,
        grants: BTreeSet<NodeId>,
    },
    Candidate {
        ballot: Ballot,
        promises: BTreeMap<NodeId, PromiseInfo>,
    },
    Leader(Leading),
}

#[derive(Debug)]
struct Leading {
    ballot: Ballot,
    /// First slot this leader proposes in; slots below it were chosen before.
    start: u64,
    next_slot: u64,
    inflight: BTreeMap<u64, InFlight>,
    buffer: VecDeque<Command>,
    last_heartbeat_ms: u64,
    /// When this node became leader (check-quorum gives it one election
    /// timeout before it judges).
    since_ms: u64,
    /// When each other node was last heard from (any message).
    heard: BTreeMap<NodeId, u64>,
    /// Phase 1 is not over: promises so far reported only the slots below
    /// `Recovery::from` (their reports are bounded in size). New commands wait
    /// in `buffer` until every slot a quorum may have accepted is re-proposed.
    recovery: Option<Recovery>,
}

/// A leader's next round of phase 1 with its own ballot, for the slots from
/// `from` on (asked once the slots below are chosen).
#[derive(Debug)]
struct Recovery {
    from: u64,
    promises: BTreeMap<NodeId, PromiseInfo>,
    asked_ms: Option<u64>,
}

#[derive(Debug)]
struct InFlight {
    value: Value,
    acks: BTreeSet<NodeId>,
    sent_ms: u64,
}

/// Why a proposal was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLeader {
    /// The leader this node believes in, if any.
    pub hint: Option<NodeId>,
}

/// Observable state, for status output and checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This node.
    pub id: NodeId,
    /// Whether this node leads.
    pub leading: bool,
    /// The leader this node believes in.
    pub leader: Option<NodeId>,
    /// Highest ballot promised.
    pub promised: Ballot,
    /// Slots below are chosen.
    pub commit: u64,
    /// Slots below are applied.
    pub applied: u64,
    /// Slots below are in the snapshot.
    pub snapshot: u64,
}

/// One consensus replica: acceptor, learner and (when elected) proposer.
pub struct Replica {
    cfg: Config,
    promised: Ballot,
    accepted: BTreeMap<u64, (Ballot, Value)>,
    chosen: BTreeMap<u64, Value>,
    commit: u64,
    applied: u64,
    sm: StateMachine,
    snap_upto: u64,
    snap_state: Vec<u8>,
    role: Role,
    leader: Option<NodeId>,
    last_heard_ms: u64,
    deadline_ms: u64,
    catchup_ms: u64,
    /// Who to ask for chosen values this node lacks (a leader asks the node that
    /// reported the highest commit index).
    catchup_from: Option<NodeId>,
    catchup_tries: u64,
    max_counter: u64,
    rng: u64,
    ready: Ready,
    /// Peer messages dropped because a ballot in them was out of range
    /// ([`trex_wire::range`]).
    dropped_out_of_range: u64,
    /// The first slot of the latest group change this node applied (it
    /// checkpoints once past it).
    change_from: u64,
    /// The snapshot point of the [`CheckpointJob`] in flight, if any.
    checkpointing: Option<u64>,
}

impl Replica {
    /// Rebuilds a replica from its journal (oldest record first).
    pub fn recover(
        cfg: Config,
        records: impl IntoIterator<Item = JournalRecord>,
        now_ms: u64,
    ) -> Result<Replica, String> {
        let mut r = Replica {
            rng: cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            cfg,
            promised: Ballot::default(),
            accepted: BTreeMap::new(),
            chosen: BTreeMap::new(),
            commit: 0,
            applied: 0,
            sm: StateMachine::default(),
            snap_upto: 0,
            snap_state: StateMachine::default().encode(),
            role: Role::Follower,
            leader: None,
            last_heard_ms: now_ms,
            deadline_ms: 0,
            catchup_ms: 0,
            catchup_from: None,
            catchup_tries: 0,
            max_counter: 0,
            ready: Ready::default(),
            dropped_out_of_range: 0,
            change_from: 0,
            checkpointing: None,
        };
        for rec in records {
            match rec {
                JournalRecord::Promise(b) => r.promised = r.promised.max(b),
                JournalRecord::Accept {
                    slot,
                    ballot,
                    value,
                } => {
                    r.promised = r.promised.max(ballot);
                    // The highest ballot wins, not the last record: a
                    // journal that merged a generation a background
                    // checkpoint replaced replays it after that checkpoint
                    // (an acceptor's ballots for a slot only grow, so this
                    // is the latest anyway).
                    let newer = r.accepted.get(&slot).is_none_or(|(b, _)| ballot >= *b);
                    if slot >= r.snap_upto && newer {
                        r.accepted.insert(slot, (ballot, value));
                    }
                }
                JournalRecord::Checkpoint {
                    promised,
                    upto,
                    state,
                    accepted,
                } => {
                    r.sm = StateMachine::decode(&state)
                        .map_err(|e| format!("snapshot does not decode: {e}"))?;
                    r.promised = r.promised.max(promised);
                    r.snap_upto = upto;
                    r.snap_state = state;
                    r.accepted = accepted.into_iter().map(|(s, b, v)| (s, (b, v))).collect();
                }
                JournalRecord::Resume { .. } => {}
            }
        }
        r.commit = r.snap_upto;
        r.applied = r.snap_upto;
        r.max_counter = r.promised.counter.max(
            r.accepted
                .values()
                .map(|(b, _)| b.counter)
                .max()
                .unwrap_or(0),
        );
        r.reset_deadline(now_ms);
        Ok(r)
    }

    /// The state machine (as applied so far).
    pub fn state(&self) -> &StateMachine {
        &self.sm
    }

    /// Observable state.
    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            id: self.cfg.id,
            leading: matches!(self.role, Role::Leader(_)),
            leader: self.leader,
            promised: self.promised,
            commit: self.commit,
            applied: self.applied,
            snapshot: self.snap_upto,
        }
    }

    /// Takes what the steps so far produced.
    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn reset_deadline(&mut self, now_ms: u64) {
        let e = self.cfg.election_ms.max(1);
        self.deadline_ms = now_ms + e + self.random() % e;
    }

    fn send(&mut self, to: NodeId, m: Msg) {
        self.ready.on_durable.send.push((to, m));
    }

    fn broadcast(&mut self, m: Msg, include_self: bool) {
        for n in self.peers() {
            if include_self || n != self.cfg.id {
                self.send(n, m.clone());
            }
        }
    }

    /// The nodes that vote on `slot`: the recorded group's
    /// ([`crate::sm::GroupView::at`]), the starting group's until one is
    /// recorded, none for a joining node that has not learned it. Known for
    /// slots below `applied + GROUP_LAG`.
    pub fn voters(&self, slot: u64) -> Vec<NodeId> {
        match &self.sm.group {
            Some(g) => g.at(slot).keys().copied().collect(),
            None if self.cfg.joining => Vec::new(),
            None => self.cfg.nodes.clone(),
        }
    }

    /// The groups that vote on the slots `from..from + GROUP_LAG` (one, or
    /// two while a change is pending).
    fn window(&self, from: u64) -> Vec<Vec<NodeId>> {
        let a = self.voters(from);
        let b = self.voters(from + GROUP_LAG - 1);
        if a == b {
            vec![a]
        } else {
            vec![a, b]
        }
    }

    /// Whether `ids` hold a majority of every group voting on the slots
    /// `from..from + GROUP_LAG`: what phase 1 (and a pre-vote) needs.
    fn window_quorum(&self, ids: &BTreeSet<NodeId>, from: u64) -> bool {
        self.window(from).iter().all(|g| majority(g, ids))
    }

    /// Every node this one talks to: the voters of the slots it may act on
    /// (leaving and joining nodes included while a change is pending), or,
    /// for a joining node that has not learned the group, those it was told
    /// of.
    fn peers(&self) -> Vec<NodeId> {
        if self.sm.group.is_none() {
            return self.cfg.nodes.clone();
        }
        let mut all: BTreeSet<NodeId> = BTreeSet::new();
        for g in self.window(self.applied) {
            all.extend(g);
        }
        all.into_iter().collect()
    }

    /// Where this node's peers listen, by id (this node included): the
    /// recorded group's nodes that vote on the slots it may act on (leaving
    /// and joining ones too while a change is pending), else the addresses
    /// it was started with.
    pub fn peer_addrs(&self) -> BTreeMap<NodeId, String> {
        match &self.sm.group {
            Some(g) => {
                let mut m = g.at(self.applied).clone();
                for n in self.peers() {
                    if let Some(a) = g.at(self.applied + GROUP_LAG - 1).get(&n) {
                        m.insert(n, a.clone());
                    }
                }
                m
            }
            None => self.cfg.addrs.clone(),
        }
    }

    /// Whether a message from `from` is heeded: from a node of the groups
    /// this one knows of (any sender, for a joining node that has not learned
    /// the group: its node layer admits only the peers it was given).
    fn is_peer(&self, from: NodeId) -> bool {
        // Per message: look the sender up, without building `peers()`.
        match &self.sm.group {
            Some(g) => {
                g.at(self.applied).contains_key(&from)
                    || g.at(self.applied + GROUP_LAG - 1).contains_key(&from)
            }
            None => self.cfg.joining || self.cfg.nodes.contains(&from),
        }
    }

    /// Whether this node votes on its next slot (else it neither campaigns
    /// nor leads).
    fn votes(&self) -> bool {
        self.voters(self.applied).contains(&self.cfg.id)
    }

    fn next_ballot(&self) -> Ballot {
        Ballot {
            // Every counter adopted passed the range check (at most 2^62), so
            // this cannot wrap; saturating all the same for a journal written
            // before the check.
            counter: self
                .max_counter
                .max(self.promised.counter)
                .saturating_add(1),
            node: self.cfg.id,
        }
    }

    fn step_down(&mut self, now_ms: u64) {
        self.catchup_from = None;
        if !matches!(self.role, Role::Follower) {
            self.role = Role::Follower;
            self.reset_deadline(now_ms);
        }
    }

    /// Proposes a command. Only a leader takes it; the command is stamped with
    /// the leader's clock here.
    pub fn propose(&mut self, mut cmd: Command, now_ms: u64) -> Result<(), NotLeader> {
        let Role::Leader(l) = &mut self.role else {
            return Err(NotLeader {
                hint: self.leader.filter(|l| *l != self.cfg.id),
            });
        };
        cmd.stamp_ms = now_ms;
        l.buffer.push_back(cmd);
        if l.inflight.is_empty() {
            self.send_batches(now_ms);
        }
        Ok(())
    }

    /// Moves buffered commands into slots while the window has room.
    fn send_batches(&mut self, now_ms: u64) {
        let (max_inflight, max_batch) = (self.cfg.max_inflight, self.cfg.max_batch);
        let slot_bytes = self.cfg.slot_bytes;
        let commit = self.commit;
        // Which group decides a slot is known up to GROUP_LAG past the applied
        // index; a leader that a pending change removes proposes only up to
        // the change. A pending change takes effect only as slots pass:
        // no-ops fill them when no command does.
        let me = self.cfg.id;
        let pending = self.sm.group.as_ref().and_then(|g| g.pending.as_ref());
        let mut limit = self.applied + GROUP_LAG;
        let mut fill_to = 0;
        if let Some((from, nodes)) = pending {
            fill_to = *from;
            if !nodes.contains_key(&me) {
                limit = limit.min(*from);
            }
        }
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if l.recovery.is_some() {
            return; // slots from `next_slot` on may still hold accepted values
        }
        let mut out = Vec::new();
        while l.inflight.len() < max_inflight
            && l.next_slot < limit
            && (!l.buffer.is_empty() || l.next_slot < fill_to)
        {
            let mut n = 0;
            let mut bytes = 4;
            for c in l.buffer.iter().take(max_batch) {
                let len = 28 + c.op.len();
                if n > 0 && bytes + len > slot_bytes {
                    break;
                }
                n += 1;
                bytes += len;
            }
            let value: Value = l.buffer.drain(..n).collect();
            let slot = l.next_slot;
            l.next_slot += 1;
            l.inflight.insert(
                slot,
                InFlight {
                    value: value.clone(),
                    acks: BTreeSet::new(),
                    sent_ms: now_ms,
                },
            );
            out.push(Msg::Accept {
                ballot: l.ballot,
                slot,
                value,
                commit,
            });
        }
        for m in out {
            self.broadcast(m, true);
        }
    }

    /// Check-quorum: whether a leader has heard from a quorum (itself included)
    /// within the last election timeout, or leads for less than that.
    fn hears_quorum(&self, now_ms: u64) -> bool {
        let Role::Leader(l) = &self.role else {
            return true;
        };
        let e = self.cfg.election_ms;
        if now_ms < l.since_ms + e {
            return true;
        }
        let mut recent: BTreeSet<NodeId> = l
            .heard
            .iter()
            .filter(|(_, t)| **t + e > now_ms)
            .map(|(n, _)| *n)
            .collect();
        recent.insert(self.cfg.id);
        majority(&self.voters(l.next_slot), &recent)
    }

    /// Time passes.
    pub fn tick(&mut self, now_ms: u64) {
        if !self.hears_quorum(now_ms) {
            // It may still reach the others, but without hearing a quorum it
            // cannot commit; its heartbeats would only keep them from
            // electing someone who can. Silence lets them time out.
            self.step_down(now_ms);
            self.leader = None;
        }
        if matches!(self.role, Role::Leader(_)) && !self.votes() {
            // A change removed this node and has taken effect: the others
            // elect a leader among themselves.
            self.step_down(now_ms);
            self.leader = None;
        }
        let votes = self.votes();
        let peers = self.peers();
        match &mut self.role {
            Role::Leader(l) => {
                let (ballot, commit) = (l.ballot, self.commit);
                if now_ms >= l.last_heartbeat_ms + self.cfg.heartbeat_ms {
                    l.last_heartbeat_ms = now_ms;
                    // Retransmit accepts that have waited long to those that did not answer.
                    let mut resend = Vec::new();
                    for (slot, f) in l.inflight.iter_mut() {
                        if now_ms >= f.sent_ms + 2 * self.cfg.heartbeat_ms {
                            f.sent_ms = now_ms;
                            for n in &peers {
                                if !f.acks.contains(n) {
                                    let m = Msg::Accept {
                                        ballot,
                                        slot: *slot,
                                        value: f.value.clone(),
                                        commit,
                                    };
                                    resend.push((*n, m));
                                }
                            }
                        }
                    }
                    self.ready.on_durable.send.extend(resend);
                    self.broadcast(Msg::Commit { ballot, commit }, false);
                }
                self.send_batches(now_ms);
                self.continue_recovery(now_ms);
            }
            _ if now_ms >= self.deadline_ms && votes => {
                // Missed the leader (or an election stalled): ask first.
                let ballot = self.next_ballot();
                let grants = BTreeSet::from([self.cfg.id]);
                self.role = Role::PreCandidate { ballot, grants };
                self.leader = None;
                self.reset_deadline(now_ms);
                if self.window_quorum(&BTreeSet::from([self.cfg.id]), self.applied) {
                    return self.start_prepare(now_ms);
                }
                self.broadcast(Msg::PreVote { ballot }, false);
            }
            _ => {}
        }
        if self.applied < self.commit && now_ms >= self.catchup_ms + self.cfg.heartbeat_ms * 2 {
            let to = self.catchup_from.or(self.leader);
            self.request_catchup(to, now_ms);
        }
    }

    /// Asks for the chosen values this node lacks: every other attempt goes to
    /// the preferred node (`to`), the rest round-robin over the others, so a
    /// source that cannot serve (it lacks the values too) does not stall us.
    fn request_catchup(&mut self, to: Option<NodeId>, now_ms: u64) {
        let me = self.cfg.id;
        let others: Vec<NodeId> = self.peers().into_iter().filter(|n| *n != me).collect();
        if others.is_empty() {
            return;
        }
        self.catchup_tries += 1;
        let preferred = to.filter(|t| *t != me);
        let target = match preferred {
            Some(p) if self.catchup_tries % 2 == 1 => p,
            _ => others[(self.catchup_tries / 2) as usize % others.len()],
        };
        self.catchup_ms = now_ms;
        self.send(target, Msg::CatchUp { from: self.applied });
    }

    /// The first slot of the latest change of the group this node applied
    /// (0: none since it started). Its snapshot passes it as soon as it
    /// applies that slot.
    pub fn last_change_from(&self) -> u64 {
        self.change_from
    }

    /// Peer messages dropped so far because a ballot in them was out of range.
    pub fn dropped_out_of_range(&self) -> u64 {
        self.dropped_out_of_range
    }

    /// A message arrived from `from`.
    ///
    /// A message from outside the group is ignored (the node refuses one
    /// claiming to come from itself before it gets here); so is one whose ballot lies more than
    /// [`trex_wire::range::MAX_STEP`] above the highest this node has seen, or
    /// above [`trex_wire::range::MAX_COUNTER`] (counted in
    /// [`Replica::dropped_out_of_range`]): adopting it would leave no ballot
    /// above it for anyone. Dropping a message is always safe for Paxos.
    pub fn handle(&mut self, from: NodeId, m: Msg, now_ms: u64) {
        if !self.is_peer(from) {
            // A node this one does not know of: one added while this node
            // was away, or one removed long ago. Its other messages are
            // heeded (a Paxos acceptor and learner may hear anyone; only
            // voters count towards a quorum), but not its campaign: a
            // removed node must not disturb the group. A campaign by an
            // unknown node suggests that this node is behind: ask the nodes
            // it knows for the log.
            if matches!(m, Msg::PreVote { .. } | Msg::Prepare { .. }) {
                if now_ms >= self.catchup_ms + self.cfg.heartbeat_ms * 2 {
                    self.request_catchup(None, now_ms);
                }
                return;
            }
        }
        let seen = self.max_counter.max(self.promised.counter);
        let (a, b) = match &m {
            Msg::PreVote { ballot }
            | Msg::PreVoteReply { ballot, .. }
            | Msg::Prepare { ballot, .. }
            | Msg::Promise { ballot, .. }
            | Msg::Accept { ballot, .. }
            | Msg::Accepted { ballot, .. }
            | Msg::Commit { ballot, .. }
            | Msg::CommitAck { ballot } => (Some(ballot.counter), None),
            Msg::Nack { ballot, promised } => (Some(ballot.counter), Some(promised.counter)),
            _ => (None, None),
        };
        if [a, b]
            .into_iter()
            .flatten()
            .any(|c| trex_wire::range::check_step("ballot", seen, c).is_err())
            || !slots_in_range(&m)
        {
            self.dropped_out_of_range += 1;
            return;
        }
        if let Role::Leader(l) = &mut self.role {
            if from != self.cfg.id {
                l.heard.insert(from, now_ms);
            }
        }
        match m {
            Msg::PreVote { ballot } => {
                let leader_alive = match self.role {
                    Role::Leader(_) => true,
                    _ => {
                        self.leader.is_some() && now_ms < self.last_heard_ms + self.cfg.election_ms
                    }
                };
                let granted = !leader_alive && ballot > self.promised;
                self.send(from, Msg::PreVoteReply { ballot, granted });
            }
            Msg::PreVoteReply { ballot, granted } => {
                if let Role::PreCandidate { ballot: b, grants } = &mut self.role {
                    if *b == ballot && granted {
                        grants.insert(from);
                        let grants = grants.clone();
                        if self.window_quorum(&grants, self.applied) {
                            self.start_prepare(now_ms);
                        }
                    }
                }
            }
            Msg::Prepare { ballot, from: slot } => self.on_prepare(from, ballot, slot, now_ms),
            Msg::Promise {
                ballot,
                accepted,
                snapshot,
                upto,
            } => self.on_promise(from, ballot, (accepted, snapshot, upto), now_ms),
            Msg::Accept {
                ballot,
                slot,
                value,
                commit,
            } => self.on_accept(from, ballot, slot, value, commit, now_ms),
            Msg::Accepted { ballot, slot } => self.on_accepted(from, ballot, slot, now_ms),
            Msg::Nack { ballot, promised } => {
                self.max_counter = self.max_counter.max(promised.counter);
                let mine = match &self.role {
                    Role::Leader(l) => Some(l.ballot),
                    Role::Candidate { ballot, .. } => Some(*ballot),
                    _ => None,
                };
                if mine == Some(ballot) && promised > ballot {
                    self.step_down(now_ms);
                }
            }
            Msg::Commit { ballot, commit } => {
                self.observe_leader(ballot, now_ms);
                if ballot >= self.promised && from != self.cfg.id {
                    self.send(from, Msg::CommitAck { ballot });
                }
                self.learn_commit(commit, ballot, from, now_ms);
            }
            // Only a sign of life (recorded above).
            Msg::CommitAck { .. } | Msg::Hello => {}
            Msg::CatchUp { from: slot } => self.on_catchup(from, slot),
            Msg::Chosen { entries, commit } => {
                if let Role::Leader(l) = &self.role {
                    // A leader only ever learns what was chosen before it: values
                    // chosen where it proposes mean another leader took over.
                    let start = l.start;
                    if commit > start || entries.iter().any(|(s, _)| *s >= start) {
                        self.step_down(now_ms);
                    }
                }
                for (slot, v) in entries {
                    if slot >= self.applied {
                        self.chosen.insert(slot, v);
                    }
                }
                self.commit = self.commit.max(commit);
                self.apply(now_ms);
            }
            Msg::Snapshot { upto, state } => self.on_snapshot(upto, state, now_ms),
        }
    }

    /// A message with `ballot` from its owner: follow it if it is current.
    fn observe_leader(&mut self, ballot: Ballot, now_ms: u64) {
        self.max_counter = self.max_counter.max(ballot.counter);
        if ballot < self.promised {
            return;
        }
        if ballot.node != self.cfg.id {
            // A current leader speaks: a candidate gives way, and so does a
            // leader with a lower ballot.
            let outranked = match &self.role {
                Role::Leader(l) => ballot > l.ballot,
                Role::Candidate { .. } | Role::PreCandidate { .. } => true,
                Role::Follower => false,
            };
            if outranked {
                self.step_down(now_ms);
            }
            self.leader = Some(ballot.node);
            self.last_heard_ms = now_ms;
            self.reset_deadline(now_ms);
        }
    }

    fn start_prepare(&mut self, now_ms: u64) {
        let ballot = self.next_ballot();
        self.max_counter = ballot.counter;
        self.role = Role::Candidate {
            ballot,
            promises: BTreeMap::new(),
        };
        self.reset_deadline(now_ms);
        self.broadcast(
            Msg::Prepare {
                ballot,
                from: self.applied,
            },
            true,
        );
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, slot: u64, now_ms: u64) {
        self.max_counter = self.max_counter.max(ballot.counter);
        if ballot < self.promised {
            let promised = self.promised;
            return self.send(from, Msg::Nack { ballot, promised });
        }
        if ballot > self.promised {
            self.promised = ballot;
            self.ready.persist.push(JournalRecord::Promise(ballot));
        }
        if ballot.node != self.cfg.id {
            let mine = match &self.role {
                Role::Leader(l) => Some(l.ballot),
                Role::Candidate { ballot, .. } => Some(*ballot),
                _ => None,
            };
            if mine.is_some_and(|m| m < ballot) {
                self.step_down(now_ms);
            }
            self.reset_deadline(now_ms); // give the candidate time
        }
        // Report what was accepted from `slot` on, bounded in size (a long
        // uncompacted journal would not fit one frame): the report covers
        // `slot..upto`, and the proposer asks again from `upto`.
        let mut accepted = Vec::new();
        let mut bytes = 0;
        let mut upto = u64::MAX;
        for (s, (b, v)) in self.accepted.range(slot..) {
            let len = 24 + value_len(v);
            if !accepted.is_empty() && bytes + len > self.cfg.report_bytes {
                upto = *s;
                break;
            }
            bytes += len;
            accepted.push((*s, *b, v.clone()));
        }
        self.send(
            from,
            Msg::Promise {
                ballot,
                accepted,
                snapshot: self.snap_upto,
                upto,
            },
        );
    }

    fn on_promise(&mut self, from: NodeId, ballot: Ballot, info: PromiseInfo, now_ms: u64) {
        // Phase 1 needs a majority of every group voting on the slots it
        // covers: from the applied index (a candidate) or from the round's
        // first slot (a leader's later round, asked only once the slots
        // below are applied).
        let applied = self.applied;
        let window: Vec<Vec<NodeId>> = match &self.role {
            Role::Leader(Leading {
                recovery: Some(r), ..
            }) => self.window(r.from),
            _ => self.window(applied),
        };
        let quorum = |ids: &BTreeSet<NodeId>| window.iter().all(|g| majority(g, ids));
        match &mut self.role {
            Role::Candidate {
                ballot: b,
                promises,
            } if *b == ballot => {
                if !plausible_report(&info, self.applied) {
                    self.dropped_out_of_range += 1;
                    return;
                }
                promises.insert(from, info);
                if quorum(&promises.keys().copied().collect()) {
                    let promises = std::mem::take(promises);
                    self.become_leader(ballot, promises, now_ms);
                }
            }
            Role::Leader(l) if l.ballot == ballot => {
                let Some(r) = &mut l.recovery else {
                    return;
                };
                // Every promise for this ballot answered a prepare from at most
                // `r.from` (rounds only move forward), so it reports all it
                // accepted in `r.from..upto`; one that stops before `r.from`
                // says nothing about this round.
                if info.2 <= r.from || !plausible_report(&info, r.from) {
                    return;
                }
                r.promises.insert(from, info);
                if quorum(&r.promises.keys().copied().collect()) {
                    let (start, promises) = (r.from, std::mem::take(&mut r.promises));
                    self.recover_window(start, promises, now_ms);
                }
            }
            _ => {}
        }
    }

    /// Phase 1 is won with `promises` from a quorum: lead, and re-propose what
    /// the promises reported (Paxos Made Simple, §3: a new leader first
    /// completes phase 2 for every slot it may have missed).
    fn become_leader(
        &mut self,
        ballot: Ballot,
        promises: BTreeMap<NodeId, PromiseInfo>,
        now_ms: u64,
    ) {
        debug_assert!(
            self.window_quorum(&promises.keys().copied().collect(), self.applied),
            "a quorum promised"
        );
        // The first leader records the group the nodes were started with, so
        // that changes have something to change (a no-op once recorded).
        let mut buffer = VecDeque::new();
        if self.sm.group.is_none() && !self.cfg.joining {
            let nodes = self
                .cfg
                .nodes
                .iter()
                .map(|n| (*n, self.cfg.addrs.get(n).cloned().unwrap_or_default()))
                .collect();
            buffer.push_back(Command {
                client: 0,
                seq: 0,
                stamp_ms: now_ms,
                op: Op::GroupInit { nodes }.encode(),
            });
        }
        self.role = Role::Leader(Leading {
            ballot,
            start: self.applied,
            next_slot: self.applied,
            inflight: BTreeMap::new(),
            buffer,
            last_heartbeat_ms: now_ms,
            since_ms: now_ms,
            heard: BTreeMap::new(),
            recovery: None,
        });
        self.leader = Some(self.cfg.id);
        let from = self.applied;
        self.recover_window(from, promises, now_ms);
        self.broadcast(
            Msg::Commit {
                ballot,
                commit: self.commit,
            },
            false,
        );
    }

    /// A quorum promised this leader's ballot and reported what it accepted
    /// from slot `from` on (every slot below `from` is chosen): re-propose,
    /// per slot, the value with the highest ballot reported (a no-op where
    /// none was), for the slots every report covers. If some report stopped
    /// short (its size is bounded), ask the next round from there once these
    /// are chosen; until then no new command gets a slot.
    fn recover_window(&mut self, from: u64, promises: BTreeMap<NodeId, PromiseInfo>, now_ms: u64) {
        // Every promiser reported all it accepted from `from` on, except below
        // its own snapshot point: those slots are chosen, and their values live
        // only in that snapshot. So re-propose from the highest snapshot point
        // reported, and fetch the snapshot for what lies below.
        let (best_node, snap) = promises
            .iter()
            .map(|(n, (_, snap, _))| (*n, *snap))
            .max_by_key(|(_, snap)| *snap)
            .unwrap_or((self.cfg.id, 0));
        let start = from.max(snap).max(self.applied);
        if start > self.applied {
            // Slots below `start` are chosen, but this node has not applied
            // them, so it does not know which group decides the slots after
            // them: fetch the snapshot, then ask again from `start`.
            self.commit = self.commit.max(start);
            let Role::Leader(l) = &mut self.role else {
                return;
            };
            l.start = l.start.max(start);
            l.next_slot = start;
            l.recovery = Some(Recovery {
                from: start,
                promises: BTreeMap::new(),
                asked_ms: None,
            });
            self.catchup_from = Some(best_node);
            return self.request_catchup(Some(best_node), now_ms);
        }
        // Slots at or above `reported` were left out of some report.
        let reported = promises
            .values()
            .map(|(_, _, upto)| *upto)
            .min()
            .unwrap_or(u64::MAX);
        let mut highest: BTreeMap<u64, (Ballot, Value)> = BTreeMap::new();
        for (acc, _, _) in promises.into_values() {
            for (slot, b, v) in acc {
                if slot >= start
                    && slot < reported
                    && highest.get(&slot).is_none_or(|(hb, _)| b > *hb)
                {
                    highest.insert(slot, (b, v));
                }
            }
        }
        // The promises answer for the groups voting below `start +
        // GROUP_LAG` only: slots past that wait for a round of their own,
        // asked once the slots below are applied and their group is known.
        let horizon = start + GROUP_LAG;
        let last_reported = highest.keys().next_back().map_or(start, |s| s + 1);
        let end = if reported == u64::MAX && last_reported <= horizon {
            u64::MAX
        } else {
            reported.min(horizon)
        };
        highest.retain(|s, _| *s < end);
        let last = if end == u64::MAX {
            last_reported
        } else {
            end.max(start)
        };
        self.commit = self.commit.max(start);
        let commit = self.commit;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        if start > from {
            // Chosen by earlier leaders, compacted by some promiser.
            l.start = l.start.max(start);
        }
        let mut accepts = Vec::new();
        for slot in start..last {
            let value = highest.remove(&slot).map(|(_, v)| v).unwrap_or_default(); // no-op
            l.inflight.insert(
                slot,
                InFlight {
                    value: value.clone(),
                    acks: BTreeSet::new(),
                    sent_ms: now_ms,
                },
            );
            accepts.push(Msg::Accept {
                ballot,
                slot,
                value,
                commit,
            });
        }
        l.next_slot = last;
        l.recovery = (end != u64::MAX).then(|| Recovery {
            from: last,
            promises: BTreeMap::new(),
            asked_ms: None,
        });
        for m in accepts {
            self.broadcast(m, true);
        }
        self.continue_recovery(now_ms);
    }

    /// A leader still in phase 1 for the slots from `Recovery::from` asks for
    /// them once every slot below is chosen (so at most one bounded window of
    /// re-proposals is in flight), and asks again those that did not answer.
    fn continue_recovery(&mut self, now_ms: u64) {
        let retry_ms = 2 * self.cfg.heartbeat_ms;
        let applied = self.applied;
        let Some(from) = (match &self.role {
            Role::Leader(Leading {
                recovery: Some(r), ..
            }) => Some(r.from.max(applied)),
            _ => None,
        }) else {
            return;
        };
        // Whom to ask: every node voting on the round's slots.
        let mut voters: BTreeSet<NodeId> = BTreeSet::new();
        for g in self.window(from) {
            voters.extend(g);
        }
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let Some(r) = &mut l.recovery else {
            return;
        };
        // Asked only once the slots below are chosen and applied: which group
        // decides the round's slots is known then.
        if !l.inflight.is_empty()
            || applied < r.from
            || r.asked_ms.is_some_and(|t| now_ms < t + retry_ms)
        {
            return;
        }
        if r.asked_ms.is_none() {
            r.from = from; // a snapshot may have carried this node past it
        }
        r.asked_ms = Some(now_ms);
        let m = Msg::Prepare {
            ballot: l.ballot,
            from: r.from,
        };
        let ask: Vec<NodeId> = voters
            .into_iter()
            .filter(|n| !r.promises.contains_key(n))
            .collect();
        for n in ask {
            self.send(n, m.clone());
        }
    }

    fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        slot: u64,
        value: Value,
        commit: u64,
        now_ms: u64,
    ) {
        if ballot < self.promised {
            let promised = self.promised;
            return self.send(from, Msg::Nack { ballot, promised });
        }
        self.observe_leader(ballot, now_ms);
        if slot < self.snap_upto {
            // Chosen and compacted here: acknowledging without checking the value
            // could help a stale proposal to a quorum. Hand the proposer our
            // snapshot instead.
            let m = Msg::Snapshot {
                upto: self.snap_upto,
                state: self.snap_state.clone(),
            };
            self.send(from, m);
            return self.learn_commit(commit, ballot, from, now_ms);
        }
        self.promised = ballot;
        if self
            .accepted
            .get(&slot)
            .is_none_or(|(b, v)| *b != ballot || *v != value)
        {
            self.accepted.insert(slot, (ballot, value.clone()));
            self.ready.persist.push(JournalRecord::Accept {
                slot,
                ballot,
                value,
            });
        }
        self.send(from, Msg::Accepted { ballot, slot });
        self.learn_commit(commit, ballot, from, now_ms);
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, slot: u64, now_ms: u64) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        let Some(f) = l.inflight.get_mut(&slot) else {
            return;
        };
        f.acks.insert(from);
        // Per acknowledgement: count the slot's voters without collecting them.
        let chosen = match &self.sm.group {
            Some(g) => {
                let voters = g.at(slot);
                !voters.is_empty()
                    && voters.keys().filter(|n| f.acks.contains(n)).count() > voters.len() / 2
            }
            None => !self.cfg.joining && majority(&self.cfg.nodes, &f.acks),
        };
        if !chosen {
            return;
        }
        let f = l.inflight.remove(&slot).expect("present above");
        self.chosen.insert(slot, f.value);
        while self.chosen.contains_key(&self.commit) {
            self.commit += 1;
        }
        self.apply(now_ms);
        self.send_batches(now_ms);
        self.continue_recovery(now_ms);
    }

    /// Slots below `commit` are chosen, according to the holder of `ballot`:
    /// values this node accepted with that very ballot are the chosen ones.
    fn learn_commit(&mut self, commit: u64, ballot: Ballot, from: NodeId, now_ms: u64) {
        if matches!(self.role, Role::Leader(_)) {
            return; // a leader learns from its own quorums
        }
        self.commit = self.commit.max(commit);
        // Only slots below *this message's* commit index are known chosen by the
        // holder of `ballot`: a later leader's larger index says nothing about
        // what an earlier one proposed there.
        // Only the accepted slots of that range (a commit index far ahead —
        // a node that was away, or a forged one — costs nothing per slot).
        let learned: Vec<(u64, Value)> = self
            .accepted
            .range(self.applied..commit.max(self.applied))
            .filter(|(s, (b, _))| *b == ballot && !self.chosen.contains_key(*s))
            .map(|(s, (_, v))| (*s, v.clone()))
            .collect();
        self.chosen.extend(learned);
        self.apply(now_ms);
        if self.applied < self.commit && now_ms >= self.catchup_ms + self.cfg.heartbeat_ms {
            self.request_catchup(Some(from), now_ms);
        }
    }

    fn on_catchup(&mut self, from: NodeId, slot: u64) {
        if slot < self.snap_upto {
            let m = Msg::Snapshot {
                upto: self.snap_upto,
                state: self.snap_state.clone(),
            };
            return self.send(from, m);
        }
        // At most 64 slots and about `report_bytes` (at least one slot).
        let mut entries: Vec<(u64, Value)> = Vec::new();
        let mut bytes = 0;
        for s in (slot..self.commit).take(64) {
            let Some(v) = self.chosen.get(&s) else {
                break;
            };
            let len = 8 + value_len(v);
            if !entries.is_empty() && bytes + len > self.cfg.report_bytes {
                break;
            }
            bytes += len;
            entries.push((s, v.clone()));
        }
        if !entries.is_empty() {
            self.send(
                from,
                Msg::Chosen {
                    entries,
                    commit: self.commit,
                },
            );
        }
    }

    fn on_snapshot(&mut self, upto: u64, state: Vec<u8>, now_ms: u64) {
        if upto <= self.applied {
            return;
        }
        if matches!(&self.role, Role::Leader(l) if upto > l.start) {
            self.step_down(now_ms); // chosen past our start: someone else led
        }
        let Ok(sm) = StateMachine::decode(&state) else {
            return;
        };
        self.sm = sm;
        self.applied = upto;
        self.ready.installed_snapshot = Some(upto);
        self.commit = self.commit.max(upto);
        self.install_checkpoint(upto, state);
        self.apply(now_ms);
    }

    fn install_checkpoint(&mut self, upto: u64, state: Vec<u8>) {
        self.snap_upto = upto;
        self.accepted = self.accepted.split_off(&upto);
        self.chosen = self.chosen.split_off(&upto);
        let accepted = self.accepted_from(upto);
        self.ready.persist.push(JournalRecord::Checkpoint {
            promised: self.promised,
            upto,
            state: state.clone(),
            accepted,
        });
        self.snap_state = state;
    }

    fn apply(&mut self, _now_ms: u64) {
        while self.applied < self.commit {
            let Some(v) = self.chosen.get(&self.applied) else {
                break;
            };
            self.ready.applied_slots.push((self.applied, value_hash(v)));
            for cmd in v.clone() {
                let result = self.sm.apply_in(&cmd, self.applied);
                if let Some((from, _)) = self.sm.group.as_ref().and_then(|g| g.pending.as_ref()) {
                    self.change_from = self.change_from.max(*from);
                }
                self.ready.on_durable.applied.push(Applied {
                    slot: self.applied,
                    client: cmd.client,
                    seq: cmd.seq,
                    result,
                });
            }
            self.applied += 1;
        }
        if let Role::Leader(l) = &mut self.role {
            // Slots it applied from what another node sent (a snapshot or a
            // catch-up answer carried it past them) wait for no
            // acknowledgements. (A commit index alone is not enough: it may
            // run ahead of the values this node knows.)
            let applied = self.applied;
            l.inflight.retain(|s, _| *s >= applied);
            l.next_slot = l.next_slot.max(applied);
        }
        // A change of the group that has taken effect is checkpointed at
        // once: a restarted node then starts past it, and never needs the
        // old group (whose nodes may be gone for good) to learn slots again.
        let change_passed = self.snap_upto < self.change_from && self.applied >= self.change_from;
        let due = change_passed || self.applied >= self.snap_upto + self.cfg.snapshot_every;
        if due && self.cfg.background_checkpoints {
            if self.checkpointing.is_none() {
                self.checkpointing = Some(self.applied);
                self.ready.checkpoint = Some(CheckpointJob {
                    upto: self.applied,
                    sm: self.sm.clone(),
                    promised: self.promised,
                    accepted: self.accepted_from(self.applied),
                });
            }
        } else if due {
            let state = self.sm.encode();
            self.install_checkpoint(self.applied, state);
        }
    }

    /// Values accepted at or above `slot`, as a checkpoint carries them.
    fn accepted_from(&self, slot: u64) -> Vec<(u64, Ballot, Value)> {
        self.accepted
            .range(slot..)
            .map(|(s, (b, v))| (*s, *b, v.clone()))
            .collect()
    }

    /// Finishes the [`CheckpointJob`] of `upto`: its record, with `state`
    /// (its state machine, encoded), is durable in the journal's next
    /// generation. The slots below `upto` are dropped here, and this step's
    /// journal records are a [`JournalRecord::Resume`] followed by the
    /// promise and every value accepted at or above `upto` as they stand
    /// now (what was accepted since the job was made included).
    ///
    /// Returns false, and changes nothing, when the checkpoint is no longer
    /// needed (a snapshot from a peer moved this node past it meanwhile);
    /// the caller then deletes what the job wrote.
    pub fn checkpoint_written(&mut self, upto: u64, state: Vec<u8>) -> bool {
        if self.checkpointing == Some(upto) {
            self.checkpointing = None;
        }
        if upto <= self.snap_upto || upto > self.applied {
            return false;
        }
        self.snap_upto = upto;
        self.accepted = self.accepted.split_off(&upto);
        self.chosen = self.chosen.split_off(&upto);
        self.snap_state = state;
        self.ready.persist.push(JournalRecord::Resume { upto });
        self.ready
            .persist
            .push(JournalRecord::Promise(self.promised));
        for (slot, ballot, value) in self.accepted_from(upto) {
            self.ready.persist.push(JournalRecord::Accept {
                slot,
                ballot,
                value,
            });
        }
        true
    }

    /// The chosen value of an applied slot, if still kept (for checks).
    pub fn chosen_value(&self, slot: u64) -> Option<&Value> {
        self.chosen.get(&slot)
    }
}

/// A stable 64-bit hash of a value (FNV-1a over its encoding).
pub fn value_hash(v: &Value) -> u64 {
    let mut b = Vec::new();
    trex_wire::consensus::encode_value(&mut b, v);
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Whether every slot number and commit index a message carries is at most
/// [`trex_wire::range::MAX_COUNTER`] (2^62): slots grow by one per chosen
/// value, so nothing legitimate comes near it, and `+ 1` on any accepted one
/// cannot wrap.
fn slots_in_range(m: &Msg) -> bool {
    let max = trex_wire::range::MAX_COUNTER;
    match m {
        Msg::Prepare { from, .. } | Msg::CatchUp { from } => *from <= max,
        Msg::Promise {
            accepted,
            snapshot,
            upto,
            ..
        } => {
            *snapshot <= max
                && (*upto <= max || *upto == u64::MAX)
                && accepted.iter().all(|(s, _, _)| *s <= max)
        }
        Msg::Accept { slot, commit, .. } => *slot <= max && *commit <= max,
        Msg::Accepted { slot, .. } => *slot <= max,
        Msg::Commit { commit, .. } => *commit <= max,
        Msg::Chosen { entries, commit } => *commit <= max && entries.iter().all(|(s, _)| *s <= max),
        Msg::Snapshot { upto, .. } => *upto <= max,
        _ => true,
    }
}

/// Whether a promise's report of accepted slots is one a real acceptor could
/// send to a proposer that asked from `from`: every reported slot at most
/// [`trex_wire::range::MAX_STEP`] past the later of `from` and the reporter's
/// snapshot. An acceptor holds accepted values only above its snapshot (it
/// compacts every `snapshot_every` slots), so a legitimate report spans far
/// less; a new leader re-proposes every slot of the reported window, so a
/// forged slot far ahead would make it queue a no-op for each slot in between.
fn plausible_report(info: &PromiseInfo, from: u64) -> bool {
    let base = info.1.max(from);
    info.0
        .iter()
        .all(|(s, _, _)| *s <= base.saturating_add(trex_wire::range::MAX_STEP))
}
