#!/usr/bin/env bash
# Issue 13's fault matrix, the storage unit's rows: every on-disk structure of
# a storage unit (record header, record payload, segment header, a whole
# segment file, the index file, META, the directory lock) × every fault (bit
# flip, zeroed 4 KiB block, junk block, cut inside a record, cut at a record
# boundary, file missing), applied to the head and to the tail of a chain of
# a real `trex up` cluster with the unit stopped, then restarted on its data.
# Prints the table (Markdown, as in docs/testing.md) and one summary line:
#   cells, lost, corrupt served, unavailable, failing after retry, healed from peers
# Exits non-zero if any cell lost, served corrupt data, was unavailable or
# failed after a retry. Needs no root. Takes a few minutes.
#
# Usage: scripts/fault-matrix.sh            (from the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test -q -p trex --test fault_matrix -- --ignored --exact fault_matrix_full \
    --nocapture >"$out" 2>/dev/null || status=$?
grep -E '^\|' "$out" | awk '!seen[$0]++' || true
grep -E '^cells ' "$out" | tail -1 || echo "the matrix did not run to the end (exit $status); run: cargo test -p trex --test fault_matrix -- --ignored --nocapture"
exit "$status"
