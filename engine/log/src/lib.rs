//! The shared-log client: the "custom binary client" applications link.
//!
//! `Log::connect(endpoints)` learns the layout (the current projection and the
//! members' addresses) from the consensus group and caches it. An append takes a
//! token from the sequencer, maps the address through the projection to its
//! stripe's chain, and writes the entry to every unit of the chain in chain order,
//! head first; it is complete once the chain's tail holds it. Reads ask the tail.
//! Filling a hole walks the chain: a value found at the head is copied down the
//! chain (completing a torn append); otherwise junk is written down the chain.
//!
//! Every entry carries this client's writer id and a sequence number, so an append
//! retried after a timeout is recognised by the units as the same write.
//! `SealedEpoch` from a unit means the layout moved on: refresh and retry, within a
//! bound. Units store entries under their global log address.

mod chain;
pub mod env;
mod error;
mod fill_many;
mod pipeline;
mod repair;

pub use error::{EntryFailure, LogError};
pub use pipeline::Pipeline;
pub use repair::RepairReport;

use crate::chain::{sealed, write_chains, BatchView, ChainJob, ChainOutcome};
use crate::env::{unit_alive, At, Env, TcpEnv};
use crate::error::fail;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use trex_consensus::sm::{Member, Projection};
use trex_net::unit_client::{ClientError, ReadItem, UnitApi};
use trex_wire::ops::Refusal;
use trex_wire::{Opcode, Status, TokenReply, WriteOp};

/// What a read finds at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// An entry: writer id, writer sequence number, bytes.
    Data {
        /// Writer id.
        writer: u64,
        /// Writer sequence number.
        seq: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A hole, filled with junk.
    Hole,
    /// Nothing written (yet).
    Unwritten,
    /// Below the trim mark.
    Trimmed,
}

/// How long a client does not call again a sequencer that did not answer,
/// while the layout still names it (it watches the layout for a takeover
/// instead).
const SEQUENCER_BACKOFF: Duration = Duration::from_secs(2);

/// What a trim did (see [`Log::trim`]).
#[derive(Clone, Debug, Default)]
pub struct TrimReport {
    /// The trim mark recorded with the consensus group and applied: the one
    /// asked for, or a higher one recorded before.
    pub mark: u64,
    /// The units that applied the mark.
    pub applied: Vec<u64>,
    /// The units that did not, and why.
    pub failed: Vec<(u64, String)>,
}

/// A client of the shared log.
pub struct Log {
    env: Box<dyn Env>,
    projection: Projection,
    members: BTreeMap<u64, Member>,
    writer: u64,
    seq: u64,
    /// The highest epoch a unit said it is sealed at.
    sealed_seen: u64,
    /// How many times an operation refreshes the layout and retries.
    pub max_retries: usize,
    /// Units whose damaged copies [`Log::repair_damaged`] could not all
    /// rewrite, with their damaged count then: not read again until it changes.
    scrubbed: BTreeMap<u64, u64>,
    /// Units a repair found holding values the log decided otherwise, and
    /// why: not joined again until they are wiped (empty).
    conflicted: BTreeMap<u64, String>,
    /// The sequencer that last failed to answer a token request: its id, the
    /// layout epoch that named it, and when.
    seq_failed: Option<(u64, u64, Duration)>,
}

/// What a unit's read answer means: the address and its slot.
fn slot_of(unit: u64, it: ReadItem) -> Result<(u64, Slot), LogError> {
    let s = match it.status {
        Status::Ok => Slot::Data {
            writer: it.writer,
            seq: it.seq,
            data: it.data,
        },
        Status::Junk => Slot::Hole,
        Status::Trimmed => Slot::Trimmed,
        Status::Unwritten => Slot::Unwritten,
        other => {
            return Err(fail!(
                "unit {unit} answered {other} for address {}",
                it.addr
            ))
        }
    };
    Ok((it.addr, s))
}

/// Every unit of projection `p`, each once, in id order.
pub(crate) fn units_of(p: &Projection) -> BTreeSet<u64> {
    p.segments
        .iter()
        .flat_map(|s| s.stripes.iter().flatten().copied())
        .collect()
}

impl Log {
    /// Connects: learns the layout from the consensus nodes at `endpoints`.
    pub fn connect(endpoints: &str) -> Result<Log, LogError> {
        Log::connect_to(endpoints, 0)
    }

    /// Connects to the cluster `cluster_id` (every frame carries it; servers of
    /// another cluster refuse with `wrong-cluster`).
    pub fn connect_to(endpoints: &str, cluster_id: u32) -> Result<Log, LogError> {
        // One second per call: a unit's write waits for its group-commit sync
        // (tens of ms at the 99.9th percentile here); a unit or sequencer that
        // does not answer within a second is probed and routed around.
        let env = TcpEnv::new(endpoints, Duration::from_secs(1))?.with_cluster_id(cluster_id);
        Log::with_env(Box::new(env), trex_net::util::random_u64() | 1)
    }

    /// A client in the given environment, writing as `writer` (unique per
    /// client: it names this client's entries).
    pub fn with_env(env: Box<dyn Env>, writer: u64) -> Result<Log, LogError> {
        let mut log = Log {
            env,
            projection: Projection::default(),
            members: BTreeMap::new(),
            writer,
            seq: 0,
            sealed_seen: 0,
            max_retries: 20,
            scrubbed: BTreeMap::new(),
            conflicted: BTreeMap::new(),
            seq_failed: None,
        };
        log.refresh()?;
        Ok(log)
    }

    /// The cached projection.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// Reads the layout again (after `SealedEpoch`, or a sequencer change).
    ///
    /// If a unit said it is sealed at an epoch the layout has not reached,
    /// someone sealed for a new layout and did not install it (a repair that
    /// failed or died between its seals and its install): every request of the
    /// current epoch would be refused for ever. After giving such a repair a
    /// moment to finish, the layout is installed again unchanged at the sealed
    /// epoch (compare-and-set): the seals fenced the old epoch; the chains stay.
    pub fn refresh(&mut self) -> Result<(), LogError> {
        self.read_layout()?;
        for _ in 0..5 {
            if self.sealed_seen <= self.projection.epoch {
                return Ok(());
            }
            self.env.sleep(Duration::from_millis(200));
            self.read_layout()?;
        }
        if self.sealed_seen <= self.projection.epoch {
            return Ok(());
        }
        // A unit claiming a seal far above the layout (damaged, or sealed by
        // hand) does not drag the layout there: the install would be refused
        // (out-of-range) anyway; say so instead.
        if let Err(e) =
            trex_wire::range::check_step("epoch", self.projection.epoch, self.sealed_seen)
        {
            return Err(fail!(
                "a storage unit is sealed at epoch {} while the layout is at {}: {e}; find it with `trex status` and take it out",
                self.sealed_seen,
                self.projection.epoch
            ));
        }
        let mut next = self.projection.clone();
        next.epoch = self.sealed_seen;
        let op = trex_consensus::sm::Op::Install {
            expected_epoch: self.projection.epoch,
            projection: next,
        };
        match self.env.submit_ok(&op) {
            Ok(_) => trex_net::log_line!(
                "WARN",
                "units were sealed at epoch {} but the layout stayed at {}: installed it again at {}",
                self.sealed_seen,
                self.projection.epoch,
                self.sealed_seen
            ),
            Err(e) if e.is_refused(Refusal::EpochMismatch) => {} // someone else moved it
            Err(e) => return Err(e.into()),
        }
        self.read_layout()
    }

