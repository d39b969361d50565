//! Message bodies: encoders that append to a `Vec<u8>` and bounds-checked
//! decoders that borrow from the received frame. Decoders validate a whole body
//! up front, so the views they return iterate without further errors.

use crate::codes::{Opcode, Status};
use crate::framing::MAX_BODY_LEN;
use thiserror::Error;

/// Most operations one batched frame may carry.
pub const MAX_OPS_PER_FRAME: u32 = 65_536;
/// Largest entry payload in bytes (4 MiB).
pub const MAX_ENTRY_LEN: u32 = 4 * 1024 * 1024;
/// Longest message in an error body, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// Bytes one write operation takes besides its data: addr, writer, seq, len.
pub const WRITE_OP_OVERHEAD: usize = 8 + 8 + 8 + 4;
/// Bytes one read result with data takes besides its data.
pub const READ_ENTRY_OVERHEAD: usize = 8 + 1 + 8 + 8 + 4;

/// Why a body could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ended before a field did.
    #[error("body ends early: need {need} bytes at offset {offset}, have {have}")]
    UnexpectedEof {
        /// Where the field starts.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// More operations than one frame may carry.
    #[error("{count} operations in one frame exceed the limit of {max}: split the batch")]
    TooManyOps {
        /// Declared count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// An entry is larger than allowed.
    #[error("entry of {len} bytes exceeds the {max}-byte limit")]
    EntryTooLarge {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// Bytes are left after the message.
    #[error("{extra} unexpected bytes after the message at offset {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many.
        extra: usize,
    },
    /// A status byte has no meaning.
    #[error("unknown status byte {value} at offset {offset}")]
    BadStatus {
        /// Where.
        offset: usize,
        /// The byte.
        value: u8,
    },
    /// A byte that must be 0 or 1 is neither.
    #[error("byte {value} at offset {offset} must be 0 or 1")]
    BadBool {
        /// Where.
        offset: usize,
        /// The byte.
        value: u8,
    },
    /// A role byte (`node-info`) has no meaning.
    #[error("unknown role byte {value} at offset {offset} (1 consensus, 2 sequencer, 3 storage)")]
    BadRole {
        /// Where.
        offset: usize,
        /// The byte.
        value: u8,
    },
    /// The opcode has no request body defined (or is unknown).
    #[error("opcode {0:#04x} is not a request this protocol version knows")]
    UnknownOpcode(u8),
}

/// A bounds-checked little-endian reader over a body.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    off: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, off: 0 }
    }

    /// Current offset.
    pub fn offset(&self) -> usize {
        self.off
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.off
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEof {
                offset: self.off,
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.off..self.off + n];
        self.off += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn status(&mut self) -> Result<Status, DecodeError> {
        let offset = self.off;
        let value = self.u8()?;
        Status::from_u8(value).ok_or(DecodeError::BadStatus { offset, value })
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        let offset = self.off;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadBool { offset, value }),
        }
    }

    /// Reads an operation count, refusing more than one frame may carry.
    pub fn count(&mut self) -> Result<u32, DecodeError> {
        let count = self.u32()?;
        if count > MAX_OPS_PER_FRAME {
            return Err(DecodeError::TooManyOps {
                count,
                max: MAX_OPS_PER_FRAME,
            });
        }
        Ok(count)
    }

    /// Fails unless every byte has been read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                offset: self.off,
                extra,
            }),
        }
    }
}

/// Appends a little-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn patch_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// One entry to store: the address, who wrote it, and the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOp<'a> {
    /// Log address.
    pub addr: u64,
    /// Writer id (0 is reserved for junk).
    pub writer: u64,
    /// The writer's sequence number for this write; a retry reuses it.
    pub seq: u64,
    /// The entry's bytes.
    pub data: &'a [u8],
}

/// A validated batch of write operations, borrowed from a frame body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteBatch<'a> {
    count: u32,
    ops: &'a [u8],
}

impl<'a> WriteBatch<'a> {
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The operations in order.
    pub fn iter(&self) -> impl Iterator<Item = WriteOp<'a>> + 'a {
        let mut r = Reader::new(self.ops);
        (0..self.count).map_while(move |_| read_write_op(&mut r).ok())
    }
}

