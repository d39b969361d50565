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
//!     33    7 zero    reserved, must be zero
//!     40  len payload
//! ```
//! Records start on 8-byte boundaries. Seeding the CRC with the segment's random
//! nonce means a payload that happens to contain an image of a record (say, a
//! backup of a segment stored in the log) never verifies as a record.

/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 40;
/// Records are aligned to this many bytes.
pub const RECORD_ALIGN: usize = 8;

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

fn checksum(nonce: u64, head_tail: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&nonce.to_le_bytes());
    h.update(head_tail);
    h.update(payload);
    h.finalize()
}

/// Writes a record (header, payload, zero padding) into `dst`, which must be
/// exactly `record_size(payload.len())` bytes.
pub fn encode_record(dst: &mut [u8], nonce: u64, head: &RecordHead, payload: &[u8]) {
    debug_assert_eq!(dst.len(), record_size(payload.len()));
    let (h, rest) = dst.split_at_mut(RECORD_HEADER_LEN);
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&head.addr.to_le_bytes());
    h[16..24].copy_from_slice(&head.writer.to_le_bytes());
    h[24..32].copy_from_slice(&head.seq.to_le_bytes());
    h[32] = head.kind as u8;
    h[33..40].fill(0);
    rest[..payload.len()].copy_from_slice(payload);
    rest[payload.len()..].fill(0);
    let crc = checksum(nonce, &h[4..], payload);
    h[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes do not hold a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The header is all zeros: unused space.
    Empty,
    /// Too few bytes for the header or the payload it names.
    Truncated,
    /// The header is implausible (bad kind, reserved bytes set, length too large).
    BadHeader,
    /// The header is plausible but the checksum fails; `head` is what it claims.
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

/// Decodes and verifies the record at the start of `src`. Returns its header,
/// payload and total size (padding included).
pub fn decode_record(
    src: &[u8],
    nonce: u64,
    max_payload: usize,
) -> Result<(RecordHead, &[u8], usize), Invalid> {
    let Some(h) = src.get(..RECORD_HEADER_LEN) else {
        return Err(Invalid::Truncated);
    };
    if h.iter().all(|b| *b == 0) {
        return Err(Invalid::Empty);
    }
    let len = u32_at(h, 4) as usize;
    let kind = Kind::from_u8(h[32]);
    let (Some(kind), true, true) = (kind, h[33..40].iter().all(|b| *b == 0), len <= max_payload)
    else {
        return Err(Invalid::BadHeader);
    };
    let head = RecordHead {
        kind,
        addr: u64_at(h, 8),
        writer: u64_at(h, 16),
        seq: u64_at(h, 24),
    };
    let size = record_size(len);
    let Some(payload) = src.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
        return Err(Invalid::Truncated);
    };
    if src.len() < size || checksum(nonce, &h[4..], payload) != u32_at(h, 0) {
        return Err(Invalid::BadChecksum(head));
    }
    Ok((head, payload, size))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (h, p, size) = decode_record(&buf, 42, 1024).expect("valid record");
        assert_eq!((h, p, size), (head, &payload[..], 56));
        // Another segment's nonce never verifies.
        assert!(matches!(
            decode_record(&buf, 43, 1024),
            Err(Invalid::BadChecksum(_))
        ));
        for bit in 0..(RECORD_HEADER_LEN + payload.len()) * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&b, 42, 1024).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn zeroed_space_is_empty_not_corrupt() {
        assert_eq!(decode_record(&[0u8; 64], 1, 1024), Err(Invalid::Empty));
        assert_eq!(decode_record(&[0u8; 10], 1, 1024), Err(Invalid::Truncated));
    }
}
