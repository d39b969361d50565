#!/usr/bin/env bash
# Durable appends (`trex up --sync always`: every acknowledged entry fdatasync'ed on
# both replicas, group commit) as clients are added: 100 B entries, each client
# one batch of 64 in flight (trex-bench append --clients N --depth 64), N = CLIENTS
# (default "2 4 8 16"), SECS seconds each (default 5), RUNS rounds (default 3), each
# round on a fresh cluster and an empty page cache. Prints entries/s and p99 per N
# (medians) and the unit's sync count and mean batch from its metrics.
#   BENCH_LOCK=FILE: hold flock FILE during each round; BASE_PORT (17800);
#   BENCH_DIR (target/bench-sync-clients). Every process started is stopped by PID.
set -euo pipefail
# Plain TCP: a loopback benchmark of the log, not of TLS (scripts/bench-tls.sh
# measures that). `trex up` says so loudly.
export TREX_INSECURE=1
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-5}
CLIENTS=${CLIENTS:-"2 4 8 16"}
SIZE=${SIZE:-100}
BASE_PORT=${BASE_PORT:-17800}
DIR=${BENCH_DIR:-$PWD/target/bench-sync-clients}
LOCKED=0
lock() { if [ -n "${BENCH_LOCK:-}" ]; then exec 9>"$BENCH_LOCK"; flock 9; LOCKED=1; fi; }
unlock() { if [ "$LOCKED" = 1 ]; then flock -u 9; exec 9>&-; LOCKED=0; fi; }
lock
cargo build --release --quiet -p trex -p trex-bench
unlock
T=$PWD/target/release/trex
B=$PWD/target/release/trex-bench
E=127.0.0.1:$BASE_PORT,127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2))
rm -rf "$DIR" && mkdir -p "$DIR/results"
UP=
cleanup() {
  if [ -n "$UP" ]; then
    kill -INT "$UP" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$UP" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$UP" 2>/dev/null || true
    wait "$UP" 2>/dev/null || true
  fi
  UP=
  rm -rf "$DIR/trex"
  unlock
}
trap cleanup EXIT
for i in $(seq "$RUNS"); do
  lock
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  "$T" up --base-port "$BASE_PORT" --sync always --data-dir "$DIR/trex" \
    --metrics-base-port $((BASE_PORT + 150)) >"$DIR/up.log" 2>&1 & UP=$!
  for _ in $(seq 300); do grep -q "cluster is up" "$DIR/up.log" && break; sleep 0.1; done
  grep -q "cluster is up" "$DIR/up.log" || { echo "error: trex up failed; see $DIR/up.log" >&2; exit 1; }
  for c in $CLIENTS; do
    echo "== round $i/$RUNS: $c clients" >&2
    before=$(curl -s "http://127.0.0.1:$((BASE_PORT + 150 + 3))/metrics" | awk '/^trex_unit_sync_batch_records_count /{c=$2} /^trex_unit_sync_batch_records_sum /{s=$2} END {print c+0, s+0}')
    timeout $((SECS + 60)) "$B" append --endpoints "$E" --size "$SIZE" --clients "$c" --depth 64 \
      --duration "${SECS}s" --json "$DIR/results/c$c-$i.json" >&2
    after=$(curl -s "http://127.0.0.1:$((BASE_PORT + 150 + 3))/metrics" | awk '/^trex_unit_sync_batch_records_count /{c=$2} /^trex_unit_sync_batch_records_sum /{s=$2} END {print c+0, s+0}')
    echo "$before|$after" >"$DIR/results/c$c-$i.sync"
  done
  cleanup
done
python3 - "$DIR/results" "$RUNS" "$CLIENTS" "$SECS" <<'PY'
import json, os, statistics, sys
d, runs, clients, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), float(sys.argv[4])
med = statistics.median
print(f"durable appends (--sync always), 100 B, one batch of 64 in flight per client; medians of {runs} rounds")
print("| clients | entries/s | p99 per batch | syncs/s on unit 1 | records per sync |")
print("|---|---|---|---|---|")
for c in clients:
    rs = [json.load(open(os.path.join(d, f"c{c}-{i}.json"))) for i in range(1, runs + 1)]
    syncs, batch = [], []
    for i in range(1, runs + 1):
        try:
            b, a = open(os.path.join(d, f"c{c}-{i}.sync")).read().strip().split("|")
            (bc, bs), (ac, as_) = [tuple(float(x) for x in v.split()) for v in (b, a)]
            n, s = (ac - bc), (as_ - bs)
            syncs.append(n / secs); batch.append(s / max(n, 1))
        except Exception:
            pass
    per = ", ".join(f"{r['ops_per_s']:,.0f}" for r in rs)
    sy = f"{med(syncs):,.0f}" if syncs else "—"
    ba = f"{med(batch):,.0f}" if batch else "—"
    print(f"| {c} | {med(r['ops_per_s'] for r in rs):,.0f} ({per}) | {med(r['latency_us']['p99'] for r in rs) / 1000:.1f} ms | {sy} | {ba} |")
PY
