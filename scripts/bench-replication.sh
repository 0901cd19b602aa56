#!/usr/bin/env bash
# Cross-cluster replication benchmark: release build, then on loopback
#  1. visibility lag: a fresh 1-node leader and 1-node follower, flotilla-lag-bench
#     (paced writes to the leader, an observer reading the follower);
#  2. snapshot recovery: a fresh leader loaded with snapshot-bytes by flotilla-load-table
#     (64 KiB incompressible values, 4 writers), then a brand-new follower, timed by
#     flotilla-recovery-bench from its process start until its applied leader index
#     equals the leader's.
# Processes are started here and stopped by PID on exit; temp dirs are removed.
# Usage: scripts/bench-replication.sh [lag-seconds] [snapshot-bytes] [rate]   (results to stdout;
#        defaults 30, 1073741824, 1000; 0 seconds or 0 bytes skips that part; POLL_MICROS=N
#        makes the lag observer pause N us between Ranges, default 0 = back to back)
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run and scripts/chaos.sh (RocksDB compiles once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
scripts/setup.sh
seconds="${1:-30}"
snapshot_bytes="${2:-1073741824}"
rate="${3:-1000}"
cargo build --release --locked -q -p flotilla-server --bin flotilla -p flotilla-integration \
  --bin flotilla-lag-bench --bin flotilla-load-table --bin flotilla-recovery-bench
bin="$CARGO_TARGET_DIR/release"
root=$(mktemp -d)
declare -a pids=()
# stop PID: stops one of our processes and forgets it (so its PID, once reused, is left alone).
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local rest=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || rest+=("$p"); done
  pids=("${rest[@]}")
}
cleanup() { for p in "${pids[@]}"; do stop "$p"; done; rm -rf "$root"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_up LOG: waits (up to 30 s) for the "API (gRPC) on" line, then sets api, rest, repl.
wait_up() {
  for _ in $(seq 1 300); do grep -q "API (gRPC) on" "$1" && break; sleep 0.1; done
  api=$(sed -n 's/.*API (gRPC) on \([^,]*\),.*/\1/p' "$1")
  rest=$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' "$1")
  repl=$(sed -n 's/.*replication on \([^ ,]*\).*/\1/p' "$1")
  [ -n "$api" ] && [ -n "$rest" ] || { cat "$1"; exit 1; }
}

# start_leader NAME: a fresh single-node leader; sets leader_pid, leader_api, leader_rest, leader_repl.
start_leader() {
  "$bin/flotilla" leader --data-dir "$root/$1" --api.address 127.0.0.1:0 --rest.address 127.0.0.1:0 \
    --replication.address 127.0.0.1:0 >"$root/$1.log" 2>&1 &
  leader_pid=$!
  pids+=("$leader_pid")
  wait_up "$root/$1.log"
  leader_api=$api leader_rest=$rest leader_repl=$repl
  [ -n "$leader_repl" ] || { cat "$root/$1.log"; exit 1; }
}

# start_follower NAME API REST [RUST_LOG]: a fresh single-node follower of the current leader.
start_follower() {
  RUST_LOG="${4:-warn}" "$bin/flotilla" follower --data-dir "$root/$1" --api.address "$2" --rest.address "$3" \
    --replication.leader-address "http://$leader_repl" --replication.reconcile-interval 200ms \
    >"$root/$1.log" 2>&1 &
  follower_pid=$!
  pids+=("$follower_pid")
}

echo "# $(date -u +%F) $(nproc) cores, $(uname -r); 1-node leader + 1-node follower on loopback"

# lag_phase: fresh leader and follower, paced writes, then both stopped and wiped.
lag_phase() {
  echo "## visibility lag"
  start_leader lag-leader
  start_follower lag-follower 127.0.0.1:0 127.0.0.1:0
  wait_up "$root/lag-follower.log"
  "$bin/flotilla-lag-bench" --leader "$leader_api" --follower "$api" \
    --leader-rest "$leader_rest" --follower-rest "$rest" \
    --rate "$rate" --seconds "$seconds" --poll-micros "${POLL_MICROS:-0}" \
    --cpu-pids "leader=$leader_pid,follower=$follower_pid"
  stop "$follower_pid"
  stop "$leader_pid"
  rm -rf "$root/lag-leader" "$root/lag-follower"
}

# snapshot_phase: fresh leader loaded with $snapshot_bytes, then a brand-new follower, timed.
snapshot_phase() {
  echo "## snapshot recovery"
  start_leader snap-leader
  local out table_bytes f_api f_rest started
  out=$("$bin/flotilla-load-table" --leader "$leader_api" --bytes "$snapshot_bytes" \
    --value-bytes 65536 --writers 4)
  echo "$out"
  table_bytes=$(sed -n 's/^table bytes: //p' <<<"$out")
  echo "leader data dir: $(du -sh "$root/snap-leader" | cut -f1)"
  f_api="127.0.0.1:$(free_port)"
  f_rest="127.0.0.1:$(free_port)"
  started=$(date +%s%N)
  start_follower snap-follower "$f_api" "$f_rest" "warn,flotilla_replication=info"
  "$bin/flotilla-recovery-bench" --leader-rest "$leader_rest" --follower-rest "$f_rest" \
    --follower-api "$f_api" --started-unix-nanos "$started" --table-bytes "$table_bytes" \
    --cpu-pids "leader=$leader_pid,follower=$follower_pid"
  echo "follower log (replication):"
  grep -E "snapshot|recover" "$root/snap-follower.log" | sed 's/\x1b\[[0-9;]*m//g' || true
  echo "follower data dir: $(du -sh "$root/snap-follower" | cut -f1)"
}

[ "$seconds" -eq 0 ] || lag_phase
[ "$snapshot_bytes" -eq 0 ] || snapshot_phase
