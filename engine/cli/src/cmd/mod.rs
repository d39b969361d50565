//! One module per command or command group: each owns its arguments (clap
//! types) and the functions that run it.

pub mod certs;
pub mod config;
pub mod endpoint;
pub mod layout;
pub mod lock;
pub mod log;
pub mod members;
pub mod node;
pub mod repair;
pub mod status;
pub mod token;
pub mod unit;
pub mod up;
