//! A test bed of real partitions: every node of a cluster runs in its own
//! network namespace with its own address, joined by veth pairs to one bridge,
//! and `nft` rules inside a node's namespace cut it off — fully, or in one
//! direction only.
//!
//! Layout of one bed (X is a number from 16 to 250 picked per bed, held with a
//! lock file so that two test processes never share it):
//!
//! - bridge `trexbrX` in the test's own namespace, address 10.X.0.254/24: the
//!   test process (the client) reaches every node through it;
//! - node N (1..=99): namespace `trexXnN`, veth `trexvXnN` (bridge end) /
//!   `trexpXnN` (namespace end) with address 10.X.0.N/24; it listens on port
//!   7400 + N, so its default node id is 7400 + N as under `trex up`.
//!
//! Everything is removed when the bed is dropped (also on a panic): the node
//! processes are killed, the namespaces (and with them the veths and any cut)
//! and the bridge deleted, the lock released. Needs root, `ip` and `nft`;
//! [`Bed::new`] says why not otherwise, and the caller skips.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Which packets a cut drops, seen from the node cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Everything in and out (the node is alone).
    Both,
    /// Everything to its listening port: nobody reaches it, while its own
    /// outgoing connections (to consensus nodes, to units) keep working.
    Inbound,
    /// Everything it sends except on its listening port: it reaches nobody,
    /// while others still reach it and get its answers.
    Outbound,
}

/// A node process running in its namespace; killed (and waited for) on drop.
pub struct NodeProc {
    pub n: u8,
    child: Child,
}

impl NodeProc {
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespaces, veths and bridge of one test.
pub struct Bed {
    x: u8,
    nodes: Vec<u8>,
    /// Where each node's standard error goes (`node-N.log`).
    logs: PathBuf,
    /// Held for the bed's life: the number X is ours.
    _lock: File,
}

/// Runs `ip ARGS`; its standard error on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `nft -f -` with `script` in namespace `ns`.
fn nft_in(ns: &str, script: &str) -> Result<(), String> {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .map_err(|e| format!("cannot talk to nft: {e}"))?;
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces that exist now.
fn namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any address or route of this namespace is in 10.X.0.0/24 (a
/// network someone else uses).
fn subnet_in_use(x: u8) -> bool {
    let prefix = format!("10.{x}.0.");
    ["addr", "route"].iter().any(|what| {
        Command::new("ip")
            .args(["-4", "-o", what, "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&prefix))
            .unwrap_or(true)
    })
}

impl Bed {
    /// A bed for nodes `nodes` (each 1..=99), logs in `logs`; or why this
    /// machine cannot have one.
    pub fn new(nodes: &[u8], logs: &Path) -> Result<Bed, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces and nft need root".into());
        }
        for tool in ["ip", "nft"] {
            let ok = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "`{tool}` is not installed (Debian: apt-get install -y iproute2 nftables)"
                ));
            }
        }
        assert!(nodes.iter().all(|n| (1..=99).contains(n)), "nodes 1..=99");
        sweep_orphans();
        let (x, lock) = Bed::claim()?;
        let bed = Bed {
            x,
            nodes: nodes.to_vec(),
            logs: logs.to_path_buf(),
            _lock: lock,
        };
        bed.build()?;
        Ok(bed)
    }

    /// A number X nobody else uses: its lock file taken, and no address or
    /// route in 10.X.0.0/24.
    fn claim() -> Result<(u8, File), String> {
        let start = std::process::id() as usize;
        for k in 0..235 {
            let x = (16 + (start + k * 17) % 235) as u8;
            let Some(f) = try_lock(x) else { continue };
            // Ours now: whatever is left of an earlier bed with this X (a test
            // process killed outright) is ours to remove first.
            remove_stale(x);
            if subnet_in_use(x) {
                continue;
            }
            return Ok((x, f));
        }
        Err("no free 10.X.0.0/24 network for a test bed".into())
    }

