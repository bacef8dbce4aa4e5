#!/usr/bin/env bash
# The offline CA from the command line (external-ca.md "Offline CA (R10)"):
# pending requests (seeded with tests/tools/capstan-csr-seed, as the CAPF
# session will record them) are listed and exported (a directory of
# <device>.csr.pem and one bundle, each verified with openssl req -verify);
# openssl as the CA signs them; `csr import` takes PEM, a PEM bundle and
# PKCS#7 (DER and PEM), records each as issued (device history, cert list),
# and refuses by file and position a certificate for an unknown key, one
# naming another device, one without keyEncipherment and one that does not
# chain to CAPF-trust, changing nothing (csr list --json byte for byte).
# Then delete and --stale; `ca set` refusals and `ca show` (the password
# never printed nor in the audit log); `device add` with an EC key while
# the issuer is est warns.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" jq openssl
it_watchdog 240
SEED="$CAPSTAN_BUILD_DIR/capstan-csr-seed"
[[ -x "$SEED" ]] || fail "missing $SEED (build the test tools)"

D="$IT_TMP/data"
timeout 60 "$CAPSTAN_BIN" init --data-dir "$D" >"$IT_TMP/init.log" 2>&1 || {
  cat "$IT_TMP/init.log" >&2
  fail "capstan init"
}
P="$IT_TMP/pki"
mkdir -p "$P"
OSSL_LOG="$IT_TMP/openssl.log"
osl() {
  echo "== openssl $*" >>"$OSSL_LOG"
  timeout 30 openssl "$@" 2>>"$OSSL_LOG" || {
    tail -n 20 "$OSSL_LOG" >&2
    fail "openssl $* failed"
  }
}
cat >"$P/ext.cnf" <<'EOF'
[root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[inter]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[lsc]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
[lsc_noke]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
EOF
# The CA: a root (added to CAPF-trust) and an intermediate that signs; a
# second root nobody trusts.
osl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$P/root.key" \
  -subj "/O=capstan csr test/CN=Test Root" -days 30 -extensions root -config "$P/ext.cnf" \
  -out "$P/root.pem"
osl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$P/inter.key" \
  -subj "/O=capstan csr test/CN=Test Issuing CA" -out "$P/inter.csr"
osl x509 -req -in "$P/inter.csr" -CA "$P/root.pem" -CAkey "$P/root.key" -set_serial 2 -days 30 \
  -extfile "$P/ext.cnf" -extensions inter -out "$P/inter.pem"
osl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$P/rogue.key" \
  -subj "/CN=Rogue Root" -days 30 -extensions root -config "$P/ext.cnf" -out "$P/rogue.pem"
cli_expect "$D" 0 trust add "$P/root.pem"

# Phones, their keys and requests.
DEVS=(SEP000000000A01 SEP000000000A02 SEP000000000A03 SEP000000000A04 SEP000000000A05)
for dev in "${DEVS[@]}"; do
  cli_expect "$D" 0 device add "$dev" --operation install --auth null
  osl req -new -newkey rsa:2048 -nodes -keyout "$P/$dev.key" -subj "/CN=$dev" -out "$P/$dev.csr"
  timeout 30 "$SEED" --data-dir "$D" --device "$dev" --csr "$P/$dev.csr" --age 7200 ||
    fail "seeding $dev"
done
# A5 makes a second request: the first becomes stale.
osl req -new -newkey rsa:2048 -nodes -keyout "$P/A5new.key" -subj "/CN=SEP000000000A05" \
  -out "$P/A5new.csr"
timeout 30 "$SEED" --data-dir "$D" --device SEP000000000A05 --csr "$P/A5new.csr" || fail "seed A5"

# --- list ----------------------------------------------------------------------
cli_expect "$D" 0 csr list
has "$OUT" "SEP000000000A01"
has "$OUT" "rsa2048"
has "$OUT" "superseded by a newer request"
has "$OUT" "2h"
cli_expect "$D" 0 csr list --json
[[ $(jq length "$OUT") == 6 ]] || fail "csr list --json: want 6 requests"
[[ $(jq '[.[] | select(.status=="pending")] | length' "$OUT") == 5 ]] || fail "5 pending"
[[ $(jq '[.[] | select(.status=="stale")] | length' "$OUT") == 1 ]] || fail "1 stale"
jq -e 'all(.[]; .key == "rsa2048" and .issuer == "offline")' "$OUT" >/dev/null || fail "keys"
cli_expect "$D" 0 csr list --status stale --json
[[ $(jq -r '.[0].device' "$OUT") == SEP000000000A05 ]] || fail "stale is A5's first"
cli_expect "$D" 2 csr list --status bogus
has "$ERR" "--status must be"
cli_expect "$D" 0 device show SEP000000000A01 --json
jq -e '.status == "pending" and (.status_reason | test("offline CA"))' "$OUT" >/dev/null ||
  fail "device waits for the offline CA: $(cat "$OUT")"

# --- export ----------------------------------------------------------------------
cli_expect "$D" 0 csr export --dir "$IT_TMP/exported"
has "$OUT" "exported 5 pending requests"
[[ $(stat -c %a "$IT_TMP/exported") == 700 ]] || fail "export dir mode"
for dev in "${DEVS[@]}"; do
  f="$IT_TMP/exported/$dev.csr.pem"
  [[ $(stat -c %a "$f") == 644 ]] || fail "$f mode"
  osl req -in "$f" -verify -noout
  [[ $(openssl req -in "$f" -noout -subject) == *"CN = $dev"* ]] || fail "$f subject"
done
# A5's exported request is the newer one.
cmp -s <(openssl req -in "$IT_TMP/exported/SEP000000000A05.csr.pem" -outform DER) \
  <(openssl req -in "$P/A5new.csr" -outform DER) || fail "A5 exports its newer request"
cli_expect "$D" 0 csr export --dir "$IT_TMP/exported"
has "$OUT" "replaced $IT_TMP/exported/SEP000000000A01.csr.pem"
cli_expect "$D" 0 csr export --bundle "$IT_TMP/bundle.pem"
has "$OUT" "exported 5 pending requests"
[[ $(grep -c "BEGIN CERTIFICATE REQUEST" "$IT_TMP/bundle.pem") == 5 ]] || fail "bundle count"
cli_expect "$D" 2 csr export
cli_expect "$D" 2 csr export --dir "$IT_TMP/x" --bundle "$IT_TMP/y"

# --- the CA signs ----------------------------------------------------------------
sign() { # CSR OUT EXT [SUBJ] [CA]
  local ca=${5:-inter}
  local args=(x509 -req -in "$1" -CA "$P/$ca.pem" -CAkey "$P/$ca.key" -set_serial "0x$(openssl rand -hex 16 | sed 's/^./4/')"
    -days 20 -extfile "$P/ext.cnf" -extensions "$3" -out "$2")
  if [[ -n "${4:-}" ]]; then
    osl x509 -req -in "$1" -CA "$P/$ca.pem" -CAkey "$P/$ca.key" -set_serial 77 -days 20 \
      -extfile "$P/ext.cnf" -extensions "$3" -out "$2.tmp"
    # another subject: re-issue from a CSR with that subject and the same key
    osl req -new -key "${1%.csr}.key" -subj "$4" -out "$1.other"
    osl x509 -req -in "$1.other" -CA "$P/$ca.pem" -CAkey "$P/$ca.key" -set_serial 78 -days 20 \
      -extfile "$P/ext.cnf" -extensions "$3" -out "$2"
  else
    osl "${args[@]}"
  fi
}
sign "$IT_TMP/exported/SEP000000000A01.csr.pem" "$P/A01.pem" lsc
sign "$IT_TMP/exported/SEP000000000A02.csr.pem" "$P/A02.pem" lsc
sign "$IT_TMP/exported/SEP000000000A03.csr.pem" "$P/A03.pem" lsc
sign "$P/SEP000000000A04.csr" "$P/A04.pem" lsc
sign "$P/A5new.csr" "$P/A05.pem" lsc
# Refusals: an unknown key, another device's name, no keyEncipherment, a
# rogue CA.
osl req -new -newkey rsa:2048 -nodes -keyout "$P/stranger.key" -subj "/CN=SEP000000000A01" \
  -out "$P/stranger.csr"
sign "$P/stranger.csr" "$P/bad_unknown.pem" lsc
sign "$P/SEP000000000A01.csr" "$P/bad_name.pem" lsc "/CN=SEP000000000FFF"
sign "$P/SEP000000000A01.csr" "$P/bad_noke.pem" lsc_noke
sign "$P/SEP000000000A01.csr" "$P/bad_rogue.pem" lsc "" rogue

# The requests as stored: everything but the age, which the clock moves.
stored_requests() { jq -S 'map(del(.age_seconds))' "$OUT"; }
cli_expect "$D" 0 csr list --json
stored_requests >"$IT_TMP/before.json"
cli_expect "$D" 0 device list --json
cp "$OUT" "$IT_TMP/devices_before.json"
# All four refusals in one bundle (with the chain), each by position.
cat "$P/inter.pem" "$P/bad_unknown.pem" "$P/bad_name.pem" "$P/bad_noke.pem" "$P/bad_rogue.pem" \
  >"$IT_TMP/bad_bundle.pem"
cli_expect "$D" 1 csr import "$IT_TMP/bad_bundle.pem"
has "$ERR" "bad_bundle.pem: certificate 2: matches no certificate request"
has "$ERR" "bad_bundle.pem: certificate 3: certificate names another device"
has "$ERR" "bad_bundle.pem: certificate 4: certificate lacks keyEncipherment"
has "$ERR" "bad_bundle.pem: certificate 5: certificate does not chain to CAPF-trust"
lacks "$ERR" "certificate 1:"
has "$OUT" "imported 0 of 4 certificates"
cli_expect "$D" 0 csr list --json
stored_requests | cmp -s - "$IT_TMP/before.json" || fail "a refused import changed the requests"
cli_expect "$D" 0 device list --json
cmp -s "$OUT" "$IT_TMP/devices_before.json" || fail "a refused import changed the devices"
# Without its intermediate, a good certificate does not chain either.
cli_expect "$D" 1 csr import "$P/A01.pem"
has "$ERR" "A01.pem: certificate 1: certificate does not chain to CAPF-trust"
cli_expect "$D" 1 csr import "$IT_TMP/init.log"
has "$ERR" "init.log: not a certificate"

# --- imports: PEM with chain, bundle, PKCS#7 DER and PEM ---------------------------------
cat "$P/A01.pem" "$P/inter.pem" >"$IT_TMP/a01_chain.pem"
cli_expect "$D" 0 csr import "$IT_TMP/a01_chain.pem"
has "$OUT" "issued to SEP000000000A01"
has "$OUT" "imported 1 of 1 certificate"
cat "$P/inter.pem" "$P/A02.pem" "$P/root.pem" >"$IT_TMP/a02_bundle.pem"
cli_expect "$D" 0 csr import "$IT_TMP/a02_bundle.pem"
has "$OUT" "imported 1 of 1"
osl crl2pkcs7 -nocrl -certfile "$P/A03.pem" -certfile "$P/inter.pem" -outform DER -out "$IT_TMP/a03.p7b"
osl crl2pkcs7 -nocrl -certfile "$P/A04.pem" -certfile "$P/inter.pem" -out "$IT_TMP/a04.p7b.pem"
# Two files in one import: A05's leaf alone, its chain from the other file.
cli_expect "$D" 0 csr import "$IT_TMP/a03.p7b" "$IT_TMP/a04.p7b.pem" "$P/A05.pem"
has "$OUT" "imported 3 of 3"
# Importing again: no longer pending.
cli_expect "$D" 1 csr import "$IT_TMP/a01_chain.pem"
has "$ERR" "certificate 1: the request of SEP000000000A01 is issued, not pending"

cli_expect "$D" 0 csr list --json
[[ $(jq '[.[] | select(.status=="issued")] | length' "$OUT") == 5 ]] || fail "5 issued"
cli_expect "$D" 0 device show SEP000000000A03 --json
jq -e '.status_reason | test("next session")' "$OUT" >/dev/null || fail "A03 waits for the phone"
# The certificate is recorded like an LSC: the device's history and the cert list.
cli_expect "$D" 0 device show SEP000000000A03
serial=$(openssl x509 -in "$P/A03.pem" -noout -serial | cut -d= -f2 | tr 'A-F' 'a-f')
has "$OUT" "$serial"
cli_expect "$D" 0 audit list --device SEP000000000A03
has "$OUT" "csr_pending"
has "$OUT" "cert_issued"
has "$OUT" "csr_issued"

# --- delete ------------------------------------------------------------------------------
cli_expect "$D" 0 csr delete --stale
has "$OUT" "deleted 1 stale request"
cli_expect "$D" 0 csr delete SEP000000000A02
has "$OUT" "deleted 1 request of SEP000000000A02"
cli_expect "$D" 1 csr delete SEP000000000A02
has "$ERR" "has no certificate request"
cli_expect "$D" 2 csr delete
cli_expect "$D" 2 csr delete SEP000000000A01 --stale
cli_expect "$D" 0 csr list --json
[[ $(jq length "$OUT") == 4 ]] || fail "4 requests left"
cli_expect "$D" 0 audit list
has "$OUT" "csr_deleted"

# --- ca set / show ------------------------------------------------------------------------
printf 'S3cret-Pa55word\n' >"$IT_TMP/pw"
cli_expect "$D" 2 ca set
cli_expect "$D" 2 ca set --url http://ca.example.com/est
has "$ERR" "https://"
cli_expect "$D" 2 ca set --url https:///est
has "$ERR" "no valid host"
cli_expect "$D" 2 ca set --url https://user:pw@ca.example.com
cli_expect "$D" 2 ca set --url https://ca.example.com:99999
has "$ERR" "bad port"
cli_expect "$D" 2 ca set --url https://ca.example.com --timeout-seconds 0
has "$ERR" "1 to 600"
cli_expect "$D" 2 ca set --url https://ca.example.com --timeout-seconds 601
cli_expect "$D" 2 ca set --url https://ca.example.com --phone-wait-seconds 3601
has "$ERR" "1 to 3600"
cli_expect "$D" 2 ca set --url https://ca.example.com --template 'Bad Name'
: >"$IT_TMP/empty_pw"
cli_expect "$D" 1 ca set --url https://ca.example.com --password-file "$IT_TMP/empty_pw"
has "$ERR" "empty"
head -c 300 /dev/zero | tr '\0' a >"$IT_TMP/long_pw"
cli_expect "$D" 1 ca set --url https://ca.example.com --password-file "$IT_TMP/long_pw"
has "$ERR" "longer than 255"
cli_expect "$D" 1 ca set --url https://ca.example.com --ca-file "$IT_TMP/pw"
cli_expect "$D" 1 ca set --url https://ca.example.com --password-file "$IT_TMP/nonexistent"
cli_expect "$D" 2 ca set --label x
has "$ERR" "no CA is configured"
cli_expect "$D" 0 ca show --json
jq -e '.configured == false' "$OUT" >/dev/null || fail "nothing configured after refusals"

cli_expect "$D" 0 ca set --url https://ca.example.com:8443/.well-known/est/ --label phones \
  --username capstan --password-file "$IT_TMP/pw" --ca-file "$P/root.pem" --timeout-seconds 20
cli_expect "$D" 0 ca set --phone-wait-seconds 300
cli_expect "$D" 0 ca show
has "$OUT" "url:                 https://ca.example.com:8443/.well-known/est"
has "$OUT" "password:            set"
has "$OUT" "label:               phones"
has "$OUT" "phone wait:          300 s"
has "$OUT" "timeout:             20 s"
has "$OUT" "TLS anchors:         1 certificate"
lacks "$OUT" "S3cret"
cli_expect "$D" 0 ca show --json
jq -e '.password_set == true and .username == "capstan" and .timeout_seconds == 20 and
  .phone_wait_seconds == 300 and .url == "https://ca.example.com:8443/.well-known/est"' "$OUT" \
  >/dev/null || fail "ca show --json: $(cat "$OUT")"
lacks "$OUT" "S3cret"
cli_expect "$D" 0 audit list --json
has "$OUT" "ca_set"
lacks "$OUT" "S3cret"
if command -v mdb_dump >/dev/null; then
  mdb_dump -p -s audit "$D" >"$IT_TMP/audit.dump" 2>/dev/null || true
  lacks "$IT_TMP/audit.dump" "S3cret"
fi
# The CA's chain as `ca test` stores it: its root not in CAPF-trust yet.
osl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$P/estroot.key" \
  -subj "/O=capstan csr test/CN=EST Root" -days 30 -extensions root -config "$P/ext.cnf" \
  -out "$P/estroot.pem"
cat "$P/inter.pem" "$P/estroot.pem" >"$IT_TMP/est_chain.pem"
timeout 30 "$SEED" --data-dir "$D" --ca-chain "$IT_TMP/est_chain.pem" || fail "seed the CA chain"
cli_expect "$D" 0 ca show
has "$OUT" "chain 1:           O=capstan csr test,CN=Test Issuing CA"
has "$OUT" "chain 2:           O=capstan csr test,CN=EST Root"
has "$OUT" "root in CAPF-trust:  NO"
has "$OUT" "capstan trust add ca-root.pem --data-dir $D"
cli_expect "$D" 0 ca show --json
jq -e '(.chain | length) == 2 and .root_in_capf_trust == false' "$OUT" >/dev/null ||
  fail "ca show --json chain: $(cat "$OUT")"
cli_expect "$D" 0 ca show --root-pem
cp "$OUT" "$IT_TMP/ca-root.pem"
cmp -s <(openssl x509 -in "$IT_TMP/ca-root.pem" -outform DER) \
  <(openssl x509 -in "$P/estroot.pem" -outform DER) || fail "ca show --root-pem is not the root"
cli_expect "$D" 0 trust add "$IT_TMP/ca-root.pem"
cli_expect "$D" 0 ca show
has "$OUT" "root in CAPF-trust:  yes"

# `ca test` against a loopback port nobody listens on: it fails, and says so
# (never a name that needs DNS: the tests stay on loopback).
cli_expect "$D" 0 ca set --url "https://127.0.0.1:$(it_free_port tcp)/.well-known/est" \
  --timeout-seconds 5
cli_expect "$D" 1 ca test
has "$ERR" "ca test:"
cli_expect "$D" 0 ca show --json
jq -e '(.chain | length) == 2 and .password_set == true' "$OUT" >/dev/null ||
  fail "a failed ca test keeps the chain it had: $(cat "$OUT")"

# --- EC keys with an online CA --------------------------------------------------------------
cli_expect "$D" 0 config set issuer est
cli_expect "$D" 0 device add SEP000000000B01 --operation install --auth null --key ec256
has "$ERR" "EC keys are not supported with an online CA"
cli_expect "$D" 0 device add SEP000000000B02 --operation install --auth null --key rsa2048
lacks "$ERR" "EC keys"
cli_expect "$D" 0 device set SEP000000000B02 --key ec384
has "$ERR" "EC keys are not supported with an online CA"
cli_expect "$D" 0 config set issuer offline
cli_expect "$D" 0 device add SEP000000000B03 --operation install --auth null --key ec256
lacks "$ERR" "EC keys"

# --- a running server counts the pending requests ----------------------------------------
# A02's requests were deleted: it makes a new one (2 hours old).
osl req -new -newkey rsa:2048 -nodes -keyout "$P/A02b.key" -subj "/CN=SEP000000000A02" \
  -out "$P/A02b.csr"
timeout 30 "$SEED" --data-dir "$D" --device SEP000000000A02 --csr "$P/A02b.csr" --age 7200 ||
  fail "seed A02 again"
SRV_DATA[main]="$D"
srv_start main
pending_is() { [[ "$(metric main capstan_csr_pending)" == "$1" ]]; }
it_wait_for 20 pending_is 1 || fail "capstan_csr_pending: $(metric main capstan_csr_pending), want 1"
curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/status.json" >"$IT_TMP/status.json" ||
  fail "GET /status.json"
jq -e '.certificate_requests.pending == 1 and .certificate_requests.oldest_pending_age_seconds >= 7200
  and (.certificate_requests.oldest_pending_at | test("Z$"))' "$IT_TMP/status.json" >/dev/null ||
  fail "status.json: $(jq -c .certificate_requests "$IT_TMP/status.json")"
srv_stop main
lacks "${SRV_LOG[main]}" "S3cret"

# --- help ---------------------------------------------------------------------------------
cli_expect "$D" 0 csr --help
has "$OUT" "capstan csr import"
cli_expect "$D" 0 ca --help
has "$OUT" "--phone-wait-seconds"
it_pass
