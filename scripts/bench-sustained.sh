#!/usr/bin/env bash
# Sustained 4 KiB appends for SECS (default 60) seconds, beside what the disk allows
# and beside NATS JetStream R3, same machine, same run:
#   fio: two sequential buffered writers of 1 MiB blocks, one 4 GiB file each
#        (FIO_SIZE), ended by an fsync: bytes over wall time, the fsync included
#        (O_DIRECT is no measure here: the virtual disk is cached by the host);
#   trex up --sync never (2 stripes x 2 replicas) + trex-bench append --size 4KiB
#        --clients 32 --depth 64 (closed loop), per-second rates from its progress;
#   nats-server -js, 3 nodes, R3 + scripts/nats-bench 4096 B, 32 x 64.
# trex's limit is half the fio figure in entries' bytes (every entry is written twice).
#   BENCH_LOCK=FILE: hold flock FILE during each measurement; BASE_PORT (17900);
#   BENCH_DIR (target/bench-sustained). Every process started is stopped by PID.
set -euo pipefail
# Plain TCP: a loopback benchmark of the log, not of TLS (scripts/bench-tls.sh
# measures that). `trex up` says so loudly.
export TREX_INSECURE=1
cd "$(dirname "$0")/.."
SECS=${SECS:-60}
BASE_PORT=${BASE_PORT:-17900}
DIR=${BENCH_DIR:-$PWD/target/bench-sustained}
for t in fio nats-server python3; do command -v $t >/dev/null || { echo "error: $t is missing" >&2; exit 1; }; done
LOCKED=0
lock() { if [ -n "${BENCH_LOCK:-}" ]; then exec 9>"$BENCH_LOCK"; flock 9; LOCKED=1; fi; }
unlock() { if [ "$LOCKED" = 1 ]; then flock -u 9; exec 9>&-; LOCKED=0; fi; }
lock
cargo build --release --quiet -p trex -p trex-bench
(cd scripts/nats-bench && cargo build --release --quiet)
unlock
T=$PWD/target/release/trex
B=$PWD/target/release/trex-bench
N=$PWD/scripts/nats-bench/target/release/nats-bench
E=127.0.0.1:$BASE_PORT,127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2))
NP=$((BASE_PORT + 100))
rm -rf "$DIR" && mkdir -p "$DIR/results"
UP=; NATS=(); TRIM=
cleanup() {
  if [ -n "$TRIM" ]; then kill "$TRIM" 2>/dev/null || true; wait "$TRIM" 2>/dev/null || true; TRIM=; fi
  if [ -n "$UP" ]; then
    kill -INT "$UP" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$UP" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true
  fi
  for p in "${NATS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NATS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
  done
  UP=; NATS=()
  rm -rf "$DIR/trex" "$DIR/nats" "$DIR/fio"
  unlock
}
trap cleanup EXIT
fresh_cache() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

echo "== fio: two sequential writers of ${FIO_SIZE:-4g} each, buffered, final fsync" >&2
lock; fresh_cache; mkdir -p "$DIR/fio"
t0=$(date +%s.%N)
fio --name=two --directory="$DIR/fio" --rw=write --bs=1m --size="${FIO_SIZE:-4g}" --numjobs=2 \
  --end_fsync=1 --group_reporting --output-format=json >"$DIR/results/fio.json"
t1=$(date +%s.%N)
echo "$t0 $t1" >"$DIR/results/fio.wall"
cleanup

