//! The storage unit's rules, free of I/O: write-once, fill, trim, seal, and what
//! is acknowledged when. Frames come in through [`Unit::on_frame`]; replies come
//! out through [`Unit::poll_reply`]; sync work comes out through
//! [`Unit::poll_sync`] and its outcome goes back in through [`Unit::on_synced`].
//!
//! A reply that depends on state not yet durable is held until a sync covering
//! that state completes (its *tag* is the LSN it waits for). This covers writes,
//! but also reads and `written` answers about entries still in flight: a reader
//! must never see a value that a crash could take back.

use crate::index::Index;
use crate::storage::{
    AppendError, Appended, Kind, Loc, Meta, ReadError, RecordHead, Recovered, Store, SyncJob,
};
use std::collections::VecDeque;
use trex_net::metrics::BuildInfo;
pub use trex_net::reply::{error_frame, violation, Reply, ReplyTo};
use trex_net::reply::{node_info, refuse_foreign_cluster, reply_header};
use trex_wire::ops::Role;
use trex_wire::{
    self as wire, begin_frame, finish_frame, AddrList, Entry, ErrorCode, Header, InfoReply, Opcode,
    ReadReplyBuilder, Request, SealReply, Status, WriteBatch, FLAG_ERROR,
};

/// Settings of a unit.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitConfig {
    /// Frames must carry this cluster id.
    pub cluster_id: u32,
    /// Acknowledge data writes without waiting for a sync (benchmarks only).
    /// Seal and trim are still durable before they are acknowledged.
    pub sync_never: bool,
    /// Reported in `info` flags: syncs run through io_uring.
    pub io_uring: bool,
    /// Reported in the `node-info` reply.
    pub build: BuildInfo,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    loc: Loc,
    /// LSN a sync must reach before this record may be reported.
    lsn: u64,
    kind: Kind,
    corrupt: bool,
}

#[derive(Debug)]
struct Pending {
    tag: u64,
    request_id: u64,
    opcode: u8,
    reply: Reply,
}

/// Counts of what recovery found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Data and junk records indexed.
    pub records: u64,
    /// Damaged records found.
    pub corrupt: u64,
    /// Records naming an address already indexed (the last one read wins).
    pub duplicates: u64,
    /// Damaged records whose header is damaged too (counted in `corrupt`):
    /// their address is unknown.
    pub unattributed: u64,
    /// Damaged seal/trim records (not counted in `corrupt`: no entry is lost).
    pub corrupt_meta: u64,
}

/// What a unit has stored since it opened (monotonic; for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appends {
    /// Data records appended (writes and repairs).
    pub entries: u64,
    /// Junk records appended (fills).
    pub junk: u64,
    /// Payload bytes of the data records appended.
    pub bytes: u64,
}

/// A storage unit over a [`Store`].
pub struct Unit<S: Store> {
    store: S,
    cfg: UnitConfig,
    index: Index<Slot>,
    meta: Meta,
    /// LSN of the newest meta record (seal/trim): its reply waits for it.
    meta_lsn: u64,
    /// Trim mark made durable, and a trim waiting for its sync: (lsn, mark).
    trim_durable: u64,
    trim_pending: Option<(u64, u64)>,
    tail: u64,
    entries: u64,
    junk: u64,
    corrupt: u64,
    /// Damaged records of unknown address (their header is damaged): while
    /// there are any, an address the unit holds no record of may be one it
    /// acknowledged, so it answers `corrupt` (the client reads another
    /// replica, and read repair copies the value here), never `unwritten`.
    unattributed: u64,
    appended_lsn: u64,
    durable_lsn: u64,
    syncing: bool,
    poisoned: Option<String>,
    /// The last append failed for lack of space and none succeeded since.
    full: bool,
    /// The highest seal refused for lack of room to record it: not durable
    /// (so not acknowledged), but requests below it are refused while the
    /// unit runs.
    unrecorded_seal: u64,
    pending: VecDeque<Pending>,
    ready: VecDeque<Reply>,
    statuses: Vec<Status>,
    appends: Appends,
    /// Seal and trim records appended since the unit opened.
    meta_records: u64,
}

