#!/usr/bin/env bash
# A CA-signed CAPF end to end (capf-lifecycle.md "The CAPF CSR", "Importing
# the signed certificate", "LSCs issued by a CA-signed CAPF", "Renewal and
# roll-over"), with the openssl CLI as the enterprise CA (root and issuing
# intermediate) and openssl again as the judge of what capstan produces:
#  - the CSR: valid SHA-256 self-signature, subject CN=CAPF-<8 hex> plus the
#    O/OU/C given, exactly the three requested extensions (nothing else), and
#    both `openssl ca` (extensions copied from the CSR) and `openssl x509
#    -req` (a subordinate-CA profile) sign it;
#  - the import with --trust-root, done while the server runs after a first
#    enrollment by the self-signed CAPF: `cert capf show` says CA-signed with
#    the chain, the root is in CAPF-trust and CallManager-trust, and the
#    running server (same pid) serves the new identity;
#  - the wire: port 3804's TLS sends the CAPF and the intermediate, not the
#    root, and verifies against the root alone;
#  - LSCs: issuer = the CAPF's subject, AKI = the CAPF's SKI, the path builds
#    to the enterprise root only through the CAPF and the intermediate;
#  - "by existing certificate": an LSC of the CA-signed CAPF and one of the
#    previous (self-signed) CAPF authenticate; LSCs from a foreign CA (an
#    impostor chain with the very same names, and a foreign root) are refused
#    with reason 7 and "LSC invalid";
#  - a CSR for the current key (no --new-key) signed and imported: key
#    "current", live again without a restart.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq openssl sha256sum awk
it_watchdog 150

P="$IT_TMP/pki"
mkdir -p "$P/ca/new"
: >"$P/ca/index.txt"
echo 1000 >"$P/ca/serial"
OSSL_LOG="$IT_TMP/openssl.log"

# osl ARGS...: openssl, bounded; its stderr goes to a log printed on failure.
osl() {
  echo "== openssl $*" >>"$OSSL_LOG"
  timeout 30 openssl "$@" 2>>"$OSSL_LOG" || {
    tail -n 20 "$OSSL_LOG" >&2
    fail "openssl $* failed"
  }
}
# der_sha FILE.pem: SHA-256 of a PEM certificate's DER (trust list fingerprints).
der_sha() {
  local s
  s=$(openssl x509 -in "$1" -outform DER 2>/dev/null | sha256sum) || fail "der_sha $1"
  [[ -s "$1" ]] || fail "der_sha: $1 is empty"
  printf '%s\n' "${s%% *}"
}
# name_of FILE.pem subject|issuer: the name in RFC 2253 form.
name_of() {
  local n
  n=$(openssl x509 -in "$1" -noout "-$2" -nameopt RFC2253) || fail "name_of $1 $2"
  printf '%s\n' "${n#*=}"
}
# keyid FILE.pem subjectKeyIdentifier|authorityKeyIdentifier: the key id hex.
keyid() {
  openssl x509 -in "$1" -noout -ext "$2" 2>/dev/null | grep -oE '([0-9A-F]{2}:)+[0-9A-F]{2}' | head -n1
}
# pub_sha FILE [req]: SHA-256 of the public key of a certificate (or a CSR).
pub_sha() {
  local s
  if [[ "${2:-}" == req ]]; then
    s=$(openssl req -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum)
  else
    s=$(openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum)
  fi
  printf '%s\n' "${s%% *}"
}
# to_pem FILE.der FILE.pem
to_pem() { osl x509 -inform DER -in "$1" -out "$2"; }

# --- The enterprise CA, made with openssl ---------------------------------------------
cat >"$P/ext.cnf" <<'EOF'
[req]
distinguished_name = req_dn
[req_dn]
[v3_root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_inter]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_subca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_lsc]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
# A minimal `openssl ca`: the issuing CA, extensions copied from the request
# (so what the CAPF gets is what its CSR asks for), plus SKI and AKI.
cat >"$P/ca.cnf" <<EOF
[ca]
default_ca = ent_ca
[ent_ca]
dir = $P/ca
database = \$dir/index.txt
new_certs_dir = \$dir/new
serial = \$dir/serial
certificate = $P/int.pem
private_key = $P/int.key
default_md = sha256
default_days = 730
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = copy
x509_extensions = ids_only
[policy_any]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
countryName = optional
stateOrProvinceName = optional
localityName = optional
[ids_only]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
osl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$P/root.key"
osl req -x509 -new -key "$P/root.key" -subj "/O=Example Corp/CN=Example Root CA" -days 3650 \
  -sha256 -config "$P/ext.cnf" -extensions v3_root -out "$P/root.pem"
