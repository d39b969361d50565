//! The shared log: `trex append`, `read`, `tail`, `trim` and `check`.

use crate::common::{base64, escape, print_json, resolve_endpoints, Endpoints, Format};
use crate::error::{failed, usage, CliError};
use clap::Args;
use serde::Serialize;
use std::io::{BufRead, Read};
use std::time::Duration;
use trex_log::{Log, LogError, Slot};

/// `trex append`: where the entries come from.
#[derive(Args)]
#[command(after_help = APPEND_HELP)]
pub struct AppendArgs {
    #[command(flatten)]
    ep: Endpoints,
    /// The entry, or `-`: entries from standard input, one per line (or per
    /// NUL with --delimiter nul, or length-prefixed with --length-prefixed).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    data: Option<String>,
    /// Append the whole file as one entry, byte for byte (binary data too;
    /// `-` reads standard input to its end). With --length-prefixed, the file
    /// holds many entries.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// With `-`: what ends an entry on standard input: `newline` (the
    /// default; a line's `\n` is not part of it) or `nul` (a 0 byte, as
    /// `find -print0` writes; entries may then hold newlines).
    #[arg(long, value_enum, conflicts_with_all = ["file", "length_prefixed"])]
    delimiter: Option<Delimiter>,
    /// Entries are framed: each is a 4-byte big-endian length, then that many
    /// bytes (any bytes). Read from standard input (with `-`) or from --file.
    /// The whole input is checked before anything is appended: a frame cut
    /// short or longer than one entry may be (4 MiB) appends nothing.
    #[arg(long)]
    length_prefixed: bool,
}

/// The end of `trex append --help`.
const APPEND_HELP: &str = "\
Binary entries:
  trex append --file photo.jpg                    one entry, byte for byte
  find . -print0 | trex append - --delimiter nul  one entry per NUL-ended name
  trex append --length-prefixed --file batch.bin  each entry: u32 length (big-endian), bytes
An entry is at most 4 MiB (4194304 bytes). Prints each entry's address in input order
(`-` for one not appended, with why on standard error); -w json prints one object per
entry (docs/cli.md).";

/// What ends an entry on standard input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Delimiter {
    /// `\n` (one entry per line).
    Newline,
    /// A 0 byte.
    Nul,
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

/// How many entries of standard input `trex append -` appends in one batch.
const APPEND_BATCH: usize = 1000;
/// How many bytes of entries `trex append -` holds before it appends them (the
/// library splits a batch into frames of at most 16 MiB anyway; this bounds
/// the memory it holds).
const APPEND_BATCH_BYTES: usize = 16 << 20;
/// The largest entry, in bytes (4 MiB).
const MAX_ENTRY: usize = trex_wire::MAX_ENTRY_LEN as usize;
/// Most length-prefixed input `trex append -` holds from standard input: it is
/// checked whole before anything is appended, so it is held in memory (a
/// file given with --file is checked on disk instead).
const MAX_FRAMED_STDIN: u64 = 1 << 30;

fn connect(ep: &Endpoints) -> Result<Log, CliError> {
    Ok(Log::connect_to(&resolve_endpoints(ep)?, ep.cluster_id)?)
}

