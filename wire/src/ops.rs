//! The operations of the consensus group's replicated state machine and their
//! results, as bytes: the cluster service (members and roles), the layout
//! service (projections) and the lock service. Submitted inside a `submit`
//! request (see [`crate::consensus`]); specified in `docs/wire.md`
//! ("Operations").
//!
//! An operation is a tag byte and its fields, little-endian. Tags 1–15 belong
//! to the cluster and layout services, 16–31 to the lock service, 32–47 to the
//! consensus group (besides 12–15). A result is a
//! status byte: [`RESULT_OK`] and the operation's payload, or [`RESULT_ERR`]
//! and a [`Refused`] (a [`Refusal`] code and a reason for people).

use crate::codec::{put_u32, put_u64};
use crate::consensus::NodeId;
use crate::{DecodeError, Reader};
use std::collections::BTreeMap;

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
    /// Read part of the projection history, oldest first: the projections at
    /// indexes `from`, `from + 1`, … (index 0 is the first ever installed),
    /// at most `max` of them and at most [`LAYOUT_HISTORY_MAX`], fewer where
    /// the reply would pass 1 MiB; and the history's length. Readers use it
    /// to find which former replica of a chain holds a damaged copy's bytes
    /// (docs/protocol.md, "Damaged copies").
    LayoutHistory {
        /// Index of the first projection wanted.
        from: u64,
        /// How many at most.
        max: u32,
    },
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
    /// Set the log's replication factor: how many replicas every chain of
    /// the open segment should have (the failure detector and `trex repair`
    /// work toward it; `trex status` shows chains below it). `replicas` 0
    /// only reads it. The result is the factor now recorded (`u32`; 0: never
    /// set). `init-layout` records its `replicas`. Refused above 16 (the
    /// longest chain a projection holds).
    Replication {
        /// Replicas per chain (1 to 16), or 0 to read.
        replicas: u32,
    },
    /// An `Acquire`, `Renew` or `Release` of a system lease (the sequencer's):
    /// the user operations refuse those names ([`is_system_lease`]), so a
    /// user lock command can neither take, renew nor release them. Encoded as
    /// tag 21 followed by the inner operation, tag and all.
    System(Box<Op>),
    /// Record the log's trim mark: raise it to `mark` if that is higher (a mark
    /// never moves back). The result is the mark now recorded (`u64`); `mark`
    /// 0 only reads it. Recorded here, a trim outlives the units that applied
    /// it: a unit that was down or cut off when it ran applies it when it
    /// answers again (the failure detector spreads it). The state machine does
    /// not know the log's tail; the client refuses a mark above it first.
    Trim {
        /// Addresses below `mark` may be discarded.
        mark: u64,
    },
    /// Record the consensus group as it was bootstrapped (the nodes of every
    /// original node's `--peers`). Proposed once by the first leader; a no-op
    /// once a group is recorded. The result is the group ([`encode_group`]).
    GroupInit {
        /// `(id, HOST:PORT)` of every node of the group.
        nodes: Vec<(NodeId, String)>,
    },
    /// Add one consensus node to the group. It votes from slot `s + GROUP_LAG`
    /// on, where `s` is the slot this operation is chosen in (Lamport's α,
    /// "Paxos Made Simple" §3). Refused while an earlier change has not taken
    /// effect (`change-in-progress`), for an id in the group or ever removed
    /// from it (`id-in-use`), and before the group is recorded. The result is
    /// the group ([`encode_group`]).
    GroupAdd {
        /// The new node's id (1 to 2^62).
        id: NodeId,
        /// Where it listens for its peers (HOST:PORT).
        addr: String,
    },
    /// Remove one consensus node from the group, as [`Op::GroupAdd`] adds one.
    /// Refused for an id not in the group and for the last node.
    GroupRemove {
        /// The node to remove.
        id: NodeId,
    },
    /// Read the consensus group (linearizable). The result is the group
    /// ([`encode_group`]).
    Group,
    /// Replace node `old` by a new node `id` at `addr` in one change (the
    /// group keeps its size): how a node whose journal was damaged comes
    /// back, and how an operator replaces a dead node without passing
    /// through a smaller group. `addr` may be `old`'s. Refused as
    /// [`Op::GroupAdd`] and [`Op::GroupRemove`] are, and for `old` = `id`.
    GroupReplace {
        /// The node leaving.
        old: NodeId,
        /// The node joining (never used in this group before).
        id: NodeId,
        /// Where it listens (HOST:PORT).
        addr: String,
    },
}

