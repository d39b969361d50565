//! Workloads through the consensus group: committed commands, and lock
//! acquire+release pairs.

use crate::log_load::consensus_error_kind;
use crate::node_load::frame_of;
use crate::run::{Ctx, Slot};
use std::io::Write;
use std::time::{Duration, Instant};
use trex_consensus::client::ConsensusClient;
use trex_consensus::lock::LockClient;
use trex_consensus::sm::Op;
use trex_net::conn::read_frame;
use trex_net::tls::ClientStream;
use trex_wire::consensus::{decode_submit_reply, encode_submit, SubmitReply};
use trex_wire::Opcode;

/// Where the consensus group is.
#[derive(Clone, Debug)]
pub struct GroupLoad {
    /// Consensus endpoints (resolved).
    pub endpoints: String,
    /// The cluster id frames carry.
    pub cluster_id: u32,
    /// Lock clients take a new name for every pair (`--distinct-names`).
    pub distinct_names: bool,
    /// With `distinct_names`: each operation acquires a new name and keeps
    /// it for an hour (`--keep-held`).
    pub keep_held: bool,
}

/// How long one command may take, redirects and retries included, before it
/// counts as failed.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);

/// One consensus client: reads a lock that does not exist, over and over (a
/// ~100-byte command through the log, like a write, that leaves nothing behind
/// in the cluster: no member, no lock), following not-leader hints. It keeps
/// one connection to the leader.
pub fn consensus_client(a: &GroupLoad, i: usize, ctx: &mut Ctx) -> Result<(), String> {
    let eps: Vec<String> = a
        .endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let client = 0x7265_6e63_0000_0000 ^ (u64::from(std::process::id()) << 16) ^ i as u64;
    let op = Op::GetLock {
        name: format!("trex-bench-{:0>84}", i),
    }
    .encode();
    let mut target = eps[i % eps.len()].clone();
    let mut seq = 0u64;
    let mut conn: Option<ClientStream> = None;
    ctx.start();
    while let Some(slot) = ctx.next() {
        seq += 1;
        let f = frame_of(Opcode::Submit, seq, 0, a.cluster_id, |b| {
            encode_submit(b, client, seq, &op)
        });
        let deadline = Instant::now() + COMMAND_DEADLINE;
        // The same command (same sequence number) until it is applied: the
        // group applies it once.
        let outcome = loop {
            if Instant::now() >= deadline {
                break Err((
                    "no-leader",
                    format!(
                        "no leader applied the command within {}; last tried {target}",
                        trex_net::util::duration_text(COMMAND_DEADLINE)
                    ),
                ));
            }
            if ctx.stopping() && Instant::now() >= slot.due + Duration::from_secs(2) {
                break Err((
                    "stopped",
                    "the run stopped while the command was being redirected".to_string(),
                ));
            }
            let s = match conn.as_mut() {
                Some(s) => s,
                // TLS when the process has certificates (TREX_TLS_DIR).
                None => match trex_net::conn::connect(&target, Duration::from_secs(5)) {
                    Ok((s, _)) => conn.insert(s),
                    Err(_) => {
                        let at = eps.iter().position(|e| *e == target).unwrap_or(0);
                        target = eps[(at + 1) % eps.len()].clone();
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let reply = s
                .write_all(&f)
                .map_err(|e| e.to_string())
                .and_then(|_| read_frame(s).map_err(|e| e.to_string()))
                .and_then(|(_, b)| decode_submit_reply(&b).map_err(|e| e.to_string()));
            match reply {
                Ok(SubmitReply::Applied(_)) => break Ok(()),
                Ok(SubmitReply::NotLeader { addr, .. }) => {
                    if !addr.is_empty() {
                        target = addr;
                    } else {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    conn = None;
                }
                Ok(SubmitReply::Timeout) => {}
                Err(_) => conn = None,
            }
        };
        match outcome {
            Ok(()) => ctx.done(slot, 1),
            Err((kind, why)) => ctx.failed(slot, 0, kind, &why),
        }
    }
    Ok(())
}

/// One lock client: acquires its own lock and releases it, over and over (each
/// pair two committed commands). A lock it could not release is released
/// before the next acquisition and before the client ends, so a run leaves no
/// lock held.
pub fn lock_client(a: &GroupLoad, i: usize, ctx: &mut Ctx) -> Result<(), String> {
    let mut c = LockClient::new(
        ConsensusClient::new(&a.endpoints, Duration::from_secs(2))
            .map_err(|e| e.to_string())?
            .with_cluster_id(a.cluster_id),
    );
    let mut name = lock_name(i);
    let mut pairs = 0u64;
    // A lease taken whose release failed: (token).
    let mut held: Option<u64> = None;
    ctx.start();
    while let Some(slot) = ctx.next() {
        if let Some(token) = held {
            match c.release(&name, token) {
                Ok(()) => held = None,
                Err(e) => {
                    ctx.failed(slot, 0, &consensus_error_kind(&e), &e.to_string());
                    continue;
                }
            }
        }
        if a.distinct_names {
            pairs += 1;
            name = format!("{}-{pairs}", lock_name(i));
        }
        if a.keep_held {
            match c.acquire(&name, "trex-bench", Duration::from_secs(3600)) {
                Ok(_) => ctx.done(slot, 1),
                Err(e) => ctx.failed(slot, 0, &consensus_error_kind(&e), &e.to_string()),
            }
            continue;
        }
        pair(&mut c, &name, &mut held, slot, ctx);
    }
    if let Some(token) = held {
        c.release(&name, token).map_err(|e| {
            format!("could not release lock {name} at the end ({e}); it stays held until its 30 s lease runs out")
        })?;
    }
    Ok(())
}

/// The lock client `i` of this process takes.
pub fn lock_name(i: usize) -> String {
    format!("bench-{}-{i}", std::process::id())
}

fn pair(c: &mut LockClient, name: &str, held: &mut Option<u64>, slot: Slot, ctx: &mut Ctx) {
    let lease = match c.acquire(name, "trex-bench", Duration::from_secs(30)) {
        Ok(l) => l,
        Err(e) => return ctx.failed(slot, 0, &consensus_error_kind(&e), &e.to_string()),
    };
    match c.release(name, lease.token) {
        Ok(()) => ctx.done(slot, 1),
        Err(e) => {
            *held = Some(lease.token);
            ctx.failed(slot, 0, &consensus_error_kind(&e), &e.to_string());
        }
    }
}
