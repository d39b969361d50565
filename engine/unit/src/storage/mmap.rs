//! The real store: preallocated, fixed-size segment files mapped with `memmap2`.
//!
//! Layout of a data directory:
//! - `LOCK` — held with `flock` while a unit runs; holds its pid.
//! - `NNNNNNNNNN.seg` — segment files: a 64-byte header, then records
//!   (see [`super::record`]). Records are appended in arrival order, so a
//!   segment holds any mix of addresses. The first record of every segment is a
//!   meta record carrying the sealed epoch and trim mark at its creation, so the
//!   newest segment always knows them even after older ones are reclaimed.
//! - `NNNNNNNNNN.idx` — the index of a full segment (addresses, offsets, kinds and
//!   the segment's newest meta), written once the segment's data is durable.
//!   At open, a segment with a valid index is not scanned (each record it names
//!   is verified later by the scrub, [`Store::scrub`], and attributed to the
//!   index's address if damaged); the rest are scanned record by record. An index is only a cache: it carries its own
//!   checksum, and a missing or damaged one just means a scan.
//! - `NNNNNNNNNN.spare.tmp` — the next segment, created and preallocated
//!   ahead of need by the store's thread ([`super::background`]); renamed
//!   to `.seg` at rollover. Like every `.tmp` file, removed at open.
//!
//! Segment header (all integers little-endian):
//!
//! ```text
//! offset size field
//!      0    4 magic    b"TRXS"
//!      4    4 version  2 (1: records without a header checksum; read, never appended to)
//!      8    8 id       the segment's id (also its file name)
//!     16    8 nonce    random, seeds every record checksum of this segment
//!     24    8 size     bytes in the file
//!     32   28 zero     reserved
//!     60    4 crc      CRC-32 of bytes 0..60
//! ```
//!
//! Index file (`.idx`): a 64-byte header, 16 bytes per record, a CRC trailer:
//!
//! ```text
//! offset size field
//!      0    4 magic          b"TRXI"
//!      4    4 version        1
//!      8    8 id             segment id
//!     16    8 nonce          the segment's nonce
//!     24    8 used           bytes of the segment holding records
//!     32    8 count          entries that follow
//!     40    8 sealed_epoch   the segment's newest meta
//!     48    8 trim_mark
//!     56    8 max_addr + 1   0 if the segment holds no entry
//!     64   16 × count        addr u64 | offset u32 | kind u8 | 3 zero bytes
//!      …    4 crc            CRC-32 of everything before it
//! ```
//!
//! The sealed epoch and trim mark are meta records (see [`super::record`]), and
//! an index carries its segment's newest. Every one is also written to the
//! `META` file, durably before the append returns, so a damaged last record
//! cannot take a seal back; when a meta record fits neither the newest segment
//! nor a new one (the disk is full and the room kept at the end of each
//! segment, [`META_RESERVE`], is used up by earlier seals), `META` alone holds
//! it. It is created and preallocated at open, two 64-byte slots written in
//! turn and `fdatasync`ed at once, so a seal (the fence of P5) can always be
//! recorded, even on a full unit:
//!
//! ```text
//! offset size field
//!      0    4 magic         b"TRXM"
//!      4    4 version       1
//!      8    8 generation    one more than the other slot's when written
//!     16    8 sealed_epoch
//!     24    8 trim_mark
//!     32   28 zero          reserved
//!     60    4 crc           CRC-32 of bytes 0..60
//! ```
//!
//! At open the valid slot with the higher generation is taken with the
//! segments' meta records (each field the larger: both only grow); a slot torn
//! by a crash fails its CRC and the other one stands.
//!
//! Files are never shrunk while mapped (a truncated mapping is SIGBUS), and the
//! directory lock keeps a second process from touching them.

use super::background::{make_spare, Background, Spare};
use super::record::{
    decode_record, encode_record, record_size, Format, Invalid, RECORD_ALIGN, RECORD_HEADER_LEN,
};
use super::{
    AppendError, Appended, Kind, Loc, Meta, ReadError, RecordHead, Recovered, Store, StoreStats,
    SyncJob,
};
use memmap2::MmapMut;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use trex_net::sync::{Damage, RecoveryMode};

/// Size of a segment file header.
pub const SEGMENT_HEADER_LEN: usize = 64;
const SEG_MAGIC: &[u8; 4] = b"TRXS";
/// The segment format this code writes: 2 (records carry a header checksum,
/// `record.rs`). Format 1 segments are still read, never appended to.
const SEG_VERSION: u32 = 2;
/// The format of index files (`.idx`).
const IDX_VERSION: u32 = 1;
/// The format of `META` slots.
const META_VERSION: u32 = 1;

/// Segment header: the magic, so a foreign file is refused.
const SEG_OFF_MAGIC: usize = 0;
/// Segment header: the format version, so a later format is refused, not misread.
const SEG_OFF_VERSION: usize = 4;
/// Segment header: the segment id, so a renamed or copied file is noticed.
const SEG_OFF_ID: usize = 8;
/// Segment header: the random nonce seeding this segment's record checksums
/// (a record image copied from elsewhere never verifies here).
const SEG_OFF_NONCE: usize = 16;
/// Segment header: the file's size, to notice a file cut or grown behind our back.
const SEG_OFF_SIZE: usize = 24;
/// Segment header: reserved, zero (room for later fields).
const SEG_OFF_RESERVED: usize = 32;
/// Segment header: CRC-32 of every byte before it.
const SEG_OFF_CRC: usize = 60;

// The segment header is on disk: fail the build if a field moves.
const _: () = assert!(SEG_OFF_MAGIC + SEG_MAGIC.len() == SEG_OFF_VERSION);
const _: () = assert!(SEG_OFF_VERSION + 4 == SEG_OFF_ID);
const _: () = assert!(SEG_OFF_ID + 8 == SEG_OFF_NONCE);
const _: () = assert!(SEG_OFF_NONCE + 8 == SEG_OFF_SIZE);
const _: () = assert!(SEG_OFF_SIZE + 8 == SEG_OFF_RESERVED);
const _: () = assert!(SEG_OFF_RESERVED + 28 == SEG_OFF_CRC);
const _: () = assert!(SEG_OFF_CRC + 4 == SEGMENT_HEADER_LEN);
// Records after the header keep their alignment.
const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(RECORD_ALIGN));

const IDX_MAGIC: &[u8; 4] = b"TRXI";
/// Index header: the magic, so a foreign file is refused.
const IDX_OFF_MAGIC: usize = 0;
/// Index header: the format version.
const IDX_OFF_VERSION: usize = 4;
/// Index header: the segment id, so an index never describes another segment.
const IDX_OFF_ID: usize = 8;
/// Index header: the segment's nonce, so an index left over from an earlier
/// segment with the same id (the directory was reused) is ignored.
const IDX_OFF_NONCE: usize = 16;
/// Index header: bytes of the segment holding records (where a scan would end).
const IDX_OFF_USED: usize = 24;
/// Index header: how many entries follow (the file's length must agree).
const IDX_OFF_COUNT: usize = 32;
/// Index header: the segment's newest sealed epoch, so its meta records need
/// no scan either.
const IDX_OFF_SEALED_EPOCH: usize = 40;
/// Index header: the segment's newest trim mark.
const IDX_OFF_TRIM_MARK: usize = 48;
/// Index header: one past the highest address in the segment (0: none), which
/// decides when the segment may be reclaimed.
const IDX_OFF_MAX_ADDR_END: usize = 56;
/// Size of the index header.
const IDX_HEADER_LEN: usize = 64;
/// Index entry: the record's log address.
const IDX_ENTRY_OFF_ADDR: usize = 0;
/// Index entry: the record's offset in the segment.
const IDX_ENTRY_OFF_OFFSET: usize = 8;
/// Index entry: the record's kind (data or junk), so a fill needs no read.
const IDX_ENTRY_OFF_KIND: usize = 12;
/// Index entry: reserved, zero (keeps entries 8-byte aligned).
const IDX_ENTRY_OFF_RESERVED: usize = 13;
/// Size of an index entry.
const IDX_ENTRY_LEN: usize = 16;
/// Size of the CRC-32 trailer over everything before it.
const IDX_CRC_LEN: usize = 4;