/// `trex append`.
pub fn append(a: AppendArgs) -> Result<(), CliError> {
    let stdin_dash = a.data.as_deref() == Some("-");
    if a.delimiter.is_some() && !stdin_dash {
        return Err(usage!(
            "--delimiter splits standard input: give `-` as the entry (trex append - --delimiter nul)"
        ));
    }
    if a.length_prefixed {
        return match (&a.file, stdin_dash) {
            (Some(path), _) if path.as_os_str() != "-" => append_framed_file(&a.ep, path),
            (Some(_), _) | (None, true) => append_framed_stdin(&a.ep),
            (None, false) => Err(usage!(
                "--length-prefixed reads framed entries from standard input (`-`) or --file PATH, not from the command line"
            )),
        };
    }
    let format = a.ep.format;
    if let Some(path) = &a.file {
        let data = if path.as_os_str() == "-" {
            let mut v = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut v)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            v
        } else {
            std::fs::read(path).map_err(|e| usage!("cannot read {}: {e}", path.display()))?
        };
        print_address(format, 1, connect(&a.ep)?.append(&data)?);
        return Ok(());
    }
    let data = a.data.unwrap_or_default();
    let mut log = connect(&a.ep)?;
    if !stdin_dash {
        print_address(format, 1, log.append(data.as_bytes())?);
        return Ok(());
    }
    let (delim, what) = match a.delimiter.unwrap_or(Delimiter::Newline) {
        Delimiter::Newline => (b'\n', "line"),
        Delimiter::Nul => (0, "entry"),
    };
    let mut input = Batch::new(what, format);
    let mut stdin = std::io::stdin().lock();
    loop {
        let entry = match next_delimited(&mut stdin, delim)
            .map_err(|e| format!("cannot read standard input: {e}"))?
        {
            None => break,
            Some(Piece::Entry(e)) => e,
            Some(Piece::TooLong) => {
                let e = LogError::Invalid(format!(
                    "entry too large: longer than the limit of one log entry, {} MiB ({MAX_ENTRY} bytes); split it",
                    MAX_ENTRY >> 20
                ));
                if !input.refuse(&mut log, e) {
                    break;
                }
                continue;
            }
        };
        input.push(entry);
        if (input.entries.len() == APPEND_BATCH || input.bytes >= APPEND_BATCH_BYTES)
            && !input.append(&mut log)
        {
            break; // the cluster failed: later entries would too
        }
    }
    input.finish(&mut log)
}

/// Prints the address of entry `n` (counted from 1) as the format asks.
fn print_address(format: Format, n: usize, addr: u64) {
    match format {
        Format::Json => print_json(&EntryJson {
            entry: n,
            address: Some(addr),
            held: None,
            error: None,
        }),
        Format::Table => println!("{addr}"),
    }
}

/// One entry of `trex append -w json` (docs/cli.md).
#[derive(Serialize)]
struct EntryJson {
    /// Its place in the input, from 1.
    entry: usize,
    /// Where it was appended (`null`: it was not).
    address: Option<u64>,
    /// Not appended, but it held this address (it may be in the log there,
    /// or become a hole).
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<u64>,
    /// Why it was not appended.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One piece of delimited input.
enum Piece {
    /// An entry, without its delimiter.
    Entry(Vec<u8>),
    /// An entry longer than [`MAX_ENTRY`] (skipped to its delimiter).
    TooLong,
}

/// Reads up to the next `delim` (or the end of the input): `None` once the
/// input is used up. An entry is never held beyond [`MAX_ENTRY`] + 1 bytes:
/// the rest of a longer one is read and dropped.
fn next_delimited(r: &mut impl BufRead, delim: u8) -> std::io::Result<Option<Piece>> {
    let mut entry = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_ENTRY as u64 + 2)
        .read_until(delim, &mut entry)?;
    if n == 0 {
        return Ok(None);
    }
    if entry.last() == Some(&delim) {
        entry.pop();
        // A Windows line ends in \r\n: the \r is not part of the line, as
        // `BufRead::lines` has it.
        if delim == b'\n' && entry.last() == Some(&b'\r') {
            entry.pop();
        }
    } else if entry.len() > MAX_ENTRY {
        let mut rest = Vec::new();
        loop {
            rest.clear();
            let n = r.by_ref().take(1 << 16).read_until(delim, &mut rest)?;
            if n == 0 || rest.last() == Some(&delim) {
                break;
            }
        }
        return Ok(Some(Piece::TooLong));
    }
    if entry.len() > MAX_ENTRY {
        return Ok(Some(Piece::TooLong));
    }
    Ok(Some(Piece::Entry(entry)))
}