/// Slots between the one a change of the consensus group is chosen in and the
/// first one the new group votes on (Lamport's α, "Paxos Made Simple" §3). A
/// leader keeps fewer slots than this in flight past its applied index, so it
/// always knows which group decides a slot it proposes in. Part of the
/// protocol: every node must use the same value.
pub const GROUP_LAG: u64 = 64;

/// The consensus group as the state machine records it: the nodes that vote
/// now, and a change that takes effect at a later slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupView {
    /// Voting nodes and their peer addresses.
    pub current: BTreeMap<NodeId, String>,
    /// A change not yet in effect: the first slot it governs and the nodes
    /// from then on.
    pub pending: Option<(u64, BTreeMap<NodeId, String>)>,
    /// Ids removed from the group; never given to a node again.
    pub retired: Vec<NodeId>,
}

impl GroupView {
    /// The nodes that vote on `slot` (valid for slots from the applied index
    /// of whoever holds this view to `GROUP_LAG` past it).
    pub fn at(&self, slot: u64) -> &BTreeMap<NodeId, String> {
        match &self.pending {
            Some((from, nodes)) if slot >= *from => nodes,
            _ => &self.current,
        }
    }
}

fn put_nodes(out: &mut Vec<u8>, nodes: &BTreeMap<NodeId, String>) {
    put_u32(out, nodes.len() as u32);
    for (id, addr) in nodes {
        put_u64(out, *id);
        put_str(out, addr);
    }
}

fn get_nodes(r: &mut Reader<'_>) -> Result<BTreeMap<NodeId, String>, DecodeError> {
    let mut m = BTreeMap::new();
    for _ in 0..small_count(r, 1 << 10)? {
        let id = r.u64()?;
        m.insert(id, get_str(r)?);
    }
    Ok(m)
}

/// Encodes a group: the current nodes (`count u32`, then per node `id u64,
/// addr string`), `pending u8` (0 or 1), if 1 `from_slot u64` and the
/// pending nodes in the same form, then the retired ids (`count u32`, `id
/// u64` each).
pub fn encode_group(out: &mut Vec<u8>, g: &GroupView) {
    put_nodes(out, &g.current);
    match &g.pending {
        Some((from, nodes)) => {
            out.push(1);
            put_u64(out, *from);
            put_nodes(out, nodes);
        }
        None => out.push(0),
    }
    put_u32(out, g.retired.len() as u32);
    for id in &g.retired {
        put_u64(out, *id);
    }
}

/// Decodes a group written by [`encode_group`].
pub fn decode_group(r: &mut Reader<'_>) -> Result<GroupView, DecodeError> {
    let current = get_nodes(r)?;
    let offset = r.offset();
    let pending = match r.u8()? {
        0 => None,
        1 => {
            let from = r.u64()?;
            Some((from, get_nodes(r)?))
        }
        value => return Err(DecodeError::BadBool { offset, value }),
    };
    let mut retired = Vec::new();
    for _ in 0..small_count(r, 1 << 16)? {
        retired.push(r.u64()?);
    }
    Ok(GroupView {
        current,
        pending,
        retired,
    })
}

/// The lock whose holder is the active sequencer.
pub const SEQUENCER_LEASE: &str = "sequencer";

/// The most projections one `layout-history` result carries.
pub const LAYOUT_HISTORY_MAX: u32 = 64;