// The index file is on disk: fail the build if a field moves.
const _: () = assert!(IDX_OFF_MAGIC + IDX_MAGIC.len() == IDX_OFF_VERSION);
const _: () = assert!(IDX_OFF_VERSION + 4 == IDX_OFF_ID);
const _: () = assert!(IDX_OFF_ID + 8 == IDX_OFF_NONCE);
const _: () = assert!(IDX_OFF_NONCE + 8 == IDX_OFF_USED);
const _: () = assert!(IDX_OFF_USED + 8 == IDX_OFF_COUNT);
const _: () = assert!(IDX_OFF_COUNT + 8 == IDX_OFF_SEALED_EPOCH);
const _: () = assert!(IDX_OFF_SEALED_EPOCH + 8 == IDX_OFF_TRIM_MARK);
const _: () = assert!(IDX_OFF_TRIM_MARK + 8 == IDX_OFF_MAX_ADDR_END);
const _: () = assert!(IDX_OFF_MAX_ADDR_END + 8 == IDX_HEADER_LEN);
const _: () = assert!(IDX_ENTRY_OFF_ADDR + 8 == IDX_ENTRY_OFF_OFFSET);
const _: () = assert!(IDX_ENTRY_OFF_OFFSET + 4 == IDX_ENTRY_OFF_KIND);
const _: () = assert!(IDX_ENTRY_OFF_KIND + 1 == IDX_ENTRY_OFF_RESERVED);
const _: () = assert!(IDX_ENTRY_OFF_RESERVED + 3 == IDX_ENTRY_LEN);
const _: () = assert!(IDX_HEADER_LEN.is_multiple_of(8) && IDX_ENTRY_LEN.is_multiple_of(8));
/// Bytes at the end of every segment that only meta records may use, so that a
/// unit whose disk is full can still record a seal or the trim that frees space
/// (once they are used up too, the `META` file takes the rest).
const META_RESERVE: usize = 25 * RECORD_HEADER_LEN;
/// Bytes at the end of every segment, before [`META_RESERVE`], that data
/// records may not use but junk (a fill) may: a unit that runs full can still
/// fill the holes of the ranges it keeps serving, which readers and repair
/// need to decide (a hole left unfillable on a closed range's last replica
/// would stall every reader at it). A 256th of the segment, at least room for
/// 16 fills: 6,553 fills in a 64 MiB segment.
fn fill_reserve(segment_size: u64) -> u64 {
    (segment_size / 256).max(16 * RECORD_HEADER_LEN as u64)
}
/// The file for meta records that fit no segment (see the module docs).
const META_FILE: &str = "META";
/// Its preallocated size: one block, so writing a slot never needs new space.
const META_FILE_LEN: u64 = 4096;
const META_MAGIC: &[u8; 4] = b"TRXM";
/// A slot of the `META` file.
const META_SLOT_LEN: usize = 64;
const META_OFF_MAGIC: usize = 0;
const META_OFF_VERSION: usize = 4;
const META_OFF_GEN: usize = 8;
const META_OFF_SEALED_EPOCH: usize = 16;
const META_OFF_TRIM_MARK: usize = 24;
/// The lowest segment id that must exist (older ones were reclaimed); 0:
/// unknown (no segment yet, or a slot written before this field existed).
const META_OFF_FIRST_SEGMENT: usize = 32;
const META_OFF_RESERVED: usize = 40;
const META_OFF_CRC: usize = 60;
const _: () = assert!(META_OFF_MAGIC + META_MAGIC.len() == META_OFF_VERSION);
const _: () = assert!(META_OFF_VERSION + 4 == META_OFF_GEN);
const _: () = assert!(META_OFF_GEN + 8 == META_OFF_SEALED_EPOCH);
const _: () = assert!(META_OFF_SEALED_EPOCH + 8 == META_OFF_TRIM_MARK);
const _: () = assert!(META_OFF_TRIM_MARK + 8 == META_OFF_FIRST_SEGMENT);
const _: () = assert!(META_OFF_FIRST_SEGMENT + 8 == META_OFF_RESERVED);
const _: () = assert!(META_OFF_RESERVED + 20 == META_OFF_CRC);
const _: () = assert!(META_OFF_CRC + 4 == META_SLOT_LEN);
const _: () = assert!(2 * META_SLOT_LEN as u64 <= META_FILE_LEN);
/// How a scan tells a torn tail from corruption; corruption is skipped and
/// reported (its entries come from other replicas), never fatal.
const RECOVERY: RecoveryMode = RecoveryMode::TolerateCorruptTail;
/// Smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 64 * 1024;
/// Largest segment size accepted (offsets are 32-bit).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 31;

/// How to open a store.
#[derive(Clone, Debug)]
pub struct MmapOptions {
    /// Size of each new segment file in bytes.
    pub segment_size: u64,
}

/// What opening found, for the log.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    /// Segments loaded from their index file without a scan.
    pub indexed: usize,
    /// Segments scanned record by record.
    pub scanned: usize,
    /// Bytes of torn tail zeroed.
    pub torn_bytes: u64,
    /// Damaged records found.
    pub corrupt: u64,
    /// Human-readable notes (what was found and done).
    pub notes: Vec<String>,
}

struct Segment {
    file: Arc<File>,
    map: MmapMut,
    nonce: u64,
    /// Its record format (format 1 segments are never appended to).
    format: Format,
    size: u32,
    used: u32,
    max_addr: Option<u64>,
    meta: Meta,
    /// (addr, off, kind) of every record, kept until the index file is written.
    entries: Vec<(u64, u32, Kind)>,
    indexed: bool,
    /// Recovery found damage here: never index it (the index cannot say
    /// "corrupt"), so every open scans it and reports the damage again.
    damaged: bool,
}

impl Segment {
    /// A segment with nothing scanned or appended yet.
    fn new(file: File, map: MmapMut, nonce: u64, size: u64, format: Format) -> Segment {
        Segment {
            file: Arc::new(file),
            map,
            nonce,
            format,
            size: size as u32,
            used: SEGMENT_HEADER_LEN as u32,
            max_addr: None,
            meta: Meta::default(),
            entries: Vec::new(),
            indexed: false,
            damaged: false,
        }
    }
}

/// Memory-mapped segment files in one directory.
pub struct MmapStore {
    dir: PathBuf,
    dir_file: Arc<File>,
    _lock: File,
    segment_size: u64,
    segs: BTreeMap<u32, Segment>,
    meta: Meta,
    dirty: BTreeSet<u32>,
    dir_dirty: bool,
    durable_lsn: u64,
    syncing: bool,
    max_payload: usize,
    /// Rollover waits for the old segment's fdatasync (see `append`).
    rollover_barrier: bool,
    /// The `META` file, if it could be created (see the module docs).
    meta_file: Option<File>,
    /// Generation of the newest slot written to it.
    meta_gen: u64,
    /// The newest segment, all zeros, removed at open (its creation never
    /// completed): not missing.
    removed_incomplete: Option<u32>,
    /// Newest segments found cut short at open (and extended again).
    cut: Vec<u32>,
    /// Records of indexed segments not yet verified by the scrub (see
    /// `Store::scrub`).
    unverified: std::collections::VecDeque<(u64, Kind, Loc)>,
    /// Segments that cannot be used (a damaged header; an older segment cut
    /// short), and why: left in place, never read or written, their entries
    /// come from other replicas (see `recover`).
    set_aside: Vec<(u32, String)>,
    /// What `open` and `recover` found.
    pub report: OpenReport,
    /// The thread preparing segments, writing indexes and deleting
    /// reclaimed segments off the loop (`None` if it could not start: then
    /// all of it happens here).
    background: Option<Background>,
    /// The segment id whose spare was asked for and not yet taken.
    spare_asked: Option<u32>,
    /// Rollovers and how their segments came about.
    segment_stats: SegmentStats,
}

