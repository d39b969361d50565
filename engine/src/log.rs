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

use crate::client::{ClientError, UnitClient};
use crate::consensus::client::ConsensusClient;
use crate::consensus::sm::{Member, Projection};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use trex_wire::{ErrorCode, Opcode, Status, TokenReply, WriteOp};

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

/// A client of the shared log.
pub struct Log {
    consensus: ConsensusClient,
    projection: Projection,
    members: BTreeMap<u64, Member>,
    units: HashMap<u64, UnitClient>,
    sequencer: Option<UnitClient>,
    writer: u64,
    seq: u64,
    timeout: Duration,
    /// How many times an operation refreshes the layout and retries.
    pub max_retries: usize,
}

fn random_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn sealed(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::SealedEpoch)
}

impl Log {
    /// Connects: learns the layout from the consensus nodes at `endpoints`.
    pub fn connect(endpoints: &str) -> Result<Log, String> {
        let timeout = Duration::from_secs(2);
        let mut log = Log {
            consensus: ConsensusClient::new(endpoints, timeout)?,
            projection: Projection::default(),
            members: BTreeMap::new(),
            units: HashMap::new(),
            sequencer: None,
            writer: random_u64(),
            seq: 0,
            timeout,
            max_retries: 20,
        };
        log.refresh()?;
        Ok(log)
    }

    /// The cached projection.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// Reads the layout again (after `SealedEpoch`, or a sequencer change).
    pub fn refresh(&mut self) -> Result<(), String> {
        let (_, p) = self.consensus.layout()?;
        self.projection =
            p.ok_or("no layout is installed; run `trex layout init` (or `trex up`)")?;
        self.members = self.consensus.members()?;
        self.units.clear();
        self.sequencer = None;
        Ok(())
    }