impl<S: Store> Unit<S> {
    /// Opens a unit over `store`, rebuilding the index from it.
    pub fn open(mut store: S, cfg: UnitConfig) -> Result<(Unit<S>, RecoveryStats), String> {
        let mut index: Index<Slot> = Index::new();
        let mut meta = Meta::default();
        let mut stats = RecoveryStats::default();
        store.recover(&mut |r| match r {
            Recovered::Record { addr, kind, loc } => {
                stats.records += 1;
                let slot = Slot {
                    loc,
                    lsn: 0,
                    kind,
                    corrupt: false,
                };
                if index.insert(addr, slot).is_some() {
                    stats.duplicates += 1;
                }
            }
            Recovered::Corrupt { addr, loc } => {
                stats.corrupt += 1;
                match addr {
                    Some(addr) => {
                        let slot = Slot {
                            loc,
                            lsn: 0,
                            kind: Kind::Data,
                            corrupt: true,
                        };
                        index.insert_if_absent(addr, slot);
                    }
                    None => stats.unattributed += 1,
                }
            }
            Recovered::CorruptMeta { .. } => stats.corrupt_meta += 1,
            Recovered::Meta(m) => meta = meta.max(m),
        })?;
        index.retain(|addr, _| addr >= meta.trim_mark);
        let mut unit = Unit {
            store,
            cfg,
            meta,
            meta_lsn: 0,
            trim_durable: meta.trim_mark,
            trim_pending: None,
            // Never below the trim mark, so the tail cannot move back when a
            // trim has reclaimed every entry.
            tail: index
                .max_addr()
                .map_or(0, |a| a.saturating_add(1))
                .max(meta.trim_mark),
            entries: index
                .values()
                .filter(|s| s.kind == Kind::Data && !s.corrupt)
                .count() as u64,
            junk: index.values().filter(|s| s.kind == Kind::Junk).count() as u64,
            corrupt: stats.corrupt - stats.unattributed,
            unattributed: stats.unattributed,
            index,
            appended_lsn: 0,
            durable_lsn: 0,
            syncing: false,
            poisoned: None,
            full: false,
            unrecorded_seal: 0,
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            statuses: Vec::new(),
            appends: Appends::default(),
            meta_records: 0,
        };
        unit.store.reclaim(unit.trim_durable);
        Ok((unit, stats))
    }

    /// The store (read-only).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, to change in place (the simulator gives a memory store a
    /// byte budget it then runs into).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Records whether syncs run through io_uring (reported by `info`).
    pub fn set_io_uring(&mut self, on: bool) {
        self.cfg.io_uring = on;
    }

    /// Gives the store back (for tests that crash and reopen it).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The sealed epoch and trim mark.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// One past the highest address written; 0 if none.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Why the unit stopped accepting writes, if it has.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Records appended since the unit opened.
    pub fn appends(&self) -> Appends {
        self.appends
    }

    /// Seal and trim records appended since the unit opened.
    pub fn meta_records(&self) -> u64 {
        self.meta_records
    }

    /// Replies waiting for a sync.
    pub fn pending_replies(&self) -> usize {
        self.pending.len()
    }

    /// The state `info` reports.
    pub fn info(&self) -> InfoReply {
        let s = self.store.stats();
        let mut flags = 0;
        if self.poisoned.is_some() {
            flags |= wire::INFO_POISONED;
        }
        if self.cfg.sync_never {
            flags |= wire::INFO_SYNC_NEVER;
        }
        if self.cfg.io_uring {
            flags |= wire::INFO_IO_URING;
        }
        if self.full {
            flags |= wire::INFO_FULL;
        }
        InfoReply {
            sealed_epoch: self.meta.sealed_epoch,
            trim_mark: self.meta.trim_mark,
            tail: self.tail,
            entries: self.entries,
            junk: self.junk,
            corrupt: self.corrupt + self.unattributed,
            segments: s.segments,
            flags,
            segment_size_bytes: s.segment_size_bytes,
            used_bytes: s.used_bytes,
        }
    }

