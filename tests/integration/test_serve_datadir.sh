#!/usr/bin/env bash
# `capstan serve` and its data directory: a mistyped path (missing, empty,
# foreign, a store without identities) is refused with exit 2 and nothing is
# created, unless --init; the default ./capstan-data is initialised on first
# start (the README's first command); one server per store (the second is
# refused and told the first's pid) while admin commands go on; the pid file
# DIR/serve.pid lives as long as the server, and a stale one (server killed)
# stops nobody.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" curl jq
it_watchdog 300

ARGS=(--capf-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --http-listen off --tftp-listen off
  --drain-seconds 5)

# refused DIR WHAT: serve on DIR exits 2 naming DIR and --init, saying WHAT.
refused() {
  local rc=0
  timeout 60 "$CAPSTAN_BIN" serve --data-dir "$1" "${ARGS[@]}" </dev/null >"$OUT" 2>"$ERR" || rc=$?
  [[ $rc -eq 2 ]] || { cat "$ERR" >&2; fail "serve on $1: exit $rc, expected 2"; }
  has "$ERR" "'$1'"
  has "$ERR" "--init"
  has "$ERR" "$2"
  lacks "$ERR" "event=ready"
}

# --- Mistyped paths -------------------------------------------------------------
refused "$IT_TMP/typo" "does not exist"
[[ ! -e "$IT_TMP/typo" ]] || fail "serve created the missing directory"

mkdir "$IT_TMP/empty"
refused "$IT_TMP/empty" "is empty"
[[ -z "$(ls -A "$IT_TMP/empty")" ]] || fail "serve wrote into the empty directory: $(ls -A "$IT_TMP/empty")"

mkdir "$IT_TMP/foreign"
echo notes >"$IT_TMP/foreign/notes.txt"
refused "$IT_TMP/foreign" "holds no capstan store"
assert_eq notes.txt "$(ls -A "$IT_TMP/foreign")" "the foreign directory after serve (a store made there?)"

# A store that `device add` made has no identities: serve does not make them.
cli_expect "$IT_TMP/noid" 0 device add SEP00000D1D0001 --operation install --auth null
refused "$IT_TMP/noid" "no CAPF identity"
cli_expect "$IT_TMP/noid" 1 cert capf show
it_log "missing, empty, foreign and identity-less directories refused"

# --- The default directory starts on its own ------------------------------------
it_new_store # PostgreSQL mode: noid above has the test's CAPSTAN_STORE
mkdir "$IT_TMP/cwd"
(cd "$IT_TMP/cwd" && exec env -u CAPSTAN_DATA_DIR "$CAPSTAN_BIN" serve "${ARGS[@]}" \
  </dev/null >"$IT_TMP/default.log" 2>&1) &
DPID=$!
it_wait_for 60 'grep -q event=ready "$IT_TMP/default.log"' || {
  cat "$IT_TMP/default.log" >&2
  fail "serve on the default directory did not start"
}
it_pg_mode || [[ -f "$IT_TMP/cwd/capstan-data/data.mdb" ]] || fail "no store in ./capstan-data"
assert_eq "$DPID" "$(cat "$IT_TMP/cwd/capstan-data/serve.pid")" "serve.pid of the default server"
grep -q "event=initialised" "$IT_TMP/default.log" || fail "no event=initialised on the default dir"
kill -TERM "$DPID"
rc=0
wait "$DPID" || rc=$?
assert_eq 0 "$rc" "default server exit status"
[[ ! -e "$IT_TMP/cwd/capstan-data/serve.pid" ]] || fail "serve.pid left after a clean exit"

# --init makes a new store where asked (srv_start passes it).
srv_start main
DATA=${SRV_DATA[main]}
assert_eq "${SRV_PID[main]}" "$(cat "$DATA/serve.pid")" "serve.pid of server main"

# --- One server per store ---------------------------------------------------------
for extra in "" --init; do
  rc=0
  timeout 60 "$CAPSTAN_BIN" serve --data-dir "$DATA" $extra "${ARGS[@]}" </dev/null \
    >"$OUT" 2>"$ERR" || rc=$?
  assert_eq 1 "$rc" "exit status of a second serve $extra"
  has "$ERR" "already running"
  has "$ERR" "pid ${SRV_PID[main]}"
  lacks "$ERR" "event=ready"
done
srv_alive main || fail "the first server stopped"
assert_eq "${SRV_PID[main]}" "$(cat "$DATA/serve.pid")" "serve.pid after the refused second serve"
# Admin commands share the store with the server, as before.
cap main device add SEP00000D1D0002 --operation install --auth null >/dev/null
[[ "$(cap main device list --json | jq length)" == 1 ]] || fail "device list while serving"
cap main config set retry-delay-seconds 33 >/dev/null
it_wait_for 20 'grep -q "retry-delay-seconds=33\|retry_delay_seconds=33" "${SRV_LOG[main]}"' ||
  fail "the server did not apply a setting made while it runs"
curl -sf --max-time 5 "http://127.0.0.1:${SRV_ADMIN[main]}/healthz" >/dev/null || fail "healthz"

# --- A server killed leaves a stale pid file that stops nobody --------------------
OLD=${SRV_PID[main]}
kill -KILL "$OLD"
wait "$OLD" 2>/dev/null
SRV_PID[main]=""
[[ -f "$DATA/serve.pid" ]] || fail "expected the killed server's serve.pid to remain"
SRV_DATA[again]=$DATA
srv_start again
assert_eq "${SRV_PID[again]}" "$(cat "$DATA/serve.pid")" "serve.pid after a restart over a stale one"
json_expect "$(device_json again SEP00000D1D0002)" name SEP00000D1D0002

srv_stop again
[[ ! -e "$DATA/serve.pid" ]] || fail "serve.pid left after srv_stop"
it_pass
