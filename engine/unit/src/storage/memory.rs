//! An in-memory [`Store`] for tests and the deterministic simulator. It keeps
//! encoded records exactly as the disk store does, so checksums are real, and it
//! can (a) lose every record not covered by a completed sync, as a power loss
//! would, and (b) corrupt chosen records.

use super::record::{decode_record, encode_record, record_size};
use super::{
    AppendError, Appended, CorruptRecord, Kind, Loc, RecordHead, Recovered, Store, StoreStats,
    SyncJob,
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
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore {
            max_payload: trex_wire::MAX_ENTRY_LEN as usize,
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
            if let Ok((h, _, _)) = decode_record(r, NONCE, usize::MAX) {
                if h.addr == addr && h.kind != Kind::Meta {
                    let last = r.len() - 1;
                    r[last / 2] ^= 0x40;
                    return true;
                }
            }
        }
        false
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
            match decode_record(r, NONCE, self.max_payload) {
                Ok((h, _, _)) if h.kind == Kind::Meta => visit(Recovered::Meta(h.as_meta())),
                Ok((h, _, _)) => visit(Recovered::Record {
                    addr: h.addr,
                    kind: h.kind,
                    loc,
                }),
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
        if self.capacity.is_some_and(|c| self.records.len() >= c) {
            return Err(AppendError::Full("memory store at capacity".into()));
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

    fn read(&self, loc: Loc) -> Result<(RecordHead, &[u8]), CorruptRecord> {
        let rec = self
            .records
            .get(loc.off as usize)
            .and_then(|r| r.as_deref());
        match rec.map(|r| decode_record(r, NONCE, self.max_payload)) {
            Some(Ok((h, p, _))) => Ok((h, p)),
            _ => Err(CorruptRecord(loc)),
        }
    }

    fn max_payload(&self) -> usize {
        self.max_payload
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
                .and_then(|b| decode_record(b, NONCE, usize::MAX).ok())
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
            used_bytes: self.records.iter().flatten().map(|r| r.len() as u64).sum(),
        }
    }
}
