//! The consensus nodes: Multi-Paxos with batched accepts ([`paxos`]), the
//! replicated state machine ([`sm`]), and the durable journal ([`journal`]).

pub mod client;
pub mod journal;
pub mod lock;
pub mod node;
pub mod paxos;
pub mod sim;
pub mod sm;
