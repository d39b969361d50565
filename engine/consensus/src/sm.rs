//! The replicated state machine of the consensus group: the cluster service
//! (members and roles), the layout service (the projection history), and the
//! client table that makes commands exactly-once. Every decision is a function of
//! the chosen commands alone, including time: a command carries the leader's
//! clock (`stamp_ms`), and nothing here reads a clock of its own.
//!
//! Operations are encoded as a tag byte and fields (little-endian); see
//! `docs/wire.md` ("Operations"). Tags 16–31 belong to the lock service
//! (16–20 used).

use std::collections::BTreeMap;
use trex_wire::codec::{put_u32, put_u64};
use trex_wire::consensus::{Command, NodeId};
use trex_wire::{DecodeError, Reader};

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Role {
    /// A consensus node.
    Consensus = 1,
    /// A sequencer.
    Sequencer = 2,
    /// A storage unit.
    Storage = 3,
}

impl Role {
    /// Parses a role byte.
    pub fn from_u8(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Consensus),
            2 => Some(Role::Sequencer),
            3 => Some(Role::Storage),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Consensus => "consensus",
            Role::Sequencer => "sequencer",
            Role::Storage => "storage",
        }
    }
}

/// A registered node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Role.
    pub role: Role,
    /// Where it listens (HOST:PORT).
    pub addr: String,
    /// Leader time of its first registration (Unix ms).
    pub registered_ms: u64,
    /// Leader time of its latest registration or heartbeat (Unix ms).
    pub seen_ms: u64,
}

/// A range of the log and the storage units serving it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutSegment {
    /// First address.
    pub start: u64,
    /// One past the last address; `u64::MAX` for the open, current segment.
    pub end: u64,
    /// Stripes; each a chain of storage-unit ids, head first. Address `a` maps
    /// to stripe `a % stripes.len()`, at position `a / stripes.len()` there.
    pub stripes: Vec<Vec<NodeId>>,
}

/// A projection: the layout of the log at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Projection {
    /// Epoch; strictly increases from one installed projection to the next.
    pub epoch: u64,
    /// The active sequencer's node id (0: none yet).
    pub sequencer: NodeId,
    /// Segments in address order.
    pub segments: Vec<LayoutSegment>,
}

/// Operations on the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Register (or re-register) a node.
    Register {
        /// Node id.
        id: NodeId,
        /// Role.
        role: Role,
        /// Address.
        addr: String,
    },
    /// Remove a node.
    Deregister {
        /// Node id.
        id: NodeId,
    },
    /// Keep a registration fresh.
    Heartbeat {
        /// Node id.
        id: NodeId,
    },
    /// Bootstrap the first projection from the registered storage units.
    InitLayout {
        /// Stripes.
        stripes: u32,
        /// Replicas per stripe (chain length).
        replicas: u32,
    },
    /// Install a projection if the current epoch is `expected_epoch`
    /// (compare-and-set) and the new epoch is higher.
    Install {
        /// The epoch the caller saw.
        expected_epoch: u64,
        /// The new projection.
        projection: Projection,
    },
    /// Read the members (linearizable: it goes through the log).
    Members,
    /// Read the current projection and the history length.
    Layout,
    /// Does nothing (a barrier).
    Noop,
    /// `Install`, by a sequencer taking over: refused unless `lease_token` holds
    /// the `sequencer` lock, unexpired, at the command's stamp. A sequencer that
    /// stalled past its lease cannot install a layout naming itself.
    InstallAsSequencer {
        /// The epoch the caller saw.
        expected_epoch: u64,
        /// The new projection.
        projection: Projection,
        /// The caller's sequencer lease (fencing token).
        lease_token: u64,
    },
    /// Take an advisory lock for `ttl_ms` (of the leader's clock).
    Acquire {
        /// Lock name.
        name: String,
        /// Who takes it (free text: a process, a host, a role).
        holder: String,
        /// Lease length in milliseconds.
        ttl_ms: u64,
    },
    /// Extend a lease that has not expired.
    Renew {
        /// Lock name.
        name: String,
        /// The lease's fencing token.
        token: u64,
        /// New lease length from now, in milliseconds.
        ttl_ms: u64,
    },
    /// Give a lock up.
    Release {
        /// Lock name.
        name: String,
        /// The lease's fencing token.
        token: u64,
    },
    /// Read a lock's state.
    GetLock {
        /// Lock name.
        name: String,
    },
    /// Set the grace period after a lease's expiry before another holder may
    /// take the lock.
    SetLockGrace {
        /// Grace in milliseconds.
        grace_ms: u64,
    },
}

