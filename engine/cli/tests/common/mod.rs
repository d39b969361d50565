//! Helpers shared by the integration tests that run real `trex` processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `trex node storage` child process.
pub struct UnitProcess {
    pub child: Child,
    pub addr: String,
    pub log: std::sync::mpsc::Receiver<String>,
    early: Vec<String>,
}

impl UnitProcess {
    /// Starts a unit on an ephemeral port and waits until it listens.
    pub fn start(dir: &Path, extra: &[&str]) -> UnitProcess {
        UnitProcess::start_with_env(dir, extra, &[])
    }

    /// Like `start`, with extra environment variables for the child.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> UnitProcess {
        // A fixed free port, not 0: a unit registers the address it is given
        // (and refuses port 0 with --endpoints).
        let listen = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
            .envs(env.iter().copied())
            .args(["node", "storage", "--listen", &listen, "--data-dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trex");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut early = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("storage unit did not start listening within 20s");
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                early.push(line);
                return UnitProcess {
                    child,
                    addr,
                    log: rx,
                    early,
                };
            }
            early.push(line);
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Lines logged so far (each returned once).
    pub fn drain_log(&mut self) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.early);
        lines.extend(self.log.try_iter());
        lines
    }
}

impl Drop for UnitProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic PRNG (xorshift64*), seeded per test and printed.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_time() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

use trex_consensus::client::ConsensusClient;
use trex_wire::consensus::NodeStatus;

pub const T: Duration = Duration::from_secs(2);

/// A free port below the kernel's ephemeral range (32768 and up here): a port
/// picked from that range can be taken by some client connection between this
/// check and the server's bind. Successive calls in one process never repeat.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..22_000 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + (seed.wrapping_add(k.wrapping_mul(7))) % 22_000;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port between 10000 and 32000");
}

pub struct Group {
    pub addrs: Vec<String>,
    pub dirs: Vec<std::path::PathBuf>,
    pub procs: Vec<Option<Child>>,
    /// Arguments every node gets besides the group's own.
    pub extra: Vec<String>,
}

impl Group {
    pub fn start_node(&mut self, i: usize) {
        let child = Command::new(env!("CARGO_BIN_EXE_trex"))
            .args([
                "node",
                "consensus",
                "--id",
                &(i + 1).to_string(),
                "--listen",
                &self.addrs[i],
            ])
            .args(["--peers", &self.addrs.join(","), "--data-dir"])
            .arg(&self.dirs[i])
            .args(["--election-timeout", "200ms", "--heartbeat", "40ms"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(i))
            .spawn()
            .expect("spawn trex node consensus");
        self.procs[i] = Some(child);
    }

    /// Node `i`'s log (its standard error, appended across restarts): the
    /// file beside its data directory.
    pub fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.dirs[i].with_extension("log")
    }

    fn log_file(&self, i: usize) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_or_else(|_| Stdio::null(), Stdio::from)
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn status(&self, i: usize) -> Option<NodeStatus> {
        ConsensusClient::node_status(&self.addrs[i], T).ok()
    }