/// Reads the next length-prefixed entry (`Ok(None)` at the end of the input;
/// `n` is its place, from 1, for messages). With `keep` false its bytes are
/// read and dropped (a check of the input). A frame cut short or too long is
/// a usage error: the input must change.
fn next_framed(r: &mut impl Read, n: usize, keep: bool) -> Result<Option<Vec<u8>>, CliError> {
    let io = |e: std::io::Error| CliError::from(format!("cannot read entry {n}: {e}"));
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    match got {
        0 => return Ok(None),
        1..=3 => {
            return Err(usage!(
                "length-prefixed input cut short: entry {n} has {got} of the 4 bytes of its length; nothing was appended (each entry is a 4-byte big-endian length, then its bytes)"
            ))
        }
        _ => {}
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_ENTRY {
        return Err(usage!(
            "length-prefixed entry {n} declares {len} bytes, above the limit of one log entry, {} MiB ({MAX_ENTRY} bytes); nothing was appended (is the length big-endian?)",
            MAX_ENTRY >> 20
        ));
    }
    let mut body = Vec::new();
    let read = if keep {
        r.take(len as u64).read_to_end(&mut body).map_err(io)?
    } else {
        std::io::copy(&mut r.take(len as u64), &mut std::io::sink()).map_err(io)? as usize
    };
    if read < len {
        return Err(usage!(
            "length-prefixed input cut short: entry {n} declares {len} bytes but the input ends after {read} of them; nothing was appended"
        ));
    }
    Ok(Some(body))
}

/// Checks that `r` holds whole length-prefixed entries only; returns how many.
fn check_framed(r: &mut impl Read) -> Result<usize, CliError> {
    let mut n = 0;
    while next_framed(r, n + 1, false)?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Appends the length-prefixed entries of `r`, already checked.
fn append_framed(ep: &Endpoints, r: &mut impl Read) -> Result<(), CliError> {
    let mut log = connect(ep)?;
    let mut input = Batch::new("entry", ep.format);
    while let Some(entry) = next_framed(r, input.read + 1, true)? {
        input.push(entry);
        if (input.entries.len() == APPEND_BATCH || input.bytes >= APPEND_BATCH_BYTES)
            && !input.append(&mut log)
        {
            break;
        }
    }
    input.finish(&mut log)
}

/// `trex append --length-prefixed --file PATH`: the file is checked on disk,
/// then read again to append.
fn append_framed_file(ep: &Endpoints, path: &std::path::Path) -> Result<(), CliError> {
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| usage!("cannot read {}: {e}", path.display()))
    };
    check_framed(&mut open()?)?;
    append_framed(ep, &mut open()?)
}

/// `trex append --length-prefixed -`: standard input, held whole and checked
/// before anything is appended.
fn append_framed_stdin(ep: &Endpoints) -> Result<(), CliError> {
    let mut all = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_FRAMED_STDIN + 1)
        .read_to_end(&mut all)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    if all.len() as u64 > MAX_FRAMED_STDIN {
        return Err(usage!(
            "standard input holds over {} GiB of length-prefixed entries, more than is held in memory to check it; write it to a file and pass --file PATH",
            MAX_FRAMED_STDIN >> 30
        ));
    }
    check_framed(&mut all.as_slice())?;
    append_framed(ep, &mut all.as_slice())
}

/// Entries of standard input read and not yet appended, and how the others
/// went.
struct Batch {
    entries: Vec<Vec<u8>>,
    bytes: usize,
    /// Entries read so far (the number of the last one).
    read: usize,
    failed: usize,
    first_error: Option<LogError>,
    /// What an entry is called in messages: "line" or "entry".
    what: &'static str,
    /// The same, plural.
    whats: &'static str,
    format: Format,
}

impl Batch {
    fn new(what: &'static str, format: Format) -> Batch {
        Batch {
            whats: if what == "line" { "lines" } else { "entries" },
            entries: Vec::new(),
            bytes: 0,
            read: 0,
            failed: 0,
            first_error: None,
            what,
            format,
        }
    }