/// The lock whose holder is the active sequencer.
pub const SEQUENCER_LEASE: &str = "sequencer";

/// How long a client's last result is kept for exactly-once retries (1 hour).
pub const CLIENT_TTL_MS: u64 = 3_600_000;

/// Longest lease a lock grants (one day).
pub const MAX_TTL_MS: u64 = 86_400_000;
/// Grace after expiry before a lock changes hands, unless set otherwise.
pub const DEFAULT_LOCK_GRACE_MS: u64 = 1_000;

/// The state of one advisory lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockState {
    /// Current (or last) holder.
    pub holder: String,
    /// Fencing token of the current (or last) grant.
    pub token: u64,
    /// Expiry of the lease, leader's clock, Unix ms.
    pub expire_ms: u64,
    /// Released by its holder (free at once).
    pub released: bool,
}

const OP_REGISTER: u8 = 1;
const OP_DEREGISTER: u8 = 2;
const OP_HEARTBEAT: u8 = 3;
const OP_INIT_LAYOUT: u8 = 4;
const OP_INSTALL: u8 = 5;
const OP_MEMBERS: u8 = 6;
const OP_LAYOUT: u8 = 7;
const OP_NOOP: u8 = 8;
const OP_INSTALL_AS_SEQUENCER: u8 = 9;
const OP_ACQUIRE: u8 = 16;
const OP_RENEW: u8 = 17;
const OP_RELEASE: u8 = 18;
const OP_GET_LOCK: u8 = 19;
const OP_SET_LOCK_GRACE: u8 = 20;

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn get_str(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let n = r.u32()? as usize;
    if n > 4096 {
        return Err(DecodeError::EntryTooLarge {
            len: n as u32,
            max: 4096,
        });
    }
    Ok(String::from_utf8_lossy(r.bytes(n)?).into_owned())
}

/// Encodes a projection: `epoch u64, sequencer u64, nsegments u32`, then per
/// segment `start u64, end u64, nstripes u32`, then per stripe `len u32, ids u64…`.
pub fn encode_projection(out: &mut Vec<u8>, p: &Projection) {
    put_u64(out, p.epoch);
    put_u64(out, p.sequencer);
    put_u32(out, p.segments.len() as u32);
    for s in &p.segments {
        put_u64(out, s.start);
        put_u64(out, s.end);
        put_u32(out, s.stripes.len() as u32);
        for chain in &s.stripes {
            put_u32(out, chain.len() as u32);
            for id in chain {
                put_u64(out, *id);
            }
        }
    }
}

fn small_count(r: &mut Reader<'_>, max: u32) -> Result<u32, DecodeError> {
    let n = r.u32()?;
    if n > max {
        return Err(DecodeError::TooManyOps { count: n, max });
    }
    Ok(n)
}

/// Decodes a projection.
pub fn decode_projection(r: &mut Reader<'_>) -> Result<Projection, DecodeError> {
    let epoch = r.u64()?;
    let sequencer = r.u64()?;
    let mut segments = Vec::new();
    for _ in 0..small_count(r, 1024)? {
        let (start, end) = (r.u64()?, r.u64()?);
        let mut stripes = Vec::new();
        for _ in 0..small_count(r, 256)? {
            let mut chain = Vec::new();
            for _ in 0..small_count(r, 16)? {
                chain.push(r.u64()?);
            }
            stripes.push(chain);
        }
        segments.push(LayoutSegment {
            start,
            end,
            stripes,
        });
    }
    Ok(Projection {
        epoch,
        sequencer,
        segments,
    })
}

