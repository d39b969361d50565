//! The replicated state machine of the consensus group: the cluster service
//! (members and roles), the layout service (the projection history), and the
//! client table that makes commands exactly-once. Every decision is a function of
//! the chosen commands alone, including time: a command carries the leader's
//! clock (`stamp_ms`), and nothing here reads a clock of its own.
//!
//! Operations are encoded as a tag byte and fields (little-endian); see
//! `docs/wire.md` ("Operations"). Tags 16–31 belong to the lock service
//! (16–20 used).

use imbl::{OrdMap, OrdSet, Vector};
use std::collections::BTreeMap;
use trex_net::util::rfc3339_ms;
use trex_wire::codec::{put_u32, put_u64};
use trex_wire::consensus::{Command, NodeId};
use trex_wire::{DecodeError, Reader};

pub use trex_wire::ops::*;

/// How long a client's last result is kept for exactly-once retries (1 hour).
pub const CLIENT_TTL_MS: u64 = 3_600_000;

/// A member whose last registration or heartbeat (every 5 s) is younger than
/// this is live: its id cannot be registered from another address (15 s).
pub const MEMBER_LIVE_MS: u64 = 15_000;

/// Longest lease a lock grants (one day).
pub const MAX_TTL_MS: u64 = 86_400_000;
/// How long an expired lock is kept after it became free (its expiry plus
/// the grace), so that a late `renew` still learns `lease-expired`; then it is
/// forgotten (a later `renew` or `get-lock` answers `no-such-lock`). A
/// released lock is forgotten at once. The fencing counter is kept: tokens
/// only increase. (10 s.)
pub const LOCK_FORGET_MS: u64 = 10_000;

/// Grace after expiry before a lock changes hands, unless set otherwise.
pub const DEFAULT_LOCK_GRACE_MS: u64 = 1_000;

/// A refused result (see [`encode_refused`]). The reason is cut to 4 KiB, the
/// longest string the operations codec decodes.
fn refuse(code: Refusal, msg: String) -> Vec<u8> {
    let mut cut = msg.len().min(4096);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut v = Vec::with_capacity(7 + cut);
    encode_refused(&mut v, code, &msg[..cut]);
    v
}

/// The replicated state.
///
/// The tables that grow with use (clients, locks and their indexes, the
/// projection history) are persistent maps and vectors ([`imbl`]): a clone
/// shares their nodes and costs O(1) whatever their size, so a checkpoint encodes a copy on another thread
/// while the event loop goes on applying (see `paxos::CheckpointJob`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    /// Registered nodes.
    pub members: BTreeMap<NodeId, Member>,
    /// Every projection ever installed, oldest first.
    pub history: Vector<Projection>,
    /// Per client: the last sequence number applied and its result.
    pub clients: OrdMap<u64, (u64, Vec<u8>)>,
    /// Per client: the leader's stamp of its last command. Entries idle for
    /// longer than `CLIENT_TTL_MS` are dropped (deterministically, by stamp):
    /// exactly-once holds for retries within that window.
    pub client_seen_ms: OrdMap<u64, u64>,
    /// `(seen_ms, client)` of every client in `client_seen_ms`, oldest first:
    /// what a sweep forgets (derived; not in the snapshot).
    client_idle: OrdSet<(u64, u64)>,
    /// Advisory locks by name.
    pub locks: OrdMap<String, LockState>,
    /// `(expire_ms, name)` of every lock, oldest expiry first: what to forget
    /// next (derived from `locks`; not in the snapshot).
    lock_expiries: OrdSet<(u64, String)>,
    /// The last fencing token handed out (tokens only increase).
    pub fence: u64,
    /// Grace after expiry before a lock changes hands (ms); 0 means the default.
    pub lock_grace_ms: u64,
    /// The log's trim mark (see [`Op::Trim`]): addresses below it may be
    /// discarded by every unit. Only grows.
    pub trim_mark: u64,
    /// The log's replication factor (see [`Op::Replication`]); 0: not set.
    pub replication: u32,
    /// The consensus group, once recorded ([`Op::GroupInit`]); until then the
    /// group is the one the original nodes were started with.
    pub group: Option<GroupView>,
}