/// How new segments came about, for metrics: prepared ahead off the event
/// loop, or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Segments created while serving.
    pub rollovers: u64,
    /// Rollovers that waited for a spare still being prepared.
    pub spare_waits: u64,
    /// Rollovers that created and preallocated the segment on the loop
    /// (no spare: the thread could not make it, e.g. the disk was full).
    pub created_on_loop: u64,
}

/// What an index file holds for one full segment (see the module docs),
/// taken from the segment so it can be encoded and written off the loop.
pub(crate) struct IndexImage {
    id: u32,
    nonce: u64,
    used: u32,
    meta: Meta,
    max_addr: Option<u64>,
    entries: Vec<(u64, u32, Kind)>,
}

impl IndexImage {
    /// The index file's bytes, its CRC trailer included.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let len = IDX_HEADER_LEN + self.entries.len() * IDX_ENTRY_LEN;
        let mut b = vec![0u8; len];
        let h = &mut b[..IDX_HEADER_LEN];
        h[IDX_OFF_MAGIC..IDX_OFF_VERSION].copy_from_slice(IDX_MAGIC);
        h[IDX_OFF_VERSION..IDX_OFF_ID].copy_from_slice(&IDX_VERSION.to_le_bytes());
        for (off, v) in [
            (IDX_OFF_ID, u64::from(self.id)),
            (IDX_OFF_NONCE, self.nonce),
            (IDX_OFF_USED, u64::from(self.used)),
            (IDX_OFF_COUNT, self.entries.len() as u64),
            (IDX_OFF_SEALED_EPOCH, self.meta.sealed_epoch),
            (IDX_OFF_TRIM_MARK, self.meta.trim_mark),
            (IDX_OFF_MAX_ADDR_END, self.max_addr.map_or(0, |m| m + 1)),
        ] {
            h[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        let entries = b[IDX_HEADER_LEN..].chunks_exact_mut(IDX_ENTRY_LEN);
        for (e, (addr, off, kind)) in entries.zip(&self.entries) {
            e[IDX_ENTRY_OFF_ADDR..IDX_ENTRY_OFF_OFFSET].copy_from_slice(&addr.to_le_bytes());
            e[IDX_ENTRY_OFF_OFFSET..IDX_ENTRY_OFF_KIND].copy_from_slice(&off.to_le_bytes());
            e[IDX_ENTRY_OFF_KIND] = *kind as u8; // the reserved bytes stay zero
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }
}

fn lsn(seg: u32, off: u32) -> u64 {
    (u64::from(seg) << 32) | u64::from(off)
}

fn seg_path(dir: &Path, id: u32, ext: &str) -> PathBuf {
    dir.join(format!("{id:010}.{ext}"))
}

fn io_err(what: &str, path: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

fn random_nonce() -> u64 {
    let mut x = [0u8; 8];
    // SAFETY: getrandom writes at most x.len() bytes into x.
    let n = unsafe { libc::getrandom(x.as_mut_ptr().cast(), x.len(), 0) };
    if n != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ (u64::from(std::process::id()) << 32) | 1;
    }
    u64::from_le_bytes(x) | 1
}

fn encode_seg_header(id: u32, nonce: u64, size: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[SEG_OFF_MAGIC..SEG_OFF_VERSION].copy_from_slice(SEG_MAGIC);
    h[SEG_OFF_VERSION..SEG_OFF_ID].copy_from_slice(&SEG_VERSION.to_le_bytes());
    h[SEG_OFF_ID..SEG_OFF_NONCE].copy_from_slice(&u64::from(id).to_le_bytes());
    h[SEG_OFF_NONCE..SEG_OFF_SIZE].copy_from_slice(&nonce.to_le_bytes());
    h[SEG_OFF_SIZE..SEG_OFF_RESERVED].copy_from_slice(&size.to_le_bytes());
    let crc = crc32fast::hash(&h[..SEG_OFF_CRC]);
    h[SEG_OFF_CRC..].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(decode_seg_header(&h, id), Some((nonce, size, Format::V2)));
    h
}

/// Returns the nonce, size and record format of a valid segment header for
/// segment `id`.
fn decode_seg_header(h: &[u8], id: u32) -> Option<(u64, u64, Format)> {
    let h = h.get(..SEGMENT_HEADER_LEN)?;
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
    let crc = u32::from_le_bytes(h[SEG_OFF_CRC..].try_into().ok()?);
    let size = u64_at(SEG_OFF_SIZE);
    let format = match u32::from_le_bytes(h[SEG_OFF_VERSION..SEG_OFF_ID].try_into().ok()?) {
        1 => Format::V1,
        SEG_VERSION => Format::V2,
        _ => return None,
    };
    let ok = &h[SEG_OFF_MAGIC..SEG_OFF_VERSION] == SEG_MAGIC
        && u64_at(SEG_OFF_ID) == u64::from(id)
        && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size)
        && crc == crc32fast::hash(&h[..SEG_OFF_CRC]);
    ok.then(|| (u64_at(SEG_OFF_NONCE), size, format))
}

/// Whether a segment file holds nothing but zeros (its creation never got as far
/// as a durable header).
fn never_written(path: &Path, len: u64) -> Result<bool, String> {
    let mut f = File::open(path).map_err(|e| io_err("cannot open", path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n =
            std::io::Read::read(&mut f, &mut buf).map_err(|e| io_err("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        left = left.saturating_sub(n as u64);
    }
    Ok(true)
}

/// Whether the bytes `[off, end)` of a segment, a record that fails
/// verification, could be a write cut short by a crash rather than damage of a
/// complete record. A record is encoded front to back with its checksum last,
/// and pages reach the disk whole or not at all (a page written back while
/// the record was being encoded holds a prefix of it, then zeros): so a torn
/// record has a zero checksum, or some page of it ends in zeros. A complete
/// record with a flipped bit, a junk block or a wrong length has neither
/// (its 8-byte padding always includes a non-zero byte of the record).
fn could_be_torn(seg: &[u8], off: usize, end: usize) -> bool {
    const PAGE: usize = 4096;
    let end = end.min(seg.len());
    if seg[off..off + 4].iter().all(|b| *b == 0) {
        return true;
    }
    let pages = (off / PAGE + 1..)
        .map(|p| p * PAGE)
        .take_while(|b| *b < end)
        .chain(std::iter::once(end));
    pages
        .into_iter()
        .any(|b| seg[b.saturating_sub(8).max(off)..b].iter().all(|x| *x == 0))
}

fn fsync_dir(dir: &File) -> io::Result<()> {
    dir.sync_all()
}

fn encode_meta_slot(gen: u64, m: Meta, first_segment: u32) -> [u8; META_SLOT_LEN] {
    let mut b = [0u8; META_SLOT_LEN];
    b[META_OFF_MAGIC..META_OFF_VERSION].copy_from_slice(META_MAGIC);
    b[META_OFF_VERSION..META_OFF_GEN].copy_from_slice(&META_VERSION.to_le_bytes());
    b[META_OFF_GEN..META_OFF_SEALED_EPOCH].copy_from_slice(&gen.to_le_bytes());
    b[META_OFF_SEALED_EPOCH..META_OFF_TRIM_MARK].copy_from_slice(&m.sealed_epoch.to_le_bytes());
    b[META_OFF_TRIM_MARK..META_OFF_FIRST_SEGMENT].copy_from_slice(&m.trim_mark.to_le_bytes());
    b[META_OFF_FIRST_SEGMENT..META_OFF_RESERVED]
        .copy_from_slice(&u64::from(first_segment).to_le_bytes());
    let crc = crc32fast::hash(&b[..META_OFF_CRC]);
    b[META_OFF_CRC..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The generation, meta and first segment id (0: unknown) of a valid slot
/// of the `META` file.
fn decode_meta_slot(b: &[u8]) -> Option<(u64, Meta, u32)> {
    let b = b.get(..META_SLOT_LEN)?;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let crc = u32::from_le_bytes(b[META_OFF_CRC..].try_into().ok()?);
    let ok = &b[META_OFF_MAGIC..META_OFF_VERSION] == META_MAGIC
        && b[META_OFF_VERSION..META_OFF_GEN] == META_VERSION.to_le_bytes()
        && crc == crc32fast::hash(&b[..META_OFF_CRC]);
    ok.then(|| {
        let m = Meta {
            sealed_epoch: u64_at(META_OFF_SEALED_EPOCH),
            trim_mark: u64_at(META_OFF_TRIM_MARK),
        };
        let first = u32::try_from(u64_at(META_OFF_FIRST_SEGMENT)).unwrap_or(0);
        (u64_at(META_OFF_GEN), m, first)
    })
}

/// Opens the `META` file, creating and preallocating it if needed. `Ok(None)`
/// (with a note) if the disk has no room left even for it.
fn open_meta_file(dir: &Path, notes: &mut Vec<String>) -> Result<Option<File>, String> {
    let path = dir.join(META_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("cannot open", &path, e))?;
    let len = file
        .metadata()
        .map_err(|e| io_err("cannot stat", &path, e))?
        .len();
    if len >= META_FILE_LEN {
        return Ok(Some(file));
    }
    // SAFETY: fallocate on a valid, owned descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, META_FILE_LEN as libc::off_t) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSPC) {
            notes.push(format!(
                "cannot preallocate {}: disk full; a seal that fits no segment will be refused until there is room",
                path.display()
            ));
            return Ok(None);
        }
        // Without fallocate: write the zeros (a later slot write then needs no
        // new block).
        std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; META_FILE_LEN as usize], 0)
            .map_err(|e| io_err("cannot write", &path, e))?;
    }
    file.sync_all()
        .map_err(|e| io_err("cannot sync", &path, e))?;
    Ok(Some(file))
}

impl MmapStore {
    /// With `false` (for units run with `--sync never`, which promise no
    /// durability), a rollover hands the old segment's fdatasync to a
    /// background thread instead of waiting for it on the event loop: no stall
    /// of tens of milliseconds per segment, at the price of the barrier's
    /// guarantee — after a power loss (not a process crash: the page cache
    /// survives that) records of an older segment may answer `corrupt` instead
    /// of simply being lost.
    pub fn set_rollover_barrier(&mut self, on: bool) {
        self.rollover_barrier = on;
    }

    /// Opens (creating if needed) the store in `dir`, taking the directory lock.
    /// Records are visited later by [`Store::recover`].
    pub fn open(dir: &Path, opts: &MmapOptions) -> Result<MmapStore, String> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&opts.segment_size) {
            return Err(format!(
                "segment size {} is out of range: choose between 64KiB and 2GiB",
                opts.segment_size
            ));
        }
        fs::create_dir_all(dir).map_err(|e| io_err("cannot create data directory", dir, e))?;
        let lock = trex_net::util::lock_data_dir(dir)?;
        let dir_file = Arc::new(File::open(dir).map_err(|e| io_err("cannot open", dir, e))?);
        let mut ids = Vec::new();
        for ent in fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))? {
            let ent = ent.map_err(|e| io_err("cannot list", dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(ent.path());
            } else if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u32>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut store = MmapStore {
            dir: dir.to_path_buf(),
            dir_file,
            _lock: lock,
            segment_size: opts.segment_size,
            segs: BTreeMap::new(),
            meta: Meta::default(),
            dirty: BTreeSet::new(),
            dir_dirty: false,
            durable_lsn: 0,
            syncing: false,
            rollover_barrier: true,
            meta_file: None,
            meta_gen: 0,
            removed_incomplete: None,
            cut: Vec::new(),
            set_aside: Vec::new(),
            unverified: std::collections::VecDeque::new(),
            background: match Background::start() {
                Ok(bg) => Some(bg),
                Err(e) => {
                    trex_net::log_line!(
                        "WARN",
                        "cannot start the segment thread ({e}): segments are created, indexed and deleted on the event loop"
                    );
                    None
                }
            },
            spare_asked: None,
            segment_stats: SegmentStats::default(),
            // Room for the opening meta record, the reserves and one header.
            max_payload: (opts.segment_size as usize)
                .saturating_sub(
                    SEGMENT_HEADER_LEN
                        + 2 * RECORD_HEADER_LEN
                        + META_RESERVE
                        + fill_reserve(opts.segment_size) as usize,
                )
                .min(trex_wire::MAX_ENTRY_LEN as usize),
            report: OpenReport::default(),
        };
        for (i, &id) in ids.iter().enumerate() {
            let last = i + 1 == ids.len();
            let path = seg_path(dir, id, "seg");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err("cannot open segment", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| io_err("cannot stat", &path, e))?
                .len();
            let mut head = [0u8; SEGMENT_HEADER_LEN];
            let header = std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
                .ok()
                .and_then(|_| decode_seg_header(&head, id));
            if let Some((_, size, _)) = header {
                if len > size {
                    store.report.notes.push(format!(
                        "segment {}: ignoring {} bytes past its end (appended garbage)",
                        path.display(),
                        len - size
                    ));
                } else if len < size && last {
                    // Shrunk behind our back: give the newest segment its size back;
                    // the scan then finds where its intact records end.
                    store.report.notes.push(format!(
                        "segment {}: file was cut to {len} of {size} bytes; extended again",
                        path.display()
                    ));
                    file.set_len(size)
                        .map_err(|e| io_err("cannot extend", &path, e))?;
                    store.cut.push(id);
                } else if len < size {
                    store.set_aside.push((
                        id,
                        format!("was cut to {len} of {size} bytes; it is left in place, unused"),
                    ));
                    continue;
                }
            }
            let map = match header {
                // SAFETY: the directory lock keeps other processes of ours away, and
                // this process never truncates a mapped segment.
                Some(_) => Some(
                    unsafe { MmapMut::map_mut(&file) }
                        .map_err(|e| io_err("cannot map", &path, e))?,
                ),
                None => None,
            };
            match (map, header) {
                (Some(map), Some((nonce, size, format))) => {
                    if last {
                        let _ = map.advise(memmap2::Advice::Sequential);
                    }
                    store
                        .segs
                        .insert(id, Segment::new(file, map, nonce, size, format));
                }
                _ if last && never_written(&path, len)? => {
                    // The newest segment's creation never completed (crash before
                    // its header was durable): it holds nothing at all.
                    store.report.notes.push(format!(
                        "removed incomplete segment {} (all zeros: its creation never completed)",
                        path.display()
                    ));
                    fs::remove_file(&path).map_err(|e| io_err("cannot remove", &path, e))?;
                    store.dir_dirty = true;
                    store.removed_incomplete = Some(id);
                }
                _ => {
                    store.set_aside.push((
                        id,
                        "has a damaged header; it is left in place, unused".to_string(),
                    ));
                }
            }
        }
        store.meta_file = open_meta_file(dir, &mut store.report.notes)?;
        store.dir_dirty = true;
        // The newest segment is appended to from now on: an index file it may
        // have (it was full once, before a newer empty segment was removed) would
        // go stale.
        if let Some((id, seg)) = store.segs.iter_mut().next_back() {
            let idx = seg_path(dir, *id, "idx");
            if idx.exists() {
                fs::remove_file(&idx).map_err(|e| io_err("cannot remove", &idx, e))?;
            }
            seg.indexed = false;
        }
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn active(&self) -> Option<u32> {
        self.segs.keys().next_back().copied()
    }

    /// The id the next segment gets. (A segment set aside keeps its id:
    /// never reused.)
    fn next_segment_id(&self) -> u32 {
        let aside = self.set_aside.iter().map(|(id, _)| *id).max();
        self.active().max(aside).map_or(1, |a| a + 1)
    }

    fn current_lsn(&self) -> u64 {
        self.segs
            .iter()
            .next_back()
            .map_or(0, |(id, s)| lsn(*id, s.used))
    }

    fn load_index(&mut self, id: u32, visit: &mut dyn FnMut(Recovered)) -> bool {
        let Ok(bytes) = fs::read(seg_path(&self.dir, id, "idx")) else {
            return false;
        };
        let Some(seg) = self.segs.get_mut(&id) else {
            return false;
        };
        if bytes.len() < IDX_HEADER_LEN + IDX_CRC_LEN {
            return false;
        }
        let (body, crc) = bytes.split_at(bytes.len() - IDX_CRC_LEN);
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap_or([0; 8]));
        let count = u64_at(IDX_OFF_COUNT) as usize;
        let used = u64_at(IDX_OFF_USED);
        let valid = u32::from_le_bytes(crc.try_into().unwrap_or([0; 4])) == crc32fast::hash(body)
            && &body[IDX_OFF_MAGIC..IDX_OFF_VERSION] == IDX_MAGIC
            && u64_at(IDX_OFF_ID) == u64::from(id)
            && u64_at(IDX_OFF_NONCE) == seg.nonce
            && used <= u64::from(seg.size)
            && body.len() == IDX_HEADER_LEN + count * IDX_ENTRY_LEN;
        if !valid {
            return false;
        }
        seg.used = used as u32;
        seg.meta = Meta {
            sealed_epoch: u64_at(IDX_OFF_SEALED_EPOCH),
            trim_mark: u64_at(IDX_OFF_TRIM_MARK),
        };
        seg.max_addr = u64_at(IDX_OFF_MAX_ADDR_END).checked_sub(1);
        seg.indexed = true;
        for e in body[IDX_HEADER_LEN..].chunks_exact(IDX_ENTRY_LEN) {
            let addr = &e[IDX_ENTRY_OFF_ADDR..IDX_ENTRY_OFF_OFFSET];
            let addr = u64::from_le_bytes(addr.try_into().unwrap_or([0; 8]));
            let off = &e[IDX_ENTRY_OFF_OFFSET..IDX_ENTRY_OFF_KIND];
            let off = u32::from_le_bytes(off.try_into().unwrap_or([0; 4]));
            let kind = if e[IDX_ENTRY_OFF_KIND] == Kind::Junk as u8 {
                Kind::Junk
            } else {
                Kind::Data
            };
            let loc = Loc { seg: id, off };
            // The index says where each record is and what it names, which
            // stays true whatever happens to the record's bytes; whether they
            // are intact is checked by the scrub (`Store::scrub`) once the
            // unit runs, so damage is found (and repaired from peers) without
            // a client reading it, and a start stays fast.
            self.unverified.push_back((addr, kind, loc));
            visit(Recovered::Record { addr, kind, loc });
        }
        visit(Recovered::Meta(seg.meta));
        true
    }

    /// Scans a segment record by record. A record that fails verification is a
    /// torn tail if nothing valid follows it in the newest segment *and* it
    /// could be a write cut short ([`could_be_torn`]): its bytes are zeroed.
    /// Anything else is corruption (reported, never served): [`RECOVERY`]. A
    /// damaged record is attributed to an address only if its header verifies.
    fn scan(&mut self, id: u32, last: bool, visit: &mut dyn FnMut(Recovered)) {
        let max_payload = self.max_payload;
        let Some(seg) = self.segs.get_mut(&id) else {
            return;
        };
        let format = seg.format;
        let size = seg.size as usize;
        let mut off = SEGMENT_HEADER_LEN;
        while off + RECORD_HEADER_LEN <= size {
            let err = match decode_record(&seg.map[off..], seg.nonce, max_payload, format) {
                Ok((h, _, rec_size)) => {
                    let loc = Loc {
                        seg: id,
                        off: off as u32,
                    };
                    if h.kind == Kind::Meta {
                        seg.meta = seg.meta.max(h.as_meta());
                        visit(Recovered::Meta(h.as_meta()));
                    } else {
                        seg.max_addr = Some(seg.max_addr.map_or(h.addr, |m| m.max(h.addr)));
                        seg.entries.push((h.addr, off as u32, h.kind));
                        visit(Recovered::Record {
                            addr: h.addr,
                            kind: h.kind,
                            loc,
                        });
                    }
                    off += rec_size;
                    continue;
                }
                Err(e) => e,
            };
            let nonzero_end = seg.map[off..size]
                .iter()
                .rposition(|b| *b != 0)
                .map(|p| off + p + 1);
            let Some(nonzero_end) = nonzero_end else {
                break;
            }; // clean end of data
            let next = (off + 8..nonzero_end)
                .step_by(8)
                .find(|&o| decode_record(&seg.map[o..], seg.nonce, max_payload, format).is_ok());
            let loc = Loc {
                seg: id,
                off: off as u32,
            };
            // The damaged record's header, if it can be trusted: in format 2
            // its own checksum verifies; in format 1 (no header checksum) it
            // is only plausible, so an address no log ever reaches is not
            // believed either.
            let head = match err {
                Invalid::BadChecksum(h)
                    if format == Format::V2
                        || h.kind == Kind::Meta
                        || h.addr <= trex_wire::range::MAX_COUNTER =>
                {
                    Some(h)
                }
                _ => None,
            };
            let claimed = head.filter(|h| h.kind != Kind::Meta).map(|h| h.addr);
            // A record whose header is trusted but whose checksum fails has a
            // damaged payload, and its length leads to the next record.
            // Stepping there attributes every damaged record of a run to its
            // address; a search for the next valid record would pass over the
            // others unattributed.
            let trusted_end = head.map(|_| {
                let len = u32::from_le_bytes(seg.map[off + 4..off + 8].try_into().expect("4 bytes"))
                    as usize;
                off + record_size(len)
            });
            // In format 2 the length is verified, so the next record starts
            // there whatever its state (damage there is judged in its turn,
            // never skipped unreported); in format 1 only if what is there
            // looks like a record.
            let step = trusted_end.filter(|&to| {
                to <= size
                    && (format == Format::V2
                        || to >= nonzero_end
                        || (to + RECORD_HEADER_LEN <= size
                            && matches!(
                                decode_record(&seg.map[to..], seg.nonce, max_payload, format),
                                Ok(_) | Err(Invalid::BadChecksum(_))
                            )))
            });
            let mut judged = RECOVERY.judge(last, next.is_some());
            if judged == Damage::TornTail
                && format == Format::V2
                && !could_be_torn(&seg.map[..size], off, trusted_end.unwrap_or(nonzero_end))
            {
                // Every byte of the record is there, and wrong: damage of a
                // record that may have been acknowledged, not a write cut short.
                judged = Damage::Corrupt;
            }
            match (judged, next) {
                (Damage::TornTail, _) => {
                    seg.map[off..nonzero_end].fill(0);
                    self.report.torn_bytes += (nonzero_end - off) as u64;
                    self.report.notes.push(format!(
                        "segment {id}: truncated a torn tail of {} bytes at offset {off}",
                        nonzero_end - off
                    ));
                    break;
                }
                (Damage::Corrupt, next) => {
                    seg.damaged = true;
                    if let Some(a) = claimed {
                        // Keeps the segment from being reclaimed while the address
                        // it claims is live.
                        seg.max_addr = Some(seg.max_addr.map_or(a, |m| m.max(a)));
                    }
                    self.report.corrupt += 1;
                    let what = match (head, claimed) {
                        (_, Some(a)) => format!("damaged record of address {a}"),
                        (Some(_), None) => "damaged seal/trim record".to_string(),
                        (None, _) => "damaged record header (its address is unknown: the unit answers `corrupt` for every address it does not hold until the segment is gone)".to_string(),
                    };
                    match head {
                        Some(h) if h.kind == Kind::Meta => visit(Recovered::CorruptMeta { loc }),
                        _ => visit(Recovered::Corrupt { addr: claimed, loc }),
                    }
                    let to = match (step, next) {
                        (Some(to), Some(next)) => Some(to.min(next)),
                        (a, b) => a.or(b),
                    };
                    if let Some(to) = to {
                        self.report.notes.push(format!(
                            "segment {id}: {what} at offset {off}; going on at offset {to} \
                             (after a power loss this can also be unsynced data written back out of order)"
                        ));
                        off = to;
                        continue;
                    }
                    self.report.notes.push(format!(
                        "segment {id}: {what} at offset {off}, damaged data to the end of the segment; \
                         the entries there are not served (they are read from another replica)"
                    ));
                    off = nonzero_end.next_multiple_of(8);
                    break;
                }
            }
        }
        seg.used = off.min(size) as u32;
    }

    /// The index of a full segment whose data is durable, ready to write,
    /// its entries taken out of the segment; `None` if it needs none (indexed
    /// already, or damaged: an index cannot say "corrupt"; or "one past the
    /// highest address" would not be representable).
    fn take_index_image(&mut self, id: u32) -> Option<IndexImage> {
        let seg = self.segs.get_mut(&id)?;
        if seg.indexed || seg.damaged || seg.max_addr == Some(u64::MAX) {
            return None;
        }
        Some(IndexImage {
            id,
            nonce: seg.nonce,
            used: seg.used,
            meta: seg.meta,
            max_addr: seg.max_addr,
            entries: std::mem::take(&mut seg.entries),
        })
    }

    /// Writes the index file of a full segment whose data is durable, here
    /// and now (at open; while serving, [`Background`] writes them).
    fn write_index(&mut self, id: u32) -> io::Result<()> {
        let Some(image) = self.take_index_image(id) else {
            return Ok(());
        };
        let tmp = seg_path(&self.dir, id, "idx.tmp");
        let written = fs::write(&tmp, image.encode())
            .and_then(|_| fs::rename(&tmp, seg_path(&self.dir, id, "idx")));
        let seg = self.segs.get_mut(&id).expect("the segment just indexed");
        match written {
            Ok(()) => seg.indexed = true,
            // Kept for a later try.
            Err(_) => seg.entries = image.entries,
        }
        written
    }

    /// Hands the index of full segment `id` to the background thread (or
    /// writes it here if there is none). The segment counts as indexed at
    /// once: if the write fails, the next open scans it instead.
    fn index_in_background(&mut self, id: u32) {
        if self.background.is_none() {
            if let Err(e) = self.write_index(id) {
                // Only a cache: the segment is scanned at the next open instead.
                trex_net::log_line!("WARN", "cannot write index of segment {id}: {e}");
            }
            return;
        }
        let Some(image) = self.take_index_image(id) else {
            return;
        };
        let Some(bg) = self.background.as_ref() else {
            return;
        };
        let (tmp, path) = (
            seg_path(&self.dir, id, "idx.tmp"),
            seg_path(&self.dir, id, "idx"),
        );
        bg.write_index(tmp, path, image);
        if let Some(seg) = self.segs.get_mut(&id) {
            seg.indexed = true;
        }
    }

    /// Asks the background thread for the spare of segment `id`, unless one
    /// is asked for already.
    fn ask_spare(&mut self, id: u32) {
        if self.spare_asked.is_some() {
            return;
        }
        if let Some(bg) = &self.background {
            let path = seg_path(&self.dir, id, "spare.tmp");
            if bg.prepare(id, path, self.segment_size) {
                self.spare_asked = Some(id);
            }
        }
    }

    /// The spare made for segment `id`, if one was asked for (waiting for it
    /// if it is not ready yet: it is already part-way, so that is never
    /// slower than starting over). `None`: create the segment here.
    fn take_spare(&mut self, id: u32) -> Option<Spare> {
        let asked = self.spare_asked.take()?;
        let bg = self.background.as_ref()?;
        let got = match bg.spare(false) {
            Some(got) => got,
            None => {
                self.segment_stats.spare_waits += 1;
                bg.spare(true)?
            }
        };
        match got {
            Ok(spare) if asked == id && spare.id == id => Some(spare),
            Ok(spare) => {
                // Made for another id (cannot happen: ids only grow by one).
                drop(spare.map);
                let _ = fs::remove_file(&spare.path);
                None
            }
            // Tried once more, here (`create_segment`).
            Err(AppendError::Full(_)) => None,
            Err(AppendError::Io(e)) => {
                trex_net::log_line!("WARN", "preparing segment {id} ahead: {e}");
                None
            }
        }
    }

    /// Rollovers and how the new segment came about, for metrics.
    pub fn segment_stats(&self) -> SegmentStats {
        self.segment_stats
    }

    /// Waits until the background thread has run every job handed to it so
    /// far: index files written, reclaimed segments deleted (for tests and
    /// tools that look at the files).
    pub fn flush_background(&self) {
        if let Some(bg) = &self.background {
            bg.flush();
        }
    }

    /// Makes segment `id` the active one: the spare prepared ahead if there
    /// is one, else a file created and preallocated here, on the loop
    /// (counted in [`SegmentStats::created_on_loop`]). Then asks for the
    /// next spare.
    fn create_segment(&mut self, id: u32) -> Result<(), AppendError> {
        let path = seg_path(&self.dir, id, "seg");
        self.segment_stats.rollovers += 1;
        let made = match self.take_spare(id) {
            Some(spare) => match fs::rename(&spare.path, &path) {
                Ok(()) => Ok(spare),
                Err(e) => {
                    let _ = fs::remove_file(&spare.path);
                    Err(AppendError::Io(io_err(
                        "cannot rename the spare to",
                        &path,
                        e,
                    )))
                }
            },
            None => {
                self.segment_stats.created_on_loop += 1;
                match make_spare(id, &path, self.segment_size) {
                    // Deletions still queued may free the room it lacks:
                    // let them run, then try once more.
                    Err(AppendError::Full(_)) if self.background.is_some() => {
                        self.flush_background();
                        make_spare(id, &path, self.segment_size)
                    }
                    made => made,
                }
            }
        };
        let Spare { file, mut map, .. } = made?;
        let size = self.segment_size;
        let nonce = random_nonce();
        map[..SEGMENT_HEADER_LEN].copy_from_slice(&encode_seg_header(id, nonce, size));
        self.segs
            .insert(id, Segment::new(file, map, nonce, size, Format::V2));
        self.dirty.insert(id);
        self.dir_dirty = true;
        self.ask_spare(id + 1);
        Ok(())
    }

    fn put(&mut self, id: u32, head: &RecordHead, payload: &[u8]) -> Appended {
        let seg = self
            .segs
            .get_mut(&id)
            .expect("put into a segment that exists");
        let off = seg.used as usize;
        let size = record_size(payload.len());
        encode_record(&mut seg.map[off..off + size], seg.nonce, head, payload);
        seg.used += size as u32;
        if let Some(bg) = &self.background {
            bg.note_fill(u64::from(seg.used), u64::from(seg.size));
            // Without syncs of its own (`--sync never`), the segment is
            // written back a stretch at a time as it fills.
            let step = super::background::WRITEBACK_STEP;
            let (from, to) = (off as u64 / step, u64::from(seg.used) / step);
            if !self.rollover_barrier && to > from {
                bg.write_back(Arc::clone(&seg.file), from * step, (to - from) * step);
            }
        }
        if head.kind == Kind::Meta {
            seg.meta = seg.meta.max(head.as_meta());
        } else {
            seg.max_addr = Some(seg.max_addr.map_or(head.addr, |m| m.max(head.addr)));
            seg.entries.push((head.addr, off as u32, head.kind));
        }
        self.dirty.insert(id);
        Appended {
            loc: Loc {
                seg: id,
                off: off as u32,
            },
            lsn: lsn(id, seg.used),
        }
    }
}

