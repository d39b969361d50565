//! The on-disk record format, shared by both stores.
//!
//! ```text
//! offset size field
//!      0    4 crc     CRC-32 of (segment nonce as u64 LE ++ bytes 4..40 ++ payload)
//!      4    4 len     payload length
//!      8    8 addr    log address (0 for meta records)
//!     16    8 writer  writer id (junk: 0; meta: sealed epoch)
//!     24    8 seq     writer sequence number (junk: 0; meta: trim mark)
//!     32    1 kind    1 data, 2 junk, 3 meta; 0 never (zeroed space ends a segment)
//!     33    3 zero    reserved, must be zero
//!     36    4 hcrc    CRC-32 of (segment nonce as u64 LE ++ bytes 4..36): the header's own
//!                     checksum (format 2; in format 1 these bytes are zero)
//!     40  len payload
//! ```
//! The header checksum is checked before any header field is used: a record
//! whose header fails it is not trusted for anything, its address and length
//! included (a flipped address bit must not invent an entry at 2^62, a flipped
//! length bit must not hide the records after it). A record whose header
//! verifies but whose payload does not is a damaged entry *of that address*.
//! Segments written before the header checksum existed (format 1, see
//! `mmap.rs`) are still read: there a failing record's header is only
//! trusted if it is plausible, as before.
//! Records start on 8-byte boundaries. A meta record has no file of its own:
//! it reuses this header, `writer` holding the sealed epoch and `seq` the trim
//! mark, with an empty payload. Seeding the CRC with the segment's random
//! nonce means a payload that happens to contain an image of a record (say, a
//! backup of a segment stored in the log) never verifies as a record.

/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 40;
/// Records are aligned to this many bytes: a scan past a damaged record looks
/// for the next one only at these boundaries, and the u64 fields stay aligned.
pub const RECORD_ALIGN: usize = 8;

/// Checksum over the rest of the header and the payload, seeded with the
/// segment nonce: a record is served only if it verifies, and a record image
/// inside a payload never does.
const OFF_CRC: usize = 0;
/// Payload length: where the record ends (and the next one starts, aligned).
const OFF_LEN: usize = 4;
/// Log address: what the index maps to this record (0 for meta records).
const OFF_ADDR: usize = 8;
/// Writer id (meta: the sealed epoch): with `seq`, tells a retried write from
/// a conflicting one.
const OFF_WRITER: usize = 16;
/// Writer sequence number (meta: the trim mark).
const OFF_SEQ: usize = 24;
/// Kind byte ([`Kind`]); never 0, so zeroed space cannot pass for a record.
const OFF_KIND: usize = 32;
/// Reserved bytes, zero: room for later fields, and one more check that a
/// header is plausible before its checksum is computed.
const OFF_RESERVED: usize = 33;
/// The header's own checksum (format 2): lets a damaged payload be told from a
/// damaged header, whose fields must not be used.
const OFF_HCRC: usize = 36;
/// Where the payload starts.
const OFF_PAYLOAD: usize = RECORD_HEADER_LEN;
/// What the checksum covers of the header: everything after the checksum.
const CRC_COVERS: usize = OFF_LEN;

// The layout above is on disk in every segment: fail the build if a field moves.
const _: () = assert!(OFF_CRC + 4 == OFF_LEN);
const _: () = assert!(OFF_LEN + 4 == OFF_ADDR);
const _: () = assert!(OFF_ADDR + 8 == OFF_WRITER);
const _: () = assert!(OFF_WRITER + 8 == OFF_SEQ);
const _: () = assert!(OFF_SEQ + 8 == OFF_KIND);
const _: () = assert!(OFF_KIND + 1 == OFF_RESERVED);
const _: () = assert!(OFF_RESERVED + 3 == OFF_HCRC);
const _: () = assert!(OFF_HCRC + 4 == OFF_PAYLOAD);
const _: () = assert!(OFF_ADDR.is_multiple_of(8) && OFF_WRITER.is_multiple_of(8));
const _: () = assert!(OFF_SEQ.is_multiple_of(8));
const _: () = assert!(RECORD_HEADER_LEN.is_multiple_of(RECORD_ALIGN));

