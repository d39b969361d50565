//! The Trex Corfu consensus nodes: Multi-Paxos with batched accepts
//! ([`paxos`]), the one driver that releases its output once durable
//! ([`driver`]), the replicated state machine holding members, the layout and the
//! advisory locks ([`sm`]), the durable journal ([`journal`]), the node that runs
//! a replica on the event loop ([`node`]), and the clients of the group
//! ([`client`], [`lock`]) and where client programs find the group
//! ([`endpoints`]); errors are typed ([`error::ConsensusError`]).

pub use error::ConsensusError;

pub mod client;
pub mod driver;
pub mod endpoints;
pub mod error;
pub mod journal;
pub mod lock;
pub mod node;
pub mod paxos;
pub mod sm;