impl MmapStore {
    /// Records `head` (a meta record that fits no segment: `why`) in the
    /// `META` file, durably before it returns.
    fn append_meta_file(
        &mut self,
        head: &RecordHead,
        why: String,
    ) -> Result<Appended, AppendError> {
        let path = self.dir.join(META_FILE);
        if self.meta_file.is_none() {
            return Err(AppendError::Full(format!(
                "{why}; and there is no {} to record it in",
                path.display()
            )));
        }
        let meta = self.meta.max(head.as_meta());
        self.write_meta_slot(meta)?;
        self.meta = meta;
        if let Some(seg) = self.segs.values_mut().next_back() {
            seg.meta = seg.meta.max(meta);
        }
        // Durable already; a reply about it still waits for data appended
        // before it and not yet durable (as after a meta record in a segment).
        // With none, 0: nothing to wait for (no sync would come).
        let (seg, off) = self
            .segs
            .iter()
            .next_back()
            .map_or((0, 0), |(id, s)| (*id, s.used));
        let now = self.current_lsn();
        Ok(Appended {
            loc: Loc { seg, off },
            lsn: if now > self.durable_lsn { now } else { 0 },
        })
    }

    /// Writes `meta` to the next slot of the `META` file and makes it
    /// durable. Every seal and trim goes there (besides its meta record in a
    /// segment, which a scan may lose: a damaged last record is not trusted),
    /// so the fence of P5 survives the loss of the record that set it. Without
    /// a `META` file (no room for it at open) nothing is written.
    fn write_meta_slot(&mut self, meta: Meta) -> Result<(), AppendError> {
        let Some(file) = self.meta_file.as_ref() else {
            return Ok(());
        };
        let gen = self.meta_gen + 1;
        let off = (gen % 2) * META_SLOT_LEN as u64;
        let first = self.segs.keys().next().copied().unwrap_or(0);
        let slot = encode_meta_slot(gen, meta, first);
        std::os::unix::fs::FileExt::write_all_at(file, &slot, off)
            .and_then(|_| file.sync_data())
            .map_err(|e| AppendError::Io(io_err("cannot write", &self.dir.join(META_FILE), e)))?;
        self.meta_gen = gen;
        Ok(())
    }

