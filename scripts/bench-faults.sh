#!/usr/bin/env bash
# Appends per second through one fault at a time, and the longest stall, on a
# fresh `trex up --units 5 --sync never` for each fault (2 stripes x 2 replicas
# and a spare; the failure detector on, as by default):
#   unit-kill        kill -9 of a storage unit (a chain's tail)
#   unit-cut         nft drops every packet to a unit's port for 6 s (one-way)
#   sequencer-stop   SIGSTOP of the active sequencer for 6 s (past its 3 s lease)
#   sequencer-cut    nft drops every packet to the active sequencer's port for 6 s
#   consensus-kill   kill -9 of the consensus leader
#   consensus-cut    nft drops every packet to the consensus leader's port for 6 s
# Load: trex-bench append, 100 B, 4 clients x 64 per blocking batch, SECS seconds
# (default 14), the fault at second 4. Printed per fault: the median rate of
# seconds 1-3 (undisturbed), the rate in the second of the fault, the lowest
# later second, and the longest batch (the longest stall an appender saw).
# Needs root and nft (apt-get install -y nftables) for the cuts; python3.
set -euo pipefail
# Plain TCP: these are loopback benchmarks of the log, not of TLS (scripts/bench-tls.sh
# measures that). `trex up` says so loudly; builds before TLS ignore the variable.
export TREX_INSECURE=1
cd "$(dirname "$0")/.."
SECS=${SECS:-14}
DIR=${BENCH_DIR:-$PWD/target/bench-faults}
FAULTS=${FAULTS:-"unit-kill unit-cut sequencer-stop sequencer-cut consensus-kill consensus-cut"}
BASE=7800
E=127.0.0.1:7800,127.0.0.1:7801,127.0.0.1:7802
echo "== building release binaries" >&2
cargo build --release --quiet
T=$PWD/target/release/trex
B=$PWD/target/release/trex-bench
rm -rf "$DIR" && mkdir -p "$DIR/results"
UP=
# The nodes of this script's `trex up` (its children) whose command line
# matches $2, signalled with $1: by PID, never by name alone, so another
# cluster on the machine is never hit.
signal_node() { local p; for p in $(pgrep -P "$UP" -f "$2"); do kill "$1" "$p"; done; }
cleanup() {
  nft delete table inet trex_bench_faults 2>/dev/null || true
  [ -n "$UP" ] && signal_node -CONT "trex node"
  [ -n "$UP" ] && kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
  UP=; true
}
trap cleanup EXIT
cut_port() {
  nft -f - <<NFT
add table inet trex_bench_faults
add chain inet trex_bench_faults input { type filter hook input priority 0; }
add rule inet trex_bench_faults input tcp dport $1 drop
NFT
}
active_sequencer_port() { "$T" layout show --endpoints "$E" | sed -n 's/^sequencer *\([0-9]*\).*/\1/p' | head -1; }
leader_port() { "$T" endpoint status --endpoints "$E" -w json | python3 -c 'import json,sys; print([r["endpoint"].split(":")[1] for r in json.load(sys.stdin) if r.get("leading")][0])'; }

for f in $FAULTS; do
  echo "== fault $f" >&2
  rm -rf "$DIR/up"
  "$T" up --units 5 --sync never --base-port $BASE --data-dir "$DIR/up" >"$DIR/up-$f.log" 2>&1 & UP=$!
  for _ in $(seq 300); do grep -q "cluster is up" "$DIR/up-$f.log" && break; sleep 0.1; done
  grep -q "cluster is up" "$DIR/up-$f.log" || { echo "error: trex up failed; see $DIR/up-$f.log" >&2; exit 1; }
  "$B" append --endpoints "$E" --size 100 --clients 4 --depth 64 --duration "${SECS}s" \
    --json "$DIR/results/$f.json" 2>"$DIR/results/$f.progress" & LOAD=$!
  sleep 4
  case $f in
    unit-kill) signal_node -9 "storage --listen 127.0.0.1:$((BASE + 21))" ;;
    unit-cut) cut_port $((BASE + 23)); sleep 6; nft delete table inet trex_bench_faults ;;
    sequencer-stop) p=$(active_sequencer_port); signal_node -STOP "sequencer --listen 127.0.0.1:$p"; sleep 6; signal_node -CONT "sequencer --listen 127.0.0.1:$p" ;;
    sequencer-cut) p=$(active_sequencer_port); cut_port "$p"; sleep 6; nft delete table inet trex_bench_faults ;;
    consensus-kill) p=$(leader_port); signal_node -9 "consensus --id [0-9]* --listen 127.0.0.1:$p" ;;
    consensus-cut) cut_port "$(leader_port)"; sleep 6; nft delete table inet trex_bench_faults ;;
  esac
  wait $LOAD || echo "warning: the load generator reported errors for $f" >&2
  cleanup
done
python3 - "$DIR/results" $FAULTS <<'PY'
import json, re, statistics, sys, os
d, faults = sys.argv[1], sys.argv[2:]
print("| fault | undisturbed (median of s 1-3) | second of the fault | lowest later second | longest batch |")
print("|---|---|---|---|---|")
for f in faults:
    rates = [float(m.group(1)) for m in (re.search(r"ops\s+(\d+) ops/s", l) for l in open(os.path.join(d, f + ".progress"))) if m]
    j = json.load(open(os.path.join(d, f + ".json")))
    before = statistics.median(rates[0:3]) if len(rates) >= 3 else float("nan")
    at = rates[4] if len(rates) > 4 else float("nan")
    low = min(rates[4:]) if len(rates) > 4 else float("nan")
    print(f"| {f} | {before:,.0f}/s | {at:,.0f}/s | {low:,.0f}/s | {j['latency_us']['max']/1e6:.2f} s |")
PY
