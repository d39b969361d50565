//! Restoring replication after a storage unit was taken out: a spare joins the
//! short chains, first for new addresses, then — once it holds a copy of the
//! old range — for old ones too.
//!
//! 1. **Join.** Seal every unit of the projection (and the spares) at epoch
//!    `e+1`; the highest tail the seals report, `T`, bounds every address an
//!    old-epoch write could have reached. Install `e+1` with the open segment
//!    split at `T`: below `T` the short chains stay as they are; from `T` on the
//!    spare is the new tail of each short chain. New appends are fully
//!    replicated from here.
//! 2. **Copy.** For each short chain of an old segment, in address order and in
//!    batches: read what the spare already has (so a rerun resumes instead of
//!    starting over), read the rest from the chain's tail, and write it to the
//!    spare with its original writer and sequence number (data) or as junk
//!    (holes). An address still unwritten is first filled through the old chain
//!    (completing a torn append, or junk), so nothing can land there afterwards
//!    that the spare would miss. Writes of identical data are idempotent at the
//!    unit, so a copy interrupted at any point and run again is safe.
//! 3. **Complete.** Install a projection with the spare at the tail of the old
//!    segment's chain too, merging segments whose chains are now equal.
//!
//! A spare must be empty: a unit that held entries before (one taken out and
//! restarted) could hold values the log since decided otherwise. Wipe its data
//! directory to reuse it.

use super::{slot_of, units_of, unreadable_copy, Log, Slot};
use crate::env::unit_alive;
use crate::error::{fail, LogError};
use std::collections::{BTreeMap, BTreeSet};
use trex_consensus::sm::{LayoutSegment, Op, Role};
use trex_net::unit_client::{ClientError, ReadItem, UnitApi};
use trex_net::util::list_text;
use trex_wire::ops::Refusal;
use trex_wire::{Status, WriteOp};

/// What a repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// (stripe, unit) pairs: which spare joined which stripe.
    pub joined: Vec<(usize, u64)>,
    /// Entries copied to spares.
    pub copied: u64,
    /// Holes copied (or filled first, then copied).
    pub holes: u64,
    /// Addresses the spare already held (a resumed copy).
    pub present: u64,
    /// Layout epoch at the end.
    pub epoch: u64,
    /// Damaged copies on units of the layout rewritten from another replica
    /// (see [`Log::repair_damaged`]).
    pub rewritten: u64,
}

/// Addresses per copy batch.
const BATCH: usize = 256;

/// Merges adjacent segments whose chains are equal.
fn merge(segments: Vec<LayoutSegment>) -> Vec<LayoutSegment> {
    let mut out: Vec<LayoutSegment> = Vec::new();
    for s in segments {
        match out.last_mut() {
            Some(prev) if prev.stripes == s.stripes && prev.end == s.start => prev.end = s.end,
            _ => out.push(s),
        }
    }
    out
}

