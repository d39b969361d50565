//! Metrics every node serves: a Prometheus registry (`prometheus-client`,
//! OpenMetrics text format), a small HTTP/1.1 listener on its own thread
//! (`/metrics`, `/healthz`, `/readyz`), the event loop's own metrics
//! ([`LoopMetrics`]: connections, requests and latency per operation, errors by
//! kind), and the liveness and readiness a node reports ([`Health`]).
//!
//! Hot paths only touch atomics: counters and gauges are `Arc`'d atomics, and a
//! labelled child is looked up once and kept. Every metric name starts with
//! `trex_`; `docs/metrics.md` lists them all.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A gauge of a non-negative count or size (u64, no rounding).
pub type U64Gauge = Gauge<u64, AtomicU64>;
/// One label, e.g. `[("op", "write")]`.
pub type Label = [(&'static str, &'static str); 1];
/// A counter per label value.
pub type CounterFamily = Family<Label, Counter>;

/// The loop has not turned for this long: `/healthz` answers 503.
const STALL_AFTER: Duration = Duration::from_secs(5);
/// A request line and headers larger than this get 431 (a scraper sends ~200 bytes).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long one HTTP client may take to send its request or read the answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// What this build is: reported as `trex_build_info` and in every role's
/// `node-info` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// The crate version (e.g. `0.1.0`).
    pub version: &'static str,
    /// The git revision it was built from, or `unknown`.
    pub revision: &'static str,
}

impl Default for BuildInfo {
    /// The workspace's version, revision unknown (a binary that knows its
    /// revision, the `trex` CLI, passes its own).
    fn default() -> BuildInfo {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            revision: "unknown",
        }
    }
}

/// Where a node serves its metrics.
#[derive(Clone, Copy, Debug)]
pub struct MetricsConfig {
    /// Address of the HTTP listener (`--metrics-listen`).
    pub listen: SocketAddr,
}

/// Liveness and readiness, shared between a node's event loop (which beats
/// every turn), its service (which says whether it is ready) and the HTTP
/// listener (which reports both).
#[derive(Debug)]
pub struct Health {
    start: Instant,
    /// Milliseconds after `start` of the loop's latest turn.
    beat_ms: AtomicU64,
    /// The loop has returned (shut down).
    stopped: AtomicBool,
    /// Whether the node serves, and a line saying why (not).
    ready: Mutex<(bool, String)>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            start: Instant::now(),
            beat_ms: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            ready: Mutex::new((false, "starting".into())),
        }
    }
}

impl Health {
    /// The loop turned at `now`.
    pub fn beat(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.start).as_millis() as u64;
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    /// The loop has returned: the node no longer serves.
    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether the node serves, with a short reason either way (shown by
    /// `/readyz`). Cheap when nothing changed.
    pub fn set_ready(&self, ready: bool, why: &str) {
        if let Ok(mut r) = self.ready.lock() {
            if r.0 != ready || r.1 != why {
                *r = (ready, why.to_string());
            }
        }
    }

    /// `/healthz`: alive if the loop turned within the last 5 s (it turns at
    /// least every 250 ms on its own timer).
    pub fn live(&self) -> Result<String, String> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err("the event loop has stopped".into());
        }
        let now = self.start.elapsed().as_millis() as u64;
        let since = now.saturating_sub(self.beat_ms.load(Ordering::Relaxed));
        if since > STALL_AFTER.as_millis() as u64 {
            return Err(format!("the event loop has not turned for {since} ms"));
        }
        Ok(format!("ok: the event loop turned {since} ms ago"))
    }

    /// `/readyz`: the reason the service gave, and whether it is ready.
    pub fn ready(&self) -> Result<String, String> {
        self.live()?;
        let r = self
            .ready
            .lock()
            .map_err(|_| "readiness unknown".to_string())?;
        match r.0 {
            true => Ok(r.1.clone()),
            false => Err(r.1.clone()),
        }
    }
}

/// A registry with every metric named `trex_…` and `trex_build_info` in it.
pub fn registry(build: &BuildInfo) -> Registry {
    let mut reg = Registry::with_prefix("trex");
    reg.register(
        "build",
        "Version and git revision of this binary (value 1)",
        Info::new(vec![
            ("version", build.version.to_string()),
            ("revision", build.revision.to_string()),
        ]),
    );
    reg
}

/// Sets a u64 gauge from any integer that fits (sizes, indexes, epochs).
pub fn set(g: &U64Gauge, v: impl TryInto<u64>) {
    g.set(v.try_into().unwrap_or(u64::MAX));
}

