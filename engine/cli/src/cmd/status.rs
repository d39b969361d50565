//! `trex status`: the cluster at a glance (layout, sequencer lease, units).

use crate::common::{print_projection, resolve_endpoints, unix_ms, Format, ShowArgs};
use crate::error::CliError;
use std::collections::BTreeSet;
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::lock::{Lease, LockClient};
use trex_consensus::sm::{Projection, Role};
use trex_log::Log;
use trex_net::unit_client::{UnitApi, UnitClient};
use trex_wire::consensus::NodeId;
use trex_wire::{InfoReply, INFO_FULL, INFO_POISONED};

/// A registered storage unit as the table shows it.
struct UnitRow {
    id: NodeId,
    addr: String,
    info: Result<InfoReply, String>,
    /// "chain" (in the layout), "spare" (empty and healthy: `trex repair`
    /// can use it) or "out".
    role: &'static str,
}

pub fn run(a: ShowArgs) -> Result<(), CliError> {
    let eps = resolve_endpoints(&a.ep)?;
    let mut log = Log::connect_to(&eps, a.ep.cluster_id)?;
    let p = log.projection().clone();
    // The log's trim mark as recorded (units below it apply it when they answer).
    let trim_mark = log.trim_mark()?;
    let target = log.replication_target()?;
    let mut c = ConsensusClient::new(&eps, a.ep.timeout)?
        .with_total(a.ep.timeout)
        .with_cluster_id(a.ep.cluster_id);
    let members = c.members()?;
    let lease = LockClient::new(
        ConsensusClient::new(&eps, a.ep.timeout)?
            .with_total(a.ep.timeout)
            .with_cluster_id(a.ep.cluster_id),
    )
    .get(trex_sequencer::SEQUENCER_LOCK)
    .ok();
    let in_layout: BTreeSet<NodeId> = p
        .segments
        .iter()
        .flat_map(|s| s.stripes.iter().flatten().copied())
        .collect();
    // Every unit asked at once: a stopped unit costs its timeout once, not
    // once per unit before it (a third of --timeout each).
    let per_unit = (a.ep.timeout / 3).max(std::time::Duration::from_millis(100));
    let cluster_id = a.ep.cluster_id;
    let asked: Vec<_> = members
        .iter()
        .filter(|(_, m)| m.role == Role::Storage)
        .map(|(id, m)| {
            let addr = m.addr.clone();
            let h = std::thread::spawn(move || {
                UnitClient::connect(&addr, per_unit)
                    .and_then(|mut u| {
                        u.cluster_id = cluster_id;
                        u.info()
                    })
                    .map_err(|e| e.to_string())
            });
            (*id, m, h)
        })
        .collect();
    let mut units = Vec::new();
    for (id, m, h) in asked {
        let id = &id;
        let info = h
            .join()
            .unwrap_or_else(|_| Err("the query thread failed".to_string()));
        let role = match &info {
            _ if in_layout.contains(id) => "chain",
            Ok(i) if i.tail == 0 && i.trim_mark == 0 && i.flags & INFO_POISONED == 0 => "spare",
            _ => "out",
        };
        units.push(UnitRow {
            id: *id,
            addr: m.addr.clone(),
            info,
            role,
        });
    }
    // Those in a chain first, then the others.
    units.sort_by_key(|u| (u.role != "chain", u.id));
    match a.format {
        Format::Json => print_json(&p, trim_mark, target, lease.as_ref(), &units),
        Format::Table => print_table(&p, trim_mark, target, lease.as_ref(), &units),
    }
    Ok(())
}

fn print_json(
    p: &Projection,
    trim_mark: u64,
    target: Option<usize>,
    lease: Option<&Lease>,
    units: &[UnitRow],
) {
    let us: Vec<String> = units
        .iter()
        .map(|UnitRow { id, addr, info, role }| match info {
            Ok(i) => format!(
                "{{\"id\":{id},\"addr\":\"{addr}\",\"role\":\"{role}\",\"tail\":{},\"trim_mark\":{},\"sealed_epoch\":{},\"healthy\":{}}}",
                i.tail, i.trim_mark, i.sealed_epoch, i.flags & (INFO_POISONED | INFO_FULL) == 0
            ),
            Err(e) => format!("{{\"id\":{id},\"addr\":\"{addr}\",\"role\":\"{role}\",\"healthy\":false,\"error\":{e:?}}}"),
        })
        .collect();
    let l = lease.map_or("null".to_string(), |l| {
        format!(
            "{{\"holder\":{:?},\"token\":{},\"expire_ms\":{}}}",
            l.holder,
            l.token,
            l.expire_time_unsafe()
        )
    });
    println!(
        "{{\"epoch\":{},\"sequencer\":{},\"trim_mark\":{trim_mark},\"replication\":{},\"degraded\":[{}],\"sequencer_lease\":{l},\"units\":[{}]}}",
        p.epoch,
        p.sequencer,
        target.map_or("null".to_string(), |t| t.to_string()),
        degraded(p, target)
            .iter()
            .map(|(seg, stripe, have, want)| format!(
                "{{\"segment\":{seg},\"stripe\":{stripe},\"replicas\":{have},\"want\":{want}}}"
            ))
            .collect::<Vec<_>>()
            .join(","),
        us.join(",")
    );
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

fn print_table(
    p: &Projection,
    trim_mark: u64,
    target: Option<usize>,
    lease: Option<&Lease>,
    units: &[UnitRow],
) {
    print_projection(p);
    println!("trim mark  {trim_mark} (recorded; units apply it when they answer)");
    match target {
        Some(t) => println!("factor     {t} replicas per chain (recorded)"),
        None => println!(
            "factor     not recorded (chains are judged against the longest); set it with `trex layout replicas N`"
        ),
    }
    match lease {
        Some(l) if l.released => println!("lease      {} (token {}), released", l.holder, l.token),
        Some(l) => println!(
            "lease      {} (token {}), expires in {:.1}s",
            l.holder,
            l.token,
            (l.expire_time_unsafe() as i64 - unix_ms() as i64) as f64 / 1000.0
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
    for (seg, stripe, have, want) in degraded(p, target) {
        println!(
            "degraded   segment {seg} stripe {stripe} has {have} of {want} replicas; the active sequencer restores it when an empty spare is registered"
        );
    }
    println!(
        "{:<8}{:<7}{:<22}{:<10}{:<10}{:<8}HEALTH",
        "UNIT", "ROLE", "ADDRESS", "TAIL", "TRIM", "EPOCH"
    );
    for UnitRow {
        id,
        addr,
        info,
        role,
    } in units
    {
        match info {
            Ok(i) => println!(
                "{id:<8}{role:<7}{addr:<22}{:<10}{:<10}{:<8}{}",
                i.tail,
                i.trim_mark,
                i.sealed_epoch,
                if i.flags & INFO_POISONED != 0 {
                    "poisoned"
                } else if i.flags & INFO_FULL != 0 {
                    "full"
                } else {
                    "ok"
                }
            ),
            Err(e) => println!("{id:<8}{role:<7}{addr:<22}unreachable: {e}"),
        }
    }
}
