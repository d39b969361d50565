//! Why a call to the consensus group produced no result.

use std::time::Duration;
use thiserror::Error;
use trex_wire::ops::{Refusal, Refused};

/// Why an operation submitted to the consensus group (or a status request to
/// one node) produced no result. Branch on the variant and on
/// [`Refused::code`], never on the text.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConsensusError {
    /// The state machine applied the operation and refused it. The caller
    /// handles it: re-read the layout on [`Refusal::EpochMismatch`], stand by on
    /// [`Refusal::NotSequencerLeaseholder`], and so on.
    #[error("{0}")]
    Refused(#[from] Refused),
    /// No leader applied the operation within the client's deadline. The
    /// outcome is unknown; submitting it again through the same client is safe
    /// (it reuses the sequence number, so it is applied at most once).
    #[error("no consensus leader answered within {} (last: {last}); check that a majority of {endpoints} is running", trex_net::util::duration_text(*.waited))]
    Unavailable {
        /// How long the client tried.
        waited: Duration,
        /// The last failure seen, for people.
        last: String,
        /// The endpoints tried, comma-separated.
        endpoints: String,
    },
    /// One node could not be reached or did not answer (status requests).
    #[error("{addr}: {reason}")]
    Unreachable {
        /// HOST:PORT.
        addr: String,
        /// What failed, for people.
        reason: String,
    },
    /// A reply did not decode: a foreign or broken server. Fatal for the call.
    #[error("bad reply from the consensus group: {0}")]
    Protocol(String),
    /// The client was set up wrongly (no endpoints). Fatal: fix the command
    /// line or `TREX_ENDPOINTS`.
    #[error("{0}")]
    Config(String),
    /// The node refused the request with `not-authorized`: this process's
    /// certificate does not grant it (the text names the role needed; see
    /// docs/security.md). Fatal: retrying with the same certificate cannot help.
    #[error("{0}")]
    NotAuthorized(String),
}

impl ConsensusError {
    /// The state machine's reason, if it refused the operation.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            ConsensusError::Refused(r) => Some(r.code),
            _ => None,
        }
    }

    /// Whether retrying cannot help: a reply that does not decode, or a client
    /// set up wrongly. The other kinds are the caller's to handle: a refusal by
    /// its code (re-read the layout, stand by, acquire again), an unavailable
    /// group by retrying later (the same client reuses the sequence number).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ConsensusError::Protocol(_)
                | ConsensusError::Config(_)
                | ConsensusError::NotAuthorized(_)
        )
    }

    /// Whether the state machine refused it with `code`.
    pub fn is_refused(&self, code: Refusal) -> bool {
        self.refusal() == Some(code)
    }
}
