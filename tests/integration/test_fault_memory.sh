#!/usr/bin/env bash
# Out of memory (R26, README "Faults of the machine"): the running server's
# address space is capped (prlimit --as, a little above what it maps now)
# while phones enroll and boot over HTTP and TFTP. Sessions that meet a
# failed allocation end, the server does not crash, every certificate a
# phone received is on record, and once the cap is lifted the same server
# enrolls and serves files normally. One server, never restarted.
#
# RLIMIT_AS cannot work under AddressSanitizer (its shadow memory is
# terabytes of address space): the sanitizer build skips this test, saying
# so; the normal build runs it.
. "$(dirname "$0")/lib.sh"
if it_sanitized; then
  it_log "skipped: RLIMIT_AS cannot be applied to an AddressSanitizer build (its shadow memory maps terabytes)"
  it_pass
fi
BENCH_BIN="$CAPSTAN_BUILD_DIR/capstan-bench"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" "$BENCH_BIN" curl jq prlimit openssl "$IT_PYTHON"
it_watchdog 240

srv_start main --files
PID=${SRV_PID[main]}
LOG=${SRV_LOG[main]}
CAPF="127.0.0.1:${SRV_CAPF[main]}"

# The phones of the load: enrolled with a saved LSC each.
N=40
"$BENCH_BIN" --connect "$CAPF" --phones $N --name-prefix SEPFA --print-names >"$IT_TMP/names"
while read -r dev; do
  cap main device add "$dev" --operation install --auth null --key ec256 >/dev/null
done <"$IT_TMP/names"
mkdir -p "$IT_TMP/lsc"

# One small warm-up run (the server's pools and caches as in service),
# then the cap.
"$BENCH_BIN" --connect "$CAPF" --storm --files "127.0.0.1:${SRV_HTTP[main]}" --boot-only \
  --phones 4 --name-prefix SEPFA --concurrency 2 --json >"$IT_TMP/warm.json" 2>>"$IT_TMP/phones.log" ||
  fail "warm-up storm failed: $(cat "$IT_TMP/warm.json")"
# A scraper was watching before (the server keeps its /metrics buffer
# from one scrape to the next: it answers while allocations fail).
metric_expect main capstan_memory_exhausted 0
# The cap is what the server maps now (its threads' stacks and the 4 GiB
# LMDB map included), plus a margin smaller than one allocator arena: the
# heap can no longer grow, so the load below meets failed allocations.
vm=$(awk '/^VmSize:/ { print $2 }' "/proc/$PID/status")
CAP=$(((vm + ${CAPSTAN_IT_AS_MARGIN_KIB:-64}) * 1024))
prlimit --pid "$PID" --as="$CAP": || fail "prlimit --as on the server"
it_log "server maps $vm KiB; address space capped at $((CAP >> 10)) KiB"

# scrape SERIES: its value from /metrics while the cap holds. The answer
# needs a little memory too (a connection, a request): it may fail, and
# the scraper tries again, for at most 10 s.
scrape() {
  local i body
  for ((i = 0; i < 50; i++)); do
    if body=$(curl -sf --max-time 2 "http://127.0.0.1:${SRV_ADMIN[main]}/metrics"); then
      awk -v s="$1" '$1 == s { print $2 }' <<<"$body"
      return 0
    fi
    sleep 0.2
  done
  fail "/metrics did not answer within 10 s under the cap"
}

