#!/usr/bin/env bash
# Draining (SIGTERM with --drain-seconds): while a CAPF session is held open
# (a phone in key generation, --keygen-delay), /healthz and /metrics answer
# and phone files download over HTTP and TFTP; new CAPF connections are
# refused; the server exits 0 as soon as the session ends (well before the
# drain time), or when the drain time passes with the phone still busy.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq
it_watchdog 240

mkdir -p "$IT_TMP/files"
head -c 20000 /dev/urandom >"$IT_TMP/files/ring.raw"

# drain_server NAME DRAIN KEYGEN_DELAY: starts server NAME draining in DRAIN
# seconds, holds a phone in key generation for KEYGEN_DELAY s, sends SIGTERM
# and checks that everything but CAPF answers while it drains.
# Sets PHONE_PID, and T0 (when SIGTERM went).
drain_server() {
  local name=$1 drain=$2 delay=$3 dev=$4
  srv_start "$name" --files --files-dir "$IT_TMP/files" --drain-seconds "$drain"
  cap "$name" device add "$dev" --operation install --auth null --key ec256 >/dev/null
  timeout $((delay + 60)) "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[$name]}" \
    --key-cache "$IT_KEYS" --json --name "$dev" --auth null --keygen-delay "$delay" \
    --timeout 120 >"$IT_TMP/$dev.json" 2>>"$IT_TMP/phones.log" &
  PHONE_PID=$!
  DRAIN_SRV=$name
  it_wait_for 60 '[[ $(metric "$DRAIN_SRV" capstan_capf_keygen_active) == 1 ]]' ||
    fail "the phone did not reach key generation"
  T0=$SECONDS
  kill -TERM "${SRV_PID[$name]}"
  it_wait_for 20 'grep -q "event=capf_draining sessions=1" "${SRV_LOG[$DRAIN_SRV]}"' ||
    fail "server '$name' did not start draining"

  # Everything but CAPF still answers.
  local admin=${SRV_ADMIN[$name]}
  assert_eq ok "$(curl -sf --max-time 5 "http://127.0.0.1:$admin/healthz")" "/healthz while draining"
  curl -sf --max-time 5 "http://127.0.0.1:$admin/metrics" >"$IT_TMP/metrics" ||
    fail "/metrics while draining"
  grep -q '^capstan_capf_sessions_active 1' "$IT_TMP/metrics" ||
    fail "/metrics while draining does not show the session in flight"
  curl -sf --max-time 5 -o "$IT_TMP/http.raw" "http://127.0.0.1:${SRV_HTTP[$name]}/ring.raw" ||
    fail "HTTP download while draining"
  cmp -s "$IT_TMP/files/ring.raw" "$IT_TMP/http.raw" || fail "HTTP file differs"
  curl -sS --max-time 10 -o "$IT_TMP/tftp.raw" "tftp://127.0.0.1:${SRV_TFTP[$name]}/ring.raw" ||
    fail "TFTP download while draining"
  cmp -s "$IT_TMP/files/ring.raw" "$IT_TMP/tftp.raw" || fail "TFTP file differs"
  # The signed files the phones boot with, too.
  curl -sf --max-time 10 -o "$IT_TMP/itl" "http://127.0.0.1:${SRV_HTTP[$name]}/ITLFile.tlv" ||
    fail "ITLFile.tlv while draining"
  # A new CAPF session is not taken.
  phone "$name" --name "$dev" --auth null --timeout 10
  [[ $PHONE_RC -eq 1 ]] || fail "a new CAPF session was served while draining: $PHONE_JSON"
  srv_alive "$name" || fail "server '$name' exited while its session was in flight"
}

# wait_exit NAME BOUND: the server exits 0 within BOUND s of SIGTERM; sets
# EXIT_AFTER (seconds since SIGTERM).
wait_exit() {
  local name=$1 bound=$2 pid=${SRV_PID[$1]} rc=0
  local deadline=$((T0 + bound))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS <= deadline)); do sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && fail "server '$name' still runs $bound s after SIGTERM"
  wait "$pid" || rc=$?
  SRV_PID[$name]=""
  EXIT_AFTER=$((SECONDS - T0))
  assert_eq 0 "$rc" "exit status of server '$name' after the drain"
  srv_check_log "$name"
  grep -q 'event=exit code=0' "${SRV_LOG[$name]}" || fail "no event=exit code=0"
}

# --- The session ends: the server exits then, not at the drain time ---------------
slow=6
it_sanitized && slow=10
drain_server main 60 "$slow" SEP0000D8A10001
wait "$PHONE_PID" || fail "the phone in flight did not enroll: $(cat "$IT_TMP/SEP0000D8A10001.json")"
json_expect "$(cat "$IT_TMP/SEP0000D8A10001.json")" result ok reason 1
wait_exit main 40
((EXIT_AFTER < 40)) || fail "exited $EXIT_AFTER s after SIGTERM: it waited for the drain time"
grep -q 'event=capf_drain_deadline' "${SRV_LOG[main]}" && fail "the drain deadline fired"
cli_expect "${SRV_DATA[main]}" 0 device show SEP0000D8A10001 --json
json_expect "$(cat "$OUT")" status succeeded
it_log "drained after the session ended: exit $EXIT_AFTER s after SIGTERM"

# --- The phone is still busy at the drain time: the server exits then --------------
drain_server late 4 90 SEP0000D8A10002
wait_exit late 30
((EXIT_AFTER >= 3)) || fail "exited $EXIT_AFTER s after SIGTERM, before the drain time"
grep -q 'event=capf_drain_deadline' "${SRV_LOG[late]}" || fail "no drain deadline logged"
kill -TERM "$PHONE_PID" 2>/dev/null
wait "$PHONE_PID" 2>/dev/null
cli_expect "${SRV_DATA[late]}" 0 device show SEP0000D8A10002 --json
json_expect "$(cat "$OUT")" status failed \
  status_reason "interrupted: the server stopped during the operation"
it_pass