    /// Handles one whole, checksum-verified request frame. Returns false if the
    /// frame violated the protocol: its error reply closes the connection, and
    /// nothing more should be read from it.
    pub fn on_frame(&mut self, to: ReplyTo, header: &Header, body: &[u8]) -> bool {
        if header.is_response() {
            let msg =
                "received a reply frame where a request was expected; only clients send requests";
            self.refuse(to, header, ErrorCode::UnexpectedResponse, msg, true);
            return false;
        }
        let (epoch, cluster) = (self.meta.sealed_epoch, self.cfg.cluster_id);
        if let Some(r) = refuse_foreign_cluster(to, header, "unit", epoch, cluster) {
            self.ready.push_back(r);
            return false;
        }
        if header.opcode == Opcode::NodeInfo as u8 {
            let r = node_info(
                to,
                header,
                body,
                Role::Storage,
                &self.cfg.build,
                epoch,
                cluster,
            );
            let keep = !r.close;
            self.ready.push_back(r);
            return keep;
        }
        let request = match wire::decode_request(header.opcode, body) {
            Ok(r) => r,
            Err(wire::DecodeError::UnknownOpcode(op)) => {
                let msg =
                    format!("opcode {op:#04x} is not a storage-unit request (known: 0x01-0x07, node-info 0x40)");
                self.refuse(to, header, ErrorCode::UnknownOpcode, &msg, true);
                return false;
            }
            Err(e) => {
                let name = Opcode::from_u8(header.opcode).map_or("?", Opcode::name);
                let msg = format!("{name} body does not decode: {e}");
                self.refuse(to, header, ErrorCode::MalformedBody, &msg, true);
                return false;
            }
        };
        let fenced = !matches!(request, Request::Seal { .. } | Request::Info);
        if fenced && header.epoch < self.meta.sealed_epoch.max(self.unrecorded_seal) {
            let msg = format!(
                "epoch {} is sealed; the unit is at epoch {}: refresh the layout and retry",
                header.epoch,
                self.meta.sealed_epoch.max(self.unrecorded_seal)
            );
            self.refuse(to, header, ErrorCode::SealedEpoch, &msg, false);
            return true;
        }
        let mutates = !matches!(request, Request::Read(_) | Request::Info);
        if mutates {
            if let Some(why) = &self.poisoned {
                let msg = format!("unit is poisoned and accepts no writes ({why}); restart it");
                self.refuse(to, header, ErrorCode::Poisoned, &msg, false);
                return true;
            }
        }
        match request {
            Request::Write(batch) => self.on_write(to, header, batch, false),
            Request::Repair(batch) => self.on_write(to, header, batch, true),
            Request::VerifiedRepair(batch) => self.on_verified_repair(to, header, batch),
            Request::Read(addrs) => self.on_read(to, header, addrs),
            Request::Fill(addrs) => self.on_fill(to, header, addrs),
            Request::Trim { prefix } => self.on_trim(to, header, prefix),
            Request::Seal { epoch } => self.on_seal(to, header, epoch),
            Request::Info => {
                let info = self.info();
                self.respond(to, header, 0, |out| wire::encode_info_reply(out, &info));
            }
        }
        true
    }

    /// `write`, or with `repair` a write that may also replace a record that
    /// fails its checksum (read repair: the client copies the value the chain
    /// decided, read from another replica; a damaged record is never served,
    /// so nothing anyone saw changes).
    fn on_write(&mut self, to: ReplyTo, header: &Header, batch: WriteBatch<'_>, repair: bool) {
        let mut statuses = std::mem::take(&mut self.statuses);
        statuses.clear();
        let mut tag = 0;
        for op in batch.iter() {
            let (status, t) = self.write_one(op.addr, op.writer, op.seq, op.data, repair);
            statuses.push(status);
            tag = tag.max(t);
        }
        self.respond(to, header, tag, |out| {
            wire::encode_status_list(out, &statuses)
        });
        self.statuses = statuses;
    }

