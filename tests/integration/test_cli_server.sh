#!/usr/bin/env bash
# Admin CLI next to a running server: both processes share the LMDB
# environment. CLI writes (single and concurrent) succeed while the server
# holds it open, a setting changed by the CLI reaches the server live, the
# server's storage metrics are served, and the server stops cleanly.
set -uo pipefail

BIN="${CAPSTAN_BIN:?set CAPSTAN_BIN to the capstan binary}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/capstan-cli-srv-XXXXXX")"
DATA="$WORK/data"
LOG="$WORK/server.log"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
. "$(dirname "$0")/tally.sh"

# wait_for PATTERN SECONDS: polls the server log for PATTERN.
wait_for() {
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    grep -q -- "$1" "$LOG" && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# A malformed drain time is a usage error before anything starts (it would
# otherwise drain for 0 s and cut every phone off at the next restart).
rc=0
"$BIN" serve --data-dir "$WORK/never" --drain-seconds 3x >/dev/null 2>"$WORK/usage.err" || rc=$?
[ "$rc" -eq 2 ] && grep -q "drain-seconds must be a whole number" "$WORK/usage.err" &&
  [ ! -e "$WORK/never" ] && pass || fail "serve --drain-seconds 3x: exit $rc, $(cat "$WORK/usage.err")"

"$BIN" serve --init --data-dir "$DATA" --capf-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --tftp-listen 127.0.0.1:0 2>"$LOG" &
SERVER_PID=$!
if ! wait_for "event=ready" 60; then
  echo "FAIL: server did not become ready" >&2
  cat "$LOG" >&2
  exit 1
fi
pass
ADMIN_PORT=$(sed -n 's/.*event=listeners admin_port=\([0-9]*\).*/\1/p' "$LOG" | head -1)

# A setting changed by the CLI reaches the running server.
"$BIN" keepalive set 7 --data-dir "$DATA" >/dev/null && pass || fail "keepalive set while serving"
wait_for "event=capf_keepalive_changed minutes=7" 20 && pass || fail "server did not apply keepalive 7"

# Bulk import while serving.
{
  echo "name,operation,auth_mode,auth_string,key,completes_by"
  for i in $(seq 1 1000); do printf 'SEP%012X,install,string,%06d,rsa2048,\n' "$i" "$i"; done
} >"$WORK/in.csv"
"$BIN" device import "$WORK/in.csv" --data-dir "$DATA" >/dev/null && pass || fail "import while serving"

# Concurrent CLI writers: LMDB serialises them; every one succeeds.
pids=()
for i in $(seq 1 8); do
  "$BIN" device add "lab-phone-$i" --any-name --operation install --auth null --data-dir "$DATA" \
    >"$WORK/add$i.out" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p" && pass || fail "concurrent device add (pid $p)"
done
"$BIN" report status --json --data-dir "$DATA" >"$WORK/status.json" && pass || fail "report status"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['total']==1008, d" \
  "$WORK/status.json" && pass || fail "1008 devices after import and concurrent adds"

# The server's own view: storage metrics on the admin listener.
if [ -n "$ADMIN_PORT" ] && command -v curl >/dev/null; then
  curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics.txt" && pass || fail "metrics"
  grep -q '^capstan_storage_size_bytes [1-9]' "$WORK/metrics.txt" && pass ||
    fail "capstan_storage_size_bytes not served"
  grep -q '^capstan_storage_commit_duration_seconds_count' "$WORK/metrics.txt" && pass ||
    fail "commit histogram not served"
else
  fail "no admin port or no curl"
fi

# SIGTERM: drains and exits 0; the store stays readable.
kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
rc=$?
SERVER_PID=""
[ "$rc" -eq 0 ] && pass || fail "server exit code $rc after SIGTERM"
"$BIN" device show lab-phone-3 --json --data-dir "$DATA" >"$WORK/show.json" && pass ||
  fail "device show after stop"
"$BIN" keepalive show --data-dir "$DATA" | grep -qx 7 && pass || fail "keepalive kept"

tally_exit
