#!/usr/bin/env bash
# Shared-log appends beside NATS JetStream, same machine, same run:
#   trex up --sync never (page-cache mode, 2 replicas)  + trex-bench append
#   nats-server -js (file store, 1 replica; no fsync per ack either) + scripts/nats-bench
# at 100 B and 4 KiB, 32 clients x 64 in flight each. RUNS rounds (default 3).
# Needs nats-server (apt-get install -y nats-server) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-4}
DIR=${BENCH_DIR:-$PWD/target/bench-log}
command -v nats-server >/dev/null || { echo "error: nats-server is missing; apt-get install -y nats-server" >&2; exit 1; }
echo "== building release binaries and the NATS comparison client" >&2
cargo build --release --quiet
(cd scripts/nats-bench && cargo build --release --quiet)
T=$PWD/target/release/trex
B=$PWD/target/release/trex-bench
N=$PWD/scripts/nats-bench/target/release/nats-bench
E=127.0.0.1:7600,127.0.0.1:7601,127.0.0.1:7602
rm -rf "$DIR" && mkdir -p "$DIR/results"
UP=; NATS=
cleanup() { [ -n "$UP" ] && kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null; [ -n "$NATS" ] && kill "$NATS" 2>/dev/null; UP=; NATS=; true; }
trap cleanup EXIT
for i in $(seq "$RUNS"); do
  echo "== run $i/$RUNS: trex up --sync never" >&2
  rm -rf "$DIR/trex"
  "$T" up --base-port 7600 --sync never --data-dir "$DIR/trex" >"$DIR/up.log" 2>&1 & UP=$!
  for _ in $(seq 300); do grep -q "cluster is up" "$DIR/up.log" && break; sleep 0.1; done
  grep -q "cluster is up" "$DIR/up.log" || { echo "error: trex up failed; see $DIR/up.log" >&2; exit 1; }
  "$B" append --endpoints "$E" --size 100 --clients 32 --depth 64 --duration "${SECS}s" --json "$DIR/results/trex100-$i.json" >&2
  "$B" append --endpoints "$E" --size 4KiB --clients 32 --depth 64 --duration "${SECS}s" --json "$DIR/results/trex4k-$i.json" >&2
  cleanup
  echo "== run $i/$RUNS: nats-server -js (file store, 1 replica)" >&2
  rm -rf "$DIR/nats"
  nats-server -js -sd "$DIR/nats" -a 127.0.0.1 -p 4333 >"$DIR/nats.log" 2>&1 & NATS=$!
  sleep 1
  "$N" 127.0.0.1:4333 100 32 64 "$SECS" 1 "$DIR/results/nats100-$i.json" >&2
  "$N" 127.0.0.1:4333 4096 32 64 "$SECS" 1 "$DIR/results/nats4k-$i.json" >&2
  cleanup
done
python3 - "$DIR/results" "$RUNS" <<'PY'
import json, statistics, sys, os
d, runs = sys.argv[1], int(sys.argv[2])
med = statistics.median
def load(n): return [json.load(open(os.path.join(d, f"{n}-{i}.json"))) for i in range(1, runs + 1)]
print(f"| appends, 32 clients x 64 in flight (median of {runs}) | trex (2 replicas) | NATS JetStream (1 replica) | ratio |")
print("|---|---|---|---|")
for size, t, n in (("100 B", "trex100", "nats100"), ("4 KiB", "trex4k", "nats4k")):
    a, b = load(t), load(n)
    x, y = med(r["ops_per_s"] for r in a), med(r["ops_per_s"] for r in b)
    print(f"| {size} | {x:,.0f}/s ({med(r['mb_per_s'] for r in a):.0f} MB/s) | {y:,.0f}/s ({med(r['mb_per_s'] for r in b):.0f} MB/s) | {x/y:.2f}x |")
    print("per run:", ", ".join(f"{r['ops_per_s']:,.0f}" for r in a), "|", ", ".join(f"{r['ops_per_s']:,.0f}" for r in b))
PY
