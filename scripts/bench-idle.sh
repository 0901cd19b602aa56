#!/usr/bin/env bash
# What idle tables cost: a fresh three-node cluster on loopback holding N tables that
# nobody uses, measured per node (CPU as a share of one core, RSS) with hibernation off
# (--raft.hibernate-rtt 0, every group ticks and heartbeats) and on (the default, 40),
# one after the other in the same run.
# Usage: scripts/bench-idle.sh [tables] [seconds]       (results go to stdout)
#   PROFILE=debug uses the debug build the tests use (no 20-minute release build).
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run and scripts/chaos.sh (RocksDB compiles once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
scripts/setup.sh
tables="${1:-1000}"
seconds="${2:-30}"
profile="${PROFILE:-release}"
if [ "$profile" = release ]; then
  cargo build --release --locked -q -p flotilla-server --bin flotilla \
    -p flotilla-integration --bin flotilla-idle-bench
else
  # The same feature set as `cargo test --workspace`, so RocksDB is not rebuilt.
  cargo build --locked -q --workspace --tests --bins
fi
dir="$CARGO_TARGET_DIR/$profile"
echo "# $(date -u +%F) $(nproc) cores, $(uname -r), $profile build, commit $(git rev-parse --short HEAD)"
# HIBERNATE_RTTS="40" skips the run with hibernation off (slow to set up at 10,000 tables).
for rtt in ${HIBERNATE_RTTS:-0 40}; do
  FLOTILLA_BIN="$dir/flotilla" "$dir/flotilla-idle-bench" \
    --tables "$tables" --seconds "$seconds" --hibernate-rtt "$rtt"
done