osl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$P/int.key"
osl req -new -key "$P/int.key" -subj "/O=Example Corp/CN=Example Voice Issuing CA" \
  -config "$P/ext.cnf" -out "$P/int.csr"
osl x509 -req -in "$P/int.csr" -CA "$P/root.pem" -CAkey "$P/root.key" -set_serial 0x1001 \
  -days 1825 -sha256 -extfile "$P/ext.cnf" -extensions v3_inter -out "$P/int.pem"
cat "$P/int.pem" "$P/root.pem" >"$P/chain.pem"
ROOT_SHA=$(der_sha "$P/root.pem")
INT_SHA=$(der_sha "$P/int.pem")

# --- A running server with its self-signed CAPF; a first enrollment --------------------
srv_start main
PID0=${SRV_PID[main]}
D="${SRV_DATA[main]}"

# wire_certs PREFIX [s_client options]: the certificates the CAPF port sends
# (PREFIX.0.pem first), s_client's output in PREFIX.txt; prints their count.
wire_certs() {
  local p=$1
  shift
  rm -f "$p".*.pem
  timeout 10 openssl s_client -connect "127.0.0.1:${SRV_CAPF[main]}" -showcerts "$@" \
    </dev/null >"$p.txt" 2>&1
  awk -v p="$p" '/-----BEGIN CERTIFICATE-----/ { f = p "." n++ ".pem" }
    f { print > f } /-----END CERTIFICATE-----/ { f = "" }' "$p.txt"
  find "$(dirname "$p")" -name "$(basename "$p").*.pem" | wc -l
}
# wire_leaf_sha: SHA-256 of the certificate the CAPF port presents.
wire_leaf_sha() {
  [[ "$(wire_certs "$IT_TMP/poll")" -ge 1 ]] || return 0
  der_sha "$IT_TMP/poll.0.pem"
}

[[ "$(wire_certs "$IT_TMP/w0")" == 1 ]] || fail "the self-signed CAPF sends one certificate: $(cat "$IT_TMP/w0.txt")"
cp "$IT_TMP/w0.0.pem" "$P/capf0.pem"
assert_eq "$(name_of "$P/capf0.pem" subject)" "$(name_of "$P/capf0.pem" issuer)" "self-signed CAPF issuer"
CAPF0_SHA=$(der_sha "$P/capf0.pem")
SHOW=$(cap main cert capf show --json)
json_expect "$SHOW" self_signed true sha256 "$CAPF0_SHA" pending null

A=SEP0000CA5A0001 # enrolls with the self-signed CAPF, later by its LSC
B=SEP0000CA5A0002 # enrolls with the CA-signed CAPF
C=SEP0000CA5A0003 # presents an LSC from an impostor chain
E=SEP0000CA5A0005 # presents an LSC from a foreign root
F=SEP0000CA5A0006 # enrolls after the import for the current key
cap main device add $A --operation install --auth null --key ec256 >/dev/null
phone main --name $A --auth null --save-cert "$IT_TMP/a0.der" --save-key "$IT_TMP/a0.key"
json_expect "$PHONE_JSON" result ok reason 1 operation install
to_pem "$IT_TMP/a0.der" "$IT_TMP/a0.pem"
osl verify -CAfile "$P/capf0.pem" "$IT_TMP/a0.pem" >/dev/null
# The phone really checks the server against --ca-pem: the enterprise root
# does not vouch for a self-signed CAPF.
phone main --name $A --auth null --ca-pem "$P/root.pem"
json_expect "$PHONE_JSON" result error error tls_failed

# --- (1) The CSR for a new key, made while the server runs ------------------------------
cap main cert capf csr --new-key --subject "O=Example Corp,OU=Voice,C=NZ" \
  --out "$P/capf.csr" >/dev/null