impl StateMachine {
    /// The current projection, if any.
    pub fn current(&self) -> Option<&Projection> {
        self.history.last()
    }

    /// Applies one chosen command and returns its result. A command already
    /// applied for the same client and sequence number returns its first result
    /// and changes nothing; an older sequence number is refused.
    pub fn apply(&mut self, c: &Command) -> Vec<u8> {
        self.apply_in(c, 0)
    }

    /// [`StateMachine::apply`] for a command chosen in `slot` (a change of the
    /// consensus group takes effect [`GROUP_LAG`] slots after its own).
    pub fn apply_in(&mut self, c: &Command, slot: u64) -> Vec<u8> {
        if let Some((seq, result)) = self.clients.get(&c.client) {
            if c.seq == *seq {
                return result.clone();
            }
            if c.seq < *seq {
                return refuse(
                    Refusal::StaleCommand,
                    format!(
                        "stale command: client {} is already at sequence {seq}",
                        c.client
                    ),
                );
            }
        }
        self.forget_locks(c.stamp_ms);
        let result = match Op::decode(&c.op) {
            Ok(op) => self.apply_op(op, c.stamp_ms, slot),
            Err(e) => refuse(Refusal::Undecodable, format!("undecodable operation: {e}")),
        };
        if c.client != 0 {
            self.clients.insert(c.client, (c.seq, result.clone()));
            if let Some(old) = self.client_seen_ms.insert(c.client, c.stamp_ms) {
                self.client_idle.remove(&(old, c.client));
            }
            self.client_idle.insert((c.stamp_ms, c.client));
            self.expire_clients(c.stamp_ms);
        }
        result
    }

    /// One operation, dispatched to its handler (each refuses with a typed
    /// [`Refusal`]; see `docs/wire.md`, "Operations").
    fn apply_op(&mut self, op: Op, now_ms: u64, slot: u64) -> Vec<u8> {
        let name = match &op {
            Op::Acquire { name, .. } | Op::Renew { name, .. } | Op::Release { name, .. } => {
                Some(name)
            }
            _ => None,
        };
        if let Some(name) = name.filter(|n| is_system_lease(n)) {
            return refuse(
                Refusal::ReservedName,
                format!(
                    "lock \"{name}\" is a system lease (the sequencer's lease is \"{SEQUENCER_LEASE}\", and names starting with \"trex.\" are reserved); user lock commands cannot take, renew or release it: choose another name"
                ),
            );
        }
        self.apply_lock_or_other(op, now_ms, slot)
    }