fn read_write_op<'a>(r: &mut Reader<'a>) -> Result<WriteOp<'a>, DecodeError> {
    let addr = r.u64()?;
    let writer = r.u64()?;
    let seq = r.u64()?;
    // An entry over MAX_ENTRY_LEN still decodes (the frame's own length
    // bounds it): the unit answers that entry `too-large` and applies the
    // rest of the batch, as docs/wire.md promises.
    let len = r.u32()?;
    let data = r.bytes(len as usize)?;
    Ok(WriteOp {
        addr,
        writer,
        seq,
        data,
    })
}

/// Encodes a write request body: `count u32`, then per op
/// `addr u64, writer u64, seq u64, len u32, data`.
pub fn encode_write_request(out: &mut Vec<u8>, ops: &[WriteOp<'_>]) {
    put_u32(out, ops.len() as u32);
    for op in ops {
        put_u64(out, op.addr);
        put_u64(out, op.writer);
        put_u64(out, op.seq);
        put_u32(out, op.data.len() as u32);
        out.extend_from_slice(op.data);
    }
}

/// Decodes and validates a write request body.
pub fn decode_write_request(body: &[u8]) -> Result<WriteBatch<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.count()?;
    let start = r.offset();
    for _ in 0..count {
        read_write_op(&mut r)?;
    }
    r.finish()?;
    Ok(WriteBatch {
        count,
        ops: &body[start..],
    })
}

/// A validated list of addresses (the body of a read or fill request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrList<'a> {
    raw: &'a [u8],
}

impl<'a> AddrList<'a> {
    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.raw.len() / 8
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The addresses in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + 'a {
        self.raw.chunks_exact(8).map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        })
    }
}

/// Encodes a read or fill request body: `count u32`, then `addr u64` per address.
pub fn encode_addr_list(out: &mut Vec<u8>, addrs: &[u64]) {
    put_u32(out, addrs.len() as u32);
    for a in addrs {
        put_u64(out, *a);
    }
}

/// Decodes a read or fill request body.
pub fn decode_addr_list(body: &[u8]) -> Result<AddrList<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.count()?;
    let raw = r.bytes(count as usize * 8)?;
    r.finish()?;
    Ok(AddrList { raw })
}

/// A validated list of per-operation statuses (the body of a write or fill reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusList<'a> {
    raw: &'a [u8],
}

impl<'a> StatusList<'a> {
    /// Number of statuses.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The statuses in request order.
    pub fn iter(&self) -> impl Iterator<Item = Status> + 'a {
        // Validated at decode time; `Io` is never produced for a valid list.
        self.raw
            .iter()
            .map(|b| Status::from_u8(*b).unwrap_or(Status::Io))
    }
}

/// Encodes a write or fill reply body: `count u32`, then one status byte per op.
pub fn encode_status_list(out: &mut Vec<u8>, statuses: &[Status]) {
    put_u32(out, statuses.len() as u32);
    out.extend(statuses.iter().map(|s| *s as u8));
}

/// Decodes a write or fill reply body.
pub fn decode_status_list(body: &[u8]) -> Result<StatusList<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.count()?;
    let start = r.offset();
    for _ in 0..count {
        r.status()?;
    }
    r.finish()?;
    Ok(StatusList {
        raw: &body[start..],
    })
}

/// A stored entry as a read returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Writer id.
    pub writer: u64,
    /// Writer's sequence number.
    pub seq: u64,
    /// The bytes.
    pub data: &'a [u8],
}

/// One result of a batched read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadResult<'a> {
    /// The address asked for.
    pub addr: u64,
    /// `Ok` when `entry` is present; otherwise why not.
    pub status: Status,
    /// The entry, for `Status::Ok`.
    pub entry: Option<Entry<'a>>,
}

/// A validated read reply, borrowed from a frame body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadResults<'a> {
    count: u32,
    raw: &'a [u8],
}

impl<'a> ReadResults<'a> {
    /// Number of results.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The results in request order.
    pub fn iter(&self) -> impl Iterator<Item = ReadResult<'a>> + 'a {
        let mut r = Reader::new(self.raw);
        (0..self.count).map_while(move |_| read_result(&mut r).ok())
    }
}

