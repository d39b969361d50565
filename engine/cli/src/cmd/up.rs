//! `trex up`: a whole local cluster with one command. Every node is its own
//! process running the same `trex node …` code a bare-metal deployment runs.

use super::node::SyncMode;
use crate::error::{failed, CliError};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::sm::{Op, Role};
use trex_net::unit_client::UnitApi;
use trex_net::util::parse_duration;

/// Prints a line to standard output, ignoring a closed pipe (the caller may
/// stop reading once the cluster is up).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// What to start.
#[derive(Args)]
pub struct UpArgs {
    /// Data directory of every node (reused when run again).
    #[arg(long, default_value = "./trex-data")]
    data_dir: PathBuf,
    /// Consensus nodes listen from this port, sequencers from +10, units from +20.
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Consensus nodes.
    #[arg(long, default_value_t = 3)]
    consensus: u16,
    /// Sequencers.
    #[arg(long, default_value_t = 2)]
    sequencers: u16,
    /// Storage units.
    #[arg(long, default_value_t = 4)]
    units: u16,
    /// Stripes of the first layout.
    #[arg(long, default_value_t = 2)]
    stripes: u32,
    /// Replicas per stripe.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// Storage units' sync mode (`never` for benchmarks only).
    #[arg(long, value_enum, default_value = "always")]
    sync: SyncMode,
    /// Let the active sequencer repair this often (`trex node sequencer
    /// --repair-every`): units that stop answering are replaced by spares
    /// (start some with --units above stripes x replicas).
    #[arg(long, value_parser = parse_duration)]
    repair_every: Option<Duration>,
}

struct Node {
    name: String,
    child: Child,
}

fn spawn(exe: &Path, name: &str, logs: &Path, args: &[String]) -> Result<Node, CliError> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))
        .map_err(|e| format!("cannot create the log of {name}: {e}"))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    Ok(Node {
        name: name.to_string(),
        child,
    })
}

/// A shutdown signal taken while starting up, if one is pending (they are
/// blocked, so they wait for us).
fn interrupted(set: &libc::sigset_t) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: set is a valid sigset; sigtimedwait with a null info pointer.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

