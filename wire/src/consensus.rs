//! Messages of the consensus group: the Multi-Paxos messages between consensus
//! nodes, and the commands clients submit. Layouts are in `docs/wire.md`.

use crate::codec::{put_u32, put_u64, DecodeError, Reader};

/// A consensus node's id (1, 2, 3, …).
pub type NodeId = u64;

/// Most commands one batch (one Paxos slot) may carry.
pub const MAX_BATCH_COMMANDS: u32 = 4096;
/// Most bytes one command's operation may take.
pub const MAX_OP_LEN: u32 = 1 << 20;

/// A Paxos ballot: ordered by counter, then node id. Never reused: a node only
/// ever makes ballots with its own id and a counter above any it has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// Round counter.
    pub counter: u64,
    /// The node that owns the ballot.
    pub node: NodeId,
}

/// One client command inside a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Command {
    /// Client id (exactly-once: with `seq`, names the command).
    pub client: u64,
    /// The client's sequence number for this command; retries reuse it.
    pub seq: u64,
    /// The leader's clock (Unix ms) when it proposed the command: replicas decide
    /// anything time-based with this, never with their own clocks.
    pub stamp_ms: u64,
    /// The operation, encoded (see `Op`).
    pub op: Vec<u8>,
}

/// What one Paxos slot holds: a batch of commands (empty = no-op).
pub type Value = Vec<Command>;

/// Messages between consensus nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// May I run for leader with this ballot? (Asked before disturbing anyone.)
    PreVote {
        /// The ballot the candidate would use.
        ballot: Ballot,
    },
    /// Answer to a pre-vote.
    PreVoteReply {
        /// The ballot asked about.
        ballot: Ballot,
        /// Granted: the replier has not heard from a live leader lately.
        granted: bool,
    },
    /// Phase 1a: promise not to accept lower ballots, and report what you
    /// accepted from slot `from` on.
    Prepare {
        /// Proposed ballot.
        ballot: Ballot,
        /// First slot asked about.
        from: u64,
    },
    /// Phase 1b. The promise holds for every slot; the report of accepted
    /// values is bounded in size, so it may cover only slots `from..upto`
    /// (the proposer asks again, with the same ballot, from `upto`).
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// Accepted `(slot, ballot, value)` at or above `from` and below `upto`.
        accepted: Vec<(u64, Ballot, Value)>,
        /// Slots below this are compacted into the replier's snapshot: chosen,
        /// and no longer reported as accepted.
        snapshot: u64,
        /// Every value accepted in `from..upto` is reported; `u64::MAX` when the
        /// report is complete (nothing accepted at or above `from` is left out).
        upto: u64,
    },
    /// Phase 2a.
    Accept {
        /// Leader's ballot.
        ballot: Ballot,
        /// Slot.
        slot: u64,
        /// Value proposed.
        value: Value,
        /// Leader's commit index.
        commit: u64,
    },
    /// Phase 2b.
    Accepted {
        /// Ballot accepted.
        ballot: Ballot,
        /// Slot.
        slot: u64,
    },
    /// Refusal: the replier promised a higher ballot.
    Nack {
        /// The ballot refused.
        ballot: Ballot,
        /// What the replier has promised.
        promised: Ballot,
    },
    /// Slots below `commit` are chosen; doubles as the leader's heartbeat.
    Commit {
        /// Leader's ballot.
        ballot: Ballot,
        /// Commit index.
        commit: u64,
    },
    /// Send me the chosen values from `from` on.
    CatchUp {
        /// First slot wanted.
        from: u64,
    },
    /// Chosen values (retransmission).
    Chosen {
        /// `(slot, value)` pairs, consecutive.
        entries: Vec<(u64, Value)>,
        /// Sender's commit index.
        commit: u64,
    },
    /// The state machine as of slot `upto` (all slots below applied), for a
    /// node too far behind for retransmission.
    Snapshot {
        /// Slots below this are in the snapshot.
        upto: u64,
        /// The encoded state machine.
        state: Vec<u8>,
    },
    /// A follower's answer to a `commit` heartbeat: it heard the leader of
    /// `ballot`. A leader that stops getting these from a quorum steps down
    /// (check-quorum).
    CommitAck {
        /// The heartbeat's ballot.
        ballot: Ballot,
    },
    /// The first message on every link a node opens to a peer: it names the
    /// connection as a consensus peer's, which the receiver never closes to
    /// make room for clients at its connection limit (an idle link between two
    /// followers would otherwise look like an idle client). No fields; it
    /// changes no Paxos state.
    Hello,
}

