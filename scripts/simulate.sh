#!/usr/bin/env bash
# Runs the deterministic consensus simulator over many seeds.
#   scripts/simulate.sh 10000          # seeds 1..10000
#   scripts/simulate.sh 500 20000      # 500 seeds from 20000
# A failing seed is printed with the command that replays it; add it to
# engine/tests/sim-seeds.txt so every test run replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-1000}
FIRST=${2:-1}
cargo build --release --quiet -p trex-engine --bin trex-sim
exec target/release/trex-sim --seeds "$SEEDS" --first "$FIRST"
