//! `trex-bench`: closed-loop load generators for Trex Corfu.

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trex_net::conn::{read_frame, read_frame_into};
use trex_net::unit_client::{UnitApi, UnitClient};
use trex_net::util::{duration_text, parse_duration, parse_size};
use trex_wire::{self as wire, begin_frame, finish_frame, Header, Opcode, Status, WriteOp};

#[derive(Parser)]
#[command(name = "trex-bench", version, about = "Load generators for Trex Corfu")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Batched durable writes at one storage unit (closed loop).
    UnitWrite(UnitWrite),
    /// Committed commands/s of the consensus group (closed loop, one command in
    /// flight per client; each command a ~100-byte registration).
    Consensus(ConsensusLoad),
    /// The same load against etcd's JSON gateway (`/v3/kv/put`, 100-byte values),
    /// for comparison.
    EtcdPut(EtcdLoad),
    /// Addresses/s from a sequencer (pipelined token requests).
    Tokens(TokenLoad),
    /// Lock acquire+release pairs/s through the lock service (one pair in flight per client).
    Lock(ConsensusLoad),
    /// etcd lease grant+revoke pairs/s through its JSON gateway, for comparison.
    EtcdLease(EtcdLoad),
    /// Appends to the shared log (each client appends batches of --depth entries).
    Append(LogLoad),
    /// Reads from the shared log (each client reads ranges of --depth addresses).
    Read(LogLoad),
}

