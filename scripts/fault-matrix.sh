#!/usr/bin/env bash
# Issue 13's fault matrix on real processes, one node at a time, stopped,
# damaged and restarted on its data:
# - the storage unit's rows: every on-disk structure (record header, record
#   payload, segment header, a whole segment file, the index file, META, the
#   directory lock) x every fault (bit flip, zeroed 4 KiB block, junk block,
#   cut inside a record, cut at a record boundary, file missing), at the head
#   and at the tail of a chain of a `trex up` cluster;
# - the consensus node's rows: a journal record, the journal's tail, the
#   DURABLE mark, the whole journal, the GROUP file x the same faults, on a
#   follower and on the leader of a group of three.
# Prints both tables (Markdown, as in docs/testing.md) and one summary line:
#   cells, lost, corrupt served, unavailable, failing after retry, healed from peers
# Exits non-zero if any cell lost, served corrupt data, was unavailable,
# failed after a retry or did not heal. Needs no root. Takes about 10 minutes.
#
# Usage: scripts/fault-matrix.sh            (from the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
total=(0 0 0 0 0 0)
for t in "fault_matrix fault_matrix_full" "fault_matrix_consensus consensus_fault_matrix_full"; do
  set -- $t
  out=$(mktemp)
  echo "== $1 (progress on standard error)" >&2
  cargo test -q -p trex --test "$1" -- --ignored --exact "$2" --nocapture >"$out" 2>/dev/null || status=$?
  grep -E '^\|' "$out" | awk '!seen[$0]++' || true
  line=$(grep -E '^cells ' "$out" | tail -1 || true)
  rm -f "$out"
  if [ -z "$line" ]; then
    echo "$1 did not run to the end (exit $status); run: cargo test -p trex --test $1 -- --ignored --nocapture" >&2
    status=1
    continue
  fi
  echo "$line"
  echo
  nums=($(echo "$line" | grep -oE '[0-9]+'))
  for i in 0 1 2 3 4 5; do total[$i]=$(( total[i] + nums[i] )); done
done
echo "all: cells ${total[0]}, lost ${total[1]}, corrupt served ${total[2]}, unavailable ${total[3]}, failing after retry ${total[4]}, healed from peers ${total[5]}"
exit "$status"
