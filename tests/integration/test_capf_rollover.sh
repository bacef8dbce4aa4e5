#!/usr/bin/env bash
# CAPF roll-over on one running server (docs/spec/capf-lifecycle.md, "Renewal
# and roll-over" and "Trust stores"), the same process from start to end:
#
#  1. two phones enroll with the self-signed CAPF A (their LSCs saved);
#  2. `cert capf regenerate --key rsa3072 --days 400` makes B: within a couple
#     of seconds the CAPF port presents B (openssl s_client), no restart;
#  3. the ITL files (HTTP, checked by tests/tools/verify_files.py) list B and
#     A as CAPF records, nothing else as CAPF; `cert capf show` lists A as
#     previous, trusted until replaced_at + 30 days;
#  4. phone 1 authenticates by its LSC from A and gets an LSC issued by B;
#  5. `cert capf retire A` is refused while phone 2 still holds an LSC from A
#     (exit 1, the device count), then --force: phone 2's next LSC session
#     ends with reason 7 and "LSC invalid"; A leaves the ITL and `show`;
#  6. capf-previous-trust-days is live: after a plain regenerate (C, keeps
#     rsa3072, ten years) setting it to 0 stops trusting B (LSC invalid, not
#     in the ITL), and setting it back to 30 does not trust B again (a
#     window once ended stays ended: an operator who used 0 to drop a
#     previous CAPF must not re-trust it by accident); the phone holding
#     B's LSC then enrolls afresh (auth null) and gets an LSC from C;
#  7. capstan_capf_certificate_expiry_timestamp_seconds follows the live
#     CAPF's notAfter; `promtool check metrics` when promtool is installed;
#     `report expiring` lists the CAPF when it is due; a regenerate with
#     --days 10 makes the server warn event=capf_certificate_expiring at
#     the reload it triggers (handlers/serve/serve.c: each_reload);
#  8. every change is in the store's audit log with old and new serials (no
#     CLI lists the audit log yet: it is read with mdb_dump, lmdb-utils).
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq openssl mdb_dump
it_watchdog 300

VERIFY="$CAPSTAN_SOURCE_DIR/tests/tools/verify_files.py"
[[ -f "$VERIFY" ]] || fail "verify_files.py not found at $VERIFY"
W="$IT_TMP/w"
mkdir -p "$W"
SWITCH_BOUND=3 # seconds: the server polls the store once a second
it_sanitized && SWITCH_BOUND=8

# --- Helpers ------------------------------------------------------------------

# Python: the ITL's CAPF records (verify_files.py's own reader), the store's
# audit log (store_dump.py: mdb_dump, records.proto AuditEvent decoded by hand).
ITL_CAPF_PY='
import hashlib, struct, sys
sys.path.insert(0, sys.argv[1])
import verify_files as v
h = v.parse_header(open(sys.argv[2], "rb").read())
fps = sorted(hashlib.sha256(r[9]).hexdigest() for r in v.parse_records(h["payload"])
             if struct.unpack(">H", r[4])[0] == 4)
