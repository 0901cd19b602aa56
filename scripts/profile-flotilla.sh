#!/usr/bin/env bash
# CPU profile of a Flotilla cluster under load (issue 12: "profile first, then cut"):
# starts a fresh SIZE-node cluster on loopback (release build), runs one flotilla-vs-etcd
# round of WORKLOAD against it (Flotilla only) while `perf record` samples every node,
# then prints the round (with CPU per request per node) and each node's hottest symbols.
# perf is installed (Debian's linux-perf) when missing. The perf.data files stay in OUT.
# Usage: scripts/profile-flotilla.sh [seconds] [size] [workload] [out-dir]
#   e.g. scripts/profile-flotilla.sh 10 3 put /tmp/profile
# BENCH_ARGS adds flotilla-vs-etcd flags (e.g. "--tables 100").
# CALL_GRAPH=dwarf records call stacks through Rust code too (no frame pointers there);
# then e.g. `perf report -i OUT/node1.perf.data --children` shows who calls what.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run and scripts/chaos.sh (RocksDB compiles once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
scripts/setup.sh
seconds="${1:-10}"
size="${2:-3}"
workload="${3:-put}"
out="${4:-$(mktemp -d)}"
mkdir -p "$out"

if ! command -v perf >/dev/null 2>&1; then
  echo "profile-flotilla: installing linux-perf" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq linux-perf >/dev/null
fi

cargo build --release --locked -q -p flotilla-server --bin flotilla -p flotilla-integration --bin flotilla-vs-etcd
bin="$CARGO_TARGET_DIR/release"
root=$(mktemp -d)
pids=()
# shellcheck source=scripts/lib/loopback.sh
source scripts/lib/loopback.sh
perf_pids=()
trap 'for p in "${perf_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; stop_all; rm -rf "$root"' EXIT

start_flotilla_cluster flotilla "$size"
echo "# $(date -u +%F) $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD), release build"
echo "## $size node(s), $workload, $seconds s, perf data in $out"
# The load generator waits for the cluster, preloads the key space, then runs one round;
# perf starts with it, so the preload is in the profile too (a few seconds of puts).
IFS=, read -r -a node_pids <<<"$flotilla_pids"
for i in "${!node_pids[@]}"; do
  perf record -F "${PERF_FREQUENCY:-499}" --call-graph "${CALL_GRAPH:-fp}" -p "${node_pids[$i]}" -o "$out/node$((i + 1)).perf.data" >/dev/null 2>&1 &
  perf_pids+=($!)
done
"$bin/flotilla-vs-etcd" --label "$size node(s)" --flotilla "$flotilla_eps" --flotilla-pids "$flotilla_pids" \
  --workloads "$workload" --rounds 1 --seconds "$seconds" ${BENCH_ARGS:-}
for p in "${perf_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
perf_pids=()
for i in "${!node_pids[@]}"; do
  echo
  echo "### node $((i + 1)): hottest symbols (self time)"
  perf report -i "$out/node$((i + 1)).perf.data" --no-children --sort symbol --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed -E 's/[ -]+$//' | sed -n 1,25p
done