/// Free and total bytes of the file system holding `path` (`statvfs`), or
/// None if it cannot be asked.
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statvfs is valid; statvfs fills it for a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path; st is a properly sized local.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// Latency buckets in seconds: 50 µs to about 1.6 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

/// Size buckets (items per batch): 1 to 4096, doubling.
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Ways the event loop closes or refuses connections, and frames it rejects:
/// the values of the `kind` label of `trex_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A frame that does not parse (bad magic, checksum, version, size).
    Frame,
    /// A frame the service refused and closed the connection over (unknown
    /// opcode, malformed body, another cluster's frame).
    Violation,
    /// A connection refused at the connection limit.
    Refused,
    /// An idle or stalled connection closed to make room at the limit.
    Evicted,
    /// A connection closed because a frame did not arrive whole in time.
    SlowFrame,
    /// A connection closed after being idle for the idle timeout.
    IdleTimeout,
    /// A socket read or write that failed (reset, broken pipe).
    Io,
    /// `accept` failed (out of descriptors, say).
    Accept,
    /// A TLS connection refused before any frame: no certificate, one the
    /// cluster CA did not sign, or a plain client on a TLS port.
    Tls,
}

impl ErrorKind {
    const ALL: [ErrorKind; 9] = [
        ErrorKind::Frame,
        ErrorKind::Violation,
        ErrorKind::Refused,
        ErrorKind::Evicted,
        ErrorKind::SlowFrame,
        ErrorKind::IdleTimeout,
        ErrorKind::Io,
        ErrorKind::Accept,
        ErrorKind::Tls,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Frame => "frame",
            ErrorKind::Violation => "violation",
            ErrorKind::Refused => "refused",
            ErrorKind::Evicted => "evicted",
            ErrorKind::SlowFrame => "slow_frame",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::Io => "io",
            ErrorKind::Accept => "accept",
        }
    }
}

/// Counter and latency of one opcode, looked up once.
#[derive(Clone)]
struct OpMetrics {
    requests: Counter,
    latency: Histogram,
}

/// The event loop's metrics: every role has them.
pub struct LoopMetrics {
    open: U64Gauge,
    accepted: Counter,
    errors: CounterFamily,
    /// One counter per [`ErrorKind`], in [`ErrorKind::ALL`] order.
    error_counters: Vec<Counter>,
    requests: CounterFamily,
    latency: Family<Label, Histogram>,
    /// By opcode byte; filled on first use so only seen opcodes are series.
    ops: Vec<Option<OpMetrics>>,
    error_replies: CounterFamily,
    /// By error code (u16, but only small codes exist); filled on first use.
    error_reply_counters: Vec<Option<Counter>>,
}

impl Default for LoopMetrics {
    fn default() -> LoopMetrics {
        let errors = CounterFamily::default();
        let error_counters = ErrorKind::ALL
            .iter()
            .map(|k| errors.get_or_create(&[("kind", k.name())]).clone())
            .collect();
        LoopMetrics {
            open: U64Gauge::default(),
            accepted: Counter::default(),
            errors,
            error_counters,
            requests: CounterFamily::default(),
            latency: Family::new_with_constructor(latency_histogram),
            ops: vec![None; 256],
            error_replies: CounterFamily::default(),
            error_reply_counters: vec![None; 64],
        }
    }
}

impl LoopMetrics {
    /// Registers every loop metric in `reg`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "connections_open",
            "Client connections open now",
            self.open.clone(),
        );
        reg.register(
            "connections_accepted",
            "Client connections accepted",
            self.accepted.clone(),
        );
        reg.register(
            "errors",
            "Frames rejected and connections refused or closed by the event loop, by kind",
            self.errors.clone(),
        );
        reg.register(
            "requests",
            "Request frames received, by operation",
            self.requests.clone(),
        );
        reg.register_with_unit(
            "request_duration",
            "Time from a whole request frame to its reply being queued, by operation",
            Unit::Seconds,
            self.latency.clone(),
        );
        reg.register(
            "error_replies",
            "Error replies sent (refusals), by error code",
            self.error_replies.clone(),
        );
    }

    /// One more of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.error_counters[i].inc();
    }

    /// `n` more of `kind`.
    pub fn errors(&self, kind: ErrorKind, n: u64) {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.error_counters[i].inc_by(n);
    }

    /// A connection was accepted; `open` are open now.
    pub fn accepted(&self, open: usize) {
        self.accepted.inc();
        set(&self.open, open);
    }

    /// Connections open now.
    pub fn open(&self, open: usize) {
        set(&self.open, open);
    }

    fn op(&mut self, opcode: u8) -> &OpMetrics {
        let slot = &mut self.ops[usize::from(opcode)];
        slot.get_or_insert_with(|| {
            let name = trex_wire::Opcode::from_u8(opcode).map_or("unknown", |o| o.name());
            let label = [("op", name)];
            OpMetrics {
                requests: self.requests.get_or_create(&label).clone(),
                latency: self.latency.get_or_create(&label).clone(),
            }
        })
    }

    /// A request frame of `opcode` arrived.
    pub fn request(&mut self, opcode: u8) {
        self.op(opcode).requests.inc();
    }

    /// The reply to a request of `opcode` was queued `took` after it arrived.
    pub fn replied(&mut self, opcode: u8, took: Duration) {
        self.op(opcode).latency.observe(took.as_secs_f64());
    }

    /// An error reply with `code` was sent.
    pub fn error_reply(&mut self, code: u16) {
        let name = trex_wire::ErrorCode::from_u16(code).map_or("unknown", |c| c.name());
        let i = usize::from(code).min(self.error_reply_counters.len() - 1);
        let family = &self.error_replies;
        self.error_reply_counters[i]
            .get_or_insert_with(|| family.get_or_create(&[("code", name)]).clone())
            .inc();
    }
}