print(" ".join(fps))'
AUDIT_PY='
import sys
sys.path.insert(0, sys.argv[2])
from store_dump import records
for key, f in records(sys.argv[1], "audit"):
    s = lambda n: f.get(n, [b""])[0].decode()
    print(int.from_bytes(key, "big") // 10**9, s(4), s(5))'

lower_hex() { tr -d ':' | tr 'A-F' 'a-f'; }
# sha256 / serial / notAfter (epoch) / subject of a PEM or DER certificate.
cert_fp() { openssl x509 -in "$1" -inform "${2:-PEM}" -noout -fingerprint -sha256 | sed 's/.*=//' | lower_hex; }
cert_serial() { openssl x509 -in "$1" -noout -serial | sed 's/.*=//' | lower_hex; }
cert_end() { date -u -d "$(openssl x509 -in "$1" -inform "${2:-PEM}" -noout -enddate | sed 's/.*=//')" +%s; }
cert_issuer_fp() { # DER LSC -> sha256 of whichever of the given PEM CAPFs verifies it
  local lsc=$1 ca
  shift
  openssl x509 -in "$lsc" -inform DER -out "$lsc.pem" || fail "LSC $lsc is not DER"
  for ca in "$@"; do
    if openssl verify -no-CApath -no-CAstore -CAfile "$ca" "$lsc.pem" >/dev/null 2>&1; then
      cert_fp "$ca"
      return 0
    fi
  done
  echo none
}
epoch() { date -u -d "$1" +%s; }

# The fingerprint of the certificate the CAPF port presents now ("" if none).
tls_fp() { # [SERVER]
  timeout 10 openssl s_client -connect "127.0.0.1:${SRV_CAPF[${1:-main}]}" </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 2>/dev/null | sed 's/.*=//' | lower_hex
}

capf_json() { cap main cert capf show --json; }

# export_live FILE: the live CAPF certificate (PEM) as `cert export capf`
# writes it; it must be the one `show --json` describes.
export_live() {
  cap main cert export capf >"$1"
  local show
  show=$(capf_json)
  assert_eq "$(jq -r .sha256 <<<"$show")" "$(cert_fp "$1")" "cert export capf vs cert capf show sha256"
  assert_eq "$(jq -r .serial <<<"$show")" "$(cert_serial "$1")" "cert export capf vs cert capf show serial"
}

# Reloads of the CAPF identity so far (capf/server.c logs one per reload).
reloads() { grep -c 'event=capf_identity_loaded' "${SRV_LOG[main]}"; }
# wait_reload N: until the server reloaded after the count was N.
wait_reload() {
  it_wait_for "$SWITCH_BOUND" "(( \$(reloads) > $1 ))" ||
    fail "the server did not reload within ${SWITCH_BOUND}s (reloads: $(reloads), before: $1)"
}

# wait_tls FP: the CAPF port presents FP within SWITCH_BOUND seconds.
wait_tls() {
  local t0=$SECONDS
  it_wait_for "$SWITCH_BOUND" "[[ \"\$(tls_fp)\" == $1 ]]" ||
    fail "the CAPF port presents $(tls_fp), expected $1 within ${SWITCH_BOUND}s"
  it_log "CAPF port presents ${1:0:16}... after $((SECONDS - t0))s"
}

# check_itl FP...: ITLFile.tlv and ITL<P1>.tlv, over HTTP, verify (signed by
# the TFTP identity, SAST first, every record matches its certificate) and
# list exactly these CAPF certificates (PEM files $W/<fp>.pem).
check_itl() {
  local want name out fp args=() got
  want=$(printf '%s\n' "$@" | sort | xargs)
  for fp in "$@"; do args+=(--expect "CAPF:$W/$fp.pem"); done
  for name in ITLFile.tlv "ITL$P1.tlv"; do
    out="$W/$name"
    curl -sf --max-time 10 -o "$out" "http://127.0.0.1:${SRV_HTTP[main]}/$name" || fail "GET $name"
    "$IT_PYTHON" "$VERIFY" itl "$out" --signer-cert "$W/tftp.pem" --name "$name" \
      --expect "TFTP:$W/tftp.pem" "${args[@]}" >"$W/verify.out" 2>&1 ||
      fail "verify_files.py itl $name: $(cat "$W/verify.out")"
    got=$("$IT_PYTHON" -c "$ITL_CAPF_PY" "$(dirname "$VERIFY")" "$out") || fail "reading $name"
    assert_eq "$want" "$got" "CAPF records in $name"
    # TFTP serves the same bytes (no stale copy on one transport)
    timeout 30 curl -sf --max-time 20 -o "$out.tftp" "tftp://127.0.0.1:${SRV_TFTP[main]}/$name" ||
      fail "TFTP $name"
    cmp -s "$out" "$out.tftp" || fail "$name: TFTP bytes differ from HTTP"
  done
}

# itl_lacks FP: verify_files.py --expect CAPF:FP fails on the ITL (the
# verifier itself says the record is not there).
itl_lacks() {
  local name
  for name in ITLFile.tlv "ITL$P1.tlv"; do
    if "$IT_PYTHON" "$VERIFY" itl "$W/$name" --signer-cert "$W/tftp.pem" \
      --expect "CAPF:$W/$1.pem" >"$W/verify.out" 2>&1; then
      fail "$name still lists CAPF ${1:0:16}..."
    fi
    grep -q 'no record with role CAPF' "$W/verify.out" ||
      fail "verify_files.py on $name failed otherwise: $(cat "$W/verify.out")"
  done
}

# previous_fps: the sha256 of every previous CAPF `show --json` lists.
previous_fps() { capf_json | jq -r '[.previous[].sha256] | sort | join(" ")'; }

expiry_metric() {
  local v
  v=$(metric main capstan_capf_certificate_expiry_timestamp_seconds)
  # a float exposition (1.8e+09) is accepted as long as the value is exact
  awk -v v="$v" 'BEGIN { printf "%d\n", v }'
}

check_metrics_format() {
  if ! command -v promtool >/dev/null 2>&1; then
    it_log "promtool not installed (package prometheus): exposition format check skipped"
    return 0
  fi
  curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/metrics" >"$W/metrics.txt" ||
    fail "GET /metrics"
  promtool check metrics <"$W/metrics.txt" >"$W/promtool.out" 2>&1 ||
    fail "promtool check metrics: $(cat "$W/promtool.out")"
  it_log "promtool check metrics: ok"
}

# check_profile PEM: the CAPF certificate profile of capf-lifecycle.md
# (self-signed shape): CN=CAPF-<8 hex>, critical CA:TRUE pathlen 0, critical
# digitalSignature + keyCertSign, a Subject Key Identifier, SHA-256.
check_profile() {
  local text
  text=$(openssl x509 -in "$1" -noout -subject -text -nameopt RFC2253) || fail "openssl x509 $1"
  local subject=${text%%$'\n'*}
  [[ "$subject" =~ ^subject=CN=CAPF-[0-9a-f]{8}$ ]] || fail "$1: not CN=CAPF-<8 hex>: $subject"
  grep -A1 'Basic Constraints: critical' <<<"$text" | grep -q 'CA:TRUE, pathlen:0' ||
    fail "$1: basic constraints are not critical CA:TRUE, pathlen:0"
  grep -A1 'Key Usage: critical' <<<"$text" | grep -qx ' *Digital Signature, Certificate Sign' ||
    fail "$1: key usage is not critical digitalSignature + keyCertSign"
  grep -q 'Subject Key Identifier' <<<"$text" || fail "$1: no Subject Key Identifier"
  grep -q 'Signature Algorithm: .*sha256' <<<"$text" || fail "$1: signature is not SHA-256"
}

# regenerate OUT_PEM ARGS...: runs `cert capf regenerate ARGS --json`, checks
# what it says and that the server switches to it live; sets REGEN_AT (the
# second the command started) and NEW_FP.
regenerate() {
  local out=$1 before t0 t1 json
  shift
  before=$(reloads)
  t0=$(date +%s)
  json=$(cap main cert capf regenerate "$@" --json)
  t1=$(date +%s)
  json_expect "$json" result regenerated self_signed true
  export_live "$out"
  NEW_FP=$(cert_fp "$out")
  cp "$out" "$W/$NEW_FP.pem"
  assert_eq "$NEW_FP" "$(jq -r .sha256 <<<"$json")" "regenerate --json sha256"
  REGEN_AT=$t0
  REGEN_END=$t1
  check_profile "$out"
  wait_reload "$before"
  wait_tls "$NEW_FP"
}

# --- 1. Two phones enroll with A ---------------------------------------------

srv_start main --files
PID=${SRV_PID[main]}
P1=SEP0000AB120001
P2=SEP0000AB120002
cap main device add $P1 --operation install --auth null --key ec256 >/dev/null
cap main device add $P2 --operation install --auth null --key ec256 >/dev/null
cap main cert export tftp >"$W/tftp.pem"

export_live "$W/A.pem"
check_profile "$W/A.pem"
A_FP=$(cert_fp "$W/A.pem")
A_SERIAL=$(cert_serial "$W/A.pem")
cp "$W/A.pem" "$W/$A_FP.pem"
json_expect "$(capf_json)" previous '[]' previous_trust_days 30 key rsa2048
assert_eq "$A_FP" "$(tls_fp)" "certificate on the CAPF port at start"
assert_eq "$(cert_end "$W/A.pem")" "$(expiry_metric)" "expiry metric = A's notAfter"
check_metrics_format

phone main --name $P1 --auth null --save-cert "$W/p1-A.der" --save-key "$W/p1-A.key"
json_expect "$PHONE_JSON" result ok reason 1
phone main --name $P2 --auth null --save-cert "$W/p2-A.der" --save-key "$W/p2-A.key"
json_expect "$PHONE_JSON" result ok reason 1
assert_eq "$A_FP" "$(cert_issuer_fp "$W/p1-A.der" "$W/A.pem")" "issuer of phone 1's first LSC"
assert_eq "$A_FP" "$(cert_issuer_fp "$W/p2-A.der" "$W/A.pem")" "issuer of phone 2's first LSC"
check_itl "$A_FP"
it_log "1. two phones hold LSCs from A (serial $A_SERIAL)"

# --- 2. Regenerate (rsa3072, 400 days): B is live without a restart ----------

regenerate "$W/B.pem" --key rsa3072 --days 400
B_FP=$NEW_FP
B_SERIAL=$(cert_serial "$W/B.pem")
B_AT=$REGEN_AT
[[ "$B_FP" != "$A_FP" ]] || fail "regenerate kept the same certificate"
show=$(capf_json)
json_expect "$show" key rsa3072 self_signed true previous_trust_days 30
openssl x509 -in "$W/B.pem" -noout -text | grep -q 'Public-Key: (3072 bit)' || fail "B is not RSA 3072"
b_end=$(cert_end "$W/B.pem")
((b_end >= B_AT + 400 * 86400 - 5 && b_end <= REGEN_END + 400 * 86400 + 5)) ||
  fail "B's notAfter $b_end is not 400 days after $B_AT"
srv_alive main || fail "server died"
assert_eq "$PID" "${SRV_PID[main]}" "server pid"
it_log "2. B (serial $B_SERIAL, rsa3072, 400 days) is live"

# --- 3. The ITL lists B and A; show lists A as previous ----------------------

check_itl "$B_FP" "$A_FP"
assert_eq "$A_FP" "$(previous_fps)" "previous CAPFs after the first regenerate"
prev=$(jq -c '.previous[0]' <<<"$show")
json_expect "$prev" serial "$A_SERIAL" sha256 "$A_FP"
replaced=$(epoch "$(jq -r .replaced_at <<<"$prev")")
until_=$(epoch "$(jq -r .trusted_until <<<"$prev")")
((replaced >= B_AT && replaced <= REGEN_END)) ||
  fail "A replaced_at $replaced outside the regenerate ($B_AT..$REGEN_END)"
assert_eq $((replaced + 30 * 86400)) "$until_" "A trusted_until = replaced_at + 30 days"
cap main cert capf show >"$W/show.txt"
has "$W/show.txt" "previous:     "
grep -q "serial $A_SERIAL sha256 $A_FP trusted until $(jq -r .trusted_until <<<"$prev")" "$W/show.txt" ||
  fail "show (text) does not list A as trusted until $(jq -r .trusted_until <<<"$prev"): $(cat "$W/show.txt")"
it_log "3. ITL lists B and A; A trusted until $(jq -r .trusted_until <<<"$prev")"

# --- 7a. Expiry metric and report follow the live CAPF -----------------------

assert_eq "$b_end" "$(expiry_metric)" "expiry metric = B's notAfter"
check_metrics_format
rep=$(cap main report expiring --days 500 --json)
jq -e --arg n "$(jq -r .subject <<<"$show")" \
  'any(.[]; .cert_type == "CAPF" and .name == $n and .expired == false)' <<<"$rep" >/dev/null ||
  fail "report expiring --days 500 does not list the CAPF B: $rep"
rep=$(cap main report expiring --days 300 --json)
jq -e 'all(.[]; .cert_type != "CAPF")' <<<"$rep" >/dev/null ||
  fail "report expiring --days 300 lists a CAPF (B has 400 days): $rep"

# --- 4. Phone 1 moves from A to B by its existing certificate ----------------

cap main device set $P1 --auth lsc --operation install >/dev/null
phone main --name $P1 --auth lsc --cert "$W/p1-A.der" --key "$W/p1-A.key" \
  --save-cert "$W/p1-B.der" --save-key "$W/p1-B.key"
json_expect "$PHONE_JSON" result ok reason 1
assert_eq "$B_FP" "$(cert_issuer_fp "$W/p1-B.der" "$W/A.pem" "$W/B.pem")" "issuer of phone 1's new LSC"
dev=$(device_json main $P1)
json_expect "$dev" status succeeded cert_type lsc md5hash "$(md5_of "$W/p1-B.der")"
it_log "4. phone 1 authenticated with A's LSC and holds one from B"

# --- 5. Retire A: refused while phone 2 holds an LSC from it, then forced ----

DATA=${SRV_DATA[main]}
gen_before=$(reloads)
cli_expect "$DATA" 1 cert capf retire "$A_SERIAL"
has "$ERR" "1 device still holds an LSC from CAPF serial $A_SERIAL"
has "$ERR" "--force"
assert_eq "$A_FP" "$(previous_fps)" "previous CAPFs after the refused retire"
cli_expect "$DATA" 1 cert capf retire "$B_SERIAL" # the live one is not a previous one
has "$ERR" "no previous CAPF certificate still trusted has serial"
cli_expect "$DATA" 0 cert capf retire "$A_SERIAL" --force
has "$OUT" "serial $A_SERIAL); 1 device held an LSC from it"
wait_reload "$gen_before"
assert_eq "" "$(previous_fps)" "previous CAPFs after retiring A"
check_itl "$B_FP"
itl_lacks "$A_FP"

cap main device set $P2 --auth lsc --operation install >/dev/null
phone main --name $P2 --auth lsc --cert "$W/p2-A.der" --key "$W/p2-A.key"
json_expect "$PHONE_JSON" reason 7
dev=$(device_json main $P2)
json_expect "$dev" status failed status_reason "LSC invalid"
# retiring again: A is no longer a previous CAPF
cli_expect "$DATA" 1 cert capf retire "$A_SERIAL" --force
has "$ERR" "no previous CAPF certificate still trusted has serial $A_SERIAL"
it_log "5. A retired: phone 2 gets LSC invalid, A left the ITL and show"

# --- 6. The trust window is live ---------------------------------------------

regenerate "$W/C.pem"
C_FP=$NEW_FP
C_SERIAL=$(cert_serial "$W/C.pem")
show=$(capf_json)
json_expect "$show" key rsa3072 self_signed true
c_end=$(cert_end "$W/C.pem")
# "ten years" by default (A, made by init, has the same span)
a_span=$(($(cert_end "$W/A.pem") - $(date -u -d "$(openssl x509 -in "$W/A.pem" -noout -startdate | sed 's/.*=//')" +%s)))
c_span=$((c_end - $(date -u -d "$(openssl x509 -in "$W/C.pem" -noout -startdate | sed 's/.*=//')" +%s)))
assert_eq "$a_span" "$c_span" "validity of a plain regenerate vs init's"
((c_end >= REGEN_AT + 3600 * 86400)) || fail "C's notAfter $c_end is not about ten years away"
assert_eq "$c_end" "$(expiry_metric)" "expiry metric = C's notAfter"
rep=$(cap main report expiring --days 500 --json)
jq -e 'all(.[]; .cert_type != "CAPF")' <<<"$rep" >/dev/null ||
  fail "report expiring --days 500 lists a CAPF (C has ten years): $rep"
check_itl "$C_FP" "$B_FP"
assert_eq "$B_FP" "$(previous_fps)" "previous CAPFs after the second regenerate"

before=$(reloads)
cap main config set capf-previous-trust-days 0 >/dev/null
wait_reload "$before"
assert_eq "" "$(previous_fps)" "previous CAPFs with capf-previous-trust-days 0"
json_expect "$(capf_json)" previous_trust_days 0
check_itl "$C_FP"
itl_lacks "$B_FP"
cap main device set $P1 --operation install >/dev/null
phone main --name $P1 --auth lsc --cert "$W/p1-B.der" --key "$W/p1-B.key"
json_expect "$PHONE_JSON" reason 7
json_expect "$(device_json main $P1)" status failed status_reason "LSC invalid"

before=$(reloads)
cap main config set capf-previous-trust-days 30 >/dev/null 2>"$W/set30.err"
wait_reload "$before"
assert_eq "" "$(previous_fps)" "previous CAPFs with capf-previous-trust-days 30 again (B stays ended)"
json_expect "$(capf_json)" previous_trust_days 30
check_itl "$C_FP"
itl_lacks "$B_FP"
cap main device set $P1 --operation install >/dev/null
phone main --name $P1 --auth lsc --cert "$W/p1-B.der" --key "$W/p1-B.key"
json_expect "$PHONE_JSON" reason 7
# The way back for that phone: a new enrollment by another authentication.
cap main device set $P1 --operation install --auth null >/dev/null
phone main --name $P1 --auth null --save-cert "$W/p1-C.der" --save-key "$W/p1-C.key"
json_expect "$PHONE_JSON" result ok reason 1
assert_eq "$C_FP" "$(cert_issuer_fp "$W/p1-C.der" "$W/B.pem" "$W/C.pem")" "issuer of phone 1's LSC after B"
json_expect "$(device_json main $P1)" status succeeded status_reason null
it_log "6. capf-previous-trust-days 0 untrusts B, and 30 does not trust it again"

# --- 7b. A CAPF close to expiry: the server warns at the reload --------------

grep -q 'event=capf_certificate_expiring' "${SRV_LOG[main]}" &&
  fail "capf_certificate_expiring logged before any CAPF was close to expiry"
regenerate "$W/D.pem" --days 10
D_FP=$NEW_FP
D_SERIAL=$(cert_serial "$W/D.pem")
d_end=$(cert_end "$W/D.pem")
it_wait_for "$SWITCH_BOUND" "grep -q 'event=capf_certificate_expiring' '${SRV_LOG[main]}'" ||
  fail "no event=capf_certificate_expiring after a regenerate with --days 10"
warn=$(grep -m1 'event=capf_certificate_expiring' "${SRV_LOG[main]}")
[[ "$warn" == *"level=warn"* && "$warn" == *"not_after=$d_end"* ]] ||
  fail "expiry warning does not name D's notAfter $d_end: $warn"
[[ "$warn" =~ days_left=(9|10)[^0-9] ]] || fail "expiry warning: days_left not 9 or 10: $warn"
assert_eq "$d_end" "$(expiry_metric)" "expiry metric = D's notAfter"
check_metrics_format
rep=$(cap main report expiring --days 500 --json)
jq -e --arg n "$(capf_json | jq -r .subject)" \
  'any(.[]; .cert_type == "CAPF" and .name == $n and .expired == false)' <<<"$rep" >/dev/null ||
  fail "report expiring --days 500 does not list the CAPF D: $rep"
rep=$(cap main report expiring --days 5 --json)
jq -e 'all(.[]; .cert_type != "CAPF")' <<<"$rep" >/dev/null ||
  fail "report expiring --days 5 lists the CAPF D (10 days left): $rep"
check_itl "$D_FP" "$C_FP"
it_log "7. expiry metric follows A, B, C, D; warning logged: $warn"

# --- 8. The audit log --------------------------------------------------------

"$IT_PYTHON" -c "$AUDIT_PY" "$DATA" "$IT_DIR" >"$W/audit.txt" 2>"$W/audit.err" ||
  fail "reading the audit log: $(cat "$W/audit.err")"
awk '$2 ~ /^capf_/ || ($2 == "setting_changed" && $3 ~ /^capf-previous/)' "$W/audit.txt" | cut -d' ' -f2- >"$W/audit.capf"
{
  echo "capf_regenerated old_serial=$A_SERIAL old_sha256=$A_FP new_serial=$B_SERIAL new_sha256=$B_FP key=rsa3072"
  echo "capf_retired serial=$A_SERIAL sha256=$A_FP devices_holding=1 forced=yes"
  echo "capf_regenerated old_serial=$B_SERIAL old_sha256=$B_FP new_serial=$C_SERIAL new_sha256=$C_FP key=rsa3072"
  echo "setting_changed capf-previous-trust-days=0"
  echo "capf_previous_trust_ended serial=$B_SERIAL sha256=$B_FP reason=trust_window_ended"
  echo "setting_changed capf-previous-trust-days=30"
  echo "capf_regenerated old_serial=$C_SERIAL old_sha256=$C_FP new_serial=$D_SERIAL new_sha256=$D_FP key=rsa3072"
} >"$W/audit.want"
diff "$W/audit.want" "$W/audit.capf" >&2 || fail "audit log of the CAPF changes (diff above: want, got)"
at=$(awk '$2 == "capf_regenerated" { print $1; exit }' "$W/audit.txt")
((at >= B_AT && at <= B_AT + 60)) || fail "audit time of the first regenerate $at, ran at $B_AT"

# --- The same server all along -------------------------------------------------

srv_alive main || fail "server died"
assert_eq "$PID" "${SRV_PID[main]}" "server pid"
assert_eq 1 "$(grep -c 'event=ready' "${SRV_LOG[main]}")" "ready lines (no restart)"
srv_stop main

# The expiry is also checked when a server starts (serve.c: the first poll),
# not only at a reload: a new server on the same data directory warns about
# D at once and presents D.
SRV_DATA[again]=$DATA
srv_start again
it_wait_for "$SWITCH_BOUND" "grep -q 'event=capf_certificate_expiring.*not_after=$d_end' '${SRV_LOG[again]}'" ||
  fail "no event=capf_certificate_expiring for D when a server starts"
assert_eq "$D_FP" "$(tls_fp again)" "certificate presented after a restart"
assert_eq "$d_end" "$(metric again capstan_capf_certificate_expiry_timestamp_seconds | awk '{ printf "%d", $1 }')" \
  "expiry metric after a restart"
srv_stop again
it_pass
