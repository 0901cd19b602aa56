#!/usr/bin/env bash
# Backup and restore throughput (issue 13): release build, then on loopback a fresh
# 1-node leader loaded with table-bytes of incompressible 64 KiB values by
# flotilla-load-table, `flotilla backup` of it into a directory, and `flotilla restore` of
# that directory into a second fresh leader, each timed from the command's start to its
# exit. MB/s are of the table's key + value bytes (1 MB = 10^6 bytes).
# Processes are started here and stopped by PID on exit; temp dirs are removed.
# Usage: scripts/bench-backup.sh [table-bytes] [compression]   (defaults 1073741824, none)
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run (RocksDB compiles once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
scripts/setup.sh
table_bytes="${1:-1073741824}"
compression="${2:-none}"
cargo build --release --locked -q -p flotilla-server --bin flotilla -p flotilla-integration \
  --bin flotilla-load-table
bin="$CARGO_TARGET_DIR/release"
root=$(mktemp -d)
declare -a pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT

# start_leader NAME: a fresh single-node leader; sets api to its API address.
start_leader() {
  "$bin/flotilla" leader --data-dir "$root/$1" --api.address 127.0.0.1:0 \
    --rest.address 127.0.0.1:0 --replication.enabled false >"$root/$1.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1 300); do grep -q "API (gRPC) on" "$root/$1.log" && break; sleep 0.1; done
  api=$(sed -n 's/.*API (gRPC) on \([^,]*\),.*/\1/p' "$root/$1.log")
  [ -n "$api" ] || { cat "$root/$1.log"; exit 1; }
}

# timed LABEL CMD...: runs CMD, prints its wall time and MB/s of the table's bytes.
timed() {
  local label=$1 started ended
  shift
  started=$(date +%s%N)
  "$@"
  ended=$(date +%s%N)
  python3 -c "import sys; s=($ended-$started)/1e9; b=$loaded; print(f'$label: {s:.2f} s, {b/s/1e6:.0f} MB/s of table data')"
}

echo "# $(date -u +%F) $(nproc) cores, $(uname -r); commit $(git rev-parse --short HEAD); compression $compression"
start_leader source
out=$("$bin/flotilla-load-table" --leader "$api" --bytes "$table_bytes" --value-bytes 65536 --writers 4)
echo "$out"
loaded=$(sed -n 's/^table bytes: //p' <<<"$out")
timed backup "$bin/flotilla" backup --address "http://$api" --dir "$root/backup" \
  --compression "$compression" --json
echo "backup dir: $(du -sb "$root/backup" | cut -f1) bytes"
start_leader target
timed restore "$bin/flotilla" restore --address "http://$api" --dir "$root/backup" --json
echo "target data dir: $(du -sh "$root/target" | cut -f1)"