    /// `verified-repair`: each entry replaces the damaged record of its
    /// address only if that record provably held it
    /// ([`Store::verify_copy`]: its header verifies by its own checksum and
    /// names the same entry, and the record's checksum matches the entry's
    /// bytes). It never writes an address the unit holds nothing at. So a
    /// client may offer a copy from a unit it could not otherwise trust (a
    /// former replica that may hold an undecided value): only the damaged
    /// unit's own bytes get in. Statuses: `ok` (replaced, or the same entry
    /// already held intact), `written` (the address holds, or its damaged
    /// record held, another entry), `junk` (a hole is held), `corrupt` (the
    /// damaged record cannot tell: its header is damaged too, or it cannot be
    /// read; or the unit holds no record of the address and cannot rule out
    /// having lost one), `unwritten` (nothing was held there), `trimmed`,
    /// `too-large`, `out-of-range`, `full`, `io`.
    fn on_verified_repair(&mut self, to: ReplyTo, header: &Header, batch: WriteBatch<'_>) {
        let mut statuses = std::mem::take(&mut self.statuses);
        statuses.clear();
        let mut tag = 0;
        for op in batch.iter() {
            let (status, t) = self.verified_repair_one(op.addr, op.writer, op.seq, op.data);
            statuses.push(status);
            tag = tag.max(t);
        }
        self.respond(to, header, tag, |out| {
            wire::encode_status_list(out, &statuses)
        });
        self.statuses = statuses;
    }

    fn verified_repair_one(
        &mut self,
        addr: u64,
        writer: u64,
        seq: u64,
        data: &[u8],
    ) -> (Status, u64) {
        match self.index.get(addr).copied() {
            _ if addr > wire::range::MAX_COUNTER || addr < self.meta.trim_mark => {
                self.write_one(addr, writer, seq, data, false)
            }
            Some(slot) if slot.corrupt => {
                if data.len() > self.store.max_payload()
                    || data.len() > wire::MAX_ENTRY_LEN as usize
                {
                    return (Status::TooLarge, 0);
                }
                let head = RecordHead {
                    kind: Kind::Data,
                    addr,
                    writer,
                    seq,
                };
                match self.store.verify_copy(slot.loc, &head, data) {
                    Some(true) => self.append(&head, data),
                    Some(false) => (Status::Written, 0),
                    None => (Status::Corrupt, 0),
                }
            }
            Some(_) => self.write_one(addr, writer, seq, data, false),
            None if self.unattributed > 0 => (Status::Corrupt, 0),
            None => (Status::Unwritten, 0),
        }
    }

    fn on_fill(&mut self, to: ReplyTo, header: &Header, addrs: AddrList<'_>) {
        let mut statuses = std::mem::take(&mut self.statuses);
        statuses.clear();
        let mut tag = 0;
        for addr in addrs.iter() {
            let (status, t) = self.fill_one(addr);
            statuses.push(status);
            tag = tag.max(t);
        }
        self.respond(to, header, tag, |out| {
            wire::encode_status_list(out, &statuses)
        });
        self.statuses = statuses;
    }

    /// Tag for a reply about an existing slot: wait until it is durable.
    fn slot_tag(&self, slot: &Slot) -> u64 {
        if self.cfg.sync_never {
            0
        } else {
            slot.lsn
        }
    }

    fn write_one(
        &mut self,
        addr: u64,
        writer: u64,
        seq: u64,
        data: &[u8],
        repair: bool,
    ) -> (Status, u64) {
        // Addresses grow by one per entry; nothing legitimate comes near
        // 2^62, and a unit's tail above it would make the next sequencer
        // start its counter there (trex_wire::range).
        if addr > wire::range::MAX_COUNTER {
            return (Status::OutOfRange, 0);
        }
        if addr < self.meta.trim_mark {
            return (Status::Trimmed, self.trimmed_tag(addr));
        }
        if data.len() > self.store.max_payload() || data.len() > wire::MAX_ENTRY_LEN as usize {
            return (Status::TooLarge, 0);
        }
        if let Some(slot) = self
            .index
            .get(addr)
            .copied()
            .filter(|s| !(repair && s.corrupt))
        {
            let tag = self.slot_tag(&slot);
            if slot.corrupt {
                return (Status::Corrupt, 0);
            }
            if slot.kind == Kind::Junk {
                return (Status::Junk, tag);
            }
            return match self.store.read(slot.loc) {
                Ok((h, p)) if h.writer == writer && h.seq == seq && p == data => (Status::Ok, tag),
                Ok(_) => (Status::Written, tag),
                Err(ReadError::Corrupt(_)) => {
                    self.mark_corrupt(addr);
                    (Status::Corrupt, 0)
                }
                Err(ReadError::Io { .. }) => {
                    self.mark_corrupt(addr);
                    (Status::Io, 0)
                }
            };
        }
        let head = RecordHead {
            kind: Kind::Data,
            addr,
            writer,
            seq,
        };
        self.append(&head, data)
    }

