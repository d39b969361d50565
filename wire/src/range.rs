//! The ranges of the counters that cross a trust boundary, and the one rule
//! every handler applies to them: epochs (storage-unit seals, projections) and
//! Paxos ballots only grow, by a bounded step from what the receiver has
//! already seen, and never come near `u64::MAX`.
//!
//! Why: a counter's successor is computed as `seen + 1`. A single forged or
//! corrupted value at the top of the range (a `prepare` with ballot
//! `u64::MAX`, a seal at epoch `u64::MAX`) would otherwise be adopted, made
//! durable, and leave no higher value for anyone: the group could never elect
//! a leader again, no sequencer could take over (issue 11, cases 1 and 2).
//!
//! The bound, and why it is safe:
//! - **Ceiling** [`MAX_COUNTER`] = 2^62. Legitimate counters grow by one per
//!   election or reconfiguration; at a million a second they would take
//!   146,000 years to reach it. Values above are refused, so `+ 1` on any
//!   accepted value cannot wrap.
//! - **Step** [`MAX_STEP`] = 2^24 (16,777,216) above what the receiver has seen.
//!   Proposers pick `highest seen + 1`; a node that was away while the others
//!   went through elections or reconfigurations lags by one per attempt, so a
//!   legitimate value is never that far ahead (it would take 16.7 million
//!   failed elections while the node was away). Refusing a message is always
//!   safe for Paxos and for fencing (it is a lost message: the sender retries
//!   or picks another value); a hostile sender can move a counter by at most
//!   one step per accepted message, and each costs a durable write on the
//!   receiver — about 2^38 of them to reach the ceiling.

use std::fmt;

/// The highest epoch or ballot counter accepted from anyone (2^62).
pub const MAX_COUNTER: u64 = 1 << 62;

/// The most an epoch or ballot counter may lie above what the receiver has
/// seen (2^24).
pub const MAX_STEP: u64 = 1 << 24;

/// A number outside its range: what it is, the value, the highest allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfRange {
    /// What the number is ("epoch", "ballot").
    pub what: &'static str,
    /// The value refused.
    pub value: u64,
    /// The highest value that would have been accepted.
    pub max: u64,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} is out of range: at most {} here (counters grow by at most {MAX_STEP} from what the cluster has seen, and never above {MAX_COUNTER}); use the next value after the current one",
            self.what, self.value, self.max
        )
    }
}

impl std::error::Error for OutOfRange {}

/// The highest counter acceptable by a receiver that has seen `seen`.
pub fn highest_after(seen: u64) -> u64 {
    seen.saturating_add(MAX_STEP).min(MAX_COUNTER)
}

/// Checks a counter `value` (named `what`) proposed to a receiver that has
/// seen `seen`: at most [`MAX_STEP`] above it and at most [`MAX_COUNTER`].
/// Values at or below `seen` pass (whether they are stale is the handler's
/// rule, not a range).
pub fn check_step(what: &'static str, seen: u64, value: u64) -> Result<u64, OutOfRange> {
    let max = highest_after(seen);
    if value > max {
        return Err(OutOfRange { what, value, max });
    }
    Ok(value)
}

/// The successor of an accepted counter: `value + 1`, refused at the ceiling
/// (never wraps).
pub fn next(what: &'static str, value: u64) -> Result<u64, OutOfRange> {
    match value.checked_add(1) {
        Some(n) if n <= MAX_COUNTER => Ok(n),
        _ => Err(OutOfRange {
            what,
            value: value.saturating_add(1),
            max: MAX_COUNTER,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_ceiling() {
        assert_eq!(check_step("epoch", 5, 6), Ok(6));
        assert_eq!(check_step("epoch", 5, 5 + MAX_STEP), Ok(5 + MAX_STEP));
        assert!(check_step("epoch", 5, 6 + MAX_STEP).is_err());
        assert!(check_step("epoch", 0, u64::MAX).is_err());
        assert!(check_step("epoch", u64::MAX, u64::MAX).is_err());
        assert_eq!(
            check_step("epoch", MAX_COUNTER, MAX_COUNTER),
            Ok(MAX_COUNTER)
        );
        assert_eq!(
            check_step("ballot", 7, 3),
            Ok(3),
            "stale values are the handler's"
        );
        assert_eq!(next("epoch", 1), Ok(2));
        assert!(next("epoch", MAX_COUNTER).is_err());
        assert!(next("epoch", u64::MAX).is_err());
    }
}
