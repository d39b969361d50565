#!/usr/bin/env bash
# Open-loop appends, the way a user at a steady arrival rate sees them, beside NATS
# JetStream at the same offered rates, same machine, same run:
#   trex up --sync never (2 stripes x 2 replicas) + trex-bench append --rate
#   nats-server -js (file store, no fsync per ack either), 1 node / R1 and
#   3 nodes / R3, + scripts/nats-bench at the same rate
# For each entry size (SIZES, default "100 4KiB"):
#   1. the closed-loop peak (PEAK_SECS; 32 clients x one batch of 64 in flight);
#   2. the sustainable peak: the highest of PEAK x 1.0, 0.8, 0.65, 0.5, 0.35, 0.25
#      whose open-loop p99 stays under 100 ms (and which is offered in full, under
#      1 % of the requests missed) for SECS;
#   3. open loop at PCTS (default 25 50 80) % of it, SECS each;
#   4. NATS R1 and R3 at 25/50/80/100 % of the same rate, SECS each.
# Open loop everywhere: 32 clients, requests (windows) of 64 entries, one in flight
# per client; latency per request from when it was due (coordinated omission
# corrected); WARMUP seconds left out. Every run starts on a fresh cluster and an
# empty page cache, and its data is removed afterwards. Per trex run: the JSON
# summary, an HdrHistogram interval log and an SVG of latency over time; per NATS
# run: the JSON summary and a CSV of latency per second. One table at the end.
#   SECS (60), PEAK_SECS (10), WARMUP (2), SIZES, PCTS, NATS_REPLICAS ("1 3");
#   QUICK=1: SECS=10, PEAK_SECS=4 (a few minutes per size);
#   BENCH_LOCK=FILE: hold flock FILE during each measurement (not in between, so
#   others may build); BASE_PORT (17700); BENCH_DIR (target/bench-openloop).
# Every process it starts is stopped by its PID. Needs nats-server and python3.
set -euo pipefail
# Plain TCP: a loopback benchmark of the log, not of TLS (scripts/bench-tls.sh
# measures that). `trex up` says so loudly.
export TREX_INSECURE=1
cd "$(dirname "$0")/.."
if [ -n "${QUICK:-}" ]; then SECS=${SECS:-10}; PEAK_SECS=${PEAK_SECS:-4}; fi
SECS=${SECS:-60}
PEAK_SECS=${PEAK_SECS:-10}
WARMUP=${WARMUP:-2}
SIZES=${SIZES:-"100 4KiB"}
PCTS=${PCTS:-"25 50 80"}
NATS_REPLICAS=${NATS_REPLICAS:-"1 3"}
BASE_PORT=${BASE_PORT:-17700}
DIR=${BENCH_DIR:-$PWD/target/bench-openloop}
CLIENTS=32
BATCH=64
command -v nats-server >/dev/null || { echo "error: nats-server is missing; apt-get install -y nats-server" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is missing" >&2; exit 1; }

LOCKED=0
lock() { if [ -n "${BENCH_LOCK:-}" ]; then exec 9>"$BENCH_LOCK"; flock 9; LOCKED=1; fi; }
unlock() { if [ "$LOCKED" = 1 ]; then flock -u 9; exec 9>&-; LOCKED=0; fi; }

echo "== building release binaries and the NATS comparison client" >&2
lock
cargo build --release --quiet -p trex -p trex-bench
(cd scripts/nats-bench && cargo build --release --quiet)
unlock
T=$PWD/target/release/trex
B=$PWD/target/release/trex-bench
N=$PWD/scripts/nats-bench/target/release/nats-bench
E=127.0.0.1:$BASE_PORT,127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2))
NATS_PORT=$((BASE_PORT + 100))
rm -rf "$DIR" && mkdir -p "$DIR/results"

