//! The consensus node's durable journal: promises, accepted values and
//! checkpoints (snapshots), appended to a file and made durable by the node's
//! group-committed syncs (the same io_uring / sync-thread path as the storage
//! unit).
//!
//! File `journal-GGGGGG.log`: records, back to back, of
//!
//! ```text
//! offset size field
//!      0    4 crc      CRC-32 (as everywhere) of bytes 4.. of the record
//!      4    4 len      payload bytes
//!      8  len payload  kind u8 (1 promise, 2 accept, 3 checkpoint), then its fields
//! ```
//!
//! All integers little-endian. A checkpoint starts a new generation: it is
//! written to a new file, synced, and the old file deleted (compaction below the
//! snapshot). A background checkpoint ([`write_checkpoint_file`]) is written
//! as `journal-GGGGGG.tmp` while the old file takes more records, renamed at
//! its [`JournalRecord::Resume`], and followed there by records restating
//! everything accepted since; until a sync covers those, [`Journal::open`]
//! replays the old file after the checkpoint too.
//!
//! File `DURABLE` (12 bytes, rewritten in place after each completed sync,
//! never synced on its own): `generation u32, len u32` of the journal known
//! durable, then the CRC-32 of those 8 bytes. It can only lag the truth (it is
//! written after the sync it records), so a journal shorter than it says, or
//! a generation it names that is missing, was damaged after the fact.
//!
//! At open, a damaged record is a torn write only if nothing intact follows
//! it, it lies past the `DURABLE` mark, and (in a generation after the first)
//! the file still starts with its checkpoint; such a record is cut off, with a
//! WARN line. Anything else is [`OpenError::Damaged`]: the node must not
//! vote with what is left (it may have lost a promise or an accepted value);
//! see `docs/consensus.md`, "A damaged journal".

use super::paxos::JournalRecord;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use trex_net::sync::{Damage, RecoveryMode, SyncJob};
use trex_wire::codec::{put_u32, put_u64};
use trex_wire::consensus::{encode_value, Ballot};
use trex_wire::{DecodeError, Reader};

/// Record header: CRC-32 of the length and the payload, so a record is trusted
/// only whole (a torn or damaged one never replays as a promise).
const OFF_CRC: usize = 0;
/// Record header: payload length, where the next record starts (and, at the
/// end of the file, whether a damaged record was cut short by a crash).
const OFF_LEN: usize = 4;
/// Size of a record header; the payload follows.
const RECORD_HEADER_LEN: usize = 8;
/// What the CRC covers of the header: everything after the CRC.
const CRC_COVERS: usize = OFF_LEN;

// The layout above is on disk in every journal: fail the build if a field moves.
const _: () = assert!(OFF_CRC + 4 == OFF_LEN);
const _: () = assert!(OFF_LEN + 4 == RECORD_HEADER_LEN);

/// How the journal tells a torn tail from corruption.
const RECOVERY: RecoveryMode = RecoveryMode::TolerateCorruptTail;

/// Linux's errno for an I/O error (a failing disk).
const EIO: i32 = 5;

/// The file holding the durable mark (see the module documentation).
pub const DURABLE_FILE: &str = "DURABLE";

/// Why a journal could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The journal is damaged beyond a torn tail: what is left may lack a
    /// promise or an accepted value this node acknowledged.
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// What was found, for the log.
        what: String,
    },
    /// The directory or a file cannot be used at all (permissions, I/O).
    Io(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Damaged { path, what } => {
                write!(f, "journal {} is damaged: {what}", path.display())
            }
            OpenError::Io(e) => f.write_str(e),
        }
    }
}

impl From<String> for OpenError {
    fn from(e: String) -> OpenError {
        OpenError::Io(e)
    }
}

/// Parses the intact record at the start of `rest`: the record and its size.
fn parse_record(rest: &[u8]) -> Option<(JournalRecord, usize)> {
    let len = u32::from_le_bytes(rest.get(OFF_LEN..RECORD_HEADER_LEN)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(rest.get(OFF_CRC..OFF_LEN)?.try_into().ok()?);
    let body = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN.checked_add(len)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&rest[CRC_COVERS..RECORD_HEADER_LEN]);
    h.update(body);
    if h.finalize() != crc {
        return None;
    }
    decode_record(body)
        .ok()
        .map(|r| (r, RECORD_HEADER_LEN + len))
}

