#!/usr/bin/env bash
# `capstan cert capf import` refuses, rule by rule (capf-lifecycle.md
# "Importing the signed certificate: the checks"), certificates that openssl,
# as the enterprise CA, signs for the pending CAPF key (from capstan's CSR).
# Each refusal: exit status 1, "import refused (rule N)" with the reason on
# stderr, {"result":"refused","rule":N} with --json, and nothing changed:
# `cert capf show --json` (live certificate, chain, pending key, previous)
# and `trust list --json` are byte for byte what they were, the pending key
# still there. Rules:
#   1 another key; 2 CA:FALSE, no basicConstraints, pathlen missing, pathlen
#   1, CN not starting with CAPF-; 3 keyUsage without keyCertSign, without
#   digitalSignature, without keyUsage; 4 expired, not yet valid, under 30
#   days left with --strict (without it: accepted with a warning); 5 no
#   --chain, a chain without its root, an issuer that is not a CA, an
#   intermediate with pathlen 0 above the CAPF, a root whose pathlen leaves
#   no room for the intermediate and the CAPF; 6 SHA-1 on the intermediate,
#   on the CAPF certificate itself, on the root's self-signature; 7 a root or
#   an intermediate whose CN contains CAPF-.
# Not refused: an intermediate without digitalSignature (rule 5 asks only
# CA:TRUE with keyCertSign). A root without it fails the trust-store rules,
# so --trust-root refuses the import (nothing changed); without --trust-root
# it is imported with a warning (both acceptances on copies of the data).
# Then files that are no certificate, the certificate expiring in under 30
# days accepted with a warning, and re-importing the live certificate.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" jq openssl sha256sum
it_watchdog 120

D="$IT_TMP/data"
timeout 60 "$CAPSTAN_BIN" init --data-dir "$D" >"$IT_TMP/init.log" 2>&1 || {
  cat "$IT_TMP/init.log" >&2
  fail "capstan init"
}
P="$IT_TMP/pki"
mkdir -p "$P/ca/new"
: >"$P/ca/index.txt"
echo 1000 >"$P/ca/serial"
OSSL_LOG="$IT_TMP/openssl.log"
osl() {
  echo "== openssl $*" >>"$OSSL_LOG"
  timeout 30 openssl "$@" 2>>"$OSSL_LOG" || {
    tail -n 20 "$OSSL_LOG" >&2
    fail "openssl $* failed"
  }
}

cat >"$P/ext.cnf" <<'EOF'
[req]
distinguished_name = req_dn
[req_dn]
[root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[root_p1]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[inter]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[inter_nods]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[root_nods]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[inter_p0]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[inter_not_ca]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[subca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ca_false]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[no_bc]
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[no_pathlen]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[pathlen1]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ku_no_certsign]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ku_no_digsig]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[no_ku]
basicConstraints = critical,CA:TRUE,pathlen:0
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[bc_not_critical]
basicConstraints = CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ku_not_critical]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = digitalSignature,keyCertSign
extendedKeyUsage = serverAuth,1.3.6.1.5.5.7.3.5
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
# `openssl ca` for the validity cases (-startdate/-enddate; this openssl's
# x509 has no -not_before).
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
[policy_any]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
countryName = optional
EOF

# ca NAME "SUBJECT" EXTSECTION [openssl x509 options]: a self-signed CA
# (EC P-256), NAME.pem and NAME.key.
ca_root() {
  local name=$1 subj=$2 ext=$3
  shift 3
  osl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/$name.key"
  osl req -x509 -new -key "$P/$name.key" -subj "$subj" -days 3650 -sha256 -config "$P/ext.cnf" \
    -extensions "$ext" "$@" -out "$P/$name.pem"
}
# ca_sub NAME "SUBJECT" EXTSECTION ISSUER [openssl x509 options]: a CA under
# ISSUER (NAME.pem, NAME.key).
SERIAL=4096
ca_sub() {
  local name=$1 subj=$2 ext=$3 issuer=$4
  shift 4
  SERIAL=$((SERIAL + 1))
  osl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/$name.key"
  osl req -new -key "$P/$name.key" -subj "$subj" -config "$P/ext.cnf" -out "$P/$name.csr"
  osl x509 -req -in "$P/$name.csr" -CA "$P/$issuer.pem" -CAkey "$P/$issuer.key" \
    -set_serial "$SERIAL" -days 1825 -sha256 -extfile "$P/ext.cnf" -extensions "$ext" "$@" \
    -out "$P/$name.pem"
}
# sign OUT EXTSECTION ISSUER [openssl x509 options]: the CAPF CSR signed by
# ISSUER into OUT.pem (options after the defaults win: -sha1, -subj ...).
sign() {
  local out=$1 ext=$2 issuer=$3
  shift 3
  SERIAL=$((SERIAL + 1))
  osl x509 -req -in "${CSR:-$P/capf.csr}" -CA "$P/$issuer.pem" -CAkey "$P/$issuer.key" \
    -set_serial "$SERIAL" -days 730 -sha256 -extfile "$P/ext.cnf" -extensions "$ext" "$@" \
    -out "$P/$out.pem"
}
# chain NAME CERTS...: NAME.pem = the PEM certificates, in that order.
chain() {
  local out=$1 c
  shift
  : >"$P/$out.pem"
  for c in "$@"; do cat "$P/$c.pem" >>"$P/$out.pem"; done
}
# utc OFFSET: a time for openssl ca, e.g. utc '-10 days'.
utc() { date -u -d "$1" +%y%m%d%H%M%SZ; }

