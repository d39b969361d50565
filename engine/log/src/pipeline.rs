//! Many appends in flight from one client: [`Pipeline`].
//!
//! Entries are grouped into batches ("flights"). Each flight goes through the
//! stages of a blocking append — a token for the batch, then one write per
//! chain position, head to tail — but up to `window` flights are in flight at
//! once, at different stages: one round sends the next request of every flight
//! (on the kept connections, pipelined behind each other), then collects the
//! replies (early ones are kept for their own request by `UnitClient::recv`;
//! request ids are unique in the process). So a client keeps `window × batch`
//! entries in flight with one thread and one connection per node.
//!
//! Anything out of the ordinary — no token (a takeover), a sealed epoch, a unit
//! gone, an address taken by another writer or a filler — hands the flight to
//! the blocking path ([`Log::append_batch`]'s retry loop) with the same writer
//! sequence numbers and, where they were written anywhere, the same addresses:
//! a retried entry never shows up twice.

use super::Log;
use crate::chain::{BatchView, ChainJob, ChainOutcome, SentRound};
use crate::error::LogError;
use std::collections::{BTreeSet, VecDeque};
use trex_wire::{Opcode, TokenReply};

/// A handle keeping many appends in flight (see [`Log::pipeline`]).
pub struct Pipeline<'a> {
    log: &'a mut Log,
    batch: usize,
    window: usize,
    /// Entries submitted and not yet in a flight (tickets
    /// `next_ticket - queued.len()` onwards).
    queued: Entries,
    flights: VecDeque<Flight>,
    done: VecDeque<(u64, Result<u64, LogError>)>,
    next_ticket: u64,
}

enum Stage {
    Token,
    Write(usize),
    Done,
    /// Leave it to the blocking path.
    Fallback,
}

/// A batch's entries in one buffer (no allocation per entry).
#[derive(Default)]
struct Entries {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Entries {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.ends.push(self.bytes.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    fn refs(&self) -> Vec<&[u8]> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

struct Flight {
    /// Tickets `first_ticket ..` in entry order.
    first_ticket: u64,
    entries: Entries,
    seqs: Vec<u64>,
    addr_of: Vec<Option<u64>>,
    chains: Vec<ChainJob>,
    /// The layout epoch the chains were computed in: writes carry it, so a
    /// layout that moved on since makes the units refuse them (sealed), and the
    /// flight finishes through the blocking path with the new layout.
    epoch: u64,
    stage: Stage,
    /// The token request of this round: (sequencer address, request id).
    token: Option<(String, u64)>,
    /// The writes of this round: (chain index, request).
    writes: Vec<(usize, SentRound)>,
}

impl Log {
    /// A pipeline keeping up to `window` batches of up to `batch` entries in
    /// flight. Submit with [`Pipeline::submit`], collect with
    /// [`Pipeline::poll`], and [`Pipeline::flush`] before dropping it (entries
    /// still queued when it is dropped are not appended).
    pub fn pipeline(&mut self, batch: usize, window: usize) -> Pipeline<'_> {
        Pipeline {
            log: self,
            batch: batch.clamp(1, trex_wire::MAX_OPS_PER_FRAME as usize),
            window: window.max(1),
            queued: Entries::default(),
            flights: VecDeque::new(),
            done: VecDeque::new(),
            next_ticket: 0,
        }
    }
}

impl Pipeline<'_> {
    /// Queues one entry; returns its ticket (tickets count up from 0). Blocks
    /// only while the window is full, driving the flights in the meantime.
    ///
    /// An entry over the size limit is refused at once (no ticket, no
    /// address). A batch is launched early when the next entry would make its
    /// write requests exceed a frame.
    pub fn submit(&mut self, data: &[u8]) -> Result<u64, LogError> {
        let t = self.next_ticket;
        super::check_entry_len(&format!("ticket {t}: "), data)?;
        let (count, bytes) = (self.queued.len(), self.queued.bytes.len());
        if count > 0 && !super::fits_frame(count + 1, bytes + data.len()) {
            self.launch_and_wait()?;
        }
        self.next_ticket += 1;
        self.queued.push(data);
        if self.queued.len() >= self.batch {
            self.launch_and_wait()?;
        }
        Ok(t)
    }

