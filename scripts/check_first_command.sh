#!/usr/bin/env bash
# CI step: the README's first command (scripts/run.sh) builds and starts the
# server without any test-only package. It runs run.sh into a build
# directory of its own, on free loopback ports and a fresh data directory,
# waits for /healthz, then checks that the configuration never looked for a
# test package (cmocka) and stops the server. Exit 0 when all holds.
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/capstan-first-command.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "first command: FAIL: $*" >&2; [ -f "$work/log" ] && tail -20 "$work/log" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
build=${CAPSTAN_FIRST_BUILD_DIR:-build-first-command}
CAPSTAN_BUILD_DIR=$build CAPSTAN_DATA_DIR=$work/data setsid scripts/run.sh --init \
  --capf-listen 127.0.0.1:0 --admin-listen "127.0.0.1:$port" --http-listen off --tftp-listen off \
  >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 1800); do # the build comes first: up to 3 minutes
  curl -sf --max-time 2 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || fail "scripts/run.sh exited before the server answered"
  sleep 0.1
done
curl -sf --max-time 2 "http://127.0.0.1:$port/healthz" >/dev/null || fail "no answer on /healthz"
grep -q "^CMOCKA_LIB" "$build/CMakeCache.txt" && fail "the server's build looked for cmocka (a test package)"
kill -TERM "$pid"
wait "$pid" || fail "the server did not stop cleanly on SIGTERM"
pid=
echo "first command: scripts/run.sh built and started the server without test packages"
