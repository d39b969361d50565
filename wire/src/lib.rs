//! The Trex Corfu binary protocol: frame header, opcodes, status codes and the
//! codec for every message body. This crate does no I/O; `docs/wire.md` is its
//! byte-for-byte specification and the golden vectors in the tests keep the two
//! in step.
//!
//! Decoding is two-phase: [`check_frame`] tells whether a whole frame is buffered
//! (an incomplete frame is `Ok(None)`, not an error), then [`parse_frame`] hands
//! out a borrowed [`Frame`] whose body is decoded by the functions in [`codec`].
//! No decoder panics on any input, and every allocation a decoder makes is
//! bounded by the length of the bytes it was given.
#![deny(missing_docs)]

pub mod codec;
pub mod codes;
pub mod consensus;
pub mod framing;
pub mod node_info;
pub mod ops;
pub mod range;

pub use codec::*;
pub use codes::*;
pub use framing::*;
pub use node_info::*;
