//! `trex status`: the cluster at a glance (layout, sequencer lease, units,
//! sequencers and consensus nodes, each with the version it runs).

use crate::common::{
    print_json, print_projection, resolve_endpoints, rfc3339, unix_ms, when, Endpoints, Format,
};
use crate::error::CliError;
use serde::Serialize;
use std::collections::BTreeSet;
use std::thread::JoinHandle;
use std::time::Duration;
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::lock::{Lease, LockClient};
use trex_consensus::sm::{Projection, Role};
use trex_log::Log;
use trex_net::unit_client::{self, ClientError, UnitApi, UnitClient};
use trex_wire::consensus::{NodeId, NodeStatus};
use trex_wire::{ErrorCode, InfoReply, NodeInfo, INFO_FULL, INFO_POISONED};

/// A registered storage unit as the table shows it.
struct UnitRow {
    id: NodeId,
    addr: String,
    info: Result<InfoReply, String>,
    /// What it answered to `node-info` (`None`: nothing, e.g. an older build).
    build: Option<NodeInfo>,
    /// "chain" (in the layout), "spare" (empty and healthy: `trex repair`
    /// can use it) or "out".
    role: &'static str,
}

/// A registered sequencer.
struct SequencerRow {
    id: NodeId,
    addr: String,
    /// The one the layout names.
    active: bool,
    /// Its `node-info`: `Ok(None)` if it answered but does not know the
    /// request (an older build).
    build: Result<Option<NodeInfo>, String>,
}

/// A consensus endpoint and what it answered.
struct ConsensusRow {
    endpoint: String,
    status: Result<NodeStatus, String>,
    build: Option<NodeInfo>,
}

/// Everything `trex status` prints.
struct Report {
    projection: Projection,
    trim_mark: u64,
    target: Option<usize>,
    lease: Option<Lease>,
    units: Vec<UnitRow>,
    sequencers: Vec<SequencerRow>,
    consensus: Vec<ConsensusRow>,
}

/// `trex status`.
pub fn run(a: Endpoints) -> Result<(), CliError> {
    let eps = resolve_endpoints(&a)?;
    let mut log = Log::connect_to(&eps, a.cluster_id)?;
    let p = log.projection().clone();
    // The log's trim mark as recorded (units below it apply it when they answer).
    let trim_mark = log.trim_mark()?;
    let target = log.replication_target()?;
    let client = || -> Result<ConsensusClient, CliError> {
        Ok(ConsensusClient::new(&eps, a.timeout)?
            .with_total(a.timeout)
            .with_cluster_id(a.cluster_id))
    };
    let members = client()?.members()?;
    let lease = LockClient::new(client()?)
        .get(trex_sequencer::SEQUENCER_LOCK)
        .ok();
    let in_layout: BTreeSet<NodeId> = p
        .segments
        .iter()
        .flat_map(|s| s.stripes.iter().flatten().copied())
        .collect();
    // Every node asked at once: a stopped one costs its timeout once, not
    // once per node before it (a third of --timeout each).
    let per_node = (a.timeout / 3).max(Duration::from_millis(100));
    let cluster_id = a.cluster_id;
    let of_role = |role: Role| {
        members
            .iter()
            .filter(move |(_, m)| m.role == role)
            .map(|(id, m)| (*id, m.addr.clone()))
    };
    let asked_units: Vec<_> = of_role(Role::Storage)
        .map(|(id, addr)| {
            let a = addr.clone();
            (id, addr, spawn(move || ask_unit(&a, per_node, cluster_id)))
        })
        .collect();
    let asked_sequencers: Vec<_> = of_role(Role::Sequencer)
        .map(|(id, addr)| {
            let a = addr.clone();
            let h = spawn(move || known_build(unit_client::node_info(&a, per_node, cluster_id)));
            (id, addr, h)
        })
        .collect();
    let asked_consensus: Vec<_> = eps
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|ep| {
            let a = ep.to_string();
            (
                ep.to_string(),
                spawn(move || ask_consensus(&a, per_node, cluster_id)),
            )
        })
        .collect();

    let mut units = Vec::new();
    for (id, addr, h) in asked_units {
        let (info, build) = joined(h).unwrap_or_else(|e| (Err(e), None));
        let role = match &info {
            _ if in_layout.contains(&id) => "chain",
            Ok(i) if i.tail == 0 && i.trim_mark == 0 && i.flags & INFO_POISONED == 0 => "spare",
            _ => "out",
        };
        units.push(UnitRow {
            id,
            addr,
            info,
            build,
            role,
        });
    }
    // Those in a chain first, then the others.
    units.sort_by_key(|u| (u.role != "chain", u.id));
    let sequencers = asked_sequencers
        .into_iter()
        .map(|(id, addr, h)| SequencerRow {
            id,
            addr,
            active: id == p.sequencer,
            build: joined(h).and_then(|r| r),
        })
        .collect();
    let consensus = asked_consensus
        .into_iter()
        .map(|(endpoint, h)| {
            let (status, build) = joined(h).unwrap_or_else(|e| (Err(e), None));
            ConsensusRow {
                endpoint,
                status,
                build,
            }
        })
        .collect();
    let report = Report {
        projection: p,
        trim_mark,
        target,
        lease,
        units,
        sequencers,
        consensus,
    };
    match a.format {
        Format::Json => print_json(&report.json()),
        Format::Table => report.print_table(),
    }
    Ok(())
}

fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::spawn(f)
}

/// What a query thread returned (a thread that panicked is an error to show,
/// not a reason to fail the whole status).
fn joined<T>(h: JoinHandle<T>) -> Result<T, String> {
    h.join().map_err(|_| "the query thread failed".to_string())
}

/// A unit's `info`, then on the same connection its `node-info` (an older
/// unit refuses that one: its build is then unknown).
fn ask_unit(
    addr: &str,
    timeout: Duration,
    cluster_id: u32,
) -> (Result<InfoReply, String>, Option<NodeInfo>) {
    let mut u = match UnitClient::connect(addr, timeout) {
        Ok(u) => u,
        Err(e) => return (Err(e.to_string()), None),
    };
    u.cluster_id = cluster_id;
    match u.info() {
        Ok(i) => (Ok(i), u.node_info().ok()),
        Err(e) => (Err(e.to_string()), None),
    }
}

/// A consensus node's own view, and its build.
fn ask_consensus(
    addr: &str,
    timeout: Duration,
    cluster_id: u32,
) -> (Result<NodeStatus, String>, Option<NodeInfo>) {
    match ConsensusClient::node_status_in(addr, timeout, cluster_id) {
        Ok(s) => (
            Ok(s),
            unit_client::node_info(addr, timeout, cluster_id).ok(),
        ),
        Err(e) => (Err(e.to_string()), None),
    }
}

/// A `node-info` answer: a node that refuses the request as unknown is an
/// older build that is up (its version is unknown), not an unreachable one.
fn known_build(r: Result<NodeInfo, ClientError>) -> Result<Option<NodeInfo>, String> {
    match r {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.code() == Some(ErrorCode::UnknownOpcode) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// A node's version as the table shows it: `0.1.0 (git 0123456789ab)`, or
/// `unknown`.
fn version_text(b: Option<&NodeInfo>) -> String {
    b.map_or_else(
        || "unknown".to_string(),
        |b| format!("{} (git {})", b.version, b.revision),
    )
}

/// Chains shorter than the recorded replication factor (or, if none was
/// recorded, than the longest chain of the layout): `(segment, stripe,
/// replicas, wanted)`.
fn degraded(p: &Projection, target: Option<usize>) -> Vec<(usize, usize, usize, usize)> {
    let want = target.unwrap_or_else(|| {
        p.segments
            .iter()
            .flat_map(|s| s.stripes.iter().map(Vec::len))
            .max()
            .unwrap_or(0)
    });
    p.segments
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.stripes
                .iter()
                .enumerate()
                .filter(|(_, c)| c.len() < want)
                .map(move |(j, c)| (i, j, c.len(), want))
        })
        .collect()
}

