#!/usr/bin/env bash
# Key generation throttle (capf-protocol.md "Throttling"): with
# max-concurrent-keygen 1, a second installing phone is held after
# authentication (capstan_capf_keygen_waiting 1); it is admitted when the
# slot frees, or gets RETRY_LATER {RETRY_DELAY=retry-delay-seconds} when the
# hold (throttle-hold-seconds) runs out. /metrics counts both.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq
it_watchdog 200

# Settings read at start: nothing here depends on when a live change lands.
srv_prepare main
cap main config set max-concurrent-keygen 1 >/dev/null
cap main config set throttle-hold-seconds 30 >/dev/null
cap main config set retry-delay-seconds 42 >/dev/null
srv_start main
PORT=${SRV_CAPF[main]}

for i in 1 2 3 4; do
  cap main device add "SEP0000F00D000$i" --operation install --auth null --key ec256 >/dev/null
done

# bg_phone DEVICE KEYGEN_DELAY: a phone in the background; pid in BG_PID,
# its JSON line in $IT_TMP/DEVICE.json.
bg_phone() {
  timeout 150 "$PHONE_BIN" --connect "127.0.0.1:$PORT" --name "$1" --auth null \
    --keygen-delay "$2" --timeout 120 --key-cache "$IT_KEYS" --json \
    >"$IT_TMP/$1.json" 2>"$IT_TMP/$1.err" &
  BG_PID=$!
}

metric_is() { [[ "$(metric main "$1")" == "$2" ]]; }

# --- A held phone is admitted when the slot frees -------------------------------
bg_phone SEP0000F00D0001 120
A=$BG_PID
it_wait_for 60 metric_is capstan_capf_keygen_active 1 || fail "phone 1 never reached key generation"
bg_phone SEP0000F00D0002 0
C=$BG_PID
it_wait_for 60 metric_is capstan_capf_keygen_waiting 1 || fail "phone 2 was not held (keygen_waiting)"
metric_expect main capstan_capf_keygen_active 1
# Phone 1 gives up: its slot goes to phone 2, which enrolls.
kill -TERM "$A"
wait "$A" 2>/dev/null
rc=0
wait "$C" || rc=$?
PHONE_JSON=$(cat "$IT_TMP/SEP0000F00D0002.json")
[[ $rc -eq 0 ]] || fail "held phone 2 exited $rc: $PHONE_JSON $(cat "$IT_TMP/SEP0000F00D0002.err")"
json_expect "$PHONE_JSON" result ok reason 1 operation install retry_delay -1
metric_expect main 'capstan_capf_throttled_total{result="admitted"}' 1
metric_expect main 'capstan_capf_throttled_total{result="retry_later"}' 0
metric_expect main capstan_capf_keygen_waiting 0
it_wait_for 10 metric_is capstan_capf_keygen_active 0 || fail "keygen slot not released"

# --- A held phone whose hold runs out gets RETRY_LATER -----------------------------
bg_phone SEP0000F00D0003 120
D=$BG_PID
it_wait_for 60 metric_is capstan_capf_keygen_active 1 || fail "phone 3 never reached key generation"
cap main config set throttle-hold-seconds 1 >/dev/null
# The server applies the whole settings record when it sees a new store
# transaction; a keep-alive change after this one is logged when applied, so
# once that line is there the 1 s hold is in force too.
cap main keepalive set 6 >/dev/null
it_wait_for 20 'grep -q "event=capf_keepalive_changed minutes=6" "${SRV_LOG[main]}"' ||
  fail "settings not applied (no capf_keepalive_changed minutes=6)"
phone main --name SEP0000F00D0004 --auth null --timeout 90
[[ $PHONE_RC -eq 1 ]] || fail "a phone sent RETRY_LATER must exit 1, got $PHONE_RC"
json_expect "$PHONE_JSON" result error error retry_later retry_delay 42 operation none
metric_expect main 'capstan_capf_throttled_total{result="retry_later"}' 1
metric_expect main 'capstan_capf_throttled_total{result="admitted"}' 1
metric_expect main capstan_capf_keygen_waiting 0
metric_expect main capstan_capf_keygen_active 1
metric_expect main 'capstan_capf_sessions_total{operation="install",result="retry_later"}' 1
json_expect "$(device_json main SEP0000F00D0004)" md5hash null certs_issued 0
# The device says it was throttled and when the phone is due back (not
# "in-progress" with no session behind it): one spelling in the CLI, JSON
# and the metric label.
DJ=$(device_json main SEP0000F00D0004)
json_expect "$DJ" status throttled attempts 1
BACK=$(jq -r .retry_after <<<"$DJ")
want=$(date -u -d "$BACK" +%H:%M:%S) || fail "retry_after is not a time: $BACK"
json_expect "$DJ" status_reason "retry after $want UTC"
delta=$(($(date -u -d "$BACK" +%s) - $(date -u +%s)))
((delta > 30 && delta <= 42)) || fail "retry_after is $delta s from now, expected about 42"
cap main device list --status throttled >"$OUT"
has "$OUT" "SEP0000F00D0004"
has "$OUT" "retry after $want UTC"
it_wait_for 20 '[[ $(metric main "capstan_devices{status=\"throttled\"}") == 1 ]]' ||
  fail "capstan_devices{status=\"throttled\"} is not 1"
metric main 'capstan_devices{status="in-progress"}' >/dev/null
curl -sf "http://127.0.0.1:${SRV_ADMIN[main]}/metrics" | grep -q 'status="in_progress"' &&
  fail "the metric label still spells in_progress"

kill -TERM "$D"
wait "$D" 2>/dev/null
it_wait_for 10 metric_is capstan_capf_sessions_active 0 || fail "sessions left after the phones"
metric_expect main capstan_capf_keygen_active 0
metric_expect main 'capstan_capf_sessions_total{operation="install",result="ok"}' 1
metric_expect main 'capstan_capf_sessions_total{operation="install",result="disconnected"}' 2

srv_stop main
it_pass
