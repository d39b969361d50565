//! `trex up`: a whole local cluster with one command. Every node is its own
//! process running the same `trex node …` code a bare-metal deployment runs.

use super::certs::{self, Kind};
use super::node::SyncMode;
use crate::error::{failed, usage, CliError};
use crate::tls::TlsArgs;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::sm::{Op, Role};
use trex_net::tls::TlsFiles;
use trex_net::unit_client::UnitApi;
use trex_net::util::{parse_duration, parse_size};

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
    /// Size of each storage unit's segment files (`trex node storage
    /// --segment-size`; 64KiB to 2GiB). Used when a unit's directory is new.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    segment_size: u64,
    /// How often the active sequencer probes the storage units (`trex node
    /// sequencer --repair-every`): units that stop answering are taken out and
    /// replaced by spares (start some with --units above stripes x replicas).
    /// `0s` turns the failure detector off.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    repair_every: Duration,
    /// Serve metrics on every node (`trex node … --metrics-listen`): the k-th
    /// node started (consensus nodes, then units, then sequencers; from 0) on
    /// 127.0.0.1 and this port + k. Printed, and written to DATA_DIR/metrics.
    #[arg(long)]
    metrics_base_port: Option<u16>,
}

struct Node {
    name: String,
    child: Child,
}

fn spawn(exe: &Path, name: &str, logs: &Path, args: &[String]) -> Result<Node, CliError> {
    // Appended to: the logs of an earlier run of the cluster are kept.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))
        .map_err(|e| format!("cannot open the log of {name}: {e}"))?;
    let child = Command::new(exe)
        .args(args)
        // A local cluster runs as cluster 0, as its own clients here do.
        .env_remove("TREX_CLUSTER_ID")
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
                "{what} did not happen within {}; see the logs",
                trex_net::util::duration_text(within)
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
pub fn run(o: UpArgs, tls: &TlsArgs) -> Result<(), CliError> {
    check(&o)?;

    let set =
        trex_net::block_shutdown_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the trex binary: {e}"))?;
    let logs = o.data_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    // One `trex up` per data directory, and every port free: both known at
    // once, before a node starts (a second `trex up` on a running cluster's
    // directory would otherwise start a second group on its journals).
    let _lock = trex_net::util::lock_data_dir(&o.data_dir)
        .map_err(|e| failed!("{e} (is a `trex up` already running on it?)"))?;
    ports_free(&o)?;
    let tls_dir = if tls.insecure {
        eprintln!("WARNING: --insecure: the cluster runs WITHOUT TLS; anyone who can reach its ports can append, seal, trim and install layouts. For loopback benchmarks only.");
        None
    } else {
        Some(certificates(&o, tls)?)
    };
    let mut cluster = Cluster {
        o: &o,
        exe,
        logs,
        set,
        consensus: (0..o.consensus)
            .map(|i| format!("127.0.0.1:{}", o.base_port + i))
            .collect(),
        nodes: Vec::new(),
        metrics: Vec::new(),
        tls_dir: tls_dir.clone(),
    };
    if let Err(e) = cluster.start() {
        stop_all(&mut cluster.nodes);
        return Err(failed!("{e} (logs in {})", cluster.logs.display()));
    }
    let eps = cluster.endpoints();
    let ep_file = o.data_dir.join("endpoints");
    if let Err(e) = std::fs::write(&ep_file, format!("{eps}\n")) {
        stop_all(&mut cluster.nodes);
        return Err(failed!(
            "cannot write {}: {e}; the cluster was stopped",
            ep_file.display()
        ));
    }
    if !cluster.metrics.is_empty() {
        let list: String = cluster
            .metrics
            .iter()
            .map(|(name, addr)| format!("{name} {addr}\n"))
            .collect();
        let file = o.data_dir.join("metrics");
        if let Err(e) = std::fs::write(&file, &list) {
            stop_all(&mut cluster.nodes);
            return Err(failed!(
                "cannot write {}: {e}; the cluster was stopped",
                file.display()
            ));
        }
        for (name, addr) in &cluster.metrics {
            say!("metrics of {name}: http://{addr}/metrics");
        }
    }
    say!(
        "trex cluster is up; consensus endpoints: {eps} (also in {})",
        ep_file.display()
    );
    match &tls_dir {
        Some(d) => say!(
            "mutual TLS on every connection; certificates in {} (other clients: --tls-dir {} or TREX_TLS_DIR; --tls-name admin or client)",
            d.display(),
            d.display()
        ),
        None => say!("WARNING: no TLS (--insecure)"),
    }
    say!("try, in another terminal:  echo hello | trex append -  &&  trex tail --follow");
    say!("logs in {}; stop with Ctrl-C", cluster.logs.display());
    let sig = cluster.watch();
    eprintln!(
        "received signal {sig}; stopping {} nodes",
        cluster.nodes.len()
    );
    stop_all(&mut cluster.nodes);
    eprintln!(
        "stopped; data kept in {} (run `trex up` again to reuse it)",
        o.data_dir.display()
    );
    Ok(())
}

/// Writes the certificates the cluster lacks (a CA, one per node, `admin`
/// and `client`) into --tls-dir or DATA_DIR/tls, and makes this process's own
/// connections use the admin one; returns the directory.
fn certificates(o: &UpArgs, tls: &TlsArgs) -> Result<PathBuf, CliError> {
    let dir = tls
        .tls_dir
        .clone()
        .unwrap_or_else(|| o.data_dir.join("tls"));
    let mut want = vec![
        (Kind::Admin, "admin".to_string()),
        (Kind::Client, "client".to_string()),
    ];
    for (kind, n) in [
        ("consensus", o.consensus),
        ("unit", o.units),
        ("sequencer", o.sequencers),
    ] {
        want.extend((1..=n).map(|i| (Kind::Node, format!("{kind}-{i}"))));
    }
    let written = certs::ensure(&dir, &want, &[])?;
    if !written.is_empty() {
        eprintln!(
            "wrote {} certificate files in {}",
            written.len(),
            dir.display()
        );
    }
    let name = tls.tls_name.clone().unwrap_or_else(|| "admin".into());
    crate::tls::install(&TlsFiles::in_dir(&dir, &name), tls.roles()?)?;
    Ok(dir)
}

/// Every port the cluster will listen on is free now; the error names the
/// first taken one.
fn ports_free(o: &UpArgs) -> Result<(), CliError> {
    let offsets = (0..o.consensus)
        .chain((0..o.sequencers).map(|i| 10 + i))
        .chain((0..o.units).map(|i| 20 + i));
    for off in offsets {
        let port = o.base_port + off;
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Err(failed!(
                "port {port} is not free ({e}); another process (an earlier `trex up`?) uses it: stop it, or choose another --base-port"
            ));
        }
    }
    Ok(())
}

