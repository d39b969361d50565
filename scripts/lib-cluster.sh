# Shared by the benchmark scripts that run one `trex up` at a time. Source it;
# it defines:
#   up_start BIN DIR LOG [ARGS...]  starts `BIN up --insecure --data-dir DIR ARGS`
#                                   in the background, sets UP to its PID, and
#                                   waits up to 30 s for "cluster is up" in LOG
#                                   (exits the script with the reason if not)
#   up_stop                         stops that `trex up` by its PID (SIGTERM,
#                                   10 s, then SIGKILL); a no-op without one
# Plain TCP (--insecure, loudly): loopback benchmarks of the state machine and
# the log, not of TLS (scripts/bench-tls.sh measures that).
UP=""
up_start() {
  local bin=$1 dir=$2 log=$3
  shift 3
  "$bin" up --insecure --data-dir "$dir" "$@" >"$log" 2>&1 &
  UP=$!
  for _ in $(seq 300); do
    grep -q "cluster is up" "$log" && return 0
    kill -0 "$UP" 2>/dev/null || { echo "error: trex up exited: see $log" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: trex up did not come up in 30 s: see $log" >&2
  exit 1
}
up_stop() {
  if [ -n "$UP" ]; then
    kill "$UP" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$UP" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$UP" 2>/dev/null || true
    wait "$UP" 2>/dev/null || true
    UP=""
  fi
}
