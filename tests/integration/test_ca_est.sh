#!/usr/bin/env bash
# Issuer est (external-ca.md, R7): phones' LSCs signed by an online CA over
# EST, end to end with the real server, the project's phone simulator (it
# makes the PKCS#10 request) and an independent EST CA
# (tests/tools/test_est_ca.py: Python + python3-cryptography, HTTPS with
# Basic authentication, an issuing CA under a root). Checked with openssl:
# the LSC chains to the CA's root. Every way a CA can go wrong leaves the
# device failed or pending with its reason, counted in
# capstan_ca_requests_total, and no phone gets a bad certificate.
. "$(dirname "$0")/lib.sh"
it_watchdog 420
it_require jq curl openssl

testca_start est est --intermediate --username capf --password 's3cret pass'
CA=${CA_DIR[est]}
# The issuing CA alone (chain.pem holds it first, then the root).
openssl x509 -in "$CA/chain.pem" -out "$CA/issuing.pem" || fail "split chain.pem"

srv_start main --files
cap main trust add "$CA/root.pem" >/dev/null
printf 's3cret pass\n' >"$IT_TMP/password"

# --- The CA's settings and `ca test` ----------------------------------------
cli_expect "${SRV_DATA[main]}" 2 ca set --url "http://127.0.0.1:1" --password-file "$IT_TMP/password"
cap main ca set --url "${CA_URL[est]}" --username capf --password-file "$IT_TMP/password" \
  --ca-file "$CA/root.pem" --timeout-seconds 3 --phone-wait-seconds 8 >/dev/null
# A wrong password is said plainly.
printf 'wrong\n' >"$IT_TMP/wrong"
cap main ca set --password-file "$IT_TMP/wrong" >/dev/null
cli_expect "${SRV_DATA[main]}" 1 ca test --mode est
cat "$OUT" "$ERR" >"$IT_TMP/test.out"
has "$IT_TMP/test.out" "401"
cap main ca set --password-file "$IT_TMP/password" >/dev/null
cli_expect "${SRV_DATA[main]}" 0 ca test --mode est
has "$OUT" "chain"
cli_expect "${SRV_DATA[main]}" 2 ca set --max-requests 0
has "$ERR" "--max-requests must be a whole number from 1 to 4096"
cap main ca set --max-requests 8 >/dev/null
cap main ca show --json | jq -e '.max_requests == 8' >/dev/null || fail "ca show: max_requests"
cap main ca show >"$IT_TMP/show"
has "$IT_TMP/show" "${CA_URL[est]}"
lacks "$IT_TMP/show" "s3cret"

# A pilot: the cluster stays on capf, one device has the CA sign its LSC.
# (The server makes its CA clients once it sees the CA configured.)
it_wait_for 20 grep -q "'event=ca_client_ready issuer=est'" "${SRV_LOG[main]}" ||
  fail "the server did not make its EST client"
cap main device add SEP0F0000000001 --operation install --auth null --issuer est >/dev/null
phone main --name SEP0F0000000001 --save-cert "$IT_TMP/pilot.der"
json_expect "$PHONE_JSON" result ok csr_sent true
openssl verify -CAfile "$CA/root.pem" -untrusted "$CA/issuing.pem" \
  <(openssl x509 -inform DER -in "$IT_TMP/pilot.der") >/dev/null || fail "pilot LSC is not the CA's"
cap main device add SEP0F0000000002 --operation install --auth null >/dev/null
phone main --name SEP0F0000000002 --save-cert "$IT_TMP/own.der"
json_expect "$PHONE_JSON" result ok csr_sent false # the cluster's issuer: the CAPF signs
testca_control est '{"reset_log": true}' >/dev/null

cap main config set issuer est >/dev/null
# The server takes the issuer within a second or two.
it_wait_for 20 grep -q "'event=capf_issuer issuer=est'" "${SRV_LOG[main]}" ||
  fail "the server did not take the issuer"

# capstan_ca_requests_total{mode="est",result=$1}; 0 while the series is absent.
# csr_status_is DEVICE STATUS: DEVICE has one request in STATUS.
csr_status_is() {
  cap main csr list --json |
    jq -e --arg d "$1" --arg s "$2" '[.[] | select(.device == $d and .status == $s)] | length == 1' >/dev/null
}

issued() {
  curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/metrics" |
    awk -v s="capstan_ca_requests_total{mode=\"est\",result=\"$1\"}" '$1 == s { v = $2 } END { print v + 0 }'
}

