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
