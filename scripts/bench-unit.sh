#!/usr/bin/env bash
# The storage unit's benchmarks beside their physical limits, measured in the same
# run on the same disk and machine (see docs/benchmarks.md):
#   1. fio sequential 1 MiB writes ending in an fsync   (the disk's bandwidth)
#   2. fio 4 KiB writes, each followed by fdatasync      (a unit without group commit)
#   3. trex unit, durable 4 KiB writes (group commit)     -> compared with 1 and 2
#   4. iperf3 over loopback, one stream                   (the network's bandwidth)
#   5. trex unit with --sync never, 4 KiB writes           -> compared with 4
# Each is run RUNS times (default 3), alternating, and medians are reported.
# Needs fio, iperf3 and python3 (apt-get install -y fio iperf3).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-10}
DIR=${BENCH_DIR:-$PWD/target/bench}
PORT=${PORT:-7499}
for tool in fio iperf3 python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing; install it (apt-get install -y fio iperf3)" >&2; exit 1; }
done
echo "== building release binaries" >&2
cargo build --release --quiet
TREX=target/release/trex
BENCH=target/release/trex-bench
rm -rf "$DIR" && mkdir -p "$DIR/results"
cleanup() { kill "${UNIT_PID:-}" "${IPERF_PID:-}" 2>/dev/null || true; rm -rf "$DIR/fio" "$DIR/unit"; }
trap cleanup EXIT

start_unit() { # $1 = sync mode
  rm -rf "$DIR/unit"
  "$TREX" node storage --listen "127.0.0.1:$PORT" --data-dir "$DIR/unit" --sync "$1" 2>"$DIR/unit.log" &
  UNIT_PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$DIR/unit.log" 2>/dev/null && return; sleep 0.1; done
  echo "error: the unit did not start; see $DIR/unit.log" >&2; exit 1
}
stop_unit() { kill "$UNIT_PID"; wait "$UNIT_PID" 2>/dev/null || true; UNIT_PID=; }

iperf3 -s -B 127.0.0.1 -p 5299 >/dev/null 2>&1 & IPERF_PID=$!
sleep 0.5
for i in $(seq "$RUNS"); do
  echo "== run $i/$RUNS: fio sequential 1 MiB + fsync" >&2
  mkdir -p "$DIR/fio"
  fio --name=seq --directory="$DIR/fio" --rw=write --bs=1m --size=1g --end_fsync=1 \
      --output-format=json >"$DIR/results/fio-seq-$i.json"
  rm -rf "$DIR/fio"; mkdir -p "$DIR/fio"
  echo "== run $i/$RUNS: fio 4 KiB + fdatasync each" >&2
  fio --name=fsync4k --directory="$DIR/fio" --rw=write --bs=4k --size=64m --fdatasync=1 \
      --runtime="$SECS" --output-format=json >"$DIR/results/fio-4k-$i.json"
  rm -rf "$DIR/fio"
  echo "== run $i/$RUNS: trex unit, --sync always, 4 KiB, 8 clients x 32 in flight" >&2
  start_unit always
  "$BENCH" unit-write --node "127.0.0.1:$PORT" --size 4KiB --clients 8 --depth 32 \
      --duration "${SECS}s" --json "$DIR/results/unit-always-$i.json" >&2
  stop_unit
  echo "== run $i/$RUNS: iperf3 loopback" >&2
  iperf3 -c 127.0.0.1 -p 5299 -t 5 -J >"$DIR/results/iperf-$i.json"
  echo "== run $i/$RUNS: trex unit, --sync never, 4 KiB x 16 per request, 4 clients x 8 in flight" >&2
  start_unit never
  "$BENCH" unit-write --node "127.0.0.1:$PORT" --size 4KiB --clients 4 --depth 8 --batch 16 \
      --duration "${SECS}s" --json "$DIR/results/unit-never-$i.json" >&2
  stop_unit
done

python3 - "$DIR/results" "$RUNS" <<'PY'
import json, statistics, sys, os
d, runs = sys.argv[1], int(sys.argv[2])
def load(name): return [json.load(open(os.path.join(d, f"{name}-{i}.json"))) for i in range(1, runs + 1)]
med = statistics.median
seq = med(r["jobs"][0]["write"]["bw_bytes"] / 1e6 for r in load("fio-seq"))
iops4k = med(r["jobs"][0]["write"]["iops"] for r in load("fio-4k"))
ua = load("unit-always"); un = load("unit-never")
ua_mb, ua_ops = med(r["mb_per_s"] for r in ua), med(r["ops_per_s"] for r in ua)
ua_p99 = med(r["latency_us"]["p99"] for r in ua)
un_mb = med(r["mb_per_s"] for r in un)
net = med(r["end"]["sum_received"]["bits_per_second"] / 8e6 for r in load("iperf"))
print(f"| measure (median of {runs}) | trex | comparison | ratio |")
print("|---|---|---|---|")
print(f"| durable 4 KiB writes vs disk bandwidth (fio 1 MiB seq + fsync) | {ua_mb:.0f} MB/s | {seq:.0f} MB/s | {ua_mb/seq:.2f} |")
print(f"| durable 4 KiB writes vs fio 4 KiB + fdatasync each | {ua_ops:.0f} writes/s | {iops4k:.0f} writes/s | {ua_ops/iops4k:.1f}x |")
print(f"| --sync never 4 KiB writes vs loopback (iperf3, 1 stream) | {un_mb:.0f} MB/s | {net:.0f} MB/s | {un_mb/net:.2f} |")
print(f"\ndurable 4 KiB p99 latency per request: {ua_p99:.0f} us (median of runs)")
print("per run:", ", ".join(f"{r['mb_per_s']:.0f}" for r in ua), "MB/s durable;",
      ", ".join(f"{r['mb_per_s']:.0f}" for r in un), "MB/s sync never")
PY
