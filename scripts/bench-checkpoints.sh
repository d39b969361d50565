#!/usr/bin/env bash
# What a large consensus state costs the lock service while it is checkpointed:
# an open-loop load of lock acquisitions that are never released, each on a new
# name (`trex-bench lock --distinct-names --keep-held --rate RATE`), so the state
# machine grows by one held lock per operation and every checkpoint (one per
# 10,000 slots) encodes and writes more. The latency of every acquisition is
# counted from when it was due (open loop), so a stalled event loop shows in
# the tail and the maximum.
#   RATE     acquisitions per second offered (default 4000)
#   SECS     seconds per run (default 60)
#   RUNS     runs per build (default 3), builds alternating
#   CLIENTS  lock clients (default 32)
#   OLD_BIN  a directory holding another build's `trex` (e.g. a worktree's
#            target/release) to run side by side; without it, this build only
# Prints one line per run and the medians per build. Every process it starts
# is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-4000}
SECS=${SECS:-60}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-32}
BASE=${BASE_PORT:-27700}
DIR=${BENCH_DIR:-$PWD/target/bench-checkpoints}
if [ -z "${NO_BUILD:-}" ]; then
  echo "== building release binaries" >&2
  cargo build --release --quiet -p trex -p trex-bench
fi
B=target/release/trex-bench
BUILDS=("this=$PWD/target/release")
if [ -n "${OLD_BIN:-}" ]; then
  [ -x "$OLD_BIN/trex" ] || { echo "error: OLD_BIN=$OLD_BIN holds no trex binary; build it there first" >&2; exit 2; }
  BUILDS+=("old=$OLD_BIN")
fi
E="127.0.0.1:$BASE,127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"
rm -rf "$DIR" && mkdir -p "$DIR"
. scripts/lib-cluster.sh
trap up_stop EXIT
: >"$DIR/results"
for run in $(seq "$RUNS"); do
  for b in "${BUILDS[@]}"; do
    name=${b%%=*}
    bin=${b#*=}
    d="$DIR/$name-$run"
    mkdir -p "$d"
    echo "== run $run/$RUNS, build $name ($bin/trex): trex up, then ${SECS}s at $RATE/s" >&2
    up_start "$bin/trex" "$d/cluster" "$d/up.log" --base-port "$BASE"
    "$B" lock --endpoints "$E" --clients "$CLIENTS" --distinct-names --keep-held \
      --rate "$RATE" --warmup 2s --duration "${SECS}s" --json "$d/bench.json" >"$d/bench.log" 2>&1 ||
      { echo "error: trex-bench failed: see $d/bench.log" >&2; exit 1; }
    snap=$("$bin/trex" endpoint status --endpoints "$E" -w json |
      python3 -c 'import json,sys; print(max(n.get("snapshot", 0) for n in json.load(sys.stdin)))')
    python3 - "$name" "$run" "$snap" "$d/bench.json" >>"$DIR/results" <<'EOF'
import json, sys
name, run, snap, path = sys.argv[1:]
j = json.load(open(path))
l = j["latency_us"]
print(name, run, j["ops"], j["ops_per_s"], l["p50"], l["p99"], l["p999"], l["max"], snap, j["errors"], j["missed"])
EOF
    tail -1 "$DIR/results" | awk '{printf "%-5s run %s: %s locks held, %.0f/s, latency (ms) p50 %.2f p99 %.2f p99.9 %.2f max %.2f; snapshot at slot %s; errors %s, missed %s\n", $1, $2, $3, $4, $5/1000, $6/1000, $7/1000, $8/1000, $9, $10, $11}'
    up_stop
  done
done
python3 - "$DIR/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("| build | runs | locks held (median) | p50 ms | p99 ms | p99.9 ms | max ms | max / p99.9 |")
print("|---|---|---|---|---|---|---|---|")
for name in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == name]
    med = lambda i: statistics.median(float(r[i]) for r in rs)
    p999, mx = med(6), med(7)
    print(f"| {name} | {len(rs)} | {med(2):,.0f} | {med(4)/1000:.2f} | {med(5)/1000:.2f} | {p999/1000:.2f} | {mx/1000:.2f} | {mx/max(p999,1):.1f} |")
EOF
