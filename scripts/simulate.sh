#!/usr/bin/env bash
# Runs a deterministic simulator over many seeds: the consensus group's, or
# with --cluster first, the whole cluster's (units, sequencers, log clients).
#   scripts/simulate.sh 10000                  # consensus seeds 1..10000
#   scripts/simulate.sh 500 20000              # 500 consensus seeds from 20000
#   scripts/simulate.sh --cluster 2000         # cluster seeds 1..2000
#   scripts/simulate.sh --cluster 500 9000     # 500 cluster seeds from 9000
# A failing seed is printed with the command that replays it; add it to
# engine/sim/tests/sim-seeds.txt (consensus) or engine/sim/tests/cluster-seeds.txt
# (cluster) so every test run replays it from then on. To see what a failing
# cluster seed did: TREX_SIM_DEBUG=1 prints every event, TREX_SIM_ADDR=A the
# history of address A and every layout, e.g.
#   TREX_SIM_DEBUG=1 TREX_SIM_ADDR=21 target/release/trex-sim --cluster --seed 1133
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=()
if [ "${1:-}" = "--cluster" ]; then
  MODE=(--cluster)
  shift
fi
SEEDS=${1:-1000}
FIRST=${2:-1}
cargo build --release --quiet -p trex-sim --bin trex-sim
exec target/release/trex-sim "${MODE[@]}" --seeds "$SEEDS" --first "$FIRST"
