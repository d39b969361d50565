//! What a run prints and writes: the summary (a table, or JSON for scripts)
//! and the HdrHistogram interval log.

use crate::run::Outcome;
use hdrhistogram::serialization::interval_log::{IntervalLogWriter, IntervalLogWriterBuilder};
use hdrhistogram::serialization::V2DeflateSerializer;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

/// What was run, for the summary's heading.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The workload's name (the subcommand).
    pub workload: &'static str,
    /// Client threads (connections).
    pub clients: usize,
    /// Open loop: the offered load in operations per second.
    pub rate: Option<f64>,
    /// Operations each request carries (entries, addresses, pairs).
    pub ops_per_request: u64,
    /// Bytes per operation, for MB/s (0: not a byte workload).
    pub size: u64,
    /// The warm-up left out of the figures.
    pub warmup: Duration,
    /// Whether acknowledgements meant durability (`None`: not known here).
    pub durable: Option<bool>,
}

/// The figures of a run.
pub struct Summary<'a> {
    info: &'a RunInfo,
    out: &'a Outcome,
}

/// A latency in µs as people read it: `850us`, `1.25ms`, `12.5ms`, `2.1s`.
pub fn fmt_us(us: u64) -> String {
    let (v, unit) = match us {
        0..=999 => return format!("{us}us"),
        1_000..=999_999 => (us as f64 / 1e3, "ms"),
        _ => (us as f64 / 1e6, "s"),
    };
    // Three significant digits at most, without trailing zeros.
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{v:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{unit}")
}

/// A duration as people read it: `0s`, `500ms`, `1.5s`, `10s`.
pub fn fmt_duration(d: Duration) -> String {
    match d.as_micros() {
        0 => "0s".to_string(),
        us => fmt_us(us as u64),
    }
}

/// `1 client` or `16 clients`.
pub fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

impl<'a> Summary<'a> {
    /// The summary of `out`.
    pub fn new(info: &'a RunInfo, out: &'a Outcome) -> Summary<'a> {
        Summary { info, out }
    }

    fn per_s(&self, n: u64) -> f64 {
        if self.out.seconds > 0.0 {
            n as f64 / self.out.seconds
        } else {
            0.0
        }
    }

    /// Failed requests (measured).
    pub fn errors(&self) -> u64 {
        self.out.errors.values().map(|(n, _)| n).sum()
    }

    /// The latency percentiles (µs): min, p50, p90, p99, p99.9, max.
    fn latency(&self) -> [u64; 6] {
        let h = &self.out.hist;
        if h.is_empty() {
            return [0; 6];
        }
        [
            h.min(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
        ]
    }

    /// "open loop at 1000 ops/s" or "closed loop".
    pub fn mode(&self) -> String {
        match self.info.rate {
            Some(r) => format!("open loop at {r} ops/s offered"),
            None => "closed loop".to_string(),
        }
    }

    /// The summary as a table on standard output.
    pub fn print(&self) {
        let (info, out) = (self.info, self.out);
        let ops_s = self.per_s(out.ops);
        println!(
            "{}: {}, {}, {} per request; warm-up {} not counted{}",
            info.workload,
            self.mode(),
            plural(info.clients as u64, "client"),
            plural(info.ops_per_request, "op"),
            fmt_duration(info.warmup),
            match out.interrupted {
                Some(sig) => format!("; stopped early by signal {sig}"),
                None => String::new(),
            }
        );
        let mb = if info.size > 0 {
            format!(", {:.1} MB/s", ops_s * info.size as f64 / 1e6)
        } else {
            String::new()
        };
        println!(
            "  {} ops in {:.2}s = {:.0} ops/s{mb}; {} requests = {:.0} requests/s{}",
            out.ops,
            out.seconds,
            ops_s,
            out.requests,
            self.per_s(out.requests),
            match info.durable {
                Some(false) => " (not durable: the unit runs with --sync never)",
                _ => "",
            }
        );
        let [min, p50, p90, p99, p999, max] = self.latency();
        println!(
            "  latency per request, {} (us): min {min}  p50 {p50}  p90 {p90}  p99 {p99}  p99.9 {p999}  max {max}",
            if info.rate.is_some() {
                "from its scheduled send"
            } else {
                "from its send"
            }
        );
        if out.errors.is_empty() {
            println!("  errors: none");
        } else {
            println!("  errors: {} failed requests", self.errors());
            for (kind, (n, first)) in &out.errors {
                println!("    {kind}: {n} (first: {first})");
            }
        }
        if let Some(m) = out.missed.filter(|m| *m > 0) {
            println!(
                "  missed: {m} requests fell due but were not sent before the end: the clients could not keep up with --rate (add --clients, or lower --rate)"
            );
        }
        for f in &out.failures {
            println!("  failed: {f}");
        }
    }

    /// The summary as JSON (what scripts read; `docs/benchmarks.md`).
    pub fn json(&self) -> Value {
        let (info, out) = (self.info, self.out);
        let [min, p50, p90, p99, p999, max] = self.latency();
        let ops_s = self.per_s(out.ops);
        let errors: serde_json::Map<String, Value> = out
            .errors
            .iter()
            .map(|(k, (n, _))| (k.clone(), json!(n)))
            .collect();
        let first: serde_json::Map<String, Value> = out
            .errors
            .iter()
            .map(|(k, (_, m))| (k.clone(), json!(m)))
            .collect();
        json!({
            "workload": info.workload,
            "mode": if info.rate.is_some() { "open-loop" } else { "closed-loop" },
            "rate": info.rate,
            "clients": info.clients,
            "ops_per_request": info.ops_per_request,
            "size": info.size,
            "warmup_s": info.warmup.as_secs_f64(),
            "seconds": out.seconds,
            "ops": out.ops,
            "ops_per_s": ops_s,
            "mb_per_s": ops_s * info.size as f64 / 1e6,
            "requests": out.requests,
            "requests_per_s": self.per_s(out.requests),
            "errors": self.errors(),
            "errors_by_kind": errors,
            "first_error_by_kind": first,
            "missed": out.missed,
            "interrupted": out.interrupted.is_some(),
            "client_failures": out.failures,
            "durable": info.durable,
            "latency_us": {
                "min": min, "mean": out.hist.mean(), "p50": p50, "p90": p90,
                "p99": p99, "p999": p999, "max": max,
            },
        })
    }
}

/// The latency histogram, written as an HdrHistogram interval log (one
/// histogram per second of the measurement) while the run goes on.
pub struct HistogramLog<'w, W: Write> {
    writer: IntervalLogWriter<'w, 'w, W, V2DeflateSerializer>,
    /// The log's BaseTime as an `Instant`: interval timestamps count from here.
    base: Instant,
}