impl Op {
    /// Encodes the operation.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Op::Register { id, role, addr } => {
                out.push(OP_REGISTER);
                put_u64(&mut out, *id);
                out.push(*role as u8);
                put_str(&mut out, addr);
            }
            Op::Deregister { id } => {
                out.push(OP_DEREGISTER);
                put_u64(&mut out, *id);
            }
            Op::Heartbeat { id } => {
                out.push(OP_HEARTBEAT);
                put_u64(&mut out, *id);
            }
            Op::InitLayout { stripes, replicas } => {
                out.push(OP_INIT_LAYOUT);
                put_u32(&mut out, *stripes);
                put_u32(&mut out, *replicas);
            }
            Op::Install {
                expected_epoch,
                projection,
            } => {
                out.push(OP_INSTALL);
                put_u64(&mut out, *expected_epoch);
                encode_projection(&mut out, projection);
            }
            Op::Members => out.push(OP_MEMBERS),
            Op::Layout => out.push(OP_LAYOUT),
            Op::Noop => out.push(OP_NOOP),
            Op::InstallAsSequencer {
                expected_epoch,
                projection,
                lease_token,
            } => {
                out.push(OP_INSTALL_AS_SEQUENCER);
                put_u64(&mut out, *expected_epoch);
                encode_projection(&mut out, projection);
                put_u64(&mut out, *lease_token);
            }
            Op::Acquire {
                name,
                holder,
                ttl_ms,
            } => {
                out.push(OP_ACQUIRE);
                put_str(&mut out, name);
                put_str(&mut out, holder);
                put_u64(&mut out, *ttl_ms);
            }
            Op::Renew {
                name,
                token,
                ttl_ms,
            } => {
                out.push(OP_RENEW);
                put_str(&mut out, name);
                put_u64(&mut out, *token);
                put_u64(&mut out, *ttl_ms);
            }
            Op::Release { name, token } => {
                out.push(OP_RELEASE);
                put_str(&mut out, name);
                put_u64(&mut out, *token);
            }
            Op::GetLock { name } => {
                out.push(OP_GET_LOCK);
                put_str(&mut out, name);
            }
            Op::SetLockGrace { grace_ms } => {
                out.push(OP_SET_LOCK_GRACE);
                put_u64(&mut out, *grace_ms);
            }
        }
        out
    }

    /// Decodes an operation; the whole input must be consumed.
    pub fn decode(b: &[u8]) -> Result<Op, DecodeError> {
        let mut r = Reader::new(b);
        let op = match r.u8()? {
            OP_REGISTER => {
                let id = r.u64()?;
                let offset = r.offset();
                let rb = r.u8()?;
                let role = Role::from_u8(rb).ok_or(DecodeError::BadStatus { offset, value: rb })?;
                Op::Register {
                    id,
                    role,
                    addr: get_str(&mut r)?,
                }
            }
            OP_DEREGISTER => Op::Deregister { id: r.u64()? },
            OP_HEARTBEAT => Op::Heartbeat { id: r.u64()? },
            OP_INIT_LAYOUT => Op::InitLayout {
                stripes: r.u32()?,
                replicas: r.u32()?,
            },
            OP_INSTALL => Op::Install {
                expected_epoch: r.u64()?,
                projection: decode_projection(&mut r)?,
            },
            OP_INSTALL_AS_SEQUENCER => Op::InstallAsSequencer {
                expected_epoch: r.u64()?,
                projection: decode_projection(&mut r)?,
                lease_token: r.u64()?,
            },
            OP_MEMBERS => Op::Members,
            OP_LAYOUT => Op::Layout,
            OP_NOOP => Op::Noop,
            OP_ACQUIRE => Op::Acquire {
                name: get_str(&mut r)?,
                holder: get_str(&mut r)?,
                ttl_ms: r.u64()?,
            },
            OP_RENEW => Op::Renew {
                name: get_str(&mut r)?,
                token: r.u64()?,
                ttl_ms: r.u64()?,
            },
            OP_RELEASE => Op::Release {
                name: get_str(&mut r)?,
                token: r.u64()?,
            },
            OP_GET_LOCK => Op::GetLock {
                name: get_str(&mut r)?,
            },
            OP_SET_LOCK_GRACE => Op::SetLockGrace { grace_ms: r.u64()? },
            other => return Err(DecodeError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(op)
    }
}

/// Result status byte: done.
pub const RESULT_OK: u8 = 0;
/// Result status byte: refused; a UTF-8 reason follows.
pub const RESULT_ERR: u8 = 1;

fn err(msg: String) -> Vec<u8> {
    let mut v = vec![RESULT_ERR];
    v.extend_from_slice(msg.as_bytes());
    v
}

/// The replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    /// Registered nodes.
    pub members: BTreeMap<NodeId, Member>,
    /// Every projection ever installed, oldest first.
    pub history: Vec<Projection>,
    /// Per client: the last sequence number applied and its result.
    pub clients: BTreeMap<u64, (u64, Vec<u8>)>,
    /// Per client: the leader's stamp of its last command. Entries idle for
    /// longer than `CLIENT_TTL_MS` are dropped (deterministically, by stamp):
    /// exactly-once holds for retries within that window.
    pub client_seen_ms: BTreeMap<u64, u64>,
    /// Advisory locks by name.
    pub locks: BTreeMap<String, LockState>,
    /// The last fencing token handed out (tokens only increase).
    pub fence: u64,
    /// Grace after expiry before a lock changes hands (ms); 0 means the default.
    pub lock_grace_ms: u64,
}

