#!/usr/bin/env bash
# Issuer mscs (external-ca.md, "Microsoft CA (AD CS web enrollment)"):
# phones' LSCs signed by a Microsoft CA's certsrv pages, end to end with the
# real server, the phone simulator (it makes the PKCS#10 request) and an
# independent imitation of certsrv (tests/tools/test_certsrv_ca.py: HTTPS,
# Basic authentication, one accepted template, an issuing CA under a root).
# `ca test --mode mscs` keeps the chain; an enrollment gives an LSC that
# openssl verifies against the CA's root, with the key usage and CN a phone
# needs and the device's md5hash; "Certificate Pending" parks the request
# with the CA's request id, the server's poller fetches it once approved and
# the phone's next session gets it as a hand-over; a denied disposition and a
# template the CA refuses leave the device failed with the CA's message,
# counted as refused; a wrong password makes `ca test` say 401.
#
# The CA's "pending" carries no retry time: the server polls a pending MSCS
# request CA_MSCS_POLL_SECONDS (60 s, core/ca/internal.h) after the answer,
# so the hand-over part of this test waits about a minute.
. "$(dirname "$0")/lib.sh"
it_watchdog 420
it_require jq curl openssl

testca_start ms certsrv --intermediate --template CapstanPhone --username 'CORP\capf' \
  --password 'ms pass'
CA=${CA_DIR[ms]}
openssl x509 -in "$CA/chain.pem" -out "$CA/issuing.pem" || fail "split chain.pem"

srv_start main
cap main trust add "$CA/root.pem" >/dev/null
printf 'ms pass\n' >"$IT_TMP/password"
printf 'not it\n' >"$IT_TMP/wrong"

# --- The CA's settings and `ca test` ----------------------------------------
cap main ca set --url "${CA_URL[ms]}" --template CapstanPhone --username 'CORP\capf' \
  --password-file "$IT_TMP/wrong" --ca-file "$CA/root.pem" --timeout-seconds 5 \
  --phone-wait-seconds 2 >/dev/null
cli_expect "${SRV_DATA[main]}" 1 ca test --mode mscs
cat "$OUT" "$ERR" >"$IT_TMP/test.out"
has "$IT_TMP/test.out" "401"
cap main ca set --password-file "$IT_TMP/password" >/dev/null
cli_expect "${SRV_DATA[main]}" 0 ca test --mode mscs
has "$OUT" "chain"
# The chain is kept: the issuing CA, then the root.
cap main ca show --json >"$IT_TMP/show.json"
jq -e '.chain | length == 2' "$IT_TMP/show.json" >/dev/null ||
  fail "ca test did not keep the chain: $(cat "$IT_TMP/show.json")"
cap main ca show >"$IT_TMP/show"
has "$IT_TMP/show" "CapstanPhone"
has "$IT_TMP/show" "issuing"
lacks "$IT_TMP/show" "ms pass"
cap main ca show --root-pem >"$IT_TMP/ca-root.pem"
cmp -s <(openssl x509 -in "$IT_TMP/ca-root.pem" -outform DER) \
  <(openssl x509 -in "$CA/root.pem" -outform DER) || fail "ca show --root-pem is not the CA's root"

cap main config set issuer mscs >/dev/null
it_wait_for 20 grep -q "'event=ca_client_ready issuer=mscs'" "${SRV_LOG[main]}" ||
  fail "the server did not make its MSCS client"

ca_count() {
  curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/metrics" |
    awk -v s="capstan_ca_requests_total{mode=\"mscs\",result=\"$1\"}" '$1 == s { v = $2 } END { print v + 0 }'
}
csr_status_is() {
  cap main csr list --json |
    jq -e --arg d "$1" --arg s "$2" '[.[] | select(.device == $d and .status == $s)] | length == 1' >/dev/null
}
ca_log() { testca_control ms '{}' | jq -c '.log'; }

# --- An enrollment ----------------------------------------------------------
D=SEP0A1000000001
cap main device add "$D" --operation install --auth null >/dev/null
phone main --name "$D" --save-cert "$IT_TMP/lsc.der"
json_expect "$PHONE_JSON" result ok reason 1 csr_sent true lsc_stored true
openssl x509 -inform DER -in "$IT_TMP/lsc.der" -out "$IT_TMP/lsc.pem" || fail "LSC does not parse"
openssl verify -CAfile "$CA/root.pem" -untrusted "$CA/issuing.pem" "$IT_TMP/lsc.pem" >/dev/null ||
  fail "the LSC does not chain to the Microsoft CA's root"