# --- An enrollment: the LSC is the CA's, recorded before the phone had it ----
D=SEP0A0000000001
cap main device add "$D" --operation install --auth null >/dev/null
phone main --name "$D" --save-cert "$IT_TMP/lsc.der" --save-key "$IT_TMP/lsc.key"
json_expect "$PHONE_JSON" result ok csr_sent true lsc_stored true
openssl x509 -inform DER -in "$IT_TMP/lsc.der" -out "$IT_TMP/lsc.pem" || fail "LSC does not parse"
openssl verify -CAfile "$CA/root.pem" -untrusted "$CA/issuing.pem" "$IT_TMP/lsc.pem" >/dev/null ||
  fail "the LSC does not chain to the EST CA's root"
openssl x509 -in "$IT_TMP/lsc.pem" -noout -issuer | grep -q "issuing" ||
  fail "the LSC is not the issuing CA's"
openssl x509 -in "$IT_TMP/lsc.pem" -noout -subject | grep -q "CN *= *$D" || fail "LSC subject"
openssl x509 -in "$IT_TMP/lsc.pem" -noout -ext keyUsage | grep -q "Digital Signature, Key Encipherment" ||
  fail "LSC key usage"
dev=$(device_json main "$D")
assert_eq "$(md5_of "$IT_TMP/lsc.der")" "$(jq -r '.md5hash' <<<"$dev")" \
  "the device's md5hash is the LSC's"
# The audit trail: the certificate was on record before the phone stored it.
cap main audit list --device "$D" --json >"$IT_TMP/audit.json"
order=$(jq -r '[.[] | .event] | join(" ")' "$IT_TMP/audit.json")
[[ "$order" == *"cert_issued"*"cert_installed"*"operation_succeeded"* ]] ||
  fail "audit order: $order"
assert_eq 2 "$(issued issued)" "issued counted (the pilot's and this one)"
# The CA saw exactly one enrollment, with our Basic credentials.
testca_control est '{}' | jq -e '[.log[] | select(.result == "issued")] | length == 1' >/dev/null ||
  fail "the CA did not log one issued enrollment"

# The phone authenticates with that LSC later (the issuing CA is not in
# CAPF-trust, only the root: the CA's chain completes the path).
cap main device set "$D" --operation troubleshoot --auth lsc >/dev/null
phone main --name "$D" --auth lsc --cert "$IT_TMP/lsc.der" --key "$IT_TMP/lsc.key"
json_expect "$PHONE_JSON" result ok reason 0 operation fetch
jq -e '.status == "succeeded"' <<<"$(device_json main "$D")" >/dev/null ||
  fail "authentication by the CA's LSC: $(device_json main "$D")"
# The status page says who signs and how the CA is doing.
status_issuer() {
  curl -sf --max-time 5 "http://127.0.0.1:${SRV_ADMIN[main]}/status.json" |
    jq -e '.issuer.mode == "est" and (.issuer.label | startswith("EST CA https://127.0.0.1:")) and .issuer.ca_health.up == true' >/dev/null
}
it_wait_for 30 status_issuer || fail "status.json issuer: $(curl -s "http://127.0.0.1:${SRV_ADMIN[main]}/status.json" | jq -c .issuer)"

# --- Everything a CA can do wrong ------------------------------------------
# mode | what the device's reason says | the metric's result label
cases=(
  "refuse|CA refused: 403|refused"
  "wrong-key|another key|bad_cert"
  "wrong-subject|names another device|bad_cert"
  "no-keyusage|no keyUsage|bad_cert"
  "sign-only|lacks keyEncipherment|bad_cert"
  "wrong-ca|does not chain to CAPF-trust|bad_cert"
  "expired|not valid now|bad_cert"
  "hangup|CA unavailable|unavailable"
)
n=1
for c in "${cases[@]}"; do
  IFS='|' read -r mode reason label <<<"$c"
  testca_control est "{\"mode\": \"$mode\"}" >/dev/null
  d=$(printf 'SEP0B00000000%02d' "$n")
  n=$((n + 1))
  before=$(issued "$label")
  cap main device add "$d" --operation install --auth null >/dev/null
  phone main --name "$d" --save-cert "$IT_TMP/bad.der"
  [[ $PHONE_RC == 1 ]] || fail "$mode: the phone's session should end in RETRY_LATER: $PHONE_JSON"
  json_expect "$PHONE_JSON" error retry_later lsc_stored false
  [[ ! -e "$IT_TMP/bad.der" ]] || fail "$mode: the phone holds a certificate"
  dev=$(device_json main "$d")
  jq -e --arg r "$reason" '.status == "failed" and (.status_reason | contains($r))' <<<"$dev" >/dev/null ||
    fail "$mode: device should be failed with '$reason': $dev"
  assert_eq $((before + 1)) "$(issued "$label")" "$mode counted as $label"
  # Nothing was recorded as issued for it.
  jq -e '.certs_issued == 0' <<<"$dev" >/dev/null || fail "$mode: a certificate is on record: $dev"
done