impl Log {
    /// Takes units that stopped answering out of the layout, then restores
    /// every chain shorter than `replicas` (default: the longest chain) with
    /// empty spare storage units (registered, answering, in no chain), copying
    /// the old range to them. Resumable: run it again after an interruption and
    /// it continues. `progress` gets one line now and then.
    pub fn repair(
        &mut self,
        replicas: Option<usize>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<RepairReport, LogError> {
        let mut report = RepairReport::default();
        // First, while the replicas holding them intact are still in the
        // layout: a spare's copy or a unit taken out could leave a damaged
        // copy the only one.
        self.refresh()?;
        report.rewritten = self.repair_damaged(progress)?;
        self.join_spares(replicas, &mut report, progress)?;
        self.copy_to_joined(&mut report, progress)?;
        report.epoch = self.projection.epoch;
        Ok(report)
    }

    /// The units of the current projection that do not answer `info` on a
    /// fresh connection, or are poisoned, with why (the failure detector's
    /// probe; the same liveness rule as every other path, `env::unit_alive`).
    pub fn unreachable_units(&mut self) -> Result<Vec<(u64, String)>, LogError> {
        self.refresh()?;
        let mut down = Vec::new();
        for id in units_of(&self.projection.clone()) {
            let addr = self.addr(id)?;
            if let Err(e) = unit_alive(&mut *self.env, &addr) {
                down.push((id, e.to_string()));
            }
        }
        Ok(down)
    }

    /// Brings every answering unit of the layout up to the log's trim mark as
    /// the consensus group recorded it ([`Log::trim`]): a unit that missed a
    /// trim (down or cut off when it ran, or a spare that joined later)
    /// applies it once it answers again. Returns the units trimmed now; units
    /// that do not answer are left for the next call.
    ///
    /// A unit's own mark above the recorded one (set on that unit alone with
    /// `trex unit trim`, or by a build that did not record trims) is recorded
    /// first, unless it is above the log's tail: spreading that would make
    /// every unit refuse the addresses the sequencer hands out below it, so it
    /// is only logged.
    pub fn converge_trim(&mut self) -> Result<Vec<u64>, LogError> {
        let mut marks = BTreeMap::new();
        for id in units_of(&self.projection.clone()) {
            if let Ok(i) = self.with_unit(id, |c| c.info()) {
                marks.insert(id, i.trim_mark);
            }
        }
        let mut mark = self.trim_mark()?;
        let top = marks.values().copied().max().unwrap_or(0);
        if top.max(mark) == 0 {
            return Ok(Vec::new());
        }
        let tail = self.check_fast()?;
        if mark > tail {
            // Recorded by a client that did not check the tail (the state
            // machine cannot): spreading it would make every unit refuse the
            // addresses the sequencer hands out below it.
            trex_net::log_line!(
                "WARN",
                "the recorded trim mark {mark} is above the log's tail {tail}; not spreading it until the log reaches it"
            );
            return Ok(Vec::new());
        }
        if top > mark {
            if top > tail {
                trex_net::log_line!(
                    "WARN",
                    "a unit's trim mark {top} is above the log's tail {tail}; not spreading it (see `trex status`)"
                );
            } else {
                mark = self.record_trim(top)?;
            }
        }
        if marks.values().all(|m| *m >= mark) {
            return Ok(Vec::new());
        }
        let report = self.apply_trim(mark, Some(&marks));
        for id in &report.applied {
            trex_net::log_line!("INFO", "unit {id} missed a trim: trimmed it below {mark}");
        }
        Ok(report.applied)
    }

    /// Read repair for the copies no client reads (a head's, say): every
    /// unit of the layout whose `info` counts damaged records has the
    /// addresses of its chains read, and each it answers `corrupt` for is
    /// read from the chain's other replicas and rewritten on it, as a read
    /// that met the damage at the tail does (`repair`, allowed only over a
    /// damaged record; a damaged hole stays: junk is not rewritten). A unit
    /// whose damage could not all be repaired is read again only once its
    /// count changes. Returns the copies rewritten.
    pub fn repair_damaged(&mut self, progress: &mut dyn FnMut(&str)) -> Result<u64, LogError> {
        let p = self.projection.clone();
        let epoch = p.epoch;
        let mut rewritten = 0;
        for id in units_of(&p) {
            let Ok(info) = self.with_unit(id, |c| c.info()) else {
                continue;
            };
            if info.corrupt == 0 {
                self.scrubbed.remove(&id);
                continue;
            }
            if self.scrubbed.get(&id) == Some(&info.corrupt) {
                continue;
            }
            let mut unreadable = false;
            'segments: for seg in &p.segments {
                let n = seg.stripes.len() as u64;
                for (stripe, chain) in seg.stripes.iter().enumerate() {
                    if !chain.contains(&id) || chain.len() < 2 {
                        continue;
                    }
                    let from = seg.start.max(info.trim_mark);
                    // Up to the chain's tail, not only this unit's: a unit
                    // that lost its last entries (a segment cut short, its
                    // newest records gone) has a lower tail than its chain,
                    // and answers `corrupt` above it until they are copied.
                    let chain_tail = chain
                        .iter()
                        .filter(|u| **u != id)
                        .filter_map(|u| self.with_unit(*u, |c| c.info()).ok())
                        .map(|i| i.tail)
                        .fold(info.tail, u64::max);
                    let end = seg.end.min(chain_tail);
                    let mut a = from + (stripe as u64 + n - from % n) % n;
                    while a < end {
                        let addrs: Vec<u64> = (0..BATCH as u64)
                            .map(|k| a + k * n)
                            .take_while(|x| *x < end)
                            .collect();
                        let items = match self.with_unit(id, |c| c.read(epoch, &addrs)) {
                            Ok(v) => v,
                            Err(_) => {
                                unreadable = true;
                                break 'segments;
                            }
                        };
                        let cut = items
                            .iter()
                            .find(|it| it.status == Status::Deferred)
                            .map(|it| it.addr);
                        for it in items.iter().filter(|it| unreadable_copy(it.status)) {
                            if let Err(e) = self.read_elsewhere(it.addr, id, epoch) {
                                progress(&format!("unit {id}: {e}"));
                            }
                        }
                        a = match cut {
                            Some(c) if c > a => c,
                            Some(_) => {
                                unreadable = true;
                                break 'segments;
                            }
                            None => addrs[addrs.len() - 1] + n,
                        };
                    }
                }
            }
            let now = match self.with_unit(id, |c| c.info()) {
                Ok(i) => i.corrupt,
                Err(_) => continue,
            };
            let fixed = info.corrupt.saturating_sub(now);
            rewritten += fixed;
            if fixed > 0 {
                progress(&format!(
                    "unit {id}: rewrote {fixed} damaged copies from other replicas"
                ));
            }
            if now > 0 && !unreadable {
                progress(&format!(
                    "unit {id} still holds {now} damaged records no other replica could replace (holes, or damaged everywhere; `trex status`)"
                ));
                self.scrubbed.insert(id, now);
            }
        }
        Ok(rewritten)
    }