/// Usage errors, found before anything is created or started.
fn check(o: &UpArgs) -> Result<(), CliError> {
    if o.consensus == 0
        || o.consensus > 9
        || o.sequencers == 0
        || o.sequencers > 9
        || o.units > 80
        || o.base_port > 65_535 - 100
    {
        return Err(usage!(
            "--consensus 1..9, --sequencers 1..9, --units up to 80 and --base-port up to 65435 (it uses the 100 ports from there); got {}, {}, {}, {}",
            o.consensus, o.sequencers, o.units, o.base_port
        ));
    }
    if let Some(p) = o.metrics_base_port {
        let (first, n) = (
            u32::from(p),
            u32::from(o.consensus + o.sequencers + o.units),
        );
        let base = u32::from(o.base_port);
        if first == 0 || first + n > 65_536 || (first < base + 100 && base < first + n) {
            return Err(usage!(
                "--metrics-base-port {p}: the {n} ports from there must be above 0, at most 65535 and clear of the 100 ports from --base-port {}",
                o.base_port
            ));
        }
    }
    if o.stripes == 0 || o.replicas == 0 {
        return Err(usage!(
            "--stripes and --replicas must be at least 1; got {} and {}",
            o.stripes,
            o.replicas
        ));
    }
    use trex_unit::storage::mmap::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&o.segment_size) {
        return Err(usage!(
            "--segment-size {} is out of range: choose between 64KiB and 2GiB",
            o.segment_size
        ));
    }
    Ok(())
}