/// A `layout-history` result stops adding projections once it is this long
/// (it always carries at least one where one is left).
pub const LAYOUT_HISTORY_BYTES: usize = 1 << 20;

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
const OP_LAYOUT_HISTORY: u8 = 48;
const OP_NOOP: u8 = 8;
const OP_INSTALL_AS_SEQUENCER: u8 = 9;
const OP_TRIM: u8 = 10;
const OP_REPLICATION: u8 = 11;
const OP_GROUP_INIT: u8 = 12;
const OP_GROUP_ADD: u8 = 13;
const OP_GROUP_REMOVE: u8 = 14;
const OP_GROUP: u8 = 15;
const OP_GROUP_REPLACE: u8 = 32;
const OP_ACQUIRE: u8 = 16;
const OP_RENEW: u8 = 17;
const OP_RELEASE: u8 = 18;
const OP_GET_LOCK: u8 = 19;
const OP_SET_LOCK_GRACE: u8 = 20;
const OP_SYSTEM: u8 = 21;

/// Whether `name` is a system lease: the sequencer's lease
/// ([`SEQUENCER_LEASE`]) or any name starting with `trex.`. User lock
/// operations refuse these names (`reserved-name`); the system's roles use
/// [`Op::System`].
pub fn is_system_lease(name: &str) -> bool {
    name == SEQUENCER_LEASE || name.starts_with("trex.")
}

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

/// Reads a `u32` count and refuses one above `max` (so a decoder never
/// allocates or loops by a forged count).
pub fn small_count(r: &mut Reader<'_>, max: u32) -> Result<u32, DecodeError> {
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
    /// The operation's name as docs/wire.md ("Operations") writes it, for
    /// messages: `register`, `install-as-sequencer`, `get-lock`, …
    pub fn name(&self) -> &'static str {
        match self {
            Op::Register { .. } => "register",
            Op::Deregister { .. } => "deregister",
            Op::Heartbeat { .. } => "heartbeat",
            Op::InitLayout { .. } => "init-layout",
            Op::Install { .. } => "install",
            Op::Members => "members",
            Op::Layout => "layout",
            Op::LayoutHistory { .. } => "layout-history",
            Op::Noop => "noop",
            Op::InstallAsSequencer { .. } => "install-as-sequencer",
            Op::Acquire { .. } => "acquire",
            Op::Renew { .. } => "renew",
            Op::Release { .. } => "release",
            Op::GetLock { .. } => "get-lock",
            Op::SetLockGrace { .. } => "set-lock-grace",
            Op::Trim { .. } => "trim",
            Op::Replication { .. } => "replication",
            Op::GroupInit { .. } => "group-init",
            Op::GroupAdd { .. } => "group-add",
            Op::GroupRemove { .. } => "group-remove",
            Op::Group => "group",
            Op::GroupReplace { .. } => "group-replace",
            Op::System(_) => "system",
        }
    }

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
            Op::LayoutHistory { from, max } => {
                out.push(OP_LAYOUT_HISTORY);
                put_u64(&mut out, *from);
                put_u32(&mut out, *max);
            }
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
            Op::Trim { mark } => {
                out.push(OP_TRIM);
                put_u64(&mut out, *mark);
            }
            Op::Replication { replicas } => {
                out.push(OP_REPLICATION);
                put_u32(&mut out, *replicas);
            }
            Op::GroupInit { nodes } => {
                out.push(OP_GROUP_INIT);
                put_u32(&mut out, nodes.len() as u32);
                for (id, addr) in nodes {
                    put_u64(&mut out, *id);
                    put_str(&mut out, addr);
                }
            }
            Op::GroupAdd { id, addr } => {
                out.push(OP_GROUP_ADD);
                put_u64(&mut out, *id);
                put_str(&mut out, addr);
            }
            Op::GroupRemove { id } => {
                out.push(OP_GROUP_REMOVE);
                put_u64(&mut out, *id);
            }
            Op::Group => out.push(OP_GROUP),
            Op::GroupReplace { old, id, addr } => {
                out.push(OP_GROUP_REPLACE);
                put_u64(&mut out, *old);
                put_u64(&mut out, *id);
                put_str(&mut out, addr);
            }
            Op::System(inner) => {
                out.push(OP_SYSTEM);
                out.extend_from_slice(&inner.encode());
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
            OP_LAYOUT_HISTORY => Op::LayoutHistory {
                from: r.u64()?,
                max: r.u32()?,
            },
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
            OP_TRIM => Op::Trim { mark: r.u64()? },
            OP_REPLICATION => Op::Replication { replicas: r.u32()? },
            OP_GROUP_INIT => {
                let mut nodes = Vec::new();
                for _ in 0..small_count(&mut r, 1 << 10)? {
                    let id = r.u64()?;
                    nodes.push((id, get_str(&mut r)?));
                }
                Op::GroupInit { nodes }
            }
            OP_GROUP_ADD => Op::GroupAdd {
                id: r.u64()?,
                addr: get_str(&mut r)?,
            },
            OP_GROUP_REMOVE => Op::GroupRemove { id: r.u64()? },
            OP_GROUP => Op::Group,
            OP_GROUP_REPLACE => Op::GroupReplace {
                old: r.u64()?,
                id: r.u64()?,
                addr: get_str(&mut r)?,
            },
            OP_SYSTEM => {
                let inner = Op::decode(r.bytes(r.remaining())?)?;
                if !matches!(
                    inner,
                    Op::Acquire { .. } | Op::Renew { .. } | Op::Release { .. }
                ) {
                    return Err(DecodeError::UnknownOpcode(OP_SYSTEM));
                }
                return Ok(Op::System(Box::new(inner)));
            }
            other => return Err(DecodeError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(op)
    }
}

