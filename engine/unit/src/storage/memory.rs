//! An in-memory [`Store`] for tests and the deterministic simulator. It keeps
//! encoded records exactly as the disk store does, so checksums are real, and it
//! can (a) lose every record not covered by a completed sync, as a power loss
//! would, (b) corrupt chosen records, and (c) fail reads of chosen addresses
//! and every append, as a failing device would (EIO).

use super::record::{decode_record, encode_record, record_size, Format};
use super::{
    AppendError, Appended, Kind, Loc, ReadError, RecordHead, Recovered, Store, StoreStats, SyncJob,
};

const NONCE: u64 = 0x7472_6578_6d65_6d00;

/// Records in memory; `Loc::off` is the record's index.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    records: Vec<Option<Vec<u8>>>,
    synced: usize,
    syncing: Option<usize>,
    max_payload: usize,
    /// Appends fail with `Full` once this many records exist (None: never).
    pub capacity: Option<usize>,
    /// A byte budget, like a small disk: a data or junk append fails with
    /// `Full` when the encoded records kept (crash-dropped and reclaimed ones
    /// do not count) would exceed it (None: never). Meta records (a seal, a
    /// trim mark) are never refused for space, as the disk store keeps room
    /// for them outside its data space (`mmap.rs`, the `META` file): a full
    /// unit can always be fenced. Junk (a fill) may go
    /// [`MemStore::fill_reserve_bytes`] over it, as the disk store keeps room
    /// at the end of each segment that only fills and meta records use.
    pub budget_bytes: Option<u64>,
    /// How far over [`MemStore::budget_bytes`] junk records may go.
    pub fill_reserve_bytes: u64,
    /// Records (by index) whose reads fail with an I/O error, as a bad
    /// sector's would: see [`MemStore::fail_reads`].
    failing_reads: std::collections::BTreeSet<usize>,
    /// Every append fails with an I/O error (a device that fails writes).
    pub failing_writes: bool,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore {
            max_payload: trex_wire::MAX_ENTRY_LEN as usize,
            fill_reserve_bytes: 64 * super::record::RECORD_HEADER_LEN as u64,
            ..MemStore::default()
        }
    }

    /// Power loss: drops every record not covered by a completed sync.
    pub fn crash(&mut self) {
        self.records.truncate(self.synced);
        self.syncing = None;
    }

    /// Flips a byte inside the newest record that names `addr`. Returns false if
    /// there is none.
    pub fn corrupt(&mut self, addr: u64) -> bool {
        for r in self.records.iter_mut().rev().flatten() {
            if let Ok((h, _, _)) = decode_record(r, NONCE, usize::MAX, Format::V2) {
                if h.addr == addr && h.kind != Kind::Meta {
                    let last = r.len() - 1;
                    r[last / 2] ^= 0x40;
                    return true;
                }
            }
        }
        false
    }

    /// Flips one byte of the newest record that names `addr`, inside what the
    /// record checksum covers but outside the header (whose own checksum would
    /// then fail, leaving the record unattributed): a payload byte, or the
    /// record checksum of a record without payload. Recovery then sees
    /// a record of `addr` failing its checksum (unlike [`MemStore::corrupt`],
    /// whose flip may land in the header and leave the record unattributed).
    /// Returns false if there is none.
    pub fn corrupt_payload(&mut self, addr: u64) -> bool {
        for r in self.records.iter_mut().rev().flatten() {
            if let Ok((h, p, _)) = decode_record(r, NONCE, usize::MAX, Format::V2) {
                if h.addr == addr && h.kind != Kind::Meta {
                    // (Without payload: the record checksum itself, which the
                    // header checksum does not cover.)
                    let at = if p.is_empty() {
                        1
                    } else {
                        super::record::RECORD_HEADER_LEN + p.len() / 2
                    };
                    r[at] ^= 0x40;
                    return true;
                }
            }
        }
        false
    }

    /// Makes reads of the newest record that names `addr` fail with an I/O
    /// error from now on, as a bad sector would: the bytes stay intact, the
    /// device just does not return them; a record written again (elsewhere)
    /// reads fine. Returns false if there is none.
    pub fn fail_reads(&mut self, addr: u64) -> bool {
        for (i, r) in self.records.iter().enumerate().rev() {
            let Some(r) = r else { continue };
            if let Ok((h, _, _)) = decode_record(r, NONCE, usize::MAX, Format::V2) {
                if h.addr == addr && h.kind != Kind::Meta {
                    self.failing_reads.insert(i);
                    return true;
                }
            }
        }
        false
    }

    /// Bytes of the records kept (what [`MemStore::budget_bytes`] limits).
    pub fn used_bytes(&self) -> u64 {
        self.records.iter().flatten().map(|r| r.len() as u64).sum()
    }

    /// The addresses the store holds a record for (any kind but meta, intact
    /// or not), oldest record first, each once.
    pub fn addresses(&self) -> Vec<u64> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for r in self.records.iter().flatten() {
            let h = match decode_record(r, NONCE, usize::MAX, Format::V2) {
                Ok((h, _, _)) => h,
                Err(super::record::Invalid::BadChecksum(h)) => h,
                Err(_) => continue,
            };
            if h.kind != Kind::Meta && seen.insert(h.addr) {
                out.push(h.addr);
            }
        }
        out
    }

    /// Records appended and not yet durable.
    pub fn unsynced(&self) -> usize {
        self.records.len() - self.synced
    }
}

