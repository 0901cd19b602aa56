#!/usr/bin/env bash
# Flotilla vs etcd, side by side (issue 12): starts an etcd cluster (Debian's etcd-server,
# installed here if missing) and a Flotilla cluster of the same size on loopback, then
# drives both with flotilla-vs-etcd (same workloads, alternating rounds) and prints each
# round and a table of Flotilla / etcd ratios. Both clusters and the load generator share
# this machine's cores; nothing else should run meanwhile.
# Usage: scripts/bench-vs-etcd.sh [seconds-per-round] [rounds] [sizes...]
#   e.g. scripts/bench-vs-etcd.sh 10 3 1 3     (1-node clusters, then 3-node clusters)
# BENCH_ARGS adds flotilla-vs-etcd flags, e.g. BENCH_ARGS="--workloads put,scan".
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
# shellcheck source=scripts/lib/loopback.sh
source scripts/lib/loopback.sh
trap 'stop_all; rm -rf "$root"' EXIT

echo "# $(date -u +%F) $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD), $profile build, $(etcd --version | head -1)"
for size in "${sizes[@]}"; do
  start_etcd_cluster "etcd$size" "$size"
  start_flotilla_cluster "flotilla$size" "$size"
  echo
  echo "## $size node(s): Flotilla $flotilla_eps, etcd $etcd_eps"
  "$bin/flotilla-vs-etcd" --label "$size node(s)" --flotilla "$flotilla_eps" --etcd "$etcd_eps" \
    --flotilla-pids "$flotilla_pids" --etcd-pids "$etcd_pids" \
    --seconds "$seconds" --rounds "$rounds" ${BENCH_ARGS:-}
  stop_all
done
