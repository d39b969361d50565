//! The crates depend on each other downwards only (ARCHITECTURE §8):
//! `trex-wire` ← `trex-net` ← `trex-unit`, `trex-consensus` ← `trex-log` ←
//! `trex-sequencer` ← `trex` (the CLI) and `trex-bench`. The simulator is never
//! a normal dependency of anything, and the log client library does not link
//! the storage unit.

use std::path::Path;

/// (crate, folder, layer). A crate may depend only on crates of a lower layer.
const CRATES: &[(&str, &str, u32)] = &[
    ("trex-wire", "wire", 0),
    ("trex-net", "engine/net", 1),
    ("trex-unit", "engine/unit", 2),
    ("trex-consensus", "engine/consensus", 2),
    ("trex-log", "engine/log", 3),
    ("trex-sequencer", "engine/sequencer", 4),
    ("trex", "engine/cli", 5),
    ("trex-bench", "bench", 5),
    ("trex-sim", "engine/sim", 6),
];

/// The `trex-…` names in one `[section]` of a manifest.
fn deps(manifest: &str, section: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == section;
        } else if inside && line.starts_with("trex") {
            out.push(line.split(['.', ' ', '=']).next().unwrap().to_string());
        }
    }
    out
}

#[test]
fn dependencies_point_down_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let layer = |name: &str| CRATES.iter().find(|c| c.0 == name).map(|c| c.2);
    let mut checked = 0;
    for (name, dir, own) in CRATES {
        let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{dir} is {name}"
        );
        for dep in deps(&manifest, "[dependencies]") {
            let l = layer(&dep).unwrap_or_else(|| panic!("{name} depends on unknown {dep}"));
            assert!(
                l < *own,
                "{name} (layer {own}) depends on {dep} (layer {l}): an upward edge"
            );
            assert_ne!(dep, "trex-sim", "{name}: the simulator is development-only");
            checked += 1;
        }
        for dep in deps(&manifest, "[dev-dependencies]") {
            assert!(
                dep == "trex-sim" || layer(&dep).is_some_and(|l| l < *own),
                "{name} has a dev-dependency on {dep} above it"
            );
        }
    }
    assert!(
        checked >= 15,
        "only {checked} edges found: is the manifest format changed?"
    );
    let log = std::fs::read_to_string(root.join("engine/log/Cargo.toml")).unwrap();
    assert!(
        !deps(&log, "[dependencies]").contains(&"trex-unit".to_string()),
        "the client library must not link the storage unit"
    );
}
