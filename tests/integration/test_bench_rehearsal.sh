#!/usr/bin/env bash
# capstan-bench rehearses a maintenance window (bench/README.md "Rehearsing a
# window"): phones with their own authentication strings from the CSV that
# `capstan device export` writes; a throttled window (max-concurrent-keygen,
# RETRY_LATER) that every phone still finishes because it comes back after
# RETRY_DELAY; an LSC round with the LSCs the first round saved; a MIC round
# with a manufacturing CA added to CAPF-trust. Loopback only, small numbers.
. "$(dirname "$0")/lib.sh"
BENCH_BIN="$CAPSTAN_BUILD_DIR/capstan-bench"
it_require "$CAPSTAN_BIN" "$BENCH_BIN" curl jq
it_watchdog 500

N=120
it_sanitized && N=40
W="$IT_TMP/w"
mkdir -p "$W"

srv_start main
PORT=${SRV_CAPF[main]}

# bench LABEL ARGS...: runs capstan-bench against the server (bounded), its
# JSON report in BENCH_JSON; fails on a sanitizer report or no report.
bench() {
  local label=$1 rc=0
  shift
  timeout 240 "$BENCH_BIN" --connect "127.0.0.1:$PORT" --key ec256 --key-pool 4 \
    --key-cache "$IT_KEYS" --concurrency 40 --timeout 60 --json "$@" \
    >"$W/$label.json" 2>"$W/$label.err" || rc=$?
  {
    echo "== capstan-bench $label $* -> rc=$rc"
    cat "$W/$label.json" "$W/$label.err"
  } >>"$IT_TMP/phones.log"
  if [[ $rc -eq 86 ]] || grep -qE 'Sanitizer|runtime error:' "$W/$label.err"; then
    fail "capstan-bench $label: sanitizer report"
  fi
  BENCH_JSON=$(tail -n 1 "$W/$label.json")
  [[ "$BENCH_JSON" == "{"* ]] || fail "capstan-bench $label: no JSON report (rc=$rc)"
  BENCH_RC=$rc
}
# bget FILTER: a value of the last report.
bget() { jq -r "$1" <<<"$BENCH_JSON"; }
# all_installed LABEL: every phone installed its LSC, no failure.
all_installed() {
  [[ $BENCH_RC -eq 0 ]] || fail "$1: capstan-bench exited $BENCH_RC: $BENCH_JSON"
  [[ "$(bget .phones)" == "$N" ]] || fail "$1: phones is not $N: $BENCH_JSON"
  [[ "$(bget '.outcomes.ok_install_reason_1')" == "$N" ]] || fail "$1: not all installed: $BENCH_JSON"
  [[ "$(bget '.failures | length')" == 0 ]] || fail "$1: failures: $BENCH_JSON"
  [[ "$(bget .errors)" == 0 && "$(bget .gave_up)" == 0 ]] || fail "$1: errors: $BENCH_JSON"
}
# settings_applied MINUTES: the server applies the whole settings record at
# its next store transaction; a keep-alive change is logged when applied, so
# once its line is there the settings before it are in force.
settings_applied() {
  cap main keepalive set "$1" >/dev/null
  it_wait_for 20 "grep -q 'event=capf_keepalive_changed minutes=$1' '${SRV_LOG[main]}'" ||
    fail "settings not applied (no capf_keepalive_changed minutes=$1)"
}

# --- Round 1: authentication strings from the exported CSV ------------------------
# Devices in string mode get generated strings (one shared at import, then
# unique ones from generate-auth-strings); the export carries them; the
# bench gives each phone its own.
{
  echo "name,operation,auth_mode,auth_string,key,completes_by"
  timeout 30 "$BENCH_BIN" --phones "$N" --name-prefix SEP00BE --print-names |
    sed 's/$/,install,string,,ec256,/'
} >"$W/import.csv"
cap main device import "$W/import.csv" --generate-auth-strings shared >/dev/null
# ... then each its own (what an operator does before handing strings out).
cap main device generate-auth-strings --unique >/dev/null
cap main device export "$W/devices.csv" >/dev/null
head -n 1 "$W/devices.csv" | grep -q '^name,operation,auth_mode,auth_string,' ||
  fail "export header changed: $(head -n 1 "$W/devices.csv")"
