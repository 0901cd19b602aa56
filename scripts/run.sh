#!/usr/bin/env bash
# Builds (release) and starts a single-node Flotilla leader.
# Data goes to ./flotilla-data unless --data-dir is given; any other flag is passed on
# (see `scripts/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -q -p flotilla-server --bin flotilla -- leader "$@"