    fn read_layout(&mut self) -> Result<(), LogError> {
        let (_, p) = self.env.layout()?;
        self.projection =
            p.ok_or("no layout is installed; run `trex layout init` (or `trex up`)")?;
        self.members = self.env.members()?;
        Ok(())
    }

    /// Whether `e` is a unit's `sealed-epoch` refusal (and notes its epoch).
    fn seen_sealed(&mut self, e: &ClientError) -> bool {
        match sealed(e) {
            Some(at) => {
                self.sealed_seen = self.sealed_seen.max(at);
                true
            }
            None => false,
        }
    }

    /// The chain (unit ids, head first) serving `addr`.
    pub fn chain(&self, addr: u64) -> Result<Vec<u64>, LogError> {
        self.chain_of(addr).map(<[u64]>::to_vec)
    }

    /// The chain serving `addr`, borrowed (the per-entry paths use this).
    fn chain_of(&self, addr: u64) -> Result<&[u64], LogError> {
        let seg = self
            .projection
            .segments
            .iter()
            .find(|s| s.start <= addr && addr < s.end)
            .ok_or_else(|| {
                format!(
                    "address {addr} is in no segment of layout epoch {}",
                    self.projection.epoch
                )
            })?;
        let n = seg.stripes.len() as u64;
        if n == 0 {
            return Err(fail!(
                "layout epoch {} has a segment without stripes",
                self.projection.epoch
            ));
        }
        Ok(&seg.stripes[(addr % n) as usize])
    }

    /// Where node `id` listens.
    fn addr(&self, id: u64) -> Result<String, String> {
        self.members
            .get(&id)
            .map(|m| m.addr.clone())
            .ok_or_else(|| format!("node {id} is not registered (`trex members` lists who is)"))
    }

    /// Calls storage unit `id`: an unregistered unit is an I/O failure.
    fn with_unit<T>(
        &mut self,
        id: u64,
        f: impl FnOnce(&mut At<'_, dyn Env>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let addr = self.addr(id).map_err(ClientError::Io)?;
        f(&mut At(&mut *self.env, &addr))
    }

    /// `count` consecutive addresses and their epoch from the sequencer.
    pub fn token(&mut self, count: u32) -> Result<(u64, u64), LogError> {
        // Long enough for a standby to take over (lease TTL + grace + sealing), or
        // for the sequencer to adopt a reconfigured epoch (a third of its TTL).
        let deadline = self.env.now() + Duration::from_secs(15);
        while self.env.now() < deadline {
            let id = self.projection.sequencer;
            // The header carries our layout epoch: a sequencer behind it looks
            // at the layout at once.
            let epoch = self.projection.epoch;
            // A sequencer that just failed to answer, while the layout still
            // names it, is not called again for `SEQUENCER_BACKOFF` (each call
            // to a dead or cut-off sequencer costs a whole call timeout); the
            // layout is read every 100 ms instead, to see the takeover the
            // reports set off.
            if self.seq_failed.is_some_and(|(fid, fepoch, at)| {
                fid == id && fepoch == epoch && self.env.now() < at + SEQUENCER_BACKOFF
            }) {
                self.env.sleep(Duration::from_millis(100));
                let _ = self.refresh();
                continue;
            }
            let reply = match self.addr(id) {
                Ok(addr) => At(&mut *self.env, &addr)
                    .call(Opcode::Token, epoch, &|b| {
                        trex_wire::encode_token_request(b, count)
                    })
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("layout epoch {} names sequencer {id}: {e}; start one with `trex node sequencer`", self.projection.epoch)),
            };
            match reply
                .and_then(|(_, b)| trex_wire::decode_token_reply(&b).map_err(|e| e.to_string()))
            {
                Ok(TokenReply::Granted { epoch, first }) => {
                    if epoch > self.projection.epoch {
                        self.refresh()?; // the sequencer took over at a newer layout
                    }
                    if epoch < self.projection.epoch {
                        // The layout moved on (a reconfiguration) and the sequencer
                        // has not adopted the new epoch yet: its tokens would be
                        // refused. Wait for it.
                        self.env.sleep(Duration::from_millis(100));
                        continue;
                    }
                    return Ok((epoch, first));
                }
                Ok(TokenReply::NotSequencer { .. }) => {
                    // Taking over, or gone: look again (the consensus group may
                    // itself be electing; keep trying until the deadline).
                    self.env.sleep(Duration::from_millis(100));
                    let _ = self.refresh();
                }
                Err(_) => {
                    // The active sequencer did not answer: tell the others
                    // (docs/locks.md), then look again.
                    self.sequencer_failed(id, epoch);
                    self.env.sleep(Duration::from_millis(100));
                    let _ = self.refresh();
                }
            }
        }
        Err("no sequencer handed out addresses; is one running and holding the lease? (`trex status`)".into())
    }

    /// Tells every registered sequencer other than `active` that this client
    /// could not reach the active one: a token request for no addresses at
    /// the client's layout `epoch`, sent without waiting for the answer. A
    /// standby that gets one probes the active sequencer itself and, if it
    /// cannot reach it either, ends its lease (`trex_sequencer`; docs/locks.md):
    /// the active sequencer's own probes cannot see a cut of its inbound
    /// traffic, since they reach it over loopback.
    /// Notes that sequencer `id` (named by the layout at `epoch`) did not
    /// answer a token request, and reports it to the other sequencers.
    pub(crate) fn sequencer_failed(&mut self, id: u64, epoch: u64) {
        self.seq_failed = Some((id, epoch, self.env.now()));
        self.report_unreachable_sequencer(id, epoch);
    }

    fn report_unreachable_sequencer(&mut self, active: u64, epoch: u64) {
        let others: Vec<String> = self
            .members
            .iter()
            .filter(|(id, m)| **id != active && m.role == trex_consensus::sm::Role::Sequencer)
            .map(|(_, m)| m.addr.clone())
            .collect();
        for addr in others {
            let _ = self.env.send(&addr, Opcode::Token, epoch.max(1), &|b| {
                trex_wire::encode_token_request(b, 0)
            });
            self.env.forget(&addr);
        }
    }

    /// Appends one entry; returns its address.
    pub fn append(&mut self, data: &[u8]) -> Result<u64, LogError> {
        check_entry_len("", data)?;
        Ok(self.append_batch(&[data])?[0])
    }

