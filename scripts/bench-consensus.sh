#!/usr/bin/env bash
# Committed commands/s of a three-node consensus group on loopback (fsync on),
# beside a three-node etcd cluster measured the same way in the same run:
#   trex-bench consensus  : 64 clients, one ~100-byte command in flight each (a read of a
#                           lock that does not exist: it leaves nothing behind)
#   trex-bench etcd-put   : 64 clients, one 100-byte put in flight each (JSON gateway)
# RUNS rounds (default 3), alternating; medians and the ratio are printed.
# Needs etcd (apt-get install -y etcd-server) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-10}
DIR=${BENCH_DIR:-$PWD/target/bench-consensus}
command -v etcd >/dev/null || { echo "error: etcd is missing; apt-get install -y etcd-server" >&2; exit 1; }
echo "== building release binaries" >&2
cargo build --release --quiet
T=target/release/trex
B=target/release/trex-bench
P=127.0.0.1:7450,127.0.0.1:7451,127.0.0.1:7452
IC="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
rm -rf "$DIR" && mkdir -p "$DIR/results"
# Stops both groups by the PIDs this script started and waits (at most 10 s)
# until they are gone: an etcd still shutting down can write into the next
# round's fresh data directory, and the new cluster then refuses to start
# ("member has already been bootstrapped"). Never by name: that could hit
# someone else's nodes.
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT

wait_leader() {
  for _ in $(seq 100); do
    "$T" endpoint status --endpoints "$P" -w json 2>/dev/null | grep -q '"leading":true' && return; sleep 0.1
  done
  echo "error: no trex leader; see $DIR/trex-*.log" >&2; exit 1
}

for i in $(seq "$RUNS"); do
  echo "== run $i/$RUNS: trex consensus, 3 nodes" >&2
  rm -rf "$DIR/trex"
  for n in 1 2 3; do
    "$T" node consensus --id $n --listen 127.0.0.1:745$((n-1)) --peers "$P" --data-dir "$DIR/trex/n$n" 2>"$DIR/trex-$n.log" & PIDS+=($!)
  done
  wait_leader
  "$B" consensus --endpoints "$P" --clients 64 --duration "${SECS}s" --json "$DIR/results/trex-$i.json" >&2
  cleanup; sleep 0.5
  echo "== run $i/$RUNS: etcd, 3 nodes" >&2
  rm -rf "$DIR/etcd"
  for n in 1 2 3; do
    etcd --name e$n --data-dir "$DIR/etcd/e$n" --listen-client-urls http://127.0.0.1:2379$n \
      --advertise-client-urls http://127.0.0.1:2379$n --listen-peer-urls http://127.0.0.1:2380$n \
      --initial-advertise-peer-urls http://127.0.0.1:2380$n --initial-cluster "$IC" \
      --initial-cluster-state new --logger zap --log-level error 2>"$DIR/etcd-$n.log" & PIDS+=($!)
  done
  for _ in $(seq 100); do curl -sf http://127.0.0.1:23791/health >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1
  "$B" etcd-put --endpoint 127.0.0.1:23791 --clients 64 --duration "${SECS}s" --json "$DIR/results/etcd-$i.json" >&2
  cleanup; sleep 0.5
done

python3 - "$DIR/results" "$RUNS" <<'PY'
import json, statistics, sys, os
d, runs = sys.argv[1], int(sys.argv[2])
def load(n): return [json.load(open(os.path.join(d, f"{n}-{i}.json"))) for i in range(1, runs + 1)]
med = statistics.median
t, e = load("trex"), load("etcd")
to, eo = med(r["ops_per_s"] for r in t), med(r["ops_per_s"] for r in e)
tp, ep = med(r["latency_us"]["p99"] for r in t), med(r["latency_us"]["p99"] for r in e)
print(f"| measure (median of {runs}) | trex | etcd | ratio |")
print("|---|---|---|---|")
print(f"| committed commands/s, 3 nodes, 64 clients | {to:.0f} | {eo:.0f} | {to/eo:.1f}x |")
print(f"| p99 latency | {tp/1000:.1f} ms | {ep/1000:.1f} ms | {ep/tp:.1f}x lower |")
print("per run trex:", ", ".join(f"{r['ops_per_s']:.0f}" for r in t), "| etcd:", ", ".join(f"{r['ops_per_s']:.0f}" for r in e))
PY
