# Shared by the storage fault tests (issue 13, R26): a load of enrollments
# through capstan-bench while the store fails, and the checks every fault
# must pass. Source it after lib.sh.
#
#   sf_devices N                 N devices (install, null, ec256) in server
#                                'main''s store (srv_prepare'd or SRV_DATA set)
#   sf_load NAME PHONES RETRIES  starts capstan-bench in the background for
#                                phones [first, first + PHONES) (SF_FIRST),
#                                their LSCs in $SF/lsc-NAME; pid in SF_PID[NAME]
#   sf_wait_load NAME            waits for it; its JSON in $SF/NAME.json
#   sf_wait_issued N             until the server has issued N certificates
#   sf_during_outage             the checks while the store fails
#   sf_after_recovery            the checks once it writes again
. "$(dirname "$0")/lib.sh"
BENCH_BIN="$CAPSTAN_BUILD_DIR/capstan-bench"
SF="$IT_TMP/sf"
mkdir -p "$SF" "$IT_KEYS/bench-ec256"
declare -A SF_PID=()
SF_FIRST=0

sf_devices() {
  {
    echo "name,operation,auth_mode,auth_string,key,completes_by"
    timeout 30 "$BENCH_BIN" --connect 127.0.0.1:1 --phones "$1" --print-names |
      sed 's/$/,install,null,,ec256,/'
  } >"$SF/devices.csv"
  cap main device import "$SF/devices.csv" >/dev/null
  # Every phone comes from 127.0.0.1; RETRY_LATER brings it back in 1 s.
  cap main config set max-connections-per-address 100000 >/dev/null
  cap main config set retry-delay-seconds 1 >/dev/null
  # Warm the simulator's key pool before any clock starts.
  timeout 120 "$BENCH_BIN" --connect 127.0.0.1:1 --phones 1 --key ec256 \
    --key-cache "$IT_KEYS/bench-ec256" >/dev/null 2>&1
}

# A steady stream (RATE a second, each phone a second in key generation),
# so that sessions are at every step when the store starts failing.
sf_load() {
  local name=$1 n=$2 retries=$3 rate=${SF_RATE:-40}
  mkdir -p "$SF/lsc-$name"
  timeout 400 "$BENCH_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --phones "$n" \
    --first "$SF_FIRST" --concurrency "$n" --rate "$rate" --keygen-delay 1 --key ec256 \
    --key-cache "$IT_KEYS/bench-ec256" --max-retries "$retries" --retry-cap-seconds 2 \
    --backoff-seconds 1 --lsc-dir "$SF/lsc-$name" --timeout 30 --json \
    >"$SF/$name.json" 2>"$SF/$name.err" &
  SF_PID[$name]=$!
}

sf_wait_load() {
  local rc=0
  wait "${SF_PID[$1]}" || rc=$?
  [[ $rc -le 1 ]] || { cat "$SF/$1.err" >&2; fail "capstan-bench '$1' exited with status $rc"; }
  it_log "load '$1': $(jq -c '{ok, errors, outcomes, retries, gave_up, wall_s}' "$SF/$1.json")"
}

sf_wait_issued() {
  it_wait_for 120 "(( \$(metric main capstan_capf_certificates_issued_total) >= $1 ))" ||
    fail "fewer than $1 certificates issued in 120 s"
}

# While the store fails: the server is up and says so once, in the log
# and the metrics; phones are told to retry; files still download.
sf_during_outage() {
  it_wait_for 60 "grep -q 'event=storage_unavailable' '${SRV_LOG[main]}'" ||
    fail "no event=storage_unavailable within 60 s of the fault"
  it_wait_for 30 "[[ \$(metric main capstan_storage_writable) == 0 ]]" ||
    fail "capstan_storage_writable is not 0 during the fault"
  [[ $(curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/status.json" |
    jq .storage.writable) == false ]] || fail "the status page does not show the store unwritable"
  sleep 4 # phones keep coming meanwhile
  srv_alive main || fail "the server died during the fault"
  (($(metric main 'capstan_storage_errors_total{op="commit"}') + \
    $(metric main 'capstan_storage_errors_total{op="grow"}') > 0)) ||
    fail "no failed commit counted in capstan_storage_errors_total"
  # Files come from what is readable (a download needs no write).
  local st
  st=$(curl -sS --max-time 10 -o "$SF/itl.tlv" -w '%{http_code}' \
    "http://127.0.0.1:${SRV_HTTP[main]}/ITLFile.tlv") || fail "HTTP ITLFile.tlv during the fault"
  [[ "$st" == 200 && -s "$SF/itl.tlv" ]] || fail "HTTP ITLFile.tlv during the fault: status $st"
  timeout 20 curl -sS --max-time 15 -o "$SF/itl.tftp" \
    "tftp://127.0.0.1:${SRV_TFTP[main]}/ITLFile.tlv" || fail "TFTP ITLFile.tlv during the fault"
  cmp -s "$SF/itl.tlv" "$SF/itl.tftp" || fail "TFTP and HTTP ITLFile.tlv differ during the fault"
}

