#!/usr/bin/env bash
# The CAPF certificate and the TLS the CAPF listener speaks, seen from
# outside: `capstan cert export capf` and what `openssl s_client` is served
# are the same certificate, with CN CAPF-..., CA:TRUE pathlen:0, keyUsage
# digitalSignature + keyCertSign, RSA 2048, sha256WithRSAEncryption. TLS 1.0
# is refused by default (counted as legacy_refused) and accepted with
# AES256-SHA once `capstan config set legacy-tls on` is applied live (and
# refused again after `off`), while modern phones keep working.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq openssl "$IT_PYTHON"
it_watchdog 180

srv_start main
CAPF="127.0.0.1:${SRV_CAPF[main]}"
cap main cert export capf >"$IT_TMP/capf.pem"

# s_client OUT ARGS...: one TLS client connection; the output goes to OUT.
# Returns s_client's status. The server talks first after the handshake
# (AUTH_REQUEST); s_client then reads EOF on stdin and leaves.
s_client() {
  local out=$1
  shift
  timeout 20 openssl s_client -connect "$CAPF" "$@" </dev/null >"$out" 2>&1
}

# True when the output shows a completed handshake with that protocol and cipher.
handshake_done() {
  grep -Eq "^ *Protocol *: *$2\$" "$1" && grep -Eq "^ *Cipher *: *$3\$" "$1"
}

# --- The certificate --------------------------------------------------------
s_client "$IT_TMP/showcerts.txt" -showcerts || {
  cat "$IT_TMP/showcerts.txt" >&2
  fail "openssl s_client could not connect with default settings"
}
py check-capf --cert "$IT_TMP/capf.pem" --served "$IT_TMP/showcerts.txt" || fail "CAPF certificate"
grep -q 'Verify return code' "$IT_TMP/showcerts.txt" || fail "s_client output has no verification result"
# It verifies against itself (self-signed CAPF, no enterprise CA here).
s_client "$IT_TMP/verify.txt" -CAfile "$IT_TMP/capf.pem" ||
  fail "s_client with the CAPF certificate as CA failed"
grep -q 'Verify return code: 0 (ok)' "$IT_TMP/verify.txt" || {
  cat "$IT_TMP/verify.txt" >&2
  fail "the served chain does not verify against the exported CAPF certificate"
}
# Modern TLS: 1.3 and 1.2 both complete.
s_client "$IT_TMP/tls13.txt" -tls1_3 || fail "TLS 1.3 handshake failed"
grep -q 'TLSv1.3' "$IT_TMP/tls13.txt" || fail "TLS 1.3 not negotiated"
s_client "$IT_TMP/tls12.txt" -tls1_2 || fail "TLS 1.2 handshake failed"
grep -Eq '^ *Protocol *: *TLSv1.2$' "$IT_TMP/tls12.txt" || fail "TLS 1.2 not negotiated"

# --- TLS 1.0: refused by default ----------------------------------------------
# OpenSSL 3 allows TLS 1.0 and SHA-1 only at security level 0.
LEGACY=(-tls1 -cipher 'AES256-SHA:@SECLEVEL=0')
before=$(metric main 'capstan_capf_handshakes_total{result="legacy_refused"}')
if s_client "$IT_TMP/tls1-off.txt" "${LEGACY[@]}" && handshake_done "$IT_TMP/tls1-off.txt" TLSv1 AES256-SHA; then
  fail "TLS 1.0 accepted while legacy-tls is off"
fi
metric_expect main 'capstan_capf_handshakes_total{result="legacy_refused"}' $((before + 1))
grep -q 'event=capf_legacy_tls_refused' "${SRV_LOG[main]}" ||
  fail "no log line says why the TLS 1.0 hello was refused"

# --- legacy-tls on: applied live -----------------------------------------------
cap main config set legacy-tls on >/dev/null
# The server applies settings within about a second; allow 10 s under load.
it_wait_for 10 's_client "$IT_TMP/tls1-on.txt" "${LEGACY[@]}" && handshake_done "$IT_TMP/tls1-on.txt" TLSv1 AES256-SHA' || {
  cat "$IT_TMP/tls1-on.txt" >&2
  fail "TLS 1.0 with AES256-SHA not accepted after 'config set legacy-tls on'"
}
# AES128-SHA too (the other cipher old phones offer).
s_client "$IT_TMP/tls1-aes128.txt" -tls1 -cipher 'AES128-SHA:@SECLEVEL=0' &&
  handshake_done "$IT_TMP/tls1-aes128.txt" TLSv1 AES128-SHA || fail "TLS 1.0 with AES128-SHA refused"
# A modern phone still enrolls while legacy TLS is allowed.
cap main device add SEP0000C0FFEE01 --operation install --auth null --key ec256 >/dev/null
phone main --name SEP0000C0FFEE01 --auth null --ca-pem "$IT_TMP/capf.pem"
json_expect "$PHONE_JSON" result ok reason 1 operation install

# --- and off again ---------------------------------------------------------------
cap main config set legacy-tls off >/dev/null
it_wait_for 10 '! { s_client "$IT_TMP/tls1-off2.txt" "${LEGACY[@]}" && handshake_done "$IT_TMP/tls1-off2.txt" TLSv1 AES256-SHA; }' ||
  fail "TLS 1.0 still accepted after 'config set legacy-tls off'"

srv_stop main
it_pass
