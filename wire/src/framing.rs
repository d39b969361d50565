//! The fixed 40-byte frame header.
//!
//! ```text
//! offset size field       why it exists
//!      0    4 magic       b"TRXC": refuse traffic that is not ours at once
//!      4    1 version     protocol version (1); a peer can refuse what it cannot read
//!      5    1 opcode      which message the body holds (see `codes::Opcode`)
//!      6    2 flags       bit 0 RESPONSE, bit 1 ERROR; other bits must be zero
//!      8    8 request_id  chosen by the client, echoed in the reply: many requests in flight
//!     16    8 epoch       requests: the sender's layout epoch; replies: the unit's sealed epoch
//!     24    4 cluster_id  a node refuses frames meant for another cluster
//!     28    4 body_len    bytes of body after the header (at most MAX_BODY_LEN)
//!     32    4 body_crc    CRC-32 (ISO-HDLC, as crc32fast) of the body
//!     36    4 header_crc  CRC-32 of header bytes 0..36: the header is trusted before the body arrives
//! ```
//! All integers are little-endian.

use thiserror::Error;

/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 40;
/// The four magic bytes that open every frame.
pub const MAGIC: [u8; 4] = *b"TRXC";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Largest body a frame may carry (16 MiB). Bounds the memory one frame can pin.
pub const MAX_BODY_LEN: u32 = 16 * 1024 * 1024;

/// Flag bit: this frame is a reply.
pub const FLAG_RESPONSE: u16 = 1 << 0;
/// Flag bit: this reply's body is an error body (see `codec::ErrorBody`).
pub const FLAG_ERROR: u16 = 1 << 1;
const FLAGS_KNOWN: u16 = FLAG_RESPONSE | FLAG_ERROR;

const OFF_VERSION: usize = 4;
const OFF_OPCODE: usize = 5;
const OFF_FLAGS: usize = 6;
const OFF_REQUEST_ID: usize = 8;
const OFF_EPOCH: usize = 16;
const OFF_CLUSTER_ID: usize = 24;
const OFF_BODY_LEN: usize = 28;
const OFF_BODY_CRC: usize = 32;
const OFF_HEADER_CRC: usize = 36;

// The layout above is a public contract: fail the build if a field moves.
const _: () = assert!(OFF_HEADER_CRC + 4 == HEADER_LEN);
const _: () = assert!(OFF_BODY_CRC + 4 == OFF_HEADER_CRC);
const _: () = assert!(OFF_BODY_LEN + 4 == OFF_BODY_CRC);
const _: () = assert!(OFF_CLUSTER_ID + 4 == OFF_BODY_LEN);
const _: () = assert!(OFF_EPOCH + 8 == OFF_CLUSTER_ID);
const _: () = assert!(OFF_REQUEST_ID + 8 == OFF_EPOCH);
const _: () = assert!(OFF_FLAGS + 2 == OFF_REQUEST_ID);
const _: () = assert!(OFF_OPCODE + 1 == OFF_FLAGS && OFF_VERSION + 1 == OFF_OPCODE);
const _: () = assert!(HEADER_LEN.is_multiple_of(8));

/// A decoded frame header. `opcode` stays raw so that an unknown opcode can be
/// answered with an error that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// Raw opcode byte.
    pub opcode: u8,
    /// Flag bits (`FLAG_RESPONSE`, `FLAG_ERROR`).
    pub flags: u16,
    /// Echoed in the reply.
    pub request_id: u64,
    /// Request: the sender's epoch. Reply: the unit's sealed epoch.
    pub epoch: u64,
    /// Cluster the frame is meant for.
    pub cluster_id: u32,
    /// Length of the body in bytes.
    pub body_len: u32,
    /// CRC-32 of the body.
    pub body_crc: u32,
}