fn read_result<'a>(r: &mut Reader<'a>) -> Result<ReadResult<'a>, DecodeError> {
    let addr = r.u64()?;
    let status = r.status()?;
    let entry = if status == Status::Ok {
        let writer = r.u64()?;
        let seq = r.u64()?;
        let len = r.u32()?;
        if len > MAX_ENTRY_LEN {
            return Err(DecodeError::EntryTooLarge {
                len,
                max: MAX_ENTRY_LEN,
            });
        }
        Some(Entry {
            writer,
            seq,
            data: r.bytes(len as usize)?,
        })
    } else {
        None
    };
    Ok(ReadResult {
        addr,
        status,
        entry,
    })
}

/// Decodes a read reply body.
pub fn decode_read_reply(body: &[u8]) -> Result<ReadResults<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.count()?;
    let start = r.offset();
    for _ in 0..count {
        read_result(&mut r)?;
    }
    r.finish()?;
    Ok(ReadResults {
        count,
        raw: &body[start..],
    })
}

/// Builds a read reply body in place: `count u32`, then per result
/// `addr u64, status u8` and, for `Ok`, `writer u64, seq u64, len u32, data`.
#[derive(Debug)]
pub struct ReadReplyBuilder {
    count_at: usize,
    count: u32,
}

impl ReadReplyBuilder {
    /// Starts the body at the end of `out`.
    pub fn begin(out: &mut Vec<u8>) -> ReadReplyBuilder {
        let count_at = out.len();
        put_u32(out, 0);
        ReadReplyBuilder { count_at, count: 0 }
    }

    /// Appends a result with data.
    pub fn entry(&mut self, out: &mut Vec<u8>, addr: u64, entry: Entry<'_>) {
        put_u64(out, addr);
        out.push(Status::Ok as u8);
        put_u64(out, entry.writer);
        put_u64(out, entry.seq);
        put_u32(out, entry.data.len() as u32);
        out.extend_from_slice(entry.data);
        self.count += 1;
    }

    /// Appends a result without data (`status` must not be `Ok`).
    pub fn status(&mut self, out: &mut Vec<u8>, addr: u64, status: Status) {
        debug_assert_ne!(status, Status::Ok, "an Ok read result carries an entry");
        put_u64(out, addr);
        out.push(status as u8);
        self.count += 1;
    }

    /// Writes the final count.
    pub fn finish(self, out: &mut [u8]) {
        patch_u32(out, self.count_at, self.count);
    }
}

/// Encodes a body that is a single `u64` (trim request and reply, seal request).
pub fn encode_u64(out: &mut Vec<u8>, v: u64) {
    put_u64(out, v);
}

/// Decodes a body that is a single `u64`.
pub fn decode_u64(body: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::new(body);
    let v = r.u64()?;
    r.finish()?;
    Ok(v)
}

/// The reply to a seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SealReply {
    /// True if this request raised the sealed epoch; false if the epoch was not
    /// higher than the unit's (nothing changed).
    pub sealed: bool,
    /// The unit's sealed epoch after the request.
    pub sealed_epoch: u64,
    /// One past the highest address written (data or junk); 0 if none.
    pub tail: u64,
}

/// Encodes a seal reply body: `sealed u8, sealed_epoch u64, tail u64`.
pub fn encode_seal_reply(out: &mut Vec<u8>, s: &SealReply) {
    out.push(s.sealed as u8);
    put_u64(out, s.sealed_epoch);
    put_u64(out, s.tail);
}

/// Decodes a seal reply body.
pub fn decode_seal_reply(body: &[u8]) -> Result<SealReply, DecodeError> {
    let mut r = Reader::new(body);
    let s = SealReply {
        sealed: r.bool()?,
        sealed_epoch: r.u64()?,
        tail: r.u64()?,
    };
    r.finish()?;
    Ok(s)
}

/// Info flag: the unit is poisoned and accepts no writes.
pub const INFO_POISONED: u32 = 1 << 0;
/// Info flag: the unit runs with `--sync never` (acknowledgements are not durable).
pub const INFO_SYNC_NEVER: u32 = 1 << 1;
/// Info flag: syncs go through io_uring (otherwise a sync thread).
pub const INFO_IO_URING: u32 = 1 << 2;
/// Info flag: the unit's last write failed for lack of space (`full`) and it
/// has stored nothing since; clients take such a unit out of its chains.
pub const INFO_FULL: u32 = 1 << 3;