    /// Appends entries; returns their addresses (consecutive unless a race
    /// forced a retry, or the batch was split to fit a frame).
    ///
    /// An entry over the size limit fails the whole call at once, before any
    /// address is taken. Otherwise the first entry that could not be appended
    /// fails the call; [`Log::append_each`] says per entry what happened.
    ///
    /// An entry keeps its address across a layout change (a seal, or a failed
    /// unit taken out): it is written again at the same address under the new
    /// epoch, which the units answer idempotently if part of the chain already has
    /// it, so a retried append never shows up twice. Only an address another
    /// writer or a filler took first is given up for a new one.
    pub fn append_batch(&mut self, entries: &[&[u8]]) -> Result<Vec<u64>, LogError> {
        for (i, e) in entries.iter().enumerate() {
            check_entry_len(&format!("batch entry {i}: "), e)?;
        }
        self.append_each(entries)
            .into_iter()
            .map(|r| r.map_err(EntryFailure::into_error))
            .collect()
    }

    /// Appends entries; returns per entry its address, or why it was not
    /// appended and which address it held (where it may be in the log).
    ///
    /// An entry over the size limit fails at once and takes no address; the
    /// others are appended. The batch is split into parts whose writes fit a
    /// frame (one token request per part); once a part fails, the later parts
    /// are not tried (they fail holding no address).
    pub fn append_each(&mut self, entries: &[&[u8]]) -> Vec<Result<u64, EntryFailure>> {
        let mut out: Vec<Option<Result<u64, EntryFailure>>> = entries
            .iter()
            .map(|e| {
                check_entry_len("", e)
                    .err()
                    .map(|error| Err(EntryFailure { addr: None, error }))
            })
            .collect();
        let ok: Vec<usize> = (0..entries.len()).filter(|i| out[*i].is_none()).collect();
        let mut failed: Option<LogError> = None;
        for part in frame_parts(ok.iter().map(|i| entries[*i].len())) {
            let idx = &ok[part];
            if let Some(e) = &failed {
                for i in idx {
                    out[*i] = Some(Err(EntryFailure {
                        addr: None,
                        error: fail!("not tried: an earlier part of the batch failed ({e})"),
                    }));
                }
                continue;
            }
            let part: Vec<&[u8]> = idx.iter().map(|i| entries[*i]).collect();
            let seqs = self.next_seqs(part.len());
            let n = part.len();
            let rs = self.append_resume(&part, &seqs, vec![None; n], vec![0; n]);
            for (i, r) in idx.iter().zip(rs) {
                if let Err(f) = &r {
                    failed.get_or_insert_with(|| f.error.clone());
                }
                out[*i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every entry has a result"))
            .collect()
    }

    /// `n` fresh writer sequence numbers.
    fn next_seqs(&mut self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                self.seq += 1;
                self.seq
            })
            .collect()
    }

    /// The chain jobs writing entries `items` (all with addresses), one per
    /// chain they map to.
    fn chain_jobs(
        &self,
        items: impl Iterator<Item = usize>,
        addr_of: &[Option<u64>],
    ) -> Result<Vec<ChainJob>, LogError> {
        let mut by_chain: BTreeMap<&[u64], Vec<usize>> = BTreeMap::new();
        for i in items {
            let addr = addr_of[i].ok_or("an entry without an address")?;
            by_chain.entry(self.chain_of(addr)?).or_default().push(i);
        }
        Ok(by_chain
            .into_iter()
            .map(|(chain, items)| {
                let units = chain.iter().map(|u| (*u, self.addr(*u))).collect();
                ChainJob::new(units, items)
            })
            .collect())
    }

    /// Appends `entries` with sequence numbers `seqs`: those with an address
    /// keep it (a retry), those `done` are skipped. The blocking path of
    /// [`Log::append_batch`], and what a [`Pipeline`] falls back to.
    /// Per entry: its address, or why not and the address it held.
    fn append_resume(
        &mut self,
        entries: &[&[u8]],
        seqs: &[u64],
        mut addr_of: Vec<Option<u64>>,
        mut granted: Vec<u64>,
    ) -> Vec<Result<u64, EntryFailure>> {
        let mut done = vec![false; entries.len()];
        let r = self.append_tries(entries, seqs, &mut addr_of, &mut granted, &mut done);
        done.iter()
            .zip(addr_of)
            .map(|(d, addr)| match (d, addr, &r) {
                (true, Some(a), _) => Ok(a),
                (_, addr, Err(e)) => Err(EntryFailure {
                    addr,
                    error: e.clone(),
                }),
                (_, addr, Ok(())) => Err(EntryFailure {
                    addr,
                    error: "the append stopped with the entry not done".into(),
                }),
            })
            .collect()
    }

    /// The tries of [`Log::append_resume`]: `Ok` once every entry is `done`.
    /// Entries done before a failure stay marked done.
    fn append_tries(
        &mut self,
        entries: &[&[u8]],
        seqs: &[u64],
        addr_of: &mut [Option<u64>],
        granted: &mut [u64],
        done: &mut [bool],
    ) -> Result<(), LogError> {
        let n = entries.len();
        for _ in 0..self.max_retries {
            // An address granted in an older epoch is kept (written again, the
            // same entry, idempotently) only if it is below the current
            // sequencer's next address. Above it, the entry reached no unit
            // before the takeover sealed them (a sealed unit refuses the old
            // epoch), and writing it now would put an entry where the new
            // sequencer's counter — the fast check — says nothing is yet.
            let epoch = self.projection.epoch;
            if (0..n).any(|i| !done[i] && addr_of[i].is_some() && granted[i] < epoch) {
                let (e, next) = self.token(0)?;
                for i in 0..n {
                    if let (false, Some(a)) = (done[i], addr_of[i]) {
                        if granted[i] < e {
                            if a >= next {
                                addr_of[i] = None;
                            } else {
                                granted[i] = e;
                            }
                        }
                    }
                }
            }
            let need: Vec<usize> = (0..n)
                .filter(|i| !done[*i] && addr_of[*i].is_none())
                .collect();
            if !need.is_empty() {
                let (e, first) = self.token(need.len() as u32)?;
                for (k, i) in need.iter().enumerate() {
                    addr_of[*i] = Some(first + k as u64);
                    granted[*i] = e;
                }
                // The token revealed a newer epoch (a takeover): check the kept
                // addresses against it before writing anything.
                if (0..n).any(|i| !done[i] && addr_of[i].is_some() && granted[i] < e) {
                    continue;
                }
            }
            let epoch = self.projection.epoch;
            let mut jobs = self.chain_jobs((0..n).filter(|i| !done[*i]), addr_of)?;
            if jobs.is_empty() {
                return Ok(());
            }
            let mut refresh = false;
            // Every chain is written at once (a request to each chain's next
            // unit in flight together); within a chain, head to tail.
            let batch = BatchView {
                writer: self.writer,
                addr_of,
                seqs,
                entries,
            };
            write_chains(&mut *self.env, epoch, &mut jobs, &batch);
            // Every chain's outcome is taken in before a failure ends the
            // call, so entries complete on other chains are reported done.
            let mut fatal: Option<LogError> = None;
            for job in jobs {
                let (items, outcome) = job.finish();
                let lost = match outcome {
                    ChainOutcome::Done(lost) => lost,
                    ChainOutcome::Sealed(at) => {
                        self.sealed_seen = self.sealed_seen.max(at);
                        refresh = true;
                        continue;
                    }
                    ChainOutcome::Failed(unit, e) => {
                        // The unit is gone: take it out of the layout, retry.
                        if fatal.is_none() {
                            fatal = self.reconfigure(unit, &e).err();
                        }
                        refresh = true;
                        continue;
                    }
                    ChainOutcome::Unfit(unit, status) => {
                        // It answers but cannot store: a failed replica all the same.
                        self.take_out(unit, &format!("it answers {status}"))?;
                        refresh = true;
                        continue;
                    }
                    ChainOutcome::Refused(e) => {
                        fatal.get_or_insert(e.into());
                        continue;
                    }
                };
                for (k, i) in items.iter().enumerate() {
                    if lost[k] {
                        addr_of[*i] = None;
                    } else {
                        done[*i] = true;
                    }
                }
            }
            if let Some(e) = fatal {
                return Err(e);
            }
            if done.iter().all(|d| *d) {
                return Ok(());
            }
            if refresh {
                self.refresh()?;
            }
        }
        Err(fail!(
            "{} entries could not be appended after {} tries (the layout kept changing, or addresses kept being filled)",
            done.iter().filter(|d| !**d).count(),
            self.max_retries
        ))
    }

    /// Reads `addr` from the tail of its chain.
    pub fn read(&mut self, addr: u64) -> Result<Slot, LogError> {
        Ok(self.read_range(addr, 1)?.remove(0))
    }

    /// Reads `count` consecutive addresses.
    pub fn read_range(&mut self, from: u64, count: u64) -> Result<Vec<Slot>, LogError> {
        for _ in 0..self.max_retries {
            let epoch = self.projection.epoch;
            let mut by_tail: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for a in from..from.saturating_add(count) {
                let tail = *self.chain_of(a)?.last().ok_or("empty chain")?;
                by_tail.entry(tail).or_default().push(a);
            }
            let mut got: BTreeMap<u64, Slot> = BTreeMap::new();
            let mut refresh = false;
            // (A reply full at 16 MiB answers `deferred` for the rest: ask again.)
            let mut work: Vec<(u64, Vec<u64>)> = by_tail.into_iter().collect();
            while let Some((unit, addrs)) = work.pop() {
                let read = self.with_unit(unit, |c| c.read(epoch, &addrs));
                match read {
                    Ok(items) => {
                        let deferred: Vec<u64> = items
                            .iter()
                            .filter(|it| it.status == Status::Deferred)
                            .map(|it| it.addr)
                            .collect();
                        if !deferred.is_empty() {
                            work.push((unit, deferred));
                        }
                        for it in items.into_iter().filter(|it| it.status != Status::Deferred) {
                            let it = if unreadable_copy(it.status) {
                                // A damaged copy at the tail: the chain's other
                                // replicas hold the same value (it reached the
                                // tail through them, in chain order).
                                self.read_elsewhere(it.addr, unit, epoch)?
                            } else {
                                it
                            };
                            let (a, s) = slot_of(unit, it)?;
                            got.insert(a, s);
                        }
                    }
                    Err(e) if self.seen_sealed(&e) => refresh = true,
                    Err(e) => {
                        self.reconfigure(unit, &e.to_string())?;
                        refresh = true;
                    }
                }
            }
            if refresh {
                self.refresh()?;
                continue;
            }
            // Never answer "unwritten" from a stale layout: a unit taken out
            // while it was unreachable (so never sealed) answers a client that
            // still names it without knowing what was written since. Trust an
            // "unwritten" only if the layout is still the one it was read with.
            if got.values().any(|s| *s == Slot::Unwritten) {
                self.refresh()?;
                if self.projection.epoch != epoch {
                    continue;
                }
            }
            return Ok(got.into_values().collect());
        }
        Err("the layout kept changing while reading".into())
    }

    /// Reads `addr` from the replicas of its chain other than `bad` (which
    /// answered `corrupt` or `io`), tail first. Returns the first answer that is not
    /// `corrupt` or a failure; `unwritten` if no other replica holds it (an
    /// append that reached only the damaged unit), and an error naming the units
    /// when every replica is damaged or unreachable.
    pub(crate) fn read_elsewhere(
        &mut self,
        addr: u64,
        bad: u64,
        epoch: u64,
    ) -> Result<ReadItem, LogError> {
        let chain = self.chain(addr)?;
        let mut why = vec![format!("unit {bad}: corrupt or unreadable")];
        let mut unwritten = None;
        for unit in chain.iter().rev().filter(|u| **u != bad) {
            match self.with_unit(*unit, |c| c.read(epoch, &[addr])) {
                Ok(mut v) => match v[0].status {
                    s if unreadable_copy(s) => why.push(format!("unit {unit}: {s}")),
                    Status::Unwritten => unwritten = Some(v.remove(0)),
                    _ => {
                        let good = v.remove(0);
                        self.repair_copy(bad, &good, epoch, *unit);
                        return Ok(good);
                    }
                },
                Err(e) => why.push(format!("unit {unit}: {e}")),
            }
        }
        if let Some(u) = unwritten {
            return Ok(u);
        }
        // No replica of the current chain has a good copy: a unit that left
        // the chain (taken out while unreachable, say) may hold `bad`'s own
        // bytes.
        if let Some(good) = self.read_former_replica(addr, bad, epoch, &mut why)? {
            return Ok(good);
        }
        // A damaged hole restores itself: a fill rewrites the junk of a
        // damaged record whose intact header says it was junk (and is
        // answered `corrupt` otherwise).
        if let Ok(st) = self.with_unit(bad, |c| c.fill(epoch, &[addr])) {
            if st == [Status::Ok] {
                trex_net::log_line!(
                    "WARN",
                    "address {addr} was damaged on unit {bad}: its record's intact header says it was a hole; restored the junk"
                );
                return Ok(ReadItem {
                    addr,
                    status: Status::Junk,
                    writer: 0,
                    seq: 0,
                    data: Vec::new(),
                });
            }
        }
        Err(fail!(
            "address {addr} is damaged or unreachable on every replica ({}); restore one of them",
            why.join("; ")
        ))
    }

    /// Reads `addr` from a former replica of its chain and restores `bad`'s
    /// damaged copy with it, where that is provably `bad`'s own entry.
    ///
    /// A unit `u` that left the chain is **trusted** if it was in `addr`'s
    /// chain in some projection of the history, and in every projection
    /// where it was, `bad` was too, closer to the head. Chains only lose
    /// members or gain them at the tail, and every value reaches a replica
    /// through the ones before it (a write or fill goes head to tail and
    /// stops at a replica holding something else; a fill adopts what it
    /// finds; a spare gets copies of the decided values and a returning unit
    /// is verified against them). So whatever a trusted unit holds at
    /// `addr`, `bad` held too. Any other former replica could hold a value
    /// `bad` never had (the undecided write of a head removed before it
    /// reached the tail): its copy is only offered to `bad` with
    /// `verified-repair`, which takes it only if `bad`'s damaged record
    /// proves it held exactly that entry (its header survived). Returns
    /// `None` when no former replica's copy gets in.
    fn read_former_replica(
        &mut self,
        addr: u64,
        bad: u64,
        epoch: u64,
        why: &mut Vec<String>,
    ) -> Result<Option<ReadItem>, LogError> {
        let history = self.env.layout_history()?;
        let current = self.chain(addr)?;
        let mut trusted: BTreeMap<u64, bool> = BTreeMap::new();
        for p in &history {
            let Some(chain) = chain_in(p, addr) else {
                continue;
            };
            let bad_at = chain.iter().position(|u| *u == bad);
            for (i, u) in chain.iter().enumerate() {
                if *u == bad || current.contains(u) {
                    continue;
                }
                let behind_bad = bad_at.is_some_and(|b| b < i);
                *trusted.entry(*u).or_insert(true) &= behind_bad;
            }
        }
        // Trusted units first.
        let mut order: Vec<(u64, bool)> = trusted.into_iter().collect();
        order.sort_by_key(|(u, t)| (!*t, *u));
        for (u, is_trusted) in order {
            let mut got = match self.with_unit(u, |c| c.read(epoch, &[addr])) {
                Ok(v) => v,
                Err(e) => {
                    why.push(format!("former replica unit {u}: {e}"));
                    continue;
                }
            };
            let good = got.remove(0);
            match good.status {
                Status::Ok | Status::Junk if is_trusted => {
                    self.repair_copy(bad, &good, epoch, u);
                    return Ok(Some(good));
                }
                Status::Ok => {
                    let op = WriteOp {
                        addr,
                        writer: good.writer,
                        seq: good.seq,
                        data: &good.data,
                    };
                    match self.with_unit(bad, |c| c.verified_repair(epoch, &[op])) {
                        Ok(st) if st == [Status::Ok] => {
                            trex_net::log_line!(
                                "WARN",
                                "address {addr} was damaged on unit {bad}: restored it from former replica unit {u}, verified against the damaged record's own header and checksum"
                            );
                            return Ok(Some(good));
                        }
                        Ok(st) => why.push(format!(
                            "former replica unit {u}: its copy is not provably unit {bad}'s (verified-repair answered {})",
                            st.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                        )),
                        Err(e) => why.push(format!("unit {bad}: verified-repair: {e}")),
                    }
                }
                s => why.push(format!("former replica unit {u}: {s}")),
            }
        }
        Ok(None)
    }

    /// Read repair: rewrites `bad`'s damaged copy of `good.addr` with the value
    /// read from unit `from` (the chain's decided value). Best effort: the read
    /// is answered either way; a hole's junk record is not rewritten.
    fn repair_copy(&mut self, bad: u64, good: &ReadItem, epoch: u64, from: u64) {
        let addr = good.addr;
        if good.status != Status::Ok {
            trex_net::log_line!(
                "WARN",
                "address {addr} is damaged on unit {bad}; read it from unit {from} ({})",
                good.status
            );
            return;
        }
        let op = WriteOp {
            addr,
            writer: good.writer,
            seq: good.seq,
            data: &good.data,
        };
        match self.with_unit(bad, |c| c.repair(epoch, &[op])) {
            Ok(st) if st == [Status::Ok] => trex_net::log_line!(
                "WARN",
                "address {addr} was damaged on unit {bad}: read it from unit {from} and repaired the copy"
            ),
            Ok(st) => trex_net::log_line!(
                "WARN",
                "address {addr} is damaged on unit {bad}; read it from unit {from}; the repair was answered {}",
                st.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            ),
            Err(e) => trex_net::log_line!(
                "WARN",
                "address {addr} is damaged on unit {bad}; read it from unit {from}; the repair failed: {e}"
            ),
        }
    }

    /// Fills a hole: completes a torn append if the head has a value, else junk
    /// down the chain. Returns what the address holds afterwards.
    pub fn fill(&mut self, addr: u64) -> Result<Slot, LogError> {
        for _ in 0..self.max_retries {
            let epoch = self.projection.epoch;
            let chain = self.chain(addr)?;
            let head = chain[0];
            let read = self.with_unit(head, |c| c.read(epoch, &[addr]));
            let found = match read {
                Ok(v) if unreadable_copy(v[0].status) => {
                    // The head's copy is damaged; what it held is on the rest
                    // of the chain if the append got that far.
                    self.read_elsewhere(addr, head, epoch)?
                }
                Ok(mut v) => v.remove(0),
                Err(e) if self.seen_sealed(&e) => {
                    self.refresh()?;
                    continue;
                }
                Err(e) => {
                    self.reconfigure(head, &e.to_string())?;
                    continue;
                }
            };
            if found.status == Status::Trimmed {
                return Ok(Slot::Trimmed);
            }
            // With a value at the head, copy it down the chain (completing a torn
            // append); otherwise junk, head first.
            let copy = (found.status == Status::Ok).then(|| WriteOp {
                addr,
                writer: found.writer,
                seq: found.seq,
                data: &found.data,
            });
            let units = if copy.is_some() {
                &chain[1..]
            } else {
                &chain[..]
            };
            let mut again = false;
            for unit in units {
                let r = self.with_unit(*unit, |c| match &copy {
                    Some(op) => c.write(epoch, &[*op]),
                    None => c.fill(epoch, &[addr]),
                });
                match r {
                    Ok(st) => match st[0] {
                        Status::Ok => {}
                        // A slow writer got there first (or the copy met a value):
                        // start over from the head, which now decides.
                        Status::Written | Status::Junk => {
                            again = true;
                            break;
                        }
                        Status::Trimmed => return Ok(Slot::Trimmed),
                        Status::Full | Status::Io => {
                            // It answers but cannot store: a failed replica.
                            self.take_out(*unit, &format!("it answers {}", st[0]))?;
                            again = true;
                            break;
                        }
                        other => return Err(fail!("unit {unit} refused to fill {addr}: {other}")),
                    },
                    Err(e) if self.seen_sealed(&e) => {
                        self.refresh()?;
                        again = true;
                        break;
                    }
                    Err(e) => {
                        self.reconfigure(*unit, &e.to_string())?;
                        again = true;
                        break;
                    }
                }
            }
            if again {
                continue;
            }
            return Ok(match copy {
                Some(_) => Slot::Data {
                    writer: found.writer,
                    seq: found.seq,
                    data: found.data.clone(),
                },
                None => Slot::Hole,
            });
        }
        Err(fail!("address {addr} could not be filled: the layout kept changing; try again (`trex status` shows the layout)"))
    }

    /// Takes a storage unit that stopped answering out of the layout: installs a
    /// projection one epoch higher with `failed` removed from every chain (the
    /// survivors keep serving the whole range), then seals every remaining unit at
    /// that epoch so no write of the old epoch lands anywhere. Another client may
    /// have done it already; that is fine.
    pub fn reconfigure(&mut self, failed: u64, why: &str) -> Result<(), LogError> {
        self.refresh()?;
        if !units_of(&self.projection).contains(&failed) {
            return Ok(()); // another client took it out already: no probe needed
        }
        // A unit that still answers and is not poisoned is not gone (a timeout, a
        // dropped connection): leave it in, and let the caller retry.
        if let Ok(addr) = self.addr(failed) {
            if unit_alive(&mut *self.env, &addr).is_ok() {
                return Ok(());
            }
        }
        // It did not answer a probe just now: sealing it would only wait out
        // another timeout (readers never trust "unwritten" from a layout that
        // moved on, and a takeover seals units taken out as well).
        self.take_out_sealing(failed, why, false)
    }

    /// Takes `failed` out of the layout whether or not it answers (a unit that
    /// is full or poisoned answers, but cannot store): as [`Log::reconfigure`]
    /// without its liveness check.
    pub fn take_out(&mut self, failed: u64, why: &str) -> Result<(), LogError> {
        self.take_out_sealing(failed, why, true)
    }

    fn take_out_sealing(&mut self, failed: u64, why: &str, seal_it: bool) -> Result<(), LogError> {
        // Another client may install a layout between our read and our
        // install (a sequencer takeover, say): then the install is refused
        // with `epoch-mismatch`, and the removal is planned again on the new
        // layout. Returning before the unit is really out would let a caller
        // act on a unit still serving (an operator wiping a chain's tail).
        for _ in 0..self.max_retries.max(1) {
            self.refresh()?;
            let p = self.projection.clone();
            if !p
                .segments
                .iter()
                .any(|s| s.stripes.iter().any(|c| c.contains(&failed)))
            {
                return Ok(()); // someone else took it out already
            }
            let next = Self::without_unit(&p, failed, why, seal_it)?;
            let op = trex_consensus::sm::Op::Install {
                expected_epoch: p.epoch,
                projection: next.clone(),
            };
            match self.env.submit_ok(&op) {
                Ok(_) => return self.seal_after_take_out(next, failed, why, seal_it),
                Err(e) if e.is_refused(Refusal::EpochMismatch) => continue, // raced: plan again
                Err(e) => return Err(e.into()),
            }
        }
        Err(fail!(
            "storage unit {failed} failed ({why}), but the layout changed under each of {} attempts to take it out; it is still in the layout: retry when reconfigurations settle (`trex layout` shows the current one)",
            self.max_retries.max(1)
        ))
    }

    /// The projection one epoch above `p` with `failed` removed from every
    /// chain. Errors when a chain would be left empty (its entries would be
    /// unavailable), or, for a unit that answers (`keep_last`), when it is the
    /// last replica of every older range it is in.
    fn without_unit(
        p: &Projection,
        failed: u64,
        why: &str,
        keep_last: bool,
    ) -> Result<Projection, LogError> {
        let mut next = p.clone();
        next.epoch = trex_wire::range::next("epoch", p.epoch).map_err(|e| fail!("{e}"))?;
        let open = next.segments.len().saturating_sub(1);
        for (i, seg) in next.segments.iter_mut().enumerate() {
            for chain in &mut seg.stripes {
                if keep_last && i < open && chain.as_slice() == [failed] {
                    // It answers (full, say) and is the last replica of an
                    // older range: it stays there and serves reads, while
                    // the layout moves on without it for new addresses.
                    continue;
                }
                chain.retain(|u| *u != failed);
                if chain.is_empty() {
                    return Err(fail!(
                        "storage unit {failed} failed ({why}) and was the last replica of its stripe: entries there are unavailable until it returns"
                    ));
                }
            }
        }
        if next.segments == p.segments {
            return Err(fail!(
                "storage unit {failed} failed ({why}) and is the last replica of its stripe for older addresses: it keeps serving them until a spare holds a copy"
            ));
        }
        Ok(next)
    }

    /// After `next` (without `failed`) was installed: seals its units (and
    /// `failed` itself when it answers) at its epoch.
    fn seal_after_take_out(
        &mut self,
        next: Projection,
        failed: u64,
        why: &str,
        seal_it: bool,
    ) -> Result<(), LogError> {
        trex_net::log_line!(
            "WARN",
            "storage unit {failed} failed ({why}); installed layout epoch {} without it",
            next.epoch
        );
        let mut units: Vec<u64> = next
            .segments
            .iter()
            .flat_map(|s| s.stripes.iter().flatten().copied())
            .collect();
        // The removed unit too, if it answers: then it refuses clients with the
        // old layout instead of answering them "unwritten".
        if seal_it {
            units.push(failed);
        }
        self.members = self.env.members()?;
        for id in units {
            if let Err(e) = self.with_unit(id, |c| c.seal(next.epoch)) {
                if id != failed {
                    trex_net::log_line!(
                        "WARN",
                        "could not seal unit {id} at epoch {}: {e}",
                        next.epoch
                    );
                }
            }
        }
        self.refresh()
    }

    /// The fast check: asks the sequencer (a token request for no addresses)
    /// for the next address it would hand out. At least the tail of every
    /// acknowledged append; above it by addresses granted and not yet written
    /// (or never to be: holes to fill).
    ///
    /// The answer counts only if the layout, read through the consensus
    /// group *after* the reply, is still at the epoch the sequencer answered
    /// for: a sequencer deposed by a takeover keeps answering from its old
    /// counter until it next renews its lease, and a client with the old
    /// layout would otherwise take that for the tail while the new sequencer
    /// hands out higher addresses (P4; cluster simulator seed 800461). With
    /// the layout still at that epoch, every append acknowledged before the
    /// check started got its address from that sequencer, or was below the
    /// tail its takeover sealed.
    pub fn check_fast(&mut self) -> Result<u64, LogError> {
        for _ in 0..self.max_retries {
            let (epoch, tail) = self.token(0)?;
            self.refresh()?;
            if self.projection.epoch == epoch {
                return Ok(tail);
            }
        }
        Err("the layout kept changing during the check (sequencer takeovers); retry".into())
    }

    /// The slow check: one past the highest address any unit of the current
    /// projection holds. A unit that does not answer is passed over as long as
    /// every chain has a replica that answered and holds no damaged record (a
    /// record whose header is damaged is not in its unit's tail), and the
    /// layout the units were asked with is still the current one when they
    /// have answered (read again every time): a member of the current layout's chain holds every
    /// acknowledged append of that chain's range, so those tails cover them
    /// (ARCHITECTURE §7: one bad unit per chain costs no check). A stale layout
    /// could name a unit taken out and back with an old tail.
    pub fn check(&mut self) -> Result<u64, LogError> {
        for _ in 0..self.max_retries {
            let p = self.projection.clone();
            let mut tail = 0;
            // Units that answered with no damaged record: a unit whose
            // damaged record lost its header cannot count it in its tail, so
            // only an undamaged replica stands for a chain whose other
            // replica did not answer.
            let mut clean: BTreeSet<u64> = BTreeSet::new();
            let mut damaged: Vec<String> = Vec::new();
            let mut failed: Vec<String> = Vec::new();
            for id in units_of(&p) {
                match self.with_unit(id, |c| c.info()) {
                    Ok(info) => {
                        tail = tail.max(info.tail);
                        if info.corrupt == 0 {
                            clean.insert(id);
                        } else {
                            damaged
                                .push(format!("unit {id}: holds {} damaged records", info.corrupt));
                        }
                    }
                    Err(e) => failed.push(format!("unit {id}: {e}")),
                }
            }
            // Asked with an old layout (a takeover since, say): the units of
            // the current one may hold addresses these do not. Ask again.
            self.refresh()?;
            if self.projection.epoch != p.epoch {
                continue;
            }
            if failed.is_empty() {
                return Ok(tail);
            }
            if let Some(chain) = p
                .segments
                .iter()
                .flat_map(|s| s.stripes.iter())
                .find(|c| !c.iter().any(|u| clean.contains(u)))
            {
                failed.extend(damaged);
                return Err(fail!(
                    "no replica of the chain {} answered without damage ({}); restart the units that do not answer, or let the repair loop rewrite the damaged records (`trex status` shows each unit), then check again",
                    chain.iter().map(u64::to_string).collect::<Vec<_>>().join(" -> "),
                    failed.join("; ")
                ));
            }
            for f in &failed {
                trex_net::log_line!(
                    "WARN",
                    "slow check: {f}; its chain's other replicas answered"
                );
            }
            return Ok(tail);
        }
        Err(fail!(
            "the layout kept changing during the slow check; try again"
        ))
    }

    /// Trims the log below `prefix`: records the mark with the consensus group,
    /// then asks every unit of the projection to apply it.
    ///
    /// A mark above the log's tail (the sequencer's next address, the fast
    /// check) is refused with [`LogError::Invalid`] before anything is
    /// recorded: every address the sequencer handed out below it would be
    /// refused `trimmed`. If the consensus group cannot record it, nothing was
    /// trimmed and the error says so.
    ///
    /// Once recorded, the trim has taken effect (a mark never moves back), so
    /// the call succeeds whatever the units answer: it reports the units that
    /// applied the mark and those that did not yet, with why. Those apply it
    /// when they answer again — the sequencer's failure detector spreads the
    /// recorded mark ([`Log::converge_trim`]) — or on the next `trim`. The mark
    /// applied is the recorded one ([`TrimReport::mark`]), which is `prefix` or
    /// an earlier, higher mark.
    pub fn trim(&mut self, prefix: u64) -> Result<TrimReport, LogError> {
        self.check_trim_mark(prefix)?;
        let mark = self.record_trim(prefix)?;
        let mut report = self.apply_trim(mark, None);
        report.mark = mark;
        Ok(report)
    }

    /// The log's replication factor as the consensus group recorded it
    /// (`trex layout init --replicas`, `trex layout replicas N`); `None` if
    /// never set (a cluster bootstrapped before it was recorded).
    pub fn replication_target(&mut self) -> Result<Option<usize>, LogError> {
        let b = self
            .env
            .submit_ok(&trex_consensus::sm::Op::Replication { replicas: 0 })?;
        let mut r = trex_wire::Reader::new(&b);
        let n = r.u32().map_err(|e| {
            LogError::Consensus(trex_consensus::ConsensusError::Protocol(format!(
                "result of replication: {e}"
            )))
        })?;
        Ok((n > 0).then_some(n as usize))
    }

    /// The log's trim mark as the consensus group recorded it (0: never
    /// trimmed).
    pub fn trim_mark(&mut self) -> Result<u64, LogError> {
        self.record_trim(0)
    }

    /// Raises the recorded trim mark to `mark` (0: reads it); returns the mark
    /// now recorded.
    fn record_trim(&mut self, mark: u64) -> Result<u64, LogError> {
        let b = self.env.submit_ok(&trex_consensus::sm::Op::Trim { mark })?;
        let mut r = trex_wire::Reader::new(&b);
        r.u64().map_err(|e| {
            LogError::Consensus(trex_consensus::ConsensusError::Protocol(format!(
                "result of trim: {e}"
            )))
        })
    }

    /// Asks every unit of the layout (as it is when the last one was asked: a
    /// unit that joined a chain meanwhile gets it too) to apply trim mark
    /// `mark`; with `marks`, only units whose mark (as they reported it) is
    /// below. A unit sealed at a newer epoch is asked again at it.
    pub(crate) fn apply_trim(
        &mut self,
        mark: u64,
        marks: Option<&BTreeMap<u64, u64>>,
    ) -> TrimReport {
        let mut report = TrimReport {
            mark,
            ..TrimReport::default()
        };
        let mut asked: BTreeSet<u64> = BTreeSet::new();
        while let Some(id) = units_of(&self.projection)
            .into_iter()
            .find(|u| !asked.contains(u))
        {
            asked.insert(id);
            if marks.is_some_and(|m| m.get(&id).is_none_or(|have| *have >= mark)) {
                continue; // already there, or did not answer
            }
            let mut last = None;
            for _ in 0..2 {
                let epoch = self.projection.epoch;
                match self.with_unit(id, |c| c.trim(epoch, mark)) {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) if self.seen_sealed(&e) => {
                        last = Some(e.to_string());
                        // The layout moved on: trim at its epoch.
                        if let Err(e) = self.refresh() {
                            last = Some(e.to_string());
                            break;
                        }
                    }
                    Err(e) => {
                        last = Some(e.to_string());
                        break;
                    }
                }
            }
            match last {
                None => report.applied.push(id),
                Some(e) => report.failed.push((id, e)),
            }
        }
        report
    }

