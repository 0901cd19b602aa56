# Shared by the benchmark scripts (sourced): loopback ports, waiting for a log line, and
# starting Flotilla nodes that bind 127.0.0.1 only. Expects $bin (the binaries' directory)
# and $root (a scratch directory); appends every started PID to the array `pids`.
# BENCH_NODE_ARGS adds flags to every Flotilla node (e.g. "--raft.threads 1"; not a
# FLOTILLA_* name: the node refuses environment variables it does not know).

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

# wait_for FILE PATTERN: up to 30 s for PATTERN to appear in FILE.
wait_for() {
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

# stop_all: kills every process in `pids` (by PID) and waits for them.
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# start_flotilla_cluster NAME SIZE: a fresh SIZE-node leader cluster under $root/NAME-i;
# sets flotilla_eps (API host:port list) and flotilla_pids (comma-separated) and waits
# until every node serves its API.
start_flotilla_cluster() {
  local name=$1 size=$2 i b members="" raft_flags
  local -a ports
  read -r -a ports <<<"$(free_ports $((size * 4)))"
  flotilla_eps="" flotilla_pids=""
  for i in $(seq 1 "$size"); do
    b=$(( (i - 1) * 4 ))
    members+="${members:+,}$i=127.0.0.1:${ports[b+3]}"
  done
  for i in $(seq 1 "$size"); do
    b=$(( (i - 1) * 4 ))
    raft_flags=()
    [ "$size" -eq 1 ] || raft_flags=(--raft.node-id "$i" --raft.address "127.0.0.1:${ports[b+3]}" --raft.initial-members "$members")
    "$bin/flotilla" leader --data-dir "$root/$name-$i" --api.address "127.0.0.1:${ports[b]}" \
      --rest.address "127.0.0.1:${ports[b+1]}" --replication.address "127.0.0.1:${ports[b+2]}" \
      "${raft_flags[@]}" ${BENCH_NODE_ARGS:-} >"$root/$name-$i.log" 2>&1 &
    pids+=($!)
    flotilla_pids+="${flotilla_pids:+,}$!"
    flotilla_eps+="${flotilla_eps:+,}127.0.0.1:${ports[b]}"
  done
  for i in $(seq 1 "$size"); do wait_for "$root/$name-$i.log" "API (gRPC) on"; done
}

# start_etcd_cluster NAME SIZE: a fresh SIZE-member etcd cluster under $root/NAME-i; sets
# etcd_eps and etcd_pids like start_flotilla_cluster (the client retries until it answers).
start_etcd_cluster() {
  local name=$1 size=$2 i b cluster=""
  local -a ports
  read -r -a ports <<<"$(free_ports $((size * 2)))"
  etcd_eps="" etcd_pids=""
  for i in $(seq 1 "$size"); do
    b=$(( (i - 1) * 2 ))
    cluster+="${cluster:+,}e$i=http://127.0.0.1:${ports[b+1]}"
  done
  for i in $(seq 1 "$size"); do
    b=$(( (i - 1) * 2 ))
    etcd --name "e$i" --data-dir "$root/$name-$i" \
      --listen-client-urls "http://127.0.0.1:${ports[b]}" --advertise-client-urls "http://127.0.0.1:${ports[b]}" \
      --listen-peer-urls "http://127.0.0.1:${ports[b+1]}" --initial-advertise-peer-urls "http://127.0.0.1:${ports[b+1]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
      --log-level error --logger zap >"$root/$name-$i.log" 2>&1 &
    pids+=($!)
    etcd_pids+="${etcd_pids:+,}$!"
    etcd_eps+="${etcd_eps:+,}127.0.0.1:${ports[b]}"
  done
}
