//! Why a log operation failed.

use thiserror::Error;
use trex_consensus::ConsensusError;

/// Why a log operation (append, read, fill, check, trim, reconfigure, repair)
/// failed. The log client already retried what can be retried (sealed epochs,
/// layout races, dead replicas it could take out); what reaches the caller is
/// final for this call.
#[derive(Clone, Debug, Error)]
pub enum LogError {
    /// The consensus group refused an operation or could not be reached.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The operation could not complete; the text says why and what to do.
    /// Nothing branches on it: it is for people.
    #[error("{0}")]
    Failed(String),
    /// The request can never succeed as given (an entry over the size limit,
    /// a trim mark above the log's tail): the caller has to change it. Nothing
    /// was done.
    #[error("{0}")]
    Invalid(String),
}

/// Why one entry of a batch was not appended (see [`crate::Log::append_each`]).
#[derive(Clone, Debug, Error)]
#[error("{error}")]
pub struct EntryFailure {
    /// The address the entry held when the append gave up. `Some`: it may be
    /// in the log there (written on part of its chain; a reader completes or
    /// junks it) — never anywhere else. `None`: it is not in the log.
    pub addr: Option<u64>,
    /// Why.
    pub error: LogError,
}

impl EntryFailure {
    /// The error, its message naming the address the entry held (if any).
    pub fn into_error(self) -> LogError {
        match (self.addr, self.error) {
            (Some(a), LogError::Failed(t)) => LogError::Failed(format!(
                "{t} (the entry held address {a}: it may be in the log there, or become a hole)"
            )),
            (_, e) => e,
        }
    }
}

impl From<String> for LogError {
    fn from(s: String) -> LogError {
        LogError::Failed(s)
    }
}

impl From<&str> for LogError {
    fn from(s: &str) -> LogError {
        LogError::Failed(s.to_string())
    }
}

/// `LogError::Failed(format!(...))`.
macro_rules! fail {
    ($($t:tt)*) => {
        $crate::error::LogError::Failed(format!($($t)*))
    };
}
pub(crate) use fail;
