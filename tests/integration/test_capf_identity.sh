#!/usr/bin/env bash
# A certificate authenticates only the device it names: a phone presenting
# another device's (trusted) LSC is refused. And a phone that goes away in
# the middle of its operation leaves the device failed with the step it
# stopped at, not "in progress" forever.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq
it_watchdog 240

srv_start main
A=SEP0000AAAA0001
B=SEP0000BBBB0002
C=SEP0000CCCC0003
cap main device add $A --operation install --auth null --key ec256 >/dev/null
cap main device add $B --operation install --auth lsc --key ec256 >/dev/null
cap main device add $C --operation install --auth null --key ec256 >/dev/null

phone main --name $A --auth null --save-cert "$IT_TMP/a.der" --save-key "$IT_TMP/a.key"
json_expect "$PHONE_JSON" result ok reason 1

# B presents A's LSC: it chains to this CAPF, but it is not B's.
phone main --name $B --auth lsc --cert "$IT_TMP/a.der" --key "$IT_TMP/a.key"
json_expect "$PHONE_JSON" reason 7
dev=$(device_json main $B)
json_expect "$dev" status failed status_reason "certificate issued to another device"
metric_expect main 'capstan_capf_auth_failures_total{mode="lsc"}' 1

# C disconnects while it "generates its key": the device is failed, with why.
timeout 3 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --name $C --auth null \
  --keygen-delay 60 --key-cache "$IT_KEYS" --json >/dev/null 2>&1
failed_with_reason() {
  local d
  d=$(device_json main $C)
  [[ "$(json_get "$d" status)" == failed &&
    "$(json_get "$d" status_reason)" == "phone disconnected during key generation" ]]
}
it_wait_for 10 failed_with_reason || fail "device $C: $(device_json main $C)"

# Both can still enroll properly afterwards.
phone main --name $C --auth null
json_expect "$PHONE_JSON" result ok reason 1
srv_stop main
it_pass