    fn fill_one(&mut self, addr: u64) -> (Status, u64) {
        // Addresses grow by one per entry; nothing legitimate comes near
        // 2^62, and a unit's tail above it would make the next sequencer
        // start its counter there (trex_wire::range).
        if addr > wire::range::MAX_COUNTER {
            return (Status::OutOfRange, 0);
        }
        if addr < self.meta.trim_mark {
            return (Status::Trimmed, self.trimmed_tag(addr));
        }
        match self.index.get(addr).copied() {
            // A damaged record that provably was junk (its header verifies
            // and there is no payload): the fill restores exactly it.
            Some(slot)
                if slot.corrupt
                    && self
                        .store
                        .verify_copy(slot.loc, &RecordHead::junk(addr), &[])
                        == Some(true) =>
            {
                self.append(&RecordHead::junk(addr), &[])
            }
            Some(slot) if slot.corrupt => (Status::Corrupt, 0),
            Some(slot) if slot.kind == Kind::Junk => (Status::Ok, self.slot_tag(&slot)),
            Some(slot) => (Status::Written, self.slot_tag(&slot)),
            None => self.append(&RecordHead::junk(addr), &[]),
        }
    }

    /// A `trimmed` answer about an address the durable trim mark does not cover
    /// yet must wait for the trim's sync: a crash could still undo the trim.
    fn trimmed_tag(&self, addr: u64) -> u64 {
        match self.trim_pending {
            Some((lsn, _)) if addr >= self.trim_durable => lsn,
            _ => 0,
        }
    }

    fn append(&mut self, head: &RecordHead, data: &[u8]) -> (Status, u64) {
        if self.poisoned.is_some() {
            return (Status::Io, 0);
        }
        match self.store.append(head, data) {
            Ok(Appended { loc, lsn }) => {
                self.appended_lsn = self.appended_lsn.max(lsn);
                let slot = Slot {
                    loc,
                    lsn,
                    kind: head.kind,
                    corrupt: false,
                };
                if self
                    .index
                    .insert(head.addr, slot)
                    .is_some_and(|old| old.corrupt)
                {
                    // A repair replaced a damaged record.
                    self.corrupt = self.corrupt.saturating_sub(1);
                }
                self.tail = self.tail.max(head.addr.saturating_add(1));
                self.full = false;
                match head.kind {
                    Kind::Junk => {
                        self.junk += 1;
                        self.appends.junk += 1;
                    }
                    _ => {
                        self.entries += 1;
                        self.appends.entries += 1;
                        self.appends.bytes += data.len() as u64;
                    }
                }
                (Status::Ok, if self.cfg.sync_never { 0 } else { lsn })
            }
            Err(AppendError::Full(_)) => {
                self.full = true;
                (Status::Full, 0)
            }
            Err(AppendError::Io(e)) => {
                self.poison(format!("append failed: {e}"));
                (Status::Io, 0)
            }
        }
    }