openssl x509 -in "$IT_TMP/lsc.pem" -noout -issuer | grep -q "issuing" || fail "LSC issuer"
openssl x509 -in "$IT_TMP/lsc.pem" -noout -subject | grep -q "CN *= *$D" || fail "LSC subject"
openssl x509 -in "$IT_TMP/lsc.pem" -noout -ext keyUsage | grep -q "Digital Signature, Key Encipherment" ||
  fail "LSC key usage"
dev=$(device_json main "$D")
assert_eq "$(md5_of "$IT_TMP/lsc.der")" "$(jq -r '.md5hash' <<<"$dev")" "the device's md5hash is the LSC's"
jq -e '.status == "succeeded" and .certs_issued == 1' <<<"$dev" >/dev/null || fail "device: $dev"
assert_eq 1 "$(ca_count issued)" "issued counted"
# The CA saw one submission, with the template and the Basic credentials,
# then the retrieval of the certificate.
ca_log >"$IT_TMP/log.json"
jq -e --arg d "$D" '[.[] | select(.result == "issued" and .template == "CapstanPhone"
    and (.subject | contains($d)))] | length == 1' "$IT_TMP/log.json" >/dev/null ||
  fail "the CA did not log one issued submission: $(cat "$IT_TMP/log.json")"
jq -e '[.[] | select(.result == "certificate")] | length == 1' "$IT_TMP/log.json" >/dev/null ||
  fail "the CA did not log the retrieval: $(cat "$IT_TMP/log.json")"

# --- Denied disposition -----------------------------------------------------
testca_control ms '{"mode": "refuse", "message": "Denied by Policy Module  0x80094012, no phones today."}' >/dev/null
R=SEP0A1000000002
before=$(ca_count refused)
cap main device add "$R" --operation install --auth null >/dev/null
phone main --name "$R" --save-cert "$IT_TMP/r.der"
[[ $PHONE_RC == 1 ]] || fail "denied: the phone should hear RETRY_LATER: $PHONE_JSON"
json_expect "$PHONE_JSON" error retry_later csr_sent true lsc_stored false
[[ ! -e "$IT_TMP/r.der" ]] || fail "denied: the phone holds a certificate"
# (the server records the CA's text on one line, runs of spaces as one)
jq -e '.status == "failed" and .status_reason ==
    "CA refused: Denied by Policy Module 0x80094012, no phones today."' \
  <<<"$(device_json main "$R")" >/dev/null || fail "denied: reason: $(device_json main "$R")"
assert_eq $((before + 1)) "$(ca_count refused)" "denied counted as refused"

# --- A template the CA does not take ----------------------------------------
testca_control ms '{"mode": "issue"}' >/dev/null
# set_template NAME: the running server makes a new client for it (within a
# second or two).
ready_count() { grep -c 'event=ca_client_ready issuer=mscs' "${SRV_LOG[main]}"; }
set_template() {
  local n
  n=$(ready_count)
  cap main ca set --template "$1" >/dev/null
  it_wait_for 20 "(( \$(ready_count) > $n ))" || fail "the server did not take template $1"
}
set_template WebServer
T=SEP0A1000000003
before=$(ca_count refused)
cap main device add "$T" --operation install --auth null >/dev/null
phone main --name "$T"
[[ $PHONE_RC == 1 ]] || fail "template: the phone should hear RETRY_LATER: $PHONE_JSON"
json_expect "$PHONE_JSON" error retry_later lsc_stored false
jq -e '.status == "failed" and .status_reason == "CA refused: Denied by Policy Module 0x80094800, The requested certificate template is not supported by this CA."' \
  <<<"$(device_json main "$T")" >/dev/null || fail "template: reason: $(device_json main "$T")"
assert_eq $((before + 1)) "$(ca_count refused)" "template refusal counted as refused"
testca_control ms '{}' | jq -e '[.log[] | select(.result == "denied-template" and .template == "WebServer")]
    | length == 1' >/dev/null || fail "the CA did not see the WebServer template"