    /// Follows the log from `from`: yields entries and holes in address order,
    /// waits at the tail, and fills an address that stays unwritten below the
    /// tail for longer than `hole_wait` (its writer probably died).
    pub fn subscribe(&mut self, from: u64, hole_wait: Duration) -> Subscription<'_> {
        Subscription {
            log: self,
            next: from,
            hole_wait,
            waiting_since: None,
            tail: 0,
            ahead: VecDeque::new(),
            wait_tail: 0,
            overdue_below: 0,
        }
    }
}

impl Log {
    /// Refuses a trim mark above the log's tail: the units would then answer
    /// `trimmed` to every address the sequencer hands out below the mark, and
    /// appends would lose address after address. (A mark is never moved back.)
    fn check_trim_mark(&mut self, prefix: u64) -> Result<(), LogError> {
        let tail = self.check_fast()?;
        if prefix > tail {
            return Err(LogError::Invalid(format!(
                "cannot trim below {prefix}: the log's tail is {tail} (the next address the sequencer hands out), and a trim mark above it would make the units refuse the addresses in between to every append; trim at most {tail}"
            )));
        }
        Ok(())
    }
}

/// Refuses an entry the units would answer `too-large`, before it takes an
/// address (which would otherwise become a hole).
/// `which` names the entry in the message ("" for none).
fn check_entry_len(which: &str, entry: &[u8]) -> Result<(), LogError> {
    let max = trex_wire::MAX_ENTRY_LEN as usize;
    if entry.len() > max {
        return Err(LogError::Invalid(format!(
            "{which}entry too large: {} bytes, above the limit of one log entry, {} MiB ({max} bytes); split it",
            entry.len(),
            max >> 20
        )));
    }
    Ok(())
}