/// What `trex up` started, and what it needs to start more.
struct Cluster<'a> {
    o: &'a UpArgs,
    /// This `trex` binary: every node runs it.
    exe: PathBuf,
    /// One log file per node.
    logs: PathBuf,
    /// SIGINT and SIGTERM, blocked: taken with sigtimedwait while starting
    /// (to stop what was started) and while running (to stop everything).
    set: libc::sigset_t,
    /// The consensus nodes' addresses, in id order.
    consensus: Vec<String>,
    nodes: Vec<Node>,
    /// With --metrics-base-port: each node's name and metrics address.
    metrics: Vec<(String, String)>,
    /// The certificates' directory (`None`: --insecure).
    tls_dir: Option<PathBuf>,
}

impl Cluster<'_> {
    /// 127.0.0.1 and the port `off` above --base-port.
    fn port(&self, off: u16) -> String {
        format!("127.0.0.1:{}", self.o.base_port + off)
    }

    /// The consensus nodes, comma-separated (what `--endpoints` takes).
    fn endpoints(&self) -> String {
        self.consensus.join(",")
    }

    fn spawn(&mut self, name: &str, args: &[String]) -> Result<(), CliError> {
        let mut args = args.to_vec();
        match &self.tls_dir {
            Some(d) => args.extend([
                "--tls-dir".into(),
                d.display().to_string(),
                "--tls-name".into(),
                name.to_string(),
            ]),
            None => args.push("--insecure".into()),
        }
        if let Some(p) = self.o.metrics_base_port {
            let addr = format!("127.0.0.1:{}", p + self.metrics.len() as u16);
            args.extend(["--metrics-listen".into(), addr.clone()]);
            self.metrics.push((name.to_string(), addr));
        }
        let node = spawn(&self.exe, name, &self.logs, &args)?;
        self.nodes.push(node);
        Ok(())
    }

    /// Starts every node in dependency order, each kind once the previous one
    /// serves, and installs the first layout if there is none.
    fn start(&mut self) -> Result<(), CliError> {
        self.start_consensus()?;
        let mut c = self.start_units()?;
        let epoch0 = self.install_layout(&mut c)?;
        self.start_sequencers(&mut c, epoch0)
    }

    fn start_consensus(&mut self) -> Result<(), CliError> {
        let eps = self.endpoints();
        for (i, addr) in self.consensus.clone().into_iter().enumerate() {
            let dir = self.o.data_dir.join(format!("consensus-{}", i + 1));
            let args = vec![
                "node".into(),
                "consensus".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--listen".into(),
                addr,
                "--peers".into(),
                eps.clone(),
                "--data-dir".into(),
                dir.display().to_string(),
            ];
            self.spawn(&format!("consensus-{}", i + 1), &args)?;
        }
        eprintln!("started {} consensus nodes on {eps}", self.o.consensus);
        wait_for(
            "a consensus leader",
            Duration::from_secs(30),
            &self.set,
            || {
                self.consensus.iter().any(|a| {
                    ConsensusClient::node_status(a, Duration::from_millis(300))
                        .is_ok_and(|s| s.leading)
                })
            },
        )
    }

    /// Starts the storage units; returns a client of the consensus group once
    /// every unit is registered and answers.
    fn start_units(&mut self) -> Result<ConsensusClient, CliError> {
        let o = self.o;
        let eps = self.endpoints();
        let sync = if o.sync == SyncMode::Never {
            "never"
        } else {
            "always"
        };
        for i in 0..o.units {
            let dir = o.data_dir.join(format!("unit-{}", i + 1));
            let args = vec![
                "node".into(),
                "storage".into(),
                "--listen".into(),
                self.port(20 + i),
                "--data-dir".into(),
                dir.display().to_string(),
                "--endpoints".into(),
                eps.clone(),
                "--sync".into(),
                sync.into(),
                "--segment-size".into(),
                o.segment_size.to_string(),
                // A local cluster's unit ids are its ports (easy to read in
                // `trex status`); explicit, so stored in each data directory.
                "--id".into(),
                (o.base_port + 20 + i).to_string(),
            ];
            self.spawn(&format!("unit-{}", i + 1), &args)?;
        }
        let mut c = ConsensusClient::new(&eps, Duration::from_secs(2))?;
        wait_for(
            "storage unit registration",
            Duration::from_secs(30),
            &self.set,
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
            &self.set,
            || {
                (0..o.units).all(|i| {
                    trex_net::unit_client::UnitClient::connect(
                        &self.port(20 + i),
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
            self.port(20),
            self.port(20 + o.units.saturating_sub(1))
        );
        Ok(c)
    }

    /// Installs the first layout unless one is (a data directory used
    /// before); returns the current layout's epoch.
    fn install_layout(&self, c: &mut ConsensusClient) -> Result<u64, CliError> {
        if c.layout()?.1.is_none() {
            c.submit_ok(&Op::InitLayout {
                stripes: self.o.stripes,
                replicas: self.o.replicas,
            })?;
            eprintln!(
                "installed the first layout: {} stripes x {} replicas",
                self.o.stripes, self.o.replicas
            );
        }
        Ok(c.layout()?.1.map_or(0, |p| p.epoch))
    }

    /// Starts the sequencers and waits until one of them took over from
    /// layout epoch `epoch0`.
    fn start_sequencers(&mut self, c: &mut ConsensusClient, epoch0: u64) -> Result<(), CliError> {
        let o = self.o;
        for i in 0..o.sequencers {
            let mut args = vec![
                "node".into(),
                "sequencer".into(),
                "--listen".into(),
                self.port(10 + i),
                "--endpoints".into(),
                self.endpoints(),
            ];
            args.push("--repair-every".into());
            args.push(format!("{}ms", o.repair_every.as_millis()));
            if !o.repair_every.is_zero() {
                args.push("--replicas".into());
                args.push(o.replicas.to_string());
            }
            self.spawn(&format!("sequencer-{}", i + 1), &args)?;
        }
        // Ready once a sequencer of this run has taken over (a newer layout naming
        // it); asking for a token here would burn an address into a hole.
        wait_for(
            "a sequencer taking over",
            Duration::from_secs(30),
            &self.set,
            || {
                c.layout()
                    .is_ok_and(|(_, p)| p.is_some_and(|p| p.sequencer != 0 && p.epoch > epoch0))
            },
        )?;
        eprintln!(
            "started {} sequencers on {}..{}",
            o.sequencers,
            self.port(10),
            self.port(10 + o.sequencers.saturating_sub(1))
        );
        Ok(())
    }

    /// Waits for SIGINT/SIGTERM (blocked, so sigtimedwait takes it), warning
    /// about nodes that exit meanwhile; returns the signal.
    fn watch(&mut self) -> i32 {
        loop {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 500_000_000,
            };
            // SAFETY: set is a valid sigset; sigtimedwait with a null info pointer.
            let r = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
            if r == libc::SIGHUP {
                // Every node reloads its certificates (renewed in the TLS directory).
                for n in &self.nodes {
                    // SAFETY: signalling our own, still-running child.
                    unsafe { libc::kill(n.child.id() as i32, libc::SIGHUP) };
                }
                eprintln!("received SIGHUP; asked every node to reload its certificates");
                continue;
            }
            if r > 0 {
                return r;
            }
            for n in self.nodes.iter_mut() {
                if let Ok(Some(st)) = n.child.try_wait() {
                    eprintln!(
                        "warning: {} exited ({st}); see {}",
                        n.name,
                        self.logs.join(format!("{}.log", n.name)).display()
                    );
                }
            }
            self.nodes
                .retain_mut(|n| n.child.try_wait().ok().flatten().is_none());
        }
    }
}
