//! The shared log: `trex append`, `read`, `tail`, `trim` and `check`.

use crate::common::{escape, resolve_endpoints, Endpoints};
use crate::error::CliError;
use clap::Args;
use std::time::Duration;
use trex_log::{Log, LogError, Slot};

#[derive(Args)]
pub struct AppendArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// The entry, or `-` (each line of standard input is one entry).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    data: Option<String>,
    /// Append the whole file as one entry, byte for byte (binary data too;
    /// `-` reads standard input to its end). Prints its address.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct ReadArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// First address.
    addr: u64,
    /// How many addresses.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Write the entries' bytes exactly as stored, nothing else (no address,
    /// no escaping, no newline): for binary entries (`trex read 7 --raw >
    /// file`). An address that holds no entry is an error (exit 1).
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// First address.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep waiting for new entries (fills holes that stay unwritten for 1 s).
    #[arg(long)]
    follow: bool,
}

#[derive(Args)]
pub struct TrimArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// New trim mark.
    prefix: u64,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// Ask the sequencer instead (one round trip; counts addresses handed
    /// out but not yet written).
    #[arg(long)]
    fast: bool,
}

/// How many lines of standard input `trex append -` appends in one batch.
const APPEND_BATCH: usize = 1000;
/// How many bytes of lines `trex append -` holds before it appends them (the
/// library splits a batch into frames of at most 16 MiB anyway; this bounds
/// the memory it holds).
const APPEND_BATCH_BYTES: usize = 16 << 20;

fn connect(ep: &Endpoints) -> Result<Log, CliError> {
    Ok(Log::connect_to(&resolve_endpoints(ep)?, ep.cluster_id)?)
}

pub fn append(a: AppendArgs) -> Result<(), CliError> {
    if let Some(path) = &a.file {
        let data = if path.as_os_str() == "-" {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            v
        } else {
            std::fs::read(path)
                .map_err(|e| crate::error::usage!("cannot read {}: {e}", path.display()))?
        };
        println!("{}", connect(&a.ep)?.append(&data)?);
        return Ok(());
    }
    let data = a.data.unwrap_or_default();
    let mut log = connect(&a.ep)?;
    if data != "-" {
        println!("{}", log.append(data.as_bytes())?);
        return Ok(());
    }
    let mut input = Lines::default();
    for line in std::io::BufRead::lines(std::io::stdin().lock()) {
        input.push(line.map_err(|e| format!("cannot read standard input: {e}"))?);
        if (input.lines.len() == APPEND_BATCH || input.bytes >= APPEND_BATCH_BYTES)
            && !input.append(&mut log)
        {
            break; // the cluster failed: later lines would too
        }
    }
    input.append(&mut log);
    match input.first_error {
        None => Ok(()),
        Some(e) => Err(CliError::from(e).reword(|t| {
            format!(
                "{} of {} lines not appended (each is named above); the first: {t}",
                input.failed, input.read
            )
        })),
    }
}

/// Lines of standard input read and not yet appended, and how the others went.
#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    bytes: usize,
    /// Lines read so far (the number of the last one).
    read: usize,
    failed: usize,
    first_error: Option<LogError>,
}

impl Lines {
    fn push(&mut self, line: String) {
        self.bytes += line.len();
        self.read += 1;
        self.lines.push(line);
    }

    /// Appends the held lines as one batch and prints, per line in order, its
    /// address (or `-`, with why on standard error and the address it held, if
    /// any). Returns false if a line failed for a reason other than itself
    /// (the cluster's), so that no more lines are tried.
    fn append(&mut self, log: &mut Log) -> bool {
        let refs: Vec<&[u8]> = self.lines.iter().map(|l| l.as_bytes()).collect();
        let first_line = self.read - self.lines.len() + 1;
        let mut go_on = true;
        for (k, r) in log.append_each(&refs).into_iter().enumerate() {
            match r {
                Ok(a) => println!("{a}"),
                Err(f) => {
                    println!("-");
                    let line = first_line + k;
                    match f.addr {
                        Some(a) => eprintln!(
                            "line {line}: not appended; it held address {a} (it may be in the log there, or become a hole): {}",
                            f.error
                        ),
                        None => eprintln!("line {line}: not appended: {}", f.error),
                    }
                    go_on &= matches!(f.error, LogError::Invalid(_));
                    self.failed += 1;
                    self.first_error.get_or_insert(f.error);
                }
            }
        }
        self.lines.clear();
        self.bytes = 0;
        go_on
    }
}

pub fn read(a: ReadArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    let end = a.addr.saturating_add(a.count);
    let mut at = a.addr;
    while at < end {
        let n = (end - at).min(4096);
        for (k, s) in log.read_range(at, n)?.into_iter().enumerate() {
            if a.raw {
                write_raw(at + k as u64, &s)?;
            } else {
                print_slot(at + k as u64, &s);
            }
        }
        at += n;
    }
    Ok(())
}

/// An entry's bytes, exactly, on standard output.
fn write_raw(addr: u64, s: &Slot) -> Result<(), CliError> {
    use std::io::Write;
    match s {
        Slot::Data { data, .. } => std::io::stdout()
            .lock()
            .write_all(data)
            .map_err(|e| format!("cannot write the entry at {addr}: {e}").into()),
        Slot::Hole => Err(crate::error::failed!(
            "address {addr} is a hole (filled): it holds no entry"
        )),
        Slot::Unwritten => Err(crate::error::failed!("address {addr} is not written (yet)")),
        Slot::Trimmed => Err(crate::error::failed!("address {addr} is trimmed")),
    }
}

pub fn tail(a: TailArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    let end = log.check()?;
    let mut sub = log.subscribe(a.from, Duration::from_secs(1));
    while a.follow || sub.position() < end {
        let (at, s) = sub.next_entry()?;
        print_slot(at, &s);
    }
    Ok(())
}

pub fn trim(a: TrimArgs) -> Result<(), CliError> {
    let report = connect(&a.ep)?.trim(a.prefix)?;
    if report.mark > a.prefix {
        println!(
            "trimmed below {} (asked {}: the log was already trimmed there)",
            report.mark, a.prefix
        );
    } else {
        println!("trimmed below {}", report.mark);
    }
    // It took effect (the mark is recorded): not a failure, but say where it
    // is not applied yet.
    for (unit, why) in &report.failed {
        eprintln!(
            "warning: unit {unit} has not applied the trim yet ({why}); it applies the recorded mark when it answers again (the active sequencer's repair loop spreads it), or run `trex trim {}` again",
            report.mark
        );
    }
    Ok(())
}

pub fn check(a: CheckArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    let next = if a.fast {
        log.check_fast()?
    } else {
        log.check()?
    };
    println!("{next}");
    Ok(())
}

fn print_slot(addr: u64, s: &Slot) {
    match s {
        Slot::Data { data, .. } => println!("{addr}\t{}", escape(data)),
        Slot::Hole => println!("{addr}\t(hole)"),
        Slot::Unwritten => println!("{addr}\t(unwritten)"),
        Slot::Trimmed => println!("{addr}\t(trimmed)"),
    }
}