/// `trex status -w json` (docs/cli.md).
#[derive(Serialize)]
struct StatusJson {
    epoch: u64,
    sequencer: u64,
    trim_mark: u64,
    replication: Option<usize>,
    degraded: Vec<DegradedJson>,
    sequencer_lease: Option<LeaseJson>,
    units: Vec<UnitJson>,
    sequencers: Vec<SequencerJson>,
    consensus: Vec<ConsensusJson>,
}

#[derive(Serialize)]
struct DegradedJson {
    segment: usize,
    stripe: usize,
    replicas: usize,
    want: usize,
}

/// A lease as `trex status` and `trex lock` print it in JSON.
#[derive(Serialize)]
pub struct LeaseJson {
    /// Lock name.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// Expiry, Unix milliseconds (the leader's clock).
    pub expire_ms: u64,
    /// The same as an RFC 3339 UTC time.
    pub expire_at: String,
    /// Whether it was released.
    pub released: bool,
}

impl LeaseJson {
    /// `l` as JSON.
    pub fn new(l: &Lease) -> LeaseJson {
        LeaseJson {
            name: l.name.clone(),
            holder: l.holder.clone(),
            token: l.token,
            expire_ms: l.expire_time_unsafe(),
            expire_at: rfc3339(l.expire_time_unsafe()),
            released: l.released,
        }
    }
}

#[derive(Serialize)]
struct UnitJson {
    id: NodeId,
    addr: String,
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tail: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trim_mark: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed_epoch: Option<u64>,
    healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    version: Option<String>,
    revision: Option<String>,
}

#[derive(Serialize)]
struct SequencerJson {
    id: NodeId,
    addr: String,
    active: bool,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    version: Option<String>,
    revision: Option<String>,
}

#[derive(Serialize)]
struct ConsensusJson {
    endpoint: String,
    id: Option<NodeId>,
    leading: bool,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    version: Option<String>,
    revision: Option<String>,
}

/// A node's `version` and `revision` fields (`null` when unknown).
fn build_fields(b: Option<&NodeInfo>) -> (Option<String>, Option<String>) {
    (b.map(|b| b.version.clone()), b.map(|b| b.revision.clone()))
}

impl Report {
    fn json(&self) -> StatusJson {
        let p = &self.projection;
        let units = self
            .units
            .iter()
            .map(|u| {
                let (version, revision) = build_fields(u.build.as_ref());
                let i = u.info.as_ref().ok();
                UnitJson {
                    id: u.id,
                    addr: u.addr.clone(),
                    role: u.role,
                    tail: i.map(|i| i.tail),
                    trim_mark: i.map(|i| i.trim_mark),
                    sealed_epoch: i.map(|i| i.sealed_epoch),
                    healthy: i.is_some_and(|i| i.flags & (INFO_POISONED | INFO_FULL) == 0),
                    error: u.info.as_ref().err().cloned(),
                    version,
                    revision,
                }
            })
            .collect();
        let sequencers = self
            .sequencers
            .iter()
            .map(|s| {
                let (version, revision) =
                    build_fields(s.build.as_ref().ok().and_then(Option::as_ref));
                SequencerJson {
                    id: s.id,
                    addr: s.addr.clone(),
                    active: s.active,
                    reachable: s.build.is_ok(),
                    error: s.build.as_ref().err().cloned(),
                    version,
                    revision,
                }
            })
            .collect();
        let consensus = self
            .consensus
            .iter()
            .map(|c| {
                let (version, revision) = build_fields(c.build.as_ref());
                let st = c.status.as_ref().ok();
                ConsensusJson {
                    endpoint: c.endpoint.clone(),
                    id: st.map(|s| s.id),
                    leading: st.is_some_and(|s| s.leading),
                    reachable: st.is_some(),
                    error: c.status.as_ref().err().cloned(),
                    version,
                    revision,
                }
            })
            .collect();
        StatusJson {
            epoch: p.epoch,
            sequencer: p.sequencer,
            trim_mark: self.trim_mark,
            replication: self.target,
            degraded: degraded(p, self.target)
                .into_iter()
                .map(|(segment, stripe, replicas, want)| DegradedJson {
                    segment,
                    stripe,
                    replicas,
                    want,
                })
                .collect(),
            sequencer_lease: self.lease.as_ref().map(LeaseJson::new),
            units,
            sequencers,
            consensus,
        }
    }

