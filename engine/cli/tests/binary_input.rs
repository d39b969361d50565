//! Issue 12, CLI polish: binary entries from standard input or a file.
//! `trex append - --delimiter nul` (entries end at a 0 byte, so they may hold
//! newlines) and `trex append --length-prefixed` (each entry a 4-byte
//! big-endian length, then its bytes) go in byte for byte and come back with
//! `trex read --raw`. A framed input cut short, or a frame longer than one
//! entry may be, is a usage error (exit 2, EXIT_CODES) that appends nothing.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `trex ARGS` against the cluster with `stdin` as its standard input.
fn trex(eps: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(args)
        .env("TREX_ENDPOINTS", eps)
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

/// The addresses `trex append` printed, one per line, in input order.
fn addresses(out: &Output) -> Vec<u64> {
    assert!(out.status.success(), "append: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("not an address: {l:?}"))
        })
        .collect()
}

/// The entry at `addr`, byte for byte.
fn raw(eps: &str, addr: u64) -> Vec<u8> {
    let out = trex(eps, &["read", &addr.to_string(), "--raw"], b"");
    assert!(out.status.success(), "read {addr}: {}", text(&out.stderr));
    out.stdout
}

/// `entries` framed: each a u32 big-endian length, then its bytes.
fn framed(entries: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// One past the highest address written (`trex check`).
fn check(eps: &str) -> u64 {
    let out = trex(eps, &["check"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().parse().unwrap()
}

#[test]
fn nul_delimited_and_length_prefixed_entries_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::trex_up(dir.path(), &[]);
    let eps = cluster.eps.as_str();
    let all_bytes: Vec<u8> = (1..=255u8).collect();

    // NUL-delimited: newlines, \r\n and every byte but 0 stay in the entry;
    // two NULs in a row are an empty entry; the last one needs no NUL.
    let nul: Vec<&[u8]> = vec![b"one\ntwo", b"crlf\r\n", b"", &all_bytes, b"last"];
    let out = trex(eps, &["append", "-", "--delimiter", "nul"], &nul.join(&0u8));
    let at = addresses(&out);
    assert_eq!(at.len(), nul.len(), "{}", text(&out.stdout));
    for (a, want) in at.iter().zip(&nul) {
        assert_eq!(raw(eps, *a), *want, "address {a}");
    }

    // Length-prefixed from standard input: any bytes, 0 included, and an
    // empty entry.
    let with_zeros: Vec<u8> = (0..=255u8).rev().collect();
    let lp: Vec<&[u8]> = vec![&with_zeros, b"", b"\x00\x00\x00\x05", b"\n\n"];
    let at = addresses(&trex(
        eps,
        &["append", "-", "--length-prefixed"],
        &framed(&lp),
    ));
    assert_eq!(at.len(), lp.len());
    for (a, want) in at.iter().zip(&lp) {
        assert_eq!(raw(eps, *a), *want, "address {a}");
    }

    // Length-prefixed from a file: 2,500 entries (more than one batch).
    let many: Vec<Vec<u8>> = (0..2_500u32)
        .map(|i| {
            let mut e = i.to_le_bytes().to_vec();
            e.extend(std::iter::repeat_n((i % 256) as u8, (i % 40) as usize));
            e
        })
        .collect();
    let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    let f = dir.path().join("batch.bin");
    std::fs::write(&f, framed(&refs)).unwrap();
    let f = f.to_str().unwrap();
    let at = addresses(&trex(
        eps,
        &["append", "--length-prefixed", "--file", f],
        b"",
    ));
    assert_eq!(at.len(), many.len());
    for k in [0, 1, 999, 1000, 1001, 2_499] {
        assert_eq!(raw(eps, at[k]), many[k], "entry {k} at {}", at[k]);
    }
    let out = trex(
        eps,
        &["read", &at[0].to_string(), "--count", "2500", "-w", "json"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lens: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["len"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let want: Vec<u64> = many.iter().map(|e| e.len() as u64).collect();
    assert_eq!(lens, want, "every entry read back with its length");

    // A framed input cut short or too long appends nothing: exit 2.
    let before = check(eps);
    let mut cut = framed(&[b"whole", b"also whole"]);
    cut.extend_from_slice(&10u32.to_be_bytes());
    cut.extend_from_slice(b"only4");
    let mut cut_in_length = framed(&[b"whole"]);
    cut_in_length.extend_from_slice(&[0, 0]);
    let mut too_long = framed(&[b"whole"]);
    too_long.extend_from_slice(&(4 * 1024 * 1024 + 1u32).to_be_bytes());
    too_long.extend_from_slice(b"some bytes");
    for (name, input, says) in [
        (
            "cut in a body",
            &cut,
            "entry 3 declares 10 bytes but the input ends after 5",
        ),
        (
            "cut in a length",
            &cut_in_length,
            "entry 2 has 2 of the 4 bytes of its length",
        ),
        ("too long", &too_long, "4194304 bytes"),
    ] {
        let out = trex(eps, &["append", "-", "--length-prefixed"], input);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
        assert!(err.contains("nothing was appended"), "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
        let file = dir.path().join("cut.bin");
        std::fs::write(&file, input).unwrap();
        let file = file.to_str().unwrap();
        let out = trex(eps, &["append", "--length-prefixed", "--file", file], b"");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name} (file): {}",
            text(&out.stderr)
        );
    }
    assert_eq!(check(eps), before, "nothing was appended");

    // NUL-delimited: an entry over 4 MiB is refused in its place (`-`), the
    // others are appended; the exit code is the usage error's.
    let mut input = b"before\0".to_vec();
    input.extend(std::iter::repeat_n(b'x', 4 * 1024 * 1024 + 1));
    input.extend_from_slice(b"\0after");
    let out = trex(eps, &["append", "-", "--delimiter", "nul"], &input);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1], "-");
    assert!(
        text(&out.stderr).contains("entry 2: not appended")
            && text(&out.stderr).contains("4194304 bytes"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(raw(eps, lines[0].parse().unwrap()), b"before");
    assert_eq!(raw(eps, lines[2].parse().unwrap()), b"after");

    // Usage errors before anything is sent.
    let out = trex(eps, &["append", "x", "--delimiter", "nul"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = trex(eps, &["append", "x", "--length-prefixed"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    drop(cluster);
}