    /// [`StateMachine::apply_op`] once user lock names are checked.
    fn apply_lock_or_other(&mut self, op: Op, now_ms: u64, slot: u64) -> Vec<u8> {
        match op {
            Op::System(inner) => match *inner {
                Op::Acquire { ref name, .. }
                | Op::Renew { ref name, .. }
                | Op::Release { ref name, .. }
                    if is_system_lease(name) =>
                {
                    self.apply_lock_or_other(*inner, now_ms, slot)
                }
                other => refuse(
                    Refusal::InvalidArgument,
                    format!("{} is not an operation on a system lease", other.name()),
                ),
            },
            Op::Register { id, role, addr } => self.on_register(id, role, addr, now_ms),
            Op::Deregister { id } => match self.members.remove(&id) {
                Some(_) => vec![RESULT_OK],
                None => refuse(
                    Refusal::NotRegistered,
                    format!("node {id} is not registered"),
                ),
            },
            Op::Heartbeat { id } => self.on_heartbeat(id, now_ms),
            Op::InitLayout { stripes, replicas } => self.init_layout(stripes, replicas),
            Op::Install {
                expected_epoch,
                projection,
            } => self.install(expected_epoch, projection),
            Op::InstallAsSequencer {
                expected_epoch,
                projection,
                lease_token,
            } => self.on_install_as_sequencer(expected_epoch, projection, lease_token, now_ms),
            Op::Members => {
                let mut out = vec![RESULT_OK];
                encode_members(&mut out, &self.members);
                out
            }
            Op::Layout => {
                let mut out = vec![RESULT_OK];
                put_u64(&mut out, self.history.len() as u64);
                if let Some(p) = self.current() {
                    encode_projection(&mut out, p);
                }
                out
            }
            Op::LayoutHistory { from, max } => {
                let mut out = vec![RESULT_OK];
                put_u64(&mut out, self.history.len() as u64);
                let start = usize::try_from(from)
                    .unwrap_or(usize::MAX)
                    .min(self.history.len());
                let want = max.min(trex_wire::ops::LAYOUT_HISTORY_MAX) as usize;
                let count_at = out.len();
                put_u32(&mut out, 0);
                let mut n = 0u32;
                for p in self.history.iter().skip(start).take(want) {
                    if n > 0 && out.len() >= trex_wire::ops::LAYOUT_HISTORY_BYTES {
                        break;
                    }
                    encode_projection(&mut out, p);
                    n += 1;
                }
                out[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
                out
            }
            Op::Noop => vec![RESULT_OK],
            Op::GroupInit { nodes } => {
                if self.group.is_none() {
                    self.group = Some(GroupView {
                        current: nodes.into_iter().collect(),
                        pending: None,
                        retired: Vec::new(),
                    });
                }
                self.group_result()
            }
            Op::GroupAdd { id, addr } => self.change_group(None, Some((id, addr)), slot),
            Op::GroupRemove { id } => self.change_group(Some(id), None, slot),
            Op::GroupReplace { old, id, addr } => {
                if old == id {
                    return refuse(
                        Refusal::InvalidArgument,
                        format!("node {old} cannot replace itself; give the new node a new id"),
                    );
                }
                self.change_group(Some(old), Some((id, addr)), slot)
            }
            Op::Group => {
                self.settle_group(slot);
                self.group_result()
            }
            Op::Acquire {
                name,
                holder,
                ttl_ms,
            } => self.acquire(name, holder, ttl_ms, now_ms),
            Op::Renew {
                name,
                token,
                ttl_ms,
            } => self.renew(&name, token, ttl_ms, now_ms),
            Op::Release { name, token } => self.on_release(&name, token),
            Op::GetLock { name } => match self.locks.get(&name) {
                Some(l) => {
                    let mut out = vec![RESULT_OK];
                    encode_lock(&mut out, &name, l);
                    out
                }
                None => refuse(
                    Refusal::NoSuchLock,
                    format!("lock \"{name}\" is not held: never taken, or released or expired and forgotten"),
                ),
            },
            Op::SetLockGrace { grace_ms } => {
                if grace_ms > MAX_TTL_MS {
                    return refuse(
                        Refusal::InvalidArgument,
                        format!("grace {grace_ms} ms is over the limit of {MAX_TTL_MS} ms"),
                    );
                }
                self.lock_grace_ms = grace_ms.max(1);
                vec![RESULT_OK]
            }
            Op::Replication { replicas } => {
                if replicas > 16 {
                    return refuse(
                        Refusal::InvalidArgument,
                        format!("{replicas} replicas is out of range: a chain has 1 to 16"),
                    );
                }
                if replicas > 0 {
                    self.replication = replicas;
                }
                let mut out = vec![RESULT_OK];
                put_u32(&mut out, self.replication);
                out
            }
            Op::Trim { mark } => {
                if mark > trex_wire::range::MAX_COUNTER {
                    return refuse(
                        Refusal::OutOfRange,
                        format!(
                            "trim mark {mark} is out of range: addresses are at most {}",
                            trex_wire::range::MAX_COUNTER
                        ),
                    );
                }
                self.trim_mark = self.trim_mark.max(mark);
                let mut out = vec![RESULT_OK];
                put_u64(&mut out, self.trim_mark);
                out
            }
        }
    }

    fn on_register(&mut self, id: NodeId, role: Role, addr: String, now_ms: u64) -> Vec<u8> {
        // 0 means "none" in a projection (no sequencer); ids above 2^62 are
        // out of every range (trex_wire::range).
        if id == 0 || id > trex_wire::range::MAX_COUNTER {
            return refuse(
                Refusal::InvalidArgument,
                format!(
                    "node id {id} is out of range: use 1 to {}",
                    trex_wire::range::MAX_COUNTER
                ),
            );
        }
        if let Some(m) = self.members.get(&id) {
            let live = now_ms.saturating_sub(m.seen_ms) < MEMBER_LIVE_MS;
            if live && (m.addr != addr || m.role != role) {
                return refuse(
                    Refusal::IdInUse,
                    format!(
                        "node id {id} belongs to a live {} at {} (seen {} ms ago); give this node another id (--id), or stop that node and retry after {} s",
                        m.role.name(),
                        m.addr,
                        now_ms.saturating_sub(m.seen_ms),
                        MEMBER_LIVE_MS / 1000
                    ),
                );
            }
        }
        let registered_ms = self.members.get(&id).map_or(now_ms, |m| m.registered_ms);
        let member = Member {
            role,
            addr,
            registered_ms,
            seen_ms: now_ms,
        };
        self.members.insert(id, member);
        vec![RESULT_OK]
    }

    fn on_heartbeat(&mut self, id: NodeId, now_ms: u64) -> Vec<u8> {
        match self.members.get_mut(&id) {
            Some(m) => {
                m.seen_ms = m.seen_ms.max(now_ms);
                vec![RESULT_OK]
            }
            None => refuse(
                Refusal::NotRegistered,
                format!("node {id} is not registered; register it first"),
            ),
        }
    }

    /// A takeover's install: only while `lease_token` holds the sequencer lock
    /// at the command's stamp, so a sequencer that stalled past its lease
    /// cannot install a layout naming itself.
    fn on_install_as_sequencer(
        &mut self,
        expected_epoch: u64,
        projection: Projection,
        lease_token: u64,
        now_ms: u64,
    ) -> Vec<u8> {
        let live = self
            .locks
            .get(SEQUENCER_LEASE)
            .is_some_and(|l| l.token == lease_token && !l.released && now_ms < l.expire_ms);
        if !live {
            return refuse(
                Refusal::NotSequencerLeaseholder,
                format!(
                    "lease token {lease_token} does not hold the \"{SEQUENCER_LEASE}\" lock (expired, released or taken over); this sequencer must stand by"
                ),
            );
        }
        self.install(expected_epoch, projection)
    }

    /// Forgets locks that expired, were free for [`LOCK_FORGET_MS`], and
    /// were not taken again (by the leader's stamp `now_ms`: every replica
    /// forgets the same ones at the same command).
    fn forget_locks(&mut self, now_ms: u64) {
        let keep = self.grace_ms().saturating_add(LOCK_FORGET_MS);
        while let Some((expire, _)) = self.lock_expiries.get_min() {
            if expire.saturating_add(keep) > now_ms {
                break;
            }
            let (expire, name) = self.lock_expiries.remove_min().expect("checked");
            if self.locks.get(&name).is_some_and(|l| l.expire_ms == expire) {
                self.locks.remove(&name);
            }
        }
    }

    /// Records lock `name`'s new state, keeping [`Self::lock_expiries`] in step.
    fn put_lock(&mut self, name: String, l: LockState) {
        if let Some(old) = self.locks.get(&name) {
            self.lock_expiries.remove(&(old.expire_ms, name.clone()));
        }
        self.lock_expiries.insert((l.expire_ms, name.clone()));
        self.locks.insert(name, l);
    }

    fn on_release(&mut self, name: &str, token: u64) -> Vec<u8> {
        match self.locks.get(name) {
            Some(l) if l.token == token && !l.released => {
                // Released: forgotten at once (the fencing counter stays).
                self.lock_expiries.remove(&(l.expire_ms, name.to_string()));
                self.locks.remove(name);
                vec![RESULT_OK]
            }
            Some(l) if l.token == token => refuse(
                Refusal::LeaseReleased,
                format!("lock \"{name}\" (token {token}) is already released"),
            ),
            Some(l) => refuse(
                Refusal::NotHolder,
                format!(
                    "token {token} does not hold lock \"{name}\": it passed to token {} ({}); your lease is gone",
                    l.token, l.holder
                ),
            ),
            None => refuse(
                Refusal::NoSuchLock,
                format!("lock \"{name}\" is not held (never taken, or released or expired and forgotten); your lease is gone"),
            ),
        }
    }

    /// Forgets clients idle for longer than `CLIENT_TTL_MS` (every command line
    /// invocation is a client; without this the table would only grow).
    fn expire_clients(&mut self, now_ms: u64) {
        if self.client_seen_ms.len() < 1024 || !self.client_seen_ms.len().is_multiple_of(64) {
            // Swept now and then, not on every command. The rule (1,024 or
            // more clients, a multiple of 64) is part of the replicated
            // semantics: nodes of different builds must forget the same
            // clients at the same command.
            return;
        }
        // Every client last seen before the cutoff, oldest first (the same
        // set a scan of `client_seen_ms` finds, without the scan).
        let cutoff = now_ms.saturating_sub(CLIENT_TTL_MS);
        while let Some(&(seen, c)) = self.client_idle.get_min() {
            if seen >= cutoff {
                break;
            }
            self.client_idle.remove_min();
            self.client_seen_ms.remove(&c);
            self.clients.remove(&c);
        }
    }

    /// The grace after expiry before a lock changes hands.
    pub fn grace_ms(&self) -> u64 {
        if self.lock_grace_ms == 0 {
            DEFAULT_LOCK_GRACE_MS
        } else {
            self.lock_grace_ms
        }
    }

    fn acquire(&mut self, name: String, holder: String, ttl_ms: u64, now_ms: u64) -> Vec<u8> {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return refuse(
                Refusal::InvalidArgument,
                format!("ttl {ttl_ms} ms is out of range: use 1 ms to {MAX_TTL_MS} ms"),
            );
        }
        if name.is_empty() {
            return refuse(Refusal::InvalidArgument, "a lock needs a name".into());
        }
        let grace = self.grace_ms();
        if let Some(l) = self.locks.get(&name) {
            if !l.released && now_ms < l.expire_ms.saturating_add(grace) {
                let why = if now_ms < l.expire_ms {
                    "until"
                } else {
                    "(expired; in its grace period) until"
                };
                return refuse(Refusal::LockHeld, format!(
                    "lock \"{name}\" is held by \"{}\" (token {}) {why} {} (Unix ms, {}); it is free at {} ({}) at the latest",
                    l.holder,
                    l.token,
                    l.expire_ms,
                    rfc3339_ms(l.expire_ms),
                    l.expire_ms.saturating_add(grace),
                    rfc3339_ms(l.expire_ms.saturating_add(grace))
                ));
            }
        }
        self.fence += 1;
        let l = LockState {
            holder,
            token: self.fence,
            expire_ms: now_ms.saturating_add(ttl_ms),
            released: false,
        };
        let mut out = vec![RESULT_OK];
        encode_lock(&mut out, &name, &l);
        self.put_lock(name, l);
        out
    }

