//! Trex Corfu engine: the storage unit (rules in [`unit`], bytes in
//! [`storage`]), the `mio` event loop ([`net`]), disk syncs ([`sync`]), and a
//! blocking client ([`client`]).

pub mod storage;
pub mod unit;
pub mod net;
pub mod sync;
pub mod util;
pub mod client;
pub mod node;