fn put_ballot(out: &mut Vec<u8>, b: Ballot) {
    put_u64(out, b.counter);
    put_u64(out, b.node);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

/// Bytes [`encode_value`] writes for `v`.
pub fn value_len(v: &Value) -> usize {
    4 + v.iter().map(|c| 28 + c.op.len()).sum::<usize>()
}

/// Encodes a batch: `count u32`, then per command `client u64, seq u64,
/// stamp_ms u64, len u32, op`.
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    put_u32(out, v.len() as u32);
    for c in v {
        put_u64(out, c.client);
        put_u64(out, c.seq);
        put_u64(out, c.stamp_ms);
        put_bytes(out, &c.op);
    }
}

impl Reader<'_> {
    fn ballot(&mut self) -> Result<Ballot, DecodeError> {
        Ok(Ballot {
            counter: self.u64()?,
            node: self.u64()?,
        })
    }

    fn blob(&mut self, max: u32) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()?;
        if len > max {
            return Err(DecodeError::EntryTooLarge { len, max });
        }
        Ok(self.bytes(len as usize)?.to_vec())
    }

    /// Decodes a batch (see [`encode_value`]).
    pub fn value(&mut self) -> Result<Value, DecodeError> {
        let n = self.u32()?;
        if n > MAX_BATCH_COMMANDS {
            return Err(DecodeError::TooManyOps {
                count: n,
                max: MAX_BATCH_COMMANDS,
            });
        }
        // Each command takes at least 28 bytes: never allocate past the input.
        let mut v = Vec::with_capacity((n as usize).min(self.remaining() / 28));
        for _ in 0..n {
            v.push(Command {
                client: self.u64()?,
                seq: self.u64()?,
                stamp_ms: self.u64()?,
                op: self.blob(MAX_OP_LEN)?,
            });
        }
        Ok(v)
    }
}

const T_PREVOTE: u8 = 1;
const T_PREVOTE_REPLY: u8 = 2;
const T_PREPARE: u8 = 3;
const T_PROMISE: u8 = 4;
const T_ACCEPT: u8 = 5;
const T_ACCEPTED: u8 = 6;
const T_NACK: u8 = 7;
const T_COMMIT: u8 = 8;
const T_CATCHUP: u8 = 9;
const T_CHOSEN: u8 = 10;
const T_SNAPSHOT: u8 = 11;
const T_COMMIT_ACK: u8 = 12;
const T_HELLO: u8 = 13;

/// Encodes a message: a type byte, then its fields in declaration order
/// (ballots as `counter u64, node u64`; lists as `count u32` then items).
pub fn encode_msg(out: &mut Vec<u8>, m: &Msg) {
    match m {
        Msg::PreVote { ballot } => {
            out.push(T_PREVOTE);
            put_ballot(out, *ballot);
        }
        Msg::PreVoteReply { ballot, granted } => {
            out.push(T_PREVOTE_REPLY);
            put_ballot(out, *ballot);
            out.push(*granted as u8);
        }
        Msg::Prepare { ballot, from } => {
            out.push(T_PREPARE);
            put_ballot(out, *ballot);
            put_u64(out, *from);
        }
        Msg::Promise {
            ballot,
            accepted,
            snapshot,
            upto,
        } => {
            out.push(T_PROMISE);
            put_ballot(out, *ballot);
            put_u32(out, accepted.len() as u32);
            for (slot, b, v) in accepted {
                put_u64(out, *slot);
                put_ballot(out, *b);
                encode_value(out, v);
            }
            put_u64(out, *snapshot);
            put_u64(out, *upto);
        }
        Msg::Accept {
            ballot,
            slot,
            value,
            commit,
        } => {
            out.push(T_ACCEPT);
            put_ballot(out, *ballot);
            put_u64(out, *slot);
            encode_value(out, value);
            put_u64(out, *commit);
        }
        Msg::Accepted { ballot, slot } => {
            out.push(T_ACCEPTED);
            put_ballot(out, *ballot);
            put_u64(out, *slot);
        }
        Msg::Nack { ballot, promised } => {
            out.push(T_NACK);
            put_ballot(out, *ballot);
            put_ballot(out, *promised);
        }
        Msg::Commit { ballot, commit } => {
            out.push(T_COMMIT);
            put_ballot(out, *ballot);
            put_u64(out, *commit);
        }
        Msg::CatchUp { from } => {
            out.push(T_CATCHUP);
            put_u64(out, *from);
        }
        Msg::Chosen { entries, commit } => {
            out.push(T_CHOSEN);
            put_u32(out, entries.len() as u32);
            for (slot, v) in entries {
                put_u64(out, *slot);
                encode_value(out, v);
            }
            put_u64(out, *commit);
        }
        Msg::Snapshot { upto, state } => {
            out.push(T_SNAPSHOT);
            put_u64(out, *upto);
            put_bytes(out, state);
        }
        Msg::CommitAck { ballot } => {
            out.push(T_COMMIT_ACK);
            put_ballot(out, *ballot);
        }
        Msg::Hello => out.push(T_HELLO),
    }
}