fn wait_for(
    what: &str,
    within: Duration,
    set: &libc::sigset_t,
    mut ok: impl FnMut() -> bool,
) -> Result<(), CliError> {
    let t0 = Instant::now();
    while !ok() {
        if let Some(sig) = interrupted(set) {
            return Err(failed!(
                "interrupted by signal {sig} while waiting for {what}; stopping what was started"
            ));
        }
        if t0.elapsed() > within {
            return Err(failed!(
                "{what} did not happen within {within:?}; see the logs"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter() {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(n.child.id() as i32, libc::SIGTERM) };
    }
    let t0 = Instant::now();
    for n in nodes.iter_mut() {
        while n.child.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if n.child.try_wait().ok().flatten().is_none() {
            let _ = n.child.kill();
        }
        let _ = n.child.wait();
    }
}

/// Starts the cluster, waits until it serves, and runs until SIGINT/SIGTERM.
pub fn run(o: UpArgs) -> Result<(), CliError> {
    let set =
        trex_net::block_shutdown_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the trex binary: {e}"))?;
    let logs = o.data_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    if o.consensus == 0
        || o.consensus > 9
        || o.sequencers == 0
        || o.sequencers > 9
        || o.units > 80
        || o.base_port > 65_535 - 100
    {
        return Err(failed!(
            "--consensus 1..9, --sequencers 1..9, --units up to 80 and --base-port up to 65435 (it uses the 100 ports from there); got {}, {}, {}, {}",
            o.consensus, o.sequencers, o.units, o.base_port
        ));
    }
    let port = |off: u16| format!("127.0.0.1:{}", o.base_port + off);
    let consensus: Vec<String> = (0..o.consensus).map(port).collect();
    let eps = consensus.join(",");
    let sync = if o.sync == SyncMode::Never {
        "never"
    } else {
        "always"
    };
    let mut nodes: Vec<Node> = Vec::new();
    let started = (|| -> Result<(), CliError> {
        for (i, addr) in consensus.iter().enumerate() {
            let dir = o.data_dir.join(format!("consensus-{}", i + 1));
            let args = vec![
                "node".into(),
                "consensus".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--listen".into(),
                addr.clone(),
                "--peers".into(),
                eps.clone(),
                "--data-dir".into(),
                dir.display().to_string(),
            ];
            nodes.push(spawn(&exe, &format!("consensus-{}", i + 1), &logs, &args)?);
        }
        eprintln!("started {} consensus nodes on {eps}", o.consensus);
        wait_for("a consensus leader", Duration::from_secs(30), &set, || {
            consensus.iter().any(|a| {
                ConsensusClient::node_status(a, Duration::from_millis(300)).is_ok_and(|s| s.leading)
            })
        })?;
        for i in 0..o.units {
            let addr = port(20 + i);
            let dir = o.data_dir.join(format!("unit-{}", i + 1));
            let args = vec![
                "node".into(),
                "storage".into(),
                "--listen".into(),
                addr,
                "--data-dir".into(),
                dir.display().to_string(),
                "--endpoints".into(),
                eps.clone(),
                "--sync".into(),
                sync.into(),
            ];
            nodes.push(spawn(&exe, &format!("unit-{}", i + 1), &logs, &args)?);
        }
        let mut c = ConsensusClient::new(&eps, Duration::from_secs(2))?;
        wait_for(
            "storage unit registration",
            Duration::from_secs(30),
            &set,
            || {
                c.members().is_ok_and(|m| {
                    m.values().filter(|m| m.role == Role::Storage).count() >= o.units as usize
                })
            },
        )?;
        // Registrations survive restarts: also wait until every unit answers.
        wait_for(
            "storage units answering",
            Duration::from_secs(30),
            &set,
            || {
                (0..o.units).all(|i| {
                    trex_net::unit_client::UnitClient::connect(
                        &port(20 + i),
                        Duration::from_millis(300),
                    )
                    .and_then(|mut u| u.info())
                    .is_ok()
                })
            },
        )?;
        eprintln!(
            "started {} storage units on {}..{}",
            o.units,
            port(20),
            port(20 + o.units.saturating_sub(1))
        );
        if c.layout()?.1.is_none() {
            c.submit_ok(&Op::InitLayout {
                stripes: o.stripes,
                replicas: o.replicas,
            })?;
            eprintln!(
                "installed the first layout: {} stripes x {} replicas",
                o.stripes, o.replicas
            );
        }
        let epoch0 = c.layout()?.1.map_or(0, |p| p.epoch);
        for i in 0..o.sequencers {
            let mut args = vec![
                "node".into(),
                "sequencer".into(),
                "--listen".into(),
                port(10 + i),
                "--endpoints".into(),
                eps.clone(),
            ];
            if let Some(d) = o.repair_every {
                args.push("--repair-every".into());
                args.push(format!("{}ms", d.as_millis().max(1)));
                args.push("--replicas".into());
                args.push(o.replicas.to_string());
            }
            nodes.push(spawn(&exe, &format!("sequencer-{}", i + 1), &logs, &args)?);
        }
        // Ready once a sequencer of this run has taken over (a newer layout naming
        // it); asking for a token here would burn an address into a hole.
        wait_for(
            "a sequencer taking over",
            Duration::from_secs(30),
            &set,
            || {
                c.layout()
                    .is_ok_and(|(_, p)| p.is_some_and(|p| p.sequencer != 0 && p.epoch > epoch0))
            },
        )?;
        eprintln!(
            "started {} sequencers on {}..{}",
            o.sequencers,
            port(10),
            port(10 + o.sequencers.saturating_sub(1))
        );
        Ok(())
    })();
    if let Err(e) = started {
        stop_all(&mut nodes);
        return Err(failed!("{e} (logs in {})", logs.display()));
    }
    let ep_file = o.data_dir.join("endpoints");
    if let Err(e) = std::fs::write(&ep_file, format!("{eps}\n")) {
        stop_all(&mut nodes);
        return Err(failed!(
            "cannot write {}: {e}; the cluster was stopped",
            ep_file.display()
        ));
    }
    say!(
        "trex cluster is up; consensus endpoints: {eps} (also in {})",
        ep_file.display()
    );
    say!("try, in another terminal:  echo hello | trex append -  &&  trex tail --follow");
    say!("logs in {}; stop with Ctrl-C", logs.display());
    // Wait for SIGINT/SIGTERM (blocked above, so sigwait takes it), watching children.
    let sig = loop {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 500_000_000,
        };
        // SAFETY: set is a valid sigset; sigtimedwait with a null info pointer.
        let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        if r > 0 {
            break r;
        }
        for n in nodes.iter_mut() {
            if let Ok(Some(st)) = n.child.try_wait() {
                eprintln!(
                    "warning: {} exited ({st}); see {}",
                    n.name,
                    logs.join(format!("{}.log", n.name)).display()
                );
            }
        }
        nodes.retain_mut(|n| n.child.try_wait().ok().flatten().is_none());
    };
    eprintln!("received signal {sig}; stopping {} nodes", nodes.len());
    stop_all(&mut nodes);
    eprintln!(
        "stopped; data kept in {} (run `trex up` again to reuse it)",
        o.data_dir.display()
    );
    Ok(())
}
