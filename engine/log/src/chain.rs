//! Writing entries down their chains: the one implementation behind both the
//! blocking [`crate::Log::append_batch`] and the [`crate::Pipeline`].
//!
//! A [`ChainJob`] is one chain's share of a batch. A write goes down the chain
//! in rounds, head first (CORFU: "an entry is complete once the tail of its
//! chain holds it", and a value is only ever copied down the chain in order):
//! round `r` sends the entries still going down to the chain's `r`-th unit
//! ([`ChainJob::send_round`]) and takes the statuses back
//! ([`ChainJob::on_reply`]). The blocking path runs the rounds of every chain of
//! one batch together ([`write_chains`]); the pipeline interleaves the rounds of
//! many batches. Either way the same rules decide what a status means.

use crate::env::Env;
use trex_net::unit_client::{statuses, ClientError};
use trex_wire::{ErrorCode, Header, Opcode, Status, WriteOp};

/// A unit's id in the layout, and its address (or why it has none).
pub(crate) type ChainUnit = (u64, Result<String, String>);

/// What a chain write needs of its batch: each entry's address, the writer's
/// sequence number and the bytes, by the entry's index in the batch.
pub(crate) struct BatchView<'a> {
    /// This client's writer id.
    pub writer: u64,
    /// Per entry: its address (every entry of a job has one).
    pub addr_of: &'a [Option<u64>],
    /// Per entry: its writer sequence number.
    pub seqs: &'a [u64],
    /// Per entry: its bytes.
    pub entries: &'a [&'a [u8]],
}

/// One chain's share of an append: its units (head first, with their
/// addresses) and the batch's entries that map to it.
pub(crate) struct ChainJob {
    pub units: Vec<ChainUnit>,
    /// Indices into the batch.
    pub items: Vec<usize>,
    /// Per item: lost its address to another writer or a filler (at the head).
    pub lost: Vec<bool>,
    /// Set once the chain stops early (sealed, failed, refused).
    pub outcome: Option<ChainOutcome>,
}

/// A write sent for one round of a chain, to be answered by [`ChainJob::on_reply`].
pub(crate) struct SentRound {
    /// The unit's address.
    pub addr: String,
    /// The request id to wait for.
    pub id: u64,
    /// The items it carries (indices into the job's `items`).
    active: Vec<usize>,
}

/// How writing one chain went.
pub(crate) enum ChainOutcome {
    /// Every unit answered; per item, whether its address was lost to another writer.
    Done(Vec<bool>),
    /// A unit is sealed at a newer epoch (this one): refresh and retry at the
    /// same addresses.
    Sealed(u64),
    /// A unit failed (connecting or mid-call).
    Failed(u64, String),
    /// A unit answers but cannot store (`full`, or `io`: poisoned by a failed
    /// sync): it is a failed replica for the chain, to be taken out although
    /// it still answers.
    Unfit(u64, Status),
    /// A unit refused for a reason no retry fixes.
    Refused(String),
}

/// What a unit's status for one entry of a chain write means.
enum Answer {
    /// Stored (or already there, or trimmed after the head took it).
    Stored,
    /// Another writer or a filler took the address at the head: get another.
    Lost,
    /// The unit cannot store anything (full, poisoned): take it out.
    Unfit,
    /// Anything else: no retry fixes it.
    Refused,
}

/// Only the head decides who owns an address. Further down the chain, a unit
/// holding something else after the head took this entry is an inconsistency
/// (giving the address up would put the entry at two addresses), and an
/// address trimmed there meanwhile is done.
fn chain_answer(round: usize, s: Status) -> Answer {
    match (round, s) {
        (_, Status::Ok) => Answer::Stored,
        (0, Status::Written | Status::Junk | Status::Trimmed) => Answer::Lost,
        (_, Status::Trimmed) => Answer::Stored,
        (_, Status::Full | Status::Io) => Answer::Unfit,
        _ => Answer::Refused,
    }
}

/// The epoch a unit is sealed at, if that is why it refused.
pub(crate) fn sealed(e: &ClientError) -> Option<u64> {
    match e {
        ClientError::Server { epoch, .. } if e.code() == Some(ErrorCode::SealedEpoch) => {
            Some(*epoch)
        }
        _ => None,
    }
}

fn failed_call(unit: u64, e: ClientError) -> ChainOutcome {
    match sealed(&e) {
        Some(at) => ChainOutcome::Sealed(at),
        None => ChainOutcome::Failed(unit, e.to_string()),
    }
}

