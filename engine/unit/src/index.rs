//! The storage unit's index: address → value, in pages.
//!
//! A unit indexes millions of addresses. A single hash map doubles now and
//! then, copying every entry while the event loop waits (tens of milliseconds
//! at a few million entries). Here addresses are grouped into pages of
//! `PAGE` consecutive addresses; a page holds its entries sorted by offset in a
//! small vector (appends arrive in address order, so an insert is a push), and
//! the pages sit in a hash map that is a thousand times smaller. No operation
//! copies more than one page. Trimming drops whole pages.
//!
//! The page map is keyed by a folded multiply of the page number with a
//! per-process random seed: a few cycles, and no way for a client to pick
//! addresses that collide.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// Addresses per page.
const PAGE: u64 = 1024;

/// A map from addresses to `V`, in pages (see the module docs).
#[derive(Clone, Debug)]
pub struct Index<V> {
    pages: HashMap<u64, Vec<(u16, V)>, AddrHash>,
    len: usize,
}

impl<V> Default for Index<V> {
    fn default() -> Self {
        Index::new()
    }
}

impl<V> Index<V> {
    /// An empty index.
    pub fn new() -> Index<V> {
        Index {
            pages: HashMap::with_hasher(AddrHash::new()),
            len: 0,
        }
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn split(addr: u64) -> (u64, u16) {
        (addr / PAGE, (addr % PAGE) as u16)
    }

    /// The value at `addr`.
    pub fn get(&self, addr: u64) -> Option<&V> {
        let (p, o) = Index::<V>::split(addr);
        let page = self.pages.get(&p)?;
        page.binary_search_by_key(&o, |(k, _)| *k)
            .ok()
            .map(|i| &page[i].1)
    }

    /// The value at `addr`, to change.
    pub fn get_mut(&mut self, addr: u64) -> Option<&mut V> {
        let (p, o) = Index::<V>::split(addr);
        let page = self.pages.get_mut(&p)?;
        match page.binary_search_by_key(&o, |(k, _)| *k) {
            Ok(i) => Some(&mut page[i].1),
            Err(_) => None,
        }
    }

    /// Sets `addr` to `v`; returns the value it replaced.
    pub fn insert(&mut self, addr: u64, v: V) -> Option<V> {
        let (p, o) = Index::<V>::split(addr);
        let page = self.pages.entry(p).or_default();
        if page.last().is_none_or(|(k, _)| *k < o) {
            page.push((o, v)); // the common case: in address order
            self.len += 1;
            return None;
        }
        match page.binary_search_by_key(&o, |(k, _)| *k) {
            Ok(i) => Some(std::mem::replace(&mut page[i].1, v)),
            Err(i) => {
                page.insert(i, (o, v));
                self.len += 1;
                None
            }
        }
    }

    /// Sets `addr` to `v` unless it holds a value already.
    pub fn insert_if_absent(&mut self, addr: u64, v: V) {
        if self.get(addr).is_none() {
            self.insert(addr, v);
        }
    }

    /// Keeps the entries for which `keep` says so.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &V) -> bool) {
        let mut len = 0;
        self.pages.retain(|p, page| {
            page.retain(|(o, v)| keep(p * PAGE + u64::from(*o), v));
            len += page.len();
            !page.is_empty()
        });
        self.len = len;
    }

    /// The highest address with a value.
    pub fn max_addr(&self) -> Option<u64> {
        self.pages
            .iter()
            .filter_map(|(p, page)| page.last().map(|(o, _)| p * PAGE + u64::from(*o)))
            .max()
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.pages
            .values()
            .flat_map(|page| page.iter().map(|(_, v)| v))
    }
}

/// Seeded folded-multiply hashing of `u64` keys.
#[derive(Clone, Copy, Debug)]
struct AddrHash(u64);

impl AddrHash {
    fn new() -> AddrHash {
        // Seeded from the standard library's per-process random keys.
        AddrHash(std::collections::hash_map::RandomState::new().hash_one(0x7472_6578u64) | 1)
    }
}

impl BuildHasher for AddrHash {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(self.0, 0)
    }
}

struct AddrHasher(u64, u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let m = u128::from(x ^ self.0 ^ self.1) * 0x9e37_79b9_7f4a_7c15;
        self.1 = (m as u64) ^ ((m >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_like_a_btreemap_under_random_operations() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20 {
            let mut idx: Index<u64> = Index::new();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let span = [100, 5_000, 1 << 40][round % 3];
            let mut next = 0u64;
            for step in 0..4_000 {
                let r = rnd();
                // Mostly appends in address order (as a unit sees them), some
                // random addresses, some overwrites, now and then a trim.
                let addr = match r % 10 {
                    0..=5 => {
                        next += 1 + r % 3;
                        next
                    }
                    6..=8 => rnd() % span,
                    _ => *model.keys().next().unwrap_or(&0),
                };
                match (r >> 8) % 20 {
                    0 => {
                        let mark = rnd() % (next + 1);
                        idx.retain(|a, _| a >= mark);
                        model.retain(|a, _| *a >= mark);
                    }
                    1..=3 => {
                        model.entry(addr).or_insert(step);
                        idx.insert_if_absent(addr, step);
                    }
                    4..=5 => {
                        if let Some(v) = idx.get_mut(addr) {
                            *v += 1;
                        }
                        if let Some(v) = model.get_mut(&addr) {
                            *v += 1;
                        }
                    }
                    _ => assert_eq!(idx.insert(addr, step), model.insert(addr, step)),
                }
                assert_eq!(idx.len(), model.len());
                assert_eq!(idx.get(addr), model.get(&addr), "round {round} step {step}");
            }
            assert_eq!(idx.max_addr(), model.keys().next_back().copied());
            let mut vals: Vec<u64> = idx.values().copied().collect();
            let mut want: Vec<u64> = model.values().copied().collect();
            vals.sort_unstable();
            want.sort_unstable();
            assert_eq!(vals, want);
            for (a, v) in &model {
                assert_eq!(idx.get(*a), Some(v));
            }
        }
    }
}