    /// Waits until exactly one live node leads; returns its index.
    pub fn wait_leader(&self, within: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            let leaders: Vec<usize> = (0..3)
                .filter(|i| self.status(*i).is_some_and(|s| s.leading))
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(
                t0.elapsed() < within,
                "no single leader within {within:?} (leaders: {leaders:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn client(&self) -> ConsensusClient {
        ConsensusClient::new(&self.addrs.join(","), T).unwrap()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

pub fn group(root: &Path) -> Group {
    group_with(root, &[])
}

/// A group of three whose nodes all get `extra` arguments too.
pub fn group_with(root: &Path, extra: &[&str]) -> Group {
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let dirs = (0..3).map(|i| root.join(format!("n{}", i + 1))).collect();
    let mut g = Group {
        addrs,
        dirs,
        procs: vec![None, None, None],
        extra: extra.iter().map(|a| a.to_string()).collect(),
    };
    for i in 0..3 {
        g.start_node(i);
    }
    g
}

/// A base port with the 24 ports `trex up` uses free, below the kernel's
/// ephemeral range (so no client connection takes one between this check and
/// the cluster's bind); never the same range twice in one process.
pub fn free_base() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_add(NEXT.fetch_add(101, Ordering::SeqCst));
    for k in 0..200u16 {
        let base = 10_000 + (seed.wrapping_mul(7).wrapping_add(k * 37)) % 22_000;
        if (0..24).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range for trex up");
}

/// A `trex up` cluster: stopped with SIGINT (and waited for) on drop.
pub struct Cluster {
    pub child: Child,
    /// Its base port (consensus nodes from here, sequencers +10, units +20).
    pub base: u16,
    /// Its consensus endpoints.
    pub eps: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// Certificates shared by every cluster of this test process when
/// `TREX_TLS_DIR` is set (see [`trex_up_at`]), made once; the process's own
/// connections use a node's from then on (its `trex` commands: `admin`).
fn shared_certificates(dir: &str) {
    static MADE: std::sync::Once = std::sync::Once::new();
    MADE.call_once(|| {
        let nodes: Vec<String> = (1..=3)
            .map(|i| format!("consensus-{i}"))
            .chain((1..=8).map(|i| format!("unit-{i}")))
            .chain((1..=3).map(|i| format!("sequencer-{i}")))
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_trex"))
            .args(["certs", "init", "--dir", dir, "--node", &nodes.join(",")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The test's own clients (Log, ConsensusClient, UnitClient) too, as
        // a node: some tests send what only nodes may (a registration).
        let files = trex_net::tls::TlsFiles::in_dir(Path::new(dir), "consensus-1");
        let config = trex_net::tls::TlsConfig::load(&files, Default::default()).unwrap();
        trex_net::tls::set_client_config(Some(config.client));
    });
}

/// Starts `trex up --base-port BASE --data-dir DIR EXTRA…` and waits until
/// the cluster serves; panics with its standard error if it does not.
///
/// TLS: with `--tls` in EXTRA, `trex up`'s own certificates in DIR/tls
/// (tests/tls.rs). Else, with `TREX_TLS_DIR` set in the environment, every
/// cluster of the test process runs TLS with the certificates there (made
/// once), and every command the test runs inherits the variable: how the
/// other tests run with TLS on (`TREX_TLS_DIR=/tmp/certs cargo test --test
/// log`). Else plain TCP (`--insecure`): the commands carry no certificate.
pub fn trex_up_at(dir: &Path, base: u16, extra: &[&str]) -> Cluster {
    let own = extra.contains(&"--tls");
    let shared = std::env::var("TREX_TLS_DIR").ok().filter(|_| !own);
    let tls: Vec<String> = match &shared {
        Some(d) => {
            shared_certificates(d);
            vec!["--tls-dir".into(), d.clone()]
        }
        None if own => Vec::new(),
        None => vec!["--insecure".into()],
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trex"));
    cmd.args(["up", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir)
        .args(&tls)
        .args(extra.iter().filter(|a| **a != "--tls"));
    if own {
        cmd.env_remove("TREX_TLS_DIR").env_remove("TREX_TLS_NAME");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("cluster is up"));
    // Its standard error: kept for the message if it failed, drained otherwise.
    let mut stderr = child.stderr.take().unwrap();
    let mut err = String::new();
    if ready {
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    } else {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut err);
    }
    let eps = format!(
        "127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}",
        base + 1,
        base + 2
    );
    let cluster = Cluster { child, base, eps };
    assert!(ready, "trex up did not come up (base port {base}): {err}");
    cluster
}

/// `trex up` on a free port range.
pub fn trex_up(dir: &Path, extra: &[&str]) -> Cluster {
    trex_up_at(dir, free_base(), extra)
}

/// The pid of the first process whose command line matches `pattern`.
pub fn pid_of(pattern: &str) -> Option<i32> {
    let out = Command::new("pgrep").args(["-f", pattern]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Sends `sig` to the process matching `pattern`; returns its pid.
pub fn kill(pattern: &str, sig: i32) -> i32 {
    let pid = pid_of(pattern).unwrap_or_else(|| panic!("no process matches {pattern:?}"));
    // SAFETY: signalling a process of our own cluster.
    unsafe { libc::kill(pid, sig) };
    pid
}

/// The command line of the process matching `pattern`, to start it again.
pub fn cmdline_of(pattern: &str) -> Vec<String> {
    let pid = pid_of(pattern).unwrap_or_else(|| panic!("no process matches {pattern:?}"));
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// A process of a test, killed (and waited for) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmdline` again (a node killed by the test), output discarded.
pub fn restart(cmdline: &[String]) -> Proc {
    Proc(
        Command::new(&cmdline[0])
            .args(&cmdline[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart the node"),
    )
}

/// An nft table of this process; dropped rules go with it.
pub struct Cut {
    table: String,
}

impl Cut {
    /// Drops every TCP packet to `port` on this host, if nft can be used here.
    pub fn port(port: u16) -> Option<Cut> {
        let table = format!("trex_test_{}_{port}", std::process::id());
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority 0; }}\n\
             add rule inet {table} input tcp dport {port} drop\n"
        );
        let ok = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait()
            })
            .is_ok_and(|s| s.success());
        ok.then_some(Cut { table })
    }

    /// Removes the rule (as dropping it does).
    pub fn heal(self) {}
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// Whether this machine can cut a port (root and nft); says why not otherwise.
pub fn can_cut() -> bool {
    match Cut::port(1) {
        Some(c) => {
            c.heal();
            true
        }
        None => {
            eprintln!("skipped: cutting a port needs root and nft (apt-get install -y nftables)");
            false
        }
    }
}

/// Runs `trex ARGS --endpoints EPS` to completion (at most `within`); returns
/// its exit code, standard output and standard error.
pub fn trex_cli(eps: &str, args: &[&str], within: Duration) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(args)
        .args(["--endpoints", eps])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drained while it runs: a long output must not fill the pipe and stall it.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code(), out.join().unwrap(), err.join().unwrap());
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`trex {}` did not finish within {within:?}; stderr: {}",
                args.join(" "),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `trex tail --follow` against a cluster, its lines read on a thread so the
/// test can wait for them with a deadline; killed on drop.
pub struct Follower {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Follower {
    /// Starts `trex tail --follow --endpoints EPS`.
    pub fn start(eps: &str) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
            .args(["tail", "--follow", "--endpoints", eps])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Follower {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// The lines printed until `done` says so of the lines so far, or until
    /// `within` has passed.
    pub fn lines_until(
        &self,
        within: Duration,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while !done(&seen) {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        seen
    }

    /// Stops it; returns what it wrote on standard error.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest journal file of a consensus node's data directory.
pub fn newest_journal(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("journal-") && n.ends_with(".log")
        })
        .collect();
    files.sort();
    files.pop().expect("a journal file")
}

/// Where the records of a consensus journal start (header: crc u32, len u32).
pub fn journal_record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= bytes.len() {
        out.push(off);
        off += 8 + u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
    }
    out
}

/// Entries of the storage-unit fault tests: 6 KiB each, so a 64 KiB segment
/// holds about ten.
pub fn entry(i: usize) -> String {
    format!("entry-{i}-{}", "x".repeat(6 << 10))
}

/// What `trex read`/`tail` print for [`entry`] `i` at `addr`.
pub fn line(addr: usize, i: usize) -> String {
    format!("{addr}\t{}", entry(i))
}

/// Appends [`entry`] `i` for each `i` of `n`, in order, with `trex append -`.
pub fn append_entries(eps: &str, n: std::ops::Range<usize>) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["append", "-", "--endpoints", eps])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    for i in n {
        writeln!(input, "{}", entry(i)).unwrap();
    }
    drop(input);
    assert!(child.wait().unwrap().success(), "trex append failed");
}