    pub fn ns(&self, n: u8) -> String {
        format!("trex{}n{n}", self.x)
    }

    /// Node `n`'s address, 10.X.0.N.
    pub fn ip(&self, n: u8) -> String {
        format!("10.{}.0.{n}", self.x)
    }

    /// Node `n`'s listening port.
    pub fn port(n: u8) -> u16 {
        7400 + u16::from(n)
    }

    /// Node `n`'s listening address, `10.X.0.N:PORT`.
    pub fn addr(&self, n: u8) -> String {
        format!("{}:{}", self.ip(n), Bed::port(n))
    }

    /// The node listening at `addr` (as registered), if it is one of ours.
    pub fn node_at(&self, addr: &str) -> Option<u8> {
        self.nodes.iter().copied().find(|n| self.addr(*n) == addr)
    }

    fn bridge(&self) -> String {
        format!("trexbr{}", self.x)
    }

    fn build(&self) -> Result<(), String> {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        // Bridged packets skip the host's own firewall (br_netfilter would
        // send them through it); older kernels lack the option: no matter.
        let _ = ip(&[
            "link",
            "set",
            &br,
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
        ]);
        ip(&[
            "addr",
            "add",
            &format!("10.{}.0.254/24", self.x),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])?;
        for &n in &self.nodes {
            let ns = self.ns(n);
            let (outer, inner) = (
                format!("trexv{}n{n}", self.x),
                format!("trexp{}n{n}", self.x),
            );
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &br])?;
            ip(&["link", "set", &outer, "up"])?;
            let cidr = format!("{}/24", self.ip(n));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // nft must work in a namespace, or no cut can be made.
        if let Some(&n) = self.nodes.first() {
            let ns = self.ns(n);
            nft_in(
                &ns,
                "add table inet trexprobe\ndelete table inet trexprobe\n",
            )?;
        }
        Ok(())
    }

    /// Starts `trex ARGS` in node `n`'s namespace, its standard error in
    /// `node-N.log`.
    pub fn spawn(&self, n: u8, args: &[String]) -> NodeProc {
        let log = File::create(self.logs.join(format!("node-{n}.log"))).expect("a node log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(n), env!("CARGO_BIN_EXE_trex")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. `ip netns exec` execs the node
        // in place, so the node dies with the test thread that started it,
        // even if the test process is killed outright.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        NodeProc {
            n,
            child: cmd.spawn().expect("spawn ip netns exec trex"),
        }
    }

    /// The last `lines` lines of node `n`'s log.
    pub fn log_tail(&self, n: u8, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.logs.join(format!("node-{n}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Cuts node `n` off in direction `dir` until the cut is healed or dropped.
    pub fn cut(&self, n: u8, dir: Dir) -> Cut {
        let port = Bed::port(n);
        let rules = match dir {
            Dir::Both => "add rule inet trexcut input iifname != \"lo\" drop\n\
                          add rule inet trexcut output oifname != \"lo\" drop\n"
                .to_string(),
            Dir::Inbound => {
                format!("add rule inet trexcut input iifname != \"lo\" tcp dport {port} drop\n")
            }
            Dir::Outbound => {
                format!("add rule inet trexcut output oifname != \"lo\" tcp sport != {port} drop\n")
            }
        };
        let script = format!(
            "add table inet trexcut\n\
             add chain inet trexcut input {{ type filter hook input priority 0; }}\n\
             add chain inet trexcut output {{ type filter hook output priority 0; }}\n\
             {rules}"
        );
        let ns = self.ns(n);
        nft_in(&ns, &script).expect("nft worked when the bed was built");
        Cut { ns }
    }
}

/// Lock file of bed number X.
fn lock_path(x: u8) -> String {
    format!("/tmp/trex-netns-{x}.lock")
}

/// Takes the lock of bed number X if nobody holds it.
fn try_lock(x: u8) -> Option<File> {
    let f = File::create(lock_path(x)).ok()?;
    // SAFETY: flock on a descriptor we own.
    (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(f)
}

/// Removes the beds of test processes killed outright (SIGKILL: no Drop ran;
/// their nodes died with them): namespaces and bridges named like a bed's
/// whose lock nobody holds.
fn sweep_orphans() {
    let mut xs: Vec<u8> = namespaces()
        .iter()
        .filter_map(|ns| ns.strip_prefix("trex")?.split_once('n')?.0.parse().ok())
        .collect();
    if let Ok(o) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        xs.extend(
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|w| {
                    w.strip_prefix("trexbr")?
                        .trim_end_matches(':')
                        .parse::<u8>()
                        .ok()
                }),
        );
    }
    xs.sort_unstable();
    xs.dedup();
    for x in xs {
        if let Some(_lock) = try_lock(x) {
            remove_stale(x);
        }
    }
}

/// Removes the namespaces and bridge of bed X (and every process in them).
fn remove_stale(x: u8) {
    let prefix = format!("trex{x}n");
    for ns in namespaces() {
        let Some(rest) = ns.strip_prefix(&prefix) else {
            continue;
        };
        if rest.parse::<u8>().is_err() {
            continue;
        }
        kill_all_in(&ns);
        let _ = ip(&["netns", "del", &ns]);
    }
    let _ = Command::new("ip")
        .args(["link", "del", &format!("trexbr{x}")])
        .stderr(Stdio::null())
        .status();
}

/// Kills every process in namespace `ns` (only ever one of ours).
fn kill_all_in(ns: &str) {
    let out = Command::new("ip").args(["netns", "pids", ns]).output();
    for pid in out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: signalling a process of our own namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for &n in &self.nodes {
            let ns = self.ns(n);
            kill_all_in(&ns);
            let _ = ip(&["netns", "del", &ns]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// An `nft` table in a node's namespace; healed (deleted) on drop.
pub struct Cut {
    ns: String,
}

impl Cut {
    /// Lets every packet through again.
    pub fn heal(self) {}
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = nft_in(&self.ns, "delete table inet trexcut\n");
    }
}

use std::time::{Duration, Instant};
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::sm::{Op, Projection, Role};
use trex_net::unit_client::UnitApi;

/// Consensus nodes are nodes 1..=3 of a cluster's bed.
pub const CONSENSUS: [u8; 3] = [1, 2, 3];
/// Sequencers are nodes 11 and 12.
pub const SEQUENCERS: [u8; 2] = [11, 12];
/// Storage units are nodes 21 and up.
pub const FIRST_UNIT: u8 = 21;

/// Waits until `ok`, polling every 50 ms; panics saying `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cluster as `trex up` starts it (same flags, same order), each node in
/// its own namespace of a bed: 3 consensus nodes, 2 sequencers, `units`
/// storage units, a first layout of `stripes` x `replicas`.
pub struct NetCluster {
    /// Dropped before the bed: killed, then their namespaces removed.
    procs: Vec<NodeProc>,
    pub bed: Bed,
    /// The consensus endpoints, comma-separated.
    pub eps: String,
}

impl NetCluster {
    /// Starts the cluster under `dir` (data and logs), or says why this
    /// machine cannot have a bed. Panics if it does not come up within 30 s.
    pub fn start(dir: &Path, units: u8, stripes: u32, replicas: u32) -> Result<NetCluster, String> {
        let unit_nodes: Vec<u8> = (0..units).map(|i| FIRST_UNIT + i).collect();
        let all: Vec<u8> = CONSENSUS
            .iter()
            .chain(&SEQUENCERS)
            .chain(&unit_nodes)
            .copied()
            .collect();
        let bed = Bed::new(&all, dir)?;
        let eps = CONSENSUS
            .iter()
            .map(|n| bed.addr(*n))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = NetCluster {
            procs: Vec::new(),
            bed,
            eps,
        };
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<String>>();
        let data = |name: String| dir.join(name).display().to_string();
        for (i, &n) in CONSENSUS.iter().enumerate() {
            let id = (i + 1).to_string();
            let (addr, d) = (c.bed.addr(n), data(format!("consensus-{id}")));
            let args = s(&["node", "consensus", "--id", &id, "--listen", &addr]);
            let args = [args, s(&["--peers", &c.eps, "--data-dir", &d])].concat();
            c.procs.push(c.bed.spawn(n, &args));
        }
        wait_until("a consensus leader", Duration::from_secs(30), || {
            c.leader().is_some()
        });
        for &n in &unit_nodes {
            let (addr, d) = (c.bed.addr(n), data(format!("unit-{n}")));
            let args = s(&["node", "storage", "--listen", &addr, "--data-dir", &d]);
            // Its id is its port, as `trex up` gives (node_of relies on it).
            let id = (7400 + u64::from(n)).to_string();
            let args = [
                args,
                s(&["--endpoints", &c.eps, "--sync", "always", "--id", &id]),
            ]
            .concat();
            c.procs.push(c.bed.spawn(n, &args));
        }
        let mut cc = c.client();
        wait_until("units registered", Duration::from_secs(30), || {
            cc.members().is_ok_and(|m| {
                m.values().filter(|m| m.role == Role::Storage).count() >= usize::from(units)
            })
        });
        wait_until("units answering", Duration::from_secs(30), || {
            unit_nodes.iter().all(|n| {
                trex_net::unit_client::UnitClient::connect(
                    &c.bed.addr(*n),
                    Duration::from_millis(300),
                )
                .and_then(|mut u| u.info())
                .is_ok()
            })
        });
        cc.submit_ok(&Op::InitLayout { stripes, replicas })
            .expect("install the first layout");
        let epoch0 = c.layout().epoch;
        for &n in &SEQUENCERS {
            let addr = c.bed.addr(n);
            let args = s(&[
                "node",
                "sequencer",
                "--listen",
                &addr,
                "--endpoints",
                &c.eps,
            ]);
            let reps = replicas.to_string();
            let args = [args, s(&["--repair-every", "2000ms", "--replicas", &reps])].concat();
            c.procs.push(c.bed.spawn(n, &args));
        }
        wait_until("a sequencer taking over", Duration::from_secs(30), || {
            cc.layout()
                .is_ok_and(|(_, p)| p.is_some_and(|p| p.sequencer != 0 && p.epoch > epoch0))
        });
        Ok(c)
    }

    /// A client of the consensus group (2 s per call).
    pub fn client(&self) -> ConsensusClient {
        ConsensusClient::new(&self.eps, Duration::from_secs(2)).unwrap()
    }

    /// The current layout (retried for up to 10 s).
    pub fn layout(&self) -> Projection {
        let t0 = Instant::now();
        loop {
            match self.client().layout() {
                Ok((_, Some(p))) => return p,
                r => assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no layout within 10 s: {r:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node whose id (its port, given with `--id`) is `id`.
    pub fn node_of(id: u64) -> u8 {
        u8::try_from(id - 7400).expect("an id of this bed")
    }

    /// The consensus node that leads, if exactly one says so.
    pub fn leader(&self) -> Option<u8> {
        let leaders: Vec<u8> = CONSENSUS
            .iter()
            .copied()
            .filter(|n| {
                ConsensusClient::node_status(&self.bed.addr(*n), Duration::from_millis(500))
                    .is_ok_and(|s| s.leading)
            })
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Nodes whose process has exited.
    pub fn exited(&mut self) -> Vec<u8> {
        self.procs
            .iter_mut()
            .filter_map(|p| (!p.alive()).then_some(p.n))
            .collect()
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!(
                    "--- node {} (last lines of its log) ---\n{}",
                    p.n,
                    self.bed.log_tail(p.n, 15)
                );
            }
        }
    }
}