# load ROUND: enrollments and boots over HTTP and TFTP at once, all
# phones of each kind in flight together.
load() {
  "$BENCH_BIN" --connect "$CAPF" --phones $N --name-prefix SEPFA --concurrency $N --key ec256 \
    --key-cache "$IT_KEYS" --lsc-dir "$IT_TMP/lsc" --timeout 10 --json \
    >"$IT_TMP/enroll$1.json" 2>>"$IT_TMP/phones.log" &
  local e=$!
  "$BENCH_BIN" --connect "$CAPF" --storm --files "127.0.0.1:${SRV_HTTP[main]}" --boot-only \
    --phones $N --name-prefix SEPFA --concurrency $N --timeout 10 --json \
    >"$IT_TMP/http$1.json" 2>>"$IT_TMP/phones.log" &
  local h=$!
  "$BENCH_BIN" --connect "$CAPF" --storm --boot tftp --files "127.0.0.1:${SRV_TFTP[main]}" \
    --boot-only --phones 30 --name-prefix SEPFA --concurrency 30 --tftp-retries 2 --timeout 10 \
    --json >"$IT_TMP/tftp$1.json" 2>>"$IT_TMP/phones.log" &
  local t=$!
  wait $e $h $t
  srv_alive main || fail "the server died under the memory cap"
  local f
  for f in enroll http tftp; do
    it_log "round $1, $f under the cap: $(jq -c '{ok, errors, outcomes}' "$IT_TMP/$f$1.json")"
  done
}
# Until allocations fail: the heap may have had room left for one round.
for round in 1 2 3; do
  load $round
  failures=$(scrape capstan_memory_allocation_failures_total)
  ((failures > 0)) && break
done
((failures > 0)) || fail "no allocation failed under the cap in 3 rounds: the test proves nothing"
assert_eq 1 "$(scrape capstan_memory_exhausted)" "capstan_memory_exhausted under the cap"
assert_eq 1 "$(grep -c 'event=memory_exhausted' "$LOG")" "memory_exhausted log lines"
# The status page says so too (answering needs a little memory: retried).
status_says() {
  [[ $(curl -sf --max-time 5 "http://127.0.0.1:${SRV_ADMIN[main]}/status.json" |
    jq -r .resources.memory_exhausted) == "$1" ]]
}
it_wait_for 10 status_says true || fail "status.json does not say memory is exhausted"

# Every certificate a phone holds is on record.
held=0
for cert in "$IT_TMP"/lsc/*.der; do
  [[ -e $cert && $cert != *.key.der && $cert != *.pending.der ]] || continue
  dev=$(basename "$cert" .der)
  lsc_on_record main "${dev%%.*}" "$cert" # NAME.SERIAL.der: each certificate NAME ever stored
  [[ $dev == *.* ]] || held=$((held + 1))
done
it_log "phones holding a certificate after the capped run: $held of $N"

# The cap lifted: the same server recovers by itself and works normally.
prlimit --pid "$PID" --as=unlimited: || fail "prlimit --as=unlimited"
metric_is() { [[ "$(metric main "$1")" == "$2" ]]; }
it_wait_for 10 metric_is capstan_memory_exhausted 0 || fail "no recovery after the cap was lifted"
status_says false || fail "status.json still says memory is exhausted after the recovery"
assert_eq 1 "$(grep -c 'event=memory_recovered' "$LOG")" "memory_recovered log lines"
cap main device add SEPFB0000000001 --operation install --auth null --key ec256 >/dev/null
phone main --name SEPFB0000000001 --auth null --save-cert "$IT_TMP/after.der" --timeout 30
json_expect "$PHONE_JSON" result ok reason 1
lsc_on_record main SEPFB0000000001 "$IT_TMP/after.der"
"$BENCH_BIN" --connect "$CAPF" --storm --files "127.0.0.1:${SRV_HTTP[main]}" --boot-only \
  --phones 20 --name-prefix SEPFA --concurrency 10 --json >"$IT_TMP/http2.json" 2>>"$IT_TMP/phones.log" ||
  fail "HTTP boots after the cap was lifted: $(cat "$IT_TMP/http2.json")"
"$BENCH_BIN" --connect "$CAPF" --storm --boot tftp --files "127.0.0.1:${SRV_TFTP[main]}" \
  --boot-only --phones 20 --name-prefix SEPFA --concurrency 10 --json \
  >"$IT_TMP/tftp2.json" 2>>"$IT_TMP/phones.log" ||
  fail "TFTP boots after the cap was lifted: $(cat "$IT_TMP/tftp2.json")"
for f in http2 tftp2; do json_expect "$(cat "$IT_TMP/$f.json")" errors 0; done

srv_stop main
it_pass
