# Shared helpers for the integration tests: source it from a test script.
#
#   . "$(dirname "$0")/lib.sh"
#   it_watchdog 120                 # the whole test ends within 120 s, whatever happens
#   srv_start main                  # real `capstan serve` on free loopback ports
#   cap main device add SEP... --operation install --auth null
#   phone main --name SEP... --auth null; json_expect "$PHONE_JSON" result ok reason 1
#   srv_stop main                   # SIGTERM, must exit 0 in a bounded time
#   it_pass
#
# Everything a test makes lives in one temporary directory, removed on exit.
# Every external command is bounded with timeout(1); waits poll with a bound
# instead of sleeping blind. On failure the servers' logs and the phones' stderr
# are printed, so a CI log says what happened.
#
# Environment (set by CTest; defaults fit a build in ./build):
#   CAPSTAN_BIN        the capstan executable
#   CAPSTAN_BUILD_DIR  the build directory (capstan-phone is there)
#   CAPSTAN_SOURCE_DIR the source tree
#   CAPSTAN_SANITIZE   ON when the build uses ASan/UBSan
#   CAPSTAN_TEST_PG    PostgreSQL mode (tests/tools/on_postgres.sh): the
#                      directory of a private cluster (pg_cluster.sh); every
#                      data directory srv_prepare or srv_start creates gets a
#                      fresh database of its own there (--store URL). A data
#                      directory a test creates itself falls back to
#                      CAPSTAN_STORE, one database for the whole test.

set -uo pipefail

IT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${CAPSTAN_SOURCE_DIR:=$(cd "$IT_DIR/../.." && pwd)}"
: "${CAPSTAN_BUILD_DIR:=$CAPSTAN_SOURCE_DIR/build}"
: "${CAPSTAN_BIN:=$CAPSTAN_BUILD_DIR/capstan}"
: "${CAPSTAN_SANITIZE:=OFF}"
PHONE_BIN="${CAPSTAN_PHONE_BIN:-$CAPSTAN_BUILD_DIR/capstan-phone}"
IT_PY="$IT_DIR/lib.py"
# Debian's python3 (with python3-cryptography) when there is one: a python3
# found first on PATH may be a slow-starting shim without the module.
if [[ -x /usr/bin/python3 ]]; then IT_PYTHON=/usr/bin/python3; else IT_PYTHON=python3; fi
IT_NAME="$(basename "$0" .sh)"

# Leaks are errors in every process we start; a sanitizer report fails the
# process with a distinctive exit code so it is not mistaken for a result.
# (Appended: later options win over what the caller set.)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:exitcode=86"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1:exitcode=86"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}exitcode=86"

IT_TMP="$(mktemp -d "${TMPDIR:-/tmp}/capstan-${IT_NAME}.XXXXXX")"
IT_KEEP="${CAPSTAN_IT_KEEP:-0}" # 1: keep the temporary directory
IT_FAILED=0
IT_WATCHDOG_PID=""
# Key cache shared by the tests of one build: RSA key generation is the slow
# part of a simulated phone, and the server does not care that keys repeat.
IT_KEYS="${CAPSTAN_IT_KEY_CACHE:-$CAPSTAN_BUILD_DIR/integration-keys}"
mkdir -p "$IT_KEYS"

declare -A SRV_PID=() SRV_DATA=() SRV_LOG=() SRV_CAPF=() SRV_ADMIN=() SRV_HTTP=() SRV_TFTP=()
SRV_NAMES=()

it_log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$IT_NAME" "$*" >&2; }

# Prints what helps to understand a failure: the servers' logs (tails) and
# the phones' stderr.
it_dump() {
  local n
  for n in "${SRV_NAMES[@]}"; do
    if [[ -f "${SRV_LOG[$n]}" ]]; then
      echo "----- server '$n' log (${SRV_LOG[$n]}, last 200 lines) -----" >&2
      tail -n 200 "${SRV_LOG[$n]}" >&2
    fi
  done
  if [[ -s "$IT_TMP/phones.log" ]]; then
    echo "----- phone stderr (last 100 lines) -----" >&2
    tail -n 100 "$IT_TMP/phones.log" >&2
  fi
}

