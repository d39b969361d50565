#!/usr/bin/env bash
# Released locks leave the state machine: lock acquire+release cycles, each on a
# lock name never used before (`trex-bench lock --distinct-names`), against a
# `trex up` cluster, while every consensus node's resident memory (VmRSS) and
# journal size (`trex endpoint status`) are sampled after each round. Memory and
# journal must stay flat however many names were used (issue 14).
#   CYCLES   lock cycles in all (default 10000000); the run stops at CYCLES or
#            after MAX_SECS (default 1800), whichever comes first
#   ROUND    seconds per round between samples (default 30)
#   CLIENTS  lock clients (default 32)
# Prints one line per round and a summary: the first and last samples and the
# largest, per node. Every process it starts is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES=${CYCLES:-10000000}
MAX_SECS=${MAX_SECS:-1800}
ROUND=${ROUND:-30}
CLIENTS=${CLIENTS:-32}
BASE=${BASE_PORT:-27600}
DIR=${BENCH_DIR:-$PWD/target/bench-lock-state}
echo "== building release binaries" >&2
cargo build --release --quiet -p trex -p trex-bench
T=target/release/trex
B=target/release/trex-bench
E="127.0.0.1:$BASE,127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"
rm -rf "$DIR" && mkdir -p "$DIR"
. scripts/lib-cluster.sh
trap up_stop EXIT
echo "== trex up (3 consensus nodes) in $DIR" >&2
up_start "$T" "$DIR/cluster" "$DIR/up.log" --base-port "$BASE"
# The consensus nodes' PIDs: children of `trex up` listening on BASE..BASE+2.
PIDS=()
for i in 0 1 2; do
  p=$(pgrep -P "$UP" -f -- "node consensus .*--listen 127.0.0.1:$((BASE + i)) ")
  PIDS+=("$p")
done
sample() {
  local rss=() j
  for p in "${PIDS[@]}"; do
    rss+=("$(awk '/VmRSS/ {print $2}' "/proc/$p/status")")
  done
  j=$("$T" endpoint status --endpoints "$E" -w json |
    python3 -c 'import json,sys; print(" ".join(str(n.get("journal_bytes", -1)) for n in json.load(sys.stdin)))')
  echo "${rss[*]} $j"
}
printf '%8s %10s %24s %30s\n' "round" "cycles" "RSS KiB (nodes 1 2 3)" "journal bytes (nodes 1 2 3)"
echo "0 0 $(sample)" >"$DIR/samples"
read -r _ _ r1 r2 r3 j1 j2 j3 <"$DIR/samples"
printf '%8s %10s %24s %30s\n' 0 0 "$r1 $r2 $r3" "$j1 $j2 $j3"
done_cycles=0
round=0
start=$(date +%s)
while [ "$done_cycles" -lt "$CYCLES" ] && [ $(($(date +%s) - start)) -lt "$MAX_SECS" ]; do
  round=$((round + 1))
  "$B" lock --endpoints "$E" --clients "$CLIENTS" --distinct-names --duration "${ROUND}s" \
    --json "$DIR/round-$round.json" >"$DIR/round-$round.log" 2>&1 ||
    { echo "error: trex-bench failed in round $round: see $DIR/round-$round.log" >&2; exit 1; }
  n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ops"])' "$DIR/round-$round.json")
  done_cycles=$((done_cycles + n))
  s=$(sample)
  echo "$round $done_cycles $s" >>"$DIR/samples"
  read -r r1 r2 r3 j1 j2 j3 <<<"$s"
  printf '%8s %10s %24s %30s\n' "$round" "$done_cycles" "$r1 $r2 $r3" "$j1 $j2 $j3"
done
python3 - "$DIR/samples" <<'EOF'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1])]
first, last = rows[1] if len(rows) > 1 else rows[0], rows[-1]
rss_max = max(max(r[2:5]) for r in rows[1:]) if len(rows) > 1 else 0
j_max = max(max(r[5:8]) for r in rows[1:]) if len(rows) > 1 else 0
print(f"summary: {last[1]} lock cycles on distinct names in {len(rows) - 1} rounds; "
      f"RSS after round 1: {max(first[2:5])} KiB, at the end: {max(last[2:5])} KiB, largest: {rss_max} KiB; "
      f"journal after round 1: {max(first[5:8])} B, at the end: {max(last[5:8])} B, largest: {j_max} B")
EOF
