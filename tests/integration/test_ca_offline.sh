#!/usr/bin/env bash
# Issuer offline end to end (external-ca.md, "Offline CA (R10)";
# capf-protocol.md, "Certificate requests from the phone (extension)"): the
# real server, the phone simulator and openssl as the operator's CA (a root
# and an issuing CA; the root in CAPF-trust). A phone's first session leaves
# its request pending (RETRY_LATER); the operator lists and exports the
# requests (a directory and a bundle, each request verified by openssl),
# signs them with openssl and imports a PEM certificate, a PEM bundle with
# the chain and a PKCS#7; each phone's next session gets its certificate
# straight after AUTH (a hand-over), which openssl verifies, the audit trail
# has it recorded before it was installed and the request is installed. A
# phone that comes back while its request is pending is told to come back
# without a new key. A refused hand-over: the server starts over in the same
# session, the old request and its certificate become stale, importing the
# stale request's certificate again changes nothing, `csr delete --stale`.
. "$(dirname "$0")/lib.sh"
it_watchdog 300
it_require jq curl openssl

srv_start main
cap main config set issuer offline >/dev/null
it_wait_for 20 grep -q "'event=capf_issuer issuer=offline'" "${SRV_LOG[main]}" ||
  fail "the server did not take issuer offline"

# --- The operator's CA: openssl ---------------------------------------------
P="$IT_TMP/pki"
mkdir -p "$P"
osl() {
  timeout 60 openssl "$@" 2>>"$IT_TMP/openssl.log" || {
    tail -n 20 "$IT_TMP/openssl.log" >&2
    fail "openssl $* failed"
  }
}
cat >"$P/ext.cnf" <<'EOF'
[root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[inter]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[lsc]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
EOF
osl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$P/root.key" \
  -subj "/O=capstan offline test/CN=Offline Root" -days 30 -extensions root -config "$P/ext.cnf" \
  -out "$P/root.pem"
osl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$P/inter.key" \
  -subj "/O=capstan offline test/CN=Offline Issuing CA" -out "$P/inter.csr"
osl x509 -req -in "$P/inter.csr" -CA "$P/root.pem" -CAkey "$P/root.key" -set_serial 2 -days 30 \
  -extfile "$P/ext.cnf" -extensions inter -out "$P/inter.pem"
cap main trust add "$P/root.pem" >/dev/null
serial=100
sign() { # REQUEST.pem CERT.pem
  serial=$((serial + 1))
  osl x509 -req -in "$1" -CA "$P/inter.pem" -CAkey "$P/inter.key" -set_serial "$serial" -days 20 \
    -extfile "$P/ext.cnf" -extensions lsc -out "$2"
}

# offline_phone DEVICE [ARGS...]: the device's phone, with its own key (the
# shared key cache holds one key per size) kept in $IT_TMP/DEVICE.key.
offline_phone() {
  local d=$1
  shift
  mkdir -p "$IT_TMP/keys-$d"
  phone main --name "$d" --key-cache "$IT_TMP/keys-$d" --key-file "$IT_TMP/$d.key" "$@"
}
csr_status_is() {
  cap main csr list --json |
    jq -e --arg d "$1" --arg s "$2" '[.[] | select(.device == $d and .status == $s)] | length == 1' >/dev/null
}
REASON="waiting for the offline CA: capstan csr export"

# --- First sessions: the requests wait for the operator -----------------------
DEVS=(SEP0B1000000001 SEP0B1000000002 SEP0B1000000003)
for d in "${DEVS[@]}"; do
  cap main device add "$d" --operation install --auth null >/dev/null
  offline_phone "$d"
  [[ $PHONE_RC == 1 ]] || fail "$d: the first session should end in RETRY_LATER: $PHONE_JSON"
  json_expect "$PHONE_JSON" error retry_later csr_requested true csr_sent true lsc_stored false \
    key_file_written true pending_key true
  [[ -s "$IT_TMP/$d.key" ]] || fail "$d: the phone kept no key"
  dev=$(device_json main "$d")
  jq -e --arg r "$REASON" '.status == "pending" and .status_reason == $r and .certs_issued == 0' \
    <<<"$dev" >/dev/null || fail "$d should be pending for the offline CA: $dev"
done
# capstan_csr_pending comes from a store scan every 5 s.
pending_gauge_is() { [[ $(metric main capstan_csr_pending) == "$1" ]]; }
it_wait_for 20 pending_gauge_is 3 || fail "capstan_csr_pending: $(metric main capstan_csr_pending), expected 3"
assert_eq 3 "$(metric main 'capstan_capf_cert_requests_total{result="ok"}')" "requests counted ok"

# A phone that comes back before the operator imported: told to come back,
# without a new key (which would make its request stale).
A=${DEVS[0]}
cp "$IT_TMP/$A.key" "$IT_TMP/$A.key.first"
offline_phone "$A"
[[ $PHONE_RC == 1 ]] || fail "pending come-back: RETRY_LATER expected: $PHONE_JSON"
json_expect "$PHONE_JSON" error retry_later csr_sent false handover false lsc_stored false
cmp -s "$IT_TMP/$A.key" "$IT_TMP/$A.key.first" || fail "the phone was given a new key"
csr_status_is "$A" pending || fail "$A's request should still be pending: $(cap main csr list)"

# --- list ---------------------------------------------------------------------
cap main csr list >"$IT_TMP/list.txt"
for d in "${DEVS[@]}"; do has "$IT_TMP/list.txt" "$d"; done
has "$IT_TMP/list.txt" "rsa2048"
has "$IT_TMP/list.txt" "pending"
cap main csr list --json >"$IT_TMP/list.json"
jq -e 'length == 3 and all(.[]; .status == "pending" and .issuer == "offline" and .key == "rsa2048")' \
  "$IT_TMP/list.json" >/dev/null || fail "csr list --json: $(cat "$IT_TMP/list.json")"
cap main csr list --status pending --json >"$IT_TMP/pending.json"
assert_eq 3 "$(jq length "$IT_TMP/pending.json")" "csr list --status pending"
assert_eq 0 "$(cap main csr list --status issued --json | jq length)" "nothing issued yet"

# --- export -------------------------------------------------------------------
cap main csr export --dir "$IT_TMP/exported" >"$IT_TMP/export.out"
has "$IT_TMP/export.out" "exported 3 pending requests"
for d in "${DEVS[@]}"; do
  f="$IT_TMP/exported/$d.csr.pem"
  [[ -s "$f" ]] || fail "csr export --dir wrote no $f"
  osl req -in "$f" -verify -noout
  [[ $(openssl req -in "$f" -noout -subject) == *"CN = $d"* ]] || fail "$f: subject"
  # The request is for the key the phone keeps.
  cmp -s <(openssl req -in "$f" -noout -pubkey) \
    <(openssl pkey -inform DER -in "$IT_TMP/$d.key" -pubout) || fail "$f: not the phone's key"
done
cap main csr export --bundle "$IT_TMP/bundle.pem" >"$IT_TMP/export.out"
has "$IT_TMP/export.out" "exported 3 pending requests"
assert_eq 3 "$(grep -c 'BEGIN CERTIFICATE REQUEST' "$IT_TMP/bundle.pem")" "requests in the bundle"
# Each request of the bundle verifies and names one of the devices.
awk -v dir="$IT_TMP" '/BEGIN CERTIFICATE REQUEST/ { n++ } { print > (dir "/b" n ".pem") }' \
  "$IT_TMP/bundle.pem"
names=""
for i in 1 2 3; do
  osl req -in "$IT_TMP/b$i.pem" -verify -noout
  names+="$(openssl req -in "$IT_TMP/b$i.pem" -noout -subject | sed 's/.*CN = //') "
done
for d in "${DEVS[@]}"; do [[ $names == *"$d"* ]] || fail "the bundle lacks $d: $names"; done

# --- the CA signs; import a PEM, a bundle with the chain, a PKCS#7 --------------
B=${DEVS[1]} C=${DEVS[2]}
for d in "${DEVS[@]}"; do sign "$IT_TMP/exported/$d.csr.pem" "$P/$d.pem"; done
cat "$P/$B.pem" "$P/inter.pem" "$P/root.pem" >"$P/$B.bundle.pem"
osl crl2pkcs7 -nocrl -certfile "$P/$C.pem" -certfile "$P/inter.pem" -outform DER -out "$P/$C.p7b"
# The leaf alone does not reach the root in CAPF-trust: refused, by file
# and position, nothing changed.
cli_expect "${SRV_DATA[main]}" 1 csr import "$P/$A.pem"
has "$ERR" "$P/$A.pem: certificate 1: certificate does not chain to CAPF-trust"
csr_status_is "$A" pending || fail "a refused import changed $A's request: $(cap main csr list)"
# With the issuing CA's PEM beside it, it does.
cli_expect "${SRV_DATA[main]}" 0 csr import "$P/$A.pem" "$P/inter.pem"
csr_status_is "$A" issued || fail "PEM import: $(cap main csr list)"
cli_expect "${SRV_DATA[main]}" 0 csr import "$P/$B.bundle.pem"
csr_status_is "$B" issued || fail "bundle import: $(cap main csr list)"
cli_expect "${SRV_DATA[main]}" 0 csr import "$P/$C.p7b"
csr_status_is "$C" issued || fail "PKCS#7 import: $(cap main csr list)"
assert_eq 3 "$(cap main csr list --status issued --json | jq length)" "csr list --status issued"
# Recorded as issued, not yet installed: the phones have not come back.
for d in "${DEVS[@]}"; do
  jq -e '.certs_issued == 1 and .status == "pending" and
      .status_reason == "certificate issued: the phone gets it in its next session"' \
    <<<"$(device_json main "$d")" >/dev/null ||
    fail "$d: the certificate is not on record: $(device_json main "$d")"
done

# --- the phones' next sessions: the hand-over, straight after AUTH ---------------
for d in "${DEVS[@]}"; do
  offline_phone "$d" --save-cert "$IT_TMP/$d.der"
  json_expect "$PHONE_JSON" result ok reason 1 handover true lsc_stored true csr_sent false \
    store_refused 0
  openssl x509 -inform DER -in "$IT_TMP/$d.der" -out "$IT_TMP/$d.lsc.pem" || fail "$d: LSC"
  openssl verify -CAfile "$P/root.pem" -untrusted "$P/inter.pem" "$IT_TMP/$d.lsc.pem" >/dev/null ||
    fail "$d: the LSC does not chain to the operator's root"
  cmp -s <(openssl x509 -in "$IT_TMP/$d.lsc.pem" -outform DER) \
    <(openssl x509 -in "$P/$d.pem" -outform DER) || fail "$d: not the imported certificate"
  dev=$(device_json main "$d")
  jq -e '.status == "succeeded"' <<<"$dev" >/dev/null || fail "$d: $dev"
  assert_eq "$(md5_of "$IT_TMP/$d.der")" "$(jq -r .md5hash <<<"$dev")" "$d: md5hash"
  cap main audit list --device "$d" --json >"$IT_TMP/audit.json"
  order=$(jq -r '[.[] | .event] | join(" ")' "$IT_TMP/audit.json")
  [[ "$order" == *"cert_issued"*"cert_installed"* ]] || fail "$d: audit order: $order"
  csr_status_is "$d" installed || fail "$d: the request should be installed: $(cap main csr list)"
done
cap main csr list >"$IT_TMP/list.txt"
has "$IT_TMP/list.txt" "installed"
it_wait_for 20 pending_gauge_is 0 || fail "capstan_csr_pending: $(metric main capstan_csr_pending), expected 0"

# --- A refused hand-over: the server starts over in the same session ------------
E=SEP0B1000000005
cap main device add "$E" --operation install --auth null >/dev/null
offline_phone "$E"
[[ $PHONE_RC == 1 ]] || fail "$E: RETRY_LATER expected: $PHONE_JSON"
cap main csr export --dir "$IT_TMP/exported-e" >/dev/null
sign "$IT_TMP/exported-e/$E.csr.pem" "$P/$E.pem"
cli_expect "${SRV_DATA[main]}" 0 csr import "$P/$E.pem" "$P/inter.pem"
# The history names a certificate by its serial when that is 16 bytes long,
# otherwise by the first 16 bytes of its SHA-256 (core/ca/requests.c); ours
# are short.
cert_id() {
  openssl x509 -in "$1" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f | cut -c1-32
}
old_id=$(cert_id "$P/$E.pem")
jq -e --arg s "$old_id" '[.cert_history[] | select(.serial == $s and .status == "issued")] | length == 1' \
  <<<"$(device_json main "$E")" >/dev/null || fail "the imported certificate is not in the history: $(device_json main "$E")"
cp "$IT_TMP/$E.key" "$IT_TMP/$E.key.old"
# A new key cache for this session: the phone makes a new key when asked.
mkdir -p "$IT_TMP/keys-$E-2"
phone main --name "$E" --key-cache "$IT_TMP/keys-$E-2" --key-file "$IT_TMP/$E.key" --refuse-store
[[ $PHONE_RC == 1 ]] || fail "refused hand-over: RETRY_LATER expected: $PHONE_JSON"
json_expect "$PHONE_JSON" error retry_later handover true store_refused 1 csr_sent true \
  key_file_written true lsc_stored false
! cmp -s "$IT_TMP/$E.key" "$IT_TMP/$E.key.old" || fail "the restart did not give a new key"
assert_eq 1 "$(metric main capstan_capf_handovers_refused_total)" "refused hand-over counted"
cap main csr list --status stale --json >"$IT_TMP/stale.json"
jq -e --arg d "$E" 'length == 1 and .[0].device == $d' "$IT_TMP/stale.json" >/dev/null ||
  fail "the old request should be stale: $(cap main csr list)"
csr_status_is "$E" pending || fail "the new request should be pending: $(cap main csr list)"
dev=$(device_json main "$E")
jq -e '.status == "pending"' <<<"$dev" >/dev/null || fail "$E should be pending again: $dev"
jq -e '[.cert_history[] | select(.status == "stale")] | length == 1' <<<"$dev" >/dev/null ||
  fail "the old certificate should be stale in cert_history: $dev"
jq -e --arg s "$old_id" '[.cert_history[] | select(.serial == $s and .status == "stale")] | length == 1' \
  <<<"$dev" >/dev/null || fail "the stale one is not the old certificate: $dev"
# Its certificate imported again changes nothing.
cap main csr list --json | jq -S 'map(del(.age_seconds))' >"$IT_TMP/before.json"
cli_expect "${SRV_DATA[main]}" 1 csr import "$P/$E.pem" "$P/inter.pem"
has "$ERR" "$P/$E.pem: certificate 1: the request of $E is stale, not pending"
cap main csr list --json | jq -S 'map(del(.age_seconds))' >"$IT_TMP/after.json"
cmp -s "$IT_TMP/before.json" "$IT_TMP/after.json" || fail "a refused import changed the requests"
assert_eq "$dev" "$(device_json main "$E")" "a refused import changed the device"
cli_expect "${SRV_DATA[main]}" 0 csr delete --stale
assert_eq 0 "$(cap main csr list --status stale --json | jq length)" "stale requests deleted"
csr_status_is "$E" pending || fail "csr delete --stale took the pending request"
# The new request goes the usual way.
cap main csr export --dir "$IT_TMP/exported-e2" >/dev/null
sign "$IT_TMP/exported-e2/$E.csr.pem" "$P/$E.2.pem"
cli_expect "${SRV_DATA[main]}" 0 csr import "$P/$E.2.pem" "$P/inter.pem"
phone main --name "$E" --key-cache "$IT_TMP/keys-$E-2" --key-file "$IT_TMP/$E.key" --save-cert "$IT_TMP/$E.der"
json_expect "$PHONE_JSON" result ok reason 1 handover true lsc_stored true
openssl verify -CAfile "$P/root.pem" -untrusted "$P/inter.pem" \
  <(openssl x509 -inform DER -in "$IT_TMP/$E.der") >/dev/null || fail "$E: the LSC does not chain"
csr_status_is "$E" installed || fail "$E: $(cap main csr list)"

srv_stop main
it_pass