set_template CapstanPhone

# --- Pending: parked with the CA's request id, polled, handed over ----------
# The CA answers "Certificate Pending" until approved. The phone waits 2 s
# at most in its session and the CA's pending gives the next poll in 60 s:
# the request is parked at once and the phone told to come back.
testca_control ms '{"mode": "pending", "pending_polls": -1}' >/dev/null
Q=SEP0A1000000004
cap main device add "$Q" --operation install --auth null >/dev/null
# This device's phone has its own key (the shared key cache holds one).
mkdir -p "$IT_TMP/keys-q"
phone main --name "$Q" --key-cache "$IT_TMP/keys-q" --key-file "$IT_TMP/q.key"
[[ $PHONE_RC == 1 ]] || fail "pending: RETRY_LATER expected: $PHONE_JSON"
json_expect "$PHONE_JSON" error retry_later csr_sent true lsc_stored false
reqid=$(testca_control ms '{}' | jq -r --arg d "$Q" \
  '[.log[] | select(.result == "pending" and (.subject | contains($d)))][0].reqid')
[[ $reqid =~ ^[0-9]+$ ]] || fail "the CA logged no pending submission for $Q: $(ca_log)"
csr_status_is "$Q" pending || fail "no pending request for $Q: $(cap main csr list)"
cap main csr list --json >"$IT_TMP/csr.json"
# The request id is in its reason (csr list has no column of its own for it).
jq -e --arg d "$Q" --arg r "CA holds request $reqid for approval" \
  '[.[] | select(.device == $d and .reason == $r)] | length == 1' "$IT_TMP/csr.json" >/dev/null ||
  fail "csr list does not show the CA's request id $reqid: $(cat "$IT_TMP/csr.json")"
jq -e --arg d "$Q" '.[] | select(.device == $d) | .issuer == "mscs"' "$IT_TMP/csr.json" >/dev/null ||
  fail "the request is not mscs's: $(cat "$IT_TMP/csr.json")"
cap main csr list >"$IT_TMP/csr.txt"
has "$IT_TMP/csr.txt" "CA holds request $reqid for approval"
jq -e '.status == "pending"' <<<"$(device_json main "$Q")" >/dev/null ||
  fail "the device should be pending: $(device_json main "$Q")"
[[ $(ca_count pending) -ge 1 ]] || fail "pending not counted"
testca_control ms "{\"approve\": $reqid}" >/dev/null
# The poller runs every 5 s; the first poll of this request is due 60 s
# after the CA's answer.
it_wait_for 120 csr_status_is "$Q" issued ||
  fail "the server did not fetch the approved certificate: $(cap main csr list)"
testca_control ms '{}' | jq -e --argjson id "$reqid" \
  '[.log[] | select(.result == "certificate" and .reqid == $id)] | length == 1' >/dev/null ||
  fail "the CA did not hand out request $reqid's certificate"
phone main --name "$Q" --key-cache "$IT_TMP/keys-q" --key-file "$IT_TMP/q.key" --save-cert "$IT_TMP/q.der"
json_expect "$PHONE_JSON" result ok reason 1 handover true csr_sent false lsc_stored true
openssl x509 -inform DER -in "$IT_TMP/q.der" -out "$IT_TMP/q.pem" || fail "handed-over LSC"
openssl verify -CAfile "$CA/root.pem" -untrusted "$CA/issuing.pem" "$IT_TMP/q.pem" >/dev/null ||
  fail "the handed-over LSC does not chain"
openssl x509 -in "$IT_TMP/q.pem" -noout -subject | grep -q "CN *= *$Q" || fail "hand-over subject"
assert_eq "$(md5_of "$IT_TMP/q.der")" "$(device_json main "$Q" | jq -r .md5hash)" "hand-over md5hash"
csr_status_is "$Q" installed || fail "the request should be installed: $(cap main csr list)"
jq -e '.status == "succeeded"' <<<"$(device_json main "$Q")" >/dev/null ||
  fail "the device should have succeeded: $(device_json main "$Q")"

lacks "${SRV_LOG[main]}" "ms pass"
srv_stop main
it_pass