# Stops every server still running (SIGTERM, then SIGKILL after a bound).
it_kill_servers() {
  local n pid i
  for n in "${SRV_NAMES[@]}"; do
    pid="${SRV_PID[$n]:-}"
    [[ -n "$pid" ]] || continue
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    SRV_PID[$n]=""
  done
}

it_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ $IT_FAILED -ne 0 || $rc -ne 0 ]] && rc=1
  if [[ -n "$IT_WATCHDOG_PID" ]]; then
    kill "$IT_WATCHDOG_PID" 2>/dev/null
    wait "$IT_WATCHDOG_PID" 2>/dev/null
  fi
  # Background jobs a test started (phones held in key generation).
  local j
  for j in $(jobs -p); do kill -TERM "$j" 2>/dev/null; done
  it_kill_servers
  wait 2>/dev/null
  if [[ $rc -ne 0 ]]; then
    it_dump
  fi
  if [[ "$IT_KEEP" == 1 ]]; then
    echo "kept $IT_TMP" >&2
  else
    rm -rf "$IT_TMP"
  fi
  exit $rc
}
trap it_cleanup EXIT
trap '[[ -e "$IT_TMP/failed" ]] || it_log "interrupted"; IT_FAILED=1; exit 1' INT TERM

# Fails the test. Called inside $(...) too: the subshell then stops the main
# shell with SIGTERM (its trap exits 1 and cleans up).
fail() {
  echo "FAIL: $*" >&2
  IT_FAILED=1
  if [[ "$BASHPID" != "$$" ]]; then
    : >"$IT_TMP/failed"
    kill -TERM "$$" 2>/dev/null
  fi
  exit 1
}

it_pass() {
  it_log "passed"
  exit 0
}

# The whole test ends within |seconds|: past that the watchdog interrupts it
# (the EXIT trap then stops the servers and dumps their logs).
it_watchdog() {
  local secs=$1 me=$$
  (
    # sleep in the background so that cleanup's SIGTERM ends it at once (a
    # stray sleep would hold CTest's output pipe open).
    sleep "$secs" </dev/null >/dev/null 2>&1 &
    local spid=$!
    trap 'kill "$spid" 2>/dev/null; exit 0' TERM
    wait "$spid"
    echo "FAIL: watchdog: $IT_NAME did not finish within ${secs}s" >&2
    kill -TERM "$me" 2>/dev/null
    # The main shell runs its trap only when its foreground command ends:
    # stop the processes it started (servers drain and exit on SIGTERM).
    local p
    for p in $(ps -o pid= --ppid "$me"); do
      [[ "$p" == "$BASHPID" ]] || kill -TERM "$p" 2>/dev/null
    done
  ) &
  IT_WATCHDOG_PID=$!
}

it_require() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || [[ -x "$c" ]] || fail "required program '$c' not found"
  done
}

# True when the build uses sanitizers (slower server and phone).
it_sanitized() { [[ "$CAPSTAN_SANITIZE" == ON || "$CAPSTAN_SANITIZE" == 1 ]]; }

# Prints a free loopback port for |proto| (tcp or udp): the kernel picks one
# for a socket bound to port 0, which is then closed. Another process could
# take it before the server binds it: srv_start retries with new ports then.
it_free_port() {
  "$IT_PYTHON" -c '
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' "${1:-tcp}"
}

# Polls a shell condition every 0.1 s for at most |seconds|; returns 0 as
# soon as it holds, 1 when the time ran out.
it_wait_for() {
  local secs=$1
  shift
  local deadline=$((SECONDS + secs))
  while ((SECONDS <= deadline)); do
    if eval "$@"; then return 0; fi
    sleep 0.1
  done
  eval "$@"
}

# --- PostgreSQL mode ---------------------------------------------------------

IT_PG_TOOL="$CAPSTAN_SOURCE_DIR/tests/tools/pg_cluster.sh"
IT_PG_SEQ=0

# True in PostgreSQL mode (tests/tools/on_postgres.sh).
it_pg_mode() { [[ -n "${CAPSTAN_TEST_PG:-}" ]]; }

