//! Issue 10, cases 4, 5 and 10 on real processes (`trex up`, then the `trex`
//! commands a user types): a trim above the log's tail is refused and appends
//! go on; batches larger than one frame land whole, an entry over the limit
//! takes no address, and a batch that fails part-way says which entries got
//! addresses; a follower pays the hole wait once per dead range.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use trex_log::{Log, Slot};

mod common;

type Up = common::Cluster;

fn up(dir: &Path) -> Up {
    common::trex_up(dir, &[])
}

/// Runs `trex ARGS` against the cluster with `stdin` as its standard input.
fn trex(c: &Up, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(args)
        .env("TREX_ENDPOINTS", &c.eps)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Fed from a thread: the child may answer before it read everything.
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn next_address(c: &Up) -> u64 {
    let out = trex(c, &["check", "--fast"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().parse().unwrap()
}

/// Case 4: `trex trim 100` on a log with one entry is refused (a usage error,
/// naming the tail), takes no effect, and appends go on; a trim at the tail
/// is fine.
#[test]
fn a_trim_above_the_tail_is_refused_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let c = up(dir.path());
    let out = trex(&c, &["append", "one"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "0");

    let out = trex(&c, &["trim", "100"], b"");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("tail"), "the message names the tail: {err}");

    let t0 = Instant::now();
    let out = trex(&c, &["append", "two"], b"");
    assert!(out.status.success(), "appends go on: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(next_address(&c), 2, "no address burnt");

    // At the tail: fine, and reported done.
    let out = trex(&c, &["trim", "2"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = trex(&c, &["append", "three"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "2");
    let out = trex(&c, &["read", "0", "--count", "3"], b"");
    assert_eq!(text(&out.stdout), "0\t(trimmed)\n1\t(trimmed)\n2\tthree\n");
}

/// Case 4: a trim is never reported failed after it took effect: with one
/// unit dead, `trex trim` applies the mark on the others and exits 0.
#[test]
fn a_trim_that_took_effect_is_not_reported_failed() {
    let dir = tempfile::tempdir().unwrap();
    let c = up(dir.path());
    let out = trex(&c, &["append", "-"], b"a\nb\nc\nd\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = Log::connect(&c.eps).unwrap();
    // The last unit asked (the tail of the last stripe) is dead.
    let unit = *log.projection().segments[0].stripes[1].last().unwrap();
    kill_unit(unit);
    let out = trex(&c, &["trim", "2"], b"");
    assert!(
        out.status.success(),
        "the trim took effect on the live units: {}",
        text(&out.stderr)
    );
    let out = trex(&c, &["read", "0", "--count", "4"], b"");
    assert_eq!(
        text(&out.stdout),
        "0\t(trimmed)\n1\t(trimmed)\n2\tc\n3\td\n",
        "{}",
        text(&out.stderr)
    );
}

/// A trim is recorded with the consensus group before any unit is asked: with
/// every unit of the chain down it still takes effect (exit 0, each unit
/// named), and the units apply it when they come back, with no command (the
/// active sequencer's repair loop spreads the recorded mark). Before the mark
/// was recorded this trim failed ("no unit applied the trim"), and a trim
/// that reached only units later replaced was lost.
#[test]
fn a_recorded_trim_reaches_units_that_were_down_when_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    let c = common::trex_up(
        dir.path(),
        &["--stripes", "1", "--replicas", "2", "--units", "2"],
    );
    let out = trex(&c, &["append", "-"], b"a\nb\nc\nd\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = Log::connect(&c.eps).unwrap();
    let chain = log.projection().segments[0].stripes[0].clone();
    let cmdlines: Vec<Vec<String>> = chain
        .iter()
        .map(|u| common::cmdline_of(&format!("storage --listen 127.0.0.1:{u} ")))
        .collect();
    for u in &chain {
        kill_unit(*u);
    }
    let out = trex(&c, &["trim", "2"], b"");
    assert!(
        out.status.success(),
        "a recorded trim took effect: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "trimmed below 2\n");
    for u in &chain {
        assert!(
            text(&out.stderr).contains(&format!("unit {u} has not applied the trim")),
            "unit {u} is named: {}",
            text(&out.stderr)
        );
    }
    let _back: Vec<common::Proc> = cmdlines.iter().map(|c| common::restart(c)).collect();
    let t0 = Instant::now();
    loop {
        let out = trex(&c, &["read", "0", "--count", "4"], b"");
        if text(&out.stdout) == "0\t(trimmed)\n1\t(trimmed)\n2\tc\n3\td\n" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the returning units never applied the recorded trim: {} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Both replicas, not only the one reads go to.
    for u in &chain {
        let t0 = Instant::now();
        loop {
            let out = Command::new(env!("CARGO_BIN_EXE_trex"))
                .args(["unit", "info", "-w", "json", "--node"])
                .arg(format!("127.0.0.1:{u}"))
                .output()
                .unwrap();
            let t = text(&out.stdout);
            if t.contains("\"trim_mark\":2,") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "unit {u}: {t}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `kill -9` the storage unit `unit` of a `trex up` cluster (unit ids are
/// their ports there).
fn kill_unit(unit: u64) {
    common::kill(
        &format!("storage --listen 127.0.0.1:{unit} "),
        libc::SIGKILL,
    );
}

/// `n` lines of `len` bytes each (`len` of one letter per line).
fn lines(n: usize, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * (len + 1));
    for i in 0..n {
        v.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
        v.push(b'\n');
    }
    v
}

/// Appends `input` with `trex append -`; checks every line got an address and
/// reads back with its bytes.
fn append_all_and_read_back(c: &Up, n: usize, len: usize) {
    let from = next_address(c);
    let out = trex(c, &["append", "-"], &lines(n, len));
    assert!(
        out.status.success(),
        "{n} lines of {len} bytes: {}",
        text(&out.stderr)
    );
    let addrs: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(addrs.len(), n, "one address per line");
    let mut log = Log::connect(&c.eps).unwrap();
    for (i, a) in addrs.iter().enumerate() {
        match log.read(*a).unwrap() {
            Slot::Data { data, .. } => {
                assert_eq!(data.len(), len);
                assert_eq!(data[0], b'a' + (i % 26) as u8, "line {i} at {a}");
            }
            other => panic!("line {i} at {a}: {other:?}"),
        }
    }
    assert_eq!(next_address(c), from + n as u64, "no address taken in vain");
}

/// Case 5: batches larger than one 16 MiB frame land whole, on the blocking
/// path (`trex append -`) and through a pipeline; an entry over 4 MiB takes no
/// address and says the limit; `trex append -` reports per line.
#[test]
fn batches_larger_than_a_frame_land_whole_and_oversized_entries_take_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let c = up(dir.path());
    append_all_and_read_back(&c, 10, 3584 * 1024);
    append_all_and_read_back(&c, 400, 100_000);

    // The pipeline: 20 entries of 1 MiB, more than one frame.
    let mut log = Log::connect(&c.eps).unwrap();
    let from = next_address(&c);
    {
        let mut p = log.pipeline(1000, 2);
        let e = vec![b'p'; 1 << 20];
        for _ in 0..20 {
            p.submit(&e).unwrap();
        }
        p.flush().unwrap();
        let mut n = 0;
        while let Some((t, r)) = p.poll() {
            r.unwrap_or_else(|e| panic!("pipelined entry {t}: {e}"));
            n += 1;
        }
        assert_eq!(n, 20);
    }
    assert_eq!(next_address(&c), from + 20);

    // One line of 4 MiB + 1 byte: refused at once, with the limit, no address.
    let from = next_address(&c);
    let mut input = lines(1, 4 * 1024 * 1024 + 1);
    let out = trex(&c, &["append", "-"], &input);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("too large") && err.contains("4 MiB"), "{err}");
    assert_eq!(next_address(&c), from, "no address taken");

    // Between good lines: the good ones are appended, each line reported.
    let mut mixed = b"first\n".to_vec();
    mixed.append(&mut input);
    mixed.extend_from_slice(b"third\n");
    let out = trex(&c, &["append", "-"], &mixed);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a line failed");
    assert_eq!(
        text(&out.stdout),
        format!("{from}\n-\n{}\n", from + 1),
        "{err}"
    );
    assert!(err.contains("line 2") && err.contains("4 MiB"), "{err}");
    assert_eq!(next_address(&c), from + 2);
}

/// Case 5: a batch that fails part-way (both replicas of one stripe killed)
/// says per entry which got an address: the other stripe's entries are
/// appended, this stripe's failed at the address they hold.
#[test]
fn a_batch_failing_part_way_reports_each_entry() {
    let dir = tempfile::tempdir().unwrap();
    let c = up(dir.path());
    let mut log = Log::connect(&c.eps).unwrap();
    let p = log.projection().clone();
    let stripe1 = p.segments.last().unwrap().stripes[1].clone();
    for unit in &stripe1 {
        // Unit ids are their ports under `trex up`.
        let pattern = format!("storage --listen 127.0.0.1:{unit} ");
        let out = Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .unwrap();
        let pid: i32 = text(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: a process of our own cluster.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(200));
    let entries: Vec<&[u8]> = vec![b"e0", b"e1", b"e2", b"e3"];
    let results = log.append_each(&entries);
    assert_eq!(results.len(), 4);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(a) => assert_eq!(a % 2, 0, "entry {i} appended on stripe 0 at {a}"),
            Err(f) => {
                let a = f.addr.expect("a failed entry names the address it held");
                assert_eq!(a % 2, 1, "entry {i}: {}", f.error);
            }
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
}

/// Case 10: a writer takes 30 addresses and dies; the next entry reaches a
/// follower after one hole wait (1 s), not thirty.
#[test]
fn a_follower_pays_the_hole_wait_once_per_dead_range() {
    let dir = tempfile::tempdir().unwrap();
    let c = up(dir.path());
    let log = Log::connect(&c.eps).unwrap();
    let seq = log.projection().sequencer;
    let out = trex(
        &c,
        &[
            "token",
            "--node",
            &format!("127.0.0.1:{seq}"),
            "--count",
            "30",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = trex(&c, &["append", "x"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "30");

    let t0 = Instant::now();
    let tail = common::Follower::start(&c.eps);
    let got = tail.lines_until(Duration::from_secs(60), |l| {
        l.last().is_some_and(|l| l == "30\tx")
    });
    let took = t0.elapsed();
    tail.stop();
    assert_eq!(got.last().map(String::as_str), Some("30\tx"), "{got:?}");
    assert_eq!(got.len(), 31);
    assert!(got[..30].iter().all(|l| l.ends_with("\t(hole)")), "{got:?}");
    assert!(
        took < Duration::from_secs(3),
        "the follower reached x after {took:?}: the 1 s hole wait is paid once per dead range"
    );
}

/// Issue 12: binary entries through the command line: `trex append --file`
/// appends a file (every byte value, newlines and NULs included) as one
/// entry, `--file -` standard input to its end, and `trex read --raw` writes
/// an entry's bytes exactly; an address without an entry is an error.
#[test]
fn binary_entries_go_in_and_out_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let c = up(dir.path());
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let f = dir.path().join("entry.bin");
    std::fs::write(&f, &bytes).unwrap();
    let out = trex(&c, &["append", "--file", f.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let a: u64 = text(&out.stdout).trim().parse().unwrap();
    let out = trex(
        &c,
        &["append", "--file", "-"],
        b"\x00line one\nline two\n\xff",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b: u64 = text(&out.stdout).trim().parse().unwrap();
    let out = trex(&c, &["read", &a.to_string(), "--raw"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, bytes);
    let out = trex(&c, &["read", &b.to_string(), "--raw"], b"");
    assert_eq!(out.stdout, b"\x00line one\nline two\n\xff");
    let out = trex(&c, &["read", "1000", "--raw"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not written"),
        "{}",
        text(&out.stderr)
    );
    let out = trex(&c, &["append", "x", "--file", f.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2), "data and --file together");
}
