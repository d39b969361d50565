#!/usr/bin/env bash
# Two builds of trex side by side, same run, same machine, alternating rounds (the
# order swaps every round so neither build always runs on a warmer machine):
#   scripts/bench-compare.sh OLD_BIN_DIR NEW_BIN_DIR
# Each BIN_DIR holds `trex` and `trex-bench` (e.g. target/release of two checkouts).
# Workloads per round and build:
#   unit-always  one unit, --sync always, 4 KiB writes, 8 clients x 32 in flight
#   unit-never   one unit, --sync never, 4 KiB x 16 per request, 4 clients x 8
#   and on `trex up --sync never` (2 stripes x 2 replicas):
#   append-100   100 B appends, pipelined 8 clients x 4 batches of 64
#   append-4k    4 KiB appends, same shape
#   read-4k      4 KiB reads, 8 clients x 256
#   tokens       the active sequencer, 50 clients x 64 pipelined, 1 address each
#   consensus    committed ~100-byte commands, 64 clients, one in flight each
# Prints per workload the median of RUNS rounds for each build and new/old.
# RUNS (default 3) and SECS (default 4) bound the run; every load stops by itself.
set -euo pipefail
# Plain TCP: these are loopback benchmarks of the log, not of TLS (scripts/bench-tls.sh
# measures that). `trex up` says so loudly; builds before TLS ignore the variable.
export TREX_INSECURE=1
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIN_DIR NEW_BIN_DIR (each with trex and trex-bench)" >&2; exit 2; }
OLD=$(cd "$1" && pwd); NEW=$(cd "$2" && pwd)
for d in "$OLD" "$NEW"; do
  for b in trex trex-bench; do
    [ -x "$d/$b" ] || { echo "error: $d/$b is missing; build it with cargo build --release" >&2; exit 2; }
  done
done
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-4}
DIR=${BENCH_DIR:-$PWD/target/bench-compare}
E=127.0.0.1:7700,127.0.0.1:7701,127.0.0.1:7702
rm -rf "$DIR" && mkdir -p "$DIR/results"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
fresh_cache() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

one_build() { # one_build NAME BIN_DIR ROUND
  local name=$1 bin=$2 i=$3 out="$DIR/results" mode
  for mode in always never; do
    echo "== round $i: $name unit --sync $mode" >&2
    rm -rf "$DIR/unit"; fresh_cache
    "$bin/trex" node storage --listen 127.0.0.1:7799 --data-dir "$DIR/unit" --sync "$mode" 2>"$DIR/unit.log" & PIDS+=($!)
    for _ in $(seq 100); do grep -q "listening on" "$DIR/unit.log" 2>/dev/null && break; sleep 0.1; done
    if [ "$mode" = always ]; then
      "$bin/trex-bench" unit-write --node 127.0.0.1:7799 --size 4KiB --clients 8 --depth 32 \
        --duration "${SECS}s" --json "$out/$name-unit-always-$i.json" >&2
    else
      "$bin/trex-bench" unit-write --node 127.0.0.1:7799 --size 4KiB --clients 4 --depth 8 --batch 16 \
        --duration "${SECS}s" --json "$out/$name-unit-never-$i.json" >&2
    fi
    cleanup
  done
  echo "== round $i: $name trex up --sync never" >&2
  rm -rf "$DIR/up"; fresh_cache
  "$bin/trex" up --base-port 7700 --sync never --data-dir "$DIR/up" >"$DIR/up.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 300); do grep -q "cluster is up" "$DIR/up.log" && break; sleep 0.1; done
  grep -q "cluster is up" "$DIR/up.log" || { echo "error: trex up failed; see $DIR/up.log" >&2; exit 1; }
  "$bin/trex-bench" append --endpoints "$E" --size 100 --clients 8 --depth 256 --batch 64 \
    --duration "${SECS}s" --json "$out/$name-append-100-$i.json" >&2
  "$bin/trex-bench" append --endpoints "$E" --size 4KiB --clients 8 --depth 256 --batch 64 \
    --duration "${SECS}s" --json "$out/$name-append-4k-$i.json" >&2
  "$bin/trex-bench" read --endpoints "$E" --size 4KiB --clients 8 --depth 256 \
    --duration "${SECS}s" --json "$out/$name-read-4k-$i.json" >&2
  local s
  for s in 7710 7711; do # whichever sequencer holds the lease answers
    "$bin/trex-bench" tokens --sequencer "127.0.0.1:$s" --clients 50 --depth 64 \
      --duration "${SECS}s" --json "$out/$name-tokens-$i.json" >&2 2>/dev/null && break
  done
  "$bin/trex-bench" consensus --endpoints "$E" --clients 64 \
    --duration "${SECS}s" --json "$out/$name-consensus-$i.json" >&2
  cleanup
}

for i in $(seq "$RUNS"); do
  if [ $((i % 2)) -eq 1 ]; then one_build old "$OLD" "$i"; one_build new "$NEW" "$i"
  else one_build new "$NEW" "$i"; one_build old "$OLD" "$i"; fi
done
python3 - "$DIR/results" "$RUNS" <<'PY'
import json, statistics, sys, os
d, runs = sys.argv[1], int(sys.argv[2])
med = statistics.median
def load(n):
    out = []
    for i in range(1, runs + 1):
        p = os.path.join(d, f"{n}-{i}.json")
        if os.path.exists(p):
            out.append(json.load(open(p)))
    return out
print(f"medians of {runs} rounds (ops/s; MB/s where the entry size matters)")
print("| workload | old | new | new/old | old per round | new per round |")
print("|---|---|---|---|---|---|")
for w in ("unit-always", "unit-never", "append-100", "append-4k", "read-4k", "tokens", "consensus"):
    o, n = load(f"old-{w}"), load(f"new-{w}")
    if not o or not n:
        print(f"| {w} | missing | missing | | | |"); continue
    mo, mn = med(r["ops_per_s"] for r in o), med(r["ops_per_s"] for r in n)
    fmt = lambda rs: ", ".join(f"{r['ops_per_s']:,.0f}" for r in rs)
    print(f"| {w} | {mo:,.0f}/s | {mn:,.0f}/s | {mn/mo:.2f} | {fmt(o)} | {fmt(n)} |")
PY