    /// Verifies about `budget_bytes` more of the records recovery took from
    /// an index unread ([`Store::scrub`]); each one found damaged answers
    /// `corrupt` from now on (and counts in `info`, so the repair loop
    /// rewrites it from another replica). Returns how many were found.
    pub fn scrub(&mut self, budget_bytes: usize) -> usize {
        let mut n = 0;
        for (addr, loc) in self.store.scrub(budget_bytes) {
            // Only if the index still points there (a repair may have
            // replaced it, a trim removed it).
            if self
                .index
                .get(addr)
                .is_some_and(|s| s.loc == loc && !s.corrupt)
            {
                trex_net::log_line!(
                    "WARN",
                    "scrub: the record of address {addr} (segment {}, offset {}) is damaged; it answers corrupt and the repair loop rewrites it from another replica",
                    loc.seg,
                    loc.off
                );
                self.mark_corrupt(addr);
                n += 1;
            }
        }
        n
    }

    fn mark_corrupt(&mut self, addr: u64) {
        if let Some(slot) = self.index.get_mut(addr) {
            if !slot.corrupt {
                slot.corrupt = true;
                self.corrupt += 1;
                if slot.kind == Kind::Data {
                    self.entries -= 1;
                }
            }
        }
    }

    fn on_read(&mut self, to: ReplyTo, header: &Header, addrs: AddrList<'_>) {
        let mut frame = Vec::new();
        let start = begin_frame(&mut frame);
        let mut b = ReadReplyBuilder::begin(&mut frame);
        // Reserve room for a status line per address so the reply always fits.
        let mut budget = wire::body_budget_left(4 + 9 * addrs.len());
        let mut tag = 0;
        let mut bad = Vec::new();
        for addr in addrs.iter() {
            let slot = match self.index.get(addr) {
                _ if addr < self.meta.trim_mark => {
                    tag = tag.max(self.trimmed_tag(addr));
                    b.status(&mut frame, addr, Status::Trimmed);
                    continue;
                }
                None if self.unattributed > 0 => {
                    // Maybe the address of a record whose header is damaged.
                    b.status(&mut frame, addr, Status::Corrupt);
                    continue;
                }
                None => {
                    b.status(&mut frame, addr, Status::Unwritten);
                    continue;
                }
                Some(slot) => *slot,
            };
            tag = tag.max(self.slot_tag(&slot));
            if slot.corrupt {
                b.status(&mut frame, addr, Status::Corrupt);
            } else if slot.kind == Kind::Junk {
                b.status(&mut frame, addr, Status::Junk);
            } else {
                match self.store.read(slot.loc) {
                    Ok((h, data)) if h.addr == addr => {
                        let extra = wire::READ_ENTRY_OVERHEAD - 9 + data.len();
                        if extra > budget {
                            b.status(&mut frame, addr, Status::Deferred);
                        } else {
                            budget -= extra;
                            let e = Entry {
                                writer: h.writer,
                                seq: h.seq,
                                data,
                            };
                            b.entry(&mut frame, addr, e);
                        }
                    }
                    Err(ReadError::Io { why, .. }) => {
                        // The device failed to return it: answered `io`
                        // (read another replica), and from now on treated as
                        // damaged, so repair rewrites it elsewhere (away from
                        // a bad sector).
                        trex_net::log_line!("WARN", "read of address {addr} failed: {why}; answered io, the copy is rewritten from another replica by repair");
                        bad.push(addr);
                        b.status(&mut frame, addr, Status::Io);
                    }
                    _ => {
                        bad.push(addr);
                        b.status(&mut frame, addr, Status::Corrupt);
                    }
                }
            }
        }
        b.finish(&mut frame);
        for addr in bad {
            self.mark_corrupt(addr);
        }
        finish_frame(&mut frame, start, self.reply_header(header, 0));
        self.queue(
            tag,
            header,
            Reply {
                to,
                frame,
                close: false,
            },
        );
    }