impl Store for MemStore {
    fn recover(&mut self, visit: &mut dyn FnMut(Recovered)) -> Result<(), String> {
        for (i, r) in self.records.iter().enumerate() {
            let Some(r) = r else { continue };
            let loc = Loc {
                seg: 0,
                off: i as u32,
            };
            match decode_record(r, NONCE, self.max_payload, Format::V2) {
                Ok((h, _, _)) if h.kind == Kind::Meta => visit(Recovered::Meta(h.as_meta())),
                Ok((h, _, _)) => visit(Recovered::Record {
                    addr: h.addr,
                    kind: h.kind,
                    loc,
                }),
                Err(super::record::Invalid::BadChecksum(h)) if h.kind == Kind::Meta => {
                    visit(Recovered::CorruptMeta { loc })
                }
                Err(super::record::Invalid::BadChecksum(h)) => visit(Recovered::Corrupt {
                    addr: Some(h.addr),
                    loc,
                }),
                Err(_) => visit(Recovered::Corrupt { addr: None, loc }),
            }
        }
        self.synced = self.records.len();
        Ok(())
    }

    fn append(&mut self, head: &RecordHead, payload: &[u8]) -> Result<Appended, AppendError> {
        if self.failing_writes {
            return Err(AppendError::Io("injected write error (EIO)".into()));
        }
        if self.capacity.is_some_and(|c| self.records.len() >= c) {
            return Err(AppendError::Full("memory store at capacity".into()));
        }
        if let Some(budget) = self.budget_bytes.filter(|_| head.kind != Kind::Meta) {
            let need = record_size(payload.len()) as u64;
            let budget = if head.kind == Kind::Junk {
                budget + self.fill_reserve_bytes
            } else {
                budget
            };
            if self.used_bytes() + need > budget {
                return Err(AppendError::Full(format!(
                    "memory store over its budget of {budget} bytes"
                )));
            }
        }
        let mut buf = vec![0u8; record_size(payload.len())];
        encode_record(&mut buf, NONCE, head, payload);
        self.records.push(Some(buf));
        let off = self.records.len() - 1;
        Ok(Appended {
            loc: Loc {
                seg: 0,
                off: off as u32,
            },
            lsn: self.records.len() as u64,
        })
    }