/// The record format of a segment (its header's version field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Format 1: no header checksum; read only (a segment in this format is
    /// never appended to again).
    V1,
    /// Format 2: bytes 36..40 hold the header's own checksum.
    V2,
}

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// An entry's data.
    Data = 1,
    /// Junk written by a fill: the address is a hole.
    Junk = 2,
    /// Sealed epoch and trim mark.
    Meta = 3,
}

impl Kind {
    /// Parses a kind byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Data),
            2 => Some(Kind::Junk),
            3 => Some(Kind::Meta),
            _ => None,
        }
    }
}

/// A record's header fields (without the checksum and length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHead {
    /// What it holds.
    pub kind: Kind,
    /// Log address.
    pub addr: u64,
    /// Writer id.
    pub writer: u64,
    /// Writer sequence number.
    pub seq: u64,
}

impl RecordHead {
    /// A junk record for `addr`.
    pub fn junk(addr: u64) -> RecordHead {
        RecordHead {
            kind: Kind::Junk,
            addr,
            writer: 0,
            seq: 0,
        }
    }

    /// A meta record.
    pub fn meta(m: super::Meta) -> RecordHead {
        RecordHead {
            kind: Kind::Meta,
            addr: 0,
            writer: m.sealed_epoch,
            seq: m.trim_mark,
        }
    }

    /// The meta values of a meta record.
    pub fn as_meta(&self) -> super::Meta {
        super::Meta {
            sealed_epoch: self.writer,
            trim_mark: self.seq,
        }
    }
}

/// Bytes a record with `len` payload bytes takes, padding included.
pub fn record_size(len: usize) -> usize {
    (RECORD_HEADER_LEN + len).next_multiple_of(RECORD_ALIGN)
}

fn header_checksum(nonce: u64, h: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&nonce.to_le_bytes());
    c.update(&h[OFF_LEN..OFF_HCRC]);
    c.finalize()
}

fn checksum(nonce: u64, head_tail: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&nonce.to_le_bytes());
    h.update(head_tail);
    h.update(payload);
    h.finalize()
}