# Every process this script starts, stopped by its PID (a pattern could hit
# someone else's processes).
UP=; NATS=()
cleanup() {
  if [ -n "$UP" ]; then
    kill -INT "$UP" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$UP" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$UP" 2>/dev/null || true
    wait "$UP" 2>/dev/null || true
  fi
  for p in "${NATS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NATS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  UP=; NATS=()
  rm -rf "$DIR/trex" "$DIR/nats"
  unlock
}
trap cleanup EXIT
# Every server starts on an empty page cache (root only), so neither side runs
# on memory the other one left behind.
fresh_cache() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

trex_up() {
  lock
  fresh_cache
  "$T" up --base-port "$BASE_PORT" --sync never --data-dir "$DIR/trex" >"$DIR/up.log" 2>&1 & UP=$!
  for _ in $(seq 300); do grep -q "cluster is up" "$DIR/up.log" && break; sleep 0.1; done
  grep -q "cluster is up" "$DIR/up.log" || { echo "error: trex up failed; see $DIR/up.log" >&2; exit 1; }
}

nats_up() { # nats_up NODES
  lock
  fresh_cache
  mkdir -p "$DIR/nats"
  local routes="" i
  if [ "$1" -gt 1 ]; then routes=$(seq -s, -f "nats://127.0.0.1:%.0f" $((NATS_PORT + 51)) $((NATS_PORT + 50 + $1))); fi
  for i in $(seq "$1"); do
    if [ "$1" -gt 1 ]; then
      nats-server -js -sd "$DIR/nats/n$i" -a 127.0.0.1 -p $((NATS_PORT + i)) -n "n$i" \
        --cluster_name bench --cluster "nats://127.0.0.1:$((NATS_PORT + 50 + i))" --routes "$routes" \
        >"$DIR/nats-n$i.log" 2>&1 & NATS+=($!)
    else
      nats-server -js -sd "$DIR/nats/n$i" -a 127.0.0.1 -p $((NATS_PORT + i)) >"$DIR/nats-n$i.log" 2>&1 & NATS+=($!)
    fi
  done
  for _ in $(seq 100); do
    if [ "$1" -eq 1 ] || grep -q "JetStream cluster new metadata leader" "$DIR/nats-n1.log"; then break; fi
    sleep 0.1
  done
  sleep 1
}

# Reads a field of a JSON summary: json FILE EXPR (EXPR over `j`).
json() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }

# trex_open SIZE RATE NAME: one open-loop run on a fresh cluster.
trex_open() {
  trex_up
  echo "== trex $1 open loop at $2/s ($3)" >&2
  timeout $((SECS + WARMUP + 60)) "$B" append --endpoints "$E" --size "$1" --clients $CLIENTS --batch $BATCH \
    --rate "$2" --warmup "${WARMUP}s" --duration "${SECS}s" --json "$DIR/results/$3.json" \
    --histogram-log "$DIR/results/$3.hlog" --plot "$DIR/results/$3.svg" >&2 || true
  for u in "$DIR"/trex/logs/unit-*.log; do
    grep -h "rollovers so far" "$u" 2>/dev/null | tail -n 1 | sed "s|^.*segments; |   $(basename "$u" .log): |" >&2 || true
  done
  cleanup
}