/// Bytes one write request may spend on its entries (its body less the count).
const WRITE_BUDGET: usize = trex_wire::MAX_BODY_LEN as usize - 4;

/// Whether `count` entries taking `bytes` together fit one write request (each
/// entry costs its length plus [`trex_wire::WRITE_OP_OVERHEAD`]).
pub(crate) fn fits_frame(count: usize, bytes: usize) -> bool {
    count <= trex_wire::MAX_OPS_PER_FRAME as usize
        && bytes + count * trex_wire::WRITE_OP_OVERHEAD <= WRITE_BUDGET
}

/// Splits a batch (by its entries' lengths, each within the entry limit) into
/// consecutive parts whose write requests fit a frame even if every entry of a
/// part maps to the same chain. Splitting before the token keeps one part's
/// addresses together, and any regrouping on a retry within the part fits too.
fn frame_parts(lens: impl Iterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut count, mut bytes) = (0, 0, 0);
    for (i, len) in lens.enumerate() {
        if count > 0 && !fits_frame(count + 1, bytes + len) {
            parts.push(start..i);
            (start, count, bytes) = (i, 0, 0);
        }
        count += 1;
        bytes += len;
    }
    if count > 0 {
        parts.push(start..start + count);
    }
    parts
}

/// An iterator over the log in address order (see [`Log::subscribe`]).
pub struct Subscription<'a> {
    log: &'a mut Log,
    next: u64,
    hole_wait: Duration,
    waiting_since: Option<Duration>,
    /// The sequencer's next address when last asked (the fast check).
    tail: u64,
    /// Decided slots read ahead, from `next` on (write-once: they stay true).
    ahead: VecDeque<Slot>,
    /// The tail when the current hole wait began: every address below it was
    /// handed out before the wait began.
    wait_tail: u64,
    /// Addresses below this are overdue: handed out before a hole wait that
    /// expired, so one still unwritten has waited as long, and is filled
    /// without a wait of its own (one wait per dead range, not per address).
    overdue_below: u64,
}