    fn push(&mut self, entry: Vec<u8>) {
        self.bytes += entry.len();
        self.read += 1;
        self.entries.push(entry);
    }

    /// Appends the held entries as one batch and prints, per entry in order,
    /// its address (or `-`, with why on standard error and the address it
    /// held, if any). Returns false if an entry failed for a reason other
    /// than itself (the cluster's), so that no more entries are tried.
    fn append(&mut self, log: &mut Log) -> bool {
        let refs: Vec<&[u8]> = self.entries.iter().map(Vec::as_slice).collect();
        let first = self.read - self.entries.len() + 1;
        let mut go_on = true;
        for (k, r) in log.append_each(&refs).into_iter().enumerate() {
            match r {
                Ok(a) => print_address(self.format, first + k, a),
                Err(f) => {
                    go_on &= matches!(f.error, LogError::Invalid(_));
                    self.failed_one(first + k, f.addr, f.error);
                }
            }
        }
        self.entries.clear();
        self.bytes = 0;
        go_on
    }

    /// Counts an entry refused before it is sent (too long to hold), in its
    /// place: the entries held before it are appended first. Returns false
    /// if those failed for the cluster's reasons (see [`Batch::append`]).
    fn refuse(&mut self, log: &mut Log, error: LogError) -> bool {
        let go_on = self.entries.is_empty() || self.append(log);
        self.read += 1;
        self.failed_one(self.read, None, error);
        go_on
    }

    /// Reports entry `n` as not appended.
    fn failed_one(&mut self, n: usize, held: Option<u64>, error: LogError) {
        let what = self.what;
        match self.format {
            Format::Json => print_json(&EntryJson {
                entry: n,
                address: None,
                held,
                error: Some(error.to_string()),
            }),
            Format::Table => println!("-"),
        }
        match held {
            Some(a) => eprintln!(
                "{what} {n}: not appended; it held address {a} (it may be in the log there, or become a hole): {error}"
            ),
            None => eprintln!("{what} {n}: not appended: {error}"),
        }
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }

    /// Appends what is held; the command's outcome: an error naming how many
    /// entries failed, and the first reason.
    fn finish(mut self, log: &mut Log) -> Result<(), CliError> {
        if !self.entries.is_empty() {
            self.append(log);
        }
        match self.first_error {
            None => Ok(()),
            Some(e) => Err(CliError::from(e).reword(|t| {
                format!(
                    "{} of {} {} not appended (each is named above); the first: {t}",
                    self.failed, self.read, self.whats
                )
            })),
        }
    }
}

/// `trex read`.
pub fn read(a: ReadArgs) -> Result<(), CliError> {
    if a.raw && a.ep.format == Format::Json {
        return Err(usage!(
            "--raw writes the entries' bytes alone; leave out -w json (or leave out --raw for JSON, whose `data` is base64)"
        ));
    }
    let mut log = connect(&a.ep)?;
    let end = a.addr.saturating_add(a.count);
    let mut at = a.addr;
    let mut out = Output::new();
    while at < end {
        let n = (end - at).min(4096);
        for (k, s) in log.read_range(at, n)?.into_iter().enumerate() {
            if a.raw {
                write_raw(&mut out.w, at + k as u64, &s)?;
            } else {
                out.slot(a.ep.format, at + k as u64, &s)?;
            }
        }
        at += n;
    }
    out.flush()
}

/// Standard output for many entries: written in 256 KiB pieces, not a
/// system call per line, and flushed whenever the command is about to wait.
struct Output {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
}

impl Output {
    fn new() -> Output {
        Output {
            w: std::io::BufWriter::with_capacity(256 << 10, std::io::stdout().lock()),
        }
    }

    fn slot(&mut self, format: Format, addr: u64, s: &Slot) -> Result<(), CliError> {
        print_slot(&mut self.w, format, addr, s)
            .map_err(|e| format!("cannot write the entry at {addr}: {e}").into())
    }

    fn flush(&mut self) -> Result<(), CliError> {
        use std::io::Write;
        self.w
            .flush()
            .map_err(|e| format!("cannot write standard output: {e}").into())
    }
}

