//! `trex`: run Trex Corfu nodes and talk to them. This file only parses the
//! command line and hands each command to its module under `cmd/`.

mod cmd;
mod common;
mod error;
mod tls;

use clap::{Parser, Subcommand};
use cmd::{certs, endpoint, layout, lock, log, members, node, repair, status, token, unit, up};
use error::{CliError, EXIT_CODES};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "trex",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("TREX_GIT_REVISION"), ")"),
    about = "Trex Corfu: a distributed shared log",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines on standard error as text or JSON (one object per line).
    /// Which lines: TREX_LOG (or RUST_LOG), e.g. `info`, `warn`,
    /// `warn,trex_unit=debug`; `info` by default.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TREX_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(flatten)]
    tls: tls::TlsArgs,
}

/// How log lines are written.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Installs the log subscriber: `log_line!` goes through `tracing` to
/// standard error, filtered by TREX_LOG or RUST_LOG (an unparsable filter is a
/// usage error).
fn init_logging(format: LogFormat) -> Result<(), CliError> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("TREX_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .filter(|s| !s.trim().is_empty());
    let filter: Targets = match spec {
        Some(s) => s.parse().map_err(|e| {
            error::usage!("TREX_LOG/RUST_LOG \"{s}\" is not a log filter ({e}); use e.g. info, warn or warn,trex_unit=debug")
        })?,
        None => Targets::new().with_default(LevelFilter::INFO),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json()).try_init(),
    };
    Ok(())
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node in the foreground.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Talk directly to one storage unit (an operator's tool).
    Unit(unit::UnitArgs),
    /// List the cluster's members (linearizable read through the consensus log);
    /// `trex members remove ID` removes a stale one.
    Members(members::MembersArgs),
    /// Show or bootstrap the layout (projections).
    #[command(subcommand)]
    Layout(layout::LayoutCmd),
    /// Consensus endpoints.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCmd),
    /// Advisory locks with leases and fencing tokens.
    #[command(subcommand)]
    Lock(lock::LockCmd),
    /// Start a whole local cluster (3 consensus nodes, 2 sequencers, 4 storage
    /// units as 2 stripes x 2 replicas) and run until Ctrl-C.
    Up(up::UpArgs),
    /// Append DATA as one entry, or with `-` entries from standard input (one
    /// per line, NUL-ended or length-prefixed), or a file; prints the address
    /// of each.
    Append(log::AppendArgs),
    /// Read entries from the log.
    Read(log::ReadArgs),
    /// Print the log from an address to its tail; with --follow, keep following.
    Tail(log::TailArgs),
    /// Trim the log below PREFIX.
    Trim(log::TrimArgs),
    /// One past the highest address written (asks the storage units), or with
    /// --fast the next address the sequencer would hand out.
    Check(log::CheckArgs),
    /// Restore replication after a storage unit was taken out: empty spare
    /// units (registered, in no chain) join the short chains, and the old range
    /// is copied to them. Resumable: after an interruption, run it again.
    Repair(repair::RepairArgs),
    /// The cluster at a glance: layout, sequencer lease, every unit's tail.
    Status(common::Endpoints),
    /// Ask a sequencer for COUNT consecutive log addresses.
    Token(token::TokenArgs),
    /// Certificates for mutual TLS (docs/security.md).
    #[command(subcommand)]
    Certs(certs::CertsCmd),
}

fn main() -> ExitCode {
    let args = match cmd::config::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => return e.report(),
    };
    let cli = Cli::parse_from(args);
    if let Err(e) = init_logging(cli.log_format) {
        return e.report();
    }
    if !matches!(cli.cmd, Cmd::Node(_) | Cmd::Up(_)) {
        // A client command whose reader goes away (`trex tail | head -2`) ends
        // quietly, as any Unix filter does, instead of panicking on the
        // broken pipe. Servers keep SIGPIPE ignored: a peer that closes its
        // socket is an error to handle, not a reason to die.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // `trex up` makes its certificates before loading them; `trex certs`
    // needs none.
    let tls = match &cli.cmd {
        Cmd::Up(_) | Cmd::Certs(_) => Ok(()),
        Cmd::Node(_) => tls::init(&cli.tls, true),
        _ => tls::init(&cli.tls, false),
    };
    if let Err(e) = tls {
        return e.report();
    }
    match run(cli.cmd, &cli.tls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

fn run(cmd: Cmd, tls: &tls::TlsArgs) -> Result<(), CliError> {
    match cmd {
        Cmd::Node(c) => node::run(c),
        Cmd::Unit(a) => unit::run(a),
        Cmd::Members(a) => members::run(a),
        Cmd::Layout(c) => layout::run(c),
        Cmd::Endpoint(c) => endpoint::run(c),
        Cmd::Lock(c) => lock::run(c),
        Cmd::Up(a) => up::run(a, tls),
        Cmd::Append(a) => log::append(a),
        Cmd::Read(a) => log::read(a),
        Cmd::Tail(a) => log::tail(a),
        Cmd::Trim(a) => log::trim(a),
        Cmd::Check(a) => log::check(a),
        Cmd::Repair(a) => repair::run(a),
        Cmd::Status(a) => status::run(a),
        Cmd::Token(a) => token::run(a),
        Cmd::Certs(c) => certs::run(c),
    }
}