/// How many addresses a follower reads in one go below the tail.
const READ_AHEAD: u64 = 256;

impl Subscription<'_> {
    /// The next address it will yield.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Blocks until the next address is decided; returns it and what it holds.
    pub fn next_entry(&mut self) -> Result<(u64, Slot), LogError> {
        loop {
            if let Some(x) = self.try_next()? {
                return Ok(x);
            }
            self.log.env.sleep(Duration::from_millis(20));
        }
    }

    /// One look at the next address: `None` while it is still unwritten (at
    /// the tail, or a hole not yet overdue for filling). At the tail this costs
    /// one round trip to the sequencer (the fast check), not a read.
    pub fn try_next(&mut self) -> Result<Option<(u64, Slot)>, LogError> {
        let addr = self.next;
        if addr >= self.tail {
            // Polling at the tail: the sequencer's answer alone (no layout
            // read per poll). A deposed sequencer's old counter only makes
            // the follower wait, or read ahead to addresses still unwritten;
            // before any fill it asks again with the full fast check.
            self.tail = self.log.token(0)?.1;
            if addr >= self.tail {
                return Ok(None); // nothing handed out there yet
            }
        }
        if self.ahead.is_empty() && addr < self.overdue_below {
            self.fill_overdue(addr)?;
        }
        if self.ahead.is_empty() {
            // Read up to the tail in one go; keep what is decided, up to the
            // first address still unwritten.
            let slots = self
                .log
                .read_range(addr, (self.tail - addr).min(READ_AHEAD))?;
            self.keep_decided(slots);
        }
        match self.ahead.pop_front().ok_or("the log returned no slot")? {
            Slot::Unwritten => {
                // Handed out, not written: its writer is slow, or died.
                let now = self.log.env.now();
                let since = match self.waiting_since {
                    Some(since) => since,
                    None => {
                        self.wait_tail = self.tail;
                        *self.waiting_since.insert(now)
                    }
                };
                if now - since >= self.hole_wait {
                    // Ask again before filling: after a takeover the new
                    // sequencer may start below the old one's counter and hand
                    // this address out afresh.
                    self.tail = self.log.check_fast()?;
                    self.waiting_since = None;
                    if addr >= self.tail {
                        return Ok(None);
                    }
                    // Everything handed out before the wait began has waited
                    // as long: fill what of it is still unwritten together.
                    self.overdue_below = self.wait_tail.max(addr + 1);
                    self.fill_overdue(addr)?;
                    return self.try_next();
                }
                Ok(None)
            }
            s => {
                self.waiting_since = None;
                self.next += 1;
                Ok(Some((addr, s)))
            }
        }
    }

    /// Keeps the decided slots of a read from `next` on, up to the first
    /// unwritten one (just that one if it comes first).
    fn keep_decided(&mut self, slots: Vec<Slot>) {
        let upto = slots
            .iter()
            .position(|s| *s == Slot::Unwritten)
            .map_or(slots.len(), |k| k.max(1));
        self.ahead = slots.into_iter().take(upto).collect();
    }

    /// Reads from `addr` (overdue) up to `overdue_below` and fills every
    /// address there still unwritten in one batch ([`Log::fill_many`]), after
    /// asking the sequencer again (a new one may hand some of them out afresh:
    /// those are not overdue).
    fn fill_overdue(&mut self, addr: u64) -> Result<(), LogError> {
        let end = self.overdue_below.min(addr.saturating_add(READ_AHEAD));
        let mut slots = self.log.read_range(addr, end - addr)?;
        if slots.contains(&Slot::Unwritten) {
            self.tail = self.log.check_fast()?;
            self.overdue_below = self.overdue_below.min(self.tail);
            let holes: Vec<u64> = (addr..end)
                .filter(|a| {
                    *a < self.overdue_below && slots[(a - addr) as usize] == Slot::Unwritten
                })
                .collect();
            for (a, s) in holes.iter().zip(self.log.fill_many(&holes)?) {
                slots[(a - addr) as usize] = s;
            }
        }
        self.keep_decided(slots);
        Ok(())
    }
}

/// Whether a read answer says this replica's copy cannot be served — damaged
/// (`corrupt`) or unreadable (`io`: the device failed to return it) — so the
/// chain's other replicas are read instead, and the copy is rewritten from
/// them (`repair`).
pub(crate) fn unreadable_copy(s: Status) -> bool {
    matches!(s, Status::Corrupt | Status::Io)
}

/// The chain serving `addr` in projection `p`, if a segment of it holds
/// `addr` and has stripes.
fn chain_in(p: &Projection, addr: u64) -> Option<&[u64]> {
    let seg = p
        .segments
        .iter()
        .find(|s| s.start <= addr && addr < s.end)?;
    let n = seg.stripes.len() as u64;
    (n > 0).then(|| seg.stripes[(addr % n) as usize].as_slice())
}
