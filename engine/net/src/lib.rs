//! Trex Corfu networking: the hand-rolled `mio` event loop every server role
//! runs ([`event_loop`]), replies as it carries them ([`reply`]), durable syncs
//! through `io_uring` or a thread ([`sync`]), blocking connections and the one
//! frame reader every client uses ([`conn`]), the blocking client of
//! the storage-unit protocol ([`unit_client`]), mutual TLS and the roles
//! certificates grant ([`tls`]), what every node serves on
//! `--metrics-listen` ([`metrics`]), and small shared helpers
//! ([`util`]: sizes, durations, log lines, random ids).

pub mod conn;
pub mod event_loop;
pub mod metrics;
pub mod reply;
pub mod sync;
pub mod tls;
pub mod unit_client;
pub mod util;

pub use event_loop::*;

/// Re-exported for [`log_line!`]: crates that log need not depend on it.
#[doc(hidden)]
pub use tracing;
