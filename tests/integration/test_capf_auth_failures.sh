#!/usr/bin/env bash
# Sessions that must not run an operation (capf-protocol.md "Sessions" and
# "Authentication"): unknown device (END_SESSION 9), wrong or missing
# authentication string (7, status failed "authentication failed"), an
# operation past its deadline (0, status expired), an LSC issued by another
# CAPF (7, "LSC invalid"), a MIC
# from a manufacturing CA not in CAPF-trust (7, "MIC invalid"), a protocol
# version above 3 (7). Each is checked from the phone's side, in the device
# record and in /metrics; afterwards the right credentials still work.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq md5sum "$IT_PYTHON"
it_watchdog 240

srv_start main
srv_start other
cap main cert export capf >"$IT_TMP/capf.pem"

# A failed session: END_SESSION with |reason| right after authentication.
expect_end() {
  json_expect "$PHONE_JSON" result end reason "$1" operation none error none
  # No key generation was asked for.
  json_expect "$PHONE_JSON" key null
}

expect_failed() {
  local dev=$1 why=$2
  json_expect "$(device_json main "$dev")" status failed status_reason "$why" attempts 1 \
    operation install md5hash null
}

# --- Unknown device -----------------------------------------------------------
phone main --name SEP0000DEAD0001 --auth null
expect_end 9
metric_expect main 'capstan_capf_sessions_total{operation="unknown",result="unknown_device"}' 1
if cap_try main device show SEP0000DEAD0001 --json >/dev/null 2>&1; then
  fail "an unknown device was created by its session"
fi

# --- Authentication string --------------------------------------------------
cap main device add SEP0000AB000001 --operation install --auth string --auth-string 4711 \
  --key ec256 >/dev/null
phone main --name SEP0000AB000001 --auth string --auth-string 1174
expect_end 7
expect_failed SEP0000AB000001 "authentication failed"
metric_expect main 'capstan_capf_auth_failures_total{mode="string"}' 1
# A prefix of the right string is wrong too.
cap main device set SEP0000AB000001 --operation install >/dev/null
phone main --name SEP0000AB000001 --auth string --auth-string 471
expect_end 7
expect_failed SEP0000AB000001 "authentication failed"
# A null string where a string is needed.
cap main device set SEP0000AB000001 --operation install >/dev/null
phone main --name SEP0000AB000001 --auth null
expect_end 7
expect_failed SEP0000AB000001 "authentication failed"
metric_expect main 'capstan_capf_auth_failures_total{mode="string"}' 3
metric_expect main 'capstan_capf_sessions_total{operation="install",result="auth_failed"}' 3
# The right string still works.
cap main device set SEP0000AB000001 --operation install >/dev/null
phone main --name SEP0000AB000001 --auth string --auth-string 4711 --save-cert "$IT_TMP/ab1.der" \
  --save-key "$IT_TMP/ab1.key.der"
json_expect "$PHONE_JSON" result ok reason 1 operation install
json_expect "$(device_json main SEP0000AB000001)" status succeeded status_reason null attempts 1 \
  md5hash "$(md5_of "$IT_TMP/ab1.der")"

# --- Deadline passed ------------------------------------------------------------
cap main device add SEP0000AB000002 --operation install --auth null --key ec256 \
  --completes-by 2020-01-01T00:00:00Z >/dev/null
phone main --name SEP0000AB000002 --auth null
expect_end 0
dj=$(device_json main SEP0000AB000002)
json_expect "$dj" status expired md5hash null
metric_expect main 'capstan_capf_sessions_total{operation="install",result="expired"}' 1
# A deadline in the future does not stop it.
cap main device set SEP0000AB000002 --operation install --completes-by 2099-01-01T00:00:00Z >/dev/null
phone main --name SEP0000AB000002 --auth null
json_expect "$PHONE_JSON" result ok reason 1 operation install

# --- An LSC from another CAPF -------------------------------------------------
cap other device add SEP0000AB000003 --operation install --auth null --key ec256 >/dev/null
# (A key cache of its own: this phone's key is not shared with main's phones.)
phone other --name SEP0000AB000003 --auth null --save-cert "$IT_TMP/foreign.der" \
  --save-key "$IT_TMP/foreign.key.der" --key-cache "$IT_TMP/keys-other"
json_expect "$PHONE_JSON" result ok reason 1 operation install
cap main device add SEP0000AB000003 --operation install --auth lsc --key ec256 >/dev/null
phone main --name SEP0000AB000003 --auth lsc --cert "$IT_TMP/foreign.der" \
  --key "$IT_TMP/foreign.key.der"
expect_end 7
expect_failed SEP0000AB000003 "LSC invalid"
metric_expect main 'capstan_capf_auth_failures_total{mode="lsc"}' 1

# --- A MIC from an untrusted manufacturing CA ---------------------------------
# No CLI command uploads a manufacturing CA into CAPF-trust yet, so a MIC can
# only be refused.
mkdir -p "$IT_TMP/mfg"
py make-ca --out "$IT_TMP/mfg" --cn "Test Manufacturing CA" || fail "make-ca"
py issue --ca "$IT_TMP/mfg" --cn SEP0000AB000005 --key ec256 --out-cert "$IT_TMP/mic.der" \
  --out-key "$IT_TMP/mic.key.der" || fail "issue MIC"
cap main device add SEP0000AB000005 --operation install --auth mic --key ec256 >/dev/null
phone main --name SEP0000AB000005 --auth mic --cert "$IT_TMP/mic.der" --key "$IT_TMP/mic.key.der"
expect_end 7
expect_failed SEP0000AB000005 "MIC invalid"
metric_expect main 'capstan_capf_auth_failures_total{mode="mic"}' 1

# --- Protocol version above 3 ---------------------------------------------------
cap main device add SEP0000AB000006 --operation install --auth null --key ec256 >/dev/null
phone main --name SEP0000AB000006 --auth null --proto-version 4
expect_end 7
json_expect "$(device_json main SEP0000AB000006)" status pending attempts 0

# --- The server's totals --------------------------------------------------------
metric_expect main 'capstan_capf_auth_failures_total{mode="string"}' 3
metric_expect main 'capstan_capf_auth_failures_total{mode="null"}' 0
metric_expect main 'capstan_capf_auth_failures_total{mode="lsc"}' 1
metric_expect main 'capstan_capf_auth_failures_total{mode="mic"}' 1
metric_expect main 'capstan_capf_sessions_total{operation="install",result="auth_failed"}' 5
metric_expect main 'capstan_capf_sessions_total{operation="install",result="ok"}' 2
metric_expect main 'capstan_capf_sessions_total{operation="unknown",result="protocol_error"}' 1
metric_expect main 'capstan_capf_sessions_active' 0
metric_expect other 'capstan_capf_sessions_total{operation="install",result="ok"}' 1
metric_expect other 'capstan_capf_auth_failures_total{mode="lsc"}' 0

srv_stop other
srv_stop main
it_pass
