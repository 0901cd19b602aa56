#!/usr/bin/env bash
# Runs every test: unit, property, in-process gRPC, and integration tests that start
# real flotilla processes. `cargo test --workspace` builds the flotilla binary too (the
# server package has integration tests); building it separately with `--bins` would
# unify dependency features differently and compile RocksDB a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --locked --workspace "$@"
