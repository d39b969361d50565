//! Filling a run of holes at once: [`Log::fill_many`], what a follower uses
//! once a dead writer's range is overdue (see [`crate::Subscription`]).

use super::{Log, Slot};
use crate::error::LogError;
use std::collections::BTreeMap;
use trex_net::unit_client::UnitApi;
use trex_wire::Status;

impl Log {
    /// Fills every address of `addrs`, as [`Log::fill`] fills one, and returns
    /// what each holds afterwards, in order.
    ///
    /// The common case — nothing at the head — is batched: per chain, one read
    /// of the head for all its addresses, then one fill request per unit, in
    /// chain order, for the addresses every earlier unit junked. Anything else
    /// (a value at the head to copy down, a slow writer racing the fill, a
    /// sealed or failed unit, any other status) is left to [`Log::fill`], the
    /// one place that knows how to finish it.
    pub fn fill_many(&mut self, addrs: &[u64]) -> Result<Vec<Slot>, LogError> {
        let epoch = self.projection.epoch;
        let mut by_chain: BTreeMap<Vec<u64>, Vec<u64>> = BTreeMap::new();
        for a in addrs {
            by_chain.entry(self.chain(*a)?).or_default().push(*a);
        }
        let mut got: BTreeMap<u64, Slot> = BTreeMap::new();
        for (chain, asked) in by_chain {
            let mut junk = Vec::new();
            match self.with_unit(chain[0], |c| c.read(epoch, &asked)) {
                Ok(items) => {
                    for it in items {
                        match it.status {
                            Status::Trimmed => {
                                got.insert(it.addr, Slot::Trimmed);
                            }
                            Status::Unwritten | Status::Junk => junk.push(it.addr),
                            _ => {} // a value to copy down, or trouble: fill() decides
                        }
                    }
                }
                Err(e) => {
                    self.seen_sealed(&e);
                }
            }
            for unit in &chain {
                if junk.is_empty() {
                    break;
                }
                match self.with_unit(*unit, |c| c.fill(epoch, &junk)) {
                    Ok(st) => {
                        junk = junk
                            .iter()
                            .zip(st)
                            .filter(|(_, s)| *s == Status::Ok)
                            .map(|(a, _)| *a)
                            .collect();
                    }
                    Err(e) => {
                        self.seen_sealed(&e);
                        junk.clear();
                    }
                }
            }
            for a in junk {
                got.insert(a, Slot::Hole);
            }
        }
        addrs
            .iter()
            .map(|a| match got.remove(a) {
                Some(s) => Ok(s),
                None => self.fill(*a),
            })
            .collect()
    }
}
