#!/usr/bin/env bash
# Mutual TLS beside plain TCP, same machine, same run (docs/benchmarks.md, "TLS"):
#   trex up --sync never (2 stripes x 2 replicas), with TLS (its default) and with
#   --insecure, alternately, RUNS rounds (default 3), SECS seconds per load:
#   appends of 100 B and 4 KiB, 32 clients x one batch of 64 (2048 in flight),
#   and tokens from the active sequencer, 8 clients x windows of 64 requests.
# The TLS side runs trex-bench with the `client` certificate (TREX_TLS_DIR).
# Prints medians and the TLS / plain ratio. BIN=target/debug for a debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-4}
BIN=${BIN:-$PWD/target/release}
DIR=${BENCH_DIR:-$PWD/target/bench-tls}
T=$BIN/trex
B=$BIN/trex-bench
E=127.0.0.1:7650,127.0.0.1:7651,127.0.0.1:7652
rm -rf "$DIR" && mkdir -p "$DIR/results"
UP=
cleanup() {
  [ -n "$UP" ] && kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
  UP=; true
}
trap cleanup EXIT
for i in $(seq "$RUNS"); do
  for mode in tls plain; do
    echo "== run $i/$RUNS: trex up --sync never ($mode)" >&2
    rm -rf "$DIR/up"
    unset TREX_INSECURE TREX_TLS_DIR TREX_TLS_NAME
    flag=; [ "$mode" = plain ] && flag=--insecure
    "$T" up --base-port 7650 --sync never --data-dir "$DIR/up" $flag >"$DIR/up.log" 2>&1 & UP=$!
    for _ in $(seq 300); do grep -q "cluster is up" "$DIR/up.log" && break; sleep 0.1; done
    grep -q "cluster is up" "$DIR/up.log" || { echo "error: trex up failed; see $DIR/up.log" >&2; exit 1; }
    if [ "$mode" = tls ]; then export TREX_TLS_DIR=$DIR/up/tls TREX_TLS_NAME=client; unset TREX_INSECURE
    else export TREX_INSECURE=1; unset TREX_TLS_DIR TREX_TLS_NAME; fi
    for s in 100 4KiB; do
      "$B" append --endpoints "$E" --size $s --clients 32 --depth 64 --duration "${SECS}s" --json "$DIR/results/$mode-$s-$i.json" >&2
    done
    "$B" tokens --endpoints "$E" --clients 8 --depth 64 --duration "${SECS}s" --json "$DIR/results/$mode-tokens-$i.json" >&2
    cleanup
  done
done
python3 - "$DIR/results" "$RUNS" <<'PY'
import json, statistics, sys, os
d, runs = sys.argv[1], int(sys.argv[2])
med = statistics.median
def load(n): return [json.load(open(os.path.join(d, f"{n}-{i}.json"))) for i in range(1, runs + 1)]
def ops(rs): return med(r["ops_per_s"] for r in rs)
def p99(rs): return med(r["latency_us"]["p99"] for r in rs)
print(f"medians of {runs} runs, TLS and plain alternating in each run")
print("| load | TLS | plain | TLS / plain |")
print("|---|---|---|---|")
for n, label in (("100", "append 100 B, 32 x 64"), ("4KiB", "append 4 KiB, 32 x 64"), ("tokens", "tokens, 8 x 64")):
    t, p = load(f"tls-{n}"), load(f"plain-{n}")
    print(f"| {label} | {ops(t):,.0f}/s (p99 {p99(t):.0f} us) | {ops(p):,.0f}/s (p99 {p99(p):.0f} us) | {ops(t)/ops(p):.2f} |")
    print(f"  {label} per run: TLS " + ", ".join(f"{r['ops_per_s']:,.0f}" for r in t) + "; plain " + ", ".join(f"{r['ops_per_s']:,.0f}" for r in p))
PY