    fn on_trim(&mut self, to: ReplyTo, header: &Header, prefix: u64) {
        if prefix > wire::range::MAX_COUNTER {
            let msg = format!(
                "trim refused: prefix {prefix} is out of range (addresses are at most {}); nothing was trimmed",
                wire::range::MAX_COUNTER
            );
            return self.refuse(to, header, ErrorCode::OutOfRange, &msg, false);
        }
        let mut tag = self.meta_tag();
        if prefix > self.meta.trim_mark {
            let meta = Meta {
                trim_mark: prefix,
                ..self.meta
            };
            match self.append_meta(meta) {
                Ok(lsn) => {
                    tag = lsn;
                    self.trim_pending = Some((lsn, prefix));
                    // Durable at once (a full store records it outside the
                    // segments): no sync will come to settle it.
                    self.settle_trim();
                    let before = self.index.len();
                    let (mut data, mut junk) = (0, 0);
                    self.index.retain(|addr, s| {
                        let keep = addr >= prefix;
                        if !keep && !s.corrupt {
                            match s.kind {
                                Kind::Junk => junk += 1,
                                _ => data += 1,
                            }
                        }
                        keep
                    });
                    debug_assert!(self.index.len() <= before);
                    self.entries -= data;
                    self.junk -= junk;
                    self.tail = self.tail.max(prefix);
                }
                Err((code, msg)) => return self.refuse(to, header, code, &msg, false),
            }
        }
        let mark = self.meta.trim_mark;
        self.respond(to, header, tag, |out| wire::encode_u64(out, mark));
    }

    fn on_seal(&mut self, to: ReplyTo, header: &Header, epoch: u64) {
        let mut reply = SealReply {
            sealed: false,
            sealed_epoch: self.meta.sealed_epoch,
            tail: self.tail,
        };
        let mut tag = self.meta_tag();
        if let Err(e) = wire::range::check_step("epoch", self.meta.sealed_epoch, epoch) {
            let msg = format!("seal refused: {e}");
            return self.refuse(to, header, ErrorCode::OutOfRange, &msg, false);
        }
        if epoch > self.meta.sealed_epoch {
            let meta = Meta {
                sealed_epoch: epoch,
                ..self.meta
            };
            match self.append_meta(meta) {
                Ok(lsn) => {
                    tag = lsn;
                    reply.sealed = true;
                    reply.sealed_epoch = epoch;
                }
                Err((code, msg)) => {
                    if code == ErrorCode::Full {
                        // Not durable, so not acknowledged; but while it runs
                        // the unit refuses the older epoch all the same (it
                        // may get room again before a seal can be recorded).
                        self.unrecorded_seal = self.unrecorded_seal.max(epoch);
                    }
                    return self.refuse(to, header, code, &msg, false);
                }
            }
        }
        self.respond(to, header, tag, |out| wire::encode_seal_reply(out, &reply));
    }

    /// Replies about the sealed epoch or trim mark wait until the newest meta
    /// record is durable, even when nothing changed (a retry may overtake the
    /// sync of the request that did change it).
    fn meta_tag(&self) -> u64 {
        self.meta_lsn
    }

    fn append_meta(&mut self, meta: Meta) -> Result<u64, (ErrorCode, String)> {
        match self.store.append(&RecordHead::meta(meta), &[]) {
            Ok(a) => {
                self.meta = meta;
                self.meta_lsn = a.lsn;
                self.meta_records += 1;
                self.appended_lsn = self.appended_lsn.max(a.lsn);
                Ok(a.lsn)
            }
            Err(AppendError::Full(e)) => {
                Err((ErrorCode::Full, format!("cannot record the change: {e}")))
            }
            Err(AppendError::Io(e)) => {
                let msg = format!("cannot record the change: {e}");
                self.poison(msg.clone());
                Err((ErrorCode::Poisoned, msg))
            }
        }
    }

    /// Replies carry the unit's sealed epoch (a client learns it was fenced)
    /// and its cluster id.
    fn reply_header(&self, req: &Header, flags: u16) -> Header {
        reply_header(req, flags, self.meta.sealed_epoch, self.cfg.cluster_id)
    }

    fn respond(&mut self, to: ReplyTo, req: &Header, tag: u64, body: impl FnOnce(&mut Vec<u8>)) {
        let mut frame = Vec::with_capacity(64);
        let start = begin_frame(&mut frame);
        body(&mut frame);
        finish_frame(&mut frame, start, self.reply_header(req, 0));
        self.queue(
            tag,
            req,
            Reply {
                to,
                frame,
                close: false,
            },
        );
    }

