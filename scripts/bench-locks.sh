#!/usr/bin/env bash
# Sequencer tokens beside Redis INCR, and lock acquire+release beside etcd lease
# grant+revoke, each measured in the same run on this machine:
#   trex-bench tokens  --clients 50 --depth 64 [--batch 100]   vs  redis-benchmark -t incr -c 50 -P 64
#   trex-bench lock    --clients 64 (3 consensus nodes)          vs  trex-bench etcd-lease (3 etcd nodes)
# RUNS rounds (default 3), alternating; medians and ratios are printed.
# Needs redis-server (redis-benchmark), etcd (apt-get install -y redis-server etcd-server), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-5}
DIR=${BENCH_DIR:-$PWD/target/bench-locks}
for t in redis-server redis-benchmark etcd python3 curl; do
  command -v $t >/dev/null || { echo "error: $t is missing; apt-get install -y redis-server etcd-server" >&2; exit 1; }
done
echo "== building release binaries" >&2
cargo build --release --quiet
T=target/release/trex
B=target/release/trex-bench
E=127.0.0.1:7460,127.0.0.1:7461,127.0.0.1:7462
IC="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
rm -rf "$DIR" && mkdir -p "$DIR/results"
# Every process this script starts is recorded here and stopped by its PID
# (a pattern would miss the sequencer, whose command line has no --data-dir,
# and could hit someone else's processes).
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Wait (at most 10 s each) until they are gone, so the next round starts clean.
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
trap stop_all EXIT

for i in $(seq "$RUNS"); do
  echo "== run $i/$RUNS: trex cluster (3 consensus, 1 unit, 1 sequencer)" >&2
  rm -rf "$DIR/trex"
  for n in 1 2 3; do "$T" node consensus --id $n --listen 127.0.0.1:746$((n-1)) --peers "$E" --data-dir "$DIR/trex/n$n" 2>"$DIR/c$n.log" & PIDS+=($!); done
  sleep 1
  "$T" node storage --listen 127.0.0.1:7470 --data-dir "$DIR/trex/u" --endpoints "$E" 2>"$DIR/u.log" & PIDS+=($!)
  for _ in $(seq 50); do "$T" members --endpoints "$E" 2>/dev/null | grep -q storage && break; sleep 0.2; done
  "$T" layout init --stripes 1 --replicas 1 --endpoints "$E" >/dev/null
  "$T" node sequencer --listen 127.0.0.1:7480 --endpoints "$E" 2>"$DIR/q.log" & PIDS+=($!)
  for _ in $(seq 50); do "$T" token --node 127.0.0.1:7480 >/dev/null 2>&1 && break; sleep 0.2; done
  "$B" tokens --sequencer 127.0.0.1:7480 --clients 50 --depth 64 --duration "${SECS}s" --json "$DIR/results/tokens-$i.json" >&2
  "$B" tokens --sequencer 127.0.0.1:7480 --clients 50 --depth 64 --batch 100 --duration "${SECS}s" --json "$DIR/results/tokens100-$i.json" >&2
  "$B" lock --endpoints "$E" --clients 64 --duration "${SECS}s" --json "$DIR/results/lock-$i.json" >&2
  stop_all
  echo "== run $i/$RUNS: redis INCR" >&2
  redis-server --port 6399 --save '' --appendonly no >"$DIR/redis.log" 2>&1 & PIDS+=($!)
  sleep 0.5
  redis-benchmark -p 6399 -t incr -c 50 -P 64 -n 5000000 --csv >"$DIR/results/redis-$i.csv" 2>/dev/null
  stop_all
  echo "== run $i/$RUNS: etcd lease grant+revoke" >&2
  rm -rf "$DIR/etcd"
  for n in 1 2 3; do
    etcd --name e$n --data-dir "$DIR/etcd/e$n" --listen-client-urls http://127.0.0.1:2379$n \
      --advertise-client-urls http://127.0.0.1:2379$n --listen-peer-urls http://127.0.0.1:2380$n \
      --initial-advertise-peer-urls http://127.0.0.1:2380$n --initial-cluster "$IC" \
      --initial-cluster-state new --logger zap --log-level error 2>"$DIR/e$n.log" & PIDS+=($!)
  done
  for _ in $(seq 100); do curl -sf http://127.0.0.1:23791/health >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1
  "$B" etcd-lease --endpoint 127.0.0.1:23791 --clients 64 --duration "${SECS}s" --json "$DIR/results/etcd-$i.json" >&2
  stop_all
done

python3 - "$DIR/results" "$RUNS" <<'PY'
import json, statistics, sys, os, csv
d, runs = sys.argv[1], int(sys.argv[2])
med = statistics.median
def load(n): return [json.load(open(os.path.join(d, f"{n}-{i}.json"))) for i in range(1, runs + 1)]
def redis(i):
    rows = list(csv.reader(open(os.path.join(d, f"redis-{i}.csv"))))
    return float(rows[1][1])
tk, tb, lk, et = load("tokens"), load("tokens100"), load("lock"), load("etcd")
rd = [redis(i) for i in range(1, runs + 1)]
t1, t100, l, e, r = med(x["ops_per_s"] for x in tk), med(x["ops_per_s"] for x in tb), med(x["ops_per_s"] for x in lk), med(x["ops_per_s"] for x in et), med(rd)
print(f"| measure (median of {runs}) | trex | comparison | ratio |")
print("|---|---|---|---|")
print(f"| tokens, 1 address/request, 50 clients x 64 pipelined | {t1:,.0f} req/s | Redis INCR {r:,.0f} req/s | {t1/r:.2f}x |")
print(f"| tokens, 100 addresses/request | {t100/1e6:,.1f} M addresses/s | target 50 M/s | {t100/50e6:.1f}x |")
print(f"| lock acquire+release pairs, 64 clients | {l:,.0f} pairs/s | etcd lease grant+revoke {e:,.0f} pairs/s | {l/e:.1f}x |")
print("per run tokens:", ", ".join(f"{x['ops_per_s']:,.0f}" for x in tk), "| redis:", ", ".join(f"{x:,.0f}" for x in rd),
      "| lock:", ", ".join(f"{x['ops_per_s']:,.0f}" for x in lk), "| etcd:", ", ".join(f"{x['ops_per_s']:,.0f}" for x in et))
print(f"p99: tokens {med(x['latency_us']['p99'] for x in tk)/1000:.1f} ms, lock {med(x['latency_us']['p99'] for x in lk)/1000:.1f} ms, etcd lease {med(x['latency_us']['p99'] for x in et)/1000:.1f} ms")
PY