/// Decodes a message; the whole body must be consumed.
pub fn decode_msg(body: &[u8]) -> Result<Msg, DecodeError> {
    let mut r = Reader::new(body);
    let t = r.u8()?;
    let m = match t {
        T_PREVOTE => Msg::PreVote {
            ballot: r.ballot()?,
        },
        T_PREVOTE_REPLY => {
            let ballot = r.ballot()?;
            let offset = r.offset();
            let granted = match r.u8()? {
                0 => false,
                1 => true,
                value => return Err(DecodeError::BadBool { offset, value }),
            };
            Msg::PreVoteReply { ballot, granted }
        }
        T_PREPARE => Msg::Prepare {
            ballot: r.ballot()?,
            from: r.u64()?,
        },
        T_PROMISE => {
            let ballot = r.ballot()?;
            let n = r.count()?;
            let mut accepted = Vec::with_capacity((n as usize).min(r.remaining() / 28));
            for _ in 0..n {
                accepted.push((r.u64()?, r.ballot()?, r.value()?));
            }
            Msg::Promise {
                ballot,
                accepted,
                snapshot: r.u64()?,
                upto: r.u64()?,
            }
        }
        T_ACCEPT => Msg::Accept {
            ballot: r.ballot()?,
            slot: r.u64()?,
            value: r.value()?,
            commit: r.u64()?,
        },
        T_ACCEPTED => Msg::Accepted {
            ballot: r.ballot()?,
            slot: r.u64()?,
        },
        T_NACK => Msg::Nack {
            ballot: r.ballot()?,
            promised: r.ballot()?,
        },
        T_COMMIT => Msg::Commit {
            ballot: r.ballot()?,
            commit: r.u64()?,
        },
        T_CATCHUP => Msg::CatchUp { from: r.u64()? },
        T_CHOSEN => {
            let n = r.count()?;
            let mut entries = Vec::with_capacity((n as usize).min(r.remaining() / 12));
            for _ in 0..n {
                entries.push((r.u64()?, r.value()?));
            }
            Msg::Chosen {
                entries,
                commit: r.u64()?,
            }
        }
        T_SNAPSHOT => Msg::Snapshot {
            upto: r.u64()?,
            state: r.blob(crate::MAX_BODY_LEN)?,
        },
        T_COMMIT_ACK => Msg::CommitAck {
            ballot: r.ballot()?,
        },
        T_HELLO => Msg::Hello,
        other => return Err(DecodeError::UnknownOpcode(other)),
    };
    r.finish()?;
    Ok(m)
}

/// Reply status of a submit: applied; the result follows.
pub const SUBMIT_OK: u8 = 0;
/// Reply status of a submit: this node does not lead; a hint follows.
pub const SUBMIT_NOT_LEADER: u8 = 1;
/// Reply status of a submit: not committed in time (leadership may have
/// changed); retrying with the same client id and sequence number is safe.
pub const SUBMIT_TIMEOUT: u8 = 2;

/// Encodes a submit request body: `client u64, seq u64, len u32, op`.
pub fn encode_submit(out: &mut Vec<u8>, client: u64, seq: u64, op: &[u8]) {
    put_u64(out, client);
    put_u64(out, seq);
    put_bytes(out, op);
}

/// Decodes a submit request body into `(client, seq, op)`.
pub fn decode_submit(body: &[u8]) -> Result<(u64, u64, &[u8]), DecodeError> {
    let mut r = Reader::new(body);
    let (client, seq) = (r.u64()?, r.u64()?);
    let len = r.u32()?;
    if len > MAX_OP_LEN {
        return Err(DecodeError::EntryTooLarge {
            len,
            max: MAX_OP_LEN,
        });
    }
    let op = r.bytes(len as usize)?;
    r.finish()?;
    Ok((client, seq, op))
}

