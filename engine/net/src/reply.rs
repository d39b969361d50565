//! Replies as the event loop carries them: the whole encoded frame and where it
//! goes. Every role's service produces these; error replies are built here, in
//! one place.

use trex_wire::{
    self as wire, begin_frame, finish_frame, ErrorCode, Header, FLAG_ERROR, FLAG_RESPONSE,
};

/// Identifies where a reply goes (the event loop's connection token).
pub type ReplyTo = u64;

/// A reply frame ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Destination.
    pub to: ReplyTo,
    /// The whole encoded frame.
    pub frame: Vec<u8>,
    /// Close the connection once this frame is sent (protocol violation).
    pub close: bool,
}

/// An error reply to a request that violated the protocol; the connection
/// closes after it.
pub fn violation(to: ReplyTo, req: &Header, code: ErrorCode, msg: &str) -> Reply {
    let h = Header {
        opcode: req.opcode,
        flags: FLAG_RESPONSE | FLAG_ERROR,
        request_id: req.request_id,
        ..Header::default()
    };
    Reply {
        to,
        frame: error_frame(&h, code, msg),
        close: true,
    }
}

/// Encodes a whole error reply frame.
pub fn error_frame(header: &Header, code: ErrorCode, msg: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64 + msg.len());
    let start = begin_frame(&mut frame);
    wire::encode_error(&mut frame, code as u16, msg);
    finish_frame(&mut frame, start, *header);
    frame
}
