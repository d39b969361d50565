//! The Trex Corfu storage unit: write-once rules free of I/O ([`unit`]), the
//! address index ([`index`]), the stores that keep the bytes ([`storage`]:
//! memory-mapped segment files, and an in-memory store for tests and the
//! simulator), and the node that runs a unit on the event loop ([`node`]).

pub mod index;
pub mod node;
pub mod storage;
pub mod unit;