# it_store_args DATA_DIR: sets the array IT_STORE_ARGS to the options that
# choose the store of a data directory about to be created: in PostgreSQL
# mode, when DATA_DIR is missing or empty, `--store URL` of a database made
# for it now (so that two data directories never share a store); nothing
# otherwise (LMDB, or an existing directory, which remembers its store).
# Call it in the test's shell, not in $(...).
it_store_args() {
  IT_STORE_ARGS=()
  it_pg_mode || return 0
  [[ -d "$1" && -n "$(ls -A "$1" 2>/dev/null)" ]] && return 0
  IT_PG_SEQ=$((IT_PG_SEQ + 1))
  local name="${IT_NAME,,}"
  name="${name//[^a-z0-9_]/_}"
  local db="c_${name:0:40}_$$_${IT_PG_SEQ}" url
  url=$(timeout 60 "$IT_PG_TOOL" createdb "$CAPSTAN_TEST_PG" "$db") ||
    fail "PostgreSQL mode: createdb $db in $CAPSTAN_TEST_PG failed"
  IT_STORE_ARGS=(--store "$url")
  it_log "data directory $1: store $url"
}

# it_new_store: in PostgreSQL mode, points CAPSTAN_STORE at a new database,
# for the next data directory the test creates by itself (not through
# srv_prepare or srv_start); nothing otherwise.
it_new_store() {
  it_pg_mode || return 0
  CAPSTAN_STORE=$(timeout 60 "$IT_PG_TOOL" newdb "$CAPSTAN_TEST_PG" "c_${IT_NAME}") ||
    fail "PostgreSQL mode: no new database in $CAPSTAN_TEST_PG"
  export CAPSTAN_STORE
}

# it_copy_store SRC DST: DST becomes a data directory holding a copy of
# SRC's store, to branch it (try something on the copy): `cp -a` of an LMDB
# directory; in PostgreSQL mode a copy of SRC's directory would share its
# store, so DST gets a database of its own and SRC's records through
# `capstan backup` and `capstan restore`.
it_copy_store() {
  if ! it_pg_mode; then
    cp -a "$1" "$2" || fail "cp -a $1 $2"
    return 0
  fi
  local url
  url=$(timeout 60 "$IT_PG_TOOL" newdb "$CAPSTAN_TEST_PG" "c_copy") ||
    fail "PostgreSQL mode: no new database in $CAPSTAN_TEST_PG"
  timeout 60 "$CAPSTAN_BIN" backup "$IT_TMP/copy-store.bak" --force --data-dir "$1" >/dev/null &&
    timeout 60 "$CAPSTAN_BIN" init --data-dir "$2" --store "$url" >/dev/null &&
    timeout 60 "$CAPSTAN_BIN" restore "$IT_TMP/copy-store.bak" --data-dir "$2" --force >/dev/null ||
    fail "copying the store of $1 to $2 failed"
  rm -f "$IT_TMP/copy-store.bak"
}

# --- Servers ----------------------------------------------------------------

# srv_prepare NAME [capstan init options]: creates server NAME's data
# directory (`capstan init`) without starting it, so that settings can be
# set before the server reads them (`cap NAME config set ...`); srv_start
# NAME then uses it.
srv_prepare() {
  local name=$1
  shift
  local dir="$IT_TMP/srv-$name"
  mkdir -p "$dir"
  SRV_DATA[$name]="$dir/data"
  it_store_args "${SRV_DATA[$name]}"
  timeout 120 "$CAPSTAN_BIN" init --data-dir "${SRV_DATA[$name]}" "${IT_STORE_ARGS[@]}" "$@" \
    >"$dir/init.log" 2>&1 || {
    cat "$dir/init.log" >&2
    fail "capstan init for server '$name' failed"
  }
}

