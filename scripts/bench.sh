#!/usr/bin/env bash
# Single-node benchmark: release build, a fresh server on loopback, then flotilla-bench
# with 1 table and with 200 tables (64 clients, 16 B keys, 256 B values).
# Usage: scripts/bench.sh [seconds-per-phase]   (results go to stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run and scripts/chaos.sh (RocksDB compiles once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
scripts/setup.sh
seconds="${1:-10}"
cargo build --release --locked -q -p flotilla-server --bin flotilla -p flotilla-integration --bin flotilla-bench
bin="$CARGO_TARGET_DIR/release"
data=$(mktemp -d)
log=$(mktemp)
"$bin/flotilla" leader --data-dir "$data" --api.address 127.0.0.1:0 --rest.address 127.0.0.1:0 \
  --replication.address 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data" "$log"' EXIT
for _ in $(seq 1 300); do grep -q "API (gRPC) on" "$log" && break; sleep 0.1; done
api=$(sed -n 's/.*API (gRPC) on \([^,]*\),.*/\1/p' "$log")
rest=$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' "$log")
[ -n "$api" ] && [ -n "$rest" ] || { cat "$log"; exit 1; }
echo "# $(date -u +%F) $(nproc) cores, $(uname -r); server pid $pid"
echo "## 1 table"
"$bin/flotilla-bench" --api "$api" --rest "$rest" --clients 64 --tables 1 --seconds "$seconds"
echo "## 200 tables"
"$bin/flotilla-bench" --api "$api" --rest "$rest" --clients 64 --tables 200 --seconds "$seconds"