impl<'w, W: Write> HistogramLog<'w, W> {
    /// Writes the log's header to `out`.
    pub fn begin(
        out: &'w mut W,
        serializer: &'w mut V2DeflateSerializer,
        what: &str,
    ) -> std::io::Result<HistogramLog<'w, W>> {
        let (base, wall) = (Instant::now(), SystemTime::now());
        let writer = IntervalLogWriterBuilder::new()
            .add_comment(&format!("[trex-bench {what}]"))
            .add_comment(
                "[values are latencies in microseconds (max column in milliseconds); the warm-up is not in this log]",
            )
            .with_start_time(wall)
            .with_base_time(wall)
            .with_max_value_divisor(1000.0)
            .begin_log_with(out, serializer)?;
        Ok(HistogramLog { writer, base })
    }

    /// Appends one interval's histogram.
    pub fn write(&mut self, iv: &crate::run::Interval<'_>) -> std::io::Result<()> {
        self.writer
            .write_histogram(
                iv.hist,
                iv.start.saturating_duration_since(self.base),
                iv.length,
                None,
            )
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_read_in_the_unit_that_fits() {
        assert_eq!(fmt_us(850), "850us");
        assert_eq!(fmt_us(1_000), "1ms");
        assert_eq!(fmt_us(1_254), "1.25ms");
        assert_eq!(fmt_us(12_500), "12.5ms");
        assert_eq!(fmt_us(100_000), "100ms");
        assert_eq!(fmt_us(2_100_000), "2.1s");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(plural(1, "op"), "1 op");
        assert_eq!(plural(2, "client"), "2 clients");
    }
}