/// Encodes a lock: `name string, holder string, token u64, expire_ms u64, released u8`.
pub fn encode_lock(out: &mut Vec<u8>, name: &str, l: &LockState) {
    put_str(out, name);
    put_str(out, &l.holder);
    put_u64(out, l.token);
    put_u64(out, l.expire_ms);
    out.push(l.released as u8);
}

/// Decodes a lock written by [`encode_lock`]: `(name, state)`.
pub fn decode_lock(r: &mut Reader<'_>) -> Result<(String, LockState), DecodeError> {
    let name = get_str(r)?;
    let holder = get_str(r)?;
    let (token, expire_ms) = (r.u64()?, r.u64()?);
    let released = r.u8()? != 0;
    Ok((
        name,
        LockState {
            holder,
            token,
            expire_ms,
            released,
        },
    ))
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
        if let Some((seq, result)) = self.clients.get(&c.client) {
            if c.seq == *seq {
                return result.clone();
            }
            if c.seq < *seq {
                return err(format!(
                    "stale command: client {} is already at sequence {seq}",
                    c.client
                ));
            }
        }
        let result = match Op::decode(&c.op) {
            Ok(op) => self.apply_op(op, c.stamp_ms),
            Err(e) => err(format!("undecodable operation: {e}")),
        };
        if c.client != 0 {
            self.clients.insert(c.client, (c.seq, result.clone()));
            self.client_seen_ms.insert(c.client, c.stamp_ms);
            self.expire_clients(c.stamp_ms);
        }
        result
    }

    fn apply_op(&mut self, op: Op, now_ms: u64) -> Vec<u8> {
        match op {
            Op::Register { id, role, addr } => {
                let registered_ms = self.members.get(&id).map_or(now_ms, |m| m.registered_ms);
                self.members.insert(
                    id,
                    Member {
                        role,
                        addr,
                        registered_ms,
                        seen_ms: now_ms,
                    },
                );
                vec![RESULT_OK]
            }
            Op::Deregister { id } => match self.members.remove(&id) {
                Some(_) => vec![RESULT_OK],
                None => err(format!("node {id} is not registered")),
            },
            Op::Heartbeat { id } => match self.members.get_mut(&id) {
                Some(m) => {
                    m.seen_ms = m.seen_ms.max(now_ms);
                    vec![RESULT_OK]
                }
                None => err(format!("node {id} is not registered; register it first")),
            },
            Op::InitLayout { stripes, replicas } => self.init_layout(stripes, replicas),
            Op::Install {
                expected_epoch,
                projection,
            } => self.install(expected_epoch, projection),
            Op::InstallAsSequencer { expected_epoch, projection, lease_token } => {
                let live = self.locks.get(SEQUENCER_LEASE).is_some_and(|l| {
                    l.token == lease_token && !l.released && now_ms < l.expire_ms
                });
                if !live {
                    return err(format!(
                        "lease token {lease_token} does not hold the {SEQUENCER_LEASE:?} lock (expired, released or taken over); this sequencer must stand by"
                    ));
                }
                self.install(expected_epoch, projection)
            }
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
            Op::Noop => vec![RESULT_OK],
            Op::Acquire { name, holder, ttl_ms } => self.acquire(name, holder, ttl_ms, now_ms),
            Op::Renew { name, token, ttl_ms } => self.renew(&name, token, ttl_ms, now_ms),
            Op::Release { name, token } => match self.locks.get_mut(&name) {
                Some(l) if l.token == token && !l.released => {
                    l.released = true;
                    vec![RESULT_OK]
                }
                Some(l) if l.token == token => err(format!("lock {name:?} (token {token}) is already released")),
                Some(l) => err(format!(
                    "token {token} does not hold lock {name:?}: it passed to token {} ({}); your lease is gone",
                    l.token, l.holder
                )),
                None => err(format!("lock {name:?} does not exist")),
            },
            Op::GetLock { name } => match self.locks.get(&name) {
                Some(l) => {
                    let mut out = vec![RESULT_OK];
                    encode_lock(&mut out, &name, l);
                    out
                }
                None => err(format!("lock {name:?} has never been taken")),
            },
            Op::SetLockGrace { grace_ms } => {
                if grace_ms > MAX_TTL_MS {
                    return err(format!("grace {grace_ms} ms is over the limit of {MAX_TTL_MS} ms"));
                }
                self.lock_grace_ms = grace_ms.max(1);
                vec![RESULT_OK]
            }
        }
    }

    /// Forgets clients idle for longer than `CLIENT_TTL_MS` (every command line
    /// invocation is a client; without this the table would only grow).
    fn expire_clients(&mut self, now_ms: u64) {
        if self.client_seen_ms.len() < 1024 || !self.client_seen_ms.len().is_multiple_of(64) {
            return; // sweep now and then, not on every command
        }
        let cutoff = now_ms.saturating_sub(CLIENT_TTL_MS);
        let idle: Vec<u64> = self
            .client_seen_ms
            .iter()
            .filter(|(_, t)| **t < cutoff)
            .map(|(c, _)| *c)
            .collect();
        for c in idle {
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
            return err(format!(
                "ttl {ttl_ms} ms is out of range: use 1 ms to {MAX_TTL_MS} ms"
            ));
        }
        if name.is_empty() {
            return err("a lock needs a name".into());
        }
        let grace = self.grace_ms();
        if let Some(l) = self.locks.get(&name) {
            if !l.released && now_ms < l.expire_ms.saturating_add(grace) {
                let why = if now_ms < l.expire_ms {
                    "until"
                } else {
                    "(expired; in its grace period) until"
                };
                return err(format!(
                    "lock {name:?} is held by {:?} (token {}) {why} {} (Unix ms); it is free at {} at the latest",
                    l.holder,
                    l.token,
                    l.expire_ms,
                    l.expire_ms.saturating_add(grace)
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
        self.locks.insert(name, l);
        out
    }

    fn renew(&mut self, name: &str, token: u64, ttl_ms: u64, now_ms: u64) -> Vec<u8> {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return err(format!(
                "ttl {ttl_ms} ms is out of range: use 1 ms to {MAX_TTL_MS} ms"
            ));
        }
        match self.locks.get_mut(name) {
            Some(l) if l.token == token && !l.released && now_ms < l.expire_ms => {
                l.expire_ms = now_ms.saturating_add(ttl_ms);
                let mut out = vec![RESULT_OK];
                encode_lock(&mut out, name, l);
                out
            }
            Some(l) if l.token == token && !l.released => err(format!(
                "lease of lock {name:?} (token {token}) expired at {} (Unix ms); acquire it again",
                l.expire_ms
            )),
            Some(l) if l.token == token => err(format!(
                "lock {name:?} (token {token}) was released; acquire it again"
            )),
            Some(l) => err(format!(
                "token {token} does not hold lock {name:?} (held as token {}); acquire it again",
                l.token
            )),
            None => err(format!("lock {name:?} does not exist; acquire it first")),
        }
    }

    fn init_layout(&mut self, stripes: u32, replicas: u32) -> Vec<u8> {
        if !self.history.is_empty() {
            return err("a layout is already installed; use install to change it".into());
        }
        let units: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Storage)
            .map(|(id, _)| *id)
            .collect();
        let need = stripes as usize * replicas as usize;
        if stripes == 0 || replicas == 0 || need > units.len() {
            return err(format!(
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
        self.history.push(p);
        out
    }

    fn install(&mut self, expected: u64, p: Projection) -> Vec<u8> {
        let current = self.current().map_or(0, |c| c.epoch);
        if expected != current {
            return err(format!(
                "epoch is {current}, not {expected}: read the layout again and retry"
            ));
        }
        if p.epoch <= current {
            return err(format!(
                "new epoch {} must be above the current {current}",
                p.epoch
            ));
        }
        let mut out = vec![RESULT_OK];
        encode_projection(&mut out, &p);
        self.history.push(p);
        out
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
        out
    }

    /// Decodes a snapshot.
    pub fn decode(b: &[u8]) -> Result<StateMachine, DecodeError> {
        let mut r = Reader::new(b);
        let members = decode_members(&mut r)?;
        let mut history = Vec::new();
        for _ in 0..small_count(&mut r, 1 << 20)? {
            history.push(decode_projection(&mut r)?);
        }
        let mut clients = BTreeMap::new();
        for _ in 0..small_count(&mut r, 1 << 24)? {
            let (c, seq) = (r.u64()?, r.u64()?);
            let n = r.u32()? as usize;
            clients.insert(c, (seq, r.bytes(n)?.to_vec()));
        }
        let mut locks = BTreeMap::new();
        for _ in 0..small_count(&mut r, 1 << 24)? {
            let (name, l) = decode_lock(&mut r)?;
            locks.insert(name, l);
        }
        let (fence, lock_grace_ms) = (r.u64()?, r.u64()?);
        let mut client_seen_ms = BTreeMap::new();
        for _ in 0..small_count(&mut r, 1 << 24)? {
            let (c, t) = (r.u64()?, r.u64()?);
            client_seen_ms.insert(c, t);
        }
        r.finish()?;
        Ok(StateMachine {
            members,
            history,
            clients,
            client_seen_ms,
            locks,
            fence,
            lock_grace_ms,
        })
    }
}

/// Encodes members: `count u32`, then per member `id u64, role u8,
/// registered_ms u64, seen_ms u64, addr (len u32, bytes)`.
pub fn encode_members(out: &mut Vec<u8>, m: &BTreeMap<NodeId, Member>) {
    put_u32(out, m.len() as u32);
    for (id, mm) in m {
        put_u64(out, *id);
        out.push(mm.role as u8);
        put_u64(out, mm.registered_ms);
        put_u64(out, mm.seen_ms);
        put_str(out, &mm.addr);
    }
}

/// Decodes members.
pub fn decode_members(r: &mut Reader<'_>) -> Result<BTreeMap<NodeId, Member>, DecodeError> {
    let mut m = BTreeMap::new();
    for _ in 0..small_count(r, 1 << 16)? {
        let id = r.u64()?;
        let offset = r.offset();
        let rb = r.u8()?;
        let role = Role::from_u8(rb).ok_or(DecodeError::BadStatus { offset, value: rb })?;
        let (registered_ms, seen_ms) = (r.u64()?, r.u64()?);
        m.insert(
            id,
            Member {
                role,
                addr: get_str(r)?,
                registered_ms,
                seen_ms,
            },
        );
    }
    Ok(m)
}