/// Whether an intact record starts anywhere in `rest` (records are unaligned:
/// every offset is tried).
fn intact_record_in(rest: &[u8]) -> bool {
    (0..rest.len().saturating_sub(RECORD_HEADER_LEN)).any(|i| parse_record(&rest[i..]).is_some())
}

/// Reads the durable mark: `(generation, len)`, if the file is there and whole.
fn read_durable(dir: &Path) -> Option<(u64, u64)> {
    let b = fs::read(dir.join(DURABLE_FILE)).ok()?;
    let b: [u8; 12] = b.get(..12)?.try_into().ok()?;
    if crc32fast::hash(&b[..8]) != u32::from_le_bytes(b[8..12].try_into().ok()?) {
        return None;
    }
    let g = u32::from_le_bytes(b[..4].try_into().ok()?);
    let l = u32::from_le_bytes(b[4..8].try_into().ok()?);
    Some((u64::from(g), u64::from(l)))
}

/// Reads generation `generation`'s file: its records, oldest first, and the
/// length they span (a torn tail past the durable mark `durable` is cut, with
/// a WARN line; see the module documentation for what counts as damage).
fn read_generation(
    dir: &Path,
    generation: u64,
    durable: Option<(u64, u64)>,
) -> Result<(Vec<JournalRecord>, usize), OpenError> {
    let path = path_of(dir, generation);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        // An I/O error reading it back: what it holds is unknown, which
        // is as bad as damage (and handled the same, safe way).
        Err(e) if e.raw_os_error() == Some(EIO) => {
            return Err(OpenError::Damaged {
                path: path.clone(),
                what: format!("it cannot be read: {e}"),
            });
        }
        Err(e) => return Err(err("cannot read", &path, e).into()),
    };
    let damaged = |what: String| OpenError::Damaged {
        path: path.clone(),
        what,
    };
    let mut records = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        let rest = &bytes[off..];
        match parse_record(rest) {
            Some((r, n)) => {
                if off == 0 && generation > 1 && !matches!(r, JournalRecord::Checkpoint { .. }) {
                    return Err(damaged(
                        "generation {generation} does not start with its checkpoint".into(),
                    ));
                }
                records.push(r);
                off += n;
            }
            None => {
                // A record that does not check out. A crash can leave one
                // only at the very end, and only past what a sync made
                // durable; a generation after the first was synced whole
                // with its checkpoint before it replaced the one before.
                // Anything intact after it (found by trying every offset:
                // a damaged length field says nothing) proves damage.
                let intact_after = intact_record_in(&rest[1..]);
                let below_mark = durable.is_some_and(|(g, l)| g == generation && (off as u64) < l);
                let lost_checkpoint = off == 0 && generation > 1;
                if RECOVERY.judge(true, intact_after) == Damage::TornTail
                    && !below_mark
                    && !lost_checkpoint
                {
                    trex_net::log_line!(
                        "WARN",
                        "journal {}: cut a torn record of {} bytes at offset {off} (a write the crash interrupted, never acknowledged)",
                        path.display(),
                        rest.len()
                    );
                    break;
                }
                let why = if lost_checkpoint {
                    "its checkpoint (the first record) is damaged or cut".to_string()
                } else if below_mark {
                    format!(
                        "a damaged record at offset {off}, below the {} bytes known durable",
                        durable.map_or(0, |d| d.1)
                    )
                } else {
                    format!("a damaged record at offset {off} with intact records after it")
                };
                return Err(damaged(why));
            }
        }
    }
    if let Some((g, l)) = durable {
        if g == generation && (off as u64) < l {
            return Err(damaged(format!(
                "it ends at {off} bytes, but {l} bytes were known durable (file {DURABLE_FILE}): it was cut"
            )));
        }
    }
    Ok((records, off))
}

/// Payload kinds: the first payload byte.
const R_PROMISE: u8 = 1;
const R_ACCEPT: u8 = 2;
const R_CHECKPOINT: u8 = 3;

fn put_ballot(out: &mut Vec<u8>, b: Ballot) {
    put_u64(out, b.counter);
    put_u64(out, b.node);
}

fn get_ballot(r: &mut Reader<'_>) -> Result<Ballot, DecodeError> {
    Ok(Ballot {
        counter: r.u64()?,
        node: r.u64()?,
    })
}

