//! Deterministic simulators for development (never linked into a production
//! binary): the consensus group alone ([`consensus_sim`]) and the whole
//! cluster — storage units, sequencers, consensus, log clients, a follower and a
//! repairing operator ([`cluster_sim`]) — with the checkers of the log's
//! promises. One seed reproduces a run.

pub mod cluster_sim;
pub mod consensus_sim;
