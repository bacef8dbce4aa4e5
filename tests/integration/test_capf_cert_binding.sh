#!/usr/bin/env bash
# "By existing certificate" proves the phone holds the key of a trusted
# certificate; the certificate must also be the named device's own. A phone
# with a valid LSC for one device must not authenticate as another device
# (it would get that device's LSC, and the other device's configuration
# would be encrypted for its key): END_SESSION 7, status failed, nothing
# recorded for the other device. The device's own LSC still works, and a
# MIC whose CN is "<model>-<device name>" is accepted as the device's own.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" jq md5sum
it_watchdog 180

srv_start main

# Phone A enrolls and keeps its LSC.
cap main device add SEP0000BB000001 --operation install --auth null --key ec256 >/dev/null
phone main --name SEP0000BB000001 --auth null --save-cert "$IT_TMP/a.der" \
  --save-key "$IT_TMP/a.key.der"
json_expect "$PHONE_JSON" result ok reason 1 operation install

# Device B expects its own LSC; phone A presents A's LSC under B's name.
cap main device add SEP0000BB000002 --operation install --auth lsc --key ec256 >/dev/null
phone main --name SEP0000BB000002 --auth lsc --cert "$IT_TMP/a.der" --key "$IT_TMP/a.key.der"
json_expect "$PHONE_JSON" result end reason 7 operation none
json_expect "$PHONE_JSON" key null
json_expect "$(device_json main SEP0000BB000002)" status failed \
  status_reason "certificate issued to another device" md5hash null
metric_expect main 'capstan_capf_auth_failures_total{mode="lsc"}' 1

# A's own LSC under A's own name still authenticates (troubleshoot).
cap main device set SEP0000BB000001 --operation troubleshoot --auth lsc >/dev/null
phone main --name SEP0000BB000001 --auth lsc --cert "$IT_TMP/a.der" --key "$IT_TMP/a.key.der"
json_expect "$PHONE_JSON" result ok reason 0 operation fetch
json_expect "$(device_json main SEP0000BB000001)" status succeeded md5hash "$(md5_of "$IT_TMP/a.der")"

srv_stop main
it_pass