# srv_start NAME [--files] [extra 'capstan serve' options...]
# Starts a server with its own fresh data directory on free loopback ports
# and waits (at most 30 s, more under sanitizers) until /healthz answers.
# Sets SRV_CAPF[NAME], SRV_ADMIN[NAME] (ports), SRV_DATA, SRV_LOG, SRV_PID.
# With --files, the HTTP and TFTP listeners are on too (SRV_HTTP, SRV_TFTP);
# otherwise they are off.
srv_start() {
  local name=$1
  shift
  local files=0
  if [[ "${1:-}" == --files ]]; then
    files=1
    shift
  fi
  local dir="$IT_TMP/srv-$name" attempt
  mkdir -p "$dir"
  : "${SRV_DATA[$name]:=$dir/data}"
  SRV_NAMES+=("$name")
  local bound=30
  it_sanitized && bound=60
  for attempt in 1 2 3; do
    local capf admin http=off tftp=off
    capf=$(it_free_port tcp)
    admin=$(it_free_port tcp)
    local http_arg=off tftp_arg=off
    if [[ $files == 1 ]]; then
      http=$(it_free_port tcp)
      tftp=$(it_free_port udp)
      http_arg="127.0.0.1:$http"
      tftp_arg="127.0.0.1:$tftp"
    fi
    SRV_CAPF[$name]=$capf
    SRV_ADMIN[$name]=$admin
    SRV_HTTP[$name]=$http
    SRV_TFTP[$name]=$tftp
    SRV_LOG[$name]="$dir/server.log"
    echo "=== start attempt $attempt: capf=$capf admin=$admin http=$http tftp=$tftp" \
      >>"${SRV_LOG[$name]}"
    it_store_args "${SRV_DATA[$name]}"
    "$CAPSTAN_BIN" serve --init --data-dir "${SRV_DATA[$name]}" "${IT_STORE_ARGS[@]}" \
      --capf-listen "127.0.0.1:$capf" --admin-listen "127.0.0.1:$admin" \
      --http-listen "$http_arg" --tftp-listen "$tftp_arg" --drain-seconds 5 \
      "$@" </dev/null >>"${SRV_LOG[$name]}" 2>&1 &
    SRV_PID[$name]=$!
    local deadline=$((SECONDS + bound)) up=0
    while ((SECONDS <= deadline)); do
      if ! kill -0 "${SRV_PID[$name]}" 2>/dev/null; then break; fi
      if curl -sf --max-time 2 "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1; then
        up=1
        break
      fi
      sleep 0.1
    done
    if [[ $up == 1 ]]; then
      # The ready line names the CAPF port the server really listens on.
      local ready
      ready=$(grep -m1 'event=ready' "${SRV_LOG[$name]}" | tail -n1)
      [[ "$ready" == *"capf_port=$capf"* ]] ||
        fail "server '$name': /healthz answers but the log has no 'event=ready ... capf_port=$capf'"
      it_log "server '$name' ready: capf=127.0.0.1:$capf admin=127.0.0.1:$admin"
      return 0
    fi
    if kill -0 "${SRV_PID[$name]}" 2>/dev/null; then
      fail "server '$name' not ready within ${bound}s"
    fi
    wait "${SRV_PID[$name]}" 2>/dev/null
    SRV_PID[$name]=""
    # A port taken in between shows as a listen error: try other ports.
    if ! grep -qiE 'address already in use|EADDRINUSE|listen' "${SRV_LOG[$name]}"; then
      fail "server '$name' exited before it was ready"
    fi
    it_log "server '$name' could not listen (attempt $attempt); new ports"
  done
  fail "server '$name' could not start after 3 attempts"
}

