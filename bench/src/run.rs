//! The driver every workload runs under: one thread per client, the pace
//! (a schedule in open loop, none in closed loop), the warm-up, the bounds,
//! Ctrl-C, the progress line and the interval histograms.
//!
//! A client thread connects, calls [`Ctx::start`] (all clients start the clock
//! together), then asks [`Ctx::next`] for each request it may send and reports
//! each one with [`Ctx::done`] or [`Ctx::failed`]. In open loop `next` hands out
//! the requests of one schedule shared by all clients (request `k` is due at
//! `start + k / rate`) and sleeps until the request is due; a client that is
//! still busy when a request falls due sends it late, and the latency counts
//! from when it was due, so a stall is charged to every request it delayed
//! (the coordinated-omission correction of wrk2 and HdrHistogram). In closed
//! loop a request is due when it is asked for.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a run is paced and bounded (checked before anything connects).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Open loop: requests per second over all clients. `None`: closed loop.
    pub request_rate: Option<f64>,
    /// Run this long before measuring.
    pub warmup: Duration,
    /// Measure this long (`None`: until `requests`).
    pub duration: Option<Duration>,
    /// Measure this many requests (`None`: for `duration`).
    pub requests: Option<u64>,
}

/// One request a client may send: when it is due, and whether it is measured
/// (its latency and operations count) or part of the warm-up.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// When the request is due: its scheduled time in open loop, the moment it
    /// was asked for in closed loop. Latency counts from here.
    pub due: Instant,
    measured: bool,
}

/// A client thread's body: connects, calls [`Ctx::start`], runs requests
/// until [`Ctx::next`] says stop, cleans up. An `Err` is fatal for this client
/// only (the others go on); it names what failed and what to do.
pub type ClientFn = dyn Fn(usize, &mut Ctx) -> Result<(), String> + Send + Sync;

/// How long clients get, after a Ctrl-C, to finish the requests they have in
/// flight and clean up before the summary is printed without them.
const GRACE: Duration = Duration::from_secs(5);

/// What the clients share.
struct Shared {
    pace: Pace,
    /// When the clients started (set by the first client through the barrier).
    origin: OnceLock<Instant>,
    start: Barrier,
    /// Open loop: requests handed out (the next request's index).
    next: AtomicU64,
    /// Closed loop: measured requests handed out.
    claimed: AtomicU64,
    /// Measured requests handed out (sent), both modes.
    sent: AtomicU64,
    stop: AtomicBool,
    /// Operations completed, the warm-up included (for the progress line).
    ops_all: AtomicU64,
    /// Failed requests, the warm-up included (for the progress line).
    errors_all: AtomicU64,
    /// Measured operations completed (of failed requests too: their part that
    /// succeeded).
    ops: AtomicU64,
    /// Measured requests that succeeded (the latency histogram's count).
    requests: AtomicU64,
    /// Measured requests that failed, by kind: count and the first message.
    errors: Mutex<BTreeMap<String, (u64, String)>>,
    /// Nanoseconds from `origin` to the last measured completion.
    last_done_ns: AtomicU64,
    /// Each client's histogram of the current interval.
    recorders: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>>,
}

/// A client's handle on the run.
pub struct Ctx {
    s: Arc<Shared>,
    rec: Arc<Mutex<Histogram<u64>>>,
    started: bool,
    origin: Instant,
    measure_start: Instant,
    /// Open loop: nanoseconds between requests.
    interval_ns: Option<f64>,
    /// Open loop: requests due before `measure_start`.
    warmup_requests: u64,
    /// The end of the measurement, if bounded in time.
    end: Option<Instant>,
}