[[ $(grep -cE '^SEP00BE[0-9A-F]{8},install,string,[0-9]{6},' "$W/devices.csv") == "$N" ]] ||
  fail "the export does not hold $N devices with 6-digit strings"
# Strings are per device: a phone with another device's string is refused.
ONE=$(sed -n 2p "$W/devices.csv" | cut -d, -f1)
OTHER=$(sed -n 3p "$W/devices.csv" | cut -d, -f4)
MINE=$(sed -n 2p "$W/devices.csv" | cut -d, -f4)
[[ "$OTHER" != "$MINE" ]] || fail "two devices got the same string"
phone main --name "$ONE" --auth string --auth-string "$(printf '%06d' $(((10#$MINE + 1) % 1000000)))"
json_expect "$PHONE_JSON" result end reason 7
cap main device import "$W/devices.csv" >/dev/null # re-arm the refused one

bench strings --devices "$W/devices.csv" --lsc-dir "$W/lsc"
all_installed "string round"
[[ $(find "$W/lsc" -name 'SEP00BE*.key.der' | wc -l) == "$N" ]] || fail "not $N LSCs saved"
[[ "$(bget .sessions)" == "$N" && "$(bget '.retries.retry_later')" == 0 ]] ||
  fail "string round: unexpected retries: $BENCH_JSON"
# The device store agrees: each has its certificate, and the saved one is it.
DJ=$(device_json main "$ONE")
want=$(openssl x509 -inform DER -in "$W/lsc/$ONE.der" -outform DER 2>/dev/null | md5sum | cut -d' ' -f1)
json_expect "$DJ" status succeeded md5hash "$want"

# --- Round 2: a throttled window, phones come back after RETRY_LATER ---------------
cap main config set max-concurrent-keygen 5 >/dev/null
cap main config set throttle-hold-seconds 0 >/dev/null
cap main config set retry-delay-seconds 1 >/dev/null
settings_applied 7
cap main device import "$W/devices.csv" --rearm >/dev/null # re-arm: install again
# Without retries some phones are turned away (and the bench says so).
bench throttled-noretry --devices "$W/devices.csv" --phones 30 --keygen-delay 0.3
[[ "$(bget '.outcomes.error_retry_later // 0')" -gt 0 ]] ||
  fail "no phone was turned away by max-concurrent-keygen 5: $BENCH_JSON"
[[ $BENCH_RC -eq 1 && "$(bget .gave_up)" == 0 ]] || fail "no-retry run: $BENCH_JSON"
cap main device import "$W/devices.csv" --rearm >/dev/null
# With retries every phone finishes.
bench throttled --devices "$W/devices.csv" --lsc-dir "$W/lsc" --keygen-delay 0.3 \
  --max-retries 1000 --retry-cap-seconds 2
all_installed "throttled round"
RL=$(bget '.retries.retry_later')
[[ "$RL" -gt 0 && "$(bget .retried_phones)" -gt 0 && "$(bget .ok_after_retries)" -gt 0 ]] ||
  fail "throttled round: no retries after RETRY_LATER: $BENCH_JSON"
[[ "$(bget .sessions)" == $((N + $(bget '[.retries[]] | add'))) ]] ||
  fail "sessions is not phones + retries: $BENCH_JSON"
[[ "$(metric main 'capstan_capf_throttled_total{result="retry_later"}')" -ge "$RL" ]] ||
  fail "the server counted fewer RETRY_LATER than the bench"
it_log "throttled: $(bget .retried_phones) phones came back, $RL retries, all $N installed"