#[derive(Args)]
struct LogLoad {
    /// Consensus nodes, comma-separated HOST:PORT.
    #[arg(long, default_value = trex_consensus::client::DEFAULT_ENDPOINTS)]
    endpoints: String,
    /// Entry size.
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    size: u64,
    /// Client threads.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Entries (or addresses, for reads) in flight per client.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Appends: entries per batch; --depth / --batch batches are in flight per
    /// client at once, through the client's pipeline (default: one batch of
    /// --depth, i.e. blocking `append_batch` calls).
    #[arg(long)]
    batch: Option<usize>,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct TokenLoad {
    /// The sequencer, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7410")]
    sequencer: String,
    /// Client connections, each on its own thread.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Addresses per request.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ConsensusLoad {
    /// Consensus nodes, comma-separated HOST:PORT.
    #[arg(long, default_value = trex_consensus::client::DEFAULT_ENDPOINTS)]
    endpoints: String,
    /// Concurrent clients (threads), each with one command in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct EtcdLoad {
    /// etcd client URL host:port (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoint: String,
    /// Concurrent clients (threads), each with one put in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct UnitWrite {
    /// The storage unit, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7420")]
    node: String,
    /// Entry size (e.g. 4KiB).
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    size: u64,
    /// Client connections, each on its own thread.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Entries per write request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Shared {
    next_addr: AtomicU64,
    entries: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Append(a) => closed_loop(
            "append",
            a.clients,
            a.duration,
            a.json.as_deref(),
            a.size,
            |i, stop, n| append_client(&a, i, stop, n),
        ),
        Cmd::Read(a) => closed_loop(
            "read",
            a.clients,
            a.duration,
            a.json.as_deref(),
            a.size,
            |i, stop, n| read_client(&a, i, stop, n),
        ),
        Cmd::Tokens(a) => {
            let per = u64::from(a.batch);
            closed_loop(
                "tokens",
                a.clients,
                a.duration,
                a.json.as_deref(),
                0,
                |_, stop, n| token_client(&a.sequencer, a.depth, a.batch, per, stop, n),
            )
        }
        Cmd::Lock(a) => closed_loop(
            "lock",
            a.clients,
            a.duration,
            a.json.as_deref(),
            0,
            |i, stop, n| lock_client(&a.endpoints, i, stop, n),
        ),
        Cmd::EtcdLease(a) => closed_loop(
            "etcd-lease",
            a.clients,
            a.duration,
            a.json.as_deref(),
            0,
            |_, stop, n| etcd_lease_client(&a.endpoint, stop, n),
        ),
        Cmd::UnitWrite(a) => unit_write(&a),
        Cmd::Consensus(a) => closed_loop(
            "consensus",
            a.clients,
            a.duration,
            a.json.as_deref(),
            100,
            |i, stop, n| consensus_client(&a.endpoints, i, stop, n),
        ),
        Cmd::EtcdPut(a) => closed_loop(
            "etcd-put",
            a.clients,
            a.duration,
            a.json.as_deref(),
            100,
            |i, stop, n| etcd_client(&a.endpoint, i, stop, n),
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `clients` threads of `one` for `duration` with a progress line each
/// second, and prints (and optionally writes) the summary.
fn closed_loop<F>(
    workload: &'static str,
    clients: usize,
    duration: Duration,
    json: Option<&std::path::Path>,
    size: u64,
    one: F,
) -> Result<(), String>
where
    F: Fn(usize, &AtomicBool, &AtomicU64) -> Result<Histogram<u64>, String> + Sync,
{
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    eprintln!(
        "{workload}: {clients} clients, one request in flight each, for {}",
        duration_text(duration)
    );
    let (hist, failures) = std::thread::scope(|s| {
        let (one, stop, done) = (&one, &stop, &done);
        let handles: Vec<_> = (0..clients)
            .map(|i| s.spawn(move || one(i, stop, done)))
            .collect();
        let mut last = (started, 0u64);
        while started.elapsed() < duration {
            std::thread::sleep(
                Duration::from_secs(1).min(duration.saturating_sub(started.elapsed())),
            );
            let n = done.load(Ordering::Relaxed);
            let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "  {:>5.1}s  {:>10} ops  {:>10.0} ops/s",
                started.elapsed().as_secs_f64(),
                n,
                rate
            );
            last = (Instant::now(), n);
        }
        stop.store(true, Ordering::SeqCst);
        let mut hist = new_hist().expect("valid histogram bounds");
        let mut failures = Vec::new();
        for h in handles {
            match h.join() {
                Ok(Ok(local)) => {
                    let _ = hist.add(local);
                }
                Ok(Err(e)) => failures.push(e),
                Err(_) => failures.push("a client thread panicked".to_string()),
            }
        }
        (hist, failures)
    });
    let summary = Summary::new(
        workload,
        done.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        size,
        &hist,
        0,
    );
    summary.print();
    if let Some(path) = json {
        std::fs::write(path, summary.json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    match failures.first() {
        Some(f) => Err(format!("{} client(s) failed; first: {f}", failures.len())),
        None => Ok(()),
    }
}

fn frame_of(opcode: Opcode, id: u64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    body(&mut f);
    finish_frame(
        &mut f,
        s,
        Header {
            opcode: opcode as u8,
            request_id: id,
            ..Header::default()
        },
    );
    f
}

fn read_reply(s: &mut impl Read) -> Result<(Header, Vec<u8>), String> {
    read_frame(s).map_err(|e| format!("receive failed: {e}"))
}

/// One consensus client: reads a lock that does not exist over and over (a
/// ~100-byte command through the log, like a write, that leaves nothing in the
/// cluster: no member, no lock), following not-leader hints.
fn consensus_client(
    endpoints: &str,
    i: usize,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    use trex_consensus::sm::Op;
    use trex_wire::consensus::{decode_submit_reply, encode_submit, SubmitReply};
    let eps: Vec<String> = endpoints.split(',').map(|s| s.trim().to_string()).collect();
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    let client = 0x7265_6e63_0000_0000 ^ ((std::process::id() as u64) << 16) ^ i as u64;
    let op = Op::GetLock {
        name: format!("trex-bench-{:0>84}", i),
    }
    .encode();
    let mut target = eps[i % eps.len()].clone();
    let mut seq = 0u64;
    let mut conn: Option<TcpStream> = None;
    let mut pending = false;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            let s =
                TcpStream::connect(&target).map_err(|e| format!("cannot connect to {target}: {e}"));
            match s {
                Ok(s) => {
                    s.set_nodelay(true).ok();
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    conn = Some(s);
                }
                Err(_) => {
                    target = eps
                        [(eps.iter().position(|e| *e == target).unwrap_or(0) + 1) % eps.len()]
                    .clone();
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        if !pending {
            seq += 1;
        }
        let f = frame_of(Opcode::Submit, seq, |b| encode_submit(b, client, seq, &op));
        let t0 = Instant::now();
        let s = conn.as_mut().expect("connected above");
        let reply = s
            .write_all(&f)
            .map_err(|e| e.to_string())
            .and_then(|_| read_reply(s));
        match reply.and_then(|(_, b)| decode_submit_reply(&b).map_err(|e| e.to_string())) {
            Ok(SubmitReply::Applied(_)) => {
                pending = false;
                hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(SubmitReply::NotLeader { addr, .. }) => {
                pending = true;
                if !addr.is_empty() {
                    target = addr;
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
                conn = None;
            }
            Ok(SubmitReply::Timeout) => pending = true,
            Err(_) => {
                pending = true;
                conn = None;
            }
        }
    }
    Ok(hist)
}

/// One etcd client: puts a 100-byte value under its own key through the JSON
/// gateway, over one keep-alive HTTP/1.1 connection.
fn etcd_client(
    endpoint: &str,
    i: usize,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    let mut h = Http::connect(endpoint)?;
    let b64 = |b: &[u8]| -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut o = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for k in 0..4 {
                o.push(if k <= c.len() {
                    T[(n >> (18 - 6 * k) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        o
    };
    let body = format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        b64(format!("bench-{i}").as_bytes()),
        b64(&[b'v'; 100])
    );
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        h.post("/v3/kv/put", &body)?;
        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(hist)
}

/// One etcd lease client: grant a lease, then revoke it, over and over.
fn etcd_lease_client(
    endpoint: &str,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    let mut h = Http::connect(endpoint)?;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let r = h.post("/v3/lease/grant", "{\"TTL\":30}")?;
        let id = r
            .split("\"ID\":\"")
            .nth(1)
            .and_then(|x| x.split('"').next())
            .ok_or_else(|| format!("no lease id in etcd's answer: {r}"))?
            .to_string();
        h.post("/v3/lease/revoke", &format!("{{\"ID\":\"{id}\"}}"))?;
        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(hist)
}

/// A keep-alive HTTP/1.1 connection to etcd's JSON gateway.
struct Http {
    s: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Http {
    fn connect(host: &str) -> Result<Http, String> {
        let s = TcpStream::connect(host)
            .map_err(|e| format!("cannot connect to etcd at {host}: {e}"))?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        Ok(Http {
            s,
            host: host.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs a JSON body; returns the response body.
    fn post(&mut self, path: &str, body: &str) -> Result<String, String> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.s
            .write_all(req.as_bytes())
            .map_err(|e| format!("etcd send failed: {e}"))?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let (head_end, len) = loop {
            let n = self
                .s
                .read(&mut chunk)
                .map_err(|e| format!("etcd receive failed: {e}"))?;
            if n == 0 {
                return Err("etcd closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return Err(format!(
                        "etcd answered: {}",
                        head.lines().next().unwrap_or("")
                    ));
                }
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                break (p + 4, len);
            }
        };
        while self.buf.len() < head_end + len {
            let n = self
                .s
                .read(&mut chunk)
                .map_err(|e| format!("etcd receive failed: {e}"))?;
            if n == 0 {
                return Err("etcd closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&self.buf[head_end..head_end + len]).into_owned())
    }
}

/// One pipelined token client, in the manner of `redis-benchmark -P`: writes
/// `depth` requests of `batch` addresses in one go, reads the `depth` replies,
/// repeats. Counts addresses; latency is per request (from its window's write).
fn token_client(
    addr: &str,
    depth: usize,
    batch: u32,
    per: u64,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut out = stream.try_clone().map_err(|e| e.to_string())?;
    let mut input = BufReader::with_capacity(256 * 1024, stream);
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    // The window is the same bytes every time (ids 1..=depth; replies are
    // matched by count): build it once, as redis-benchmark does.
    let mut burst = Vec::new();
    for id in 1..=depth as u64 {
        burst.extend_from_slice(&frame_of(Opcode::Token, id, |b| {
            trex_wire::encode_token_request(b, batch)
        }));
    }
    let mut body = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        out.write_all(&burst)
            .map_err(|e| format!("send failed: {e}"))?;
        for _ in 0..depth {
            read_frame_into(&mut input, &mut body).map_err(|e| format!("receive failed: {e}"))?;
            match trex_wire::decode_token_reply(&body).map_err(|e| e.to_string())? {
                trex_wire::TokenReply::Granted { .. } => {
                    hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                    done.fetch_add(per, Ordering::Relaxed);
                }
                trex_wire::TokenReply::NotSequencer { hint } => {
                    return Err(format!(
                        "{addr} is not the active sequencer (it points to \"{hint}\"); pass the active one's address"
                    ));
                }
            }
        }
    }
    Ok(hist)
}

/// One lock client: acquire then release its own lock, over and over.
fn lock_client(
    endpoints: &str,
    i: usize,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    use trex_consensus::client::ConsensusClient;
    use trex_consensus::lock::LockClient;
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    let mut c = LockClient::new(
        ConsensusClient::new(endpoints, Duration::from_secs(2)).map_err(|e| e.to_string())?,
    );
    let name = format!("bench-{}-{i}", std::process::id());
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let l = c
            .acquire(&name, "bench", Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        c.release(&name, l.token).map_err(|e| e.to_string())?;
        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(hist)
}

fn unit_write(a: &UnitWrite) -> Result<(), String> {
    if a.clients == 0 || a.depth == 0 || a.batch == 0 {
        return Err("--clients, --depth and --batch must be at least 1".into());
    }
    let max_batch_bytes = (a.size as usize + wire::WRITE_OP_OVERHEAD) * a.batch + 4;
    if a.size > u64::from(wire::MAX_ENTRY_LEN) || max_batch_bytes > wire::MAX_BODY_LEN as usize {
        return Err(format!(
            "a batch of {} entries of {} bytes does not fit one frame (entries up to {} bytes, frames up to {} bytes); lower --size or --batch",
            a.batch,
            a.size,
            wire::MAX_ENTRY_LEN,
            wire::MAX_BODY_LEN
        ));
    }
    let info = UnitClient::connect(&a.node, Duration::from_secs(5))
        .and_then(|mut c| c.info())
        .map_err(|e| e.to_string())?;
    let (start_addr, epoch) = (info.tail, info.sealed_epoch);
    let durable = info.flags & wire::INFO_SYNC_NEVER == 0;
    if !durable {
        eprintln!("note: the unit runs with --sync never: these writes are acknowledged before they are durable");
    }
    let shared = Arc::new(Shared {
        next_addr: AtomicU64::new(start_addr),
        entries: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    eprintln!(
        "unit-write: {} clients x {} in flight x {} entries of {} bytes at {} for {}, from address {start_addr}",
        a.clients,
        a.depth,
        a.batch,
        a.size,
        a.node,
        duration_text(a.duration)
    );
    let started = Instant::now();
    let handles: Vec<_> = (0..a.clients)
        .map(|i| {
            let shared = shared.clone();
            let (node, size, depth, batch) = (a.node.clone(), a.size as usize, a.depth, a.batch);
            let load = Load {
                writer: i as u64 + 1,
                epoch,
                size,
                depth,
                batch,
            };
            std::thread::spawn(move || write_client(&load, &node, &shared))
        })
        .collect();
    let mut last = (started, 0u64);
    while started.elapsed() < a.duration {
        std::thread::sleep(
            Duration::from_secs(1).min(a.duration.saturating_sub(started.elapsed())),
        );
        let n = shared.entries.load(Ordering::Relaxed);
        let dt = last.0.elapsed().as_secs_f64();
        let rate = (n - last.1) as f64 / dt.max(1e-9);
        eprintln!(
            "  {:>5.1}s  {:>10} entries  {:>10.0} entries/s  {:>8.1} MB/s  errors {}",
            started.elapsed().as_secs_f64(),
            n,
            rate,
            rate * a.size as f64 / 1e6,
            shared.errors.load(Ordering::Relaxed)
        );
        last = (Instant::now(), n);
    }
    shared.stop.store(true, Ordering::SeqCst);
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(local)) => hist.add(local).map_err(|e| e.to_string())?,
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a client thread panicked".into()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = shared.entries.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let mut summary = Summary::new("unit-write", ops, seconds, a.size, &hist, errors);
    summary.durable = durable;
    summary.print();
    if let Some(path) = &a.json {
        std::fs::write(path, summary.json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(f) = failures.first() {
        return Err(format!("{} client(s) failed; first: {f}", failures.len()));
    }
    if errors > 0 {
        return Err(format!(
            "{errors} writes were refused by the unit (see the statuses above)"
        ));
    }
    Ok(())
}

/// What one client connection sends.
#[derive(Clone, Copy)]
struct Load {
    writer: u64,
    epoch: u64,
    size: usize,
    depth: usize,
    batch: usize,
}

fn write_client(load: &Load, node: &str, shared: &Shared) -> Result<Histogram<u64>, String> {
    let Load {
        writer,
        epoch,
        size,
        depth,
        batch,
    } = *load;
    let stream = TcpStream::connect(node).map_err(|e| format!("cannot connect to {node}: {e}"))?;
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut out = stream.try_clone().map_err(|e| e.to_string())?;
    let mut input = BufReader::with_capacity(256 * 1024, stream);
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    let payload: Vec<u8> = (0..size).map(|i| (i as u64 ^ writer) as u8).collect();
    let mut sent: HashMap<u64, (Instant, usize)> = HashMap::with_capacity(depth * 2);
    let mut frame = Vec::new();
    let mut next_id = 1u64;
    let mut seq = 0u64;
    let mut body = Vec::new();
    let mut send_one =
        |out: &mut TcpStream, sent: &mut HashMap<u64, (Instant, usize)>| -> Result<(), String> {
            let first = shared.next_addr.fetch_add(batch as u64, Ordering::Relaxed);
            let ops: Vec<WriteOp<'_>> = (0..batch as u64)
                .map(|i| {
                    seq += 1;
                    WriteOp {
                        addr: first + i,
                        writer,
                        seq,
                        data: &payload,
                    }
                })
                .collect();
            frame.clear();
            let start = begin_frame(&mut frame);
            wire::encode_write_request(&mut frame, &ops);
            let h = Header {
                opcode: Opcode::Write as u8,
                request_id: next_id,
                epoch,
                ..Header::default()
            };
            finish_frame(&mut frame, start, h);
            sent.insert(next_id, (Instant::now(), batch));
            next_id += 1;
            out.write_all(&frame)
                .map_err(|e| format!("send failed: {e}"))
        };
    for _ in 0..depth {
        send_one(&mut out, &mut sent)?;
    }
    while !sent.is_empty() {
        let h =
            read_frame_into(&mut input, &mut body).map_err(|e| format!("receive failed: {e}"))?;
        let Some((t0, n)) = sent.remove(&h.request_id) else {
            return Err(format!("reply to unknown request {}", h.request_id));
        };
        if h.is_error() {
            let e = wire::decode_error(&body).map_err(|e| e.to_string())?;
            return Err(format!("unit refused a write: {}", e.message));
        }
        let st = wire::decode_status_list(&body).map_err(|e| e.to_string())?;
        let bad = st.iter().filter(|s| *s != Status::Ok).count() as u64;
        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        shared.entries.fetch_add(n as u64 - bad, Ordering::Relaxed);
        if bad > 0 && shared.errors.fetch_add(bad, Ordering::Relaxed) == 0 {
            let first = st.iter().find(|s| *s != Status::Ok).unwrap_or(Status::Io);
            eprintln!("client {writer}: unit answered '{first}' to a write");
        }
        if !shared.stop.load(Ordering::Relaxed) {
            send_one(&mut out, &mut sent)?;
        }
    }
    Ok(hist)
}

/// Latencies from 1us to 10 minutes at 3 significant digits.
fn new_hist() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
}

struct Summary {
    workload: &'static str,
    ops: u64,
    seconds: f64,
    ops_per_s: f64,
    mb_per_s: f64,
    p: [u64; 5],
    errors: u64,
    /// Whether acknowledgements meant durability (false with `--sync never`).
    durable: bool,
}

impl Summary {
    fn new(
        workload: &'static str,
        ops: u64,
        seconds: f64,
        size: u64,
        h: &Histogram<u64>,
        errors: u64,
    ) -> Summary {
        let ops_per_s = ops as f64 / seconds.max(1e-9);
        Summary {
            workload,
            ops,
            seconds,
            ops_per_s,
            mb_per_s: ops_per_s * size as f64 / 1e6,
            p: [
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
            ],
            errors,
            durable: true,
        }
    }

    fn print(&self) {
        println!(
            "{}: {} entries in {:.2}s = {:.0} entries/s, {:.1} MB/s; errors {}{}",
            self.workload,
            self.ops,
            self.seconds,
            self.ops_per_s,
            self.mb_per_s,
            self.errors,
            if self.durable {
                ""
            } else {
                " (not durable: --sync never)"
            }
        );
        println!(
            "latency per request (us): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.p[0], self.p[1], self.p[2], self.p[3], self.p[4]
        );
    }

    fn json(&self) -> String {
        format!(
            "{{\"workload\":\"{}\",\"ops\":{},\"seconds\":{:.3},\"ops_per_s\":{:.1},\"mb_per_s\":{:.2},\"errors\":{},\"durable\":{},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}\n",
            self.workload, self.ops, self.seconds, self.ops_per_s, self.mb_per_s, self.errors, self.durable,
            self.p[0], self.p[1], self.p[2], self.p[3], self.p[4]
        )
    }
}

/// One log client keeping `depth` entries of `size` bytes in flight, in
/// batches of `batch` through its pipeline. Latency is measured per batch: from
/// the submission of its first entry to the completion of its last.
fn append_client(
    a: &LogLoad,
    i: usize,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    let mut log = trex_log::Log::connect(&a.endpoints).map_err(|e| e.to_string())?;
    let entry: Vec<u8> = (0..a.size).map(|k| (k as usize ^ i) as u8).collect();
    let batch = a.batch.unwrap_or(a.depth).clamp(1, a.depth.max(1));
    let window = a.depth.div_ceil(batch);
    let mut p = log.pipeline(batch, window);
    let mut started: HashMap<u64, Instant> = HashMap::new();
    let b = batch as u64;
    // Completed appends: counted; a batch's last entry ends its latency.
    let mut finish = |p: &mut trex_log::Pipeline<'_>,
                      started: &mut HashMap<u64, Instant>|
     -> Result<(), String> {
        while let Some((t, r)) = p.poll() {
            r.map_err(|e| format!("append {t} failed: {e}"))?;
            done.fetch_add(1, Ordering::Relaxed);
            if t % b == b - 1 {
                if let Some(t0) = started.remove(&(t - (b - 1))) {
                    hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                }
            }
        }
        Ok(())
    };
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..batch {
            let t = p.submit(&entry).map_err(|e| e.to_string())?;
            if t % b == 0 {
                started.insert(t, Instant::now());
            }
        }
        finish(&mut p, &mut started)?;
    }
    p.flush().map_err(|e| e.to_string())?;
    finish(&mut p, &mut started)?;
    Ok(hist)
}

/// One log client reading ranges of `depth` addresses below the tail.
fn read_client(
    a: &LogLoad,
    i: usize,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    let mut hist = new_hist().map_err(|e| e.to_string())?;
    let mut log = trex_log::Log::connect(&a.endpoints).map_err(|e| e.to_string())?;
    let tail = log.check().map_err(|e| e.to_string())?;
    if tail < a.depth as u64 {
        return Err(format!(
            "the log holds {tail} entries; append some first (trex-bench append)"
        ));
    }
    let mut at = (i as u64 * 7919) % (tail - a.depth as u64 + 1);
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        log.read_range(at, a.depth as u64)
            .map_err(|e| e.to_string())?;
        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        done.fetch_add(a.depth as u64, Ordering::Relaxed);
        at = (at + a.depth as u64 * 13) % (tail - a.depth as u64 + 1);
    }
    Ok(hist)
}