    /// The newest valid slot of the `META` file, if any.
    fn read_meta_file(&self) -> Option<(u64, Meta, u32)> {
        let file = self.meta_file.as_ref()?;
        let mut b = [0u8; 2 * META_SLOT_LEN];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut b, 0).ok()?;
        [&b[..META_SLOT_LEN], &b[META_SLOT_LEN..]]
            .into_iter()
            .filter_map(decode_meta_slot)
            .max_by_key(|(gen, _, _)| *gen)
    }
}

impl Store for MmapStore {
    fn recover(&mut self, visit: &mut dyn FnMut(Recovered)) -> Result<(), String> {
        let ids: Vec<u32> = self.segs.keys().copied().collect();
        let mut meta = Meta::default();
        let mut first = 0;
        if let Some((gen, m, f)) = self.read_meta_file() {
            self.meta_gen = gen;
            meta = m;
            first = f;
            visit(Recovered::Meta(m));
        }
        // Segment files that must exist and do not (between the first one
        // `META` names, or the oldest present, and the newest present; or
        // all of them), and newest segments found cut short: whatever they
        // held is gone from here, at addresses nobody can name. Such damage
        // makes the unit answer `corrupt` for every address it does not hold
        // (see `Recovered::Corrupt`), so readers go to the other replicas and
        // the copies are rewritten from them.
        let aside: BTreeSet<u32> = self.set_aside.iter().map(|(id, _)| *id).collect();
        let present: BTreeSet<u32> = self.segs.keys().chain(&aside).copied().collect();
        let lowest = match (first, present.first()) {
            (0, Some(p)) => *p,
            (f, Some(p)) => f.min(*p),
            (f, None) => f,
        };
        let newest = present.last().copied().unwrap_or(lowest);
        let mut lost: Vec<(u32, &str)> = (lowest.max(1)..=newest)
            .filter(|id| {
                lowest > 0 && !present.contains(id) && Some(*id) != self.removed_incomplete
            })
            .map(|id| (id, "is missing"))
            .collect();
        if first > 0 && present.is_empty() && self.removed_incomplete != Some(first) {
            lost.push((first, "is missing (no segment file is left)"));
        }
        for id in &self.cut {
            lost.push((*id, "was cut short (the records after the cut are gone)"));
        }
        for (id, why) in &self.set_aside {
            lost.push((*id, why));
        }
        for (id, what) in lost {
            self.report.corrupt += 1;
            self.report.notes.push(format!(
                "segment {id} {what}; its entries are read from, and rewritten from, the other replicas of their chains (this unit answers `corrupt` for every address it does not hold)"
            ));
            if let Some(seg) = self.segs.get_mut(&id) {
                seg.damaged = true;
            }
            visit(Recovered::Corrupt {
                addr: None,
                loc: Loc { seg: id, off: 0 },
            });
        }
        let mut wrap = |r: Recovered| {
            if let Recovered::Meta(m) = r {
                meta = meta.max(m);
            }
            visit(r)
        };
        for (i, &id) in ids.iter().enumerate() {
            let last = i + 1 == ids.len();
            if !last && self.load_index(id, &mut wrap) {
                self.report.indexed += 1;
                continue;
            }
            self.scan(id, last, &mut wrap);
            self.report.scanned += 1;
        }
        self.meta = meta;
        // Make everything recovered durable (a torn tail may have been zeroed, and
        // after a process crash the page cache may hold unsynced records), then
        // index the full segments that had no index.
        for (id, seg) in &self.segs {
            seg.file
                .sync_data()
                .map_err(|e| format!("cannot sync segment {id}: {e}"))?;
        }
        fsync_dir(&self.dir_file)
            .map_err(|e| format!("cannot sync {}: {e}", self.dir.display()))?;
        self.dir_dirty = false;
        let active = self.active();
        for id in ids.into_iter().filter(|id| Some(*id) != active) {
            if let Err(e) = self.write_index(id) {
                self.report
                    .notes
                    .push(format!("cannot write index of segment {id}: {e}"));
            }
        }
        self.durable_lsn = self.current_lsn();
        // The first segment to come is prepared ahead too, at the pace the
        // active one fills.
        // With no segment yet, the first append needs it whole at once.
        if let Some(bg) = &self.background {
            match self.segs.values().next_back() {
                Some(seg) => bg.note_fill(u64::from(seg.used), u64::from(seg.size)),
                None => bg.note_fill(1, 1),
            }
        }
        self.ask_spare(self.next_segment_id());
        Ok(())
    }

