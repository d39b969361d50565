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

use super::{chain_answer, Answer, Log};
use crate::error::LogError;
use std::collections::VecDeque;
use trex_net::unit_client::statuses;
use trex_wire::{Opcode, TokenReply, WriteOp};

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

/// One chain's share of a flight.
struct Chain {
    units: Vec<(u64, Result<String, String>)>,
    items: Vec<usize>,
    lost: Vec<bool>,
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
    chains: Vec<Chain>,
    /// The layout epoch the chains were computed in: writes carry it, so a
    /// layout that moved on since makes the units refuse them (sealed), and the
    /// flight finishes through the blocking path with the new layout.
    epoch: u64,
    stage: Stage,
    /// Requests of this round: (node address, request id, chain index).
    sent: Vec<(String, u64, usize)>,
}

impl Log {
    /// A pipeline keeping up to `window` batches of up to `batch` entries in
    /// flight. Submit with [`Pipeline::submit`], collect with
    /// [`Pipeline::poll`], and [`Pipeline::flush`] before dropping it (entries
    /// still queued when it is dropped are not appended).
    pub fn pipeline(&mut self, batch: usize, window: usize) -> Pipeline<'_> {
        Pipeline {
            log: self,
            batch: batch.max(1),
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
    pub fn submit(&mut self, data: &[u8]) -> Result<u64, LogError> {
        super::check_entry_len(0, data)?;
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.queued.push(data);
        if self.queued.len() >= self.batch {
            self.launch();
            while self.flights.len() >= self.window {
                self.drive()?;
            }
        }
        Ok(t)
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
            sent: Vec::new(),
        });
    }

    /// One round: every flight's next request out, every reply in, then
    /// completed flights reported and irregular ones finished the slow way.
    fn drive(&mut self) -> Result<(), LogError> {
        let log = &mut *self.log;
        let seq_addr = log.addr(log.projection.sequencer);
        let epoch = log.projection.epoch;
        for f in self.flights.iter_mut() {
            f.sent.clear();
            match f.stage {
                Stage::Token => {
                    let count = f.entries.len() as u32;
                    let sent = seq_addr.as_ref().ok().and_then(|a| {
                        log.env
                            .send(a, Opcode::Token, epoch, &|b| {
                                trex_wire::encode_token_request(b, count)
                            })
                            .ok()
                            .map(|id| (a.clone(), id, 0))
                    });
                    match sent {
                        Some(s) => f.sent.push(s),
                        None => f.stage = Stage::Fallback,
                    }
                }
                Stage::Write(round) => {
                    for (ci, c) in f.chains.iter().enumerate() {
                        let Some((_, addr)) = c.units.get(round) else {
                            continue;
                        };
                        let active: Vec<usize> =
                            (0..c.items.len()).filter(|k| !c.lost[*k]).collect();
                        if active.is_empty() {
                            continue;
                        }
                        let Ok(addr) = addr else {
                            f.stage = Stage::Fallback;
                            break;
                        };
                        let ops: Vec<WriteOp<'_>> = active
                            .iter()
                            .map(|k| {
                                let i = c.items[*k];
                                WriteOp {
                                    addr: f.addr_of[i].unwrap_or_default(),
                                    writer: log.writer,
                                    seq: f.seqs[i],
                                    data: f.entries.get(i),
                                }
                            })
                            .collect();
                        match log.env.send(addr, Opcode::Write, f.epoch, &|b| {
                            trex_wire::encode_write_request(b, &ops)
                        }) {
                            Ok(id) => f.sent.push((addr.clone(), id, ci)),
                            Err(_) => {
                                f.stage = Stage::Fallback;
                                break;
                            }
                        }
                    }
                }
                Stage::Done | Stage::Fallback => {}
            }
        }
        // Replies, in the order the requests went out (per connection too).
        for f in self.flights.iter_mut() {
            let wrote = matches!(f.stage, Stage::Write(_));
            let sent = std::mem::take(&mut f.sent);
            for (addr, id, ci) in sent {
                let reply = log.env.recv(&addr, id);
                if matches!(f.stage, Stage::Fallback) {
                    continue; // read to keep the connection in step; the flight retries
                }
                match (&f.stage, reply) {
                    (Stage::Token, Ok((_, body))) => match trex_wire::decode_token_reply(&body) {
                        Ok(TokenReply::Granted { epoch: e, first }) if e == epoch => {
                            for (k, a) in f.addr_of.iter_mut().enumerate() {
                                *a = Some(first + k as u64);
                            }
                            let refs = f.entries.refs();
                            match log.chain_jobs(0..refs.len(), &f.addr_of, &f.seqs, &refs) {
                                Ok(jobs) => {
                                    f.chains = jobs
                                        .into_iter()
                                        .map(|j| Chain {
                                            lost: vec![false; j.items.len()],
                                            units: j.units,
                                            items: j.items,
                                        })
                                        .collect();
                                    f.epoch = epoch;
                                    f.stage = Stage::Write(0);
                                }
                                Err(_) => f.stage = Stage::Fallback,
                            }
                        }
                        _ => f.stage = Stage::Fallback,
                    },
                    (Stage::Write(round), Ok((_, body))) => {
                        let round = *round;
                        let c = &mut f.chains[ci];
                        let active: Vec<usize> =
                            (0..c.items.len()).filter(|k| !c.lost[*k]).collect();
                        match statuses(&body, active.len()) {
                            Ok(st) => {
                                for (j, s) in st.iter().enumerate() {
                                    match chain_answer(round, *s) {
                                        Answer::Stored => {}
                                        Answer::Lost => c.lost[active[j]] = true,
                                        // The blocking path reports it.
                                        Answer::Refused => f.stage = Stage::Fallback,
                                    }
                                }
                            }
                            Err(_) => f.stage = Stage::Fallback,
                        }
                    }
                    _ => f.stage = Stage::Fallback,
                }
            }
            // (A flight that just got its token writes the head next round.)
            if let (true, Stage::Write(round)) = (wrote, &f.stage) {
                let round = *round;
                let depth = f.chains.iter().map(|c| c.units.len()).max().unwrap_or(0);
                f.stage = if round + 1 >= depth {
                    Stage::Done
                } else {
                    Stage::Write(round + 1)
                };
            }
        }
        // Report finished flights; finish irregular ones the blocking way.
        let mut keep = VecDeque::with_capacity(self.flights.len());
        while let Some(mut f) = self.flights.pop_front() {
            match f.stage {
                Stage::Done if f.chains.iter().all(|c| c.lost.iter().all(|l| !l)) => {
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
                    let refs = f.entries.refs();
                    let n = refs.len();
                    let r = self
                        .log
                        .append_resume(&refs, &f.seqs, f.addr_of, vec![f.epoch; n]);
                    match r {
                        Ok(addrs) => {
                            for (t, a) in (f.first_ticket..).zip(addrs) {
                                self.done.push_back((t, Ok(a)));
                            }
                        }
                        Err(e) => {
                            for t in (f.first_ticket..).take(n) {
                                self.done.push_back((t, Err(e.clone())));
                            }
                        }
                    }
                }
                Stage::Token | Stage::Write(_) => keep.push_back(f),
            }
        }
        self.flights = keep;
        Ok(())
    }
}
