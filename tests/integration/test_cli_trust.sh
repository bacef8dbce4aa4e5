#!/usr/bin/env bash
# `capstan trust` end to end (product.md R13): a good manufacturing CA is
# added; an upload breaking each R13 rule is refused with the rule named and
# nothing stored; a bundle is all-or-nothing; list/export/remove round trip.
# Then against a running `capstan serve`: a MIC-authenticated install fails
# with "MIC invalid" while the manufacturing CA is not trusted, succeeds once
# `trust add` puts it in CAPF-trust (picked up by the running server without
# a signal), and fails again after `trust remove`.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq openssl "$IT_PYTHON"
it_watchdog 240

# --- Certificates for every R13 case ----------------------------------------
mkdir -p "$IT_TMP/certs"
cat >"$IT_TMP/gen.py" <<'EOF'
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

out = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)

def ku(ds, kcs, ke=False):
    return x509.KeyUsage(digital_signature=ds, content_commitment=False, key_encipherment=ke,
                         data_encipherment=False, key_agreement=False, key_cert_sign=kcs,
                         crl_sign=kcs, encipher_only=False, decipher_only=False)

def make(cn, issuer=None, ca=None, pathlen=None, usage=None, eku=None):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "capstan trust test")])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer[0].subject if issuer else name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=365)))
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen), critical=True)
    if usage is not None:
        b = b.add_extension(usage, critical=True)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key

def pem(name, *certs):
    with open(f"{out}/{name}.pem", "wb") as f:
        for c in certs:
            f.write(c.public_bytes(serialization.Encoding.PEM))

good, good_key = make("Test Root CA", ca=True, pathlen=0, usage=ku(True, True))
good2, _ = make("Second Root CA", ca=True, pathlen=0, usage=ku(True, True))
good3, _ = make("Third Root CA", ca=True, pathlen=0, usage=ku(True, True))
pem("good", good)
with open(f"{out}/good.der", "wb") as f:
    f.write(good.public_bytes(serialization.Encoding.DER))