    fn print_table(&self) {
        let p = &self.projection;
        let now = unix_ms();
        print_projection(p);
        println!(
            "trim mark  {} (recorded; units apply it when they answer)",
            self.trim_mark
        );
        match self.target {
            Some(t) => println!("factor     {t} replicas per chain (recorded)"),
            None => println!(
                "factor     not recorded (chains are judged against the longest); set it with `trex layout replicas N`"
            ),
        }
        match &self.lease {
            Some(l) if l.released => {
                println!("lease      {} (token {}), released", l.holder, l.token)
            }
            Some(l) => println!(
                "lease      {} (token {}), expires {}",
                l.holder,
                l.token,
                when(l.expire_time_unsafe(), now)
            ),
            None => println!("lease      none"),
        }
        // Replicas per chain of the open segment; "degraded" against the
        // recorded replication factor.
        if let Some(open) = p.segments.last() {
            let counts: Vec<String> = open
                .stripes
                .iter()
                .enumerate()
                .map(|(i, c)| format!("stripe {i}: {}", c.len()))
                .collect();
            println!("replicas   {}", counts.join(", "));
        }
        for (seg, stripe, have, want) in degraded(p, self.target) {
            println!(
                "degraded   segment {seg} stripe {stripe} has {have} of {want} replicas; the active sequencer restores it when an empty spare is registered"
            );
        }
        println!(
            "{:<8}{:<7}{:<22}{:<10}{:<10}{:<8}{:<13}VERSION",
            "UNIT", "ROLE", "ADDRESS", "TAIL", "TRIM", "EPOCH", "HEALTH"
        );
        for u in &self.units {
            let (id, role, addr) = (u.id, u.role, &u.addr);
            match &u.info {
                Ok(i) => println!(
                    "{id:<8}{role:<7}{addr:<22}{:<10}{:<10}{:<8}{:<13}{}",
                    i.tail,
                    i.trim_mark,
                    i.sealed_epoch,
                    if i.flags & INFO_POISONED != 0 {
                        "poisoned".to_string()
                    } else if i.flags & INFO_FULL != 0 {
                        "full".to_string()
                    } else if i.corrupt > 0 {
                        // Damaged records, rewritten from the other replicas
                        // by the repair loop (docs/storage.md, Recovery).
                        format!("damaged {}", i.corrupt)
                    } else {
                        "ok".to_string()
                    },
                    version_text(u.build.as_ref())
                ),
                Err(e) => println!(
                    "{id:<8}{role:<7}{addr:<22}{:<10}{:<10}{:<8}{:<13}unknown ({e})",
                    "-", "-", "-", "unreachable"
                ),
            }
        }
        println!("{:<11}{:<22}{:<13}VERSION", "SEQUENCER", "ADDRESS", "STATE");
        for s in &self.sequencers {
            let state = match (&s.build, s.active) {
                (Err(_), _) => "unreachable",
                (Ok(_), true) => "active",
                (Ok(_), false) => "standby",
            };
            println!(
                "{:<11}{:<22}{state:<13}{}",
                s.id,
                s.addr,
                version_text(s.build.as_ref().ok().and_then(Option::as_ref))
            );
        }
        println!(
            "{:<11}{:<22}{:<13}VERSION",
            "CONSENSUS", "ENDPOINT", "STATE"
        );
        for c in &self.consensus {
            let (id, state) = match &c.status {
                Ok(s) if s.leading => (s.id.to_string(), "leader"),
                Ok(s) => (s.id.to_string(), "follower"),
                Err(_) => ("-".to_string(), "unreachable"),
            };
            println!(
                "{id:<11}{:<22}{state:<13}{}",
                c.endpoint,
                version_text(c.build.as_ref())
            );
        }
    }
}
