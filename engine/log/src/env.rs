//! What the log client and the sequencer need from the world: request/reply
//! calls to storage units and sequencers, submissions to the consensus group, a
//! monotonic clock, and sleeping.
//!
//! [`TcpEnv`] is the real thing (blocking TCP with kept connections, the wall of
//! a process); the whole-cluster simulator (`trex_sim::cluster_sim`) provides
//! another, in which every call is a message of a seeded, simulated network and
//! time is virtual. The log client and the sequencer's lease loop run unchanged
//! on either, so the simulator tests the code users run.

use crate::error::{fail, LogError};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::sm::Op;
use trex_consensus::ConsensusError;
use trex_net::unit_client::{ClientError, UnitApi, UnitClient};
use trex_wire::{Header, Opcode};

/// The environment of a log client or a sequencer.
pub trait Env: Submit + Send {
    /// Sends one request to the node at `addr`; returns its request id. Requests
    /// to several nodes may be in flight at once (one per node at a time).
    fn send(
        &mut self,
        addr: &str,
        op: Opcode,
        epoch: u64,
        body: &dyn Fn(&mut Vec<u8>),
    ) -> Result<u64, ClientError>;

    /// Waits for the reply to request `id` sent to `addr`.
    fn recv(&mut self, addr: &str, id: u64) -> Result<(Header, Vec<u8>), ClientError>;

    /// Drops any connection kept to `addr` (the next call connects anew).
    fn forget(&mut self, addr: &str);

    /// A liveness probe: one request (`op`, header epoch 0) to the node at
    /// `addr` on a fresh connection, answered within `timeout` (connecting
    /// included) — shorter than a call's, so a failure detector that already
    /// waited out one call does not wait a whole call again. By default a
    /// forget and an ordinary call.
    fn probe(
        &mut self,
        addr: &str,
        op: Opcode,
        body: &dyn Fn(&mut Vec<u8>),
        timeout: Duration,
    ) -> Result<(Header, Vec<u8>), ClientError> {
        let _ = timeout;
        self.forget(addr);
        At(self, addr).call(op, 0, body)
    }

    /// Monotonic time since an arbitrary origin fixed for the process.
    fn now(&self) -> Duration;

    /// Sleeps.
    fn sleep(&mut self, d: Duration);
}

/// A unit (or sequencer) at `addr`, reached through an [`Env`]: gives it the
/// typed storage-unit operations of [`UnitApi`].
pub struct At<'a, E: ?Sized>(pub &'a mut E, pub &'a str);

impl<E: Env + ?Sized> UnitApi for At<'_, E> {
    fn call(
        &mut self,
        op: Opcode,
        epoch: u64,
        body: &dyn Fn(&mut Vec<u8>),
    ) -> Result<(Header, Vec<u8>), ClientError> {
        let id = self.0.send(self.1, op, epoch, body)?;
        self.0.recv(self.1, id)
    }
}

/// Whether the unit at `addr` is fit to stay in the layout: it answers `info`
/// on a fresh connection and is not poisoned. A unit at its connection limit
/// counts as alive (it said so). One rule for every failure detector: the
/// client that met an error, a sequencer taking over, a repair.
pub fn unit_alive(env: &mut dyn Env, addr: &str) -> Result<(), LogError> {
    let info = env
        .probe(addr, Opcode::Info, &|_| {}, PROBE_TIMEOUT)
        .and_then(|(_, body)| {
            trex_wire::decode_info_reply(&body).map_err(|e| ClientError::Protocol(e.to_string()))
        });
    match info {
        Ok(i) if i.flags & trex_wire::INFO_POISONED != 0 => {
            Err(fail!("{addr} is poisoned (a sync failed)"))
        }
        Ok(_) => Ok(()),
        Err(e) if e.is_busy() => Ok(()),
        Err(e) => Err(fail!("{addr}: {e}")),
    }
}

/// How long a liveness probe ([`unit_alive`]) waits, connecting included. A
/// unit answers `info` from its event loop at once; 400 ms leaves room for a
/// loop held up by a segment preallocation under load (measured up to ~160
/// ms, docs/benchmarks.md) while a dead or cut-off unit costs a failure
/// detector 0.4 s, not another whole call timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// Monotonic time since the first call in this process; the clock [`TcpEnv`]
/// and the sequencer's token path share.
pub fn mono_now() -> Duration {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed()
}

/// The real environment: blocking TCP, one kept connection per node.
pub struct TcpEnv {
    consensus: ConsensusClient,
    conns: HashMap<String, UnitClient>,
    timeout: Duration,
    /// Sent in every frame, to the consensus nodes and to every other node.
    cluster_id: u32,
}

impl TcpEnv {
    /// An environment talking to the consensus group at `endpoints`; every
    /// call waits at most `timeout`.
    pub fn new(endpoints: &str, timeout: Duration) -> Result<TcpEnv, LogError> {
        Ok(TcpEnv {
            consensus: ConsensusClient::new(endpoints, timeout)?,
            conns: HashMap::new(),
            timeout,
            cluster_id: 0,
        })
    }

    /// Sends `cluster_id` in every frame instead of the default 0: to the
    /// consensus nodes, the sequencer and the storage units alike (one id per
    /// cluster).
    pub fn with_cluster_id(mut self, cluster_id: u32) -> TcpEnv {
        self.consensus = self.consensus.with_cluster_id(cluster_id);
        self.cluster_id = cluster_id;
        self
    }
}

impl Submit for TcpEnv {
    fn submit(&mut self, op: &Op) -> Result<Vec<u8>, ConsensusError> {
        self.consensus.submit(op)
    }
}

impl Env for TcpEnv {
    fn send(
        &mut self,
        addr: &str,
        op: Opcode,
        epoch: u64,
        body: &dyn Fn(&mut Vec<u8>),
    ) -> Result<u64, ClientError> {
        if !self.conns.contains_key(addr) {
            let mut c = UnitClient::connect(addr, self.timeout)?;
            c.cluster_id = self.cluster_id;
            self.conns.insert(addr.to_string(), c);
        }
        let c = self.conns.get_mut(addr).expect("connected above");
        let r = c.send(op, epoch, body);
        if r.is_err() {
            self.conns.remove(addr);
        }
        r
    }

    fn recv(&mut self, addr: &str, id: u64) -> Result<(Header, Vec<u8>), ClientError> {
        let Some(c) = self.conns.get_mut(addr) else {
            return Err(ClientError::Io(format!(
                "no connection to {addr} (it failed while the request was sent)"
            )));
        };
        let r = c.recv(id);
        // A refusal leaves the connection usable; anything else does not (a
        // unit at its connection limit closes the connection after saying so).
        if matches!(r, Err(ref e) if !matches!(e, ClientError::Server { .. }) || e.is_busy()) {
            self.conns.remove(addr);
        }
        r
    }

    fn forget(&mut self, addr: &str) {
        self.conns.remove(addr);
    }

    fn probe(
        &mut self,
        addr: &str,
        op: Opcode,
        body: &dyn Fn(&mut Vec<u8>),
        timeout: Duration,
    ) -> Result<(Header, Vec<u8>), ClientError> {
        self.conns.remove(addr);
        let mut c = UnitClient::connect(addr, timeout.min(self.timeout))?;
        c.cluster_id = self.cluster_id;
        c.call(op, 0, body)
    }

    fn now(&self) -> Duration {
        mono_now()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}