    /// The chain (unit ids, head first) serving `addr`.
    pub fn chain(&self, addr: u64) -> Result<Vec<u64>, String> {
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
            return Err(format!(
                "layout epoch {} has a segment without stripes",
                self.projection.epoch
            ));
        }
        Ok(seg.stripes[(addr % n) as usize].clone())
    }

    fn unit(&mut self, id: u64) -> Result<&mut UnitClient, String> {
        if !self.units.contains_key(&id) {
            let m = self
                .members
                .get(&id)
                .ok_or_else(|| format!("storage unit {id} is not registered"))?;
            let c = UnitClient::connect(&m.addr, self.timeout)
                .map_err(|e| format!("unit {id}: {e}"))?;
            self.units.insert(id, c);
        }
        Ok(self.units.get_mut(&id).expect("inserted above"))
    }

    /// Takes a unit's client out of the cache (connecting if needed), for a
    /// writer thread; it is put back afterwards.
    fn take_unit(&mut self, id: u64) -> Result<UnitClient, String> {
        self.unit(id)?;
        Ok(self.units.remove(&id).expect("connected above"))
    }

    fn sequencer_client(&mut self) -> Result<&mut UnitClient, String> {
        if self.sequencer.is_none() {
            let id = self.projection.sequencer;
            let m = self.members.get(&id).ok_or_else(|| {
                format!("layout epoch {} names no registered sequencer; start one with `trex node sequencer`", self.projection.epoch)
            })?;
            self.sequencer = Some(
                UnitClient::connect(&m.addr, self.timeout)
                    .map_err(|e| format!("sequencer {id}: {e}"))?,
            );
        }
        Ok(self.sequencer.as_mut().expect("set above"))
    }

    /// `count` consecutive addresses and their epoch from the sequencer.
    pub fn token(&mut self, count: u32) -> Result<(u64, u64), String> {
        // Long enough for a standby to take over (lease TTL + grace + sealing), or
        // for the sequencer to adopt a reconfigured epoch (a third of its TTL).
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let reply = match self.sequencer_client() {
                Ok(c) => c
                    .call(Opcode::Token, 0, |b| {
                        trex_wire::encode_token_request(b, count)
                    })
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
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
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    return Ok((epoch, first));
                }
                Ok(TokenReply::NotSequencer { .. }) | Err(_) => {
                    // Taking over, or gone: look again (the consensus group may
                    // itself be electing; keep trying until the deadline).
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = self.refresh();
                    self.sequencer = None;
                }
            }
        }
        Err("no sequencer handed out addresses; is one running and holding the lease? (`trex status`)".into())
    }

    /// Appends one entry; returns its address.
    pub fn append(&mut self, data: &[u8]) -> Result<u64, String> {
        Ok(self.append_batch(&[data])?[0])
    }

    /// Appends entries; returns their addresses (consecutive unless a race
    /// forced a retry).
    ///
    /// An entry keeps its address across a layout change (a seal, or a failed
    /// unit taken out): it is written again at the same address under the new
    /// epoch, which the units answer idempotently if part of the chain already has
    /// it, so a retried append never shows up twice. Only an address another
    /// writer or a filler took first is given up for a new one.
    pub fn append_batch(&mut self, entries: &[&[u8]]) -> Result<Vec<u64>, String> {
        let n = entries.len();
        let seqs: Vec<u64> = entries
            .iter()
            .map(|_| {
                self.seq += 1;
                self.seq
            })
            .collect();
        let mut addr_of: Vec<Option<u64>> = vec![None; n];
        let mut done = vec![false; n];
        for _ in 0..self.max_retries {
            let need: Vec<usize> = (0..n)
                .filter(|i| !done[*i] && addr_of[*i].is_none())
                .collect();
            if !need.is_empty() {
                let (_, first) = self.token(need.len() as u32)?;
                for (k, i) in need.iter().enumerate() {
                    addr_of[*i] = Some(first + k as u64);
                }
            }
            let epoch = self.projection.epoch;
            let mut by_chain: BTreeMap<Vec<u64>, Vec<usize>> = BTreeMap::new();
            for i in (0..n).filter(|i| !done[*i]) {
                let addr = addr_of[i].expect("assigned above");
                by_chain.entry(self.chain(addr)?).or_default().push(i);
            }
            if by_chain.is_empty() {
                return Ok(addr_of.into_iter().map(|a| a.unwrap_or_default()).collect());
            }
            let mut refresh = false;
            // Every chain is written in parallel; within a chain, head to tail.
            let mut work = Vec::new();
            for (chain, items) in by_chain {
                let mut clients = Vec::new();
                let mut down = None;
                for unit in &chain {
                    match self.take_unit(*unit) {
                        Ok(c) => clients.push((*unit, c)),
                        Err(e) => {
                            down = Some((*unit, e));
                            break;
                        }
                    }
                }
                work.push((items, clients, down));
            }
            let (writer, addr_ref, seq_ref) = (self.writer, &addr_of, &seqs);
            let run = |(items, mut clients, down): ChainWork| -> ChainResult {
                if let Some((unit, e)) = down {
                    return (items, clients, ChainOutcome::Failed(unit, e));
                }
                let ops: Vec<WriteOp<'_>> = items
                    .iter()
                    .map(|i| WriteOp {
                        addr: addr_ref[*i].unwrap_or_default(),
                        writer,
                        seq: seq_ref[*i],
                        data: entries[*i],
                    })
                    .collect();
                let outcome = write_chain(&mut clients, epoch, &ops);
                (items, clients, outcome)
            };
            // Threads pay off only when there is real data to move (measured: with
            // 100-byte entries they cost more than they save).
            let bytes: usize = entries.iter().map(|e| e.len()).sum();
            let results: Vec<ChainResult> = if work.len() > 1 && bytes >= 32 * 1024 {
                std::thread::scope(|sc| {
                    let handles: Vec<_> =
                        work.into_iter().map(|w| sc.spawn(move || run(w))).collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("chain writer thread"))
                        .collect()
                })
            } else {
                work.into_iter().map(run).collect()
            };
            for (items, clients, outcome) in results {
                for (unit, c) in clients {
                    self.units.insert(unit, c);
                }
                let lost = match outcome {
                    ChainOutcome::Done(lost) => lost,
                    ChainOutcome::Sealed => {
                        refresh = true;
                        continue;
                    }
                    ChainOutcome::Failed(unit, e) => {
                        // The unit is gone: take it out of the layout, retry.
                        self.units.remove(&unit);
                        self.reconfigure(unit, &e)?;
                        refresh = true;
                        continue;
                    }
                    ChainOutcome::Refused(e) => return Err(e),
                };
                for (k, i) in items.iter().enumerate() {
                    if lost[k] {
                        addr_of[*i] = None;
                    } else {
                        done[*i] = true;
                    }
                }
            }
            if done.iter().all(|d| *d) {
                return Ok(addr_of.into_iter().map(|a| a.unwrap_or_default()).collect());
            }
            if refresh {
                self.refresh()?;
            }
        }
        Err(format!(
            "{} entries could not be appended after {} tries (the layout kept changing, or addresses kept being filled); others of this batch may already be in the log",
            done.iter().filter(|d| !**d).count(),
            self.max_retries
        ))
    }

    /// Reads `addr` from the tail of its chain.
    pub fn read(&mut self, addr: u64) -> Result<Slot, String> {
        Ok(self.read_range(addr, 1)?.remove(0))
    }

    /// Reads `count` consecutive addresses.
    pub fn read_range(&mut self, from: u64, count: u64) -> Result<Vec<Slot>, String> {
        for _ in 0..self.max_retries {
            let epoch = self.projection.epoch;
            let mut by_tail: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for a in from..from.saturating_add(count) {
                let tail = *self.chain(a)?.last().ok_or("empty chain")?;
                by_tail.entry(tail).or_default().push(a);
            }
            let mut got: BTreeMap<u64, Slot> = BTreeMap::new();
            let mut refresh = false;
            // (A reply full at 16 MiB answers `deferred` for the rest: ask again.)
            let mut work: Vec<(u64, Vec<u64>)> = by_tail.into_iter().collect();
            while let Some((unit, addrs)) = work.pop() {
                let read = match self.unit(unit) {
                    Ok(c) => c.read(epoch, &addrs),
                    Err(e) => Err(ClientError::Io(e)),
                };
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
                                    return Err(format!(
                                        "unit {unit} answered {other} for address {}",
                                        it.addr
                                    ))
                                }
                            };
                            got.insert(it.addr, s);
                        }
                    }
                    Err(e) if sealed(&e) => refresh = true,
                    Err(e) => {
                        self.units.remove(&unit);
                        self.reconfigure(unit, &e.to_string())?;
                        refresh = true;
                    }
                }
            }
            if refresh {
                // Never answer "unwritten" from a stale layout: read the current one.
                self.refresh()?;
                continue;
            }
            return Ok(got.into_values().collect());
        }
        Err("the layout kept changing while reading".into())
    }

    /// Fills a hole: completes a torn append if the head has a value, else junk
    /// down the chain. Returns what the address holds afterwards.
    pub fn fill(&mut self, addr: u64) -> Result<Slot, String> {
        for _ in 0..self.max_retries {
            let epoch = self.projection.epoch;
            let chain = self.chain(addr)?;
            let head = chain[0];
            let read = match self.unit(head) {
                Ok(c) => c.read(epoch, &[addr]),
                Err(e) => Err(ClientError::Io(e)),
            };
            let found = match read {
                Ok(mut v) => v.remove(0),
                Err(e) if sealed(&e) => {
                    self.refresh()?;
                    continue;
                }
                Err(e) => {
                    self.units.remove(&head);
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
                let r = match self.unit(*unit) {
                    Ok(c) => match &copy {
                        Some(op) => c.write(epoch, &[*op]),
                        None => c.fill(epoch, &[addr]),
                    },
                    Err(e) => Err(ClientError::Io(e)),
                };
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
                        other => {
                            return Err(format!("unit {unit} refused to fill {addr}: {other}"))
                        }
                    },
                    Err(e) if sealed(&e) => {
                        self.refresh()?;
                        again = true;
                        break;
                    }
                    Err(e) => {
                        self.units.remove(unit);
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
        Err(format!("address {addr} could not be filled: the layout kept changing; try again (`trex status` shows the layout)"))
    }

    /// Takes a storage unit that stopped answering out of the layout: installs a
    /// projection one epoch higher with `failed` removed from every chain (the
    /// survivors keep serving the whole range), then seals every remaining unit at
    /// that epoch so no write of the old epoch lands anywhere. Another client may
    /// have done it already; that is fine.
    pub fn reconfigure(&mut self, failed: u64, why: &str) -> Result<(), String> {
        self.refresh()?;
        let p = self.projection.clone();
        if !p
            .segments
            .iter()
            .any(|s| s.stripes.iter().any(|c| c.contains(&failed)))
        {
            return Ok(()); // someone else took it out already
        }
        // A unit that still answers and is not poisoned is not gone (a timeout, a
        // dropped connection): leave it in, and let the caller retry.
        if let Some(m) = self.members.get(&failed) {
            let probe =
                UnitClient::connect(&m.addr, Duration::from_millis(500)).and_then(|mut c| c.info());
            if probe.is_ok_and(|i| i.flags & trex_wire::INFO_POISONED == 0) {
                return Ok(());
            }
        }
        let mut next = p.clone();
        next.epoch = p.epoch + 1;
        for seg in &mut next.segments {
            for chain in &mut seg.stripes {
                chain.retain(|u| *u != failed);
                if chain.is_empty() {
                    return Err(format!(
                        "storage unit {failed} failed ({why}) and was the last replica of its stripe: entries there are unavailable until it returns"
                    ));
                }
            }
        }
        let op = crate::consensus::sm::Op::Install {
            expected_epoch: p.epoch,
            projection: next.clone(),
        };
        match self.consensus.submit_ok(&op) {
            Ok(_) => {}
            Err(e) if e.contains("epoch is") => return self.refresh(), // raced: read again
            Err(e) => return Err(e),
        }
        crate::log!(
            "WARN",
            "storage unit {failed} failed ({why}); installed layout epoch {} without it",
            next.epoch
        );
        let mut units: Vec<u64> = next
            .segments
            .iter()
            .flat_map(|s| s.stripes.iter().flatten().copied())
            .collect();
        // The removed unit too, in case it is alive after all: then it refuses
        // clients with the old layout instead of answering them "unwritten".
        units.push(failed);
        self.members = self.consensus.members()?;
        for id in units {
            if let Err(e) = self
                .unit(id)
                .and_then(|c| c.seal(next.epoch).map_err(|e| e.to_string()))
            {
                if id != failed {
                    crate::log!(
                        "WARN",
                        "could not seal unit {id} at epoch {}: {e}",
                        next.epoch
                    );
                }
            }
        }
        self.refresh()
    }

    /// The slow check: one past the highest address any unit of the current
    /// projection holds.
    pub fn check(&mut self) -> Result<u64, String> {
        let ids: Vec<u64> = self
            .projection
            .segments
            .iter()
            .flat_map(|s| s.stripes.iter().flatten().copied())
            .collect();
        let mut tail = 0;
        for id in ids {
            tail = tail.max(
                self.unit(id)?
                    .info()
                    .map_err(|e| format!("unit {id}: {e}"))?
                    .tail,
            );
        }
        Ok(tail)
    }

    /// Trims every unit of the projection below `prefix`.
    pub fn trim(&mut self, prefix: u64) -> Result<(), String> {
        let epoch = self.projection.epoch;
        let ids: Vec<u64> = self
            .projection
            .segments
            .iter()
            .flat_map(|s| s.stripes.iter().flatten().copied())
            .collect();
        for id in ids {
            self.unit(id)?
                .trim(epoch, prefix)
                .map_err(|e| format!("unit {id}: {e}"))?;
        }
        Ok(())
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
        }
    }
}

/// One chain to write: its entries (indices), its unit clients, and a unit that
/// could not even be reached.
type ChainWork = (Vec<usize>, Vec<(u64, UnitClient)>, Option<(u64, String)>);

/// One chain's entries (indices), its unit clients (to put back), and outcome.
type ChainResult = (Vec<usize>, Vec<(u64, UnitClient)>, ChainOutcome);

/// How writing one chain went.
enum ChainOutcome {
    /// Every unit answered; per op, whether its address was lost to another writer.
    Done(Vec<bool>),
    /// A unit is sealed at a newer epoch: refresh and retry at the same addresses.
    Sealed,
    /// A unit failed (connecting or mid-call).
    Failed(u64, String),
    /// A unit refused for a reason no retry fixes.
    Refused(String),
}

/// Writes `ops` to every unit of a chain, head first. An op that lost its
/// address at one unit goes no further down: a value is only ever copied down
/// the chain in order.
fn write_chain(units: &mut [(u64, UnitClient)], epoch: u64, ops: &[WriteOp<'_>]) -> ChainOutcome {
    let mut lost = vec![false; ops.len()];
    for (unit, c) in units.iter_mut() {
        let active: Vec<usize> = (0..ops.len()).filter(|k| !lost[*k]).collect();
        if active.is_empty() {
            break;
        }
        let batch: Vec<WriteOp<'_>> = active.iter().map(|k| ops[*k]).collect();
        match c.write(epoch, &batch) {
            Ok(st) => {
                for (j, s) in st.iter().enumerate() {
                    let k = active[j];
                    match s {
                        Status::Ok => {}
                        // Someone took the address first: get another.
                        Status::Written | Status::Junk | Status::Trimmed => lost[k] = true,
                        other => {
                            return ChainOutcome::Refused(format!(
                                "unit {unit} refused address {}: {other}",
                                ops[k].addr
                            ))
                        }
                    }
                }
            }
            Err(e) if sealed(&e) => return ChainOutcome::Sealed,
            Err(e) => return ChainOutcome::Failed(*unit, e.to_string()),
        }
    }
    ChainOutcome::Done(lost)
}

/// An iterator over the log in address order (see [`Log::subscribe`]).
pub struct Subscription<'a> {
    log: &'a mut Log,
    next: u64,
    hole_wait: Duration,
    waiting_since: Option<Instant>,
}

impl Subscription<'_> {
    /// The next address it will yield.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Blocks until the next address is decided; returns it and what it holds.
    pub fn next_entry(&mut self) -> Result<(u64, Slot), String> {
        loop {
            let addr = self.next;
            match self.log.read(addr)? {
                Slot::Unwritten => {
                    let since = *self.waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.hole_wait && self.log.check()? > addr {
                        let s = self.log.fill(addr)?;
                        self.waiting_since = None;
                        self.next += 1;
                        return Ok((addr, s));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                s => {
                    self.waiting_since = None;
                    self.next += 1;
                    return Ok((addr, s));
                }
            }
        }
    }
}