pem("bundle_ok", good2, good3)
no_ca, _ = make("No CA Flag Root", usage=ku(True, True))
pem("no_ca", no_ca)
pem("bundle_bad", good2, no_ca)  # all-or-nothing: good2 must not be stored
pathlen, _ = make("Pathlen One Root", ca=True, pathlen=1, usage=ku(True, True))
pem("pathlen", pathlen)
usage, _ = make("Sign Only Root", ca=True, pathlen=0, usage=ku(False, True))
pem("usage", usage)
capf, _ = make("CAPF-1a2b3c4d", ca=True, pathlen=0, usage=ku(True, True))
pem("capf_cn", capf)
ipsec_ca, _ = make("ipsec-node-1", issuer=(good, good_key), ca=True, pathlen=None,
                   usage=ku(True, False, ke=True), eku=[x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5")])
pem("ipsec_ca", ipsec_ca)
ipsec_ok, _ = make("ipsec-node-2", issuer=(good, good_key), ca=False,
                   usage=ku(True, False, ke=True), eku=[x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5")])
pem("ipsec_ok", ipsec_ok)
EOF
"$IT_PYTHON" "$IT_TMP/gen.py" "$IT_TMP/certs" || fail "making test certificates"
C="$IT_TMP/certs"

# --- CLI only, on a data directory of its own ----------------------------------
D="$IT_TMP/cli-data"
timeout 60 "$CAPSTAN_BIN" init --data-dir "$D" >/dev/null 2>&1 || fail "capstan init"
# run WANT_RC ARGS...: the CLI on $D, stdout in $OUT, stderr in $ERR.
run() { cli_expect "$D" "$@"; }
count_trust() { timeout 60 "$CAPSTAN_BIN" trust list --json "$@" --data-dir "$D" | jq length; }

run 2 trust
run 2 trust frobnicate
run 2 trust add
run 2 trust add "$C/good.pem" --purpose tomcat-trust
has "$ERR" "capf-trust or callmanager-trust"
run 2 trust list --out x
run 2 trust remove
run 2 trust remove zz12
run 0 trust --help
has "$OUT" "--all-purpose"
run 1 trust add "$IT_TMP/missing.pem"
has "$ERR" "cannot read"
printf 'hello\n-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n' >"$IT_TMP/junk.pem"
run 1 trust add "$IT_TMP/junk.pem"
has "$ERR" "nothing was added"
[[ "$(count_trust)" == 0 ]] || fail "a malformed file stored something"

# Each trust-store rule, named in the refusal; nothing stored.
refused() { # FILE REASON [--purpose P]
  run 1 trust add "$C/$1.pem" "${@:3}"
  has "$ERR" "refused: $2"
  has "$ERR" "trust-store rule"
  has "$ERR" "nothing was added"
  [[ "$(count_trust)" == 0 ]] || fail "refused upload $1 stored something"
}
refused no_ca "basicConstraints CA:TRUE missing"
refused usage "keyUsage must include digitalSignature and keyCertSign"
refused capf_cn "CN containing CAPF- is reserved"
refused ipsec_ca "IPsec certificate signed by a CA must not be CA:TRUE" --purpose callmanager-trust
# A phone's (or any) end-entity certificate is no issuer: not in CAPF-trust.
refused ipsec_ok "basicConstraints CA:TRUE missing"
# A bundle with one bad certificate adds nothing, not even the good one.
refused bundle_bad "basicConstraints CA:TRUE missing"
has "$ERR" "certificate 2 (CN=No CA Flag Root"

# The good CA, as PEM into CAPF-trust (the default purpose).
run 0 trust add "$C/good.pem"
has "$OUT" "1 certificate added to capf-trust"
has "$OUT" "capstan reload"
FP=$(openssl x509 -in "$C/good.pem" -outform DER | sha256sum | cut -d' ' -f1)
has "$OUT" "added $FP capf-trust CN=Test Root CA"
# Again (as DER): already there, nothing changes.
run 0 trust add "$C/good.der"
has "$OUT" "0 certificates added to capf-trust (1 already there)"
# Into the other store too: one record, in both stores (an enterprise root
# above a CA-signed CAPF must be in both).
run 0 trust add "$C/good.der" --purpose callmanager-trust
has "$OUT" "1 certificate added to callmanager-trust"
run 0 trust list --json --purpose callmanager-trust
jq -e --arg fp "$FP" '[.[] | select(.fingerprint == $fp)][0].purposes == ["capf-trust","callmanager-trust"]' \
  "$OUT" >/dev/null || fail "a certificate in both stores: $(cat "$OUT")"
# Out of one store only: it stays in the other.
run 0 trust remove "$FP" --purpose callmanager-trust
has "$OUT" "removed $FP"
[[ "$(count_trust --purpose callmanager-trust)" == 0 ]] || fail "trust remove --purpose left it in callmanager-trust"
[[ "$(count_trust --purpose capf-trust)" == 1 ]] || fail "trust remove --purpose took it out of capf-trust"
# A root whose pathlen allows CAs below it (the root above a CA-signed CAPF
# needs one) is a valid upload; the CAPF import checks the path.
run 0 trust add "$C/pathlen.pem" --purpose callmanager-trust
has "$OUT" "1 certificate added to callmanager-trust"
PATHLEN_FP=$(openssl x509 -in "$C/pathlen.pem" -outform DER | sha256sum | cut -d' ' -f1)
run 0 trust remove "$PATHLEN_FP"
# A bundle, and an IPsec certificate signed by a CA (CA:FALSE), into
# CallManager-trust.
run 0 trust add "$C/bundle_ok.pem" --purpose callmanager-trust
has "$OUT" "2 certificates added to callmanager-trust"
run 0 trust add "$C/ipsec_ok.pem" --purpose callmanager-trust
[[ "$(count_trust)" == 4 ]] || fail "expected 4 trust entries"
[[ "$(count_trust --purpose capf-trust)" == 1 ]] || fail "expected 1 capf-trust entry"
[[ "$(count_trust --purpose callmanager-trust)" == 3 ]] || fail "expected 3 callmanager-trust entries"

# list: fingerprint, subject, issuer, not after, purpose.
run 0 trust list --json --purpose capf-trust
jq -e --arg fp "$FP" '.[0] | .fingerprint == $fp and .purpose == "capf-trust"
  and (.subject | startswith("CN=Test Root CA")) and .issuer == .subject
  and (.not_after | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T")) and .expired == false' "$OUT" >/dev/null ||
  fail "trust list --json: $(cat "$OUT")"
run 0 trust list --json --purpose callmanager-trust
jq -e '[.[] | select(.subject | startswith("CN=ipsec-node-2"))][0].issuer | startswith("CN=Test Root CA")' \
  "$OUT" >/dev/null || fail "ipsec certificate's issuer: $(cat "$OUT")"
run 0 trust list
has "$OUT" "$FP  capf-trust"

# export: the same certificate, by full fingerprint and by a prefix.
run 0 trust export "$FP"
[[ "$(openssl x509 -in "$OUT" -outform DER | sha256sum | cut -d' ' -f1)" == "$FP" ]] ||
  fail "trust export gave another certificate"
run 0 trust export "${FP:0:12}" --out "$IT_TMP/exported.pem"
cmp -s <(openssl x509 -in "$IT_TMP/exported.pem" -outform DER) <(openssl x509 -in "$C/good.pem" -outform DER) ||
  fail "trust export --out differs from the upload"
run 1 trust export 0000000000
has "$ERR" "no trust certificate with fingerprint"

# remove: one by fingerprint, then a whole store.
run 0 trust remove "$FP"
has "$OUT" "removed $FP"
[[ "$(count_trust --purpose capf-trust)" == 0 ]] || fail "trust remove left the entry"
run 1 trust remove "$FP"
has "$ERR" "no trust certificate"
run 0 trust remove --all-purpose callmanager-trust
has "$OUT" "3 certificates removed from callmanager-trust"
[[ "$(count_trust)" == 0 ]] || fail "trust remove --all-purpose left entries"
# The audit trail has the changes.
# (Settings.trust_generation moved with each change: checked by the server
# part below, which reloads on it.)

# --- Against a running server: MIC authentication -------------------------------
srv_start main
DEV=SEP0000AB00C001
mkdir -p "$IT_TMP/mfg"
py make-ca --out "$IT_TMP/mfg" --cn "Test Manufacturing CA" || fail "make-ca"
py issue --ca "$IT_TMP/mfg" --cn "$DEV" --key ec256 --out-cert "$IT_TMP/mic.der" \
  --out-key "$IT_TMP/mic.key.der" || fail "issue MIC"
cap main device add "$DEV" --operation install --auth mic --key ec256 >/dev/null

mic_phone() {
  phone main --name "$DEV" --auth mic --cert "$IT_TMP/mic.der" --key "$IT_TMP/mic.key.der"
}
# reloads: how many trust-triggered reloads the server logged.
reloads() { grep -c 'event=reload cause=trust_changed' "${SRV_LOG[main]}"; }

# Not trusted yet.
mic_phone
json_expect "$PHONE_JSON" result end reason 7
json_expect "$(device_json main "$DEV")" status failed status_reason "MIC invalid"

# Trusted: no signal sent, the server notices the change itself.
cap main trust add "$IT_TMP/mfg/ca.pem" >/dev/null
it_wait_for 20 '[[ "$(reloads)" -ge 1 ]]' || fail "the server did not reload after trust add"
cap main device set "$DEV" --operation install --auth mic >/dev/null
mic_phone
json_expect "$PHONE_JSON" result ok reason 1 operation install
json_expect "$(device_json main "$DEV")" status succeeded

# Removed again: refused again.
MFP=$(cap main trust list --json --purpose capf-trust | jq -r '.[0].fingerprint')
cap main trust remove "$MFP" >/dev/null
it_wait_for 20 '[[ "$(reloads)" -ge 2 ]]' || fail "the server did not reload after trust remove"
cap main device set "$DEV" --operation install --auth mic >/dev/null
mic_phone
json_expect "$PHONE_JSON" result end reason 7
json_expect "$(device_json main "$DEV")" status failed status_reason "MIC invalid"

# SIGHUP still reloads too (with the CA back), and the trust survives a restart.
cap main trust add "$IT_TMP/mfg/ca.der" >/dev/null
kill -HUP "${SRV_PID[main]}"
it_wait_for 20 'grep -q "event=reload signal=SIGHUP" "${SRV_LOG[main]}"' || fail "no SIGHUP reload"
cap main device set "$DEV" --operation install --auth mic >/dev/null
mic_phone
json_expect "$PHONE_JSON" result ok reason 1 operation install
srv_stop main
it_pass
