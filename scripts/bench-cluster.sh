#!/usr/bin/env bash
# Three-node benchmark: release build, three fresh nodes on loopback, then flotilla-bench
# against one of them with 1 table and with 200 tables (64 clients, 16 B keys, 256 B
# values). The node that leads the catalog when the tables are created leads them too;
# if that is not node 1, its writes are forwarded inside raft (the output says which).
# Usage: scripts/bench-cluster.sh [seconds-per-phase]   (results go to stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run and scripts/chaos.sh (RocksDB compiles once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
scripts/setup.sh
seconds="${1:-10}"
cargo build --release --locked -q -p flotilla-server --bin flotilla -p flotilla-integration --bin flotilla-bench
bin="$CARGO_TARGET_DIR/release"
root=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a raft pids
for id in 1 2 3; do raft[$id]=$(free_port); done
members="1=127.0.0.1:${raft[1]},2=127.0.0.1:${raft[2]},3=127.0.0.1:${raft[3]}"
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$root"; }
trap cleanup EXIT
for id in 1 2 3; do
  "$bin/flotilla" leader --data-dir "$root/node$id" --api.address 127.0.0.1:0 --rest.address 127.0.0.1:0 \
    --replication.address 127.0.0.1:0 \
    --raft.node-id "$id" --raft.address "127.0.0.1:${raft[$id]}" --raft.initial-members "$members" \
    >"$root/log$id" 2>&1 &
  pids+=($!)
done
for id in 1 2 3; do
  for _ in $(seq 1 300); do grep -q "API (gRPC) on" "$root/log$id" && break; sleep 0.1; done
done
api=$(sed -n 's/.*API (gRPC) on \([^,]*\),.*/\1/p' "$root/log1")
rest=$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' "$root/log1")
[ -n "$api" ] && [ -n "$rest" ] || { cat "$root/log1"; exit 1; }
echo "# $(date -u +%F) $(nproc) cores, $(uname -r); 3 nodes on loopback, clients on node 1"
echo "## 1 table"
"$bin/flotilla-bench" --api "$api" --rest "$rest" --clients 64 --tables 1 --seconds "$seconds"
leader=$(curl -s "http://$rest/metrics" 2>/dev/null | sed -n 's/^flotilla_raft_leader_id{table="bench0"} //p' || true)
echo "(table bench0 led by node ${leader:-?})"
echo "## 200 tables"
"$bin/flotilla-bench" --api "$api" --rest "$rest" --clients 64 --tables 200 --seconds "$seconds"