    fn renew(&mut self, name: &str, token: u64, ttl_ms: u64, now_ms: u64) -> Vec<u8> {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return refuse(
                Refusal::InvalidArgument,
                format!("ttl {ttl_ms} ms is out of range: use 1 ms to {MAX_TTL_MS} ms"),
            );
        }
        match self.locks.get(name) {
            Some(l) if l.token == token && !l.released && now_ms < l.expire_ms => {
                let l = LockState {
                    expire_ms: now_ms.saturating_add(ttl_ms),
                    ..l.clone()
                };
                let mut out = vec![RESULT_OK];
                encode_lock(&mut out, name, &l);
                self.put_lock(name.to_string(), l);
                out
            }
            Some(l) if l.token == token && !l.released => refuse(
                Refusal::LeaseExpired,
                format!(
                "lease of lock \"{name}\" (token {token}) expired at {} (Unix ms, {}); acquire it again",
                l.expire_ms,
                rfc3339_ms(l.expire_ms)
            ),
            ),
            Some(l) if l.token == token => refuse(
                Refusal::LeaseReleased,
                format!("lock \"{name}\" (token {token}) was released; acquire it again"),
            ),
            Some(l) => refuse(
                Refusal::NotHolder,
                format!(
                "token {token} does not hold lock \"{name}\" (held as token {}); acquire it again",
                l.token
            ),
            ),
            None => refuse(
                Refusal::NoSuchLock,
                format!("lock \"{name}\" is not held (never taken, or released or expired and forgotten); acquire it first"),
            ),
        }
    }

    fn init_layout(&mut self, stripes: u32, replicas: u32) -> Vec<u8> {
        if !self.history.is_empty() {
            return refuse(
                Refusal::LayoutExists,
                "a layout is already installed; use install to change it".into(),
            );
        }
        let units: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Storage)
            .map(|(id, _)| *id)
            .collect();
        let need = stripes as usize * replicas as usize;
        if stripes == 0 || replicas == 0 || need > units.len() {
            return refuse(Refusal::NotEnoughUnits, format!(
                "{stripes} stripes x {replicas} replicas need {need} storage units, but {} are registered; start more units or lower the counts",
                units.len()
            ));
        }
        let chains = units[..need]
            .chunks(replicas as usize)
            .map(|c| c.to_vec())
            .collect();
        let sequencer = self
            .members
            .iter()
            .find(|(_, m)| m.role == Role::Sequencer)
            .map_or(0, |(id, _)| *id);
        let p = Projection {
            epoch: 1,
            sequencer,
            segments: vec![LayoutSegment {
                start: 0,
                end: u64::MAX,
                stripes: chains,
            }],
        };
        let mut out = vec![RESULT_OK];
        encode_projection(&mut out, &p);
        self.history.push_back(p);
        self.replication = replicas;
        out
    }

    fn install(&mut self, expected: u64, p: Projection) -> Vec<u8> {
        let current = self.current().map_or(0, |c| c.epoch);
        if expected != current {
            return refuse(
                Refusal::EpochMismatch,
                format!("epoch is {current}, not {expected}: read the layout again and retry"),
            );
        }
        if p.epoch <= current {
            return refuse(
                Refusal::EpochNotAbove,
                format!("new epoch {} must be above the current {current}", p.epoch),
            );
        }
        if let Err(e) = trex_wire::range::check_step("epoch", current, p.epoch) {
            return refuse(Refusal::OutOfRange, e.to_string());
        }
        let mut out = vec![RESULT_OK];
        encode_projection(&mut out, &p);
        self.history.push_back(p);
        out
    }

    fn group_result(&self) -> Vec<u8> {
        let mut out = vec![RESULT_OK];
        encode_group(&mut out, &self.group.clone().unwrap_or_default());
        out
    }

    /// Adds (`addr` given) or removes node `id`: one node at a time, the new
    /// group voting from [`GROUP_LAG`] slots after this one (see
    /// `docs/consensus.md`, "Changing the group").
    /// A pending change whose first slot has come is the current group.
    fn settle_group(&mut self, slot: u64) {
        if let Some(g) = self.group.as_mut() {
            if g.pending.as_ref().is_some_and(|(from, _)| slot >= *from) {
                g.current = g.pending.take().expect("checked").1;
            }
        }
    }

    /// Removes node `leave` and/or adds node `join` (id, address): one
    /// change, the new group voting from [`GROUP_LAG`] slots after this one
    /// (see `docs/consensus.md`, "Changing the group").
    fn change_group(
        &mut self,
        leave: Option<NodeId>,
        join: Option<(NodeId, String)>,
        slot: u64,
    ) -> Vec<u8> {
        self.settle_group(slot);
        let Some(g) = self.group.as_mut() else {
            return refuse(
                Refusal::ChangeInProgress,
                "the consensus group is not recorded yet (a new leader records it first); retry in a moment".into(),
            );
        };
        if let Some((from, _)) = &g.pending {
            return refuse(
                Refusal::ChangeInProgress,
                format!(
                    "an earlier change of the consensus group takes effect at slot {from} (this is slot {slot}); changes go one at a time: retry in a moment"
                ),
            );
        }
        let mut next = g.current.clone();
        if let Some(id) = leave {
            if !g.current.contains_key(&id) {
                let ids: Vec<String> = g.current.keys().map(|i| i.to_string()).collect();
                return refuse(
                    Refusal::InvalidArgument,
                    format!(
                        "node {id} is not in the consensus group (its nodes: {})",
                        ids.join(", ")
                    ),
                );
            }
            if g.current.len() == 1 && join.is_none() {
                return refuse(
                    Refusal::InvalidArgument,
                    format!("node {id} is the group's last node; add its replacement first"),
                );
            }
            next.remove(&id);
        }
        if let Some((id, addr)) = join {
            if id == 0 || id > trex_wire::range::MAX_COUNTER {
                return refuse(
                    Refusal::InvalidArgument,
                    format!("consensus node id {id} is not between 1 and 2^62"),
                );
            }
            if g.current.contains_key(&id) || g.retired.contains(&id) {
                return refuse(
                    Refusal::IdInUse,
                    format!("consensus node id {id} is or was in the group; give the new node an id never used before"),
                );
            }
            if addr.is_empty() || addr.len() > 255 {
                return refuse(
                    Refusal::InvalidArgument,
                    format!("consensus node address \"{addr}\" is not HOST:PORT"),
                );
            }
            // The node leaving may hand its address on.
            if let Some((other, _)) = next.iter().find(|(_, a)| **a == addr) {
                return refuse(
                    Refusal::IdInUse,
                    format!("node {other} of the group already listens at {addr}; remove it first or give the new node another address"),
                );
            }
            next.insert(id, addr);
        }
        if let Some(id) = leave {
            g.retired.push(id);
        }
        g.pending = Some((slot + GROUP_LAG, next));
        self.group_result()
    }

    /// Encodes the whole state (for snapshots).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_members(&mut out, &self.members);
        put_u32(&mut out, self.history.len() as u32);
        for p in &self.history {
            encode_projection(&mut out, p);
        }
        put_u32(&mut out, self.clients.len() as u32);
        for (c, (seq, res)) in &self.clients {
            put_u64(&mut out, *c);
            put_u64(&mut out, *seq);
            put_u32(&mut out, res.len() as u32);
            out.extend_from_slice(res);
        }
        put_u32(&mut out, self.locks.len() as u32);
        for (name, l) in &self.locks {
            encode_lock(&mut out, name, l);
        }
        put_u64(&mut out, self.fence);
        put_u64(&mut out, self.lock_grace_ms);
        put_u32(&mut out, self.client_seen_ms.len() as u32);
        for (c, t) in &self.client_seen_ms {
            put_u64(&mut out, *c);
            put_u64(&mut out, *t);
        }
        put_u64(&mut out, self.trim_mark);
        put_u32(&mut out, self.replication);
        // Present once recorded (earlier snapshots end before it).
        if let Some(g) = &self.group {
            out.push(1);
            encode_group(&mut out, g);
        }
        out
    }

    /// Decodes a snapshot.
    pub fn decode(b: &[u8]) -> Result<StateMachine, DecodeError> {
        let mut r = Reader::new(b);
        let members = decode_members(&mut r)?;
        let mut history = Vector::new();
        for _ in 0..small_count(&mut r, 1 << 20)? {
            history.push_back(decode_projection(&mut r)?);
        }
        let mut clients = OrdMap::new();
        for _ in 0..small_count(&mut r, 1 << 24)? {
            let (c, seq) = (r.u64()?, r.u64()?);
            let n = r.u32()? as usize;
            clients.insert(c, (seq, r.bytes(n)?.to_vec()));
        }
        let mut locks = OrdMap::new();
        for _ in 0..small_count(&mut r, 1 << 24)? {
            let (name, l) = decode_lock(&mut r)?;
            locks.insert(name, l);
        }
        let (fence, lock_grace_ms) = (r.u64()?, r.u64()?);
        let mut client_seen_ms = OrdMap::new();
        for _ in 0..small_count(&mut r, 1 << 24)? {
            let (c, t) = (r.u64()?, r.u64()?);
            client_seen_ms.insert(c, t);
        }
        // Snapshots of builds before the trim mark was recorded end here.
        let trim_mark = if r.remaining() == 0 { 0 } else { r.u64()? };
        let replication = if r.remaining() == 0 { 0 } else { r.u32()? };
        // ... and before the consensus group was recorded.
        let group = if r.remaining() == 0 {
            None
        } else {
            let offset = r.offset();
            match r.u8()? {
                1 => Some(decode_group(&mut r)?),
                value => return Err(DecodeError::BadBool { offset, value }),
            }
        };
        r.finish()?;
        Ok(StateMachine {
            members,
            history,
            clients,
            client_idle: client_seen_ms.iter().map(|(c, t)| (*t, *c)).collect(),
            client_seen_ms,
            lock_expiries: locks
                .iter()
                .map(|(n, l): (&String, &LockState)| (l.expire_ms, n.clone()))
                .collect(),
            locks,
            fence,
            lock_grace_ms,
            trim_mark,
            replication,
            group,
        })
    }
}