/// Serves `reg` and `health` over HTTP on `listen` from a thread of its own,
/// for the life of the process. Returns the address bound (port 0 picks one).
pub fn serve(listen: SocketAddr, reg: Registry, health: Arc<Health>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("trex-metrics".into())
        .spawn(move || {
            loop {
                // One client at a time, each bounded by HTTP_TIMEOUT: a
                // scraper asks a few times a minute.
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = answer(s, &reg, &health);
                    }
                    // Out of descriptors, say: do not spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok(local)
}

/// Reads one request, writes one response, closes.
fn answer(mut s: TcpStream, reg: &Registry, health: &Health) -> io::Result<()> {
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST_BYTES {
            return respond(&mut s, 431, "text/plain", "request header too large\n");
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(()); // closed before a whole request
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return respond(
            &mut s,
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n",
        );
    }
    if method != "GET" && method != "HEAD" {
        return respond(&mut s, 405, "text/plain", "only GET is allowed\n");
    }
    let (code, ctype, body) = match path {
        "/metrics" => {
            let mut out = String::with_capacity(16 * 1024);
            match encode(&mut out, reg) {
                Ok(()) => (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => (500, "text/plain", "cannot encode the metrics\n".into()),
            }
        }
        "/healthz" => match health.live() {
            Ok(m) => (200, "text/plain", m + "\n"),
            Err(m) => (503, "text/plain", m + "\n"),
        },
        _ => match health.ready() {
            Ok(m) => (200, "text/plain", m + "\n"),
            Err(m) => (503, "text/plain", m + "\n"),
        },
    };
    let body = if method == "HEAD" { "" } else { &body };
    respond(&mut s, code, ctype, body)
}

fn respond(s: &mut TcpStream, code: u16, ctype: &str, body: &str) -> io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_health_and_refuses_the_rest() {
        let build = BuildInfo {
            version: "9.9.9",
            revision: "abc",
        };
        let mut reg = registry(&build);
        let mut lm = LoopMetrics::default();
        lm.register(&mut reg);
        lm.request(trex_wire::Opcode::Write as u8);
        lm.replied(trex_wire::Opcode::Write as u8, Duration::from_millis(1));
        lm.error(ErrorKind::Refused);
        lm.error_reply(trex_wire::ErrorCode::SealedEpoch as u16);
        let health = Arc::new(Health::default());
        health.beat(Instant::now());
        let addr = serve("127.0.0.1:0".parse().unwrap(), reg, health.clone()).unwrap();
        let m = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(
            m.contains("trex_build_info{version=\"9.9.9\",revision=\"abc\"} 1"),
            "{m}"
        );
        assert!(m.contains("trex_requests_total{op=\"write\"} 1"), "{m}");
        assert!(
            m.contains("trex_request_duration_seconds_count{op=\"write\"} 1"),
            "{m}"
        );
        assert!(m.contains("trex_errors_total{kind=\"refused\"} 1"), "{m}");
        assert!(m.contains("trex_errors_total{kind=\"evicted\"} 0"), "{m}");
        assert!(
            m.contains("trex_error_replies_total{code=\"sealed-epoch\"} 1"),
            "{m}"
        );
        assert!(m.trim_end().ends_with("# EOF"), "{m}");
        let h = get(addr, "GET /healthz HTTP/1.1\r\n\r\n");
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        let r = get(addr, "GET /readyz HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("starting\n"),
            "{r}"
        );
        health.set_ready(true, "serving");
        let r = get(addr, "GET /readyz HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("serving\n"),
            "{r}"
        );
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        health.set_stopped();
        assert!(get(addr, "GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503"));
    }
}