/// Writes a record (header, payload, zero padding) in format 2 into `dst`,
/// which must be exactly `record_size(payload.len())` bytes.
pub fn encode_record(dst: &mut [u8], nonce: u64, head: &RecordHead, payload: &[u8]) {
    debug_assert_eq!(dst.len(), record_size(payload.len()));
    let (h, rest) = dst.split_at_mut(OFF_PAYLOAD);
    h[OFF_LEN..OFF_ADDR].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[OFF_ADDR..OFF_WRITER].copy_from_slice(&head.addr.to_le_bytes());
    h[OFF_WRITER..OFF_SEQ].copy_from_slice(&head.writer.to_le_bytes());
    h[OFF_SEQ..OFF_KIND].copy_from_slice(&head.seq.to_le_bytes());
    h[OFF_KIND] = head.kind as u8;
    h[OFF_RESERVED..OFF_HCRC].fill(0);
    let hcrc = header_checksum(nonce, h);
    h[OFF_HCRC..OFF_PAYLOAD].copy_from_slice(&hcrc.to_le_bytes());
    rest[..payload.len()].copy_from_slice(payload);
    rest[payload.len()..].fill(0);
    let crc = checksum(nonce, &h[CRC_COVERS..], payload);
    h[OFF_CRC..OFF_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes do not hold a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The header is all zeros: unused space.
    Empty,
    /// Too few bytes for the header or the payload it names.
    Truncated,
    /// The header is damaged (its checksum fails, or in format 1 it is
    /// implausible: bad kind, reserved bytes set, length too large): none of
    /// its fields may be used.
    BadHeader,
    /// The header verifies (format 1: is plausible) but the record's checksum
    /// fails: `head` is the damaged record's header, and the payload length
    /// its header names was within the bytes given.
    BadChecksum(RecordHead),
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// Decodes and verifies the record at the start of `src`, in `format`. Returns
/// its header, payload and total size (padding included).
pub fn decode_record(
    src: &[u8],
    nonce: u64,
    max_payload: usize,
    format: Format,
) -> Result<(RecordHead, &[u8], usize), Invalid> {
    let Some(h) = src.get(..RECORD_HEADER_LEN) else {
        return Err(Invalid::Truncated);
    };
    if h.iter().all(|b| *b == 0) {
        return Err(Invalid::Empty);
    }
    let reserved_end = match format {
        Format::V1 => OFF_PAYLOAD,
        Format::V2 => {
            if u32_at(h, OFF_HCRC) != header_checksum(nonce, h) {
                return Err(Invalid::BadHeader);
            }
            OFF_HCRC
        }
    };
    let len = u32_at(h, OFF_LEN) as usize;
    let kind = Kind::from_u8(h[OFF_KIND]);
    let reserved_zero = h[OFF_RESERVED..reserved_end].iter().all(|b| *b == 0);
    let (Some(kind), true, true) = (kind, reserved_zero, len <= max_payload) else {
        return Err(Invalid::BadHeader);
    };
    let head = RecordHead {
        kind,
        addr: u64_at(h, OFF_ADDR),
        writer: u64_at(h, OFF_WRITER),
        seq: u64_at(h, OFF_SEQ),
    };
    let size = record_size(len);
    let Some(payload) = src.get(OFF_PAYLOAD..OFF_PAYLOAD + len) else {
        return Err(Invalid::Truncated);
    };
    if src.len() < size || checksum(nonce, &h[CRC_COVERS..], payload) != u32_at(h, OFF_CRC) {
        return Err(Invalid::BadChecksum(head));
    }
    Ok((head, payload, size))
}

/// Whether `payload`, as the entry `head`, is exactly what the damaged
/// record at the start of `src` held: `Some(true)` if the record's header
/// verifies by its own checksum (format 2), names the same kind, address,
/// writer, sequence number and length, and the record's checksum matches
/// with `payload` in place of the stored one; `Some(false)` if the verified
/// header names something else; `None` if it cannot tell (the header is
/// damaged or cut, a format 1 segment, or the header matches and the stored
/// checksum does not, which a damaged checksum field would also cause). An
/// empty payload (junk, say) needs no checksum: the verified header is the
/// whole record.
/// [`Store::verify_copy`](super::Store::verify_copy) uses it to restore a
/// damaged copy from a unit whose copy could otherwise not be trusted.
pub fn check_copy(
    src: &[u8],
    nonce: u64,
    format: Format,
    head: &RecordHead,
    payload: &[u8],
) -> Option<bool> {
    let h = src.get(..RECORD_HEADER_LEN)?;
    if format != Format::V2 || u32_at(h, OFF_HCRC) != header_checksum(nonce, h) {
        return None;
    }
    let same = Kind::from_u8(h[OFF_KIND]) == Some(head.kind)
        && u64_at(h, OFF_ADDR) == head.addr
        && u64_at(h, OFF_WRITER) == head.writer
        && u64_at(h, OFF_SEQ) == head.seq
        && u32_at(h, OFF_LEN) as usize == payload.len();
    if !same {
        return Some(false);
    }
    // Without payload the verified header is the whole record: only the
    // record checksum itself can have been damaged.
    if payload.is_empty() {
        return Some(true);
    }
    (checksum(nonce, &h[CRC_COVERS..], payload) == u32_at(h, OFF_CRC)).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_checked_against_a_damaged_record_with_an_intact_header() {
        let head = RecordHead {
            kind: Kind::Data,
            addr: 7,
            writer: 3,
            seq: 9,
        };
        let payload = b"hello, log";
        let mut buf = vec![0u8; record_size(payload.len())];
        encode_record(&mut buf, 42, &head, payload);
        // A payload bit flipped: the record fails, its header does not.
        buf[OFF_PAYLOAD + 2] ^= 0x10;
        assert!(decode_record(&buf, 42, 1024, Format::V2).is_err());
        assert_eq!(check_copy(&buf, 42, Format::V2, &head, payload), Some(true));
        assert_eq!(check_copy(&buf, 42, Format::V2, &head, b"hello, lag"), None);
        let other = RecordHead { seq: 10, ..head };
        assert_eq!(
            check_copy(&buf, 42, Format::V2, &other, payload),
            Some(false)
        );
        assert_eq!(
            check_copy(&buf, 42, Format::V2, &head, b"hello"),
            Some(false)
        );
        // A header bit flipped: nothing can be told.
        buf[OFF_WRITER] ^= 1;
        assert_eq!(check_copy(&buf, 42, Format::V2, &head, payload), None);
        assert_eq!(check_copy(&buf[..10], 42, Format::V2, &head, payload), None);
        assert_eq!(check_copy(&buf, 42, Format::V1, &head, payload), None);
        // Junk whose record checksum was hit: the header says it all.
        let junk = RecordHead::junk(7);
        let mut j = vec![0u8; record_size(0)];
        encode_record(&mut j, 42, &junk, &[]);
        j[OFF_CRC + 1] ^= 0x40;
        assert!(decode_record(&j, 42, 1024, Format::V2).is_err());
        assert_eq!(check_copy(&j, 42, Format::V2, &junk, &[]), Some(true));
        assert_eq!(check_copy(&j, 42, Format::V2, &head, &[]), Some(false));
    }

    #[test]
    fn record_round_trips_and_detects_every_single_bit_flip() {
        let head = RecordHead {
            kind: Kind::Data,
            addr: 7,
            writer: 3,
            seq: 9,
        };
        let payload = b"hello, log";
        let mut buf = vec![0u8; record_size(payload.len())];
        encode_record(&mut buf, 42, &head, payload);
        let (h, p, size) = decode_record(&buf, 42, 1024, Format::V2).expect("valid record");
        assert_eq!((h, p, size), (head, &payload[..], 56));
        // Another segment's nonce never verifies.
        assert!(decode_record(&buf, 43, 1024, Format::V2).is_err());
        for bit in 0..(RECORD_HEADER_LEN + payload.len()) * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let got = decode_record(&b, 42, 1024, Format::V2);
            if (OFF_LEN * 8..RECORD_HEADER_LEN * 8).contains(&bit) {
                // A damaged header is trusted for nothing: not its address,
                // not its length.
                assert_eq!(got, Err(Invalid::BadHeader), "header bit {bit}");
            } else {
                // A damaged payload (or record checksum, which the header
                // checksum does not cover) is a damaged entry of the
                // header's address.
                assert_eq!(got, Err(Invalid::BadChecksum(head)), "bit {bit}");
            }
        }
    }

    #[test]
    fn format_1_records_without_a_header_checksum_still_read() {
        let head = RecordHead {
            kind: Kind::Junk,
            addr: 9,
            writer: 0,
            seq: 0,
        };
        let mut buf = vec![0u8; record_size(0)];
        encode_record(&mut buf, 5, &head, &[]);
        // Format 1: the header checksum bytes were zero and the record
        // checksum covered them so.
        buf[OFF_HCRC..OFF_PAYLOAD].fill(0);
        let crc = checksum(5, &buf[CRC_COVERS..OFF_PAYLOAD], &[]);
        buf[OFF_CRC..OFF_LEN].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_record(&buf, 5, 64, Format::V1),
            Ok((head, &[][..], 40))
        );
        assert_eq!(
            decode_record(&buf, 5, 64, Format::V2),
            Err(Invalid::BadHeader)
        );
    }

    #[test]
    fn zeroed_space_is_empty_not_corrupt() {
        for f in [Format::V1, Format::V2] {
            assert_eq!(decode_record(&[0u8; 64], 1, 1024, f), Err(Invalid::Empty));
            assert_eq!(
                decode_record(&[0u8; 10], 1, 1024, f),
                Err(Invalid::Truncated)
            );
        }
    }
}