    fn append(&mut self, head: &RecordHead, payload: &[u8]) -> Result<Appended, AppendError> {
        if payload.len() > self.max_payload {
            return Err(AppendError::Io(format!(
                "payload of {} bytes exceeds the {}-byte limit",
                payload.len(),
                self.max_payload
            )));
        }
        let reserve = match head.kind {
            Kind::Meta => 0,
            Kind::Junk => META_RESERVE as u64,
            Kind::Data => META_RESERVE as u64 + fill_reserve(self.segment_size),
        };
        let need = record_size(payload.len()) as u64 + reserve;
        // A format 1 segment (written by an older version) is never appended
        // to: its records would not match its format.
        let room = self
            .segs
            .values()
            .next_back()
            .filter(|s| s.format == Format::V2)
            .map(|s| u64::from(s.size - s.used));
        if room.is_none_or(|r| r < need) {
            // Rollover is a sync barrier: the old segment is made durable before
            // anything of the new one can reach the disk. Otherwise, after a power
            // loss, an unsynced torn tail of the old segment (not the newest any
            // more) would look like corruption of acknowledged data.
            // (Unconditional: a sync job in flight may not have covered it yet.)
            if let Some((old, seg)) = self.segs.iter().next_back() {
                if self.rollover_barrier {
                    seg.file.sync_data().map_err(|e| {
                        AppendError::Io(format!(
                            "fdatasync of segment {old} before rollover failed: {e}"
                        ))
                    })?;
                } else {
                    let (old, file) = (*old, seg.file.clone());
                    let _ = std::thread::Builder::new()
                        .name("trex-rollover-sync".into())
                        .spawn(move || {
                            trex_net::util::lower_priority();
                            if let Err(e) = file.sync_data() {
                                trex_net::log_line!(
                                    "WARN",
                                    "background fdatasync of segment {old}: {e}"
                                );
                            }
                        });
                }
            }
            let id = self.next_segment_id();
            match self.create_segment(id) {
                Ok(()) => {}
                // No room for a seal or trim anywhere in the segments: the
                // META file keeps it (a full unit can always be fenced).
                Err(AppendError::Full(why)) if head.kind == Kind::Meta => {
                    return self.append_meta_file(head, why);
                }
                Err(e) => return Err(e),
            }
            // Every segment opens with the current meta (see the module docs).
            let meta = RecordHead::meta(self.meta);
            self.put(id, &meta, &[]);
        }
        if head.kind == Kind::Meta {
            self.meta = self.meta.max(head.as_meta());
            // Durable in `META` before the append returns (so before any
            // reply about it): see `write_meta_slot`.
            self.write_meta_slot(self.meta)?;
        }
        let id = self.active().expect("a segment exists after rollover");
        Ok(self.put(id, head, payload))
    }

