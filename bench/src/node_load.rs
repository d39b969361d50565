//! Workloads that talk to one node over raw frames, pipelined the way
//! `redis-benchmark -P` does: tokens from a sequencer, writes to a storage unit.

use crate::run::{Ctx, Slot};
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use trex_consensus::client::{ConsensusClient, Submit};
use trex_net::conn::read_frame_into;
use trex_net::tls::ClientStream;
use trex_wire::{self as wire, begin_frame, finish_frame, Header, Opcode, Status, WriteOp};

/// A request frame.
pub fn frame_of(
    opcode: Opcode,
    id: u64,
    epoch: u64,
    cluster_id: u32,
    body: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    body(&mut f);
    finish_frame(
        &mut f,
        s,
        Header {
            opcode: opcode as u8,
            request_id: id,
            epoch,
            cluster_id,
            ..Header::default()
        },
    );
    f
}

/// A connection with `TCP_NODELAY`, `timeout` for connecting, reading and
/// writing, TLS when the process has certificates
/// ([`trex_net::conn::connect`]), and a buffered reader (write through
/// `get_mut`).
pub fn connect(
    addr: &str,
    what: &str,
    timeout: Duration,
) -> Result<BufReader<ClientStream>, String> {
    let (stream, _) = trex_net::conn::connect(addr, timeout)
        .map_err(|e| format!("cannot connect to {what} at {addr}: {e}; is it running?"))?;
    Ok(BufReader::with_capacity(256 * 1024, stream))
}

/// The active sequencer's address, found through the consensus group: the
/// layout names it, the members table says where it listens.
pub fn find_sequencer(endpoints: &str, cluster_id: u32) -> Result<String, String> {
    let mut c = ConsensusClient::new(endpoints, Duration::from_secs(2))
        .map_err(|e| e.to_string())?
        .with_cluster_id(cluster_id);
    let (_, layout) = c.layout().map_err(|e| {
        format!("cannot read the layout through {endpoints}: {e}; or pass --sequencer HOST:PORT")
    })?;
    let id = layout.map_or(0, |p| p.sequencer);
    if id == 0 {
        return Err("the layout names no active sequencer yet; is a layout installed (`trex layout init`, `trex up`)? or pass --sequencer HOST:PORT".to_string());
    }
    let members = c.members().map_err(|e| {
        format!("cannot read the members through {endpoints}: {e}; or pass --sequencer HOST:PORT")
    })?;
    members.get(&id).map(|m| m.addr.clone()).ok_or_else(|| {
        format!("the layout names sequencer {id}, which is not registered (`trex members`); pass --sequencer HOST:PORT")
    })
}

/// What each token client sends.
#[derive(Clone, Debug)]
pub struct TokenLoad {
    /// The sequencer, HOST:PORT.
    pub sequencer: String,
    /// The cluster id frames carry.
    pub cluster_id: u32,
    /// Requests sent together in one write (a window).
    pub depth: usize,
    /// Addresses per request.
    pub batch: u32,
}

/// One pipelined token client, in the manner of `redis-benchmark -P`: writes
/// up to `depth` requests of `batch` addresses in one go, reads the replies,
/// repeats (open loop: `depth` is 1). Latency is per request.
pub fn token_client(a: &TokenLoad, _i: usize, ctx: &mut Ctx) -> Result<(), String> {
    let mut conn = connect(&a.sequencer, "the sequencer", Duration::from_secs(10))?;
    // The window is the same bytes every time (ids 1..=depth; replies are
    // matched by count): built once, as redis-benchmark does.
    let mut burst = Vec::new();
    for id in 1..=a.depth as u64 {
        burst.extend_from_slice(&frame_of(Opcode::Token, id, 0, a.cluster_id, |b| {
            wire::encode_token_request(b, a.batch)
        }));
    }
    let frame_len = burst.len() / a.depth;
    let mut body = Vec::with_capacity(64);
    let mut slots: Vec<Slot> = Vec::with_capacity(a.depth);
    ctx.start();
    loop {
        slots.clear();
        while slots.len() < a.depth {
            match ctx.next() {
                Some(s) => slots.push(s),
                None => break,
            }
        }
        if slots.is_empty() {
            return Ok(());
        }
        let lost = |ctx: &mut Ctx, slots: &[Slot], why: &str| {
            for s in slots {
                ctx.failed(*s, 0, "connection", why);
            }
        };
        if let Err(e) = conn.get_mut().write_all(&burst[..slots.len() * frame_len]) {
            let why = format!("send to {} failed: {e}", a.sequencer);
            lost(ctx, &slots, &why);
            return Err(why);
        }
        for (k, slot) in slots.iter().enumerate() {
            if let Err(e) = read_frame_into(&mut conn, &mut body) {
                let why = format!("receive from {} failed: {e}", a.sequencer);
                lost(ctx, &slots[k..], &why);
                return Err(why);
            }
            match wire::decode_token_reply(&body) {
                Ok(wire::TokenReply::Granted { .. }) => ctx.done(*slot, u64::from(a.batch)),
                Ok(wire::TokenReply::NotSequencer { hint }) => {
                    let why = format!(
                        "{} is not the active sequencer (hint: {hint}); run again with --sequencer at the active one, or without it to find it through the consensus group",
                        a.sequencer
                    );
                    lost(ctx, &slots[k..], &why);
                    return Err(why);
                }
                Err(e) => {
                    let why = format!("bad token reply from {}: {e}", a.sequencer);
                    lost(ctx, &slots[k..], &why);
                    return Err(why);
                }
            }
        }
    }
}