/// The reply to a submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitReply {
    /// Applied; the state machine's result.
    Applied(Vec<u8>),
    /// Ask another node: the leader's id and address if known (0 and "" if not).
    NotLeader {
        /// Leader id, 0 if unknown.
        leader: NodeId,
        /// Leader address, empty if unknown.
        addr: String,
    },
    /// Not committed in time; retry.
    Timeout,
}

/// Encodes a submit reply: `status u8`, then for `ok` `len u32, result`; for
/// `not-leader` `leader u64, len u32, addr`; nothing for `timeout`.
pub fn encode_submit_reply(out: &mut Vec<u8>, r: &SubmitReply) {
    match r {
        SubmitReply::Applied(res) => {
            out.push(SUBMIT_OK);
            put_bytes(out, res);
        }
        SubmitReply::NotLeader { leader, addr } => {
            out.push(SUBMIT_NOT_LEADER);
            put_u64(out, *leader);
            put_bytes(out, addr.as_bytes());
        }
        SubmitReply::Timeout => out.push(SUBMIT_TIMEOUT),
    }
}

/// Decodes a submit reply.
pub fn decode_submit_reply(body: &[u8]) -> Result<SubmitReply, DecodeError> {
    let mut r = Reader::new(body);
    let offset = r.offset();
    let reply = match r.u8()? {
        SUBMIT_OK => SubmitReply::Applied(r.blob(crate::MAX_BODY_LEN)?),
        SUBMIT_NOT_LEADER => {
            let leader = r.u64()?;
            let addr = String::from_utf8_lossy(&r.blob(1024)?).into_owned();
            SubmitReply::NotLeader { leader, addr }
        }
        SUBMIT_TIMEOUT => SubmitReply::Timeout,
        value => return Err(DecodeError::BadStatus { offset, value }),
    };
    r.finish()?;
    Ok(reply)
}

/// A consensus node's state, as `node-status` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// The leader it believes in (0: none).
    pub leader: NodeId,
    /// Whether it leads.
    pub leading: bool,
    /// Highest ballot promised.
    pub promised: Ballot,
    /// Slots below are chosen.
    pub commit: u64,
    /// Slots below are applied.
    pub applied: u64,
    /// Slots below are in the snapshot.
    pub snapshot: u64,
    /// Bytes in the journal's current file.
    pub journal_bytes: u64,
}

/// Size of a node-status reply body.
pub const NODE_STATUS_LEN: usize = 8 + 8 + 1 + 16 + 8 * 4;

/// Encodes a node-status reply (fields in struct order; `leading` as a u8).
pub fn encode_node_status(out: &mut Vec<u8>, s: &NodeStatus) {
    put_u64(out, s.id);
    put_u64(out, s.leader);
    out.push(s.leading as u8);
    put_ballot(out, s.promised);
    put_u64(out, s.commit);
    put_u64(out, s.applied);
    put_u64(out, s.snapshot);
    put_u64(out, s.journal_bytes);
}

/// Decodes a node-status reply.
pub fn decode_node_status(body: &[u8]) -> Result<NodeStatus, DecodeError> {
    let mut r = Reader::new(body);
    let id = r.u64()?;
    let leader = r.u64()?;
    let offset = r.offset();
    let leading = match r.u8()? {
        0 => false,
        1 => true,
        value => return Err(DecodeError::BadBool { offset, value }),
    };
    let s = NodeStatus {
        id,
        leader,
        leading,
        promised: r.ballot()?,
        commit: r.u64()?,
        applied: r.u64()?,
        snapshot: r.u64()?,
        journal_bytes: r.u64()?,
    };
    r.finish()?;
    Ok(s)
}

/// Encodes a peer message body: `from u64`, then the message.
pub fn encode_peer(out: &mut Vec<u8>, from: NodeId, m: &Msg) {
    put_u64(out, from);
    encode_msg(out, m);
}

/// Decodes a peer message body.
pub fn decode_peer(body: &[u8]) -> Result<(NodeId, Msg), DecodeError> {
    let mut r = Reader::new(body);
    let from = r.u64()?;
    Ok((from, decode_msg(&body[r.offset()..])?))
}
