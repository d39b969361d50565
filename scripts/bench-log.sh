#!/usr/bin/env bash
# Shared-log appends beside NATS JetStream, same machine, same run:
#   trex up --sync never (page-cache mode, 2 stripes x 2 replicas) + trex-bench append
#   nats-server -js (file store; no fsync per ack either), 1 node / 1 replica and
#   3 nodes / 3 replicas, + scripts/nats-bench
# at 100 B and 4 KiB with 2048 appends in flight on both sides:
#   trex  "blocking":  32 clients x one batch of 64      (trex-bench append --clients 32 --depth 64)
#   trex  "pipelined":  8 clients x 4 batches of 64      (--clients 8 --depth 256 --batch 64)
#   NATS:              32 clients x windows of 64 publishes
# plus trex at about half its maximum (4 clients x 2 batches of 64) for the
# latency target. Then reads. RUNS rounds (default 3), SECS seconds each.
# Needs nats-server (apt-get install -y nats-server) and python3.
set -euo pipefail
# Plain TCP: a loopback benchmark of the log, not of TLS (scripts/bench-tls.sh
# measures that). `trex up` says so loudly.
export TREX_INSECURE=1
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
UP=; NATS=()
cleanup() {
  [ -n "$UP" ] && kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
  for p in "${NATS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
  # The data (gigabytes per run), not the logs: a session's runs filled the disk.
  rm -rf "$DIR"/trex/unit-* "$DIR"/trex/consensus-* "$DIR"/nats/n*/
  UP=; NATS=(); true
}
trap cleanup EXIT
# Every server starts on an empty page cache (root only), so neither side runs on
# memory the other one left behind. Note on this machine (a Firecracker VM with
# free page reporting): memory the guest frees is handed back to the host, and
# touching it again costs a slow fault — a profile of 4 KiB appends showed 49% of
# all CPU in the kernel zeroing fresh page-cache pages. Both sides pay it per byte
# written to their files; trex writes every entry twice (2 replicas).
fresh_cache() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
nats_up() { # nats_up NODES
  fresh_cache
  rm -rf "$DIR/nats"; mkdir -p "$DIR/nats"
  local routes="" i
  if [ "$1" -gt 1 ]; then routes=$(seq -s, -f "nats://127.0.0.1:63%.0f" 41 $((40 + $1))); fi
  for i in $(seq "$1"); do
    if [ "$1" -gt 1 ]; then
      nats-server -js -sd "$DIR/nats/n$i" -a 127.0.0.1 -p $((4340 + i)) -n "n$i" \
        --cluster_name bench --cluster "nats://127.0.0.1:$((6340 + i))" --routes "$routes" \
        >"$DIR/nats/n$i.log" 2>&1 & NATS+=($!)
    else
      nats-server -js -sd "$DIR/nats/n$i" -a 127.0.0.1 -p $((4340 + i)) >"$DIR/nats/n$i.log" 2>&1 & NATS+=($!)
    fi
  done
  for _ in $(seq 100); do
    if [ "$1" -eq 1 ] || grep -q "JetStream cluster new metadata leader" "$DIR/nats/n1.log"; then break; fi
    sleep 0.1
  done
  sleep 1
}
for i in $(seq "$RUNS"); do
  echo "== run $i/$RUNS: trex up --sync never" >&2
  rm -rf "$DIR/trex"
  fresh_cache
  "$T" up --base-port 7600 --sync never --data-dir "$DIR/trex" >"$DIR/up.log" 2>&1 & UP=$!
  for _ in $(seq 300); do grep -q "cluster is up" "$DIR/up.log" && break; sleep 0.1; done
  grep -q "cluster is up" "$DIR/up.log" || { echo "error: trex up failed; see $DIR/up.log" >&2; exit 1; }
  for s in 100 4KiB; do
    "$B" append --endpoints "$E" --size $s --clients 32 --depth 64 --duration "${SECS}s" --json "$DIR/results/trex-block-$s-$i.json" >&2
    "$B" append --endpoints "$E" --size $s --clients 8 --depth 256 --batch 64 --duration "${SECS}s" --json "$DIR/results/trex-pipe-$s-$i.json" >&2
    "$B" append --endpoints "$E" --size $s --clients 4 --depth 128 --batch 64 --duration "${SECS}s" --json "$DIR/results/trex-half-$s-$i.json" >&2
  done
  "$B" read --endpoints "$E" --size 4KiB --clients 8 --depth 256 --duration "${SECS}s" --json "$DIR/results/trex-read-$i.json" >&2
  cleanup
  for r in 1 3; do
    echo "== run $i/$RUNS: nats-server -js, $r node(s), $r replica(s)" >&2
    nats_up $r
    "$N" 127.0.0.1:4341 100 32 64 "$SECS" $r "$DIR/results/nats$r-100-$i.json" >&2
    "$N" 127.0.0.1:4341 4096 32 64 "$SECS" $r "$DIR/results/nats$r-4KiB-$i.json" >&2
    cleanup
  done
done
python3 - "$DIR/results" "$RUNS" <<'PY'
import json, statistics, sys, os
d, runs = sys.argv[1], int(sys.argv[2])
med = statistics.median
def load(n): return [json.load(open(os.path.join(d, f"{n}-{i}.json"))) for i in range(1, runs + 1)]
def ops(rs): return med(r["ops_per_s"] for r in rs)
def mb(rs): return med(r["mb_per_s"] for r in rs)
def p99(rs): return med(r["latency_us"]["p99"] for r in rs)
print(f"medians of {runs} runs; 2048 appends in flight on every line but 'half'")
print("| entry | trex blocking 32x64 | trex pipelined 8x4x64 | NATS R1 32x64 | NATS R3 32x64 | best trex / R1 | best trex / R3 |")
print("|---|---|---|---|---|---|---|")
for s in ("100", "4KiB"):
    b, p, n1, n3 = load(f"trex-block-{s}"), load(f"trex-pipe-{s}"), load(f"nats1-{s}"), load(f"nats3-{s}")
    best = max(ops(b), ops(p))
    print(f"| {s} | {ops(b):,.0f}/s ({mb(b):.0f} MB/s) | {ops(p):,.0f}/s ({mb(p):.0f} MB/s) | {ops(n1):,.0f}/s ({mb(n1):.0f} MB/s) | {ops(n3):,.0f}/s ({mb(n3):.0f} MB/s) | {best/ops(n1):.2f}x | {best/ops(n3):.2f}x |")
    for name, rs in (("trex blocking", b), ("trex pipelined", p), ("NATS R1", n1), ("NATS R3", n3)):
        print(f"  {s} {name} per run:", ", ".join(f"{r['ops_per_s']:,.0f}" for r in rs), f"| p99 {p99(rs):.0f} us per batch/window")
    h = load(f"trex-half-{s}")
    print(f"  {s} trex at 4x2x64 in flight: {ops(h):,.0f}/s = {ops(h)/best:.2f} of the best; p99 per 64-entry batch {p99(h):.0f} us (per run: " + ", ".join(f"{r['ops_per_s']:,.0f}/{r['latency_us']['p99']}us" for r in h) + ")")
r = load("trex-read")
print(f"reads 4 KiB, 8 clients x 256: {ops(r):,.0f}/s ({mb(r):.0f} MB/s); per run: " + ", ".join(f"{x['mb_per_s']:.0f} MB/s" for x in r))
PY
