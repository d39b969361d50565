//! No production decision branches on the text of a message (ARCHITECTURE §7:
//! "decisions are taken on typed outcomes"). Every string test in production
//! code (`.contains("…")`, `.starts_with("…")`, `.ends_with("…")`,
//! `.strip_prefix("…")`, `.find("…")`) outside `#[cfg(test)]` modules must be
//! on the allow-list below, each with the reason it is not about an error's
//! words. Rewording a message can then never change behaviour silently.

use std::path::{Path, PathBuf};

/// (file, the code on the line, why it is not a decision on message text).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "engine/cli/src/cmd/config.rs",
        "strip_prefix(\"--config=\")",
        "reads the command line's own --config=FILE argument",
    ),
    (
        "wire/src/ops.rs",
        "name.starts_with(\"trex.\")",
        "the reserved namespace of lock names (a name, not a message)",
    ),
    (
        "engine/consensus/src/journal.rs",
        "strip_prefix(\"journal-\")",
        "parses journal file names the node itself wrote",
    ),
    (
        "engine/consensus/src/node.rs",
        "last.starts_with(\"crc=\")",
        "parses the checksum line of the GROUP file the node itself wrote",
    ),
    (
        "engine/consensus/src/node.rs",
        "name.starts_with(\"journal-\")",
        "finds the journal files the node itself wrote, to set them aside",
    ),
    (
        "engine/unit/src/storage/mmap.rs",
        "ends_with(\".tmp\")",
        "finds temporary files the unit itself wrote",
    ),
    (
        "bench/src/etcd.rs",
        "split(\"\\\"ID\\\":\\\"\")",
        "the load generator reads etcd's JSON lease id (a benchmark peer)",
    ),
    (
        "bench/src/etcd.rs",
        "starts_with(\"http/1.1 200\")",
        "the load generator checks etcd's HTTP status line (a benchmark peer)",
    ),
    (
        "bench/src/etcd.rs",
        "strip_prefix(\"content-length:\")",
        "the load generator parses etcd's HTTP header (a benchmark peer)",
    ),
];

const CALLS: &[&str] = &[
    ".contains(\"",
    ".starts_with(\"",
    ".ends_with(\"",
    ".strip_prefix(\"",
    ".find(\"",
    ".split(\"",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn production_code_takes_no_decision_on_message_text() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    // The simulator is development-only; the CLI's own tests are not production.
    for dir in [
        "wire/src",
        "engine/net/src",
        "engine/unit/src",
        "engine/consensus/src",
        "engine/log/src",
        "engine/sequencer/src",
        "engine/cli/src",
        "bench/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(f).unwrap();
        let production = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in production.lines().enumerate() {
            if line.trim_start().starts_with("//") || !CALLS.iter().any(|c| line.contains(c)) {
                continue;
            }
            let allowed = ALLOWED
                .iter()
                .any(|(file, code, _)| rel == *file && line.contains(code));
            if !allowed {
                found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "string tests in production code (branch on a typed outcome instead, or add the line \
         to ALLOWED with the reason it is not about a message's words):\n{}",
        found.join("\n")
    );
}
