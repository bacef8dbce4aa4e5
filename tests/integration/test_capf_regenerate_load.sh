#!/usr/bin/env bash
# CAPF regenerate under load (docs/spec/capf-lifecycle.md, "Renewal and
# roll-over": "a session keeps the identity it started with"): capstan-bench
# enrolls at least 500 phones at a steady rate, each held a moment in key
# generation so that dozens of sessions are in flight at any time, and the
# CAPF is regenerated twice while they run (A -> B plain, B -> C ec256).
#
# Asserts: the load generator reports no failure; every device succeeded
# (`report status --json`) and holds an installed LSC; each LSC verifies
# under A, B or C, and by its issue time (the store's IssuedCert.issued_at,
# read with mdb_dump) the ones signed before a regenerate started are from
# the old CAPF and the ones signed once the new one is live (plus the longest
# a session in flight can take) are from the new one; all three CAPFs signed
# some; a few devices sampled with `device show --json` agree; `cert capf
# retire` counts the devices the store says hold LSCs from A and from B;
# the CAPF port presents the new certificate after each change; the same
# server process throughout; no level=error line in its log.
. "$(dirname "$0")/lib.sh"
BENCH_BIN="$CAPSTAN_BUILD_DIR/capstan-bench"
it_require "$CAPSTAN_BIN" "$BENCH_BIN" curl jq openssl mdb_dump
it_watchdog 240

# N phones at RATE per second, each KEYGEN seconds in key generation: about
# RATE x KEYGEN sessions in flight, for about N / RATE seconds. B goes live
# at 15% of that, C at 60%.
N=1000 RATE=60 KEYGEN=2
if it_sanitized; then N=300 RATE=20 KEYGEN=2; fi
DURATION=$((N / RATE))
SWITCH_BOUND=5
it_sanitized && SWITCH_BOUND=10

W="$IT_TMP/w"
mkdir -p "$W"
lower_hex() { tr -d ':' | tr 'A-F' 'a-f'; }
cert_fp() { openssl x509 -in "$1" -noout -fingerprint -sha256 | sed 's/.*=//' | lower_hex; }
cert_serial() { openssl x509 -in "$1" -noout -serial | sed 's/.*=//' | lower_hex; }
tls_fp() {
  timeout 10 openssl s_client -connect "127.0.0.1:${SRV_CAPF[main]}" </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 2>/dev/null | sed 's/.*=//' | lower_hex
}
now_ms() { date +%s%3N; }

# export_live FILE: `cert export capf`, checked against `cert capf show`.
export_live() {
  cap main cert export capf >"$1"
  assert_eq "$(cap main cert capf show --json | jq -r .sha256)" "$(cert_fp "$1")" "export vs show"
}

# regenerate OUT ARGS...: regenerates while the load runs; sets T0 (the
# second the command started) and LIVE (the second the CAPF port was seen
# presenting the new certificate).
regenerate() {
  local out=$1 json fp t
  shift
  T0=$(date +%s)
  json=$(cap main cert capf regenerate "$@" --json)
  json_expect "$json" result regenerated
  export_live "$out"
  fp=$(cert_fp "$out")
  assert_eq "$fp" "$(jq -r .sha256 <<<"$json")" "regenerate --json sha256"
  t=$(now_ms)
  it_wait_for "$SWITCH_BOUND" "[[ \"\$(tls_fp)\" == $fp ]]" ||
    fail "the CAPF port presents $(tls_fp), not $fp, ${SWITCH_BOUND}s after the regenerate"
  LIVE=$(date +%s)
  it_log "regenerated ($*): ${fp:0:16}... presented $(($(now_ms) - t)) ms after the command," \
    "$(metric main capstan_capf_certificates_issued_total) LSCs issued so far"
}

# --- Server and devices --------------------------------------------------------

srv_prepare main
# Every phone comes from 127.0.0.1.
cap main config set max-connections-per-address 100000 >/dev/null
{
  echo "name,operation,auth_mode,auth_string,key,completes_by"
  timeout 30 "$BENCH_BIN" --connect 127.0.0.1:1 --phones "$N" --print-names |
    sed 's/$/,install,null,,ec256,/'
} >"$W/devices.csv"
assert_eq $((N + 1)) "$(wc -l <"$W/devices.csv")" "lines of devices.csv"
cap main device import "$W/devices.csv" >/dev/null
srv_start main
PID=${SRV_PID[main]}
export_live "$W/A.pem"
A_FP=$(cert_fp "$W/A.pem")
assert_eq "$A_FP" "$(tls_fp)" "certificate on the CAPF port at start"
# Warm the simulator's key pool before the clock starts.
mkdir -p "$IT_KEYS/bench-ec256"
timeout 120 "$BENCH_BIN" --connect 127.0.0.1:1 --phones 1 --key ec256 \
  --key-cache "$IT_KEYS/bench-ec256" >/dev/null 2>&1