/// An entry's bytes, exactly, on standard output.
fn write_raw(out: &mut impl std::io::Write, addr: u64, s: &Slot) -> Result<(), CliError> {
    match s {
        Slot::Data { data, .. } => out
            .write_all(data)
            .map_err(|e| format!("cannot write the entry at {addr}: {e}").into()),
        Slot::Hole => Err(failed!(
            "address {addr} is a hole (filled): it holds no entry; read around it, e.g. `trex read {addr}` shows each address's state"
        )),
        Slot::Unwritten => Err(failed!(
            "address {addr} is not written (yet); `trex check` says where the log ends"
        )),
        Slot::Trimmed => Err(failed!(
            "address {addr} is trimmed; `trex status` shows the trim mark"
        )),
    }
}

/// `trex tail`.
pub fn tail(a: TailArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    let end = log.check()?;
    let mut out = Output::new();
    let mut sub = log.subscribe(a.from, Duration::from_secs(1));
    while a.follow || sub.position() < end {
        match sub.try_next()? {
            Some((at, s)) => out.slot(a.ep.format, at, &s)?,
            None => {
                // Caught up (or waiting on a hole): what is buffered goes out
                // now, so a follower sees entries as they come.
                out.flush()?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    out.flush()
}

/// `trex trim`.
pub fn trim(a: TrimArgs) -> Result<(), CliError> {
    let report = connect(&a.ep)?.trim(a.prefix)?;
    if a.ep.format == Format::Json {
        let pending: Vec<_> = report
            .failed
            .iter()
            .map(|(unit, why)| serde_json::json!({ "unit": unit, "error": why }))
            .collect();
        print_json(&serde_json::json!({
            "mark": report.mark,
            "asked": a.prefix,
            "applied": report.applied,
            "pending": pending,
        }));
    } else if report.mark > a.prefix {
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

/// `trex check`.
pub fn check(a: CheckArgs) -> Result<(), CliError> {
    let mut log = connect(&a.ep)?;
    let next = if a.fast {
        log.check_fast()?
    } else {
        log.check()?
    };
    match a.ep.format {
        Format::Json => print_json(&serde_json::json!({ "next": next, "fast": a.fast })),
        Format::Table => println!("{next}"),
    }
    Ok(())
}

/// One address of `trex read` or `trex tail -w json` (docs/cli.md).
#[derive(Serialize)]
struct SlotJson {
    address: u64,
    /// `data`, `hole`, `unwritten` or `trimmed`.
    state: &'static str,
    /// The entry's bytes in base64 (`null` unless `state` is `data`).
    data: Option<String>,
    /// The entry's length in bytes (`null` unless `state` is `data`).
    len: Option<usize>,
}

/// One address as `trex read` and `trex tail` print it: `ADDR\tDATA` (the
/// bytes escaped) for people, one JSON object per line for programs.
fn print_slot(
    out: &mut impl std::io::Write,
    format: Format,
    addr: u64,
    s: &Slot,
) -> std::io::Result<()> {
    if format == Format::Json {
        let (state, data) = match s {
            Slot::Data { data, .. } => ("data", Some(data)),
            Slot::Hole => ("hole", None),
            Slot::Unwritten => ("unwritten", None),
            Slot::Trimmed => ("trimmed", None),
        };
        serde_json::to_writer(
            &mut *out,
            &SlotJson {
                address: addr,
                state,
                data: data.map(|d| base64(d)),
                len: data.map(Vec::len),
            },
        )?;
        return writeln!(out);
    }
    match s {
        Slot::Data { data, .. } => writeln!(out, "{addr}\t{}", escape(data)),
        Slot::Hole => writeln!(out, "{addr}\t(hole)"),
        Slot::Unwritten => writeln!(out, "{addr}\t(unwritten)"),
        Slot::Trimmed => writeln!(out, "{addr}\t(trimmed)"),
    }
}
