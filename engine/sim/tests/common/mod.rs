//! Helpers shared by the simulator tests.

/// The seeds of a regression list (one per line, `#` comments).
#[allow(dead_code)]
pub fn seed_list(text: &str) -> Vec<u64> {
    seed_list_with_flags(text)
        .into_iter()
        .map(|(seed, flags)| {
            assert!(flags.is_empty(), "seed {seed}: this list takes no flags");
            seed
        })
        .collect()
}

/// The seeds of a regression list, each with the `trex-sim` flags written
/// after it on its line (`52 --hard-faults`).
pub fn seed_list_with_flags(text: &str) -> Vec<(u64, Vec<&str>)> {
    let seeds: Vec<(u64, Vec<&str>)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace();
            let seed = words.next().and_then(|w| w.parse().ok());
            (seed.expect("a seed per line"), words.collect())
        })
        .collect();
    assert!(!seeds.is_empty(), "an empty seed list");
    seeds
}