/// What each unit-write client sends.
#[derive(Clone, Debug)]
pub struct UnitLoad {
    /// The storage unit, HOST:PORT.
    pub node: String,
    /// The cluster id frames carry.
    pub cluster_id: u32,
    /// The unit's sealed epoch (writes carry it).
    pub epoch: u64,
    /// Entry size in bytes.
    pub size: usize,
    /// Requests in flight per connection (open loop: 1).
    pub depth: usize,
    /// Entries per write request.
    pub batch: usize,
    /// The next address to write, shared by the clients (starts at the unit's
    /// tail).
    pub next_addr: Arc<AtomicU64>,
}

/// One unit-write client: keeps `depth` write requests of `batch` entries in
/// flight on one connection; latency is per request.
pub fn write_client(a: &UnitLoad, i: usize, ctx: &mut Ctx) -> Result<(), String> {
    let writer = i as u64 + 1;
    let mut conn = connect(&a.node, "the storage unit", Duration::from_secs(30))?;
    let payload: Vec<u8> = (0..a.size).map(|k| (k as u64 ^ writer) as u8).collect();
    let mut sent: HashMap<u64, Slot> = HashMap::with_capacity(a.depth * 2);
    let mut frame = Vec::new();
    let mut next_id = 1u64;
    let mut seq = 0u64;
    let mut body = Vec::new();
    let batch = a.batch as u64;
    ctx.start();
    // Sends the next request if the run has one; false when it is over.
    let mut send_one = |out: &mut BufReader<ClientStream>,
                        sent: &mut HashMap<u64, Slot>,
                        ctx: &mut Ctx|
     -> Result<bool, String> {
        let Some(slot) = ctx.next() else {
            return Ok(false);
        };
        let first = a.next_addr.fetch_add(batch, Ordering::Relaxed);
        let ops: Vec<WriteOp<'_>> = (0..batch)
            .map(|k| {
                seq += 1;
                WriteOp {
                    addr: first + k,
                    writer,
                    seq,
                    data: &payload,
                }
            })
            .collect();
        frame.clear();
        let start = begin_frame(&mut frame);
        wire::encode_write_request(&mut frame, &ops);
        let h = Header {
            opcode: Opcode::Write as u8,
            request_id: next_id,
            epoch: a.epoch,
            cluster_id: a.cluster_id,
            ..Header::default()
        };
        finish_frame(&mut frame, start, h);
        sent.insert(next_id, slot);
        next_id += 1;
        if let Err(e) = out.get_mut().write_all(&frame) {
            let why = format!("send to {} failed: {e}", a.node);
            ctx.failed(slot, 0, "connection", &why);
            return Err(why);
        }
        Ok(true)
    };
    for _ in 0..a.depth {
        if !send_one(&mut conn, &mut sent, ctx)? {
            break;
        }
    }
    while !sent.is_empty() {
        let h = match read_frame_into(&mut conn, &mut body) {
            Ok(h) => h,
            Err(e) => {
                let why = format!("receive from {} failed: {e}", a.node);
                for (_, slot) in sent.drain() {
                    ctx.failed(slot, 0, "connection", &why);
                }
                return Err(why);
            }
        };
        let Some(slot) = sent.remove(&h.request_id) else {
            return Err(format!(
                "{} answered request {}, which this client never sent: is it a storage unit?",
                a.node, h.request_id
            ));
        };
        if h.is_error() {
            match wire::decode_error(&body) {
                Ok(e) => {
                    let kind = wire::ErrorCode::from_u16(e.code).map_or("error", |c| c.name());
                    ctx.failed(slot, 0, kind, &e.message);
                }
                Err(e) => ctx.failed(slot, 0, "protocol", &e.to_string()),
            }
        } else {
            match wire::decode_status_list(&body) {
                Ok(st) => match st.iter().find(|s| *s != Status::Ok) {
                    None => ctx.done(slot, batch),
                    Some(bad) => {
                        let ok = st.iter().filter(|s| *s == Status::Ok).count() as u64;
                        ctx.failed(
                            slot,
                            ok,
                            bad.name(),
                            &format!("the unit answered '{bad}' to a write"),
                        );
                    }
                },
                Err(e) => ctx.failed(slot, 0, "protocol", &e.to_string()),
            }
        }
        send_one(&mut conn, &mut sent, ctx)?;
    }
    Ok(())
}