# srv_stop NAME: SIGTERM; the server must exit with status 0 within the
# bound (drain is 5 s in tests) and its log must hold no sanitizer report.
srv_stop() {
  local name=$1 pid="${SRV_PID[$1]:-}" i
  [[ -n "$pid" ]] || fail "server '$name' is not running"
  kill -TERM "$pid" 2>/dev/null || fail "server '$name' (pid $pid) is gone before SIGTERM"
  local bound=150 # tenths of a second
  it_sanitized && bound=300
  for ((i = 0; i < bound; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    SRV_PID[$name]=""
    fail "server '$name' did not exit within $((bound / 10)) s of SIGTERM"
  fi
  local rc=0
  wait "$pid" || rc=$?
  SRV_PID[$name]=""
  srv_check_log "$name"
  [[ $rc -eq 0 ]] || fail "server '$name' exited with status $rc after SIGTERM (expected 0)"
  grep -q 'event=exit code=0' "${SRV_LOG[$name]}" || fail "server '$name' log has no 'event=exit code=0'"
  it_log "server '$name' stopped cleanly"
}

# Fails when a server log holds a sanitizer report.
srv_check_log() {
  if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "${SRV_LOG[$1]}"; then
    fail "server '$1' log holds a sanitizer report"
  fi
}

# True while the server runs.
srv_alive() { [[ -n "${SRV_PID[$1]:-}" ]] && kill -0 "${SRV_PID[$1]}" 2>/dev/null; }

# cap NAME ARGS...: runs the admin CLI on server NAME's data directory,
# bounded; prints its stdout. Fails the test when it exits non-zero.
cap() {
  local name=$1
  shift
  local out rc=0
  out=$(timeout 60 "$CAPSTAN_BIN" "$@" --data-dir "${SRV_DATA[$name]}" 2>"$IT_TMP/cli.err") || rc=$?
  if [[ $rc -ne 0 ]]; then
    cat "$IT_TMP/cli.err" >&2
    fail "capstan $* (server '$name') exited with status $rc"
  fi
  printf '%s\n' "$out"
}

# cli_expect DATA_DIR WANT_RC ARGS...: runs the admin CLI on DATA_DIR,
# bounded, stdout in $OUT and stderr in $ERR (both under $IT_TMP); fails the
# test unless it exits WANT_RC, or when it reports a sanitizer error (86).
OUT="$IT_TMP/out"
ERR="$IT_TMP/err"
cli_expect() {
  local data=$1 want=$2 rc=0
  shift 2
  timeout 60 "$CAPSTAN_BIN" "$@" --data-dir "$data" >"$OUT" 2>"$ERR" || rc=$?
  [[ $rc -eq 86 ]] && { cat "$ERR" >&2; fail "capstan $*: sanitizer report"; }
  [[ $rc -eq $want ]] || {
    cat "$OUT" "$ERR" >&2
    fail "capstan $*: exit $rc, expected $want"
  }
}

# has FILE TEXT / lacks FILE TEXT: FILE contains TEXT (fixed string) / does not.
has() { grep -qF -- "$2" "$1" || { cat "$1" >&2; fail "'$2' not in $(basename "$1")"; }; }
lacks() { ! grep -qF -- "$2" "$1" || { cat "$1" >&2; fail "'$2' unexpectedly in $(basename "$1")"; }; }

# cap_try NAME ARGS...: like cap, but returns the status instead of failing.
cap_try() {
  local name=$1
  shift
  timeout 60 "$CAPSTAN_BIN" "$@" --data-dir "${SRV_DATA[$name]}"
}

# device_json NAME DEVICE: prints `capstan device show DEVICE --json`.
device_json() { cap "$1" device show "$2" --json; }

# lsc_on_record NAME DEVICE CERT: the LSC a phone saved (DER file CERT) is in
# DEVICE's certificate history on server NAME, once.
lsc_on_record() {
  local serial dj
  serial=$(openssl x509 -inform der -in "$3" -noout -serial) || fail "$2: LSC unreadable"
  serial=${serial#serial=}
  serial=${serial,,}
  while ((${#serial} < 32)); do serial=0$serial; done
  dj=$(device_json "$1" "$2")
  jq -e --arg s "$serial" '[.cert_history[] | select(.serial == $s)] | length == 1' \
    <<<"$dj" >/dev/null || fail "$2: LSC $serial the phone holds is not on record: $dj"
}

# --- Phones -----------------------------------------------------------------

PHONE_JSON=""
PHONE_RC=0

# phone NAME ARGS...: runs one simulated phone against server NAME with
# --json (bounded), setting PHONE_JSON (its one JSON line) and PHONE_RC
# (0: the session ran as the protocol says; 1: an error such as RETRY_LATER).
# Fails the test on bad usage (2), a sanitizer report, or no JSON line.
phone() {
  local name=$1
  shift
  PHONE_RC=0
  local err="$IT_TMP/phone.err"
  PHONE_JSON=$(timeout 120 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[$name]}" \
    --key-cache "$IT_KEYS" --json "$@" 2>"$err") || PHONE_RC=$?
  {
    echo "== capstan-phone $* -> rc=$PHONE_RC"
    echo "$PHONE_JSON"
    cat "$err"
  } >>"$IT_TMP/phones.log"
  if [[ $PHONE_RC -eq 86 ]] || grep -qE 'Sanitizer|runtime error:' "$err"; then
    cat "$err" >&2
    fail "capstan-phone $*: sanitizer report"
  fi
  [[ $PHONE_RC -eq 0 || $PHONE_RC -eq 1 ]] || {
    cat "$err" >&2
    fail "capstan-phone $* exited with status $PHONE_RC"
  }
  [[ "$PHONE_JSON" == "{"* ]] || fail "capstan-phone $*: no JSON result (rc=$PHONE_RC)"
}

# --- JSON, metrics, certificates ------------------------------------------

# json_get JSON KEY: prints the value of a top-level key ("null" for null;
# strings without quotes).
json_get() {
  jq -r --arg k "$2" '.[$k] | if type == "string" then . else tojson end' <<<"$1"
}

# json_expect JSON KEY VALUE [KEY VALUE...]: each key has that value
# (compared as json_get prints it). One jq run for all pairs.
json_expect() {
  local json=$1
  shift
  local bad
  bad=$(jq -r '. as $o | $ARGS.positional as $a
      | [range(0; $a | length; 2) | . as $i
         | ($o[$a[$i]] | if type == "string" then . else tojson end) as $got
         | select($got != $a[$i + 1])
         | "\($a[$i])=\($got) (expected \($a[$i + 1]))"]
      | join(", ")' --args "$@" <<<"$json") || fail "not JSON: $json"
  [[ -z "$bad" ]] || fail "$bad in: $json"
}

# metric NAME SERIES: prints the value of one series of server NAME's
# /metrics, e.g. 'capstan_capf_sessions_total{operation="install",result="ok"}'.
# Fails when the series is absent.
metric() {
  local body
  body=$(curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[$1]}/metrics") ||
    fail "GET /metrics on server '$1' failed"
  local v
  v=$(awk -v s="$2" '$1 == s { print $2; found = 1 } END { if (!found) exit 1 }' <<<"$body") ||
    fail "metric series $2 not found on server '$1'"
  # Integers print as integers (counters are exported as such).
  printf '%s\n' "$v"
}

# metric_expect NAME SERIES VALUE
metric_expect() {
  local got
  got=$(metric "$1" "$2")
  [[ "$got" == "$3" ]] || fail "metric $2 = $got, expected $3"
}

# md5_of FILE: lower-case hex MD5 of a file (the certificate's md5hash).
md5_of() {
  local sum
  sum=$(md5sum <"$1") || fail "md5sum $1"
  printf '%s\n' "${sum%% *}"
}

# py ARGS...: runs lib.py (certificate checks, test CAs).
py() { "$IT_PYTHON" "$IT_PY" "$@"; }

assert_eq() {
  [[ "$1" == "$2" ]] || fail "${3:-values differ}: expected '$1', got '$2'"
}

# --- Test CAs (tests/tools/test_est_ca.py, test_certsrv_ca.py) -------------

declare -A CA_URL=() CA_DIR=()

# testca_start NAME TOOL [ARGS...]: starts a test CA (TOOL: est or certsrv)
# on a loopback port, in the background (stopped at cleanup), and waits for
# its ready line. Sets CA_URL[NAME] and CA_DIR[NAME], which holds root.pem
# (the root: CAPF-trust and the TLS bundle), chain.pem (issuing CA first)
# and stderr.log.
testca_start() {
  local name=$1 tool=$2
  shift 2
  local dir="$IT_TMP/ca-$name"
  mkdir -p "$dir"
  CA_DIR[$name]=$dir
  "$IT_PYTHON" "$CAPSTAN_SOURCE_DIR/tests/tools/test_${tool}_ca.py" --root-out "$dir/root.pem" \
    --tls-cert-out "$dir/tls.pem" --chain-out "$dir/chain.pem" "$@" \
    >"$dir/ready" 2>"$dir/stderr.log" </dev/null &
  local i
  for ((i = 0; i < 300; i++)); do
    [[ -s "$dir/ready" ]] && break
    sleep 0.1
  done
  [[ -s "$dir/ready" ]] || { cat "$dir/stderr.log" >&2; fail "test CA '$name' not ready within 30 s"; }
  CA_URL[$name]=$(jq -r .url <"$dir/ready") || fail "test CA '$name': bad ready line"
  it_log "test CA '$name' ($tool) at ${CA_URL[$name]}"
}

# testca_control NAME JSON: changes the test CA's behaviour (POST /control);
# prints its state (settings, log, pending) as JSON.
testca_control() {
  curl -sf --max-time 10 --cacert "${CA_DIR[$1]}/root.pem" -H 'Content-Type: application/json' \
    --data "$2" "${CA_URL[$1]}/control" || fail "test CA '$1': POST /control $2 failed"
}
