//! The advisory lock service's client side: [`Lease`] handles and
//! [`LockClient`].
//!
//! Locks are advisory (as in Chubby): they conflict only with other
//! acquisitions of the same name; holding `R` neither is needed to touch the
//! resource `R` nor stops anyone else touching it. A lease handle is plain data
//! (name and fencing token): any thread or process that has it may renew or
//! release the lock.
//!
//! **Time marches backwards.** A lease's expiry is decided by the consensus
//! leader's clock (stamped into each command), while the holder reads its own
//! clock, which drifts; and a holder can stall (a GC pause, a page fault, being
//! descheduled, SIGSTOP) for any length of time between checking its lease and
//! acting on it. No clock protocol makes that safe. So:
//! - [`Lease::expire_time_unsafe`] gives the raw expiry in Unix milliseconds and
//!   says in its name that relying on it is unsafe;
//! - [`Lease::expire_time_with_safety_gap`] pulls the expiry in by a gap you
//!   choose (to cover drift plus your longest plausible pause) and returns a
//!   `SystemTime`, not an integer: millisecond precision is a fiction here;
//! - the service never hands a lock to a new holder before the old lease's expiry
//!   *plus a grace period* has passed (see `SetLockGrace`), adding margin on the
//!   service side too;
//! - and every grant carries a **fencing token** that strictly increases each time
//!   the lock changes hands. A resource that must never be touched by a stale
//!   holder checks the token and refuses lower ones: only that makes a lease safe
//!   against pauses (a lease alone cannot, as Jepsen showed for etcd).

use crate::client::{ConsensusClient, Submit};
use crate::error::ConsensusError;
use crate::sm::{decode_lock, Op};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use trex_wire::Reader;

/// A granted lease: plain data that any holder of it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Lock name.
    pub name: String,
    /// Holder the lease was granted to.
    pub holder: String,
    /// Fencing token: strictly increases each time the lock changes hands.
    pub token: u64,
    expire_ms: u64,
    /// Set when the state was read with `get` and the lock was released.
    pub released: bool,
}

impl Lease {
    /// Rebuilds a handle from its parts (e.g. passed between processes).
    pub fn from_parts(name: String, holder: String, token: u64, expire_ms: u64) -> Lease {
        Lease {
            name,
            holder,
            token,
            expire_ms,
            released: false,
        }
    }

    /// The fencing token to present to the protected resource.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// The expiry as Unix epoch milliseconds of the consensus leader's clock.
    /// Unsafe to rely on: your clock is not the leader's, and your process can
    /// stall after any check against it. Prefer
    /// [`expire_time_with_safety_gap`](Lease::expire_time_with_safety_gap).
    pub fn expire_time_unsafe(&self) -> u64 {
        self.expire_ms
    }

    /// The instant by which the holder must stop relying on the lease: the
    /// expiry pulled in by `gap`, which should cover clock drift between you and
    /// the consensus leader plus your longest plausible pause. Deliberately a
    /// `SystemTime`: compare it with `SystemTime::now()`.
    pub fn expire_time_with_safety_gap(&self, gap: Duration) -> SystemTime {
        Duration::from_millis(self.expire_ms)
            .checked_sub(gap)
            .map_or(UNIX_EPOCH, |d| UNIX_EPOCH + d)
    }

    fn decode(result: &[u8]) -> Result<Lease, ConsensusError> {
        let (name, l) = decode_lock(&mut Reader::new(result))
            .map_err(|e| ConsensusError::Protocol(format!("bad lease from the service: {e}")))?;
        Ok(Lease {
            name,
            holder: l.holder,
            token: l.token,
            expire_ms: l.expire_ms,
            released: l.released,
        })
    }
}

/// Takes, renews, releases and reads advisory locks.
pub struct LockClient<S: Submit = ConsensusClient> {
    inner: S,
    /// Sends acquire, renew and release as system-lease operations
    /// ([`Op::System`]): only the system's roles (the sequencer) do.
    system: bool,
}

/// A lease length in whole milliseconds, as the state machine takes it. Not
/// clamped: 0 (a lease expired when granted) and more than a day are sent as
/// they are and refused by the state machine (`invalid-argument`).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl<S: Submit> LockClient<S> {
    /// A lock client over a consensus client (or anything that submits).
    pub fn new(inner: S) -> LockClient<S> {
        LockClient {
            inner,
            system: false,
        }
    }

    /// A client of the system leases (the sequencer's lease): the user lock
    /// operations refuse their names.
    pub fn system(inner: S) -> LockClient<S> {
        LockClient {
            inner,
            system: true,
        }
    }

    fn submit(&mut self, op: Op) -> Result<Vec<u8>, ConsensusError> {
        let op = if self.system {
            Op::System(Box::new(op))
        } else {
            op
        };
        self.inner.submit_ok(&op)
    }

    /// Takes `name` for `holder` for `ttl`, or fails with who holds it until when.
    pub fn acquire(
        &mut self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, ConsensusError> {
        let op = Op::Acquire {
            name: name.into(),
            holder: holder.into(),
            ttl_ms: ttl_ms(ttl),
        };
        Lease::decode(&self.submit(op)?)
    }

    /// Extends the lease named by `name` and `token` to `ttl` from now.
    pub fn renew(
        &mut self,
        name: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<Lease, ConsensusError> {
        let op = Op::Renew {
            name: name.into(),
            token,
            ttl_ms: ttl_ms(ttl),
        };
        Lease::decode(&self.submit(op)?)
    }

    /// Gives the lock up.
    pub fn release(&mut self, name: &str, token: u64) -> Result<(), ConsensusError> {
        self.submit(Op::Release {
            name: name.into(),
            token,
        })
        .map(|_| ())
    }

    /// The lock's current (or last) lease, read through the log.
    pub fn get(&mut self, name: &str) -> Result<Lease, ConsensusError> {
        Lease::decode(&self.inner.submit_ok(&Op::GetLock { name: name.into() })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safety_gap_pulls_the_expiry_in() {
        let l = Lease::from_parts("a".into(), "me".into(), 7, 10_000);
        assert_eq!(l.expire_time_unsafe(), 10_000);
        let t = l.expire_time_with_safety_gap(Duration::from_millis(2_500));
        assert_eq!(t, UNIX_EPOCH + Duration::from_millis(7_500));
        assert_eq!(
            l.expire_time_with_safety_gap(Duration::from_secs(60)),
            UNIX_EPOCH
        );
    }
}
