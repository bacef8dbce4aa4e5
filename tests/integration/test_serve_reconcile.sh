#!/usr/bin/env bash
# Operations a server leaves in progress when it stops are reconciled: a
# server killed while a phone is in key generation leaves the device
# in-progress; the next start (before it listens) marks it failed with
# "interrupted: the server stopped during the operation", the operation
# still scheduled, and the phone's next session enrolls it. A phone cut off
# at the drain deadline is recorded the same way before the server exits.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq
it_watchdog 240

REASON="interrupted: the server stopped during the operation"
srv_start main
DATA=${SRV_DATA[main]}
for d in SEP0000AECC0001 SEP0000AECC0002 SEP0000AECC0003; do
  cap main device add "$d" --operation install --auth null --key ec256 >/dev/null
done

# held NAME SERVER: a phone that stays in key generation; pid in HELD.
held() {
  timeout 150 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[$2]}" --key-cache "$IT_KEYS" --json \
    --name "$1" --auth null --keygen-delay 120 --timeout 120 >"$IT_TMP/$1.json" \
    2>>"$IT_TMP/phones.log" &
  HELD=$!
  HELD_DEV=$1 HELD_SRV=$2
  it_wait_for 60 '[[ $(cap "$HELD_SRV" device show "$HELD_DEV" --json | jq -r .status) == in-progress ]]' ||
    fail "$1 did not reach key generation"
}

# --- Killed mid-operation ------------------------------------------------------------
held SEP0000AECC0001 main
kill -KILL "${SRV_PID[main]}"
wait "${SRV_PID[main]}" 2>/dev/null
SRV_PID[main]=""
kill -TERM "$HELD"
wait "$HELD" 2>/dev/null
json_expect "$(cap main device show SEP0000AECC0001 --json)" status in-progress

SRV_DATA[again]=$DATA
srv_start again
grep -q "event=reconciled_interrupted devices=1 " "${SRV_LOG[again]}" ||
  fail "no event=reconciled_interrupted devices=1 at start"
# Reconciled before the server listened.
r=$(grep -n 'event=reconciled_interrupted' "${SRV_LOG[again]}" | cut -d: -f1 | tail -1)
l=$(grep -n 'event=ready' "${SRV_LOG[again]}" | cut -d: -f1 | tail -1)
((r < l)) || fail "reconciled after the server was ready"
DJ=$(device_json again SEP0000AECC0001)
json_expect "$DJ" status failed status_reason "$REASON" operation install attempts 1
json_expect "$(device_json again SEP0000AECC0002)" status pending
cap again device list --status failed >"$OUT"
has "$OUT" "$REASON"
# The phone comes back: the operation runs again.
phone again --name SEP0000AECC0001 --auth null
json_expect "$PHONE_JSON" result ok reason 1
json_expect "$(device_json again SEP0000AECC0001)" status succeeded attempts 2

# --- Cut off at the drain deadline (5 s in the tests) ---------------------------------
held SEP0000AECC0003 again
srv_stop again
kill -TERM "$HELD"
wait "$HELD" 2>/dev/null
grep -q "event=capf_drain_deadline" "${SRV_LOG[again]}" || fail "no drain deadline in the log"
json_expect "$(cap again device show SEP0000AECC0003 --json)" status failed status_reason "$REASON" \
  operation install
it_pass