/// The reply to an info request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InfoReply {
    /// Sealed epoch.
    pub sealed_epoch: u64,
    /// Addresses below this are trimmed.
    pub trim_mark: u64,
    /// One past the highest address written; 0 if none.
    pub tail: u64,
    /// Addresses holding data.
    pub entries: u64,
    /// Addresses holding junk.
    pub junk: u64,
    /// Records found corrupt since start.
    pub corrupt: u64,
    /// Segment files.
    pub segments: u32,
    /// `INFO_*` flag bits.
    pub flags: u32,
    /// Size of one segment file in bytes.
    pub segment_size_bytes: u64,
    /// Bytes used by records in live segments.
    pub used_bytes: u64,
}

/// Size of an info reply body.
pub const INFO_REPLY_LEN: usize = 8 * 8 + 4 * 2;

/// Encodes an info reply body (fields in struct order; u32s for segments and flags).
pub fn encode_info_reply(out: &mut Vec<u8>, i: &InfoReply) {
    put_u64(out, i.sealed_epoch);
    put_u64(out, i.trim_mark);
    put_u64(out, i.tail);
    put_u64(out, i.entries);
    put_u64(out, i.junk);
    put_u64(out, i.corrupt);
    put_u32(out, i.segments);
    put_u32(out, i.flags);
    put_u64(out, i.segment_size_bytes);
    put_u64(out, i.used_bytes);
}

/// Decodes an info reply body.
pub fn decode_info_reply(body: &[u8]) -> Result<InfoReply, DecodeError> {
    let mut r = Reader::new(body);
    let i = InfoReply {
        sealed_epoch: r.u64()?,
        trim_mark: r.u64()?,
        tail: r.u64()?,
        entries: r.u64()?,
        junk: r.u64()?,
        corrupt: r.u64()?,
        segments: r.u32()?,
        flags: r.u32()?,
        segment_size_bytes: r.u64()?,
        used_bytes: r.u64()?,
    };
    r.finish()?;
    Ok(i)
}

/// The body of a frame-level error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody<'a> {
    /// Raw error code (see `ErrorCode`); unknown codes are kept so a newer
    /// server's error can still be shown.
    pub code: u16,
    /// Human-readable explanation (UTF-8, lossily decoded).
    pub message: std::borrow::Cow<'a, str>,
}

/// Encodes an error body: `code u16, len u16, message` (truncated to 1024 bytes
/// on a character boundary).
pub fn encode_error(out: &mut Vec<u8>, code: u16, message: &str) {
    let mut end = message.len().min(MAX_ERROR_MESSAGE_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&message.as_bytes()[..end]);
}

/// Decodes an error body.
pub fn decode_error(body: &[u8]) -> Result<ErrorBody<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let code = r.u16()?;
    let len = r.u16()? as usize;
    let message = String::from_utf8_lossy(r.bytes(len)?);
    r.finish()?;
    Ok(ErrorBody { code, message })
}