# --- The pending key's CSR, the enterprise CA -------------------------------------------
timeout 60 "$CAPSTAN_BIN" cert capf csr --new-key --subject "O=Example Corp,OU=Voice,C=NZ" \
  --out "$P/capf.csr" --data-dir "$D" 2>"$IT_TMP/csr.err" || {
  cat "$IT_TMP/csr.err" >&2
  fail "cert capf csr --new-key"
}
CN=$(openssl req -in "$P/capf.csr" -noout -subject -nameopt RFC2253)
CN=${CN##*CN=}
[[ "$CN" =~ ^CAPF-[0-9a-fA-F]{8}$ ]] || fail "CSR CN: '$CN'"
ca_root root "/O=Example Corp/CN=Example Root CA" root
ca_sub int "/O=Example Corp/CN=Example Voice Issuing CA" inter root
chain chain int root
sign good subca int
osl verify -CAfile "$P/root.pem" -untrusted "$P/int.pem" "$P/good.pem" >/dev/null

# --- The state that must not change ------------------------------------------------------
snapshot() {
  cli_expect "$D" 0 cert capf show --json
  cp "$OUT" "$IT_TMP/show.before"
  cli_expect "$D" 0 trust list --json
  cp "$OUT" "$IT_TMP/trust.before"
}
unchanged() { # WHAT
  cli_expect "$D" 0 cert capf show --json
  cmp -s "$OUT" "$IT_TMP/show.before" ||
    fail "$1 changed the CAPF: before $(cat "$IT_TMP/show.before") after $(cat "$OUT")"
  if [[ "${EXPECT_PENDING:-1}" == 1 ]]; then
    jq -e --arg cn "$CN" '.pending.key == "rsa2048" and (.pending.subject | startswith("CN=" + $cn + ","))' \
      "$OUT" >/dev/null || fail "$1: the pending key is gone: $(cat "$OUT")"
  fi
  cli_expect "$D" 0 trust list --json
  cmp -s "$OUT" "$IT_TMP/trust.before" ||
    fail "$1 changed the trust stores: before $(cat "$IT_TMP/trust.before") after $(cat "$OUT")"
}
snapshot
jq -e '.self_signed == true and .pending != null and .chain == []' "$IT_TMP/show.before" >/dev/null ||
  fail "initial state: $(cat "$IT_TMP/show.before")"
LIVE_SHA=$(jq -r .sha256 "$IT_TMP/show.before")

# refused RULE "REASON" CERT [import options]: refused by that rule, nothing
# changed; its stderr stays in refused.err.
refused() {
  local rule=$1 why=$2 cert=$3
  shift 3
  cli_expect "$D" 1 cert capf import "$P/$cert.pem" --json "$@"
  has "$ERR" "import refused (rule $rule): $why"
  has "$ERR" "nothing changed"
  jq -e --argjson r "$rule" --arg why "$why" '.result == "refused" and .rule == $r and (.why | startswith($why))' \
    "$OUT" >/dev/null || fail "import $cert: --json: $(cat "$OUT")"
  cp "$ERR" "$IT_TMP/refused.err"
  unchanged "import $cert ($rule: $why)"
}

# Not a numbered rule, but every ITL lists the live CAPF: a serial over 20
# octets (RFC 5280's bound) would break every ITL, so it is refused.
osl x509 -req -in "$P/capf.csr" -CA "$P/int.pem" -CAkey "$P/int.key" \
  -set_serial 0x7f0102030405060708090a0b0c0d0e0f1011121314 -days 730 -sha256 \
  -extfile "$P/ext.cnf" -extensions subca -out "$P/long_serial.pem"
cli_expect "$D" 1 cert capf import "$P/long_serial.pem" --chain "$P/chain.pem" --trust-root
has "$ERR" "import refused: the certificate cannot be listed in ITL files"
has "$ERR" "nothing changed"
unchanged "import long_serial (ITL)"

# Rule 1: a certificate for a key openssl made (same name, same profile).
osl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$P/other.key"
osl req -new -key "$P/other.key" -subj "/CN=$CN/O=Example Corp/OU=Voice/C=NZ" -config "$P/ext.cnf" \
  -out "$P/other.csr"
CSR="$P/other.csr" sign other_key subca int
refused 1 "its public key is not the pending or current CAPF key" other_key --chain "$P/chain.pem" --trust-root

# Rule 2: basic constraints and the CN.
sign ca_false ca_false int
refused 2 "basicConstraints CA:TRUE missing" ca_false --chain "$P/chain.pem" --trust-root
sign no_bc no_bc int
refused 2 "basicConstraints CA:TRUE missing" no_bc --chain "$P/chain.pem" --trust-root
sign no_pathlen no_pathlen int
refused 2 "basicConstraints pathlen must be 0" no_pathlen --chain "$P/chain.pem" --trust-root
sign pathlen1 pathlen1 int
refused 2 "basicConstraints pathlen must be 0" pathlen1 --chain "$P/chain.pem" --trust-root
sign cn_voice subca int -subj "/CN=Voice CA/O=Example Corp/OU=Voice/C=NZ"
refused 2 "the subject CN must start with CAPF-" cn_voice --chain "$P/chain.pem" --trust-root
sign cn_inner subca int -subj "/CN=Example $CN/O=Example Corp/OU=Voice/C=NZ"
refused 2 "the subject CN must start with CAPF-" cn_inner --chain "$P/chain.pem" --trust-root
# Phones fail TLS with a CAPF whose constraints are not critical.
sign bc_not_critical bc_not_critical int
refused 2 "basicConstraints must be critical" bc_not_critical --chain "$P/chain.pem" --trust-root

# Rule 3: key usage.
sign ku_no_certsign ku_no_certsign int
refused 3 "keyUsage must include digitalSignature and keyCertSign" ku_no_certsign --chain "$P/chain.pem" --trust-root
sign ku_no_digsig ku_no_digsig int
refused 3 "keyUsage must include digitalSignature and keyCertSign" ku_no_digsig --chain "$P/chain.pem" --trust-root
sign no_ku no_ku int
refused 3 "keyUsage must include digitalSignature and keyCertSign" no_ku --chain "$P/chain.pem" --trust-root
sign ku_not_critical ku_not_critical int
refused 3 "keyUsage must be critical" ku_not_critical --chain "$P/chain.pem" --trust-root

# Rule 4: validity, by `openssl ca` with explicit dates.
ca_dates() { # OUT START END
  osl ca -batch -notext -preserveDN -config "$P/ca.cnf" -in "$P/capf.csr" -extfile "$P/ext.cnf" \
    -extensions subca -startdate "$2" -enddate "$3" -out "$P/$1.pem"
}
ca_dates expired "$(utc '-400 days')" "$(utc '-1 day')"
refused 4 "it has expired" expired --chain "$P/chain.pem" --trust-root
ca_dates not_yet "$(utc '+2 days')" "$(utc '+400 days')"
refused 4 "it is not valid yet (notBefore is in the future)" not_yet --chain "$P/chain.pem" --trust-root
ca_dates short "$(utc '-1 day')" "$(utc '+10 days')"
refused 4 "it expires in fewer than 30 days (--strict)" short --chain "$P/chain.pem" --trust-root --strict

# Rule 5: the path.
refused 5 "the chain does not build to a self-signed root" good --trust-root
has "$IT_TMP/refused.err" "the root included" # it says what to give
refused 5 "the chain does not build to a self-signed root" good --chain "$P/int.pem" --trust-root
ca_sub int_not_ca "/O=Example Corp/CN=Example Not A CA" inter_not_ca root
sign under_not_ca subca int_not_ca
chain chain_not_ca int_not_ca root
refused 5 "a certificate of the chain is not a CA (CA:TRUE with keyCertSign)" under_not_ca \
  --chain "$P/chain_not_ca.pem" --trust-root
ca_sub int_p0 "/O=Example Corp/CN=Example Pathlen Zero CA" inter_p0 root
sign under_p0 subca int_p0
chain chain_p0 int_p0 root
refused 5 "a CA of the chain has a pathlen that does not allow the CAPF below it" under_p0 \
  --chain "$P/chain_p0.pem" --trust-root
# A root with pathlen 1 above an intermediate: two CAs below it (the
# intermediate and the CAPF), one allowed.
ca_root root_p1 "/O=Example Corp/CN=Example Pathlen One Root" root_p1
ca_sub int_rp1 "/O=Example Corp/CN=Example Issuing CA Two" inter root_p1
sign under_rp1 subca int_rp1
chain chain_rp1 int_rp1 root_p1
refused 5 "a CA of the chain has a pathlen that does not allow the CAPF below it" under_rp1 \
  --chain "$P/chain_rp1.pem" --trust-root

# Rule 6: SHA-1 anywhere on the path.
ca_sub int_sha1 "/O=Example Corp/CN=Example SHA1 Issuing CA" inter root -sha1
openssl x509 -in "$P/int_sha1.pem" -noout -text | grep -q 'Signature Algorithm: ecdsa-with-SHA1' ||
  fail "openssl did not sign the intermediate with SHA-1"
sign under_sha1 subca int_sha1
chain chain_sha1 int_sha1 root
refused 6 "a signature on the chain is weaker than SHA-256" under_sha1 --chain "$P/chain_sha1.pem" --trust-root
sign capf_sha1 subca int -sha1
openssl x509 -in "$P/capf_sha1.pem" -noout -text | grep -q 'Signature Algorithm: ecdsa-with-SHA1' ||
  fail "openssl did not sign the CAPF certificate with SHA-1"
refused 6 "a signature on the chain is weaker than SHA-256" capf_sha1 --chain "$P/chain.pem" --trust-root
ca_root root_sha1 "/O=Example Corp/CN=Example SHA1 Root" root -sha1
ca_sub int_rsha1 "/O=Example Corp/CN=Example Issuing CA Three" inter root_sha1
sign under_rsha1 subca int_rsha1
chain chain_rsha1 int_rsha1 root_sha1
refused 6 "a signature on the chain is weaker than SHA-256" under_rsha1 --chain "$P/chain_rsha1.pem" --trust-root

# Rule 7: CAPF- in the CN of a CA above the CAPF.
ca_root root_capf "/O=Example Corp/CN=Example CAPF-Root" root
ca_sub int_rc "/O=Example Corp/CN=Example Issuing CA Four" inter root_capf
sign under_root_capf subca int_rc
chain chain_root_capf int_rc root_capf
refused 7 "a CA of the chain has a CN containing CAPF-" under_root_capf --chain "$P/chain_root_capf.pem" --trust-root
ca_sub int_capf "/O=Example Corp/CN=CAPF-00c0ffee" inter root
sign under_int_capf subca int_capf
chain chain_int_capf int_capf root
refused 7 "a CA of the chain has a CN containing CAPF-" under_int_capf --chain "$P/chain_int_capf.pem" --trust-root

# --- CAs without digitalSignature ----------------------------------------------------
# Rule 5 asks CA:TRUE with keyCertSign of the CAs on the path (RFC 5280): an
# intermediate with keyCertSign and cRLSign only is fine (accepted, on a copy
# of the data directory).
ca_sub int_nods "/O=Example Corp/CN=Example Issuing CA No DS" inter_nods root
sign under_nods subca int_nods
chain chain_nods int_nods root
it_copy_store "$D" "$IT_TMP/data-nods"
cli_expect "$IT_TMP/data-nods" 0 cert capf import "$P/under_nods.pem" --chain "$P/chain_nods.pem" --trust-root --json
NODS_SHA=$(openssl x509 -in "$P/under_nods.pem" -outform DER | sha256sum | cut -d' ' -f1)
jq -e --arg s "$NODS_SHA" '.result == "imported" and .sha256 == $s and (.chain | length) == 2' "$OUT" >/dev/null ||
  fail "import under an intermediate without digitalSignature: $(cat "$OUT")"
# A root without digitalSignature builds the path but fails the trust-store
# rules (R13): --trust-root refuses the whole import, nothing changed ...
ca_root root_nods "/O=Example Corp/CN=Example Root No DS" root_nods
ca_sub int_rnods "/O=Example Corp/CN=Example Issuing CA Five" inter root_nods
sign under_rnods subca int_rnods
chain chain_rnods int_rnods root_nods
cli_expect "$D" 1 cert capf import "$P/under_rnods.pem" --chain "$P/chain_rnods.pem" --trust-root
has "$ERR" "import refused: --trust-root: the chain's root does not meet the trust-store rules"
has "$ERR" "nothing changed"
unchanged "import --trust-root with a root the trust store refuses"
# ... and without --trust-root the import goes through, with a warning that
# the root is in neither store (on a copy).
it_copy_store "$D" "$IT_TMP/data-rnods"
cli_expect "$IT_TMP/data-rnods" 0 cert capf import "$P/under_rnods.pem" --chain "$P/chain_rnods.pem"
has "$ERR" "warning: the chain's root is missing from CAPF-trust or CallManager-trust"
cli_expect "$IT_TMP/data-rnods" 0 trust list --json
[[ "$(jq length "$OUT")" == 0 ]] || fail "import without --trust-root added to the trust stores: $(cat "$OUT")"

# --- Files that are no certificate --------------------------------------------------------
head -c 700 /dev/urandom >"$P/garbage.bin"
printf 'hello\nthis is not a certificate\n' >"$P/garbage.txt"
printf -- '-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n' >"$P/badpem.pem"
chain two good int
not_a_cert() { # FILE TEXT
  local rc=0
  timeout 60 "$CAPSTAN_BIN" cert capf import "$1" --chain "$P/chain.pem" --trust-root --data-dir "$D" \
    >"$OUT" 2>"$ERR" || rc=$?
  [[ $rc -eq 1 || $rc -eq 2 ]] || {
    cat "$OUT" "$ERR" >&2
    fail "import $(basename "$1"): exit $rc, expected 1 or 2"
  }
  has "$ERR" "$2"
  lacks "$ERR" "imported"
  [[ ! -s "$OUT" ]] || fail "import $(basename "$1") printed on stdout: $(cat "$OUT")"
  unchanged "import $(basename "$1")"
}
not_a_cert "$P/garbage.bin" "neither PEM certificates nor one DER certificate"
not_a_cert "$P/garbage.txt" "neither PEM certificates nor one DER certificate"
not_a_cert "$P/badpem.pem" "neither PEM certificates nor one DER certificate"
not_a_cert "$P/two.pem" "holds 2 certificates"
not_a_cert "$P/missing.pem" "cannot read"
# A good certificate with a chain file that is garbage: nothing either.
cli_expect "$D" 1 cert capf import "$P/good.pem" --chain "$P/garbage.txt" --trust-root
has "$ERR" "garbage.txt"
unchanged "import with a garbage --chain"

# --- Under 30 days without --strict: accepted, with a warning ------------------------------
SHORT_SHA=$(openssl x509 -in "$P/short.pem" -outform DER | sha256sum | cut -d' ' -f1)
ROOT_SHA=$(openssl x509 -in "$P/root.pem" -outform DER | sha256sum | cut -d' ' -f1)
cli_expect "$D" 0 cert capf import "$P/short.pem" --chain "$P/chain.pem" --trust-root --json
has "$ERR" "capstan: warning: the certificate expires in fewer than 30 days"
jq -e --arg s "$SHORT_SHA" --arg live "$LIVE_SHA" '.result == "imported" and .sha256 == $s
  and .self_signed == false and .pending == null and ([.previous[].sha256] == [$live])
  and (.warnings | index("the certificate expires in fewer than 30 days")) != null' "$OUT" >/dev/null ||
  fail "import of the short certificate: $(cat "$OUT")"
cli_expect "$D" 0 trust list --json
jq -e --arg r "$ROOT_SHA" '[.[] | .fingerprint] == [$r]' "$OUT" >/dev/null ||
  fail "trust list after import --trust-root: $(cat "$OUT")"

# --- The live certificate again: refused, nothing changed --------------------------------
EXPECT_PENDING=0 snapshot
jq -e --arg s "$SHORT_SHA" '.sha256 == $s and .pending == null' "$IT_TMP/show.before" >/dev/null ||
  fail "state after the import: $(cat "$IT_TMP/show.before")"
cli_expect "$D" 1 cert capf import "$P/short.pem" --chain "$P/chain.pem" --trust-root --json
has "$ERR" "import refused: already the CAPF certificate; nothing changed"
jq -e '.result == "refused" and .why == "already the CAPF certificate"' "$OUT" >/dev/null ||
  fail "re-import --json: $(cat "$OUT")"
EXPECT_PENDING=0 unchanged "re-importing the live certificate"
it_pass