/// Latencies from 1 µs to 10 minutes at 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant, valid histogram bounds")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A client that panicked mid-record leaves a histogram or counter that is
    // still consistent enough to report.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pace {
    /// Open loop: the first measured request's index and the time from the
    /// start to it; closed loop: (0, the warm-up).
    fn warmup_split(&self) -> (u64, Duration) {
        match self.request_rate {
            Some(rate) => {
                let n = (self.warmup.as_secs_f64() * rate).ceil() as u64;
                (n, Duration::from_secs_f64(n as f64 / rate))
            }
            None => (0, self.warmup),
        }
    }

    /// Open loop: how many requests fall due in the measurement.
    fn scheduled(&self) -> Option<u64> {
        let rate = self.request_rate?;
        let by_time = self
            .duration
            .map(|d| (d.as_secs_f64() * rate).ceil() as u64);
        match (by_time, self.requests) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Ctx {
    fn new(s: Arc<Shared>) -> Ctx {
        let rec = Arc::new(Mutex::new(new_hist()));
        lock(&s.recorders).push(rec.clone());
        let now = Instant::now();
        Ctx {
            s,
            rec,
            started: false,
            origin: now,
            measure_start: now,
            interval_ns: None,
            warmup_requests: 0,
            end: None,
        }
    }

    /// Waits until every client is connected (or has failed), then fixes the
    /// clock: the schedule, the warm-up and the bounds start now, for all
    /// clients at once. Calling it again does nothing.
    pub fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.s.start.wait();
        let pace = self.s.pace;
        self.origin = *self.s.origin.get_or_init(Instant::now);
        let (warmup_requests, warmup) = pace.warmup_split();
        self.warmup_requests = warmup_requests;
        self.measure_start = self.origin + warmup;
        self.interval_ns = pace.request_rate.map(|r| 1e9 / r);
        self.end = pace.duration.map(|d| self.measure_start + d);
    }

    /// Whether the run is over for new requests (bounds reached or Ctrl-C).
    pub fn stopping(&self) -> bool {
        self.s.stop.load(Ordering::Relaxed)
    }

    /// The next request to send, or `None` when the run is over. In open loop
    /// this sleeps until the request is due.
    pub fn next(&mut self) -> Option<Slot> {
        debug_assert!(self.started, "Ctx::start comes before the first request");
        if self.stopping() {
            return None;
        }
        let s = &*self.s;
        let slot = match self.interval_ns {
            Some(interval_ns) => {
                let k = s.next.fetch_add(1, Ordering::Relaxed);
                let due = self.origin + Duration::from_nanos((k as f64 * interval_ns) as u64);
                let measured = k >= self.warmup_requests;
                if measured {
                    let m = k - self.warmup_requests;
                    if s.pace.requests.is_some_and(|n| m >= n) {
                        return None;
                    }
                    // Due after the end, or due before it and still not sent
                    // when it came: either way, not sent (counted as missed).
                    if self
                        .end
                        .is_some_and(|end| due >= end || Instant::now() >= end)
                    {
                        return None;
                    }
                }
                loop {
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    if self.stopping() {
                        return None;
                    }
                    std::thread::sleep((due - now).min(Duration::from_millis(20)));
                }
                Slot { due, measured }
            }
            None => {
                let now = Instant::now();
                let measured = now >= self.measure_start;
                if measured {
                    if self.end.is_some_and(|end| now >= end) {
                        return None;
                    }
                    if let Some(n) = s.pace.requests {
                        if s.claimed.fetch_add(1, Ordering::Relaxed) >= n {
                            return None;
                        }
                    }
                }
                Slot { due: now, measured }
            }
        };
        if slot.measured {
            s.sent.fetch_add(1, Ordering::Relaxed);
        }
        Some(slot)
    }

    /// Reports a request that succeeded with `ops` operations.
    pub fn done(&mut self, slot: Slot, ops: u64) {
        let now = Instant::now();
        let s = &*self.s;
        s.ops_all.fetch_add(ops, Ordering::Relaxed);
        if !slot.measured {
            return;
        }
        let us = now.saturating_duration_since(slot.due).as_micros() as u64;
        lock(&self.rec).saturating_record(us.max(1));
        s.ops.fetch_add(ops, Ordering::Relaxed);
        s.requests.fetch_add(1, Ordering::Relaxed);
        self.completed(now);
    }

    /// Reports a request that failed (`ok_ops` of its operations succeeded);
    /// `kind` names the failure for the summary's errors by kind, `message`
    /// says what happened.
    pub fn failed(&mut self, slot: Slot, ok_ops: u64, kind: &str, message: &str) {
        let now = Instant::now();
        let s = &*self.s;
        s.ops_all.fetch_add(ok_ops, Ordering::Relaxed);
        s.errors_all.fetch_add(1, Ordering::Relaxed);
        if !slot.measured {
            return;
        }
        s.ops.fetch_add(ok_ops, Ordering::Relaxed);
        lock(&s.errors)
            .entry(kind.to_string())
            .or_insert_with(|| (0, message.to_string()))
            .0 += 1;
        self.completed(now);
    }

    fn completed(&self, now: Instant) {
        let ns = now.saturating_duration_since(self.origin).as_nanos() as u64;
        self.s.last_done_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

/// One interval's histogram, as the run hands it to the histogram log.
pub struct Interval<'a> {
    /// When the interval began.
    pub start: Instant,
    /// How long it lasted.
    pub length: Duration,
    /// The latencies (µs) of the requests measured in it.
    pub hist: &'a Histogram<u64>,
}

/// One point of the latency-over-time plot.
#[derive(Clone, Copy, Debug)]
pub struct IntervalPoint {
    /// Seconds from the start of the measurement to the end of the interval.
    pub t_s: f64,
    /// Requests measured in the interval.
    pub count: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Maximum, µs.
    pub max_us: u64,
}

/// What a run measured.
pub struct Outcome {
    /// Every measured request's latency (µs).
    pub hist: Histogram<u64>,
    /// One point per interval, for the plot.
    pub points: Vec<IntervalPoint>,
    /// Measured operations completed.
    pub ops: u64,
    /// Measured requests that succeeded.
    pub requests: u64,
    /// Measured requests that failed, by kind: count and the first message.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Seconds from the start of the measurement to its last completion.
    pub seconds: f64,
    /// Open loop, not interrupted: requests that fell due in the measurement
    /// but were not sent before it ended (the clients could not keep up).
    pub missed: Option<u64>,
    /// The signal that stopped the run early, if one did.
    pub interrupted: Option<i32>,
    /// Clients that failed for good, with why.
    pub failures: Vec<String>,
}

/// Runs `clients` copies of `client` under `pace`, printing a progress line
/// (labelled `label`) every second on standard error and handing every
/// interval's histogram to `sink`. Returns when every client is done, or
/// [`GRACE`] after a signal in `signals` (SIGINT, SIGTERM; blocked by the
/// caller), whichever is first; a second signal stops the wait at once.
pub fn run(
    label: &str,
    clients: usize,
    pace: Pace,
    client: Arc<ClientFn>,
    signals: &libc::sigset_t,
    sink: &mut dyn FnMut(&Interval<'_>) -> std::io::Result<()>,
) -> Result<Outcome, String> {
    let shared = Arc::new(Shared {
        pace,
        origin: OnceLock::new(),
        start: Barrier::new(clients),
        next: AtomicU64::new(0),
        claimed: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        ops_all: AtomicU64::new(0),
        errors_all: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        last_done_ns: AtomicU64::new(0),
        recorders: Mutex::new(Vec::new()),
    });
    let handles = spawn_clients(&shared, clients, &client);
    let (_, warmup) = pace.warmup_split();
    let mut intervals = Intervals::new();
    let mut tick: Option<Instant> = None;
    let mut last: Option<(u64, Instant)> = None;
    let mut interrupted = None;
    let mut gave_up = None;
    loop {
        if handles.iter().all(JoinHandle::is_finished) {
            break;
        }
        // Wake for a signal, a client finishing (looked at every 50 ms), or
        // the next tick, whichever comes first.
        let until_tick = tick.map_or(Duration::from_millis(50), |t| {
            t.saturating_duration_since(Instant::now())
        });
        let wait = until_tick.clamp(Duration::from_millis(1), Duration::from_millis(50));
        if let Some(sig) = wait_signal(signals, wait) {
            if interrupted.is_some() {
                eprintln!("signal {sig} again: not waiting for the clients any longer");
                break;
            }
            interrupted = Some(sig);
            shared.stop.store(true, Ordering::SeqCst);
            gave_up = Some(Instant::now() + GRACE);
            eprintln!(
                "stopping (signal {sig}): waiting up to {} for requests in flight; Ctrl-C again to quit at once", trex_net::util::duration_text(GRACE)
            );
        }
        if gave_up.is_some_and(|t| Instant::now() >= t) {
            eprintln!(
                "clients still busy after {}: summarising without them",
                trex_net::util::duration_text(GRACE)
            );
            break;
        }
        let Some(&origin) = shared.origin.get() else {
            continue; // still connecting
        };
        let measure_start = origin + warmup;
        let now = Instant::now();
        let due = *tick.get_or_insert_with(|| next_tick(origin, measure_start, origin));
        if now < due {
            continue;
        }
        tick = Some(next_tick(origin, measure_start, now));
        let warming = due <= measure_start;
        let p99 = if warming {
            None
        } else {
            intervals.rotate(&shared, now, measure_start, sink)
        };
        let n = shared.ops_all.load(Ordering::Relaxed);
        let (n0, t0) = last.unwrap_or((0, origin));
        last = Some((n, now));
        eprintln!(
            "  {:>5.1}s  {:>10} ops  {:>10.0} ops/s  p99 {:>9}  errors {}{}",
            (now - origin).as_secs_f64(),
            n,
            (n - n0) as f64 / (now - t0).as_secs_f64().max(1e-9),
            p99.map_or("-".to_string(), crate::report::fmt_us),
            shared.errors_all.load(Ordering::Relaxed),
            if warming {
                format!("  ({label}: warm-up)")
            } else {
                String::new()
            }
        );
    }
    shared.stop.store(true, Ordering::SeqCst);
    let failures = join_clients(handles);

    let origin = shared.origin.get().copied();
    let mut seconds = 0.0;
    if let Some(origin) = origin {
        let measure_start = origin + warmup;
        let now = Instant::now();
        if now > measure_start {
            intervals.rotate(&shared, now, measure_start, sink);
        }
        let last_ns = shared.last_done_ns.load(Ordering::Relaxed);
        let end = if last_ns > 0 {
            origin + Duration::from_nanos(last_ns)
        } else {
            now
        };
        seconds = end.saturating_duration_since(measure_start).as_secs_f64();
    }
    if let Some(e) = intervals.sink_error {
        return Err(format!("cannot write the histogram log: {e}"));
    }
    let sent = shared.sent.load(Ordering::Relaxed);
    let errors = std::mem::take(&mut *lock(&shared.errors));
    Ok(Outcome {
        hist: intervals.total,
        points: intervals.points,
        ops: shared.ops.load(Ordering::Relaxed),
        requests: shared.requests.load(Ordering::Relaxed),
        errors,
        seconds,
        missed: match (interrupted, origin.is_some()) {
            (None, true) => pace.scheduled().map(|n| n.saturating_sub(sent)),
            _ => None,
        },
        interrupted,
        failures,
    })
}

/// One thread per client, each running `client` under its own [`Ctx`].
fn spawn_clients(
    shared: &Arc<Shared>,
    clients: usize,
    client: &Arc<ClientFn>,
) -> Vec<JoinHandle<Result<(), String>>> {
    (0..clients)
        .map(|i| {
            let (s, client) = (shared.clone(), client.clone());
            std::thread::spawn(move || {
                let mut ctx = Ctx::new(s);
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| client(i, &mut ctx)));
                // A client that failed before starting still passes the
                // barrier, or the others would wait for it for ever.
                ctx.start();
                r.unwrap_or_else(|_| Err(format!("client {i} panicked (a bug: please report it)")))
            })
        })
        .collect()
}