# --- The load, and two regenerates while it runs --------------------------------

it_log "$N phones at $RATE/s, ${KEYGEN}s in key generation (about $((RATE * KEYGEN)) in flight)"
START=$(now_ms)
timeout $((DURATION * 4 + 60)) "$BENCH_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" \
  --phones "$N" --concurrency "$N" --rate "$RATE" --keygen-delay "$KEYGEN" --key ec256 \
  --key-cache "$IT_KEYS/bench-ec256" --timeout 60 --json >"$W/bench.json" 2>"$W/bench.err" &
BENCH=$!
sleep_until() { # seconds (decimal) after START
  local left
  left=$(awk -v s="$1" -v st="$START" -v n="$(now_ms)" 'BEGIN { l = st + s * 1000 - n; print (l > 0 ? l / 1000 : 0) }')
  sleep "$left"
}

sleep_until "$(awk -v d="$DURATION" 'BEGIN { print d * 0.15 }')"
kill -0 $BENCH 2>/dev/null || fail "the load ended before the first regenerate"
regenerate "$W/B.pem"
B_FP=$(cert_fp "$W/B.pem") B_T0=$T0 B_LIVE=$LIVE
[[ "$B_FP" != "$A_FP" ]] || fail "regenerate kept the certificate"
json_expect "$(cap main cert capf show --json)" key rsa2048

sleep_until "$(awk -v d="$DURATION" 'BEGIN { print d * 0.6 }')"
kill -0 $BENCH 2>/dev/null || fail "the load ended before the second regenerate"
regenerate "$W/C.pem" --key ec256
C_FP=$(cert_fp "$W/C.pem") C_T0=$T0 C_LIVE=$LIVE
json_expect "$(cap main cert capf show --json)" key ec256

rc=0
wait $BENCH || rc=$?
it_log "load done in $(($(now_ms) - START)) ms: $(cat "$W/bench.json")"
[[ $rc -eq 0 ]] || fail "capstan-bench exited with $rc: $(tail -n 20 "$W/bench.err")"
bench=$(cat "$W/bench.json")
json_expect "$bench" phones "$N" finished "$N" errors 0 enrollments "$N" failures '{}' \
  outcomes "{\"ok_install_reason_1\":$N}"
# A session that started with the old identity (at the latest when the new
# one was seen on the port, LIVE) signs its LSC before LIVE + 1 + its
# duration: issued_at (whole seconds) from LIVE + ceil(longest session) + 1
# on must be the new CAPF's.
SLACK=$(jq -r '.latency_ms.max / 1000 | ceil + 1' <<<"$bench")
it_log "longest session $(jq -r .latency_ms.max <<<"$bench") ms: LSCs from LIVE + ${SLACK}s on must be the new CAPF's"

# --- Every device enrolled; LSCs by issuer and time -----------------------------

st=$(cap main report status --json)
json_expect "$st" total "$N"
assert_eq "$N" "$(jq -r '.by_status.succeeded' <<<"$st")" "devices succeeded (report status)"

lscs_rc=0
"$IT_PYTHON" - "${SRV_DATA[main]}" "$N" "$W/A.pem" "$W/B.pem" "$W/C.pem" \
  "$B_T0" "$((B_LIVE + SLACK))" "$C_T0" "$((C_LIVE + SLACK))" "$IT_DIR" >"$W/lscs.json" 2>"$W/lscs.err" \
  <<'EOF' || lscs_rc=$?
# Reads the devices and certs databases (mdb_dump; records.proto decoded by
# hand) and classifies every device's LSC by the CAPF that signed it.
import json, subprocess, sys
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

data, n = sys.argv[1], int(sys.argv[2])
capfs = {k: x509.load_pem_x509_certificate(open(p, "rb").read())
         for k, p in zip("ABC", sys.argv[3:6])}
b_t0, b_new, c_t0, c_new = (int(x) for x in sys.argv[6:10])

sys.path.insert(0, sys.argv[10])
from store_dump import records


def dump(db):
    return [f for _, f in records(data, db)]

def signed_by(cert, ca):
    if cert.issuer != ca.subject:
        return False
    pk = ca.public_key()
    try:
        if isinstance(pk, rsa.RSAPublicKey):
            pk.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                      cert.signature_hash_algorithm)
        else:
            pk.verify(cert.signature, cert.tbs_certificate_bytes,
                      ec.ECDSA(cert.signature_hash_algorithm))
        return True
    except InvalidSignature:
        return False

certs = {}
for f in dump("certs"):  # IssuedCert
    certs[f[2][0]] = f