for s in $SIZES; do
  bytes=$(python3 -c "import sys; s=sys.argv[1]; print(int(s[:-3])*1024 if s.endswith('KiB') else int(s))" "$s")
  trex_up
  echo "== trex $s closed-loop peak" >&2
  timeout $((PEAK_SECS + 60)) "$B" append --endpoints "$E" --size "$s" --clients $CLIENTS --depth $BATCH \
    --warmup "${WARMUP}s" --duration "${PEAK_SECS}s" --json "$DIR/results/trex-$s-closed.json" >&2
  cleanup
  peak=$(json "$DIR/results/trex-$s-closed.json" 'int(j["ops_per_s"])')
  sustained=0
  for f in 100 80 65 50 35 25; do
    rate=$((peak * f / 100))
    trex_open "$s" "$rate" "trex-$s-search-$f"
    r="$DIR/results/trex-$s-search-$f.json"
    if [ -f "$r" ] && [ "$(json "$r" 'int(j["latency_us"]["p99"] < 100000 and j.get("missed", 0) * '"$BATCH"' < 0.01 * j["ops"] and j["errors"] == 0)')" = 1 ]; then
      sustained=$rate
      cp "$r" "$DIR/results/trex-$s-100.json"
      for x in hlog svg; do cp "$DIR/results/trex-$s-search-$f.$x" "$DIR/results/trex-$s-100.$x" || true; done
      break
    fi
  done
  if [ "$sustained" = 0 ]; then
    echo "== trex $s: no rate down to 25 % of the closed-loop peak kept p99 under 100 ms; using 25 %" >&2
    sustained=$((peak / 4))
    cp "$DIR/results/trex-$s-search-25.json" "$DIR/results/trex-$s-100.json" || true
  fi
  echo "$sustained" >"$DIR/results/sustained-$s"
  for p in $PCTS; do
    trex_open "$s" $((sustained * p / 100)) "trex-$s-$p"
  done
  for r in $NATS_REPLICAS; do
    for p in $PCTS 100; do
      rate=$((sustained * p / 100))
      nats_up "$r"
      echo "== NATS R$r $s open loop at $rate/s" >&2
      timeout $((SECS + WARMUP + 90)) "$N" 127.0.0.1:$((NATS_PORT + 1)) "$bytes" $CLIENTS $BATCH "$SECS" "$r" \
        "$DIR/results/nats$r-$s-$p.json" "$rate" "$WARMUP" "$DIR/results/nats$r-$s-$p.csv" >&2 || true
      cleanup
    done
  done
done

python3 - "$DIR/results" "$SIZES" "$PCTS" "$NATS_REPLICAS" "$SECS" <<'PY'
import json, os, sys
d, sizes, pcts, reps, secs = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5]
def load(n):
    p = os.path.join(d, n + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
def ms(us): return f"{us / 1000:.1f}"
def cell(j, size):
    if j is None: return "—"
    l = j["latency_us"]
    miss = j.get("missed", 0)
    mb = j.get("mb_per_s", 0)
    s = f"{j['ops_per_s']:,.0f}/s"
    if size != "100": s += f" ({mb:.0f} MB/s)"
    s += f"; p50 {ms(l['p50'])}, p99 {ms(l['p99'])}, p99.9 {ms(l['p999'])}, max {ms(l['max'])} ms"
    if miss: s += f"; {miss:,} requests missed"
    return s
print(f"open loop, {secs} s per run after the warm-up; 32 clients, requests of 64 entries (NATS: windows of 64 publishes), one in flight per client; latency per request, ms")
for size in sizes:
    c = load(f"trex-{size}-closed")
    sus = int(open(os.path.join(d, f"sustained-{size}")).read())
    print(f"\n{size}: closed-loop peak {c['ops_per_s']:,.0f}/s (p99 {ms(c['latency_us']['p99'])} ms); sustainable peak (p99 < 100 ms) {sus:,}/s = {sus / c['ops_per_s']:.2f} of it")
    hdr = "| load | offered | trex | " + " | ".join(f"NATS R{r}" for r in reps) + " |"
    print(hdr)
    print("|" + "---|" * (3 + len(reps)))
    for p in pcts + ["100"]:
        t = load(f"trex-{size}-{p}")
        print(f"| {p} % | {sus * int(p) // 100:,}/s | {cell(t, size)} | " + " | ".join(cell(load(f"nats{r}-{size}-{p}"), size) for r in reps) + " |")
    for p in pcts + ["100"]:
        t = load(f"trex-{size}-{p}")
        if t:
            l = t["latency_us"]
            print(f"  trex {size} at {p} %: max / p99.9 = {l['max'] / max(l['p999'], 1):.1f}")
PY