# Once the cause is gone: recovered without a restart, logged once each
# way; no device left in progress; every certificate a phone holds is on
# record.
sf_after_recovery() {
  local pid=${SRV_PID[main]}
  it_wait_for 60 "grep -q 'event=storage_recovered' '${SRV_LOG[main]}'" ||
    fail "no event=storage_recovered within 60 s of the cause going away"
  it_wait_for 10 "[[ \$(metric main capstan_storage_writable) == 1 ]]" ||
    fail "capstan_storage_writable is not back to 1"
  [[ "${SRV_PID[main]}" == "$pid" ]] && srv_alive main || fail "the server restarted or died"
  [[ $(curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/status.json" |
    jq .storage.writable) == true ]] || fail "the status page does not show the store writable"
  local log=${SRV_LOG[main]} n
  for ev in storage_unavailable storage_recovered; do
    n=$(grep -c "event=$ev" "$log")
    [[ $n == 1 ]] || fail "event=$ev logged $n times (expected once)"
  done
  # The outage said once, not once per phone or per batch.
  n=$(grep -E 'level=(error|warn)' "$log" | grep -cE 'event=(capf_record_failed|storage_batch_failed|storage_error|files_served_not_recorded)')
  ((n <= 1)) || fail "$n error lines per request or batch during the outage (expected at most 1)"
  # No device stays in progress (the repair runs within seconds).
  it_wait_for 30 "[[ \$(cap main device list --status in-progress --json | jq length) == 0 ]]" ||
    fail "devices still in progress: $(cap main device list --status in-progress)"
}

# Every LSC a phone of load NAME stored (its --lsc-dir: NAME.der, the one
# it holds, and NAME.SERIAL.der, each it ever stored, kept whatever the
# session's outcome) is on record: in its device's cert_history and in the
# certs database (read with mdb_dump, apart from capstan's code). Sets
# SF_HELD: the phones holding one.
sf_certs_on_record() {
  local out
  out=$(PYTHONPATH="$IT_DIR" "$IT_PYTHON" - "${SRV_DATA[main]}" "$SF/lsc-$1" <<'PY'
import glob, os, sys
from cryptography import x509
from store_dump import records

data, lsc_dir = sys.argv[1:]
history = {k.decode(): {int.from_bytes(s, "big") for s in f.get(21, [])}
           for k, f in records(data, "devices")}
certs = {int.from_bytes(k, "big") for k, _ in records(data, "certs")}
held = stored = 0
for path in sorted(glob.glob(os.path.join(lsc_dir, "*.der"))):
    if path.endswith((".key.der", ".pending.der")):
        continue
    parts = os.path.basename(path)[:-len(".der")].split(".")
    device = parts[0]
    with open(path, "rb") as f:
        serial = x509.load_der_x509_certificate(f.read()).serial_number
    if len(parts) == 2 and int(parts[1], 16) != serial:
        print(f"MISNAMED {path}")
        sys.exit(1)
    if serial not in history.get(device, set()) or serial not in certs:
        print(f"MISSING {device} {serial:x}")
        sys.exit(1)
    if len(parts) == 1:
        held += 1
    else:
        stored += 1
print(held, stored)
PY
  ) || fail "load '$1': an LSC a phone holds is not on record: $out"
  SF_HELD=${out% *}
  it_log "load '$1': all $SF_HELD LSCs the phones hold and all ${out#* } they stored are on record"
}
