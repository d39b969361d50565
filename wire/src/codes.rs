//! Opcodes, per-operation status codes and frame error codes. Numbers are a
//! public contract: a retired number is kept as `Deprecated…` and never reused.

use std::fmt;

/// Which message a frame carries. A reply carries the opcode of its request
/// (or `Error` when the request could not even be attributed to an opcode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Store entries at unwritten addresses (batched).
    Write = 0x01,
    /// Read entries (batched).
    Read = 0x02,
    /// Fill addresses with junk if unwritten (batched).
    Fill = 0x03,
    /// Raise the trim mark.
    Trim = 0x04,
    /// Seal the unit at a new epoch.
    Seal = 0x05,
    /// Report the unit's state.
    Info = 0x06,
    /// Rewrite entries whose stored copy is damaged (read repair): like
    /// `write`, and also over an address whose record fails its checksum.
    Repair = 0x07,
    /// Rewrite a damaged record only with the entry it provably held (its
    /// own header, intact, and its checksum confirm it); never writes a new
    /// address. For copies from units whose copy could otherwise not be
    /// trusted.
    VerifiedRepair = 0x08,
    /// Consensus: submit a command to the replicated state machine.
    Submit = 0x10,
    /// Consensus: report a node's Paxos state.
    NodeStatus = 0x11,
    /// Consensus: a one-way message between consensus nodes (no reply).
    Peer = 0x20,
    /// Sequencer: hand out consecutive log addresses.
    Token = 0x30,
    /// Every role: report the node's role, version and git revision.
    NodeInfo = 0x40,
    /// A frame-level error reply.
    Error = 0xFF,
}

impl Opcode {
    /// Parses a raw opcode byte.
    pub fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            0x01 => Opcode::Write,
            0x02 => Opcode::Read,
            0x03 => Opcode::Fill,
            0x04 => Opcode::Trim,
            0x05 => Opcode::Seal,
            0x06 => Opcode::Info,
            0x07 => Opcode::Repair,
            0x08 => Opcode::VerifiedRepair,
            0x10 => Opcode::Submit,
            0x11 => Opcode::NodeStatus,
            0x20 => Opcode::Peer,
            0x30 => Opcode::Token,
            0x40 => Opcode::NodeInfo,
            0xFF => Opcode::Error,
            _ => return None,
        })
    }

    /// Lower-case name, as used in logs and the docs.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Write => "write",
            Opcode::Read => "read",
            Opcode::Fill => "fill",
            Opcode::Trim => "trim",
            Opcode::Seal => "seal",
            Opcode::Info => "info",
            Opcode::Repair => "repair",
            Opcode::VerifiedRepair => "verified-repair",
            Opcode::Submit => "submit",
            Opcode::NodeStatus => "node-status",
            Opcode::Peer => "peer",
            Opcode::Token => "token",
            Opcode::NodeInfo => "node-info",
            Opcode::Error => "error",
        }
    }
}

/// Outcome of one operation inside a batched request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Done (for a write retried by the same writer with the same sequence number
    /// and bytes, also `Ok`: the retry is idempotent).
    Ok = 0,
    /// The address already holds data from another write.
    Written = 1,
    /// Write: the address was filled with junk. Read: the address is a hole filled with junk.
    Junk = 2,
    /// Read: nothing is stored at this address (yet).
    Unwritten = 3,
    /// The address is below the trim mark.
    Trimmed = 4,
    /// The unit has no room for the entry.
    Full = 5,
    /// The unit cannot write: a sync failed and the unit is poisoned, or a disk error.
    Io = 6,
    /// The stored record fails its checksum; read another replica.
    Corrupt = 7,
    /// The entry is larger than the unit accepts.
    TooLarge = 8,
    /// Not served in this frame because the reply would exceed the frame limit; ask again.
    Deferred = 9,
    /// The address is out of range: above 2^62 ([`crate::range::MAX_COUNTER`]).
    OutOfRange = 10,
}