echo "== trex 4 KiB, ${SECS}s closed loop" >&2
lock; fresh_cache
"$T" up --base-port "$BASE_PORT" --sync never --data-dir "$DIR/trex" >"$DIR/up.log" 2>&1 & UP=$!
for _ in $(seq 300); do grep -q "cluster is up" "$DIR/up.log" && break; sleep 0.1; done
grep -q "cluster is up" "$DIR/up.log" || { echo "error: trex up failed; see $DIR/up.log" >&2; exit 1; }
# Keep the log's last KEEP entries (default 500,000: 2 GB of 4 KiB entries) and
# trim the rest every 2 s, so a long run does not fill the disk (the replicas
# and the consensus journals share it); NATS keeps at most 4 GiB per replica.
( for _ in $(seq $((SECS / 2 + 5))); do
    sleep 2
    t=$("$T" check --fast --endpoints "$E" 2>/dev/null || echo 0)
    [ "$t" -gt "${KEEP:-500000}" ] && "$T" trim $((t - ${KEEP:-500000})) --endpoints "$E" >/dev/null 2>&1 || true
  done ) & TRIM=$!
timeout $((SECS + 60)) "$B" append --endpoints "$E" --size 4KiB --clients 32 --depth 64 --warmup 0s \
  --duration "${SECS}s" --json "$DIR/results/trex.json" 2>"$DIR/results/trex.progress" >&2 || true
kill "$TRIM" 2>/dev/null || true; wait "$TRIM" 2>/dev/null || true
cp -r "$DIR/trex/logs" "$DIR/results/trex-logs" 2>/dev/null || true
cleanup

echo "== NATS R3 4 KiB, ${SECS}s closed loop" >&2
lock; fresh_cache; mkdir -p "$DIR/nats"
routes=$(seq -s, -f "nats://127.0.0.1:%.0f" $((NP + 51)) $((NP + 53)))
for i in 1 2 3; do
  nats-server -js -sd "$DIR/nats/n$i" -a 127.0.0.1 -p $((NP + i)) -n "n$i" --cluster_name bench \
    --cluster "nats://127.0.0.1:$((NP + 50 + i))" --routes "$routes" >"$DIR/nats-n$i.log" 2>&1 & NATS+=($!)
done
for _ in $(seq 100); do grep -q "JetStream cluster new metadata leader" "$DIR/nats-n1.log" && break; sleep 0.1; done
sleep 1
timeout $((SECS + 90)) "$N" 127.0.0.1:$((NP + 1)) 4096 32 64 "$SECS" 3 "$DIR/results/nats3.json" >&2
cleanup

python3 - "$DIR/results" <<'PY'
import json, os, re, sys
d = sys.argv[1]
f = json.load(open(os.path.join(d, "fio.json")))["jobs"][0]["write"]
t0, t1 = (float(x) for x in open(os.path.join(d, "fio.wall")).read().split())
fio = f["io_bytes"] / (t1 - t0) / 1e6  # wall time, the final fsync included
t = json.load(open(os.path.join(d, "trex.json")))
n = json.load(open(os.path.join(d, "nats3.json")))
rates = [int(m.group(1)) for m in re.finditer(r"\s(\d+) ops/s", open(os.path.join(d, "trex.progress")).read())]
per = [r * 4096 / 1e6 for r in rates]
limit = fio / 2
print(f"| measure | MB/s | ratio |")
print(f"|---|---|---|")
print(f"| fio, two sequential buffered writers, bytes / wall time with the final fsync (the disk) | {fio:.0f} | |")
print(f"| limit for 2 replicas (half of it) | {limit:.0f} | 1.00 |")
print(f"| trex 4 KiB appends, closed loop, mean over the run | {t['mb_per_s']:.0f} | {t['mb_per_s'] / limit:.2f} of the limit |")
if t.get("errors"):
    print(f"  trex: {t['errors']} requests failed: {t.get('errors_by_kind')}")
print(f"| NATS JetStream R3, same | {n['mb_per_s']:.0f} | trex / NATS R3 = {t['mb_per_s'] / max(n['mb_per_s'], 0.01):.2f}x |")
if per:
    print("trex MB/s per second: " + " ".join(f"{x:.0f}" for x in per))
    print(f"first 3 s {sum(per[:3]) / 3:.0f} MB/s (burst), last 30 s {sum(per[-30:]) / len(per[-30:]):.0f} MB/s (sustained)")
PY
