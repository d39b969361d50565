//! `trex lock …`: advisory locks with leases and fencing tokens.

use crate::cmd::status::LeaseJson;
use crate::common::{consensus_client, print_json, unix_ms, when, Endpoints, Format};
use crate::error::{failed, CliError};
use clap::Subcommand;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};
use trex_consensus::lock::{Lease, LockClient};
use trex_consensus::ConsensusError;
use trex_net::util::parse_duration;
use trex_wire::ops::Refusal;

#[derive(Subcommand)]
pub enum LockCmd {
    /// Take a lock; fails (exit 1) if someone holds it.
    Acquire {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
        /// Lease length.
        #[arg(long, default_value = "10s", value_parser = parse_ttl)]
        ttl: Duration,
        /// Who holds it (default: HOSTNAME:PID).
        #[arg(long)]
        holder: Option<String>,
    },
    /// Extend a lease that has not expired.
    Renew {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
        /// The lease's fencing token.
        #[arg(long)]
        token: u64,
        /// New lease length from now.
        #[arg(long, default_value = "10s", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Give a lock up.
    Release {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
        /// The lease's fencing token.
        #[arg(long)]
        token: u64,
    },
    /// Show a lock's lease.
    Show {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
    },
    /// Hold a lock while a command runs: wait for it, renew it every third of
    /// the TTL, release it when the command exits (exit code passed on). The
    /// command gets TREX_LOCK_NAME and TREX_LOCK_TOKEN; if the lease is lost, it
    /// gets SIGTERM and `trex` exits with 3.
    Run {
        #[command(flatten)]
        ep: Endpoints,
        /// Lock name.
        name: String,
        /// Lease length.
        #[arg(long, default_value = "10s", value_parser = parse_ttl)]
        ttl: Duration,
        /// Who holds it (default: HOSTNAME:PID).
        #[arg(long)]
        holder: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

pub fn run(cmd: LockCmd) -> Result<(), CliError> {
    match cmd {
        LockCmd::Acquire {
            ep,
            name,
            ttl,
            holder,
        } => {
            let mut c = LockClient::new(consensus_client(&ep)?);
            let l = c.acquire(&name, &holder.unwrap_or_else(default_holder), ttl)?;
            print_lease(&l, ep.format);
        }
        LockCmd::Renew {
            ep,
            name,
            token,
            ttl,
        } => {
            let l = LockClient::new(consensus_client(&ep)?).renew(&name, token, ttl)?;
            print_lease(&l, ep.format);
        }
        LockCmd::Release { ep, name, token } => {
            LockClient::new(consensus_client(&ep)?).release(&name, token)?;
            match ep.format {
                Format::Json => print_json(&serde_json::json!({
                    "name": name,
                    "token": token,
                    "released": true,
                })),
                Format::Table => println!("released lock \"{name}\" (token {token})"),
            }
        }
        LockCmd::Show { ep, name } => {
            match LockClient::new(consensus_client(&ep)?).get(&name) {
                Ok(l) => print_lease(&l, ep.format),
                // Asking about a lock never taken loses nobody's lease: a plain
                // refusal (1), not "lease lost" (3).
                Err(e) if e.is_refused(Refusal::NoSuchLock) => {
                    return Err(failed!("{e}; take it with `trex lock acquire {name}`"))
                }
                Err(e) => return Err(e.into()),
            }
        }
        LockCmd::Run {
            ep,
            name,
            ttl,
            holder,
            command,
        } => lock_run(&ep, &name, ttl, holder, &command)?,
    }
    Ok(())
}

fn default_holder() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    format!("{}:{}", host.trim(), std::process::id())
}

/// A lease as `trex lock acquire|renew|show` print it: for people,
/// `lock "jobs" holder "alice" token 7 expires 1764567890123
/// (2026-12-01T04:05:06.123Z, in 9.9s)` (`, released` at the end once
/// released); or its JSON (docs/cli.md).
fn print_lease(l: &Lease, format: Format) {
    if format == Format::Json {
        print_json(&LeaseJson::new(l));
        return;
    }
    let expires = when(l.expire_time_unsafe(), unix_ms());
    let released = if l.released { ", released" } else { "" };
    println!(
        "lock \"{}\" holder \"{}\" token {} expires {expires}{released}",
        l.name, l.holder, l.token
    );
}

/// `trex lock run`: never returns on success; the process exits with the
/// command's code, or 3 if the lease was lost while it ran.
fn lock_run(
    ep: &Endpoints,
    name: &str,
    ttl: Duration,
    holder: Option<String>,
    command: &[String],
) -> Result<(), CliError> {
    let holder = holder.unwrap_or_else(default_holder);
    let mut c = LockClient::new(consensus_client(ep)?);
    let lease = acquire_waiting(&mut c, name, &holder, ttl)?;
    eprintln!(
        "holding lock \"{name}\" with token {}; running {}",
        lease.token,
        command.join(" ")
    );
    let spawned = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("TREX_LOCK_NAME", name)
        .env("TREX_LOCK_TOKEN", lease.token.to_string())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // Nothing ran under the lock: give it back now rather than make
            // the next holder wait out the TTL. If that fails, it expires.
            let _ = c.release(name, lease.token);
            return Err(failed!("cannot run {}: {e}", command[0]));
        }
    };
    let (status, lost) = supervise(&mut c, &mut child, name, lease.token, ttl)?;
    if let Some(e) = lost {
        eprintln!(
            "error: lost lock \"{name}\" while the command ran ({e}); the command was sent SIGTERM"
        );
        std::process::exit(3);
    }
    if let Err(e) = c.release(name, lease.token) {
        eprintln!(
            "warning: could not release lock \"{name}\": {e}; it frees itself when the lease expires"
        );
    }
    std::process::exit(status.code().unwrap_or(1));
}

/// Acquires the lock, waiting (and saying so once) while someone else holds it.
fn acquire_waiting(
    c: &mut LockClient,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Lease, CliError> {
    let mut told = false;
    loop {
        match c.acquire(name, holder, ttl) {
            Ok(l) => return Ok(l),
            Err(e) if e.is_refused(Refusal::LockHeld) => {
                if !told {
                    eprintln!("waiting for {e}");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Renews the lease every third of `ttl` until the child exits. If a renewal
/// fails, the lease is gone: the child gets SIGTERM, and the failure is
/// returned beside the child's status.
fn supervise(
    c: &mut LockClient,
    child: &mut Child,
    name: &str,
    token: u64,
    ttl: Duration,
) -> Result<(ExitStatus, Option<ConsensusError>), CliError> {
    let mut lost = None;
    let mut renewed_at = Instant::now();
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok((st, lost));
        }
        std::thread::sleep((ttl / 3).min(Duration::from_millis(100)));
        if lost.is_none() && renewed_at.elapsed() >= ttl / 3 {
            match c.renew(name, token, ttl) {
                Ok(_) => renewed_at = Instant::now(),
                Err(e) => {
                    // The lease is gone: stop relying on it.
                    // SAFETY: signalling our own child process.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                    lost = Some(e);
                }
            }
        }
    }
}

/// A lease length: 1 ms to one day (what the lock service grants). A lease of
/// 0 would be expired when granted.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let max = Duration::from_millis(trex_consensus::sm::MAX_TTL_MS);
    if d < Duration::from_millis(1) || d > max {
        return Err(format!(
            "ttl {s} is out of range: a lease lasts from 1ms to 24h"
        ));
    }
    Ok(d)
}