/// A decoded request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Batched writes.
    Write(WriteBatch<'a>),
    /// Batched repairs: writes that may also replace a damaged record.
    Repair(WriteBatch<'a>),
    /// Batched verified repairs: each entry replaces a damaged record only
    /// if that record provably held it.
    VerifiedRepair(WriteBatch<'a>),
    /// Batched reads.
    Read(AddrList<'a>),
    /// Batched fills.
    Fill(AddrList<'a>),
    /// Trim everything below `prefix`.
    Trim {
        /// New trim mark.
        prefix: u64,
    },
    /// Seal at `epoch`.
    Seal {
        /// New sealed epoch.
        epoch: u64,
    },
    /// Report state.
    Info,
}

/// Decodes the body of a request with the given raw opcode.
pub fn decode_request(opcode: u8, body: &[u8]) -> Result<Request<'_>, DecodeError> {
    Ok(match Opcode::from_u8(opcode) {
        Some(Opcode::Write) => Request::Write(decode_write_request(body)?),
        Some(Opcode::Repair) => Request::Repair(decode_write_request(body)?),
        Some(Opcode::VerifiedRepair) => Request::VerifiedRepair(decode_write_request(body)?),
        Some(Opcode::Read) => Request::Read(decode_addr_list(body)?),
        Some(Opcode::Fill) => Request::Fill(decode_addr_list(body)?),
        Some(Opcode::Trim) => Request::Trim {
            prefix: decode_u64(body)?,
        },
        Some(Opcode::Seal) => Request::Seal {
            epoch: decode_u64(body)?,
        },
        Some(Opcode::Info) => {
            Reader::new(body).finish()?;
            Request::Info
        }
        Some(
            Opcode::Error
            | Opcode::Submit
            | Opcode::NodeStatus
            | Opcode::Peer
            | Opcode::Token
            | Opcode::NodeInfo,
        )
        | None => return Err(DecodeError::UnknownOpcode(opcode)),
    })
}

impl Request<'_> {
    /// The opcode this request travels under.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Write(_) => Opcode::Write,
            Request::Repair(_) => Opcode::Repair,
            Request::VerifiedRepair(_) => Opcode::VerifiedRepair,
            Request::Read(_) => Opcode::Read,
            Request::Fill(_) => Opcode::Fill,
            Request::Trim { .. } => Opcode::Trim,
            Request::Seal { .. } => Opcode::Seal,
            Request::Info => Opcode::Info,
        }
    }
}

/// Bytes a frame body may still take, given what a reply has used so far.
pub fn body_budget_left(used: usize) -> usize {
    (MAX_BODY_LEN as usize).saturating_sub(used)
}

/// Most addresses one token request may take.
pub const MAX_TOKEN_COUNT: u32 = 1 << 20;

/// The reply to a token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenReply {
    /// `count` consecutive addresses from `first`, valid in `epoch`.
    Granted {
        /// Layout epoch the addresses belong to.
        epoch: u64,
        /// First address.
        first: u64,
    },
    /// This sequencer does not serve (it holds no lease); `hint` is the active
    /// sequencer's address if known (empty if not).
    NotSequencer {
        /// HOST:PORT of the active sequencer, or empty.
        hint: String,
    },
}

/// Encodes a token request body: `count u32`.
pub fn encode_token_request(out: &mut Vec<u8>, count: u32) {
    put_u32(out, count);
}

/// Decodes a token request body; `count` must be 1 to `MAX_TOKEN_COUNT`.
pub fn decode_token_request(body: &[u8]) -> Result<u32, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.u32()?;
    if count > MAX_TOKEN_COUNT {
        return Err(DecodeError::TooManyOps {
            count,
            max: MAX_TOKEN_COUNT,
        });
    }
    r.finish()?;
    Ok(count)
}

/// Encodes a token reply: `status u8` (0 granted: `epoch u64, first u64`;
/// 1 not-sequencer: `len u32, hint`).
pub fn encode_token_reply(out: &mut Vec<u8>, t: &TokenReply) {
    match t {
        TokenReply::Granted { epoch, first } => {
            out.push(0);
            put_u64(out, *epoch);
            put_u64(out, *first);
        }
        TokenReply::NotSequencer { hint } => {
            out.push(1);
            put_u32(out, hint.len() as u32);
            out.extend_from_slice(hint.as_bytes());
        }
    }
}

/// Decodes a token reply.
pub fn decode_token_reply(body: &[u8]) -> Result<TokenReply, DecodeError> {
    let mut r = Reader::new(body);
    let offset = r.offset();
    let t = match r.u8()? {
        0 => TokenReply::Granted {
            epoch: r.u64()?,
            first: r.u64()?,
        },
        1 => {
            let n = r.u32()? as usize;
            if n > MAX_ERROR_MESSAGE_LEN {
                return Err(DecodeError::EntryTooLarge {
                    len: n as u32,
                    max: MAX_ERROR_MESSAGE_LEN as u32,
                });
            }
            TokenReply::NotSequencer {
                hint: String::from_utf8_lossy(r.bytes(n)?).into_owned(),
            }
        }
        value => return Err(DecodeError::BadStatus { offset, value }),
    };
    r.finish()?;
    Ok(t)
}