/// Result status byte: done; the operation's payload follows.
pub const RESULT_OK: u8 = 0;
/// Result status byte: refused; a [`Refused`] follows (`code u16`, then the
/// reason as `len u32` and UTF-8 bytes).
pub const RESULT_ERR: u8 = 1;

/// Why the state machine refused an operation. Callers branch on this code,
/// never on the reason's text (which is for people and may change). Codes are
/// never reused; an unknown code decodes as [`Refusal::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Refusal {
    /// A code this build does not know (a newer server).
    Unknown = 0,
    /// The command's sequence number is below the client's last applied one
    /// (a retry that lost a race with a later command of the same client).
    StaleCommand = 1,
    /// The operation's bytes did not decode (unknown tag, truncated fields).
    Undecodable = 2,
    /// A field is out of its range (a TTL of 0 or above a day, an empty lock
    /// name, a grace above the limit).
    InvalidArgument = 3,
    /// The node id is not registered (deregister, heartbeat).
    NotRegistered = 4,
    /// `init-layout` after a layout was installed.
    LayoutExists = 5,
    /// `init-layout` asked for more storage units than are registered.
    NotEnoughUnits = 6,
    /// Compare-and-set failed: the current epoch is not the caller's expected
    /// one. Read the layout again and retry.
    EpochMismatch = 7,
    /// The new projection's epoch is not above the current one.
    EpochNotAbove = 8,
    /// `install-as-sequencer`: the lease token does not hold the sequencer
    /// lock (expired, released or taken over). The caller must stand by.
    NotSequencerLeaseholder = 9,
    /// `acquire`: the lock is held (or in its grace period after expiry).
    LockHeld = 10,
    /// `renew`: the lease expired; acquire again.
    LeaseExpired = 11,
    /// `renew`/`release`: the lease was released.
    LeaseReleased = 12,
    /// `renew`/`release`: the token does not hold the lock (it passed to
    /// another holder).
    NotHolder = 13,
    /// `renew`/`release`/`get-lock`: no lock of that name was ever taken.
    NoSuchLock = 14,
    /// A counter outside its range ([`crate::range`]): an epoch more than
    /// 2^24 above the current one, or above 2^62.
    OutOfRange = 15,
    /// A `register` of an id a live node holds at another address (or in
    /// another role): two nodes never share an id.
    IdInUse = 16,
    /// A user lock operation (`acquire`, `renew`, `release`) on a system
    /// lease's name ([`is_system_lease`]).
    ReservedName = 17,
    /// `group-add`/`group-remove` while an earlier change of the consensus
    /// group has not taken effect yet (changes go one at a time). Retry in a
    /// moment.
    ChangeInProgress = 18,
}