    /// Whether some chain of the open segment has fewer than `want` replicas.
    pub fn degraded(&self, want: usize) -> bool {
        self.projection
            .segments
            .last()
            .is_some_and(|s| s.stripes.iter().any(|c| c.len() < want))
    }

    /// Units that may join short chains — empty spares first, then units that
    /// returned with data (verified against the chain while they catch up) —
    /// answering, not poisoned, not full; why others were passed over.
    fn spares(&mut self, used: &BTreeSet<u64>) -> (Vec<u64>, Vec<String>) {
        let candidates: Vec<u64> = self
            .members
            .iter()
            .filter(|(id, m)| m.role == Role::Storage && !used.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let (mut ok, mut passed, mut returning) = (Vec::new(), Vec::new(), Vec::new());
        for id in candidates {
            match self.with_unit(id, |c| c.info()) {
                Ok(i) if i.flags & trex_wire::INFO_POISONED != 0 => {
                    passed.push(format!("unit {id} is poisoned"));
                }
                Ok(i) if i.flags & trex_wire::INFO_FULL != 0 => {
                    passed.push(format!("unit {id} is full"));
                }
                // A repair found it holding values the log decided otherwise:
                // joining it again would only take it out again (two epochs
                // per attempt) until someone wipes it.
                Ok(i) if (i.tail > 0 || i.trim_mark > 0) && self.conflicted.contains_key(&id) => {
                    let why = &self.conflicted[&id];
                    passed.push(format!(
                        "unit {id}: {why}; wipe its data directory to use it as a spare"
                    ));
                }
                // A unit returning with data rejoins like a spare: what it holds
                // is checked against the chain while it catches up. Empty spares
                // first.
                Ok(i) if i.tail > 0 || i.trim_mark > 0 => returning.push(id),
                Ok(_) => {
                    // Empty: wiped, if it was found in conflict before.
                    self.conflicted.remove(&id);
                    ok.push(id)
                }
                Err(e) => passed.push(format!("unit {id} does not answer ({e})")),
            }
        }
        ok.extend(returning);
        (ok, passed)
    }

    /// Step 1: spares join the short chains of the open segment from the
    /// sealed tail on.
    fn join_spares(
        &mut self,
        replicas: Option<usize>,
        report: &mut RepairReport,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LogError> {
        // Spares that could not be sealed (one that ran out of space answers
        // `info` as not full after a restart, until it fails to record
        // something): passed over by the next attempt, so one bad spare does
        // not stop the repair for good while another could join.
        let mut refused: BTreeSet<u64> = BTreeSet::new();
        // The recorded replication factor, unless the caller names one.
        let replicas = match replicas {
            Some(r) => Some(r),
            None => self.replication_target()?,
        };
        for _ in 0..self.max_retries {
            self.refresh()?;
            let p = self.projection.clone();
            // Take out units that stopped answering first (as an append that
            // met them would): they are what the spares replace.
            let mut gone = None;
            for id in units_of(&p) {
                let addr = self.addr(id)?;
                if let Err(e) = unit_alive(&mut *self.env, &addr) {
                    gone = Some((id, e));
                    break;
                }
            }
            if let Some((id, e)) = gone {
                self.reconfigure(id, &e.to_string())?;
                continue;
            }
            let want = replicas.unwrap_or_else(|| {
                p.segments
                    .iter()
                    .flat_map(|s| s.stripes.iter().map(Vec::len))
                    .max()
                    .unwrap_or(0)
            });
            let last = p.segments.last().ok_or("the layout has no segments")?;
            let short: Vec<usize> = (0..last.stripes.len())
                .filter(|i| last.stripes[*i].len() < want)
                .collect();
            if short.is_empty() {
                return Ok(());
            }
            let used = units_of(&p);
            let (spares, mut passed) = self.spares(&used.union(&refused).copied().collect());
            passed.extend(
                refused
                    .iter()
                    .map(|id| format!("unit {id} could not be sealed")),
            );
            if spares.is_empty() && !report.joined.is_empty() {
                progress(&format!(
                    "stripes {} are still short: no more empty spares ({})",
                    list_text(&short),
                    passed.join("; ")
                ));
                return Ok(());
            }
            if spares.is_empty() {
                return Err(fail!(
                    "stripes {} have fewer than {want} replicas and there is no empty spare storage unit{}; start one with `trex node storage --endpoints …` (or `trex up --units N` with N above stripes × replicas)",
                    list_text(&short),
                    if passed.is_empty() { String::new() } else { format!(" ({})", passed.join("; ")) }
                ));
            }
            let pairs: Vec<(usize, u64)> = short.iter().copied().zip(spares).collect();
            let epoch = trex_wire::range::next("epoch", p.epoch).map_err(|e| fail!("{e}"))?;
            let mut tail = 0;
            let mut again = false;
            let sealing: Vec<u64> = used
                .iter()
                .copied()
                .chain(pairs.iter().map(|(_, u)| *u))
                .collect();
            for id in sealing {
                match self.with_unit(id, |c| c.seal(epoch)) {
                    Ok(r) => {
                        // Sealed higher already: someone installed a newer layout.
                        again |= r.sealed_epoch > epoch;
                        tail = tail.max(r.tail);
                    }
                    Err(e) if used.contains(&id) => {
                        // A chain unit is gone: take it out first, then start over.
                        self.reconfigure(id, &e.to_string())?;
                        again = true;
                        break;
                    }
                    Err(e) => {
                        progress(&format!(
                            "spare unit {id} cannot be sealed ({e}): passed over"
                        ));
                        refused.insert(id);
                        again = true;
                        break;
                    }
                }
            }
            if again {
                continue;
            }
            let mut next = p.clone();
            next.epoch = epoch;
            let open = next.segments.pop().expect("checked above");
            let mut joined = open.clone();
            if tail > open.start {
                next.segments.push(LayoutSegment {
                    end: tail,
                    ..open.clone()
                });
                joined.start = tail;
            }
            for (stripe, unit) in &pairs {
                joined.stripes[*stripe].push(*unit);
            }
            next.segments.push(joined);
            let op = Op::Install {
                expected_epoch: p.epoch,
                projection: next,
            };
            match self.env.submit_ok(&op) {
                Ok(_) => {}
                Err(e) if e.is_refused(Refusal::EpochMismatch) => continue,
                Err(e) => return Err(e.into()),
            }
            for (stripe, unit) in &pairs {
                progress(&format!(
                    "epoch {epoch}: unit {unit} joins stripe {stripe} for addresses from {tail}; copying the addresses below"
                ));
            }
            report.joined.extend(pairs);
            // More short stripes than spares: the loop reports that next time.
        }
        self.refresh()
    }

    /// Steps 2 and 3: copy old segments to the units that joined their stripe
    /// later, then add them there too.
    fn copy_to_joined(
        &mut self,
        report: &mut RepairReport,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LogError> {
        for _ in 0..self.max_retries * 4 {
            self.refresh()?;
            let p = self.projection.clone();
            let last = p
                .segments
                .last()
                .ok_or("the layout has no segments")?
                .clone();
            // The first (segment, stripe, unit) still to copy.
            let todo = p.segments[..p.segments.len() - 1]
                .iter()
                .enumerate()
                .filter(|(_, s)| s.stripes.len() == last.stripes.len())
                .find_map(|(si, s)| {
                    s.stripes.iter().enumerate().find_map(|(i, chain)| {
                        last.stripes[i]
                            .iter()
                            .find(|u| !chain.contains(u))
                            .map(|u| (si, i, *u))
                    })
                });
            let Some((si, stripe, unit)) = todo else {
                let merged = merge(p.segments.clone());
                if merged.len() == p.segments.len() {
                    return Ok(());
                }
                let mut next = p.clone();
                next.epoch += 1;
                next.segments = merged;
                let op = Op::Install {
                    expected_epoch: p.epoch,
                    projection: next,
                };
                match self.env.submit_ok(&op) {
                    Ok(_) | Err(_) => continue, // installed, or raced: look again
                }
            };
            let seg = p.segments[si].clone();
            self.copy_stripe(&seg, stripe, unit, report, progress)?;
            let mut next = p.clone();
            next.epoch += 1;
            next.segments[si].stripes[stripe].push(unit);
            next.segments = merge(next.segments);
            let op = Op::Install {
                expected_epoch: p.epoch,
                projection: next,
            };
            match self.env.submit_ok(&op) {
                Ok(_) => progress(&format!(
                    "epoch {}: unit {unit} holds stripe {stripe} of addresses {}..{} and serves them",
                    p.epoch + 1,
                    seg.start,
                    seg.end
                )),
                Err(e) if e.is_refused(Refusal::EpochMismatch) => {} // raced: the copy is idempotent
                Err(e) => return Err(e.into()),
            }
        }
        Err("the layout kept changing while copying to spares; run repair again".into())
    }

    /// Copies stripe `stripe` of `seg` to `unit`.
    fn copy_stripe(
        &mut self,
        seg: &LayoutSegment,
        stripe: usize,
        unit: u64,
        report: &mut RepairReport,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LogError> {
        let n = seg.stripes.len() as u64;
        let source = *seg.stripes[stripe].last().ok_or("empty chain")?;
        let mut a = seg.start + (stripe as u64 + n - seg.start % n) % n;
        // Trimmed addresses are not copied: the spare starts at the trim mark.
        let mark = self
            .with_unit(source, |c| c.info())
            .map_err(|e| format!("unit {source}: {e}"))?
            .trim_mark;
        if mark > 0 {
            let epoch = self.projection.epoch;
            self.with_unit(unit, |c| c.trim(epoch, mark))
                .map_err(|e| format!("unit {unit}: {e}"))?;
        }
        let total = seg.end.saturating_sub(seg.start) / n;
        let mut done = 0u64;
        let mut batches = 0u64;
        while a < seg.end {
            let addrs: Vec<u64> = (0..BATCH as u64)
                .map(|k| a + k * n)
                .take_while(|x| *x < seg.end)
                .collect();
            if let Some(k) = self.copy_batch(&addrs, source, unit, report)? {
                a = addrs[k - 1] + n;
                done += k as u64;
                batches += 1;
                if batches.is_multiple_of(64) || a >= seg.end {
                    progress(&format!(
                        "unit {unit}, stripe {stripe}: {done} of {total} addresses copied"
                    ));
                }
            }
        }
        // A trim that ran during the copy reached the source but maybe not the
        // spare (not yet in the chain when it started): the source answered
        // `trimmed` there and nothing was copied, so the spare must not answer
        // `unwritten` once it serves the range.
        let now = self
            .with_unit(source, |c| c.info())
            .map_err(|e| format!("unit {source}: {e}"))?
            .trim_mark;
        if now > mark {
            let epoch = self.projection.epoch;
            self.with_unit(unit, |c| c.trim(epoch, now))
                .map_err(|e| format!("unit {unit}: {e}"))?;
        }
        Ok(())
    }

    /// One batch: how many of `addrs` (a prefix) are done, or `None` if the
    /// layout moved (the caller repeats the batch). A reply the unit cut short
    /// at its size limit (`deferred`) ends the prefix there.
    fn copy_batch(
        &mut self,
        addrs: &[u64],
        source: u64,
        unit: u64,
        report: &mut RepairReport,
    ) -> Result<Option<usize>, LogError> {
        let epoch = self.projection.epoch;
        let refresh =
            |log: &mut Log, e: ClientError, who: u64| -> Result<Option<usize>, LogError> {
                if log.seen_sealed(&e) {
                    log.refresh()?;
                    Ok(None)
                } else {
                    Err(fail!("unit {who}: {e}"))
                }
            };
        let have = match self.with_unit(unit, |c| c.read(epoch, addrs)) {
            Ok(v) => v,
            Err(e) => return refresh(self, e, unit),
        };
        // What the spare lacks (a deferred answer: ask the source anyway; an
        // identical rewrite is harmless), and what it already holds: a unit
        // returning with its old data, or a copy resumed, is only trusted where
        // its value is the one the chain decided (checked below).
        let need: Vec<u64> = have
            .iter()
            .filter(|it| matches!(it.status, Status::Unwritten | Status::Deferred))
            .map(|it| it.addr)
            .collect();
        let held: BTreeMap<u64, ReadItem> = have
            .into_iter()
            .filter(|it| matches!(it.status, Status::Ok | Status::Junk))
            .map(|it| (it.addr, it))
            .collect();
        let ask: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| need.contains(a) || held.contains_key(a))
            .collect();
        let found = if ask.is_empty() {
            Vec::new()
        } else {
            match self.with_unit(source, |c| c.read(epoch, &ask)) {
                Ok(v) => v,
                Err(e) => return refresh(self, e, source),
            }
        };
        // The prefix of `addrs` this round covers.
        let cut = found
            .iter()
            .find(|it| it.status == Status::Deferred)
            .map(|it| it.addr);
        let done = cut.map_or(addrs.len(), |c| {
            addrs.iter().take_while(|a| **a < c).count()
        });
        if done == 0 {
            return Err(fail!(
                "unit {source} cannot return even one entry of stripe addresses from {} in a reply",
                addrs[0]
            ));
        }
        let mut values: Vec<(u64, Slot)> = Vec::with_capacity(found.len());
        let mut conflicts = Vec::new();
        let mut verified = 0u64;
        for it in found
            .into_iter()
            .filter(|it| cut.is_none_or(|c| it.addr < c))
        {
            // A damaged copy on the source: read it from the chain's other
            // replicas (which also rewrites the source's copy).
            let it = if unreadable_copy(it.status) {
                self.read_elsewhere(it.addr, source, epoch)?
            } else {
                it
            };
            let (a, s) = slot_of(source, it)?;
            // Undecided: decide it through the old chain first.
            let s = match s {
                Slot::Unwritten => self.fill(a)?,
                s => s,
            };
            match held.get(&a) {
                None => values.push((a, s)),
                Some(mine) => {
                    let same = match (&s, mine.status) {
                        (Slot::Data { writer, seq, data }, Status::Ok) => {
                            *writer == mine.writer && *seq == mine.seq && *data == mine.data
                        }
                        (Slot::Hole, Status::Junk) | (Slot::Trimmed, _) => true,
                        _ => false,
                    };
                    if same {
                        verified += 1;
                    } else {
                        conflicts.push(a);
                    }
                }
            }
        }
        if !conflicts.is_empty() {
            // It returned with values the log decided otherwise (it was a head
            // whose write never got further, say): it cannot be a replica.
            let why = format!(
                "it holds values the log decided otherwise at addresses {}",
                list_text(&conflicts)
            );
            trex_net::log_line!(
                "WARN",
                "unit {unit}: {why}; taking it out; it is not joined again until its data directory is wiped (then it joins as an empty spare)"
            );
            self.conflicted.insert(unit, why.clone());
            self.take_out(unit, &why)?;
            return Err(fail!(
                "unit {unit} was taken out again: {why}; wipe its data directory to use it as a spare"
            ));
        }
        report.present += verified;
        let ops: Vec<WriteOp<'_>> = values
            .iter()
            .filter_map(|(addr, s)| match s {
                Slot::Data { writer, seq, data } => Some(WriteOp {
                    addr: *addr,
                    writer: *writer,
                    seq: *seq,
                    data,
                }),
                _ => None,
            })
            .collect();
        let holes: Vec<u64> = values
            .iter()
            .filter(|(_, s)| *s == Slot::Hole)
            .map(|(a, _)| *a)
            .collect();
        let epoch = self.projection.epoch;
        // Writes in requests of at most 8 MiB of entries (frames are bounded).
        let mut answers: Vec<(u64, Status)> = Vec::with_capacity(values.len());
        let mut chunk_start = 0;
        while chunk_start < ops.len() {
            let mut bytes = 0;
            let mut end = chunk_start;
            while end < ops.len() && (end == chunk_start || bytes + ops[end].data.len() <= 8 << 20)
            {
                bytes += ops[end].data.len();
                end += 1;
            }
            let chunk = &ops[chunk_start..end];
            match self.with_unit(unit, |c| c.write(epoch, chunk)) {
                Ok(st) => answers.extend(chunk.iter().map(|o| o.addr).zip(st)),
                Err(e) => return refresh(self, e, unit),
            }
            chunk_start = end;
        }
        if !holes.is_empty() {
            match self.with_unit(unit, |c| c.fill(epoch, &holes)) {
                // Junk already there is the same thing.
                Ok(st) => answers.extend(
                    holes
                        .iter()
                        .copied()
                        .zip(st)
                        .map(|(a, s)| (a, if s == Status::Junk { Status::Ok } else { s })),
                ),
                Err(e) => return refresh(self, e, unit),
            }
        }
        // Anything but `ok` means the spare already held something else there
        // (a spare is empty when it joins).
        let odd: Vec<u64> = answers
            .iter()
            .filter(|(_, s)| *s != Status::Ok)
            .map(|(a, _)| *a)
            .collect();
        if !odd.is_empty() {
            return Err(fail!(
                "unit {unit} already holds different values at addresses {}; it cannot serve as a copy of unit {source}: take it out and wipe it",
                list_text(&odd)
            ));
        }
        report.copied += ops.len() as u64;
        report.holes += holes.len() as u64;
        Ok(Some(done))
    }
}