/// Why clients failed; a client still busy (after a Ctrl-C's grace) is left
/// running and counted.
fn join_clients(handles: Vec<JoinHandle<Result<(), String>>>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut busy = 0;
    for (i, h) in handles.into_iter().enumerate() {
        if !h.is_finished() {
            busy += 1;
            continue;
        }
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("client {i}: {e}")),
            Err(_) => failures.push(format!("client {i} panicked (a bug: please report it)")),
        }
    }
    if busy > 0 {
        failures.push(format!(
            "{busy} client(s) were still waiting for replies when the summary was taken"
        ));
    }
    failures
}

/// The measurement, interval by interval: the clients' histograms are taken
/// (and reset) once a second, handed to the sink, and added to the total.
struct Intervals {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    points: Vec<IntervalPoint>,
    /// The end of the last interval taken (`None`: none yet).
    rotated: Option<Instant>,
    sink_error: Option<std::io::Error>,
}

impl Intervals {
    fn new() -> Intervals {
        Intervals {
            total: new_hist(),
            interval: new_hist(),
            points: Vec::new(),
            rotated: None,
            sink_error: None,
        }
    }

    /// Ends the current interval at `now`; returns its p99 (µs) if it
    /// measured anything.
    fn rotate(
        &mut self,
        shared: &Shared,
        now: Instant,
        measure_start: Instant,
        sink: &mut dyn FnMut(&Interval<'_>) -> std::io::Result<()>,
    ) -> Option<u64> {
        let from = *self.rotated.get_or_insert(measure_start);
        if now <= from {
            return None;
        }
        self.rotated = Some(now);
        let iv = &mut self.interval;
        iv.reset();
        for r in lock(&shared.recorders).iter() {
            let mut h = lock(r);
            // Same bounds everywhere: adding cannot fail.
            let _ = iv.add(&*h);
            h.reset();
        }
        let _ = self.total.add(&*iv);
        if let Err(e) = sink(&Interval {
            start: from,
            length: now - from,
            hist: iv,
        }) {
            self.sink_error.get_or_insert(e);
        }
        let p99 = iv.value_at_quantile(0.99);
        self.points.push(IntervalPoint {
            t_s: (now - measure_start).as_secs_f64(),
            count: iv.len(),
            p50_us: iv.value_at_quantile(0.5),
            p99_us: p99,
            max_us: iv.max(),
        });
        (!iv.is_empty()).then_some(p99)
    }
}

/// The first progress tick after `after`: every whole second from `origin`
/// during the warm-up (up to its end), then every second from the start of the
/// measurement, so that each interval of the histogram log is a whole second.
fn next_tick(origin: Instant, measure_start: Instant, after: Instant) -> Instant {
    let second = Duration::from_secs(1);
    if after < measure_start {
        let k = after.saturating_duration_since(origin).as_secs() + 1;
        let t = origin + second * k as u32;
        if t <= measure_start {
            return t;
        }
    }
    let j = after.saturating_duration_since(measure_start).as_secs() + 1;
    measure_start + second * j as u32
}

/// Waits up to `timeout` for one of the (blocked) signals in `set`.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is a valid, initialised sigset; a null info pointer is
    // allowed.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_loop_warm_up_ends_on_a_scheduled_request() {
        let pace = Pace {
            request_rate: Some(400.0),
            warmup: Duration::from_millis(1001),
            duration: Some(Duration::from_secs(2)),
            requests: Some(10_000),
        };
        // 1.001 s at 400/s: requests 0..=400 are warm-up; 401 is first measured.
        let (n, d) = pace.warmup_split();
        assert_eq!(n, 401);
        assert_eq!(d, Duration::from_secs_f64(401.0 / 400.0));
        assert_eq!(pace.scheduled(), Some(800));
        let closed = Pace {
            request_rate: None,
            ..pace
        };
        assert_eq!(closed.warmup_split(), (0, Duration::from_millis(1001)));
        assert_eq!(closed.scheduled(), None);
    }

    #[test]
    fn progress_ticks_each_second_and_intervals_start_at_the_measurement() {
        let o = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        // A 1.0002 s warm-up: a warm-up tick at 1 s, then 1 s after its end.
        let m = o + ms(1000) + Duration::from_micros(200);
        assert_eq!(next_tick(o, m, o), o + ms(1000));
        assert_eq!(next_tick(o, m, o + ms(1010)), m + ms(1000));
        assert_eq!(next_tick(o, m, m + ms(1003)), m + ms(2000));
        // A warm-up of exactly 1 s: its end is a tick (a warm-up one).
        let m = o + ms(1000);
        assert_eq!(next_tick(o, m, o + ms(20)), m);
        assert_eq!(next_tick(o, m, m), m + ms(1000));
        // No warm-up.
        assert_eq!(next_tick(o, o, o), o + ms(1000));
        // A late loop skips the ticks it missed.
        assert_eq!(next_tick(o, o, o + ms(3500)), o + ms(4000));
    }
}