impl Refusal {
    /// Every code, in code order (for documentation and tests).
    pub const ALL: [Refusal; 19] = [
        Refusal::Unknown,
        Refusal::StaleCommand,
        Refusal::Undecodable,
        Refusal::InvalidArgument,
        Refusal::NotRegistered,
        Refusal::LayoutExists,
        Refusal::NotEnoughUnits,
        Refusal::EpochMismatch,
        Refusal::EpochNotAbove,
        Refusal::NotSequencerLeaseholder,
        Refusal::LockHeld,
        Refusal::LeaseExpired,
        Refusal::LeaseReleased,
        Refusal::NotHolder,
        Refusal::NoSuchLock,
        Refusal::OutOfRange,
        Refusal::IdInUse,
        Refusal::ReservedName,
        Refusal::ChangeInProgress,
    ];

    /// The code for `v`; [`Refusal::Unknown`] for codes this build does not know.
    pub fn from_u16(v: u16) -> Refusal {
        Refusal::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(Refusal::Unknown)
    }

    /// The kebab-case name used in `docs/wire.md` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::StaleCommand => "stale-command",
            Refusal::Undecodable => "undecodable",
            Refusal::InvalidArgument => "invalid-argument",
            Refusal::NotRegistered => "not-registered",
            Refusal::LayoutExists => "layout-exists",
            Refusal::NotEnoughUnits => "not-enough-units",
            Refusal::EpochMismatch => "epoch-mismatch",
            Refusal::EpochNotAbove => "epoch-not-above",
            Refusal::NotSequencerLeaseholder => "not-sequencer-leaseholder",
            Refusal::LockHeld => "lock-held",
            Refusal::LeaseExpired => "lease-expired",
            Refusal::LeaseReleased => "lease-released",
            Refusal::NotHolder => "not-holder",
            Refusal::NoSuchLock => "no-such-lock",
            Refusal::OutOfRange => "out-of-range",
            Refusal::IdInUse => "id-in-use",
            Refusal::ReservedName => "reserved-name",
            Refusal::ChangeInProgress => "change-in-progress",
        }
    }

    /// Whether the refusal means "your lease is gone": the holder must stop
    /// acting on it (expired, released, passed on, never existed, or not the
    /// sequencer's).
    pub fn lease_lost(self) -> bool {
        matches!(
            self,
            Refusal::LeaseExpired
                | Refusal::LeaseReleased
                | Refusal::NotHolder
                | Refusal::NoSuchLock
                | Refusal::NotSequencerLeaseholder
        )
    }
}

/// A refused operation: the typed reason and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// What to branch on.
    pub code: Refusal,
    /// What to print. Never parsed.
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// Encodes a refused result: `RESULT_ERR u8, code u16, reason (len u32, UTF-8)`.
pub fn encode_refused(out: &mut Vec<u8>, code: Refusal, message: &str) {
    out.push(RESULT_ERR);
    out.extend_from_slice(&(code as u16).to_le_bytes());
    put_str(out, message);
}

/// Splits a result into its payload (after [`RESULT_OK`]) or its [`Refused`].
/// Errors: an empty result, an unknown status byte, or a truncated refusal.
pub fn decode_result(b: &[u8]) -> Result<Result<&[u8], Refused>, DecodeError> {
    let mut r = Reader::new(b);
    let offset = r.offset();
    match r.u8()? {
        RESULT_OK => Ok(Ok(&b[1..])),
        RESULT_ERR => {
            let code = Refusal::from_u16(r.u16()?);
            let message = get_str(&mut r)?;
            r.finish()?;
            Ok(Err(Refused { code, message }))
        }
        value => Err(DecodeError::BadStatus { offset, value }),
    }
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