    fn read(&self, loc: Loc) -> Result<(RecordHead, &[u8]), ReadError> {
        let seg = self.segs.get(&loc.seg).ok_or(ReadError::Corrupt(loc))?;
        let src = seg
            .map
            .get(loc.off as usize..seg.used as usize)
            .ok_or(ReadError::Corrupt(loc))?;
        match decode_record(src, seg.nonce, self.max_payload, seg.format) {
            Ok((h, p, _)) => Ok((h, p)),
            Err(_) => Err(ReadError::Corrupt(loc)),
        }
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn verify_copy(&self, loc: Loc, head: &RecordHead, payload: &[u8]) -> Option<bool> {
        let seg = self.segs.get(&loc.seg)?;
        let src = seg.map.get(loc.off as usize..seg.used as usize)?;
        super::record::check_copy(src, seg.nonce, seg.format, head, payload)
    }

    fn scrub(&mut self, budget_bytes: usize) -> Vec<(u64, Loc)> {
        let mut found = Vec::new();
        let mut spent = 0;
        while spent < budget_bytes {
            let Some((addr, kind, loc)) = self.unverified.pop_front() else {
                break;
            };
            let Some(seg) = self.segs.get_mut(&loc.seg) else {
                continue; // reclaimed since
            };
            let got = seg
                .map
                .get(loc.off as usize..seg.used as usize)
                .and_then(|src| decode_record(src, seg.nonce, self.max_payload, seg.format).ok());
            match got {
                Some((h, _, size)) if h.addr == addr && h.kind == kind => spent += size,
                _ => {
                    spent += RECORD_HEADER_LEN;
                    seg.damaged = true;
                    found.push((addr, loc));
                }
            }
        }
        // Start reading what the next turn will verify, so that turn finds
        // it in the page cache instead of waiting for the disk on the loop
        // (after a restart little of an old segment is cached).
        if let Some((_, _, next)) = self.unverified.front() {
            if let Some(seg) = self.segs.get(&next.seg) {
                let start = next.off as usize & !4095;
                let len = (budget_bytes + 4096).min(seg.map.len().saturating_sub(start));
                let _ = seg.map.advise_range(memmap2::Advice::WillNeed, start, len);
            }
        }
        found
    }

    fn begin_sync(&mut self) -> Option<SyncJob> {
        let lsn = self.current_lsn();
        if self.syncing || (lsn == self.durable_lsn && !self.dir_dirty) {
            return None;
        }
        self.syncing = true;
        let files = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|id| self.segs.get(&id).map(|s| s.file.clone()))
            .collect();
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir_file.clone());
        Some(SyncJob { lsn, files, dir })
    }

    fn end_sync(&mut self, lsn: u64, ok: bool) {
        self.syncing = false;
        if !ok {
            return;
        }
        self.durable_lsn = self.durable_lsn.max(lsn);
        let durable_seg = (self.durable_lsn >> 32) as u32;
        let full: Vec<u32> = self
            .segs
            .iter()
            .filter(|(id, s)| **id < durable_seg && !s.indexed && !s.damaged)
            .map(|(id, _)| *id)
            .collect();
        for id in full {
            self.index_in_background(id);
        }
    }

    fn reclaim(&mut self, trim_mark: u64) -> usize {
        // A segment may go once a later segment's opening meta record is durable:
        // that record then carries the trim mark and sealed epoch forward.
        let durable_seg = (self.durable_lsn >> 32) as u32;
        let doomed: Vec<u32> = self
            .segs
            .iter()
            .filter(|(id, s)| **id < durable_seg && s.max_addr.is_none_or(|m| m < trim_mark))
            .map(|(id, _)| *id)
            .collect();
        if doomed.is_empty() {
            return 0;
        }
        // `META` names the first segment that must exist before any file
        // goes, so a segment missing at open is known to be lost, not
        // reclaimed.
        let keep = self.segs.keys().find(|id| !doomed.contains(id)).copied();
        if let (Some(file), Some(first)) = (self.meta_file.as_ref(), keep) {
            let gen = self.meta_gen + 1;
            let off = (gen % 2) * META_SLOT_LEN as u64;
            let slot = encode_meta_slot(gen, self.meta, first);
            let written = std::os::unix::fs::FileExt::write_all_at(file, &slot, off)
                .and_then(|_| file.sync_data());
            if let Err(e) = written {
                eprintln!(
                    "warning: cannot write {}: {e}; segments are not reclaimed until it can be written",
                    self.dir.join(META_FILE).display()
                );
                return 0;
            }
            self.meta_gen = gen;
        }
        for id in &doomed {
            // Unmapped before the file goes, both off the loop (freeing a
            // segment's extents waits for the disk).
            let map = self.segs.remove(id).map(|s| s.map);
            self.dirty.remove(id);
            let paths = ["seg", "idx"].map(|ext| seg_path(&self.dir, *id, ext));
            match &self.background {
                Some(bg) => bg.remove(map, paths.to_vec()),
                None => {
                    drop(map);
                    for p in paths {
                        if let Err(e) = fs::remove_file(&p) {
                            if e.kind() != io::ErrorKind::NotFound {
                                eprintln!("warning: cannot remove {}: {e}", p.display());
                            }
                        }
                    }
                }
            }
        }
        if !doomed.is_empty() {
            self.dir_dirty = true;
        }
        doomed.len()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            segments: self.segs.len() as u32,
            segment_size_bytes: self.segment_size,
            used_bytes: self.segs.values().map(|s| u64::from(s.used)).sum(),
        }
    }
}
