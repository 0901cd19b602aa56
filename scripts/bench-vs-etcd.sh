#!/usr/bin/env bash
# Flotilla vs etcd, side by side (issue 12): starts an etcd cluster (Debian's etcd-server,
# installed here if missing) and a Flotilla cluster of the same size on loopback, then
# drives both with flotilla-vs-etcd (same workloads, alternating rounds) and prints each
# round and a table of Flotilla / etcd ratios. Both clusters and the load generator share
# this machine's cores; nothing else should run meanwhile.
# Usage: scripts/bench-vs-etcd.sh [seconds-per-round] [rounds] [sizes...]
#   e.g. scripts/bench-vs-etcd.sh 10 3 1 3     (1-node clusters, then 3-node clusters)
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run and scripts/chaos.sh (RocksDB compiles once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
scripts/setup.sh
seconds="${1:-10}"
rounds="${2:-3}"
shift $(( $# > 2 ? 2 : $# ))
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1 3)

if ! command -v etcd >/dev/null 2>&1; then
  echo "bench-vs-etcd: installing etcd-server" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq etcd-server >/dev/null
  # The package enables a system etcd on :2379; this script runs its own.
  if command -v systemctl >/dev/null 2>&1; then $sudo systemctl disable --now etcd >/dev/null 2>&1 || true; fi
fi

# BENCH_PROFILE=dev runs a debug build (a quick check of the script, not a measurement).
profile="${BENCH_PROFILE:-release}"
cargo build --profile "$profile" --locked -q -p flotilla-server --bin flotilla -p flotilla-integration --bin flotilla-vs-etcd
bin="$CARGO_TARGET_DIR/$([ "$profile" = dev ] && echo debug || echo "$profile")"
root=$(mktemp -d)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$root"' EXIT

# n free loopback ports below the ephemeral range (32768+), from a random start.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
n, out, port = int(sys.argv[1]), [], random.randrange(20000, 31000)
while len(out) < n:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port)); out.append(port)
    except OSError:
        pass
    finally:
        s.close()
    port += 1
print(" ".join(map(str, out)))
PY
}

wait_for() { # file pattern
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-vs-etcd: timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

echo "# $(date -u +%F) $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD), $profile build, $(etcd --version | head -1)"
for size in "${sizes[@]}"; do
  read -r -a ports <<<"$(free_ports $((size * 6)))"
  etcd_cluster="" members="" etcd_eps="" flotilla_eps="" etcd_pids="" flotilla_pids=""
  for i in $(seq 1 "$size"); do
    b=$(( (i - 1) * 6 ))
    etcd_cluster+="${etcd_cluster:+,}e$i=http://127.0.0.1:${ports[b+1]}"
    members+="${members:+,}$i=127.0.0.1:${ports[b+4]}"
    etcd_eps+="${etcd_eps:+,}127.0.0.1:${ports[b]}"
    flotilla_eps+="${flotilla_eps:+,}127.0.0.1:${ports[b+2]}"
  done
  for i in $(seq 1 "$size"); do
    b=$(( (i - 1) * 6 ))
    etcd --name "e$i" --data-dir "$root/etcd$size-$i" \
      --listen-client-urls "http://127.0.0.1:${ports[b]}" --advertise-client-urls "http://127.0.0.1:${ports[b]}" \
      --listen-peer-urls "http://127.0.0.1:${ports[b+1]}" --initial-advertise-peer-urls "http://127.0.0.1:${ports[b+1]}" \
      --initial-cluster "$etcd_cluster" --initial-cluster-state new --initial-cluster-token bench \
      --log-level error --logger zap >"$root/etcd$size-$i.log" 2>&1 &
    pids+=($!)
    etcd_pids+="${etcd_pids:+,}$!"
    raft_flags=()
    [ "$size" -eq 1 ] || raft_flags=(--raft.node-id "$i" --raft.address "127.0.0.1:${ports[b+4]}" --raft.initial-members "$members")
    "$bin/flotilla" leader --data-dir "$root/flotilla$size-$i" --api.address "127.0.0.1:${ports[b+2]}" \
      --rest.address "127.0.0.1:${ports[b+3]}" \
      --replication.address "127.0.0.1:${ports[b+5]}" "${raft_flags[@]}" >"$root/flotilla$size-$i.log" 2>&1 &
    pids+=($!)
    flotilla_pids+="${flotilla_pids:+,}$!"
  done
  for i in $(seq 1 "$size"); do wait_for "$root/flotilla$size-$i.log" "API (gRPC) on"; done
  echo
  echo "## $size node(s): Flotilla $flotilla_eps, etcd $etcd_eps"
  "$bin/flotilla-vs-etcd" --label "$size node(s)" --flotilla "$flotilla_eps" --etcd "$etcd_eps" \
    --flotilla-pids "$flotilla_pids" --etcd-pids "$etcd_pids" \
    --seconds "$seconds" --rounds "$rounds"
  stop_all
done
