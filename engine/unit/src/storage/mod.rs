//! Where a storage unit keeps its records. The unit's rules live in
//! [`crate::unit::Unit`]; this module only stores and finds bytes, behind the
//! [`Store`] trait with two implementations: [`mmap::MmapStore`] (memory-mapped
//! segment files, the real thing) and [`memory::MemStore`] (for tests and the
//! simulator: it can lose every write not yet synced and corrupt chosen records).

mod background;
pub mod memory;
pub mod mmap;
pub mod record;

use thiserror::Error;

pub use record::{Kind, RecordHead};

/// Where a record lives: segment id and byte offset of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Segment id.
    pub seg: u32,
    /// Offset of the record header in the segment.
    pub off: u32,
}

/// What an append returns: where the record went, and the log sequence number a
/// sync must reach before the record is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Where the record lives.
    pub loc: Loc,
    /// Durable once a sync with `lsn >= this` has completed.
    pub lsn: u64,
}

/// The durable state that is not an entry: written as meta records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Sealed epoch.
    pub sealed_epoch: u64,
    /// Trim mark.
    pub trim_mark: u64,
}

impl Meta {
    /// The larger of each field (both only ever grow).
    pub fn max(self, o: Meta) -> Meta {
        Meta {
            sealed_epoch: self.sealed_epoch.max(o.sealed_epoch),
            trim_mark: self.trim_mark.max(o.trim_mark),
        }
    }
}

/// One item found while recovering a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// A data or junk record.
    Record {
        /// The address.
        addr: u64,
        /// Data or junk.
        kind: Kind,
        /// Where it lives.
        loc: Loc,
    },
    /// A data or junk record that fails its checksum. `addr` is the address
    /// its header names when the header verifies (then that address answers
    /// `corrupt`); `None` when the header itself is damaged, so the address
    /// is unknown: then every address the unit does not hold answers
    /// `corrupt` (see `Unit`), never `unwritten`.
    Corrupt {
        /// Address named by the damaged record's header, if it verifies.
        addr: Option<u64>,
        /// Where the damage starts.
        loc: Loc,
    },
    /// A meta record (seal, trim) whose header verifies but whose checksum
    /// fails: no entry is lost, and the values it held are also in the `META`
    /// file (`mmap.rs`).
    CorruptMeta {
        /// Where it lives.
        loc: Loc,
    },
    /// A meta record (sealed epoch and trim mark).
    Meta(Meta),
}

pub use trex_net::sync::SyncJob;

/// Why an append failed.
#[derive(Debug, Error)]
pub enum AppendError {
    /// No room for another segment.
    #[error("no space left for a new segment: {0}")]
    Full(String),
    /// The store failed; the unit must stop accepting writes.
    #[error("i/o error: {0}")]
    Io(String),
}

/// Why a record could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The record fails verification: damaged.
    #[error("record at segment {} offset {} fails its checksum", .0.seg, .0.off)]
    Corrupt(Loc),
    /// The device failed to return the record's bytes (EIO): it may be
    /// intact, but it cannot be served; another replica can.
    #[error("cannot read the record at segment {} offset {}: {why}", .loc.seg, .loc.off)]
    Io {
        /// Where the record lives.
        loc: Loc,
        /// The error.
        why: String,
    },
}

/// Sizes reported by `info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Segment files.
    pub segments: u32,
    /// Size of a new segment.
    pub segment_size_bytes: u64,
    /// Bytes used by records in live segments.
    pub used_bytes: u64,
}

/// Storage for a unit's records. Appends are not durable until a sync job
/// covering their LSN has completed (see [`Store::begin_sync`]).
pub trait Store {
    /// Visits everything stored, in append order, once at open. Afterwards every
    /// visited record is durable.
    fn recover(&mut self, visit: &mut dyn FnMut(Recovered)) -> Result<(), String>;
    /// Appends a record.
    fn append(&mut self, head: &RecordHead, payload: &[u8]) -> Result<Appended, AppendError>;
    /// Reads and verifies the record at `loc`.
    fn read(&self, loc: Loc) -> Result<(RecordHead, &[u8]), ReadError>;
    /// Largest payload one record may have.
    fn max_payload(&self) -> usize;
    /// Verifies up to about `budget_bytes` of records that recovery did not
    /// (those of segments loaded from their index); returns the address and
    /// place of each one found damaged. Called while the unit runs, a little
    /// at a time, so damage is found without a client reading it.
    fn scrub(&mut self, budget_bytes: usize) -> Vec<(u64, Loc)> {
        let _ = budget_bytes;
        Vec::new()
    }
    /// Whether the damaged record at `loc` held exactly the entry `head`
    /// with `payload` ([`record::check_copy`]): `None` when it cannot tell
    /// (its header is damaged too, or the record cannot be read at all).
    fn verify_copy(&self, loc: Loc, head: &RecordHead, payload: &[u8]) -> Option<bool> {
        let _ = (loc, head, payload);
        None
    }
    /// Starts a sync covering every append so far, if any is not yet durable.
    fn begin_sync(&mut self) -> Option<SyncJob>;
    /// Reports the outcome of the job begun last.
    fn end_sync(&mut self, lsn: u64, ok: bool);
    /// Reclaims whole segments holding only addresses below `trim_mark` and
    /// entirely covered by a completed sync. Returns how many were deleted.
    fn reclaim(&mut self, trim_mark: u64) -> usize;
    /// Sizes for `info`.
    fn stats(&self) -> StoreStats;
}
