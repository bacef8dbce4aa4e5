#!/usr/bin/env bash
# Authentication-string guessing (capf-protocol.md "Authentication", README
# "Authentication strings"): after auth-max-failures wrong strings in a row
# (default 5) a device's operation is locked: the right string is refused
# too, with a status that says how to re-arm it, until `device set
# --operation` re-arms it. Wrong strings from one address are answered ever
# later (1 s, 2 s, 4 s, ... up to auth-delay-max-seconds, here 6 s for a
# short test), whichever device they name; right strings are never delayed.
# Both are counted in /metrics and logged once per event with the device
# and the peer, never the string.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq
it_watchdog 180

srv_start main
LOG=${SRV_LOG[main]}
A=SEP0000C0E55001
B=SEP0000C0E55002
RIGHT=48291375
WRONG=(61830472 92057318 30498617 75120963 18364059)
RIGHT_B=73184602
WRONG_B=(52907134 69415280)

# The defaults, then a shorter cap for this test (a live setting).
[[ $(cap main config get auth-max-failures) == 5 ]] || fail "auth-max-failures default"
[[ $(cap main config get auth-delay-max-seconds) == 30 ]] || fail "auth-delay-max-seconds default"
before=$(grep -c 'event=settings_applied' "$LOG")
cap main config set auth-delay-max-seconds 6 >/dev/null
applied() {
  [[ $(grep -c 'event=settings_applied' "$LOG") -gt $before ]] &&
    grep 'event=settings_applied' "$LOG" | tail -n1 | grep -q ' auth-delay-max-seconds=6'
}
it_wait_for 20 applied || fail "auth-delay-max-seconds not applied"

cap main device add $A --operation install --auth string --auth-string $RIGHT --key ec256 >/dev/null
cap main device add $B --operation install --auth string --auth-string $RIGHT_B --key ec256 >/dev/null

# ms_at_least MIN / ms_below MAX: the last phone's total_ms.
total_ms() { json_get "$PHONE_JSON" total_ms; }
ms_at_least() {
  awk -v t="$(total_ms)" -v m="$1" 'BEGIN { exit !(t >= m) }' ||
    fail "the phone was answered after $(total_ms) ms, expected at least $1 ms"
}
ms_below() {
  awk -v t="$(total_ms)" -v m="$1" 'BEGIN { exit !(t < m) }' ||
    fail "the phone was answered after $(total_ms) ms, expected less than $1 ms"
}
SLACK=8000
it_sanitized && SLACK=20000

# --- Five wrong strings: each answered later, the fifth locks A -------------
delays=(1000 2000 4000 6000 6000)
for i in 0 1 2 3 4; do
  phone main --name $A --auth string --auth-string "${WRONG[$i]}"
  json_expect "$PHONE_JSON" result end reason 7 operation none key null
  ms_at_least "${delays[$i]}"
  ms_below $((delays[i] + SLACK))
  if ((i < 4)); then
    json_expect "$(device_json main $A)" status failed status_reason "authentication failed" \
      auth_failures $((i + 1)) attempts $((i + 1))
  fi
done
LOCKED="locked: 5 wrong authentication strings; capstan device set $A --operation install re-arms it"
json_expect "$(device_json main $A)" status failed status_reason "$LOCKED" auth_failures 5 \
  operation install md5hash null
metric_expect main capstan_capf_auth_lockouts_total 1
metric_expect main capstan_capf_auth_delayed_total 5

# --- Locked: the right string is refused, unread and at once ----------------
phone main --name $A --auth string --auth-string $RIGHT
json_expect "$PHONE_JSON" result end reason 7 key null
ms_below 6000
json_expect "$(device_json main $A)" status failed status_reason "$LOCKED" auth_failures 5 \
  attempts 6
metric_expect main capstan_capf_auth_locked_refused_total 1

