#!/usr/bin/env bash
# Write and sync errors of the disk under a load of enrollments (issue 13,
# R26), from the I/O fault shim (tests/tools/iofault) preloaded into the
# server: three outages, each with its own load of phones that come back
# (--max-retries) and phones that do not, each turned off while they run:
#   1. every write and sync of the data directory fails with EIO;
#   2. only fdatasync/fsync fail (the data pages are written, never synced);
#   3. only the writes of LMDB's meta pages fail: LMDB then refuses every
#      transaction (MDB_PANIC) and the server must open the store again.
#
# Asserts for each: the server stays up, the same process; the outage is
# logged once (event=storage_unavailable, then event=storage_recovered) and
# capstan_storage_writable is 0, then 1; files download meanwhile; the phones
# that come back all enroll, having been told RETRY_LATER, the others get
# RETRY_LATER or enroll; no device is left in progress; every LSC a phone
# holds is on record. For the third, event=storage_reopened.
. "$(dirname "$0")/storage_faults_lib.sh"
SHIM="$CAPSTAN_BUILD_DIR/libcapstan-iofault.so"
it_require "$CAPSTAN_BIN" "$BENCH_BIN" "$SHIM" curl jq mdb_dump
it_watchdog 420

N_RETRY=200 N_ONCE=100
SF_RATE=30
if it_sanitized; then N_RETRY=80 N_ONCE=40 SF_RATE=10; fi
PER=$((N_RETRY + N_ONCE))
REASON="storage error: the outcome could not be recorded"
CONTROL="$IT_TMP/iofault.control"
: >"$CONTROL"

srv_prepare main
sf_devices $((3 * PER))
# The shim is in the server only. A sanitized server accepts a library
# loaded before ASan's runtime with verify_asan_link_order=0.
LD_PRELOAD="$SHIM" CAPSTAN_IOFAULT_DIR="${SRV_DATA[main]}" CAPSTAN_IOFAULT_CONTROL="$CONTROL" \
  ASAN_OPTIONS="$ASAN_OPTIONS:verify_asan_link_order=0" srv_start main --files
PID=${SRV_PID[main]}

# outage K FAULT: the K-th outage, the control file saying FAULT.
outage() {
  local k=$1 fault=$2 start=$SECONDS first issued
  first=$(((k - 1) * PER))
  issued=$(metric main capstan_capf_certificates_issued_total)
  SF_FIRST=$first sf_load "retry$k" "$N_RETRY" 1000
  SF_FIRST=$((first + N_RETRY)) sf_load "once$k" "$N_ONCE" 0
  sf_wait_issued $((issued + PER / 6))
  echo "$fault" >"$CONTROL"
  it_log "outage $k ($fault) on, $((SECONDS - start)) s into its load"
  # Each outage is logged once: the K-th line is this one's.
  it_wait_for 60 "(( \$(grep -c 'event=storage_unavailable' '${SRV_LOG[main]}') >= $k ))" ||
    fail "outage $k: no event=storage_unavailable"
  sf_during_outage
  : >"$CONTROL"
  it_log "outage $k off, $((SECONDS - start)) s into its load"
  it_wait_for 60 "(( \$(grep -c 'event=storage_recovered' '${SRV_LOG[main]}') >= $k ))" ||
    fail "outage $k: no event=storage_recovered within 60 s"
  it_wait_for 10 "[[ \$(metric main capstan_storage_writable) == 1 ]]" ||
    fail "outage $k: capstan_storage_writable is not back to 1"
  sf_wait_load "retry$k"
  sf_wait_load "once$k"
  [[ "${SRV_PID[main]}" == "$PID" ]] && srv_alive main || fail "the server did not stay up"
  local ev n
  for ev in storage_unavailable storage_recovered; do
    n=$(grep -c "event=$ev" "${SRV_LOG[main]}")
    [[ $n == "$k" ]] || fail "after outage $k: event=$ev logged $n times (expected $k)"
  done
  json_expect "$(jq -c '{ok, gave_up}' "$SF/retry$k.json")" ok "$N_RETRY" gave_up 0
  (($(jq '.retries.retry_later' "$SF/retry$k.json") > 0)) ||
    fail "outage $k: no phone was told RETRY_LATER"
  jq -e '.outcomes | keys | all(. == "ok_install_reason_1" or . == "error_retry_later")' \
    "$SF/once$k.json" >/dev/null || fail "outage $k: outcomes $(jq -c .outcomes "$SF/once$k.json")"
  it_wait_for 30 "[[ \$(cap main device list --status in-progress --json | jq length) == 0 ]]" ||
    fail "outage $k: devices still in progress: $(cap main device list --status in-progress)"
  sf_certs_on_record "retry$k"
  [[ $SF_HELD == "$N_RETRY" ]] || fail "outage $k: $SF_HELD LSCs held by $N_RETRY phones"
  sf_certs_on_record "once$k"
  it_log "outage $k over: $((SECONDS - start)) s with its load"
}

outage 1 "EIO all"
outage 2 "EIO sync"
outage 3 "EIO meta"
# The meta page faults break the environment, which is opened again: said
# in the third outage (once; an earlier outage may have met it too, once).
LOG3=$(awk '/event=storage_unavailable/ { n++ } n == 3' "${SRV_LOG[main]}")
for ev in storage_broken storage_reopened; do
  n=$(grep -c "event=$ev" <<<"$LOG3")
  [[ $n == 1 ]] || fail "outage 3: event=$ev logged $n times (expected once)"
  n=$(grep -c "event=$ev" "${SRV_LOG[main]}")
  ((n <= 3)) || fail "event=$ev logged $n times over 3 outages (at most once each)"
done
grep 'event=storage_reopened' <<<"$LOG3" | grep -q 'error="none"' ||
  fail "the store was not opened again: $(grep 'event=storage_reopened' <<<"$LOG3")"

# Never a line per request or batch: the storage error that began each
# outage at most.
n=$(grep -E 'level=(error|warn)' "${SRV_LOG[main]}" |
  grep -cE 'event=(capf_record_failed|storage_batch_failed|storage_error|files_served_not_recorded|capf_store_read_failed)')
((n <= 3)) || fail "$n error lines per request or batch over 3 outages (expected at most 3)"

cap main device list --json >"$SF/devices.json"
jq -e --arg r "$REASON" 'all(.[]; .status == "succeeded" or .status == "pending"
    or (.status == "failed" and .status_reason == $r))' "$SF/devices.json" >/dev/null ||
  fail "unexpected statuses: $(jq -c '[.[] | select(.status != "succeeded")] | .[:5]' "$SF/devices.json")"
it_log "statuses: $(jq -c 'group_by(.status) | map({(.[0].status): length}) | add' "$SF/devices.json")"
srv_stop main
it_pass