/// Encodes a record's payload.
pub fn encode_record(out: &mut Vec<u8>, rec: &JournalRecord) {
    match rec {
        JournalRecord::Promise(b) => {
            out.push(R_PROMISE);
            put_ballot(out, *b);
        }
        JournalRecord::Accept {
            slot,
            ballot,
            value,
        } => {
            out.push(R_ACCEPT);
            put_u64(out, *slot);
            put_ballot(out, *ballot);
            encode_value(out, value);
        }
        JournalRecord::Checkpoint {
            promised,
            upto,
            state,
            accepted,
        } => {
            out.push(R_CHECKPOINT);
            put_ballot(out, *promised);
            put_u64(out, *upto);
            put_u32(out, state.len() as u32);
            out.extend_from_slice(state);
            put_u32(out, accepted.len() as u32);
            for (slot, b, v) in accepted {
                put_u64(out, *slot);
                put_ballot(out, *b);
                encode_value(out, v);
            }
        }
        JournalRecord::Resume { .. } => {
            unreachable!("a journal acts on a resume record and never encodes one")
        }
    }
}

/// `rec` as it goes into a journal file: header (CRC, length) and payload.
fn framed(out: &mut Vec<u8>, rec: &JournalRecord) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    encode_record(out, rec);
    let len = (out.len() - start - RECORD_HEADER_LEN) as u32;
    let h = start..start + RECORD_HEADER_LEN;
    out[h.start + OFF_LEN..h.end].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[h.start + CRC_COVERS..]);
    out[h.start + OFF_CRC..h.start + OFF_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Writes `checkpoint` (a [`JournalRecord::Checkpoint`]) as the whole of the
/// file `path` ([`Journal::next_checkpoint_path`]) and syncs it: the work of
/// a background checkpoint ([`crate::paxos::CheckpointJob`]), done on a
/// thread of its own. The journal takes the file over at the
/// [`JournalRecord::Resume`] that follows; until then [`Journal::open`]
/// ignores (and deletes) it.
///
/// Errors: the file cannot be created, written or synced (a full or failing
/// disk); the partial file is left for the next open to delete.
pub fn write_checkpoint_file(path: &Path, checkpoint: &JournalRecord) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::new();
    framed(&mut buf, checkpoint);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    // Written back a step at a time, each step waited for: a whole state
    // left dirty for the final sync (tens of MB) would be flushed by the
    // next journal sync too (ext4 orders a commit behind the data of every
    // file), and the loop's group commits would wait behind it.
    let mut off = 0usize;
    for chunk in buf.chunks(CHECKPOINT_WRITE_STEP) {
        file.write_all(chunk)?;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a range of our own open file; no memory is passed.
        let r = unsafe {
            libc::sync_file_range(file.as_raw_fd(), off as i64, chunk.len() as i64, flags)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        off += chunk.len();
    }
    file.sync_data()
}

/// How much of a background checkpoint is written before it is handed to
/// the disk and waited for (see [`write_checkpoint_file`]).
const CHECKPOINT_WRITE_STEP: usize = 1 << 20;

/// Decodes a record's payload.
pub fn decode_record(b: &[u8]) -> Result<JournalRecord, DecodeError> {
    let mut r = Reader::new(b);
    let rec = match r.u8()? {
        R_PROMISE => JournalRecord::Promise(get_ballot(&mut r)?),
        R_ACCEPT => JournalRecord::Accept {
            slot: r.u64()?,
            ballot: get_ballot(&mut r)?,
            value: r.value()?,
        },
        R_CHECKPOINT => {
            let promised = get_ballot(&mut r)?;
            let upto = r.u64()?;
            let n = r.u32()? as usize;
            let state = r.bytes(n)?.to_vec();
            let mut accepted = Vec::new();
            for _ in 0..r.u32()? {
                accepted.push((r.u64()?, get_ballot(&mut r)?, r.value()?));
            }
            JournalRecord::Checkpoint {
                promised,
                upto,
                state,
                accepted,
            }
        }
        other => return Err(DecodeError::UnknownOpcode(other)),
    };
    r.finish()?;
    Ok(rec)
}

/// The journal of one consensus node.
pub struct Journal {
    dir: PathBuf,
    dir_file: Arc<File>,
    file: Arc<File>,
    generation: u64,
    /// Bytes written to the current file (the LSN within this generation).
    len: u64,
    buf: Vec<u8>,
    /// The directory must be synced with the next job (a file was created).
    dir_dirty: bool,
    /// The data directory's lock, held while the journal is open: two
    /// consensus processes never run on one journal.
    _lock: File,
    /// The durable mark's file, rewritten after each completed sync.
    durable_file: Option<File>,
    /// Older generations to delete once a sync covers the LSN given (the
    /// checkpoint that replaced them).
    superseded: Vec<(u64, PathBuf)>,
}

fn path_of(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:06}.log"))
}