impl Header {
    /// Whether this frame is a reply.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Whether this reply carries an error body.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// Encodes the header, computing the header checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[OFF_VERSION] = VERSION;
        b[OFF_OPCODE] = self.opcode;
        b[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&self.flags.to_le_bytes());
        b[OFF_REQUEST_ID..OFF_REQUEST_ID + 8].copy_from_slice(&self.request_id.to_le_bytes());
        b[OFF_EPOCH..OFF_EPOCH + 8].copy_from_slice(&self.epoch.to_le_bytes());
        b[OFF_CLUSTER_ID..OFF_CLUSTER_ID + 4].copy_from_slice(&self.cluster_id.to_le_bytes());
        b[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&self.body_len.to_le_bytes());
        b[OFF_BODY_CRC..OFF_BODY_CRC + 4].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..OFF_HEADER_CRC]);
        b[OFF_HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header: magic, version, header checksum, flags and
    /// the body length limit. The body checksum is checked by [`parse_frame`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        if b[0..4] != MAGIC {
            return Err(FrameError::BadMagic([b[0], b[1], b[2], b[3]]));
        }
        let stored = u32_at(b, OFF_HEADER_CRC);
        let computed = crc32fast::hash(&b[..OFF_HEADER_CRC]);
        if stored != computed {
            return Err(FrameError::BadHeaderChecksum { stored, computed });
        }
        if b[OFF_VERSION] != VERSION {
            return Err(FrameError::UnsupportedVersion(b[OFF_VERSION]));
        }
        let flags = u16::from_le_bytes([b[OFF_FLAGS], b[OFF_FLAGS + 1]]);
        if flags & !FLAGS_KNOWN != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        let body_len = u32_at(b, OFF_BODY_LEN);
        if body_len > MAX_BODY_LEN {
            return Err(FrameError::BodyTooLarge {
                len: body_len,
                max: MAX_BODY_LEN,
            });
        }
        Ok(Header {
            opcode: b[OFF_OPCODE],
            flags,
            request_id: u64_at(b, OFF_REQUEST_ID),
            epoch: u64_at(b, OFF_EPOCH),
            cluster_id: u32_at(b, OFF_CLUSTER_ID),
            body_len,
            body_crc: u32_at(b, OFF_BODY_CRC),
        })
    }
}

fn u32_at(b: &[u8; HEADER_LEN], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8; HEADER_LEN], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}

/// Four bytes in hex, as a person compares them: `47 45 54 20`.
fn hex4(b: &[u8; 4]) -> String {
    format!("{:02x} {:02x} {:02x} {:02x}", b[0], b[1], b[2], b[3])
}

/// Why a frame could not be accepted. Each maps to an `ErrorCode` for the reply.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The first four bytes are not `TRXC`: the peer does not speak this protocol.
    #[error(
        "bad magic {}: the peer does not speak the Trex Corfu protocol (expected 54 52 58 43, \"TRXC\")",
        hex4(.0)
    )]
    BadMagic([u8; 4]),
    /// The header checksum does not match: the header is damaged.
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the frame header is damaged")]
    BadHeaderChecksum {
        /// Checksum carried in the header.
        stored: u32,
        /// Checksum computed over the received bytes.
        computed: u32,
    },
    /// The protocol version is not one this side speaks.
    #[error(
        "unsupported protocol version {0}: this build speaks version 1; upgrade the older side"
    )]
    UnsupportedVersion(u8),
    /// Reserved flag bits are set.
    #[error("unknown flag bits {0:#06x}: only RESPONSE (1) and ERROR (2) are defined")]
    UnknownFlags(u16),
    /// The body is longer than the protocol allows.
    #[error(
        "body of {len} bytes exceeds the {max}-byte limit: split the batch into smaller frames"
    )]
    BodyTooLarge {
        /// Declared body length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The body checksum does not match: the body is damaged.
    #[error("body checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the frame body is damaged")]
    BadBodyChecksum {
        /// Checksum carried in the header.
        stored: u32,
        /// Checksum computed over the received body.
        computed: u32,
    },
}

/// A whole frame borrowed from a receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The validated header.
    pub header: Header,
    /// The body, whose checksum has been verified.
    pub body: &'a [u8],
}

/// Phase one: is a whole frame at the start of `buf`? Returns its total length,
/// `Ok(None)` if more bytes are needed, or the header error that makes the stream
/// unreadable from here on.
pub fn check_frame(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        // Reject a foreign peer as soon as its first bytes show it.
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            let mut m = [0u8; 4];
            m[..n].copy_from_slice(&buf[..n]);
            return Err(FrameError::BadMagic(m));
        }
        return Ok(None);
    };
    let header = Header::decode(head)?;
    let total = HEADER_LEN + header.body_len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Phase two: parse the frame at the start of `buf` (which must hold a whole frame,
/// as [`check_frame`] said) and verify its body checksum.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::decode(head)?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + header.body_len as usize) else {
        return Ok(None);
    };
    let computed = crc32fast::hash(body);
    if computed != header.body_crc {
        return Err(FrameError::BadBodyChecksum {
            stored: header.body_crc,
            computed,
        });
    }
    Ok(Some(Frame { header, body }))
}

/// Starts a frame at the end of `out`: reserves the header, to be filled in by
/// [`finish_frame`] once the body has been appended. Returns the frame's start.
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    start
}

/// Finishes the frame begun at `start`: everything appended after its header is
/// the body. Fills in the body length and both checksums.
pub fn finish_frame(out: &mut [u8], start: usize, mut header: Header) {
    let body = &out[start + HEADER_LEN..];
    debug_assert!(
        body.len() <= MAX_BODY_LEN as usize,
        "encoder built an oversized frame"
    );
    header.body_len = body.len() as u32;
    header.body_crc = crc32fast::hash(body);
    out[start..start + HEADER_LEN].copy_from_slice(&header.encode());
}