[[ -s "$P/capf.csr" ]] || fail "csr --out wrote nothing"
v=$(timeout 30 openssl req -in "$P/capf.csr" -noout -verify 2>&1) || fail "openssl req -verify: $v"
[[ "$v" == *"verify OK"* ]] || fail "CSR self-signature: $v"
subj=$(openssl req -in "$P/capf.csr" -noout -subject -nameopt RFC2253) || fail "CSR subject"
[[ "$subj" =~ ^subject=C=NZ,OU=Voice,O=Example\ Corp,CN=CAPF-[0-9a-fA-F]{8}$ ]] ||
  fail "CSR subject: '$subj' (expected CN=CAPF-<8 hex>,O=Example Corp,OU=Voice,C=NZ in this order)"
CSR_CN=${subj##*CN=}
osl req -in "$P/capf.csr" -noout -text -out "$IT_TMP/csr.txt"
has "$IT_TMP/csr.txt" "Signature Algorithm: sha256WithRSAEncryption"
has "$IT_TMP/csr.txt" "Public-Key: (2048 bit)"
# The requested extensions, exactly (criticality and values).
got=$(sed -n '/Requested Extensions:/,/Signature Algorithm:/p' "$IT_TMP/csr.txt" |
  sed '1d;$d; s/^[[:space:]]*//; s/[[:space:]]*$//')
want='X509v3 Basic Constraints: critical
CA:TRUE, pathlen:0
X509v3 Key Usage: critical
Digital Signature, Certificate Sign
X509v3 Extended Key Usage:
TLS Web Server Authentication, IPSec End System'
[[ "$got" == "$want" ]] || fail "CSR requested extensions:
$got
expected:
$want"
# And nothing else anywhere in the request: every OID of its DER in order
# (the four name parts, the key, one attribute holding three extensions,
# the signature).
oids=$(openssl asn1parse -in "$P/capf.csr" | awk -F: '/prim: OBJECT/ { print $NF }' | paste -sd'|')
assert_eq "commonName|organizationName|organizationalUnitName|countryName|rsaEncryption|Extension Request|X509v3 Basic Constraints|X509v3 Key Usage|X509v3 Extended Key Usage|sha256WithRSAEncryption" \
  "$oids" "the OIDs of the CSR"
# A new key, pending: not the live one.
[[ "$(pub_sha "$P/capf.csr" req)" != "$(pub_sha "$P/capf0.pem")" ]] || fail "--new-key CSR carries the live key"
SHOW=$(cap main cert capf show --json)
json_expect "$SHOW" sha256 "$CAPF0_SHA" self_signed true
jq -e --arg cn "$CSR_CN" '.pending.key == "rsa2048" and
  .pending.subject == ("CN=" + $cn + ",O=Example Corp,OU=Voice,C=NZ")' <<<"$SHOW" >/dev/null ||
  fail "pending key after csr --new-key: $SHOW"

# `openssl ca` signs it; its BC/KU/EKU come from the request itself.
osl ca -batch -notext -preserveDN -config "$P/ca.cnf" -in "$P/capf.csr" -out "$P/capf.pem"
osl x509 -in "$P/capf.pem" -noout -text -out "$IT_TMP/capf.txt"
got=$(sed -n '/X509v3 extensions:/,/Signature Algorithm:/p' "$IT_TMP/capf.txt" |
  grep -A1 -E 'Basic Constraints|Key Usage' | grep -v '^--' | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
[[ "$got" == "$want" ]] || fail "openssl ca: extensions of the signed CAPF:
$got"
osl verify -CAfile "$P/root.pem" -untrusted "$P/int.pem" "$P/capf.pem" >/dev/null
# `openssl x509 -req` with a subordinate-CA profile signs it too.
osl x509 -req -in "$P/capf.csr" -CA "$P/int.pem" -CAkey "$P/int.key" -set_serial 0x2001 \
  -days 730 -sha256 -extfile "$P/ext.cnf" -extensions v3_subca -out "$P/capf-x509.pem"
osl verify -CAfile "$P/root.pem" -untrusted "$P/int.pem" "$P/capf-x509.pem" >/dev/null
assert_eq "$(pub_sha "$P/capf.csr" req)" "$(pub_sha "$P/capf-x509.pem")" "x509 -req key"
CAPF_SHA=$(der_sha "$P/capf.pem")

# --- (2) The import, live -----------------------------------------------------------------
reloads() { grep -c 'event=reload cause=trust_changed' "${SRV_LOG[main]}"; }
R0=$(reloads)
cli_expect "$D" 0 cert capf import "$P/capf.pem" --chain "$P/chain.pem" --trust-root --json
has "$ERR" "the chain's root is now in CAPF-trust and CallManager-trust"
has "$ERR" "key=pending"
lacks "$ERR" "warning"
jq -e --arg s "$CAPF_SHA" --arg i "$INT_SHA" --arg r "$ROOT_SHA" --arg p "$CAPF0_SHA" '
  .result == "imported" and .sha256 == $s and .self_signed == false and .key == "rsa2048"
  and ([.chain[].sha256] == [$i, $r]) and .pending == null
  and ([.previous[].sha256] == [$p]) and .warnings == []' "$OUT" >/dev/null ||
  fail "import --json: $(cat "$OUT")"
SHOW=$(cap main cert capf show --json)
jq -e --arg s "$CAPF_SHA" --arg i "$INT_SHA" --arg r "$ROOT_SHA" --arg cn "$CSR_CN" '
  .sha256 == $s and .self_signed == false and .pending == null
  and .subject == ("CN=" + $cn + ",O=Example Corp,OU=Voice,C=NZ")
  and .issuer == "O=Example Corp,CN=Example Voice Issuing CA"
  and ([.chain[].sha256] == [$i, $r])
  and .chain[1].subject == .chain[1].issuer' <<<"$SHOW" >/dev/null ||
  fail "cert capf show after the import: $SHOW"
cli_expect "$D" 0 cert capf show
has "$OUT" "shape:        CA-signed, 2 certificates above it"
# The root, and only the root, in both trust stores.
for purpose in capf-trust callmanager-trust; do
  T=$(cap main trust list --json --purpose $purpose)
  jq -e --arg r "$ROOT_SHA" --arg i "$INT_SHA" '
    ([.[] | select(.fingerprint == $r)] | length) == 1
    and ([.[] | select(.fingerprint == $i)] | length) == 0' <<<"$T" >/dev/null ||
    fail "trust list --purpose $purpose after import --trust-root: $T"
done

# The running server takes it without a restart: the port presents it.
it_wait_for 15 '[[ "$(wire_leaf_sha)" == "$CAPF_SHA" ]]' ||
  fail "the server does not present the imported CAPF certificate: $(cat "$IT_TMP/poll.txt")"
[[ "$(reloads)" -gt "$R0" ]] || fail "no 'event=reload cause=trust_changed' after the import"
srv_alive main || fail "the server died"
assert_eq "$PID0" "${SRV_PID[main]}" "server pid"
assert_eq 1 "$(grep -c 'event=ready' "${SRV_LOG[main]}")" "server starts (it must not restart)"

# --- (3) The wire: CAPF + intermediate, no root; verifies against the root ----------------
[[ "$(wire_certs "$IT_TMP/w1" -CAfile "$P/root.pem")" == 2 ]] ||
  fail "TLS chain: expected 2 certificates: $(cat "$IT_TMP/w1.txt")"
assert_eq "$CAPF_SHA" "$(der_sha "$IT_TMP/w1.0.pem")" "TLS depth 0"
assert_eq "$INT_SHA" "$(der_sha "$IT_TMP/w1.1.pem")" "TLS depth 1"
has "$IT_TMP/w1.txt" "Verify return code: 0 (ok)"
# Against another anchor it does not verify (the check above can fail).
wire_certs "$IT_TMP/w2" -CAfile "$P/capf0.pem" >/dev/null
lacks "$IT_TMP/w2.txt" "Verify return code: 0 (ok)"
has "$IT_TMP/w2.txt" "Verify return code:"

# --- (3) An LSC from the CA-signed CAPF ---------------------------------------------------
cap main device add $B --operation install --auth null --key rsa2048 >/dev/null
phone main --name $B --auth null --ca-pem "$P/root.pem" --save-cert "$IT_TMP/b.der" --save-key "$IT_TMP/b.key"
json_expect "$PHONE_JSON" result ok reason 1 operation install
json_expect "$(device_json main $B)" status succeeded
to_pem "$IT_TMP/b.der" "$IT_TMP/b.pem"
assert_eq "$(name_of "$P/capf.pem" subject)" "$(name_of "$IT_TMP/b.pem" issuer)" "LSC issuer"
[[ "$(name_of "$IT_TMP/b.pem" subject)" =~ (^|,)CN=$B$ ]] || fail "LSC subject: $(name_of "$IT_TMP/b.pem" subject)"
SKI=$(keyid "$P/capf.pem" subjectKeyIdentifier)
AKI=$(keyid "$IT_TMP/b.pem" authorityKeyIdentifier)
[[ -n "$SKI" ]] || fail "the CAPF certificate has no SKI"
assert_eq "$SKI" "$AKI" "LSC AKI vs CAPF SKI"
cat "$P/capf.pem" "$P/int.pem" >"$IT_TMP/untrusted.pem"
v=$(timeout 30 openssl verify -CAfile "$P/root.pem" -untrusted "$IT_TMP/untrusted.pem" "$IT_TMP/b.pem" 2>&1) ||
  fail "LSC does not verify to the enterprise root: $v"
[[ "$v" == *": OK" ]] || fail "openssl verify: $v"
if v=$(timeout 30 openssl verify -CAfile "$P/root.pem" "$IT_TMP/b.pem" 2>&1); then
  fail "LSC verifies with the root alone (no CAPF, no intermediate): $v"
fi
[[ "$v" == *"unable to get local issuer certificate"* ]] || fail "openssl verify (root only): $v"

# --- (4) By existing certificate ----------------------------------------------------------
# The LSC just issued.
cap main device set $B --operation install --auth lsc >/dev/null
phone main --name $B --auth lsc --cert "$IT_TMP/b.der" --key "$IT_TMP/b.key" \
  --ca-pem "$P/root.pem" --save-cert "$IT_TMP/b2.der"
json_expect "$PHONE_JSON" result ok reason 1 operation install
json_expect "$(device_json main $B)" status succeeded
to_pem "$IT_TMP/b2.der" "$IT_TMP/b2.pem"
osl verify -CAfile "$P/root.pem" -untrusted "$IT_TMP/untrusted.pem" "$IT_TMP/b2.pem" >/dev/null
# The LSC of the previous, self-signed CAPF still authenticates (roll-over),
# and the phone moves to the enterprise chain.
cap main device set $A --operation install --auth lsc >/dev/null
phone main --name $A --auth lsc --cert "$IT_TMP/a0.der" --key "$IT_TMP/a0.key" \
  --ca-pem "$P/root.pem" --save-cert "$IT_TMP/a1.der"
json_expect "$PHONE_JSON" result ok reason 1 operation install
to_pem "$IT_TMP/a1.der" "$IT_TMP/a1.pem"
osl verify -CAfile "$P/root.pem" -untrusted "$IT_TMP/untrusted.pem" "$IT_TMP/a1.pem" >/dev/null
if openssl verify -CAfile "$P/capf0.pem" "$IT_TMP/a1.pem" >/dev/null 2>&1; then
  fail "the new LSC of $A still chains to the self-signed CAPF"
fi

# An impostor chain: a root and a CAPF-style CA with exactly the names of the
# real ones (other keys), and an LSC for C from it, shaped like capstan's.
osl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$P/imp-root.key"
osl req -x509 -new -key "$P/imp-root.key" -subj "/O=Example Corp/CN=Example Root CA" -days 3650 \
  -sha256 -config "$P/ext.cnf" -extensions v3_root -out "$P/imp-root.pem"
osl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$P/imp-capf.key"
osl req -new -key "$P/imp-capf.key" -subj "/CN=$CSR_CN/O=Example Corp/OU=Voice/C=NZ" \
  -config "$P/ext.cnf" -out "$P/imp-capf.csr"
osl x509 -req -in "$P/imp-capf.csr" -CA "$P/imp-root.pem" -CAkey "$P/imp-root.key" \
  -set_serial 0x3001 -days 730 -sha256 -extfile "$P/ext.cnf" -extensions v3_subca -out "$P/imp-capf.pem"
assert_eq "$(name_of "$P/capf.pem" subject)" "$(name_of "$P/imp-capf.pem" subject)" "impostor CAPF name"
# forge_lsc DEVICE CA.pem CA.key OUT: an LSC for DEVICE with a fresh P-256
# key: OUT.der (certificate), OUT.key.der (PKCS#8 key).
FORGED=20480
forge_lsc() {
  FORGED=$((FORGED + 1))
  osl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$4.key.pem"
  osl pkcs8 -topk8 -nocrypt -in "$4.key.pem" -outform DER -out "$4.key.der"
  osl req -new -key "$4.key.pem" -subj "/CN=$1/O=Example Corp/OU=Voice/C=NZ" -config "$P/ext.cnf" \
    -out "$4.csr"
  osl x509 -req -in "$4.csr" -CA "$2" -CAkey "$3" -set_serial "$FORGED" -days 365 -sha256 \
    -extfile "$P/ext.cnf" -extensions v3_lsc -out "$4.pem"
  osl x509 -in "$4.pem" -outform DER -out "$4.der"
}
forge_lsc $C "$P/imp-capf.pem" "$P/imp-capf.key" "$IT_TMP/c"
osl verify -CAfile "$P/imp-root.pem" -untrusted "$P/imp-capf.pem" "$IT_TMP/c.pem" >/dev/null
if openssl verify -CAfile "$P/root.pem" -untrusted "$IT_TMP/untrusted.pem" "$IT_TMP/c.pem" >/dev/null 2>&1; then
  fail "the impostor LSC verifies to the real root"
fi
cap main device add $C --operation install --auth lsc --key ec256 >/dev/null
phone main --name $C --auth lsc --cert "$IT_TMP/c.der" --key "$IT_TMP/c.key.der" --ca-pem "$P/root.pem"
json_expect "$PHONE_JSON" result end reason 7
json_expect "$(device_json main $C)" status failed status_reason "LSC invalid"

# A foreign root signing an LSC directly: refused while it is not trusted;
# once in CAPF-trust the same LSC is accepted (so the refusal was about the
# issuer, not the shape of an openssl-made LSC).
osl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/foreign.key"
osl req -x509 -new -key "$P/foreign.key" -subj "/O=Foreign Voice Ltd/CN=Foreign Voice Root" \
  -days 3650 -sha256 -config "$P/ext.cnf" -extensions v3_root -out "$P/foreign.pem"
forge_lsc $E "$P/foreign.pem" "$P/foreign.key" "$IT_TMP/e"
cap main device add $E --operation install --auth lsc --key ec256 >/dev/null
phone main --name $E --auth lsc --cert "$IT_TMP/e.der" --key "$IT_TMP/e.key.der" --ca-pem "$P/root.pem"
json_expect "$PHONE_JSON" result end reason 7
json_expect "$(device_json main $E)" status failed status_reason "LSC invalid"
R1=$(reloads)
cap main trust add "$P/foreign.pem" --purpose capf-trust >/dev/null
it_wait_for 15 '[[ "$(reloads)" -gt "$R1" ]]' || fail "no reload after trust add"
cap main device set $E --operation install --auth lsc >/dev/null
phone main --name $E --auth lsc --cert "$IT_TMP/e.der" --key "$IT_TMP/e.key.der" --ca-pem "$P/root.pem"
json_expect "$PHONE_JSON" result ok reason 1 operation install
json_expect "$(device_json main $E)" status succeeded

# --- (5) A CSR for the current key, signed and imported, live -----------------------------
cap main cert capf csr --out "$P/capf2.csr" >/dev/null
osl req -in "$P/capf2.csr" -noout -verify
assert_eq "$(pub_sha "$P/capf.pem")" "$(pub_sha "$P/capf2.csr" req)" "current-key CSR key"
subj2=$(openssl req -in "$P/capf2.csr" -noout -subject -nameopt RFC2253)
assert_eq "$(name_of "$P/capf.pem" subject)" "${subj2#*=}" "current-key CSR subject"
SHOW=$(cap main cert capf show --json)
json_expect "$SHOW" pending null sha256 "$CAPF_SHA"
osl x509 -req -in "$P/capf2.csr" -CA "$P/int.pem" -CAkey "$P/int.key" -set_serial 0x2002 \
  -days 700 -sha256 -extfile "$P/ext.cnf" -extensions v3_subca -out "$P/capf2.pem"
CAPF2_SHA=$(der_sha "$P/capf2.pem")
# The root is in both stores already: --chain with the intermediate alone
# builds, and no warning about a missing root.
cli_expect "$D" 0 cert capf import "$P/capf2.pem" --chain "$P/int.pem"
has "$OUT" "imported the CA-signed CAPF certificate (the live key)"
has "$ERR" "key=current"
lacks "$ERR" "warning"
SHOW=$(cap main cert capf show --json)
jq -e --arg s "$CAPF2_SHA" --arg p "$CAPF_SHA" --arg i "$INT_SHA" --arg r "$ROOT_SHA" '
  .sha256 == $s and .self_signed == false and .pending == null
  and ([.chain[].sha256] == [$i, $r]) and ([.previous[].sha256] | index($p)) != null' \
  <<<"$SHOW" >/dev/null || fail "cert capf show after the current-key import: $SHOW"
it_wait_for 15 '[[ "$(wire_leaf_sha)" == "$CAPF2_SHA" ]]' ||
  fail "the server does not present the current-key certificate: $(cat "$IT_TMP/poll.txt")"
assert_eq "$PID0" "${SRV_PID[main]}" "server pid"
srv_alive main || fail "the server died"
cap main device add $F --operation install --auth null --key ec256 >/dev/null
phone main --name $F --auth null --ca-pem "$P/root.pem" --save-cert "$IT_TMP/f.der"
json_expect "$PHONE_JSON" result ok reason 1 operation install
to_pem "$IT_TMP/f.der" "$IT_TMP/f.pem"
cat "$P/capf2.pem" "$P/int.pem" >"$IT_TMP/untrusted2.pem"
osl verify -CAfile "$P/root.pem" -untrusted "$IT_TMP/untrusted2.pem" "$IT_TMP/f.pem" >/dev/null
assert_eq "$SKI" "$(keyid "$IT_TMP/f.pem" authorityKeyIdentifier)" "LSC AKI after the current-key import"

# The enterprise root is above the live CAPF: removing it from a store is
# refused without --force, and nothing changes; a store it is not in says so.
TRUST0=$(cap main trust list --json)
cli_expect "$D" 1 trust remove "$ROOT_SHA"
has "$ERR" "is above the live CAPF certificate"
has "$ERR" "nothing changed"
cli_expect "$D" 1 trust remove "$ROOT_SHA" --purpose callmanager-trust
has "$ERR" "is above the live CAPF certificate"
assert_eq "$TRUST0" "$(cap main trust list --json)" "trust stores after refused removals"
cli_expect "$D" 0 trust remove "$ROOT_SHA" --purpose callmanager-trust --force
cli_expect "$D" 1 trust remove "$ROOT_SHA" --purpose callmanager-trust
has "$ERR" "is not in callmanager-trust; nothing changed"
jq -e --arg r "$ROOT_SHA" 'any(.[]; .fingerprint == $r and .purposes == ["capf-trust"])' \
  <<<"$(cap main trust list --json)" >/dev/null || fail "root after leaving CallManager-trust"
json_expect "$(cap main cert capf show --json)" root_in_capf_trust true root_in_callmanager_trust false
cli_expect "$D" 0 cert capf show
has "$OUT" "root trust:   MISSING from CallManager-trust"
cli_expect "$D" 0 trust add "$P/root.pem" --purpose callmanager-trust
json_expect "$(cap main cert capf show --json)" root_in_capf_trust true root_in_callmanager_trust true

assert_eq 1 "$(grep -c 'event=ready' "${SRV_LOG[main]}")" "server starts (it must not restart)"
srv_stop main
it_pass