cap main config set max-concurrent-keygen 10000 >/dev/null
cap main config set throttle-hold-seconds 20 >/dev/null
settings_applied 8

# --- A refused connection: phones back off and give up, counted ---------------------
DEAD=$(it_free_port tcp)
rc=0
timeout 60 "$BENCH_BIN" --connect "127.0.0.1:$DEAD" --devices "$W/devices.csv" --phones 5 \
  --key ec256 --key-cache "$IT_KEYS" --key-pool 4 --max-retries 2 --backoff-seconds 0.05 \
  --json >"$W/dead.json" 2>"$W/dead.err" || rc=$?
[[ $rc -eq 1 ]] || fail "a bench against a closed port exited $rc (expected 1): $(cat "$W/dead.err")"
BENCH_JSON=$(tail -n 1 "$W/dead.json")
[[ "$(bget '.retries.connect_failed')" == 10 && "$(bget .gave_up)" == 5 &&
  "$(bget '.outcomes.error_connect_failed')" == 5 && "$(bget .sessions)" == 15 ]] ||
  fail "refused connections: $BENCH_JSON"

# --- Round 3: authentication by LSC, with the LSCs of the earlier rounds ------------
cap main device bulk-set --name-prefix SEP00BE --operation install --auth lsc >/dev/null
cap main device export "$W/devices-lsc.csv" >/dev/null
[[ $(grep -c ',install,lsc,' "$W/devices-lsc.csv") == "$N" ]] || fail "bulk-set to lsc"
before=$(md5sum "$W/lsc/$ONE.der" | cut -d' ' -f1)
bench lsc --devices "$W/devices-lsc.csv" --lsc-dir "$W/lsc"
all_installed "LSC round"
after=$(md5sum "$W/lsc/$ONE.der" | cut -d' ' -f1)
[[ "$before" != "$after" ]] || fail "the LSC round did not save the new LSC"
# Without its LSC a phone cannot authenticate by LSC: the bench says so.
cap main device bulk-set --name-prefix SEP00BE --operation install --auth lsc >/dev/null
bench nolsc --devices "$W/devices-lsc.csv" --phones 3 --lsc-dir "$W/empty"
[[ "$(bget '.outcomes.error_no_lsc')" == 3 && $BENCH_RC -eq 1 ]] || fail "no LSC: $BENCH_JSON"

# --- Round 4: authentication by MIC, from a manufacturing CA in CAPF-trust ---------
timeout 60 "$BENCH_BIN" --mic-ca "$W/mfg.pem" --mic-ca-out "$W/mfg-cert.pem" 2>"$W/mfg.err" ||
  fail "creating the manufacturing CA: $(cat "$W/mfg.err")"
[[ "$(stat -c %a "$W/mfg.pem")" == 600 ]] || fail "the CA key file is not 0600"
cap main trust add "$W/mfg-cert.pem" >/dev/null
cap main device bulk-set --name-prefix SEP00BE --operation install --auth mic >/dev/null
cap main device export "$W/devices-mic.csv" >/dev/null
# The server notices the trust change itself (reload on trust_generation).
it_wait_for 20 "grep -q 'event=reload cause=trust_changed' '${SRV_LOG[main]}'" ||
  fail "the server did not reload CAPF-trust"
bench mic --devices "$W/devices-mic.csv" --mic-ca "$W/mfg.pem" --lsc-dir "$W/lsc"
all_installed "MIC round"
# The CA is read back from the file: a second run uses the same one.
cap main device bulk-set --name-prefix SEP00BE --operation install --auth mic >/dev/null
bench mic2 --devices "$W/devices-mic.csv" --phones 10 --mic-ca "$W/mfg.pem"
[[ "$(bget '.outcomes.ok_install_reason_1')" == 10 && $BENCH_RC -eq 0 ]] || fail "second MIC run: $BENCH_JSON"

srv_stop main
it_pass