fn tmp_path_of(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:06}.tmp"))
}

fn err(what: &str, p: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

impl Journal {
    /// Opens the journal in `dir` (creating it) and returns the records found,
    /// oldest first.
    ///
    /// Errors: [`OpenError::Damaged`] when the journal is damaged beyond a
    /// torn tail (see the module documentation), [`OpenError::Io`] when the
    /// directory cannot be used.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<JournalRecord>), OpenError> {
        fs::create_dir_all(dir).map_err(|e| err("cannot create", dir, e))?;
        let lock = trex_net::util::lock_data_dir(dir)?;
        let mut gens: Vec<u64> = fs::read_dir(dir)
            .map_err(|e| err("cannot list", dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("journal-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        gens.sort_unstable();
        // A background checkpoint the journal never took over (the node
        // stopped first): the generation before holds everything.
        for e in fs::read_dir(dir)
            .map_err(|e| err("cannot list", dir, e))?
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.strip_prefix("journal-")
                .and_then(|g| g.strip_suffix(".tmp"))
                .is_some()
            {
                let _ = fs::remove_file(e.path());
            }
        }
        // A compaction writes the next generation, syncs it, then deletes the
        // one before: while the one before is still there, the newest counts
        // only if its checkpoint is whole (else the compaction was cut short
        // before it took over: drop it, the one before holds everything).
        while gens.len() > 1 {
            let newest = path_of(dir, *gens.last().expect("two or more"));
            let whole = fs::read(&newest).ok().is_some_and(|b| {
                matches!(
                    parse_record(&b),
                    Some((JournalRecord::Checkpoint { .. }, _))
                )
            });
            if whole {
                break;
            }
            trex_net::log_line!(
                "WARN",
                "journal {}: a compaction was cut short before it took over; dropping it and keeping the generation before",
                newest.display()
            );
            fs::remove_file(&newest).map_err(|e| err("cannot remove", &newest, e))?;
            gens.pop();
        }
        let generation = gens.last().copied().unwrap_or(1);
        let durable = read_durable(dir);
        if let Some((g, l)) = durable {
            let missing = fs::metadata(path_of(dir, generation)).map_or(true, |m| m.len() == 0);
            if g > generation || (g == generation && l > 0 && missing) {
                return Err(OpenError::Damaged {
                    path: path_of(dir, generation),
                    what: format!(
                        "its file is missing: generation {g} had {l} bytes durable (file {DURABLE_FILE})"
                    ),
                });
            }
        }
        let (mut records, mut off) = read_generation(dir, generation, durable)?;
        // An older generation is still needed when the newest one was a
        // background checkpoint whose restating records were not yet durable
        // at the crash (no sync of the newest generation is on record): its
        // records after the checkpoint come back too (the checkpoint holds
        // everything before). Merged in after the newest one's checkpoint;
        // replay keeps the highest ballot per slot, so order among them does
        // not matter.
        let older = &gens[..gens.len().saturating_sub(1)];
        let mut merged = Vec::new();
        for &g in older {
            if durable.is_some_and(|(mg, _)| mg > g) {
                continue; // a later generation was synced: it replaced this one
            }
            let (recs, _) = read_generation(dir, g, durable)?;
            merged.extend(
                recs.into_iter()
                    .filter(|r| !matches!(r, JournalRecord::Checkpoint { .. })),
            );
        }
        let path = path_of(dir, generation);
        if !merged.is_empty() {
            trex_net::log_line!(
                "INFO",
                "journal {}: {} records of the generation it replaced were not yet restated durably; carried over",
                path.display(),
                merged.len()
            );
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err("cannot open", &path, e))?;
        file.set_len(off as u64)
            .map_err(|e| err("cannot truncate", &path, e))?;
        if !merged.is_empty() {
            let mut buf = Vec::new();
            for r in &merged {
                framed(&mut buf, r);
            }
            (&file)
                .write_all(&buf)
                .map_err(|e| err("cannot write", &path, e))?;
            off += buf.len();
            let rest = records.split_off(1.min(records.len()));
            records.extend(merged);
            records.extend(rest);
        }
        file.sync_all().map_err(|e| err("cannot sync", &path, e))?;
        // Older generations are leftovers of a compaction that took over
        // (carried over above where still needed).
        for &g in older {
            let old = path_of(dir, g);
            fs::remove_file(&old).map_err(|e| err("cannot remove", &old, e))?;
        }
        let dir_file = Arc::new(File::open(dir).map_err(|e| err("cannot open", dir, e))?);
        dir_file
            .sync_all()
            .map_err(|e| err("cannot sync", dir, e))?;
        let durable_file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(dir.join(DURABLE_FILE))
            .ok();
        let mut j = Journal {
            dir: dir.to_path_buf(),
            dir_file,
            file: Arc::new(file),
            generation,
            len: off as u64,
            buf: Vec::new(),
            dir_dirty: false,
            _lock: lock,
            durable_file,
            superseded: Vec::new(),
        };
        // Everything read back was just synced.
        j.note_durable(j.lsn());
        Ok((j, records))
    }

    /// Appends records (written, not yet durable). A checkpoint starts a new
    /// generation that replaces everything before it. Returns the LSN a sync
    /// must reach for them to be durable.
    ///
    /// A [`JournalRecord::Resume`] switches to the generation a background
    /// checkpoint wrote ([`write_checkpoint_file`]); the records after it
    /// go there, and the file before it is deleted once a sync covers them.
    pub fn append(&mut self, records: &[JournalRecord]) -> io::Result<u64> {
        let mut replaced = Vec::new();
        for rec in records {
            match rec {
                JournalRecord::Checkpoint { .. } => {
                    self.rotate(rec)?;
                    continue;
                }
                JournalRecord::Resume { .. } => {
                    replaced.push(self.take_over()?);
                    continue;
                }
                _ => {}
            }
            self.buf.clear();
            self.frame(rec);
            (&*self.file).write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
        }
        // The file a background checkpoint replaced holds records written
        // since that checkpoint was taken; the records after the resume
        // restate them, so it may go once those are durable.
        for old in replaced {
            self.superseded.push((self.lsn(), old));
        }
        Ok(self.lsn())
    }

    /// Where a background checkpoint writes the next generation
    /// (`journal-GGGGGG.tmp`, renamed to `.log` when the journal takes it
    /// over). Only valid until the journal moves to another generation.
    pub fn next_checkpoint_path(&self) -> PathBuf {
        tmp_path_of(&self.dir, self.generation + 1)
    }

    /// Makes the file a background checkpoint wrote the current generation
    /// (see [`Journal::append`]); returns the file it replaced.
    fn take_over(&mut self) -> io::Result<PathBuf> {
        let next = self.generation + 1;
        let path = path_of(&self.dir, next);
        fs::rename(tmp_path_of(&self.dir, next), &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let len = file.metadata()?.len();
        let old = path_of(&self.dir, self.generation);
        self.file = Arc::new(file);
        self.generation = next;
        self.len = len;
        // The rename must be durable with the records that follow it.
        self.dir_dirty = true;
        Ok(old)
    }

    fn frame(&mut self, rec: &JournalRecord) {
        framed(&mut self.buf, rec);
    }

    /// Writes a checkpoint into a new file, which is the journal from now on.
    /// Nothing waits for the disk here (the event loop must not): the next
    /// sync job covers the new file and the directory, and the old file is
    /// deleted once that sync completes ([`Journal::note_durable`]). A crash
    /// before then leaves both; [`Journal::open`] keeps the new one only if
    /// its checkpoint is whole.
    fn rotate(&mut self, rec: &JournalRecord) -> io::Result<()> {
        let next = self.generation + 1;
        let path = path_of(&self.dir, next);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        self.buf.clear();
        self.frame(rec);
        (&file).write_all(&self.buf)?;
        // Records still unsynced in the old file go with it: the checkpoint
        // carries the promise and every accepted value still needed.
        let file = OpenOptions::new().append(true).open(&path)?;
        let old = path_of(&self.dir, self.generation);
        self.file = Arc::new(file);
        self.generation = next;
        self.len = self.buf.len() as u64;
        self.dir_dirty = true;
        // Deleted once the new file is durable with its checkpoint.
        self.superseded.push((self.lsn(), old));
        Ok(())
    }

    /// Records that a sync made everything up to `lsn` durable (the
    /// `DURABLE` mark; best effort, never synced on its own).
    pub fn note_durable(&mut self, lsn: u64) {
        use std::os::unix::fs::FileExt;
        // Generations a durable checkpoint replaced are no longer needed.
        self.superseded.retain(|(after, path)| {
            if lsn < *after {
                return true;
            }
            if let Err(e) = fs::remove_file(path) {
                trex_net::log_line!(
                    "WARN",
                    "cannot delete the replaced journal {}: {e}; it is deleted at the next start",
                    path.display()
                );
            }
            false
        });
        let (g, l) = (lsn >> 40, lsn & ((1 << 40) - 1));
        let (Ok(g), Ok(l)) = (u32::try_from(g), u32::try_from(l)) else {
            return; // beyond what the mark holds: keep the older, lower one
        };
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&g.to_le_bytes());
        b[4..8].copy_from_slice(&l.to_le_bytes());
        let crc = crc32fast::hash(&b[..8]);
        b[8..].copy_from_slice(&crc.to_le_bytes());
        if let Some(f) = &self.durable_file {
            let _ = f.write_at(&b, 0);
        }
    }

    /// LSN of everything written so far: generation and length.
    pub fn lsn(&self) -> u64 {
        (self.generation << 40) | self.len
    }

    /// Bytes in the current file.
    pub fn size_bytes(&self) -> u64 {
        self.len
    }

    /// A sync job covering everything written so far.
    pub fn sync_job(&mut self) -> SyncJob {
        SyncJob {
            lsn: self.lsn(),
            files: vec![self.file.clone()],
            dir: std::mem::take(&mut self.dir_dirty).then(|| self.dir_file.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trex_wire::consensus::Command;

    fn sample() -> Vec<JournalRecord> {
        let b = Ballot {
            counter: 3,
            node: 2,
        };
        let v = vec![Command {
            client: 1,
            seq: 2,
            stamp_ms: 3,
            op: vec![8],
        }];
        vec![
            JournalRecord::Promise(b),
            JournalRecord::Accept {
                slot: 0,
                ballot: b,
                value: v.clone(),
            },
            JournalRecord::Accept {
                slot: 1,
                ballot: b,
                value: Vec::new(),
            },
        ]
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, found) = Journal::open(dir.path()).unwrap();
        assert!(found.is_empty());
        j.append(&sample()).unwrap();
        drop(j);
        let path = path_of(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[1, 2, 3, 4, 200, 0, 0, 0, 9]); // a torn record
        fs::write(&path, &bytes).unwrap();
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found, sample());
    }

    #[test]
    fn damage_in_the_middle_stops_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&sample()).unwrap();
        drop(j);
        let path = path_of(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let e = Journal::open(dir.path()).err().unwrap();
        assert!(matches!(e, OpenError::Damaged { .. }), "{e}");
    }

    /// Writes `sample()` as generation 1 (with the durable mark at its end
    /// unless `mark` is false), damages it with `f`, and opens it again.
    fn damaged(mark: bool, f: impl FnOnce(&mut Vec<u8>)) -> Result<Vec<JournalRecord>, OpenError> {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&sample()).unwrap();
        if mark {
            j.note_durable(j.lsn());
        }
        drop(j);
        if !mark {
            fs::remove_file(dir.path().join(DURABLE_FILE)).unwrap();
        }
        let path = path_of(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        f(&mut bytes);
        fs::write(&path, &bytes).unwrap();
        Journal::open(dir.path()).map(|(_, r)| r)
    }

    #[test]
    fn a_damaged_length_field_is_damage_not_a_torn_tail() {
        // Issue 13: one flipped length bit made the rest of the journal look
        // like a torn tail, and it was cut silently. Intact records follow.
        let r = damaged(false, |b| b[OFF_LEN + 2] ^= 0x01);
        assert!(matches!(r, Err(OpenError::Damaged { .. })), "{r:?}");
    }

    #[test]
    fn a_cut_at_a_record_boundary_is_found_by_the_durable_mark() {
        // Issue 13: cutting whole records left a valid but shorter journal.
        let first = RECORD_HEADER_LEN + {
            let mut b = Vec::new();
            encode_record(&mut b, &sample()[0]);
            b.len()
        };
        let r = damaged(true, |b| b.truncate(first));
        assert!(matches!(r, Err(OpenError::Damaged { .. })), "{r:?}");
        // Without the mark (a crash before any sync was noted) the same cut
        // cannot be told from a shorter history.
        assert_eq!(damaged(false, |b| b.truncate(first)).unwrap().len(), 1);
    }

    #[test]
    fn a_torn_tail_past_the_durable_mark_is_still_cut() {
        let r = damaged(true, |b| {
            b.extend_from_slice(&[1, 2, 3, 4, 200, 0, 0, 0, 9])
        });
        assert_eq!(r.unwrap(), sample());
    }

    #[test]
    fn a_checkpoint_cut_short_is_damage() {
        // Issue 13: a cut inside the checkpoint dropped every record and the
        // promise with it.
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let cp = JournalRecord::Checkpoint {
            promised: Ballot {
                counter: 5,
                node: 1,
            },
            upto: 100,
            state: vec![7; 300],
            accepted: vec![],
        };
        j.append(&[cp]).unwrap();
        j.note_durable(j.lsn()); // the sync completed: generation 1 is gone
        drop(j);
        // No mark to help: the generation itself says a checkpoint starts it.
        fs::remove_file(dir.path().join(DURABLE_FILE)).unwrap();
        let path = path_of(dir.path(), 2);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let r = Journal::open(dir.path());
        assert!(matches!(r, Err(OpenError::Damaged { .. })), "{:?}", r.err());
    }

    /// The fault matrix of issue 13 for the journal: every fault, at every
    /// position, either is found ([`OpenError::Damaged`]: the node takes
    /// the safe way back) or loses nothing that was durable. Never a silent
    /// loss of a synced record.
    #[test]
    fn no_fault_anywhere_silently_loses_a_durable_record() {
        let dir = tempfile::tempdir().unwrap();
        let cp = JournalRecord::Checkpoint {
            promised: Ballot {
                counter: 2,
                node: 1,
            },
            upto: 10,
            state: vec![3; 200],
            accepted: vec![],
        };
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&sample()).unwrap();
        j.append(&[cp]).unwrap(); // generation 2 starts with it
        let mut more = Vec::new();
        for i in 0..40u64 {
            more.push(JournalRecord::Accept {
                slot: 10 + i,
                ballot: Ballot {
                    counter: 2,
                    node: 1,
                },
                value: vec![trex_wire::consensus::Command {
                    client: i,
                    seq: 1,
                    stamp_ms: 5,
                    op: vec![7; (i as usize * 37) % 300],
                }],
            });
        }
        j.append(&more).unwrap();
        j.note_durable(j.lsn());
        drop(j);
        let path = path_of(dir.path(), 2);
        let good = fs::read(&path).unwrap();
        let (_, durable) = Journal::open(dir.path()).unwrap();
        assert_eq!(durable.len(), 41);
        let mut found = 0;
        let mut check = |bytes: Option<Vec<u8>>, what: &str| {
            match bytes {
                Some(b) => fs::write(&path, b).unwrap(),
                None => fs::remove_file(&path).unwrap(),
            }
            match Journal::open(dir.path()) {
                Err(OpenError::Damaged { .. }) => found += 1,
                Err(e) => panic!("{what}: {e}"),
                Ok((_, r)) => assert_eq!(r, durable, "{what}: records lost silently"),
            }
            // Restore the journal and its mark for the next case.
            fs::write(&path, &good).unwrap();
            let (j, _) = Journal::open(dir.path()).unwrap();
            drop(j);
        };
        for at in 0..good.len() {
            let mut b = good.clone();
            b[at] ^= 1 << (at % 8);
            check(Some(b), &format!("bit flip at {at}"));
        }
        for at in (0..good.len()).step_by(97) {
            let mut zero = good.clone();
            let end = (at + 4096).min(zero.len());
            zero[at..end].iter_mut().for_each(|x| *x = 0);
            check(Some(zero), &format!("zeroed block at {at}"));
            let mut junk = good.clone();
            junk[at..end]
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = (i as u8).wrapping_mul(31).wrapping_add(7));
            check(Some(junk), &format!("junk block at {at}"));
        }
        for at in 0..good.len() {
            check(Some(good[..at].to_vec()), &format!("cut at {at}"));
        }
        check(None, "file missing");
        // Every case above damaged something durable: each was found.
        assert_eq!(found, good.len() * 2 + good.len().div_ceil(97) * 2 + 1);
    }

    #[test]
    fn a_compaction_cut_short_keeps_the_generation_before() {
        // A full disk (or a crash) while the next generation's checkpoint
        // was being written: it never took over, the old file is whole.
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&sample()).unwrap();
        j.note_durable(j.lsn());
        drop(j);
        fs::write(path_of(dir.path(), 2), [9u8, 9, 9, 200, 0, 0]).unwrap();
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found, sample());
        assert!(!path_of(dir.path(), 2).exists());
    }

    #[test]
    fn a_checkpoint_compacts_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&sample()).unwrap();
        let cp = JournalRecord::Checkpoint {
            promised: Ballot {
                counter: 3,
                node: 2,
            },
            upto: 2,
            state: vec![1, 2],
            accepted: vec![],
        };
        j.append(&[
            cp.clone(),
            JournalRecord::Promise(Ballot {
                counter: 4,
                node: 1,
            }),
        ])
        .unwrap();
        assert!(
            path_of(dir.path(), 1).exists(),
            "the old generation stays until the new one is durable"
        );
        j.note_durable(j.lsn());
        drop(j);
        assert!(
            !path_of(dir.path(), 1).exists(),
            "the old generation is gone"
        );
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![
                cp,
                JournalRecord::Promise(Ballot {
                    counter: 4,
                    node: 1
                })
            ]
        );
    }

    /// A background checkpoint of slot 2, written beside generation 1 while
    /// more records go there, and the records that follow it.
    fn background_checkpoint(dir: &Path) -> (Journal, JournalRecord, Vec<JournalRecord>) {
        let (mut j, _) = Journal::open(dir).unwrap();
        j.append(&sample()).unwrap();
        let b = Ballot {
            counter: 3,
            node: 2,
        };
        let cp = JournalRecord::Checkpoint {
            promised: b,
            upto: 2,
            state: vec![1, 2],
            accepted: vec![],
        };
        write_checkpoint_file(&j.next_checkpoint_path(), &cp).unwrap();
        // Accepted while the checkpoint was being written: in generation 1.
        let late = JournalRecord::Accept {
            slot: 2,
            ballot: b,
            value: Vec::new(),
        };
        j.append(std::slice::from_ref(&late)).unwrap();
        let resume = vec![
            JournalRecord::Resume { upto: 2 },
            JournalRecord::Promise(b),
            late.clone(),
        ];
        (j, cp, resume)
    }

    #[test]
    fn a_background_checkpoint_takes_over_at_its_resume() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, cp, resume) = background_checkpoint(dir.path());
        j.append(&resume).unwrap();
        assert!(path_of(dir.path(), 2).exists());
        assert!(!tmp_path_of(dir.path(), 2).exists());
        assert!(
            path_of(dir.path(), 1).exists(),
            "the old generation stays until the restating records are durable"
        );
        j.note_durable(j.lsn());
        assert!(!path_of(dir.path(), 1).exists(), "then it goes");
        drop(j);
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found[0], cp);
        assert_eq!(found[1..], resume[1..], "the resume itself is not stored");
    }

    #[test]
    fn a_crash_before_the_restating_records_are_durable_carries_the_older_generation_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, cp, resume) = background_checkpoint(dir.path());
        let before: Vec<JournalRecord> = sample()
            .into_iter()
            .chain(std::iter::once(resume[2].clone()))
            .collect();
        j.append(&resume).unwrap();
        drop(j);
        // The crash lost what followed the checkpoint in the new generation
        // (never synced); the rename survived.
        let new = path_of(dir.path(), 2);
        let mut one = Vec::new();
        framed(&mut one, &cp);
        OpenOptions::new()
            .write(true)
            .open(&new)
            .unwrap()
            .set_len(one.len() as u64)
            .unwrap();
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found[0], cp);
        assert_eq!(found[1..], before[..], "generation 1's records come back");
        assert!(!path_of(dir.path(), 1).exists());
        drop(j);
        let (_, again) = Journal::open(dir.path()).unwrap();
        assert_eq!(again, found, "carried over into generation 2 for good");
    }

    #[test]
    fn a_background_checkpoint_never_taken_over_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _, _) = background_checkpoint(dir.path());
        let tmp = j.next_checkpoint_path();
        assert!(tmp.exists());
        drop(j);
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert!(!tmp.exists(), "the unused checkpoint is deleted");
        assert_eq!(
            found.len(),
            sample().len() + 1,
            "generation 1 holds everything"
        );
        assert_eq!(j.lsn() >> 40, 1);
    }
}
