//! The golden vectors of `docs/wire.md`, for the tests that compare them with
//! the code (`wire/tests/golden.rs`, `engine/consensus/tests/golden_ops.rs`)
//! and with a live unit (`engine/cli/tests/conformance.rs`). Included by path
//! (`#[path = …] mod doc_vectors;`), so there is one parser.
#![allow(dead_code)]

use std::path::PathBuf;

/// `docs/wire.md`, found by walking up from the including crate's folder.
pub fn wire_md() -> String {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("docs/wire.md");
        if p.exists() {
            return std::fs::read_to_string(p).expect("docs/wire.md is readable");
        }
        assert!(
            dir.pop(),
            "no docs/wire.md above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// Vectors in the document: a fenced block whose info string is `hex NAME`.
pub fn documented() -> Vec<(String, Vec<u8>)> {
    let doc = wire_md();
    let mut out = Vec::new();
    let mut cur: Option<(String, Vec<u8>)> = None;
    for line in doc.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("```hex ") {
            cur = Some((name.trim().to_string(), Vec::new()));
        } else if t == "```" {
            if let Some(v) = cur.take() {
                out.push(v);
            }
        } else if let Some((_, bytes)) = cur.as_mut() {
            for h in t.split_whitespace() {
                bytes.push(
                    u8::from_str_radix(h, 16)
                        .unwrap_or_else(|_| panic!("bad hex '{h}' in docs/wire.md")),
                );
            }
        }
    }
    out
}

/// Bytes as the document writes them: 16 a line, lower-case, space-separated.
pub fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
