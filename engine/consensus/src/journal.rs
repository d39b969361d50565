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
//! snapshot). At open, a damaged record at the very end is a torn write and is
//! cut off; damage anywhere else stops the node with advice
//! ([`RecoveryMode::TolerateCorruptTail`]).

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

/// How the journal tells a torn tail from corruption; corruption stops the
/// node (its promises cannot come from anywhere else).
const RECOVERY: RecoveryMode = RecoveryMode::TolerateCorruptTail;

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
    }
}

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
}

fn path_of(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:06}.log"))
}

fn err(what: &str, p: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

impl Journal {
    /// Opens the journal in `dir` (creating it) and returns the records found,
    /// oldest first.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<JournalRecord>), String> {
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
        let generation = gens.last().copied().unwrap_or(1);
        // Older generations are leftovers of a compaction cut short.
        for g in &gens[..gens.len().saturating_sub(1)] {
            let _ = fs::remove_file(path_of(dir, *g));
        }
        let path = path_of(dir, generation);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err("cannot read", &path, e)),
        };
        let mut records = Vec::new();
        let mut off = 0usize;
        while off < bytes.len() {
            let rest = &bytes[off..];
            let len_at = |rest: &[u8]| {
                let b = rest.get(OFF_LEN..RECORD_HEADER_LEN)?;
                Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
            };
            let parsed = (rest.len() >= RECORD_HEADER_LEN)
                .then(|| {
                    let crc = rest[OFF_CRC..OFF_LEN].try_into().unwrap_or_default();
                    let len = len_at(rest)?;
                    let body = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len)?;
                    let mut h = crc32fast::Hasher::new();
                    h.update(&rest[CRC_COVERS..RECORD_HEADER_LEN]);
                    h.update(body);
                    (h.finalize() == u32::from_le_bytes(crc)).then_some(())?;
                    decode_record(body)
                        .ok()
                        .map(|r| (r, RECORD_HEADER_LEN + len))
                })
                .flatten();
            match parsed {
                Some((r, n)) => {
                    records.push(r);
                    off += n;
                }
                None => {
                    // Journal records are unaligned and carry no nonce, so the
                    // next intact one cannot be searched for: something intact
                    // may follow only if the damaged record ends before the file.
                    let len = len_at(rest).unwrap_or(0);
                    let intact_after =
                        rest.len() >= RECORD_HEADER_LEN && RECORD_HEADER_LEN + len < rest.len();
                    // Only the newest generation is read: the file appended to.
                    if RECOVERY.judge(true, intact_after) == Damage::TornTail {
                        trex_net::log_line!(
                            "WARN",
                            "journal {}: cut a torn record of {} bytes at offset {off}",
                            path.display(),
                            rest.len()
                        );
                        break;
                    }
                    return Err(format!(
                        "journal {} is damaged at offset {off}; this node cannot trust its promises. Move its data directory aside and start it empty: it rejoins and catches up from the others",
                        path.display()
                    ));
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err("cannot open", &path, e))?;
        file.set_len(off as u64)
            .map_err(|e| err("cannot truncate", &path, e))?;
        file.sync_all().map_err(|e| err("cannot sync", &path, e))?;
        let dir_file = Arc::new(File::open(dir).map_err(|e| err("cannot open", dir, e))?);
        dir_file
            .sync_all()
            .map_err(|e| err("cannot sync", dir, e))?;
        let j = Journal {
            dir: dir.to_path_buf(),
            dir_file,
            file: Arc::new(file),
            generation,
            len: off as u64,
            buf: Vec::new(),
            dir_dirty: false,
            _lock: lock,
        };
        Ok((j, records))
    }

    /// Appends records (written, not yet durable). A checkpoint starts a new
    /// generation that replaces everything before it. Returns the LSN a sync
    /// must reach for them to be durable.
    pub fn append(&mut self, records: &[JournalRecord]) -> io::Result<u64> {
        for rec in records {
            if matches!(rec, JournalRecord::Checkpoint { .. }) {
                self.rotate(rec)?;
                continue;
            }
            self.buf.clear();
            self.frame(rec);
            (&*self.file).write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
        }
        Ok(self.lsn())
    }

    fn frame(&mut self, rec: &JournalRecord) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        encode_record(&mut self.buf, rec);
        let len = (self.buf.len() - start - RECORD_HEADER_LEN) as u32;
        let h = start..start + RECORD_HEADER_LEN;
        self.buf[h.start + OFF_LEN..h.end].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[h.start + CRC_COVERS..]);
        self.buf[h.start + OFF_CRC..h.start + OFF_LEN].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes a checkpoint into a new file, syncs it, and drops the old file.
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
        // Synchronous on purpose: once the new file exists, it is the journal.
        file.sync_all()?;
        // Records still unsynced in the old file go with it: the checkpoint
        // carries the promise and every accepted value still needed.
        self.dir_file.sync_all()?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let old = path_of(&self.dir, self.generation);
        self.file = Arc::new(file);
        self.generation = next;
        self.len = self.buf.len() as u64;
        fs::remove_file(old)?;
        self.dir_dirty = true;
        Ok(())
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
        assert!(e.contains("damaged") && e.contains("rejoins"), "{e}");
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
}