impl Status {
    /// Parses a raw status byte.
    pub fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Written,
            2 => Status::Junk,
            3 => Status::Unwritten,
            4 => Status::Trimmed,
            5 => Status::Full,
            6 => Status::Io,
            7 => Status::Corrupt,
            8 => Status::TooLarge,
            9 => Status::Deferred,
            10 => Status::OutOfRange,
            _ => return None,
        })
    }

    /// Lower-case name, as printed by the command line.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Written => "written",
            Status::Junk => "junk",
            Status::Unwritten => "unwritten",
            Status::Trimmed => "trimmed",
            Status::Full => "full",
            Status::Io => "io",
            Status::Corrupt => "corrupt",
            Status::TooLarge => "too-large",
            Status::Deferred => "deferred",
            Status::OutOfRange => "out-of-range",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a whole frame was refused. Carried in an error body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame did not start with the magic bytes.
    BadMagic = 1,
    /// The protocol version is not supported.
    UnsupportedVersion = 2,
    /// The header checksum did not match.
    BadHeaderChecksum = 3,
    /// The body checksum did not match.
    BadBodyChecksum = 4,
    /// The body exceeds the frame limit.
    FrameTooLarge = 5,
    /// The opcode is unknown.
    UnknownOpcode = 6,
    /// The body does not decode as the opcode's message.
    MalformedBody = 7,
    /// The request's epoch is older than the unit's sealed epoch; the reply
    /// header's epoch carries the sealed epoch. Refresh the layout and retry.
    SealedEpoch = 8,
    /// The frame names another cluster.
    WrongCluster = 9,
    /// The unit is poisoned after a failed sync and accepts no more writes.
    Poisoned = 10,
    /// Reserved flag bits were set.
    UnknownFlags = 11,
    /// The server is shutting down.
    ShuttingDown = 12,
    /// A frame arrived with the RESPONSE flag set where a request was expected.
    UnexpectedResponse = 13,
    /// The server is at its connection limit; retry later or raise the limit.
    TooManyConnections = 14,
    /// The unit has no room to record a seal or trim; free disk space.
    Full = 15,
    /// A counter is outside its range ([`crate::range`]): an epoch more than
    /// 2^24 above the receiver's, or above 2^62. Nothing was stored.
    OutOfRange = 16,
    /// The connection's certificate does not grant this request (its role is
    /// named in the message); nothing was done and the connection stays open
    /// for what the role may do. See `docs/security.md`.
    NotAuthorized = 17,
}

impl ErrorCode {
    /// Parses a raw error code.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::BadMagic,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::BadHeaderChecksum,
            4 => ErrorCode::BadBodyChecksum,
            5 => ErrorCode::FrameTooLarge,
            6 => ErrorCode::UnknownOpcode,
            7 => ErrorCode::MalformedBody,
            8 => ErrorCode::SealedEpoch,
            9 => ErrorCode::WrongCluster,
            10 => ErrorCode::Poisoned,
            11 => ErrorCode::UnknownFlags,
            12 => ErrorCode::ShuttingDown,
            13 => ErrorCode::UnexpectedResponse,
            14 => ErrorCode::TooManyConnections,
            15 => ErrorCode::Full,
            16 => ErrorCode::OutOfRange,
            17 => ErrorCode::NotAuthorized,
            _ => return None,
        })
    }

    /// Lower-case name with dashes.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadMagic => "bad-magic",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::BadHeaderChecksum => "bad-header-checksum",
            ErrorCode::BadBodyChecksum => "bad-body-checksum",
            ErrorCode::FrameTooLarge => "frame-too-large",
            ErrorCode::UnknownOpcode => "unknown-opcode",
            ErrorCode::MalformedBody => "malformed-body",
            ErrorCode::SealedEpoch => "sealed-epoch",
            ErrorCode::WrongCluster => "wrong-cluster",
            ErrorCode::Poisoned => "poisoned",
            ErrorCode::UnknownFlags => "unknown-flags",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::UnexpectedResponse => "unexpected-response",
            ErrorCode::TooManyConnections => "too-many-connections",
            ErrorCode::Full => "full",
            ErrorCode::OutOfRange => "out-of-range",
            ErrorCode::NotAuthorized => "not-authorized",
        }
    }
}

impl From<&crate::FrameError> for ErrorCode {
    fn from(e: &crate::FrameError) -> ErrorCode {
        use crate::FrameError as F;
        match e {
            F::BadMagic(_) => ErrorCode::BadMagic,
            F::BadHeaderChecksum { .. } => ErrorCode::BadHeaderChecksum,
            F::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            F::UnknownFlags(_) => ErrorCode::UnknownFlags,
            F::BodyTooLarge { .. } => ErrorCode::FrameTooLarge,
            F::BadBodyChecksum { .. } => ErrorCode::BadBodyChecksum,
        }
    }
}