    fn refuse(&mut self, to: ReplyTo, req: &Header, code: ErrorCode, msg: &str, close: bool) {
        let frame = error_frame(&self.reply_header(req, FLAG_ERROR), code, msg);
        self.ready.push_back(Reply { to, frame, close });
    }

    fn queue(&mut self, tag: u64, req: &Header, reply: Reply) {
        if tag > self.durable_lsn && self.poisoned.is_some() {
            // No sync will ever run again: this reply would wait forever.
            let why = self.poisoned.clone().unwrap_or_default();
            let msg = format!(
                "unit is poisoned ({why}); this request depends on data whose durability is unknown; restart the unit"
            );
            let frame = error_frame(
                &self.reply_header(req, FLAG_ERROR),
                ErrorCode::Poisoned,
                &msg,
            );
            self.ready.push_back(Reply {
                to: reply.to,
                frame,
                close: false,
            });
            return;
        }
        if tag <= self.durable_lsn {
            self.ready.push_back(reply);
        } else {
            let p = Pending {
                tag,
                request_id: req.request_id,
                opcode: req.opcode,
                reply,
            };
            self.pending.push_back(p);
        }
    }

    fn poison(&mut self, why: String) {
        if self.poisoned.is_some() {
            return;
        }
        self.poisoned = Some(why.clone());
        // Every reply still waiting depends on data whose fate is now unknown.
        for p in std::mem::take(&mut self.pending) {
            let req = Header {
                opcode: p.opcode,
                request_id: p.request_id,
                ..Header::default()
            };
            let h = self.reply_header(&req, FLAG_ERROR);
            let msg = format!(
                "{why}: this request's outcome is unknown and the unit accepts no more writes; \
                 restart it to recover from its durable state"
            );
            let frame = error_frame(&h, ErrorCode::Poisoned, &msg);
            self.ready.push_back(Reply {
                to: p.reply.to,
                frame,
                close: false,
            });
        }
    }

    /// The next reply ready to send.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.ready.pop_front()
    }

    /// A sync to run now, if one is due: at most one runs at a time, and it
    /// covers everything appended before it started (group commit).
    pub fn poll_sync(&mut self) -> Option<SyncJob> {
        if self.syncing || self.poisoned.is_some() {
            return None;
        }
        let data_due = !self.cfg.sync_never && self.appended_lsn > self.durable_lsn;
        let meta_due = self.meta_lsn > self.durable_lsn;
        if !(data_due || meta_due) {
            return None;
        }
        let job = self.store.begin_sync()?;
        self.syncing = true;
        Some(job)
    }

    /// Reports the outcome of the sync job handed out last. A failure poisons
    /// the unit: after a failed fsync the kernel may have dropped the dirty
    /// pages, so retrying would lie.
    pub fn on_synced(&mut self, lsn: u64, result: Result<(), String>) {
        self.syncing = false;
        self.store.end_sync(lsn, result.is_ok());
        if let Err(e) = result {
            return self.poison(format!("sync failed: {e}"));
        }
        self.durable_lsn = self.durable_lsn.max(lsn);
        let durable = self.durable_lsn;
        // One pass, keeping arrival order among the replies that stay.
        let (done, waiting): (VecDeque<Pending>, VecDeque<Pending>) =
            std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|p| p.tag <= durable);
        self.pending = waiting;
        self.ready.extend(done.into_iter().map(|p| p.reply));
        self.settle_trim();
    }

    /// A pending trim whose record is durable becomes the durable mark, and
    /// the store reclaims what lies below it.
    fn settle_trim(&mut self) {
        if let Some((tlsn, mark)) = self.trim_pending {
            if tlsn <= self.durable_lsn {
                self.trim_durable = self.trim_durable.max(mark);
                self.trim_pending = None;
            }
        }
        if self.trim_durable > 0 {
            self.store.reclaim(self.trim_durable);
        }
    }

    /// Whether the last append failed for lack of space (and none succeeded since).
    pub fn full(&self) -> bool {
        self.full
    }

    /// Whether a sync is running.
    pub fn syncing(&self) -> bool {
        self.syncing
    }
}
