//! Small helpers shared by the binaries: human sizes and durations on the
//! command line, and timestamped log lines.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 64 random bits from the kernel (`/dev/urandom`), for ids that must not
/// collide between clients (writer ids, consensus client ids); falls back to
/// the time and process id mixed, should the device be unreadable.
pub fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Parses a size such as `4096`, `4KiB`, `64MiB`, `1M` or `2GB`. Binary
/// suffixes (`KiB`, `MiB`, `GiB`) and their one-letter forms (`K`, `M`, `G`)
/// mean powers of 1024; `KB`, `MB`, `GB` mean powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("'{s}' is not a size: write a number with an optional unit, like 4KiB or 64MiB")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
            "unknown size unit '{other}' in '{s}': use B, KiB, MiB, GiB (or K, M, G), KB, MB, GB"
        ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h` or `250us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("'{s}' is not a duration: write a number and a unit, like 10s or 500ms")
    })?;
    let secs = match unit.trim() {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}': use us, ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration '{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Numbers for a message (unit ids, stripes, addresses): `3, 7, 9`; past
/// the first ten, how many more there are.
pub fn list_text<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOWN: usize = 10;
    let mut s = items
        .iter()
        .take(SHOWN)
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// The last millisecond RFC 3339 can write with a four-digit year.
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// Unix milliseconds as an RFC 3339 UTC time with milliseconds
/// (`2026-12-01T04:05:06.123Z`), for people beside the number; times after
/// year 9999 are written as its last millisecond.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.min(MAX_RFC3339_MS));
    humantime::format_rfc3339_millis(t).to_string()
}

/// A duration as people write it, in the form [`parse_duration`] reads back:
/// `2h`, `10m`, `6s`, `1.5s`, `500ms`, `0.25ms`, `40us`, `0s` (to the
/// microsecond). For messages, instead of Rust's debug form.
pub fn duration_text(d: Duration) -> String {
    let us = d.as_micros();
    // A whole count of `unit`, or the count in it with up to three decimals.
    let in_unit = |per: u128, unit: &str| {
        if us.is_multiple_of(per) {
            format!("{}{unit}", us / per)
        } else {
            let t = format!("{:.3}", us as f64 / per as f64);
            format!("{}{unit}", t.trim_end_matches('0').trim_end_matches('.'))
        }
    };
    match us {
        0 => "0s".to_string(),
        _ if us.is_multiple_of(3_600_000_000) => in_unit(3_600_000_000, "h"),
        _ if us.is_multiple_of(60_000_000) => in_unit(60_000_000, "m"),
        1_000_000.. => in_unit(1_000_000, "s"),
        1_000.. => in_unit(1_000, "ms"),
        _ => format!("{us}us"),
    }
}

/// Logs a line through `tracing` at a level given as a literal (`"ERROR"`,
/// `"WARN"`, `"INFO"`, `"DEBUG"`). The binary's subscriber writes it to
/// standard error with a timestamp and the level, filtered by `TREX_LOG` (or
/// `RUST_LOG`; `info` by default) and as text or JSON (`--log-format`).
/// Without a subscriber (a library user) nothing is printed.
#[macro_export]
macro_rules! log_line {
    ("ERROR", $($arg:tt)*) => {
        if !$crate::util::log_quiet() {
            $crate::tracing::error!("{}", format_args!($($arg)*))
        }
    };
    ("WARN", $($arg:tt)*) => {
        if !$crate::util::log_quiet() {
            $crate::tracing::warn!("{}", format_args!($($arg)*))
        }
    };
    ("INFO", $($arg:tt)*) => {
        if !$crate::util::log_quiet() {
            $crate::tracing::info!("{}", format_args!($($arg)*))
        }
    };
    ("DEBUG", $($arg:tt)*) => {
        if !$crate::util::log_quiet() {
            $crate::tracing::debug!("{}", format_args!($($arg)*))
        }
    };
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silences [`log_line!`] on this thread (the simulator's actors, which would
/// otherwise print every simulated failover).
pub fn set_log_quiet(quiet: bool) {
    QUIET.with(|q| q.set(quiet));
}

/// Whether [`log_line!`] is silenced on this thread.
pub fn log_quiet() -> bool {
    QUIET.with(|q| q.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn lists_are_written_for_people() {
        assert_eq!(list_text::<u64>(&[]), "");
        assert_eq!(list_text(&[3, 7, 9]), "3, 7, 9");
        let many: Vec<u64> = (0..25).collect();
        assert_eq!(list_text(&many), "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 15 more");
    }

    #[test]
    fn durations_are_written_as_they_are_read() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(6), "6s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(333), "333ms"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_micros(1_250), "1.25ms"),
            (Duration::from_secs(90), "90s"),
        ];
        for (d, text) in cases {
            assert_eq!(duration_text(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text} reads back");
        }
        assert_eq!(duration_text(Duration::from_millis(20_001)), "20.001s");
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert!(parse_size("4XB").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
    }
}

/// Logs a repeated event at most once per interval, with how many times it
/// happened since the last line: a flood of refused connections or dropped
/// messages costs one log line per interval, not one per event.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    count: u64,
}

impl Throttle {
    /// At most one line per `every`.
    pub const fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            count: 0,
        }
    }

    /// Counts one event; returns how many happened (this one included) since
    /// the last time it returned `Some`, when a line is due now.
    pub fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Takes the exclusive lock of a node's data directory: `flock` on `DIR/LOCK`,
/// which then holds this process's pid. Held for as long as the returned file
/// is open (the process's life). Every role that owns a data directory takes
/// it first, so two processes never run on one directory.
///
/// Errors: the lock is held (the message names the holder's pid and says what
/// to do), or the file cannot be opened or written.
pub fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a valid, owned file descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(format!(
            "data directory {} is in use by another process (pid {}); stop that process or choose another --data-dir",
            dir.display(),
            holder.trim()
        ));
    }
    f.set_len(0)
        .and_then(|_| write!(f, "{}", std::process::id()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(f)
}

/// Tells a supervisor that speaks systemd's notify protocol (`Type=notify`)
/// something about this process: `READY=1` once it serves, `STOPPING=1` when it
/// shuts down, with a `STATUS=` line for people. Sent as one datagram to the
/// Unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for an abstract
/// socket); does nothing without it. Errors are logged, never fatal.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let sock = UnixDatagram::unbound()?;
        let p = path.to_string_lossy();
        let addr = match p.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(p.as_ref())?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        crate::log_line!(
            "WARN",
            "cannot notify the supervisor (\"{}\"): {e}",
            state.replace('\n', " ")
        );
    }
}

/// Lowers the calling thread's CPU priority (nice 10), for threads doing
/// background work (file preparation, checkpoint encoding): on a busy
/// machine with few cores they otherwise take the CPU from the event loop
/// for a whole time slice at a time (a profile showed a unit's loop
/// runnable and waiting 24 ms). Best effort: a failure leaves the priority.
pub fn lower_priority() {
    // SAFETY: gettid and setpriority on the calling thread; no memory involved.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