impl ChainJob {
    /// A job writing `items` down `units`.
    pub fn new(units: Vec<ChainUnit>, items: Vec<usize>) -> ChainJob {
        debug_assert!(!units.is_empty(), "a chain has a head");
        let lost = vec![false; items.len()];
        ChainJob {
            units,
            items,
            lost,
            outcome: None,
        }
    }

    /// How many rounds the chain takes (its length).
    pub fn depth(&self) -> usize {
        self.units.len()
    }

    /// Whether every round went through with no address lost.
    pub fn all_stored(&self) -> bool {
        self.outcome.is_none() && self.lost.iter().all(|l| !l)
    }

    /// Sends round `round`: the items still going down the chain, to its
    /// `round`-th unit, at `epoch`. `None` if there is nothing to send (the
    /// chain is shorter, every item was lost, or the job already stopped — in
    /// which case `outcome` says why).
    pub fn send_round(
        &mut self,
        env: &mut dyn Env,
        epoch: u64,
        round: usize,
        batch: &BatchView<'_>,
    ) -> Option<SentRound> {
        let active: Vec<usize> = (0..self.items.len()).filter(|k| !self.lost[*k]).collect();
        if self.outcome.is_some() || round >= self.units.len() || active.is_empty() {
            return None;
        }
        let (unit, addr) = &self.units[round];
        let addr = match addr {
            Ok(a) => a.clone(),
            Err(e) => {
                self.outcome = Some(ChainOutcome::Failed(*unit, e.clone()));
                return None;
            }
        };
        let ops: Vec<WriteOp<'_>> = active
            .iter()
            .map(|k| {
                let i = self.items[*k];
                WriteOp {
                    addr: batch.addr_of[i].unwrap_or_default(),
                    writer: batch.writer,
                    seq: batch.seqs[i],
                    data: batch.entries[i],
                }
            })
            .collect();
        match env.send(&addr, Opcode::Write, epoch, &|b| {
            trex_wire::encode_write_request(b, &ops)
        }) {
            Ok(id) => Some(SentRound { addr, id, active }),
            Err(e) => {
                self.outcome = Some(failed_call(*unit, e));
                None
            }
        }
    }

    /// Takes the reply to round `round`'s write: statuses mark items lost (at
    /// the head) or stop the job (refused further down, sealed, failed).
    pub fn on_reply(
        &mut self,
        round: usize,
        sent: &SentRound,
        reply: Result<(Header, Vec<u8>), ClientError>,
        addr_of: &[Option<u64>],
    ) {
        let unit = self.units[round].0;
        let st = match reply.and_then(|(_, body)| statuses(&body, sent.active.len())) {
            Ok(st) => st,
            Err(e) => {
                self.outcome = Some(failed_call(unit, e));
                return;
            }
        };
        for (j, s) in st.iter().enumerate() {
            let k = sent.active[j];
            match chain_answer(round, *s) {
                Answer::Stored => {}
                Answer::Lost => self.lost[k] = true,
                Answer::Unfit => {
                    self.outcome = Some(ChainOutcome::Unfit(unit, *s));
                    return;
                }
                Answer::Refused => {
                    let inconsistent = if round > 0 {
                        " although the head of its chain took the entry (the chain is inconsistent; `trex status` shows the layout)"
                    } else {
                        ""
                    };
                    let addr = addr_of[self.items[k]].unwrap_or_default();
                    self.outcome = Some(ChainOutcome::Refused(format!(
                        "unit {unit} refused address {addr}: {s}{inconsistent}"
                    )));
                    return;
                }
            }
        }
    }

    /// How the job ended (after its last round).
    pub fn finish(self) -> (Vec<usize>, ChainOutcome) {
        let outcome = self.outcome.unwrap_or(ChainOutcome::Done(self.lost));
        (self.items, outcome)
    }
}

/// Writes every job's items down its chain, head first, with one request per
/// chain in flight at a time: round `r` sends to the `r`-th unit of every
/// chain, then collects the replies.
pub(crate) fn write_chains(
    env: &mut dyn Env,
    epoch: u64,
    jobs: &mut [ChainJob],
    batch: &BatchView<'_>,
) {
    let depth = jobs.iter().map(ChainJob::depth).max().unwrap_or(0);
    for round in 0..depth {
        let sent: Vec<Option<SentRound>> = jobs
            .iter_mut()
            .map(|job| job.send_round(env, epoch, round, batch))
            .collect();
        for (job, s) in jobs.iter_mut().zip(sent) {
            if let Some(s) = s {
                let reply = env.recv(&s.addr, s.id);
                job.on_reply(round, &s, reply, batch.addr_of);
            }
        }
    }
}
