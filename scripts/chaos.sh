#!/usr/bin/env bash
# Runs the seeded fault harness (docs/CHAOS.md): a fault schedule over a 3-node leader
# cluster and a 3-node follower cluster under a register workload, then a linearizability
# check of the history and a digest comparison of every replica.
#
#   scripts/chaos.sh [--seed N] [--seconds S] [extra cargo test args...]
#
# The seed fixes the schedule and the clients' choices; a failure report prints it with
# the command that repeats the run. Defaults: the test's (seed 1, 60 s).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 [--seed N] [--seconds S] [cargo test args...]" >&2; exit 2; }
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) [ $# -ge 2 ] || usage; export CHAOS_SEED="$2"; shift 2 ;;
    --seconds) [ $# -ge 2 ] || usage; export CHAOS_SECONDS="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) args+=("$1"); shift ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
scripts/setup.sh
# `--test chaos` alone does not rebuild the flotilla binary the harness starts; build every
# target of the workspace first (the same feature set as scripts/test.sh, so RocksDB is
# not compiled again).
cargo build --locked --workspace --all-targets
cargo test --locked --workspace --test chaos "${args[@]}" -- --nocapture