# --- A CA that stalls: the phone's request times out; nothing else waits ----
testca_control est '{"mode": "stall", "stall_seconds": 6}' >/dev/null
S=SEP0C0000000001
cap main device add "$S" --operation install --auth null >/dev/null
cap main device add SEP0C0000000002 --operation none --auth null >/dev/null
( phone main --name "$S"; echo "$PHONE_RC $PHONE_JSON" >"$IT_TMP/stalled" ) &
stalled=$!
it_wait_for 20 grep -q "'state=asking_ca\|event=ca_'" "${SRV_LOG[main]}" || true
it_wait_for 20 "[[ \$(device_json main $S | jq -r .status) == in-progress ]]" ||
  fail "the stalled phone's operation did not start"
sleep 0.5
# Meanwhile: another phone's session and the phone files are answered.
phone main --name SEP0C0000000002
json_expect "$PHONE_JSON" result end reason 0
curl -sf --max-time 5 -o "$IT_TMP/itl" "http://127.0.0.1:${SRV_HTTP[main]}/ITLSEP0C0000000002.tlv" ||
  fail "file serving waited for the CA"
curl -sf --max-time 5 "http://127.0.0.1:${SRV_ADMIN[main]}/healthz" >/dev/null || fail "healthz"
wait "$stalled"
read -r rc json <"$IT_TMP/stalled"
[[ $rc == 1 ]] || fail "stalled CA: the phone should hear RETRY_LATER: $json"
jq -e '.status == "failed" and (.status_reason | startswith("CA timed out"))' \
  <<<"$(device_json main "$S")" >/dev/null || fail "stalled CA: reason: $(device_json main "$S")"
[[ $(issued timeout) -ge 1 ]] || fail "the timeout is not counted"

# --- Pending, answered within the phone's wait: same session ---------------
testca_control est '{"mode": "pending", "pending_polls": 2, "retry_after": 1}' >/dev/null
P=SEP0D0000000001
cap main device add "$P" --operation install --auth null >/dev/null
phone main --name "$P" --save-cert "$IT_TMP/p.der"
json_expect "$PHONE_JSON" result ok
[[ $(issued pending) -ge 2 ]] || fail "pending answers not counted"
openssl verify -CAfile "$CA/root.pem" -untrusted "$CA/issuing.pem" \
  <(openssl x509 -inform DER -in "$IT_TMP/p.der") >/dev/null || fail "pending LSC does not chain"

# --- Pending beyond the wait: kept, polled by the server, handed over -------
testca_control est '{"mode": "pending", "pending_polls": -1, "retry_after": 9}' >/dev/null
Q=SEP0D0000000002
cap main device add "$Q" --operation install --auth null >/dev/null
phone main --name "$Q" --key-file "$IT_TMP/q.key"
[[ $PHONE_RC == 1 ]] || fail "pending beyond the wait: RETRY_LATER expected: $PHONE_JSON"
json_expect "$PHONE_JSON" error retry_later csr_sent true
csr_status_is "$Q" pending || fail "no pending request for $Q: $(cap main csr list)"
jq -e '.status == "pending"' <<<"$(device_json main "$Q")" >/dev/null ||
  fail "device should be pending: $(device_json main "$Q")"
# The phone comes back before the CA decided: told to come back again,
# without a new key (which would make the request stale).
phone main --name "$Q" --key-file "$IT_TMP/q.key"
json_expect "$PHONE_JSON" error retry_later csr_sent false
testca_control est '{"approve": "all"}' >/dev/null
it_wait_for 40 csr_status_is "$Q" issued || fail "the server did not fetch the approved certificate"
phone main --name "$Q" --key-file "$IT_TMP/q.key" --save-cert "$IT_TMP/q.der"
json_expect "$PHONE_JSON" result ok handover true lsc_stored true
openssl verify -CAfile "$CA/root.pem" -untrusted "$CA/issuing.pem" \
  <(openssl x509 -inform DER -in "$IT_TMP/q.der") >/dev/null || fail "handed-over LSC does not chain"
csr_status_is "$Q" installed || fail "the request should be installed"

# --- EC keys are not offered with an online CA ------------------------------
testca_control est '{"mode": "issue"}' >/dev/null
cap main device add SEP0E0000000001 --operation install --auth null --key ec256 >/dev/null
has "$IT_TMP/cli.err" "EC keys are not supported with an online CA" # the warning
phone main --name SEP0E0000000001
json_expect "$PHONE_JSON" result end reason 7
jq -e '.status_reason == "EC keys are not supported with an online CA"' \
  <<<"$(device_json main SEP0E0000000001)" >/dev/null || fail "EC reason"

# The CA's health is on record for the operator.
ca_health_known() { cap main ca show --json | jq -e '.health.last_success_at != null' >/dev/null; }
it_wait_for 30 ca_health_known || fail "the CA's health is not on record: $(cap main ca show)"
lacks "${SRV_LOG[main]}" "s3cret"
srv_stop main
it_pass
