#!/usr/bin/env bash
# Builds capstan and starts the server in the foreground on ./capstan-data
# (created and initialised on first start: it is the default data directory,
# the only one `capstan serve` initialises without --init). Extra arguments go
# to `capstan serve`, e.g. --capf-listen 0.0.0.0:3804; with $CAPSTAN_DATA_DIR
# naming a new directory, add --init.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
build=${CAPSTAN_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCAPSTAN_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target capstan
exec "$build"/capstan serve --data-dir "${CAPSTAN_DATA_DIR:-./capstan-data}" "$@"