    fn read(&self, loc: Loc) -> Result<(RecordHead, &[u8]), ReadError> {
        let rec = self
            .records
            .get(loc.off as usize)
            .and_then(|r| r.as_deref());
        match rec.map(|r| decode_record(r, NONCE, self.max_payload, Format::V2)) {
            Some(Ok(_)) if self.failing_reads.contains(&(loc.off as usize)) => Err(ReadError::Io {
                loc,
                why: "injected read error (EIO)".into(),
            }),
            Some(Ok((h, p, _))) => Ok((h, p)),
            _ => Err(ReadError::Corrupt(loc)),
        }
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn verify_copy(&self, loc: Loc, head: &RecordHead, payload: &[u8]) -> Option<bool> {
        if self.failing_reads.contains(&(loc.off as usize)) {
            return None; // the device returns nothing of it
        }
        let rec = self.records.get(loc.off as usize)?.as_deref()?;
        super::record::check_copy(rec, NONCE, Format::V2, head, payload)
    }

    fn begin_sync(&mut self) -> Option<SyncJob> {
        if self.records.len() == self.synced || self.syncing.is_some() {
            return None;
        }
        self.syncing = Some(self.records.len());
        Some(SyncJob {
            lsn: self.records.len() as u64,
            files: Vec::new(),
            dir: None,
        })
    }

    fn end_sync(&mut self, lsn: u64, ok: bool) {
        self.syncing = None;
        if ok {
            self.synced = self.synced.max(lsn as usize);
        }
    }

    fn reclaim(&mut self, trim_mark: u64) -> usize {
        let mut n = 0;
        for r in self.records[..self.synced].iter_mut() {
            let below = r
                .as_deref()
                .and_then(|b| decode_record(b, NONCE, usize::MAX, Format::V2).ok())
                .is_some_and(|(h, _, _)| h.kind != Kind::Meta && h.addr < trim_mark);
            if below {
                *r = None;
                n += 1;
            }
        }
        n
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            segments: 1,
            segment_size_bytes: 0,
            used_bytes: self.used_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Kind, RecordHead};

    fn head(addr: u64) -> RecordHead {
        RecordHead {
            kind: Kind::Data,
            addr,
            writer: 1,
            seq: addr,
        }
    }

    #[test]
    fn a_byte_budget_refuses_appends_that_would_exceed_it() {
        let mut s = MemStore::new();
        let one = record_size(10) as u64;
        s.budget_bytes = Some(2 * one + one / 2);
        assert!(s.append(&head(0), &[1; 10]).is_ok());
        assert!(s.append(&head(1), &[1; 10]).is_ok());
        assert!(matches!(
            s.append(&head(2), &[1; 10]),
            Err(AppendError::Full(_))
        ));
        assert_eq!(s.used_bytes(), 2 * one);
        // Junk (a fill) may use the reserve kept for it, and no more.
        let junk = |addr| RecordHead {
            kind: Kind::Junk,
            addr,
            writer: 0,
            seq: 0,
        };
        let fits = s.fill_reserve_bytes / record_size(0) as u64;
        for a in 0..fits {
            assert!(
                s.append(&junk(10 + a), &[]).is_ok(),
                "fill {a} within the reserve"
            );
        }
        assert!(matches!(
            s.append(&junk(999), &[]),
            Err(AppendError::Full(_))
        ));
        assert!(s.append(&head(3), &[1; 10]).is_err(), "data still refused");
        // A seal is recorded whatever the budget (a full unit can be fenced).
        let seal = RecordHead::meta(crate::storage::Meta {
            sealed_epoch: 7,
            trim_mark: 0,
        });
        for _ in 0..100 {
            assert!(s.append(&seal, &[]).is_ok());
        }
        assert!(s.append(&head(2), &[1; 10]).is_err(), "data still refused");
        s.crash();
        assert_eq!(s.used_bytes(), 0);
        assert!(s.append(&head(0), &[1; 10]).is_ok());
        assert!(s.append(&head(1), &[1; 10]).is_ok());
        assert_eq!(s.addresses(), vec![0, 1]);
        // A crash drops unsynced records, and their bytes free the budget.
        s.crash();
        assert_eq!(s.used_bytes(), 0);
        assert!(s.append(&head(2), &[1; 10]).is_ok());
        // Corruption keeps the address listed, and a damaged payload keeps
        // the record attributed to its address.
        assert!(s.corrupt_payload(2));
        assert_eq!(s.addresses(), vec![2]);
        let mut seen = Vec::new();
        s.recover(&mut |r| {
            if let Recovered::Corrupt { addr, .. } = r {
                seen.push(addr);
            }
        })
        .unwrap();
        assert_eq!(seen, vec![Some(2)]);
    }
}
