//! What a `trex` command failed with, and its exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the operation failed or was refused (the message says why and what to do) |
//! | 2 | usage: bad arguments or configuration (clap's own errors use 2 as well) |
//! | 3 | a lock's lease was lost (`trex lock run`, `trex lock renew`, `trex lock release`) |
//! | 4 | the cluster or a node did not answer in time: the outcome is unknown; retry |
//!
//! Once its command ran, `trex lock run` exits with the command's exit code.
//! [`EXIT_CODES`] says the same in `trex --help`; scripts branch on these codes,
//! so a code never changes meaning.

use std::process::ExitCode;
use thiserror::Error;
use trex_consensus::ConsensusError;
use trex_log::LogError;
use trex_net::unit_client::ClientError;
use trex_sequencer::SequencerError;
use trex_wire::ops::Refusal;

/// The exit codes as `trex --help` lists them (the table above, for people
/// at a terminal).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  the operation failed or was refused (the message says why and what to do)
  2  usage: bad arguments or configuration
  3  a lock's lease was lost (trex lock run, trex lock renew, trex lock release)
  4  the cluster or a node did not answer in time: the outcome is unknown; retry
Once its command ran, trex lock run exits with the command's exit code.";

/// A failed command: what to print, and which exit code it maps to.
#[derive(Debug, Error)]
pub enum CliError {
    /// The operation failed or was refused. Exit code 1.
    #[error("{0}")]
    Failed(String),
    /// Bad arguments or configuration. Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// A lease the command relied on is gone. Exit code 3.
    #[error("{0}")]
    LeaseLost(String),
    /// No answer in time; the outcome is unknown. Exit code 4.
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    /// The same kind of error (the same exit code), its message rewritten.
    pub fn reword(self, f: impl FnOnce(&str) -> String) -> CliError {
        match self {
            CliError::Failed(t) => CliError::Failed(f(&t)),
            CliError::Usage(t) => CliError::Usage(f(&t)),
            CliError::LeaseLost(t) => CliError::LeaseLost(f(&t)),
            CliError::Unavailable(t) => CliError::Unavailable(f(&t)),
        }
    }

    /// The documented exit code (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::LeaseLost(_) => 3,
            CliError::Unavailable(_) => 4,
        }
    }

    /// Prints the error and returns the process's exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {self}");
        ExitCode::from(self.exit_code())
    }
}

impl From<String> for CliError {
    fn from(s: String) -> CliError {
        CliError::Failed(s)
    }
}

impl From<&str> for CliError {
    fn from(s: &str) -> CliError {
        CliError::Failed(s.to_string())
    }
}

impl From<ConsensusError> for CliError {
    fn from(e: ConsensusError) -> CliError {
        let text = e.to_string();
        match e {
            ConsensusError::Refused(r) if r.code.lease_lost() => CliError::LeaseLost(text),
            // A field out of range (a TTL of 0, an empty lock name): the
            // command line has to change, so it is a usage error.
            ConsensusError::Refused(r) if r.code == Refusal::InvalidArgument => {
                CliError::Usage(text)
            }
            ConsensusError::Refused(_)
            | ConsensusError::Protocol(_)
            | ConsensusError::NotAuthorized(_) => CliError::Failed(text),
            ConsensusError::Unavailable { .. } | ConsensusError::Unreachable { .. } => {
                CliError::Unavailable(text)
            }
            ConsensusError::Config(_) => CliError::Usage(text),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let text = e.to_string();
        match e {
            ClientError::Io(_) | ClientError::Timeout { .. } => CliError::Unavailable(text),
            ClientError::Address(_) | ClientError::Tls(_) => CliError::Usage(text),
            ClientError::Server { .. } | ClientError::Protocol(_) => CliError::Failed(text),
        }
    }
}

impl From<LogError> for CliError {
    fn from(e: LogError) -> CliError {
        match e {
            LogError::Consensus(c) => c.into(),
            LogError::Failed(t) => CliError::Failed(t),
            LogError::Invalid(t) => CliError::Usage(t),
        }
    }
}

impl From<SequencerError> for CliError {
    fn from(e: SequencerError) -> CliError {
        match e {
            SequencerError::Consensus(c) => c.into(),
            SequencerError::Log(l) => l.into(),
            SequencerError::Failed(t) => CliError::Failed(t),
        }
    }
}

/// `CliError::Failed(format!(...))`.
macro_rules! failed {
    ($($t:tt)*) => {
        $crate::error::CliError::Failed(format!($($t)*))
    };
}
pub(crate) use failed;

/// `CliError::Usage(format!(...))`.
macro_rules! usage {
    ($($t:tt)*) => {
        $crate::error::CliError::Usage(format!($($t)*))
    };
}
pub(crate) use usage;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_exit_code() {
        let errors = [
            CliError::Failed(String::new()),
            CliError::Usage(String::new()),
            CliError::LeaseLost(String::new()),
            CliError::Unavailable(String::new()),
        ];
        for e in &errors {
            let line = format!("\n  {}  ", e.exit_code());
            assert!(EXIT_CODES.contains(&line), "{e:?} missing: {EXIT_CODES}");
        }
        assert!(EXIT_CODES.contains("\n  0  done"));
    }
}