    /// Launches the queued entries; then drives the flights until the window
    /// has room.
    fn launch_and_wait(&mut self) -> Result<(), LogError> {
        self.launch();
        while self.flights.len() >= self.window {
            self.drive()?;
        }
        Ok(())
    }

    /// A completed append: its ticket and its address (or why it failed; a
    /// failed entry may or may not be in the log).
    pub fn poll(&mut self) -> Option<(u64, Result<u64, LogError>)> {
        self.done.pop_front()
    }

    /// Sends what is queued and waits until nothing is in flight.
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.launch();
        while !self.flights.is_empty() {
            self.drive()?;
        }
        Ok(())
    }

    /// Entries submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.queued.len() + self.flights.iter().map(|f| f.entries.len()).sum::<usize>()
    }

    /// Turns the queued entries into a flight.
    fn launch(&mut self) {
        if self.queued.len() == 0 {
            return;
        }
        let entries = std::mem::take(&mut self.queued);
        let n = entries.len();
        self.flights.push_back(Flight {
            first_ticket: self.next_ticket - n as u64,
            seqs: self.log.next_seqs(n),
            addr_of: vec![None; n],
            entries,
            chains: Vec::new(),
            epoch: 0,
            stage: Stage::Token,
            token: None,
            writes: Vec::new(),
        });
    }

    /// One round: every flight's next request out, every reply in, then
    /// completed flights reported and irregular ones finished the slow way.
    fn drive(&mut self) -> Result<(), LogError> {
        let epoch = self.log.projection.epoch;
        self.send_round(epoch);
        self.collect_round(epoch);
        self.report();
        Ok(())
    }

    /// Every flight's next request out: a token request, or this round's
    /// write to each of its chains (the same [`ChainJob::send_round`] as the
    /// blocking path).
    fn send_round(&mut self, epoch: u64) {
        let log = &mut *self.log;
        let seq_addr = log.addr(log.projection.sequencer);
        for f in self.flights.iter_mut() {
            f.token = None;
            f.writes.clear();
            match f.stage {
                Stage::Token => {
                    let count = f.entries.len() as u32;
                    f.token = seq_addr.as_ref().ok().and_then(|a| {
                        log.env
                            .send(a, Opcode::Token, epoch, &|b| {
                                trex_wire::encode_token_request(b, count)
                            })
                            .ok()
                            .map(|id| (a.clone(), id))
                    });
                    if f.token.is_none() {
                        f.stage = Stage::Fallback;
                    }
                }
                Stage::Write(round) => {
                    let refs = f.entries.refs();
                    let batch = BatchView {
                        writer: log.writer,
                        addr_of: &f.addr_of,
                        seqs: &f.seqs,
                        entries: &refs,
                    };
                    for (ci, c) in f.chains.iter_mut().enumerate() {
                        if let Some(sent) = c.send_round(&mut *log.env, f.epoch, round, &batch) {
                            f.writes.push((ci, sent));
                        }
                        if c.outcome.is_some() {
                            f.stage = Stage::Fallback; // the blocking path sorts it out
                            break;
                        }
                    }
                }
                Stage::Done | Stage::Fallback => {}
            }
        }
    }

    /// Every reply in, in the order the requests went out (per connection
    /// too): a granted token assigns addresses and chains; write statuses go
    /// to [`ChainJob::on_reply`]; anything irregular marks the flight for the
    /// blocking path.
    fn collect_round(&mut self, epoch: u64) {
        let log = &mut *self.log;
        for f in self.flights.iter_mut() {
            if let Some((addr, id)) = f.token.take() {
                let reply = log.env.recv(&addr, id);
                f.stage = Stage::Fallback;
                if reply.is_err() && log.seq_failed.is_none_or(|(_, e, _)| e != epoch) {
                    // Tell the standbys now (once per layout epoch), not after
                    // the blocking retry timed out again.
                    let seq = log.projection.sequencer;
                    log.sequencer_failed(seq, epoch);
                }
                if let Ok((_, body)) = reply {
                    if let Ok(TokenReply::Granted { epoch: e, first }) =
                        trex_wire::decode_token_reply(&body)
                    {
                        if e == epoch {
                            for (k, a) in f.addr_of.iter_mut().enumerate() {
                                *a = Some(first + k as u64);
                            }
                            if let Ok(jobs) = log.chain_jobs(0..f.addr_of.len(), &f.addr_of) {
                                f.chains = jobs;
                                f.epoch = epoch;
                                // The head is written next round.
                                f.stage = Stage::Write(0);
                            }
                        }
                    }
                }
                continue;
            }
            let writes = std::mem::take(&mut f.writes);
            for (ci, sent) in &writes {
                let reply = log.env.recv(&sent.addr, sent.id);
                if let Stage::Write(round) = f.stage {
                    let c = &mut f.chains[*ci];
                    c.on_reply(round, sent, reply, &f.addr_of);
                    if c.outcome.is_some() {
                        f.stage = Stage::Fallback; // the blocking path reports it
                    }
                } // else: read to keep the connection in step; the flight retries
            }
            f.writes = writes;
            if let Stage::Write(round) = f.stage {
                let depth = f.chains.iter().map(ChainJob::depth).max().unwrap_or(0);
                f.stage = if round + 1 >= depth {
                    Stage::Done
                } else {
                    Stage::Write(round + 1)
                };
            }
        }
    }

    /// Reports finished flights; finishes irregular ones the blocking way (each
    /// entry with its own result: a flight failing part-way fails only the
    /// entries not done, naming the address each held).
    fn report(&mut self) {
        let mut keep = VecDeque::with_capacity(self.flights.len());
        while let Some(mut f) = self.flights.pop_front() {
            match f.stage {
                Stage::Done if f.chains.iter().all(ChainJob::all_stored) => {
                    for (t, a) in (f.first_ticket..).zip(&f.addr_of) {
                        self.done.push_back((t, Ok(a.unwrap_or_default())));
                    }
                }
                Stage::Done | Stage::Fallback => {
                    // Addresses that lost to another writer are given up; the
                    // rest are kept (they may be written somewhere already).
                    for c in &f.chains {
                        for (k, i) in c.items.iter().enumerate() {
                            if c.lost[k] {
                                f.addr_of[*i] = None;
                            }
                        }
                    }
                    // A unit that failed mid-flight is dealt with first (probe,
                    // take out): the blocking retry would otherwise meet it
                    // again and wait out another connect timeout.
                    let failed: BTreeSet<(u64, String)> = f
                        .chains
                        .iter()
                        .filter_map(|c| match &c.outcome {
                            Some(ChainOutcome::Failed(unit, e)) => Some((*unit, e.clone())),
                            _ => None,
                        })
                        .collect();
                    for (unit, e) in failed {
                        // A failure here is the retry's to report.
                        let _ = self.log.reconfigure(unit, &e);
                    }
                    let refs = f.entries.refs();
                    let n = refs.len();
                    let r = self
                        .log
                        .append_resume(&refs, &f.seqs, f.addr_of, vec![f.epoch; n]);
                    for (t, r) in (f.first_ticket..).zip(r) {
                        self.done
                            .push_back((t, r.map_err(crate::EntryFailure::into_error)));
                    }
                }
                Stage::Token | Stage::Write(_) => keep.push_back(f),
            }
        }
        self.flights = keep;
    }
}
