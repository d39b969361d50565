//! Shared-log workloads through the real client library (`trex_log`):
//! appends and reads.

use crate::run::{Ctx, Slot};
use std::collections::HashMap;
use trex_consensus::ConsensusError;
use trex_log::{Log, LogError};

/// Where the log is and what each append client sends.
#[derive(Clone, Debug)]
pub struct AppendLoad {
    /// Consensus endpoints (resolved).
    pub endpoints: String,
    /// The cluster id frames carry.
    pub cluster_id: u32,
    /// Entry size in bytes.
    pub size: usize,
    /// Entries per request (one batch).
    pub batch: usize,
    /// Batches in flight per client (1: blocking calls).
    pub window: usize,
}

/// The kind of a log client error, for the summary's errors by kind.
pub fn log_error_kind(e: &LogError) -> String {
    match e {
        LogError::Consensus(c) => consensus_error_kind(c),
        LogError::Failed(_) => "failed".to_string(),
        LogError::Invalid(_) => "invalid".to_string(),
    }
}

/// The kind of a consensus client error, for the summary's errors by kind.
pub fn consensus_error_kind(e: &ConsensusError) -> String {
    match e {
        ConsensusError::Refused(r) => format!("refused-{}", r.code.name()),
        ConsensusError::Unavailable { .. } => "consensus-unavailable".to_string(),
        ConsensusError::Unreachable { .. } => "unreachable".to_string(),
        ConsensusError::Protocol(_) => "protocol".to_string(),
        ConsensusError::Config(_) => "config".to_string(),
        ConsensusError::NotAuthorized(_) => "not-authorized".to_string(),
    }
}

/// A log client of the cluster at `endpoints`; the error says what to check.
pub(crate) fn connect(endpoints: &str, cluster_id: u32) -> Result<Log, String> {
    Log::connect_to(endpoints, cluster_id).map_err(|e| {
        format!("cannot reach the log through {endpoints}: {e}; is the cluster up (`trex status`)?")
    })
}

/// A request in flight: its slot, entries still to complete, the first failure.
struct Batch {
    slot: Slot,
    left: usize,
    ok: u64,
    failure: Option<LogError>,
}

/// One append client: each request is a batch of `batch` entries submitted
/// through the client's pipeline, `window` batches in flight (1: each request
/// waits for its batch, as a blocking `append_batch` does). A request's latency
/// ends with the completion of its batch's last entry.
pub fn append_client(a: &AppendLoad, i: usize, ctx: &mut Ctx) -> Result<(), String> {
    let mut log = connect(&a.endpoints, a.cluster_id)?;
    let entry: Vec<u8> = (0..a.size).map(|k| (k ^ i) as u8).collect();
    let b = a.batch as u64;
    ctx.start();
    let mut p = log.pipeline(a.batch, a.window);
    let mut open: HashMap<u64, Batch> = HashMap::new();
    let finish = |p: &mut trex_log::Pipeline<'_>, open: &mut HashMap<u64, Batch>, ctx: &mut Ctx| {
        while let Some((t, r)) = p.poll() {
            let Some(batch) = open.get_mut(&(t / b)) else {
                continue;
            };
            batch.left -= 1;
            match r {
                Ok(_) => batch.ok += 1,
                Err(e) => {
                    batch.failure.get_or_insert(e);
                }
            }
            if batch.left == 0 {
                let batch = open.remove(&(t / b)).expect("present: found above");
                match batch.failure {
                    None => ctx.done(batch.slot, b),
                    Some(e) => {
                        ctx.failed(batch.slot, batch.ok, &log_error_kind(&e), &e.to_string())
                    }
                }
            }
        }
    };
    while let Some(slot) = ctx.next() {
        for k in 0..b {
            let t = p
                .submit(&entry)
                .map_err(|e| format!("the log refused an entry of {} bytes: {e}", a.size))?;
            if k == 0 {
                open.insert(
                    t / b,
                    Batch {
                        slot,
                        left: a.batch,
                        ok: 0,
                        failure: None,
                    },
                );
            }
        }
        finish(&mut p, &mut open, ctx);
    }
    p.flush()
        .map_err(|e| format!("could not finish the appends in flight: {e}"))?;
    finish(&mut p, &mut open, ctx);
    Ok(())
}

/// Where the log is and what each read client asks for.
#[derive(Clone, Debug)]
pub struct ReadLoad {
    /// Consensus endpoints (resolved).
    pub endpoints: String,
    /// The cluster id frames carry.
    pub cluster_id: u32,
    /// Addresses per request (one range read).
    pub depth: u64,
}

/// One read client: each request reads a range of `depth` addresses below the
/// tail, spread over the log.
pub fn read_client(a: &ReadLoad, i: usize, ctx: &mut Ctx) -> Result<(), String> {
    let mut log = connect(&a.endpoints, a.cluster_id)?;
    let tail = log
        .check()
        .map_err(|e| format!("cannot find the log's tail: {e}"))?;
    if tail < a.depth {
        return Err(format!(
            "the log holds {tail} entries, fewer than --depth {}; append some first (trex-bench append)",
            a.depth
        ));
    }
    let span = tail - a.depth + 1;
    let mut at = (i as u64 * 7919) % span;
    ctx.start();
    while let Some(slot) = ctx.next() {
        match log.read_range(at, a.depth) {
            Ok(_) => ctx.done(slot, a.depth),
            Err(e) => ctx.failed(slot, 0, &log_error_kind(&e), &e.to_string()),
        }
        at = (at + a.depth * 13) % span;
    }
    Ok(())
}
