//! Trex Corfu engine: the storage unit (rules in [`unit`], bytes in
//! [`storage`]), the `mio` event loop ([`net`]), disk syncs ([`sync`]), and a
//! blocking client ([`client`]).

pub mod client;
pub mod cluster_sim;
pub mod consensus;
pub mod env;
pub mod index;
pub mod log;
pub mod net;
pub mod node;
pub mod sequencer;
pub mod storage;
pub mod sync;
pub mod unit;
pub mod up;
pub mod util;