# --- The address, not the device: B's first wrong string waits the cap -----
phone main --name $B --auth string --auth-string "${WRONG_B[0]}"
json_expect "$PHONE_JSON" result end reason 7
ms_at_least 6000
json_expect "$(device_json main $B)" status failed status_reason "authentication failed" \
  auth_failures 1

# --- Re-armed: A accepts its string again; a right string is not delayed ----
cap main device set $A --operation install >/dev/null
json_expect "$(device_json main $A)" status pending status_reason null auth_failures 0 attempts 0
phone main --name $A --auth string --auth-string $RIGHT
json_expect "$PHONE_JSON" result ok reason 1 operation install
ms_below 6000
json_expect "$(device_json main $A)" status succeeded auth_failures 0
# B's right string resets its count.
phone main --name $B --auth string --auth-string $RIGHT_B
json_expect "$PHONE_JSON" result ok reason 1 operation install
json_expect "$(device_json main $B)" status succeeded auth_failures 0

# --- Counted and logged -----------------------------------------------------
metric_expect main 'capstan_capf_auth_failures_total{mode="string"}' 7
metric_expect main capstan_capf_auth_lockouts_total 1
metric_expect main capstan_capf_auth_locked_refused_total 1
metric_expect main capstan_capf_auth_delayed_total 6
metric_expect main 'capstan_capf_sessions_total{operation="install",result="auth_failed"}' 7
metric_expect main 'capstan_capf_sessions_total{operation="install",result="ok"}' 2
metric_expect main capstan_capf_sessions_active 0
[[ $(grep -c "event=capf_auth_locked device=$A peer=127.0.0.1 wrong_strings=5" "$LOG") == 1 ]] ||
  fail "the lock of $A is not logged once"
[[ $(grep -c 'event=capf_auth_delayed .*peer=127.0.0.1 ' "$LOG") == 6 ]] ||
  fail "not one capf_auth_delayed line per delayed string"
grep -q "event=capf_auth_delayed device=$B peer=127.0.0.1 delay_ms=6000 wrong_strings_from_address=6" \
  "$LOG" || fail "B's delay is not logged with the address's count"
grep -q "event=capf_auth_failed device=$A peer=127.0.0.1 mode=string reason=\"locked\"" "$LOG" ||
  fail "the refusal of a locked device is not logged"
for s in $RIGHT $RIGHT_B "${WRONG[@]}" "${WRONG_B[@]}"; do
  if grep -q -- "$s" "$LOG"; then fail "an authentication string ($s) is in the server log"; fi
done
# The audit log says what happened, never the string.
audit=$(cap main audit list --device $A 2>&1) || fail "audit list"
grep -q "auth_locked" <<<"$audit" || fail "no auth_locked audit event: $audit"
for s in $RIGHT "${WRONG[@]}"; do
  if grep -q -- "$s" <<<"$audit"; then fail "an authentication string ($s) is in the audit log"; fi
done

# --- Drain: a phone held by the delay hears END_SESSION at once ------------
cap main device set $B --operation install >/dev/null
timeout 60 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --key-cache "$IT_KEYS" --json \
  --name $B --auth string --auth-string "${WRONG_B[1]}" >"$IT_TMP/drain.json" 2>"$IT_TMP/drain.err" &
held=$!
it_wait_for 20 '[[ $(grep -c "event=capf_auth_delayed device=$B" "$LOG") == 2 ]]' ||
  fail "the phone was not held by the delay"
start=$SECONDS
srv_stop main
wait $held
PHONE_JSON=$(cat "$IT_TMP/drain.json")
json_expect "$PHONE_JSON" result end reason 7
ms_below 6000
((SECONDS - start < 5)) || fail "the drain waited for the delay"
grep -q 'event=capf_drain_deadline' "$LOG" && fail "the drain ran to its deadline"
if grep -q -- "${WRONG_B[1]}" "$LOG"; then fail "an authentication string is in the server log"; fi
it_pass
