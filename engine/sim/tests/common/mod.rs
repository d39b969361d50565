//! Helpers shared by the simulator tests.

/// The seeds of a regression list (one per line, `#` comments).
pub fn seed_list(text: &str) -> Vec<u64> {
    let seeds: Vec<u64> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.parse().expect("a seed per line"))
        .collect();
    assert!(!seeds.is_empty(), "an empty seed list");
    seeds
}