bad = []
count = {"A": 0, "B": 0, "C": 0}
must_b = must_c = 0
samples = []
devices = dump("devices")  # Device
for d in devices:
    name = d[2][0].decode()
    if d.get(10, [0])[0] != 3:
        bad.append("%s: status %s, not SUCCEEDED" % (name, d.get(10)))
        continue
    if d.get(17, [0])[0] != 1 or 16 not in d:
        bad.append("%s: no LSC" % name)
        continue
    lsc = x509.load_der_x509_certificate(d[16][0])
    serial = lsc.serial_number.to_bytes((lsc.serial_number.bit_length() + 7) // 8, "big")
    rec = certs.get(serial)
    if rec is None:
        bad.append("%s: LSC serial %s not in the certs database" % (name, serial.hex()))
        continue
    if rec[3][0].decode() != name or rec[4][0] != d[16][0] or rec.get(5, [0])[0] != 1:
        bad.append("%s: IssuedCert %s differs or is not INSTALLED" % (name, serial.hex()))
        continue
    at = rec[6][0]
    by = [k for k, ca in capfs.items() if signed_by(lsc, ca)]
    if len(by) != 1:
        bad.append("%s: LSC signed by %s of A, B, C" % (name, by or "none"))
        continue
    by = by[0]
    count[by] += 1
    if at < b_t0:
        allowed = "A"
    elif at < b_new:
        allowed = "AB"
    elif at < c_t0:
        allowed, must_b = "B", must_b + 1
    elif at < c_new:
        allowed = "BC"
    else:
        allowed, must_c = "C", must_c + 1
        if len(samples) < 3:
            samples.append([name, serial.hex(), d[18][0].decode()])
    if by not in allowed:
        bad.append("%s: LSC issued at %d by %s, expected %s (B from %d, live+slack %d; C from %d, "
                   "live+slack %d)" % (name, at, by, " or ".join(allowed), b_t0, b_new, c_t0, c_new))
if len(devices) != n:
    bad.append("%d devices in the store, expected %d" % (len(devices), n))
if len(certs) != n:
    bad.append("%d LSCs issued, expected %d (one per device)" % (len(certs), n))
for line in bad[:20]:
    print(line, file=sys.stderr)
print(json.dumps({"by_capf": count, "must_b": must_b, "must_c": must_c, "samples": samples,
                  "bad": len(bad)}))
sys.exit(1 if bad else 0)
EOF
[[ $lscs_rc -eq 0 ]] || fail "LSCs in the store: $(cat "$W/lscs.json") $(cat "$W/lscs.err")"
lscs=$(cat "$W/lscs.json")
it_log "LSCs: $lscs"
# The windows must not be empty, or the test proved nothing about them.
jq -e '.by_capf.A > 0 and .by_capf.B > 0 and .by_capf.C > 0' <<<"$lscs" >/dev/null ||
  fail "not every CAPF signed LSCs during the load: $lscs"
jq -e '.must_b >= 10 and .must_c >= 10' <<<"$lscs" >/dev/null ||
  fail "too few LSCs issued well after a regenerate to judge: $lscs"

# A few of those issued after C went live, as the CLI shows them.
for i in 0 1 2; do
  name=$(jq -r ".samples[$i][0]" <<<"$lscs")
  serial=$(jq -r ".samples[$i][1]" <<<"$lscs")
  md5=$(jq -r ".samples[$i][2]" <<<"$lscs")
  dev=$(device_json main "$name")
  json_expect "$dev" status succeeded cert_type lsc md5hash "$md5" certs_issued 1
  json_expect "$(jq -c '.cert_history[-1]' <<<"$dev")" serial "$serial" status installed
done

# `cert capf retire` counts the same holders (and, refused, changes nothing).
DATA=${SRV_DATA[main]}
for k in A B; do
  want=$(jq -r ".by_capf.$k" <<<"$lscs")
  cli_expect "$DATA" 1 cert capf retire "$(cert_serial "$W/$k.pem")"
  if [[ $want == 1 ]]; then
    has "$ERR" "1 device still holds an LSC from CAPF serial"
  else
    has "$ERR" "$want devices still hold an LSC from CAPF serial"
  fi
done

# --- The same server, presenting C, with a clean log ---------------------------

assert_eq "$C_FP" "$(tls_fp)" "certificate on the CAPF port at the end"
srv_alive main || fail "server died"
assert_eq "$PID" "${SRV_PID[main]}" "server pid"
assert_eq 1 "$(grep -c 'event=ready' "${SRV_LOG[main]}")" "ready lines (no restart)"
if grep -q 'level=error' "${SRV_LOG[main]}"; then
  grep 'level=error' "${SRV_LOG[main]}" | head -n 20 >&2
  fail "error lines in the server log"
fi
# Nothing went wrong for any phone either (a failed session logs a warning).
if grep -q 'level=warn' "${SRV_LOG[main]}"; then
  grep 'level=warn' "${SRV_LOG[main]}" | head -n 20 >&2
  fail "warning lines in the server log"
fi
assert_eq "$N" "$(grep -c 'event=capf_operation_succeeded' "${SRV_LOG[main]}")" "operations succeeded (log)"
srv_stop main
it_pass
